//! Delivery guarantees seen from services, on the memory broker and on RabbitMQ:
//! reliable event handlers lose nothing across a connection loss (unacknowledged
//! events are redelivered) and handle every event exactly once across a graceful stop
//! and a start; an RPC call on a stalled connection ends at its timeout, and a request
//! whose caller gave up is not run when a service comes back (`expiration`).

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use nameko_core::{Config, Entrypoints, RemoteError, RunningServices, Service, ServiceRunner, deps::Dep};
use nameko_extensions::{
    broker::{Broker, Headers, Properties, Publish, PublishOutcome, SharedBroker},
    context::edge_context,
    events::{EventHandler, events_exchange},
    memory::MemoryBroker,
    rpc::{Param, RpcArgs, RpcClient, RpcEntrypoint, RpcError},
};
use serde_json::{Value, json};

use crate::support::{Seen, deps, eventually};

/// How many events each scenario publishes.
const EVENTS: u64 = 300;

/// A service recording every `event_type` event of `source` it handles, a little
/// slowly, so that a loss or a stop falls while events are in flight. No service
/// `source` runs: the tests publish its events themselves; each ledger has a source of
/// its own, so a test deletes its exchange without disturbing another.
macro_rules! ledger {
    ($svc:ident, $providers:ident, $name:literal, $source:literal, $event_type:literal) => {
        deps!($svc, $providers { seen: Dep<Seen> });

        impl Service for $svc {
            const NAME: &'static str = $name;

            fn entrypoints(e: &mut Entrypoints<Self>) {
                e.add(
                    "record",
                    EventHandler::<u64>::new($source, $event_type),
                    |w: $svc, id: u64| async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        w.seen.push("record", json!(id));
                        Ok::<_, RemoteError>(())
                    },
                );
            }
        }

        impl $svc {
            const SOURCE: &'static str = $source;
            const EVENT_TYPE: &'static str = $event_type;

            fn queue() -> String {
                format!("evt-{}-{}--{}.record", $source, $event_type, $name)
            }
        }
    };
}

ledger!(
    LossLedger,
    LossLedgerProviders,
    "delivery_loss",
    "delivery_loss_source",
    "through_loss"
);
ledger!(
    StopLedger,
    StopLedgerProviders,
    "delivery_stop",
    "delivery_stop_source",
    "through_stop"
);

/// Publishes events `0..EVENTS` of `source` and type `event_type` (confirmed, routed).
async fn publish_events(broker: &dyn Broker, source: &str, event_type: &str) {
    for id in 0..EVENTS {
        let outcome = broker
            .publish(Publish {
                exchange: events_exchange(source),
                routing_key: event_type.to_owned(),
                mandatory: true,
                properties: Properties::json(Headers::new()),
                body: Bytes::from(id.to_string()),
            })
            .await
            .expect("a publish");
        assert_eq!(outcome, PublishOutcome::Routed, "event {id}");
    }
}

/// Waits (30 s at most: recovery takes a while on a busy machine) until every event
/// was handled at least once.
async fn wait_for_every_event(seen: &Seen) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let handled = handled(seen);
        if handled.len() == EVENTS as usize {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {EVENTS} events handled in 30 s; missing: {:?}",
            handled.len(),
            (0..EVENTS).filter(|id| !handled.contains_key(id)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many times each id was handled.
fn handled(seen: &Seen) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for (_, id) in seen.all() {
        *counts.entry(id.as_u64().expect("an id")).or_insert(0) += 1;
    }
    counts
}

fn runner_on(broker: &SharedBroker, seen: &Arc<Seen>, config: &str) -> ServiceRunner {
    ServiceRunner::new(Config::from_yaml_str(config).unwrap())
        .resource::<dyn Broker>(Arc::clone(broker))
        .resource(Arc::clone(seen))
        .stop_timeout(Duration::from_secs(10))
}

/// Events flow to a reliable handler while the service's connection is lost and
/// restored: every event is handled at least once (the ones in flight at the loss are
/// redelivered).
async fn no_event_is_lost_across_a_connection_loss<S, R>(
    service_broker: SharedBroker,
    publisher: SharedBroker,
    sever: impl Fn() -> S,
    restore: impl Fn() -> R,
) where
    S: Future<Output = ()>,
    R: Future<Output = ()>,
{
    let seen = Arc::new(Seen::default());
    let start = || async {
        runner_on(&service_broker, &seen, "max_workers: 4\n")
            .with_service::<LossLedger>()
            .start()
            .await
            .expect("the service starts")
    };
    // Started and stopped once: its queue is there to take the events.
    start().await.stop().await;
    publish_events(&*publisher, LossLedger::SOURCE, LossLedger::EVENT_TYPE).await;
    let running = start().await;
    eventually("some events handled", || seen.count("record") >= 30).await;
    sever().await;
    let at_loss = seen.count("record");
    assert!(at_loss < EVENTS as usize, "the loss fell while events were waiting");
    tokio::time::sleep(Duration::from_millis(300)).await;
    restore().await;
    wait_for_every_event(&seen).await;
    let counts = handled(&seen);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..EVENTS).collect::<Vec<_>>()
    );
    running.stop().await;
    let _ = publisher.delete_queue(&LossLedger::queue()).await;
    let _ = publisher.delete_exchange(&events_exchange(LossLedger::SOURCE)).await;
}

/// A graceful stop while events are in flight, then a start: each event is handled
/// exactly once — what ran was acknowledged, what did not went back to the queue.
async fn every_event_is_handled_once_across_a_graceful_stop(broker: SharedBroker) {
    let seen = Arc::new(Seen::default());
    let start = || async {
        runner_on(&broker, &seen, "max_workers: 4\n")
            .with_service::<StopLedger>()
            .start()
            .await
            .expect("the service starts")
    };
    // Started and stopped once: its queue is there to take the events.
    start().await.stop().await;
    publish_events(&*broker, StopLedger::SOURCE, StopLedger::EVENT_TYPE).await;
    let running: RunningServices = start().await;
    eventually("some events handled", || seen.count("record") >= 30).await;
    running.stop().await;
    let before_restart = seen.count("record");
    assert!(
        before_restart < EVENTS as usize,
        "the stop fell while events were waiting ({before_restart} handled)"
    );
    let running = start().await;
    wait_for_every_event(&seen).await;
    // Nothing more arrives: no event was handled twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let twice: Vec<_> = handled(&seen).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(handled(&seen).len(), EVENTS as usize);
    running.stop().await;
    let _ = broker.delete_queue(&StopLedger::queue()).await;
    let _ = broker.delete_exchange(&events_exchange(StopLedger::SOURCE)).await;
}

/// A service echoing its argument and recording it.
macro_rules! echo {
    ($svc:ident, $providers:ident, $name:literal) => {
        deps!($svc, $providers { seen: Dep<Seen> });

        impl Service for $svc {
            const NAME: &'static str = $name;

            fn entrypoints(e: &mut Entrypoints<Self>) {
                e.add("record", RpcEntrypoint::<RpcArgs, Value>::new(), |w: $svc, args: RpcArgs| async move {
                    let arg = args.bind("record", &[Param::required("arg")])?.remove(0);
                    w.seen.push("record", arg.clone());
                    Ok::<_, RemoteError>(arg)
                });
            }
        }
    };
}

echo!(Stale, StaleProviders, "delivery_stale");
echo!(Stall, StallProviders, "delivery_stall");

/// A call whose caller timed out while the service was down is not run when the
/// service comes back: the request carries its timeout as `expiration`.
async fn a_request_whose_caller_gave_up_is_not_run(broker: SharedBroker, exchange: &str) {
    let seen = Arc::new(Seen::default());
    let config = format!("rpc_exchange: {exchange}\n");
    let start = || async {
        runner_on(&broker, &seen, &config)
            .with_service::<Stale>()
            .start()
            .await
            .expect("the service starts")
    };
    // Started and stopped once: its queue is there, nobody consumes it.
    start().await.stop().await;
    let client = RpcClient::start(Arc::clone(&broker), exchange, "delivery_test", None)
        .await
        .expect("a client");
    let call = |arg: &'static str, timeout: Duration| {
        let client = client.clone();
        async move {
            client
                .call(
                    Stale::NAME,
                    "record",
                    RpcArgs::positional([json!(arg)]),
                    &edge_context(),
                    Some(timeout),
                )
                .await
        }
    };
    match call("stale", Duration::from_millis(300)).await {
        Err(RpcError::Timeout { target, after }) => {
            assert_eq!(
                (target.as_str(), after),
                ("delivery_stale.record", Duration::from_millis(300))
            );
        }
        other => panic!("expected a timeout while the service is down, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = start().await;
    assert_eq!(
        call("fresh", Duration::from_secs(20)).await.expect("a fresh call"),
        json!("fresh")
    );
    // Calls are served in order: had the stale one been run, it would be seen by now.
    assert_eq!(seen.all(), vec![("record".to_owned(), json!("fresh"))]);
    client.stop().await;
    running.stop().await;
    let _ = broker.delete_queue(client.reply_queue()).await;
    let _ = broker.delete_queue(&format!("rpc-{}", Stale::NAME)).await;
    let _ = broker.delete_exchange(exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_no_event_is_lost_across_a_connection_loss() {
    let memory = MemoryBroker::new();
    let connection = memory.connect();
    no_event_is_lost_across_a_connection_loss(
        Arc::new(connection.clone()),
        memory.shared(),
        || async { connection.sever() },
        || async { connection.reconnect().expect("reconnects") },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_every_event_is_handled_once_across_a_graceful_stop() {
    every_event_is_handled_once_across_a_graceful_stop(MemoryBroker::new().shared()).await;
}

#[tokio::test]
async fn memory_a_request_whose_caller_gave_up_is_not_run() {
    a_request_whose_caller_gave_up_is_not_run(MemoryBroker::new().shared(), "nameko-rpc").await;
}

#[cfg(feature = "amqp")]
mod rabbitmq {
    use std::{sync::Arc, time::Duration};

    use nameko_core::{Config, Service as _, ServiceRunner};
    use nameko_extensions::{
        amqp::{AmqpBroker, AmqpOptions},
        broker::{Broker, SharedBroker},
        context::edge_context,
        rpc::{RpcArgs, RpcClient, RpcError},
    };
    use serde_json::json;

    use crate::{proxy::Proxy, support::Seen};

    async fn direct(name: &str) -> Option<(nameko_extensions::amqp::AmqpUri, SharedBroker)> {
        let uri = crate::support::rabbitmq().await?;
        let broker = AmqpBroker::connect(&uri, AmqpOptions::new(name))
            .await
            .expect("a connection");
        Some((uri, Arc::new(broker)))
    }

    /// Also a regression test for lapin's I/O loop waiting forever on a socket that broke
    /// while acknowledgements were being written (the guarded stream wakes it: see
    /// `amqp::guard`): before that, about one run in four never resumed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_no_event_is_lost_across_a_connection_loss() {
        let Some((uri, publisher)) = direct("nameko-rs delivery test publisher").await else {
            return;
        };
        let proxy = Arc::new(Proxy::start(format!("{}:{}", uri.host(), uri.port())).await);
        let through = uri.with_address("127.0.0.1", proxy.port());
        let service: SharedBroker = Arc::new(
            AmqpBroker::connect(&through, AmqpOptions::new("nameko-rs delivery test service"))
                .await
                .expect("a connection"),
        );
        super::no_event_is_lost_across_a_connection_loss(
            Arc::clone(&service),
            Arc::clone(&publisher),
            || async { proxy.down() },
            || async { proxy.up().await },
        )
        .await;
        service.close().await;
        publisher.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_every_event_is_handled_once_across_a_graceful_stop() {
        let Some((_, broker)) = direct("nameko-rs delivery stop test").await else {
            return;
        };
        super::every_event_is_handled_once_across_a_graceful_stop(Arc::clone(&broker)).await;
        broker.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_a_request_whose_caller_gave_up_is_not_run() {
        let Some((_, broker)) = direct("nameko-rs delivery stale test").await else {
            return;
        };
        let exchange = format!("delivery-stale-{}", uuid::Uuid::new_v4().simple());
        super::a_request_whose_caller_gave_up_is_not_run(Arc::clone(&broker), &exchange).await;
        broker.close().await;
    }

    /// While the broker's side of the connection stalls (nothing it sends arrives, the
    /// loss not detected yet), a call still ends at its timeout: its publish waits for a
    /// confirm that does not come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_a_call_on_a_stalled_connection_ends_at_its_timeout() {
        let Some((uri, direct)) = direct("nameko-rs stall test service").await else {
            return;
        };
        let exchange = format!("delivery-stall-{}", uuid::Uuid::new_v4().simple());
        let seen = Arc::new(Seen::default());
        let running = ServiceRunner::new(Config::from_yaml_str(&format!("rpc_exchange: {exchange}\n")).unwrap())
            .resource::<dyn Broker>(Arc::clone(&direct))
            .resource(Arc::clone(&seen))
            .with_service::<super::Stall>()
            .start()
            .await
            .expect("the service starts");
        let proxy = Proxy::start(format!("{}:{}", uri.host(), uri.port())).await;
        let through = uri.with_address("127.0.0.1", proxy.port());
        let caller: SharedBroker = Arc::new(
            AmqpBroker::connect(&through, AmqpOptions::new("nameko-rs stall test caller"))
                .await
                .expect("a connection"),
        );
        let client = RpcClient::start(Arc::clone(&caller), &exchange, "stall_test", None)
            .await
            .expect("a client");
        let call = |arg: &'static str| {
            let client = client.clone();
            async move {
                client
                    .call(
                        super::Stall::NAME,
                        "record",
                        RpcArgs::positional([json!(arg)]),
                        &edge_context(),
                        Some(Duration::from_millis(500)),
                    )
                    .await
            }
        };
        assert_eq!(call("before").await.expect("a call before the stall"), json!("before"));
        proxy.hold();
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), call("stalled"))
            .await
            .expect("the call ends, not hangs");
        assert!(matches!(result, Err(RpcError::Timeout { .. })), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "ended after {:?}",
            started.elapsed()
        );
        running.stop().await;
        proxy.down();
        let _ = direct.delete_queue(client.reply_queue()).await;
        let _ = direct.delete_queue(&format!("rpc-{}", super::Stall::NAME)).await;
        let _ = direct.delete_exchange(&exchange).await;
        caller.close().await;
        direct.close().await;
    }
}
