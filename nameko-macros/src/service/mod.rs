//! `#[service(name = "...")]` on an inherent impl block: reads the entrypoint attributes
//! of its methods and implements `Service`.

mod describe;
mod entrypoint;
mod hooks;
mod method;
mod timer;

use std::collections::HashMap;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{ImplItem, ItemImpl, LitStr, Path};

use self::{entrypoint::EntrypointAttr, method::Method};
use crate::{args, ctxt::Ctxt};

/// `#[service(name = "greeting", crate = "...")]`.
struct ServiceArgs {
    name: Option<LitStr>,
    krate: Path,
}

fn service_args(cx: &Ctxt, tokens: TokenStream) -> ServiceArgs {
    let mut out = ServiceArgs {
        name: None,
        krate: args::default_crate(),
    };
    let Some(kvs) = cx.ok(args::parse_list(tokens)) else {
        return out;
    };
    let mut seen = args::Seen::default();
    for kv in kvs {
        if cx.ok(seen.first(&kv)).is_none() {
            continue;
        }
        match kv.name().as_str() {
            "name" => out.name = cx.ok(kv.str()),
            "crate" => {
                if let Some(path) = cx.ok(kv.path()) {
                    out.krate = path;
                }
            }
            _ => cx.syn_error(args::unknown_key(&kv, "service", &["name", "crate"])),
        }
    }
    out
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let mut item: ItemImpl = syn::parse2(item)?;
    let args = service_args(&cx, args);
    if args.name.is_none() {
        cx.syn_error(syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[service] needs the service's name: #[nameko::service(name = \"greeting\")]",
        ));
    }
    if let Some((_, path, _)) = &item.trait_ {
        cx.error_spanned_by(
            path,
            "#[service] goes on the inherent impl block of the service (`impl Greeting { ... }`), not on a trait impl",
        );
    }
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(&item.generics, "#[service] does not support generic impl blocks");
    }

    let krate = &args.krate;
    let p = quote!(#krate::__private);
    let mut registrations = Vec::new();
    let mut hook_registrations = Vec::new();
    let mut docs = Vec::new();
    // (kind, registered name) -> already declared.
    let mut declared: HashMap<(&'static str, String), ()> = HashMap::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(f) = impl_item else { continue };
        let hook_attrs = hooks::take(&cx, &mut f.attrs);
        let attrs = entrypoint::take(&cx, &mut f.attrs);
        let renames = method::take_arg_attrs(&cx, &mut f.sig);
        if !hook_attrs.is_empty() {
            if let Some(tokens) = hooks::expand(&cx, &hook_attrs, &attrs, &f.sig, &p) {
                hook_registrations.push(tokens);
            }
            continue;
        }
        let renamed = renames.iter().any(Option::is_some);
        if attrs.is_empty() {
            if renamed {
                cx.error_spanned_by(
                    &f.sig.ident,
                    "#[arg] renames parameters of #[rpc] and #[ws_rpc] methods only",
                );
            }
            continue;
        }
        if renamed
            && !attrs
                .iter()
                .any(|a| matches!(a, EntrypointAttr::Rpc(_) | EntrypointAttr::WsRpc(_)))
        {
            cx.error_spanned_by(
                &f.sig.ident,
                "#[arg] renames parameters of #[rpc] and #[ws_rpc] methods only",
            );
        }
        check_ws_rpc_alone(&cx, &attrs);
        let patterns = attrs.iter().all(|a| matches!(a, EntrypointAttr::Http(_)));
        let Some(method) = Method::check(&cx, &f.sig, renames, patterns) else {
            continue;
        };
        let doc_lines = describe::doc_lines(&f.attrs);
        let written = describe::written_params(&f.sig);
        for attr in &attrs {
            let key = (attr.kind(), attr.registered_name(&method));
            if declared.insert(key.clone(), ()).is_some() {
                cx.error_spanned_by(
                    attr.span_tokens(),
                    format!(
                        "`{}` is declared twice as a #[{}] entrypoint of this service",
                        key.1, key.0
                    ),
                );
                continue;
            }
            if let Some(tokens) = attr.expand(&cx, &method, krate) {
                registrations.push(tokens);
                docs.push(describe::entrypoint_doc(
                    &quote!(#krate::__private),
                    attr,
                    &method,
                    &written,
                    &doc_lines,
                ));
            }
        }
    }
    cx.check()?;

    let name = args.name.expect("checked above");
    let self_ty = &item.self_ty;
    let lifecycle = (!hook_registrations.is_empty()).then(|| {
        quote! {
            fn lifecycle(hooks: &mut #p::Lifecycle<Self>) {
                #( #hook_registrations )*
            }
        }
    });
    Ok(quote! {
        #item

        const _: () = {
            fn __assert_result<R: #p::HandlerResult>() {}
            fn __assert_deserialize<T: #p::DeserializeOwned>() {}
            fn __assert_serialize<T: #p::Serialize>() {}

            impl #p::Service for #self_ty {
                const NAME: &'static str = #name;

                fn entrypoints(entrypoints: &mut #p::Entrypoints<Self>) {
                    #( #registrations )*
                }

                #lifecycle
                fn entrypoint_docs() -> &'static [#p::EntrypointDoc] {
                    const DOCS: &[#p::EntrypointDoc] = &[ #( #docs ),* ];
                    DOCS
                }
            }
        };

        #p::submit_service!(#self_ty);
    })
}

/// `#[ws_rpc]` stands alone: a websocket method takes the socket id first, which no
/// other entrypoint provides.
fn check_ws_rpc_alone(cx: &Ctxt, attrs: &[EntrypointAttr]) {
    if attrs.len() > 1
        && let Some(ws) = attrs.iter().find(|a| matches!(a, EntrypointAttr::WsRpc(_)))
    {
        cx.error_spanned_by(
            ws.span_tokens(),
            "#[ws_rpc] stands alone: a websocket method cannot also carry another entrypoint attribute",
        );
    }
}

/// The impl block with the helper attributes stripped, re-emitted beside compile errors
/// so the rest of the crate (and the IDE) still sees the methods.
pub(crate) fn fallback(item: TokenStream) -> TokenStream {
    let Ok(mut item) = syn::parse2::<ItemImpl>(item.clone()) else {
        return item;
    };
    let cx = Ctxt::new();
    for impl_item in &mut item.items {
        if let ImplItem::Fn(f) = impl_item {
            hooks::take(&cx, &mut f.attrs);
            entrypoint::take(&cx, &mut f.attrs);
            method::take_arg_attrs(&cx, &mut f.sig);
        }
    }
    quote!(#item)
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn errors(args: TokenStream, item: TokenStream) -> Vec<String> {
        match expand(args, item) {
            Ok(_) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errors = errors(
            quote!(name = "svc", colour = "red"),
            quote! {
                impl Svc {
                    #[rpc]
                    fn a(&self) -> Result<(), E> { Ok(()) }
                    #[rpc(nmae = "x")]
                    async fn b(&self) -> Result<(), E> { Ok(()) }
                    #[event_handler("src", "ty")]
                    async fn c(&mut self, x: u8) -> Result<(), E> { Ok(()) }
                    fn helper(&self) {}
                }
            },
        );
        assert_eq!(
            errors,
            [
                "unknown key `colour` in `#[service]`; expected one of: `name`, `crate`",
                "entrypoint methods must be `async fn`",
                "unknown key `nmae` in `#[rpc]`; expected one of: `name`",
                "entrypoint methods take `&self`, not `&mut self`: keep per-call state in locals, shared state in a dependency",
            ]
        );
    }

    #[test]
    fn the_name_is_required() {
        let errors = errors(quote!(), quote!(impl Svc {}));
        assert_eq!(
            errors,
            ["#[service] needs the service's name: #[nameko::service(name = \"greeting\")]"]
        );
    }

    #[test]
    fn stacked_attributes_register_twice_and_are_stripped() {
        let out = expand(
            quote!(name = "svc"),
            quote! {
                impl Svc {
                    #[rpc]
                    #[event_handler("src", "ty", handler_type = "singleton")]
                    async fn a(&self, #[arg(name = "type")] kind: u8) -> Result<(), E> { Ok(()) }
                }
            },
        )
        .unwrap()
        .to_string();
        assert_eq!(out.matches("entrypoints . add").count(), 2, "{out}");
        assert!(out.contains("HandlerType :: Singleton"), "{out}");
        assert!(out.contains("Param :: required (\"type\")"), "{out}");
        assert!(!out.contains("# [rpc]") && !out.contains("# [arg"), "{out}");
    }

    #[test]
    fn ws_rpc_takes_the_socket_id_and_stands_alone() {
        let errors = errors(
            quote!(name = "svc"),
            quote! {
                impl Svc {
                    #[ws_rpc]
                    async fn a(&self) -> Result<(), E> { Ok(()) }
                    #[ws_rpc]
                    #[rpc]
                    async fn b(&self, socket_id: String) -> Result<(), E> { Ok(()) }
                }
            },
        );
        assert_eq!(
            errors,
            [
                "a #[ws_rpc] method takes the socket id first: `async fn name(&self, socket_id: String, ...)`",
                "#[ws_rpc] stands alone: a websocket method cannot also carry another entrypoint attribute",
            ]
        );
        let out = expand(
            quote!(name = "svc"),
            quote! {
                impl Svc {
                    #[ws_rpc(name = "join")]
                    async fn join_room(&self, socket_id: String, #[arg(name = "room")] r: String) -> Result<(), E> { Ok(()) }
                }
            },
        )
        .unwrap()
        .to_string();
        assert!(out.contains("WsRpcEntrypoint :: < __Args"), "{out}");
        assert!(out.contains("Param :: required (\"socket_id\")"), "{out}");
        assert!(out.contains("Param :: required (\"room\")"), "{out}");
        assert!(out.contains("(\"join\""), "{out}");
    }
}
