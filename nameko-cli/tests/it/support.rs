//! Two hand-written services registered with `inventory`, and a probe resource that
//! records what their workers did.

use std::{
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use nameko_cli::{Cli, SignalSender, Signals};
use nameko_core::{
    BoxError, Dependencies, DependencyError, Entrypoints, Provider, ProviderSlot, Providers, RemoteError, Resources,
    Service, WorkerBuilder,
    deps::Dep,
    entrypoints::{Dummy, Once},
};
use nameko_extensions::broker::Broker;
use tokio::sync::Semaphore;

/// What the `start` worker of `cli-probe` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Records and returns.
    Quick,
    /// Waits for the probe's gate, then records `finished`.
    Gated,
    /// Never returns: only a kill ends it.
    Stuck,
}

/// A runner resource the services write to.
#[derive(Debug)]
pub(crate) struct Probe {
    mode: Mode,
    events: Mutex<Vec<String>>,
    brokers: Mutex<Vec<usize>>,
    pub(crate) gate: Semaphore,
}

impl Probe {
    pub(crate) fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode,
            events: Mutex::default(),
            brokers: Mutex::default(),
            gate: Semaphore::new(0),
        })
    }

    fn record(&self, event: impl Into<String>) {
        self.events.lock().unwrap().push(event.into());
    }

    pub(crate) fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// The addresses of the brokers the workers were given.
    pub(crate) fn brokers(&self) -> Vec<usize> {
        self.brokers.lock().unwrap().clone()
    }

    /// Waits until `event` was recorded (panics after 5 s).
    pub(crate) async fn wait_for(&self, event: &str) {
        for _ in 0..1000 {
            if self.events().iter().any(|e| e == event) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("`{event}` never happened; events: {:?}", self.events());
    }

    fn saw_broker(&self, broker: &Dep<dyn Broker>) {
        let address = Arc::as_ptr(broker.arc()).cast::<()>() as usize;
        self.brokers.lock().unwrap().push(address);
    }
}

// ===== cli-probe: a `once` worker and a `dummy` =====

pub(crate) struct ProbeService {
    probe: Dep<Probe>,
    broker: Dep<dyn Broker>,
}

pub(crate) struct ProbeProviders {
    probe: Provider<Dep<Probe>>,
    broker: Provider<Dep<dyn Broker>>,
}

impl Providers for ProbeProviders {
    type Worker = ProbeService;

    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
        vec![("probe", &mut self.probe), ("broker", &mut self.broker)]
    }

    async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<ProbeService, DependencyError> {
        Ok(ProbeService {
            probe: b.get(&self.probe).await?,
            broker: b.get(&self.broker).await?,
        })
    }
}

impl Dependencies for ProbeService {
    type Providers = ProbeProviders;

    fn providers() -> ProbeProviders {
        ProbeProviders {
            probe: Provider::of(),
            broker: Provider::of(),
        }
    }
}

impl ProbeService {
    async fn start(&self) -> Result<(), RemoteError> {
        self.probe.saw_broker(&self.broker);
        self.probe.record("cli-probe started");
        match self.probe.mode {
            Mode::Quick => {}
            Mode::Gated => {
                let permit = self.probe.gate.acquire().await;
                drop(permit);
            }
            Mode::Stuck => std::future::pending::<()>().await,
        }
        self.probe.record("cli-probe finished");
        Ok(())
    }
}

impl Service for ProbeService {
    const NAME: &'static str = "cli-probe";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("start", Once::<()>::new(()), |w: ProbeService, ()| async move {
            w.start().await
        })
        .add("ping", Dummy::<(), ()>::new(), |_: ProbeService, ()| async {
            Ok::<_, RemoteError>(())
        });
    }
}

pub(crate) const PROBE_LINE: u32 = line!() + 1;
nameko_core::register_service!(ProbeService);

// ===== cli-other: records the broker it was given =====

pub(crate) struct OtherService {
    probe: Dep<Probe>,
    broker: Dep<dyn Broker>,
}

pub(crate) struct OtherProviders {
    probe: Provider<Dep<Probe>>,
    broker: Provider<Dep<dyn Broker>>,
}

impl Providers for OtherProviders {
    type Worker = OtherService;

    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
        vec![("probe", &mut self.probe), ("broker", &mut self.broker)]
    }

    async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<OtherService, DependencyError> {
        Ok(OtherService {
            probe: b.get(&self.probe).await?,
            broker: b.get(&self.broker).await?,
        })
    }
}

impl Dependencies for OtherService {
    type Providers = OtherProviders;

    fn providers() -> OtherProviders {
        OtherProviders {
            probe: Provider::of(),
            broker: Provider::of(),
        }
    }
}

impl Service for OtherService {
    const NAME: &'static str = "cli-other";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("hello", Once::<()>::new(()), |w: OtherService, ()| async move {
            w.probe.saw_broker(&w.broker);
            w.probe.record("cli-other started");
            Ok::<_, RemoteError>(())
        });
    }
}

nameko_core::register_service!(OtherService);

// ===== driving the CLI =====

/// What one `run_from` printed and returned.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) code: ExitCode,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// A CLI whose resources hook gives `probe`.
pub(crate) fn cli_with(probe: &Arc<Probe>) -> Cli {
    let probe = Arc::clone(probe);
    Cli::new().resources(move |_config| async move {
        probe.record("resources hook");
        Ok::<_, BoxError>(Resources::new().with::<Probe>(probe))
    })
}

/// Runs `cli` with `args` (after the program name) and `signals`.
pub(crate) async fn run(cli: Cli, args: &[&str], signals: Signals) -> Outcome {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let argv = std::iter::once("app").chain(args.iter().copied());
    let code = cli.run_from(argv, signals, &mut stdout, &mut stderr).await;
    Outcome {
        code,
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// Runs a command that must not wait for signals.
pub(crate) async fn run_now(cli: Cli, args: &[&str]) -> Outcome {
    let (sender, signals) = Signals::channel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), run(cli, args, signals))
        .await
        .expect("the command returned without a signal");
    drop(sender);
    outcome
}

/// A sender and its signals.
pub(crate) fn signals() -> (SignalSender, Signals) {
    Signals::channel()
}
