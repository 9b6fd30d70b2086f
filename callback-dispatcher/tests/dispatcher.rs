//! The dispatcher end to end: real Postgres, a real HTTP receiver (axum on 127.0.0.1:0),
//! transactions finished as the processors finish them (the webhook event and its
//! deliveries recorded in the statement that changes the state), and events recorded again
//! as the healer would (a replay must tell nothing more).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use paygate_callback_dispatcher::{check_destination, DestinationPolicy, Refused};
use paygate_core::announce;
use paygate_core::bus::Topic;
use paygate_core::config::Config;
use paygate_core::db::outbox::OutboxMessage;
use paygate_core::db::webhooks::{self, DeliveryState};
use paygate_core::db::{merchants, transactions, webhook_endpoints};
use paygate_core::domain::{
    CustomerReference, MerchantId, Money, NewTransaction, Transaction, TransactionKind,
    TransactionStatus,
};
use paygate_testkit::isolated_config;
use sha2::Sha256;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), Error>;

/// The test configuration's keyring (webhook secrets are stored sealed with it).
fn keyring(config: &Config) -> Result<paygate_core::keyring::Keyring, Error> {
    Ok(paygate_testkit::keyring(config)?)
}

/// An endpoint of `merchant` at `url`, its secret sealed with the test keyring.
async fn endpoint(
    config: &Config,
    pool: &PgPool,
    merchant: MerchantId,
    url: &str,
    description: Option<&str>,
) -> Result<webhook_endpoints::WebhookEndpoint, Error> {
    Ok(webhook_endpoints::create(pool, &keyring(config)?, merchant, url, description).await?)
}

// ---------------------------------------------------------------- the receiver

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
enum Behaviour {
    /// These statuses for the first requests, then 200.
    FailFirst(Vec<u16>),
    Always(u16),
    /// Never answers.
    Hang,
}

struct ReceiverState {
    behaviour: Behaviour,
    log: Mutex<Vec<Received>>,
    count: AtomicUsize,
}

#[derive(Clone)]
struct Receiver {
    base: String,
    port: u16,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Result<Self, Error> {
        let state = Arc::new(ReceiverState {
            behaviour,
            log: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(receive).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base: format!("http://127.0.0.1:{port}"),
            port,
            state,
        })
    }

    fn received(&self) -> Vec<Received> {
        self.state.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let n = state.count.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut log) = state.log.lock() {
        log.push(Received {
            path: uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
        });
    }
    let status = match &state.behaviour {
        Behaviour::FailFirst(statuses) => statuses.get(n).copied().unwrap_or(200),
        Behaviour::Always(status) => *status,
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            200
        }
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, format!("receiver says {status} to request {}", n + 1))
}

// ---------------------------------------------------------------- helpers

/// Standard Webhooks verification written here from the spec, apart from the crate's own.
fn independently_verifies(secret: &str, received: &Received, body: &[u8]) -> bool {
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return false;
    };
    let Ok(key) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return false;
    };
    let signed_content = format!(
        "{}.{}.",
        received.header("webhook-id"),
        received.header("webhook-timestamp")
    );
    mac.update(signed_content.as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    received
        .header("webhook-signature")
        .split(' ')
        .any(|candidate| candidate == expected)
}

async fn test_config(schedule: &[u64]) -> Result<(Config, PgPool), Error> {
    let (mut config, pool) = isolated_config().await?;
    paygate_testkit::allow_loopback(&mut config);
    let d = &mut config.dispatcher;
    d.retry_schedule = schedule.iter().copied().map(Duration::from_secs).collect();
    d.jitter_percent = 0;
    d.scheduler_poll = Duration::from_millis(50);
    d.request_timeout = Duration::from_millis(3_000);
    d.concurrency = 16;
    d.per_endpoint_concurrency = 1;
    config.database.max_connections = 8;
    Ok((config, pool))
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), paygate_callback_dispatcher::DispatcherError>>,
}

impl Running {
    async fn start(config: &Config) -> Result<Self, Error> {
        let (stop, task) = paygate_testkit::spawn_dispatcher(config)
            .await?
            .into_parts();
        Ok(Self { stop, task })
    }

    async fn stop(self) -> TestResult {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

/// A transaction committed and moved to `status` (terminal or unresolved), as the processors
/// would.
async fn completed_transaction(
    pool: &PgPool,
    merchant: MerchantId,
    callback_url: Option<String>,
    status: TransactionStatus,
) -> Result<Transaction, Error> {
    let tx = Transaction::create(
        NewTransaction {
            merchant_id: merchant,
            kind: TransactionKind::Deposit,
            money: Money::from_parts(1050, "USD")?,
            customer: CustomerReference::parse("cust_42")?,
            gateway: None,
            callback_url,
            metadata: serde_json::json!({"order": "A-1"}),
        },
        Utc::now(),
    );
    let announcement = OutboxMessage {
        topic: Topic::TransactionsPending,
        key: tx.id.to_string(),
        payload: b"pending".to_vec(),
        headers: Default::default(),
    };
    transactions::insert(pool, &tx, None, &announcement).await?;
    let done = match status {
        TransactionStatus::Failed => {
            let update = tx
                .advance(TransactionStatus::Failed, Utc::now())?
                .failure("declined", "The card was declined");
            transactions::apply_with_event(pool, &update, &announce::completed(&update.next)?)
                .await?
        }
        _ => {
            let submitting = transactions::apply(
                pool,
                &tx.advance(TransactionStatus::Submitting, Utc::now())?,
            )
            .await?
            .ok_or("submitting not applied")?;
            let update = match status {
                TransactionStatus::Unresolved => submitting
                    .advance(TransactionStatus::Unresolved, Utc::now())?
                    .pin_ambiguous(Utc::now())
                    .failure("outcome_unknown", "502 after the request was sent"),
                _ => submitting
                    .advance(TransactionStatus::Succeeded, Utc::now())?
                    .provider_reference("prov_1"),
            };
            transactions::apply_with_event(pool, &update, &announce::completed(&update.next)?)
                .await?
        }
    };
    Ok(done.ok_or("terminal update not applied")?)
}

/// Records `tx`'s event again, as the healer would: it must change nothing.
async fn record_again(pool: &PgPool, tx: &Transaction) -> TestResult {
    let again = webhooks::record_event(pool, &announce::completed(tx)?).await?;
    assert!(
        !again.created,
        "the event was recorded with the state change"
    );
    Ok(())
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("timed out waiting for: {what}").into())
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1)
}

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhook_verifies_independently_and_a_replayed_event_is_sent_once() -> TestResult {
    let (config, pool) = test_config(&[0, 1, 1]).await?;
    let receiver = Receiver::start(Behaviour::FailFirst(vec![])).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let endpoint = endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/endpoint", receiver.base),
        Some("main"),
    )
    .await?;
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(
        &pool,
        merchant,
        Some(format!("{}/callback", receiver.base)),
        TransactionStatus::Succeeded,
    )
    .await?;
    // The event is recorded again twice (replays): the merchant must be told once.
    record_again(&pool, &tx).await?;
    record_again(&pool, &tx).await?;

    eventually("both destinations told", WAIT, || async {
        receiver.received().len() >= 2
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(receiver.received().len(), 2, "one delivery per destination");
    assert_eq!(count(&pool, "SELECT count(*) FROM webhook_events").await, 1);

    let at_endpoint = receiver.on("/endpoint");
    let at_callback = receiver.on("/callback");
    assert_eq!((at_endpoint.len(), at_callback.len()), (1, 1));
    let hit = &at_endpoint[0];
    let payload = hit.json();
    let event_id = hit.header("webhook-id");
    assert!(event_id.starts_with("evt_"), "{event_id}");
    assert_eq!(payload["id"], event_id.as_str());
    assert_eq!(payload["type"], "transaction.succeeded");
    assert_eq!(payload["data"]["id"], tx.id.to_string());
    assert_eq!(payload["data"]["status"], "succeeded");
    assert_eq!(payload["data"]["amount"], 1050);
    assert_eq!(payload["data"]["currency"], "USD");
    assert_eq!(payload["data"]["metadata"]["order"], "A-1");
    assert_eq!(
        event_id,
        webhooks::event_id_for(tx.id, TransactionStatus::Succeeded).to_string()
    );
    assert_eq!(
        at_callback[0].header("webhook-id"),
        event_id,
        "one event, one id"
    );
    assert_eq!(hit.header("content-type"), "application/json");
    let ts: i64 = hit.header("webhook-timestamp").parse()?;
    assert!((Utc::now().timestamp() - ts).abs() < 60);

    // The endpoint's own secret signs the endpoint delivery…
    assert!(independently_verifies(
        endpoint.secret.expose(),
        hit,
        &hit.body
    ));
    // …a tampered body does not verify…
    let tampered = String::from_utf8(hit.body.to_vec())?.replace("1050", "9050");
    assert_ne!(tampered.as_bytes(), &hit.body[..]);
    assert!(!independently_verifies(
        endpoint.secret.expose(),
        hit,
        tampered.as_bytes()
    ));
    // …and the merchant's default secret signs the callback_url delivery.
    let default_secret =
        webhooks::merchant_default_secret(&pool, &keyring(&config)?, merchant).await?;
    assert!(independently_verifies(
        default_secret.expose(),
        &at_callback[0],
        &at_callback[0].body
    ));
    assert!(!independently_verifies(
        endpoint.secret.expose(),
        &at_callback[0],
        &at_callback[0].body
    ));

    let attempts = webhook_endpoints::list_attempts(&pool, tx.id, 100).await?;
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|a| a.attempt.status_code == Some(200)));
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_the_event_on_the_fourth_attempt() -> TestResult {
    let (config, pool) = test_config(&[0, 1, 1, 1]).await?;
    let receiver = Receiver::start(Behaviour::FailFirst(vec![500, 503, 500])).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let endpoint = endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/hook", receiver.base),
        None,
    )
    .await?;
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(&pool, merchant, None, TransactionStatus::Failed).await?;
    record_again(&pool, &tx).await?;

    eventually("four attempts", WAIT, || async {
        receiver.received().len() >= 4
    })
    .await?;
    let event = webhooks::event_id_for(tx.id, TransactionStatus::Failed);
    eventually("delivery succeeded", WAIT, || async {
        webhooks::deliveries_for_event(&pool, event)
            .await
            .map(|d| d.len() == 1 && d[0].state == DeliveryState::Succeeded)
            .unwrap_or(false)
    })
    .await?;

    let received = receiver.received();
    assert_eq!(received.len(), 4);
    for hit in &received {
        assert_eq!(
            hit.header("webhook-id"),
            event.to_string(),
            "same id every attempt"
        );
        assert_eq!(hit.body, received[0].body, "same body every attempt");
        assert!(independently_verifies(
            endpoint.secret.expose(),
            hit,
            &hit.body
        ));
    }
    assert_eq!(received[0].json()["type"], "transaction.failed");
    assert_eq!(received[0].json()["data"]["failure"]["code"], "declined");
    // The schedule (0, 1 s, 1 s, 1 s) spaces the attempts.
    for pair in received.windows(2) {
        assert!(pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(900));
    }

    let log = webhook_endpoints::list_attempts(&pool, tx.id, 100).await?;
    let numbers: Vec<i32> = log.iter().map(|a| a.attempt.attempt).collect();
    let statuses: Vec<Option<i32>> = log.iter().map(|a| a.attempt.status_code).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4]);
    assert_eq!(statuses, vec![Some(500), Some(503), Some(500), Some(200)]);
    assert!(log
        .iter()
        .all(|a| a.attempt.endpoint_id == Some(endpoint.id)));
    assert!(log.iter().all(|a| a.attempt.latency_ms.is_some()));
    assert_eq!(
        log[0].attempt.response_excerpt.as_deref(),
        Some("receiver says 500 to request 1")
    );
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_sealed_under_an_unknown_key_is_never_signed_with() -> TestResult {
    let (config, pool) = test_config(&[0, 1, 1]).await?;
    let receiver = Receiver::start(Behaviour::FailFirst(vec![])).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let good = endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/good", receiver.base),
        None,
    )
    .await?;
    // An endpoint whose secret is sealed under a key the dispatcher's keyring lacks (a key
    // removed before `paygate secrets rotate-key` finished, or a restored old backup).
    let lost_key = paygate_core::keyring::KeyId::parse("lost").ok_or("key id")?;
    let lost = paygate_core::keyring::Keyring::new(lost_key.clone(), [(lost_key, [3_u8; 32])])?;
    let orphan = webhook_endpoints::create(
        &pool,
        &lost,
        merchant,
        &format!("{}/orphan", receiver.base),
        None,
    )
    .await?;
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(&pool, merchant, None, TransactionStatus::Succeeded).await?;
    record_again(&pool, &tx).await?;

    eventually("the orphan's attempts failed", WAIT, || async {
        webhook_endpoints::list_attempts(&pool, tx.id, 100)
            .await
            .map(|log| {
                log.iter()
                    .filter(|a| a.attempt.endpoint_id == Some(orphan.id))
                    .count()
                    >= 2
            })
            .unwrap_or(false)
    })
    .await?;
    // The other endpoint got its signed webhook; the orphan's URL was never called.
    assert_eq!(receiver.on("/good").len(), 1);
    assert!(independently_verifies(
        good.secret.expose(),
        &receiver.on("/good")[0],
        &receiver.on("/good")[0].body
    ));
    assert!(
        receiver.on("/orphan").is_empty(),
        "nothing sent unsigned or signed with garbage"
    );
    let log = webhook_endpoints::list_attempts(&pool, tx.id, 100).await?;
    for attempt in log
        .iter()
        .filter(|a| a.attempt.endpoint_id == Some(orphan.id))
    {
        let error = attempt.attempt.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("signing secret unreadable") && error.contains("\"lost\""),
            "{error}"
        );
        assert_eq!(attempt.attempt.status_code, None);
    }
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint() -> TestResult {
    let (config, pool) = test_config(&[0, 1, 1, 1]).await?;
    let receiver = Receiver::start(Behaviour::Always(410)).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let endpoint = endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/hook", receiver.base),
        None,
    )
    .await?;
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(&pool, merchant, None, TransactionStatus::Succeeded).await?;
    record_again(&pool, &tx).await?;

    let keys = keyring(&config)?;
    eventually("endpoint disabled", WAIT, || async {
        webhook_endpoints::get_for_merchant(&pool, &keys, merchant, endpoint.id)
            .await
            .ok()
            .flatten()
            .is_some_and(|e| !e.enabled())
    })
    .await?;
    assert_eq!(
        webhook_endpoints::endpoint_disabled_reason(&pool, endpoint.id)
            .await?
            .as_deref(),
        Some("gone")
    );
    let event = webhooks::event_id_for(tx.id, TransactionStatus::Succeeded);
    let deliveries = webhooks::deliveries_for_event(&pool, event).await?;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].state, DeliveryState::Disabled);
    assert_eq!(deliveries[0].last_status_code, Some(410));

    // Nothing more goes to it: not a retry, not the next event.
    let next = completed_transaction(&pool, merchant, None, TransactionStatus::Succeeded).await?;
    record_again(&pool, &next).await?;
    eventually("second event recorded", WAIT, || async {
        count(&pool, "SELECT count(*) FROM webhook_events").await == 2
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(receiver.received().len(), 1, "a 410 is not retried");
    assert_eq!(
        webhook_endpoints::list_attempts(&pool, tx.id, 100)
            .await?
            .len(),
        1
    );
    assert!(webhook_endpoints::list_attempts(&pool, next.id, 100)
        .await?
        .is_empty());
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_delay_another_endpoint() -> TestResult {
    let (config, pool) = test_config(&[0, 60]).await?;
    let timeout = config.dispatcher.request_timeout;
    let slow = Receiver::start(Behaviour::Hang).await?;
    let fast = Receiver::start(Behaviour::FailFirst(vec![])).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let slow_endpoint = endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/slow", slow.base),
        None,
    )
    .await?;
    endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/fast", fast.base),
        None,
    )
    .await?;
    let dispatcher = Running::start(&config).await?;
    let mut txs = Vec::new();
    for _ in 0..3 {
        let tx = completed_transaction(&pool, merchant, None, TransactionStatus::Succeeded).await?;
        record_again(&pool, &tx).await?;
        txs.push(tx);
    }

    eventually("fast endpoint told of all three", WAIT, || async {
        fast.received().len() >= 3
    })
    .await?;
    eventually("slow endpoint reached", WAIT, || async {
        !slow.received().is_empty()
    })
    .await?;
    let slow_first = slow.received()[0].at;
    let fast_last = fast
        .received()
        .iter()
        .map(|r| r.at)
        .max()
        .ok_or("no fast request")?;
    assert!(
        fast_last < slow_first + timeout,
        "the fast endpoint waited for the hanging one ({:?} after it started)",
        fast_last.saturating_duration_since(slow_first)
    );
    // The bulkhead: one attempt at a time to the hanging endpoint.
    assert_eq!(slow.received().len(), 1);

    // The hanging attempt ends at the timeout and is logged as such.
    eventually("slow attempt timed out", WAIT, || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM delivery_attempts WHERE endpoint_id = $1 AND error LIKE 'timed out%'",
        )
        .bind(slow_endpoint.id.as_uuid())
        .fetch_one(&pool)
        .await
        .map(|n| n >= 1)
        .unwrap_or(false)
    })
    .await?;
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_pending_when_the_dispatcher_stops_is_delivered_after_restart() -> TestResult {
    let (config, pool) = test_config(&[0, 3]).await?;
    let receiver = Receiver::start(Behaviour::FailFirst(vec![500])).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/hook", receiver.base),
        None,
    )
    .await?;
    let first = Running::start(&config).await?;
    let tx = completed_transaction(&pool, merchant, None, TransactionStatus::Succeeded).await?;
    record_again(&pool, &tx).await?;
    let event = webhooks::event_id_for(tx.id, TransactionStatus::Succeeded);

    eventually("first attempt logged", WAIT, || async {
        webhook_endpoints::list_attempts(&pool, tx.id, 10)
            .await
            .map(|a| a.len() == 1)
            .unwrap_or(false)
    })
    .await?;
    first.stop().await?;
    let pending = webhooks::deliveries_for_event(&pool, event).await?;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].state, DeliveryState::Pending);
    assert!(pending[0].next_attempt_at > Utc::now());

    // The retry falls due while no dispatcher runs.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(receiver.received().len(), 1);

    let second = Running::start(&config).await?;
    eventually("delivered after restart", WAIT, || async {
        webhooks::deliveries_for_event(&pool, event)
            .await
            .map(|d| d.len() == 1 && d[0].state == DeliveryState::Succeeded)
            .unwrap_or(false)
    })
    .await?;
    assert_eq!(receiver.received().len(), 2);
    let log = webhook_endpoints::list_attempts(&pool, tx.id, 10).await?;
    let statuses: Vec<Option<i32>> = log.iter().map(|a| a.attempt.status_code).collect();
    assert_eq!(statuses, vec![Some(500), Some(200)]);
    assert_eq!(count(&pool, "SELECT count(*) FROM webhook_events").await, 1);
    second.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_destinations_are_refused_before_connecting() -> TestResult {
    let (mut config, pool) = test_config(&[0, 1, 1]).await?;
    config.destinations.allow_loopback = false;
    let receiver = Receiver::start(Behaviour::FailFirst(vec![])).await?;
    let port = receiver.port;

    // The guard on its own, as the API calls it at registration.
    let strict = DestinationPolicy::STRICT;
    let no_loopback = DestinationPolicy::from_config(&config.destinations);
    for url in [
        format!("https://127.0.0.1:{port}/hook"),
        "https://10.0.0.1/hook".to_owned(),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        format!("https://localhost:{port}/hook"),
        "https://[fd00:ec2::254]/latest".to_owned(),
    ] {
        for policy in [strict, no_loopback] {
            let verdict = check_destination(&url, policy).await;
            assert!(
                matches!(verdict, Err(Refused::Forbidden { .. })),
                "{url}: {verdict:?}"
            );
        }
    }
    assert!(matches!(
        check_destination(&format!("http://127.0.0.1:{port}/"), strict).await,
        Err(Refused::Scheme(_))
    ));
    let dev = DestinationPolicy {
        allow_loopback: true,
        allow_http: true,
        ..DestinationPolicy::STRICT
    };
    assert!(check_destination(&format!("http://localhost:{port}/"), dev)
        .await
        .is_ok());
    assert!(check_destination("http://10.0.0.1/", dev).await.is_err());

    // And at delivery: nothing reaches the receiver; every refusal is in the attempt log.
    let merchant = merchants::create(&pool, "shop").await?.id;
    for url in [
        format!("http://localhost:{port}/by-name"),
        format!("http://127.0.0.1:{port}/by-ip"),
        "http://10.0.0.1/private".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        webhook_endpoints::create(&pool, &keyring(&config)?, merchant, &url, None).await?;
    }
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(
        &pool,
        merchant,
        Some(format!("http://[::ffff:127.0.0.1]:{port}/mapped")),
        TransactionStatus::Succeeded,
    )
    .await?;
    record_again(&pool, &tx).await?;
    let event = webhooks::event_id_for(tx.id, TransactionStatus::Succeeded);
    eventually("all five deliveries failed", WAIT, || async {
        webhooks::deliveries_for_event(&pool, event)
            .await
            .map(|d| d.len() == 5 && d.iter().all(|d| d.state == DeliveryState::Failed))
            .unwrap_or(false)
    })
    .await?;
    let log = webhook_endpoints::list_attempts(&pool, tx.id, 100).await?;
    assert_eq!(log.len(), 5, "one attempt each, not retried");
    for attempt in &log {
        assert_eq!(attempt.attempt.status_code, None);
        let error = attempt.attempt.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("refused by the destination policy"),
            "{error}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.received().is_empty(),
        "the guard must refuse before connecting"
    );
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_reaches_current_destinations_signed_with_both_secrets_while_rotating(
) -> TestResult {
    let (config, pool) = test_config(&[0, 1, 1]).await?;
    let receiver = Receiver::start(Behaviour::FailFirst(vec![])).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let other = merchants::create(&pool, "other").await?.id;
    let endpoint = endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/hook", receiver.base),
        None,
    )
    .await?;
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(&pool, merchant, None, TransactionStatus::Succeeded).await?;
    record_again(&pool, &tx).await?;
    eventually("first delivery", WAIT, || async {
        receiver.received().len() == 1
    })
    .await?;
    let event = webhooks::event_id_for(tx.id, TransactionStatus::Succeeded);

    let rotated = webhooks::rotate_endpoint_secret(
        &pool,
        &keyring(&config)?,
        merchant,
        endpoint.id,
        Duration::from_secs(3_600),
    )
    .await?
    .ok_or("endpoint not rotated")?;
    assert!(webhooks::redeliver(&pool, other, event).await?.is_none());
    let replay = webhooks::redeliver(&pool, merchant, event)
        .await?
        .ok_or("event not found")?;
    assert_eq!((replay.generation, replay.deliveries), (1, 1));

    eventually("redelivered", WAIT, || async {
        receiver.received().len() == 2
    })
    .await?;
    let received = receiver.received();
    let again = &received[1];
    assert_eq!(again.header("webhook-id"), event.to_string());
    assert_eq!(
        again.body, received[0].body,
        "a replay sends the same event"
    );
    assert_eq!(again.header("webhook-signature").split(' ').count(), 2);
    assert!(independently_verifies(rotated.expose(), again, &again.body));
    assert!(independently_verifies(
        endpoint.secret.expose(),
        again,
        &again.body
    ));

    eventually("both generations succeeded", WAIT, || async {
        webhooks::deliveries_for_event(&pool, event)
            .await
            .map(|d| {
                d.iter().map(|d| d.generation).collect::<Vec<_>>() == vec![0, 1]
                    && d.iter().all(|d| d.state == DeliveryState::Succeeded)
            })
            .unwrap_or(false)
    })
    .await?;
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_too_long_is_disabled() -> TestResult {
    let (mut config, pool) = test_config(&[0, 1, 1, 1, 1, 1]).await?;
    config.dispatcher.disable_after_failing = Duration::from_secs(1);
    let receiver = Receiver::start(Behaviour::Always(500)).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let endpoint = endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/hook", receiver.base),
        None,
    )
    .await?;
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(&pool, merchant, None, TransactionStatus::Succeeded).await?;
    record_again(&pool, &tx).await?;

    eventually("endpoint disabled", WAIT, || async {
        webhook_endpoints::endpoint_disabled_reason(&pool, endpoint.id)
            .await
            .ok()
            .flatten()
            .as_deref()
            == Some("failing")
    })
    .await?;
    // Failing since attempt 1; attempt 2, a second later, finds it failing for 1 s.
    let attempts = webhook_endpoints::list_attempts(&pool, tx.id, 100)
        .await?
        .len();
    assert_eq!(attempts, 2);
    let event = webhooks::event_id_for(tx.id, TransactionStatus::Succeeded);
    let deliveries = webhooks::deliveries_for_event(&pool, event).await?;
    assert_eq!(deliveries[0].state, DeliveryState::Disabled);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(receiver.received().len(), 2, "no attempt after disabling");
    dispatcher.stop().await
}

/// A payment whose outcome is unknown: the merchant is told once (`transaction.unresolved`,
/// do not re-issue); once it is settled, a replayed "unresolved" announcement tells nothing
/// more, and the settled outcome is its own event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_payment_is_told_once_and_its_settlement_follows() -> TestResult {
    let (config, pool) = test_config(&[0, 1, 1]).await?;
    let receiver = Receiver::start(Behaviour::FailFirst(vec![])).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(
        &pool,
        merchant,
        Some(format!("{}/callback", receiver.base)),
        TransactionStatus::Unresolved,
    )
    .await?;
    record_again(&pool, &tx).await?;
    eventually("the unresolved event delivered", WAIT, || async {
        !receiver.received().is_empty()
    })
    .await?;
    let told = receiver.received();
    let payload = told[0].json();
    assert_eq!(payload["type"], "transaction.unresolved");
    assert_eq!(payload["data"]["status"], "unresolved");
    assert_eq!(
        told[0].header("webhook-id"),
        webhooks::event_id_for(tx.id, TransactionStatus::Unresolved).to_string()
    );

    // The provider's answer settles it; the old event is recorded again afterwards.
    let update = tx
        .advance(TransactionStatus::Succeeded, Utc::now())?
        .clear_failure();
    let settled =
        transactions::apply_with_event(&pool, &update, &announce::completed(&update.next)?)
            .await?
            .ok_or("settlement not applied")?;
    record_again(&pool, &tx).await?;
    record_again(&pool, &settled).await?;
    eventually("the settlement delivered", WAIT, || async {
        receiver.received().len() >= 2
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let all = receiver.received();
    let types: Vec<String> = all
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        types,
        vec!["transaction.unresolved", "transaction.succeeded"]
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM webhook_events").await, 2);
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_succeeded_refund_is_recorded_and_delivered_as_refund_succeeded() -> TestResult {
    use paygate_core::db::refunds::{self, RefundInsert};
    use paygate_core::domain::{NewRefund, RefundId, RefundState};

    let (config, pool) = test_config(&[0, 1, 1]).await?;
    let receiver = Receiver::start(Behaviour::FailFirst(vec![])).await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    endpoint(
        &config,
        &pool,
        merchant,
        &format!("{}/endpoint", receiver.base),
        None,
    )
    .await?;
    let dispatcher = Running::start(&config).await?;
    let tx = completed_transaction(&pool, merchant, None, TransactionStatus::Succeeded).await?;
    let inserted = refunds::insert(
        &pool,
        &NewRefund {
            transaction_id: tx.id,
            merchant_id: merchant,
            amount: Some(50),
            reason: Some("broken".into()),
        },
        RefundId::new(),
        Utc::now(),
        None,
        |r| paygate_core::announce::refund_pending(r, None),
        |_| {
            Err(paygate_core::db::DbError::Corrupt {
                table: "refunds",
                detail: "no key".into(),
            })
        },
    )
    .await?;
    let RefundInsert::Created(refund) = inserted else {
        return Err(format!("not created: {inserted:?}").into());
    };
    let update = refund.transition(RefundState::Succeeded, Utc::now())?;
    let event = announce::refund_completed(&update.next, None)?;
    refunds::apply_with_event(&pool, &update, Some(&event))
        .await?
        .ok_or("not applied")?;
    // Recorded again (a replay): one event, one delivery.
    assert!(!webhooks::record_event(&pool, &event).await?.created);
    // The payment's own `transaction.succeeded` went to the endpoint too, before.
    let refund_hits = || {
        receiver
            .on("/endpoint")
            .into_iter()
            .filter(|r| r.json()["type"] == "refund.succeeded")
            .collect::<Vec<_>>()
    };
    eventually("the endpoint told", WAIT, || async {
        !refund_hits().is_empty()
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let hits = refund_hits();
    assert_eq!(hits.len(), 1);
    let payload = hits[0].json();
    let event_id = webhooks::event_id_for_refund(refund.id, RefundState::Succeeded).to_string();
    assert_eq!(hits[0].header("webhook-id"), event_id);
    assert_eq!(payload["type"], "refund.succeeded");
    assert_eq!(payload["id"], event_id.as_str());
    assert_eq!(payload["data"]["object"], "refund");
    assert_eq!(payload["data"]["id"], refund.id.to_string());
    assert_eq!(payload["data"]["transaction"], tx.id.to_string());
    assert_eq!(payload["data"]["amount"], 50);
    assert_eq!(payload["data"]["status"], "succeeded");
    assert_eq!(payload["data"]["reason"], "broken");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM webhook_events WHERE event_type = 'refund.succeeded'"
        )
        .await,
        1
    );
    dispatcher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_with_many_hanging_endpoints_cannot_take_every_worker() -> TestResult {
    let (mut config, pool) = test_config(&[0, 60]).await?;
    config.dispatcher.concurrency = 4;
    config.dispatcher.per_endpoint_concurrency = 2;
    config.dispatcher.per_merchant_concurrency = 2;
    let timeout = config.dispatcher.request_timeout;
    let hanging = Receiver::start(Behaviour::Hang).await?;
    let fast = Receiver::start(Behaviour::FailFirst(vec![])).await?;
    let greedy = merchants::create(&pool, "four slow endpoints").await?.id;
    let other = merchants::create(&pool, "one fast endpoint").await?.id;
    let keyring = keyring(&config)?;
    for n in 0..4 {
        let url = format!("{}/slow-{n}", hanging.base);
        webhook_endpoints::create(&pool, &keyring, greedy, &url, None).await?;
    }
    let url = format!("{}/fast", fast.base);
    webhook_endpoints::create(&pool, &keyring, other, &url, None).await?;
    let dispatcher = Running::start(&config).await?;
    // The greedy merchant's deliveries are recorded (and due) first.
    for _ in 0..3 {
        let tx = completed_transaction(&pool, greedy, None, TransactionStatus::Succeeded).await?;
        record_again(&pool, &tx).await?;
    }
    eventually(
        "the greedy merchant's 12 deliveries recorded",
        WAIT,
        || async { count(&pool, "SELECT count(*) FROM webhook_deliveries").await >= 12 },
    )
    .await?;
    eventually("the hanging endpoints reached", WAIT, || async {
        !hanging.received().is_empty()
    })
    .await?;
    let first_hang = hanging.received()[0].at;
    let tx = completed_transaction(&pool, other, None, TransactionStatus::Succeeded).await?;
    record_again(&pool, &tx).await?;

    eventually("the other merchant's webhook delivered", WAIT, || async {
        !fast.received().is_empty()
    })
    .await?;
    let delivered = fast.received()[0].at;
    assert!(
        delivered < first_hang + timeout,
        "the other merchant waited for the greedy one's timeouts ({:?} after they began)",
        delivered.saturating_duration_since(first_hang)
    );
    // The greedy merchant held at most its share while the other one was served.
    let held = hanging
        .received()
        .iter()
        .filter(|r| r.at <= delivered)
        .count();
    assert!(
        held <= 2,
        "{held} attempts to the hanging endpoints at once"
    );
    dispatcher.stop().await
}
