//! Integration tests of nameko-extensions: one binary, one module per area.

#[cfg(feature = "amqp")]
mod proxy;
mod support;

mod conformance;
mod delivery;
mod events;
mod golden;
mod hostile;
mod messaging;
mod recovery;
mod retry;
mod rpc;
mod timer;
#[cfg(feature = "amqp-tls")]
mod tls;
