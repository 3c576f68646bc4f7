//! HTTP entrypoints on axum 0.8 (feature `http`): [`HttpEntrypoint`] (the `#[http]`
//! attribute) and the runner's [`WebServer`].
//!
//! - **Routes**: `#[http("GET", "/greet/{name}")]`, several methods as `"GET,POST"` or
//!   repeated attributes; axum 0.8 path syntax (`{param}`, `{*rest}`). A `GET` route
//!   answers `HEAD` too; an unknown path is `404 {"error": "NotFound", ...}`, a known
//!   path with another method axum's `405`.
//! - **Extractors**: the method's parameters after `&self` are axum extractors, all but
//!   the last [`FromRequestParts`](axum::extract::FromRequestParts), the last may be
//!   [`FromRequest`](axum::extract::FromRequest). They run before a worker slot is
//!   taken; a rejection is axum's own response.
//! - **Responses and errors**: any `IntoResponse`; an `Ok` of any status is a success.
//!   An `Err` is `{"error": exc_type, "message": ...}` with the status the error type
//!   gives (`#[remote(status = 404)]` on a `#[derive(RemoteError)]`, default 500).
//! - **Trace ids**: see [`TraceId`]; every response carries `X-Trace-Id`.
//! - **Limits**: request bodies above `WEB_MAX_BODY_SIZE` bytes (default 2 MiB) are
//!   `413 {"error": "PayloadTooLarge", ...}`.
//! - **The server**: one per runner; see [`WebServer`] for its address, your own
//!   routes and layers, and mounting its router in your own app.

pub(crate) mod edge;
mod entrypoint;
mod probes;
pub(crate) mod server;

pub use axum;
#[doc(no_inline)]
pub use axum::{
    Json, Router,
    extract::{Path, Query, Request},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

pub use self::{
    edge::{DEFAULT_MAX_BODY_SIZE, TRACE_ID_HEADER, TraceId},
    entrypoint::{FromHttpRequest, HttpEntrypoint, into_http_result},
    server::{MAX_BODY_SIZE_KEY, RESERVED_PATHS, RouteGroup, RouteHandler, WebServer},
};
