//! The greeting example: two services that talk over RPC and events.
//!
//! Run with: `cargo run -p example-greeting -- run --transport memory`
//!
//! - `greeting` serves the RPC method `greet(name)`, which counts the visit in a
//!   [`Visitors`] resource, dispatches a `greeted` event and answers `"Hi, {name}!"`.
//! - `listen` handles `greeting`'s `greeted` events and logs `Somebody greeted {name}`.
//! - `web` serves `GET /greet?name=Flynne` by calling `greeting.greet` over RPC. The
//!   request's trace id (its `X-Trace-Id`, or a new one) travels with the RPC call and
//!   the event, so `web`, `greeting` and `listen` each log a line carrying it.

use nameko::events::{DispatchError, EventDispatcher};
use nameko::http::Query;
use nameko::prelude::*;
use nameko::rpc::{Rpc, RpcError};
use serde::{Deserialize, Serialize};

/// Counts who was greeted: a resource the binary supplies through the CLI's
/// `resources` hook, injected into `greeting` as `Dep<dyn Visitors>`.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Visitors: Send + Sync {
    /// Records a visit by `name`; returns how many visits `name` has made.
    fn record(&self, name: &str) -> u64;
}

/// The payload of a `greeted` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeted {
    /// Who was greeted.
    pub name: String,
}

/// What `greet` can fail with.
#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub enum GreetingError {
    /// An empty name.
    #[error("a name is needed to greet somebody")]
    #[remote(exc_type = "NoName", status = 400, expected)]
    NoName,
    /// The `greeted` event could not be sent.
    #[error(transparent)]
    #[remote(exc_type = "DispatchError")]
    Dispatch(#[from] DispatchError),
}

/// How other services call `greeting`: a field `greeting: Rpc<dyn GreetingClient>`.
/// With the `mocks` feature, other crates' tests get `MockGreetingClient`.
#[nameko::rpc_client(service = "greeting")]
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait GreetingClient {
    /// Calls `greeting.greet(name)`.
    async fn greet(&self, name: String) -> Result<String, RpcError>;
}

// ANCHOR: greeting
/// The `greeting` service.
#[derive(Debug, nameko::Dependencies)]
pub struct Greeting {
    dispatch: EventDispatcher,
    visitors: Dep<dyn Visitors>,
}

#[nameko::service(name = "greeting")]
impl Greeting {
    /// Greets `name`.
    #[rpc]
    pub async fn greet(&self, name: String) -> Result<String, GreetingError> {
        if name.is_empty() {
            return Err(GreetingError::NoName);
        }
        let visits = self.visitors.record(&name);
        tracing::info!(visits, "greeting {name}");
        self.dispatch
            .dispatch("greeted", &Greeted { name: name.clone() })
            .await?;
        Ok(format!("Hi, {name}!"))
    }
}
// ANCHOR_END: greeting

// ANCHOR: listen
/// The `listen` service.
#[derive(Debug, nameko::Dependencies)]
pub struct Listen {}

#[nameko::service(name = "listen")]
impl Listen {
    /// Logs every greeting.
    #[event_handler("greeting", "greeted")]
    pub async fn on_greeted(&self, event: Greeted) -> Result<(), RemoteError> {
        tracing::info!("Somebody greeted {}", event.name);
        Ok(())
    }
}
// ANCHOR_END: listen

/// The query of `GET /greet`.
#[derive(Debug, Deserialize)]
pub struct GreetQuery {
    /// Who to greet.
    pub name: String,
}

/// What `web`'s routes can fail with.
#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub enum WebError {
    /// `greeting` refused (an empty name).
    #[error("{0}")]
    #[remote(exc_type = "BadName", status = 400, expected)]
    BadName(String),
    /// `greeting` could not be reached or failed.
    #[error("the greeting service failed: {0}")]
    #[remote(exc_type = "GreetingUnavailable", status = 502)]
    Greeting(RpcError),
}

impl From<RpcError> for WebError {
    fn from(err: RpcError) -> Self {
        match err {
            RpcError::Remote(remote) if remote.exc_type() == "NoName" => Self::BadName(remote.value().to_owned()),
            other => Self::Greeting(other),
        }
    }
}

/// The `web` service: HTTP in front of `greeting`.
#[derive(nameko::Dependencies)]
pub struct Web {
    greeting: Rpc<dyn GreetingClient>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").finish_non_exhaustive()
    }
}

// ANCHOR: web
#[nameko::service(name = "web")]
impl Web {
    /// `GET /greet?name=Flynne` → `Hi, Flynne!`
    #[http("GET", "/greet")]
    pub async fn greet(&self, Query(query): Query<GreetQuery>) -> Result<String, WebError> {
        tracing::info!("asking greeting to greet {}", query.name);
        Ok(self.greeting.greet(query.name).await?)
    }
}
// ANCHOR_END: web

/// A [`Visitors`] that counts in memory.
#[derive(Debug, Default)]
pub struct CountingVisitors {
    counts: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Visitors for CountingVisitors {
    fn record(&self, name: &str) -> u64 {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(name.to_owned()).or_default();
        *count += 1;
        *count
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mockall::predicate::eq;
    use nameko::events::EventDispatcher;
    use nameko::prelude::*;

    use super::*;

    #[tokio::test]
    async fn greet_counts_the_visit_and_dispatches_greeted() {
        let mut visitors = MockVisitors::new();
        visitors.expect_record().with(eq("Ada")).times(1).return_const(3_u64);
        let (dispatch, events) = EventDispatcher::recording();
        let greeting = Greeting::worker_factory()
            .visitors(Dep::from_arc(Arc::new(visitors)))
            .dispatch(dispatch)
            .build();

        assert_eq!(greeting.greet("Ada".into()).await.unwrap(), "Hi, Ada!");
        events.assert_dispatched("greeted", &Greeted { name: "Ada".into() });
    }

    #[tokio::test]
    async fn an_empty_name_is_refused_before_anything_happens() {
        let visitors = MockVisitors::new(); // any call would fail the test
        let greeting = Greeting::worker_factory()
            .visitors(Dep::from_arc(Arc::new(visitors)))
            .build();
        let err = greeting.greet(String::new()).await.unwrap_err();
        assert!(matches!(err, GreetingError::NoName));
        let err = err.into_handler_error();
        assert_eq!(
            (err.remote().exc_type(), err.status(), err.is_expected()),
            ("NoName", 400, true)
        );
    }

    #[test]
    #[should_panic(expected = "Greeting.visitors has no test default; set it with .visitors(...)")]
    fn the_factory_names_a_field_without_a_test_default() {
        let _ = Greeting::worker_factory().build();
    }
}
