//! The nameko-rs command line, as a library a service binary calls.
//!
//! Rust cannot load services at run time, so `nameko run` is *your* binary: its `main`
//! hands the command line to [`Cli`], which finds the services linked into it (every
//! `#[nameko::service]`, or [`register_service!`](nameko_core::register_service)),
//! builds their resources with your hook and runs them until SIGTERM or Ctrl-C.
//!
//! ```no_run
//! use std::sync::Arc;
//! use nameko_cli::Cli;
//! use nameko_core::{BoxError, Resources};
//!
//! trait UserRepo: Send + Sync {}
//! struct InMemoryUsers;
//! impl UserRepo for InMemoryUsers {}
//!
//! fn main() -> std::process::ExitCode {
//!     Cli::new()
//!         .name("greeting")
//!         .version(env!("CARGO_PKG_VERSION"))
//!         .resources(|config| async move {
//!             let _database = config.get("DATABASE_URL");
//!             Ok::<_, BoxError>(Resources::new().with::<dyn UserRepo>(Arc::new(InMemoryUsers)))
//!         })
//!         .main()
//! }
//! ```
//!
//! # Commands
//!
//! Every service binary has them all; the standalone `nameko` binary
//! ([`Cli::standalone`]) has all but `run` and `list`, which explain how to build a
//! service binary. `VERB --help` shows each one's options and examples; the guide's
//! chapter "The command line" has more.
//!
//! - `run [SERVICE...] [--config FILE] [--define KEY=VALUE]... [--transport memory|amqp]
//!   [--broker URI] [--stop-timeout SECS] [--log-format human|json]`: runs the named
//!   services (all when none is named). The first SIGTERM or Ctrl-C stops gracefully
//!   within `--stop-timeout` (default 30 s), announcing how many workers it waits
//!   for; a second one, or the deadline, kills the running workers (their unacknowledged
//!   messages go back to the broker). Logs go to stderr, human-readable or one JSON
//!   object a line (`--log-format`, default from `NAMEKO_LOG_FORMAT`), filtered by
//!   `RUST_LOG` or else the config's `LOGGING` (Nameko's dictConfig shape; see
//!   [`logging_directives`]); every line a worker logs names its service, entrypoint,
//!   call id and trace id, and `RUST_LOG=debug` adds a line per worker with its
//!   outcome and duration.
//! - `list`: the services built into the binary, with their entrypoints.
//! - `show-config [--config FILE] [--define KEY=VALUE]... [--broker URI]`: the merged
//!   configuration as YAML, passwords masked.
//! - `request SERVICE.METHOD [JSON] [--timeout SECS] [--context KEY=VALUE]... [--raw]`:
//!   calls a method (a JSON object gives keyword arguments, an array positional ones;
//!   `-` reads stdin) and prints the result as indented JSON (`--raw`: compact, one
//!   line); a remote error goes to stderr as `exc_type: value`. `--context` sends
//!   `nameko.KEY` headers.
//! - `emit SERVICE EVENT [JSON] [--context KEY=VALUE]...`: dispatches an event to
//!   `SERVICE.events`, as that service's dispatcher would.
//! - `subscribe SERVICE EVENT... [--count N]`: prints each event as a JSON line
//!   `{"service", "event", "headers", "payload"}` until SIGTERM or Ctrl-C, through an
//!   exclusive, auto-deleted queue of its own.
//! - `shell`: these commands at a prompt with history and tab completion; when stdin is
//!   not a terminal, a script read line by line (it goes on after a failure and exits
//!   with 1 if any command failed).
//! - `completions bash|zsh|fish`: a completion script.
//!
//! The client verbs (`request`, `emit`, `subscribe`, `shell`) take `--config`,
//! `--define` and `--broker` too, and read `AMQP_URI`, `rpc_exchange`, `HEARTBEAT`
//! and `AMQP_SSL` from the merged config.
//! - `run --instances SERVICE=N`: runs `N` instances of a service in this process
//!   (repeatable, or `greeting=3,listen=2`), each with its own consumers, as `N`
//!   processes would; their log lines carry `instance=n/N`.
//! - `discover [SERVICE...]`: the services of the cluster (Rust and Python) with their
//!   instance counts, from the RabbitMQ management API (`MANAGEMENT_URI`, default
//!   `http://<AMQP user>:<password>@<AMQP host>:15672/`); without it, says so and checks
//!   each named service's `rpc-<service>` queue. Exit 1 when a named service is absent.
//! - `inspect SERVICE [--json]`: a service's entrypoints, parameters and doc lines, from
//!   the built-in introspection RPC `<service>._nameko_inspect`
//!   ([`INSPECT_METHOD`](nameko_core::describe::INSPECT_METHOD)) every Rust service with
//!   an RPC entrypoint answers without a worker. A Python Nameko service is reported as
//!   not introspectable (exit 0); an unknown service exits 1.
//! - `tail SERVICE...`: prints the log lines of every instance of the services until
//!   SIGTERM or Ctrl-C. A service opts in with `LOG_STREAM: true` (or a list of
//!   services) in its config; see [`log_stream`].
//!
//!
//! Configuration precedence: the file < `NAMEKO_<KEY>` environment variables <
//! `--define` < `--broker`.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `shell` | yes | the interactive `shell`'s line editor (rustyline): history, tab completion; without it, plain lines |
//! | `amqp-tls` | no | `amqps://` and `AMQP_SSL` for every verb |
//!
//! # Transports
//!
//! AMQP (RabbitMQ) is the default; `--broker` and `AMQP_URI` say where it is.
//! `--transport memory` runs every service of the process on one in-memory broker; it
//! must be asked for, and cannot be combined with `--broker`. There is never a silent
//! fallback from one to the other: when RabbitMQ cannot be reached, `run` retries with
//! backoff, logging each attempt (password masked) and reporting not ready, and starts
//! the services once it connects. Readiness changes are logged.
//!
//! # Exit codes
//!
//! `0` on success: a graceful stop, a signal while waiting for RabbitMQ, a successful
//! command, `subscribe` stopped by a signal or `--count`. `1` for remote and runtime
//! errors: a remote error, an unknown service, an RPC timeout, RabbitMQ unreachable
//! for a client verb, services that cannot start (resources hook, unknown service, a
//! signal during the rest of startup) or had to be killed, failed commands of a
//! scripted `shell`. `2` for usage and configuration errors: an unknown verb or option,
//! JSON that does not parse (the message gives the line, the column and what was
//! expected), a bad config file, `--define`, `NAMEKO_*` variable, `AMQP_URI` or
//! `AMQP_SSL`, and `run`/`list` in the standalone binary. See [`CliError::exit_code`].

mod args;
mod client;
mod completions;
mod discover;
mod examples;
mod fields;
mod inspect;
mod instances;
pub mod log_stream;
mod logging;
mod management;
mod mask;
mod parser;
mod shell;
mod signals;
mod tail;
mod transport;

use std::{
    ffi::OsString,
    fmt,
    future::Future,
    io::{self, Write},
    pin::Pin,
    process::ExitCode,
    time::Duration,
};

use nameko_core::{BoxError, Config, ConfigError, ContainerError, Resources, ServiceRunner, Shutdown, registry};
use nameko_extensions::{amqp::ConfigConnectError, events::DispatchError, rpc::RpcError};

use crate::parser::Parser;
pub use crate::{
    args::{Command, ConfigArgs, RunArgs, TransportKind},
    client::{EmitArgs, RequestArgs, SubscribeArgs, Target},
    completions::{CompletionShell, CompletionsArgs},
    discover::DiscoverArgs,
    inspect::InspectArgs,
    log_stream::{LogStreamLayer, log_stream_layer},
    logging::{BoxedLayer, FORCED_DIRECTIVES, LogFormat, LogSetup, NAMEKO_TARGETS, init_logging, logging_directives},
    mask::{MASK, mask_secrets, render_config},
    shell::ShellArgs,
    signals::{Signal, SignalSender, Signals},
    tail::TailArgs,
    transport::{Transport, TransportError},
};

/// The `tracing-subscriber` the log output is built with: build layers for
/// [`Cli::log_layer`] and [`LogSetup::layer`] with it.
pub use tracing_subscriber;

type ResourcesFuture = Pin<Box<dyn Future<Output = Result<Resources, BoxError>> + Send>>;
type ResourcesHook = Box<dyn FnOnce(Config) -> ResourcesFuture + Send>;

/// Why a command failed; printed as `error: ...` (passwords masked; a remote error as
/// `exc_type: value`) before exit code [`exit_code`](CliError::exit_code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The configuration could not be loaded; the message says where.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The `resources` hook failed.
    #[error("the resources hook failed: {0}")]
    Resources(#[source] BoxError),
    /// A service could not be found or started.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// Signal handlers could not be installed.
    #[error("cannot listen for SIGTERM and Ctrl-C: {0}")]
    Signals(#[source] io::Error),
    /// The tokio runtime could not be built.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[source] io::Error),
    /// `run` found no service to run.
    #[error(
        "no services are registered in this binary: a library crate holding services must be linked into it \
         (`use my_services as _;`)"
    )]
    NoServices,
    /// A signal arrived before the services had started.
    #[error("{0} received while starting; nothing was left running")]
    Interrupted(Signal),
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    /// The services did not stop in time, or a second signal asked to kill them.
    #[error("the services were killed before they could stop gracefully")]
    Killed,
    /// A command-line argument is wrong in a way clap cannot see (JSON that does not
    /// parse, a verb the shell does not take); the message says where.
    #[error("{0}")]
    Usage(String),
    /// `run` or `list` in the standalone binary, which holds no services.
    #[error("{STANDALONE_HINT}")]
    Standalone,
    /// RabbitMQ could not be reached (or `AMQP_URI`/`AMQP_SSL` are invalid) for a client
    /// verb; the URI's password is masked.
    #[error("{}", client::connect_message(.uri, .error))]
    Connect {
        /// The URI, its password masked.
        uri: String,
        /// Why.
        #[source]
        error: ConfigConnectError,
    },
    /// An RPC call failed: a remote error (printed as `exc_type: value`), an unknown
    /// service, a timeout, a transport failure.
    #[error("{}", rpc_message(.target, .error))]
    Rpc {
        /// `service.method`.
        target: String,
        /// Why.
        #[source]
        error: RpcError,
    },
    /// `emit` could not dispatch its event.
    #[error(transparent)]
    Dispatch(DispatchError),
    /// The broker did not take the connection in time, refused a declare or a
    /// consumer, or a subscription ended.
    #[error("{0}")]
    Broker(String),
    /// A signal cancelled a command before it finished.
    #[error("{0} received: the command was cancelled")]
    Cancelled(Signal),
    /// Commands of a scripted `shell` failed (each one's error was printed).
    #[error("{0} shell command(s) failed")]
    ShellFailures(usize),
    /// `discover`, `inspect`, `tail` or the log stream failed; the message says why.
    #[error("{0}")]
    Discovery(String),
    /// A setting of the merged config has a value the command cannot use
    /// (`MANAGEMENT_URI`, `LOG_STREAM`, `LOG_EXCHANGE`); the message says which and where.
    #[error("{0}")]
    Setting(String),
}

impl CliError {
    /// The process's exit code for this error: `2` for usage and configuration errors
    /// (a bad config file, `--define`, `NAMEKO_*` variable, `AMQP_URI`, `AMQP_SSL` or
    /// JSON argument; `run`/`list` in the standalone binary), `1` for the rest (remote
    /// errors, unknown services, timeouts, RabbitMQ unreachable, services that failed or
    /// had to be killed).
    ///
    /// ```
    /// use nameko_cli::CliError;
    ///
    /// assert_eq!(CliError::Usage("bad JSON".into()).exit_code(), 2);
    /// assert_eq!(CliError::Killed.exit_code(), 1);
    /// ```
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_)
            | Self::Setting(_)
            | Self::Usage(_)
            | Self::Standalone
            | Self::Transport(TransportError::InvalidUri { .. } | TransportError::Tls(_))
            | Self::Connect {
                error: ConfigConnectError::Uri(_) | ConfigConnectError::Tls(_),
                ..
            } => 2,
            Self::Rpc {
                error: RpcError::InvalidTarget(_),
                ..
            } => 2,
            _ => 1,
        }
    }
}

fn rpc_message(target: &str, error: &RpcError) -> String {
    match error {
        RpcError::Remote(remote) => format!("{}: {}", remote.exc_type(), remote.value()),
        RpcError::UnknownService(service) => format!(
            "Unknown service `{service}`: nothing consumes `rpc-{service}` on this RPC exchange (is the service \
             running, on this broker and vhost, with the same `rpc_exchange`?)"
        ),
        RpcError::Timeout { after, .. } => format!(
            "no reply from `{target}` within {}s (--timeout sets another limit; 0 waits forever)",
            after.as_secs_f64()
        ),
        other => other.to_string(),
    }
}

/// The command line of a service binary: `run`, `list`, `show-config`, `request`,
/// `emit`, `subscribe`, `shell`, `completions`.
///
/// Build it with [`Cli::new`], give it a [`resources`](Cli::resources) hook, and end
/// `main` with [`main`](Cli::main) (or [`run`](Cli::run) inside your own runtime).
#[must_use]
pub struct Cli {
    name: Option<&'static str>,
    version: Option<&'static str>,
    resources: Option<ResourcesHook>,
    standalone: bool,
    install_logging: bool,
    log_layers: Vec<BoxedLayer>,
}

impl Default for Cli {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Cli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cli")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("resources", &self.resources.as_ref().map(|_| "<hook>"))
            .field("standalone", &self.standalone)
            .field("log_layers", &self.log_layers.len())
            .finish()
    }
}

impl Cli {
    /// A command line running the services registered in this binary, with no
    /// resources of its own.
    ///
    /// ```
    /// let cli = nameko_cli::Cli::new();
    /// # drop(cli);
    /// ```
    pub fn new() -> Self {
        Self {
            name: None,
            version: None,
            resources: None,
            standalone: false,
            install_logging: false,
            log_layers: Vec::new(),
        }
    }

    /// The command line of the standalone `nameko` binary, which holds no services:
    /// every other verb works; `run` and `list` explain that they belong to the user's
    /// own binary and exit with 2.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use nameko_cli::{Cli, Signals};
    ///
    /// let (mut out, mut err) = (Vec::new(), Vec::new());
    /// let (_sender, signals) = Signals::channel();
    /// let code = Cli::standalone().run_from(["nameko", "run"], signals, &mut out, &mut err).await;
    /// assert_eq!(code, std::process::ExitCode::from(2));
    /// assert!(String::from_utf8(err).unwrap().contains("Cli::new()"));
    /// # }
    /// ```
    pub fn standalone() -> Self {
        Self {
            standalone: true,
            ..Self::new()
        }
    }

    /// The program name shown in `--help` and usage lines (default: the binary's file
    /// name).
    ///
    /// ```
    /// let cli = nameko_cli::Cli::new().name("greeting");
    /// # drop(cli);
    /// ```
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = Some(name);
        self
    }

    /// The version `--version` prints (no `--version` flag without it).
    ///
    /// ```
    /// let cli = nameko_cli::Cli::new().version(env!("CARGO_PKG_VERSION"));
    /// # drop(cli);
    /// ```
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// The hook that builds the resources of every service (database pools, clients,
    /// repositories: what `Dep<T>` fields receive), given the merged config. It runs
    /// once, after the config loaded and the services were found, before any service
    /// starts. When it fails, `run` prints the error and exits with 1.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use nameko_cli::Cli;
    /// use nameko_core::{BoxError, Resources};
    ///
    /// struct Greeting(String);
    ///
    /// let cli = Cli::new().resources(|config| async move {
    ///     let salutation = config.get_str("SALUTATION").unwrap_or("Hello").to_owned();
    ///     Ok::<_, BoxError>(Resources::new().with(Arc::new(Greeting(salutation))))
    /// });
    /// # drop(cli);
    /// ```
    pub fn resources<F, Fut, E>(mut self, hook: F) -> Self
    where
        F: FnOnce(Config) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resources, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.resources = Some(Box::new(move |config| {
            let future = hook(config);
            Box::pin(async move { future.await.map_err(Into::into) })
        }));
        self
    }

    /// Adds a tracing layer beside `run`'s log output (see [`LogSetup::layer`]): it is
    /// installed with the output when [`run`](Cli::run) or [`main`](Cli::main) drive
    /// `run`, and filters for itself (`RUST_LOG`/`LOGGING` filter the output only).
    ///
    /// ```
    /// use tracing_subscriber::{Layer, filter::LevelFilter};
    ///
    /// let audit = tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_filter(LevelFilter::WARN);
    /// let cli = nameko_cli::Cli::new().log_layer(Box::new(audit));
    /// # drop(cli);
    /// ```
    pub fn log_layer(mut self, layer: BoxedLayer) -> Self {
        self.log_layers.push(layer);
        self
    }

    /// Builds a multi-threaded tokio runtime and [`run`](Cli::run)s on it: the end of a
    /// service binary's `main`.
    ///
    /// ```no_run
    /// fn main() -> std::process::ExitCode {
    ///     nameko_cli::Cli::new().main()
    /// }
    /// ```
    pub fn main(self) -> ExitCode {
        match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(self.run()),
            Err(err) => {
                let _ = report(&mut io::stderr(), &CliError::Runtime(err));
                ExitCode::FAILURE
            }
        }
    }

    /// Runs the command line of this process (its arguments, SIGTERM and Ctrl-C,
    /// stdout and stderr) inside the caller's tokio runtime, installing the log output:
    /// for `run`, once its config is loaded, in the `--log-format` format filtered by
    /// `RUST_LOG` or the config's `LOGGING` ([`LogSetup`]); for the other commands,
    /// [`init_logging`].
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> std::process::ExitCode {
    ///     // ... your own setup ...
    ///     nameko_cli::Cli::new().run().await
    /// }
    /// ```
    pub async fn run(mut self) -> ExitCode {
        self.install_logging = true;
        let signals = match Signals::os() {
            Ok(signals) => signals,
            Err(err) => {
                let _ = report(&mut io::stderr(), &CliError::Signals(err));
                return ExitCode::FAILURE;
            }
        };
        self.run_from(std::env::args_os(), signals, io::stdout(), io::stderr())
            .await
    }

    /// Parses `args` (the first is the program name) into a [`Command`].
    ///
    /// # Errors
    ///
    /// clap's usage error (or its `--help`/`--version` output), e.g. for an unknown
    /// flag, or `--transport memory` given with `--broker`.
    ///
    /// ```
    /// use nameko_cli::{Cli, Command, TransportKind};
    ///
    /// let Command::Run(run) = Cli::new().parse(["app", "run", "greeting", "--transport", "memory"])? else {
    ///     unreachable!()
    /// };
    /// assert_eq!(run.services, ["greeting"]);
    /// assert_eq!(run.transport, Some(TransportKind::Memory));
    /// assert_eq!(run.stop_timeout, std::time::Duration::from_secs(30));
    /// # Ok::<(), clap::Error>(())
    /// ```
    pub fn parse<I, T>(&self, args: I) -> Result<Command, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        self.parser(args.first()).parse(args)
    }

    /// The parser, named after `arg0` unless [`name`](Cli::name) was given.
    fn parser(&self, arg0: Option<&OsString>) -> Parser {
        Parser::new(self.name, self.version, arg0)
    }

    /// Runs the command line `args` (the first is the program name) with shutdown
    /// `signals`, writing command output to `stdout` and errors to `stderr`: the
    /// lower-level entry tests use. It does not install the log output. Returns the
    /// process's exit code.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use nameko_cli::{Cli, Signals};
    ///
    /// let (mut out, mut err) = (Vec::new(), Vec::new());
    /// let (_sender, signals) = Signals::channel();
    /// let args = ["app", "show-config", "--define", "max_workers=4"];
    /// let code = Cli::new().run_from(args, signals, &mut out, &mut err).await;
    /// assert_eq!(code, std::process::ExitCode::SUCCESS);
    /// assert!(String::from_utf8(out).unwrap().contains("max_workers: 4\n"));
    /// # }
    /// ```
    pub async fn run_from<I, T>(
        self,
        args: I,
        mut signals: Signals,
        mut stdout: impl Write + Send,
        mut stderr: impl Write + Send,
    ) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let parser = self.parser(args.first());
        let command = match parser.parse(args) {
            Ok(command) => command,
            Err(err) => {
                let mut text = err.render().to_string();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                let _ = if err.use_stderr() {
                    write!(stderr, "{text}")
                } else {
                    write!(stdout, "{text}")
                };
                return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
            }
        };
        let standalone = self.standalone;
        let result = match command {
            Command::Run(run) if !standalone => self.run_services(run, &mut signals).await,
            Command::Shell(args) => {
                self.default_logging();
                shell::shell(&parser, standalone, args, &mut signals, &mut stdout, &mut stderr).await
            }
            command => {
                self.default_logging();
                execute(command, standalone, &parser, &mut signals, &mut stdout, &mut stderr).await
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                let _ = report(&mut stderr, &err);
                ExitCode::from(err.exit_code())
            }
        }
    }

    fn default_logging(&self) {
        if self.install_logging {
            init_logging();
        }
    }

    async fn run_services(mut self, args: RunArgs, signals: &mut Signals) -> Result<(), CliError> {
        let config = load_config(&args.config)?;
        if self.install_logging {
            let mut setup = LogSetup::new().format(args.log_format).config(&config)?;
            for layer in std::mem::take(&mut self.log_layers) {
                setup = setup.layer(layer);
            }
            setup.init();
            // Loading warned before the output was installed: say it again.
            for warning in config.warnings() {
                tracing::warn!("{warning}");
            }
        }
        let transport = Transport::select(args.transport, &config)?;
        let mut runner = ServiceRunner::new(config.clone())
            .with_registered(&args.services)?
            .stop_timeout(args.stop_timeout);
        for (service, count) in &args.instances {
            runner = runner.instances(service, *count)?;
        }
        if runner.service_names().is_empty() {
            return Err(CliError::NoServices);
        }
        let mut services: Vec<String> = runner.service_names().iter().map(ToString::to_string).collect();
        services.dedup();
        let readiness = runner.readiness();
        let _log_readiness = AbortOnDrop(tokio::spawn(log_readiness(readiness.clone())));
        let connected = std::sync::atomic::AtomicBool::new(false);
        let mut log_stream = None;
        let startup = async {
            let transport_resources = transport.resources_waiting(&services, &readiness).await?;
            connected.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(broker) = transport_resources.get::<dyn nameko_extensions::broker::Broker>() {
                log_stream = log_stream::LogStream::start(broker, &config, &services).await?;
            }
            let user_resources = match self.resources {
                Some(hook) => hook(config).await.map_err(CliError::Resources)?,
                None => Resources::new(),
            };
            Ok::<_, CliError>(
                runner
                    .resources(user_resources)
                    .resources(transport_resources)
                    .start()
                    .await?,
            )
        };
        // A signal during startup (a hook or a connection that hangs) abandons it; while
        // waiting for RabbitMQ, that is a clean stop.
        let running = tokio::select! {
            running = startup => running?,
            signal = signals.next() => {
                if matches!(transport, Transport::Amqp { .. }) && !connected.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!("{signal} received while waiting for RabbitMQ: stopping; nothing was started");
                    return Ok(());
                }
                return Err(CliError::Interrupted(signal));
            }
        };
        for container in running.containers() {
            let entrypoints: Vec<String> = container
                .entrypoints()
                .map(|ep| format!("{} ({})", ep.method(), ep.kind()))
                .collect();
            let entrypoints = if entrypoints.is_empty() {
                "none".to_owned()
            } else {
                entrypoints.join(", ")
            };
            let instance = container
                .instance()
                .map(|i| format!(" (instance {i})"))
                .unwrap_or_default();
            tracing::info!(
                service = container.service_name(),
                "started service `{}`{instance}; entrypoints: {entrypoints}",
                container.service_name()
            );
        }
        tracing::info!(
            transport = transport.name(),
            "{} service(s) running on the {} transport; SIGTERM or Ctrl-C stops them",
            running.containers().len(),
            transport.name()
        );
        let signal = signals.next().await;
        tracing::info!(
            "{signal} received: stopping gracefully within {} (send it again to kill)",
            describe(args.stop_timeout)
        );
        let shutdown = running
            .shutdown(async {
                let signal = signals.next().await;
                tracing::warn!("{signal} received again: killing");
            })
            .await;
        if let Some(log_stream) = log_stream {
            log_stream.finish().await;
        }
        match shutdown {
            Shutdown::Killed => Err(CliError::Killed),
            _ => {
                tracing::info!("every service stopped");
                Ok(())
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs every change of the runner's readiness: INFO when ready, WARN when not.
async fn log_readiness(readiness: nameko_core::Readiness) {
    let mut changes = readiness.subscribe();
    let mut last = String::new();
    loop {
        let report = changes.borrow_and_update().clone();
        let text = report.to_string();
        if text != last {
            if report.is_ready() {
                tracing::info!("readiness: {text}");
            } else {
                tracing::warn!("readiness: {}", mask_secrets(&text));
            }
            last = text;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Runs a command other than `run` (and `shell`, which calls this for each line).
async fn execute(
    command: Command,
    standalone: bool,
    parser: &Parser,
    signals: &mut Signals,
    stdout: &mut (dyn Write + Send),
    stderr: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        Command::Run(_) | Command::List if standalone => Err(CliError::Standalone),
        Command::Run(_) => Err(CliError::Usage("`run` cannot be used here".to_owned())),
        Command::Shell(_) => Err(CliError::Usage("the shell is already running".to_owned())),
        Command::List => list(stdout),
        Command::ShowConfig(config) => {
            load_config(&config).and_then(|config| Ok(write!(stdout, "{}", render_config(&config))?))
        }
        Command::Request(args) => client::request(args, signals, stdout).await,
        Command::Emit(args) => client::emit(args, signals).await,
        Command::Subscribe(args) => client::subscribe(args, signals, stdout, stderr).await,
        Command::Discover(args) => discover::discover(&args, &load_config(&args.config)?, stdout).await,
        Command::Inspect(args) => inspect::inspect(&args, &load_config(&args.config)?, stdout).await,
        Command::Tail(args) => tail::tail(&args, &load_config(&args.config)?, signals, stdout).await,
        Command::Completions(args) => {
            completions::write(args.shell, &mut parser.command(), parser.bin_name(), stdout);
            Ok(stdout.flush()?)
        }
    }
}

const STANDALONE_HINT: &str = "the standalone `nameko` binary holds no services: Rust cannot load services \
     at run time. `run` and `list` are commands of your own service binary, whose main ends with \
     `nameko::cli::Cli::new().main()`; build it and run `your-binary run` (a library crate holding services must be \
     linked into it: `use my_services as _;`). The other commands (`request`, `emit`, `subscribe`, `discover`, \
     `inspect`, `tail`, `shell`, `show-config`, `completions`) work here.";

fn describe(timeout: Duration) -> String {
    format!("{}s", timeout.as_secs_f64())
}

/// Prints `err` as `error: ...` (a start error followed by each of its causes its
/// message does not already tell, `: cause`), or a remote error as `exc_type: value`;
/// passwords masked.
fn report(stderr: &mut dyn Write, err: &CliError) -> io::Result<()> {
    match err {
        CliError::Rpc {
            error: RpcError::Remote(_),
            ..
        } => writeln!(stderr, "{}", mask_secrets(&err.to_string())),
        // A start error's message stops at what failed ("could not consume `rpc-x`");
        // its causes say why. Other errors word their causes themselves.
        CliError::Container(_) => writeln!(stderr, "error: {}", mask_secrets(&with_causes(err))),
        _ => writeln!(stderr, "error: {}", mask_secrets(&err.to_string())),
    }?;
    stderr.flush()
}

/// `err`'s message, then `: <cause>` for each cause in its chain that the text so far
/// does not contain (many messages quote their cause already).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let told = cause.to_string();
        if !text.contains(&told) {
            text.push_str(": ");
            text.push_str(&told);
        }
        source = cause.source();
    }
    text
}

fn load_config(args: &ConfigArgs) -> Result<Config, CliError> {
    let mut loader = Config::loader();
    if let Some(file) = &args.config {
        loader = loader.file(file);
    }
    for define in &args.define {
        loader = loader.define(define);
    }
    if let Some(broker) = &args.broker {
        loader = loader.broker(broker);
    }
    Ok(loader.load()?)
}

fn list(out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let services = registry::registered_services()?;
    if services.is_empty() {
        writeln!(
            out,
            "no services are registered in this binary (a library crate holding services must be linked: \
             `use my_services as _;`)"
        )?;
        return Ok(());
    }
    for (i, service) in services.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let entrypoints: Vec<String> = service
            .entrypoints()
            .into_iter()
            .map(|(method, kind)| format!("{method} ({kind})"))
            .collect();
        writeln!(out, "{}", service.name())?;
        writeln!(out, "  module:      {}", service.module_path())?;
        writeln!(out, "  location:    {}:{}", service.file(), service.line())?;
        writeln!(
            out,
            "  entrypoints: {}",
            if entrypoints.is_empty() {
                "none".to_owned()
            } else {
                entrypoints.join(", ")
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_error_tells_its_causes_once() {
        let untold = nameko_core::SetupError::with_source(
            "could not consume `rpc-x`",
            io::Error::other("inequivalent arg 'x-queue-type'"),
        );
        assert_eq!(
            with_causes(&untold),
            "could not consume `rpc-x`: inequivalent arg 'x-queue-type'"
        );
        let told = CliError::Resources(Box::new(io::Error::other("no pool")));
        assert_eq!(with_causes(&told), "the resources hook failed: no pool");
        // Only a start error gets its causes printed; others word theirs.
        let reworded = CliError::Resources(Box::new(untold));
        let mut out = Vec::new();
        report(&mut out, &reworded).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "error: the resources hook failed: could not consume `rpc-x`\n"
        );
    }
}
