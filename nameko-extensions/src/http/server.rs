//! The runner's web server: one per runner, shared by every HTTP entrypoint (and any
//! other extension serving HTTP, such as the websocket hub).

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock, RwLock, atomic::AtomicUsize},
    task::{Context, Poll},
};

use axum::{
    Router, ServiceExt as _,
    extract::{DefaultBodyLimit, Request},
    http::Method,
    response::Response,
    routing::{MethodFilter, on_service},
};
use nameko_core::{Readiness, ReadinessPart, SetupContext, SetupError};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use super::edge::{self, DEFAULT_MAX_BODY_SIZE, Limit};
use super::probes::Probe;
use crate::transport;

/// The config key of the request body limit, in bytes (default 2 MiB).
pub const MAX_BODY_SIZE_KEY: &str = "WEB_MAX_BODY_SIZE";

/// Paths the runner keeps for itself: `GET /health` (alive) and `GET /ready` (`200`
/// when the runner's readiness is, `503` naming what is not), answered before any
/// route — yours or an entrypoint's.
pub const RESERVED_PATHS: &[&str] = &["/health", "/ready"];

const SHARED_KEY: &str = "http/web-server";

/// What serves one route: the request in, the response out.
pub type RouteHandler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// The runner's web server: one per runner, shared by every HTTP entrypoint.
///
/// Entrypoints register their routes while their service sets up; the server binds
/// `WEB_SERVER_ADDRESS` (Nameko's `[host:]port`, default `0.0.0.0:8000`) when the first
/// of them starts — a runner without HTTP entrypoints never binds — and stops once the
/// last of them stopped, after the requests in flight were answered. While it is bound,
/// the runner's [`Readiness`] has a part `web server`.
///
/// Give the runner a `WebServer` of your own as a resource to find its address, to add
/// your own axum routes and tower layers, or to serve its router yourself:
///
/// ```no_run
/// use std::sync::Arc;
/// use nameko_extensions::http::{WebServer, axum::{Router, routing::get}};
/// # async fn demo(runner: nameko_core::ServiceRunner) -> Result<(), Box<dyn std::error::Error>> {
/// let web = WebServer::new()
///     .merge(Router::new().route("/version", get(|| async { "1.0" })))
///     .map_router(|router| router.layer(axum::middleware::from_fn(
///         |req: axum::extract::Request, next: axum::middleware::Next| async move { next.run(req).await },
///     )));
/// let running = runner.resource(Arc::new(web.clone())).start().await?;
/// println!("listening on {}", web.bound().await);
/// # drop(running); Ok(()) }
/// ```
///
/// [`detached`](Self::detached) makes one that never binds: mount its
/// [`router`](Self::router) in your own axum app instead.
#[derive(Clone)]
pub struct WebServer {
    inner: Arc<Inner>,
}

struct Inner {
    detached: bool,
    limit: Limit,
    custom: Mutex<Custom>,
    routes: Mutex<Routes>,
    /// The whole app as last built — your routes, the started entrypoints' routes, your
    /// layers — swapped whenever they change; the edge calls into it.
    current: RwLock<Router>,
    settings: OnceLock<Settings>,
    bound: watch::Sender<Option<SocketAddr>>,
    bind_lock: tokio::sync::Mutex<()>,
    running: Mutex<Option<Running>>,
    readiness: Mutex<Option<ReadinessPart>>,
}

#[derive(Default)]
struct Custom {
    merged: Vec<Router>,
    maps: Vec<Arc<dyn Fn(Router) -> Router + Send + Sync>>,
}

#[derive(Default)]
struct Routes {
    next_group: u64,
    entries: Vec<Entry>,
    /// Route groups registered and neither stopped nor killed.
    live: usize,
}

struct Entry {
    group: u64,
    method: Method,
    filter: MethodFilter,
    path: String,
    shape: Shape,
    owner: String,
    handler: RouteHandler,
    started: bool,
}

struct Settings {
    address: String,
    readiness: Option<Readiness>,
}

struct Running {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Default for WebServer {
    fn default() -> Self {
        Self::new()
    }
}

impl WebServer {
    /// A web server that binds `WEB_SERVER_ADDRESS` once an HTTP entrypoint starts.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// A web server that never binds: serve [`router`](Self::router) yourself, e.g.
    /// mounted in your own axum app.
    ///
    /// ```
    /// use nameko_extensions::http::{WebServer, axum::{Router, routing::get}};
    ///
    /// let web = WebServer::detached();
    /// // Give `web` to the runner as a resource; serve this app with `axum::serve`.
    /// let app: Router = Router::new()
    ///     .route("/mine", get(|| async { "my own route" }))
    ///     .fallback_service(web.router());
    /// # let _ = app;
    /// ```
    pub fn detached() -> Self {
        Self::build(true)
    }

    fn build(detached: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                detached,
                limit: Limit(AtomicUsize::new(DEFAULT_MAX_BODY_SIZE)),
                custom: Mutex::default(),
                routes: Mutex::default(),
                current: RwLock::new(compose(&Custom::default(), &[])),
                settings: OnceLock::new(),
                bound: watch::Sender::new(None),
                bind_lock: tokio::sync::Mutex::new(()),
                running: Mutex::new(None),
                readiness: Mutex::new(None),
            }),
        }
    }

    /// Adds your own axum routes beside the entrypoints'. Yours are matched first: a
    /// path both serve is yours.
    #[must_use]
    pub fn merge(self, router: Router) -> Self {
        lock(&self.inner.custom).merged.push(router);
        self.rebuild(&lock(&self.inner.routes));
        self
    }

    /// Transforms the app before it is served: add tower layers
    /// (`|router| router.layer(...)`) around every route, yours and the entrypoints'.
    /// The trace-id and body-limit edge stays outermost. `map` runs again whenever the
    /// served routes change (an entrypoint starts or stops), so build any shared state
    /// of your layer outside it.
    #[must_use]
    pub fn map_router(self, map: impl Fn(Router) -> Router + Send + Sync + 'static) -> Self {
        lock(&self.inner.custom).maps.push(Arc::new(map));
        self.rebuild(&lock(&self.inner.routes));
        self
    }

    /// The whole app: your routes and layers, the entrypoints' routes (as they are
    /// registered, also after this call), and the edge that sets `X-Trace-Id` and
    /// enforces `WEB_MAX_BODY_SIZE`. Serve it yourself with a
    /// [`detached`](Self::detached) server, or call it without a socket in tests with
    /// `tower::ServiceExt::oneshot`.
    pub fn router(&self) -> Router {
        Router::new().fallback_service(self.edge())
    }

    fn edge(&self) -> Edge {
        Edge {
            inner: Arc::clone(&self.inner),
        }
    }

    /// The address the server is bound to, once it is.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.inner.bound.borrow()
    }

    /// Waits until the server is bound; returns its address. With `WEB_SERVER_ADDRESS`
    /// port 0 (as in tests: `127.0.0.1:0`), this is how to learn the port.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn bound(&self) -> SocketAddr {
        let mut rx = self.inner.bound.subscribe();
        let address = *rx
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives as long as the server");
        address.expect("waited for an address")
    }

    /// The runner's web server, for an extension setting up: the one shared
    /// runner-wide, created on first use — the runner's `WebServer` resource if it has
    /// one, otherwise [`WebServer::new`]. The first call reads `WEB_SERVER_ADDRESS` and
    /// `WEB_MAX_BODY_SIZE`.
    ///
    /// # Errors
    ///
    /// When either setting is malformed; the error names the key and the value.
    pub fn attach(cx: &mut SetupContext<'_>) -> Result<Self, SetupError> {
        let given = cx.resource::<WebServer>().ok();
        let server = cx.shared().get_or_insert_with(SHARED_KEY, || {
            given.map(|given| WebServer::clone(&given)).unwrap_or_default()
        });
        let server = WebServer::clone(&server);
        cx.claim_config_key(MAX_BODY_SIZE_KEY);
        if server.inner.settings.get().is_none() {
            let settings = server.read_settings(cx)?;
            let _ = server.inner.settings.set(settings);
        }
        Ok(server)
    }

    fn read_settings(&self, cx: &SetupContext<'_>) -> Result<Settings, SetupError> {
        let config = cx.config();
        let address = config
            .address("WEB_SERVER_ADDRESS")
            .map_err(SetupError::new)?
            .unwrap_or_else(|| nameko_core::config::DEFAULT_WEB_SERVER_ADDRESS.to_owned());
        if let Some(limit) = byte_size(config, MAX_BODY_SIZE_KEY)? {
            self.inner.limit.0.store(limit, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Settings {
            address,
            readiness: transport::readiness(cx),
        })
    }

    /// Registers routes served for `owner` (e.g. `web.greet`): checked against the
    /// routes already registered (same method and path, or the same path with other
    /// parameter names, is a conflict) and the reserved paths, all or none. They are
    /// served once [`RouteGroup::start`] is called.
    ///
    /// # Errors
    ///
    /// A malformed or reserved path, an unknown method, or a conflict, naming both
    /// owners.
    pub fn add_routes(
        &self,
        owner: impl Into<String>,
        routes: impl IntoIterator<Item = (Method, String, RouteHandler)>,
    ) -> Result<RouteGroup, SetupError> {
        let owner = owner.into();
        let mut table = lock(&self.inner.routes);
        let group = table.next_group;
        let mut added: Vec<Entry> = Vec::new();
        for (method, path, handler) in routes {
            let filter = MethodFilter::try_from(method.clone())
                .map_err(|_| SetupError::new(format!("{owner}: HTTP method `{method}` cannot be routed")))?;
            let shape = Shape::parse(&path).map_err(|message| SetupError::new(format!("{owner}: {message}")))?;
            if RESERVED_PATHS.contains(&shape.text.trim_end_matches('/')) {
                return Err(SetupError::new(format!(
                    "{owner}: route `{method} {path}` uses a reserved path; `{}` belong to the runner",
                    RESERVED_PATHS.join("` and `")
                )));
            }
            let entry = Entry {
                group,
                method,
                filter,
                path,
                shape,
                owner: owner.clone(),
                handler,
                started: false,
            };
            for other in table.entries.iter().chain(&added) {
                if let Some(why) = entry.conflict(other) {
                    return Err(SetupError::new(format!(
                        "route `{} {}` of `{}` conflicts with route `{} {}` of `{}`: {why}",
                        entry.method, entry.path, entry.owner, other.method, other.path, other.owner
                    )));
                }
            }
            added.push(entry);
        }
        // Whatever else axum refuses, refuse it here, before anything is served.
        let trial: Vec<&Entry> = table.entries.iter().chain(&added).collect();
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| compose(&Custom::default(), &trial))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            return Err(SetupError::new(format!(
                "{owner}: axum refuses these routes: {message}"
            )));
        }
        table.next_group += 1;
        table.live += 1;
        table.entries.extend(added);
        if !self.inner.detached
            && let Some(readiness) = self.inner.settings.get().and_then(|s| s.readiness.as_ref())
        {
            let mut part = lock(&self.inner.readiness);
            if part.is_none() {
                *part = Some(readiness.part("web server", "not bound"));
            }
        }
        Ok(RouteGroup {
            server: self.clone(),
            group,
            state: Mutex::new(GroupState::Registered),
        })
    }

    /// Builds the app again from the started routes and your routes and layers, and
    /// swaps it in: requests already inside the old one finish there.
    fn rebuild(&self, table: &Routes) {
        let started: Vec<&Entry> = table.entries.iter().filter(|e| e.started).collect();
        let app = compose(&lock(&self.inner.custom), &started);
        *self.inner.current.write().unwrap_or_else(|p| p.into_inner()) = app;
    }

    async fn serve(&self) -> Result<(), SetupError> {
        if self.inner.detached {
            return Ok(());
        }
        let _bind = self.inner.bind_lock.lock().await;
        if lock(&self.inner.running).is_some() {
            return Ok(());
        }
        let address = self
            .inner
            .settings
            .get()
            .map_or(nameko_core::config::DEFAULT_WEB_SERVER_ADDRESS, |s| s.address.as_str())
            .to_owned();
        let listener = tokio::net::TcpListener::bind(&address).await.map_err(|err| {
            SetupError::with_source(
                format!("the web server could not bind `{address}` (config `WEB_SERVER_ADDRESS`): {err}"),
                err,
            )
        })?;
        let local = listener.local_addr().map_err(|err| {
            SetupError::with_source(
                format!("the web server bound `{address}` but has no address: {err}"),
                err,
            )
        })?;
        let stop = CancellationToken::new();
        let app = self.edge().into_make_service();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(%err, "the web server failed");
            }
        });
        *lock(&self.inner.running) = Some(Running { stop, task: Some(task) });
        if let Some(part) = lock(&self.inner.readiness).as_ref() {
            part.ready();
        }
        self.inner.bound.send_replace(Some(local));
        tracing::info!(address = %local, "web server listening on http://{local}");
        Ok(())
    }

    /// One group stopped or was killed; when it was the last one, the server stops
    /// accepting and the serving task is returned (a kill aborts it instead).
    fn release(&self, kill: bool) -> Option<JoinHandle<()>> {
        let last = {
            let mut table = lock(&self.inner.routes);
            table.live = table.live.saturating_sub(1);
            table.live == 0
        };
        if !last {
            return None;
        }
        let mut running = lock(&self.inner.running).take()?;
        running.stop.cancel();
        if let Some(part) = lock(&self.inner.readiness).as_ref() {
            part.not_ready(if kill { "killed" } else { "stopping" });
        }
        let task = running.task.take();
        if kill {
            if let Some(task) = task {
                task.abort();
            }
            self.stopped();
            return None;
        }
        task
    }

    fn stopped(&self) {
        lock(&self.inner.readiness).take();
        self.inner.bound.send_replace(None);
    }
}

impl fmt::Debug for WebServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<String> = lock(&self.inner.routes)
            .entries
            .iter()
            .map(|e| format!("{} {} ({})", e.method, e.path, e.owner))
            .collect();
        f.debug_struct("WebServer")
            .field("detached", &self.inner.detached)
            .field("local_addr", &self.local_addr())
            .field("routes", &routes)
            .finish_non_exhaustive()
    }
}

/// The app: your merged routes first, then the entrypoints' (a path both serve is
/// yours), then a JSON 404; your layers around all of it. Extractors see no default
/// body limit of axum's: the edge enforces `WEB_MAX_BODY_SIZE`.
fn compose(custom: &Custom, entries: &[&Entry]) -> Router {
    let mut routes = Router::new();
    for entry in entries {
        routes = routes.route(
            &entry.path,
            on_service(entry.filter, RouteService(Arc::clone(&entry.handler))),
        );
    }
    let routes = routes.fallback(edge::not_found);
    let mut app = if custom.merged.is_empty() {
        routes
    } else {
        let mut app = Router::new();
        for router in &custom.merged {
            app = app.merge(router.clone());
        }
        app.fallback_service(routes)
    };
    for map in &custom.maps {
        app = map(app);
    }
    app
}

/// What the server serves: the edge (trace id, body limit) around the current app.
#[derive(Clone)]
struct Edge {
    inner: Arc<Inner>,
}

impl Service<Request> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let limit = self.inner.limit.get();
        if let Some(probe) = Probe::of(request.uri().path()) {
            let readiness = self.inner.settings.get().and_then(|s| s.readiness.clone());
            return Box::pin(async move {
                Ok(edge::edge(limit, request, |request| async move {
                    probe.answer(request.method(), readiness.as_ref())
                })
                .await)
            });
        }
        // The edge limits bodies itself: axum's own default limit is off. Around the
        // whole app, not per route (`Router::layer` would box every route once more);
        // and only for a request with a body (the layer inserts a request extension).
        let app = self.inner.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        if axum::body::HttpBody::is_end_stream(request.body()) {
            Box::pin(through_edge(limit, request, app))
        } else {
            Box::pin(through_edge(limit, request, DefaultBodyLimit::disable().layer(app)))
        }
    }
}

/// `request` through the edge, then `app`.
async fn through_edge<A>(limit: usize, request: Request, mut app: A) -> Result<Response, Infallible>
where
    A: Service<Request, Response = Response, Error = Infallible>,
{
    Ok(edge::edge(limit, request, |request| async move {
        match app.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    })
    .await)
}

/// An entrypoint's [`RouteHandler`] as a tower service.
#[derive(Clone)]
struct RouteService(RouteHandler);

impl Service<Request> for RouteService {
    type Response = Response;
    type Error = Infallible;
    type Future = Infallibly;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        Infallibly((self.0)(request))
    }
}

/// A route handler's future, as a service's.
struct Infallibly(Pin<Box<dyn Future<Output = Response> + Send>>);

impl Future for Infallibly {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupState {
    Registered,
    Started,
    Released,
}

/// Routes one extension registered with [`WebServer::add_routes`]: served from
/// [`start`](Self::start) on; [`stop`](Self::stop) and [`kill`](Self::kill) release
/// them, and the last group released stops the server.
pub struct RouteGroup {
    server: WebServer,
    group: u64,
    state: Mutex<GroupState>,
}

impl RouteGroup {
    /// Serves the routes, binding the server if it is not bound yet.
    ///
    /// # Errors
    ///
    /// When the server cannot bind its address; the error names it.
    pub async fn start(&self) -> Result<(), SetupError> {
        {
            let mut table = lock(&self.server.inner.routes);
            for entry in table.entries.iter_mut().filter(|e| e.group == self.group) {
                entry.started = true;
            }
            self.server.rebuild(&table);
        }
        *lock(&self.state) = GroupState::Started;
        self.server.serve().await
    }

    /// Graceful: when this is the last group, the server stops accepting connections
    /// and waits for the requests in flight to be answered. Requests to these routes
    /// meanwhile find the service stopping (503).
    pub async fn stop(&self) {
        if std::mem::replace(&mut *lock(&self.state), GroupState::Released) == GroupState::Released {
            return;
        }
        if let Some(task) = self.server.release(false) {
            tracing::info!("web server stopping: no new connections, answering the requests in flight");
            let _ = task.await;
            self.server.stopped();
            tracing::info!("web server stopped");
        }
    }

    /// Removes the routes now; the last group aborts the server.
    pub fn kill(&self) {
        if std::mem::replace(&mut *lock(&self.state), GroupState::Released) == GroupState::Released {
            return;
        }
        {
            let mut table = lock(&self.server.inner.routes);
            table.entries.retain(|e| e.group != self.group);
            self.server.rebuild(&table);
        }
        self.server.release(true);
    }
}

impl fmt::Debug for RouteGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteGroup")
            .field("group", &self.group)
            .field("state", &*lock(&self.state))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A path with its parameter names blanked (`/users/{}/{*}`), and the names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shape {
    text: String,
    params: Vec<String>,
}

impl Shape {
    fn parse(path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("route path `{path}` must start with `/`"));
        }
        let mut text = String::with_capacity(path.len());
        let mut params = Vec::new();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        for (index, segment) in segments.iter().enumerate() {
            text.push('/');
            if let Some(rest) = segment.strip_prefix(':').or_else(|| segment.strip_prefix('*')) {
                return Err(format!(
                    "route path `{path}`: `{segment}` is the old syntax; axum 0.8 writes parameters as `{{{rest}}}` and `{{*{rest}}}`"
                ));
            }
            match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(inner) if !inner.contains(['{', '}']) => {
                    let (catch_all, name) = match inner.strip_prefix('*') {
                        Some(name) => (true, name),
                        None => (false, inner),
                    };
                    if name.is_empty() {
                        return Err(format!("route path `{path}`: a parameter needs a name, e.g. `{{id}}`"));
                    }
                    if catch_all && index + 1 != segments.len() {
                        return Err(format!("route path `{path}`: `{segment}` must be the last segment"));
                    }
                    if params.iter().any(|p| p == name) {
                        return Err(format!("route path `{path}`: parameter `{name}` appears twice"));
                    }
                    text.push_str(if catch_all { "{*}" } else { "{}" });
                    params.push(name.to_owned());
                }
                _ if segment.contains(['{', '}']) => {
                    return Err(format!(
                        "route path `{path}`: `{segment}` must be a whole-segment parameter, `{{name}}` or `{{*name}}`"
                    ));
                }
                _ => text.push_str(segment),
            }
        }
        Ok(Self { text, params })
    }
}

impl Entry {
    fn conflict(&self, other: &Entry) -> Option<&'static str> {
        if self.shape.text != other.shape.text {
            return None;
        }
        if self.shape.params != other.shape.params {
            return Some("the same path with other parameter names");
        }
        (self.method == other.method).then_some("the same method and path")
    }
}

/// A size in bytes above 0 set under `key` (web server and websocket limits); `None`
/// when it is not set.
///
/// # Errors
///
/// When it is set to anything else; the error names the key, where it was set and the
/// value.
pub(crate) fn byte_size(config: &nameko_core::Config, key: &str) -> Result<Option<usize>, SetupError> {
    let Some(value) = config.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    value
        .as_u64()
        .and_then(|limit| usize::try_from(limit).ok())
        .filter(|limit| *limit > 0)
        .map(Some)
        .ok_or_else(|| {
            SetupError::new(format!(
                "config `{key}` ({}): expected a size in bytes above 0, found {}",
                value.location(),
                value.to_json()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_are_positive_integers() {
        let config = nameko_core::Config::from_yaml_str("A: 1024\nB: 0\nC: big\nD: null\n").unwrap();
        assert_eq!(byte_size(&config, "A").unwrap(), Some(1024));
        assert_eq!(byte_size(&config, "D").unwrap(), None);
        assert_eq!(byte_size(&config, "E").unwrap(), None);
        for key in ["B", "C"] {
            let err = byte_size(&config, key).unwrap_err().to_string();
            assert!(err.contains(&format!("config `{key}`")), "{err}");
            assert!(err.contains("expected a size in bytes above 0"), "{err}");
        }
    }

    #[test]
    fn shapes_blank_parameter_names() {
        let shape = Shape::parse("/users/{id}/files/{*rest}").unwrap();
        assert_eq!(shape.text, "/users/{}/files/{*}");
        assert_eq!(shape.params, ["id", "rest"]);
        assert!(Shape::parse("users").unwrap_err().contains("must start with `/`"));
        assert!(Shape::parse("/users/:id").unwrap_err().contains("`{id}`"));
        assert!(Shape::parse("/a/{*rest}/b").unwrap_err().contains("last segment"));
        assert!(Shape::parse("/a/x{id}").unwrap_err().contains("whole-segment"));
        assert!(Shape::parse("/a/{id}/{id}").unwrap_err().contains("twice"));
    }
}
