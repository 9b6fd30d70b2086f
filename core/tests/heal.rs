//! The pending healer against real Postgres: a `pending` transaction nobody claimed within
//! the bound is announced again once per bound, at its current version, through the outbox;
//! a fresh or claimed one is left alone.

use std::time::Duration;

use chrono::Utc;
use paygate_core::bus::events::{Body, Envelope};
use paygate_core::bus::Topic;
use paygate_core::db::outbox::OutboxMessage;
use paygate_core::db::{merchants, transactions};
use paygate_core::domain::{
    CustomerReference, MerchantId, Money, NewTransaction, Transaction, TransactionKind,
    TransactionStatus,
};
use paygate_core::heal::{HealSettings, Healer};
use paygate_core::testing::isolated_config;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn pending(
    pool: &PgPool,
    merchant: MerchantId,
) -> Result<Transaction, Box<dyn std::error::Error>> {
    let tx = Transaction::create(
        NewTransaction {
            merchant_id: merchant,
            kind: TransactionKind::Deposit,
            money: Money::from_parts(500, "EUR")?,
            customer: CustomerReference::parse("cust_1")?,
            gateway: None,
            callback_url: None,
            metadata: serde_json::json!({}),
        },
        Utc::now(),
    );
    let announcement = OutboxMessage {
        topic: Topic::TransactionsPending,
        key: tx.id.to_string(),
        payload: b"original".to_vec(),
        headers: Default::default(),
    };
    transactions::insert(pool, &tx, None, &announcement).await?;
    Ok(tx)
}

async fn backdate(pool: &PgPool, tx: &Transaction, secs: i64) -> TestResult {
    sqlx::query(
        "UPDATE transactions SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(tx.id.as_uuid())
    .bind(secs as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// The re-announcements written to the outbox: (key, announced version).
async fn reannounced(pool: &PgPool) -> Result<Vec<(String, i64)>, Box<dyn std::error::Error>> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT message_key, payload FROM outbox WHERE topic = 'transactions.pending' AND payload <> 'original'::bytea ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(
            |(key, payload)| match Envelope::decode_checked(&payload)?.body {
                Some(Body::TransactionPending(p)) => {
                    assert_eq!(p.transaction_id, key);
                    Ok((key, p.version))
                }
                other => Err(format!("not a pending event: {other:?}").into()),
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclaimed_pending_transaction_is_announced_again_once_per_bound() -> TestResult {
    let (config, pool) = isolated_config().await?;
    let merchant = merchants::create(&pool, "heal").await?;
    let stale = pending(&pool, merchant.id).await?;
    let fresh = pending(&pool, merchant.id).await?;
    let claimed = pending(&pool, merchant.id).await?;
    backdate(&pool, &stale, 120).await?;
    let submitting = transactions::apply(
        &pool,
        &claimed.advance(TransactionStatus::Submitting, Utc::now())?,
    )
    .await?
    .ok_or("claim not applied")?;
    backdate(&pool, &submitting, 120).await?;

    let mut settings = HealSettings::pending(&config.recovery);
    assert_eq!(settings.bound, Duration::from_secs(30), "default bound");
    settings.bound = Duration::from_secs(60);
    let mut healer = Healer::new(pool.clone(), settings);

    assert_eq!(healer.scan_once().await?, 1);
    assert_eq!(
        reannounced(&pool).await?,
        vec![(stale.id.to_string(), stale.version)]
    );
    // Stamped: the next scans within the bound leave it alone.
    assert_eq!(healer.scan_once().await?, 0);
    assert_eq!(reannounced(&pool).await?.len(), 1);
    let _ = fresh;

    // Once the bound has passed since the re-announcement (it was lost too), again.
    sqlx::query("UPDATE heal_marks SET announced_at = now() - interval '2 minutes'")
        .execute(&pool)
        .await?;
    assert_eq!(healer.scan_once().await?, 1);
    assert_eq!(reannounced(&pool).await?.len(), 2);
    let times: i32 = sqlx::query_scalar("SELECT times FROM heal_marks WHERE transaction_id = $1")
        .bind(stale.id.as_uuid())
        .fetch_one(&pool)
        .await?;
    assert_eq!(times, 2);

    // A bounded batch: three stale rows, batch of two.
    for _ in 0..3 {
        let tx = pending(&pool, merchant.id).await?;
        backdate(&pool, &tx, 120).await?;
    }
    settings.batch = 2;
    let mut small = Healer::new(pool.clone(), settings);
    assert_eq!(small.scan_once().await?, 2);
    assert_eq!(small.scan_once().await?, 1);
    assert_eq!(small.scan_once().await?, 0);
    Ok(())
}

/// A broker reset recorded by any process makes a running healer re-announce at once what
/// it watches, fresh rows included (their messages may have been on the lost broker), each
/// row once, in batches; a reset recorded before the healer started is not acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_broker_reset_heals_at_once_without_waiting_for_the_bound() -> TestResult {
    use paygate_core::db::broker_resets;
    use tokio_util::sync::CancellationToken;

    let (config, pool) = isolated_config().await?;
    let merchant = merchants::create(&pool, "heal-reset").await?;
    // An old sighting: the healer starts after it and must not act on it.
    broker_resets::record(&pool, "an earlier run").await?;
    let mut fresh = Vec::new();
    for _ in 0..5 {
        fresh.push(pending(&pool, merchant.id).await?);
    }
    let mut settings = HealSettings::pending(&config.recovery);
    settings.bound = Duration::from_secs(3_600);
    settings.poll = Duration::from_secs(3_600);
    settings.batch = 2;
    let stop = CancellationToken::new();
    let healer = tokio::spawn(Healer::new(pool.clone(), settings).run(stop.clone()));

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        reannounced(&pool).await?.is_empty(),
        "fresh rows within the bound, no new reset: nothing re-announced"
    );

    broker_resets::record(&pool, "a consumer watchdog").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = reannounced(&pool).await?;
    while seen.len() < fresh.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = reannounced(&pool).await?;
    }
    // Let it finish its batches, then check each row came once.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    seen = reannounced(&pool).await?;
    let mut keys: Vec<String> = seen.iter().map(|(key, _)| key.clone()).collect();
    keys.sort();
    let mut expected: Vec<String> = fresh.iter().map(|tx| tx.id.to_string()).collect();
    expected.sort();
    assert_eq!(keys, expected, "every pending row once, in batches of two");

    stop.cancel();
    healer.await?;
    Ok(())
}
