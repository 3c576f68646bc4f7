//! `#[http]` entrypoints on a real socket (`127.0.0.1:0`): routing, extractors and
//! their rejections, error mapping, trace ids, the body limit, route conflicts, reserved
//! paths, bind errors, client disconnects, graceful stop, composing with axum, and the
//! harness without a socket.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use nameko::{
    core::{
        BoxError, Config, ContainerError, Dependency, DependencyProvider, Outcome, RunningServices, ServiceRunner,
        SetupContext, SetupError, WorkerContext,
    },
    http::{
        HeaderMap, Json, Path, Query, StatusCode, WebServer,
        axum::{Router, body::Body, extract::Request, routing},
    },
    prelude::RemoteError,
};
use nameko_testing::{
    ServiceHarness,
    http::{RawResponse, exchange},
};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpStream, sync::Notify};

// ----- a dependency that records its hooks -----

/// Where `Hooks` providers write: a runner resource.
#[derive(Debug, Default)]
pub(crate) struct HookLog {
    lines: Mutex<Vec<String>>,
    changed: Notify,
}

impl HookLog {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_waiters();
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (at most 20 s) until `line` was logged.
    async fn wait_for(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let changed = self.changed.notified();
            if self.lines().iter().any(|l| l == line) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("`{line}` was never logged; log: {:?}", self.lines());
            }
        }
    }
}

/// A field whose provider logs `get`, `result <outcome>` and `teardown` per worker.
pub(crate) struct Hooks;

#[derive(Default)]
pub(crate) struct HooksProvider {
    log: Option<Arc<HookLog>>,
}

impl DependencyProvider for HooksProvider {
    type Output = Hooks;
    type State = String;

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        self.log = Some(cx.resource::<HookLog>()?);
        Ok(())
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(Hooks, String), BoxError> {
        let method = cx.entrypoint().method().to_owned();
        self.log.as_ref().unwrap().push(format!("{method} get"));
        Ok((Hooks, method))
    }

    async fn worker_result(&self, _: &WorkerContext, method: &mut String, outcome: &Outcome) {
        let outcome = match outcome {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            _ => "panicked",
        };
        self.log.as_ref().unwrap().push(format!("{method} result {outcome}"));
    }

    async fn worker_teardown(&self, _: &WorkerContext, method: String) {
        self.log.as_ref().unwrap().push(format!("{method} teardown"));
    }
}

impl Dependency for Hooks {
    type Provider = HooksProvider;
    fn provider() -> HooksProvider {
        HooksProvider::default()
    }
}

// ----- the service -----

#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub(crate) enum WebError {
    #[error("no user {0}")]
    #[remote(exc_type = "UserNotFound", status = 404, expected)]
    NotFound(u64),
    #[error("the database is down")]
    #[remote(exc_type = "DatabaseDown")]
    Down,
}

#[derive(nameko::Dependencies)]
pub(crate) struct Web {
    hooks: Hooks,
    cx: WorkerContext,
}

#[nameko::service(name = "http_it")]
impl Web {
    #[http("GET", "/items/{id}")]
    async fn item(
        &self,
        Path(id): Path<u64>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Result<Json<Value>, WebError> {
        let _ = &self.hooks;
        Ok(Json(json!({ "id": id, "query": query })))
    }

    #[http("POST,PUT", "/echo")]
    async fn echo(&self, headers: HeaderMap, body: String) -> Result<(StatusCode, String), WebError> {
        let kind = headers.get("x-kind").and_then(|v| v.to_str().ok()).unwrap_or("none");
        Ok((StatusCode::CREATED, format!("{kind}:{body}")))
    }

    #[http("POST", "/json")]
    async fn json(&self, Json(value): Json<Value>) -> Result<Json<Value>, WebError> {
        Ok(Json(json!({ "got": value })))
    }

    #[http("GET", "/users/{id}")]
    async fn user(&self, Path(id): Path<u64>) -> Result<String, WebError> {
        match id {
            7 => Ok("Ada".to_owned()),
            0 => Err(WebError::Down),
            13 => panic!("unlucky"),
            _ => Err(WebError::NotFound(id)),
        }
    }

    #[http("GET", "/teapot")]
    async fn teapot(&self) -> Result<(StatusCode, &'static str), RemoteError> {
        Ok((StatusCode::IM_A_TEAPOT, "short and stout"))
    }

    #[http("GET", "/trace")]
    #[http("GET", "/trace/again")]
    async fn trace(&self) -> Result<String, RemoteError> {
        Ok(self.cx.trace_id().to_owned())
    }

    #[http("GET", "/slow/{millis}")]
    async fn slow(&self, Path(millis): Path<u64>) -> Result<&'static str, RemoteError> {
        let _ = &self.hooks;
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok("done")
    }
}

fn config(extra: &str) -> Config {
    Config::from_yaml_str(&format!("WEB_SERVER_ADDRESS: 127.0.0.1:0\n{extra}")).unwrap()
}

async fn start(extra: &str) -> (RunningServices, SocketAddr, Arc<HookLog>) {
    let log = Arc::new(HookLog::default());
    let web = WebServer::new();
    let running = ServiceRunner::new(config(extra))
        .resource(Arc::clone(&log))
        .resource(Arc::new(web.clone()))
        .stop_timeout(Duration::from_secs(20))
        .with_service::<Web>()
        .start()
        .await
        .unwrap();
    let addr = web.local_addr().expect("bound once started");
    (running, addr, log)
}

async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    exchange(addr, "GET", path, &[], b"").await.unwrap()
}

fn assert_error(response: &RawResponse, status: u16, error: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{response:?}"
    );
    assert_eq!(response.json().unwrap()["error"], error, "{response:?}");
    assert!(response.header("x-trace-id").is_some(), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_extractors_serve_and_reject() {
    let (running, addr, _) = start("").await;

    let item = get(addr, "/items/5?q=1").await;
    assert_eq!(item.status, 200, "{item:?}");
    assert_eq!(item.json().unwrap(), json!({"id": 5, "query": {"q": "1"}}));

    let echo = exchange(addr, "PUT", "/echo", &[("X-Kind", "text")], b"payload")
        .await
        .unwrap();
    assert_eq!((echo.status, echo.text().as_str()), (201, "text:payload"));
    let echo = exchange(addr, "POST", "/echo", &[], b"p2").await.unwrap();
    assert_eq!((echo.status, echo.text().as_str()), (201, "none:p2"));

    // Both routes of a method with two #[http] attributes; HEAD on a GET route.
    assert_eq!(get(addr, "/trace").await.status, 200);
    assert_eq!(get(addr, "/trace/again").await.status, 200);
    let head = exchange(addr, "HEAD", "/trace", &[], b"").await.unwrap();
    assert_eq!(head.status, 200, "{head:?}");

    // axum's own rejections, before any worker runs.
    let bad_path = get(addr, "/items/abc").await;
    assert_eq!(bad_path.status, 400, "{bad_path:?}");
    assert!(bad_path.text().contains("Cannot parse"), "{bad_path:?}");
    assert!(bad_path.header("x-trace-id").is_some());
    let bad_json = exchange(addr, "POST", "/json", &[("Content-Type", "application/json")], b"{nope")
        .await
        .unwrap();
    assert_eq!(bad_json.status, 400, "{bad_json:?}");
    let no_content_type = exchange(addr, "POST", "/json", &[], b"{}").await.unwrap();
    assert_eq!(no_content_type.status, 415, "{no_content_type:?}");
    let good_json = exchange(addr, "POST", "/json", &[("Content-Type", "application/json")], b"[1]")
        .await
        .unwrap();
    assert_eq!(good_json.json().unwrap(), json!({"got": [1]}));

    // Unknown paths and methods.
    assert_error(&get(addr, "/nowhere").await, 404, "NotFound");
    let delete = exchange(addr, "DELETE", "/echo", &[], b"").await.unwrap();
    assert_eq!(delete.status, 405, "{delete:?}");
    assert!(delete.header("x-trace-id").is_some());

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_their_status_and_json() {
    let (running, addr, _) = start("").await;
    assert_eq!(get(addr, "/users/7").await.text(), "Ada");

    let missing = get(addr, "/users/9").await;
    assert_error(&missing, 404, "UserNotFound");
    assert_eq!(
        missing.json().unwrap(),
        json!({"error": "UserNotFound", "message": "no user 9"})
    );
    assert_error(&get(addr, "/users/0").await, 500, "DatabaseDown");
    let panicked = get(addr, "/users/13").await;
    assert_error(&panicked, 500, "WorkerPanicked");
    // An `Ok` of any status is the handler's success, written as it is.
    let teapot = get(addr, "/teapot").await;
    assert_eq!((teapot.status, teapot.text().as_str()), (418, "short and stout"));
    // Still serving after a panic.
    assert_eq!(get(addr, "/users/7").await.status, 200);

    let reports = running.container("http_it").unwrap().worker_reports();
    drop(reports);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_ids_are_adopted_when_valid_and_made_otherwise() {
    let (running, addr, _) = start("").await;
    let adopted = exchange(addr, "GET", "/trace", &[("X-Trace-Id", "trace-1.a_b")], b"")
        .await
        .unwrap();
    assert_eq!(adopted.text(), "trace-1.a_b");
    assert_eq!(adopted.header("x-trace-id"), Some("trace-1.a_b"));

    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let from_parent = exchange(addr, "GET", "/trace", &[("traceparent", parent)], b"")
        .await
        .unwrap();
    assert_eq!(from_parent.text(), "4bf92f3577b34da6a3ce929d0e0e4736");

    let long = "x".repeat(129);
    for bad in ["has space", "semi;colon", long.as_str()] {
        let replaced = exchange(addr, "GET", "/trace", &[("X-Trace-Id", bad)], b"")
            .await
            .unwrap();
        let made = replaced.text();
        assert_ne!(made, bad);
        assert!(nameko::core::is_valid_trace_id(&made), "{made}");
        assert_eq!(replaced.header("x-trace-id"), Some(made.as_str()));
    }

    let fresh = get(addr, "/trace").await;
    assert_eq!(fresh.header("x-trace-id"), Some(fresh.text().as_str()));
    // Rejections and 404s carry the request's trace id too.
    let rejected = exchange(addr, "GET", "/items/abc", &[("X-Trace-Id", "t-404")], b"")
        .await
        .unwrap();
    assert_eq!(rejected.header("x-trace-id"), Some("t-404"));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_a_json_413() {
    let (running, addr, log) = start("WEB_MAX_BODY_SIZE: 16").await;
    let ok = exchange(addr, "POST", "/echo", &[], &[b'a'; 16]).await.unwrap();
    assert_eq!(ok.status, 201, "{ok:?}");

    // Declared too large: refused before any route.
    let declared = exchange(addr, "POST", "/echo", &[("X-Trace-Id", "big")], &[b'a'; 17])
        .await
        .unwrap();
    assert_error(&declared, 413, "PayloadTooLarge");
    assert_eq!(declared.header("x-trace-id"), Some("big"));
    assert!(
        declared.json().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("limit of 16 bytes (config `WEB_MAX_BODY_SIZE`)")
    );

    // Chunked, so the size is only known while reading: the extractor hits the limit.
    let chunk = format!("{:x}\r\n{}\r\n0\r\n\r\n", 40, "b".repeat(40));
    let chunked = exchange(
        addr,
        "POST",
        "/echo",
        &[("Transfer-Encoding", "chunked")],
        chunk.as_bytes(),
    )
    .await
    .unwrap();
    assert_error(&chunked, 413, "PayloadTooLarge");
    // No worker ran for either: only the first request's.
    assert_eq!(log.lines(), ["echo get", "echo result success", "echo teardown"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_does_not_skip_the_hooks() {
    let (running, addr, log) = start("").await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    log.wait_for("slow get").await;
    drop(stream);
    log.wait_for("slow teardown").await;
    assert_eq!(log.lines(), ["slow get", "slow result success", "slow teardown"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_answers_the_requests_in_flight_then_unbinds() {
    let (running, addr, log) = start("").await;
    let request = tokio::spawn(async move { get(addr, "/slow/500").await });
    log.wait_for("slow get").await;
    running.stop().await;
    let response = request.await.unwrap();
    assert_eq!((response.status, response.text().as_str()), (200, "done"));
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after stop");
}

// ----- conflicts, reserved paths, bind errors -----

#[derive(nameko::Dependencies)]
pub(crate) struct Other {}

#[nameko::service(name = "http_other")]
impl Other {
    #[http("GET", "/items/{id}")]
    async fn clash(&self, Path(id): Path<u64>) -> Result<String, RemoteError> {
        Ok(id.to_string())
    }
}

#[derive(nameko::Dependencies)]
pub(crate) struct Renamed {}

#[nameko::service(name = "http_renamed")]
impl Renamed {
    #[http("DELETE", "/items/{item}")]
    async fn other_name(&self, Path(id): Path<u64>) -> Result<String, RemoteError> {
        Ok(id.to_string())
    }
}

#[derive(nameko::Dependencies)]
pub(crate) struct Twice {}

#[nameko::service(name = "http_twice")]
impl Twice {
    #[http("GET,POST", "/same")]
    async fn first(&self) -> Result<&'static str, RemoteError> {
        Ok("first")
    }

    #[http("POST", "/same")]
    async fn second(&self) -> Result<&'static str, RemoteError> {
        Ok("second")
    }
}

#[derive(nameko::Dependencies)]
pub(crate) struct Health {}

#[nameko::service(name = "http_health")]
impl Health {
    #[http("GET", "/health")]
    async fn health(&self) -> Result<&'static str, RemoteError> {
        Ok("ok")
    }
}

async fn start_error(runner: ServiceRunner) -> String {
    match runner.start().await {
        Ok(_) => panic!("started"),
        Err(err @ ContainerError::Setup { .. }) => err.to_string(),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn route_conflicts_are_startup_errors_naming_both() {
    let log = Arc::new(HookLog::default());
    let runner = ServiceRunner::new(config(""))
        .resource(Arc::clone(&log))
        .with_service::<Web>()
        .with_service::<Other>();
    let err = start_error(runner).await;
    assert!(
        err.contains(
            "route `GET /items/{id}` of `http_other.clash` conflicts with route `GET /items/{id}` of `http_it.item`: \
             the same method and path"
        ),
        "{err}"
    );

    let runner = ServiceRunner::new(config(""))
        .resource(Arc::clone(&log))
        .with_service::<Web>()
        .with_service::<Renamed>();
    let err = start_error(runner).await;
    assert!(
        err.contains("`http_renamed.other_name` conflicts with route `GET /items/{id}` of `http_it.item`"),
        "{err}"
    );
    assert!(err.contains("other parameter names"), "{err}");

    let err = start_error(ServiceRunner::new(config("")).with_service::<Twice>()).await;
    assert!(
        err.contains(
            "route `POST /same` of `http_twice.second` conflicts with route `POST /same` of `http_twice.first`"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn reserved_paths_are_startup_errors() {
    let err = start_error(ServiceRunner::new(config("")).with_service::<Health>()).await;
    assert!(err.contains("`GET /health` uses a reserved path"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_failure_names_the_address() {
    let (running, addr, log) = start("").await;
    let taken = Config::from_yaml_str(&format!("WEB_SERVER_ADDRESS: \"{addr}\"")).unwrap();
    let err = ServiceRunner::new(taken)
        .resource(Arc::clone(&log))
        .with_service::<Web>()
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "the web server could not bind `{addr}` (config `WEB_SERVER_ADDRESS`)"
        )),
        "{err}"
    );
    running.stop().await;

    let bad = Config::from_yaml_str("WEB_SERVER_ADDRESS: nowhere").unwrap();
    let err = start_error(ServiceRunner::new(bad).resource(log).with_service::<Web>()).await;
    assert!(
        err.contains("`nowhere` is not an address; expected `[host:]port`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_has_a_web_server_part_while_bound() {
    let log = Arc::new(HookLog::default());
    let web = WebServer::new();
    let runner = ServiceRunner::new(config(""))
        .resource(log)
        .resource(Arc::new(web.clone()))
        .with_service::<Web>();
    let readiness = runner.readiness();
    let running = runner.start().await.unwrap();
    assert!(readiness.is_ready(), "{}", readiness.report());
    let has_part = || readiness.report().parts().any(|(name, _)| name == "web server");
    assert!(has_part(), "{:?}", readiness.report());
    running.stop().await;
    assert_eq!(web.local_addr(), None);
    assert!(!has_part(), "{:?}", readiness.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_answer_probes_from_the_readiness() {
    let (running, addr, _log) = start("").await;
    let readiness = running.readiness();

    let health = get(addr, "/health").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.json().unwrap(), json!({"status": "alive"}));
    assert!(health.header("x-trace-id").is_some(), "{health:?}");
    let ready = get(addr, "/ready").await;
    assert_eq!((ready.status, ready.json().unwrap()), (200, json!({"ready": true})));

    // Something not ready (a lost connection, say): 503, naming it.
    let part = readiness.part("RabbitMQ connection", "the connection was lost; reconnecting");
    let ready = get(addr, "/ready").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(
        ready.json().unwrap(),
        json!({"ready": false, "not_ready": [
            {"part": "RabbitMQ connection", "reason": "the connection was lost; reconnecting"}
        ]})
    );
    part.ready();
    assert_eq!(get(addr, "/ready").await.status, 200);
    assert_error(
        &exchange(addr, "POST", "/health", &[], b"").await.unwrap(),
        405,
        "MethodNotAllowed",
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_from_metrics_address() {
    let (running, addr, _log) = start("METRICS_ADDRESS: 127.0.0.1:0\n").await;
    let metrics = running.metrics_address().expect("METRICS_ADDRESS is set");
    for _ in 0..3 {
        assert_eq!(get(addr, "/teapot").await.status, 418);
    }
    let scraped = get(metrics, "/metrics").await;
    assert_eq!(scraped.status, 200, "{scraped:?}");
    assert_eq!(
        scraped.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(scraped.body.clone()).unwrap();
    let labels = r#"service="http_it",entrypoint="teapot",kind="http""#;
    for line in [
        format!("nameko_worker_requests_total{{{labels}}} 3"),
        format!("nameko_worker_errors_total{{{labels}}} 0"),
        format!("nameko_worker_duration_seconds_count{{{labels}}} 3"),
        format!("nameko_workers_in_flight{{{labels}}} 0"),
        "nameko_ready 1".to_owned(),
        r#"nameko_readiness_part_ready{part="web server"} 1"#.to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "no line `{line}` in:\n{text}");
    }
    // The same probes as the web server's, for runners without HTTP entrypoints too.
    let ready = get(metrics, "/ready").await;
    assert_eq!((ready.status, ready.json().unwrap()), (200, json!({"ready": true})));
    assert_eq!(get(metrics, "/health").await.status, 200);
    assert_eq!(get(metrics, "/nothing").await.status, 404);
    running.stop().await;
}

#[tokio::test]
async fn a_bad_metrics_address_fails_the_start_naming_the_key() {
    let err = ServiceRunner::new(config("METRICS_ADDRESS: nowhere\n"))
        .with_service::<NoHttp>()
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config `METRICS_ADDRESS`") && err.contains("`nowhere` is not an address"),
        "{err}"
    );
}

#[derive(nameko::Dependencies)]
pub(crate) struct NoHttp {}

#[nameko::service(name = "http_none")]
impl NoHttp {
    #[entrypoint(nameko_testing::Dummy::<(), ()>::new())]
    async fn nothing(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_without_http_entrypoints_never_binds() {
    let web = WebServer::new();
    let running = ServiceRunner::new(config(""))
        .resource(Arc::new(web.clone()))
        .with_service::<NoHttp>()
        .start()
        .await
        .unwrap();
    assert_eq!(web.local_addr(), None);
    running.stop().await;
}

// ----- composing with axum -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_routes_and_layers_are_merged() {
    let log = Arc::new(HookLog::default());
    let web = WebServer::new()
        .merge(Router::new().route("/version", routing::get(|| async { "1.0" })))
        .map_router(|router| {
            router.layer(axum::middleware::map_response(
                |mut response: nameko::http::Response| async move {
                    response.headers_mut().insert("x-layered", "yes".parse().unwrap());
                    response
                },
            ))
        });
    let running = ServiceRunner::new(config(""))
        .resource(log)
        .resource(Arc::new(web.clone()))
        .with_service::<Web>()
        .start()
        .await
        .unwrap();
    let addr = web.bound().await;
    let version = get(addr, "/version").await;
    assert_eq!(version.text(), "1.0");
    assert_eq!(version.header("x-layered"), Some("yes"));
    assert!(version.header("x-trace-id").is_some());
    let user = get(addr, "/users/7").await;
    assert_eq!((user.text().as_str(), user.header("x-layered")), ("Ada", Some("yes")));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_router_is_mounted_in_the_users_own_app() {
    let log = Arc::new(HookLog::default());
    let web = WebServer::detached();
    let running = ServiceRunner::new(Config::from_yaml_str("WEB_SERVER_ADDRESS: 127.0.0.1:1").unwrap())
        .resource(log)
        .resource(Arc::new(web.clone()))
        .with_service::<Web>()
        .start()
        .await
        .unwrap();
    assert_eq!(web.local_addr(), None, "a detached server never binds");
    let app = Router::new()
        .route("/mine", routing::get(|| async { "my route" }))
        .fallback_service(web.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(get(addr, "/mine").await.text(), "my route");
    assert_eq!(get(addr, "/users/7").await.text(), "Ada");
    server.abort();
    running.stop().await;
}

// ----- the harness, without a socket -----

#[tokio::test]
async fn the_harness_calls_routes_without_a_socket() {
    let log = Arc::new(HookLog::default());
    let harness = ServiceHarness::builder::<Web>()
        .resource(Arc::clone(&log))
        .start()
        .await
        .unwrap();
    let request = Request::get("/users/7")
        .header("x-trace-id", "harness")
        .body(Body::empty())
        .unwrap();
    let response = harness.http(request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-trace-id"], "harness");
    let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"Ada");
    assert_eq!(harness.web_server().local_addr(), None);
    harness.stop().await;
}

#[tokio::test]
async fn the_harness_replaces_dependencies_of_http_workers() {
    let real = Arc::new(HookLog::default());
    let fake = Arc::new(HookLog::default());
    let provider = HooksProvider {
        log: Some(Arc::clone(&fake)),
    };
    let harness = ServiceHarness::builder::<Web>()
        .resource(Arc::clone(&real))
        .providers(|p| p.hooks = nameko::core::Provider::new(FixedLog(provider)))
        .start()
        .await
        .unwrap();
    let response = harness
        .http(Request::get("/items/1").body(Body::empty()).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.lines(), ["item get", "item result success", "item teardown"]);
    assert!(real.lines().is_empty(), "{:?}", real.lines());
    harness.stop().await;
}

/// `HooksProvider` writing to a fixed log, whatever the resources say.
pub(crate) struct FixedLog(HooksProvider);

impl DependencyProvider for FixedLog {
    type Output = Hooks;
    type State = String;

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(Hooks, String), BoxError> {
        self.0.get_dependency(cx).await
    }

    async fn worker_result(&self, cx: &WorkerContext, state: &mut String, outcome: &Outcome) {
        self.0.worker_result(cx, state, outcome).await;
    }

    async fn worker_teardown(&self, cx: &WorkerContext, state: String) {
        self.0.worker_teardown(cx, state).await;
    }
}
