//! `queue_type = "quorum"` through the macros: the queues `#[rpc]`, `#[event_handler]`
//! and `#[consume]` consume are declared quorum queues and carry calls, events and
//! messages on the memory broker and on RabbitMQ; conflicting or impossible choices and
//! a queue that exists with the other type fail the start with an error that says why.

use std::{sync::Arc, time::Duration};

use nameko::{
    broker::{Broker, FieldValue, Queue, QueueType, Topology},
    core::{Config, ServiceRunner, deps::Dep},
    events::EventDispatcher,
    messaging::{PublishOptions, Publisher},
    prelude::RemoteError,
    rpc::ClusterRpc,
};
use nameko_testing::RabbitMq;
use serde_json::{Value, json};

/// What the handlers saw.
#[derive(Debug, Default)]
pub(crate) struct Seen(std::sync::Mutex<Vec<Value>>);

impl Seen {
    fn push(&self, value: Value) {
        self.0.lock().unwrap().push(value);
    }

    async fn wait_for(&self, count: usize) -> Vec<Value> {
        for _ in 0..400 {
            let seen = self.0.lock().unwrap().clone();
            if seen.len() >= count {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {count} deliveries: {:?}", self.0.lock().unwrap());
    }
}

/// Every consumed queue is a quorum queue; `ping` gives no type and shares `rpc-qq_orders`.
#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Orders {
    seen: Dep<Seen>,
    #[dependency(exchange = "qq_orders_x", exchange_type = "topic")]
    publish: Publisher,
    dispatch: EventDispatcher,
}

#[nameko::service(name = "qq_orders")]
impl Orders {
    /// Publishes the order to `qq_audit` and emits `placed`.
    #[rpc(queue_type = "quorum")]
    async fn place(&self, id: u64) -> Result<u64, RemoteError> {
        self.publish
            .publish(&json!({ "id": id }), PublishOptions::new().routing_key("order.placed"))
            .await
            .map_err(|e| RemoteError::new("PublishFailed", e.to_string()))?;
        self.dispatch
            .dispatch("placed", &json!({ "id": id }))
            .await
            .map_err(|e| RemoteError::new("DispatchFailed", e.to_string()))?;
        Ok(id)
    }

    #[rpc]
    async fn ping(&self) -> Result<&'static str, RemoteError> {
        Ok("pong")
    }

    #[event_handler("qq_orders", "placed", queue_type = "quorum")]
    async fn on_placed(&self, order: Value) -> Result<(), RemoteError> {
        self.seen.push(json!({ "event": order }));
        Ok(())
    }

    #[consume(
        queue = "qq_audit",
        exchange = "qq_orders_x",
        exchange_type = "topic",
        routing_key = "order.*",
        queue_type = "quorum"
    )]
    async fn audit(&self, order: Value) -> Result<(), RemoteError> {
        self.seen.push(json!({ "message": order }));
        Ok(())
    }
}

const QUEUES: [&str; 3] = ["rpc-qq_orders", "evt-qq_orders-placed--qq_orders.on_placed", "qq_audit"];

/// Two RPC methods of one service ask for different types of their one queue.
#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Torn {}

#[nameko::service(name = "qq_torn")]
impl Torn {
    #[rpc(queue_type = "quorum")]
    async fn a(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    #[rpc(queue_type = "classic")]
    async fn b(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

/// A broadcast handler without reliable delivery: its queue goes with its consumer.
#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Fleeting {}

#[nameko::service(name = "qq_fleeting")]
impl Fleeting {
    #[event_handler("qq_src", "tick", handler_type = "broadcast", queue_type = "quorum")]
    async fn on_tick(&self, tick: Value) -> Result<(), RemoteError> {
        let _ = tick;
        Ok(())
    }
}

/// One call, one event and one message through the quorum queues, with `rpc`.
async fn round_trip(rpc: &ClusterRpc, seen: &Arc<Seen>) {
    assert_eq!(rpc.call("qq_orders", "place", json!([7])).await.unwrap(), 7);
    assert_eq!(rpc.call("qq_orders", "ping", json!([])).await.unwrap(), "pong");
    let mut got = seen.wait_for(2).await;
    got.sort_by_key(Value::to_string);
    assert_eq!(got, vec![json!({"event": {"id": 7}}), json!({"message": {"id": 7}})]);
}

fn assert_quorum(queues: &[(String, Option<FieldValue>)]) {
    for name in QUEUES {
        let (_, queue_type) = queues
            .iter()
            .find(|(queue, _)| queue == name)
            .unwrap_or_else(|| panic!("{name} declared: {queues:?}"));
        assert_eq!(
            queue_type.as_ref(),
            Some(&FieldValue::String("quorum".to_owned())),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_carry_calls_events_and_messages_on_the_memory_broker() {
    let broker = nameko::memory::MemoryBroker::new();
    let seen = Arc::new(Seen::default());
    let running = ServiceRunner::new(Config::default())
        .resource::<dyn Broker>(broker.shared())
        .resource(Arc::clone(&seen))
        .with_service::<Orders>()
        .start()
        .await
        .unwrap();
    let queues: Vec<_> = broker
        .list_queues()
        .into_iter()
        .map(|q| (q.queue.name.clone(), q.queue.arguments.get("x-queue-type").cloned()))
        .collect();
    assert_quorum(&queues);
    let rpc = ClusterRpc::connect(broker.shared(), &Config::default()).await.unwrap();
    round_trip(&rpc, &seen).await;
    rpc.client().stop().await;
    running.stop().await;
}

/// An error and its causes, as `run` prints a start error.
pub(crate) fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Starts one service on a fresh memory broker; the start's error, as text.
async fn start_error<S: nameko::core::Service>(broker: &nameko::memory::MemoryBroker) -> String {
    let result = ServiceRunner::new(Config::default())
        .resource::<dyn Broker>(broker.shared())
        .resource(Arc::new(Seen::default()))
        .with_service::<S>()
        .start()
        .await;
    match result {
        Ok(running) => {
            running.stop().await;
            panic!("the start succeeded")
        }
        Err(err) => with_causes(&err),
    }
}

#[tokio::test]
async fn rpc_methods_asking_for_different_queue_types_fail_the_start() {
    let err = start_error::<Torn>(&nameko::memory::MemoryBroker::new()).await;
    assert!(
        err.contains("the RPC methods `a` and `b` ask for different queue types (quorum and classic)")
            && err.contains("share one queue, `rpc-qq_torn`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_quorum_queue_for_a_broadcast_handler_without_reliable_delivery_fails_the_start() {
    let err = start_error::<Fleeting>(&nameko::memory::MemoryBroker::new()).await;
    assert!(
        err.contains("the event handler `on_tick` asks for a quorum queue")
            && err.contains("set reliable_delivery = true with a broadcast_identifier"),
        "{err}"
    );
}

#[tokio::test]
async fn a_classic_queue_of_the_same_name_fails_the_start_saying_why() {
    let broker = nameko::memory::MemoryBroker::new();
    // As a Python Nameko instance of the service declares it.
    broker
        .shared()
        .declare(&Topology::new().queue(Queue::durable("rpc-qq_orders")))
        .await
        .unwrap();
    let err = start_error::<Orders>(&broker).await;
    assert!(
        err.contains("inequivalent arg 'x-queue-type' for queue 'rpc-qq_orders'")
            && err.contains("already exists as a classic queue")
            && err.contains("a Python Nameko instance"),
        "{err}"
    );
    assert_eq!(
        broker
            .list_queues()
            .into_iter()
            .find(|q| q.queue.name == "rpc-qq_orders")
            .map(|q| q.queue.kind()),
        Some(QueueType::Classic),
        "the queue is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_carry_calls_events_and_messages_on_rabbitmq() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    rabbit.claim_service("qq_orders");
    rabbit.claim_queue("qq_audit");
    rabbit.claim_queue(QUEUES[1]);
    rabbit.claim_exchange("qq_orders_x");
    rabbit.claim_exchange("qq_orders.events");
    let seen = Arc::new(Seen::default());
    let running = ServiceRunner::new(rabbit.config(Value::Null))
        .resource::<dyn Broker>(rabbit.broker())
        .resource(Arc::clone(&seen))
        .with_service::<Orders>()
        .start()
        .await
        .unwrap();
    // A classic redeclare of each is refused: they are quorum queues.
    for name in QUEUES {
        let result = rabbit
            .broker()
            .declare(&Topology::new().queue(Queue::durable(name)))
            .await;
        let err = result.expect_err(name).to_string();
        assert!(
            err.contains("received none but current is the value 'quorum'"),
            "{name}: {err}"
        );
    }
    let rpc = ClusterRpc::connect(rabbit.broker(), &rabbit.config(Value::Null))
        .await
        .unwrap();
    rabbit.claim_queue(rpc.client().reply_queue());
    round_trip(&rpc, &seen).await;
    rpc.client().stop().await;
    running.stop().await;
    rabbit.cleanup().await.unwrap();
}
