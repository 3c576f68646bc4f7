//! `#[rpc_client(service = "maths")]` on a trait: the typed client interface of a
//! service, its `_async` variants, and the proxy `Rpc<dyn Trait>` fields use.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{
    FnArg, GenericArgument, Ident, Item, ItemTrait, LitStr, Pat, PathArguments, ReturnType, TraitItem, TraitItemFn,
    Type, TypeParamBound, parse_quote,
};

use crate::{args, ctxt::Ctxt};

struct ClientMethod {
    ident: Ident,
    params: Vec<(Ident, Type)>,
    ok: Type,
    err: Type,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let mut service = None;
    let mut krate = args::default_crate();
    if let Some(kvs) = cx.ok(args::parse_list(args)) {
        let mut seen = args::Seen::default();
        for kv in kvs {
            if cx.ok(seen.first(&kv)).is_none() {
                continue;
            }
            match kv.name().as_str() {
                "service" => service = cx.ok(kv.str()),
                "crate" => {
                    if let Some(path) = cx.ok(kv.path()) {
                        krate = path;
                    }
                }
                _ => cx.syn_error(args::unknown_key(&kv, "rpc_client", &["service", "crate"])),
            }
        }
    }
    let mut item = match syn::parse2::<Item>(item)? {
        Item::Trait(item) => item,
        other => {
            cx.error_spanned_by(
                other,
                "#[rpc_client] goes on a trait: `pub trait Maths { async fn add(&self, a: i64, b: i64) -> Result<i64, RpcError>; }`",
            );
            return Err(cx.check().expect_err("an error was recorded"));
        }
    };
    if service.is_none() {
        cx.syn_error(syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[rpc_client] needs the service's name: #[nameko::rpc_client(service = \"maths\")]",
        ));
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        cx.error_spanned_by(&item.generics, "#[rpc_client] does not support generic traits");
    }
    let methods: Vec<(ClientMethod, &TraitItemFn)> = item
        .items
        .iter()
        .filter_map(|trait_item| match trait_item {
            TraitItem::Fn(f) => method(&cx, f).map(|m| (m, f)),
            other => {
                cx.error_spanned_by(other, "an #[rpc_client] trait holds only `async fn` methods");
                None
            }
        })
        .collect();
    cx.check()?;

    let p = quote!(#krate::__private);
    let service = service.expect("checked above");
    let trait_ident = &item.ident;

    // The `_async` variants, declared in the trait and implemented by the proxy.
    let mut extra_items: Vec<TraitItem> = Vec::new();
    let mut proxy_fns = Vec::new();
    for (m, f) in &methods {
        let ident = &m.ident;
        let ident_async = format_ident!("{}_async", ident);
        let (ok, err) = (&m.ok, &m.err);
        let params = m.params.iter().map(|(name, ty)| quote!(#name: #ty));
        let params2 = params.clone();
        let params3 = params.clone();
        let method_name = LitStr::new(&ident.to_string(), ident.span());
        let encode = m.params.iter().map(|(name, _)| {
            let context = format!("argument `{name}` of `{}.{ident}`", service.value());
            quote! {
                #p::serde_json::to_value(&#name).map_err(|err| {
                    #p::RpcError::Encode(::std::format!("{}: {}", #context, err))
                })?
            }
        });
        let encode2 = encode.clone();
        let doc = format!(
            "Like [`{ident}`](Self::{ident}), but returns once the call is published: await the \
             returned `TypedReply` for the result."
        );
        let cfg_attrs = f.attrs.iter().filter(|a| a.path().is_ident("cfg"));
        let cfg_attrs2 = cfg_attrs.clone();
        let cfg_attrs3 = cfg_attrs.clone();
        extra_items.push(parse_quote! {
            #( #cfg_attrs )*
            #[doc = #doc]
            async fn #ident_async(&self, #( #params ),*)
                -> ::core::result::Result<#p::TypedReply<#ok>, #err>;
        });
        proxy_fns.push(quote! {
            #( #cfg_attrs2 )*
            async fn #ident(&self, #( #params2 ),*) -> ::core::result::Result<#ok, #err> {
                let args = ::std::vec![ #( #encode ),* ];
                ::core::result::Result::Ok(self.0.call_typed::<#ok>(#method_name, args).await?)
            }
            #( #cfg_attrs3 )*
            async fn #ident_async(&self, #( #params3 ),*)
                -> ::core::result::Result<#p::TypedReply<#ok>, #err>
            {
                let args = ::std::vec![ #( #encode2 ),* ];
                ::core::result::Result::Ok(self.0.call_typed_async::<#ok>(#method_name, args).await?)
            }
        });
    }
    item.items.extend(extra_items);

    for bound in [quote!(::core::marker::Send), quote!(::core::marker::Sync)] {
        let bound: TypeParamBound = parse_quote!(#bound);
        let last = match &bound {
            TypeParamBound::Trait(t) => t.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        let present = item.supertraits.iter().any(|b| match b {
            TypeParamBound::Trait(t) => t.path.segments.last().map(|s| s.ident.to_string()) == last,
            _ => false,
        });
        if !present {
            item.supertraits.push(bound);
            item.colon_token.get_or_insert_with(Default::default);
        }
    }
    // The user's attributes (`#[cfg_attr(test, mockall::automock)]`) stay ahead of
    // `#[async_trait]`, so a mock generator sees the `async fn`s.
    item.attrs.push(parse_quote!(#[#p::async_trait]));
    let interface_doc = format!("`Rpc<dyn {trait_ident}>` calls service `{}`.", service.value());

    Ok(quote! {
        #item

        const _: () = {
            #[derive(Debug)]
            struct __Proxy(#p::ServiceRpc);

            #[#p::async_trait]
            impl #trait_ident for __Proxy {
                #( #proxy_fns )*
            }

            #[doc = #interface_doc]
            impl #p::RpcInterface for dyn #trait_ident {
                const SERVICE: &'static str = #service;

                fn from_service_rpc(rpc: #p::ServiceRpc) -> ::std::sync::Arc<Self> {
                    ::std::sync::Arc::new(__Proxy(rpc))
                }
            }
        };
    })
}

fn method(cx: &Ctxt, f: &TraitItemFn) -> Option<ClientMethod> {
    let sig = &f.sig;
    let mut ok = true;
    let mut fail = |tokens: &dyn quote::ToTokens, message: &str| {
        cx.error_spanned_by(tokens.to_token_stream(), message);
        ok = false;
    };
    if sig.asyncness.is_none() {
        fail(&sig.fn_token, "#[rpc_client] methods must be `async fn`");
    }
    if !sig.generics.params.is_empty() {
        fail(&sig.generics, "#[rpc_client] methods cannot be generic");
    }
    if let Some(body) = &f.default {
        fail(
            body,
            "#[rpc_client] methods have no body: the generated proxy implements them",
        );
    }
    let mut inputs = sig.inputs.iter();
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {
            inputs.next();
        }
        Some(FnArg::Receiver(r)) => {
            inputs.next();
            fail(r, "#[rpc_client] methods take `&self`");
        }
        _ => fail(
            &sig.ident,
            "#[rpc_client] methods take `&self` first: `async fn name(&self, ...)`",
        ),
    }
    let mut params = Vec::new();
    for arg in inputs {
        let FnArg::Typed(typed) = arg else { continue };
        match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                params.push((pat.ident.clone(), (*typed.ty).clone()));
            }
            other => fail(other, "#[rpc_client] parameters must be plain names (`name: Type`)"),
        }
    }
    let result = match &sig.output {
        ReturnType::Type(_, ty) => result_types(ty),
        ReturnType::Default => None,
    };
    let Some((ok_ty, err_ty)) = result else {
        let message = "#[rpc_client] methods return `Result<T, RpcError>`";
        match &sig.output {
            ReturnType::Type(_, ty) => fail(ty, message),
            ReturnType::Default => fail(&sig.ident, message),
        }
        return None;
    };
    ok.then(|| ClientMethod {
        ident: sig.ident.clone(),
        params,
        ok: ok_ty,
        err: err_ty,
    })
}

/// `T` and `E` of `Result<T, E>` (any path ending in `Result`).
fn result_types(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    });
    let (ok, err) = (types.next()?, types.next()?);
    types.next().is_none().then_some((ok, err))
}

/// The item re-emitted beside compile errors.
pub(crate) fn fallback(item: TokenStream) -> TokenStream {
    match syn::parse2::<ItemTrait>(item.clone()) {
        Ok(item) => quote!(#item),
        Err(_) => item,
    }
}
