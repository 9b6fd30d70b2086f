use paygate_core::db::webhook_endpoints;
use paygate_core::domain::WebhookEndpointId;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn register_list_delete_with_the_secret_shown_once() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;

    let response = app
        .post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": "https://merchant.example/hooks", "description": "prod"}),
        )
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await?;
    let secret = created["secret"].as_str().unwrap_or_default().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 6 + 32,
        "{created}"
    );
    let id = WebhookEndpointId::parse(created["id"].as_str().unwrap_or_default())?;
    assert_eq!(created["enabled"], true);

    // Stored for the dispatcher to sign with.
    let stored = webhook_endpoints::list_enabled(&app.pool, merchant.id).await?;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].secret.expose(), secret);

    // Never shown again.
    let listed = app
        .get("/v1/webhook-endpoints", &merchant.key)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        !listed.contains(&secret) && !listed.contains("whsec_"),
        "{listed}"
    );
    let one = app
        .get(&format!("/v1/webhook-endpoints/{id}"), &merchant.key)
        .send()
        .await?
        .text()
        .await?;
    assert!(!one.contains("whsec_"), "{one}");
    let listed: Value = serde_json::from_str(&listed)?;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1));

    // http only for 127.0.0.1; no private addresses; no credentials.
    for (url, ok) in [
        ("http://127.0.0.1:9999/hook", true),
        ("http://merchant.example/hook", false),
        ("https://10.1.2.3/hook", false),
        ("https://user:pw@merchant.example/hook", false),
        ("not a url", false),
    ] {
        let response = app
            .post("/v1/webhook-endpoints", &merchant.key, &json!({"url": url}))
            .send()
            .await?;
        if ok {
            assert_eq!(response.status(), 201, "{url}");
        } else {
            assert_eq!(response.status(), 400, "{url}");
            assert_eq!(error_of(response).await?.2.as_deref(), Some("url"), "{url}");
        }
    }
    let response = app
        .post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": "https://a.example", "events": []}),
        )
        .send()
        .await?;
    assert_eq!(error_of(response).await?.2.as_deref(), Some("events"));

    // Another merchant can neither see nor delete it.
    assert_eq!(
        app.get(&format!("/v1/webhook-endpoints/{id}"), &other.key)
            .send()
            .await?
            .status(),
        404
    );
    let response = app
        .client
        .delete(app.url(&format!("/v1/webhook-endpoints/{id}")))
        .bearer_auth(&other.key)
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
    let deleted: Value = response.json().await?;
    assert_eq!(deleted["deleted"], true);
    let response = app
        .client
        .delete(app.url(&format!("/v1/webhook-endpoints/{id}")))
        .bearer_auth(&merchant.key)
        .send()
        .await?;
    assert_eq!(response.status(), 404, "deleting twice");
    let remaining = webhook_endpoints::list_enabled(&app.pool, merchant.id).await?;
    assert!(remaining.iter().all(|e| e.id != id));
    Ok(())
}
