//! `#[on_start]`/`#[on_stop]`: when they run, with what, and what a failure does.

use std::sync::{Arc, Mutex};

use nameko::core::{BoxError, SetupContext, SetupError};
use nameko::prelude::*;
use nameko_testing::ServiceHarness;

/// What the journal's provider and the hooks record, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, line: impl Into<String>) {
        self.0.lock().unwrap().push(line.into());
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A dependency recording each worker's result (as a committing provider would) and
/// its provider's stop.
struct Journal {
    log: Arc<Log>,
    entry: String,
}

impl Journal {
    fn write(&self, what: &str) {
        self.log.push(format!("{}: {what}", self.entry));
    }
}

#[derive(Default)]
struct JournalProvider {
    log: Option<Arc<Log>>,
}

impl DependencyProvider for JournalProvider {
    type Output = Journal;
    type State = String;

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        self.log = Some(cx.resource::<Log>()?);
        Ok(())
    }

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(Journal, String), BoxError> {
        let entry = format!("{} {}", cx.entrypoint().kind(), cx.entrypoint().method());
        let log = Arc::clone(self.log.as_ref().expect("set up"));
        Ok((
            Journal {
                log,
                entry: entry.clone(),
            },
            entry,
        ))
    }

    async fn worker_result(&self, _: &WorkerContext, entry: &mut String, outcome: &Outcome) {
        let result = if matches!(outcome, Outcome::Success) {
            "committed"
        } else {
            "rolled back"
        };
        self.log.as_ref().expect("set up").push(format!("{entry}: {result}"));
    }

    async fn stop(&self) {
        self.log.as_ref().expect("set up").push("journal provider stopped");
    }
}

impl Dependency for Journal {
    type Provider = JournalProvider;

    fn provider() -> JournalProvider {
        JournalProvider::default()
    }
}

#[derive(nameko::Dependencies)]
struct Hooked {
    journal: Journal,
}

#[nameko::service(name = "hooked")]
impl Hooked {
    #[on_start]
    async fn warm_up(&self) -> Result<(), RemoteError> {
        self.journal.write("warming up");
        Ok(())
    }

    #[on_stop]
    async fn flush(&self) -> Result<(), RemoteError> {
        self.journal.write("flushing");
        Ok(())
    }

    #[rpc]
    async fn ping(&self) -> Result<String, RemoteError> {
        self.journal.write("ping");
        Ok("pong".to_owned())
    }
}

#[derive(nameko::Dependencies)]
struct Cold {
    journal: Journal,
}

#[nameko::service(name = "cold")]
impl Cold {
    #[on_start]
    async fn warm_up(&self) -> Result<(), RemoteError> {
        self.journal.write("warming up");
        Err(RemoteError::new("NotWarm", "the cache is cold"))
    }

    #[rpc]
    async fn ping(&self) -> Result<String, RemoteError> {
        Ok("pong".to_owned())
    }
}

#[tokio::test]
async fn hooks_run_on_workers_around_the_entrypoints() {
    let log = Arc::new(Log::default());
    let harness = ServiceHarness::builder::<Hooked>()
        .resource(Arc::clone(&log))
        .start()
        .await
        .unwrap();
    // on_start ran before the harness could call anything, with its dependency, through
    // the whole worker lifecycle.
    assert_eq!(
        log.lines(),
        ["on_start warm_up: warming up", "on_start warm_up: committed"]
    );
    assert_eq!(harness.rpc("ping", serde_json::json!([])).await.unwrap(), "pong");
    harness.stop().await;
    assert_eq!(
        log.lines()[2..],
        [
            "rpc ping: ping",
            "rpc ping: committed",
            "on_stop flush: flushing",
            "on_stop flush: committed",
            "journal provider stopped",
        ]
    );
}

#[tokio::test]
async fn a_failing_on_start_fails_the_start_naming_the_hook() {
    let log = Arc::new(Log::default());
    let err = ServiceHarness::builder::<Cold>()
        .resource(Arc::clone(&log))
        .start()
        .await
        .expect_err("the hook fails");
    let message = err.to_string();
    assert!(
        message.contains("service `cold`: on_start hook `warm_up` failed") && message.contains("the cache is cold"),
        "{message}"
    );
    assert_eq!(
        log.lines(),
        ["on_start warm_up: warming up", "on_start warm_up: rolled back"]
    );
}

#[tokio::test]
async fn a_kill_skips_on_stop() {
    let log = Arc::new(Log::default());
    let harness = ServiceHarness::builder::<Hooked>()
        .resource(Arc::clone(&log))
        .start()
        .await
        .unwrap();
    harness.kill();
    assert!(!log.lines().iter().any(|l| l.contains("flush")), "{:?}", log.lines());
}

#[tokio::test]
async fn the_worker_factory_runs_no_hook() {
    // Hooks are methods: a unit test calls them itself.
    let log = Arc::new(Log::default());
    let worker = Hooked::worker_factory()
        .journal(Journal {
            log: Arc::clone(&log),
            entry: "test".to_owned(),
        })
        .build();
    assert!(log.lines().is_empty());
    worker.warm_up().await.unwrap();
    assert_eq!(log.lines(), ["test: warming up"]);
}
