//! Integration tests of nameko-extensions: one binary, one module per area.

#[cfg(feature = "amqp")]
mod proxy;
mod support;

mod conformance;
mod events;
mod golden;
mod recovery;
mod rpc;
mod timer;
#[cfg(feature = "amqp-tls")]
mod tls;
