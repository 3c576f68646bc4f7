//! Generic messaging, Nameko's `nameko.messaging`: the [`Publisher`] dependency publishes
//! JSON messages to any exchange (the default exchange unless told), and the
//! [`Consume`] entrypoint (`#[consume(queue = "...")]`) runs a worker for each message
//! of a queue.
//!
//! Both speak Nameko's wire format, so they work with Python's `Publisher` and
//! `@consume`: bodies are JSON (`application/json`, `utf-8`), the worker's context
//! travels as `nameko.*` headers, and a consumer acknowledges a message after its
//! worker, as event handlers do:
//!
//! | the worker | the message |
//! | --- | --- |
//! | succeeded | acknowledged |
//! | failed, `requeue_on_error` off (default) | acknowledged: lost, as in Nameko |
//! | failed, `requeue_on_error` on | requeued at once (no delay, no limit) |
//! | never started (the service stopped) or killed | requeued |
//! | — the body does not decode into the method's parameter | rejected without requeue, logged: never redelivered in a loop |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use nameko_extensions::{
//!     broker::{Exchange, Queue, Topology, Binding},
//!     memory::MemoryBroker,
//!     messaging::{PublishOptions, Publisher},
//! };
//!
//! let broker = MemoryBroker::new();
//! let publisher = Publisher::standalone(broker.shared())
//!     .exchange(Exchange::topic("orders"))
//!     .declare(
//!         Topology::new()
//!             .queue(Queue::durable("order-audit"))
//!             .binding(Binding::new("orders", "order-audit", "order.*")),
//!     );
//! publisher
//!     .publish(&serde_json::json!({"id": 7}), PublishOptions::new().routing_key("order.created"))
//!     .await
//!     .unwrap();
//! assert_eq!(broker.list_queues()[0].ready, 1);
//! # }
//! ```

mod consume;
mod publisher;

pub use self::{
    consume::Consume,
    publisher::{DeliveryMode, PublishError, PublishLog, PublishOptions, Published, Publisher, PublisherProvider},
};
