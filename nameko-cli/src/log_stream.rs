//! The log stream `tail` reads: a `tracing` layer that publishes the log lines of the
//! services that opted in (`LOG_STREAM`) to a topic exchange (`LOG_EXCHANGE`, default
//! `nameko.logs`), routing key `<service>.<level>`.
//!
//! The layer never blocks: a line goes into a bounded channel (1024 lines) that one
//! task publishes from; when it is full the line is dropped and counted, and the count
//! travels with the next line published. Lines logged while publishing, and lapin's own,
//! are never streamed (no feedback loop).

use std::{
    fmt::{self, Write as _},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use nameko_core::Config;
use nameko_extensions::broker::{Exchange, Headers, Properties, Publish, SharedBroker, Topology};
use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

use crate::CliError;

/// The config key that opts services in: `true` for every service of the process, or a
/// list of service names.
pub const LOG_STREAM_KEY: &str = "LOG_STREAM";
/// The config key naming the exchange log lines go to.
pub const LOG_EXCHANGE_KEY: &str = "LOG_EXCHANGE";
/// The default of `LOG_EXCHANGE`.
pub const DEFAULT_LOG_EXCHANGE: &str = "nameko.logs";

/// How many lines wait for publishing before new ones are dropped.
const CAPACITY: usize = 1024;

/// The sink the layer writes to while a process streams; `None` otherwise.
static SINK: RwLock<Option<Arc<Sink>>> = RwLock::new(None);

tokio::task_local! {
    /// Set in the publishing task: what it logs is never streamed.
    static PUBLISHING: ();
}

/// Log targets never streamed: the AMQP client's own lines (publishing them could loop).
const EXCLUDED_TARGETS: &[&str] = &["lapin", "amq_protocol", "nameko_cli::log_stream"];

/// One log line on the wire (the JSON body of each message on `LOG_EXCHANGE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogLine {
    /// The service the line belongs to.
    pub service: String,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The `tracing` target (usually the module path).
    pub target: String,
    /// The message, then the event's other fields as `key=value`.
    pub message: String,
    /// The host the instance runs on.
    pub host: String,
    /// The process id of the instance.
    pub pid: u32,
    /// `n/of` when the process runs several instances of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// Lines dropped (channel full) since the previous line published.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

struct Sink {
    /// The services whose lines are streamed.
    services: Vec<String>,
    /// The only service of the process: lines outside any service's span are its.
    sole: Option<String>,
    host: String,
    pid: u32,
    tx: mpsc::Sender<LogLine>,
    dropped: AtomicU64,
}

/// The layer that feeds the log stream: add it to your own subscriber if you do not use
/// [`init_logging`](crate::init_logging) (which adds it). It does nothing until `run`
/// starts services with `LOG_STREAM` set.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let subscriber = tracing_subscriber::registry().with(nameko_cli::log_stream_layer());
/// # drop(subscriber);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStreamLayer {
    _private: (),
}

/// The [`LogStreamLayer`].
#[must_use]
pub fn log_stream_layer() -> LogStreamLayer {
    LogStreamLayer::default()
}

/// What a span says about its service, kept in its extensions.
#[derive(Default)]
struct SpanService {
    service: Option<String>,
    instance: Option<String>,
}

impl Visit for SpanService {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "service" => self.service = Some(value.to_owned()),
            "instance" => self.instance = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "service" => self.service = Some(format!("{value:?}")),
            "instance" => self.instance = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// The message and other fields of an event.
#[derive(Default)]
struct Message {
    message: String,
    fields: String,
    service: Option<String>,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "service" {
            self.service = Some(value.to_owned());
        }
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if field.name() == "service" && self.service.is_none() {
                self.service = Some(format!("{value:?}"));
            }
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl Sink {
    fn new(services: Vec<String>, sole: Option<String>, capacity: usize) -> (Arc<Self>, mpsc::Receiver<LogLine>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = Arc::new(Self {
            services,
            sole,
            host: crate::transport::hostname(),
            pid: std::process::id(),
            tx,
            dropped: AtomicU64::new(0),
        });
        (sink, rx)
    }
}

fn sink() -> Option<Arc<Sink>> {
    SINK.read().ok().and_then(|guard| guard.clone())
}

impl<S> Layer<S> for LogStreamLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if sink().is_none() {
            return;
        }
        let mut found = SpanService::default();
        attrs.record(&mut found);
        if (found.service.is_some() || found.instance.is_some())
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(found);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if sink().is_none() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            match extensions.get_mut::<SpanService>() {
                Some(found) => values.record(found),
                None => {
                    let mut found = SpanService::default();
                    values.record(&mut found);
                    extensions.insert(found);
                }
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(sink) = sink() else { return };
        let target = event.metadata().target();
        if EXCLUDED_TARGETS.iter().any(|t| target.starts_with(t)) || PUBLISHING.try_with(|()| ()).is_ok() {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let (mut service, mut instance) = (message.service.clone(), None);
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(found) = span.extensions().get::<SpanService>() {
                    if service.is_none() {
                        service.clone_from(&found.service);
                    }
                    if instance.is_none() {
                        instance.clone_from(&found.instance);
                    }
                }
            }
        }
        let Some(service) = service.or_else(|| sink.sole.clone()) else {
            return;
        };
        if !sink.services.contains(&service) {
            return;
        }
        let line = LogLine {
            service,
            level: event.metadata().level().to_string(),
            target: target.to_owned(),
            message: format!("{}{}", message.message, message.fields),
            host: sink.host.clone(),
            pid: sink.pid,
            instance,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            dropped: 0,
        };
        if sink.tx.try_send(line).is_err() {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The log stream of a running process; [`finish`](Self::finish) it when the services
/// stopped.
pub(crate) struct LogStream {
    publisher: Option<JoinHandle<()>>,
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if let Ok(mut slot) = SINK.write() {
            slot.take();
        }
        if let Some(publisher) = self.publisher.take() {
            publisher.abort();
        }
    }
}

impl LogStream {
    /// Starts streaming when `config` opts any of `services` in (`LOG_STREAM`).
    pub(crate) async fn start(
        broker: SharedBroker,
        config: &Config,
        services: &[String],
    ) -> Result<Option<Self>, CliError> {
        let Some(opted) = opted_in(config, services)? else {
            return Ok(None);
        };
        let exchange = log_exchange(config)?;
        broker
            .declare(&Topology::new().exchange(Exchange::topic(&exchange)))
            .await
            .map_err(|error| CliError::Discovery(format!("cannot declare the log exchange `{exchange}`: {error}")))?;
        let sole = (services.len() == 1).then(|| services[0].clone());
        let (sink, rx) = Sink::new(opted.clone(), sole, CAPACITY);
        let publisher = tokio::spawn(PUBLISHING.scope((), publish(broker, exchange.clone(), rx, Arc::clone(&sink))));
        if let Ok(mut slot) = SINK.write() {
            *slot = Some(sink);
        }
        tracing::info!(
            "streaming the log lines of {} to exchange `{exchange}` (`tail` reads them)",
            opted.join(", ")
        );
        Ok(Some(Self {
            publisher: Some(publisher),
        }))
    }

    /// Stops taking lines and publishes what waits (for at most 2 s).
    pub(crate) async fn finish(mut self) {
        if let Ok(mut slot) = SINK.write() {
            slot.take();
        }
        if let Some(mut publisher) = self.publisher.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut publisher)
                .await
                .is_err()
        {
            publisher.abort();
        }
    }
}

/// The services of `services` that `LOG_STREAM` opts in, `None` when none.
fn opted_in(config: &Config, services: &[String]) -> Result<Option<Vec<String>>, CliError> {
    let Some(value) = config.get(LOG_STREAM_KEY) else {
        return Ok(None);
    };
    let opted: Vec<String> = if value.is_null() {
        Vec::new()
    } else if let Some(all) = value.as_bool() {
        if all { services.to_vec() } else { Vec::new() }
    } else if let Some(list) = value.as_seq() {
        let mut names = Vec::new();
        for item in list {
            let name = item.as_str().ok_or_else(|| {
                CliError::Setting(format!(
                    "{}: {LOG_STREAM_KEY}: expected `true`, `false` or a list of service names, got {}",
                    item.location(),
                    item.type_name()
                ))
            })?;
            if services.iter().any(|s| s == name) {
                names.push(name.to_owned());
            }
        }
        names
    } else {
        return Err(CliError::Setting(format!(
            "{}: {LOG_STREAM_KEY}: expected `true`, `false` or a list of service names, got {}",
            value.location(),
            value.type_name()
        )));
    };
    Ok((!opted.is_empty()).then_some(opted))
}

/// `LOG_EXCHANGE`, or `nameko.logs`.
pub(crate) fn log_exchange(config: &Config) -> Result<String, CliError> {
    match config.get(LOG_EXCHANGE_KEY) {
        None => Ok(DEFAULT_LOG_EXCHANGE.to_owned()),
        Some(value) if value.is_null() => Ok(DEFAULT_LOG_EXCHANGE.to_owned()),
        Some(value) => match value.as_str().map(str::trim).filter(|s| !s.is_empty()) {
            Some(name) => Ok(name.to_owned()),
            None => Err(CliError::Setting(format!(
                "{}: {LOG_EXCHANGE_KEY}: expected an exchange name, got {}",
                value.location(),
                value.type_name()
            ))),
        },
    }
}

/// Publishes each line, in order, until the sink is gone and the channel drained.
async fn publish(broker: SharedBroker, exchange: String, mut rx: mpsc::Receiver<LogLine>, sink: Arc<Sink>) {
    // The layer holds the sink through `SINK`; this task holds only what it needs, so
    // the channel closes once `finish` takes the sink out.
    let counter = Arc::downgrade(&sink);
    drop(sink);
    while let Some(mut line) = rx.recv().await {
        if let Some(sink) = counter.upgrade() {
            line.dropped = sink.dropped.swap(0, Ordering::Relaxed);
        }
        let routing_key = format!("{}.{}", line.service, line.level.to_lowercase());
        let body = serde_json::to_vec(&line).expect("a log line serializes");
        let message = Publish {
            exchange: exchange.clone(),
            routing_key,
            mandatory: false,
            properties: Properties::json(Headers::new()),
            body: Bytes::from(body),
        };
        if let Err(error) = broker.publish(message).await {
            // Not streamed (PUBLISHING is set): said on the local log only.
            tracing::debug!(%error, "could not publish a log line");
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[tokio::test]
    async fn the_layer_streams_opted_in_lines_drops_when_full_and_never_its_own() {
        // (This module's own target is never streamed: the events name another.)
        let (sink, mut rx) = Sink::new(vec!["greeting".to_owned()], None, 2);
        *SINK.write().unwrap() = Some(Arc::clone(&sink));
        let subscriber = tracing_subscriber::registry().with(log_stream_layer());
        let dispatch = tracing::Dispatch::new(subscriber);
        tracing::dispatcher::with_default(&dispatch, || {
            let worker = tracing::info_span!("worker", service = "greeting", instance = tracing::field::Empty);
            worker.record("instance", tracing::field::display("2/3"));
            worker.in_scope(|| tracing::info!(target: "app", visits = 1, "greeting Ada"));
            tracing::info!(target: "app", service = "listen", "not opted in");
            tracing::info!(target: "app", "no service: the process runs several");
            tracing::warn!(target: "lapin::channel", service = "greeting", "lapin's own");
            tracing::info!(target: "app", service = "greeting", "second");
            tracing::info!(target: "app", service = "greeting", "third: the channel is full");
            tracing::info!(target: "app", service = "greeting", "fourth: dropped too");
        });
        PUBLISHING
            .scope((), async {
                tracing::dispatcher::with_default(&dispatch, || {
                    tracing::info!(target: "app", service = "greeting", "logged while publishing");
                });
            })
            .await;
        SINK.write().unwrap().take();
        let first = rx.try_recv().expect("the first line was queued");
        assert_eq!(
            (first.service.as_str(), first.level.as_str(), first.message.as_str()),
            ("greeting", "INFO", "greeting Ada visits=1")
        );
        assert_eq!(first.instance.as_deref(), Some("2/3"));
        assert_eq!(first.pid, std::process::id());
        assert_eq!(rx.try_recv().unwrap().message, "second service=greeting");
        assert!(rx.try_recv().is_err(), "nothing else was queued");
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn log_stream_opts_in_all_or_some_and_names_bad_values() {
        let services = ["greeting".to_owned(), "listen".to_owned()];
        let opted = |yaml: &str| opted_in(&Config::from_yaml_str(yaml).unwrap(), &services);
        assert_eq!(opted("{}").unwrap(), None);
        assert_eq!(opted("LOG_STREAM: false").unwrap(), None);
        assert_eq!(opted("LOG_STREAM: true").unwrap().unwrap(), services);
        assert_eq!(opted("LOG_STREAM: [listen, web]").unwrap().unwrap(), ["listen"]);
        assert_eq!(opted("LOG_STREAM: [web]").unwrap(), None);
        let error = opted("LOG_STREAM: 3").unwrap_err().to_string();
        assert!(
            error.contains("LOG_STREAM: expected `true`, `false` or a list"),
            "{error}"
        );
        let config = |yaml: &str| Config::from_yaml_str(yaml).unwrap();
        assert_eq!(log_exchange(&config("{}")).unwrap(), "nameko.logs");
        assert_eq!(log_exchange(&config("LOG_EXCHANGE: logs.x")).unwrap(), "logs.x");
        assert!(log_exchange(&config("LOG_EXCHANGE: [1]")).is_err());
    }
}
