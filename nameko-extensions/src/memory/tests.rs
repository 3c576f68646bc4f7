//! Memory-broker behaviour beyond the conformance suite: connection events and
//! states, stale acknowledgements, clean-up on drop, and the corners of expiry.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::json;
use tokio::time::{sleep, timeout};

use super::*;
use crate::broker::{ConsumerEnd, Delivery, ExchangeKind, Headers, Properties, Queue};

fn message(exchange: &str, routing_key: &str, body: &'static str) -> Publish {
    Publish {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        mandatory: false,
        properties: Properties::default(),
        body: Bytes::from_static(body.as_bytes()),
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
}

async fn queue(connection: &MemoryConnection, queue: Queue) {
    connection
        .declare(&Topology::new().queue(queue))
        .await
        .expect("the declare");
}

#[tokio::test(start_paused = true)]
async fn severed_connections_fail_until_they_reconnect() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    let mut events = connection.events();
    queue(&connection, Queue::durable("q")).await;
    broker.sever();
    assert!(!connection.is_open());
    assert!(matches!(events.recv().await, Ok(ConnectionEvent::Lost { .. })));
    let lost = |r: Result<(), BrokerError>| matches!(r, Err(BrokerError::ConnectionLost(_)));
    assert!(lost(connection.declare(&Topology::new()).await));
    assert!(matches!(
        connection.publish(message("", "q", "x")).await,
        Err(BrokerError::ConnectionLost(_))
    ));
    assert!(matches!(
        connection.consume("q", ConsumeOptions::prefetch(0)).await,
        Err(BrokerError::ConnectionLost(_))
    ));
    assert!(lost(connection.delete_queue("q").await));
    broker.restore();
    assert_eq!(events.recv().await, Ok(ConnectionEvent::Recovered));
    assert!(connection.is_open());
    assert_eq!(
        connection.publish(message("", "q", "x")).await,
        Ok(PublishOutcome::Routed)
    );
    connection.sever();
    connection.reconnect().expect("a severed connection reconnects");
    connection
        .reconnect()
        .expect("reconnecting an open connection does nothing");
    connection.close().await;
    assert!(lost(connection.reconnect()));
    assert!(lost(connection.declare(&Topology::new()).await));
}

#[tokio::test(start_paused = true)]
async fn close_ends_consumers_and_requeues() {
    let broker = MemoryBroker::new();
    let (a, b) = (broker.connect(), broker.connect());
    let mut events = a.events();
    queue(&a, Queue::durable("q")).await;
    a.publish(message("", "q", "m")).await.expect("publish");
    let mut consumer = a.consume("q", ConsumeOptions::prefetch(0)).await.expect("consume");
    let delivery = next(&mut consumer).await;
    a.close().await;
    assert_eq!(consumer.next().await.expect_err("ended"), ConsumerEnd::ChannelClosed);
    assert_eq!(delivery.ack().await, Ok(AckOutcome::Stale));
    // No `Lost` on a close.
    assert!(matches!(
        events.try_recv(),
        Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
    ));
    let mut other = b.consume("q", ConsumeOptions::prefetch(0)).await.expect("consume");
    assert!(next(&mut other).await.redelivered);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_closes_the_connection() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    queue(&connection, Queue::durable("mine").exclusive(true)).await;
    let consumer = connection
        .consume("mine", ConsumeOptions::prefetch(0))
        .await
        .expect("consume");
    drop(connection);
    // The consumer keeps the connection open.
    assert_eq!(broker.list_queues().len(), 1);
    drop(consumer);
    assert!(broker.list_queues().is_empty());
}

#[tokio::test(start_paused = true)]
async fn settling_twice_is_stale() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    queue(&connection, Queue::durable("q")).await;
    connection.publish(message("", "q", "m")).await.expect("publish");
    let mut consumer = connection
        .consume("q", ConsumeOptions::prefetch(0))
        .await
        .expect("consume");
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.nack(true).await, Ok(AckOutcome::Done));
    assert_eq!(delivery.ack().await, Ok(AckOutcome::Stale));
    let again = next(&mut consumer).await;
    assert_eq!(again.ack().await, Ok(AckOutcome::Done));
    assert_eq!(again.reject(false).await, Ok(AckOutcome::Stale));
}

#[tokio::test(start_paused = true)]
async fn dropped_consumers_are_forgotten() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    queue(&connection, Queue::durable("q")).await;
    let dropped = connection
        .consume("q", ConsumeOptions::prefetch(0))
        .await
        .expect("consume");
    let mut kept = connection
        .consume("q", ConsumeOptions::prefetch(0))
        .await
        .expect("consume");
    drop(dropped);
    for _ in 0..2 {
        connection.publish(message("", "q", "m")).await.expect("publish");
    }
    next(&mut kept).await;
    next(&mut kept).await;
    assert_eq!(broker.list_queues()[0].consumers, 1);
}

#[tokio::test(start_paused = true)]
async fn per_message_expiration_and_ttl_zero() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    queue(&connection, Queue::durable("q")).await;
    let mut expiring = message("", "q", "short");
    expiring.properties.expiration = Some("100".to_owned());
    connection.publish(expiring).await.expect("publish");
    let mut invalid = message("", "q", "bad");
    invalid.properties.expiration = Some("soon".to_owned());
    assert!(matches!(
        connection.publish(invalid).await,
        Err(BrokerError::PreconditionFailed(_))
    ));
    sleep(Duration::from_millis(150)).await;
    assert_eq!(broker.list_queues()[0].ready, 0);

    // TTL 0: delivered if a consumer can take it at once, dropped otherwise.
    let mut now_or_never = message("", "q", "now");
    now_or_never.properties.expiration = Some("0".to_owned());
    connection.publish(now_or_never.clone()).await.expect("publish");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(broker.list_queues()[0].ready, 0);
    let mut consumer = connection
        .consume("q", ConsumeOptions::prefetch(0))
        .await
        .expect("consume");
    connection.publish(now_or_never).await.expect("publish");
    assert_eq!(&next(&mut consumer).await.body[..], b"now");
}

#[tokio::test(start_paused = true)]
async fn retry_cycles_count_deaths_and_automatic_cycles_drop() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    let topology = Topology::new()
        .exchange(Exchange::topic("retry-x"))
        .exchange(Exchange::topic("work-x"))
        .queue(Queue::durable("work").dead_letter("retry-x", None))
        .queue(
            Queue::durable("retry")
                .message_ttl(Duration::from_millis(10))
                .dead_letter("work-x", None),
        )
        .queue(
            Queue::durable("loop")
                .message_ttl(Duration::from_millis(10))
                .dead_letter("work-x", None),
        )
        .binding(Binding::new("work-x", "work", "job"))
        .binding(Binding::new("retry-x", "retry", "job"))
        .binding(Binding::new("work-x", "loop", "loop"));
    connection.declare(&topology).await.expect("declare");
    connection
        .publish(message("work-x", "job", "j"))
        .await
        .expect("publish");
    let mut consumer = connection
        .consume("work", ConsumeOptions::prefetch(0))
        .await
        .expect("consume");
    for round in 1..=3 {
        let delivery = next(&mut consumer).await;
        let headers = delivery.properties.headers.clone().unwrap_or_default().to_json_map();
        if round > 1 {
            let deaths = &headers["x-death"];
            assert_eq!(deaths[0]["queue"], "retry");
            assert_eq!(deaths[0]["count"], json!(round - 1));
            assert_eq!(deaths[1]["queue"], "work");
            assert_eq!(deaths[1]["reason"], "rejected");
            assert_eq!(headers["x-first-death-queue"], "work");
        }
        assert_eq!(delivery.reject(false).await, Ok(AckOutcome::Done));
    }
    // A queue dead-lettering to itself by expiry only drops the message.
    connection
        .publish(message("work-x", "loop", "l"))
        .await
        .expect("publish");
    sleep(Duration::from_millis(100)).await;
    let loop_queue = broker
        .list_queues()
        .into_iter()
        .find(|q| q.queue.name == "loop")
        .expect("listed");
    assert_eq!(loop_queue.ready, 0);
}

#[tokio::test(start_paused = true)]
async fn reserved_names_are_refused() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    let default = Exchange {
        name: String::new(),
        kind: ExchangeKind::Direct,
        durable: true,
        auto_delete: false,
    };
    for topology in [
        Topology::new().exchange(default),
        Topology::new().exchange(Exchange::topic("amq.custom")),
        Topology::new().queue(Queue::durable("amq.q")),
        Topology::new().queue(Queue::durable("")),
        Topology::new().binding(Binding::new("", "q", "q")),
    ] {
        assert!(
            matches!(connection.declare(&topology).await, Err(BrokerError::Other(_))),
            "{topology:?}"
        );
    }
    // Predeclared exchanges can be redeclared equivalently and used.
    let mut amq_topic = Exchange::topic("amq.topic");
    connection
        .declare(&Topology::new().exchange(amq_topic.clone()))
        .await
        .expect("equivalent redeclare");
    amq_topic.kind = ExchangeKind::Fanout;
    assert!(matches!(
        connection.declare(&Topology::new().exchange(amq_topic)).await,
        Err(BrokerError::PreconditionFailed(_))
    ));
    let missing = connection
        .declare(&Topology::new().binding(Binding::new("amq.topic", "nope", "#")))
        .await;
    assert!(matches!(missing, Err(BrokerError::NotFound(_))), "{missing:?}");
    assert_eq!(broker.list_exchanges().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    let mut exchange = Exchange::topic("x");
    exchange.auto_delete = true;
    connection
        .declare(
            &Topology::new()
                .exchange(exchange)
                .queue(Queue::durable("q"))
                .binding(Binding::new("x", "q", "#")),
        )
        .await
        .expect("declare");
    connection.delete_queue("q").await.expect("delete");
    assert!(broker.list_exchanges().iter().all(|e| e.name != "x"));
    assert!(broker.list_bindings().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_expiry_task_ends_with_the_broker() {
    let broker = MemoryBroker::new();
    let weak = Arc::downgrade(&broker.inner);
    let connection = broker.connect();
    queue(&connection, Queue::durable("q").expires(Duration::from_secs(3600))).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    sleep(Duration::from_millis(1)).await;
    assert_eq!(metrics.num_alive_tasks(), 1);
    drop((broker, connection));
    sleep(Duration::from_millis(1)).await;
    assert!(weak.upgrade().is_none(), "nothing keeps the broker alive");
    assert_eq!(metrics.num_alive_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn consumer_headers_and_debug() {
    let broker = MemoryBroker::new();
    let connection = broker.connect();
    queue(&connection, Queue::durable("q")).await;
    let mut headers = Headers::new();
    headers.insert_json("nameko.trace_id", &json!("t-1"));
    let mut publish = message("", "q", "m");
    publish.properties = Properties::json(headers.clone());
    connection.publish(publish).await.expect("publish");
    let mut consumer = connection
        .consume("q", ConsumeOptions::prefetch(0).tag("mine"))
        .await
        .expect("consume");
    assert_eq!(consumer.tag(), "mine");
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.properties, Properties::json(headers));
    assert_eq!((delivery.exchange.as_str(), delivery.routing_key.as_str()), ("", "q"));
    let shown = format!("{broker:?}");
    assert!(shown.contains("queues: 1"), "{shown}");
    let shared = broker.shared();
    assert!(format!("{shared:?}").contains("MemoryConnection"));
}
