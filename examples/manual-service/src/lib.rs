//! A nameko-rs service written with no macros, against the public traits — the proof
//! that everything the macros generate can be written by hand.
//!
//! Run with: `cargo run -p example-manual-service` (no broker needed: the service is
//! driven through its test entrypoints, `once` and `dummy`).
//!
//! `orders` keeps orders in a [`Store`] (a runner resource, injected as
//! [`Dep<Store>`]) and writes through a [`Tx`] dependency whose provider opens a
//! transaction for every worker, commits it when the worker succeeds and rolls it back
//! when it fails or panics — the provider `State` and `worker_result` hook at work.

use std::sync::{Arc, Mutex};

use nameko::core::{
    BoxError, Dependencies, Dependency, DependencyError, DependencyProvider, Entrypoints, HandlerError,
    IntoHandlerError, Outcome, Provider, ProviderSlot, Providers, RemoteError, Service, WorkerBuilder, WorkerContext,
    deps::Dep,
    entrypoints::{Dummy, Once},
};
use serde::{Deserialize, Serialize};

// ===== the store =====

/// One order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// What was ordered.
    pub item: String,
    /// How many.
    pub quantity: u32,
}

/// The committed orders and a journal of what each transaction did.
#[derive(Debug, Default)]
pub struct Store {
    orders: Mutex<Vec<Order>>,
    journal: Mutex<Vec<String>>,
}

impl Store {
    /// Every committed order.
    pub fn orders(&self) -> Vec<Order> {
        self.orders.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `commit <call id>` or `rollback <call id>`, one line per worker that wrote.
    pub fn journal(&self) -> Vec<String> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, line: String) {
        self.journal.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

// ===== the transaction dependency =====

/// A worker's transaction: writes are buffered until the worker succeeds.
#[derive(Clone, Debug, Default)]
pub struct Tx {
    pending: Arc<Mutex<Vec<Order>>>,
}

impl Tx {
    /// Buffers an order.
    pub fn insert(&self, order: Order) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(order);
    }
}

/// Opens a [`Tx`] per worker; commits on success, rolls back on failure or panic.
#[derive(Debug, Default)]
pub struct TxProvider {
    store: Option<Arc<Store>>,
}

impl DependencyProvider for TxProvider {
    type Output = Tx;
    /// The same buffer the worker writes to.
    type State = Tx;

    async fn setup(&mut self, cx: &mut nameko::core::SetupContext<'_>) -> Result<(), nameko::core::SetupError> {
        self.store = Some(cx.resource::<Store>()?);
        Ok(())
    }

    async fn get_dependency(&self, _cx: &WorkerContext) -> Result<(Tx, Tx), BoxError> {
        let tx = Tx::default();
        Ok((tx.clone(), tx))
    }

    async fn worker_result(&self, cx: &WorkerContext, tx: &mut Tx, outcome: &Outcome) {
        let Some(store) = &self.store else { return };
        let pending = std::mem::take(&mut *tx.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        if outcome.is_success() {
            store.orders.lock().unwrap_or_else(|p| p.into_inner()).extend(pending);
            store.record(format!("commit {}", cx.call_id()));
        } else {
            store.record(format!("rollback {}", cx.call_id()));
        }
    }
}

impl Dependency for Tx {
    type Provider = TxProvider;

    fn provider() -> TxProvider {
        TxProvider::default()
    }
}

// ===== the service =====

/// What `place_order` can fail with.
#[derive(Debug)]
pub enum OrderError {
    /// An order of nothing.
    EmptyOrder,
}

impl IntoHandlerError for OrderError {
    fn into_handler_error(self) -> HandlerError {
        match self {
            Self::EmptyOrder => HandlerError::new(RemoteError::new(
                "EmptyOrder",
                "an order needs a quantity of at least 1",
            ))
            .with_status(400)
            .expected(),
        }
    }
}

/// The `orders` service: a struct whose fields are dependencies.
#[derive(Debug)]
pub struct Orders {
    /// The order store, a runner resource.
    pub store: Dep<Store>,
    /// This worker's transaction.
    pub tx: Tx,
}

impl Orders {
    /// Places an order; a quantity of 0 fails, and the transaction rolls back.
    pub async fn place_order(&self, order: Order) -> Result<usize, OrderError> {
        self.tx.insert(order.clone());
        if order.quantity == 0 {
            return Err(OrderError::EmptyOrder);
        }
        tracing::info!(item = %order.item, quantity = order.quantity, "order placed");
        Ok(self.store.orders().len() + 1)
    }

    /// Every committed order.
    pub async fn list(&self) -> Result<Vec<Order>, OrderError> {
        Ok(self.store.orders())
    }

    /// Runs once at start: seeds the store.
    pub async fn seed(&self) -> Result<(), OrderError> {
        self.tx.insert(Order {
            item: "welcome kit".into(),
            quantity: 1,
        });
        Ok(())
    }
}

/// One provider slot per field of [`Orders`]; what `#[derive(Dependencies)]` writes.
#[derive(Debug)]
pub struct OrdersProviders {
    /// Fills `store`.
    pub store: Provider<Dep<Store>>,
    /// Fills `tx`.
    pub tx: Provider<Tx>,
}

impl Providers for OrdersProviders {
    type Worker = Orders;

    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
        vec![("store", &mut self.store), ("tx", &mut self.tx)]
    }

    async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<Orders, DependencyError> {
        Ok(Orders {
            store: b.get(&self.store).await?,
            tx: b.get(&self.tx).await?,
        })
    }
}

impl Dependencies for Orders {
    type Providers = OrdersProviders;

    fn providers() -> OrdersProviders {
        OrdersProviders {
            store: Provider::of(),
            tx: Provider::of(),
        }
    }
}

/// What `#[nameko::service(name = "orders")]` writes.
impl Service for Orders {
    const NAME: &'static str = "orders";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "place_order",
            Dummy::<Order, usize>::new(),
            |w: Orders, order| async move { w.place_order(order).await },
        )
        .add("list", Dummy::<(), Vec<Order>>::new(), |w: Orders, ()| async move {
            w.list().await
        })
        .add(
            "seed",
            Once::<()>::new(()),
            |w: Orders, ()| async move { w.seed().await },
        );
    }
}
