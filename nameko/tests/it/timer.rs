//! `#[timer]` through the macro: interval forms, eager, missed ticks, singleton; the
//! harness's `fire_timer` with replaced dependencies; cron with the `cron` feature.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use nameko::core::{Provider, deps::Dep};
use nameko_testing::{FireTimerError, ServiceHarness};

/// Counts ticks per method.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    every: AtomicUsize,
    eager: AtomicUsize,
    half: AtomicUsize,
}

#[derive(nameko::Dependencies)]
pub(crate) struct Clock {
    counts: Dep<Counts>,
}

#[derive(Debug, thiserror::Error, nameko::RemoteError)]
#[error("clock broke")]
pub(crate) struct ClockError;

#[nameko::service(name = "clock")]
impl Clock {
    #[timer(interval = "10s")]
    async fn every(&self) -> Result<(), ClockError> {
        self.counts.every.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[timer(interval = 30, eager = true, missed = "skip")]
    async fn eager(&self) -> Result<u32, ClockError> {
        // The tick's value is dropped.
        Ok(self.counts.eager.fetch_add(1, Ordering::SeqCst) as u32)
    }

    #[timer(interval = 0.5, missed = "burst")]
    async fn half(&self) -> Result<(), ClockError> {
        self.counts.half.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[rpc]
    async fn not_a_timer(&self) -> Result<(), ClockError> {
        Err(ClockError)
    }
}

#[tokio::test(start_paused = true)]
async fn macro_timers_follow_their_schedules() {
    let counts = Arc::new(Counts::default());
    let harness = ServiceHarness::builder::<Clock>()
        .resource(Arc::clone(&counts))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30_250)).await;
    assert_eq!(counts.every.load(Ordering::SeqCst), 3, "10, 20, 30");
    assert_eq!(counts.eager.load(Ordering::SeqCst), 2, "0 and 30");
    assert_eq!(counts.half.load(Ordering::SeqCst), 60, "every half second");
    harness.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_harness_fires_a_tick_with_replaced_dependencies() {
    let counts = Arc::new(Counts::default());
    let replaced = Arc::new(Counts::default());
    let harness = ServiceHarness::builder::<Clock>()
        .resource(Arc::clone(&counts))
        .providers({
            let replaced = Arc::clone(&replaced);
            move |p| p.counts = Provider::fixed(Dep::from_arc(replaced))
        })
        .manual_timers()
        .start()
        .await
        .unwrap();
    harness.fire_timer("every").await.unwrap();
    harness.fire_timer("every").await.unwrap();
    // Manual timers: an hour passes and the schedules fire nothing, not even `eager`.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(replaced.every.load(Ordering::SeqCst), 2);
    assert_eq!(replaced.eager.load(Ordering::SeqCst), 0);
    assert_eq!(replaced.half.load(Ordering::SeqCst), 0);
    assert_eq!(counts.every.load(Ordering::SeqCst), 0, "the resource was replaced");

    let err = harness.fire_timer("not_a_timer").await.unwrap_err();
    assert!(matches!(err, FireTimerError::NotATimer { .. }));
    assert_eq!(
        err.to_string(),
        "service `clock` has no timer `not_a_timer`; its timers: every, eager, half"
    );
    harness.stop().await;
}

#[derive(nameko::Dependencies)]
pub(crate) struct Lonely {
    counts: Dep<Counts>,
}

#[nameko::service(name = "lonely")]
impl Lonely {
    #[timer(interval = "100ms", cluster_singleton = true)]
    async fn every(&self) -> Result<(), ClockError> {
        self.counts.every.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn a_macro_singleton_fires_on_one_of_two_harnesses() {
    let broker = nameko::memory::MemoryBroker::new();
    let (a, b) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
    let first = ServiceHarness::builder::<Lonely>()
        .resource(Arc::clone(&a))
        .broker(broker.clone())
        .start()
        .await
        .unwrap();
    let second = ServiceHarness::builder::<Lonely>()
        .resource(Arc::clone(&b))
        .broker(broker.clone())
        .start()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.every.load(Ordering::SeqCst) + b.every.load(Ordering::SeqCst) < 10 {
        assert!(tokio::time::Instant::now() < deadline, "no ticks within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ta, tb) = (a.every.load(Ordering::SeqCst), b.every.load(Ordering::SeqCst));
    assert!(ta == 0 || tb == 0, "both instances fired: {ta} and {tb}");
    first.stop().await;
    second.stop().await;
}

#[cfg(feature = "cron")]
mod cron {
    use super::*;

    #[derive(nameko::Dependencies)]
    pub(crate) struct Cron {
        counts: Dep<Counts>,
    }

    #[nameko::service(name = "cron_clock")]
    impl Cron {
        #[timer(cron = "*/1 * * * * *", tz = "Europe/Paris")]
        async fn every(&self) -> Result<(), ClockError> {
            self.counts.every.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_macro_cron_timer_fires() {
        let counts = Arc::new(Counts::default());
        let harness = ServiceHarness::builder::<Cron>()
            .resource(Arc::clone(&counts))
            .start()
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while counts.every.load(Ordering::SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "no cron ticks within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        harness.fire_timer("every").await.unwrap();
        harness.stop().await;
    }
}
