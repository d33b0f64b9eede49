//! The per-user send rate limit of one replica: a token bucket per user.
//!
//! Written here rather than taken from a rate-limiting crate because the
//! contract needs refunds: a send that turns out to be an idempotent retry
//! (known only once storage has looked its `client_id` up) must cost no
//! token.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Buckets kept before full ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// Token buckets by user id.
#[derive(Debug)]
pub(crate) struct SendLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    by_user: HashMap<String, Bucket>,
    /// The size at which full buckets are next forgotten: twice what a
    /// sweep left, so a sweep that frees little (many users sending at
    /// once) is not run again on the very next send, and the cost of
    /// sweeping stays constant per send.
    prune_above: usize,
    #[cfg(test)]
    sweeps: usize,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            by_user: HashMap::new(),
            prune_above: PRUNE_ABOVE,
            #[cfg(test)]
            sweeps: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl SendLimiter {
    /// `rate` tokens per second, at most `burst` saved up.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `user_id` if one is left.
    pub(crate) fn try_take(&self, user_id: &str) -> bool {
        self.try_take_at(user_id, Instant::now())
    }

    fn try_take_at(&self, user_id: &str, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.by_user.len() > buckets.prune_above {
            let (rate, burst) = (self.rate, self.burst);
            buckets
                .by_user
                .retain(|_, bucket| refilled(*bucket, now, rate, burst) < burst);
            buckets.prune_above = PRUNE_ABOVE.max(buckets.by_user.len() * 2);
            #[cfg(test)]
            {
                buckets.sweeps += 1;
            }
        }
        let bucket = buckets.by_user.entry(user_id.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = refilled(*bucket, now, self.rate, self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for a send that cost nothing after all.
    pub(crate) fn refund(&self, user_id: &str) {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bucket) = buckets.by_user.get_mut(user_id) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    /// How long until `user_id` has a token again, for error messages.
    pub(crate) fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

fn refilled(bucket: Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = SendLimiter::new(10, 3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.try_take_at("u", start));
        }
        assert!(!limiter.try_take_at("u", start));
        assert!(limiter.try_take_at("other", start), "buckets are per user");
        assert!(limiter.try_take_at("u", start + Duration::from_millis(100)));
        assert!(!limiter.try_take_at("u", start + Duration::from_millis(100)));
    }

    /// Many users sending at once (none of their buckets full) must not
    /// make every send sweep them all: sweeps grow apart as buckets do.
    #[test]
    fn sweeps_stay_rare_when_many_users_are_sending() {
        let limiter = SendLimiter::new(1, 2);
        let start = Instant::now();
        for user in 0..(PRUNE_ABOVE * 4) {
            assert!(limiter.try_take_at(&format!("u{user}"), start));
        }
        let buckets = limiter.buckets.lock().unwrap();
        assert_eq!(buckets.by_user.len(), PRUNE_ABOVE * 4, "none was full");
        assert!(buckets.sweeps <= 3, "{} sweeps", buckets.sweeps);
    }

    #[test]
    fn refunds_give_tokens_back_up_to_the_burst() {
        let limiter = SendLimiter::new(1, 1);
        let start = Instant::now();
        assert!(limiter.try_take_at("u", start));
        assert!(!limiter.try_take_at("u", start));
        limiter.refund("u");
        limiter.refund("u");
        assert!(limiter.try_take_at("u", start));
        assert!(
            !limiter.try_take_at("u", start),
            "refunds never exceed the burst"
        );
    }
}
