//! The benchmark: the `bench` service, a load client, a raw lapin baseline that gives
//! the same delivery guarantees, and a harness that runs them side by side.
//!
//! Run the service with `cargo run -p example-bench -- run --broker URI` (or
//! `--transport memory`); drive it with `example-bench client ...`; compare with the
//! raw baseline with `example-bench harness --broker URI` (see `docs/performance.md`).
//!
//! - [`Bench`] serves `echo(x)` → `x`, `sleep(ms)` → `ms` after an async sleep,
//!   `ping_stats()` → `{"count": n, "last": <epoch seconds>}`, and counts `loadgen`'s
//!   `ping` events in `on_ping`; `GET /echo/{v}` answers `v` over HTTP.
//! - [`load`] runs the scenarios (`seq`, `conc`, `sleep`, `events`) against any
//!   [`load::Caller`] and prints `key=value` lines.
//! - [`client::NamekoClient`] is the nameko-rs caller (`ClusterRpc::connect` and a
//!   standalone `EventDispatcher`); [`raw::RawClient`] and [`raw::RawServer`] are the
//!   same over lapin alone.
//! - [`harness`] starts each server, times its start-up, runs every scenario, reads
//!   the server's peak RSS, and writes a markdown table of medians and ratios.

pub mod client;
pub mod harness;
pub mod load;
pub mod raw;
pub mod raw_http;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nameko::http::Path;
use nameko::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a benchmark command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A call or a dispatch failed, or answered something else than expected.
    #[error("{0}")]
    Call(String),
    /// Nothing serves the service yet: no queue is bound for the call.
    #[error("Unknown service `{0}`")]
    UnknownService(String),
    /// RabbitMQ refused something or could not be reached.
    #[error("broker: {0}")]
    Broker(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A process of the harness failed.
    #[error("{0}")]
    Process(String),
    /// A `key=value` report could not be read.
    #[error("bad report: {0}")]
    Report(String),
    /// Reading or writing a file or a pipe failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The service's name.
pub const SERVICE: &str = "bench";
/// The service whose events `on_ping` handles (the load generator claims to be it).
pub const EVENT_SOURCE: &str = "loadgen";
/// The event type `on_ping` handles.
pub const EVENT_TYPE: &str = "ping";
/// The RPC queue of the service (`rpc-<service>`).
pub const RPC_QUEUE: &str = "rpc-bench";
/// The queue of `on_ping` (a service-pool handler: `evt-<src>-<type>--<service>.<method>`).
pub const EVENT_QUEUE: &str = "evt-loadgen-ping--bench.on_ping";
/// The exchange `loadgen` dispatches to.
pub const EVENT_EXCHANGE: &str = "loadgen.events";

/// What `ping_stats` answers: how many `ping` events were handled, and when the last
/// one was (seconds since the epoch, `0.0` before any).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingStats {
    /// Events handled.
    pub count: u64,
    /// When the last one was handled, in seconds since the epoch.
    pub last: f64,
}

/// Counts `ping` events; the `bench` service's resource (`Dep<PingCounter>`), shared by
/// every worker.
///
/// ```
/// let counter = example_bench::PingCounter::default();
/// counter.record();
/// let stats = counter.stats();
/// assert_eq!(stats.count, 1);
/// assert!(stats.last > 0.0);
/// ```
#[derive(Debug, Default)]
pub struct PingCounter {
    count: AtomicU64,
    last: Mutex<f64>,
}

impl PingCounter {
    /// Counts one event, now.
    pub fn record(&self) {
        let now = epoch_seconds();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        self.count.fetch_add(1, Ordering::SeqCst);
        if now > *last {
            *last = now;
        }
    }

    /// The count and the time of the last event.
    pub fn stats(&self) -> PingStats {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        PingStats {
            count: self.count.load(Ordering::SeqCst),
            last: *last,
        }
    }
}

/// Seconds since the epoch, as a float.
///
/// ```
/// assert!(example_bench::epoch_seconds() > 1.7e9);
/// ```
pub fn epoch_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The `bench` service.
#[derive(Debug, nameko::Dependencies)]
pub struct Bench {
    pings: Dep<PingCounter>,
}

#[nameko::service(name = "bench")]
impl Bench {
    /// Answers its argument.
    #[rpc]
    pub async fn echo(&self, x: Value) -> Result<Value, RemoteError> {
        Ok(x)
    }

    /// Answers `ms` after sleeping that many milliseconds.
    #[rpc]
    pub async fn sleep(&self, ms: u64) -> Result<u64, RemoteError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }

    /// How many `ping` events were handled, and when the last one was.
    #[rpc]
    pub async fn ping_stats(&self) -> Result<PingStats, RemoteError> {
        Ok(self.pings.stats())
    }

    /// `GET /echo/{v}` answers `v`: the HTTP row of the benchmark (compare with the
    /// bare axum handler of [`raw_http::router`]).
    #[http("GET", "/echo/{v}")]
    pub async fn echo_http(&self, Path(v): Path<String>) -> Result<String, RemoteError> {
        Ok(v)
    }

    /// Counts a `ping` event of `loadgen`.
    #[event_handler("loadgen", "ping")]
    pub async fn on_ping(&self, _payload: Value) -> Result<(), RemoteError> {
        self.pings.record();
        Ok(())
    }
}

/// The resources `bench` needs: a fresh [`PingCounter`].
///
/// ```
/// let resources = example_bench::resources();
/// # drop(resources);
/// ```
pub fn resources() -> Resources {
    Resources::new().with(Arc::new(PingCounter::default()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn bench(counter: &Arc<PingCounter>) -> Bench {
        Bench::worker_factory()
            .pings(Dep::from_arc(Arc::clone(counter)))
            .build()
    }

    #[tokio::test]
    async fn echo_answers_its_argument() {
        let counter = Arc::new(PingCounter::default());
        let value = json!({"a": [1, "two", null]});
        assert_eq!(bench(&counter).echo(value.clone()).await.unwrap(), value);
    }

    #[tokio::test]
    async fn sleep_answers_after_sleeping() {
        let counter = Arc::new(PingCounter::default());
        let started = tokio::time::Instant::now();
        assert_eq!(bench(&counter).sleep(30).await.unwrap(), 30);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn ping_stats_counts_pings() {
        let counter = Arc::new(PingCounter::default());
        let service = bench(&counter);
        assert_eq!(service.ping_stats().await.unwrap(), PingStats::default());
        let before = epoch_seconds();
        service.on_ping(json!({"n": 1})).await.unwrap();
        service.on_ping(json!(null)).await.unwrap();
        let stats = service.ping_stats().await.unwrap();
        assert_eq!(stats.count, 2);
        assert!(stats.last >= before, "{stats:?}");
    }
}
