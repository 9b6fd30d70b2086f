//! Signing secrets: the merchant's default secret (`GET /v1/webhook-secret`,
//! `POST /v1/webhook-secret/rotate`) and an endpoint's (`POST
//! /v1/webhook-endpoints/{id}/rotate-secret`). After a rotation the dispatcher signs with
//! the new and the previous secret (both signatures sent) during the overlap.

use std::time::Duration;

use paygate_core::db::webhooks::{self, ClaimLimits, EventType, InFlight, NewEvent};
use paygate_core::domain::{TransactionId, TransactionStatus};
use paygate_core::keyring::{SecretColumn, Slot};
use serde_json::{json, Value};

use crate::helpers::*;

/// A row's two secrets as stored (sealed), opened with the API's keyring.
fn opened(
    app: &TestApp,
    columns: (SecretColumn, SecretColumn),
    row: uuid::Uuid,
    stored: (String, Option<String>, bool),
) -> anyhow::Result<(String, Option<String>, bool)> {
    let keyring = app.keyring()?;
    let open = |column, value: &str| {
        keyring
            .open(Slot::new(column, row), value)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let (secret, previous, overlapping) = stored;
    anyhow::ensure!(!secret.contains("whsec_"), "stored in clear");
    Ok((
        open(columns.0, &secret)?,
        previous.map(|p| open(columns.1, &p)).transpose()?,
        overlapping,
    ))
}

async fn stored_default(
    app: &TestApp,
    merchant: &TestMerchant,
) -> anyhow::Result<(String, Option<String>, bool)> {
    let stored = sqlx::query_as(
        "SELECT secret, previous_secret, coalesce(previous_secret_expires_at > now() + interval '23 hours', false)
         FROM merchant_webhook_secrets WHERE merchant_id = $1",
    )
    .bind(merchant.id.as_uuid())
    .fetch_one(&app.pool)
    .await?;
    let columns = (
        SecretColumn::MerchantSecret,
        SecretColumn::MerchantPreviousSecret,
    );
    opened(app, columns, merchant.id.as_uuid(), stored)
}

#[tokio::test]
async fn the_default_secret_is_shown_to_its_owner_and_rotates_with_overlap() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;

    let response = app.get("/v1/webhook-secret", &merchant.key).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let shown: Value = response.json().await?;
    assert_eq!(shown["object"], "webhook_secret");
    assert_eq!(shown["endpoint_id"], Value::Null);
    let secret = shown["secret"].as_str().unwrap_or_default().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 6 + 32,
        "{shown}"
    );
    assert!(shown.get("previous_secret_expires_at").is_none(), "{shown}");

    // Created once, then the same; what the dispatcher signs with; each merchant its own.
    let again: Value = app
        .get("/v1/webhook-secret", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(again["secret"], secret.as_str());
    assert_eq!(stored_default(&app, &merchant).await?.0, secret);
    let theirs: Value = app
        .get("/v1/webhook-secret", &other.key)
        .send()
        .await?
        .json()
        .await?;
    assert_ne!(theirs["secret"], secret.as_str());

    // Rotate: a new secret; the old one stays valid for the overlap (24 h).
    let response = app
        .post("/v1/webhook-secret/rotate", &merchant.key, &json!({}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let rotated: Value = response.json().await?;
    let fresh = rotated["secret"].as_str().unwrap_or_default().to_owned();
    assert!(fresh.starts_with("whsec_") && fresh != secret, "{rotated}");
    let until = rotated["previous_secret_expires_at"]
        .as_str()
        .unwrap_or_default()
        .parse::<chrono::DateTime<chrono::Utc>>()?;
    assert!(
        until > chrono::Utc::now() + chrono::Duration::hours(23),
        "{rotated}"
    );
    assert_eq!(
        stored_default(&app, &merchant).await?,
        (fresh.clone(), Some(secret.clone()), true)
    );
    let now: Value = app
        .get("/v1/webhook-secret", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(now["secret"], fresh.as_str());
    // The other merchant's secret did not move.
    assert_eq!(
        stored_default(&app, &other).await?.0,
        theirs["secret"].as_str().unwrap_or_default()
    );

    for response in [
        app.client.get(app.url("/v1/webhook-secret")).send().await?,
        app.client
            .post(app.url("/v1/webhook-secret/rotate"))
            .send()
            .await?,
    ] {
        assert_eq!(response.status(), 401);
    }
    Ok(())
}

#[tokio::test]
async fn an_endpoint_secret_rotates_for_its_owner_only() -> TestResult {
    let app = spawn_loopback_app().await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;
    let created: Value = app
        .post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": "http://127.0.0.1:9/hooks"}),
        )
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let first = created["secret"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/webhook-endpoints/{id}/rotate-secret");

    let response = app.post(&path, &other.key, &json!({})).send().await?;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await?.1, "resource_missing");

    let response = app.post(&path, &merchant.key, &json!({})).send().await?;
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await?;
    assert_eq!(rotated["object"], "webhook_secret");
    assert_eq!(rotated["endpoint_id"], id.as_str());
    let second = rotated["secret"].as_str().unwrap_or_default().to_owned();
    assert!(second.starts_with("whsec_") && second != first, "{rotated}");
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );
    let stored: (String, Option<String>, bool) = sqlx::query_as(
        "SELECT secret, previous_secret, previous_secret_expires_at > now() + interval '23 hours'
         FROM webhook_endpoints WHERE merchant_id = $1",
    )
    .bind(merchant.id.as_uuid())
    .fetch_one(&app.pool)
    .await?;
    let columns = (
        SecretColumn::EndpointSecret,
        SecretColumn::EndpointPreviousSecret,
    );
    let row = paygate_core::domain::WebhookEndpointId::parse(&id)?.as_uuid();
    let stored = opened(&app, columns, row, stored)?;
    assert_eq!(stored, (second.clone(), Some(first.clone()), true));
    // The secret is not shown by the endpoint's other routes.
    let one = app
        .get(&format!("/v1/webhook-endpoints/{id}"), &merchant.key)
        .send()
        .await?
        .text()
        .await?;
    assert!(!one.contains("whsec_"), "{one}");

    // Malformed, unknown, deleted.
    let response = app
        .post(
            "/v1/webhook-endpoints/we_nope/rotate-secret",
            &merchant.key,
            &json!({}),
        )
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await?.2.as_deref(), Some("id"));
    let unknown = paygate_core::domain::WebhookEndpointId::new();
    let response = app
        .post(
            &format!("/v1/webhook-endpoints/{unknown}/rotate-secret"),
            &merchant.key,
            &json!({}),
        )
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    let response = app
        .client
        .delete(app.url(&format!("/v1/webhook-endpoints/{id}")))
        .bearer_auth(&merchant.key)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let response = app.post(&path, &merchant.key, &json!({})).send().await?;
    assert_eq!(response.status(), 404, "a deleted endpoint");
    Ok(())
}

#[tokio::test]
async fn after_rotations_deliveries_carry_both_secrets() -> TestResult {
    let app = spawn_loopback_app().await?;
    let merchant = app.merchant().await?;
    let created: Value = app
        .post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": "http://127.0.0.1:9/hooks"}),
        )
        .send()
        .await?
        .json()
        .await?;
    let endpoint_old = created["secret"].as_str().unwrap_or_default().to_owned();
    let endpoint_id = created["id"].as_str().unwrap_or_default().to_owned();
    let default_old: Value = app
        .get("/v1/webhook-secret", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    let default_old = default_old["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let endpoint_new: Value = app
        .post(
            &format!("/v1/webhook-endpoints/{endpoint_id}/rotate-secret"),
            &merchant.key,
            &json!({}),
        )
        .send()
        .await?
        .json()
        .await?;
    let endpoint_new = endpoint_new["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let default_new: Value = app
        .post("/v1/webhook-secret/rotate", &merchant.key, &json!({}))
        .send()
        .await?
        .json()
        .await?;
    let default_new = default_new["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // An event to both destinations, then a redelivery through the API.
    let mut body = deposit_body();
    body["callback_url"] = json!("http://127.0.0.1:9/cb");
    let tx: Value = app
        .post("/v1/deposits", &merchant.key, &body)
        .send()
        .await?
        .json()
        .await?;
    let transaction = TransactionId::parse(tx["id"].as_str().unwrap_or_default())?;
    let event = webhooks::event_id_for(transaction, TransactionStatus::Failed);
    webhooks::record_event(
        &app.pool,
        &NewEvent {
            id: event,
            merchant_id: merchant.id,
            transaction_id: transaction,
            event_type: EventType::TransactionFailed,
            payload: json!({"type": "transaction.failed", "id": event.to_string()}).to_string(),
            callback_url: Some("http://127.0.0.1:9/cb".to_owned()),
        },
    )
    .await?;
    let response = app
        .post(
            &format!("/v1/events/{event}/redeliver"),
            &merchant.key,
            &json!({}),
        )
        .send()
        .await?;
    assert_eq!(response.status(), 202);

    // What a dispatcher claims: the new secret first, then the previous one.
    let in_flight = InFlight::default();
    let claimed = webhooks::claim_due(
        &app.pool,
        &app.keyring()?,
        ClaimLimits {
            max: 16,
            lease: Duration::from_secs(60),
            per_destination: 16,
            per_merchant: 16,
            in_flight: &in_flight,
        },
    )
    .await?
    .deliveries;
    assert_eq!(claimed.len(), 4, "two generations, two destinations");
    for delivery in &claimed {
        let opened = delivery
            .secrets
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let secrets: Vec<&str> = opened.iter().map(|s| s.expose()).collect();
        let expected = if delivery.endpoint_id.is_some() {
            [endpoint_new.as_str(), endpoint_old.as_str()]
        } else {
            [default_new.as_str(), default_old.as_str()]
        };
        assert_eq!(secrets, expected, "{}", delivery.destination);
    }
    Ok(())
}

/// "Never return a secret to a key without the scope for it": every route that shows a
/// signing secret (or an endpoint) answers 403 `scope_missing` to a key holding every scope
/// but `webhooks:manage`, shows no secret, and changes nothing.
#[tokio::test]
async fn every_route_showing_a_secret_needs_the_webhooks_manage_scope() -> TestResult {
    use paygate_core::db::merchants;
    use paygate_core::domain::Scope;

    let app = spawn_loopback_app().await?;
    let merchant = app.merchant().await?;
    let (_, narrow) = merchants::create_scoped_api_key(
        &app.pool,
        merchant.id,
        &[Scope::Read, Scope::PaymentsWrite, Scope::PayoutsWrite],
    )
    .await?;
    let narrow = narrow.expose().to_owned();
    // An endpoint and a default secret exist (made with the full key).
    let created: Value = app
        .post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": "http://127.0.0.1:9/hooks"}),
        )
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let shown: Value = app
        .get("/v1/webhook-secret", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    let default_before = shown["secret"].as_str().unwrap_or_default().to_owned();
    let endpoint_before: String =
        sqlx::query_scalar("SELECT secret FROM webhook_endpoints WHERE merchant_id = $1")
            .bind(merchant.id.as_uuid())
            .fetch_one(&app.pool)
            .await?;

    let body = json!({"url": "http://127.0.0.1:9/other"});
    let requests = [
        (
            "POST /v1/webhook-endpoints",
            app.post("/v1/webhook-endpoints", &narrow, &body),
        ),
        (
            "GET /v1/webhook-endpoints",
            app.get("/v1/webhook-endpoints", &narrow),
        ),
        (
            "GET /v1/webhook-endpoints/{id}",
            app.get(&format!("/v1/webhook-endpoints/{id}"), &narrow),
        ),
        (
            "POST /v1/webhook-endpoints/{id}/rotate-secret",
            app.post(
                &format!("/v1/webhook-endpoints/{id}/rotate-secret"),
                &narrow,
                &json!({}),
            ),
        ),
        (
            "GET /v1/webhook-secret",
            app.get("/v1/webhook-secret", &narrow),
        ),
        (
            "POST /v1/webhook-secret/rotate",
            app.post("/v1/webhook-secret/rotate", &narrow, &json!({})),
        ),
    ];
    for (route, request) in requests {
        let response = request.send().await?;
        assert_eq!(response.status(), 403, "{route}");
        let text = response.text().await?;
        assert!(!text.contains("whsec_"), "{route}: {text}");
        let body: Value = serde_json::from_str(&text)?;
        assert_eq!(body["error"]["code"], "scope_missing", "{route}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("webhooks:manage"),
            "{route}: {body}"
        );
    }
    // Nothing was created or rotated.
    assert_eq!(app.count("webhook_endpoints").await?, 1);
    assert_eq!(stored_default(&app, &merchant).await?.0, default_before);
    let endpoint_after: String =
        sqlx::query_scalar("SELECT secret FROM webhook_endpoints WHERE merchant_id = $1")
            .bind(merchant.id.as_uuid())
            .fetch_one(&app.pool)
            .await?;
    assert_eq!(endpoint_after, endpoint_before);
    Ok(())
}
