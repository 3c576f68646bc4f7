//! Context data on the wire: `nameko.<key>` headers in and out.

use nameko_core::{ContextData, TRACE_ID_KEY, is_valid_trace_id};
use serde_json::Value;

use crate::broker::{FieldValue, Headers};

/// The prefix of context headers.
pub const HEADER_PREFIX: &str = "nameko.";

/// The context data of an incoming message: only `nameko.*` headers, without the
/// prefix (broker headers such as `x-death` never leak into context data). A raw W3C
/// `traceparent` header supplies the trace id when there is no `nameko.trace_id`.
pub fn context_from_headers(headers: Option<&Headers>) -> ContextData {
    let mut data = ContextData::new();
    let Some(headers) = headers else { return data };
    for (name, value) in headers.iter() {
        if let Some(key) = name.strip_prefix(HEADER_PREFIX)
            && !key.is_empty()
        {
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

/// The trace-id part of a W3C `traceparent` (`<version>-<trace-id>-<parent-id>-<flags>`),
/// if it is a valid trace id (`[A-Za-z0-9._-]{1,128}`).
pub(crate) fn trace_id_from_traceparent(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| is_valid_trace_id(id))
}

/// A new trace id, for a call that starts a trace.
pub(crate) fn new_trace_id() -> String {
    nameko_core::ids::uuid4().simple().to_string()
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
