//! Every connector's `handle_callback` on raw, unsigned input, as a stranger can send it:
//! the signature check itself, the envelope checks before it, and the path-token check.
//!
//! Input: `[connector selector]` then an HTTP-like text head, a blank line, and the body:
//! ```text
//! content-type: application/json
//! stripe-signature: t=1764748800,v1=…
//! :path: txn_….d100/<token>
//! :received-at-ms: 1764748805000
//!
//! {"id": …}
//! ```
//! `:path` is an unsigned provider's `{reference}/{token}`; `:received-at-ms` the receipt
//! time (default: when the documented samples were received). Header lines the connector
//! does not declare are dropped, as the API drops them. Without a blank line, all of it is
//! the body. The documented samples (gateways/fixtures/, signed with the fixtures' secrets)
//! are the seeds, so mutations start from inputs that pass.
//!
//! Asserts what `paygate_fuzz::check_callback` asserts, at the deployed tolerance.
#![no_main]

use bytes::Bytes;
use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use paygate_fuzz::{check_callback, door_request, fixed_now, gateway, Connector, Variant};

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else {
        return;
    };
    let connector = Connector::from_byte(*selector);
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&rest[..0], rest),
    };
    let mut headers = Vec::new();
    let mut path = None;
    let mut received_at = fixed_now();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(": ").or_else(|| line.split_once(':')) else {
            continue;
        };
        match name {
            ":path" => path = Some(value.to_owned()),
            ":received-at-ms" => {
                if let Some(at) = value
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .and_then(DateTime::from_timestamp_millis)
                {
                    received_at = at;
                }
            }
            // The API keeps a header only when its value is visible ASCII (`to_str`).
            _ if value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) =>
            {
                headers.push((name.trim().to_owned(), value.trim().to_owned()))
            }
            _ => {}
        }
    }
    let variant = Variant::Door;
    let request = door_request(
        gateway(connector, variant).as_ref(),
        &headers,
        Bytes::copy_from_slice(body),
        path,
        received_at,
    );
    check_callback(connector, variant, &request);
});
