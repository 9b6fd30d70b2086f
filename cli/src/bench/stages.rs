//! Where a payment's time goes between accept and webhook, hop by hop, read back from the
//! database after the run: each status change's time in `transaction_history`, the webhook
//! event's creation and its delivery's completion.
//!
//! Why: accept→webhook says how long, not where. Each stage below is one hop of the
//! pipeline, so a latency figure can be aimed at the relay, the broker, a consumer or a
//! provider:
//!
//! | stage | what it covers |
//! | --- | --- |
//! | `accepted→submitting` | outbox relay, Kafka hop 1, payment processor's queue and lock |
//! | `submitting→submitted` | the provider call |
//! | `submitted→settled` | the provider's callback delay, the API, Kafka hop 2, callback processor |
//! | `settled→event` | 0: the settling statement records the event (before change 27, the outbox relay, Kafka hop 3 and the dispatcher's consumer) |
//! | `event→delivered` | the dispatcher's poll (`dispatcher.scheduler_poll_ms`), its scheduling and the webhook's HTTP exchange |
//!
//! The times are Postgres's `now()`, the start of the writing transaction: one clock, and
//! a stage ends when the work of the next one started writing.

use anyhow::Context;
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use uuid::Uuid;

/// One stage's latency over the run's payments, in milliseconds.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Stage {
    pub stage: String,
    pub payments: i64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// Each stage's percentiles over the payments `ids` (those whose every stage is recorded).
const STAGES: &str = "
WITH h AS (
    SELECT transaction_id,
           min(at) FILTER (WHERE to_status = 'pending') AS accepted,
           min(at) FILTER (WHERE to_status = 'submitting') AS submitting,
           min(at) FILTER (WHERE to_status = 'submitted') AS submitted,
           min(at) FILTER (WHERE to_status IN ('succeeded', 'failed')) AS settled
    FROM transaction_history
    WHERE transaction_id = ANY($1)
    GROUP BY transaction_id),
w AS (
    SELECT e.transaction_id, min(e.created_at) AS event, min(d.completed_at) AS delivered
    FROM webhook_events e JOIN webhook_deliveries d ON d.event_id = e.id
    WHERE e.transaction_id = ANY($1) AND d.state = 'succeeded'
    GROUP BY e.transaction_id),
spans AS (
    SELECT s.ord, s.stage, 1000 * extract(epoch FROM s.until - s.since)::float8 AS ms
    FROM h JOIN w USING (transaction_id),
    LATERAL (VALUES (1, 'accepted→submitting', h.accepted, h.submitting),
                    (2, 'submitting→submitted', h.submitting, h.submitted),
                    (3, 'submitted→settled', h.submitted, h.settled),
                    (4, 'settled→event', h.settled, w.event),
                    (5, 'event→delivered', w.event, w.delivered),
                    (6, 'accepted→delivered', h.accepted, w.delivered))
        AS s(ord, stage, since, until)
    WHERE s.since IS NOT NULL AND s.until IS NOT NULL)
SELECT stage, count(*) AS payments,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY ms) AS p90,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
FROM spans GROUP BY ord, stage ORDER BY ord";

/// The stages of the payments `ids`; empty where the database cannot be read (printed).
pub async fn of(database_url: &str, ids: &[Uuid]) -> Vec<Stage> {
    match read(database_url, ids).await {
        Ok(stages) => stages,
        Err(error) => {
            eprintln!("no stage latencies: {error:#}");
            Vec::new()
        }
    }
}

async fn read(database_url: &str, ids: &[Uuid]) -> anyhow::Result<Vec<Stage>> {
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("connecting to the database")?;
    let stages = sqlx::query_as::<_, Stage>(STAGES)
        .bind(ids)
        .fetch_all(&mut conn)
        .await
        .context("reading the payments' history")?;
    let _ = conn.close().await;
    Ok(stages)
}

pub fn print(stages: &[Stage]) {
    if stages.is_empty() {
        println!("  stages              (no payment of the run has every stage recorded)");
        return;
    }
    println!("  stages (ms, from the database's history)        p50      p90      p99");
    for s in stages {
        println!(
            "    {:<24} {:>8} payments {:>8.1} {:>8.1} {:>8.1}",
            s.stage, s.payments, s.p50, s.p90, s.p99
        );
    }
}
