//! No provider `Retry-After` can panic the processor or park a payment beyond the cap
//! (issue 12, case 3): `attempt::retry_delay` and `clock::after` over arbitrary header
//! values, attempt counts and settings.

use std::time::Duration;

use chrono::{DateTime, Utc};
use paygate_core::domain::clock;
use paygate_payment_processor::attempt::retry_delay;
use paygate_payment_processor::backoff::Backoff;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Any duration a header parser could produce: whole seconds up to `u64::MAX` (what
/// delta-seconds parse to) with any nanoseconds, or none at all.
fn retry_after() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        Just(None),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Some(Duration::new(s, n))),
        (0u64..7_200).prop_map(|s| Some(Duration::from_secs(s))),
        Just(Some(Duration::from_secs(99_999_999_999_999))),
        Just(Some(Duration::MAX)),
    ]
}

/// Any instant a row could hold: from the epoch to the year 9999.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..253_402_300_799).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap_or_default())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_retry_is_never_scheduled_beyond_the_cap_and_nothing_panics(
        retry_after in retry_after(),
        attempts in any::<i32>(),
        base_ms in 0u64..100_000,
        cap_ms in 0u64..10_000_000,
        max_retry_after_secs in 0u64..1_000_000,
        seed in any::<u64>(),
        now in instant(),
    ) {
        let backoff = Backoff {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms),
        };
        let max_retry_after = Duration::from_secs(max_retry_after_secs);
        let mut rng = StdRng::seed_from_u64(seed);
        let delay = retry_delay(&backoff, attempts, retry_after, max_retry_after, &mut rng);

        // Never beyond the larger of the two caps.
        let cap = backoff.cap.max(max_retry_after);
        prop_assert!(delay <= cap, "{delay:?} > {cap:?}");
        // The provider's wish is honoured up to the cap.
        let wished = retry_after.unwrap_or_default().min(max_retry_after);
        prop_assert!(delay >= wished, "{delay:?} < {wished:?}");

        // The due time: never before now, never past now + cap (saturating near the
        // year 9999 instead of overflowing).
        let at = clock::after(now, delay);
        prop_assert!(at >= now);
        prop_assert!(at <= clock::after(now, cap));
        prop_assert!(clock::elapsed(now, at) <= delay);
    }
}
