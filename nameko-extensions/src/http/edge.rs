//! What every request and response goes through, before any route: the trace id, the
//! body size limit, and the JSON error body.

use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
};

use axum::{
    Json,
    body::{Body, HttpBody},
    extract::{FromRequestParts, Request},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use nameko_core::{RemoteError, SpawnError, WorkerError, is_valid_trace_id};
use serde::Serialize;

use crate::context::{new_trace_id, trace_id_from_traceparent};

/// `X-Trace-Id`: read from requests (validated) and set on every response.
pub const TRACE_ID_HEADER: HeaderName = HeaderName::from_static("x-trace-id");

/// The default of `WEB_MAX_BODY_SIZE`: 2 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 2 * 1024 * 1024;

/// The trace id of an HTTP request: the incoming `X-Trace-Id` (or the trace-id part of a
/// W3C `traceparent`) when it matches `[A-Za-z0-9._-]{1,128}`, otherwise a new one. The
/// worker's context data carries it, so RPC calls and events the worker makes forward
/// it as `nameko.trace_id`, and the response carries it as `X-Trace-Id`.
///
/// It is also an extractor, for a handler that wants to see it:
///
/// ```
/// use nameko_extensions::http::TraceId;
///
/// async fn handler(TraceId(trace_id): TraceId) -> String {
///     format!("your trace id is {trace_id}")
/// }
/// # let _ = handler;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceId(pub String);

impl TraceId {
    /// The trace id of a request with `headers`: adopted if valid, new otherwise.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self(adopted_trace_id(headers).map_or_else(new_trace_id, str::to_owned))
    }
}

/// The trace id `headers` carry, if valid: `X-Trace-Id`, else the trace-id part of a
/// W3C `traceparent`.
pub(crate) fn adopted_trace_id(headers: &HeaderMap) -> Option<&str> {
    // Looked up by `HeaderName`: a `&str` key is parsed and validated on every lookup.
    headers
        .get(&TRACE_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_valid_trace_id(id))
        .or_else(|| traceparent_trace_id(headers))
}

/// The trace-id part of a valid W3C `traceparent` header.
fn traceparent_trace_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(&TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(trace_id_from_traceparent)
}

/// W3C trace context's header.
const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");

impl<S: Send + Sync> FromRequestParts<S> for TraceId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Behind the edge, `X-Trace-Id` holds the request's trace id already.
        Ok(TraceId::from_headers(&parts.headers))
    }
}

/// Marks a response written by an entrypoint (the handler's own, or its error), so the
/// edge never rewrites it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FromHandler;

/// The body of every error the framework writes: `{"error": exc_type, "message": ...}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// A JSON error response in the framework's shape.
pub(crate) fn error_response(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(ErrorBody { error, message })).into_response()
}

/// The response for a worker that did not produce one.
pub(crate) fn worker_error_response(err: &WorkerError) -> Response {
    let status = match err {
        WorkerError::Failed(err) => StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        WorkerError::Killed | WorkerError::NotStarted(SpawnError::Stopping | SpawnError::Killed) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let remote: RemoteError = err.to_remote_error();
    error_response(status, remote.exc_type(), remote.value())
}

/// The body size limit, shared with the running edge (read per request).
#[derive(Debug)]
pub(crate) struct Limit(pub(crate) AtomicUsize);

impl Limit {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

fn too_large(limit: usize) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        &format!("the request body is larger than the limit of {limit} bytes (config `WEB_MAX_BODY_SIZE`)"),
    )
}

/// The edge: trace id in and out, body limit, JSON 413, around whatever `app` serves.
pub(crate) async fn edge<F>(limit: usize, mut request: Request, app: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    // The request's trace id, adopted or new, is its `X-Trace-Id` from here on: the
    // entrypoint and the `TraceId` extractor read it there (cheaper than an extension).
    let header = match request.headers().get(&TRACE_ID_HEADER) {
        Some(value) if value.to_str().is_ok_and(is_valid_trace_id) => value.clone(),
        _ => {
            // `X-Trace-Id` is missing or invalid: `traceparent`'s, or a new one.
            let trace_id = traceparent_trace_id(request.headers()).map_or_else(new_trace_id, str::to_owned);
            // The id's own buffer becomes the header's: no copy.
            let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(trace_id))
                .expect("valid trace ids are valid header values");
            request.headers_mut().insert(TRACE_ID_HEADER, value.clone());
            value
        }
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let mut response = if declared.is_some_and(|length| length > limit as u64) {
        too_large(limit)
    } else {
        // A request without a body (most GETs) needs no limit: no boxed wrapper.
        let request = if HttpBody::is_end_stream(request.body()) {
            request
        } else {
            request.map(|body| Body::new(http_body_util::Limited::new(body, limit)))
        };
        let response = app(request).await;
        // An extractor that hit the limit answers 413 in plain text: say it in JSON.
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE && response.extensions().get::<FromHandler>().is_none() {
            too_large(limit)
        } else {
            response
        }
    };
    response.headers_mut().insert(TRACE_ID_HEADER, header);
    response
}

/// The answer for a path no route matches.
pub(crate) async fn not_found(request: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn a_valid_trace_id_is_adopted_and_an_invalid_one_replaced() {
        assert_eq!(
            TraceId::from_headers(&headers(&[("x-trace-id", "abc-1.2_3")])).0,
            "abc-1.2_3"
        );
        let replaced = TraceId::from_headers(&headers(&[("x-trace-id", "bad id!")])).0;
        assert_ne!(replaced, "bad id!");
        assert!(is_valid_trace_id(&replaced));
        let long = "a".repeat(129);
        assert_ne!(TraceId::from_headers(&headers(&[("x-trace-id", &long)])).0, long);
    }

    /// A header value from arbitrary bytes, when HTTP allows them.
    fn header_value() -> impl Strategy<Value = Option<HeaderValue>> {
        prop_oneof![
            "[A-Za-z0-9._-]{1,140}".prop_map(|s| HeaderValue::from_str(&s).ok()),
            "00-[A-Za-z0-9._ -]{0,40}-[0-9a-f]{16}-01".prop_map(|s| HeaderValue::from_str(&s).ok()),
            prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| HeaderValue::from_bytes(&b).ok()),
        ]
    }

    /// A `Content-Length` to declare: none, garbage, or a number.
    fn declared() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("true".to_owned())),
            Just(Some("garbage".to_owned())),
            (0u64..1000).prop_map(|n| Some(n.to_string())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any trace id headers, any body, any declared length (true, false, garbage or
        /// none) through the real edge: never a panic; the response carries a valid
        /// `X-Trace-Id`, the incoming one exactly when it is valid; a body over the limit
        /// is a JSON 413 and never reaches the app whole, any other is read whole.
        #[test]
        fn the_edge_takes_any_trace_id_and_body(
            trace_id in header_value(),
            traceparent in header_value(),
            body in prop::collection::vec(any::<u8>(), 0..600),
            declared in declared(),
        ) {
            const LIMIT: usize = 256;
            let mut request = Request::new(Body::from(body.clone()));
            if let Some(value) = &trace_id {
                request.headers_mut().insert(TRACE_ID_HEADER, value.clone());
            }
            if let Some(value) = &traceparent {
                request.headers_mut().insert("traceparent", value.clone());
            }
            // A lying Content-Length is refused by hyper before the edge; here only the
            // true one is declared, and the garbage ones.
            if declared.as_deref().and_then(|d| d.parse::<u64>().ok()).is_some_and(|n| n != body.len() as u64) {
                return Ok(());
            }
            if let Some(declared) = &declared {
                request.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_str(declared).unwrap());
            }
            let expected_id = adopted_trace_id(request.headers()).map(str::to_owned);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (response, seen) = runtime.block_on(async {
                let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
                let app_seen = std::sync::Arc::clone(&seen);
                let response = edge(LIMIT, request, |request: Request| async move {
                    match axum::body::to_bytes(request.into_body(), usize::MAX).await {
                        Ok(bytes) => {
                            *app_seen.lock().unwrap() = Some(bytes.len());
                            StatusCode::OK.into_response()
                        }
                        Err(_) => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
                    }
                })
                .await;
                let seen = *seen.lock().unwrap();
                (response, seen)
            });
            let sent_id = response.headers().get(TRACE_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            prop_assert!(is_valid_trace_id(sent_id));
            if let Some(expected) = &expected_id {
                prop_assert_eq!(sent_id, expected.as_str());
            }
            if let Some(Ok(id)) = trace_id.as_ref().map(HeaderValue::to_str) {
                prop_assert_eq!(is_valid_trace_id(id), sent_id == id);
            }
            if body.len() > LIMIT {
                prop_assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
                prop_assert_eq!(
                    response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
                    Some("application/json")
                );
                prop_assert_eq!(seen, None);
            } else {
                prop_assert_eq!(response.status(), StatusCode::OK);
                prop_assert_eq!(seen, Some(body.len()));
            }
        }
    }

    #[test]
    fn traceparent_supplies_the_trace_id_when_there_is_no_x_trace_id() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceId::from_headers(&headers(&[("traceparent", parent)])).0,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            TraceId::from_headers(&headers(&[("traceparent", parent), ("x-trace-id", "mine")])).0,
            "mine"
        );
    }
}
