//! The test entrypoints of Nameko's `nameko.testing.services`: [`Once`] and [`Dummy`].

use std::{fmt, marker::PhantomData, sync::Mutex};

use crate::{
    context::ContextData,
    entrypoint::{Binding, Entrypoint, Extension},
    error::SetupError,
};

/// Runs its method once, with a fixed request, when the container starts. The worker
/// runs in the background; its failure is logged like any worker's.
///
/// ```
/// use nameko_core::entrypoints::Once;
///
/// // A method taking a `u32` and returning nothing, run once with 7.
/// let once = Once::<u32>::new(7);
/// ```
pub struct Once<Req, Resp = ()> {
    request: Mutex<Option<Req>>,
    binding: Option<Binding<Req, Resp>>,
}

impl<Req, Resp> Once<Req, Resp> {
    /// Fires once with `request`.
    pub fn new(request: Req) -> Self {
        Self {
            request: Mutex::new(Some(request)),
            binding: None,
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Extension for Once<Req, Resp> {
    async fn start(&self) -> Result<(), SetupError> {
        let request = self.request.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (Some(request), Some(binding)) = (request, &self.binding) else {
            return Ok(());
        };
        // The handle is dropped: the worker runs on, owned by the container.
        binding
            .spawn(request, ContextData::new())
            .await
            .map(drop)
            .map_err(|err| SetupError::with_source("could not start the `once` worker", err))
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Entrypoint for Once<Req, Resp> {
    type Request = Req;
    type Response = Resp;
    const KIND: &'static str = "once";

    fn bind(&mut self, binding: Binding<Req, Resp>) {
        self.binding = Some(binding);
    }
}

impl<Req, Resp> fmt::Debug for Once<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self.request.lock().map(|r| r.is_some()).unwrap_or_default();
        f.debug_struct("Once")
            .field("pending", &pending)
            .finish_non_exhaustive()
    }
}

/// An entrypoint that never fires by itself: it lets tests run a method through
/// [`ServiceContainer::call`](crate::ServiceContainer::call) (`entrypoint_hook`).
pub struct Dummy<Req, Resp = ()> {
    max_workers: Option<usize>,
    _marker: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Dummy<Req, Resp> {
    /// A dummy entrypoint taking `Req` and returning `Resp`.
    pub const fn new() -> Self {
        Self {
            max_workers: None,
            _marker: PhantomData,
        }
    }

    /// Runs at most `max_workers` workers of this method at once, within the
    /// container's `max_workers` (see [`Entrypoint::max_workers`]).
    ///
    /// ```
    /// use nameko_core::entrypoints::Dummy;
    ///
    /// let limited = Dummy::<(), ()>::new().max_workers(2);
    /// ```
    #[must_use]
    pub const fn max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = Some(max_workers);
        self
    }
}

impl<Req, Resp> Default for Dummy<Req, Resp> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Extension for Dummy<Req, Resp> {}

impl<Req: Send + 'static, Resp: Send + 'static> Entrypoint for Dummy<Req, Resp> {
    type Request = Req;
    type Response = Resp;
    const KIND: &'static str = "dummy";

    fn bind(&mut self, _binding: Binding<Req, Resp>) {}

    fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }
}

impl<Req, Resp> fmt::Debug for Dummy<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dummy")
    }
}
