//! The worker lifecycle of DESIGN §2, each property in a test that fails if it breaks.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use futures_util::future::join_all;
use nameko_core::{
    CallError, Config, ContainerError, ContextData, Provider, ServiceContainer, SpawnError, WorkerContext, WorkerError,
};
use serde_json::json;

use crate::support::{Log, Probe, Recorder};

async fn start(config: &str) -> (ServiceContainer, Arc<Log>) {
    let log = Arc::new(Log::default());
    let container = ServiceContainer::builder::<Probe>()
        .config(Config::from_yaml_str(config).unwrap())
        .resource(Arc::clone(&log))
        .start()
        .await
        .unwrap();
    (container, log)
}

/// Runs `method` and returns the worker's log lines, read after the container is idle.
async fn lines_of_call(container: &ServiceContainer, log: &Log, method: &str) -> Vec<String> {
    let _ = container.call::<(), String>(method, ()).await;
    log.of(&log.call_of(method))
}

#[tokio::test]
async fn hooks_run_in_order_after_success() {
    let (container, log) = start("max_workers: 4").await;
    let reply: String = container.call("ok", "there".to_owned()).await.unwrap();
    assert_eq!(reply, "ok there");
    let call_id = log.call_of("ok");
    assert!(call_id.starts_with("probe.ok."), "{call_id}");
    assert_eq!(
        log.of(&call_id),
        [
            "get:a",
            "get:b",
            "setup:a",
            "setup:b",
            "handler",
            "result:a:success",
            "result:b:success",
            "teardown:a",
            "teardown:b"
        ]
    );
    container.stop().await;
}

#[tokio::test]
async fn result_and_teardown_run_after_an_error() {
    let (container, log) = start("").await;
    let lines = lines_of_call(&container, &log, "fail").await;
    assert_eq!(
        lines,
        [
            "get:a",
            "get:b",
            "setup:a",
            "setup:b",
            "handler",
            "result:a:failure(Nope)",
            "result:b:failure(Nope)",
            "teardown:a",
            "teardown:b"
        ]
    );
    let err = container.call::<(), String>("fail", ()).await.unwrap_err();
    let CallError::Worker(WorkerError::Failed(err)) = err else {
        panic!("{err:?}")
    };
    assert_eq!(err.remote().to_string(), "Nope it failed");
}

#[tokio::test]
async fn a_panic_is_caught_and_hooks_still_run() {
    let (container, log) = start("").await;
    let lines = lines_of_call(&container, &log, "boom").await;
    assert_eq!(
        lines,
        [
            "get:a",
            "get:b",
            "setup:a",
            "setup:b",
            "handler",
            "result:a:panicked",
            "result:b:panicked",
            "teardown:a",
            "teardown:b"
        ]
    );
    let err = container.call::<(), String>("boom", ()).await.unwrap_err();
    let CallError::Worker(err @ WorkerError::Panicked(_)) = err else {
        panic!("{err:?}")
    };
    assert!(err.to_string().contains("kaboom"), "{err}");
    assert_eq!(err.to_remote_error().exc_type(), "WorkerPanicked");
    // The container keeps serving.
    let reply: String = container.call("ok", "after".to_owned()).await.unwrap();
    assert_eq!(reply, "ok after");
    assert!(!container.is_killed());
}

#[tokio::test]
async fn a_dropped_caller_future_does_not_skip_hooks() {
    let (container, log) = start("").await;
    let call = container.call::<(), String>("gated", ());
    // The caller gives up while the handler waits at the gate.
    assert!(tokio::time::timeout(Duration::from_millis(20), call).await.is_err());
    assert_eq!(container.running_workers(), 1);
    log.gate.add_permits(1);
    container.stop().await;
    let lines = log.of(&log.call_of("gated"));
    assert_eq!(
        lines[4..],
        [
            "handler",
            "result:a:success",
            "result:b:success",
            "teardown:a",
            "teardown:b"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_workers_is_never_exceeded() {
    let (container, log) = start("max_workers: 3").await;
    let calls = (0..200).map(|_| container.call::<(), ()>("busy", ()));
    for result in join_all(calls).await {
        result.unwrap();
    }
    // Exactly the limit: the calls did run concurrently, and never more than three.
    assert_eq!(log.peak.load(Ordering::SeqCst), 3);
    container.stop().await;
}

#[tokio::test]
async fn a_failing_provider_fails_only_that_call() {
    let log = Arc::new(Log::default());
    let container = ServiceContainer::builder::<Probe>()
        .resource(Arc::clone(&log))
        .providers(|p| p.b = Provider::new(Recorder::failing()))
        .start()
        .await
        .unwrap();
    let err = container.call::<String, String>("ok", "x".into()).await.unwrap_err();
    let CallError::Worker(WorkerError::Failed(err)) = err else {
        panic!("{err:?}")
    };
    let message = err.to_string();
    assert!(
        message.starts_with("DependencyError service `probe`: dependency `b`"),
        "{message}"
    );
    assert!(
        message.contains("Rec") && message.contains("the pool is exhausted"),
        "{message}"
    );
    // The field provided before the failure still gets its result and teardown.
    let call_id = log.call_of("ok");
    assert_eq!(
        log.of(&call_id),
        ["get:a", "result:a:failure(DependencyError)", "teardown:a"]
    );
}

#[tokio::test]
async fn call_id_stack_keeps_the_newest_parents() {
    let (container, _log) = start("parent_calls_tracked: 3").await;
    let parents = ["p.one.1", "p.two.2", "p.three.3", "p.four.4", "p.five.5"];
    let data = ContextData::new()
        .with("call_id_stack", json!(parents))
        .with("user_id", 7);
    let cx: WorkerContext = container.call_with("stack", (), data).await.unwrap();
    let stack = cx.call_id_stack();
    assert_eq!(stack.len(), 4);
    assert_eq!(stack[..3], ["p.three.3", "p.four.4", "p.five.5"]);
    assert_eq!(stack[3], cx.call_id());
    assert!(cx.call_id().starts_with("probe.stack."));
    assert_eq!(cx.origin_call_id(), Some("p.one.1"));
    assert_eq!(cx.immediate_parent_call_id(), Some("p.five.5"));
    assert_eq!(cx.data().get("user_id"), Some(&json!(7)));
    assert!(cx.data().get("call_id_stack").is_none());
    let outgoing = cx.outgoing_data();
    assert_eq!(outgoing.get("call_id_stack").unwrap().as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_call_without_parents_starts_a_stack_and_a_trace() {
    let (container, _log) = start("").await;
    let cx: WorkerContext = container.call("stack", ()).await.unwrap();
    assert_eq!(cx.call_id_stack(), [cx.call_id().to_owned()]);
    assert_eq!(cx.origin_call_id(), None);
    assert!(nameko_core::is_valid_trace_id(cx.trace_id()));
    let data = ContextData::new().with("trace_id", "keep-me.1");
    let cx: WorkerContext = container.call_with("stack", (), data).await.unwrap();
    assert_eq!(cx.trace_id(), "keep-me.1");
    let data = ContextData::new().with("trace_id", "not valid!");
    let cx: WorkerContext = container.call_with("stack", (), data).await.unwrap();
    assert_ne!(cx.trace_id(), "not valid!");
}

#[tokio::test]
async fn lazy_dependencies_run_hooks_only_when_used() {
    let (container, log) = start("").await;
    container.call::<(), ()>("use_lazy", ()).await.unwrap();
    let lines = log.of(&log.call_of("use_lazy"));
    let lazy: Vec<_> = lines.iter().filter(|l| l.contains(":lazy")).collect();
    assert_eq!(lazy, ["get:lazy", "setup:lazy", "result:lazy:success", "teardown:lazy"]);
    container.call::<String, String>("ok", "x".into()).await.unwrap();
    assert!(!log.of(&log.call_of("ok")).iter().any(|l| l.contains(":lazy")));
}

#[tokio::test]
async fn context_data_dependencies_read_the_call() {
    let (container, _log) = start("").await;
    let who: Option<serde_json::Value> = container
        .call_with("who", (), ContextData::new().with("user_id", "ada"))
        .await
        .unwrap();
    assert_eq!(who, Some(json!("ada")));
    let who: Option<serde_json::Value> = container.call("who", ()).await.unwrap();
    assert_eq!(who, None);
}

#[tokio::test]
async fn once_fires_at_start() {
    let (container, log) = start("").await;
    container.stop().await;
    assert!(
        log.lines()
            .iter()
            .any(|l| l.contains("probe.started.") && l.ends_with(" once")),
        "{:?}",
        log.lines()
    );
    // Providers stop after the workers finished.
    let lines = log.lines();
    assert_eq!(lines[lines.len() - 3..], ["stop:a", "stop:b", "stop:lazy"]);
}

#[tokio::test]
async fn stop_waits_for_workers_then_refuses_work() {
    let (container, log) = start("").await;
    let binding = container.binding::<(), String>("gated").unwrap();
    let handle = binding.spawn((), ContextData::new()).await.unwrap();
    let stopping = tokio::spawn({
        let container = container.clone();
        async move { container.stop().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!stopping.is_finished(), "stop must wait for the running worker");
    assert_eq!(
        binding.spawn((), ContextData::new()).await.unwrap_err(),
        SpawnError::Stopping
    );
    log.gate.add_permits(1);
    assert_eq!(handle.await.unwrap(), "through");
    stopping.await.unwrap();
    assert!(log.contains("stop:a"));
}

#[tokio::test]
async fn kill_cancels_running_workers_without_their_hooks() {
    let (container, log) = start("").await;
    let handle = container
        .binding::<(), String>("gated")
        .unwrap()
        .spawn((), ContextData::new())
        .await
        .unwrap();
    let handle_call_id = handle.call_id().to_owned();
    tokio::time::sleep(Duration::from_millis(10)).await;
    container.kill();
    assert!(matches!(handle.await, Err(WorkerError::Killed)));
    assert!(!log.of(&handle_call_id).iter().any(|l| l.starts_with("teardown")));
    assert!(log.contains("kill:a"));
    assert!(container.is_killed());
    let err = container.call::<String, String>("ok", "x".into()).await.unwrap_err();
    assert!(
        matches!(err, CallError::Worker(WorkerError::NotStarted(SpawnError::Killed))),
        "{err:?}"
    );
}

#[tokio::test]
async fn call_reports_unknown_methods_and_wrong_types() {
    let (container, _log) = start("").await;
    let err = container.call::<(), String>("nope", ()).await.unwrap_err().to_string();
    assert!(
        err.starts_with("service `probe` has no entrypoint `nope`; it has: ok, fail"),
        "{err}"
    );
    let err = container.call::<u8, String>("ok", 1).await.unwrap_err().to_string();
    assert!(err.contains("no entrypoint of `ok` takes `u8`"), "{err}");
}

#[tokio::test]
async fn a_missing_resource_fails_startup_naming_service_field_and_type() {
    let err = ServiceContainer::builder::<Probe>().start().await.unwrap_err();
    assert!(matches!(err, ContainerError::Setup { .. }));
    let message = err.to_string();
    assert!(message.starts_with("service `probe`: field `a` ("), "{message}");
    assert!(
        message.contains("Rec") && message.contains("needs the resource `it::support::Log`"),
        "{message}"
    );
}

#[tokio::test]
async fn only_entrypoints_restricts_and_checks_names() {
    let log = Arc::new(Log::default());
    let container = ServiceContainer::builder::<Probe>()
        .resource(Arc::clone(&log))
        .only_entrypoints(["ok"])
        .start()
        .await
        .unwrap();
    assert_eq!(container.entrypoints().map(|e| e.method()).collect::<Vec<_>>(), ["ok"]);
    container.stop().await;
    assert!(!log.contains(" once"), "the `once` entrypoint was restricted away");
    let err = ServiceContainer::builder::<Probe>()
        .resource(log)
        .only_entrypoints(["okay"])
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has no entrypoint `okay`"), "{err}");
}

/// A writer that keeps what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_line_a_handler_logs_carries_the_worker_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (container, _log) = start("").await;
    let data = ContextData::new().with("trace_id", "trace-42");
    let err = container.call_with::<(), String>("fail", (), data).await.unwrap_err();
    assert!(matches!(err, CallError::Worker(WorkerError::Failed(_))));
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let failed = text
        .lines()
        .find(|l| l.contains("worker failed"))
        .expect("the failure is logged");
    assert!(
        failed.contains("service=probe ") && failed.contains("entrypoint=fail "),
        "{failed}"
    );
    assert!(
        failed.contains("call_id=probe.fail.") && failed.contains("trace_id=trace-42}"),
        "{failed}"
    );
}

#[tokio::test]
async fn finished_workers_are_reported() {
    let (container, _log) = start("").await;
    let mut reports = container.worker_reports();
    let _: String = container.call("ok", "x".to_owned()).await.unwrap();
    let _ = container.call::<(), String>("fail", ()).await;
    let _ = container.call::<(), String>("boom", ()).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let report = reports.recv().await.unwrap();
        if report.method != "started" {
            seen.push(report);
        }
    }
    assert_eq!(seen[0].method, "ok");
    assert!(seen[0].is_success() && seen[0].call_id.starts_with("probe.ok."));
    assert!(
        matches!(&seen[1].outcome, nameko_core::WorkerOutcome::Failure { error, expected: false } if error.exc_type() == "Nope")
    );
    assert!(matches!(&seen[2].outcome, nameko_core::WorkerOutcome::Panicked(m) if m.contains("kaboom")));
}
