//! Extensions and entrypoints: what turns outside events into workers.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::{
    context::{ContextData, EntrypointInfo, Extensions, WorkerContext},
    error::{SetupError, SpawnError, WorkerError},
    redact::CallArgs,
    setup::SetupContext,
};

/// Something a container owns for a service's whole life: set up once, started, then
/// stopped (gracefully) or killed. Implement the methods with `async fn`.
pub trait Extension: Send + Sync + 'static {
    /// Called once before anything starts: read config, validate, allocate.
    fn setup(&mut self, cx: &mut SetupContext<'_>) -> impl Future<Output = Result<(), SetupError>> + Send {
        let _ = cx;
        async { Ok(()) }
    }

    /// Starts reacting to the outside world; called after every extension of the
    /// container set up. Returns once the extension is ready (a consumer is consuming).
    fn start(&self) -> impl Future<Output = Result<(), SetupError>> + Send {
        async { Ok(()) }
    }

    /// Graceful: stop taking new work. Running workers are awaited by the container.
    fn stop(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Ungraceful and infallible: drop everything now. Must not block or panic.
    fn kill(&self) {}
}

/// An extension that fires workers of one method: an RPC consumer, an event handler,
/// an HTTP route, a timer.
///
/// The container hands the entrypoint a [`Binding`] before `setup`; the entrypoint
/// decodes each input into a [`Request`](Self::Request) and calls
/// [`Binding::spawn`], which waits for a worker slot only then — so a slow input never
/// holds a slot.
pub trait Entrypoint: Extension {
    /// What the entrypoint hands to the handler (decoded arguments, an event body…).
    type Request: Send + 'static;
    /// What the handler hands back (a reply value, a response…).
    type Response: Send + 'static;
    /// The entrypoint's kind, e.g. `"rpc"`.
    const KIND: &'static str;

    /// Receives the handle through which the entrypoint starts workers.
    fn bind(&mut self, binding: Binding<Self::Request, Self::Response>);

    /// This entrypoint's own limit on concurrent workers (`None`, the default: only the
    /// container's `max_workers` applies).
    ///
    /// A worker of this entrypoint takes a permit of the entrypoint's own limit first,
    /// then one of the container's: so the entrypoint never runs more than `N` workers
    /// at once, the container never more than its `max_workers` in all (a limit above
    /// the container's changes nothing), and a request waiting for the entrypoint's own
    /// permit holds none of the container's. `Some(0)`, which could never run a
    /// worker, fails the container's start with an error naming the entrypoint.
    fn max_workers(&self) -> Option<usize> {
        None
    }

    /// The paths of the arguments logs and monitoring must not show (Nameko's
    /// `sensitive_arguments`): `password`, `payload.card_number`, `items[0]` — see
    /// [`redact`](crate::redact). The default: none.
    fn sensitive_arguments(&self) -> &'static [&'static str] {
        &[]
    }
}

/// A worker slot held for one worker: the container's tracker token and the permits.
pub(crate) struct Reserved {
    pub(crate) token: TaskTrackerToken,
    pub(crate) permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// What a worker does with its result, in its own task, after `worker_teardown`.
pub(crate) type Then<Resp> =
    Box<dyn FnOnce(Result<Resp, WorkerError>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Where a worker's result goes.
pub(crate) enum Deliver<Resp> {
    /// To a [`WorkerHandle`].
    Handle(oneshot::Sender<Result<Resp, WorkerError>>),
    /// To a continuation run in the worker's task.
    Then(Then<Resp>),
}

/// What a worker is started with beside its request.
pub(crate) struct Call {
    pub(crate) data: ContextData,
    pub(crate) extensions: Extensions,
    pub(crate) args: Option<Box<dyn CallArgs>>,
}

/// Starts workers of one method.
pub(crate) trait Spawner<Req, Resp>: Send + Sync {
    /// A worker slot without waiting, when one is free (or the refusal when the
    /// container stops or is killed); `None` when it must wait: then [`reserve`](Self::reserve).
    fn try_reserve(&self) -> Option<Result<Reserved, SpawnError>>;

    /// Waits for a worker slot, unless the container stops or is killed first.
    fn reserve(&self) -> Pin<Box<dyn Future<Output = Result<Reserved, SpawnError>> + Send + '_>>;

    /// Starts a worker in a reserved slot; returns its context.
    fn start(&self, reserved: Reserved, request: Req, call: Call, deliver: Deliver<Resp>) -> WorkerContext;
}

/// An entrypoint's handle on its container: starts workers of the bound method.
/// Cheap to clone.
pub struct Binding<Req, Resp> {
    pub(crate) info: EntrypointInfo,
    pub(crate) service: &'static str,
    pub(crate) spawner: Arc<dyn Spawner<Req, Resp>>,
}

impl<Req, Resp> Clone for Binding<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            info: self.info.clone(),
            service: self.service,
            spawner: Arc::clone(&self.spawner),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Binding<Req, Resp> {
    /// The bound method.
    pub fn info(&self) -> &EntrypointInfo {
        &self.info
    }

    /// The service's name.
    pub fn service_name(&self) -> &'static str {
        self.service
    }

    /// Starts a worker for `request` with the call's incoming context data, once a
    /// worker slot is free. The worker runs in a task the container owns: dropping the
    /// returned handle (or this future, once it returned) never cancels it.
    ///
    /// # Errors
    ///
    /// [`SpawnError`] when the container stops or is killed before a slot frees up.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes starts no worker.
    pub async fn spawn(&self, request: Req, data: ContextData) -> Result<WorkerHandle<Resp>, SpawnError> {
        Ok(self.reserve().await?.start(request, data))
    }

    /// Like [`spawn`](Self::spawn), attaching `extensions` the worker's providers can
    /// read from [`WorkerContext::extensions`](crate::WorkerContext::extensions).
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub async fn spawn_with(
        &self,
        request: Req,
        data: ContextData,
        extensions: Extensions,
    ) -> Result<WorkerHandle<Resp>, SpawnError> {
        Ok(self.reserve().await?.start_with(request, data, extensions))
    }

    /// Waits for a worker slot (the container's `max_workers`, and the entrypoint's
    /// own limit) and holds it: start the worker with the [`WorkerSlot`]. This splits
    /// [`spawn`](Self::spawn) in two, for entrypoints that want to settle their input
    /// differently depending on whether a worker will run — or that hand the result
    /// on from the worker's own task with [`WorkerSlot::start_then`].
    ///
    /// # Errors
    ///
    /// [`SpawnError`] when the container stops or is killed before a slot frees up.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes holds no slot.
    pub async fn reserve(&self) -> Result<WorkerSlot<Req, Resp>, SpawnError> {
        // A free slot is taken without a boxed future.
        let reserved = match self.spawner.try_reserve() {
            Some(reserved) => reserved?,
            None => self.spawner.reserve().await?,
        };
        Ok(WorkerSlot {
            spawner: Arc::clone(&self.spawner),
            reserved,
            args: None,
        })
    }

    /// Starts a worker and waits for its result.
    ///
    /// # Errors
    ///
    /// [`WorkerError`] when the worker failed, panicked, was killed or never started.
    pub async fn call(&self, request: Req, data: ContextData) -> Result<Resp, WorkerError> {
        self.spawn(request, data).await.map_err(WorkerError::NotStarted)?.await
    }
}

impl<Req, Resp> fmt::Debug for Binding<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binding")
            .field("service", &self.service)
            .field("info", &self.info)
            .finish()
    }
}

/// A worker slot held for one worker, from [`Binding::reserve`]: start the worker with
/// it. Dropping it frees the slot without starting anything.
pub struct WorkerSlot<Req, Resp> {
    spawner: Arc<dyn Spawner<Req, Resp>>,
    reserved: Reserved,
    args: Option<Box<dyn CallArgs>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> WorkerSlot<Req, Resp> {
    /// Hands the worker the call's arguments, as logs and monitoring see them (see
    /// [`WorkerContext::redacted_arguments`](crate::WorkerContext::redacted_arguments)):
    /// they are decoded only when read.
    #[must_use]
    pub fn call_args(mut self, args: impl CallArgs) -> Self {
        self.args = Some(Box::new(args));
        self
    }

    /// Starts the worker for `request`, in a task the container owns.
    pub fn start(self, request: Req, data: ContextData) -> WorkerHandle<Resp> {
        self.start_with(request, data, Extensions::new())
    }

    /// Like [`start`](Self::start), attaching `extensions` the worker's providers can
    /// read from [`WorkerContext::extensions`](crate::WorkerContext::extensions).
    pub fn start_with(self, request: Req, data: ContextData, extensions: Extensions) -> WorkerHandle<Resp> {
        let (tx, rx) = oneshot::channel();
        let call = Call {
            data,
            extensions,
            args: self.args,
        };
        let cx = self.spawner.start(self.reserved, request, call, Deliver::Handle(tx));
        WorkerHandle { cx, rx }
    }

    /// Starts the worker and hands its result to `then` in the worker's own task,
    /// right after `worker_teardown` and after its slot is freed: no hop back to the
    /// caller. An entrypoint acknowledges its message or sends its reply there. The
    /// container's graceful stop waits for `then` to finish; `kill` does not cancel it
    /// (it receives [`WorkerError::Killed`]).
    ///
    /// ```
    /// # use nameko_core::{Binding, ContextData, Extensions};
    /// # async fn demo(binding: Binding<u32, u32>) -> Result<(), nameko_core::SpawnError> {
    /// let slot = binding.reserve().await?;
    /// slot.start_then(7, ContextData::new(), Extensions::new(), |result| async move {
    ///     match result {
    ///         Ok(value) => println!("the worker returned {value}"),
    ///         Err(err) => eprintln!("the worker failed: {err}"),
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_then<F, Fut>(self, request: Req, data: ContextData, extensions: Extensions, then: F)
    where
        F: FnOnce(Result<Resp, WorkerError>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let then: Then<Resp> = Box::new(move |result| Box::pin(then(result)));
        let call = Call {
            data,
            extensions,
            args: self.args,
        };
        self.spawner.start(self.reserved, request, call, Deliver::Then(then));
    }
}

impl<Req, Resp> fmt::Debug for WorkerSlot<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerSlot").finish_non_exhaustive()
    }
}

/// A running worker: await it for the worker's result, which arrives after
/// `worker_teardown`. Dropping it does not cancel the worker.
pub struct WorkerHandle<Resp> {
    pub(crate) cx: WorkerContext,
    pub(crate) rx: oneshot::Receiver<Result<Resp, WorkerError>>,
}

impl<Resp> WorkerHandle<Resp> {
    /// The worker's call id.
    pub fn call_id(&self) -> &str {
        self.cx.call_id()
    }
}

impl<Resp> Future for WorkerHandle<Resp> {
    type Output = Result<Resp, WorkerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(WorkerError::Killed)))
    }
}

impl<Resp> fmt::Debug for WorkerHandle<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("call_id", &self.cx.call_id())
            .finish_non_exhaustive()
    }
}
