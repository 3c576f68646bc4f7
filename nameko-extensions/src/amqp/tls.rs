//! `AMQP_SSL`: TLS for the RabbitMQ connection, read as kombu reads it.
//!
//! Nameko passes `AMQP_SSL` to kombu as `Connection(ssl=...)`: `true`, or a mapping of
//! `ssl.wrap_socket` options. Here it becomes [`TlsOptions`]; see
//! [`TlsOptions::from_config`] for the keys. As with kombu, `AMQP_SSL` turns TLS on for an
//! `amqp://` URI too (the port then defaults to 5671), and an `amqps://` URI uses TLS
//! whatever `AMQP_SSL` says.
//!
//! **Departure from py-amqp:** the server's certificate is verified by default
//! (`CERT_REQUIRED`, against the system's roots or `ca_certs`, with its host name checked
//! against the URI's host or `server_hostname`); py-amqp 2.x does not verify unless
//! `cert_reqs` asks. `cert_reqs: CERT_NONE` turns verification off, with a warning
//! logged at every connection.
//!
//! TLS needs the `amqp-tls` feature (rustls with ring); without it, asking for TLS is a
//! [`TlsErrorKind::FeatureDisabled`] error naming the feature.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use nameko_core::config::{Config, ConfigValue, Location};

use crate::broker::BrokerError;

use super::AmqpUri;

/// The config key Nameko reads TLS options from.
pub const AMQP_SSL: &str = "AMQP_SSL";

/// Whether the server's certificate is verified (`cert_reqs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verify {
    /// `CERT_REQUIRED` (also `CERT_OPTIONAL`, which means the same for a client): the
    /// certificate must chain to a trusted root and name the host. The default.
    #[default]
    Required,
    /// `CERT_NONE`: any certificate is accepted. A warning is logged at every connection.
    None,
}

/// What kind of [`TlsError`] it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsErrorKind {
    /// TLS was asked for, but this build lacks the `amqp-tls` feature.
    FeatureDisabled,
    /// A value has the wrong type or is not allowed (`cert_reqs: 7`).
    InvalidValue,
    /// A key `AMQP_SSL` does not know.
    UnknownKey,
    /// An `ssl.wrap_socket` option nameko-rs cannot honour (`ciphers`, `ssl_version`).
    Unsupported,
    /// A certificate or key file cannot be read.
    File,
    /// A file is not the PEM it should be, or the key does not match the certificate.
    Pem,
}

/// Why TLS options were refused. Displays as `location: AMQP_SSL.key: what was wrong`,
/// leaving out the parts that do not apply, e.g.
/// `config.yaml:4:13: AMQP_SSL.ca_certs: cannot read /etc/ca.pem: No such file or directory (os error 2)`.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct TlsError {
    kind: TlsErrorKind,
    location: Option<Location>,
    key: String,
    message: String,
}

impl TlsError {
    fn new(kind: TlsErrorKind, key: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            location: None,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn at(mut self, location: &Location, prefix: &str) -> Self {
        if self.location.is_none() && !location.is_default() {
            self.location = Some(location.clone());
        }
        self.key = match (prefix, self.key.is_empty()) {
            (_, true) => prefix.to_owned(),
            ("", false) => self.key,
            (_, false) => format!("{prefix}.{}", self.key),
        };
        self
    }

    /// A connection setting beside `AMQP_SSL` (`LOGIN_METHOD`) with a bad value.
    pub(crate) fn invalid_setting(location: &Location, key: &str, message: impl Into<String>) -> Self {
        Self::new(TlsErrorKind::InvalidValue, "", message).at(location, key)
    }

    fn feature_disabled(what: &str) -> Self {
        Self::new(
            TlsErrorKind::FeatureDisabled,
            "",
            format!(
                "{what} asks for TLS, but nameko-rs was built without TLS support: enable the \
                 `amqp-tls` feature (`nameko/amqp-tls` or `nameko-extensions/amqp-tls`)"
            ),
        )
    }

    /// What kind of error it is.
    pub fn kind(&self) -> TlsErrorKind {
        self.kind
    }

    /// Where the offending value was set, when it came from a config file or override.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// The key path, e.g. `AMQP_SSL.cert_reqs` (empty when no key is involved).
    pub fn key_path(&self) -> &str {
        &self.key
    }

    /// What was wrong, without the location and key path.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(location) = &self.location {
            out.push_str(&format!("{location}: "));
        }
        if !self.key.is_empty() {
            out.push_str(&format!("{}: ", self.key));
        }
        out.push_str(&self.message);
        out
    }
}

/// TLS options for the RabbitMQ connection: Nameko's `AMQP_SSL`.
///
/// [`TlsOptions::new`] is `AMQP_SSL: true`: the system's root certificates, the server's
/// certificate verified. Files are read and checked when they are set, so a bad path or
/// PEM is reported before any connection is tried.
///
/// ```
/// use nameko_core::Config;
/// use nameko_extensions::amqp::{TlsOptions, Verify};
///
/// // No AMQP_SSL (or `false`): no TLS options; `amqps://` still connects with TLS.
/// assert!(TlsOptions::from_config(&Config::default())?.is_none());
/// # #[cfg(feature = "amqp-tls")] {
/// let config = Config::from_yaml_str("AMQP_SSL:\n  cert_reqs: CERT_NONE\n  server_hostname: rabbit.internal\n").unwrap();
/// let tls = TlsOptions::from_config(&config)?.expect("AMQP_SSL is set");
/// assert_eq!(tls.verification(), Verify::None);
/// assert_eq!(tls.server_hostname_override(), Some("rabbit.internal"));
///
/// let config = Config::from_yaml_str("AMQP_SSL:\n  ca_cert: /etc/ca.pem\n").unwrap();
/// let err = TlsOptions::from_config(&config).unwrap_err();
/// assert!(err.to_string().starts_with("<string>:2:12: AMQP_SSL.ca_cert: unknown key"), "{err}");
/// # }
/// # Ok::<(), nameko_extensions::amqp::TlsError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    verify: Verify,
    ca_certs: Option<(PathBuf, Vec<Vec<u8>>)>,
    identity: Option<Identity>,
    server_hostname: Option<String>,
}

/// A client certificate chain (DER) and its private key (the PEM text, checked).
#[derive(Clone, PartialEq, Eq)]
struct Identity {
    certfile: PathBuf,
    keyfile: PathBuf,
    chain: Vec<Vec<u8>>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("verify", &self.verify)
            .field("ca_certs", &self.ca_certs.as_ref().map(|(path, _)| path))
            .field("certfile", &self.identity.as_ref().map(|i| &i.certfile))
            .field("keyfile", &self.identity.as_ref().map(|i| &i.keyfile))
            .field("server_hostname", &self.server_hostname)
            .finish()
    }
}

impl TlsOptions {
    /// TLS with the system's root certificates and the server's certificate verified
    /// (`AMQP_SSL: true`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts only the CA certificates in the PEM file at `path` (`ca_certs`), instead of
    /// the system's roots.
    ///
    /// # Errors
    ///
    /// [`TlsErrorKind::File`] when it cannot be read, [`TlsErrorKind::Pem`] when it holds
    /// no certificate or a certificate rustls refuses as a root,
    /// [`TlsErrorKind::FeatureDisabled`] without the `amqp-tls` feature.
    pub fn ca_certs(mut self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let certs = backend::ca_certs(&read("ca_certs", path)?).map_err(|e| e.for_file(path))?;
        self.ca_certs = Some((path.to_owned(), certs));
        Ok(self)
    }

    /// Presents a client certificate: the PEM chain in `certfile` (the client's own
    /// certificate first) and the PEM private key in `keyfile` (`certfile` and `keyfile`;
    /// both may be one file). Encrypted keys are not supported.
    ///
    /// # Errors
    ///
    /// [`TlsErrorKind::File`] when a file cannot be read, [`TlsErrorKind::Pem`] when a file
    /// holds no certificate or key, or the key does not belong to the certificate,
    /// [`TlsErrorKind::FeatureDisabled`] without the `amqp-tls` feature.
    pub fn client_cert(mut self, certfile: impl AsRef<Path>, keyfile: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (certfile, keyfile) = (certfile.as_ref(), keyfile.as_ref());
        let cert_pem = read("certfile", certfile)?;
        let key_pem = if keyfile == certfile {
            cert_pem.clone()
        } else {
            read("keyfile", keyfile)?
        };
        let chain = backend::identity(&cert_pem, &key_pem, certfile, keyfile)?;
        self.identity = Some(Identity {
            certfile: certfile.to_owned(),
            keyfile: keyfile.to_owned(),
            chain,
            key_pem,
        });
        Ok(self)
    }

    /// Whether the server's certificate is verified (`cert_reqs`).
    #[must_use]
    pub fn verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }

    /// The name the server's certificate must carry, and that is sent as SNI, instead of
    /// the URI's host (`server_hostname`): a DNS name or an IP address.
    ///
    /// # Errors
    ///
    /// [`TlsErrorKind::InvalidValue`] when it is neither.
    pub fn server_hostname(mut self, name: impl Into<String>) -> Result<Self, TlsError> {
        let name = name.into();
        backend::check_server_name(&name)?;
        self.server_hostname = Some(name);
        Ok(self)
    }

    /// The verification mode.
    pub fn verification(&self) -> Verify {
        self.verify
    }

    /// The `ca_certs` file, when set.
    pub fn ca_certs_path(&self) -> Option<&Path> {
        self.ca_certs.as_ref().map(|(path, _)| path.as_path())
    }

    /// The `certfile` and `keyfile`, when a client certificate is set.
    pub fn client_cert_paths(&self) -> Option<(&Path, &Path)> {
        self.identity
            .as_ref()
            .map(|i| (i.certfile.as_path(), i.keyfile.as_path()))
    }

    /// The `server_hostname` override, when set.
    pub fn server_hostname_override(&self) -> Option<&str> {
        self.server_hostname.as_deref()
    }

    /// Reads Nameko's `AMQP_SSL` from `config`: `None` when it is missing, null or
    /// `false`; [`TlsOptions::new`] for `true`; or a mapping of `ssl.wrap_socket`-style
    /// options:
    ///
    /// | key | value |
    /// | --- | --- |
    /// | `ca_certs` | PEM file of the CA certificates to trust instead of the system's |
    /// | `certfile` | PEM file of the client certificate (chain) |
    /// | `keyfile` | PEM file of its private key (default: `certfile`) |
    /// | `cert_reqs` | `CERT_REQUIRED` (2, default), `CERT_OPTIONAL` (1, the same for a client) or `CERT_NONE` (0) |
    /// | `server_hostname` | the name to check the certificate against and send as SNI (null: the URI's host) |
    /// | `do_handshake_on_connect`, `suppress_ragged_eofs` | booleans, accepted and without effect |
    /// | `server_side` | `false` only |
    ///
    /// `ciphers` and `ssl_version` are refused (rustls negotiates TLS 1.2 or 1.3 with
    /// its own cipher suites), as is any other key.
    ///
    /// # Errors
    ///
    /// A [`TlsError`] naming where the value was set and the key path, e.g.
    /// `config.yaml:3:14: AMQP_SSL.cert_reqs: expected CERT_NONE, CERT_OPTIONAL or
    /// CERT_REQUIRED (or 0, 1, 2), got the string "maybe"`; files are read and checked as
    /// by [`TlsOptions::ca_certs`] and [`TlsOptions::client_cert`].
    pub fn from_config(config: &Config) -> Result<Option<Self>, TlsError> {
        match config.get(AMQP_SSL) {
            None => Ok(None),
            Some(value) => Self::from_value(value).map_err(|e| e.at(value.location(), AMQP_SSL)),
        }
    }

    /// Reads an `AMQP_SSL` value; errors have key paths relative to it.
    fn from_value(value: &ConfigValue) -> Result<Option<Self>, TlsError> {
        if value.is_null() || value.as_bool() == Some(false) {
            return Ok(None);
        }
        if value.as_bool() == Some(true) {
            if cfg!(not(feature = "amqp-tls")) {
                return Err(TlsError::feature_disabled("`AMQP_SSL: true`"));
            }
            return Ok(Some(Self::new()));
        }
        if !value.is_map() {
            return Err(TlsError::new(
                TlsErrorKind::InvalidValue,
                "",
                format!(
                    "expected true, false or a mapping of ssl options (ca_certs, certfile, keyfile, \
                     cert_reqs, server_hostname), got {}",
                    value.type_name()
                ),
            ));
        }
        if cfg!(not(feature = "amqp-tls")) {
            return Err(TlsError::feature_disabled("`AMQP_SSL`"));
        }
        let mut options = Self::new();
        let (mut certfile, mut keyfile) = (None, None);
        for (key, item) in value.entries() {
            let located = |e: TlsError| e.at(item.location(), "");
            match key {
                "ca_certs" => {
                    if let Some(path) = path_value(key, item).map_err(located)? {
                        options = options.ca_certs(path).map_err(|e| located(e.keyed(key)))?;
                    }
                }
                "certfile" => certfile = path_value(key, item).map_err(located)?.map(|p| (p, item)),
                "keyfile" => keyfile = path_value(key, item).map_err(located)?.map(|p| (p, item)),
                "cert_reqs" => options.verify = cert_reqs(item).map_err(|e| located(e.keyed(key)))?,
                "server_hostname" => {
                    if !item.is_null() {
                        let name = item.as_str().ok_or_else(|| {
                            located(TlsError::new(
                                TlsErrorKind::InvalidValue,
                                key,
                                format!("expected a host name, got {}", item.type_name()),
                            ))
                        })?;
                        options = options.server_hostname(name).map_err(|e| located(e.keyed(key)))?;
                    }
                }
                "do_handshake_on_connect" | "suppress_ragged_eofs" => {
                    if !item.is_null() && item.as_bool().is_none() {
                        return Err(located(TlsError::new(
                            TlsErrorKind::InvalidValue,
                            key,
                            format!("expected true or false, got {}", item.type_name()),
                        )));
                    }
                }
                "server_side" => {
                    if !(item.is_null() || item.as_bool() == Some(false)) {
                        return Err(located(TlsError::new(
                            TlsErrorKind::Unsupported,
                            key,
                            "a RabbitMQ client is never the server side of TLS: remove it or set false",
                        )));
                    }
                }
                "ciphers" | "ssl_version" => {
                    if !item.is_null() {
                        return Err(located(TlsError::new(
                            TlsErrorKind::Unsupported,
                            key,
                            format!(
                                "not supported: nameko-rs (rustls) negotiates TLS 1.2 or 1.3 with its own \
                                 cipher suites; remove `{key}`"
                            ),
                        )));
                    }
                }
                other => {
                    return Err(located(TlsError::new(
                        TlsErrorKind::UnknownKey,
                        other,
                        "unknown key; AMQP_SSL takes ca_certs, certfile, keyfile, cert_reqs, \
                         server_hostname, do_handshake_on_connect, suppress_ragged_eofs, server_side",
                    )));
                }
            }
        }
        match (certfile, keyfile) {
            (Some((certfile, cert_item)), keyfile) => {
                let (keyfile, key_item) = keyfile.unwrap_or((certfile.clone(), cert_item));
                options = options.client_cert(&certfile, &keyfile).map_err(|e| {
                    let item = if e.key == "keyfile" { key_item } else { cert_item };
                    e.at(item.location(), "")
                })?;
            }
            (None, Some((_, key_item))) => {
                return Err(TlsError::new(
                    TlsErrorKind::InvalidValue,
                    "keyfile",
                    "a keyfile needs a certfile (the client certificate it belongs to)",
                )
                .at(key_item.location(), ""));
            }
            (None, None) => {}
        }
        Ok(Some(options))
    }
}

impl TlsError {
    /// Sets the key when the error has none yet.
    fn keyed(mut self, key: &str) -> Self {
        if self.key.is_empty() {
            key.clone_into(&mut self.key);
        }
        self
    }

    /// Names the file a PEM error is about.
    fn for_file(mut self, path: &Path) -> Self {
        self.message = format!("{}: {}", path.display(), self.message);
        self
    }
}

fn path_value(key: &str, item: &ConfigValue) -> Result<Option<PathBuf>, TlsError> {
    if item.is_null() {
        return Ok(None);
    }
    match item.as_str() {
        Some("") => Err(TlsError::new(
            TlsErrorKind::InvalidValue,
            key,
            "expected a file path, got an empty string",
        )),
        Some(path) => Ok(Some(PathBuf::from(path))),
        None => Err(TlsError::new(
            TlsErrorKind::InvalidValue,
            key,
            format!("expected a file path, got {}", item.type_name()),
        )),
    }
}

fn cert_reqs(item: &ConfigValue) -> Result<Verify, TlsError> {
    if item.is_null() {
        return Ok(Verify::Required);
    }
    let by_name = item.as_str().map(|name| {
        let name = name.trim();
        let name = name.strip_prefix("ssl.").unwrap_or(name);
        name.to_ascii_uppercase()
    });
    match (item.as_i64(), by_name.as_deref()) {
        (Some(0), _) | (_, Some("CERT_NONE")) => Ok(Verify::None),
        (Some(1 | 2), _) | (_, Some("CERT_OPTIONAL" | "CERT_REQUIRED")) => Ok(Verify::Required),
        _ => Err(TlsError::new(
            TlsErrorKind::InvalidValue,
            "",
            format!(
                "expected CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED (or 0, 1, 2), got {}",
                describe(item)
            ),
        )),
    }
}

fn describe(item: &ConfigValue) -> String {
    match (item.as_str(), item.as_i64()) {
        (Some(text), _) => format!("the string {text:?}"),
        (_, Some(number)) => format!("the integer {number}"),
        _ => item.type_name().to_owned(),
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    if cfg!(not(feature = "amqp-tls")) {
        return Err(TlsError::feature_disabled(&format!("`{key}`")));
    }
    std::fs::read(path)
        .map_err(|e| TlsError::new(TlsErrorKind::File, key, format!("cannot read {}: {e}", path.display())))
}

/// The URI and TLS options a connection uses: `amqps://` or `tls` mean TLS, and `tls` with
/// an `amqp://` URI switches it to TLS as kombu does (port 5671 unless given).
fn effective(uri: &AmqpUri, tls: Option<&TlsOptions>) -> (AmqpUri, Option<TlsOptions>) {
    match tls {
        Some(tls) => (uri.with_tls(), Some(tls.clone())),
        None if uri.is_tls() => (uri.clone(), Some(TlsOptions::new())),
        None => (uri.clone(), None),
    }
}

/// What each connection attempt (the first, and every reconnection) needs for TLS: the
/// connector and the name the server's certificate must carry.
#[cfg(feature = "amqp-tls")]
#[derive(Clone)]
pub(crate) struct Secure {
    pub(crate) connector: lapin::tcp::RustlsConnector,
    pub(crate) server_name: String,
}

/// Without the `amqp-tls` feature there is no TLS: [`prepare`] refuses it.
#[cfg(not(feature = "amqp-tls"))]
#[derive(Clone)]
pub(crate) enum Secure {}

/// The URI a connection uses (`amqps://` when TLS is on) and, for TLS, what its attempts
/// need: TLS when the URI is `amqps://` or `tls` is given.
pub(crate) fn prepare(uri: &AmqpUri, tls: Option<&TlsOptions>) -> Result<(AmqpUri, Option<Secure>), BrokerError> {
    let (uri, tls) = effective(uri, tls);
    let Some(tls) = tls else {
        return Ok((uri, None));
    };
    match backend::secure(&uri, &tls) {
        Ok(secure) => Ok((uri, Some(secure))),
        Err(error) => Err(error),
    }
}

#[cfg(feature = "amqp-tls")]
mod backend {
    //! rustls (ring): PEM parsing, the client configuration and the handshake.

    use std::{path::Path, sync::Arc};

    use lapin::tcp::{RustlsConnector, RustlsConnectorConfig};
    use rustls::{
        ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, ring, verify_tls12_signature, verify_tls13_signature},
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    };

    use super::{AmqpUri, TlsError, TlsErrorKind, TlsOptions, Verify};
    use crate::broker::BrokerError;

    fn pem_error(key: &str, message: impl Into<String>) -> TlsError {
        TlsError::new(TlsErrorKind::Pem, key, message)
    }

    fn certificates(key: &str, pem: &[u8]) -> Result<Vec<Vec<u8>>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .map(|cert| cert.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(key, format!("not a valid PEM file: {e}")))?;
        if certs.is_empty() {
            return Err(pem_error(key, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        Ok(certs)
    }

    pub(super) fn ca_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, TlsError> {
        let certs = certificates("ca_certs", pem)?;
        roots(&certs).map_err(|e| pem_error("ca_certs", e))?;
        Ok(certs)
    }

    fn roots(certs: &[Vec<u8>]) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        for cert in certs {
            store
                .add(CertificateDer::from(cert.clone()))
                .map_err(|e| format!("a certificate cannot be a trusted root: {e}"))?;
        }
        Ok(store)
    }

    fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
        if String::from_utf8_lossy(pem).contains("ENCRYPTED PRIVATE KEY") {
            return Err("holds an encrypted private key, which is not supported: decrypt it first".to_owned());
        }
        PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(ring::default_provider())
    }

    pub(super) fn identity(
        cert_pem: &[u8],
        key_pem: &[u8],
        certfile: &Path,
        keyfile: &Path,
    ) -> Result<Vec<Vec<u8>>, TlsError> {
        let chain = certificates("certfile", cert_pem).map_err(|e| e.for_file(certfile))?;
        let key = key(key_pem).map_err(|e| pem_error("keyfile", format!("{}: {e}", keyfile.display())))?;
        // rustls checks that the key belongs to the first certificate.
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| pem_error("certfile", e.to_string()))?
            .with_root_certificates(RootCertStore::empty())
            .with_client_auth_cert(chain.iter().cloned().map(CertificateDer::from).collect(), key)
            .map_err(|e| {
                pem_error(
                    "keyfile",
                    format!(
                        "{} does not go with the certificate in {}: {e}",
                        keyfile.display(),
                        certfile.display()
                    ),
                )
            })?;
        Ok(chain)
    }

    pub(super) fn check_server_name(name: &str) -> Result<(), TlsError> {
        ServerName::try_from(name.to_owned()).map(drop).map_err(|_| {
            TlsError::new(
                TlsErrorKind::InvalidValue,
                "server_hostname",
                format!("{name:?} is neither a DNS name nor an IP address"),
            )
        })
    }

    /// Accepts any server certificate (`CERT_NONE`); signatures are still checked.
    #[derive(Debug)]
    struct AcceptAnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    fn connector(tls: &TlsOptions) -> Result<RustlsConnector, String> {
        let identity = match &tls.identity {
            Some(identity) => Some((
                identity
                    .chain
                    .iter()
                    .cloned()
                    .map(CertificateDer::from)
                    .collect::<Vec<_>>(),
                key(&identity.key_pem)?,
            )),
            None => None,
        };
        if tls.verify == Verify::Required && tls.ca_certs.is_none() {
            let config = RustlsConnectorConfig::new_with_native_certs()
                .map_err(|e| format!("cannot load the system's root certificates: {e} (set AMQP_SSL ca_certs)"))?;
            let connector = match identity {
                Some((chain, key)) => config.connector_with_single_cert(chain, key),
                None => config.connector_with_no_client_auth(),
            };
            return connector.map_err(|e| e.to_string());
        }
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match (&tls.verify, &tls.ca_certs) {
            (Verify::None, _) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
            (_, Some((_, certs))) => builder.with_root_certificates(roots(certs)?),
            (_, None) => unreachable!("the system's roots are handled above"),
        };
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?,
            None => builder.with_no_client_auth(),
        };
        Ok(RustlsConnector::from(config))
    }

    pub(super) fn secure(uri: &AmqpUri, tls: &TlsOptions) -> Result<super::Secure, BrokerError> {
        if tls.verify == Verify::None {
            tracing::warn!(
                %uri,
                "AMQP_SSL cert_reqs is CERT_NONE: the RabbitMQ server's certificate is not verified"
            );
        }
        let connector =
            connector(tls).map_err(|error| BrokerError::ConnectionLost(format!("cannot connect to {uri}: {error}")))?;
        let server_name = tls.server_hostname.clone().unwrap_or_else(|| uri.host().to_owned());
        Ok(super::Secure { connector, server_name })
    }
}

#[cfg(not(feature = "amqp-tls"))]
mod backend {
    //! Without the `amqp-tls` feature: every TLS request is refused, naming the feature.

    use std::path::Path;

    use super::{AmqpUri, TlsError, TlsOptions};
    use crate::broker::BrokerError;

    pub(super) fn ca_certs(_pem: &[u8]) -> Result<Vec<Vec<u8>>, TlsError> {
        Err(TlsError::feature_disabled("`ca_certs`"))
    }

    pub(super) fn identity(
        _cert_pem: &[u8],
        _key_pem: &[u8],
        _certfile: &Path,
        _keyfile: &Path,
    ) -> Result<Vec<Vec<u8>>, TlsError> {
        Err(TlsError::feature_disabled("`certfile`"))
    }

    pub(super) fn check_server_name(_name: &str) -> Result<(), TlsError> {
        Err(TlsError::feature_disabled("`server_hostname`"))
    }

    pub(super) fn secure(uri: &AmqpUri, _tls: &TlsOptions) -> Result<super::Secure, BrokerError> {
        Err(BrokerError::Other(
            TlsError::feature_disabled(&format!("connecting to {uri}")).to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(yaml: &str) -> Result<Option<TlsOptions>, TlsError> {
        TlsOptions::from_config(&Config::from_yaml_str(yaml).expect("valid yaml"))
    }

    #[test]
    fn tls_switches_the_uri_as_kombu_does() {
        let plain = AmqpUri::parse("amqp://u:p@rabbit/v").expect("parse");
        let (uri, tls) = effective(&plain, None);
        assert_eq!((uri.is_tls(), uri.port(), tls), (false, 5672, None));
        let (uri, tls) = effective(&plain, Some(&TlsOptions::new()));
        assert_eq!((uri.is_tls(), uri.port()), (true, 5671));
        assert_eq!(tls, Some(TlsOptions::new()));
        let given = AmqpUri::parse("amqp://u:p@rabbit:5672/v").expect("parse");
        assert_eq!(effective(&given, Some(&TlsOptions::new())).0.port(), 5672);
        let amqps = AmqpUri::parse("amqps://rabbit/").expect("parse");
        assert_eq!(effective(&amqps, None).1, Some(TlsOptions::new()));
    }

    #[test]
    fn off_values_mean_no_options() {
        for yaml in [
            "{}",
            "AMQP_SSL: false\n",
            "AMQP_SSL: null\n",
            "AMQP_SSL: ${NO_SUCH_TLS_VAR}\n",
        ] {
            assert_eq!(options(yaml).expect(yaml), None, "{yaml}");
        }
    }

    #[test]
    fn wrong_types_are_located() {
        let err = options("AMQP_SSL: 3\n").expect_err("int");
        assert_eq!(err.kind(), TlsErrorKind::InvalidValue);
        assert_eq!(
            err.to_string(),
            "<string>:1:11: AMQP_SSL: expected true, false or a mapping of ssl options (ca_certs, \
             certfile, keyfile, cert_reqs, server_hostname), got an integer"
        );
    }

    #[cfg(not(feature = "amqp-tls"))]
    #[test]
    fn without_the_feature_tls_is_refused_naming_it() {
        for yaml in ["AMQP_SSL: true\n", "AMQP_SSL:\n  cert_reqs: CERT_NONE\n"] {
            let err = options(yaml).expect_err(yaml);
            assert_eq!(err.kind(), TlsErrorKind::FeatureDisabled);
            assert!(err.to_string().contains("`amqp-tls` feature"), "{err}");
        }
    }

    #[cfg(feature = "amqp-tls")]
    mod with_tls {
        use super::*;

        const KEY_HEADER: &str = "-----BEGIN PRIVATE KEY-----";

        fn scratch(name: &str, text: &str) -> PathBuf {
            let dir = std::env::temp_dir().join(format!("nameko-tls-unit-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        }

        #[test]
        fn true_is_verified_tls_with_system_roots() {
            let tls = options("AMQP_SSL: true\n").expect("true").expect("some");
            assert_eq!(tls, TlsOptions::new());
            assert_eq!(tls.verification(), Verify::Required);
            assert_eq!(tls.ca_certs_path(), None);
        }

        #[test]
        fn cert_reqs_takes_names_and_numbers() {
            for (value, verify) in [
                ("CERT_NONE", Verify::None),
                ("0", Verify::None),
                ("ssl.CERT_NONE", Verify::None),
                ("CERT_OPTIONAL", Verify::Required),
                ("1", Verify::Required),
                ("CERT_REQUIRED", Verify::Required),
                ("2", Verify::Required),
                ("null", Verify::Required),
            ] {
                let tls = options(&format!("AMQP_SSL:\n  cert_reqs: {value}\n"))
                    .expect(value)
                    .expect("some");
                assert_eq!(tls.verification(), verify, "{value}");
            }
            let err = options("AMQP_SSL:\n  cert_reqs: maybe\n").expect_err("maybe");
            assert_eq!(
                err.to_string(),
                "<string>:2:14: AMQP_SSL.cert_reqs: expected CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED \
                 (or 0, 1, 2), got the string \"maybe\""
            );
            assert!(options("AMQP_SSL:\n  cert_reqs: 7\n").is_err());
        }

        #[test]
        fn unknown_and_unsupported_keys_are_refused() {
            let err = options("AMQP_SSL:\n  ca_cert: x.pem\n").expect_err("typo");
            assert_eq!(err.kind(), TlsErrorKind::UnknownKey);
            assert_eq!(err.key_path(), "AMQP_SSL.ca_cert");
            for key in ["ciphers: HIGH", "ssl_version: 5", "server_side: true"] {
                let err = options(&format!("AMQP_SSL:\n  {key}\n")).expect_err(key);
                assert_eq!(err.kind(), TlsErrorKind::Unsupported, "{key}");
            }
            let tls = options("AMQP_SSL:\n  server_side: false\n  suppress_ragged_eofs: true\n  ciphers: null\n")
                .expect("accepted")
                .expect("some");
            assert_eq!(tls, TlsOptions::new());
        }

        #[test]
        fn files_are_read_and_checked_where_they_are_named() {
            let err = options("AMQP_SSL:\n  ca_certs: /nonexistent/ca.pem\n").expect_err("missing");
            assert_eq!(err.kind(), TlsErrorKind::File);
            assert!(
                err.to_string()
                    .starts_with("<string>:2:13: AMQP_SSL.ca_certs: cannot read /nonexistent/ca.pem: "),
                "{err}"
            );
            let junk = scratch("junk.pem", "not a certificate\n");
            let err = options(&format!("AMQP_SSL:\n  ca_certs: {}\n", junk.display())).expect_err("junk");
            assert_eq!(err.kind(), TlsErrorKind::Pem);
            assert!(err.to_string().contains("holds no PEM certificate"), "{err}");
            let err = options(&format!("AMQP_SSL:\n  keyfile: {}\n", junk.display())).expect_err("no certfile");
            assert_eq!(err.key_path(), "AMQP_SSL.keyfile");
            let encrypted = scratch(
                "enc.key",
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            );
            let err = TlsOptions::new().client_cert(&junk, &encrypted).expect_err("junk cert");
            assert_eq!((err.kind(), err.key_path()), (TlsErrorKind::Pem, "certfile"));
            assert!(!err.to_string().contains(KEY_HEADER));
        }

        #[test]
        fn server_hostname_is_a_name_or_an_address() {
            let tls = TlsOptions::new().server_hostname("127.0.0.1").expect("ip");
            assert_eq!(tls.server_hostname_override(), Some("127.0.0.1"));
            let err = TlsOptions::new().server_hostname("not a host").expect_err("spaces");
            assert_eq!(err.kind(), TlsErrorKind::InvalidValue);
            let tls = options("AMQP_SSL:\n  server_hostname: null\n")
                .expect("null")
                .expect("some");
            assert_eq!(tls.server_hostname_override(), None);
        }
    }
}
