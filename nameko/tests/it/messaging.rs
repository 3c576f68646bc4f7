//! `Publisher` and `#[consume]` through the macros: a round trip on the memory broker
//! and on RabbitMQ (context, headers, delivery mode, confirms, mandatory returns,
//! requeue on error), and the recording publisher in a worker factory.

use std::{sync::Arc, time::Duration};

use nameko::{
    broker::{Binding, Broker, ConsumeOptions, Exchange, FieldValue, Properties, Queue, SharedBroker, Topology},
    core::{Config, ContextData, ServiceRunner, WorkerContext, deps::Dep},
    messaging::{PublishError, PublishOptions, Publisher},
    prelude::RemoteError,
    rpc::{ClusterRpc, RpcError},
};
use serde_json::{Value, json};

/// What the consumers saw.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    entries: std::sync::Mutex<Vec<Value>>,
}

impl Inbox {
    fn push(&self, entry: Value) {
        self.entries.lock().unwrap().push(entry);
    }

    fn entries(&self) -> Vec<Value> {
        self.entries.lock().unwrap().clone()
    }

    fn count(&self, kind: &str) -> usize {
        self.entries().iter().filter(|e| e["kind"] == kind).count()
    }
}

/// Publishes orders to the `msg_orders` topic exchange.
#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Shop {
    #[dependency(exchange = "msg_orders", exchange_type = "topic")]
    publish: Publisher,
    cx: WorkerContext,
}

#[nameko::service(name = "msg_shop")]
impl Shop {
    /// Publishes `{"id": id}` as `order.<kind>`; returns the worker's call id.
    #[rpc]
    async fn order(&self, id: u64, kind: String) -> Result<String, PublishError> {
        let options = PublishOptions::new()
            .routing_key(format!("order.{kind}"))
            .header("channel", "web");
        self.publish.publish(&json!({ "id": id }), options).await?;
        Ok(self.cx.call_id().to_owned())
    }

    /// A mandatory message nobody is bound for.
    #[rpc]
    async fn lost(&self) -> Result<(), PublishError> {
        self.publish
            .publish(
                &json!("lost"),
                PublishOptions::new().routing_key("nobody.listens").mandatory(true),
            )
            .await
    }
}

/// Consumes the orders: `msg_audit` is bound to `msg_orders` with `order.*`.
#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Audit {
    inbox: Dep<Inbox>,
    cx: WorkerContext,
}

#[nameko::service(name = "msg_audit")]
impl Audit {
    /// Fails the first delivery of an order whose kind is `flaky`: requeued, then done.
    #[consume(
        queue = "msg_audit",
        exchange = "msg_orders",
        exchange_type = "topic",
        routing_key = "order.*",
        requeue_on_error = true,
        max_workers = 2
    )]
    async fn audit(&self, order: Value) -> Result<(), RemoteError> {
        self.inbox.push(json!({
            "kind": "audit",
            "order": order,
            "user_id": self.cx.data().user_id(),
            "channel": self.cx.data().get("channel"),
            "parent": self.cx.immediate_parent_call_id(),
        }));
        let attempts = self.inbox.entries().iter().filter(|e| e["order"] == order).count();
        if order["id"] == 13 && attempts == 1 {
            return Err(RemoteError::new("Flaky", "first delivery of 13"));
        }
        Ok(())
    }
}

/// Declares a tap queue bound like `msg_audit`, to read what the broker delivers.
async fn tap(broker: &SharedBroker, name: &str) {
    broker
        .declare(
            &Topology::new()
                .exchange(Exchange::topic("msg_orders"))
                .queue(Queue::durable(name))
                .binding(Binding::new("msg_orders", name, "order.*")),
        )
        .await
        .unwrap();
}

/// The next message of `queue`, acknowledged: its properties and JSON body.
async fn take(broker: &SharedBroker, queue: &str) -> (Properties, Value) {
    let mut consumer = broker.consume(queue, ConsumeOptions::prefetch(1)).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a message on the tap")
        .expect("a delivery");
    let _ = delivery.ack().await;
    (delivery.properties, serde_json::from_slice(&delivery.body).unwrap())
}

/// The round trip, on whichever broker `broker` is: `rpc` calls `msg_shop.order` with
/// `user_id` in its context.
async fn round_trip(broker: &SharedBroker, rpc: &ClusterRpc, inbox: &Inbox, tap_queue: &str) {
    let rpc = rpc.with_data(ContextData::new().with("user_id", "ada"));
    let call_id = rpc.call("msg_shop", "order", json!([7, "created"])).await.unwrap();
    let call_id = call_id.as_str().unwrap().to_owned();
    assert!(call_id.starts_with("msg_shop.order."), "{call_id}");
    rpc.call("msg_shop", "order", json!([13, "flaky"])).await.unwrap();

    for _ in 0..400 {
        if inbox.count("audit") >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let entries = inbox.entries();
    assert_eq!(inbox.count("audit"), 3, "7 once, 13 twice (requeued once): {entries:?}");
    let seven = entries.iter().find(|e| e["order"]["id"] == 7).unwrap();
    assert_eq!(seven["user_id"], "ada", "the caller's context, through the publish");
    assert_eq!(seven["parent"], json!(call_id), "the publishing worker is the parent");
    assert_eq!(seven["channel"], Value::Null, "only nameko.* headers become context");
    assert_eq!(entries.iter().filter(|e| e["order"]["id"] == 13).count(), 2);

    // As the broker delivers it.
    let (properties, body) = take(broker, tap_queue).await;
    assert_eq!(body, json!({"id": 7}));
    assert_eq!(properties.content_type.as_deref(), Some("application/json"));
    assert_eq!(properties.delivery_mode, Some(2), "persistent by default");
    let headers = properties.headers.unwrap();
    assert_eq!(headers.get("channel"), Some(&FieldValue::String("web".into())));
    assert_eq!(headers.get("nameko.user_id"), Some(&FieldValue::String("ada".into())));

    // Mandatory and unroutable: the worker's error is Nameko's `UndeliverableMessage`.
    match rpc.call("msg_shop", "lost", json!([])).await {
        Err(RpcError::Remote(err)) => assert_eq!(err.exc_type(), "UndeliverableMessage", "{err:?}"),
        other => panic!("expected UndeliverableMessage, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_to_consume_on_the_memory_broker() {
    let broker = nameko::memory::MemoryBroker::new();
    let inbox = Arc::new(Inbox::default());
    let running = ServiceRunner::new(Config::default())
        .resource::<dyn Broker>(broker.shared())
        .resource(Arc::clone(&inbox))
        .with_service::<Shop>()
        .with_service::<Audit>()
        .start()
        .await
        .unwrap();
    tap(&broker.shared(), "msg_tap").await;
    let rpc = ClusterRpc::connect(broker.shared(), &Config::default()).await.unwrap();
    round_trip(&broker.shared(), &rpc, &inbox, "msg_tap").await;
    let audit = broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == "msg_audit")
        .unwrap();
    assert!(audit.queue.durable);
    assert_eq!((audit.ready, audit.unacked), (0, 0));
    rpc.client().stop().await;
    running.stop().await;
}

#[tokio::test]
async fn the_worker_factory_records_what_a_publisher_publishes() {
    let (publish, log) = Publisher::recording();
    let cx = WorkerContext::new(
        "msg_shop",
        nameko::core::EntrypointInfo::new("order", "rpc"),
        ContextData::new(),
        Config::default(),
        nameko::core::Extensions::new(),
    );
    let worker = Shop::worker_factory().publish(publish).cx(cx).build();
    worker.order(7, "created".into()).await.unwrap();
    log.assert_published("order.created", &json!({"id": 7}));
    let message = &log.messages()[0];
    assert_eq!(message.headers.get("channel"), Some(&json!("web")));
    assert!(!message.mandatory);
}

#[tokio::test]
async fn the_harness_publishes_to_a_consume_queue() {
    let inbox = Arc::new(Inbox::default());
    let harness = nameko_testing::ServiceHarness::builder::<Audit>()
        .resource(Arc::clone(&inbox))
        .start()
        .await
        .unwrap();
    let waiter = harness.waiter("audit");
    harness
        .publisher()
        .publish(&json!({"id": 1}), PublishOptions::new().routing_key("msg_audit"))
        .await
        .unwrap();
    assert!(waiter.wait(Duration::from_secs(10)).await.unwrap().is_success());
    assert_eq!(inbox.entries()[0]["order"], json!({"id": 1}));
    harness.stop().await;
}

#[cfg(feature = "amqp")]
mod rabbitmq {
    use std::sync::Arc;

    use nameko::{
        broker::{Broker, Exchange},
        core::ServiceRunner,
        messaging::{PublishError, PublishOptions, Publisher},
        rpc::ClusterRpc,
    };
    use nameko_testing::RabbitMq;
    use serde_json::json;

    use super::{Audit, Inbox, Shop, round_trip, tap};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_publisher_to_consume() {
        let Some(rabbit) = RabbitMq::from_env().await else {
            return;
        };
        rabbit.claim_service("msg_shop");
        rabbit.claim_service("msg_audit");
        rabbit.claim_queue("msg_audit");
        rabbit.claim_queue("msg_rabbit_tap");
        rabbit.claim_exchange("msg_orders");
        let inbox = Arc::new(Inbox::default());
        let running = ServiceRunner::new(rabbit.config(json!(null)))
            .resource::<dyn Broker>(rabbit.broker())
            .resource(Arc::clone(&inbox))
            .with_service::<Shop>()
            .with_service::<Audit>()
            .start()
            .await
            .unwrap();
        tap(&rabbit.broker(), "msg_rabbit_tap").await;
        let rpc = ClusterRpc::connect(rabbit.broker(), &rabbit.config(json!(null)))
            .await
            .unwrap();
        rabbit.claim_queue(rpc.client().reply_queue());
        round_trip(&rabbit.broker(), &rpc, &inbox, "msg_rabbit_tap").await;

        // A publish returns after RabbitMQ's confirm: the message is in the queue then.
        let confirmed = rabbit.unique("msg_confirmed");
        let publisher = Publisher::standalone(rabbit.broker());
        publisher
            .publish(&json!(1), PublishOptions::new().routing_key(&confirmed).mandatory(true))
            .await
            .expect_err("no such queue yet: returned");
        rabbit
            .broker()
            .declare(&nameko::broker::Topology::new().queue(nameko::broker::Queue::durable(&confirmed)))
            .await
            .unwrap();
        for n in 0..3 {
            publisher
                .publish(&json!(n), PublishOptions::new().routing_key(&confirmed).mandatory(true))
                .await
                .unwrap();
        }
        let counts = rabbit.queue_counts(&confirmed).await.unwrap().unwrap();
        assert_eq!(counts.ready, 3, "confirmed, hence enqueued");

        // A standalone publisher's exchange declare that contradicts RabbitMQ's fails.
        let clash = Publisher::standalone(rabbit.broker()).exchange(Exchange::fanout("msg_orders"));
        match clash.publish(&json!(1), PublishOptions::new()).await {
            Err(PublishError::Transport { message, .. }) => {
                assert!(message.contains("PRECONDITION_FAILED"), "{message}");
            }
            other => panic!("expected a declare failure, got {other:?}"),
        }

        rpc.client().stop().await;
        running.stop().await;
        rabbit.cleanup().await.unwrap();
    }
}
