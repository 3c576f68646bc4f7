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
                "unknown key `nmae` in `#[rpc]`; expected one of: `name`, `max_workers`, `queue_type`, `sensitive`",
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
    #[test]
    fn max_workers_goes_to_each_entrypoint() {
        let out = expand(
            quote!(name = "svc"),
            quote! {
                impl Svc {
                    #[rpc(max_workers = 3)]
                    #[event_handler("src", "ty", max_workers = 2)]
                    #[consume(queue = "jobs", exchange = "orders", exchange_type = "topic", routing_key = "o.*", max_workers = 4)]
                    async fn a(&self, x: u8) -> Result<(), E> { Ok(()) }
                    #[http("GET", "/b", max_workers = 5)]
                    #[http("POST", "/b")]
                    async fn b(&self) -> Result<(), E> { Ok(()) }
                    #[timer(interval = "1s", max_workers = 1)]
                    async fn c(&self) -> Result<(), E> { Ok(()) }
                    #[ws_rpc(max_workers = 6)]
                    async fn d(&self, socket_id: String) -> Result<(), E> { Ok(()) }
                }
            },
        )
        .unwrap()
        .to_string();
        for n in 1..=6 {
            assert!(out.contains(&format!(". max_workers ({n}usize)")), "{n}: {out}");
        }
        assert!(out.contains("Consume :: < u8"), "{out}");
        assert!(out.contains("ExchangeKind :: Topic"), "{out}");
        assert!(out.contains(". routing_key (\"o.*\")"), "{out}");
    }

    #[test]
    fn max_workers_must_be_a_positive_whole_number() {
        let errors = errors(
            quote!(name = "svc"),
            quote! {
                impl Svc {
                    #[rpc(max_workers = 0)]
                    async fn a(&self) -> Result<(), E> { Ok(()) }
                    #[rpc(max_workers = "4")]
                    async fn b(&self) -> Result<(), E> { Ok(()) }
                    #[http("GET", "/c", max_workers = 1)]
                    #[http("GET", "/d", max_workers = 2)]
                    async fn c(&self) -> Result<(), E> { Ok(()) }
                }
            },
        );
        assert_eq!(
            errors,
            [
                "`max_workers` must be at least 1: 0 would never run a worker",
                "`max_workers` takes an integer",
                "`max_workers` is given twice: the #[http] attributes of one method are one entrypoint; give it on one of them",
            ]
        );
    }

    #[test]
    fn consume_needs_a_queue_and_an_exchange_for_its_routing_key() {
        let errors = errors(
            quote!(name = "svc"),
            quote! {
                impl Svc {
                    #[consume(exchange = "x")]
                    async fn a(&self, m: u8) -> Result<(), E> { Ok(()) }
                    #[consume(queue = "q", routing_key = "k")]
                    async fn b(&self, m: u8) -> Result<(), E> { Ok(()) }
                    #[consume(queue = "q", exchange = "x", exchange_type = "headers")]
                    async fn c(&self, m: u8) -> Result<(), E> { Ok(()) }
                    #[consume(queue = "q")]
                    async fn d(&self) -> Result<(), E> { Ok(()) }
                }
            },
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("#[consume] needs a queue"), "{errors:?}");
        assert!(
            errors[1].starts_with("`routing_key` binds the queue to an `exchange"),
            "{errors:?}"
        );
        assert!(errors[2].starts_with("unknown exchange_type `headers`"), "{errors:?}");
        assert_eq!(
            errors[3],
            "a #[consume] method takes exactly one message parameter after `&self`, found 0"
        );
    }
}
