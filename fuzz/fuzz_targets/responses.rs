//! Provider answers: each real connector's `parse_response` (Paystack, Stripe, M-Pesa), and
//! the wire decoders of the three invented sandbox protocols (whose connectors read answers
//! inside their HTTP calls, with these same types).
//!
//! Input: `[selector]` (the connector order of `paygate_fuzz::Connector`), then for the real
//! providers a text head, a blank line and the body:
//! ```text
//! call: deposit            (deposit | withdraw | status | refund)
//! status: 200
//! id: txn_0123456789abcdef0123456789abcdef
//! kind: deposit            (deposit | withdrawal)
//! amount: 100
//! currency: KES
//! provider_reference: ws_CO_191220191020363925
//!
//! {"ResponseCode": "0", …}
//! ```
//! The documented samples in gateways/fixtures/<kind>/responses/ are the seeds.
//!
//! Asserts the classification table on `GatewayError` (a `5xx` to a submit or refund is
//! `Ambiguous`, never a refusal nor a success; `408`/`429` are `Retryable`; a status query
//! answered `5xx` is never "not found" nor final), that only a `2xx` is a success, positive
//! money, a redirect the customer can be sent to (`http(s)` with a host, never
//! `javascript:`), bounded messages, the same verdict twice; and for the sandbox wires,
//! decode → encode → decode gives the same value.
#![no_main]

use bytes::Bytes;
use chrono::Utc;
use libfuzzer_sys::fuzz_target;
use paygate_core::domain::{
    CustomerReference, MerchantId, Money, Transaction, TransactionId, TransactionKind,
    TransactionStatus,
};
use paygate_fuzz::{gateway, Connector, Variant};
use paygate_gateways::json::wire as json_wire;
use paygate_gateways::protobuf::wire as proto_wire;
use paygate_gateways::soap::wire as soap_wire;
use paygate_gateways::{
    GatewayError, Parsed, ProviderCall, ProviderResponse, ProviderStatus, SubmitStatus,
};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else {
        return;
    };
    match Connector::from_byte(*selector) {
        Connector::SandboxJson => json_round_trip(rest),
        Connector::SandboxSoap => soap_round_trip(rest),
        Connector::SandboxProto => proto_round_trip(rest),
        real => real_provider(real, rest),
    }
});

/// The head's fields, with the samples' defaults.
struct Head {
    call: ProviderCall,
    status: u16,
    transaction: Transaction,
}

fn head(text: &str) -> Option<Head> {
    let mut call = ProviderCall::Deposit;
    let mut status = 200u16;
    let mut id = TransactionId::parse("txn_0123456789abcdef0123456789abcdef").ok()?;
    let mut kind = TransactionKind::Deposit;
    let mut amount = 100i64;
    let mut currency = "USD".to_owned();
    let mut provider_reference = None;
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim() {
            "call" => {
                call = match value {
                    "withdraw" => ProviderCall::Withdraw,
                    "status" => ProviderCall::Status,
                    "refund" => ProviderCall::Refund,
                    _ => ProviderCall::Deposit,
                }
            }
            "status" => status = value.parse().ok()?,
            "id" => id = TransactionId::parse(value).ok()?,
            "kind" => {
                kind = if value == "withdrawal" {
                    TransactionKind::Withdrawal
                } else {
                    TransactionKind::Deposit
                }
            }
            "amount" => amount = value.parse().ok()?,
            "currency" => currency = value.to_owned(),
            "provider_reference" => provider_reference = Some(value.to_owned()),
            _ => {}
        }
    }
    // What our own record can hold: a transaction is always valid money.
    let money = Money::from_parts(amount, &currency).ok()?;
    let now = Utc::now();
    Some(Head {
        call,
        status,
        transaction: Transaction {
            id,
            merchant_id: MerchantId::new(),
            kind,
            money,
            customer: CustomerReference::parse("cust_fuzz").ok()?,
            gateway: None,
            routed_gateway: None,
            status: TransactionStatus::Submitted,
            version: 1,
            attempts: 1,
            next_attempt_at: None,
            ambiguous_since: None,
            provider_reference,
            next_action_url: None,
            failure: None,
            callback_url: None,
            metadata: serde_json::json!({}),
            created_at: now,
            updated_at: now,
        },
    })
}

fn real_provider(connector: Connector, input: &[u8]) {
    let (head_bytes, body) = match input.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&input[..at], &input[at + 2..]),
        None => (&input[..0], input),
    };
    let Some(Head {
        call,
        status,
        transaction,
    }) = head(&String::from_utf8_lossy(head_bytes))
    else {
        return;
    };
    let gateway = gateway(connector, Variant::Door);
    let response = ProviderResponse {
        status,
        body: Bytes::copy_from_slice(body),
    };
    let Some(parsed) = gateway.parse_response(call, &transaction, &response) else {
        panic!("{} must expose parse_response", connector.kind());
    };
    assert_eq!(
        gateway.parse_response(call, &transaction, &response),
        Some(parsed.clone()),
        "the same answer read twice differently"
    );
    let success = (200..300).contains(&status);
    let server_error = (500..600).contains(&status);
    match &parsed {
        Ok(Parsed::Submit(outcome)) => {
            assert!(
                success,
                "a {status} read as an accepted payment: {outcome:?}"
            );
            if let Some(money) = &outcome.money {
                assert!(money.amount.minor_units() > 0);
            }
            if let SubmitStatus::RequiresAction { url } = &outcome.status {
                check_redirect(url);
            }
        }
        Ok(Parsed::Refund(_)) => assert!(success, "a {status} read as a refund answer"),
        Ok(Parsed::Status(status_answer)) => {
            if server_error {
                assert!(
                    !matches!(
                        status_answer,
                        ProviderStatus::NotFound | ProviderStatus::Final { .. }
                    ),
                    "a {status} read as {status_answer:?}: an unknown outcome must stay unknown"
                );
            }
            if let ProviderStatus::Final { reported, .. } = status_answer {
                assert!(success, "a {status} read as a final status");
                if let Some(money) = &reported.money {
                    assert!(money.amount.minor_units() > 0);
                }
            }
        }
        // A provider's own refusal text is bounded and a code is a code (found by this
        // target: the whole 1 MiB text, and Stripe's `"code": ""`, used to pass through).
        Err(error) => {
            let reason = match &error {
                GatewayError::Permanent { code, reason } => {
                    assert!(!code.trim().is_empty(), "an empty failure code: {error:?}");
                    assert!(code.chars().count() <= 64, "an over-long failure code");
                    reason
                }
                GatewayError::Retryable { reason, .. } | GatewayError::Ambiguous { reason } => {
                    reason
                }
            };
            assert!(
                reason.chars().count() <= 1_024,
                "a {}-character reason: {:?}",
                reason.chars().count(),
                reason.chars().take(300).collect::<String>()
            );
        }
    }
    // Answers a connector gives without asking the provider (M-Pesa has no refund and no
    // payout status query) do not depend on any status.
    let unasked = connector == Connector::Mpesa
        && (matches!(call, ProviderCall::Refund)
            || (matches!(call, ProviderCall::Status)
                && transaction.kind == TransactionKind::Withdrawal));
    if unasked {
        return;
    }
    let submit_or_refund = !matches!(call, ProviderCall::Status);
    if submit_or_refund && server_error {
        assert!(
            matches!(parsed, Err(GatewayError::Ambiguous { .. })),
            "a {status} to a {call:?} must be ambiguous, got {parsed:?}"
        );
    }
    if matches!(status, 408 | 429) {
        assert!(
            matches!(parsed, Err(GatewayError::Retryable { .. })),
            "a {status} must be retryable, got {parsed:?}"
        );
    }
}

/// Where the customer is sent (`next_action.redirect_to_url`): merchants redirect to it or
/// render it as a link, so it must be a web address.
fn check_redirect(url: &str) {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("redirect {url:?}: {e}"));
    assert!(
        matches!(parsed.scheme(), "https" | "http") && parsed.host().is_some(),
        "redirect to {url:?}"
    );
}

fn json_round_trip(body: &[u8]) {
    fn check<T>(body: &[u8])
    where
        T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
    {
        let Ok(value) = serde_json::from_slice::<T>(body) else {
            return;
        };
        let encoded = serde_json::to_vec(&value).unwrap_or_else(|e| panic!("encode: {e}"));
        let again: T =
            serde_json::from_slice(&encoded).unwrap_or_else(|e| panic!("re-decode: {e}"));
        assert_eq!(again, value);
    }
    check::<json_wire::ApiResponse<json_wire::PaymentData>>(body);
    check::<json_wire::ApiResponse<json_wire::RefundData>>(body);
    check::<json_wire::WebhookEvent>(body);
    check::<json_wire::RefundWebhookEvent>(body);
}

fn soap_round_trip(body: &[u8]) {
    fn check<T>(body: &[u8])
    where
        T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
    {
        let Ok(value) = soap_wire::from_xml::<T>(body) else {
            return;
        };
        let Ok(encoded) = soap_wire::to_xml(&value) else {
            return;
        };
        let again: T = soap_wire::from_xml(encoded.as_bytes())
            .unwrap_or_else(|e| panic!("re-decode of {encoded:?}: {e}"));
        assert_eq!(again, value, "{encoded}");
    }
    check::<soap_wire::Envelope<soap_wire::Reply>>(body);
    check::<soap_wire::Envelope<soap_wire::Callback>>(body);
}

fn proto_round_trip(body: &[u8]) {
    fn check<T: Message + Default + PartialEq + std::fmt::Debug>(body: &[u8]) {
        let Ok(value) = T::decode(body) else {
            return;
        };
        let again = T::decode(value.encode_to_vec().as_slice())
            .unwrap_or_else(|e| panic!("re-decode: {e}"));
        assert!(again == value, "protobuf round trip changed {value:?}");
    }
    check::<proto_wire::PaymentResponse>(body);
    check::<proto_wire::ErrorResponse>(body);
    check::<proto_wire::PaymentEvent>(body);
    check::<proto_wire::SignedEvent>(body);
}
