//! Refund callbacks: a signed `refund.processed` finishes the refund (found by our refund id
//! or, failing that, by the provider's reference) with the ledger's posting and the
//! merchant's `refund.*` webhook event, sent to the payment's `callback_url` too; a duplicate
//! provider event changes nothing.

use std::collections::BTreeMap;

use chrono::Utc;
use paygate_core::announce;
use paygate_core::bus::trace::{TraceParent, TRACEPARENT};
use paygate_core::bus::{Delivery, Handler};
use paygate_core::db::refunds::{self, RefundInsert};
use paygate_core::db::{ledger, DbError};
use paygate_core::domain::{NewRefund, Refund, RefundId, RefundState, TransactionStatus};
use paygate_gateways::json::{self, wire};
use paygate_gateways::Secret;

mod common;
use common::{Format, Harness, WEBHOOK_SECRET};

const CALLBACK_URL: &str = "https://shop.example/paygate/callback";

/// A refund of a succeeded payment created with [`CALLBACK_URL`].
async fn refund(h: &Harness, amount: i64) -> anyhow::Result<Refund> {
    let tx = h
        .transaction_with_callback(
            Format::Json,
            TransactionStatus::Submitted,
            Some(CALLBACK_URL),
        )
        .await?;
    sqlx::query(
        "UPDATE transactions SET status = 'succeeded', version = version + 1 WHERE id = $1",
    )
    .bind(tx.id.as_uuid())
    .execute(&h.pool)
    .await?;
    let inserted = refunds::insert(
        &h.pool,
        &NewRefund {
            transaction_id: tx.id,
            merchant_id: h.merchant,
            amount: Some(amount),
            reason: None,
        },
        RefundId::new(),
        Utc::now(),
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
        RefundInsert::Created(r) => Ok(r),
        other => anyhow::bail!("not created: {other:?}"),
    }
}

fn delivery(
    h: &Harness,
    r: &Refund,
    reference: &str,
    event: &str,
    state: wire::RefundState,
    event_id: &str,
) -> Delivery {
    let body = wire::RefundWebhookEvent {
        event: event.into(),
        event_id: event_id.into(),
        sent_at: Utc::now(),
        data: wire::RefundData {
            id: "rf_77".into(),
            reference: reference.into(),
            transaction: r.transaction_id.to_string(),
            status: state,
            amount: r.money.amount.minor_units(),
            currency: r.money.currency.code().into(),
            failure_code: None,
            gateway_response: None,
        },
    };
    let signed = json::signed_refund_callback(&Secret::new(WEBHOOK_SECRET), &body);
    Delivery {
        topic: format!("{}.callbacks.received", h.config.kafka.topic_prefix),
        partition: 0,
        offset: 0,
        key: Some(r.transaction_id.to_string().into_bytes()),
        payload: Harness::envelope(Format::Json, &signed, Utc::now()),
        headers: BTreeMap::from([(TRACEPARENT.to_owned(), TraceParent::new_root().to_string())]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_callback_succeeds_the_refund_once() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let handler = paygate_callback_processor::CallbackHandler::new(
        h.pool.clone(),
        h.registry.clone(),
        h.redis.clone(),
        &h.config,
    );
    let r = refund(&h, 400).await?;
    let processed = delivery(
        &h,
        &r,
        &r.id.to_string(),
        "refund.processed",
        wire::RefundState::Succeeded,
        "evt_r1",
    );
    handler
        .handle(&processed)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let done = refunds::get(&h.pool, r.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(done.status, RefundState::Succeeded);
    assert_eq!(done.provider_reference.as_deref(), Some("rf_77"));
    assert!(ledger::check(&h.pool).await?.is_empty());
    // The same provider event again: nothing new.
    handler
        .handle(&processed)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM refund_callback_log")
        .fetch_one(&h.pool)
        .await?;
    assert_eq!(logged, 1);
    // One refund.succeeded event (listed under the payment), delivered to its callback_url.
    let event = h
        .the_refund_event(r.transaction_id, r.id, RefundState::Succeeded)
        .await?;
    let deliveries = h.deliveries(event.id).await?;
    let urls: Vec<_> = deliveries.iter().map(|d| d.url.as_str()).collect();
    assert_eq!(urls, vec![CALLBACK_URL], "{deliveries:?}");
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_named_only_by_the_providers_reference_is_found_and_failed() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    let handler = paygate_callback_processor::CallbackHandler::new(
        h.pool.clone(),
        h.registry.clone(),
        h.redis.clone(),
        &h.config,
    );
    let r = refund(&h, 300).await?;
    let mut submitted = r.transition(RefundState::Submitted, Utc::now())?;
    submitted.next.provider_reference = Some("rf_77".into());
    refunds::apply_with_event(&h.pool, &submitted, None).await?;
    let failed = delivery(
        &h,
        &r,
        "their-own-ref",
        "refund.failed",
        wire::RefundState::Failed,
        "evt_r2",
    );
    handler
        .handle(&failed)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let done = refunds::get(&h.pool, r.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(done.status, RefundState::Failed);
    assert!(done.failure.is_some());
    assert!(ledger::check(&h.pool).await?.is_empty());
    h.the_refund_event(r.transaction_id, r.id, RefundState::Failed)
        .await?;
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}
