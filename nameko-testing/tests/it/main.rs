//! Integration tests of nameko-testing.

#[cfg(feature = "python")]
mod fixtures;
mod harness;
