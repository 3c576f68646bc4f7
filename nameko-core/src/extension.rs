//! Type erasure of extensions at the container boundary.

use std::{any::Any, future::Future, pin::Pin};

use crate::{context::EntrypointInfo, entrypoint::Extension, error::SetupError, setup::SetupContext};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An [`Extension`] behind a vtable.
pub(crate) trait ErasedExtension: Send + Sync {
    fn setup<'a>(&'a mut self, cx: &'a mut SetupContext<'_>) -> BoxFuture<'a, Result<(), SetupError>>;
    fn start(&self) -> BoxFuture<'_, Result<(), SetupError>>;
    fn stop(&self) -> BoxFuture<'_, ()>;
    fn kill(&self);
}

pub(crate) struct Erased<E>(pub(crate) E);

impl<E: Extension> ErasedExtension for Erased<E> {
    fn setup<'a>(&'a mut self, cx: &'a mut SetupContext<'_>) -> BoxFuture<'a, Result<(), SetupError>> {
        Box::pin(self.0.setup(cx))
    }

    fn start(&self) -> BoxFuture<'_, Result<(), SetupError>> {
        Box::pin(self.0.start())
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.stop())
    }

    fn kill(&self) {
        self.0.kill();
    }
}

/// An entrypoint bound to a container: the extension, and its binding (a
/// `Binding<Req, Resp>` behind `Any`, for `ServiceContainer::call`).
pub(crate) struct BoundEntrypoint {
    pub(crate) info: EntrypointInfo,
    pub(crate) extension: Box<dyn ErasedExtension>,
    pub(crate) binding: Box<dyn Any + Send + Sync>,
}
