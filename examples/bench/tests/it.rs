//! The `bench` service in a real container on the memory broker; on RabbitMQ (at
//! `NAMEKO_TEST_AMQP_URI`), the raw baseline against nameko-rs both ways, and the
//! harness binary end to end.
//!
//! Without `NAMEKO_TEST_AMQP_URI`, or with RabbitMQ unreachable, the RabbitMQ tests
//! print why and pass, except under `CI=true`, where that is a failure. They use the
//! service's fixed queue names, so they take turns (`RABBIT`), use a unique RPC
//! exchange, and delete everything they declare.

use std::{process::Command, sync::Arc, time::Duration};

use example_bench::{
    Bench, EVENT_EXCHANGE, EVENT_QUEUE, PingCounter, PingStats, RPC_QUEUE,
    client::NamekoClient,
    load::{self, Caller, Scenario},
    raw::{self, RawClient, RawServer},
};
use nameko::{
    amqp::{AmqpBroker, AmqpOptions, AmqpUri},
    broker::{Broker, SharedBroker},
    prelude::*,
};
use nameko_testing::ServiceHarness;
use serde_json::{Value, json};

/// The RabbitMQ tests share the service's queue names: one at a time.
static RABBIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn the_service_answers_and_counts_pings() {
    let counter = Arc::new(PingCounter::default());
    let bench = ServiceHarness::builder::<Bench>()
        .resource(Arc::clone(&counter))
        .start()
        .await
        .unwrap();
    assert_eq!(bench.rpc("echo", json!([{"a": 1}])).await.unwrap(), json!({"a": 1}));
    assert_eq!(bench.rpc("echo", json!({"x": "kw"})).await.unwrap(), json!("kw"));
    assert_eq!(bench.rpc("sleep", json!([5])).await.unwrap(), json!(5));
    let stats = bench.rpc("ping_stats", Value::Null).await.unwrap();
    assert_eq!(stats, json!({"count": 0, "last": 0.0}));

    let waiter = bench.waiter("on_ping");
    bench.dispatch("loadgen", "ping", &json!({"n": 1})).await.unwrap();
    assert!(waiter.wait(Duration::from_secs(5)).await.unwrap().is_success());
    let stats: PingStats = serde_json::from_value(bench.rpc("ping_stats", Value::Null).await.unwrap()).unwrap();
    assert_eq!(stats.count, 1);
    assert_eq!(counter.stats().count, stats.count);
    // Through JSON: serde_json parses floats fast, not always to the last bit.
    assert!((counter.stats().last - stats.last).abs() < 1e-3, "{stats:?}");
    bench.stop().await;
}

/// `GET /echo/{v}`: the `#[http]` route on the runner's web server and the bare axum
/// baseline answer the same, on real sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http_echoes_answer_the_same() {
    let web = nameko::http::WebServer::new();
    let running = ServiceRunner::new(Config::from_yaml_str("WEB_SERVER_ADDRESS: 127.0.0.1:0").unwrap())
        .with_service::<Bench>()
        .resource::<dyn Broker>(nameko::memory::MemoryBroker::new().shared())
        .resources(example_bench::resources())
        .resource(Arc::new(web.clone()))
        .start()
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let raw = tokio::spawn(example_bench::raw_http::serve(
        "127.0.0.1:0",
        async move {
            let _ = stopped.await;
        },
        move |addr| {
            let _ = bound_tx.send(addr);
        },
    ));
    let raw_addr = bound_rx.await.unwrap();
    for addr in [web.local_addr().unwrap(), raw_addr] {
        let response = nameko_testing::http::exchange(addr, "GET", "/echo/hello", &[], b"")
            .await
            .unwrap();
        assert_eq!((response.status, response.text().as_str()), (200, "hello"), "{addr}");
    }
    let _ = stop.send(());
    raw.await.unwrap().unwrap();
    running.stop().await;
}

/// `NAMEKO_TEST_AMQP_URI` (password included, for the processes started), or `None`
/// (with the reason printed) when RabbitMQ is not there.
async fn rabbitmq() -> Option<String> {
    nameko_testing::test_amqp_uri().await.map(|uri| uri.to_url())
}

fn unique_exchange() -> String {
    format!("bench-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Every method and an event, then a short load of each kind, through `caller`.
async fn exercise<C: Caller>(caller: &C) {
    assert_eq!(caller.call("echo", json!(["hi"])).await.unwrap(), json!("hi"));
    assert_eq!(caller.call("sleep", json!([3])).await.unwrap(), json!(3));
    let before: PingStats = serde_json::from_value(caller.call("ping_stats", json!([])).await.unwrap()).unwrap();
    caller.ping(json!({"n": 0})).await.unwrap();
    let mut now = before;
    for _ in 0..500 {
        now = serde_json::from_value(caller.call("ping_stats", json!([])).await.unwrap()).unwrap();
        if now.count > before.count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(now.count, before.count + 1, "the ping was not counted");
    assert!(now.last >= before.last, "{now:?}");
    let err = caller.call("nope", json!([])).await.unwrap_err();
    assert!(err.to_string().contains("MethodNotFound"), "{err}");
    for scenario in [
        Scenario::Seq { calls: 20, bytes: 64 },
        Scenario::Conc { calls: 60, inflight: 8 },
        Scenario::Sleep {
            calls: 20,
            inflight: 8,
            ms: 2,
        },
        Scenario::Events {
            events: 40,
            inflight: 4,
        },
    ] {
        let report = load::run(caller, scenario).await.unwrap();
        assert_eq!(report.get("scenario"), Some(scenario.name()), "{report}");
    }
}

#[tokio::test]
async fn the_raw_baseline_and_nameko_rs_interoperate_both_ways() {
    let Some(uri) = rabbitmq().await else { return };
    let _turn = RABBIT.lock().await;
    let exchange = unique_exchange();

    // nameko-rs serves, the raw client calls: the raw requests are what nameko-rs reads.
    let broker: SharedBroker = Arc::new(
        AmqpBroker::connect(&AmqpUri::parse(&uri).unwrap(), AmqpOptions::new("bench test"))
            .await
            .unwrap(),
    );
    let config = Config::loader()
        .define(format!("rpc_exchange={exchange}"))
        .define("WEB_SERVER_ADDRESS=127.0.0.1:0")
        .load()
        .unwrap();
    let running = ServiceRunner::new(config)
        .with_service::<Bench>()
        .resource::<dyn Broker>(Arc::clone(&broker))
        .resources(example_bench::resources())
        .start()
        .await
        .unwrap();
    let raw_client = RawClient::connect(&uri, &exchange).await.unwrap();
    let err = RawClient::connect(&uri, "").await.unwrap_err();
    assert!(err.to_string().contains("broker"), "{err}");
    exercise(&raw_client).await;
    raw_client.close().await.unwrap();
    running.stop().await;
    broker.close().await;

    // The raw server serves, nameko-rs's client calls: the raw replies are what
    // nameko-rs reads.
    let server = RawServer::start(&uri, &exchange, 10).await.unwrap();
    let client = NamekoClient::connect(&uri, &exchange).await.unwrap();
    exercise(&client).await;
    client.close().await.unwrap();
    server.stop().await;

    raw::delete(&uri, &[RPC_QUEUE, EVENT_QUEUE], &[&exchange, EVENT_EXCHANGE])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_harness_compares_both_and_cleans_up() {
    let Some(uri) = rabbitmq().await else { return };
    let _turn = RABBIT.lock().await;
    let exchange = unique_exchange();
    let output = tokio::task::spawn_blocking({
        let (uri, exchange) = (uri.clone(), exchange.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_example-bench"))
                .args(["harness", "--broker", &uri, "--rpc-exchange", &exchange, "--runs", "1"])
                .args(["--seq", "30", "--conc", "100", "--inflight", "16", "--sleep", "30"])
                .args(["--sleep-ms", "2", "--events", "60"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for row in [
        "| start-up until the first answer (ms) |",
        "| sequential echo (30 calls, 100 B): calls/s |",
        "| 16-in-flight echo (100 calls): p99 (µs) |",
        "| 16-in-flight sleep(2 ms) (30 calls): calls/s |",
        "| events (60, 16 dispatches in flight): consumed/s |",
        "| server RSS once started, idle (KiB) |",
        "| server peak RSS (VmHWM, KiB) |",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}:\n{stdout}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // nameko-rs, raw lapin, server-side, client-side; a target's mark may follow.
        for cell in &cells[2..6] {
            let number = cell.split_whitespace().next().unwrap_or_default();
            assert!(number.parse::<f64>().is_ok_and(|v| v > 0.0), "{line}");
        }
    }
    assert!(
        stdout.contains("| metric | nameko-rs | raw lapin | server-side | client-side |"),
        "{stdout}"
    );
    // The nameko-rs client counts the calls whose reply beat the request's confirm.
    assert!(
        stdout.contains("| seq: calls whose reply came before the request's confirm (%) |"),
        "{stdout}"
    );
    for setup in ["nameko-rs", "raw lapin", "server-side", "client-side"] {
        assert!(
            stdout.contains(&format!(" | {setup} | ")),
            "no run of {setup}:\n{stdout}"
        );
    }

    // Nothing is left behind: not the exchange, not the queues, not a reply queue.
    let vhost = AmqpUri::parse(&uri).unwrap().vhost().to_owned();
    let list = |what: &str| {
        let out = Command::new("rabbitmqctl")
            .args(["-q", what, "-p", &vhost, "name", "--no-table-headers"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let queues = list("list_queues");
    for queue in queues.lines() {
        assert!(
            queue != RPC_QUEUE && queue != EVENT_QUEUE && !queue.starts_with("rpc.reply-standalone_rpc_proxy-"),
            "left behind: {queue}"
        );
    }
    let exchanges = list("list_exchanges");
    assert!(
        !exchanges.lines().any(|e| e == exchange || e == EVENT_EXCHANGE),
        "{exchanges}"
    );
}
