//! The timer example: a `reporter` service with an interval timer that counts and
//! logs, a cron timer on the wall clock, and a timer that fires on one instance of the
//! cluster only.
//!
//! Run it with `cargo run -p example-timer -- run --transport memory`.

use std::sync::atomic::{AtomicU64, Ordering};

use nameko::{core::deps::Dep, prelude::RemoteError};

/// What the timers counted, shared by every worker (a runner resource).
#[derive(Debug, Default)]
pub struct Stats {
    reports: AtomicU64,
    heartbeats: AtomicU64,
    cleanups: AtomicU64,
}

impl Stats {
    /// Ticks of `report` so far.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::SeqCst)
    }

    /// Ticks of `heartbeat` so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::SeqCst)
    }

    /// Ticks of `cleanup` so far.
    pub fn cleanups(&self) -> u64 {
        self.cleanups.load(Ordering::SeqCst)
    }
}

/// The `reporter` service.
#[derive(Debug, nameko::Dependencies)]
pub struct Reporter {
    stats: Dep<Stats>,
}

#[nameko::service(name = "reporter")]
impl Reporter {
    /// Every 5 seconds, and once at start; ticks missed during an overrun are dropped.
    #[timer(interval = "5s", eager = true, missed = "skip")]
    async fn report(&self) -> Result<(), RemoteError> {
        let n = self.stats.reports.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(n, "report");
        Ok(())
    }

    /// At every tenth second of the wall clock, Paris time.
    #[timer(cron = "*/10 * * * * *", tz = "Europe/Paris")]
    async fn heartbeat(&self) -> Result<(), RemoteError> {
        let n = self.stats.heartbeats.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(n, "heartbeat");
        Ok(())
    }

    /// Every 30 seconds on one instance of `reporter` in the whole cluster (the queue
    /// `timer-reporter.cleanup` elects it).
    #[timer(interval = "30s", cluster_singleton = true)]
    async fn cleanup(&self) -> Result<(), RemoteError> {
        let n = self.stats.cleanups.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(n, "cleanup, on this instance only");
        Ok(())
    }
}
