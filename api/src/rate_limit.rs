//! Per-API-key rate limiting (governor's GCRA): `api.rate_limit_per_second` sustained with
//! `api.rate_limit_burst` allowed at once. Over the limit: 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use paygate_core::domain::ApiKeyId;
use tokio_util::sync::CancellationToken;

pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<ApiKeyId>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Self {
            limiter: governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` if this key may make a request now; otherwise how long until it may.
    pub fn check(&self, key: ApiKeyId) -> Result<(), Duration> {
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys idle long enough to be back at full burst, so memory stays bounded by
    /// the keys active recently.
    pub fn spawn_cleanup(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        this.limiter.retain_recent();
                        this.limiter.shrink_to_fit();
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_wait() {
        let limiter = RateLimiter::new(1, 2);
        let key = ApiKeyId::new();
        assert!(limiter.check(key).is_ok());
        assert!(limiter.check(key).is_ok());
        let wait = limiter.check(key).err();
        assert!(
            wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(1)),
            "{wait:?}"
        );
        assert!(
            limiter.check(ApiKeyId::new()).is_ok(),
            "keys are limited separately"
        );
    }
}
