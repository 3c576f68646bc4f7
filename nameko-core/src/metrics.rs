//! Prometheus metrics, served with the runner's health and readiness on
//! `METRICS_ADDRESS`.
//!
//! With `METRICS_ADDRESS` set (`[host:]port`, off by default), a started runner serves
//! on it:
//!
//! - `GET /metrics`: Prometheus' text format (0.0.4) —
//!   `nameko_worker_requests_total`, `nameko_worker_errors_total` (the worker failed,
//!   panicked or was killed), `nameko_worker_duration_seconds` (a histogram, hooks
//!   included) and `nameko_workers_in_flight`, each labelled `service`, `entrypoint` and
//!   `kind`; `nameko_ready` (1 or 0) and `nameko_readiness_part_ready{part}` (the
//!   RabbitMQ connection, each service, the web server);
//! - `GET /health` and `GET /ready`, answered as the web server answers them (see
//!   [`ReadinessReport::probe_json`]), so a runner without HTTP entrypoints can be probed
//!   too.
//!
//! Publishes to RabbitMQ are counted for the whole process whatever the runner:
//! `nameko_publish_confirm_seconds` (a histogram: from the publish until the broker's
//! confirm, or its refusal) and `nameko_publishes_total{outcome}` (`routed`,
//! `returned`, `nacked`, `failed`, `unconfirmed`), recorded by the broker with
//! [`record_publish`].
//!
//! Nothing else is counted when `METRICS_ADDRESS` is unset. Give the runner a [`Metrics`]
//! resource to read the numbers in code ([`Metrics::render`]) or to serve them yourself.

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::readiness::{Readiness, ReadinessReport};

/// The config key of the metrics address (`[host:]port`; unset: no metrics).
pub const METRICS_ADDRESS_KEY: &str = "METRICS_ADDRESS";

/// Upper bounds of the duration histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds of the publish confirm histogram's buckets, in seconds.
const CONFIRM_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How a publish ended, for [`record_publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// Confirmed, and routed to a queue (or not mandatory).
    Routed,
    /// Mandatory, and returned unroutable.
    Returned,
    /// The broker refused it (`basic.nack`).
    Nacked,
    /// No confirm: the channel or connection failed first.
    Failed,
    /// The publisher stopped waiting before the broker answered: mostly an RPC request
    /// whose reply came first (the reply proves it was delivered), else a call that
    /// timed out or was dropped. Not in the confirm histogram.
    Unconfirmed,
}

impl PublishOutcome {
    const ALL: [Self; 5] = [
        Self::Routed,
        Self::Returned,
        Self::Nacked,
        Self::Failed,
        Self::Unconfirmed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Returned => "returned",
            Self::Nacked => "nacked",
            Self::Failed => "failed",
            Self::Unconfirmed => "unconfirmed",
        }
    }
}

/// A histogram of fixed bounds: a count per bucket (not cumulative, then one above the
/// last bound) and the sum in microseconds.
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: [f64; N],
    buckets: [AtomicU64; N],
    above: AtomicU64,
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: [f64; N]) -> Self {
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            above: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        match self.bounds.iter().position(|&bound| seconds <= bound) {
            Some(bucket) => self.buckets[bucket].fetch_add(1, Ordering::Relaxed),
            None => self.above.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of `name`, with `labels` (`a="b"`, or
    /// empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.buckets) {
            cumulative += load(count);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += load(&self.above);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let sum = load(&self.sum_micros) as f64 / 1e6;
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// The process's publishes (every broker connection): confirm latency and outcomes.
static PUBLISHES: Publishes = Publishes {
    confirm: Histogram::new(CONFIRM_BUCKETS),
    outcomes: [const { AtomicU64::new(0) }; 5],
};

struct Publishes {
    confirm: Histogram<12>,
    outcomes: [AtomicU64; 5],
}

/// Records one publish that waited `elapsed` for the broker's answer (for
/// [`PublishOutcome::Unconfirmed`], counted only): how brokers feed
/// `nameko_publish_confirm_seconds` and `nameko_publishes_total`. Process-wide, cheap
/// (a few relaxed atomic additions), and rendered by every [`Metrics`].
pub fn record_publish(elapsed: Duration, outcome: PublishOutcome) {
    if outcome != PublishOutcome::Unconfirmed {
        PUBLISHES.confirm.observe(elapsed);
    }
    let index = PublishOutcome::ALL
        .iter()
        .position(|&o| o == outcome)
        .unwrap_or_default();
    PUBLISHES.outcomes[index].fetch_add(1, Ordering::Relaxed);
}

/// The largest request head the metrics endpoint reads.
const MAX_HEAD: usize = 8 * 1024;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A runner's metrics: shared by its containers, read by [`render`](Self::render).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    entrypoints: Arc<Mutex<Vec<Arc<EntrypointStats>>>>,
}

/// The numbers of one entrypoint (of every instance of its service).
#[derive(Debug)]
pub(crate) struct EntrypointStats {
    service: &'static str,
    entrypoint: &'static str,
    kind: &'static str,
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicI64,
    duration: Histogram<12>,
}

impl EntrypointStats {
    /// A worker started.
    pub(crate) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker finished after `elapsed`, successfully or not.
    pub(crate) fn finished(&self, elapsed: Duration, success: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !success {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(elapsed);
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The numbers of one entrypoint; instances of one service share them.
    pub(crate) fn entrypoint(
        &self,
        service: &'static str,
        entrypoint: &'static str,
        kind: &'static str,
    ) -> Arc<EntrypointStats> {
        let mut all = self.entrypoints.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = all
            .iter()
            .find(|s| (s.service, s.entrypoint, s.kind) == (service, entrypoint, kind))
        {
            return Arc::clone(found);
        }
        let stats = Arc::new(EntrypointStats {
            service,
            entrypoint,
            kind,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            duration: Histogram::new(BUCKETS),
        });
        all.push(Arc::clone(&stats));
        stats
    }

    /// Every metric in Prometheus' text format (0.0.4); with `readiness`, the
    /// readiness gauges too.
    pub fn render(&self, readiness: Option<&ReadinessReport>) -> String {
        let mut all: Vec<Arc<EntrypointStats>> =
            self.entrypoints.lock().unwrap_or_else(PoisonError::into_inner).clone();
        all.sort_by_key(|s| (s.service, s.entrypoint, s.kind));
        let mut out = String::new();
        let labels = |s: &EntrypointStats| {
            format!(
                "service=\"{}\",entrypoint=\"{}\",kind=\"{}\"",
                escape(s.service),
                escape(s.entrypoint),
                escape(s.kind)
            )
        };
        family(&mut out, "nameko_worker_requests_total", "counter", "Workers finished.");
        for s in &all {
            let _ = writeln!(
                out,
                "nameko_worker_requests_total{{{}}} {}",
                labels(s),
                load(&s.requests)
            );
        }
        family(
            &mut out,
            "nameko_worker_errors_total",
            "counter",
            "Workers that failed, panicked or were killed.",
        );
        for s in &all {
            let _ = writeln!(out, "nameko_worker_errors_total{{{}}} {}", labels(s), load(&s.errors));
        }
        family(
            &mut out,
            "nameko_worker_duration_seconds",
            "histogram",
            "How long workers took, dependency hooks included.",
        );
        for s in &all {
            s.duration
                .render(&mut out, "nameko_worker_duration_seconds", &labels(s));
        }
        family(&mut out, "nameko_workers_in_flight", "gauge", "Workers running now.");
        for s in &all {
            let in_flight = s.in_flight.load(Ordering::Relaxed).max(0);
            let _ = writeln!(out, "nameko_workers_in_flight{{{}}} {in_flight}", labels(s));
        }
        family(
            &mut out,
            "nameko_publish_confirm_seconds",
            "histogram",
            "How long publishes to RabbitMQ waited for the broker's confirm (or refusal).",
        );
        PUBLISHES.confirm.render(&mut out, "nameko_publish_confirm_seconds", "");
        family(
            &mut out,
            "nameko_publishes_total",
            "counter",
            "Publishes to RabbitMQ, by how they ended.",
        );
        for (outcome, count) in PublishOutcome::ALL.iter().zip(&PUBLISHES.outcomes) {
            let _ = writeln!(
                out,
                "nameko_publishes_total{{outcome=\"{}\"}} {}",
                outcome.label(),
                load(count)
            );
        }
        if let Some(report) = readiness {
            family(
                &mut out,
                "nameko_ready",
                "gauge",
                "1 when every readiness part is ready.",
            );
            let _ = writeln!(out, "nameko_ready {}", u8::from(report.is_ready()));
            family(
                &mut out,
                "nameko_readiness_part_ready",
                "gauge",
                "Each readiness part: 1 ready, 0 not.",
            );
            for (part, status) in report.parts() {
                let ready = u8::from(*status == crate::readiness::PartStatus::Ready);
                let _ = writeln!(out, "nameko_readiness_part_ready{{part=\"{}\"}} {ready}", escape(part));
            }
        }
        out
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as Prometheus' text format writes it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics endpoint, serving until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, metrics: Metrics, readiness: Readiness, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "the metrics endpoint could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, &metrics, &readiness).await {
                tracing::debug!(%err, "a metrics request failed");
            }
        });
    }
}

/// Answers one request on `stream`, then closes it.
async fn answer(mut stream: TcpStream, metrics: &Metrics, readiness: &Readiness) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = match head {
        Some(head) => respond(&head, metrics, readiness),
        None => plain(
            400,
            "Bad Request",
            "a request head of at most 8 KiB, ended by an empty line\n",
        ),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head; `None` when it is too long or the client
/// stopped early.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// The response to a request with `head`.
fn respond(head: &str, metrics: &Metrics, readiness: &Readiness) -> Vec<u8> {
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return plain(400, "Bad Request", "a request line `METHOD /path HTTP/1.1`\n");
    };
    let path = target.split('?').next().unwrap_or_default();
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    if !matches!(path, "/metrics" | "/health" | "/ready") {
        return plain(404, "Not Found", "this endpoint serves /metrics, /health and /ready\n");
    }
    if method != "GET" && method != "HEAD" {
        let body = format!("{path} answers GET and HEAD\n");
        return response(
            405,
            "Method Not Allowed",
            "text/plain; charset=utf-8\r\nallow: GET, HEAD",
            &body,
        );
    }
    let (status, reason, content_type, body) = match path {
        "/metrics" => (
            200,
            "OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(Some(&readiness.report())),
        ),
        "/health" => (200, "OK", "application/json", r#"{"status":"alive"}"#.to_owned()),
        _ => {
            let report = readiness.report();
            let (status, reason) = if report.is_ready() {
                (200, "OK")
            } else {
                (503, "Service Unavailable")
            };
            (status, reason, "application/json", report.probe_json().to_string())
        }
    };
    let body = if method == "HEAD" { String::new() } else { body };
    response(status, reason, content_type, &body)
}

fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(status, reason, "text/plain; charset=utf-8", body)
}

fn response(status: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_every_family_with_cumulative_buckets() {
        let metrics = Metrics::new();
        let stats = metrics.entrypoint("greeting", "greet", "rpc");
        stats.started();
        stats.finished(Duration::from_millis(3), true);
        stats.started();
        stats.finished(Duration::from_secs(20), false);
        stats.started();
        assert!(Arc::ptr_eq(&stats, &metrics.entrypoint("greeting", "greet", "rpc")));
        let readiness = Readiness::new();
        let _part = readiness.part("RabbitMQ connection", "connecting");
        let text = metrics.render(Some(&readiness.report()));
        let labels = r#"service="greeting",entrypoint="greet",kind="rpc""#;
        for line in [
            "# TYPE nameko_worker_requests_total counter".to_owned(),
            format!("nameko_worker_requests_total{{{labels}}} 2"),
            format!("nameko_worker_errors_total{{{labels}}} 1"),
            format!("nameko_worker_duration_seconds_bucket{{{labels},le=\"0.001\"}} 0"),
            format!("nameko_worker_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("nameko_worker_duration_seconds_bucket{{{labels},le=\"10\"}} 1"),
            format!("nameko_worker_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("nameko_worker_duration_seconds_sum{{{labels}}} 20.003"),
            format!("nameko_worker_duration_seconds_count{{{labels}}} 2"),
            format!("nameko_workers_in_flight{{{labels}}} 1"),
            "nameko_ready 0".to_owned(),
            r#"nameko_readiness_part_ready{part="RabbitMQ connection"} 0"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no line `{line}` in:\n{text}");
        }
    }

    #[test]
    fn publishes_are_counted_for_the_process() {
        let line = |text: &str, prefix: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no `{prefix}` in:\n{text}"))
        };
        let before = Metrics::new().render(None);
        record_publish(Duration::from_micros(700), PublishOutcome::Routed);
        record_publish(Duration::from_secs(9), PublishOutcome::Failed);
        record_publish(Duration::from_secs(1), PublishOutcome::Unconfirmed);
        // Another registry renders the same, process-wide numbers.
        let after = Metrics::new().render(None);
        for (prefix, added) in [
            ("nameko_publish_confirm_seconds_count ", 2),
            ("nameko_publish_confirm_seconds_bucket{le=\"0.001\"} ", 1),
            ("nameko_publish_confirm_seconds_bucket{le=\"+Inf\"} ", 2),
            ("nameko_publishes_total{outcome=\"routed\"} ", 1),
            ("nameko_publishes_total{outcome=\"failed\"} ", 1),
            ("nameko_publishes_total{outcome=\"unconfirmed\"} ", 1),
        ] {
            // Other tests of this process may publish too: at least ours are there.
            assert!(line(&after, prefix) >= line(&before, prefix) + added, "{prefix}");
        }
        assert!(after.contains("# TYPE nameko_publish_confirm_seconds histogram"));
        assert!(after.contains("nameko_publishes_total{outcome=\"returned\"} "));
    }

    #[test]
    fn requests_get_the_right_answers() {
        let metrics = Metrics::new();
        let readiness = Readiness::new();
        let answer = |head: &str| String::from_utf8(respond(head, &metrics, &readiness)).unwrap();
        assert!(
            answer("GET /metrics HTTP/1.1\r\n\r\n")
                .starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4")
        );
        assert!(answer("GET /health HTTP/1.1\r\n\r\n").ends_with(r#"{"status":"alive"}"#));
        assert!(answer("GET /ready/ HTTP/1.1\r\n\r\n").ends_with(r#"{"ready":true}"#));
        let part = readiness.part("greeting", "starting");
        let not_ready = answer("GET /ready?x=1 HTTP/1.1\r\n\r\n");
        assert!(not_ready.starts_with("HTTP/1.1 503 Service Unavailable"), "{not_ready}");
        assert!(not_ready.contains(r#""reason":"starting""#), "{not_ready}");
        drop(part);
        assert!(answer("HEAD /health HTTP/1.1\r\n\r\n").ends_with("content-length: 0\r\nconnection: close\r\n\r\n"));
        let refused = answer("POST /metrics HTTP/1.1\r\n\r\n");
        assert!(refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{refused}");
        assert!(refused.contains("\r\nallow: GET, HEAD\r\n"), "{refused}");
        assert!(answer("GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(answer("garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn the_address_is_read_like_the_web_servers() {
        let read = |yaml: &str| crate::Config::from_yaml_str(yaml).unwrap().address(METRICS_ADDRESS_KEY);
        assert_eq!(read("{}"), Ok(None));
        assert_eq!(read("METRICS_ADDRESS: null"), Ok(None));
        assert_eq!(read("METRICS_ADDRESS: 9100"), Ok(Some("0.0.0.0:9100".to_owned())));
        assert_eq!(read("METRICS_ADDRESS: 127.0.0.1:0"), Ok(Some("127.0.0.1:0".to_owned())));
        let err = read("METRICS_ADDRESS: nowhere").unwrap_err();
        assert!(
            err.contains("config `METRICS_ADDRESS`") && err.contains("`nowhere` is not an address"),
            "{err}"
        );
    }
}
