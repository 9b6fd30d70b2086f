//! The callback ingress with the real connectors and their own signing helpers: valid,
//! forged, tampered, malformed, wrong type and oversize callbacks in each of the three
//! formats, and a broker outage.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use paygate_core::bus::events::{Body, Envelope};
use paygate_core::bus::Topic;
use paygate_core::domain::{GatewayName, Money, TransactionId, TransactionKind};
use paygate_gateways::callback::{CallbackFields, SignedCallback};
use paygate_gateways::{
    json, protobuf, soap, GatewayRegistry, GatewaySettings, PaymentGateway, ReportedStatus, Secret,
};

use crate::helpers::*;

const WEBHOOK_SECRET: &str = "whsec_test_provider_secret";

#[derive(Clone, Copy, Debug)]
enum Format {
    Json,
    Soap,
    Protobuf,
}

impl Format {
    const ALL: [Format; 3] = [Format::Json, Format::Soap, Format::Protobuf];

    fn gateway(self) -> &'static str {
        match self {
            Format::Json => "psp-json",
            Format::Soap => "psp-soap",
            Format::Protobuf => "psp-proto",
        }
    }

    fn sign(self, secret: &str, fields: &CallbackFields) -> SignedCallback {
        let secret = Secret::new(secret);
        match self {
            Format::Json => json::signed_callback(&secret, fields),
            Format::Soap => soap::signed_callback(&secret, fields),
            Format::Protobuf => protobuf::signed_callback(&secret, fields),
        }
    }

    /// `body` signed correctly, whatever it contains.
    fn sign_raw(self, body: Vec<u8>) -> SignedCallback {
        let secret = Secret::new(WEBHOOK_SECRET);
        match self {
            Format::Json => json::sign_body(&secret, Bytes::from(body)),
            Format::Soap => soap::sign_body(&secret, Bytes::from(body), Utc::now()),
            Format::Protobuf => protobuf::sign_body(&secret, body),
        }
    }
}

fn registry() -> anyhow::Result<GatewayRegistry> {
    let mut gateways: Vec<Arc<dyn PaymentGateway>> = Vec::new();
    for format in Format::ALL {
        let name = GatewayName::parse(format.gateway())?;
        let url = url::Url::parse("http://127.0.0.1:1/")?;
        let kind = match format {
            Format::Json => "sandbox-json",
            Format::Soap => "sandbox-soap",
            Format::Protobuf => "sandbox-proto",
        };
        let settings = GatewaySettings::new(
            name,
            kind,
            url,
            Secret::new("sk_provider"),
            Secret::new(WEBHOOK_SECRET),
        );
        gateways.push(paygate_gateways::registry::build(settings)?);
    }
    Ok(GatewayRegistry::from_gateways(gateways))
}

fn fields(transaction_id: TransactionId) -> anyhow::Result<CallbackFields> {
    Ok(CallbackFields {
        transaction_id,
        kind: TransactionKind::Deposit,
        status: ReportedStatus::Succeeded,
        provider_reference: format!("prov_{}", &transaction_id.to_string()[4..16]),
        event_id: format!("evt_{}", uuid::Uuid::new_v4().simple()),
        money: Money::from_parts(1050, "USD")?,
        sent_at: Utc::now(),
    })
}

async fn send(
    app: &TestApp,
    gateway: &str,
    callback: &SignedCallback,
) -> anyhow::Result<reqwest::Response> {
    let mut request = app
        .client
        .post(app.url(&format!("/callbacks/{gateway}")))
        .header("content-type", &callback.content_type)
        .body(callback.body.clone());
    for (name, value) in &callback.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    Ok(request.send().await?)
}

#[tokio::test]
async fn each_format_valid_forged_malformed_wrong_type_and_oversize() -> TestResult {
    let app = spawn_with(|_| {}, registry()?).await?;
    let mut accepted = Vec::new();
    for format in Format::ALL {
        let gateway = format.gateway();
        let id = TransactionId::new();
        let valid = format.sign(WEBHOOK_SECRET, &fields(id)?);

        let response = send(&app, gateway, &valid).await?;
        assert_eq!(response.status(), 200, "{format:?} valid");
        accepted.push((id, gateway, valid.clone()));

        let forged = format.sign("whsec_not_the_secret", &fields(TransactionId::new())?);
        let response = send(&app, gateway, &forged).await?;
        assert_eq!(response.status(), 401, "{format:?} forged");
        assert_eq!(error_of(response).await?.0, "authentication_error");

        // A valid signature over other bytes: the body was tampered with.
        let mut tampered = valid.clone();
        let mut body = tampered.body.to_vec();
        if let Some(pos) = body.iter().position(|b| *b == b'5') {
            body[pos] = b'9';
        } else if let Some(last) = body.last_mut() {
            *last ^= 0x01;
        }
        tampered.body = Bytes::from(body);
        let response = send(&app, gateway, &tampered).await?;
        assert!(
            matches!(response.status().as_u16(), 400 | 401),
            "{format:?} tampered: {}",
            response.status()
        );
        if response.status() == 400 {
            // Only acceptable when the change broke the outer framing before any trust.
            assert!(
                matches!(format, Format::Protobuf),
                "{format:?} tampered must be 401"
            );
        }

        // Authentic but malformed: correctly signed garbage / truncated documents.
        let truncated = match format {
            Format::Soap => valid.body[..valid.body.len() / 2].to_vec(),
            Format::Json => valid.body[..valid.body.len() / 2].to_vec(),
            Format::Protobuf => b"\xff\xfe garbage, not a PaymentEvent".to_vec(),
        };
        let response = send(&app, gateway, &format.sign_raw(truncated)).await?;
        assert_eq!(response.status(), 400, "{format:?} malformed");
        assert_eq!(error_of(response).await?.1, "callback_malformed");

        // Unsigned garbage is never believed.
        let response = app
            .client
            .post(app.url(&format!("/callbacks/{gateway}")))
            .header("content-type", &valid.content_type)
            .body(vec![0xde_u8, 0xad, 0xbe, 0xef])
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        assert_eq!(status, 401, "{format:?} garbage: {status} {text}");
        assert!(
            !text.to_lowercase().contains("decode") && !text.contains("SignedEvent"),
            "{format:?} garbage: the answer shows decoder details: {text}"
        );

        let mut wrong_type = valid.clone();
        wrong_type.content_type = "text/plain".into();
        let response = send(&app, gateway, &wrong_type).await?;
        assert_eq!(response.status(), 415, "{format:?} wrong type");

        // Past the gateway's own limit (64 KiB) and past the API's (api.callback_max_body_bytes).
        for size in [100 * 1024, app.config.api.callback_max_body_bytes + 1] {
            let mut big = valid.clone();
            big.body = Bytes::from(vec![b' '; size]);
            let response = send(&app, gateway, &big).await?;
            assert_eq!(response.status(), 413, "{format:?} {size} bytes");
        }
    }

    // Exactly the valid ones were queued, keyed by their transaction, raw and whole.
    let messages = consume_topic(
        &app.config,
        Topic::CallbacksReceived,
        3,
        Duration::from_secs(30),
        Duration::from_secs(3),
    )
    .await?;
    assert_eq!(messages.len(), 3, "only authenticated callbacks are queued");
    for (id, gateway, valid) in accepted {
        let (_, payload) = messages
            .iter()
            .find(|(key, _)| *key == id.to_string())
            .ok_or_else(|| anyhow::anyhow!("no message keyed {id}"))?;
        let Some(Body::CallbackReceived(event)) = Envelope::decode_checked(payload)?.body else {
            anyhow::bail!("not a CallbackReceived");
        };
        assert_eq!(event.gateway, gateway);
        assert_eq!(event.content_type, valid.content_type);
        assert_eq!(event.body, valid.body.to_vec());
        for (name, value) in &valid.headers {
            assert_eq!(
                event.headers.get(&name.to_ascii_lowercase()),
                Some(value),
                "{gateway}: header {name}"
            );
        }
        assert!(event.received_at_unix_ms > 0);
    }
    // Nothing written to Postgres by the ingress.
    assert_eq!(app.count("transactions").await?, 0);
    assert_eq!(app.count("outbox").await?, 0);
    Ok(())
}

#[tokio::test]
async fn unknown_gateway_is_404() -> TestResult {
    let app = spawn_with(|_| {}, registry()?).await?;
    for path in ["/callbacks/nowhere", "/callbacks/NOT%20A%20NAME"] {
        let response = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await?;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(error_of(response).await?.1, "resource_missing");
    }
    Ok(())
}

/// With the broker unreachable, an authentic callback is not acknowledged: 503 with
/// Retry-After, so the provider sends it again.
#[tokio::test]
async fn broker_down_is_503_for_every_format() -> TestResult {
    let app = spawn_with(
        |config| {
            config.kafka.brokers = "127.0.0.1:1".into();
            config.kafka.message_timeout_ms = 1_000;
        },
        registry()?,
    )
    .await?;
    for format in Format::ALL {
        let valid = format.sign(WEBHOOK_SECRET, &fields(TransactionId::new())?);
        let response = send(&app, format.gateway(), &valid).await?;
        assert_eq!(response.status(), 503, "{format:?}");
        assert!(response.headers().get("retry-after").is_some());
        assert_eq!(error_of(response).await?.1, "service_unavailable");
        // Forged is still 401 first: authentication does not depend on the broker.
        let forged = format.sign("whsec_wrong", &fields(TransactionId::new())?);
        assert_eq!(
            send(&app, format.gateway(), &forged).await?.status(),
            401,
            "{format:?}"
        );
    }
    Ok(())
}

/// Issue 17, "per-gateway limits on callbacks": a flood aimed at one gateway is refused with
/// 429 and `Retry-After` before its body is read or its signature computed (an oversized
/// body and a valid signature past the limit are both 429, not 413 or 200), while another
/// gateway's callbacks from the same address are verified and queued as usual. Before the
/// limiter every one of these requests cost a read and an HMAC and was answered 401/413/200.
#[tokio::test]
async fn a_callback_flood_on_one_gateway_is_refused_before_verification() -> TestResult {
    const BURST: u32 = 3;
    let app = spawn_with(
        |config| {
            let mut table = paygate_core::config::GatewayConfig::new(
                "sandbox-json",
                "http://127.0.0.1:1/",
                "sk_provider",
            );
            table.callback_per_second = 1;
            table.callback_burst = BURST;
            config
                .gateways
                .insert(Format::Json.gateway().to_owned(), table);
        },
        registry()?,
    )
    .await?;
    let flooded = Format::Json;
    for _ in 0..BURST {
        let forged = flooded.sign("whsec_not_the_secret", &fields(TransactionId::new())?);
        let response = send(&app, flooded.gateway(), &forged).await?;
        assert_eq!(response.status(), 401, "within the burst: verified");
    }
    let forged = flooded.sign("whsec_not_the_secret", &fields(TransactionId::new())?);
    let response = send(&app, flooded.gateway(), &forged).await?;
    assert_eq!(response.status(), 429, "past the burst");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| (1..=2).contains(&s)),
        "{retry_after:?}"
    );
    assert_eq!(error_of(response).await?.0, "rate_limit_error");

    // Refused before anything is looked at: neither the size nor the signature decides.
    let mut oversized = flooded.sign(WEBHOOK_SECRET, &fields(TransactionId::new())?);
    oversized.body = Bytes::from(vec![b' '; app.config.api.callback_max_body_bytes + 1]);
    assert_eq!(
        send(&app, flooded.gateway(), &oversized).await?.status(),
        429
    );
    let valid = flooded.sign(WEBHOOK_SECRET, &fields(TransactionId::new())?);
    assert_eq!(send(&app, flooded.gateway(), &valid).await?.status(), 429);

    // The other gateways, same address, same moment: verified and queued as ever.
    for other in [Format::Soap, Format::Protobuf] {
        let id = TransactionId::new();
        let valid = other.sign(WEBHOOK_SECRET, &fields(id)?);
        let response = send(&app, other.gateway(), &valid).await?;
        assert_eq!(response.status(), 200, "{other:?} unaffected");
        let forged = other.sign("whsec_not_the_secret", &fields(TransactionId::new())?);
        assert_eq!(
            send(&app, other.gateway(), &forged).await?.status(),
            401,
            "{other:?} still verified"
        );
    }

    // The flooded gateway admits its provider again once the quota refills.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let valid = flooded.sign(WEBHOOK_SECRET, &fields(TransactionId::new())?);
    assert_eq!(send(&app, flooded.gateway(), &valid).await?.status(), 200);
    Ok(())
}

/// Issue 17: the protobuf callback route answered unauthenticated garbage with 400 and the
/// decoder's detail. Every unauthenticated body (not a frame, a truncated frame, a frame
/// without or with a wrong signature, a valid frame from another secret) is now one and the
/// same 401, saying nothing about the decoder; only an authentic frame reaches it.
#[tokio::test]
async fn protobuf_garbage_learns_nothing_about_the_decoder() -> TestResult {
    use prost::Message;
    let app = spawn_with(|_| {}, registry()?).await?;
    let gateway = Format::Protobuf.gateway();
    let frame = |payload: Vec<u8>, signature: Vec<u8>| {
        protobuf::wire::SignedEvent { payload, signature }.encode_to_vec()
    };
    let valid = Format::Protobuf.sign(WEBHOOK_SECRET, &fields(TransactionId::new())?);
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("not protobuf", b"\xff\xfe\xfd garbage".to_vec()),
        ("truncated varint", vec![0x0a, 0xff]),
        ("wrong wire type", vec![0x0d, 1, 2, 3, 4]),
        (
            "truncated frame",
            valid.body[..valid.body.len() / 2].to_vec(),
        ),
        ("no signature", frame(b"\x08\x01".to_vec(), Vec::new())),
        ("wrong signature", frame(b"\xff\xff".to_vec(), vec![7; 32])),
        (
            "another secret",
            Format::Protobuf
                .sign("whsec_not_the_secret", &fields(TransactionId::new())?)
                .body
                .to_vec(),
        ),
    ];
    let mut answers = std::collections::BTreeSet::new();
    for (what, body) in garbage {
        let response = app
            .client
            .post(app.url(&format!("/callbacks/{gateway}")))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        assert_eq!(status, 401, "{what}: {text}");
        let lower = text.to_lowercase();
        for leak in [
            "decode",
            "signedevent",
            "wire type",
            "buffer",
            "varint",
            "prost",
        ] {
            assert!(!lower.contains(leak), "{what}: {leak} in {text}");
        }
        answers.insert(text);
    }
    assert_eq!(answers.len(), 1, "one answer for every kind: {answers:?}");
    Ok(())
}
