//! The integration tests of nameko-cli: one binary, with test services registered by
//! hand (`support`).

mod cli;
mod instances;
mod logging;
mod support;
mod verbs;
