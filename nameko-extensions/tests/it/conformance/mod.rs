//! The broker conformance suite: each behaviour the framework relies on, written once
//! as a function over a [`Harness`], run on every broker by [`conformance_suite!`].
//!
//! Test names read `conformance::<broker>::<behaviour>`. The behaviours only rely on
//! what RabbitMQ does too, use unique entity names (the suite may share a RabbitMQ
//! vhost with parallel tests) and delete what they declare. Durations are short real
//! durations, so a harness that cannot pause time still runs them quickly; the memory
//! harness pauses time.

mod memory;
#[cfg(feature = "amqp")]
mod rabbitmq;

use std::{future::Future, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use nameko_extensions::broker::{
    AckOutcome, Binding, BrokerError, ConnectionEvent, ConsumeOptions, Consumer, ConsumerEnd, Delivery, Exchange,
    ExchangeKind, FieldValue, Headers, Properties, Publish, PublishOutcome, Queue, QueueInfo, QueueType, SharedBroker,
    Topology,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::{sleep, timeout};

/// What the suite needs from a broker under test.
#[async_trait]
trait Harness: Send + Sync {
    /// Opens a new connection.
    async fn connect(&self) -> SharedBroker;
    /// Simulates the loss of a connection opened by [`connect`](Self::connect): it is
    /// cut, and cannot reconnect until [`restore`](Self::restore).
    async fn sever(&self, connection: &SharedBroker);
    /// Lets a severed connection reconnect.
    async fn restore(&self, connection: &SharedBroker);
    /// Every queue of the broker (or vhost), sorted by name, with its declare flags and
    /// arguments as declared.
    async fn list_queues(&self) -> Vec<QueueInfo>;
    /// Every binding of the broker (or vhost), the default exchange's aside, sorted by
    /// exchange, queue and routing key.
    async fn list_bindings(&self) -> Vec<Binding>;
    /// A name no other test uses.
    fn unique(&self, prefix: &str) -> String;
}

/// Generates one test per behaviour for a harness: `$make` is an expression giving an
/// `Option` of the harness (`None` skips, for a broker that is not reachable), and the
/// attributes are the test attributes, e.g. `#[tokio::test(start_paused = true)]`.
macro_rules! conformance_suite {
    ($(#[$attr:meta])* harness = $make:expr;) => {
        conformance_suite!(@tests [$(#[$attr])*] $make;
            topic_routing,
            direct_and_fanout_routing,
            large_bodies,
            publish_to_missing_exchange,
            mandatory_returns,
            concurrent_returns_reach_their_own_publish,
            precondition_failed,
            quorum_queues,
            competing_consumers,
            per_consumer_prefetch,
            ack_and_requeue_redelivered,
            consumer_cancel,
            unacked_returned_on_consumer_close,
            exclusive_consumer,
            exclusive_queue,
            auto_delete_queue,
            queue_expires,
            queue_deleted_cancels_consumers,
            single_active_consumer,
            message_ttl_dead_letters,
            nack_without_requeue_dead_letters,
            connection_loss_and_recovery,
            list_queues_and_bindings,
        );
    };
    (@tests [$($attrs:tt)*] $make:expr; $name:ident, $($rest:ident,)*) => {
        $($attrs)*
        async fn $name() {
            let Some(harness) = $make else {
                return;
            };
            crate::conformance::$name(&harness).await;
        }
        conformance_suite!(@tests [$($attrs)*] $make; $($rest,)*);
    };
    (@tests [$($attrs:tt)*] $make:expr;) => {};
}
use conformance_suite;

// ---- helpers ----

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn message(exchange: &str, routing_key: &str, body: &str) -> Publish {
    Publish {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        mandatory: false,
        properties: Properties::default(),
        body: Bytes::from(body.to_owned()),
    }
}

async fn publish(broker: &SharedBroker, exchange: &str, routing_key: &str, body: &str) {
    let outcome = broker.publish(message(exchange, routing_key, body)).await;
    assert_eq!(
        outcome,
        Ok(PublishOutcome::Routed),
        "publishing {body:?} to {exchange:?}/{routing_key:?}"
    );
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match timeout(WAIT, consumer.next()).await {
        Ok(Ok(delivery)) => delivery,
        Ok(Err(end)) => panic!("consumer {} ended ({end:?}) instead of delivering", consumer.tag()),
        Err(_) => panic!("consumer {} got nothing within {WAIT:?}", consumer.tag()),
    }
}

async fn end(consumer: &mut Consumer) -> ConsumerEnd {
    match timeout(WAIT, consumer.next()).await {
        Ok(Ok(delivery)) => panic!("expected the consumer to end, got {delivery:?}"),
        Ok(Err(end)) => end,
        Err(_) => panic!("consumer {} did not end within {WAIT:?}", consumer.tag()),
    }
}

async fn nothing(consumer: &mut Consumer) {
    if let Ok(result) = timeout(QUIET, consumer.next()).await {
        panic!("expected nothing on consumer {}, got {result:?}", consumer.tag());
    }
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.body).into_owned()
}

/// The next `n` bodies, each acked.
async fn take(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..n {
        let delivery = next(consumer).await;
        assert_eq!(delivery.ack().await, Ok(AckOutcome::Done));
        bodies.push(body(&delivery));
    }
    bodies
}

/// Everything the consumer gets until it is quiet, each acked, sorted.
async fn drain(consumer: &mut Consumer) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Ok(result) = timeout(QUIET, consumer.next()).await {
        let delivery = result.expect("the consumer to stay open");
        assert_eq!(delivery.ack().await, Ok(AckOutcome::Done));
        bodies.push(body(&delivery));
    }
    bodies.sort();
    bodies
}

/// Whether `queue` exists, asked with a mandatory publish to it: quick (listing queues
/// with `rabbitmqctl` can take over a second on a loaded machine), and unlike a
/// declare or a consume it does not count as a use that resets `x-expires`.
async fn queue_exists(broker: &SharedBroker, queue: &str) -> bool {
    let mut probe = message("", queue, "probe");
    probe.mandatory = true;
    match broker.publish(probe).await {
        Ok(PublishOutcome::Routed) => true,
        Ok(PublishOutcome::Returned { .. }) => false,
        other => panic!("probing queue {queue:?}: {other:?}"),
    }
}

async fn queue_info(h: &dyn Harness, name: &str) -> Option<QueueInfo> {
    h.list_queues().await.into_iter().find(|q| q.queue.name == name)
}

/// Waits (up to 10 s) until the broker's queues satisfy `check`.
async fn eventually(h: &dyn Harness, what: &str, check: impl Fn(&[QueueInfo]) -> bool) {
    for _ in 0..200 {
        if check(&h.list_queues().await) {
            return;
        }
        sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}; queues: {:?}", h.list_queues().await);
}

fn has_queue(name: &str) -> impl Fn(&[QueueInfo]) -> bool + '_ {
    move |queues| queues.iter().any(|q| q.queue.name == name)
}

fn no_queue(name: &str) -> impl Fn(&[QueueInfo]) -> bool + '_ {
    move |queues| queues.iter().all(|q| q.queue.name != name)
}

fn counts(name: &str, ready: usize, unacked: usize) -> impl Fn(&[QueueInfo]) -> bool + '_ {
    move |queues| {
        queues
            .iter()
            .any(|q| q.queue.name == name && q.ready == ready && q.unacked == unacked)
    }
}

async fn cleanup(broker: &SharedBroker, queues: &[&str], exchanges: &[&str]) {
    for queue in queues {
        let _ = broker.delete_queue(queue).await;
    }
    for exchange in exchanges {
        let _ = broker.delete_exchange(exchange).await;
    }
}

fn exchange(name: &str, kind: ExchangeKind) -> Exchange {
    Exchange {
        name: name.to_owned(),
        kind,
        durable: false,
        auto_delete: false,
    }
}

fn transient(name: &str) -> Queue {
    let mut queue = Queue::durable(name);
    queue.durable = false;
    queue
}

async fn declare(broker: &SharedBroker, topology: Topology) {
    broker.declare(&topology).await.expect("the declare to succeed");
}

fn headers_json(delivery: &Delivery) -> Value {
    Value::Object(
        delivery
            .properties
            .headers
            .as_ref()
            .map(Headers::to_json_map)
            .unwrap_or_default(),
    )
}

async fn with_timeout<F: Future<Output = T>, T>(what: &str, future: F) -> T {
    timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {WAIT:?}"))
}

// ---- behaviours ----

/// Topic exchanges: `*` is one word, `#` zero or more.
async fn topic_routing(h: &dyn Harness) {
    let b = h.connect().await;
    let x = h.unique("topic");
    let (one, many, tail, exact) = (h.unique("one"), h.unique("many"), h.unique("tail"), h.unique("exact"));
    declare(
        &b,
        Topology::new()
            .exchange(exchange(&x, ExchangeKind::Topic))
            .queue(transient(&one))
            .queue(transient(&many))
            .queue(transient(&tail))
            .queue(transient(&exact))
            .binding(Binding::new(&x, &one, "svc.*"))
            .binding(Binding::new(&x, &many, "svc.#"))
            .binding(Binding::new(&x, &tail, "#.done"))
            .binding(Binding::new(&x, &exact, "svc.add")),
    )
    .await;
    for key in ["svc.add", "svc.add.extra", "svc", "other.done", "done", "svcx.add"] {
        let mut publish = message(&x, key, key);
        publish.mandatory = true;
        let outcome = b.publish(publish).await.expect("the publish");
        let routable = key != "svcx.add";
        assert_eq!(outcome == PublishOutcome::Routed, routable, "{key}: {outcome:?}");
    }
    let mut expected = [
        (&one, vec!["svc.add"]),
        (&many, vec!["svc", "svc.add", "svc.add.extra"]),
        (&tail, vec!["done", "other.done"]),
        (&exact, vec!["svc.add"]),
    ];
    for (queue, bodies) in &mut expected {
        let mut consumer = b.consume(queue, ConsumeOptions::prefetch(0)).await.expect("consume");
        bodies.sort_unstable();
        assert_eq!(drain(&mut consumer).await, *bodies, "queue bound as {queue}");
    }
    cleanup(&b, &[&one, &many, &tail, &exact], &[&x]).await;
}

/// Bodies larger than a frame (32 KiB by default on RabbitMQ, see
/// `AmqpOptions::frame_max`) cross in several, whole and in order, beside small ones.
async fn large_bodies(h: &dyn Harness) {
    let b = h.connect().await;
    let q = h.unique("large");
    declare(&b, Topology::new().queue(transient(&q))).await;
    let bodies: Vec<String> = [32 * 1024 - 8, 32 * 1024, 100_000, 1, 1_000_000]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let letter = char::from(b'a' + u8::try_from(i).unwrap_or(0));
            std::iter::repeat_n(letter, len).collect()
        })
        .collect();
    for body in &bodies {
        publish(&b, "", &q, body).await;
    }
    let mut consumer = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    for body in &bodies {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.body.len(), body.len());
        assert!(
            delivery.body == body.as_bytes(),
            "a body of {} bytes came back changed",
            body.len()
        );
        assert_eq!(delivery.ack().await, Ok(AckOutcome::Done));
    }
    cleanup(&b, &[&q], &[]).await;
}

/// Direct exchanges match keys exactly, fanout ignores them, and the default exchange
/// routes by queue name.
async fn direct_and_fanout_routing(h: &dyn Harness) {
    let b = h.connect().await;
    let (direct, fanout) = (h.unique("direct"), h.unique("fanout"));
    let (q1, q2) = (h.unique("q1"), h.unique("q2"));
    declare(
        &b,
        Topology::new()
            .exchange(exchange(&direct, ExchangeKind::Direct))
            .exchange(exchange(&fanout, ExchangeKind::Fanout))
            .queue(transient(&q1))
            .queue(transient(&q2))
            .binding(Binding::new(&direct, &q1, "a.*"))
            .binding(Binding::new(&direct, &q2, "b"))
            .binding(Binding::new(&fanout, &q1, "ignored"))
            .binding(Binding::new(&fanout, &q2, "")),
    )
    .await;
    publish(&b, &direct, "a.*", "d-a-star").await;
    publish(&b, &direct, "a.x", "d-a-x").await; // no wildcards on direct: dropped
    publish(&b, &direct, "b", "d-b").await;
    publish(&b, &fanout, "whatever", "f").await;
    publish(&b, "", &q1, "default").await;
    let mut c1 = b.consume(&q1, ConsumeOptions::prefetch(0)).await.expect("consume");
    let mut c2 = b.consume(&q2, ConsumeOptions::prefetch(0)).await.expect("consume");
    assert_eq!(drain(&mut c1).await, ["d-a-star", "default", "f"]);
    assert_eq!(drain(&mut c2).await, ["d-b", "f"]);
    cleanup(&b, &[&q1, &q2], &[&direct, &fanout]).await;
}

/// Publishing to a missing exchange fails with NOT_FOUND; the connection stays usable.
async fn publish_to_missing_exchange(h: &dyn Harness) {
    let b = h.connect().await;
    let missing = h.unique("missing");
    let result = b.publish(message(&missing, "key", "lost")).await;
    assert!(matches!(result, Err(BrokerError::NotFound(_))), "{result:?}");
    let q = h.unique("after");
    declare(&b, Topology::new().queue(transient(&q))).await;
    publish(&b, "", &q, "still works").await;
    let mut consumer = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    assert_eq!(body(&next(&mut consumer).await), "still works");
    cleanup(&b, &[&q], &[]).await;
}

/// A mandatory message with no queue to go to comes back as NO_ROUTE; a non-mandatory
/// one is dropped and reported routed.
async fn mandatory_returns(h: &dyn Harness) {
    let b = h.connect().await;
    let x = h.unique("rpc");
    let q = h.unique("bound");
    declare(
        &b,
        Topology::new()
            .exchange(exchange(&x, ExchangeKind::Topic))
            .queue(transient(&q))
            .binding(Binding::new(&x, &q, "known.*")),
    )
    .await;
    let returned = PublishOutcome::Returned {
        code: 312,
        text: "NO_ROUTE".to_owned(),
    };
    let mut unroutable = message(&x, "unknown.method", "x");
    unroutable.mandatory = true;
    assert_eq!(b.publish(unroutable.clone()).await, Ok(returned.clone()));
    unroutable.mandatory = false;
    assert_eq!(b.publish(unroutable).await, Ok(PublishOutcome::Routed));
    let mut to_nowhere = message("", &h.unique("no-such-queue"), "x");
    to_nowhere.mandatory = true;
    assert_eq!(b.publish(to_nowhere).await, Ok(returned));
    let mut routable = message(&x, "known.method", "x");
    routable.mandatory = true;
    assert_eq!(b.publish(routable).await, Ok(PublishOutcome::Routed));
    eventually(h, "the routed message is in the queue", counts(&q, 1, 0)).await;
    cleanup(&b, &[&q], &[&x]).await;
}

/// Many publishes in flight on one connection, every other one unroutable: each is
/// told its own outcome. The broker confirms several publishes at once (`multiple`),
/// and lapin hands the returned messages to whichever of them it completes first; the
/// broker matches them back to their publishes.
async fn concurrent_returns_reach_their_own_publish(h: &dyn Harness) {
    const PUBLISHES: usize = 400;
    let b = h.connect().await;
    let q = h.unique("bound");
    declare(&b, Topology::new().queue(transient(&q))).await;
    let nowhere = h.unique("no-such-queue");
    let publishes = (0..PUBLISHES).map(|n| {
        let b = b.clone();
        let (key, mandatory) = match n % 4 {
            0 | 1 => (q.clone(), true),
            2 => (nowhere.clone(), true),
            _ => (nowhere.clone(), false),
        };
        async move {
            let mut publish = message("", &key, &n.to_string());
            publish.mandatory = mandatory;
            (n, b.publish(publish).await)
        }
    });
    let outcomes = futures_util::future::join_all(publishes).await;
    for (n, outcome) in outcomes {
        let expected = if n % 4 == 2 {
            PublishOutcome::Returned {
                code: 312,
                text: "NO_ROUTE".to_owned(),
            }
        } else {
            PublishOutcome::Routed
        };
        assert_eq!(outcome, Ok(expected), "publish {n}");
    }
    eventually(h, "the routed messages are in the queue", counts(&q, PUBLISHES / 2, 0)).await;
    cleanup(&b, &[&q], &[]).await;
}

/// Redeclaring with other flags or arguments fails with PRECONDITION_FAILED; an
/// equivalent redeclare succeeds.
async fn precondition_failed(h: &dyn Harness) {
    let b = h.connect().await;
    let x = h.unique("events");
    let q = h.unique("handler");
    let original = Topology::new()
        .exchange(Exchange::topic(&x))
        .queue(Queue::durable(&q).message_ttl(Duration::from_secs(60)));
    declare(&b, original.clone()).await;
    declare(&b, original).await;

    let mut direct = Exchange::topic(&x);
    direct.kind = ExchangeKind::Direct;
    let mut transient_x = Exchange::topic(&x);
    transient_x.durable = false;
    let mut transient_q = Queue::durable(&q).message_ttl(Duration::from_secs(60));
    transient_q.durable = false;
    let inequivalent = [
        Topology::new().exchange(direct),
        Topology::new().exchange(transient_x),
        Topology::new().queue(transient_q),
        Topology::new().queue(Queue::durable(&q).message_ttl(Duration::from_secs(30))),
        Topology::new().queue(Queue::durable(&q)),
        Topology::new().queue(
            Queue::durable(&q)
                .message_ttl(Duration::from_secs(60))
                .auto_delete(true),
        ),
    ];
    for topology in inequivalent {
        let result = b.declare(&topology).await;
        assert!(
            matches!(&result, Err(BrokerError::PreconditionFailed(text)) if text.contains("inequivalent arg")),
            "{topology:?}: {result:?}"
        );
    }
    // The connection is still usable, and nothing changed.
    let info = queue_info(h, &q).await.expect("the queue still exists");
    assert!(info.queue.durable);
    assert_eq!(info.queue.ttl(), Some(Duration::from_secs(60)));
    cleanup(&b, &[&q], &[&x]).await;
}

/// A quorum queue carries messages like a classic one; its type cannot change on a
/// redeclare (either way, in RabbitMQ's words), `classic` matches a queue declared
/// without a type, and what a quorum queue cannot be is refused.
async fn quorum_queues(h: &dyn Harness) {
    let b = h.connect().await;
    let (quorum, classic) = (h.unique("quorum"), h.unique("classic"));
    declare(
        &b,
        Topology::new().queue(Queue::durable(&quorum).queue_type(QueueType::Quorum)),
    )
    .await;
    declare(&b, Topology::new().queue(Queue::durable(&classic))).await;
    declare(
        &b,
        Topology::new().queue(Queue::durable(&quorum).queue_type(QueueType::Quorum)),
    )
    .await;
    let mut explicit = Queue::durable(&classic);
    explicit
        .arguments
        .insert("x-queue-type", FieldValue::String("classic".to_owned()));
    declare(&b, Topology::new().queue(explicit)).await;
    assert_eq!(
        queue_info(h, &quorum)
            .await
            .expect("the quorum queue exists")
            .queue
            .kind(),
        QueueType::Quorum
    );

    let refused = [
        (
            Queue::durable(&classic).queue_type(QueueType::Quorum),
            format!("inequivalent arg 'x-queue-type' for queue '{classic}'"),
        ),
        (
            Queue::durable(&quorum),
            format!("inequivalent arg 'x-queue-type' for queue '{quorum}'"),
        ),
    ];
    for (queue, expected) in refused {
        let result = b.declare(&Topology::new().queue(queue.clone())).await;
        assert!(
            matches!(&result, Err(BrokerError::PreconditionFailed(text)) if text.contains(&expected)),
            "{queue:?}: {result:?}"
        );
    }
    let invalid = h.unique("invalid");
    let cases = [
        (
            Queue::durable(&invalid).auto_delete(true),
            "invalid property 'auto-delete'",
        ),
        (
            Queue::durable(&invalid).exclusive(true),
            "invalid property 'exclusive-owner'",
        ),
        (transient(&invalid), "invalid property 'non-durable'"),
    ];
    for (queue, expected) in cases {
        let queue = queue.queue_type(QueueType::Quorum);
        let result = b.declare(&Topology::new().queue(queue.clone())).await;
        assert!(
            matches!(&result, Err(BrokerError::PreconditionFailed(text)) if text.contains(expected)),
            "{queue:?}: {result:?}"
        );
    }

    // Messages go through a quorum queue with per-message TTL (as RPC requests carry).
    let mut consumer = b.consume(&quorum, ConsumeOptions::prefetch(5)).await.expect("consume");
    let mut publish = message("", &quorum, "through quorum");
    publish.properties.expiration = Some("60000".to_owned());
    assert_eq!(b.publish(publish).await, Ok(PublishOutcome::Routed));
    let delivery = next(&mut consumer).await;
    assert_eq!(&delivery.body[..], b"through quorum");
    assert!(matches!(delivery.ack().await, Ok(AckOutcome::Done)));
    drop(consumer);
    cleanup(&b, &[&quorum, &classic], &[]).await;
}

/// Consumers of one queue share its messages, each delivered once.
async fn competing_consumers(h: &dyn Harness) {
    let (a, b) = (h.connect().await, h.connect().await);
    let q = h.unique("work");
    declare(&a, Topology::new().queue(transient(&q))).await;
    let mut ca = a.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    let mut cb = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    for i in 0..10 {
        publish(&a, "", &q, &format!("m{i:02}")).await;
    }
    let (got_a, got_b) = tokio::join!(drain(&mut ca), drain(&mut cb));
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both consume: {got_a:?} {got_b:?}"
    );
    let mut all: Vec<String> = got_a.into_iter().chain(got_b).collect();
    all.sort();
    let expected: Vec<String> = (0..10).map(|i| format!("m{i:02}")).collect();
    assert_eq!(all, expected, "each message exactly once");
    cleanup(&a, &[&q], &[]).await;
}

/// A consumer holds at most `prefetch` unacked deliveries; an ack lets the next one in.
async fn per_consumer_prefetch(h: &dyn Harness) {
    let b = h.connect().await;
    let q = h.unique("prefetch");
    declare(&b, Topology::new().queue(transient(&q))).await;
    for i in 0..5 {
        publish(&b, "", &q, &format!("m{i}")).await;
    }
    let mut consumer = b.consume(&q, ConsumeOptions::prefetch(2)).await.expect("consume");
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!((body(&first), body(&second)), ("m0".to_owned(), "m1".to_owned()));
    nothing(&mut consumer).await;
    eventually(h, "2 unacked, 3 ready", counts(&q, 3, 2)).await;
    assert_eq!(first.ack().await, Ok(AckOutcome::Done));
    let third = next(&mut consumer).await;
    assert_eq!(body(&third), "m2");
    nothing(&mut consumer).await;
    // An unlimited consumer next to it takes the rest.
    let mut greedy = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    assert_eq!(take(&mut greedy, 2).await, ["m3", "m4"]);
    assert_eq!(second.ack().await, Ok(AckOutcome::Done));
    assert_eq!(third.ack().await, Ok(AckOutcome::Done));
    cleanup(&b, &[&q], &[]).await;
}

/// A requeued message comes back first, flagged `redelivered`; an acked one is gone.
async fn ack_and_requeue_redelivered(h: &dyn Harness) {
    let b = h.connect().await;
    let q = h.unique("requeue");
    declare(&b, Topology::new().queue(transient(&q))).await;
    publish(&b, "", &q, "first").await;
    publish(&b, "", &q, "second").await;
    let mut consumer = b.consume(&q, ConsumeOptions::prefetch(1)).await.expect("consume");
    let delivery = next(&mut consumer).await;
    assert_eq!(body(&delivery), "first");
    assert!(!delivery.redelivered);
    assert_eq!(delivery.nack(true).await, Ok(AckOutcome::Done));
    let again = next(&mut consumer).await;
    assert_eq!(body(&again), "first");
    assert!(again.redelivered);
    assert_eq!(again.reject(true).await, Ok(AckOutcome::Done));
    let third = next(&mut consumer).await;
    assert_eq!((body(&third), third.redelivered), ("first".to_owned(), true));
    assert_eq!(third.ack().await, Ok(AckOutcome::Done));
    let second = next(&mut consumer).await;
    assert_eq!((body(&second), second.redelivered), ("second".to_owned(), false));
    assert_eq!(second.ack().await, Ok(AckOutcome::Done));
    nothing(&mut consumer).await;
    eventually(h, "the queue is empty", counts(&q, 0, 0)).await;
    cleanup(&b, &[&q], &[]).await;
}

/// A cancelled consumer gets nothing new and ends `Cancelled { by_broker: false }`;
/// what it already had can still be acked.
async fn consumer_cancel(h: &dyn Harness) {
    let b = h.connect().await;
    let q = h.unique("cancel");
    declare(&b, Topology::new().queue(transient(&q))).await;
    publish(&b, "", &q, "held").await;
    let mut consumer = b.consume(&q, ConsumeOptions::prefetch(1)).await.expect("consume");
    let held = next(&mut consumer).await;
    with_timeout("cancel", consumer.control().cancel())
        .await
        .expect("the cancel");
    publish(&b, "", &q, "later").await;
    assert_eq!(end(&mut consumer).await, ConsumerEnd::Cancelled { by_broker: false });
    assert_eq!(held.ack().await, Ok(AckOutcome::Done));
    eventually(h, "only the later message is left", counts(&q, 1, 0)).await;
    cleanup(&b, &[&q], &[]).await;
}

/// Closing a consumer returns its unacked deliveries to the queue, redelivered; its
/// later acks are stale.
async fn unacked_returned_on_consumer_close(h: &dyn Harness) {
    let b = h.connect().await;
    let q = h.unique("close");
    declare(&b, Topology::new().queue(transient(&q))).await;
    publish(&b, "", &q, "m0").await;
    publish(&b, "", &q, "m1").await;
    let mut first = b.consume(&q, ConsumeOptions::prefetch(2)).await.expect("consume");
    let d0 = next(&mut first).await;
    let d1 = next(&mut first).await;
    with_timeout("close", first.control().close()).await;
    assert_eq!(end(&mut first).await, ConsumerEnd::ChannelClosed);
    assert_eq!(d0.ack().await, Ok(AckOutcome::Stale));
    let mut second = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    let r0 = next(&mut second).await;
    let r1 = next(&mut second).await;
    assert_eq!((body(&r0), r0.redelivered), ("m0".to_owned(), true));
    assert_eq!((body(&r1), r1.redelivered), ("m1".to_owned(), true));
    assert_eq!(r0.ack().await, Ok(AckOutcome::Done));
    assert_eq!(r1.ack().await, Ok(AckOutcome::Done));
    drop(d1);
    cleanup(&b, &[&q], &[]).await;
}

/// An exclusive consumer keeps every other consumer off its queue.
async fn exclusive_consumer(h: &dyn Harness) {
    let b = h.connect().await;
    let q = h.unique("exclusive-consumer");
    declare(&b, Topology::new().queue(transient(&q))).await;
    let mut options = ConsumeOptions::prefetch(0);
    options.exclusive = true;
    let mut owner = b.consume(&q, options.clone()).await.expect("consume");
    let other = b.consume(&q, ConsumeOptions::prefetch(0)).await;
    assert!(matches!(other, Err(BrokerError::ResourceLocked(_))), "{other:?}");
    let plain_q = h.unique("shared");
    declare(&b, Topology::new().queue(transient(&plain_q))).await;
    let _plain = b.consume(&plain_q, ConsumeOptions::prefetch(0)).await.expect("consume");
    let late = b.consume(&plain_q, options).await;
    assert!(matches!(late, Err(BrokerError::ResourceLocked(_))), "{late:?}");
    publish(&b, "", &q, "mine").await;
    assert_eq!(body(&next(&mut owner).await), "mine");
    cleanup(&b, &[&q, &plain_q], &[]).await;
}

/// An exclusive queue is usable only by its connection, and deleted when it closes.
async fn exclusive_queue(h: &dyn Harness) {
    let (owner, other) = (h.connect().await, h.connect().await);
    let q = h.unique("exclusive");
    let queue = transient(&q).exclusive(true);
    declare(&owner, Topology::new().queue(queue.clone())).await;
    eventually(h, "the exclusive queue is listed", has_queue(&q)).await;
    let result = other.consume(&q, ConsumeOptions::prefetch(0)).await;
    assert!(
        matches!(result, Err(BrokerError::ResourceLocked(_))),
        "consume: {result:?}"
    );
    let result = other.declare(&Topology::new().queue(queue)).await;
    assert!(
        matches!(result, Err(BrokerError::ResourceLocked(_))),
        "declare: {result:?}"
    );
    // Anyone may publish to it.
    publish(&other, "", &q, "hello").await;
    let mut consumer = owner.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    assert_eq!(take(&mut consumer, 1).await, ["hello"]);
    with_timeout("close", owner.close()).await;
    eventually(h, "the exclusive queue is gone", no_queue(&q)).await;
    cleanup(&other, &[&q], &[]).await;
}

/// An auto-delete queue stays until it had a consumer and the last one went.
async fn auto_delete_queue(h: &dyn Harness) {
    let b = h.connect().await;
    let q = h.unique("auto-delete");
    declare(&b, Topology::new().queue(transient(&q).auto_delete(true))).await;
    sleep(QUIET).await;
    assert!(queue_info(h, &q).await.is_some(), "deleted before it had a consumer");
    let first = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    let second = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    with_timeout("cancel", first.control().cancel())
        .await
        .expect("the cancel");
    sleep(QUIET).await;
    assert!(queue_info(h, &q).await.is_some(), "deleted while it had a consumer");
    with_timeout("cancel", second.control().cancel())
        .await
        .expect("the cancel");
    eventually(h, "the auto-delete queue is gone", no_queue(&q)).await;
    cleanup(&b, &[&q], &[]).await;
}

/// An `x-expires` queue is deleted once unused for that long, not while consumed.
async fn queue_expires(h: &dyn Harness) {
    let b = h.connect().await;
    let q = h.unique("expires");
    let expires = Duration::from_secs(2);
    declare(&b, Topology::new().queue(transient(&q).expires(expires))).await;
    let consumer = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    sleep(expires * 3 / 2).await;
    assert!(queue_exists(&b, &q).await, "expired while consumed");
    with_timeout("cancel", consumer.control().cancel())
        .await
        .expect("the cancel");
    sleep(expires / 2).await;
    // Redeclaring counts as a use.
    declare(&b, Topology::new().queue(transient(&q).expires(expires))).await;
    sleep(expires / 2).await;
    assert!(queue_exists(&b, &q).await, "expired although redeclared");
    eventually(h, "the unused queue expired", no_queue(&q)).await;
    cleanup(&b, &[&q], &[]).await;
}

/// Deleting a queue cancels its consumers from the broker side.
async fn queue_deleted_cancels_consumers(h: &dyn Harness) {
    let (a, b) = (h.connect().await, h.connect().await);
    let q = h.unique("deleted");
    declare(&a, Topology::new().queue(transient(&q))).await;
    let mut consumer = a.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    b.delete_queue(&q).await.expect("the delete");
    assert_eq!(end(&mut consumer).await, ConsumerEnd::Cancelled { by_broker: true });
    assert!(queue_info(h, &q).await.is_none());
}

/// A single-active-consumer queue feeds its oldest consumer only; the next takes over
/// when it goes.
async fn single_active_consumer(h: &dyn Harness) {
    let (a, b) = (h.connect().await, h.connect().await);
    let q = h.unique("sac");
    declare(&a, Topology::new().queue(transient(&q).single_active_consumer())).await;
    let mut active = a.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    let mut standby = b.consume(&q, ConsumeOptions::prefetch(0)).await.expect("consume");
    for i in 0..3 {
        publish(&a, "", &q, &format!("m{i}")).await;
    }
    let held: Vec<Delivery> = vec![
        next(&mut active).await,
        next(&mut active).await,
        next(&mut active).await,
    ];
    assert_eq!(held.iter().map(body).collect::<Vec<_>>(), ["m0", "m1", "m2"]);
    nothing(&mut standby).await;
    assert_eq!(held[0].ack().await, Ok(AckOutcome::Done));
    with_timeout("close", active.control().close()).await;
    let took_over: Vec<Delivery> = vec![next(&mut standby).await, next(&mut standby).await];
    assert_eq!(took_over.iter().map(body).collect::<Vec<_>>(), ["m1", "m2"]);
    assert!(took_over.iter().all(|d| d.redelivered));
    publish(&a, "", &q, "m3").await;
    assert_eq!(body(&next(&mut standby).await), "m3");
    cleanup(&a, &[&q], &[]).await;
}

/// Messages older than the queue's `x-message-ttl` are dead-lettered to its DLX, with
/// an `x-death` entry.
async fn message_ttl_dead_letters(h: &dyn Harness) {
    let b = h.connect().await;
    let (x, dlx) = (h.unique("work-x"), h.unique("dlx"));
    let (retry, dead) = (h.unique("retry"), h.unique("dead"));
    declare(
        &b,
        Topology::new()
            .exchange(exchange(&x, ExchangeKind::Topic))
            .exchange(exchange(&dlx, ExchangeKind::Topic))
            .queue(
                transient(&retry)
                    .message_ttl(Duration::from_millis(200))
                    .dead_letter(&dlx, None),
            )
            .queue(transient(&dead))
            .binding(Binding::new(&x, &retry, "order.*"))
            .binding(Binding::new(&dlx, &dead, "order.created")),
    )
    .await;
    let mut with_headers = message(&x, "order.created", "late");
    let mut headers = Headers::new();
    headers.insert_json("nameko.call_id_stack", &json!(["a.b.1"]));
    let mut properties = Properties::default();
    properties.headers = Some(headers);
    with_headers.properties = properties;
    assert_eq!(b.publish(with_headers).await, Ok(PublishOutcome::Routed));
    let mut consumer = b.consume(&dead, ConsumeOptions::prefetch(0)).await.expect("consume");
    let delivery = next(&mut consumer).await;
    assert_eq!(body(&delivery), "late");
    assert_eq!(delivery.exchange, dlx);
    assert_eq!(delivery.routing_key, "order.created");
    let headers = headers_json(&delivery);
    assert_eq!(headers["nameko.call_id_stack"], json!(["a.b.1"]));
    let death = &headers["x-death"][0];
    assert_eq!(death["reason"], "expired", "{headers}");
    assert_eq!(death["queue"], json!(retry));
    assert_eq!(death["exchange"], json!(x));
    assert_eq!(death["count"], 1);
    assert_eq!(death["routing-keys"], json!(["order.created"]));
    assert_eq!(delivery.ack().await, Ok(AckOutcome::Done));
    eventually(h, "the retry queue is empty", counts(&retry, 0, 0)).await;
    cleanup(&b, &[&retry, &dead], &[&x, &dlx]).await;
}

/// `nack`/`reject` without requeue dead-letter through the queue's DLX (reason
/// `rejected`, with `x-dead-letter-routing-key`), or drop without one.
async fn nack_without_requeue_dead_letters(h: &dyn Harness) {
    let b = h.connect().await;
    let dlx = h.unique("dlx");
    let (work, dead, plain) = (h.unique("work"), h.unique("dead"), h.unique("plain"));
    declare(
        &b,
        Topology::new()
            .exchange(exchange(&dlx, ExchangeKind::Direct))
            .queue(transient(&work).dead_letter(&dlx, Some("failed".to_owned())))
            .queue(transient(&dead))
            .queue(transient(&plain))
            .binding(Binding::new(&dlx, &dead, "failed")),
    )
    .await;
    publish(&b, "", &work, "nacked").await;
    publish(&b, "", &work, "rejected").await;
    publish(&b, "", &plain, "dropped").await;
    let mut consumer = b.consume(&work, ConsumeOptions::prefetch(0)).await.expect("consume");
    assert_eq!(next(&mut consumer).await.nack(false).await, Ok(AckOutcome::Done));
    assert_eq!(next(&mut consumer).await.reject(false).await, Ok(AckOutcome::Done));
    let mut dead_consumer = b.consume(&dead, ConsumeOptions::prefetch(0)).await.expect("consume");
    for expected in ["nacked", "rejected"] {
        let delivery = next(&mut dead_consumer).await;
        assert_eq!(body(&delivery), expected);
        assert_eq!(delivery.routing_key, "failed");
        let headers = headers_json(&delivery);
        let death = &headers["x-death"][0];
        assert_eq!(death["reason"], "rejected", "{headers}");
        assert_eq!(death["queue"], json!(work));
        assert_eq!(death["exchange"], "");
        assert_eq!(death["routing-keys"], json!([work]));
        assert_eq!(delivery.ack().await, Ok(AckOutcome::Done));
    }
    let mut plain_consumer = b.consume(&plain, ConsumeOptions::prefetch(0)).await.expect("consume");
    assert_eq!(
        next(&mut plain_consumer).await.reject(false).await,
        Ok(AckOutcome::Done)
    );
    nothing(&mut plain_consumer).await;
    eventually(h, "every queue is empty", |queues| {
        [&work, &dead, &plain].iter().all(|name| counts(name, 0, 0)(queues))
    })
    .await;
    cleanup(&b, &[&work, &dead, &plain], &[&dlx]).await;
}

/// Waits (up to 20 s) for a connection event that `wanted` accepts.
async fn event(events: &mut broadcast::Receiver<ConnectionEvent>, what: &str, wanted: fn(&ConnectionEvent) -> bool) {
    let waited = timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("the events ended before {what}"),
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "no {what} event within 20 s");
}

/// The recovery contract (see `nameko_extensions::broker`): a lost connection's
/// consumers pause and do not end; its unacked deliveries go back (acks on them are
/// stale); publishes and declares fail with `ConnectionLost` during the outage;
/// subscribers get `Lost`, then `Recovered`; the same consumers then resume with the
/// redelivered message first, the queues the connection declared come back with their
/// bindings (an auto-delete queue deleted by the loss too), and publishes work again.
async fn connection_loss_and_recovery(h: &dyn Harness) {
    let (lost, survivor) = (h.connect().await, h.connect().await);
    let (x, q, auto) = (h.unique("recover-x"), h.unique("recover"), h.unique("recover-auto"));
    declare(
        &lost,
        Topology::new()
            .exchange(exchange(&x, ExchangeKind::Topic))
            .queue(transient(&q))
            .queue(transient(&auto).auto_delete(true))
            .binding(Binding::new(&x, &q, "k"))
            .binding(Binding::new(&x, &auto, "k")),
    )
    .await;
    publish(&survivor, &x, "k", "one").await;
    publish(&survivor, &x, "k", "two").await;
    let mut consumer = lost.consume(&q, ConsumeOptions::prefetch(1)).await.expect("consume");
    let mut auto_consumer = lost.consume(&auto, ConsumeOptions::prefetch(0)).await.expect("consume");
    let first = next(&mut consumer).await;
    assert_eq!((body(&first), first.redelivered), ("one".to_owned(), false));
    assert_eq!(take(&mut auto_consumer, 2).await, ["one", "two"]);
    let mut events = lost.events();

    h.sever(&lost).await;
    event(&mut events, "Lost", |e| matches!(e, ConnectionEvent::Lost { .. })).await;
    assert_eq!(first.ack().await, Ok(AckOutcome::Stale));
    eventually(
        h,
        "the unacked delivery is back and the auto-delete queue gone",
        |queues| counts(&q, 2, 0)(queues) && no_queue(&auto)(queues),
    )
    .await;
    assert!(matches!(
        lost.publish(message(&x, "k", "during")).await,
        Err(BrokerError::ConnectionLost(_))
    ));
    assert!(matches!(
        lost.declare(&Topology::new().queue(transient(&q))).await,
        Err(BrokerError::ConnectionLost(_))
    ));
    nothing(&mut consumer).await;
    publish(&survivor, &x, "k", "three").await;

    h.restore(&lost).await;
    event(&mut events, "Recovered", |e| *e == ConnectionEvent::Recovered).await;
    let again = next(&mut consumer).await;
    assert_eq!((body(&again), again.redelivered), ("one".to_owned(), true));
    assert_eq!(again.ack().await, Ok(AckOutcome::Done));
    assert_eq!(take(&mut consumer, 2).await, ["two", "three"]);
    publish(&lost, &x, "k", "four").await;
    assert_eq!(take(&mut consumer, 1).await, ["four"]);
    assert_eq!(take(&mut auto_consumer, 1).await, ["four"]);
    nothing(&mut auto_consumer).await;
    cleanup(&survivor, &[&q, &auto], &[&x]).await;
}

/// `list_queues` reports each queue's declare flags and arguments and its counts;
/// `list_bindings` each binding.
async fn list_queues_and_bindings(h: &dyn Harness) {
    let b = h.connect().await;
    let x = h.unique("rpc");
    let (service, reply) = (h.unique("rpc-svc"), h.unique("rpc.reply"));
    declare(
        &b,
        Topology::new()
            .exchange(Exchange::topic(&x))
            .queue(Queue::durable(&service))
            .queue(Queue::durable(&reply).expires(Duration::from_secs(300)))
            .binding(Binding::new(&x, &service, "svc.*"))
            .binding(Binding::new(&x, &reply, "uuid")),
    )
    .await;
    let auto = h.unique("evt");
    declare(&b, Topology::new().queue(transient(&auto).auto_delete(true))).await;
    publish(&b, &x, "svc.method", "call").await;
    let _consumer = b.consume(&reply, ConsumeOptions::prefetch(0)).await.expect("consume");
    eventually(h, "the counts show", |queues| {
        counts(&service, 1, 0)(queues) && queues.iter().any(|q| q.queue.name == reply && q.consumers == 1)
    })
    .await;
    let queues = h.list_queues().await;
    let find = |name: &str| {
        queues
            .iter()
            .find(|q| q.queue.name == name)
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    let s = find(&service);
    assert_eq!(
        (s.queue.durable, s.queue.auto_delete, s.queue.exclusive),
        (true, false, false)
    );
    assert!(s.queue.arguments.is_empty());
    assert_eq!(s.consumers, 0);
    let r = find(&reply);
    assert_eq!(
        (r.queue.durable, r.queue.auto_delete, r.queue.exclusive),
        (true, false, false)
    );
    assert_eq!(
        Value::Object(r.queue.arguments.to_json_map()),
        json!({"x-expires": 300_000})
    );
    let a = find(&auto);
    assert_eq!(
        (a.queue.durable, a.queue.auto_delete, a.queue.exclusive),
        (false, true, false)
    );
    let names: Vec<&str> = queues.iter().map(|q| q.queue.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "list_queues is sorted by name");

    let key = |b: &Binding| (b.exchange.clone(), b.queue.clone(), b.routing_key.clone());
    let listed = h.list_bindings().await;
    let mut sorted = listed.clone();
    sorted.sort_by_key(key);
    assert_eq!(listed, sorted, "list_bindings is sorted");
    let mine: Vec<Binding> = listed.into_iter().filter(|binding| binding.exchange == x).collect();
    let mut expected = vec![Binding::new(&x, &service, "svc.*"), Binding::new(&x, &reply, "uuid")];
    expected.sort_by_key(key);
    assert_eq!(mine, expected);
    cleanup(&b, &[&service, &reply, &auto], &[&x]).await;
}
