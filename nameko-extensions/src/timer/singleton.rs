//! `cluster_singleton`: one firer per cluster, elected by a single-active-consumer
//! queue holding a token message.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use nameko_core::{Readiness, ReadinessPart, SetupError};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::{sync::CancellationToken, task::task_tracker::TaskTrackerToken};

use super::{Plan, Tick};
use crate::{
    broker::{ConnectionEvent, Delivery, Properties, Publish, Queue, SharedBroker, Topology},
    consumer::{DeliveryHandler, QueueConsumer, settle},
};

/// Holds at most one token and the one it holds unacknowledged; the second slot takes
/// surplus tokens to acknowledge them away.
const PREFETCH: u16 = 2;

/// The queue that elects the firer of `service.method`.
pub(crate) fn queue_name(service: &str, method: &str) -> String {
    format!("timer-{service}.{method}")
}

/// Whether this instance fires, as a readiness part whose name says it (both ready).
struct Role {
    readiness: Option<Readiness>,
    name: String,
    part: Mutex<Option<ReadinessPart>>,
}

impl Role {
    fn set(&self, firing: bool) {
        let Some(readiness) = &self.readiness else { return };
        let role = if firing { "firing" } else { "standing by" };
        let part = readiness.part(format!("timer {} ({role})", self.name), role);
        part.ready();
        *self.part.lock().unwrap_or_else(|p| p.into_inner()) = Some(part);
    }

    fn clear(&self) {
        self.part.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

pub(crate) struct Election {
    broker: SharedBroker,
    queue: String,
    consumer: Arc<QueueConsumer>,
    role: Arc<Role>,
    /// Ends the task that puts a token back after each recovery.
    reseeding: CancellationToken,
}

impl Election {
    pub(crate) fn new(broker: SharedBroker, service: &str, method: &str, readiness: Option<&Readiness>) -> Self {
        let queue = queue_name(service, method);
        let mut declare = Queue::durable(&queue).auto_delete(true).single_active_consumer();
        declare.durable = false;
        let topology = Topology::new().queue(declare);
        let consumer = QueueConsumer::new(Arc::clone(&broker), topology, queue.clone(), PREFETCH, readiness);
        Self {
            broker,
            queue,
            consumer,
            role: Arc::new(Role {
                readiness: readiness.cloned(),
                name: format!("{service}.{method}"),
                part: Mutex::new(None),
            }),
            reseeding: CancellationToken::new(),
        }
    }

    /// Declares the queue, puts a token in it, and consumes.
    pub(crate) async fn start(&self, plan: Plan, tick: Tick) -> Result<(), SetupError> {
        let failed = |what: &str, err: &dyn std::fmt::Display| {
            SetupError::new(format!(
                "timer election queue `{}`: could not {what}: {err}",
                self.queue
            ))
        };
        self.broker
            .declare(&self.consumer.topology())
            .await
            .map_err(|err| failed("declare it", &err))?;
        put_token(&self.broker, &self.queue)
            .await
            .map_err(|err| failed("publish its token", &err))?;
        self.role.set(false);
        self.reseed_after_recoveries();
        let handler = Arc::new(Tokens {
            plan,
            tick,
            broker: Arc::clone(&self.broker),
            holding: Arc::new(AtomicBool::new(false)),
            firing: Arc::new(tokio::sync::Mutex::new(())),
            role: Arc::clone(&self.role),
            queue: self.queue.clone(),
        });
        self.consumer
            .start(handler)
            .await
            .map_err(|err| failed("consume it", &err))
    }

    /// After every recovery of this instance's connection, puts one more token in the
    /// queue. A lost connection can lose the token: the queue is auto-delete, so when
    /// every instance lost its connection (a broker restart) it is gone with its token;
    /// and a token redelivered to the old firer before it learns of the loss is taken
    /// for a surplus one and acknowledged away. A spare token costs nothing — the firer
    /// acknowledges surplus ones — while a missing one would stop the timer for good.
    fn reseed_after_recoveries(&self) {
        let mut events = self.broker.events();
        let broker = Arc::clone(&self.broker);
        let topology = self.consumer.topology();
        let queue = self.queue.clone();
        let done = self.reseeding.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = done.cancelled() => return,
                    event = events.recv() => event,
                };
                match event {
                    Ok(ConnectionEvent::Recovered) => {
                        let reseeded = match broker.declare(&topology).await {
                            Ok(()) => put_token(&broker, &queue).await,
                            Err(err) => Err(err),
                        };
                        match reseeded {
                            Ok(()) => tracing::debug!(queue = %queue, "connection recovered: put a timer token back"),
                            Err(err) => tracing::warn!(
                                queue = %queue,
                                %err,
                                "connection recovered, but the timer token could not be put back; \
                                 the next recovery tries again"
                            ),
                        }
                    }
                    Err(RecvError::Closed) => return,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                }
            }
        });
    }

    /// Stops firing (a running tick ends first), then gives the token back.
    pub(crate) async fn stop(&self) {
        self.reseeding.cancel();
        self.consumer.stop().await;
        self.role.clear();
    }

    pub(crate) fn kill(&self) {
        self.reseeding.cancel();
        self.consumer.kill();
        self.role.clear();
    }
}

async fn put_token(broker: &SharedBroker, queue: &str) -> Result<(), crate::broker::BrokerError> {
    broker
        .publish(Publish {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            mandatory: false,
            properties: Properties::default(),
            body: Bytes::from_static(b"timer token"),
        })
        .await
        .map(drop)
}

/// Handles the election queue's deliveries: the first token makes this instance the
/// firer until the consumer stops or the connection is lost; surplus ones are
/// acknowledged away.
struct Tokens {
    plan: Plan,
    tick: Tick,
    broker: SharedBroker,
    /// Whether this instance holds a token.
    holding: Arc<AtomicBool>,
    /// Held while a schedule runs: a new term never overlaps the last one's tick.
    firing: Arc<tokio::sync::Mutex<()>>,
    role: Arc<Role>,
    queue: String,
}

impl DeliveryHandler for Tokens {
    fn handle(
        &self,
        delivery: Delivery,
        stopping: CancellationToken,
        settling: TaskTrackerToken,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        if stopping.is_cancelled() {
            // Left unsettled: it goes back to the queue when the consumer's channel
            // closes, once the consumer stopped.
            return Box::pin(async move { drop((delivery, settling)) });
        }
        if self.holding.swap(true, Ordering::SeqCst) {
            return Box::pin(async move {
                settle(delivery.ack().await, "surplus timer token");
                drop(settling);
            });
        }
        let plan = self.plan.clone();
        let tick = self.tick.clone();
        let holding = Arc::clone(&self.holding);
        let firing = Arc::clone(&self.firing);
        let role = Arc::clone(&self.role);
        let queue = self.queue.clone();
        let mut events = self.broker.events();
        Box::pin(async move {
            let term = stopping.child_token();
            // The token is gone with the connection: stop firing at once (the
            // broker hands it to the active consumer after recovery, maybe us).
            let watch = {
                let term = term.clone();
                let holding = Arc::clone(&holding);
                async move {
                    loop {
                        match events.recv().await {
                            Ok(ConnectionEvent::Lost { .. }) | Err(RecvError::Closed) => {
                                holding.store(false, Ordering::SeqCst);
                                term.cancel();
                                return;
                            }
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                        }
                    }
                }
            };
            let fire = async {
                let _term = firing.lock().await;
                if term.is_cancelled() {
                    return;
                }
                tracing::info!(queue = %queue, "this instance fires the timer (it holds the token)");
                role.set(true);
                plan.run(tick, term.clone()).await;
            };
            tokio::pin!(fire);
            tokio::select! {
                () = &mut fire => {}
                () = watch => {
                    // The term is cancelled: a running tick ends before the next term.
                    fire.await;
                    tracing::warn!(queue = %queue, "connection lost: no longer firing the timer");
                }
            }
            holding.store(false, Ordering::SeqCst);
            role.set(false);
            // The token stays unacknowledged: it returns to the queue when the
            // consumer's channel closes (stop) or already did (connection lost).
            drop((delivery, settling));
        })
    }
}
