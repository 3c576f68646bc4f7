//! Events over one memory broker shared by two runners: handler types, reliable
//! delivery flags, requeue on error, undecodable payloads, context across a dispatch.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use nameko_core::{Config, Entrypoints, RemoteError, RunningServices, Service, WorkerContext, deps::Dep};
use nameko_extensions::{
    broker::{Headers, Properties, Publish},
    events::{EventDispatcher, EventHandler, HandlerType},
    memory::MemoryBroker,
    rpc::{RpcArgs, RpcClient, RpcEntrypoint},
};
use serde_json::{Value, json};

use crate::support::{Seen, deps, eventually, runner};

// ----- greeting: dispatches `greeted` -----

deps!(
    Greeting,
    GreetingProviders {
        dispatch: EventDispatcher
    }
);

struct Name(String);

impl nameko_extensions::rpc::FromRpcArgs for Name {
    fn from_rpc_args(args: RpcArgs, method: &str) -> Result<Self, RemoteError> {
        let value = args
            .bind(method, &[nameko_extensions::rpc::Param::required("name")])?
            .remove(0);
        Ok(Name(nameko_extensions::rpc::decode_arg(method, "name", value)?))
    }
}

impl Service for Greeting {
    const NAME: &'static str = "greeting";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "greet",
            RpcEntrypoint::<Name, String>::new(),
            |w: Greeting, Name(name)| async move {
                w.dispatch.dispatch("greeted", &json!({ "name": name })).await?;
                Ok::<_, nameko_extensions::events::DispatchError>(format!("Hi, {name}!"))
            },
        );
    }
}

// ----- listen and audit: handlers of every type -----

deps!(Listen, ListenProviders { seen: Dep<Seen>, cx: WorkerContext });

impl Service for Listen {
    const NAME: &'static str = "listen";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "pool",
            EventHandler::<Value>::new("greeting", "greeted"),
            |w: Listen, body| async move {
                w.seen.push("listen.pool", body);
                w.seen
                    .push("listen.pool.parent", json!(w.cx.immediate_parent_call_id()));
                Ok::<_, RemoteError>(())
            },
        )
        .add(
            "everyone",
            EventHandler::<Value>::new("greeting", "greeted").handler_type(HandlerType::Broadcast),
            |w: Listen, body| async move {
                w.seen.push("listen.everyone", body);
                Ok::<_, RemoteError>(())
            },
        )
        .add(
            "single",
            EventHandler::<Value>::new("greeting", "greeted").handler_type(HandlerType::Singleton),
            |w: Listen, body| async move {
                w.seen.push("single", body);
                Ok::<_, RemoteError>(())
            },
        );
    }
}

deps!(Audit, AuditProviders { seen: Dep<Seen> });

impl Service for Audit {
    const NAME: &'static str = "audit";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "pool",
            EventHandler::<Value>::new("greeting", "greeted").reliable_delivery(false),
            |w: Audit, body| async move {
                w.seen.push("audit.pool", body);
                Ok::<_, RemoteError>(())
            },
        )
        .add(
            "single",
            EventHandler::<Value>::new("greeting", "greeted").handler_type(HandlerType::Singleton),
            |w: Audit, body| async move {
                w.seen.push("single", body);
                Ok::<_, RemoteError>(())
            },
        );
    }
}

async fn two_instances(broker: &MemoryBroker) -> Vec<(RunningServices, Arc<Seen>)> {
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (runner, seen) = runner(broker, "");
        let running = runner
            .with_service::<Listen>()
            .with_service::<Audit>()
            .start()
            .await
            .unwrap();
        instances.push((running, seen));
    }
    instances
}

fn total(instances: &[(RunningServices, Arc<Seen>)], who: &str) -> usize {
    instances.iter().map(|(_, seen)| seen.count(who)).sum()
}

#[tokio::test]
async fn handler_types_decide_who_receives() {
    let broker = MemoryBroker::new();
    let instances = two_instances(&broker).await;
    let dispatcher = EventDispatcher::standalone(broker.shared(), "greeting", &Config::default());
    dispatcher.dispatch("greeted", &json!({"name": "Ada"})).await.unwrap();

    eventually("every handler ran", || {
        total(&instances, "listen.pool") >= 1
            && total(&instances, "audit.pool") >= 1
            && total(&instances, "listen.everyone") >= 2
            && total(&instances, "single") >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await; // let any extra delivery show up
    assert_eq!(
        total(&instances, "listen.pool"),
        1,
        "service pool: one instance of `listen`"
    );
    assert_eq!(
        total(&instances, "audit.pool"),
        1,
        "service pool: one instance of `audit`"
    );
    assert_eq!(total(&instances, "listen.everyone"), 2, "broadcast: every instance");
    assert_eq!(
        total(&instances, "single"),
        1,
        "singleton: one handler among all services"
    );
    for (_, seen) in &instances {
        for (who, body) in seen.all() {
            if !who.ends_with(".parent") {
                assert_eq!(body, json!({"name": "Ada"}));
            }
        }
    }
    for (running, _) in &instances {
        running.stop().await;
    }
}

#[tokio::test]
async fn queue_names_and_flags_follow_the_reference() {
    let broker = MemoryBroker::new();
    let instances = two_instances(&broker).await;
    let queues = broker.list_queues();
    let find = |name: &str| {
        queues
            .iter()
            .find(|q| q.queue.name == name)
            .unwrap_or_else(|| panic!("no queue {name}"))
    };
    let pool = find("evt-greeting-greeted--listen.pool");
    assert!(
        pool.queue.durable && !pool.queue.auto_delete && !pool.queue.exclusive,
        "reliable service pool"
    );
    let unreliable = find("evt-greeting-greeted--audit.pool");
    assert!(unreliable.queue.durable && unreliable.queue.auto_delete && !unreliable.queue.exclusive);
    let singleton = find("evt-greeting-greeted");
    assert!(singleton.queue.durable && !singleton.queue.auto_delete && !singleton.queue.exclusive);
    assert_eq!(singleton.consumers, 4, "both services of both instances share it");
    let broadcast: Vec<_> = queues
        .iter()
        .filter(|q| q.queue.name.starts_with("evt-greeting-greeted--listen.everyone-"))
        .collect();
    assert_eq!(broadcast.len(), 2, "one queue per instance");
    for q in broadcast {
        let id = q.queue.name.rsplit('-').next().unwrap();
        assert_eq!(id.len(), 32, "a uuid4 hex identifier");
        assert!(
            q.queue.durable && q.queue.auto_delete && q.queue.exclusive,
            "non-reliable broadcast"
        );
    }
    let bindings = broker.list_bindings();
    assert!(
        bindings
            .iter()
            .all(|b| !b.queue.starts_with("evt-") || (b.exchange == "greeting.events" && b.routing_key == "greeted"))
    );
    for (running, _) in &instances {
        running.stop().await;
    }
}

#[tokio::test]
async fn broadcast_with_reliable_delivery_needs_an_identifier() {
    let handler = EventHandler::<Value>::new("a", "b")
        .handler_type(HandlerType::Broadcast)
        .reliable_delivery(true);
    let err = handler.queue("svc", "method").unwrap_err().to_string();
    assert!(
        err.contains("asks for reliable delivery but has no broadcast identifier"),
        "{err}"
    );
    let handler = handler.broadcast_identifier("host-1");
    let queue = handler.queue("svc", "method").unwrap();
    assert_eq!(queue.name, "evt-a-b--svc.method-host-1");
    assert!(queue.durable && !queue.auto_delete && !queue.exclusive);
}

// ----- requeue on error, undecodable payloads -----

deps!(Flaky, FlakyProviders { seen: Dep<Seen> });

#[derive(serde::Deserialize)]
struct Greeted {
    name: String,
}

impl Service for Flaky {
    const NAME: &'static str = "flaky";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "retry",
            EventHandler::<Value>::new("greeting", "greeted").requeue_on_error(true),
            |w: Flaky, body| async move {
                w.seen.push("attempt", body);
                if w.seen.count("attempt") < 3 {
                    return Err(RemoteError::new("Flaky", "not yet"));
                }
                Ok(())
            },
        )
        .add(
            "typed",
            EventHandler::<Greeted>::new("greeting", "typed"),
            |w: Flaky, body: Greeted| async move {
                w.seen.push("typed", json!(body.name));
                Ok::<_, RemoteError>(())
            },
        );
    }
}

#[tokio::test]
async fn requeue_on_error_redelivers_until_it_succeeds() {
    let broker = MemoryBroker::new();
    let (runner, seen) = runner(&broker, "");
    let running = runner.with_service::<Flaky>().start().await.unwrap();
    EventDispatcher::standalone(broker.shared(), "greeting", &Config::default())
        .dispatch("greeted", &json!({"name": "Bob"}))
        .await
        .unwrap();
    eventually("three attempts", || seen.count("attempt") >= 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.count("attempt"), 3);
    let queue = broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == "evt-greeting-greeted--flaky.retry")
        .unwrap();
    assert_eq!((queue.ready, queue.unacked), (0, 0));
    running.stop().await;
}

#[tokio::test]
async fn an_undecodable_event_is_rejected_once() {
    let broker = MemoryBroker::new();
    let (runner, seen) = runner(&broker, "");
    let running = runner.with_service::<Flaky>().start().await.unwrap();
    let conn = broker.shared();
    for body in [&b"not json"[..], br#"{"nom": "Eve"}"#, br#"{"name": "Eve"}"#] {
        let message = Publish {
            exchange: "greeting.events".into(),
            routing_key: "typed".into(),
            mandatory: false,
            properties: Properties::json(Headers::new()),
            body: Bytes::copy_from_slice(body),
        };
        conn.publish(message).await.unwrap();
    }
    eventually("the good event", || seen.count("typed") == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seen.all(), [("typed".to_owned(), json!("Eve"))]);
    let queue = broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == "evt-greeting-typed--flaky.typed")
        .unwrap();
    assert_eq!(
        (queue.ready, queue.unacked),
        (0, 0),
        "rejected without requeue: no hot loop"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_dispatch_from_a_worker_carries_its_context() {
    let broker = MemoryBroker::new();
    let (runner, seen) = runner(&broker, "");
    let running = runner
        .with_service::<Greeting>()
        .with_service::<Listen>()
        .start()
        .await
        .unwrap();
    let client = RpcClient::start(broker.shared(), "nameko-rpc", "test", Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let reply = client
        .call(
            "greeting",
            "greet",
            RpcArgs::from(json!(["Ada"])),
            &nameko_extensions::context::edge_context(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply, json!("Hi, Ada!"));
    eventually("the listener ran", || seen.count("listen.pool.parent") == 1).await;
    let parent = seen
        .all()
        .into_iter()
        .find(|(w, _)| w == "listen.pool.parent")
        .unwrap()
        .1;
    assert!(parent.as_str().unwrap().starts_with("greeting.greet."), "{parent}");
    running.stop().await;
}
