//! Which message transport `run` uses.

use std::sync::Arc;

use nameko_core::{Config, Readiness, Resources};
use nameko_extensions::{
    amqp::{AmqpBroker, AmqpOptions, AmqpUri, TlsError, TlsOptions, UriError},
    broker::{Broker, BrokerError},
    memory::MemoryBroker,
};

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
/// assert!(matches!(Transport::select(None, &config)?, Transport::Amqp { tls: None, .. }));
/// let memory = Transport::select(Some(TransportKind::Memory), &config)?;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// assert!(memory.resources(&["greeting".to_owned()]).await.is_ok());
/// # });
/// # Ok::<(), nameko_cli::TransportError>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Transport {
    /// RabbitMQ at `uri` (the config's `AMQP_URI`), with the config's `HEARTBEAT` and
    /// `AMQP_SSL`.
    Amqp {
        /// The broker URI, unmasked.
        uri: String,
        /// Heartbeat interval in seconds.
        heartbeat: u16,
        /// TLS options from `AMQP_SSL` (an `amqps://` URI uses TLS without them).
        tls: Option<TlsOptions>,
    },
    /// One in-memory broker shared by every service of the process.
    Memory(MemoryBroker),
}

/// The transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// `AMQP_URI` is not a URI kombu would accept.
    #[error("invalid AMQP_URI {uri}: {error}")]
    InvalidUri {
        /// The URI, its password masked.
        uri: String,
        /// What is wrong.
        #[source]
        error: UriError,
    },
    /// `AMQP_SSL` is invalid, names a file that cannot be read or is not PEM, or asks
    /// for TLS in a build without the `amqp-tls` feature; the message says where.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// RabbitMQ could not be reached or refused the connection. There is no fallback
    /// to the memory transport.
    #[error(
        "cannot connect to RabbitMQ at {uri}: {error} (never falling back to memory: \
         start RabbitMQ, fix AMQP_URI or --broker, or run with --transport memory)"
    )]
    AmqpConnect {
        /// The URI, its password masked.
        uri: String,
        /// Why.
        #[source]
        error: BrokerError,
    },
}

impl Transport {
    /// The transport for `--transport kind` (AMQP when not given) and `config`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Tls`] when AMQP is chosen and `AMQP_SSL` is invalid.
    pub fn select(kind: Option<TransportKind>, config: &Config) -> Result<Self, TransportError> {
        Ok(match kind {
            Some(TransportKind::Memory) => Self::Memory(MemoryBroker::new()),
            Some(TransportKind::Amqp) | None => Self::Amqp {
                uri: config.amqp_uri().to_owned(),
                heartbeat: u16::try_from(config.heartbeat()).unwrap_or(u16::MAX),
                tls: TlsOptions::from_config(config)?,
            },
        })
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
    /// `dyn Broker`. For AMQP this connects to RabbitMQ once, naming the connection
    /// after `services` and the host, and fails fast; `run` uses
    /// [`resources_waiting`](Self::resources_waiting) instead.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidUri`] or [`TransportError::AmqpConnect`], naming the
    /// URI with its password masked.
    pub async fn resources(&self, services: &[String]) -> Result<Resources, TransportError> {
        self.connect(services, None).await
    }

    /// As [`resources`](Self::resources), but for AMQP waits for RabbitMQ: each failed
    /// attempt is logged (password masked) and retried with backoff, with a
    /// `RabbitMQ connection` part of `readiness` not ready meanwhile (and following
    /// the connection afterwards). Never falls back to memory. Drop the future to stop
    /// waiting.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidUri`], or [`TransportError::AmqpConnect`] for what no
    /// retry can mend (TLS without the `amqp-tls` feature).
    pub async fn resources_waiting(
        &self,
        services: &[String],
        readiness: &Readiness,
    ) -> Result<Resources, TransportError> {
        self.connect(services, Some(readiness)).await
    }

    /// The resources: for AMQP, one attempt to connect (`waiting` is `None`) or a wait
    /// for RabbitMQ reported to `waiting`.
    async fn connect(&self, services: &[String], waiting: Option<&Readiness>) -> Result<Resources, TransportError> {
        let broker: Arc<dyn Broker> = match self {
            Self::Amqp { uri, heartbeat, tls } => {
                let (parsed, options) = amqp_options(uri, *heartbeat, tls.as_ref(), services)?;
                let connected = match waiting {
                    Some(readiness) => AmqpBroker::connect_retrying(&parsed, options, Some(readiness)).await,
                    None => AmqpBroker::connect(&parsed, options).await,
                };
                Arc::new(connected.map_err(|error| TransportError::AmqpConnect {
                    uri: shown(&parsed, tls.as_ref()),
                    error,
                })?)
            }
            Self::Memory(broker) => broker.shared(),
        };
        Ok(Resources::new().with::<dyn Broker>(broker))
    }
}

/// The parsed URI and connection options of an AMQP transport, the connection named
/// after `services` and the host.
fn amqp_options(
    uri: &str,
    heartbeat: u16,
    tls: Option<&TlsOptions>,
    services: &[String],
) -> Result<(AmqpUri, AmqpOptions), TransportError> {
    let parsed = AmqpUri::parse(uri).map_err(|error| TransportError::InvalidUri {
        uri: mask_secrets(uri),
        error,
    })?;
    let name = format!("nameko-rs {} on {}", services.join(","), hostname());
    let mut options = AmqpOptions::new(name).heartbeat(heartbeat);
    if let Some(tls) = tls {
        options = options.tls(tls.clone());
    }
    Ok((parsed, options))
}

/// The URI a connection error names: `AMQP_SSL` turns an `amqp://` URI to TLS, as
/// kombu does.
fn shown(parsed: &AmqpUri, tls: Option<&TlsOptions>) -> String {
    match tls {
        Some(_) => parsed.with_tls().to_string(),
        None => parsed.to_string(),
    }
}

pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown host".to_owned())
}
