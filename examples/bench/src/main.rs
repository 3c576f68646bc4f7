//! `example-bench`: the `bench` service's binary, its load clients, the raw lapin
//! server and the harness.
//!
//! - `example-bench run --broker URI` (or `--transport memory`), `list`,
//!   `show-config`: nameko-rs's command line for the `bench` service.
//! - `example-bench client [--broker URI] [--rpc-exchange NAME] seq N BYTES |
//!   conc N INFLIGHT | sleep N INFLIGHT MS | events N [INFLIGHT]`: the nameko-rs load
//!   client; prints `key=value` lines.
//! - `example-bench raw-server [--broker URI] [--rpc-exchange NAME] [--prefetch N]` and
//!   `example-bench raw-client ...` (the same scenarios and output keys): the raw
//!   lapin baseline.
//! - `example-bench raw-http [--address HOST:PORT]`: `GET /echo/{v}` with bare axum,
//!   the baseline of `bench`'s `#[http]` echo, until SIGTERM.
//! - `example-bench harness [--broker URI] [--runs N] [--setups LIST] [--out FILE] ...`:
//!   nameko-rs and raw lapin side by side — on both sides, and each client against the
//!   other's server (`--setups`); prints a markdown table of medians and ratios.

use std::{
    convert::Infallible,
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};
use example_bench::{
    BenchError,
    client::NamekoClient,
    harness::{self, HarnessOptions, Setup},
    load::{self, Caller, Report, Scenario},
    raw::{RawClient, RawServer},
};

/// The subcommands this binary adds to nameko-rs's `run`, `list` and `show-config`.
const TOOLS: [&str; 5] = ["client", "raw-client", "raw-server", "raw-http", "harness"];

fn main() -> ExitCode {
    if std::env::args()
        .nth(1)
        .is_some_and(|command| TOOLS.contains(&command.as_str()))
    {
        return tools();
    }
    nameko::cli::Cli::new()
        .name("example-bench")
        .resources(|_config| async { Ok::<_, Infallible>(example_bench::resources()) })
        .main()
}

/// The load clients, the raw server and the harness (nameko-rs's own commands are
/// `run`, `list` and `show-config`).
#[derive(Debug, Parser)]
#[command(name = "example-bench", disable_help_subcommand = true)]
enum Tool {
    /// Drives `bench` with nameko-rs's clients (`ClusterRpc`, `EventDispatcher`).
    Client(ClientArgs),
    /// Drives `bench` with the raw lapin client.
    RawClient(ClientArgs),
    /// Serves `bench` with lapin alone, with nameko-rs's guarantees, until SIGTERM.
    RawServer(ServerArgs),
    /// Serves `GET /echo/{v}` with bare axum (the HTTP baseline) until SIGTERM.
    RawHttp(RawHttpArgs),
    /// Runs nameko-rs and the raw baseline side by side; prints a markdown table.
    Harness(HarnessArgs),
}

#[derive(Debug, Args)]
struct RawHttpArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8001")]
    address: String,
}

#[derive(Debug, Args)]
struct Broker {
    /// The AMQP broker URI.
    #[arg(long, env = "AMQP_URI", default_value = "amqp://guest:guest@localhost:5672/")]
    broker: String,
}

#[derive(Debug, Args)]
struct ClientArgs {
    #[command(flatten)]
    broker: Broker,
    /// The RPC exchange (nameko-rs's `rpc_exchange`).
    #[arg(long, default_value = "nameko-rpc")]
    rpc_exchange: String,
    #[command(subcommand)]
    scenario: ScenarioArgs,
}

#[derive(Debug, Subcommand)]
enum ScenarioArgs {
    /// N sequential `echo` calls with a string of BYTES bytes.
    Seq {
        /// Calls.
        n: usize,
        /// Length of the echoed string.
        bytes: usize,
    },
    /// N `echo` calls, INFLIGHT in flight.
    Conc {
        /// Calls.
        n: usize,
        /// Calls in flight.
        inflight: usize,
    },
    /// N `sleep(MS)` calls, INFLIGHT in flight.
    Sleep {
        /// Calls.
        n: usize,
        /// Calls in flight.
        inflight: usize,
        /// Milliseconds each call sleeps.
        ms: u64,
    },
    /// N `ping` events, INFLIGHT dispatches in flight (default 1), then waits until the
    /// service has handled them.
    Events {
        /// Events.
        n: usize,
        /// Dispatches in flight.
        #[arg(default_value = "1")]
        inflight: usize,
    },
}

impl ScenarioArgs {
    fn scenario(&self) -> Scenario {
        match *self {
            Self::Seq { n, bytes } => Scenario::Seq { calls: n, bytes },
            Self::Conc { n, inflight } => Scenario::Conc { calls: n, inflight },
            Self::Sleep { n, inflight, ms } => Scenario::Sleep { calls: n, inflight, ms },
            Self::Events { n, inflight } => Scenario::Events { events: n, inflight },
        }
    }
}

#[derive(Debug, Args)]
struct ServerArgs {
    #[command(flatten)]
    broker: Broker,
    /// The RPC exchange (nameko-rs's `rpc_exchange`).
    #[arg(long, default_value = "nameko-rpc")]
    rpc_exchange: String,
    /// `basic.qos` prefetch of each consumer (nameko-rs: `max_workers`).
    #[arg(long, default_value = "10")]
    prefetch: u16,
}

#[derive(Debug, Args)]
struct HarnessArgs {
    #[command(flatten)]
    broker: Broker,
    /// Runs of each setup; medians are taken over them.
    #[arg(long, default_value = "3")]
    runs: usize,
    /// The setups to run, comma-separated: `nameko-rs` (both sides), `raw lapin` (both
    /// sides, always needed), `server-side` (the raw client driving the nameko-rs
    /// service), `client-side` (the nameko-rs client driving the raw server).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_setup,
        default_value = "nameko-rs,raw lapin,server-side,client-side"
    )]
    setups: Vec<Setup>,
    /// `seq` calls (each with a string of `--bytes` bytes).
    #[arg(long, default_value = "2000")]
    seq: usize,
    /// Length of the string `seq` echoes.
    #[arg(long, default_value = "100")]
    bytes: usize,
    /// `conc` calls.
    #[arg(long, default_value = "10000")]
    conc: usize,
    /// Calls (and event dispatches) in flight in `conc`, `sleep` and `events`.
    #[arg(long, default_value = "64")]
    inflight: usize,
    /// `sleep` calls.
    #[arg(long, default_value = "1000")]
    sleep: usize,
    /// Milliseconds each `sleep` call sleeps.
    #[arg(long, default_value = "10")]
    sleep_ms: u64,
    /// Events.
    #[arg(long, default_value = "10000")]
    events: usize,
    /// nameko-rs's `max_workers` and the raw server's prefetch.
    #[arg(long, default_value = "10")]
    prefetch: u16,
    /// The RPC exchange to run on (default: a unique `bench-rpc-<id>`); deleted at the
    /// end.
    #[arg(long)]
    rpc_exchange: Option<String>,
    /// Also write the table to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

fn parse_setup(label: &str) -> Result<Setup, String> {
    Setup::parse(label).ok_or_else(|| {
        format!("unknown setup `{label}`: expected `nameko-rs`, `raw lapin`, `server-side` or `client-side`")
    })
}

fn tools() -> ExitCode {
    let tool = Tool::parse();
    let _ = nameko::cli::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&BenchError::Io(err)),
    };
    match runtime.block_on(run(tool)) {
        Ok(code) => code,
        Err(err) => fail(&err),
    }
}

fn fail(err: &BenchError) -> ExitCode {
    let _ = writeln!(io::stderr(), "error: {}", nameko::cli::mask_secrets(&err.to_string()));
    ExitCode::FAILURE
}

fn print(text: &str) -> Result<(), BenchError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn run(tool: Tool) -> Result<ExitCode, BenchError> {
    match tool {
        Tool::Client(args) => {
            let client = NamekoClient::connect(&args.broker.broker, &args.rpc_exchange).await?;
            let report = drive(&client, args.scenario.scenario()).await;
            client.close().await?;
            let mut report = report?;
            let (routed, unconfirmed) = example_bench::client::publish_counts();
            report.push("publishes_routed", routed);
            report.push("publishes_unconfirmed", unconfirmed);
            print(&report.to_string())?;
        }
        Tool::RawClient(args) => {
            let client = RawClient::connect(&args.broker.broker, &args.rpc_exchange).await?;
            let report = drive(&client, args.scenario.scenario()).await;
            client.close().await?;
            print(&report?.to_string())?;
        }
        Tool::RawServer(args) => {
            let server = RawServer::start(&args.broker.broker, &args.rpc_exchange, args.prefetch).await?;
            tracing::info!("the raw lapin server is running; SIGTERM or Ctrl-C stops it");
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                interrupted = tokio::signal::ctrl_c() => interrupted?,
            }
            server.stop().await;
            tracing::info!("the raw lapin server stopped");
        }
        Tool::RawHttp(args) => {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let shutdown = async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            example_bench::raw_http::serve(&args.address, shutdown, |addr| {
                tracing::info!("the bare axum server listens on http://{addr}; SIGTERM or Ctrl-C stops it");
            })
            .await?;
        }
        Tool::Harness(args) => {
            let exe = std::env::current_exe()?;
            let mut options = HarnessOptions::new(&args.broker.broker, exe);
            options.runs = args.runs;
            options.setups = args.setups;
            options.prefetch = args.prefetch;
            if let Some(exchange) = args.rpc_exchange {
                options.rpc_exchange = exchange;
            }
            options.scenarios = vec![
                Scenario::Seq {
                    calls: args.seq,
                    bytes: args.bytes,
                },
                Scenario::Conc {
                    calls: args.conc,
                    inflight: args.inflight,
                },
                Scenario::Sleep {
                    calls: args.sleep,
                    inflight: args.inflight,
                    ms: args.sleep_ms,
                },
                Scenario::Events {
                    events: args.events,
                    inflight: args.inflight,
                },
            ];
            let summary = harness::run(&options, |step| tracing::info!("{step}")).await?;
            let table = summary.markdown();
            if let Some(out) = &args.out {
                std::fs::write(out, &table)?;
            }
            print(&table)?;
            let floor = match summary.meets_floor() {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not judged",
            };
            tracing::info!("the floor (≥ 0.9× raw throughput, p99 ≤ 1.1× raw) is {floor}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `scenario`, then adds this process's peak RSS.
async fn drive<C: Caller>(caller: &C, scenario: Scenario) -> Result<Report, BenchError> {
    let mut report = load::run(caller, scenario).await?;
    report.push("client_rss_kb", harness::peak_rss_kb("self")?);
    Ok(report)
}
