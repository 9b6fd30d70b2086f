//! The Paystack connector against the Paystack emulator (the conformance kit), and the
//! emulator's own behaviour over raw HTTP: Paystack's auth and validation answers, the
//! hosted checkout step, transfers and refunds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, RefundId, Transaction,
    TransactionKind,
};
use paygate_gateways::conformance::{self, ConformanceConfig};
use paygate_gateways::{
    CallbackEvent, CallbackRequest, GatewayRegistry, PaymentGateway, ProviderStatus, RefundRequest,
    RefundStatus, ReportedStatus, SubmitStatus,
};
use paygate_testkit::admin::AdminClient;
use paygate_testkit::services::{sandbox_gateway, sandbox_settings, spawn_sandbox};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const KEY: &str = paygate_sandbox::DEFAULT_SECRET_KEY;

async fn sandbox(callback_base_url: &str) -> (String, CancellationToken) {
    let sandbox = spawn_sandbox(sandbox_settings(callback_base_url))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (shutdown, _task) = sandbox.running.into_parts();
    (sandbox.url, shutdown)
}

/// A `paystack` gateway on the sandbox account `name` (its API is under `/{name}/paystack`).
fn gateway(url: &str, name: &str) -> Arc<dyn PaymentGateway> {
    let table = sandbox_gateway(
        url,
        name,
        "paystack",
        &json!({
            "timeout_ms": 1000,
            "base_url": format!("{url}/{name}/paystack"),
            "bank_code": "058",
        }),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let registry = GatewayRegistry::from_config(&[(name.to_owned(), table)].into_iter().collect())
        .unwrap_or_else(|e| panic!("{e}"));
    registry
        .get(&GatewayName::parse(name).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|| panic!("{name} not registered"))
}

fn transaction(kind: TransactionKind, minor_units: i64) -> Transaction {
    Transaction::create(
        NewTransaction {
            merchant_id: MerchantId::new(),
            kind,
            money: Money::from_parts(minor_units, "NGN").unwrap_or_else(|e| panic!("{e}")),
            customer: CustomerReference::parse("0123456789").unwrap_or_else(|e| panic!("{e}")),
            gateway: None,
            callback_url: None,
            metadata: json!({}),
        },
        Utc::now(),
    )
}

async fn knobs(url: &str, account: &str, knobs: Value) {
    AdminClient::new(url)
        .unwrap_or_else(|e| panic!("{e}"))
        .put_account_knobs(account, knobs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `(status, body)` of a raw call with `key` as the bearer token.
async fn call(method: &str, url: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    }
    .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_else(|e| panic!("{e}"));
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn paystack_connector_conforms() {
    let (url, shutdown) = sandbox("http://127.0.0.1:9").await;
    let gateway = gateway(&url, "conf-paystack");
    let mut config = ConformanceConfig::new(&url);
    config.hang = Duration::from_secs(3);
    // Paystack's webhooks carry no timestamp (nothing to judge staleness by; the dedupe id
    // `{event}:{data.id}` is what stops a replay).
    config.checks_timestamp = false;
    let report = conformance::run(gateway.as_ref(), &config).await;
    shutdown.cancel();
    println!("{report}");
    // A hosted-checkout deposit: the kit plays the customer on the checkout page (a
    // decline happens there, reported `failed` by callback), and every check must pass.
    assert!(report.passed(), "{report}");
    assert!(report.checks.len() >= 20, "{report}");
}

#[tokio::test]
async fn auth_and_required_fields_are_checked_as_paystack_does() {
    let (url, shutdown) = sandbox("http://127.0.0.1:9").await;
    let api = format!("{url}/raw-paystack/paystack");
    let init = format!("{api}/transaction/initialize");
    let good =
        json!({"email": "a@b.co", "amount": 5000, "currency": "NGN", "reference": "txn-0001"});

    let (status, body) = call("POST", &init, "sk_wrong", Some(good.clone())).await;
    assert_eq!(
        (status, &body),
        (401, &json!({"status": false, "message": "Invalid key"}))
    );
    let (status, _) = call(
        "GET",
        &format!("{api}/transaction/verify/txn-0001"),
        "sk_wrong",
        None,
    )
    .await;
    assert_eq!(status, 401);

    for (field, value, code) in [
        ("email", Value::Null, "invalid_email"),
        ("amount", Value::Null, "invalid_amount"),
        ("amount", json!(0), "invalid_amount"),
        ("amount", json!(-5), "invalid_amount"),
        ("amount", json!(50.5), "invalid_amount"),
        ("reference", json!("txn_0001"), "invalid_reference"),
        ("currency", json!("XXX"), "unsupported_currency"),
    ] {
        let mut body = good.clone();
        body[field] = value.clone();
        let (status, answer) = call("POST", &init, KEY, Some(body)).await;
        assert_eq!(status, 400, "{field}={value}: {answer}");
        assert_eq!(answer["status"], json!(false), "{answer}");
        assert_eq!(answer["code"], json!(code), "{field}={value}: {answer}");
    }

    // A string of digits is an amount, as in Paystack's curl samples.
    let mut body = good.clone();
    body["amount"] = json!("5000");
    let (status, answer) = call("POST", &init, KEY, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["message"], json!("Authorization URL created"));
    assert_eq!(answer["data"]["reference"], json!("txn-0001"));

    let (status, answer) = call(
        "GET",
        &format!("{api}/transaction/verify/txn-nope"),
        KEY,
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(answer["message"], json!("Transaction reference not found"));
    let (status, answer) = call("GET", &format!("{api}/transfer/verify/txn-nope"), KEY, None).await;
    assert_eq!(
        (status, &answer["message"]),
        (404, &json!("Transfer not found"))
    );
    shutdown.cancel();
}

#[tokio::test]
async fn the_hosted_checkout_completes_or_cancels() {
    let (url, shutdown) = sandbox("http://127.0.0.1:9").await;
    let gateway = gateway(&url, "hosted-paystack");
    knobs(&url, "hosted-paystack", json!({"callbacks_enabled": false})).await;
    let browser = reqwest::Client::new();
    for (cancel, expected) in [(false, true), (true, false)] {
        let tx = transaction(TransactionKind::Deposit, 2500);
        let outcome = gateway.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
        let SubmitStatus::RequiresAction { url: page } = outcome.status else {
            panic!("expected a redirect, got {outcome:?}")
        };
        assert_eq!(
            gateway.status(&tx).await.unwrap_or_else(|e| panic!("{e}")),
            ProviderStatus::AwaitingCustomer,
            "before the customer acts, verify says abandoned"
        );
        let page = if cancel {
            format!("{page}?action=cancel")
        } else {
            page
        };
        let visited = browser
            .get(&page)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(visited.status().as_u16(), 200);
        match gateway.status(&tx).await.unwrap_or_else(|e| panic!("{e}")) {
            ProviderStatus::Final { status, reported } => {
                assert_eq!(status == ReportedStatus::Succeeded, expected, "{status:?}");
                assert_eq!(reported.money, Some(tx.money));
            }
            other => panic!("after the checkout: {other:?}"),
        }
        // A second visit changes nothing.
        let again = browser
            .get(&page)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.status().as_u16(), 200);
    }
    let unknown = browser
        .get(format!("{url}/hosted-paystack/paystack/checkout/ac999"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unknown.status().as_u16(), 404);
    shutdown.cancel();
}

#[tokio::test]
async fn transfers_need_a_known_recipient_and_recipients_are_reused() {
    let (url, shutdown) = sandbox("http://127.0.0.1:9").await;
    let api = format!("{url}/transfer-paystack/paystack");
    let recipient = json!({"type": "nuban", "name": "Tolu Robert", "account_number": "01000000010", "bank_code": "058", "currency": "NGN"});
    let (first, created) = call(
        "POST",
        &format!("{api}/transferrecipient"),
        KEY,
        Some(recipient.clone()),
    )
    .await;
    let (second, again) = call(
        "POST",
        &format!("{api}/transferrecipient"),
        KEY,
        Some(recipient),
    )
    .await;
    assert_eq!((first, second), (201, 200));
    assert_eq!(
        created["data"]["recipient_code"],
        again["data"]["recipient_code"]
    );
    let (status, answer) = call(
        "POST",
        &format!("{api}/transferrecipient"),
        KEY,
        Some(json!({"type": "nuban", "name": "x"})),
    )
    .await;
    assert_eq!((status, &answer["status"]), (400, &json!(false)));

    let transfer = json!({"source": "balance", "amount": 100000, "recipient": "RCP_unknown", "reference": "txn-00000000000000000000000000000001", "reason": "x"});
    let (status, answer) = call(
        "POST",
        &format!("{api}/transfer"),
        KEY,
        Some(transfer.clone()),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["code"], json!("invalid_transfer_recipient"));
    assert_eq!(answer["message"], json!("Recipient specified is invalid"));

    let mut good = transfer;
    good["recipient"] = created["data"]["recipient_code"].clone();
    let (status, answer) = call("POST", &format!("{api}/transfer"), KEY, Some(good)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["message"], json!("Transfer has been queued"));
    assert!(answer["data"]["id"].is_u64(), "{answer}");
    shutdown.cancel();
}

/// A capture listener for webhooks: the requests it received.
async fn capture() -> (String, Arc<Mutex<Vec<CallbackRequest>>>) {
    let inbox: Arc<Mutex<Vec<CallbackRequest>>> = Arc::default();
    let kept = Arc::clone(&inbox);
    let app = axum::Router::new().route(
        "/callbacks/{gateway}",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                let headers: std::collections::BTreeMap<String, String> = headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                kept.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(CallbackRequest {
                        body,
                        content_type: headers.get("content-type").cloned(),
                        headers,
                        path: None,
                        received_at: Utc::now(),
                    });
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, inbox)
}

#[tokio::test]
async fn refunds_full_partial_and_over_refunds() {
    let (receiver, inbox) = capture().await;
    let (url, shutdown) = sandbox(&receiver).await;
    let gateway = gateway(&url, "refund-paystack");
    knobs(&url, "refund-paystack", json!({"callback_delay_ms": 0})).await;
    let tx = transaction(TransactionKind::Deposit, 1050);
    let refund = |minor: i64| RefundRequest {
        id: RefundId::new(),
        money: Money::from_parts(minor, "NGN").unwrap_or_else(|e| panic!("{e}")),
    };

    // Nothing to refund before the customer paid.
    let outcome = gateway.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(gateway.refund(&tx, &refund(100)).await.is_err());
    let SubmitStatus::RequiresAction { url: page } = outcome.status else {
        panic!("{outcome:?}")
    };
    reqwest::get(&page).await.unwrap_or_else(|e| panic!("{e}"));

    let partial = gateway
        .refund(&tx, &refund(100))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(partial.status, RefundStatus::Pending);
    assert!(matches!(
        gateway.refund(&tx, &refund(951)).await,
        Err(paygate_gateways::GatewayError::Permanent { .. })
    ));
    let rest = gateway
        .refund(&tx, &refund(950))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rest.status, RefundStatus::Pending);
    assert!(
        gateway.refund(&tx, &refund(1)).await.is_err(),
        "fully refunded"
    );

    // The charge's webhook and both refunds' webhooks arrive, signed, and parse.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = inbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if events.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    let parsed: Vec<_> = events
        .iter()
        .map(|request| gateway.handle_callback(request))
        .collect();
    let refunds: Vec<_> = parsed
        .iter()
        .filter_map(|event| match event {
            Ok(CallbackEvent::Refund(report)) => Some(report.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refunds.len(), 2, "{parsed:?}");
    let mut amounts: Vec<i64> = refunds
        .iter()
        .map(|r| r.money.amount.minor_units())
        .collect();
    amounts.sort_unstable();
    assert_eq!(amounts, [100, 950]);
    assert!(refunds
        .iter()
        .all(|r| r.transaction_id == tx.id && r.status == RefundStatus::Succeeded));
    let provider_refs: Vec<_> = refunds
        .iter()
        .map(|r| r.provider_reference.clone())
        .collect();
    assert!(
        provider_refs.contains(&partial.provider_reference),
        "{provider_refs:?}"
    );
    assert!(parsed
        .iter()
        .any(|e| matches!(e, Ok(CallbackEvent::Payment(p)) if p.transaction_id == tx.id)));
}
