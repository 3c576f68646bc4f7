//! Hostile input, as property tests on the memory broker: random and malformed RPC
//! requests and events (bodies, content types, `reply_to`, headers of any type and
//! depth, bodies around `MAX_MESSAGE_SIZE`, deeply nested JSON) at a running service.
//! Each message gets exactly the outcome its class calls for — a reply or an error reply
//! of the expected `exc_type`, or a reject — and leaves nothing in the queue; the service
//! never panics and keeps serving.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use nameko_core::{Entrypoints, RemoteError, RunningServices, Service, WorkerContext, deps::Dep};
use nameko_extensions::{
    broker::{
        Binding as QueueBinding, ConsumeOptions, Consumer, Exchange, FieldValue, Headers, Properties, Publish,
        PublishOutcome, Queue, Topology,
    },
    context::context_from_headers,
    events::EventHandler,
    inbound::MAX_HEADER_DEPTH,
    memory::MemoryBroker,
    rpc::{FromRpcArgs, Param, RpcArgs, RpcEntrypoint, decode_arg},
};
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, TestRunner},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::{Seen, deps, runner};

/// The service's `MAX_MESSAGE_SIZE` in these tests.
const LIMIT: usize = 4096;
const CONFIG: &str = "MAX_MESSAGE_SIZE: 4096\n";

deps!(Target, TargetProviders { cx: WorkerContext, seen: Dep<Seen> });

struct Add {
    a: i64,
    b: i64,
}

impl FromRpcArgs for Add {
    fn from_rpc_args(args: RpcArgs, method: &str) -> Result<Self, RemoteError> {
        let mut values = args
            .bind(method, &[Param::required("a"), Param::required("b")])?
            .into_iter();
        Ok(Add {
            a: decode_arg(method, "a", values.next().unwrap_or_default())?,
            b: decode_arg(method, "b", values.next().unwrap_or_default())?,
        })
    }
}

#[derive(Deserialize)]
struct Order {
    n: i64,
}

impl Service for Target {
    const NAME: &'static str = "hostile";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "echo",
            RpcEntrypoint::<RpcArgs, Value>::new(),
            |w: Target, args: RpcArgs| async move {
                w.seen.push("echo", Value::Null);
                let context: serde_json::Map<String, Value> =
                    w.cx.data().iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
                Ok::<_, RemoteError>(json!({"args": args.args, "kwargs": args.kwargs, "context": context}))
            },
        )
        .add(
            "add",
            RpcEntrypoint::<Add, i64>::new(),
            |w: Target, Add { a, b }| async move {
                w.seen.push("add", Value::Null);
                a.checked_add(b)
                    .ok_or_else(|| RemoteError::new("OverflowError", "the sum does not fit 64 bits"))
            },
        )
        .add(
            "on_order",
            EventHandler::<Order>::new("shop", "order"),
            |w: Target, order: Order| async move {
                w.seen.push("on_order", json!(order.n));
                Ok::<(), RemoteError>(())
            },
        );
    }
}

// ----- what is sent -----

/// A header value of any type, nested up to `depth` levels.
fn field_value(depth: u32) -> impl Strategy<Value = FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<f64>().prop_map(FieldValue::F64),
        any::<f32>().prop_map(FieldValue::F32),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        ".{0,40}".prop_map(FieldValue::String),
        any::<u64>().prop_map(FieldValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(FieldValue::Bytes),
        Just(FieldValue::Void),
    ];
    leaf.prop_recursive(depth, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(FieldValue::Array),
            prop::collection::vec(("[a-z.]{1,8}", inner), 0..4)
                .prop_map(|fields| FieldValue::Table(fields.into_iter().collect())),
        ]
    })
}

/// A list nested `depth` levels deep (deeper than a recursive strategy goes).
fn nested(depth: usize) -> FieldValue {
    let mut value = FieldValue::String("leaf".into());
    for _ in 0..depth {
        value = FieldValue::Array(vec![value]);
    }
    value
}

/// Headers: context keys with values of any type (the wrong types included), broker
/// headers, random names, and now and then a value nested past the limit.
fn headers() -> impl Strategy<Value = Option<Headers>> {
    let name = prop_oneof![
        Just("nameko.call_id_stack".to_owned()),
        Just("nameko.user_id".to_owned()),
        Just("nameko.trace_id".to_owned()),
        Just("nameko.language".to_owned()),
        Just("traceparent".to_owned()),
        Just("x-death".to_owned()),
        Just("nameko.".to_owned()),
        "[a-z.]{1,12}",
    ];
    let value = prop_oneof![
        4 => field_value(4),
        1 => (MAX_HEADER_DEPTH - 2..MAX_HEADER_DEPTH + 200).prop_map(nested),
    ];
    prop::option::of(prop::collection::vec((name, value), 0..5).prop_map(|fields| fields.into_iter().collect()))
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A body: well-formed requests, JSON of the wrong shape, random bytes, invalid UTF-8,
/// deeply nested JSON (under and over serde_json's limit of 128), and bodies around
/// the size limit.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            prop::collection::vec(json_value(), 0..4),
            prop::collection::btree_map("[a-z]{1,3}", json_value(), 0..3)
        )
            .prop_map(|(args, kwargs)| serde_json::to_vec(&json!({"args": args, "kwargs": kwargs})).unwrap()),
        (any::<i64>(), any::<i64>())
            .prop_map(|(a, b)| serde_json::to_vec(&json!({"args": [a, b], "kwargs": {}})).unwrap()),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..200),
        ".{0,10}".prop_map(|s| {
            let mut body = format!(r#"{{"args": ["{s}"#).into_bytes();
            body.extend_from_slice(&[0xff, 0xfe, b'"', b']', b',']);
            body.extend_from_slice(br#""kwargs": {}}"#);
            body
        }),
        (1usize..400).prop_map(|depth| {
            format!(
                r#"{{"args": [{}{}], "kwargs": {{}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes()
        }),
        (1usize..LIMIT + 100).prop_map(|depth| "[".repeat(depth).into_bytes()),
        (LIMIT - 8..LIMIT + 8).prop_map(|size| {
            let mut body = br#"{"args": [], "kwargs": {}}"#.to_vec();
            body.resize(size, b' ');
            body
        }),
        (LIMIT + 1..LIMIT * 64).prop_map(|size| vec![b'{'; size]),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(Some("application/json".to_owned())),
        1 => Just(None),
        1 => Just(Some("text/plain".to_owned())),
        1 => Just(Some("application/x-msgpack".to_owned())),
        1 => "[ -~]{0,30}".prop_map(Some),
    ]
}

#[derive(Debug, Clone)]
struct Request {
    method: String,
    content_type: Option<String>,
    reply_to: bool,
    headers: Option<Headers>,
    body: Vec<u8>,
}

fn request() -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        3 => Just("echo".to_owned()),
        3 => Just("add".to_owned()),
        1 => "[a-z_]{1,10}",
    ];
    (method, content_type(), prop::bool::weighted(0.85), headers(), body()).prop_map(
        |(method, content_type, reply_to, headers, body)| Request {
            method,
            content_type,
            reply_to,
            headers,
            body,
        },
    )
}

// ----- what must come back -----

#[derive(Debug, PartialEq)]
enum Expected {
    /// No reply: rejected without requeue, never run.
    Rejected,
    /// An error reply of this `exc_type`; the method never ran.
    Refused(&'static str),
    /// The method ran and answered (`add` may fail with `IncorrectSignature` or
    /// `OverflowError`, which the check reads).
    Ran,
}

/// The outcome a request's class calls for, worked out from what was sent alone.
fn expected(request: &Request) -> Expected {
    if !request.reply_to {
        return Expected::Rejected;
    }
    if request.body.len() > LIMIT {
        return Expected::Refused("MessageTooLarge");
    }
    if request.content_type.as_deref() != Some("application/json") {
        return Expected::Refused("MalformedRequest");
    }
    let well_formed = serde_json::from_slice::<Value>(&request.body).is_ok_and(|body| {
        body.get("args").is_some_and(Value::is_array) && body.get("kwargs").is_some_and(Value::is_object)
    });
    if !well_formed {
        return Expected::Refused("MalformedRequest");
    }
    if !["echo", "add"].contains(&request.method.as_str()) {
        return Expected::Refused("MethodNotFound");
    }
    Expected::Ran
}

struct Env {
    broker: MemoryBroker,
    running: RunningServices,
    seen: Arc<Seen>,
    replies: Consumer,
    reply_key: String,
}

impl Env {
    async fn start() -> Self {
        let broker = MemoryBroker::new();
        let (runner, seen) = runner(&broker, CONFIG);
        let running = runner.with_service::<Target>().start().await.unwrap();
        let reply_key = uuid::Uuid::new_v4().to_string();
        let queue = format!("hostile-replies-{reply_key}");
        let conn = broker.shared();
        conn.declare(
            &Topology::new()
                .exchange(Exchange::topic("nameko-rpc"))
                .queue(Queue::durable(&queue).auto_delete(true))
                .binding(QueueBinding::new("nameko-rpc", &queue, &reply_key)),
        )
        .await
        .unwrap();
        let replies = conn.consume(&queue, ConsumeOptions::prefetch(10)).await.unwrap();
        Self {
            broker,
            running,
            seen,
            replies,
            reply_key,
        }
    }

    async fn publish(&self, exchange: &str, routing_key: &str, properties: Properties, body: Vec<u8>) {
        let message = Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: true,
            properties,
            body: Bytes::from(body),
        };
        assert_eq!(
            self.broker.shared().publish(message).await.unwrap(),
            PublishOutcome::Routed
        );
    }

    /// Waits until `queue` holds nothing, ready or unacknowledged.
    async fn drained(&self, queue: &str) {
        for _ in 0..1000 {
            let state = self.broker.list_queues().into_iter().find(|q| q.queue.name == queue);
            if state.is_some_and(|q| q.ready == 0 && q.unacked == 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("`{queue}` was not drained: the message was requeued or never settled");
    }

    fn ran(&self) -> usize {
        self.seen.count("echo") + self.seen.count("add")
    }

    async fn check_rpc(&mut self, n: usize, request: Request) {
        let expected = expected(&request);
        let ran_before = self.ran();
        let mut properties = Properties::default();
        properties.content_type.clone_from(&request.content_type);
        properties.headers.clone_from(&request.headers);
        properties.reply_to = request.reply_to.then(|| self.reply_key.clone());
        let correlation_id = format!("c-{n}");
        properties.correlation_id = Some(correlation_id.clone());
        self.publish(
            "nameko-rpc",
            &format!("hostile.{}", request.method),
            properties,
            request.body.clone(),
        )
        .await;
        self.drained("rpc-hostile").await;
        if expected == Expected::Rejected {
            assert_eq!(self.ran(), ran_before, "a request without reply_to ran");
            return;
        }
        let reply = tokio::time::timeout(Duration::from_secs(10), self.replies.next())
            .await
            .expect("a reply within 10 s")
            .expect("the reply consumer is alive");
        let _ = reply.ack().await;
        assert_eq!(
            reply.properties.correlation_id.as_deref(),
            Some(correlation_id.as_str())
        );
        assert_eq!(reply.properties.content_type.as_deref(), Some("application/json"));
        let reply: Value = serde_json::from_slice(&reply.body).expect("a JSON reply");
        let exc_type = reply["error"]["exc_type"].as_str();
        match expected {
            Expected::Rejected => unreachable!(),
            Expected::Refused(want) => {
                assert_eq!(exc_type, Some(want), "{reply}");
                assert_eq!(reply["result"], Value::Null);
                assert_eq!(self.ran(), ran_before, "a refused request ran");
            }
            Expected::Ran if request.method == "echo" => {
                assert_eq!(reply["error"], Value::Null, "{reply}");
                let sent: Value = serde_json::from_slice(&request.body).unwrap();
                assert_eq!(reply["result"]["args"], sent["args"]);
                assert_eq!(reply["result"]["kwargs"], sent["kwargs"]);
                check_context(&reply["result"]["context"], request.headers.as_ref());
                assert_eq!(self.ran(), ran_before + 1);
            }
            Expected::Ran => {
                let sent: Value = serde_json::from_slice(&request.body).unwrap();
                let pair = (sent["args"][0].as_i64(), sent["args"][1].as_i64());
                let binds = sent["args"].as_array().map(Vec::len) == Some(2)
                    && sent["kwargs"].as_object().is_some_and(serde_json::Map::is_empty);
                match pair {
                    (Some(a), Some(b)) if binds => match a.checked_add(b) {
                        Some(sum) => assert_eq!(reply, json!({"result": sum, "error": null})),
                        None => assert_eq!(exc_type, Some("OverflowError"), "{reply}"),
                    },
                    // Other arguments may still bind (keyword arguments `a` and `b`).
                    _ if exc_type.is_none() => assert!(reply["result"].is_i64(), "{reply}"),
                    _ => assert_eq!(exc_type, Some("IncorrectSignature"), "{reply}"),
                }
            }
        }
    }
}

/// The worker's context data holds only what `nameko.*` headers said (minus values
/// nested past the limit), with a valid trace id.
fn check_context(context: &Value, headers: Option<&Headers>) {
    let context = context.as_object().expect("context data is an object");
    let trace_id = context["trace_id"].as_str().expect("a trace id");
    assert!(nameko_core::is_valid_trace_id(trace_id), "{trace_id}");
    let from_headers = context_from_headers(headers);
    for (key, value) in context {
        if key == "trace_id" || key == "call_id_stack" {
            continue;
        }
        assert_eq!(from_headers.get(key), Some(value), "context key `{key}` from nowhere");
    }
    for (name, _) in headers.iter().flat_map(|h| h.iter()) {
        if !name.starts_with("nameko.") {
            assert!(!context.contains_key(name), "`{name}` leaked into context data");
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn proptest_runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn every_rpc_request_gets_its_reply_or_a_clean_error_or_a_reject() {
    let rt = runtime();
    let env = Arc::new(tokio::sync::Mutex::new(rt.block_on(Env::start())));
    let count = std::sync::atomic::AtomicUsize::new(0);
    proptest_runner(400)
        .run(&request(), |request| {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let env = Arc::clone(&env);
            rt.block_on(async move { env.lock().await.check_rpc(n, request).await });
            Ok(())
        })
        .unwrap();
    // Still serving, after all of that.
    rt.block_on(async {
        let mut env = env.lock().await;
        let request = Request {
            method: "add".into(),
            content_type: Some("application/json".into()),
            reply_to: true,
            headers: None,
            body: br#"{"args": [2, 3], "kwargs": {}}"#.to_vec(),
        };
        env.check_rpc(0, request).await;
        env.running.stop().await;
    });
}

#[derive(Debug, Clone)]
struct Event {
    content_type: Option<String>,
    headers: Option<Headers>,
    body: Vec<u8>,
}

fn event() -> impl Strategy<Value = Event> {
    let body = prop_oneof![
        1 => any::<i64>().prop_map(|n| serde_json::to_vec(&json!({"n": n})).unwrap()),
        2 => body(),
    ];
    (content_type(), headers(), body).prop_map(|(content_type, headers, body)| Event {
        content_type,
        headers,
        body,
    })
}

/// Whether the handler runs for this event: a payload that decodes into `Order` (an
/// object with an integer `n`, or — serde reads structs from sequences too — a
/// one-element array of an integer), within the limit, with no content type or JSON's.
fn handled(event: &Event) -> bool {
    event.body.len() <= LIMIT
        && matches!(event.content_type.as_deref(), None | Some("application/json"))
        && serde_json::from_slice::<Value>(&event.body).is_ok_and(|v| match &v {
            Value::Object(o) => o.get("n").is_some_and(Value::is_i64),
            Value::Array(a) => a.len() == 1 && a[0].is_i64(),
            _ => false,
        })
}

#[test]
fn every_event_is_handled_or_rejected_without_requeue() {
    let rt = runtime();
    let env = rt.block_on(Env::start());
    proptest_runner(300)
        .run(&event(), |event| {
            rt.block_on(async {
                let before = env.seen.count("on_order");
                let mut properties = Properties::default();
                properties.content_type.clone_from(&event.content_type);
                properties.headers.clone_from(&event.headers);
                env.publish("shop.events", "order", properties, event.body.clone())
                    .await;
                env.drained("evt-shop-order--hostile.on_order").await;
                let ran = env.seen.count("on_order") - before;
                assert_eq!(ran, usize::from(handled(&event)), "{event:?}");
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        env.publish(
            "shop.events",
            "order",
            Properties::json(Headers::new()),
            br#"{"n": 1}"#.to_vec(),
        )
        .await;
        env.drained("evt-shop-order--hostile.on_order").await;
        assert!(
            env.seen
                .all()
                .last()
                .is_some_and(|(who, n)| who == "on_order" && n == &json!(1))
        );
        env.running.stop().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    /// Context headers of any type and depth decode without a panic: only `nameko.*`
    /// keys, nothing nested past the limit, a `traceparent` only as a valid trace id.
    #[test]
    fn context_headers_of_any_shape_decode(headers in headers()) {
        let data = context_from_headers(headers.as_ref());
        for (key, _) in data.iter() {
            let from_traceparent = key == "trace_id" && headers.as_ref().is_some_and(|h| h.get("traceparent").is_some());
            prop_assert!(
                from_traceparent || headers.as_ref().is_some_and(|h| h.get(&format!("nameko.{key}")).is_some()),
                "`{}` came from nowhere", key
            );
        }
        let trace_id = headers.as_ref().and_then(|h| h.get("nameko.trace_id"));
        let parent = headers.as_ref().and_then(|h| h.get("traceparent"));
        if let (None, Some(FieldValue::String(parent)), Some(id)) = (trace_id, parent, data.trace_id()) {
            prop_assert!(nameko_core::is_valid_trace_id(id) && parent.contains(id));
        }
    }
}
