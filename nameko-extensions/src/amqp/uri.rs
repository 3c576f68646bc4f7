//! `AMQP_URI` as kombu reads it.

use std::fmt;

/// Why an `AMQP_URI` was refused. The message never holds the password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// The scheme is not `amqp://`, `pyamqp://` or `amqps://`.
    #[error("unsupported AMQP URI scheme `{0}`: use amqp://, pyamqp:// or amqps://")]
    Scheme(String),
    /// The text does not look like `scheme://...`.
    #[error("not an AMQP URI (expected amqp://user:password@host:port/vhost)")]
    Malformed,
    /// The port is not a number from 1 to 65535.
    #[error("invalid port `{0}` in AMQP URI")]
    Port(String),
    /// A `%xx` escape is invalid or does not decode to UTF-8.
    #[error("invalid percent-encoding in the {0} of the AMQP URI")]
    Encoding(&'static str),
    /// A query parameter could not be read.
    #[error("invalid query parameter `{0}` in AMQP URI")]
    Query(String),
}

/// An `AMQP_URI`, parsed as kombu does: `amqp://`, `pyamqp://` (the same as `amqp://`)
/// and `amqps://` (TLS); user and password default to `guest`, the host to
/// `localhost`, the port to 5672 (5671 for `amqps://`); an empty path or `/` is the
/// vhost `/`, and `%2f` decodes to `/`.
///
/// `Display` and `Debug` mask the password. TLS options (Nameko's `AMQP_SSL`) are
/// [`TlsOptions`](super::TlsOptions), given with [`AmqpOptions`](super::AmqpOptions).
///
/// ```
/// use nameko_extensions::amqp::AmqpUri;
///
/// let uri = AmqpUri::parse("pyamqp://app:s3cret@rabbit/prod")?;
/// assert_eq!((uri.host(), uri.port(), uri.vhost()), ("rabbit", 5672, "prod"));
/// assert_eq!(uri.to_string(), "amqp://app:***@rabbit:5672/prod");
/// assert_eq!(AmqpUri::parse("amqp://guest:guest@localhost:5672/")?.vhost(), "/");
/// assert_eq!(AmqpUri::parse("amqps://h/%2f")?.port(), 5671);
/// # Ok::<(), nameko_extensions::amqp::UriError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri {
    tls: bool,
    username: String,
    password: String,
    host: String,
    port: u16,
    /// Whether the URI gave the port (kombu picks 5671 for TLS only when it did not).
    port_given: bool,
    vhost: String,
    heartbeat: Option<u16>,
}

impl AmqpUri {
    /// Parses an `AMQP_URI`.
    ///
    /// # Errors
    ///
    /// A [`UriError`] saying what is wrong; it never holds the password.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let text = text.trim();
        let (scheme, rest) = text.split_once("://").ok_or(UriError::Malformed)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "amqp" | "pyamqp" => false,
            "amqps" => true,
            other => return Err(UriError::Scheme(other.to_owned())),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let rest = rest.split_once('#').map_or(rest, |(rest, _)| rest);
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                (decode(user, "user name")?, decode(password, "password")?)
            }
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        let (host, port) = split_host_port(hostport)?;
        let host = if host.is_empty() {
            "localhost".to_owned()
        } else {
            decode(host, "host")?
        };
        let port_given = port.is_some();
        let port = port.unwrap_or(if tls { 5671 } else { 5672 });
        let vhost = if path.is_empty() {
            "/".to_owned()
        } else {
            decode(path, "virtual host")?
        };
        let mut heartbeat = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "heartbeat" {
                heartbeat = Some(value.parse().map_err(|_| UriError::Query(key.to_owned()))?);
            }
        }
        Ok(Self {
            tls,
            username,
            password,
            host,
            port,
            port_given,
            vhost,
            heartbeat,
        })
    }

    /// Whether it connects with TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password, decoded. `Display` and `Debug` mask it; this does not: for
    /// clients that log in elsewhere with the same credentials (the management API).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The virtual host, decoded (`/` for an empty path).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The `heartbeat` query parameter, when given: it overrides `HEARTBEAT`.
    pub fn heartbeat(&self) -> Option<u16> {
        self.heartbeat
    }

    /// The same URI with another host and port (e.g. through a proxy).
    #[must_use]
    pub fn with_address(&self, host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            port_given: true,
            ..self.clone()
        }
    }

    /// The same URI with TLS, as kombu makes it when `AMQP_SSL` is set: `amqps://`, and
    /// port 5671 when the URI did not give one.
    ///
    /// ```
    /// use nameko_extensions::amqp::AmqpUri;
    ///
    /// let uri = AmqpUri::parse("amqp://rabbit/")?.with_tls();
    /// assert_eq!(uri.to_string(), "amqps://guest:***@rabbit:5671/%2F");
    /// assert_eq!(AmqpUri::parse("amqp://rabbit:5672/")?.with_tls().port(), 5672);
    /// # Ok::<(), nameko_extensions::amqp::UriError>(())
    /// ```
    #[must_use]
    pub fn with_tls(&self) -> Self {
        Self {
            tls: true,
            port: if self.port_given { self.port } else { 5671 },
            ..self.clone()
        }
    }

    /// The URI to connect with, password included and every part percent-encoded.
    /// Never log it; log the `Display` form.
    pub fn to_url(&self) -> String {
        self.render(&encode(&self.password))
    }

    fn render(&self, password: &str) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{scheme}://{}:{password}@{host}:{}/{}",
            encode(&self.username),
            self.port,
            encode(&self.vhost)
        )
    }

    /// lapin's form of the URI.
    pub(crate) fn as_lapin(
        &self,
        heartbeat: u16,
        login: lapin::uri::SASLMechanism,
        frame_max: u32,
    ) -> lapin::uri::AMQPUri {
        use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
        AMQPUri {
            scheme: if self.tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.username.clone(),
                    password: self.password.clone(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(self.heartbeat.unwrap_or(heartbeat)),
                auth_mechanism: Some(login),
                frame_max: Some(frame_max),
                ..AMQPQueryString::default()
            },
        }
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("***"))
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUri").field(&self.to_string()).finish()
    }
}

impl std::str::FromStr for AmqpUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<u16>), UriError> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(UriError::Malformed)?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err(UriError::Port(port.to_owned())),
        },
    };
    Ok((host, port))
}

fn decode(text: &str, part: &'static str) -> Result<String, UriError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or(UriError::Encoding(part))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UriError::Encoding(part))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError::Encoding(part))
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kombu_forms() {
        let uri = AmqpUri::parse("amqp://guest:guest@localhost:5672/").expect("parse");
        assert_eq!(
            (uri.host(), uri.port(), uri.vhost(), uri.is_tls()),
            ("localhost", 5672, "/", false)
        );
        assert_eq!(AmqpUri::parse("amqp://h").expect("parse").vhost(), "/");
        assert_eq!(AmqpUri::parse("amqp://h/%2f").expect("parse").vhost(), "/");
        assert_eq!(AmqpUri::parse("amqp://h/%2Fprod").expect("parse").vhost(), "/prod");
        assert_eq!(AmqpUri::parse("amqps://h").expect("parse").port(), 5671);
        assert_eq!(AmqpUri::parse("pyamqp://u:p@h:1234/v").expect("parse").port(), 1234);
        let default_user = AmqpUri::parse("amqp://h/").expect("parse");
        assert_eq!(default_user.username(), "guest");
        assert_eq!(default_user.password, "guest");
        let ipv6 = AmqpUri::parse("amqp://u:p@[::1]:5673/").expect("parse");
        assert_eq!((ipv6.host(), ipv6.port()), ("::1", 5673));
        assert_eq!(
            AmqpUri::parse("amqp://h/?heartbeat=15").expect("parse").heartbeat(),
            Some(15)
        );
    }

    #[test]
    fn password_is_masked_and_round_trips() {
        let uri = AmqpUri::parse("amqp://app:p%40ss%2Fw@rabbit:5672/%2f").expect("parse");
        assert_eq!(uri.password, "p@ss/w");
        assert_eq!(uri.to_string(), "amqp://app:***@rabbit:5672/%2F");
        assert!(!format!("{uri:?}").contains("ss"));
        let again = AmqpUri::parse(&uri.to_url()).expect("parse");
        assert_eq!(again, uri);
    }

    #[test]
    fn errors_say_what_is_wrong_without_the_password() {
        assert_eq!(AmqpUri::parse("http://h/"), Err(UriError::Scheme("http".into())));
        assert_eq!(AmqpUri::parse("localhost"), Err(UriError::Malformed));
        assert_eq!(
            AmqpUri::parse("amqp://u:secret@h:99999/"),
            Err(UriError::Port("99999".into()))
        );
        let err = AmqpUri::parse("amqp://u:sec%zzret@h/").expect_err("bad escape");
        assert!(!err.to_string().contains("sec"), "{err}");
    }
}
