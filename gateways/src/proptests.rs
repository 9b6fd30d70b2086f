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
        Box::new(json::JsonGateway::new(settings("json", base)).unwrap_or_else(|e| panic!("{e}"))),
        Box::new(soap::SoapGateway::new(settings("soap", base)).unwrap_or_else(|e| panic!("{e}"))),
        Box::new(
            protobuf::ProtobufGateway::new(settings("protobuf", base))
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
        let request = CallbackRequest { body: Bytes::from(body), content_type, headers, received_at: Utc::now() };
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
}
