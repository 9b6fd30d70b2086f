use super::*;
use crate::test_support::WEBHOOK_SECRET;
use bytes::Bytes;
use paygate_core::domain::{CustomerReference, MerchantId, NewTransaction};
use std::collections::BTreeMap;

fn settings() -> GatewaySettings {
    let mut settings = crate::test_support::settings("mpesa", "http://127.0.0.1:9/acct");
    settings.extra = serde_json::from_value(json!({
        "consumer_key": "ck_test",
        "shortcode": "174379",
        "passkey": "pk_test",
        "callback_base_url": "https://pay.example.com",
        "initiator_name": "testapi",
        "security_credential": "cred_test",
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    settings
}

fn gateway() -> MpesaGateway {
    MpesaGateway::new(settings()).unwrap_or_else(|e| panic!("{e}"))
}

fn transaction(kind: TransactionKind, cents: i64, currency: &str, customer: &str) -> Transaction {
    Transaction::create(
        NewTransaction {
            merchant_id: MerchantId::new(),
            kind,
            money: Money::from_parts(cents, currency).unwrap_or_else(|e| panic!("{e}")),
            customer: CustomerReference::parse(customer).unwrap_or_else(|e| panic!("{e}")),
            gateway: None,
            callback_url: None,
            metadata: json!({}),
        },
        Utc::now(),
    )
}

fn request(path: Option<String>, body: &str) -> CallbackRequest {
    CallbackRequest {
        body: Bytes::from(body.to_owned()),
        content_type: Some(CONTENT_TYPE.into()),
        headers: BTreeMap::from([("content-type".to_owned(), CONTENT_TYPE.to_owned())]),
        path,
        received_at: Utc::now(),
    }
}

fn path_for(tx: &Transaction, hook: Hook) -> String {
    let reference = path_reference(tx.id, hook, tx.money);
    let token = callback::path_token(WEBHOOK_SECRET.as_bytes(), &reference);
    format!("{reference}/{token}")
}

fn stk_paid(amount: &str) -> String {
    format!(
        r#"{{"Body":{{"stkCallback":{{"MerchantRequestID":"29115-34620561-1","CheckoutRequestID":"ws_CO_191220191020363925","ResultCode":0,"ResultDesc":"The service request is processed successfully.","CallbackMetadata":{{"Item":[{{"Name":"Amount","Value":{amount}}},{{"Name":"MpesaReceiptNumber","Value":"NLJ7RT61SV"}},{{"Name":"TransactionDate","Value":20191219102115}},{{"Name":"PhoneNumber","Value":254708374149}}]}}}}}}}}"#
    )
}

#[test]
fn amounts_are_read_from_their_text() {
    let cases = [
        ("1", Some(100)),
        ("1.00", Some(100)),
        ("1050.5", Some(105_050)),
        ("1050.01", Some(105_001)),
        ("1.001", None),
        ("-1", None),
        // Exactly 1000 (serde_json hands decimals over as f64, whose shortest text is exact
        // for amounts of up to 15 digits).
        ("1e3", Some(100_000)),
        ("1e20", None),
    ];
    for (raw, expected) in cases {
        let value: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kes_cents(&value), expected, "{raw}");
    }
    assert_eq!(kes_cents(&json!("12.30")), Some(1230));
    assert_eq!(kes_cents(&json!(true)), None);
}

#[test]
fn a_genuine_stk_callback_parses_and_a_wrong_token_is_refused() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit, 100, "KES", "254708374149");
    let outcome = crate::test_support::payment(
        g.handle_callback(&request(Some(path_for(&tx, Hook::Stk)), &stk_paid("1.00"))),
    );
    assert_eq!(outcome.transaction_id, tx.id);
    assert_eq!(outcome.status, ReportedStatus::Succeeded);
    assert_eq!(outcome.money, tx.money);
    assert_eq!(outcome.provider_event_id, "ws_CO_191220191020363925:0");

    let reference = path_reference(tx.id, Hook::Stk, tx.money);
    let wrong = callback::path_token(b"guess", &reference);
    for path in [
        None,
        Some(reference.clone()),
        Some(format!("{reference}/{wrong}")),
        Some(format!("{reference}/")),
    ] {
        assert!(
            matches!(
                g.handle_callback(&request(path.clone(), &stk_paid("1.00"))),
                Err(CallbackError::Unauthenticated(_))
            ),
            "{path:?}"
        );
    }
}

#[test]
fn cancelled_push_and_timeouts() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit, 100, "KES", "254708374149");
    let cancelled = r#"{"Body":{"stkCallback":{"MerchantRequestID":"1-2-1","CheckoutRequestID":"ws_CO_1","ResultCode":1032,"ResultDesc":"Request cancelled by user"}}}"#;
    let outcome = crate::test_support::payment(
        g.handle_callback(&request(Some(path_for(&tx, Hook::Stk)), cancelled)),
    );
    assert!(
        matches!(outcome.status, ReportedStatus::Failed { ref code, .. } if code == "cancelled")
    );
    assert_eq!(outcome.money, tx.money);

    let payout = transaction(TransactionKind::Withdrawal, 1000, "KES", "254708374149");
    let timeout = r#"{"Result":{"ResultType":1,"ResultCode":1,"ResultDesc":"The service request has timed out."}}"#;
    assert!(matches!(
        g.handle_callback(&request(Some(path_for(&payout, Hook::B2cTimeout)), timeout)),
        Ok(CallbackEvent::Ignored { .. })
    ));
    // An STK body on a B2C result URL is not believed.
    assert!(matches!(
        g.handle_callback(&request(
            Some(path_for(&payout, Hook::B2cResult)),
            cancelled
        )),
        Err(CallbackError::Malformed(_))
    ));
}

#[test]
fn amounts_and_customers_are_checked_before_sending() {
    let g = gateway();
    for tx in [
        transaction(TransactionKind::Deposit, 1050, "KES", "254708374149"),
        transaction(TransactionKind::Deposit, 1000, "USD", "254708374149"),
        transaction(TransactionKind::Deposit, 1000, "KES", "cust_1"),
        transaction(TransactionKind::Withdrawal, 1000, "KES", "0708374149"),
    ] {
        let body = match tx.kind {
            TransactionKind::Deposit => g.stk_push_body(&tx),
            TransactionKind::Withdrawal => g.b2c_body(&tx),
        };
        assert!(
            matches!(body, Err(GatewayError::Permanent { .. })),
            "{tx:?}"
        );
    }
    let tx = transaction(TransactionKind::Deposit, 105_000, "KES", "254708374149");
    let body = g.stk_push_body(&tx).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["Amount"], json!(1050));
    let (timestamp, password) = g.password();
    assert_eq!(timestamp.len(), 14);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(password)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decoded, format!("174379pk_test{timestamp}").into_bytes());
    let url = body["CallBackURL"].as_str().unwrap_or_default();
    assert!(
        url.starts_with(&format!(
            "https://pay.example.com/callbacks/test-mpesa/{}.d105000/",
            tx.id
        )),
        "{url}"
    );
}

#[test]
fn debug_shows_no_secret() {
    let shown = format!("{:?}", gateway());
    for secret in ["pk_test", "cred_test", "sk_test", WEBHOOK_SECRET] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[test]
fn unknown_keys_are_refused() {
    let mut s = settings();
    s.extra.insert("shortcod".into(), json!("1"));
    assert!(MpesaGateway::new(s).is_err());
}

#[test]
fn status_without_a_checkout_id_is_an_error_never_not_found() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit, 100, "KES", "254708374149");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.block_on(g.status(&tx)).is_err());
}

/// A quick local reading of `gateways/fixtures/mpesa` (the lead's runner is the real one).
#[test]
fn fixtures_read_as_expected() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mpesa");
    let read = |p: &std::path::Path| -> Value {
        serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let config = read(&dir.join("gateway.json"));
    let mut s = crate::test_support::settings("mpesa", "http://127.0.0.1:9/");
    s.secret_key = Secret::new(config["secret_key"].as_str().unwrap_or_default());
    s.webhook_secret = Secret::new(config["webhook_secret"].as_str().unwrap_or_default());
    s.extra = serde_json::from_value(config["extra"].clone()).unwrap_or_else(|e| panic!("{e}"));
    let g = MpesaGateway::new(s).unwrap_or_else(|e| panic!("{e}"));
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.join("callbacks")).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let f = read(&path);
        let ct = f["content_type"].as_str().map(str::to_owned);
        let mut r = request(
            f["path"].as_str().map(str::to_owned),
            f["body"].as_str().unwrap_or_default(),
        );
        r.content_type = ct.clone();
        r.headers = ct
            .map(|c| ("content-type".to_owned(), c))
            .into_iter()
            .collect();
        let got = g.handle_callback(&r);
        let e = &f["expect"];
        let ok = match (e["event"].as_str(), e["error"].as_str(), &got) {
            (Some("ignored"), _, Ok(CallbackEvent::Ignored { .. })) => true,
            (Some("payment"), _, Ok(CallbackEvent::Payment(o))) => {
                o.transaction_id.to_string() == e["transaction_id"].as_str().unwrap_or_default()
                    && o.money.amount.minor_units() == e["amount"].as_i64().unwrap_or(0)
                    && o.money.currency.code() == e["currency"].as_str().unwrap_or_default()
                    && matches!(
                        (&o.status, e["status"].as_str()),
                        (ReportedStatus::Succeeded, Some("succeeded"))
                            | (ReportedStatus::Failed { .. }, Some("failed"))
                    )
                    && o.kind.map(|k| k.as_str().to_owned())
                        == e["kind"].as_str().map(str::to_owned)
            }
            (_, Some("unauthenticated"), Err(CallbackError::Unauthenticated(_)))
            | (_, Some("malformed"), Err(CallbackError::Malformed(_)))
            | (
                _,
                Some("unsupported_content_type"),
                Err(CallbackError::UnsupportedContentType(_)),
            ) => true,
            _ => false,
        };
        assert!(ok, "{}: {got:?}", path.display());
        seen += 1;
    }
    for entry in std::fs::read_dir(dir.join("responses")).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let f = read(&path);
        let t = &f["transaction"];
        let kind = match t["kind"].as_str() {
            Some("withdrawal") => TransactionKind::Withdrawal,
            _ => TransactionKind::Deposit,
        };
        let mut tx = transaction(
            kind,
            t["amount"].as_i64().unwrap_or(0),
            t["currency"].as_str().unwrap_or_default(),
            "254708374149",
        );
        tx.id = TransactionId::parse(t["id"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        tx.provider_reference = t["provider_reference"].as_str().map(str::to_owned);
        let call = match f["call"].as_str() {
            Some("deposit") => ProviderCall::Deposit,
            Some("withdraw") => ProviderCall::Withdraw,
            Some("status") => ProviderCall::Status,
            _ => ProviderCall::Refund,
        };
        let response = ProviderResponse {
            status: u16::try_from(f["status"].as_u64().unwrap_or(0)).unwrap_or(0),
            body: Bytes::from(f["body"].as_str().unwrap_or_default().to_owned()),
        };
        let got = g.parse_response(call, &tx, &response);
        let e = &f["expect"];
        let ok = match (&got, e) {
            (Some(Ok(Parsed::Submit(o))), e) if e["submit"] == "accepted" => {
                o.status == SubmitStatus::Accepted
                    && Some(o.provider_reference.as_str()) == e["provider_reference"].as_str()
            }
            (Some(Ok(Parsed::Status(s))), e) => matches!(
                (s, e["status"].as_str()),
                (ProviderStatus::InProgress, Some("in_progress"))
                    | (ProviderStatus::Unsupported, Some("unsupported"))
                    | (
                        ProviderStatus::Final {
                            status: ReportedStatus::Succeeded,
                            ..
                        },
                        Some("succeeded")
                    )
                    | (
                        ProviderStatus::Final {
                            status: ReportedStatus::Failed { .. },
                            ..
                        },
                        Some("failed")
                    )
            ),
            (Some(Err(err)), e) => matches!(
                (err, e["error"].as_str()),
                (GatewayError::Retryable { .. }, Some("retryable"))
                    | (GatewayError::Ambiguous { .. }, Some("ambiguous"))
                    | (GatewayError::Permanent { .. }, Some("permanent"))
            ),
            _ => false,
        };
        assert!(ok, "{}: {got:?}", path.display());
        seen += 1;
    }
    assert!(seen >= 30, "{seen}");
}

#[test]
fn references_round_trip_and_path_segments_decode() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit, 100, "KES", "254708374149");
    assert_eq!(g.decode_reference(&g.encode_reference(tx.id)), Ok(tx.id));
    assert_eq!(
        g.decode_reference(&path_reference(tx.id, Hook::Stk, tx.money)),
        Ok(tx.id)
    );
}
