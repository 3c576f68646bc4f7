//! Services for messaging tests, written against the public traits (the macros come
//! later), and a runner over a shared memory broker.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use nameko_core::{Config, ServiceRunner};
use nameko_extensions::{broker::Broker, memory::MemoryBroker};
use serde_json::Value;

/// Declares a service struct with its providers. A field may name its provider slot
/// (`field: Type = expr`), else it gets its type's default provider.
macro_rules! deps {
    ($svc:ident, $providers:ident { $($field:ident : $ty:ty $(= $slot:expr)?),* $(,)? }) => {
        pub(crate) struct $svc { $(pub(crate) $field: $ty,)* }

        pub(crate) struct $providers { $(pub(crate) $field: ::nameko_core::Provider<$ty>,)* }

        impl ::nameko_core::Providers for $providers {
            type Worker = $svc;
            fn slots(&mut self) -> Vec<(&'static str, &mut dyn ::nameko_core::ProviderSlot)> {
                vec![$((stringify!($field), &mut self.$field as &mut dyn ::nameko_core::ProviderSlot),)*]
            }
            async fn build<'a>(
                &'a self,
                b: &mut ::nameko_core::WorkerBuilder<'a>,
            ) -> Result<$svc, ::nameko_core::DependencyError> {
                Ok($svc { $($field: b.get(&self.$field).await?,)* })
            }
        }

        impl ::nameko_core::Dependencies for $svc {
            type Providers = $providers;
            fn providers() -> $providers {
                $providers { $($field: deps!(@slot $($slot)?),)* }
            }
        }
    };
    (@slot $slot:expr) => { $slot };
    (@slot) => { ::nameko_core::Provider::of() };
}
pub(crate) use deps;

/// What one runner's handlers saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    events: Mutex<Vec<(String, Value)>>,
}

impl Seen {
    pub(crate) fn push(&self, who: &str, value: Value) {
        self.events.lock().unwrap().push((who.to_owned(), value));
    }

    pub(crate) fn all(&self) -> Vec<(String, Value)> {
        self.events.lock().unwrap().clone()
    }

    pub(crate) fn count(&self, who: &str) -> usize {
        self.events.lock().unwrap().iter().filter(|(w, _)| w == who).count()
    }
}

/// A runner on `broker` with `config` (YAML) and a fresh [`Seen`].
pub(crate) fn runner(broker: &MemoryBroker, config: &str) -> (ServiceRunner, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let runner = ServiceRunner::new(Config::from_yaml_str(config).unwrap())
        .resource::<dyn Broker>(broker.shared())
        .resource(Arc::clone(&seen))
        .stop_timeout(Duration::from_secs(5));
    (runner, seen)
}

/// Waits until `check` holds, polling; panics with `what` after ten seconds (generous:
/// the machine may be busy).
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Prints why a test skips and gives `None`, or panics under `CI=true`, where a missing
/// service is a failure. `what` names what the test needs ("RabbitMQ").
#[cfg(feature = "amqp")]
pub(crate) fn skip<T>(what: &str, reason: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "a test that needs {what} cannot run under CI=true: {reason}"
    );
    eprintln!("skipping a test that needs {what}: {reason}");
    None
}

/// `NAMEKO_TEST_AMQP_URI` when RabbitMQ answers there; otherwise [`skip`].
#[cfg(feature = "amqp")]
pub(crate) async fn rabbitmq() -> Option<nameko_extensions::amqp::AmqpUri> {
    let Ok(text) = std::env::var("NAMEKO_TEST_AMQP_URI") else {
        return skip("RabbitMQ", "NAMEKO_TEST_AMQP_URI is not set");
    };
    let uri = match nameko_extensions::amqp::AmqpUri::parse(&text) {
        Ok(uri) => uri,
        Err(error) => return skip("RabbitMQ", &format!("NAMEKO_TEST_AMQP_URI is invalid: {error}")),
    };
    if let Err(error) = tokio::net::TcpStream::connect((uri.host(), uri.port())).await {
        return skip("RabbitMQ", &format!("RabbitMQ at {uri} is unreachable: {error}"));
    }
    Some(uri)
}
