//! The RabbitMQ transport: [`AmqpBroker`] implements [`Broker`] with lapin.
//!
//! One connection per broker, with:
//! - a channel for declares and deletes (a channel error such as
//!   `PRECONDITION_FAILED` closes it; the next declare opens another);
//! - one publisher channel in confirm mode: publishes are pipelined (each waits for its
//!   own confirm, not for the others'); a `basic.return` is
//!   [`PublishOutcome::Returned`], a nack [`PublishOutcome::Nacked`], a channel that
//!   closes before the confirm [`PublishOutcome::ChannelClosed`] (the next publish
//!   opens another channel), and a publish to a missing exchange
//!   [`BrokerError::NotFound`];
//! - a channel per consumer, with `basic.qos(prefetch, global = false)`.
//!
//! **Connection loss** (see [the broker contract](crate::broker#connection-loss-and-recovery-one-contract-both-brokers)).
//! lapin's auto-recovery owns reconnection and replay; this broker only shapes it:
//! - declares and deletes run on a channel opened for the operation and closed after
//!   it, so lapin replays no stale declares;
//! - each consumer's channel declares, before `basic.consume`, the queue (with its
//!   bindings and their exchanges) as this broker declared it; lapin replays that
//!   channel — qos, declares, consumer — so the consumer survives the loss, and an
//!   expired or auto-deleted queue comes back;
//! - the connection state is watched: [`ConnectionEvent::Lost`] when lapin starts
//!   reconnecting, [`ConnectionEvent::Recovered`] once it is connected and every
//!   consumer channel is restored (one that is not within 10 s ends with
//!   [`ConsumerEnd::ChannelClosed`]); during the outage every operation fails at once
//!   with [`BrokerError::ConnectionLost`];
//! - reconnection dials every 0.1 s to 5 s, logging each failure (password masked),
//!   until it works or the broker is closed; lapin gives up after 10 handshakes in a
//!   row fail after connecting, and then the connection is gone for good: consumers
//!   end with [`ConsumerEnd::ConnectionLost`].
//!
//! [`AmqpBroker::connect`] itself fails fast: the first failed attempt (or 15 s
//! without an answer) is the error, so a caller decides whether to retry.
//!
//! Heartbeats are negotiated with [`AmqpOptions::heartbeat`] (Nameko's `HEARTBEAT`,
//! default 60 s) unless the URI has a `heartbeat` query parameter.
//!
//! lapin logs returned messages, headers and body included, at WARN under the target
//! `lapin::returned_messages`; turn that target off (the CLI does).

mod confirms;
mod convert;
mod guard;
mod settings;
mod tls;
mod uri;

use std::{
    fmt, io,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use backon::ExponentialBuilder;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::uri::AMQPScheme;
use lapin::{
    Channel, Connection, ConnectionProperties, ErrorKind, Event,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use nameko_core::{Readiness, metrics};
use tokio::sync::{Mutex as AsyncMutex, broadcast, oneshot, watch};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use self::confirms::{Confirmed, Confirms};
use self::convert::{from_properties, short, to_properties, to_table};
pub use self::settings::ConfigConnectError;
pub use self::tls::{AMQP_SSL, TlsError, TlsErrorKind, TlsOptions, Verify};
pub use self::uri::{AmqpUri, UriError};
use crate::broker::{
    AckOutcome, Acker, Broker, BrokerError, ConnectionEvent, ConsumeOptions, Consumer, ConsumerControl, ConsumerEnd,
    ConsumerEvent, Declared, Delivery, ExchangeKind, Publish, PublishOutcome, Topology,
};

/// How long [`AmqpBroker::connect`] waits for RabbitMQ to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long consumer channels may take to be restored once the connection is back.
const RESTORE_GRACE: Duration = Duration::from_secs(10);
/// How often the connection state is looked at.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// How an [`AmqpBroker`] connects.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// Heartbeat interval in seconds (Nameko's `HEARTBEAT`, default 60; 0 disables).
    pub heartbeat: u16,
    /// The connection name RabbitMQ shows (the `connection_name` client property).
    pub connection_name: String,
    /// TLS options (Nameko's `AMQP_SSL`); with an `amqp://` URI they switch it to TLS.
    /// `None` still means TLS for an `amqps://` URI, with [`TlsOptions::new`].
    pub tls: Option<TlsOptions>,
    /// How to log in (Nameko's `LOGIN_METHOD`; default [`LoginMethod::Plain`]).
    pub login_method: LoginMethod,
    /// The largest AMQP frame this side accepts, in bytes ([`DEFAULT_FRAME_MAX`]); the
    /// connection uses the smaller of this and the broker's (RabbitMQ: 128 KiB). A
    /// message body larger than a frame is sent in several, so this bounds nothing
    /// about messages: it sizes lapin's two connection buffers (32 frames each,
    /// allocated and zeroed at connect), which at RabbitMQ's 128 KiB take 8 MiB of
    /// resident memory per connection.
    pub frame_max: u32,
}

/// [`AmqpOptions::frame_max`]'s default: 32 KiB, so lapin's buffers take 2 MiB per
/// connection instead of 8 MiB, and a message of up to 32 KiB is still one frame.
pub const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            heartbeat: 60,
            connection_name: "nameko-rs".to_owned(),
            tls: None,
            login_method: LoginMethod::Plain,
            frame_max: DEFAULT_FRAME_MAX,
        }
    }
}

/// The SASL mechanism a connection logs in with: Nameko's (kombu's) `LOGIN_METHOD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoginMethod {
    /// `PLAIN`: the user and password of the URI (the default).
    #[default]
    Plain,
    /// `AMQPLAIN`: the same, in RabbitMQ's legacy encoding.
    AmqPlain,
    /// `EXTERNAL`: no password; the broker takes the user from the TLS client
    /// certificate (RabbitMQ's `rabbitmq_auth_mechanism_ssl` plugin). Needs TLS with a
    /// client certificate (`AMQP_SSL` `certfile` and `keyfile`).
    External,
}

impl LoginMethod {
    /// The mechanism's SASL name: `PLAIN`, `AMQPLAIN`, `EXTERNAL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::AmqPlain => "AMQPLAIN",
            Self::External => "EXTERNAL",
        }
    }

    fn sasl(self) -> lapin::uri::SASLMechanism {
        match self {
            Self::Plain => lapin::uri::SASLMechanism::Plain,
            Self::AmqPlain => lapin::uri::SASLMechanism::AMQPlain,
            Self::External => lapin::uri::SASLMechanism::External,
        }
    }
}

impl fmt::Display for LoginMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LoginMethod {
    type Err = String;

    /// A SASL name, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "AMQPLAIN" => Ok(Self::AmqPlain),
            "EXTERNAL" => Ok(Self::External),
            _ => Err(format!(
                "unknown login method `{s}`; expected PLAIN, AMQPLAIN or EXTERNAL"
            )),
        }
    }
}

impl AmqpOptions {
    /// Options with the default heartbeat (60 s) and this connection name, e.g.
    /// `"nameko-rs greeting on host-1"`.
    pub fn new(connection_name: impl Into<String>) -> Self {
        Self {
            connection_name: connection_name.into(),
            ..Self::default()
        }
    }

    /// Sets the heartbeat interval in seconds (0 disables heartbeats).
    #[must_use]
    pub fn heartbeat(mut self, seconds: u16) -> Self {
        self.heartbeat = seconds;
        self
    }

    /// Connects with TLS and these options (Nameko's `AMQP_SSL`).
    #[must_use]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Logs in with this mechanism (Nameko's `LOGIN_METHOD`).
    #[must_use]
    pub fn login_method(mut self, method: LoginMethod) -> Self {
        self.login_method = method;
        self
    }

    /// Sets the largest frame this side accepts (see [`frame_max`](Self::frame_max);
    /// lapin raises anything under 8 KiB to 8 KiB, and 0 leaves the broker's).
    ///
    /// ```
    /// use nameko_extensions::amqp::AmqpOptions;
    ///
    /// // RabbitMQ's own default: fewer frames for large bodies, 6 MiB more memory.
    /// let options = AmqpOptions::new("bulk-loader").frame_max(128 * 1024);
    /// assert_eq!(options.frame_max, 131_072);
    /// ```
    #[must_use]
    pub fn frame_max(mut self, bytes: u32) -> Self {
        self.frame_max = bytes;
        self
    }

    /// Refuses options that cannot log in: `EXTERNAL` without a client certificate.
    fn check(&self) -> Result<(), BrokerError> {
        let has_client_cert = self.tls.as_ref().is_some_and(|tls| tls.client_cert_paths().is_some());
        if self.login_method == LoginMethod::External && !has_client_cert {
            return Err(BrokerError::Other(
                "LOGIN_METHOD EXTERNAL logs in with the TLS client certificate, but there is none: give AMQP_SSL \
                 a certfile and a keyfile (RabbitMQ takes the user from the certificate)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// A connection to RabbitMQ, implementing [`Broker`]. Cloning shares the connection.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    uri: AmqpUri,
    /// Held while a publish opens a publisher channel.
    publisher: AsyncMutex<()>,
    /// The open publisher channels, read without waiting by every publish: one for
    /// publishes that are not mandatory (never returned, so their confirms are read as
    /// lapin gives them), one for mandatory publishes, with [`Confirms`] matching
    /// returned messages to them.
    publisher_open: [Mutex<Option<(Channel, Arc<Confirms>)>>; 2],
    events: broadcast::Sender<ConnectionEvent>,
    /// Why the connection is down, while it is.
    down: Mutex<Option<String>>,
    /// Counts losses: a publish waiting for its confirm when the connection is lost
    /// gives up (lapin leaves such confirms pending across its recovery).
    losses: watch::Sender<u64>,
    /// Cancelled when the connection is gone for good.
    dead: CancellationToken,
    closed: AtomicBool,
    dialer: Arc<Dialer>,
    declared: Mutex<Declared>,
    consumers: Mutex<Vec<Weak<AmqpConsumerControl>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.dialer.stop(Phase::Closed);
        self.dead.cancel();
    }
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("uri", &self.inner.uri)
            .field("connected", &self.inner.connection.status().connected())
            .finish_non_exhaustive()
    }
}

/// Where the dialer is in the connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The first connection: one attempt, its failure is `connect`'s error.
    Connecting,
    /// Connected once: lapin is reconnecting; dial until it works.
    Established,
    /// `connect` failed: dial no more.
    Abandoned,
    /// The broker was closed or dropped: dial no more.
    Closed,
}

/// Opens TCP connections for lapin: once at first, then (when lapin reconnects)
/// again and again with a growing delay, logging each failure.
struct Dialer {
    uri: AmqpUri,
    phase: Mutex<Phase>,
    first_failure: Mutex<Option<oneshot::Sender<String>>>,
}

impl Dialer {
    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// Stops dialing (`Abandoned` or `Closed`), unless already closed.
    fn stop(&self, phase: Phase) {
        let mut current = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != Phase::Closed {
            *current = phase;
        }
    }

    fn stopped(&self) -> bool {
        matches!(self.phase(), Phase::Abandoned | Phase::Closed)
    }

    /// After a failed dial: whether to dial again (after sleeping `delay`).
    fn retry_after(&self, error: &io::Error, delay: Duration) -> bool {
        match self.phase() {
            Phase::Connecting => {
                self.stop(Phase::Abandoned);
                let first = self.first_failure.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(first) = first {
                    let _ = first.send(error.to_string());
                }
                false
            }
            Phase::Established => {
                tracing::warn!(uri = %self.uri, %error, "cannot reach RabbitMQ to recover the connection; retrying in {delay:?}");
                // This runs on lapin's connection thread, which waits for the dial anyway.
                let mut slept = Duration::ZERO;
                while slept < delay {
                    if self.stopped() {
                        return false;
                    }
                    let step = Duration::from_millis(100).min(delay - slept);
                    std::thread::sleep(step);
                    slept += step;
                }
                !self.stopped()
            }
            Phase::Abandoned | Phase::Closed => false,
        }
    }
}

impl AmqpBroker {
    /// How many consumers queue `name` has, `None` when it does not exist: a passive
    /// declare on a channel of its own (what `discover` falls back to without the
    /// management API).
    ///
    /// # Errors
    ///
    /// [`BrokerError::ResourceLocked`] for another connection's exclusive queue, or when
    /// the connection is down.
    pub async fn queue_consumers(&self, name: &str) -> Result<Option<u32>, BrokerError> {
        let short_name = short("a queue name", name)?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let result = self
            .inner
            .on_declarer(|channel| async move {
                channel
                    .queue_declare(short_name, options, FieldTable::default())
                    .await
                    .map(|declared| declared.consumer_count())
            })
            .await;
        match result {
            Ok(consumers) => Ok(Some(consumers)),
            Err(BrokerError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Connects to RabbitMQ at `uri`, with TLS for `amqps://` or when `options.tls` is
    /// set (see [`TlsOptions`]; [`AmqpBroker::connect_config`] reads both from a config),
    /// and with lapin's auto-recovery on (see the module docs). Fails fast: it does not
    /// retry; callers that should wait for RabbitMQ (a service starting) retry it.
    ///
    /// # Errors
    ///
    /// [`BrokerError::ConnectionLost`] naming the URI (password masked) when RabbitMQ
    /// cannot be reached, refuses the login, fails the TLS handshake or does not answer
    /// within 15 s; [`BrokerError::Other`] naming the `amqp-tls` feature when TLS is
    /// asked for in a build without it.
    pub async fn connect(uri: &AmqpUri, options: AmqpOptions) -> Result<Self, BrokerError> {
        options.check()?;
        let (uri, secure) = tls::prepare(uri, options.tls.as_ref())?;
        Self::open(&uri, secure, &options).await
    }

    /// One attempt to connect to `uri` (already `amqps://` when TLS is on), with TLS
    /// prepared by [`tls::prepare`].
    async fn open(uri: &AmqpUri, secure: Option<tls::Secure>, options: &AmqpOptions) -> Result<Self, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(options.connection_name.clone().into())
            .enable_auto_recover()
            .with_backoff(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
                    .with_max_times(10),
            );
        // The socket is opened in plain TCP; TLS, when asked for, is added on top with
        // our own rustls configuration.
        let plain = OwnedTLSConfig::default();
        let (first_failure, failed) = oneshot::channel();
        let dialer = Arc::new(Dialer {
            uri: uri.clone(),
            phase: Mutex::new(Phase::Connecting),
            first_failure: Mutex::new(Some(first_failure)),
        });
        // lapin's default runtime (tokio, current), with TCP streams that pass what
        // lapin reads through the header guard.
        let runtime = async_rs::Runtime::new(guard::GuardedKit::current());
        let dial = Arc::clone(&dialer);
        let connecting = Connection::connector(
            uri.as_lapin(options.heartbeat, options.login_method.sasl(), options.frame_max),
            runtime,
            async move |uri, runtime| {
                let abandoned = || lapin::Error::from(io::Error::other("the connection was abandoned or closed"));
                let mut delay = Duration::from_millis(100);
                loop {
                    if dial.stopped() {
                        return Err(abandoned());
                    }
                    let mut target = uri.clone();
                    target.scheme = AMQPScheme::AMQP;
                    let stream = target.connect_with_config_async(plain.as_ref(), &runtime).await;
                    #[cfg(feature = "amqp-tls")]
                    let stream = match (stream, &secure) {
                        // TLS inside the guarded stream, so the guard reads plain frames.
                        (Ok(lapin::AsyncTcpStream::Plain(stream)), Some(secure)) => stream
                            .into_rustls(&secure.connector, &secure.server_name)
                            .await
                            .map(lapin::AsyncTcpStream::Plain)
                            .map_err(|e| {
                                io::Error::new(
                                    e.kind(),
                                    format!("TLS handshake with {} failed: {e}", secure.server_name),
                                )
                            }),
                        (Ok(_), Some(_)) => Err(io::Error::other("the plain TCP stream was already wrapped")),
                        (stream, _) => stream,
                    };
                    #[cfg(not(feature = "amqp-tls"))]
                    let _: &Option<tls::Secure> = &secure;
                    match stream {
                        Ok(_) if dial.stopped() => return Err(abandoned()),
                        Ok(stream) => return Ok(stream),
                        Err(error) => {
                            if !dial.retry_after(&error, delay) {
                                return Err(error.into());
                            }
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            },
            properties,
        );
        let cannot = |reason: String| BrokerError::ConnectionLost(format!("cannot connect to {uri}: {reason}"));
        let connection = tokio::select! {
            connected = connecting => match connected {
                Ok(connection) => connection,
                Err(error) => {
                    dialer.stop(Phase::Abandoned);
                    return Err(cannot(error.to_string()));
                }
            },
            Ok(reason) = failed => return Err(cannot(reason)),
            () = tokio::time::sleep(CONNECT_TIMEOUT) => {
                dialer.stop(Phase::Abandoned);
                return Err(cannot(format!("no answer within {CONNECT_TIMEOUT:?}")));
            }
        };
        dialer.set(Phase::Established);
        let (events, _) = broadcast::channel(64);
        let listener = connection.events_listener();
        let inner = Arc::new(Inner {
            connection,
            uri: uri.clone(),
            publisher: AsyncMutex::new(()),
            publisher_open: [Mutex::new(None), Mutex::new(None)],
            events: events.clone(),
            down: Mutex::new(None),
            losses: watch::Sender::new(0),
            dead: CancellationToken::new(),
            closed: AtomicBool::new(false),
            dialer,
            declared: Mutex::new(Declared::default()),
            consumers: Mutex::new(Vec::new()),
        });
        let _ = events.send(ConnectionEvent::Connected);
        tokio::spawn(watch_events(Arc::downgrade(&inner), listener));
        tokio::spawn(watch_connection(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// Connects to RabbitMQ at `uri`, waiting as long as it takes: each failed attempt
    /// is logged (password masked) and retried with a growing delay (0.5 s to 15 s,
    /// jittered). This is how a service starts (DESIGN §4: never fall back, retry,
    /// log, report not ready); standalone tools use [`connect`](Self::connect), which
    /// fails fast. Drop the future to give up (a shutdown signal).
    ///
    /// With a `readiness`, a part named `RabbitMQ connection` is not ready until
    /// connected, then follows the connection ([`ConnectionEvent::Lost`] /
    /// [`ConnectionEvent::Recovered`]) for as long as the broker lives.
    ///
    /// # Errors
    ///
    /// Only what no retry can mend, before the first attempt: TLS asked for in a build
    /// without the `amqp-tls` feature, or TLS options rustls refuses.
    pub async fn connect_retrying(
        uri: &AmqpUri,
        options: AmqpOptions,
        readiness: Option<&Readiness>,
    ) -> Result<Self, BrokerError> {
        use backon::BackoffBuilder;

        options.check()?;
        // TLS is prepared once (its files read, its connector built), not per attempt.
        let (effective, secure) = tls::prepare(uri, options.tls.as_ref())?;
        let part = readiness.map(|r| r.part("RabbitMQ connection", format!("connecting to {uri}")));
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(15))
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempt = 1_u64;
        let broker = loop {
            match Self::open(&effective, secure.clone(), &options).await {
                Ok(broker) => break broker,
                Err(error) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(15));
                    tracing::warn!(
                        %uri,
                        attempt,
                        "{error}; retrying in {:.1}s (not ready; never falling back to memory)",
                        delay.as_secs_f64()
                    );
                    if let Some(part) = &part {
                        part.not_ready(format!("cannot connect to {uri} (attempt {attempt})"));
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        };
        if attempt > 1 {
            tracing::info!(%uri, attempt, "connected to RabbitMQ");
        }
        if let Some(part) = part {
            part.ready();
            let mut events = broker.events();
            tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        Ok(ConnectionEvent::Lost { reason }) => part.not_ready(format!("connection lost: {reason}")),
                        Ok(ConnectionEvent::Recovered) => part.ready(),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        Ok(broker)
    }

    /// The URI it connected to (its `Display` masks the password).
    pub fn uri(&self) -> &AmqpUri {
        &self.inner.uri
    }

    /// Whether the connection is open (not lost, not closed).
    pub fn is_connected(&self) -> bool {
        self.inner.usable().is_ok()
    }
}

/// Logs lapin's connection events; turns blocking into [`ConnectionEvent::Blocked`].
async fn watch_events(inner: Weak<Inner>, listener: impl Stream<Item = Event> + Send + 'static) {
    let mut listener = std::pin::pin!(listener);
    while let Some(event) = listener.next().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match event {
            Event::ConnectionBlocked(reason) => {
                tracing::warn!(%reason, "RabbitMQ blocked publishing on this connection");
                let _ = inner.events.send(ConnectionEvent::Blocked { blocked: true });
            }
            Event::ConnectionUnblocked => {
                tracing::info!("RabbitMQ unblocked publishing on this connection");
                let _ = inner.events.send(ConnectionEvent::Blocked { blocked: false });
            }
            Event::Error(error) if !error.is_amqp_soft_error() => {
                tracing::debug!(%error, "connection error");
                let mut down = inner.down.lock().unwrap_or_else(PoisonError::into_inner);
                if down.is_some() {
                    *down = Some(error.to_string());
                }
            }
            _ => {}
        }
    }
}

/// Watches lapin's connection state: `Lost` when it starts reconnecting,
/// `Recovered` when it is connected again and every consumer channel is restored,
/// dead when lapin gave up.
async fn watch_connection(weak: Weak<Inner>) {
    let mut up = true;
    let mut back_since: Option<tokio::time::Instant> = None;
    let mut ticker = tokio::time::interval(WATCH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let status = inner.connection.status();
        if status.errored() || status.closed() {
            let reason = inner
                .down
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or_else(|| "the connection closed".to_owned());
            tracing::error!(uri = %inner.uri, %reason, "the connection to RabbitMQ is gone for good: recovery gave up");
            if up {
                let _ = inner.events.send(ConnectionEvent::Lost { reason });
            }
            inner.dead.cancel();
            inner.losses.send_modify(|n| *n += 1);
            return;
        }
        if up && !status.connected() {
            up = false;
            back_since = None;
            let reason = format!("the connection to {} was lost; reconnecting", inner.uri);
            tracing::warn!(uri = %inner.uri, "lost the connection to RabbitMQ; reconnecting");
            *inner.down.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
            inner.losses.send_modify(|n| *n += 1);
            let _ = inner.events.send(ConnectionEvent::Lost { reason });
        } else if !up && status.connected() {
            let since = *back_since.get_or_insert_with(tokio::time::Instant::now);
            let pending = inner.restoring_consumers();
            let late = since.elapsed() >= RESTORE_GRACE;
            if late {
                for control in &pending {
                    tracing::warn!(tag = %control.tag, "a consumer was not restored after the connection recovered");
                    control.failed.cancel();
                }
            }
            if pending.is_empty() || late {
                up = true;
                *inner.down.lock().unwrap_or_else(PoisonError::into_inner) = None;
                tracing::info!(uri = %inner.uri, "recovered the connection to RabbitMQ");
                let _ = inner.events.send(ConnectionEvent::Recovered);
            }
        }
    }
}

impl Inner {
    /// Consumer channels lapin has not restored yet.
    fn restoring_consumers(&self) -> Vec<Arc<AmqpConsumerControl>> {
        let mut consumers = self.consumers.lock().unwrap_or_else(PoisonError::into_inner);
        consumers.retain(|c| c.strong_count() > 0);
        consumers
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.state.load(Ordering::SeqCst) == RUNNING && c.channel.status().initializing())
            .collect()
    }

    /// Ok while the connection can be used.
    fn usable(&self) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::ConnectionLost(format!(
                "the connection to {} was closed",
                self.uri
            )));
        }
        if self.dead.is_cancelled() {
            return Err(BrokerError::ConnectionLost(format!(
                "the connection to {} is gone: recovery gave up",
                self.uri
            )));
        }
        if let Some(reason) = &*self.down.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(BrokerError::ConnectionLost(reason.clone()));
        }
        if !self.connection.status().connected() {
            return Err(BrokerError::ConnectionLost(format!(
                "the connection to {} is down; reconnecting",
                self.uri
            )));
        }
        Ok(())
    }

    /// Whether lapin is reconnecting (the connection may come back).
    fn recovering(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && !self.dead.is_cancelled() && !self.connection.status().connected()
    }

    /// The broker error for a lapin error.
    fn error(&self, error: &lapin::Error) -> BrokerError {
        if let ErrorKind::ProtocolError(amqp) = error.kind() {
            let text = amqp.get_message().as_str();
            let text = text.split_once(" - ").map_or(text, |(_, rest)| rest).to_owned();
            return match amqp.get_id() {
                crate::broker::PRECONDITION_FAILED => BrokerError::PreconditionFailed(text),
                crate::broker::NOT_FOUND => BrokerError::NotFound(text),
                crate::broker::RESOURCE_LOCKED => BrokerError::ResourceLocked(text),
                403 => BrokerError::Other(format!("ACCESS_REFUSED: {text}")),
                _ if error.is_amqp_hard_error() => BrokerError::ConnectionLost(text),
                _ => BrokerError::ChannelClosed(text),
            };
        }
        if let Err(lost) = self.usable() {
            return lost;
        }
        match error.kind() {
            ErrorKind::IOError(_) | ErrorKind::MissingHeartbeatError | ErrorKind::InvalidConnectionState(_) => {
                BrokerError::ConnectionLost(format!("{}: {error}", self.uri))
            }
            ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_) => {
                BrokerError::ChannelClosed(error.to_string())
            }
            _ => BrokerError::Other(error.to_string()),
        }
    }

    /// The publisher channel in confirm mode for mandatory publishes or for the others:
    /// the open one without waiting (publishes run side by side), or a new one, opened
    /// by one publish while the others wait.
    async fn publisher_channel(&self, mandatory: bool) -> Result<(Channel, Arc<Confirms>), BrokerError> {
        if let Some(channel) = self.open_publisher(mandatory) {
            return Ok(channel);
        }
        let _opening = self.publisher.lock().await;
        // Another publish may have opened it while this one waited.
        if let Some(channel) = self.open_publisher(mandatory) {
            return Ok(channel);
        }
        let channel = self.connection.create_channel().await.map_err(|e| self.error(&e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.error(&e))?;
        let open = (channel, Arc::new(Confirms::default()));
        *self.publisher_open[usize::from(mandatory)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(open.clone());
        Ok(open)
    }

    fn open_publisher(&self, mandatory: bool) -> Option<(Channel, Arc<Confirms>)> {
        self.publisher_open[usize::from(mandatory)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(channel, _)| channel.status().connected())
            .cloned()
    }

    async fn run_declare(&self, channel: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
        for exchange in &topology.exchanges {
            let kind = match exchange.kind {
                ExchangeKind::Topic => lapin::ExchangeKind::Topic,
                ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            };
            let options = ExchangeDeclareOptions {
                durable: exchange.durable,
                auto_delete: exchange.auto_delete,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(exchange.name.as_str().into(), kind, options, FieldTable::default())
                .await?;
        }
        for queue in &topology.queues {
            let options = QueueDeclareOptions {
                durable: queue.durable,
                exclusive: queue.exclusive,
                auto_delete: queue.auto_delete,
                ..QueueDeclareOptions::default()
            };
            // Checked by `check_topology` before the declare started.
            let arguments = to_table(&queue.arguments).unwrap_or_default();
            channel
                .queue_declare(queue.name.as_str().into(), options, arguments)
                .await?;
        }
        for binding in &topology.bindings {
            channel
                .queue_bind(
                    binding.queue.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Runs `operation` on a channel of its own, closed after it (lapin replays
    /// nothing of it).
    async fn on_declarer<F, Fut, T>(&self, operation: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, lapin::Error>>,
    {
        self.usable()?;
        let channel = self.connection.create_channel().await.map_err(|e| self.error(&e))?;
        let result = operation(channel.clone()).await.map_err(|e| self.error(&e));
        if channel.status().connected()
            && let Err(error) = channel.close(200, "OK".into()).await
        {
            tracing::debug!(%error, "closing a declare channel");
        }
        result
    }
}

/// Names checked for lapin's 255-byte short strings before anything is sent.
fn check_topology(topology: &Topology) -> Result<(), BrokerError> {
    for exchange in &topology.exchanges {
        short("an exchange name", &exchange.name)?;
    }
    for queue in &topology.queues {
        short("a queue name", &queue.name)?;
        to_table(&queue.arguments)?;
    }
    for binding in &topology.bindings {
        short("an exchange name", &binding.exchange)?;
        short("a queue name", &binding.queue)?;
        short("a routing key", &binding.routing_key)?;
    }
    Ok(())
}

/// A publish in flight, for the metrics: one whose caller stops waiting before the
/// confirm (an RPC call whose reply came first, or one that timed out) is counted
/// `unconfirmed` when dropped.
struct Unconfirmed(Option<std::time::Instant>);

impl Drop for Unconfirmed {
    fn drop(&mut self) {
        if let Some(started) = self.0 {
            metrics::record_publish(started.elapsed(), metrics::PublishOutcome::Unconfirmed);
        }
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        check_topology(topology)?;
        let inner = &self.inner;
        inner
            .on_declarer(|channel| async move { inner.run_declare(&channel, topology).await })
            .await?;
        inner
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(topology);
        Ok(())
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        let raw = name;
        let name = short("a queue name", name)?;
        self.inner
            .on_declarer(|channel| async move {
                channel
                    .queue_delete(name, QueueDeleteOptions::default())
                    .await
                    .map(drop)
            })
            .await?;
        self.inner
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget_queue(raw);
        Ok(())
    }

    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        let raw = name;
        let name = short("an exchange name", name)?;
        self.inner
            .on_declarer(|channel| async move { channel.exchange_delete(name, ExchangeDeleteOptions::default()).await })
            .await?;
        self.inner
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .forget_exchange(raw);
        Ok(())
    }

    async fn publish(&self, mut message: Publish) -> Result<PublishOutcome, BrokerError> {
        let inner = &self.inner;
        let exchange = short("an exchange name", &message.exchange)?;
        let routing_key = short("a routing key", &message.routing_key)?;
        let properties = to_properties(&message.properties)?;
        // Subscribed before the check: a loss from here on ends the wait below.
        let mut losses = inner.losses.subscribe();
        inner.usable()?;
        let options = BasicPublishOptions {
            mandatory: message.mandatory,
            immediate: false,
        };
        // The routing key and properties are in lapin's form by now.
        let identity = message.mandatory.then(|| confirms::Identity {
            exchange: message.exchange.clone(),
            routing_key: std::mem::take(&mut message.routing_key),
            correlation_id: message.properties.correlation_id.take(),
            body: message.body.clone(),
        });
        let started = std::time::Instant::now();
        // Counted as unconfirmed if this future is dropped before the confirm is read.
        let mut waiting = Unconfirmed(Some(started));
        let attempt = async {
            let (channel, confirms) = inner.publisher_channel(message.mandatory).await?;
            // A mandatory publish is tracked before it is sent: see `confirms` for why.
            let mut ticket = identity.map(|identity| confirms.reserve(identity));
            let confirmation = match channel
                .basic_publish(exchange, routing_key, options, &message.body, properties)
                .await
            {
                Ok(confirm) => match &mut ticket {
                    Some(ticket) => {
                        ticket.sent(confirm);
                        ticket.await
                    }
                    None => confirm.await.map(Confirmed::from),
                },
                Err(error) => Err(error),
            };
            Ok::<_, BrokerError>(confirmation)
        };
        // lapin keeps whatever waits for the broker (a confirm, a channel being opened)
        // pending across its recovery: a loss ends the wait here instead.
        let confirmation = tokio::select! {
            biased;
            confirmation = attempt => confirmation,
            _ = losses.changed() => Err(BrokerError::ConnectionLost(format!(
                "the connection to {} was lost before the broker confirmed the publish: \
                 it may or may not have been routed",
                inner.uri
            ))),
        };
        let outcome = publish_outcome(confirmation, inner, &message.exchange);
        let recorded = match &outcome {
            Ok(PublishOutcome::Routed) => metrics::PublishOutcome::Routed,
            Ok(PublishOutcome::Returned { .. }) => metrics::PublishOutcome::Returned,
            Ok(PublishOutcome::Nacked) => metrics::PublishOutcome::Nacked,
            Ok(_) | Err(_) => metrics::PublishOutcome::Failed,
        };
        waiting.0 = None;
        metrics::record_publish(started.elapsed(), recorded);
        outcome
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        let inner = &self.inner;
        let queue_name = queue;
        let queue = short("a queue name", queue)?;
        let tag = short("a consumer tag", &options.consumer_tag)?;
        inner.usable()?;
        // Declared on the consumer's channel, so lapin replays it before the consumer.
        let redeclare = inner
            .declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .for_queue(queue_name);
        let channel = inner.connection.create_channel().await.map_err(|e| inner.error(&e))?;
        let started = async {
            if options.prefetch > 0 {
                channel
                    .basic_qos(options.prefetch, BasicQosOptions { global: false })
                    .await?;
            }
            inner.run_declare(&channel, &redeclare).await?;
            let consume_options = BasicConsumeOptions {
                exclusive: options.exclusive,
                ..BasicConsumeOptions::default()
            };
            channel
                .basic_consume(queue, tag, consume_options, FieldTable::default())
                .await
        }
        .await;
        let consumer = match started {
            Ok(consumer) => consumer,
            Err(error) => {
                let _ = channel.close(200, "OK".into()).await;
                return Err(match inner.error(&error) {
                    // RabbitMQ refuses an exclusive-consumer conflict with ACCESS_REFUSED.
                    BrokerError::Other(text) if text.contains("exclusive") => BrokerError::ResourceLocked(text),
                    other => other,
                });
            }
        };
        let tag = consumer.tag().to_string();
        let control = Arc::new(AmqpConsumerControl {
            channel,
            tag: tag.clone(),
            state: AtomicU8::new(RUNNING),
            failed: CancellationToken::new(),
        });
        inner
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&control));
        let deliveries = Deliveries {
            consumer,
            dead_wait: Box::pin(inner.dead.clone().cancelled_owned()),
            failed_wait: Box::pin(control.failed.clone().cancelled_owned()),
            control: Arc::clone(&control),
            inner: Arc::downgrade(inner),
            dead: inner.dead.clone(),
            ended: false,
        };
        Ok(Consumer::from_stream(tag, deliveries.into_stream(), control))
    }

    fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.events.subscribe()
    }

    async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.dialer.stop(Phase::Closed);
        if let Err(error) = self.inner.connection.close(200, "OK".into()).await {
            tracing::debug!(%error, "closing the RabbitMQ connection");
        }
    }
}

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const CLOSING: u8 = 2;

/// A lapin consumer's deliveries, then its end, polled straight from the task that
/// consumes (no forwarding task). While lapin recovers the connection the consumer
/// stays: lapin replays it on its channel.
struct Deliveries {
    consumer: lapin::Consumer,
    control: Arc<AmqpConsumerControl>,
    inner: Weak<Inner>,
    dead: CancellationToken,
    // Made once, not for every delivery.
    dead_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    failed_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl Deliveries {
    fn into_stream(self) -> impl Stream<Item = ConsumerEvent> + Send + 'static {
        futures_util::stream::unfold(self, |mut this| async move {
            if this.ended {
                return None;
            }
            let event = this.next_event().await;
            Some((event, this))
        })
    }

    fn recovering(&self) -> bool {
        self.control.channel.status().initializing() || self.inner.upgrade().is_some_and(|i| i.recovering())
    }

    fn gone(&self) -> bool {
        self.dead.is_cancelled()
            || self
                .inner
                .upgrade()
                .is_none_or(|inner| inner.usable().is_err() && !inner.recovering())
    }

    async fn next_event(&mut self) -> ConsumerEvent {
        let end = loop {
            let item = tokio::select! {
                item = self.consumer.next() => item,
                () = self.dead_wait.as_mut() => break ConsumerEnd::ConnectionLost,
                () = self.failed_wait.as_mut() => break ConsumerEnd::ChannelClosed,
            };
            match item {
                Some(Ok(delivery)) => {
                    return ConsumerEvent::Delivery(Box::new(Delivery {
                        exchange: delivery.exchange.to_string(),
                        routing_key: delivery.routing_key.to_string(),
                        redelivered: delivery.redelivered,
                        properties: from_properties(&delivery.properties),
                        body: Bytes::from(delivery.data),
                        acker: Arc::new(AmqpAcker { acker: delivery.acker }),
                    }));
                }
                Some(Err(error)) => {
                    if self.control.state.load(Ordering::SeqCst) == CLOSING {
                        break ConsumerEnd::ChannelClosed;
                    }
                    if self.recovering() {
                        tracing::debug!(%error, tag = %self.control.tag, "consumer interrupted; lapin is recovering it");
                        continue;
                    }
                    break if self.gone() {
                        ConsumerEnd::ConnectionLost
                    } else {
                        ConsumerEnd::ChannelClosed
                    };
                }
                None => {
                    break match self.control.state.load(Ordering::SeqCst) {
                        CANCELLED => ConsumerEnd::Cancelled { by_broker: false },
                        CLOSING => ConsumerEnd::ChannelClosed,
                        _ if self.gone() => ConsumerEnd::ConnectionLost,
                        _ if !self.control.channel.status().connected() => ConsumerEnd::ChannelClosed,
                        _ => ConsumerEnd::Cancelled { by_broker: true },
                    };
                }
            }
        };
        self.ended = true;
        if !matches!(end, ConsumerEnd::Cancelled { by_broker: false }) {
            // Nothing to replay any more: a closed channel is not recovered.
            self.control.close().await;
        }
        ConsumerEvent::End(end)
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The `Consumer` was dropped: stop receiving; what it holds stays
        // unacknowledged until settled or the channel closes.
        let control = Arc::clone(&self.control);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = control.cancel().await;
            });
        }
    }
}

/// Cancels or closes one consumer's channel.
struct AmqpConsumerControl {
    channel: Channel,
    tag: String,
    state: AtomicU8,
    /// Cancelled when lapin did not restore the channel after a recovery.
    failed: CancellationToken,
}

impl fmt::Debug for AmqpConsumerControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConsumerControl")
            .field("channel", &self.channel.id())
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ConsumerControl for AmqpConsumerControl {
    async fn cancel(&self) -> Result<(), BrokerError> {
        if self
            .state
            .compare_exchange(RUNNING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Ok(());
        }
        let tag = short("a consumer tag", &self.tag)?;
        self.channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .map_err(|e| BrokerError::ChannelClosed(e.to_string()))
    }

    async fn close(&self) {
        self.state.store(CLOSING, Ordering::SeqCst);
        if self.channel.status().connected()
            && let Err(error) = self.channel.close(200, "OK".into()).await
        {
            tracing::debug!(%error, "closing a consumer channel");
        }
    }
}

/// Settles one delivery. lapin reports an acker whose channel is gone (or that was
/// used already) as `Ok(false)`: that is [`AckOutcome::Stale`]; an acknowledgement
/// under way when the channel ends fails, and is stale too.
struct AmqpAcker {
    acker: lapin::Acker,
}

impl fmt::Debug for AmqpAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpAcker").finish_non_exhaustive()
    }
}

fn settled(result: Result<bool, lapin::Error>) -> AckOutcome {
    match result {
        Ok(true) => AckOutcome::Done,
        Ok(false) => AckOutcome::Stale,
        Err(error) => {
            tracing::debug!(%error, "an acknowledgement failed with its channel; the broker will redeliver");
            AckOutcome::Stale
        }
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<AckOutcome, BrokerError> {
        Ok(settled(self.acker.ack(BasicAckOptions { multiple: false }).await))
    }

    async fn nack(&self, requeue: bool) -> Result<AckOutcome, BrokerError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        Ok(settled(self.acker.nack(options).await))
    }

    async fn reject(&self, requeue: bool) -> Result<AckOutcome, BrokerError> {
        Ok(settled(self.acker.reject(BasicRejectOptions { requeue }).await))
    }
}

/// What a publish came to, from the broker's answer (or the failure to get one).
fn publish_outcome(
    confirmation: Result<Result<Confirmed, lapin::Error>, BrokerError>,
    inner: &Inner,
    exchange: &str,
) -> Result<PublishOutcome, BrokerError> {
    let confirmation = confirmation?;
    match confirmation {
        Ok(Confirmed::Returned { code, text }) => Ok(PublishOutcome::Returned { code, text }),
        Ok(Confirmed::Ack) => Ok(PublishOutcome::Routed),
        Ok(Confirmed::Nack) => Ok(PublishOutcome::Nacked),
        Err(error) => match inner.error(&error) {
            // RabbitMQ closes the channel with 404 for a missing exchange; other
            // publishes in flight on the channel see the same error, but name
            // another exchange.
            BrokerError::NotFound(text) if text.contains(&format!("'{exchange}'")) => Err(BrokerError::NotFound(text)),
            BrokerError::ConnectionLost(text) => Err(BrokerError::ConnectionLost(text)),
            other => {
                tracing::debug!(error = %other, "the publisher channel closed before the confirm");
                Ok(PublishOutcome::ChannelClosed)
            }
        },
    }
}
