//! Dependency injection: [`DependencyProvider`], [`Dependency`], the per-field
//! [`Provider`] slot and the [`Providers`] set a service's worker is built from.

mod slot;

use std::future::Future;

pub use self::slot::{Provider, ProviderHandle, ProviderSlot, WorkerBuilder};
use crate::{
    SetupError,
    context::WorkerContext,
    error::{BoxError, DependencyError, HandlerError},
    setup::SetupContext,
};

/// How a worker ended, as its providers' [`worker_result`] hooks see it.
///
/// [`worker_result`]: DependencyProvider::worker_result
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler returned `Ok`.
    Success,
    /// The handler returned an error, or a dependency could not be provided.
    Failure(HandlerError),
    /// The handler or a `worker_setup` hook panicked; carries the panic message.
    Panicked(String),
}

impl Outcome {
    /// Whether the handler succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success)
    }
}

/// Lives as long as its container and provides one value per worker.
///
/// Per worker, in this order: [`get_dependency`] for every field, [`worker_setup`],
/// the handler, [`worker_result`] with the [`Outcome`], [`worker_teardown`]. Result and
/// teardown always run — after success, error and panic — and run in a task the
/// container owns, so a caller that goes away never skips them; only `kill` cancels.
/// What `get_dependency` returns besides the value is this worker's [`State`]: a
/// transaction to commit or roll back, a timer, a span.
///
/// Implement the methods with `async fn`.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use nameko_core::{BoxError, DependencyProvider, Outcome, WorkerContext};
///
/// /// Records every call's outcome.
/// #[derive(Default)]
/// struct Audit { log: Arc<Mutex<Vec<String>>> }
///
/// impl DependencyProvider for Audit {
///     type Output = ();
///     type State = String;
///
///     async fn get_dependency(&self, cx: &WorkerContext) -> Result<((), String), BoxError> {
///         Ok(((), cx.entrypoint().method().to_owned()))
///     }
///
///     async fn worker_result(&self, _cx: &WorkerContext, method: &mut String, outcome: &Outcome) {
///         self.log.lock().unwrap().push(format!("{method}: {}", outcome.is_success()));
///     }
/// }
/// ```
///
/// [`get_dependency`]: Self::get_dependency
/// [`worker_setup`]: Self::worker_setup
/// [`worker_result`]: Self::worker_result
/// [`worker_teardown`]: Self::worker_teardown
/// [`State`]: Self::State
pub trait DependencyProvider: Send + Sync + 'static {
    /// What the worker's field holds.
    type Output: Send + 'static;
    /// What the provider keeps for one worker.
    type State: Send + 'static;

    /// Called once before the container starts: read config, check resources.
    fn setup(&mut self, cx: &mut SetupContext<'_>) -> impl Future<Output = Result<(), SetupError>> + Send {
        let _ = cx;
        async { Ok(()) }
    }

    /// Provides the field's value, and this worker's state, for a new worker.
    fn get_dependency(
        &self,
        cx: &WorkerContext,
    ) -> impl Future<Output = Result<(Self::Output, Self::State), BoxError>> + Send;

    /// Runs after every field was provided, before the handler.
    fn worker_setup(&self, cx: &WorkerContext, state: &mut Self::State) -> impl Future<Output = ()> + Send {
        let _ = (cx, state);
        async {}
    }

    /// Runs after the handler with its outcome.
    fn worker_result(
        &self,
        cx: &WorkerContext,
        state: &mut Self::State,
        outcome: &Outcome,
    ) -> impl Future<Output = ()> + Send {
        let _ = (cx, state, outcome);
        async {}
    }

    /// Runs last, always, and receives the state.
    fn worker_teardown(&self, cx: &WorkerContext, state: Self::State) -> impl Future<Output = ()> + Send {
        let _ = (cx, state);
        async {}
    }

    /// Graceful stop, after every running worker finished.
    fn stop(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Ungraceful stop: drop everything now. Must not block.
    fn kill(&self) {}
}

/// A type that can be a field of a service: it names the provider that fills it.
///
/// # Examples
///
/// ```
/// use nameko_core::{BoxError, Dependency, DependencyProvider, WorkerContext};
///
/// /// The time the worker started, in seconds since the epoch.
/// #[derive(Clone, Copy, Debug)]
/// pub struct StartedAt(pub u64);
///
/// #[derive(Debug, Default)]
/// pub struct StartedAtProvider;
///
/// impl DependencyProvider for StartedAtProvider {
///     type Output = StartedAt;
///     type State = ();
///     async fn get_dependency(&self, _: &WorkerContext) -> Result<(StartedAt, ()), BoxError> {
///         let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
///         Ok((StartedAt(now.as_secs()), ()))
///     }
/// }
///
/// impl Dependency for StartedAt {
///     type Provider = StartedAtProvider;
///     fn provider() -> StartedAtProvider { StartedAtProvider }
///     fn test_default() -> Option<Self> { Some(StartedAt(0)) }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be injected into a nameko service",
    label = "not a dependency",
    note = "implement `nameko::core::Dependency` for it, or fill the field with an explicit provider"
)]
pub trait Dependency: Sized + Send + 'static {
    /// The provider that fills fields of this type.
    type Provider: DependencyProvider<Output = Self>;

    /// Makes the provider for one field.
    fn provider() -> Self::Provider;

    /// The value a generated worker factory uses when a test does not set this field;
    /// `None` makes the factory refuse, naming the field.
    fn test_default() -> Option<Self> {
        None
    }
}

/// The providers of one service, one [`Provider`] slot per field, and how they
/// assemble a worker. `#[derive(nameko::Dependencies)]` writes this; by hand:
///
/// ```
/// use nameko_core::{deps::Dep, DependencyError, Provider, ProviderSlot, Providers, WorkerBuilder};
///
/// pub struct Shop { prices: Dep<Vec<u32>> }
///
/// pub struct ShopProviders { pub prices: Provider<Dep<Vec<u32>>> }
///
/// impl Providers for ShopProviders {
///     type Worker = Shop;
///     fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
///         vec![("prices", &mut self.prices)]
///     }
///     async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<Shop, DependencyError> {
///         Ok(Shop { prices: b.get(&self.prices).await? })
///     }
/// }
/// ```
pub trait Providers: Send + Sync + 'static {
    /// The service struct built for each call.
    type Worker: Send + 'static;

    /// Every slot with the name of its field, in field order.
    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)>;

    /// Builds a worker: takes every field from its slot with [`WorkerBuilder::get`].
    fn build<'a>(
        &'a self,
        builder: &mut WorkerBuilder<'a>,
    ) -> impl Future<Output = Result<Self::Worker, DependencyError>> + Send;
}

/// A struct whose fields are dependencies. `#[derive(nameko::Dependencies)]` implements
/// it; `Providers` is then a generated `<Service>Providers` struct.
pub trait Dependencies: Sized + Send + Sync + 'static {
    /// One provider slot per field.
    type Providers: Providers<Worker = Self>;

    /// The default providers, one per field.
    fn providers() -> Self::Providers;
}
