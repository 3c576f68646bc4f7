//! Nameko-compatible configuration: a YAML file with `${VAR}` substitution, overridden by
//! `NAMEKO_*` environment variables, `--define KEY=VALUE` and `--broker`.
//!
//! Load it with [`Config::loader`]:
//!
//! ```
//! use nameko_core::config::Config;
//!
//! let config = Config::loader()
//!     .yaml_str("config.yaml", "AMQP_URI: amqp://${RABBIT_HOST:localhost}/\nmax_workers: 4\n")
//!     .vars([("RABBIT_HOST", "rabbit")])
//!     .define("max_workers=8")
//!     .load()?;
//! assert_eq!(config.amqp_uri(), "amqp://rabbit/");
//! assert_eq!(config.max_workers(), 8);
//! # Ok::<(), nameko_core::config::ConfigError>(())
//! ```
//!
//! # Precedence
//!
//! Built-in defaults < the file < `NAMEKO_<KEY>` environment variables (`__` separates
//! nesting levels: `NAMEKO_GREETING__SALUTATION=Hi`) < `--define KEY=VALUE` (`.` separates
//! nesting levels) < `--broker URI` (sets `AMQP_URI`). Environment and `--define` values are
//! parsed as YAML values, so `NAMEKO_MAX_WORKERS=3` is the integer 3 and `[1, 2]` a list. An
//! override replaces the value at its key path only; the siblings of that key are kept. When
//! the key matches an existing key at that level ignoring case, the existing spelling is kept;
//! a top-level key that is one of [`KNOWN_KEYS`] always takes Nameko's exact spelling.
//!
//! # YAML
//!
//! YAML 1.2 core schema: `yes`/`no`/`on`/`off` are strings and `0123` is the integer 123
//! (PyYAML, which Python Nameko uses, reads YAML 1.1: booleans and the octal 83). A file holds
//! one document; anchors, aliases and the `<<` merge key work.
//!
//! # `${VAR}` substitution
//!
//! In values (not keys), `${NAME}` and `${NAME:default}` are replaced by the variable or the
//! default; several may appear in one scalar, and defaults may nest (`${A:${B:fallback}}`) or
//! hold balanced braces (`${X:{a: 1}}`). A plain (unquoted) scalar is parsed as YAML again
//! after substitution, so `${MAX:5}` is the integer 5 and `${LIST:[1, 2]}` a list; a quoted
//! scalar stays a string (Python Nameko leaves quoted scalars alone). `!env_var "..."`
//! substitutes and re-parses, `!raw_env_var "..."` substitutes and keeps a string, and a
//! core tag such as `!!str` takes the text literally, without substitution. An unset
//! variable without a default becomes the empty string — a scalar that is just that one
//! reference becomes null — and is reported as a [`ConfigWarning`]. A variable set to the
//! empty string is the empty string.

mod de;
mod error;
mod subst;
mod value;
mod yaml;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::{ConfigError, ConfigErrorKind, ConfigWarning};
pub use value::{ConfigValue, Location};

use value::{Entry, Node};
use yaml::{Locator, Raw, Resolver};

/// The top-level keys Nameko itself reads, in their exact Nameko spelling, the few
/// nameko-rs's command line adds (`MANAGEMENT_URI`, `LOG_STREAM`, `LOG_EXCHANGE`) and
/// nameko-rs's `MAX_MESSAGE_SIZE` and `METRICS_ADDRESS`. They are looked up ignoring case.
pub const KNOWN_KEYS: &[&str] = &[
    "AMQP_URI",
    "WEB_SERVER_ADDRESS",
    "rpc_exchange",
    "serializer",
    "ACCEPT",
    "SERIALIZERS",
    "HEARTBEAT",
    "PREFETCH_COUNT",
    "AMQP_SSL",
    "LOGIN_METHOD",
    "TRANSPORT_OPTIONS",
    "max_workers",
    "parent_calls_tracked",
    "LOGGING",
    "SERVICE_CONTAINER_CLS",
    "AUTO_DELETE_EVENT_EXCHANGES",
    "DECLARE_EVENT_EXCHANGES",
    // nameko-rs's own, read by its command line.
    "MANAGEMENT_URI",
    "LOG_STREAM",
    "LOG_EXCHANGE",
    // nameko-rs's own, read by every message consumer.
    "MAX_MESSAGE_SIZE",
    // nameko-rs's own, read by the runner (Prometheus metrics, health and readiness).
    "METRICS_ADDRESS",
];

/// Default of `max_workers`, also used when it is 0 or null.
pub const DEFAULT_MAX_WORKERS: usize = 10;
/// Default of `parent_calls_tracked`.
pub const DEFAULT_PARENT_CALLS_TRACKED: usize = 10;
/// Default of `rpc_exchange`.
pub const DEFAULT_RPC_EXCHANGE: &str = "nameko-rpc";
/// Default of `AMQP_URI`.
pub const DEFAULT_AMQP_URI: &str = "amqp://guest:guest@localhost:5672/";
/// Default of `serializer`.
pub const DEFAULT_SERIALIZER: &str = "json";
/// Default of `WEB_SERVER_ADDRESS`.
pub const DEFAULT_WEB_SERVER_ADDRESS: &str = "0.0.0.0:8000";
/// Default of `HEARTBEAT`, in seconds.
pub const DEFAULT_HEARTBEAT: u64 = 60;
/// Default of `MAX_MESSAGE_SIZE`, in bytes: 8 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;

const MAX_WORKERS: &str = "max_workers";
const PARENT_CALLS_TRACKED: &str = "parent_calls_tracked";
const RPC_EXCHANGE: &str = "rpc_exchange";
const AMQP_URI: &str = "AMQP_URI";
const SERIALIZER: &str = "serializer";
const WEB_SERVER_ADDRESS: &str = "WEB_SERVER_ADDRESS";
const HEARTBEAT: &str = "HEARTBEAT";
const MAX_MESSAGE_SIZE: &str = "MAX_MESSAGE_SIZE";

/// The exact spelling of a known key, matched ignoring case.
fn known_key(key: &str) -> Option<&'static str> {
    KNOWN_KEYS.iter().find(|known| known.eq_ignore_ascii_case(key)).copied()
}

fn default_entries() -> Vec<Entry> {
    let int = |i: usize| Node::Int(i128::try_from(i).expect("small defaults fit an i128"));
    [
        (AMQP_URI, Node::Str(DEFAULT_AMQP_URI.to_owned())),
        (WEB_SERVER_ADDRESS, Node::Str(DEFAULT_WEB_SERVER_ADDRESS.to_owned())),
        (RPC_EXCHANGE, Node::Str(DEFAULT_RPC_EXCHANGE.to_owned())),
        (SERIALIZER, Node::Str(DEFAULT_SERIALIZER.to_owned())),
        (HEARTBEAT, Node::Int(i128::from(DEFAULT_HEARTBEAT))),
        (MAX_WORKERS, int(DEFAULT_MAX_WORKERS)),
        (PARENT_CALLS_TRACKED, int(DEFAULT_PARENT_CALLS_TRACKED)),
        (MAX_MESSAGE_SIZE, int(DEFAULT_MAX_MESSAGE_SIZE)),
    ]
    .into_iter()
    .map(|(key, node)| Entry {
        key: key.to_owned(),
        key_location: Location::default_value(),
        value: ConfigValue::new(node, Location::default_value()),
    })
    .collect()
}

/// The merged configuration. Cheap to clone (the tree is shared).
#[derive(Clone, Debug)]
pub struct Config {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: ConfigValue,
    file_keys: Vec<(String, Location)>,
    warnings: Vec<ConfigWarning>,
    max_workers: usize,
    parent_calls_tracked: usize,
    heartbeat: u64,
    max_message_size: usize,
}

impl Default for Config {
    /// The built-in defaults only.
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                root: ConfigValue::new(Node::Map(default_entries()), Location::default_value()),
                file_keys: Vec::new(),
                warnings: Vec::new(),
                max_workers: DEFAULT_MAX_WORKERS,
                parent_calls_tracked: DEFAULT_PARENT_CALLS_TRACKED,
                heartbeat: DEFAULT_HEARTBEAT,
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            }),
        }
    }
}

impl Config {
    /// A loader to combine a file, the environment, `--define`s and `--broker`.
    pub fn loader() -> ConfigLoader {
        ConfigLoader::default()
    }

    /// Loads YAML text (its origin shows as `<string>` in locations), substituting `${VAR}`
    /// from the process environment, without `NAMEKO_*` overrides.
    ///
    /// # Errors
    /// As [`ConfigLoader::load`].
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        let mut loader = Self::loader().yaml_str("<string>", yaml);
        loader.skip_env_overrides = true;
        loader.load()
    }

    fn entries(&self) -> &[Entry] {
        match &self.inner.root.node {
            Node::Map(entries) => entries,
            _ => &[],
        }
    }

    /// The top-level value of `key`. Keys in [`KNOWN_KEYS`] are matched ignoring case, others
    /// exactly.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        let key = known_key(key).unwrap_or(key);
        self.inner.root.get(key)
    }

    /// The top-level `[host:]port` value of `key` (Nameko's form, as
    /// `WEB_SERVER_ADDRESS`; a bare port or number binds every interface): `None` when
    /// unset or null.
    ///
    /// # Errors
    ///
    /// A value that is not an address, naming the key, where it was set and what was
    /// expected.
    pub fn address(&self, key: &str) -> Result<Option<String>, String> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        if value.is_null() {
            return Ok(None);
        }
        let text = value
            .as_str()
            .map(str::to_owned)
            .or_else(|| value.as_u64().map(|port| port.to_string()))
            .unwrap_or_default();
        parse_address(&text)
            .map(Some)
            .map_err(|message| format!("config `{key}` ({}): {message}", value.location()))
    }

    /// The top-level string value of `key` (matched as by [`Config::get`]).
    ///
    /// # Errors
    /// When the key is missing or its value is not a string; the error names the key and,
    /// for a value of the wrong type, where it was set.
    pub fn get_str(&self, key: &str) -> Result<&str, ConfigError> {
        let value = self.get(key).ok_or_else(|| {
            ConfigError::new(
                ConfigErrorKind::MissingKey,
                None,
                known_key(key).unwrap_or(key),
                "missing from the config",
            )
        })?;
        value
            .as_str()
            .ok_or_else(|| wrong_type(value, known_key(key).unwrap_or(key), "a string"))
    }

    /// Deserializes the top-level section `key` (matched exactly, else ignoring case) into `T`.
    ///
    /// Keys inside a struct that `T` does not declare are errors, whether or not it uses
    /// `#[serde(deny_unknown_fields)]`. When the section is missing, `T` is deserialized from
    /// an empty mapping, so a struct whose fields all have defaults works without it.
    ///
    /// # Errors
    /// When a value has the wrong type or is out of range, a key is unknown or a required key
    /// is missing; the error gives the location, the key path and what was wrong. When the
    /// section is missing and `T` cannot be built from nothing, the error says so.
    pub fn section<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        let entries = self.entries();
        let entry = entries
            .iter()
            .find(|e| e.key == key)
            .or_else(|| entries.iter().find(|e| e.key.eq_ignore_ascii_case(key)));
        if let Some(entry) = entry {
            return de::from_value(&entry.value, &entry.key);
        }
        let empty = ConfigValue::new(Node::Map(Vec::new()), Location::default_value());
        de::from_value(&empty, key).map_err(|e| {
            ConfigError::new(
                ConfigErrorKind::MissingSection,
                None,
                key,
                format!("the section `{key}` is missing from the config ({})", e.message()),
            )
        })
    }

    /// `max_workers`: how many workers a container runs at once (default 10; 0 or null also
    /// mean 10, as in Nameko).
    #[must_use]
    pub fn max_workers(&self) -> usize {
        self.inner.max_workers
    }

    /// `parent_calls_tracked`: how many call ids the call id stack keeps (default 10).
    #[must_use]
    pub fn parent_calls_tracked(&self) -> usize {
        self.inner.parent_calls_tracked
    }

    fn known_str(&self, key: &str, default: &'static str) -> &str {
        self.inner
            .root
            .get(key)
            .and_then(ConfigValue::as_str)
            .unwrap_or(default)
    }

    /// `rpc_exchange` (default `nameko-rpc`).
    #[must_use]
    pub fn rpc_exchange(&self) -> &str {
        self.known_str(RPC_EXCHANGE, DEFAULT_RPC_EXCHANGE)
    }

    /// `AMQP_URI` (default `amqp://guest:guest@localhost:5672/`).
    #[must_use]
    pub fn amqp_uri(&self) -> &str {
        self.known_str(AMQP_URI, DEFAULT_AMQP_URI)
    }

    /// `serializer` (default `json`).
    #[must_use]
    pub fn serializer(&self) -> &str {
        self.known_str(SERIALIZER, DEFAULT_SERIALIZER)
    }

    /// `WEB_SERVER_ADDRESS`, `[host:]port` (default `0.0.0.0:8000`).
    #[must_use]
    pub fn web_server_address(&self) -> &str {
        self.known_str(WEB_SERVER_ADDRESS, DEFAULT_WEB_SERVER_ADDRESS)
    }

    /// `HEARTBEAT` in seconds (default 60; 0 disables heartbeats).
    #[must_use]
    pub fn heartbeat(&self) -> u64 {
        self.inner.heartbeat
    }

    /// `MAX_MESSAGE_SIZE`: the largest message body, in bytes, a consumer decodes
    /// (default 8 MiB; null also means the default). Larger RPC requests get an error
    /// reply, larger events are rejected; see `nameko_extensions::inbound`.
    #[must_use]
    pub fn max_message_size(&self) -> usize {
        self.inner.max_message_size
    }

    /// The whole merged tree as JSON, defaults included (what `show-config` prints).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        self.inner.root.to_json()
    }

    /// The top-level keys in order: the file's keys in file order, then defaults the file
    /// did not set, then keys added by overrides.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries().iter().map(|e| e.key.as_str())
    }

    /// The top-level keys of the file that are neither [`KNOWN_KEYS`] nor in `claimed`
    /// (both compared ignoring case), with where they are; the runner warns about these.
    #[must_use]
    pub fn unknown_keys(&self, claimed: &[&str]) -> Vec<(String, Location)> {
        self.inner
            .file_keys
            .iter()
            .filter(|(key, _)| known_key(key).is_none() && !claimed.iter().any(|c| c.eq_ignore_ascii_case(key)))
            .cloned()
            .collect()
    }

    /// Warnings collected while loading (each was also emitted with `tracing::warn!`).
    #[must_use]
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.inner.warnings
    }
}

/// An error for `value` at `path` not being `expected`, mentioning an unset `${VAR}` that
/// made it null.
fn wrong_type(value: &ConfigValue, path: &str, expected: &str) -> ConfigError {
    let message = match &value.unset_var {
        Some(var) if value.is_null() => {
            format!("`${{{var}}}` is unset and has no default, so the value is null; expected {expected}")
        }
        _ => format!("expected {expected}, got {}", value.describe()),
    };
    ConfigError::new(
        ConfigErrorKind::InvalidValue,
        Some(value.location().clone()),
        path,
        message,
    )
}

#[derive(Debug)]
enum Source {
    File(PathBuf),
    Text { origin: String, yaml: String },
}

/// Builds a [`Config`] from a file (or YAML text), the environment, `--define`s and
/// `--broker`; see the [module documentation](self) for the precedence.
#[derive(Debug, Default)]
#[must_use]
pub struct ConfigLoader {
    source: Option<Source>,
    vars: Option<Vec<(String, String)>>,
    defines: Vec<String>,
    broker: Option<String>,
    skip_env_overrides: bool,
}

impl ConfigLoader {
    /// Reads the config from the YAML file at `path`.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = Some(Source::File(path.into()));
        self
    }

    /// Reads the config from YAML text instead of a file; `origin` names it in locations
    /// (e.g. `config.yaml`).
    pub fn yaml_str(mut self, origin: impl Into<String>, yaml: impl Into<String>) -> Self {
        self.source = Some(Source::Text {
            origin: origin.into(),
            yaml: yaml.into(),
        });
        self
    }

    /// Uses these variables instead of the process environment, both for `${VAR}`
    /// substitution and for `NAMEKO_*` overrides.
    pub fn vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.vars = Some(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self
    }

    /// Adds a `KEY=VALUE` override (repeatable, later ones win). `KEY` may use `.` for
    /// nesting; `VALUE` is parsed as a YAML value. Checked by [`ConfigLoader::load`].
    pub fn define(mut self, kv: impl Into<String>) -> Self {
        self.defines.push(kv.into());
        self
    }

    /// Sets `AMQP_URI`, overriding everything else.
    pub fn broker(mut self, uri: impl Into<String>) -> Self {
        self.broker = Some(uri.into());
        self
    }

    /// Loads, merges and validates the configuration.
    ///
    /// # Errors
    /// When the file cannot be read; the YAML is malformed, has more than one document or is
    /// not a mapping; a `${...}` reference is malformed; an override is malformed or cannot be
    /// applied; or a known key has the wrong type (`max_workers: lots`). Every error names
    /// where the offending text came from.
    pub fn load(self) -> Result<Config, ConfigError> {
        let env: Option<HashMap<&str, &str>> = self
            .vars
            .as_ref()
            .map(|vars| vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
        let lookup = |name: &str| -> Option<String> {
            match &env {
                Some(env) => env.get(name).map(|v| (*v).to_owned()),
                None => std::env::var(name).ok(),
            }
        };
        let mut warnings = Vec::new();

        let mut entries = Vec::new();
        let mut file_keys = Vec::new();
        if let Some(source) = &self.source {
            let (origin, text) = match source {
                Source::File(path) => {
                    let origin = path.display().to_string();
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| ConfigError::io(Location::new(origin.as_str(), None), e))?;
                    (origin, text)
                }
                Source::Text { origin, yaml } => (origin.clone(), yaml.clone()),
            };
            let base = Location::new(origin, None);
            let locator = Locator::Text(&base);
            let raw = yaml::parse(&text, locator).map_err(|e| e.into_config_error(locator, ""))?;
            if let Some(raw) = raw {
                let mut resolver = Resolver {
                    lookup: Some(&lookup),
                    warnings: &mut warnings,
                };
                (entries, file_keys) = top_level(&raw, &mut resolver)?;
            }
        }

        for default in default_entries() {
            if !entries.iter().any(|e| e.key == default.key) {
                entries.push(default);
            }
        }

        if !self.skip_env_overrides {
            let mut overrides: Vec<(String, String)> = match &self.vars {
                Some(vars) => vars.clone(),
                None => std::env::vars_os()
                    .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
                    .collect(),
            };
            overrides.retain(|(k, _)| k.starts_with("NAMEKO_"));
            overrides.sort();
            for (name, text) in overrides {
                let location = Location::new(format!("environment {name}"), None);
                let key = &name["NAMEKO_".len()..];
                let segments: Vec<&str> = key.split("__").collect();
                if segments.iter().any(|s| s.is_empty()) {
                    return Err(ConfigError::new(
                        ConfigErrorKind::Override,
                        Some(location),
                        "",
                        "expected NAMEKO_KEY or NAMEKO_KEY__NESTED_KEY, with no empty key",
                    ));
                }
                let value = override_value(&text, &location, &segments.join("."), &mut warnings)?;
                apply_override(&mut entries, &segments, value, &location, "")?;
            }
        }

        for define in &self.defines {
            let location = Location::new(format!("--define {define}"), None);
            let Some((key, text)) = define.split_once('=') else {
                return Err(ConfigError::new(
                    ConfigErrorKind::Override,
                    Some(location),
                    "",
                    "expected KEY=VALUE",
                ));
            };
            let segments: Vec<&str> = key.trim().split('.').collect();
            if segments.iter().any(|s| s.is_empty()) {
                return Err(ConfigError::new(
                    ConfigErrorKind::Override,
                    Some(location),
                    "",
                    "expected KEY=VALUE with a key such as `max_workers` or `GREETING.salutation`",
                ));
            }
            let value = override_value(text, &location, &segments.join("."), &mut warnings)?;
            apply_override(&mut entries, &segments, value, &location, "")?;
        }

        if let Some(broker) = self.broker {
            let location = Location::new("--broker", None);
            let value = ConfigValue::new(Node::Str(broker), location.clone());
            apply_override(&mut entries, &[AMQP_URI], value, &location, "")?;
        }

        let root = ConfigValue::new(Node::Map(entries), Location::default_value());
        let count = |key: &str, zero_is_default: bool, default: usize| {
            let Some(value) = root.get(key) else {
                return Ok(default);
            };
            match value.node {
                Node::Null => Ok(default),
                Node::Int(0) if zero_is_default => Ok(default),
                Node::Int(i) if i >= 0 => {
                    usize::try_from(i).map_err(|_| wrong_type(value, key, "a non-negative integer that fits usize"))
                }
                _ => Err(wrong_type(value, key, "a non-negative integer")),
            }
        };
        let max_workers = count(MAX_WORKERS, true, DEFAULT_MAX_WORKERS)?;
        let parent_calls_tracked = count(PARENT_CALLS_TRACKED, false, DEFAULT_PARENT_CALLS_TRACKED)?;
        let max_message_size = match root.get(MAX_MESSAGE_SIZE) {
            None => DEFAULT_MAX_MESSAGE_SIZE,
            Some(value) => match value.node {
                Node::Null => DEFAULT_MAX_MESSAGE_SIZE,
                Node::Int(i) if i > 0 => usize::try_from(i)
                    .map_err(|_| wrong_type(value, MAX_MESSAGE_SIZE, "a size in bytes that fits usize"))?,
                _ => return Err(wrong_type(value, MAX_MESSAGE_SIZE, "a size in bytes above 0")),
            },
        };
        let heartbeat = match root.get(HEARTBEAT) {
            None => DEFAULT_HEARTBEAT,
            Some(value) => heartbeat_seconds(value)
                .ok_or_else(|| wrong_type(value, HEARTBEAT, "a non-negative whole number of seconds"))?,
        };
        for key in [RPC_EXCHANGE, AMQP_URI, SERIALIZER, WEB_SERVER_ADDRESS] {
            if let Some(value) = root.get(key)
                && value.as_str().is_none()
            {
                return Err(wrong_type(value, key, "a string"));
            }
        }

        Ok(Config {
            inner: Arc::new(Inner {
                root,
                file_keys,
                warnings,
                max_workers,
                parent_calls_tracked,
                heartbeat,
                max_message_size,
            }),
        })
    }
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "checked to be a non-negative whole number below 2^64 first"
)]
fn heartbeat_seconds(value: &ConfigValue) -> Option<u64> {
    match value.node {
        Node::Int(i) => u64::try_from(i).ok(),
        Node::Float(f) if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 => Some(f as u64),
        _ => None,
    }
}

/// Resolves the file's root node into top-level entries (known keys in their exact
/// spelling) and the file's keys as written.
fn top_level(raw: &Raw, resolver: &mut Resolver<'_>) -> Result<(Vec<Entry>, Vec<(String, Location)>), ConfigError> {
    let root = resolver.resolve(raw, "")?;
    let entries = match root.node {
        Node::Map(entries) => entries,
        Node::Null => return Ok((Vec::new(), Vec::new())),
        _ => {
            return Err(ConfigError::new(
                ConfigErrorKind::Syntax,
                Some(root.location.clone()),
                "",
                format!(
                    "the config must be a mapping of keys to values, not {}",
                    root.type_name()
                ),
            ));
        }
    };
    let file_keys = entries
        .iter()
        .map(|e| (e.key.clone(), e.key_location.clone()))
        .collect();
    let mut normalized: Vec<Entry> = Vec::with_capacity(entries.len());
    for mut entry in entries {
        if let Some(known) = known_key(&entry.key) {
            if let Some(other) = normalized.iter().find(|e| e.key == known) {
                return Err(ConfigError::new(
                    ConfigErrorKind::Syntax,
                    Some(entry.key_location.clone()),
                    known,
                    format!(
                        "`{}` sets `{known}` again, already set at {}",
                        entry.key, other.key_location
                    ),
                ));
            }
            known.clone_into(&mut entry.key);
        }
        normalized.push(entry);
    }
    Ok((normalized, file_keys))
}

/// Parses an override's text as a YAML value (no `${VAR}` substitution).
fn override_value(
    text: &str,
    location: &Location,
    path: &str,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<ConfigValue, ConfigError> {
    let locator = Locator::Fixed(location);
    let raw = yaml::parse(text, locator).map_err(|e| e.into_config_error(locator, path))?;
    match raw {
        None => Ok(ConfigValue::new(Node::Null, location.clone())),
        Some(raw) => Resolver { lookup: None, warnings }.resolve(&raw, path),
    }
}

/// Sets `value` at the key path `segments` below `entries` (whose own path is `path`).
fn apply_override(
    entries: &mut Vec<Entry>,
    segments: &[&str],
    value: ConfigValue,
    location: &Location,
    path: &str,
) -> Result<(), ConfigError> {
    let (first, rest) = segments
        .split_first()
        .expect("override key paths have at least one segment");
    let key = if path.is_empty() {
        known_key(first).unwrap_or(first)
    } else {
        first
    };
    let key_path = if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    };
    let index = entries
        .iter()
        .position(|e| e.key == key)
        .or_else(|| entries.iter().position(|e| e.key.eq_ignore_ascii_case(key)));
    let index = if let Some(index) = index {
        index
    } else {
        entries.push(Entry {
            key: key.to_owned(),
            key_location: location.clone(),
            value: ConfigValue::new(Node::Null, location.clone()),
        });
        entries.len() - 1
    };
    let target = &mut entries[index].value;
    if rest.is_empty() {
        *target = value;
        return Ok(());
    }
    if target.is_null() {
        *target = ConfigValue::new(Node::Map(Vec::new()), location.clone());
    }
    let key_path_for_error = key_path.clone();
    match &mut target.node {
        Node::Map(children) => apply_override(children, rest, value, location, &key_path),
        _ => Err(ConfigError::new(
            ConfigErrorKind::Override,
            Some(location.clone()),
            key_path_for_error,
            format!(
                "cannot set a key inside it: it is {} (set at {}), not a mapping",
                target.type_name(),
                target.location()
            ),
        )),
    }
}

/// Reads Nameko's `[host:]port`: a bare port binds every interface (`8000` is
/// `0.0.0.0:8000`).
///
/// # Errors
///
/// What is wrong with `value`, with examples of what is expected.
pub fn parse_address(value: &str) -> Result<String, String> {
    let value = value.trim();
    if let Ok(port) = value.parse::<u16>() {
        return Ok(format!("0.0.0.0:{port}"));
    }
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(value.to_owned()),
        _ => Err(format!(
            "`{value}` is not an address; expected `[host:]port`, e.g. `8000` or `127.0.0.1:8000`"
        )),
    }
}
