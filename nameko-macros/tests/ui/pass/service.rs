//! A full service: rpc (renamed method and parameter, optional parameter), an event
//! handler with options, stacked rpc + event_handler, a custom entrypoint.
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]

use nameko::core::{entrypoints::Once, deps::Dep};
use nameko::events::EventDispatcher;
use nameko::prelude::RemoteError;
use serde::{Deserialize, Serialize};

/// The payload of `order_created`.
#[derive(Debug, Deserialize, Serialize)]
pub struct OrderCreated {
    /// The order.
    pub id: u64,
}

/// The service.
#[derive(Debug, nameko::Dependencies)]
pub struct Greeting {
    dispatch: EventDispatcher,
    #[dependency(provider = <Dep<String> as nameko::core::Dependency>::provider(), note = "x", retries = 3)]
    salutation: Dep<String>,
}

/// An error.
#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub enum GreetingError {
    /// Nobody.
    #[error("no user {0}")]
    #[remote(exc_type = "UserNotFound", exc_path = "users.UserNotFound", status = 404, expected)]
    NotFound(u64),
    /// A struct variant.
    #[error("bad {reason}")]
    Bad {
        /// Why.
        reason: String,
    },
    /// A unit variant.
    #[error("gone")]
    Gone,
}

#[nameko::service(name = "greeting")]
impl Greeting {
    /// Greets; `type` (renamed) and `_unused` (the `_` dropped) are redacted in logs.
    #[rpc(sensitive = ["type", "unused"])]
    pub async fn greet(
        &self,
        name: String,
        #[arg(name = "type")] kind: Option<String>,
        _unused: Option<u32>,
    ) -> Result<String, GreetingError> {
        let _ = (&self.dispatch, &self.salutation);
        Ok(format!("{name} {kind:?}"))
    }

    /// No parameters, renamed.
    #[rpc(name = "hello")]
    pub async fn say_hello(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    /// Receives orders.
    #[event_handler("orders", "order_created", handler_type = "broadcast", reliable_delivery = false, broadcast_identifier = "me", requeue_on_error = true)]
    pub async fn on_order(&self, order: OrderCreated) -> Result<(), GreetingError> {
        let _ = order.id;
        Err(GreetingError::Gone)
    }

    /// Retries twice with a growing delay, then dead-letters.
    #[event_handler("orders", "order_paid", retry(max = 2, backoff = "1s..30s"), dead_letter = "orders.dead", sensitive = ["order.id"])]
    pub async fn on_paid(&self, order: OrderCreated) -> Result<(), GreetingError> {
        let _ = order.id;
        Ok(())
    }

    /// Retries with a fixed delay.
    #[event_handler("orders", "order_lost", retry(max = 3, backoff = "500ms"))]
    pub async fn on_lost(&self, order: OrderCreated) -> Result<(), GreetingError> {
        let _ = order.id;
        Ok(())
    }

    /// Dead-letters at once: no `retry`.
    #[event_handler("orders", "order_found", dead_letter = "orders.dead")]
    pub async fn on_found(&self, order: OrderCreated) -> Result<(), GreetingError> {
        let _ = order.id;
        Ok(())
    }

    /// Both an rpc method and an event handler.
    #[rpc]
    #[event_handler("config", "changed", handler_type = "singleton")]
    pub async fn refresh(&self, change: serde_json::Value) -> Result<u8, GreetingError> {
        let _ = change;
        Err(GreetingError::Bad { reason: "no".into() })
    }

    /// A custom entrypoint.
    #[entrypoint(Once::<()>::new(()))]
    pub async fn seed(&self) -> Result<(), GreetingError> {
        Err(GreetingError::NotFound(1))
    }

    /// Not an entrypoint.
    pub fn helper(&self) -> u8 {
        1
    }
}

fn main() {
    use nameko::core::Service;
    let _ = Greeting::NAME;
    let _ = Greeting::worker_factory().salutation(Dep::from_arc(std::sync::Arc::new("hi".to_owned())));
}
