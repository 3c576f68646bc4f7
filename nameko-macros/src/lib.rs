//! Procedural macros for nameko-rs. Use them through the `nameko` facade
//! (`nameko::service`, `nameko::Dependencies`, `nameko::rpc_client`,
//! `nameko::RemoteError`; the facade's default `macros` feature).
//!
//! The macros only ever generate code a person could write by hand against the public
//! traits of `nameko-core`; `examples/manual-service` shows that hand-written form.
//! Generated code reaches the runtime only through `::nameko::__private` (override the
//! path with `crate = "..."`). Set `NAMEKO_MACROS_DEBUG=1` to print every expansion to
//! stderr.

mod args;
mod ctxt;
mod dependencies;
mod remote_error;
mod rpc_client;
mod service;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;

/// Implements `Dependencies` for a struct whose fields are dependencies, and writes
/// its provider slots and a worker factory for unit tests.
///
/// ```
/// # use nameko::prelude::*;
/// # use nameko::events::EventDispatcher;
/// # use nameko::rpc::{Rpc, RpcError};
/// # #[nameko::rpc_client(service = "maths")]
/// # pub trait Maths { async fn add(&self, a: i64, b: i64) -> Result<i64, RpcError>; }
/// # #[derive(serde::Deserialize)]
/// # pub struct GreetingSettings { salutation: String }
/// #[derive(nameko::Dependencies)]
/// pub struct Greeting {
///     dispatch: EventDispatcher,
///     maths: Rpc<dyn Maths>,
///     #[dependency(key = "GREETING")]            // → Provider::of().with_arg("key", "GREETING")
///     settings: Settings<GreetingSettings>,
///     #[dependency(provider = nameko::core::deps::Dep::<str>::provider())] // → Provider::new(<expr>)
///     motto: Dep<str>,
/// }
/// ```
///
/// Generates:
///
/// - `GreetingProviders`, as visible as the struct, with one `Provider<FieldType>` slot
///   per field, and its `Providers` impl (a container builds each worker from it);
/// - `impl Dependencies for Greeting` (`providers()` fills every slot with its type's
///   default provider, or the `provider = <expr>` given, plus every other
///   `name = literal` of `#[dependency(...)]` as `.with_arg("name", "literal")`);
/// - `Greeting::worker_factory()` → `GreetingWorkerFactory`, one setter per field and
///   `build()`: unset fields take `Dependency::test_default()`, and a field without one
///   panics naming it (`Greeting.users has no test default; set it with .users(...)`).
///   A field with an explicit `provider` has no test default: set it.
///
/// A field whose type is not a `Dependency` is an error at the field. Only structs with
/// named fields, without generics. Override the facade path with
/// `#[dependencies(crate = "path::to::nameko")]`.
#[proc_macro_derive(Dependencies, attributes(dependency, dependencies))]
pub fn derive_dependencies(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    output("derive(Dependencies)", dependencies::expand(input), TokenStream2::new)
}

/// Implements `Service` for the struct of an inherent impl block, from the entrypoint
/// attributes on its methods.
///
/// ```
/// # use nameko::prelude::*;
/// # use nameko::core::entrypoints::Once;
/// # use serde_json::Value;
/// # type GreetingError = RemoteError;
/// # #[derive(serde::Deserialize)] pub struct OrderCreated { id: u64 }
/// # #[derive(nameko::Dependencies)] pub struct Greeting {}
/// #[nameko::service(name = "greeting")]
/// impl Greeting {
///     #[rpc]
///     async fn greet(&self, name: String, #[arg(name = "type")] kind: Option<String>)
///         -> Result<String, GreetingError> {
///         Ok(format!("Hi, {name} ({})", kind.unwrap_or_default()))
///     }
///
///     #[rpc(name = "hello")]                     // registered as `hello`
///     async fn say_hello(&self) -> Result<String, RemoteError> { Ok("hello".into()) }
///
///     #[event_handler("orders", "order_created")]
///     async fn on_order(&self, order: OrderCreated) -> Result<(), GreetingError> { Ok(()) }
///
///     #[event_handler("config", "changed", handler_type = "broadcast", reliable_delivery = false)]
///     #[rpc]                                     // stacked: both registered
///     async fn refresh(&self, change: Value) -> Result<(), GreetingError> { Ok(()) }
///
///     #[rpc(max_workers = 2)]                    // at most two at once
///     async fn report(&self) -> Result<String, RemoteError> { Ok("report".into()) }
///
///     #[consume(queue = "greetings", requeue_on_error = true)]
///     async fn on_message(&self, message: Value) -> Result<(), GreetingError> { Ok(()) }
///
///     #[entrypoint(Once::<()>::new(()))]         // any `Entrypoint` value
///     async fn seed(&self) -> Result<(), GreetingError> { Ok(()) }
///
///     #[on_start]                                // before any entrypoint takes work
///     async fn warm_up(&self) -> Result<(), GreetingError> { Ok(()) }
///
///     #[on_stop]                                 // after the workers finished
///     async fn flush(&self) -> Result<(), GreetingError> { Ok(()) }
///
///     fn helper(&self) {}                        // no attribute: left alone
/// }
/// ```
///
/// Entrypoint methods are `async`, take `&self`, then plain `name: Type` parameters,
/// and return `Result<T, E>` with `E: IntoHandlerError` (derive `RemoteError`).
///
/// - `#[rpc]`: parameters bind from positional then keyword arguments, by name (a
///   leading `_` is dropped; `#[arg(name = "...")]` renames); an `Option<T>` parameter
///   may be omitted. Parameters must be `DeserializeOwned`, the result `Serialize`.
///   `#[rpc(name = "...")]` renames the method on the wire.
/// - `#[event_handler("source", "event_type", ...)]`: one payload parameter. Options:
///   `handler_type = "service_pool" | "singleton" | "broadcast"`,
///   `reliable_delivery = bool`, `broadcast_identifier = "..."`,
///   `requeue_on_error = bool`, `retry(max = N, backoff = "1s..30s")`,
///   `dead_letter = "exchange"`.
/// - `#[consume(queue = "...", ...)]`: one message parameter, decoded from the JSON
///   body of each message of the queue (declared durable). Options: `exchange = "..."`
///   with `exchange_type = "direct" | "topic" | "fanout"` (default `direct`) and
///   `routing_key = "..."` (binds the queue), `durable = bool`, `requeue_on_error = bool`.
/// - `#[http("GET", "/path/{param}")]` (the facade's `http` feature): the parameters are
///   axum extractors; repeat the attribute for more routes.
/// - `#[timer(interval = "30s")]`, `#[timer(cron = "...")]`: no parameter.
/// - Every entrypoint attribute but `#[entrypoint]` takes `max_workers = N` (N ≥ 1): at
///   most N workers of that entrypoint at once, within the container's `max_workers`
///   (`#[rpc(max_workers = 2)]`, `#[http("GET", "/", max_workers = 4)]`).
/// - `#[rpc]`, `#[event_handler]` and `#[consume]` take `queue_type = "quorum"` (or
///   `"classic"`, the default): the queue they consume is declared a quorum queue,
///   replicated across a RabbitMQ cluster. Only for queues no Python Nameko instance
///   shares (Nameko declares classic queues; the start fails saying so when the types
///   differ); all `#[rpc]` methods of a service share `rpc-<service>`, so one of them
///   giving it is enough.
/// - `#[rpc]`, `#[ws_rpc]`, `#[event_handler]` and `#[consume]` take `sensitive =
///   ["password", "card.number", "items[0]"]` (Nameko's `sensitive_arguments`): paths
///   starting with a parameter's name (a compile error otherwise), whose values the
///   worker's log lines show as `********`. Those lines carry the call's arguments: a
///   failure's, and DEBUG's `worker started`.
/// - `#[entrypoint(<expr>)]`: registers any `Entrypoint`; the method takes its request
///   as its one parameter, or none for `()`.
/// - `#[ws_rpc]` (the facade's `ws` feature): called by websocket request frames on
///   `GET /ws`; the first parameter is the socket id (`String`), the others bind from
///   the frame's `data` by name as for `#[rpc]`. `#[ws_rpc(name = "...")]` renames it;
///   names are unique per runner. It stands alone (no stacking).
/// - `#[on_start]` / `#[on_stop]`: hooks, not entrypoints (`async fn name(&self) ->
///   Result<(), E>`, no other parameter, no entrypoint attribute beside them). Each runs
///   on a worker of its own with the service's dependencies, as a worker does
///   (`nameko::core::Lifecycle` says when): `on_start` hooks before the entrypoints
///   start (an error fails the start), `on_stop` hooks during a graceful stop, after
///   the running workers finished and before the dependencies stop.
///
/// `#[rpc]`, `#[event_handler]` and `#[consume]` stack on a one-parameter method. The helper
/// attributes only exist inside `#[service]`. Also registers the service with the
/// runner's registry (feature `registry`). Override the facade path with
/// `crate = "path::to::nameko"`.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    output("service", service::expand(args.into(), item.clone()), || {
        service::fallback(item)
    })
}

/// Makes a trait the typed RPC client of a service: fields `maths: Rpc<dyn Maths>`
/// call service `maths` through it.
///
/// ```
/// use nameko::rpc::RpcError;
///
/// #[nameko::rpc_client(service = "maths")]
/// #[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
/// pub trait Maths {
///     async fn add(&self, a: i64, b: i64) -> Result<i64, RpcError>;
/// }
/// ```
///
/// Methods are `async fn name(&self, args...) -> Result<T, RpcError>` (any error type
/// `From<RpcError>`). The trait gains `Send + Sync` supertraits, `#[async_trait]`, and
/// for each method `name_async(&self, args...) -> Result<TypedReply<T>, RpcError>`,
/// which returns once the call is published. Arguments are sent positionally.
/// Implements `RpcInterface` for `dyn Maths` with a hidden proxy.
///
/// Attributes written below `#[rpc_client]` are kept ahead of `#[async_trait]`, so
/// `mockall::automock` mocks the trait (`MockMaths`; use it with `Rpc::from_arc`). A
/// crate that uses the mocks adds `mockall` to its own (dev-)dependencies: the mock's
/// code names `::mockall`. Put the automock behind
/// `cfg_attr(any(test, feature = "mocks"), ...)` so other crates' tests can use it.
#[proc_macro_attribute]
pub fn rpc_client(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    output("rpc_client", rpc_client::expand(args.into(), item.clone()), || {
        rpc_client::fallback(item)
    })
}

/// Implements `IntoHandlerError` for an error type (an enum or a struct implementing
/// `std::error::Error + Send + Sync + 'static`, e.g. with `thiserror`): the error reaches
/// callers as a Nameko remote error.
///
/// ```
/// use nameko::events::DispatchError;
///
/// #[derive(Debug, thiserror::Error, nameko::RemoteError)]
/// pub enum GreetingError {
///     #[error("no user {0}")]
///     #[remote(exc_type = "UserNotFound", exc_path = "users.UserNotFound", status = 404, expected)]
///     NotFound(u64),
///     #[error(transparent)]
///     Dispatch(#[from] DispatchError),             // exc_type "Dispatch", status 500
/// }
/// ```
///
/// Per variant (or on a struct), all optional: `exc_type` (default: the variant's or
/// struct's name), `exc_path` (default: `exc_type`), `status` (default 500), `expected`
/// (an expected error: logged quietly). The message is the `Display` text; the error
/// itself is kept as the handler error's source.
#[proc_macro_derive(RemoteError, attributes(remote))]
pub fn derive_remote_error(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    output("derive(RemoteError)", remote_error::expand(input), TokenStream2::new)
}

/// The expansion, or the errors beside the re-emitted item; printed with
/// `NAMEKO_MACROS_DEBUG=1`.
fn output(name: &str, result: syn::Result<TokenStream2>, fallback: impl FnOnce() -> TokenStream2) -> TokenStream {
    let tokens = match result {
        Ok(tokens) => tokens,
        Err(err) => {
            let mut tokens = fallback();
            tokens.extend(err.into_compile_error());
            tokens
        }
    };
    if std::env::var_os("NAMEKO_MACROS_DEBUG").is_some_and(|v| v == "1") {
        #[expect(clippy::print_stderr, reason = "NAMEKO_MACROS_DEBUG asks for the expansion")]
        {
            eprintln!("// ===== nameko #[{name}] expansion =====\n{tokens}");
        }
    }
    tokens.into()
}
