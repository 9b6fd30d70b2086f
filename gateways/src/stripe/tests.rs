use super::*;
use crate::secret::Secret;
use crate::test_support::{settings, transaction, WEBHOOK_SECRET};
use bytes::Bytes;
use chrono::Duration as Span;
use paygate_core::domain::TransactionId;

fn gateway() -> StripeGateway {
    StripeGateway::new(settings("stripe", "http://127.0.0.1:9/acct"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A `payment_intent.succeeded` event as documented, for `tx`.
fn succeeded_event(tx: &Transaction, created: i64) -> String {
    serde_json::json!({
        "id": "evt_3MtwBwLkdIwHu7ix0pPi4Ps4",
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": {"object": {
            "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
            "object": "payment_intent",
            "amount": tx.money.amount.minor_units(),
            "currency": "usd",
            "metadata": {"paygate_reference": tx.id.to_string()},
            "status": "succeeded",
        }},
        "livemode": false,
        "pending_webhooks": 1,
        "type": "payment_intent.succeeded",
    })
    .to_string()
}

fn signed(body: &str, t: i64, received_at: DateTime<Utc>) -> CallbackRequest {
    let header = signature_header(WEBHOOK_SECRET.as_bytes(), t, body.as_bytes());
    let mut headers = BTreeMap::new();
    headers.insert("content-type".to_owned(), CONTENT_TYPE.to_owned());
    headers.insert(SIGNATURE_HEADER.to_owned(), header);
    CallbackRequest {
        body: Bytes::from(body.to_owned()),
        content_type: Some(CONTENT_TYPE.into()),
        headers,
        path: None,
        received_at,
    }
}

#[test]
fn documented_event_is_accepted_and_forgeries_are_not() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    // A whole second, as Stripe's `t` is.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_else(Utc::now);
    let t = now.timestamp();
    let body = succeeded_event(&tx, t);
    let outcome = crate::test_support::payment(g.handle_callback(&signed(&body, t, now)));
    assert_eq!(
        (
            outcome.transaction_id,
            outcome.money,
            outcome.status,
            outcome.kind
        ),
        (
            tx.id,
            tx.money,
            ReportedStatus::Succeeded,
            Some(TransactionKind::Deposit)
        )
    );
    assert_eq!(outcome.provider_event_id, "evt_3MtwBwLkdIwHu7ix0pPi4Ps4");
    assert_eq!(outcome.provider_reference, "pi_3MtwBwLkdIwHu7ix28a3tqPa");

    // 301 s after the signed timestamp: refused; 300 s: accepted.
    let stale = signed(&body, t, now + Span::seconds(301));
    assert!(matches!(
        g.handle_callback(&stale),
        Err(CallbackError::Unauthenticated(_))
    ));
    assert!(g
        .handle_callback(&signed(&body, t, now + Span::seconds(300)))
        .is_ok());

    // Tampered body under the genuine signature.
    let mut tampered = signed(&body, t, now);
    tampered.body = Bytes::from(body.replace("\"usd\"", "\"eur\""));
    assert!(matches!(
        g.handle_callback(&tampered),
        Err(CallbackError::Unauthenticated(_))
    ));

    // The timestamp is signed: moving it breaks the signature.
    let mut moved = signed(&body, t, now);
    let header = moved
        .headers
        .get(SIGNATURE_HEADER)
        .cloned()
        .unwrap_or_default();
    moved.headers.insert(
        SIGNATURE_HEADER.into(),
        header.replace(&format!("t={t}"), &format!("t={}", t + 1)),
    );
    assert!(matches!(
        g.handle_callback(&moved),
        Err(CallbackError::Unauthenticated(_))
    ));

    // Any matching v1 is accepted (secret roll); none matching is refused.
    let good = signature_header(WEBHOOK_SECRET.as_bytes(), t, body.as_bytes());
    let old = signature_header(b"whsec_old", t, body.as_bytes());
    let old_v1 = old.split_once(",v1=").map(|(_, v)| v).unwrap_or_default();
    let mut rolled = signed(&body, t, now);
    rolled.headers.insert(
        SIGNATURE_HEADER.into(),
        format!("{good},v1={old_v1},v0=abc"),
    );
    assert!(g.handle_callback(&rolled).is_ok());
    let mut only_old = signed(&body, t, now);
    only_old.headers.insert(SIGNATURE_HEADER.into(), old);
    assert!(matches!(
        g.handle_callback(&only_old),
        Err(CallbackError::Unauthenticated(_))
    ));
    let mut none = signed(&body, t, now);
    none.headers.remove(SIGNATURE_HEADER);
    assert!(matches!(
        g.handle_callback(&none),
        Err(CallbackError::Unauthenticated(_))
    ));
}

#[test]
fn unknown_and_foreign_events_are_ignored_and_objectless_ones_malformed() {
    let g = gateway();
    let now = Utc::now();
    let t = now.timestamp();
    let unknown = r#"{"id":"evt_1","object":"event","type":"customer.subscription.created","data":{"object":{"id":"sub_1","object":"subscription"}}}"#;
    assert!(matches!(
        g.handle_callback(&signed(unknown, t, now)),
        Ok(CallbackEvent::Ignored { event }) if event == "customer.subscription.created"
    ));
    let foreign = r#"{"id":"evt_2","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","object":"payment_intent","amount":100,"currency":"usd","status":"succeeded","metadata":{}}}}"#;
    assert!(matches!(
        g.handle_callback(&signed(foreign, t, now)),
        Ok(CallbackEvent::Ignored { .. })
    ));
    let objectless = r#"{"id":"evt_3","type":"payment_intent.succeeded","data":{}}"#;
    assert!(matches!(
        g.handle_callback(&signed(objectless, t, now)),
        Err(CallbackError::Malformed(_))
    ));
    let bad_reference = r#"{"id":"evt_4","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","object":"payment_intent","amount":100,"currency":"usd","status":"succeeded","metadata":{"paygate_reference":"order-7"}}}}"#;
    assert!(matches!(
        g.handle_callback(&signed(bad_reference, t, now)),
        Err(CallbackError::Malformed(_))
    ));
}

#[test]
fn reference_codec_round_trips() {
    let g = gateway();
    for _ in 0..10 {
        let id = TransactionId::new();
        let encoded = g.encode_reference(id);
        assert!(encoded.len() <= 255, "Stripe idempotency keys are ≤ 255");
        assert_eq!(g.decode_reference(&encoded), Ok(id));
    }
}

#[test]
fn amounts_follow_stripes_currency_units() {
    let money = |units, code| Money::from_parts(units, code).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(to_stripe_amount(&money(1050, "USD")), Some(1050));
    assert_eq!(to_stripe_amount(&money(500, "JPY")), Some(500));
    assert_eq!(to_stripe_amount(&money(5, "ISK")), Some(500));
    assert_eq!(to_stripe_amount(&money(1005, "KWD")), Some(1005));
    // MGA: two decimals in ISO 4217, zero at Stripe: only whole ariary can be sent.
    assert_eq!(to_stripe_amount(&money(1200, "MGA")), Some(12));
    assert_eq!(to_stripe_amount(&money(1201, "MGA")), None);
    assert_eq!(from_stripe_amount(500, "isk"), Some(money(5, "ISK")));
    assert_eq!(from_stripe_amount(550, "isk"), None);
    assert_eq!(from_stripe_amount(1050, "usd"), Some(money(1050, "USD")));
    assert_eq!(from_stripe_amount(0, "usd"), None);
}

#[test]
fn extra_keys_are_typed_and_unknown_ones_refused() {
    let mut s = settings("stripe", "http://127.0.0.1:9/");
    s.extra
        .insert("payment_methd".into(), serde_json::json!("pm_card_visa"));
    assert!(StripeGateway::new(s).is_err());
    let mut s = settings("stripe", "http://127.0.0.1:9/");
    s.extra
        .insert("payment_method".into(), serde_json::json!("card_123"));
    assert!(StripeGateway::new(s).is_err());
    let mut s = settings("stripe", "http://127.0.0.1:9/");
    s.extra.insert(
        "return_url".into(),
        serde_json::json!("https://merchant.example/back"),
    );
    let g = StripeGateway::new(s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.payment_method, DEFAULT_PAYMENT_METHOD);
}

#[test]
fn debug_never_prints_secrets() {
    let mut s = settings("stripe", "http://127.0.0.1:9/");
    s.secret_key = Secret::new("sk_live_very_secret");
    let printed = format!(
        "{:?}",
        StripeGateway::new(s).unwrap_or_else(|e| panic!("{e}"))
    );
    assert!(!printed.contains("sk_live_very_secret"), "{printed}");
    assert!(!printed.contains(WEBHOOK_SECRET), "{printed}");
}

#[test]
fn status_without_stripes_id_searches_by_our_reference() {
    let tx = transaction(TransactionKind::Deposit);
    match status_path(&tx) {
        (path, StatusPath::Search(query)) => {
            assert_eq!(path, "v1/payment_intents/search");
            assert_eq!(
                query,
                vec![(
                    "query",
                    format!("metadata['paygate_reference']:'{}'", tx.id)
                )]
            );
        }
        (path, _) => panic!("expected a search, got {path}"),
    }
    let mut tx = transaction(TransactionKind::Withdrawal);
    tx.provider_reference = Some("tr_1".into());
    assert!(matches!(status_path(&tx), (p, StatusPath::ById) if p == "v1/transfers/tr_1"));
}

#[test]
fn a_redirect_that_is_not_a_web_address_is_never_passed_on() {
    // Found by fuzz/ (target `responses`): `next_action.redirect_to_url.url` went to the
    // merchant unread, `javascript:` included.
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    let answer = |url: &str| ProviderResponse {
        status: 200,
        body: Bytes::from(
            serde_json::json!({
                "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
                "object": "payment_intent",
                "amount": tx.money.amount.minor_units(),
                "currency": "usd",
                "metadata": {"paygate_reference": tx.id.to_string()},
                "status": "requires_action",
                "next_action": {"type": "redirect_to_url", "redirect_to_url": {"url": url}},
            })
            .to_string(),
        ),
    };
    let forged = answer("javascript:alert(document.cookie)");
    assert!(matches!(
        g.parse_response(ProviderCall::Deposit, &tx, &forged),
        Some(Err(GatewayError::Ambiguous { .. }))
    ));
    let real = answer("https://hooks.stripe.com/redirect/authenticate/src_1");
    assert!(matches!(
        g.parse_response(ProviderCall::Deposit, &tx, &real),
        Some(Ok(Parsed::Submit(SubmitOutcome {
            status: SubmitStatus::RequiresAction { .. },
            ..
        })))
    ));
}
