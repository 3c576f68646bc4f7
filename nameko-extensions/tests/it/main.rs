//! Integration tests of nameko-extensions: one binary, one module per area.

mod support;

mod events;
mod rpc;
