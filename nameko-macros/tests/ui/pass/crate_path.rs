//! `crate = "..."` overrides the facade path in every macro.

mod reexport {
    pub use nameko as framework;
}

use reexport::framework::{prelude::RemoteError, rpc::RpcError};

#[derive(Debug, reexport::framework::Dependencies)]
#[dependencies(crate = "crate::reexport::framework")]
struct Svc {
    #[dependency(key = "SVC", timeout = 5, strict = true)]
    settings: reexport::framework::prelude::Settings<serde_json::Value>,
}

#[reexport::framework::service(name = "svc", crate = "crate::reexport::framework")]
impl Svc {
    #[rpc]
    async fn ping(&self) -> Result<String, Failure> {
        let _ = &self.settings;
        Ok("pong".into())
    }

    #[rpc]
    async fn fail(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

#[reexport::framework::rpc_client(service = "svc", crate = "crate::reexport::framework")]
trait SvcClient {
    async fn ping(&self) -> Result<String, RpcError>;
}

#[derive(Debug, thiserror::Error, reexport::framework::RemoteError)]
#[remote(crate = "crate::reexport::framework", status = 503)]
#[error("failed")]
struct Failure;

fn main() {
    use reexport::framework::core::{Dependencies, Service};
    let _ = Svc::NAME;
    let _ = Svc::providers();
    let _ = <dyn SvcClient as reexport::framework::rpc::RpcInterface>::SERVICE;
}
