//! The conformance suite on RabbitMQ, at `NAMEKO_TEST_AMQP_URI`.
//!
//! Without that variable, or with RabbitMQ unreachable, every test prints why and
//! passes, except under `CI=true`, where that is a failure. Each connection goes
//! through its own in-process TCP proxy, so `sever` cuts one connection and never
//! touches the shared broker. Queues and bindings are listed with `rabbitmqctl` (run
//! on the same host, as a user allowed to).
//!
//! Every behaviour of the suite runs here: none needs what only the memory broker
//! has.

use std::{
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use nameko_extensions::{
    amqp::{AmqpBroker, AmqpOptions, AmqpUri},
    broker::{Binding, FieldValue, Headers, Queue, QueueInfo, SharedBroker},
};
use serde_json::Value;

use super::{Harness, conformance_suite};
use crate::proxy::Proxy;

/// Connections to one RabbitMQ vhost, each through a proxy of its own.
#[derive(Debug)]
struct RabbitHarness {
    uri: AmqpUri,
    run: String,
    connections: Mutex<Vec<(SharedBroker, Arc<Proxy>)>>,
    names: AtomicU64,
}

impl RabbitHarness {
    /// The harness, or `None` (with the reason printed) when RabbitMQ is not there.
    async fn new() -> Option<Self> {
        let uri = crate::support::rabbitmq().await?;
        Some(Self {
            uri,
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            connections: Mutex::new(Vec::new()),
            names: AtomicU64::new(0),
        })
    }

    async fn rabbitmqctl(&self, args: &[&str]) -> Vec<Value> {
        let vhost = self.uri.vhost().to_owned();
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("rabbitmqctl")
                .arg("-q")
                .args(&args)
                .args(["-p", &vhost, "--formatter", "json"])
                .output()
        })
        .await
        .expect("the rabbitmqctl task")
        .expect("rabbitmqctl to run");
        assert!(
            output.status.success(),
            "rabbitmqctl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("rabbitmqctl's JSON")
    }
}

impl RabbitHarness {
    /// The proxy of a connection made by `connect`.
    fn proxy(&self, connection: &SharedBroker) -> Arc<Proxy> {
        let connections = self.connections.lock().expect("the harness lock");
        let (_, proxy) = connections
            .iter()
            .find(|(shared, _)| Arc::ptr_eq(shared, connection))
            .expect("a connection of this harness");
        Arc::clone(proxy)
    }
}

fn arguments(value: &Value) -> Headers {
    match value {
        Value::Object(map) => Headers::from_json_map(map),
        // RabbitMQ 3.x lists arguments as `[[name, type, value], ...]`, empty as `[]`.
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item.as_array()?.as_slice() {
                [Value::String(name), Value::String(kind), value] => {
                    let value = match (kind.as_str(), value.as_i64()) {
                        ("long", Some(n)) => FieldValue::I64(n),
                        _ => FieldValue::from_json(value),
                    };
                    Some((name.clone(), value))
                }
                [Value::String(name), value] => Some((name.clone(), FieldValue::from_json(value))),
                _ => None,
            })
            .collect(),
        _ => Headers::new(),
    }
}

fn count(value: &Value) -> usize {
    value.as_u64().and_then(|n| usize::try_from(n).ok()).unwrap_or(0)
}

#[async_trait]
impl Harness for RabbitHarness {
    async fn connect(&self) -> SharedBroker {
        let proxy = Proxy::start(format!("{}:{}", self.uri.host(), self.uri.port())).await;
        let uri = self.uri.with_address("127.0.0.1", proxy.port());
        let broker = AmqpBroker::connect(&uri, AmqpOptions::new("nameko-rs conformance"))
            .await
            .expect("a connection to RabbitMQ");
        let shared: SharedBroker = Arc::new(broker);
        self.connections
            .lock()
            .expect("the harness lock")
            .push((Arc::clone(&shared), Arc::new(proxy)));
        shared
    }

    async fn sever(&self, connection: &SharedBroker) {
        self.proxy(connection).down();
    }

    async fn restore(&self, connection: &SharedBroker) {
        let proxy = self.proxy(connection);
        proxy.up().await;
    }

    async fn list_queues(&self) -> Vec<QueueInfo> {
        let rows = self
            .rabbitmqctl(&[
                "list_queues",
                "name",
                "durable",
                "auto_delete",
                "exclusive",
                "arguments",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ])
            .await;
        let mut queues: Vec<QueueInfo> = rows
            .iter()
            .map(|row| {
                let mut queue = Queue::durable(row["name"].as_str().unwrap_or_default());
                queue.durable = row["durable"] == Value::Bool(true);
                queue.auto_delete = row["auto_delete"] == Value::Bool(true);
                queue.exclusive = row["exclusive"] == Value::Bool(true);
                queue.arguments = arguments(&row["arguments"]);
                QueueInfo::new(
                    queue,
                    count(&row["messages_ready"]),
                    count(&row["messages_unacknowledged"]),
                    count(&row["consumers"]),
                )
            })
            .collect();
        queues.sort_by(|a, b| a.queue.name.cmp(&b.queue.name));
        queues
    }

    async fn list_bindings(&self) -> Vec<Binding> {
        let rows = self
            .rabbitmqctl(&[
                "list_bindings",
                "source_name",
                "destination_name",
                "destination_kind",
                "routing_key",
            ])
            .await;
        let mut bindings: Vec<Binding> = rows
            .iter()
            .filter(|row| row["source_name"] != "" && row["destination_kind"] == "queue")
            .map(|row| {
                let s = |key: &str| row[key].as_str().unwrap_or_default().to_owned();
                Binding::new(s("source_name"), s("destination_name"), s("routing_key"))
            })
            .collect();
        bindings.sort_by_key(|b| (b.exchange.clone(), b.queue.clone(), b.routing_key.clone()));
        bindings
    }

    fn unique(&self, prefix: &str) -> String {
        format!(
            "conformance-{prefix}-{}-{}",
            self.run,
            self.names.fetch_add(1, Ordering::Relaxed)
        )
    }
}

conformance_suite! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    harness = RabbitHarness::new().await;
}
