//! The entrypoint attributes `#[service]` reads on methods. Adding one (`#[http]`,
//! `#[timer]`, `#[ws_rpc]`) is one variant here, its parser in [`take`], and its
//! expansion in [`EntrypointAttr::expand`].

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::{
    Attribute, Expr, Ident, LitBool, LitInt, LitStr, Meta, Path, Token,
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
    /// `#[consume(queue = "...", ...)]`.
    Consume(ConsumeAttr),
}

pub(crate) struct HttpAttr {
    attr: Attribute,
    /// `(methods, path)`, one per attribute.
    routes: Vec<(LitStr, LitStr)>,
    max_workers: Option<LitInt>,
}

pub(crate) struct RpcAttr {
    attr: Attribute,
    name: Option<LitStr>,
    max_workers: Option<LitInt>,
    /// `queue_type = "quorum"` (`#[rpc]` only): the literal and the `QueueType` variant.
    queue_type: Option<(LitStr, &'static str)>,
    sensitive: Vec<LitStr>,
}

pub(crate) struct ConsumeAttr {
    attr: Attribute,
    queue: LitStr,
    /// The exchange's name, and its kind's variant (`ExchangeKind::Direct` unless told).
    exchange: Option<(LitStr, &'static str)>,
    routing_key: Option<LitStr>,
    durable: Option<LitBool>,
    requeue_on_error: Option<LitBool>,
    max_workers: Option<LitInt>,
    queue_type: Option<(LitStr, &'static str)>,
    sensitive: Vec<LitStr>,
}

pub(crate) struct EventHandlerAttr {
    attr: Attribute,
    source: LitStr,
    event_type: LitStr,
    handler_type: Option<(LitStr, &'static str)>,
    reliable_delivery: Option<LitBool>,
    broadcast_identifier: Option<LitStr>,
    requeue_on_error: Option<LitBool>,
    retry: Option<RetryAttr>,
    dead_letter: Option<LitStr>,
    max_workers: Option<LitInt>,
    queue_type: Option<(LitStr, &'static str)>,
    sensitive: Vec<LitStr>,
}

/// `retry(max = 5, backoff = "1s..30s")`, checked: the backoff in nanoseconds.
struct RetryAttr {
    key: Ident,
    max: u32,
    first_nanos: u64,
    cap_nanos: u64,
}

pub(crate) struct CustomAttr {
    attr: Attribute,
    entrypoint: Expr,
}

const NAMES: &[&str] = &[
    "rpc",
    "event_handler",
    "entrypoint",
    "timer",
    "http",
    "ws_rpc",
    "consume",
];

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
            "consume" => consume(attr).map(EntrypointAttr::Consume),
            _ => custom(attr).map(EntrypointAttr::Custom),
        };
        if let Some(parsed) = cx.ok(parsed) {
            // Several #[http] on one method: one entrypoint with every route.
            if let EntrypointAttr::Http(new) = &parsed
                && let Some(EntrypointAttr::Http(first)) = out.iter_mut().find(|a| matches!(a, EntrypointAttr::Http(_)))
            {
                first.routes.extend(new.routes.iter().cloned());
                if let Some(limit) = &new.max_workers {
                    if first.max_workers.is_some() {
                        cx.error_spanned_by(
                            limit,
                            "`max_workers` is given twice: the #[http] attributes of one method are one entrypoint; \
                             give it on one of them",
                        );
                    } else {
                        first.max_workers = Some(limit.clone());
                    }
                }
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
        if input.is_empty() {
            return Ok((methods, path, Vec::new()));
        }
        input.parse::<Token![,]>()?;
        if !input.is_empty() && !input.peek(Ident) {
            return Err(input.error("#[http] takes the methods and the path, then options such as `max_workers = 4`"));
        }
        Ok((methods, path, args::parse_rest(input)?))
    };
    let (methods, path, rest) = parser
        .parse2(list.tokens.clone())
        .map_err(|err| syn::Error::new_spanned(attr, format!("{err}: {USAGE}")))?;
    let mut max_workers = None;
    let mut seen = Seen::default();
    for kv in rest {
        seen.first(&kv)?;
        match kv.name().as_str() {
            "max_workers" => max_workers = Some(kv.max_workers()?),
            _ => return Err(args::unknown_key(&kv, "http", &["max_workers"])),
        }
    }
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
        max_workers,
    })
}

fn rpc(attr: &Attribute) -> syn::Result<RpcAttr> {
    named(attr, "rpc")
}

fn ws_rpc(attr: &Attribute) -> syn::Result<RpcAttr> {
    named(attr, "ws_rpc")
}

/// `#[kind]` or `#[kind(name = "...", max_workers = N)]`, and `queue_type` for `#[rpc]`.
fn named(attr: &Attribute, kind: &str) -> syn::Result<RpcAttr> {
    let mut out = RpcAttr {
        attr: attr.clone(),
        name: None,
        max_workers: None,
        queue_type: None,
        sensitive: Vec::new(),
    };
    let keys: &[&str] = if kind == "rpc" {
        &["name", "max_workers", "queue_type", "sensitive"]
    } else {
        &["name", "max_workers", "sensitive"]
    };
    match &attr.meta {
        Meta::Path(_) => {}
        Meta::List(list) => {
            let mut seen = Seen::default();
            for kv in args::parse_list(list.tokens.clone())? {
                seen.first(&kv)?;
                match kv.name().as_str() {
                    "name" => out.name = Some(kv.str()?),
                    "max_workers" => out.max_workers = Some(kv.max_workers()?),
                    "queue_type" if kind == "rpc" => out.queue_type = Some(queue_type(&kv)?),
                    "sensitive" => out.sensitive = sensitive(&kv)?,
                    _ => return Err(args::unknown_key(&kv, kind, keys)),
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

/// `queue_type = "classic" | "quorum"`: the literal and the `QueueType` variant.
fn queue_type(kv: &args::KeyValue) -> syn::Result<(LitStr, &'static str)> {
    let lit = kv.str()?;
    let variant = match lit.value().as_str() {
        "classic" => "Classic",
        "quorum" => "Quorum",
        other => {
            return Err(syn::Error::new_spanned(
                &lit,
                format!("unknown queue_type `{other}`; expected \"classic\" or \"quorum\""),
            ));
        }
    };
    Ok((lit, variant))
}

/// `sensitive = ["password", "card.number", "items[0]"]`: each a path that reads (its
/// first step is checked against the method's parameters at expansion).
fn sensitive(kv: &args::KeyValue) -> syn::Result<Vec<LitStr>> {
    let paths = kv.str_list()?;
    for lit in &paths {
        if let Err(why) = check_path(&lit.value()) {
            return Err(syn::Error::new_spanned(
                lit,
                format!(
                    "{why}; a sensitive argument is a parameter's name, then `.key` or `[index]` steps: \
                     \"password\", \"payload.card_number\", \"items[0]\""
                ),
            ));
        }
    }
    Ok(paths)
}

/// Why a sensitive argument path does not read (the runtime's `redact::check_path`).
fn check_path(path: &str) -> Result<(), &'static str> {
    let root_end = path.find(['.', '[']).unwrap_or(path.len());
    if root_end == 0 {
        return Err("it does not start with a parameter's name");
    }
    let mut rest = &path[root_end..];
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                return Err("a `.` is not followed by a key");
            }
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or("a `[` is not closed")?;
            after[..end]
                .parse::<usize>()
                .map_err(|_| "an index is not a whole number")?;
            rest = &after[end + 1..];
        } else {
            return Err("a `]` is not followed by `.` or `[`");
        }
    }
    Ok(())
}

/// `.sensitive_arguments(&[...])`, or nothing; a path whose first step names none of
/// `params` is an error pointing at it.
fn sensitive_option(cx: &Ctxt, paths: &[LitStr], params: &[String], method: &Method) -> TokenStream {
    if paths.is_empty() {
        return TokenStream::new();
    }
    for lit in paths {
        let path = lit.value();
        let root = &path[..path.find(['.', '[']).unwrap_or(path.len())];
        if !params.iter().any(|p| p == root) {
            let known = if params.is_empty() {
                "it takes none".to_owned()
            } else {
                format!(
                    "its parameters: {}",
                    params.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
                )
            };
            cx.error_spanned_by(
                lit,
                format!(
                    "sensitive argument `{path}` names no parameter of `{}`; {known}",
                    method.ident
                ),
            );
        }
    }
    quote!(.sensitive_arguments(&[ #( #paths ),* ]))
}

/// `.queue_type(QueueType::Variant)`, or nothing.
fn queue_type_option(p: &TokenStream, queue_type: Option<&(LitStr, &'static str)>) -> TokenStream {
    match queue_type {
        Some((lit, variant)) => {
            let variant = Ident::new(variant, lit.span());
            quote!(.queue_type(#p::QueueType::#variant))
        }
        None => TokenStream::new(),
    }
}

const HANDLER_KEYS: &[&str] = &[
    "handler_type",
    "reliable_delivery",
    "broadcast_identifier",
    "requeue_on_error",
    "retry",
    "dead_letter",
    "max_workers",
    "queue_type",
    "sensitive",
];

const RETRY_USAGE: &str = "write `retry(max = 5, backoff = \"1s..30s\")` (the delay doubles from 1s up to 30s) or \
                           `retry(max = 3, backoff = \"5s\")` (a fixed delay)";

/// `retry(max = N, backoff = "1s..30s" | "5s")`.
fn retry(kv: &args::KeyValue) -> syn::Result<RetryAttr> {
    let mut max = None;
    let mut backoff = None;
    let mut seen = Seen::default();
    for item in kv.nested(RETRY_USAGE)? {
        seen.first(&item)?;
        match item.name().as_str() {
            "max" => {
                let lit = item.int()?;
                let value: u32 = lit
                    .base10_parse()
                    .map_err(|_| syn::Error::new_spanned(&lit, "`max` is a number of retries that fits 32 bits"))?;
                if value == 0 {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "`max` counts the retries after the first attempt and must be at least 1; to dead-letter \
                         without retrying, drop `retry` and keep `dead_letter`",
                    ));
                }
                max = Some(value);
            }
            "backoff" => backoff = Some(backoff_nanos(&item.str()?)?),
            _ => {
                return Err(args::unknown_key(
                    &item,
                    "event_handler(.., retry(..))",
                    &["max", "backoff"],
                ));
            }
        }
    }
    let Some(max) = max else {
        return Err(syn::Error::new(
            kv.key.span(),
            format!("`retry` needs `max`, the number of retries after the first attempt: {RETRY_USAGE}"),
        ));
    };
    let Some((first_nanos, cap_nanos)) = backoff else {
        return Err(syn::Error::new(
            kv.key.span(),
            format!("`retry` needs a `backoff`: {RETRY_USAGE}"),
        ));
    };
    Ok(RetryAttr {
        key: kv.key.clone(),
        max,
        first_nanos,
        cap_nanos,
    })
}

/// `"1s..30s"` or `"5s"`, as the first and the longest delay in nanoseconds.
fn backoff_nanos(lit: &LitStr) -> syn::Result<(u64, u64)> {
    const FORMS: &str = "write one delay (\"5s\") or the first and the longest (\"1s..30s\"), each as \"500ms\", \
                         \"30s\", \"5m\" or \"1h\"";
    let text = lit.value();
    let delay = |part: &str| -> syn::Result<f64> {
        let seconds = super::timer::parse_interval(part).map_err(|why| {
            syn::Error::new_spanned(
                lit,
                format!("invalid backoff `{text}`: `{}`: {why}; {FORMS}", part.trim()),
            )
        })?;
        if !seconds.is_finite() || seconds >= f64::from(u32::MAX) / 1000.0 + 0.001 {
            return Err(syn::Error::new_spanned(
                lit,
                format!(
                    "invalid backoff `{text}`: `{}` is longer than 4294967295ms (about 49 days), RabbitMQ's longest \
                     message TTL",
                    part.trim()
                ),
            ));
        }
        if seconds < 0.001 {
            return Err(syn::Error::new_spanned(
                lit,
                format!("invalid backoff `{text}`: a delay must be at least 1ms"),
            ));
        }
        Ok(seconds)
    };
    let (first, cap) = match text.split_once("..") {
        Some((first, cap)) => (delay(first)?, delay(cap)?),
        None => {
            let fixed = delay(&text)?;
            (fixed, fixed)
        }
    };
    if cap < first {
        return Err(syn::Error::new_spanned(
            lit,
            format!("invalid backoff `{text}`: the longest delay (after `..`) is shorter than the first; {FORMS}"),
        ));
    }
    // Whole milliseconds stay exact; the rest rounds to the nanosecond.
    let nanos = |seconds: f64| (seconds * 1e9).round() as u64;
    Ok((nanos(first), nanos(cap)))
}

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
        retry: None,
        dead_letter: None,
        max_workers: None,
        queue_type: None,
        sensitive: Vec::new(),
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
            "retry" => out.retry = Some(retry(&kv)?),
            "dead_letter" => {
                let lit = kv.str()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "`dead_letter` names an exchange (declared as a durable topic exchange), e.g. \
                         dead_letter = \"orders.dead\"",
                    ));
                }
                out.dead_letter = Some(lit);
            }
            "max_workers" => out.max_workers = Some(kv.max_workers()?),
            "queue_type" => out.queue_type = Some(queue_type(&kv)?),
            "sensitive" => out.sensitive = sensitive(&kv)?,
            _ => return Err(args::unknown_key(&kv, "event_handler", HANDLER_KEYS)),
        }
    }
    if let Some(requeue) = &out.requeue_on_error
        && requeue.value
        && (out.retry.is_some() || out.dead_letter.is_some())
    {
        return Err(syn::Error::new_spanned(
            requeue,
            "`requeue_on_error` does not go with `retry` or `dead_letter`: requeueing redelivers a failed event at \
             once and for ever, `retry` waits between attempts and stops; choose one",
        ));
    }
    Ok(out)
}

const CONSUME_KEYS: &[&str] = &[
    "queue",
    "exchange",
    "exchange_type",
    "routing_key",
    "durable",
    "requeue_on_error",
    "max_workers",
    "queue_type",
    "sensitive",
];

/// `#[consume(queue = "...", exchange = "...", exchange_type = "topic", routing_key = "...",
/// durable = bool, requeue_on_error = bool, max_workers = N, queue_type = "quorum")]`.
fn consume(attr: &Attribute) -> syn::Result<ConsumeAttr> {
    const USAGE: &str = "write #[consume(queue = \"name\")], with options such as `exchange = \"orders\"`, \
                         `routing_key = \"order.*\"`, `requeue_on_error = true`";
    let list = attr
        .meta
        .require_list()
        .map_err(|err| syn::Error::new(err.span(), USAGE))?;
    let mut queue = None;
    let mut exchange: Option<LitStr> = None;
    let mut exchange_type: Option<(LitStr, &'static str)> = None;
    let mut routing_key: Option<LitStr> = None;
    let mut durable = None;
    let mut requeue_on_error = None;
    let mut max_workers = None;
    let mut queue_type_attr = None;
    let mut sensitive_paths = Vec::new();
    let mut seen = Seen::default();
    for kv in args::parse_list(list.tokens.clone())? {
        seen.first(&kv)?;
        match kv.name().as_str() {
            "queue" => {
                let lit = kv.str()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new_spanned(&lit, "the queue needs a name"));
                }
                queue = Some(lit);
            }
            "exchange" => {
                let lit = kv.str()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "`exchange = \"\"` is the default exchange, which routes by queue name already: drop it",
                    ));
                }
                exchange = Some(lit);
            }
            "exchange_type" => {
                let lit = kv.str()?;
                let variant = match lit.value().as_str() {
                    "direct" => "Direct",
                    "topic" => "Topic",
                    "fanout" => "Fanout",
                    other => {
                        return Err(syn::Error::new_spanned(
                            &lit,
                            format!(
                                "unknown exchange_type `{other}`; expected one of: \"direct\", \"topic\", \"fanout\""
                            ),
                        ));
                    }
                };
                exchange_type = Some((lit, variant));
            }
            "routing_key" => routing_key = Some(kv.str()?),
            "durable" => durable = Some(kv.bool()?),
            "requeue_on_error" => requeue_on_error = Some(kv.bool()?),
            "max_workers" => max_workers = Some(kv.max_workers()?),
            "queue_type" => queue_type_attr = Some(queue_type(&kv)?),
            "sensitive" => sensitive_paths = sensitive(&kv)?,
            _ => return Err(args::unknown_key(&kv, "consume", CONSUME_KEYS)),
        }
    }
    let Some(queue) = queue else {
        return Err(syn::Error::new_spanned(
            attr,
            format!("#[consume] needs a queue: {USAGE}"),
        ));
    };
    if exchange.is_none() {
        if let Some((lit, _)) = &exchange_type {
            return Err(syn::Error::new_spanned(
                lit,
                "`exchange_type` needs an `exchange = \"...\"` to apply to",
            ));
        }
        if let Some(lit) = &routing_key {
            return Err(syn::Error::new_spanned(
                lit,
                "`routing_key` binds the queue to an `exchange = \"...\"`: without one, messages reach the queue \
                 through the default exchange, by its name",
            ));
        }
    }
    let exchange = exchange.map(|name| (name, exchange_type.map_or("Direct", |(_, variant)| variant)));
    Ok(ConsumeAttr {
        attr: attr.clone(),
        queue,
        exchange,
        routing_key,
        durable,
        requeue_on_error,
        max_workers,
        queue_type: queue_type_attr,
        sensitive: sensitive_paths,
    })
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
            Self::Consume(_) => "consume",
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
            Self::Consume(a) => match &a.exchange {
                Some((exchange, _)) => format!(
                    "queue {} (exchange {}, routing key `{}`)",
                    a.queue.value(),
                    exchange.value(),
                    a.routing_key.as_ref().map(LitStr::value).unwrap_or_default()
                ),
                None => format!("queue {}", a.queue.value()),
            },
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
            Self::Consume(a) => a.attr.to_token_stream(),
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
            Self::Rpc(attr) => {
                let entrypoint = args::respan(quote!(#p::RpcEntrypoint::<__Args, #ok>::new()), method.ret_span);
                let limit = limit(attr.max_workers.as_ref());
                let queue_type = queue_type_option(&p, attr.queue_type.as_ref());
                let sensitive = sensitive_option(cx, &attr.sensitive, &method.wire_names(), method);
                args_entrypoint(
                    method,
                    &p,
                    &name,
                    &add,
                    &ok,
                    &quote!(#entrypoint #limit #queue_type #sensitive),
                )
            }
            Self::WsRpc(attr) => ws_rpc_entrypoint(cx, method, &p, &name, &add, &ok, attr)?,
            Self::Consume(attr) => attr.expand(cx, method, &p, &name, &add, &ok)?,
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
                    let variant = Ident::new(variant, lit.span());
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
                if let Some(RetryAttr {
                    key,
                    max,
                    first_nanos,
                    cap_nanos,
                }) = &attr.retry
                {
                    options.push(quote_spanned! {key.span()=>
                        .retry(#p::Retry::new(
                            #max,
                            #p::Backoff::exponential(
                                ::core::time::Duration::from_nanos(#first_nanos),
                                ::core::time::Duration::from_nanos(#cap_nanos),
                            ),
                        ))
                    });
                }
                if let Some(exchange) = &attr.dead_letter {
                    options.push(quote!(.dead_letter(#exchange)));
                }
                options.push(limit(attr.max_workers.as_ref()));
                options.push(queue_type_option(&p, attr.queue_type.as_ref()));
                let wire = &param.wire;
                options.push(quote!(.parameter(#wire)));
                options.push(sensitive_option(cx, &attr.sensitive, &method.wire_names(), method));
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
                    .map(|i| Ident::new(&format!("__arg{i}"), proc_macro2::Span::call_site()))
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
                let limit = limit(attr.max_workers.as_ref());
                let http_entrypoint = args::respan(quote!(#p::HttpEntrypoint::<( #( #tys, )* ), _>), method.ret_span);
                quote! {
                    #( #asserts )*
                    #assert_ok
                    #add(#name, #http_entrypoint::new(#methods, #path) #( #more )* #limit, #handler);
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
    let wires = method.params.iter().map(|param| &param.wire);
    quote! {
        #( #deserialize )*
        #serialize
        struct __Args( #( #tys ),* );
        impl #p::FromRpcArgs for __Args {
            const PARAMETERS: &'static [&'static str] = &[ #( #wires ),* ];

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

/// `.max_workers(N)`, or nothing.
pub(crate) fn limit(max_workers: Option<&LitInt>) -> TokenStream {
    match max_workers {
        Some(n) => quote!(.max_workers(#n)),
        None => TokenStream::new(),
    }
}

impl ConsumeAttr {
    /// `entrypoints.add("name", Consume::<Payload, Ok>::new("queue")..., handler)`.
    fn expand(
        &self,
        cx: &Ctxt,
        method: &Method,
        p: &TokenStream,
        name: &LitStr,
        add: &TokenStream,
        ok: &TokenStream,
    ) -> Option<TokenStream> {
        let [param] = method.params.as_slice() else {
            cx.error_spanned_by(
                &method.ident,
                format!(
                    "a #[consume] method takes exactly one message parameter after `&self`, found {}",
                    method.params.len()
                ),
            );
            return None;
        };
        let ty = &param.ty;
        let deserialize = quote_spanned! {ty.span()=> let _ = __assert_deserialize::<#ty>; };
        let queue = &self.queue;
        let mut options = Vec::new();
        if let Some((exchange, variant)) = &self.exchange {
            let variant = Ident::new(variant, exchange.span());
            options.push(quote!(.exchange(#p::Exchange::new(#exchange, #p::ExchangeKind::#variant))));
        }
        if let Some(value) = &self.routing_key {
            options.push(quote!(.routing_key(#value)));
        }
        if let Some(value) = &self.durable {
            options.push(quote!(.durable(#value)));
        }
        if let Some(value) = &self.requeue_on_error {
            options.push(quote!(.requeue_on_error(#value)));
        }
        options.push(limit(self.max_workers.as_ref()));
        options.push(queue_type_option(p, self.queue_type.as_ref()));
        let wire = &param.wire;
        options.push(quote!(.parameter(#wire)));
        options.push(sensitive_option(cx, &self.sensitive, &method.wire_names(), method));
        let handler = method.handler(p, quote!(message: #ty), quote!(message));
        let consume = args::respan(quote!(#p::Consume::<#ty, #ok>), ty.span());
        Some(quote! {
            #deserialize
            #add(
                #name,
                #consume::new(#queue) #( #options )*,
                #handler,
            );
        })
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
    attr: &RpcAttr,
) -> Option<TokenStream> {
    if method.params.is_empty() {
        cx.error_spanned_by(
            &method.ident,
            "a #[ws_rpc] method takes the socket id first: `async fn name(&self, socket_id: String, ...)`",
        );
        return None;
    }
    let entrypoint = args::respan(quote!(#p::WsRpcEntrypoint::<__Args, #ok>::new()), method.ret_span);
    let limit = limit(attr.max_workers.as_ref());
    let sensitive = sensitive_option(cx, &attr.sensitive, &method.wire_names(), method);
    Some(args_entrypoint(
        method,
        p,
        name,
        add,
        ok,
        &quote!(#entrypoint #limit #sensitive),
    ))
}
