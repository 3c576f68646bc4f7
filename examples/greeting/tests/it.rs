//! The greeting example in real containers on the in-memory broker, its binary under
//! real signals, and its binary on RabbitMQ with Python Nameko on the other side.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use example_greeting::{CountingVisitors, Greeting, Listen, Visitors, Web};
use nameko::http::axum::{body::Body, extract::Request};
use nameko::memory::MemoryBroker;
use nameko::rpc::RpcError;
use nameko_testing::{PythonNameko, RabbitMq, ServiceHarness};
use serde_json::json;

mod soak;

#[tokio::test]
async fn greet_over_rpc_reaches_the_listener() {
    let broker = MemoryBroker::new();
    let visitors = Arc::new(CountingVisitors::default());
    let greeting = ServiceHarness::builder::<Greeting>()
        .broker(broker.clone())
        .resource::<dyn Visitors>(visitors.clone())
        .start()
        .await
        .unwrap();
    let listen = ServiceHarness::builder::<Listen>()
        .broker(broker)
        .start()
        .await
        .unwrap();

    let waiter = listen.waiter("on_greeted");
    assert_eq!(greeting.rpc("greet", json!(["Ada"])).await.unwrap(), json!("Hi, Ada!"));
    assert!(waiter.wait(Duration::from_secs(5)).await.unwrap().is_success());
    assert_eq!(visitors.record("Ada"), 2, "the RPC call counted the first visit");

    let err = greeting.rpc("greet", json!({"name": ""})).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote(e) if e.exc_type() == "NoName"),
        "{err:?}"
    );
    let err = greeting.rpc("greet", json!([])).await.unwrap_err();
    let RpcError::Remote(err) = err else { panic!("{err:?}") };
    assert_eq!(err.value(), "greet() missing 1 required positional argument: 'name'");

    greeting.stop().await;
    listen.stop().await;
}

/// `web` in front of `greeting`, called through the harness's router (no socket):
/// the answer, and the errors mapped to statuses.
#[tokio::test]
async fn web_greets_over_rpc() {
    let broker = MemoryBroker::new();
    let greeting = ServiceHarness::builder::<Greeting>()
        .broker(broker.clone())
        .resource::<dyn Visitors>(Arc::new(CountingVisitors::default()))
        .start()
        .await
        .unwrap();
    let web = ServiceHarness::builder::<Web>().broker(broker).start().await.unwrap();
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let body = |response: nameko::http::Response| async move {
        let bytes = nameko::http::axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };

    let response = web.http(get("/greet?name=Flynne")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(body(response).await, "Hi, Flynne!");

    let response = web.http(get("/greet?name=")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        body(response).await,
        r#"{"error":"BadName","message":"a name is needed to greet somebody"}"#
    );
    // No `name`: axum's Query rejection, before any worker.
    assert_eq!(web.http(get("/greet")).await.status(), 400);

    web.stop().await;
    greeting.stop().await;
}

/// The README's walk-through: the binary on the memory transport, `GET
/// /greet?name=Flynne`, and one trace id in the lines `web`, `greeting` and `listen`
/// log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_through_logs_one_trace_id_in_web_greeting_and_listen() {
    let mut child = spawn(&[
        "run",
        "--transport",
        "memory",
        "--define",
        "WEB_SERVER_ADDRESS=127.0.0.1:0",
    ]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let next = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, log: &mut Vec<String>| {
        let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no log line in 30 s; log: {log:#?}"))
            .unwrap_or_else(|| panic!("the binary exited; log: {log:#?}"));
        log.push(line.clone());
        line
    };
    let addr: std::net::SocketAddr = loop {
        let line = next(&mut rx, &mut log).await;
        if let Some((_, rest)) = line.split_once("web server listening on http://") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let response = nameko_testing::http::exchange(addr, "GET", "/greet?name=Flynne", &[("X-Trace-Id", "walk-1")], b"")
        .await
        .unwrap();
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "Hi, Flynne!"),
        "{log:#?}"
    );
    assert_eq!(response.header("x-trace-id"), Some("walk-1"));

    let mut seen = [false; 3];
    while seen != [true; 3] {
        let line = next(&mut rx, &mut log).await;
        if !line.contains("trace_id=walk-1") {
            continue;
        }
        seen[0] |= line.contains("asking greeting to greet Flynne");
        seen[1] |= line.contains("greeting Flynne");
        seen[2] |= line.contains("Somebody greeted Flynne");
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "{log:#?}");
}

/// Starts the example binary with `args`; returns it once it says it is running.
fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_example-greeting"))
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the example binary starts")
}

#[test]
fn the_binary_stops_cleanly_on_sigterm() {
    let mut child = spawn(&[
        "run",
        "--transport",
        "memory",
        "--define",
        "WEB_SERVER_ADDRESS=127.0.0.1:0",
    ]);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let running = line.contains("running on the memory transport");
        log.push(line);
        if running {
            break;
        }
    }
    assert!(log.iter().any(|l| l.contains("started service `greeting`")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("started service `listen`")), "{log:#?}");
    terminate(&mut child, lines, &mut log);
    assert!(log.iter().any(|l| l.contains("every service stopped")), "{log:#?}");
}

#[test]
fn the_default_transport_never_falls_back_to_memory() {
    // RabbitMQ refuses (port 1): the binary retries, logging each attempt with the
    // password masked, until SIGTERM stops it cleanly.
    let mut child = spawn(&["run", "--broker", "amqp://guest:secret@127.0.0.1:1/"]);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let mut attempts = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("cannot connect to amqp://guest:***@127.0.0.1:1/") {
            attempts += 1;
        }
        log.push(line);
        if attempts == 2 {
            break;
        }
    }
    assert_eq!(attempts, 2, "{log:#?}");
    terminate(&mut child, lines, &mut log);
    let log = log.join("\n");
    assert!(log.contains("never falling back to memory"), "{log}");
    assert!(log.contains("readiness: not ready"), "{log}");
    assert!(log.contains("waiting for RabbitMQ: stopping"), "{log}");
    assert!(!log.contains("secret"), "{log}");
    assert!(!log.contains("running on the memory transport"), "{log}");
}

/// The guide's "Joining a Python Nameko cluster": `run --broker` serves Python's
/// `ClusterRpcProxy` (`python/greet.py`) and a Python `@event_handler` service
/// (`python/listener.py`) hears the events; the same binary's `request` and `emit`
/// verbs reach both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_calls_the_binary_over_rabbitmq() {
    let Some(python) = PythonNameko::from_env() else { return };
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    for service in ["greeting", "listen", "web", "python_listener"] {
        rabbit.claim_service(service);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let listener = python
        .service(&rabbit, "listener:PythonListener")
        .dir(&dir)
        .ready_when_consuming("evt-greeting-greeted--python_listener.on_greeted")
        .start()
        .await
        .unwrap();
    let url = rabbit.url();
    let exchange = format!("rpc_exchange={}", rabbit.rpc_exchange());
    let mut binary = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_example-greeting"))
            .args([
                "run",
                "--broker",
                &url,
                "--define",
                &exchange,
                "--define",
                "WEB_SERVER_ADDRESS=127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the example binary starts"),
    );
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let log = Arc::clone(&log);
        let stderr = binary.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        })
    };
    for queue in ["rpc-greeting", "evt-greeting-greeted--listen.on_greeted"] {
        rabbit
            .wait_for_consumers(queue, 1, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}; log: {:#?}", log.lock().unwrap()));
    }

    let out = python
        .script(&rabbit, dir.join("greet.py"))
        .arg(&url)
        .run()
        .await
        .unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["Hi, Ada!", "Hi, Grace!", "NoName - a name is needed to greet somebody"]
    );

    let mut heard = String::new();
    for _ in 0..200 {
        heard = listener.output();
        if heard.contains("Python heard that Ada was greeted") && heard.contains("Grace was greeted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(heard.contains("Python heard that Ada was greeted"), "{heard}");
    assert!(heard.contains("Python heard that Grace was greeted"), "{heard}");

    // Every service binary has the client verbs: the same binary calls and emits.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_example-greeting"))
            .args(args)
            .args(["--broker", &url, "--define", &exchange])
            .output()
            .expect("the example binary runs");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    assert_eq!(
        cli(&["request", "greeting.greet", r#"{"name": "Cli"}"#]),
        (Some(0), "\"Hi, Cli!\"\n".to_owned(), String::new())
    );
    assert_eq!(
        cli(&["request", "greeting.greet", r#"[""]"#]),
        (
            Some(1),
            String::new(),
            "NoName: a name is needed to greet somebody\n".to_owned()
        )
    );
    assert_eq!(
        cli(&["emit", "greeting", "greeted", r#"{"name": "Emitted"}"#]),
        (Some(0), String::new(), String::new())
    );
    for _ in 0..200 {
        heard = listener.output();
        if heard.contains("Python heard that Emitted was greeted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(heard.contains("Python heard that Emitted was greeted"), "{heard}");
    for _ in 0..200 {
        if log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Somebody greeted Emitted"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = Command::new("kill")
        .args(["-TERM", &binary.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = binary.0.wait().unwrap();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "exit {status:?}; log: {log:#?}");
    assert!(log.iter().any(|l| l.contains("Somebody greeted Ada")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("Somebody greeted Emitted")), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("running on the amqp transport")),
        "{log:#?}"
    );
    drop(listener);
    rabbit.cleanup().await.unwrap();
}

/// A child process killed if the test fails before it stops it: it must not outlive
/// the test and re-declare what the RabbitMQ fixture deletes.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGTERM to `child`, collects the rest of its log and expects a clean exit.
fn terminate(
    child: &mut std::process::Child,
    lines: impl Iterator<Item = std::io::Result<String>>,
    log: &mut Vec<String>,
) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    log.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log: {log:#?}");
}
