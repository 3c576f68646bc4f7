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

mod dispatcher;
mod handler;

pub use self::{
    dispatcher::{DispatchError, DispatchLog, EventDispatcher, EventDispatcherProvider},
    handler::{EventHandler, HandlerType},
};

/// The exchange a service's events are published to.
pub fn events_exchange(service: &str) -> String {
    format!("{service}.events")
}
