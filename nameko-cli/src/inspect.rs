//! `inspect SERVICE`: a service's entrypoints, from its built-in introspection RPC.

use std::{io::Write, sync::Arc, time::Duration};

use clap::Args;
use nameko_core::{
    Config,
    describe::{INSPECT_METHOD, ServiceDescription},
};
use nameko_extensions::{
    broker::Broker,
    rpc::{ClusterRpc, RpcArgs, RpcError},
};

use crate::{CliError, args::ConfigArgs, client::connect};

/// The arguments of `inspect`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct InspectArgs {
    /// The service to inspect.
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// Prints the introspection reply as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the answer.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = crate::args::parse_secs)]
    pub timeout: Duration,
    /// Config file, overrides and broker.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Runs `inspect`.
pub(crate) async fn inspect(args: &InspectArgs, config: &Config, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let service = args.service.as_str();
    let broker = Arc::new(connect(config, "inspect").await?);
    let shared: Arc<dyn Broker> = broker.clone();
    let rpc = ClusterRpc::connect(shared, config)
        .await
        .map_err(|error| CliError::Discovery(format!("cannot start an RPC client: {error}")))?
        .with_timeout(Some(args.timeout));
    let reply = rpc.call(service, INSPECT_METHOD, RpcArgs::default()).await;
    // Nothing left behind: the reply queue goes with the command.
    rpc.client().stop().await;
    let _ = broker.delete_queue(rpc.client().reply_queue()).await;
    match reply {
        Ok(value) => {
            let description: ServiceDescription = serde_json::from_value(value.clone()).map_err(|error| {
                CliError::Discovery(format!(
                    "service `{service}` answered `{INSPECT_METHOD}` with something else: {error}"
                ))
            })?;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&value).expect("a JSON value prints")
                )?;
            } else {
                print_description(out, &description)?;
            }
            Ok(())
        }
        Err(RpcError::Remote(error)) if error.exc_type() == "MethodNotFound" => {
            let consumers = broker.queue_consumers(&format!("rpc-{service}")).await.ok().flatten();
            if args.json {
                let value = serde_json::json!({
                    "service": service,
                    "introspectable": false,
                    "rpc_queue": format!("rpc-{service}"),
                    "instances": consumers,
                });
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&value).expect("a JSON value prints")
                )?;
            } else {
                writeln!(out, "{service}: not introspectable (a Python Nameko service?)")?;
                writeln!(
                    out,
                    "  it answers RPC on `rpc-{service}` but not `{INSPECT_METHOD}` (MethodNotFound)"
                )?;
                if let Some(consumers) = consumers {
                    writeln!(out, "  instances: {consumers} (consumers of `rpc-{service}`)")?;
                }
            }
            Ok(())
        }
        Err(RpcError::UnknownService(_)) => Err(CliError::Discovery(format!(
            "no service `{service}`: nothing consumes `rpc-{service}` (services without RPC entrypoints cannot be \
             inspected; `discover` lists them)"
        ))),
        Err(error) => Err(CliError::Discovery(format!("cannot inspect `{service}`: {error}"))),
    }
}

/// The description, readably.
fn print_description(out: &mut (dyn Write + Send), description: &ServiceDescription) -> std::io::Result<()> {
    writeln!(out, "{} ({})", description.service, description.framework)?;
    if description.entrypoints.is_empty() {
        writeln!(out, "  no entrypoints")?;
    }
    for entrypoint in &description.entrypoints {
        let params: Vec<String> = entrypoint
            .params
            .iter()
            .map(|p| format!("{}: {}", p.name, p.ty))
            .collect();
        let returns = entrypoint
            .returns
            .as_ref()
            .map(|r| format!(" -> {r}"))
            .unwrap_or_default();
        let detail = entrypoint.detail.as_ref().map(|d| format!(" {d}")).unwrap_or_default();
        writeln!(out)?;
        writeln!(out, "  {}({}){returns}", entrypoint.method, params.join(", "))?;
        writeln!(out, "      {}{detail}", entrypoint.kind)?;
        for line in &entrypoint.doc {
            writeln!(out, "      | {line}")?;
        }
    }
    Ok(())
}
