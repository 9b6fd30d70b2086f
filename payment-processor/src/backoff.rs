//! Exponential backoff with full jitter (AWS's "full jitter"): the delay before retry `n`
//! is uniform in `[0, min(cap, base * 2^(n-1))]`. Full jitter spreads a burst of failures
//! (a provider outage) so they do not all come back at once when it recovers.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling for the retry after `attempts` attempts (1 = after the first).
    pub fn ceiling(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1).max(0))
            .unwrap_or(0)
            .min(30);
        self.base.saturating_mul(1_u32 << exponent).min(self.cap)
    }

    /// A random delay in `[0, ceiling]`.
    pub fn delay(&self, attempts: i32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempts).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(0).as_millis(), 100);
        assert_eq!(b.ceiling(i32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_vary() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        };
        let mut rng = rand::rng();
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(4, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 20, "full jitter should spread delays");
    }
}
