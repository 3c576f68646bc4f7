//! Retries with a delay and dead-lettering for event handlers: [`Retry`], [`Backoff`],
//! and what a handler does with an event whose worker failed.
//!
//! A failed event is republished (with publisher confirms) to a *retry queue* of its
//! handler queue, `<queue>.retry.<delay>ms`, declared with `x-message-ttl = delay` and
//! dead-lettering through the default exchange back to the handler queue; only then is
//! the original acknowledged. The handler queue's own declare is never changed, so
//! Python instances can keep sharing it. After the last attempt the event goes to the
//! dead-letter exchange (confirmed), or is logged and dropped.

use std::{fmt, str::FromStr, time::Duration};

use nameko_core::{RemoteError, SetupError, WorkerError};

use crate::{
    broker::{
        AckOutcome, BrokerError, Delivery, Exchange, FieldValue, Headers, Properties, Publish, PublishOutcome, Queue,
        SharedBroker, Topology,
    },
    timer::parse_interval,
};

/// The header counting the retries of an event: `n` on the `n`-th retry (the
/// `n + 1`-th attempt); absent on the first attempt. It is not a `nameko.*` header, so
/// it never becomes context data nor travels with what the handler sends on.
pub const RETRY_ATTEMPT_HEADER: &str = "x-nameko-retry-attempt";
/// On a dead-lettered event: the `exc_type` of the last attempt's error.
pub const ERROR_TYPE_HEADER: &str = "x-nameko-error-type";
/// On a dead-lettered event: the message (`str()`) of the last attempt's error.
pub const ERROR_MESSAGE_HEADER: &str = "x-nameko-error-message";
/// On a dead-lettered event: how many times the handler ran (`max + 1`).
pub const ATTEMPTS_HEADER: &str = "x-nameko-attempts";
/// On a dead-lettered event: the handler queue it was consumed from.
pub const QUEUE_HEADER: &str = "x-nameko-queue";

/// How a retry queue of a non-reliable (auto-delete) handler queue outlives its delay:
/// it expires this long after its last declare, which comes before every publish.
const EXPIRES_MARGIN: Duration = Duration::from_secs(60);

/// The longest delay: RabbitMQ's `x-message-ttl` is at most 2^32 − 1 milliseconds.
const MAX_DELAY_MS: u128 = u32::MAX as u128;

/// The delays between attempts: exponential from `first`, doubling at each retry and
/// capped at `cap` (`1s..30s`: 1, 2, 4, 8, 16, 30, 30… seconds), or one fixed delay.
/// Delays are whole milliseconds (rounded down), at least 1 ms and at most
/// 2^32 − 1 ms (RabbitMQ's limit for a message TTL).
///
/// ```
/// use std::time::Duration;
/// use nameko_extensions::events::Backoff;
///
/// let backoff: Backoff = "1s..30s".parse().unwrap();
/// let secs: Vec<u64> = (1..=7).map(|n| backoff.delay(n).as_secs()).collect();
/// assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
/// assert_eq!("5s".parse::<Backoff>().unwrap(), Backoff::fixed(Duration::from_secs(5)));
/// assert!("30s..1s".parse::<Backoff>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
}

impl Backoff {
    /// The same delay before every retry.
    pub fn fixed(delay: Duration) -> Self {
        Self {
            first: delay,
            cap: delay,
        }
    }

    /// `first` before the first retry, doubling at each retry up to `cap`.
    pub fn exponential(first: Duration, cap: Duration) -> Self {
        Self { first, cap }
    }

    /// The delay before retry `retry` (1 for the first retry): `first × 2^(retry−1)`,
    /// at most the cap, in whole milliseconds.
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1);
        let delay = 1u32
            .checked_shl(doublings)
            .and_then(|factor| self.first.checked_mul(factor))
            .map_or(self.cap, |delay| delay.min(self.cap));
        whole_millis(delay)
    }

    /// The first delay.
    pub fn first(&self) -> Duration {
        self.first
    }

    /// The longest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// Checks the delays are usable as RabbitMQ message TTLs.
    ///
    /// # Errors
    ///
    /// When the first delay is under a millisecond, the cap is below the first delay,
    /// or a delay is longer than 2^32 − 1 ms.
    pub fn check(&self) -> Result<(), InvalidBackoff> {
        if self.first < Duration::from_millis(1) {
            return Err(InvalidBackoff::new(self.to_string(), "a delay must be at least 1ms"));
        }
        if self.cap < self.first {
            return Err(InvalidBackoff::new(
                self.to_string(),
                "the longest delay (after `..`) is shorter than the first",
            ));
        }
        if self.cap.as_millis() > MAX_DELAY_MS {
            return Err(InvalidBackoff::new(
                self.to_string(),
                "a delay must be at most 4294967295ms (about 49 days), RabbitMQ's longest message TTL",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Backoff {
    /// `1000ms..30000ms`, or `5000ms` for a fixed delay.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.first.as_millis())?;
        if self.cap != self.first {
            write!(f, "..{}ms", self.cap.as_millis())?;
        }
        Ok(())
    }
}

impl FromStr for Backoff {
    type Err = InvalidBackoff;

    /// `"1s..30s"` (exponential, doubling from 1 s up to 30 s) or `"5s"` (fixed); each
    /// delay as `#[timer(interval)]` takes it: `500ms`, `30s`, `5m`, `1h`, or a number
    /// of seconds.
    fn from_str(input: &str) -> Result<Self, InvalidBackoff> {
        let delay = |text: &str| {
            parse_interval(text)
                .map_err(|err| InvalidBackoff::new(input, format!("`{}`: {}", text.trim(), err.reason())))
        };
        let backoff = match input.split_once("..") {
            Some((first, cap)) => Self::exponential(delay(first)?, delay(cap)?),
            None => Self::fixed(delay(input)?),
        };
        backoff.check().map_err(|err| InvalidBackoff::new(input, err.reason))?;
        Ok(backoff)
    }
}

/// A backoff that is not one of the accepted forms, or not a usable delay.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid retry backoff `{input}`: {reason}; write one delay (`\"5s\"`) or the first and the longest \
     (`\"1s..30s\"`: 1, 2, 4, 8, 16, 30, 30... seconds), each as `500ms`, `30s`, `5m` or `1h`"
)]
pub struct InvalidBackoff {
    input: String,
    reason: String,
}

impl InvalidBackoff {
    fn new(input: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            input: input.into(),
            reason: reason.into(),
        }
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// How often a failed event handler runs again, and after which delays. `max` is the
/// number of **retries after the first attempt**: a handler with `max = 5` runs at
/// most six times for one event.
///
/// ```
/// use std::time::Duration;
/// use nameko_extensions::events::{Backoff, EventHandler, Retry};
///
/// let handler = EventHandler::<serde_json::Value>::new("orders", "order_created")
///     .retry(Retry::new(5, "1s..30s".parse().unwrap()))
///     .dead_letter("orders.dead");
/// let fixed = Retry::new(3, Backoff::fixed(Duration::from_millis(500)));
/// assert_eq!(fixed.delays().collect::<Vec<_>>(), [Duration::from_millis(500); 3]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retry {
    /// Retries after the first attempt (0: none).
    pub max: u32,
    /// The delay before each retry.
    pub backoff: Backoff,
}

impl Retry {
    /// At most `max` retries after the first attempt, `backoff` apart.
    pub fn new(max: u32, backoff: Backoff) -> Self {
        Self { max, backoff }
    }

    /// The delay before each retry, in order: `max` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        (1..=self.max).map(|retry| self.backoff.delay(retry))
    }
}

fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What an event handler does with an event whose worker failed, when it retries or
/// dead-letters.
#[derive(Debug)]
pub(crate) struct OnFailure {
    broker: SharedBroker,
    /// The handler queue, as declared.
    queue: Queue,
    event_type: String,
    retry: Option<Retry>,
    dead_letter: Option<String>,
}

/// How the failed delivery is to be settled.
enum Settle {
    Ack,
    Requeue,
}

impl OnFailure {
    /// Checks the options; `None` when the handler neither retries nor dead-letters.
    pub(crate) fn new(
        broker: SharedBroker,
        queue: Queue,
        event_type: &str,
        retry: Option<Retry>,
        dead_letter: Option<String>,
        place: &str,
    ) -> Result<Option<Self>, SetupError> {
        if retry.is_none() && dead_letter.is_none() {
            return Ok(None);
        }
        if let Some(retry) = &retry {
            retry
                .backoff
                .check()
                .map_err(|err| SetupError::new(format!("{place}: {err}")))?;
        }
        if dead_letter.as_deref() == Some("") {
            return Err(SetupError::new(format!(
                "{place}: the dead-letter exchange has no name; name an exchange (it is declared as a durable \
                 topic exchange)"
            )));
        }
        Ok(Some(Self {
            broker,
            queue,
            event_type: event_type.to_owned(),
            retry,
            dead_letter,
        }))
    }

    /// Declares the dead-letter exchange and every retry queue, before the handler
    /// consumes, so a conflict shows at start.
    pub(crate) async fn declare(&self) -> Result<(), BrokerError> {
        self.broker.declare(&self.topology()).await
    }

    /// The dead-letter exchange and every retry queue.
    fn topology(&self) -> Topology {
        let mut topology = Topology::new();
        if let Some(exchange) = &self.dead_letter {
            topology = topology.exchange(Exchange::topic(exchange.clone()));
        }
        let mut delays: Vec<Duration> = self.retry.iter().flat_map(Retry::delays).collect();
        delays.dedup();
        for delay in delays {
            topology = topology.queue(self.retry_queue(delay));
        }
        topology
    }

    /// `<queue>.retry.<ms>ms`: messages wait `delay`, then go back to the handler queue
    /// through the default exchange. Durable as the handler queue; a retry queue of an
    /// auto-delete handler queue expires a minute after its delay, unused.
    fn retry_queue(&self, delay: Duration) -> Queue {
        let ms = delay.as_millis();
        let mut queue = Queue::durable(format!("{}.retry.{ms}ms", self.queue.name))
            .message_ttl(delay)
            .dead_letter("", Some(self.queue.name.clone()));
        queue.durable = self.queue.durable;
        if self.queue.auto_delete {
            queue = queue.expires(delay + EXPIRES_MARGIN);
        }
        queue
    }

    /// Sends a failed event on — to a retry queue, to the dead-letter exchange, or
    /// nowhere — and settles it: acknowledged once the copy is confirmed, requeued
    /// when it could not be sent.
    pub(crate) async fn failed(&self, delivery: &Delivery, error: &WorkerError) -> Result<AckOutcome, BrokerError> {
        let remote = error.to_remote_error();
        let retries = retries_of(delivery.properties.headers.as_ref());
        let attempts = retries.saturating_add(1);
        let settle = match self.retry {
            Some(retry) if retries < retry.max => {
                let next = retries + 1;
                let delay = retry.backoff.delay(next);
                match self.schedule_retry(delivery, next, delay).await {
                    Ok(()) => {
                        tracing::warn!(
                            queue = %self.queue.name,
                            error = %remote,
                            "attempt {attempts} of {} failed; retrying in {delay:?}",
                            retry.max + 1
                        );
                        Settle::Ack
                    }
                    Err(why) => {
                        tracing::error!(
                            queue = %self.queue.name,
                            error = %remote,
                            "attempt {attempts} failed and the retry could not be scheduled ({why}); requeueing the event"
                        );
                        Settle::Requeue
                    }
                }
            }
            _ => self.give_up(delivery, &remote, attempts).await,
        };
        match settle {
            Settle::Ack => delivery.ack().await,
            Settle::Requeue => delivery.nack(true).await,
        }
    }

    async fn schedule_retry(&self, delivery: &Delivery, retry: u32, delay: Duration) -> Result<(), String> {
        let queue = self.retry_queue(delay);
        let topology = Topology::new().queue(queue.clone());
        if self.queue.auto_delete {
            // Resets the retry queue's `x-expires`: it outlives the message.
            self.broker.declare(&topology).await.map_err(|e| e.to_string())?;
        }
        let mut properties = delivery.properties.clone();
        let headers = properties.headers.get_or_insert_with(Headers::new);
        strip_deaths(headers);
        headers.insert(RETRY_ATTEMPT_HEADER, FieldValue::I64(i64::from(retry)));
        let message = Publish {
            exchange: String::new(),
            routing_key: queue.name.clone(),
            mandatory: true,
            properties,
            body: delivery.body.clone(),
        };
        match publish(&self.broker, message.clone()).await? {
            PublishOutcome::Routed => Ok(()),
            // The retry queue was deleted: declare it again, once.
            _ => {
                self.broker.declare(&topology).await.map_err(|e| e.to_string())?;
                match publish(&self.broker, message).await? {
                    PublishOutcome::Routed => Ok(()),
                    _ => Err(format!("retry queue `{}` does not take messages", queue.name)),
                }
            }
        }
    }

    /// After the last attempt: to the dead-letter exchange when there is one.
    async fn give_up(&self, delivery: &Delivery, remote: &RemoteError, attempts: u32) -> Settle {
        let Some(exchange) = &self.dead_letter else {
            tracing::error!(
                queue = %self.queue.name,
                error = %remote,
                "attempt {attempts} failed, the last one: dropping the event (no dead-letter exchange)"
            );
            return Settle::Ack;
        };
        let mut properties: Properties = delivery.properties.clone();
        let headers = properties.headers.get_or_insert_with(Headers::new);
        strip_deaths(headers);
        headers.remove(RETRY_ATTEMPT_HEADER);
        headers.insert(ERROR_TYPE_HEADER, FieldValue::String(remote.exc_type().to_owned()));
        headers.insert(ERROR_MESSAGE_HEADER, FieldValue::String(remote.value().to_owned()));
        headers.insert(ATTEMPTS_HEADER, FieldValue::I64(i64::from(attempts)));
        headers.insert(QUEUE_HEADER, FieldValue::String(self.queue.name.clone()));
        let message = Publish {
            exchange: exchange.clone(),
            routing_key: self.event_type.clone(),
            mandatory: true,
            properties,
            body: delivery.body.clone(),
        };
        match publish(&self.broker, message).await {
            Ok(PublishOutcome::Routed) => {
                tracing::error!(
                    queue = %self.queue.name,
                    error = %remote,
                    "attempt {attempts} failed, the last one: the event went to dead-letter exchange `{exchange}`"
                );
                Settle::Ack
            }
            Ok(_) => {
                tracing::error!(
                    queue = %self.queue.name,
                    error = %remote,
                    "attempt {attempts} failed, the last one, and no queue is bound to dead-letter exchange \
                     `{exchange}` for `{}`: dropping the event",
                    self.event_type
                );
                Settle::Ack
            }
            Err(why) => {
                tracing::error!(
                    queue = %self.queue.name,
                    error = %remote,
                    "attempt {attempts} failed, the last one, and the event could not be dead-lettered to \
                     `{exchange}` ({why}); requeueing it"
                );
                Settle::Requeue
            }
        }
    }
}

/// A confirmed publish; `Routed` or `Returned`, anything else is an error.
async fn publish(broker: &SharedBroker, message: Publish) -> Result<PublishOutcome, String> {
    match broker.publish(message).await {
        Ok(outcome @ (PublishOutcome::Routed | PublishOutcome::Returned { .. })) => Ok(outcome),
        Ok(PublishOutcome::Nacked) => Err("the broker refused it (nack)".into()),
        Ok(PublishOutcome::ChannelClosed) => Err("the channel closed before the confirm".into()),
        Err(err) => Err(err.to_string()),
    }
}

/// The retries an event had so far, from [`RETRY_ATTEMPT_HEADER`] (0 without it).
fn retries_of(headers: Option<&Headers>) -> u32 {
    headers
        .and_then(|h| h.get(RETRY_ATTEMPT_HEADER))
        .and_then(|v| v.to_json().as_u64())
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Removes what dead-lettering through a retry queue added (`x-death`,
/// `x-first-death-*`, `x-last-death-*`): the copy sent on carries the event's own
/// headers and the attempt count only.
fn strip_deaths(headers: &mut Headers) {
    let names: Vec<String> = headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| *name == "x-death" || name.starts_with("x-first-death-") || name.starts_with("x-last-death-"))
        .map(str::to_owned)
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap() {
        let backoff: Backoff = "1s..30s".parse().unwrap();
        let secs: Vec<u64> = (1..=8).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(30), "no overflow");
        let ms: Backoff = "50ms .. 200ms".parse().unwrap();
        assert_eq!(
            Retry::new(4, ms).delays().collect::<Vec<_>>(),
            [50, 100, 200, 200].map(Duration::from_millis)
        );
    }

    #[test]
    fn a_single_delay_is_fixed() {
        let backoff: Backoff = "5s".parse().unwrap();
        assert_eq!(backoff, Backoff::fixed(Duration::from_secs(5)));
        assert_eq!(backoff.delay(9), Duration::from_secs(5));
        assert_eq!(backoff.to_string(), "5000ms");
        assert_eq!("1s..2m".parse::<Backoff>().unwrap().to_string(), "1000ms..120000ms");
    }

    #[test]
    fn bad_backoffs_say_what_is_wrong() {
        for (input, reason) in [
            ("30s..1s", "shorter than the first"),
            ("soon", "`soon`: it does not start with a number"),
            ("1s..10 parsecs", "`10 parsecs`: unknown unit"),
            ("0s", "at least 1ms"),
            ("1s..50d", "unknown unit"),
            ("1s..2000h", "at most 4294967295ms"),
        ] {
            let err = input.parse::<Backoff>().unwrap_err();
            assert!(err.reason().contains(reason), "{input}: {err}");
            assert!(err.to_string().contains(&format!("`{input}`")), "{err}");
        }
        assert!(
            Backoff::exponential(Duration::ZERO, Duration::from_secs(1))
                .check()
                .is_err()
        );
    }

    #[test]
    fn the_attempt_header_is_read_from_any_integer() {
        let mut headers = Headers::new();
        assert_eq!(retries_of(Some(&headers)), 0);
        headers.insert(RETRY_ATTEMPT_HEADER, FieldValue::I32(3));
        assert_eq!(retries_of(Some(&headers)), 3);
        headers.insert(RETRY_ATTEMPT_HEADER, FieldValue::U8(2));
        assert_eq!(retries_of(Some(&headers)), 2);
        headers.insert(RETRY_ATTEMPT_HEADER, FieldValue::String("x".into()));
        assert_eq!(retries_of(Some(&headers)), 0);
    }

    #[test]
    fn deaths_are_stripped_and_the_rest_kept() {
        let mut headers = Headers::new();
        for name in [
            "x-death",
            "x-first-death-queue",
            "x-last-death-reason",
            "nameko.user_id",
            "x-other",
        ] {
            headers.insert(name, FieldValue::String("v".into()));
        }
        strip_deaths(&mut headers);
        let names: Vec<&str> = headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["nameko.user_id", "x-other"]);
    }
}
