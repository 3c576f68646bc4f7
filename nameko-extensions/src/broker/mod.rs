//! The broker trait: the AMQP model RPC, events and publishers are written against,
//! once, and that the in-memory broker and RabbitMQ (lapin) implement.
//!
//! It carries what a real AMQP client reports, so the code above it handles every
//! case once: publishes end [`Routed`](PublishOutcome::Routed),
//! [`Returned`](PublishOutcome::Returned) (mandatory and unroutable),
//! [`Nacked`](PublishOutcome::Nacked) or [`ChannelClosed`](PublishOutcome::ChannelClosed);
//! consumers end with a reason ([`ConsumerEnd`]); acknowledgements can be
//! [`Stale`](AckOutcome::Stale) (the channel they belonged to is gone, so the broker
//! will redeliver); and the connection reports [`ConnectionEvent`]s.
//!
//! # Connection loss and recovery (one contract, both brokers)
//!
//! The broker owns recovery; nothing above it reconnects or consumes again. When the
//! connection is lost, subscribers get [`ConnectionEvent::Lost`]; unacknowledged
//! deliveries go back to their queues (acknowledging them is
//! [`Stale`](AckOutcome::Stale)); declares, publishes and new consumers fail with
//! [`BrokerError::ConnectionLost`] at once (a publish in flight at the cut fails so or
//! ends [`ChannelClosed`](PublishOutcome::ChannelClosed)); nothing is buffered.
//! [`Consumer`]s do **not** end: they deliver nothing during the outage. When the
//! connection is back, each consumer's queue is declared again as this connection had
//! declared it (with its bindings and their exchanges: an expired reply queue or an
//! auto-delete queue comes back), the consumer resumes (redelivered messages first),
//! and subscribers get [`ConnectionEvent::Recovered`]. A consumer ends with
//! [`ConsumerEnd::ConnectionLost`] only when the connection is gone for good (closed
//! while lost, or recovery given up), and with [`ConsumerEnd::ChannelClosed`] when it
//! alone could not be restored.

mod declared;
mod headers;
mod topology;

use std::{fmt, pin::Pin, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};

pub(crate) use self::declared::Declared;
pub use self::{
    headers::{FieldValue, Headers},
    topology::{Binding, Exchange, ExchangeKind, Queue, QueueType, Topology, topic_matches},
};

/// The AMQP reply code of a message returned as unroutable.
pub const NO_ROUTE: u16 = 312;
/// The AMQP reply code of an inequivalent redeclare.
pub const PRECONDITION_FAILED: u16 = 406;
/// The AMQP reply code of an operation on a missing entity.
pub const NOT_FOUND: u16 = 404;
/// The AMQP reply code of an exclusive queue used by another connection.
pub const RESOURCE_LOCKED: u16 = 405;

/// A broker operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A declare did not match what exists (`PRECONDITION_FAILED`, 406).
    #[error("PRECONDITION_FAILED: {0}")]
    PreconditionFailed(String),
    /// The queue or exchange does not exist (`NOT_FOUND`, 404).
    #[error("NOT_FOUND: {0}")]
    NotFound(String),
    /// An exclusive queue belongs to another connection (`RESOURCE_LOCKED`, 405).
    #[error("RESOURCE_LOCKED: {0}")]
    ResourceLocked(String),
    /// The connection is down; the operation may succeed after recovery.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The channel was closed by the broker.
    #[error("channel closed: {0}")]
    ChannelClosed(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

/// Message properties, as AMQP 0-9-1 defines them.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Properties {
    /// MIME type of the body, e.g. `application/json`.
    pub content_type: Option<String>,
    /// Encoding of the body, e.g. `utf-8`.
    pub content_encoding: Option<String>,
    /// Headers; `None` is different from an empty table on the wire.
    pub headers: Option<Headers>,
    /// 1 transient, 2 persistent.
    pub delivery_mode: Option<u8>,
    /// Priority 0–9.
    pub priority: Option<u8>,
    /// Matches a reply to its request.
    pub correlation_id: Option<String>,
    /// Where to reply: for Nameko, a routing key on the RPC exchange.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<String>,
    /// Application message id.
    pub message_id: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: Option<u64>,
    /// Application message type.
    pub kind: Option<String>,
    /// The publishing user, checked by RabbitMQ.
    pub user_id: Option<String>,
    /// The publishing application.
    pub app_id: Option<String>,
}

impl Properties {
    /// Nameko's properties for JSON messages: `application/json`, `utf-8`, persistent,
    /// priority 0, with `headers`.
    pub fn json(headers: Headers) -> Self {
        Self {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(0),
            ..Self::default()
        }
    }
}

/// A message to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    /// The exchange (`""` is the default exchange, which routes by queue name).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// Return the message if no queue is bound for it (needs confirms to be reported).
    pub mandatory: bool,
    /// Properties.
    pub properties: Properties,
    /// The body.
    pub body: Bytes,
}

/// What became of a published message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// Confirmed: routed to at least one queue, or dropped as non-mandatory unroutable.
    Routed,
    /// Mandatory and unroutable: returned by the broker (`NO_ROUTE`, 312).
    Returned {
        /// The reply code.
        code: u16,
        /// The reply text.
        text: String,
    },
    /// The broker refused to take responsibility for the message.
    Nacked,
    /// The channel closed before the confirm arrived: the message may or may not have
    /// been routed.
    ChannelClosed,
}

/// Options of a consumer.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// How many unacknowledged deliveries it may hold (`basic.qos`, per consumer);
    /// 0 means unlimited.
    pub prefetch: u16,
    /// Its tag; the broker makes one when empty.
    pub consumer_tag: String,
    /// Whether it must be the queue's only consumer.
    pub exclusive: bool,
}

impl ConsumeOptions {
    /// A consumer holding at most `prefetch` unacknowledged deliveries.
    pub fn prefetch(prefetch: u16) -> Self {
        Self {
            prefetch,
            consumer_tag: String::new(),
            exclusive: false,
        }
    }

    /// Sets the consumer tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.consumer_tag = tag.into();
        self
    }
}

/// What an acknowledgement achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum AckOutcome {
    /// The broker got it.
    Done,
    /// The delivery's channel is gone: the broker has already requeued the message and
    /// will redeliver it.
    Stale,
}

/// Settles one delivery. Implemented by each broker.
#[async_trait]
pub trait Acker: Send + Sync + fmt::Debug {
    /// `basic.ack`.
    async fn ack(&self) -> Result<AckOutcome, BrokerError>;
    /// `basic.nack`, requeueing or not (not: dead-lettered if the queue says so, else
    /// dropped).
    async fn nack(&self, requeue: bool) -> Result<AckOutcome, BrokerError>;
    /// `basic.reject`, requeueing or not.
    async fn reject(&self, requeue: bool) -> Result<AckOutcome, BrokerError>;
}

/// One message delivered to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Whether it was delivered before and not acknowledged.
    pub redelivered: bool,
    /// Its properties.
    pub properties: Properties,
    /// Its body.
    pub body: Bytes,
    /// Settles it.
    pub acker: Arc<dyn Acker>,
}

impl Delivery {
    /// `basic.ack`.
    ///
    /// # Errors
    ///
    /// When the broker refuses the acknowledgement.
    pub async fn ack(&self) -> Result<AckOutcome, BrokerError> {
        self.acker.ack().await
    }

    /// `basic.nack`.
    ///
    /// # Errors
    ///
    /// When the broker refuses it.
    pub async fn nack(&self, requeue: bool) -> Result<AckOutcome, BrokerError> {
        self.acker.nack(requeue).await
    }

    /// `basic.reject`.
    ///
    /// # Errors
    ///
    /// When the broker refuses it.
    pub async fn reject(&self, requeue: bool) -> Result<AckOutcome, BrokerError> {
        self.acker.reject(requeue).await
    }
}

/// Why a consumer stopped receiving.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerEnd {
    /// Cancelled: by this client, or by the broker (its queue was deleted).
    Cancelled {
        /// Whether the broker cancelled it.
        by_broker: bool,
    },
    /// Its channel closed (by the client, a channel error, or because it could not be
    /// restored after the connection recovered).
    ChannelClosed,
    /// The connection is gone for good: closed while lost, or its recovery was given
    /// up. (A loss the broker recovers from does not end consumers.)
    ConnectionLost,
}

/// What a consumer yields: deliveries, then one end.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// A message.
    Delivery(Box<Delivery>),
    /// The consumer ended; nothing follows.
    End(ConsumerEnd),
}

/// Controls a consumer on the broker side.
#[async_trait]
pub trait ConsumerControl: Send + Sync + fmt::Debug {
    /// `basic.cancel`: no new deliveries; unacknowledged ones stay with the consumer
    /// until settled or [`close`](Self::close)d.
    async fn cancel(&self) -> Result<(), BrokerError>;
    /// Closes the consumer's channel: its unacknowledged deliveries go back to the
    /// queue at once (redelivered), and later acknowledgements are stale.
    async fn close(&self);
}

/// A running consumer.
pub struct Consumer {
    tag: String,
    events: Events,
    control: Arc<dyn ConsumerControl>,
    ended: Option<ConsumerEnd>,
}

/// Where a consumer's events come from.
enum Events {
    Channel(mpsc::UnboundedReceiver<ConsumerEvent>),
    Stream(Pin<Box<dyn Stream<Item = ConsumerEvent> + Send>>),
}

impl Consumer {
    /// Wraps a broker's consumer that sends its events down a channel.
    pub fn new(tag: String, events: mpsc::UnboundedReceiver<ConsumerEvent>, control: Arc<dyn ConsumerControl>) -> Self {
        Self {
            tag,
            events: Events::Channel(events),
            control,
            ended: None,
        }
    }

    /// Wraps a broker's consumer given as a stream of its events, polled only from
    /// [`next`](Self::next): deliveries go straight from the broker client to the task
    /// that consumes, with no task in between. Dropping the `Consumer` drops the
    /// stream, which should then cancel the consumer on the broker.
    pub fn from_stream(
        tag: String,
        events: impl Stream<Item = ConsumerEvent> + Send + 'static,
        control: Arc<dyn ConsumerControl>,
    ) -> Self {
        Self {
            tag,
            events: Events::Stream(Box::pin(events)),
            control,
            ended: None,
        }
    }

    /// The consumer tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The next delivery, or why the consumer ended.
    ///
    /// # Errors
    ///
    /// The [`ConsumerEnd`]; every later call returns it again.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a delivery is never lost by dropping the future.
    pub async fn next(&mut self) -> Result<Delivery, ConsumerEnd> {
        if let Some(end) = &self.ended {
            return Err(end.clone());
        }
        let event = match &mut self.events {
            Events::Channel(events) => events.recv().await,
            Events::Stream(events) => events.next().await,
        };
        let end = match event {
            Some(ConsumerEvent::Delivery(delivery)) => return Ok(*delivery),
            Some(ConsumerEvent::End(end)) => end,
            None => ConsumerEnd::ChannelClosed,
        };
        self.ended = Some(end.clone());
        Err(end)
    }

    /// A handle to cancel or close this consumer from elsewhere.
    pub fn control(&self) -> Arc<dyn ConsumerControl> {
        Arc::clone(&self.control)
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("tag", &self.tag)
            .field("control", &self.control)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// What happened to the broker connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// Connected for the first time.
    Connected,
    /// The connection was lost; operations fail until it recovers, consumers pause.
    Lost {
        /// Why.
        reason: String,
    },
    /// Reconnected: every consumer's queue was declared again and the consumers
    /// resumed.
    Recovered,
    /// The broker blocked publishing (resource alarm), or unblocked it.
    Blocked {
        /// `true` when blocked, `false` when unblocked.
        blocked: bool,
    },
}

/// A queue as the broker reports it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The declare as it was made.
    pub queue: Queue,
    /// Messages ready to deliver.
    pub ready: usize,
    /// Messages delivered and not yet settled.
    pub unacked: usize,
    /// Consumers.
    pub consumers: usize,
}

impl QueueInfo {
    /// A queue's report: its declare, and its ready, unacknowledged and consumer counts
    /// (for brokers and test harnesses that list queues).
    pub fn new(queue: Queue, ready: usize, unacked: usize, consumers: usize) -> Self {
        Self {
            queue,
            ready,
            unacked,
            consumers,
        }
    }
}

/// The AMQP model, as RPC, events and publishers use it. Implemented by the in-memory
/// broker and RabbitMQ.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Declares exchanges, queues and bindings, in that order, on a channel of its own.
    /// Idempotent.
    ///
    /// # Errors
    ///
    /// [`BrokerError::PreconditionFailed`] when an entity exists with other flags or
    /// arguments, [`BrokerError::ResourceLocked`] for another connection's exclusive
    /// queue, [`BrokerError::NotFound`] for a binding to a missing entity.
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError>;

    /// Deletes a queue; its consumers are cancelled by the broker.
    ///
    /// # Errors
    ///
    /// When the connection is down.
    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError>;

    /// Deletes an exchange and its bindings.
    ///
    /// # Errors
    ///
    /// When the connection is down.
    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError>;

    /// Publishes with publisher confirms and waits for the confirm.
    ///
    /// # Errors
    ///
    /// [`BrokerError::NotFound`] when the exchange does not exist,
    /// [`BrokerError::ConnectionLost`] when the connection is down.
    async fn publish(&self, message: Publish) -> Result<PublishOutcome, BrokerError>;

    /// Starts consuming `queue`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::NotFound`] for a missing queue, [`BrokerError::ResourceLocked`]
    /// for an exclusive consumer conflict.
    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, BrokerError>;

    /// Connection events, from now on.
    fn events(&self) -> broadcast::Receiver<ConnectionEvent>;

    /// Closes the connection: consumers end, unacknowledged deliveries return to their
    /// queues, exclusive queues are deleted.
    async fn close(&self);
}

/// A shared broker handle.
pub type SharedBroker = Arc<dyn Broker>;

/// The default per-message expiration for a timeout, as AMQP wants it (milliseconds as
/// a decimal string).
pub fn expiration_for(timeout: Duration) -> String {
    timeout.as_millis().to_string()
}
