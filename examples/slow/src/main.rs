//! Two services whose handlers take their time, for the graceful-stop tests
//! (`tests/stop.rs`): `slow` answers `sleep(ms)` after sleeping, `hung` and `stubborn`
//! never answer `hang()`. Each logs when a call starts, so a test knows what is in flight.
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

fn main() -> ExitCode {
    nameko::cli::Cli::new().name("example-slow").main()
}
