//! What one worker costs the framework, without RabbitMQ (issue #10): a call through
//! the container alone (`ServiceContainer::call`: a worker slot, the context, the
//! dependency hooks, the handler, the result), and an RPC round trip on the memory
//! broker (the client's publish, the consumer, decoding, the worker, the reply). Both
//! services have two dependencies, as a small real service would.
//!
//! `cargo bench -p nameko --bench worker`; `.ci/run` runs it once as a smoke test
//! (`-- --test`), never as a gate: the numbers are for comparing a change with the
//! code before it on one machine.

#![expect(missing_docs, reason = "criterion's macros generate undocumented items")]

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use nameko::{
    broker::Broker,
    core::{Config, ServiceContainer, ServiceRunner, WorkerContext, deps::Dep},
    memory::MemoryBroker,
    prelude::*,
    rpc::ClusterRpc,
};
use serde_json::json;

/// A resource the worker reads.
#[derive(Debug)]
pub struct Greeting(String);

#[derive(Debug, nameko::Dependencies)]
pub struct Bench {
    greeting: Dep<Greeting>,
    cx: WorkerContext,
}

#[nameko::service(name = "bench_worker")]
impl Bench {
    #[rpc]
    async fn echo(&self, value: String) -> Result<String, RemoteError> {
        let _ = self.cx.call_id();
        Ok(format!("{}{value}", self.greeting.0))
    }

    #[entrypoint(nameko::core::entrypoints::Dummy::<String, String>::new())]
    async fn direct(&self, value: String) -> Result<String, RemoteError> {
        let _ = self.cx.call_id();
        Ok(format!("{}{value}", self.greeting.0))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn container_call(c: &mut Criterion) {
    let rt = runtime();
    let container = rt.block_on(async {
        ServiceContainer::builder::<Bench>()
            .resource(Arc::new(Greeting("hi ".to_owned())))
            // The RPC entrypoint would need a broker: the container alone runs `direct`.
            .only_entrypoints(["direct"])
            .start()
            .await
            .expect("the container starts")
    });
    c.bench_function("worker: ServiceContainer::call", |b| {
        b.to_async(&rt).iter(|| async {
            let reply: String = container.call("direct", black_box("x".to_owned())).await.unwrap();
            black_box(reply)
        });
    });
    rt.block_on(container.stop());
}

fn memory_rpc(c: &mut Criterion) {
    let rt = runtime();
    let broker = MemoryBroker::new();
    let (running, rpc) = rt.block_on(async {
        let running = ServiceRunner::new(Config::default())
            .resource::<dyn Broker>(broker.shared())
            .resource(Arc::new(Greeting("hi ".to_owned())))
            .with_service::<Bench>()
            .start()
            .await
            .expect("the runner starts");
        let rpc = ClusterRpc::connect(broker.shared(), &Config::default())
            .await
            .expect("a client");
        (running, rpc)
    });
    c.bench_function("worker: RPC round trip on the memory broker", |b| {
        b.to_async(&rt).iter(|| async {
            let reply = rpc.call("bench_worker", "echo", json!(["x"])).await.unwrap();
            black_box(reply)
        });
    });
    rt.block_on(async {
        rpc.client().stop().await;
        running.stop().await;
    });
}

criterion_group!(benches, container_call, memory_rpc);
criterion_main!(benches);
