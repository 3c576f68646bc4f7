//! Connecting from Nameko's config: `AMQP_URI`, `HEARTBEAT` and `AMQP_SSL`.

use nameko_core::Config;

use super::{AmqpBroker, AmqpOptions, AmqpUri, TlsError, TlsOptions, UriError};
use crate::broker::BrokerError;

/// Why [`AmqpBroker::connect_config`] failed. Never holds the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigConnectError {
    /// `AMQP_URI` is not a URI kombu would accept.
    #[error("invalid AMQP_URI: {0}")]
    Uri(#[source] UriError),
    /// `AMQP_SSL` is invalid, names a bad file, or asks for TLS in a build without the
    /// `amqp-tls` feature.
    #[error(transparent)]
    Tls(TlsError),
    /// RabbitMQ could not be reached, refused the login or the TLS handshake failed.
    #[error(transparent)]
    Connect(BrokerError),
}

impl AmqpOptions {
    /// Options from Nameko's config: `HEARTBEAT` and `AMQP_SSL` (see
    /// [`TlsOptions::from_config`]), with this connection name.
    ///
    /// ```
    /// use nameko_core::Config;
    /// use nameko_extensions::amqp::AmqpOptions;
    ///
    /// let config = Config::from_yaml_str("HEARTBEAT: 15\n").unwrap();
    /// let options = AmqpOptions::from_config(&config, "billing on host-1")?;
    /// assert_eq!((options.heartbeat, options.tls), (15, None));
    /// # Ok::<(), nameko_extensions::amqp::TlsError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A located [`TlsError`] when `AMQP_SSL` is invalid.
    pub fn from_config(config: &Config, connection_name: impl Into<String>) -> Result<Self, TlsError> {
        let mut options = Self::new(connection_name).heartbeat(u16::try_from(config.heartbeat()).unwrap_or(u16::MAX));
        options.tls = TlsOptions::from_config(config)?;
        Ok(options)
    }
}

impl AmqpBroker {
    /// Connects as Nameko's config says: `AMQP_URI`, `HEARTBEAT` and `AMQP_SSL` — what a
    /// standalone client (e.g. for [`ClusterRpc::connect`](crate::rpc::ClusterRpc::connect))
    /// needs.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use nameko_core::Config;
    /// use nameko_extensions::{amqp::AmqpBroker, rpc::ClusterRpc};
    ///
    /// let config = Config::loader().file("config.yaml").load()?;
    /// let broker = AmqpBroker::connect_config(&config, "billing-report").await?;
    /// let rpc = ClusterRpc::connect(Arc::new(broker), &config).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigConnectError`]: a bad `AMQP_URI` or `AMQP_SSL`, or the connection failed.
    pub async fn connect_config(
        config: &Config,
        connection_name: impl Into<String>,
    ) -> Result<Self, ConfigConnectError> {
        let uri = AmqpUri::parse(config.amqp_uri()).map_err(ConfigConnectError::Uri)?;
        let options = AmqpOptions::from_config(config, connection_name).map_err(ConfigConnectError::Tls)?;
        Self::connect(&uri, options).await.map_err(ConfigConnectError::Connect)
    }
}
