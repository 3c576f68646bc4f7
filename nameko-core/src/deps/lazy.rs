//! [`Lazy`]: a dependency provided on first use.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use tokio::sync::OnceCell;

use crate::{
    context::WorkerContext,
    dependency::{Dependency, DependencyProvider, Outcome},
    error::{BoxError, SetupError},
    setup::SetupContext,
};

/// A dependency provided on first use: the inner provider's `get_dependency` and
/// `worker_setup` run when the handler first calls [`get`](Lazy::get), and its
/// `worker_result` and `worker_teardown` run only if it was used. A handler that never
/// touches a database session never opens one.
pub struct Lazy<T: Dependency> {
    shared: Arc<LazyState<T::Provider>>,
}

/// What [`LazyProvider`] keeps for one worker: the inner provider's value and state,
/// once used.
pub struct LazyState<P: DependencyProvider> {
    provider: Arc<P>,
    cx: WorkerContext,
    value: OnceCell<P::Output>,
    state: Mutex<Option<P::State>>,
}

impl<T: Dependency + Sync> Lazy<T> {
    /// The value, provided now if this is the first use.
    ///
    /// # Errors
    ///
    /// The inner provider's error; a later call tries again.
    pub async fn get(&self) -> Result<&T, BoxError> {
        let shared = &*self.shared;
        shared
            .value
            .get_or_try_init(|| async {
                let (value, mut state) = shared.provider.get_dependency(&shared.cx).await?;
                shared.provider.worker_setup(&shared.cx, &mut state).await;
                *shared.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
                Ok(value)
            })
            .await
    }

    /// Whether the value was provided.
    pub fn is_provided(&self) -> bool {
        self.shared.value.initialized()
    }
}

impl<T: Dependency> fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lazy")
            .field("provided", &self.shared.value.initialized())
            .finish()
    }
}

impl<P: DependencyProvider> fmt::Debug for LazyState<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyState")
            .field("provided", &self.value.initialized())
            .finish()
    }
}

/// The provider of [`Lazy<T>`]: wraps `T`'s provider.
pub struct LazyProvider<P> {
    inner: Arc<P>,
}

impl<P> fmt::Debug for LazyProvider<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LazyProvider<{}>", std::any::type_name::<P>())
    }
}

impl<P: DependencyProvider> LazyProvider<P> {
    fn take_state(shared: &LazyState<P>) -> Option<P::State> {
        shared.state.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl<T, P> DependencyProvider for LazyProvider<P>
where
    T: Dependency<Provider = P> + Sync,
    P: DependencyProvider<Output = T>,
{
    type Output = Lazy<T>;
    type State = Arc<LazyState<P>>;

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let inner = Arc::get_mut(&mut self.inner).expect("a provider is only shared once it is set up");
        inner.setup(cx).await
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(Lazy<T>, Self::State), BoxError> {
        let shared = Arc::new(LazyState {
            provider: Arc::clone(&self.inner),
            cx: cx.clone(),
            value: OnceCell::new(),
            state: Mutex::new(None),
        });
        Ok((
            Lazy {
                shared: Arc::clone(&shared),
            },
            shared,
        ))
    }

    async fn worker_result(&self, cx: &WorkerContext, shared: &mut Self::State, outcome: &Outcome) {
        if let Some(mut state) = Self::take_state(shared) {
            self.inner.worker_result(cx, &mut state, outcome).await;
            *shared.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
        }
    }

    async fn worker_teardown(&self, cx: &WorkerContext, shared: Self::State) {
        if let Some(state) = Self::take_state(&shared) {
            self.inner.worker_teardown(cx, state).await;
        }
    }

    async fn stop(&self) {
        self.inner.stop().await;
    }

    fn kill(&self) {
        self.inner.kill();
    }
}

impl<T: Dependency + Sync> Dependency for Lazy<T> {
    type Provider = LazyProvider<T::Provider>;

    fn provider() -> Self::Provider {
        LazyProvider {
            inner: Arc::new(T::provider()),
        }
    }
}
