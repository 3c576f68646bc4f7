//! What our RPC client, RPC service and event dispatcher publish, compared with the
//! frames captured from real Nameko 2.14 (`shared/reference/wire-vectors/`): method
//! arguments and properties exactly, headers as decoded values with their AMQP type
//! letters, bodies as JSON with their key order. Uuids and call ids are compared by
//! shape. Our one extra header, `nameko.trace_id`, is allowed (Nameko passes unknown
//! `nameko.*` keys through).
//!
//! `through_rabbitmq` repeats the comparison on what RabbitMQ delivers from the real
//! `AmqpBroker` (`NAMEKO_TEST_AMQP_URI`), decoded by lapin with the AMQP field types.

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

/// A service with the capture's methods, whatever its name.
trait Dispatches: Send + 'static {
    fn dispatcher(&self) -> &EventDispatcher;
}

fn research_methods<S: Dispatches + Service>(e: &mut Entrypoints<S>) {
    e.add(
        "add",
        RpcEntrypoint::<RpcArgs, i64>::new(),
        |_: S, args: RpcArgs| async move { Ok::<_, RemoteError>(args.args.iter().filter_map(Value::as_i64).sum()) },
    )
    .add(
        "fail",
        RpcEntrypoint::<RpcArgs, ()>::new(),
        |_: S, _: RpcArgs| async move {
            Err::<(), _>(RemoteError::new("ValueError", "bad value").with_path("builtins.ValueError"))
        },
    )
    .add(
        "emit",
        RpcEntrypoint::<RpcArgs, ()>::new(),
        |w: S, _: RpcArgs| async move {
            w.dispatcher()
                .dispatch("thing_happened", &json!({"x": 1}))
                .await
                .map_err(|e| RemoteError::new("E", e.to_string()))
        },
    );
}

deps!(
    Research,
    ResearchProviders {
        dispatch: EventDispatcher
    }
);

impl Dispatches for Research {
    fn dispatcher(&self) -> &EventDispatcher {
        &self.dispatch
    }
}

impl Service for Research {
    const NAME: &'static str = "research";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        research_methods(e);
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

/// The same comparisons through the real [`AmqpBroker`](nameko_extensions::amqp::AmqpBroker)
/// and RabbitMQ (`NAMEKO_TEST_AMQP_URI`): what it sends is read back with a raw lapin
/// channel from queues the test binds (`#` on the RPC and events exchanges), so the
/// properties are the ones RabbitMQ delivers, decoded by lapin with their AMQP field
/// types, and compared with the captured header frames decoded by the same parser.
/// The names are the test's own (a `golden_research` service, a unique RPC exchange),
/// normalised back to the capture's `research` and `nameko-rpc`; uuids by shape.
#[cfg(feature = "amqp")]
mod through_rabbitmq {
    use std::{sync::Arc, time::Duration};

    use lapin::{
        BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
        options::{BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
        protocol::basic::parse_properties,
        types::{AMQPValue, FieldTable},
    };
    use nameko_core::{Config, ContextData, Entrypoints, Service, ServiceRunner};
    use nameko_extensions::{
        amqp::{AmqpBroker, AmqpOptions, AmqpUri},
        broker::{Broker, SharedBroker},
        events::EventDispatcher,
        rpc::{RpcArgs, RpcClient},
    };
    use serde_json::{Map, Value, json};

    use super::{Dispatches, key_order, letter_of, research_methods, shape, vectors};
    use crate::support::deps;

    const SERVICE: &str = "golden_research";

    deps!(
        GoldenResearch,
        GoldenResearchProviders {
            dispatch: EventDispatcher
        }
    );

    impl Dispatches for GoldenResearch {
        fn dispatcher(&self) -> &EventDispatcher {
            &self.dispatch
        }
    }

    impl Service for GoldenResearch {
        const NAME: &'static str = SERVICE;

        fn entrypoints(e: &mut Entrypoints<Self>) {
            research_methods(e);
        }
    }

    /// A server-named, exclusive queue bound with `#` to `exchange`: it goes with the
    /// channel's connection.
    async fn tap(channel: &Channel, exchange: &str) -> String {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .expect("a tap queue");
        let name = queue.name().to_string();
        channel
            .queue_bind(
                name.as_str().into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the tap queue");
        name
    }

    /// What a tap queue received: (exchange, routing key, properties, body).
    type Message = (String, String, BasicProperties, Vec<u8>);

    async fn drain(channel: &Channel, queue: &str, count: usize) -> Vec<Message> {
        let mut messages = Vec::new();
        for _ in 0..500 {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            match got {
                Some(message) => {
                    let d = message.delivery;
                    messages.push((d.exchange.to_string(), d.routing_key.to_string(), d.properties, d.data));
                    if messages.len() == count {
                        return messages;
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        panic!("{queue} got {} of {count} messages", messages.len());
    }

    /// The capture's names for ours.
    fn rename(text: &str, rpc_exchange: &str) -> String {
        text.replace(rpc_exchange, "nameko-rpc").replace(SERVICE, "research")
    }

    /// A field value as `[type letter, value]`, tables and arrays recursively.
    fn typed(value: &AMQPValue, rpc_exchange: &str) -> Value {
        let letter = value.get_type().get_id().to_string();
        let inner = match value {
            AMQPValue::Boolean(b) => json!(b),
            AMQPValue::ShortShortInt(n) => json!(n),
            AMQPValue::ShortShortUInt(n) => json!(n),
            AMQPValue::ShortInt(n) => json!(n),
            AMQPValue::ShortUInt(n) => json!(n),
            AMQPValue::LongInt(n) => json!(n),
            AMQPValue::LongUInt(n) => json!(n),
            AMQPValue::LongLongInt(n) => json!(n),
            AMQPValue::Float(f) => json!(f),
            AMQPValue::Double(f) => json!(f),
            AMQPValue::Timestamp(t) => json!(t),
            AMQPValue::ShortString(s) => json!(rename(s.as_str(), rpc_exchange)),
            AMQPValue::LongString(s) => json!(rename(&String::from_utf8_lossy(s.as_bytes()), rpc_exchange)),
            AMQPValue::FieldArray(items) => {
                Value::Array(items.as_slice().iter().map(|v| typed(v, rpc_exchange)).collect())
            }
            AMQPValue::FieldTable(table) => table_json(table, rpc_exchange),
            other => json!(format!("{other:?}")),
        };
        shape(&json!([letter, inner]))
    }

    fn table_json(table: &FieldTable, rpc_exchange: &str) -> Value {
        Value::Object(
            table
                .inner()
                .iter()
                .map(|(key, value)| (key.to_string(), typed(value, rpc_exchange)))
                .collect(),
        )
    }

    /// Every basic property, absent ones as null, names normalised and ids by shape.
    fn properties_json(p: &BasicProperties, rpc_exchange: &str) -> Value {
        let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| rename(s.as_str(), rpc_exchange));
        shape(&json!({
            "content_type": text(p.content_type()),
            "content_encoding": text(p.content_encoding()),
            "headers": p.headers().as_ref().map(|h| table_json(h, rpc_exchange)),
            "delivery_mode": p.delivery_mode(),
            "priority": p.priority(),
            "correlation_id": text(p.correlation_id()),
            "reply_to": text(p.reply_to()),
            "expiration": text(p.expiration()),
            "message_id": text(p.message_id()),
            "timestamp": p.timestamp(),
            "type": text(p.kind()),
            "user_id": text(p.user_id()),
            "app_id": text(p.app_id()),
            "cluster_id": text(p.cluster_id()),
        }))
    }

    /// The exchange, routing key, properties (decoded from the header frame's bytes by
    /// lapin's parser) and body of one captured message.
    fn captured(vectors: &Map<String, Value>, name: &str) -> (String, String, Value, String) {
        let frames = vectors[name].as_array().expect("a list of frames");
        let hex = frames[1]["payload_hex"].as_str().expect("the header frame's bytes");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        // class id (2), weight (2), body size (8), then the property flags and values.
        let (rest, properties) = parse_properties(&bytes[12..]).expect("a basic content header");
        assert!(rest.is_empty(), "{name}: the whole header is properties");
        let args = &frames[0]["args"];
        (
            args["exchange"].as_str().expect("exchange").to_owned(),
            args["routing_key"].as_str().expect("routing key").to_owned(),
            properties_json(&properties, "nameko-rpc"),
            frames[2]["body"].as_str().expect("a text body").to_owned(),
        )
    }

    fn assert_golden(name: &str, ours: &Message, vectors: &Map<String, Value>, rpc_exchange: &str) {
        let (exchange, routing_key, want_properties, want_body) = captured(vectors, name);
        let (our_exchange, our_key, properties, body) = ours;
        assert_eq!(rename(our_exchange, rpc_exchange), exchange, "{name}: exchange");
        assert_eq!(
            shape(&json!(rename(our_key, rpc_exchange))),
            shape(&json!(routing_key)),
            "{name}: routing key"
        );
        let mut ours = properties_json(properties, rpc_exchange);
        // Our one extra header: the trace id, a long string.
        let trace = ours["headers"]
            .as_object_mut()
            .and_then(|headers| headers.remove("nameko.trace_id"));
        if let Some(trace) = trace {
            assert_eq!(trace[0], "S", "{name}: the trace id is a long string");
        }
        assert_eq!(ours, want_properties, "{name}: properties with their field types");
        let body = std::str::from_utf8(body).expect("a UTF-8 body");
        let ours_value: Value = serde_json::from_str(body).expect("a JSON body");
        let want_value: Value = serde_json::from_str(&want_body).expect("a JSON body");
        assert_eq!(shape(&ours_value), shape(&want_value), "{name}: body");
        assert_eq!(key_order(body), key_order(&want_body), "{name}: body key order");
    }

    #[tokio::test]
    async fn rabbitmq_delivers_what_nameko_delivers() {
        let Some(uri) = crate::support::rabbitmq().await else {
            return;
        };
        tokio::time::timeout(Duration::from_secs(60), compare(uri))
            .await
            .expect("the golden exchange finishes within a minute");
    }

    async fn compare(uri: AmqpUri) {
        let vectors = vectors();
        let rpc_exchange = format!("golden-rpc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let events_exchange = format!("{SERVICE}.events");
        let config = Config::from_yaml_str(&format!("rpc_exchange: {rpc_exchange}\n")).expect("config");

        let broker: SharedBroker = Arc::new(
            AmqpBroker::connect(&uri, AmqpOptions::new("nameko-rs golden"))
                .await
                .expect("RabbitMQ"),
        );
        let running = ServiceRunner::new(config.clone())
            .resource::<dyn Broker>(Arc::clone(&broker))
            .stop_timeout(Duration::from_secs(5))
            .with_service::<GoldenResearch>()
            .start()
            .await
            .expect("the service starts");

        // The raw side: a lapin connection of the test's own, with the tap queues.
        let raw = Connection::connect_uri(
            uri.to_url().parse().expect("lapin reads the URI"),
            ConnectionProperties::default(),
        )
        .await
        .expect("a raw lapin connection");
        let channel = raw.create_channel().await.expect("a channel");
        // The dispatcher declares its exchange at the first dispatch: declare it first,
        // as Nameko does (durable topic, not auto-deleted), to bind to it.
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                events_exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("declare the events exchange");
        let rpc_tap = tap(&channel, &rpc_exchange).await;
        let events_tap = tap(&channel, &events_exchange).await;

        let client = RpcClient::start(Arc::clone(&broker), &rpc_exchange, "standalone_rpc_proxy", None)
            .await
            .expect("the client");
        let data = ContextData::new()
            .with("user_id", "u-42")
            .with("language", "en-gb")
            .with(
                "call_id_stack",
                json!([format!("standalone_rpc_proxy.call.{}", uuid::Uuid::new_v4())]),
            );
        let add = client
            .call(SERVICE, "add", RpcArgs::from(json!([1, 2])), &data, None)
            .await;
        let fail = client.call(SERVICE, "fail", RpcArgs::default(), &data, None).await;
        let emit = client.call(SERVICE, "emit", RpcArgs::default(), &data, None).await;
        // Context values of every JSON type, as headers with py-amqp's field types.
        let typed_data = [
            ("custom_key", json!({"nested": [1, 2]})),
            ("count", json!(7)),
            ("big", json!(1_i64 << 40)),
            ("negative", json!(-3)),
            ("flag", json!(true)),
            ("ratio", json!(0.5)),
        ];
        let rich = typed_data
            .iter()
            .fold(data.clone(), |data, (key, value)| data.with(*key, value.clone()))
            .with("nothing", Value::Null);
        let again = client
            .call(SERVICE, "add", RpcArgs::from(json!([2, 3])), &rich, None)
            .await;

        // Request, reply; request, error reply; request, reply; request, reply — and one event.
        let rpc = drain(&channel, &rpc_tap, 8).await;
        let events = drain(&channel, &events_tap, 1).await;

        let reply_queue = client.reply_queue().to_owned();
        client.stop().await;
        running.stop().await;
        raw.close(200, "OK".into()).await.expect("close the raw connection");
        for queue in [reply_queue, format!("rpc-{SERVICE}")] {
            broker.delete_queue(&queue).await.expect("delete a queue");
        }
        for exchange in [&rpc_exchange, &events_exchange] {
            broker.delete_exchange(exchange).await.expect("delete an exchange");
        }
        broker.close().await;

        assert_eq!(add.expect("add"), json!(3));
        assert!(fail.is_err(), "{fail:?}");
        emit.expect("emit");
        assert_eq!(again.expect("add again"), json!(5));
        assert_golden("rpc_request_deliver", &rpc[0], &vectors, &rpc_exchange);
        assert_golden("rpc_reply_deliver", &rpc[1], &vectors, &rpc_exchange);
        assert_golden("rpc_error_reply_deliver", &rpc[3], &vectors, &rpc_exchange);
        // The capture's event came from a worker called with the same context.
        assert_golden("event_publish_from_service", &events[0], &vectors, &rpc_exchange);
        // The request's reply_to is the routing key of its reply, the correlation ids match.
        assert_eq!(
            rpc[0].2.reply_to().as_ref().map(ToString::to_string),
            Some(rpc[1].1.clone())
        );
        assert_eq!(rpc[0].2.correlation_id(), rpc[1].2.correlation_id());
        assert_eq!(rpc[2].2.correlation_id(), rpc[3].2.correlation_id());
        let headers = rpc[6].2.headers().as_ref().expect("headers");
        let headers = table_json(headers, &rpc_exchange);
        for (key, value) in &typed_data {
            assert_eq!(
                headers[format!("nameko.{key}")],
                py_amqp_typed(value),
                "the header for {key} = {value}"
            );
        }
        // Nameko drops context values that are None.
        assert!(headers.get("nameko.nothing").is_none(), "{headers}");
    }

    /// A JSON value as py-amqp writes it: `[type letter, value]`, recursively.
    fn py_amqp_typed(value: &Value) -> Value {
        let inner = match value {
            Value::Array(items) => Value::Array(items.iter().map(py_amqp_typed).collect()),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), py_amqp_typed(v))).collect()),
            other => other.clone(),
        };
        json!([letter_of(value).to_string(), inner])
    }
}
