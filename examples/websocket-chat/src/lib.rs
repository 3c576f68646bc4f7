//! The websocket chat example: chat rooms over Nameko's websocket protocol.
//!
//! One service, `chat`, with three `#[ws_rpc]` methods a browser (or any websocket
//! client) calls on `GET /ws`:
//!
//! - `join(room)`: subscribes the socket to the room, tells the room who joined
//!   (`joined` event) and answers the socket's rooms;
//! - `say(room, text)`: sends a `said` event to everyone in the room (the sender
//!   included) and answers how many sockets it reached;
//! - `leave(room)`: unsubscribes the socket and tells the room (`left` event).
//!
//! ```text
//! C {"method": "join", "data": {"room": "lobby"}, "correlation_id": 1}
//! S {"type": "event", "event": "joined", "data": {"room": "lobby", "socket_id": "..."}}
//! S {"type": "result", "success": true, "data": ["lobby"], "correlation_id": 1}
//! C {"method": "say", "data": {"room": "lobby", "text": "hi"}, "correlation_id": 2}
//! S {"type": "event", "event": "said", "data": {"room": "lobby", "from": "...", "text": "hi"}}
//! S {"type": "result", "success": true, "data": 1, "correlation_id": 2}
//! ```
//!
//! The binary is `nameko run` for this service: `cargo run -p example-websocket-chat --
//! run --transport memory` serves `ws://127.0.0.1:8000/ws` on the runner's web server
//! (`WEB_SERVER_ADDRESS`).

use nameko::prelude::*;
use serde_json::json;

/// What a chat call can fail with.
#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub enum ChatError {
    /// An empty room name.
    #[error("a room needs a name")]
    #[remote(exc_type = "NoRoom", expected)]
    NoRoom,
    /// Saying something in a room the socket has not joined.
    #[error("join `{0}` before saying something there")]
    #[remote(exc_type = "NotInRoom", expected)]
    NotInRoom(String),
    /// The socket is gone.
    #[error(transparent)]
    #[remote(exc_type = "ConnectionNotFound")]
    Hub(#[from] nameko::ws::HubError),
}

/// The chat service: its one dependency is the runner's websocket hub.
#[derive(Debug, nameko::Dependencies)]
pub struct Chat {
    hub: WebSocketHub,
}

#[nameko::service(name = "chat")]
impl Chat {
    /// Joins `room`; answers the socket's rooms, sorted.
    #[ws_rpc]
    pub async fn join(&self, socket_id: String, room: String) -> Result<Vec<String>, ChatError> {
        if room.is_empty() {
            return Err(ChatError::NoRoom);
        }
        self.hub.subscribe(&socket_id, &room)?;
        self.hub
            .broadcast(&room, "joined", json!({ "room": room, "socket_id": socket_id }));
        Ok(self.hub.subscriptions(&socket_id)?)
    }

    /// Says `text` in `room`; answers how many sockets heard it.
    #[ws_rpc]
    pub async fn say(&self, socket_id: String, room: String, text: String) -> Result<usize, ChatError> {
        if !self.hub.subscriptions(&socket_id)?.contains(&room) {
            return Err(ChatError::NotInRoom(room));
        }
        Ok(self
            .hub
            .broadcast(&room, "said", json!({ "room": room, "from": socket_id, "text": text })))
    }

    /// Leaves `room`; answers whether the socket was in it.
    #[ws_rpc]
    pub async fn leave(&self, socket_id: String, room: String) -> Result<bool, ChatError> {
        let was_in = self.hub.unsubscribe(&socket_id, &room);
        if was_in {
            self.hub
                .broadcast(&room, "left", json!({ "room": room, "socket_id": socket_id }));
        }
        Ok(was_in)
    }
}
