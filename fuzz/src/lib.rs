//! What the fuzz targets share: the six connectors built as the fixtures configure them, the
//! invariants every callback verdict must keep, and the path a callback takes through the
//! bus (the API's `CallbackReceived` envelope, re-read as the callback processor reads it).
//!
//! Invariants are asserted with `assert!`: a broken one is a crash that libFuzzer keeps as
//! an artifact, exactly like a panic inside the code under test.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use paygate_core::bus::events::{Body, CallbackReceived, Envelope};
use paygate_core::domain::{GatewayName, Money};
use paygate_gateways::registry::{self, GatewaySettings};
use paygate_gateways::{
    CallbackError, CallbackEvent, CallbackRequest, PaymentGateway, RefundStatus, ReportedStatus,
    Secret,
};

/// The connectors, in selector order (`Connector::from_byte`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    SandboxJson,
    SandboxSoap,
    SandboxProto,
    Paystack,
    Stripe,
    Mpesa,
}

impl Connector {
    pub const ALL: [Connector; 6] = [
        Connector::SandboxJson,
        Connector::SandboxSoap,
        Connector::SandboxProto,
        Connector::Paystack,
        Connector::Stripe,
        Connector::Mpesa,
    ];

    /// The connector a selector byte names (every byte names one).
    pub fn from_byte(byte: u8) -> Connector {
        Self::ALL[usize::from(byte) % Self::ALL.len()]
    }

    pub fn kind(self) -> &'static str {
        match self {
            Connector::SandboxJson => "sandbox-json",
            Connector::SandboxSoap => "sandbox-soap",
            Connector::SandboxProto => "sandbox-proto",
            Connector::Paystack => "paystack",
            Connector::Stripe => "stripe",
            Connector::Mpesa => "mpesa",
        }
    }

    /// The connector's settings file in `gateways/fixtures/<kind>/` (real providers only):
    /// the fuzz targets use the same secrets as the documented samples, so those samples,
    /// committed as seeds, pass the signature check and reach the parsers.
    fn fixture(self) -> Option<&'static str> {
        match self {
            Connector::Paystack => Some(include_str!(
                "../../gateways/fixtures/paystack/gateway.json"
            )),
            Connector::Stripe => Some(include_str!("../../gateways/fixtures/stripe/gateway.json")),
            Connector::Mpesa => Some(include_str!("../../gateways/fixtures/mpesa/gateway.json")),
            _ => None,
        }
    }
}

/// The secret key and webhook secret of the sandbox protocols in every target.
pub const SANDBOX_SECRET_KEY: &str = "sk_fuzz";
pub const SANDBOX_WEBHOOK_SECRET: &str = "whsec_fuzz";

/// How a connector instance is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// As deployed: the default callback tolerance.
    Door,
    /// A tolerance of a century, so a signed body reaches the parser whatever time it names.
    Lenient,
    /// Other secrets: nothing signed for `Door` may be believed by it.
    Twin,
}

/// Every connector in every variant, built once per process.
struct Gateways {
    door: Vec<Arc<dyn PaymentGateway>>,
    lenient: Vec<Arc<dyn PaymentGateway>>,
    twin: Vec<Arc<dyn PaymentGateway>>,
    secrets: Vec<(Secret, Secret)>,
}

fn gateways() -> &'static Gateways {
    static GATEWAYS: OnceLock<Gateways> = OnceLock::new();
    GATEWAYS.get_or_init(|| {
        let mut all = Gateways {
            door: Vec::new(),
            lenient: Vec::new(),
            twin: Vec::new(),
            secrets: Vec::new(),
        };
        for connector in Connector::ALL {
            all.door.push(build(connector, Variant::Door));
            all.lenient.push(build(connector, Variant::Lenient));
            all.twin.push(build(connector, Variant::Twin));
            let settings = settings(connector, Variant::Door);
            all.secrets
                .push((settings.secret_key.clone(), settings.webhook_secret.clone()));
        }
        all
    })
}

fn settings(connector: Connector, variant: Variant) -> GatewaySettings {
    let (secret_key, webhook_secret, extra) = match connector.fixture() {
        Some(text) => {
            let fixture: serde_json::Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture: {e}"));
            let field = |key: &str| fixture[key].as_str().unwrap_or_default().to_owned();
            let extra: BTreeMap<String, serde_json::Value> = fixture["extra"]
                .as_object()
                .map(|o| o.clone().into_iter().collect())
                .unwrap_or_default();
            (field("secret_key"), field("webhook_secret"), extra)
        }
        None => (
            SANDBOX_SECRET_KEY.to_owned(),
            SANDBOX_WEBHOOK_SECRET.to_owned(),
            BTreeMap::new(),
        ),
    };
    let (secret_key, webhook_secret) = match variant {
        Variant::Twin => (
            format!("{secret_key}-other"),
            format!("{webhook_secret}-other"),
        ),
        _ => (secret_key, webhook_secret),
    };
    let name = GatewayName::parse(&format!("fuzz-{}", connector.kind()))
        .unwrap_or_else(|e| panic!("name: {e}"));
    let base = url::Url::parse("http://127.0.0.1:9/").unwrap_or_else(|e| panic!("url: {e}"));
    let mut settings = GatewaySettings::new(
        name,
        connector.kind(),
        base,
        Secret::new(secret_key),
        Secret::new(webhook_secret),
    );
    settings.extra = extra;
    if variant == Variant::Lenient {
        settings.callback_tolerance = Duration::from_secs(100 * 365 * 24 * 3600);
    }
    settings
}

fn build(connector: Connector, variant: Variant) -> Arc<dyn PaymentGateway> {
    registry::build(settings(connector, variant))
        .unwrap_or_else(|e| panic!("{}: {e}", connector.kind()))
}

/// One connector instance.
pub fn gateway(connector: Connector, variant: Variant) -> Arc<dyn PaymentGateway> {
    let all = gateways();
    let index = Connector::ALL
        .iter()
        .position(|c| *c == connector)
        .unwrap_or_default();
    let list = match variant {
        Variant::Door => &all.door,
        Variant::Lenient => &all.lenient,
        Variant::Twin => &all.twin,
    };
    Arc::clone(&list[index])
}

/// The `Door` instance's (secret key, webhook secret).
pub fn secrets(connector: Connector) -> (Secret, Secret) {
    let index = Connector::ALL
        .iter()
        .position(|c| *c == connector)
        .unwrap_or_default();
    gateways().secrets[index].clone()
}

/// The receipt time of every fuzzed callback unless the input names another:
/// 2025-12-03T08:00:05Z, the time the documented samples were received.
pub fn fixed_now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_748_805, 0).unwrap_or_default()
}

/// The longest error message or ignored-event name a connector may produce: they are logged
/// and answered, so a hostile body must never be echoed whole.
pub const MAX_MESSAGE_CHARS: usize = 1024;
/// `CallbackEvent::Ignored` names are bounded for the log (Stripe's is the longest, 100).
pub const MAX_IGNORED_EVENT_CHARS: usize = 100;

fn check_money(money: &Money) {
    assert!(
        money.amount.minor_units() > 0,
        "non-positive money {money:?}"
    );
    // Display is what the logs use; it must hold for every amount a provider can name.
    assert!(!money.to_string().is_empty());
}

fn check_id_text(what: &str, value: &str) {
    assert!(
        !value.trim().is_empty() && value.len() <= 256,
        "{what} must be 1-256 characters: {value:?}"
    );
}

/// What every verdict of `handle_callback` must satisfy, whatever the bytes.
pub fn check_verdict(gateway: &dyn PaymentGateway, verdict: &Result<CallbackEvent, CallbackError>) {
    match verdict {
        Ok(CallbackEvent::Payment(outcome)) => {
            check_money(&outcome.money);
            check_id_text("provider_event_id", &outcome.provider_event_id);
            // The bus key and the processor's lookup use this id: it must survive the
            // connector's own reference codec.
            let encoded = gateway.encode_reference(outcome.transaction_id);
            assert_eq!(
                gateway.decode_reference(&encoded).ok(),
                Some(outcome.transaction_id)
            );
            if let ReportedStatus::Failed { code, reason } = &outcome.status {
                assert!(!code.is_empty(), "failed without a code");
                assert!(code.chars().count() <= MAX_MESSAGE_CHARS);
                assert!(reason.chars().count() <= MAX_MESSAGE_CHARS * 4);
            }
        }
        Ok(CallbackEvent::Refund(report)) => {
            check_money(&report.money);
            check_id_text("provider_event_id", &report.provider_event_id);
            check_id_text("provider_reference", &report.provider_reference);
            if let RefundStatus::Failed { code, .. } = &report.status {
                assert!(!code.is_empty(), "refund failed without a code");
            }
        }
        Ok(CallbackEvent::Ignored { event }) => {
            assert!(
                event.chars().count() <= MAX_IGNORED_EVENT_CHARS,
                "unbounded ignored event name ({} chars)",
                event.chars().count()
            );
        }
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.chars().count() <= MAX_MESSAGE_CHARS,
                "unbounded refusal ({} chars): {}",
                text.chars().count(),
                text.chars().take(200).collect::<String>()
            );
        }
    }
}

/// Whether a refusal is one a forger gets: the envelope checks before any key is used, or
/// the authentication itself.
pub fn is_refused_before_belief(verdict: &Result<CallbackEvent, CallbackError>) -> bool {
    matches!(
        verdict,
        Err(CallbackError::Unauthenticated(_)
            | CallbackError::UnsupportedContentType(_)
            | CallbackError::TooLarge)
    )
}

/// The request as the API builds it from an HTTP request: `content-type` read from the
/// headers, and only the headers the connector declares kept (api/src/routes/callbacks.rs).
pub fn door_request(
    gateway: &dyn PaymentGateway,
    headers: &[(String, String)],
    body: Bytes,
    path: Option<String>,
    received_at: DateTime<Utc>,
) -> CallbackRequest {
    let declared = gateway.callback_headers();
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| declared.contains(&k.as_str()))
        .collect();
    CallbackRequest {
        content_type: headers.get("content-type").cloned(),
        headers,
        body,
        path,
        received_at,
    }
}

/// The callback as the callback processor sees it after the bus: the API's
/// `CallbackReceived` envelope (receipt time in milliseconds), encoded, decoded with
/// `Envelope::decode_checked` and turned back into a request exactly as
/// callback-processor/src/handler.rs `parse_event` does.
pub fn through_the_bus(gateway_name: &GatewayName, request: &CallbackRequest) -> CallbackRequest {
    let envelope = Envelope::new(Body::CallbackReceived(CallbackReceived {
        gateway: gateway_name.to_string(),
        content_type: request.content_type.clone().unwrap_or_default(),
        body: request.body.to_vec(),
        headers: request
            .headers
            .clone()
            .into_iter()
            .collect::<HashMap<_, _>>(),
        received_at_unix_ms: request.received_at.timestamp_millis(),
        path: request.path.clone().unwrap_or_default(),
    }));
    let bytes = envelope.encode_to_bytes();
    let decoded = Envelope::decode_checked(&bytes).unwrap_or_else(|e| panic!("own envelope: {e}"));
    let Some(Body::CallbackReceived(received)) = decoded.body else {
        panic!("own envelope lost its body");
    };
    let received_at = DateTime::from_timestamp_millis(received.received_at_unix_ms)
        .unwrap_or_else(|| panic!("own receipt time out of range"));
    CallbackRequest {
        body: Bytes::from(received.body),
        content_type: Some(received.content_type).filter(|c| !c.is_empty()),
        headers: received
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
        received_at,
        path: Some(received.path).filter(|p| !p.is_empty()),
    }
}

/// The checks both callback targets make of one request at the door of `connector`'s
/// `variant` instance: a valid verdict; the same verdict a second time; an accepted
/// callback accepted again, identically, after the bus; and never believed by the twin
/// with other secrets.
pub fn check_callback(connector: Connector, variant: Variant, request: &CallbackRequest) {
    let gateway = gateway(connector, variant);
    let verdict = gateway.handle_callback(request);
    check_verdict(gateway.as_ref(), &verdict);
    assert_eq!(
        gateway.handle_callback(request),
        verdict,
        "the same callback judged twice differently"
    );
    if verdict.is_ok() {
        let requeued = through_the_bus(gateway.name(), request);
        assert_eq!(
            gateway.handle_callback(&requeued),
            verdict,
            "accepted at the door, judged differently from the queue"
        );
    }
    let twin = self::gateway(connector, Variant::Twin);
    let forged = twin.handle_callback(request);
    assert!(
        is_refused_before_belief(&forged),
        "{}: a callback not signed with this gateway's secret was believed: {forged:?}",
        connector.kind()
    );
}
