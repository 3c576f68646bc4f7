//! Retries and dead-lettering of event handlers on the memory broker, on paused tokio
//! time (the broker's TTLs run on it, so delays are exact): a handler failing twice
//! then succeeding, one always failing (dead-lettered after exactly `max + 1`
//! attempts, or dropped without a dead-letter exchange), the handler queue's declare
//! unchanged, nothing but `nameko.*` headers reaching the context or downstream, a
//! failed republish requeueing the event, setup errors.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use nameko_core::{Config, ContextData, Entrypoints, RemoteError, Service, WorkerContext, deps::Dep};
use nameko_extensions::{
    broker::{
        AckOutcome, Binding, Broker, BrokerError, ConnectionEvent, ConsumeOptions, Consumer, Delivery, Exchange,
        FieldValue, Headers, Properties, Publish, PublishOutcome, Queue, QueueInfo, SharedBroker, Topology,
    },
    events::{
        ATTEMPTS_HEADER, Backoff, ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER, EventDispatcher, EventHandler, QUEUE_HEADER,
        RETRY_ATTEMPT_HEADER, Retry,
    },
    memory::MemoryBroker,
};
use serde_json::{Value, json};
use tokio::{sync::broadcast, time::Instant};

use crate::support::{deps, eventually, runner};

/// When each handler ran.
#[derive(Debug, Default)]
pub(crate) struct Attempts(Mutex<Vec<(String, Instant)>>);

impl Attempts {
    fn push(&self, who: &str) -> usize {
        let mut all = self.0.lock().unwrap();
        all.push((who.to_owned(), Instant::now()));
        all.iter().filter(|(w, _)| w == who).count()
    }

    fn of(&self, who: &str) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| w == who)
            .map(|(_, at)| *at)
            .collect()
    }
}

fn retry(max: u32, backoff: &str) -> Retry {
    Retry::new(max, backoff.parse().unwrap())
}

deps!(
    Retrying,
    RetryingProviders {
        attempts: Dep<Attempts>,
        seen: Dep<crate::support::Seen>,
        cx: WorkerContext,
        dispatch: EventDispatcher,
    }
);

impl Service for Retrying {
    const NAME: &'static str = "retrying";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "flaky",
            EventHandler::<Value>::new("src", "flaky").retry(retry(5, "1s..30s")),
            |w: Retrying, body| async move {
                if w.attempts.push("flaky") <= 2 {
                    return Err(RemoteError::new("Flaky", "not yet"));
                }
                w.seen.push("flaky done", body);
                Ok(())
            },
        )
        .add(
            "doomed",
            EventHandler::<Value>::new("src", "doomed")
                .retry(retry(3, "1s..2s"))
                .dead_letter("dead"),
            |w: Retrying, _body| async move {
                let n = w.attempts.push("doomed");
                Err::<(), _>(RemoteError::new("Doomed", format!("attempt {n} failed")))
            },
        )
        .add(
            "dropped",
            EventHandler::<Value>::new("src", "dropped").retry(retry(2, "1s")),
            |w: Retrying, _body| async move {
                w.attempts.push("dropped");
                Err::<(), _>(RemoteError::new("Dropped", "always"))
            },
        )
        .add(
            "typed",
            EventHandler::<Typed>::new("src", "typed")
                .retry(retry(2, "1s"))
                .dead_letter("dead"),
            |w: Retrying, body: Typed| async move {
                w.attempts.push("typed");
                w.seen.push("typed", json!(body.name));
                Ok::<_, RemoteError>(())
            },
        )
        .add(
            "forward",
            EventHandler::<Value>::new("src", "forward").retry(retry(1, "1s")),
            |w: Retrying, body| async move {
                if w.attempts.push("forward") == 1 {
                    return Err(RemoteError::new("Flaky", "first attempt"));
                }
                let keys: Vec<String> = w.cx.data().iter().map(|(k, _)| k.to_owned()).collect();
                w.seen.push("forward context", json!(keys));
                w.dispatch
                    .dispatch("forwarded", &body)
                    .await
                    .map_err(|e| RemoteError::new("Dispatch", e.to_string()))
            },
        );
    }
}

#[derive(Debug, serde::Deserialize)]
struct Typed {
    name: String,
}

// The same event as `retrying.flaky`, without retry: its queue is the reference.
deps!(Plain, PlainProviders { seen: Dep<crate::support::Seen> });

impl Service for Plain {
    const NAME: &'static str = "plain";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "flaky",
            EventHandler::<Value>::new("src", "flaky"),
            |w: Plain, body: Value| async move {
                w.seen.push("Plain", body);
                Ok::<_, RemoteError>(())
            },
        );
    }
}

async fn start(broker: &MemoryBroker) -> (nameko_core::RunningServices, Arc<Attempts>, Arc<crate::support::Seen>) {
    let attempts = Arc::new(Attempts::default());
    let (runner, seen) = runner(broker, "");
    let running = runner
        .resource(Arc::clone(&attempts))
        .with_service::<Retrying>()
        .start()
        .await
        .unwrap();
    (running, attempts, seen)
}

async fn dispatch(broker: &MemoryBroker, event_type: &str, payload: Value) {
    EventDispatcher::standalone(broker.shared(), "src", &Config::default())
        .with_data(ContextData::new().with("user_id", "u-7"))
        .dispatch(event_type, &payload)
        .await
        .unwrap();
}

fn queue(broker: &MemoryBroker, name: &str) -> QueueInfo {
    broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == name)
        .unwrap_or_else(|| panic!("no queue {name}"))
}

/// Every queue of `handler_queue` (itself and its retry queues) is empty.
fn all_settled(broker: &MemoryBroker, handler_queue: &str) -> bool {
    broker
        .list_queues()
        .iter()
        .filter(|q| q.queue.name.starts_with(handler_queue))
        .all(|q| q.ready == 0 && q.unacked == 0)
}

/// A queue bound to the dead-letter exchange `dead`, and a consumer of it.
async fn dead_letters(broker: &MemoryBroker) -> Consumer {
    let conn = broker.shared();
    let topology = Topology::new()
        .exchange(Exchange::topic("dead"))
        .queue(Queue::durable("dead-letters"))
        .binding(Binding::new("dead", "dead-letters", "#"));
    conn.declare(&topology).await.unwrap();
    conn.consume("dead-letters", ConsumeOptions::prefetch(0)).await.unwrap()
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a FieldValue> {
    delivery.properties.headers.as_ref().and_then(|h| h.get(name))
}

#[tokio::test(start_paused = true)]
async fn a_handler_failing_twice_then_succeeding_runs_three_times_after_its_delays() {
    let broker = MemoryBroker::new();
    let (running, attempts, seen) = start(&broker).await;
    dispatch(&broker, "flaky", json!({"n": 1})).await;
    eventually("the third attempt succeeds", || seen.count("flaky done") == 1).await;
    let at = attempts.of("flaky");
    assert_eq!(at.len(), 3, "two failures, then a success");
    // 1s..30s: 1 s before the first retry, 2 s before the second (paused time: exact
    // up to the broker's expiry task waking).
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([1000, 2000]) {
        let want = Duration::from_millis(want);
        assert!(
            *gap >= want && *gap < want + Duration::from_millis(50),
            "gaps {gaps:?}, wanted 1s then 2s"
        );
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(attempts.of("flaky").len(), 3, "no attempt after the success");
    assert!(all_settled(&broker, "evt-src-flaky--retrying.flaky"));
    let retry_queues: Vec<String> = broker
        .list_queues()
        .into_iter()
        .map(|q| q.queue.name)
        .filter(|n| n.starts_with("evt-src-flaky--retrying.flaky.retry."))
        .collect();
    assert_eq!(
        retry_queues,
        [1000, 16000, 2000, 4000, 8000].map(|ms| format!("evt-src-flaky--retrying.flaky.retry.{ms}ms")),
        "one retry queue per delay of 1s..30s over five retries (1, 2, 4, 8, 16 s), declared at start"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_always_failing_handler_is_dead_lettered_after_max_plus_one_attempts() {
    let broker = MemoryBroker::new();
    let mut dead = dead_letters(&broker).await;
    let (running, attempts, _) = start(&broker).await;
    dispatch(&broker, "doomed", json!({"n": 2})).await;
    let letter = tokio::time::timeout(Duration::from_secs(60), dead.next())
        .await
        .expect("a dead letter")
        .expect("the consumer");
    let at = attempts.of("doomed");
    assert_eq!(at.len(), 4, "max = 3: the first attempt and three retries");
    let gaps: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert!(
        gaps.iter()
            .zip([1000, 2000, 2000])
            .all(|(gap, want)| (want..want + 50).contains(gap)),
        "1s..2s: {gaps:?}"
    );
    assert_eq!(letter.routing_key, "doomed", "routed by the event type");
    assert_eq!(&letter.body[..], br#"{"n":2}"#, "the event's own body");
    assert_eq!(letter.properties.content_type.as_deref(), Some("application/json"));
    let string = |name| match header(&letter, name) {
        Some(FieldValue::String(s)) => s.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(string(ERROR_TYPE_HEADER), "Doomed");
    assert_eq!(string(ERROR_MESSAGE_HEADER), "attempt 4 failed");
    assert_eq!(string(QUEUE_HEADER), "evt-src-doomed--retrying.doomed");
    assert_eq!(header(&letter, ATTEMPTS_HEADER), Some(&FieldValue::I64(4)));
    assert_eq!(string("nameko.user_id"), "u-7", "the event's context headers are kept");
    let names: Vec<&str> = letter
        .properties
        .headers
        .as_ref()
        .unwrap()
        .iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("death") || *n == RETRY_ATTEMPT_HEADER),
        "no x-death nor attempt header: {names:?}"
    );
    assert_eq!(letter.ack().await.unwrap(), AckOutcome::Done);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(attempts.of("doomed").len(), 4, "nothing after the dead letter");
    assert!(all_settled(&broker, "evt-src-doomed--retrying.doomed"));
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_dead_letter_exchange_the_last_failure_is_dropped() {
    let broker = MemoryBroker::new();
    let (running, attempts, _) = start(&broker).await;
    dispatch(&broker, "dropped", json!({})).await;
    eventually("three attempts", || attempts.of("dropped").len() == 3).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(attempts.of("dropped").len(), 3, "max = 2: three attempts, then dropped");
    assert!(all_settled(&broker, "evt-src-dropped--retrying.dropped"));
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_event_is_rejected_not_retried() {
    let broker = MemoryBroker::new();
    let mut dead = dead_letters(&broker).await;
    let (running, attempts, seen) = start(&broker).await;
    let conn = broker.shared();
    for body in [&b"not json"[..], br#"{"name": "Eve"}"#] {
        let message = Publish {
            exchange: "src.events".into(),
            routing_key: "typed".into(),
            mandatory: false,
            properties: Properties::json(Headers::new()),
            body: Bytes::copy_from_slice(body),
        };
        conn.publish(message).await.unwrap();
    }
    eventually("the good event", || seen.count("typed") == 1).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(attempts.of("typed").len(), 1, "the bad one never ran");
    assert!(
        all_settled(&broker, "evt-src-typed--retrying.typed"),
        "rejected, not retried"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), dead.next()).await.is_err(),
        "nor dead-lettered"
    );
    running.stop().await;
}

#[tokio::test]
async fn the_handler_queue_declare_is_unchanged_and_retry_queues_loop_back_to_it() {
    let broker = MemoryBroker::new();
    let (running, _, _) = start(&broker).await;
    let (plain_runner, _) = runner(&broker, "");
    let plain = plain_runner.with_service::<Plain>().start().await.unwrap();
    let with_retry = queue(&broker, "evt-src-flaky--retrying.flaky").queue;
    let without = queue(&broker, "evt-src-flaky--plain.flaky").queue;
    assert_eq!(
        Queue {
            name: without.name.clone(),
            ..with_retry.clone()
        },
        without,
        "retry leaves the handler queue's flags and arguments alone"
    );
    assert!(with_retry.arguments.is_empty(), "{:?}", with_retry.arguments);
    // What Python Nameko declares for the same queue: durable, no arguments.
    broker
        .shared()
        .declare(&Topology::new().queue(Queue::durable("evt-src-flaky--retrying.flaky")))
        .await
        .expect("a Python-style declare of the handler queue");
    let retry_queue = queue(&broker, "evt-src-flaky--retrying.flaky.retry.2000ms").queue;
    assert!(retry_queue.durable && !retry_queue.auto_delete && !retry_queue.exclusive);
    assert_eq!(retry_queue.ttl(), Some(Duration::from_secs(2)));
    assert_eq!(
        retry_queue.dead_letter_target(),
        Some(("", Some("evt-src-flaky--retrying.flaky")))
    );
    assert_eq!(
        retry_queue.expires_after(),
        None,
        "a reliable handler's retry queues stay"
    );
    assert!(
        broker.list_bindings().iter().all(|b| !b.queue.contains(".retry.")),
        "retry queues are bound to nothing but the default exchange"
    );
    plain.stop().await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn x_death_and_the_retry_header_never_reach_the_context_nor_downstream() {
    let broker = MemoryBroker::new();
    let conn = broker.shared();
    let downstream = Topology::new()
        .exchange(Exchange::topic("retrying.events"))
        .queue(Queue::durable("downstream"))
        .binding(Binding::new("retrying.events", "downstream", "forwarded"));
    conn.declare(&downstream).await.unwrap();
    let mut forwarded = conn.consume("downstream", ConsumeOptions::prefetch(0)).await.unwrap();
    let (running, attempts, seen) = start(&broker).await;
    dispatch(&broker, "forward", json!({"n": 3})).await;
    let event = tokio::time::timeout(Duration::from_secs(60), forwarded.next())
        .await
        .expect("the forwarded event")
        .unwrap();
    assert_eq!(attempts.of("forward").len(), 2, "sent on by the retry");
    let keys = seen
        .all()
        .into_iter()
        .find(|(who, _)| who == "forward context")
        .unwrap()
        .1;
    let keys: Vec<String> = serde_json::from_value(keys).unwrap();
    assert!(keys.contains(&"user_id".to_owned()), "{keys:?}");
    assert!(
        !keys
            .iter()
            .any(|k| k.starts_with("x-") || k.contains("death") || k.contains("retry")),
        "only nameko.* headers become context: {keys:?}"
    );
    let names: Vec<&str> = event
        .properties
        .headers
        .as_ref()
        .unwrap()
        .iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("nameko.")),
        "downstream headers: {names:?}"
    );
    assert!(names.contains(&"nameko.user_id"));
    running.stop().await;
}

/// A connection whose publishes matching `exchange` and a routing-key fragment are
/// nacked the first `refuse` times.
#[derive(Debug)]
struct Refusing {
    inner: SharedBroker,
    exchange: &'static str,
    key_fragment: &'static str,
    refuse: AtomicUsize,
}

#[async_trait]
impl Broker for Refusing {
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
        if message.exchange == self.exchange
            && message.routing_key.contains(self.key_fragment)
            && self
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Ok(PublishOutcome::Nacked);
        }
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

async fn start_refusing(
    broker: &MemoryBroker,
    exchange: &'static str,
    key_fragment: &'static str,
) -> (nameko_core::RunningServices, Arc<Attempts>, Arc<crate::support::Seen>) {
    let attempts = Arc::new(Attempts::default());
    let seen = Arc::new(crate::support::Seen::default());
    let refusing: SharedBroker = Arc::new(Refusing {
        inner: broker.shared(),
        exchange,
        key_fragment,
        refuse: AtomicUsize::new(1),
    });
    let running = nameko_core::ServiceRunner::new(Config::default())
        .resource::<dyn Broker>(refusing)
        .resource(Arc::clone(&seen))
        .resource(Arc::clone(&attempts))
        .with_service::<Retrying>()
        .start()
        .await
        .unwrap();
    (running, attempts, seen)
}

#[tokio::test(start_paused = true)]
async fn a_refused_retry_publish_requeues_the_event() {
    let broker = MemoryBroker::new();
    let (running, attempts, seen) = start_refusing(&broker, "", ".retry.").await;
    dispatch(&broker, "flaky", json!({"n": 4})).await;
    eventually("the event is handled in the end", || seen.count("flaky done") == 1).await;
    let at = attempts.of("flaky");
    // Attempt 1 fails and its retry is refused: requeued, it runs again at once
    // (still a first attempt); that failure is retried after 1 s; then it succeeds.
    assert_eq!(at.len(), 3);
    assert!(at[1] - at[0] < Duration::from_millis(50), "requeued, not delayed");
    assert!(
        at[2] - at[1] >= Duration::from_secs(1),
        "then retried after the first delay"
    );
    assert!(all_settled(&broker, "evt-src-flaky--retrying.flaky"));
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_dead_letter_publish_requeues_the_event() {
    let broker = MemoryBroker::new();
    let mut dead = dead_letters(&broker).await;
    let (running, attempts, _) = start_refusing(&broker, "dead", "doomed").await;
    dispatch(&broker, "doomed", json!({"n": 5})).await;
    let letter = tokio::time::timeout(Duration::from_secs(60), dead.next())
        .await
        .expect("a dead letter")
        .unwrap();
    assert_eq!(
        attempts.of("doomed").len(),
        5,
        "the refused dead letter requeued the event: its last attempt ran again"
    );
    assert_eq!(header(&letter, ATTEMPTS_HEADER), Some(&FieldValue::I64(4)));
    assert_eq!(letter.ack().await.unwrap(), AckOutcome::Done);
    assert!(all_settled(&broker, "evt-src-doomed--retrying.doomed"));
    running.stop().await;
}

// ----- setup errors -----

deps!(Conflicting, ConflictingProviders { seen: Dep<crate::support::Seen> });

impl Service for Conflicting {
    const NAME: &'static str = "conflicting";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "both",
            EventHandler::<Value>::new("src", "x")
                .requeue_on_error(true)
                .retry(retry(1, "1s")),
            |w: Conflicting, body: Value| async move {
                w.seen.push("Conflicting", body);
                Ok::<_, RemoteError>(())
            },
        );
    }
}

deps!(BadBackoff, BadBackoffProviders { seen: Dep<crate::support::Seen> });

impl Service for BadBackoff {
    const NAME: &'static str = "bad_backoff";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "h",
            EventHandler::<Value>::new("src", "x").retry(Retry::new(
                2,
                Backoff::exponential(Duration::from_secs(2), Duration::from_secs(1)),
            )),
            |w: BadBackoff, body: Value| async move {
                w.seen.push("BadBackoff", body);
                Ok::<_, RemoteError>(())
            },
        );
    }
}

deps!(Unnamed, UnnamedProviders { seen: Dep<crate::support::Seen> });

impl Service for Unnamed {
    const NAME: &'static str = "unnamed";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "h",
            EventHandler::<Value>::new("src", "x").dead_letter(""),
            |w: Unnamed, body: Value| async move {
                w.seen.push("Unnamed", body);
                Ok::<_, RemoteError>(())
            },
        );
    }
}

#[tokio::test]
async fn conflicting_or_bad_options_fail_the_start_naming_the_handler() {
    let broker = MemoryBroker::new();
    let (r, _) = runner(&broker, "");
    let err = r.with_service::<Conflicting>().start().await.unwrap_err().to_string();
    assert!(
        err.contains("event handler `both`") && err.contains("`requeue_on_error` does not go with `retry`"),
        "{err}"
    );
    let (r, _) = runner(&broker, "");
    let err = r.with_service::<BadBackoff>().start().await.unwrap_err().to_string();
    assert!(
        err.contains("event handler `h`") && err.contains("shorter than the first"),
        "{err}"
    );
    let (r, _) = runner(&broker, "");
    let err = r.with_service::<Unnamed>().start().await.unwrap_err().to_string();
    assert!(err.contains("the dead-letter exchange has no name"), "{err}");
}
