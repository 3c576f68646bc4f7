//! Readiness: whether a runner's services can serve now (connected and consuming).
//!
//! A [`Readiness`] is a set of named parts, each ready or not ready with a reason.
//! The runner is ready when every part is. Parts are registered by whoever knows a
//! piece of the truth — the runner itself (started, not stopping), a transport (its
//! connection), each consumer (consuming) — and removed when their [`ReadinessPart`]
//! is dropped. nameko-core knows no transport: extensions find the runner's
//! `Readiness` as a resource (`cx.resource::<Readiness>()`) and report into it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use nameko_core::Readiness;
//!
//! let readiness = Readiness::new();
//! let connection = readiness.part("RabbitMQ connection", "connecting");
//! assert!(!readiness.is_ready());
//! assert_eq!(readiness.report().to_string(), "not ready: RabbitMQ connection (connecting)");
//! connection.ready();
//! readiness.wait_ready().await;
//! assert_eq!(readiness.report().to_string(), "ready");
//! # }
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::watch;

/// One part's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartStatus {
    /// It can serve.
    Ready,
    /// It cannot serve, and why.
    NotReady(String),
}

/// Every part's state at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadinessReport {
    parts: BTreeMap<(String, u64), PartStatus>,
}

impl ReadinessReport {
    /// Whether every part is ready (true when there is none).
    pub fn is_ready(&self) -> bool {
        self.parts.values().all(|s| *s == PartStatus::Ready)
    }

    /// The parts that are not ready, with why, in name order.
    pub fn not_ready(&self) -> Vec<(&str, &str)> {
        self.parts
            .iter()
            .filter_map(|((name, _), status)| match status {
                PartStatus::NotReady(reason) => Some((name.as_str(), reason.as_str())),
                PartStatus::Ready => None,
            })
            .collect()
    }

    /// Every part with its state, in name order.
    pub fn parts(&self) -> impl Iterator<Item = (&str, &PartStatus)> {
        self.parts.iter().map(|((name, _), status)| (name.as_str(), status))
    }
}

impl ReadinessReport {
    /// What `GET /ready` answers (the web server's and the metrics endpoint's):
    /// `{"ready": true}`, or `{"ready": false, "not_ready": [{"part": .., "reason": ..}]}`
    /// naming each part not ready.
    pub fn probe_json(&self) -> serde_json::Value {
        if self.is_ready() {
            return serde_json::json!({"ready": true});
        }
        let not_ready: Vec<serde_json::Value> = self
            .not_ready()
            .into_iter()
            .map(|(part, reason)| serde_json::json!({"part": part, "reason": reason}))
            .collect();
        serde_json::json!({"ready": false, "not_ready": not_ready})
    }
}

impl fmt::Display for ReadinessReport {
    /// `ready`, or `not ready: <part> (<reason>); ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not_ready = self.not_ready();
        if not_ready.is_empty() {
            return f.write_str("ready");
        }
        f.write_str("not ready: ")?;
        for (i, (name, reason)) in not_ready.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{name} ({reason})")?;
        }
        Ok(())
    }
}

/// A runner's readiness: cloneable, shared by everything that reports into it.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    report: watch::Sender<ReadinessReport>,
    next: AtomicU64,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Readiness").field(&self.report().to_string()).finish()
    }
}

impl Readiness {
    /// A readiness with no parts (ready).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                report: watch::channel(ReadinessReport::default()).0,
                next: AtomicU64::new(0),
            }),
        }
    }

    /// Registers a part named `name`, not ready because of `reason`, until its
    /// handle says otherwise. Several parts may share a name.
    pub fn part(&self, name: impl Into<String>, reason: impl Into<String>) -> ReadinessPart {
        let key = (name.into(), self.inner.next.fetch_add(1, Ordering::Relaxed));
        self.inner.report.send_modify(|report| {
            report.parts.insert(key.clone(), PartStatus::NotReady(reason.into()));
        });
        ReadinessPart {
            readiness: self.clone(),
            key,
        }
    }

    /// Whether every part is ready now.
    pub fn is_ready(&self) -> bool {
        self.inner.report.borrow().is_ready()
    }

    /// Every part's state now.
    pub fn report(&self) -> ReadinessReport {
        self.inner.report.borrow().clone()
    }

    /// Changes from now on: the receiver sees the latest report after each change.
    pub fn subscribe(&self) -> watch::Receiver<ReadinessReport> {
        self.inner.report.subscribe()
    }

    /// Waits until every part is ready.
    pub async fn wait_ready(&self) {
        let mut changes = self.subscribe();
        // The sender lives in `self`: this cannot fail.
        let _ = changes.wait_for(ReadinessReport::is_ready).await;
    }

    /// Waits until some part is not ready.
    pub async fn wait_not_ready(&self) {
        let mut changes = self.subscribe();
        let _ = changes.wait_for(|report| !report.is_ready()).await;
    }

    fn set(&self, key: &(String, u64), status: PartStatus) {
        self.inner
            .report
            .send_if_modified(|report| match report.parts.get_mut(key) {
                Some(current) if *current != status => {
                    *current = status;
                    true
                }
                _ => false,
            });
    }
}

/// One registered part of a [`Readiness`]; dropping it removes the part.
#[derive(Debug)]
pub struct ReadinessPart {
    readiness: Readiness,
    key: (String, u64),
}

impl ReadinessPart {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.key.0
    }

    /// Reports it ready.
    pub fn ready(&self) {
        self.readiness.set(&self.key, PartStatus::Ready);
    }

    /// Reports it not ready, because of `reason`.
    pub fn not_ready(&self, reason: impl Into<String>) {
        self.readiness.set(&self.key, PartStatus::NotReady(reason.into()));
    }
}

impl Drop for ReadinessPart {
    fn drop(&mut self) {
        self.readiness
            .inner
            .report
            .send_if_modified(|report| report.parts.remove(&self.key).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parts_decide_and_changes_are_seen() {
        let readiness = Readiness::new();
        assert!(readiness.is_ready(), "no parts: ready");
        let a = readiness.part("a", "starting");
        let b = readiness.part("b", "connecting");
        let mut changes = readiness.subscribe();
        assert_eq!(readiness.report().not_ready(), [("a", "starting"), ("b", "connecting")]);
        a.ready();
        assert!(changes.has_changed().unwrap());
        assert_eq!(changes.borrow_and_update().not_ready(), [("b", "connecting")]);
        a.ready();
        assert!(!changes.has_changed().unwrap(), "no change, no notification");
        b.ready();
        readiness.wait_ready().await;
        b.not_ready("connection lost");
        readiness.wait_not_ready().await;
        assert_eq!(readiness.report().to_string(), "not ready: b (connection lost)");
        drop(b);
        assert!(readiness.is_ready(), "a dropped part is gone");
        assert_eq!(readiness.report().parts().count(), 1);
    }
}
