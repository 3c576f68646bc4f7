//! Built-in entrypoints and dependency providers for nameko-rs.
//!
//! Transports (the broker trait, the in-memory broker and RabbitMQ), RPC, events, HTTP,
//! websockets and timers are written here against the public traits of
//! [`nameko_core`], exactly as a third-party extension would be.

pub mod broker;
pub mod memory;
