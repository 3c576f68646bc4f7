//! The graceful stop of DESIGN §5, as a process against RabbitMQ: SIGTERM with 200
//! slow calls in flight (and 50 more waiting in the queue) answers every delivered
//! one and leaves nothing unacknowledged; a second SIGTERM kills at once; a hung
//! handler is cut at `--stop-timeout` and its request goes back to the queue. And
//! reliable delivery across `kill -9`: the events a killed process had not
//! acknowledged are redelivered, so after a restart every event has been handled.

mod common;

use std::time::{Duration, Instant};

use common::Service;
use nameko::rpc::ClusterRpc;
use nameko_testing::RabbitMq;
use serde_json::json;

/// The binary running `args` against the test's RabbitMQ, logging at INFO.
fn start(rabbit: &RabbitMq, args: &[&str]) -> Service {
    Service::start(&rabbit.url(), rabbit.rpc_exchange(), args, "info")
}

/// The ids of the `recorded <id>` lines `service` logged so far.
fn recorded(service: &Service) -> Vec<u64> {
    service
        .log()
        .iter()
        .filter_map(|line| line.rsplit_once("recorded ").and_then(|(_, id)| id.trim().parse().ok()))
        .collect()
}

/// Waits (10 s at most) until `queue` has `ready` messages and no consumer: RabbitMQ
/// returns what a closed connection left unacknowledged a moment after it closes.
async fn wait_for_ready(rabbit: &RabbitMq, queue: &str, ready: u32, log: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = rabbit.queue_counts(queue).await.unwrap().expect("the queue is durable");
        if (counts.ready, counts.consumers) == (ready, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {} ready and {} consumers, expected {ready} and 0; log: {log:#?}",
            counts.ready,
            counts.consumers
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_call_in_flight_and_leaves_nothing_unacked() {
    /// In flight: `max_workers` and the prefetch.
    const CALLS: usize = 200;
    /// Beyond the prefetch: never delivered, they wait in the queue.
    const QUEUED: usize = 50;
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    rabbit.claim_service("slow");
    let mut service = start(&rabbit, &["slow", "--define", "max_workers=200"]);
    rabbit
        .wait_for_consumers("rpc-slow", 1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; log: {:#?}", service.log()));
    let client = ClusterRpc::connect(rabbit.broker(), &rabbit.config(json!(null)))
        .await
        .unwrap();
    rabbit.claim_queue(client.client().reply_queue());
    let mut replies = Vec::new();
    for _ in 0..CALLS + QUEUED {
        replies.push(client.call_async("slow", "sleep", json!([2000])).await.unwrap());
    }
    // 200 calls have started their workers; the other 50 wait in the queue.
    service.wait_for_lines("sleeping 2000 ms", CALLS).await;
    service.signal("TERM");
    let queued = replies.split_off(CALLS);

    for reply in replies {
        assert_eq!(reply.result().await.unwrap(), json!(2000), "log: {:#?}", service.log());
    }
    assert_eq!(service.exit_code().await, Some(0), "log: {:#?}", service.log());
    let log = service.log();
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("waiting for {CALLS} worker(s) to finish, deadline in 30.0s"))),
        "{log:#?}"
    );
    assert!(log.iter().any(|l| l.contains("every service stopped")), "{log:#?}");
    assert_eq!(
        log.iter().filter(|l| l.contains("sleeping 2000 ms")).count(),
        CALLS,
        "only the delivered calls ran; log: {log:#?}"
    );
    // The process is gone, so anything it left unacknowledged would be ready again:
    // only the 50 never delivered are.
    wait_for_ready(&rabbit, "rpc-slow", QUEUED as u32, &log).await;
    drop(queued);
    client.client().stop().await;
    rabbit.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_is_cut_at_the_deadline_and_its_request_requeued() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    rabbit.claim_service("hung");
    let mut service = start(&rabbit, &["hung", "--stop-timeout", "1"]);
    rabbit
        .wait_for_consumers("rpc-hung", 1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; log: {:#?}", service.log()));
    let client = ClusterRpc::connect(rabbit.broker(), &rabbit.config(json!(null)))
        .await
        .unwrap();
    rabbit.claim_queue(client.client().reply_queue());
    let reply = client.call_async("hung", "hang", json!([])).await.unwrap();
    service.wait_for_lines("hanging", 1).await;

    let signalled = Instant::now();
    service.signal("TERM");
    // `run` exits 1 after a kill (the CLI's documented exit codes).
    assert_eq!(service.exit_code().await, Some(1), "log: {:#?}", service.log());
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}; log: {:#?}",
        service.log()
    );
    let log = service.log();
    assert!(
        log.iter()
            .any(|l| l.contains("waiting for 1 worker(s) to finish, deadline in 1.0s")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("stop deadline of 1.0s reached with 1 worker(s) still running: killing")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("killed before they could stop gracefully")),
        "{log:#?}"
    );
    // The request was never acknowledged: RabbitMQ has it ready for another instance.
    wait_for_ready(&rabbit, "rpc-hung", 1, &log).await;
    drop(reply);
    client.client().stop().await;
    rabbit.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_kills_at_once() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    rabbit.claim_service("stubborn");
    let mut service = start(&rabbit, &["stubborn", "--stop-timeout", "60"]);
    rabbit
        .wait_for_consumers("rpc-stubborn", 1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; log: {:#?}", service.log()));
    let client = ClusterRpc::connect(rabbit.broker(), &rabbit.config(json!(null)))
        .await
        .unwrap();
    rabbit.claim_queue(client.client().reply_queue());
    let reply = client.call_async("stubborn", "hang", json!([])).await.unwrap();
    service.wait_for_lines("hanging", 1).await;

    service.signal("TERM");
    service
        .wait_for_lines("waiting for 1 worker(s) to finish, deadline in 60.0s", 1)
        .await;
    let signalled = Instant::now();
    service.signal("TERM");
    assert_eq!(service.exit_code().await, Some(1), "log: {:#?}", service.log());
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}; log: {:#?}", service.log());
    let log = service.log();
    assert!(log.iter().any(|l| l.contains("received again: killing")), "{log:#?}");
    wait_for_ready(&rabbit, "rpc-stubborn", 1, &log).await;
    drop(reply);
    client.client().stop().await;
    rabbit.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_and_a_restart_every_event_is_handled() {
    use std::collections::BTreeSet;

    use nameko::broker::{Headers, Properties, Publish, PublishOutcome};

    const EVENTS: u64 = 400;
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    rabbit.claim_service("ledger");
    rabbit.claim_service("ledger_source");
    let queue = "evt-ledger_source-entry--ledger.record";
    // A first run declares the queue; the events wait in it for the next.
    let mut declaring = start(&rabbit, &["ledger"]);
    rabbit
        .wait_for_consumers(queue, 1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; log: {:#?}", declaring.log()));
    declaring.signal("TERM");
    assert_eq!(declaring.exit_code().await, Some(0), "log: {:#?}", declaring.log());
    let broker = rabbit.broker();
    for id in 0..EVENTS {
        let outcome = broker
            .publish(Publish {
                exchange: "ledger_source.events".into(),
                routing_key: "entry".into(),
                mandatory: true,
                properties: Properties::json(Headers::new()),
                body: id.to_string().into(),
            })
            .await
            .unwrap();
        assert_eq!(outcome, PublishOutcome::Routed);
    }
    let mut first = start(&rabbit, &["ledger", "--define", "max_workers=4"]);
    first.wait_for_lines("recorded ", 40).await;
    first.signal("KILL");
    assert_eq!(first.exit_code().await, None, "killed by a signal");
    let before: BTreeSet<u64> = recorded(&first).into_iter().collect();
    assert!(
        before.len() < EVENTS as usize,
        "the kill fell while events were waiting"
    );

    let mut second = start(&rabbit, &["ledger", "--define", "max_workers=4"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let handled: BTreeSet<u64> = before.iter().copied().chain(recorded(&second)).collect();
        if handled.len() == EVENTS as usize {
            assert_eq!(handled, (0..EVENTS).collect::<BTreeSet<_>>());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events handled after the restart; log: {:#?}",
            handled.len(),
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // At least once: what was in flight at the kill ran again (never more than the
    // prefetch of a consumer, here `max_workers`).
    let again = recorded(&second).iter().filter(|id| before.contains(id)).count();
    assert!(again <= 4, "{again} events handled twice");
    second.signal("TERM");
    assert_eq!(second.exit_code().await, Some(0), "log: {:#?}", second.log());
    wait_for_ready(&rabbit, queue, 0, &second.log()).await;
    rabbit.cleanup().await.unwrap();
}
