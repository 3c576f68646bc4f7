//! Test helpers for nameko-rs services.
//!
//! - [`Once`] and [`Dummy`]: the test entrypoints of Nameko's
//!   `nameko.testing.services`. `Once` runs a method when the container starts;
//!   `Dummy` never fires by itself, so a test runs the method with
//!   [`ServiceContainer::call`](nameko_core::ServiceContainer::call) — Nameko's
//!   `entrypoint_hook`.
//! - Replacing dependencies (`replace_dependencies`) and restricting entrypoints
//!   (`restrict_entrypoints`) are builder methods of the container:
//!   [`ServiceContainerBuilder::providers`](nameko_core::ServiceContainerBuilder::providers)
//!   and [`only_entrypoints`](nameko_core::ServiceContainerBuilder::only_entrypoints).
//!
//! Stability: this crate follows the `nameko` crate's version; its helpers change
//! only with a minor release.

#[doc(inline)]
pub use nameko_core::entrypoints::{Dummy, Once};
