//! Type erasure of providers: the per-field [`Provider`] slot and the
//! [`WorkerBuilder`] that records each field's state for the worker's hooks.

use std::{any::Any, any::type_name, fmt, future::Future, panic::AssertUnwindSafe, pin::Pin, sync::Arc};

use futures_util::FutureExt;

use super::{Dependency, DependencyProvider, Outcome};
use crate::{
    context::WorkerContext,
    error::{BoxError, DependencyError, SetupError},
    setup::SetupContext,
    util::panic_message,
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type AnyState = Box<dyn Any + Send>;

/// The hooks of a provider, with its state erased.
trait ErasedHooks: Send + Sync {
    fn worker_setup<'a>(&'a self, cx: &'a WorkerContext, state: &'a mut AnyState) -> BoxFuture<'a, ()>;
    fn worker_result<'a>(
        &'a self,
        cx: &'a WorkerContext,
        state: &'a mut AnyState,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, ()>;
    fn worker_teardown<'a>(&'a self, cx: &'a WorkerContext, state: AnyState) -> BoxFuture<'a, ()>;
}

/// Stop and kill of a provider, with its type erased.
trait ErasedLifecycle: Send + Sync {
    fn stop(&self) -> BoxFuture<'_, ()>;
    fn kill(&self);
    fn provider_type(&self) -> &'static str;
}

/// A provider with its type erased but its output known.
trait ErasedProvider<T>: ErasedHooks + ErasedLifecycle {
    fn setup<'a>(&'a mut self, cx: &'a mut SetupContext<'_>) -> BoxFuture<'a, Result<(), SetupError>>;
    fn get<'a>(&'a self, cx: &'a WorkerContext) -> BoxFuture<'a, Result<(T, AnyState), BoxError>>;
}

struct Erased<P>(P);

fn state_of<P: DependencyProvider>(state: &mut AnyState) -> &mut P::State {
    state
        .downcast_mut()
        .expect("a slot only ever receives the state its provider made")
}

impl<P: DependencyProvider> ErasedHooks for Erased<P> {
    fn worker_setup<'a>(&'a self, cx: &'a WorkerContext, state: &'a mut AnyState) -> BoxFuture<'a, ()> {
        Box::pin(self.0.worker_setup(cx, state_of::<P>(state)))
    }

    fn worker_result<'a>(
        &'a self,
        cx: &'a WorkerContext,
        state: &'a mut AnyState,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.0.worker_result(cx, state_of::<P>(state), outcome))
    }

    fn worker_teardown<'a>(&'a self, cx: &'a WorkerContext, state: AnyState) -> BoxFuture<'a, ()> {
        let state = *state
            .downcast::<P::State>()
            .expect("a slot only ever receives the state its provider made");
        Box::pin(self.0.worker_teardown(cx, state))
    }
}

impl<P: DependencyProvider> ErasedProvider<P::Output> for Erased<P> {
    fn setup<'a>(&'a mut self, cx: &'a mut SetupContext<'_>) -> BoxFuture<'a, Result<(), SetupError>> {
        Box::pin(self.0.setup(cx))
    }

    fn get<'a>(&'a self, cx: &'a WorkerContext) -> BoxFuture<'a, Result<(P::Output, AnyState), BoxError>> {
        Box::pin(async move {
            let (value, state) = self.0.get_dependency(cx).await?;
            Ok((value, Box::new(state) as AnyState))
        })
    }
}

impl<P: DependencyProvider> ErasedLifecycle for Erased<P> {
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.stop())
    }

    fn kill(&self) {
        self.0.kill();
    }

    fn provider_type(&self) -> &'static str {
        type_name::<P>()
    }
}

/// A provider that hands every worker a clone of one value.
struct Fixed<T>(T);

impl<T: Clone + Send + Sync + 'static> DependencyProvider for Fixed<T> {
    type Output = T;
    type State = ();

    async fn get_dependency(&self, _cx: &WorkerContext) -> Result<(T, ()), BoxError> {
        Ok((self.0.clone(), ()))
    }
}

// ===== Provider =====

/// The slot that fills one field of type `T`: any [`DependencyProvider`] whose output
/// is `T`, boxed. Tests swap a slot to replace a dependency.
///
/// # Examples
///
/// ```
/// use nameko_core::{deps::Dep, Provider};
///
/// // The field's default provider…
/// let slot: Provider<Dep<str>> = Provider::of();
/// // …or a fixed value every worker gets a clone of.
/// let slot = Provider::fixed(Dep::<str>::from_arc("fake".into()));
/// ```
pub struct Provider<T> {
    inner: Arc<dyn ErasedProvider<T>>,
    field: &'static str,
    args: Vec<(&'static str, String)>,
}

impl<T: Send + 'static> Provider<T> {
    /// A slot filled by `provider`.
    pub fn new<P: DependencyProvider<Output = T>>(provider: P) -> Self {
        Self {
            inner: Arc::new(Erased(provider)),
            field: "?",
            args: Vec::new(),
        }
    }

    /// A slot filled by `T`'s default provider.
    pub fn of() -> Self
    where
        T: Dependency,
    {
        Self::new(T::provider())
    }

    /// A slot that gives every worker a clone of `value`: the simplest fake.
    pub fn fixed(value: T) -> Self
    where
        T: Clone + Sync,
    {
        Self::new(Fixed(value))
    }

    /// Adds an argument the provider reads in `setup` through
    /// [`SetupContext::arg`], e.g. `key` for [`Settings`](crate::deps::Settings).
    #[must_use]
    pub fn with_arg(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.args.push((key, value.into()));
        self
    }
}

impl<T> fmt::Debug for Provider<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("field", &self.field)
            .field("type", &type_name::<T>())
            .field("provider", &self.inner.provider_type())
            .finish()
    }
}

/// The part of a [`Provider`] slot the container drives without knowing its type:
/// setup, stop and kill. Implemented only by [`Provider`].
pub trait ProviderSlot: Send + Sync + sealed::Sealed {
    /// Sets the provider up for the field `field` of service `cx.service_name()`.
    #[doc(hidden)]
    fn setup_slot<'a>(
        &'a mut self,
        field: &'static str,
        cx: &'a mut SetupContext<'_>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SetupError>> + Send + 'a>>;
    /// A handle the container keeps to stop or kill the provider.
    #[doc(hidden)]
    fn handle(&self) -> ProviderHandle;
    /// The field's type name.
    fn field_type(&self) -> &'static str;
    /// The arguments given to the slot.
    #[doc(hidden)]
    fn slot_args(&self) -> &[(&'static str, String)];
}

mod sealed {
    pub trait Sealed {}
    impl<T> Sealed for super::Provider<T> {}
}

impl<T: Send + 'static> ProviderSlot for Provider<T> {
    fn setup_slot<'a>(
        &'a mut self,
        field: &'static str,
        cx: &'a mut SetupContext<'_>,
    ) -> Pin<Box<dyn Future<Output = Result<(), SetupError>> + Send + 'a>> {
        self.field = field;
        let inner = Arc::get_mut(&mut self.inner).expect("a slot's provider is only shared once it is set up");
        inner.setup(cx)
    }

    fn handle(&self) -> ProviderHandle {
        ProviderHandle {
            field: self.field,
            inner: Arc::clone(&self.inner) as Arc<dyn ErasedLifecycle>,
        }
    }

    fn field_type(&self) -> &'static str {
        type_name::<T>()
    }

    fn slot_args(&self) -> &[(&'static str, String)] {
        &self.args
    }
}

/// A set-up provider, kept by its container to stop or kill it.
#[doc(hidden)]
#[derive(Clone)]
pub struct ProviderHandle {
    field: &'static str,
    inner: Arc<dyn ErasedLifecycle>,
}

impl ProviderHandle {
    pub(crate) async fn stop(&self) {
        if let Err(panic) = AssertUnwindSafe(self.inner.stop()).catch_unwind().await {
            tracing::error!(field = self.field, "provider stop panicked: {}", panic_message(&*panic));
        }
    }

    pub(crate) fn kill(&self) {
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.kill())) {
            tracing::error!(field = self.field, "provider kill panicked: {}", panic_message(&*panic));
        }
    }
}

impl fmt::Debug for ProviderHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("field", &self.field)
            .field("provider", &self.inner.provider_type())
            .finish()
    }
}

// ===== WorkerBuilder =====

/// Collects a worker's fields from their slots, remembering each provider's state so
/// the container can run `worker_setup`, `worker_result` and `worker_teardown`.
pub struct WorkerBuilder<'a> {
    cx: &'a WorkerContext,
    taken: Vec<(&'static str, &'a dyn ErasedHooks, AnyState)>,
}

impl<'a> WorkerBuilder<'a> {
    pub(crate) fn new(cx: &'a WorkerContext) -> Self {
        Self { cx, taken: Vec::new() }
    }

    /// The context of the worker being built.
    pub fn context(&self) -> &'a WorkerContext {
        self.cx
    }

    /// Provides the value of one field.
    ///
    /// # Errors
    ///
    /// When the provider fails (or panics); the error names service, field and type.
    pub async fn get<T: Send + 'static>(&mut self, slot: &'a Provider<T>) -> Result<T, DependencyError> {
        let fail = |source: BoxError| DependencyError {
            service: self.cx.service_name(),
            field: slot.field,
            type_name: type_name::<T>(),
            source,
        };
        match AssertUnwindSafe(slot.inner.get(self.cx)).catch_unwind().await {
            Ok(Ok((value, state))) => {
                self.taken.push((slot.field, &*slot.inner, state));
                Ok(value)
            }
            Ok(Err(err)) => Err(fail(err)),
            Err(panic) => Err(fail(
                format!("get_dependency panicked: {}", panic_message(&*panic)).into(),
            )),
        }
    }

    /// Runs `worker_setup` of every provider taken so far, in field order. Returns the
    /// message of the first panic, after which the remaining hooks are skipped.
    pub(crate) async fn worker_setup(&mut self) -> Result<(), String> {
        let cx = self.cx;
        for (field, hooks, state) in &mut self.taken {
            if let Err(panic) = AssertUnwindSafe(hooks.worker_setup(cx, state)).catch_unwind().await {
                return Err(format!(
                    "worker_setup of `{field}` panicked: {}",
                    panic_message(&*panic)
                ));
            }
        }
        Ok(())
    }

    /// Runs `worker_result` then `worker_teardown` of every provider taken, in field
    /// order. A panicking hook is logged and the others still run.
    pub(crate) async fn finish(self, outcome: &Outcome) {
        let cx = self.cx;
        let mut taken = self.taken;
        for (field, hooks, state) in &mut taken {
            if let Err(panic) = AssertUnwindSafe(hooks.worker_result(cx, state, outcome))
                .catch_unwind()
                .await
            {
                tracing::error!(field = *field, "worker_result panicked: {}", panic_message(&*panic));
            }
        }
        for (field, hooks, state) in taken {
            if let Err(panic) = AssertUnwindSafe(hooks.worker_teardown(cx, state)).catch_unwind().await {
                tracing::error!(field, "worker_teardown panicked: {}", panic_message(&*panic));
            }
        }
    }
}

impl fmt::Debug for WorkerBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("call_id", &self.cx.call_id())
            .field(
                "taken",
                &self.taken.iter().map(|(field, _, _)| field).collect::<Vec<_>>(),
            )
            .finish()
    }
}
