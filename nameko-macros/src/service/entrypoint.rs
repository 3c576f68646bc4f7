//! The entrypoint attributes `#[service]` reads on methods. Adding one (`#[http]`,
//! `#[timer]`, `#[ws_rpc]`) is one variant here, its parser in [`take`], and its
//! expansion in [`EntrypointAttr::expand`].

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::{
    Attribute, Expr, LitBool, LitStr, Meta, Path, Token,
    parse::{ParseStream, Parser},
    spanned::Spanned,
};

use super::{method::Method, timer::TimerAttr};
use crate::{
    args::{self, Seen},
    ctxt::Ctxt,
};

/// One entrypoint attribute on a method.
pub(crate) enum EntrypointAttr {
    /// `#[rpc]`, `#[rpc(name = "...")]`.
    Rpc(RpcAttr),
    /// `#[event_handler("source", "event_type", ...)]`.
    EventHandler(EventHandlerAttr),
    /// `#[ws_rpc]`, `#[ws_rpc(name = "...")]`.
    WsRpc(RpcAttr),
    /// `#[entrypoint(<expr>)]`: any `Entrypoint` value.
    Custom(CustomAttr),
    /// `#[timer(interval = "30s")]`, `#[timer(cron = "...")]` (in `super::timer`).
    Timer(TimerAttr),
    /// `#[http("GET", "/path/{param}")]`; repeated attributes on one method fold into
    /// one entrypoint serving every route.
    Http(HttpAttr),
}

pub(crate) struct HttpAttr {
    attr: Attribute,
    /// `(methods, path)`, one per attribute.
    routes: Vec<(LitStr, LitStr)>,
}

pub(crate) struct RpcAttr {
    attr: Attribute,
    name: Option<LitStr>,
}

pub(crate) struct EventHandlerAttr {
    attr: Attribute,
    source: LitStr,
    event_type: LitStr,
    handler_type: Option<(LitStr, &'static str)>,
    reliable_delivery: Option<LitBool>,
    broadcast_identifier: Option<LitStr>,
    requeue_on_error: Option<LitBool>,
}

pub(crate) struct CustomAttr {
    attr: Attribute,
    entrypoint: Expr,
}

const NAMES: &[&str] = &["rpc", "event_handler", "entrypoint", "timer", "http", "ws_rpc"];

/// Reads and strips the entrypoint attributes from `attrs`.
pub(crate) fn take(cx: &Ctxt, attrs: &mut Vec<Attribute>) -> Vec<EntrypointAttr> {
    let mut out = Vec::new();
    attrs.retain(|attr| {
        let Some(name) = NAMES.iter().find(|n| attr.path().is_ident(n)) else {
            return true;
        };
        let parsed = match *name {
            "rpc" => rpc(attr).map(EntrypointAttr::Rpc),
            "ws_rpc" => ws_rpc(attr).map(EntrypointAttr::WsRpc),
            "event_handler" => event_handler(attr).map(EntrypointAttr::EventHandler),
            "timer" => super::timer::parse(attr).map(EntrypointAttr::Timer),
            "http" => http(attr).map(EntrypointAttr::Http),
            _ => custom(attr).map(EntrypointAttr::Custom),
        };
        if let Some(parsed) = cx.ok(parsed) {
            // Several #[http] on one method: one entrypoint with every route.
            if let EntrypointAttr::Http(new) = &parsed
                && let Some(EntrypointAttr::Http(first)) = out.iter_mut().find(|a| matches!(a, EntrypointAttr::Http(_)))
            {
                first.routes.extend(new.routes.iter().cloned());
            } else {
                out.push(parsed);
            }
        }
        false
    });
    if out.len() > 1
        && let Some(EntrypointAttr::Http(http)) = out.iter().find(|a| matches!(a, EntrypointAttr::Http(_)))
    {
        cx.error_spanned_by(
            &http.attr,
            "#[http] stands alone: an HTTP method's parameters are extractors, so it cannot also be another entrypoint",
        );
    }
    out
}

const HTTP_METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
];

fn http(attr: &Attribute) -> syn::Result<HttpAttr> {
    const USAGE: &str = "write #[http(\"GET\", \"/path/{param}\")], or #[http(\"GET,POST\", \"/path\")]";
    let list = attr
        .meta
        .require_list()
        .map_err(|err| syn::Error::new(err.span(), USAGE))?;
    let parser = |input: ParseStream<'_>| {
        let methods: LitStr = input.parse()?;
        input.parse::<Token![,]>()?;
        let path: LitStr = input.parse()?;
        let _ = input.parse::<Option<Token![,]>>()?;
        if !input.is_empty() {
            return Err(input.error("#[http] takes two arguments: the methods and the path"));
        }
        Ok((methods, path))
    };
    let (methods, path) = parser
        .parse2(list.tokens.clone())
        .map_err(|err| syn::Error::new_spanned(attr, format!("{err}: {USAGE}")))?;
    for method in methods.value().split(',') {
        let method = method.trim();
        if !HTTP_METHODS.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            return Err(syn::Error::new_spanned(
                &methods,
                format!(
                    "unknown HTTP method `{method}`; expected one of: {}",
                    HTTP_METHODS.join(", ")
                ),
            ));
        }
    }
    if !path.value().starts_with('/') {
        return Err(syn::Error::new_spanned(&path, "an HTTP route's path starts with `/`"));
    }
    Ok(HttpAttr {
        attr: attr.clone(),
        routes: vec![(methods, path)],
    })
}

fn rpc(attr: &Attribute) -> syn::Result<RpcAttr> {
    named(attr, "rpc")
}

fn ws_rpc(attr: &Attribute) -> syn::Result<RpcAttr> {
    named(attr, "ws_rpc")
}

/// `#[kind]` or `#[kind(name = "...")]`.
fn named(attr: &Attribute, kind: &str) -> syn::Result<RpcAttr> {
    let mut out = RpcAttr {
        attr: attr.clone(),
        name: None,
    };
    match &attr.meta {
        Meta::Path(_) => {}
        Meta::List(list) => {
            let mut seen = Seen::default();
            for kv in args::parse_list(list.tokens.clone())? {
                seen.first(&kv)?;
                match kv.name().as_str() {
                    "name" => out.name = Some(kv.str()?),
                    _ => return Err(args::unknown_key(&kv, kind, &["name"])),
                }
            }
        }
        Meta::NameValue(nv) => {
            return Err(syn::Error::new_spanned(
                nv,
                format!("write #[{kind}] or #[{kind}(name = \"...\")]"),
            ));
        }
    }
    Ok(out)
}

const HANDLER_KEYS: &[&str] = &[
    "handler_type",
    "reliable_delivery",
    "broadcast_identifier",
    "requeue_on_error",
];

fn event_handler(attr: &Attribute) -> syn::Result<EventHandlerAttr> {
    const USAGE: &str = "write #[event_handler(\"source_service\", \"event_type\", ...)]";
    let list = attr
        .meta
        .require_list()
        .map_err(|err| syn::Error::new(err.span(), USAGE))?;
    let parser = |input: ParseStream<'_>| {
        let source: LitStr = input.parse().map_err(|err| syn::Error::new(err.span(), USAGE))?;
        input
            .parse::<Token![,]>()
            .map_err(|err| syn::Error::new(err.span(), USAGE))?;
        let event_type: LitStr = input.parse().map_err(|err| syn::Error::new(err.span(), USAGE))?;
        let rest = if input.is_empty() {
            Vec::new()
        } else {
            input.parse::<Token![,]>()?;
            args::parse_rest(input)?
        };
        Ok((source, event_type, rest))
    };
    let (source, event_type, rest) = parser.parse2(list.tokens.clone())?;
    let mut out = EventHandlerAttr {
        attr: attr.clone(),
        source,
        event_type,
        handler_type: None,
        reliable_delivery: None,
        broadcast_identifier: None,
        requeue_on_error: None,
    };
    let mut seen = Seen::default();
    for kv in rest {
        seen.first(&kv)?;
        match kv.name().as_str() {
            "handler_type" => {
                let lit = kv.str()?;
                let variant = match lit.value().as_str() {
                    "service_pool" => "ServicePool",
                    "singleton" => "Singleton",
                    "broadcast" => "Broadcast",
                    other => {
                        return Err(syn::Error::new_spanned(
                            &lit,
                            format!(
                                "unknown handler_type `{other}`; expected one of: \"service_pool\", \"singleton\", \"broadcast\""
                            ),
                        ));
                    }
                };
                out.handler_type = Some((lit, variant));
            }
            "reliable_delivery" => out.reliable_delivery = Some(kv.bool()?),
            "broadcast_identifier" => out.broadcast_identifier = Some(kv.str()?),
            "requeue_on_error" => out.requeue_on_error = Some(kv.bool()?),
            _ => return Err(args::unknown_key(&kv, "event_handler", HANDLER_KEYS)),
        }
    }
    Ok(out)
}

fn custom(attr: &Attribute) -> syn::Result<CustomAttr> {
    let list = attr.meta.require_list().map_err(|err| {
        syn::Error::new(
            err.span(),
            "write #[entrypoint(<an Entrypoint value>)], e.g. #[entrypoint(Once::<()>::new(()))]",
        )
    })?;
    Ok(CustomAttr {
        attr: attr.clone(),
        entrypoint: syn::parse2(list.tokens.clone())?,
    })
}

impl EntrypointAttr {
    /// The attribute's name, for messages: `rpc`, `event_handler`, `entrypoint`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Rpc(_) => "rpc",
            Self::EventHandler(_) => "event_handler",
            Self::WsRpc(_) => "ws_rpc",
            Self::Custom(_) => "entrypoint",
            Self::Timer(_) => "timer",
            Self::Http(_) => "http",
        }
    }

    /// The name the entrypoint is registered under: the method's, or `#[rpc(name)]`.
    pub(crate) fn registered_name(&self, method: &Method) -> String {
        match self {
            Self::Rpc(RpcAttr { name: Some(name), .. }) | Self::WsRpc(RpcAttr { name: Some(name), .. }) => name.value(),
            _ => method.ident.to_string(),
        }
    }

    /// What fires the entrypoint, as `inspect` shows it (empty when nothing to say).
    pub(crate) fn detail(&self) -> String {
        match self {
            Self::EventHandler(a) => format!("{}.{}", a.source.value(), a.event_type.value()),
            Self::Timer(a) => a.detail(),
            Self::Http(a) => a
                .routes
                .iter()
                .map(|(methods, path)| format!("{} {}", methods.value().to_uppercase(), path.value()))
                .collect::<Vec<_>>()
                .join(", "),
            Self::Rpc(_) | Self::WsRpc(_) | Self::Custom(_) => String::new(),
        }
    }

    /// The attribute, to point errors at.
    pub(crate) fn span_tokens(&self) -> TokenStream {
        match self {
            Self::Rpc(a) | Self::WsRpc(a) => a.attr.to_token_stream(),
            Self::EventHandler(a) => a.attr.to_token_stream(),
            Self::Custom(a) => a.attr.to_token_stream(),
            Self::Timer(a) => a.span_tokens(),
            Self::Http(a) => a.attr.to_token_stream(),
        }
    }

    /// The statement registering the entrypoint on `entrypoints`.
    pub(crate) fn expand(&self, cx: &Ctxt, method: &Method, krate: &Path) -> Option<TokenStream> {
        let p = quote!(#krate::__private);
        let name = LitStr::new(&self.registered_name(method), method.ident.span());
        let assert_result = method.assert_result();
        let ok = method.ok_type(&p);
        // Errors about the method's types point at its return type, not at `#[service]`.
        let add = quote_spanned! {method.ret_span=> entrypoints.add };
        let body = match self {
            Self::Rpc(_) => {
                let entrypoint = args::respan(quote!(#p::RpcEntrypoint::<__Args, #ok>::new()), method.ret_span);
                args_entrypoint(method, &p, &name, &add, &ok, &entrypoint)
            }
            Self::WsRpc(_) => ws_rpc_entrypoint(cx, method, &p, &name, &add, &ok)?,
            Self::EventHandler(attr) => {
                let [param] = method.params.as_slice() else {
                    cx.error_spanned_by(
                        &method.ident,
                        format!(
                            "an #[event_handler] method takes exactly one payload parameter after `&self`, found {}",
                            method.params.len()
                        ),
                    );
                    return None;
                };
                let ty = &param.ty;
                let deserialize = quote_spanned! {ty.span()=> let _ = __assert_deserialize::<#ty>; };
                let (source, event_type) = (&attr.source, &attr.event_type);
                let mut options = Vec::new();
                if let Some((lit, variant)) = &attr.handler_type {
                    let variant = syn::Ident::new(variant, lit.span());
                    options.push(quote!(.handler_type(#p::HandlerType::#variant)));
                }
                if let Some(value) = &attr.reliable_delivery {
                    options.push(quote!(.reliable_delivery(#value)));
                }
                if let Some(value) = &attr.broadcast_identifier {
                    options.push(quote!(.broadcast_identifier(#value)));
                }
                if let Some(value) = &attr.requeue_on_error {
                    options.push(quote!(.requeue_on_error(#value)));
                }
                let handler = method.handler(&p, quote!(payload: #ty), quote!(payload));
                let event_handler = args::respan(quote!(#p::EventHandler::<#ty, #ok>), ty.span());
                let event_handler = quote!(#event_handler::new(#source, #event_type));
                quote! {
                    #deserialize
                    #add(
                        #name,
                        #event_handler #( #options )*,
                        #handler,
                    );
                }
            }
            Self::Http(attr) => {
                let count = method.params.len();
                let tys: Vec<_> = method.params.iter().map(|param| &param.ty).collect();
                // axum's rule, checked per parameter: only the last may read the body.
                let asserts = tys.iter().enumerate().map(|(index, ty)| {
                    if index + 1 < count {
                        quote_spanned! {ty.span()=> #p::assert_http_parts_extractor::<#ty>(); }
                    } else {
                        quote_spanned! {ty.span()=> #p::assert_http_extractor::<#ty, _>(); }
                    }
                });
                let ret = &method.ret;
                let assert_ok =
                    quote_spanned! {method.ret_span=> #p::assert_http_response::<<#ret as #p::HandlerResult>::Ok>(); };
                let values: Vec<_> = (0..count)
                    .map(|i| syn::Ident::new(&format!("__arg{i}"), proc_macro2::Span::call_site()))
                    .collect();
                let ident = &method.ident;
                let into_result = args::respan(quote!(#p::into_http_result::<#ret>), method.ret_span);
                let handler = quote_spanned! {method.ret_span=>
                    |worker: Self, ( #( #values, )* ): ( #( #tys, )* )| async move {
                        #into_result(worker.#ident( #( #values ),* ).await)
                    }
                };
                let mut routes = attr.routes.iter();
                let (methods, path) = routes.next().expect("one route per attribute");
                let more = routes.map(|(methods, path)| quote!(.route(#methods, #path)));
                let http_entrypoint = args::respan(quote!(#p::HttpEntrypoint::<( #( #tys, )* ), _>), method.ret_span);
                quote! {
                    #( #asserts )*
                    #assert_ok
                    #add(#name, #http_entrypoint::new(#methods, #path) #( #more )*, #handler);
                }
            }
            Self::Custom(attr) => {
                let entrypoint = &attr.entrypoint;
                let handler = match method.params.as_slice() {
                    [] => method.handler(&p, quote!((): ()), quote!()),
                    [param] => {
                        let ty = &param.ty;
                        method.handler(&p, quote!(request: #ty), quote!(request))
                    }
                    _ => {
                        cx.error_spanned_by(
                            &method.ident,
                            "an #[entrypoint] method takes at most one request parameter after `&self`",
                        );
                        return None;
                    }
                };
                quote! {
                    entrypoints.add(#name, #entrypoint, #handler);
                }
            }
            Self::Timer(attr) => attr.expand(cx, method, &p, &name)?,
        };
        Some(quote! {
            {
                #assert_result
                #body
            }
        })
    }
}

/// The registration of an entrypoint whose request binds the method's parameters from
/// RPC arguments (`#[rpc]`, `#[ws_rpc]`): a `__Args` tuple struct implementing
/// `FromRpcArgs`, and `entrypoint` (an expression of an entrypoint over `__Args`).
fn args_entrypoint(
    method: &Method,
    p: &TokenStream,
    name: &LitStr,
    add: &TokenStream,
    ok: &TokenStream,
    entrypoint: &TokenStream,
) -> TokenStream {
    let tys: Vec<_> = method.params.iter().map(|param| &param.ty).collect();
    let deserialize = tys
        .iter()
        .map(|ty| quote_spanned! {ty.span()=> let _ = __assert_deserialize::<#ty>; });
    let serialize = quote_spanned! {method.ret_span=> let _ = __assert_serialize::<#ok>; };
    let decode = if method.params.is_empty() {
        quote! {
            args.bind(method, &[])?;
            ::core::result::Result::Ok(Self())
        }
    } else {
        let params = method.params.iter().map(|param| {
            let wire = &param.wire;
            if param.is_optional() {
                quote!(#p::Param::optional(#wire))
            } else {
                quote!(#p::Param::required(#wire))
            }
        });
        let values = method.params.iter().map(|param| {
            let (wire, ty) = (&param.wire, &param.ty);
            let decode = args::respan(quote!(#p::decode_arg::<#ty>), ty.span());
            quote!(#decode(method, #wire, values.next().unwrap_or_default())?)
        });
        quote! {
            let mut values = args.bind(method, &[ #( #params ),* ])?.into_iter();
            ::core::result::Result::Ok(Self( #( #values ),* ))
        }
    };
    let indices = (0..method.params.len()).map(syn::Index::from);
    let handler = method.handler(p, quote!(args: __Args), quote!( #( args.#indices ),* ));
    quote! {
        #( #deserialize )*
        #serialize
        struct __Args( #( #tys ),* );
        impl #p::FromRpcArgs for __Args {
            fn from_rpc_args(
                args: #p::RpcArgs,
                method: &str,
            ) -> ::core::result::Result<Self, #p::RemoteError> {
                #decode
            }
        }
        #add(#name, #entrypoint, #handler);
    }
}

/// `#[ws_rpc]`: like `#[rpc]`, with the socket id bound to the first parameter.
fn ws_rpc_entrypoint(
    cx: &Ctxt,
    method: &Method,
    p: &TokenStream,
    name: &LitStr,
    add: &TokenStream,
    ok: &TokenStream,
) -> Option<TokenStream> {
    if method.params.is_empty() {
        cx.error_spanned_by(
            &method.ident,
            "a #[ws_rpc] method takes the socket id first: `async fn name(&self, socket_id: String, ...)`",
        );
        return None;
    }
    let entrypoint = args::respan(quote!(#p::WsRpcEntrypoint::<__Args, #ok>::new()), method.ret_span);
    Some(args_entrypoint(method, p, name, add, ok, &entrypoint))
}
