//! Services whose handlers take their time, for the graceful-stop and delivery tests
//! (`tests/stop.rs`): `slow` answers `sleep(ms)` after sleeping, `hung` and `stubborn`
//! never answer `hang()`, `ledger` records each `ledger_source` `entry` event it handles.
//! Each logs when a call starts (or an event is recorded), so a test knows what is in
//! flight.
//!
//! Run with: `cargo run -p example-slow -- run slow --broker amqp://...`

use std::{process::ExitCode, time::Duration};

use nameko::prelude::*;

/// Answers after a while.
#[derive(Debug, nameko::Dependencies)]
struct Slow {}

#[nameko::service(name = "slow")]
impl Slow {
    /// Answers `ms` after sleeping that many milliseconds.
    #[rpc]
    async fn sleep(&self, ms: u64) -> Result<u64, RemoteError> {
        tracing::info!("sleeping {ms} ms");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
}

/// Never answers.
#[derive(Debug, nameko::Dependencies)]
struct Hung {}

#[nameko::service(name = "hung")]
impl Hung {
    /// Waits forever: only a kill ends it.
    #[rpc]
    async fn hang(&self) -> Result<(), RemoteError> {
        tracing::info!("hanging");
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Never answers either: a service of its own, so that the tests of `hung` and
/// `stubborn` can run at once in one vhost.
#[derive(Debug, nameko::Dependencies)]
struct Stubborn {}

#[nameko::service(name = "stubborn")]
impl Stubborn {
    /// Waits forever: only a kill ends it.
    #[rpc]
    async fn hang(&self) -> Result<(), RemoteError> {
        tracing::info!("hanging");
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Records events, a little slowly: a kill falls while some are in flight.
#[derive(Debug, nameko::Dependencies)]
struct Ledger {}

#[nameko::service(name = "ledger")]
impl Ledger {
    /// Logs `recorded <id>` for an `entry` event of `ledger_source` after 5 ms.
    #[event_handler("ledger_source", "entry")]
    async fn record(&self, id: u64) -> Result<(), RemoteError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        tracing::info!("recorded {id}");
        Ok(())
    }
}

/// Fails with secrets in its arguments, which it marks sensitive.
#[derive(Debug, nameko::Dependencies)]
struct Vault {
    rpc: nameko::rpc::ClusterRpc,
}

#[nameko::service(name = "vault")]
impl Vault {
    /// Always refuses: the failure is logged with the call's arguments, `password` and
    /// `card.number` redacted.
    #[rpc(sensitive = ["password", "card.number"])]
    async fn unlock(&self, user: String, password: String, card: serde_json::Value) -> Result<(), RemoteError> {
        let _ = (password, card);
        Err(RemoteError::new("Locked", format!("{user} may not unlock the vault")))
    }

    /// Calls `service.method`, which nobody serves: `UnknownService`.
    #[rpc]
    async fn forward(&self, service: String, method: String) -> Result<serde_json::Value, nameko::rpc::RpcError> {
        self.rpc.call(&service, &method, serde_json::json!([])).await
    }

    /// Always fails: the failure is logged with the event, its `pin` redacted.
    #[event_handler("vault_source", "deposit", sensitive = ["deposit.pin"])]
    async fn deposit(&self, deposit: serde_json::Value) -> Result<(), RemoteError> {
        let _ = deposit;
        Err(RemoteError::new("Refused", "deposits are closed"))
    }
}

fn main() -> ExitCode {
    nameko::cli::Cli::new().name("example-slow").main()
}
