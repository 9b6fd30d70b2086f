//! Sending callbacks to paygate: `POST {callback_base}/callbacks/{account}`, signed by the
//! gateways crate's own signing helpers (one signing rule per format, shared with the
//! connectors that verify them). Like a real provider, a non-2xx answer is retried a few
//! times with doubling backoff; every attempt is re-signed with a fresh timestamp.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use paygate_core::domain::{Amount, GatewayName, Money};
use paygate_gateways::{json, protobuf, soap, CallbackFields, SignedCallback};

use crate::engine::{chance, Engine, Protocol, Record, RecordState};
use crate::knobs::Knobs;

/// One planned callback (and its optional duplicate).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub account: GatewayName,
    pub protocol: Protocol,
    pub fields: CallbackFields,
    pub malformed: bool,
    pub delay: Duration,
    /// Extra delay of a duplicate copy, if one is sent.
    pub duplicate_after: Option<Duration>,
    pub out_of_order: bool,
    pub mismatched: bool,
    pub max_attempts: u32,
    pub target: Option<String>,
}

impl Delivery {
    /// Rolls the callback knobs for one executed payment.
    pub fn plan(record: &Record, knobs: &Knobs, event_number: u64, now: DateTime<Utc>) -> Self {
        let status = match &record.state {
            RecordState::Pending { outcome } | RecordState::Final(outcome) => outcome.clone(),
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
            fields: CallbackFields {
                transaction_id: record.order.reference,
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
    engine.announce(&delivery.account, &delivery.fields.transaction_id);
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

/// The signed request for this delivery, signed now.
pub fn sign(engine: &Engine, delivery: &Delivery, now: DateTime<Utc>) -> SignedCallback {
    let secret = &engine.settings.webhook_secret;
    let fields = CallbackFields {
        sent_at: now,
        ..delivery.fields.clone()
    };
    match (delivery.protocol, delivery.malformed) {
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
    }
}

async fn send(engine: &Engine, delivery: &Delivery) {
    let account = delivery.account.as_str();
    let base = delivery
        .target
        .as_deref()
        .unwrap_or(&engine.settings.callback_base_url);
    let url = format!("{}/callbacks/{}", base.trim_end_matches('/'), account);
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=delivery.max_attempts {
        let signed = sign(engine, delivery, Utc::now());
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
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    engine.count(account, |c| &c.callbacks_failed);
    tracing::warn!(%url, transaction = %delivery.fields.transaction_id, "callback given up");
}
