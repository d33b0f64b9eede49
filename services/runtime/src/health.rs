//! Readiness: whether a service should get traffic, and how it is reported.
//!
//! A service is ready when every one of its named conditions holds
//! (`database`, `public_keys`, `draining`, ...). Readiness drives both the
//! admin `/readyz` endpoint and the gRPC health entry named after each
//! service (`parley.user.v1.UserService`); the `""` entry is liveness and
//! stays SERVING until the drain starts.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

/// The set of conditions a service waits for, shared by everything that
/// reports or changes them.
#[derive(Debug, Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Condition name to whether it holds. A std mutex: it is held for a map
    /// update only, never across an await.
    conditions: Mutex<BTreeMap<&'static str, bool>>,
    ready: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// No conditions yet: ready until one is added.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                conditions: Mutex::new(BTreeMap::new()),
                ready: watch::channel(true).0,
            }),
        }
    }

    /// Adds a condition that does not hold yet, and returns the handle that
    /// sets it.
    pub fn condition(&self, name: &'static str) -> Condition {
        let condition = Condition {
            readiness: self.clone(),
            name,
        };
        condition.set(false);
        condition
    }

    /// Whether every condition holds.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// The conditions that do not hold, for `/readyz` to explain itself.
    pub fn unmet(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, met)| !**met)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Follows readiness as it changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        // A panic while holding this lock leaves a plain map behind, which
        // is still consistent, so poisoning is ignored.
        self.inner
            .conditions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One named readiness condition.
#[derive(Debug, Clone)]
pub struct Condition {
    readiness: Readiness,
    name: &'static str,
}

impl Condition {
    /// Records whether the condition holds now.
    pub fn set(&self, met: bool) {
        let ready = {
            let mut conditions = self.readiness.lock();
            conditions.insert(self.name, met);
            conditions.values().all(|met| *met)
        };
        self.readiness.inner.ready.send_if_modified(|current| {
            let changed = *current != ready;
            *current = ready;
            changed
        });
    }
}

/// Keeps the gRPC health entries of `service_names` in step with
/// `readiness` until `drain` fires, then marks everything NOT_SERVING,
/// liveness (`""`) included.
pub(crate) async fn report(
    reporter: tonic_health::server::HealthReporter,
    service_names: Vec<&'static str>,
    readiness: Readiness,
    drain: tokio_util::sync::CancellationToken,
) {
    use tonic_health::ServingStatus;

    let mut ready = readiness.subscribe();
    loop {
        let status = if *ready.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in &service_names {
            reporter.set_service_status(*name, status).await;
        }
        tokio::select! {
            changed = ready.changed() => if changed.is_err() { break },
            () = drain.cancelled() => break,
        }
    }
    for name in service_names.iter().copied().chain([""]) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds() {
        let readiness = Readiness::new();
        assert!(readiness.is_ready());
        let database = readiness.condition("database");
        let keys = readiness.condition("public_keys");
        assert!(!readiness.is_ready());
        assert_eq!(readiness.unmet(), vec!["database", "public_keys"]);
        database.set(true);
        assert!(!readiness.is_ready());
        keys.set(true);
        assert!(readiness.is_ready());
        database.set(false);
        assert_eq!(readiness.unmet(), vec!["database"]);
    }
}
