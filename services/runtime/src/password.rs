//! Argon2id password hashing, off the async threads.
//!
//! Hashing costs tens of milliseconds and ~19 MiB by design, so it runs on
//! the blocking pool, with a semaphore bounding how many run at once: a
//! burst of logins queues instead of exhausting memory. The queue itself is
//! bounded too, in length and in time: past [`MAX_WAITING`] waiters, or
//! after [`MAX_WAIT`] in line, a call is refused with
//! [`PasswordError::Busy`] (RESOURCE_EXHAUSTED for the caller, who may
//! retry), so a flood of logins cannot build a backlog that every honest
//! login then waits behind.
//!
//! Each hash works in a memory buffer taken from a small pool and put back
//! afterwards, never a fresh 19 MiB allocation. With fresh allocations the
//! process kept what the allocator's per-thread arenas had grown to: the
//! all-in-one climbed from 39 to 624 MiB within 100 logins on a 2-core
//! machine and stayed there (RELIABILITY.md, "Soak"). The pool holds at
//! most one buffer per permit, so memory is bounded by the permits.

use std::{
    cell::RefCell,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{
        self, Decimal, Ident, Output, ParamsString, PasswordHash, PasswordHasher,
        PasswordVerifier as _, Salt, SaltString, rand_core::OsRng,
    },
};
use tokio::sync::Semaphore;

/// Calls that may wait for a hashing slot at once, per process.
pub const MAX_WAITING: usize = 64;
/// Longest a call waits for a hashing slot.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Too many hashes are waiting, or this one waited too long: retry
    /// later.
    #[error("too many password checks at once; retry in a moment")]
    Busy,
    /// A bug, or a malformed stored hash.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Hashes and verifies passwords (account passwords in auth, private-room
/// passwords in chat). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Calls waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    max_wait: Duration,
    /// Argon2 memory buffers not in use; at most one per permit.
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
    /// The histogram each hash's time is recorded in, such as
    /// `parley_auth_password_hash_seconds`.
    metric: &'static str,
}

impl Passwords {
    /// At most one hash per core at once (a hash uses one core, so more
    /// would only hold more memory), timed into the histogram `metric` (a
    /// name ending in `_hash_seconds`, which gets hash buckets).
    pub fn new(metric: &'static str) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self::bounded(metric, cores, MAX_WAITING, MAX_WAIT)
    }

    /// `slots` hashes at once, at most `max_waiting` calls waiting for one,
    /// none of them longer than `max_wait`.
    pub fn bounded(
        metric: &'static str,
        slots: usize,
        max_waiting: usize,
        max_wait: Duration,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(slots.max(1))),
            waiting: Arc::default(),
            max_waiting,
            max_wait,
            buffers: Arc::default(),
            metric,
        }
    }

    /// Hashes `password` with a fresh salt (Argon2id, OWASP parameters).
    ///
    /// # Errors
    /// [`PasswordError::Busy`] when the queue is full or the wait too long;
    /// internal errors.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.run(move |memory| {
            let salt = SaltString::generate(&mut OsRng);
            InBuffer::new(memory)
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
    /// [`PasswordError::Busy`] as for [`Self::hash`]; a malformed stored
    /// hash.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        self.run(move |memory| {
            let known = stored.is_some();
            let stored = stored.unwrap_or_else(|| dummy_hash().to_owned());
            let parsed = PasswordHash::new(&stored)
                .map_err(|err| anyhow::anyhow!("stored hash is malformed: {err}"))?;
            let matches = InBuffer::new(memory)
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok(known && matches)
        })
        .await
    }

    /// Runs `work` on the blocking pool with a permit and a pooled buffer.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                // In line: counted, bounded, and given up after `max_wait`.
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    metrics::counter!("parley_password_hashes_refused_total").increment(1);
                    return Err(PasswordError::Busy);
                }
                let acquired = tokio::time::timeout(self.max_wait, self.permits.acquire()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match acquired {
                    Ok(permit) => permit.context("password hashing is shut down")?,
                    Err(_) => {
                        metrics::counter!("parley_password_hashes_refused_total").increment(1);
                        return Err(PasswordError::Busy);
                    }
                }
            }
        };
        let started = std::time::Instant::now();
        let buffers = Arc::clone(&self.buffers);
        let result = tokio::task::spawn_blocking(move || {
            let mut memory = take(&buffers).unwrap_or_default();
            let result = work(&mut memory);
            put_back(&buffers, memory);
            result
        })
        .await
        .context("password hashing task panicked")?;
        metrics::histogram!(self.metric).record(started.elapsed().as_secs_f64());
        Ok(result?)
    }
}

/// A buffer from the pool, if one is free. A poisoned lock only means a
/// hash panicked while putting one back; the buffers are still sound.
fn take(buffers: &Mutex<Vec<Vec<Block>>>) -> Option<Vec<Block>> {
    buffers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop()
}

fn put_back(buffers: &Mutex<Vec<Vec<Block>>>, memory: Vec<Block>) {
    buffers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(memory);
}

/// Argon2 hashing in a caller's buffer, grown to the parameters' block
/// count when short. As a [`PasswordHasher`] it also verifies (the crate's
/// blanket `PasswordVerifier`, which compares outputs in constant time).
/// Both take `&self`, hence the `RefCell`; one hash runs at a time.
struct InBuffer<'m>(RefCell<&'m mut Vec<Block>>);

impl<'m> InBuffer<'m> {
    fn new(memory: &'m mut Vec<Block>) -> Self {
        Self(RefCell::new(memory))
    }
}

impl PasswordHasher for InBuffer<'_> {
    type Params = Params;

    fn hash_password<'a>(
        &self,
        password: &[u8],
        salt: impl Into<Salt<'a>>,
    ) -> password_hash::Result<PasswordHash<'a>> {
        self.hash_password_customized(password, None, None, Params::default(), salt)
    }

    /// What `argon2::Argon2`'s own `PasswordHasher` does, with the memory
    /// passed in rather than allocated.
    fn hash_password_customized<'a>(
        &self,
        password: &[u8],
        algorithm: Option<Ident<'a>>,
        version: Option<Decimal>,
        params: Params,
        salt: impl Into<Salt<'a>>,
    ) -> password_hash::Result<PasswordHash<'a>> {
        let algorithm = algorithm
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let salt = salt.into();
        let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
        let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
        let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let mut memory = self.0.borrow_mut();
        if memory.len() < params.block_count() {
            memory.resize(params.block_count(), Block::default());
        }
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let output =
            Output::init_with(output_len, |out| {
                Ok(argon2.hash_password_into_with_memory(
                    password,
                    salt_bytes,
                    out,
                    &mut memory[..],
                )?)
            })?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(output),
        })
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

    /// The line for a hashing slot is bounded: with no room to wait a
    /// call is refused at once, and one that waits too long gives up.
    #[tokio::test]
    async fn the_queue_is_bounded_in_length_and_in_time() {
        let no_line = Passwords::bounded("test_password_hash_seconds", 1, 0, MAX_WAIT);
        let (first, second) =
            tokio::join!(no_line.hash("first".into()), no_line.hash("second".into()));
        assert!(first.is_ok());
        assert!(matches!(second, Err(PasswordError::Busy)), "{second:?}");

        let short_wait =
            Passwords::bounded("test_password_hash_seconds", 1, 8, Duration::from_millis(1));
        let (first, second) = tokio::join!(
            short_wait.hash("first".into()),
            short_wait.verify("second".into(), None)
        );
        assert!(first.is_ok());
        assert!(matches!(second, Err(PasswordError::Busy)), "{second:?}");
        // Nobody is left counted as waiting.
        assert!(short_wait.hash("third".into()).await.is_ok());
        assert_eq!(short_wait.waiting.load(Ordering::Acquire), 0);
    }

    /// Hashes made in a pooled buffer are the crate's own: each verifies
    /// the other's, also when a buffer is reused by the next hash and when
    /// the stored parameters need a bigger buffer than the last hash had.
    #[tokio::test]
    async fn pooled_buffers_hash_as_the_crate_does() {
        let passwords = Passwords::new("test_password_hash_seconds");
        for round in 0..3 {
            let password = format!("round {round}");
            let ours = passwords.hash(password.clone()).await.unwrap();
            let parsed = PasswordHash::new(&ours).unwrap();
            assert!(
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            );
            let bigger = Params::new(Params::DEFAULT_M_COST * 2, 1, 1, None).unwrap();
            let salt = SaltString::generate(&mut OsRng);
            let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, bigger)
                .hash_password(password.as_bytes(), &salt)
                .unwrap()
                .to_string();
            assert!(
                passwords
                    .verify(password, Some(theirs.clone()))
                    .await
                    .unwrap()
            );
            assert!(!passwords.verify("nope".into(), Some(theirs)).await.unwrap());
        }
        let pooled = passwords.buffers.lock().unwrap().len();
        assert!((1..=2).contains(&pooled), "{pooled} buffers pooled");
    }
}
