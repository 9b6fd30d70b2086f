//! Gateway health: breakers published to the real Redis and read back, and attempt
//! statistics from the real Postgres history.

use chrono::{DateTime, Duration, Utc};
use paygate_core::db::merchants;
use paygate_core::db::transactions;
use paygate_core::domain::{GatewayName, Transaction, TransactionStatus};
use paygate_core::gateway_health::{self, BreakerReport, BreakerState};
use paygate_core::testing::{fresh_database, stored_deposit, unique_name};
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn redis() -> Result<redis::aio::ConnectionManager, Box<dyn std::error::Error>> {
    let url =
        std::env::var("PAYGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    Ok(redis::Client::open(url)?.get_connection_manager().await?)
}

fn report(state: BreakerState, requests: u64, at: DateTime<Utc>) -> BreakerReport {
    BreakerReport {
        state,
        window_requests: requests,
        window_failures: requests / 2,
        in_flight: 1,
        opened_total: 3,
        at,
    }
}

#[tokio::test]
async fn breakers_of_two_instances_read_back_and_old_reports_are_ignored() -> TestResult {
    let mut redis = redis().await?;
    let prefix = unique_name("pgt");
    let alpha = GatewayName::parse("alpha")?;
    let beta = GatewayName::parse("beta")?;
    let now = Utc::now();
    gateway_health::publish(
        &mut redis,
        &prefix,
        "one",
        &[
            (alpha.clone(), report(BreakerState::Closed, 10, now)),
            (beta.clone(), report(BreakerState::Open, 4, now)),
        ],
    )
    .await?;
    gateway_health::publish(
        &mut redis,
        &prefix,
        "two",
        &[(alpha.clone(), report(BreakerState::HalfOpen, 2, now))],
    )
    .await?;
    // A stopped instance's report (older than 30 s) and a crashed one's (older than 5 min).
    gateway_health::publish(
        &mut redis,
        &prefix,
        "stopped",
        &[(
            alpha.clone(),
            report(BreakerState::Open, 1, now - Duration::seconds(45)),
        )],
    )
    .await?;
    gateway_health::publish(
        &mut redis,
        &prefix,
        "crashed",
        &[(
            alpha.clone(),
            report(BreakerState::Open, 1, now - Duration::minutes(10)),
        )],
    )
    .await?;
    let key = gateway_health::breakers_key(&prefix);
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("beta|garbled")
        .arg("not json")
        .query_async(&mut redis)
        .await?;

    let seen = gateway_health::breakers(&mut redis, &prefix).await?;
    let got: Vec<(&str, &str, BreakerState, u64)> = seen
        .iter()
        .map(|b| {
            (
                b.gateway.as_str(),
                b.instance.as_str(),
                b.report.state,
                b.report.window_requests,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("alpha", "one", BreakerState::Closed, 10),
            ("alpha", "two", BreakerState::HalfOpen, 2),
            ("beta", "one", BreakerState::Open, 4),
        ]
    );
    assert_eq!(seen[0].report, report(BreakerState::Closed, 10, now));
    let exists = |field: &'static str| {
        let key = key.clone();
        let mut redis = redis.clone();
        async move {
            let found: bool = redis::cmd("HEXISTS")
                .arg(&key)
                .arg(field)
                .query_async(&mut redis)
                .await?;
            Ok::<bool, redis::RedisError>(found)
        }
    };
    assert!(exists("alpha|stopped").await?, "recent enough to keep");
    assert!(!exists("alpha|crashed").await?, "forgotten by the reader");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await?;
    assert!(ttl > 0 && ttl <= 60_000, "the hash expires: {ttl}");

    // An instance that stops withdraws its reports.
    gateway_health::withdraw(&mut redis, &prefix, "one", &[alpha.clone(), beta.clone()]).await?;
    let left: Vec<String> = gateway_health::breakers(&mut redis, &prefix)
        .await?
        .into_iter()
        .map(|b| format!("{}|{}", b.gateway, b.instance))
        .collect();
    assert_eq!(left, vec!["alpha|two".to_owned()]);
    Ok(())
}

async fn accepted(pool: &PgPool) -> Result<Transaction, Box<dyn std::error::Error>> {
    let merchant = merchants::create(pool, "Acme").await?;
    stored_deposit(pool, merchant.id, 500, "USD").await
}

/// One provider attempt at `gateway` ending in `result` that took `took_ms`, finishing
/// `ago` before now (the history rows' times are set explicitly).
async fn attempt(
    pool: &PgPool,
    gateway: &str,
    result: TransactionStatus,
    took_ms: i32,
    ago: Duration,
) -> TestResult {
    let tx = accepted(pool).await?;
    let claim = tx
        .advance(TransactionStatus::Submitting, Utc::now())?
        .start_attempt()
        .routed_to(GatewayName::parse(gateway)?);
    let claimed = transactions::apply(pool, &claim).await?.ok_or("stale")?;
    let mut finish = claimed.advance(result, Utc::now())?;
    if result == TransactionStatus::Failed {
        finish = finish.failure("declined", "no");
    }
    transactions::apply(pool, &finish).await?.ok_or("stale")?;
    let ended = Utc::now() - ago;
    let started = ended - Duration::milliseconds(i64::from(took_ms));
    let moved = sqlx::query(
        "UPDATE transaction_history SET at = CASE WHEN to_status = 'submitting' THEN $2 ELSE $3 END
          WHERE transaction_id = $1 AND 'submitting' IN (from_status, to_status)",
    )
    .bind(tx.id.as_uuid())
    .bind(started)
    .bind(ended)
    .execute(pool)
    .await?;
    assert_eq!(moved.rows_affected(), 2);
    Ok(())
}

#[tokio::test]
async fn attempt_stats_count_results_and_latency_per_gateway() -> TestResult {
    use TransactionStatus::*;
    let (pool, _) = fresh_database().await?;
    let recent = Duration::minutes(5);
    attempt(&pool, "alpha", Submitted, 100, recent).await?;
    attempt(&pool, "alpha", Failed, 300, recent).await?;
    attempt(&pool, "alpha", RetryScheduled, 200, recent).await?;
    attempt(&pool, "alpha", Succeeded, 5000, Duration::hours(2)).await?;
    attempt(&pool, "beta", Unresolved, 50, recent).await?;
    attempt(&pool, "beta", RequiresAction, 150, recent).await?;

    let stats = gateway_health::attempt_stats(&pool, Utc::now() - Duration::hours(1)).await?;
    assert_eq!(stats.len(), 2, "{stats:?}");
    let alpha = &stats[0];
    assert_eq!(alpha.gateway.as_str(), "alpha");
    assert_eq!(
        (
            alpha.attempts,
            alpha.reached,
            alpha.failed,
            alpha.retry_scheduled,
            alpha.unresolved
        ),
        (3, 1, 1, 1, 0),
        "the two-hour-old attempt is outside"
    );
    assert!((alpha.success_rate - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(alpha.p50_ms.map(f64::round), Some(200.0));
    assert_eq!(alpha.p99_ms.map(f64::round), Some(298.0));
    let beta = &stats[1];
    assert_eq!(beta.gateway.as_str(), "beta");
    assert_eq!((beta.attempts, beta.reached, beta.unresolved), (2, 1, 1));
    assert_eq!(beta.p50_ms.map(f64::round), Some(100.0));
    assert!((beta.success_rate - 0.5).abs() < 1e-9);
    Ok(())
}
