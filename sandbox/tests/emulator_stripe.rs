//! The Stripe connector against the Stripe emulator: the conformance kit, then what only
//! this provider has (its 401 and 400 shapes, the 3-D Secure step, refunds, idempotency
//! keys reused with other parameters, search lag).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, RefundId, Transaction,
    TransactionKind,
};
use paygate_gateways::conformance::{self, ConformanceConfig};
use paygate_gateways::{
    GatewayError, GatewayRegistry, PaymentGateway, ProviderStatus, RefundRequest, RefundStatus,
    ReportedStatus, SubmitStatus,
};
use paygate_testkit::admin::AdminClient;
use paygate_testkit::services::{sandbox_gateway, sandbox_settings, spawn_sandbox};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const RETURN_URL: &str = "https://merchant.example/return";

async fn sandbox() -> (String, CancellationToken) {
    let sandbox = spawn_sandbox(sandbox_settings("http://127.0.0.1:9"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (shutdown, _task) = sandbox.running.into_parts();
    (sandbox.url, shutdown)
}

fn stripe(url: &str, name: &str, extra: Value) -> Arc<dyn PaymentGateway> {
    let mut settings = json!({"timeout_ms": 1000});
    if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let table = sandbox_gateway(url, name, "stripe", &settings).unwrap_or_else(|e| panic!("{e:#}"));
    let registry = GatewayRegistry::from_config(&[(name.to_owned(), table)].into_iter().collect())
        .unwrap_or_else(|e| panic!("{e}"));
    registry
        .get(&GatewayName::parse(name).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|| panic!("{name} not registered"))
}

async fn knobs(url: &str, account: &str, knobs: Value) {
    AdminClient::new(url)
        .unwrap_or_else(|e| panic!("{e}"))
        .put_account_knobs(account, knobs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn transaction(kind: TransactionKind, minor_units: i64, customer: &str) -> Transaction {
    Transaction::create(
        NewTransaction {
            merchant_id: MerchantId::new(),
            kind,
            money: Money::from_parts(minor_units, "USD").unwrap_or_else(|e| panic!("{e}")),
            customer: CustomerReference::parse(customer).unwrap_or_else(|e| panic!("{e}")),
            gateway: None,
            callback_url: None,
            metadata: json!({}),
        },
        Utc::now(),
    )
}

/// Polls the status until it is final (the emulator announces by webhook, then answers).
async fn final_status(gateway: &dyn PaymentGateway, tx: &Transaction) -> ProviderStatus {
    for _ in 0..50 {
        match gateway.status(tx).await {
            Ok(status @ ProviderStatus::Final { .. }) => return status,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("status: {e}"),
        }
    }
    panic!("no final status for {}", tx.id)
}

#[tokio::test]
async fn stripe_connector_conforms() {
    let (url, shutdown) = sandbox().await;
    let gateway = stripe(&url, "conf-stripe", json!({"return_url": RETURN_URL}));
    let mut config = ConformanceConfig::new(&url);
    config.hang = Duration::from_secs(3);
    let report = conformance::run(gateway.as_ref(), &config).await;
    shutdown.cancel();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.checks.len() >= 20, "{report}");
}

#[tokio::test]
async fn wrong_key_missing_fields_and_wrong_encoding_are_refused_as_stripe_does() {
    let (url, shutdown) = sandbox().await;
    let http = reqwest::Client::new();
    let endpoint = format!("{url}/raw-stripe/v1/payment_intents");
    let form = [
        ("amount", "1050"),
        ("currency", "usd"),
        ("confirm", "true"),
        ("payment_method", "pm_card_visa"),
    ];
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
        (status, body)
    };

    let (status, body) = send(http.post(&endpoint).bearer_auth("sk_wrong").form(&form)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let (status, body) = send(http.post(&endpoint).form(&form)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("API key")));

    let (status, body) = send(
        http.post(&endpoint)
            .bearer_auth("sk_sandbox")
            .form(&form[1..]),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (&body["error"]["code"], &body["error"]["param"]),
        (&json!("parameter_missing"), &json!("amount"))
    );
    let (status, body) = send(http.post(&endpoint).bearer_auth("sk_sandbox").form(&[
        ("amount", "1050"),
        ("currency", "USD"),
        ("confirm", "true"),
        ("payment_method", "pm_card_visa"),
    ]))
    .await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("currency")),
        "{body}"
    );
    let (status, body) = send(
        http.post(&endpoint)
            .bearer_auth("sk_sandbox")
            .json(&json!({"amount": 1050, "currency": "usd"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send(
        http.post(format!("{url}/raw-stripe/v1/transfers"))
            .bearer_auth("sk_sandbox")
            .form(&[("amount", "1050"), ("currency", "usd")]),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("destination")),
        "{body}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn three_d_secure_step_completes_or_cancels_at_the_hosted_page() {
    let (url, shutdown) = sandbox().await;
    let name = "tds-stripe";
    knobs(
        &url,
        name,
        json!({"callback_delay_ms": 0, "callback_max_attempts": 1}),
    )
    .await;
    let gateway = stripe(
        &url,
        name,
        json!({"payment_method": "pm_card_threeDSecure2Required", "return_url": RETURN_URL}),
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    for (cancel, expected_success) in [(false, true), (true, false)] {
        let mut tx = transaction(TransactionKind::Deposit, 2500, "cust_3ds");
        let outcome = gateway.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
        let SubmitStatus::RequiresAction { url: page } = &outcome.status else {
            panic!("expected requires_action, got {outcome:?}");
        };
        assert!(page.starts_with(&format!("{url}/{name}/")), "{page}");
        tx.provider_reference = Some(outcome.provider_reference.clone());
        // Waiting for the customer: nothing moved, not failed.
        assert_eq!(
            gateway.status(&tx).await,
            Ok(ProviderStatus::AwaitingCustomer)
        );
        // The retry answers from the record: the same page, no second PaymentIntent.
        let again = gateway.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.provider_reference, outcome.provider_reference);
        let target = if cancel {
            format!("{page}?action=cancel")
        } else {
            page.clone()
        };
        let response = http
            .get(&target)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 200);
        let body = response.text().await.unwrap_or_default();
        assert!(body.contains(RETURN_URL), "{body}");
        match final_status(gateway.as_ref(), &tx).await {
            ProviderStatus::Final { status, .. } => {
                assert_eq!(
                    status == ReportedStatus::Succeeded,
                    expected_success,
                    "{status:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        // The step is over: a second visit changes nothing.
        let response = http
            .get(page)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 409);
    }
    shutdown.cancel();
}

#[tokio::test]
async fn refunds_full_partial_replayed_and_over_refund_refused() {
    let (url, shutdown) = sandbox().await;
    let name = "refund-stripe";
    knobs(
        &url,
        name,
        json!({"callback_delay_ms": 0, "callback_max_attempts": 1}),
    )
    .await;
    let gateway = stripe(&url, name, json!({}));
    let mut tx = transaction(TransactionKind::Deposit, 1000, "cust_refund");
    let outcome = gateway.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
    tx.provider_reference = Some(outcome.provider_reference);
    final_status(gateway.as_ref(), &tx).await;

    let refund = |units: i64| RefundRequest {
        id: RefundId::new(),
        money: Money::from_parts(units, "USD").unwrap_or_else(|e| panic!("{e}")),
    };
    let partial = refund(400);
    let first = gateway
        .refund(&tx, &partial)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.status, RefundStatus::Succeeded);
    assert!(first.provider_reference.starts_with("re_"));
    // Same refund id: answered from the first, not refunded twice.
    let replay = gateway
        .refund(&tx, &partial)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replay.provider_reference, first.provider_reference);
    // 700 > the 600 left.
    assert!(matches!(
        gateway.refund(&tx, &refund(700)).await,
        Err(GatewayError::Permanent { code, .. }) if code == "amount_too_large"
    ));
    let rest = gateway
        .refund(&tx, &refund(600))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rest.status, RefundStatus::Succeeded);
    assert!(matches!(
        gateway.refund(&tx, &refund(1)).await,
        Err(GatewayError::Permanent { code, .. }) if code == "charge_already_refunded"
    ));

    // A full refund of another payment, in one go.
    let mut other = transaction(TransactionKind::Deposit, 1000, "cust_refund");
    let outcome = gateway
        .deposit(&other)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    other.provider_reference = Some(outcome.provider_reference);
    final_status(gateway.as_ref(), &other).await;
    let full = gateway
        .refund(&other, &refund(1000))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(full.status, RefundStatus::Succeeded);
    shutdown.cancel();
}

#[tokio::test]
async fn a_key_reused_with_other_parameters_is_an_ambiguous_duplicate() {
    let (url, shutdown) = sandbox().await;
    let name = "idem-stripe";
    knobs(&url, name, json!({"callbacks_enabled": false})).await;
    let gateway = stripe(&url, name, json!({}));
    let tx = transaction(TransactionKind::Deposit, 1000, "cust_idem");
    gateway.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
    let mut changed = tx.clone();
    changed.money = Money::from_parts(1001, "USD").unwrap_or_else(|e| panic!("{e}"));
    let refused = gateway.deposit(&changed).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(GatewayError::is_duplicate_reference),
        "{refused:?}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn search_lags_but_retrieval_by_id_does_not() {
    let (url, shutdown) = sandbox().await;
    let name = "lag-stripe";
    knobs(
        &url,
        name,
        json!({"callbacks_enabled": false, "status_not_found_for_ms": 60_000}),
    )
    .await;
    let gateway = stripe(&url, name, json!({}));
    let mut tx = transaction(TransactionKind::Deposit, 1000, "cust_lag");
    let outcome = gateway.deposit(&tx).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gateway.status(&tx).await, Ok(ProviderStatus::NotFound));
    tx.provider_reference = Some(outcome.provider_reference);
    assert_eq!(gateway.status(&tx).await, Ok(ProviderStatus::InProgress));

    // Withdrawals are found by transfer_group, without lag.
    let tx = transaction(TransactionKind::Withdrawal, 1000, "acct_1MTfjCQ9PRzxEwkZ");
    gateway
        .withdraw(&tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        gateway.status(&tx).await,
        Ok(ProviderStatus::Final {
            status: ReportedStatus::Succeeded,
            ..
        })
    ));
    shutdown.cancel();
}
