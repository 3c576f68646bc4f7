//! A hand-written probe service whose providers record every hook they run.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use nameko_core::{
    BoxError, Dependencies, Dependency, DependencyError, DependencyProvider, Entrypoints, Outcome, Provider,
    ProviderSlot, Providers, RemoteError, Service, SetupContext, SetupError, WorkerBuilder, WorkerContext,
    deps::{Lazy, UserId},
    entrypoints::{Dummy, Once},
};
use tokio::sync::Semaphore;

/// The shared log every recorder writes to; a runner resource.
#[derive(Debug)]
pub(crate) struct Log {
    lines: Mutex<Vec<String>>,
    pub(crate) gate: Semaphore,
    pub(crate) running: AtomicUsize,
    pub(crate) peak: AtomicUsize,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            lines: Mutex::default(),
            gate: Semaphore::new(0),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }
}

impl Log {
    pub(crate) fn push(&self, line: impl Into<String>) {
        self.lines.lock().unwrap().push(line.into());
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Lines of one worker, by the call id recorders prefix them with.
    pub(crate) fn of(&self, call_id: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix(&format!("{call_id} ")).map(str::to_owned))
            .collect()
    }

    /// The call id of the first worker of `method` that wrote to the log.
    pub(crate) fn call_of(&self, method: &str) -> String {
        let prefix = format!("probe.{method}.");
        let line = self
            .lines()
            .into_iter()
            .find(|l| l.starts_with(&prefix))
            .expect("the method ran");
        line.split(' ').next().expect("lines start with a call id").to_owned()
    }

    pub(crate) fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }
}

/// A field whose provider records its hooks.
pub(crate) struct Rec {
    pub(crate) log: Arc<Log>,
    pub(crate) call_id: String,
}

impl Rec {
    pub(crate) fn note(&self, what: &str) {
        self.log.push(format!("{} {what}", self.call_id));
    }
}

#[derive(Default)]
pub(crate) struct Recorder {
    field: &'static str,
    log: Option<Arc<Log>>,
    fail_get: bool,
}

impl Recorder {
    pub(crate) fn failing() -> Self {
        Self {
            fail_get: true,
            ..Self::default()
        }
    }
}

fn outcome_name(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Success => "success".into(),
        Outcome::Failure(err) => format!("failure({})", err.remote().exc_type()),
        Outcome::Panicked(_) => "panicked".into(),
        _ => "other".into(),
    }
}

impl DependencyProvider for Recorder {
    type Output = Rec;
    /// The call id the provider saw at `get_dependency`: proves the state reaches the
    /// later hooks of the same worker.
    type State = String;

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        self.field = cx.field_name().expect("a provider has a field");
        self.log = Some(cx.resource::<Log>()?);
        Ok(())
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(Rec, String), BoxError> {
        let log = self.log.clone().expect("set up");
        if self.fail_get {
            return Err("the pool is exhausted".into());
        }
        log.push(format!("{} get:{}", cx.call_id(), self.field));
        Ok((
            Rec {
                log,
                call_id: cx.call_id().to_owned(),
            },
            cx.call_id().to_owned(),
        ))
    }

    async fn worker_setup(&self, cx: &WorkerContext, state: &mut String) {
        assert_eq!(state, cx.call_id());
        self.log().push(format!("{state} setup:{}", self.field));
    }

    async fn worker_result(&self, _cx: &WorkerContext, state: &mut String, outcome: &Outcome) {
        self.log()
            .push(format!("{state} result:{}:{}", self.field, outcome_name(outcome)));
    }

    async fn worker_teardown(&self, _cx: &WorkerContext, state: String) {
        self.log().push(format!("{state} teardown:{}", self.field));
    }

    async fn stop(&self) {
        self.log().push(format!("stop:{}", self.field));
    }

    fn kill(&self) {
        self.log().push(format!("kill:{}", self.field));
    }
}

impl Recorder {
    fn log(&self) -> &Log {
        self.log.as_deref().expect("set up")
    }
}

impl Dependency for Rec {
    type Provider = Recorder;

    fn provider() -> Recorder {
        Recorder::default()
    }
}

/// The probe service: two recorded fields, a lazy one, and context data.
pub(crate) struct Probe {
    pub(crate) a: Rec,
    #[expect(dead_code, reason = "present for its provider's hooks")]
    pub(crate) b: Rec,
    pub(crate) lazy: Lazy<Rec>,
    pub(crate) user: UserId,
    pub(crate) cx: WorkerContext,
}

pub(crate) struct ProbeProviders {
    pub(crate) a: Provider<Rec>,
    pub(crate) b: Provider<Rec>,
    pub(crate) lazy: Provider<Lazy<Rec>>,
    pub(crate) user: Provider<UserId>,
    pub(crate) cx: Provider<WorkerContext>,
}

impl Providers for ProbeProviders {
    type Worker = Probe;

    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
        vec![
            ("a", &mut self.a),
            ("b", &mut self.b),
            ("lazy", &mut self.lazy),
            ("user", &mut self.user),
            ("cx", &mut self.cx),
        ]
    }

    async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<Probe, DependencyError> {
        Ok(Probe {
            a: b.get(&self.a).await?,
            b: b.get(&self.b).await?,
            lazy: b.get(&self.lazy).await?,
            user: b.get(&self.user).await?,
            cx: b.get(&self.cx).await?,
        })
    }
}

impl Dependencies for Probe {
    type Providers = ProbeProviders;

    fn providers() -> ProbeProviders {
        ProbeProviders {
            a: Provider::of(),
            b: Provider::of(),
            lazy: Provider::of(),
            user: Provider::of(),
            cx: Provider::of(),
        }
    }
}

impl Probe {
    async fn ok(&self, text: String) -> Result<String, RemoteError> {
        self.a.note("handler");
        Ok(format!("ok {text}"))
    }

    async fn fail(&self) -> Result<String, RemoteError> {
        self.a.note("handler");
        Err(RemoteError::new("Nope", "it failed"))
    }

    async fn boom(&self) -> Result<String, RemoteError> {
        self.a.note("handler");
        panic!("kaboom");
    }

    /// Waits for a permit of the log's gate, counting concurrent workers.
    async fn gated(&self) -> Result<String, RemoteError> {
        let log = &self.a.log;
        let now = log.running.fetch_add(1, Ordering::SeqCst) + 1;
        log.peak.fetch_max(now, Ordering::SeqCst);
        log.gate.acquire().await.expect("open").forget();
        log.running.fetch_sub(1, Ordering::SeqCst);
        self.a.note("handler");
        Ok("through".into())
    }

    /// Sleeps a little, counting concurrent workers.
    async fn busy(&self) -> Result<(), RemoteError> {
        let log = &self.a.log;
        let now = log.running.fetch_add(1, Ordering::SeqCst) + 1;
        log.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
        log.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    async fn use_lazy(&self) -> Result<(), BoxError> {
        self.lazy.get().await?.note("lazy handler");
        Ok(())
    }

    async fn who(&self) -> Result<Option<serde_json::Value>, RemoteError> {
        Ok(self.user.value().cloned())
    }

    async fn started(&self) -> Result<(), RemoteError> {
        self.a.note("once");
        Ok(())
    }
}

impl Service for Probe {
    const NAME: &'static str = "probe";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("ok", Dummy::<String, String>::new(), |w: Probe, text| async move {
            w.ok(text).await
        })
        .add("fail", Dummy::<(), String>::new(), |w: Probe, ()| async move {
            w.fail().await
        })
        .add("boom", Dummy::<(), String>::new(), |w: Probe, ()| async move {
            w.boom().await
        })
        .add("gated", Dummy::<(), String>::new(), |w: Probe, ()| async move {
            w.gated().await
        })
        .add(
            "busy",
            Dummy::<(), ()>::new(),
            |w: Probe, ()| async move { w.busy().await },
        )
        .add("use_lazy", Dummy::<(), ()>::new(), |w: Probe, ()| async move {
            w.use_lazy().await
        })
        .add(
            "who",
            Dummy::<(), Option<serde_json::Value>>::new(),
            |w: Probe, ()| async move { w.who().await },
        )
        .add("stack", Dummy::<(), WorkerContext>::new(), |w: Probe, ()| async move {
            Ok::<_, RemoteError>(w.cx)
        })
        .add("started", Once::<()>::new(()), |w: Probe, ()| async move {
            w.started().await
        });
    }
}
