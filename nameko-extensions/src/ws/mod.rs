//! WebSocket RPC and the hub, with Nameko's protocol on `GET /ws` (feature `ws`).
//!
//! - [`WsRpcEntrypoint`] (`#[ws_rpc]`): a method called by request frames.
//! - [`WebSocketHub`]: a dependency that subscribes sockets to channels and pushes
//!   event frames to them (`broadcast`, `unicast`).
//! - [`WsServer`]: the runner's one websocket endpoint, shared by every service of a
//!   runner; its [`router`](WsServer::router) serves `GET /ws`.
//!
//! The protocol, JSON text frames:
//!
//! | direction | frame |
//! | --- | --- |
//! | server → client, on connect | `{"type": "event", "event": "connected", "data": {"socket_id": "<uuid4>"}}` |
//! | client → server | `{"method": "<name>", "data": {<kwargs>}, "correlation_id": <any, optional>}` |
//! | server → client, success | `{"type": "result", "success": true, "data": <return value>, "correlation_id": <echo>}` |
//! | server → client, failure | `{"type": "result", "success": false, "error": {exc_type, exc_path, exc_args, value}, "correlation_id": <echo or null>}` |
//! | server → client, pushed event | `{"type": "event", "event": "<name>", "data": <payload>}` |
//!
//! Requests on one socket run one at a time, in order. Each is a worker of the
//! container, with injection and hooks; a client that disconnects never cancels a
//! running worker. The context data of every call on a socket comes from its upgrade
//! request: `nameko.<key>` / `nameko-<key>` headers, and the trace id from `X-Trace-Id`
//! or `traceparent` (validated; otherwise each call starts a new trace). Messages
//! larger than [`MAX_MESSAGE_SIZE_KEY`] close that socket (1009).

mod entrypoint;
mod hub;
mod protocol;
mod server;

pub use self::{
    entrypoint::WsRpcEntrypoint,
    hub::{HubError, HubLog, SOCKET_QUEUE_SIZE, WebSocketHub, WebSocketHubProvider},
    server::{DEFAULT_MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE_KEY, WS_PATH, WsServer},
};
