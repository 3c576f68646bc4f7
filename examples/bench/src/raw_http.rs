//! The HTTP baseline: `GET /echo/{v}` with bare axum, no container, no worker — what
//! `bench`'s `#[http]` echo is compared with (`example-bench raw-http`).

use std::net::SocketAddr;

use nameko::http::{
    Path,
    axum::{Router, routing::get},
};

/// The bare axum app: `GET /echo/{v}` answers `v`.
///
/// ```
/// let app = example_bench::raw_http::router();
/// # drop(app);
/// ```
pub fn router() -> Router {
    Router::new().route("/echo/{v}", get(|Path(v): Path<String>| async move { v }))
}

/// Serves [`router`] on `address` until `shutdown` completes.
///
/// # Errors
///
/// When the address cannot be bound or serving fails.
pub async fn serve(
    address: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    bound(listener.local_addr()?);
    nameko::http::axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}
