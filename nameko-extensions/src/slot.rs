//! Taking a worker slot the way the entrypoints here do: unless the entrypoint stops
//! first.

use nameko_core::{Binding, WorkerSlot};
use tokio_util::sync::CancellationToken;

/// Waits for a worker slot, unless `stop` is cancelled first (checked first, so a
/// stopping entrypoint starts nothing even when a slot is free). `None` when stopped
/// or when the container refuses work: the caller puts its input back.
pub(crate) async fn reserve_unless_stopped<Req: Send + 'static, Resp: Send + 'static>(
    binding: &Binding<Req, Resp>,
    stop: &CancellationToken,
) -> Option<WorkerSlot<Req, Resp>> {
    tokio::select! {
        biased;
        () = stop.cancelled() => None,
        slot = binding.reserve() => slot.ok(),
    }
}
