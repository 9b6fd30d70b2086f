//! `paygate ledger …`: fund a merchant by hand, and check every invariant of the ledger.

use anyhow::Context;
use clap::Subcommand;
use paygate_core::config::Config;
use paygate_core::db::{self, ledger};
use paygate_core::domain::{Amount, Currency, MerchantId, Money};

#[derive(Subcommand)]
pub enum Action {
    /// Credit a merchant without a deposit (e.g. funds received outside paygate), from the
    /// currency's funding account. Idempotent by --reference: a repeat does nothing.
    TopUp {
        /// The merchant, `mch_…`.
        merchant: String,
        /// Integer minor units (1050 is 10.50 USD).
        #[arg(allow_negative_numbers = true)]
        amount: i64,
        /// ISO 4217 code.
        currency: String,
        /// Your reference for this funding; a second top-up with it is not posted again.
        #[arg(long)]
        reference: String,
    },
    /// Verify every invariant (balances equal their entries, reserved equals pending holds,
    /// no negative available balance, every posting sums to zero, every finished payment
    /// posted once). Exits non-zero naming each account or payment that breaks one.
    Check,
}

pub async fn run(action: Action, config: &Config) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    match action {
        Action::TopUp {
            merchant,
            amount,
            currency,
            reference,
        } => {
            let merchant: MerchantId = merchant.parse().context("the merchant id")?;
            let money = Money::new(
                Amount::new(amount).context("the amount")?,
                Currency::parse(&currency).context("the currency")?,
            );
            let reference = reference.trim();
            anyhow::ensure!(
                (1..=200).contains(&reference.chars().count()),
                "--reference must be 1 to 200 characters"
            );
            let done = ledger::top_up(&pool, merchant, money, reference).await?;
            forget_balance(config, merchant).await;
            match done {
                ledger::TopUp::Posted => println!(
                    "topped up {merchant} with {amount} {} (reference {reference})",
                    money.currency.code()
                ),
                ledger::TopUp::AlreadyPosted => println!(
                    "reference {reference} already funded {merchant} with {amount} {}: nothing new posted",
                    money.currency.code()
                ),
            }
        }
        Action::Check => {
            let violations = ledger::check(&pool).await?;
            if violations.is_empty() {
                println!("ledger check: every invariant holds");
                return Ok(());
            }
            for violation in &violations {
                println!("{violation}");
            }
            anyhow::bail!("ledger check: {} violation(s)", violations.len());
        }
    }
    Ok(())
}

/// Best effort: the API's cached balance expires by itself (`api.cache_ttl_ms`).
async fn forget_balance(config: &Config, merchant: MerchantId) {
    let Ok(client) = redis::Client::open(config.redis.url.as_str()) else {
        return;
    };
    if let Ok(mut cache) = client.get_connection_manager().await {
        paygate_core::cache_keys::invalidate_balance(
            &mut cache,
            &config.redis.key_prefix,
            merchant,
        )
        .await;
    }
}
