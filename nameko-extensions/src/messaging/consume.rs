//! [`Consume`]: the `consume` entrypoint.

use std::{fmt, marker::PhantomData, sync::Arc};

use nameko_core::{Binding, Entrypoint, Extension, SetupContext, SetupError};
use serde::de::DeserializeOwned;

use crate::{
    broker::{Binding as QueueBinding, Exchange, Queue, QueueType, Topology},
    consumer::{JsonDeliveries, Payloads, QueueConsumer, entrypoint_prefetch},
    transport,
};

/// The `consume` entrypoint (`#[consume(queue = "...")]`): runs its method for each
/// message of a queue, Nameko's `@consume`. The body is decoded from JSON into `Req`;
/// one that does not decode is rejected without requeue and logged — never
/// redelivered in a loop; so is one that [`inbound::check`](crate::inbound::check)
/// refuses before decoding (a body over `MAX_MESSAGE_SIZE`). The `nameko.*` headers become the worker's context data
/// (other headers do not).
///
/// The queue is declared durable (unless told otherwise) and, with an
/// [`exchange`](Self::exchange), bound to it with the [`routing_key`](Self::routing_key)
/// (default `""`). After the worker the message is acknowledged, unless the worker
/// failed and [`requeue_on_error`](Self::requeue_on_error) is set: then it is requeued.
/// The consumer's prefetch is the lower of the container's `max_workers` and this
/// entrypoint's own.
///
/// ```
/// use nameko_extensions::{broker::Exchange, messaging::Consume};
///
/// // Messages published to the default exchange with routing key "jobs".
/// let jobs = Consume::<serde_json::Value>::new("jobs");
/// // A queue bound to a topic exchange, failed messages requeued, two at a time.
/// let orders = Consume::<serde_json::Value>::new("order-audit")
///     .exchange(Exchange::topic("orders"))
///     .routing_key("order.*")
///     .requeue_on_error(true)
///     .max_workers(2);
/// ```
pub struct Consume<Req, Resp = ()> {
    queue: Queue,
    exchange: Option<Exchange>,
    routing_key: String,
    requeue_on_error: bool,
    max_workers: Option<usize>,
    max_message_size: usize,
    sensitive_arguments: &'static [&'static str],
    parameter: &'static str,
    binding: Option<Binding<Req, Resp>>,
    consumer: Option<Arc<QueueConsumer>>,
    _marker: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Consume<Req, Resp> {
    /// Consumes the durable queue `queue`.
    pub fn new(queue: impl Into<String>) -> Self {
        Self::with_queue(Queue::durable(queue))
    }

    /// Consumes `queue`, declared as given (flags, `x-` arguments).
    pub fn with_queue(queue: Queue) -> Self {
        Self {
            queue,
            exchange: None,
            routing_key: String::new(),
            requeue_on_error: false,
            max_workers: None,
            max_message_size: nameko_core::config::DEFAULT_MAX_MESSAGE_SIZE,
            sensitive_arguments: &[],
            parameter: "message",
            binding: None,
            consumer: None,
            _marker: PhantomData,
        }
    }

    /// Whether the queue survives a broker restart (default `true`).
    #[must_use]
    pub fn durable(mut self, durable: bool) -> Self {
        self.queue.durable = durable;
        self
    }

    /// Names the arguments logs and monitoring must not show (`#[consume(..., sensitive =
    /// [...])]`, Nameko's `sensitive_arguments`): the payload parameter's name, then
    /// `.key` or `[index]` steps (`message.card_number`, `message.items[0]`); each value a
    /// path names is shown as `********` (see [`nameko_core::redact`]). The worker's log
    /// lines (a failure, the DEBUG start line) carry the payload so, as
    /// `{"message": ...}` (see [`parameter`](Self::parameter)).
    #[must_use]
    pub fn sensitive_arguments(mut self, paths: &'static [&'static str]) -> Self {
        self.sensitive_arguments = paths;
        self
    }

    /// The name of the method's payload parameter (default `message`): the payload
    /// goes by it in logs and [sensitive argument](Self::sensitive_arguments) paths.
    /// The macros give the method's own parameter name.
    #[must_use]
    pub fn parameter(mut self, name: &'static str) -> Self {
        self.parameter = name;
        self
    }

    /// Declares the queue with this type (default [`QueueType::Classic`]): a quorum queue
    /// is replicated across a RabbitMQ cluster and must be durable. A queue's type is
    /// fixed when it is first declared: the start fails with an error saying so when
    /// the queue exists with the other type (Python Nameko declares classic queues).
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue = self.queue.queue_type(queue_type);
        self
    }

    /// Declares `exchange` and binds the queue to it with the
    /// [`routing_key`](Self::routing_key). Without one, the queue is reached through
    /// the default exchange, by its name.
    #[must_use]
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// The binding key to the [`exchange`](Self::exchange) (default `""`, kombu's).
    #[must_use]
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }

    /// Requeues the message when the worker fails (default `false`: it is
    /// acknowledged and lost, as in Nameko).
    #[must_use]
    pub fn requeue_on_error(mut self, requeue: bool) -> Self {
        self.requeue_on_error = requeue;
        self
    }

    /// Runs at most `max_workers` workers of this method at once (at least 1), within
    /// the container's `max_workers`; the queue's prefetch is the lower of the two.
    #[must_use]
    pub fn max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = Some(max_workers);
        self
    }

    /// The queue, its exchange and binding: what the entrypoint declares.
    ///
    /// # Errors
    ///
    /// When the queue has no name, is a quorum queue that is not durable (or is
    /// auto-delete or exclusive), or the exchange is the default one (it cannot be
    /// declared or bound to).
    pub fn topology(&self) -> Result<Topology, SetupError> {
        if self.queue.name.is_empty() {
            return Err(SetupError::new("the queue to consume has no name"));
        }
        let queue = &self.queue;
        if queue.kind() == QueueType::Quorum && (!queue.durable || queue.auto_delete || queue.exclusive) {
            return Err(SetupError::new(format!(
                "the queue `{}` is to be a quorum queue, which must be durable and neither auto-delete nor exclusive: \
                 drop `durable = false` (or the other flag), or drop queue_type = \"quorum\"",
                queue.name
            )));
        }
        let mut topology = Topology::new();
        if let Some(exchange) = &self.exchange {
            if exchange.name.is_empty() {
                return Err(SetupError::new(
                    "the default exchange (\"\") routes by queue name already: drop `exchange`",
                ));
            }
            topology = topology.exchange(exchange.clone()).binding(QueueBinding::new(
                &exchange.name,
                &self.queue.name,
                &self.routing_key,
            ));
        }
        topology.queues.push(self.queue.clone());
        Ok(topology)
    }
}

impl<Req, Resp> fmt::Debug for Consume<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consume")
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("requeue_on_error", &self.requeue_on_error)
            .field("max_workers", &self.max_workers)
            .finish_non_exhaustive()
    }
}

impl<Req: DeserializeOwned + Send + 'static, Resp: Send + 'static> Extension for Consume<Req, Resp> {
    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let broker = transport::broker(cx)?;
        let topology = self.topology()?;
        let prefetch = entrypoint_prefetch(cx);
        self.max_message_size = cx.config().max_message_size();
        let readiness = transport::readiness(cx);
        self.consumer = Some(QueueConsumer::new(
            broker,
            topology,
            self.queue.name.clone(),
            prefetch,
            readiness.as_ref(),
        ));
        Ok(())
    }

    async fn start(&self) -> Result<(), SetupError> {
        let (Some(consumer), Some(binding)) = (&self.consumer, &self.binding) else {
            return Err(SetupError::new("the consume entrypoint was not set up"));
        };
        let handler = Arc::new(JsonDeliveries {
            binding: binding.clone(),
            payloads: Payloads::Messages,
            requeue_on_error: self.requeue_on_error,
            on_failure: None,
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

impl<Req: DeserializeOwned + Send + 'static, Resp: Send + 'static> Entrypoint for Consume<Req, Resp> {
    type Request = Req;
    type Response = Resp;
    const KIND: &'static str = "consume";

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
