//! The CLI's log output.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// The directives always added to `RUST_LOG`: lapin logs returned messages with their
/// headers and bodies at WARN, which would leak secrets.
pub const FORCED_DIRECTIVES: &[&str] = &["lapin::returned_messages=off"];

/// Installs the CLI's log output: `tracing-subscriber`'s fmt layer on stderr, filtered
/// by `RUST_LOG` (default `info`) plus [`FORCED_DIRECTIVES`], colored only on a
/// terminal without `NO_COLOR`, plus the [`LogStreamLayer`](crate::LogStreamLayer) that
/// `run` feeds when `LOG_STREAM` opts services in. Returns false, doing
/// nothing, when a global subscriber is already set. [`Cli::run`](crate::Cli::run) and
/// [`Cli::main`](crate::Cli::main) call it.
///
/// ```
/// nameko_cli::init_logging();
/// assert!(!nameko_cli::init_logging(), "already installed");
/// ```
pub fn init_logging() -> bool {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .finish()
        // The slot `run` fills when `LOG_STREAM` opts services in (`tail`).
        .with(crate::log_stream::log_stream_layer())
        .try_init()
        .is_ok()
}

fn env_filter(rust_log: Option<&str>) -> EnvFilter {
    let mut filter = match rust_log.filter(|s| !s.trim().is_empty()) {
        Some(directives) => EnvFilter::try_new(directives).unwrap_or_else(|err| {
            eprintln!("warning: ignoring RUST_LOG={directives:?}: {err}");
            EnvFilter::new("info")
        }),
        None => EnvFilter::new("info"),
    };
    for directive in FORCED_DIRECTIVES {
        filter = filter.add_directive(directive.parse().expect("the forced directives are valid"));
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returned_messages_stay_off() {
        for rust_log in [None, Some("debug"), Some("lapin=trace"), Some("not a =directive")] {
            let filter = env_filter(rust_log).to_string();
            assert!(
                filter.contains("lapin::returned_messages=off"),
                "{rust_log:?}: {filter}"
            );
        }
        assert!(env_filter(None).to_string().contains("info"));
    }
}
