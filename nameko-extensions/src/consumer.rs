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
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};

use nameko_core::{Readiness, ReadinessPart};
use tokio::{
    sync::broadcast::{Receiver, error::RecvError},
    task::JoinHandle,
};
use tokio_util::{
    sync::CancellationToken,
    task::{TaskTracker, task_tracker::TaskTrackerToken},
};

use crate::broker::{
    AckOutcome, BrokerError, ConnectionEvent, ConsumeOptions, ConsumerControl, ConsumerEnd, Delivery, SharedBroker,
    Topology,
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
    topology: Topology,
    queue: String,
    prefetch: u16,
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
            topology,
            queue,
            prefetch,
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
            control: Mutex::new(None),
            run: Mutex::new(None),
        })
    }

    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// What it declares before consuming.
    pub(crate) fn topology(&self) -> &Topology {
        &self.topology
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
        self.broker.declare(&self.topology).await?;
        let consumer = self
            .broker
            .consume(&self.queue, ConsumeOptions::prefetch(self.prefetch))
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

impl std::fmt::Debug for QueueConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConsumer")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}
