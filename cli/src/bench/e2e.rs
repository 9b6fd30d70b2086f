//! `paygate bench e2e`: the whole pipeline under load, measured from the merchant's side.
//!
//! It makes a merchant whose webhook endpoint is a receiver in this process (so a running
//! stack's dispatcher must be allowed to deliver to loopback over http, as `paygate dev` and
//! `scripts/up` are), drives `POST /v1/deposits` and `/v1/withdrawals` (alternately) like
//! `bench accept`, then waits for every accepted payment's signed webhook. It reports accept
//! latency, accept→webhook latency (both HDR), end-to-end payments per second, what did not
//! arrive, the sandbox's executions and suppressed duplicates, the peak RSS of each paygate
//! process, and `pgbench -N` on the same Postgres, run right after, with the ratio.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use paygate_core::config::Config;
use paygate_core::db::{self, merchants};
use paygate_core::domain::TransactionId;
use paygate_sandbox_admin::{AdminClient, Stats};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cpu::{CpuReport, CpuSnapshot};
use super::load::{self, Latencies, LoadSpec, Percentiles, Recorder};
use super::net::{TcpReport, TcpSnapshot};
use super::pgbench::{self, PgbenchReport};
use super::rss::PeakRss;
use super::stages::{self, Stage};
use super::statements::{StatementStats, StatementsReport};
use crate::merchant_setup;
use crate::receiver::{Logging, ReceivedWebhook, WebhookReceiver, RECEIVER_PATH};

/// The API limits each key's rate; the bench spreads its requests over this many keys of its
/// merchant so the limiter is not what it measures.
const BENCH_KEYS: usize = 4;
/// How long one create is sent again (refused with `Retry-After`, or no answer) before the
/// bench counts it as an error.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    /// The API's base URL; repeat the flag for several API instances (requests go to them
    /// in turn, e.g. `--url http://127.0.0.1:8080 --url http://127.0.0.1:8081` against
    /// `TOPOLOGY_INSTANCES=2 scripts/up`).
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,
    /// The sandbox's base URL (for its execution counts).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub sandbox_url: String,
    /// Where this bench's webhook receiver listens; the dispatcher must reach it.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver_bind: SocketAddr,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Concurrent connections (closed loop) or the in-flight cap (open loop).
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Open loop at this many payments per second; absent = closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Spread the load over this many merchants (each with its keys, its ledger account and
    /// an endpoint at the bench's receiver). One merchant puts every settlement on one
    /// balance row: what a single large merchant costs (BENCHMARKS.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub merchants: u16,
    /// Gateways to name in turn (repeat the flag); absent: routing rules choose.
    #[arg(long)]
    pub gateway: Vec<String>,
    /// After sending, how long to wait for the last webhooks.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
    /// Skip the pgbench reference run.
    #[arg(long)]
    pub no_pgbench: bool,
    /// pgbench clients.
    #[arg(long, default_value_t = 16)]
    pub pgbench_clients: u32,
    /// pgbench duration in seconds.
    #[arg(long, default_value_t = 30)]
    pub pgbench_secs: u64,
    /// Report this many of the costliest Postgres statements of the run (needs
    /// `pg_stat_statements` loaded by the server; 0 = do not ask).
    #[arg(long, default_value_t = 12)]
    pub statements: usize,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct E2eReport {
    pub mode: String,
    /// The API base URLs the requests went to in turn.
    pub apis: Vec<String>,
    pub concurrency: usize,
    pub merchants: u16,
    pub target_rate: Option<u64>,
    /// Time spent sending.
    pub send_secs: f64,
    pub accepted: u64,
    pub accept_errors: u64,
    /// Creates sent again with the same Idempotency-Key: after a refusal with `Retry-After`
    /// (the pipeline too far behind, a rate limit) or no answer.
    pub resent: u64,
    pub accept_per_sec: f64,
    pub accept_latency_ms: Percentiles,
    /// Accepted payments whose signed webhook arrived (one each counted).
    pub delivered: u64,
    /// Accepted payments without a webhook by the end of the drain.
    pub missing: u64,
    /// Webhooks that arrived again for an already-delivered event (at-least-once repeats).
    pub repeated_webhooks: u64,
    /// Webhooks whose signature did not verify.
    pub unverified_webhooks: u64,
    /// Delivered payments by final status (`succeeded`, `failed`).
    pub by_status: BTreeMap<String, u64>,
    /// From the first request to the last webhook.
    pub e2e_secs: f64,
    /// Delivered payments per second over `e2e_secs`. In a closed loop that outruns the
    /// pipeline this counts the drain after sending stopped, so it is above what the pipeline
    /// keeps up with while accepting: `while_sending` says that.
    pub e2e_per_sec: f64,
    /// The pipeline's own pace while the load ran (the second half of the send window).
    pub while_sending: WhileSending,
    /// Accept (request sent, or due in open loop) to webhook received.
    pub e2e_latency_ms: Percentiles,
    /// The sandbox's counters over the run (other traffic to it would count too).
    pub sandbox_executions: Option<u64>,
    pub sandbox_duplicates_suppressed: Option<u64>,
    /// Callbacks the sandbox sent again after paygate refused or did not answer one (the
    /// callback flood guard's `429`, a `503`): each is a payment settled a retry delay late.
    pub sandbox_callback_retries: Option<u64>,
    /// Peak resident memory by paygate process, MiB.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// CPU from the first request to the last webhook (before pgbench), by process kind.
    pub cpu: CpuReport,
    /// `cpu` in milliseconds per delivered payment, by kind, `machine` and `machine - bench`.
    pub cpu_ms_per_payment: BTreeMap<String, f64>,
    /// `cpu_ms_per_payment`'s `postgres` by whom it served (`paygate-api`, `walwriter`, …).
    pub postgres_ms_per_payment_by_client: BTreeMap<String, f64>,
    /// TCP connections and segments over the same window, per delivered payment.
    pub tcp: TcpReport,
    /// Each hop's latency, from the database's history of the run's payments.
    pub stages: Vec<Stage>,
    /// Postgres statements over the same window, per delivered payment.
    pub statements: Option<StatementsReport>,
    pub pgbench: Option<PgbenchReport>,
    /// `e2e_per_sec / pgbench.tps`.
    pub ratio_to_pgbench: Option<f64>,
    /// `while_sending.delivered_per_sec / pgbench.tps`.
    pub sustained_ratio_to_pgbench: Option<f64>,
}

/// Delivery while accepting. A pipeline that keeps up delivers about as fast as it accepts
/// and leaves no backlog when sending stops; one that does not shows a rate below the
/// accept rate and a backlog the drain then works off (and that `e2e_per_sec` counts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WhileSending {
    /// First webhooks received in the second half of the send window, per second of it (the
    /// first half is left out: the pipeline is still filling).
    pub delivered_per_sec: f64,
    /// Accepted payments without a webhook when sending stopped.
    pub backlog_at_end: u64,
}

impl WhileSending {
    /// From each delivered payment's first-webhook time (since the load started), the send
    /// window and how many were accepted in it.
    fn of(arrivals: &[Duration], send: Duration, accepted: u64) -> Self {
        let from = send / 2;
        let in_window = arrivals
            .iter()
            .filter(|at| **at >= from && **at <= send)
            .count() as f64;
        let by_end = arrivals.iter().filter(|at| **at <= send).count() as u64;
        let window = send.saturating_sub(from).as_secs_f64();
        Self {
            delivered_per_sec: if window > 0.0 {
                in_window / window
            } else {
                0.0
            },
            backlog_at_end: accepted.saturating_sub(by_end),
        }
    }
}

/// When each accepted payment's request started, by transaction id.
type Starts = Arc<Mutex<HashMap<String, Instant>>>;

pub async fn e2e(args: E2eArgs, config: &Config) -> anyhow::Result<E2eReport> {
    let spec = LoadSpec {
        duration: Duration::from_secs(args.duration),
        concurrency: args.concurrency,
        rate: args.rate,
    };
    spec.check()?;
    let listener = TcpListener::bind(args.receiver_bind)
        .await
        .with_context(|| {
            format!(
                "the webhook receiver cannot listen on {}",
                args.receiver_bind
            )
        })?;
    let receiver_url = format!("http://{}{RECEIVER_PATH}", listener.local_addr()?);

    let pool = db::connect(&config.database)
        .await
        .context("connecting to PAYGATE_DATABASE_URL to create the bench merchant")?;
    let name = format!("paygate bench {}", unix_now());
    // The endpoint's secret is sealed with the running pipeline's keyring: the configured
    // one, or (none configured, as for `paygate dev`) the public development key.
    let secrets = if config.secrets.is_empty() {
        paygate_core::config::SecretsConfig::insecure_dev()
    } else {
        config.secrets.clone()
    };
    let keyring = secrets.keyring()?;
    let mut keys = Vec::new();
    let mut endpoint_secrets = Vec::new();
    for m in 0..args.merchants {
        let merchant = merchant_setup::create(
            &pool,
            &keyring,
            &format!("{name} #{m}"),
            &receiver_url,
            merchant_setup::usd(merchant_setup::LOAD_FUNDS)?,
        )
        .await?;
        keys.push(merchant.api_key.clone());
        endpoint_secrets.push(merchant.secret);
        // Keys in turn go merchant by merchant: each merchant's share of the load is equal.
        for _ in 1..BENCH_KEYS.div_ceil(usize::from(args.merchants)) {
            let (_id, key) = merchants::create_api_key(&pool, merchant.merchant_id).await?;
            keys.push(key.expose().to_owned());
        }
    }
    pool.close().await;

    let stop = CancellationToken::new();
    let receiver = WebhookReceiver::for_endpoints(endpoint_secrets, Logging::Quiet);
    let serving = {
        let (receiver, stop) = (receiver.clone(), stop.clone());
        tokio::spawn(async move { receiver.serve(listener, stop).await })
    };
    let result = run(&args, spec, keys, &receiver, &config.database.url).await;
    stop.cancel();
    let _ = serving.await;
    result
}

async fn run(
    args: &E2eArgs,
    spec: LoadSpec,
    keys: Vec<String>,
    receiver: &WebhookReceiver,
    database_url: &str,
) -> anyhow::Result<E2eReport> {
    let client = load::client(args.concurrency)?;
    let apis = Arc::new(api_urls(&args.urls)?);
    let sandbox_before = sandbox_stats(&client, &args.sandbox_url).await;
    let rss = PeakRss::default();
    let sampling = CancellationToken::new();
    let sampler = rss.sample(Duration::from_millis(500), sampling.clone());

    let starts: Starts = Arc::new(Mutex::new(HashMap::new()));
    let keys = Arc::new(keys);
    let gateways = Arc::new(args.gateway.clone());
    // One request to each API first, so a wrong URL or key fails fast with the API's own
    // message.
    let probe = payment_body(0, &gateways);
    for api in apis.iter() {
        if let Err(error) =
            load::create_payment(&client, &format!("{api}/v1/deposits"), &keys[0], &probe).await
        {
            sampling.cancel();
            anyhow::bail!("the API at {api} refused the first request: {error}");
        }
    }
    let baseline = receiver.count();

    let recorder = Arc::new(Recorder::new()?);
    let statements = StatementStats::start(database_url, args.statements).await;
    let cpu_before = CpuSnapshot::take_with_postgres_clients(database_url).await;
    let tcp_before = TcpSnapshot::take();
    let started = Instant::now();
    let status_receiver = receiver.clone();
    let failover = Arc::new(load::Failover::new(apis.to_vec(), GIVE_UP_AFTER)?);
    let resent = Arc::new(AtomicU64::new(0));
    let send = {
        let (starts, resent) = (starts.clone(), resent.clone());
        move |n: u64, start: Instant| {
            let (client, failover, resent, keys, gateways, starts) = (
                client.clone(),
                failover.clone(),
                resent.clone(),
                keys.clone(),
                gateways.clone(),
                starts.clone(),
            );
            async move {
                let path = if n % 2 == 0 {
                    "deposits"
                } else {
                    "withdrawals"
                };
                // By pairs, as the APIs below: each key (each merchant) gets both kinds.
                let key = &keys[((n / 2) % keys.len() as u64) as usize];
                // By pairs: each API gets deposits and withdrawals alike (by `n` alone, two
                // APIs would split them one kind each). A refusal with `Retry-After` (the
                // pipeline too far behind, `overloaded`) is sent again after it, as a
                // merchant's client would: its wait counts in the accept latency.
                let body = payment_body(n, &gateways);
                let created = failover.create(&client, n / 2, path, key, &body).await?;
                resent.fetch_add(u64::from(created.retries), Ordering::Relaxed);
                let created = created.body;
                let id = created["id"]
                    .as_str()
                    .ok_or_else(|| format!("202 without an id: {created}"))?
                    .to_owned();
                if let Ok(mut starts) = starts.lock() {
                    starts.insert(id, start);
                }
                Ok(())
            }
        }
    };
    let send_time = load::drive(
        spec,
        &recorder,
        move || {
            format!(
                ", {} webhooks",
                status_receiver.count().saturating_sub(baseline)
            )
        },
        send,
    )
    .await;

    let expected = recorder.ok();
    drain(
        receiver,
        &starts,
        expected,
        Duration::from_secs(args.drain_secs),
    )
    .await;
    let cpu = cpu_before.until(&CpuSnapshot::take_with_postgres_clients(database_url).await);
    let tcp_after = TcpSnapshot::take();
    let statements =
        StatementStats::finish_run(statements, recorder.ok(), "payment", args.statements).await;
    sampling.cancel();
    let _ = sampler.await;
    let sandbox_after = sandbox_stats(&load::client(1)?, &args.sandbox_url).await;

    if let Some(error) = recorder.first_error() {
        eprintln!("first error: {error}");
    }
    let starts = starts
        .lock()
        .map(|s| s.clone())
        .map_err(|_| anyhow::anyhow!("start times lock poisoned"))?;
    let outcome = Outcome::of(&receiver.received(), &starts, started)?;
    let ids: Vec<Uuid> = starts
        .keys()
        .filter_map(|id| TransactionId::parse(id).ok())
        .map(|id| id.as_uuid())
        .collect();
    let stages = stages::of(database_url, &ids).await;

    let pgbench = if args.no_pgbench {
        None
    } else if pgbench::available().await {
        eprintln!(
            "running pgbench -N -c {} for {} s on the same Postgres…",
            args.pgbench_clients, args.pgbench_secs
        );
        let run = pgbench::run(
            database_url,
            args.pgbench_clients,
            Duration::from_secs(args.pgbench_secs),
        )
        .await;
        // The paygate figures stand on their own; a failed reference run is reported, not fatal.
        run.map_err(|error| eprintln!("pgbench: {error:#}")).ok()
    } else {
        eprintln!("pgbench is not installed: no reference run");
        None
    };
    let while_sending = WhileSending::of(&outcome.arrivals, send_time, expected);
    let e2e_per_sec = if outcome.e2e_secs > 0.0 {
        outcome.delivered as f64 / outcome.e2e_secs
    } else {
        0.0
    };
    let delta = |pick: fn(&Stats) -> u64| match (&sandbox_before, &sandbox_after) {
        (Some(before), Some(after)) => Some(pick(after).saturating_sub(pick(before))),
        _ => None,
    };
    let send_secs = send_time.as_secs_f64();
    Ok(E2eReport {
        mode: spec.mode().into(),
        apis: apis.to_vec(),
        concurrency: args.concurrency,
        merchants: args.merchants,
        target_rate: args.rate,
        send_secs,
        accepted: expected,
        accept_errors: recorder.errors(),
        resent: resent.load(Ordering::Relaxed),
        accept_per_sec: expected as f64 / send_secs,
        accept_latency_ms: recorder.percentiles(),
        delivered: outcome.delivered,
        missing: expected.saturating_sub(outcome.delivered),
        repeated_webhooks: outcome.repeated,
        unverified_webhooks: outcome.unverified,
        by_status: outcome.by_status,
        e2e_secs: outcome.e2e_secs,
        e2e_per_sec,
        while_sending,
        e2e_latency_ms: outcome.latencies.percentiles(),
        sandbox_executions: delta(|s| s.executions),
        sandbox_duplicates_suppressed: delta(|s| s.duplicates_suppressed),
        sandbox_callback_retries: delta(|s| s.callback_retries),
        peak_rss_mib: rss.peaks(),
        cpu_ms_per_payment: cpu.per_unit_ms(outcome.delivered),
        postgres_ms_per_payment_by_client: cpu.postgres_per_unit_ms(outcome.delivered),
        cpu,
        tcp: tcp_before.until(&tcp_after, outcome.delivered),
        stages,
        statements,
        ratio_to_pgbench: pgbench
            .as_ref()
            .filter(|p| p.tps > 0.0)
            .map(|p| e2e_per_sec / p.tps),
        sustained_ratio_to_pgbench: pgbench
            .as_ref()
            .filter(|p| p.tps > 0.0)
            .map(|p| while_sending.delivered_per_sec / p.tps),
        pgbench,
    })
}

/// The `--url` values without trailing slashes; at least one.
fn api_urls(urls: &[String]) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(!urls.is_empty(), "--url needs at least one API base URL");
    Ok(urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect())
}

/// A deposit (even `n`) or withdrawal (odd) body; gateways named in turn when given.
fn payment_body(n: u64, gateways: &[String]) -> serde_json::Value {
    let mut body = serde_json::json!({
        "amount": 1050 + (n % 100),
        "currency": "USD",
        "customer": format!("bench_customer_{}", n % 1000),
    });
    if !gateways.is_empty() {
        let gateway = &gateways[((n / 2) % gateways.len() as u64) as usize];
        body["gateway"] = serde_json::Value::from(gateway.as_str());
    }
    body
}

/// Waits until a verified webhook arrived for each accepted payment, or `limit` passed.
async fn drain(receiver: &WebhookReceiver, starts: &Starts, expected: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    let bar = indicatif::ProgressBar::new(expected);
    bar.set_style(
        indicatif::ProgressStyle::with_template("waiting for webhooks {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let delivered = {
            let starts = starts.lock().map(|s| s.clone()).unwrap_or_default();
            let mut seen = std::collections::HashSet::new();
            for webhook in receiver.received() {
                if let Some(id) = webhook.transaction_id.as_ref() {
                    if webhook.verified && starts.contains_key(id) {
                        seen.insert(id.clone());
                    }
                }
            }
            seen.len() as u64
        };
        bar.set_position(delivered);
        if delivered >= expected || Instant::now() >= deadline {
            bar.finish_and_clear();
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the receiver got, matched with what was accepted.
struct Outcome {
    delivered: u64,
    repeated: u64,
    unverified: u64,
    by_status: BTreeMap<String, u64>,
    e2e_secs: f64,
    latencies: Latencies,
    /// When each delivered payment's first webhook came, since the load started.
    arrivals: Vec<Duration>,
}

impl Outcome {
    fn of(
        received: &[ReceivedWebhook],
        starts: &HashMap<String, Instant>,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let mut outcome = Outcome {
            delivered: 0,
            repeated: 0,
            unverified: 0,
            by_status: BTreeMap::new(),
            e2e_secs: 0.0,
            latencies: Latencies::new()?,
            arrivals: Vec::new(),
        };
        let mut first = std::collections::HashSet::new();
        let mut last_arrival = started;
        for webhook in received {
            if !webhook.verified {
                outcome.unverified += 1;
                continue;
            }
            let Some(id) = webhook.transaction_id.as_ref() else {
                continue;
            };
            let Some(start) = starts.get(id) else {
                continue; // the probe, or another run's payment
            };
            if webhook.repeat || !first.insert(id.clone()) {
                outcome.repeated += 1;
                continue;
            }
            outcome.delivered += 1;
            *outcome
                .by_status
                .entry(webhook.status.clone().unwrap_or_default())
                .or_default() += 1;
            outcome
                .latencies
                .record(webhook.received_at.saturating_duration_since(*start));
            last_arrival = last_arrival.max(webhook.received_at);
            outcome
                .arrivals
                .push(webhook.received_at.saturating_duration_since(started));
        }
        outcome.e2e_secs = last_arrival
            .saturating_duration_since(started)
            .as_secs_f64();
        Ok(outcome)
    }
}

/// The sandbox's total counters, or `None` when it cannot be asked (the report then says so).
async fn sandbox_stats(client: &reqwest::Client, sandbox_url: &str) -> Option<Stats> {
    let admin = AdminClient::with_client(sandbox_url, client.clone());
    admin.stats().await.ok().map(|report| report.total)
}

/// Seconds since the epoch, to tell bench merchants apart.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The summary table printed at the end.
pub fn print(r: &E2eReport) {
    let pct = |p: &Percentiles| {
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} ms",
            p.p50, p.p90, p.p99, p.max
        )
    };
    println!();
    println!(
        "paygate bench e2e ({} loop{}, {} connections, {} API{}, {} merchant{})",
        r.mode,
        r.target_rate
            .map(|t| format!(", target {t}/s"))
            .unwrap_or_default(),
        r.concurrency,
        r.apis.len(),
        if r.apis.len() == 1 { "" } else { "s in turn" },
        r.merchants,
        if r.merchants == 1 { "" } else { "s" }
    );
    println!("  sent for            {:>10.1} s", r.send_secs);
    println!(
        "  accepted            {:>10}   ({:.0}/s, {} errors, {} sent again)",
        r.accepted, r.accept_per_sec, r.accept_errors, r.resent
    );
    println!("  accept latency      {}", pct(&r.accept_latency_ms));
    println!(
        "  delivered           {:>10}   ({} missing, {} repeats, {} unverified)",
        r.delivered, r.missing, r.repeated_webhooks, r.unverified_webhooks
    );
    let statuses: Vec<String> = r
        .by_status
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!("  final statuses      {}", statuses.join(", "));
    println!(
        "  end to end          {:>10.0} payments/s over {:.1} s",
        r.e2e_per_sec, r.e2e_secs
    );
    println!(
        "  while sending       {:>10.0} payments/s delivered in its second half, {} accepted not yet delivered at its end",
        r.while_sending.delivered_per_sec, r.while_sending.backlog_at_end
    );
    println!("  accept→webhook      {}", pct(&r.e2e_latency_ms));
    match (
        r.sandbox_executions,
        r.sandbox_duplicates_suppressed,
        r.sandbox_callback_retries,
    ) {
        (Some(executions), Some(duplicates), Some(retries)) => println!(
            "  sandbox             {executions:>10} executions, {duplicates} repeats suppressed, {retries} callbacks sent again"
        ),
        _ => println!("  sandbox             (stats not reachable)"),
    }
    for (name, mib) in &r.peak_rss_mib {
        println!("  peak RSS            {mib:>10.1} MiB  {name}");
    }
    r.cpu.print(r.delivered, "payment");
    r.tcp.print("payment");
    stages::print(&r.stages);
    if let Some(statements) = &r.statements {
        statements.print();
    }
    match (&r.pgbench, r.ratio_to_pgbench) {
        (Some(p), Some(ratio)) => println!(
            "  pgbench -N -c {:<3}   {:>10.0} TPS → end to end is {:.3}× of it, {:.3}× while sending",
            p.clients,
            p.tps,
            ratio,
            r.sustained_ratio_to_pgbench.unwrap_or_default()
        ),
        _ => println!("  pgbench             (not run)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_to_each_api_in_turn() -> anyhow::Result<()> {
        let apis = api_urls(&["http://a/".to_owned(), "http://b".to_owned()])?;
        let failover = load::Failover::new(apis, GIVE_UP_AFTER)?;
        let picked: Vec<&str> = (0..4).map(|n| failover.url(n, 0)).collect();
        assert_eq!(picked, ["http://a", "http://b", "http://a", "http://b"]);
        assert!(api_urls(&[]).is_err());
        Ok(())
    }

    #[test]
    fn the_pace_while_sending_leaves_out_the_fill_and_the_drain() {
        let secs = |s: f64| Duration::from_secs_f64(s);
        // 10 s of sending: 4 arrivals in the first half (filling), 10 in the second, 6 after.
        let mut arrivals: Vec<Duration> = [1.0, 2.0, 3.0, 4.0].map(secs).to_vec();
        arrivals.extend((0..10).map(|n| secs(5.0 + f64::from(n) * 0.5)));
        arrivals.extend((0..6).map(|n| secs(11.0 + f64::from(n))));
        let pace = WhileSending::of(&arrivals, secs(10.0), 22);
        assert!((pace.delivered_per_sec - 2.0).abs() < 1e-9, "{pace:?}");
        // 14 delivered by the end of sending, 22 accepted: 8 behind.
        assert_eq!(pace.backlog_at_end, 8);
        // A pipeline that kept up leaves nothing behind; an empty window is no pace at all.
        assert_eq!(
            WhileSending::of(&arrivals, secs(30.0), 20).backlog_at_end,
            0
        );
        assert_eq!(
            WhileSending::of(&[], Duration::ZERO, 0).delivered_per_sec,
            0.0
        );
    }

    #[test]
    fn url_repeats_and_defaults_to_one_api() -> anyhow::Result<()> {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: E2eArgs,
        }
        let cli = Cli::try_parse_from(["e2e"])?;
        assert_eq!(cli.args.urls, ["http://127.0.0.1:8080"]);
        let cli = Cli::try_parse_from(["e2e", "--url", "http://x:1", "--url", "http://x:2"])?;
        assert_eq!(cli.args.urls, ["http://x:1", "http://x:2"]);
        Ok(())
    }
}
