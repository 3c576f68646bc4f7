//! Per-entrypoint `max_workers` under load: a thousand concurrent calls never exceed
//! an entrypoint's limit nor the container's and all complete; nested RPC (A calls B
//! calls A) under small limits never deadlocks; a flooded HTTP route keeps its limit
//! and leaves RPC the rest of the container.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use nameko::{
    core::{Config, deps::Dep},
    http::{StatusCode, axum::body::Body, axum::extract::Request},
    prelude::RemoteError,
    rpc::{ClusterRpc, RpcError},
};
use nameko_testing::ServiceHarness;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Running workers and their high-water mark.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
    done: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }
}

/// The gauges of one service: one per entrypoint, and the container's total.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    limited: Gauge,
    free: Gauge,
    total: Gauge,
    /// Holds gated workers until the test opens it.
    gate: Option<Semaphore>,
}

impl Gauges {
    fn gated() -> Self {
        Self {
            gate: Some(Semaphore::new(0)),
            ..Self::default()
        }
    }

    async fn run(&self, gauge: &Gauge) {
        gauge.enter();
        self.total.enter();
        match &self.gate {
            Some(gate) => drop(gate.acquire().await.expect("the gate stays open")),
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
        self.total.leave();
        gauge.leave();
    }
}

// ----- a thousand calls -----

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Busy {
    gauges: Dep<Gauges>,
}

#[nameko::service(name = "conc_busy")]
impl Busy {
    #[rpc(max_workers = 3)]
    async fn limited(&self, n: u32) -> Result<u32, RemoteError> {
        self.gauges.run(&self.gauges.limited).await;
        Ok(n)
    }

    #[rpc]
    async fn free(&self, n: u32) -> Result<u32, RemoteError> {
        self.gauges.run(&self.gauges.free).await;
        Ok(n)
    }
}

/// Fires `n` calls at once, alternating `limited` and `free`, and checks every reply.
async fn thousand_calls(rpc: &ClusterRpc, n: u32) {
    let calls = (0..n).map(|i| {
        let method = if i % 2 == 0 { "limited" } else { "free" };
        async move { (i, rpc.call("conc_busy", method, json!([i])).await) }
    });
    for (i, reply) in join_all(calls).await {
        assert_eq!(reply.unwrap(), json!(i), "call {i}");
    }
}

fn assert_limits(gauges: &Gauges, calls: usize) {
    assert_eq!(gauges.limited.done() + gauges.free.done(), calls, "every call ran once");
    assert_eq!(gauges.limited.peak(), 3, "the method's limit, reached, never exceeded");
    assert!(
        gauges.total.peak() <= 8,
        "the container's limit: {}",
        gauges.total.peak()
    );
    assert!(
        gauges.free.peak() >= 5,
        "the free method used the rest: {}",
        gauges.free.peak()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_keep_both_limits() {
    let gauges = Arc::new(Gauges::default());
    let harness = ServiceHarness::builder::<Busy>()
        .config_yaml("max_workers: 8")
        .resource(Arc::clone(&gauges))
        .start()
        .await
        .unwrap();
    let rpc = ClusterRpc::connect(harness.broker().shared(), &Config::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), thousand_calls(&rpc, 1000))
        .await
        .expect("every call answered");
    assert_limits(&gauges, 1000);
    rpc.client().stop().await;
    harness.stop().await;
}

// ----- nested calls: outer (A) → middle (B) → inner (A) -----

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Outer {
    rpc: ClusterRpc,
    gauges: Dep<Gauges>,
}

#[nameko::service(name = "conc_outer")]
impl Outer {
    /// At most two at once: the container's third slot stays for `inner`.
    #[rpc(max_workers = 2)]
    async fn outer(&self, n: u32) -> Result<Value, RpcError> {
        self.gauges.limited.enter();
        let reply = self.rpc.call("conc_middle", "middle", json!([n])).await;
        self.gauges.limited.leave();
        reply
    }

    #[rpc]
    async fn inner(&self, n: u32) -> Result<u32, RemoteError> {
        Ok(n * 2)
    }
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Middle {
    rpc: ClusterRpc,
}

#[nameko::service(name = "conc_middle")]
impl Middle {
    #[rpc]
    async fn middle(&self, n: u32) -> Result<Value, RpcError> {
        self.rpc.call("conc_outer", "inner", json!([n])).await
    }
}

/// Without the per-method limit the two `outer` workers would hold all of A's slots
/// while waiting for `inner`; without an unlimited prefetch on `rpc-conc_outer` the
/// waiting `outer` requests would fill the window and `inner` would never be
/// delivered. Either way every call would time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_calls_back_into_a_service_never_deadlock() {
    let gauges = Arc::new(Gauges::default());
    let outer = ServiceHarness::builder::<Outer>()
        .config_yaml("max_workers: 3\nrpc_timeout: 60")
        .resource(Arc::clone(&gauges))
        .start()
        .await
        .unwrap();
    let middle = ServiceHarness::builder::<Middle>()
        .config_yaml("max_workers: 2\nrpc_timeout: 60")
        .broker(outer.broker().clone())
        .start()
        .await
        .unwrap();
    let rpc = ClusterRpc::connect(outer.broker().shared(), &Config::default())
        .await
        .unwrap()
        .with_timeout(Some(Duration::from_secs(90)));
    let calls = (0..200u32).map(|n| {
        let rpc = &rpc;
        async move { (n, rpc.call("conc_outer", "outer", json!([n])).await) }
    });
    let replies = tokio::time::timeout(Duration::from_secs(120), join_all(calls))
        .await
        .expect("no deadlock: every call answered");
    for (n, reply) in replies {
        assert_eq!(reply.unwrap(), json!(n * 2), "call {n}");
    }
    assert_eq!(gauges.limited.peak(), 2);
    rpc.client().stop().await;
    middle.stop().await;
    outer.stop().await;
}

// ----- a flooded HTTP route beside RPC -----

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Mixed {
    gauges: Dep<Gauges>,
}

#[nameko::service(name = "conc_mixed")]
impl Mixed {
    /// Slow: each request holds its worker until the test opens the gate.
    #[http("GET", "/slow", max_workers = 2)]
    async fn slow(&self) -> Result<String, RemoteError> {
        self.gauges.run(&self.gauges.limited).await;
        Ok("slow".into())
    }

    #[rpc]
    async fn quick(&self, n: u32) -> Result<u32, RemoteError> {
        self.gauges.free.enter();
        self.gauges.total.enter();
        self.gauges.total.leave();
        self.gauges.free.leave();
        Ok(n)
    }
}

/// Twenty requests to a route limited to two, all held: the other two slots of the
/// container serve fifty RPC calls meanwhile; the route never runs more than two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_http_route_leaves_rpc_the_rest_of_the_container() {
    let gauges = Arc::new(Gauges::gated());
    let harness = Arc::new(
        ServiceHarness::builder::<Mixed>()
            .config_yaml("max_workers: 4")
            .resource(Arc::clone(&gauges))
            .start()
            .await
            .unwrap(),
    );
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let harness = Arc::clone(&harness);
            tokio::spawn(async move {
                let request = Request::get("/slow").body(Body::empty()).unwrap();
                harness.http(request).await.status()
            })
        })
        .collect();
    for _ in 0..2000 {
        if gauges.limited.now() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(gauges.limited.now(), 2, "two slow requests running, eighteen waiting");

    let calls = (0..50u32).map(|n| {
        let harness = &harness;
        async move { (n, harness.rpc("quick", json!([n])).await) }
    });
    let replies = tokio::time::timeout(Duration::from_secs(30), join_all(calls))
        .await
        .expect("RPC served while the route is flooded");
    for (n, reply) in replies {
        assert_eq!(reply.unwrap(), json!(n));
    }
    assert_eq!(gauges.limited.done(), 0, "every slow request still held");
    assert!(gauges.total.peak() <= 4, "{}", gauges.total.peak());

    gauges.gate.as_ref().unwrap().add_permits(100);
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(gauges.limited.peak(), 2);
    assert!(gauges.total.peak() <= 4, "{}", gauges.total.peak());
    Arc::into_inner(harness).unwrap().stop().await;
}

// ----- the thousand calls on RabbitMQ -----

#[cfg(feature = "amqp")]
mod rabbitmq {
    use std::sync::Arc;

    use nameko::{broker::Broker, core::ServiceRunner, rpc::ClusterRpc};
    use nameko_testing::RabbitMq;
    use serde_json::json;

    use super::{Busy, Gauges, assert_limits, thousand_calls};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "serial: 1,000 concurrent calls"]
    async fn rabbitmq_a_thousand_concurrent_calls_keep_both_limits() {
        let Some(rabbit) = RabbitMq::from_env().await else {
            return;
        };
        rabbit.claim_service("conc_busy");
        let gauges = Arc::new(Gauges::default());
        let running = ServiceRunner::new(rabbit.config(json!({"max_workers": 8})))
            .resource::<dyn Broker>(rabbit.broker())
            .resource(Arc::clone(&gauges))
            .with_service::<Busy>()
            .start()
            .await
            .unwrap();
        let rpc = ClusterRpc::connect(rabbit.broker(), &rabbit.config(json!(null)))
            .await
            .unwrap();
        rabbit.claim_queue(rpc.client().reply_queue());
        tokio::time::timeout(std::time::Duration::from_secs(300), thousand_calls(&rpc, 1000))
            .await
            .expect("every call answered");
        assert_limits(&gauges, 1000);
        rpc.client().stop().await;
        running.stop().await;
        rabbit.cleanup().await.unwrap();
    }
}
