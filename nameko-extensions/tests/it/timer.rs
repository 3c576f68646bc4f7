//! Timers: interval semantics on paused tokio time (first tick, eager, no overlap,
//! burst and skip, stop not cutting a tick, failing ticks), the cluster singleton on
//! the memory broker and on RabbitMQ, cron in real time (feature `cron`).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use nameko_core::{Entrypoints, Readiness, RemoteError, Service, ServiceContainer, deps::Dep};
use nameko_extensions::{
    broker::Broker,
    memory::MemoryBroker,
    timer::{MissedTicks, TimerEntrypoint},
};
use tokio::time::Instant;

use crate::support::deps;

/// What a timer's ticks did, in seconds since the log was made.
#[derive(Debug)]
pub(crate) struct Ticks {
    t0: Instant,
    /// How long each tick takes.
    work: Duration,
    starts: Mutex<Vec<f64>>,
    ends: Mutex<Vec<f64>>,
    active: AtomicUsize,
    most_active: AtomicUsize,
}

impl Ticks {
    pub(crate) fn new(work: Duration) -> Arc<Self> {
        Arc::new(Self {
            t0: Instant::now(),
            work,
            starts: Mutex::new(Vec::new()),
            ends: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            most_active: AtomicUsize::new(0),
        })
    }

    fn since(&self) -> f64 {
        (Instant::now() - self.t0).as_secs_f64()
    }

    /// Runs one tick: records its start, works, records its end. Returns the tick's
    /// number (from 1).
    async fn tick(&self) -> usize {
        let n = {
            let mut starts = self.starts.lock().unwrap();
            starts.push(self.since());
            starts.len()
        };
        let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_active.fetch_max(active, Ordering::SeqCst);
        tokio::time::sleep(self.work).await;
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.ends.lock().unwrap().push(self.since());
        n
    }

    pub(crate) fn starts(&self) -> Vec<f64> {
        self.starts.lock().unwrap().clone()
    }

    pub(crate) fn ends(&self) -> Vec<f64> {
        self.ends.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.starts.lock().unwrap().len()
    }

    fn most_active(&self) -> usize {
        self.most_active.load(Ordering::SeqCst)
    }
}

/// Declares a service `$svc` named `$name` whose method `tick` runs on `$timer`,
/// logging into the `Ticks` resource.
macro_rules! timer_service {
    ($svc:ident, $providers:ident, $name:literal, $timer:expr) => {
        deps!($svc, $providers { ticks: Dep<Ticks> });

        impl Service for $svc {
            const NAME: &'static str = $name;

            fn entrypoints(e: &mut Entrypoints<Self>) {
                e.add("tick", $timer, |w: $svc, ()| async move {
                    w.ticks.tick().await;
                    Ok::<_, RemoteError>(())
                });
            }
        }
    };
}

timer_service!(Lazy10, Lazy10Providers, "lazy10", TimerEntrypoint::every("10s"));
timer_service!(
    Eager10,
    Eager10Providers,
    "eager10",
    TimerEntrypoint::interval(Duration::from_secs(10)).eager(true)
);
timer_service!(Burst10, Burst10Providers, "burst10", TimerEntrypoint::every("10"));
timer_service!(
    Skip10,
    Skip10Providers,
    "skip10",
    TimerEntrypoint::every("10s").missed(MissedTicks::Skip)
);

async fn start<S: Service>(ticks: &Arc<Ticks>) -> ServiceContainer {
    ServiceContainer::builder::<S>()
        .resource(Arc::clone(ticks))
        .start()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_first_tick_comes_one_interval_after_start() {
    let ticks = Ticks::new(Duration::ZERO);
    let container = start::<Lazy10>(&ticks).await;
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(ticks.starts(), [10.0, 20.0, 30.0]);
    container.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_eager_timer_fires_at_start_too() {
    let ticks = Ticks::new(Duration::ZERO);
    let container = start::<Eager10>(&ticks).await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(ticks.starts(), [0.0, 10.0, 20.0]);
    container.stop().await;
}

#[tokio::test(start_paused = true)]
async fn burst_catches_up_after_an_overrun_without_overlap() {
    // Each tick takes 25 s on a 10 s schedule: the ticks due at 20, 30, 40 fire as soon
    // as the one before ends (Nameko's behaviour), never two at once.
    let ticks = Ticks::new(Duration::from_secs(25));
    let container = start::<Burst10>(&ticks).await;
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert_eq!(ticks.starts(), [10.0, 35.0, 60.0, 85.0]);
    assert_eq!(ticks.most_active(), 1);
    container.stop().await;
}

#[tokio::test(start_paused = true)]
async fn burst_fires_every_missed_tick_back_to_back() {
    // One long tick then short ones: the schedule (10, 20, 30, ...) catches up.
    let ticks = Ticks::new(Duration::ZERO);
    let long = Arc::new(AtomicUsize::new(0));
    deps!(Stall, StallProviders { ticks: Dep<Ticks>, long: Dep<AtomicUsize> });
    impl Service for Stall {
        const NAME: &'static str = "stall";
        fn entrypoints(e: &mut Entrypoints<Self>) {
            e.add("tick", TimerEntrypoint::every("10s"), |w: Stall, ()| async move {
                if w.long.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(35)).await;
                }
                w.ticks.tick().await;
                Ok::<_, RemoteError>(())
            });
        }
    }
    let container = ServiceContainer::builder::<Stall>()
        .resource(Arc::clone(&ticks))
        .resource(long)
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(52)).await;
    // The first tick (due 10) ends at 45; the ticks due 20, 30 and 40 follow at once,
    // then the one due at 50 on time.
    assert_eq!(ticks.starts(), [45.0, 45.0, 45.0, 45.0, 50.0]);
    container.stop().await;
}

#[tokio::test(start_paused = true)]
async fn skip_drops_the_ticks_missed_during_an_overrun() {
    let ticks = Ticks::new(Duration::from_secs(25));
    let container = start::<Skip10>(&ticks).await;
    tokio::time::sleep(Duration::from_secs(95)).await;
    // 10 → ends 35, the ticks due at 20 and 30 are dropped: 40 → ends 65: 70.
    assert_eq!(ticks.starts(), [10.0, 40.0, 70.0]);
    assert_eq!(ticks.most_active(), 1);
    container.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stop_waits_for_a_running_tick_and_fires_no_new_one() {
    let ticks = Ticks::new(Duration::from_secs(30));
    let container = start::<Lazy10>(&ticks).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(ticks.starts(), [10.0]);
    let asked = Instant::now();
    container.stop().await;
    // Stop returned when the tick (10 → 40) had ended, not before.
    assert_eq!(Instant::now() - asked, Duration::from_secs(25));
    assert_eq!(ticks.ends(), [40.0]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(ticks.count(), 1, "no tick after stop");
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_panicking_tick_does_not_stop_the_timer() {
    let ticks = Ticks::new(Duration::ZERO);
    deps!(Flaky, FlakyProviders { ticks: Dep<Ticks> });
    impl Service for Flaky {
        const NAME: &'static str = "flaky";
        fn entrypoints(e: &mut Entrypoints<Self>) {
            e.add("tick", TimerEntrypoint::every("1s"), |w: Flaky, ()| async move {
                match w.ticks.tick().await {
                    1 => Err(RemoteError::new("Broken", "the first tick fails")),
                    2 => panic!("the second tick panics"),
                    _ => Ok(()),
                }
            });
        }
    }
    let container = ServiceContainer::builder::<Flaky>()
        .resource(Arc::clone(&ticks))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(ticks.starts(), [1.0, 2.0, 3.0, 4.0]);
    container.stop().await;
}

#[tokio::test(start_paused = true)]
async fn bad_intervals_fail_setup_naming_the_method() {
    timer_service!(Bad, BadProviders, "bad", TimerEntrypoint::every("10 parsecs"));
    timer_service!(Zero, ZeroProviders, "zero", TimerEntrypoint::interval(Duration::ZERO));
    let ticks = Ticks::new(Duration::ZERO);
    let err = ServiceContainer::builder::<Bad>()
        .resource(Arc::clone(&ticks))
        .start()
        .await
        .unwrap_err();
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        chain.contains("service `bad`: timer `tick`: invalid timer interval `10 parsecs`: unknown unit"),
        "{chain}"
    );
    let err = ServiceContainer::builder::<Zero>()
        .resource(ticks)
        .start()
        .await
        .unwrap_err();
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(chain.contains("timer `tick`: the interval must not be zero"), "{chain}");
}

// ----- cluster singleton -----

timer_service!(
    Single,
    SingleProviders,
    "single",
    TimerEntrypoint::every("100ms").cluster_singleton(true)
);

/// Waits (real time, up to 20 s) until `check` holds.
pub(crate) async fn within_20s(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after 20 s waiting for: {what}");
}

/// The roles the timers report in `readiness`.
fn roles(readiness: &Readiness) -> Vec<String> {
    let report = readiness.report();
    assert!(report.is_ready(), "standing by is not a failure: {report:?}");
    report
        .parts()
        .filter(|(name, _)| name.starts_with("timer "))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// Two instances of `S` (timer `tick`, a cluster singleton), on `broker_a` and
/// `broker_b`: only one fires; when it stops, the other takes over.
pub(crate) async fn only_one_instance_fires<S: Service>(broker_a: Arc<dyn Broker>, broker_b: Arc<dyn Broker>) {
    let firing = format!("timer {}.tick (firing)", S::NAME);
    let standing_by = format!("timer {}.tick (standing by)", S::NAME);
    let (ticks_a, ticks_b) = (Ticks::new(Duration::ZERO), Ticks::new(Duration::ZERO));
    let (ready_a, ready_b) = (Readiness::new(), Readiness::new());
    let a = ServiceContainer::builder::<S>()
        .resource(Arc::clone(&ticks_a))
        .resource(Arc::new(ready_a.clone()))
        .resource::<dyn Broker>(broker_a)
        .start()
        .await
        .unwrap();
    within_20s("the first instance fires", || ticks_a.count() >= 3).await;
    let b = ServiceContainer::builder::<S>()
        .resource(Arc::clone(&ticks_b))
        .resource(Arc::new(ready_b.clone()))
        .resource::<dyn Broker>(broker_b)
        .start()
        .await
        .unwrap();
    let before = ticks_a.count();
    within_20s("the first instance goes on firing", || ticks_a.count() >= before + 5).await;
    assert_eq!(ticks_b.count(), 0, "the second instance stands by");
    assert_eq!(roles(&ready_a), std::slice::from_ref(&firing));
    assert_eq!(roles(&ready_b), [standing_by]);

    a.stop().await;
    let stopped_at = ticks_a.count();
    within_20s("the second instance takes over", || ticks_b.count() >= 3).await;
    assert_eq!(ticks_a.count(), stopped_at, "a stopped instance does not fire");
    assert_eq!(roles(&ready_b), [firing]);
    b.stop().await;
}

#[tokio::test]
async fn only_one_instance_fires_on_the_memory_broker() {
    let broker = MemoryBroker::new();
    only_one_instance_fires::<Single>(broker.shared(), broker.shared()).await;
    let leftover: Vec<_> = broker
        .list_queues()
        .into_iter()
        .filter(|q| q.queue.name.starts_with("timer-"))
        .collect();
    assert!(leftover.is_empty(), "the election queue is auto-delete: {leftover:?}");
}

/// Starts `Single` on `broker` with its own tick counter and readiness.
async fn single_on(broker: Arc<dyn Broker>) -> (ServiceContainer, Arc<Ticks>, Readiness) {
    let (ticks, readiness) = (Ticks::new(Duration::ZERO), Readiness::new());
    let container = ServiceContainer::builder::<Single>()
        .resource(Arc::clone(&ticks))
        .resource(Arc::new(readiness.clone()))
        .resource::<dyn Broker>(broker)
        .start()
        .await
        .unwrap();
    (container, ticks, readiness)
}

#[tokio::test]
async fn a_lone_singleton_fires_again_after_its_connection_recovers() {
    // The election queue is auto-delete: losing its only consumer's connection deletes
    // it with its token, as a RabbitMQ restart would. After recovery the instance puts
    // a token back and fires again.
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    let (container, ticks, readiness) = single_on(Arc::new(connection.clone())).await;
    within_20s("the instance fires", || ticks.count() >= 3).await;

    connection.sever();
    let lost_at = ticks.count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(ticks.count() <= lost_at + 1, "no firing without a connection");
    connection.reconnect().unwrap();
    within_20s("the instance fires again after recovery", || {
        ticks.count() >= lost_at + 3
    })
    .await;
    assert_eq!(roles(&readiness), ["timer single.tick (firing)"]);
    container.stop().await;
}

#[tokio::test]
async fn after_a_connection_loss_one_instance_fires_and_the_spare_token_is_dropped() {
    let broker = MemoryBroker::new();
    let (conn_a, conn_b) = (broker.connect(), broker.connect());
    let (a, ticks_a, _) = single_on(Arc::new(conn_a.clone())).await;
    within_20s("the first instance fires", || ticks_a.count() >= 3).await;
    let (b, ticks_b, ready_b) = single_on(Arc::new(conn_b.clone())).await;

    // The firer's connection goes: its token returns to the queue and the other
    // instance takes over.
    conn_a.sever();
    within_20s("the second instance takes over", || ticks_b.count() >= 3).await;
    // The first comes back and puts a token back; the firer drops it as surplus, so
    // one instance fires, and one token is left (held by the firer).
    conn_a.reconnect().unwrap();
    let (from_a, from_b) = (ticks_a.count(), ticks_b.count());
    within_20s("the second instance goes on firing", || ticks_b.count() >= from_b + 5).await;
    assert_eq!(ticks_a.count(), from_a, "the recovered instance stands by");
    assert_eq!(roles(&ready_b), ["timer single.tick (firing)"]);
    let queue = broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == "timer-single.tick")
        .expect("the election queue");
    assert_eq!(queue.ready, 0, "the spare token was acknowledged away: {queue:?}");
    assert_eq!(queue.unacked, 1, "the firer holds one token: {queue:?}");

    // And the token still moves on a graceful stop.
    b.stop().await;
    within_20s("the recovered instance takes over", || ticks_a.count() >= from_a + 3).await;
    a.stop().await;
}

#[tokio::test]
async fn the_election_queue_is_named_and_flagged_as_documented() {
    let broker = MemoryBroker::new();
    let ticks = Ticks::new(Duration::ZERO);
    let container = ServiceContainer::builder::<Single>()
        .resource(ticks)
        .resource::<dyn Broker>(broker.shared())
        .start()
        .await
        .unwrap();
    let queues = broker.list_queues();
    let queue = queues
        .iter()
        .find(|q| q.queue.name == "timer-single.tick")
        .unwrap_or_else(|| panic!("no election queue in {queues:?}"));
    assert!(queue.queue.is_single_active_consumer());
    assert!(queue.queue.auto_delete && !queue.queue.durable && !queue.queue.exclusive);
    container.stop().await;
}

#[cfg(feature = "amqp")]
mod rabbitmq {
    use std::sync::Arc;

    use nameko_core::{Entrypoints, RemoteError, Service, deps::Dep};
    use nameko_extensions::{
        amqp::{AmqpBroker, AmqpOptions},
        broker::Broker,
        timer::TimerEntrypoint,
    };

    use super::Ticks;
    use crate::support::{deps, rabbitmq};

    // A name no other test uses; the election queue is auto-delete.
    timer_service!(
        RmqSingle,
        RmqSingleProviders,
        "timer_rmq_single",
        TimerEntrypoint::every("100ms").cluster_singleton(true)
    );

    #[tokio::test]
    async fn only_one_instance_fires_on_rabbitmq() {
        let Some(uri) = rabbitmq().await else { return };
        // Each instance has a connection of its own, as two processes would.
        let connect = || AmqpBroker::connect(&uri, AmqpOptions::new("nameko-rs timer test"));
        let (a, b) = (Arc::new(connect().await.unwrap()), Arc::new(connect().await.unwrap()));
        super::only_one_instance_fires::<RmqSingle>(a.clone(), b.clone()).await;
        a.close().await;
        b.close().await;
    }
}

#[cfg(feature = "cron")]
mod cron {
    use std::{sync::Arc, time::Duration};

    use nameko_core::{Entrypoints, RemoteError, Service, ServiceContainer, deps::Dep};
    use nameko_extensions::timer::TimerEntrypoint;

    use super::{Ticks, within_20s};
    use crate::support::deps;

    timer_service!(
        Every,
        EveryProviders,
        "every_second",
        TimerEntrypoint::cron("*/1 * * * * *")
    );
    timer_service!(
        Paris,
        ParisProviders,
        "paris",
        TimerEntrypoint::cron("*/1 * * * * *").tz("Europe/Paris")
    );

    #[tokio::test]
    async fn a_cron_timer_fires_every_second_and_skips_while_a_tick_runs() {
        // Ticks take 1.5 s on a one-second schedule: the ticks that fall while one
        // runs are skipped, so none overlaps.
        let ticks = Ticks::new(Duration::from_millis(1500));
        let container = ServiceContainer::builder::<Every>()
            .resource(Arc::clone(&ticks))
            .start()
            .await
            .unwrap();
        within_20s("three cron ticks", || ticks.ends().len() >= 3).await;
        container.stop().await;
        let (starts, ends) = (ticks.starts(), ticks.ends());
        assert_eq!(starts.len(), ends.len(), "stop waited for the running tick");
        assert_eq!(ticks.most_active(), 1);
        for (next_start, end) in starts.iter().skip(1).zip(&ends) {
            assert!(
                next_start >= end,
                "a tick started before the previous ended: {starts:?} {ends:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_cron_timer_in_a_time_zone_fires() {
        let ticks = Ticks::new(Duration::ZERO);
        let container = ServiceContainer::builder::<Paris>()
            .resource(Arc::clone(&ticks))
            .start()
            .await
            .unwrap();
        within_20s("two cron ticks", || ticks.count() >= 2).await;
        container.stop().await;
        let starts = ticks.starts();
        // Once a second at most (the tolerance is the scheduler's own 500 ms poll).
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= 0.4, "two ticks within one second: {starts:?}");
        }
    }

    #[tokio::test]
    async fn bad_cron_expressions_and_zones_fail_setup_naming_the_method() {
        timer_service!(
            BadCron,
            BadCronProviders,
            "bad_cron",
            TimerEntrypoint::cron("*/5 * * * *")
        );
        timer_service!(
            BadZone,
            BadZoneProviders,
            "bad_zone",
            TimerEntrypoint::cron("0 * * * * *").tz("Mars/Olympus")
        );
        let chain = |err: &dyn std::error::Error| {
            std::iter::successors(Some(err), |e| e.source())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ")
        };
        let ticks = Ticks::new(Duration::ZERO);
        let err = ServiceContainer::builder::<BadCron>()
            .resource(Arc::clone(&ticks))
            .start()
            .await
            .unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains("service `bad_cron`: timer `tick`: invalid cron expression `*/5 * * * *`"),
            "{text}"
        );
        let err = ServiceContainer::builder::<BadZone>()
            .resource(ticks)
            .start()
            .await
            .unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains("service `bad_zone`: timer `tick`: unknown time zone `Mars/Olympus`"),
            "{text}"
        );
    }
}
