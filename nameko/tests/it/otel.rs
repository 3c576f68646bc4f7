//! The `otel` feature, with the OpenTelemetry SDK's in-memory exporter: a call that
//! crosses three services — a standalone client calls `otel_a`, which calls `otel_b`
//! over RPC, which dispatches an event `otel_c` handles — makes one trace, each span
//! the child of the one before, with the W3C trace context carried as
//! `nameko.traceparent`; sensitive arguments are redacted in the worker's span, a
//! failed worker's span has an error status, and an HTTP request's `traceparent` is
//! continued.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use nameko::{
    broker::Broker,
    core::{Config, ServiceRunner, deps::Dep},
    events::EventDispatcher,
    http::WebServer,
    prelude::*,
    rpc::ClusterRpc,
};
use opentelemetry::{
    Value as AttributeValue,
    trace::{SpanId, SpanKind, Status, TraceId},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};

/// The process's exporter: the global tracer provider is installed once, and every
/// test finds its own trace in it.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        opentelemetry::global::set_tracer_provider(provider);
        exporter
    })
}

/// The finished spans of `trace`.
fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace)
        .collect()
}

/// The one span named `name` of `kind` among `spans`.
fn find<'a>(spans: &'a [SpanData], name: &str, kind: SpanKind) -> &'a SpanData {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name && s.span_kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind:?} span `{name}` in {spans:#?}");
    found[0]
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a AttributeValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[derive(Debug, Default)]
pub(crate) struct Handled(std::sync::Mutex<Vec<Value>>);

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct OtelA {
    rpc: ClusterRpc,
}

#[nameko::service(name = "otel_a")]
impl OtelA {
    #[rpc(sensitive = ["secret"])]
    async fn start(&self, n: u64, secret: String) -> Result<Value, nameko::rpc::RpcError> {
        let _ = secret;
        self.rpc.call("otel_b", "relay", json!([n])).await
    }

    #[rpc]
    async fn fail(&self) -> Result<(), RemoteError> {
        Err(RemoteError::new("Broken", "on purpose"))
    }

    #[http("GET", "/otel")]
    async fn web(&self) -> Result<String, RemoteError> {
        Ok("traced".to_owned())
    }
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct OtelB {
    dispatch: EventDispatcher,
}

#[nameko::service(name = "otel_b")]
impl OtelB {
    #[rpc]
    async fn relay(&self, n: u64) -> Result<u64, RemoteError> {
        self.dispatch
            .dispatch("relayed", &json!({ "n": n }))
            .await
            .map_err(|e| RemoteError::new("DispatchFailed", e.to_string()))?;
        Ok(n)
    }
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct OtelC {
    handled: Dep<Handled>,
}

#[nameko::service(name = "otel_c")]
impl OtelC {
    #[event_handler("otel_b", "relayed")]
    async fn on_relayed(&self, event: Value) -> Result<(), RemoteError> {
        self.handled.0.lock().unwrap().push(event);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_three_services_each_span_the_child_of_the_one_before() {
    exporter();
    let broker = nameko::memory::MemoryBroker::new();
    let handled = Arc::new(Handled::default());
    let web = WebServer::new();
    let running = ServiceRunner::new(Config::from_yaml_str("WEB_SERVER_ADDRESS: 127.0.0.1:0\n").unwrap())
        .resource::<dyn Broker>(broker.shared())
        .resource(Arc::clone(&handled))
        .resource(Arc::new(web.clone()))
        .with_service::<OtelA>()
        .with_service::<OtelB>()
        .with_service::<OtelC>()
        .start()
        .await
        .unwrap();
    let rpc = ClusterRpc::connect(broker.shared(), &Config::default()).await.unwrap();

    assert_eq!(
        rpc.call("otel_a", "start", json!({"n": 7, "secret": "hunter2"}))
            .await
            .unwrap(),
        7
    );
    for _ in 0..200 {
        if !handled.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*handled.0.lock().unwrap(), vec![json!({"n": 7})]);

    // The standalone call is the root; find its trace.
    let all = exporter().get_finished_spans().unwrap();
    let root = all
        .iter()
        .find(|s| s.name == "otel_a.start" && s.span_kind == SpanKind::Client)
        .expect("the standalone call's span");
    assert_eq!(
        root.parent_span_id,
        SpanId::INVALID,
        "the standalone call starts the trace"
    );
    let trace = root.span_context.trace_id();
    let mut spans = spans_of(trace);
    for _ in 0..100 {
        if spans.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        spans = spans_of(trace);
    }
    let worker_a = find(&spans, "otel_a.start", SpanKind::Server);
    let call_b = find(&spans, "otel_b.relay", SpanKind::Client);
    let worker_b = find(&spans, "otel_b.relay", SpanKind::Server);
    let dispatch = find(&spans, "otel_b.events relayed", SpanKind::Producer);
    let worker_c = find(&spans, "otel_c.on_relayed", SpanKind::Consumer);
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let chain = [root, worker_a, call_b, worker_b, dispatch, worker_c];
    for pair in chain.windows(2) {
        assert_eq!(
            pair[1].parent_span_id,
            pair[0].span_context.span_id(),
            "`{}` ({:?}) is the child of `{}` ({:?})",
            pair[1].name,
            pair[1].span_kind,
            pair[0].name,
            pair[0].span_kind
        );
    }
    assert!(worker_a.parent_span_is_remote && worker_b.parent_span_is_remote && worker_c.parent_span_is_remote);
    // What a worker's span tells: the call, with sensitive arguments redacted.
    assert_eq!(
        attribute(worker_a, "nameko.args").map(ToString::to_string).as_deref(),
        Some(r#"{"n":7,"secret":"********"}"#)
    );
    assert_eq!(
        attribute(worker_a, "nameko.service")
            .map(ToString::to_string)
            .as_deref(),
        Some("otel_a")
    );
    let call_id = attribute(worker_b, "nameko.call_id").map(ToString::to_string).unwrap();
    assert!(call_id.starts_with("otel_b.relay."), "{call_id}");
    assert!(
        chain
            .iter()
            .all(|span| matches!(span.status, Status::Unset | Status::Ok)),
        "nothing failed: {chain:#?}"
    );

    // A failed worker's span, and its caller's, have an error status.
    rpc.call("otel_a", "fail", json!([])).await.unwrap_err();
    let failed = exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "otel_a.fail")
        .collect::<Vec<_>>();
    assert_eq!(failed.len(), 2, "the call and the worker: {failed:#?}");
    for span in &failed {
        assert!(
            matches!(&span.status, Status::Error { description } if description.contains("Broken")),
            "{span:#?}"
        );
    }

    // An HTTP request's `traceparent` is continued by the worker.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let address = web.local_addr().expect("the web server is bound");
    let response = nameko_testing::http::exchange(address, "GET", "/otel", &[("traceparent", parent)], b"")
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let web_spans = spans_of(trace);
    let worker = find(&web_spans, "otel_a.web", SpanKind::Server);
    assert_eq!(worker.parent_span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());

    // A traceparent that is not W3C trace context starts a new trace.
    let response = nameko_testing::http::exchange(
        address,
        "GET",
        "/otel",
        &[("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    rpc.client().stop().await;
    running.stop().await;
}
