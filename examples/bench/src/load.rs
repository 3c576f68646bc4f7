//! The load scenarios, written once against [`Caller`] so that the nameko-rs client
//! and the raw lapin client are driven by the same code, and their [`Report`]s
//! (`key=value` lines).

use std::{
    fmt,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{BenchError, PingStats, epoch_seconds, harness::cpu_time};

/// How long the `events` scenario waits for the service to handle every event.
pub const EVENTS_DEADLINE: Duration = Duration::from_secs(120);

/// What the scenarios drive: calls to the `bench` service and `ping` events from
/// `loadgen`. Implemented by [`NamekoClient`](crate::client::NamekoClient) and
/// [`RawClient`](crate::raw::RawClient).
pub trait Caller: Clone + Send + Sync + 'static {
    /// Calls `bench.<method>` with `args` (a list of positional arguments) and returns
    /// the reply's result.
    fn call(&self, method: &'static str, args: Value) -> impl Future<Output = Result<Value, BenchError>> + Send;

    /// Dispatches `payload` as a `loadgen` `ping` event, waiting for the broker's
    /// confirm.
    fn ping(&self, payload: Value) -> impl Future<Output = Result<(), BenchError>> + Send;
}

/// One load scenario, as the clients' command lines name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scenario {
    /// `seq N BYTES`: `N` sequential `echo` calls with a string of `BYTES` bytes.
    Seq {
        /// Calls.
        calls: usize,
        /// Length of the echoed string.
        bytes: usize,
    },
    /// `conc N INFLIGHT`: `N` `echo` calls, `INFLIGHT` of them in flight at any time.
    Conc {
        /// Calls.
        calls: usize,
        /// Calls in flight.
        inflight: usize,
    },
    /// `sleep N INFLIGHT MS`: `N` `sleep(MS)` calls, `INFLIGHT` in flight.
    Sleep {
        /// Calls.
        calls: usize,
        /// Calls in flight.
        inflight: usize,
        /// Milliseconds each call sleeps in the service.
        ms: u64,
    },
    /// `events N [INFLIGHT]`: `N` `ping` events dispatched with `INFLIGHT` (default 1)
    /// confirms outstanding, then waits until the service has handled them all.
    Events {
        /// Events.
        events: usize,
        /// Dispatches in flight.
        inflight: usize,
    },
}

impl Scenario {
    /// The scenario's name: `seq`, `conc`, `sleep` or `events`.
    ///
    /// ```
    /// use example_bench::load::Scenario;
    /// assert_eq!(Scenario::Conc { calls: 10, inflight: 2 }.name(), "conc");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Self::Seq { .. } => "seq",
            Self::Conc { .. } => "conc",
            Self::Sleep { .. } => "sleep",
            Self::Events { .. } => "events",
        }
    }

    /// The scenario as client command-line arguments.
    ///
    /// ```
    /// use example_bench::load::Scenario;
    /// let args = Scenario::Sleep { calls: 100, inflight: 64, ms: 10 }.args();
    /// assert_eq!(args, ["sleep", "100", "64", "10"]);
    /// ```
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![self.name().to_owned()];
        match *self {
            Self::Seq { calls, bytes } => args.extend([calls.to_string(), bytes.to_string()]),
            Self::Conc { calls, inflight } => args.extend([calls.to_string(), inflight.to_string()]),
            Self::Sleep { calls, inflight, ms } => {
                args.extend([calls.to_string(), inflight.to_string(), ms.to_string()]);
            }
            Self::Events { events, inflight } => args.extend([events.to_string(), inflight.to_string()]),
        }
        args
    }

    /// How many calls or events it measures.
    ///
    /// ```
    /// use example_bench::load::Scenario;
    /// assert_eq!(Scenario::Events { events: 7, inflight: 2 }.ops(), 7);
    /// ```
    pub fn ops(&self) -> usize {
        match *self {
            Self::Seq { calls, .. } | Self::Conc { calls, .. } | Self::Sleep { calls, .. } => calls,
            Self::Events { events, .. } => events,
        }
    }

    /// Checks the numbers: at least one call or event, at least one in flight.
    ///
    /// # Errors
    ///
    /// [`BenchError::Call`] naming the bad number.
    ///
    /// ```
    /// use example_bench::load::Scenario;
    /// assert!(Scenario::Conc { calls: 10, inflight: 0 }.check().is_err());
    /// ```
    pub fn check(&self) -> Result<(), BenchError> {
        let (count, inflight) = match *self {
            Self::Seq { calls, .. } => (calls, 1),
            Self::Conc { calls, inflight } | Self::Sleep { calls, inflight, .. } => (calls, inflight),
            Self::Events { events, inflight } => (events, inflight),
        };
        if count == 0 {
            return Err(BenchError::Call(format!("{}: N must be at least 1", self.name())));
        }
        if inflight == 0 {
            return Err(BenchError::Call(format!(
                "{}: INFLIGHT must be at least 1",
                self.name()
            )));
        }
        Ok(())
    }
}

/// A scenario's results as `key=value` pairs, in order; `Display` prints one pair a
/// line, and [`Report::parse`] reads them back.
///
/// ```
/// use example_bench::load::Report;
///
/// let mut report = Report::default();
/// report.push("rps", "1234.5");
/// report.push("p99_us", 800);
/// let text = report.to_string();
/// assert_eq!(text, "rps=1234.5\np99_us=800\n");
/// assert_eq!(Report::parse(&text)?.number("p99_us")?, 800.0);
/// # Ok::<(), example_bench::BenchError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pairs: Vec<(String, String)>,
}

impl Report {
    /// Appends `key=value`.
    pub fn push(&mut self, key: &str, value: impl fmt::Display) {
        self.pairs.push((key.to_owned(), value.to_string()));
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key` as a number.
    ///
    /// # Errors
    ///
    /// [`BenchError::Report`] when it is missing or not a number.
    pub fn number(&self, key: &str) -> Result<f64, BenchError> {
        let value = self
            .get(key)
            .ok_or_else(|| BenchError::Report(format!("no `{key}=` line")))?;
        value
            .parse()
            .map_err(|_| BenchError::Report(format!("`{key}={value}` is not a number")))
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Reads `key=value` lines; blank lines are skipped.
    ///
    /// # Errors
    ///
    /// [`BenchError::Report`] for a line without `=`.
    pub fn parse(text: &str) -> Result<Self, BenchError> {
        let mut report = Self::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| BenchError::Report(format!("expected key=value, got `{line}`")))?;
            report.push(key, value);
        }
        Ok(report)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.pairs {
            writeln!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// Call latencies, sorted.
///
/// ```
/// use std::time::Duration;
/// use example_bench::load::Latencies;
///
/// let latencies = Latencies::new((1..=100).map(Duration::from_micros).collect());
/// assert_eq!(latencies.percentile(50.0), Duration::from_micros(50));
/// assert_eq!(latencies.percentile(99.0), Duration::from_micros(99));
/// assert_eq!(latencies.percentile(100.0), Duration::from_micros(100));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Sorts `samples`.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    /// The `p`th percentile (nearest rank); zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs `scenario` with `caller` and reports `scenario=`, its parameters, then `rps=`,
/// `p50_us=`, `p99_us=` (calls) or `dispatch_rps=`, `consume_rps=` (events), and
/// `cpu_us_per_op=` (this process's CPU time over the measured part, per call or
/// event). Every reply is checked against what was sent.
///
/// # Errors
///
/// The first failed call or dispatch, a reply that is not what was sent, or events the
/// service did not handle within [`EVENTS_DEADLINE`].
pub async fn run<C: Caller>(caller: &C, scenario: Scenario) -> Result<Report, BenchError> {
    scenario.check()?;
    let mut report = Report::default();
    report.push("scenario", scenario.name());
    match scenario {
        Scenario::Seq { calls, bytes } => {
            report.push("calls", calls);
            report.push("bytes", bytes);
            let payload = json!(["x".repeat(bytes)]);
            warm_up(caller, calls).await?;
            let mut samples = Vec::with_capacity(calls);
            let cpu = cpu_time("self")?;
            let started = Instant::now();
            for _ in 0..calls {
                let sent = Instant::now();
                let reply = caller.call("echo", payload.clone()).await?;
                samples.push(sent.elapsed());
                expect(&reply, &payload[0])?;
            }
            calls_report(&mut report, calls, started.elapsed(), &Latencies::new(samples));
            cpu_report(&mut report, calls, cpu)?;
        }
        Scenario::Conc { calls, inflight } => {
            report.push("calls", calls);
            report.push("inflight", inflight);
            warm_up(caller, calls).await?;
            let cpu = cpu_time("self")?;
            let (took, latencies) = concurrently(caller, calls, inflight, "echo", |i| json!([i])).await?;
            calls_report(&mut report, calls, took, &latencies);
            cpu_report(&mut report, calls, cpu)?;
        }
        Scenario::Sleep { calls, inflight, ms } => {
            report.push("calls", calls);
            report.push("inflight", inflight);
            report.push("ms", ms);
            warm_up(caller, calls).await?;
            let cpu = cpu_time("self")?;
            let (took, latencies) = concurrently(caller, calls, inflight, "sleep", move |_| json!([ms])).await?;
            calls_report(&mut report, calls, took, &latencies);
            cpu_report(&mut report, calls, cpu)?;
        }
        Scenario::Events { events, inflight } => {
            report.push("events", events);
            report.push("inflight", inflight);
            let cpu = cpu_time("self")?;
            let (dispatch_rps, consume_rps) = events_scenario(caller, events, inflight).await?;
            report.push("dispatch_rps", format!("{dispatch_rps:.1}"));
            report.push("consume_rps", format!("{consume_rps:.1}"));
            cpu_report(&mut report, events, cpu)?;
        }
    }
    Ok(report)
}

fn calls_report(report: &mut Report, calls: usize, took: Duration, latencies: &Latencies) {
    report.push("rps", format!("{:.1}", calls as f64 / took.as_secs_f64()));
    report.push("p50_us", latencies.percentile(50.0).as_micros());
    report.push("p99_us", latencies.percentile(99.0).as_micros());
}

/// `cpu_us_per_op=`: this process's CPU time since `before`, per call or event.
fn cpu_report(report: &mut Report, ops: usize, before: Duration) -> Result<(), BenchError> {
    let used = cpu_time("self")?.saturating_sub(before);
    report.push("cpu_us_per_op", format!("{:.1}", used.as_secs_f64() * 1e6 / ops as f64));
    Ok(())
}

/// A few unmeasured calls first: connections, channels and caches warm.
async fn warm_up<C: Caller>(caller: &C, calls: usize) -> Result<(), BenchError> {
    for i in 0..(calls / 10).clamp(1, 100) {
        let reply = caller.call("echo", json!([i])).await?;
        expect(&reply, &json!(i))?;
    }
    Ok(())
}

fn expect(reply: &Value, sent: &Value) -> Result<(), BenchError> {
    if reply == sent {
        Ok(())
    } else {
        let reply = reply.to_string();
        Err(BenchError::Call(format!(
            "expected the reply {sent:.60}, got {reply:.60}",
            sent = sent.to_string()
        )))
    }
}

/// `calls` calls of `method` (arguments `args(i)`), `inflight` at a time; each reply
/// must be `args(i)[0]`. Returns the time it all took and every call's latency.
async fn concurrently<C: Caller>(
    caller: &C,
    calls: usize,
    inflight: usize,
    method: &'static str,
    args: impl Fn(usize) -> Value + Clone + Send + 'static,
) -> Result<(Duration, Latencies), BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let lanes: Vec<_> = (0..inflight.min(calls))
        .map(|_| {
            let (caller, next, args) = (caller.clone(), Arc::clone(&next), args.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return Ok::<_, BenchError>(samples);
                    }
                    let args = args(i);
                    let sent = Instant::now();
                    let reply = caller.call(method, args.clone()).await?;
                    samples.push(sent.elapsed());
                    expect(&reply, &args[0])?;
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(calls);
    for lane in lanes {
        let lane = lane
            .await
            .map_err(|err| BenchError::Call(format!("a load task failed: {err}")))?;
        samples.extend(lane?);
    }
    Ok((started.elapsed(), Latencies::new(samples)))
}

async fn ping_stats<C: Caller>(caller: &C) -> Result<PingStats, BenchError> {
    let value = caller.call("ping_stats", json!([])).await?;
    serde_json::from_value(value).map_err(|err| BenchError::Call(format!("ping_stats answered something else: {err}")))
}

/// Dispatches `events` pings, then waits until `ping_stats` counts them. Returns the
/// dispatch rate and the consume rate (events over the time from the first dispatch to
/// the last event handled).
async fn events_scenario<C: Caller>(caller: &C, events: usize, inflight: usize) -> Result<(f64, f64), BenchError> {
    let base = ping_stats(caller).await?.count;
    let target = base + events as u64;
    let first = epoch_seconds();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let lanes: Vec<_> = (0..inflight.min(events))
        .map(|_| {
            let (caller, next) = (caller.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events {
                        return Ok::<_, BenchError>(());
                    }
                    caller.ping(json!({"n": i})).await?;
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.await
            .map_err(|err| BenchError::Call(format!("a dispatch task failed: {err}")))??;
    }
    let dispatch_rps = events as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + EVENTS_DEADLINE;
    let stats = loop {
        let stats = ping_stats(caller).await?;
        if stats.count >= target {
            break stats;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "the service handled {} of {events} events within {EVENTS_DEADLINE:?}",
                stats.count.saturating_sub(base)
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let consume_rps = events as f64 / (stats.last - first).max(1e-6);
    Ok((dispatch_rps, consume_rps))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::PingCounter;

    /// A caller that answers in-process, as the service would.
    #[derive(Clone, Default)]
    struct Local {
        pings: Arc<PingCounter>,
        calls: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Caller for Local {
        async fn call(&self, method: &'static str, args: Value) -> Result<Value, BenchError> {
            self.calls.lock().unwrap().push(method);
            match method {
                "echo" | "sleep" => Ok(args[0].clone()),
                "ping_stats" => Ok(serde_json::to_value(self.pings.stats()).unwrap()),
                other => Err(BenchError::Call(format!("unknown {other}"))),
            }
        }

        async fn ping(&self, _payload: Value) -> Result<(), BenchError> {
            self.pings.record();
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_scenario_reports_its_keys() {
        let local = Local::default();
        let cases = [
            (
                Scenario::Seq { calls: 20, bytes: 8 },
                &["rps", "p50_us", "p99_us", "cpu_us_per_op"][..],
            ),
            (Scenario::Conc { calls: 50, inflight: 8 }, &["rps", "p50_us", "p99_us"]),
            (
                Scenario::Sleep {
                    calls: 10,
                    inflight: 3,
                    ms: 1,
                },
                &["rps", "p50_us", "p99_us"],
            ),
            (
                Scenario::Events {
                    events: 30,
                    inflight: 4,
                },
                &["dispatch_rps", "consume_rps"],
            ),
        ];
        for (scenario, keys) in cases {
            let report = run(&local, scenario).await.unwrap();
            assert_eq!(report.get("scenario"), Some(scenario.name()));
            for key in keys {
                assert!(report.number(key).unwrap() >= 0.0, "{scenario:?}: {report}");
            }
        }
        assert_eq!(local.pings.stats().count, 30);
        let calls = local.calls.lock().unwrap();
        assert_eq!(calls.iter().filter(|m| **m == "sleep").count(), 10);
    }

    #[tokio::test]
    async fn a_wrong_reply_fails_the_scenario() {
        #[derive(Clone)]
        struct Liar;
        impl Caller for Liar {
            async fn call(&self, _method: &'static str, _args: Value) -> Result<Value, BenchError> {
                Ok(json!("something else"))
            }
            async fn ping(&self, _payload: Value) -> Result<(), BenchError> {
                Ok(())
            }
        }
        let err = run(&Liar, Scenario::Seq { calls: 5, bytes: 3 }).await.unwrap_err();
        assert!(err.to_string().contains("expected the reply"), "{err}");
    }

    #[test]
    fn bad_numbers_are_refused() {
        for scenario in [
            Scenario::Seq { calls: 0, bytes: 1 },
            Scenario::Events { events: 1, inflight: 0 },
        ] {
            assert!(scenario.check().is_err(), "{scenario:?}");
        }
        assert!(Report::parse("rps 12").is_err());
    }
}
