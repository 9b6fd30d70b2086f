//! `paygate transactions …`: operator actions on one transaction.

use anyhow::Context;
use clap::{ArgGroup, Subcommand};
use paygate_core::config::Config;
use paygate_core::db;
use paygate_core::domain::{MerchantId, TransactionId};
use paygate_core::resolution::{self, Verdict};

#[derive(Subcommand)]
pub enum Action {
    /// Record what became of an `unresolved` payment, once you have learned it from the
    /// provider. Version-checked, audited (who, when, why, the previous state), and the
    /// merchant gets the `transaction.succeeded | failed` webhook.
    #[command(group(ArgGroup::new("verdict").required(true).args(["succeeded", "failed"])))]
    Resolve {
        /// The transaction id (`txn_…`).
        id: String,
        /// The provider executed it: the money moved.
        #[arg(long)]
        succeeded: bool,
        /// The provider did not execute it and will not.
        #[arg(long)]
        failed: bool,
        /// Why: what the provider said, and where (kept in the audit row).
        #[arg(long)]
        reason: String,
        /// Who decides (default: $USER).
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
    },
}

pub async fn run(action: Action, config: &Config) -> anyhow::Result<()> {
    let Action::Resolve {
        id,
        succeeded,
        failed: _,
        reason,
        actor,
    } = action;
    let id: TransactionId = id.parse().context("the transaction id")?;
    let verdict = if succeeded {
        Verdict::Succeeded
    } else {
        Verdict::Failed
    };
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    let done = resolution::resolve(&pool, id, verdict, &actor, &reason).await?;
    forget_cached(config, id, done.merchant_id).await;
    println!(
        "{} is now {} (version {}), resolved by {actor}",
        done.id, done.status, done.version
    );
    Ok(())
}

/// The API caches transactions briefly; drop the copy so merchants see the change at once.
/// Best effort: the cache expires by itself (`api.cache_ttl_ms`).
async fn forget_cached(config: &Config, id: TransactionId, merchant: MerchantId) {
    let Ok(client) = redis::Client::open(config.redis.url.as_str()) else {
        return;
    };
    if let Ok(mut cache) = client.get_connection_manager().await {
        paygate_core::cache_keys::invalidate_transaction(
            &mut cache,
            &config.redis.key_prefix,
            id,
            Some(merchant),
        )
        .await;
    }
}
