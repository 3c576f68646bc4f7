//! The [`Service`] trait and the list of its entrypoints.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use crate::{
    container::worker::{Core, MethodSpawner},
    context::EntrypointInfo,
    dependency::Dependencies,
    describe::EntrypointDoc,
    entrypoint::{Binding, Entrypoint},
    error::{HandlerError, IntoHandlerError},
    extension::{BoundEntrypoint, Erased},
};

/// A service: a struct of dependencies with entrypoints on its methods.
/// `#[nameko::service(name = "...")]` implements it; by hand:
///
/// ```
/// use nameko_core::{entrypoints::Dummy, Dependencies, Entrypoints, Providers, ProviderSlot,
///     Service, WorkerBuilder, DependencyError, RemoteError};
///
/// pub struct Echo;
///
/// pub struct EchoProviders;
/// impl Providers for EchoProviders {
///     type Worker = Echo;
///     fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> { Vec::new() }
///     async fn build<'a>(&'a self, _: &mut WorkerBuilder<'a>) -> Result<Echo, DependencyError> { Ok(Echo) }
/// }
/// impl Dependencies for Echo {
///     type Providers = EchoProviders;
///     fn providers() -> EchoProviders { EchoProviders }
/// }
///
/// impl Echo {
///     async fn echo(&self, text: String) -> Result<String, RemoteError> { Ok(text) }
/// }
///
/// impl Service for Echo {
///     const NAME: &'static str = "echo";
///     fn entrypoints(e: &mut Entrypoints<Self>) {
///         e.add("echo", Dummy::<String, String>::new(), |w: Echo, text: String| async move { w.echo(text).await });
///     }
/// }
/// ```
pub trait Service: Dependencies {
    /// The service's name: its RPC queue is `rpc-<NAME>`, its events exchange
    /// `<NAME>.events`.
    const NAME: &'static str;

    /// Declares the service's entrypoints.
    fn entrypoints(entrypoints: &mut Entrypoints<Self>);

    /// The documentation of its entrypoints (parameters, return types, doc lines) that
    /// the introspection RPC and `inspect` show; `#[service]` writes it. By default
    /// none: entrypoints are described by method and kind only.
    fn entrypoint_docs() -> &'static [EntrypointDoc] {
        &[]
    }

    /// Declares hooks run when the service's container starts and stops
    /// (`#[on_start]`/`#[on_stop]` methods of a `#[service]`). None by default.
    ///
    /// ```
    /// # use nameko_core::{entrypoints::Dummy, *};
    /// # pub struct Cache;
    /// # pub struct CacheProviders;
    /// # impl Providers for CacheProviders {
    /// #     type Worker = Cache;
    /// #     fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> { Vec::new() }
    /// #     async fn build<'a>(&'a self, _: &mut WorkerBuilder<'a>) -> Result<Cache, DependencyError> { Ok(Cache) }
    /// # }
    /// # impl Dependencies for Cache { type Providers = CacheProviders; fn providers() -> CacheProviders { CacheProviders } }
    /// impl Service for Cache {
    ///     const NAME: &'static str = "cache";
    ///     fn entrypoints(_: &mut Entrypoints<Self>) {}
    ///     fn lifecycle(hooks: &mut Lifecycle<Self>) {
    ///         hooks.on_start("warm_up", |_: Cache| async move { Ok::<_, RemoteError>(()) });
    ///     }
    /// }
    /// ```
    fn lifecycle(hooks: &mut Lifecycle<Self>) {
        let _ = hooks;
    }
}

type HookFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// One `on_start` or `on_stop` hook: a method run on a worker of its own.
pub(crate) struct Hook<S> {
    pub(crate) name: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) run: Arc<dyn Fn(S) -> HookFuture + Send + Sync>,
}

/// A service's start and stop hooks, declared by [`Service::lifecycle`].
///
/// Each hook runs on a worker of its own, built like any worker: its dependencies are
/// provided (`get_dependency`, `worker_setup`), and after it `worker_result` and
/// `worker_teardown` run, so a transactional provider commits what an `on_start` hook
/// wrote. Its [`WorkerContext`](crate::WorkerContext) names the hook as the entrypoint,
/// with kind `on_start` or `on_stop`, and it takes no worker slot.
///
/// - `on_start` hooks run in declaration order once every dependency provider and
///   entrypoint is set up, before any entrypoint starts: the service takes no work
///   until they finish. A hook that fails or panics fails the container's start
///   ([`ContainerError::Hook`](crate::ContainerError::Hook)); what was set up is killed.
/// - `on_stop` hooks run in declaration order during a graceful stop, after the
///   entrypoints stopped and the running workers finished, before the dependency
///   providers stop. A failure is logged and the stop goes on. A kill (a second
///   signal, the stop timeout) does not run them, and cuts one short.
pub struct Lifecycle<S> {
    pub(crate) on_start: Vec<Hook<S>>,
    pub(crate) on_stop: Vec<Hook<S>>,
}

impl<S: Service> Lifecycle<S> {
    pub(crate) fn new() -> Self {
        Self {
            on_start: Vec::new(),
            on_stop: Vec::new(),
        }
    }

    /// Runs `hook` on a fresh worker when the container starts, before its entrypoints
    /// take work.
    pub fn on_start<H, Fut, Err>(&mut self, name: &'static str, hook: H) -> &mut Self
    where
        H: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Err>> + Send + 'static,
        Err: IntoHandlerError + 'static,
    {
        self.on_start.push(hook_of(name, "on_start", hook));
        self
    }

    /// Runs `hook` on a fresh worker during a graceful stop, once the workers finished
    /// and before the dependency providers stop.
    pub fn on_stop<H, Fut, Err>(&mut self, name: &'static str, hook: H) -> &mut Self
    where
        H: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Err>> + Send + 'static,
        Err: IntoHandlerError + 'static,
    {
        self.on_stop.push(hook_of(name, "on_stop", hook));
        self
    }

    /// The hooks declared so far: `(kind, method)` in order, `on_start` ones first.
    pub fn infos(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.on_start
            .iter()
            .chain(&self.on_stop)
            .map(|hook| (hook.kind, hook.name))
    }
}

fn hook_of<S, H, Fut, Err>(name: &'static str, kind: &'static str, hook: H) -> Hook<S>
where
    H: Fn(S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Err>> + Send + 'static,
    Err: IntoHandlerError + 'static,
{
    Hook {
        name,
        kind,
        run: Arc::new(move |worker| {
            let future = hook(worker);
            Box::pin(async move { future.await.map_err(IntoHandlerError::into_handler_error) })
        }),
    }
}

impl<S: Service> fmt::Debug for Lifecycle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.infos()).finish()
    }
}

/// A service's entrypoints, each bound to a handler that runs the method on a fresh
/// worker.
pub struct Entrypoints<S> {
    pub(crate) decls: Vec<Box<dyn Declared<S>>>,
}

impl<S: Service> Entrypoints<S> {
    pub(crate) fn new() -> Self {
        Self { decls: Vec::new() }
    }

    /// Binds `entrypoint` to `method`: each time it fires, `handler` runs with a fresh
    /// worker and the entrypoint's request.
    pub fn add<E, H, Fut, Err>(&mut self, method: &'static str, entrypoint: E, handler: H) -> &mut Self
    where
        E: Entrypoint,
        H: Fn(S, E::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<E::Response, Err>> + Send + 'static,
        Err: IntoHandlerError + 'static,
    {
        self.decls.push(Box::new(Decl {
            method,
            entrypoint,
            handler,
            _marker: std::marker::PhantomData,
        }));
        self
    }

    /// The methods and kinds declared so far.
    pub fn infos(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.decls.iter().map(|d| (d.method(), d.kind()))
    }
}

impl<S: Service> fmt::Debug for Entrypoints<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.decls.iter().map(|d| (d.method(), d.kind())))
            .finish()
    }
}

/// One declared entrypoint, before it is bound to a running container.
pub(crate) trait Declared<S: Service>: Send {
    fn method(&self) -> &'static str;
    fn kind(&self) -> &'static str;
    fn bind(self: Box<Self>, core: &Arc<Core<S>>) -> BoundEntrypoint;
}

struct Decl<E, H, Fut, Err> {
    method: &'static str,
    entrypoint: E,
    handler: H,
    _marker: std::marker::PhantomData<fn() -> (Fut, Err)>,
}

impl<S, E, H, Fut, Err> Declared<S> for Decl<E, H, Fut, Err>
where
    S: Service,
    E: Entrypoint,
    H: Fn(S, E::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<E::Response, Err>> + Send + 'static,
    Err: IntoHandlerError + 'static,
{
    fn method(&self) -> &'static str {
        self.method
    }

    fn kind(&self) -> &'static str {
        E::KIND
    }

    fn bind(self: Box<Self>, core: &Arc<Core<S>>) -> BoundEntrypoint {
        let Decl {
            method,
            mut entrypoint,
            handler,
            ..
        } = *self;
        let mut info = EntrypointInfo::new(method, E::KIND);
        if let Some(limit) = entrypoint.max_workers() {
            info = info.with_max_workers(limit);
        }
        info = info.with_sensitive_arguments(entrypoint.sensitive_arguments());
        let spawner = MethodSpawner::new(Arc::clone(core), info.clone(), handler);
        let binding: Binding<E::Request, E::Response> = Binding {
            info: info.clone(),
            service: S::NAME,
            spawner: Arc::new(spawner),
        };
        entrypoint.bind(binding.clone());
        BoundEntrypoint {
            info,
            extension: Box::new(Erased(entrypoint)),
            binding: Box::new(binding),
        }
    }
}
