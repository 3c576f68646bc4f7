//! [`Publisher`]: publishes JSON messages to an exchange, Nameko's `Publisher`.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use nameko_core::{
    BoxError, ContextData, Dependency, DependencyProvider, HandlerError, IntoHandlerError, RemoteError, SetupContext,
    SetupError, WorkerContext,
};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use crate::{
    broker::{
        Exchange, ExchangeKind, FieldValue, Headers, Properties, Publish, PublishOutcome, SharedBroker, Topology,
    },
    context::{Sending, Traced, headers_from_context, outgoing_context},
    transport,
};

/// AMQP's delivery mode: whether RabbitMQ writes the message to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 1: kept in memory only; lost if the broker restarts.
    Transient,
    /// 2: written to disk in a durable queue (the default, as Nameko's).
    #[default]
    Persistent,
}

impl DeliveryMode {
    /// The AMQP value: 1 or 2.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Transient => 1,
            Self::Persistent => 2,
        }
    }
}

/// How one message is published: Nameko's `publish(msg, **kwargs)` keyword arguments.
/// Unset options take the publisher's defaults ([`PublisherProvider::options`],
/// [`Publisher::options`]), then Nameko's: routing key `""`, persistent, not mandatory,
/// priority 0, no expiration.
///
/// ```
/// use std::time::Duration;
/// use nameko_extensions::messaging::{DeliveryMode, PublishOptions};
///
/// let options = PublishOptions::new()
///     .routing_key("order.created")
///     .header("tenant", "acme")
///     .mandatory(true)
///     .delivery_mode(DeliveryMode::Transient)
///     .priority(5)
///     .expiration(Duration::from_secs(60))
///     .correlation_id("c-1")
///     .reply_to("replies");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use]
pub struct PublishOptions {
    routing_key: Option<String>,
    headers: Map<String, Value>,
    delivery_mode: Option<DeliveryMode>,
    mandatory: Option<bool>,
    priority: Option<u8>,
    expiration: Option<Duration>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
}

impl PublishOptions {
    /// No option set: every one takes its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// The routing key (default `""`; on the default exchange, the queue's name).
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = Some(routing_key.into());
        self
    }

    /// An AMQP header, by the fixed JSON ↔ AMQP mapping. Headers merge: the call's
    /// over the publisher's defaults, and the worker's `nameko.*` context headers over
    /// both (Nameko's "extra headers always win").
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Persistent (default) or transient.
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// Whether a message no queue is bound for is an error
    /// ([`PublishError::Undeliverable`], Nameko's `UndeliverableMessage`) rather than
    /// dropped by the broker (default `false`).
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = Some(mandatory);
        self
    }

    /// The message priority (default 0; RabbitMQ honours it in queues declared with
    /// `x-max-priority`).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// How long the message may wait in a queue before the broker drops (or
    /// dead-letters) it, in whole milliseconds (default: forever).
    pub fn expiration(mut self, expiration: Duration) -> Self {
        self.expiration = Some(expiration);
        self
    }

    /// The `correlation_id` property.
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The `reply_to` property.
    pub fn reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = Some(reply_to.into());
        self
    }

    /// `self` over `defaults`: set options win, headers merge.
    fn over(self, defaults: &Self) -> Self {
        let mut headers = defaults.headers.clone();
        headers.extend(self.headers);
        Self {
            routing_key: self.routing_key.or_else(|| defaults.routing_key.clone()),
            headers,
            delivery_mode: self.delivery_mode.or(defaults.delivery_mode),
            mandatory: self.mandatory.or(defaults.mandatory),
            priority: self.priority.or(defaults.priority),
            expiration: self.expiration.or(defaults.expiration),
            correlation_id: self.correlation_id.or_else(|| defaults.correlation_id.clone()),
            reply_to: self.reply_to.or_else(|| defaults.reply_to.clone()),
        }
    }
}

/// A message could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The body could not be serialized to JSON.
    #[error("the message could not be serialized: {message}")]
    Serialize {
        /// Why.
        message: String,
    },
    /// A mandatory message no queue is bound for, returned by the broker: Nameko's
    /// `UndeliverableMessage`.
    #[error("the message to exchange `{exchange}` with routing key `{routing_key}` is undeliverable: {code} {text}")]
    Undeliverable {
        /// The exchange (`""`: the default exchange).
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The broker's reply code (312, `NO_ROUTE`).
        code: u16,
        /// The broker's reply text.
        text: String,
    },
    /// The broker did not take the message (it refused to declare, nacked, or the
    /// connection failed before the confirm).
    #[error("the message to exchange `{exchange}` was not published: {message}")]
    Transport {
        /// The exchange.
        exchange: String,
        /// Why.
        message: String,
    },
}

impl IntoHandlerError for PublishError {
    fn into_handler_error(self) -> HandlerError {
        let exc_type = match self {
            Self::Undeliverable { .. } => "UndeliverableMessage",
            _ => "PublishError",
        };
        HandlerError::new(RemoteError::new(exc_type, self.to_string())).with_source(self)
    }
}

/// One message a recording [`Publisher`] published.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Published {
    /// The exchange (`""`: the default exchange).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The body, as JSON.
    pub body: Value,
    /// The headers given (defaults and the call's), without the context headers.
    pub headers: Map<String, Value>,
    /// The delivery mode.
    pub delivery_mode: DeliveryMode,
    /// Whether it was mandatory.
    pub mandatory: bool,
    /// The priority.
    pub priority: u8,
    /// The expiration.
    pub expiration: Option<Duration>,
    /// The `correlation_id`.
    pub correlation_id: Option<String>,
    /// The `reply_to`.
    pub reply_to: Option<String>,
}

/// What a recording [`Publisher`] published, for assertions in unit tests.
#[derive(Clone, Debug, Default)]
pub struct PublishLog {
    messages: Arc<std::sync::Mutex<Vec<Published>>>,
}

impl PublishLog {
    /// Every message published, in order.
    pub fn messages(&self) -> Vec<Published> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bodies published with `routing_key`, in order.
    pub fn bodies(&self, routing_key: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m.routing_key == routing_key)
            .map(|m| m.body)
            .collect()
    }

    /// Panics, listing what was published, unless `body` was published with
    /// `routing_key`.
    ///
    /// # Panics
    ///
    /// When it was not.
    #[track_caller]
    pub fn assert_published<T: Serialize + ?Sized>(&self, routing_key: &str, body: &T) {
        let body = serde_json::to_value(body).ok();
        assert!(
            self.bodies(routing_key).iter().any(|b| Some(b) == body.as_ref()),
            "expected a message with routing key `{routing_key}` and body {}, published: {:?}",
            body.map(|b| b.to_string()).unwrap_or_default(),
            self.messages()
        );
    }
}

/// Where a publisher's messages go.
#[derive(Clone)]
enum Target {
    Broker(SharedBroker),
    Recording(PublishLog),
}

/// What a publisher publishes to and declares, and its default options.
#[derive(Clone, Debug, Default)]
struct Settings {
    exchange: Option<Exchange>,
    declare: Topology,
    defaults: PublishOptions,
}

impl Settings {
    /// The exchange, then `declare`: what is declared before the first publish.
    fn topology(&self) -> Topology {
        let mut topology = Topology::new();
        topology.exchanges.extend(self.exchange.iter().cloned());
        topology.exchanges.extend(self.declare.exchanges.iter().cloned());
        topology.queues.extend(self.declare.queues.iter().cloned());
        topology.bindings.extend(self.declare.bindings.iter().cloned());
        topology
    }

    fn exchange_name(&self) -> &str {
        self.exchange.as_ref().map_or("", |e| e.name.as_str())
    }
}

struct Inner {
    settings: Settings,
    target: Target,
    topology: Topology,
    declared: OnceCell<()>,
}

impl Inner {
    fn new(settings: Settings, target: Target) -> Arc<Self> {
        Arc::new(Self {
            topology: settings.topology(),
            settings,
            target,
            declared: OnceCell::new(),
        })
    }

    /// Declares the exchange and `declare`, once per publisher (a failed declare is
    /// tried again by the next publish).
    async fn declare(&self) -> Result<(), String> {
        let Target::Broker(broker) = &self.target else {
            return Ok(());
        };
        if self.topology == Topology::new() {
            return Ok(());
        }
        self.declared
            .get_or_try_init(|| broker.declare(&self.topology))
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    }
}

/// Publishes JSON messages to one exchange — the default exchange unless told —
/// with the worker's context data as `nameko.*` headers, waiting for the broker's
/// confirm: Nameko's `Publisher`.
///
/// As a field of a service, it is declared by its provider: `#[dependency(exchange =
/// "orders", exchange_type = "topic")]` (kombu's default type is `direct`), or
/// `#[dependency(provider = PublisherProvider::new()...)]` for queues to declare and
/// default options. The exchange and everything in `declare` are declared when the
/// service starts (a mismatch fails the start) and again before the first publish of
/// a standalone publisher.
///
/// The body is serialized to JSON (`application/json`, `utf-8`): nameko-rs speaks JSON
/// only, Nameko's default `serializer`.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
    cx: Option<WorkerContext>,
    /// Outside a worker: context data sent with every message.
    data: ContextData,
}

impl Publisher {
    /// A publisher outside any worker, to the default exchange: it sends a fresh trace
    /// id as context. Give it an exchange with [`exchange`](Self::exchange).
    pub fn standalone(broker: SharedBroker) -> Self {
        Self {
            inner: Inner::new(Settings::default(), Target::Broker(broker)),
            cx: None,
            data: ContextData::new(),
        }
    }

    /// A publisher that only records what it publishes, for unit tests; also what a
    /// generated worker factory puts in an unset field.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use nameko_extensions::messaging::{PublishOptions, Publisher};
    ///
    /// let (publisher, log) = Publisher::recording();
    /// publisher.publish(&serde_json::json!({"id": 7}), PublishOptions::new().routing_key("jobs")).await.unwrap();
    /// log.assert_published("jobs", &serde_json::json!({"id": 7}));
    /// # }
    /// ```
    pub fn recording() -> (Self, PublishLog) {
        let log = PublishLog::default();
        let publisher = Self {
            inner: Inner::new(Settings::default(), Target::Recording(log.clone())),
            cx: None,
            data: ContextData::new(),
        };
        (publisher, log)
    }

    fn with_settings(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.inner.settings.clone();
        change(&mut settings);
        Self {
            inner: Inner::new(settings, self.inner.target.clone()),
            ..self
        }
    }

    /// Publishes to `exchange` (declared before the first publish) instead of the
    /// default exchange.
    #[must_use]
    pub fn exchange(self, exchange: Exchange) -> Self {
        self.with_settings(|s| s.exchange = Some(exchange))
    }

    /// Declares `topology` too (queues, bindings, other exchanges) before the first
    /// publish.
    #[must_use]
    pub fn declare(self, topology: Topology) -> Self {
        self.with_settings(|s| extend(&mut s.declare, topology))
    }

    /// Options every publish starts from (its own options win, headers merge).
    #[must_use]
    pub fn options(self, defaults: PublishOptions) -> Self {
        self.with_settings(|s| s.defaults = defaults)
    }

    /// Outside a worker: context data (`user_id`, any key) sent as `nameko.<key>`
    /// headers with every message, beside a fresh trace id. A publisher inside a worker
    /// sends the worker's context instead.
    #[must_use]
    pub fn with_data(self, data: ContextData) -> Self {
        Self { data, ..self }
    }

    /// The exchange messages go to (`""`: the default exchange).
    pub fn exchange_name(&self) -> &str {
        self.inner.settings.exchange_name()
    }

    /// Publishes `body` as JSON with `options` over the publisher's defaults, and waits
    /// for the broker's confirm.
    ///
    /// # Errors
    ///
    /// [`PublishError::Serialize`] when the body does not serialize;
    /// [`PublishError::Undeliverable`] when the message is mandatory and no queue is
    /// bound for it; [`PublishError::Transport`] when a declare fails or the broker
    /// does not confirm the message.
    pub async fn publish<T: Serialize + ?Sized>(&self, body: &T, options: PublishOptions) -> Result<(), PublishError> {
        let inner = &*self.inner;
        let exchange = inner.settings.exchange_name();
        let body = serde_json::to_vec(body).map_err(|err| PublishError::Serialize {
            message: err.to_string(),
        })?;
        let options = options.over(&inner.settings.defaults);
        let transport = |message: String| PublishError::Transport {
            exchange: exchange.to_owned(),
            message,
        };
        let routing_key = options.routing_key.clone().unwrap_or_default();
        let broker = match &inner.target {
            Target::Broker(broker) => broker,
            Target::Recording(log) => {
                let body = serde_json::from_slice(&body).map_err(|err| transport(err.to_string()))?;
                let published = Published {
                    exchange: exchange.to_owned(),
                    routing_key,
                    body,
                    headers: options.headers,
                    delivery_mode: options.delivery_mode.unwrap_or_default(),
                    mandatory: options.mandatory.unwrap_or(false),
                    priority: options.priority.unwrap_or(0),
                    expiration: options.expiration,
                    correlation_id: options.correlation_id,
                    reply_to: options.reply_to,
                };
                log.messages.lock().unwrap_or_else(|p| p.into_inner()).push(published);
                return Ok(());
            }
        };
        inner
            .declare()
            .await
            .map_err(|err| transport(format!("declaring failed: {err}")))?;
        let mandatory = options.mandatory.unwrap_or(false);
        let mut context = outgoing_context(self.cx.as_ref(), &self.data);
        let span = Traced::start(Sending::Publish, || format!("{exchange} {routing_key}"), &mut context);
        let message = Publish {
            exchange: exchange.to_owned(),
            routing_key: routing_key.clone(),
            mandatory,
            properties: Self::properties(options, &context),
            body: Bytes::from(body),
        };
        let published = match broker.publish(message).await {
            Ok(PublishOutcome::Routed) => Ok(()),
            Ok(PublishOutcome::Returned { code, text }) => Err(PublishError::Undeliverable {
                exchange: exchange.to_owned(),
                routing_key,
                code,
                text,
            }),
            Ok(PublishOutcome::Nacked) => Err(transport("the broker refused it (nack)".into())),
            Ok(PublishOutcome::ChannelClosed) => Err(transport(
                "the channel closed before the confirm: it may or may not have been routed".into(),
            )),
            Err(err) => Err(transport(err.to_string())),
        };
        span.check(&published);
        published
    }

    /// The message's properties: Nameko's for JSON, the options, and the headers —
    /// the options' with the `context`'s over them.
    fn properties(options: PublishOptions, context: &ContextData) -> Properties {
        let mut headers = Headers::new();
        for (name, value) in &options.headers {
            headers.insert(name.clone(), FieldValue::from_json(value));
        }
        let context = headers_from_context(context);
        for (name, value) in context.iter() {
            headers.insert(name, value.clone());
        }
        let mut properties = Properties::json(headers);
        properties.delivery_mode = Some(options.delivery_mode.unwrap_or_default().as_u8());
        properties.priority = Some(options.priority.unwrap_or(0));
        properties.expiration = options.expiration.map(|ttl| ttl.as_millis().to_string());
        properties.correlation_id = options.correlation_id;
        properties.reply_to = options.reply_to;
        properties
    }
}

/// `more` added to `topology`.
fn extend(topology: &mut Topology, more: Topology) {
    topology.exchanges.extend(more.exchanges);
    topology.queues.extend(more.queues);
    topology.bindings.extend(more.bindings);
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.exchange_name())
            .field("recording", &matches!(self.inner.target, Target::Recording(_)))
            .finish_non_exhaustive()
    }
}

/// The provider of [`Publisher`]: its exchange, what it declares and its default
/// options.
///
/// On a field, the exchange can also come from `#[dependency(exchange = "orders")]`,
/// with `exchange_type = "topic" | "direct" | "fanout"` (default `direct`, kombu's).
///
/// ```
/// use nameko_extensions::{
///     broker::{Binding, Exchange, Queue, Topology},
///     messaging::{PublishOptions, PublisherProvider},
/// };
///
/// let provider = PublisherProvider::new()
///     .exchange(Exchange::topic("orders"))
///     .declare(Topology::new().queue(Queue::durable("audit")).binding(Binding::new("orders", "audit", "#")))
///     .options(PublishOptions::new().header("source", "billing"));
/// ```
#[derive(Default)]
pub struct PublisherProvider {
    settings: Settings,
    inner: Option<Arc<Inner>>,
}

impl PublisherProvider {
    /// Publishes to the default exchange, declares nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes to `exchange`, declared at setup.
    #[must_use]
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.settings.exchange = Some(exchange);
        self
    }

    /// Declares `topology` too at setup (queues, bindings, other exchanges): Nameko's
    /// `declare`.
    #[must_use]
    pub fn declare(mut self, topology: Topology) -> Self {
        extend(&mut self.settings.declare, topology);
        self
    }

    /// Options every publish starts from: Nameko's `publisher_options`.
    #[must_use]
    pub fn options(mut self, defaults: PublishOptions) -> Self {
        self.settings.defaults = defaults;
        self
    }
}

impl fmt::Debug for PublisherProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherProvider")
            .field("exchange", &self.settings.exchange)
            .field("declare", &self.settings.declare)
            .field("set_up", &self.inner.is_some())
            .finish()
    }
}

/// The exchange named by `#[dependency(exchange = "...", exchange_type = "...")]`.
fn exchange_from_args(cx: &SetupContext<'_>) -> Result<Option<Exchange>, SetupError> {
    let kind = match cx.arg("exchange_type") {
        None => ExchangeKind::Direct,
        Some(text) => text.parse::<ExchangeKind>().map_err(SetupError::new)?,
    };
    match cx.arg("exchange") {
        Some("") => Err(SetupError::new(
            "`exchange = \"\"` names the default exchange, which a publisher without an exchange uses: drop it",
        )),
        Some(name) => Ok(Some(Exchange::new(name, kind))),
        None if cx.arg("exchange_type").is_some() => Err(SetupError::new(
            "`exchange_type` needs an `exchange = \"...\"` to apply to",
        )),
        None => Ok(None),
    }
}

impl DependencyProvider for PublisherProvider {
    type Output = Publisher;
    type State = ();

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let broker = transport::broker(cx)?;
        let mut settings = self.settings.clone();
        if let Some(exchange) = exchange_from_args(cx)? {
            if let Some(given) = &settings.exchange {
                return Err(SetupError::new(format!(
                    "the publisher has two exchanges: `{}` from its provider and `{}` from `#[dependency(exchange)]`",
                    given.name, exchange.name
                )));
            }
            settings.exchange = Some(exchange);
        }
        let inner = Inner::new(settings, Target::Broker(broker));
        inner.declare().await.map_err(|err| {
            SetupError::new(format!(
                "the publisher could not declare its exchange and queues: {err}"
            ))
        })?;
        self.inner = Some(inner);
        Ok(())
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(Publisher, ()), BoxError> {
        let inner = self.inner.clone().ok_or("the publisher was not set up")?;
        Ok((
            Publisher {
                inner,
                cx: Some(cx.clone()),
                data: ContextData::new(),
            },
            (),
        ))
    }
}

impl Dependency for Publisher {
    type Provider = PublisherProvider;

    fn provider() -> PublisherProvider {
        PublisherProvider::default()
    }

    /// A recording publisher; use [`Publisher::recording`] to keep its log.
    fn test_default() -> Option<Self> {
        Some(Self::recording().0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn call_options_win_and_headers_merge() {
        let defaults = PublishOptions::new()
            .routing_key("default")
            .header("a", 1)
            .header("b", 1)
            .priority(3);
        let merged = PublishOptions::new().header("b", 2).mandatory(true).over(&defaults);
        assert_eq!(merged.routing_key.as_deref(), Some("default"));
        assert_eq!(merged.headers, *json!({"a": 1, "b": 2}).as_object().unwrap());
        assert_eq!((merged.mandatory, merged.priority), (Some(true), Some(3)));
    }

    #[test]
    fn properties_are_nameko_s_with_the_context_over_the_given_headers() {
        let (publisher, _) = Publisher::recording();
        let publisher = publisher.with_data(ContextData::new().with("user_id", "u-1"));
        let options = PublishOptions::new()
            .header("nameko.user_id", "forged")
            .header("tenant", "acme")
            .expiration(Duration::from_millis(1500))
            .correlation_id("c-1");
        let context = outgoing_context(publisher.cx.as_ref(), &publisher.data);
        let properties = Publisher::properties(options, &context);
        let headers = properties.headers.as_ref().unwrap();
        assert_eq!(headers.get("nameko.user_id"), Some(&FieldValue::String("u-1".into())));
        assert_eq!(headers.get("tenant"), Some(&FieldValue::String("acme".into())));
        assert!(headers.get("nameko.trace_id").is_some(), "a fresh trace id");
        assert_eq!(properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(properties.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!((properties.delivery_mode, properties.priority), (Some(2), Some(0)));
        assert_eq!(properties.expiration.as_deref(), Some("1500"));
        assert_eq!(properties.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(properties.reply_to, None);
    }
}
