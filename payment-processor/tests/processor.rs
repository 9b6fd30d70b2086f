//! The payment processor against real Postgres, Redis and tansu, calling the sandbox
//! providers over HTTP through the real JSON, SOAP and protobuf connectors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paygate_core::bus::events::{Body, Envelope};
use paygate_core::bus::{
    ConsumerRunner, ConsumerSettings, Delivery, Handler, HandlerError, Producer, Topic,
};
use paygate_core::domain::{GatewayName, TransactionKind, TransactionStatus};
use paygate_sandbox::Knobs;
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod common;
use common::{account, BoxError, TestResult, World};

const JSON: &str = "pp-json";
const SOAP: &str = "pp-soap";
const PROTO: &str = "pp-proto";

/// A fresh world with three gateways on the sandbox (callbacks off: the processor's job ends
/// at `submitted`), a provider that hangs when told to, and processor settings quick enough
/// for tests.
async fn world(breaker: serde_json::Value) -> Result<World, BoxError> {
    let knobs = Knobs {
        hang_ms: 3_000,
        ..Knobs::default()
    };
    let gateways = [
        (JSON, "sandbox-json"),
        (SOAP, "sandbox-soap"),
        (PROTO, "sandbox-proto"),
    ];
    // A short settle window: the sandbox's status endpoint does not lag unless told to.
    let settings = json!({"timeout_ms": 800, "breaker": breaker, "status_not_found_after_ms": 300});
    let mut w = World::new("Processor tests", knobs, &gateways, settings).await?;
    let config = &mut w.config;
    let p = &mut config.processor;
    p.concurrency = 8;
    p.lock_ttl = Duration::from_millis(3_000);
    p.lock_wait = Duration::from_millis(1_000);
    p.retry_base = Duration::from_millis(100);
    p.retry_cap = Duration::from_millis(400);
    p.max_attempts = 5;
    p.breaker_deferral = Duration::from_millis(300);
    p.scheduler_poll = Duration::from_millis(100);
    p.stuck_after = Duration::from_secs(300);
    p.status_check_min = Duration::from_millis(100);
    p.status_check_max = Duration::from_millis(400);
    config.outbox.poll = Duration::from_millis(50);
    Ok(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_and_withdrawals_are_submitted_on_every_connector() -> TestResult {
    let w = world(json!({})).await?;
    let (stop, task) = w.start().await?;
    let mut ids = Vec::new();
    for gateway in [JSON, SOAP, PROTO] {
        for kind in TransactionKind::ALL {
            ids.push((gateway, w.insert(kind, gateway, 1050).await?.id));
        }
    }
    for (gateway, id) in &ids {
        let tx = w
            .wait(*id, "submitted", |t| {
                t.status == TransactionStatus::Submitted
            })
            .await?;
        assert_eq!(tx.attempts, 1, "{gateway}");
        assert_eq!(
            tx.routed_gateway.as_ref().map(GatewayName::as_str),
            Some(*gateway)
        );
        assert!(
            tx.provider_reference.is_some(),
            "{gateway}: provider reference recorded"
        );
        assert_eq!(tx.failure, None);
    }
    let stats = w.stats().await?;
    for gateway in [JSON, SOAP, PROTO] {
        assert_eq!(
            account(&stats, gateway).executions,
            2,
            "{gateway}: one deposit and one withdrawal executed"
        );
        assert_eq!(account(&stats, gateway).duplicates_suppressed, 0);
    }
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_then_success_takes_two_attempts_and_executes_once() -> TestResult {
    let w = world(json!({})).await?;
    w.knobs(JSON, json!({"callbacks_enabled": false, "error_rate": 1.0}))
        .await?;
    let (stop, task) = w.start().await?;
    let id = w.insert(TransactionKind::Deposit, JSON, 700).await?.id;
    let first = w
        .wait(id, "a scheduled retry", |t| {
            t.status == TransactionStatus::RetryScheduled
        })
        .await?;
    assert_eq!(first.attempts, 1);
    // A 5xx may come from a proxy after the provider committed: ambiguous, pinned to the
    // gateway, and the next step is a status query there.
    assert_eq!(
        first.failure.as_ref().map(|f| f.code.as_str()),
        Some("ambiguous")
    );
    assert!(first.ambiguous_since.is_some());
    w.knobs(JSON, json!({"error_rate": 0.0})).await?;
    let tx = w
        .wait(id, "submitted", |t| {
            t.status == TransactionStatus::Submitted
        })
        .await?;
    assert_eq!(tx.attempts, 2);
    let stats = account(&w.stats().await?, JSON);
    assert_eq!(stats.executions, 1);
    assert!(stats.errors_injected >= 1);
    stop.cancel();
    task.await?;
    Ok(())
}

/// The provider executes, then the response is lost (our client times out): the attempt is
/// ambiguous, the provider is asked before anything is resent, it says it has the payment,
/// and the money moved once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executed_payment_whose_response_was_lost_is_not_executed_again() -> TestResult {
    let w = world(json!({})).await?;
    for gateway in [JSON, SOAP, PROTO] {
        w.knobs(
            gateway,
            json!({"callbacks_enabled": false, "lost_response_rate": 1.0, "hang_ms": 2_000}),
        )
        .await?;
    }
    let (stop, task) = w.start().await?;
    let mut ids = Vec::new();
    for gateway in [JSON, SOAP, PROTO] {
        ids.push((
            gateway,
            w.insert(TransactionKind::Withdrawal, gateway, 900)
                .await?
                .id,
        ));
    }
    for (gateway, id) in &ids {
        // The first attempt's answer is lost, so it ends ambiguous with a retry scheduled.
        // That retry asks the provider first and may find the payment executing before this
        // loop gets to it (the gateways are looked at in turn), so the first attempt's end
        // is read from the payment's history, not from the row's current state.
        w.wait(*id, "the first attempt's end", |t| {
            t.attempts >= 1
                && matches!(
                    t.status,
                    TransactionStatus::RetryScheduled | TransactionStatus::Submitted
                )
        })
        .await?;
        let history = paygate_core::db::history::for_transaction(&w.pool, *id).await?;
        let retry = history
            .iter()
            .find(|h| h.to_status == TransactionStatus::RetryScheduled);
        assert_eq!(
            retry.and_then(|h| h.failure_code.as_deref()),
            Some("ambiguous"),
            "{gateway}: {history:?}"
        );
        w.knobs(gateway, json!({"lost_response_rate": 0.0})).await?;
    }
    for (gateway, id) in &ids {
        let tx = w
            .wait(*id, "submitted", |t| {
                t.status == TransactionStatus::Submitted
            })
            .await?;
        // The status query found it executing: no second request was needed.
        assert_eq!(tx.attempts, 1, "{gateway}");
        let stats = account(&w.stats().await?, gateway);
        assert_eq!(stats.executions, 1, "{gateway}: executed exactly once");
        assert!(
            stats.status_queries >= 1,
            "{gateway}: the provider was asked before anything was resent"
        );
    }
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_and_every_transaction_completes_after_it() -> TestResult {
    const MIN_REQUESTS: u64 = 3;
    const SLEEP_WINDOW_MS: u64 = 1_000;
    let w = world(
        json!({"min_requests": MIN_REQUESTS, "error_threshold_percent": 50,
        "sleep_window_ms": SLEEP_WINDOW_MS, "window_ms": 20_000}),
    )
    .await?;
    let mut w = w;
    w.config.processor.concurrency = 2;
    w.config.processor.max_attempts = 50;
    w.knobs(PROTO, json!({"callbacks_enabled": false, "outage": true}))
        .await?;
    let (stop, task) = w.start().await?;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(w.insert(TransactionKind::Deposit, PROTO, 100 + i).await?.id);
    }
    // The outage starts counting at the first call (the consumer's group join comes first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while account(&w.stats().await?, PROTO).outage_rejections == 0 {
        if tokio::time::Instant::now() > deadline {
            return Err("no call reached the provider within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let during = account(&w.stats().await?, PROTO);
    let outage_ms = started.elapsed().as_millis() as u64;
    w.knobs(PROTO, json!({"outage": false})).await?;

    // Calls reaching the provider during the outage: the ones that opened the breaker (up to
    // the volume threshold, plus those already in flight) and one probe per sleep window.
    // A 503 is ambiguous, so after the first ones the processor asks for their status:
    // status queries go through the same breaker and count as calls.
    let probes = outage_ms / SLEEP_WINDOW_MS + 1;
    let bound = MIN_REQUESTS + 2 + probes;
    let calls = during.outage_rejections + during.status_queries;
    assert!(
        calls <= bound,
        "{calls} calls hit the provider during the outage (bound {bound})"
    );
    assert!(
        calls >= MIN_REQUESTS,
        "the breaker needs {MIN_REQUESTS} failures to open: {during:?}"
    );
    assert_eq!(during.executions, 0);

    for id in &ids {
        w.wait(*id, "submitted after the outage", |t| {
            t.status == TransactionStatus::Submitted
        })
        .await?;
    }
    assert_eq!(account(&w.stats().await?, PROTO).executions, 10);
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_decline_fails_at_once_without_retry_and_is_announced() -> TestResult {
    let w = world(json!({})).await?;
    for gateway in [JSON, SOAP, PROTO] {
        w.knobs(
            gateway,
            json!({"callbacks_enabled": false, "decline_rate": 1.0}),
        )
        .await?;
    }
    let (stop, task) = w.start().await?;
    let mut ids = Vec::new();
    for gateway in [JSON, SOAP, PROTO] {
        ids.push((
            gateway,
            w.insert(TransactionKind::Deposit, gateway, 5_000).await?.id,
        ));
    }
    let mut failures = Vec::new();
    for (gateway, id) in &ids {
        let tx = w
            .wait(*id, "failed", |t| t.status == TransactionStatus::Failed)
            .await?;
        assert_eq!(tx.attempts, 1, "{gateway}: no retry after a decline");
        let failure = tx
            .failure
            .ok_or(format!("{gateway}: no failure recorded"))?;
        failures.push((*gateway, *id, failure.code));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = w.stats().await?;
    for gateway in [JSON, SOAP, PROTO] {
        assert_eq!(
            account(&stats, gateway).requests,
            1,
            "{gateway}: one call, no retry"
        );
    }
    // Each failure is told once, with the reason recorded on the transaction.
    for (gateway, id, code) in &failures {
        let told = w.told(*id).await?;
        let seen: Vec<(&str, Option<&str>)> = told
            .iter()
            .map(|t| (t.status.as_str(), t.failure_code.as_deref()))
            .collect();
        assert_eq!(seen, vec![("failed", Some(code.as_str()))], "{gateway}");
    }
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE merchant_id = $1")
            .bind(w.merchant.as_uuid())
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(events, 3, "each failure announced once, nothing else");
    let retired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'transactions.completed'")
            .fetch_one(&w.pool)
            .await?;
    assert_eq!(retired, 0, "no transactions.completed outbox rows");
    stop.cancel();
    task.await?;
    Ok(())
}

/// The processor dies mid-batch (no clean shutdown: no final commit, locks left to expire,
/// provider calls cut off). A new one finishes the work; nothing executes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_batch_leaves_no_transaction_behind_and_none_executed_twice(
) -> TestResult {
    let mut w = world(json!({})).await?;
    w.config.processor.stuck_after = Duration::from_secs(1);
    w.knobs(
        JSON,
        json!({"callbacks_enabled": false, "latency_min_ms": 200, "latency_max_ms": 600}),
    )
    .await?;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            w.insert(TransactionKind::Deposit, JSON, 1_000 + i)
                .await?
                .id,
        );
    }
    let (_stop, task) = w.start().await?;
    // Let it get some way in, then kill it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let submitted = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM transactions WHERE status = 'submitted'",
        )
        .fetch_one(&w.pool)
        .await?;
        if submitted >= 3 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    let at_kill: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM transactions GROUP BY status")
            .fetch_all(&w.pool)
            .await?;
    eprintln!("state when killed: {at_kill:?}");

    // A killed consumer does not leave its group; restart only after the broker has evicted it
    // (session timeout 10 s). tansu 0.6.0 sometimes gives a member that joins while the dead
    // one is still listed no partitions and never rebalances, which strands pending messages
    // (reproduced in e2e/tests/topology.rs, ignored there); Kafka rebalances when the dead
    // member expires.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (stop, task) = w.start().await?;
    for id in &ids {
        w.wait(*id, "submitted or terminal", |t| {
            matches!(
                t.status,
                TransactionStatus::Submitted
                    | TransactionStatus::Succeeded
                    | TransactionStatus::Failed
            )
        })
        .await?;
    }
    let stats = account(&w.stats().await?, JSON);
    assert_eq!(
        stats.executions, 20,
        "every transaction executed exactly once"
    );
    stop.cancel();
    task.await?;
    Ok(())
}

/// Records what a consumer sees on a topic.
#[derive(Default)]
struct Seen(Mutex<Vec<Vec<u8>>>);

#[async_trait]
impl Handler for Seen {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        self.0
            .lock()
            .map_err(|e| HandlerError::Retry(e.to_string()))?
            .push(d.payload.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_lands_in_the_dlq_and_the_next_message_is_processed() -> TestResult {
    let w = world(json!({})).await?;
    let (stop, task) = w.start().await?;
    let producer = Producer::new(&w.config.kafka)?;
    let poison = b"\x08\x96\x01 definitely not an envelope".to_vec();
    producer
        .send(
            Topic::TransactionsPending,
            "poison-key",
            &poison,
            &BTreeMap::new(),
        )
        .await?;
    let id = w.insert(TransactionKind::Deposit, JSON, 1_234).await?.id;
    w.wait(id, "submitted", |t| {
        t.status == TransactionStatus::Submitted
    })
    .await?;

    let seen = Arc::new(Seen::default());
    let reader = ConsumerRunner::new(
        &w.config.kafka,
        ConsumerSettings::new(
            format!("{}.dlq-check", w.config.kafka.group_prefix),
            vec![Topic::Dlq],
        ),
        seen.clone(),
        producer,
    )?;
    let stop_reader = CancellationToken::new();
    let reader_task = tokio::spawn(reader.run(stop_reader.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let letter = loop {
        let first = seen
            .0
            .lock()
            .map(|s| s.first().cloned())
            .unwrap_or_default();
        if let Some(bytes) = first {
            break Envelope::decode_checked(&bytes)?;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("no dead letter".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop_reader.cancel();
    reader_task.await??;
    let Some(Body::DeadLetter(letter)) = letter.body else {
        return Err("not a dead letter".into());
    };
    assert_eq!(letter.payload, poison, "the original bytes are kept");
    assert_eq!(letter.key, b"poison-key");
    assert!(letter.reason.contains("undecodable"), "{}", letter.reason);
    stop.cancel();
    task.await?;
    Ok(())
}

/// Guarantee 5: a retry waiting when the processor stops lives in Postgres; a new
/// processor picks it up. No in-memory timer is the only record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_scheduled_before_a_restart_is_carried_out_after_it() -> TestResult {
    let mut w = world(json!({})).await?;
    w.config.processor.retry_base = Duration::from_millis(1_500);
    w.config.processor.retry_cap = Duration::from_millis(1_500);
    w.knobs(SOAP, json!({"callbacks_enabled": false, "error_rate": 1.0}))
        .await?;
    let (stop, task) = w.start().await?;
    let id = w.insert(TransactionKind::Withdrawal, SOAP, 4_200).await?.id;
    let waiting = w
        .wait(id, "a scheduled retry", |t| {
            t.status == TransactionStatus::RetryScheduled
        })
        .await?;
    assert!(waiting.next_attempt_at.is_some());
    stop.cancel();
    task.await?;

    w.knobs(SOAP, json!({"error_rate": 0.0})).await?;
    let (stop, task) = w.start().await?;
    let tx = w
        .wait(id, "submitted after the restart", |t| {
            t.status == TransactionStatus::Submitted
        })
        .await?;
    assert_eq!(tx.attempts, 2);
    assert_eq!(account(&w.stats().await?, SOAP).executions, 1);
    stop.cancel();
    task.await?;
    Ok(())
}

/// A gateway whose callbacks may be lost (while paygate's API is down, say) can be asked
/// sooner than the processor-wide `stuck_after_secs`: its own `reconcile_after_ms` drives the
/// status query, and a gateway without one is left to the global bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_its_own_reconcile_bound_is_asked_sooner() -> TestResult {
    let mut w = world(json!({})).await?;
    w.config.processor.stuck_after = Duration::from_secs(300);
    if let Some(table) = w.config.gateways.get_mut(JSON) {
        table.reconcile_after = Some(Duration::from_millis(500));
    }
    let (stop, task) = w.start().await?;
    let soon = w.insert(TransactionKind::Deposit, JSON, 1_100).await?.id;
    let later = w.insert(TransactionKind::Deposit, PROTO, 1_200).await?.id;
    for id in [soon, later] {
        w.wait(id, "submitted", |t| {
            t.status == TransactionStatus::Submitted
        })
        .await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while account(&w.stats().await?, JSON).status_queries == 0 {
        if tokio::time::Instant::now() > deadline {
            return Err("the gateway with reconcile_after_ms = 500 was never asked".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        account(&w.stats().await?, PROTO).status_queries,
        0,
        "a gateway without its own bound waits for stuck_after_secs (300 s)"
    );
    stop.cancel();
    task.await?;
    Ok(())
}
