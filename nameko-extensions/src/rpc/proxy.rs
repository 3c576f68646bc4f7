//! RPC from inside a service: the [`ClusterRpc`] and [`ServiceRpc`] dependencies.

use std::{fmt, sync::Arc, time::Duration};

use nameko_core::{
    BoxError, CALL_ID_STACK_KEY, Config, ContextData, Dependency, DependencyProvider, SetupContext, SetupError,
    TRACE_ID_KEY, WorkerContext,
};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::{RpcArgs, RpcClient, RpcError, RpcReply, client::Confirm};
use crate::{
    broker::SharedBroker,
    context::{Sending, Traced},
    transport,
};

/// The timeout of calls made by the RPC dependencies unless the config's
/// `rpc_timeout` (seconds; `0` waits forever) or the field's `timeout` argument says
/// otherwise.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

impl From<Value> for RpcArgs {
    /// A list is positional arguments, an object keyword arguments, null no
    /// arguments, and anything else one positional argument.
    fn from(value: Value) -> Self {
        match value {
            Value::Null => Self::default(),
            Value::Array(args) => Self::positional(args),
            Value::Object(kwargs) => Self::keywords(kwargs),
            other => Self::positional([other]),
        }
    }
}

/// One reply listener per service, shared by all its RPC dependencies.
type SharedClient = OnceCell<RpcClient>;

/// The service's shared client and this field's timeout.
async fn setup_client(cx: &mut SetupContext<'_>) -> Result<(RpcClient, Option<Duration>), SetupError> {
    let broker = transport::broker(cx)?;
    cx.claim_config_key("rpc_timeout");
    let timeout = match cx.arg("timeout") {
        Some(secs) => parse_timeout(secs).map_err(|err| SetupError::new(format!("bad `timeout` argument: {err}")))?,
        None => configured_timeout(cx.config()).map_err(SetupError::new)?,
    };
    let service = cx.service_name();
    let exchange = cx.config().rpc_exchange().to_owned();
    let cell = cx
        .shared()
        .get_or_insert_with::<SharedClient>(&format!("rpc-client/{service}"), OnceCell::new);
    let client = cell
        .get_or_try_init(|| async {
            // No default of its own: each field passes its resolved timeout.
            RpcClient::start(broker, &exchange, service, None)
                .await
                .map_err(|err| SetupError::with_source("could not start the RPC reply listener", err))
        })
        .await?;
    Ok((client.clone(), timeout))
}

/// The config's `rpc_timeout` (seconds; `0` waits forever), else the default; the
/// error names where the bad value was set.
fn configured_timeout(config: &Config) -> Result<Option<Duration>, String> {
    let Some(value) = config.get("rpc_timeout") else {
        return Ok(Some(DEFAULT_RPC_TIMEOUT));
    };
    value
        .as_f64()
        .ok_or_else(|| "expected a number of seconds".to_owned())
        .and_then(seconds)
        .map_err(|err| format!("{}: rpc_timeout: {err} (0 waits forever)", value.location()))
}

fn parse_timeout(secs: &str) -> Result<Option<Duration>, String> {
    secs.trim()
        .parse()
        .map_err(|_| format!("`{secs}` is not a number of seconds"))
        .and_then(seconds)
}

/// A timeout in seconds; `0` means none.
fn seconds(secs: f64) -> Result<Option<Duration>, String> {
    if secs == 0.0 {
        Ok(None)
    } else if secs > 0.0 && secs.is_finite() {
        Ok(Some(Duration::from_secs_f64(secs)))
    } else {
        Err(format!("`{secs}` is not a positive number of seconds"))
    }
}

// ===== ClusterRpc =====

/// Calls any service of the cluster from a worker; the worker's context data (call id
/// stack, trace id, user id…) travels with every call.
///
/// ```no_run
/// # async fn f(rpc: nameko_extensions::rpc::ClusterRpc) -> Result<(), nameko_extensions::rpc::RpcError> {
/// let product = rpc.call("maths", "multiply", serde_json::json!({"a": 6, "b": 7})).await?;
/// let reply = rpc.call_async("maths", "add", serde_json::json!([1, 2])).await?;
/// let sum = reply.await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterRpc {
    client: RpcClient,
    cx: Option<WorkerContext>,
    /// Outside a worker: the context data sent with every call.
    data: ContextData,
    timeout: Option<Duration>,
}

impl ClusterRpc {
    /// Calls `service.method` and waits for the result.
    ///
    /// The request's publisher confirm is read side by side with the reply (see
    /// [`RpcClient::call`]).
    ///
    /// # Errors
    ///
    /// [`RpcError`].
    pub async fn call(&self, service: &str, method: &str, args: impl Into<RpcArgs>) -> Result<Value, RpcError> {
        self.send(service, method, args, Confirm::WithReply).await?.await
    }

    /// Publishes a call; await the reply later.
    ///
    /// # Errors
    ///
    /// [`RpcError`] when the call could not be sent.
    pub async fn call_async(
        &self,
        service: &str,
        method: &str,
        args: impl Into<RpcArgs>,
    ) -> Result<RpcReply, RpcError> {
        self.send(service, method, args, Confirm::First).await
    }

    async fn send(
        &self,
        service: &str,
        method: &str,
        args: impl Into<RpcArgs>,
        confirm: Confirm,
    ) -> Result<RpcReply, RpcError> {
        let mut data = match &self.cx {
            Some(cx) => cx.outgoing_data(),
            None => {
                // A standalone call is the edge: a fresh trace, and a call id of its own
                // (Nameko's standalone proxy sends `standalone_rpc_proxy.call.<uuid>`).
                let mut data = self.data.clone();
                if data.trace_id().is_none() {
                    data.insert(TRACE_ID_KEY, nameko_core::ids::uuid4_simple());
                }
                let call_id = format!("standalone_rpc_proxy.call.{}", nameko_core::ids::uuid4());
                data.insert(CALL_ID_STACK_KEY, vec![call_id]);
                data
            }
        };
        let span = Traced::start(Sending::Call, || format!("{service}.{method}"), &mut data);
        let reply = self
            .client
            .send(service, method, args.into(), &data, self.timeout, confirm)
            .await;
        span.check(&reply);
        Ok(reply?.traced(span))
    }

    /// The same proxy with another timeout (`None` waits forever).
    #[must_use]
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// A proxy for one service.
    #[must_use]
    pub fn service(&self, service: &str) -> ServiceRpc {
        ServiceRpc {
            inner: self.clone(),
            service: service.into(),
        }
    }

    /// A proxy outside any worker, over `client` (standalone callers).
    pub fn standalone(client: RpcClient) -> Self {
        let timeout = client.default_timeout();
        Self {
            client,
            cx: None,
            data: ContextData::new(),
            timeout,
        }
    }

    /// A cluster RPC client for any tokio program (Nameko's `ClusterRpcProxy`): a reply
    /// queue of its own on `broker`, the RPC exchange of `config`, and its `rpc_timeout`
    /// (default 30 s) for every call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use nameko_core::{Config, ContextData};
    /// use nameko_extensions::{memory::MemoryBroker, rpc::ClusterRpc};
    ///
    /// let broker = MemoryBroker::new(); // or RabbitMQ
    /// let rpc = ClusterRpc::connect(broker.shared(), &Config::default()).await?
    ///     .with_data(ContextData::new().with("user_id", "u-42"));
    /// let err = rpc.call("nobody", "hello", serde_json::Value::Null).await.unwrap_err();
    /// assert_eq!(err.to_string(), "Unknown service `nobody`");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`RpcError::Transport`] when the reply queue cannot be declared or consumed, or
    /// `rpc_timeout` is not a number of seconds.
    pub async fn connect(broker: SharedBroker, config: &Config) -> Result<Self, RpcError> {
        let timeout = configured_timeout(config).map_err(RpcError::Transport)?;
        let client = RpcClient::start(broker, config.rpc_exchange(), "standalone_rpc_proxy", timeout)
            .await
            .map_err(|err| RpcError::Transport(err.to_string()))?;
        Ok(Self::standalone(client))
    }

    /// Outside a worker: the context data (`user_id`, `language`…) sent with every call.
    #[must_use]
    pub fn with_data(&self, data: ContextData) -> Self {
        Self { data, ..self.clone() }
    }

    /// The reply listener behind this proxy; stop it when done.
    pub fn client(&self) -> &RpcClient {
        &self.client
    }
}

impl fmt::Debug for ClusterRpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterRpc")
            .field("client", &self.client)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The provider of [`ClusterRpc`]. Arguments: `timeout` (seconds).
#[derive(Debug, Default)]
pub struct ClusterRpcProvider {
    client: Option<(RpcClient, Option<Duration>)>,
}

impl DependencyProvider for ClusterRpcProvider {
    type Output = ClusterRpc;
    type State = ();

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        self.client = Some(setup_client(cx).await?);
        Ok(())
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(ClusterRpc, ()), BoxError> {
        let (client, timeout) = self.client.clone().ok_or("the RPC provider was not set up")?;
        Ok((
            ClusterRpc {
                client,
                cx: Some(cx.clone()),
                data: ContextData::new(),
                timeout,
            },
            (),
        ))
    }

    async fn stop(&self) {
        if let Some((client, _)) = &self.client {
            client.stop().await;
        }
    }

    fn kill(&self) {
        if let Some((client, _)) = &self.client {
            client.kill();
        }
    }
}

impl Dependency for ClusterRpc {
    type Provider = ClusterRpcProvider;

    fn provider() -> ClusterRpcProvider {
        ClusterRpcProvider::default()
    }
}

// ===== ServiceRpc =====

/// Calls one service from a worker: the untyped escape hatch next to typed clients.
/// The target is the field's `service` argument.
#[derive(Clone, Debug)]
pub struct ServiceRpc {
    inner: ClusterRpc,
    service: Arc<str>,
}

impl ServiceRpc {
    /// The target service.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// Calls `method` and waits for the result.
    ///
    /// # Errors
    ///
    /// [`RpcError`].
    pub async fn call(&self, method: &str, args: impl Into<RpcArgs>) -> Result<Value, RpcError> {
        self.inner.call(&self.service, method, args).await
    }

    /// Publishes a call to `method`; await the reply later.
    ///
    /// # Errors
    ///
    /// [`RpcError`] when the call could not be sent.
    pub async fn call_async(&self, method: &str, args: impl Into<RpcArgs>) -> Result<RpcReply, RpcError> {
        self.inner.call_async(&self.service, method, args).await
    }

    /// The same proxy with another timeout (`None` waits forever).
    #[must_use]
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Self {
        Self {
            inner: self.inner.with_timeout(timeout),
            service: Arc::clone(&self.service),
        }
    }
}

/// The provider of [`ServiceRpc`]. Arguments: `service` (required), `timeout`
/// (seconds).
#[derive(Debug, Default)]
pub struct ServiceRpcProvider {
    inner: ClusterRpcProvider,
    service: Option<Arc<str>>,
}

impl DependencyProvider for ServiceRpcProvider {
    type Output = ServiceRpc;
    type State = ();

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let service = cx.arg("service").ok_or_else(|| {
            SetupError::new("a ServiceRpc field needs the name of its service: `#[dependency(service = \"...\")]`")
        })?;
        let service = service.to_owned();
        self.setup_for(cx, &service).await
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(ServiceRpc, ()), BoxError> {
        let service = self.service.clone().ok_or("the RPC provider was not set up")?;
        let (inner, ()) = self.inner.get_dependency(cx).await?;
        Ok((ServiceRpc { inner, service }, ()))
    }

    async fn stop(&self) {
        self.inner.stop().await;
    }

    fn kill(&self) {
        self.inner.kill();
    }
}

impl ServiceRpcProvider {
    /// Sets up for `service`, unless the field's `service` argument names another.
    pub(crate) async fn setup_for(&mut self, cx: &mut SetupContext<'_>, service: &str) -> Result<(), SetupError> {
        let service = cx.arg("service").unwrap_or(service);
        if service.is_empty() || service.contains('.') {
            return Err(SetupError::new(format!(
                "`{service}` is not a service name RPC can route to"
            )));
        }
        self.service = Some(service.into());
        self.inner.setup(cx).await
    }
}

impl Dependency for ServiceRpc {
    type Provider = ServiceRpcProvider;

    fn provider() -> ServiceRpcProvider {
        ServiceRpcProvider::default()
    }
}
