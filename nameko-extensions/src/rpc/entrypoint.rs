//! The service's side of RPC: the [`RpcEntrypoint`] and the consumer all of a
//! service's RPC entrypoints share.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use nameko_core::{
    Binding, ContextData, Entrypoint, Extension, Extensions, RemoteError, SetupContext, SetupError, WorkerError,
    describe::INSPECT_METHOD,
};
use serde::Serialize;
use serde_json::Value;
use tokio_util::{sync::CancellationToken, task::task_tracker::TaskTrackerToken};

use super::{FromRpcArgs, RpcArgs, args::RequestArgs, rpc_queue};
use crate::{
    broker::{
        Binding as QueueBinding, Delivery, Exchange, Headers, Properties, Publish, PublishOutcome, Queue, QueueType,
        SharedBroker, Topology,
    },
    consumer::{DeliveryHandler, QueueConsumer, settle},
    context::context_from_headers,
    inbound,
    slot::reserve_unless_stopped,
    transport,
};

/// The outcome of handling one request.
enum Handled {
    /// The reply's body, serialized once, straight from the worker's result.
    Reply(Vec<u8>),
    /// The worker never ran (stopping) or was killed: the request goes back.
    Requeue,
}

/// One RPC method, its types erased.
trait RpcMethod: Send + Sync {
    /// Decodes `args` and starts a worker; `pending` replies and settles the request
    /// from the worker's task once it finished (or here, if no worker runs).
    fn handle(
        &self,
        args: RpcArgs,
        data: ContextData,
        stopping: CancellationToken,
        pending: Pending,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<Req: FromRpcArgs, Resp> Method<Req, Resp> {
    /// The request's arguments for logs and monitoring: its body, decoded when read.
    fn call_args(pending: &Pending) -> RequestArgs {
        RequestArgs {
            body: pending.delivery.body.clone(),
            params: Req::PARAMETERS,
        }
    }
}

struct Method<Req, Resp> {
    binding: Binding<Req, Resp>,
}

impl<Req: FromRpcArgs, Resp: Serialize + Send + 'static> RpcMethod for Method<Req, Resp> {
    fn handle(
        &self,
        args: RpcArgs,
        data: ContextData,
        stopping: CancellationToken,
        pending: Pending,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let binding = self.binding.clone();
        Box::pin(async move {
            // Decoded before a worker slot is taken: bad calls never hold one.
            let request = match Req::from_rpc_args(args, binding.info().method()) {
                Ok(request) => request,
                Err(err) => return pending.finish(Handled::Reply(reply_body::<()>(Err(err)))).await,
            };
            let Some(slot) = reserve_unless_stopped(&binding, &stopping).await else {
                return pending.finish(Handled::Requeue).await;
            };
            let slot = slot.call_args(Self::call_args(&pending));
            slot.start_then(request, data, Extensions::new(), move |result| {
                let handled = match result {
                    Ok(value) => Handled::Reply(reply_body(Ok(&value))),
                    Err(WorkerError::Killed | WorkerError::NotStarted(_)) => Handled::Requeue,
                    Err(err) => Handled::Reply(reply_body::<()>(Err(err.to_remote_error()))),
                };
                pending.finish(handled)
            });
        })
    }
}

/// A request being handled: replies to it and settles it, once.
struct Pending {
    consumer: Arc<RpcConsumer>,
    delivery: Delivery,
    reply_to: String,
    /// Keeps the consumer's graceful stop waiting until the request is settled.
    _settling: TaskTrackerToken,
}

impl Pending {
    async fn finish(self, handled: Handled) {
        let delivery = &self.delivery;
        match handled {
            Handled::Requeue => settle(delivery.nack(true).await, "message"),
            Handled::Reply(body) => {
                if self.consumer.reply(delivery, &self.reply_to, body).await {
                    settle(delivery.ack().await, "message");
                } else {
                    settle(delivery.nack(true).await, "message");
                }
            }
        }
    }
}

/// Consumes `rpc-<service>` for every RPC entrypoint of one service.
pub(super) struct RpcConsumer {
    service: &'static str,
    broker: SharedBroker,
    exchange: String,
    methods: Mutex<HashMap<&'static str, Arc<dyn RpcMethod>>>,
    consumer: Arc<QueueConsumer>,
    started: tokio::sync::OnceCell<()>,
    registered: Mutex<usize>,
    /// Whether some method has a `max_workers` of its own (see [`RpcConsumer::start`]).
    limited: std::sync::atomic::AtomicBool,
    /// The queue type a method asked for, and the method: all must agree.
    queue_type: Mutex<Option<(QueueType, &'static str)>>,
    /// The answer of the built-in introspection RPC
    /// ([`INSPECT_METHOD`](nameko_core::describe::INSPECT_METHOD)).
    description: Value,
    /// `MAX_MESSAGE_SIZE`: larger requests are answered with an error, never decoded.
    max_message_size: usize,
}

impl RpcConsumer {
    fn new(
        service: &'static str,
        broker: SharedBroker,
        exchange: String,
        prefetch: u16,
        readiness: Option<&nameko_core::Readiness>,
        description: Value,
        max_message_size: usize,
    ) -> Self {
        let queue = rpc_queue(service);
        let topology = Topology::new()
            .exchange(Exchange::topic(&exchange))
            .queue(Queue::durable(&queue))
            .binding(QueueBinding::new(&exchange, &queue, format!("{service}.*")));
        let consumer = QueueConsumer::new(Arc::clone(&broker), topology, queue, prefetch, readiness);
        Self {
            service,
            broker,
            exchange,
            methods: Mutex::default(),
            consumer,
            started: tokio::sync::OnceCell::new(),
            registered: Mutex::new(0),
            limited: std::sync::atomic::AtomicBool::new(false),
            queue_type: Mutex::new(None),
            description,
            max_message_size,
        }
    }

    fn register(
        &self,
        method: &'static str,
        handler: Arc<dyn RpcMethod>,
        limited: bool,
        queue_type: Option<QueueType>,
    ) -> Result<(), SetupError> {
        if let Some(wanted) = queue_type {
            let mut chosen = self.queue_type.lock().unwrap_or_else(|p| p.into_inner());
            match *chosen {
                Some((current, other)) if current != wanted => {
                    return Err(SetupError::new(format!(
                        "service `{}`: the RPC methods `{other}` and `{method}` ask for different queue types \
                         ({current} and {wanted}), but all of a service's RPC methods share one queue, `{}`: give \
                         them the same queue_type, or give it on one method only",
                        self.service,
                        self.consumer.queue()
                    )));
                }
                Some(_) => {}
                None => {
                    *chosen = Some((wanted, method));
                    self.consumer
                        .update_queue(|queue| *queue = queue.clone().queue_type(wanted));
                }
            }
        }
        if limited {
            self.limited.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(method, handler);
        *self.registered.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(())
    }

    /// Consumes, once every entrypoint of the service registered (the container sets
    /// them all up before starting any).
    ///
    /// The prefetch is the container's `max_workers`, as Nameko's — unless a method has
    /// a `max_workers` of its own: then it is unlimited. All of a service's methods share
    /// one queue, in order: requests for a method at its limit wait in this instance,
    /// and with any finite prefetch enough of them would fill the window, so requests
    /// for the other methods (a nested call back into this service among them) could
    /// never be delivered while they wait: a deadlock when the limited method's workers
    /// wait for such a call. Unlimited, every request is delivered; those for a method at
    /// its limit wait for its permits (holding no worker slot), the others run in the
    /// container's free slots.
    async fn start(self: &Arc<Self>) -> Result<(), SetupError> {
        self.started
            .get_or_try_init(|| async {
                if self.limited.load(std::sync::atomic::Ordering::Relaxed) {
                    self.consumer.set_prefetch(0);
                }
                let handler = Arc::new(Requests {
                    consumer: Arc::clone(self),
                });
                self.consumer.start(handler).await.map_err(|err| {
                    SetupError::with_source(format!("could not consume `{}`", self.consumer.queue()), err)
                })
            })
            .await
            .map(drop)
    }

    /// One entrypoint stopped; the last one stops the consumer.
    async fn unregister(&self) {
        let last = {
            let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
            *registered = registered.saturating_sub(1);
            *registered == 0
        };
        if last {
            self.consumer.stop().await;
        }
    }

    fn method(&self, name: &str) -> Option<Arc<dyn RpcMethod>> {
        self.methods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    async fn reply(&self, request: &Delivery, reply_to: &str, body: Vec<u8>) -> bool {
        let mut properties = Properties::json(Headers::new());
        properties.correlation_id = request.properties.correlation_id.clone();
        let message = Publish {
            exchange: self.exchange.clone(),
            routing_key: reply_to.to_owned(),
            mandatory: false,
            properties,
            body: Bytes::from(body),
        };
        match self.broker.publish(message).await {
            Ok(PublishOutcome::Routed | PublishOutcome::Returned { .. }) => true,
            Ok(outcome) => {
                tracing::error!(
                    ?outcome,
                    "the RPC reply was not confirmed; the request will be redelivered"
                );
                false
            }
            Err(err) => {
                tracing::error!(%err, "could not publish the RPC reply; the request will be redelivered");
                false
            }
        }
    }

    async fn handle(self: Arc<Self>, delivery: Delivery, stopping: CancellationToken, settling: TaskTrackerToken) {
        let method = delivery
            .routing_key
            .strip_prefix(self.service)
            .and_then(|rest| rest.strip_prefix('.'));
        let inspect = method == Some(INSPECT_METHOD);
        let reply_to = delivery.properties.reply_to.clone().filter(|r| !r.is_empty());
        // Refused before anything is decoded (a body over `MAX_MESSAGE_SIZE`, dropped
        // headers): answered with the refusal, never run.
        let refused = inbound::check(&delivery, self.max_message_size).err();
        if let Some(refusal) = &refused {
            tracing::warn!(
                routing_key = %delivery.routing_key,
                reply = reply_to.is_some(),
                "refusing an RPC request: {refusal}"
            );
        }
        let checked = match &refused {
            Some(refusal) => Err(refusal.to_remote_error()),
            None => check_request(&delivery),
        };
        let checked = checked.and_then(|args| {
            let name = method.unwrap_or(delivery.routing_key.as_str());
            let handler = method
                .and_then(|m| self.method(m))
                .ok_or_else(|| RemoteError::method_not_found(name))?;
            Ok((handler, args))
        });
        let Some(reply_to) = reply_to else {
            if refused.is_none() {
                tracing::warn!(
                    routing_key = %delivery.routing_key,
                    "rejecting an RPC request without `reply_to`: nobody could read its reply"
                );
            }
            settle(delivery.reject(false).await, "message");
            return;
        };
        let pending = Pending {
            consumer: self,
            delivery,
            reply_to,
            _settling: settling,
        };
        // The built-in introspection RPC: answered here, without a worker.
        if inspect && refused.is_none() && checked.is_err() {
            let body = match check_request(&pending.delivery) {
                Ok(_) => reply_body(Ok(&pending.consumer.description)),
                Err(err) => reply_body::<()>(Err(err)),
            };
            pending.finish(Handled::Reply(body)).await;
            return;
        }
        match checked {
            Ok((handler, args)) => {
                let data = context_from_headers(pending.delivery.properties.headers.as_ref());
                handler.handle(args, data, stopping, pending).await;
            }
            Err(err) => {
                if refused.is_none() {
                    tracing::warn!(routing_key = %pending.delivery.routing_key, error = %err, "bad RPC request");
                }
                pending.finish(Handled::Reply(reply_body::<()>(Err(err)))).await;
            }
        }
    }
}

/// A reply's body, `{"result": .., "error": ..}`, serialized once. A result that
/// cannot be serialized becomes Nameko's `UnserializableValueError`.
fn reply_body<T: Serialize>(result: Result<&T, RemoteError>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Reply<'a, T> {
        result: Option<&'a T>,
        error: Option<RemoteError>,
    }
    let reply = match result {
        Ok(value) => Reply {
            result: Some(value),
            error: None,
        },
        Err(err) => Reply {
            result: None,
            error: Some(err),
        },
    };
    serde_json::to_vec(&reply).unwrap_or_else(|err| {
        let error = RemoteError::unserializable_value(&format!("{err}"));
        serde_json::to_vec(&Reply::<()> {
            result: None,
            error: Some(error),
        })
        .expect("an error always serializes")
    })
}

/// Checks content type and body; returns the arguments.
fn check_request(delivery: &Delivery) -> Result<RpcArgs, RemoteError> {
    match delivery.properties.content_type.as_deref() {
        Some("application/json") => RpcArgs::from_body(&delivery.body),
        Some(other) => Err(RemoteError::malformed_request(&format!(
            "unsupported content type `{other}`; this service accepts `application/json`"
        ))),
        None => Err(RemoteError::malformed_request("Message missing `content_type`")),
    }
}

struct Requests {
    consumer: Arc<RpcConsumer>,
}

impl DeliveryHandler for Requests {
    fn handle(
        &self,
        delivery: Delivery,
        stopping: CancellationToken,
        settling: TaskTrackerToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(Arc::clone(&self.consumer).handle(delivery, stopping, settling))
    }
}

// ===== Rpc =====

/// The `rpc` entrypoint (`#[rpc]`): serves a method to Nameko RPC callers.
///
/// `Req` is what the method takes — decoded from `{"args", "kwargs"}` with
/// [`FromRpcArgs`] before a worker slot is taken — and `Resp` what it returns,
/// serialized as the reply's `result`. Every RPC entrypoint of a service shares one
/// consumer on `rpc-<service>`, with prefetch `max_workers` — unlimited when a method
/// has a [`max_workers`](Self::max_workers) of its own (see there).
///
/// A request is checked with [`inbound::check`](crate::inbound::check) before it is
/// decoded: one whose body is larger than `MAX_MESSAGE_SIZE` (default 8 MiB) is answered
/// with a `MessageTooLarge` error and acknowledged (rejected without requeue when it has
/// no `reply_to`); it never runs.
pub struct RpcEntrypoint<Req, Resp> {
    max_workers: Option<usize>,
    queue_type: Option<QueueType>,
    sensitive_arguments: &'static [&'static str],
    binding: Option<Binding<Req, Resp>>,
    consumer: Option<Arc<RpcConsumer>>,
    _marker: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> RpcEntrypoint<Req, Resp> {
    /// An RPC entrypoint.
    pub const fn new() -> Self {
        Self {
            max_workers: None,
            queue_type: None,
            sensitive_arguments: &[],
            binding: None,
            consumer: None,
            _marker: PhantomData,
        }
    }

    /// Names the arguments logs and monitoring must not show (`#[rpc(sensitive =
    /// [...])]`, Nameko's `sensitive_arguments`): a parameter's name, then `.key` or
    /// `[index]` steps (`password`, `card.number`, `items[0]`); each value a path names
    /// is shown as `********` (see [`nameko_core::redact`]). The worker's log lines (a
    /// failure, the DEBUG start line) carry the call's arguments so.
    ///
    /// ```
    /// use nameko_extensions::rpc::RpcEntrypoint;
    ///
    /// let login = RpcEntrypoint::<(String, String), bool>::new().sensitive_arguments(&["password"]);
    /// ```
    #[must_use]
    pub const fn sensitive_arguments(mut self, paths: &'static [&'static str]) -> Self {
        self.sensitive_arguments = paths;
        self
    }

    /// Declares the service's queue `rpc-<service>` with this type.
    ///
    /// [`QueueType::Quorum`] replicates the queue across a RabbitMQ cluster, so
    /// requests survive the loss of a node. All of a service's RPC methods share the
    /// queue: methods that give a type must give the same one (a setup error
    /// otherwise), and one method giving it is enough. A queue's type is fixed when it
    /// is first declared: a Python Nameko instance of the same service declares the
    /// queue classic, so only a service no Python instance serves can have a quorum
    /// queue. The start fails with an error saying so when the queue exists with the
    /// other type; to change it, drain and delete the queue first.
    ///
    /// ```
    /// use nameko_extensions::{broker::QueueType, rpc::RpcEntrypoint};
    ///
    /// let replicated = RpcEntrypoint::<(), String>::new().queue_type(QueueType::Quorum);
    /// ```
    #[must_use]
    pub const fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = Some(queue_type);
        self
    }

    /// Runs at most `max_workers` workers of this method at once (at least 1), within
    /// the container's `max_workers`. Requests beyond it wait, holding no worker slot,
    /// so the service's other methods keep the container's free slots.
    ///
    /// All of a service's methods share the queue `rpc-<service>`; when any of them has
    /// a limit of its own, the service consumes it with no prefetch limit, so that
    /// requests waiting for one method's limit never keep the others' requests (a
    /// nested call back into the service among them) from being delivered. Requests
    /// then wait in the instance that received them rather than in the queue.
    ///
    /// ```
    /// use nameko_extensions::rpc::RpcEntrypoint;
    ///
    /// let report = RpcEntrypoint::<(), String>::new().max_workers(2);
    /// ```
    #[must_use]
    pub const fn max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = Some(max_workers);
        self
    }
}

impl<Req, Resp> Default for RpcEntrypoint<Req, Resp> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req, Resp> fmt::Debug for RpcEntrypoint<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcEntrypoint")
            .field("max_workers", &self.max_workers)
            .field("queue_type", &self.queue_type)
            .field("sensitive_arguments", &self.sensitive_arguments)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

impl<Req: FromRpcArgs, Resp: Serialize + Send + 'static> Extension for RpcEntrypoint<Req, Resp> {
    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let broker = transport::broker(cx)?;
        let binding = self
            .binding
            .clone()
            .ok_or_else(|| SetupError::new("the rpc entrypoint was not bound"))?;
        let service = cx.service_name();
        if service.contains('.') {
            return Err(SetupError::new(format!(
                "service name `{service}` contains a dot: RPC routing keys are `<service>.<method>`, so it could never be called"
            )));
        }
        let method = binding.info().method();
        if method.starts_with("_nameko_") {
            return Err(SetupError::new(format!(
                "method name `{method}` starts with `_nameko_`, which is reserved for the framework's own RPCs \
                 (`{INSPECT_METHOD}`): rename it"
            )));
        }
        if method.contains('.') {
            return Err(SetupError::new(format!(
                "method name `{method}` contains a dot: it could never be called"
            )));
        }
        let exchange = cx.config().rpc_exchange().to_owned();
        let prefetch = u16::try_from(cx.config().max_workers()).unwrap_or(u16::MAX);
        let max_message_size = cx.config().max_message_size();
        let readiness = transport::readiness(cx);
        let consumer = cx.shared().get_or_insert_with(&format!("rpc-consumer/{service}"), || {
            // Built once, with the consumer every RPC entrypoint of the service shares.
            let description = serde_json::to_value(cx.service_description()).unwrap_or(Value::Null);
            RpcConsumer::new(
                service,
                broker,
                exchange,
                prefetch,
                readiness.as_ref(),
                description,
                max_message_size,
            )
        });
        let limited = binding.info().max_workers().is_some();
        consumer.register(method, Arc::new(Method { binding }), limited, self.queue_type)?;
        self.consumer = Some(consumer);
        Ok(())
    }

    async fn start(&self) -> Result<(), SetupError> {
        match &self.consumer {
            Some(consumer) => consumer.start().await,
            None => Err(SetupError::new("the rpc entrypoint was not set up")),
        }
    }

    async fn stop(&self) {
        if let Some(consumer) = &self.consumer {
            consumer.unregister().await;
        }
    }

    fn kill(&self) {
        if let Some(consumer) = &self.consumer {
            consumer.consumer.kill();
        }
    }
}

impl<Req: FromRpcArgs, Resp: Serialize + Send + 'static> Entrypoint for RpcEntrypoint<Req, Resp> {
    type Request = Req;
    type Response = Resp;
    const KIND: &'static str = "rpc";

    fn bind(&mut self, binding: Binding<Req, Resp>) {
        self.binding = Some(binding);
    }

    fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }

    fn sensitive_arguments(&self) -> &'static [&'static str] {
        self.sensitive_arguments
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_reply_body_is_result_then_error() {
        let ok = reply_body(Ok(&serde_json::json!({"b": 1, "a": [1, 2]})));
        assert_eq!(
            String::from_utf8(ok).unwrap(),
            r#"{"result":{"a":[1,2],"b":1},"error":null}"#
        );
        let err = reply_body::<()>(Err(RemoteError::method_not_found("nope")));
        let err: Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(err["result"], Value::Null);
        assert_eq!(err["error"]["exc_type"], "MethodNotFound");
    }

    #[test]
    fn a_result_that_cannot_be_serialized_becomes_unserializable_value_error() {
        // JSON object keys must be strings: a tuple key fails half-way through.
        let value = BTreeMap::from([((1, 2), "x")]);
        let body: Value = serde_json::from_slice(&reply_body(Ok(&value))).unwrap();
        assert_eq!(body["result"], Value::Null);
        assert_eq!(body["error"]["exc_type"], "UnserializableValueError");
        assert_eq!(body["error"]["exc_path"], "nameko.exceptions.UnserializableValueError");
        assert!(
            body["error"]["value"]
                .as_str()
                .unwrap()
                .contains("key must be a string")
        );
    }
}
