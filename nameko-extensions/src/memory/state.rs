//! The broker's state, and every operation on it. Each runs under the broker's one lock,
//! which is never held across an `.await`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
    time::Instant,
};

use super::{
    Inner, MemoryAcker,
    equivalence::{self, QueueArgs, VHOST},
};
use crate::broker::{
    AckOutcome, Binding, BrokerError, ConnectionEvent, ConsumeOptions, ConsumerEnd, ConsumerEvent, Declared, Delivery,
    Exchange, ExchangeKind, FieldValue, Headers, NO_ROUTE, Properties, Publish, PublishOutcome, Queue, QueueInfo,
    Topology, topic_matches,
};

/// Identifies a connection.
pub(super) type ConnId = u64;

/// How many connection events a slow subscriber may fall behind.
const EVENT_CAPACITY: usize = 64;

/// A message in a queue or held by a consumer.
#[derive(Debug)]
struct Message {
    /// Order of arrival in its queue; a queue is kept sorted by it, so a requeued
    /// message goes back where it was.
    seq: u64,
    exchange: String,
    routing_key: String,
    properties: Properties,
    body: Bytes,
    redelivered: bool,
    expires_at: Option<Instant>,
}

#[derive(Debug)]
struct QueueState {
    decl: Queue,
    args: QueueArgs,
    /// Distinguishes a queue from an earlier one of the same name.
    generation: u64,
    /// The connection of an exclusive queue.
    owner: Option<ConnId>,
    messages: VecDeque<Message>,
    /// Consumer ids, oldest first.
    consumers: Vec<u64>,
    /// Round-robin position in `consumers`.
    cursor: usize,
    had_consumer: bool,
    /// Last declare, or when its last consumer went (for `x-expires`).
    last_used: Instant,
}

impl QueueState {
    /// When `x-expires` deletes the queue, if it stays unused.
    fn expiry(&self) -> Option<Instant> {
        if !self.consumers.is_empty() {
            return None;
        }
        self.args.expires.and_then(|after| self.last_used.checked_add(after))
    }

    fn insert_by_seq(&mut self, message: Message) {
        let at = self.messages.partition_point(|m| m.seq < message.seq);
        self.messages.insert(at, message);
    }
}

#[derive(Debug)]
struct ExchangeState {
    decl: Exchange,
    had_binding: bool,
}

#[derive(Debug)]
struct ConsumerState {
    conn: ConnId,
    queue: String,
    generation: u64,
    prefetch: u16,
    exclusive: bool,
    in_flight: usize,
    tx: mpsc::UnboundedSender<ConsumerEvent>,
    /// What its connection had declared for its queue when it started consuming:
    /// declared again when the connection recovers (as lapin replays a consumer
    /// channel's declares), so the consumer survives a queue that went with the
    /// connection (exclusive, auto-delete).
    redeclare: Topology,
}

impl ConsumerState {
    fn has_room(&self) -> bool {
        self.prefetch == 0 || self.in_flight < usize::from(self.prefetch)
    }
}

#[derive(Debug)]
struct Unacked {
    queue: String,
    generation: u64,
    consumer: u64,
    conn: ConnId,
    message: Message,
}

/// A connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnStatus {
    /// Usable.
    Open,
    /// Severed; may reconnect.
    Lost,
    /// Closed by the client; for good.
    Closed,
}

#[derive(Debug)]
struct ConnState {
    status: ConnStatus,
    events: broadcast::Sender<ConnectionEvent>,
    /// What this connection declared and has not deleted.
    declared: Declared,
    /// Consumers paused while the connection is severed, resumed when it recovers.
    suspended: Vec<(u64, ConsumerState)>,
}

/// How a delivery is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Settle {
    /// `basic.ack`.
    Ack,
    /// `nack`/`reject` with requeue.
    Requeue,
    /// `nack`/`reject` without requeue.
    DeadLetter,
}

#[derive(Debug)]
struct Timer {
    wake: mpsc::Sender<()>,
    task: JoinHandle<()>,
}

/// Everything the broker holds.
#[derive(Debug)]
pub(super) struct State {
    this: Weak<Inner>,
    exchanges: BTreeMap<String, ExchangeState>,
    queues: BTreeMap<String, QueueState>,
    /// (exchange, queue, binding key).
    bindings: BTreeSet<(String, String, String)>,
    consumers: HashMap<u64, ConsumerState>,
    /// By delivery tag (unique across the broker).
    unacked: HashMap<u64, Unacked>,
    conns: HashMap<ConnId, ConnState>,
    next_id: u64,
    /// Queues that may be able to deliver.
    dirty: BTreeSet<String>,
    timer: Option<Timer>,
    /// The deadline the expiry task sleeps until, if any.
    scheduled: Option<Instant>,
}

fn not_found_exchange(name: &str) -> BrokerError {
    BrokerError::NotFound(format!("no exchange '{name}' in vhost '{VHOST}'"))
}

fn not_found_queue(name: &str) -> BrokerError {
    BrokerError::NotFound(format!("no queue '{name}' in vhost '{VHOST}'"))
}

fn locked(name: &str) -> BrokerError {
    BrokerError::ResourceLocked(format!(
        "cannot obtain exclusive access to locked queue '{name}' in vhost '{VHOST}'. It could be originally declared \
         on another connection or the exclusive property value does not match that of the original declaration."
    ))
}

fn access_refused(what: &str) -> BrokerError {
    BrokerError::Other(format!("ACCESS_REFUSED: {what}"))
}

fn check_owner(queue: &QueueState, conn: ConnId) -> Result<(), BrokerError> {
    match queue.owner {
        Some(owner) if owner != conn => Err(locked(&queue.decl.name)),
        _ => Ok(()),
    }
}

impl State {
    pub(super) fn new(this: Weak<Inner>) -> Self {
        let mut state = Self {
            this,
            exchanges: BTreeMap::new(),
            queues: BTreeMap::new(),
            bindings: BTreeSet::new(),
            consumers: HashMap::new(),
            unacked: HashMap::new(),
            conns: HashMap::new(),
            next_id: 0,
            dirty: BTreeSet::new(),
            timer: None,
            scheduled: None,
        };
        for (name, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
        ] {
            let decl = Exchange {
                name: name.to_owned(),
                kind,
                durable: true,
                auto_delete: false,
            };
            state.exchanges.insert(
                name.to_owned(),
                ExchangeState {
                    decl,
                    had_binding: false,
                },
            );
        }
        state
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ---- connections ----

    pub(super) fn open_connection(&mut self) -> ConnId {
        let id = self.next_id();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        // Nobody can be subscribed yet: the event is for the record only.
        let _ = events.send(ConnectionEvent::Connected);
        self.conns.insert(
            id,
            ConnState {
                status: ConnStatus::Open,
                events,
                declared: Declared::default(),
                suspended: Vec::new(),
            },
        );
        id
    }

    pub(super) fn subscribe(&self, conn: ConnId) -> broadcast::Receiver<ConnectionEvent> {
        match self.conns.get(&conn) {
            Some(state) => state.events.subscribe(),
            // Cannot happen (a connection's state lives as long as the broker); a
            // receiver whose sender is gone reports `Closed`.
            None => broadcast::channel(1).1,
        }
    }

    pub(super) fn status(&self, conn: ConnId) -> ConnStatus {
        self.conns.get(&conn).map_or(ConnStatus::Closed, |c| c.status)
    }

    fn check_open(&self, conn: ConnId) -> Result<(), BrokerError> {
        match self.status(conn) {
            ConnStatus::Open => Ok(()),
            ConnStatus::Lost => Err(BrokerError::ConnectionLost(
                "the memory broker connection was severed".to_owned(),
            )),
            ConnStatus::Closed => Err(BrokerError::ConnectionLost(
                "the memory broker connection was closed".to_owned(),
            )),
        }
    }

    pub(super) fn open_connections(&self) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.status == ConnStatus::Open)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub(super) fn lost_connections(&self) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.status == ConnStatus::Lost)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Ends an open connection as severed ([`ConnStatus::Lost`]) or closed: its
    /// unacked deliveries are requeued and its exclusive queues go. Closed: its
    /// consumers end (`ChannelClosed`). Severed: its consumers are suspended, to
    /// resume when it reconnects. A severed connection that closes ends its
    /// suspended consumers with `ConnectionLost`.
    pub(super) fn end_connection(&mut self, conn: ConnId, status: ConnStatus) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        match (state.status, status) {
            (ConnStatus::Open, ConnStatus::Lost | ConnStatus::Closed) => state.status = status,
            (ConnStatus::Lost, ConnStatus::Closed) => {
                // Everything was already returned when it was severed.
                if let Some(state) = self.conns.remove(&conn) {
                    for (_, consumer) in state.suspended {
                        let _ = consumer.tx.send(ConsumerEvent::End(ConsumerEnd::ConnectionLost));
                    }
                }
                return;
            }
            _ => return,
        }
        let mut tags: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.conn == conn)
            .map(|(tag, _)| *tag)
            .collect();
        tags.sort_unstable();
        self.requeue(&tags);
        let mut ids: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, c)| c.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        let mut suspended = Vec::new();
        for id in ids {
            if let Some(mut consumer) = self.detach_consumer(id) {
                if status == ConnStatus::Lost {
                    consumer.in_flight = 0;
                    suspended.push((id, consumer));
                } else {
                    let _ = consumer.tx.send(ConsumerEvent::End(ConsumerEnd::ChannelClosed));
                }
            }
        }
        let owned: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.owner == Some(conn))
            .map(|(name, _)| name.clone())
            .collect();
        for name in owned {
            self.remove_queue(&name);
        }
        if status == ConnStatus::Lost
            && let Some(state) = self.conns.get_mut(&conn)
        {
            state.suspended = suspended;
            let _ = state.events.send(ConnectionEvent::Lost {
                reason: "connection severed (memory broker)".to_owned(),
            });
        }
        if status == ConnStatus::Closed {
            // Nothing can reach a closed connection again: forget it.
            self.conns.remove(&conn);
        }
    }

    /// Reopens a severed connection: each suspended consumer's queue is declared
    /// again as its connection had declared it, and the consumer resumes. One whose
    /// queue is gone (and was not declared by this connection), or that cannot
    /// resume, ends with `ChannelClosed`.
    pub(super) fn reconnect(&mut self, conn: ConnId) -> Result<(), BrokerError> {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Err(BrokerError::ConnectionLost(
                "the memory broker connection was closed and cannot reconnect".to_owned(),
            ));
        };
        match state.status {
            ConnStatus::Open => Ok(()),
            ConnStatus::Lost => {
                state.status = ConnStatus::Open;
                let suspended = std::mem::take(&mut state.suspended);
                for (id, consumer) in suspended {
                    self.resume(conn, id, consumer);
                }
                if let Some(state) = self.conns.get(&conn) {
                    let _ = state.events.send(ConnectionEvent::Recovered);
                }
                Ok(())
            }
            ConnStatus::Closed => Err(BrokerError::ConnectionLost(
                "the memory broker connection was closed and cannot reconnect".to_owned(),
            )),
        }
    }

    /// Re-declares a suspended consumer's queue and attaches it again.
    fn resume(&mut self, conn: ConnId, id: u64, mut consumer: ConsumerState) {
        if consumer.tx.is_closed() {
            return;
        }
        let resumed = self.declare(conn, &consumer.redeclare).and_then(|()| {
            let queue = self
                .queues
                .get(&consumer.queue)
                .ok_or_else(|| not_found_queue(&consumer.queue))?;
            check_owner(queue, conn)?;
            let held_exclusively = queue
                .consumers
                .iter()
                .any(|c| self.consumers.get(c).is_some_and(|c| c.exclusive));
            if held_exclusively || (consumer.exclusive && !queue.consumers.is_empty()) {
                return Err(locked(&consumer.queue));
            }
            Ok(())
        });
        if let Err(error) = resumed {
            tracing::warn!(queue = %consumer.queue, %error, "a consumer could not resume after the connection recovered");
            let _ = consumer.tx.send(ConsumerEvent::End(ConsumerEnd::ChannelClosed));
            return;
        }
        let Some(queue) = self.queues.get_mut(&consumer.queue) else {
            return;
        };
        queue.consumers.push(id);
        queue.had_consumer = true;
        consumer.generation = queue.generation;
        self.dirty.insert(consumer.queue.clone());
        self.consumers.insert(id, consumer);
    }

    // ---- declares ----

    pub(super) fn declare(&mut self, conn: ConnId, topology: &Topology) -> Result<(), BrokerError> {
        self.check_open(conn)?;
        for exchange in &topology.exchanges {
            self.declare_exchange(exchange)?;
        }
        for queue in &topology.queues {
            self.declare_queue(conn, queue)?;
        }
        for binding in &topology.bindings {
            self.bind(conn, binding)?;
        }
        if let Some(state) = self.conns.get_mut(&conn) {
            state.declared.record(topology);
        }
        Ok(())
    }

    fn declare_exchange(&mut self, exchange: &Exchange) -> Result<(), BrokerError> {
        if exchange.name.is_empty() {
            return Err(access_refused("operation not permitted on the default exchange"));
        }
        if let Some(current) = self.exchanges.get(&exchange.name) {
            return equivalence::exchange_equivalent(&current.decl, exchange);
        }
        if exchange.name.starts_with("amq.") {
            return Err(access_refused(&format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                exchange.name
            )));
        }
        self.exchanges.insert(
            exchange.name.clone(),
            ExchangeState {
                decl: exchange.clone(),
                had_binding: false,
            },
        );
        Ok(())
    }

    fn declare_queue(&mut self, conn: ConnId, queue: &Queue) -> Result<(), BrokerError> {
        if queue.name.is_empty() {
            return Err(BrokerError::Other(
                "the memory broker does not name queues: declare queues with a name".to_owned(),
            ));
        }
        let now = Instant::now();
        if let Some(current) = self.queues.get_mut(&queue.name) {
            check_owner(current, conn)?;
            if current.decl.exclusive != queue.exclusive {
                return Err(locked(&queue.name));
            }
            equivalence::queue_equivalent(&current.decl, queue)?;
            current.last_used = now;
            return Ok(());
        }
        if queue.name.starts_with("amq.") {
            return Err(access_refused(&format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                queue.name
            )));
        }
        let args = equivalence::queue_args(queue)?;
        let generation = self.next_id();
        self.queues.insert(
            queue.name.clone(),
            QueueState {
                decl: queue.clone(),
                args,
                generation,
                owner: queue.exclusive.then_some(conn),
                messages: VecDeque::new(),
                consumers: Vec::new(),
                cursor: 0,
                had_consumer: false,
                last_used: now,
            },
        );
        Ok(())
    }

    fn bind(&mut self, conn: ConnId, binding: &Binding) -> Result<(), BrokerError> {
        if binding.exchange.is_empty() {
            return Err(access_refused("operation not permitted on the default exchange"));
        }
        let queue = self
            .queues
            .get(&binding.queue)
            .ok_or_else(|| not_found_queue(&binding.queue))?;
        check_owner(queue, conn)?;
        let exchange = self
            .exchanges
            .get_mut(&binding.exchange)
            .ok_or_else(|| not_found_exchange(&binding.exchange))?;
        exchange.had_binding = true;
        self.bindings.insert((
            binding.exchange.clone(),
            binding.queue.clone(),
            binding.routing_key.clone(),
        ));
        Ok(())
    }

    pub(super) fn delete_queue(&mut self, conn: ConnId, name: &str) -> Result<(), BrokerError> {
        self.check_open(conn)?;
        let Some(queue) = self.queues.get(name) else {
            return Ok(());
        };
        check_owner(queue, conn)?;
        self.remove_queue(name);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.declared.forget_queue(name);
        }
        Ok(())
    }

    pub(super) fn delete_exchange(&mut self, conn: ConnId, name: &str) -> Result<(), BrokerError> {
        self.check_open(conn)?;
        if name.is_empty() {
            return Err(access_refused("operation not permitted on the default exchange"));
        }
        if name.starts_with("amq.") {
            return Err(access_refused(&format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        self.exchanges.remove(name);
        self.bindings.retain(|(exchange, _, _)| exchange != name);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.declared.forget_exchange(name);
        }
        Ok(())
    }

    /// Deletes a queue: its consumers are cancelled by the broker, its bindings go.
    fn remove_queue(&mut self, name: &str) {
        let Some(queue) = self.queues.remove(name) else {
            return;
        };
        for id in queue.consumers {
            if let Some(consumer) = self.consumers.remove(&id) {
                let _ = consumer
                    .tx
                    .send(ConsumerEvent::End(ConsumerEnd::Cancelled { by_broker: true }));
            }
        }
        let sources: BTreeSet<String> = self
            .bindings
            .iter()
            .filter(|(_, q, _)| q == name)
            .map(|(exchange, _, _)| exchange.clone())
            .collect();
        self.bindings.retain(|(_, q, _)| q != name);
        for exchange in sources {
            let unused = self.bindings_of(&exchange).next().is_none();
            if unused
                && self
                    .exchanges
                    .get(&exchange)
                    .is_some_and(|e| e.decl.auto_delete && e.had_binding)
            {
                self.exchanges.remove(&exchange);
            }
        }
        self.dirty.remove(name);
    }

    fn bindings_of<'a>(&'a self, exchange: &'a str) -> impl Iterator<Item = &'a (String, String, String)> + 'a {
        self.bindings
            .range((exchange.to_owned(), String::new(), String::new())..)
            .take_while(move |(e, _, _)| e == exchange)
    }

    // ---- publishing and routing ----

    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(if self.queues.contains_key(routing_key) {
                vec![routing_key.to_owned()]
            } else {
                Vec::new()
            });
        }
        let kind = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| not_found_exchange(exchange))?
            .decl
            .kind;
        let queues: BTreeSet<&String> = self
            .bindings_of(exchange)
            .filter(|(_, _, key)| match kind {
                ExchangeKind::Topic => topic_matches(key, routing_key),
                ExchangeKind::Direct => key == routing_key,
                ExchangeKind::Fanout => true,
            })
            .map(|(_, queue, _)| queue)
            .collect();
        Ok(queues.into_iter().cloned().collect())
    }

    pub(super) fn publish(&mut self, conn: ConnId, message: Publish) -> Result<PublishOutcome, BrokerError> {
        self.check_open(conn)?;
        let ttl = message
            .properties
            .expiration
            .as_deref()
            .map(equivalence::parse_expiration)
            .transpose()?;
        let targets = self.route(&message.exchange, &message.routing_key)?;
        if targets.is_empty() {
            return Ok(if message.mandatory {
                PublishOutcome::Returned {
                    code: NO_ROUTE,
                    text: "NO_ROUTE".to_owned(),
                }
            } else {
                PublishOutcome::Routed
            });
        }
        for queue in targets {
            let copy = Message {
                seq: 0,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                properties: message.properties.clone(),
                body: message.body.clone(),
                redelivered: false,
                expires_at: None,
            };
            self.enqueue(&queue, copy, ttl);
        }
        Ok(PublishOutcome::Routed)
    }

    fn enqueue(&mut self, queue: &str, mut message: Message, message_ttl: Option<Duration>) {
        let seq = self.next_id();
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        let ttl = match (q.args.message_ttl, message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        message.seq = seq;
        message.expires_at = ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        q.messages.push_back(message);
        self.dirty.insert(queue.to_owned());
    }

    /// Dead-letters a message leaving `source`, if the queue has a dead-letter
    /// exchange; drops it otherwise.
    fn dead_letter(&mut self, source: &str, mut message: Message, reason: &str) {
        let Some(queue) = self.queues.get(source) else {
            return;
        };
        let Some(dlx) = queue.args.dead_letter_exchange.clone() else {
            tracing::debug!(
                queue = source,
                reason,
                "message dropped: the queue has no dead-letter exchange"
            );
            return;
        };
        let routing_key = queue
            .args
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| message.routing_key.clone());
        let original_expiration = message.properties.expiration.take();
        let mut headers = message.properties.headers.take().unwrap_or_default();
        record_death(
            &mut headers,
            source,
            reason,
            &message.exchange,
            &message.routing_key,
            original_expiration,
        );
        let targets = match self.route(&dlx, &routing_key) {
            Ok(targets) => targets,
            Err(error) => {
                tracing::debug!(queue = source, %error, "dead-lettered message dropped");
                return;
            }
        };
        let deaths = match headers.get("x-death") {
            Some(FieldValue::Array(deaths)) => deaths.clone(),
            _ => Vec::new(),
        };
        message.properties.headers = Some(headers);
        for target in targets {
            if is_cycle(&target, &deaths) {
                tracing::debug!(queue = source, target, "dead-letter cycle: message dropped");
                continue;
            }
            let copy = Message {
                seq: 0,
                exchange: dlx.clone(),
                routing_key: routing_key.clone(),
                properties: message.properties.clone(),
                body: message.body.clone(),
                redelivered: false,
                expires_at: None,
            };
            self.enqueue(&target, copy, None);
        }
    }

    // ---- consumers ----

    pub(super) fn consume(
        &mut self,
        conn: ConnId,
        queue: &str,
        options: &ConsumeOptions,
    ) -> Result<(u64, String, mpsc::UnboundedReceiver<ConsumerEvent>), BrokerError> {
        self.check_open(conn)?;
        self.prune_closed_consumers();
        let id = self.next_id();
        let q = self.queues.get_mut(queue).ok_or_else(|| not_found_queue(queue))?;
        check_owner(q, conn)?;
        let held_exclusively = q
            .consumers
            .iter()
            .any(|c| self.consumers.get(c).is_some_and(|c| c.exclusive));
        if held_exclusively || (options.exclusive && !q.consumers.is_empty()) {
            return Err(BrokerError::ResourceLocked(format!(
                "queue '{queue}' in vhost '{VHOST}' in exclusive use"
            )));
        }
        let tag = if options.consumer_tag.is_empty() {
            format!("amq.ctag-{}", uuid::Uuid::new_v4().simple())
        } else {
            options.consumer_tag.clone()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        q.consumers.push(id);
        q.had_consumer = true;
        let generation = q.generation;
        self.consumers.insert(
            id,
            ConsumerState {
                conn,
                queue: queue.to_owned(),
                generation,
                prefetch: options.prefetch,
                exclusive: options.exclusive,
                in_flight: 0,
                tx,
                redeclare: self
                    .conns
                    .get(&conn)
                    .map(|c| c.declared.for_queue(queue))
                    .unwrap_or_default(),
            },
        );
        self.dirty.insert(queue.to_owned());
        Ok((id, tag, rx))
    }

    /// Takes a consumer off its queue (which an `auto_delete` queue may not survive).
    fn detach_consumer(&mut self, id: u64) -> Option<ConsumerState> {
        let consumer = self.consumers.remove(&id)?;
        let Some(queue) = self
            .queues
            .get_mut(&consumer.queue)
            .filter(|q| q.generation == consumer.generation)
        else {
            return Some(consumer);
        };
        if let Some(index) = queue.consumers.iter().position(|c| *c == id) {
            queue.consumers.remove(index);
            if queue.cursor > index {
                queue.cursor -= 1;
            }
        }
        if queue.consumers.is_empty() {
            queue.last_used = Instant::now();
            if queue.decl.auto_delete && queue.had_consumer {
                let name = consumer.queue.clone();
                self.remove_queue(&name);
            }
        } else {
            self.dirty.insert(consumer.queue.clone());
        }
        Some(consumer)
    }

    /// `basic.cancel` by the client.
    pub(super) fn cancel_consumer(&mut self, id: u64) {
        if let Some(consumer) = self.detach_consumer(id) {
            let _ = consumer
                .tx
                .send(ConsumerEvent::End(ConsumerEnd::Cancelled { by_broker: false }));
        }
    }

    /// Closes a consumer's channel: its unacked deliveries are requeued.
    pub(super) fn close_consumer(&mut self, id: u64) {
        let mut tags: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.consumer == id)
            .map(|(tag, _)| *tag)
            .collect();
        tags.sort_unstable();
        self.requeue(&tags);
        if let Some(consumer) = self.detach_consumer(id) {
            let _ = consumer.tx.send(ConsumerEvent::End(ConsumerEnd::ChannelClosed));
        }
    }

    /// Forgets consumers whose [`Consumer`](crate::broker::Consumer) was dropped.
    fn prune_closed_consumers(&mut self) {
        let mut gone: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, c)| c.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        gone.sort_unstable();
        for id in gone {
            self.detach_consumer(id);
        }
    }

    fn take_unacked(&mut self, tag: u64) -> Option<Unacked> {
        let entry = self.unacked.remove(&tag)?;
        if let Some(consumer) = self.consumers.get_mut(&entry.consumer) {
            consumer.in_flight = consumer.in_flight.saturating_sub(1);
            self.dirty.insert(consumer.queue.clone());
        }
        Some(entry)
    }

    fn requeue(&mut self, tags: &[u64]) {
        for tag in tags {
            let Some(entry) = self.take_unacked(*tag) else {
                continue;
            };
            let Some(queue) = self
                .queues
                .get_mut(&entry.queue)
                .filter(|q| q.generation == entry.generation)
            else {
                continue;
            };
            let mut message = entry.message;
            message.redelivered = true;
            queue.insert_by_seq(message);
            self.dirty.insert(entry.queue);
        }
    }

    pub(super) fn settle(&mut self, tag: u64, how: Settle) -> AckOutcome {
        if !self.unacked.contains_key(&tag) {
            tracing::debug!(
                delivery_tag = tag,
                ?how,
                "stale acknowledgement: the delivery was already settled or returned to its queue"
            );
            return AckOutcome::Stale;
        }
        match how {
            Settle::Ack => {
                self.take_unacked(tag);
            }
            Settle::Requeue => self.requeue(&[tag]),
            Settle::DeadLetter => {
                if let Some(entry) = self.take_unacked(tag)
                    && self
                        .queues
                        .get(&entry.queue)
                        .is_some_and(|q| q.generation == entry.generation)
                {
                    self.dead_letter(&entry.queue, entry.message, "rejected");
                }
            }
        }
        AckOutcome::Done
    }

    // ---- delivery ----

    /// Delivers what the queues marked dirty can deliver.
    pub(super) fn pump(&mut self) {
        self.prune_closed_consumers();
        while let Some(name) = self.dirty.pop_first() {
            self.dispatch(&name);
        }
    }

    fn dispatch(&mut self, name: &str) {
        enum Step {
            Stop,
            Expired(Box<Message>),
            Gone(u64),
            Delivered,
        }
        let now = Instant::now();
        loop {
            let step = 'step: {
                let Some(queue) = self.queues.get_mut(name) else {
                    break 'step Step::Stop;
                };
                let Some(head) = queue.messages.front() else {
                    break 'step Step::Stop;
                };
                if head.expires_at.is_some_and(|at| at < now) {
                    let message = queue.messages.pop_front().expect("the queue has a head");
                    break 'step Step::Expired(Box::new(message));
                }
                let count = queue.consumers.len();
                let chosen = if queue.args.single_active_consumer {
                    queue
                        .consumers
                        .first()
                        .filter(|id| self.consumers.get(id).is_some_and(ConsumerState::has_room))
                        .map(|id| (0, *id))
                } else {
                    (0..count)
                        .map(|offset| (queue.cursor + offset) % count)
                        .map(|index| (index, queue.consumers[index]))
                        .find(|(_, id)| self.consumers.get(id).is_some_and(ConsumerState::has_room))
                };
                let Some((index, id)) = chosen else {
                    break 'step Step::Stop;
                };
                let Some(consumer) = self.consumers.get_mut(&id) else {
                    break 'step Step::Stop;
                };
                let message = queue.messages.pop_front().expect("the queue has a head");
                self.next_id += 1;
                let tag = self.next_id;
                let delivery = Delivery {
                    exchange: message.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                    redelivered: message.redelivered,
                    properties: message.properties.clone(),
                    body: message.body.clone(),
                    acker: Arc::new(MemoryAcker {
                        inner: self.this.clone(),
                        tag,
                    }),
                };
                if consumer.tx.send(ConsumerEvent::Delivery(Box::new(delivery))).is_err() {
                    queue.messages.push_front(message);
                    break 'step Step::Gone(id);
                }
                queue.cursor = index + 1;
                consumer.in_flight += 1;
                self.unacked.insert(
                    tag,
                    Unacked {
                        queue: name.to_owned(),
                        generation: queue.generation,
                        consumer: id,
                        conn: consumer.conn,
                        message,
                    },
                );
                Step::Delivered
            };
            match step {
                Step::Stop => return,
                Step::Expired(message) => self.dead_letter(name, *message, "expired"),
                Step::Gone(id) => {
                    self.detach_consumer(id);
                }
                Step::Delivered => {}
            }
        }
    }

    // ---- time ----

    /// Expires messages and queues due at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        let names: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| {
                q.messages
                    .front()
                    .and_then(|m| m.expires_at)
                    .is_some_and(|at| at <= now)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &names {
            while let Some(queue) = self.queues.get_mut(name)
                && queue
                    .messages
                    .front()
                    .and_then(|m| m.expires_at)
                    .is_some_and(|at| at <= now)
            {
                let message = queue.messages.pop_front().expect("the queue has a head");
                self.dead_letter(name, message, "expired");
            }
        }
        let unused: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.expiry().is_some_and(|at| at <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in unused {
            tracing::debug!(queue = name, "queue expired (x-expires)");
            self.remove_queue(&name);
        }
    }

    /// The next instant something expires.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .flat_map(|q| [q.messages.front().and_then(|m| m.expires_at), q.expiry()])
            .flatten()
            .min()
    }

    /// Records the deadline the expiry task sleeps until.
    pub(super) fn set_scheduled(&mut self, deadline: Option<Instant>) {
        self.scheduled = deadline;
    }

    /// Makes sure the expiry task runs, and wakes it when a deadline came up earlier
    /// than the one it sleeps until.
    pub(super) fn kick_timer(&mut self) {
        let Some(next) = self.next_deadline() else {
            return;
        };
        if let Some(timer) = &self.timer
            && !timer.task.is_finished()
        {
            if self.scheduled.is_none_or(|scheduled| next < scheduled) {
                // Full means a wake-up is already pending.
                let _ = timer.wake.try_send(());
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no tokio runtime: memory broker expiry postponed to the next operation");
            return;
        };
        let (wake, rx) = mpsc::channel(1);
        let task = runtime.spawn(super::expiry_task(self.this.clone(), rx));
        self.timer = Some(Timer { wake, task });
        self.scheduled = None;
    }

    // ---- admin ----

    pub(super) fn list_queues(&self) -> Vec<QueueInfo> {
        self.queues
            .values()
            .map(|q| QueueInfo {
                queue: q.decl.clone(),
                ready: q.messages.len(),
                unacked: self
                    .unacked
                    .values()
                    .filter(|u| u.queue == q.decl.name && u.generation == q.generation)
                    .count(),
                consumers: q.consumers.len(),
            })
            .collect()
    }

    pub(super) fn list_bindings(&self) -> Vec<Binding> {
        self.bindings
            .iter()
            .map(|(exchange, queue, key)| Binding::new(exchange, queue, key))
            .collect()
    }

    pub(super) fn list_exchanges(&self) -> Vec<Exchange> {
        self.exchanges.values().map(|e| e.decl.clone()).collect()
    }

    pub(super) fn summary(&self) -> (usize, usize, usize) {
        (self.exchanges.len(), self.queues.len(), self.conns.len())
    }
}

fn str_field<'a>(table: &'a Headers, name: &str) -> Option<&'a str> {
    table.get(name).and_then(equivalence::as_str)
}

/// Adds a death to the `x-death` header as RabbitMQ does: one entry per (queue,
/// reason), most recent first, counting repeats.
fn record_death(
    headers: &mut Headers,
    queue: &str,
    reason: &str,
    exchange: &str,
    routing_key: &str,
    original_expiration: Option<String>,
) {
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let existing = deaths.iter().position(|d| {
        matches!(d, FieldValue::Table(t) if str_field(t, "queue") == Some(queue) && str_field(t, "reason") == Some(reason))
    });
    let entry = if let Some(index) = existing
        && let FieldValue::Table(mut entry) = deaths.remove(index)
    {
        let count = entry
            .get("count")
            .and_then(equivalence::as_int)
            .and_then(|c| i64::try_from(c).ok())
            .unwrap_or(0);
        entry.insert("count", FieldValue::I64(count.saturating_add(1)));
        entry.insert("time", FieldValue::Timestamp(time));
        entry
    } else {
        let mut entry = Headers::new();
        entry.insert("count", FieldValue::I64(1));
        entry.insert("reason", FieldValue::String(reason.to_owned()));
        entry.insert("queue", FieldValue::String(queue.to_owned()));
        entry.insert("time", FieldValue::Timestamp(time));
        entry.insert("exchange", FieldValue::String(exchange.to_owned()));
        entry.insert(
            "routing-keys",
            FieldValue::Array(vec![FieldValue::String(routing_key.to_owned())]),
        );
        if let Some(expiration) = original_expiration {
            entry.insert("original-expiration", FieldValue::String(expiration));
        }
        entry
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    for (suffix, value) in [("exchange", exchange), ("queue", queue), ("reason", reason)] {
        let first = format!("x-first-death-{suffix}");
        if headers.get(&first).is_none() {
            headers.insert(first, FieldValue::String(value.to_owned()));
        }
        headers.insert(format!("x-last-death-{suffix}"), FieldValue::String(value.to_owned()));
    }
}

/// RabbitMQ drops a dead-lettered message that would return to a queue it died in
/// when no death on the way was a rejection (a fully automatic cycle).
fn is_cycle(target: &str, deaths: &[FieldValue]) -> bool {
    for death in deaths {
        let FieldValue::Table(death) = death else {
            continue;
        };
        if str_field(death, "reason") == Some("rejected") {
            return false;
        }
        if str_field(death, "queue") == Some(target) {
            return true;
        }
    }
    false
}
