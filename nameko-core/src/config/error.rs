//! Errors and warnings produced while loading and reading the configuration.

use std::fmt;

use super::value::Location;

/// What went wrong, for callers that want to react differently to different failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The config file could not be read.
    Io,
    /// The YAML is malformed (also inside a `${VAR}` value that is parsed as YAML), has more
    /// than one document, uses an unknown tag, or is not a mapping at the top level.
    Syntax,
    /// A `${...}` reference is malformed.
    Substitution,
    /// A `--define` or `NAMEKO_*` override is malformed or cannot be applied.
    Override,
    /// A value has the wrong type or is out of range.
    InvalidValue,
    /// A typed section has a key the target type does not know.
    UnknownKey,
    /// A key asked for is missing.
    MissingKey,
    /// A typed section is missing from the config and its type has required fields.
    MissingSection,
}

/// An error loading the configuration or reading a value from it.
///
/// Displays as `location: key.path: what was wrong`, leaving out the parts that do not
/// apply, e.g. `config.yaml:7:14: GREETING.port: invalid type: string "abc", expected u16`.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.location.as_ref(), .key_path, .message))]
pub struct ConfigError {
    kind: ConfigErrorKind,
    location: Option<Location>,
    key_path: String,
    message: String,
    #[source]
    source: Option<std::io::Error>,
}

fn render(location: Option<&Location>, key_path: &str, message: &str) -> String {
    let mut out = String::new();
    if let Some(location) = location {
        out.push_str(&location.to_string());
        out.push_str(": ");
    }
    if !key_path.is_empty() {
        out.push_str(key_path);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

impl ConfigError {
    pub(crate) fn new(
        kind: ConfigErrorKind,
        location: Option<Location>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            location,
            key_path: key_path.into(),
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn io(location: Location, source: std::io::Error) -> Self {
        Self {
            kind: ConfigErrorKind::Io,
            message: format!("cannot read the config file: {source}"),
            location: Some(location),
            key_path: String::new(),
            source: Some(source),
        }
    }

    pub(crate) fn prefix_message(&mut self, prefix: &str) {
        self.message = format!("{prefix}: {}", self.message);
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// Where the offending value (or key) came from, when known.
    #[must_use]
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }

    /// The dotted path of the offending key, e.g. `GREETING.port` or `ITEMS[2].name`; empty
    /// when the error is not about one key (a YAML syntax error, say).
    #[must_use]
    pub fn key_path(&self) -> &str {
        &self.key_path
    }

    /// What was wrong, without location and key path.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Something suspicious noticed while loading, such as an unset `${VAR}` without a default.
/// Also emitted with `tracing::warn!` when it is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    location: Location,
    message: String,
}

impl ConfigWarning {
    pub(crate) fn new(location: Location, message: String) -> Self {
        tracing::warn!(location = %location, "{message}");
        Self { location, message }
    }

    /// Where the value that caused the warning came from.
    #[must_use]
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The warning, without the location.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}
