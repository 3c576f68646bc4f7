//! The timer example on paused time, with ticks fired by hand, and its binary.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use example_timer::{Reporter, Stats};
use nameko_testing::ServiceHarness;

#[tokio::test(start_paused = true)]
async fn the_interval_timers_tick_on_paused_time() {
    let stats = Arc::new(Stats::default());
    let harness = ServiceHarness::builder::<Reporter>()
        .resource(Arc::clone(&stats))
        .only_entrypoints(["report", "cleanup"])
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(stats.reports(), 13, "at 0, 5, …, 60 s");
    assert_eq!(stats.cleanups(), 2, "the only instance is the firer: at 30 and 60 s");
    harness.stop().await;
}

#[tokio::test]
async fn every_timer_can_be_fired_by_hand() {
    let stats = Arc::new(Stats::default());
    let harness = ServiceHarness::builder::<Reporter>()
        .resource(Arc::clone(&stats))
        .manual_timers()
        .start()
        .await
        .unwrap();
    for method in ["report", "heartbeat", "cleanup", "heartbeat"] {
        harness.fire_timer(method).await.unwrap();
    }
    assert_eq!((stats.reports(), stats.heartbeats(), stats.cleanups()), (1, 2, 1));
    harness.stop().await;
}

#[test]
fn the_binary_reports_at_start_and_stops_cleanly_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_example-timer"))
        .args(["run", "--transport", "memory"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the example binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let (mut started, mut reported) = (false, false);
    for line in lines.by_ref() {
        let line = line.unwrap();
        started |= line.contains("started service `reporter`");
        // The eager `report` tick fires at start (maybe before the start is logged).
        reported |= line.contains("report n=1");
        log.push(line);
        if started && reported {
            break;
        }
    }
    assert!(started && reported, "{log:#?}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    log.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log: {log:#?}");
    assert!(log.iter().any(|l| l.contains("every service stopped")), "{log:#?}");
}
