//! Rate limits keyed by who asks (a client address, a username, a user and
//! a room), where each attempt is expensive or guessable: sign-ins and
//! registrations, private-room passwords (README, "Behaviour"). A GCRA
//! token bucket per key from `governor`: `burst` attempts at once, then one
//! more every `refill`. Keys that have refilled completely are forgotten
//! now and then, so memory follows the keys active lately, not every key
//! ever seen.

use std::{
    hash::Hash,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};

/// Checks between two sweeps of fully refilled keys.
const SWEEP_EVERY: u64 = 4096;

/// A token bucket per key.
#[derive(Debug)]
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// `burst` attempts per key at once, then one per `refill`.
    pub fn new(burst: u32, refill: Duration) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(refill)
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        Self::with_quota(quota)
    }

    /// `burst` attempts per key at once, then `rate` a second: for limits
    /// configured as a rate, where a refill period of a whole number of
    /// nanoseconds would round a rate above a billion to nothing.
    pub fn per_second(burst: u32, rate: u32) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        Self::with_quota(Quota::per_second(rate).allow_burst(burst))
    }

    fn with_quota(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::hashmap(quota),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one attempt for `key`.
    ///
    /// # Errors
    /// How long until `key` may try again, when it is out of attempts.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// "retry in N s", rounded up, for messages.
pub fn retry_in(wait: Duration) -> String {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    format!("retry in {} s", seconds.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_burst() {
        let limit = KeyedLimit::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limit.check(&"ann").is_ok());
        }
        let wait = limit.check(&"ann").unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(limit.check(&"bob").is_ok(), "another key is not affected");
        assert_eq!(retry_in(Duration::from_millis(1500)), "retry in 2 s");
    }

    #[test]
    fn a_rate_gives_the_burst_then_refills_at_that_rate() {
        let limit = KeyedLimit::per_second(2, 10);
        assert!(limit.check(&"ann").is_ok());
        assert!(limit.check(&"ann").is_ok());
        let wait = limit.check(&"ann").unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // The largest rate is not rounded away to a lower one.
        let limit = KeyedLimit::per_second(1, u32::MAX);
        assert!(limit.check(&"ann").is_ok());
        let wait = limit
            .check(&"ann")
            .map_or_else(|wait| wait, |()| Duration::ZERO);
        assert!(wait <= Duration::from_micros(1), "{wait:?}");
    }

    #[test]
    fn a_bucket_refills() {
        let limit = KeyedLimit::new(1, Duration::from_millis(20));
        assert!(limit.check(&1).is_ok());
        let wait = limit.check(&1).unwrap_err();
        std::thread::sleep(wait);
        assert!(limit.check(&1).is_ok());
    }
}
