//! Interval strings and the interval schedule.

use std::{fmt, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{MissedTicks, Tick};

/// An interval that is not one of the accepted forms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid timer interval `{input}`: {reason}; write a number of seconds (`30`, `0.5`) or a number with a \
     unit: `500ms`, `30s`, `5m`, `1h`"
)]
pub struct InvalidInterval {
    input: String,
    reason: &'static str,
}

impl InvalidInterval {
    fn new(input: &str, reason: &'static str) -> Self {
        Self {
            input: input.to_owned(),
            reason,
        }
    }

    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What is wrong with it, e.g. `unknown unit`.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

/// Parses an interval as `#[timer(interval = ...)]` takes it: a number of seconds as
/// Nameko (`"30"`, `"0.5"`), or a number with a unit: `ms`, `s`, `m` or `h`
/// (`"500ms"`, `"30s"`, `"1.5m"`, `"1h"`). Surrounding spaces and a space before the
/// unit are allowed. The interval must be positive and at least a millisecond.
///
/// ```
/// use std::time::Duration;
/// use nameko_extensions::timer::parse_interval;
///
/// assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
/// assert_eq!(parse_interval("5m").unwrap(), Duration::from_secs(300));
/// assert_eq!(parse_interval("0.5").unwrap(), Duration::from_millis(500));
/// assert!(parse_interval("soon").is_err());
/// assert!(parse_interval("0s").is_err());
/// ```
///
/// # Errors
///
/// [`InvalidInterval`], naming the input and what is wrong with it.
pub fn parse_interval(input: &str) -> Result<Duration, InvalidInterval> {
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(InvalidInterval::new(input, "it does not start with a number"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| InvalidInterval::new(input, "the number does not parse"))?;
    let scale = match unit.trim_start() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(InvalidInterval::new(input, "unknown unit")),
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds > 1e12 {
        return Err(InvalidInterval::new(input, "it is too long"));
    }
    if seconds < 0.001 {
        return Err(InvalidInterval::new(input, "it must be at least 1ms"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// When an interval timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IntervalPlan {
    pub(crate) period: Duration,
    pub(crate) eager: bool,
    pub(crate) missed: MissedTicks,
}

impl fmt::Display for IntervalPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every {:?}", self.period)?;
        if self.eager {
            f.write_str(", eager")?;
        }
        write!(f, ", missed ticks: {}", self.missed.as_str())
    }
}

impl IntervalPlan {
    /// The deadline after a tick due at `due` ended at `now`.
    pub(crate) fn next(&self, due: Instant, now: Instant) -> Instant {
        let next = due + self.period;
        match self.missed {
            MissedTicks::Burst => next,
            MissedTicks::Skip if next >= now => next,
            MissedTicks::Skip => {
                // The first deadline on the schedule that is not in the past.
                let behind = (now - next).as_nanos();
                let period = self.period.as_nanos().max(1);
                let steps = behind.div_ceil(period);
                let skip = u32::try_from(steps).unwrap_or(u32::MAX);
                next + self.period.saturating_mul(skip)
            }
        }
    }

    /// Fires ticks on the schedule until `stop`; returns after a running tick ended.
    pub(crate) async fn run(self, tick: Tick, stop: CancellationToken) {
        let start = Instant::now();
        let mut due = if self.eager { start } else { start + self.period };
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(due) => {}
            }
            if !tick.fire(&stop).await {
                return;
            }
            due = self.next(due, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let ok = |s: &str| parse_interval(s).unwrap();
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok("0.5"), Duration::from_millis(500));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok(" 2 s "), Duration::from_secs(2));
        assert_eq!(ok("1.5m"), Duration::from_secs(90));
    }

    #[test]
    fn rejected_forms_say_why() {
        let err = |s: &str| parse_interval(s).unwrap_err().to_string();
        assert!(err("").contains("does not start with a number"), "{}", err(""));
        assert!(err("soon").contains("`soon`"));
        assert!(err("5d").contains("unknown unit"));
        assert!(err("1.2.3s").contains("does not parse"));
        assert!(err("0").contains("at least 1ms"));
        assert!(err("0.1ms").contains("at least 1ms"));
        assert!(err("-1s").contains("does not start with a number"));
        assert!(err("1e300h").contains("unknown unit") || err("1e300h").contains("too long"));
        assert!(err("99999999999999h").contains("too long"));
    }

    #[test]
    fn skip_moves_to_the_next_deadline_not_in_the_past() {
        let plan = |missed| IntervalPlan {
            period: Duration::from_secs(10),
            eager: false,
            missed,
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // On time: the next deadline is one period on, either way.
        assert_eq!(plan(MissedTicks::Skip).next(t0, t0 + s(3)), t0 + s(10));
        assert_eq!(plan(MissedTicks::Burst).next(t0, t0 + s(3)), t0 + s(10));
        // Overran to 25 s: burst fires the tick due at 10 at once, skip waits for 30.
        assert_eq!(plan(MissedTicks::Burst).next(t0, t0 + s(25)), t0 + s(10));
        assert_eq!(plan(MissedTicks::Skip).next(t0, t0 + s(25)), t0 + s(30));
        // Ending exactly on a deadline fires it.
        assert_eq!(plan(MissedTicks::Skip).next(t0, t0 + s(20)), t0 + s(20));
    }
}
