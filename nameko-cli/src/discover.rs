//! `discover [SERVICE...]`: the services of the cluster with their instance counts,
//! from the RabbitMQ management API, or passive declares without it.

use std::{collections::BTreeMap, io::Write};

use clap::Args;
use nameko_core::Config;
use nameko_extensions::amqp::AmqpUri;
use serde::Deserialize;

use crate::{
    CliError,
    args::ConfigArgs,
    client::connect,
    management::{ManagementError, ManagementUri},
    mask::mask_secrets,
};

/// The arguments of `discover`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct DiscoverArgs {
    /// Only these services; each must run at least one instance (exit 1 otherwise).
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Config file, overrides and broker (`AMQP_URI`, `MANAGEMENT_URI`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// One service found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    instances: u32,
    /// The queue its instances were counted on.
    queue: String,
    /// Whether that queue is its RPC queue.
    rpc: bool,
}

#[derive(Debug, Deserialize)]
struct QueueRow {
    name: String,
    #[serde(default)]
    consumers: u32,
}

/// What `rpc-<service>` and the handler queues say about each service.
fn services_from(queues: &[QueueRow]) -> BTreeMap<String, Found> {
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for row in queues {
        if let Some(service) = row.name.strip_prefix("rpc-")
            && !service.is_empty()
        {
            found.insert(
                service.to_owned(),
                Found {
                    instances: row.consumers,
                    queue: row.name.clone(),
                    rpc: true,
                },
            );
        }
    }
    for row in queues {
        let Some(rest) = row.name.strip_prefix("evt-") else {
            continue;
        };
        let Some((_, handler)) = rest.split_once("--") else {
            continue;
        };
        let Some((service, _method)) = handler.split_once('.') else {
            continue;
        };
        if service.is_empty() {
            continue;
        }
        let entry = found.entry(service.to_owned()).or_insert_with(|| Found {
            instances: 0,
            queue: row.name.clone(),
            rpc: false,
        });
        if !entry.rpc && row.consumers > entry.instances {
            entry.instances = row.consumers;
            entry.queue.clone_from(&row.name);
        }
    }
    found
}

/// Runs `discover`.
pub(crate) async fn discover(
    args: &DiscoverArgs,
    config: &Config,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let amqp = AmqpUri::parse(config.amqp_uri()).map_err(|error| crate::TransportError::InvalidUri {
        uri: mask_secrets(config.amqp_uri()),
        error,
    })?;
    let management = ManagementUri::from_config(config, &amqp)?;
    let rows = match management
        .get_json::<Vec<QueueRow>>(&management.queues_path(amqp.vhost()))
        .await
    {
        Ok(rows) => rows,
        Err(ManagementError::Unavailable(reason)) => {
            writeln!(
                out,
                "the RabbitMQ management API at {} is not available ({reason}); \
                 without it the services cannot be listed (enable the `rabbitmq_management` plugin or set MANAGEMENT_URI)",
                management.shown()
            )?;
            return fall_back(args, config, out).await;
        }
        Err(other) => return Err(other.into()),
    };
    let mut all = services_from(&rows);
    // The API's consumer counts lag (its statistics come every 5 s): the live counts of
    // the queues shown come from passive declares.
    let wanted: Vec<String> = if args.services.is_empty() {
        all.keys().cloned().collect()
    } else {
        args.services.iter().filter(|s| all.contains_key(*s)).cloned().collect()
    };
    if !wanted.is_empty() {
        let broker = connect(config, "discover").await?;
        for name in wanted {
            if let Some(found) = all.get_mut(&name)
                && let Ok(Some(consumers)) = broker.queue_consumers(&found.queue).await
            {
                found.instances = consumers;
            }
        }
        drop(broker);
    }
    let shown: Vec<(String, Option<&Found>)> = if args.services.is_empty() {
        all.iter().map(|(name, found)| (name.clone(), Some(found))).collect()
    } else {
        args.services.iter().map(|name| (name.clone(), all.get(name))).collect()
    };
    if shown.is_empty() {
        writeln!(out, "no services in vhost `{}`", amqp.vhost())?;
        return Ok(());
    }
    print_table(out, &shown)?;
    check_given(args, &shown)
}

/// Without the management API: a passive declare of `rpc-<service>` per name given.
async fn fall_back(args: &DiscoverArgs, config: &Config, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    if args.services.is_empty() {
        return Err(CliError::Discovery(
            "without the management API only named services can be checked: `discover SERVICE...`".to_owned(),
        ));
    }
    writeln!(out, "checking each service's RPC queue instead:")?;
    let broker = connect(config, "discover").await?;
    let mut found = Vec::new();
    for name in &args.services {
        let queue = format!("rpc-{name}");
        let consumers = broker
            .queue_consumers(&queue)
            .await
            .map_err(|error| CliError::Discovery(format!("cannot check queue `{queue}`: {error}")))?;
        found.push((
            name.clone(),
            consumers.map(|instances| Found {
                instances,
                queue,
                rpc: true,
            }),
        ));
    }
    drop(broker);
    let shown: Vec<(String, Option<&Found>)> = found.iter().map(|(n, f)| (n.clone(), f.as_ref())).collect();
    print_table(out, &shown)?;
    check_given(args, &shown)
}

fn print_table(out: &mut (dyn Write + Send), shown: &[(String, Option<&Found>)]) -> Result<(), CliError> {
    let width = shown
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max("SERVICE".len());
    writeln!(out, "{:<width$}  INSTANCES  FROM", "SERVICE")?;
    for (name, found) in shown {
        match found {
            Some(found) => writeln!(out, "{name:<width$}  {:>9}  {}", found.instances, found.queue)?,
            None => writeln!(out, "{name:<width$}  {:>9}  (no queue `rpc-{name}`)", "absent")?,
        }
    }
    Ok(())
}

/// Exit 1 when a service given is absent or runs no instance.
fn check_given(args: &DiscoverArgs, shown: &[(String, Option<&Found>)]) -> Result<(), CliError> {
    if args.services.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = shown
        .iter()
        .filter(|(_, found)| found.is_none_or(|f| f.instances == 0))
        .map(|(name, _)| name.as_str())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CliError::Discovery(format!(
            "not running: {} (no queue, or no consumer on it)",
            missing.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, consumers: u32) -> QueueRow {
        QueueRow {
            name: name.to_owned(),
            consumers,
        }
    }

    #[test]
    fn rpc_queues_count_and_handler_queues_fill_in() {
        let rows = [
            row("rpc-greeting", 3),
            row("evt-greeting-greeted--listen.on_greeted", 2),
            row("evt-greeting-greeted--greeting.on_self", 1),
            row("evt-greeting-greeted--python_listener.on_greeted", 1),
            row("rpc.reply-standalone_rpc_proxy-1234", 1),
            row("evt-greeting-greeted--listen.on_again", 1),
            row("timer-reporter.tick", 1),
        ];
        let found = services_from(&rows);
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            ["greeting", "listen", "python_listener"]
        );
        assert_eq!(found["greeting"].instances, 3);
        assert!(found["greeting"].rpc);
        assert_eq!(found["listen"].instances, 2);
        assert_eq!(found["listen"].queue, "evt-greeting-greeted--listen.on_greeted");
        assert_eq!(found["python_listener"].instances, 1);
    }
}
