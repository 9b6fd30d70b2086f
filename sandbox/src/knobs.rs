//! Fault-injection knobs and counters. The knobs and the stats snapshot are the admin API's
//! wire types, so they live in `paygate-sandbox-admin` (shared with the typed client and the
//! conformance kit, which cannot depend on this crate); the live counters stay here.

use std::sync::atomic::{AtomicU64, Ordering};

pub use paygate_sandbox_admin::knobs::{Knobs, KnobsReport, Stats, StatsReport};

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        /// Live counters of one account (or of all); see [`Stats`] for each one's meaning.
        /// The snapshot names every field of [`Stats`], so the two cannot drift apart.
        #[derive(Debug, Default)]
        pub struct Counters { $(pub $field: AtomicU64,)* }

        impl Counters {
            pub fn snapshot(&self) -> Stats {
                Stats { $($field: self.$field.load(Ordering::Relaxed),)* }
            }

            pub fn reset(&self) {
                $(self.$field.store(0, Ordering::Relaxed);)*
            }
        }
    };
}

counters! {
    requests,
    executions,
    duplicates_suppressed,
    declines,
    errors_injected,
    rate_limited,
    timeouts_injected,
    lost_responses,
    outage_rejections,
    unauthorized,
    bad_requests,
    status_queries,
    callbacks_sent,
    callbacks_failed,
    callback_retries,
    callbacks_duplicated,
    callbacks_malformed,
    callbacks_mismatched,
    callbacks_out_of_order,
    executed_then_errored,
    duplicate_references_refused,
    executed_elsewhere,
    statuses_mismatched,
    actions_required,
    refunds,
}
