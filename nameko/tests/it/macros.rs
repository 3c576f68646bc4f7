//! Services written with the macros, run on the memory broker: typed RPC arguments
//! (positional, keyword, optional, renamed), event handlers, stacked entrypoints, typed
//! `Rpc<dyn Trait>` clients, `#[derive(RemoteError)]`, and the worker factory with a
//! mockall mock of an `#[rpc_client]` trait.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use mockall::predicate::eq;
use nameko::{
    broker::Broker,
    core::{Config, IntoHandlerError, RunningServices, ServiceRunner},
    events::{DispatchError, EventDispatcher},
    memory::MemoryBroker,
    prelude::{Dep, RemoteError},
    rpc::{ClusterRpc, Rpc, RpcError},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// ----- what the handlers saw -----

#[derive(Debug, Default)]
pub(crate) struct Seen(Mutex<Vec<(String, Value)>>);

impl Seen {
    fn push(&self, who: &str, value: Value) {
        self.0.lock().unwrap().push((who.to_owned(), value));
    }

    fn of(&self, who: &str) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| w == who)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Known users, a runner resource.
#[derive(Debug, Default)]
pub(crate) struct Users(HashMap<u64, String>);

impl Users {
    fn name(&self, id: u64) -> Option<String> {
        self.0.get(&id).cloned()
    }
}

fn users() -> Users {
    Users([(7, "Ada".to_owned())].into_iter().collect())
}

// ----- maths: rpc methods, an event handler, a stacked method -----

#[nameko::rpc_client(service = "maths")]
#[cfg_attr(test, mockall::automock)]
pub(crate) trait Maths {
    async fn add(&self, a: i64, b: i64) -> Result<i64, RpcError>;
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub(crate) struct Greeted {
    name: String,
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct MathsService {
    seen: Dep<Seen>,
}

#[nameko::service(name = "maths")]
impl MathsService {
    #[rpc]
    async fn add(&self, a: i64, b: i64) -> Result<i64, RemoteError> {
        self.seen.push("add", json!([a, b]));
        Ok(a + b)
    }

    #[rpc]
    async fn scale(&self, value: i64, factor: Option<i64>) -> Result<i64, RemoteError> {
        Ok(value * factor.unwrap_or(1))
    }

    #[rpc(name = "describe")]
    async fn describe_thing(&self, #[arg(name = "type")] kind: String, _count: u32) -> Result<String, RemoteError> {
        Ok(format!("{_count} x {kind}"))
    }

    #[event_handler("greeting", "greeted")]
    async fn on_greeted(&self, event: Greeted) -> Result<(), RemoteError> {
        self.seen.push("on_greeted", json!(event.name));
        Ok(())
    }

    #[rpc]
    #[event_handler("greeting", "greeted", handler_type = "broadcast", reliable_delivery = false)]
    async fn record(&self, payload: Value) -> Result<String, RemoteError> {
        self.seen.push("record", payload.clone());
        Ok(format!("recorded {payload}"))
    }

    /// Not an entrypoint: callable as usual.
    fn helper(&self) -> usize {
        self.seen.of("add").len()
    }
}

// ----- greeting: a typed client, a dispatcher, a resource, its own errors -----

#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub(crate) enum GreetingError {
    #[error("no user {0}")]
    #[remote(
        exc_type = "UserNotFound",
        exc_path = "greeting.UserNotFound",
        status = 404,
        expected
    )]
    NotFound(u64),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    #[remote(exc_type = "DispatchError")]
    Dispatch(#[from] DispatchError),
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Greeting {
    maths: Rpc<dyn Maths>,
    dispatch: EventDispatcher,
    users: Dep<Users>,
}

#[nameko::service(name = "greeting")]
impl Greeting {
    #[rpc]
    async fn greet(&self, user_id: u64) -> Result<String, GreetingError> {
        let name = self.users.name(user_id).ok_or(GreetingError::NotFound(user_id))?;
        let total = self.maths.add(i64::try_from(user_id).unwrap_or_default(), 1).await?;
        self.dispatch
            .dispatch("greeted", &Greeted { name: name.clone() })
            .await?;
        Ok(format!("Hi, {name}! ({total})"))
    }

    #[rpc]
    async fn add_later(&self, a: i64, b: i64) -> Result<i64, GreetingError> {
        let reply = self.maths.add_async(a, b).await?;
        Ok(reply.await?)
    }
}

// ----- harness -----

async fn start(broker: &MemoryBroker) -> (RunningServices, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let running = ServiceRunner::new(Config::from_yaml_str("").unwrap())
        .resource::<dyn Broker>(broker.shared())
        .resource(Arc::clone(&seen))
        .resource(Arc::new(users()))
        .stop_timeout(Duration::from_secs(5))
        .with_service::<MathsService>()
        .with_service::<Greeting>()
        .start()
        .await
        .unwrap();
    (running, seen)
}

/// A standalone cluster client that waits at most 5 s for a reply.
async fn client(broker: &MemoryBroker) -> ClusterRpc {
    let config = Config::from_yaml_str("rpc_timeout: 5").unwrap();
    ClusterRpc::connect(broker.shared(), &config).await.unwrap()
}

fn remote(result: Result<Value, RpcError>) -> RemoteError {
    match result {
        Err(RpcError::Remote(err)) => *err,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

// ----- over the broker -----

#[tokio::test]
async fn rpc_arguments_bind_like_python() {
    let broker = MemoryBroker::new();
    let (running, seen) = start(&broker).await;
    let client = client(&broker).await;

    assert_eq!(client.call("maths", "add", json!([1, 2])).await.unwrap(), json!(3));
    assert_eq!(
        client.call("maths", "add", json!({"b": 5, "a": 2})).await.unwrap(),
        json!(7)
    );
    assert_eq!(seen.of("add"), [json!([1, 2]), json!([2, 5])]);

    // An `Option` parameter may be omitted.
    assert_eq!(client.call("maths", "scale", json!([3])).await.unwrap(), json!(3));
    assert_eq!(client.call("maths", "scale", json!([3, 4])).await.unwrap(), json!(12));
    assert_eq!(
        client
            .call("maths", "scale", json!({"value": 3, "factor": null}))
            .await
            .unwrap(),
        json!(3)
    );

    // `#[rpc(name)]` renames the method, `#[arg(name)]` a parameter, and a leading `_`
    // is not part of the name.
    assert_eq!(
        client
            .call("maths", "describe", json!({"type": "apple", "count": 2}))
            .await
            .unwrap(),
        json!("2 x apple")
    );
    let err = remote(client.call("maths", "describe_thing", json!([])).await);
    assert_eq!(err.exc_type(), "MethodNotFound");

    // IncorrectSignature, worded as Python's TypeError, names the wire names.
    let err = remote(client.call("maths", "add", json!([1])).await);
    assert_eq!(err.exc_type(), "IncorrectSignature");
    assert_eq!(err.value(), "add() missing 1 required positional argument: 'b'");
    let err = remote(client.call("maths", "describe", json!({"count": 1})).await);
    assert_eq!(err.value(), "describe() missing 1 required positional argument: 'type'");
    let err = remote(client.call("maths", "add", json!([1, 2, 3])).await);
    assert_eq!(err.value(), "add() takes 2 positional arguments but 3 were given");
    let err = remote(client.call("maths", "add", json!({"a": 1, "b": "two"})).await);
    assert_eq!(err.exc_type(), "IncorrectSignature");
    assert!(
        err.value()
            .starts_with("add() argument 'b': invalid type: string \"two\""),
        "{}",
        err.value()
    );
    running.stop().await;
}

#[tokio::test]
async fn typed_clients_events_and_stacked_entrypoints() {
    let broker = MemoryBroker::new();
    let (running, seen) = start(&broker).await;
    let client = client(&broker).await;

    // greeting calls maths through `Rpc<dyn Maths>`, then dispatches `greeted`.
    assert_eq!(
        client.call("greeting", "greet", json!([7])).await.unwrap(),
        json!("Hi, Ada! (8)")
    );
    assert_eq!(seen.of("add"), [json!([7, 1])]);
    eventually("the event handler", || seen.of("on_greeted") == [json!("Ada")]).await;
    // `record` is an event handler too (stacked on the rpc method).
    eventually("the stacked event handler", || {
        seen.of("record") == [json!({"name": "Ada"})]
    })
    .await;
    // ... and still an rpc method.
    assert_eq!(
        client.call("maths", "record", json!({"payload": [1]})).await.unwrap(),
        json!("recorded [1]")
    );

    // `_async`: published first, awaited later.
    assert_eq!(
        client.call("greeting", "add_later", json!([20, 22])).await.unwrap(),
        json!(42)
    );
    running.stop().await;
}

#[tokio::test]
async fn a_derived_remote_error_reaches_the_caller() {
    let broker = MemoryBroker::new();
    let (running, _seen) = start(&broker).await;
    let client = client(&broker).await;

    let err = remote(client.call("greeting", "greet", json!({"user_id": 99})).await);
    assert_eq!(
        (err.exc_type(), err.exc_path(), err.value()),
        ("UserNotFound", "greeting.UserNotFound", "no user 99")
    );
    running.stop().await;

    // Status and `expected` are not on the AMQP wire; they reach HTTP and the logs.
    let handler_error = GreetingError::NotFound(99).into_handler_error();
    assert_eq!(handler_error.status(), 404);
    assert!(handler_error.is_expected());
    assert!(handler_error.original().is_some());
    let handler_error = GreetingError::Rpc(RpcError::Decode("x".into())).into_handler_error();
    assert_eq!(
        (
            handler_error.remote().exc_type(),
            handler_error.status(),
            handler_error.is_expected()
        ),
        ("Rpc", 500, false)
    );
}

// ----- unit tests with the worker factory -----

#[tokio::test]
async fn the_worker_factory_takes_mocks_and_test_defaults() {
    let mut maths = MockMaths::new();
    maths
        .expect_add()
        .with(eq(7), eq(1))
        .times(1)
        .returning(|a, b| Ok(a + b));
    let (dispatch, log) = EventDispatcher::recording();
    let worker = Greeting::worker_factory()
        .maths(Rpc::from_arc(Arc::new(maths)))
        .dispatch(dispatch)
        .users(Dep::from_arc(Arc::new(users())))
        .build();
    assert_eq!(worker.greet(7).await.unwrap(), "Hi, Ada! (8)");
    log.assert_dispatched("greeted", &Greeted { name: "Ada".into() });

    let err = worker.greet(8).await.unwrap_err();
    assert!(matches!(err, GreetingError::NotFound(8)), "{err:?}");

    // `dispatch` falls back to its test default, a recording dispatcher.
    let mut maths = MockMaths::new();
    maths
        .expect_add()
        .returning(|_, _| Err(RpcError::UnknownService("maths".into())));
    let worker = Greeting::worker_factory()
        .maths(Rpc::from_arc(Arc::new(maths)))
        .users(Dep::from_arc(Arc::new(users())))
        .build();
    assert!(matches!(
        worker.greet(7).await,
        Err(GreetingError::Rpc(RpcError::UnknownService(_)))
    ));

    let worker = MathsService::worker_factory()
        .seen(Dep::from_arc(Arc::new(Seen::default())))
        .build();
    assert_eq!(worker.add(1, 2).await.unwrap(), 3);
    assert_eq!(worker.helper(), 1);
}

#[test]
#[should_panic(expected = "Greeting.users has no test default; set it with .users(...)")]
fn the_worker_factory_names_a_field_without_a_test_default() {
    let _ = Greeting::worker_factory()
        .maths(Rpc::from_arc(Arc::new(MockMaths::new())))
        .build();
}
