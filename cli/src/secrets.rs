//! `paygate secrets rotate-key`, and the sealing step of `paygate migrate`: webhook signing
//! secrets at rest (`paygate_core::keyring`).
//!
//! Rotating the encryption key: add the new key to `[secrets.keys]` and make it
//! `secrets.current_key` everywhere (the old key stays in the keyring, so every service
//! keeps reading what it sealed), run `paygate secrets rotate-key`, which re-seals every row
//! under the current key in batches and prints the counts, then remove the old key. Stopped
//! half-way, it resumes when run again (rows already under the current key are skipped).

use clap::Subcommand;
use paygate_core::config::Config;
use paygate_core::db::webhooks::reseal::{self, ClearRows, SecretTable};
use paygate_core::db::{self};
use paygate_core::keyring::Keyring;
use sqlx::PgPool;

#[derive(Subcommand)]
pub enum Action {
    /// Re-seal every webhook signing secret under secrets.current_key (run after making a
    /// new key current, before removing the old one). Idempotent and resumable; exits
    /// non-zero naming any row that could not be opened.
    RotateKey {
        /// Rows per transaction.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch: i64,
    },
}

pub async fn run(action: Action, config: &Config) -> anyhow::Result<()> {
    let keyring = config.secrets.keyring()?;
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    match action {
        Action::RotateKey { batch } => {
            let failed = reseal_all(&pool, &keyring, batch, ClearRows::Refuse).await?;
            anyhow::ensure!(
                failed == 0,
                "{failed} row(s) could not be re-sealed (see above): restore the key they name \
                 to secrets.keys and run it again"
            );
        }
    }
    Ok(())
}

/// After `paygate migrate` applied the migrations: seals the rows written in clear before
/// secrets were sealed, then marks the sealed-only constraints valid (every row checked).
pub async fn seal_after_migrate(pool: &PgPool, keyring: &Keyring) -> anyhow::Result<()> {
    let failed = reseal_all(pool, keyring, 500, ClearRows::Seal).await?;
    anyhow::ensure!(
        failed == 0,
        "{failed} webhook secret row(s) could not be sealed (see above)"
    );
    reseal::validate_sealed_only(pool).await?;
    println!("webhook secrets: every row sealed (constraints validated)");
    Ok(())
}

/// One pass over every table, printing what it did; the number of rows that failed.
async fn reseal_all(
    pool: &PgPool,
    keyring: &Keyring,
    batch: i64,
    clear: ClearRows,
) -> anyhow::Result<usize> {
    let mut failed = 0_usize;
    for table in SecretTable::ALL {
        let report = reseal::reseal_table(pool, keyring, table, batch, clear).await?;
        println!(
            "{}: {} row(s) re-sealed under key {} ({} were in clear), {} failed",
            table.name(),
            report.resealed,
            keyring.current_key(),
            report.were_clear,
            report.failed.len()
        );
        for (row, error) in &report.failed {
            println!("  row {row}: {error}");
        }
        failed = failed.saturating_add(report.failed.len());
    }
    Ok(failed)
}
