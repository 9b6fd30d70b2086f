//! The dispatcher's metrics (names are the contract with dashboards):
//!
//! - `paygate_webhook_deliveries_total{outcome}`: attempts by what came of them —
//!   `succeeded`, `retry_scheduled`, `failed` (schedule exhausted or refused), `gone` (410),
//!   `skipped` (endpoint disabled meanwhile); `refused` counts SSRF-guard refusals besides;
//! - `paygate_webhook_attempt_duration_seconds{result}`: attempt latency, `result` being
//!   `2xx`/`3xx`/`4xx`/`5xx`/`error`;
//! - `paygate_webhook_backlog{destination}`: deliveries pending or in flight per endpoint
//!   (`we_…`) or callback host (`callback:host:port`);
//! - `paygate_webhook_endpoints_disabled_total{reason}`: endpoints disabled (`gone`, `failing`).

use crate::sender::AttemptReport;

pub(crate) fn outcome(outcome: &'static str) {
    metrics::counter!("paygate_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

pub(crate) fn attempt(report: &AttemptReport) {
    let result = match report.status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(_) => "5xx",
        None => "error",
    };
    metrics::histogram!("paygate_webhook_attempt_duration_seconds", "result" => result)
        .record(report.latency.as_secs_f64());
}

pub(crate) fn endpoint_disabled(reason: &'static str) {
    metrics::counter!("paygate_webhook_endpoints_disabled_total", "reason" => reason).increment(1);
}

pub(crate) fn backlog(destination: String, count: i64) {
    metrics::gauge!("paygate_webhook_backlog", "destination" => destination).set(count as f64);
}
