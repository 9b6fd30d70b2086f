//! Fault-injection knobs and counters.
//!
//! Knobs apply globally, and an account (a gateway name, the first path segment) may have
//! its own set that replaces the global one, so tests sharing one sandbox do not disturb
//! each other. Rates are probabilities in `0..=1` (floats are fine here: no money).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Everything that can be made to go wrong. JSON shape = these field names; every field is
/// optional on input (missing = default, or the current value for `PATCH`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Each request first waits a uniformly random time in `[latency_min_ms, latency_max_ms]`.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Answer 5xx without executing.
    pub error_rate: f64,
    /// Answer 429 with `Retry-After: 1` without executing.
    pub rate_limit_rate: f64,
    /// Hang for `hang_ms` without executing, then answer 504.
    pub timeout_rate: f64,
    /// Execute, then hang for `hang_ms` and answer 504: "executed but the response is lost".
    pub lost_response_rate: f64,
    pub hang_ms: u64,
    /// Refuse synchronously as declined (recorded: a retry gets the same decline).
    pub decline_rate: f64,
    /// Every request gets 503 (status queries too).
    pub outage: bool,
    /// Executed payments whose callback reports a failure (`insufficient_funds`).
    pub callback_failure_rate: f64,
    pub callbacks_enabled: bool,
    pub callback_delay_ms: u64,
    /// Send the callback twice (same event id), the copy `callback_delay_ms` later.
    pub duplicate_callback_rate: f64,
    /// Hold the callback back an extra `out_of_order_delay_ms`, so later payments'
    /// callbacks overtake it.
    pub out_of_order_rate: f64,
    pub out_of_order_delay_ms: u64,
    /// Send a correctly signed but unparseable callback (wrong JSON shape, truncated XML,
    /// garbage protobuf payload).
    pub malformed_callback_rate: f64,
    /// Report one minor unit more than was paid in the callback.
    pub mismatched_callback_rate: f64,
    /// Attempts per callback while paygate answers non-2xx (backoff 100 ms, doubling).
    pub callback_max_attempts: u32,
    /// Where this account's callbacks go instead of the sandbox's configured base URL.
    pub callback_base_url: Option<String>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            latency_min_ms: 0,
            latency_max_ms: 0,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            timeout_rate: 0.0,
            lost_response_rate: 0.0,
            hang_ms: 30_000,
            decline_rate: 0.0,
            outage: false,
            callback_failure_rate: 0.0,
            callbacks_enabled: true,
            callback_delay_ms: 50,
            duplicate_callback_rate: 0.0,
            out_of_order_rate: 0.0,
            out_of_order_delay_ms: 500,
            malformed_callback_rate: 0.0,
            mismatched_callback_rate: 0.0,
            callback_max_attempts: 4,
            callback_base_url: None,
        }
    }
}

impl Knobs {
    /// Refuses rates outside `0..=1` and an inverted latency range.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("timeout_rate", self.timeout_rate),
            ("lost_response_rate", self.lost_response_rate),
            ("decline_rate", self.decline_rate),
            ("callback_failure_rate", self.callback_failure_rate),
            ("duplicate_callback_rate", self.duplicate_callback_rate),
            ("out_of_order_rate", self.out_of_order_rate),
            ("malformed_callback_rate", self.malformed_callback_rate),
            ("mismatched_callback_rate", self.mismatched_callback_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0..=1, got {rate}"));
            }
        }
        if self.latency_min_ms > self.latency_max_ms {
            return Err("latency_min_ms must not exceed latency_max_ms".into());
        }
        if self.callback_max_attempts == 0 {
            return Err("callback_max_attempts must be at least 1".into());
        }
        Ok(())
    }

    /// Applies a partial JSON object on top of these knobs.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(patch) = patch else {
            return Err("knobs must be a JSON object".into());
        };
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let serde_json::Value::Object(fields) = &mut current {
            for (key, value) in patch {
                fields.insert(key.clone(), value.clone());
            }
        }
        let knobs: Self = serde_json::from_value(current).map_err(|e| e.to_string())?;
        knobs.validate()?;
        Ok(knobs)
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        /// Live counters of one account (or of all).
        #[derive(Debug, Default)]
        pub struct Counters { $($(#[$doc])* pub $field: AtomicU64,)* }

        /// A snapshot of [`Counters`]; the JSON shape of the stats endpoints.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Stats { $($(#[$doc])* pub $field: u64,)* }

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
    /// Payment requests received (status queries not included).
    requests,
    /// Payments executed: a new reference accepted. Never counts a duplicate.
    executions,
    /// Requests whose reference had been seen: answered from the record, not executed again.
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
    /// Callbacks paygate acknowledged with 2xx (duplicates included).
    callbacks_sent,
    /// Callbacks given up on after every attempt.
    callbacks_failed,
    /// Callback attempts that failed and were retried.
    callback_retries,
    callbacks_duplicated,
    callbacks_malformed,
    callbacks_mismatched,
    callbacks_out_of_order,
}

/// Stats for all accounts and per account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub total: Stats,
    pub accounts: BTreeMap<String, Stats>,
}

/// The knobs report: global, and the accounts that override them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KnobsReport {
    pub global: Knobs,
    pub accounts: BTreeMap<String, Knobs>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_merge_and_validate() {
        let knobs = Knobs::default();
        let patched = knobs
            .patched(&serde_json::json!({"decline_rate": 1.0}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(patched.decline_rate, 1.0);
        assert_eq!(patched.callback_delay_ms, knobs.callback_delay_ms);
        assert!(knobs
            .patched(&serde_json::json!({"decline_rate": 1.5}))
            .is_err());
        assert!(knobs
            .patched(&serde_json::json!({"no_such_knob": 1}))
            .is_err());
        assert!(knobs
            .patched(&serde_json::json!({"latency_min_ms": 5, "latency_max_ms": 1}))
            .is_err());
    }
}
