//! A merchant's webhook receiver: verifies each delivery's Standard Webhooks signature and
//! remembers what arrived, when. `paygate dev` runs one as its demo receiver, `paygate bench
//! e2e` measures accept→webhook latency with one, and the end-to-end tests count with one.
//!
//! A delivery whose signature does not verify is answered `400` (so the dispatcher retries
//! it, as a real merchant's endpoint would make it) and recorded with `verified: false`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use paygate_callback_dispatcher::signing;
use paygate_core::db::webhooks::SigningSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where a receiver listens for webhooks.
pub const RECEIVER_PATH: &str = "/webhooks";
/// How far a webhook's timestamp may be from the receiver's clock (Standard Webhooks: 5 min).
const WEBHOOK_TOLERANCE_SECS: i64 = 300;

/// One webhook the receiver got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedWebhook {
    /// `webhook-id` (the event id; a redelivery repeats it).
    pub webhook_id: String,
    /// `type` of the body, e.g. `transaction.succeeded`.
    pub event_type: Option<String>,
    /// `data.id` of the body.
    pub transaction_id: Option<String>,
    /// `data.status` of the body.
    pub status: Option<String>,
    /// Whether the Standard Webhooks signature verified with the endpoint's secret.
    pub verified: bool,
    /// Whether a webhook with this `webhook-id` had arrived before.
    pub repeat: bool,
    /// When it arrived (for accept→webhook latency).
    pub received_at: Instant,
}

/// How the receiver reports each webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logging {
    /// One `info` line per webhook (the dev demo).
    EachWebhook,
    /// `debug` only (benchmarks and tests, where thousands arrive).
    Quiet,
}

struct Inner {
    /// The endpoints' secrets (one per merchant whose endpoint points here): a webhook is
    /// verified when one of them signed it.
    secrets: Vec<SigningSecret>,
    logging: Logging,
    received: Mutex<Vec<ReceivedWebhook>>,
    seen: Mutex<HashSet<String>>,
}

/// A webhook receiver for one endpoint secret (or several: [`Self::for_endpoints`]). Cheap to
/// clone; clones share what arrived.
#[derive(Clone)]
pub struct WebhookReceiver {
    inner: Arc<Inner>,
}

impl WebhookReceiver {
    pub fn new(secret: SigningSecret, logging: Logging) -> Self {
        Self::for_endpoints(vec![secret], logging)
    }

    /// One receiver for the endpoints of several merchants, each with its own secret.
    pub fn for_endpoints(secrets: Vec<SigningSecret>, logging: Logging) -> Self {
        Self {
            inner: Arc::new(Inner {
                secrets,
                logging,
                received: Mutex::new(Vec::new()),
                seen: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The receiver's routes: `POST` [`RECEIVER_PATH`].
    pub fn router(&self) -> Router {
        Router::new()
            .route(RECEIVER_PATH, post(receive))
            .with_state(self.inner.clone())
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(anyhow::Error::from)
    }

    /// Every webhook received so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedWebhook> {
        self.inner
            .received
            .lock()
            .map(|list| list.clone())
            .unwrap_or_default()
    }

    /// How many webhooks arrived so far (repeats and unverified ones included).
    pub fn count(&self) -> usize {
        self.inner
            .received
            .lock()
            .map(|list| list.len())
            .unwrap_or_default()
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let received_at = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let webhook_id = header(signing::HEADER_ID);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let (timestamp, signature) = (
        header(signing::HEADER_TIMESTAMP),
        header(signing::HEADER_SIGNATURE),
    );
    let verify = |secret| {
        signing::verify(
            secret,
            &webhook_id,
            &timestamp,
            &signature,
            &body,
            now,
            WEBHOOK_TOLERANCE_SECS,
        )
    };
    // The first secret that verifies, else the last one's reason.
    let mut verdict = Err(signing::SignatureError::NoSecret);
    for secret in &inner.secrets {
        verdict = verify(secret);
        if verdict.is_ok() {
            break;
        }
    }
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let repeat = inner
        .seen
        .lock()
        .map(|mut seen| !seen.insert(webhook_id.clone()))
        .unwrap_or(false);
    let webhook = ReceivedWebhook {
        webhook_id,
        event_type: text(&parsed["type"]),
        transaction_id: text(&parsed["data"]["id"]),
        status: text(&parsed["data"]["status"]),
        verified: verdict.is_ok(),
        repeat,
        received_at,
    };
    log(inner.logging, &webhook, verdict.as_ref().err());
    if let Ok(mut list) = inner.received.lock() {
        list.push(webhook);
    }
    if verdict.is_ok() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn log(logging: Logging, webhook: &ReceivedWebhook, error: Option<&signing::SignatureError>) {
    let event = webhook.event_type.as_deref().unwrap_or("(no type)");
    let transaction = webhook
        .transaction_id
        .as_deref()
        .unwrap_or("(no transaction)");
    let (id, repeat) = (&webhook.webhook_id, webhook.repeat);
    match (logging, error) {
        (Logging::EachWebhook, None) => tracing::info!(
            webhook_id = %id,
            repeat,
            "demo receiver: {event} for {transaction}, signature verified"
        ),
        (Logging::EachWebhook, Some(error)) => tracing::warn!(
            webhook_id = %id,
            repeat,
            "demo receiver: {event} for {transaction}, signature NOT verified ({error})"
        ),
        (Logging::Quiet, None) => {
            tracing::debug!(webhook_id = %id, repeat, "webhook for {transaction}")
        }
        (Logging::Quiet, Some(error)) => tracing::warn!(
            webhook_id = %id,
            repeat,
            "webhook for {transaction}: signature NOT verified ({error})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    /// A `whsec_` secret of the given base64 key.
    fn secret(encoded: &str) -> SigningSecret {
        SigningSecret::parse(&format!("whsec_{encoded}")).expect("a whsec_ secret")
    }

    async fn post_signed(receiver: &WebhookReceiver, by: &SigningSecret, id: &str) -> StatusCode {
        let body = br#"{"type":"payment.succeeded","data":{"id":"txn_1","status":"succeeded"}}"#;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let signed = signing::sign(std::slice::from_ref(by), id, now, body).expect("signs");
        let request = Request::post(RECEIVER_PATH)
            .header(signing::HEADER_ID, signed.id)
            .header(signing::HEADER_TIMESTAMP, signed.timestamp)
            .header(signing::HEADER_SIGNATURE, signed.signature)
            .body(Body::from(&body[..]))
            .expect("a request");
        receiver
            .router()
            .oneshot(request)
            .await
            .expect("the router answers")
            .status()
    }

    #[tokio::test]
    async fn each_endpoints_secret_verifies_and_no_other() {
        let (a, b, stranger) = (
            secret("YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="),
            secret("YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI="),
            secret("Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2M="),
        );
        let receiver = WebhookReceiver::for_endpoints(vec![a.clone(), b.clone()], Logging::Quiet);
        assert_eq!(
            post_signed(&receiver, &a, "msg_1").await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            post_signed(&receiver, &b, "msg_2").await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            post_signed(&receiver, &stranger, "msg_3").await,
            StatusCode::BAD_REQUEST
        );
        let verified: Vec<bool> = receiver.received().iter().map(|w| w.verified).collect();
        assert_eq!(verified, [true, true, false]);
    }
}
