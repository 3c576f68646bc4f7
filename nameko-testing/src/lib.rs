//! Test helpers for nameko-rs services, after Nameko's `nameko.testing`.
//!
//! - Unit tests: build the worker with the generated `worker_factory()` (from
//!   `#[derive(nameko::Dependencies)]`) and call the method. Framework fields default
//!   to fakes: an unset `EventDispatcher` records what it dispatches
//!   ([`EventDispatcher::recording`](nameko_extensions::events::EventDispatcher::recording)),
//!   and an unset `Publisher` what it publishes
//!   ([`Publisher::recording`](nameko_extensions::messaging::Publisher::recording)).
//! - Container tests: [`ServiceHarness`] runs a real container on an in-memory broker.
//!   It covers Nameko's `entrypoint_hook` ([`ServiceHarness::call`], or
//!   [`ServiceHarness::rpc`] through the broker as a caller would),
//!   `entrypoint_waiter` ([`ServiceHarness::waiter`]), `replace_dependencies`
//!   ([`ServiceHarnessBuilder::providers`]) and `restrict_entrypoints`
//!   ([`ServiceHarnessBuilder::only_entrypoints`]).
//! - Websockets (feature `ws`): `ServiceHarness::ws_call` sends a request frame to a
//!   `#[ws_rpc]` method without a socket; `ServiceHarness::ws_server` gives the
//!   harness's websocket server (its router, hub, and recorded fake sockets);
//!   `WebSocketHub::recording` is the hub for worker-factory tests.
//! - [`Once`] and [`Dummy`]: the test entrypoints of `nameko.testing.services`.
//! - RabbitMQ tests (feature `rabbitmq`): [`RabbitMq`] reads `NAMEKO_TEST_AMQP_URI`,
//!   skips with a printed reason when it is unset or unreachable (fails under
//!   `CI=true`), gives unique names and a private RPC exchange, and deletes what the
//!   test declared, also when the test fails.
//! - Interop tests (feature `python`): [`PythonNameko`] runs Python Nameko services
//!   (`nameko run`, killed on drop, output printed when the test fails) and scripts
//!   with the interpreter at `NAMEKO_TEST_PYTHON`, against a [`RabbitMq`].
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `http` | no | `ServiceHarness::http` (requests through the router, no socket) and `http::exchange` (a minimal HTTP/1.1 client for socket tests) |
//! | `ws` | no | `ServiceHarness::ws_call`, `ServiceHarness::ws_server` and a recording hub (implies `http`) |
//! | `rabbitmq` | no | `RabbitMq`: a test's share of a real broker (`NAMEKO_TEST_AMQP_URI`), unique names, clean-up |
//! | `python` | no | `PythonNameko`: Python Nameko services and scripts against it (`NAMEKO_TEST_PYTHON`; implies `rabbitmq`) |
//!
//! Stability: this crate follows the `nameko` crate's version; its helpers change only
//! with a minor release.

mod harness;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "python")]
mod python;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;

#[doc(inline)]
pub use nameko_core::entrypoints::{Dummy, Once};
#[doc(inline)]
pub use nameko_extensions::events::{DispatchLog, EventDispatcher};
#[doc(inline)]
pub use nameko_extensions::messaging::{PublishLog, Publisher};
#[cfg(feature = "ws")]
#[doc(inline)]
pub use nameko_extensions::ws::{HubLog, WebSocketHub};

pub use self::harness::{EntrypointWaiter, FireTimerError, ServiceHarness, ServiceHarnessBuilder, WaitError};
#[cfg(feature = "python")]
pub use self::python::{CONFIG_VAR, PYTHON_VAR, PythonNameko, PythonScript, PythonService, PythonServiceBuilder};
#[cfg(feature = "rabbitmq")]
pub use self::rabbitmq::{AMQP_URI_VAR, FixtureError, QueueCounts, RabbitMq, test_amqp_uri};
