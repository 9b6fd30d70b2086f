//! Money safety end to end (issue 12): the five paygate processes on tansu, 200
//! withdrawals routed with failover over two gateways, the first of which executes 30% of
//! payments and then answers 502 (as a load balancer in front of it would), with a status
//! endpoint lagging on both. Nothing may be paid twice, nothing a provider executed may be
//! reported `failed`, and the merchant's webhooks must tell each payment's true outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use futures::future::join_all;
use paygate_cli::receiver::ReceivedWebhook;
use paygate_core::db::webhooks;
use paygate_core::domain::{EventId, TransactionId, TransactionStatus};
use paygate_e2e::{Kind, Merchant, Topology, TopologyOptions};
use paygate_testkit::admin::{AdminClient, Outcome};
use serde_json::{json, Value};

const N: usize = 200;
const FIRST: &str = "sandbox-json";
const SECOND: &str = "sandbox-proto";
/// How long both status endpoints answer "not found" after executing: longer than
/// `unresolved_after_secs` (so ambiguous payments become `unresolved`), shorter than the
/// gateways' settle window (the default 120 s, so "not found" never means "never executed").
const LAG_MS: u64 = 12_000;
/// Bounds for each phase (failure guards, not assertions on speed).
const PHASE: Duration = Duration::from_secs(60);

fn options() -> TopologyOptions {
    TopologyOptions {
        route: vec![FIRST.to_owned(), SECOND.to_owned()],
        // Longer than the status lag: a lagging "not found" must not read as "never executed".
        status_not_found_after_ms: LAG_MS * 3,
        ..TopologyOptions::default()
    }
    .env("PAYGATE_PROCESSOR_UNRESOLVED_AFTER_SECS", 2)
    .env("PAYGATE_PROCESSOR_STUCK_AFTER_SECS", 3)
    .env("PAYGATE_PROCESSOR_STATUS_CHECK_MIN_MS", 200)
    .env("PAYGATE_PROCESSOR_STATUS_CHECK_MAX_MS", 1_000)
}

/// The first gateway: 30% executed-then-502, 5% refused with 429 (nothing executed: the
/// one case where failover to the second is right), a lagging status endpoint, and its
/// callbacks lost (sent to a closed port once), so every payment it executed is settled
/// by asking it. A tenth of the payments fail at the provider, so "our state = the
/// provider's" is checked for both outcomes.
fn first_knobs() -> Value {
    json!({
        "execute_then_error_rate": 0.3,
        "execute_then_error_status": 502,
        "rate_limit_rate": 0.05,
        "status_not_found_for_ms": LAG_MS,
        "callback_failure_rate": 0.1,
        "callback_base_url": "http://127.0.0.1:1",
        "callback_max_attempts": 1,
    })
}

fn second_knobs() -> Value {
    json!({"status_not_found_for_ms": LAG_MS, "callback_failure_rate": 0.1})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_502s_and_lagging_status_never_pay_twice_and_every_webhook_tells_the_truth(
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut topology = Topology::start(options()).await?;
    eprintln!(
        "topology started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let outcome = run(&mut topology).await;
    let result = topology.finish(outcome).await;
    eprintln!("test finished in {:.1} s", started.elapsed().as_secs_f64());
    result
}

async fn run(topology: &mut Topology) -> anyhow::Result<()> {
    let admin = AdminClient::new(topology.sandbox_url.clone())?;
    admin.patch_account_knobs(FIRST, first_knobs()).await?;
    admin.patch_account_knobs(SECOND, second_knobs()).await?;
    let merchant = topology.merchant("e2e money safety").await?;

    let answers = join_all((0..N).map(|i| {
        let key = format!("ms-{i}");
        let amount = 1_000 + i64::try_from(i).unwrap_or(0);
        accept(topology, &merchant, amount, key)
    }))
    .await;
    let ids: Vec<String> = answers.into_iter().collect::<anyhow::Result<_>>()?;
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    ensure!(
        distinct.len() == N,
        "{} distinct ids of {N}",
        distinct.len()
    );

    // Phase 1: every transaction settles into a terminal state or `unresolved` with a
    // reason; none is left claimed, submitted or waiting.
    let first_seen = wait_each(topology, &ids, |status| {
        matches!(status, "succeeded" | "failed" | "unresolved")
    })
    .await?;
    let unresolved_seen = first_seen
        .values()
        .filter(|s| s.as_str() == "unresolved")
        .count();
    eprintln!("phase 1: {unresolved_seen} of {N} unresolved at first sight");
    let reasons: Vec<(TransactionId, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, failure_code, failure_message FROM transactions WHERE status = 'unresolved'",
    )
    .fetch_all(&topology.pool)
    .await?;
    for (id, code, message) in &reasons {
        ensure!(
            code.as_deref().is_some_and(|c| !c.is_empty())
                && message.as_deref().is_some_and(|m| !m.is_empty()),
            "{id} is unresolved without a reason: {code:?} {message:?}"
        );
    }

    // Phase 2: once the lag has passed, reconciliation leaves none unresolved.
    wait_each(topology, &ids, |status| {
        matches!(status, "succeeded" | "failed")
    })
    .await?;
    let counts = topology.status_counts().await?;
    ensure!(
        counts.keys().all(|s| s == "succeeded" || s == "failed"),
        "{counts:?}"
    );

    // The providers: nothing executed twice, our state = what they decided.
    let stats = admin.stats().await?;
    ensure!(
        stats.total.executed_elsewhere == 0,
        "{} payments executed by two gateways",
        stats.total.executed_elsewhere
    );
    let first = stats.accounts.get(FIRST).copied().unwrap_or_default();
    ensure!(
        first.executed_then_errored > 0,
        "the scenario never happened: {first:?}"
    );
    let finals = final_states(topology, &ids).await?;
    let mut failed_but_executed = Vec::new();
    let mut by_gateway: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let reference = TransactionId::parse(id)?;
        let report = admin.reference(&reference).await?;
        let ours = finals.get(id).map(String::as_str).unwrap_or_default();
        ensure!(
            report.executions.len() <= 1,
            "{id} executed more than once: {report:?}"
        );
        let Some(execution) = report.executions.first() else {
            ensure!(
                ours == "failed",
                "{id} is {ours} but no provider executed it"
            );
            continue;
        };
        *by_gateway.entry(execution.account.clone()).or_default() += 1;
        let theirs = match execution.decided {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Pending => "pending",
        };
        if ours == "failed" && theirs == "succeeded" {
            failed_but_executed.push(id.clone());
        }
        ensure!(
            ours == theirs,
            "{id} is {ours}, the provider ({}) decided {theirs}",
            execution.account
        );
    }
    ensure!(
        failed_but_executed.is_empty(),
        "failed although a provider executed them: {failed_but_executed:?}"
    );

    // The merchant, as recorded: every state change it is told of wrote its webhook event in
    // the same commit, so every transaction ever seen unresolved has its
    // `transaction.unresolved` event, and each has exactly one event with its true terminal
    // status (after the unresolved one, if any) and nothing else. Nothing goes through the
    // retired `transactions.completed` outbox topic.
    let recorded = recorded_events(topology, &merchant).await?;
    check_recorded(&recorded, &finals)?;
    let announced_unresolved: BTreeSet<String> = recorded
        .iter()
        .filter(|(_, events)| events.iter().any(|e| e.status == "unresolved"))
        .map(|(id, _)| id.clone())
        .collect();
    ensure!(
        !announced_unresolved.is_empty(),
        "no transaction went through unresolved: the scenario proves nothing"
    );
    let seen_unresolved: BTreeSet<String> = first_seen
        .iter()
        .filter(|(_, status)| status.as_str() == "unresolved")
        .map(|(id, _)| id.clone())
        .chain(reasons.iter().map(|(id, _, _)| id.to_string()))
        .collect();
    let untold: Vec<&String> = seen_unresolved.difference(&announced_unresolved).collect();
    ensure!(
        untold.is_empty(),
        "seen unresolved but never announced so: {untold:?}"
    );
    let retired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'transactions.completed'")
            .fetch_one(&topology.pool)
            .await?;
    ensure!(retired == 0, "{retired} transactions.completed outbox rows");

    // The merchant, as delivered: each transaction has exactly one verified webhook with its
    // true terminal status, and nothing else but (at most) the `transaction.unresolved` one;
    // every webhook is a recorded event, and every recorded event arrived.
    let received = topology
        .wait_webhooks(&merchant, &distinct, PHASE, Duration::from_millis(1_500))
        .await?;
    check_webhooks(&received, &finals)?;
    check_delivered(&received, &recorded)?;
    let unresolved_webhooks = received
        .iter()
        .filter(|w| w.event_type.as_deref() == Some("transaction.unresolved"))
        .count();
    eprintln!(
        "{N} withdrawals: {counts:?}; executed by {by_gateway:?}; {} executed-then-502 on \
         {FIRST}; {} announced unresolved, {unresolved_webhooks} unresolved webhooks; \
         {} status queries; executed_elsewhere {}",
        first.executed_then_errored,
        announced_unresolved.len(),
        stats.total.status_queries,
        stats.total.executed_elsewhere
    );
    Ok(())
}

/// Creates one withdrawal that names no gateway (the route decides); its id.
async fn accept(
    topology: &Topology,
    merchant: &Merchant,
    amount: i64,
    key: String,
) -> anyhow::Result<String> {
    let (status, body) = topology
        .create(merchant, Kind::Withdrawal, None, amount, &key)
        .await?;
    ensure!(status == 202, "{key}: {status} {body}");
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{key}: no id in {body}"))
}

/// Polls Postgres until every transaction's status has satisfied `done` (each counted
/// from the first time it does); the status each had then.
async fn wait_each(
    topology: &mut Topology,
    ids: &[String],
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + PHASE;
    let mut seen = BTreeMap::new();
    loop {
        for (id, status) in final_states(topology, ids).await? {
            if done(&status) {
                seen.entry(id).or_insert(status);
            }
        }
        if seen.len() == ids.len() {
            return Ok(seen);
        }
        topology.check_alive()?;
        if Instant::now() > deadline {
            let counts = topology.status_counts().await?;
            return Err(anyhow!(
                "{} of {} transactions never reached the expected states within {} s: {counts:?}",
                ids.len() - seen.len(),
                ids.len(),
                PHASE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every transaction's current status, by id.
async fn final_states(
    topology: &Topology,
    ids: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let rows: Vec<(TransactionId, String)> = sqlx::query_as("SELECT id, status FROM transactions")
        .fetch_all(&topology.pool)
        .await
        .context("reading statuses")?;
    let wanted: BTreeSet<&String> = ids.iter().collect();
    Ok(rows
        .into_iter()
        .map(|(id, status)| (id.to_string(), status))
        .filter(|(id, _)| wanted.contains(id))
        .collect())
}

/// One webhook event recorded for the merchant (`webhook_events`).
struct Recorded {
    /// The event id's external form: the `webhook-id` its deliveries carry.
    id: String,
    /// `transaction.succeeded`, `transaction.unresolved`, ...
    event_type: String,
    /// `data.status` of its body.
    status: String,
}

/// Every webhook event recorded for `merchant`, by transaction, oldest first; each checked to
/// be well formed: its body's `type`, `id` and `data.id` are the row's, its type is
/// `transaction.<data.status>`, and its id is the deterministic one of (transaction, status).
async fn recorded_events(
    topology: &Topology,
    merchant: &Merchant,
) -> anyhow::Result<BTreeMap<String, Vec<Recorded>>> {
    let rows: Vec<(EventId, TransactionId, String, String)> = sqlx::query_as(
        "SELECT id, transaction_id, event_type, payload::text FROM webhook_events
         WHERE merchant_id = $1 ORDER BY created_at, id",
    )
    .bind(merchant.id.as_uuid())
    .fetch_all(&topology.pool)
    .await
    .context("reading webhook events")?;
    let mut by_tx: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    for (id, transaction, event_type, payload) in rows {
        let body: Value =
            serde_json::from_str(&payload).with_context(|| format!("{id}: payload is not JSON"))?;
        let status = body["data"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let parsed: TransactionStatus = status
            .parse()
            .with_context(|| format!("{id} ({event_type}): data.status {status:?}"))?;
        ensure!(
            body["type"] == event_type.as_str()
                && body["id"] == id.to_string()
                && body["data"]["id"] == transaction.to_string()
                && event_type == format!("transaction.{status}")
                && id == webhooks::event_id_for(transaction, parsed),
            "{id} of {transaction} ({event_type}) is not its (transaction, status) event: {body}"
        );
        by_tx
            .entry(transaction.to_string())
            .or_default()
            .push(Recorded {
                id: id.to_string(),
                event_type,
                status,
            });
    }
    Ok(by_tx)
}

/// Each transaction's recorded events: exactly one with its final status, last, preceded by
/// at most a `transaction.unresolved` one; none for transactions we did not create.
fn check_recorded(
    recorded: &BTreeMap<String, Vec<Recorded>>,
    finals: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    for (id, status) in finals {
        let told: Vec<&str> = recorded
            .get(id)
            .map(|events| events.iter().map(|e| e.status.as_str()).collect())
            .unwrap_or_default();
        ensure!(
            told == [status.as_str()] || told == ["unresolved", status.as_str()],
            "{id} is {status} but the recorded events told {told:?}"
        );
    }
    let unknown: Vec<&String> = recorded
        .keys()
        .filter(|id| !finals.contains_key(*id))
        .collect();
    ensure!(
        unknown.is_empty(),
        "events for unknown transactions: {unknown:?}"
    );
    Ok(())
}

/// Every received webhook is a recorded event of its transaction (same `webhook-id` and
/// type), and every recorded event was received.
fn check_delivered(
    received: &[ReceivedWebhook],
    recorded: &BTreeMap<String, Vec<Recorded>>,
) -> anyhow::Result<()> {
    let events: BTreeSet<(&str, &str, &str)> = recorded
        .iter()
        .flat_map(|(tx, events)| {
            events
                .iter()
                .map(move |e| (tx.as_str(), e.event_type.as_str(), e.id.as_str()))
        })
        .collect();
    let delivered: BTreeSet<(&str, &str, &str)> = received
        .iter()
        .map(|w| {
            (
                w.transaction_id.as_deref().unwrap_or_default(),
                w.event_type.as_deref().unwrap_or_default(),
                w.webhook_id.as_str(),
            )
        })
        .collect();
    let unrecorded: Vec<_> = delivered.difference(&events).collect();
    ensure!(
        unrecorded.is_empty(),
        "webhooks that are no recorded event: {unrecorded:?}"
    );
    let undelivered: Vec<_> = events.difference(&delivered).collect();
    ensure!(
        undelivered.is_empty(),
        "recorded events never delivered: {undelivered:?}"
    );
    Ok(())
}

/// Each transaction: all webhooks verified, exactly one (distinct `webhook-id`) with its
/// terminal status, at most one `transaction.unresolved`, nothing else.
fn check_webhooks(
    received: &[ReceivedWebhook],
    finals: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    ensure!(
        received.iter().all(|w| w.verified),
        "unverified webhooks: {:?}",
        received.iter().filter(|w| !w.verified).collect::<Vec<_>>()
    );
    let mut by_tx: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for webhook in received {
        let id = webhook.transaction_id.as_deref().unwrap_or_default();
        let kind = webhook.event_type.as_deref().unwrap_or_default();
        by_tx
            .entry(id)
            .or_default()
            .entry(kind)
            .or_default()
            .insert(webhook.webhook_id.as_str());
    }
    for (id, status) in finals {
        let events = by_tx.get(id.as_str()).cloned().unwrap_or_default();
        let terminal = format!("transaction.{status}");
        let told = events.get(terminal.as_str()).map_or(0, BTreeSet::len);
        ensure!(
            told == 1,
            "{id} is {status}: {told} distinct {terminal} webhooks ({events:?})"
        );
        for (kind, webhook_ids) in &events {
            ensure!(
                *kind == terminal || (*kind == "transaction.unresolved" && webhook_ids.len() == 1),
                "{id} is {status} but was told {kind} ({events:?})"
            );
        }
        let statuses: BTreeSet<Option<&str>> = received
            .iter()
            .filter(|w| w.transaction_id.as_deref() == Some(id.as_str()))
            .filter(|w| w.event_type.as_deref() == Some(terminal.as_str()))
            .map(|w| w.status.as_deref())
            .collect();
        ensure!(
            statuses == BTreeSet::from([Some(status.as_str())]),
            "{id}: data.status {statuses:?}, expected {status}"
        );
    }
    ensure!(
        by_tx.keys().all(|id| finals.contains_key(*id)),
        "webhooks for unknown transactions"
    );
    Ok(())
}
