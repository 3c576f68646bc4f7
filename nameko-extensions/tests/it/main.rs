//! Integration tests of nameko-extensions: one binary, one module per area.

mod support;

mod conformance;
mod events;
mod golden;
mod rpc;
