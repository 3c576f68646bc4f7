//! `ServiceHarness`: hooks, waiters, replaced dependencies, restricted entrypoints.

use std::{sync::Arc, time::Duration};

use nameko_core::{
    Dependencies, DependencyError, Entrypoints, Provider, ProviderSlot, Providers, RemoteError, Service, WorkerBuilder,
    WorkerOutcome, deps::Dep,
};
use nameko_extensions::{
    events::EventHandler,
    rpc::{RpcArgs, RpcEntrypoint},
};
use nameko_testing::{ServiceHarness, WaitError};
use serde_json::{Value, json};

/// Greets people with a salutation from a resource.
struct Greeter {
    salutation: Dep<String>,
}

struct GreeterProviders {
    salutation: Provider<Dep<String>>,
}

impl Providers for GreeterProviders {
    type Worker = Greeter;

    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
        vec![("salutation", &mut self.salutation)]
    }

    async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<Greeter, DependencyError> {
        Ok(Greeter {
            salutation: b.get(&self.salutation).await?,
        })
    }
}

impl Dependencies for Greeter {
    type Providers = GreeterProviders;

    fn providers() -> GreeterProviders {
        GreeterProviders {
            salutation: Provider::of(),
        }
    }
}

impl Service for Greeter {
    const NAME: &'static str = "greeter";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "greet",
            RpcEntrypoint::<RpcArgs, String>::new(),
            |w: Greeter, args: RpcArgs| async move {
                let name = args.args.first().and_then(Value::as_str).unwrap_or("nobody").to_owned();
                Ok::<_, RemoteError>(format!("{}, {name}!", *w.salutation))
            },
        )
        .add(
            "on_greeted",
            EventHandler::<Value>::new("other", "greeted"),
            |_: Greeter, body: Value| async move {
                if body["name"] == "Mallory" {
                    return Err(RemoteError::new("Refused", "not Mallory"));
                }
                Ok(())
            },
        );
    }
}

async fn harness() -> ServiceHarness {
    ServiceHarness::builder::<Greeter>()
        .resource(Arc::new("Hello".to_owned()))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn rpc_through_the_broker_and_the_hook() {
    let h = harness().await;
    assert_eq!(h.rpc("greet", json!(["Ada"])).await.unwrap(), json!("Hello, Ada!"));
    let reply: String = h.call("greet", RpcArgs::from(json!(["Bob"]))).await.unwrap();
    assert_eq!(reply, "Hello, Bob!");
    h.stop().await;
}

#[tokio::test]
async fn the_waiter_returns_the_outcome_of_the_next_worker() {
    let h = harness().await;
    let waiter = h.waiter("on_greeted");
    h.dispatch("other", "greeted", &json!({"name": "Ada"})).await.unwrap();
    let report = waiter.wait(Duration::from_secs(5)).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert!(report.call_id.starts_with("greeter.on_greeted."));

    let waiter = h.waiter("on_greeted");
    h.dispatch("other", "greeted", &json!({"name": "Mallory"}))
        .await
        .unwrap();
    let report = waiter.wait(Duration::from_secs(5)).await.unwrap();
    assert!(matches!(&report.outcome, WorkerOutcome::Failure { error, .. } if error.exc_type() == "Refused"));

    let err = h
        .waiter("on_greeted")
        .wait(Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(matches!(err, WaitError::Timeout { .. }), "{err}");
    h.stop().await;
}

#[tokio::test]
async fn providers_are_replaced_and_entrypoints_restricted() {
    let h = ServiceHarness::builder::<Greeter>()
        .providers(|p| p.salutation = Provider::fixed(Dep::new("Howdy".to_owned())))
        .only_entrypoints(["greet"])
        .start()
        .await
        .unwrap();
    assert_eq!(h.rpc("greet", json!(["Ada"])).await.unwrap(), json!("Howdy, Ada!"));
    assert!(
        h.broker()
            .list_queues()
            .iter()
            .all(|q| !q.queue.name.starts_with("evt-")),
        "no event queue declared"
    );
    h.stop().await;
}
