//! The client verbs, which talk to a running cluster (Rust or Python services alike)
//! over RabbitMQ: `request`, `emit` and `subscribe`.

use std::{io::Write, sync::Arc, time::Duration};

use clap::Args;
use nameko_core::{Config, ContextData};
use nameko_extensions::{
    amqp::{AmqpBroker, AmqpUri, ConfigConnectError},
    broker::{Binding, ConsumeOptions, Delivery, Queue, SharedBroker, Topology},
    events::{EventDispatcher, events_exchange_declare},
    rpc::{ClusterRpc, RpcArgs},
};
use serde_json::Value;

use crate::{CliError, ConfigArgs, Signals, load_config, mask::mask_secrets};

/// The arguments of `request`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct RequestArgs {
    /// The method to call, as `service.method`.
    #[arg(value_name = "SERVICE.METHOD", value_parser = parse_target)]
    pub target: Target,
    /// The arguments as JSON: an object gives keyword arguments, an array positional
    /// ones, any other value one positional argument; `-` reads the JSON from standard
    /// input. None: no arguments.
    #[arg(value_name = "JSON", allow_hyphen_values = true)]
    pub json: Option<String>,
    /// Seconds to wait for the reply; `0` waits forever [default: the config's
    /// `rpc_timeout`, else 30].
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Context data sent with the call as the `nameko.KEY` header (`user_id`,
    /// `language`, `trace_id`, any key); VALUE is read as JSON when it is JSON, else as a
    /// string. Repeatable.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_context)]
    pub context: Vec<(String, Value)>,
    /// Prints the result as compact JSON on one line instead of indented JSON.
    #[arg(long)]
    pub raw: bool,
    /// Config file, overrides and broker.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// The arguments of `emit`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct EmitArgs {
    /// The service the event comes from: it goes to the exchange `SERVICE.events`.
    #[arg(value_name = "SERVICE", value_parser = parse_name)]
    pub service: String,
    /// The event type (the routing key).
    #[arg(value_name = "EVENT", value_parser = parse_name)]
    pub event: String,
    /// The payload as JSON (`-` reads it from standard input). None: `null`.
    #[arg(value_name = "JSON", allow_hyphen_values = true)]
    pub json: Option<String>,
    /// Context data sent with the event as the `nameko.KEY` header, as for `request`.
    /// Repeatable.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_context)]
    pub context: Vec<(String, Value)>,
    /// Config file, overrides and broker.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// The arguments of `subscribe`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct SubscribeArgs {
    /// The service whose events to print (the exchange `SERVICE.events`).
    #[arg(value_name = "SERVICE", value_parser = parse_name)]
    pub service: String,
    /// The event types to print; AMQP topic patterns, so `'*'` prints every event.
    #[arg(value_name = "EVENT", required = true, value_parser = parse_name)]
    pub events: Vec<String>,
    /// Stops after this many events (default: at SIGTERM or Ctrl-C).
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
    /// Config file, overrides and broker.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// The `service.method` a `request` calls.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// The service.
    pub service: String,
    /// The method.
    pub method: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.service, self.method)
    }
}

fn parse_target(text: &str) -> Result<Target, String> {
    match text.split_once('.') {
        Some((service, method))
            if !service.is_empty() && !method.is_empty() && !method.contains('.') && !text.contains(' ') =>
        {
            Ok(Target {
                service: service.to_owned(),
                method: method.to_owned(),
            })
        }
        _ => Err(format!(
            "expected SERVICE.METHOD (one dot, e.g. `greeting.greet`), got `{text}`"
        )),
    }
}

fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(char::is_whitespace) {
        Err(format!("expected a name without spaces, got `{text}`"))
    } else {
        Ok(text.to_owned())
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds (0 waits forever), got `{text}`"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("expected a non-negative number of seconds, got `{text}`"))
}

fn parse_context(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got `{text}`"))?;
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("the key must be a name without spaces, got `{key}`"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// Parses the JSON argument `what` (`-` reads standard input); a syntax error is a usage
/// error naming the line, column and what was expected, with a caret under the spot.
pub(crate) async fn parse_json(what: &str, text: Option<&str>) -> Result<Value, CliError> {
    let text = match text {
        None => return Ok(Value::Null),
        Some("-") => {
            use tokio::io::AsyncReadExt;
            let mut input = String::new();
            tokio::io::stdin()
                .read_to_string(&mut input)
                .await
                .map_err(|err| CliError::Usage(format!("cannot read the {what} JSON from standard input: {err}")))?;
            input
        }
        Some(text) => text.to_owned(),
    };
    serde_json::from_str(&text).map_err(|err| CliError::Usage(describe_json_error(what, &text, &err)))
}

fn describe_json_error(what: &str, text: &str, err: &serde_json::Error) -> String {
    let mut message = format!("the {what} argument is not valid JSON: {err}");
    if let Some(line) = err.line().checked_sub(1).and_then(|n| text.lines().nth(n)) {
        let before = line.get(..err.column().saturating_sub(1)).unwrap_or(line);
        let indent: String = before.chars().map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        message.push_str(&format!("\n  {line}\n  {indent}^"));
    }
    message.push_str("\n  (in a shell, quote the whole JSON: '{\"name\": \"Ada\"}')");
    message
}

/// The context data of `--context` options.
fn context_data(pairs: &[(String, Value)]) -> ContextData {
    let mut data = ContextData::new();
    for (key, value) in pairs {
        data.insert(key.clone(), value.clone());
    }
    data
}

/// How long a command waits for RabbitMQ to take its connection (a host that drops
/// packets would otherwise hold it forever; a refused connection fails at once).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to RabbitMQ as the config says (`AMQP_URI`, `HEARTBEAT`, `AMQP_SSL`), the
/// connection named after the verb and this host: the one connection helper of every
/// verb that talks to the broker.
pub(crate) async fn connect(config: &Config, verb: &str) -> Result<AmqpBroker, CliError> {
    let name = format!("nameko-rs {verb} on {}", crate::transport::hostname());
    let shown =
        || AmqpUri::parse(config.amqp_uri()).map_or_else(|_| mask_secrets(config.amqp_uri()), |uri| uri.to_string());
    match tokio::time::timeout(CONNECT_TIMEOUT, AmqpBroker::connect_config(config, name)).await {
        Ok(Ok(broker)) => Ok(broker),
        Ok(Err(error)) => Err(CliError::Connect { uri: shown(), error }),
        Err(_) => Err(CliError::Broker(format!(
            "cannot connect to RabbitMQ at {}: timed out after {}s",
            shown(),
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// `request`: calls `target` and prints its result.
pub(crate) async fn request(
    args: RequestArgs,
    signals: &mut Signals,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let json = parse_json("JSON", args.json.as_deref()).await?;
    let config = load_config(&args.config)?;
    let broker: SharedBroker = Arc::new(connect(&config, "request").await?);
    let result = async {
        let mut rpc = ClusterRpc::connect(Arc::clone(&broker), &config)
            .await
            .map_err(|error| CliError::Rpc {
                target: args.target.to_string(),
                error,
            })?
            .with_data(context_data(&args.context));
        if let Some(timeout) = args.timeout {
            rpc = rpc.with_timeout((!timeout.is_zero()).then_some(timeout));
        }
        let call = rpc.call(&args.target.service, &args.target.method, RpcArgs::from(json));
        let outcome = tokio::select! {
            outcome = call => outcome.map_err(|error| CliError::Rpc { target: args.target.to_string(), error }),
            signal = signals.next() => Err(CliError::Cancelled(signal)),
        };
        // Leave nothing behind: the reply queue would otherwise linger for its
        // `x-expires` (5 minutes).
        rpc.client().stop().await;
        if let Err(err) = broker.delete_queue(rpc.client().reply_queue()).await {
            tracing::debug!(%err, "could not delete the reply queue");
        }
        outcome
    }
    .await;
    broker.close().await;
    let value = result?;
    let text = if args.raw {
        serde_json::to_string(&value)
    } else {
        serde_json::to_string_pretty(&value)
    }
    .map_err(|err| CliError::Usage(format!("the result cannot be printed as JSON: {err}")))?;
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// `emit`: dispatches one event as `service`.
pub(crate) async fn emit(args: EmitArgs, signals: &mut Signals) -> Result<(), CliError> {
    let payload = parse_json("JSON", args.json.as_deref()).await?;
    let config = load_config(&args.config)?;
    let broker: SharedBroker = Arc::new(connect(&config, "emit").await?);
    let dispatcher =
        EventDispatcher::standalone(Arc::clone(&broker), &args.service, &config).with_data(context_data(&args.context));
    let outcome = tokio::select! {
        outcome = dispatcher.dispatch(&args.event, &payload) => outcome.map_err(CliError::Dispatch),
        signal = signals.next() => Err(CliError::Cancelled(signal)),
    };
    broker.close().await;
    outcome
}

/// `subscribe`: prints the events of `service` as JSON lines until a signal (or
/// `--count` events), through an exclusive, auto-deleted queue of its own.
pub(crate) async fn subscribe(
    args: SubscribeArgs,
    signals: &mut Signals,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let config = load_config(&args.config)?;
    let broker: SharedBroker = Arc::new(connect(&config, "subscribe").await?);
    let outcome = listen(&args, &config, &broker, signals, out, err).await;
    broker.close().await;
    outcome
}

async fn listen(
    args: &SubscribeArgs,
    config: &Config,
    broker: &SharedBroker,
    signals: &mut Signals,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let exchange = events_exchange_declare(&args.service, config);
    let exchange_name = exchange.name.clone();
    let queue_name = format!(
        "nameko-subscribe-{}-{}",
        args.service,
        nameko_core::ids::uuid4().simple()
    );
    let mut queue = Queue::durable(&queue_name).exclusive(true).auto_delete(true);
    queue.durable = false;
    let mut topology = Topology::new().exchange(exchange).queue(queue);
    for event in &args.events {
        topology = topology.binding(Binding::new(&exchange_name, &queue_name, event));
    }
    let broker_error = |error: nameko_extensions::broker::BrokerError| CliError::Broker(error.to_string());
    broker.declare(&topology).await.map_err(broker_error)?;
    let outcome = async {
        let mut consumer = broker
            .consume(&queue_name, ConsumeOptions::prefetch(64))
            .await
            .map_err(broker_error)?;
        writeln!(
            err,
            "subscribed to {} on `{exchange_name}` (queue `{queue_name}`); Ctrl-C stops",
            args.events.join(", ")
        )?;
        err.flush()?;
        let mut seen = 0_u64;
        let end = loop {
            if args.count.is_some_and(|count| seen >= count) {
                break Ok(());
            }
            let delivery = tokio::select! {
                delivery = consumer.next() => delivery,
                _ = signals.next() => break Ok(()),
            };
            match delivery {
                Ok(delivery) => {
                    writeln!(out, "{}", event_line(&args.service, &delivery))?;
                    out.flush()?;
                    if let Err(error) = delivery.ack().await {
                        tracing::debug!(%error, "could not ack an event");
                    }
                    seen += 1;
                }
                Err(end) => {
                    break Err(CliError::Broker(format!(
                        "the subscription ended before it was stopped: {end:?}"
                    )));
                }
            }
        };
        if let Err(error) = consumer.control().cancel().await {
            tracing::debug!(%error, "could not cancel the subscription's consumer");
        }
        end
    }
    .await;
    // Exclusive and auto-deleted: it would go with the connection; delete it now anyway.
    if let Err(error) = broker.delete_queue(&queue_name).await {
        tracing::debug!(%error, "could not delete the subscription's queue");
    }
    outcome
}

/// One event as a JSON line: `{"service", "event", "headers", "payload"}`, or `"body"`
/// (the text, lossily) instead of `"payload"` when the body is not JSON.
fn event_line(service: &str, delivery: &Delivery) -> String {
    let headers = delivery
        .properties
        .headers
        .as_ref()
        .map(|headers| Value::Object(headers.to_json_map()))
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    let json = |value: &Value| serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
    let body = match serde_json::from_slice::<Value>(&delivery.body) {
        Ok(payload) => format!("\"payload\":{}", json(&payload)),
        Err(_) => format!(
            "\"body\":{}",
            json(&Value::String(String::from_utf8_lossy(&delivery.body).into_owned()))
        ),
    };
    format!(
        "{{\"service\":{},\"event\":{},\"headers\":{},{body}}}",
        json(&Value::String(service.to_owned())),
        json(&Value::String(delivery.routing_key.clone())),
        json(&headers),
    )
}

/// The message of a failed connection: the URI with its password masked.
pub(crate) fn connect_message(uri: &str, error: &ConfigConnectError) -> String {
    match error {
        ConfigConnectError::Uri(error) => format!("invalid AMQP_URI {uri}: {error}"),
        ConfigConnectError::Connect(error) => format!("cannot connect to RabbitMQ at {uri}: {error}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_need_one_dot() {
        assert_eq!(
            parse_target("greeting.greet").unwrap(),
            Target {
                service: "greeting".into(),
                method: "greet".into()
            }
        );
        for bad in ["greeting", ".greet", "greeting.", "a.b.c", "a b.c"] {
            assert!(parse_target(bad).unwrap_err().contains("SERVICE.METHOD"), "{bad}");
        }
    }

    #[test]
    fn context_values_are_json_or_strings() {
        assert_eq!(
            parse_context("user_id=42").unwrap(),
            ("user_id".into(), Value::from(42))
        );
        assert_eq!(
            parse_context("language=en-GB").unwrap(),
            ("language".into(), Value::from("en-GB"))
        );
        assert_eq!(parse_context("id=\"42\"").unwrap(), ("id".into(), Value::from("42")));
        assert_eq!(parse_context("empty=").unwrap(), ("empty".into(), Value::from("")));
        assert!(parse_context("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_context("=x").is_err());
    }

    #[test]
    fn json_errors_point_at_the_spot() {
        let text = r#"{"name": Ada}"#;
        let err = serde_json::from_str::<Value>(text).unwrap_err();
        let message = describe_json_error("JSON", text, &err);
        assert!(
            message.starts_with("the JSON argument is not valid JSON: expected value at line 1 column 10\n"),
            "{message}"
        );
        assert!(message.contains("\n  {\"name\": Ada}\n           ^\n"), "{message}");
    }

    #[test]
    fn timeouts_are_seconds() {
        assert_eq!(parse_timeout("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_timeout("0").unwrap(), Duration::ZERO);
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("soon").is_err());
    }
}
