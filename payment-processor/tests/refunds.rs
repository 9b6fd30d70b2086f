//! Refunds through the processor: announced on the pending topic, sent to the payment's
//! gateway (the sandbox's JSON provider) with the refund's own id, finished with the
//! ledger's posting; a provider outage is retried, never failed.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use paygate_core::announce;
use paygate_core::db::refunds::{self, RefundInsert};
use paygate_core::db::webhooks::{self, EventType};
use paygate_core::db::{ledger, DbError};
use paygate_core::domain::{
    Currency, NewRefund, Refund, RefundId, RefundState, TransactionId, TransactionKind,
    TransactionStatus,
};
use paygate_sandbox::Knobs;
use serde_json::json;

mod common;
use common::{account, BoxError, TestResult, World};

const JSON: &str = "rf-json";

async fn world() -> Result<World, BoxError> {
    let mut w = World::new(
        "Refund tests",
        Knobs::default(),
        &[(JSON, "sandbox-json")],
        json!({"timeout_ms": 800}),
    )
    .await?;
    let p = &mut w.config.processor;
    p.lock_ttl = Duration::from_millis(3_000);
    p.lock_wait = Duration::from_millis(1_000);
    p.retry_base = Duration::from_millis(100);
    p.retry_cap = Duration::from_millis(300);
    p.breaker_deferral = Duration::from_millis(300);
    p.scheduler_poll = Duration::from_millis(100);
    w.config.outbox.poll = Duration::from_millis(50);
    Ok(w)
}

/// A deposit the sandbox executed, then marked succeeded as its callback would.
async fn paid(w: &World, amount: i64) -> Result<TransactionId, BoxError> {
    let id = w.insert(TransactionKind::Deposit, JSON, amount).await?.id;
    w.wait(id, "submitted", |t| {
        t.status == TransactionStatus::Submitted
    })
    .await?;
    sqlx::query(
        "UPDATE transactions SET status = 'succeeded', version = version + 1 WHERE id = $1",
    )
    .bind(id.as_uuid())
    .execute(&w.pool)
    .await?;
    Ok(id)
}

async fn refund(w: &World, payment: TransactionId, amount: i64) -> Result<Refund, BoxError> {
    let inserted = refunds::insert(
        &w.pool,
        &NewRefund {
            transaction_id: payment,
            merchant_id: w.merchant,
            amount: Some(amount),
            reason: None,
        },
        RefundId::new(),
        Utc::now().trunc_subsecs(6),
        None,
        |r| announce::refund_pending(r, None),
        |_| {
            Err(DbError::Corrupt {
                table: "refunds",
                detail: "no key".into(),
            })
        },
    )
    .await?;
    match inserted {
        RefundInsert::Created(refund) => Ok(refund),
        other => Err(format!("not created: {other:?}").into()),
    }
}

async fn wait_refund(
    w: &World,
    id: RefundId,
    done: impl Fn(&Refund) -> bool,
) -> Result<Refund, BoxError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = refunds::get(&w.pool, id).await?.ok_or("refund gone")?;
        if done(&r) {
            return Ok(r);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{id}: timed out; last {r:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_turns_a_refund_into_succeeded_through_the_sandbox() -> TestResult {
    let w = world().await?;
    let (stop, task) = w.start().await?;
    let payment = paid(&w, 1_000).await?;
    let usd = Currency::parse("USD")?;
    let (before, _) = ledger::account(&w.pool, w.merchant, usd).await?;

    let r = refund(&w, payment, 400).await?;
    let done = wait_refund(&w, r.id, |r| r.status == RefundState::Succeeded).await?;
    assert_eq!(done.attempts, 1);
    assert!(done.provider_reference.is_some());
    assert_eq!(done.failure, None);
    let (after, reserved) = ledger::account(&w.pool, w.merchant, usd).await?;
    assert_eq!(after, before - 400);
    assert_eq!(reserved, 0);
    assert!(ledger::check(&w.pool).await?.is_empty());

    // The merchant is told: one `refund.succeeded` event, listed under the payment, telling
    // the refund as it ended; nothing through the retired `transactions.completed` topic.
    let events = w.events(payment).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.event_type, EventType::RefundSucceeded);
    assert_eq!(
        event.id,
        webhooks::event_id_for_refund(r.id, RefundState::Succeeded)
    );
    assert_eq!(event.merchant_id, w.merchant);
    assert_eq!(event.transaction_id, payment);
    let body: serde_json::Value = serde_json::from_str(&event.payload)?;
    assert_eq!(body["type"], "refund.succeeded", "{body}");
    assert_eq!(body["id"], event.id.to_string(), "{body}");
    assert_eq!(body["data"]["id"], r.id.to_string(), "{body}");
    assert_eq!(body["data"]["transaction"], payment.to_string(), "{body}");
    assert_eq!(body["data"]["status"], "succeeded", "{body}");
    assert_eq!(body["data"]["amount"], 400, "{body}");
    assert_eq!(body["data"]["failure"], serde_json::Value::Null, "{body}");
    let retired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'transactions.completed'")
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(retired, 0, "no transactions.completed outbox rows");
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_keeps_the_refund_pending_and_retries_it() -> TestResult {
    let w = world().await?;
    let (stop, task) = w.start().await?;
    let payment = paid(&w, 1_000).await?;
    w.knobs(JSON, json!({"outage": true})).await?;
    let r = refund(&w, payment, 250).await?;
    let retried = wait_refund(&w, r.id, |r| r.attempts >= 1 && r.failure.is_some()).await?;
    assert_eq!(retried.status, RefundState::Pending);
    w.knobs(JSON, json!({"outage": false})).await?;
    let done = wait_refund(&w, r.id, |r| r.status == RefundState::Succeeded).await?;
    assert!(done.attempts >= 2, "{done:?}");
    assert!(ledger::check(&w.pool).await?.is_empty());
    assert!(account(&w.stats().await?, JSON).requests >= 2);
    stop.cancel();
    task.await?;
    Ok(())
}
