//! Typed RPC clients: `Rpc<dyn Maths>` fields for traits marked
//! `#[nameko::rpc_client(service = "maths")]`.

use std::{
    fmt,
    future::{Future, IntoFuture},
    marker::PhantomData,
    ops::Deref,
    pin::Pin,
    sync::Arc,
};

use nameko_core::{BoxError, Dependency, DependencyProvider, SetupContext, SetupError, WorkerContext};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{RpcArgs, RpcError, RpcReply, ServiceRpc, ServiceRpcProvider};

/// A typed client interface of one service: implemented for `dyn Trait` by
/// `#[nameko::rpc_client]`, which also writes the proxy behind it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an RPC client interface",
    note = "mark the trait with `#[nameko::rpc_client(service = \"...\")]`"
)]
pub trait RpcInterface: Send + Sync + 'static {
    /// The service the interface calls.
    const SERVICE: &'static str;

    /// The proxy that implements the interface over `rpc`.
    fn from_service_rpc(rpc: ServiceRpc) -> Arc<Self>;
}

/// A typed RPC client field: `maths: Rpc<dyn Maths>` calls service `maths` through the
/// methods of trait `Maths`. Dereferences to `T`; in unit tests, wrap a mock with
/// [`Rpc::from_arc`].
pub struct Rpc<T: ?Sized>(Arc<T>);

impl<T: ?Sized> Rpc<T> {
    /// Wraps an implementation (a mock, a fake).
    pub fn from_arc(inner: Arc<T>) -> Self {
        Self(inner)
    }
}

impl<T: ?Sized + RpcInterface> Rpc<T> {
    /// A typed client outside any worker, over a standalone
    /// [`ClusterRpc`](super::ClusterRpc::connect).
    pub fn standalone(rpc: &super::ClusterRpc) -> Self {
        Self(T::from_service_rpc(rpc.service(T::SERVICE)))
    }
}

impl<T: ?Sized> Clone for Rpc<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: ?Sized> Deref for Rpc<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> fmt::Debug for Rpc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rpc<{}>", std::any::type_name::<T>())
    }
}

/// The provider of [`Rpc<T>`]: a [`ServiceRpc`] to `T::SERVICE` (or the field's
/// `service` argument) wrapped in `T`'s proxy. Arguments: `service`, `timeout`.
pub struct RpcInterfaceProvider<T: ?Sized> {
    inner: ServiceRpcProvider,
    _marker: PhantomData<fn() -> Arc<T>>,
}

impl<T: ?Sized> fmt::Debug for RpcInterfaceProvider<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcInterfaceProvider")
            .field("interface", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: ?Sized + RpcInterface> DependencyProvider for RpcInterfaceProvider<T> {
    type Output = Rpc<T>;
    type State = ();

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        self.inner.setup_for(cx, T::SERVICE).await
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(Rpc<T>, ()), BoxError> {
        let (rpc, ()) = self.inner.get_dependency(cx).await?;
        Ok((Rpc(T::from_service_rpc(rpc)), ()))
    }

    async fn stop(&self) {
        self.inner.stop().await;
    }

    fn kill(&self) {
        self.inner.kill();
    }
}

impl<T: ?Sized + RpcInterface> Dependency for Rpc<T> {
    type Provider = RpcInterfaceProvider<T>;

    fn provider() -> Self::Provider {
        RpcInterfaceProvider {
            inner: ServiceRpcProvider::default(),
            _marker: PhantomData,
        }
    }
}

/// A published typed call: await it for the decoded result.
#[must_use = "a reply does nothing unless awaited"]
pub struct TypedReply<T> {
    reply: RpcReply,
    _marker: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> TypedReply<T> {
    /// Wraps an untyped reply.
    pub fn new(reply: RpcReply) -> Self {
        Self {
            reply,
            _marker: PhantomData,
        }
    }

    /// Waits for the reply and decodes its result.
    ///
    /// # Errors
    ///
    /// As [`RpcReply::result`], or [`RpcError::Decode`] when the result does not fit `T`.
    pub async fn result(self) -> Result<T, RpcError> {
        decode_result(self.reply.result().await?)
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for TypedReply<T> {
    type Output = Result<T, RpcError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.result())
    }
}

impl<T> fmt::Debug for TypedReply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TypedReply").field(&self.reply).finish()
    }
}

/// Decodes an RPC result into `T`.
///
/// # Errors
///
/// [`RpcError::Decode`] naming the path where the value did not fit.
pub fn decode_result<T: DeserializeOwned>(value: Value) -> Result<T, RpcError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        RpcError::Decode(format!(
            "the result at `{path}` does not fit `{}`: {}",
            std::any::type_name::<T>(),
            err.into_inner()
        ))
    })
}

impl ServiceRpc {
    /// Calls `method` with positional `args` and decodes the result.
    ///
    /// # Errors
    ///
    /// [`RpcError`].
    pub async fn call_typed<R: DeserializeOwned>(&self, method: &str, args: Vec<Value>) -> Result<R, RpcError> {
        decode_result(self.call(method, RpcArgs::positional(args)).await?)
    }

    /// Publishes a call to `method` with positional `args`; await the typed reply later.
    ///
    /// # Errors
    ///
    /// [`RpcError`] when the call could not be sent.
    pub async fn call_typed_async<R: DeserializeOwned>(
        &self,
        method: &str,
        args: Vec<Value>,
    ) -> Result<TypedReply<R>, RpcError> {
        Ok(TypedReply::new(
            self.call_async(method, RpcArgs::positional(args)).await?,
        ))
    }
}
