//! The hand-written service under its test entrypoints: commits, rollbacks, `once`.

use std::sync::Arc;

use example_manual_service::{Order, OrderError, Orders, Store, Tx};
use nameko::core::{CallError, Provider, ServiceContainer, WorkerError, deps::Dep};

async fn start() -> (ServiceContainer, Arc<Store>) {
    let store = Arc::new(Store::default());
    let container = ServiceContainer::builder::<Orders>()
        .resource(Arc::clone(&store))
        .start()
        .await
        .unwrap();
    (container, store)
}

fn order(item: &str, quantity: u32) -> Order {
    Order {
        item: item.into(),
        quantity,
    }
}

#[tokio::test]
async fn a_successful_worker_commits() {
    let store = Arc::new(Store::default());
    let container = ServiceContainer::builder::<Orders>()
        .resource(Arc::clone(&store))
        .only_entrypoints(["place_order"])
        .start()
        .await
        .unwrap();
    let count: usize = container.call("place_order", order("tea", 2)).await.unwrap();
    assert_eq!(count, 1);
    assert_eq!(store.orders(), [order("tea", 2)]);
    let last = store.journal().pop().unwrap();
    assert!(last.starts_with("commit orders.place_order."), "{last}");
}

#[tokio::test]
async fn a_failed_worker_rolls_back() {
    let (container, store) = start().await;
    let err = container
        .call::<Order, usize>("place_order", order("air", 0))
        .await
        .unwrap_err();
    let CallError::Worker(WorkerError::Failed(err)) = err else {
        panic!("{err:?}")
    };
    assert_eq!(err.remote().exc_type(), "EmptyOrder");
    assert_eq!(err.status(), 400);
    assert!(err.is_expected());
    container.stop().await;
    assert!(!store.orders().contains(&order("air", 0)));
    assert!(
        store
            .journal()
            .iter()
            .any(|l| l.starts_with("rollback orders.place_order.")),
        "{:?}",
        store.journal()
    );
}

#[tokio::test]
async fn once_seeds_at_start() {
    let (container, store) = start().await;
    container.stop().await;
    assert_eq!(store.orders(), [order("welcome kit", 1)]);
    assert!(store.journal()[0].starts_with("commit orders.seed."));
}

#[tokio::test]
async fn a_replaced_transaction_never_reaches_the_store() {
    let store = Arc::new(Store::default());
    let fake = Tx::default();
    let container = ServiceContainer::builder::<Orders>()
        .resource(Arc::clone(&store))
        .providers(|p| p.tx = Provider::fixed(fake.clone()))
        .only_entrypoints(["place_order", "list"])
        .start()
        .await
        .unwrap();
    let _: usize = container.call("place_order", order("tea", 1)).await.unwrap();
    let listed: Vec<Order> = container.call("list", ()).await.unwrap();
    assert!(listed.is_empty());
    assert!(store.journal().is_empty());
}

#[tokio::test]
async fn the_method_is_a_plain_method_in_unit_tests() {
    // No container: build the worker by hand, filling each field.
    let store = Arc::new(Store::default());
    let tx = Tx::default();
    let worker = Orders {
        store: Dep::from_arc(Arc::clone(&store)),
        tx: tx.clone(),
    };
    assert!(matches!(
        worker.place_order(order("air", 0)).await,
        Err(OrderError::EmptyOrder)
    ));
    assert_eq!(worker.place_order(order("tea", 1)).await.unwrap(), 1);
    // Nothing is committed without the provider's `worker_result`.
    assert!(store.orders().is_empty());
}
