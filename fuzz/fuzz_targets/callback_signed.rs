//! Every connector's `handle_callback` behind a *valid* signature: the fuzzed body is signed
//! here with the gateway's own secret and signing rule, so the parsers behind the check are
//! what gets fuzzed (a target that only ever hits "bad signature" fuzzes nothing).
//!
//! Input: `[connector selector][flags][payload]`.
//! - flags bit 0: the deployed tolerance (signed "now", so freshness is judged on the
//!   body's own time where it carries one) instead of a century's.
//! - payload: the body, except for M-Pesa (unsigned, authenticated by a per-payment path
//!   token): `<reference>\n<body>`, the path's reference segment (`{txn id}.{d|w|t}{cents}`),
//!   given its correct token. sandbox-proto's payload is the inner `PaymentEvent`.
//!
//! Asserts (`paygate_fuzz::check_callback`): a bounded, sane verdict (positive money, an
//! id that survives the connector's reference codec), the same verdict twice and again
//! after the bus, and a twin gateway with other secrets never believing it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use paygate_fuzz::{check_callback, door_request, fixed_now, gateway, secrets, Connector, Variant};
use paygate_gateways::callback::{self, SignedCallback};
use paygate_gateways::{json, protobuf, soap, stripe};

fuzz_target!(|data: &[u8]| {
    let [selector, flags, payload @ ..] = data else {
        return;
    };
    let connector = Connector::from_byte(*selector);
    let variant = if flags & 1 == 1 {
        Variant::Door
    } else {
        Variant::Lenient
    };
    let now = fixed_now();
    let (secret_key, webhook_secret) = secrets(connector);
    let mut path = None;
    let signed = match connector {
        Connector::SandboxJson => json::sign_body(&webhook_secret, Bytes::copy_from_slice(payload)),
        Connector::SandboxSoap => {
            soap::sign_body(&webhook_secret, Bytes::copy_from_slice(payload), now)
        }
        Connector::SandboxProto => protobuf::sign_body(&webhook_secret, payload.to_vec()),
        Connector::Paystack => SignedCallback {
            content_type: "application/json".into(),
            headers: vec![(
                "x-paystack-signature".into(),
                hex::encode(callback::hmac_sha512(
                    secret_key.expose().as_bytes(),
                    &[payload],
                )),
            )],
            body: Bytes::copy_from_slice(payload),
        },
        Connector::Stripe => SignedCallback {
            content_type: "application/json".into(),
            headers: vec![(
                "stripe-signature".into(),
                stripe::signature_header(
                    webhook_secret.expose().as_bytes(),
                    now.timestamp(),
                    payload,
                ),
            )],
            body: Bytes::copy_from_slice(payload),
        },
        Connector::Mpesa => {
            let (reference, body) = match payload.iter().position(|b| *b == b'\n') {
                Some(at) => (&payload[..at], &payload[at + 1..]),
                None => (&payload[..0], payload),
            };
            let reference = String::from_utf8_lossy(reference).into_owned();
            // A path segment never holds a `/` (the router splits on it).
            if reference.contains('/') {
                return;
            }
            let token = callback::path_token(webhook_secret.expose().as_bytes(), &reference);
            path = Some(format!("{reference}/{token}"));
            SignedCallback {
                content_type: "application/json".into(),
                headers: Vec::new(),
                body: Bytes::copy_from_slice(body),
            }
        }
    };
    let mut headers = signed.headers.clone();
    headers.push(("content-type".into(), signed.content_type.clone()));
    let request = door_request(
        gateway(connector, variant).as_ref(),
        &headers,
        signed.body,
        path,
        now,
    );
    check_callback(connector, variant, &request);
});
