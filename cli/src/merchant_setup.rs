//! A merchant, its API key and one webhook endpoint, made in one commit: what `paygate dev`
//! shows off with, what `paygate bench e2e` drives, and what the end-to-end tests use.

use anyhow::Context;
use paygate_core::db::webhooks::SigningSecret;
use paygate_core::db::{merchants, webhook_endpoints};
use paygate_core::domain::MerchantId;
use sqlx::PgPool;

/// What was made. `api_key` is the only copy of the key in clear (only its hash is stored).
pub struct MerchantWithEndpoint {
    pub merchant_id: MerchantId,
    pub api_key: String,
    /// The endpoint's signing secret, for the receiver to verify with.
    pub secret: SigningSecret,
}

/// Creates merchant `name` with an API key and a webhook endpoint at `endpoint_url`, all or
/// nothing.
pub async fn create(
    pool: &PgPool,
    name: &str,
    endpoint_url: &str,
) -> anyhow::Result<MerchantWithEndpoint> {
    let mut tx = pool.begin().await.context("creating the merchant")?;
    let merchant = merchants::create(&mut *tx, name)
        .await
        .context("creating the merchant")?;
    let (_key_id, key) = merchants::create_api_key(&mut *tx, merchant.id)
        .await
        .context("creating the API key")?;
    let endpoint = webhook_endpoints::create(&mut *tx, merchant.id, endpoint_url, Some(name))
        .await
        .context("registering the webhook endpoint")?;
    tx.commit().await.context("creating the merchant")?;
    Ok(MerchantWithEndpoint {
        merchant_id: merchant.id,
        api_key: key.expose().to_owned(),
        secret: SigningSecret::from(&endpoint.secret),
    })
}
