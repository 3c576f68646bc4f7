//! The command line's arguments, as parsed by [`Cli::parse`](crate::Cli::parse).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    client::{EmitArgs, RequestArgs, SubscribeArgs},
    completions::CompletionsArgs,
    shell::ShellArgs,
};

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "nameko",
    about = "Runs nameko-rs services and talks to a Nameko cluster (Rust or Python services)",
    disable_help_subcommand = true
)]
pub(crate) struct Invocation {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// A subcommand with its arguments.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Runs services until SIGTERM or Ctrl-C (a second one kills).
    Run(RunArgs),
    /// Lists the services built into this binary, with their entrypoints.
    List,
    /// Prints the merged configuration, with passwords masked.
    ShowConfig(ConfigArgs),
    /// Calls SERVICE.METHOD over RPC and prints the result as JSON.
    Request(RequestArgs),
    /// Dispatches an event as SERVICE, as its event dispatcher would.
    Emit(EmitArgs),
    /// Prints the events of SERVICE as JSON lines until Ctrl-C.
    Subscribe(SubscribeArgs),
    /// A prompt for these commands, with history and tab completion; reads a script
    /// when standard input is not a terminal.
    Shell(ShellArgs),
    /// Writes a completion script for bash, zsh or fish.
    Completions(CompletionsArgs),
    /// Lists the services of the cluster with their instance counts.
    Discover(crate::discover::DiscoverArgs),
    /// Shows a service's entrypoints, parameters and doc lines (its introspection RPC).
    Inspect(crate::inspect::InspectArgs),
    /// Streams the log lines of every instance of services that opted in (`LOG_STREAM`).
    Tail(crate::tail::TailArgs),
}

/// Where the configuration comes from: `--config`, `--define`, `--broker`.
#[derive(Clone, Debug, Default, Args)]
#[non_exhaustive]
pub struct ConfigArgs {
    /// A YAML config file (`${VAR}` and `${VAR:default}` are substituted).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides a config key (`.` for nesting; the value is parsed as YAML); repeatable.
    #[arg(long, short = 'd', value_name = "KEY=VALUE")]
    pub define: Vec<String>,
    /// The AMQP broker URI (sets `AMQP_URI`, overriding everything else; implies AMQP).
    #[arg(long, value_name = "URI")]
    pub broker: Option<String>,
}

/// The arguments of `run`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct RunArgs {
    /// The services to run, by name (all registered services when none is named).
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Config file, overrides and broker.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The message transport: AMQP (RabbitMQ, the default) or an in-process memory broker.
    #[arg(long, value_enum, value_name = "TRANSPORT")]
    pub transport: Option<TransportKind>,
    /// How long a graceful stop may take before running workers are killed.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub stop_timeout: Duration,
    /// How log lines are written: human-readable, or one JSON object a line.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        env = "NAMEKO_LOG_FORMAT",
        default_value = "human"
    )]
    pub log_format: crate::LogFormat,
    /// Runs several instances of a service in this process (`greeting=3`); repeatable,
    /// or a comma-separated list.
    #[arg(long, value_name = "SERVICE=N", value_delimiter = ',', value_parser = crate::instances::parse_instances)]
    pub instances: Vec<(String, usize)>,
}

/// The transport asked for with `--transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum TransportKind {
    /// RabbitMQ over AMQP 0-9-1 (the default).
    Amqp,
    /// One in-process memory broker shared by every service of the process.
    Memory,
}

pub(crate) fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, got `{text}`"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("expected a non-negative number of seconds, got `{text}`"))
}
