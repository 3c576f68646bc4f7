//! The raw lapin baseline: a server and a client that give the guarantees nameko-rs
//! gives, with the same queues, exchanges, properties, headers and JSON bodies, and
//! nothing else — so the comparison measures the framework, not different work.
//!
//! - [`RawServer`] consumes `rpc-bench` (durable, bound to the RPC exchange with
//!   `bench.*`) and `evt-loadgen-ping--bench.on_ping` (bound to `loadgen.events` with
//!   `ping`), each on a channel of its own with `basic.qos(prefetch)`. Each delivery is
//!   handled in a task of its own. A reply is published on a confirm-mode channel and
//!   the request is acked only after the reply's confirm (nacked with requeue if the
//!   broker refuses it); an event is acked after it was counted.
//! - [`RawClient`] declares a reply queue `rpc.reply-standalone_rpc_proxy-<uuid>`
//!   (durable, `x-expires` 300 s) bound with the uuid, consumes it (handing each reply
//!   to its caller, then acking it), publishes requests `mandatory` with confirms (a return is an unknown
//!   service), and correlates replies by `correlation_id`. Events are published with
//!   confirms.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
};
use nameko::amqp::AmqpUri;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::task::TaskTracker;

use crate::{BenchError, EVENT_EXCHANGE, EVENT_QUEUE, EVENT_TYPE, PingCounter, RPC_QUEUE, SERVICE, load::Caller};

/// How long a call waits for its reply (nameko-rs's default `rpc_timeout`); also sent
/// as the request's `expiration`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reply queue outlives its consumer (Nameko's `x-expires`).
const REPLY_QUEUE_EXPIRES_MS: i64 = 300_000;

fn broker_error(what: &str) -> impl Fn(lapin::Error) -> BenchError + '_ {
    move |err| BenchError::Broker(format!("{what}: {err}"))
}

/// Connects with lapin to `uri` (kombu's forms, as nameko-rs reads them).
async fn connect(uri: &str, name: &str) -> Result<Connection, BenchError> {
    let uri = AmqpUri::parse(uri).map_err(|err| BenchError::Broker(format!("invalid broker URI: {err}")))?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(&uri.to_url(), properties)
        .await
        .map_err(|err| BenchError::Broker(format!("cannot connect to {uri}: {err}")))
}

/// A durable topic exchange, as nameko-rs declares the RPC and events exchanges.
async fn declare_exchange(channel: &Channel, name: &str) -> Result<(), BenchError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name.into(), ExchangeKind::Topic, options, FieldTable::default())
        .await
        .map_err(broker_error("exchange.declare"))
}

/// A durable queue bound to `exchange` with `key`.
async fn declare_bound_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
    exchange: &str,
    key: &str,
) -> Result<(), BenchError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, arguments)
        .await
        .map_err(broker_error("queue.declare"))?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker_error("queue.bind"))
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, BenchError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(broker_error("channel.open"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker_error("confirm.select"))?;
    Ok(channel)
}

/// Nameko's properties for JSON messages: `application/json`, `utf-8`, persistent,
/// priority 0, with `headers`.
fn json_properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(0)
}

fn long(text: String) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

/// Publishes and waits for the confirm; `Ok(false)` when a mandatory message came back.
async fn publish(
    channel: &Channel,
    exchange: &ShortString,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<bool, BenchError> {
    let options = BasicPublishOptions {
        mandatory,
        immediate: false,
    };
    let confirm = channel
        .basic_publish(exchange.clone(), routing_key.into(), options, body, properties)
        .await
        .map_err(broker_error("basic.publish"))?
        .await
        .map_err(broker_error("publisher confirm"))?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(true),
        Confirmation::Ack(Some(_)) => Ok(false),
        Confirmation::Nack(_) => Err(BenchError::Broker("the broker refused the publish (nack)".into())),
    }
}

// ===== server =====

struct Server {
    publisher: Channel,
    rpc_exchange: ShortString,
    pings: PingCounter,
}

/// The `bench` service over lapin alone. Stop it with [`RawServer::stop`].
#[derive(Debug)]
pub struct RawServer {
    connection: Connection,
    consumers: Vec<(Channel, String)>,
    loops: Vec<JoinHandle<()>>,
    tasks: TaskTracker,
}

impl RawServer {
    /// Connects to `uri`, declares the RPC exchange `rpc_exchange`, `rpc-bench`,
    /// `loadgen.events` and `on_ping`'s queue as nameko-rs does, and consumes both
    /// queues with `basic.qos(prefetch)` (nameko-rs: `max_workers`, default 10).
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] when RabbitMQ cannot be reached or refuses a declare.
    pub async fn start(uri: &str, rpc_exchange: &str, prefetch: u16) -> Result<Self, BenchError> {
        let connection = connect(uri, "example-bench raw-server").await?;
        let declarer = connection
            .create_channel()
            .await
            .map_err(broker_error("channel.open"))?;
        declare_exchange(&declarer, rpc_exchange).await?;
        declare_bound_queue(
            &declarer,
            RPC_QUEUE,
            FieldTable::default(),
            rpc_exchange,
            &format!("{SERVICE}.*"),
        )
        .await?;
        declare_exchange(&declarer, EVENT_EXCHANGE).await?;
        declare_bound_queue(
            &declarer,
            EVENT_QUEUE,
            FieldTable::default(),
            EVENT_EXCHANGE,
            EVENT_TYPE,
        )
        .await?;
        let server = Arc::new(Server {
            publisher: confirm_channel(&connection).await?,
            rpc_exchange: rpc_exchange.into(),
            pings: PingCounter::default(),
        });
        let tasks = TaskTracker::new();
        let mut consumers = Vec::new();
        let mut loops = Vec::new();
        for (queue, events) in [(RPC_QUEUE, false), (EVENT_QUEUE, true)] {
            let channel = connection
                .create_channel()
                .await
                .map_err(broker_error("channel.open"))?;
            if prefetch > 0 {
                channel
                    .basic_qos(prefetch, BasicQosOptions { global: false })
                    .await
                    .map_err(broker_error("basic.qos"))?;
            }
            let mut consumer = channel
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(broker_error("basic.consume"))?;
            consumers.push((channel, consumer.tag().to_string()));
            let (server, tasks) = (Arc::clone(&server), tasks.clone());
            loops.push(tokio::spawn(async move {
                while let Some(delivery) = consumer.next().await {
                    match delivery {
                        Ok(delivery) if events => {
                            tasks.spawn(handle_event(delivery, Arc::clone(&server)));
                        }
                        Ok(delivery) => {
                            tasks.spawn(handle_request(delivery, Arc::clone(&server)));
                        }
                        Err(err) => {
                            tracing::error!(%err, "the raw server's consumer failed");
                            return;
                        }
                    }
                }
            }));
        }
        Ok(Self {
            connection,
            consumers,
            loops,
            tasks,
        })
    }

    /// Graceful stop: cancels both consumers, waits for the requests and events under
    /// way to be answered and acked, then closes the connection. Each step is bounded
    /// by ten seconds: lapin (4.12) sometimes reports `invalid channel state: Closing`
    /// while a consumer is cancelled and then never ends its stream.
    pub async fn stop(self) {
        for (channel, tag) in &self.consumers {
            let cancel = async {
                if let Err(err) = channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await
                {
                    tracing::warn!(%err, "could not cancel a consumer");
                }
            };
            bounded("a consumer's cancel", cancel).await;
        }
        for run in self.loops {
            let abort = run.abort_handle();
            bounded("a consumer's stream to end", async { drop(run.await) }).await;
            abort.abort();
        }
        self.tasks.close();
        bounded("the requests and events under way", self.tasks.wait()).await;
        let close = async {
            if let Err(err) = self.connection.close(200, "OK".into()).await {
                tracing::debug!(%err, "closing the connection");
            }
        };
        bounded("the connection to close", close).await;
    }
}

/// Runs one step of [`RawServer::stop`], giving up on it after [`STOP_STEP`].
async fn bounded(what: &str, step: impl Future<Output = ()>) {
    if tokio::time::timeout(STOP_STEP, step).await.is_err() {
        tracing::warn!("the raw server's stop gave up waiting for {what} after {STOP_STEP:?}");
    }
}

/// How long each step of [`RawServer::stop`] may take.
const STOP_STEP: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
}

impl Request {
    /// The argument at `position` or named `name`.
    fn arg(&mut self, position: usize, name: &str) -> Option<Value> {
        match self.args.get_mut(position) {
            Some(value) => Some(value.take()),
            None => self.kwargs.remove(name),
        }
    }
}

/// Nameko's error shape.
fn remote_error(exc_type: &str, value: String) -> Value {
    json!({
        "exc_type": exc_type,
        "exc_path": format!("nameko.exceptions.{exc_type}"),
        "exc_args": [value],
        "value": value,
    })
}

async fn answer(server: &Server, method: &str, body: &[u8]) -> Result<Value, Value> {
    let mut request: Request = serde_json::from_slice(body)
        .map_err(|err| remote_error("MalformedRequest", format!("Message payload must be an object: {err}")))?;
    let missing = |name: &str| remote_error("IncorrectSignature", format!("{method}() missing argument '{name}'"));
    match method {
        "echo" => request.arg(0, "x").ok_or_else(|| missing("x")),
        "sleep" => {
            let ms = request
                .arg(0, "ms")
                .ok_or_else(|| missing("ms"))?
                .as_u64()
                .ok_or_else(|| remote_error("IncorrectSignature", "ms must be a whole number".into()))?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!(ms))
        }
        "ping_stats" => Ok(serde_json::to_value(server.pings.stats()).unwrap_or_default()),
        other => Err(remote_error("MethodNotFound", format!("{SERVICE}.{other}"))),
    }
}

async fn handle_request(delivery: Delivery, server: Arc<Server>) {
    let Some(reply_to) = delivery
        .properties
        .reply_to()
        .clone()
        .filter(|r| !r.as_str().is_empty())
    else {
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    };
    let method = delivery
        .routing_key
        .as_str()
        .strip_prefix(SERVICE)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or_default();
    let (result, error) = match answer(&server, method, &delivery.data).await {
        Ok(result) => (result, None),
        Err(error) => (Value::Null, Some(error)),
    };
    #[derive(Serialize)]
    struct Reply {
        result: Value,
        error: Option<Value>,
    }
    let body = serde_json::to_vec(&Reply { result, error }).unwrap_or_default();
    let mut properties = json_properties(FieldTable::default());
    if let Some(correlation_id) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    let published = publish(
        &server.publisher,
        &server.rpc_exchange,
        reply_to.as_str(),
        false,
        &body,
        properties,
    )
    .await;
    let settled = match published {
        Ok(_) => delivery.ack(BasicAckOptions::default()).await,
        Err(err) => {
            tracing::error!(%err, "the reply was not confirmed; requeueing the request");
            delivery
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        }
    };
    if let Err(err) = settled {
        tracing::warn!(%err, "could not settle a request");
    }
}

async fn handle_event(delivery: Delivery, server: Arc<Server>) {
    let settled = if serde_json::from_slice::<Value>(&delivery.data).is_ok() {
        server.pings.record();
        delivery.ack(BasicAckOptions::default()).await
    } else {
        tracing::error!("rejecting an event that does not decode");
        delivery.reject(BasicRejectOptions { requeue: false }).await
    };
    if let Err(err) = settled {
        tracing::warn!(%err, "could not settle an event");
    }
}

// ===== client =====

type Pending = Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>;

struct Client {
    connection: Connection,
    declarer: Channel,
    publisher: Channel,
    replies: Channel,
    reply_tag: String,
    reply_queue: String,
    reply_to: ShortString,
    rpc_exchange: ShortString,
    events_exchange: ShortString,
    pending: Arc<Pending>,
}

/// A client of `bench` over lapin alone, with the guarantees of nameko-rs's
/// `ClusterRpc` and `EventDispatcher`. Cheap to clone.
#[derive(Clone)]
pub struct RawClient {
    inner: Arc<Client>,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient")
            .field("reply_queue", &self.inner.reply_queue)
            .finish_non_exhaustive()
    }
}

impl RawClient {
    /// Connects to `uri`, declares `rpc_exchange`, `loadgen.events` and a reply queue,
    /// and consumes the reply queue.
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] when RabbitMQ cannot be reached or refuses a declare.
    pub async fn connect(uri: &str, rpc_exchange: &str) -> Result<Self, BenchError> {
        let connection = connect(uri, "example-bench raw-client").await?;
        let declarer = connection
            .create_channel()
            .await
            .map_err(broker_error("channel.open"))?;
        declare_exchange(&declarer, rpc_exchange).await?;
        declare_exchange(&declarer, EVENT_EXCHANGE).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let reply_queue = format!("rpc.reply-standalone_rpc_proxy-{id}");
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(REPLY_QUEUE_EXPIRES_MS));
        declare_bound_queue(&declarer, &reply_queue, arguments, rpc_exchange, &id).await?;
        let replies = connection
            .create_channel()
            .await
            .map_err(broker_error("channel.open"))?;
        let mut consumer = replies
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker_error("basic.consume"))?;
        let reply_tag = consumer.tag().to_string();
        let pending: Arc<Pending> = Arc::default();
        let waiting = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let waiter = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(id.as_str()));
                let Delivery { data, acker, .. } = delivery;
                if let Some(waiter) = waiter {
                    let _ = waiter.send(data);
                }
                // Acked in a task of its own: the next reply need not wait for this
                // ack to be written.
                tokio::spawn(async move {
                    if let Err(err) = acker.ack(BasicAckOptions::default()).await {
                        tracing::debug!(%err, "could not ack a reply");
                    }
                });
            }
        });
        Ok(Self {
            inner: Arc::new(Client {
                publisher: confirm_channel(&connection).await?,
                reply_tag,
                connection,
                declarer,
                replies,
                reply_queue,
                reply_to: id.into(),
                rpc_exchange: rpc_exchange.into(),
                events_exchange: EVENT_EXCHANGE.into(),
                pending,
            }),
        })
    }

    /// The reply queue's name.
    pub fn reply_queue(&self) -> &str {
        &self.inner.reply_queue
    }

    /// Stops consuming, deletes the reply queue and closes the connection.
    ///
    /// # Errors
    ///
    /// [`BenchError::Broker`] when the reply queue cannot be deleted.
    pub async fn close(self) -> Result<(), BenchError> {
        let inner = &self.inner;
        let _ = inner
            .replies
            .basic_cancel(inner.reply_tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let deleted = inner
            .declarer
            .queue_delete(inner.reply_queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map(drop)
            .map_err(broker_error("queue.delete"));
        let _ = inner.connection.close(200, "OK".into()).await;
        deleted
    }

    /// The standalone context headers nameko-rs sends: a fresh trace id and, for calls,
    /// a call id stack of one `standalone_rpc_proxy.call.<uuid>`.
    fn headers(call: bool) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(
            "nameko.trace_id".into(),
            long(uuid::Uuid::new_v4().simple().to_string()),
        );
        if call {
            let call_id = format!("standalone_rpc_proxy.call.{}", uuid::Uuid::new_v4());
            headers.insert(
                "nameko.call_id_stack".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![long(call_id)])),
            );
        }
        headers
    }
}

impl Caller for RawClient {
    async fn call(&self, method: &'static str, args: Value) -> Result<Value, BenchError> {
        let inner = &self.inner;
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let properties = json_properties(Self::headers(true))
            .with_correlation_id(correlation_id.as_str().into())
            .with_reply_to(inner.reply_to.clone())
            .with_expiration(CALL_TIMEOUT.as_millis().to_string().into());
        let body = serde_json::to_vec(&json!({"args": args, "kwargs": {}})).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        let forget = || {
            inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&correlation_id);
        };
        inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(correlation_id.clone(), tx);
        let routing_key = format!("{SERVICE}.{method}");
        match publish(
            &inner.publisher,
            &inner.rpc_exchange,
            &routing_key,
            true,
            &body,
            properties,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                forget();
                return Err(BenchError::UnknownService(SERVICE.to_owned()));
            }
            Err(err) => {
                forget();
                return Err(err);
            }
        }
        let body = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => return Err(BenchError::Call("the reply listener stopped".into())),
            Err(_) => {
                forget();
                return Err(BenchError::Timeout(format!(
                    "no reply from {routing_key} within {CALL_TIMEOUT:?}"
                )));
            }
        };
        #[derive(Deserialize)]
        struct Reply {
            #[serde(default)]
            result: Value,
            #[serde(default)]
            error: Option<Value>,
        }
        let reply: Reply = serde_json::from_slice(&body)
            .map_err(|err| BenchError::Call(format!("bad reply to {routing_key}: {err}")))?;
        match reply.error {
            Some(error) => Err(BenchError::Call(format!("{routing_key}: {error}"))),
            None => Ok(reply.result),
        }
    }

    async fn ping(&self, payload: Value) -> Result<(), BenchError> {
        let inner = &self.inner;
        let body = serde_json::to_vec(&payload).map_err(|err| BenchError::Call(err.to_string()))?;
        let properties = json_properties(Self::headers(false));
        publish(
            &inner.publisher,
            &inner.events_exchange,
            EVENT_TYPE,
            false,
            &body,
            properties,
        )
        .await
        .map(drop)
    }
}

/// Deletes `queues` and `exchanges` (missing ones are fine).
///
/// # Errors
///
/// [`BenchError::Broker`] when RabbitMQ cannot be reached or refuses a delete.
pub async fn delete(uri: &str, queues: &[&str], exchanges: &[&str]) -> Result<(), BenchError> {
    let connection = connect(uri, "example-bench clean-up").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(broker_error("channel.open"))?;
    for queue in queues {
        channel
            .queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await
            .map_err(broker_error("queue.delete"))?;
    }
    for exchange in exchanges {
        channel
            .exchange_delete((*exchange).into(), ExchangeDeleteOptions::default())
            .await
            .map_err(broker_error("exchange.delete"))?;
    }
    let _ = connection.close(200, "OK".into()).await;
    Ok(())
}
