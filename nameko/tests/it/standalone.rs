//! Standalone clients — any tokio program calling a cluster: untyped `ClusterRpc`,
//! typed `Rpc<dyn Trait>`, the standalone event dispatcher.

use std::time::Duration;

use nameko::prelude::*;
use nameko::{
    broker::Broker,
    events::EventDispatcher,
    memory::MemoryBroker,
    rpc::{ClusterRpc, Rpc, RpcError},
};
use serde_json::{Value, json};

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Echo {
    cx: WorkerContext,
    user: UserId,
}

#[nameko::service(name = "echo")]
impl Echo {
    #[rpc]
    pub(crate) async fn whoami(&self) -> Result<Value, RemoteError> {
        Ok(json!({ "user": self.user.value(), "stack": self.cx.call_id_stack() }))
    }

    #[rpc]
    pub(crate) async fn double(&self, x: i64) -> Result<i64, RemoteError> {
        Ok(2 * x)
    }
}

#[nameko::rpc_client(service = "echo")]
pub(crate) trait EchoClient {
    async fn double(&self, x: i64) -> Result<i64, RpcError>;
}

#[tokio::test]
async fn a_standalone_cluster_client_calls_with_its_own_context() {
    let broker = MemoryBroker::new();
    let running = ServiceRunner::new(Config::default())
        .resource::<dyn Broker>(broker.shared())
        .with_service::<Echo>()
        .start()
        .await
        .unwrap();

    let rpc = ClusterRpc::connect(broker.shared(), &Config::default())
        .await
        .unwrap()
        .with_data(ContextData::new().with("user_id", "u-42"));
    let reply = rpc.call("echo", "whoami", Value::Null).await.unwrap();
    assert_eq!(reply["user"], "u-42");
    let stack = reply["stack"].as_array().unwrap();
    assert_eq!(stack.len(), 2, "{stack:?}");
    assert!(stack[0].as_str().unwrap().starts_with("standalone_rpc_proxy.call."));
    assert!(stack[1].as_str().unwrap().starts_with("echo.whoami."));

    let typed = Rpc::<dyn EchoClient>::standalone(&rpc);
    assert_eq!(typed.double(21).await.unwrap(), 42);
    let pending = typed.double_async(5).await.unwrap();
    assert_eq!(pending.await.unwrap(), 10);

    let short = rpc.with_timeout(Some(Duration::from_millis(1)));
    running.stop().await;
    let err = short.call("echo", "double", json!([1])).await.unwrap_err();
    assert!(
        matches!(err, RpcError::Timeout { .. }),
        "a stopped service does not answer: {err:?}"
    );
    rpc.client().stop().await;
}

#[tokio::test]
async fn the_standalone_dispatcher_declares_and_drops_unheard_events() {
    let broker = MemoryBroker::new();
    let dispatcher = EventDispatcher::standalone(broker.shared(), "src", &Config::default());
    // Nobody listens: the event is dropped, as with Nameko, and that is not an error.
    dispatcher.dispatch("nobody_listens", &json!({"x": 1})).await.unwrap();
    assert!(broker.list_exchanges().iter().any(|e| e.name == "src.events"));
}
