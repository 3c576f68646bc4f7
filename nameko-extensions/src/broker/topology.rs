//! What a broker is asked to declare: exchanges, queues and bindings.

use std::{fmt, str::FromStr, time::Duration};

use super::headers::{FieldValue, Headers};

/// An exchange's routing type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Routing keys are dot-separated words; `*` matches one word, `#` zero or more.
    Topic,
    /// The routing key must equal the binding key.
    Direct,
    /// Every bound queue gets every message.
    Fanout,
}

impl ExchangeKind {
    /// The AMQP name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Direct => "direct",
            Self::Fanout => "fanout",
        }
    }
}

impl FromStr for ExchangeKind {
    type Err = String;

    /// `topic`, `direct` or `fanout`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "topic" => Ok(Self::Topic),
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            other => Err(format!(
                "unknown exchange type `{other}`; expected topic, direct or fanout"
            )),
        }
    }
}

/// An exchange to declare.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
}

impl Exchange {
    /// A durable exchange of `kind`, not auto-deleted (kombu's defaults).
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
        }
    }

    /// A durable topic exchange, as Nameko declares `nameko-rpc` and `<service>.events`.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Topic)
    }

    /// A durable direct exchange: kombu's `Exchange(name)`.
    pub fn direct(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Direct)
    }

    /// A durable fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Fanout)
    }
}

/// The type of a queue: RabbitMQ's `x-queue-type` argument.
///
/// A queue's type is fixed when it is first declared; a redeclare with another type is
/// refused (`PRECONDITION_FAILED`, inequivalent `x-queue-type`). Python Nameko declares
/// classic queues only, so a queue a Python instance shares must stay classic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueType {
    /// A classic queue, declared without `x-queue-type` (as Nameko and kombu declare
    /// theirs): the default.
    #[default]
    Classic,
    /// A quorum queue (`x-queue-type = "quorum"`): replicated with Raft across a
    /// RabbitMQ cluster, so it survives the loss of a minority of nodes. It must be
    /// durable, neither exclusive nor auto-delete, and does not support priorities.
    Quorum,
}

impl QueueType {
    /// The name `x-queue-type` takes (`classic`, `quorum`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            other => Err(format!(
                "unknown queue type `{other}`; expected \"classic\" or \"quorum\""
            )),
        }
    }
}

/// A queue to declare.
#[derive(Clone, Debug, PartialEq)]
pub struct Queue {
    /// Its name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Used by one connection only, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-` arguments: `x-expires`, `x-message-ttl`, `x-dead-letter-exchange`…
    pub arguments: Headers,
}

impl Queue {
    /// A durable, non-exclusive, non-auto-delete queue with no arguments.
    pub fn durable(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: Headers::new(),
        }
    }

    /// Sets `auto_delete`.
    #[must_use]
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Sets `exclusive`.
    #[must_use]
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Sets `x-expires`: the queue is deleted after being unused this long.
    #[must_use]
    pub fn expires(mut self, after: Duration) -> Self {
        self.arguments.insert("x-expires", FieldValue::I64(millis(after)));
        self
    }

    /// Sets `x-message-ttl`: messages older than this are dropped or dead-lettered.
    #[must_use]
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.arguments.insert("x-message-ttl", FieldValue::I64(millis(ttl)));
        self
    }

    /// Sets `x-dead-letter-exchange` (and `x-dead-letter-routing-key` when given).
    #[must_use]
    pub fn dead_letter(mut self, exchange: impl Into<String>, routing_key: Option<String>) -> Self {
        self.arguments
            .insert("x-dead-letter-exchange", FieldValue::String(exchange.into()));
        if let Some(key) = routing_key {
            self.arguments
                .insert("x-dead-letter-routing-key", FieldValue::String(key));
        }
        self
    }

    /// Sets `x-single-active-consumer`: one consumer at a time gets messages.
    #[must_use]
    pub fn single_active_consumer(mut self) -> Self {
        self.arguments
            .insert("x-single-active-consumer", FieldValue::Bool(true));
        self
    }

    /// Sets the queue's type: [`QueueType::Quorum`] adds `x-queue-type = "quorum"`,
    /// [`QueueType::Classic`] removes it (a classic queue is declared without it, as
    /// Nameko's are).
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        match queue_type {
            QueueType::Classic => {
                self.arguments.remove("x-queue-type");
            }
            QueueType::Quorum => {
                self.arguments
                    .insert("x-queue-type", FieldValue::String(queue_type.as_str().to_owned()));
            }
        }
        self
    }

    /// The queue's type: quorum when `x-queue-type` says so, classic otherwise.
    pub fn kind(&self) -> QueueType {
        match self.arguments.get("x-queue-type") {
            Some(FieldValue::String(t)) if t == "quorum" => QueueType::Quorum,
            _ => QueueType::Classic,
        }
    }

    /// The value of `x-expires`, if set.
    pub fn expires_after(&self) -> Option<Duration> {
        self.duration_arg("x-expires")
    }

    /// The value of `x-message-ttl`, if set.
    pub fn ttl(&self) -> Option<Duration> {
        self.duration_arg("x-message-ttl")
    }

    /// The dead-letter exchange and routing key, if set.
    pub fn dead_letter_target(&self) -> Option<(&str, Option<&str>)> {
        let FieldValue::String(exchange) = self.arguments.get("x-dead-letter-exchange")? else {
            return None;
        };
        let key = match self.arguments.get("x-dead-letter-routing-key") {
            Some(FieldValue::String(key)) => Some(key.as_str()),
            _ => None,
        };
        Some((exchange.as_str(), key))
    }

    /// Whether `x-single-active-consumer` is set.
    pub fn is_single_active_consumer(&self) -> bool {
        matches!(
            self.arguments.get("x-single-active-consumer"),
            Some(FieldValue::Bool(true))
        )
    }

    fn duration_arg(&self, name: &str) -> Option<Duration> {
        let ms = match self.arguments.get(name)? {
            FieldValue::I64(v) => u64::try_from(*v).ok()?,
            FieldValue::I32(v) => u64::try_from(*v).ok()?,
            FieldValue::U32(v) => u64::from(*v),
            FieldValue::I16(v) => u64::try_from(*v).ok()?,
            _ => return None,
        };
        Some(Duration::from_millis(ms))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A binding from an exchange to a queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The source exchange.
    pub exchange: String,
    /// The destination queue.
    pub queue: String,
    /// The binding key.
    pub routing_key: String,
}

impl Binding {
    /// Binds `queue` to `exchange` with `routing_key`.
    pub fn new(exchange: impl Into<String>, queue: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Self {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: routing_key.into(),
        }
    }
}

/// Everything one extension needs declared, in order: exchanges, queues, bindings.
/// Declaring is idempotent, so a topology can be replayed after a reconnection.
#[derive(Clone, Debug, Default, PartialEq)]
#[must_use]
pub struct Topology {
    /// Exchanges, declared first.
    pub exchanges: Vec<Exchange>,
    /// Queues, declared next.
    pub queues: Vec<Queue>,
    /// Bindings, declared last.
    pub bindings: Vec<Binding>,
}

impl Topology {
    /// Nothing to declare.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an exchange.
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchanges.push(exchange);
        self
    }

    /// Adds a queue.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queues.push(queue);
        self
    }

    /// Adds a binding.
    pub fn binding(mut self, binding: Binding) -> Self {
        self.bindings.push(binding);
        self
    }
}

/// Whether a topic binding key matches a routing key: words are dot-separated, `*`
/// matches exactly one word, `#` zero or more.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|skip| go(rest, &k[skip..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((word, rest)) => k.first() == Some(word) && go(rest, &k[1..]),
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn topic_wildcards() {
        assert!(topic_matches("greeting.*", "greeting.greet"));
        assert!(!topic_matches("greeting.*", "greeting.greet.extra"));
        assert!(!topic_matches("greeting.*", "greeting"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("", ""));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#.c", "a.b.b.c"));
        assert!(topic_matches("order_created", "order_created"));
        assert!(!topic_matches("order_created", "order_deleted"));
    }
}
