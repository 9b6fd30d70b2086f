//! The M-Pesa Daraja connector against the M-Pesa emulator, over HTTP: the conformance kit,
//! and what only M-Pesa has (OAuth tokens, STK push/query, B2C, path-token callbacks).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, Transaction, TransactionKind,
};
use paygate_gateways::conformance::{self, ConformanceConfig};
use paygate_gateways::{
    CallbackError, CallbackEvent, CallbackRequest, GatewayError, GatewayRegistry, PaymentGateway,
    ProviderStatus, ReportedStatus, SubmitStatus,
};
use paygate_testkit::admin::AdminClient;
use paygate_testkit::services::{sandbox_gateway, sandbox_settings, spawn_sandbox};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

async fn sandbox() -> (String, CancellationToken) {
    let sandbox = spawn_sandbox(sandbox_settings("http://127.0.0.1:9"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (shutdown, _task) = sandbox.running.into_parts();
    (sandbox.url, shutdown)
}

fn extra() -> Value {
    json!({
        "timeout_ms": 1000,
        "consumer_key": "ck_sandbox",
        "shortcode": "174379",
        "passkey": paygate_sandbox::DEFAULT_WEBHOOK_SECRET,
        "callback_base_url": "https://pay.example.com",
        "initiator_name": "testapi",
        "security_credential": "c2VjdXJpdHk=",
    })
}

fn gateway(url: &str, name: &str) -> Arc<dyn PaymentGateway> {
    let table = sandbox_gateway(url, name, "mpesa", &extra()).unwrap_or_else(|e| panic!("{e:#}"));
    let registry = GatewayRegistry::from_config(&[(name.to_owned(), table)].into_iter().collect())
        .unwrap_or_else(|e| panic!("{e}"));
    registry
        .get(&GatewayName::parse(name).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|| panic!("{name} not registered"))
}

fn transaction(kind: TransactionKind, cents: i64) -> Transaction {
    Transaction::create(
        NewTransaction {
            merchant_id: MerchantId::new(),
            kind,
            money: Money::from_parts(cents, "KES").unwrap_or_else(|e| panic!("{e}")),
            customer: CustomerReference::parse("254708374149").unwrap_or_else(|e| panic!("{e}")),
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

/// Callbacks captured at `/callbacks/{gateway}/{reference}/{token}`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(String, Bytes)>>>);

impl Capture {
    async fn start() -> (Self, String) {
        let capture = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let inbox = capture.clone();
        let app = axum::Router::new().route(
            "/callbacks/{gateway}/{reference}/{token}",
            axum::routing::post(
                move |axum::extract::Path((_g, reference, token)): axum::extract::Path<(
                    String,
                    String,
                    String,
                )>,
                      body: Bytes| {
                    let inbox = inbox.clone();
                    async move {
                        inbox
                            .0
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((format!("{reference}/{token}"), body));
                        axum::http::StatusCode::OK
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (capture, url)
    }

    async fn wait(&self, count: usize) -> Vec<(String, Bytes)> {
        for _ in 0..100 {
            let got = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if got.len() >= count {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn request(path: Option<String>, body: Bytes) -> CallbackRequest {
    CallbackRequest {
        body,
        content_type: Some("application/json".into()),
        headers: [("content-type".to_owned(), "application/json".to_owned())]
            .into_iter()
            .collect(),
        path,
        received_at: Utc::now(),
    }
}

#[tokio::test]
async fn mpesa_connector_conforms() {
    let (url, shutdown) = sandbox().await;
    let name = "conf-mpesa";
    let gateway = gateway(&url, name);
    let mut config = ConformanceConfig::new(&url);
    config.hang = Duration::from_secs(3);
    config.checks_timestamp = false;
    // M-Pesa pays whole shillings to a Safaricom number: 1050.00 KES and so on.
    config.currency = "KES".into();
    config.customer = "254708374149".into();
    config.amount_factor = 100;
    let report = conformance::run(gateway.as_ref(), &config).await;
    shutdown.cancel();
    println!("{report}");
    // The kit knows M-Pesa's documented differences: a declined STK push is a 1032
    // callback, a push without a CheckoutRequestID cannot be asked about ("could not find
    // out", never "not found"), and STK push has no idempotency (`idempotent_submit()` is
    // false, so the processor never resubmits). Every check must pass.
    assert!(report.passed(), "{report}");
    assert!(report.checks.len() >= 25, "{report}");
}

#[tokio::test]
async fn stk_push_callback_parses_and_a_wrong_path_token_is_refused() {
    let (url, shutdown) = sandbox().await;
    let (capture, capture_url) = Capture::start().await;
    let name = "mp-stk";
    knobs(
        &url,
        name,
        json!({"callback_base_url": capture_url, "callback_delay_ms": 0}),
    )
    .await;
    let g = gateway(&url, name);
    let mut tx = transaction(TransactionKind::Deposit, 105_000);
    let outcome = g.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status, SubmitStatus::Accepted);
    assert!(outcome.provider_reference.starts_with("ws_CO_"));
    let got = capture.wait(1).await;
    let (path, body) = got
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no callback"));
    let event = g
        .handle_callback(&request(Some(path.clone()), body.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    let CallbackEvent::Payment(paid) = event else {
        panic!("{event:?}")
    };
    assert_eq!(
        (paid.transaction_id, paid.money, paid.status.clone()),
        (tx.id, tx.money, ReportedStatus::Succeeded)
    );
    assert_eq!(paid.provider_reference, outcome.provider_reference);
    assert_eq!(
        paid.provider_event_id,
        format!("{}:0", outcome.provider_reference)
    );

    // The same body on a wrong token, another payment's token, or no path: refused.
    let (reference, token) = path.split_once('/').unwrap_or_else(|| panic!("{path}"));
    let flipped: String = token.chars().rev().collect();
    let other = transaction(TransactionKind::Deposit, 105_000);
    for bad in [
        Some(format!("{reference}/{flipped}")),
        Some(format!("{}{}/{token}", other.id, &reference[36..])),
        Some(reference.to_owned()),
        None,
    ] {
        assert!(
            matches!(
                g.handle_callback(&request(bad.clone(), body.clone())),
                Err(CallbackError::Unauthenticated(_))
            ),
            "{bad:?}"
        );
    }

    // The query knows it now.
    tx.provider_reference = Some(outcome.provider_reference.clone());
    match g.status(&tx).await {
        Ok(ProviderStatus::Final {
            status: ReportedStatus::Succeeded,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_declined_push_is_a_cancel_callback_and_the_query_waits_for_the_customer() {
    let (url, shutdown) = sandbox().await;
    let (capture, capture_url) = Capture::start().await;
    let name = "mp-decline";
    knobs(
        &url,
        name,
        json!({"callback_base_url": capture_url, "callback_delay_ms": 0, "decline_rate": 1.0}),
    )
    .await;
    let g = gateway(&url, name);
    let tx = transaction(TransactionKind::Deposit, 5_000);
    let outcome = g.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.status, SubmitStatus::Accepted);
    let got = capture.wait(1).await;
    let (path, body) = got
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no callback"));
    match g.handle_callback(&request(Some(path), body)) {
        Ok(CallbackEvent::Payment(o)) => {
            assert!(
                matches!(o.status, ReportedStatus::Failed { ref code, .. } if code == "cancelled"),
                "{o:?}"
            );
            assert_eq!(o.money, tx.money);
        }
        other => panic!("{other:?}"),
    }

    // No callback yet: the query answers "being processed".
    knobs(&url, name, json!({"callbacks_enabled": false})).await;
    let mut pending = transaction(TransactionKind::Deposit, 5_000);
    let outcome = g.deposit(&pending).await.unwrap_or_else(|e| panic!("{e}"));
    pending.provider_reference = Some(outcome.provider_reference);
    assert_eq!(g.status(&pending).await, Ok(ProviderStatus::InProgress));
    // Without a CheckoutRequestID there is nothing to ask: an error, never "not found".
    assert!(g
        .status(&transaction(TransactionKind::Deposit, 5_000))
        .await
        .is_err());
    shutdown.cancel();
}

#[tokio::test]
async fn b2c_payout_result_parses() {
    let (url, shutdown) = sandbox().await;
    let (capture, capture_url) = Capture::start().await;
    let name = "mp-b2c";
    knobs(
        &url,
        name,
        json!({"callback_base_url": capture_url, "callback_delay_ms": 0}),
    )
    .await;
    let g = gateway(&url, name);
    let tx = transaction(TransactionKind::Withdrawal, 250_000);
    let outcome = g.withdraw(&tx).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.provider_reference.starts_with("AG_"));
    let got = capture.wait(1).await;
    let (path, body) = got
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no callback"));
    match g.handle_callback(&request(Some(path), body)) {
        Ok(CallbackEvent::Payment(o)) => {
            assert_eq!(
                (o.transaction_id, o.money, o.status, o.kind),
                (
                    tx.id,
                    tx.money,
                    ReportedStatus::Succeeded,
                    Some(TransactionKind::Withdrawal)
                )
            );
            assert_eq!(o.provider_reference, outcome.provider_reference);
        }
        other => panic!("{other:?}"),
    }
    // A repeat of the OriginatorConversationID is answered from the record.
    let again = g.withdraw(&tx).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.provider_reference, outcome.provider_reference);
    shutdown.cancel();
}

async fn issued(client: &reqwest::Client, url: &str, name: &str) -> u64 {
    let report: Value = client
        .get(format!("{url}/{name}/_mpesa/oauth"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    report["issued"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn one_token_serves_many_calls_and_is_refreshed_after_expiry() {
    let (url, shutdown) = sandbox().await;
    let name = "mp-oauth";
    knobs(&url, name, json!({"callbacks_enabled": false})).await;
    let client = reqwest::Client::new();
    let set = client
        .put(format!("{url}/{name}/_mpesa/oauth?expires_in=2"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(set.status().is_success());
    let g = gateway(&url, name);
    for _ in 0..5 {
        g.deposit(&transaction(TransactionKind::Deposit, 100))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(issued(&client, &url, name).await, 1);
    // Refreshed a second early (half of a 2 s life): after it, a new token.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    g.deposit(&transaction(TransactionKind::Deposit, 100))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(issued(&client, &url, name).await, 2);
    // Revoked behind its back: the 401 invalidates it and the call succeeds with a new one.
    client
        .delete(format!("{url}/{name}/_mpesa/oauth"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    g.withdraw(&transaction(TransactionKind::Withdrawal, 100))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(issued(&client, &url, name).await, 3);
    shutdown.cancel();
}

#[tokio::test]
async fn wrong_credentials_and_bad_requests_get_darajas_shapes() {
    let (url, shutdown) = sandbox().await;
    let name = "mp-raw";
    let client = reqwest::Client::new();
    let oauth = format!("{url}/{name}/oauth/v1/generate?grant_type=client_credentials");
    let refused = client
        .get(&oauth)
        .basic_auth("any", Some("wrong"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status(), 400);
    let granted: Value = client
        .get(&oauth)
        .basic_auth("any", Some(paygate_sandbox::DEFAULT_SECRET_KEY))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(granted["expires_in"].is_string(), "{granted}");
    let token = granted["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let push = format!("{url}/{name}/mpesa/stkpush/v1/processrequest");
    let bad_token = client
        .post(&push)
        .bearer_auth("nope")
        .json(&json!({}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad_token.status(), 401);
    let body: Value = bad_token.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["errorCode"], "404.001.03");

    use base64::Engine as _;
    let timestamp = "20260101120000";
    let password = base64::engine::general_purpose::STANDARD.encode(format!(
        "174379{}{timestamp}",
        paygate_sandbox::DEFAULT_WEBHOOK_SECRET
    ));
    let valid = json!({
        "BusinessShortCode": "174379", "Password": password, "Timestamp": timestamp,
        "TransactionType": "CustomerPayBillOnline", "Amount": 1, "PartyA": "254708374149",
        "PartyB": "174379", "PhoneNumber": "254708374149",
        "CallBackURL": "https://pay.example.com/cb", "AccountReference": "paygate",
        "TransactionDesc": "Payment",
    });
    let mut cases = Vec::new();
    let mut missing = valid.clone();
    missing.as_object_mut().map(|o| o.remove("PhoneNumber"));
    cases.push((missing, "Bad Request - Invalid PhoneNumber"));
    let mut wrong_password = valid.clone();
    wrong_password["Password"] = json!("bm9wZQ==");
    cases.push((wrong_password, "Bad Request - Invalid Password"));
    let mut fractional = valid.clone();
    fractional["Amount"] = json!(1.5);
    cases.push((fractional, "Bad Request - Invalid Amount"));
    let mut long_label = valid.clone();
    long_label["AccountReference"] = json!("thirteen-char");
    cases.push((long_label, "Bad Request - Invalid AccountReference"));
    for (body, message) in cases {
        let answer = client
            .post(&push)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.status(), 400, "{message}");
        let answer: Value = answer.json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer["errorCode"], "400.002.02");
        assert_eq!(answer["errorMessage"], message);
    }
    let ok = client
        .post(&push)
        .bearer_auth(&token)
        .json(&valid)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.status(), 200);

    // The connector reads the refusal as permanent: a non-Safaricom customer never leaves.
    let g = gateway(&url, name);
    let mut tx = transaction(TransactionKind::Deposit, 100);
    tx.customer = CustomerReference::parse("cust_1").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        g.deposit(&tx).await,
        Err(GatewayError::Permanent { .. })
    ));
    shutdown.cancel();
}
