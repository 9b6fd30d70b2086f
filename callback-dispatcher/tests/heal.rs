//! The webhook healer with the real dispatcher: a terminal transaction with no webhook event
//! (finished before events were recorded with the state change, or written by hand) gets its
//! event recorded from Postgres, once, and the merchant is told once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use chrono::Utc;
use paygate_core::bus::Topic;
use paygate_core::db::heal::HealKind;
use paygate_core::db::outbox::OutboxMessage;
use paygate_core::db::{merchants, transactions};
use paygate_core::domain::{
    CustomerReference, Money, NewTransaction, Transaction, TransactionKind, TransactionStatus,
};
use paygate_core::heal::{HealSettings, Healer};
use paygate_testkit::isolated_config;
use sqlx::PgPool;

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

/// A succeeded transaction with no webhook event: `apply` changes state without one.
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
async fn a_terminal_payment_without_an_event_gets_one_event_and_one_delivery() -> TestResult {
    let (mut config, pool) = isolated_config().await?;
    paygate_testkit::allow_loopback(&mut config);
    config.dispatcher.scheduler_poll = Duration::from_millis(50);
    // The dispatcher's own healer waits long enough not to record anything itself.
    config.recovery.webhook_missing = Duration::from_secs(3_600);
    let (url, hits) = receiver().await?;
    let tx = succeeded_without_announcement(&pool, url).await?;

    // A scan with a zero bound records the event and its delivery at once, in its commit;
    // the next finds nothing left to heal.
    let mut settings = HealSettings::completed(&config.recovery);
    settings.bound = Duration::ZERO;
    assert_eq!(settings.kind, HealKind::Completed);
    let mut healer = Healer::new(pool.clone(), settings);
    assert_eq!(healer.scan_once().await?, 1);
    let events = paygate_core::db::webhooks::events_for_transaction(&pool, tx.id).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type.as_str(), "transaction.succeeded");
    assert_eq!(
        events[0].id,
        paygate_core::db::webhooks::event_id_for(tx.id, TransactionStatus::Succeeded)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_deliveries").await,
        1
    );
    assert_eq!(healer.scan_once().await?, 0);
    let marked: i32 = sqlx::query_scalar(
        "SELECT times FROM heal_marks WHERE transaction_id = $1 AND kind = 'completed'",
    )
    .bind(tx.id.as_uuid())
    .fetch_one(&pool)
    .await?;
    assert_eq!(marked, 1, "stamped once");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE topic = 'transactions.completed'"
        )
        .await,
        0,
        "nothing goes through the broker"
    );

    let dispatcher = paygate_testkit::spawn_dispatcher(&config).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while hits.load(Ordering::SeqCst) == 0 {
        if Instant::now() > deadline {
            return Err("the webhook was never delivered".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a second delivery time to do harm.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM webhook_events").await, 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one delivery");
    dispatcher.shutdown().await?;
    Ok(())
}
