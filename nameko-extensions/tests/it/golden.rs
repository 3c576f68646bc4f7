//! What our RPC client, RPC service and event dispatcher publish, compared with the
//! frames captured from real Nameko 2.14 (`shared/reference/wire-vectors/`): method
//! arguments and properties exactly, headers as decoded values with their AMQP type
//! letters, bodies as JSON with their key order. Uuids and call ids are compared by
//! shape. Our one extra header, `nameko.trace_id`, is allowed (Nameko passes unknown
//! `nameko.*` keys through).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use nameko_core::{ContextData, Entrypoints, RemoteError, Service};
use nameko_extensions::{
    broker::{
        Broker, BrokerError, ConnectionEvent, ConsumeOptions, Consumer, FieldValue, Headers, Publish, PublishOutcome,
        SharedBroker, Topology,
    },
    events::EventDispatcher,
    memory::MemoryBroker,
    rpc::{RpcArgs, RpcClient, RpcEntrypoint},
};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::support::deps;

/// A broker that records every publish and hands it on.
#[derive(Debug)]
struct Tap {
    inner: SharedBroker,
    published: Mutex<Vec<Publish>>,
}

#[async_trait]
impl Broker for Tap {
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        self.inner.declare(topology).await
    }
    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.inner.delete_queue(name).await
    }
    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.inner.delete_exchange(name).await
    }
    async fn publish(&self, message: Publish) -> Result<PublishOutcome, BrokerError> {
        self.published.lock().unwrap().push(message.clone());
        self.inner.publish(message).await
    }
    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        self.inner.consume(queue, options).await
    }
    fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.events()
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

// ----- the service of the capture: `research` -----

deps!(
    Research,
    ResearchProviders {
        dispatch: EventDispatcher
    }
);

impl Service for Research {
    const NAME: &'static str = "research";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "add",
            RpcEntrypoint::<RpcArgs, i64>::new(),
            |_: Research, args: RpcArgs| async move {
                Ok::<_, RemoteError>(args.args.iter().filter_map(Value::as_i64).sum())
            },
        )
        .add(
            "fail",
            RpcEntrypoint::<RpcArgs, ()>::new(),
            |_: Research, _: RpcArgs| async move {
                Err::<(), _>(RemoteError::new("ValueError", "bad value").with_path("builtins.ValueError"))
            },
        )
        .add(
            "emit",
            RpcEntrypoint::<RpcArgs, ()>::new(),
            |w: Research, _: RpcArgs| async move {
                w.dispatch
                    .dispatch("thing_happened", &json!({"x": 1}))
                    .await
                    .map_err(|e| RemoteError::new("E", e.to_string()))
            },
        );
    }
}

// ----- the vectors -----

fn vectors() -> Map<String, Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/wire-vectors/sniffed_frames_golden.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("the golden vectors are at {}: {err}", path.display()));
    serde_json::from_str(&text).expect("the vectors are JSON")
}

/// The method arguments, properties and body of one captured publish.
fn frames(vectors: &Map<String, Value>, name: &str) -> (Value, Map<String, Value>, String) {
    let frames = vectors[name].as_array().expect("a list of frames");
    let method = frames[0]["args"].clone();
    let properties = frames[1]["properties"].as_object().expect("properties").clone();
    let body = frames[2]["body"].as_str().expect("a text body").to_owned();
    (method, properties, body)
}

/// The top-level keys of a JSON object, in the order they were written.
fn key_order(text: &str) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Keys>(text).expect("an object").0
}

fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok() && text.len() == 36
}

/// Call ids and uuids become their shape, so values can be compared across runs.
fn shape(value: &Value) -> Value {
    match value {
        Value::String(s) if is_uuid(s) => json!("<uuid>"),
        Value::String(s) => match s.rsplit_once('.') {
            Some((prefix, id)) if is_uuid(id) => json!(format!("{prefix}.<uuid>")),
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        _ => value.clone(),
    }
}

/// The type letter py-amqp writes for a JSON value.
fn letter_of(value: &Value) -> char {
    match value {
        Value::Bool(_) => 't',
        Value::Number(n) if n.is_f64() => 'd',
        Value::Number(n) => match n.as_i64().map(i32::try_from) {
            Some(Ok(_)) => 'I',
            _ => 'l',
        },
        Value::String(_) => 'S',
        Value::Array(_) => 'A',
        Value::Object(_) => 'F',
        Value::Null => 'V',
    }
}

fn assert_matches(
    name: &str,
    ours: &Publish,
    vectors: &Map<String, Value>,
    expected_headers: Option<Map<String, Value>>,
) {
    let (method, properties, body) = frames(vectors, name);
    assert_eq!(ours.exchange, method["exchange"].as_str().unwrap(), "{name}: exchange");
    assert_eq!(
        shape(&json!(ours.routing_key)),
        shape(&method["routing_key"]),
        "{name}: routing key"
    );
    assert_eq!(
        ours.mandatory,
        method["mandatory"].as_bool().unwrap(),
        "{name}: mandatory"
    );

    let p = &ours.properties;
    let present: Vec<&str> = [
        ("content_type", p.content_type.is_some()),
        ("content_encoding", p.content_encoding.is_some()),
        ("application_headers", p.headers.is_some()),
        ("delivery_mode", p.delivery_mode.is_some()),
        ("priority", p.priority.is_some()),
        ("correlation_id", p.correlation_id.is_some()),
        ("reply_to", p.reply_to.is_some()),
        ("expiration", p.expiration.is_some()),
        ("message_id", p.message_id.is_some()),
        ("timestamp", p.timestamp.is_some()),
        ("type", p.kind.is_some()),
        ("user_id", p.user_id.is_some()),
        ("app_id", p.app_id.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, present)| present.then_some(k))
    .collect();
    let mut expected: Vec<&str> = properties.keys().map(String::as_str).collect();
    expected.sort_unstable();
    let mut present_sorted = present.clone();
    present_sorted.sort_unstable();
    assert_eq!(present_sorted, expected, "{name}: which properties are set");
    assert_eq!(p.content_type.as_deref(), properties["content_type"].as_str(), "{name}");
    assert_eq!(
        p.content_encoding.as_deref(),
        properties["content_encoding"].as_str(),
        "{name}"
    );
    assert_eq!(
        p.delivery_mode.map(u64::from),
        properties["delivery_mode"].as_u64(),
        "{name}"
    );
    assert_eq!(p.priority.map(u64::from), properties["priority"].as_u64(), "{name}");
    for key in ["correlation_id", "reply_to"] {
        if let Some(value) = properties.get(key) {
            let ours = if key == "reply_to" {
                &p.reply_to
            } else {
                &p.correlation_id
            };
            assert_eq!(shape(&json!(ours)), shape(value), "{name}: {key}");
        }
    }

    let mut headers: Headers = p.headers.clone().expect("headers are always sent");
    if let Some(FieldValue::String(trace)) = headers.remove("nameko.trace_id") {
        assert!(nameko_core::is_valid_trace_id(&trace));
    }
    let want = expected_headers.unwrap_or_else(|| properties["application_headers"].as_object().unwrap().clone());
    let ours_json: Map<String, Value> = headers.to_json_map();
    assert_eq!(
        shape(&Value::Object(ours_json)),
        shape(&Value::Object(want.clone())),
        "{name}: headers"
    );
    for (key, value) in headers.iter() {
        assert_eq!(
            value.type_letter(),
            letter_of(&want[key]),
            "{name}: type of header {key}"
        );
    }

    let ours_body = std::str::from_utf8(&ours.body).unwrap();
    let ours_value: Value = serde_json::from_str(ours_body).unwrap();
    let want_value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shape(&ours_value), shape(&want_value), "{name}: body");
    assert_eq!(key_order(ours_body), key_order(&body), "{name}: body key order");
}

#[tokio::test]
async fn rpc_and_events_publish_what_nameko_publishes() {
    let vectors = vectors();
    let broker = MemoryBroker::new();
    let tap = Arc::new(Tap {
        inner: broker.shared(),
        published: Mutex::default(),
    });
    let running = nameko_core::ServiceRunner::new(nameko_core::Config::default())
        .resource::<dyn Broker>(tap.clone() as SharedBroker)
        .with_service::<Research>()
        .start()
        .await
        .unwrap();
    let client = RpcClient::start(
        tap.clone(),
        "nameko-rpc",
        "standalone_rpc_proxy",
        Some(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let data = ContextData::new()
        .with("user_id", "u-42")
        .with("language", "en-gb")
        .with(
            "call_id_stack",
            json!([format!("standalone_rpc_proxy.call.{}", uuid::Uuid::new_v4())]),
        );

    assert_eq!(
        client
            .call("research", "add", RpcArgs::from(json!([1, 2])), &data, None)
            .await
            .unwrap(),
        json!(3)
    );
    let _ = client
        .call("research", "fail", RpcArgs::default(), &data, None)
        .await
        .unwrap_err();
    client
        .call("research", "emit", RpcArgs::default(), &data, None)
        .await
        .unwrap();
    running.stop().await;

    let published = tap.published.lock().unwrap().clone();
    let on = |exchange: &str, key_prefix: &str| {
        published
            .iter()
            .filter(|p| p.exchange == exchange && p.routing_key.starts_with(key_prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    let requests = on("nameko-rpc", "research.");
    let replies: Vec<Publish> = published
        .iter()
        .filter(|p| p.exchange == "nameko-rpc" && !p.routing_key.starts_with("research."))
        .cloned()
        .collect();
    let events = on("research.events", "thing_happened");

    // V1: the request, without the expiration our client adds only with a timeout.
    let mut request = requests[0].clone();
    request.properties.expiration = None;
    assert_matches("rpc_request_publish", &request, &vectors, None);
    // V2 and V3: the replies.
    assert_matches("rpc_reply_publish", &replies[0], &vectors, None);
    let (_, _, error_body) = frames(&vectors, "rpc_error_reply_deliver");
    assert_eq!(
        serde_json::from_slice::<Value>(&replies[1].body).unwrap(),
        serde_json::from_str::<Value>(&error_body).unwrap()
    );
    let error_text = std::str::from_utf8(&replies[1].body).unwrap();
    let error_object = &error_text[error_text.find("\"error\":").unwrap() + 8..error_text.len() - 1];
    assert_eq!(key_order(error_object), ["exc_type", "exc_path", "exc_args", "value"]);
    // V5: the event dispatched from a worker carries the worker's context.
    let (_, properties, _) = frames(&vectors, "event_publish_from_service");
    let mut want = properties["application_headers"].as_object().unwrap().clone();
    want.insert(
        "nameko.call_id_stack".into(),
        json!(["standalone_rpc_proxy.call.<uuid>", "research.emit.<uuid>"]),
    );
    assert_matches("event_publish_from_service", &events[0], &vectors, Some(want));
}
