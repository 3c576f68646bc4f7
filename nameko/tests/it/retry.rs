//! `#[event_handler(.., retry(..), dead_letter = "..")]` end to end: through the macro
//! on the memory broker (paused time), and on RabbitMQ (real time, short delays): a
//! handler failing twice then succeeding, one always failing that lands in the
//! dead-letter exchange after exactly `max + 1` attempts, the handler queue still
//! declarable as Python Nameko declares it, the retry queues as documented, and
//! everything removed by the fixture's clean-up.

use std::{sync::Arc, sync::Mutex, time::Duration};

use nameko::{
    broker::{
        AckOutcome, Binding, ConsumeOptions, Consumer, Delivery, Exchange, FieldValue, Queue, SharedBroker, Topology,
    },
    core::{Config, deps::Dep},
    events::{ATTEMPTS_HEADER, ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER, EventDispatcher, QUEUE_HEADER},
};
use nameko_testing::{RabbitMq, ServiceHarness};
use serde_json::{Value, json};
use tokio::time::Instant;

/// When each handler ran.
#[derive(Debug, Default)]
pub(crate) struct Attempts(Mutex<Vec<(&'static str, Instant)>>);

impl Attempts {
    fn push(&self, who: &'static str) -> usize {
        let mut all = self.0.lock().unwrap();
        all.push((who, Instant::now()));
        all.iter().filter(|(w, _)| *w == who).count()
    }

    fn of(&self, who: &str) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, at)| *at)
            .collect()
    }
}

#[derive(Debug, thiserror::Error, nameko::RemoteError)]
#[error("order {0} could not be booked")]
#[remote(exc_type = "BookingFailed")]
pub(crate) struct BookingFailed(u64);

#[derive(Debug, serde::Deserialize)]
pub(crate) struct Order {
    id: u64,
}

#[derive(nameko::Dependencies)]
pub(crate) struct Bookings {
    attempts: Dep<Attempts>,
}

pub(crate) const DEAD: &str = "retry_bookings.dead";

#[nameko::service(name = "retry_bookings")]
impl Bookings {
    /// Fails twice, then books.
    #[event_handler("retry_shop", "placed", retry(max = 5, backoff = "50ms..200ms"))]
    async fn book(&self, order: Order) -> Result<(), BookingFailed> {
        if self.attempts.push("book") <= 2 {
            return Err(BookingFailed(order.id));
        }
        Ok(())
    }

    /// Never books.
    #[event_handler(
        "retry_shop",
        "doomed",
        retry(max = 2, backoff = "100ms"),
        dead_letter = "retry_bookings.dead"
    )]
    async fn doom(&self, order: Order) -> Result<(), BookingFailed> {
        self.attempts.push("doom");
        Err(BookingFailed(order.id))
    }
}

/// Declares a queue bound to the dead-letter exchange for every routing key and
/// consumes it.
async fn dead_letters(broker: &SharedBroker, queue: &str) -> Consumer {
    let topology = Topology::new()
        .exchange(Exchange::topic(DEAD))
        .queue(Queue::durable(queue))
        .binding(Binding::new(DEAD, queue, "#"));
    broker.declare(&topology).await.unwrap();
    broker.consume(queue, ConsumeOptions::prefetch(0)).await.unwrap()
}

fn string_header(delivery: &Delivery, name: &str) -> String {
    match delivery.properties.headers.as_ref().and_then(|h| h.get(name)) {
        Some(FieldValue::String(value)) => value.clone(),
        other => panic!("header {name}: {other:?}"),
    }
}

fn int_header(delivery: &Delivery, name: &str) -> Option<i64> {
    delivery
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .and_then(|v| v.to_json().as_i64())
}

/// Asserts the gaps between `attempts` are the `wanted` delays, give or take `slack`
/// (after them, never before).
#[track_caller]
fn assert_gaps(attempts: &[Instant], wanted: &[u64], slack: Duration) {
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), wanted.len(), "gaps {gaps:?}, wanted {wanted:?} ms");
    for (gap, want) in gaps.iter().zip(wanted) {
        let want = Duration::from_millis(*want);
        assert!(
            *gap >= want && *gap < want + slack,
            "gaps {gaps:?}, wanted {wanted:?} ms (+ up to {slack:?})"
        );
    }
}

fn check_dead_letter(letter: &Delivery) {
    assert_eq!(letter.routing_key, "doomed");
    assert_eq!(&letter.body[..], br#"{"id":9}"#);
    assert_eq!(string_header(letter, ERROR_TYPE_HEADER), "BookingFailed");
    assert_eq!(
        string_header(letter, ERROR_MESSAGE_HEADER),
        "order 9 could not be booked"
    );
    assert_eq!(
        string_header(letter, QUEUE_HEADER),
        "evt-retry_shop-doomed--retry_bookings.doom"
    );
    assert_eq!(int_header(letter, ATTEMPTS_HEADER), Some(3), "max = 2: three attempts");
    assert_eq!(string_header(letter, "nameko.user_id"), "u-1");
    let names: Vec<&str> = letter
        .properties
        .headers
        .as_ref()
        .unwrap()
        .iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.iter().any(|n| n.contains("death")), "{names:?}");
}

async fn dispatch(broker: SharedBroker, config: &Config, event_type: &str, payload: Value) {
    EventDispatcher::standalone(broker, "retry_shop", config)
        .with_data(nameko::core::ContextData::new().with("user_id", "u-1"))
        .dispatch(event_type, &payload)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_macro_options_retry_and_dead_letter() {
    let attempts = Arc::new(Attempts::default());
    let harness = ServiceHarness::builder::<Bookings>()
        .resource(Arc::clone(&attempts))
        .start()
        .await
        .unwrap();
    let broker = harness.broker().shared();
    let mut dead = dead_letters(&broker, "dead-letters").await;
    let config = Config::default();
    dispatch(broker.clone(), &config, "placed", json!({"id": 1})).await;
    dispatch(broker.clone(), &config, "doomed", json!({"id": 9})).await;

    let letter = tokio::time::timeout(Duration::from_secs(60), dead.next())
        .await
        .expect("a dead letter")
        .unwrap();
    check_dead_letter(&letter);
    assert_gaps(&attempts.of("doom"), &[100, 100], Duration::from_millis(20));
    assert_eq!(letter.ack().await.unwrap(), AckOutcome::Done);

    let deadline = Instant::now() + Duration::from_secs(60);
    while attempts.of("book").len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 50ms..200ms: 50 ms, then 100 ms.
    assert_gaps(&attempts.of("book"), &[50, 100], Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(attempts.of("book").len(), 3);
    assert_eq!(attempts.of("doom").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_retries_and_dead_letters_leaving_the_handler_queue_as_python_declares_it() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    rabbit.claim_service("retry_shop");
    rabbit.claim_service("retry_bookings");
    rabbit.claim_exchange(DEAD);
    let dead_queue = rabbit.unique("retry_dead_letters");
    rabbit.claim_queue(&dead_queue);
    let broker = rabbit.broker();
    let mut dead = dead_letters(&broker, &dead_queue).await;
    let attempts = Arc::new(Attempts::default());
    let running = nameko::core::ServiceRunner::new(rabbit.config(Value::Null))
        .resource::<dyn nameko::broker::Broker>(rabbit.broker())
        .resource(Arc::clone(&attempts))
        .stop_timeout(Duration::from_secs(5))
        .with_service::<Bookings>()
        .start()
        .await
        .unwrap();
    let book_queue = "evt-retry_shop-placed--retry_bookings.book";
    let doom_queue = "evt-retry_shop-doomed--retry_bookings.doom";
    rabbit
        .wait_for_consumers(book_queue, 1, Duration::from_secs(10))
        .await
        .unwrap();

    // The handler queue as Python Nameko declares it — durable, no arguments — from
    // another connection: an inequivalent declare would fail PRECONDITION_FAILED.
    let python_side = rabbit.new_connection().await.unwrap();
    for queue in [book_queue, doom_queue] {
        python_side
            .declare(&Topology::new().queue(Queue::durable(queue)))
            .await
            .unwrap_or_else(|e| panic!("a Python-style declare of {queue}: {e}"));
    }
    // The retry queues exist with the documented arguments (an equivalent declare).
    for (queue, ms) in [
        (book_queue, 50),
        (book_queue, 100),
        (book_queue, 200),
        (doom_queue, 100),
    ] {
        let retry = Queue::durable(format!("{queue}.retry.{ms}ms"))
            .message_ttl(Duration::from_millis(ms))
            .dead_letter("", Some(queue.to_owned()));
        python_side
            .declare(&Topology::new().queue(retry.clone()))
            .await
            .unwrap_or_else(|e| panic!("the retry queue {}: {e}", retry.name));
    }

    let config = rabbit.config(Value::Null);
    dispatch(broker.clone(), &config, "placed", json!({"id": 1})).await;
    dispatch(broker.clone(), &config, "doomed", json!({"id": 9})).await;
    let letter = tokio::time::timeout(Duration::from_secs(20), dead.next())
        .await
        .expect("a dead letter")
        .unwrap();
    check_dead_letter(&letter);
    assert_eq!(letter.ack().await.unwrap(), AckOutcome::Done);
    // Real time on a busy machine: after each delay, within a generous slack.
    assert_gaps(&attempts.of("doom"), &[100, 100], Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    while attempts.of("book").len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_gaps(&attempts.of("book"), &[50, 100], Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(attempts.of("book").len(), 3, "nothing after the success");
    assert_eq!(attempts.of("doom").len(), 3, "nothing after the dead letter");
    for queue in [
        book_queue.to_owned(),
        doom_queue.to_owned(),
        format!("{book_queue}.retry.50ms"),
        format!("{doom_queue}.retry.100ms"),
    ] {
        let counts = rabbit.queue_counts(&queue).await.unwrap().expect("the queue");
        assert_eq!(counts.ready, 0, "{queue} is empty");
    }
    running.stop().await;
    rabbit
        .cleanup()
        .await
        .expect("the handler, retry and dead-letter queues deleted");
}
