//! Sending callbacks to paygate: `POST {callback_base}/callbacks/{account}`, signed by the
//! gateways crate's own signing helpers (one signing rule per format, shared with the
//! connectors that verify them). Like a real provider, a non-2xx answer (or no answer) is
//! retried on a capped doubling schedule (`callback_max_attempts`, `callback_backoff_ms`,
//! `callback_backoff_max_ms`: by default about 4 minutes, so a restart of paygate's API does
//! not lose callbacks); every attempt is re-signed with a fresh timestamp. Shutdown cancels
//! the waits at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use paygate_core::domain::{Amount, GatewayName, Money, TransactionId, TransactionKind};
use paygate_gateways::{json, protobuf, soap, CallbackFields, ReportedStatus, SignedCallback};

use crate::emulators;
use crate::engine::{chance, Engine, Protocol, Record, RecordState};
use crate::knobs::Knobs;

/// A callback ready to POST: the sandbox's own shape, so emulators of real providers
/// depend on nothing of the connectors that will read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub content_type: String,
    /// Extra headers, lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl From<SignedCallback> for Outbound {
    fn from(signed: SignedCallback) -> Self {
        Self {
            content_type: signed.content_type,
            headers: signed.headers,
            body: signed.body,
        }
    }
}

/// The facts of one payment event, whatever the format that will carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The merchant's reference as the provider received it.
    pub reference: String,
    pub kind: TransactionKind,
    pub status: ReportedStatus,
    pub provider_reference: String,
    /// The provider's event id (repeats of one event share it).
    pub event_id: String,
    /// What the provider says moved (off by one for a mismatched callback).
    pub money: Money,
    /// When the callback is sent; every attempt is re-signed with a fresh one.
    pub sent_at: DateTime<Utc>,
}

impl Facts {
    /// The invented protocols' callback fields (their references are paygate ids, checked
    /// on submission); `None` for a reference that is not one.
    fn callback_fields(&self) -> Option<CallbackFields> {
        Some(CallbackFields {
            transaction_id: TransactionId::parse(&self.reference).ok()?,
            kind: self.kind,
            status: self.status.clone(),
            provider_reference: self.provider_reference.clone(),
            event_id: self.event_id.clone(),
            money: self.money,
            sent_at: self.sent_at,
        })
    }
}

/// One planned callback (and its optional duplicate).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub account: GatewayName,
    pub protocol: Protocol,
    pub fields: Facts,
    /// The URL the payment's request named for its callback (M-Pesa's `CallBackURL`).
    pub callback_url: Option<String>,
    pub malformed: bool,
    pub delay: Duration,
    /// Extra delay of a duplicate copy, if one is sent.
    pub duplicate_after: Option<Duration>,
    pub out_of_order: bool,
    pub mismatched: bool,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub target: Option<String>,
}

/// The wait before each retry: `first`, doubling, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn from_knobs(knobs: &Knobs) -> Self {
        Self {
            first: Duration::from_millis(knobs.callback_backoff_ms),
            max: Duration::from_millis(knobs.callback_backoff_max_ms),
        }
    }

    /// The wait after failed attempt number `attempt` (1-based); saturates, never overflows.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(63);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.first
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

impl Delivery {
    /// Rolls the callback knobs for one executed payment.
    pub fn plan(record: &Record, knobs: &Knobs, event_number: u64, now: DateTime<Utc>) -> Self {
        let status = match &record.state {
            RecordState::Pending { outcome } | RecordState::Final(outcome) => outcome.clone(),
            // Never planned for a payment still waiting for its customer.
            RecordState::AwaitingAction => ReportedStatus::Failed {
                code: "action_required".into(),
                reason: "The customer has not finished".into(),
            },
        };
        let mut money = record.order.money;
        let mismatched = chance(knobs.mismatched_callback_rate);
        if mismatched {
            if let Some(amount) = money
                .amount
                .minor_units()
                .checked_add(1)
                .and_then(|n| Amount::new(n).ok())
            {
                money = Money::new(amount, money.currency);
            }
        }
        let out_of_order = chance(knobs.out_of_order_rate);
        let mut delay = Duration::from_millis(knobs.callback_delay_ms);
        if out_of_order {
            delay += Duration::from_millis(knobs.out_of_order_delay_ms);
        }
        Self {
            account: record.order.account.clone(),
            protocol: record.order.protocol,
            callback_url: record.order.callback_url.clone(),
            fields: Facts {
                reference: record.order.reference.clone(),
                kind: record.order.kind,
                status,
                provider_reference: record.provider_reference.clone(),
                event_id: format!("evt_{event_number}"),
                money,
                sent_at: now,
            },
            malformed: chance(knobs.malformed_callback_rate),
            delay,
            duplicate_after: chance(knobs.duplicate_callback_rate)
                .then(|| Duration::from_millis(knobs.callback_delay_ms.max(10))),
            out_of_order,
            mismatched,
            max_attempts: knobs.callback_max_attempts.max(1),
            backoff: Backoff::from_knobs(knobs),
            target: knobs.callback_base_url.clone(),
        }
    }
}

/// Spawns the delivery (tracked, so shutdown can wait for or cancel it).
pub fn schedule(engine: &Arc<Engine>, delivery: Delivery) {
    let engine = Arc::clone(engine);
    let tracker = engine.tasks.clone();
    tracker.spawn(async move {
        let shutdown = engine.shutdown.clone();
        tokio::select! {
            () = run(&engine, delivery) => {}
            () = shutdown.cancelled() => {}
        }
    });
}

async fn run(engine: &Arc<Engine>, delivery: Delivery) {
    let account = delivery.account.as_str().to_owned();
    tokio::time::sleep(delivery.delay).await;
    engine.announce(&delivery.account, &delivery.fields.reference);
    if delivery.out_of_order {
        engine.count(&account, |c| &c.callbacks_out_of_order);
    }
    if delivery.mismatched {
        engine.count(&account, |c| &c.callbacks_mismatched);
    }
    if delivery.malformed {
        engine.count(&account, |c| &c.callbacks_malformed);
    }
    send(engine, &delivery).await;
    if let Some(after) = delivery.duplicate_after {
        tokio::time::sleep(after).await;
        engine.count(&account, |c| &c.callbacks_duplicated);
        send(engine, &delivery).await;
    }
}

/// The signed request for this delivery, signed now (`None`: nothing sendable).
pub fn sign(engine: &Engine, delivery: &Delivery, now: DateTime<Utc>) -> Option<Outbound> {
    let secret = &engine.settings.webhook_secret;
    let facts = Facts {
        sent_at: now,
        ..delivery.fields.clone()
    };
    let emulated = match delivery.protocol {
        Protocol::Paystack => Some(emulators::paystack::callback(
            engine,
            &facts,
            delivery.malformed,
        )),
        Protocol::Mpesa => Some(emulators::mpesa::callback(
            engine,
            &facts,
            delivery.malformed,
        )),
        Protocol::Stripe => Some(emulators::stripe::callback(
            engine,
            &facts,
            delivery.malformed,
        )),
        Protocol::Json | Protocol::Soap | Protocol::Protobuf => None,
    };
    if emulated.is_some() {
        return emulated;
    }
    let fields = facts.callback_fields()?;
    let signed = match (delivery.protocol, delivery.malformed) {
        (Protocol::Json, false) => json::signed_callback(secret, &fields),
        (Protocol::Soap, false) => soap::signed_callback(secret, &fields),
        (Protocol::Protobuf, false) => protobuf::signed_callback(secret, &fields),
        // Authentic but wrong: valid JSON of the wrong shape.
        (Protocol::Json, true) => json::sign_body(
            secret,
            Bytes::from(format!(
                r#"{{"event":"charge.success","data":{{"reference":{}}}}}"#,
                now.timestamp()
            )),
        ),
        // Authentic but truncated XML.
        (Protocol::Soap, true) => {
            let whole = soap::signed_callback(secret, &fields).body;
            soap::sign_body(secret, whole.slice(..whole.len() / 2), now)
        }
        // Authentic envelope around a garbage payload (a length prefix running off the end).
        (Protocol::Protobuf, true) => {
            protobuf::sign_body(secret, vec![0x12, 0xff, 0xff, 0xff, 0x0f, 0x01])
        }
        (Protocol::Paystack | Protocol::Mpesa | Protocol::Stripe, _) => return None,
    };
    Some(signed.into())
}

/// Where this delivery goes: the URL its request named, else
/// `{callback_base_url}/callbacks/{account}`. The `callback_base_url` knob redirects
/// either (a named URL keeps its path), so tests can capture them.
fn target_url(engine: &Engine, delivery: &Delivery) -> String {
    let base = delivery
        .target
        .as_deref()
        .unwrap_or(&engine.settings.callback_base_url)
        .trim_end_matches('/');
    match delivery.callback_url.as_deref().map(url::Url::parse) {
        Some(Ok(named)) if delivery.target.is_some() => {
            let query = named.query().map(|q| format!("?{q}")).unwrap_or_default();
            format!("{base}{}{query}", named.path())
        }
        Some(Ok(named)) => named.to_string(),
        _ => format!("{base}/callbacks/{}", delivery.account),
    }
}

async fn send(engine: &Engine, delivery: &Delivery) {
    let account = delivery.account.as_str();
    let url = target_url(engine, delivery);
    for attempt in 1..=delivery.max_attempts {
        let Some(signed) = sign(engine, delivery, Utc::now()) else {
            tracing::warn!(%url, reference = %delivery.fields.reference, "callback cannot be rendered");
            engine.count(account, |c| &c.callbacks_failed);
            return;
        };
        let mut request = engine
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, &signed.content_type);
        for (name, value) in &signed.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.body(signed.body).send().await {
            Ok(response) if response.status().is_success() => {
                engine.count(account, |c| &c.callbacks_sent);
                return;
            }
            Ok(response) => {
                tracing::debug!(%url, status = %response.status(), attempt, "callback refused");
            }
            Err(error) => tracing::debug!(%url, %error, attempt, "callback failed"),
        }
        if attempt < delivery.max_attempts {
            engine.count(account, |c| &c.callback_retries);
            tokio::time::sleep(delivery.backoff.delay(attempt)).await;
        }
    }
    engine.count(account, |c| &c.callbacks_failed);
    tracing::warn!(%url, reference = %delivery.fields.reference, "callback given up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let knobs = Knobs::default();
        let backoff = Backoff::from_knobs(&knobs);
        let delays: Vec<u64> = (1..knobs.callback_max_attempts)
            .map(|attempt| u64::try_from(backoff.delay(attempt).as_millis()).unwrap_or(u64::MAX))
            .collect();
        assert_eq!(
            delays,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        // Between 3 and 10 minutes in all, as a real provider's schedule.
        let total: u64 = delays.iter().sum();
        assert!((180_000..=600_000).contains(&total), "{total}");
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let backoff = Backoff {
            first: Duration::from_millis(u64::MAX / 2),
            max: Duration::from_millis(u64::MAX),
        };
        assert_eq!(backoff.delay(u32::MAX), Duration::from_millis(u64::MAX));
        let small = Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(25),
        };
        assert_eq!(
            (
                small.delay(1),
                small.delay(2),
                small.delay(3),
                small.delay(40)
            ),
            (
                Duration::from_millis(10),
                Duration::from_millis(20),
                Duration::from_millis(25),
                Duration::from_millis(25)
            )
        );
    }
}
