//! Money safety (issue 12): the payment processor against real Postgres, Redis and tansu
//! and the sandbox over HTTP, one test per way a payment could be paid twice or reported
//! wrongly. Each ends with the same three checks:
//!
//! 1. executed at most once over all gateways (the sandbox's references report, and its
//!    `executed_elsewhere` counter stays 0);
//! 2. our final state is what the provider decided (the report's `decided` outcome);
//! 3. the merchant was told the truth: the webhook events recorded with each state change
//!    (`webhook_events`, what the dispatcher delivers) announce exactly that, in order, and
//!    never `failed` for a payment a provider executed.
//!
//! The sandbox's callbacks are pointed at a closed port: a callback only marks the
//! provider's record final (so its status query reports the outcome), and the processor
//! learns outcomes by asking, which is what these tests are about.

use std::time::Duration;

use paygate_core::domain::{
    GatewayName, Transaction, TransactionId, TransactionKind, TransactionStatus,
};
use paygate_payment_processor::attempt::codes;
use paygate_sandbox::references::{ExecutionReport, Outcome};
use paygate_sandbox::Knobs;
use serde_json::json;

mod common;
use common::{account, BoxError, TestResult, World};

const A: &str = "ms-json";
const B: &str = "ms-proto";

/// Knobs that make an account's status query report the decided outcome almost at once:
/// the callback is "sent" (to nowhere, once) right after execution, which is what marks
/// the sandbox's record final.
fn outcome_visible() -> serde_json::Value {
    json!({
        "callbacks_enabled": true,
        "callback_base_url": "http://127.0.0.1:1",
        "callback_delay_ms": 0,
        "callback_max_attempts": 1,
    })
}

/// A world with gateways A (JSON) and B (protobuf), each with the settle window
/// `settle_ms`, and processor settings quick enough for tests.
async fn world(settle_ms: u64) -> Result<World, BoxError> {
    let knobs = Knobs {
        hang_ms: 2_000,
        ..Knobs::default()
    };
    let gateways = [(A, "sandbox-json"), (B, "sandbox-proto")];
    let settings =
        json!({"timeout_ms": 800, "breaker": {}, "status_not_found_after_ms": settle_ms});
    let mut w = World::new("Money safety tests", knobs, &gateways, settings).await?;
    let p = &mut w.config.processor;
    p.concurrency = 8;
    p.lock_ttl = Duration::from_millis(3_000);
    p.lock_wait = Duration::from_millis(1_000);
    p.retry_base = Duration::from_millis(100);
    p.retry_cap = Duration::from_millis(400);
    p.max_attempts = 5;
    p.scheduler_poll = Duration::from_millis(100);
    p.stuck_after = Duration::from_secs(300);
    p.status_check_min = Duration::from_millis(100);
    p.status_check_max = Duration::from_millis(400);
    w.config.outbox.poll = Duration::from_millis(50);
    Ok(w)
}

/// Check 1: `id` was executed exactly once, by `gateway`, and no payment in this world was
/// executed by two gateways. The one execution's report.
async fn executed_once(
    w: &World,
    id: TransactionId,
    gateway: &str,
) -> Result<ExecutionReport, BoxError> {
    let report = w.admin().reference(&id).await?;
    // No test here declines, so every record is an execution.
    assert_eq!(
        report.executions.len(),
        1,
        "{id}: executed by exactly one gateway: {report:?}"
    );
    assert_eq!(w.admin().stats().await?.total.executed_elsewhere, 0);
    let one = report.executions[0].clone();
    assert_eq!(one.account, gateway, "{id}: executed where it was routed");
    Ok(one)
}

/// Check 2: our final state is the provider's decision.
fn matches_provider(tx: &Transaction, execution: &ExecutionReport) {
    let ours = match tx.status {
        TransactionStatus::Succeeded => Outcome::Succeeded,
        TransactionStatus::Failed => Outcome::Failed,
        other => panic!("{}: {other:?} is not a final state", tx.id),
    };
    assert_eq!(
        ours, execution.decided,
        "{}: our state against the provider's",
        tx.id
    );
    assert_eq!(
        tx.provider_reference.as_deref(),
        Some(execution.provider_reference.as_str()),
        "{}: the provider's reference is recorded",
        tx.id
    );
}

/// The failure code the merchant's one `transaction.unresolved` event carries.
async fn unresolved_reason(w: &World, id: TransactionId) -> Result<Option<String>, BoxError> {
    let told = w.told(id).await?;
    let mut unresolved = told.into_iter().filter(|t| t.status == "unresolved");
    let one = unresolved
        .next()
        .ok_or(format!("{id}: never told unresolved"))?;
    if unresolved.next().is_some() {
        return Err(format!("{id}: told unresolved twice").into());
    }
    Ok(one.failure_code)
}

/// Case a: gateway A of a failover route [A, B] executes, then answers 502 (a load
/// balancer's answer). The 502 is ambiguous: no failover to B, a status query on A finds
/// the payment, and it ends as A decided. Never `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_then_502_on_the_first_gateway_never_fails_over() -> TestResult {
    let mut w = world(300).await?;
    w.route(&[A, B], true);
    let mut knobs = outcome_visible();
    knobs["execute_then_error_rate"] = json!(1.0);
    knobs["execute_then_error_status"] = json!(502);
    w.knobs(A, knobs).await?;
    let (stop, task) = w.start().await?;
    let mut ids = Vec::new();
    for (i, kind) in [
        TransactionKind::Deposit,
        TransactionKind::Withdrawal,
        TransactionKind::Deposit,
        TransactionKind::Withdrawal,
    ]
    .into_iter()
    .enumerate()
    {
        ids.push(w.insert_routed(kind, 2_000 + i as i64).await?.id);
    }
    for id in &ids {
        let tx = w.wait(*id, "terminal", |t| t.status.is_terminal()).await?;
        assert_eq!(
            tx.status,
            TransactionStatus::Succeeded,
            "{id}: {:?}",
            tx.failure
        );
        assert_eq!(tx.routed_gateway.as_ref().map(GatewayName::as_str), Some(A));
        assert_eq!(tx.attempts, 1, "{id}: found by asking, nothing resent");
        let execution = executed_once(&w, *id, A).await?;
        matches_provider(&tx, &execution);
        assert_eq!(w.announced(*id).await?, vec!["succeeded"], "{id}");
    }
    let stats = w.stats().await?;
    assert_eq!(account(&stats, A).executions, 4);
    assert_eq!(
        account(&stats, A).executed_then_errored,
        4,
        "every answer was a 502"
    );
    assert!(account(&stats, A).status_queries >= 4);
    assert_eq!(account(&stats, B).requests, 0, "B never saw a payment");
    assert_eq!(account(&stats, B).status_queries, 0);
    stop.cancel();
    task.await?;
    Ok(())
}

/// Case b: after an ambiguous attempt, A's status endpoint says "not found" for a while
/// (shorter than the gateway's settle window). The processor keeps asking instead of
/// reading "not found" as "never executed": no failover to B, no resubmit, found at last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_status_endpoint_inside_the_settle_window_is_waited_for() -> TestResult {
    const LAG_MS: u64 = 1_500;
    let mut w = world(10_000).await?;
    w.route(&[A, B], true);
    let mut knobs = outcome_visible();
    knobs["execute_then_error_rate"] = json!(1.0);
    knobs["status_not_found_for_ms"] = json!(LAG_MS);
    w.knobs(A, knobs).await?;
    let (stop, task) = w.start().await?;
    let id = w
        .insert_routed(TransactionKind::Withdrawal, 3_100)
        .await?
        .id;
    let tx = w.wait(id, "terminal", |t| t.status.is_terminal()).await?;
    assert_eq!(tx.status, TransactionStatus::Succeeded, "{:?}", tx.failure);
    assert_eq!(tx.attempts, 1, "nothing was resent");
    let execution = executed_once(&w, id, A).await?;
    matches_provider(&tx, &execution);
    assert_eq!(w.announced(id).await?, vec!["succeeded"]);
    let stats = w.stats().await?;
    let a = account(&stats, A);
    assert_eq!(a.requests, 1, "one payment request, no resubmit: {a:?}");
    assert!(
        a.status_queries >= 2,
        "asked during the lag (answered \"not found\") and after it: {a:?}"
    );
    assert_eq!(account(&stats, B).requests, 0, "no failover to B");
    stop.cancel();
    task.await?;
    Ok(())
}

/// Case c: the status lag is LONGER than a short settle window, on a route without
/// failover: the processor believes "not found" and resubmits to the same gateway with the
/// same reference; the provider refuses it as a duplicate reference (409). That refusal is
/// not a decline, and it proves the provider holds the payment: from then on "not found"
/// is lag, through `unresolved` too, and it ends as the provider decided. (Before the fix,
/// the next "not found" past the window was read as "never executed" and, attempts used
/// up, the payment ended `failed (max_attempts_exceeded)`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_reference_refusal_of_a_resubmit_leads_to_a_status_query() -> TestResult {
    let mut w = world(200).await?;
    w.config.processor.max_attempts = 2;
    w.config.processor.unresolved_after = Duration::from_secs(1);
    let mut knobs = outcome_visible();
    knobs["execute_then_error_rate"] = json!(1.0);
    knobs["status_not_found_for_ms"] = json!(4_000);
    knobs["duplicate_reference_status"] = json!(409);
    w.knobs(A, knobs).await?;
    let (stop, task) = w.start().await?;
    let id = w.insert(TransactionKind::Deposit, A, 4_200).await?.id;
    // Still lagging a second after the refusal: unresolved, and the refusal is remembered.
    let tx = w
        .wait(id, "unresolved", |t| {
            t.status == TransactionStatus::Unresolved
        })
        .await?;
    assert_eq!(
        tx.failure.as_ref().map(|f| f.code.as_str()),
        Some(codes::DUPLICATE_REFERENCE),
        "{:?}",
        tx.failure
    );
    assert_eq!(tx.attempts, 2, "the first attempt and the refused resubmit");
    let tx = w.wait(id, "terminal", |t| t.status.is_terminal()).await?;
    assert_eq!(tx.status, TransactionStatus::Succeeded, "{:?}", tx.failure);
    let execution = executed_once(&w, id, A).await?;
    matches_provider(&tx, &execution);
    assert_eq!(w.announced(id).await?, vec!["unresolved", "succeeded"]);
    assert_eq!(
        unresolved_reason(&w, id).await?.as_deref(),
        Some(codes::DUPLICATE_REFERENCE),
        "the unresolved event names the refusal"
    );
    let a = account(&w.stats().await?, A);
    assert_eq!(
        a.duplicate_references_refused, 1,
        "the resubmit was refused as a duplicate, and nothing was sent after it: {a:?}"
    );
    assert_eq!(a.requests, 2);
    assert_eq!(a.executions, 1);
    stop.cancel();
    task.await?;
    Ok(())
}

/// Case d: the response to a payment is lost; the status answer reports one minor unit more
/// than we sent. It is flagged (`unresolved`, `outcome_mismatch`, announced as such), never
/// applied: the transaction does not become `succeeded`, and nobody asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_answer_with_the_wrong_amount_is_flagged_never_applied() -> TestResult {
    let w = world(300).await?;
    let mut knobs = outcome_visible();
    knobs["lost_response_rate"] = json!(1.0);
    knobs["mismatched_status_rate"] = json!(1.0);
    w.knobs(A, knobs).await?;
    let (stop, task) = w.start().await?;
    let id = w.insert(TransactionKind::Deposit, A, 5_000).await?.id;
    let tx = w
        .wait(id, "unresolved", |t| {
            t.status == TransactionStatus::Unresolved
        })
        .await?;
    let failure = tx.failure.clone().ok_or("no failure recorded")?;
    assert_eq!(failure.code, codes::OUTCOME_MISMATCH, "{failure:?}");
    assert!(
        failure
            .message
            .contains("reported 50.01 USD, recorded 50.00 USD"),
        "the mismatch is named: {failure:?}"
    );
    assert!(tx.ambiguous_since.is_some(), "still pinned to A");
    let execution = executed_once(&w, id, A).await?;
    assert_eq!(execution.amount, 5_000, "the provider moved our amount");
    assert_eq!(w.announced(id).await?, vec!["unresolved"]);
    assert_eq!(
        unresolved_reason(&w, id).await?.as_deref(),
        Some(codes::OUTCOME_MISMATCH)
    );
    // Let reconciliation look at it: it asks at most once more, records the mismatch again
    // and stops asking; the wrong answer is never applied.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tx = w.get(id).await?;
        if tx.next_attempt_at.is_none() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("still being asked about: {tx:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tx = w.get(id).await?;
    assert_eq!(tx.status, TransactionStatus::Unresolved);
    assert_eq!(
        tx.failure.as_ref().map(|f| f.code.as_str()),
        Some(codes::OUTCOME_MISMATCH)
    );
    assert_eq!(
        tx.provider_reference, None,
        "nothing from the wrong answer was applied"
    );
    assert_eq!(w.announced(id).await?, vec!["unresolved"], "told once");
    let a = account(&w.stats().await?, A);
    assert!(a.statuses_mismatched >= 1, "{a:?}");
    assert_eq!(a.executions, 1);
    assert_eq!(a.requests, 1, "nothing resent");
    stop.cancel();
    task.await?;
    Ok(())
}

/// Case e: after an ambiguous attempt the provider goes down, so status queries keep
/// failing. After `unresolved_after_secs` the transaction is `unresolved` (announced);
/// once the outage ends, reconciliation asks again and finishes it as the provider decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_status_queries_make_it_unresolved_and_reconciliation_finishes_it() -> TestResult {
    // The status endpoint lags 3 s, well inside the settle window, so no query before the
    // outage below can settle it.
    let mut w = world(60_000).await?;
    w.config.processor.unresolved_after = Duration::from_secs(1);
    let mut knobs = outcome_visible();
    knobs["execute_then_error_rate"] = json!(1.0);
    knobs["status_not_found_for_ms"] = json!(3_000);
    w.knobs(A, knobs).await?;
    let (stop, task) = w.start().await?;
    let id = w.insert(TransactionKind::Withdrawal, A, 6_100).await?.id;
    w.wait(id, "an ambiguous attempt", |t| t.ambiguous_since.is_some())
        .await?;
    w.knobs(A, json!({"outage": true})).await?;
    let tx = w
        .wait(id, "unresolved", |t| {
            t.status == TransactionStatus::Unresolved
        })
        .await?;
    let failure = tx.failure.clone().ok_or("no failure recorded")?;
    assert_eq!(failure.code, codes::STATUS_UNKNOWN, "{failure:?}");
    assert!(
        failure.message.contains("status query failed"),
        "unresolved because the queries failed: {failure:?}"
    );
    assert_eq!(w.announced(id).await?, vec!["unresolved"]);
    assert_eq!(
        unresolved_reason(&w, id).await?.as_deref(),
        Some(codes::STATUS_UNKNOWN)
    );
    let during = account(&w.stats().await?, A);
    assert!(during.outage_rejections >= 1, "{during:?}");

    w.knobs(A, json!({"outage": false})).await?;
    let tx = w.wait(id, "terminal", |t| t.status.is_terminal()).await?;
    assert_eq!(tx.status, TransactionStatus::Succeeded, "{:?}", tx.failure);
    let execution = executed_once(&w, id, A).await?;
    matches_provider(&tx, &execution);
    assert_eq!(w.announced(id).await?, vec!["unresolved", "succeeded"]);
    let a = account(&w.stats().await?, A);
    assert_eq!(a.requests, 1, "never resent: {a:?}");
    stop.cancel();
    task.await?;
    Ok(())
}

/// Case f: a provider answers 429 with `Retry-After: 99999999999999` (about three million
/// years; `now +` that overflows chrono). The processor does not crash: the retry is
/// scheduled exactly `max_retry_after_secs` later, and the processor goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_is_capped_and_does_not_crash_the_processor() -> TestResult {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const HUGE: &str = "99999999999999";
    const CAP_SECS: u64 = 60;
    const LIMITED: &str = "ms-limited";
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    // Only the JSON connector's charge path, for this one header the sandbox cannot send.
    let app = axum::Router::new().route(
        &format!("/{LIMITED}/transaction/charge"),
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [(axum::http::header::RETRY_AFTER, HUGE)],
                    r#"{"status":false,"message":"slow down","code":"rate_limited"}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let limited_url = format!("http://{}/{LIMITED}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut w = World::new(
        "Money safety Retry-After",
        Knobs::default(),
        &[(A, "sandbox-json"), (LIMITED, "sandbox-json")],
        json!({"timeout_ms": 800, "breaker": {}, "status_not_found_after_ms": 300}),
    )
    .await?;
    w.config
        .gateways
        .get_mut(LIMITED)
        .ok_or("no gateway")?
        .base_url = limited_url;
    w.config.processor.max_retry_after = Duration::from_secs(CAP_SECS);
    w.config.processor.scheduler_poll = Duration::from_millis(100);
    let (stop, task) = w.start().await?;
    let limited = w.insert(TransactionKind::Deposit, LIMITED, 700).await?.id;
    let tx = w
        .wait(limited, "a scheduled retry", |t| {
            t.status == TransactionStatus::RetryScheduled
        })
        .await?;
    assert_eq!(tx.attempts, 1);
    assert_eq!(
        tx.failure.as_ref().map(|f| f.code.as_str()),
        Some(codes::RETRYABLE),
        "a 429 was not acted on: {:?}",
        tx.failure
    );
    assert_eq!(tx.ambiguous_since, None);
    let next = tx.next_attempt_at.ok_or("no retry time")?;
    let delay = (next - tx.updated_at).to_std()?;
    assert!(
        delay.abs_diff(Duration::from_secs(CAP_SECS)) < Duration::from_millis(1),
        "the retry is due max_retry_after_secs after the attempt, not {delay:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "no retry before the cap");

    // The processor is alive and well: the next payment goes through.
    let fine = w.insert(TransactionKind::Deposit, A, 800).await?.id;
    w.wait(fine, "submitted", |t| {
        t.status == TransactionStatus::Submitted
    })
    .await?;
    assert_eq!(
        w.get(limited).await?.status,
        TransactionStatus::RetryScheduled
    );
    assert!(!task.is_finished(), "the processor is still running");
    stop.cancel();
    task.await?;
    server.abort();
    Ok(())
}
