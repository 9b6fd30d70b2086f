//! Conformance, part 1: every real provider's documented samples, with no server.
//!
//! Each folder `gateways/fixtures/<kind>/` holds one connector's evidence, written from the
//! provider's public documentation:
//! - `gateway.json`: `{"secret_key", "webhook_secret", "extra": {…connector keys…}}`;
//! - `callbacks/*.json`: a callback exactly as the provider sends it (raw body, headers,
//!   path for unsigned providers) and what `handle_callback` must make of it;
//! - `responses/*.json`: one provider answer to a deposit, withdrawal, status query or
//!   refund, and what `parse_response` must make of it.
//!
//! An integrator adding a provider adds a folder; this runner needs no change. Every
//! connector outside the invented sandbox protocols must have a folder with both kinds of
//! fixture, so a connector cannot skip this part silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, Transaction, TransactionId, TransactionKind,
    TransactionStatus,
};
use paygate_gateways::registry::{self, GatewaySettings, CONNECTORS};
use paygate_gateways::{
    CallbackError, CallbackEvent, CallbackRequest, GatewayError, Parsed, PaymentGateway,
    ProviderCall, ProviderResponse, ProviderStatus, RefundStatus, ReportedStatus, Secret,
    SubmitStatus,
};
use serde::Deserialize;
use serde_json::Value;

/// The invented protocols of the sandbox: checked by the behaviour kit only.
const SANDBOX_PROTOCOLS: &[&str] = &["sandbox-json", "sandbox-soap", "sandbox-proto"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFixture {
    secret_key: String,
    webhook_secret: String,
    #[serde(default)]
    extra: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallbackFixture {
    content_type: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    path: Option<String>,
    body: String,
    #[serde(default)]
    received_at: Option<DateTime<Utc>>,
    expect: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseFixture {
    call: String,
    transaction: FixtureTransaction,
    status: u16,
    body: String,
    expect: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureTransaction {
    id: String,
    kind: TransactionKind,
    amount: i64,
    currency: String,
    #[serde(default)]
    provider_reference: Option<String>,
    #[serde(default)]
    customer: Option<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn gateway(kind: &str) -> Result<Arc<dyn PaymentGateway>, String> {
    let fixture: GatewayFixture = read(&root().join(kind).join("gateway.json"))?;
    let name = GatewayName::parse(&format!("fixture-{kind}")).map_err(|e| e.to_string())?;
    let base = url::Url::parse("http://127.0.0.1:9/").map_err(|e| e.to_string())?;
    let mut settings = GatewaySettings::new(
        name,
        kind,
        base,
        Secret::new(fixture.secret_key),
        Secret::new(fixture.webhook_secret),
    );
    settings.extra = fixture.extra;
    registry::build(settings).map_err(|e| e.to_string())
}

fn transaction(t: &FixtureTransaction) -> Result<Transaction, String> {
    let now = Utc::now();
    Ok(Transaction {
        id: TransactionId::parse(&t.id).map_err(|e| e.to_string())?,
        merchant_id: MerchantId::new(),
        kind: t.kind,
        money: Money::from_parts(t.amount, &t.currency).map_err(|e| e.to_string())?,
        customer: CustomerReference::parse(t.customer.as_deref().unwrap_or("cust_fixture"))
            .map_err(|e| e.to_string())?,
        gateway: None,
        routed_gateway: None,
        status: TransactionStatus::Submitted,
        version: 1,
        attempts: 1,
        next_attempt_at: None,
        ambiguous_since: None,
        provider_reference: t.provider_reference.clone(),
        next_action_url: None,
        failure: None,
        callback_url: None,
        metadata: serde_json::json!({}),
        created_at: now,
        updated_at: now,
    })
}

fn text(expect: &Value, key: &str) -> Option<String> {
    expect.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Compares what the connector made of a callback with the fixture's `expect`.
fn check_callback(got: Result<CallbackEvent, CallbackError>, expect: &Value) -> Result<(), String> {
    let mismatch = |got: &dyn std::fmt::Debug| Err(format!("expected {expect}, got {got:?}"));
    if let Some(error) = text(expect, "error") {
        let class = match &got {
            Err(CallbackError::Unauthenticated(_)) => "unauthenticated",
            Err(CallbackError::Malformed(_)) => "malformed",
            Err(CallbackError::UnsupportedContentType(_)) => "unsupported_content_type",
            Err(CallbackError::TooLarge) => "too_large",
            Ok(_) => "accepted",
        };
        return if class == error {
            Ok(())
        } else {
            mismatch(&got)
        };
    }
    let money = |amount: &Value, currency: &Value| -> Option<Money> {
        Money::from_parts(amount.as_i64()?, currency.as_str()?).ok()
    };
    let expected_money = money(&expect["amount"], &expect["currency"]);
    let expected_id = text(expect, "transaction_id");
    match (text(expect, "event").as_deref(), &got) {
        (Some("ignored"), Ok(CallbackEvent::Ignored { .. })) => Ok(()),
        (Some("payment"), Ok(CallbackEvent::Payment(o))) => {
            let status = match &o.status {
                ReportedStatus::Succeeded => "succeeded",
                ReportedStatus::Failed { .. } => "failed",
            };
            let kind_ok = match text(expect, "kind") {
                Some(kind) => o.kind.map(TransactionKind::as_str) == Some(kind.as_str()),
                None => true,
            };
            let same = Some(o.transaction_id.to_string()) == expected_id
                && Some(status.to_owned()) == text(expect, "status")
                && Some(o.money) == expected_money
                && kind_ok
                && !o.provider_event_id.is_empty();
            if same {
                Ok(())
            } else {
                mismatch(&got)
            }
        }
        (Some("refund"), Ok(CallbackEvent::Refund(r))) => {
            let status = match &r.status {
                RefundStatus::Pending => "pending",
                RefundStatus::Succeeded => "succeeded",
                RefundStatus::Failed { .. } => "failed",
            };
            let same = Some(r.transaction_id.to_string()) == expected_id
                && Some(status.to_owned()) == text(expect, "status")
                && Some(r.money) == expected_money
                && !r.provider_event_id.is_empty();
            if same {
                Ok(())
            } else {
                mismatch(&got)
            }
        }
        _ => mismatch(&got),
    }
}

/// Compares what the connector read from a provider answer with the fixture's `expect`.
fn check_response(got: Result<Parsed, GatewayError>, expect: &Value) -> Result<(), String> {
    let mismatch = |got: &dyn std::fmt::Debug| Err(format!("expected {expect}, got {got:?}"));
    if let Some(error) = text(expect, "error") {
        let class = match &got {
            Err(GatewayError::Retryable { .. }) => "retryable",
            Err(GatewayError::Ambiguous { .. }) => "ambiguous",
            Err(GatewayError::Permanent { .. }) => "permanent",
            Ok(_) => "ok",
        };
        return if class == error {
            Ok(())
        } else {
            mismatch(&got)
        };
    }
    let same = match (
        &got,
        text(expect, "submit"),
        text(expect, "status"),
        text(expect, "refund"),
    ) {
        (Ok(Parsed::Submit(o)), Some(submit), _, _) => {
            let (status, url) = match &o.status {
                SubmitStatus::Accepted => ("accepted", None),
                SubmitStatus::Succeeded => ("succeeded", None),
                SubmitStatus::RequiresAction { url } => ("requires_action", Some(url.clone())),
            };
            status == submit
                && url == text(expect, "url")
                && text(expect, "provider_reference").is_none_or(|r| r == o.provider_reference)
        }
        (Ok(Parsed::Status(s)), None, Some(status), _) => {
            let word = match s {
                ProviderStatus::Unsupported => "unsupported",
                ProviderStatus::NotFound => "not_found",
                ProviderStatus::InProgress => "in_progress",
                ProviderStatus::AwaitingCustomer => "awaiting_customer",
                ProviderStatus::Final {
                    status: ReportedStatus::Succeeded,
                    ..
                } => "succeeded",
                ProviderStatus::Final {
                    status: ReportedStatus::Failed { .. },
                    ..
                } => "failed",
            };
            word == status
        }
        (Ok(Parsed::Refund(r)), None, None, Some(refund)) => {
            let word = match r.status {
                RefundStatus::Pending => "pending",
                RefundStatus::Succeeded => "succeeded",
                RefundStatus::Failed { .. } => "failed",
            };
            word == refund
        }
        _ => false,
    };
    if same {
        Ok(())
    } else {
        mismatch(&got)
    }
}

fn call(name: &str) -> Option<ProviderCall> {
    match name {
        "deposit" => Some(ProviderCall::Deposit),
        "withdraw" => Some(ProviderCall::Withdraw),
        "status" => Some(ProviderCall::Status),
        "refund" => Some(ProviderCall::Refund),
        _ => None,
    }
}

/// Runs one connector's folder; returns (fixtures run, failures).
fn run_folder(kind: &str) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let gateway = match gateway(kind) {
        Ok(g) => g,
        Err(e) => return (0, vec![format!("{kind}: gateway.json: {e}")]),
    };
    let dir = root().join(kind);
    let callbacks = files(&dir.join("callbacks"));
    let responses = files(&dir.join("responses"));
    if callbacks.is_empty() || responses.is_empty() {
        failures.push(format!("{kind}: needs callbacks/ and responses/ fixtures"));
    }
    for path in &callbacks {
        let result = read::<CallbackFixture>(path).and_then(|f| {
            let mut headers: BTreeMap<String, String> = f
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            if let Some(ct) = &f.content_type {
                headers.insert("content-type".into(), ct.clone());
            }
            let request = CallbackRequest {
                body: Bytes::from(f.body),
                content_type: f.content_type,
                headers,
                received_at: f.received_at.unwrap_or_else(Utc::now),
                path: f.path,
            };
            check_callback(gateway.handle_callback(&request), &f.expect)
        });
        if let Err(e) = result {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    for path in &responses {
        let result = read::<ResponseFixture>(path).and_then(|f| {
            let call = call(&f.call).ok_or_else(|| format!("unknown call {:?}", f.call))?;
            let tx = transaction(&f.transaction)?;
            let response = ProviderResponse {
                status: f.status,
                body: Bytes::from(f.body),
            };
            let parsed = gateway
                .parse_response(call, &tx, &response)
                .ok_or("the connector does not expose parse_response")?;
            check_response(parsed, &f.expect)
        });
        if let Err(e) = result {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    (callbacks.len() + responses.len(), failures)
}

#[test]
fn every_real_provider_reads_its_documented_samples() {
    let kinds: Vec<&str> = CONNECTORS
        .iter()
        .map(|(kind, _)| *kind)
        .filter(|kind| !SANDBOX_PROTOCOLS.contains(kind))
        .collect();
    let mut failures = Vec::new();
    for kind in &kinds {
        let (count, mut failed) = run_folder(kind);
        println!("{kind}: {count} fixtures, {} failed", failed.len());
        failures.append(&mut failed);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_wrong_expectation_is_caught() {
    // The runner itself must be able to fail: an ignored event is not a payment.
    let got = Ok(CallbackEvent::Ignored {
        event: "subscription.create".into(),
    });
    assert!(check_callback(got.clone(), &serde_json::json!({"event": "ignored"})).is_ok());
    assert!(check_callback(got, &serde_json::json!({"event": "payment"})).is_err());
    let refused = Err(CallbackError::Unauthenticated("x".into()));
    assert!(check_callback(refused, &serde_json::json!({"error": "malformed"})).is_err());
}

#[test]
fn every_connectors_reference_codec_round_trips() {
    // Every real provider as its fixtures configure it; the sandbox protocols use the id as is.
    for (kind, _) in CONNECTORS {
        let gateway = if SANDBOX_PROTOCOLS.contains(kind) {
            let name = GatewayName::parse("codec").unwrap_or_else(|e| panic!("{e}"));
            let base = url::Url::parse("http://127.0.0.1:9/").unwrap_or_else(|e| panic!("{e}"));
            let settings =
                GatewaySettings::new(name, kind, base, Secret::new("sk"), Secret::new("wh"));
            registry::build(settings).unwrap_or_else(|e| panic!("{kind}: {e}"))
        } else {
            gateway(kind).unwrap_or_else(|e| panic!("{kind}: {e}"))
        };
        for _ in 0..200 {
            let id = TransactionId::new();
            let encoded = gateway.encode_reference(id);
            assert_eq!(
                gateway.decode_reference(&encoded),
                Ok(id),
                "{kind}: {encoded}"
            );
        }
        assert!(
            gateway.decode_reference("not-a-reference").is_err(),
            "{kind}"
        );
    }
}
