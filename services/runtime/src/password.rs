//! Argon2id password hashing, off the async threads.
//!
//! Hashing costs tens of milliseconds and ~19 MiB by design, so it runs on
//! the blocking pool, with a semaphore bounding how many run at once: a
//! burst of logins queues instead of exhausting memory.

use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;

/// Hashes and verifies passwords (account passwords in auth, private-room
/// passwords in chat). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// The histogram each hash's time is recorded in, such as
    /// `parley_auth_password_hash_seconds`.
    metric: &'static str,
}

impl Passwords {
    /// At most two hashes per core at once, timed into the histogram
    /// `metric` (a name ending in `_hash_seconds`, which gets hash buckets).
    pub fn new(metric: &'static str) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            permits: Arc::new(Semaphore::new(cores * 2)),
            metric,
        }
    }

    /// Hashes `password` with a fresh salt (Argon2id, OWASP parameters).
    ///
    /// # Errors
    /// Fails only on an internal error.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|err| anyhow::anyhow!("hashing a password: {err}"))
        })
        .await
    }

    /// Checks `password` against a stored hash. With no hash (unknown user)
    /// it checks against a dummy, so both answers take the same time and a
    /// failed login does not reveal whether the user exists.
    ///
    /// # Errors
    /// Fails when the stored hash is malformed.
    pub async fn verify(&self, password: String, stored: Option<String>) -> anyhow::Result<bool> {
        self.run(move || {
            let known = stored.is_some();
            let stored = stored.unwrap_or_else(|| dummy_hash().to_owned());
            let parsed = PasswordHash::new(&stored)
                .map_err(|err| anyhow::anyhow!("stored hash is malformed: {err}"))?;
            let matches = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok(known && matches)
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hashing is shut down")?;
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(work)
            .await
            .context("password hashing task panicked")?;
        metrics::histogram!(self.metric).record(started.elapsed().as_secs_f64());
        result
    }
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"parley dummy password", &salt)
            .map(|hash| hash.to_string())
            // Hashing a constant with default parameters cannot fail.
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_salts_differ() {
        let passwords = Passwords::new("test_password_hash_seconds");
        let first = passwords.hash("correct horse".into()).await.unwrap();
        let second = passwords.hash("correct horse".into()).await.unwrap();
        assert!(first.starts_with("$argon2id$"));
        assert_ne!(first, second);
        assert!(
            passwords
                .verify("correct horse".into(), Some(first.clone()))
                .await
                .unwrap()
        );
        assert!(!passwords.verify("wrong".into(), Some(first)).await.unwrap());
        assert!(
            !passwords
                .verify("correct horse".into(), None)
                .await
                .unwrap()
        );
    }
}
