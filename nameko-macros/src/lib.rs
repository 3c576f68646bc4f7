//! Procedural macros for nameko-rs.
//!
//! The macros (`#[service]`, `#[derive(Dependencies)]`, `#[rpc_client]` and
//! `#[derive(RemoteError)]`) only ever generate code a person could write by hand
//! against the public traits of `nameko-core`; `examples/manual-service` shows that
//! hand-written form. Use them through the `nameko` facade.
