//! The caller's side of RPC: a reply listener and the client that publishes requests
//! and matches replies by correlation id.

use std::{
    collections::HashMap,
    future::{Future, IntoFuture},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use nameko_core::{ContextData, RemoteError};
use serde_json::Value;
use tokio::sync::{broadcast::error::RecvError, oneshot};
use tokio_util::{sync::CancellationToken, task::task_tracker::TaskTrackerToken};

use super::{RpcArgs, RpcError};
use crate::{
    broker::{
        Binding, BrokerError, ConnectionEvent, Delivery, Exchange, Properties, Publish, PublishOutcome, Queue,
        SharedBroker, Topology, expiration_for,
    },
    consumer::{DeliveryHandler, QueueConsumer},
    context::{Traced, headers_from_context},
};

/// How long a reply queue outlives its last consumer (Nameko's `x-expires`).
pub const REPLY_QUEUE_EXPIRES: Duration = Duration::from_secs(300);

type Pending = Mutex<HashMap<String, oneshot::Sender<Result<Value, RpcError>>>>;

/// Receives replies on one reply queue and hands them to waiting calls. Never waits
/// for worker slots: nested calls cannot deadlock.
struct Replies {
    pending: Pending,
}

impl Replies {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Result<Value, RpcError>>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the reply correlated by `correlation_id`.
    fn register(&self, correlation_id: String, waiter: oneshot::Sender<Result<Value, RpcError>>) {
        self.pending().insert(correlation_id, waiter);
    }

    /// Stops waiting for the reply correlated by `correlation_id`.
    fn forget(&self, correlation_id: &str) {
        self.pending().remove(correlation_id);
    }

    /// Fails every waiting call: the connection was lost, their replies cannot come.
    fn fail_pending(&self, reason: &str) {
        let pending: Vec<_> = self.pending().drain().collect();
        if !pending.is_empty() {
            tracing::warn!(calls = pending.len(), %reason, "the broker connection was lost: failing the RPC calls waiting for replies");
        }
        for (_, waiter) in pending {
            let _ = waiter.send(Err(RpcError::ConnectionLost {
                target: String::new(),
                reason: reason.to_owned(),
            }));
        }
    }
}

/// Follows the connection: fails waiting calls when it is lost, and checks the reply
/// queue is there (declaring it again) when it recovers — warning when the outage
/// outlasted the queue's `x-expires`, so the broker deleted it meanwhile.
async fn watch_connection(
    broker: std::sync::Weak<dyn crate::broker::Broker>,
    mut events: tokio::sync::broadcast::Receiver<ConnectionEvent>,
    replies: std::sync::Weak<Replies>,
    topology: Topology,
    stopped: CancellationToken,
) {
    let mut lost_at = None;
    loop {
        let event = tokio::select! {
            () = stopped.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(ConnectionEvent::Lost { reason }) => match replies.upgrade() {
                Some(replies) => {
                    lost_at.get_or_insert_with(tokio::time::Instant::now);
                    replies.fail_pending(&reason);
                }
                None => return,
            },
            Ok(ConnectionEvent::Recovered) => {
                let Some(broker) = broker.upgrade() else {
                    return;
                };
                let outage = lost_at.take().map(|at: tokio::time::Instant| at.elapsed());
                let queue = topology.queues.first();
                let expires = queue.and_then(Queue::expires_after);
                let queue = queue.map_or("", |q| q.name.as_str());
                if let (Some(outage), Some(expires)) = (outage, expires)
                    && outage >= expires
                {
                    // The broker deleted the queue `expires` after its consumer went; the
                    // connection's recovery declared it again. Calls waiting then have
                    // failed already (`ConnectionLost`); replies sent meanwhile are gone.
                    tracing::warn!(
                        queue,
                        ?outage,
                        ?expires,
                        "the reply queue expired during the outage and was declared again: \
                         replies sent to it while the connection was down are lost"
                    );
                }
                // The broker declared the reply queue again with its consumer; this
                // checks it and its binding are there.
                match broker.declare(&topology).await {
                    Ok(()) => tracing::debug!(queue, "the reply queue is there after the connection recovered"),
                    Err(err) => {
                        tracing::warn!(queue, %err, "could not check the reply queue after the connection recovered");
                    }
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

impl DeliveryHandler for Replies {
    fn handle(
        &self,
        delivery: Delivery,
        _stopping: CancellationToken,
        settling: TaskTrackerToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let waiter = delivery
            .properties
            .correlation_id
            .as_deref()
            .and_then(|id| self.pending().remove(id));
        Box::pin(async move {
            match waiter {
                Some(waiter) => {
                    let _ = waiter.send(decode_reply(&delivery.body));
                }
                None => tracing::debug!(
                    correlation_id = ?delivery.properties.correlation_id,
                    "dropping a reply nobody waits for"
                ),
            }
            if let Err(err) = delivery.ack().await {
                tracing::debug!(%err, "could not ack a reply");
            }
            drop(settling);
        })
    }
}

fn decode_reply(body: &[u8]) -> Result<Value, RpcError> {
    #[derive(serde::Deserialize)]
    struct Reply {
        #[serde(default)]
        result: Value,
        #[serde(default)]
        error: Option<RemoteError>,
    }
    let reply: Reply = serde_json::from_slice(body).map_err(|err| RpcError::Decode(format!("bad reply: {err}")))?;
    match reply.error {
        Some(error) => Err(RpcError::Remote(Box::new(error))),
        None => Ok(reply.result),
    }
}

/// Publishes RPC requests and waits for their replies on a reply queue of its own
/// (`rpc.reply-<name>-<uuid>`, bound to the RPC exchange with the uuid). Cheap to
/// clone; used by the RPC dependencies and by standalone callers.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    broker: SharedBroker,
    exchange: String,
    reply_to: String,
    replies: Arc<Replies>,
    consumer: Arc<QueueConsumer>,
    default_timeout: Option<Duration>,
    stopped: CancellationToken,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.stopped.cancel();
    }
}

impl RpcClient {
    /// Declares a reply queue named for `name` on the RPC `exchange` and starts
    /// listening. `default_timeout` applies to calls that set none.
    ///
    /// # Errors
    ///
    /// When the broker refuses the declare or the consumer.
    pub async fn start(
        broker: SharedBroker,
        exchange: &str,
        name: &str,
        default_timeout: Option<Duration>,
    ) -> Result<Self, BrokerError> {
        let id = nameko_core::ids::uuid4().to_string();
        let queue = format!("rpc.reply-{name}-{id}");
        let topology = Topology::new()
            .exchange(Exchange::topic(exchange))
            .queue(Queue::durable(&queue).expires(REPLY_QUEUE_EXPIRES))
            .binding(Binding::new(exchange, &queue, &id));
        let replies = Arc::new(Replies {
            pending: Mutex::default(),
        });
        let consumer = QueueConsumer::new(Arc::clone(&broker), topology.clone(), queue, 0, None);
        let events = broker.events();
        consumer.start(Arc::clone(&replies) as Arc<dyn DeliveryHandler>).await?;
        let stopped = CancellationToken::new();
        tokio::spawn(watch_connection(
            Arc::downgrade(&broker),
            events,
            Arc::downgrade(&replies),
            topology,
            stopped.clone(),
        ));
        Ok(Self {
            inner: Arc::new(ClientInner {
                broker,
                exchange: exchange.to_owned(),
                reply_to: id,
                replies,
                consumer,
                default_timeout,
                stopped,
            }),
        })
    }

    /// The reply queue's name.
    pub fn reply_queue(&self) -> &str {
        self.inner.consumer.queue()
    }

    /// The default timeout of calls.
    pub fn default_timeout(&self) -> Option<Duration> {
        self.inner.default_timeout
    }

    /// Calls `service.method` and waits for the reply.
    ///
    /// The request's publisher confirm is awaited side by side with the reply rather
    /// than before it: a reply proves the request was delivered, so a call whose reply
    /// comes first returns without waiting for the confirm; a request the broker
    /// returns (nobody listens) still fails with [`RpcError::UnknownService`].
    ///
    /// # Errors
    ///
    /// [`RpcError`]: the remote error, an unknown service, a timeout, a transport
    /// failure.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        args: RpcArgs,
        data: &ContextData,
        timeout: Option<Duration>,
    ) -> Result<Value, RpcError> {
        self.send(service, method, args, data, timeout, Confirm::WithReply)
            .await?
            .await
    }

    /// Publishes a call to `service.method` and returns once it is routed; await the
    /// returned [`RpcReply`] for the result. Several calls can be in flight at once.
    ///
    /// # Errors
    ///
    /// [`RpcError::UnknownService`] when no service listens, [`RpcError::InvalidTarget`]
    /// for names that cannot be routed, [`RpcError::Transport`] when the publish fails.
    pub async fn call_async(
        &self,
        service: &str,
        method: &str,
        args: RpcArgs,
        data: &ContextData,
        timeout: Option<Duration>,
    ) -> Result<RpcReply, RpcError> {
        self.send(service, method, args, data, timeout, Confirm::First).await
    }

    /// Publishes a call; with [`Confirm::First`] returns once the broker confirmed it,
    /// with [`Confirm::WithReply`] at once, the confirm read by the returned reply.
    pub(super) async fn send(
        &self,
        service: &str,
        method: &str,
        args: RpcArgs,
        data: &ContextData,
        timeout: Option<Duration>,
        confirm: Confirm,
    ) -> Result<RpcReply, RpcError> {
        for (what, name) in [("service", service), ("method", method)] {
            if name.is_empty() || name.contains('.') {
                return Err(RpcError::InvalidTarget(format!(
                    "the {what} name `{name}` cannot be routed: it must be non-empty and contain no dots"
                )));
            }
        }
        let timeout = timeout.or(self.inner.default_timeout);
        let correlation_id = nameko_core::ids::uuid4().to_string();
        let mut properties = Properties::json(headers_from_context(data));
        properties.correlation_id = Some(correlation_id.clone());
        properties.reply_to = Some(self.inner.reply_to.clone());
        properties.expiration = timeout.map(expiration_for);
        let (tx, rx) = oneshot::channel();
        self.inner.replies.register(correlation_id.clone(), tx);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let message = Publish {
            exchange: self.inner.exchange.clone(),
            routing_key: format!("{service}.{method}"),
            mandatory: true,
            properties,
            body: Bytes::from(args.to_body()),
        };
        let target = message.routing_key.clone();
        let mut reply = RpcReply {
            rx,
            deadline,
            timeout,
            target,
            correlation_id,
            client: self.clone(),
            confirming: None,
            span: Traced::default(),
        };
        // The confirm is awaited until the call's deadline, so a stalled connection
        // (packets held, not yet known lost) cannot outlast it. A request confirmed
        // later expires unrun in the queue (`expiration`).
        match confirm {
            Confirm::WithReply => {
                // Owned by the reply, which polls it beside the reply's wait.
                let broker = Arc::clone(&self.inner.broker);
                reply.confirming = Some(Box::pin(async move { broker.publish(message).await }));
            }
            Confirm::First => reply.call().confirm(self.inner.broker.publish(message)).await?,
        }
        Ok(reply)
    }

    /// Stops listening for replies; calls still waiting fail.
    pub async fn stop(&self) {
        self.inner.stopped.cancel();
        self.inner.consumer.stop().await;
        self.inner.replies.pending().clear();
    }

    /// Stops listening now.
    pub fn kill(&self) {
        self.inner.stopped.cancel();
        self.inner.consumer.kill();
        self.inner.replies.pending().clear();
    }
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("exchange", &self.inner.exchange)
            .field("reply_queue", &self.reply_queue())
            .field("default_timeout", &self.inner.default_timeout)
            .finish()
    }
}

/// The request's publish, until the broker confirms it.
type Confirming = Pin<Box<dyn Future<Output = Result<PublishOutcome, BrokerError>> + Send>>;

/// When [`RpcClient::send`] reads the request's publisher confirm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Confirm {
    /// Before it returns: the call was routed by then.
    First,
    /// While the reply is awaited, side by side with it.
    WithReply,
}

/// A published call: await it for the result.
#[must_use = "a reply does nothing unless awaited"]
pub struct RpcReply {
    rx: oneshot::Receiver<Result<Value, RpcError>>,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<Duration>,
    /// `<service>.<method>`.
    target: String,
    correlation_id: String,
    client: RpcClient,
    /// The request's publish, still waiting for its confirm (see [`Confirm::WithReply`]).
    confirming: Option<Confirming>,
    /// The call's span, ended with the reply.
    span: Traced,
}

impl RpcReply {
    /// The call's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Waits for the reply.
    ///
    /// # Errors
    ///
    /// The remote error, [`RpcError::Timeout`] past the deadline,
    /// [`RpcError::ConnectionLost`] at once when the broker connection is lost while
    /// waiting, [`RpcError::Transport`] when the reply listener stopped, and — for a
    /// call whose confirm is read with the reply — [`RpcError::UnknownService`] when
    /// the broker returned the request.
    pub async fn result(self) -> Result<Value, RpcError> {
        let Self {
            mut rx,
            deadline,
            timeout,
            target,
            correlation_id,
            client,
            confirming,
            span,
        } = self;
        let call = Call {
            deadline,
            timeout,
            target: &target,
            correlation_id: &correlation_id,
            replies: &client.inner.replies,
        };
        let result = match confirming {
            None => call.wait(&mut rx).await,
            Some(confirming) => {
                // Whichever comes first: a reply proves the request was delivered, so
                // its confirm no longer matters (dropped unread); a confirm saying it
                // was not routed means no reply can come.
                let waiting = call.wait(&mut rx);
                tokio::pin!(waiting);
                tokio::select! {
                    biased;
                    result = &mut waiting => result,
                    published = call.confirm(confirming) => match published {
                        Ok(()) => waiting.await,
                        Err(err) => Err(err),
                    },
                }
            }
        };
        span.check(&result);
        result
    }

    /// The same reply, its call's span ending with it.
    pub(super) fn traced(mut self, span: Traced) -> Self {
        self.span = span;
        self
    }

    fn call(&self) -> Call<'_> {
        Call {
            deadline: self.deadline,
            timeout: self.timeout,
            target: &self.target,
            correlation_id: &self.correlation_id,
            replies: &self.client.inner.replies,
        }
    }
}

/// What waiting for one call's confirm and reply needs.
struct Call<'a> {
    deadline: Option<tokio::time::Instant>,
    timeout: Option<Duration>,
    /// `<service>.<method>`.
    target: &'a str,
    correlation_id: &'a str,
    replies: &'a Replies,
}

impl Call<'_> {
    /// Gives up on the call: its reply will not be read.
    fn fail(&self, error: RpcError) -> RpcError {
        self.replies.forget(self.correlation_id);
        error
    }

    fn timed_out(&self) -> RpcError {
        self.fail(RpcError::Timeout {
            target: self.target.to_owned(),
            after: self.timeout.unwrap_or_default(),
        })
    }

    /// `future`'s output, or [`RpcError::Timeout`] once the call's deadline passes.
    async fn before_deadline<F: Future>(&self, future: F) -> Result<F::Output, RpcError> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, future)
                .await
                .map_err(|_| self.timed_out()),
            None => Ok(future.await),
        }
    }

    /// Waits, until the deadline, for the request's confirm, and reads it: an error
    /// unless the request was routed.
    async fn confirm(
        &self,
        confirming: impl Future<Output = Result<PublishOutcome, BrokerError>>,
    ) -> Result<(), RpcError> {
        let published = self.before_deadline(confirming).await?;
        match published {
            Ok(PublishOutcome::Routed) => Ok(()),
            Ok(PublishOutcome::Returned { .. }) => {
                let service = self.target.split_once('.').map_or(self.target, |(service, _)| service);
                Err(self.fail(RpcError::UnknownService(service.to_owned())))
            }
            Ok(PublishOutcome::Nacked) => {
                Err(self.fail(RpcError::Transport("the broker refused the request (nack)".into())))
            }
            Ok(PublishOutcome::ChannelClosed) => Err(self.fail(RpcError::Transport(
                "the channel closed before the request was confirmed".into(),
            ))),
            Err(err) => Err(self.fail(RpcError::Transport(err.to_string()))),
        }
    }

    /// Waits for the reply on `rx` until the deadline.
    async fn wait(&self, rx: &mut oneshot::Receiver<Result<Value, RpcError>>) -> Result<Value, RpcError> {
        let received = self.before_deadline(rx).await?;
        match received {
            Ok(Err(RpcError::ConnectionLost { reason, .. })) => Err(RpcError::ConnectionLost {
                target: self.target.to_owned(),
                reason,
            }),
            Ok(result) => result,
            Err(_) => Err(RpcError::Transport("the reply listener stopped".into())),
        }
    }
}

impl IntoFuture for RpcReply {
    type Output = Result<Value, RpcError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.result())
    }
}

impl std::fmt::Debug for RpcReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcReply")
            .field("target", &self.target)
            .field("correlation_id", &self.correlation_id)
            .finish()
    }
}
