//! The nameko-rs guide. Each chapter is a Markdown file under `docs/guide/`, included
//! here so that every code block in it compiles and runs as a doctest.
//!
//! 1. [Anatomy of a service](anatomy)
//! 2. [Dependencies and providers](dependencies)
//! 3. [RPC](rpc)
//! 4. [Events](events)
//! 5. [HTTP](http)
//! 6. [Testing](testing)
//! 7. [Configuration](configuration)
//! 8. [Joining a Python Nameko cluster](python_cluster)
//! 9. [Timers](timers)
//! 10. [WebSockets](websockets)
//! 11. [The command line](cli)
//! 12. [Writing extensions](extensions)
//! 13. [Messaging: Publisher and consume](messaging)

#[doc = include_str!("../guide/anatomy.md")]
///
/// ## The whole example
///
/// This is `examples/greeting/src/lib.rs`, compiled here as it is:
///
#[doc = concat!("```rust\n", include_str!("../../examples/greeting/src/lib.rs"), "\n# fn main() {}\n```")]
pub mod anatomy {}

#[doc = include_str!("../guide/dependencies.md")]
pub mod dependencies {}

#[doc = include_str!("../guide/rpc.md")]
pub mod rpc {}

#[doc = include_str!("../guide/events.md")]
pub mod events {}

#[doc = include_str!("../guide/http.md")]
pub mod http {}

#[doc = include_str!("../guide/testing.md")]
pub mod testing {}

#[doc = include_str!("../guide/configuration.md")]
pub mod configuration {}

#[doc = include_str!("../guide/timers.md")]
pub mod timers {}

#[doc = include_str!("../guide/python-cluster.md")]
///
/// ### `python/greet.py`
///
#[doc = concat!("```python\n", include_str!("../../examples/greeting/python/greet.py"), "```")]
///
/// ### `python/listener.py`
///
#[doc = concat!("```python\n", include_str!("../../examples/greeting/python/listener.py"), "```")]
pub mod python_cluster {}

#[doc = include_str!("../guide/messaging.md")]
pub mod messaging {}

#[doc = include_str!("../guide/websockets.md")]
pub mod websockets {}

#[doc = include_str!("../guide/cli.md")]
pub mod cli {}

#[doc = include_str!("../guide/operations.md")]
pub mod operations {}

#[doc = include_str!("../guide/extensions.md")]
///
/// ## The whole example
///
/// This is `examples/postgres-session/src/lib.rs`, compiled here as it is (its tests,
/// `examples/postgres-session/tests/it.rs`, run it against PostgreSQL):
///
#[doc = concat!("```rust\n", include_str!("../../examples/postgres-session/src/lib.rs"), "\n# fn main() {}\n```")]
pub mod extensions {}
