//! How extensions find the broker: a runner resource of type `dyn Broker`.

use nameko_core::{Readiness, SetupContext, SetupError};

use crate::broker::{Broker, SharedBroker};

/// The runner's broker.
///
/// # Errors
///
/// When no broker was registered, saying how to give one.
pub fn broker(cx: &SetupContext<'_>) -> Result<SharedBroker, SetupError> {
    cx.resource::<dyn Broker>().map_err(|_| {
        let place = match cx.field_name() {
            Some(field) => format!("service `{}`: field `{field}`", cx.service_name()),
            None => match cx.entrypoint() {
                Some(ep) => format!(
                    "service `{}`: entrypoint `{}` ({})",
                    cx.service_name(),
                    ep.method(),
                    ep.kind()
                ),
                None => format!("service `{}`", cx.service_name()),
            },
        };
        SetupError::new(format!(
            "{place} needs a message broker, but none was given; run with a transport \
             (`--transport memory` or `--transport amqp`) or register one with \
             `ServiceRunner::resource::<dyn nameko_extensions::broker::Broker>(..)`"
        ))
    })
}

/// The runner's [`Readiness`], when the service runs in a
/// [`ServiceRunner`](nameko_core::ServiceRunner) (a container started on its own has
/// none): consumers report into it.
pub(crate) fn readiness(cx: &SetupContext<'_>) -> Option<Readiness> {
    cx.resource::<Readiness>().ok().map(|r| (*r).clone())
}
