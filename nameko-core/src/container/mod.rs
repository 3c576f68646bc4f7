//! [`ServiceContainer`]: one running service — its providers, its entrypoints and its
//! workers.

pub(crate) mod worker;

use std::{
    any::type_name,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;

use self::worker::Core;
use crate::{
    config::Config,
    context::{ContextData, EntrypointInfo},
    dependency::{ProviderHandle, Providers},
    describe::ServiceDescription,
    entrypoint::Binding,
    error::{SetupError, WorkerError},
    extension::BoundEntrypoint,
    service::{Entrypoints, Hook, Lifecycle, Service},
    setup::{Resources, SetupContext, Shared},
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A container could not start, or a runner was given services it cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// A dependency provider or entrypoint failed to set up.
    #[error("service `{service}`: {part} failed to set up: {source}")]
    Setup {
        /// The service.
        service: &'static str,
        /// What failed, e.g. "field `users` (`nameko_core::deps::Dep<dyn UserRepo>`)".
        part: String,
        /// Why.
        #[source]
        source: SetupError,
    },
    /// An entrypoint failed to start.
    #[error("service `{service}`: {part} failed to start: {source}")]
    Start {
        /// The service.
        service: &'static str,
        /// The entrypoint.
        part: String,
        /// Why.
        #[source]
        source: SetupError,
    },
    /// An `on_start` hook failed or panicked.
    #[error("service `{service}`: {kind} hook `{hook}` failed: {source}")]
    Hook {
        /// The service.
        service: &'static str,
        /// `on_start`.
        kind: &'static str,
        /// The hook's method.
        hook: &'static str,
        /// How it failed.
        #[source]
        source: Box<WorkerError>,
    },
    /// `only_entrypoints` named a method the service does not have.
    #[error("service `{service}` has no entrypoint `{method}`; it has: {}", known.join(", "))]
    UnknownEntrypoint {
        /// The service.
        service: &'static str,
        /// The method asked for.
        method: String,
        /// The methods it has.
        known: Vec<&'static str>,
    },
    /// The metrics endpoint (`METRICS_ADDRESS`) is misconfigured or could not bind.
    #[error("{0}")]
    Metrics(String),
    /// Two services with one name were given to a runner.
    #[error("two services are named `{name}`{}", locations.as_ref().map(|(a, b)| format!(": one at {a}, one at {b}")).unwrap_or_default())]
    DuplicateService {
        /// The name.
        name: &'static str,
        /// Where each was declared, when known.
        locations: Option<(String, String)>,
    },
    /// A runner was asked for a number of instances of a service it cannot run.
    #[error("cannot run instances of service `{name}`: {reason}")]
    InvalidInstances {
        /// The service.
        name: String,
        /// Why.
        reason: String,
    },
    /// A service name asked for is not registered.
    #[error(
        "no service named `{name}`; known services: {}. A library crate that holds services must be linked \
         into the binary: add `use that_crate as _;` to main.rs",
        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
    )]
    UnknownService {
        /// The name asked for.
        name: String,
        /// The registered names.
        known: Vec<&'static str>,
    },
}

/// A worker could not be run through [`ServiceContainer::call`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No entrypoint on that method.
    #[error("service `{service}` has no entrypoint `{method}`; it has: {}", known.join(", "))]
    UnknownEntrypoint {
        /// The service.
        service: &'static str,
        /// The method asked for.
        method: String,
        /// The methods it has.
        known: Vec<&'static str>,
    },
    /// The method's entrypoints take other request or response types.
    #[error("service `{service}`: no entrypoint of `{method}` takes `{request}` and returns `{response}`")]
    WrongTypes {
        /// The service.
        service: &'static str,
        /// The method.
        method: String,
        /// The request type given.
        request: &'static str,
        /// The response type asked for.
        response: &'static str,
    },
    /// The worker did not produce a result.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

// ===== builder =====

/// Configures and starts a [`ServiceContainer`] for service `S`.
///
/// # Examples
///
/// ```
/// # use nameko_core::{entrypoints::Dummy, *};
/// # pub struct Echo;
/// # pub struct EchoProviders;
/// # impl Providers for EchoProviders {
/// #     type Worker = Echo;
/// #     fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> { Vec::new() }
/// #     async fn build<'a>(&'a self, _: &mut WorkerBuilder<'a>) -> Result<Echo, DependencyError> { Ok(Echo) }
/// # }
/// # impl Dependencies for Echo { type Providers = EchoProviders; fn providers() -> EchoProviders { EchoProviders } }
/// # impl Service for Echo {
/// #     const NAME: &'static str = "echo";
/// #     fn entrypoints(e: &mut Entrypoints<Self>) {
/// #         e.add("echo", Dummy::<String, String>::new(), |_: Echo, s: String| async move { Ok::<_, RemoteError>(s) });
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let container = ServiceContainer::builder::<Echo>()
///     .config(Config::from_yaml_str("max_workers: 2")?)
///     .start()
///     .await?;
/// let reply: String = container.call("echo", "hi".to_owned()).await?;
/// assert_eq!(reply, "hi");
/// container.stop().await;
/// # Ok(()) }
/// ```
#[must_use]
pub struct ServiceContainerBuilder<S: Service> {
    config: Option<Config>,
    resources: Resources,
    shared: Option<Shared>,
    providers: S::Providers,
    only: Option<Vec<String>>,
    instance: Option<Arc<str>>,
}

impl<S: Service> ServiceContainerBuilder<S> {
    fn new() -> Self {
        Self {
            config: None,
            resources: Resources::new(),
            shared: None,
            providers: S::providers(),
            only: None,
            instance: None,
        }
    }

    /// The config (default: [`Config::default`], or the runner's).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Adds a resource for [`Dep<T>`](crate::deps::Dep) fields.
    pub fn resource<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.resources.insert(value);
        self
    }

    /// Adds resources.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources.extend(resources);
        self
    }

    /// Shares runner-wide state with other containers.
    pub fn shared(mut self, shared: Shared) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Names this container as one instance of several of its service in one runner
    /// (`"2/3"`): its workers' log spans carry `instance=2/3`. See
    /// [`ServiceRunner::instances`](crate::ServiceRunner::instances).
    pub fn instance(mut self, label: impl Into<String>) -> Self {
        self.instance = Some(Arc::from(label.into()));
        self
    }

    /// Changes provider slots before start: Nameko's `replace_dependencies`.
    pub fn providers(mut self, replace: impl FnOnce(&mut S::Providers)) -> Self {
        replace(&mut self.providers);
        self
    }

    /// Starts only the entrypoints of these methods: Nameko's `restrict_entrypoints`.
    pub fn only_entrypoints<I: IntoIterator<Item = M>, M: Into<String>>(mut self, methods: I) -> Self {
        self.only = Some(methods.into_iter().map(Into::into).collect());
        self
    }

    /// Sets up every provider and entrypoint, then starts the entrypoints.
    ///
    /// # Errors
    ///
    /// [`ContainerError`] naming the service and the part that failed; whatever had
    /// started is killed first.
    pub async fn start(self) -> Result<ServiceContainer, ContainerError> {
        self.start_inner().await.map(|(container, _)| container)
    }

    async fn start_inner(self) -> Result<(ServiceContainer, Vec<String>), ContainerError> {
        let Self {
            config,
            resources,
            shared,
            mut providers,
            only,
            instance,
        } = self;
        let config = config.unwrap_or_default();
        let shared = shared.unwrap_or_default();
        let mut claimed = Vec::new();
        let mut handles = Vec::new();
        for (field, slot) in providers.slots() {
            let field_type = slot.field_type();
            let args = slot.slot_args().to_vec();
            let mut cx = SetupContext {
                service: S::NAME,
                field: Some((field, field_type)),
                entrypoint: None,
                args: &args,
                config: &config,
                resources: &resources,
                shared: &shared,
                claimed_keys: &mut claimed,
                describe: ServiceDescription::of::<S>,
            };
            if let Err(source) = slot.setup_slot(field, &mut cx).await {
                handles.iter().for_each(ProviderHandle::kill);
                let part = format!("field `{field}` ({field_type})");
                return Err(ContainerError::Setup {
                    service: S::NAME,
                    part,
                    source,
                });
            }
            handles.push(slot.handle());
        }

        let mut declared = Entrypoints::<S>::new();
        S::entrypoints(&mut declared);
        if let Some(only) = &only {
            let known: Vec<&'static str> = declared.decls.iter().map(|d| d.method()).collect();
            if let Some(missing) = only.iter().find(|m| !known.contains(&m.as_str())) {
                handles.iter().for_each(ProviderHandle::kill);
                return Err(ContainerError::UnknownEntrypoint {
                    service: S::NAME,
                    method: missing.clone(),
                    known,
                });
            }
            declared.decls.retain(|d| only.iter().any(|m| m == d.method()));
        }

        let metrics = resources.get::<crate::metrics::Metrics>();
        let core = Arc::new(Core::<S>::new(config.clone(), providers, instance.clone(), metrics));
        let mut entrypoints: Vec<BoundEntrypoint> = declared.decls.into_iter().map(|d| d.bind(&core)).collect();
        if let Some((index, err)) = entrypoints.iter().enumerate().find_map(|(index, ep)| {
            let limit = ep.info.max_workers()?;
            worker::check_max_workers(limit).err().map(|err| (index, err))
        }) {
            handles.iter().for_each(ProviderHandle::kill);
            return Err(ContainerError::Setup {
                service: S::NAME,
                part: describe(&entrypoints[index].info),
                source: SetupError::new(err),
            });
        }
        for index in 0..entrypoints.len() {
            let ep = &mut entrypoints[index];
            let mut cx = SetupContext {
                service: S::NAME,
                field: None,
                entrypoint: Some(&ep.info),
                args: &[],
                config: &config,
                resources: &resources,
                shared: &shared,
                claimed_keys: &mut claimed,
                describe: ServiceDescription::of::<S>,
            };
            if let Err(source) = ep.extension.setup(&mut cx).await {
                let part = describe(&ep.info);
                entrypoints[..index].iter().for_each(|ep| ep.extension.kill());
                handles.iter().for_each(ProviderHandle::kill);
                return Err(ContainerError::Setup {
                    service: S::NAME,
                    part,
                    source,
                });
            }
        }

        let mut lifecycle = Lifecycle::<S>::new();
        S::lifecycle(&mut lifecycle);
        for hook in &lifecycle.on_start {
            if let Err(source) = worker::run_hook(&core, hook).await {
                entrypoints.iter().for_each(|ep| ep.extension.kill());
                handles.iter().for_each(ProviderHandle::kill);
                return Err(ContainerError::Hook {
                    service: S::NAME,
                    kind: hook.kind,
                    hook: hook.name,
                    source: Box::new(source),
                });
            }
        }

        let container = Container {
            core,
            entrypoints,
            providers: handles,
            on_stop: lifecycle.on_stop,
            state: AtomicU8::new(RUNNING),
        };
        let container = ServiceContainer {
            inner: Arc::new(container),
        };
        for ep in container.inner.entrypoints() {
            if let Err(source) = ep.extension.start().await {
                container.kill();
                return Err(ContainerError::Start {
                    service: S::NAME,
                    part: describe(&ep.info),
                    source,
                });
            }
        }
        tracing::info!(
            service = S::NAME,
            instance = instance.as_deref(),
            entrypoints = container.inner.entrypoints().len(),
            "service started"
        );
        Ok((container, claimed))
    }
}

fn describe(info: &EntrypointInfo) -> String {
    format!("entrypoint `{}` ({})", info.method(), info.kind())
}

impl<S: Service> fmt::Debug for ServiceContainerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceContainerBuilder")
            .field("service", &S::NAME)
            .field("resources", &self.resources)
            .field("only", &self.only)
            .finish_non_exhaustive()
    }
}

/// A builder with its service type erased, as the runner keeps it.
pub(crate) trait Startable: Send {
    fn start(
        self: Box<Self>,
        config: Config,
        resources: Resources,
        shared: Shared,
    ) -> BoxFuture<'static, Result<(ServiceContainer, Vec<String>), ContainerError>>;

    /// Names the container as one instance of several.
    fn set_instance(&mut self, label: String);
}

impl<S: Service> Startable for ServiceContainerBuilder<S> {
    fn start(
        mut self: Box<Self>,
        config: Config,
        resources: Resources,
        shared: Shared,
    ) -> BoxFuture<'static, Result<(ServiceContainer, Vec<String>), ContainerError>> {
        if self.config.is_none() {
            self.config = Some(config);
        }
        let mut merged = resources;
        merged.extend(std::mem::take(&mut self.resources));
        self.resources = merged;
        self.shared = Some(shared);
        Box::pin(self.start_inner())
    }

    fn set_instance(&mut self, label: String) {
        self.instance = Some(Arc::from(label));
    }
}

// ===== ServiceContainer =====

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const STOPPED: u8 = 2;
const KILLED: u8 = 3;

/// One running service: its providers, its entrypoints, and the workers they start.
///
/// Workers run in tasks the container owns, at most `max_workers` (config, default
/// 10) at once; each entrypoint may set a lower limit of its own. Cheap to clone.
#[derive(Clone)]
pub struct ServiceContainer {
    inner: Arc<dyn ErasedContainer>,
}

struct Container<S: Service> {
    core: Arc<Core<S>>,
    entrypoints: Vec<BoundEntrypoint>,
    providers: Vec<ProviderHandle>,
    on_stop: Vec<Hook<S>>,
    state: AtomicU8,
}

trait ErasedContainer: Send + Sync {
    fn name(&self) -> &'static str;
    fn instance(&self) -> Option<&str>;
    fn config(&self) -> &Config;
    fn entrypoints(&self) -> &[BoundEntrypoint];
    fn stop(&self) -> BoxFuture<'_, ()>;
    fn kill(&self);
    fn state(&self) -> u8;
    fn running_workers(&self) -> usize;
    fn worker_reports(&self) -> tokio::sync::broadcast::Receiver<worker::WorkerReport>;
}

impl<S: Service> ErasedContainer for Container<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn instance(&self) -> Option<&str> {
        self.core.instance.as_deref()
    }

    fn config(&self) -> &Config {
        &self.core.config
    }

    fn entrypoints(&self) -> &[BoundEntrypoint] {
        &self.entrypoints
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self
                .state
                .compare_exchange(RUNNING, STOPPING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Already stopping, stopped or killed: wait for running workers anyway.
                self.core.tracker.close();
                self.core.tracker.wait().await;
                return;
            }
            tracing::info!(service = S::NAME, "stopping service");
            join_all(self.entrypoints.iter().map(|ep| ep.extension.stop())).await;
            self.core.stopping.cancel();
            self.core.tracker.close();
            self.core.tracker.wait().await;
            for hook in &self.on_stop {
                if let Err(err) = worker::run_hook(&self.core, hook).await {
                    tracing::error!(
                        service = S::NAME,
                        hook = hook.name,
                        "on_stop hook `{}` failed: {err}",
                        hook.name
                    );
                }
            }
            join_all(self.providers.iter().map(ProviderHandle::stop)).await;
            let _ = self
                .state
                .compare_exchange(STOPPING, STOPPED, Ordering::AcqRel, Ordering::Acquire);
            tracing::info!(service = S::NAME, "service stopped");
        })
    }

    fn kill(&self) {
        if self.state.swap(KILLED, Ordering::AcqRel) == KILLED {
            return;
        }
        tracing::warn!(service = S::NAME, "killing service");
        for ep in &self.entrypoints {
            ep.extension.kill();
        }
        self.core.stopping.cancel();
        self.core.killed.cancel();
        for provider in &self.providers {
            provider.kill();
        }
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn running_workers(&self) -> usize {
        self.core.tracker.len()
    }

    fn worker_reports(&self) -> tokio::sync::broadcast::Receiver<worker::WorkerReport> {
        self.core.reports.subscribe()
    }
}

impl ServiceContainer {
    /// A builder for a container of service `S`.
    pub fn builder<S: Service>() -> ServiceContainerBuilder<S> {
        ServiceContainerBuilder::new()
    }

    /// The service's name.
    pub fn service_name(&self) -> &'static str {
        self.inner.name()
    }

    /// Which instance of its service this container is (`"2/3"`), when a runner runs
    /// several ([`ServiceRunner::instances`](crate::ServiceRunner::instances)).
    pub fn instance(&self) -> Option<&str> {
        self.inner.instance()
    }

    /// The container's config.
    pub fn config(&self) -> &Config {
        self.inner.config()
    }

    /// The entrypoints that were started.
    pub fn entrypoints(&self) -> impl Iterator<Item = &EntrypointInfo> {
        self.inner.entrypoints().iter().map(|ep| &ep.info)
    }

    /// How many workers are running (or about to).
    pub fn running_workers(&self) -> usize {
        self.inner.running_workers()
    }

    /// Reports of every worker that finishes from now on (Nameko's
    /// `entrypoint_waiter` is built on it). A slow subscriber misses reports past a
    /// backlog of 1024.
    pub fn worker_reports(&self) -> tokio::sync::broadcast::Receiver<worker::WorkerReport> {
        self.inner.worker_reports()
    }

    /// Whether the container was killed.
    pub fn is_killed(&self) -> bool {
        self.inner.state() == KILLED
    }

    /// Runs one worker of `method` as if its entrypoint had fired with `request`, and
    /// waits for its result. Nameko's `entrypoint_hook`.
    ///
    /// # Errors
    ///
    /// [`CallError`] when the method has no entrypoint taking `Req` and returning
    /// `Resp`, or when the worker fails.
    pub async fn call<Req: Send + 'static, Resp: Send + 'static>(
        &self,
        method: &str,
        request: Req,
    ) -> Result<Resp, CallError> {
        self.call_with(method, request, ContextData::new()).await
    }

    /// Like [`call`](Self::call), with incoming context data.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub async fn call_with<Req: Send + 'static, Resp: Send + 'static>(
        &self,
        method: &str,
        request: Req,
        data: ContextData,
    ) -> Result<Resp, CallError> {
        Ok(self.binding::<Req, Resp>(method)?.call(request, data).await?)
    }

    /// The binding of `method`'s entrypoint that takes `Req` and returns `Resp`.
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub fn binding<Req: Send + 'static, Resp: Send + 'static>(
        &self,
        method: &str,
    ) -> Result<Binding<Req, Resp>, CallError> {
        let service = self.service_name();
        let mut matching = self
            .inner
            .entrypoints()
            .iter()
            .filter(|ep| ep.info.method() == method)
            .peekable();
        if matching.peek().is_none() {
            return Err(CallError::UnknownEntrypoint {
                service,
                method: method.to_owned(),
                known: self.entrypoints().map(EntrypointInfo::method).collect(),
            });
        }
        matching
            .find_map(|ep| ep.binding.downcast_ref::<Binding<Req, Resp>>().cloned())
            .ok_or_else(|| CallError::WrongTypes {
                service,
                method: method.to_owned(),
                request: type_name::<Req>(),
                response: type_name::<Resp>(),
            })
    }

    /// Stops gracefully: entrypoints stop taking work, running workers finish, then
    /// providers stop. Waits as long as workers run; see
    /// [`stop_within`](Self::stop_within) for a deadline.
    pub async fn stop(&self) {
        self.inner.stop().await;
    }

    /// Stops gracefully, killing the container if that takes longer than `timeout`.
    /// Returns `true` if the stop was graceful.
    pub async fn stop_within(&self, timeout: Duration) -> bool {
        if tokio::time::timeout(timeout, self.stop()).await.is_ok() {
            return true;
        }
        tracing::warn!(
            service = self.service_name(),
            ?timeout,
            "graceful stop timed out; killing"
        );
        self.kill();
        false
    }

    /// Kills now: running workers are cancelled without their remaining hooks,
    /// entrypoints and providers are killed. Unacknowledged messages return to the
    /// broker.
    pub fn kill(&self) {
        self.inner.kill();
    }
}

impl fmt::Debug for ServiceContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceContainer")
            .field("service", &self.service_name())
            .field("entrypoints", &self.entrypoints().collect::<Vec<_>>())
            .field("running_workers", &self.running_workers())
            .finish()
    }
}
