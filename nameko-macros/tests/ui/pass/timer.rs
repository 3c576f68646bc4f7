//! Interval timers in every form the macro takes.
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]

use nameko::prelude::RemoteError;

/// The service.
#[derive(Debug, nameko::Dependencies)]
pub struct Ticker {}

#[nameko::service(name = "ticker")]
impl Ticker {
    #[timer(interval = "30s")]
    async fn seconds(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    #[timer(interval = "500ms", eager = true, missed = "skip")]
    async fn millis(&self) -> Result<u32, RemoteError> {
        Ok(7)
    }

    #[timer(interval = 5, cluster_singleton = true)]
    async fn integer(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    #[timer(interval = 0.25, missed = "burst", eager = false, cluster_singleton = false)]
    async fn float(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {}
