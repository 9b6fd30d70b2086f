use super::*;
use crate::test_support::{fields, settings, transaction, WEBHOOK_SECRET};
use chrono::Duration as Span;

fn gateway() -> SoapGateway {
    SoapGateway::new(settings("sandbox-soap", "http://127.0.0.1:9/acct"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn envelopes_serialize_with_prefixes_and_parse_by_local_name() {
    let header = wire::Header {
        auth: wire::Auth {
            api_key: "k".into(),
        },
    };
    let order = wire::PaymentOrder {
        reference: "txn_1".into(),
        amount: 1050,
        currency: "USD".into(),
        customer: "c".into(),
    };
    let xml = wire::to_xml(&Envelope::new(
        Some(header.clone()),
        wire::Operation::Deposit(order.clone()),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        xml.contains("<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\""),
        "{xml}"
    );
    assert!(
        xml.contains(
            "<pay:Deposit><pay:Reference>txn_1</pay:Reference><pay:Amount>1050</pay:Amount>"
        ),
        "{xml}"
    );
    let parsed: Envelope<wire::Operation> =
        wire::from_xml(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}: {xml}"));
    assert_eq!(parsed.header, Some(header));
    assert_eq!(parsed.body.content, wire::Operation::Deposit(order));

    // Another peer's prefixes parse the same.
    let other = r#"<?xml version="1.0"?><S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/" xmlns:p="urn:sandbox:payments"><S:Body><p:GetStatus><p:Reference>txn_2</p:Reference></p:GetStatus></S:Body></S:Envelope>"#;
    let parsed: Envelope<wire::Operation> =
        wire::from_xml(other.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        parsed.body.content,
        wire::Operation::GetStatus(wire::StatusQuery {
            reference: "txn_2".into()
        })
    );
}

#[test]
fn faults_round_trip_and_map_to_error_classes() {
    let xml = wire::to_xml(&wire::fault(
        "soap:Client",
        "Card declined",
        Some("declined"),
    ))
    .unwrap_or_default();
    let parsed: Envelope<Reply> =
        wire::from_xml(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let Reply::Fault(fault) = parsed.body.content else {
        panic!("not a fault: {xml}")
    };
    let client_error = reqwest::StatusCode::BAD_REQUEST;
    let server_error = reqwest::StatusCode::INTERNAL_SERVER_ERROR;
    assert_eq!(
        fault_error(&fault, client_error),
        GatewayError::Permanent {
            code: "declined".into(),
            reason: "Card declined".into()
        }
    );
    let server = wire::Fault {
        faultcode: "soap:Server".into(),
        faultstring: "down".into(),
        detail: None,
    };
    assert!(matches!(
        fault_error(&server, server_error),
        GatewayError::Ambiguous { .. }
    ));
    let duplicate = wire::Fault {
        faultcode: "soap:Client.Duplicate".into(),
        faultstring: "Duplicate reference".into(),
        detail: Some(wire::FaultDetail {
            error_code: Some("duplicate_reference".into()),
        }),
    };
    assert!(matches!(
        fault_error(&duplicate, client_error),
        GatewayError::Ambiguous { .. }
    ));
    let version = wire::Fault {
        faultcode: "soap:VersionMismatch".into(),
        faultstring: "v".into(),
        detail: None,
    };
    assert!(
        matches!(fault_error(&version, server_error), GatewayError::Permanent { code, .. } if code == "soap_versionmismatch")
    );
}

#[test]
fn signed_callbacks_parse_to_the_reported_outcome() {
    let g = gateway();
    let tx = transaction(TransactionKind::Withdrawal);
    let now = Utc::now();
    let failed = ReportedStatus::Failed {
        code: "insufficient_funds".into(),
        reason: "NSF".into(),
    };
    let signed = signed_callback(
        &Secret::new(WEBHOOK_SECRET),
        &fields(&tx, failed.clone(), now),
    );
    let outcome = crate::test_support::payment(g.handle_callback(&signed.to_request(now)));
    assert_eq!(outcome.transaction_id, tx.id);
    assert_eq!(outcome.status, failed);
    assert_eq!(outcome.money, tx.money);
    assert_eq!(outcome.provider_reference, "prov_123");
    assert_eq!(outcome.provider_event_id, "evt_1");
}

#[test]
fn forged_stale_and_truncated_callbacks_are_refused() {
    let g = gateway();
    let tx = transaction(TransactionKind::Deposit);
    let now = Utc::now();
    let genuine = signed_callback(
        &Secret::new(WEBHOOK_SECRET),
        &fields(&tx, ReportedStatus::Succeeded, now),
    );

    let forged = signed_callback(
        &Secret::new("not-the-secret"),
        &fields(&tx, ReportedStatus::Succeeded, now),
    );
    assert!(matches!(
        g.handle_callback(&forged.to_request(now)),
        Err(CallbackError::Unauthenticated(_))
    ));

    let mut tampered = genuine.clone();
    tampered.body = Bytes::from(String::from_utf8_lossy(&genuine.body).replace("1050", "9050"));
    assert!(matches!(
        g.handle_callback(&tampered.to_request(now)),
        Err(CallbackError::Unauthenticated(_))
    ));

    let stale = genuine.to_request(now + Span::minutes(6));
    assert!(
        matches!(g.handle_callback(&stale), Err(CallbackError::Unauthenticated(m)) if m.contains("timestamp"))
    );

    // Truncated but correctly signed: authentic, unparseable.
    let truncated = sign_body(
        &Secret::new(WEBHOOK_SECRET),
        genuine.body.slice(..genuine.body.len() / 2),
        now,
    );
    assert!(matches!(
        g.handle_callback(&truncated.to_request(now)),
        Err(CallbackError::Malformed(_))
    ));

    let mut unsigned = genuine.to_request(now);
    unsigned.headers.remove(wire::SIGNATURE_HEADER);
    assert!(matches!(
        g.handle_callback(&unsigned),
        Err(CallbackError::Unauthenticated(_))
    ));

    let mut json = genuine.to_request(now);
    json.content_type = Some("application/json".into());
    assert!(matches!(
        g.handle_callback(&json),
        Err(CallbackError::UnsupportedContentType(_))
    ));
}
