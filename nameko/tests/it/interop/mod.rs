//! Interop with real Python Nameko 2.14.1 on RabbitMQ: Python callers and services
//! (`nameko/tests/interop/*.py`, run with `NAMEKO_TEST_PYTHON`) against Rust services
//! and clients, over the RabbitMQ at `NAMEKO_TEST_AMQP_URI`.
//!
//! Each test gets a [`RabbitMq`] fixture (its own `rpc_exchange`, clean-up of what it
//! declared) and runs its Rust services under names no other test uses; Python
//! services take their names from the environment, made unique with
//! [`RabbitMq::unique`]. Without RabbitMQ or the venv the tests print why and pass,
//! except under `CI=true`.

mod cluster;
mod events;
mod messaging;
mod poison;
mod rpc;

use std::{path::PathBuf, sync::Arc, time::Duration};

use nameko::{
    broker::Broker,
    core::{Config, ServiceRunner},
    rpc::ClusterRpc,
};
use nameko_testing::{PythonNameko, PythonService, RabbitMq};
use serde_json::Value;

/// A test's RabbitMQ and Python.
pub(crate) struct Interop {
    pub(crate) rabbit: RabbitMq,
    pub(crate) python: PythonNameko,
}

impl Interop {
    /// Both, or `None` (the reason printed) when either is missing.
    pub(crate) async fn new() -> Option<Self> {
        let python = PythonNameko::from_env()?;
        let rabbit = RabbitMq::from_env().await?;
        Some(Self { rabbit, python })
    }

    /// Starts `services:<class>` with `env`, ready when each queue has its consumers.
    pub(crate) async fn python_service(
        &self,
        class: &str,
        env: &[(&str, &str)],
        ready: &[(&str, u32)],
    ) -> PythonService {
        let mut builder = self
            .python
            .service(&self.rabbit, &format!("services:{class}"))
            .dir(dir());
        for (key, value) in env {
            builder = builder.env(*key, *value);
        }
        for (queue, consumers) in ready {
            builder = builder.ready_when(*queue, *consumers);
        }
        builder
            .start()
            .await
            .unwrap_or_else(|e| panic!("Python service {class}: {e}"))
    }

    /// Runs a script of `nameko/tests/interop` with `input` on stdin and decodes the
    /// JSON it prints.
    pub(crate) async fn script(&self, name: &str, input: &Value) -> Value {
        let out = self
            .python
            .script(&self.rabbit, dir().join(name))
            .stdin(input.to_string())
            .run()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{name} printed {out:?}: {e}"))
    }

    /// Calls through Python's `ClusterRpcProxy` (`rpc_client.py`).
    pub(crate) async fn python_calls(&self, request: Value) -> Vec<Value> {
        match self.script("rpc_client.py", &request).await {
            Value::Array(outcomes) => outcomes,
            other => panic!("rpc_client.py printed {other}"),
        }
    }

    /// A runner on the fixture's connection with its config plus `extra`.
    pub(crate) fn runner(&self, extra: Value) -> ServiceRunner {
        ServiceRunner::new(self.rabbit.config(extra))
            .resource::<dyn Broker>(self.rabbit.broker())
            .stop_timeout(Duration::from_secs(5))
    }

    /// The config Rust services and clients of this test use.
    pub(crate) fn config(&self) -> Config {
        self.rabbit.config(Value::Null)
    }

    /// A standalone Rust client; its reply queue is claimed for clean-up.
    pub(crate) async fn cluster_rpc(&self) -> ClusterRpc {
        let rpc = ClusterRpc::connect(self.rabbit.broker(), &self.config())
            .await
            .expect("a standalone RPC client");
        self.rabbit.claim_queue(rpc.client().reply_queue());
        rpc
    }

    /// Kills the Python services, stops the client, then deletes everything the test
    /// declared (nothing may re-declare it afterwards).
    pub(crate) async fn finish(self, python: Vec<PythonService>, rpc: Option<ClusterRpc>) {
        drop(python);
        if let Some(rpc) = rpc {
            rpc.client().stop().await;
        }
        self.rabbit
            .cleanup()
            .await
            .expect("the test's queues and exchanges deleted");
    }
}

/// The directory of the Python sources.
pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Polls `check` every 50 ms until it gives `Some`, for up to 20 s.
pub(crate) async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    for _ in 0..400 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A shared list of what Rust handlers saw.
/// Asserts that a `call_id_stack` (a JSON array) has one call id per prefix, each
/// starting with its prefix (`"<service>.<method>."`).
#[track_caller]
pub(crate) fn assert_stack(stack: &Value, prefixes: &[&str]) {
    let ids: Vec<&str> = stack
        .as_array()
        .unwrap_or_else(|| panic!("call_id_stack is not an array: {stack}"))
        .iter()
        .map(|id| {
            id.as_str()
                .unwrap_or_else(|| panic!("a call id is not a string: {stack}"))
        })
        .collect();
    assert_eq!(ids.len(), prefixes.len(), "{ids:?}");
    for (id, prefix) in ids.iter().zip(prefixes) {
        assert!(id.starts_with(prefix), "{id} should start with {prefix}: {ids:?}");
    }
}

pub(crate) type Seen = Arc<std::sync::Mutex<Vec<Value>>>;
