//! The worker lifecycle, written once: build the worker, run the hooks and the
//! handler in a task the container owns, deliver the result.

use std::{future::Future, marker::PhantomData, panic::AssertUnwindSafe, pin::Pin, sync::Arc};

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    config::Config,
    context::{ContextData, EntrypointInfo, Extensions, WorkerContext},
    dependency::{Outcome, Providers, WorkerBuilder},
    entrypoint::{Call, Deliver, Reserved, Spawner},
    error::{IntoHandlerError, SpawnError, WorkerError},
    metrics::{EntrypointStats, Metrics},
    service::{Hook, Service},
    util::panic_message,
};

pub use self::report::{WorkerOutcome, WorkerReport};

mod report {
    use crate::{RemoteError, WorkerContext, WorkerError};

    /// How a finished worker ended, as [`WorkerReport`] tells it.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub enum WorkerOutcome {
        /// The handler returned `Ok`.
        Success,
        /// The handler returned an error (or a dependency failed).
        Failure {
            /// The error as it goes on the wire.
            error: RemoteError,
            /// Whether it was an expected error.
            expected: bool,
        },
        /// The handler or a hook panicked.
        Panicked(String),
        /// The container was killed while the worker ran.
        Killed,
    }

    /// A finished worker: which method, which call, how it ended. Sent to
    /// [`ServiceContainer::worker_reports`](crate::ServiceContainer::worker_reports)
    /// subscribers after `worker_teardown`.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct WorkerReport {
        /// The service.
        pub service: &'static str,
        /// The entrypoint's method.
        pub method: &'static str,
        /// The entrypoint's kind.
        pub kind: &'static str,
        /// The worker's call id.
        pub call_id: String,
        /// How it ended.
        pub outcome: WorkerOutcome,
    }

    impl WorkerReport {
        pub(crate) fn new<T>(cx: &WorkerContext, result: &Result<T, WorkerError>) -> Self {
            let outcome = match result {
                Ok(_) => WorkerOutcome::Success,
                Err(WorkerError::Failed(err)) => WorkerOutcome::Failure {
                    error: err.remote().clone(),
                    expected: err.is_expected(),
                },
                Err(WorkerError::Panicked(message)) => WorkerOutcome::Panicked(message.clone()),
                Err(_) => WorkerOutcome::Killed,
            };
            Self {
                service: cx.service_name(),
                method: cx.entrypoint().method(),
                kind: cx.entrypoint().kind(),
                call_id: cx.call_id().to_owned(),
                outcome,
            }
        }

        /// Whether the worker succeeded.
        pub fn is_success(&self) -> bool {
            self.outcome == WorkerOutcome::Success
        }
    }
}

/// What every worker of one container shares.
pub(crate) struct Core<S: Service> {
    pub(crate) config: Config,
    pub(crate) providers: S::Providers,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the container stops taking new work.
    pub(crate) stopping: CancellationToken,
    /// Cancelled when the container is killed: running workers are dropped.
    pub(crate) killed: CancellationToken,
    /// Every finished worker is reported here (to tests' waiters, to metrics).
    pub(crate) reports: broadcast::Sender<WorkerReport>,
    /// Which instance of the service this is (`2/3`), when a runner runs several.
    pub(crate) instance: Option<Arc<str>>,
    /// The runner's metrics, when `METRICS_ADDRESS` is set.
    pub(crate) metrics: Option<Arc<Metrics>>,
}

impl<S: Service> Core<S> {
    pub(crate) fn new(
        config: Config,
        providers: S::Providers,
        instance: Option<Arc<str>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let max_workers = config.max_workers();
        Self {
            config,
            providers,
            permits: Arc::new(Semaphore::new(max_workers)),
            tracker: TaskTracker::new(),
            stopping: CancellationToken::new(),
            killed: CancellationToken::new(),
            reports: broadcast::channel(1024).0,
            instance,
            metrics,
        }
    }

    /// Why no worker may start now: the container is killed or stopping.
    fn refusal(&self) -> Option<SpawnError> {
        if self.killed.is_cancelled() {
            Some(SpawnError::Killed)
        } else if self.stopping.is_cancelled() {
            Some(SpawnError::Stopping)
        } else {
            None
        }
    }

    /// Waits for a permit of `semaphore`, unless the container stops or is killed first.
    async fn acquire(&self, semaphore: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, SpawnError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        // A free permit needs no waiting: nothing to race against stop and kill.
        if let Ok(permit) = Arc::clone(semaphore).try_acquire_owned() {
            return Ok(permit);
        }
        tokio::select! {
            biased;
            () = self.killed.cancelled() => Err(SpawnError::Killed),
            () = self.stopping.cancelled() => Err(SpawnError::Stopping),
            permit = Arc::clone(semaphore).acquire_owned() => Ok(permit.expect("worker semaphores are never closed")),
        }
    }
}

/// Checks an entrypoint's own `max_workers`: at least 1 (0 would never run a worker),
/// at most what a semaphore holds.
pub(crate) fn check_max_workers(max_workers: usize) -> Result<(), String> {
    if max_workers == 0 {
        return Err("max_workers is 0: it would never run a worker; give it 1 or more".into());
    }
    if max_workers > Semaphore::MAX_PERMITS {
        return Err(format!(
            "max_workers is {max_workers}: more than the {} a limit can hold",
            Semaphore::MAX_PERMITS
        ));
    }
    Ok(())
}

/// Starts workers of one method with one handler.
pub(crate) struct MethodSpawner<S: Service, H, Req, Resp, Fut, Err> {
    core: Arc<Core<S>>,
    info: EntrypointInfo,
    own_permits: Option<Arc<Semaphore>>,
    handler: Arc<H>,
    /// The entrypoint's numbers, when the runner counts.
    stats: Option<Arc<EntrypointStats>>,
    _marker: PhantomData<fn(Req) -> (Resp, Fut, Err)>,
}

impl<S, H, Req, Resp, Fut, Err> MethodSpawner<S, H, Req, Resp, Fut, Err>
where
    S: Service,
{
    pub(crate) fn new(core: Arc<Core<S>>, info: EntrypointInfo, handler: H) -> Self {
        // An invalid limit (0, or more than a semaphore holds) makes no semaphore: the
        // container refuses to start such an entrypoint (`check_max_workers`).
        let own_permits = info
            .max_workers()
            .filter(|&n| check_max_workers(n).is_ok())
            .map(|n| Arc::new(Semaphore::new(n)));
        let stats = core
            .metrics
            .as_ref()
            .map(|metrics| metrics.entrypoint(S::NAME, info.method(), info.kind()));
        Self {
            core,
            info,
            own_permits,
            handler: Arc::new(handler),
            stats,
            _marker: PhantomData,
        }
    }
}

impl<S, H, Req, Resp, Fut, Err> Spawner<Req, Resp> for MethodSpawner<S, H, Req, Resp, Fut, Err>
where
    S: Service,
    H: Fn(S, Req) -> Fut + Send + Sync + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
    Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
    Err: IntoHandlerError,
{
    fn try_reserve(&self) -> Option<Result<Reserved, SpawnError>> {
        let core = &self.core;
        if let Some(refusal) = core.refusal() {
            return Some(Err(refusal));
        }
        let token = core.tracker.token();
        let own = match &self.own_permits {
            Some(semaphore) => Some(Arc::clone(semaphore).try_acquire_owned().ok()?),
            None => None,
        };
        let permit = Arc::clone(&core.permits).try_acquire_owned().ok()?;
        Some(Ok(Reserved {
            token,
            permits: (permit, own),
        }))
    }

    fn reserve(&self) -> Pin<Box<dyn Future<Output = Result<Reserved, SpawnError>> + Send + '_>> {
        Box::pin(async move {
            let core = &self.core;
            // Holding a tracker token from here on keeps a concurrent `stop` waiting for
            // this spawn to either start its worker or give up.
            let token = core.tracker.token();
            let own = match &self.own_permits {
                Some(semaphore) => Some(core.acquire(semaphore).await?),
                None => None,
            };
            let permit = core.acquire(&core.permits).await?;
            Ok(Reserved {
                token,
                permits: (permit, own),
            })
        })
    }

    fn start(&self, reserved: Reserved, request: Req, call: Call, deliver: Deliver<Resp>) -> WorkerContext {
        let core = Arc::clone(&self.core);
        let Call { data, extensions, args } = call;
        let cx = WorkerContext::with_call_args(S::NAME, self.info.clone(), data, core.config.clone(), extensions, args);
        let handle_cx = cx.clone();
        #[cfg(feature = "otel")]
        let otel = crate::otel::worker_context(&cx);
        let handler = Arc::clone(&self.handler);
        // The span covers the whole task, the entrypoint's continuation (reply, ack) too,
        // so every line a worker logs names its service, entrypoint, call id and trace id.
        let span = worker_span(&core, &cx);
        let stats = self.stats.clone();
        if let Some(stats) = &stats {
            stats.started();
        }
        tokio::spawn(
            async move {
                let Reserved { token, permits } = reserved;
                let started = std::time::Instant::now();
                // Borrowed, not cloned: a token's clone and drop each lock its shared node.
                // Boxed: the task's own future stays small, and the runtime moves it
                // several times (into its cell, through each stage) — a box is cheaper
                // than those copies of the handler's whole state.
                let lifecycle = Box::pin(run_lifecycle(&core, &*handler, &cx, request));
                #[cfg(feature = "otel")]
                let lifecycle = crate::otel::in_context(lifecycle, otel.clone());
                let result = tokio::select! {
                    biased;
                    () = core.killed.cancelled() => Err(WorkerError::Killed),
                    result = lifecycle => result,
                };
                #[cfg(feature = "otel")]
                crate::otel::finish(&otel, &result);
                drop(permits);
                let elapsed = started.elapsed();
                if let Some(stats) = &stats {
                    stats.finished(elapsed, result.is_ok());
                }
                log_finished(&result, elapsed);
                if core.reports.receiver_count() > 0 {
                    let _ = core.reports.send(WorkerReport::new(&cx, &result));
                }
                match deliver {
                    // The caller may have gone away; the worker ran to the end regardless.
                    Deliver::Handle(tx) => drop(tx.send(result)),
                    Deliver::Then(then) => then(result).await,
                }
                drop(token);
            }
            .instrument(span),
        );
        handle_cx
    }
}

/// The `worker` span: service, entrypoint, call id, trace id, and the instance when a
/// runner runs several. Display, not Debug: no escaping pass over every field.
fn worker_span<S: Service>(core: &Core<S>, cx: &WorkerContext) -> tracing::Span {
    let span = tracing::info_span!(
        "worker",
        service = %cx.service_name(),
        entrypoint = %cx.entrypoint().method(),
        call_id = %cx.call_id(),
        trace_id = %cx.trace_id(),
        instance = tracing::field::Empty,
    );
    if let Some(instance) = &core.instance {
        span.record("instance", tracing::field::display(&**instance));
    }
    span
}

/// Runs an `on_start`/`on_stop` hook on a worker of its own, through the whole
/// lifecycle (dependencies, hooks, result, teardown), in a `worker` span; no slot.
pub(crate) async fn run_hook<S: Service>(core: &Core<S>, hook: &Hook<S>) -> Result<(), WorkerError> {
    let info = EntrypointInfo::new(hook.name, hook.kind);
    let cx = WorkerContext::new(
        S::NAME,
        info,
        ContextData::new(),
        core.config.clone(),
        Extensions::new(),
    );
    let span = worker_span(core, &cx);
    let run = &hook.run;
    async {
        let started = std::time::Instant::now();
        let result = run_lifecycle(core, &|worker: S, ()| run(worker), &cx, ()).await;
        log_finished(&result, started.elapsed());
        result
    }
    .instrument(span)
    .await
}

/// The framework's per-call line (DEBUG): how the worker ended and how long it took,
/// hooks included. A killed worker is a WARN: the kill cut it short.
fn log_finished<T>(result: &Result<T, WorkerError>, elapsed: std::time::Duration) {
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    match result {
        Ok(_) => tracing::debug!(outcome = "success", duration_ms, "worker finished"),
        Err(WorkerError::Failed(err)) if err.is_expected() => {
            tracing::debug!(outcome = "expected failure", duration_ms, "worker finished");
        }
        Err(WorkerError::Failed(_)) => tracing::debug!(outcome = "failure", duration_ms, "worker finished"),
        Err(WorkerError::Panicked(_)) => tracing::debug!(outcome = "panic", duration_ms, "worker finished"),
        Err(_) => tracing::warn!(outcome = "killed", duration_ms, "worker killed"),
    }
}

/// The call's arguments for a log line: redacted, compact, cut when long.
fn logged_arguments(cx: &WorkerContext) -> Option<String> {
    cx.redacted_arguments()
        .map(|arguments| crate::redact::for_log(&arguments))
}

/// `get_dependency` for every field → `worker_setup` → handler → `worker_result` →
/// `worker_teardown`. Result and teardown always run; panics are caught.
async fn run_lifecycle<S, H, Req, Resp, Fut, Err>(
    core: &Core<S>,
    handler: &H,
    cx: &WorkerContext,
    request: Req,
) -> Result<Resp, WorkerError>
where
    S: Service,
    H: Fn(S, Req) -> Fut,
    Fut: Future<Output = Result<Resp, Err>>,
    Err: IntoHandlerError,
{
    if tracing::enabled!(tracing::Level::DEBUG) {
        let args = logged_arguments(cx);
        tracing::debug!(args = args.as_ref().map(tracing::field::display), "worker started");
    }
    let mut builder = WorkerBuilder::new(cx);
    let built = AssertUnwindSafe(core.providers.build(&mut builder))
        .catch_unwind()
        .await;
    let (outcome, value) = match built {
        Ok(Ok(worker)) => match builder.worker_setup().await {
            Ok(()) => match AssertUnwindSafe(async { handler(worker, request).await })
                .catch_unwind()
                .await
            {
                Ok(Ok(value)) => (Outcome::Success, Some(value)),
                Ok(Err(err)) => (Outcome::Failure(err.into_handler_error()), None),
                Err(panic) => (Outcome::Panicked(panic_message(&*panic)), None),
            },
            Err(message) => (Outcome::Panicked(message), None),
        },
        Ok(Err(err)) => (Outcome::Failure(err.into_handler_error()), None),
        Err(panic) => (
            Outcome::Panicked(format!("building the worker panicked: {}", panic_message(&*panic))),
            None,
        ),
    };
    match &outcome {
        Outcome::Success => {}
        Outcome::Failure(err) if err.is_expected() => {
            let args = logged_arguments(cx);
            tracing::warn!(error = %err, args = args.as_ref().map(tracing::field::display), "worker failed (expected)");
        }
        Outcome::Failure(err) => {
            let args = logged_arguments(cx);
            tracing::error!(error = %err, args = args.as_ref().map(tracing::field::display), "worker failed");
        }
        Outcome::Panicked(message) => {
            let args = logged_arguments(cx);
            tracing::error!(panic = %message, args = args.as_ref().map(tracing::field::display), "worker panicked");
        }
    }
    builder.finish(&outcome).await;
    match (outcome, value) {
        (Outcome::Success, Some(value)) => Ok(value),
        (Outcome::Failure(err), _) => Err(WorkerError::Failed(err)),
        (Outcome::Panicked(message), _) => Err(WorkerError::Panicked(message)),
        (Outcome::Success, None) => unreachable!("a successful worker always has a value"),
    }
}
