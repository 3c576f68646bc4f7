//! nameko-rs: microservices in the style of Python's Nameko.
pub use nameko_core as core;
