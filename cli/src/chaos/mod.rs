//! `paygate chaos`: faults under load on the real topology, checked end to end.
//!
//! It starts its own Postgres, Redis and tansu on free ports ([`infra`]), the sandbox and
//! `--instances` of each paygate service with `scripts/up` against them ([`topology`]),
//! then runs one phase per fault
//! ([`fault`]): a fresh merchant whose webhook endpoint is a receiver in this process,
//! open-loop load at `--rate` for `--duration` seconds spread round-robin over the API
//! instances (a create that gets no answer is sent again with the same Idempotency-Key to
//! the next instance, as a client behind a load balancer would), the fault `--fault-at`
//! seconds in,
//! then a drain until every transaction is terminal with its webhook (or `--drain-secs`).
//! Each phase is judged ([`verdict`]): accepted = terminal = webhooks delivered = provider
//! executions (sandbox `/_admin/stats`), none twice, none stuck, and the recovery time.
//! Everything it started is stopped at the end (`--keep` leaves it running); the shared
//! servers on 5432/6379/9092 are never touched.

pub mod fault;
pub mod infra;
pub mod topology;
pub mod verdict;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use paygate_core::config::Config;
use paygate_core::db;
use paygate_sandbox_admin::AdminClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bench::load::{self, Failover, LoadSpec, Recorder};
use crate::merchant_setup;
use crate::receiver::{Logging, WebhookReceiver, RECEIVER_PATH};
use fault::Fault;
use infra::{Infra, Tools};
use topology::{Instance, Service, Topology};
use verdict::{Observed, Verdict};

#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// The quick form for scripts/test: an immediate kill of the payment processor and a
    /// broker restart that comes back empty, at a low rate (unless --only/--rate/--duration
    /// say otherwise).
    #[arg(long)]
    pub short: bool,
    /// Only these faults (comma-separated names: kill-<service>-immediate|late,
    /// kill-one-of-each, redis, postgres, broker).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Instances of each paygate service (scripts/up's TOPOLOGY_INSTANCES). With more than
    /// one, --short's plan is just kill-one-of-each, and the full plan ends with it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub instances: u16,
    /// Payments per second (open loop). Default 100, or 20 with --short.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds of load per phase. Default 30, or 10 with --short.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Seconds into the load when the fault comes. Default 10, or 4 with --short.
    #[arg(long)]
    pub fault_at: Option<u64>,
    /// After the load, how long to wait for every transaction's webhook.
    #[arg(long, default_value_t = 120)]
    pub drain_secs: u64,
    /// A phase whose recovery takes longer fails.
    #[arg(long, default_value_t = 30.0)]
    pub max_recovery_secs: f64,
    /// Build and run the release binaries (scripts/up --release).
    #[arg(long)]
    pub release: bool,
    /// Run the workers with dynamic group membership (TOPOLOGY_INSTANCE_PREFIX empty)
    /// instead of scripts/up's static membership ids, to compare.
    #[arg(long)]
    pub dynamic_membership: bool,
    /// The repository (where scripts/up is).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Leave the servers and the topology running at the end.
    #[arg(long)]
    pub keep: bool,
    /// Write the verdicts as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Every phase's verdict, and whether the run kept every promise.
#[derive(Debug, serde::Serialize)]
pub struct ChaosReport {
    /// Instances of each service.
    pub instances: u16,
    pub rate: u64,
    pub duration_secs: u64,
    pub fault_at_secs: u64,
    pub max_recovery_secs: f64,
    pub verdicts: Vec<Verdict>,
    /// Per fault, what went wrong (empty: passed).
    pub problems: BTreeMap<String, Vec<String>>,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.problems.values().all(Vec::is_empty)
    }
}

#[derive(Debug)]
struct Plan {
    faults: Vec<Fault>,
    instances: u16,
    rate: u64,
    duration: Duration,
    fault_at: Duration,
}

fn plan(args: &ChaosArgs) -> anyhow::Result<Plan> {
    let base = Fault::plan(args.short, args.instances);
    let faults = if args.only.is_empty() {
        base
    } else {
        let all = Fault::known();
        let mut chosen = Vec::new();
        for name in &args.only {
            let Some(fault) = all.iter().find(|f| f.name() == *name) else {
                let names: Vec<String> = all.iter().map(Fault::name).collect();
                bail!("no fault {name:?}; the faults are {}", names.join(", "));
            };
            chosen.push(*fault);
        }
        chosen
    };
    let (rate, duration, fault_at) = if args.short {
        (20, 10, 4)
    } else {
        (100, 30, 10)
    };
    let plan = Plan {
        faults,
        instances: args.instances,
        rate: args.rate.unwrap_or(rate),
        duration: Duration::from_secs(args.duration.unwrap_or(duration)),
        fault_at: Duration::from_secs(args.fault_at.unwrap_or(fault_at)),
    };
    anyhow::ensure!(plan.rate >= 1, "--rate must be at least 1");
    anyhow::ensure!(
        plan.fault_at < plan.duration,
        "--fault-at must come before the end of --duration"
    );
    Ok(plan)
}

/// Runs the suite; the report says whether it passed.
pub async fn run(args: ChaosArgs) -> anyhow::Result<ChaosReport> {
    let plan = plan(&args)?;
    let root = std::fs::canonicalize(&args.root)
        .with_context(|| format!("--root {}", args.root.display()))?;
    if !root.join("scripts").join("up").is_file() {
        bail!(
            "{} has no scripts/up (run from the repository, or pass --root)",
            root.display()
        );
    }
    let dir = root.join("target").join("chaos");
    std::fs::create_dir_all(&dir)?;
    let _lock = RunLock::take(&dir.join("run.pid"))?;
    let tools = Tools::discover()?;
    eprintln!("paygate chaos: starting Postgres, Redis and tansu on free ports");
    let mut infra = Infra::start(tools, &dir.join("servers")).await?;
    let servers = BTreeMap::from([
        ("PAYGATE_DATABASE_URL".to_owned(), infra.database_url()),
        ("PAYGATE_REDIS_URL".to_owned(), infra.redis_url()),
        ("PAYGATE_KAFKA_BROKERS".to_owned(), infra.brokers()),
    ]);
    let mut servers = servers;
    servers.insert(
        "TOPOLOGY_INSTANCE_PREFIX".into(),
        if args.dynamic_membership {
            ""
        } else {
            "chaos-"
        }
        .into(),
    );
    let topology = Topology::new(
        &root,
        &dir.join("topology"),
        args.release,
        plan.instances,
        servers,
    )?;
    eprintln!(
        "paygate chaos: {}scripts/up{} (Postgres :{}, Redis :{}, tansu :{}; logs in {})",
        if plan.instances > 1 {
            format!("TOPOLOGY_INSTANCES={} ", plan.instances)
        } else {
            String::new()
        },
        if args.release { " --release" } else { "" },
        infra.pg_port,
        infra.redis_port,
        infra.kafka_port,
        dir.join("topology").join("logs").display()
    );
    let outcome = match topology.up().await {
        Ok(()) => run_phases(&plan, &args, &mut infra, &topology).await,
        Err(error) => Err(error),
    };
    if args.keep {
        eprintln!("paygate chaos: --keep: the topology and its servers keep running");
        std::mem::forget(infra);
    } else {
        topology.down().await;
        infra.stop().await;
    }
    outcome
}

async fn run_phases(
    plan: &Plan,
    args: &ChaosArgs,
    infra: &mut Infra,
    topology: &Topology,
) -> anyhow::Result<ChaosReport> {
    let mut config = Config::default();
    config.database.url = infra.database_url();
    let pool = db::connect(&config.database)
        .await
        .context("connecting to the chaos Postgres")?;
    let client = load::client(64)?;
    let sandbox = AdminClient::with_client(topology.sandbox_url.clone(), client.clone());
    let mut report = ChaosReport {
        instances: plan.instances,
        rate: plan.rate,
        duration_secs: plan.duration.as_secs(),
        fault_at_secs: plan.fault_at.as_secs(),
        max_recovery_secs: args.max_recovery_secs,
        verdicts: Vec::new(),
        problems: BTreeMap::new(),
    };
    for fault in &plan.faults {
        eprintln!("paygate chaos: {fault}");
        let mut problems = Vec::new();
        if let Err(error) = topology.wait_ready(&client, Duration::from_secs(90)).await {
            problems.push(format!("before the fault: {error:#}"));
        }
        let verdict = phase(plan, args, *fault, infra, topology, &pool, &sandbox).await?;
        problems.extend(verdict.problems(args.max_recovery_secs));
        eprintln!(
            "  accepted {} (retried {}) · terminal {} · webhooks {} · executions {} · lost {} · twice {} · stuck {} · recovery {} · slowest {}",
            verdict.accepted,
            verdict.create_retries,
            verdict.terminal,
            verdict.webhooks,
            verdict.executions,
            verdict.lost,
            verdict.executed_twice,
            verdict.stuck,
            recovery_text(verdict.recovery_secs),
            recovery_text(verdict.slowest_secs)
        );
        for problem in &problems {
            eprintln!("  PROBLEM: {problem}");
        }
        report.problems.insert(verdict.fault.clone(), problems);
        report.verdicts.push(verdict);
    }
    // Readiness after the last fault is part of recovering from it.
    if let Err(error) = topology.wait_ready(&client, Duration::from_secs(90)).await {
        report
            .problems
            .entry("after the run".into())
            .or_default()
            .push(format!("{error:#}"));
    }
    pool.close().await;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}

/// One fault under load, drained and judged.
async fn phase(
    plan: &Plan,
    args: &ChaosArgs,
    fault: Fault,
    infra: &mut Infra,
    topology: &Topology,
    pool: &sqlx::PgPool,
    sandbox: &AdminClient,
) -> anyhow::Result<Verdict> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let receiver_url = format!("http://{}{RECEIVER_PATH}", listener.local_addr()?);
    let name = format!("chaos {} {}", fault.name(), uuid::Uuid::new_v4().simple());
    // scripts/up's topology (scripts/topology.toml) seals with the public development key.
    let keyring = paygate_core::config::SecretsConfig::insecure_dev().keyring()?;
    let merchant = merchant_setup::create(
        pool,
        &keyring,
        &name,
        &receiver_url,
        merchant_setup::usd(merchant_setup::LOAD_FUNDS)?,
    )
    .await?;
    let stop = CancellationToken::new();
    let receiver = WebhookReceiver::new(merchant.secret, Logging::Quiet);
    let serving = {
        let (receiver, stop) = (receiver.clone(), stop.clone());
        tokio::spawn(async move { receiver.serve(listener, stop).await })
    };
    let crashes_before = topology.crashes();
    let before = sandbox
        .stats()
        .await
        .context("sandbox /_admin/stats")?
        .total;

    let accepted: Accepted = Arc::new(Mutex::new(HashMap::new()));
    let recorder = Arc::new(Recorder::new()?);
    let retries = Arc::new(AtomicU64::new(0));
    let failover = Failover::new(topology.api_urls.clone(), CLIENT_GIVES_UP_AFTER)?;
    let load = spawn_load(
        plan,
        failover,
        &merchant.api_key,
        &accepted,
        &recorder,
        &retries,
    )?;

    tokio::time::sleep(plan.fault_at).await;
    let fault_at = apply(fault, infra, topology).await;
    let load_result = load.await;
    let fault_at = fault_at?;
    load_result.context("the load task")?;

    let observed = drain(
        pool,
        merchant.merchant_id,
        &receiver,
        &accepted,
        Duration::from_secs(args.drain_secs),
    )
    .await?;
    stop.cancel();
    let _ = serving.await;
    let after = sandbox
        .stats()
        .await
        .context("sandbox /_admin/stats")?
        .total;
    let observed = Observed {
        create_errors: recorder.errors(),
        create_retries: retries.load(Ordering::Relaxed),
        executions: after.executions.saturating_sub(before.executions),
        duplicates_suppressed: after
            .duplicates_suppressed
            .saturating_sub(before.duplicates_suppressed),
        ..observed
    };
    if let Some(error) = recorder.first_error() {
        eprintln!("  {} creates failed; first: {error}", recorder.errors());
    }
    let mut verdict = Verdict::of(fault.name(), &observed, fault_at);
    verdict.crashes = topology.crashes().saturating_sub(crashes_before);
    Ok(verdict)
}

/// The id of every payment accepted (202) and when.
type Accepted = Arc<Mutex<HashMap<String, Instant>>>;

/// How long a merchant's client keeps sending one create (same Idempotency-Key, the next
/// API instance each time) before it gives up: past a restarted instance's start-up.
const CLIENT_GIVES_UP_AFTER: Duration = Duration::from_secs(20);

/// Open-loop load of the plan's rate for its duration: alternating deposits and
/// withdrawals of the merchant, round-robin over the API instances with failover
/// ([`Failover`]), each 202's id recorded in `accepted`, each re-send counted in `retries`.
fn spawn_load(
    plan: &Plan,
    failover: Failover,
    key: &str,
    accepted: &Accepted,
    recorder: &Arc<Recorder>,
    retries: &Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<Duration>> {
    let spec = LoadSpec {
        duration: plan.duration,
        concurrency: 64,
        rate: Some(plan.rate),
    };
    let (accepted, recorder) = (accepted.clone(), recorder.clone());
    let client = load::client(64)?;
    let (failover, key, retries) = (Arc::new(failover), key.to_owned(), retries.clone());
    let send = move |n: u64, _start: Instant| {
        let (client, failover, key, accepted, retries) = (
            client.clone(),
            failover.clone(),
            key.clone(),
            accepted.clone(),
            retries.clone(),
        );
        async move {
            let path = if n % 2 == 0 {
                "deposits"
            } else {
                "withdrawals"
            };
            let body = serde_json::json!({
                "amount": 1000 + (n % 100),
                "currency": "USD",
                "customer": format!("chaos_{}", n % 1000),
            });
            // By pairs: each API instance gets deposits and withdrawals alike.
            let created = failover.create(&client, n / 2, path, &key, &body).await?;
            retries.fetch_add(u64::from(created.retries), Ordering::Relaxed);
            let created = created.body;
            let id = created["id"]
                .as_str()
                .ok_or_else(|| format!("202 without an id: {created}"))?
                .to_owned();
            if let Ok(mut accepted) = accepted.lock() {
                accepted.insert(id, Instant::now());
            }
            Ok(())
        }
    };
    Ok(tokio::spawn(async move {
        load::drive(spec, &recorder, String::new, send).await
    }))
}

/// Applies the fault; returns when it struck (a kill: the SIGKILL; a server: its stop).
async fn apply(fault: Fault, infra: &mut Infra, topology: &Topology) -> anyhow::Result<Instant> {
    let at = Instant::now();
    match fault {
        Fault::Kill {
            service,
            restart_after,
        } => {
            let launch = topology.kill(Instance::first(service)).await?;
            tokio::time::sleep(restart_after).await;
            topology.restart(&launch)?;
        }
        Fault::KillOneOfEach { restart_after } => {
            let number = topology.instances();
            let [a, b, c, d] = Service::ALL.map(|service| Instance { service, number });
            // All at once: each kill reads its launch and signals before any waiting.
            let (a, b, c, d) = tokio::join!(
                topology.kill(a),
                topology.kill(b),
                topology.kill(c),
                topology.kill(d)
            );
            let launches = [a, b, c, d];
            tokio::time::sleep(restart_after).await;
            let mut first_error = None;
            for launch in launches {
                // Restart every one that was killed even when another kill failed.
                match launch.and_then(|launch| topology.restart(&launch)) {
                    Ok(()) => {}
                    Err(error) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
            if let Some(error) = first_error {
                return Err(error);
            }
        }
        Fault::Redis => infra.restart_redis(fault::SERVER_DOWN).await?,
        Fault::Postgres => infra.restart_postgres().await?,
        Fault::Broker => infra.restart_broker(fault::SERVER_DOWN).await?,
    }
    Ok(at)
}

/// Waits until every transaction of the merchant is terminal with its webhook, or `limit`.
async fn drain(
    pool: &sqlx::PgPool,
    merchant: paygate_core::domain::MerchantId,
    receiver: &WebhookReceiver,
    accepted: &Mutex<HashMap<String, Instant>>,
    limit: Duration,
) -> anyhow::Result<Observed> {
    let deadline = Instant::now() + limit;
    loop {
        let rows = transactions_of(pool, merchant).await;
        let mut first_webhook: HashMap<String, Instant> = HashMap::new();
        let mut repeated_webhooks = 0_u64;
        for webhook in receiver.received() {
            let Some(id) = webhook.transaction_id.filter(|_| webhook.verified) else {
                continue;
            };
            match first_webhook.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => repeated_webhooks += 1,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(webhook.received_at);
                }
            }
        }
        let accepted = accepted
            .lock()
            .map(|a| a.clone())
            .map_err(|_| anyhow::anyhow!("accepted lock poisoned"))?;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) if Instant::now() < deadline => {
                eprintln!("  reading transactions: {error:#}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let done = accepted.keys().all(|id| rows.contains_key(id))
            && rows
                .iter()
                .all(|(id, terminal)| *terminal && first_webhook.contains_key(id));
        if done || Instant::now() >= deadline {
            return Ok(Observed {
                accepted,
                rows,
                first_webhook,
                repeated_webhooks,
                ..Observed::default()
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The merchant's transactions: public id → terminal.
async fn transactions_of(
    pool: &sqlx::PgPool,
    merchant: paygate_core::domain::MerchantId,
) -> anyhow::Result<HashMap<String, bool>> {
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, status::text FROM transactions WHERE merchant_id = $1")
            .bind(merchant)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, status)| {
            let id = paygate_core::domain::TransactionId::from_uuid(id).to_string();
            (id, matches!(status.as_str(), "succeeded" | "failed"))
        })
        .collect())
}

/// One run at a time per repository: a second one would wipe the first one's Postgres
/// directory under it. The pid file names the holder; a dead holder's file is taken over.
struct RunLock {
    path: PathBuf,
}

impl RunLock {
    fn take(path: &std::path::Path) -> anyhow::Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if pid != std::process::id() && PathBuf::from(format!("/proc/{pid}")).exists() {
                    bail!(
                        "another paygate chaos (pid {pid}) is running in this repository ({})",
                        path.display()
                    );
                }
            }
        }
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recovery_text(secs: Option<f64>) -> String {
    secs.map_or_else(|| "never".to_owned(), |s| format!("{s:.1} s"))
}

/// The table (Markdown, as in docs/RELIABILITY.md).
pub fn print(report: &ChaosReport) {
    println!();
    println!(
        "paygate chaos: {} instance{} of each service, {} payments/s for {} s per phase, fault at {} s",
        report.instances,
        if report.instances == 1 { "" } else { "s" },
        report.rate,
        report.duration_secs,
        report.fault_at_secs
    );
    println!();
    println!("| fault | accepted | creates retried | create errors | terminal | webhooks | executions | lost | executed twice | stuck | repeated webhooks | recovery (s) | slowest accept→webhook (s) | crashes restarted |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for v in &report.verdicts {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            v.fault,
            v.accepted,
            v.create_retries,
            v.create_errors,
            v.terminal,
            v.webhooks,
            v.executions,
            v.lost,
            v.executed_twice,
            v.stuck,
            v.repeated_webhooks,
            v.recovery_secs
                .map_or_else(|| "never".to_owned(), |s| format!("{s:.1}")),
            v.slowest_secs
                .map_or_else(|| "never".to_owned(), |s| format!("{s:.1}")),
            v.crashes
        );
    }
    println!();
    for (fault, problems) in &report.problems {
        for problem in problems {
            println!("FAILED {fault}: {problem}");
        }
    }
    if report.passed() {
        println!("paygate chaos: every fault recovered: nothing lost, twice or stuck");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ChaosArgs,
    }

    fn plan_of(argv: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("chaos").chain(argv.iter().copied()))?;
        plan(&cli.args)
    }

    fn names(plan: &Plan) -> Vec<String> {
        plan.faults.iter().map(Fault::name).collect()
    }

    #[test]
    fn short_with_two_instances_is_just_the_kill_of_one_of_each() -> anyhow::Result<()> {
        let plan = plan_of(&["--short", "--instances", "2"])?;
        assert_eq!(names(&plan), ["kill-one-of-each"]);
        assert_eq!(
            (plan.instances, plan.rate, plan.duration.as_secs()),
            (2, 20, 10)
        );
        Ok(())
    }

    #[test]
    fn one_instance_is_the_default_and_keeps_the_short_plan() -> anyhow::Result<()> {
        let plan = plan_of(&["--short"])?;
        assert_eq!(plan.instances, 1);
        assert_eq!(names(&plan), ["kill-payment-processor-immediate", "broker"]);
        Ok(())
    }

    #[test]
    fn only_can_name_the_kill_of_one_of_each_and_refuses_unknown_faults() -> anyhow::Result<()> {
        let plan = plan_of(&["--only", "kill-one-of-each,broker"])?;
        assert_eq!(names(&plan), ["kill-one-of-each", "broker"]);
        assert!(plan_of(&["--only", "kill-everything"]).is_err());
        Ok(())
    }

    #[test]
    fn zero_instances_are_refused() {
        assert!(plan_of(&["--instances", "0"]).is_err());
    }
}
