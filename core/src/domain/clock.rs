//! Time arithmetic that cannot panic.
//!
//! chrono panics when `DateTime + Duration` overflows, and some delays come from outside: a
//! provider's `Retry-After: 99999999999999` once crashed the payment processor mid-attempt
//! (the message dead-lettered, the lock held, the payment stuck in `submitting`). Every
//! "now + delay" in paygate goes through [`after`].

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The latest instant [`after`] answers: far beyond any real schedule, and well inside what
/// Postgres' `timestamptz` stores.
fn horizon() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `at + delay`, saturating at the year 9999 instead of panicking.
pub fn after(at: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .map_or_else(horizon, |t| t.min(horizon()))
}

/// How long from `earlier` to `later`; zero when `later` is not after it.
pub fn elapsed(earlier: DateTime<Utc>, later: DateTime<Utc>) -> Duration {
    (later - earlier).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn huge_delays_saturate() {
        let now = Utc::now();
        assert_eq!(after(now, Duration::from_secs(u64::MAX)), horizon());
        assert_eq!(after(now, Duration::MAX), horizon());
        assert_eq!(
            after(now, Duration::from_secs(5)) - now,
            chrono::Duration::seconds(5)
        );
    }

    proptest! {
        #[test]
        fn after_never_panics_and_never_goes_back(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let now = Utc::now();
            let t = after(now, Duration::new(secs, nanos));
            prop_assert!(t >= now);
            prop_assert!(t <= horizon());
        }
    }
}
