//! The bus: `Envelope::decode_checked` (the only way services read events) and each event
//! body on its own.
//!
//! Input: `[selector][protobuf bytes]`. Selector mod 7: 0 an `Envelope`, 1-6 one body
//! message (`TransactionPending`, `CallbackReceived`, `TransactionCompleted`, `DeadLetter`,
//! `RefundPending`, `RefundCompleted`). Seeds are real encoded envelopes of each kind.
//!
//! Asserts: an accepted envelope has a version this build reads and a body; decode →
//! encode → decode gives the same value (for the envelope and each body); a dead letter's
//! payload that is itself an envelope is checked the same way; the ids consumers parse out
//! of events print back to what parses to the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paygate_core::bus::events::{
    Body, CallbackReceived, DeadLetter, Envelope, RefundCompleted, RefundPending,
    TransactionCompleted, TransactionPending, SCHEMA_VERSION,
};
use paygate_core::domain::{MerchantId, RefundId, TransactionId};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let [selector, bytes @ ..] = data else {
        return;
    };
    match selector % 7 {
        0 => envelope(bytes, 0),
        1 => body::<TransactionPending>(bytes),
        2 => body::<CallbackReceived>(bytes),
        3 => body::<TransactionCompleted>(bytes),
        4 => body::<DeadLetter>(bytes),
        5 => body::<RefundPending>(bytes),
        _ => body::<RefundCompleted>(bytes),
    }
});

fn envelope(bytes: &[u8], depth: u8) {
    let Ok(decoded) = Envelope::decode_checked(bytes) else {
        return;
    };
    assert!((1..=SCHEMA_VERSION).contains(&decoded.schema_version));
    let again = Envelope::decode_checked(&decoded.encode_to_bytes())
        .unwrap_or_else(|e| panic!("re-decode of an accepted envelope: {e}"));
    assert!(again == decoded, "envelope round trip changed {decoded:?}");
    match &decoded.body {
        Some(Body::TransactionPending(e)) => transaction_id(&e.transaction_id),
        Some(Body::TransactionCompleted(e)) => {
            transaction_id(&e.transaction_id);
            merchant_id(&e.merchant_id);
        }
        Some(Body::RefundPending(e)) => refund_id(&e.refund_id),
        Some(Body::RefundCompleted(e)) => {
            refund_id(&e.refund_id);
            merchant_id(&e.merchant_id);
        }
        // A dead letter carries the message that failed: replaying it reads it again.
        Some(Body::DeadLetter(e)) if depth < 4 => envelope(&e.payload, depth + 1),
        Some(_) => {}
        None => panic!("decode_checked accepted an envelope without a body"),
    }
}

fn body<T: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(value) = T::decode(bytes) else {
        return;
    };
    let again =
        T::decode(value.encode_to_vec().as_slice()).unwrap_or_else(|e| panic!("re-decode: {e}"));
    assert!(again == value, "round trip changed {value:?}");
}

fn transaction_id(text: &str) {
    if let Ok(id) = TransactionId::parse(text) {
        assert_eq!(TransactionId::parse(&id.to_string()).ok(), Some(id));
    }
}

fn merchant_id(text: &str) {
    if let Ok(id) = MerchantId::parse(text) {
        assert_eq!(MerchantId::parse(&id.to_string()).ok(), Some(id));
    }
}

fn refund_id(text: &str) {
    if let Ok(id) = RefundId::parse(text) {
        assert_eq!(RefundId::parse(&id.to_string()).ok(), Some(id));
    }
}
