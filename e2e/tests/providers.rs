//! The real providers' connectors end to end, through the five paygate binaries as separate
//! processes on the real broker, against the sandbox's emulators of Paystack, Stripe and
//! M-Pesa Daraja (written from the providers' public documentation, sharing nothing with the
//! connectors): per provider a deposit (the customer following the redirect for Paystack and
//! Stripe; a delayed STK callback for M-Pesa), a payout, a partial then a full refund, each
//! with a verified merchant webhook.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use paygate_e2e::{Kind, Merchant, Topology, TopologyOptions};
use serde_json::{json, Value};

/// How long a payment, a refund or a webhook may take here.
const SETTLE: Duration = Duration::from_secs(45);

/// Waits for a verified webhook of `event_type` about `object_id` (a transaction or a
/// refund id: the event's `data.id`).
async fn webhook(merchant: &Merchant, object_id: &str, event_type: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let found = merchant.receiver.received().iter().any(|w| {
            w.verified
                && w.transaction_id.as_deref() == Some(object_id)
                && w.event_type.as_deref() == Some(event_type)
        });
        if found {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no verified {event_type} webhook for {object_id}; received {:?}",
            merchant
                .receiver
                .received()
                .iter()
                .map(|w| (w.event_type.clone(), w.transaction_id.clone(), w.verified))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a payment naming `gateway`; its id.
async fn create(
    t: &Topology,
    merchant: &Merchant,
    kind: Kind,
    body: Value,
    key: &str,
) -> anyhow::Result<String> {
    let (status, answer) = t.post_json(merchant, kind.path(), &body, key).await?;
    ensure!(status == 202, "{key}: {status} {answer}");
    answer["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{key}: no id in {answer}"))
}

async fn status_is(
    t: &mut Topology,
    merchant: &Merchant,
    id: &str,
    wanted: &'static str,
) -> anyhow::Result<Value> {
    t.wait_for(merchant, &format!("/v1/transactions/{id}"), SETTLE, |tx| {
        tx["status"] == wanted
    })
    .await
}

/// A deposit whose customer must finish at the provider: `requires_action` with a
/// redirect, told to the merchant; the customer's visit completes it.
async fn deposit_with_redirect(
    t: &mut Topology,
    merchant: &Merchant,
    body: Value,
    key: &str,
) -> anyhow::Result<String> {
    let id = create(t, merchant, Kind::Deposit, body, key).await?;
    let waiting = status_is(t, merchant, &id, "requires_action").await?;
    ensure!(
        waiting["next_action"]["type"] == "redirect_to_url",
        "{id}: {waiting}"
    );
    let url = waiting["next_action"]["url"]
        .as_str()
        .ok_or_else(|| anyhow!("{id}: no redirect url in {waiting}"))?
        .to_owned();
    webhook(merchant, &id, "transaction.requires_action").await?;
    // The customer at the provider's page.
    let visit = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("the customer's visit to {url}"))?;
    ensure!(
        visit.status().is_success() || visit.status().is_redirection(),
        "{url}: {}",
        visit.status()
    );
    let done = status_is(t, merchant, &id, "succeeded").await?;
    ensure!(done["next_action"].is_null(), "{id}: {done}");
    webhook(merchant, &id, "transaction.succeeded").await?;
    Ok(id)
}

/// A payout that succeeds, with its webhook.
async fn payout(
    t: &mut Topology,
    merchant: &Merchant,
    body: Value,
    key: &str,
) -> anyhow::Result<String> {
    let id = create(t, merchant, Kind::Withdrawal, body, key).await?;
    status_is(t, merchant, &id, "succeeded").await?;
    webhook(merchant, &id, "transaction.succeeded").await?;
    Ok(id)
}

/// Refunds `amount` of `id` (all that is left when `None`); waits for `final_status`.
async fn refund(
    t: &mut Topology,
    merchant: &Merchant,
    id: &str,
    amount: Option<i64>,
    key: &str,
    final_status: &'static str,
) -> anyhow::Result<Value> {
    let body = match amount {
        Some(amount) => json!({"amount": amount, "reason": "e2e"}),
        None => json!({}),
    };
    let path = format!("/v1/transactions/{id}/refunds");
    let (status, created) = t.post_json(merchant, &path, &body, key).await?;
    ensure!(status == 201, "{key}: {status} {created}");
    let refund_id = created["id"]
        .as_str()
        .ok_or_else(|| anyhow!("{key}: no refund id in {created}"))?
        .to_owned();
    let done = t
        .wait_for(merchant, &format!("/v1/refunds/{refund_id}"), SETTLE, |r| {
            r["status"] == final_status
        })
        .await?;
    webhook(merchant, &refund_id, &format!("refund.{final_status}")).await?;
    Ok(done)
}

/// A partial then a full refund of a deposit of `amount`; a third is refused.
async fn refund_twice(
    t: &mut Topology,
    merchant: &Merchant,
    id: &str,
    amount: i64,
    prefix: &str,
) -> anyhow::Result<()> {
    let part = amount / 4;
    let first = refund(
        t,
        merchant,
        id,
        Some(part),
        &format!("{prefix}-r1"),
        "succeeded",
    )
    .await?;
    ensure!(first["amount"] == part, "{first}");
    let rest = refund(t, merchant, id, None, &format!("{prefix}-r2"), "succeeded").await?;
    ensure!(rest["amount"] == amount - part, "{rest}");
    let path = format!("/v1/transactions/{id}/refunds");
    let (status, refused) = t
        .post_json(
            merchant,
            &path,
            &json!({"amount": 1}),
            &format!("{prefix}-r3"),
        )
        .await?;
    ensure!(status == 400, "a third refund: {status} {refused}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_real_provider_end_to_end() -> anyhow::Result<()> {
    let mut t = Topology::start(TopologyOptions::default()).await?;
    let outcome = async {
        let merchant = t.merchant("Providers e2e").await?;
        t.top_up(&merchant, "NGN", 10_000_000).await?;
        t.top_up(&merchant, "KES", 10_000_000).await?;
        // M-Pesa's customer confirms on the phone a moment later.
        t.patch_account_knobs("mpesa", json!({"callback_delay_ms": 1500}))
            .await?;

        // Paystack: hosted checkout, recipient + transfer, refunds.
        let deposit = deposit_with_redirect(
            &mut t,
            &merchant,
            json!({"amount": 500_000, "currency": "NGN", "customer": "cust_ng_1", "gateway": "paystack"}),
            "ps-dep",
        )
        .await?;
        payout(
            &mut t,
            &merchant,
            json!({"amount": 200_000, "currency": "NGN", "customer": "0123456789", "gateway": "paystack"}),
            "ps-pay",
        )
        .await?;
        refund_twice(&mut t, &merchant, &deposit, 500_000, "ps").await?;

        // Stripe: a PaymentIntent with 3-D Secure, a Connect transfer, refunds.
        let deposit = deposit_with_redirect(
            &mut t,
            &merchant,
            json!({"amount": 4_200, "currency": "USD", "customer": "cus_e2e", "gateway": "stripe"}),
            "st-dep",
        )
        .await?;
        payout(
            &mut t,
            &merchant,
            json!({"amount": 1_500, "currency": "USD", "customer": "acct_1032D82eZvKYlo2C", "gateway": "stripe"}),
            "st-pay",
        )
        .await?;
        refund_twice(&mut t, &merchant, &deposit, 4_200, "st").await?;

        // M-Pesa: STK push answered by a delayed callback (unsigned: confirmed by a status
        // query), a B2C payout, and no refunds at this provider.
        let deposit = create(
            &t,
            &merchant,
            Kind::Deposit,
            json!({"amount": 10_000, "currency": "KES", "customer": "254708374149", "gateway": "mpesa"}),
            "mp-dep",
        )
        .await?;
        status_is(&mut t, &merchant, &deposit, "succeeded").await?;
        webhook(&merchant, &deposit, "transaction.succeeded").await?;
        payout(
            &mut t,
            &merchant,
            json!({"amount": 5_000, "currency": "KES", "customer": "254708374149", "gateway": "mpesa"}),
            "mp-pay",
        )
        .await?;
        let refused = refund(&mut t, &merchant, &deposit, None, "mp-r1", "failed").await?;
        ensure!(refused["failure"]["code"] == "refunds_unsupported", "{refused}");

        forged_stk_callback_is_flagged(&mut t, &merchant).await
    }
    .await;
    t.finish(outcome).await
}

/// M-Pesa signs nothing: a callback with the right path token (a leaked URL) that says
/// "paid" for a push the customer declined is contradicted by the provider's status query,
/// flagged for review and never applied; the genuine decline is.
async fn forged_stk_callback_is_flagged(
    t: &mut Topology,
    merchant: &Merchant,
) -> anyhow::Result<()> {
    t.patch_account_knobs(
        "mpesa",
        json!({"decline_rate": 1.0, "callback_delay_ms": 3000}),
    )
    .await?;
    let id = create(
        t,
        merchant,
        Kind::Deposit,
        json!({"amount": 10_000, "currency": "KES", "customer": "254708374149", "gateway": "mpesa"}),
        "mp-forged",
    )
    .await?;
    let submitted = status_is(t, merchant, &id, "submitted").await?;
    let checkout = submitted["provider_reference"]
        .as_str()
        .ok_or_else(|| anyhow!("{id}: no CheckoutRequestID in {submitted}"))?;
    // The STK callback's path segment for 100.00 KES, and its token.
    let segment = format!("{id}.d10000");
    let token = paygate_gateways::callback::path_token(
        paygate_sandbox::DEFAULT_WEBHOOK_SECRET.as_bytes(),
        &segment,
    );
    let forged = json!({"Body": {"stkCallback": {
        "MerchantRequestID": "forged-1",
        "CheckoutRequestID": checkout,
        "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "CallbackMetadata": {"Item": [
            {"Name": "Amount", "Value": 100},
            {"Name": "MpesaReceiptNumber", "Value": "FORGED0001"},
            {"Name": "TransactionDate", "Value": 20261203085500u64},
            {"Name": "PhoneNumber", "Value": 254708374149u64}
        ]}
    }}});
    let answer = reqwest::Client::new()
        .post(format!("{}/callbacks/mpesa/{segment}/{token}", t.api_url))
        .json(&forged)
        .send()
        .await?;
    ensure!(
        answer.status() == 200,
        "forged callback: {}",
        answer.status()
    );

    let done = status_is(t, merchant, &id, "failed").await?;
    ensure!(done["failure"]["code"] != "action_expired", "{done}");
    let uuid = paygate_core::domain::TransactionId::parse(&id)?.as_uuid();
    let deadline = Instant::now() + SETTLE;
    loop {
        let flagged: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM callback_log WHERE transaction_id = $1 AND needs_review",
        )
        .bind(uuid)
        .fetch_one(&t.pool)
        .await?;
        if flagged == 1 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{id}: the forged callback was not flagged for review"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
