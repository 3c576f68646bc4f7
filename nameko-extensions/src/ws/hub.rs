//! The runner's open sockets and their subscriptions, and the [`WebSocketHub`]
//! dependency that pushes events to them.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    sync::{Arc, Mutex},
};

use axum::extract::ws::Utf8Bytes;
use nameko_core::{
    BoxError, Dependency, DependencyProvider, HandlerError, IntoHandlerError, RemoteError, SetupContext, SetupError,
    WorkerContext,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{WsServer, protocol};

/// How many frames may wait to be written to one socket (events pushed by
/// [`WebSocketHub::broadcast`] and [`WebSocketHub::unicast`]). A client that reads so
/// slowly that its queue is full is disconnected (close code 1008, the reason says so):
/// the hub never waits for one client, so one slow client never holds up the others.
pub const SOCKET_QUEUE_SIZE: usize = 256;

/// A hub operation named a socket that is not connected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Nameko's `ConnectionNotFound`: no open socket has this id.
    #[error("ConnectionNotFound: no websocket connection `{0}`")]
    ConnectionNotFound(String),
}

impl IntoHandlerError for HubError {
    /// Nameko's `ConnectionNotFound(socket_id)`.
    fn into_handler_error(self) -> HandlerError {
        let remote = match &self {
            Self::ConnectionNotFound(socket_id) => RemoteError::new("ConnectionNotFound", socket_id.clone())
                .with_path("nameko.exceptions.ConnectionNotFound"),
        };
        HandlerError::new(remote).with_source(self)
    }
}

/// Where one connection's frames go.
enum Sink {
    /// A real socket: its queue, and the token that disconnects it with a reason.
    Socket {
        tx: mpsc::Sender<Utf8Bytes>,
        kick: Arc<Kick>,
    },
    /// A recorded socket ([`HubLog::connect`]): frames are kept for assertions.
    Recorded(Arc<Mutex<Vec<Value>>>),
}

/// Disconnects a socket, once, with a reason.
#[derive(Default)]
pub(crate) struct Kick {
    pub(crate) token: CancellationToken,
    pub(crate) reason: Mutex<Option<String>>,
}

impl Kick {
    fn kick(&self, reason: String) {
        lock(&self.reason).get_or_insert(reason);
        self.token.cancel();
    }
}

struct Connection {
    sink: Sink,
    subscriptions: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    connections: HashMap<String, Connection>,
    channels: HashMap<String, BTreeSet<String>>,
}

/// The open sockets of one runner and their subscriptions.
#[derive(Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// Registers a real socket; returns its queue's receiver.
    pub(crate) fn open(&self, socket_id: &str, kick: Arc<Kick>) -> mpsc::Receiver<Utf8Bytes> {
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE_SIZE);
        self.insert(socket_id, Sink::Socket { tx, kick });
        rx
    }

    fn insert(&self, socket_id: &str, sink: Sink) {
        lock(&self.state).connections.insert(
            socket_id.to_owned(),
            Connection {
                sink,
                subscriptions: BTreeSet::new(),
            },
        );
    }

    /// Forgets a socket and its subscriptions.
    pub(crate) fn close(&self, socket_id: &str) {
        let mut state = lock(&self.state);
        let Some(connection) = state.connections.remove(socket_id) else {
            return;
        };
        for channel in connection.subscriptions {
            if let Some(sockets) = state.channels.get_mut(&channel) {
                sockets.remove(socket_id);
                if sockets.is_empty() {
                    state.channels.remove(&channel);
                }
            }
        }
    }

    /// Queues `frame` for one connection without waiting; a full queue disconnects it.
    /// Returns whether the frame was queued.
    fn push(socket_id: &str, connection: &Connection, frame: &Utf8Bytes, value: impl FnOnce() -> Value) -> bool {
        match &connection.sink {
            Sink::Recorded(frames) => {
                lock(frames).push(value());
                true
            }
            Sink::Socket { tx, kick } => match tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        socket_id,
                        "disconnecting a websocket client that reads too slowly: {SOCKET_QUEUE_SIZE} frames are waiting"
                    );
                    kick.kick(format!(
                        "the client reads too slowly: {SOCKET_QUEUE_SIZE} frames were waiting"
                    ));
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        }
    }
}

/// The runner's websocket hub, as a dependency: Nameko's `WebSocketHubProvider`.
///
/// One hub per runner: every `WebSocketHub` field of every service of a runner sees the
/// same sockets (those connected to this runner's `GET /ws`; there is no fan-out to
/// other instances — use an event handler that calls the hub on each instance for
/// that). A socket's subscriptions are dropped when it closes.
///
/// Events reach a socket in the order they are pushed, and an event pushed by a call
/// reaches that call's socket before the call's result. Pushing never waits: each
/// socket has a queue of [`SOCKET_QUEUE_SIZE`] frames, and a client whose queue is
/// full is disconnected.
///
/// ```
/// use nameko_extensions::ws::WebSocketHub;
/// use serde_json::json;
///
/// let (hub, log) = WebSocketHub::recording();
/// let socket_id = log.connect();
/// hub.subscribe(&socket_id, "room:1").unwrap();
/// assert_eq!(hub.broadcast("room:1", "said", json!({"text": "hi"})), 1);
/// assert_eq!(log.frames(&socket_id), [json!({"type": "event", "event": "said", "data": {"text": "hi"}})]);
/// assert!(hub.subscribe("nobody", "room:1").is_err());
/// ```
#[derive(Clone)]
pub struct WebSocketHub {
    registry: Arc<Registry>,
}

impl WebSocketHub {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// A hub of its own with no real sockets, for unit tests (what a generated worker
    /// factory puts in an unset `WebSocketHub` field): open fake sockets with
    /// [`HubLog::connect`] and read what they were sent with [`HubLog::frames`].
    pub fn recording() -> (Self, HubLog) {
        let registry = Arc::new(Registry::default());
        (Self::new(Arc::clone(&registry)), HubLog::new(registry))
    }

    /// Subscribes a socket to a channel.
    ///
    /// # Errors
    ///
    /// [`HubError::ConnectionNotFound`] when no open socket has this id.
    pub fn subscribe(&self, socket_id: &str, channel: &str) -> Result<(), HubError> {
        let mut state = lock(&self.registry.state);
        let connection = state
            .connections
            .get_mut(socket_id)
            .ok_or_else(|| HubError::ConnectionNotFound(socket_id.to_owned()))?;
        connection.subscriptions.insert(channel.to_owned());
        state
            .channels
            .entry(channel.to_owned())
            .or_default()
            .insert(socket_id.to_owned());
        Ok(())
    }

    /// Unsubscribes a socket from a channel; returns whether it was subscribed.
    pub fn unsubscribe(&self, socket_id: &str, channel: &str) -> bool {
        let mut state = lock(&self.registry.state);
        let was = state
            .connections
            .get_mut(socket_id)
            .is_some_and(|connection| connection.subscriptions.remove(channel));
        if let Some(sockets) = state.channels.get_mut(channel) {
            sockets.remove(socket_id);
            if sockets.is_empty() {
                state.channels.remove(channel);
            }
        }
        was
    }

    /// A socket's channels, sorted.
    ///
    /// # Errors
    ///
    /// [`HubError::ConnectionNotFound`] when no open socket has this id.
    pub fn subscriptions(&self, socket_id: &str) -> Result<Vec<String>, HubError> {
        let state = lock(&self.registry.state);
        let connection = state
            .connections
            .get(socket_id)
            .ok_or_else(|| HubError::ConnectionNotFound(socket_id.to_owned()))?;
        Ok(connection.subscriptions.iter().cloned().collect())
    }

    /// The ids of the open sockets, sorted.
    pub fn connections(&self) -> Vec<String> {
        let state = lock(&self.registry.state);
        let mut ids: Vec<String> = state.connections.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Sends the event frame `{"type": "event", "event": event, "data": data}` to every
    /// socket subscribed to `channel`; returns how many it was queued for.
    pub fn broadcast(&self, channel: &str, event: &str, data: Value) -> usize {
        let frame = Utf8Bytes::from(protocol::event(event, &data));
        let state = lock(&self.registry.state);
        let Some(sockets) = state.channels.get(channel) else {
            return 0;
        };
        sockets
            .iter()
            .filter_map(|id| state.connections.get(id).map(|connection| (id, connection)))
            .filter(|(id, connection)| Registry::push(id, connection, &frame, || event_value(event, &data)))
            .count()
    }

    /// Sends the event frame to one socket; returns whether it is connected (and the
    /// frame was queued).
    pub fn unicast(&self, socket_id: &str, event: &str, data: Value) -> bool {
        let state = lock(&self.registry.state);
        let Some(connection) = state.connections.get(socket_id) else {
            return false;
        };
        let frame = Utf8Bytes::from(protocol::event(event, &data));
        Registry::push(socket_id, connection, &frame, || event_value(event, &data))
    }
}

fn event_value(event: &str, data: &Value) -> Value {
    serde_json::json!({ "type": "event", "event": event, "data": data })
}

impl fmt::Debug for WebSocketHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let connections = lock(&self.registry.state).connections.len();
        f.debug_struct("WebSocketHub")
            .field("connections", &connections)
            .finish()
    }
}

/// The fake sockets of a [`WebSocketHub::recording`] hub and what they were sent.
#[derive(Clone)]
pub struct HubLog {
    registry: Arc<Registry>,
    frames: Arc<Mutex<HashMap<String, Arc<Mutex<Vec<Value>>>>>>,
}

impl HubLog {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            frames: Arc::default(),
        }
    }

    /// Opens a fake socket with a fresh id; returns the id.
    pub fn connect(&self) -> String {
        let socket_id = nameko_core::ids::uuid4().to_string();
        self.connect_as(&socket_id);
        socket_id
    }

    /// Opens a fake socket with this id (replacing one with the same id).
    pub fn connect_as(&self, socket_id: &str) {
        let frames = Arc::new(Mutex::new(Vec::new()));
        lock(&self.frames).insert(socket_id.to_owned(), Arc::clone(&frames));
        self.registry.insert(socket_id, Sink::Recorded(frames));
    }

    /// Closes a fake socket: its subscriptions are dropped, its frames kept.
    pub fn disconnect(&self, socket_id: &str) {
        self.registry.close(socket_id);
    }

    /// The event frames sent to a fake socket so far, oldest first.
    pub fn frames(&self, socket_id: &str) -> Vec<Value> {
        lock(&self.frames)
            .get(socket_id)
            .map(|frames| lock(frames).clone())
            .unwrap_or_default()
    }
}

impl fmt::Debug for HubLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubLog").finish_non_exhaustive()
    }
}

/// Provides the runner's [`WebSocketHub`].
#[derive(Debug, Default)]
pub struct WebSocketHubProvider {
    hub: Option<WebSocketHub>,
}

impl DependencyProvider for WebSocketHubProvider {
    type Output = WebSocketHub;
    type State = ();

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        self.hub = Some(WsServer::attach(cx)?.hub());
        Ok(())
    }

    async fn get_dependency(&self, _cx: &WorkerContext) -> Result<(WebSocketHub, ()), BoxError> {
        let hub = self.hub.clone().ok_or("the websocket hub was not set up")?;
        Ok((hub, ()))
    }
}

impl Dependency for WebSocketHub {
    type Provider = WebSocketHubProvider;

    fn provider() -> WebSocketHubProvider {
        WebSocketHubProvider::default()
    }

    /// A recording hub; use [`WebSocketHub::recording`] to keep its log.
    fn test_default() -> Option<Self> {
        Some(Self::recording().0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subscriptions_are_sorted_and_cleaned_up() {
        let (hub, log) = WebSocketHub::recording();
        let a = log.connect();
        let b = log.connect();
        hub.subscribe(&a, "zeta").unwrap();
        hub.subscribe(&a, "alpha").unwrap();
        hub.subscribe(&b, "alpha").unwrap();
        assert_eq!(hub.subscriptions(&a).unwrap(), ["alpha", "zeta"]);
        assert_eq!(hub.broadcast("alpha", "e", json!(1)), 2);
        assert!(hub.unsubscribe(&b, "alpha"));
        assert!(!hub.unsubscribe(&b, "alpha"));
        assert_eq!(hub.broadcast("alpha", "e", json!(2)), 1);
        log.disconnect(&a);
        assert_eq!(hub.broadcast("alpha", "e", json!(3)), 0);
        assert_eq!(hub.subscriptions(&a), Err(HubError::ConnectionNotFound(a.clone())));
        assert_eq!(hub.connections(), vec![b.clone()]);
        assert_eq!(log.frames(&a).len(), 2);
        assert_eq!(log.frames(&b), [json!({"type": "event", "event": "e", "data": 1})]);
        assert!(hub.unicast(&b, "direct", json!({"x": 1})));
        assert!(!hub.unicast(&a, "direct", json!({"x": 1})));
        let err = hub.subscribe("gone", "c").unwrap_err().into_handler_error();
        assert_eq!(err.remote().exc_path(), "nameko.exceptions.ConnectionNotFound");
        assert_eq!(err.remote().value(), "gone");
    }

    #[test]
    fn a_full_queue_disconnects_only_that_socket() {
        let registry = Arc::new(Registry::default());
        let hub = WebSocketHub::new(Arc::clone(&registry));
        let slow_kick = Arc::new(Kick::default());
        let _slow = registry.open("slow", Arc::clone(&slow_kick));
        let fast_kick = Arc::new(Kick::default());
        let mut fast = registry.open("fast", Arc::clone(&fast_kick));
        hub.subscribe("slow", "c").unwrap();
        hub.subscribe("fast", "c").unwrap();
        for i in 0..SOCKET_QUEUE_SIZE {
            assert_eq!(hub.broadcast("c", "e", json!(i)), 2);
            fast.try_recv().unwrap();
        }
        assert!(!slow_kick.token.is_cancelled());
        assert_eq!(hub.broadcast("c", "e", json!("over")), 1);
        assert!(slow_kick.token.is_cancelled());
        assert!(lock(&slow_kick.reason).as_deref().unwrap().contains("reads too slowly"));
        assert!(!fast_kick.token.is_cancelled());
        assert!(fast.try_recv().unwrap().as_str().contains("over"));
    }
}
