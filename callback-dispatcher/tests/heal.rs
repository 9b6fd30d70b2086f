//! The webhook healer with the real dispatcher: a terminal transaction whose `completed`
//! event the broker lost is announced again from Postgres, and announcing it twice still
//! makes one webhook event and one delivery (deterministic event ids).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use chrono::Utc;
use paygate_core::bus::{OutboxRelay, Producer, RelaySettings, Topic};
use paygate_core::db::heal::HealKind;
use paygate_core::db::outbox::OutboxMessage;
use paygate_core::db::{merchants, transactions};
use paygate_core::domain::{
    CustomerReference, Money, NewTransaction, Transaction, TransactionKind, TransactionStatus,
};
use paygate_core::heal::{HealSettings, Healer};
use paygate_testkit::isolated_config;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), Error>;

/// Counts requests and answers 200.
async fn receiver() -> Result<(String, Arc<AtomicUsize>), Error> {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr()?.port());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, hits))
}

/// A succeeded transaction whose `completed` announcement was never written (as if the
/// broker lost it): `apply` changes state without an outbox row.
async fn succeeded_without_announcement(
    pool: &PgPool,
    callback_url: String,
) -> Result<Transaction, Error> {
    let merchant = merchants::create(pool, "heal test").await?;
    let tx = Transaction::create(
        NewTransaction {
            merchant_id: merchant.id,
            kind: TransactionKind::Deposit,
            money: Money::from_parts(1050, "USD")?,
            customer: CustomerReference::parse("cust_42")?,
            gateway: None,
            callback_url: Some(callback_url),
            metadata: serde_json::json!({}),
        },
        Utc::now(),
    );
    let announcement = OutboxMessage {
        topic: Topic::TransactionsPending,
        key: tx.id.to_string(),
        payload: b"pending".to_vec(),
        headers: Default::default(),
    };
    transactions::insert(pool, &tx, None, &announcement).await?;
    let submitting = transactions::apply(
        pool,
        &tx.advance(TransactionStatus::Submitting, Utc::now())?,
    )
    .await?
    .ok_or("submitting not applied")?;
    let done = transactions::apply(
        pool,
        &submitting.advance(TransactionStatus::Succeeded, Utc::now())?,
    )
    .await?
    .ok_or("succeeded not applied")?;
    // The pending announcement is not what this test is about.
    sqlx::query("UPDATE outbox SET published_at = now()")
        .execute(pool)
        .await?;
    Ok(done)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_completed_event_announced_twice_makes_one_webhook_event_and_one_delivery(
) -> TestResult {
    let (mut config, pool) = isolated_config().await?;
    paygate_testkit::allow_loopback(&mut config);
    config.dispatcher.scheduler_poll = Duration::from_millis(50);
    // The dispatcher's own healer waits long enough not to add announcements of its own.
    config.recovery.webhook_missing = Duration::from_secs(3_600);
    let (url, hits) = receiver().await?;
    let tx = succeeded_without_announcement(&pool, url).await?;

    // Two scans with a zero bound: the transaction is announced, then announced again
    // because no webhook event exists yet.
    let mut settings = HealSettings::completed(&config.recovery);
    settings.bound = Duration::ZERO;
    assert_eq!(settings.kind, HealKind::Completed);
    let mut healer = Healer::new(pool.clone(), settings);
    assert_eq!(healer.scan_once().await?, 1);
    assert_eq!(healer.scan_once().await?, 1);
    let completed_rows = format!(
        "SELECT count(*) FROM outbox WHERE topic = 'transactions.completed' AND message_key = '{}'",
        tx.id
    );
    assert_eq!(count(&pool, &completed_rows).await, 2);
    let marked: i32 = sqlx::query_scalar(
        "SELECT times FROM heal_marks WHERE transaction_id = $1 AND kind = 'completed'",
    )
    .bind(tx.id.as_uuid())
    .fetch_one(&pool)
    .await?;
    assert_eq!(marked, 2, "each re-announcement is stamped");

    // Publish both and run the dispatcher.
    paygate_core::bus::ensure_topics(&config.kafka).await?;
    let stop = CancellationToken::new();
    let relay = OutboxRelay::new(
        pool.clone(),
        Producer::new(&config.kafka)?,
        RelaySettings {
            batch_size: 16,
            poll_interval: Duration::from_millis(50),
            failure_backoff: Duration::from_millis(200),
        },
    );
    let relay_task = tokio::spawn(relay.run(stop.clone()));
    let dispatcher = paygate_testkit::spawn_dispatcher(&config).await?;

    let deadline = Instant::now() + Duration::from_secs(60);
    while hits.load(Ordering::SeqCst) == 0
        || count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
            > 0
    {
        if Instant::now() > deadline {
            return Err("the webhook was never delivered".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both messages are consumed by now or soon: give the second time to do harm.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM webhook_events").await, 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_deliveries").await,
        1
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one delivery");

    // With the event recorded, nothing is left to heal.
    assert_eq!(healer.scan_once().await?, 0);
    stop.cancel();
    relay_task.await?;
    dispatcher.shutdown().await?;
    Ok(())
}
