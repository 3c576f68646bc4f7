//! Connection loss and recovery seen from services: the runner's readiness follows the
//! connection, RPC calls waiting for a reply fail at once with `ConnectionLost`, and
//! the service answers again after recovery — on the memory broker (`sever` /
//! `reconnect`) and on RabbitMQ (through a TCP proxy taken down and brought back).

use std::{future::Future, sync::Arc, time::Duration};

use nameko_core::{Config, Entrypoints, RemoteError, Service, ServiceRunner, deps::Dep};
use nameko_extensions::{
    broker::{Broker, SharedBroker},
    context::edge_context,
    memory::MemoryBroker,
    rpc::{RpcArgs, RpcClient, RpcEntrypoint, RpcError},
};
use serde_json::{Value, json};
use tokio::time::timeout;

use crate::support::{Seen, deps, eventually};

deps!(Patient, PatientProviders { seen: Dep<Seen> });

impl Service for Patient {
    const NAME: &'static str = "patient";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("wait", RpcEntrypoint::<(), ()>::new(), |w: Patient, ()| async move {
            w.seen.push("wait", Value::Null);
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, RemoteError>(())
        })
        .add("ping", RpcEntrypoint::<(), Value>::new(), |_: Patient, ()| async move {
            Ok::<_, RemoteError>(json!("pong"))
        });
    }
}

deps!(Starter, StarterProviders { seen: Dep<Seen> });

/// `Patient`'s `ping` under a name of its own: the RabbitMQ tests run side by side in
/// one vhost, and two services of one name would share (and compete for) one queue.
impl Service for Starter {
    const NAME: &'static str = "recovery_start";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add("ping", RpcEntrypoint::<(), Value>::new(), |w: Starter, ()| async move {
            w.seen.push("ping", Value::Null);
            Ok::<_, RemoteError>(json!("pong"))
        });
    }
}

const SOON: Duration = Duration::from_secs(20);

async fn soon<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(SOON, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {SOON:?}"))
}

/// The scenario on one broker connection that `sever` cuts and `restore` lets back.
async fn readiness_and_calls_follow_the_connection<S, R>(
    broker: SharedBroker,
    exchange: &str,
    sever: impl Fn() -> S,
    restore: impl Fn() -> R,
) where
    S: Future<Output = ()>,
    R: Future<Output = ()>,
{
    let seen = Arc::new(Seen::default());
    let config = Config::from_yaml_str(&format!("rpc_exchange: {exchange}\n")).unwrap();
    let runner = ServiceRunner::new(config)
        .resource::<dyn Broker>(Arc::clone(&broker))
        .resource(Arc::clone(&seen))
        .stop_timeout(Duration::from_secs(5))
        .with_service::<Patient>();
    let readiness = runner.readiness();
    assert!(!readiness.is_ready(), "not ready before starting");
    let running = runner.start().await.expect("the service starts");
    assert!(readiness.is_ready(), "ready once consuming: {}", readiness.report());
    let consumer = format!("consumer rpc-{}", Patient::NAME);
    assert!(readiness.report().parts().any(|(name, _)| name == consumer));

    let client = RpcClient::start(Arc::clone(&broker), exchange, "recovery_test", Some(SOON))
        .await
        .expect("a client");
    let call = |method: &'static str| {
        let client = client.clone();
        async move {
            client
                .call(Patient::NAME, method, RpcArgs::positional([]), &edge_context(), None)
                .await
        }
    };
    assert_eq!(call("ping").await.expect("ping"), json!("pong"));
    // Routed (confirmed) before the loss, so only its reply is outstanding.
    let waiting = client
        .call_async(Patient::NAME, "wait", RpcArgs::positional([]), &edge_context(), None)
        .await
        .expect("the call is routed");
    let waiting = tokio::spawn(waiting.result());
    eventually("the call is running", || seen.count("wait") == 1).await;

    sever().await;
    let failed = soon("the waiting call failing", waiting).await.expect("the call task");
    match failed {
        Err(RpcError::ConnectionLost { target, reason }) => {
            assert_eq!(target, "patient.wait");
            assert!(!reason.is_empty());
        }
        other => panic!("expected ConnectionLost at once, got {other:?}"),
    }
    let message = call("wait").await.expect_err("no call during the outage").to_string();
    assert!(message.contains("connection lost"), "{message}");
    soon("not ready", readiness.wait_not_ready()).await;
    let report = readiness.report().to_string();
    assert!(
        report.contains(&consumer) && report.contains("connection lost"),
        "{report}"
    );

    restore().await;
    soon("ready again", readiness.wait_ready()).await;
    assert_eq!(
        soon("a call after recovery", call("ping")).await.expect("ping"),
        json!("pong")
    );
    // The request interrupted by the loss was redelivered and ran again.
    eventually("the interrupted call ran again", || seen.count("wait") == 2).await;

    client.stop().await;
    running.stop().await;
    assert!(!readiness.is_ready(), "not ready once stopped");
    let _ = broker.delete_queue(client.reply_queue()).await;
    let _ = broker.delete_queue(&format!("rpc-{}", Patient::NAME)).await;
    let _ = broker.delete_exchange(exchange).await;
    broker.close().await;
}

#[tokio::test]
async fn memory_readiness_and_calls_follow_the_connection() {
    let memory = MemoryBroker::new();
    let connection = memory.connect();
    let broker: SharedBroker = Arc::new(connection.clone());
    readiness_and_calls_follow_the_connection(
        broker,
        "nameko-rpc",
        || async { connection.sever() },
        || async { connection.reconnect().expect("reconnects") },
    )
    .await;
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An outage longer than the reply queue's `x-expires`: the broker deletes the queue
/// meanwhile; the client says so when the connection recovers, the queue is declared
/// again with its binding, and calls get their replies again.
#[tokio::test(start_paused = true)]
async fn memory_a_reply_queue_expired_in_a_long_outage_is_reported_and_declared_again() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let memory = MemoryBroker::new();
    let seen = Arc::new(Seen::default());
    let running = ServiceRunner::new(Config::default())
        .resource::<dyn Broker>(memory.shared())
        .resource(Arc::clone(&seen))
        .with_service::<Starter>()
        .start()
        .await
        .expect("the service starts");
    let connection = memory.connect();
    let client = RpcClient::start(Arc::new(connection.clone()), "nameko-rpc", "expiry_test", Some(SOON))
        .await
        .expect("a client");
    let ping = || {
        let client = client.clone();
        async move {
            client
                .call(Starter::NAME, "ping", RpcArgs::positional([]), &edge_context(), None)
                .await
        }
    };
    assert_eq!(ping().await.expect("ping"), json!("pong"));
    let reply_queue_exists = || {
        memory
            .list_queues()
            .iter()
            .any(|q| q.queue.name == client.reply_queue())
    };

    connection.sever();
    tokio::time::sleep(nameko_extensions::rpc::REPLY_QUEUE_EXPIRES + Duration::from_secs(1)).await;
    assert!(!reply_queue_exists(), "the reply queue expired during the outage");
    connection.reconnect().expect("reconnects");
    assert_eq!(
        soon("a call after recovery", ping()).await.expect("ping"),
        json!("pong")
    );
    assert!(reply_queue_exists());
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warning = logs
        .lines()
        .find(|line| line.contains("the reply queue expired during the outage"))
        .unwrap_or_else(|| panic!("the expiry is reported: {logs}"));
    assert!(warning.contains(client.reply_queue()), "{warning}");

    client.stop().await;
    running.stop().await;
}

#[cfg(feature = "amqp")]
mod rabbitmq {
    use std::sync::Arc;

    use nameko_extensions::{
        amqp::{AmqpBroker, AmqpOptions},
        broker::SharedBroker,
    };

    use nameko_core::Service as _;

    use crate::proxy::Proxy;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_readiness_and_calls_follow_the_connection() {
        let Some(uri) = crate::support::rabbitmq().await else {
            return;
        };
        let proxy = Arc::new(Proxy::start(format!("{}:{}", uri.host(), uri.port())).await);
        let through = uri.with_address("127.0.0.1", proxy.port());
        let broker: SharedBroker = Arc::new(
            AmqpBroker::connect(&through, AmqpOptions::new("nameko-rs recovery test"))
                .await
                .expect("a connection"),
        );
        let exchange = format!("recovery-{}", uuid::Uuid::new_v4().simple());
        super::readiness_and_calls_follow_the_connection(
            broker,
            &exchange,
            || async { proxy.down() },
            || async { proxy.up().await },
        )
        .await;
    }

    /// A publish waiting for its confirm when the connection is lost ends at once with
    /// `ConnectionLost` — lapin leaves such a confirm pending across its recovery, so
    /// without this an RPC call or a reply would hang.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_a_publish_waiting_for_its_confirm_fails_when_the_connection_is_lost() {
        use nameko_extensions::broker::{Broker as _, BrokerError, Exchange, Headers, Properties, Publish, Topology};

        let Some(uri) = crate::support::rabbitmq().await else {
            return;
        };
        let proxy = Proxy::start(format!("{}:{}", uri.host(), uri.port())).await;
        let through = uri.with_address("127.0.0.1", proxy.port());
        let broker = Arc::new(
            AmqpBroker::connect(&through, AmqpOptions::new("nameko-rs publish loss test"))
                .await
                .expect("a connection"),
        );
        let exchange = format!("recovery-publish-{}", uuid::Uuid::new_v4().simple());
        broker
            .declare(&Topology::new().exchange(Exchange::topic(&exchange)))
            .await
            .expect("the exchange");
        let publish = {
            let (broker, exchange) = (Arc::clone(&broker), exchange.clone());
            move || {
                let (broker, exchange) = (Arc::clone(&broker), exchange.clone());
                async move {
                    broker
                        .publish(Publish {
                            exchange,
                            routing_key: "anything".into(),
                            mandatory: false,
                            properties: Properties::json(Headers::new()),
                            body: bytes::Bytes::from_static(b"{}"),
                        })
                        .await
                }
            }
        };
        // The publisher channel is open: what is held next is the confirm alone.
        publish().await.expect("a publish before the loss");
        proxy.hold();
        let publishing = tokio::spawn(publish());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!publishing.is_finished(), "the confirm is held back by the proxy");
        proxy.down();
        match super::soon("the publish failing", publishing)
            .await
            .expect("the publish task")
        {
            Err(BrokerError::ConnectionLost(reason)) => {
                assert!(reason.contains("may or may not have been routed"), "{reason}");
            }
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
        broker.close().await;
        let direct = AmqpBroker::connect(&uri, AmqpOptions::new("nameko-rs publish loss cleanup"))
            .await
            .expect("a connection");
        let _ = direct.delete_exchange(&exchange).await;
        direct.close().await;
    }

    /// A runner started the way `run` does on AMQP: the connection is retried while
    /// RabbitMQ refuses it (not ready meanwhile), then the services start, become
    /// ready and answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_a_runner_waits_for_rabbitmq_then_serves() {
        let Some(uri) = crate::support::rabbitmq().await else {
            return;
        };
        let proxy = Proxy::start_down(format!("{}:{}", uri.host(), uri.port())).await;
        let through = uri.with_address("127.0.0.1", proxy.port());
        let exchange = format!("recovery-start-{}", uuid::Uuid::new_v4().simple());
        let config = nameko_core::Config::from_yaml_str(&format!("rpc_exchange: {exchange}\n")).unwrap();
        let seen = Arc::new(crate::support::Seen::default());
        let runner = nameko_core::ServiceRunner::new(config)
            .resource(Arc::clone(&seen))
            .with_service::<super::Starter>();
        let readiness = runner.readiness();
        let connecting = {
            let readiness = readiness.clone();
            tokio::spawn(async move {
                AmqpBroker::connect_retrying(&through, AmqpOptions::new("nameko-rs start test"), Some(&readiness))
                    .await
                    .expect("a plain URI needs no TLS")
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(!connecting.is_finished(), "still waiting for RabbitMQ");
        let report = readiness.report().to_string();
        assert!(
            report.contains("RabbitMQ connection (cannot connect to amqp://guest:***@127.0.0.1:"),
            "{report}"
        );
        proxy.up().await;
        let broker: SharedBroker = Arc::new(
            super::soon("connecting once RabbitMQ is there", connecting)
                .await
                .unwrap(),
        );
        let running = runner
            .resource::<dyn nameko_extensions::broker::Broker>(Arc::clone(&broker))
            .start()
            .await
            .expect("the service starts");
        super::soon("ready", readiness.wait_ready()).await;
        let client = nameko_extensions::rpc::RpcClient::start(Arc::clone(&broker), &exchange, "start_test", None)
            .await
            .expect("a client");
        let pong = client
            .call(
                super::Starter::NAME,
                "ping",
                nameko_extensions::rpc::RpcArgs::positional([]),
                &nameko_extensions::context::edge_context(),
                Some(super::SOON),
            )
            .await
            .expect("ping");
        assert_eq!(pong, serde_json::json!("pong"));
        client.stop().await;
        running.stop().await;
        let _ = broker.delete_queue(client.reply_queue()).await;
        let _ = broker.delete_queue(&format!("rpc-{}", super::Starter::NAME)).await;
        let _ = broker.delete_exchange(&exchange).await;
        broker.close().await;
    }
}
