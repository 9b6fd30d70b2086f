//! Refunds through the HTTP API: partial then full, nothing past the payment (also under
//! 20 concurrent requests), only a succeeded deposit of one's own, the Idempotency-Key, and
//! the ledger's hold posted on success and voided on failure.

use chrono::Utc;
use paygate_core::announce;
use paygate_core::db::{ledger, refunds};
use paygate_core::domain::{Currency, RefundId, RefundState, TransactionId};
use serde_json::{json, Value};

use crate::helpers::*;

/// A deposit of `amount` USD that succeeded (the ledger credits the merchant).
async fn paid_deposit(
    app: &TestApp,
    merchant: &TestMerchant,
    amount: i64,
) -> anyhow::Result<TransactionId> {
    let created: Value = app
        .post(
            "/v1/deposits",
            &merchant.key,
            &json!({"amount": amount, "currency": "USD", "customer": "cust_1"}),
        )
        .send()
        .await?
        .json()
        .await?;
    let id = TransactionId::parse(created["id"].as_str().unwrap_or_default())?;
    sqlx::query(
        "UPDATE transactions SET status = 'succeeded', version = version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(id.as_uuid())
    .execute(&app.pool)
    .await?;
    Ok(id)
}

fn refund_request(
    app: &TestApp,
    merchant: &TestMerchant,
    transaction: TransactionId,
    key: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    app.post(
        &format!("/v1/transactions/{transaction}/refunds"),
        &merchant.key,
        body,
    )
    .header("Idempotency-Key", key)
}

async fn usd(app: &TestApp, merchant: &TestMerchant) -> anyhow::Result<(i64, i64)> {
    Ok(ledger::account(&app.pool, merchant.id, Currency::parse("USD")?).await?)
}

#[tokio::test]
async fn a_partial_then_a_full_refund_and_a_third_is_too_large() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let payment = paid_deposit(&app, &merchant, 1_000).await?;

    let first = refund_request(
        &app,
        &merchant,
        payment,
        "r-1",
        &json!({"amount": 300, "reason": "damaged"}),
    )
    .send()
    .await?;
    assert_eq!(first.status(), 201);
    let location = first
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let first: Value = first.json().await?;
    assert_eq!(first["object"], "refund");
    assert_eq!(first["transaction"], payment.to_string());
    assert_eq!(first["amount"], 300);
    assert_eq!(first["currency"], "USD");
    assert_eq!(first["status"], "pending");
    assert_eq!(first["reason"], "damaged");
    assert_eq!(first["failure"], Value::Null);
    let id = first["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("rfd_"), "{first}");
    assert_eq!(location, Some(format!("/v1/refunds/{id}")));

    // No amount: all that is left.
    let second = refund_request(&app, &merchant, payment, "r-2", &json!({}))
        .send()
        .await?;
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await?;
    assert_eq!(second["amount"], 700);
    assert_eq!(second["reason"], Value::Null);

    let third = refund_request(&app, &merchant, payment, "r-3", &json!({"amount": 1}))
        .send()
        .await?;
    assert_eq!(third.status(), 400);
    let (kind, code, param) = error_of(third).await?;
    assert_eq!(
        (kind.as_str(), code.as_str(), param.as_deref()),
        ("invalid_request_error", "amount_too_large", Some("amount"))
    );

    // The whole payment is held on the balance until the refunds end.
    assert_eq!(usd(&app, &merchant).await?, (0, 1_000));

    let listed: Value = app
        .get(
            &format!("/v1/transactions/{payment}/refunds"),
            &merchant.key,
        )
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["has_more"], false);
    assert_eq!(listed["data"], json!([first.clone(), second]));
    let fetched = app
        .get(&format!("/v1/refunds/{id}"), &merchant.key)
        .send()
        .await?;
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.json::<Value>().await?, first);

    // Announced to the processor on the pending topic, keyed by the payment.
    let announced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE topic = 'transactions.pending' AND message_key = $1",
    )
    .bind(payment.to_string())
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(announced, 3, "the deposit and its two refunds");
    assert!(ledger::check(&app.pool).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_refunds_of_ten_on_a_hundred_accept_exactly_ten() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let payment = paid_deposit(&app, &merchant, 100).await?;
    let requests = (0..20).map(|n| {
        refund_request(
            &app,
            &merchant,
            payment,
            &format!("c-{n}"),
            &json!({"amount": 10}),
        )
        .send()
    });
    let mut accepted = 0;
    let mut too_large = 0;
    for response in futures::future::join_all(requests).await {
        let response = response?;
        match response.status().as_u16() {
            201 => accepted += 1,
            400 => {
                let (_, code, _) = error_of(response).await?;
                assert_eq!(code, "amount_too_large");
                too_large += 1;
            }
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    assert_eq!((accepted, too_large), (10, 10));
    assert_eq!(app.count("refunds").await?, 10);
    assert_eq!(app.count("refund_holds").await?, 10);
    assert_eq!(usd(&app, &merchant).await?, (0, 100));
    assert!(ledger::check(&app.pool).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn another_merchants_transaction_or_refund_is_not_found() -> TestResult {
    let app = spawn_app().await?;
    let owner = app.merchant().await?;
    let other = app.merchant().await?;
    let payment = paid_deposit(&app, &owner, 500).await?;
    let refused = refund_request(&app, &other, payment, "x-1", &json!({"amount": 10}))
        .send()
        .await?;
    assert_eq!(refused.status(), 404);
    let listed = app
        .get(&format!("/v1/transactions/{payment}/refunds"), &other.key)
        .send()
        .await?;
    assert_eq!(listed.status(), 404);
    let created: Value = refund_request(&app, &owner, payment, "x-1", &json!({"amount": 10}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default();
    let fetched = app
        .get(&format!("/v1/refunds/{id}"), &other.key)
        .send()
        .await?;
    assert_eq!(fetched.status(), 404);
    let unknown = refund_request(&app, &owner, TransactionId::new(), "x-2", &json!({}))
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    let unknown = app
        .get(&format!("/v1/refunds/{}", RefundId::new()), &owner.key)
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    assert_eq!(app.count("refunds").await?, 1);
    Ok(())
}

#[tokio::test]
async fn only_a_succeeded_deposit_is_refundable() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let payment = paid_deposit(&app, &merchant, 1_000).await?;
    let withdrawal: Value = app
        .post(
            "/v1/withdrawals",
            &merchant.key,
            &json!({"amount": 100, "currency": "USD", "customer": "cust_1"}),
        )
        .send()
        .await?
        .json()
        .await?;
    let withdrawal = TransactionId::parse(withdrawal["id"].as_str().unwrap_or_default())?;
    let pending: Value = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .send()
        .await?
        .json()
        .await?;
    let pending = TransactionId::parse(pending["id"].as_str().unwrap_or_default())?;
    let failed: Value = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .send()
        .await?
        .json()
        .await?;
    let failed = TransactionId::parse(failed["id"].as_str().unwrap_or_default())?;
    sqlx::query("UPDATE transactions SET status = 'failed', version = version + 1 WHERE id = $1")
        .bind(failed.as_uuid())
        .execute(&app.pool)
        .await?;
    for (n, id) in [withdrawal, pending, failed].into_iter().enumerate() {
        let refused = refund_request(&app, &merchant, id, &format!("n-{n}"), &json!({}))
            .send()
            .await?;
        assert_eq!(refused.status(), 400, "{id}");
        let (_, code, _) = error_of(refused).await?;
        assert_eq!(code, "transaction_not_refundable", "{id}");
    }
    assert_eq!(app.count("refunds").await?, 0);
    // The deposit that did succeed still is.
    let ok = refund_request(&app, &merchant, payment, "n-ok", &json!({"amount": 5}))
        .send()
        .await?;
    assert_eq!(ok.status(), 201);
    Ok(())
}

#[tokio::test]
async fn a_refund_past_the_available_balance_is_refused() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let payment = paid_deposit(&app, &merchant, 1_000).await?;
    let payout = app
        .post(
            "/v1/withdrawals",
            &merchant.key,
            &json!({"amount": 800, "currency": "USD", "customer": "cust_1"}),
        )
        .send()
        .await?;
    assert_eq!(payout.status(), 202);
    let refused = refund_request(&app, &merchant, payment, "b-1", &json!({"amount": 500}))
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    let (_, code, param) = error_of(refused).await?;
    assert_eq!(
        (code.as_str(), param.as_deref()),
        ("balance_insufficient", Some("amount"))
    );
    // Refused answers are kept under the key.
    let again = refund_request(&app, &merchant, payment, "b-1", &json!({"amount": 500}))
        .send()
        .await?;
    assert_eq!(again.status(), 400);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(app.count("refunds").await?, 0);
    Ok(())
}

#[tokio::test]
async fn the_idempotency_key_is_required_and_replays_the_same_refund() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let payment = paid_deposit(&app, &merchant, 1_000).await?;
    let path = format!("/v1/transactions/{payment}/refunds");
    let missing = app.post(&path, &merchant.key, &json!({})).send().await?;
    assert_eq!(missing.status(), 400);
    let (_, code, param) = error_of(missing).await?;
    assert_eq!(
        (code.as_str(), param.as_deref()),
        ("idempotency_key_missing", Some("Idempotency-Key"))
    );

    let body = json!({"amount": 250, "reason": "late"});
    let first: Value = refund_request(&app, &merchant, payment, "same", &body)
        .send()
        .await?
        .json()
        .await?;
    let replay = refund_request(&app, &merchant, payment, "same", &body)
        .send()
        .await?;
    assert_eq!(replay.status(), 201);
    assert_eq!(
        replay
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(replay.json::<Value>().await?, first);
    let reused = refund_request(&app, &merchant, payment, "same", &json!({"amount": 1}))
        .send()
        .await?;
    assert_eq!(reused.status(), 422);
    assert_eq!(app.count("refunds").await?, 1);

    let long = refund_request(
        &app,
        &merchant,
        payment,
        "long",
        &json!({"reason": "x".repeat(501)}),
    )
    .send()
    .await?;
    assert_eq!(long.status(), 400);
    let (_, code, param) = error_of(long).await?;
    assert_eq!(
        (code.as_str(), param.as_deref()),
        ("reason_invalid", Some("reason"))
    );
    for bad in [
        json!({"amount": 0}),
        json!({"amount": 1.5}),
        json!({"amount": -3}),
        json!({"other": 1}),
    ] {
        let refused = refund_request(&app, &merchant, payment, &format!("bad-{bad}"), &bad)
            .send()
            .await?;
        assert_eq!(refused.status(), 400, "{bad}");
    }
    Ok(())
}

#[tokio::test]
async fn the_ledger_posts_a_succeeded_refund_and_voids_a_failed_one() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let payment = paid_deposit(&app, &merchant, 1_000).await?;
    let mut ids = Vec::new();
    for (key, amount) in [("l-1", 300), ("l-2", 200)] {
        let created: Value =
            refund_request(&app, &merchant, payment, key, &json!({"amount": amount}))
                .send()
                .await?
                .json()
                .await?;
        ids.push(RefundId::parse(created["id"].as_str().unwrap_or_default())?);
    }
    assert_eq!(usd(&app, &merchant).await?, (500, 500));

    let succeeded = refunds::get(&app.pool, ids[0])
        .await?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    let update = succeeded.transition(RefundState::Submitted, Utc::now())?;
    let submitted = refunds::apply_with_event(&app.pool, &update, None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("not applied"))?;
    let update = submitted.transition(RefundState::Succeeded, Utc::now())?;
    let done = refunds::apply_with_event(
        &app.pool,
        &update,
        Some(&announce::refund_completed(&update.next, None)?),
    )
    .await?;
    assert!(done.is_some());
    // A stale writer changes nothing.
    assert_eq!(
        refunds::apply_with_event(&app.pool, &update, None).await?,
        None
    );
    assert_eq!(usd(&app, &merchant).await?, (500, 200));
    assert!(
        ledger::check(&app.pool).await?.is_empty(),
        "{:?}",
        ledger::check(&app.pool).await?
    );

    let failing = refunds::get(&app.pool, ids[1])
        .await?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    let update = failing.transition(RefundState::Failed, Utc::now())?;
    refunds::apply_with_event(&app.pool, &update, None).await?;
    assert_eq!(usd(&app, &merchant).await?, (700, 0));
    assert!(
        ledger::check(&app.pool).await?.is_empty(),
        "{:?}",
        ledger::check(&app.pool).await?
    );

    // The balance entries show the refund against its payment.
    let entries: Value = app
        .get("/v1/balance/transactions", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    let newest = &entries["data"][0];
    assert_eq!(newest["type"], "refund", "{entries}");
    assert_eq!(newest["amount"], -300);
    assert_eq!(newest["transaction"], payment.to_string());
    assert_eq!(newest["balance_after"], 700);

    // What is left to refund counts the failed one out.
    let left = refund_request(&app, &merchant, payment, "l-3", &json!({}))
        .send()
        .await?;
    assert_eq!(left.status(), 201);
    assert_eq!(left.json::<Value>().await?["amount"], 700);
    Ok(())
}
