//! The transport-agnostic runtime of nameko-rs.
pub mod config;
