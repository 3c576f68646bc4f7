//! An rpc_client trait with a mockall mock forwarded ahead of `#[async_trait]`, used
//! through `Rpc<dyn Maths>`.
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]

use std::sync::Arc;

use nameko::rpc::{Rpc, RpcError, RpcInterface};

/// The `maths` service.
#[nameko::rpc_client(service = "maths")]
#[mockall::automock]
pub trait Maths {
    /// Adds.
    async fn add(&self, a: i64, b: i64) -> Result<i64, RpcError>;
    /// No arguments, another error path.
    async fn zero(&self) -> Result<Vec<String>, nameko::rpc::RpcError>;
}

/// Supertraits are kept.
#[nameko::rpc_client(service = "other")]
pub trait Other: Send + Sync + std::fmt::Debug {
    /// Echoes.
    async fn echo(&self, text: String) -> Result<String, RpcError>;
}

fn main() {
    assert_eq!(<dyn Maths as RpcInterface>::SERVICE, "maths");
    assert_eq!(<dyn Other as RpcInterface>::SERVICE, "other");
    let mut mock = MockMaths::new();
    mock.expect_add().returning(|a, b| Ok(a + b));
    let maths: Rpc<dyn Maths> = Rpc::from_arc(Arc::new(mock));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(runtime.block_on(maths.add(1, 2)).unwrap(), 3);
}
