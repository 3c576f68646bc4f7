//! Integration tests of nameko-testing.

mod harness;
