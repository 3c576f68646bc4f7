//! `/health` and `/ready`, answered by the web server itself for container
//! orchestrators and load balancers (a Kubernetes `httpGet` probe, say).
//!
//! - `GET /health`: `200 {"status": "alive"}` while the server answers at all.
//! - `GET /ready`: `200 {"ready": true}` when every part of the runner's readiness is
//!   ready (each service consuming, the RabbitMQ connection up, the web server bound),
//!   otherwise `503 {"ready": false, "not_ready": [{"part": ..., "reason": ...}]}`, so
//!   traffic stops reaching a runner that is reconnecting or stopping.
//!
//! `HEAD` gets the same status without a body; other methods get a JSON `405`.

use axum::{
    Json,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use nameko_core::Readiness;
use serde_json::json;

use super::edge::error_response;

/// One of the reserved paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Health,
    Ready,
}

impl Probe {
    /// The probe `path` asks for, if any (a trailing slash allowed).
    pub(crate) fn of(path: &str) -> Option<Self> {
        match path.strip_suffix('/').unwrap_or(path) {
            "/health" => Some(Self::Health),
            "/ready" => Some(Self::Ready),
            _ => None,
        }
    }

    /// The answer to `method`; `readiness` is the runner's (none: nothing to wait for).
    pub(crate) fn answer(self, method: &Method, readiness: Option<&Readiness>) -> Response {
        if method != Method::GET && method != Method::HEAD {
            let path = match self {
                Self::Health => "/health",
                Self::Ready => "/ready",
            };
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{path} answers GET and HEAD, not {method}"),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let (status, body) = match self {
            Self::Health => (StatusCode::OK, json!({"status": "alive"})),
            Self::Ready => {
                let report = readiness.map(Readiness::report).unwrap_or_default();
                let status = if report.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, report.probe_json())
            }
        };
        let mut response = (status, Json(body)).into_response();
        if method == Method::HEAD {
            *response.body_mut() = axum::body::Body::empty();
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn the_reserved_paths_are_probes() {
        assert_eq!(Probe::of("/health"), Some(Probe::Health));
        assert_eq!(Probe::of("/ready/"), Some(Probe::Ready));
        assert_eq!(Probe::of("/healthz"), None);
        assert_eq!(Probe::of("/ready/now"), None);
    }

    #[tokio::test]
    async fn ready_follows_the_readiness_and_names_what_is_not() {
        let readiness = Readiness::new();
        let connection = readiness.part("RabbitMQ connection", "connecting");
        let response = Probe::Ready.answer(&Method::GET, Some(&readiness));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            json_of(response).await,
            json!({"ready": false, "not_ready": [{"part": "RabbitMQ connection", "reason": "connecting"}]})
        );
        connection.ready();
        let response = Probe::Ready.answer(&Method::GET, Some(&readiness));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_of(response).await, json!({"ready": true}));
        let response = Probe::Health.answer(&Method::GET, None);
        assert_eq!(json_of(response).await, json!({"status": "alive"}));
    }

    #[tokio::test]
    async fn head_has_no_body_and_other_methods_are_refused() {
        let response = Probe::Health.answer(&Method::HEAD, None);
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        assert!(bytes.is_empty());
        let response = Probe::Ready.answer(&Method::POST, None);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(json_of(response).await["error"], "MethodNotAllowed");
    }
}
