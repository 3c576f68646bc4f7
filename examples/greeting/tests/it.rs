//! The greeting example in real containers on the in-memory broker, and its binary
//! under real signals.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use example_greeting::{CountingVisitors, Greeting, Listen, Visitors};
use nameko::memory::MemoryBroker;
use nameko::rpc::RpcError;
use nameko_testing::ServiceHarness;
use serde_json::json;

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
    let mut child = spawn(&["run", "--transport", "memory"]);
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
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    log.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log: {log:#?}");
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
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    log.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log: {log:#?}");
    let log = log.join("\n");
    assert!(log.contains("never falling back to memory"), "{log}");
    assert!(log.contains("readiness: not ready"), "{log}");
    assert!(log.contains("waiting for RabbitMQ: stopping"), "{log}");
    assert!(!log.contains("secret"), "{log}");
    assert!(!log.contains("running on the memory transport"), "{log}");
}
