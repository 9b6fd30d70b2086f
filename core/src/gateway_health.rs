//! Gateway health for the console: each gateway's circuit breaker as the payment processors
//! see it, and its provider attempts' results and latency from `transaction_history`.
//!
//! ## Breakers in Redis
//!
//! Breakers live in each payment processor's memory (one per gateway per process), so every
//! processor instance publishes its snapshots every [`PUBLISH_EVERY`] to one hash,
//! [`breakers_key`] (`<redis.key_prefix>:gateway_breakers`), field `<gateway>|<instance>`,
//! value a JSON [`BreakerReport`]. Readers ignore reports older than [`FRESH_FOR`] (an
//! instance that stopped or crashed); an instance that stops removes its own fields, the key
//! expires [`KEY_TTL`] after the last publication, and a reader removes fields older than
//! [`FORGET_AFTER`] (a crashed instance's), so the hash stays small
//! ([`crate::instance_reports`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::db::DbError;
use crate::domain::GatewayName;
use crate::instance_reports::{ReportHash, Stamped};

/// How often each payment processor publishes its breakers.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);
/// Reports older than this are not shown: their instance stopped publishing.
pub const FRESH_FOR: chrono::Duration = chrono::Duration::seconds(30);
/// Reports older than this are removed by the reader.
pub const FORGET_AFTER: chrono::Duration = chrono::Duration::minutes(5);
/// The hash expires this long after the last publication of any instance.
pub const KEY_TTL: Duration = Duration::from_secs(60);

pub use crate::instance_reports::ReportError as HealthError;

/// A circuit breaker's state: the breakers' own (`paygate_gateways::breaker` uses this type),
/// and what is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// One instance's view of one gateway's breaker at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerReport {
    pub state: BreakerState,
    /// Calls in the breaker's rolling window, and how many of them failed.
    pub window_requests: u64,
    pub window_failures: u64,
    pub in_flight: u32,
    /// Times the breaker opened since the instance started.
    pub opened_total: u64,
    pub at: DateTime<Utc>,
}

impl Stamped for BreakerReport {
    fn at(&self) -> DateTime<Utc> {
        self.at
    }
}

/// A fresh report read back, with whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayBreaker {
    pub gateway: GatewayName,
    /// The publishing process ([`crate::instance_reports::instance_id`]).
    pub instance: String,
    pub report: BreakerReport,
}

/// The hash every instance publishes to.
pub fn breakers_key(prefix: &str) -> String {
    format!("{prefix}:gateway_breakers")
}

fn hash(prefix: &str) -> ReportHash {
    ReportHash {
        key: breakers_key(prefix),
        fresh_for: FRESH_FOR,
        forget_after: FORGET_AFTER,
        ttl: KEY_TTL,
    }
}

fn field(gateway: &GatewayName, instance: &str) -> String {
    format!("{gateway}|{instance}")
}

/// Publishes this instance's reports (one per gateway) and renews the hash's expiry.
pub async fn publish(
    redis: &mut ConnectionManager,
    prefix: &str,
    instance: &str,
    reports: &[(GatewayName, BreakerReport)],
) -> Result<(), HealthError> {
    let fields: Vec<(String, &BreakerReport)> = reports
        .iter()
        .map(|(gateway, report)| (field(gateway, instance), report))
        .collect();
    hash(prefix).publish(redis, &fields).await
}

/// Removes this instance's reports (at shutdown), so readers stop showing it at once.
pub async fn withdraw(
    redis: &mut ConnectionManager,
    prefix: &str,
    instance: &str,
    gateways: &[GatewayName],
) -> Result<(), HealthError> {
    let fields: Vec<String> = gateways.iter().map(|g| field(g, instance)).collect();
    hash(prefix).withdraw(redis, &fields).await
}

/// Every fresh report (younger than [`FRESH_FOR`]), by gateway then instance. Fields that do
/// not parse are skipped (and logged); fields older than [`FORGET_AFTER`] are removed.
pub async fn breakers(
    redis: &mut ConnectionManager,
    prefix: &str,
) -> Result<Vec<GatewayBreaker>, HealthError> {
    let reports: Vec<(String, BreakerReport)> = hash(prefix).fresh(redis).await?;
    let mut fresh: Vec<GatewayBreaker> = reports
        .into_iter()
        .filter_map(|(name, report)| {
            let Some((gateway, instance)) = parse_field(&name) else {
                tracing::warn!(field = %name, "unreadable breaker report field; skipped");
                return None;
            };
            Some(GatewayBreaker {
                gateway,
                instance: instance.to_owned(),
                report,
            })
        })
        .collect();
    fresh.sort_by(|a, b| (&a.gateway, &a.instance).cmp(&(&b.gateway, &b.instance)));
    Ok(fresh)
}

fn parse_field(name: &str) -> Option<(GatewayName, &str)> {
    let (gateway, instance) = name.split_once('|')?;
    Some((GatewayName::parse(gateway).ok()?, instance))
}

/// One gateway's provider attempts that finished (left `submitting`) since a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayStats {
    pub gateway: GatewayName,
    pub attempts: i64,
    /// The provider took the payment: `submitted`, `succeeded` or `requires_action`.
    pub reached: i64,
    pub failed: i64,
    pub retry_scheduled: i64,
    pub unresolved: i64,
    /// `reached / attempts`.
    pub success_rate: f64,
    /// Time from entering `submitting` to leaving it, in milliseconds (`None` when no
    /// attempt's start is recorded).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(sqlx::FromRow)]
struct StatsRow {
    gateway: String,
    attempts: i64,
    reached: i64,
    failed: i64,
    retry_scheduled: i64,
    unresolved: i64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// Per gateway (by name), the attempts that finished since `since`, from
/// `transaction_history`: an attempt is a row leaving `submitting`; its start is the
/// payment's previous row entering it.
pub async fn attempt_stats(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<Vec<GatewayStats>, DbError> {
    let rows: Vec<StatsRow> = sqlx::query_as(
        "WITH attempts AS (
             SELECT h.gateway, h.to_status,
                    (extract(epoch FROM h.at - s.at) * 1000)::float8 AS took_ms
             FROM transaction_history h
             LEFT JOIN LATERAL (
                 SELECT e.at FROM transaction_history e
                  WHERE e.transaction_id = h.transaction_id AND e.id < h.id
                    AND e.to_status = 'submitting'
                  ORDER BY e.id DESC LIMIT 1
             ) s ON true
             WHERE h.from_status = 'submitting' AND h.at >= $1 AND h.gateway IS NOT NULL
         )
         SELECT gateway,
                count(*) AS attempts,
                count(*) FILTER (WHERE to_status IN ('submitted', 'succeeded', 'requires_action')) AS reached,
                count(*) FILTER (WHERE to_status = 'failed') AS failed,
                count(*) FILTER (WHERE to_status = 'retry_scheduled') AS retry_scheduled,
                count(*) FILTER (WHERE to_status = 'unresolved') AS unresolved,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY took_ms) AS p50_ms,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY took_ms) AS p99_ms
         FROM attempts GROUP BY gateway ORDER BY gateway",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let gateway = GatewayName::parse(&row.gateway).map_err(|e| DbError::Corrupt {
                table: "transaction_history",
                detail: e.to_string(),
            })?;
            let success_rate = if row.attempts > 0 {
                row.reached as f64 / row.attempts as f64
            } else {
                0.0
            };
            Ok(GatewayStats {
                gateway,
                attempts: row.attempts,
                reached: row.reached,
                failed: row.failed,
                retry_scheduled: row.retry_scheduled,
                unresolved: row.unresolved,
                success_rate,
                p50_ms: row.p50_ms,
                p99_ms: row.p99_ms,
            })
        })
        .collect()
}
