//! Which message transport `run` uses.

use nameko_core::{Config, Resources};
use nameko_extensions::{broker::Broker, memory::MemoryBroker};

use crate::{args::TransportKind, mask::mask_secrets};

/// The transport `run` starts the services with.
///
/// AMQP is the default; `--broker` or `AMQP_URI` only say where it connects.
/// `--transport memory` is always explicit: there is never an automatic fallback.
///
/// ```
/// use nameko_cli::{Transport, TransportKind};
/// use nameko_core::Config;
///
/// let config = Config::default();
/// assert!(matches!(Transport::select(None, &config), Transport::Amqp { .. }));
/// let memory = Transport::select(Some(TransportKind::Memory), &config);
/// assert!(memory.resources().is_ok());
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Transport {
    /// RabbitMQ at `uri` (the config's `AMQP_URI`).
    Amqp {
        /// The broker URI, unmasked.
        uri: String,
    },
    /// One in-memory broker shared by every service of the process.
    Memory(MemoryBroker),
}

/// The transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// AMQP was selected, but this build has no AMQP transport.
    #[error(
        "the AMQP transport is not built into this version of nameko-rs yet (AMQP_URI is {uri}); \
         run with --transport memory"
    )]
    AmqpNotBuilt {
        /// The broker URI, its password masked.
        uri: String,
    },
}

impl Transport {
    /// The transport for `--transport kind` (AMQP when not given) and `config`.
    #[must_use]
    pub fn select(kind: Option<TransportKind>, config: &Config) -> Self {
        match kind {
            Some(TransportKind::Memory) => Self::Memory(MemoryBroker::new()),
            Some(TransportKind::Amqp) | None => Self::Amqp {
                uri: config.amqp_uri().to_owned(),
            },
        }
    }

    /// A short name for logs: `amqp` or `memory`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Amqp { .. } => "amqp",
            Self::Memory(_) => "memory",
        }
    }

    /// The runner resources the services find the transport by: the broker as
    /// `dyn Broker`.
    ///
    /// # Errors
    ///
    /// [`TransportError::AmqpNotBuilt`] for AMQP, until the AMQP transport lands.
    pub fn resources(&self) -> Result<Resources, TransportError> {
        match self {
            Self::Amqp { uri } => Err(TransportError::AmqpNotBuilt { uri: mask_secrets(uri) }),
            Self::Memory(broker) => Ok(Resources::new().with::<dyn Broker>(broker.shared())),
        }
    }
}
