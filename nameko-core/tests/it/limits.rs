//! Per-entrypoint `max_workers`: each entrypoint's own limit, within the container's.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use nameko_core::{
    Config, ContainerError, Dependencies, DependencyError, Entrypoints, Provider, ProviderSlot, Providers, RemoteError,
    Service, ServiceContainer, WorkerBuilder, deps::Dep, entrypoints::Dummy,
};

/// Counts running workers: each entrypoint's and the container's, with high-water marks.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    limited: Gauge,
    free: Gauge,
    total: Gauge,
}

#[derive(Debug, Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

pub(crate) struct Limits {
    gauges: Dep<Gauges>,
}

pub(crate) struct LimitsProviders {
    gauges: Provider<Dep<Gauges>>,
}

impl Providers for LimitsProviders {
    type Worker = Limits;

    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
        vec![("gauges", &mut self.gauges as &mut dyn ProviderSlot)]
    }

    async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<Limits, DependencyError> {
        Ok(Limits {
            gauges: b.get(&self.gauges).await?,
        })
    }
}

impl Dependencies for Limits {
    type Providers = LimitsProviders;

    fn providers() -> LimitsProviders {
        LimitsProviders { gauges: Provider::of() }
    }
}

impl Limits {
    async fn work(&self, gauge: &Gauge) -> Result<(), RemoteError> {
        gauge.enter();
        self.gauges.total.enter();
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.gauges.total.leave();
        gauge.leave();
        Ok(())
    }
}

impl Service for Limits {
    const NAME: &'static str = "limits";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "limited",
            Dummy::<(), ()>::new().max_workers(2),
            |w: Limits, ()| async move { w.work(&w.gauges.limited).await },
        )
        .add("free", Dummy::<(), ()>::new(), |w: Limits, ()| async move {
            w.work(&w.gauges.free).await
        })
        .add(
            "roomy",
            Dummy::<(), ()>::new().max_workers(50),
            |w: Limits, ()| async move { w.work(&w.gauges.free).await },
        );
    }
}

async fn start(max_workers: usize) -> (ServiceContainer, Arc<Gauges>) {
    let gauges = Arc::new(Gauges::default());
    let container = ServiceContainer::builder::<Limits>()
        .config(Config::from_yaml_str(&format!("max_workers: {max_workers}")).unwrap())
        .resource(Arc::clone(&gauges))
        .start()
        .await
        .unwrap();
    (container, gauges)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entrypoint_limit_holds_and_the_container_bounds_the_total() {
    let (container, gauges) = start(5).await;
    let limited = (0..200).map(|_| container.call::<(), ()>("limited", ()));
    let free = (0..200).map(|_| container.call::<(), ()>("free", ()));
    let (limited, free) = tokio::join!(join_all(limited), join_all(free));
    assert!(limited.iter().chain(&free).all(Result::is_ok));
    assert_eq!(gauges.limited.peak(), 2, "the entrypoint's own limit, reached");
    assert_eq!(
        gauges.total.peak(),
        5,
        "the container's limit, reached and never exceeded"
    );
    assert!(gauges.free.peak() >= 3, "the other entrypoint used the rest");
    container.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_above_the_container_s_changes_nothing() {
    let (container, gauges) = start(3).await;
    let calls = (0..100).map(|_| container.call::<(), ()>("roomy", ()));
    assert!(join_all(calls).await.iter().all(Result::is_ok));
    assert_eq!(gauges.total.peak(), 3);
    container.stop().await;
}

/// Waiting for its own permit holds none of the container's: a limited entrypoint
/// flooded with calls leaves the container's other slots to the other entrypoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_an_entrypoint_permit_holds_no_container_slot() {
    let (container, gauges) = start(3).await;
    let container = Arc::new(container);
    let flood: Vec<_> = (0..300)
        .map(|_| {
            let container = Arc::clone(&container);
            tokio::spawn(async move { container.call::<(), ()>("limited", ()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // With 298 `limited` calls waiting, `free` still gets the third slot at once.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        container.call::<(), ()>("free", ()).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "free calls waited behind the flood: {:?}",
        started.elapsed()
    );
    for call in flood {
        call.await.unwrap().unwrap();
    }
    assert_eq!(gauges.limited.peak(), 2);
    assert!(gauges.total.peak() <= 3);
    Arc::into_inner(container).unwrap().stop().await;
}

#[derive(Debug)]
pub(crate) struct Zero;

pub(crate) struct ZeroProviders;

impl Providers for ZeroProviders {
    type Worker = Zero;

    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
        Vec::new()
    }

    async fn build<'a>(&'a self, _: &mut WorkerBuilder<'a>) -> Result<Zero, DependencyError> {
        Ok(Zero)
    }
}

impl Dependencies for Zero {
    type Providers = ZeroProviders;

    fn providers() -> ZeroProviders {
        ZeroProviders
    }
}

impl Service for Zero {
    const NAME: &'static str = "zero";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "never",
            Dummy::<(), ()>::new().max_workers(0),
            |_: Zero, ()| async move { Ok::<_, RemoteError>(()) },
        );
    }
}

#[tokio::test]
async fn a_limit_of_zero_fails_the_start_naming_the_entrypoint() {
    let err = ServiceContainer::builder::<Zero>().start().await.unwrap_err();
    assert!(matches!(err, ContainerError::Setup { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "service `zero`: entrypoint `never` (dummy) failed to set up: max_workers is 0: it would never run a \
         worker; give it 1 or more"
    );
}
