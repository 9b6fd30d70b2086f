//! `GET /v1/transactions/{id}/events` and `POST /v1/events/{id}/redeliver`. The dispatcher
//! is not running here: events are recorded as its handler records them, and the test reads
//! the delivery rows a redelivery schedules.

use paygate_core::domain::{EventId, TransactionId};
use serde_json::{json, Value};

use crate::helpers::*;

/// A deposit with a `callback_url` and one registered endpoint (both loopback, never
/// delivered to: no dispatcher runs), and its `transaction.succeeded` event recorded.
async fn transaction_with_event(
    app: &TestApp,
    merchant: &TestMerchant,
) -> anyhow::Result<(TransactionId, EventId)> {
    let response = app
        .post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": "http://127.0.0.1:9/hooks"}),
        )
        .send()
        .await?;
    anyhow::ensure!(response.status() == 201, "register: {}", response.status());
    let (transaction, event, deliveries) = deposit_with_event(app, merchant).await?;
    anyhow::ensure!(deliveries == 2, "{deliveries} deliveries scheduled");
    Ok((transaction, event))
}

async fn deliveries_of(
    app: &TestApp,
    event: EventId,
    generation: i32,
) -> anyhow::Result<Vec<(String, String, bool)>> {
    Ok(sqlx::query_as(
        "SELECT destination, state, next_attempt_at <= now() FROM webhook_deliveries
         WHERE event_id = $1 AND generation = $2 ORDER BY destination",
    )
    .bind(event.as_uuid())
    .bind(generation)
    .fetch_all(&app.pool)
    .await?)
}

#[tokio::test]
async fn a_transactions_events_are_listed_for_its_merchant_only() -> TestResult {
    let app = spawn_loopback_app().await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;
    let created: Value = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .send()
        .await?
        .json()
        .await?;
    let pending = created["id"].as_str().unwrap_or_default().to_owned();
    let none: Value = app
        .get(&format!("/v1/transactions/{pending}/events"), &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(none, json!({"object": "list", "data": []}));

    let (transaction, event) = transaction_with_event(&app, &merchant).await?;
    let path = format!("/v1/transactions/{transaction}/events");
    let response = app.get(&path, &merchant.key).send().await?;
    assert_eq!(response.status(), 200);
    let listed: Value = response.json().await?;
    let data = listed["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 1, "{listed}");
    assert_eq!(data[0]["id"], event.to_string());
    assert_eq!(data[0]["object"], "event");
    assert_eq!(data[0]["type"], "transaction.succeeded");
    assert_eq!(data[0]["transaction_id"], transaction.to_string());
    assert_eq!(data[0]["payload"]["id"], event.to_string());
    assert_eq!(data[0]["payload"]["data"]["id"], transaction.to_string());

    // Another merchant's transaction, an unknown one, a malformed id.
    let response = app.get(&path, &other.key).send().await?;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await?.1, "resource_missing");
    let response = app
        .get(
            &format!("/v1/transactions/{}/events", TransactionId::new()),
            &merchant.key,
        )
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    let response = app
        .get("/v1/transactions/txn_nope/events", &merchant.key)
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await?.2.as_deref(), Some("id"));
    let response = app.client.get(app.url(&path)).send().await?;
    assert_eq!(response.status(), 401);
    Ok(())
}

#[tokio::test]
async fn redeliver_schedules_a_fresh_delivery_to_each_destination() -> TestResult {
    let app = spawn_loopback_app().await?;
    let merchant = app.merchant().await?;
    let (_, event) = transaction_with_event(&app, &merchant).await?;
    let first = deliveries_of(&app, event, 0).await?;
    assert_eq!(first.len(), 2);
    let before = app.count("webhook_deliveries").await?;

    let path = format!("/v1/events/{event}/redeliver");
    let response = app.post(&path, &merchant.key, &json!({})).send().await?;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await?;
    assert_eq!(body["object"], "redelivery");
    assert_eq!(body["event_id"], event.to_string());
    assert_eq!(body["generation"], 1);
    assert_eq!(body["destinations_scheduled"], 2);

    // New delivery rows, one per destination, pending and due at once.
    assert_eq!(app.count("webhook_deliveries").await?, before + 2);
    let replay = deliveries_of(&app, event, 1).await?;
    assert_eq!(replay.len(), 2, "{replay:?}");
    assert!(
        replay
            .iter()
            .all(|(_, state, due)| state == "pending" && *due),
        "{replay:?}"
    );
    let destinations: Vec<&str> = replay.iter().map(|(d, _, _)| d.as_str()).collect();
    assert!(
        destinations.contains(&"callback:127.0.0.1:9"),
        "{destinations:?}"
    );
    assert!(
        destinations.iter().any(|d| d.starts_with("we_")),
        "{destinations:?}"
    );

    // Again: the next generation. No body at all is fine too.
    let response = app
        .client
        .post(app.url(&path))
        .bearer_auth(&merchant.key)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await?;
    assert_eq!(body["generation"], 2);
    assert_eq!(deliveries_of(&app, event, 2).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn redeliver_refuses_unknown_foreign_and_malformed_events() -> TestResult {
    let app = spawn_loopback_app().await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;
    let (_, event) = transaction_with_event(&app, &merchant).await?;
    let before = app.count("webhook_deliveries").await?;

    for (key, id) in [
        (&other.key, event.to_string()),
        (&merchant.key, EventId::new().to_string()),
    ] {
        let response = app
            .post(&format!("/v1/events/{id}/redeliver"), key, &json!({}))
            .send()
            .await?;
        assert_eq!(response.status(), 404, "{id}");
        let (kind, code, param) = error_of(response).await?;
        assert_eq!(
            (kind.as_str(), code.as_str(), param),
            ("invalid_request_error", "resource_missing", None)
        );
    }
    for malformed in ["evt_nope", "txn_0192f4a1c2b37d8e9f0a1b2c3d4e5f60", "123"] {
        let response = app
            .post(
                &format!("/v1/events/{malformed}/redeliver"),
                &merchant.key,
                &json!({}),
            )
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{malformed}");
        let (_, code, param) = error_of(response).await?;
        assert_eq!(code, "id_invalid");
        assert_eq!(param.as_deref(), Some("id"));
    }
    let response = app
        .client
        .post(app.url(&format!("/v1/events/{event}/redeliver")))
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    assert_eq!(
        app.count("webhook_deliveries").await?,
        before,
        "nothing scheduled"
    );
    Ok(())
}
