//! Issue 17's first findings, each as the attack that used to work: secrets carried from a
//! callback's headers onto Kafka, a NUL in `metadata` answered 500, a refusal naming the
//! internal address a webhook host resolved to, a port outside the policy, unbounded
//! redeliveries, and the endpoint cap raced by concurrent creates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use paygate_core::bus::events::{Body, Envelope};
use paygate_core::bus::Topic;
use paygate_core::db::webhooks;
use paygate_core::domain::{EventId, GatewayName, Money, TransactionId, TransactionKind};
use paygate_gateways::callback::{CallbackFields, SignedCallback};
use paygate_gateways::{
    json, protobuf, soap, CallbackRequest, GatewayRegistry, GatewaySettings, PaymentGateway,
    ReportedStatus, Secret,
};
use serde_json::{json, Value};

use crate::helpers::*;

const WEBHOOK_SECRET: &str = "whsec_hardening_provider";
const GATEWAYS: [(&str, &str); 3] = [
    ("psp-json", "sandbox-json"),
    ("psp-soap", "sandbox-soap"),
    ("psp-proto", "sandbox-proto"),
];

fn connectors() -> anyhow::Result<Vec<Arc<dyn PaymentGateway>>> {
    GATEWAYS
        .iter()
        .map(|(name, kind)| {
            let settings = GatewaySettings::new(
                GatewayName::parse(name)?,
                kind,
                url::Url::parse("http://127.0.0.1:1/")?,
                Secret::new("sk_provider"),
                Secret::new(WEBHOOK_SECRET),
            );
            Ok(paygate_gateways::registry::build(settings)?)
        })
        .collect()
}

fn signed(kind: &str, id: TransactionId) -> anyhow::Result<SignedCallback> {
    let fields = CallbackFields {
        transaction_id: id,
        kind: TransactionKind::Deposit,
        status: ReportedStatus::Succeeded,
        provider_reference: format!("prov_{}", &id.to_string()[4..16]),
        event_id: format!("evt_{}", uuid::Uuid::new_v4().simple()),
        money: Money::from_parts(1050, "USD")?,
        sent_at: Utc::now(),
    };
    let secret = Secret::new(WEBHOOK_SECRET);
    Ok(match kind {
        "sandbox-json" => json::signed_callback(&secret, &fields),
        "sandbox-soap" => soap::signed_callback(&secret, &fields),
        _ => protobuf::signed_callback(&secret, &fields),
    })
}

/// Item 1: a provider (or whatever proxy sits in front of paygate) sends `authorization`,
/// `cookie` and other headers with a callback. They used to be copied into the
/// `callbacks.received` event, and from there into dead letters. Now only the headers the
/// connector declares it verifies with are queued, and the queued callback still verifies
/// exactly as the callback processor re-verifies it.
#[tokio::test]
async fn callback_secrets_in_headers_never_reach_kafka() -> TestResult {
    let gateways = connectors()?;
    let app = spawn_with(|_| {}, GatewayRegistry::from_gateways(gateways.clone())).await?;
    let secrets = [
        ("authorization", "Bearer sk_live_hardening_secret"),
        ("cookie", "session=hardening_cookie_secret"),
        ("x-api-key", "hardening_api_key_secret"),
        ("proxy-authorization", "Basic aGFyZGVuaW5nOnNlY3JldA=="),
    ];
    let mut sent = Vec::new();
    for (gateway, kind) in GATEWAYS {
        let id = TransactionId::new();
        let callback = signed(kind, id)?;
        let mut request = app
            .client
            .post(app.url(&format!("/callbacks/{gateway}")))
            .header("content-type", &callback.content_type)
            .body(callback.body.clone());
        for (name, value) in callback.headers.iter() {
            request = request.header(name.as_str(), value.as_str());
        }
        for (name, value) in secrets {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        assert_eq!(response.status(), 200, "{gateway}");
        sent.push((id, gateway, callback));
    }

    let messages = consume_topic(
        &app.config,
        Topic::CallbacksReceived,
        sent.len(),
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await?;
    assert_eq!(messages.len(), sent.len());
    for (id, gateway, callback) in sent {
        let (_, payload) = messages
            .iter()
            .find(|(key, _)| *key == id.to_string())
            .ok_or_else(|| anyhow::anyhow!("no event for {gateway}"))?;
        for (_, value) in secrets {
            assert!(
                !payload.windows(value.len()).any(|w| w == value.as_bytes()),
                "{gateway}: {value} reached Kafka"
            );
        }
        let Some(Body::CallbackReceived(event)) = Envelope::decode_checked(payload)?.body else {
            anyhow::bail!("{gateway}: not a CallbackReceived");
        };
        let name = GatewayName::parse(gateway)?;
        let connector = gateways
            .iter()
            .find(|g| *g.name() == name)
            .ok_or_else(|| anyhow::anyhow!("no connector {gateway}"))?;
        let declared = connector.callback_headers();
        for name in event.headers.keys() {
            assert!(
                declared.contains(&name.as_str()),
                "{gateway}: undeclared header {name} queued"
            );
        }
        for (name, value) in &callback.headers {
            assert_eq!(event.headers.get(name), Some(value), "{gateway}: {name}");
        }
        // Re-verified as the callback processor does, from the event alone.
        let request = CallbackRequest {
            body: Bytes::from(event.body.clone()),
            content_type: Some(event.content_type.clone()).filter(|c| !c.is_empty()),
            headers: event
                .headers
                .clone()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            received_at: DateTime::from_timestamp_millis(event.received_at_unix_ms)
                .ok_or_else(|| anyhow::anyhow!("receipt time"))?,
            path: None,
        };
        let outcome = connector
            .handle_callback(&request)
            .map_err(|e| anyhow::anyhow!("{gateway}: queued callback no longer verifies: {e}"))?
            .payment()
            .ok_or_else(|| anyhow::anyhow!("{gateway}: not a payment callback"))?;
        assert_eq!(outcome.transaction_id, id, "{gateway}");
        assert_eq!(outcome.status, ReportedStatus::Succeeded, "{gateway}");
    }
    app.stop().await;
    Ok(())
}

/// Item 2: Postgres `jsonb` refuses U+0000; a NUL in `metadata` used to be a 500 (which
/// tells the client to retry the same body forever). Now a 400 naming `metadata`, and
/// nothing is stored.
#[tokio::test]
async fn a_nul_character_in_metadata_is_a_400_naming_metadata() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    for path in ["/v1/deposits", "/v1/withdrawals"] {
        for metadata in [
            json!({"note": "before\u{0}after"}),
            json!({"k\u{0}ey": "value"}),
            json!({"\u{0}": true}),
            json!({"nested": {"deep": "\u{0}"}}),
        ] {
            let mut body = deposit_body();
            body["metadata"] = metadata.clone();
            let response = app.post(path, &merchant.key, &body).send().await?;
            assert_eq!(response.status(), 400, "{path} {metadata}");
            let (kind, code, param) = error_of(response).await?;
            assert_eq!(
                (kind.as_str(), code.as_str(), param.as_deref()),
                (
                    "invalid_request_error",
                    "metadata_invalid",
                    Some("metadata")
                ),
                "{path} {metadata}"
            );
        }
    }
    assert_eq!(app.count("transactions").await?, 0);
    // The same body without the NUL is accepted.
    let mut body = deposit_body();
    body["metadata"] = json!({"note": "before after"});
    let response = app
        .post("/v1/deposits", &merchant.key, &body)
        .send()
        .await?;
    assert!(response.status().is_success(), "{}", response.status());
    app.stop().await;
    Ok(())
}

/// Item 3: registering a webhook on a name that resolves to an internal address used to
/// answer with that address ("resolves to 127.0.0.1, a loopback address"): an oracle for
/// internal DNS. The refusal is now generic. A port outside `destinations.allowed_ports`
/// is refused too.
#[tokio::test]
async fn webhook_url_refusals_do_not_reveal_internal_addresses_and_ports_are_policed() -> TestResult
{
    let app = spawn_with(
        |config| {
            config.destinations.allow_loopback = false;
            config.destinations.allow_http = true;
        },
        GatewayRegistry::default(),
    )
    .await?;
    let merchant = app.merchant().await?;
    let register = |url: &str| {
        app.post("/v1/webhook-endpoints", &merchant.key, &json!({"url": url}))
            .send()
    };
    for url in ["http://localhost/hook", "https://localhost:8443/hook"] {
        let response = register(url).await?;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(body["error"]["param"], "url", "{body}");
        assert!(message.contains("not a publicly routable"), "{message}");
        for leak in ["127.0.0.1", "::1", "loopback"] {
            assert!(!message.contains(leak), "{url}: {message}");
        }
    }
    for url in [
        "https://8.8.8.8:6379/hook",
        "http://8.8.8.8:22/",
        "https://8.8.8.8:9092/",
    ] {
        let response = register(url).await?;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"]["code"], "url_invalid", "{body}");
        assert_eq!(body["error"]["param"], "url", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("port"), "{message}");
    }
    // The ports of the policy are admitted (an IP literal: no lookup, nothing sent).
    let response = register("https://8.8.8.8:8443/hook").await?;
    assert_eq!(response.status(), 201);
    assert_eq!(app.count("webhook_endpoints").await?, 1);
    app.stop().await;
    Ok(())
}

/// A deposit with its `transaction.succeeded` event recorded (`deposit_with_event`).
async fn recorded_event(app: &TestApp, merchant: &TestMerchant) -> anyhow::Result<EventId> {
    Ok(deposit_with_event(app, merchant).await?.1)
}

/// Item 5a: `POST /v1/events/{id}/redeliver` used to schedule a fresh delivery every time
/// it was called. Now at most 5 per event per hour; the sixth is a 429 with the error
/// shape and a `Retry-After`, and schedules nothing. Another event is not affected.
#[tokio::test]
async fn redeliveries_of_an_event_are_capped_per_hour() -> TestResult {
    let app = loopback_app_without_rate_limits().await?;
    let merchant = app.merchant().await?;
    let event = recorded_event(&app, &merchant).await?;
    let path = format!("/v1/events/{event}/redeliver");
    for n in 1..=webhooks::REDELIVERIES_PER_HOUR {
        let response = app.post(&path, &merchant.key, &json!({})).send().await?;
        assert_eq!(response.status(), 202, "redelivery {n}");
    }
    let before = app.count("webhook_deliveries").await?;
    for _ in 0..3 {
        let response = app.post(&path, &merchant.key, &json!({})).send().await?;
        assert_eq!(response.status(), 429);
        let retry_after: u64 = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        assert!((1..=3_600).contains(&retry_after), "{retry_after}");
        let (kind, code, _) = error_of(response).await?;
        assert_eq!(
            (kind.as_str(), code.as_str()),
            ("rate_limit_error", "redelivery_limit_reached")
        );
    }
    assert_eq!(
        app.count("webhook_deliveries").await?,
        before,
        "a refused redelivery schedules nothing"
    );
    let other = recorded_event(&app, &merchant).await?;
    let response = app
        .post(
            &format!("/v1/events/{other}/redeliver"),
            &merchant.key,
            &json!({}),
        )
        .send()
        .await?;
    assert_eq!(response.status(), 202, "the cap is per event");
    app.stop().await;
    Ok(())
}

/// Item 5b: the 16-endpoint cap was a count then an insert: concurrent creates all saw
/// room. Now 32 concurrent creates leave exactly 16 endpoints, and the other 16 are told
/// the limit was reached.
#[tokio::test]
async fn concurrent_endpoint_creates_cannot_pass_the_cap() -> TestResult {
    let app = loopback_app_without_rate_limits().await?;
    let merchant = app.merchant().await?;
    let requests = (0..32).map(|i| {
        app.post(
            "/v1/webhook-endpoints",
            &merchant.key,
            &json!({"url": format!("http://127.0.0.1:9/hook-{i}")}),
        )
        .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut created = 0;
    let mut limited = 0;
    for response in responses {
        let response = response?;
        match response.status().as_u16() {
            201 => created += 1,
            400 => {
                assert_eq!(error_of(response).await?.1, "endpoint_limit_reached");
                limited += 1;
            }
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    assert_eq!((created, limited), (16, 16));
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE merchant_id = $1")
            .bind(merchant.id.as_uuid())
            .fetch_one(&app.pool)
            .await?;
    assert_eq!(stored, 16);
    app.stop().await;
    Ok(())
}

/// The app with loopback destinations allowed and a per-key limit no test here reaches.
async fn loopback_app_without_rate_limits() -> anyhow::Result<TestApp> {
    spawn_with(
        |config| {
            config.destinations.allow_loopback = true;
            config.destinations.allow_http = true;
            config.api.rate_limit_per_second = 1_000;
            config.api.rate_limit_burst = 1_000;
        },
        GatewayRegistry::default(),
    )
    .await
}
