//! Connecting from Nameko's config: `AMQP_URI`, `HEARTBEAT`, `AMQP_SSL` and
//! `LOGIN_METHOD`.

use nameko_core::Config;

use super::{AmqpBroker, AmqpOptions, AmqpUri, LoginMethod, TlsError, TlsOptions, UriError};

/// Nameko's config key for the SASL mechanism.
const LOGIN_METHOD: &str = "LOGIN_METHOD";
use crate::broker::BrokerError;

/// Why [`AmqpBroker::connect_config`] failed. Never holds the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigConnectError {
    /// `AMQP_URI` is not a URI kombu would accept.
    #[error("invalid AMQP_URI: {0}")]
    Uri(#[source] UriError),
    /// `AMQP_SSL` or `LOGIN_METHOD` is invalid, `AMQP_SSL` names a bad file, or asks for
    /// TLS in a build without the `amqp-tls` feature.
    #[error(transparent)]
    Tls(TlsError),
    /// RabbitMQ could not be reached, refused the login or the TLS handshake failed.
    #[error(transparent)]
    Connect(BrokerError),
}

impl AmqpOptions {
    /// Options from Nameko's config: `HEARTBEAT`, `AMQP_SSL` (see
    /// [`TlsOptions::from_config`]) and `LOGIN_METHOD` (`PLAIN`, `AMQPLAIN` or
    /// `EXTERNAL`, in any case; see [`LoginMethod`]), with this connection name.
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
    /// A located [`TlsError`] when `AMQP_SSL` or `LOGIN_METHOD` is invalid.
    pub fn from_config(config: &Config, connection_name: impl Into<String>) -> Result<Self, TlsError> {
        let mut options = Self::new(connection_name).heartbeat(u16::try_from(config.heartbeat()).unwrap_or(u16::MAX));
        options.tls = TlsOptions::from_config(config)?;
        if let Some(value) = config.get(LOGIN_METHOD) {
            options.login_method = match value.as_str().map(str::parse) {
                Some(Ok(method)) => method,
                Some(Err(why)) => return Err(TlsError::invalid_setting(value.location(), LOGIN_METHOD, why)),
                None if value.is_null() => LoginMethod::Plain,
                None => {
                    return Err(TlsError::invalid_setting(
                        value.location(),
                        LOGIN_METHOD,
                        format!("expected PLAIN, AMQPLAIN or EXTERNAL, got {}", value.type_name()),
                    ));
                }
            };
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_method_is_read_in_any_case_and_a_bad_one_is_located() {
        let options = |yaml: &str| AmqpOptions::from_config(&Config::from_yaml_str(yaml).unwrap(), "test");
        assert_eq!(options("{}").unwrap().login_method, LoginMethod::Plain);
        assert_eq!(
            options("LOGIN_METHOD: external\n").unwrap().login_method,
            LoginMethod::External
        );
        assert_eq!(
            options("LOGIN_METHOD: AMQPLAIN\n").unwrap().login_method,
            LoginMethod::AmqPlain
        );
        let err = options("x: 1\nLOGIN_METHOD: KERBEROS\n").unwrap_err().to_string();
        assert!(
            err.contains("2:15") && err.contains("LOGIN_METHOD: unknown login method `KERBEROS`"),
            "{err}"
        );
        let err = options("LOGIN_METHOD: [1]\n").unwrap_err().to_string();
        assert!(
            err.contains("LOGIN_METHOD: expected PLAIN, AMQPLAIN or EXTERNAL"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn external_without_a_client_certificate_is_refused_before_connecting() {
        let uri = AmqpUri::parse("amqps://localhost:1/").unwrap();
        let options = AmqpOptions::new("test").login_method(LoginMethod::External);
        let err = AmqpBroker::connect(&uri, options).await.unwrap_err().to_string();
        assert!(
            err.contains("LOGIN_METHOD EXTERNAL logs in with the TLS client certificate, but there is none"),
            "{err}"
        );
    }
}
