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
//! **Connection loss.** lapin's auto-recovery is not enabled yet: a lost connection
//! sends [`ConnectionEvent::Lost`], ends every consumer with
//! [`ConsumerEnd::ConnectionLost`] (their acknowledgements become
//! [`AckOutcome::Stale`]), and every later operation fails with
//! [`BrokerError::ConnectionLost`]. A new [`AmqpBroker`] must be connected;
//! [`ConnectionEvent::Recovered`] is never sent. See `docs/architecture.md`.
//!
//! Heartbeats are negotiated with [`AmqpOptions::heartbeat`] (Nameko's `HEARTBEAT`,
//! default 60 s) unless the URI has a `heartbeat` query parameter.
//!
//! lapin logs returned messages, headers and body included, at WARN under the target
//! `lapin::returned_messages`; turn that target off (the CLI does).

mod convert;
mod settings;
mod tls;
mod uri;

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::{
    Channel, Confirmation, Connection, ConnectionProperties, ErrorKind, Event,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use tokio::sync::{Mutex as AsyncMutex, broadcast, mpsc};

use self::convert::{from_properties, short, to_properties, to_table};
pub use self::settings::ConfigConnectError;
pub use self::tls::{AMQP_SSL, TlsError, TlsErrorKind, TlsOptions, Verify};
pub use self::uri::{AmqpUri, UriError};
use crate::broker::{
    AckOutcome, Acker, Broker, BrokerError, ConnectionEvent, ConsumeOptions, Consumer, ConsumerControl, ConsumerEnd,
    ConsumerEvent, Delivery, ExchangeKind, Publish, PublishOutcome, Topology,
};

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
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            heartbeat: 60,
            connection_name: "nameko-rs".to_owned(),
            tls: None,
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
}

/// A connection to RabbitMQ, implementing [`Broker`]. Cloning shares the connection.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    uri: AmqpUri,
    declarer: AsyncMutex<Option<Channel>>,
    publisher: AsyncMutex<Option<Channel>>,
    events: broadcast::Sender<ConnectionEvent>,
    lost: Mutex<Option<String>>,
    closed: AtomicBool,
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("uri", &self.inner.uri)
            .field("connected", &self.inner.connection.status().connected())
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Connects to RabbitMQ at `uri`, with TLS for `amqps://` or when `options.tls` is
    /// set (see [`TlsOptions`]); [`AmqpBroker::connect_config`] reads both from a config.
    ///
    /// # Errors
    ///
    /// [`BrokerError::ConnectionLost`] naming the URI (password masked) when RabbitMQ
    /// cannot be reached, refuses the login or the TLS handshake fails;
    /// [`BrokerError::Other`] naming the `amqp-tls` feature when TLS is asked for in a
    /// build without it.
    pub async fn connect(uri: &AmqpUri, options: AmqpOptions) -> Result<Self, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(options.connection_name.into());
        let (connection, uri) = tls::open(uri, options.tls.as_ref(), options.heartbeat, properties).await?;
        let (events, _) = broadcast::channel(64);
        let listener = connection.events_listener();
        let inner = Arc::new(Inner {
            connection,
            uri,
            declarer: AsyncMutex::new(None),
            publisher: AsyncMutex::new(None),
            events: events.clone(),
            lost: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let _ = events.send(ConnectionEvent::Connected);
        tokio::spawn(watch_connection(Arc::downgrade(&inner), listener));
        Ok(Self { inner })
    }

    /// The URI it connected to (its `Display` masks the password).
    pub fn uri(&self) -> &AmqpUri {
        &self.inner.uri
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.inner.usable().is_ok()
    }
}

/// Turns lapin's connection events into [`ConnectionEvent`]s.
async fn watch_connection(inner: Weak<Inner>, listener: impl futures_util::Stream<Item = Event> + Send + 'static) {
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
            Event::Error(error) if !error.is_amqp_soft_error() => inner.set_lost(error.to_string()),
            _ => {}
        }
    }
}

impl Inner {
    fn set_lost(&self, reason: String) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        if lost.is_none() {
            tracing::warn!(uri = %self.uri, %reason, "lost the connection to RabbitMQ");
            *lost = Some(reason.clone());
            let _ = self.events.send(ConnectionEvent::Lost { reason });
        }
    }

    /// Ok while the connection can be used.
    fn usable(&self) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::ConnectionLost(format!(
                "the connection to {} was closed",
                self.uri
            )));
        }
        if let Some(reason) = &*self.lost.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(BrokerError::ConnectionLost(format!("{}: {reason}", self.uri)));
        }
        if !self.connection.status().connected() {
            return Err(BrokerError::ConnectionLost(format!("{} is not connected", self.uri)));
        }
        Ok(())
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

    /// The channel in `slot`, or a new one when it is missing or closed.
    async fn channel(&self, slot: &mut Option<Channel>, confirms: bool) -> Result<Channel, BrokerError> {
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        *slot = None;
        let channel = self.connection.create_channel().await.map_err(|e| self.error(&e))?;
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| self.error(&e))?;
        }
        *slot = Some(channel.clone());
        Ok(channel)
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

    /// Runs `operation` on the declare channel.
    async fn on_declarer<F, Fut, T>(&self, operation: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<T, lapin::Error>>,
    {
        self.usable()?;
        let mut slot = self.declarer.lock().await;
        let channel = self.channel(&mut slot, false).await?;
        operation(channel).await.map_err(|e| self.error(&e))
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

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        check_topology(topology)?;
        let inner = &self.inner;
        inner
            .on_declarer(|channel| async move { inner.run_declare(&channel, topology).await })
            .await
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        let name = short("a queue name", name)?;
        self.inner
            .on_declarer(|channel| async move {
                channel
                    .queue_delete(name, QueueDeleteOptions::default())
                    .await
                    .map(drop)
            })
            .await
    }

    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        let name = short("an exchange name", name)?;
        self.inner
            .on_declarer(|channel| async move { channel.exchange_delete(name, ExchangeDeleteOptions::default()).await })
            .await
    }

    async fn publish(&self, message: Publish) -> Result<PublishOutcome, BrokerError> {
        let inner = &self.inner;
        let exchange = short("an exchange name", &message.exchange)?;
        let routing_key = short("a routing key", &message.routing_key)?;
        let properties = to_properties(&message.properties)?;
        inner.usable()?;
        let channel = {
            let mut slot = inner.publisher.lock().await;
            inner.channel(&mut slot, true).await?
        };
        let options = BasicPublishOptions {
            mandatory: message.mandatory,
            immediate: false,
        };
        let confirm = channel
            .basic_publish(exchange, routing_key, options, &message.body, properties)
            .await;
        let confirmation = match confirm {
            Ok(confirm) => confirm.await,
            Err(error) => Err(error),
        };
        match confirmation {
            Ok(Confirmation::Ack(Some(returned))) => Ok(PublishOutcome::Returned {
                code: returned.reply_code,
                text: returned.reply_text.to_string(),
            }),
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(PublishOutcome::Routed),
            Ok(Confirmation::Nack(_)) => Ok(PublishOutcome::Nacked),
            Err(error) => match inner.error(&error) {
                // RabbitMQ closes the channel with 404 for a missing exchange; other
                // publishes in flight on the channel see the same error, but name
                // another exchange.
                BrokerError::NotFound(text) if text.contains(&format!("'{}'", message.exchange)) => {
                    Err(BrokerError::NotFound(text))
                }
                BrokerError::ConnectionLost(text) => Err(BrokerError::ConnectionLost(text)),
                other => {
                    tracing::debug!(error = %other, "the publisher channel closed before the confirm");
                    Ok(PublishOutcome::ChannelClosed)
                }
            },
        }
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        let inner = &self.inner;
        let queue = short("a queue name", queue)?;
        let tag = short("a consumer tag", &options.consumer_tag)?;
        inner.usable()?;
        let channel = inner.connection.create_channel().await.map_err(|e| inner.error(&e))?;
        let started = async {
            if options.prefetch > 0 {
                channel
                    .basic_qos(options.prefetch, BasicQosOptions { global: false })
                    .await?;
            }
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
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(consumer, tx, Arc::clone(&control), Arc::downgrade(inner)));
        Ok(Consumer::new(tag, rx, control))
    }

    fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.events.subscribe()
    }

    async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Err(error) = self.inner.connection.close(200, "OK".into()).await {
            tracing::debug!(%error, "closing the RabbitMQ connection");
        }
    }
}

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const CLOSING: u8 = 2;

/// Forwards a lapin consumer's deliveries, then its end.
async fn forward(
    mut consumer: lapin::Consumer,
    tx: mpsc::UnboundedSender<ConsumerEvent>,
    control: Arc<AmqpConsumerControl>,
    inner: Weak<Inner>,
) {
    let connection_lost = |error: Option<&lapin::Error>| {
        let by_connection = error.is_some_and(|e| {
            e.is_amqp_hard_error()
                || matches!(
                    e.kind(),
                    ErrorKind::IOError(_) | ErrorKind::MissingHeartbeatError | ErrorKind::InvalidConnectionState(_)
                )
        });
        by_connection || inner.upgrade().is_none_or(|inner| inner.usable().is_err())
    };
    let end = loop {
        let item = tokio::select! {
            item = consumer.next() => item,
            () = tx.closed() => {
                // The `Consumer` was dropped: stop receiving; what it holds stays
                // unacknowledged until settled or the channel closes.
                let _ = control.cancel().await;
                return;
            }
        };
        match item {
            Some(Ok(delivery)) => {
                let delivery = Delivery {
                    exchange: delivery.exchange.to_string(),
                    routing_key: delivery.routing_key.to_string(),
                    redelivered: delivery.redelivered,
                    properties: from_properties(&delivery.properties),
                    body: Bytes::from(delivery.data),
                    acker: Arc::new(AmqpAcker { acker: delivery.acker }),
                };
                let _ = tx.send(ConsumerEvent::Delivery(Box::new(delivery)));
            }
            Some(Err(error)) => {
                break if control.state.load(Ordering::SeqCst) == CLOSING {
                    ConsumerEnd::ChannelClosed
                } else if connection_lost(Some(&error)) {
                    ConsumerEnd::ConnectionLost
                } else {
                    ConsumerEnd::ChannelClosed
                };
            }
            None => {
                break match control.state.load(Ordering::SeqCst) {
                    CANCELLED => ConsumerEnd::Cancelled { by_broker: false },
                    CLOSING => ConsumerEnd::ChannelClosed,
                    _ if connection_lost(None) => ConsumerEnd::ConnectionLost,
                    _ if !control.channel.status().connected() => ConsumerEnd::ChannelClosed,
                    _ => ConsumerEnd::Cancelled { by_broker: true },
                };
            }
        }
    };
    let _ = tx.send(ConsumerEvent::End(end));
}

/// Cancels or closes one consumer's channel.
struct AmqpConsumerControl {
    channel: Channel,
    tag: String,
    state: AtomicU8,
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
