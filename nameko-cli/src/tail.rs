//! `tail SERVICE...`: prints the log lines every instance of the services streams
//! (see [`log_stream`](crate::log_stream)) until SIGTERM or Ctrl-C.

use std::io::Write;

use clap::Args;
use nameko_core::Config;
use nameko_extensions::broker::{Binding, Broker, ConsumeOptions, Exchange, Queue, Topology};

use crate::{
    CliError, Signals,
    args::ConfigArgs,
    client::connect,
    log_stream::{LogLine, log_exchange},
};

/// The arguments of `tail`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct TailArgs {
    /// The services whose log lines to print.
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
    /// Config file, overrides and broker (`LOG_EXCHANGE`).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Runs `tail` until a signal.
pub(crate) async fn tail(
    args: &TailArgs,
    config: &Config,
    signals: &mut Signals,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let exchange = log_exchange(config)?;
    let broker = connect(config, "tail").await?;
    let queue = format!("nameko-tail-{}", nameko_core::ids::uuid4());
    let mut topology = Topology::new()
        .exchange(Exchange::topic(&exchange))
        .queue(Queue::durable(&queue).auto_delete(true).exclusive(true));
    topology.queues[0].durable = false;
    for service in &args.services {
        topology = topology.binding(Binding::new(&exchange, &queue, format!("{service}.*")));
    }
    broker
        .declare(&topology)
        .await
        .map_err(|error| CliError::Discovery(format!("cannot bind a queue to `{exchange}`: {error}")))?;
    let mut consumer = broker
        .consume(&queue, ConsumeOptions::prefetch(256))
        .await
        .map_err(|error| CliError::Discovery(format!("cannot consume `{queue}`: {error}")))?;
    writeln!(
        out,
        "tailing {} (exchange `{exchange}`); SIGTERM or Ctrl-C stops",
        args.services.join(", ")
    )?;
    out.flush()?;
    loop {
        let delivery = tokio::select! {
            signal = signals.next() => {
                tracing::debug!("{signal} received: tail stops");
                break;
            }
            delivery = consumer.next() => match delivery {
                Ok(delivery) => delivery,
                Err(end) => {
                    return Err(CliError::Discovery(format!("the log stream ended: {end:?}")));
                }
            },
        };
        match serde_json::from_slice::<LogLine>(&delivery.body) {
            Ok(line) => writeln!(out, "{}", render(&line))?,
            Err(error) => writeln!(out, "(an unreadable log line on `{}`: {error})", delivery.routing_key)?,
        }
        out.flush()?;
        let _ = delivery.ack().await;
    }
    // Closing the connection deletes the exclusive queue.
    broker.close().await;
    Ok(())
}

/// `12:03:04.567 host[pid] 2/3 INFO greeting example_greeting: greeting Ada visits=1`.
fn render(line: &LogLine) -> String {
    let millis = (line.time * 1000.0) as u64;
    let (secs, ms) = (millis / 1000, millis % 1000);
    let day = secs % 86_400;
    let instance = line.instance.as_ref().map(|i| format!(" {i}")).unwrap_or_default();
    let dropped = if line.dropped > 0 {
        format!(
            " ({} earlier line(s) dropped: the stream could not keep up)",
            line.dropped
        )
    } else {
        String::new()
    };
    format!(
        "{:02}:{:02}:{:02}.{ms:03} {}[{}]{instance} {:>5} {} {}: {}{dropped}",
        day / 3600,
        day % 3600 / 60,
        day % 60,
        line.host,
        line.pid,
        line.level,
        line.service,
        line.target,
        line.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_render_with_their_origin() {
        let line = LogLine {
            service: "greeting".into(),
            level: "INFO".into(),
            target: "example_greeting".into(),
            message: "greeting Ada visits=1".into(),
            host: "box".into(),
            pid: 42,
            instance: Some("2/3".into()),
            time: 3723.5,
            dropped: 2,
        };
        assert_eq!(
            render(&line),
            "01:02:03.500 box[42] 2/3  INFO greeting example_greeting: greeting Ada visits=1 \
             (2 earlier line(s) dropped: the stream could not keep up)"
        );
    }
}
