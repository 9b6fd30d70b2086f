//! `paygate merchants …`

use anyhow::Context;
use clap::Subcommand;
use paygate_core::config::Config;
use paygate_core::db::merchants::Limits;
use paygate_core::db::{self, merchants};
use paygate_core::domain::{ApiKeyId, Currency, GatewayName, MerchantId, Scope};

#[derive(Subcommand)]
pub enum Action {
    /// Create a merchant and its first API key. The key is printed once and never again.
    Create {
        #[arg(long)]
        name: String,
    },
    /// Issue another API key for an existing merchant (e.g. to rotate, or a key that may do
    /// less). Without --scope the key may do everything.
    #[command(alias = "add-key")]
    CreateKey {
        #[arg(long)]
        merchant: String,
        /// What the key may do: payments:write, payouts:write, read, webhooks:manage
        /// (repeat, or separate with commas).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Set a merchant's limits in one currency (omit a flag to remove that limit).
    SetLimits {
        #[arg(long)]
        merchant: String,
        #[arg(long)]
        currency: String,
        /// Largest amount of one deposit or withdrawal, in minor units.
        #[arg(long)]
        max_amount: Option<i64>,
        /// Most that withdrawals accepted in one UTC day may add up to, in minor units.
        #[arg(long)]
        daily_payout_limit: Option<i64>,
    },
    /// Restrict a merchant to some gateways (repeat --gateway), or allow all again (--all).
    SetGateways {
        #[arg(long)]
        merchant: String,
        #[arg(
            long = "gateway",
            value_delimiter = ',',
            required_unless_present = "all"
        )]
        gateways: Vec<String>,
        #[arg(long, conflicts_with = "gateways")]
        all: bool,
    },
    /// Revoke an API key by its id (`key_…`); requests with it are refused from now on.
    RevokeKey {
        #[arg(long)]
        key: String,
    },
}

pub async fn run(action: Action, config: &Config) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    match action {
        Action::Create { name } => {
            let name = name.trim();
            anyhow::ensure!(
                (1..=200).contains(&name.chars().count()),
                "--name must be 1 to 200 characters"
            );
            let mut tx = pool.begin().await?;
            let merchant = merchants::create(&mut *tx, name).await?;
            let (key_id, key) = merchants::create_api_key(&mut *tx, merchant.id).await?;
            tx.commit().await?;
            println!("merchant  {}  ({})", merchant.id, merchant.name);
            println!("key id    {key_id}");
            println!("api key   {}", key.expose());
            println!("Store the API key now: only its hash is kept, it cannot be shown again.");
        }
        Action::CreateKey { merchant, scopes } => {
            let id = existing(&pool, &merchant).await?;
            let scopes = scopes
                .iter()
                .map(|s| s.trim().parse::<Scope>())
                .collect::<Result<Vec<_>, _>>()
                .context("--scope (one of payments:write, payouts:write, read, webhooks:manage)")?;
            let (key_id, key) = merchants::create_scoped_api_key(&pool, id, &scopes).await?;
            let shown: Vec<&str> = if scopes.is_empty() {
                &Scope::ALL[..]
            } else {
                &scopes[..]
            }
            .iter()
            .map(|s| s.as_str())
            .collect();
            println!("key id    {key_id}");
            println!("scopes    {}", shown.join(", "));
            println!("api key   {}", key.expose());
        }
        Action::SetLimits {
            merchant,
            currency,
            max_amount,
            daily_payout_limit,
        } => {
            let id = existing(&pool, &merchant).await?;
            let currency = Currency::parse(&currency).context("--currency")?;
            for (flag, value) in [
                ("--max-amount", max_amount),
                ("--daily-payout-limit", daily_payout_limit),
            ] {
                anyhow::ensure!(
                    value.is_none_or(|v| v > 0),
                    "{flag} must be a positive number of minor units"
                );
            }
            let limits = Limits {
                max_amount,
                daily_payout_limit,
            };
            merchants::set_limits(&pool, id, currency, limits).await?;
            println!("limits of {id} in {}: {limits:?}", currency.code());
        }
        Action::SetGateways {
            merchant,
            gateways,
            all,
        } => {
            let id = existing(&pool, &merchant).await?;
            let gateways = if all {
                None
            } else {
                let names = gateways
                    .iter()
                    .map(|g| GatewayName::parse(g.trim()))
                    .collect::<Result<Vec<_>, _>>()
                    .context("--gateway")?;
                Some(names)
            };
            merchants::set_enabled_gateways(&pool, id, gateways.as_deref()).await?;
            match gateways {
                None => println!("{id} may use every gateway"),
                Some(names) => {
                    let names: Vec<&str> = names.iter().map(GatewayName::as_str).collect();
                    println!("{id} may use only: {}", names.join(", "));
                }
            }
        }
        Action::RevokeKey { key } => {
            let id: ApiKeyId = key.parse().with_context(|| "--key")?;
            if merchants::revoke_api_key(&pool, id).await? {
                println!("revoked {id}");
            } else {
                anyhow::bail!("no live key {id}");
            }
        }
    }
    Ok(())
}

/// The merchant a `--merchant` flag names, which must exist.
async fn existing(pool: &sqlx::PgPool, flag: &str) -> anyhow::Result<MerchantId> {
    let id: MerchantId = flag.parse().with_context(|| "--merchant")?;
    anyhow::ensure!(
        merchants::get(pool, id).await?.is_some(),
        "no merchant {id}"
    );
    Ok(id)
}
