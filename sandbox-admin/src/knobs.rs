//! Fault-injection knobs and the stats snapshot: the JSON shapes of `/_admin/knobs` and
//! `/_admin/stats`.
//!
//! Knobs apply globally, and an account (a gateway name, the first path segment) may have
//! its own set that replaces the global one, so tests sharing one sandbox do not disturb
//! each other. Rates are probabilities in `0..=1` (floats are fine here: no money).

use std::collections::BTreeMap;

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
    /// Attempts per callback while paygate answers non-2xx or cannot be reached, as real
    /// providers retry: the first retry waits `callback_backoff_ms`, each later one twice the
    /// previous, capped at `callback_backoff_max_ms`. The defaults (10 attempts, 1 s doubling
    /// to at most 60 s) span about 4 minutes, so an API restart or a short outage does not
    /// lose a callback. Shutdown stops pending retries at once.
    pub callback_max_attempts: u32,
    /// The first retry delay of a callback (see `callback_max_attempts`).
    pub callback_backoff_ms: u64,
    /// The longest delay between two callback attempts; must be at least
    /// `callback_backoff_ms`.
    pub callback_backoff_max_ms: u64,
    /// Where this account's callbacks go instead of the sandbox's configured base URL.
    pub callback_base_url: Option<String>,
    /// Execute a fresh payment (recorded, counted in `executions`, callback scheduled as
    /// usual), then answer `execute_then_error_status` with a bare `text/plain` body such as
    /// `502 Bad Gateway`: the shape a load balancer in front of the provider gives, not the
    /// provider's own error shape, in all three protocols. Counted as `executed_then_errored`.
    /// A repeat of the reference is answered from the record (or refused, see
    /// `duplicate_reference_status`), so a resubmission learns the truth.
    pub execute_then_error_rate: f64,
    /// The status of `execute_then_error_rate`'s answer, `500..=599`.
    pub execute_then_error_status: u16,
    /// A status query answers that protocol's "not found" (JSON 404 `not_found`, SOAP
    /// `NOT_FOUND` state, protobuf 404 `not_found`) until this long after the reference was
    /// executed, then the truth: a lagging status endpoint.
    pub status_not_found_for_ms: u64,
    /// When set (`400..=499`), a repeated payment request (same reference, same parameters)
    /// is refused with this status and provider code `duplicate_reference` in the protocol's
    /// own error shape, instead of being answered from the record. It is still never
    /// executed twice; counted in `duplicates_suppressed` and `duplicate_references_refused`.
    pub duplicate_reference_status: Option<u16>,
    /// A status query's answer reports one minor unit more than was executed. Only the JSON
    /// verify answer carries an amount, so only the JSON protocol is affected. Counted as
    /// `statuses_mismatched`.
    pub mismatched_status_rate: f64,
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
            callback_max_attempts: 10,
            callback_backoff_ms: 1_000,
            callback_backoff_max_ms: 60_000,
            callback_base_url: None,
            execute_then_error_rate: 0.0,
            execute_then_error_status: 502,
            status_not_found_for_ms: 0,
            duplicate_reference_status: None,
            mismatched_status_rate: 0.0,
        }
    }
}

impl Knobs {
    /// Refuses rates outside `0..=1`, inverted ranges, and statuses outside their class.
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
            ("execute_then_error_rate", self.execute_then_error_rate),
            ("mismatched_status_rate", self.mismatched_status_rate),
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
        if self.callback_backoff_ms > self.callback_backoff_max_ms {
            return Err("callback_backoff_ms must not exceed callback_backoff_max_ms".into());
        }
        if !(500..=599).contains(&self.execute_then_error_status) {
            return Err(format!(
                "execute_then_error_status must be within 500..=599, got {}",
                self.execute_then_error_status
            ));
        }
        if let Some(status) = self.duplicate_reference_status {
            if !(400..=499).contains(&status) {
                return Err(format!(
                    "duplicate_reference_status must be within 400..=499, got {status}"
                ));
            }
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

/// The counters of one account (or of all): the JSON shape of the stats endpoints. The
/// sandbox keeps one live atomic per field and snapshots them into this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Payment requests received (status queries not included).
    pub requests: u64,
    /// Payments executed: a new reference accepted. Never counts a duplicate.
    pub executions: u64,
    /// Requests whose reference had been seen: answered from the record, not executed again.
    pub duplicates_suppressed: u64,
    pub declines: u64,
    pub errors_injected: u64,
    pub rate_limited: u64,
    pub timeouts_injected: u64,
    pub lost_responses: u64,
    pub outage_rejections: u64,
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub status_queries: u64,
    /// Callbacks paygate acknowledged with 2xx (duplicates included).
    pub callbacks_sent: u64,
    /// Callbacks given up on after every attempt.
    pub callbacks_failed: u64,
    /// Callback attempts that failed and were retried.
    pub callback_retries: u64,
    pub callbacks_duplicated: u64,
    pub callbacks_malformed: u64,
    pub callbacks_mismatched: u64,
    pub callbacks_out_of_order: u64,
    /// Fresh executions answered with `execute_then_error_status` (see the knob).
    pub executed_then_errored: u64,
    /// Repeats refused with `duplicate_reference_status` (also in `duplicates_suppressed`).
    pub duplicate_references_refused: u64,
    /// Fresh executions of a reference that ANOTHER account had already executed: the same
    /// payment paid through two gateways. paygate's tests assert it stays 0.
    pub executed_elsewhere: u64,
    /// JSON status answers that reported one minor unit more than was executed.
    pub statuses_mismatched: u64,
    /// Payments that waited for the customer's step at the provider (hosted page, 3-D
    /// Secure); counted in `executions` (or `declines`) once the step is finished.
    pub actions_required: u64,
    /// Refunds executed (a new refund reference accepted).
    pub refunds: u64,
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

    fn refused(patch: serde_json::Value) -> bool {
        Knobs::default().patched(&patch).is_err()
    }

    #[test]
    fn execute_then_error_knobs_validate() {
        let knobs = Knobs::default();
        assert_eq!(knobs.execute_then_error_status, 502);
        for status in [500, 502, 599] {
            assert!(!refused(
                serde_json::json!({"execute_then_error_status": status})
            ));
        }
        for status in [499, 600, 200, 0] {
            assert!(refused(
                serde_json::json!({"execute_then_error_status": status})
            ));
        }
        assert!(!refused(
            serde_json::json!({"execute_then_error_rate": 1.0})
        ));
        assert!(refused(
            serde_json::json!({"execute_then_error_rate": 1.01})
        ));
        assert!(refused(
            serde_json::json!({"execute_then_error_rate": -0.1})
        ));
        assert!(refused(
            serde_json::json!({"execute_then_error_status": 70000})
        ));
    }

    #[test]
    fn duplicate_reference_status_validates_when_set() {
        assert_eq!(Knobs::default().duplicate_reference_status, None);
        for status in [400, 409, 422, 499] {
            let knobs = Knobs::default()
                .patched(&serde_json::json!({"duplicate_reference_status": status}))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(knobs.duplicate_reference_status, Some(status));
        }
        for status in [399, 500, 200] {
            assert!(refused(
                serde_json::json!({"duplicate_reference_status": status})
            ));
        }
        // null switches it back off.
        let on = Knobs::default()
            .patched(&serde_json::json!({"duplicate_reference_status": 409}))
            .unwrap_or_else(|e| panic!("{e}"));
        let off = on
            .patched(&serde_json::json!({"duplicate_reference_status": null}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(off.duplicate_reference_status, None);
    }

    #[test]
    fn status_knobs_validate() {
        assert_eq!(Knobs::default().status_not_found_for_ms, 0);
        assert!(!refused(
            serde_json::json!({"status_not_found_for_ms": 1500})
        ));
        assert!(refused(serde_json::json!({"status_not_found_for_ms": -1})));
        assert!(!refused(serde_json::json!({"mismatched_status_rate": 0.5})));
        assert!(refused(serde_json::json!({"mismatched_status_rate": 2.0})));
    }

    #[test]
    fn callback_schedule_knobs_validate() {
        let knobs = Knobs::default();
        assert_eq!(
            (
                knobs.callback_max_attempts,
                knobs.callback_backoff_ms,
                knobs.callback_backoff_max_ms
            ),
            (10, 1_000, 60_000)
        );
        assert!(!refused(
            serde_json::json!({"callback_backoff_ms": 10, "callback_backoff_max_ms": 10})
        ));
        assert!(refused(
            serde_json::json!({"callback_backoff_ms": 100, "callback_backoff_max_ms": 50})
        ));
        assert!(refused(serde_json::json!({"callback_max_attempts": 0})));
    }
}
