//! Publisher confirms matched to their publishes, returned messages included.
//!
//! RabbitMQ sends `basic.return` for an unroutable mandatory message just before the
//! `basic.ack` that confirms it, and often confirms several publishes with one ack
//! (`multiple`). lapin (4.12) hands each returned message to whichever confirm it
//! completes first, in no particular order: with publishes in flight side by side, an
//! unroutable one could be told "routed" and a routed one "returned" (an RPC call to a
//! running service failing with `UnknownService` while the call to the missing one
//! timed out).
//!
//! [`Confirms`] puts that right for the channel mandatory publishes go on (the others
//! have a channel of their own, where nothing is ever returned). Every publish on it is
//! tracked from before it is sent ([`Confirms::reserve`]) until its confirm is read. Each confirm is polled
//! with a waker of its own, which records the order lapin completes confirms in; a
//! returned message a confirm carries goes to a pool, and a mandatory publish takes
//! the one that matches it (exchange, routing key, correlation id and body). A mandatory
//! publish confirmed without a match first reads every confirm lapin completed before
//! its own (the one holding its message is among them), and waits for publishes that
//! were still being sent when it learnt of its confirm.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Wake, Waker},
};

use bytes::Bytes;
use lapin::{Confirmation, PublisherConfirm, message::BasicReturnMessage};

/// What a publish's confirm said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Confirmed {
    /// Routed (or, without `mandatory`, perhaps dropped): the broker took it.
    Ack,
    /// Unroutable and mandatory: the broker returned it.
    Returned { code: u16, text: String },
    /// The broker refused it.
    Nack,
}

impl From<Confirmation> for Confirmed {
    /// The confirm of a publish that cannot be returned (not mandatory).
    fn from(confirmation: Confirmation) -> Self {
        match confirmation {
            Confirmation::Nack(_) => Self::Nack,
            Confirmation::Ack(_) | Confirmation::NotRequested => Self::Ack,
        }
    }
}

/// What identifies a mandatory publish's returned message.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) correlation_id: Option<String>,
    pub(crate) body: Bytes,
}

impl Identity {
    fn matches(&self, message: &BasicReturnMessage) -> bool {
        let delivery = &message.delivery;
        delivery.exchange.as_str() == self.exchange
            && delivery.routing_key.as_str() == self.routing_key
            && delivery.properties.correlation_id().as_ref().map(|id| id.as_str()) == self.correlation_id.as_deref()
            && delivery.data == self.body
    }
}

/// The confirms of one channel's publishes in flight.
#[derive(Debug, Default)]
pub(crate) struct Confirms {
    state: Mutex<State>,
    /// Tracked publishes whose confirm lapin completed, in the order it did.
    completed: Arc<Mutex<Vec<u64>>>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    tracked: HashMap<u64, Tracked>,
    /// The tracked publishes not sent yet.
    unsent: BTreeSet<u64>,
    /// Returned messages read from confirms, not yet taken by their publish.
    returned: Vec<BasicReturnMessage>,
}

#[derive(Debug)]
struct Tracked {
    /// `None` while the publish is being sent, and once its confirm was read.
    confirm: Option<PublisherConfirm>,
    /// What the confirm said, once read (its returned message, if any, is in the pool).
    read: Option<Result<Confirmation, lapin::Error>>,
    /// Wakes the publish's task, after noting the confirm in `completed`.
    waker: Waker,
    slot: Arc<Slot>,
    /// What its returned message would look like.
    identity: Identity,
    /// The publish gave up waiting (its future was dropped).
    abandoned: bool,
}

/// The waker a confirm is polled with: it records the completion, then wakes the task.
#[derive(Debug)]
struct Slot {
    id: u64,
    completed: Arc<Mutex<Vec<u64>>>,
    task: Mutex<Option<Waker>>,
}

impl Wake for Slot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.completed).push(self.id);
        if let Some(task) = lock(&self.task).as_ref() {
            task.wake_by_ref();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Confirms {
    /// Tracks a mandatory publish about to be sent, which `identity` describes. Call
    /// it before `basic_publish`, and [`Ticket::sent`] with the confirm it gives.
    pub(crate) fn reserve(self: &Arc<Self>, identity: Identity) -> Ticket {
        let mut state = lock(&self.state);
        let id = state.next;
        state.next += 1;
        state.unsent.insert(id);
        let slot = Arc::new(Slot {
            id,
            completed: Arc::clone(&self.completed),
            task: Mutex::new(None),
        });
        state.tracked.insert(
            id,
            Tracked {
                confirm: None,
                read: None,
                waker: Waker::from(Arc::clone(&slot)),
                slot,
                identity,
                abandoned: false,
            },
        );
        Ticket {
            confirms: Arc::clone(self),
            id,
            horizon: None,
            finished: false,
        }
    }
}

impl State {
    /// Polls the confirm of `id` with its own waker; records what it said.
    fn poll_confirm(&mut self, id: u64) {
        let Some(tracked) = self.tracked.get_mut(&id) else {
            return;
        };
        let Some(confirm) = tracked.confirm.as_mut() else {
            return;
        };
        let mut cx = Context::from_waker(&tracked.waker);
        let Poll::Ready(mut read) = Pin::new(confirm).poll(&mut cx) else {
            return;
        };
        tracked.confirm = None;
        let returned = match &mut read {
            Ok(Confirmation::Ack(message) | Confirmation::Nack(message)) => message.take(),
            _ => None,
        };
        tracked.read = Some(read);
        let abandoned = tracked.abandoned;
        if let Some(message) = returned {
            self.returned.push(message);
        }
        if abandoned {
            self.forget(id);
        }
    }

    /// Reads every confirm lapin completed since last time, in its order.
    fn read_completed(&mut self, completed: &Mutex<Vec<u64>>) {
        let ids = std::mem::take(&mut *lock(completed));
        for id in ids {
            self.poll_confirm(id);
        }
    }

    /// Whether a publish tracked before `horizon` is still being sent: its confirm, once
    /// attached, may hold a returned message.
    fn sending_before(&self, horizon: u64) -> bool {
        self.unsent.range(..horizon).next().is_some()
    }

    /// Wakes the publishes waiting for others to be sent.
    fn wake_waiting(&self) {
        for tracked in self.tracked.values() {
            if tracked.read.is_some()
                && let Some(task) = lock(&tracked.slot.task).as_ref()
            {
                task.wake_by_ref();
            }
        }
    }

    fn forget(&mut self, id: u64) {
        self.tracked.remove(&id);
        self.unsent.remove(&id);
        if self.tracked.is_empty() {
            // Nothing in flight can claim them: a message returned for a publish that
            // gave up.
            self.returned.clear();
        }
    }
}

/// One publish's place in [`Confirms`]: attach its confirm with [`sent`](Self::sent),
/// then await it. Dropped early, the publish stops waiting; its confirm is still read
/// (it may hold another publish's returned message).
#[derive(Debug)]
pub(crate) struct Ticket {
    confirms: Arc<Confirms>,
    id: u64,
    /// Publishes tracked from here on cannot hold this one's returned message: set when
    /// its confirm was read.
    horizon: Option<u64>,
    finished: bool,
}

impl Ticket {
    /// The publish was sent: its confirm.
    pub(crate) fn sent(&mut self, confirm: PublisherConfirm) {
        let mut state = lock(&self.confirms.state);
        if let Some(tracked) = state.tracked.get_mut(&self.id) {
            tracked.confirm = Some(confirm);
        }
        state.unsent.remove(&self.id);
        state.poll_confirm(self.id);
        state.read_completed(&self.confirms.completed);
        state.wake_waiting();
    }
}

impl Future for Ticket {
    type Output = Result<Confirmed, lapin::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let confirms = Arc::clone(&this.confirms);
        let mut guard = lock(&confirms.state);
        let state = &mut *guard;
        let Some(tracked) = state.tracked.get(&this.id) else {
            return Poll::Ready(Err(lapin::ErrorKind::FutureCompleted.into()));
        };
        {
            let mut task = lock(&tracked.slot.task);
            if !task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        state.read_completed(&confirms.completed);
        // Not noted as completed if it completed before it was polled.
        state.poll_confirm(this.id);
        let Some(tracked) = state.tracked.get(&this.id) else {
            return Poll::Ready(Err(lapin::ErrorKind::FutureCompleted.into()));
        };
        let acked = match &tracked.read {
            None => return Poll::Pending,
            Some(Err(error)) => {
                let error = error.clone();
                this.finished = true;
                state.forget(this.id);
                return Poll::Ready(Err(error));
            }
            Some(Ok(Confirmation::Nack(_))) => false,
            Some(Ok(_)) => true,
        };
        let returned = state
            .returned
            .iter()
            .position(|message| tracked.identity.matches(message));
        let outcome = match returned {
            Some(at) => {
                let message = state.returned.swap_remove(at);
                Confirmed::Returned {
                    code: message.reply_code,
                    text: message.reply_text.to_string(),
                }
            }
            None => {
                // Its returned message may be in a confirm not attached yet.
                let horizon = *this.horizon.get_or_insert(state.next);
                if state.sending_before(horizon) {
                    return Poll::Pending;
                }
                if acked { Confirmed::Ack } else { Confirmed::Nack }
            }
        };
        this.finished = true;
        state.forget(this.id);
        Poll::Ready(Ok(outcome))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = lock(&self.confirms.state);
        let pending = state
            .tracked
            .get_mut(&self.id)
            .is_some_and(|tracked| match tracked.confirm {
                Some(_) => {
                    // Read when it completes: it may carry another publish's message.
                    tracked.abandoned = true;
                    true
                }
                None => false,
            });
        if !pending {
            state.forget(self.id);
        }
        state.wake_waiting();
    }
}
