//! The operator verbs `discover`, `inspect` and `tail`, and `run --instances`, driven as
//! processes against RabbitMQ: the greeting binary and a Python Nameko service on one
//! side, the same binary's verbs on the other.
//!
//! The tests share the fixed service names `greeting` and `listen`, so they take turns.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use nameko::rpc::ClusterRpc;
use nameko_testing::{PythonNameko, RabbitMq};
use serde_json::json;

/// One test at a time: they run the same service names in one vhost.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BINARY: &str = env!("CARGO_BIN_EXE_example-greeting");

/// A child process killed on drop, its output collected line by line.
struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts the binary with `args`, collecting stdout (or stderr when `stdout` is false).
    fn start(args: &[String], stdout: bool) -> Self {
        let mut command = Command::new(BINARY);
        command.args(args).env("RUST_LOG", "info").env("NO_COLOR", "1");
        if stdout {
            command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        } else {
            command.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        let mut child = command.spawn().expect("the example binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        let reader: Box<dyn std::io::Read + Send> = if stdout {
            Box::new(child.stdout.take().unwrap())
        } else {
            Box::new(child.stderr.take().unwrap())
        };
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until the output has a line containing `text` (panics after `secs`).
    async fn wait_for(&self, text: &str, secs: u64) {
        for _ in 0..secs * 20 {
            if self.output().contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("`{text}` never came; output:\n{}", self.output());
    }

    /// SIGTERM, then the exit code.
    fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the process did not stop on SIGTERM; output:\n{}", self.output());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one verb printed and returned.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary's `verb` with `args` to completion (within 60 s).
async fn verb(args: Vec<String>) -> Ran {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BINARY)
            .args(&args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`{}` did not finish within 60s", args.join(" ")))
    .unwrap();
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// `args` followed by the fixture's broker and RPC exchange, and `extra` defines.
fn with_broker(rabbit: &RabbitMq, args: &[&str], extra: &[String]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend([
        "--broker".to_owned(),
        rabbit.url(),
        "--define".to_owned(),
        format!("rpc_exchange={}", rabbit.rpc_exchange()),
    ]);
    for define in extra {
        all.extend(["--define".to_owned(), define.clone()]);
    }
    all
}

/// The row of `service` in `discover`'s table, split in columns.
fn row<'a>(table: &'a str, service: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|columns| columns.first() == Some(&service))
        .unwrap_or_else(|| panic!("no row for `{service}` in:\n{table}"))
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn discover_and_inspect_rust_and_python_services() {
    let Some(python) = PythonNameko::from_env() else { return };
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    let _turn = TURN.lock().await;
    for service in ["greeting", "listen", "py_echo"] {
        rabbit.claim_service(service);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let py_echo = python
        .service(&rabbit, "echo:PyEcho")
        .dir(&dir)
        .ready_when_consuming("rpc-py_echo")
        .start()
        .await
        .unwrap();
    let cluster = Process::start(
        &with_broker(
            &rabbit,
            &["run", "greeting", "listen", "--instances", "greeting=3"],
            &[],
        ),
        false,
    );
    rabbit
        .wait_for_consumers("rpc-greeting", 3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", cluster.output()));
    rabbit
        .wait_for_consumers("evt-greeting-greeted--listen.on_greeted", 1, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", cluster.output()));
    for n in 1..=3 {
        cluster
            .wait_for(&format!("started service `greeting` (instance {n}/3)"), 10)
            .await;
    }

    // The management API: every service, with its instance count.
    let ran = verb(with_broker(&rabbit, &["discover"], &[])).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(row(&ran.stdout, "greeting")[1..], ["3", "rpc-greeting"], "{ran:?}");
    assert_eq!(
        row(&ran.stdout, "listen")[1..],
        ["1", "evt-greeting-greeted--listen.on_greeted"],
        "one consumer per handler queue and instance: listen runs once; {ran:?}"
    );
    assert_eq!(row(&ran.stdout, "py_echo")[1..], ["1", "rpc-py_echo"], "{ran:?}");

    let ran = verb(with_broker(&rabbit, &["discover", "greeting", "py_echo"], &[])).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(!ran.stdout.contains("listen"), "{ran:?}");

    let ran = verb(with_broker(&rabbit, &["discover", "greeting", "nosuch"], &[])).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert_eq!(row(&ran.stdout, "nosuch")[1], "absent", "{ran:?}");
    assert!(ran.stderr.contains("not running: nosuch"), "{ran:?}");

    // Without the management API: says so, checks the named services' RPC queues.
    let closed = format!("MANAGEMENT_URI=http://guest:hunter2@127.0.0.1:{}/", closed_port());
    let ran = verb(with_broker(
        &rabbit,
        &["discover", "greeting", "py_echo"],
        std::slice::from_ref(&closed),
    ))
    .await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stdout.contains("management API at http://guest:***@127.0.0.1:"),
        "{ran:?}"
    );
    assert!(ran.stdout.contains("is not available (cannot connect"), "{ran:?}");
    assert!(
        !ran.stdout.contains("hunter2") && !ran.stderr.contains("hunter2"),
        "{ran:?}"
    );
    assert_eq!(row(&ran.stdout, "greeting")[1..], ["3", "rpc-greeting"], "{ran:?}");
    assert_eq!(row(&ran.stdout, "py_echo")[1..], ["1", "rpc-py_echo"], "{ran:?}");
    let ran = verb(with_broker(
        &rabbit,
        &["discover", "nosuch"],
        std::slice::from_ref(&closed),
    ))
    .await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    let ran = verb(with_broker(&rabbit, &["discover"], &[closed])).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("only named services can be checked"), "{ran:?}");

    // inspect: the Rust service describes itself; Python is not introspectable.
    let ran = verb(with_broker(&rabbit, &["inspect", "greeting"], &[])).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(ran.stdout.starts_with("greeting (nameko-rs "), "{ran:?}");
    assert!(
        ran.stdout
            .contains("greet(name: String) -> Result<String, GreetingError>\n      rpc\n      | Greets `name`."),
        "{}",
        ran.stdout
    );
    let ran = verb(with_broker(&rabbit, &["inspect", "greeting", "--json"], &[])).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        json["entrypoints"],
        json!([{
            "method": "greet",
            "kind": "rpc",
            "params": [{"name": "name", "type": "String"}],
            "returns": "Result<String, GreetingError>",
            "doc": ["Greets `name`."],
        }])
    );
    let ran = verb(with_broker(&rabbit, &["inspect", "py_echo"], &[])).await;
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert!(
        ran.stdout
            .contains("py_echo: not introspectable (a Python Nameko service?)"),
        "{ran:?}"
    );
    assert!(ran.stdout.contains("instances: 1"), "{ran:?}");
    let ran = verb(with_broker(&rabbit, &["inspect", "nosuch"], &[])).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("no service `nosuch`"), "{ran:?}");

    // The instances' log lines tell them apart.
    let rpc = ClusterRpc::connect(rabbit.broker(), &rabbit.config(json!(null)))
        .await
        .unwrap();
    assert_eq!(
        rpc.call("greeting", "greet", json!(["Ada"])).await.unwrap(),
        json!("Hi, Ada!")
    );
    cluster.wait_for("greeting Ada visits=1", 10).await;
    let line = cluster
        .output()
        .lines()
        .find(|l| l.contains("greeting Ada visits=1"))
        .unwrap()
        .to_owned();
    assert!(
        ["instance=1/3}", "instance=2/3}", "instance=3/3}"]
            .iter()
            .any(|i| line.contains(i)),
        "{line}"
    );
    rpc.client().stop().await;
    rabbit.broker().delete_queue(rpc.client().reply_queue()).await.unwrap();

    assert_eq!(cluster.terminate(), Some(0));
    drop(py_echo);
    rabbit.cleanup().await.unwrap();
}

#[tokio::test]
async fn tail_streams_the_lines_of_opted_in_services_only() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    let _turn = TURN.lock().await;
    for service in ["greeting", "listen"] {
        rabbit.claim_service(service);
    }
    let exchange = rabbit.unique("logs");
    rabbit.claim_exchange(&exchange);
    let log_exchange = format!("LOG_EXCHANGE={exchange}");
    let cluster = Process::start(
        &with_broker(
            &rabbit,
            &["run", "greeting", "listen"],
            &["LOG_STREAM=[greeting]".to_owned(), log_exchange.clone()],
        ),
        false,
    );
    for queue in ["rpc-greeting", "evt-greeting-greeted--listen.on_greeted"] {
        rabbit
            .wait_for_consumers(queue, 1, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", cluster.output()));
    }
    let tail = Process::start(
        &with_broker(&rabbit, &["tail", "greeting", "listen"], &[log_exchange]),
        true,
    );
    tail.wait_for("tailing greeting, listen", 30).await;

    let rpc = ClusterRpc::connect(rabbit.broker(), &rabbit.config(json!(null)))
        .await
        .unwrap();
    let reply = rpc.call("greeting", "greet", json!(["Ada"])).await.unwrap();
    assert_eq!(reply, json!("Hi, Ada!"));
    tail.wait_for("INFO greeting example_greeting: greeting Ada visits=1", 10)
        .await;
    // `listen` logged its line too, but it is not opted in.
    cluster.wait_for("Somebody greeted Ada", 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let streamed = tail.output();
    assert!(!streamed.contains("Somebody greeted"), "{streamed}");
    let host_pid = format!("[{}]", cluster.child.id());
    assert!(streamed.contains(&host_pid), "lines name their process: {streamed}");

    rpc.client().stop().await;
    rabbit.broker().delete_queue(rpc.client().reply_queue()).await.unwrap();
    assert_eq!(tail.terminate(), Some(0));
    assert_eq!(cluster.terminate(), Some(0));
    rabbit.cleanup().await.unwrap();
}

#[test]
fn every_verb_has_help_with_examples() {
    for verb in ["discover", "inspect", "tail"] {
        let output = Command::new(BINARY).args([verb, "--help"]).output().unwrap();
        let help = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "{verb}: {help}");
        assert!(help.contains("Examples:\n"), "{verb}: {help}");
        assert!(help.contains("Exit codes:"), "{verb}: {help}");
    }
    let output = Command::new(BINARY)
        .args(["run", "--instances", "greeting=0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr).unwrap().contains("greeting=0"));
}

/// `GET path` on `port` (HTTP/1.1, one request): the body.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    body.to_owned()
}

/// The value of the metric line starting with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn metrics_are_scraped_from_a_run_process_on_rabbitmq() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    let _turn = TURN.lock().await;
    for service in ["greeting", "listen"] {
        rabbit.claim_service(service);
    }
    let port = closed_port();
    let cluster = Process::start(
        &with_broker(
            &rabbit,
            &["run", "greeting", "listen"],
            &[format!("METRICS_ADDRESS=127.0.0.1:{port}")],
        ),
        false,
    );
    cluster.wait_for("metrics, health and readiness on", 60).await;
    rabbit
        .wait_for_consumers("evt-greeting-greeted--listen.on_greeted", 1, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", cluster.output()));
    let client = ClusterRpc::connect(rabbit.broker(), &rabbit.config(json!(null)))
        .await
        .unwrap();
    rabbit.claim_queue(client.client().reply_queue());
    assert_eq!(
        client.call("greeting", "greet", json!(["Ada"])).await.unwrap(),
        "Hi, Ada!"
    );

    // The event is handled a moment after the reply, and the reply's confirm may reach
    // the service after the reply reached the caller.
    let handled = r#"nameko_worker_requests_total{service="listen",entrypoint="on_greeted",kind="event_handler"}"#;
    let routed = r#"nameko_publishes_total{outcome="routed"}"#;
    let mut text = String::new();
    for _ in 0..100 {
        text = http_get(port, "/metrics").await;
        if metric(&text, handled) == Some(1.0) && metric(&text, routed) >= Some(2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let greet = r#"service="greeting",entrypoint="greet",kind="rpc""#;
    for (prefix, expected) in [
        (format!("nameko_worker_requests_total{{{greet}}}"), 1.0),
        (format!("nameko_worker_errors_total{{{greet}}}"), 0.0),
        (handled.to_owned(), 1.0),
        ("nameko_ready".to_owned(), 1.0),
        (
            r#"nameko_readiness_part_ready{part="RabbitMQ connection"}"#.to_owned(),
            1.0,
        ),
    ] {
        assert_eq!(metric(&text, &prefix), Some(expected), "{prefix} in:\n{text}");
    }
    // The reply and the `greeted` event, each confirmed by RabbitMQ.
    let routed = metric(&text, routed).unwrap_or_default();
    let confirmed = metric(&text, "nameko_publish_confirm_seconds_count").unwrap_or_default();
    assert!(routed >= 2.0 && confirmed >= routed, "{text}");
    let ready: serde_json::Value = serde_json::from_str(&http_get(port, "/ready").await).unwrap();
    assert_eq!(ready, json!({"ready": true}));

    client.client().stop().await;
    assert_eq!(cluster.terminate(), Some(0));
    rabbit.cleanup().await.unwrap();
}
