//! Cron schedules on tokio-cron-scheduler (feature `cron`).

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::Tick;

/// A checked cron expression and its time zone.
#[derive(Clone, Debug)]
pub(crate) struct CronPlan {
    expression: String,
    tz: Tz,
}

impl fmt::Display for CronPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cron `{}` in {}", self.expression, self.tz.name())
    }
}

impl CronPlan {
    /// Checks `expression` as tokio-cron-scheduler reads it (seconds required, day of
    /// month and day of week both honoured) and `tz` as an IANA name.
    pub(crate) fn parse(expression: &str, tz: Option<&str>) -> Result<Self, String> {
        CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(expression)
            .map_err(|err| {
                format!(
                    "invalid cron expression `{expression}`: {err}; write six fields with seconds first \
                     (`0 */5 * * * *`: every five minutes), or seven with a year"
                )
            })?;
        let tz = match tz {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                format!("unknown time zone `{name}`; write an IANA name such as `Europe/Paris` or `UTC`")
            })?,
        };
        Ok(Self {
            expression: expression.to_owned(),
            tz,
        })
    }

    /// Fires on the schedule until `stop`, skipping a tick while the previous one
    /// runs; returns once a running tick ended.
    pub(crate) async fn run(self, tick: Tick, stop: CancellationToken) {
        let running = Arc::new(AtomicBool::new(false));
        let ticks = TaskTracker::new();
        let job = {
            let (stop, ticks, schedule) = (stop.clone(), ticks.clone(), self.to_string());
            Job::new_async_tz(self.expression.as_str(), self.tz, move |_, _| {
                let (tick, stop, ticks, running) = (tick.clone(), stop.clone(), ticks.clone(), Arc::clone(&running));
                let schedule = schedule.clone();
                Box::pin(async move {
                    if stop.is_cancelled() {
                        return;
                    }
                    if running.swap(true, Ordering::SeqCst) {
                        tracing::info!("skipping a tick of {schedule}: the previous one still runs");
                        return;
                    }
                    // The worker runs in a task of its own: the scheduler never waits.
                    ticks.spawn(async move {
                        tick.fire(&stop).await;
                        running.store(false, Ordering::SeqCst);
                    });
                })
            })
        };
        let scheduler = async {
            let scheduler = JobScheduler::new().await?;
            scheduler.add(job?).await?;
            scheduler.start().await?;
            Ok::<_, tokio_cron_scheduler::JobSchedulerError>(scheduler)
        };
        match scheduler.await {
            Ok(mut scheduler) => {
                stop.cancelled().await;
                if let Err(err) = scheduler.shutdown().await {
                    tracing::warn!("could not shut the cron scheduler of {self} down: {err}");
                }
            }
            Err(err) => tracing::error!("the cron timer {self} cannot run: {err}"),
        }
        ticks.close();
        ticks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_and_zones_are_checked() {
        assert!(CronPlan::parse("0 */5 * * * *", None).is_ok());
        assert!(CronPlan::parse("*/1 * * * * *", Some("Europe/Paris")).is_ok());
        assert!(CronPlan::parse("0 0 12 * * Mon-Fri 2030", Some("UTC")).is_ok());
        let err = CronPlan::parse("*/5 * * * *", None).unwrap_err();
        assert!(err.contains("`*/5 * * * *`") && err.contains("six fields"), "{err}");
        let err = CronPlan::parse("0 0 25 * * *", None).unwrap_err();
        assert!(err.contains("invalid cron expression"), "{err}");
        let err = CronPlan::parse("0 * * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(err.contains("unknown time zone `Mars/Olympus`"), "{err}");
    }
}
