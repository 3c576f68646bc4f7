//! [`EventDispatcher`]: publishes events to `<service>.events`.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use nameko_core::{
    BoxError, Config, ContextData, Dependency, DependencyProvider, HandlerError, IntoHandlerError, RemoteError,
    SetupContext, SetupError, WorkerContext,
};
use serde::Serialize;
use tokio::sync::OnceCell;

use super::events_exchange_declare;
use crate::{
    broker::{Exchange, Properties, Publish, PublishOutcome, SharedBroker, Topology},
    context::{Sending, Traced, headers_from_context, outgoing_context},
    transport,
};

/// An event could not be dispatched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The payload could not be serialized to JSON.
    #[error("the `{event_type}` event payload could not be serialized: {message}")]
    Serialize {
        /// The event type.
        event_type: String,
        /// Why.
        message: String,
    },
    /// The broker did not take the event.
    #[error("the `{event_type}` event was not published: {message}")]
    Transport {
        /// The event type.
        event_type: String,
        /// Why.
        message: String,
    },
}

impl IntoHandlerError for DispatchError {
    fn into_handler_error(self) -> HandlerError {
        HandlerError::new(RemoteError::new("DispatchError", self.to_string())).with_source(self)
    }
}

enum Inner {
    Broker {
        broker: SharedBroker,
        exchange: Exchange,
        declare: bool,
        declared: OnceCell<()>,
    },
    Recording {
        exchange: String,
        log: DispatchLog,
    },
}

/// What a recording [`EventDispatcher`] dispatched, for assertions in unit tests.
#[derive(Clone, Debug, Default)]
pub struct DispatchLog {
    events: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl DispatchLog {
    /// Every `(event_type, payload)` dispatched, in order.
    pub fn events(&self) -> Vec<(String, serde_json::Value)> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `payload` was dispatched as `event_type`.
    pub fn dispatched<T: Serialize + ?Sized>(&self, event_type: &str, payload: &T) -> bool {
        let payload = serde_json::to_value(payload).ok();
        self.events()
            .iter()
            .any(|(t, p)| t == event_type && Some(p) == payload.as_ref())
    }

    /// Panics, listing what was dispatched, unless `payload` was dispatched as
    /// `event_type`.
    ///
    /// # Panics
    ///
    /// When it was not.
    #[track_caller]
    pub fn assert_dispatched<T: Serialize + ?Sized>(&self, event_type: &str, payload: &T) {
        assert!(
            self.dispatched(event_type, payload),
            "expected a `{event_type}` event with {}, dispatched: {:?}",
            serde_json::to_string(payload).unwrap_or_default(),
            self.events()
        );
    }
}

/// Dispatches events of this service to `<service>.events`, routing key = event type,
/// with the worker's context data as `nameko.*` headers. The exchange is declared
/// before the first publish (unless `DECLARE_EVENT_EXCHANGES: false`).
#[derive(Clone)]
pub struct EventDispatcher {
    inner: Arc<Inner>,
    cx: Option<WorkerContext>,
    /// Outside a worker: context data sent with every event.
    data: ContextData,
}

impl EventDispatcher {
    /// A dispatcher outside any worker that claims to be `service` (Nameko's
    /// standalone `event_dispatcher`). It sends only a fresh trace id as context.
    pub fn standalone(broker: SharedBroker, service: &str, config: &Config) -> Self {
        Self {
            inner: Arc::new(Inner::new(broker, service, config)),
            cx: None,
            data: ContextData::new(),
        }
    }

    /// Outside a worker: the context data (`user_id`, `language`, any key) sent as
    /// `nameko.<key>` headers with every event, beside a fresh trace id (unless `data`
    /// has a `trace_id`). A dispatcher inside a worker sends the worker's context
    /// instead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use nameko_core::{Config, ContextData};
    /// use nameko_extensions::{events::EventDispatcher, memory::MemoryBroker};
    ///
    /// let broker = MemoryBroker::new();
    /// let dispatcher = EventDispatcher::standalone(broker.shared(), "billing", &Config::default())
    ///     .with_data(ContextData::new().with("user_id", "u-42"));
    /// dispatcher.dispatch("paid", &serde_json::json!({"invoice": 7})).await.unwrap();
    /// # }
    /// ```
    #[must_use]
    pub fn with_data(self, data: ContextData) -> Self {
        Self { data, ..self }
    }

    /// A dispatcher that only records what it dispatches, for unit tests; also what a
    /// generated worker factory puts in an unset field.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use nameko_extensions::events::EventDispatcher;
    ///
    /// let (dispatcher, log) = EventDispatcher::recording();
    /// dispatcher.dispatch("greeted", &serde_json::json!({"name": "Ada"})).await.unwrap();
    /// log.assert_dispatched("greeted", &serde_json::json!({"name": "Ada"}));
    /// # }
    /// ```
    pub fn recording() -> (Self, DispatchLog) {
        let log = DispatchLog::default();
        let inner = Inner::Recording {
            exchange: "recording.events".into(),
            log: log.clone(),
        };
        (
            Self {
                inner: Arc::new(inner),
                cx: None,
                data: ContextData::new(),
            },
            log,
        )
    }

    /// The exchange events go to.
    pub fn exchange(&self) -> &str {
        match &*self.inner {
            Inner::Broker { exchange, .. } => &exchange.name,
            Inner::Recording { exchange, .. } => exchange,
        }
    }

    /// Publishes `payload` as event `event_type`, waiting for the broker's confirm.
    /// An event nobody listens to is dropped by the broker, as in Nameko.
    ///
    /// # Errors
    ///
    /// [`DispatchError`] when the payload does not serialize or the broker does not
    /// confirm the publish.
    pub async fn dispatch<T: Serialize + ?Sized>(&self, event_type: &str, payload: &T) -> Result<(), DispatchError> {
        let body = serde_json::to_vec(payload).map_err(|err| DispatchError::Serialize {
            event_type: event_type.to_owned(),
            message: err.to_string(),
        })?;
        let transport = |message: String| DispatchError::Transport {
            event_type: event_type.to_owned(),
            message,
        };
        let (broker, exchange, declare, declared) = match &*self.inner {
            Inner::Broker {
                broker,
                exchange,
                declare,
                declared,
            } => (broker, exchange, *declare, declared),
            Inner::Recording { log, .. } => {
                let payload = serde_json::from_slice(&body).map_err(|err| transport(err.to_string()))?;
                log.events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((event_type.to_owned(), payload));
                return Ok(());
            }
        };
        if declare {
            let topology = Topology::new().exchange(exchange.clone());
            declared
                .get_or_try_init(|| broker.declare(&topology))
                .await
                .map_err(|err| transport(err.to_string()))?;
        }
        let mut data = outgoing_context(self.cx.as_ref(), &self.data);
        let span = Traced::start(
            Sending::Dispatch,
            || format!("{} {event_type}", exchange.name),
            &mut data,
        );
        let message = Publish {
            exchange: exchange.name.clone(),
            routing_key: event_type.to_owned(),
            mandatory: false,
            properties: Properties::json(headers_from_context(&data)),
            body: Bytes::from(body),
        };
        let dispatched = match broker.publish(message).await {
            Ok(PublishOutcome::Routed | PublishOutcome::Returned { .. }) => Ok(()),
            Ok(PublishOutcome::Nacked) => Err(transport("the broker refused it (nack)".into())),
            Ok(PublishOutcome::ChannelClosed) => Err(transport("the channel closed before the confirm".into())),
            Err(err) => Err(transport(err.to_string())),
        };
        span.check(&dispatched);
        dispatched
    }
}

impl Inner {
    fn new(broker: SharedBroker, service: &str, config: &Config) -> Self {
        let exchange = events_exchange_declare(service, config);
        let declare = config.get("DECLARE_EVENT_EXCHANGES").and_then(|v| v.as_bool()) != Some(false);
        Self::Broker {
            broker,
            exchange,
            declare,
            declared: OnceCell::new(),
        }
    }
}

impl fmt::Debug for EventDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventDispatcher")
            .field("exchange", &self.exchange())
            .finish_non_exhaustive()
    }
}

/// The provider of [`EventDispatcher`].
#[derive(Default)]
pub struct EventDispatcherProvider {
    inner: Option<Arc<Inner>>,
}

impl fmt::Debug for EventDispatcherProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventDispatcherProvider")
            .field("set_up", &self.inner.is_some())
            .finish()
    }
}

impl DependencyProvider for EventDispatcherProvider {
    type Output = EventDispatcher;
    type State = ();

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let broker = transport::broker(cx)?;
        self.inner = Some(Arc::new(Inner::new(broker, cx.service_name(), cx.config())));
        Ok(())
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(EventDispatcher, ()), BoxError> {
        let inner = self.inner.clone().ok_or("the event dispatcher was not set up")?;
        Ok((
            EventDispatcher {
                inner,
                cx: Some(cx.clone()),
                data: ContextData::new(),
            },
            (),
        ))
    }
}

impl Dependency for EventDispatcher {
    type Provider = EventDispatcherProvider;

    fn provider() -> EventDispatcherProvider {
        EventDispatcherProvider::default()
    }

    /// A recording dispatcher; use [`EventDispatcher::recording`] to keep its log.
    fn test_default() -> Option<Self> {
        Some(Self::recording().0)
    }
}
