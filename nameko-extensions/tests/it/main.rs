//! The integration tests of nameko-extensions, one binary.

mod conformance;
