//! The [`Service`] trait and the list of its entrypoints.

use std::{fmt, future::Future, sync::Arc};

use crate::{
    container::worker::{Core, MethodSpawner},
    context::EntrypointInfo,
    dependency::Dependencies,
    describe::EntrypointDoc,
    entrypoint::{Binding, Entrypoint},
    error::IntoHandlerError,
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
