//! [`ServiceHarness`]: one service in a real container on an in-memory broker.

use std::{fmt, sync::Arc, time::Duration};

use nameko_core::{
    CallError, Config, ContainerError, ContextData, Resources, Service, ServiceContainer, ServiceContainerBuilder,
    WorkerReport,
};
use nameko_extensions::{
    broker::Broker,
    context::edge_context,
    events::{DispatchError, EventDispatcher},
    memory::MemoryBroker,
    rpc::{RpcArgs, RpcClient, RpcError},
    timer::ManualTicks,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OnceCell, broadcast};

/// Builds a [`ServiceHarness`] for service `S`.
#[must_use]
pub struct ServiceHarnessBuilder<S: Service> {
    container: ServiceContainerBuilder<S>,
    config: Config,
    broker: Option<MemoryBroker>,
    #[cfg(feature = "http")]
    web: Option<nameko_extensions::http::WebServer>,
}

impl<S: Service> ServiceHarnessBuilder<S> {
    /// The config the service runs with (default: [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The config, as YAML.
    ///
    /// # Panics
    ///
    /// When the YAML is not a valid config; the message says where.
    #[track_caller]
    pub fn config_yaml(self, yaml: &str) -> Self {
        match Config::from_yaml_str(yaml) {
            Ok(config) => self.config(config),
            Err(err) => panic!("invalid test config: {err}"),
        }
    }

    /// Adds a resource for `Dep<T>` fields.
    pub fn resource<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.container = self.container.resource(value);
        self
    }

    /// Adds resources.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.container = self.container.resources(resources);
        self
    }

    /// Replaces provider slots: Nameko's `replace_dependencies`.
    pub fn providers(mut self, replace: impl FnOnce(&mut S::Providers)) -> Self {
        self.container = self.container.providers(replace);
        self
    }

    /// Starts only these entrypoints: Nameko's `restrict_entrypoints`.
    pub fn only_entrypoints<I: IntoIterator<Item = M>, M: Into<String>>(mut self, methods: I) -> Self {
        self.container = self.container.only_entrypoints(methods);
        self
    }

    /// Keeps the service's timers from firing on their schedules: ticks happen only
    /// through [`ServiceHarness::fire_timer`].
    pub fn manual_timers(mut self) -> Self {
        self.container = self.container.resource(Arc::new(ManualTicks));
        self
    }

    /// Runs on this broker, shared with other harnesses or runners (default: a new one).
    pub fn broker(mut self, broker: MemoryBroker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// The web server the service's HTTP entrypoints register with (default: a
    /// [`detached`](nameko_extensions::http::WebServer::detached) one, which never
    /// binds: [`ServiceHarness::http`] calls its router without a socket). Give one
    /// made with `WebServer::new()` to serve on `WEB_SERVER_ADDRESS` for real.
    #[cfg(feature = "http")]
    pub fn web_server(mut self, web: nameko_extensions::http::WebServer) -> Self {
        self.web = Some(web);
        self
    }

    /// Starts the container.
    ///
    /// # Errors
    ///
    /// [`ContainerError`] when the service cannot start.
    pub async fn start(self) -> Result<ServiceHarness, ContainerError> {
        let broker = self.broker.unwrap_or_default();
        let container = self
            .container
            .config(self.config.clone())
            .resource::<dyn Broker>(broker.shared());
        #[cfg(feature = "http")]
        let web = self.web.unwrap_or_else(nameko_extensions::http::WebServer::detached);
        #[cfg(feature = "http")]
        let container = container.resource(Arc::new(web.clone()));
        #[cfg(feature = "ws")]
        let ws = nameko_extensions::ws::WsServer::new();
        #[cfg(feature = "ws")]
        let container = container.resource(Arc::new(ws.clone()));
        let container = container.start().await?;
        Ok(ServiceHarness {
            broker,
            container,
            config: self.config,
            client: OnceCell::new(),
            #[cfg(feature = "http")]
            web,
            #[cfg(feature = "ws")]
            ws,
        })
    }
}

impl<S: Service> fmt::Debug for ServiceHarnessBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceHarnessBuilder")
            .field("service", &S::NAME)
            .finish_non_exhaustive()
    }
}

/// One service running in a real container on an in-memory broker, with the tools of
/// Nameko's testing module.
///
/// ```
/// use nameko_core::{entrypoints::Dummy, *};
/// use nameko_testing::ServiceHarness;
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
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let harness = ServiceHarness::builder::<Echo>().start().await.unwrap();
/// let waiter = harness.waiter("echo");
/// let reply: String = harness.call("echo", "hi".to_owned()).await.unwrap(); // entrypoint_hook
/// assert_eq!(reply, "hi");
/// assert!(waiter.wait(std::time::Duration::from_secs(5)).await.unwrap().is_success());
/// harness.stop().await;
/// # }
/// ```
pub struct ServiceHarness {
    broker: MemoryBroker,
    container: ServiceContainer,
    config: Config,
    client: OnceCell<RpcClient>,
    #[cfg(feature = "http")]
    web: nameko_extensions::http::WebServer,
    #[cfg(feature = "ws")]
    ws: nameko_extensions::ws::WsServer,
}

impl ServiceHarness {
    /// A builder for a harness around service `S`.
    pub fn builder<S: Service>() -> ServiceHarnessBuilder<S> {
        ServiceHarnessBuilder {
            container: ServiceContainer::builder::<S>(),
            config: Config::default(),
            broker: None,
            #[cfg(feature = "http")]
            web: None,
        }
    }

    /// The running container.
    pub fn container(&self) -> &ServiceContainer {
        &self.container
    }

    /// The broker the service runs on.
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }

    /// Runs one worker of `method` as if its entrypoint fired with `request`, skipping
    /// the transport: Nameko's `entrypoint_hook`.
    ///
    /// # Errors
    ///
    /// [`CallError`] when the method has no entrypoint taking `Req` and returning
    /// `Resp`, or the worker fails.
    pub async fn call<Req: Send + 'static, Resp: Send + 'static>(
        &self,
        method: &str,
        request: Req,
    ) -> Result<Resp, CallError> {
        self.container.call(method, request).await
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
        self.container.call_with(method, request, data).await
    }

    /// Fires one tick of the timer on `method` now, with the dependencies the harness
    /// gives (replaced ones included), and waits for the tick's worker. The timer's
    /// schedule goes on as well, unless the harness was built with
    /// [`manual_timers`](ServiceHarnessBuilder::manual_timers).
    ///
    /// # Errors
    ///
    /// [`FireTimerError::NotATimer`] when `method` has no `timer` entrypoint;
    /// [`FireTimerError::Tick`] when the tick's worker fails or panics.
    pub async fn fire_timer(&self, method: &str) -> Result<(), FireTimerError> {
        let service = self.container.service_name();
        let is_timer = self
            .container
            .entrypoints()
            .any(|ep| ep.method() == method && ep.kind() == "timer");
        if !is_timer {
            return Err(FireTimerError::NotATimer {
                service,
                method: method.to_owned(),
                timers: self
                    .container
                    .entrypoints()
                    .filter(|ep| ep.kind() == "timer")
                    .map(|ep| ep.method())
                    .collect(),
            });
        }
        self.container
            .call::<(), ()>(method, ())
            .await
            .map_err(FireTimerError::Tick)
    }

    /// Calls an RPC method of this service through the broker, as a Nameko caller
    /// would: arguments are encoded, bound and decoded exactly as on the wire.
    ///
    /// # Errors
    ///
    /// [`RpcError`].
    pub async fn rpc(&self, method: &str, args: impl Into<RpcArgs>) -> Result<Value, RpcError> {
        self.rpc_to(self.container.service_name(), method, args).await
    }

    /// Calls an RPC method of any service on the harness's broker.
    ///
    /// # Errors
    ///
    /// [`RpcError`].
    pub async fn rpc_to(&self, service: &str, method: &str, args: impl Into<RpcArgs>) -> Result<Value, RpcError> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let exchange = self.config.rpc_exchange().to_owned();
                RpcClient::start(
                    self.broker.shared(),
                    &exchange,
                    "test_rpc_proxy",
                    Some(Duration::from_secs(30)),
                )
                .await
                .map_err(|err| RpcError::Transport(err.to_string()))
            })
            .await?;
        client.call(service, method, args.into(), &edge_context(), None).await
    }

    /// Sends `request` to the service's HTTP entrypoints through the web server's
    /// router, without a socket: extractors, workers (with replaced dependencies),
    /// error mapping, `X-Trace-Id` and the body limit all apply as when served. The
    /// guide's HTTP chapter has an example.
    #[cfg(feature = "http")]
    pub async fn http(&self, request: nameko_extensions::http::Request) -> nameko_extensions::http::Response {
        use tower::ServiceExt;
        match self.web.router().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// The web server the service's HTTP routes are registered with.
    #[cfg(feature = "http")]
    pub fn web_server(&self) -> &nameko_extensions::http::WebServer {
        &self.web
    }

    /// Dispatches an event as service `source` would.
    ///
    /// # Errors
    ///
    /// [`DispatchError`].
    pub async fn dispatch<T: Serialize + ?Sized>(
        &self,
        source: &str,
        event_type: &str,
        payload: &T,
    ) -> Result<(), DispatchError> {
        EventDispatcher::standalone(self.broker.shared(), source, &self.config)
            .dispatch(event_type, payload)
            .await
    }

    /// A standalone [`Publisher`](nameko_extensions::messaging::Publisher) on the
    /// harness's broker, to the default exchange (give it one with `.exchange(...)`):
    /// sends messages to the service's `#[consume]` queues as another service would.
    ///
    /// ```
    /// # use nameko_testing::ServiceHarness;
    /// # async fn demo(harness: &ServiceHarness) {
    /// use nameko_extensions::messaging::PublishOptions;
    ///
    /// harness
    ///     .publisher()
    ///     .publish(&serde_json::json!({"id": 7}), PublishOptions::new().routing_key("jobs"))
    ///     .await
    ///     .unwrap();
    /// # }
    /// ```
    pub fn publisher(&self) -> nameko_extensions::messaging::Publisher {
        nameko_extensions::messaging::Publisher::standalone(self.broker.shared())
    }

    /// Waits for the next worker of `method` that finishes after this call: Nameko's
    /// `entrypoint_waiter`. Make the waiter before triggering the entrypoint.
    pub fn waiter(&self, method: &str) -> EntrypointWaiter {
        EntrypointWaiter {
            method: method.to_owned(),
            reports: self.container.worker_reports(),
        }
    }

    /// Sends a websocket request frame to a `#[ws_rpc]` method without a socket (feature
    /// `ws`): `data` is the frame's `data` (keyword arguments), `socket_id` what the
    /// method gets as its first argument. The call is decoded, bound and run as a frame
    /// on `GET /ws` would be, with the harness's replaced dependencies.
    ///
    /// # Errors
    ///
    /// The error the result frame would carry: `MethodNotFound`, `IncorrectSignature`,
    /// the worker's error.
    #[cfg(feature = "ws")]
    pub async fn ws_call(&self, method: &str, socket_id: &str, data: Value) -> Result<Value, nameko_core::RemoteError> {
        self.ws_call_with(method, socket_id, data, ContextData::new()).await
    }

    /// Like [`ws_call`](Self::ws_call), with the socket's context data (what a client's
    /// upgrade request headers would give).
    ///
    /// # Errors
    ///
    /// As [`ws_call`](Self::ws_call).
    #[cfg(feature = "ws")]
    pub async fn ws_call_with(
        &self,
        method: &str,
        socket_id: &str,
        data: Value,
        context: ContextData,
    ) -> Result<Value, nameko_core::RemoteError> {
        self.ws.call(method, socket_id, data, context).await
    }

    /// The service's websocket server (feature `ws`): serve its
    /// [`router`](nameko_extensions::ws::WsServer::router) to test over a real socket,
    /// open recorded fake sockets with
    /// [`recorder`](nameko_extensions::ws::WsServer::recorder), or reach the
    /// [`hub`](nameko_extensions::ws::WsServer::hub).
    #[cfg(feature = "ws")]
    pub fn ws_server(&self) -> &nameko_extensions::ws::WsServer {
        &self.ws
    }

    /// Stops the service gracefully.
    pub async fn stop(self) {
        if let Some(client) = self.client.get() {
            client.stop().await;
        }
        self.container.stop().await;
    }

    /// Kills the service.
    pub fn kill(&self) {
        self.container.kill();
    }
}

impl fmt::Debug for ServiceHarness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceHarness")
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

/// [`ServiceHarness::fire_timer`] could not fire the tick, or the tick failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FireTimerError {
    /// The method has no `timer` entrypoint.
    #[error("service `{service}` has no timer `{method}`; its timers: {}", timers.join(", "))]
    NotATimer {
        /// The service.
        service: &'static str,
        /// The method asked for.
        method: String,
        /// The methods with a timer.
        timers: Vec<&'static str>,
    },
    /// The tick's worker failed, panicked or could not start.
    #[error(transparent)]
    Tick(CallError),
}

/// The waiter of [`ServiceHarness::waiter`].
#[derive(Debug)]
pub struct EntrypointWaiter {
    method: String,
    reports: broadcast::Receiver<WorkerReport>,
}

/// An [`EntrypointWaiter`] gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No worker of the method finished in time.
    #[error("no worker of `{method}` finished within {timeout:?}")]
    Timeout {
        /// The method.
        method: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The container is gone.
    #[error("the container stopped reporting workers")]
    Closed,
}

impl EntrypointWaiter {
    /// The report of the next worker of the method: how it ended.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`] when none finishes within `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Result<WorkerReport, WaitError> {
        let method = self.method.clone();
        let wait = async {
            loop {
                match self.reports.recv().await {
                    Ok(report) if report.method == method => return Ok(report),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(WaitError::Closed),
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(WaitError::Timeout { method, timeout }))
    }
}
