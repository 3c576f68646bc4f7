//! A `Publisher` field, `#[consume]` with every option, and `max_workers` on every
//! entrypoint attribute of the default features.
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]

use nameko::messaging::{PublishError, PublishOptions, Publisher};
use nameko::prelude::RemoteError;
use serde::Deserialize;

/// A job.
#[derive(Debug, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: u64,
}

/// The service.
#[derive(Debug, nameko::Dependencies)]
pub struct Worker {
    #[dependency(exchange = "jobs", exchange_type = "topic")]
    publish: Publisher,
}

#[nameko::service(name = "worker")]
impl Worker {
    /// Publishes a job.
    #[rpc(max_workers = 2)]
    pub async fn submit(&self, id: u64) -> Result<(), PublishError> {
        self.publish
            .publish(&serde_json::json!({ "id": id }), PublishOptions::new().routing_key("job.new"))
            .await
    }

    /// Runs jobs from a queue bound to `jobs`.
    #[consume(
        queue = "jobs-new",
        exchange = "jobs",
        exchange_type = "topic",
        routing_key = "job.*",
        durable = true,
        requeue_on_error = true,
        max_workers = 3
    )]
    pub async fn run(&self, job: Job) -> Result<(), RemoteError> {
        let _ = job.id;
        Ok(())
    }

    /// From the default exchange.
    #[consume(queue = "jobs-direct")]
    #[rpc]
    pub async fn direct(&self, job: serde_json::Value) -> Result<(), RemoteError> {
        let _ = job;
        Ok(())
    }

    /// Events, at most one at a time.
    #[event_handler("orders", "created", max_workers = 1)]
    pub async fn on_order(&self, order: serde_json::Value) -> Result<(), RemoteError> {
        let _ = order;
        Ok(())
    }

    /// A slow page.
    #[http("GET", "/report", max_workers = 4)]
    #[http("GET", "/report.json")]
    pub async fn report(&self) -> Result<String, RemoteError> {
        Ok("report".into())
    }

    /// A tick.
    #[timer(interval = "1s", max_workers = 1)]
    pub async fn tick(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {}
