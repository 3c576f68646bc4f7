//! [`EventHandler`]: the `event_handler` entrypoint.

use std::{fmt, marker::PhantomData, sync::Arc};

use nameko_core::{Binding, Entrypoint, Extension, SetupContext, SetupError};
use serde::de::DeserializeOwned;

use super::{
    events_exchange_declare,
    retry::{OnFailure, Retry},
};
use crate::{
    broker::{Binding as QueueBinding, Queue, QueueType, Topology},
    consumer::{JsonDeliveries, Payloads, QueueConsumer, entrypoint_prefetch},
    transport,
};

/// Who receives an event, among the handlers listening for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerType {
    /// One instance of each (service, method) — instances of a service compete.
    #[default]
    ServicePool,
    /// One handler among all services that listen as singletons.
    Singleton,
    /// Every instance; instances are told apart by their broadcast identifier.
    Broadcast,
}

impl HandlerType {
    /// Nameko's name: `service_pool`, `singleton` or `broadcast`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServicePool => "service_pool",
            Self::Singleton => "singleton",
            Self::Broadcast => "broadcast",
        }
    }
}

impl std::str::FromStr for HandlerType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "service_pool" => Ok(Self::ServicePool),
            "singleton" => Ok(Self::Singleton),
            "broadcast" => Ok(Self::Broadcast),
            other => Err(format!(
                "unknown handler type `{other}`; expected service_pool, singleton or broadcast"
            )),
        }
    }
}

/// The `event_handler` entrypoint: runs its method for each `event_type` event that
/// `source` dispatches. The payload is decoded into `Req`; one that does not decode is
/// rejected without requeue and logged — never redelivered in a loop. So is one that
/// [`inbound::check`](crate::inbound::check) refuses before decoding: a body larger than
/// `MAX_MESSAGE_SIZE` (default 8 MiB), headers dropped on arrival.
///
/// After the worker the event is acknowledged, unless the worker failed and
/// `requeue_on_error` is set: then it is requeued. With [`retry`](Self::retry) a failed
/// event runs again after a delay, and with [`dead_letter`](Self::dead_letter) it goes
/// to a dead-letter exchange after its last attempt (see [`Retry`]).
///
/// ```
/// use nameko_extensions::events::{EventHandler, HandlerType};
///
/// let pool = EventHandler::<serde_json::Value>::new("orders", "order_created");
/// let everyone = EventHandler::<serde_json::Value>::new("config", "changed")
///     .handler_type(HandlerType::Broadcast);                 // reliable_delivery = false
/// let durable = EventHandler::<serde_json::Value>::new("config", "changed")
///     .handler_type(HandlerType::Broadcast)
///     .broadcast_identifier("host-1")
///     .reliable_delivery(true);
/// ```
pub struct EventHandler<Req, Resp = ()> {
    source: String,
    event_type: String,
    handler_type: HandlerType,
    reliable_delivery: Option<bool>,
    broadcast_identifier: Option<String>,
    requeue_on_error: bool,
    retry: Option<Retry>,
    dead_letter: Option<String>,
    max_workers: Option<usize>,
    queue_type: QueueType,
    sensitive_arguments: &'static [&'static str],
    parameter: &'static str,
    binding: Option<Binding<Req, Resp>>,
    consumer: Option<Arc<QueueConsumer>>,
    on_failure: Option<Arc<OnFailure>>,
    max_message_size: usize,
    _marker: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> EventHandler<Req, Resp> {
    /// Handles `event_type` events of service `source`, as a service pool, with
    /// reliable delivery.
    pub fn new(source: impl Into<String>, event_type: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            event_type: event_type.into(),
            handler_type: HandlerType::ServicePool,
            reliable_delivery: None,
            broadcast_identifier: None,
            requeue_on_error: false,
            retry: None,
            dead_letter: None,
            max_workers: None,
            queue_type: QueueType::Classic,
            sensitive_arguments: &[],
            parameter: "payload",
            binding: None,
            consumer: None,
            on_failure: None,
            max_message_size: nameko_core::config::DEFAULT_MAX_MESSAGE_SIZE,
            _marker: PhantomData,
        }
    }

    /// Sets the handler type.
    #[must_use]
    pub fn handler_type(mut self, handler_type: HandlerType) -> Self {
        self.handler_type = handler_type;
        self
    }

    /// Whether the queue outlives the handler (default `true`; `false` for a broadcast
    /// handler without a broadcast identifier).
    #[must_use]
    pub fn reliable_delivery(mut self, reliable: bool) -> Self {
        self.reliable_delivery = Some(reliable);
        self
    }

    /// Names this instance among broadcast handlers (a hostname, a config value). A
    /// broadcast handler with reliable delivery needs one; without, a random one is
    /// made at every start.
    #[must_use]
    pub fn broadcast_identifier(mut self, identifier: impl Into<String>) -> Self {
        self.broadcast_identifier = Some(identifier.into());
        self
    }

    /// Requeues the event when the worker fails (default `false`: it is acknowledged
    /// and lost). It redelivers at once and for ever; [`retry`](Self::retry) waits
    /// between attempts and stops. The two do not go together (a setup error).
    #[must_use]
    pub fn requeue_on_error(mut self, requeue: bool) -> Self {
        self.requeue_on_error = requeue;
        self
    }

    /// Runs the handler again when its worker fails (a handler error or a panic; a
    /// payload that does not decode is still rejected at once): at most `retry.max`
    /// times after the first attempt, `retry.backoff` apart.
    ///
    /// Each retry republishes the event, with publisher confirms, to a retry queue of
    /// the handler queue, `<queue>.retry.<delay>ms` (one per distinct delay, durable as
    /// the handler queue, declared with `x-message-ttl` = the delay and
    /// `x-dead-letter-exchange = ""`, `x-dead-letter-routing-key` = the handler queue),
    /// with the same body, properties and headers plus
    /// [`RETRY_ATTEMPT_HEADER`](super::RETRY_ATTEMPT_HEADER); the original is
    /// acknowledged only after the confirm, and requeued when the republish fails.
    /// When the delay is over the broker moves the event back to the handler queue,
    /// whichever instance — Rust or Python — consumes it. The handler queue's own
    /// declare is unchanged, so Python instances can share it.
    ///
    /// After the last attempt the event goes to the [`dead_letter`](Self::dead_letter)
    /// exchange, or without one is logged at ERROR and dropped. Not with
    /// [`requeue_on_error`](Self::requeue_on_error) (a setup error).
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Where an event goes after its last attempt failed (the first, without
    /// [`retry`](Self::retry)): a confirmed publish to `exchange`, declared as a
    /// durable topic exchange, with the event type as routing key, the event's body,
    /// properties and headers, plus [`ERROR_TYPE_HEADER`](super::ERROR_TYPE_HEADER),
    /// [`ERROR_MESSAGE_HEADER`](super::ERROR_MESSAGE_HEADER),
    /// [`ATTEMPTS_HEADER`](super::ATTEMPTS_HEADER) and
    /// [`QUEUE_HEADER`](super::QUEUE_HEADER). Bind a queue to it to keep them: an
    /// event nothing is bound for is logged and dropped. When the publish fails the
    /// event is requeued (and its handler runs once more). Not with
    /// [`requeue_on_error`](Self::requeue_on_error) (a setup error).
    #[must_use]
    pub fn dead_letter(mut self, exchange: impl Into<String>) -> Self {
        self.dead_letter = Some(exchange.into());
        self
    }

    /// Runs at most `max_workers` workers of this handler at once (at least 1), within
    /// the container's `max_workers`; its queue's prefetch is the lower of the two, so
    /// no more events wait in this instance than it can handle at once.
    #[must_use]
    pub fn max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = Some(max_workers);
        self
    }

    /// Names the arguments logs and monitoring must not show (`#[event_handler(..., sensitive =
    /// [...])]`, Nameko's `sensitive_arguments`): the payload parameter's name, then
    /// `.key` or `[index]` steps (`payload.card_number`, `payload.items[0]`); each value a
    /// path names is shown as `********` (see [`nameko_core::redact`]). The worker's log
    /// lines (a failure, the DEBUG start line) carry the payload so, as
    /// `{"payload": ...}` (see [`parameter`](Self::parameter)).
    #[must_use]
    pub fn sensitive_arguments(mut self, paths: &'static [&'static str]) -> Self {
        self.sensitive_arguments = paths;
        self
    }

    /// The name of the method's payload parameter (default `payload`): the payload
    /// goes by it in logs and [sensitive argument](Self::sensitive_arguments) paths.
    /// The macros give the method's own parameter name.
    #[must_use]
    pub fn parameter(mut self, name: &'static str) -> Self {
        self.parameter = name;
        self
    }

    /// Declares the handler's queue with this type (default [`QueueType::Classic`]).
    ///
    /// [`QueueType::Quorum`] replicates the queue across a RabbitMQ cluster, so events
    /// survive the loss of a node. Only a queue that outlives its consumers can be one:
    /// a service pool or singleton handler, or a broadcast handler with reliable
    /// delivery (a setup error otherwise). A queue's type is fixed when it is first
    /// declared: a queue shared with Python Nameko instances (a service pool of the same
    /// service, a singleton handler of any) is classic, and the start fails with an error
    /// saying so when the queue exists with the other type.
    ///
    /// ```
    /// use nameko_extensions::{broker::QueueType, events::EventHandler};
    ///
    /// let replicated = EventHandler::<serde_json::Value>::new("orders", "order_created").queue_type(QueueType::Quorum);
    /// ```
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The queue this handler consumes, its declare flags, for `service.method`.
    ///
    /// # Errors
    ///
    /// When a broadcast handler asks for reliable delivery without a broadcast
    /// identifier, or for a quorum queue without reliable delivery.
    pub fn queue(&self, service: &str, method: &str) -> Result<Queue, SetupError> {
        let (source, event_type) = (&self.source, &self.event_type);
        let (name, reliable) = match self.handler_type {
            HandlerType::ServicePool => (
                format!("evt-{source}-{event_type}--{service}.{method}"),
                self.reliable_delivery.unwrap_or(true),
            ),
            HandlerType::Singleton => (
                format!("evt-{source}-{event_type}"),
                self.reliable_delivery.unwrap_or(true),
            ),
            HandlerType::Broadcast => {
                let (identifier, reliable) = match (&self.broadcast_identifier, self.reliable_delivery) {
                    (Some(id), reliable) => (id.clone(), reliable.unwrap_or(true)),
                    (None, Some(true)) => {
                        return Err(SetupError::new(format!(
                            "service `{service}`: the broadcast handler `{method}` asks for reliable delivery but has \
                             no broadcast identifier: give it one (a hostname, a config value) or set \
                             reliable_delivery = false"
                        )));
                    }
                    (None, _) => (uuid::Uuid::new_v4().simple().to_string(), false),
                };
                (
                    format!("evt-{source}-{event_type}--{service}.{method}-{identifier}"),
                    reliable,
                )
            }
        };
        let exclusive = self.handler_type == HandlerType::Broadcast && !reliable;
        if self.queue_type == QueueType::Quorum && !reliable {
            return Err(SetupError::new(format!(
                "service `{service}`: the event handler `{method}` asks for a quorum queue, but without reliable \
                 delivery its queue is deleted with its last consumer{}, which a quorum queue cannot be: set \
                 reliable_delivery = true{}, or drop queue_type = \"quorum\"",
                if exclusive {
                    " and used by one connection only"
                } else {
                    ""
                },
                if self.handler_type == HandlerType::Broadcast {
                    " with a broadcast_identifier"
                } else {
                    ""
                },
            )));
        }
        Ok(Queue::durable(name)
            .auto_delete(!reliable)
            .exclusive(exclusive)
            .queue_type(self.queue_type))
    }
}

impl<Req, Resp> fmt::Debug for EventHandler<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHandler")
            .field("source", &self.source)
            .field("event_type", &self.event_type)
            .field("handler_type", &self.handler_type)
            .field("reliable_delivery", &self.reliable_delivery)
            .field("broadcast_identifier", &self.broadcast_identifier)
            .field("requeue_on_error", &self.requeue_on_error)
            .field("retry", &self.retry)
            .field("dead_letter", &self.dead_letter)
            .field("max_workers", &self.max_workers)
            .field("queue_type", &self.queue_type)
            .finish_non_exhaustive()
    }
}

impl<Req: DeserializeOwned + Send + 'static, Resp: Send + 'static> Extension for EventHandler<Req, Resp> {
    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let broker = transport::broker(cx)?;
        let method = cx
            .entrypoint()
            .map(|ep| ep.method())
            .ok_or_else(|| SetupError::new("not bound"))?;
        let queue = self.queue(cx.service_name(), method)?;
        let queue_name = queue.name.clone();
        let place = format!(
            "service `{}`: event handler `{method}` (`{}` events of `{}`)",
            cx.service_name(),
            self.event_type,
            self.source
        );
        if self.requeue_on_error && (self.retry.is_some() || self.dead_letter.is_some()) {
            return Err(SetupError::new(format!(
                "{place}: `requeue_on_error` does not go with `retry` or `dead_letter`: requeueing redelivers a \
                 failed event at once and for ever, retry waits between attempts and stops; choose one"
            )));
        }
        self.on_failure = OnFailure::new(
            Arc::clone(&broker),
            queue.clone(),
            &self.event_type,
            self.retry,
            self.dead_letter.clone(),
            &place,
        )?
        .map(Arc::new);
        let exchange = events_exchange_declare(&self.source, cx.config());
        let exchange_name = exchange.name.clone();
        let topology = Topology::new()
            .exchange(exchange)
            .queue(queue)
            .binding(QueueBinding::new(exchange_name, &queue_name, &self.event_type));
        self.max_message_size = cx.config().max_message_size();
        let prefetch = entrypoint_prefetch(cx);
        let readiness = transport::readiness(cx);
        self.consumer = Some(QueueConsumer::new(
            broker,
            topology,
            queue_name,
            prefetch,
            readiness.as_ref(),
        ));
        Ok(())
    }

    async fn start(&self) -> Result<(), SetupError> {
        let (Some(consumer), Some(binding)) = (&self.consumer, &self.binding) else {
            return Err(SetupError::new("the event handler was not set up"));
        };
        if let Some(on_failure) = &self.on_failure {
            on_failure.declare().await.map_err(|err| {
                SetupError::with_source(
                    format!(
                        "could not declare the retry queues or dead-letter exchange of `{}`",
                        consumer.queue()
                    ),
                    err,
                )
            })?;
        }
        let handler = Arc::new(JsonDeliveries {
            binding: binding.clone(),
            payloads: Payloads::Events,
            requeue_on_error: self.requeue_on_error,
            on_failure: self.on_failure.clone(),
            max_message_size: self.max_message_size,
            parameter: self.parameter,
        });
        consumer
            .start(handler)
            .await
            .map_err(|err| SetupError::with_source(format!("could not consume `{}`", consumer.queue()), err))
    }

    async fn stop(&self) {
        if let Some(consumer) = &self.consumer {
            consumer.stop().await;
        }
    }

    fn kill(&self) {
        if let Some(consumer) = &self.consumer {
            consumer.kill();
        }
    }
}

impl<Req: DeserializeOwned + Send + 'static, Resp: Send + 'static> Entrypoint for EventHandler<Req, Resp> {
    type Request = Req;
    type Response = Resp;
    const KIND: &'static str = "event_handler";

    fn bind(&mut self, binding: Binding<Req, Resp>) {
        self.binding = Some(binding);
    }

    fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }

    fn sensitive_arguments(&self) -> &'static [&'static str] {
        self.sensitive_arguments
    }
}
