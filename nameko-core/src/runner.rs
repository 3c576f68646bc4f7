//! [`ServiceRunner`]: several services in one process.

use std::{collections::HashMap, fmt, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::future::join_all;

use crate::{
    config::Config,
    container::{ContainerError, ServiceContainer, ServiceContainerBuilder, Startable},
    metrics::{self, Metrics},
    readiness::{Readiness, ReadinessPart},
    service::Service,
    setup::{Resources, Shared},
};

/// The default deadline of a graceful stop before the runner kills.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs several services in one process, sharing config, resources and runner-wide
/// state.
///
/// # Examples
///
/// ```no_run
/// # use std::sync::Arc;
/// # use nameko_core::{Config, ServiceRunner};
/// # trait UserRepo: Send + Sync {}
/// # struct Pg; impl UserRepo for Pg {}
/// # async fn run<Greeting: nameko_core::Service>() -> Result<(), Box<dyn std::error::Error>> {
/// let runner = ServiceRunner::new(Config::loader().file("config.yaml").load()?)
///     .resource::<dyn UserRepo>(Arc::new(Pg))
///     .with_service::<Greeting>();
/// // Stops gracefully when the future completes, killing after the stop timeout.
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// # drop(stop);
/// runner.run_until(async { let _ = stopped.await; }).await?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct ServiceRunner {
    config: Config,
    resources: Resources,
    services: Vec<Pending>,
    stop_timeout: Duration,
    readiness: Readiness,
    started: ReadinessPart,
}

struct Pending {
    name: &'static str,
    location: Option<String>,
    builder: Box<dyn Startable>,
    /// `(n, of)` when this is instance `n` of `of` of its service.
    instance: Option<(usize, usize)>,
    /// Builds another container of the same service (registered services only).
    #[cfg(feature = "registry")]
    registration: Option<&'static crate::registry::ServiceRegistration>,
}

impl ServiceRunner {
    /// A runner with `config`.
    pub fn new(config: Config) -> Self {
        let readiness = Readiness::new();
        let started = readiness.part("services", "not started");
        Self {
            config,
            resources: Resources::new(),
            services: Vec::new(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            readiness,
            started,
        }
    }

    /// The runner's readiness: not ready until every service started, and not ready
    /// while any part reported into it is (a transport's connection, each consumer),
    /// or once stopping. Services find it as a resource, `cx.resource::<Readiness>()`.
    /// Available before [`start`](Self::start), so a transport can report while it
    /// connects.
    ///
    /// ```
    /// # use nameko_core::{Config, ServiceRunner};
    /// let runner = ServiceRunner::new(Config::default());
    /// let readiness = runner.readiness();
    /// assert_eq!(readiness.report().to_string(), "not ready: services (not started)");
    /// ```
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Registers a resource for [`Dep<T>`](crate::deps::Dep) fields, by type.
    pub fn resource<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.resources.insert(value);
        self
    }

    /// Registers resources.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources.extend(resources);
        self
    }

    /// Adds service `S`.
    pub fn with_service<S: Service>(self) -> Self {
        self.with_container(ServiceContainer::builder::<S>())
    }

    /// Adds a service with its container configured (replaced providers, restricted
    /// entrypoints, its own config or resources).
    pub fn with_container<S: Service>(mut self, builder: ServiceContainerBuilder<S>) -> Self {
        self.services.push(Pending {
            name: S::NAME,
            location: None,
            builder: Box::new(builder),
            instance: None,
            #[cfg(feature = "registry")]
            registration: None,
        });
        self
    }

    /// Adds the services registered with `inventory` whose names are given, or every
    /// registered service when `names` is empty.
    ///
    /// # Errors
    ///
    /// [`ContainerError::UnknownService`] listing the known names, or
    /// [`ContainerError::DuplicateService`] naming where both were declared.
    #[cfg(feature = "registry")]
    pub fn with_registered<I, N>(mut self, names: I) -> Result<Self, ContainerError>
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        let registered = crate::registry::registered_services()?;
        let names: Vec<N> = names.into_iter().collect();
        let picked: Vec<_> = if names.is_empty() {
            registered
        } else {
            names
                .iter()
                .map(|name| {
                    registered
                        .iter()
                        .copied()
                        .find(|r| r.name() == name.as_ref())
                        .ok_or_else(|| ContainerError::UnknownService {
                            name: name.as_ref().to_owned(),
                            known: registered.iter().map(|r| r.name()).collect(),
                        })
                })
                .collect::<Result<_, _>>()?
        };
        for registration in picked {
            self.services.push(Pending {
                name: registration.name(),
                location: Some(registration.location()),
                builder: registration.builder(),
                instance: None,
                registration: Some(registration),
            });
        }
        Ok(self)
    }

    /// Runs `count` instances of the registered service `name` (added before with
    /// [`with_registered`](Self::with_registered)) in this process, as `count`
    /// processes would: each instance is a container of its own with its own consumers
    /// (the broker sees `count` consumers on `rpc-<name>` and on each event handler
    /// queue) and its own runner-wide state, except that instance 1 shares the runner's
    /// with the other services (so `count = 1` changes nothing). Their workers' log
    /// spans carry `instance=n/count`. Services with HTTP or WebSocket entrypoints
    /// cannot run several instances in one process: the second instance cannot bind
    /// the port.
    ///
    /// # Errors
    ///
    /// [`ContainerError::UnknownService`] when no registered service `name` was added,
    /// [`ContainerError::InvalidInstances`] when `count` is 0 or `name` was given
    /// instances already.
    #[cfg(feature = "registry")]
    pub fn instances(mut self, name: &str, count: usize) -> Result<Self, ContainerError> {
        let Some(index) = self
            .services
            .iter()
            .position(|p| p.name == name && p.registration.is_some())
        else {
            return Err(ContainerError::UnknownService {
                name: name.to_owned(),
                known: self.services.iter().map(|p| p.name).collect(),
            });
        };
        if count == 0 || self.services[index].instance.is_some() {
            return Err(ContainerError::InvalidInstances {
                name: name.to_owned(),
                reason: if count == 0 {
                    "the count must be at least 1".to_owned()
                } else {
                    "its instances were given twice".to_owned()
                },
            });
        }
        if count == 1 {
            return Ok(self);
        }
        let registration = self.services[index].registration.expect("found by registration");
        self.services[index].instance = Some((1, count));
        let more = (2..=count).map(|n| Pending {
            name: registration.name(),
            location: Some(registration.location()),
            builder: registration.builder(),
            instance: Some((n, count)),
            registration: Some(registration),
        });
        let after: Vec<Pending> = self.services.split_off(index + 1);
        self.services.extend(more);
        self.services.extend(after);
        Ok(self)
    }

    /// How long a graceful stop may take before the runner kills (default 30 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The names of the services added so far.
    pub fn service_names(&self) -> Vec<&'static str> {
        self.services.iter().map(|p| p.name).collect()
    }

    /// Starts every service, one after another.
    ///
    /// # Errors
    ///
    /// The first [`ContainerError`]; the services already started are killed.
    pub async fn start(self) -> Result<RunningServices, ContainerError> {
        let mut seen: HashMap<&'static str, Option<String>> = HashMap::new();
        for pending in &self.services {
            if pending.instance.is_some_and(|(n, _)| n > 1) {
                continue;
            }
            if let Some(first) = seen.insert(pending.name, pending.location.clone()) {
                let locations = first.zip(pending.location.clone());
                return Err(ContainerError::DuplicateService {
                    name: pending.name,
                    locations,
                });
            }
        }
        let shared = Shared::default();
        let mut resources = self.resources.clone();
        resources.insert(Arc::new(self.readiness.clone()));
        let metrics_endpoint = MetricsEndpoint::bind(&self.config, &mut resources, &self.readiness).await?;
        self.started.not_ready("starting");
        let mut containers = Vec::with_capacity(self.services.len());
        let mut claimed = Vec::new();
        for mut pending in self.services {
            // Instances after the first get their own runner-wide state: their own
            // consumers, reply queues and timers, as separate processes would have.
            let shared = match pending.instance {
                Some((n, of)) => {
                    pending.builder.set_instance(format!("{n}/{of}"));
                    if n > 1 { Shared::default() } else { shared.clone() }
                }
                None => shared.clone(),
            };
            match pending
                .builder
                .start(self.config.clone(), resources.clone(), shared)
                .await
            {
                Ok((container, keys)) => {
                    containers.push(container);
                    claimed.extend(keys);
                }
                Err(err) => {
                    for container in &containers {
                        container.kill();
                    }
                    self.started.not_ready(format!("failed to start: {err}"));
                    return Err(err);
                }
            }
        }
        let claimed: Vec<&str> = claimed.iter().map(String::as_str).collect();
        for (key, location) in self.config.unknown_keys(&claimed) {
            tracing::warn!("{location}: unknown config key `{key}`: neither a Nameko setting nor read by a service");
        }
        self.started.ready();
        Ok(RunningServices {
            containers,
            stop_timeout: self.stop_timeout,
            readiness: self.readiness,
            started: self.started,
            metrics_endpoint,
        })
    }

    /// Starts every service, runs until `shutdown` completes, then stops gracefully,
    /// killing past the stop timeout. Works inside the caller's own tokio runtime.
    ///
    /// # Errors
    ///
    /// When a service cannot start.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<Shutdown, ContainerError> {
        let running = self.start().await?;
        shutdown.await;
        Ok(running.shutdown(std::future::pending()).await)
    }
}

impl fmt::Debug for ServiceRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRunner")
            .field("services", &self.service_names())
            .field("resources", &self.resources)
            .field("stop_timeout", &self.stop_timeout)
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// How a runner's stop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shutdown {
    /// Every worker finished and every service stopped.
    Graceful,
    /// The stop timed out, or a kill was asked for; running workers were cancelled.
    Killed,
}

/// Services started by a [`ServiceRunner`].
#[derive(Debug)]
pub struct RunningServices {
    containers: Vec<ServiceContainer>,
    stop_timeout: Duration,
    readiness: Readiness,
    started: ReadinessPart,
    metrics_endpoint: Option<MetricsEndpoint>,
}

/// The metrics endpoint a runner serves on `METRICS_ADDRESS` (see [`metrics`]).
#[derive(Debug)]
struct MetricsEndpoint {
    address: SocketAddr,
    /// Cancelled (also when dropped) to stop serving.
    _stop: tokio_util::sync::DropGuard,
}

impl MetricsEndpoint {
    /// Binds `METRICS_ADDRESS` and serves it, when it is set; the runner's [`Metrics`]
    /// (the resource given, or a new one) goes into `resources` for the containers.
    async fn bind(
        config: &Config,
        resources: &mut Resources,
        readiness: &Readiness,
    ) -> Result<Option<Self>, ContainerError> {
        let Some(address) = config
            .address(metrics::METRICS_ADDRESS_KEY)
            .map_err(ContainerError::Metrics)?
        else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(&address).await.map_err(|err| {
            ContainerError::Metrics(format!(
                "the metrics endpoint could not bind `{address}` (config `{}`): {err}",
                metrics::METRICS_ADDRESS_KEY
            ))
        })?;
        let local = listener.local_addr().map_err(|err| {
            ContainerError::Metrics(format!(
                "the metrics endpoint bound `{address}` but has no address: {err}"
            ))
        })?;
        let registry = resources.get::<Metrics>().unwrap_or_default();
        resources.insert(Arc::clone(&registry));
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(metrics::serve(
            listener,
            Metrics::clone(&registry),
            readiness.clone(),
            stop.clone(),
        ));
        tracing::info!(address = %local, "metrics, health and readiness on http://{local}/metrics, /health, /ready");
        Ok(Some(Self {
            address: local,
            _stop: stop.drop_guard(),
        }))
    }
}

impl RunningServices {
    /// The running containers, in the order they started.
    pub fn containers(&self) -> &[ServiceContainer] {
        &self.containers
    }

    /// The container of the service named `name`.
    pub fn container(&self, name: &str) -> Option<&ServiceContainer> {
        self.containers.iter().find(|c| c.service_name() == name)
    }

    /// The runner's readiness (see [`ServiceRunner::readiness`]).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Where the metrics endpoint listens, when `METRICS_ADDRESS` is set (with port 0,
    /// as in tests, this is how to learn the port). It serves until the runner is
    /// dropped, so a stop can still be watched there.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().map(|endpoint| endpoint.address)
    }

    /// Stops every service gracefully, waiting as long as workers run.
    pub async fn stop(&self) {
        self.started.not_ready("stopping");
        join_all(self.containers.iter().map(ServiceContainer::stop)).await;
    }

    /// Kills every service now.
    pub fn kill(&self) {
        self.started.not_ready("killed");
        for container in &self.containers {
            container.kill();
        }
    }

    /// How many workers run across every service (or are about to start).
    pub fn running_workers(&self) -> usize {
        self.containers.iter().map(ServiceContainer::running_workers).sum()
    }

    /// Stops every service gracefully; kills when the stop timeout passes or `kill`
    /// completes first (a second Ctrl-C).
    ///
    /// The wait is announced at INFO ("waiting for N worker(s) to finish, deadline in
    /// Xs"), again every [`DRAIN_ANNOUNCE_EVERY`] while workers still run, and reaching
    /// the deadline at WARN, with the number of workers it cuts short.
    pub async fn shutdown(&self, kill: impl Future<Output = ()>) -> Shutdown {
        let deadline = tokio::time::Instant::now() + self.stop_timeout;
        tracing::info!(
            workers = self.running_workers(),
            "stopping: waiting for {} worker(s) to finish, deadline in {}",
            self.running_workers(),
            secs(self.stop_timeout)
        );
        let announce = async {
            loop {
                tokio::time::sleep(DRAIN_ANNOUNCE_EVERY).await;
                let workers = self.running_workers();
                if workers > 0 {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    tracing::info!(
                        workers,
                        "still waiting for {workers} worker(s) to finish, deadline in {}",
                        secs(left)
                    );
                }
            }
        };
        tokio::select! {
            () = self.stop() => Shutdown::Graceful,
            () = tokio::time::sleep_until(deadline) => {
                let workers = self.running_workers();
                tracing::warn!(
                    workers,
                    timeout = ?self.stop_timeout,
                    "stop deadline of {} reached with {workers} worker(s) still running: killing",
                    secs(self.stop_timeout)
                );
                self.kill();
                Shutdown::Killed
            }
            () = kill => {
                tracing::warn!("kill requested during graceful stop");
                self.kill();
                Shutdown::Killed
            }
            _ = announce => unreachable!("the announcements never end"),
        }
    }
}

/// How often [`RunningServices::shutdown`] repeats that it is waiting for workers.
pub const DRAIN_ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

fn secs(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
