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
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `registry` | yes | services register themselves (`inventory`), so `run` and `list` find them by name |
//! | `macros` | yes | `#[service]`, `#[derive(Dependencies)]`, `#[rpc_client]`, `#[derive(RemoteError)]` |
//! | `cli` | yes | `nameko::cli`: the command line a service binary's `main` ends with (implies `registry`) |
//! | `amqp` | yes | `nameko::amqp`: the RabbitMQ transport (lapin) |
//! | `http` | yes | `nameko::http`: `#[http]` entrypoints and the runner's web server (axum) |
//! | `amqp-tls` | no | `amqps://` and `AMQP_SSL` (rustls), for services and the CLI |
//! | `cron` | no | cron timers, `#[timer(cron = "0 */5 * * * *", tz = "Europe/Paris")]` (tokio-cron-scheduler, chrono-tz) |
//! | `ws` | no | `nameko::ws`: `#[ws_rpc]` and the `WebSocketHub` on `GET /ws` (implies `http`) |
//! | `otel` | no | OpenTelemetry spans for workers, RPC calls, dispatches and publishes, linked by W3C `traceparent` |
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
#[cfg(feature = "http")]
pub use nameko_extensions::http;
#[cfg(feature = "ws")]
#[doc(inline)]
pub use nameko_extensions::ws;
pub use nameko_extensions::{broker, context, events, memory, messaging, rpc, timer};
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
    pub use ::nameko_core::describe::{EntrypointDoc, ParamDoc};
    pub use ::nameko_core::{
        Dependencies, Dependency, DependencyError, Entrypoints, HandlerError, HandlerResult, IntoHandlerError,
        Lifecycle, Provider, ProviderSlot, Providers, RemoteError, Service, WorkerBuilder,
    };
    #[cfg(feature = "ws")]
    pub use ::nameko_extensions::ws::WsRpcEntrypoint;
    pub use ::nameko_extensions::{
        broker::{Exchange, ExchangeKind, QueueType},
        events::{Backoff, EventHandler, HandlerType, Retry},
        messaging::Consume,
        rpc::{
            FromRpcArgs, Param, Rpc, RpcArgs, RpcEntrypoint, RpcError, RpcInterface, ServiceRpc, TypedReply, decode_arg,
        },
        timer::{MissedTicks, TimerEntrypoint},
    };
    pub use ::serde::{Serialize, de::DeserializeOwned};
    pub use ::serde_json;

    #[cfg(feature = "http")]
    pub use self::http::*;

    #[cfg(feature = "http")]
    mod http {
        use ::nameko_extensions::http::axum::{
            extract::{FromRequest, FromRequestParts},
            response::IntoResponse,
        };
        pub use ::nameko_extensions::http::{HttpEntrypoint, into_http_result};

        /// An extractor that does not read the body.
        #[diagnostic::on_unimplemented(
            message = "`{Self}` cannot come before the last parameter of an #[http] method",
            label = "not an axum `FromRequestParts` extractor",
            note = "only the last parameter may read the request body (`String`, `Bytes`, `Json<T>`, `Request`): move it last; the others must implement `FromRequestParts<()>` (`Path`, `Query`, `HeaderMap`, ...)"
        )]
        pub trait HttpPartsExtractor {}
        impl<T: FromRequestParts<()>> HttpPartsExtractor for T {}

        /// An extractor for the last parameter.
        #[diagnostic::on_unimplemented(
            message = "`{Self}` is not an axum extractor",
            label = "not `FromRequest<()>` nor `FromRequestParts<()>`",
            note = "the parameters of an #[http] method are axum extractors: `Path<T>`, `Query<T>`, `Json<T>`, `HeaderMap`, `String`, ..."
        )]
        pub trait HttpExtractor<M> {}
        impl<M, T: FromRequest<(), M>> HttpExtractor<M> for T {}

        /// What an `#[http]` method's `Ok` may be.
        #[diagnostic::on_unimplemented(
            message = "`{Self}` is not a response: an #[http] method returns `Result<T, E>` with `T: IntoResponse`",
            label = "does not implement axum's `IntoResponse`"
        )]
        pub trait HttpResponse {}
        impl<T: IntoResponse> HttpResponse for T {}

        /// Asserts a parameter before the last is a parts extractor.
        pub fn assert_http_parts_extractor<T: HttpPartsExtractor>() {}
        /// Asserts the last parameter is an extractor.
        pub fn assert_http_extractor<T: HttpExtractor<M>, M>() {}
        /// Asserts the success type is a response.
        pub fn assert_http_response<T: HttpResponse>() {}
    }

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

    /// `#[timer(cron = "...", tz = "...")]`: a cron timer, with the `cron` feature.
    #[cfg(feature = "cron")]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __timer_cron {
        ($expression:expr) => {
            $crate::__private::TimerEntrypoint::cron($expression)
        };
        ($expression:expr, $tz:expr) => {
            $crate::__private::TimerEntrypoint::cron($expression).tz($tz)
        };
    }

    /// `#[timer(cron = "...")]` without the `cron` feature: a compile error saying so.
    #[cfg(not(feature = "cron"))]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __timer_cron {
        ($($any:tt)*) => {
            ::core::compile_error!(
                "#[timer(cron = ...)] needs nameko's `cron` feature: nameko = { version = \"...\", features = [\"cron\"] }"
            )
        };
    }

    pub use crate::__timer_cron as timer_cron;
}
