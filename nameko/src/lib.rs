//! nameko-rs: microservices in the style of Python's Nameko, wire-compatible with
//! Nameko clusters on RabbitMQ.
//!
//! A service is a struct whose fields are *dependencies* and whose methods are
//! *entrypoints*. Every time an entrypoint fires, a container builds a fresh worker —
//! the struct with each field provided — and runs the method, with Nameko's
//! lifecycle hooks around it, so business logic never touches the transport.
//!
//! This crate is the one to depend on: [`core`] is the runtime (containers, the
//! worker lifecycle, dependency providers, the runner, config), and [`prelude`] brings
//! the everyday names into scope. `cli` (feature `cli`, on by default) is the command
//! line a service binary's `main` ends with: `nameko::cli::Cli::new().main()`.
//!
//! # Examples
//!
//! A service written against the public traits (the `#[nameko::service]` macro writes
//! the same code for you):
//!
//! ```
//! use nameko::prelude::*;
//! use nameko::core::{entrypoints::Dummy, DependencyError, ProviderSlot, Providers, WorkerBuilder};
//!
//! pub struct Greeter { user: UserId }
//!
//! pub struct GreeterProviders { user: Provider<UserId> }
//! impl Providers for GreeterProviders {
//!     type Worker = Greeter;
//!     fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> { vec![("user", &mut self.user)] }
//!     async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<Greeter, DependencyError> {
//!         Ok(Greeter { user: b.get(&self.user).await? })
//!     }
//! }
//! impl Dependencies for Greeter {
//!     type Providers = GreeterProviders;
//!     fn providers() -> GreeterProviders { GreeterProviders { user: Provider::of() } }
//! }
//! impl Service for Greeter {
//!     const NAME: &'static str = "greeter";
//!     fn entrypoints(e: &mut Entrypoints<Self>) {
//!         e.add("greet", Dummy::<String, String>::new(), |w: Greeter, name: String| async move {
//!             let by = w.user.as_str().unwrap_or("nobody").to_owned();
//!             Ok::<_, RemoteError>(format!("Hi, {name}! (asked by {by})"))
//!         });
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let container = ServiceContainer::builder::<Greeter>().start().await?;
//! let data = ContextData::new().with("user_id", "ada");
//! let reply: String = container.call_with("greet", "Bob".to_owned(), data).await?;
//! assert_eq!(reply, "Hi, Bob! (asked by ada)");
//! container.stop().await;
//! # Ok(()) }
//! ```

#[cfg(feature = "cli")]
#[doc(inline)]
pub use nameko_cli as cli;
#[doc(inline)]
pub use nameko_core as core;
#[doc(inline)]
#[cfg(feature = "amqp")]
pub use nameko_extensions::amqp;
#[cfg(feature = "ws")]
#[doc(inline)]
pub use nameko_extensions::ws;
pub use nameko_extensions::{broker, context, events, memory, rpc};
#[cfg(feature = "macros")]
#[doc(inline)]
pub use nameko_macros::{Dependencies, RemoteError, rpc_client, service};

/// The everyday names: `use nameko::prelude::*;`.
pub mod prelude {
    #[doc(no_inline)]
    pub use nameko_core::{
        Config, ContextData, Dependencies, Dependency, DependencyProvider, Entrypoints, HandlerError, IntoHandlerError,
        Outcome, Provider, RemoteError, Resources, Service, ServiceContainer, ServiceRunner, WorkerContext,
        deps::{AuthToken, Dep, Language, Lazy, Settings, UserAgent, UserId},
    };
    #[cfg(feature = "ws")]
    #[doc(no_inline)]
    pub use nameko_extensions::ws::WebSocketHub;
}

/// What generated code reaches the runtime through. Not public API: it changes
/// without notice.
#[doc(hidden)]
pub mod __private {
    pub use ::async_trait::async_trait;
    pub use ::nameko_core::{
        Dependencies, Dependency, DependencyError, Entrypoints, HandlerError, HandlerResult, IntoHandlerError,
        Provider, ProviderSlot, Providers, RemoteError, Service, WorkerBuilder,
    };
    #[cfg(feature = "ws")]
    pub use ::nameko_extensions::ws::WsRpcEntrypoint;
    pub use ::nameko_extensions::{
        events::{EventHandler, HandlerType},
        rpc::{
            FromRpcArgs, Param, Rpc, RpcArgs, RpcEntrypoint, RpcError, RpcInterface, ServiceRpc, TypedReply, decode_arg,
        },
    };
    pub use ::serde::{Serialize, de::DeserializeOwned};
    pub use ::serde_json;

    /// Registers a service with `inventory` when the `registry` feature is on.
    #[cfg(feature = "registry")]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __submit_service {
        ($service:ty) => {
            $crate::core::register_service!($service);
        };
    }

    /// Registers a service with `inventory` when the `registry` feature is on.
    #[cfg(not(feature = "registry"))]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __submit_service {
        ($service:ty) => {};
    }

    pub use crate::__submit_service as submit_service;
}
