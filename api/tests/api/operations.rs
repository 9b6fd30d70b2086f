use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn health_readiness_metrics_and_unknown_routes() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let health: Value = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(health["status"], "ok");

    let response = app.client.get(app.url("/readyz")).send().await?;
    assert_eq!(response.status(), 200);
    let ready: Value = response.json().await?;
    assert_eq!(ready["status"], "ok", "{ready}");
    assert_eq!(
        ready["checks"],
        serde_json::json!({"postgres": "ok", "redis": "ok", "kafka": "ok"})
    );

    app.get("/v1/transactions", &merchant.key).send().await?;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains(r#"route="/v1/transactions""#)
            && l.contains(r#"status="200""#)),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_request_duration_seconds_bucket"),
        "latency histogram"
    );
    let mut has_lag = false;
    for _ in 0..50 {
        let text = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        if text.contains("paygate_outbox_backlog") && text.contains("paygate_outbox_lag_seconds") {
            has_lag = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(has_lag, "outbox lag gauges");

    let response = app.client.get(app.url("/v2/nothing")).send().await?;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await?.1, "route_not_found");
    let response = app.client.put(app.url("/v1/deposits")).send().await?;
    assert_eq!(response.status(), 405);
    assert_eq!(error_of(response).await?.1, "method_not_allowed");
    Ok(())
}

/// The checked-in `api/openapi.json` is what the code generates, and is what is served.
#[tokio::test]
async fn openapi_document_is_fresh_and_served() -> TestResult {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = paygate_api::openapi::document_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n"))?;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in.trim_end() == generated.trim_end(),
        "api/openapi.json is stale: regenerate it with `UPDATE_OPENAPI=1 cargo test -p paygate-api --test api openapi` and commit it"
    );
    let doc: Value = serde_json::from_str(&generated)?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1"
    );
    for route in [
        "/v1/deposits",
        "/v1/withdrawals",
        "/v1/transactions/{id}",
        "/callbacks/{gateway}",
        "/readyz",
    ] {
        assert!(doc["paths"].get(route).is_some(), "{route} documented");
    }

    let app = spawn_app().await?;
    let served: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(served, doc);
    Ok(())
}
