//! Publisher and consume on the memory broker: a round trip with headers, context and
//! properties; mandatory returns; ack and requeue rules; prefetch under per-entrypoint
//! limits.

use std::{sync::Arc, time::Duration};

use nameko_core::{
    Config, ContextData, Entrypoints, RemoteError, Service, ServiceContainer, WorkerContext, deps::Dep,
    entrypoints::Dummy,
};
use nameko_extensions::{
    broker::{Binding, Broker, ConsumeOptions, Exchange, FieldValue, Headers, Properties, Publish, Queue, Topology},
    events::{EventDispatcher, EventHandler},
    memory::MemoryBroker,
    messaging::{Consume, DeliveryMode, PublishError, PublishOptions, Publisher, PublisherProvider},
    rpc::{RpcArgs, RpcClient, RpcEntrypoint},
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::support::{Seen, deps, eventually, runner};

// ----- sender: publishes to the `orders` topic exchange from a worker -----

deps!(
    Sender,
    SenderProviders {
        publish: Publisher = nameko_core::Provider::new(
            PublisherProvider::new()
                .exchange(Exchange::topic("orders"))
                .declare(
                    Topology::new()
                        .queue(Queue::durable("orders-tap"))
                        .binding(Binding::new("orders", "orders-tap", "order.*"))
                )
                .options(PublishOptions::new().header("source", "sender").priority(1))
        ),
        cx: WorkerContext,
    }
);

impl Service for Sender {
    const NAME: &'static str = "sender";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "send",
            Dummy::<(Value, PublishOptions), String>::new(),
            |w: Sender, (body, options)| async move {
                w.publish.publish(&body, options).await?;
                Ok::<_, PublishError>(w.cx.call_id().to_owned())
            },
        );
    }
}

// ----- sink: consumes `order-audit`, bound to `orders` -----

deps!(Sink, SinkProviders { seen: Dep<Seen>, cx: WorkerContext });

impl Service for Sink {
    const NAME: &'static str = "sink";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "audit",
            Consume::<Value>::new("order-audit")
                .exchange(Exchange::topic("orders"))
                .routing_key("order.*"),
            |w: Sink, body: Value| async move {
                w.seen.push("body", body);
                w.seen.push("data", json!(w.cx.data().get("user_id")));
                w.seen.push("parent", json!(w.cx.immediate_parent_call_id()));
                w.seen.push("source", json!(w.cx.data().get("source")));
                Ok::<_, RemoteError>(())
            },
        );
    }
}

/// The next message on `queue`, acknowledged.
async fn tap(broker: &MemoryBroker, queue: &str) -> (Properties, Value) {
    let mut consumer = broker
        .shared()
        .consume(queue, ConsumeOptions::prefetch(0))
        .await
        .expect("consume the tap");
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("a message on the tap")
        .expect("a delivery");
    let _ = delivery.ack().await;
    let body = serde_json::from_slice(&delivery.body).expect("a JSON body");
    (delivery.properties, body)
}

fn header<'a>(properties: &'a Properties, name: &str) -> Option<&'a FieldValue> {
    properties.headers.as_ref().and_then(|h| h.get(name))
}

#[tokio::test]
async fn a_publish_from_a_worker_reaches_a_consumer_with_its_context_and_properties() {
    let broker = MemoryBroker::new();
    let (runner, seen) = runner(&broker, "");
    let running = runner.with_service::<Sink>().start().await.unwrap();
    let sender = ServiceContainer::builder::<Sender>()
        .resource::<dyn Broker>(broker.shared())
        .start()
        .await
        .unwrap();
    let options = PublishOptions::new()
        .routing_key("order.created")
        .header("tenant", "acme")
        .header("nameko.user_id", "forged")
        .delivery_mode(DeliveryMode::Transient)
        .expiration(Duration::from_secs(60))
        .correlation_id("c-1")
        .reply_to("somewhere");
    let data = ContextData::new().with("user_id", "ada");
    let call_id: String = sender
        .call_with("send", (json!({"id": 7}), options), data)
        .await
        .unwrap();

    eventually("the consumer ran", || seen.count("body") == 1).await;
    let all = seen.all();
    let get = |who: &str| all.iter().find(|(w, _)| w == who).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(get("body"), json!({"id": 7}));
    assert_eq!(
        get("data"),
        json!("ada"),
        "the worker's context wins over a forged header"
    );
    assert_eq!(
        get("parent"),
        json!(call_id),
        "the publishing worker is the consumer's parent"
    );
    assert_eq!(get("source"), Value::Null, "only nameko.* headers become context data");

    // The same message, as the broker delivers it.
    let (properties, body) = tap(&broker, "orders-tap").await;
    assert_eq!(body, json!({"id": 7}));
    assert_eq!(properties.content_type.as_deref(), Some("application/json"));
    assert_eq!(properties.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(properties.delivery_mode, Some(1));
    assert_eq!(properties.priority, Some(1), "the provider's default option");
    assert_eq!(properties.expiration.as_deref(), Some("60000"));
    assert_eq!(properties.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(properties.reply_to.as_deref(), Some("somewhere"));
    assert_eq!(header(&properties, "tenant"), Some(&FieldValue::String("acme".into())));
    assert_eq!(
        header(&properties, "source"),
        Some(&FieldValue::String("sender".into()))
    );
    assert_eq!(
        header(&properties, "nameko.user_id"),
        Some(&FieldValue::String("ada".into()))
    );
    let stack = header(&properties, "nameko.call_id_stack").unwrap().to_json();
    assert_eq!(stack, json!([call_id]));
    assert!(header(&properties, "nameko.trace_id").is_some());

    sender.stop().await;
    running.stop().await;
}

#[tokio::test]
async fn the_provider_declares_its_exchange_and_queues_at_setup() {
    let broker = MemoryBroker::new();
    let sender = ServiceContainer::builder::<Sender>()
        .resource::<dyn Broker>(broker.shared())
        .start()
        .await
        .unwrap();
    let queues = broker.list_queues();
    assert!(queues.iter().any(|q| q.queue.name == "orders-tap"), "{queues:?}");
    let bindings = broker.list_bindings();
    assert!(
        bindings
            .iter()
            .any(|b| (b.exchange.as_str(), b.queue.as_str(), b.routing_key.as_str())
                == ("orders", "orders-tap", "order.*")),
        "{bindings:?}"
    );
    sender.stop().await;
}

#[tokio::test]
async fn a_mandatory_message_no_queue_takes_is_undeliverable() {
    let broker = MemoryBroker::new();
    let publisher = Publisher::standalone(broker.shared()).exchange(Exchange::topic("nowhere"));
    let err = publisher
        .publish(&json!(1), PublishOptions::new().routing_key("lost").mandatory(true))
        .await
        .unwrap_err();
    match &err {
        PublishError::Undeliverable {
            exchange,
            routing_key,
            code,
            ..
        } => assert_eq!(
            (exchange.as_str(), routing_key.as_str(), *code),
            ("nowhere", "lost", 312)
        ),
        other => panic!("expected Undeliverable, got {other:?}"),
    }
    let remote = nameko_core::IntoHandlerError::into_handler_error(err);
    assert_eq!(remote.remote().exc_type(), "UndeliverableMessage");
    // Not mandatory: dropped by the broker, as Nameko's default.
    publisher
        .publish(&json!(1), PublishOptions::new().routing_key("lost"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name() {
    let broker = MemoryBroker::new();
    let shared = broker.shared();
    shared
        .declare(&Topology::new().queue(Queue::durable("direct-jobs")))
        .await
        .unwrap();
    let publisher = Publisher::standalone(shared).with_data(ContextData::new().with("user_id", "u-9"));
    assert_eq!(publisher.exchange_name(), "");
    publisher
        .publish(
            &json!("job"),
            PublishOptions::new().routing_key("direct-jobs").mandatory(true),
        )
        .await
        .unwrap();
    let (properties, body) = tap(&broker, "direct-jobs").await;
    assert_eq!(body, json!("job"));
    assert_eq!(properties.delivery_mode, Some(2), "persistent by default");
    assert_eq!(
        header(&properties, "nameko.user_id"),
        Some(&FieldValue::String("u-9".into()))
    );
}

// ----- ack and requeue rules -----

deps!(Jobs, JobsProviders { seen: Dep<Seen> });

#[derive(Debug, serde::Deserialize)]
struct Job {
    id: u32,
}

impl Service for Jobs {
    const NAME: &'static str = "jobs";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "retry",
            Consume::<Value>::new("jobs-retry").requeue_on_error(true),
            |w: Jobs, body| async move {
                w.seen.push("retry", body);
                if w.seen.count("retry") < 3 {
                    return Err(RemoteError::new("Flaky", "not yet"));
                }
                Ok(())
            },
        )
        .add(
            "lossy",
            Consume::<Value>::new("jobs-lossy"),
            |w: Jobs, body| async move {
                w.seen.push("lossy", body);
                Err::<(), _>(RemoteError::new("Broken", "always"))
            },
        )
        .add(
            "typed",
            Consume::<Job>::new("jobs-typed"),
            |w: Jobs, job: Job| async move {
                w.seen.push("typed", json!(job.id));
                Ok::<_, RemoteError>(())
            },
        );
    }
}

fn counts(broker: &MemoryBroker, queue: &str) -> (usize, usize) {
    let queue = broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == queue)
        .unwrap_or_else(|| panic!("no queue {queue}"));
    (queue.ready, queue.unacked)
}

async fn publish_raw(broker: &MemoryBroker, queue: &str, body: &[u8]) {
    let message = Publish {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        mandatory: true,
        properties: Properties::json(Headers::new()),
        body: bytes::Bytes::copy_from_slice(body),
    };
    broker.shared().publish(message).await.unwrap();
}

#[tokio::test]
async fn requeue_on_error_redelivers_until_the_worker_succeeds() {
    let broker = MemoryBroker::new();
    let (runner, seen) = runner(&broker, "");
    let running = runner.with_service::<Jobs>().start().await.unwrap();
    publish_raw(&broker, "jobs-retry", br#"{"n": 1}"#).await;
    eventually("three attempts", || seen.count("retry") >= 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.count("retry"), 3);
    assert_eq!(counts(&broker, "jobs-retry"), (0, 0));
    running.stop().await;
}

#[tokio::test]
async fn without_requeue_on_error_a_failed_message_is_acknowledged() {
    let broker = MemoryBroker::new();
    let (runner, seen) = runner(&broker, "");
    let running = runner.with_service::<Jobs>().start().await.unwrap();
    publish_raw(&broker, "jobs-lossy", br#"{"n": 1}"#).await;
    eventually("the attempt", || seen.count("lossy") == 1).await;
    eventually("the message acknowledged", || counts(&broker, "jobs-lossy") == (0, 0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.count("lossy"), 1, "not redelivered");
    running.stop().await;
}

#[tokio::test]
async fn an_undecodable_message_is_rejected_once() {
    let broker = MemoryBroker::new();
    let (runner, seen) = runner(&broker, "");
    let running = runner.with_service::<Jobs>().start().await.unwrap();
    for body in [&b"not json"[..], br#"{"nope": 1}"#, br#"{"id": 5}"#] {
        publish_raw(&broker, "jobs-typed", body).await;
    }
    eventually("the good message", || seen.count("typed") == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.all(), [("typed".to_owned(), json!(5))]);
    assert_eq!(
        counts(&broker, "jobs-typed"),
        (0, 0),
        "rejected without requeue: no hot loop"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_message_over_max_message_size_is_rejected_before_decoding() {
    let broker = MemoryBroker::new();
    let (runner, seen) = runner(&broker, "MAX_MESSAGE_SIZE: 64\n");
    let running = runner.with_service::<Jobs>().start().await.unwrap();
    let big = format!(r#"{{"id": 1, "pad": "{}"}}"#, "x".repeat(100));
    publish_raw(&broker, "jobs-typed", big.as_bytes()).await;
    publish_raw(&broker, "jobs-typed", br#"{"id": 2}"#).await;
    eventually("the small message", || seen.count("typed") == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.all(), [("typed".to_owned(), json!(2))], "the large one never ran");
    assert_eq!(counts(&broker, "jobs-typed"), (0, 0), "rejected without requeue");
    running.stop().await;
}

#[tokio::test]
async fn the_queue_is_durable_unless_told_and_bound_as_declared() {
    let broker = MemoryBroker::new();
    let (runner, _seen) = runner(&broker, "");
    let running = runner.with_service::<Sink>().start().await.unwrap();
    let queue = broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == "order-audit")
        .unwrap();
    assert!(queue.queue.durable && !queue.queue.auto_delete && !queue.queue.exclusive);
    assert!(broker.list_bindings().iter().any(
        |b| (b.exchange.as_str(), b.queue.as_str(), b.routing_key.as_str()) == ("orders", "order-audit", "order.*")
    ));
    running.stop().await;
    let transient = Consume::<Value>::new("t").durable(false).topology().unwrap();
    assert!(!transient.queues[0].durable);
    let err = Consume::<Value>::new("t")
        .exchange(Exchange::direct(""))
        .topology()
        .unwrap_err();
    assert!(err.to_string().contains("default exchange"), "{err}");
}

// ----- prefetch under per-entrypoint limits -----

/// Holds every worker until the test opens it.
#[derive(Debug)]
pub(crate) struct Gate(Semaphore);

deps!(Gated, GatedProviders { gate: Dep<Gate> });

impl Gated {
    async fn wait(&self) -> Result<(), RemoteError> {
        let _permit = self.gate.0.acquire().await.expect("the gate stays open");
        Ok(())
    }
}

impl Service for Gated {
    const NAME: &'static str = "gated";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "consume",
            Consume::<Value>::new("gated-consume").max_workers(2),
            |w: Gated, _: Value| async move { w.wait().await },
        )
        .add(
            "event",
            EventHandler::<Value>::new("src", "ping").max_workers(3),
            |w: Gated, _: Value| async move { w.wait().await },
        )
        .add(
            "limited",
            RpcEntrypoint::<(), ()>::new().max_workers(1),
            |w: Gated, ()| async move { w.wait().await },
        )
        .add("free", RpcEntrypoint::<(), String>::new(), |_: Gated, ()| async move {
            Ok::<_, RemoteError>("free".to_owned())
        });
    }
}

/// A consumer's prefetch is the lower of the entrypoint's limit and the container's;
/// the service's RPC queue is consumed without a limit once a method has one of its
/// own, so a flood of requests for that method never hides the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_follows_the_entrypoint_limits() {
    let broker = MemoryBroker::new();
    let gate = Arc::new(Gate(Semaphore::new(0)));
    let (runner, _seen) = runner(&broker, "max_workers: 8");
    let running = runner
        .resource(Arc::clone(&gate))
        .with_service::<Gated>()
        .start()
        .await
        .unwrap();
    for _ in 0..10 {
        publish_raw(&broker, "gated-consume", b"{}").await;
    }
    let events = EventDispatcher::standalone(broker.shared(), "src", &Config::default());
    for _ in 0..10 {
        events.dispatch("ping", &json!({})).await.unwrap();
    }
    eventually("two consume workers hold their messages", || {
        counts(&broker, "gated-consume") == (8, 2)
    })
    .await;
    eventually("three event workers hold theirs", || {
        counts(&broker, "evt-src-ping--gated.event") == (7, 3)
    })
    .await;

    let client = Arc::new(
        RpcClient::start(broker.shared(), "nameko-rpc", "test", Some(Duration::from_secs(20)))
            .await
            .unwrap(),
    );
    let flood: Vec<_> = (0..30)
        .map(|_| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                client
                    .call("gated", "limited", RpcArgs::from(json!([])), &ContextData::new(), None)
                    .await
            })
        })
        .collect();
    eventually("every limited request delivered", || {
        counts(&broker, "rpc-gated") == (0, 30)
    })
    .await;
    let free = client
        .call("gated", "free", RpcArgs::from(json!([])), &ContextData::new(), None)
        .await
        .unwrap();
    assert_eq!(free, json!("free"), "served past the 30 waiting requests");

    gate.0.add_permits(1000);
    for call in flood {
        call.await.unwrap().unwrap();
    }
    eventually("everything acknowledged", || {
        counts(&broker, "gated-consume") == (0, 0) && counts(&broker, "evt-src-ping--gated.event") == (0, 0)
    })
    .await;
    client.stop().await;
    running.stop().await;
}
