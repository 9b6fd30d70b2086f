//! `requires_action`: a deposit whose customer must pay on the provider's page (Paystack's
//! hosted checkout, on the sandbox's emulator of it). The processor records where to send
//! the customer and tells the merchant; past the gateway's `action_expires_after_ms` it
//! asks the provider first, and fails only a payment the provider says still waits for its
//! customer. One the customer paid in time is completed by that same question.

mod common;

use std::time::Duration;

use common::*;
use paygate_core::domain::{TransactionKind, TransactionStatus};
use paygate_testkit::admin::Knobs;
use serde_json::json;

const PAYSTACK: &str = "ps-action";

/// A world with one Paystack gateway whose customers get `expires_ms` to pay.
async fn world(expires_ms: u64) -> Result<World, BoxError> {
    let mut w = World::new("Requires action", Knobs::default(), &[], json!({})).await?;
    let table = paygate_testkit::services::sandbox_gateway(
        &w.sandbox_url,
        PAYSTACK,
        "paystack",
        &json!({
            "base_url": format!("{}/{PAYSTACK}/paystack", w.sandbox_url),
            "action_expires_after_ms": expires_ms,
            "status_not_found_after_ms": 300,
            "bank_code": "058",
        }),
    )?;
    w.config.gateways.insert(PAYSTACK.to_owned(), table);
    let p = &mut w.config.processor;
    p.scheduler_poll = Duration::from_millis(100);
    p.status_check_min = Duration::from_millis(100);
    p.status_check_max = Duration::from_millis(400);
    w.config.outbox.poll = Duration::from_millis(50);
    Ok(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_checkout_fails_at_expiry_and_the_merchant_was_told_where_to_send_the_customer(
) -> TestResult {
    let w = world(1_500).await?;
    let (stop, task) = w.start().await?;
    let tx = w.insert(TransactionKind::Deposit, PAYSTACK, 5_000).await?;
    let waiting = w
        .wait(tx.id, "requires_action", |t| {
            t.status == TransactionStatus::RequiresAction
        })
        .await?;
    let action = waiting.next_action().ok_or("no next_action")?;
    assert_eq!(action.action_type, "redirect_to_url");
    assert!(action.url.contains("/checkout/"), "{}", action.url);
    assert!(waiting.next_attempt_at.is_some(), "no expiry scheduled");
    // Told to the merchant in the same commit.
    assert!(w
        .announced(tx.id)
        .await?
        .contains(&"requires_action".to_owned()));

    // Nobody pays: the provider still waits for the customer at expiry.
    let failed = w
        .wait(tx.id, "failed at expiry", |t| {
            t.status == TransactionStatus::Failed
        })
        .await?;
    let failure = failed.failure.ok_or("no failure")?;
    assert_eq!(failure.code, "action_expired");
    assert_eq!(failed.next_action_url, None);
    let told: Vec<(String, Option<String>)> = w
        .told(tx.id)
        .await?
        .into_iter()
        .map(|t| (t.status, t.failure_code))
        .collect();
    assert_eq!(
        told,
        vec![
            ("requires_action".to_owned(), None),
            ("failed".to_owned(), Some("action_expired".to_owned())),
        ]
    );
    stop.cancel();
    let _ = task.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_who_paid_is_completed_by_the_expiry_question_even_without_a_callback(
) -> TestResult {
    let w = world(1_500).await?;
    // The provider's webhook is lost: only the status query can tell.
    w.knobs(PAYSTACK, json!({"callbacks_enabled": false}))
        .await?;
    let (stop, task) = w.start().await?;
    let tx = w.insert(TransactionKind::Deposit, PAYSTACK, 7_000).await?;
    let waiting = w
        .wait(tx.id, "requires_action", |t| {
            t.status == TransactionStatus::RequiresAction
        })
        .await?;
    let url = waiting.next_action().ok_or("no next_action")?.url;
    let visit = w.http.get(&url).send().await?;
    assert!(visit.status().is_success(), "{}", visit.status());
    let done = w
        .wait(tx.id, "succeeded", |t| {
            t.status == TransactionStatus::Succeeded
        })
        .await?;
    assert_eq!(done.failure, None);
    assert_eq!(
        w.announced(tx.id).await?,
        vec!["requires_action", "succeeded"]
    );
    stop.cancel();
    let _ = task.await;
    Ok(())
}
