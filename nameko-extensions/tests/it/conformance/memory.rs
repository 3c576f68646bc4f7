//! The conformance suite on the in-memory broker, with paused time.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use async_trait::async_trait;
use nameko_extensions::{
    broker::{Binding, QueueInfo, SharedBroker},
    memory::{MemoryBroker, MemoryConnection},
};

use super::{Harness, conformance_suite};

/// One broker per test; remembers its connections to sever them.
#[derive(Debug, Default)]
struct MemoryHarness {
    broker: MemoryBroker,
    connections: Mutex<Vec<(SharedBroker, MemoryConnection)>>,
    names: AtomicU64,
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn connect(&self) -> SharedBroker {
        let connection = self.broker.connect();
        let shared: SharedBroker = Arc::new(connection.clone());
        self.connections
            .lock()
            .expect("the harness lock")
            .push((Arc::clone(&shared), connection));
        shared
    }

    async fn sever(&self, connection: &SharedBroker) {
        let connections = self.connections.lock().expect("the harness lock");
        let (_, memory) = connections
            .iter()
            .find(|(shared, _)| Arc::ptr_eq(shared, connection))
            .expect("a connection of this harness");
        memory.sever();
    }

    async fn restore(&self, connection: &SharedBroker) {
        let connections = self.connections.lock().expect("the harness lock");
        let (_, memory) = connections
            .iter()
            .find(|(shared, _)| Arc::ptr_eq(shared, connection))
            .expect("a connection of this harness");
        memory.reconnect().expect("a severed connection reconnects");
    }

    async fn list_queues(&self) -> Vec<QueueInfo> {
        self.broker.list_queues()
    }

    async fn list_bindings(&self) -> Vec<Binding> {
        self.broker.list_bindings()
    }

    fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.names.fetch_add(1, Ordering::Relaxed))
    }
}

conformance_suite! {
    #[tokio::test(start_paused = true)]
    harness = Some(MemoryHarness::default());
}
