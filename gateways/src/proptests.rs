//! Random bytes, content types and headers fed to every connector's `handle_callback`,
//! with and without a valid signature: never a panic, and never an accepted callback
//! unless the signed body really is one.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use proptest::prelude::*;

use crate::secret::Secret;
use crate::test_support::{settings, WEBHOOK_SECRET};
use crate::{json, protobuf, soap, CallbackRequest, PaymentGateway};

fn gateways() -> Vec<Box<dyn PaymentGateway>> {
    let base = "http://127.0.0.1:9/acct";
    let built: Vec<Box<dyn PaymentGateway>> = vec![
        Box::new(
            json::JsonGateway::new(settings("sandbox-json", base))
                .unwrap_or_else(|e| panic!("{e}")),
        ),
        Box::new(
            soap::SoapGateway::new(settings("sandbox-soap", base))
                .unwrap_or_else(|e| panic!("{e}")),
        ),
        Box::new(
            protobuf::ProtobufGateway::new(settings("sandbox-proto", base))
                .unwrap_or_else(|e| panic!("{e}")),
        ),
    ];
    built
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("text/xml; charset=utf-8".to_owned())),
        Just(Some("application/x-protobuf".to_owned())),
        ".{0,40}".prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_callbacks_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048),
                                    content_type in content_type(),
                                    header in ".{0,200}") {
        let mut headers = BTreeMap::new();
        headers.insert(json::wire::SIGNATURE_HEADER.to_owned(), header.clone());
        headers.insert(soap::wire::SIGNATURE_HEADER.to_owned(), header);
        let request = CallbackRequest { body: Bytes::from(body), content_type, headers, received_at: Utc::now(), path: None };
        for gateway in gateways() {
            prop_assert!(gateway.handle_callback(&request).is_err());
        }
    }

    #[test]
    fn correctly_signed_random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let secret = Secret::new(WEBHOOK_SECRET);
        let now = Utc::now();
        let gateways = gateways();
        let signed = [
            json::sign_body(&secret, Bytes::from(body.clone())),
            soap::sign_body(&secret, Bytes::from(body.clone()), now),
            protobuf::sign_body(&secret, body),
        ];
        for (gateway, signed) in gateways.iter().zip(signed) {
            // Random bytes are (with overwhelming likelihood) not a valid event: refused, no panic.
            prop_assert!(gateway.handle_callback(&signed.to_request(now)).is_err());
        }
    }

    /// No status code and no `Retry-After` value a provider sends can panic the
    /// classification, and a `Retry-After` is either absent or a plain duration (callers
    /// cap it; `paygate_core::domain::clock::after` saturates).
    #[test]
    fn any_status_and_retry_after_classify_without_panic(
        code in 100u16..1000,
        retry in proptest::option::of(prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            "[ -~]{0,40}",
            Just("99999999999999".to_owned()),
            Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        ]),
    ) {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = retry.as_deref().and_then(|v| reqwest::header::HeaderValue::from_str(v).ok()) {
            headers.insert(reqwest::header::RETRY_AFTER, value);
        }
        let Ok(status) = reqwest::StatusCode::from_u16(code) else { return Ok(()); };
        let class = crate::http::classify_status(status, &headers);
        if status.is_server_error() {
            let ambiguous = matches!(class, Some(crate::GatewayError::Ambiguous { .. }));
            prop_assert!(ambiguous, "{} classified {:?}", code, class);
        }
        let delay = crate::http::retry_after(&headers);
        let _ = paygate_core::domain::clock::after(chrono::Utc::now(), delay.unwrap_or_default());
    }
}
