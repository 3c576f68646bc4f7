//! A lean client of the RabbitMQ management HTTP API (`GET` with basic auth over
//! HTTP/1.1, hyper's client connection), for `discover`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use nameko_core::Config;
use nameko_extensions::amqp::AmqpUri;
use serde::de::DeserializeOwned;

use crate::mask::mask_secrets;

/// The config key naming the management API's base URI.
pub(crate) const MANAGEMENT_URI_KEY: &str = "MANAGEMENT_URI";

/// How long a request to the management API may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the management API is: `http://user:password@host:port/prefix`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ManagementUri {
    user: String,
    password: String,
    host: String,
    port: u16,
    /// The path prefix, without a trailing `/` (`""`, or `/rabbitmq` behind a proxy).
    prefix: String,
}

impl std::fmt::Debug for ManagementUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// The management API could not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManagementError {
    /// `MANAGEMENT_URI` is not an `http://` URI.
    #[error("invalid MANAGEMENT_URI {uri}: {reason}")]
    Invalid {
        /// The URI, password masked.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// Not reachable, not enabled, or refusing: the caller falls back.
    #[error("{0}")]
    Unavailable(String),
}

impl ManagementUri {
    /// `MANAGEMENT_URI` from `config`, or `http://<AMQP user>:<password>@<AMQP host>:15672`.
    pub(crate) fn from_config(config: &Config, amqp: &AmqpUri) -> Result<Self, ManagementError> {
        match config
            .get(MANAGEMENT_URI_KEY)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(text) => Self::parse(text, amqp),
            None => Ok(Self {
                user: amqp.username().to_owned(),
                password: amqp.password().to_owned(),
                host: amqp.host().to_owned(),
                port: 15672,
                prefix: String::new(),
            }),
        }
    }

    /// Parses `http://[user[:password]@]host[:port][/prefix]`; missing credentials are
    /// the AMQP URI's.
    pub(crate) fn parse(text: &str, amqp: &AmqpUri) -> Result<Self, ManagementError> {
        let invalid = |reason: &str| ManagementError::Invalid {
            uri: mask_secrets(text),
            reason: reason.to_owned(),
        };
        if text.starts_with("https://") {
            return Err(invalid(
                "https is not supported by this client; reach the management API over http (e.g. on localhost)",
            ));
        }
        let Some(rest) = text.strip_prefix("http://") else {
            return Err(invalid("expected http://[user:password@]host[:port][/path]"));
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (decode(user), decode(password)),
                None => (decode(info), amqp.password().to_owned()),
            },
            None => (amqp.username().to_owned(), amqp.password().to_owned()),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed `[` in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| invalid("the port is not a number"))?,
                None => 15672,
            };
            (host.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse().map_err(|_| invalid("the port is not a number"))?,
                ),
                None => (hostport.to_owned(), 15672),
            }
        };
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        Ok(Self {
            user,
            password,
            host,
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The URI as messages show it: password masked.
    pub(crate) fn shown(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "http://{}:{}@{host}:{}{}/",
            self.user,
            crate::MASK,
            self.port,
            self.prefix
        )
    }

    /// `/api/queues/<vhost>` with the columns `discover` reads.
    pub(crate) fn queues_path(&self, vhost: &str) -> String {
        format!("{}/api/queues/{}?columns=name,consumers", self.prefix, encode(vhost))
    }

    /// `GET path`, its JSON body decoded.
    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ManagementError> {
        let body = tokio::time::timeout(TIMEOUT, self.get(path))
            .await
            .map_err(|_| ManagementError::Unavailable(format!("no answer within {}s", TIMEOUT.as_secs())))??;
        serde_json::from_slice(&body).map_err(|error| {
            ManagementError::Unavailable(format!("`GET {path}` did not answer the expected JSON: {error}"))
        })
    }

    async fn get(&self, path: &str) -> Result<Bytes, ManagementError> {
        let unavailable =
            |what: &str, error: &dyn std::fmt::Display| ManagementError::Unavailable(format!("{what}: {error}"));
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| unavailable("cannot connect", &error))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| unavailable("HTTP handshake failed", &error))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let credentials = base64(format!("{}:{}", self.user, self.password).as_bytes());
        let request = Request::get(path)
            .header(header::HOST, host)
            .header(header::AUTHORIZATION, format!("Basic {credentials}"))
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|error| unavailable("cannot build the request", &error))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| unavailable("the request failed", &error))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| unavailable("reading the answer failed", &error))?
            .to_bytes();
        driver.abort();
        match status {
            StatusCode::OK => Ok(body),
            StatusCode::UNAUTHORIZED => Err(ManagementError::Unavailable(format!(
                "401 Unauthorized: user `{}` cannot log in to the management API (it needs a management tag)",
                self.user
            ))),
            other => Err(ManagementError::Unavailable(format!("`GET {path}` answered {other}"))),
        }
    }
}

impl From<ManagementError> for crate::CliError {
    fn from(error: ManagementError) -> Self {
        let message = mask_secrets(&error.to_string());
        match error {
            ManagementError::Invalid { .. } => Self::Setting(message),
            ManagementError::Unavailable(_) => Self::Discovery(message),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (`/` → `%2F`).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (invalid ones are kept as written).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding, for basic auth.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp() -> AmqpUri {
        AmqpUri::parse("amqp://app:s%40cret@rabbit:5672/prod").unwrap()
    }

    #[test]
    fn the_default_takes_the_amqp_host_and_credentials() {
        let uri = ManagementUri::from_config(&Config::default(), &amqp()).unwrap();
        assert_eq!((uri.user.as_str(), uri.password.as_str()), ("app", "s@cret"));
        assert_eq!((uri.host.as_str(), uri.port), ("rabbit", 15672));
        assert_eq!(uri.shown(), "http://app:***@rabbit:15672/");
        assert_eq!(uri.queues_path("/"), "/api/queues/%2F?columns=name,consumers");
        assert_eq!(uri.queues_path("prod"), "/api/queues/prod?columns=name,consumers");
    }

    #[test]
    fn management_uris_parse_and_bad_ones_are_named_masked() {
        let uri = ManagementUri::parse("http://admin:top%2Fsecret@10.0.0.1:8080/rabbitmq/", &amqp()).unwrap();
        assert_eq!((uri.user.as_str(), uri.password.as_str()), ("admin", "top/secret"));
        assert_eq!(
            (uri.host.as_str(), uri.port, uri.prefix.as_str()),
            ("10.0.0.1", 8080, "/rabbitmq")
        );
        assert_eq!(uri.shown(), "http://admin:***@10.0.0.1:8080/rabbitmq/");
        let uri = ManagementUri::parse("http://[::1]", &amqp()).unwrap();
        assert_eq!((uri.host.as_str(), uri.port, uri.user.as_str()), ("::1", 15672, "app"));
        for (bad, says) in [
            ("https://admin:hunter2@rabbit/", "https is not supported"),
            ("rabbit:15672", "expected http://"),
            ("http://admin:hunter2@rabbit:port/", "the port is not a number"),
        ] {
            let error = ManagementUri::parse(bad, &amqp()).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn base64_and_percent_encoding() {
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(encode("/"), "%2F");
        assert_eq!(decode("a%2Fb%zz"), "a/b%zz");
    }
}
