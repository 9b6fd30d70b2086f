//! `Idempotency-Key` with Stripe's semantics. The storage side (key, request hash and the
//! first response, committed with the transaction) is `db::transactions::insert`; here: the
//! header's rules and the request hash.
//!
//! The hash covers the method, the path and the body in canonical JSON (object keys sorted,
//! no insignificant whitespace), so a client re-sending the same request with its fields in
//! another order is still recognised as the same request.

use axum::http::{HeaderMap, Method};
use sha2::{Digest, Sha256};

use crate::error::HttpError;

pub const HEADER: &str = "idempotency-key";
/// Set to `true` on a response replayed from an earlier request with the same key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The longest key, in characters (all printable ASCII, so bytes too).
pub const MAX_LEN: usize = 255;
/// What [`key_from_headers`] admits, as the API document's pattern: printable ASCII, not
/// starting or ending with a space (HTTP strips those anyway; the key is the trimmed value).
pub const PATTERN: &str = "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$";

/// The `Idempotency-Key` header as the API document describes it (bounds from the constants
/// the check above uses).
pub struct IdempotencyKey;

impl utoipa::PartialSchema for IdempotencyKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(format!(
                "1 to {MAX_LEN} printable ASCII characters; the same key and body replay the first response"
            )))
            .min_length(Some(1))
            .max_length(Some(MAX_LEN))
            .pattern(Some(PATTERN))
            .examples([serde_json::json!("order-42")])
            .into()
    }
}

impl utoipa::ToSchema for IdempotencyKey {}

/// The key, if the client sent one. Printable ASCII, 1 to 255 characters.
pub fn key_from_headers(headers: &HeaderMap) -> Result<Option<String>, HttpError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let invalid = || {
        HttpError::invalid_param(
            "idempotency_key_invalid",
            "Idempotency-Key",
            format!("Idempotency-Key must be 1 to {MAX_LEN} printable ASCII characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?.trim();
    if key.is_empty() || key.len() > MAX_LEN || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// SHA-256 over the method, the path and the canonical body, each length-prefixed so no two
/// different requests can produce the same input.
pub fn request_hash(method: &Method, path: &str, body: &serde_json::Value) -> [u8; 32] {
    let mut canonical = String::new();
    canonical_json(body, &mut canonical);
    let mut hasher = Sha256::new();
    for part in [method.as_str(), path, canonical.as_str()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// JSON with object keys sorted, whatever order the map type keeps.
fn canonical_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_and_its_reserialisation_hash_the_same() {
        // Found by fuzz/ (target `api_bodies`): a number of many digits parsed to a float
        // that printed back as a text parsing to another float (serde_json's fast float
        // parser is not correctly rounded without `float_roundtrip`), so a client that
        // re-serialised its body for a retry was told the key was reused with another body.
        for text in [
            r#"{"amount":4444444444444444444444444444444444444444444444444444444444444}"#,
            r#"{"metadata":{"ratio":0.30000000000000004441,"big":1.7976931348623157e308}}"#,
            r#"{"amount":2.2250738585072011e-308}"#,
        ] {
            let body: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            let again: serde_json::Value =
                serde_json::from_str(&body.to_string()).unwrap_or_default();
            assert_eq!(body, again, "{text}");
            assert_eq!(
                request_hash(&Method::POST, "/v1/deposits", &body),
                request_hash(&Method::POST, "/v1/deposits", &again),
                "{text}"
            );
        }
    }

    #[test]
    fn same_request_in_another_key_order_hashes_the_same() {
        let a: serde_json::Value = serde_json::from_str(
            r#"{"amount": 1, "currency": "USD", "metadata": {"b": 1, "a": 2}}"#,
        )
        .unwrap_or_default();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"metadata":{"a":2,"b":1},"currency":"USD","amount":1}"#)
                .unwrap_or_default();
        assert_eq!(
            request_hash(&Method::POST, "/v1/deposits", &a),
            request_hash(&Method::POST, "/v1/deposits", &b)
        );
        assert_ne!(
            request_hash(&Method::POST, "/v1/deposits", &a),
            request_hash(&Method::POST, "/v1/withdrawals", &a)
        );
        assert_ne!(
            request_hash(&Method::POST, "/v1/deposits", &json!({"amount": 1})),
            request_hash(&Method::POST, "/v1/deposits", &json!({"amount": 2}))
        );
    }

    #[test]
    fn header_rules() {
        let mut headers = HeaderMap::new();
        assert!(matches!(key_from_headers(&headers), Ok(None)));
        headers.insert(HEADER, axum::http::HeaderValue::from_static("order-42"));
        assert_eq!(
            key_from_headers(&headers).ok().flatten().as_deref(),
            Some("order-42")
        );
        headers.insert(HEADER, axum::http::HeaderValue::from_static(""));
        assert!(key_from_headers(&headers).is_err());
        let long = "k".repeat(256);
        headers.insert(
            HEADER,
            axum::http::HeaderValue::from_str(&long)
                .unwrap_or(axum::http::HeaderValue::from_static("x")),
        );
        assert!(key_from_headers(&headers).is_err());
    }
}
