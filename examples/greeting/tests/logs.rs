//! The binary's log output in both formats: every line a worker logs names its
//! service, entrypoint, call id and trace id; `LOGGING` turns on the framework's
//! per-worker DEBUG lines; the stop announces what it waits for.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

/// `LOGGING` in Nameko's dictConfig shape, given with `--define`: nameko's crates at
/// DEBUG, the rest at INFO.
const LOGGING: &str = "LOGGING={version: 1, root: {level: INFO}, loggers: {nameko: {level: DEBUG}}}";

/// One line a worker logged, as the test reads it back from either format.
#[derive(Debug)]
struct WorkerLine {
    message: String,
    service: String,
    entrypoint: String,
    call_id: String,
    trace_id: String,
}

/// Runs the binary on the memory transport in `format`, sends `GET /greet?name=Flynne`
/// with trace id `trace`, stops it with SIGTERM and returns its stderr.
async fn run_and_greet(format: &str, trace: &str) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_example-greeting"))
        .args([
            "run",
            "--transport",
            "memory",
            "--log-format",
            format,
            "--define",
            "WEB_SERVER_ADDRESS=127.0.0.1:0",
            "--define",
            LOGGING,
        ])
        .env_remove("RUST_LOG")
        .env_remove("NAMEKO_LOG_FORMAT")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the example binary starts");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr: std::net::SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no log line in 30 s; log: {log:#?}"))
            .unwrap_or_else(|| panic!("the binary exited; log: {log:#?}"));
        log.push(line.clone());
        if let Some((_, rest)) = line.split_once("web server listening on http://") {
            break rest
                .split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    let response = nameko_testing::http::exchange(addr, "GET", "/greet?name=Flynne", &[("X-Trace-Id", trace)], b"")
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{log:#?}");
    // The listener hears the event after the reply: wait for its line.
    for _ in 0..300 {
        while let Ok(line) = rx.try_recv() {
            log.push(line);
        }
        if log.iter().any(|l| l.contains("Somebody greeted Flynne")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    while let Ok(line) = rx.try_recv() {
        log.push(line);
    }
    assert!(status.success(), "exit {status:?}; log: {log:#?}");
    log
}

/// The worker lines the walk-through must produce, by message: each from its worker.
fn check_worker_lines(lines: &[WorkerLine], trace: &str, log: &[String]) {
    for (message, service, entrypoint) in [
        ("asking greeting to greet Flynne", "web", "greet"),
        ("greeting Flynne", "greeting", "greet"),
        ("Somebody greeted Flynne", "listen", "on_greeted"),
        // The framework's per-worker DEBUG line, once per worker.
        ("worker finished", "web", "greet"),
        ("worker finished", "greeting", "greet"),
        ("worker finished", "listen", "on_greeted"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.message.starts_with(message) && l.service == service)
            .unwrap_or_else(|| panic!("no worker line `{message}` from `{service}`; log: {log:#?}"));
        assert_eq!(line.entrypoint, entrypoint, "{line:?}");
        assert!(
            line.call_id.starts_with(&format!("{service}.{entrypoint}.")),
            "{line:?}"
        );
        assert_eq!(line.trace_id, trace, "{line:?}");
    }
    let finished: Vec<&WorkerLine> = lines
        .iter()
        .filter(|l| l.message.starts_with("worker finished"))
        .collect();
    assert_eq!(finished.len(), 3, "{finished:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_lines_name_the_worker() {
    let log = run_and_greet("human", "logs-human").await;
    let mut lines = Vec::new();
    for line in &log {
        // `... worker{service=web entrypoint=greet call_id=web.greet.… trace_id=…}: target: message`
        let Some((_, rest)) = line.split_once("worker{") else {
            continue;
        };
        let (fields, message) = rest.split_once("}: ").expect("a span's fields end with `}: `");
        let field = |name: &str| {
            fields
                .split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("`{line}` lacks {name}"))
                .to_owned()
        };
        let message = message.split_once(": ").map_or(message, |(_target, m)| m);
        lines.push(WorkerLine {
            message: message.to_owned(),
            service: field("service"),
            entrypoint: field("entrypoint"),
            call_id: field("call_id"),
            trace_id: field("trace_id"),
        });
    }
    check_worker_lines(&lines, "logs-human", &log);
    let finished = log.iter().find(|l| l.contains("worker finished")).unwrap();
    assert!(
        finished.contains("DEBUG") && finished.contains("outcome=\"success\"") && finished.contains("duration_ms="),
        "{finished}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("waiting for 0 worker(s) to finish, deadline in 30.0s")),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_name_the_worker() {
    let log = run_and_greet("json", "logs-json").await;
    let mut lines = Vec::new();
    for line in &log {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("`{line}` is not JSON: {e}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(value.get(key).is_some(), "`{line}` lacks {key}");
        }
        let Some(worker) = value["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|s| s["name"] == "worker"))
        else {
            continue;
        };
        let field = |name: &str| {
            worker[name]
                .as_str()
                .unwrap_or_else(|| panic!("`{line}` lacks {name}"))
                .to_owned()
        };
        lines.push(WorkerLine {
            message: value["fields"]["message"].as_str().unwrap_or_default().to_owned(),
            service: field("service"),
            entrypoint: field("entrypoint"),
            call_id: field("call_id"),
            trace_id: field("trace_id"),
        });
        if value["fields"]["message"] == "worker finished" {
            assert_eq!(value["level"], "DEBUG", "{line}");
            assert_eq!(value["fields"]["outcome"], "success", "{line}");
            assert!(value["fields"]["duration_ms"].is_f64(), "{line}");
        }
    }
    check_worker_lines(&lines, "logs-json", &log);
    assert!(
        log.iter().any(|l| l.contains("waiting for 0 worker(s) to finish")),
        "{log:#?}"
    );
}

#[test]
fn a_bad_logging_section_is_a_located_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_example-greeting"))
        .args([
            "run",
            "--transport",
            "memory",
            "--define",
            "LOGGING={version: 1, root: {level: LOUD}}",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("LOGGING.root.level"), "{stderr}");
    assert!(stderr.contains("got `LOUD`"), "{stderr}");
}

#[test]
fn a_bad_log_format_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_example-greeting"))
        .args(["run", "--transport", "memory"])
        .env("NAMEKO_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("xml"), "{stderr}");
}
