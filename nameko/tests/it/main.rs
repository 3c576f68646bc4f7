//! Integration tests of the `nameko` facade: one binary, one module per area.

mod concurrency;
mod describe;
mod hooks;
mod http;
mod interop;
mod macros;
mod messaging;
#[cfg(feature = "otel")]
mod otel;
mod quorum;
mod retry;
mod standalone;
mod timer;
#[cfg(feature = "ws")]
mod ws;
