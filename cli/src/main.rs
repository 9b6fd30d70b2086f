//! `paygate`: one binary for operators and developers.
//!
//! - `paygate migrate`: apply the embedded database migrations;
//! - `paygate topics create`: create the Kafka topics (brokers may not auto-create);
//! - `paygate merchants create --name …`: create a merchant and print its API key once;
//! - `paygate merchants revoke-key --key …`: revoke a key.

mod merchants;

use clap::{Parser, Subcommand};
use paygate_core::config::Config;

#[derive(Parser)]
#[command(name = "paygate", version, about = "paygate: a Kafka-driven payment gateway pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply database migrations to PAYGATE_DATABASE_URL.
    Migrate,
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
        Command::Migrate => {
            let pool = paygate_core::db::connect(&config.database).await?;
            paygate_core::db::migrate(&pool).await?;
            println!("migrations applied to {}", redact(&config.database.url));
        }
        Command::Topics { action: TopicsAction::Create } => {
            paygate_core::bus::ensure_topics(&config.kafka).await?;
            println!(
                "topics {}.* ready on {} ({} partitions)",
                config.kafka.topic_prefix, config.kafka.brokers, config.kafka.partitions
            );
        }
        Command::Merchants { action } => merchants::run(action, &config).await?,
    }
    Ok(())
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
