//! What `#[service]` tells `inspect`: each entrypoint's kind, trigger, parameters as
//! written and doc lines; the built-in introspection RPC answering without a worker; the
//! reserved `_nameko_` prefix.

use nameko::{
    core::describe::{INSPECT_METHOD, ServiceDescription},
    http::axum::extract::{Path, Query},
    prelude::*,
    rpc::RpcError,
};
use nameko_testing::ServiceHarness;
use serde_json::json;

#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub(crate) struct Shipped {
    id: u64,
}

#[derive(nameko::Dependencies)]
pub(crate) struct Orders {}

#[nameko::service(name = "orders")]
impl Orders {
    /// Places an order.
    ///
    /// Returns its id.
    #[rpc(name = "place")]
    async fn place_order(
        &self,
        #[arg(name = "type")] kind: String,
        _items: Vec<(u32, String)>,
        note: Option<String>,
    ) -> Result<u64, RemoteError> {
        let _ = (kind, note);
        Ok(1)
    }

    #[event_handler("shipping", "shipped")]
    async fn on_shipped(&self, _event: Shipped) -> Result<(), RemoteError> {
        Ok(())
    }

    /// Tidies up.
    #[timer(interval = "1m", cluster_singleton = true)]
    async fn tidy(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    #[http("GET", "/orders/{id}")]
    #[http("head", "/o/{id}")]
    async fn show(&self, Path(id): Path<u64>, _query: Query<Vec<(String, String)>>) -> Result<String, RemoteError> {
        Ok(id.to_string())
    }
}

#[test]
fn the_macro_describes_every_entrypoint_as_written() {
    let description = serde_json::to_value(ServiceDescription::of::<Orders>()).unwrap();
    assert_eq!(description["service"], json!("orders"));
    assert!(description["framework"].as_str().unwrap().starts_with("nameko-rs "));
    assert_eq!(
        description["entrypoints"],
        json!([
            {
                "method": "place",
                "kind": "rpc",
                "params": [
                    {"name": "type", "type": "String"},
                    {"name": "items", "type": "Vec<(u32, String)>"},
                    {"name": "note", "type": "Option<String>"},
                ],
                "returns": "Result<u64, RemoteError>",
                "doc": ["Places an order.", "", "Returns its id."],
            },
            {
                "method": "on_shipped",
                "kind": "event_handler",
                "detail": "shipping.shipped",
                "params": [{"name": "event", "type": "Shipped"}],
                "returns": "Result<(), RemoteError>",
                "doc": [],
            },
            {
                "method": "tidy",
                "kind": "timer",
                "detail": "every 60s, cluster singleton",
                "params": [],
                "returns": "Result<(), RemoteError>",
                "doc": ["Tidies up."],
            },
            {
                "method": "show",
                "kind": "http",
                "detail": "GET /orders/{id}, HEAD /o/{id}",
                "params": [
                    {"name": "Path(id)", "type": "Path<u64>"},
                    {"name": "_query", "type": "Query<Vec<(String, String)>>"},
                ],
                "returns": "Result<String, RemoteError>",
                "doc": [],
            },
        ])
    );
}

#[tokio::test]
async fn the_introspection_rpc_answers_without_a_worker() {
    let harness = ServiceHarness::builder::<Orders>()
        .only_entrypoints(["place"])
        .start()
        .await
        .unwrap();
    let reports = harness.container().worker_reports();
    let answer = harness.rpc(INSPECT_METHOD, json!([])).await.unwrap();
    let description: ServiceDescription = serde_json::from_value(answer).unwrap();
    assert_eq!(description, ServiceDescription::of::<Orders>());
    assert!(reports.is_empty(), "no worker ran for the introspection RPC");
    // Other underscored names stay unknown methods.
    let error = harness.rpc("_nameko_other", json!([])).await.unwrap_err();
    assert!(matches!(error, RpcError::Remote(e) if e.exc_type() == "MethodNotFound"));
}

#[derive(nameko::Dependencies)]
pub(crate) struct Sneaky {}

#[nameko::service(name = "sneaky")]
impl Sneaky {
    #[rpc]
    async fn _nameko_inspect(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

#[tokio::test]
async fn reserved_method_names_fail_setup() {
    let error = ServiceHarness::builder::<Sneaky>()
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("method name `_nameko_inspect` starts with `_nameko_`, which is reserved"),
        "{error}"
    );
}
