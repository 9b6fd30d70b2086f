//! When to try again: the configured schedule with ± jitter, lengthened (never shortened)
//! by a `Retry-After` within bounds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// The schedule and its bounds, from `DispatcherConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before attempt n+1 is `schedule[n]`: the first entry is the delay before the
    /// first attempt (deliveries are due at once when recorded: 0 in the default schedule),
    /// and there are as many attempts as entries.
    pub schedule: Vec<Duration>,
    pub jitter_percent: u32,
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &paygate_core::config::DispatcherConfig) -> Self {
        Self {
            schedule: config.retry_schedule.clone(),
            jitter_percent: config.jitter_percent.min(100),
            retry_after_max: config.retry_after_max,
        }
    }

    /// The delay after attempt `failed_attempt` (1-based) failed, or `None` when the
    /// schedule is exhausted.
    pub fn next_delay(
        &self,
        failed_attempt: i32,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let index = usize::try_from(failed_attempt).ok()?;
        let base = *self.schedule.get(index)?;
        let jittered = if self.jitter_percent == 0 || base.is_zero() {
            base
        } else {
            let spread = f64::from(self.jitter_percent) / 100.0;
            let factor = 1.0 + rand::rng().random_range(-spread..=spread);
            base.mul_f64(factor.max(0.0))
        };
        Some(match retry_after {
            Some(asked) => jittered.max(asked.min(self.retry_after_max)),
            None => jittered,
        })
    }
}

/// `Retry-After` as seconds or an HTTP date; `None` when absent or unreadable.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(schedule: &[u64], jitter: u32) -> RetryPolicy {
        RetryPolicy {
            schedule: schedule.iter().map(|s| Duration::from_secs(*s)).collect(),
            jitter_percent: jitter,
            retry_after_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn schedule_jitter_and_retry_after() {
        let p = policy(&[0, 5, 300], 0);
        assert_eq!(p.next_delay(1, None), Some(Duration::from_secs(5)));
        assert_eq!(p.next_delay(2, None), Some(Duration::from_secs(300)));
        assert_eq!(p.next_delay(3, None), None, "three entries, three attempts");
        // Retry-After lengthens within bounds, never shortens.
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(3_600))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            p.next_delay(2, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(300))
        );

        let jittered = policy(&[0, 100], 20);
        for _ in 0..200 {
            let d = jittered.next_delay(1, None).unwrap_or_default();
            assert!(
                d >= Duration::from_secs(80) && d <= Duration::from_secs(120),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
