//! The CLI's log output: format, filter (`RUST_LOG`, `LOGGING`) and extra layers.
//!
//! # Formats
//!
//! `human` (the default) is tracing-subscriber's full format: time, level, the spans
//! with their fields, target, message and fields. Lines logged inside a worker carry
//! the `worker` span, `worker{service=greeting entrypoint=greet call_id=greeting.greet.…
//! trace_id=…}`. `json` is one JSON object a line, with `timestamp`, `level`,
//! `target`, `fields` (the message is `fields.message`), `span` (the innermost span)
//! and `spans` (every span, outermost first): a worker's line has the `worker` span with
//! `service`, `entrypoint`, `call_id` and `trace_id`. `run --log-format json|human`
//! chooses; the flag's default comes from the environment variable `NAMEKO_LOG_FORMAT`.
//!
//! # Filter
//!
//! `RUST_LOG` when it is set and not empty; otherwise the config's `LOGGING` section in
//! Nameko's `logging.config.dictConfig` shape (see [`logging_directives`]); otherwise
//! `info`. [`FORCED_DIRECTIVES`] are always added.

use std::{collections::BTreeMap, fmt, io::IsTerminal};

use clap::ValueEnum;
use nameko_core::{Config, ConfigError};
use serde::{Deserialize, Deserializer, de};
use tracing_subscriber::{EnvFilter, Layer, Registry, layer::SubscriberExt, util::SubscriberInitExt};

/// The directives always added to `RUST_LOG`: lapin logs returned messages with their
/// headers and bodies at WARN, which would leak secrets.
pub const FORCED_DIRECTIVES: &[&str] = &["lapin::returned_messages=off"];

/// The crates the `LOGGING` logger name `nameko` stands for.
pub const NAMEKO_TARGETS: &[&str] = &[
    "nameko",
    "nameko_core",
    "nameko_extensions",
    "nameko_cli",
    "nameko_testing",
];

/// A layer added beside the log output by [`LogSetup::layer`].
pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync + 'static>;

/// How log lines are written: `run --log-format` (or `NAMEKO_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines (the default), colored on a terminal without `NO_COLOR`.
    #[default]
    Human,
    /// One JSON object a line.
    Json,
}

/// Builds and installs the process's log output.
///
/// ```
/// use nameko_cli::{LogFormat, LogSetup};
/// use nameko_core::Config;
///
/// let config = Config::from_yaml_str("LOGGING: {version: 1, root: {level: WARNING}}")?;
/// let setup = LogSetup::new().format(LogFormat::Json).rust_log(None).config(&config)?;
/// assert!(setup.filter().to_string().contains("warn"));
/// setup.init();
/// # Ok::<(), nameko_core::ConfigError>(())
/// ```
///
/// An extra layer — log streaming, metrics — goes beside the output with
/// [`layer`](LogSetup::layer); the `RUST_LOG`/`LOGGING` filter applies to the output
/// only, so the layer filters for itself (`Layer::with_filter`):
///
/// ```
/// use nameko_cli::LogSetup;
/// use tracing_subscriber::{Layer, filter::LevelFilter};
///
/// let extra = tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_filter(LevelFilter::DEBUG);
/// let setup = LogSetup::new().layer(Box::new(extra));
/// # drop(setup);
/// ```
#[must_use]
pub struct LogSetup {
    format: LogFormat,
    rust_log: Option<String>,
    logging: Option<String>,
    layers: Vec<BoxedLayer>,
}

impl fmt::Debug for LogSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSetup")
            .field("format", &self.format)
            .field("rust_log", &self.rust_log)
            .field("logging", &self.logging)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl Default for LogSetup {
    fn default() -> Self {
        Self::new()
    }
}

impl LogSetup {
    /// The human format, filtered by the process's `RUST_LOG` (default `info`).
    pub fn new() -> Self {
        Self {
            format: LogFormat::Human,
            rust_log: std::env::var("RUST_LOG").ok(),
            logging: None,
            layers: Vec::new(),
        }
    }

    /// The format of the lines.
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// Replaces the `RUST_LOG` value read from the environment (`None`: unset).
    pub fn rust_log(mut self, directives: Option<String>) -> Self {
        self.rust_log = directives;
        self
    }

    /// Reads the config's `LOGGING` section (see [`logging_directives`]); `RUST_LOG`
    /// still wins over it.
    ///
    /// # Errors
    ///
    /// A located [`ConfigError`] for a malformed or unsupported part of `LOGGING`.
    pub fn config(mut self, config: &Config) -> Result<Self, ConfigError> {
        self.logging = logging_directives(config)?;
        Ok(self)
    }

    /// Adds a layer beside the log output (it sees every event its own filter lets
    /// through; the output's filter does not apply to it).
    pub fn layer(mut self, layer: BoxedLayer) -> Self {
        self.layers.push(layer);
        self
    }

    /// The output's filter: `RUST_LOG` if set and not empty, else `LOGGING`, else
    /// `info`; plus [`FORCED_DIRECTIVES`].
    pub fn filter(&self) -> EnvFilter {
        env_filter(self.rust_log.as_deref(), self.logging.as_deref())
    }

    /// Installs the output on stderr and the extra layers as the global subscriber.
    /// Returns false, doing nothing, when one is already set.
    pub fn init(self) -> bool {
        let filter = self.filter();
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let output: BoxedLayer = match self.format {
            LogFormat::Human => tracing_subscriber::fmt::layer()
                .fmt_fields(crate::fields::LeanFields)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr)
                .boxed(),
        };
        // The slot `run` fills when `LOG_STREAM` opts services in (`tail`): it streams
        // what the output shows.
        let stream = crate::log_stream::log_stream_layer().boxed();
        if self.layers.is_empty() {
            // Both under one global filter: a per-layer filter costs a span lookup on
            // every enter and exit of every span (a worker's span is entered on each
            // poll of its future), for each layer it filters.
            return tracing_subscriber::registry()
                .with(vec![output, stream])
                .with(filter)
                .try_init()
                .is_ok();
        }
        // Extra layers filter for themselves: the output's filter must not apply to them.
        let stream_filter = self.filter();
        let mut layers = self.layers;
        layers.insert(0, output.with_filter(filter).boxed());
        layers.push(stream.with_filter(stream_filter).boxed());
        tracing_subscriber::registry().with(layers).try_init().is_ok()
    }
}

/// Installs the CLI's default log output: the human format on stderr, filtered by
/// `RUST_LOG` (default `info`) plus [`FORCED_DIRECTIVES`], colored only on a terminal
/// without `NO_COLOR`. Returns false, doing nothing, when a global subscriber is
/// already set. Beside the output sits the [`LogStreamLayer`](crate::LogStreamLayer),
/// which `run` feeds when `LOG_STREAM` opts services in (`tail`). `run` installs its own ([`LogSetup`] with `--log-format` and
/// `LOGGING`) when [`Cli::run`](crate::Cli::run) or [`Cli::main`](crate::Cli::main)
/// drive it; the other commands this one.
///
/// ```
/// nameko_cli::init_logging();
/// assert!(!nameko_cli::init_logging(), "already installed");
/// ```
pub fn init_logging() -> bool {
    LogSetup::new().init()
}

fn env_filter(rust_log: Option<&str>, logging: Option<&str>) -> EnvFilter {
    let mut filter = match rust_log.filter(|s| !s.trim().is_empty()) {
        Some(directives) => EnvFilter::try_new(directives).unwrap_or_else(|err| {
            eprintln!("warning: ignoring RUST_LOG={directives:?}: {err}");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_new(logging.unwrap_or("info")).unwrap_or_else(|err| {
            // `logging_directives` only makes directives that parse.
            eprintln!("warning: ignoring LOGGING: {err}");
            EnvFilter::new("info")
        }),
    };
    for directive in FORCED_DIRECTIVES {
        filter = filter.add_directive(directive.parse().expect("the forced directives are valid"));
    }
    filter
}

// ===== LOGGING =====

/// The tracing filter directives of the config's `LOGGING` section, Nameko's
/// `logging.config.dictConfig` shape, or `None` when there is no such section.
///
/// ```yaml
/// LOGGING:
///   version: 1
///   root: {level: INFO}              # the default level
///   loggers:
///     nameko: {level: DEBUG}         # every nameko crate
///     nameko_extensions::amqp: {level: WARNING}
///     my_service.handlers: {level: DEBUG}   # target my_service::handlers
/// ```
///
/// - `version` must be 1 (as Python requires).
/// - `root.level` is the default level; without it, `info`.
/// - `loggers.<name>.level` sets the level of a target and everything under it. The
///   name `nameko` stands for every nameko crate ([`NAMEKO_TARGETS`]); other names are
///   tracing targets, with Python's dots read as `::` (`my_service.db` is
///   `my_service::db`). Names hold letters, digits, `_`, `.` and `::`.
/// - Levels: `CRITICAL` and `ERROR` → error, `WARNING`/`WARN` → warn, `INFO`, `DEBUG`,
///   `TRACE`, and Python's numbers (50, 40, 30, 20, 10; lower ones → trace), in any
///   case. `NOTSET` on a logger means "as its parent" (no directive); on the root,
///   everything (trace).
/// - `handlers`, `formatters` and `filters` are Python's output plumbing: nameko-rs
///   always writes to stderr in the `--log-format` format, so they are accepted and
///   ignored (a config shared with Python services keeps working), as are
///   `disable_existing_loggers` and each logger's `handlers` and `propagate`.
/// - Any other key, `incremental: true`, a bad level or name is a [`ConfigError`]
///   naming the file, line and key path.
///
/// `RUST_LOG`, when set, wins over `LOGGING` entirely.
///
/// ```
/// use nameko_core::Config;
///
/// let config = Config::from_yaml_str(
///     "LOGGING: {version: 1, root: {level: WARNING}, loggers: {nameko.rpc: {level: DEBUG}}}",
/// )?;
/// assert_eq!(nameko_cli::logging_directives(&config)?.as_deref(), Some("warn,nameko::rpc=debug"));
///
/// let bad = Config::from_yaml_str("LOGGING: {version: 1, root: {level: LOUD}}")?;
/// let err = nameko_cli::logging_directives(&bad).unwrap_err().to_string();
/// assert!(err.contains("LOGGING.root.level"), "{err}");
/// # Ok::<(), nameko_core::ConfigError>(())
/// ```
///
/// # Errors
///
/// A located [`ConfigError`] for a malformed or unsupported part.
pub fn logging_directives(config: &Config) -> Result<Option<String>, ConfigError> {
    if config
        .get("LOGGING")
        .is_none_or(nameko_core::config::ConfigValue::is_null)
    {
        return Ok(None);
    }
    let section: LoggingSection = config.section("LOGGING")?;
    let mut directives = vec![match section.root.and_then(|root| root.level) {
        Some(LevelName(level)) => level.unwrap_or("trace").to_owned(),
        None => "info".to_owned(),
    }];
    for (LoggerName(name), logger) in section.loggers {
        let Some(LevelName(Some(level))) = logger.level else {
            continue;
        };
        if name == "nameko" {
            directives.extend(NAMEKO_TARGETS.iter().map(|target| format!("{target}={level}")));
        } else {
            directives.push(format!("{name}={level}"));
        }
    }
    Ok(Some(directives.join(",")))
}

/// The fields only checked (`version`, `incremental`) or accepted and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "some fields are checked while deserializing, others ignored")]
struct LoggingSection {
    version: Version,
    #[serde(default)]
    root: Option<Logger>,
    #[serde(default)]
    loggers: BTreeMap<LoggerName, Logger>,
    #[serde(default)]
    incremental: Incremental,
    #[serde(default)]
    disable_existing_loggers: Option<bool>,
    #[serde(default)]
    handlers: Option<de::IgnoredAny>,
    #[serde(default)]
    formatters: Option<de::IgnoredAny>,
    #[serde(default)]
    filters: Option<de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[expect(dead_code, reason = "`handlers`, `propagate` and `filters` are accepted and ignored")]
struct Logger {
    #[serde(default)]
    level: Option<LevelName>,
    #[serde(default)]
    handlers: Option<de::IgnoredAny>,
    #[serde(default)]
    propagate: Option<bool>,
    #[serde(default)]
    filters: Option<de::IgnoredAny>,
}

/// `version: 1`. Errors are raised inside the visitors, so the config names the node.
struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl de::Visitor<'_> for Visit {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the dictConfig version, 1")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Version, E> {
                if v == 1 {
                    Ok(Version)
                } else {
                    Err(E::custom(format!(
                        "unsupported dictConfig version {v}: only version 1 exists"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Version, E> {
                self.visit_u64(u64::try_from(v).unwrap_or(u64::MAX))
            }
        }
        deserializer.deserialize_u64(Visit)
    }
}

/// `incremental: false` (or absent): incremental configuration has no meaning here.
#[derive(Default)]
struct Incremental;

impl<'de> Deserialize<'de> for Incremental {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl de::Visitor<'_> for Visit {
            type Value = Incremental;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Incremental, E> {
                if v {
                    Err(E::custom(
                        "`incremental: true` is not supported: nameko-rs reads LOGGING once, at start",
                    ))
                } else {
                    Ok(Incremental)
                }
            }
        }
        deserializer.deserialize_bool(Visit)
    }
}

/// A level: `Some(tracing level)` or `None` for `NOTSET`.
struct LevelName(Option<&'static str>);

const LEVELS: &str = "a level: CRITICAL, ERROR, WARNING, INFO, DEBUG, TRACE, NOTSET or a number";

impl<'de> Deserialize<'de> for LevelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl de::Visitor<'_> for Visit {
            type Value = LevelName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(LEVELS)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<LevelName, E> {
                Ok(LevelName(Some(match n {
                    40.. => "error",
                    30.. => "warn",
                    20.. => "info",
                    10.. => "debug",
                    1.. => "trace",
                    0 => return Ok(LevelName(None)),
                    _ => return Err(E::custom(format!("expected {LEVELS}, got {n}"))),
                })))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<LevelName, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<LevelName, E> {
                Ok(LevelName(Some(match name.to_ascii_uppercase().as_str() {
                    "CRITICAL" | "FATAL" | "ERROR" => "error",
                    "WARNING" | "WARN" => "warn",
                    "INFO" => "info",
                    "DEBUG" => "debug",
                    "TRACE" => "trace",
                    "NOTSET" => return Ok(LevelName(None)),
                    _ => return Err(E::custom(format!("expected {LEVELS}, got `{name}`"))),
                })))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// A logger name as a tracing target (`.` → `::`).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct LoggerName(String);

impl<'de> Deserialize<'de> for LoggerName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl de::Visitor<'_> for Visit {
            type Value = LoggerName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a logger name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<LoggerName, E> {
                let target = name.replace("::", ".").replace('.', "::");
                let valid = !name.is_empty()
                    && target
                        .split("::")
                        .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                if !valid {
                    return Err(E::custom(format!(
                        "logger `{name}` is not a module path: use letters, digits and `_`, separated by `.` or `::`"
                    )));
                }
                Ok(LoggerName(target))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returned_messages_stay_off() {
        for rust_log in [None, Some("debug"), Some("lapin=trace"), Some("not a =directive")] {
            let filter = env_filter(rust_log, None).to_string();
            assert!(
                filter.contains("lapin::returned_messages=off"),
                "{rust_log:?}: {filter}"
            );
        }
        assert!(env_filter(None, None).to_string().contains("info"));
    }

    fn directives(yaml: &str) -> Result<Option<String>, String> {
        let config = Config::loader().yaml_str("app.yaml", yaml).load().unwrap();
        logging_directives(&config).map_err(|e| e.to_string())
    }

    #[test]
    fn logging_maps_to_directives() {
        assert_eq!(directives("max_workers: 3"), Ok(None));
        assert_eq!(directives("LOGGING:\n  version: 1\n"), Ok(Some("info".to_owned())));
        let yaml = "LOGGING:
  version: 1
  disable_existing_loggers: false
  formatters: {simple: {format: '%(message)s'}}
  handlers: {console: {class: logging.StreamHandler, formatter: simple}}
  root: {level: WARNING, handlers: [console]}
  loggers:
    nameko: {level: DEBUG, propagate: true}
    nameko_extensions::amqp: {level: 40}
    my_service.db: {level: info}
    quiet: {level: NOTSET}
";
        assert_eq!(
            directives(yaml).unwrap().unwrap(),
            "warn,my_service::db=info,nameko=debug,nameko_core=debug,nameko_extensions=debug,nameko_cli=debug,\
             nameko_testing=debug,nameko_extensions::amqp=error"
        );
        assert_eq!(
            directives("LOGGING: {version: 1, root: {level: NOTSET}}"),
            Ok(Some("trace".to_owned()))
        );
        // Lowercase keys are found too (LOGGING is a known Nameko key).
        assert_eq!(
            directives("logging: {version: 1, root: {level: 10}}"),
            Ok(Some("debug".to_owned()))
        );
    }

    #[test]
    fn bad_logging_is_a_located_error() {
        for (yaml, expected) in [
            ("LOGGING: {root: {level: INFO}}", ["app.yaml:1:", "LOGGING", "version"]),
            (
                "LOGGING: {version: 2}",
                ["app.yaml:1:", "LOGGING.version", "only version 1"],
            ),
            (
                "LOGGING:\n  version: 1\n  root: {level: LOUD}\n",
                ["app.yaml:3:", "LOGGING.root.level", "got `LOUD`"],
            ),
            (
                "LOGGING:\n  version: 1\n  loggers:\n    bad-name: {level: INFO}\n",
                ["app.yaml:4:", "LOGGING.loggers", "not a module path"],
            ),
            (
                "LOGGING:\n  version: 1\n  colour: red\n",
                ["app.yaml:3:", "LOGGING", "colour"],
            ),
            (
                "LOGGING:\n  version: 1\n  incremental: true\n",
                ["app.yaml:3:", "LOGGING.incremental", "not supported"],
            ),
            (
                "LOGGING:\n  version: 1\n  loggers: {x: {level: INFO, lvl: 3}}\n",
                ["app.yaml:3:", "LOGGING.loggers", "lvl"],
            ),
            ("LOGGING: verbose", ["app.yaml:1:", "LOGGING", "invalid type"]),
        ] {
            let err = directives(yaml).expect_err(yaml);
            for part in expected {
                assert!(err.contains(part), "{yaml:?}: `{err}` lacks `{part}`");
            }
        }
    }

    #[test]
    fn rust_log_wins_over_logging() {
        let filter = env_filter(Some("error"), Some("debug")).to_string();
        assert!(filter.contains("error") && !filter.contains("debug"), "{filter}");
        let filter = env_filter(Some("  "), Some("debug,nameko=trace")).to_string();
        assert!(filter.contains("nameko=trace"), "{filter}");
    }
}
