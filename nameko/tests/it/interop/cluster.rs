//! One cluster, two languages: a Rust and a Python instance of the same service
//! sharing its queue, and a call chain that crosses languages twice.

use nameko::prelude::*;
use nameko::rpc::ClusterRpc;
use serde_json::{Value, json};

use super::Interop;

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct SharedRust {}

#[nameko::service(name = "interop_shared")]
impl SharedRust {
    #[rpc]
    async fn which(&self) -> Result<&'static str, RemoteError> {
        Ok("rust")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_and_a_python_instance_share_a_queue() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_shared");
    // The Python cluster was there first; the Rust instance joins its queue.
    let python = t
        .python_service(
            "Shared",
            &[("SHARED_NAME", "interop_shared")],
            &[("rpc-interop_shared", 1)],
        )
        .await;
    let running = t
        .runner(Value::Null)
        .with_service::<SharedRust>()
        .start()
        .await
        .unwrap();
    t.rabbit
        .wait_for_consumers("rpc-interop_shared", 2, std::time::Duration::from_secs(10))
        .await
        .unwrap();

    let rpc = t.cluster_rpc().await;
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(rpc.call("interop_shared", "which", Value::Null).await.unwrap());
    }
    assert!(
        answers.contains(&json!("rust")) && answers.contains(&json!("python")),
        "RabbitMQ hands the shared queue's requests to both: {answers:?}"
    );
    let call = json!({"service": "interop_shared", "method": "which"});
    let outcomes = t.python_calls(json!({"calls": vec![call; 12]})).await;
    assert!(
        outcomes.contains(&json!({"result": "rust"})) && outcomes.contains(&json!({"result": "python"})),
        "{outcomes:?}"
    );

    running.stop().await;
    t.finish(vec![python], Some(rpc)).await;
}

#[derive(nameko::Dependencies)]
pub(crate) struct ChainA {
    rpc: ClusterRpc,
}

#[nameko::service(name = "interop_chain_a")]
impl ChainA {
    /// Calls `via.hop()` (a Python service) and returns what it returns.
    #[rpc]
    async fn hop(&self, via: String) -> Result<Value, nameko::rpc::RpcError> {
        self.rpc.call(&via, "hop", Value::Null).await
    }
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct ChainC {
    cx: WorkerContext,
}

#[nameko::service(name = "interop_chain_c")]
impl ChainC {
    #[rpc]
    async fn stack(&self) -> Result<Value, RemoteError> {
        Ok(json!({
            "call_id_stack": self.cx.call_id_stack(),
            "trace_id": self.cx.trace_id(),
            "user_id": self.cx.data().user_id(),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_hop_chain_mixes_both_languages() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_chain_a");
    t.rabbit.claim_service("interop_chain_c");
    let running = t
        .runner(Value::Null)
        .with_service::<ChainA>()
        .with_service::<ChainC>()
        .start()
        .await
        .unwrap();
    let hop = t.rabbit.unique("py_hop");
    let python = t
        .python_service(
            "Hop",
            &[("HOP_NAME", &hop), ("HOP_NEXT", "interop_chain_c")],
            &[(&format!("rpc-{hop}"), 1)],
        )
        .await;

    // Python client → Rust interop_chain_a.hop → Python <hop>.hop → Rust interop_chain_c.stack
    let outcomes = t
        .python_calls(json!({
            "context": {"user_id": "u-chain", "trace_id": "chain-trace"},
            "calls": [{"service": "interop_chain_a", "method": "hop", "args": [hop]}],
        }))
        .await;
    let end = &outcomes[0]["result"];
    assert_eq!(end["trace_id"], "chain-trace", "{outcomes:?}");
    assert_eq!(end["user_id"], "u-chain", "{outcomes:?}");
    let stack: Vec<&str> = end["call_id_stack"]
        .as_array()
        .unwrap_or_else(|| panic!("{outcomes:?}"))
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    let prefixes = [
        "standalone_rpc_proxy.call.".to_owned(),
        "interop_chain_a.hop.".to_owned(),
        format!("{hop}.hop."),
        "interop_chain_c.stack.".to_owned(),
    ];
    assert_eq!(stack.len(), prefixes.len(), "{stack:?}");
    for (id, prefix) in stack.iter().zip(&prefixes) {
        assert!(
            id.starts_with(prefix.as_str()),
            "{id} should start with {prefix}: {stack:?}"
        );
    }

    running.stop().await;
    t.finish(vec![python], None).await;
}

/// The same service, asking for a quorum queue.
#[derive(Debug, nameko::Dependencies)]
pub(crate) struct QuorumRust {}

#[nameko::service(name = "interop_qq_shared")]
impl QuorumRust {
    #[rpc(queue_type = "quorum")]
    async fn which(&self) -> Result<&'static str, RemoteError> {
        Ok("rust")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_rpc_queue_cannot_join_a_python_service() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_qq_shared");
    // Python Nameko declares `rpc-interop_qq_shared` classic; a quorum queue of the same
    // name cannot be declared beside it, and the start says why.
    let python = t
        .python_service(
            "Shared",
            &[("SHARED_NAME", "interop_qq_shared")],
            &[("rpc-interop_qq_shared", 1)],
        )
        .await;
    let err = match t.runner(Value::Null).with_service::<QuorumRust>().start().await {
        Ok(running) => {
            running.stop().await;
            panic!("a quorum declare of Python's classic queue succeeded");
        }
        Err(err) => crate::quorum::with_causes(&err),
    };
    assert!(
        err.contains("inequivalent arg 'x-queue-type' for queue 'rpc-interop_qq_shared'")
            && err.contains("already exists as a classic queue")
            && err.contains("a Python Nameko instance (Nameko declares classic queues only)"),
        "{err}"
    );
    // The Python instance goes on serving from its classic queue.
    let rpc = t.cluster_rpc().await;
    assert_eq!(
        rpc.call("interop_qq_shared", "which", json!([])).await.unwrap(),
        "python"
    );
    t.finish(vec![python], Some(rpc)).await;
}
