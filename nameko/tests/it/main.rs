//! Integration tests of the `nameko` facade: one binary, one module per area.

mod macros;
mod standalone;
