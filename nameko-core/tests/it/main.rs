//! Integration tests of nameko-core: one binary, one module per area.

mod support;

mod lifecycle;
mod runner;
