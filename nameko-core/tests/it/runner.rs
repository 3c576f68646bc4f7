//! `ServiceRunner`: several services, resources by type, graceful stop then kill.

use std::{sync::Arc, time::Duration};

use nameko_core::{Config, ContainerError, ServiceContainer, ServiceRunner, Shutdown};
use tokio::sync::oneshot;

use crate::support::{Log, Probe};

nameko_core::register_service!(Probe);

#[tokio::test]
async fn run_until_serves_then_stops_gracefully() {
    let log = Arc::new(Log::default());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let runner = ServiceRunner::new(Config::default())
        .resource(Arc::clone(&log))
        .with_service::<Probe>();
    assert_eq!(runner.service_names(), ["probe"]);
    let run = tokio::spawn(runner.run_until(async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop_tx.send(()).unwrap();
    assert_eq!(run.await.unwrap().unwrap(), Shutdown::Graceful);
    assert!(log.contains(" once"));
    assert!(log.contains("stop:a"));
}

#[tokio::test]
async fn a_stuck_worker_is_killed_after_the_stop_timeout() {
    let log = Arc::new(Log::default());
    let running = ServiceRunner::new(Config::default())
        .resource(Arc::clone(&log))
        .with_service::<Probe>()
        .stop_timeout(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let container = running.container("probe").unwrap();
    let handle = container
        .binding::<(), String>("gated")
        .unwrap()
        .spawn((), Default::default())
        .await
        .unwrap();
    assert_eq!(running.shutdown(std::future::pending()).await, Shutdown::Killed);
    assert!(container.is_killed());
    assert!(handle.await.is_err());
}

#[tokio::test]
async fn a_second_signal_kills() {
    let log = Arc::new(Log::default());
    let running = ServiceRunner::new(Config::default())
        .resource(Arc::clone(&log))
        .with_service::<Probe>()
        .start()
        .await
        .unwrap();
    let container = running.container("probe").unwrap().clone();
    let _handle = container
        .binding::<(), String>("gated")
        .unwrap()
        .spawn((), Default::default())
        .await
        .unwrap();
    assert_eq!(running.shutdown(async {}).await, Shutdown::Killed);
    assert!(container.is_killed());
}

#[tokio::test]
async fn the_same_service_twice_is_an_error() {
    let err = ServiceRunner::new(Config::default())
        .with_service::<Probe>()
        .with_container(ServiceContainer::builder::<Probe>())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ContainerError::DuplicateService { name: "probe", .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_failed_start_names_the_service_and_field() {
    let err = ServiceRunner::new(Config::default())
        .with_service::<Probe>()
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("service `probe`: field `a`"), "{err}");
}

#[tokio::test]
async fn registered_services_are_found_by_name() {
    let log = Arc::new(Log::default());
    let runner = ServiceRunner::new(Config::default())
        .resource(log)
        .with_registered(["probe"])
        .unwrap();
    assert_eq!(runner.service_names(), ["probe"]);
    let running = runner.start().await.unwrap();
    running.stop().await;

    let err = ServiceRunner::new(Config::default())
        .with_registered(["nope"])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("no service named `nope`; known services: probe."),
        "{err}"
    );
    assert!(err.contains("use that_crate as _;"), "{err}");
}
