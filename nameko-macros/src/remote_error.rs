//! `#[derive(RemoteError)]`: an error type's variants become Nameko remote errors.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, Data, DeriveInput, Ident, LitStr, Path};

use crate::{
    args::{self, Seen},
    ctxt::Ctxt,
};

/// What one variant (or the struct) becomes on the wire.
struct Remote {
    exc_type: LitStr,
    exc_path: Option<LitStr>,
    status: u16,
    expected: bool,
}

const KEYS: &[&str] = &["exc_type", "exc_path", "status", "expected", "crate"];

fn remote(cx: &Ctxt, ident: &Ident, attrs: &[Attribute], krate: Option<&mut Path>) -> Remote {
    let mut out = Remote {
        exc_type: LitStr::new(&ident.to_string(), ident.span()),
        exc_path: None,
        status: 500,
        expected: false,
    };
    let mut krate = krate;
    let mut seen = Seen::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("remote")) {
        let kvs = attr
            .meta
            .require_list()
            .and_then(|list| args::parse_list(list.tokens.clone()));
        let Some(kvs) = cx.ok(kvs) else { continue };
        for kv in kvs {
            if cx.ok(seen.first(&kv)).is_none() {
                continue;
            }
            match kv.name().as_str() {
                "exc_type" => {
                    if let Some(lit) = cx.ok(kv.str()) {
                        out.exc_type = lit;
                    }
                }
                "exc_path" => out.exc_path = cx.ok(kv.str()),
                "status" => {
                    if let Some(lit) = cx.ok(kv.int()) {
                        match lit.base10_parse::<u16>() {
                            Ok(status) if (100..=999).contains(&status) => out.status = status,
                            _ => cx.error_spanned_by(&lit, "`status` is an HTTP status code, 100 to 999"),
                        }
                    }
                }
                "expected" => {
                    if cx.ok(kv.flag()).is_some() {
                        out.expected = true;
                    }
                }
                "crate" if krate.is_some() => {
                    if let (Some(path), Some(krate)) = (cx.ok(kv.path()), krate.as_deref_mut()) {
                        *krate = path;
                    }
                }
                _ => {
                    let valid = if krate.is_some() { KEYS } else { &KEYS[..4] };
                    cx.syn_error(args::unknown_key(&kv, "remote", valid));
                }
            }
        }
    }
    out
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let name = &input.ident;
    let mut krate = args::default_crate();
    let arms = match &input.data {
        Data::Struct(_) => {
            let r = remote(&cx, name, &input.attrs, Some(&mut krate));
            vec![(quote!(_), r)]
        }
        Data::Enum(data) => {
            // Only `crate` is read on the enum itself.
            for attr in input.attrs.iter().filter(|a| a.path().is_ident("remote")) {
                let kvs = attr
                    .meta
                    .require_list()
                    .and_then(|list| args::parse_list(list.tokens.clone()));
                for kv in cx.ok(kvs).unwrap_or_default() {
                    match kv.name().as_str() {
                        "crate" => {
                            if let Some(path) = cx.ok(kv.path()) {
                                krate = path;
                            }
                        }
                        _ => cx.syn_error(syn::Error::new(
                            kv.key.span(),
                            format!(
                                "`{}` goes on the variants of an enum; on the enum itself only `crate` is read",
                                kv.name()
                            ),
                        )),
                    }
                }
            }
            data.variants
                .iter()
                .map(|variant| {
                    let ident = &variant.ident;
                    (quote!(Self::#ident { .. }), remote(&cx, ident, &variant.attrs, None))
                })
                .collect()
        }
        Data::Union(data) => {
            cx.error_spanned_by(data.union_token, "#[derive(RemoteError)] goes on an enum or a struct");
            Vec::new()
        }
    };
    cx.check()?;

    let p = quote!(#krate::__private);
    if arms.is_empty() {
        // An enum with no variants: no value exists.
        return Ok(quote! {
            impl #p::IntoHandlerError for #name {
                fn into_handler_error(self) -> #p::HandlerError {
                    match self {}
                }
            }
        });
    }
    let arms = arms.iter().map(|(pattern, r)| {
        let exc_type = &r.exc_type;
        let exc_path = r.exc_path.as_ref().unwrap_or(&r.exc_type);
        let status = r.status;
        let expected = r.expected;
        quote!(#pattern => (#exc_type, #exc_path, #status, #expected))
    });
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut where_clause = where_clause.cloned().unwrap_or_else(|| syn::parse_quote!(where));
    where_clause
        .predicates
        .push(syn::parse_quote!(Self: ::std::error::Error + ::core::marker::Send + ::core::marker::Sync + 'static));

    Ok(quote! {
        impl #impl_generics #p::IntoHandlerError for #name #ty_generics #where_clause {
            fn into_handler_error(self) -> #p::HandlerError {
                let (exc_type, exc_path, status, expected): (&'static str, &'static str, u16, bool) = match &self {
                    #( #arms, )*
                };
                let remote = #p::RemoteError::new(exc_type, ::std::string::ToString::to_string(&self))
                    .with_path(exc_path);
                let error = #p::HandlerError::new(remote).with_status(status);
                let error = if expected { error.expected() } else { error };
                error.with_source(self)
            }
        }
    })
}
