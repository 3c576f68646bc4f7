//! RPC both ways: Python's `ClusterRpcProxy` calling a Rust service, a Rust client
//! calling a Python service — results, every error kind, context data.

use nameko::prelude::*;
use nameko::rpc::{Rpc, RpcError};
use serde_json::{Value, json};

use super::Interop;

#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub(crate) enum LedgerError {
    #[error("no account {0}")]
    #[remote(exc_type = "AccountNotFound", exc_path = "ledger.AccountNotFound", expected)]
    NotFound(u64),
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Ledger {
    cx: WorkerContext,
}

#[nameko::service(name = "interop_ledger")]
impl Ledger {
    #[rpc]
    async fn add(&self, a: i64, b: i64) -> Result<i64, RemoteError> {
        Ok(a + b)
    }

    #[rpc]
    async fn balance(&self, account: u64) -> Result<i64, LedgerError> {
        Err(LedgerError::NotFound(account))
    }

    #[rpc]
    async fn overdrawn(&self) -> Result<(), RemoteError> {
        Err(RemoteError::from_parts(
            "Overdrawn",
            "ledger.Overdrawn",
            [json!("acct"), json!(42), json!({"k": [1, 2]})],
            "('acct', 42, {'k': [1, 2]})",
        ))
    }

    #[rpc]
    async fn context(&self) -> Result<Value, RemoteError> {
        Ok(json!({
            "user_id": self.cx.data().user_id(),
            "language": self.cx.data().language(),
            "tenant": self.cx.data().get("tenant"),
            "trace_id": self.cx.trace_id(),
            "call_id_stack": self.cx.call_id_stack(),
        }))
    }
}

fn call(method: &str, args: Value, kwargs: Value) -> Value {
    json!({"service": "interop_ledger", "method": method, "args": args, "kwargs": kwargs})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_calls_a_rust_service() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_ledger");
    let running = t.runner(Value::Null).with_service::<Ledger>().start().await.unwrap();

    let outcomes = t
        .python_calls(json!({
            "context": {"user_id": "u-7", "language": "fr-FR", "tenant": "acme", "trace_id": "py-trace-1"},
            "register": ["ledger.Overdrawn"],
            "calls": [
                call("add", json!([2, 3]), json!({})),
                call("add", json!([]), json!({"a": 2, "b": 3})),
                call("add", json!([2]), json!({"b": 3})),
                call("nope", json!([]), json!({})),
                call("add", json!([1]), json!({})),
                call("add", json!([1, 2]), json!({"c": 3})),
                call("balance", json!([9]), json!({})),
                call("overdrawn", json!([]), json!({})),
                call("context", json!([]), json!({})),
            ],
        }))
        .await;
    running.stop().await;

    assert_eq!(outcomes[0], json!({"result": 5}));
    assert_eq!(outcomes[1], json!({"result": 5}));
    assert_eq!(outcomes[2], json!({"result": 5}));
    // Nameko's own exceptions are raised as themselves.
    let error = |i: usize| &outcomes[i]["error"];
    assert_eq!(
        (&error(3)["module"], &error(3)["class"], &error(3)["args"]),
        (&json!("nameko.exceptions"), &json!("MethodNotFound"), &json!(["nope"]))
    );
    assert_eq!(error(4)["class"], "IncorrectSignature");
    assert_eq!(
        error(4)["args"],
        json!(["add() missing 1 required positional argument: 'b'"])
    );
    assert_eq!(error(5)["class"], "IncorrectSignature");
    assert_eq!(
        error(5)["args"],
        json!(["add() got an unexpected keyword argument 'c'"])
    );
    // A Rust error the caller does not know is a RemoteError with its type and value.
    assert_eq!(
        error(6),
        &json!({
            "class": "RemoteError", "module": "nameko.exceptions", "remote": true,
            "exc_type": "AccountNotFound", "value": "no account 9",
            "args": ["AccountNotFound no account 9"],
        })
    );
    // One it registered is rebuilt from its exc_path with the made-safe exc_args.
    assert_eq!(
        (&error(7)["module"], &error(7)["class"], &error(7)["args"]),
        (
            &json!("ledger"),
            &json!("Overdrawn"),
            &json!(["acct", "42", {"k": ["1", "2"]}])
        )
    );

    let seen = &outcomes[8]["result"];
    assert_eq!(seen["user_id"], "u-7");
    assert_eq!(seen["language"], "fr-FR");
    assert_eq!(seen["tenant"], "acme");
    assert_eq!(seen["trace_id"], "py-trace-1");
    super::assert_stack(
        &seen["call_id_stack"],
        &["standalone_rpc_proxy.call.", "interop_ledger.context."],
    );

    t.finish(vec![], None).await;
}

#[nameko::rpc_client(service = "interop_py_calc")]
pub(crate) trait PyCalc {
    async fn add(&self, a: i64, b: i64) -> Result<i64, RpcError>;
}

fn remote(result: Result<Value, RpcError>) -> RemoteError {
    match result {
        Err(RpcError::Remote(error)) => *error,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_calls_a_python_service() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_py_calc");
    let calc = t
        .python_service(
            "Calc",
            &[("CALC_NAME", "interop_py_calc")],
            &[("rpc-interop_py_calc", 1)],
        )
        .await;
    let rpc = t.cluster_rpc().await.with_data(
        ContextData::new()
            .with("user_id", 7)
            .with("language", "en-GB")
            .with("tenant", "acme")
            .with("trace_id", "rs-trace-1"),
    );

    assert_eq!(rpc.call("interop_py_calc", "add", json!([2, 3])).await.unwrap(), 5);
    assert_eq!(
        rpc.call("interop_py_calc", "add", json!({"a": "x", "b": "y"}))
            .await
            .unwrap(),
        "xy"
    );
    let typed = Rpc::<dyn PyCalc>::standalone(&rpc);
    assert_eq!(typed.add(20, 22).await.unwrap(), 42);

    let error = remote(rpc.call("interop_py_calc", "fail", json!(["value"])).await);
    assert_eq!(
        (error.exc_type(), error.exc_path(), error.exc_args(), error.value()),
        (
            "ValueError",
            "builtins.ValueError",
            &[json!("bad value")][..],
            "bad value"
        )
    );
    let error = remote(rpc.call("interop_py_calc", "fail", json!(["oops"])).await);
    assert_eq!(
        (error.exc_type(), error.exc_path(), error.exc_args(), error.value()),
        (
            "Oops",
            "services.Oops",
            &[json!("boom"), json!("42"), json!({"k": ["1", "2"]})][..],
            "('boom', 42, {'k': [1, 2]})"
        )
    );
    let error = remote(rpc.call("interop_py_calc", "nope", json!([])).await);
    assert_eq!(
        (error.exc_type(), error.exc_path(), error.value()),
        ("MethodNotFound", "nameko.exceptions.MethodNotFound", "nope")
    );
    let error = remote(rpc.call("interop_py_calc", "add", json!([1])).await);
    assert_eq!(
        (error.exc_type(), error.value()),
        (
            "IncorrectSignature",
            "add() missing 1 required positional argument: 'b'"
        )
    );
    let unknown = rpc
        .call(&t.rabbit.unique("nobody"), "add", json!([]))
        .await
        .unwrap_err();
    assert!(matches!(unknown, RpcError::UnknownService(_)), "{unknown:?}");

    let seen = rpc.call("interop_py_calc", "context", Value::Null).await.unwrap();
    assert_eq!(
        seen["data"],
        json!({"user_id": 7, "language": "en-GB", "tenant": "acme", "trace_id": "rs-trace-1"})
    );
    super::assert_stack(
        &seen["call_id_stack"],
        &["standalone_rpc_proxy.call.", "interop_py_calc.context."],
    );

    t.finish(vec![calc], Some(rpc)).await;
}
