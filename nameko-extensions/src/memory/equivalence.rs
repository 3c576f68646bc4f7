//! Declare checks with RabbitMQ's wording: equivalence of a redeclare, and validity of
//! the `x-` arguments the memory broker acts on.

use std::time::Duration;

use crate::broker::{BrokerError, Exchange, FieldValue, Headers, Queue};

/// The virtual host every memory broker entity lives in, as errors name it.
pub(super) const VHOST: &str = "/";

/// The queue arguments RabbitMQ compares on a redeclare; others are ignored, as there.
const CHECKED_QUEUE_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-single-active-consumer",
];

/// `PRECONDITION_FAILED` in RabbitMQ's words unless `current == received`.
fn same<T: PartialEq + ToString>(
    field: &str,
    entity: &str,
    name: &str,
    received: T,
    current: T,
) -> Result<(), BrokerError> {
    if received == current {
        return Ok(());
    }
    Err(BrokerError::PreconditionFailed(format!(
        "inequivalent arg '{field}' for {entity} '{name}' in vhost '{VHOST}': received '{}' but current is '{}'",
        received.to_string(),
        current.to_string()
    )))
}

/// Checks a redeclare of `current` as `new` (same name).
pub(super) fn exchange_equivalent(current: &Exchange, new: &Exchange) -> Result<(), BrokerError> {
    let name = &new.name;
    same("type", "exchange", name, new.kind.as_str(), current.kind.as_str())?;
    same("durable", "exchange", name, new.durable, current.durable)?;
    same("auto_delete", "exchange", name, new.auto_delete, current.auto_delete)
}

/// Checks a redeclare of `current` as `new` (same name, same exclusivity and owner:
/// those are checked first, as `RESOURCE_LOCKED`).
pub(super) fn queue_equivalent(current: &Queue, new: &Queue) -> Result<(), BrokerError> {
    same("durable", "queue", &new.name, new.durable, current.durable)?;
    same("auto_delete", "queue", &new.name, new.auto_delete, current.auto_delete)?;
    queue_type_equivalent(current, new)?;
    for arg in CHECKED_QUEUE_ARGS {
        let (old, received) = (current.arguments.get(arg), new.arguments.get(arg));
        let same = match (old, received) {
            (None, None) => true,
            (Some(a), Some(b)) => equivalent_values(a, b),
            _ => false,
        };
        if !same {
            return Err(BrokerError::PreconditionFailed(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{VHOST}': received {} but current is {}",
                new.name,
                describe(received),
                describe(old)
            )));
        }
    }
    Ok(())
}

/// `x-queue-type`, compared by the type it gives (none is classic, so `classic` matches
/// a queue declared without it), in RabbitMQ's words when they differ.
fn queue_type_equivalent(current: &Queue, new: &Queue) -> Result<(), BrokerError> {
    const ARG: &str = "x-queue-type";
    if current.kind() == new.kind() {
        return Ok(());
    }
    let (old, received) = (current.arguments.get(ARG), new.arguments.get(ARG));
    let why = match (received, old) {
        (Some(FieldValue::String(received)), Some(FieldValue::String(old))) => {
            format!("received '{received}' but current is '{old}'")
        }
        _ => format!("received {} but current is {}", describe(received), describe(old)),
    };
    Err(BrokerError::PreconditionFailed(format!(
        "inequivalent arg '{ARG}' for queue '{}' in vhost '{VHOST}': {why}",
        new.name
    )))
}

/// RabbitMQ compares argument values within a type class: any integer equals an equal
/// integer of another width.
fn equivalent_values(a: &FieldValue, b: &FieldValue) -> bool {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a == b,
        _ => false,
    }
}

fn describe(value: Option<&FieldValue>) -> String {
    let Some(value) = value else {
        return "none".to_owned();
    };
    let shown = match value {
        FieldValue::String(s) => s.clone(),
        other => other.to_json().to_string(),
    };
    format!("the value '{shown}' of type '{}'", type_name(value))
}

fn type_name(value: &FieldValue) -> &'static str {
    match value {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal { .. } => "decimal",
        FieldValue::String(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Bytes(_) => "binary",
        FieldValue::Void => "void",
    }
}

/// The integer in a field value of any integer type.
pub(super) fn as_int(value: &FieldValue) -> Option<i128> {
    Some(match value {
        FieldValue::I8(v) => i128::from(*v),
        FieldValue::U8(v) => i128::from(*v),
        FieldValue::I16(v) => i128::from(*v),
        FieldValue::U16(v) => i128::from(*v),
        FieldValue::I32(v) => i128::from(*v),
        FieldValue::U32(v) => i128::from(*v),
        FieldValue::I64(v) => i128::from(*v),
        _ => return None,
    })
}

/// The string in a field value, if it is one.
pub(super) fn as_str(value: &FieldValue) -> Option<&str> {
    match value {
        FieldValue::String(s) => Some(s),
        _ => None,
    }
}

/// A queue's arguments as the memory broker acts on them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct QueueArgs {
    /// `x-expires`.
    pub(super) expires: Option<Duration>,
    /// `x-message-ttl`.
    pub(super) message_ttl: Option<Duration>,
    /// `x-dead-letter-exchange`.
    pub(super) dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub(super) dead_letter_routing_key: Option<String>,
    /// `x-single-active-consumer`.
    pub(super) single_active_consumer: bool,
}

fn invalid_arg(queue: &str, arg: &str, why: &str) -> BrokerError {
    BrokerError::PreconditionFailed(format!(
        "invalid arg '{arg}' for queue '{queue}' in vhost '{VHOST}': {why}"
    ))
}

fn millis_arg(queue: &str, args: &Headers, arg: &str, min: i128) -> Result<Option<Duration>, BrokerError> {
    let Some(value) = args.get(arg) else {
        return Ok(None);
    };
    let ms =
        as_int(value).ok_or_else(|| invalid_arg(queue, arg, &format!("unacceptable type '{}'", type_name(value))))?;
    if ms < min {
        return Err(invalid_arg(queue, arg, &format!("value {ms} is below {min}")));
    }
    let ms = u64::try_from(ms).map_err(|_| invalid_arg(queue, arg, &format!("value {ms} is too large")))?;
    Ok(Some(Duration::from_millis(ms)))
}

fn string_arg(queue: &str, args: &Headers, arg: &str) -> Result<Option<String>, BrokerError> {
    match args.get(arg) {
        None => Ok(None),
        Some(FieldValue::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid_arg(
            queue,
            arg,
            &format!("unacceptable type '{}'", type_name(other)),
        )),
    }
}

/// Validates and reads a queue's arguments, as RabbitMQ does on declare.
pub(super) fn queue_args(queue: &Queue) -> Result<QueueArgs, BrokerError> {
    let name = queue.name.as_str();
    let args = &queue.arguments;
    match args.get("x-queue-type") {
        None => {}
        Some(FieldValue::String(t)) if t == "classic" => {}
        Some(FieldValue::String(t)) if t == "quorum" => quorum_properties(queue)?,
        Some(FieldValue::String(t)) => {
            return Err(invalid_arg(
                name,
                "x-queue-type",
                &format!("\"unsupported queue type '{t}'\""),
            ));
        }
        Some(other) => {
            return Err(invalid_arg(
                name,
                "x-queue-type",
                &format!("unacceptable type '{}'", type_name(other)),
            ));
        }
    }
    let dead_letter_exchange = string_arg(name, args, "x-dead-letter-exchange")?;
    let dead_letter_routing_key = string_arg(name, args, "x-dead-letter-routing-key")?;
    if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
        return Err(invalid_arg(
            name,
            "x-dead-letter-routing-key",
            "missing dead letter exchange (x-dead-letter-exchange)",
        ));
    }
    let single_active_consumer = match args.get("x-single-active-consumer") {
        None => false,
        Some(FieldValue::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid_arg(
                name,
                "x-single-active-consumer",
                &format!("unacceptable type '{}'", type_name(other)),
            ));
        }
    };
    Ok(QueueArgs {
        expires: millis_arg(name, args, "x-expires", 1)?,
        message_ttl: millis_arg(name, args, "x-message-ttl", 0)?,
        dead_letter_exchange,
        dead_letter_routing_key,
        single_active_consumer,
    })
}

/// What a quorum queue cannot be, checked in RabbitMQ's order and words.
fn quorum_properties(queue: &Queue) -> Result<(), BrokerError> {
    let name = &queue.name;
    if queue.arguments.get("x-max-priority").is_some() {
        return Err(BrokerError::PreconditionFailed(format!(
            "invalid arg 'x-max-priority' for queue '{name}' in vhost '{VHOST}' of queue type rabbit_quorum_queue"
        )));
    }
    let invalid = [
        (queue.auto_delete, "auto-delete"),
        (queue.exclusive, "exclusive-owner"),
        (!queue.durable, "non-durable"),
    ];
    match invalid.into_iter().find(|(bad, _)| *bad) {
        Some((_, property)) => Err(BrokerError::PreconditionFailed(format!(
            "invalid property '{property}' for queue '{name}' in vhost '{VHOST}'"
        ))),
        None => Ok(()),
    }
}

/// Parses a message's `expiration` property (milliseconds as a decimal string).
pub(super) fn parse_expiration(expiration: &str) -> Result<Duration, BrokerError> {
    expiration
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| BrokerError::PreconditionFailed(format!("invalid expiration '{expiration}': no_integer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_widths_are_equivalent() {
        let a = Queue::durable("q").expires(Duration::from_secs(300));
        let mut b = Queue::durable("q");
        b.arguments.insert("x-expires", FieldValue::I32(300_000));
        assert_eq!(queue_equivalent(&a, &b), Ok(()));
        let c = Queue::durable("q").expires(Duration::from_secs(30));
        let err = queue_equivalent(&a, &c).expect_err("different expiry");
        assert_eq!(
            err.to_string(),
            "PRECONDITION_FAILED: inequivalent arg 'x-expires' for queue 'q' in vhost '/': received the value '30000' \
             of type 'long' but current is the value '300000' of type 'long'"
        );
        let d = Queue::durable("q");
        assert!(queue_equivalent(&a, &d).is_err());
    }

    #[test]
    fn unknown_arguments_are_not_compared() {
        let a = Queue::durable("q");
        let mut b = Queue::durable("q");
        b.arguments.insert("x-custom", FieldValue::Bool(true));
        assert_eq!(queue_equivalent(&a, &b), Ok(()));
    }

    #[test]
    fn invalid_arguments() {
        let mut q = Queue::durable("q");
        q.arguments.insert("x-expires", FieldValue::I32(0));
        assert!(matches!(queue_args(&q), Err(BrokerError::PreconditionFailed(_))));
        let mut q = Queue::durable("q");
        q.arguments.insert("x-message-ttl", FieldValue::String("10".into()));
        assert!(matches!(queue_args(&q), Err(BrokerError::PreconditionFailed(_))));
        let mut q = Queue::durable("q");
        q.arguments
            .insert("x-dead-letter-routing-key", FieldValue::String("k".into()));
        assert!(matches!(queue_args(&q), Err(BrokerError::PreconditionFailed(_))));
        assert!(parse_expiration("12a").is_err());
        assert_eq!(parse_expiration("1500"), Ok(Duration::from_millis(1500)));
    }
}
