//! The in-memory broker: the AMQP model of RabbitMQ, in process.
//!
//! `--transport memory` runs services on it, and tests use it to run several
//! instances of a service against one broker. A [`MemoryBroker`] is the server, a
//! cloneable handle several runners share; [`MemoryBroker::connect`] opens a
//! [`MemoryConnection`], which implements [`Broker`].
//!
//! It behaves as RabbitMQ does, and the conformance suite checks each of these on
//! both: topic (`*`, `#`), direct and fanout exchanges and the default exchange;
//! mandatory returns (`NO_ROUTE`); `PRECONDITION_FAILED` on an inequivalent redeclare;
//! exclusive, `auto_delete` and `x-expires` queues; competing consumers served round
//! robin; per-consumer prefetch; ack, nack and reject with requeue (`redelivered`) or
//! dead-lettering (`x-dead-letter-exchange`, `x-death`); per-queue (`x-message-ttl`)
//! and per-message (`expiration`) TTL; single-active-consumer queues; server-side
//! cancel when a queue is deleted; and connection loss and recovery
//! ([`MemoryBroker::sever`], [`MemoryBroker::restore`]): consumers survive it.
//!
//! Where it differs from RabbitMQ:
//! - there is one virtual host, `/`; nothing is persisted (`durable` is recorded and
//!   compared, nothing more); queues must be named;
//! - there are no channels to lose: a failed operation returns its error and changes
//!   nothing else; every consumer behaves as if on a channel of its own, which
//!   [`ConsumerControl::close`] closes;
//! - a [`Consumer`] dropped without [`close`](ConsumerControl::close) stops receiving,
//!   but its unacknowledged deliveries stay unacknowledged until they are settled or
//!   the connection closes (as with an AMQP client that drops a consumer but keeps
//!   its channel);
//! - a closed connection is gone for good: its [`events`](Broker::events) receivers
//!   report `Closed`, and it cannot [`reconnect`](MemoryConnection::reconnect);
//! - settling a delivery twice, or after its channel closed, is reported as
//!   [`AckOutcome::Stale`] (RabbitMQ closes the channel with `PRECONDITION_FAILED`
//!   "unknown delivery tag");
//! - an exclusive-consumer conflict is [`BrokerError::ResourceLocked`] (RabbitMQ says
//!   `ACCESS_REFUSED`); `ACCESS_REFUSED` errors (the default exchange, `amq.*` names)
//!   are [`BrokerError::Other`] with that prefix;
//! - `x-max-length` and other arguments it does not act on are accepted and compared
//!   on redeclare, but not enforced;
//! - [`list_bindings`](MemoryBroker::list_bindings) leaves out the implicit binding of
//!   every queue to the default exchange, and
//!   [`list_exchanges`](MemoryBroker::list_exchanges) the default exchange.
//!
//! Expiry runs on tokio time, so tests can pause the clock. It runs in a task the
//! broker spawns on the runtime of the first operation that needs it; the task ends
//! when the broker is dropped.

mod equivalence;
mod state;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

use async_trait::async_trait;
use tokio::{
    sync::{broadcast, mpsc},
    time::Instant,
};

use self::state::{ConnId, ConnStatus, Settle, State};
use crate::broker::{
    AckOutcome, Acker, Binding, Broker, BrokerError, ConnectionEvent, ConsumeOptions, Consumer, ConsumerControl,
    Exchange, Publish, PublishOutcome, QueueInfo, SharedBroker, Topology,
};

/// The shared state behind every handle.
struct Inner {
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as the last
        // completed step; carrying on beats failing every later operation.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one operation, then delivers what it made deliverable and reschedules expiry.
    fn run<R>(&self, operation: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.lock();
        let result = operation(&mut state);
        state.pump();
        state.kick_timer();
        result
    }
}

/// Expires messages and queues at their deadlines; ends when the broker is dropped
/// (its `wake` sender goes with it).
async fn expiry_task(inner: Weak<Inner>, mut wake: mpsc::Receiver<()>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let mut state = inner.lock();
            state.expire(Instant::now());
            state.pump();
            let next = state.next_deadline();
            state.set_scheduled(next);
            next
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    woken = wake.recv() => if woken.is_none() { return },
                }
            }
            None => {
                if wake.recv().await.is_none() {
                    return;
                }
            }
        }
    }
}

/// The in-memory AMQP server. Cloning gives another handle to the same broker.
///
/// ```
/// # use nameko_extensions::memory::MemoryBroker;
/// let broker = MemoryBroker::new();
/// let connection = broker.connect();
/// # drop(connection);
/// assert!(broker.list_queues().is_empty());
/// ```
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("MemoryBroker");
        if let Ok(state) = self.inner.state.try_lock() {
            let (exchanges, queues, connections) = state.summary();
            debug
                .field("exchanges", &exchanges)
                .field("queues", &queues)
                .field("connections", &connections);
        }
        debug.finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker with only the predeclared exchanges `amq.direct`, `amq.fanout` and
    /// `amq.topic` (and the default exchange `""`).
    pub fn new() -> Self {
        Self {
            inner: Arc::new_cyclic(|this| Inner {
                state: Mutex::new(State::new(this.clone())),
            }),
        }
    }

    /// Opens a connection. It sends [`ConnectionEvent::Connected`] as it opens, before
    /// anyone can subscribe to its [`events`](Broker::events): subscribers only see
    /// later events. Dropping every clone of the connection (and every consumer made
    /// on it) closes it, as [`Broker::close`] does.
    pub fn connect(&self) -> MemoryConnection {
        let id = self.inner.run(State::open_connection);
        MemoryConnection {
            handle: Arc::new(ConnHandle {
                inner: Arc::clone(&self.inner),
                id,
            }),
        }
    }

    /// Opens a connection, as a [`SharedBroker`].
    pub fn shared(&self) -> SharedBroker {
        Arc::new(self.connect())
    }

    /// Every queue, sorted by name, with its declare as made and its message and
    /// consumer counts.
    pub fn list_queues(&self) -> Vec<QueueInfo> {
        self.inner.run(|state| state.list_queues())
    }

    /// Every binding, sorted by exchange, queue and key; without the implicit binding
    /// of each queue to the default exchange.
    pub fn list_bindings(&self) -> Vec<Binding> {
        self.inner.run(|state| state.list_bindings())
    }

    /// Every exchange, sorted by name, including the predeclared `amq.*` ones and
    /// excluding the default exchange.
    pub fn list_exchanges(&self) -> Vec<Exchange> {
        self.inner.run(|state| state.list_exchanges())
    }

    /// Simulates the loss of every open connection, as a cut TCP connection to
    /// RabbitMQ: their unacknowledged deliveries return to their queues (redelivered;
    /// acks on them are [`Stale`](AckOutcome::Stale)), their exclusive queues are
    /// deleted (and auto-delete queues that lose their last consumer), their event
    /// subscribers get [`ConnectionEvent::Lost`], and operations on them fail with
    /// [`BrokerError::ConnectionLost`] until they [`reconnect`](MemoryConnection::reconnect)
    /// or the broker is [`restore`](Self::restore)d. Their consumers do not end: they
    /// deliver nothing until the connection recovers, then resume (the contract of
    /// [`Broker`] for both brokers).
    pub fn sever(&self) {
        self.inner.run(|state| {
            for conn in state.open_connections() {
                state.end_connection(conn, ConnStatus::Lost);
            }
        });
    }

    /// Reconnects every severed connection: each declares again, for every consumer
    /// it had, that consumer's queue with its bindings as the connection had declared
    /// them, resumes the consumer, and sends [`ConnectionEvent::Recovered`].
    pub fn restore(&self) {
        self.inner.run(|state| {
            for conn in state.lost_connections() {
                // Cannot fail: the connection is lost, not closed.
                let _ = state.reconnect(conn);
            }
        });
    }
}

/// One connection's identity; closing it when the last handle goes.
struct ConnHandle {
    inner: Arc<Inner>,
    id: ConnId,
}

impl fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConnection").field("id", &self.id).finish()
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        let id = self.id;
        self.inner.run(|state| state.end_connection(id, ConnStatus::Closed));
    }
}

/// A connection to a [`MemoryBroker`]. Cloning shares the connection.
#[derive(Clone)]
pub struct MemoryConnection {
    handle: Arc<ConnHandle>,
}

impl fmt::Debug for MemoryConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl MemoryConnection {
    /// The broker this connection belongs to.
    pub fn broker(&self) -> MemoryBroker {
        MemoryBroker {
            inner: Arc::clone(&self.handle.inner),
        }
    }

    /// Whether the connection is usable (neither severed nor closed).
    pub fn is_open(&self) -> bool {
        self.handle.inner.lock().status(self.handle.id) == ConnStatus::Open
    }

    /// Simulates the loss of this connection, as [`MemoryBroker::sever`] does for all.
    pub fn sever(&self) {
        let id = self.handle.id;
        self.handle
            .inner
            .run(|state| state.end_connection(id, ConnStatus::Lost));
    }

    /// Reconnects after [`sever`](Self::sever), as [`MemoryBroker::restore`] does:
    /// its consumers resume, then subscribers get [`ConnectionEvent::Recovered`].
    /// Does nothing on an open connection.
    ///
    /// # Errors
    ///
    /// [`BrokerError::ConnectionLost`] when the connection was
    /// [`close`](Broker::close)d.
    pub fn reconnect(&self) -> Result<(), BrokerError> {
        let id = self.handle.id;
        self.handle.inner.run(|state| state.reconnect(id))
    }

    fn run<R>(&self, operation: impl FnOnce(&mut State, ConnId) -> R) -> R {
        let id = self.handle.id;
        self.handle.inner.run(|state| operation(state, id))
    }
}

#[async_trait]
impl Broker for MemoryConnection {
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        self.run(|state, conn| state.declare(conn, topology))
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.run(|state, conn| state.delete_queue(conn, name))
    }

    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.run(|state, conn| state.delete_exchange(conn, name))
    }

    async fn publish(&self, message: Publish) -> Result<PublishOutcome, BrokerError> {
        self.run(|state, conn| state.publish(conn, message))
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        let (id, tag, events) = self.run(|state, conn| state.consume(conn, queue, &options))?;
        let control = MemoryConsumerControl {
            connection: Arc::clone(&self.handle),
            id,
        };
        Ok(Consumer::new(tag, events, Arc::new(control)))
    }

    fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.handle.inner.lock().subscribe(self.handle.id)
    }

    async fn close(&self) {
        self.run(|state, conn| state.end_connection(conn, ConnStatus::Closed));
    }
}

/// Settles one delivery of a memory broker.
#[derive(Debug)]
struct MemoryAcker {
    /// Weak: deliveries wait in consumer channels the broker holds.
    inner: Weak<Inner>,
    tag: u64,
}

impl MemoryAcker {
    fn settle(&self, how: Settle) -> AckOutcome {
        match self.inner.upgrade() {
            Some(inner) => inner.run(|state| state.settle(self.tag, how)),
            None => AckOutcome::Stale,
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<AckOutcome, BrokerError> {
        Ok(self.settle(Settle::Ack))
    }

    async fn nack(&self, requeue: bool) -> Result<AckOutcome, BrokerError> {
        Ok(self.settle(if requeue { Settle::Requeue } else { Settle::DeadLetter }))
    }

    async fn reject(&self, requeue: bool) -> Result<AckOutcome, BrokerError> {
        Ok(self.settle(if requeue { Settle::Requeue } else { Settle::DeadLetter }))
    }
}

/// Cancels or closes one consumer; keeps its connection open while it lives.
#[derive(Debug)]
struct MemoryConsumerControl {
    connection: Arc<ConnHandle>,
    id: u64,
}

#[async_trait]
impl ConsumerControl for MemoryConsumerControl {
    async fn cancel(&self) -> Result<(), BrokerError> {
        let id = self.id;
        self.connection.inner.run(|state| state.cancel_consumer(id));
        Ok(())
    }

    async fn close(&self) {
        let id = self.id;
        self.connection.inner.run(|state| state.close_consumer(id));
    }
}
