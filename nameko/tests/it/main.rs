//! Integration tests of the `nameko` facade: one binary, one module per area.

mod interop;
mod macros;
mod standalone;
#[cfg(feature = "ws")]
mod ws;
