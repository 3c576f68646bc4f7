//! The nameko-rs load client: a standalone [`ClusterRpc`] and a standalone
//! [`EventDispatcher`] claiming to be `loadgen`, over one [`AmqpBroker`].

use std::{sync::Arc, time::Duration};

use nameko::{
    amqp::{AmqpBroker, AmqpOptions, AmqpUri},
    broker::{Broker, BrokerError, SharedBroker},
    events::EventDispatcher,
    prelude::Config,
    rpc::{ClusterRpc, RpcError},
};
use serde_json::Value;

use crate::{BenchError, EVENT_SOURCE, SERVICE, load::Caller};

/// Calls `bench` and dispatches `loadgen` events through nameko-rs's own clients.
#[derive(Clone, Debug)]
pub struct NamekoClient {
    broker: Arc<AmqpBroker>,
    rpc: ClusterRpc,
    dispatcher: EventDispatcher,
}

impl NamekoClient {
    /// Connects to RabbitMQ at `uri` and starts a reply listener on `rpc_exchange`.
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] when the URI is invalid, RabbitMQ cannot be reached, or
    /// the reply queue cannot be declared.
    pub async fn connect(uri: &str, rpc_exchange: &str) -> Result<Self, BenchError> {
        let uri = AmqpUri::parse(uri).map_err(|err| BenchError::Broker(format!("invalid broker URI: {err}")))?;
        let broker = Arc::new(
            AmqpBroker::connect(&uri, AmqpOptions::new("example-bench client"))
                .await
                .map_err(|err| BenchError::Broker(err.to_string()))?,
        );
        let config = Config::loader()
            .define(format!("rpc_exchange={rpc_exchange}"))
            .load()
            .map_err(|err| BenchError::Broker(format!("bad rpc exchange `{rpc_exchange}`: {err}")))?;
        let shared: SharedBroker = broker.clone();
        let rpc = ClusterRpc::connect(Arc::clone(&shared), &config)
            .await
            .map_err(|err| BenchError::Broker(err.to_string()))?;
        let dispatcher = EventDispatcher::standalone(shared, EVENT_SOURCE, &config);
        Ok(Self {
            broker,
            rpc,
            dispatcher,
        })
    }

    /// Stops the reply listener, deletes its reply queue and closes the connection.
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] when the reply queue cannot be deleted.
    pub async fn close(self) -> Result<(), BenchError> {
        self.rpc.client().stop().await;
        let queue = self.rpc.client().reply_queue();
        let mut deleted = self.broker.delete_queue(queue).await;
        // lapin turns some errors of its own channel bookkeeping (a race as a consumer
        // channel closes) into a reconnection: give the connection a few seconds to come
        // back before giving up on the delete.
        for _ in 0..50 {
            if !matches!(deleted, Err(BrokerError::ConnectionLost(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            deleted = self.broker.delete_queue(queue).await;
        }
        self.broker.close().await;
        deleted.map_err(|err| BenchError::Broker(format!("could not delete the reply queue: {err}")))
    }
}

/// This process's publishes so far, from nameko-rs's metrics: how many the broker
/// confirmed as routed, and how many were left `unconfirmed` — RPC requests whose reply
/// came before their confirm, so the call returned without waiting for it.
///
/// ```
/// let (routed, unconfirmed) = example_bench::client::publish_counts();
/// assert_eq!((routed, unconfirmed), (0, 0));
/// ```
pub fn publish_counts() -> (u64, u64) {
    let text = nameko::core::metrics::Metrics::new().render(None);
    let count = |outcome: &str| {
        let prefix = format!("nameko_publishes_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("routed"), count("unconfirmed"))
}

impl Caller for NamekoClient {
    async fn call(&self, method: &'static str, args: Value) -> Result<Value, BenchError> {
        self.rpc.call(SERVICE, method, args).await.map_err(|err| match err {
            RpcError::UnknownService(service) => BenchError::UnknownService(service),
            other => BenchError::Call(format!("{SERVICE}.{method}: {other}")),
        })
    }

    async fn ping(&self, payload: Value) -> Result<(), BenchError> {
        self.dispatcher
            .dispatch(crate::EVENT_TYPE, &payload)
            .await
            .map_err(|err| BenchError::Call(err.to_string()))
    }
}
