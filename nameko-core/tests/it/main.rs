//! Integration tests of nameko-core: one binary, one module per area.

mod support;

mod config;
mod lifecycle;
mod limits;
mod runner;
