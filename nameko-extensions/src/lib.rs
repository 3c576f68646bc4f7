//! Built-in entrypoints and dependency providers for nameko-rs.
//!
//! Transports (the broker trait, the in-memory broker and RabbitMQ), RPC, events, HTTP,
//! websockets and timers are written here against the public traits of
//! [`nameko_core`], exactly as a third-party extension would be.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`broker`] | the broker trait: the AMQP model every messaging feature is written against |
//! | `amqp` | RabbitMQ (lapin), behind the `amqp` feature: `AmqpBroker`, `AmqpUri` |
//! | [`memory`] | the in-memory broker (`--transport memory`, and tests) |
//! | [`rpc`] | the `rpc` entrypoint, RPC clients and dependencies |
//! | [`events`] | the `event_handler` entrypoint and the event dispatcher |
//! | [`messaging`] | the `consume` entrypoint and the `Publisher` dependency |
//! | [`timer`] | the `timer` entrypoint: interval (tokio time) and cron (feature `cron`) schedules, cluster singletons |
//! | [`context`] | context data as `nameko.*` headers |
//! | [`inbound`] | what every consumer checks before decoding: `MAX_MESSAGE_SIZE`, dropped headers |
//! | `http` | HTTP entrypoints and the runner's web server (axum), behind the `http` feature |
//! | [`transport`] | how extensions find the runner's broker |
//! | `ws` | websocket RPC (`#[ws_rpc]`) and the hub on `GET /ws`, behind the `ws` feature |
//!
//! # Features
//!
//! None is on by default; the `nameko` facade turns on `amqp` and `http`.
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `amqp` | `amqp`: the RabbitMQ transport (lapin), `AmqpBroker`, `AmqpUri` |
//! | `amqp-tls` | `amqps://` and `AMQP_SSL` for it (rustls with ring; the system's roots unless `AMQP_SSL` names a CA) |
//! | `cron` | cron schedules for [`timer`] (tokio-cron-scheduler, croner, chrono-tz) |
//! | `http` | `http`: the HTTP entrypoint and the runner's web server (axum) |
//! | `ws` | `ws`: websocket RPC and the hub (implies `http`) |
//! | `otel` | OpenTelemetry spans for RPC calls, event dispatches and publishes, children of the worker's |

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod broker;
pub mod context;
pub mod events;
#[cfg(feature = "http")]
pub mod http;
pub mod inbound;
pub mod memory;
pub mod messaging;
pub mod rpc;
pub mod timer;
pub mod transport;
#[cfg(feature = "ws")]
pub mod ws;

mod consumer;
mod slot;
