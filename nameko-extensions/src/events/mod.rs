//! Events with Nameko's wire format: the [`EventDispatcher`] dependency and the
//! [`EventHandler`] entrypoint.
//!
//! A service dispatches to the topic exchange `<service>.events` with the event type as
//! routing key; each handler consumes a queue whose name and flags follow Nameko's
//! table exactly, so Rust and Python instances of one service share it:
//!
//! | handler type | queue | who receives |
//! | --- | --- | --- |
//! | service pool (default) | `evt-<src>-<type>--<service>.<method>` | one instance of each service |
//! | singleton | `evt-<src>-<type>` | one handler among all services |
//! | broadcast | `evt-<src>-<type>--<service>.<method>-<identifier>` | every instance |
//!
//! Every queue is durable; `auto_delete` is `!reliable_delivery`; `exclusive` is
//! `broadcast && !reliable_delivery`.
//!
//! A handler may retry failed events after a delay and dead-letter them after the last
//! attempt ([`EventHandler::retry`], [`EventHandler::dead_letter`]), through retry
//! queues `<queue>.retry.<delay>ms` beside the handler queue, whose declare stays as
//! above.

mod dispatcher;
mod handler;
pub(crate) mod retry;

pub use self::{
    dispatcher::{DispatchError, DispatchLog, EventDispatcher, EventDispatcherProvider},
    handler::{EventHandler, HandlerType},
    retry::{
        ATTEMPTS_HEADER, Backoff, ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER, InvalidBackoff, QUEUE_HEADER,
        RETRY_ATTEMPT_HEADER, Retry,
    },
};

/// The exchange a service's events are published to.
pub fn events_exchange(service: &str) -> String {
    format!("{service}.events")
}

/// How `<service>.events` is declared — by the service's dispatcher and by every handler
/// listening to it, which must agree or RabbitMQ refuses the second declare: a durable
/// topic exchange, auto-deleted when config `AUTO_DELETE_EVENT_EXCHANGES` is true.
/// A standalone listener (the CLI's `subscribe`) declares it the same way.
///
/// ```
/// use nameko_core::Config;
/// use nameko_extensions::events::events_exchange_declare;
///
/// let exchange = events_exchange_declare("greeting", &Config::default());
/// assert_eq!((exchange.name.as_str(), exchange.durable, exchange.auto_delete), ("greeting.events", true, false));
/// ```
pub fn events_exchange_declare(service: &str, config: &nameko_core::Config) -> crate::broker::Exchange {
    let mut exchange = crate::broker::Exchange::topic(events_exchange(service));
    exchange.auto_delete = config
        .get("AUTO_DELETE_EVENT_EXCHANGES")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    exchange
}
