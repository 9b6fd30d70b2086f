//! A merchant, its API key and one webhook endpoint, made in one commit, then funded with a
//! ledger top-up so that its withdrawals are covered: what `paygate dev` shows off with, what
//! `paygate bench e2e` and `paygate chaos` drive, and what the end-to-end tests use.

use anyhow::Context;
use paygate_core::db::webhooks::SigningSecret;
use paygate_core::db::{ledger, merchants, webhook_endpoints};
use paygate_core::domain::{MerchantId, Money};
use paygate_core::keyring::Keyring;
use sqlx::PgPool;

/// What was made. `api_key` is the only copy of the key in clear (only its hash is stored).
pub struct MerchantWithEndpoint {
    pub merchant_id: MerchantId,
    pub api_key: String,
    /// The endpoint's signing secret, for the receiver to verify with.
    pub secret: SigningSecret,
}

/// Creates merchant `name` with an API key and a webhook endpoint at `endpoint_url`, all or
/// nothing, then tops it up with `funds` (reference `initial funds`). The endpoint's secret
/// is stored sealed with `keyring`, which must be the pipeline's (`[secrets]`).
pub async fn create(
    pool: &PgPool,
    keyring: &Keyring,
    name: &str,
    endpoint_url: &str,
    funds: Money,
) -> anyhow::Result<MerchantWithEndpoint> {
    let mut tx = pool.begin().await.context("creating the merchant")?;
    let merchant = merchants::create(&mut *tx, name)
        .await
        .context("creating the merchant")?;
    let (_key_id, key) = merchants::create_api_key(&mut *tx, merchant.id)
        .await
        .context("creating the API key")?;
    let endpoint =
        webhook_endpoints::create(&mut *tx, keyring, merchant.id, endpoint_url, Some(name))
            .await
            .context("registering the webhook endpoint")?;
    tx.commit().await.context("creating the merchant")?;
    ledger::top_up(pool, merchant.id, funds, "initial funds")
        .await
        .context("funding the merchant")?;
    Ok(MerchantWithEndpoint {
        merchant_id: merchant.id,
        api_key: key.expose().to_owned(),
        secret: SigningSecret::from(&endpoint.secret),
    })
}

/// Funds enough for any load run: withdrawals are never refused for want of balance in a
/// benchmark or a fault run.
pub const LOAD_FUNDS: i64 = 1_000_000_000_000_000;

/// `minor` units of USD.
pub fn usd(minor: i64) -> anyhow::Result<Money> {
    Ok(Money::new(
        paygate_core::domain::Amount::new(minor)?,
        paygate_core::domain::Currency::parse("USD")?,
    ))
}
