//! The `http` entrypoint: routes served by workers.

use std::{fmt, future::Future, marker::PhantomData, sync::Arc};

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use nameko_core::{
    Binding, ContextData, Entrypoint, Extension, HandlerResult, SetupContext, SetupError, TRACE_ID_KEY, WorkerError,
};

use super::{
    edge::{FromHandler, TRACE_ID_HEADER, worker_error_response},
    server::{RouteGroup, RouteHandler, WebServer},
};

/// The arguments of an HTTP method: a tuple of axum extractors, all but the last
/// [`FromRequestParts`], the last [`FromRequest`] (it may read the body), as axum's
/// own handlers take them. `M` tells apart the ways the last one extracts (axum's
/// `ViaParts`/`ViaRequest`); it is inferred.
pub trait FromHttpRequest<M>: Sized + Send + 'static {
    /// Extracts every argument, or answers with the first extractor's rejection.
    fn from_http_request(request: Request) -> impl Future<Output = Result<Self, Response>> + Send;
}

impl FromHttpRequest<()> for () {
    async fn from_http_request(_: Request) -> Result<Self, Response> {
        Ok(())
    }
}

impl<M, T1> FromHttpRequest<(M, T1)> for (T1,)
where
    T1: FromRequest<(), M> + Send + 'static,
{
    async fn from_http_request(request: Request) -> Result<Self, Response> {
        let t1 = T1::from_request(request, &())
            .await
            .map_err(IntoResponse::into_response)?;
        Ok((t1,))
    }
}

macro_rules! from_http_request_tuples {
    ($( [$(($part:ident, $value:ident)),*] ($last:ident, $last_value:ident); )*) => {$(
        impl<M, $($part,)* $last> FromHttpRequest<(M, $($part,)* $last,)> for ($($part,)* $last,)
        where
            $( $part: FromRequestParts<()> + Send + 'static, )*
            $last: FromRequest<(), M> + Send + 'static,
        {
            async fn from_http_request(request: Request) -> Result<Self, Response> {
                let (mut parts, body) = request.into_parts();
                $(
                    let $value = $part::from_request_parts(&mut parts, &())
                        .await
                        .map_err(IntoResponse::into_response)?;
                )*
                let request = Request::from_parts(parts, body);
                let $last_value = $last::from_request(request, &()).await.map_err(IntoResponse::into_response)?;
                Ok(($($value,)* $last_value,))
            }
        }
    )*};
}

from_http_request_tuples! {
    [(T1, t1)] (T2, t2);
    [(T1, t1), (T2, t2)] (T3, t3);
    [(T1, t1), (T2, t2), (T3, t3)] (T4, t4);
    [(T1, t1), (T2, t2), (T3, t3), (T4, t4)] (T5, t5);
    [(T1, t1), (T2, t2), (T3, t3), (T4, t4), (T5, t5)] (T6, t6);
    [(T1, t1), (T2, t2), (T3, t3), (T4, t4), (T5, t5), (T6, t6)] (T7, t7);
    [(T1, t1), (T2, t2), (T3, t3), (T4, t4), (T5, t5), (T6, t6), (T7, t7)] (T8, t8);
    [(T1, t1), (T2, t2), (T3, t3), (T4, t4), (T5, t5), (T6, t6), (T7, t7), (T8, t8)] (T9, t9);
    [(T1, t1), (T2, t2), (T3, t3), (T4, t4), (T5, t5), (T6, t6), (T7, t7), (T8, t8), (T9, t9)] (T10, t10);
    [(T1, t1), (T2, t2), (T3, t3), (T4, t4), (T5, t5), (T6, t6), (T7, t7), (T8, t8), (T9, t9), (T10, t10)] (T11, t11);
    [(T1, t1), (T2, t2), (T3, t3), (T4, t4), (T5, t5), (T6, t6), (T7, t7), (T8, t8), (T9, t9), (T10, t10), (T11, t11)] (T12, t12);
}

/// The `http` entrypoint (`#[http("GET", "/greet/{name}")]`): serves routes of the
/// runner's [`WebServer`] with workers.
///
/// `Args` is a tuple of axum extractors (see [`FromHttpRequest`]); they run before a
/// worker slot is taken, and a rejection is axum's own response. Then every request is
/// a worker, with injection and hooks; the handler returns a [`Response`] (the macro
/// converts any `IntoResponse`), or an error written as
/// `{"error": exc_type, "message": ...}` with the error's status (default 500). The
/// request's [`TraceId`](super::TraceId) becomes the worker's trace id. A client that disconnects never
/// cancels the worker.
///
/// By hand (the `#[http]` attribute writes the same):
///
/// ```
/// use nameko_core::{Dependencies, DependencyError, Entrypoints, Providers, ProviderSlot, RemoteError, Service,
///     WorkerBuilder};
/// use nameko_extensions::http::{HttpEntrypoint, IntoResponse, Path};
///
/// pub struct Greeting;
/// # pub struct GreetingProviders;
/// # impl Providers for GreetingProviders {
/// #     type Worker = Greeting;
/// #     fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> { Vec::new() }
/// #     async fn build<'a>(&'a self, _: &mut WorkerBuilder<'a>) -> Result<Greeting, DependencyError> { Ok(Greeting) }
/// # }
/// # impl Dependencies for Greeting {
/// #     type Providers = GreetingProviders;
/// #     fn providers() -> GreetingProviders { GreetingProviders }
/// # }
///
/// impl Service for Greeting {
///     const NAME: &'static str = "greeting";
///     fn entrypoints(e: &mut Entrypoints<Self>) {
///         let routes = HttpEntrypoint::<(Path<String>,), _>::new("GET", "/greet/{name}")
///             .route("POST", "/greet/{name}");
///         e.add("greet", routes, |_: Greeting, (Path(name),): (Path<String>,)| async move {
///             Ok::<_, RemoteError>(format!("Hi, {name}!").into_response())
///         });
///     }
/// }
/// ```
pub struct HttpEntrypoint<Args, M = ()> {
    routes: Vec<(String, String)>,
    max_workers: Option<usize>,
    binding: Option<Binding<Args, Response>>,
    group: Option<RouteGroup>,
    _marker: PhantomData<fn() -> (Args, M)>,
}

impl<Args, M> HttpEntrypoint<Args, M> {
    /// Serves `path` (axum 0.8 syntax: `{param}`, `{*rest}`) for `methods`, one method
    /// or several separated by commas (`"GET,POST"`). A `GET` route answers `HEAD` too.
    pub fn new(methods: &str, path: &str) -> Self {
        Self {
            routes: vec![(methods.to_owned(), path.to_owned())],
            max_workers: None,
            binding: None,
            group: None,
            _marker: PhantomData,
        }
    }

    /// Serves one more path (or the same path for other methods) with this method.
    #[must_use]
    pub fn route(mut self, methods: &str, path: &str) -> Self {
        self.routes.push((methods.to_owned(), path.to_owned()));
        self
    }

    /// Runs at most `max_workers` workers of this method at once (at least 1), within
    /// the container's `max_workers`: a slow handler flooded with requests keeps the
    /// container's other slots free for the service's other entrypoints. Requests
    /// beyond the limit wait, after extraction, holding no worker slot.
    #[must_use]
    pub fn max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = Some(max_workers);
        self
    }
}

impl<Args, M> fmt::Debug for HttpEntrypoint<Args, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEntrypoint")
            .field("routes", &self.routes)
            .field("max_workers", &self.max_workers)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

/// Parses `"GET,POST"`.
fn methods(text: &str) -> Result<Vec<Method>, String> {
    text.split(',')
        .map(str::trim)
        .map(|name| {
            let upper = name.to_ascii_uppercase();
            match upper.as_str() {
                "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" | "TRACE" | "CONNECT" => {
                    Ok(Method::from_bytes(upper.as_bytes()).expect("standard methods parse"))
                }
                _ => Err(format!(
                    "unknown HTTP method `{name}`; expected GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS, TRACE or CONNECT"
                )),
            }
        })
        .collect()
}

/// One request: extract, then a worker, then its response.
async fn serve<Args, M>(binding: Binding<Args, Response>, request: Request) -> Response
where
    Args: FromHttpRequest<M>,
{
    // The edge put the request's trace id (adopted or new) in `X-Trace-Id`.
    let trace_id = request
        .headers()
        .get(TRACE_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // The caller's span, which the worker's continues (validated by the core).
    #[cfg(feature = "otel")]
    let traceparent = request
        .headers()
        .get(nameko_core::otel::TRACEPARENT_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // Extracted before a worker slot is taken: a slow body or a bad request never holds one.
    let args = match Args::from_http_request(request).await {
        Ok(args) => args,
        Err(rejection) => return rejection,
    };
    let slot = match binding.reserve().await {
        Ok(slot) => slot,
        Err(err) => return worker_error_response(&WorkerError::NotStarted(err)),
    };
    let mut data = ContextData::new();
    if let Some(trace_id) = trace_id {
        data.insert(TRACE_ID_KEY, trace_id);
    }
    #[cfg(feature = "otel")]
    if let Some(traceparent) = traceparent {
        data.insert(nameko_core::otel::TRACEPARENT_KEY, traceparent);
    }
    // The worker runs in a task its container owns: if the client goes away and this
    // future is dropped, the worker still finishes and runs its hooks.
    let mut response = match slot.start(args, data).await {
        Ok(response) => response,
        Err(err) => worker_error_response(&err),
    };
    // Only a 413 needs telling apart from the edge's own (an extension costs a map).
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response.extensions_mut().insert(FromHandler);
    }
    response
}

impl<Args, M> Extension for HttpEntrypoint<Args, M>
where
    Args: FromHttpRequest<M>,
    M: 'static,
{
    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let binding = self
            .binding
            .clone()
            .ok_or_else(|| SetupError::new("the http entrypoint was not bound"))?;
        let owner = format!("{}.{}", binding.service_name(), binding.info().method());
        let mut routes = Vec::new();
        for (text, path) in &self.routes {
            for method in methods(text).map_err(|message| SetupError::new(format!("{owner}: {message}")))? {
                let binding = binding.clone();
                let handler: RouteHandler =
                    Arc::new(move |request| Box::pin(serve::<Args, M>(binding.clone(), request)));
                routes.push((method, path.clone(), handler));
            }
        }
        let server = WebServer::attach(cx)?;
        self.group = Some(server.add_routes(owner, routes)?);
        Ok(())
    }

    async fn start(&self) -> Result<(), SetupError> {
        match &self.group {
            Some(group) => group.start().await,
            None => Err(SetupError::new("the http entrypoint was not set up")),
        }
    }

    async fn stop(&self) {
        if let Some(group) = &self.group {
            group.stop().await;
        }
    }

    fn kill(&self) {
        if let Some(group) = &self.group {
            group.kill();
        }
    }
}

impl<Args, M> Entrypoint for HttpEntrypoint<Args, M>
where
    Args: FromHttpRequest<M>,
    M: 'static,
{
    type Request = Args;
    type Response = Response;
    const KIND: &'static str = "http";

    fn bind(&mut self, binding: Binding<Args, Response>) {
        self.binding = Some(binding);
    }

    fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }
}

/// A handler's result with its success converted into a [`Response`]; what the
/// `#[http]` attribute's generated handler returns.
pub fn into_http_result<R>(result: R) -> Result<Response, R::Err>
where
    R: HandlerResult,
    R::Ok: IntoResponse,
{
    result.into_result().map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_read_as_nameko_writes_them() {
        assert_eq!(methods("GET").unwrap(), [Method::GET]);
        assert_eq!(methods("post, Put").unwrap(), [Method::POST, Method::PUT]);
        let err = methods("GET,FETCH").unwrap_err();
        assert!(err.contains("unknown HTTP method `FETCH`"), "{err}");
    }
}
