//! [`EventHandler`]: the `event_handler` entrypoint.

use std::{fmt, future::Future, marker::PhantomData, pin::Pin, sync::Arc};

use nameko_core::{Binding, Entrypoint, Extension, Extensions, SetupContext, SetupError, WorkerError};
use serde::de::DeserializeOwned;
use tokio_util::{sync::CancellationToken, task::task_tracker::TaskTrackerToken};

use super::events_exchange_declare;
use crate::{
    broker::{Binding as QueueBinding, Delivery, Queue, Topology},
    consumer::{DeliveryHandler, QueueConsumer, settle},
    context::context_from_headers,
    slot::reserve_unless_stopped,
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
/// rejected without requeue and logged — never redelivered in a loop.
///
/// After the worker the event is acknowledged, unless the worker failed and
/// `requeue_on_error` is set: then it is requeued.
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
    binding: Option<Binding<Req, Resp>>,
    consumer: Option<Arc<QueueConsumer>>,
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
            binding: None,
            consumer: None,
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
    /// and lost).
    #[must_use]
    pub fn requeue_on_error(mut self, requeue: bool) -> Self {
        self.requeue_on_error = requeue;
        self
    }

    /// The queue this handler consumes, its declare flags, for `service.method`.
    ///
    /// # Errors
    ///
    /// When a broadcast handler asks for reliable delivery without a broadcast
    /// identifier.
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
        Ok(Queue::durable(name).auto_delete(!reliable).exclusive(exclusive))
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
        let exchange = events_exchange_declare(&self.source, cx.config());
        let exchange_name = exchange.name.clone();
        let topology = Topology::new()
            .exchange(exchange)
            .queue(queue)
            .binding(QueueBinding::new(exchange_name, &queue_name, &self.event_type));
        let prefetch = u16::try_from(cx.config().max_workers()).unwrap_or(u16::MAX);
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
        let handler = Arc::new(Events {
            binding: binding.clone(),
            requeue_on_error: self.requeue_on_error,
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
}

struct Events<Req, Resp> {
    binding: Binding<Req, Resp>,
    requeue_on_error: bool,
}

impl<Req: DeserializeOwned + Send + 'static, Resp: Send + 'static> DeliveryHandler for Events<Req, Resp> {
    fn handle(
        &self,
        delivery: Delivery,
        stopping: CancellationToken,
        settling: TaskTrackerToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let binding = self.binding.clone();
        let requeue_on_error = self.requeue_on_error;
        Box::pin(async move {
            let method = binding.info().method();
            let decoded = match delivery.properties.content_type.as_deref() {
                Some("application/json") | None => {
                    serde_json::from_slice::<Req>(&delivery.body).map_err(|e| e.to_string())
                }
                Some(other) => Err(format!("unsupported content type `{other}`")),
            };
            let request = match decoded {
                Ok(request) => request,
                Err(err) => {
                    tracing::error!(
                        service = binding.service_name(),
                        handler = method,
                        routing_key = %delivery.routing_key,
                        "rejecting an event that does not decode: {err}"
                    );
                    settle(delivery.reject(false).await, "event");
                    return;
                }
            };
            let data = context_from_headers(delivery.properties.headers.as_ref());
            let Some(slot) = reserve_unless_stopped(&binding, &stopping).await else {
                return settle(delivery.nack(true).await, "event");
            };
            // Settled in the worker's own task, once it finished.
            slot.start_then(request, data, Extensions::new(), move |result| async move {
                let settled = match result {
                    Ok(_) => delivery.ack().await,
                    Err(WorkerError::Killed | WorkerError::NotStarted(_)) => delivery.nack(true).await,
                    Err(_) if requeue_on_error => delivery.nack(true).await,
                    Err(_) => delivery.ack().await,
                };
                settle(settled, "event");
                drop(settling);
            });
        })
    }
}
