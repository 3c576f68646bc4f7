//! [`WsServer`]: the runner's `GET /ws`, its `#[ws_rpc]` methods and its sockets.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket},
    },
    http::HeaderMap,
    response::Response,
    routing::get,
};
use nameko_core::{ContextData, RemoteError, SetupContext, SetupError, TRACE_ID_KEY};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{
    HubLog, WebSocketHub,
    hub::{Kick, Registry},
    protocol::{self, WsRequest},
};

/// The path the websocket endpoint is served on.
pub const WS_PATH: &str = "/ws";

/// The config key of the largest websocket message (and frame) a client may send, in
/// bytes. A larger message closes that client's socket with close code 1009 (message
/// too big) and a reason naming the limit; other sockets are not affected.
pub const MAX_MESSAGE_SIZE_KEY: &str = "WS_MAX_MESSAGE_SIZE";

/// The default of [`MAX_MESSAGE_SIZE_KEY`]: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

const SHARED_KEY: &str = "websocket-server";

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One `#[ws_rpc]` method, its types erased.
pub(crate) trait WsMethod: Send + Sync {
    /// Decodes the call (before a worker slot is taken), runs a worker, returns its
    /// result. Dropping the future after the worker started does not cancel it.
    fn call(
        &self,
        socket_id: String,
        data: Map<String, Value>,
        context: ContextData,
    ) -> BoxFuture<Result<Value, RemoteError>>;
}

struct Registered {
    service: &'static str,
    method: Arc<dyn WsMethod>,
}

/// The runner's websocket endpoint: the `#[ws_rpc]` methods of every service of the
/// runner (names unique per runner), the open sockets and the hub. Cheap to clone.
///
/// Extensions reach the runner's one `WsServer` with [`WsServer::attach`] during
/// `setup`; [`router`](Self::router) serves `GET /ws` with Nameko's protocol, and the
/// runner's [`WebServer`](crate::http::WebServer) serves that route (give the runner a
/// detached `WebServer` to mount everything in your own app). A `WsServer` given to
/// the runner as a resource is the one its entrypoints use — to reach its hub, or to
/// serve its router on a listener of your own:
///
/// ```no_run
/// use std::sync::Arc;
/// use nameko_extensions::ws::WsServer;
///
/// # async fn demo(runner: nameko_core::ServiceRunner) -> Result<(), Box<dyn std::error::Error>> {
/// let ws = WsServer::new();
/// let running = runner.resource(Arc::new(ws.clone())).start().await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
/// axum::serve(listener, ws.router()).await?;
/// # drop(running); Ok(()) }
/// ```
#[derive(Clone)]
pub struct WsServer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    methods: Mutex<HashMap<String, Registered>>,
    max_message_size: AtomicUsize,
    configured: OnceLock<()>,
    /// Entrypoints registered and not stopped; the last one to stop closes the sockets.
    live: Mutex<usize>,
    closing: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for WsServer {
    fn default() -> Self {
        Self::new()
    }
}

impl WsServer {
    /// A websocket server with no methods and no sockets.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Arc::default(),
                methods: Mutex::default(),
                max_message_size: AtomicUsize::new(DEFAULT_MAX_MESSAGE_SIZE),
                configured: OnceLock::new(),
                live: Mutex::new(0),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// The runner's websocket server, for an extension setting up: the one shared
    /// runner-wide, created on first use — the runner's `WsServer` resource if it has
    /// one, otherwise a new one. The first call reads [`MAX_MESSAGE_SIZE_KEY`].
    ///
    /// # Errors
    ///
    /// When [`MAX_MESSAGE_SIZE_KEY`] is not a size in bytes above 0; the error names
    /// the key, where it was set and the value.
    pub fn attach(cx: &mut SetupContext<'_>) -> Result<Self, SetupError> {
        let given = cx.resource::<WsServer>().ok();
        let server = cx.shared().get_or_insert_with(SHARED_KEY, || {
            given.map(|given| WsServer::clone(&given)).unwrap_or_default()
        });
        let server = WsServer::clone(&server);
        cx.claim_config_key(MAX_MESSAGE_SIZE_KEY);
        if server.inner.configured.get().is_none() {
            if let Some(limit) = crate::http::server::byte_size(cx.config(), MAX_MESSAGE_SIZE_KEY)? {
                server.inner.max_message_size.store(limit, Ordering::Relaxed);
            }
            let _ = server.inner.configured.set(());
        }
        Ok(server)
    }

    /// Sets the largest message a client may send (default [`DEFAULT_MAX_MESSAGE_SIZE`],
    /// or [`MAX_MESSAGE_SIZE_KEY`] from the config); this value wins over the config.
    #[must_use]
    pub fn max_message_size(self, bytes: usize) -> Self {
        self.inner.max_message_size.store(bytes.max(1), Ordering::Relaxed);
        let _ = self.inner.configured.set(());
        self
    }

    /// The runner's hub: the sockets of this server.
    pub fn hub(&self) -> WebSocketHub {
        WebSocketHub::new(Arc::clone(&self.inner.registry))
    }

    /// A [`HubLog`] over this server's sockets: fake sockets it opens are seen by the
    /// hub like real ones, and what the hub sends them is recorded. For tests that call
    /// methods without a socket ([`call`](Self::call)) and check what the hub pushed.
    pub fn recorder(&self) -> HubLog {
        HubLog::new(Arc::clone(&self.inner.registry))
    }

    /// The axum router serving `GET /ws` ([`WS_PATH`]) with Nameko's protocol. Merge it
    /// into the runner's web server or your own app (`Router::merge`), or serve it
    /// alone with `axum::serve`.
    pub fn router(&self) -> Router {
        Router::new().route(WS_PATH, get(upgrade)).with_state(self.clone())
    }

    /// Registers a `#[ws_rpc]` method of `service`.
    ///
    /// # Errors
    ///
    /// When another service of the runner registered a method of that name; the error
    /// names both services.
    pub(crate) fn register(
        &self,
        service: &'static str,
        name: &str,
        method: Arc<dyn WsMethod>,
    ) -> Result<(), SetupError> {
        let mut methods = lock(&self.inner.methods);
        if let Some(existing) = methods.get(name) {
            return Err(SetupError::new(format!(
                "websocket method `{name}` is declared by both service `{}` and service `{service}`: #[ws_rpc] \
                 method names are unique per runner (one `/ws` serves them all); rename one with \
                 #[ws_rpc(name = \"...\")]",
                existing.service
            )));
        }
        methods.insert(name.to_owned(), Registered { service, method });
        *lock(&self.inner.live) += 1;
        Ok(())
    }

    /// One entrypoint stopped; when the last one stops, every socket is closed (close
    /// code 1001, going away) and this returns `true`. Running workers are not
    /// cancelled.
    pub(crate) fn unregister(&self) -> bool {
        let mut live = lock(&self.inner.live);
        *live = live.saturating_sub(1);
        if *live == 0 {
            self.inner.closing.cancel();
            return true;
        }
        false
    }

    /// [`router`](Self::router) as a route of the runner's web server.
    pub(crate) fn route_handler(&self) -> crate::http::RouteHandler {
        use tower::ServiceExt as _;

        let router = self.router();
        Arc::new(move |request| {
            let router = router.clone();
            Box::pin(async move {
                match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            })
        })
    }

    /// Closes every socket now.
    pub(crate) fn kill(&self) {
        self.inner.closing.cancel();
    }

    /// Calls a `#[ws_rpc]` method as a request frame on socket `socket_id` would —
    /// `data` is the frame's `data` (keyword arguments), `context` the socket's context
    /// data — without a socket. This is what testing harnesses use; the socket need
    /// not be connected.
    ///
    /// # Errors
    ///
    /// The error a result frame would carry: `MethodNotFound`, `MalformedRequest` (when
    /// `data` is not an object), `IncorrectSignature`, or the worker's error.
    pub async fn call(
        &self,
        method: &str,
        socket_id: &str,
        data: Value,
        context: ContextData,
    ) -> Result<Value, RemoteError> {
        let data = match data {
            Value::Null => Map::new(),
            Value::Object(data) => data,
            _ => {
                return Err(RemoteError::malformed_request(
                    "`data` must be a JSON object of keyword arguments",
                ));
            }
        };
        self.dispatch(method, socket_id.to_owned(), data, context)?.await
    }

    /// Finds the method and starts the call.
    fn dispatch(
        &self,
        method: &str,
        socket_id: String,
        data: Map<String, Value>,
        context: ContextData,
    ) -> Result<BoxFuture<Result<Value, RemoteError>>, RemoteError> {
        let handler = lock(&self.inner.methods)
            .get(method)
            .map(|registered| Arc::clone(&registered.method))
            .ok_or_else(|| {
                // Nameko raises `MethodNotFound()` without arguments here.
                RemoteError::from_parts("MethodNotFound", "nameko.exceptions.MethodNotFound", Vec::new(), "")
            })?;
        Ok(handler.call(socket_id, data, context))
    }

    /// Serves one socket until it closes.
    async fn serve(self, mut socket: WebSocket, context: ContextData) {
        let socket_id = nameko_core::ids::uuid4().to_string();
        let kick = Arc::new(Kick::default());
        let mut queue = self.inner.registry.open(&socket_id, Arc::clone(&kick));
        tracing::debug!(socket_id, "websocket connected");
        let close = self.run(&mut socket, &socket_id, &context, &kick, &mut queue).await;
        self.inner.registry.close(&socket_id);
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
        }
        tracing::debug!(socket_id, "websocket closed");
    }

    /// The socket loop; returns the close frame to send, if any.
    async fn run(
        &self,
        socket: &mut WebSocket,
        socket_id: &str,
        context: &ContextData,
        kick: &Kick,
        queue: &mut tokio::sync::mpsc::Receiver<axum::extract::ws::Utf8Bytes>,
    ) -> Option<(u16, String)> {
        let kicked = || {
            let reason = lock(&kick.reason).clone().unwrap_or_default();
            Some((1008, reason))
        };
        let going_away = || Some((1001, "the service is stopping".to_owned()));
        socket
            .send(Message::Text(protocol::connected(socket_id).into()))
            .await
            .ok()?;
        loop {
            let message = tokio::select! {
                biased;
                () = self.inner.closing.cancelled() => return going_away(),
                () = kick.token.cancelled() => return kicked(),
                Some(frame) = queue.recv() => {
                    socket.send(Message::Text(frame)).await.ok()?;
                    continue;
                }
                message = socket.recv() => message,
            };
            let frame = match message? {
                Ok(Message::Text(text)) => text.as_bytes().to_vec(),
                Ok(Message::Binary(bytes)) => bytes.to_vec(),
                // tungstenite answers pings itself; a close is answered when we stop.
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) => return None,
                Err(err) => return too_big(&err, self.inner.max_message_size.load(Ordering::Relaxed)),
            };
            let (outcome, correlation_id) = match WsRequest::parse(&frame) {
                Err(malformed) => {
                    let (err, correlation_id) = *malformed;
                    (Err(err), correlation_id)
                }
                Ok(request) => {
                    let WsRequest {
                        method,
                        data,
                        correlation_id,
                    } = request;
                    match self.dispatch(&method, socket_id.to_owned(), data, context.clone()) {
                        Err(err) => (Err(err), correlation_id),
                        Ok(mut call) => {
                            // Sequential per socket: no frame is read until this call's
                            // result is sent. Events keep flowing meanwhile.
                            let outcome = loop {
                                tokio::select! {
                                    biased;
                                    () = self.inner.closing.cancelled() => return going_away(),
                                    () = kick.token.cancelled() => return kicked(),
                                    Some(frame) = queue.recv() => socket.send(Message::Text(frame)).await.ok()?,
                                    outcome = &mut call => break outcome,
                                }
                            };
                            (outcome, correlation_id)
                        }
                    }
                }
            };
            if let Err(err) = &outcome {
                tracing::debug!(socket_id, error = %err, "websocket call failed");
            }
            // Events the call pushed reach the socket before its result.
            while let Ok(frame) = queue.try_recv() {
                socket.send(Message::Text(frame)).await.ok()?;
            }
            let result = protocol::result(&outcome, &correlation_id);
            socket.send(Message::Text(result.into())).await.ok()?;
        }
    }
}

/// The close frame for a read error: 1009 with the limit when the message was too big,
/// none otherwise (the connection is broken).
fn too_big(err: &axum::Error, limit: usize) -> Option<(u16, String)> {
    use std::error::Error as _;
    let capacity = err
        .source()
        .and_then(|source| source.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
        .is_some_and(|err| matches!(err, tokio_tungstenite::tungstenite::Error::Capacity(_)));
    if capacity {
        tracing::warn!("closing a websocket whose message is larger than {MAX_MESSAGE_SIZE_KEY} ({limit} bytes)");
        Some((1009, format!("message too big: the limit is {limit} bytes")))
    } else {
        tracing::debug!(%err, "websocket read failed");
        None
    }
}

/// The socket's context data, from its upgrade request: headers `nameko.<key>` or
/// `nameko-<key>` (dashes in `<key>` read as underscores) as `<key>`, and the trace id
/// from `X-Trace-Id` or a W3C `traceparent` when valid.
pub(crate) fn context_from_upgrade(headers: &HeaderMap) -> ContextData {
    let mut data = ContextData::new();
    for (name, value) in headers {
        let name = name.as_str();
        let Some(key) = name.strip_prefix("nameko.").or_else(|| name.strip_prefix("nameko-")) else {
            continue;
        };
        let key = key.replace('-', "_");
        // A websocket call starts its own call stack and trace (below).
        if key.is_empty() || key == TRACE_ID_KEY || key == nameko_core::CALL_ID_STACK_KEY {
            continue;
        }
        if let Ok(value) = value.to_str() {
            data.insert(key, value);
        }
    }
    if let Some(trace_id) = crate::http::edge::adopted_trace_id(headers) {
        data.insert(TRACE_ID_KEY, trace_id);
    }
    // The caller's span, which each call's worker continues (validated by the core).
    #[cfg(feature = "otel")]
    if let Some(traceparent) = headers.get("traceparent").and_then(|value| value.to_str().ok()) {
        data.insert(nameko_core::otel::TRACEPARENT_KEY, traceparent);
    }
    data
}

async fn upgrade(State(server): State<WsServer>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    let limit = server.inner.max_message_size.load(Ordering::Relaxed);
    let context = context_from_upgrade(&headers);
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| server.serve(socket, context))
}

impl fmt::Debug for WsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<String> = lock(&self.inner.methods).keys().cloned().collect();
        methods.sort_unstable();
        f.debug_struct("WsServer")
            .field("methods", &methods)
            .field("max_message_size", &self.inner.max_message_size.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_comes_from_nameko_headers_and_the_trace_id() {
        let mut headers = HeaderMap::new();
        headers.insert("nameko.user_id", "u-42".parse().unwrap());
        headers.insert("nameko-auth-token", "tok".parse().unwrap());
        headers.insert("nameko.call_id_stack", "x".parse().unwrap());
        headers.insert("authorization", "secret".parse().unwrap());
        headers.insert("x-trace-id", "abc-1.2_3".parse().unwrap());
        let data = context_from_upgrade(&headers);
        assert_eq!(data.get_str("user_id"), Some("u-42"));
        assert_eq!(data.get_str("auth_token"), Some("tok"));
        assert_eq!(data.trace_id(), Some("abc-1.2_3"));
        assert_eq!(data.len(), 3);

        let mut headers = HeaderMap::new();
        headers.insert("x-trace-id", "bad id!".parse().unwrap());
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            context_from_upgrade(&headers).trace_id(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-trace-id", "bad id!".parse().unwrap());
        assert_eq!(context_from_upgrade(&headers).trace_id(), None);
    }

    #[cfg(feature = "otel")]
    #[test]
    fn the_traceparent_goes_to_each_call_for_its_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", parent.parse().unwrap());
        let data = context_from_upgrade(&headers);
        assert_eq!(data.get_str(nameko_core::otel::TRACEPARENT_KEY), Some(parent));
    }
}
