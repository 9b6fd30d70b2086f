use paygate_core::db;
use paygate_core::secret::ApiKey;

use crate::helpers::*;

#[tokio::test]
async fn missing_malformed_wrong_and_revoked_keys_are_401_and_write_nothing() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let body = deposit_body();
    let unknown = ApiKey::generate();

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not bearer", Some(format!("Basic {}", merchant.key))),
        ("malformed", Some("Bearer not-a-key".to_owned())),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("wrong", Some(format!("Bearer {}", unknown.expose()))),
    ];
    for (case, header) in cases {
        let mut request = app.client.post(app.url("/v1/deposits")).json(&body);
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await?;
        assert_eq!(response.status(), 401, "{case}");
        let text = response.text().await?;
        assert!(
            !text.contains(&merchant.key) && !text.contains(unknown.expose()),
            "{case}: key echoed: {text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(
            value["error"]["type"], "authentication_error",
            "{case}: {text}"
        );
    }

    // A working key, then revoked.
    let ok = app
        .post("/v1/deposits", &merchant.key, &body)
        .send()
        .await?;
    assert_eq!(ok.status(), 202);
    assert!(db::merchants::revoke_api_key(&app.pool, merchant.key_id).await?);
    let revoked = app
        .post("/v1/deposits", &merchant.key, &body)
        .send()
        .await?;
    assert_eq!(revoked.status(), 401);
    // Also with an Idempotency-Key: the key row is not written either.
    let keyed = app
        .post("/v1/withdrawals", &merchant.key, &body)
        .header("Idempotency-Key", "after-revocation")
        .send()
        .await?;
    assert_eq!(keyed.status(), 401);
    assert_eq!(app.count("idempotency_keys").await?, 0);
    let listing = app.get("/v1/transactions", &merchant.key).send().await?;
    assert_eq!(listing.status(), 401);

    assert_eq!(
        app.count("transactions").await?,
        1,
        "only the authenticated request wrote"
    );
    assert_eq!(app.count("outbox").await?, 1);
    Ok(())
}

#[tokio::test]
async fn another_merchants_transaction_is_not_found() -> TestResult {
    let app = spawn_app().await?;
    let alice = app.merchant().await?;
    let bob = app.merchant().await?;
    let created: serde_json::Value = app
        .post("/v1/deposits", &alice.key, &deposit_body())
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();

    // Alice reads it (and so caches it); Bob gets 404 from the cache and from Postgres alike.
    assert_eq!(
        app.get(&format!("/v1/transactions/{id}"), &alice.key)
            .send()
            .await?
            .status(),
        200
    );
    for path in [
        format!("/v1/transactions/{id}"),
        format!("/v1/transactions/{id}/deliveries"),
    ] {
        let response = app.get(&path, &bob.key).send().await?;
        assert_eq!(response.status(), 404, "{path}");
        let (kind, code, _) = error_of(response).await?;
        assert_eq!(
            (kind.as_str(), code.as_str()),
            ("invalid_request_error", "resource_missing")
        );
    }
    let bobs: serde_json::Value = app
        .get("/v1/transactions", &bob.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(bobs["data"].as_array().map(Vec::len), Some(0));
    Ok(())
}
