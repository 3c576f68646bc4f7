//! The nameko-rs guide. Each chapter is a Markdown file under `docs/guide/`, included
//! here so that every code block in it compiles and runs as a doctest.

#[doc = include_str!("../guide/configuration.md")]
pub mod configuration {}

#[doc = include_str!("../guide/rpc.md")]
pub mod rpc {}

#[doc = include_str!("../guide/events.md")]
pub mod events {}
