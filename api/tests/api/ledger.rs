//! The ledger through the HTTP API: withdrawals spend only what the merchant holds (and a
//! refusal is one clear 4xx, replayed for its key), the balance and its entries, scoped keys,
//! limits and gateways per merchant.

use std::sync::Arc;

use paygate_core::db::{self, ledger, merchants};
use paygate_core::domain::{Currency, GatewayName, MerchantId, Money, Scope};
use paygate_gateways::{GatewayRegistry, GatewaySettings, PaymentGateway, Secret};
use serde_json::{json, Value};

use crate::helpers::*;

async fn fund(app: &TestApp, merchant: MerchantId, amount: i64) -> anyhow::Result<()> {
    let money = Money::from_parts(amount, "USD")?;
    ledger::top_up(&app.pool, merchant, money, &format!("funds-{amount}")).await?;
    Ok(())
}

fn withdrawal(amount: i64) -> Value {
    json!({"amount": amount, "currency": "USD", "customer": "cust_1"})
}

async fn balance(app: &TestApp, key: &str) -> anyhow::Result<Value> {
    let response = app.get("/v1/balance", key).send().await?;
    anyhow::ensure!(
        response.status() == 200,
        "GET /v1/balance: {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// `(available, reserved, pending)` in USD from `GET /v1/balance`.
async fn usd(app: &TestApp, key: &str) -> anyhow::Result<(i64, i64, i64)> {
    let body = balance(app, key).await?;
    let usd = body["balances"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["currency"] == "USD"))
        .cloned()
        .unwrap_or(json!({"available": 0, "reserved": 0, "pending": 0}));
    let figure = |name: &str| usd[name].as_i64().unwrap_or(-1);
    Ok((figure("available"), figure("reserved"), figure("pending")))
}

#[tokio::test]
async fn a_withdrawal_over_the_balance_is_refused_writes_nothing_and_replays_for_its_key(
) -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    fund(&app, merchant.id, 1_000).await?;
    let refused = app
        .post("/v1/withdrawals", &merchant.key, &withdrawal(9_000_000_000))
        .header("Idempotency-Key", "payout-1")
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "balance_insufficient", "{body}");
    assert_eq!(body["error"]["param"], "amount");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(app.count("transactions").await?, 0);
    assert_eq!(app.count("outbox").await?, 0);
    assert_eq!(app.count("ledger_holds").await?, 0);

    // Funds arrive; the same key still answers what it answered.
    fund(&app, merchant.id, 9_000_000_000).await?;
    let replay = app
        .post("/v1/withdrawals", &merchant.key, &withdrawal(9_000_000_000))
        .header("Idempotency-Key", "payout-1")
        .send()
        .await?;
    assert_eq!(replay.status(), 400);
    assert_eq!(
        replay
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let replayed: Value = replay.json().await?;
    assert_eq!(replayed, body);
    assert_eq!(app.count("transactions").await?, 0);

    // A new key is a new request, and now it is covered.
    let accepted = app
        .post("/v1/withdrawals", &merchant.key, &withdrawal(9_000_000_000))
        .header("Idempotency-Key", "payout-2")
        .send()
        .await?;
    assert_eq!(accepted.status(), 202);
    assert_eq!(usd(&app, &merchant.key).await?, (1_000, 9_000_000_000, 0));
    Ok(())
}

/// Exactly 1,000 available and 100 concurrent withdrawals of 100: exactly ten are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_withdrawals_never_spend_more_than_the_balance() -> TestResult {
    let app = Arc::new(spawn_app().await?);
    let merchant = app.merchant().await?;
    fund(&app, merchant.id, 1_000).await?;
    let mut tasks = Vec::new();
    for n in 0..100 {
        let (app, key) = (app.clone(), merchant.key.clone());
        tasks.push(tokio::spawn(async move {
            let response = app
                .post("/v1/withdrawals", &key, &withdrawal(100))
                .header("Idempotency-Key", format!("concurrent-{n}"))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            anyhow::Ok((status, body["error"]["code"].as_str().map(str::to_owned)))
        }));
    }
    let (mut accepted, mut insufficient) = (0, 0);
    for task in tasks {
        match task.await?? {
            (202, None) => accepted += 1,
            (400, Some(code)) if code == "balance_insufficient" => insufficient += 1,
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted, insufficient), (10, 90));
    assert_eq!(usd(&app, &merchant.key).await?, (0, 1_000, 0));
    assert_eq!(app.count("transactions").await?, 10);
    assert_eq!(ledger::check(&app.pool).await?, vec![]);
    Ok(())
}

#[tokio::test]
async fn the_balance_shows_holds_and_pending_deposits_at_once_and_lists_its_entries() -> TestResult
{
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;
    let empty = app.merchant().await?;
    assert_eq!(
        balance(&app, &empty.key).await?,
        json!({"object": "balance", "balances": []})
    );
    fund(&app, merchant.id, 5_000).await?;
    fund(&app, other.id, 7_000).await?;
    // Read once so the balance is cached; each accept below must drop that copy.
    assert_eq!(usd(&app, &merchant.key).await?, (5_000, 0, 0));
    let payout = app
        .post("/v1/withdrawals", &merchant.key, &withdrawal(1_200))
        .send()
        .await?;
    assert_eq!(payout.status(), 202);
    assert_eq!(usd(&app, &merchant.key).await?, (3_800, 1_200, 0));
    let deposit = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .send()
        .await?;
    assert_eq!(deposit.status(), 202);
    assert_eq!(usd(&app, &merchant.key).await?, (3_800, 1_200, 1_050));
    assert_eq!(
        usd(&app, &other.key).await?,
        (7_000, 0, 0),
        "each merchant sees its own"
    );

    let page: Value = app
        .get("/v1/balance/transactions", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    let data = page["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 1, "{page}");
    assert_eq!(data[0]["type"], "top_up");
    assert_eq!(data[0]["amount"], 5_000);
    assert_eq!(data[0]["balance_after"], 5_000);
    assert_eq!(data[0]["reference"], "funds-5000");
    assert_eq!(page["has_more"], false);

    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("starting_after=txn_1", "starting_after"),
        ("colour=red", "colour"),
    ] {
        let response = app
            .get(&format!("/v1/balance/transactions?{query}"), &merchant.key)
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn ledger_entries_page_newest_first() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    for amount in [100, 200, 300] {
        fund(&app, merchant.id, amount).await?;
    }
    let first: Value = app
        .get("/v1/balance/transactions?limit=2", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    let amounts = |page: &Value| -> Vec<i64> {
        page["data"]
            .as_array()
            .map(|d| d.iter().filter_map(|e| e["amount"].as_i64()).collect())
            .unwrap_or_default()
    };
    assert_eq!(amounts(&first), vec![300, 200]);
    assert_eq!(first["has_more"], true);
    let last = first["data"][1]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let second: Value = app
        .get(
            &format!("/v1/balance/transactions?limit=2&starting_after={last}"),
            &merchant.key,
        )
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(amounts(&second), vec![100]);
    assert_eq!(second["has_more"], false);
    Ok(())
}

#[tokio::test]
async fn a_key_does_only_what_its_scopes_allow() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    fund(&app, merchant.id, 10_000).await?;
    let (_, read_only) =
        merchants::create_scoped_api_key(&app.pool, merchant.id, &[Scope::Read]).await?;
    let (_, payments) =
        merchants::create_scoped_api_key(&app.pool, merchant.id, &[Scope::PaymentsWrite]).await?;
    let (read_only, payments) = (read_only.expose().to_owned(), payments.expose().to_owned());

    let forbidden = |response: reqwest::Response, scope: &'static str| async move {
        assert_eq!(response.status(), 403, "{scope}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["code"], "scope_missing", "{body}");
        assert_eq!(body["error"]["type"], "permission_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(scope),
            "{body}"
        );
        anyhow::Ok(())
    };
    forbidden(
        app.post("/v1/withdrawals", &payments, &withdrawal(100))
            .send()
            .await?,
        "payouts:write",
    )
    .await?;
    forbidden(
        app.post("/v1/withdrawals", &read_only, &withdrawal(100))
            .send()
            .await?,
        "payouts:write",
    )
    .await?;
    forbidden(
        app.post("/v1/deposits", &read_only, &deposit_body())
            .send()
            .await?,
        "payments:write",
    )
    .await?;
    forbidden(app.get("/v1/balance", &payments).send().await?, "read").await?;
    forbidden(
        app.get("/v1/webhook-endpoints", &read_only).send().await?,
        "webhooks:manage",
    )
    .await?;
    forbidden(
        app.get("/v1/webhook-secret", &read_only).send().await?,
        "webhooks:manage",
    )
    .await?;
    assert_eq!(
        app.count("transactions").await?,
        0,
        "a refused scope writes nothing"
    );

    assert_eq!(
        app.post("/v1/deposits", &payments, &deposit_body())
            .send()
            .await?
            .status(),
        202
    );
    assert_eq!(
        app.get("/v1/balance", &read_only).send().await?.status(),
        200
    );
    assert_eq!(
        app.get("/v1/transactions", &read_only)
            .send()
            .await?
            .status(),
        200
    );
    // The key made before scopes existed (every scope) may do everything.
    assert_eq!(
        app.post("/v1/withdrawals", &merchant.key, &withdrawal(100))
            .send()
            .await?
            .status(),
        202
    );
    Ok(())
}

#[tokio::test]
async fn limits_are_refused_naming_the_amount_and_stored_for_the_key() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    fund(&app, merchant.id, 100_000).await?;
    let limits = merchants::Limits {
        max_amount: Some(5_000),
        daily_payout_limit: Some(8_000),
    };
    merchants::set_limits(&app.pool, merchant.id, Currency::parse("USD")?, limits).await?;
    let code = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        anyhow::Ok((
            status,
            body["error"]["code"].clone(),
            body["error"]["param"].clone(),
        ))
    };
    let big = json!({"amount": 5_001, "currency": "USD", "customer": "cust_1"});
    let over = app.post("/v1/deposits", &merchant.key, &big).send().await?;
    assert_eq!(
        code(over).await?,
        (400, json!("amount_over_limit"), json!("amount"))
    );
    assert_eq!(
        app.post("/v1/withdrawals", &merchant.key, &withdrawal(5_000))
            .send()
            .await?
            .status(),
        202
    );
    let day = app
        .post("/v1/withdrawals", &merchant.key, &withdrawal(3_001))
        .header("Idempotency-Key", "over-the-day")
        .send()
        .await?;
    assert_eq!(
        code(day).await?,
        (400, json!("daily_payout_limit_exceeded"), json!("amount"))
    );
    let again = app
        .post("/v1/withdrawals", &merchant.key, &withdrawal(3_001))
        .header("Idempotency-Key", "over-the-day")
        .send()
        .await?;
    assert_eq!(
        code(again).await?,
        (400, json!("daily_payout_limit_exceeded"), json!("amount"))
    );
    assert_eq!(
        app.post("/v1/withdrawals", &merchant.key, &withdrawal(3_000))
            .send()
            .await?
            .status(),
        202
    );
    assert_eq!(app.count("transactions").await?, 2);
    Ok(())
}

fn two_gateways() -> anyhow::Result<GatewayRegistry> {
    let mut gateways: Vec<Arc<dyn PaymentGateway>> = Vec::new();
    for name in ["gw-one", "gw-two"] {
        let settings = GatewaySettings::new(
            GatewayName::parse(name)?,
            "sandbox-json",
            url::Url::parse("http://127.0.0.1:1/")?,
            Secret::new("sk_provider"),
            Secret::new("whsec_provider"),
        );
        gateways.push(paygate_gateways::registry::build(settings)?);
    }
    Ok(GatewayRegistry::from_gateways(gateways))
}

#[tokio::test]
async fn a_merchant_may_name_only_its_enabled_gateways() -> TestResult {
    let app = spawn_with(|_| {}, two_gateways()?).await?;
    let merchant = app.merchant().await?;
    let with_gateway = |gateway: &str| json!({"amount": 100, "currency": "USD", "customer": "c", "gateway": gateway});
    assert_eq!(
        app.post("/v1/deposits", &merchant.key, &with_gateway("gw-two"))
            .send()
            .await?
            .status(),
        202
    );
    let only_one = [GatewayName::parse("gw-one")?];
    db::merchants::set_enabled_gateways(&app.pool, merchant.id, Some(&only_one)).await?;
    let refused = app
        .post("/v1/deposits", &merchant.key, &with_gateway("gw-two"))
        .send()
        .await?;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "gateway_not_enabled", "{body}");
    assert_eq!(body["error"]["param"], "gateway");
    assert_eq!(
        app.post("/v1/deposits", &merchant.key, &with_gateway("gw-one"))
            .send()
            .await?
            .status(),
        202
    );
    assert_eq!(
        app.post("/v1/deposits", &merchant.key, &deposit_body())
            .send()
            .await?
            .status(),
        202,
        "routed: the processor keeps to gw-one"
    );
    // Enabled again: the API's key cache still says gw-one only, and must not refuse.
    db::merchants::set_enabled_gateways(&app.pool, merchant.id, None).await?;
    assert_eq!(
        app.post("/v1/deposits", &merchant.key, &with_gateway("gw-two"))
            .send()
            .await?
            .status(),
        202,
        "a gateway enabled since the key was cached is usable at once"
    );
    assert_eq!(app.count("transactions").await?, 4);
    Ok(())
}
