//! `#[ws_rpc]` and the `WebSocketHub` over real sockets: Nameko's captured session
//! replayed frame by frame, errors, context from the upgrade request, the hub, the
//! message size limit, a disconnect during a call, the per-runner name check, and the
//! testing support (worker factory, harness).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use nameko::{
    core::{Config, RunningServices, ServiceRunner, WorkerOutcome},
    http::WebServer,
    prelude::{ContextData, Dep, Provider, RemoteError, UserId, WebSocketHub},
    ws::{HubError, WsServer},
};
use nameko_testing::ServiceHarness;
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::Notify};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

/// Lets a test hold a call in its handler.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    started: Notify,
    release: Notify,
    finished: AtomicUsize,
}

#[derive(nameko::Dependencies)]
pub(crate) struct WsDemo {
    hub: WebSocketHub,
    user: UserId,
    gate: Dep<Gate>,
}

#[nameko::service(name = "wsdemo")]
impl WsDemo {
    #[ws_rpc]
    async fn ws_add(&self, _socket_id: String, a: i64, b: i64) -> Result<i64, RemoteError> {
        Ok(a + b)
    }

    #[ws_rpc]
    async fn ws_subscribe(&self, socket_id: String, channel: String) -> Result<String, HubError> {
        self.hub.subscribe(&socket_id, &channel)?;
        Ok(format!("subscribed to {channel}"))
    }

    #[ws_rpc]
    async fn ws_broadcast(&self, _socket_id: String, channel: String, value: Value) -> Result<String, RemoteError> {
        self.hub.broadcast(&channel, "ping", json!({ "value": value }));
        Ok("ok".to_owned())
    }

    #[ws_rpc(name = "poke")]
    async fn unicast(&self, _socket_id: String, target: String) -> Result<bool, RemoteError> {
        Ok(self.hub.unicast(&target, "poked", json!({"by": "test"})))
    }

    #[ws_rpc]
    async fn fail(&self, _socket_id: String) -> Result<(), RemoteError> {
        Err(RemoteError::new("ValueError", "bad value").with_path("builtins.ValueError"))
    }

    #[ws_rpc]
    async fn whoami(&self, socket_id: String) -> Result<Value, RemoteError> {
        Ok(json!({ "socket_id": socket_id, "user_id": self.user.as_str() }))
    }

    #[ws_rpc]
    async fn hold(&self, _socket_id: String) -> Result<&'static str, RemoteError> {
        self.gate.started.notify_one();
        self.gate.release.notified().await;
        self.gate.finished.fetch_add(1, Ordering::SeqCst);
        Ok("released")
    }
}

/// A second service that declares `ws_add` too.
#[derive(nameko::Dependencies)]
pub(crate) struct Clash {}

#[nameko::service(name = "clash")]
impl Clash {
    #[ws_rpc]
    async fn ws_add(&self, _socket_id: String) -> Result<(), RemoteError> {
        Ok(())
    }
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Served {
    running: RunningServices,
    ws: WsServer,
    gate: Arc<Gate>,
    addr: SocketAddr,
}

/// Runs `WsDemo` with `GET /ws` on the runner's own web server (on a free port).
async fn serve(config: &str) -> Served {
    let ws = WsServer::new();
    let web = WebServer::new();
    let gate = Arc::new(Gate::default());
    let config = format!("WEB_SERVER_ADDRESS: 127.0.0.1:0\n{config}");
    let running = ServiceRunner::new(Config::from_yaml_str(&config).unwrap())
        .resource(Arc::new(ws.clone()))
        .resource(Arc::new(web.clone()))
        .resource(Arc::clone(&gate))
        .stop_timeout(Duration::from_secs(10))
        .with_service::<WsDemo>()
        .start()
        .await
        .unwrap();
    let addr = web.local_addr().expect("the web server is bound once started");
    Served {
        running,
        ws,
        gate,
        addr,
    }
}

async fn connect_with(addr: SocketAddr, headers: &[(&'static str, &str)]) -> (Client, String) {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (mut client, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let connected = next(&mut client).await;
    assert_eq!(connected["type"], "event");
    assert_eq!(connected["event"], "connected");
    let socket_id = connected["data"]["socket_id"].as_str().unwrap().to_owned();
    assert_eq!(
        connected,
        json!({"type": "event", "event": "connected", "data": {"socket_id": socket_id}})
    );
    (client, socket_id)
}

async fn connect(addr: SocketAddr) -> (Client, String) {
    connect_with(addr, &[]).await
}

/// The next frame that is not a ping or pong.
async fn next_message(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("no frame within 10 s")
            .expect("the socket closed")
            .expect("the socket failed");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

async fn next(client: &mut Client) -> Value {
    match next_message(client).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn send(client: &mut Client, frame: &str) {
    client.send(Message::Text(frame.into())).await.unwrap();
}

async fn call(client: &mut Client, frame: Value) -> Value {
    send(client, &frame.to_string()).await;
    next(client).await
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn the_captured_nameko_session_replays_frame_by_frame() {
    let served = serve("").await;
    let (mut client, _) = connect(served.addr).await;
    // Nameko's captured session (reference §2.5), client and server frames in order.
    let session = [
        (
            r#"{"method": "ws_add", "data": {"a": 1, "b": 2}, "correlation_id": "c1"}"#,
            vec![json!({"type": "result", "success": true, "data": 3, "correlation_id": "c1"})],
        ),
        (
            r#"{"method": "ws_subscribe", "data": {"channel": "chan1"}, "correlation_id": "c2"}"#,
            vec![json!({"type": "result", "success": true, "data": "subscribed to chan1", "correlation_id": "c2"})],
        ),
        (
            r#"{"method": "ws_broadcast", "data": {"channel": "chan1", "value": 9}, "correlation_id": "c3"}"#,
            vec![
                json!({"type": "event", "event": "ping", "data": {"value": 9}}),
                json!({"type": "result", "success": true, "data": "ok", "correlation_id": "c3"}),
            ],
        ),
        (
            r#"{"method": "nope", "data": {}, "correlation_id": "c4"}"#,
            vec![
                json!({"type": "result", "success": false, "error": {"exc_type": "MethodNotFound", "exc_path": "nameko.exceptions.MethodNotFound", "exc_args": [], "value": ""}, "correlation_id": "c4"}),
            ],
        ),
        (
            "not json",
            vec![
                json!({"type": "result", "success": false, "error": {"exc_type": "MalformedRequest", "exc_path": "nameko.exceptions.MalformedRequest", "exc_args": ["Invalid JSON data"], "value": "Invalid JSON data"}, "correlation_id": null}),
            ],
        ),
    ];
    for (sent, expected) in session {
        send(&mut client, sent).await;
        for frame in expected {
            assert_eq!(next(&mut client).await, frame, "after sending {sent}");
        }
    }
    served.running.stop().await;
}

#[tokio::test]
async fn errors_and_signatures_read_as_nameko() {
    let served = serve("").await;
    let (mut client, socket_id) = connect(served.addr).await;
    let error = |reply: &Value| reply["error"].clone();

    let reply = call(
        &mut client,
        json!({"method": "ws_add", "data": {"a": 1}, "correlation_id": 1}),
    )
    .await;
    assert_eq!(reply["success"], false);
    assert_eq!(reply["correlation_id"], 1);
    assert_eq!(
        error(&reply),
        json!({"exc_type": "IncorrectSignature", "exc_path": "nameko.exceptions.IncorrectSignature",
               "exc_args": ["ws_add() missing 1 required positional argument: 'b'"],
               "value": "ws_add() missing 1 required positional argument: 'b'"})
    );
    let reply = call(
        &mut client,
        json!({"method": "ws_add", "data": {"a": 1, "b": 2, "c": 3}}),
    )
    .await;
    assert_eq!(
        error(&reply)["value"],
        "ws_add() got an unexpected keyword argument 'c'"
    );
    assert_eq!(reply["correlation_id"], Value::Null);
    let reply = call(&mut client, json!({"method": "ws_add", "data": {"a": "x", "b": 2}})).await;
    assert_eq!(error(&reply)["exc_type"], "IncorrectSignature");
    assert!(
        error(&reply)["value"]
            .as_str()
            .unwrap()
            .starts_with("ws_add() argument 'a'")
    );

    let reply = call(&mut client, json!({"method": "fail", "correlation_id": "f"})).await;
    assert_eq!(
        reply,
        json!({"type": "result", "success": false, "correlation_id": "f", "error":
               {"exc_type": "ValueError", "exc_path": "builtins.ValueError", "exc_args": ["bad value"], "value": "bad value"}})
    );
    let reply = call(
        &mut client,
        json!({"method": "ws_add", "data": [1, 2], "correlation_id": "m"}),
    )
    .await;
    assert_eq!(error(&reply)["exc_type"], "MalformedRequest");
    assert_eq!(reply["correlation_id"], "m");
    let reply = call(&mut client, json!({"data": {}})).await;
    assert_eq!(error(&reply)["value"], "the request frame has no `method`");

    let reply = call(&mut client, json!({"method": "ws_subscribe", "data": {"channel": "c"}})).await;
    assert_eq!(reply["data"], "subscribed to c");
    assert_eq!(served.ws.hub().subscriptions(&socket_id).unwrap(), ["c"]);

    // A binary frame holding JSON is read like a text frame.
    client
        .send(Message::Binary(
            br#"{"method": "ws_add", "data": {"a": 2, "b": 2}}"#.to_vec().into(),
        ))
        .await
        .unwrap();
    assert_eq!(next(&mut client).await["data"], 4);
    // The socket served everything above and still does.
    let reply = call(&mut client, json!({"method": "ws_add", "data": {"a": 20, "b": 22}})).await;
    assert_eq!(reply["data"], 42);
    served.running.stop().await;
}

#[tokio::test]
async fn context_data_comes_from_the_upgrade_request() {
    let served = serve("").await;
    let (mut client, socket_id) = connect_with(served.addr, &[("nameko-user-id", "u-42")]).await;
    let reply = call(&mut client, json!({"method": "whoami"})).await;
    assert_eq!(reply["data"], json!({"socket_id": socket_id, "user_id": "u-42"}));
    let (mut anonymous, _) = connect(served.addr).await;
    let reply = call(&mut anonymous, json!({"method": "whoami"})).await;
    assert_eq!(reply["data"]["user_id"], Value::Null);
    served.running.stop().await;
}

#[tokio::test]
async fn the_hub_broadcasts_unicasts_and_forgets_closed_sockets() {
    let served = serve("").await;
    let hub = served.ws.hub();
    let (mut a, a_id) = connect(served.addr).await;
    let (mut b, b_id) = connect(served.addr).await;
    let (mut c, _) = connect(served.addr).await;
    let subscribe = |channel: &str| json!({"method": "ws_subscribe", "data": {"channel": channel}});
    assert_eq!(call(&mut a, subscribe("room")).await["success"], true);
    assert_eq!(call(&mut b, subscribe("room")).await["success"], true);
    assert_eq!(call(&mut a, subscribe("other")).await["success"], true);
    assert_eq!(hub.subscriptions(&a_id).unwrap(), ["other", "room"]);

    // c is not subscribed: it only sees its own result.
    let reply = call(
        &mut c,
        json!({"method": "ws_broadcast", "data": {"channel": "room", "value": 1}}),
    )
    .await;
    assert_eq!(reply["data"], "ok");
    for client in [&mut a, &mut b] {
        assert_eq!(
            next(client).await,
            json!({"type": "event", "event": "ping", "data": {"value": 1}})
        );
    }

    let reply = call(&mut c, json!({"method": "poke", "data": {"target": b_id}})).await;
    assert_eq!(reply["data"], true);
    assert_eq!(
        next(&mut b).await,
        json!({"type": "event", "event": "poked", "data": {"by": "test"}})
    );
    let reply = call(&mut c, json!({"method": "poke", "data": {"target": "nobody"}})).await;
    assert_eq!(reply["data"], false);

    assert!(hub.unsubscribe(&b_id, "room"));
    assert_eq!(hub.broadcast("room", "direct", json!(2)), 1);
    assert_eq!(next(&mut a).await["event"], "direct");

    a.close(None).await.unwrap();
    eventually("the closed socket is forgotten", || !hub.connections().contains(&a_id)).await;
    assert_eq!(hub.broadcast("room", "x", json!(3)), 0);
    assert_eq!(
        hub.subscriptions(&a_id),
        Err(HubError::ConnectionNotFound(a_id.clone()))
    );
    let reply = call(&mut c, json!({"method": "ws_subscribe", "data": {"channel": "room"}})).await;
    assert_eq!(reply["success"], true);
    assert_eq!(hub.connections().len(), 2);
    served.running.stop().await;
}

#[tokio::test]
async fn an_oversized_message_closes_only_that_socket() {
    let served = serve("WS_MAX_MESSAGE_SIZE: 1024").await;
    let (mut big, big_id) = connect(served.addr).await;
    let (mut other, _) = connect(served.addr).await;
    let padding = "x".repeat(4096);
    send(
        &mut big,
        &json!({"method": "ws_add", "data": {"a": 1, "b": 2}, "pad": padding}).to_string(),
    )
    .await;
    match next_message(&mut big).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Size);
            assert_eq!(frame.reason.as_str(), "message too big: the limit is 1024 bytes");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let hub = served.ws.hub();
    eventually("the closed socket is forgotten", || {
        !hub.connections().contains(&big_id)
    })
    .await;
    let reply = call(&mut other, json!({"method": "ws_add", "data": {"a": 1, "b": 2}})).await;
    assert_eq!(reply["data"], 3);
    served.running.stop().await;
}

#[tokio::test]
async fn a_disconnect_does_not_cancel_the_worker_or_skip_its_hooks() {
    let served = serve("").await;
    let container = served.running.container("wsdemo").unwrap();
    let mut reports = container.worker_reports();
    let (mut client, _) = connect(served.addr).await;
    send(&mut client, r#"{"method": "hold"}"#).await;
    tokio::time::timeout(Duration::from_secs(10), served.gate.started.notified())
        .await
        .expect("the worker started");
    drop(client);
    tokio::time::sleep(Duration::from_millis(50)).await;
    served.gate.release.notify_one();
    let report = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let report = reports.recv().await.unwrap();
            if report.method == "hold" {
                return report;
            }
        }
    })
    .await
    .expect("the worker finished");
    // Reports are sent after `worker_result` and `worker_teardown`.
    assert!(matches!(report.outcome, WorkerOutcome::Success), "{report:?}");
    assert_eq!(served.gate.finished.load(Ordering::SeqCst), 1);
    served.running.stop().await;
}

#[tokio::test]
async fn ws_rpc_names_are_unique_per_runner() {
    let err = ServiceRunner::new(Config::default())
        .resource(Arc::new(Gate::default()))
        .with_service::<WsDemo>()
        .with_service::<Clash>()
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("websocket method `ws_add` is declared by both service `wsdemo` and service `clash`")
            || err.contains("websocket method `ws_add` is declared by both service `clash` and service `wsdemo`"),
        "{err}"
    );
}

#[tokio::test]
async fn stopping_the_runner_closes_the_sockets() {
    let served = serve("").await;
    let (mut client, _) = connect(served.addr).await;
    served.running.stop().await;
    match next_message(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn the_worker_factory_takes_a_recording_hub() {
    let (hub, log) = WebSocketHub::recording();
    let worker = WsDemo::worker_factory()
        .hub(hub)
        .gate(Dep::from_arc(Arc::new(Gate::default())))
        .build();
    let socket_id = log.connect();
    assert_eq!(
        worker.ws_subscribe(socket_id.clone(), "c".into()).await.unwrap(),
        "subscribed to c"
    );
    assert_eq!(
        worker.ws_broadcast("x".into(), "c".into(), json!(5)).await.unwrap(),
        "ok"
    );
    assert_eq!(
        log.frames(&socket_id),
        [json!({"type": "event", "event": "ping", "data": {"value": 5}})]
    );
    assert_eq!(
        worker.ws_subscribe("gone".into(), "c".into()).await.unwrap_err(),
        HubError::ConnectionNotFound("gone".into())
    );
    // Unset, the hub field is a recording hub of its own.
    let worker = WsDemo::worker_factory()
        .gate(Dep::from_arc(Arc::new(Gate::default())))
        .build();
    assert!(worker.ws_subscribe("nobody".into(), "c".into()).await.is_err());
}

#[tokio::test]
async fn the_harness_sends_frames_without_a_socket() {
    let gate = Arc::new(Gate::default());
    let harness = ServiceHarness::builder::<WsDemo>()
        .providers(|p| p.gate = Provider::fixed(Dep::from_arc(Arc::clone(&gate))))
        .start()
        .await
        .unwrap();
    assert_eq!(
        harness.ws_call("ws_add", "s1", json!({"a": 1, "b": 2})).await.unwrap(),
        3
    );
    let err = harness.ws_call("ws_add", "s1", json!({"a": 1})).await.unwrap_err();
    assert_eq!(err.value(), "ws_add() missing 1 required positional argument: 'b'");
    let err = harness.ws_call("nope", "s1", json!({})).await.unwrap_err();
    assert_eq!((err.exc_type(), err.value()), ("MethodNotFound", ""));
    let err = harness
        .ws_call("ws_subscribe", "s1", json!({"channel": "c"}))
        .await
        .unwrap_err();
    assert_eq!(err.exc_path(), "nameko.exceptions.ConnectionNotFound");

    let sockets = harness.ws_server().recorder();
    let socket_id = sockets.connect();
    harness
        .ws_call("ws_subscribe", &socket_id, json!({"channel": "c"}))
        .await
        .unwrap();
    harness
        .ws_call("ws_broadcast", "s2", json!({"channel": "c", "value": 7}))
        .await
        .unwrap();
    assert_eq!(
        sockets.frames(&socket_id),
        [json!({"type": "event", "event": "ping", "data": {"value": 7}})]
    );
    let data = ContextData::new().with("user_id", "ada");
    let who = harness.ws_call_with("whoami", "s3", Value::Null, data).await.unwrap();
    assert_eq!(who, json!({"socket_id": "s3", "user_id": "ada"}));
    harness.stop().await;
}
