//! The RabbitMQ and Python fixtures themselves: clean-up on success and on panic,
//! shut connections, readiness, process failures reported with their output.

use std::{path::PathBuf, time::Duration};

use nameko_extensions::broker::{Exchange, Queue, Topology};
use nameko_testing::{FixtureError, PythonNameko, RabbitMq};

fn py(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_what_the_test_claimed() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    let Some(observer) = RabbitMq::from_env().await else {
        return;
    };
    let id = uuid_like(&observer);
    let by_token = rabbit.unique("fixture_q");
    let exact = format!("fixture-exact-{id}");
    let prefixed = format!("fixture-prefix-{id}-1");
    let service = format!("fixture_svc_{id}");
    rabbit.claim_queue(&exact);
    rabbit.claim_prefix(format!("fixture-prefix-{id}-"));
    rabbit.claim_service(&service);
    let handler_queue = format!("evt-src_{id}-ev--{service}.handle");
    let topology = Topology::new()
        .exchange(Exchange::topic(rabbit.rpc_exchange()))
        .exchange(Exchange::topic(format!("{service}.events")))
        .queue(Queue::durable(&by_token))
        .queue(Queue::durable(&exact))
        .queue(Queue::durable(&prefixed))
        .queue(Queue::durable(format!("rpc-{service}")))
        .queue(Queue::durable(&handler_queue));
    rabbit.broker().declare(&topology).await.unwrap();
    let queues = [&by_token, &exact, &prefixed, &format!("rpc-{service}"), &handler_queue];
    for queue in queues {
        assert_eq!(observer.consumers(queue).await.unwrap(), Some(0), "{queue}");
    }
    let broker = rabbit.broker();

    rabbit.cleanup().await.unwrap();

    for queue in queues {
        assert_eq!(observer.consumers(queue).await.unwrap(), None, "{queue} deleted");
    }
    let err = broker
        .declare(&Topology::new().queue(Queue::durable(&by_token)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cleaned up"), "{err}");
    assert_eq!(observer.consumers(&by_token).await.unwrap(), None, "not re-declared");
    observer.cleanup().await.unwrap();
}

/// A name part no other test run uses.
fn uuid_like(rabbit: &RabbitMq) -> String {
    rabbit.unique("x").replace('_', "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_that_panics_still_cleans_up() {
    let Some(observer) = RabbitMq::from_env().await else {
        return;
    };
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    let queue = rabbit.unique("fixture_panic");
    let broker = rabbit.broker();
    let declared = queue.clone();
    let test = tokio::spawn(async move {
        let rabbit = rabbit;
        rabbit
            .broker()
            .declare(&Topology::new().queue(Queue::durable(&declared)))
            .await
            .unwrap();
        panic!("a failing assertion");
    });
    assert!(test.await.unwrap_err().is_panic());

    assert_eq!(observer.consumers(&queue).await.unwrap(), None, "deleted on drop");
    // What the test handed to its services is shut, so nothing re-declares the queue.
    let err = broker
        .declare(&Topology::new().queue(Queue::durable(&queue)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cleaned up"), "{err}");
    observer.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_consumers_times_out_naming_the_queue() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    let queue = rabbit.unique("fixture_idle");
    rabbit
        .broker()
        .declare(&Topology::new().queue(Queue::durable(&queue)))
        .await
        .unwrap();
    let err = rabbit
        .wait_for_consumers(&queue, 1, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FixtureError::NotConsuming { queue: q, consumers: 0, wanted: 1, .. } if *q == queue),
        "{err}"
    );
    let counts = rabbit.queue_counts(&queue).await.unwrap().unwrap();
    assert_eq!((counts.ready, counts.consumers), (0, 0));
    assert_eq!(rabbit.queue_counts("fixture-no-such-queue").await.unwrap(), None);
    rabbit.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_service_is_ready_when_consuming_and_killed_on_drop() {
    let Some(python) = PythonNameko::from_env() else { return };
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    assert!(python.nameko_version().starts_with("2."), "{}", python.nameko_version());
    let name = rabbit.unique("fixture_echo");
    let queue = format!("rpc-{name}");
    let service = python
        .service(&rabbit, "echo:Echo")
        .dir(py(""))
        .env("ECHO_NAME", &name)
        .ready_when_consuming(&queue)
        .start()
        .await
        .unwrap();
    assert_eq!(rabbit.consumers(&queue).await.unwrap(), Some(1));
    assert!(
        service.output().contains(&format!("starting services: {name}")),
        "{}",
        service.output()
    );

    drop(service);
    let mut consumers = rabbit.consumers(&queue).await.unwrap();
    for _ in 0..100 {
        if consumers == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        consumers = rabbit.consumers(&queue).await.unwrap();
    }
    assert_eq!(consumers, Some(0), "the process was killed");
    rabbit.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_failures_come_with_their_output() {
    let Some(python) = PythonNameko::from_env() else { return };
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };

    let err = python
        .service(&rabbit, "no_such_module:Nope")
        .dir(py(""))
        .ready_when_consuming(rabbit.unique("never"))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FixtureError::Exited { output, .. } if output.contains("no_such_module")),
        "{err}"
    );

    let name = rabbit.unique("fixture_unready");
    let never = rabbit.unique("never_consumed");
    let err = python
        .service(&rabbit, "echo:Echo")
        .dir(py(""))
        .env("ECHO_NAME", &name)
        .ready_when_consuming(&never)
        .timeout(Duration::from_secs(4))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FixtureError::NotReady { queue, consumers: 0, wanted: 1, output, .. }
            if *queue == never && output.contains("starting services")),
        "{err}"
    );

    let err = python.script(&rabbit, py("fail.py")).run().await.unwrap_err();
    assert!(
        matches!(&err, FixtureError::Exited { output, .. }
            if output.contains("about to fail") && output.contains("failed on purpose")),
        "{err}"
    );

    let err = python
        .script(&rabbit, py("fail.py"))
        .arg("sleep")
        .timeout(Duration::from_millis(1500))
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FixtureError::Timeout { output, .. } if output.contains("sleeping")),
        "{err}"
    );
    rabbit.cleanup().await.unwrap();
}
