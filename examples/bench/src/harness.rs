//! The harness: runs nameko-rs and the raw lapin baseline side by side and reports
//! medians and ratios as a markdown table.
//!
//! For each run and each [`Setup`] — nameko-rs on both sides, raw lapin on both sides,
//! the raw client driving the nameko-rs service (server-side) and the nameko-rs client
//! driving the raw server (client-side), alternating the order from run to run — it
//! deletes the service's queues, starts the server (`example-bench run bench` or
//! `example-bench raw-server`), times start-up until the server answers an `echo`
//! (`startup_ms`), reads its resident set once idle, runs every scenario in a client
//! process (`example-bench client` or `raw-client`), reads the server's CPU time around each
//! scenario (per call or event; it includes the client's warm-up calls and polls, the
//! same for both) and its peak RSS (`VmHWM`), and stops the server with SIGTERM, which
//! must end it cleanly. CPU per operation is the number that contention from other
//! processes disturbs least. Everything runs on a
//! unique RPC exchange; at the end it deletes that exchange, the service's queues,
//! `loadgen.events` and its own reply queue. Queue names are fixed by the service, so
//! two harnesses must not share a vhost at the same time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    BenchError, EVENT_EXCHANGE, EVENT_QUEUE, RPC_QUEUE, SERVICE,
    load::{Caller, Report, Scenario},
    raw::{self, RawClient},
};

/// How long a server may take to answer its first call.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long one client process may run.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(900);
/// How long a server may take to stop after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// One side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Implementation {
    /// nameko-rs: `example-bench run bench` and `example-bench client`.
    Nameko,
    /// The raw lapin baseline: `example-bench raw-server` and `example-bench raw-client`.
    Raw,
}

impl Implementation {
    /// Both, nameko-rs first.
    pub const ALL: [Self; 2] = [Self::Nameko, Self::Raw];

    /// `nameko-rs` or `raw lapin`.
    ///
    /// ```
    /// use example_bench::harness::Implementation;
    /// assert_eq!(Implementation::Raw.label(), "raw lapin");
    /// ```
    pub fn label(self) -> &'static str {
        match self {
            Self::Nameko => "nameko-rs",
            Self::Raw => "raw lapin",
        }
    }

    /// The server's command line (after the program).
    ///
    /// ```
    /// use example_bench::harness::Implementation;
    /// let args = Implementation::Nameko.server_args("amqp://localhost/", "rpc-x", 10);
    /// assert_eq!(args[..2], ["run", "bench"]);
    /// assert!(args.contains(&"rpc_exchange=rpc-x".to_owned()));
    /// ```
    pub fn server_args(self, broker: &str, rpc_exchange: &str, prefetch: u16) -> Vec<String> {
        match self {
            Self::Nameko => vec![
                "run".into(),
                SERVICE.into(),
                "--broker".into(),
                broker.into(),
                "--define".into(),
                format!("rpc_exchange={rpc_exchange}"),
                "--define".into(),
                format!("max_workers={prefetch}"),
                // The harness measures AMQP; the HTTP route must not need port 8000.
                "--define".into(),
                "WEB_SERVER_ADDRESS=127.0.0.1:0".into(),
            ],
            Self::Raw => vec![
                "raw-server".into(),
                "--broker".into(),
                broker.into(),
                "--rpc-exchange".into(),
                rpc_exchange.into(),
                "--prefetch".into(),
                prefetch.to_string(),
            ],
        }
    }

    /// The client's subcommand: `client` or `raw-client`.
    pub fn client_command(self) -> &'static str {
        match self {
            Self::Nameko => "client",
            Self::Raw => "raw-client",
        }
    }
}

/// A client and a server, each nameko-rs or raw lapin: the harness compares every
/// setup with raw lapin on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Setup {
    /// Which client drives the load.
    pub client: Implementation,
    /// Which server answers it.
    pub server: Implementation,
}

impl Setup {
    /// nameko-rs on both sides.
    pub const NAMEKO: Self = Self {
        client: Implementation::Nameko,
        server: Implementation::Nameko,
    };
    /// Raw lapin on both sides: the baseline every ratio divides by.
    pub const RAW: Self = Self {
        client: Implementation::Raw,
        server: Implementation::Raw,
    };
    /// The raw client driving the nameko-rs service: the server side's figures.
    pub const SERVER_SIDE: Self = Self {
        client: Implementation::Raw,
        server: Implementation::Nameko,
    };
    /// The nameko-rs client driving the raw server: the client side's figures.
    pub const CLIENT_SIDE: Self = Self {
        client: Implementation::Nameko,
        server: Implementation::Raw,
    };
    /// Every setup, in the table's order.
    pub const ALL: [Self; 4] = [Self::NAMEKO, Self::RAW, Self::SERVER_SIDE, Self::CLIENT_SIDE];

    /// `nameko-rs`, `raw lapin`, `server-side` (raw client, nameko-rs server) or
    /// `client-side` (nameko-rs client, raw server): the names `--setups` takes.
    ///
    /// ```
    /// use example_bench::harness::Setup;
    /// assert_eq!(Setup::SERVER_SIDE.label(), "server-side");
    /// assert_eq!(Setup::parse("client-side"), Some(Setup::CLIENT_SIDE));
    /// ```
    pub fn label(self) -> &'static str {
        match (self.client, self.server) {
            (Implementation::Nameko, Implementation::Nameko) => "nameko-rs",
            (Implementation::Raw, Implementation::Raw) => "raw lapin",
            (Implementation::Raw, Implementation::Nameko) => "server-side",
            (Implementation::Nameko, Implementation::Raw) => "client-side",
        }
    }

    /// The setup a [`label`](Self::label) names.
    pub fn parse(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.label() == label)
    }
}

/// What the harness runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HarnessOptions {
    /// The broker URI.
    pub broker: String,
    /// The `example-bench` binary to start servers and clients from.
    pub exe: PathBuf,
    /// How many runs of each setup (medians are taken over them).
    pub runs: usize,
    /// The setups of every run (the order alternates from run to run); raw lapin on
    /// both sides must be among them, every ratio divides by it.
    pub setups: Vec<Setup>,
    /// The scenarios of every run, in order.
    pub scenarios: Vec<Scenario>,
    /// nameko-rs's `max_workers` and the raw server's prefetch.
    pub prefetch: u16,
    /// The RPC exchange of this harness run.
    pub rpc_exchange: String,
}

impl HarnessOptions {
    /// Options for `broker` with the default scenarios (`seq 2000 100`,
    /// `conc 10000 64`, `sleep 1000 64 10`, `events 10000 64`), three runs of every
    /// [`Setup`], prefetch 10 (nameko-rs's default `max_workers`), and a unique RPC
    /// exchange.
    ///
    /// ```
    /// let options = example_bench::harness::HarnessOptions::new("amqp://localhost/", "example-bench".into());
    /// assert_eq!(options.runs, 3);
    /// assert!(options.rpc_exchange.starts_with("bench-rpc-"));
    /// ```
    pub fn new(broker: &str, exe: PathBuf) -> Self {
        Self {
            broker: broker.to_owned(),
            exe,
            runs: 3,
            setups: Setup::ALL.to_vec(),
            scenarios: vec![
                Scenario::Seq {
                    calls: 2000,
                    bytes: 100,
                },
                Scenario::Conc {
                    calls: 10_000,
                    inflight: 64,
                },
                Scenario::Sleep {
                    calls: 1000,
                    inflight: 64,
                    ms: 10,
                },
                Scenario::Events {
                    events: 10_000,
                    inflight: 64,
                },
            ],
            prefetch: 10,
            rpc_exchange: format!("bench-rpc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        }
    }
}

/// The numbers of one run of one setup, by metric key (`startup_ms`,
/// `server_idle_rss_kb`, `server_rss_kb`, `client_rss_kb`, `<scenario>.<key>` for the
/// client's keys, `<scenario>.server_cpu_us`, `<scenario>.client_cpu_us`, and for the
/// nameko-rs client's calls `<scenario>.reply_first_pct`).
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    /// Which client and server.
    pub setup: Setup,
    /// Metric key → value.
    pub metrics: BTreeMap<String, f64>,
    /// `/proc/loadavg` before and after the run.
    pub load: (String, String),
}

/// Every run, and the table of medians.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// What ran: one line per scenario.
    pub scenarios: Vec<Scenario>,
    /// Every run, in the order they ran.
    pub runs: Vec<RunResult>,
}

/// A bound a row's number is judged against.
#[derive(Clone, Copy, Debug)]
enum Bound {
    /// At least this much (throughput).
    AtLeast(f64),
    /// At most this much (latency, memory).
    AtMost(f64),
    /// Reported, not judged.
    None,
}

impl Bound {
    /// `None` when there is nothing to judge.
    fn judge(self, value: Option<f64>) -> Option<bool> {
        match (self, value) {
            (Self::AtLeast(min), Some(v)) => Some(v >= min),
            (Self::AtMost(max), Some(v)) => Some(v <= max),
            _ => None,
        }
    }

    /// `≥ 0.90`, `≤ 1.10` (empty when not judged).
    fn text(self) -> String {
        match self {
            Self::AtLeast(min) => format!("≥ {}", number(min)),
            Self::AtMost(max) => format!("≤ {}", number(max)),
            Self::None => String::new(),
        }
    }
}

/// One row of the table.
struct Row {
    key: String,
    label: String,
    /// Issue #5's floor on the nameko-rs / raw lapin ratio.
    floor: Bound,
    /// Issue #10's target: on every setup's ratio, or on nameko-rs's own number when
    /// `absolute`.
    target: Bound,
    absolute: bool,
}

impl Row {
    fn new(key: String, label: String) -> Self {
        Self {
            key,
            label,
            floor: Bound::None,
            target: Bound::None,
            absolute: false,
        }
    }

    fn floor(mut self, floor: Bound) -> Self {
        self.floor = floor;
        self
    }

    fn target(mut self, target: Bound) -> Self {
        self.target = target;
        self
    }

    fn absolute_target(mut self, target: Bound) -> Self {
        self.target = target;
        self.absolute = true;
        self
    }
}

impl Summary {
    /// The median of `metric` over `setup`'s runs.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use example_bench::harness::{RunResult, Setup, Summary};
    ///
    /// let run = |v: f64| RunResult {
    ///     setup: Setup::RAW,
    ///     metrics: BTreeMap::from([("seq.rps".to_owned(), v)]),
    ///     load: Default::default(),
    /// };
    /// let summary = Summary { scenarios: vec![], runs: vec![run(3.0), run(1.0), run(2.0)] };
    /// assert_eq!(summary.median(Setup::RAW, "seq.rps"), Some(2.0));
    /// assert_eq!(summary.median(Setup::NAMEKO, "seq.rps"), None);
    /// ```
    pub fn median(&self, setup: Setup, metric: &str) -> Option<f64> {
        let mut values: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.setup == setup)
            .filter_map(|r| r.metrics.get(metric).copied())
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        Some(if values.len() % 2 == 1 {
            values[mid]
        } else {
            f64::midpoint(values[mid - 1], values[mid])
        })
    }

    /// `setup`'s median of `metric` over raw lapin's.
    pub fn ratio(&self, setup: Setup, metric: &str) -> Option<f64> {
        let value = self.median(setup, metric)?;
        let raw = self.median(Setup::RAW, metric)?;
        (raw > 0.0).then(|| value / raw)
    }

    /// The setups that ran, in the table's order.
    fn setups(&self) -> Vec<Setup> {
        Setup::ALL
            .into_iter()
            .filter(|s| self.runs.iter().any(|r| r.setup == *s))
            .collect()
    }

    /// The rows of the table.
    fn rows(&self) -> Vec<Row> {
        let mut rows = vec![
            Row::new(
                "startup_ms".to_owned(),
                "start-up until the first answer (ms)".to_owned(),
            )
            .absolute_target(Bound::AtMost(50.0)),
        ];
        for scenario in &self.scenarios {
            let name = scenario.name();
            let row = |key: &str, label: String| Row::new(format!("{name}.{key}"), label);
            match *scenario {
                Scenario::Seq { calls, bytes } => {
                    let what = format!("sequential echo ({calls} calls, {bytes} B)");
                    rows.push(
                        row("rps", format!("{what}: calls/s"))
                            .floor(Bound::AtLeast(0.9))
                            .target(Bound::AtLeast(1.3)),
                    );
                    rows.push(row("p50_us", format!("{what}: p50 (µs)")).target(Bound::AtMost(0.8)));
                    rows.push(row("p99_us", format!("{what}: p99 (µs)")).floor(Bound::AtMost(1.1)));
                }
                Scenario::Conc { calls, inflight } => {
                    let what = format!("{inflight}-in-flight echo ({calls} calls)");
                    rows.push(
                        row("rps", format!("{what}: calls/s"))
                            .floor(Bound::AtLeast(0.9))
                            .target(Bound::AtLeast(1.5)),
                    );
                    rows.push(row("p50_us", format!("{what}: p50 (µs)")).target(Bound::AtMost(0.8)));
                    rows.push(row("p99_us", format!("{what}: p99 (µs)")).floor(Bound::AtMost(1.1)));
                }
                Scenario::Sleep { calls, inflight, ms } => {
                    let what = format!("{inflight}-in-flight sleep({ms} ms) ({calls} calls)");
                    rows.push(row("rps", format!("{what}: calls/s")).floor(Bound::AtLeast(0.9)));
                    rows.push(row("p99_us", format!("{what}: p99 (µs)")).floor(Bound::AtMost(1.1)));
                }
                Scenario::Events { events, inflight } => {
                    let what = format!("events ({events}, {inflight} dispatches in flight)");
                    rows.push(
                        row("dispatch_rps", format!("{what}: dispatched/s"))
                            .floor(Bound::AtLeast(0.9))
                            .target(Bound::AtLeast(7.0)),
                    );
                    rows.push(
                        row("consume_rps", format!("{what}: consumed/s"))
                            .floor(Bound::AtLeast(0.9))
                            .target(Bound::AtLeast(7.0)),
                    );
                }
            }
            let per = if matches!(scenario, Scenario::Events { .. }) {
                "event"
            } else {
                "call"
            };
            if !matches!(scenario, Scenario::Events { .. }) {
                rows.push(row(
                    "reply_first_pct",
                    format!("{name}: calls whose reply came before the request's confirm (%)"),
                ));
            }
            rows.push(row("server_cpu_us", format!("{name}: server CPU per {per} (µs)")));
            rows.push(row("client_cpu_us", format!("{name}: client CPU per {per} (µs)")));
        }
        rows.push(
            Row::new(
                "server_idle_rss_kb".to_owned(),
                "server RSS once started, idle (KiB)".to_owned(),
            )
            .absolute_target(Bound::AtMost(15.0 * 1024.0)),
        );
        rows.push(Row::new(
            "server_rss_kb".to_owned(),
            "server peak RSS (VmHWM, KiB)".to_owned(),
        ));
        rows.push(Row::new(
            "client_rss_kb".to_owned(),
            "client peak RSS (largest of its runs, KiB)".to_owned(),
        ));
        rows
    }

    /// Whether every ratio of nameko-rs to raw lapin meets issue #5's floor (`None`
    /// when nothing was judged).
    pub fn meets_floor(&self) -> Option<bool> {
        let mut judged = false;
        for row in self.rows() {
            let Some(ok) = row.floor.judge(self.ratio(Setup::NAMEKO, &row.key)) else {
                continue;
            };
            judged = true;
            if !ok {
                return Some(false);
            }
        }
        judged.then_some(true)
    }

    /// The markdown table: each setup's median, the nameko-rs / raw lapin ratio against
    /// issue #5's floor, the server-side and client-side ratios, and issue #10's
    /// targets (✓ or ✗ after each ratio a target judges); then every run's numbers.
    pub fn markdown(&self) -> String {
        let setups = self.setups();
        let runs = self.runs.iter().filter(|r| r.setup == Setup::RAW).count();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Medians of {runs} run(s) each; every ratio is over raw lapin on both sides \
             (server-side: the raw client driving the nameko-rs service; client-side: the \
             nameko-rs client driving the raw server).\n"
        );
        let ratios: Vec<Setup> = setups.iter().copied().filter(|s| *s != Setup::RAW).collect();
        let mut header = "| metric |".to_owned();
        for setup in &setups {
            let _ = write!(header, " {} |", setup.label());
        }
        for setup in &ratios {
            let _ = write!(header, " ratio {} |", setup.label());
        }
        header.push_str(" floor (#5) | target (#10) |");
        let _ = writeln!(out, "{header}");
        let _ = writeln!(
            out,
            "| --- |{}{} --- | --- |",
            " ---: |".repeat(setups.len()),
            " ---: |".repeat(ratios.len())
        );
        let mark = |ok: Option<bool>| match ok {
            Some(true) => " ✓",
            Some(false) => " ✗",
            None => "",
        };
        for row in self.rows() {
            let mut line = format!("| {} |", row.label);
            for setup in &setups {
                let value = self.median(*setup, &row.key);
                let judged = if row.absolute && *setup == Setup::NAMEKO {
                    row.target.judge(value)
                } else {
                    None
                };
                let cell = value.map_or_else(|| "–".to_owned(), number);
                let _ = write!(line, " {cell}{} |", mark(judged));
            }
            for setup in &ratios {
                let ratio = self.ratio(*setup, &row.key);
                let judged = if row.absolute { None } else { row.target.judge(ratio) };
                let cell = ratio.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}"));
                let _ = write!(line, " {cell}{} |", mark(judged));
            }
            let floor = match row.floor.judge(self.ratio(Setup::NAMEKO, &row.key)) {
                Some(ok) => format!("{}{}", row.floor.text(), mark(Some(ok))),
                None => String::new(),
            };
            let target = match (row.target, row.absolute) {
                (Bound::None, _) => String::new(),
                (target, true) => target.text(),
                (target, false) => format!("{}×", target.text()),
            };
            let _ = writeln!(line, " {floor} | {target} |");
            out.push_str(&line);
        }
        let _ = writeln!(out, "\nEvery run, in order (load average before → after):\n");
        let _ = writeln!(out, "| run | setup | load | numbers |");
        let _ = writeln!(out, "| ---: | --- | --- | --- |");
        for (i, run) in self.runs.iter().enumerate() {
            let numbers: Vec<String> = run.metrics.iter().map(|(k, v)| format!("{k}={}", number(*v))).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} → {} | {} |",
                i + 1,
                run.setup.label(),
                run.load.0,
                run.load.1,
                numbers.join(" ")
            );
        }
        out
    }
}

/// Whole numbers from 100 up, two decimals below.
fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// The peak resident set (`VmHWM`, KiB) of process `pid` (`"self"` for this one).
///
/// ```
/// assert!(example_bench::harness::peak_rss_kb("self")? > 0);
/// # Ok::<(), example_bench::BenchError>(())
/// ```
///
/// # Errors
///
/// When `/proc/<pid>/status` cannot be read or has no `VmHWM` line (not Linux).
pub fn peak_rss_kb(pid: &str) -> Result<u64, BenchError> {
    status_kb(pid, "VmHWM")
}

/// The resident set now (`VmRSS`, KiB) of process `pid` (`"self"` for this one).
///
/// ```
/// let now = example_bench::harness::rss_kb("self")?;
/// assert!(now > 0 && now <= example_bench::harness::peak_rss_kb("self")?);
/// # Ok::<(), example_bench::BenchError>(())
/// ```
///
/// # Errors
///
/// When `/proc/<pid>/status` cannot be read or has no `VmRSS` line (not Linux).
pub fn rss_kb(pid: &str) -> Result<u64, BenchError> {
    status_kb(pid, "VmRSS")
}

fn status_kb(pid: &str, field: &str) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::Process(format!("/proc/{pid}/status has no {field} line")))
}

/// Linux reports process times in these ticks per second (`USER_HZ`, 100 on every
/// mainstream architecture).
const USER_HZ: u64 = 100;

/// The CPU time (user + system, every thread, 10 ms resolution) process `pid`
/// (`"self"` for this one) has used so far.
///
/// ```
/// let before = example_bench::harness::cpu_time("self")?;
/// let spin = std::time::Instant::now();
/// while spin.elapsed() < std::time::Duration::from_millis(50) {}
/// assert!(example_bench::harness::cpu_time("self")? > before);
/// # Ok::<(), example_bench::BenchError>(())
/// ```
///
/// # Errors
///
/// When `/proc/<pid>/stat` cannot be read or parsed (not Linux).
pub fn cpu_time(pid: &str) -> Result<Duration, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok(Duration::from_millis((user + system) * 1000 / USER_HZ)),
        _ => Err(BenchError::Process(format!("/proc/{pid}/stat has no utime and stime"))),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Runs every run of every setup, then deletes what was declared.
///
/// # Errors
///
/// The first failure: a server that does not start, answer or stop cleanly, a client
/// that fails, or RabbitMQ refusing the clean-up.
pub async fn run(options: &HarnessOptions, mut progress: impl FnMut(&str)) -> Result<Summary, BenchError> {
    if options.runs == 0 {
        return Err(BenchError::Process("runs must be at least 1".into()));
    }
    if !options.setups.contains(&Setup::RAW) {
        return Err(BenchError::Process(
            "the setups must include raw lapin on both sides: every ratio divides by it".into(),
        ));
    }
    for scenario in &options.scenarios {
        scenario.check()?;
    }
    let prober = RawClient::connect(&options.broker, &options.rpc_exchange).await?;
    let mut summary = Summary {
        scenarios: options.scenarios.clone(),
        runs: Vec::new(),
    };
    let mut result = Ok(());
    'runs: for i in 0..options.runs {
        let mut order = options.setups.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        for setup in order {
            progress(&format!("run {}/{}: {}", i + 1, options.runs, setup.label()));
            match one_run(options, setup, &prober).await {
                Ok(run) => summary.runs.push(run),
                Err(err) => {
                    result = Err(err);
                    break 'runs;
                }
            }
        }
    }
    let closed = prober.close().await;
    let deleted = raw::delete(
        &options.broker,
        &[RPC_QUEUE, EVENT_QUEUE],
        &[&options.rpc_exchange, EVENT_EXCHANGE],
    )
    .await;
    result.and(closed).and(deleted).map(|()| summary)
}

async fn one_run(options: &HarnessOptions, setup: Setup, prober: &RawClient) -> Result<RunResult, BenchError> {
    let label = setup.server.label();
    let load_before = load_average();
    // Fresh queues: start-up includes declaring them, and nothing waits in them.
    raw::delete(&options.broker, &[RPC_QUEUE, EVENT_QUEUE], &[]).await?;
    let log = std::env::temp_dir().join(format!("example-bench-{}-{}.log", std::process::id(), setup.label()));
    let log_file = std::fs::File::create(&log)?;
    let started = Instant::now();
    let mut server = tokio::process::Command::new(&options.exe)
        .args(
            setup
                .server
                .server_args(&options.broker, &options.rpc_exchange, options.prefetch),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| BenchError::Process(format!("cannot start {}: {err}", options.exe.display())))?;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let pid = server
        .id()
        .ok_or_else(|| BenchError::Process(format!("the {label} server has no pid")))?
        .to_string();
    loop {
        if let Some(status) = server.try_wait()? {
            return Err(BenchError::Process(format!(
                "the {label} server exited with {status} before answering:\n{}",
                log_text()
            )));
        }
        match prober.call("echo", json!(["up"])).await {
            Ok(_) => break,
            Err(BenchError::UnknownService(_)) if started.elapsed() < STARTUP_DEADLINE => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(BenchError::UnknownService(_)) => {
                return Err(BenchError::Timeout(format!(
                    "the {label} server did not answer within {STARTUP_DEADLINE:?}:\n{}",
                    log_text()
                )));
            }
            Err(err) => return Err(err),
        }
    }
    let mut metrics = BTreeMap::new();
    metrics.insert("startup_ms".to_owned(), started.elapsed().as_secs_f64() * 1000.0);
    // Settled a moment after its first answer, before any load.
    tokio::time::sleep(Duration::from_millis(200)).await;
    metrics.insert("server_idle_rss_kb".to_owned(), rss_kb(&pid)? as f64);
    let mut client_rss: f64 = 0.0;
    for scenario in &options.scenarios {
        let name = scenario.name();
        let server_cpu = cpu_time(&pid)?;
        let report = client(options, setup.client, scenario).await?;
        let server_cpu = cpu_time(&pid)?.saturating_sub(server_cpu);
        metrics.insert(
            format!("{name}.server_cpu_us"),
            server_cpu.as_secs_f64() * 1e6 / scenario.ops() as f64,
        );
        for (key, _) in report.pairs() {
            if matches!(key, "rps" | "p50_us" | "p99_us" | "dispatch_rps" | "consume_rps") {
                metrics.insert(format!("{name}.{key}"), report.number(key)?);
            }
        }
        metrics.insert(format!("{name}.client_cpu_us"), report.number("cpu_us_per_op")?);
        // The nameko-rs client counts the requests whose reply came before their confirm.
        if let (Ok(routed), Ok(unconfirmed)) = (
            report.number("publishes_routed"),
            report.number("publishes_unconfirmed"),
        ) && !matches!(scenario, Scenario::Events { .. })
            && routed + unconfirmed > 0.0
        {
            metrics.insert(
                format!("{name}.reply_first_pct"),
                100.0 * unconfirmed / (routed + unconfirmed),
            );
        }
        client_rss = client_rss.max(report.number("client_rss_kb")?);
    }
    metrics.insert("client_rss_kb".to_owned(), client_rss);
    metrics.insert("server_rss_kb".to_owned(), peak_rss_kb(&pid)? as f64);
    let signalled = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await?;
    if !signalled.success() {
        return Err(BenchError::Process(format!(
            "could not send SIGTERM to the {label} server"
        )));
    }
    let status = tokio::time::timeout(STOP_DEADLINE, server.wait())
        .await
        .map_err(|_| BenchError::Timeout(format!("the {label} server did not stop within {STOP_DEADLINE:?}")))??;
    if !status.success() {
        return Err(BenchError::Process(format!(
            "the {label} server did not stop cleanly ({status}):\n{}",
            log_text()
        )));
    }
    let _ = std::fs::remove_file(&log);
    Ok(RunResult {
        setup,
        metrics,
        load: (load_before, load_average()),
    })
}

/// Runs `scenario` in a client process of `implementation`; its report.
async fn client(
    options: &HarnessOptions,
    implementation: Implementation,
    scenario: &Scenario,
) -> Result<Report, BenchError> {
    let command = implementation.client_command();
    let output = tokio::process::Command::new(&options.exe)
        .arg(command)
        .args(["--broker", &options.broker, "--rpc-exchange", &options.rpc_exchange])
        .args(scenario.args())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(CLIENT_DEADLINE, output)
        .await
        .map_err(|_| BenchError::Timeout(format!("`{command} {}` ran past {CLIENT_DEADLINE:?}", scenario.name())))??;
    if !output.status.success() {
        return Err(BenchError::Process(format!(
            "`{command} {}` failed ({}):\n{}",
            scenario.args().join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Report::parse(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(setup: Setup, rps: f64, p99: f64) -> RunResult {
        RunResult {
            setup,
            metrics: BTreeMap::from([("seq.rps".to_owned(), rps), ("seq.p99_us".to_owned(), p99)]),
            load: ("0.1 0.2 0.3".into(), "0.2 0.2 0.3".into()),
        }
    }

    fn summary(runs: Vec<RunResult>) -> Summary {
        Summary {
            scenarios: vec![Scenario::Seq { calls: 10, bytes: 1 }],
            runs,
        }
    }

    #[test]
    fn the_table_has_medians_ratios_and_floors() {
        let s = summary(vec![
            run(Setup::NAMEKO, 950.0, 1000.0),
            run(Setup::RAW, 1000.0, 1000.0),
            run(Setup::RAW, 1010.0, 900.0),
            run(Setup::NAMEKO, 900.0, 1200.0),
            run(Setup::NAMEKO, 990.0, 1050.0),
            run(Setup::RAW, 990.0, 950.0),
        ]);
        let table = s.markdown();
        assert!(
            table.contains("| metric | nameko-rs | raw lapin | ratio nameko-rs | floor (#5) | target (#10) |"),
            "{table}"
        );
        assert!(
            table.contains("| sequential echo (10 calls, 1 B): calls/s | 950 | 1000 | 0.95 ✗ | ≥ 0.90 ✓ | ≥ 1.30× |"),
            "{table}"
        );
        assert!(
            table.contains("| sequential echo (10 calls, 1 B): p99 (µs) | 1050 | 950 | 1.11 | ≤ 1.10 ✗ |  |"),
            "{table}"
        );
        assert!(
            table.contains("| 6 | raw lapin | 0.1 0.2 0.3 → 0.2 0.2 0.3 |"),
            "{table}"
        );
        assert_eq!(s.meets_floor(), Some(false));
    }

    #[test]
    fn server_side_and_client_side_ratios_divide_by_raw_lapin() {
        let mut s = summary(vec![
            run(Setup::RAW, 1000.0, 100.0),
            run(Setup::NAMEKO, 1000.0, 100.0),
            run(Setup::CLIENT_SIDE, 1400.0, 70.0),
            run(Setup::SERVER_SIDE, 1100.0, 90.0),
        ]);
        s.runs[0].metrics.insert("startup_ms".into(), 20.0);
        s.runs[1].metrics.insert("startup_ms".into(), 60.0);
        let table = s.markdown();
        assert!(
            table.contains(
                "| metric | nameko-rs | raw lapin | server-side | client-side | ratio nameko-rs | \
                 ratio server-side | ratio client-side | floor (#5) | target (#10) |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| sequential echo (10 calls, 1 B): calls/s | 1000 | 1000 | 1100 | 1400 | 1.00 ✗ | 1.10 ✗ | \
                 1.40 ✓ | ≥ 0.90 ✓ | ≥ 1.30× |"
            ),
            "{table}"
        );
        // Absolute targets judge nameko-rs's own number.
        assert!(
            table.contains(
                "| start-up until the first answer (ms) | 60.00 ✗ | 20.00 | – | – | 3.00 | – | – |  | ≤ 50.00 |"
            ),
            "{table}"
        );
        assert!(table.contains("| 3 | client-side |"), "{table}");
        assert_eq!(Setup::parse("nameko"), None);
    }

    #[test]
    fn meeting_every_floor_is_reported() {
        let s = summary(vec![run(Setup::NAMEKO, 1000.0, 100.0), run(Setup::RAW, 1000.0, 100.0)]);
        assert_eq!(s.meets_floor(), Some(true));
        assert_eq!(summary(vec![]).meets_floor(), None);
    }

    #[test]
    fn server_command_lines_pin_the_exchange_and_prefetch() {
        let raw = Implementation::Raw.server_args("amqp://h/", "x", 7);
        assert_eq!(
            raw,
            [
                "raw-server",
                "--broker",
                "amqp://h/",
                "--rpc-exchange",
                "x",
                "--prefetch",
                "7"
            ]
        );
        let nameko = Implementation::Nameko.server_args("amqp://h/", "x", 7);
        assert!(nameko.contains(&"max_workers=7".to_owned()), "{nameko:?}");
    }
}
