use super::*;
use crate::test_support::{fields, settings, transaction, WEBHOOK_SECRET};
use chrono::{Duration as Span, Utc};

fn gateway() -> JsonGateway {
    JsonGateway::new(settings("sandbox-json", "http://127.0.0.1:9/acct"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn signed_webhooks_parse_and_forgeries_do_not() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    let now = Utc::now();
    let signed = signed_callback(
        &Secret::new(WEBHOOK_SECRET),
        &fields(&tx, ReportedStatus::Succeeded, now),
    );
    assert_eq!(signed.headers[0].0, wire::SIGNATURE_HEADER);
    assert_eq!(
        signed.headers[0].1.len(),
        128,
        "hex of a 64-byte HMAC-SHA512"
    );
    let outcome = crate::test_support::payment(g.handle_callback(&signed.to_request(now)));
    assert_eq!(
        (outcome.transaction_id, outcome.money, outcome.status),
        (tx.id, tx.money, ReportedStatus::Succeeded)
    );

    let forged = signed_callback(
        &Secret::new("guess"),
        &fields(&tx, ReportedStatus::Succeeded, now),
    );
    assert!(matches!(
        g.handle_callback(&forged.to_request(now)),
        Err(CallbackError::Unauthenticated(_))
    ));
    assert!(matches!(
        g.handle_callback(&signed.to_request(now + Span::minutes(10))),
        Err(CallbackError::Unauthenticated(_))
    ));

    let wrong_shape = sign_body(
        &Secret::new(WEBHOOK_SECRET),
        Bytes::from_static(br#"{"event":"charge.success"}"#),
    );
    assert!(matches!(
        g.handle_callback(&wrong_shape.to_request(now)),
        Err(CallbackError::Malformed(_))
    ));
}

#[test]
fn event_and_status_must_agree() {
    let g = gateway();
    let tx = transaction(TransactionKind::Withdrawal);
    let now = Utc::now();
    let mut event = event(&fields(&tx, ReportedStatus::Succeeded, now));
    assert_eq!(event.event, "transfer.success");
    event.data.status = PaymentState::Failed;
    let body = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
    let signed = sign_body(&Secret::new(WEBHOOK_SECRET), body);
    assert!(matches!(
        g.handle_callback(&signed.to_request(now)),
        Err(CallbackError::Malformed(_))
    ));
}

#[test]
fn refusals_carry_the_provider_code() {
    let body =
        br#"{"status":false,"message":"Insufficient balance","code":"insufficient_balance"}"#;
    assert_eq!(
        refusal(reqwest::StatusCode::BAD_REQUEST, body),
        GatewayError::Permanent {
            code: "insufficient_balance".into(),
            reason: "Insufficient balance".into()
        }
    );
    assert!(
        matches!(refusal(reqwest::StatusCode::BAD_REQUEST, b"<html>"), GatewayError::Permanent { code, .. } if code == "http_400")
    );
    assert!(matches!(
        success_data(b"{\"status\":true}"),
        Err(GatewayError::Ambiguous { .. })
    ));
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // Port 9 (discard) is closed on test machines.
    let g = gateway();
    let result = g.deposit(&transaction(TransactionKind::Deposit)).await;
    assert!(
        matches!(result, Err(GatewayError::Retryable { .. })),
        "{result:?}"
    );
}

#[test]
fn signed_refund_webhooks_parse_as_refund_reports() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    let now = Utc::now();
    let refund = paygate_core::domain::RefundId::new();
    let mut event = wire::RefundWebhookEvent {
        event: "refund.processed".into(),
        event_id: "evt_9".into(),
        sent_at: now,
        data: wire::RefundData {
            id: "rf_1".into(),
            reference: refund.to_string(),
            transaction: tx.id.to_string(),
            status: wire::RefundState::Succeeded,
            amount: 500,
            currency: "USD".into(),
            failure_code: None,
            gateway_response: None,
        },
    };
    let signed = signed_refund_callback(&Secret::new(WEBHOOK_SECRET), &event);
    let Ok(CallbackEvent::Refund(report)) = g.handle_callback(&signed.to_request(now)) else {
        panic!("not a refund report");
    };
    assert_eq!(report.transaction_id, tx.id);
    assert_eq!(report.refund_id, Some(refund));
    assert_eq!(report.provider_reference, "rf_1");
    assert_eq!(report.provider_event_id, "evt_9");
    assert_eq!(report.status, RefundStatus::Succeeded);
    assert_eq!(report.money.amount.minor_units(), 500);

    // The event and the refund's status must agree.
    event.data.status = wire::RefundState::Failed;
    let signed = signed_refund_callback(&Secret::new(WEBHOOK_SECRET), &event);
    assert!(matches!(
        g.handle_callback(&signed.to_request(now)),
        Err(CallbackError::Malformed(_))
    ));
    // Forged: refused before anything is read.
    let forged = signed_refund_callback(&Secret::new("guess"), &event);
    assert!(matches!(
        g.handle_callback(&forged.to_request(now)),
        Err(CallbackError::Unauthenticated(_))
    ));
}
