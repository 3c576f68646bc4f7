//! [`WsRpcEntrypoint`]: a method callable over the runner's websocket.

use std::{fmt, marker::PhantomData, sync::Arc};

use nameko_core::{
    Binding, ContextData, Entrypoint, Extension, RemoteError, SetupContext, SetupError, WorkerError,
    redact::bind_arguments,
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    WS_PATH, WsServer,
    server::{BoxFuture, WsMethod},
};
use crate::http::{RouteGroup, WebServer};

/// The runner-wide `GET /ws` route on the runner's web server, added by the first
/// `#[ws_rpc]` entrypoint that sets up.
const ROUTE_KEY: &str = "websocket-route";
use crate::rpc::{FromRpcArgs, RpcArgs};

struct Method<Req, Resp> {
    binding: Binding<Req, Resp>,
}

impl<Req: FromRpcArgs, Resp: Serialize + Send + 'static> WsMethod for Method<Req, Resp> {
    fn call(
        &self,
        socket_id: String,
        data: Map<String, Value>,
        context: ContextData,
    ) -> BoxFuture<Result<Value, RemoteError>> {
        let binding = self.binding.clone();
        Box::pin(async move {
            // Nameko calls `method(self, socket_id, **data)`: the socket id binds to the
            // first parameter, `data` by name. Decoded before a worker slot is taken.
            let args = RpcArgs {
                args: vec![Value::String(socket_id)],
                kwargs: data,
            };
            // For logs and monitoring (a socket's frames are not the hot path: bound now).
            let call_args = bind_arguments(Req::PARAMETERS, args.args.clone(), Value::Object(args.kwargs.clone()));
            let request = Req::from_rpc_args(args, binding.info().method())?;
            let slot = binding
                .reserve()
                .await
                .map_err(|err| WorkerError::NotStarted(err).to_remote_error())?
                .call_args(call_args);
            // The worker runs in a task the container owns: a client that disconnects
            // (dropping this future) never cancels it or skips its hooks.
            match slot.start(request, context).await {
                Ok(value) => {
                    serde_json::to_value(value).map_err(|err| RemoteError::unserializable_value(&err.to_string()))
                }
                Err(err) => Err(err.to_remote_error()),
            }
        })
    }
}

/// The websocket RPC entrypoint (`#[ws_rpc]`): a method called by request frames on the
/// runner's `GET /ws`, Nameko's `nameko.web.websocket.rpc`.
///
/// A frame `{"method": name, "data": {...}, "correlation_id": ...}` calls the method
/// with the socket id as its first argument and `data` as keyword arguments, bound
/// with the RPC rules ([`FromRpcArgs`]: `IncorrectSignature` in Python's wording) before
/// a worker slot is taken. `Resp` is serialized as the result frame's `data`. Method
/// names are unique per runner: a second service registering the same name fails
/// to start, naming both.
pub struct WsRpcEntrypoint<Req, Resp> {
    max_workers: Option<usize>,
    sensitive_arguments: &'static [&'static str],
    binding: Option<Binding<Req, Resp>>,
    server: Option<WsServer>,
    route: Option<Arc<RouteGroup>>,
    _marker: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> WsRpcEntrypoint<Req, Resp> {
    /// A websocket RPC entrypoint.
    pub const fn new() -> Self {
        Self {
            max_workers: None,
            sensitive_arguments: &[],
            binding: None,
            server: None,
            route: None,
            _marker: PhantomData,
        }
    }

    /// Runs at most `max_workers` workers of this method at once (at least 1), within
    /// the container's `max_workers`. A socket reads one call at a time, so the limit
    /// counts calls from different sockets.
    #[must_use]
    pub const fn max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = Some(max_workers);
        self
    }

    /// Names the arguments logs and monitoring must not show (`#[ws_rpc(sensitive =
    /// [...])]`): as [`RpcEntrypoint::sensitive_arguments`](crate::rpc::RpcEntrypoint::sensitive_arguments).
    #[must_use]
    pub const fn sensitive_arguments(mut self, paths: &'static [&'static str]) -> Self {
        self.sensitive_arguments = paths;
        self
    }
}

impl<Req, Resp> Default for WsRpcEntrypoint<Req, Resp> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req, Resp> fmt::Debug for WsRpcEntrypoint<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsRpcEntrypoint")
            .field("max_workers", &self.max_workers)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

impl<Req: FromRpcArgs, Resp: Serialize + Send + 'static> Extension for WsRpcEntrypoint<Req, Resp> {
    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let binding = self
            .binding
            .clone()
            .ok_or_else(|| SetupError::new("the ws_rpc entrypoint was not bound"))?;
        let server = WsServer::attach(cx)?;
        let name = binding.info().method().to_owned();
        server.register(cx.service_name(), &name, Arc::new(Method { binding }))?;
        // One `GET /ws` per runner, on the runner's web server (which binds when it
        // starts, so `#[ws_rpc]` alone is enough to serve it).
        let route = match cx.shared().get::<RouteGroup>(ROUTE_KEY) {
            Some(route) => route,
            None => {
                let web = WebServer::attach(cx)?;
                let group = web.add_routes(
                    format!("websocket `{WS_PATH}`"),
                    [(axum::http::Method::GET, WS_PATH.to_owned(), server.route_handler())],
                )?;
                cx.shared().get_or_insert_with(ROUTE_KEY, || group)
            }
        };
        self.route = Some(route);
        self.server = Some(server);
        Ok(())
    }

    async fn start(&self) -> Result<(), SetupError> {
        match &self.route {
            Some(route) => route.start().await,
            None => Ok(()),
        }
    }

    async fn stop(&self) {
        if let Some(server) = &self.server
            && server.unregister()
            && let Some(route) = &self.route
        {
            route.stop().await;
        }
    }

    fn kill(&self) {
        if let Some(server) = &self.server {
            server.kill();
        }
        if let Some(route) = &self.route {
            route.kill();
        }
    }
}

impl<Req: FromRpcArgs, Resp: Serialize + Send + 'static> Entrypoint for WsRpcEntrypoint<Req, Resp> {
    type Request = Req;
    type Response = Resp;
    const KIND: &'static str = "ws_rpc";

    fn bind(&mut self, binding: Binding<Req, Resp>) {
        self.binding = Some(binding);
    }

    fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }

    fn sensitive_arguments(&self) -> &'static [&'static str] {
        self.sensitive_arguments
    }
}
