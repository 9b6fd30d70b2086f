use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use paygate_core::db::webhook_endpoints;
use paygate_core::domain::WebhookEndpointId;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn register_list_delete_with_the_secret_shown_once() -> TestResult {
    let app = spawn_loopback_app().await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;

    let response = app
        .post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": "https://127.0.0.1:9443/hooks", "description": "prod"}),
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
    let stored = webhook_endpoints::list_enabled(&app.pool, &app.keyring()?, merchant.id).await?;
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

    // The dispatcher's policy (here loopback and http allowed): loopback by IP or by name;
    // no other internal address, no credentials, no unresolvable name.
    for (url, ok) in [
        ("http://127.0.0.1:9999/hook", true),
        ("http://localhost:9999/hook", true),
        ("http://merchant.invalid/hook", false),
        ("https://10.1.2.3/hook", false),
        ("http://169.254.169.254/latest/meta-data/", false),
        ("https://user:pw@127.0.0.1/hook", false),
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
            &json!({"url": "https://127.0.0.1", "events": []}),
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
    let remaining =
        webhook_endpoints::list_enabled(&app.pool, &app.keyring()?, merchant.id).await?;
    assert!(remaining.iter().all(|e| e.id != id));
    Ok(())
}

/// A TCP listener on loopback that counts the connections it gets, to show the guard refuses
/// before connecting anywhere.
async fn tripwire() -> anyhow::Result<(u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    Ok((port, hits, task))
}

#[tokio::test]
async fn the_strict_policy_refuses_internal_destinations_without_connecting() -> TestResult {
    let app = spawn_strict_app().await?;
    let merchant = app.merchant().await?;
    let (port, hits, tripwire) = tripwire().await?;

    // Refused by the SSRF guard (never connected to: all but the first two are not even
    // loopback, and the two loopback ones point at the tripwire).
    let refused = [
        (format!("https://127.0.0.1:{port}/hook"), "loopback"),
        // A name's refusal never says what it resolved to (issue 17).
        (
            format!("https://localhost:{port}/hook"),
            "not a publicly routable",
        ),
        ("https://10.0.0.1/hook".to_owned(), "private"),
        (
            "https://169.254.169.254/latest/meta-data/".to_owned(),
            "cloud metadata",
        ),
        ("https://[::ffff:10.0.0.1]/hook".to_owned(), "private"),
        (format!("http://127.0.0.1:{port}/hook"), "https"),
    ];
    for (url, why) in &refused {
        let response = app
            .post("/v1/webhook-endpoints", &merchant.key, &json!({"url": url}))
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["param"], "url", "{url}: {body}");
        assert_eq!(body["error"]["code"], "url_invalid", "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{url}: {message}");

        let mut deposit = deposit_body();
        deposit["callback_url"] = json!(url);
        let response = app
            .post("/v1/deposits", &merchant.key, &deposit)
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["param"], "callback_url", "{url}: {body}");
        assert_eq!(body["error"]["code"], "url_invalid", "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{url}: {message}");
    }

    // A name that does not resolve: 400 too, saying so.
    let response = app
        .post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": "https://merchant.invalid/hook"}),
        )
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["param"], "url", "{body}");
    assert_eq!(body["error"]["code"], "url_unresolvable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be resolved")),
        "{body}"
    );
    let mut deposit = deposit_body();
    deposit["callback_url"] = json!("https://merchant.invalid/cb");
    let response = app
        .post("/v1/deposits", &merchant.key, &deposit)
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await?.2.as_deref(), Some("callback_url"));

    // Nothing written, nothing connected to.
    assert_eq!(app.count("webhook_endpoints").await?, 0);
    assert_eq!(app.count("transactions").await?, 0);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the guard connected");
    tripwire.abort();
    Ok(())
}

#[tokio::test]
async fn the_api_accepts_what_the_dispatcher_policy_allows() -> TestResult {
    // The same URL is refused or accepted by the one policy the dispatcher also uses.
    let strict = spawn_strict_app().await?;
    let dev = spawn_loopback_app().await?;
    let url = "http://127.0.0.1:9/hook";
    for (app, expected) in [(&strict, 400), (&dev, 201)] {
        let merchant = app.merchant().await?;
        let response = app
            .post("/v1/webhook-endpoints", &merchant.key, &json!({"url": url}))
            .send()
            .await?;
        assert_eq!(response.status(), expected);
        let mut deposit = deposit_body();
        deposit["callback_url"] = json!(url);
        let response = app
            .post("/v1/deposits", &merchant.key, &deposit)
            .send()
            .await?;
        assert_eq!(response.status(), if expected == 201 { 202 } else { 400 });
    }
    // Under the relaxed policy loopback only: private and metadata addresses stay refused.
    let merchant = dev.merchant().await?;
    for url in [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
    ] {
        let response = dev
            .post("/v1/webhook-endpoints", &merchant.key, &json!({"url": url}))
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{url}");
        assert_eq!(error_of(response).await?.2.as_deref(), Some("url"));
    }
    Ok(())
}
