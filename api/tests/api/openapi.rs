//! The OpenAPI document is exactly as strict as the API (issue 17): every status a route can
//! answer is documented (408 everywhere, 413/415 on every JSON body, 429 with `Retry-After`
//! on every authenticated route and callback route), every typed id has its pattern, and
//! every bound is the one the validation enforces (read here from the same constants). The
//! served document names each configured gateway's callback route with exactly the media
//! types its connector takes, and the API behaves as it says.

use std::sync::Arc;

use paygate_api::idempotency;
use paygate_api::routes::transactions::MAX_LIMIT;
use paygate_api::validation::{
    DESCRIPTION_MAX_CHARS, METADATA_MAX_KEYS, METADATA_MAX_KEY_CHARS, REFUND_REASON_MAX_CHARS,
};
use paygate_core::domain::{CustomerReference, GatewayName};
use paygate_gateways::{GatewayRegistry, GatewaySettings, PaymentGateway, Secret};
use serde_json::Value;

use crate::helpers::*;

fn generic() -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&paygate_api::openapi::document_json())?)
}

/// Follows one `$ref` into `components.schemas`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Every (path, method, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            if let Some(item) = item.as_object() {
                for (method, operation) in item {
                    all.push((path.clone(), method.clone(), operation.clone()));
                }
            }
        }
    }
    all
}

fn has_retry_after(response: &Value) -> bool {
    response["headers"]["Retry-After"]["schema"]["type"] == "integer"
}

#[tokio::test]
async fn openapi_documents_every_status_with_retry_after() -> TestResult {
    let doc = generic()?;
    let all = operations(&doc);
    assert!(all.len() >= 20, "{} operations", all.len());
    for (path, method, operation) in &all {
        let responses = &operation["responses"];
        let label = format!("{method} {path}");
        assert!(responses.get("408").is_some(), "{label}: 408");
        let secured = operation.get("security").is_some();
        let callback = path.starts_with("/callbacks/");
        if secured {
            for status in ["401", "403", "429", "503"] {
                assert!(responses.get(status).is_some(), "{label}: {status}");
            }
        }
        if secured || callback {
            assert!(
                has_retry_after(&responses["429"]),
                "{label}: 429 Retry-After"
            );
        }
        if secured {
            assert!(
                has_retry_after(&responses["503"]),
                "{label}: 503 Retry-After"
            );
        }
        let json_body = operation["requestBody"]["content"]
            .get("application/json")
            .is_some();
        if json_body || callback {
            for status in ["413", "415"] {
                assert!(responses.get(status).is_some(), "{label}: {status}");
            }
        }
    }
    // The finding as filed: 413 and 415 were missing here.
    let create = &doc["paths"]["/v1/webhook-endpoints"]["post"]["responses"];
    assert!(create.get("413").is_some() && create.get("415").is_some());
    Ok(())
}

#[tokio::test]
async fn openapi_ids_and_bounds_are_the_validations() -> TestResult {
    let doc = generic()?;
    for (path, method, operation) in operations(&doc) {
        let label = format!("{method} {path}");
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().unwrap_or_default();
            let schema = resolve(&doc, &parameter["schema"]);
            match name {
                "id" | "starting_after" => {
                    let pattern = schema["pattern"].as_str().unwrap_or_default();
                    assert!(
                        pattern.starts_with('^') && pattern.contains('_') && pattern.ends_with('$'),
                        "{label}: {name} has an id pattern, got {schema}"
                    );
                }
                "limit" => {
                    assert_eq!(schema["minimum"], 1, "{label}");
                    assert_eq!(schema["maximum"], MAX_LIMIT, "{label}");
                }
                "Idempotency-Key" => {
                    assert_eq!(schema["minLength"], 1, "{label}");
                    assert_eq!(schema["maxLength"], idempotency::MAX_LEN, "{label}");
                    assert_eq!(schema["pattern"], idempotency::PATTERN, "{label}");
                }
                "gateway" => {
                    assert_eq!(schema["pattern"], GatewayName::PATTERN, "{label}");
                }
                _ => {}
            }
        }
    }
    let id = |path: &str| {
        let parameter = &doc["paths"][path]["get"]["parameters"][0];
        resolve(&doc, &parameter["schema"])["pattern"].clone()
    };
    assert_eq!(id("/v1/transactions/{id}"), "^txn_[0-9a-fA-F]{32}$");
    assert_eq!(id("/v1/refunds/{id}"), "^rfd_[0-9a-fA-F]{32}$");
    assert_eq!(id("/v1/webhook-endpoints/{id}"), "^we_[0-9a-fA-F]{32}$");

    let schemas = &doc["components"]["schemas"];
    let create = &schemas["CreateTransactionRequest"]["properties"];
    let customer = resolve(&doc, &create["customer"]);
    assert_eq!(customer["maxLength"], CustomerReference::MAX_CHARS);
    assert_eq!(customer["pattern"], CustomerReference::PATTERN);
    let currencies = resolve(&doc, &create["currency"])["enum"].clone();
    let currencies: Vec<&str> = currencies
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(currencies.contains(&"USD") && currencies.contains(&"JPY"));
    assert!(
        !currencies.contains(&"XAU"),
        "no minor units: refused, so not offered"
    );
    assert_eq!(create["metadata"]["maxProperties"], METADATA_MAX_KEYS);
    assert_eq!(
        create["metadata"]["propertyNames"]["maxLength"],
        METADATA_MAX_KEY_CHARS
    );
    assert_eq!(create["amount"]["minimum"], 1);
    let endpoint = &schemas["CreateWebhookEndpointRequest"]["properties"];
    assert_eq!(endpoint["description"]["maxLength"], DESCRIPTION_MAX_CHARS);
    assert_eq!(
        endpoint["url"]["maxLength"],
        paygate_api::url_policy::MAX_URL_LEN
    );
    let refund = &schemas["CreateRefundRequest"]["properties"];
    assert_eq!(refund["reason"]["maxLength"], REFUND_REASON_MAX_CHARS);
    Ok(())
}

fn three_gateways() -> anyhow::Result<GatewayRegistry> {
    let mut gateways: Vec<Arc<dyn PaymentGateway>> = Vec::new();
    for (name, kind) in [
        ("psp-json", "sandbox-json"),
        ("psp-soap", "sandbox-soap"),
        ("psp-proto", "sandbox-proto"),
    ] {
        let settings = GatewaySettings::new(
            GatewayName::parse(name)?,
            kind,
            url::Url::parse("http://127.0.0.1:1/")?,
            Secret::new("sk_provider"),
            Secret::new("whsec_provider"),
        );
        gateways.push(paygate_gateways::registry::build(settings)?);
    }
    Ok(GatewayRegistry::from_gateways(gateways))
}

/// The served document lists the configured gateways' callback routes, each with exactly
/// the media types its connector takes (before: every type on one generic route), and the
/// route refuses any other type with the documented 415.
#[tokio::test]
async fn served_openapi_names_each_gateway_with_its_media_types() -> TestResult {
    let app = spawn_with(|_| {}, three_gateways()?).await?;
    let served: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    assert!(served["paths"].get("/callbacks/{gateway}").is_none());
    let expected: [(&str, &[&str]); 3] = [
        ("psp-json", &["application/json"]),
        (
            "psp-soap",
            &["application/soap+xml", "application/xml", "text/xml"],
        ),
        ("psp-proto", &["application/x-protobuf"]),
    ];
    for (gateway, types) in expected {
        let operation = &served["paths"][format!("/callbacks/{gateway}")]["post"];
        let content = operation["requestBody"]["content"]
            .as_object()
            .map(|c| c.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        assert_eq!(content, types, "{gateway}");
        assert!(has_retry_after(&operation["responses"]["429"]), "{gateway}");
        for media in ["application/json", "text/xml", "application/x-protobuf"] {
            if types.contains(&media) {
                continue;
            }
            let response = app
                .client
                .post(app.url(&format!("/callbacks/{gateway}")))
                .header("content-type", media)
                .body("x")
                .send()
                .await?;
            assert_eq!(response.status(), 415, "{gateway} {media}");
        }
    }
    let names = &served["components"]["schemas"]["CreateTransactionRequest"]["properties"]
        ["gateway"]["enum"];
    assert_eq!(
        names,
        &serde_json::json!(["psp-json", "psp-proto", "psp-soap", null])
    );
    Ok(())
}

/// Found by schemathesis (scripts/apifuzz): a deposit whose metadata held a number near
/// `f64::MAX` was accepted (202), and from then on every list of the merchant's transactions
/// was a 500 (Postgres' `jsonb` keeps the exact decimal, which serde_json read back past
/// `f64::MAX`). Such numbers are now a 400 naming `metadata`, as the document says
/// (magnitude at most 2^53 − 1), and the list stays readable.
#[tokio::test]
async fn a_huge_metadata_number_is_refused_and_cannot_poison_the_list() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    for huge in ["1.7976931348623157e308", "18446744073709551615", "-1e16"] {
        let body = format!(
            r#"{{"amount": 1050, "currency": "USD", "customer": "c1", "metadata": {{"n": {huge}}}}}"#
        );
        let response = app
            .client
            .post(app.url("/v1/deposits"))
            .bearer_auth(&merchant.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{huge}");
        let (_, code, param) = error_of(response).await?;
        assert_eq!(
            (code.as_str(), param.as_deref()),
            ("metadata_invalid", Some("metadata"))
        );
    }
    let mut ok = deposit_body();
    ok["metadata"] = serde_json::json!({"n": 9_007_199_254_740_991_i64, "f": 0.25});
    let response = app.post("/v1/deposits", &merchant.key, &ok).send().await?;
    assert_eq!(response.status(), 202);
    let response = app.get("/v1/transactions", &merchant.key).send().await?;
    assert_eq!(response.status(), 200);
    Ok(())
}
