//! RPC over the memory broker: replies, every error kind, call id stacks across hops,
//! nested calls with one worker slot, poison messages, queue names.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use nameko_core::{ContextData, Entrypoints, RemoteError, RunningServices, Service, WorkerContext, deps::Dep};
use nameko_extensions::{
    broker::{
        Binding as QueueBinding, ConsumeOptions, Exchange, Headers, Properties, Publish, PublishOutcome, Queue,
        Topology,
    },
    context::edge_context,
    memory::MemoryBroker,
    rpc::{ClusterRpc, FromRpcArgs, Param, RpcArgs, RpcClient, RpcEntrypoint, RpcError, decode_arg},
};
use serde_json::{Value, json};

use crate::support::{Seen, deps, runner};

// ----- maths -----

deps!(Maths, MathsProviders { cx: WorkerContext, seen: Dep<Seen> });

struct Add {
    a: i64,
    b: i64,
}

impl FromRpcArgs for Add {
    fn from_rpc_args(args: RpcArgs, method: &str) -> Result<Self, RemoteError> {
        let mut values = args
            .bind(method, &[Param::required("a"), Param::required("b")])?
            .into_iter();
        Ok(Add {
            a: decode_arg(method, "a", values.next().unwrap_or_default())?,
            b: decode_arg(method, "b", values.next().unwrap_or_default())?,
        })
    }
}

struct Millis(u64);

impl FromRpcArgs for Millis {
    fn from_rpc_args(args: RpcArgs, method: &str) -> Result<Self, RemoteError> {
        let value = args.bind(method, &[Param::required("ms")])?.remove(0);
        Ok(Millis(decode_arg(method, "ms", value)?))
    }
}

impl Service for Maths {
    const NAME: &'static str = "maths";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("add", RpcEntrypoint::<Add, i64>::new(), |w: Maths, Add { a, b }| async move {
            w.seen.push("add", json!([a, b]));
            Ok::<_, RemoteError>(a + b)
        })
        .add("fail", RpcEntrypoint::<(), ()>::new(), |_: Maths, ()| async move {
            Err::<(), _>(RemoteError::new("ValueError", "bad value").with_path("builtins.ValueError"))
        })
        .add("boom", RpcEntrypoint::<(), ()>::new(), |_: Maths, ()| async move {
            if true {
                panic!("maths exploded");
            }
            Ok::<(), RemoteError>(())
        })
        .add("stack", RpcEntrypoint::<(), Vec<String>>::new(), |w: Maths, ()| async move {
            Ok::<_, RemoteError>(w.cx.call_id_stack().to_vec())
        })
        .add("slow", RpcEntrypoint::<Millis, u64>::new(), |_: Maths, Millis(ms)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, RemoteError>(ms)
        })
        .add("echo", RpcEntrypoint::<RpcArgs, Value>::new(), |_: Maths, args: RpcArgs| async move {
            Ok::<_, RemoteError>(json!({"args": args.args, "kwargs": args.kwargs}))
        });
    }
}

// ----- relay and front: the hops of a chain -----

deps!(Relay, RelayProviders { rpc: ClusterRpc });

impl Service for Relay {
    const NAME: &'static str = "relay";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("stack", RpcEntrypoint::<(), Value>::new(), |w: Relay, ()| async move {
            w.rpc.call("maths", "stack", Value::Null).await
        });
    }
}

deps!(Front, FrontProviders { rpc: ClusterRpc });

impl Service for Front {
    const NAME: &'static str = "front";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("chain", RpcEntrypoint::<(), Value>::new(), |w: Front, ()| async move {
            w.rpc.call("relay", "stack", Value::Null).await
        });
    }
}

async fn start_all(broker: &MemoryBroker, config: &str) -> RunningServices {
    let (runner, _seen) = runner(broker, config);
    runner
        .with_service::<Maths>()
        .with_service::<Relay>()
        .with_service::<Front>()
        .start()
        .await
        .unwrap()
}

async fn client(broker: &MemoryBroker) -> RpcClient {
    RpcClient::start(
        broker.shared(),
        "nameko-rpc",
        "standalone_rpc_proxy",
        Some(Duration::from_secs(5)),
    )
    .await
    .unwrap()
}

async fn call(client: &RpcClient, service: &str, method: &str, args: Value) -> Result<Value, RpcError> {
    client
        .call(service, method, RpcArgs::from(args), &edge_context(), None)
        .await
}

fn remote(result: Result<Value, RpcError>) -> RemoteError {
    match result {
        Err(RpcError::Remote(err)) => *err,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_call_gets_its_result() {
    let broker = MemoryBroker::new();
    let running = start_all(&broker, "").await;
    let client = client(&broker).await;
    assert_eq!(call(&client, "maths", "add", json!([1, 2])).await.unwrap(), json!(3));
    assert_eq!(
        call(&client, "maths", "add", json!({"a": 2, "b": 5})).await.unwrap(),
        json!(7)
    );
    let args = RpcArgs {
        args: vec![json!(1)],
        kwargs: [("b".to_owned(), json!(9))].into_iter().collect(),
    };
    assert_eq!(
        client.call("maths", "add", args, &edge_context(), None).await.unwrap(),
        json!(10)
    );
    running.stop().await;
}

#[tokio::test]
async fn every_error_kind_reaches_the_caller() {
    let broker = MemoryBroker::new();
    let running = start_all(&broker, "").await;
    let client = client(&broker).await;

    let err = remote(call(&client, "maths", "nope", json!([])).await);
    assert_eq!(
        (err.exc_type(), err.exc_path(), err.value()),
        ("MethodNotFound", "nameko.exceptions.MethodNotFound", "nope")
    );

    let err = remote(call(&client, "maths", "add", json!([1])).await);
    assert_eq!(err.exc_type(), "IncorrectSignature");
    assert_eq!(err.value(), "add() missing 1 required positional argument: 'b'");

    let err = remote(call(&client, "maths", "add", json!({"a": 1, "b": "two"})).await);
    assert_eq!(err.exc_type(), "IncorrectSignature");
    assert!(
        err.value()
            .starts_with("add() argument 'b': invalid type: string \"two\""),
        "{}",
        err.value()
    );

    let err = remote(call(&client, "maths", "fail", json!([])).await);
    assert_eq!(
        (err.exc_type(), err.exc_path(), err.value()),
        ("ValueError", "builtins.ValueError", "bad value")
    );

    let err = remote(call(&client, "maths", "boom", json!([])).await);
    assert_eq!(err.exc_type(), "WorkerPanicked");
    assert!(err.value().contains("maths exploded"));
    assert_eq!(
        call(&client, "maths", "add", json!([2, 2])).await.unwrap(),
        json!(4),
        "still serving"
    );

    let err = call(&client, "ghost", "anything", json!([])).await.unwrap_err();
    assert!(matches!(&err, RpcError::UnknownService(s) if s == "ghost"), "{err:?}");
    assert_eq!(err.to_string(), "Unknown service `ghost`");

    let err = call(&client, "dotted.name", "x", json!([])).await.unwrap_err();
    assert!(matches!(err, RpcError::InvalidTarget(_)), "{err:?}");

    let slow = client
        .call(
            "maths",
            "slow",
            RpcArgs::from(json!([2000])),
            &edge_context(),
            Some(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&slow, RpcError::Timeout { target, .. } if target == "maths.slow"),
        "{slow:?}"
    );
    running.kill();
}

#[tokio::test]
async fn a_three_hop_chain_carries_the_call_id_stack() {
    let broker = MemoryBroker::new();
    let running = start_all(&broker, "").await;
    let client = client(&broker).await;
    let data = ContextData::new().with("call_id_stack", json!(["standalone_rpc_proxy.call.1"]));
    let stack = client
        .call("front", "chain", RpcArgs::default(), &data, None)
        .await
        .unwrap();
    let stack: Vec<String> = serde_json::from_value(stack).unwrap();
    assert_eq!(stack.len(), 4, "{stack:?}");
    assert_eq!(stack[0], "standalone_rpc_proxy.call.1");
    assert!(stack[1].starts_with("front.chain."), "{stack:?}");
    assert!(stack[2].starts_with("relay.stack."), "{stack:?}");
    assert!(stack[3].starts_with("maths.stack."), "{stack:?}");
    running.stop().await;
}

#[tokio::test]
async fn nested_calls_with_one_worker_slot_do_not_deadlock() {
    let broker = MemoryBroker::new();
    let running = start_all(&broker, "max_workers: 1").await;
    let client = client(&broker).await;
    let calls = (0..5).map(|_| call(&client, "front", "chain", Value::Null));
    for result in futures_util::future::join_all(calls).await {
        assert_eq!(result.unwrap().as_array().unwrap().len(), 3);
    }
    running.stop().await;
}

/// Publishes a raw request to `maths.<method>` and reads the raw reply, if one comes.
async fn raw_request(
    broker: &MemoryBroker,
    method: &str,
    content_type: Option<&str>,
    with_reply_to: bool,
    body: &[u8],
) -> Option<(Value, Option<String>)> {
    let conn = broker.shared();
    let id = uuid::Uuid::new_v4().to_string();
    let queue = format!("raw-replies-{id}");
    let topology = Topology::new()
        .exchange(Exchange::topic("nameko-rpc"))
        .queue(Queue::durable(&queue).auto_delete(true))
        .binding(QueueBinding::new("nameko-rpc", &queue, &id));
    conn.declare(&topology).await.unwrap();
    let mut consumer = conn.consume(&queue, ConsumeOptions::prefetch(1)).await.unwrap();
    let mut properties = Properties::json(Headers::new());
    properties.content_type = content_type.map(str::to_owned);
    properties.reply_to = with_reply_to.then(|| id.clone());
    properties.correlation_id = Some("corr-1".into());
    let message = Publish {
        exchange: "nameko-rpc".into(),
        routing_key: format!("maths.{method}"),
        mandatory: true,
        properties,
        body: Bytes::copy_from_slice(body),
    };
    assert_eq!(conn.publish(message).await.unwrap(), PublishOutcome::Routed);
    let delivery = tokio::time::timeout(Duration::from_millis(300), consumer.next())
        .await
        .ok()?
        .ok()?;
    let _ = delivery.ack().await;
    Some((
        serde_json::from_slice(&delivery.body).unwrap(),
        delivery.properties.correlation_id.clone(),
    ))
}

#[tokio::test]
async fn malformed_requests_get_malformed_request() {
    let broker = MemoryBroker::new();
    let (running, _seen) = start_with_seen(&broker).await;
    let cases: [(Option<&str>, &[u8], &str); 4] = [
        (
            Some("application/json"),
            br#"{"args": []}"#,
            "Message missing `args` or `kwargs`",
        ),
        (None, br#"{"args": [], "kwargs": {}}"#, "Message missing `content_type`"),
        (
            Some("text/plain"),
            b"hello",
            "unsupported content type `text/plain`; this service accepts `application/json`",
        ),
        (Some("application/json"), b"{truncated", "the body is not valid JSON"),
    ];
    for (content_type, body, message) in cases {
        let (reply, correlation_id) = raw_request(&broker, "add", content_type, true, body)
            .await
            .expect("a reply");
        assert_eq!(reply["result"], Value::Null);
        assert_eq!(reply["error"]["exc_type"], "MalformedRequest", "{reply}");
        assert!(
            reply["error"]["value"].as_str().unwrap().starts_with(message),
            "{reply}"
        );
        assert_eq!(correlation_id.as_deref(), Some("corr-1"));
    }
    let (reply, _) = raw_request(
        &broker,
        "add",
        Some("application/json"),
        true,
        br#"{"args":[1,2],"kwargs":{}}"#,
    )
    .await
    .unwrap();
    assert_eq!(reply, json!({"result": 3, "error": null}));
    running.stop().await;
}

#[tokio::test]
async fn a_request_without_reply_to_is_rejected_without_running() {
    let broker = MemoryBroker::new();
    let (running, seen) = start_with_seen(&broker).await;
    let reply = raw_request(
        &broker,
        "add",
        Some("application/json"),
        false,
        br#"{"args":[1,2],"kwargs":{}}"#,
    )
    .await;
    assert!(reply.is_none());
    let queue = broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == "rpc-maths")
        .unwrap();
    assert_eq!((queue.ready, queue.unacked), (0, 0), "rejected, not requeued");
    assert_eq!(seen.count("add"), 0, "the method never ran");
    // And the service keeps serving.
    let client = client(&broker).await;
    assert_eq!(call(&client, "maths", "add", json!([1, 1])).await.unwrap(), json!(2));
    running.stop().await;
}

async fn start_with_seen(broker: &MemoryBroker) -> (RunningServices, Arc<Seen>) {
    let (runner, seen) = runner(broker, "");
    (runner.with_service::<Maths>().start().await.unwrap(), seen)
}

#[tokio::test]
async fn queue_names_and_flags_match_nameko() {
    let broker = MemoryBroker::new();
    let running = start_all(&broker, "").await;
    let queues = broker.list_queues();
    let rpc = queues.iter().find(|q| q.queue.name == "rpc-maths").expect("rpc-maths");
    assert!(rpc.queue.durable && !rpc.queue.auto_delete && !rpc.queue.exclusive && rpc.queue.arguments.is_empty());
    let reply = queues
        .iter()
        .find(|q| q.queue.name.starts_with("rpc.reply-front-"))
        .expect("front's reply queue");
    assert!(reply.queue.durable && !reply.queue.auto_delete && !reply.queue.exclusive);
    assert_eq!(reply.queue.expires_after(), Some(Duration::from_secs(300)));
    let uuid = reply.queue.name.strip_prefix("rpc.reply-front-").unwrap();
    let bindings = broker.list_bindings();
    assert!(bindings.contains(&QueueBinding::new("nameko-rpc", "rpc-maths", "maths.*")));
    assert!(bindings.contains(&QueueBinding::new("nameko-rpc", &reply.queue.name, uuid)));
    running.stop().await;
}

// ----- ServiceRpc, call_async and timeouts inside a service -----

deps!(
    Caller,
    CallerProviders {
        maths: nameko_extensions::rpc::ServiceRpc = nameko_core::Provider::of()
            .with_arg("service", "maths")
            .with_arg("timeout", "0.1"),
    }
);

impl Service for Caller {
    const NAME: &'static str = "caller";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("both", RpcEntrypoint::<(), Value>::new(), |w: Caller, ()| async move {
            // Two calls in flight at once, collected in reverse order.
            let first = w.maths.call_async("add", json!([1, 2])).await?;
            let second = w.maths.call_async("add", json!({"a": 3, "b": 4})).await?;
            let (b, a) = (second.await?, first.await?);
            Ok::<_, RpcError>(json!([a, b]))
        })
        .add(
            "too_slow",
            RpcEntrypoint::<(), Value>::new(),
            |w: Caller, ()| async move { w.maths.call("slow", json!([2000])).await },
        );
    }
}

#[tokio::test]
async fn service_rpc_calls_async_and_times_out() {
    let broker = MemoryBroker::new();
    let (runner, _seen) = runner(&broker, "");
    let running = runner
        .with_service::<Maths>()
        .with_service::<Caller>()
        .start()
        .await
        .unwrap();
    let client = client(&broker).await;
    assert_eq!(
        call(&client, "caller", "both", Value::Null).await.unwrap(),
        json!([3, 7])
    );
    let err = remote(call(&client, "caller", "too_slow", Value::Null).await);
    assert_eq!(err.exc_type(), "RpcTimeout");
    assert!(err.value().contains("maths.slow"), "{}", err.value());
    running.kill();
}

#[tokio::test]
async fn a_service_rpc_without_a_service_fails_startup() {
    deps!(
        Lost,
        LostProviders {
            maths: nameko_extensions::rpc::ServiceRpc
        }
    );
    impl Service for Lost {
        const NAME: &'static str = "lost";
        fn entrypoints(e: &mut Entrypoints<Self>) {
            e.add("target", RpcEntrypoint::<(), String>::new(), |w: Lost, ()| async move {
                Ok::<_, RemoteError>(w.maths.service_name().to_owned())
            });
        }
    }
    let broker = MemoryBroker::new();
    let (runner, _seen) = runner(&broker, "");
    let err = runner.with_service::<Lost>().start().await.unwrap_err().to_string();
    assert!(err.starts_with("service `lost`: field `maths`"), "{err}");
    assert!(err.contains("needs the name of its service"), "{err}");
}

#[tokio::test]
async fn without_a_broker_startup_says_how_to_give_one() {
    let (runner, _seen) = (nameko_core::ServiceRunner::new(nameko_core::Config::default()), ());
    let err = runner.with_service::<Relay>().start().await.unwrap_err().to_string();
    assert!(
        err.contains("needs a message broker") && err.contains("--transport memory"),
        "{err}"
    );
}

/// The memory broker, except that a routed mandatory publish (an RPC request) is never
/// confirmed: the message is delivered, the publisher waits forever.
#[derive(Debug)]
struct UnconfirmedRequests(nameko_extensions::broker::SharedBroker);

#[async_trait::async_trait]
impl nameko_extensions::broker::Broker for UnconfirmedRequests {
    async fn declare(&self, topology: &Topology) -> Result<(), nameko_extensions::broker::BrokerError> {
        self.0.declare(topology).await
    }

    async fn delete_queue(&self, name: &str) -> Result<(), nameko_extensions::broker::BrokerError> {
        self.0.delete_queue(name).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<(), nameko_extensions::broker::BrokerError> {
        self.0.delete_exchange(name).await
    }

    async fn publish(&self, message: Publish) -> Result<PublishOutcome, nameko_extensions::broker::BrokerError> {
        let mandatory = message.mandatory;
        match self.0.publish(message).await? {
            PublishOutcome::Routed if mandatory => std::future::pending().await,
            outcome => Ok(outcome),
        }
    }

    async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<nameko_extensions::broker::Consumer, nameko_extensions::broker::BrokerError> {
        self.0.consume(queue, options).await
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<nameko_extensions::broker::ConnectionEvent> {
        self.0.events()
    }

    async fn close(&self) {
        self.0.close().await;
    }
}

#[tokio::test]
async fn a_reply_proves_delivery_before_the_request_is_confirmed() {
    let broker = MemoryBroker::new();
    let running = start_all(&broker, "").await;
    let client = RpcClient::start(
        Arc::new(UnconfirmedRequests(broker.shared())),
        "nameko-rpc",
        "standalone_rpc_proxy",
        Some(Duration::from_millis(500)),
    )
    .await
    .unwrap();

    // `call` reads the confirm side by side with the reply: the reply is enough.
    assert_eq!(call(&client, "maths", "add", json!([1, 2])).await.unwrap(), json!(3));
    // A returned request still means nobody listens.
    let err = call(&client, "ghost", "anything", json!([])).await.unwrap_err();
    assert!(matches!(&err, RpcError::UnknownService(s) if s == "ghost"), "{err:?}");
    // `call_async` promises a routed request: it waits for the confirm, until the
    // call's deadline.
    let err = client
        .call_async("maths", "add", RpcArgs::from(json!([1, 2])), &edge_context(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Timeout { target, .. } if target == "maths.add"),
        "{err:?}"
    );

    // The same through a `ClusterRpc`.
    let rpc = ClusterRpc::standalone(client.clone());
    assert_eq!(rpc.call("maths", "add", json!([2, 3])).await.unwrap(), json!(5));
    let err = rpc.call("ghost", "x", json!([])).await.unwrap_err();
    assert!(matches!(&err, RpcError::UnknownService(_)), "{err:?}");
    running.stop().await;
}
