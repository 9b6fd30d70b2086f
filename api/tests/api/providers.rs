//! Real providers' callbacks at the HTTP door, with their documented samples (the
//! conformance fixtures in `gateways/fixtures/`): Paystack's genuine `charge.success` is
//! queued, an authentic `subscription.create` is answered 200 and ignored, a tampered one
//! is 401; M-Pesa's unsigned callbacks come only on their per-payment path, whose token
//! must match.

use std::path::PathBuf;
use std::sync::Arc;

use paygate_core::domain::GatewayName;
use paygate_gateways::registry::GatewaySettings;
use paygate_gateways::{GatewayRegistry, PaymentGateway, Secret};
use serde_json::Value;

use crate::helpers::*;

fn fixtures(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gateways/fixtures")
        .join(kind)
}

fn read(path: PathBuf) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// The connector as its fixture folder configures it, named `kind`.
fn gateway(kind: &str) -> anyhow::Result<Arc<dyn PaymentGateway>> {
    let table = read(fixtures(kind).join("gateway.json"))?;
    let text = |k: &str| table[k].as_str().unwrap_or_default().to_owned();
    let mut settings = GatewaySettings::new(
        GatewayName::parse(kind)?,
        kind,
        url::Url::parse("http://127.0.0.1:1/")?,
        Secret::new(text("secret_key")),
        Secret::new(text("webhook_secret")),
    );
    if let Some(extra) = table["extra"].as_object() {
        settings.extra = extra.clone().into_iter().collect();
    }
    Ok(paygate_gateways::registry::build(settings)?)
}

/// Posts one callback fixture of `kind` to `path` (default: the fixture's own door);
/// the HTTP status.
async fn deliver(app: &TestApp, kind: &str, name: &str, path: Option<&str>) -> anyhow::Result<u16> {
    let fixture = read(
        fixtures(kind)
            .join("callbacks")
            .join(format!("{name}.json")),
    )?;
    let door = match (path, fixture["path"].as_str()) {
        (Some(path), _) => format!("/callbacks/{kind}{path}"),
        (None, Some(rest)) => format!("/callbacks/{kind}/{rest}"),
        (None, None) => format!("/callbacks/{kind}"),
    };
    let mut request = app
        .client
        .post(app.url(&door))
        .body(fixture["body"].as_str().unwrap_or_default().to_owned());
    if let Some(content_type) = fixture["content_type"].as_str() {
        request = request.header("content-type", content_type);
    }
    if let Some(headers) = fixture["headers"].as_object() {
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str().unwrap_or_default());
        }
    }
    Ok(request.send().await?.status().as_u16())
}

async fn app() -> anyhow::Result<TestApp> {
    let registry = GatewayRegistry::from_gateways(vec![gateway("paystack")?, gateway("mpesa")?]);
    spawn_with(|_| {}, registry).await
}

#[tokio::test]
async fn paystack_samples_are_queued_ignored_or_refused() -> anyhow::Result<()> {
    let app = app().await?;
    assert_eq!(
        deliver(&app, "paystack", "charge_success", None).await?,
        200
    );
    assert_eq!(
        deliver(&app, "paystack", "subscription_create", None).await?,
        200
    );
    assert_eq!(
        deliver(&app, "paystack", "tampered_amount", None).await?,
        401
    );
    assert_eq!(
        deliver(&app, "paystack", "missing_signature", None).await?,
        401
    );
    // A signed provider has no per-payment door.
    assert_eq!(
        deliver(&app, "paystack", "charge_success", Some("/txn-x/0123")).await?,
        404
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn mpesa_callbacks_come_only_through_their_secret_path() -> anyhow::Result<()> {
    let app = app().await?;
    assert_eq!(deliver(&app, "mpesa", "stk_paid", None).await?, 200);
    assert_eq!(deliver(&app, "mpesa", "wrong_path_token", None).await?, 401);
    assert_eq!(
        deliver(&app, "mpesa", "token_of_another_payment", None).await?,
        401
    );
    // Without the path, an unsigned provider's callback has no door at all.
    assert_eq!(deliver(&app, "mpesa", "stk_paid", Some("")).await?, 404);
    app.stop().await;
    Ok(())
}
