//! Context data on the wire: `nameko.<key>` headers in and out.

use nameko_core::{ContextData, TRACE_ID_KEY, WorkerContext, is_valid_trace_id};
use serde_json::Value;

use crate::{
    broker::{FieldValue, Headers},
    inbound::MAX_HEADER_DEPTH,
};

/// The prefix of context headers.
pub const HEADER_PREFIX: &str = "nameko.";

/// The context data of an incoming message: only `nameko.*` headers, without the
/// prefix (broker headers such as `x-death` never leak into context data). A raw W3C
/// `traceparent` header supplies the trace id when there is no `nameko.trace_id`. A
/// value nested more than [`MAX_HEADER_DEPTH`] levels deep is left out (and logged):
/// converting it would recurse that deep.
pub fn context_from_headers(headers: Option<&Headers>) -> ContextData {
    let mut data = ContextData::new();
    let Some(headers) = headers else { return data };
    for (name, value) in headers.iter() {
        if let Some(key) = name.strip_prefix(HEADER_PREFIX)
            && !key.is_empty()
        {
            if nests_deeper_than(value, MAX_HEADER_DEPTH) {
                tracing::warn!(
                    header = name,
                    "leaving out a context header nested more than {MAX_HEADER_DEPTH} levels deep"
                );
                continue;
            }
            data.insert(key, value.to_json());
        }
    }
    if data.trace_id().is_none()
        && let Some(FieldValue::String(parent)) = headers.get("traceparent")
        && let Some(trace_id) = trace_id_from_traceparent(parent)
    {
        data.insert(TRACE_ID_KEY, trace_id);
    }
    data
}

/// Whether `value` holds lists or tables more than `limit` levels deep (a list of
/// strings is one level). Iterative: never recurses, however deep the value.
fn nests_deeper_than(value: &FieldValue, limit: usize) -> bool {
    // The usual headers — scalars, and lists or tables of scalars (`call_id_stack`) —
    // are answered without a stack.
    let flat = |value: &FieldValue| !matches!(value, FieldValue::Array(_) | FieldValue::Table(_));
    match value {
        value if flat(value) => return false,
        FieldValue::Array(items) if items.iter().all(flat) => return limit < 1,
        FieldValue::Table(table) if table.iter().all(|(_, value)| flat(value)) => return limit < 1,
        _ => {}
    }
    let mut open = vec![(value, 0)];
    while let Some((value, depth)) = open.pop() {
        let items: Box<dyn Iterator<Item = &FieldValue>> = match value {
            FieldValue::Array(items) => Box::new(items.iter()),
            FieldValue::Table(table) => Box::new(table.iter().map(|(_, v)| v)),
            _ => continue,
        };
        if depth + 1 > limit {
            return true;
        }
        open.extend(items.map(|item| (item, depth + 1)));
    }
    false
}

/// The trace-id part of a W3C `traceparent` (`<version>-<trace-id>-<parent-id>-<flags>`),
/// if it is a valid trace id (`[A-Za-z0-9._-]{1,128}`).
pub(crate) fn trace_id_from_traceparent(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| is_valid_trace_id(id))
}

/// A new trace id, for a call that starts a trace.
pub(crate) fn new_trace_id() -> String {
    nameko_core::ids::uuid4_simple()
}

/// The headers of an outgoing message: every context key as `nameko.<key>`; keys whose
/// value is null are left out, as Nameko does.
pub fn headers_from_context(data: &ContextData) -> Headers {
    let mut headers = Headers::new();
    for (key, value) in data.iter() {
        if !value.is_null() {
            headers.insert(format!("{HEADER_PREFIX}{key}"), FieldValue::from_json(value));
        }
    }
    headers
}

/// The context data of a message published outside any worker: a fresh trace.
pub fn edge_context() -> ContextData {
    ContextData::new().with(TRACE_ID_KEY, Value::String(new_trace_id()))
}

/// The context data a message published by a dependency carries: inside a worker, the
/// worker's (its context data and call id stack); outside any, a fresh trace id with
/// `data` over it (which may bring its own `trace_id`). What the event dispatcher and
/// the publisher send as `nameko.*` headers.
pub(crate) fn outgoing_context(cx: Option<&WorkerContext>, data: &ContextData) -> ContextData {
    match cx {
        Some(cx) => cx.outgoing_data(),
        None => {
            let mut outgoing = edge_context();
            for (key, value) in data.iter() {
                outgoing.insert(key, value.clone());
            }
            outgoing
        }
    }
}

/// What an outgoing message is, for its span.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sending {
    /// An RPC call.
    Call,
    /// An event dispatch.
    Dispatch,
    /// A `Publisher` message.
    Publish,
}

/// The span of one outgoing message (feature `otel`; nothing without it): a child of the
/// worker's span, its `traceparent` put in the message's context data. It ends when
/// dropped.
#[derive(Debug, Default)]
pub(crate) struct Traced {
    #[cfg(feature = "otel")]
    span: Option<nameko_core::otel::OutgoingSpan>,
}

impl Traced {
    /// Starts the span `name()` and puts its `traceparent` in `data`.
    #[cfg_attr(
        not(feature = "otel"),
        expect(unused_variables, reason = "spans are the otel feature's")
    )]
    pub(crate) fn start(sending: Sending, name: impl FnOnce() -> String, data: &mut ContextData) -> Self {
        #[cfg(feature = "otel")]
        {
            use nameko_core::otel::{Outgoing, OutgoingSpan, TRACEPARENT_KEY};
            let kind = match sending {
                Sending::Call => Outgoing::Call,
                Sending::Dispatch => Outgoing::Dispatch,
                Sending::Publish => Outgoing::Publish,
            };
            let span = OutgoingSpan::start(kind, name());
            if let Some(traceparent) = span.traceparent() {
                data.insert(TRACEPARENT_KEY, traceparent);
            }
            Self { span: Some(span) }
        }
        #[cfg(not(feature = "otel"))]
        Self {}
    }

    /// Marks the span failed when `result` is an error.
    #[cfg_attr(
        not(feature = "otel"),
        expect(unused_variables, reason = "spans are the otel feature's")
    )]
    pub(crate) fn check<T, E: std::fmt::Display>(&self, result: &Result<T, E>) {
        #[cfg(feature = "otel")]
        if let (Some(span), Err(err)) = (&self.span, result) {
            span.set_error(&err.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_nameko_headers_become_context() {
        let mut headers = Headers::new();
        headers.insert_json("nameko.user_id", &json!(7));
        headers.insert_json("nameko.call_id_stack", &json!(["ext.client.1"]));
        headers.insert_json("x-death", &json!([{"count": 1}]));
        headers.insert_json("foo", &json!("bar"));
        let data = context_from_headers(Some(&headers));
        assert_eq!(data.get("user_id"), Some(&json!(7)));
        assert_eq!(data.get("call_id_stack"), Some(&json!(["ext.client.1"])));
        assert_eq!(data.len(), 2);
    }

    #[test]
    fn values_nested_too_deeply_are_left_out() {
        let nest = |depth: usize| {
            let mut value = FieldValue::String("leaf".into());
            for _ in 0..depth {
                value = FieldValue::Array(vec![value]);
            }
            value
        };
        let mut headers = Headers::new();
        headers.insert("nameko.ok", nest(MAX_HEADER_DEPTH));
        headers.insert("nameko.deep", nest(MAX_HEADER_DEPTH + 1));
        let data = context_from_headers(Some(&headers));
        assert!(data.get("ok").is_some());
        assert!(data.get("deep").is_none());
        assert!(!nests_deeper_than(&FieldValue::Bool(true), 0));
        assert!(nests_deeper_than(&nest(1), 0));
        assert!(!nests_deeper_than(&nest(1), 1));
        assert!(nests_deeper_than(&nest(2), 1));
        assert!(!nests_deeper_than(&nest(2), 2));
        let mut table = Headers::new();
        table.insert("k", FieldValue::I32(1));
        assert!(nests_deeper_than(&FieldValue::Table(table.clone()), 0));
        assert!(!nests_deeper_than(&FieldValue::Table(table), 1));
    }

    #[test]
    fn traceparent_is_accepted() {
        let mut headers = Headers::new();
        headers.insert_json(
            "traceparent",
            &json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let data = context_from_headers(Some(&headers));
        assert_eq!(data.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn outgoing_headers_are_prefixed_and_drop_nulls() {
        let data = ContextData::new().with("user_id", 7).with("language", Value::Null);
        let headers = headers_from_context(&data);
        assert_eq!(headers.get("nameko.user_id"), Some(&FieldValue::I32(7)));
        assert!(headers.get("nameko.language").is_none());
    }
}
