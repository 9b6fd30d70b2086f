use super::*;
use crate::test_support::{fields, settings, transaction, WEBHOOK_SECRET};
use chrono::{Duration as Span, Utc};

fn gateway() -> ProtobufGateway {
    ProtobufGateway::new(settings("sandbox-proto", "http://127.0.0.1:9/acct"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn signed_events_parse_and_forgeries_do_not() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    let now = Utc::now();
    let signed = signed_callback(
        &Secret::new(WEBHOOK_SECRET),
        &fields(&tx, ReportedStatus::Succeeded, now),
    );
    let outcome = crate::test_support::payment(g.handle_callback(&signed.to_request(now)));
    assert_eq!((outcome.transaction_id, outcome.money), (tx.id, tx.money));

    let forged = signed_callback(
        &Secret::new("guess"),
        &fields(&tx, ReportedStatus::Succeeded, now),
    );
    assert!(matches!(
        g.handle_callback(&forged.to_request(now)),
        Err(CallbackError::Unauthenticated(_))
    ));

    // Re-signing a payload with a different amount under a wrong key is still refused;
    // re-using a genuine signature on another payload too.
    let mut other = event(&fields(&tx, ReportedStatus::Succeeded, now));
    other.amount_minor = 1;
    let genuine = SignedEvent::decode(signed.body.as_ref()).unwrap_or_else(|e| panic!("{e}"));
    let spliced = SignedEvent {
        payload: other.encode_to_vec(),
        signature: genuine.signature,
    };
    let mut request = signed.to_request(now);
    request.body = Bytes::from(spliced.encode_to_vec());
    assert!(matches!(
        g.handle_callback(&request),
        Err(CallbackError::Unauthenticated(_))
    ));

    assert!(matches!(
        g.handle_callback(&signed.to_request(now - Span::minutes(10))),
        Err(CallbackError::Unauthenticated(_))
    ));
    let unsigned = SignedEvent {
        payload: other.encode_to_vec(),
        signature: Vec::new(),
    };
    request.body = Bytes::from(unsigned.encode_to_vec());
    assert!(matches!(
        g.handle_callback(&request),
        Err(CallbackError::Unauthenticated(_))
    ));
}

#[test]
fn unknown_state_or_bad_money_is_malformed() {
    let g = gateway();
    let tx = transaction(TransactionKind::Withdrawal);
    let now = Utc::now();
    let secret = Secret::new(WEBHOOK_SECRET);
    let mut e = event(&fields(&tx, ReportedStatus::Succeeded, now));
    e.state = 99;
    assert!(matches!(
        g.handle_callback(&sign_body(&secret, e.encode_to_vec()).to_request(now)),
        Err(CallbackError::Malformed(_))
    ));
    let mut e = event(&fields(&tx, ReportedStatus::Succeeded, now));
    e.amount_minor = -5;
    assert!(matches!(
        g.handle_callback(&sign_body(&secret, e.encode_to_vec()).to_request(now)),
        Err(CallbackError::Malformed(_))
    ));
    let mut e = event(&fields(&tx, ReportedStatus::Succeeded, now));
    e.reference = "mer_00000000000000000000000000000000".into();
    assert!(matches!(
        g.handle_callback(&sign_body(&secret, e.encode_to_vec()).to_request(now)),
        Err(CallbackError::Malformed(_))
    ));
}
