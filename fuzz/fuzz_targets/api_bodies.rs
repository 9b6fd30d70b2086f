//! The merchant API's request bodies, read exactly as the handlers read them
//! (`paygate_api::body::parse_json`, then `paygate_api::validation`): deposit and
//! withdrawal create bodies, refund bodies, webhook-endpoint registrations.
//!
//! Input: `[selector][JSON body]`. Selector bits 0-1: 0 deposit/withdrawal, 1 refund,
//! 2 webhook endpoint, 3 deposit/withdrawal again; bit 2: the `paygate dev` destination
//! policy (loopback and plain http admitted) instead of the strict one.
//!
//! A URL whose host is a name would make the SSRF guard resolve it: the target swaps such
//! a host for a documentation address (203.0.113.7) before validation, so no fuzz run sends
//! a DNS query.
//!
//! Asserts: every refusal is a 4xx naming a code (never a 5xx: the client would retry the
//! same body forever); what is accepted is what Postgres and the dispatcher can take
//! (positive money, metadata a flat object of at most 20 keys with no NUL anywhere, bounded
//! text, a URL the guard accepts again unchanged); validation is a fixpoint (the accepted
//! values, written back as a body, validate to the same values); and the Idempotency-Key
//! request hash is the same for a body and its re-serialisation.
#![no_main]

use std::sync::OnceLock;

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use paygate_api::validation::{self, CreateTransaction};
use paygate_api::{body, idempotency, url_policy, HttpError};
use paygate_core::destination::DestinationPolicy;
use serde_json::{json, Value};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let [selector, bytes @ ..] = data else {
        return;
    };
    let policy = if selector & 4 == 4 {
        DestinationPolicy {
            allow_loopback: true,
            allow_http: true,
            ..DestinationPolicy::STRICT
        }
    } else {
        DestinationPolicy::STRICT
    };
    let mut value = match body::parse_json(bytes) {
        Ok(value) => value,
        Err(error) => return check_refusal(&error),
    };
    let path = match selector & 3 {
        1 => "/v1/transactions/txn_0123456789abcdef0123456789abcdef/refunds",
        2 => "/v1/webhook-endpoints",
        _ => "/v1/deposits",
    };
    // A retry re-serialised by another JSON library must hash the same.
    let reparsed: Value = serde_json::to_vec(&value)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("a parsed body must re-serialise"));
    assert_eq!(
        idempotency::request_hash(&Method::POST, path, &value),
        idempotency::request_hash(&Method::POST, path, &reparsed)
    );
    runtime().block_on(async {
        match selector & 3 {
            1 => refund(&value),
            2 => {
                no_lookup(&mut value, "url");
                webhook_endpoint(&value, policy).await
            }
            _ => {
                no_lookup(&mut value, "callback_url");
                transaction(&value, policy).await
            }
        }
    });
});

/// Swaps a host name in `field` for an address, so the guard has nothing to resolve.
fn no_lookup(value: &mut Value, field: &str) {
    let Some(text) = value.get(field).and_then(Value::as_str) else {
        return;
    };
    let Ok(mut url) = url::Url::parse(text) else {
        return;
    };
    if matches!(url.host(), Some(url::Host::Domain(_))) {
        if url.set_host(Some("203.0.113.7")).is_err() {
            // No host can be set (not a special scheme): it is refused before any lookup.
            return;
        }
        value[field] = Value::String(url.into());
    }
}

fn check_refusal(error: &HttpError) {
    assert!(
        error.status.is_client_error(),
        "a bad body answered {}: {}",
        error.status,
        error.message
    );
    assert!(!error.code.is_empty());
}

fn no_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => !s.contains('\0'),
        Value::Array(items) => items.iter().all(no_nul),
        Value::Object(map) => map.iter().all(|(k, v)| !k.contains('\0') && no_nul(v)),
        _ => true,
    }
}

async fn transaction(body: &Value, policy: DestinationPolicy) {
    let exists = |name: &paygate_core::domain::GatewayName| name.as_str() == "sandbox-json";
    let accepted = match validation::create_transaction(body, exists, policy).await {
        Ok(accepted) => accepted,
        Err(error) => return check_refusal(&error),
    };
    let CreateTransaction {
        money,
        customer,
        gateway,
        callback_url,
        metadata,
    } = &accepted;
    assert!(money.amount.minor_units() > 0);
    let map = metadata
        .as_object()
        .unwrap_or_else(|| panic!("metadata accepted as {metadata}"));
    assert!(map.len() <= validation::METADATA_MAX_KEYS);
    assert!(
        map.values().all(|v| !v.is_object() && !v.is_array()),
        "nested metadata accepted"
    );
    assert!(
        no_nul(metadata),
        "metadata Postgres cannot store was accepted"
    );
    if let Some(url) = callback_url {
        let again = url_policy::check_url(url, policy, "callback_url")
            .await
            .unwrap_or_else(|e| panic!("accepted {url:?}, refused when checked again: {e:?}"));
        assert_eq!(again.url.as_str(), url, "the guard's URL is not a fixpoint");
    }
    // The accepted values, written back as a body, are accepted as the same values.
    let mut written = json!({
        "amount": money.amount.minor_units(),
        "currency": money.currency.code(),
        "customer": customer.as_str(),
        "metadata": metadata,
    });
    if let Some(gateway) = gateway {
        written["gateway"] = json!(gateway.as_str());
    }
    if let Some(url) = callback_url {
        written["callback_url"] = json!(url);
    }
    let again = validation::create_transaction(&written, exists, policy)
        .await
        .unwrap_or_else(|e| panic!("{written} refused after being accepted: {e:?}"));
    assert_eq!(again.money, *money);
    assert_eq!(again.customer.as_str(), customer.as_str());
    assert_eq!(again.gateway, *gateway);
    assert_eq!(again.callback_url, *callback_url);
    assert_eq!(again.metadata, *metadata);
}

fn refund(body: &Value) {
    let accepted = match validation::create_refund(body) {
        Ok(accepted) => accepted,
        Err(error) => return check_refusal(&error),
    };
    if let Some(amount) = accepted.amount {
        assert!(amount > 0, "refund of {amount} accepted");
    }
    if let Some(reason) = &accepted.reason {
        assert!(reason.chars().count() <= validation::REFUND_REASON_MAX_CHARS);
        assert!(!reason.contains('\0'));
    }
    let written = json!({"amount": accepted.amount, "reason": accepted.reason});
    let again = validation::create_refund(&written)
        .unwrap_or_else(|e| panic!("{written} refused after being accepted: {e:?}"));
    assert_eq!(again, accepted);
}

async fn webhook_endpoint(body: &Value, policy: DestinationPolicy) {
    let accepted = match validation::create_webhook_endpoint(body, policy).await {
        Ok(accepted) => accepted,
        Err(error) => return check_refusal(&error),
    };
    if let Some(description) = &accepted.description {
        assert!(description.chars().count() <= 500);
        assert!(!description.chars().any(char::is_control));
    }
    let again = url_policy::check_url(&accepted.url, policy, "url")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "accepted {:?}, refused when checked again: {e:?}",
                accepted.url
            )
        });
    assert_eq!(
        again.url.as_str(),
        accepted.url,
        "the guard's URL is not a fixpoint"
    );
}
