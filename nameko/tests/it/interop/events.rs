//! Events both ways: Python's `event_dispatcher` and a Python service's
//! `EventDispatcher` to Rust handlers of each handler type, and a Rust dispatcher to
//! Python `@event_handler`s of each type.

use std::{sync::Arc, time::Duration};

use nameko::events::{DispatchError, EventDispatcher};
use nameko::prelude::*;
use serde_json::{Value, json};

use super::{Interop, Seen, eventually};

/// What one Rust instance's handlers saw.
#[derive(Debug)]
pub(crate) struct Recorder {
    instance: &'static str,
    seen: Seen,
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Handlers {
    cx: WorkerContext,
    recorder: Dep<Recorder>,
}

impl Handlers {
    fn record(&self, handler: &str, payload: Value) {
        let entry = json!({
            "handler": handler,
            "instance": self.recorder.instance,
            "payload": payload,
            "user_id": self.cx.data().user_id(),
            "trace_id": self.cx.trace_id(),
            "call_id_stack": self.cx.call_id_stack(),
        });
        self.recorder.seen.lock().unwrap().push(entry);
    }
}

#[nameko::service(name = "interop_evt_rust")]
impl Handlers {
    #[event_handler("interop_py_source", "ping")]
    async fn pool(&self, payload: Value) -> Result<(), RemoteError> {
        self.record("service_pool", payload);
        Ok(())
    }

    #[event_handler("interop_py_source", "ping", handler_type = "singleton")]
    async fn single(&self, payload: Value) -> Result<(), RemoteError> {
        self.record("singleton", payload);
        Ok(())
    }

    #[event_handler("interop_py_source", "ping", handler_type = "broadcast", reliable_delivery = false)]
    async fn everyone(&self, payload: Value) -> Result<(), RemoteError> {
        self.record("broadcast", payload);
        Ok(())
    }
}

fn count(seen: &Seen, handler: &str, n: i64) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|e| e["handler"] == handler && e["payload"]["n"] == n)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_events_reach_rust_handlers_of_each_type() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_py_source");
    t.rabbit.claim_service("interop_evt_rust");
    let seen: Seen = Arc::default();
    // Two instances of the Rust service, each on a connection of its own.
    let first = t
        .runner(Value::Null)
        .resource(Arc::new(Recorder {
            instance: "first",
            seen: Arc::clone(&seen),
        }))
        .with_service::<Handlers>()
        .start()
        .await
        .unwrap();
    let second = ServiceRunner::new(t.config())
        .resource::<dyn nameko::broker::Broker>(t.rabbit.new_connection().await.unwrap())
        .resource(Arc::new(Recorder {
            instance: "second",
            seen: Arc::clone(&seen),
        }))
        .with_service::<Handlers>()
        .start()
        .await
        .unwrap();
    let emitter = t
        .python_service(
            "Emitter",
            &[("EMITTER_NAME", "interop_py_source")],
            &[("rpc-interop_py_source", 1)],
        )
        .await;

    // 1: the standalone dispatcher (no context headers at all).
    let out = t
        .script(
            "dispatch.py",
            &json!({"events": [{"source": "interop_py_source", "type": "ping", "payload": {"n": 1}}]}),
        )
        .await;
    assert_eq!(out, "dispatched");
    // 2: from inside a Python worker called with context data.
    let outcomes = t
        .python_calls(json!({
            "context": {"user_id": "u-ev", "trace_id": "py-ev-trace"},
            "calls": [{"service": "interop_py_source", "method": "emit", "args": ["ping", {"n": 2}]}],
        }))
        .await;
    assert_eq!(outcomes, [json!({"result": null})]);

    for n in [1, 2] {
        eventually(&format!("event {n} handled by every handler type"), || {
            let done = count(&seen, "service_pool", n) >= 1
                && count(&seen, "singleton", n) >= 1
                && count(&seen, "broadcast", n) >= 2;
            async move { done.then_some(()) }
        })
        .await;
    }
    // Nothing more arrives: one pool handler, one singleton, every broadcast instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in [1, 2] {
        assert_eq!(
            (
                count(&seen, "service_pool", n),
                count(&seen, "singleton", n),
                count(&seen, "broadcast", n)
            ),
            (1, 1, 2),
            "{:#?}",
            seen.lock().unwrap()
        );
    }
    let broadcast_instances: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["handler"] == "broadcast" && e["payload"]["n"] == 1)
        .map(|e| e["instance"].clone())
        .collect();
    assert!(
        broadcast_instances.contains(&json!("first")) && broadcast_instances.contains(&json!("second")),
        "{broadcast_instances:?}"
    );
    for entry in seen.lock().unwrap().iter() {
        let stack = entry["call_id_stack"].as_array().unwrap();
        let own = stack.last().unwrap().as_str().unwrap();
        assert!(own.starts_with("interop_evt_rust."), "{entry}");
        if entry["payload"]["n"] == 1 {
            assert_eq!(stack.len(), 1, "the standalone dispatcher sends no context: {entry}");
            assert_eq!(entry["user_id"], Value::Null);
        } else {
            assert_eq!(entry["user_id"], "u-ev", "{entry}");
            assert_eq!(entry["trace_id"], "py-ev-trace", "{entry}");
            super::assert_stack(
                &entry["call_id_stack"],
                &[
                    "standalone_rpc_proxy.call.",
                    "interop_py_source.emit.",
                    "interop_evt_rust.",
                ],
            );
        }
    }

    first.stop().await;
    second.stop().await;
    t.finish(vec![emitter], None).await;
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Source {
    dispatch: EventDispatcher,
}

#[nameko::service(name = "interop_rs_source")]
impl Source {
    #[rpc]
    async fn emit(&self, payload: Value) -> Result<(), DispatchError> {
        self.dispatch.dispatch("ping", &payload).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_events_reach_python_handlers_of_each_type() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_rs_source");
    let running = t.runner(Value::Null).with_service::<Source>().start().await.unwrap();
    let listener = t.rabbit.unique("py_listener");
    let identifier = t.rabbit.token().to_owned();
    let pool = format!("evt-interop_rs_source-ping--{listener}.pool");
    let broadcast = format!("evt-interop_rs_source-ping--{listener}.everyone-{identifier}");
    let python = t
        .python_service(
            "Listener",
            &[
                ("LISTENER_NAME", &listener),
                ("EVENT_SOURCE", "interop_rs_source"),
                ("BROADCAST_ID", &identifier),
            ],
            &[(&pool, 1), ("evt-interop_rs_source-ping", 1), (&broadcast, 1)],
        )
        .await;

    // 1: from a Rust worker called with context data; 2: the standalone dispatcher.
    let rpc = t
        .cluster_rpc()
        .await
        .with_data(ContextData::new().with("user_id", 9).with("trace_id", "rs-ev-trace"));
    rpc.call("interop_rs_source", "emit", json!([{"n": 1}])).await.unwrap();
    EventDispatcher::standalone(t.rabbit.broker(), "interop_rs_source", &t.config())
        .dispatch("ping", &json!({"n": 2}))
        .await
        .unwrap();

    let received = eventually("six events in Python", || {
        let rpc = rpc.clone();
        let listener = listener.clone();
        async move {
            let received = rpc.call(&listener, "received", Value::Null).await.unwrap();
            (received.as_array().unwrap().len() >= 6).then_some(received)
        }
    })
    .await;
    let received = received.as_array().unwrap();
    assert_eq!(received.len(), 6, "{received:#?}");
    for handler in ["service_pool", "singleton", "broadcast"] {
        for n in [1, 2] {
            let got: Vec<&Value> = received
                .iter()
                .filter(|e| e["handler"] == handler && e["payload"] == json!({"n": n}))
                .collect();
            assert_eq!(got.len(), 1, "{handler} {n}: {received:#?}");
            let stack = got[0]["call_id_stack"].as_array().unwrap();
            assert!(
                stack
                    .last()
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{listener}.")),
                "{stack:?}"
            );
            if n == 1 {
                assert_eq!(got[0]["data"]["user_id"], 9, "{:?}", got[0]);
                assert_eq!(got[0]["data"]["trace_id"], "rs-ev-trace", "{:?}", got[0]);
                assert_eq!(stack.len(), 3, "{stack:?}");
                assert!(stack[0].as_str().unwrap().starts_with("standalone_rpc_proxy.call."));
                assert!(stack[1].as_str().unwrap().starts_with("interop_rs_source.emit."));
            }
        }
    }

    running.stop().await;
    t.finish(vec![python], Some(rpc)).await;
}
