use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use proptest::prelude::*;

use super::*;
use crate::test_support::{settings, transaction};

const SECRET_KEY: &str = "sk_test";

fn gateway_with(extra: serde_json::Value) -> Result<PaystackGateway, RegistryError> {
    let mut settings = settings("paystack", "http://127.0.0.1:9/acct");
    if let serde_json::Value::Object(map) = extra {
        settings.extra = map.into_iter().collect();
    }
    PaystackGateway::new(settings)
}

fn gateway() -> PaystackGateway {
    gateway_with(serde_json::json!({"bank_code": "058"})).unwrap_or_else(|e| panic!("{e}"))
}

fn signed(key: &str, body: &str) -> CallbackRequest {
    let signature = hex::encode(callback::hmac_sha512(key.as_bytes(), &[body.as_bytes()]));
    let mut headers = BTreeMap::new();
    headers.insert("content-type".to_owned(), "application/json".to_owned());
    headers.insert(wire::SIGNATURE_HEADER.to_owned(), signature);
    CallbackRequest {
        body: Bytes::from(body.to_owned()),
        content_type: Some("application/json".into()),
        headers,
        path: None,
        received_at: Utc::now(),
    }
}

/// Paystack's documented `charge.success` sample (webhooks page), with our reference.
fn charge_success(reference: &str) -> String {
    format!(
        r#"{{"event":"charge.success","data":{{"id":302961,"domain":"live","status":"success","reference":"{reference}","amount":10000,"message":null,"gateway_response":"Approved by Financial Institution","paid_at":"2016-09-30T21:10:19.000Z","created_at":"2016-09-30T21:09:56.000Z","channel":"card","currency":"NGN","ip_address":"41.242.49.37","metadata":0,"fees":null,"customer":{{"id":68324,"first_name":"BoJack","last_name":"Horseman","email":"bojack@horseman.com","customer_code":"CUS_qo38as2hpsgk2r0","phone":null,"metadata":null,"risk_action":"default"}},"authorization":{{"authorization_code":"AUTH_f5rnfq9p","bin":"539999","last4":"8877","exp_month":"08","exp_year":"2020","card_type":"mastercard DEBIT","bank":"Guaranty Trust Bank","country_code":"NG","brand":"mastercard","account_name":"BoJack Horseman"}},"plan":{{}}}}}}"#
    )
}

#[test]
fn documented_charge_success_is_a_deposit_success() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    let event = g.handle_callback(&signed(SECRET_KEY, &charge_success(&encode(tx.id))));
    let outcome = crate::test_support::payment(event);
    assert_eq!(outcome.transaction_id, tx.id);
    assert_eq!(outcome.status, ReportedStatus::Succeeded);
    assert_eq!(
        outcome.money,
        Money::from_parts(10000, "NGN").unwrap_or_else(|e| panic!("{e}"))
    );
    assert_eq!(outcome.provider_event_id, "charge.success:302961");
    assert_eq!(outcome.kind, Some(TransactionKind::Deposit));
}

#[test]
fn other_events_and_foreign_references_are_ignored() {
    let g = gateway();
    let subscription = r#"{"event":"subscription.create","data":{"domain":"test","status":"active","subscription_code":"SUB_vsyqdmlzble3uii","amount":50000}}"#;
    assert_eq!(
        g.handle_callback(&signed(SECRET_KEY, subscription)),
        Ok(CallbackEvent::Ignored {
            event: "subscription.create".into()
        })
    );
    // A payment page's charge: Paystack's own reference, not one of ours.
    assert!(matches!(
        g.handle_callback(&signed(SECRET_KEY, &charge_success("qTPrJoy9Bx"))),
        Ok(CallbackEvent::Ignored { .. })
    ));
}

#[test]
fn forgeries_and_tampering_are_unauthenticated() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    let body = charge_success(&encode(tx.id));
    let mut tampered = signed(SECRET_KEY, &body);
    tampered.body = Bytes::from(body.replace("10000", "10001"));
    assert!(matches!(
        g.handle_callback(&tampered),
        Err(CallbackError::Unauthenticated(_))
    ));
    // Signed with the webhook secret: Paystack signs with the secret key, so this is forged.
    assert!(matches!(
        g.handle_callback(&signed(crate::test_support::WEBHOOK_SECRET, &body)),
        Err(CallbackError::Unauthenticated(_))
    ));
    let mut unsigned = signed(SECRET_KEY, &body);
    unsigned.headers.remove(wire::SIGNATURE_HEADER);
    assert!(matches!(
        g.handle_callback(&unsigned),
        Err(CallbackError::Unauthenticated(_))
    ));
}

#[test]
fn signed_events_without_data_are_malformed() {
    let g = gateway();
    assert!(matches!(
        g.handle_callback(&signed(SECRET_KEY, r#"{"event":"charge.success"}"#)),
        Err(CallbackError::Malformed(_))
    ));
    assert!(matches!(
        g.handle_callback(&signed(SECRET_KEY, r#"{"hello":"world"}"#)),
        Err(CallbackError::Malformed(_))
    ));
}

#[test]
fn transfer_and_refund_events() {
    let g = gateway();
    let tx = transaction(TransactionKind::Withdrawal);
    let reversed = format!(
        r#"{{"event":"transfer.reversed","data":{{"amount":10000,"currency":"NGN","id":20615868,"reference":"{}","source":"balance","status":"reversed","transfer_code":"TRF_js075pj9u07f34l"}}}}"#,
        encode(tx.id)
    );
    let outcome = crate::test_support::payment(g.handle_callback(&signed(SECRET_KEY, &reversed)));
    assert!(
        matches!(outcome.status, ReportedStatus::Failed { ref code, .. } if code == "transfer_reversed")
    );
    assert_eq!(outcome.kind, Some(TransactionKind::Withdrawal));
    assert_eq!(outcome.provider_event_id, "transfer.reversed:20615868");

    let processed = format!(
        r#"{{"event":"refund.processed","data":{{"status":"processed","transaction_reference":"{}","refund_reference":"132013318360","amount":"5000","currency":"NGN"}}}}"#,
        encode(tx.id)
    );
    match g.handle_callback(&signed(SECRET_KEY, &processed)) {
        Ok(CallbackEvent::Refund(report)) => {
            assert_eq!(report.transaction_id, tx.id);
            assert_eq!(report.status, RefundStatus::Succeeded);
            assert_eq!(report.money.amount.minor_units(), 5000);
            assert_eq!(report.provider_reference, "132013318360");
        }
        other => panic!("refund.processed gave {other:?}"),
    }
}

#[test]
fn answers_parse_by_the_documented_shapes() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    let reference = encode(tx.id);
    let response = |status: u16, body: String| ProviderResponse {
        status,
        body: Bytes::from(body),
    };
    let initialized = response(
        200,
        format!(
            r#"{{"status":true,"message":"Authorization URL created","data":{{"authorization_url":"https://checkout.paystack.com/3ni8kdavz62431k","access_code":"3ni8kdavz62431k","reference":"{reference}"}}}}"#
        ),
    );
    assert_eq!(
        g.parse_response(ProviderCall::Deposit, &tx, &initialized),
        Some(Ok(Parsed::Submit(SubmitOutcome {
            provider_reference: reference.clone(),
            status: SubmitStatus::RequiresAction {
                url: "https://checkout.paystack.com/3ni8kdavz62431k".into()
            },
            money: None,
        })))
    );
    let duplicate = response(
        400,
        r#"{"status":false,"message":"Duplicate Transaction Reference","type":"validation_error","code":"duplicate_reference"}"#.into(),
    );
    assert!(matches!(
        g.parse_response(ProviderCall::Deposit, &tx, &duplicate),
        Some(Err(ref e)) if e.is_duplicate_reference()
    ));
    let not_found = response(
        400,
        r#"{"status":false,"message":"Transaction reference not found","type":"validation_error","code":"transaction_not_found"}"#.into(),
    );
    assert_eq!(
        g.parse_response(ProviderCall::Status, &tx, &not_found),
        Some(Ok(Parsed::Status(ProviderStatus::NotFound)))
    );
    let abandoned = response(
        200,
        format!(
            r#"{{"status":true,"message":"Verification successful","data":{{"id":4099260516,"status":"abandoned","reference":"{reference}","amount":1050,"currency":"USD","gateway_response":"The transaction was not completed"}}}}"#
        ),
    );
    assert_eq!(
        g.parse_response(ProviderCall::Status, &tx, &abandoned),
        Some(Ok(Parsed::Status(ProviderStatus::AwaitingCustomer)))
    );
    let other = response(
        200,
        r#"{"status":true,"message":"Verification successful","data":{"id":1,"status":"success","reference":"txn-other","amount":1050,"currency":"USD"}}"#.into(),
    );
    assert!(matches!(
        g.parse_response(ProviderCall::Status, &tx, &other),
        Some(Err(GatewayError::Ambiguous { .. }))
    ));
    let unauthorized = response(401, r#"{"status":false,"message":"Invalid key"}"#.into());
    assert!(matches!(
        g.parse_response(ProviderCall::Deposit, &tx, &unauthorized),
        Some(Err(GatewayError::Permanent { .. }))
    ));
}

#[test]
fn a_rate_limited_or_timed_out_status_query_is_never_not_found() {
    // Found by fuzz/ (target `responses`): the "reference not found" body of a 408 or 429
    // was read as NotFound, which after the settle window lets a payment that may have
    // executed go to another provider. The status says "ask again".
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    for status in [408u16, 429] {
        let answer = ProviderResponse {
            status,
            body: Bytes::from(
                r#"{"status":false,"message":"Transaction reference not found","code":"transaction_not_found"}"#,
            ),
        };
        assert!(
            matches!(
                g.parse_response(ProviderCall::Status, &tx, &answer),
                Some(Err(GatewayError::Retryable { .. }))
            ),
            "{status}"
        );
    }
}

#[test]
fn settings_are_typed_and_secrets_stay_hidden() {
    assert!(gateway_with(serde_json::json!({"bank_cod": "058"})).is_err());
    assert!(gateway_with(serde_json::json!({"customer_email_domain": "a@b"})).is_err());
    let g = gateway();
    let debug = format!("{g:?}");
    assert!(!debug.contains(SECRET_KEY), "{debug}");
    assert!(
        !debug.contains(crate::test_support::WEBHOOK_SECRET),
        "{debug}"
    );
}

#[test]
fn placeholder_emails() {
    let g = gateway();
    assert_eq!(g.email("cust_1"), "cust_1@example.com");
    assert_eq!(g.email("ada@lovelace.org"), "ada@lovelace.org");
    let odd = g.email("wallet 42/ü");
    assert!(
        odd.starts_with('c') && odd.ends_with("@example.com"),
        "{odd}"
    );
    assert_eq!(odd.len(), 1 + 32 + "@example.com".len());
}

#[tokio::test]
async fn withdrawals_need_a_bank_code() {
    let g = gateway_with(serde_json::json!({})).unwrap_or_else(|e| panic!("{e}"));
    let tx = transaction(TransactionKind::Withdrawal);
    assert!(matches!(
        g.withdraw(&tx).await,
        Err(GatewayError::Permanent { ref code, .. }) if code == "not_configured"
    ));
}

proptest! {
    /// Every id round-trips, and the encoding uses only Paystack's reference characters.
    #[test]
    fn references_round_trip(n in any::<u128>()) {
        let id = TransactionId::parse(&format!("txn_{n:032x}")).unwrap_or_else(|e| panic!("{e}"));
        let g = gateway();
        let encoded = g.encode_reference(id);
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        prop_assert_eq!(g.decode_reference(&encoded), Ok(id));
    }

    #[test]
    fn decoding_never_panics(text in ".{0,80}") {
        let _ = decode(&text);
    }
}

#[test]
fn decoding_refuses_other_forms() {
    let id = TransactionId::new();
    assert!(decode(&id.to_string()).is_err());
    assert!(decode("txn-").is_err());
    assert!(decode("T685312322670591").is_err());
}
