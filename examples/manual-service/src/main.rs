//! Runs the `orders` service in a runner, drives it through its test entrypoints, and
//! stops it gracefully.
//!
//! Run with: `cargo run -p example-manual-service`

use std::{process::ExitCode, sync::Arc};

use example_manual_service::{Order, Orders, Store};
use nameko::core::{Config, ServiceRunner};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(Store::default());
    let running = ServiceRunner::new(Config::default())
        .resource(Arc::clone(&store))
        .with_service::<Orders>()
        .start()
        .await?;
    let orders = running.container("orders").ok_or("the orders service is not running")?;

    let count: usize = orders
        .call(
            "place_order",
            Order {
                item: "tea".into(),
                quantity: 2,
            },
        )
        .await?;
    tracing::info!(count, "placed an order");
    if let Err(err) = orders
        .call::<Order, usize>(
            "place_order",
            Order {
                item: "air".into(),
                quantity: 0,
            },
        )
        .await
    {
        tracing::info!(%err, "an empty order was refused and rolled back");
    }
    let listed: Vec<Order> = orders.call("list", ()).await?;
    tracing::info!(?listed, journal = ?store.journal(), "committed orders");

    running.stop().await;
    Ok(())
}
