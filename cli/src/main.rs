//! `paygate`: one binary for operators and developers.
//!
//! - `paygate dev`: the whole pipeline in this process (see `paygate_cli::dev`);
//! - `paygate migrate`: apply the embedded database migrations, then seal any webhook secret
//!   still stored in clear (`[secrets]` is required);
//! - `paygate secrets rotate-key`: re-seal every webhook secret under the current key;
//! - `paygate topics create`: create the Kafka topics (brokers may not auto-create);
//! - `paygate merchants create --name …`: create a merchant and print its API key once;
//! - `paygate merchants create-key --merchant … [--scope …]`, `revoke-key --key …`,
//!   `set-limits`, `set-gateways`: keys, limits and gateways of a merchant;
//! - `paygate ledger top-up <merchant> <amount> <currency> --reference …`, `paygate ledger
//!   check`: fund a merchant by hand; verify every invariant of the ledger;
//! - `paygate transactions resolve <id> --succeeded|--failed --reason …`: settle an
//!   `unresolved` payment by hand, audited;
//! - `paygate bench accept --key …`: accept throughput and latency of a running API;
//! - `paygate bench e2e`: the whole running pipeline, accept to signed webhook;
//! - `paygate chaos [--short] [--instances N]`: faults under load on the real topology (`paygate_cli::chaos`).

mod ledger;
mod merchants;
mod secrets;
mod transactions;
mod users;

use std::time::Duration;

use clap::{Parser, Subcommand};
use paygate_cli::dev::{self, redact};
use paygate_core::config::Config;

/// How long `paygate dev` waits for its services to stop after Ctrl-C.
const DEV_STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "paygate",
    version,
    about = "paygate: a Kafka-driven payment gateway pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in this process for a quick look: migrations, the four services, the
    /// sandbox providers, an embedded Kafka broker (unless PAYGATE_KAFKA_BROKERS is set), a
    /// demo merchant and a demo webhook receiver. Ctrl-C stops it.
    Dev {
        /// Port of the API.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port of the sandbox providers (and their admin API).
        #[arg(long, default_value_t = 8090)]
        sandbox_port: u16,
        /// Port of the demo webhook receiver.
        #[arg(long, default_value_t = 8099)]
        receiver_port: u16,
    },
    /// Apply database migrations to PAYGATE_DATABASE_URL, then seal every webhook signing
    /// secret still stored in clear with the configured keyring ([secrets]).
    Migrate,
    /// Webhook signing secrets at rest: re-seal them under a new key.
    Secrets {
        #[command(subcommand)]
        action: secrets::Action,
    },
    /// Kafka topic administration.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Merchant and API key administration.
    Merchants {
        #[command(subcommand)]
        action: merchants::Action,
    },
    /// The ledger: top-ups and the invariant check.
    Ledger {
        #[command(subcommand)]
        action: ledger::Action,
    },
    /// Operator actions on transactions.
    Transactions {
        #[command(subcommand)]
        action: transactions::Action,
    },
    /// People who sign in to the web console (`/console`).
    Users {
        #[command(subcommand)]
        action: users::Action,
    },
    /// Benchmarks against a running paygate (e.g. `paygate dev` in another terminal).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Faults under load on the real topology (scripts/up on private Postgres, Redis and
    /// tansu): kills and restarts each service and server, checks that nothing is lost,
    /// executed twice or stuck, and prints each recovery time. Exits non-zero on any loss.
    Chaos(paygate_cli::chaos::ChaosArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// `POST /v1/deposits` throughput and accept latency (p50/p90/p99/max).
    Accept(paygate_cli::bench::AcceptArgs),
    /// The whole pipeline: payments/s and accept→webhook latency at a receiver of its own,
    /// sandbox executions, peak RSS per service, and `pgbench -N` on the same Postgres.
    E2e(paygate_cli::bench::E2eArgs),
    /// The Kafka broker alone: its CPU per message and a consumer's wait, for each number
    /// of partitions and fetch wait, with paygate's own producer and consumer settings.
    Broker(paygate_cli::bench::broker::BrokerArgs),
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create the four topics with the configured partitions (existing ones are kept).
    Create,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("paygate: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    paygate_core::telemetry::init(&config.log);
    match run(cli.command, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("paygate: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Dev {
            port,
            sandbox_port,
            receiver_port,
        } => {
            let options = dev::DevOptions {
                api_port: port,
                sandbox_port,
                receiver_port,
                embedded_kafka: std::env::var_os("PAYGATE_KAFKA_BROKERS").is_none(),
            };
            let shutdown = paygate_core::shutdown::on_signal();
            // Ctrl-C during start-up abandons it (nothing is spawned before it completes).
            let stack = tokio::select! {
                started = dev::start(config, options, shutdown.clone()) => started?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            println!("{}", stack.banner());
            stack.wait(DEV_STOP_GRACE).await?;
        }
        Command::Migrate => {
            let keyring = config.secrets.keyring()?;
            let pool = paygate_core::db::connect(&config.database).await?;
            paygate_core::db::migrate(&pool).await?;
            println!("migrations applied to {}", redact(&config.database.url));
            secrets::seal_after_migrate(&pool, &keyring).await?;
        }
        Command::Secrets { action } => secrets::run(action, &config).await?,
        Command::Topics {
            action: TopicsAction::Create,
        } => {
            paygate_core::bus::ensure_topics(&config.kafka).await?;
            println!(
                "topics {}.* ready on {} ({} partitions)",
                config.kafka.topic_prefix, config.kafka.brokers, config.kafka.partitions
            );
        }
        Command::Merchants { action } => merchants::run(action, &config).await?,
        Command::Transactions { action } => transactions::run(action, &config).await?,
        Command::Users { action } => users::run(action, &config).await?,
        Command::Ledger { action } => ledger::run(action, &config).await?,
        Command::Bench {
            which: BenchCommand::Accept(args),
        } => {
            let json = args.json.clone();
            let report = paygate_cli::bench::accept(args, &config.database.url).await?;
            paygate_cli::bench::print(&report);
            write_json(json, &report)?;
        }
        Command::Bench {
            which: BenchCommand::E2e(args),
        } => {
            let json = args.json.clone();
            let report = paygate_cli::bench::e2e::e2e(args, &config).await?;
            paygate_cli::bench::e2e::print(&report);
            write_json(json, &report)?;
        }
        Command::Bench {
            which: BenchCommand::Broker(args),
        } => {
            let json = args.json.clone();
            let report = paygate_cli::bench::broker::broker(args, &config.kafka).await?;
            paygate_cli::bench::broker::print(&report);
            write_json(json, &report)?;
        }
        Command::Chaos(args) => {
            let report = paygate_cli::chaos::run(args).await?;
            paygate_cli::chaos::print(&report);
            anyhow::ensure!(
                report.passed(),
                "paygate chaos: a fault was not recovered from"
            );
        }
    }
    Ok(())
}

fn write_json(
    path: Option<std::path::PathBuf>,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(&path, serde_json::to_vec_pretty(report)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!("  written to {}", path.display());
    }
    Ok(())
}
