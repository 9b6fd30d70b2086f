use std::sync::Arc;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn same_key_same_body_replays_the_first_response() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let first = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .header("idempotency-key", "order-1")
        .send()
        .await?;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: serde_json::Value = first.json().await?;

    // The same request, fields in another order and spaced differently: still the same.
    let reordered = r#"{ "customer": "cust_1", "currency": "USD", "amount": 1050 }"#;
    let second = app
        .client
        .post(app.url("/v1/deposits"))
        .bearer_auth(&merchant.key)
        .header("content-type", "application/json")
        .header("idempotency-key", "order-1")
        .body(reordered)
        .send()
        .await?;
    assert_eq!(second.status(), 202);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let second: serde_json::Value = second.json().await?;
    assert_eq!(second, first, "the replay is the first response, same id");

    assert_eq!(app.count("transactions").await?, 1);
    assert_eq!(app.count("outbox").await?, 1, "a replay announces nothing");
    Ok(())
}

#[tokio::test]
async fn same_key_different_request_is_422_and_keys_are_per_merchant() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;
    let ok = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .header("idempotency-key", "k1")
        .send()
        .await?;
    assert_eq!(ok.status(), 202);

    let mut changed = deposit_body();
    changed["amount"] = json!(1051);
    let response = app
        .post("/v1/deposits", &merchant.key, &changed)
        .header("idempotency-key", "k1")
        .send()
        .await?;
    assert_eq!(response.status(), 422);
    let (kind, code, param) = error_of(response).await?;
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("idempotency_error", "idempotency_key_reused")
    );
    assert_eq!(param.as_deref(), Some("Idempotency-Key"));

    // Same body on another path is another request.
    let response = app
        .post("/v1/withdrawals", &merchant.key, &deposit_body())
        .header("idempotency-key", "k1")
        .send()
        .await?;
    assert_eq!(response.status(), 422);

    // Another merchant's identical key is its own.
    let response = app
        .post("/v1/deposits", &other.key, &deposit_body())
        .header("idempotency-key", "k1")
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("idempotent-replayed").is_none());

    // No key: two requests, two transactions.
    for _ in 0..2 {
        assert_eq!(
            app.post("/v1/deposits", &merchant.key, &deposit_body())
                .send()
                .await?
                .status(),
            202
        );
    }
    assert_eq!(app.count("transactions").await?, 4);
    assert_eq!(app.count("outbox").await?, 4);

    // A malformed key is a 400 and writes nothing.
    let response = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .header("idempotency-key", "x".repeat(256))
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    assert_eq!(app.count("transactions").await?, 4);
    Ok(())
}

/// Many simultaneous requests with one key: exactly one transaction; every answer is the
/// 202 (first or replayed, same id) or 409 (in flight), never a second charge.
#[tokio::test]
async fn concurrent_requests_with_one_key_create_exactly_one_transaction() -> TestResult {
    let app = Arc::new(spawn_app().await?);
    let merchant = app.merchant().await?;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let app = Arc::clone(&app);
        let key = merchant.key.clone();
        tasks.push(tokio::spawn(async move {
            let response = app
                .post("/v1/deposits", &key, &deposit_body())
                .header("idempotency-key", "simultaneous")
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await?;
            anyhow::Ok((status, body))
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, body) = task.await??;
        statuses.push(status);
        match status {
            202 => {
                ids.insert(body["id"].as_str().unwrap_or_default().to_owned());
            }
            409 => assert_eq!(body["error"]["code"], "idempotency_key_in_use"),
            other => anyhow::bail!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "all 202s carry the one id: {statuses:?}");
    assert_eq!(app.count("transactions").await?, 1);
    assert_eq!(app.count("outbox").await?, 1);
    assert_eq!(app.count("idempotency_keys").await?, 1);
    Ok(())
}

/// A repeat is answered from the stored response before anything is validated again: here
/// the second app's destination policy would now refuse the `callback_url` (as a DNS failure
/// would), yet the retry with the same key still gets the first 202.
#[tokio::test]
async fn a_repeat_is_replayed_even_when_validation_would_now_refuse_it() -> TestResult {
    let lenient = spawn_loopback_app().await?;
    let merchant = lenient.merchant().await?;
    let body = json!({"amount": 1050, "currency": "USD", "customer": "cust_1",
        "callback_url": "http://127.0.0.1:9/hooks"});
    let first = lenient
        .post("/v1/deposits", &merchant.key, &body)
        .header("idempotency-key", "retry-after-policy-change")
        .send()
        .await?;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await?;

    let mut strict_config = lenient.config.clone();
    strict_config.destinations.allow_loopback = false;
    strict_config.destinations.allow_http = false;
    let strict = spawn_config(strict_config, lenient.pool.clone(), Default::default()).await?;
    let replay = strict
        .post("/v1/deposits", &merchant.key, &body)
        .header("idempotency-key", "retry-after-policy-change")
        .send()
        .await?;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.json::<serde_json::Value>().await?, first);

    let fresh = strict
        .post("/v1/deposits", &merchant.key, &body)
        .header("idempotency-key", "a-new-key")
        .send()
        .await?;
    assert_eq!(
        fresh.status(),
        400,
        "without a stored response the request is validated"
    );
    assert_eq!(strict.count("transactions").await?, 1);
    strict.stop().await;
    lenient.stop().await;
    Ok(())
}
