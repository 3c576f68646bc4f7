//! A queue consumer shared by RPC, events and reply listeners: declares its topology,
//! consumes, hands each delivery to a handler task, reports whether it is consuming,
//! and stops gracefully.
//!
//! Connection recovery is the broker's (one loop): across a recovered loss the
//! broker keeps the consumer, so this one only reports not ready between
//! `ConnectionEvent::Lost` and `Recovered`. It declares and consumes again only when
//! its consumer alone ended — cancelled by the broker (queue deleted) or its channel
//! closed — and gives up when the connection is gone for good.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    task::Poll,
    time::Duration,
};

use nameko_core::{
    Readiness, ReadinessPart, SetupContext,
    redact::{CallArgs, bind_arguments},
};
use tokio::{
    sync::broadcast::{Receiver, error::RecvError},
    task::JoinHandle,
};
use tokio_util::{
    sync::CancellationToken,
    task::{TaskTracker, task_tracker::TaskTrackerToken},
};

use crate::broker::{
    AckOutcome, BrokerError, ConnectionEvent, ConsumeOptions, ConsumerControl, ConsumerEnd, Delivery, Queue, QueueType,
    SharedBroker, Topology,
};

/// Logs what became of an acknowledgement of a `what` ("message", "event"): a stale
/// or failed one means the broker will redeliver it.
pub(crate) fn settle(result: Result<AckOutcome, BrokerError>, what: &str) {
    match result {
        Ok(AckOutcome::Done) => {}
        Ok(AckOutcome::Stale) => tracing::info!("acknowledgement was stale: the broker will redeliver the {what}"),
        Err(err) => tracing::warn!(%err, "could not settle a {what}; the broker will redeliver it"),
    }
}

/// The prefetch of a consumer that feeds one entrypoint: the entrypoint's own
/// `max_workers` when it is below the container's, else the container's. Deliveries
/// beyond what can run at once would only wait in this instance while another could
/// take them.
pub(crate) fn entrypoint_prefetch(cx: &SetupContext<'_>) -> u16 {
    let container = cx.config().max_workers();
    let limit = cx
        .entrypoint()
        .and_then(|ep| ep.max_workers())
        .map_or(container, |own| own.min(container));
    u16::try_from(limit).unwrap_or(u16::MAX)
}

/// Handles one delivery. `stopping` is cancelled when the consumer stops: a handler
/// that has not started its work yet should requeue the message then. `settling`
/// keeps the consumer's graceful stop waiting: the handler holds it until the
/// delivery is settled — past the returned future if it settles elsewhere (in a
/// worker's task, with [`WorkerSlot::start_then`](nameko_core::WorkerSlot::start_then)).
///
/// The consumer polls the returned future once in its own task, and gives it a task
/// of its own only if it is not done then: a handler that starts a worker at once
/// costs no task switch.
pub(crate) trait DeliveryHandler: Send + Sync + 'static {
    fn handle(
        &self,
        delivery: Delivery,
        stopping: CancellationToken,
        settling: TaskTrackerToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Consumes one queue for as long as it runs.
pub(crate) struct QueueConsumer {
    broker: SharedBroker,
    /// Changed only during setup ([`update_queue`](Self::update_queue)).
    topology: Mutex<Topology>,
    queue: String,
    prefetch: AtomicU16,
    stopping: CancellationToken,
    tasks: TaskTracker,
    control: Mutex<Option<Arc<dyn ConsumerControl>>>,
    run: Mutex<Option<JoinHandle<()>>>,
    readiness: Option<ReadinessPart>,
}

impl QueueConsumer {
    /// A consumer of `queue`; with a `readiness`, it reports there as `consumer <queue>`.
    pub(crate) fn new(
        broker: SharedBroker,
        topology: Topology,
        queue: String,
        prefetch: u16,
        readiness: Option<&Readiness>,
    ) -> Arc<Self> {
        let readiness = readiness.map(|r| r.part(format!("consumer {queue}"), "not consuming yet"));
        Arc::new(Self {
            readiness,
            broker,
            topology: Mutex::new(topology),
            queue,
            prefetch: AtomicU16::new(prefetch),
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
            control: Mutex::new(None),
            run: Mutex::new(None),
        })
    }

    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// Changes the prefetch of the consumers it starts from now on (0: unlimited).
    pub(crate) fn set_prefetch(&self, prefetch: u16) {
        self.prefetch.store(prefetch, Ordering::Relaxed);
    }

    /// The prefetch its consumers get.
    pub(crate) fn prefetch(&self) -> u16 {
        self.prefetch.load(Ordering::Relaxed)
    }

    /// What it declares before consuming.
    pub(crate) fn topology(&self) -> Topology {
        self.topology.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes how the consumed queue is declared (before the consumer starts).
    pub(crate) fn update_queue(&self, update: impl FnOnce(&mut Queue)) {
        let mut topology = self.topology.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = topology.queues.iter_mut().find(|q| q.name == self.queue) {
            update(queue);
        }
    }

    /// Declares the topology and starts consuming; returns once the consumer is
    /// registered with the broker.
    pub(crate) async fn start(self: &Arc<Self>, handler: Arc<dyn DeliveryHandler>) -> Result<(), BrokerError> {
        let events = self.broker.events();
        let consumer = self
            .subscribe()
            .await
            .inspect_err(|err| self.not_ready(format!("cannot consume: {err}")))?;
        self.ready();
        let this = Arc::clone(self);
        let run = tokio::spawn(async move { this.run(consumer, events, handler).await });
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
        Ok(())
    }

    async fn subscribe(&self) -> Result<crate::broker::Consumer, BrokerError> {
        let topology = self.topology();
        self.broker
            .declare(&topology)
            .await
            .map_err(|err| explain_queue_type(err, &topology))?;
        let consumer = self
            .broker
            .consume(&self.queue, ConsumeOptions::prefetch(self.prefetch()))
            .await?;
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(consumer.control());
        Ok(consumer)
    }

    fn ready(&self) {
        if let Some(part) = &self.readiness {
            part.ready();
        }
    }

    fn not_ready(&self, reason: impl Into<String>) {
        if let Some(part) = &self.readiness {
            part.not_ready(reason);
        }
    }

    async fn run(
        self: Arc<Self>,
        mut consumer: crate::broker::Consumer,
        mut events: Receiver<ConnectionEvent>,
        handler: Arc<dyn DeliveryHandler>,
    ) {
        let mut events_open = true;
        loop {
            let end = loop {
                tokio::select! {
                    next = consumer.next() => match next {
                        Ok(delivery) => {
                            let mut work = handler.handle(delivery, self.stopping.clone(), self.tasks.token());
                            let polled = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
                            if polled.is_pending() {
                                self.tasks.spawn(work);
                            }
                        }
                        Err(end) => break end,
                    },
                    event = events.recv(), if events_open => match event {
                        Ok(ConnectionEvent::Lost { reason }) => self.not_ready(format!("connection lost: {reason}")),
                        Ok(ConnectionEvent::Recovered) => self.ready(),
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => events_open = false,
                    },
                }
            };
            if self.stopping.is_cancelled() {
                return;
            }
            match end {
                ConsumerEnd::ChannelClosed => {
                    tracing::warn!(queue = %self.queue, "the consumer's channel closed; consuming again");
                    self.not_ready("its channel closed; consuming again");
                }
                ConsumerEnd::Cancelled { by_broker: true } => {
                    tracing::warn!(queue = %self.queue, "the broker cancelled the consumer (queue deleted?); re-declaring");
                    self.not_ready("cancelled by the broker; declaring and consuming again");
                }
                ConsumerEnd::ConnectionLost => {
                    tracing::error!(queue = %self.queue, "the broker connection is gone for good: no longer consuming");
                    self.not_ready("the broker connection is gone for good");
                    return;
                }
                _ => {
                    self.not_ready("cancelled");
                    return;
                }
            }
            match self.resubscribe().await {
                Some(next) => {
                    consumer = next;
                    self.ready();
                }
                None => return,
            }
        }
    }

    /// Declares and consumes again, retrying with a growing delay until it works or
    /// the consumer stops.
    async fn resubscribe(&self) -> Option<crate::broker::Consumer> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.subscribe().await {
                Ok(consumer) => {
                    tracing::info!(queue = %self.queue, "consuming again");
                    return Some(consumer);
                }
                Err(err) => tracing::warn!(queue = %self.queue, %err, "could not consume again; retrying in {delay:?}"),
            }
            tokio::select! {
                () = self.stopping.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn current_control(&self) -> Option<Arc<dyn ConsumerControl>> {
        self.control.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Graceful: no new deliveries; deliveries whose work has not started are
    /// requeued by their handlers; waits for the rest to settle, then closes the
    /// consumer's channel so anything still unacknowledged goes back at once.
    pub(crate) async fn stop(&self) {
        self.stopping.cancel();
        self.not_ready("stopped");
        let control = self.current_control();
        if let Some(control) = &control
            && let Err(err) = control.cancel().await
        {
            tracing::debug!(queue = %self.queue, %err, "cancelling the consumer failed");
        }
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(control) = control {
            control.close().await;
        }
        let run = self.run.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(run) = run {
            run.abort();
        }
    }

    /// Ungraceful: closes the consumer now; unacknowledged deliveries return to the
    /// queue.
    pub(crate) fn kill(&self) {
        self.stopping.cancel();
        self.not_ready("killed");
        if let Some(run) = self.run.lock().unwrap_or_else(|p| p.into_inner()).take() {
            run.abort();
        }
        if let Some(control) = self.current_control() {
            tokio::spawn(async move { control.close().await });
        }
    }
}

impl fmt::Debug for QueueConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConsumer")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch())
            .finish()
    }
}

/// What kind of JSON payloads a [`JsonDeliveries`] handles, for its log lines.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payloads {
    /// An event handler's events.
    Events,
    /// A `consume` entrypoint's messages.
    Messages,
}

impl Payloads {
    /// `event` or `message`, as [`settle`] names it.
    fn noun(self) -> &'static str {
        match self {
            Self::Events => "event",
            Self::Messages => "message",
        }
    }

    /// Logs why a delivery is rejected, naming the entrypoint as each kind always has.
    fn log_rejection(self, service: &str, method: &str, routing_key: &str, why: fmt::Arguments<'_>) {
        match self {
            Self::Events => {
                tracing::error!(service, handler = method, routing_key = %routing_key, "rejecting an event{why}");
            }
            Self::Messages => {
                tracing::error!(service, consumer = method, routing_key = %routing_key, "rejecting a message{why}");
            }
        }
    }
}

/// The deliveries of an entrypoint whose method takes one JSON payload (event handlers,
/// `consume`): [`inbound::check`](crate::inbound::check) then decode — a refused or
/// undecodable delivery is rejected without requeue and logged, never redelivered in a
/// loop —, the `nameko.*` headers as context data, a worker slot (requeued when the
/// consumer stops first), and, in the worker's own task, the settlement: ack after a
/// success, requeue after a kill, and after a failure `on_failure`'s (retries,
/// dead-lettering), else a requeue with `requeue_on_error`, else an ack.
pub(crate) struct JsonDeliveries<Req, Resp> {
    pub(crate) binding: nameko_core::Binding<Req, Resp>,
    pub(crate) payloads: Payloads,
    pub(crate) requeue_on_error: bool,
    pub(crate) on_failure: Option<Arc<crate::events::retry::OnFailure>>,
    pub(crate) max_message_size: usize,
    /// The method's payload parameter, as logs and sensitive argument paths name it.
    pub(crate) parameter: &'static str,
}

/// One JSON payload as a call's arguments, `{<parameter>: payload}`: kept as the body
/// and decoded only when logs or monitoring read it.
struct PayloadArgs {
    body: bytes::Bytes,
    parameter: &'static str,
}

impl CallArgs for PayloadArgs {
    fn arguments(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let payload = serde_json::from_slice(&self.body).ok()?;
        Some(bind_arguments(
            &[self.parameter],
            vec![payload],
            serde_json::Value::Null,
        ))
    }
}

impl<Req, Resp> DeliveryHandler for JsonDeliveries<Req, Resp>
where
    Req: serde::de::DeserializeOwned + Send + 'static,
    Resp: Send + 'static,
{
    fn handle(
        &self,
        delivery: Delivery,
        stopping: CancellationToken,
        settling: TaskTrackerToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let binding = self.binding.clone();
        let payloads = self.payloads;
        let requeue_on_error = self.requeue_on_error;
        let on_failure = self.on_failure.clone();
        let max_message_size = self.max_message_size;
        let parameter = self.parameter;
        Box::pin(async move {
            let noun = payloads.noun();
            let reject = |why: fmt::Arguments<'_>| {
                payloads.log_rejection(
                    binding.service_name(),
                    binding.info().method(),
                    &delivery.routing_key,
                    why,
                );
            };
            if let Err(refusal) = crate::inbound::check(&delivery, max_message_size) {
                reject(format_args!(": {refusal}"));
                return settle(delivery.reject(false).await, noun);
            }
            let decoded = match delivery.properties.content_type.as_deref() {
                Some("application/json") | None => {
                    serde_json::from_slice::<Req>(&delivery.body).map_err(|e| e.to_string())
                }
                Some(other) => Err(format!("unsupported content type `{other}`")),
            };
            let request = match decoded {
                Ok(request) => request,
                Err(err) => {
                    reject(format_args!(" that does not decode: {err}"));
                    return settle(delivery.reject(false).await, noun);
                }
            };
            let data = crate::context::context_from_headers(delivery.properties.headers.as_ref());
            let Some(slot) = crate::slot::reserve_unless_stopped(&binding, &stopping).await else {
                return settle(delivery.nack(true).await, noun);
            };
            let slot = slot.call_args(PayloadArgs {
                body: delivery.body.clone(),
                parameter,
            });
            // Settled in the worker's own task, once it finished.
            slot.start_then(
                request,
                data,
                nameko_core::Extensions::new(),
                move |result| async move {
                    let settled = match result {
                        Ok(_) => delivery.ack().await,
                        Err(nameko_core::WorkerError::Killed | nameko_core::WorkerError::NotStarted(_)) => {
                            delivery.nack(true).await
                        }
                        Err(err) => match &on_failure {
                            Some(on_failure) => on_failure.failed(&delivery, &err).await,
                            None if requeue_on_error => delivery.nack(true).await,
                            None => delivery.ack().await,
                        },
                    };
                    settle(settled, noun);
                    drop(settling);
                },
            );
        })
    }
}

/// Adds why to a declare refused for the queue's type: a queue's type is fixed when it is
/// first declared, and Python Nameko (or any instance not asking for quorum) declares
/// classic queues.
pub(crate) fn explain_queue_type(err: BrokerError, topology: &Topology) -> BrokerError {
    let BrokerError::PreconditionFailed(text) = &err else {
        return err;
    };
    if !text.contains("inequivalent arg 'x-queue-type'") {
        return err;
    }
    let Some(queue) = topology
        .queues
        .iter()
        .find(|q| text.contains(&format!("queue '{}'", q.name)))
    else {
        return err;
    };
    let name = &queue.name;
    let why = match queue.kind() {
        QueueType::Quorum => format!(
            "the queue `{name}` already exists as a classic queue, and a queue's type cannot change: it was declared by \
             an instance that does not ask for a quorum queue — a Python Nameko instance (Nameko declares classic queues \
             only) or an earlier version of this service. A quorum queue cannot be shared with classic instances: run \
             every instance with queue_type = \"quorum\" and delete the queue once drained, or drop queue_type = \
             \"quorum\" here"
        ),
        _ => format!(
            "the queue `{name}` exists as a quorum queue (declared by an instance with queue_type = \"quorum\"), and \
             this instance declares it classic, as Python Nameko instances do: a queue's type cannot change. Give this \
             entrypoint queue_type = \"quorum\" too, or delete the queue once drained to make it classic again"
        ),
    };
    BrokerError::PreconditionFailed(format!("{text}: {why}"))
}
