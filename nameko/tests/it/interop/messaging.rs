//! `Publisher` and `@consume` both ways: a Python `Publisher` (in a worker) to a Rust
//! `#[consume]` queue, and a Rust `Publisher` to a Python `@consume` queue, on one
//! topic exchange both sides declare alike.

use std::sync::Arc;

use nameko::core::ContextData;
use nameko::messaging::{PublishError, PublishOptions, Publisher};
use nameko::prelude::*;
use serde_json::{Value, json};

use super::{Interop, Seen, eventually};

const EXCHANGE: &str = "interop_msg_exchange";

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Messages {
    cx: WorkerContext,
    seen: Dep<std::sync::Mutex<Vec<Value>>>,
    #[dependency(exchange = "interop_msg_exchange", exchange_type = "topic")]
    publish: Publisher,
}

#[nameko::service(name = "interop_msg_rust")]
impl Messages {
    #[consume(
        queue = "interop_msg_rust",
        exchange = "interop_msg_exchange",
        exchange_type = "topic",
        routing_key = "to_rust.*"
    )]
    async fn receive(&self, payload: Value) -> Result<(), RemoteError> {
        self.seen.lock().unwrap().push(json!({
            "payload": payload,
            "user_id": self.cx.data().user_id(),
            "call_id_stack": self.cx.call_id_stack(),
        }));
        Ok(())
    }

    #[rpc]
    async fn send(&self, routing_key: String, payload: Value) -> Result<(), PublishError> {
        self.publish
            .publish(&payload, PublishOptions::new().routing_key(routing_key))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_consume_both_ways_with_python() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_msg_rust");
    t.rabbit.claim_queue("interop_msg_rust");
    t.rabbit.claim_exchange(EXCHANGE);
    let seen: Seen = Arc::default();
    let running = t
        .runner(Value::Null)
        .resource(Arc::clone(&seen))
        .with_service::<Messages>()
        .start()
        .await
        .unwrap();
    let messenger = t.rabbit.unique("py_messenger");
    let py_queue = t.rabbit.unique("py_consume");
    let python = t
        .python_service(
            "Messenger",
            &[
                ("MESSENGER_NAME", &messenger),
                ("MSG_EXCHANGE", EXCHANGE),
                ("MSG_PY_QUEUE", &py_queue),
            ],
            &[(&format!("rpc-{messenger}"), 1), (&py_queue, 1)],
        )
        .await;
    let rpc = t
        .cluster_rpc()
        .await
        .with_data(ContextData::new().with("user_id", "ada"));

    // Python's Publisher, in a worker, to the Rust consumer.
    rpc.call(&messenger, "send", json!(["to_rust.hello", {"n": 1}]))
        .await
        .unwrap();
    let entry = eventually("the Rust consumer ran", || {
        let first = seen.lock().unwrap().first().cloned();
        async move { first }
    })
    .await;
    assert_eq!(entry["payload"], json!({"n": 1}));
    assert_eq!(entry["user_id"], "ada", "{entry}");
    super::assert_stack(
        &entry["call_id_stack"],
        &[
            "standalone_rpc_proxy.call.",
            &format!("{messenger}.send."),
            "interop_msg_rust.receive.",
        ],
    );

    // The Rust Publisher, in a worker, to Python's @consume.
    rpc.call("interop_msg_rust", "send", json!(["to_python.hi", {"n": 2}]))
        .await
        .unwrap();
    // And a standalone one, no worker: only a trace id as context.
    Publisher::standalone(t.rabbit.broker())
        .exchange(nameko::broker::Exchange::topic(EXCHANGE))
        .publish(
            &json!({"n": 3}),
            PublishOptions::new().routing_key("to_python.standalone"),
        )
        .await
        .unwrap();
    let received = eventually("two messages in Python", || {
        let rpc = rpc.clone();
        let messenger = messenger.clone();
        async move {
            let received = rpc.call(&messenger, "received", Value::Null).await.unwrap();
            (received.as_array().unwrap().len() >= 2).then_some(received)
        }
    })
    .await;
    let received = received.as_array().unwrap();
    assert_eq!(received.len(), 2, "{received:#?}");
    let from_worker = received.iter().find(|e| e["payload"] == json!({"n": 2})).unwrap();
    assert_eq!(from_worker["data"]["user_id"], "ada", "{from_worker}");
    super::assert_stack(
        &from_worker["call_id_stack"],
        &[
            "standalone_rpc_proxy.call.",
            "interop_msg_rust.send.",
            &format!("{messenger}.receive."),
        ],
    );
    let standalone = received.iter().find(|e| e["payload"] == json!({"n": 3})).unwrap();
    assert!(standalone["data"]["trace_id"].is_string(), "{standalone}");
    assert_eq!(standalone["call_id_stack"].as_array().unwrap().len(), 1, "{standalone}");
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing for Rust on to_python.*");

    running.stop().await;
    t.finish(vec![python], Some(rpc)).await;
}
