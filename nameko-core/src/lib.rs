//! The transport-agnostic runtime of nameko-rs: services, dependency providers, the
//! worker lifecycle, containers, the runner and config.
//!
//! Most users depend on the `nameko` facade, which re-exports this crate as
//! `nameko::core` and adds the macros, transports and CLI. Extension authors (a new
//! entrypoint, a new dependency provider) need only this crate's traits:
//! [`Entrypoint`] and [`DependencyProvider`].
//!
//! # The worker lifecycle
//!
//! Every time an entrypoint fires, its container builds a fresh *worker* — the
//! service struct with every field provided — in a task the container owns, then runs:
//! `get_dependency` for every field → `worker_setup` → the handler →
//! `worker_result(outcome)` → `worker_teardown`. Result and teardown always run. At most
//! `max_workers` workers run at once; a panic becomes an error reply and the container
//! keeps serving.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `registry` | yes | [`registry`]: services found by name with `inventory` |
//! | `otel` | no | `otel`: OpenTelemetry spans for workers and what they send, linked by W3C trace context |

pub mod config;
mod container;
mod context;
mod dependency;
pub mod deps;
pub mod describe;
mod entrypoint;
pub mod entrypoints;
mod error;
mod extension;
pub mod ids;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
mod readiness;
pub mod redact;
#[cfg(feature = "registry")]
pub mod registry;
mod runner;
mod service;
mod setup;
mod util;

pub use self::{
    config::{Config, ConfigError},
    container::{
        CallError, ContainerError, ServiceContainer, ServiceContainerBuilder,
        worker::{WorkerOutcome, WorkerReport},
    },
    context::{
        CALL_ID_STACK_KEY, ContextData, EntrypointInfo, Extensions, TRACE_ID_KEY, WorkerContext, is_valid_trace_id,
    },
    dependency::{
        Dependencies, Dependency, DependencyProvider, Outcome, Provider, ProviderHandle, ProviderSlot, Providers,
        WorkerBuilder,
    },
    entrypoint::{Binding, Entrypoint, Extension, WorkerHandle, WorkerSlot},
    error::{
        BoxError, DependencyError, HandlerError, HandlerResult, IntoHandlerError, RemoteError, SetupError, SpawnError,
        WorkerError,
    },
    readiness::{PartStatus, Readiness, ReadinessPart, ReadinessReport},
    runner::{DEFAULT_STOP_TIMEOUT, DRAIN_ANNOUNCE_EVERY, RunningServices, ServiceRunner, Shutdown},
    service::{Entrypoints, Lifecycle, Service},
    setup::{Resources, SetupContext, Shared},
};

/// What generated code reaches the runtime through. Not public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "registry")]
    pub use inventory;
}
