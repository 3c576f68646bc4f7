//! Nameko's websocket frames: JSON text frames, keys in Nameko's order.

use nameko_core::RemoteError;
use serde::Serialize;
use serde_json::{Map, Value};

/// A request frame read from a client:
/// `{"method": "<entrypoint name>", "data": {<kwargs>}, "correlation_id": <any>}`.
///
/// `data` may be omitted (no keyword arguments); `correlation_id` may be any JSON value
/// and is echoed in the result.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WsRequest {
    /// The `#[ws_rpc]` method to call.
    pub(crate) method: String,
    /// The keyword arguments.
    pub(crate) data: Map<String, Value>,
    /// Echoed in the result frame; `null` when the client sent none.
    pub(crate) correlation_id: Value,
}

impl WsRequest {
    /// Reads a request frame.
    ///
    /// # Errors
    ///
    /// `MalformedRequest` and the correlation id to answer with: Nameko's
    /// `"Invalid JSON data"` (correlation id `null`) when the frame is not JSON, and a
    /// message naming what is wrong when it is JSON of the wrong shape (with the frame's
    /// correlation id, if it has one).
    pub(crate) fn parse(frame: &[u8]) -> Result<Self, Box<(RemoteError, Value)>> {
        let value: Value = serde_json::from_slice(frame)
            .map_err(|_| (RemoteError::malformed_request("Invalid JSON data"), Value::Null))?;
        let Value::Object(mut map) = value else {
            return Err(Box::new((
                RemoteError::malformed_request("a request frame must be a JSON object with `method`"),
                Value::Null,
            )));
        };
        let correlation_id = map.remove("correlation_id").unwrap_or(Value::Null);
        let malformed = |message: &str| Box::new((RemoteError::malformed_request(message), correlation_id.clone()));
        let method = match map.remove("method") {
            Some(Value::String(method)) => method,
            Some(_) => return Err(malformed("`method` must be a string")),
            None => return Err(malformed("the request frame has no `method`")),
        };
        let data = match map.remove("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(data)) => data,
            Some(_) => return Err(malformed("`data` must be a JSON object of keyword arguments")),
        };
        Ok(Self {
            method,
            data,
            correlation_id,
        })
    }
}

/// The `connected` event, the first frame on every socket.
pub(crate) fn connected(socket_id: &str) -> String {
    event("connected", &serde_json::json!({ "socket_id": socket_id }))
}

/// An event frame: `{"type": "event", "event": <name>, "data": <payload>}`.
pub(crate) fn event(name: &str, data: &Value) -> String {
    #[derive(Serialize)]
    struct Event<'a> {
        r#type: &'static str,
        event: &'a str,
        data: &'a Value,
    }
    serde_json::to_string(&Event {
        r#type: "event",
        event: name,
        data,
    })
    .expect("JSON values always serialize")
}

/// A result frame: success with `data`, or failure with Nameko's serialized `error`.
pub(crate) fn result(outcome: &Result<Value, RemoteError>, correlation_id: &Value) -> String {
    #[derive(Serialize)]
    struct Success<'a> {
        r#type: &'static str,
        success: bool,
        data: &'a Value,
        correlation_id: &'a Value,
    }
    #[derive(Serialize)]
    struct Failure<'a> {
        r#type: &'static str,
        success: bool,
        error: &'a RemoteError,
        correlation_id: &'a Value,
    }
    match outcome {
        Ok(data) => serde_json::to_string(&Success {
            r#type: "result",
            success: true,
            data,
            correlation_id,
        }),
        Err(error) => serde_json::to_string(&Failure {
            r#type: "result",
            success: false,
            error,
            correlation_id,
        }),
    }
    .expect("JSON values always serialize")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// Frames: random bytes, deep nesting, JSON objects of right and wrong shapes.
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            (1usize..50_000).prop_map(|depth| "[".repeat(depth).into_bytes()),
            (1usize..300).prop_map(|depth| {
                format!(
                    r#"{{"method": "m", "data": {{"a": {}{}}}}}"#,
                    "[".repeat(depth),
                    "]".repeat(depth)
                )
                .into_bytes()
            }),
            (".{0,10}", any::<u8>(), any::<i64>()).prop_map(|(method, kind, n)| {
                let data = match kind % 5 {
                    0 => json!({"x": n}),
                    1 => json!([n]),
                    2 => json!(null),
                    3 => json!("s"),
                    _ => json!(n),
                };
                let frame = match kind % 3 {
                    0 => json!({"method": method, "data": data, "correlation_id": n}),
                    1 => json!({"method": n, "data": data}),
                    _ => json!({"data": data, "correlation_id": method}),
                };
                serde_json::to_vec(&frame).unwrap()
            }),
        ]
    }

    #[test]
    fn requests() {
        let request = WsRequest::parse(br#"{"method": "add", "data": {"a": 1}, "correlation_id": 7}"#).unwrap();
        assert_eq!(request.method, "add");
        assert_eq!(request.data.get("a"), Some(&json!(1)));
        assert_eq!(request.correlation_id, json!(7));
        let bare = WsRequest::parse(br#"{"method": "ping"}"#).unwrap();
        assert!(bare.data.is_empty());
        assert_eq!(bare.correlation_id, Value::Null);
    }

    #[test]
    fn malformed_requests() {
        let (err, cid) = *WsRequest::parse(b"not json").unwrap_err();
        assert_eq!(err.value(), "Invalid JSON data");
        assert_eq!(err.exc_path(), "nameko.exceptions.MalformedRequest");
        assert_eq!(cid, Value::Null);
        let (err, cid) = *WsRequest::parse(br#"{"data": {}, "correlation_id": "c9"}"#).unwrap_err();
        assert_eq!(err.value(), "the request frame has no `method`");
        assert_eq!(cid, json!("c9"));
        let (err, _) = *WsRequest::parse(br#"{"method": "m", "data": [1]}"#).unwrap_err();
        assert_eq!(err.value(), "`data` must be a JSON object of keyword arguments");
        let (err, _) = *WsRequest::parse(b"[1]").unwrap_err();
        assert_eq!(err.exc_type(), "MalformedRequest");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any frame — random bytes, deep nesting, JSON of any shape — parses to a call
        /// or to `MalformedRequest`, never a panic; a call only from an object with a
        /// string `method` and `data` an object, null or absent; the correlation id kept.
        #[test]
        fn any_frame_is_a_call_or_malformed_request(frame in frame()) {
            let value: Option<Value> = serde_json::from_slice(&frame).ok();
            let callable = value.as_ref().and_then(Value::as_object).is_some_and(|o| {
                o.get("method").is_some_and(Value::is_string)
                    && o.get("data").is_none_or(|d| d.is_null() || d.is_object())
            });
            match WsRequest::parse(&frame) {
                Ok(request) => {
                    prop_assert!(callable);
                    let object = value.as_ref().and_then(Value::as_object).unwrap();
                    prop_assert_eq!(Some(&Value::String(request.method)), object.get("method"));
                    prop_assert_eq!(&request.correlation_id, object.get("correlation_id").unwrap_or(&Value::Null));
                }
                Err(refused) => {
                    let (error, correlation_id) = *refused;
                    prop_assert!(!callable);
                    prop_assert_eq!(error.exc_type(), "MalformedRequest");
                    let expected = value
                        .as_ref()
                        .and_then(Value::as_object)
                        .and_then(|o| o.get("correlation_id"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    prop_assert_eq!(correlation_id, expected);
                    // The result frame for it serializes.
                    let prefix = r#"{"type":"result","success":false"#;
                    prop_assert!(result(&Err(error), &Value::Null).starts_with(prefix));
                }
            }
        }
    }

    #[test]
    fn frames_keep_nameko_key_order() {
        assert_eq!(
            connected("s1"),
            r#"{"type":"event","event":"connected","data":{"socket_id":"s1"}}"#
        );
        assert_eq!(
            result(&Ok(json!(3)), &json!("c1")),
            r#"{"type":"result","success":true,"data":3,"correlation_id":"c1"}"#
        );
        assert_eq!(
            result(&Err(RemoteError::malformed_request("Invalid JSON data")), &Value::Null),
            r#"{"type":"result","success":false,"error":{"exc_type":"MalformedRequest","exc_path":"nameko.exceptions.MalformedRequest","exc_args":["Invalid JSON data"],"value":"Invalid JSON data"},"correlation_id":null}"#
        );
    }
}
