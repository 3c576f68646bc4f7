//! [`TimerEntrypoint`]: the `timer` entrypoint — a method run on a schedule.
//!
//! Two kinds of schedule:
//!
//! - **interval** ([`TimerEntrypoint::interval`], [`TimerEntrypoint::every`]), on tokio
//!   time (so tests can pause time): the first tick one interval after start, or at
//!   start when `eager`; then one every interval, anchored to the start as in Nameko.
//! - **cron** (`TimerEntrypoint::cron`, feature `cron`), on the wall clock through
//!   tokio-cron-scheduler: six or seven fields with seconds first
//!   (`"0 */5 * * * *"`), in UTC unless [`tz`](TimerEntrypoint::tz) names a zone.
//!
//! Whatever the schedule:
//!
//! - **Ticks never overlap**: no tick starts while the previous tick's worker runs.
//!   An interval timer that overran follows its [`MissedTicks`] policy; a cron timer
//!   skips the ticks that fall while its worker runs.
//! - Each tick is a worker started through the container (a worker slot, the
//!   dependencies' hooks, one span), with no request and no context data. A tick that
//!   fails or panics is logged by the container and the timer goes on.
//! - **Stop** fires no new tick and waits for a running one: it is never cut short
//!   (only `kill` cancels it).
//! - **`cluster_singleton`**: only one instance of the service in the cluster fires;
//!   see [`TimerEntrypoint::cluster_singleton`].
//!
//! ```
//! use std::time::Duration;
//! use nameko_extensions::timer::{MissedTicks, TimerEntrypoint};
//!
//! let every_30s = TimerEntrypoint::interval(Duration::from_secs(30));
//! let at_start_too = TimerEntrypoint::every("500ms").eager(true).missed(MissedTicks::Skip);
//! let one_firer = TimerEntrypoint::every("5m").cluster_singleton(true);
//! ```

#[cfg(feature = "cron")]
mod cron;
mod interval;
mod singleton;

use std::{fmt, sync::Mutex, time::Duration};

use nameko_core::{Binding, ContextData, Entrypoint, Extension, SetupContext, SetupError, WorkerError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::interval::{InvalidInterval, parse_interval};
use self::{interval::IntervalPlan, singleton::Election};
use crate::{slot::reserve_unless_stopped, transport};

/// What an interval timer does with the ticks that fell due while its previous tick
/// still ran (ticks never overlap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissedTicks {
    /// Catch up, as Nameko: the schedule stays anchored to the start
    /// (`start + n × interval`) and advances one step per tick, so after an overrun
    /// the missed ticks fire back to back until the schedule is caught up. The
    /// default, because it is what a Python Nameko timer does: a service moved from
    /// Python fires as many ticks, at the same moments, as before.
    #[default]
    Burst,
    /// Drop the ticks that fell due during an overrun: the next tick is the next
    /// deadline on the schedule that is not in the past. Nothing ever fires late.
    Skip,
}

impl MissedTicks {
    /// The name `#[timer(missed = "...")]` takes: `burst` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::Skip => "skip",
        }
    }
}

impl std::str::FromStr for MissedTicks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "burst" => Ok(Self::Burst),
            "skip" => Ok(Self::Skip),
            other => Err(format!("unknown missed-tick policy `{other}`; expected burst or skip")),
        }
    }
}

/// A runner or container resource that keeps every timer from firing on its schedule:
/// ticks then happen only when a test fires them (`ServiceHarness::fire_timer` in
/// nameko-testing, or [`ServiceContainer::call`](nameko_core::ServiceContainer::call)
/// with `()`). Cluster-singleton timers do not join the election either.
///
/// ```
/// use std::sync::Arc;
/// use nameko_core::Resources;
/// use nameko_extensions::timer::ManualTicks;
///
/// let resources = Resources::new().with(Arc::new(ManualTicks));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManualTicks;

/// How the timer was asked to fire, before setup checks it.
#[derive(Clone, Debug)]
enum Spec {
    Interval(Duration),
    Text(String),
    #[cfg(feature = "cron")]
    Cron(String),
}

/// How the timer fires, checked.
#[derive(Clone, Debug)]
enum Plan {
    Interval(IntervalPlan),
    #[cfg(feature = "cron")]
    Cron(cron::CronPlan),
}

impl Plan {
    /// Fires ticks until `stop`; returns once a running tick ended.
    async fn run(self, tick: Tick, stop: CancellationToken) {
        match self {
            Self::Interval(plan) => plan.run(tick, stop).await,
            #[cfg(feature = "cron")]
            Self::Cron(plan) => plan.run(tick, stop).await,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interval(plan) => plan.fmt(f),
            #[cfg(feature = "cron")]
            Self::Cron(plan) => plan.fmt(f),
        }
    }
}

/// Starts one tick's worker through the container and waits for it.
#[derive(Clone)]
pub(crate) struct Tick {
    binding: Binding<(), ()>,
}

impl Tick {
    /// Runs one tick: waits for a worker slot (unless `stop` comes first), starts the
    /// worker and waits for it to end — `stop` does not cut it. Returns `false` when
    /// the timer should end: stopped before the worker started, or the container
    /// refuses work.
    async fn fire(&self, stop: &CancellationToken) -> bool {
        let Some(slot) = reserve_unless_stopped(&self.binding, stop).await else {
            return false;
        };
        let handle = slot.start((), ContextData::new());
        let call_id = handle.call_id().to_owned();
        // The container logs failures and panics; the timer goes on.
        match handle.await {
            Ok(()) | Err(WorkerError::Failed(_) | WorkerError::Panicked(_)) => true,
            Err(err) => {
                tracing::debug!(%call_id, %err, "timer tick ended");
                !matches!(err, WorkerError::Killed)
            }
        }
    }
}

/// The `timer` entrypoint: runs its method on a schedule (see the [module](self)).
/// The method takes no request (`()`) and its result is dropped (`()`).
///
/// ```
/// use nameko_core::{Entrypoints, RemoteError, Service};
/// use nameko_extensions::timer::TimerEntrypoint;
/// # use nameko_core::*;
/// # pub struct Reporter;
/// # pub struct ReporterProviders;
/// # impl Providers for ReporterProviders {
/// #     type Worker = Reporter;
/// #     fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> { Vec::new() }
/// #     async fn build<'a>(&'a self, _: &mut WorkerBuilder<'a>) -> Result<Reporter, DependencyError> { Ok(Reporter) }
/// # }
/// # impl Dependencies for Reporter { type Providers = ReporterProviders; fn providers() -> ReporterProviders { ReporterProviders } }
///
/// impl Service for Reporter {
///     const NAME: &'static str = "reporter";
///
///     fn entrypoints(e: &mut Entrypoints<Self>) {
///         e.add("tick", TimerEntrypoint::every("30s").eager(true), |_w: Reporter, ()| async move {
///             println!("tick");
///             Ok::<_, RemoteError>(())
///         });
///     }
/// }
/// ```
pub struct TimerEntrypoint {
    spec: Spec,
    eager: bool,
    missed: MissedTicks,
    #[cfg(feature = "cron")]
    tz: Option<String>,
    cluster_singleton: bool,
    max_workers: Option<usize>,
    manual: bool,
    plan: Option<Plan>,
    binding: Option<Binding<(), ()>>,
    election: Option<Election>,
    running: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl TimerEntrypoint {
    fn new(spec: Spec) -> Self {
        Self {
            spec,
            eager: false,
            missed: MissedTicks::default(),
            #[cfg(feature = "cron")]
            tz: None,
            cluster_singleton: false,
            max_workers: None,
            manual: false,
            plan: None,
            binding: None,
            election: None,
            running: Mutex::new(None),
        }
    }

    /// Fires every `period` (on tokio time). A zero period is refused at setup.
    pub fn interval(period: Duration) -> Self {
        Self::new(Spec::Interval(period))
    }

    /// Fires every `interval`, written as [`parse_interval`] reads it (`"500ms"`,
    /// `"30s"`, `"5m"`, `"1h"`, `"0.5"` seconds). An invalid one fails setup with an
    /// error naming the service, the method and the text.
    pub fn every(interval: impl Into<String>) -> Self {
        Self::new(Spec::Text(interval.into()))
    }

    /// Fires on a cron schedule, on the wall clock (feature `cron`): six fields with
    /// seconds first, or seven with a year (`"0 */5 * * * *"`: every five minutes),
    /// in UTC unless [`tz`](Self::tz) says otherwise. Ticks that fall while the
    /// previous one runs are skipped. An invalid expression fails setup with an error
    /// naming the service, the method and the expression.
    #[cfg(feature = "cron")]
    pub fn cron(expression: impl Into<String>) -> Self {
        Self::new(Spec::Cron(expression.into()))
    }

    /// The time zone of a cron schedule, by its IANA name (`"Europe/Paris"`); UTC
    /// when unset. An unknown name, or a zone on an interval timer, fails setup.
    #[cfg(feature = "cron")]
    #[must_use]
    pub fn tz(mut self, zone: impl Into<String>) -> Self {
        self.tz = Some(zone.into());
        self
    }

    /// Fires once at start too (interval timers; default `false`: the first tick is
    /// one interval after start).
    #[must_use]
    pub fn eager(mut self, eager: bool) -> Self {
        self.eager = eager;
        self
    }

    /// What an interval timer does with ticks missed during an overrun (default
    /// [`MissedTicks::Burst`], as Nameko).
    #[must_use]
    pub fn missed(mut self, missed: MissedTicks) -> Self {
        self.missed = missed;
        self
    }

    /// Fires on one instance of the service in the whole cluster instead of on every
    /// instance (default `false`).
    ///
    /// The instances elect the firer through the broker: each consumes the queue
    /// `timer-<service>.<method>` (non-durable, auto-delete, `x-single-active-consumer`)
    /// and makes sure a token message is in it at start. The broker delivers the
    /// token to the single active consumer, which fires while it holds the token
    /// unacknowledged (surplus tokens are acknowledged away). When that instance stops,
    /// or dies, or loses its connection, its channel closes, the token goes back to the
    /// queue and the broker hands it to the next consumer, which starts its schedule
    /// from then. A lost connection can lose the token (the queue goes with its last
    /// consumer), so each instance puts one back whenever its connection recovers;
    /// the firer acknowledges the spare ones away. With a runner's readiness, the timer reports itself as
    /// `timer <service>.<method> (firing)` or `(standing by)`; both are ready.
    #[must_use]
    pub fn cluster_singleton(mut self, singleton: bool) -> Self {
        self.cluster_singleton = singleton;
        self
    }

    /// Runs at most `max_workers` ticks of this timer at once (at least 1). A schedule
    /// never overlaps its own ticks, so this only bounds ticks fired by hand beside
    /// it (`ServiceHarness::fire_timer`, [`ServiceContainer::call`](nameko_core::ServiceContainer::call)):
    /// with 1, such a tick waits for a scheduled one to end. Ticks also take a slot of
    /// the container's `max_workers`.
    #[must_use]
    pub fn max_workers(mut self, max_workers: usize) -> Self {
        self.max_workers = Some(max_workers);
        self
    }

    fn plan(&self, service: &str, method: &str) -> Result<Plan, SetupError> {
        let place = format!("service `{service}`: timer `{method}`");
        let interval = |period: Duration| {
            if period.is_zero() {
                return Err(SetupError::new(format!("{place}: the interval must not be zero")));
            }
            #[cfg(feature = "cron")]
            if let Some(zone) = &self.tz {
                return Err(SetupError::new(format!(
                    "{place}: `tz = \"{zone}\"` applies to cron timers only"
                )));
            }
            Ok(Plan::Interval(IntervalPlan {
                period,
                eager: self.eager,
                missed: self.missed,
            }))
        };
        match &self.spec {
            Spec::Interval(period) => interval(*period),
            Spec::Text(text) => {
                interval(parse_interval(text).map_err(|err| SetupError::new(format!("{place}: {err}")))?)
            }
            #[cfg(feature = "cron")]
            Spec::Cron(expression) => {
                if self.eager {
                    return Err(SetupError::new(format!(
                        "{place}: `eager` applies to interval timers only"
                    )));
                }
                cron::CronPlan::parse(expression, self.tz.as_deref())
                    .map(Plan::Cron)
                    .map_err(|err| SetupError::new(format!("{place}: {err}")))
            }
        }
    }

    fn tick(&self) -> Result<Tick, SetupError> {
        self.binding
            .clone()
            .map(|binding| Tick { binding })
            .ok_or_else(|| SetupError::new("the timer was not bound"))
    }
}

impl fmt::Debug for TimerEntrypoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TimerEntrypoint");
        d.field("spec", &self.spec)
            .field("eager", &self.eager)
            .field("missed", &self.missed);
        #[cfg(feature = "cron")]
        d.field("tz", &self.tz);
        d.field("cluster_singleton", &self.cluster_singleton)
            .field("max_workers", &self.max_workers)
            .finish_non_exhaustive()
    }
}

impl Extension for TimerEntrypoint {
    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let service = cx.service_name();
        let method = cx
            .entrypoint()
            .map(|ep| ep.method())
            .ok_or_else(|| SetupError::new("the timer was not bound"))?;
        let plan = self.plan(service, method)?;
        self.manual = cx.resource::<ManualTicks>().is_ok();
        if self.cluster_singleton && !self.manual {
            let broker = transport::broker(cx)?;
            let readiness = transport::readiness(cx);
            self.election = Some(Election::new(broker, service, method, readiness.as_ref()));
        }
        tracing::debug!(service, timer = method, "timer {plan}");
        self.plan = Some(plan);
        Ok(())
    }

    async fn start(&self) -> Result<(), SetupError> {
        let plan = self
            .plan
            .clone()
            .ok_or_else(|| SetupError::new("the timer was not set up"))?;
        let tick = self.tick()?;
        if self.manual {
            return Ok(());
        }
        if let Some(election) = &self.election {
            return election.start(plan, tick).await;
        }
        let stop = CancellationToken::new();
        let run = tokio::spawn(plan.run(tick, stop.clone()));
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop, run));
        Ok(())
    }

    async fn stop(&self) {
        if let Some(election) = &self.election {
            election.stop().await;
        }
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((stop, run)) = running {
            stop.cancel();
            if let Err(err) = run.await
                && err.is_panic()
            {
                tracing::error!("the timer's task panicked: {err}");
            }
        }
    }

    fn kill(&self) {
        if let Some(election) = &self.election {
            election.kill();
        }
        if let Some((stop, run)) = self.running.lock().unwrap_or_else(|p| p.into_inner()).take() {
            stop.cancel();
            run.abort();
        }
    }
}

impl Entrypoint for TimerEntrypoint {
    type Request = ();
    type Response = ();
    const KIND: &'static str = "timer";

    fn bind(&mut self, binding: Binding<(), ()>) {
        self.binding = Some(binding);
    }

    fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }
}
