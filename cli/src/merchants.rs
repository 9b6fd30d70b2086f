//! `paygate merchants …`

use anyhow::Context;
use clap::Subcommand;
use paygate_core::config::Config;
use paygate_core::db::{self, merchants};
use paygate_core::domain::ApiKeyId;

#[derive(Subcommand)]
pub enum Action {
    /// Create a merchant and its first API key. The key is printed once and never again.
    Create {
        #[arg(long)]
        name: String,
    },
    /// Issue another API key for an existing merchant (e.g. to rotate).
    AddKey {
        #[arg(long)]
        merchant: String,
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
        Action::AddKey { merchant } => {
            let id = merchant.parse().with_context(|| "--merchant")?;
            anyhow::ensure!(
                merchants::get(&pool, id).await?.is_some(),
                "no merchant {id}"
            );
            let (key_id, key) = merchants::create_api_key(&pool, id).await?;
            println!("key id    {key_id}");
            println!("api key   {}", key.expose());
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
