//! Re-sealing secrets in batches: what `paygate secrets rotate-key` (every row under the
//! current key) and `paygate migrate` (rows written in clear before secrets were sealed)
//! run.
//!
//! Each batch is one transaction over at most `batch` rows, taken in id order after the last
//! one seen (`FOR UPDATE`, so a concurrent rotation of a merchant's signing secret waits for
//! it, or it for the rotation), and only rows not yet sealed under the current key are read:
//! the pass is idempotent and, stopped half-way, resumes where it was when run again. Reads
//! keep working throughout, as long as the keyring still holds the old keys: each row is
//! either wholly old or wholly new.
//!
//! A row that does not open (unknown key, altered) is counted and named in the report, left
//! as it is, and does not stop the pass.

use sqlx::PgPool;
use uuid::Uuid;

use crate::db::DbError;
use crate::keyring::{Keyring, SealError, SecretColumn, Slot};

/// What to do with a value written in clear (a `whsec_…` from before sealing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearRows {
    /// Seal it (`paygate migrate`: the one-time migration of existing rows).
    Seal,
    /// Report it as a failure: outside the migration, a clear value is never a secret.
    Refuse,
}

/// A table of sealed secrets, with its id column and its two secret columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretTable {
    WebhookEndpoints,
    MerchantWebhookSecrets,
}

impl SecretTable {
    pub const ALL: [Self; 2] = [Self::WebhookEndpoints, Self::MerchantWebhookSecrets];

    pub fn name(self) -> &'static str {
        self.columns().0.table()
    }

    fn id_column(self) -> &'static str {
        match self {
            Self::WebhookEndpoints => "id",
            Self::MerchantWebhookSecrets => "merchant_id",
        }
    }

    fn columns(self) -> (SecretColumn, SecretColumn) {
        match self {
            Self::WebhookEndpoints => (
                SecretColumn::EndpointSecret,
                SecretColumn::EndpointPreviousSecret,
            ),
            Self::MerchantWebhookSecrets => (
                SecretColumn::MerchantSecret,
                SecretColumn::MerchantPreviousSecret,
            ),
        }
    }

    /// The CHECK constraints (migration 20261205000100) that admit only sealed values.
    fn constraints(self) -> [&'static str; 2] {
        match self {
            Self::WebhookEndpoints => [
                "webhook_endpoints_secret_sealed",
                "webhook_endpoints_previous_secret_sealed",
            ],
            Self::MerchantWebhookSecrets => [
                "merchant_webhook_secrets_secret_sealed",
                "merchant_webhook_secrets_previous_secret_sealed",
            ],
        }
    }
}

/// What a pass over one table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Rows re-sealed under the current key (committed).
    pub resealed: u64,
    /// Of those, rows that held a value in clear.
    pub were_clear: u64,
    /// Rows left as they are, with why (row id, never the value).
    pub failed: Vec<(Uuid, SealError)>,
}

/// One row as a batch reads it.
#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    secret: String,
    previous_secret: Option<String>,
}

/// Re-seals every row of `table` not yet wholly under the keyring's current key, `batch`
/// rows per transaction.
pub async fn reseal_table(
    pool: &PgPool,
    keyring: &Keyring,
    table: SecretTable,
    batch: i64,
    clear: ClearRows,
) -> Result<ResealReport, DbError> {
    let prefix = keyring.current_prefix();
    let (now_column, previous_column) = table.columns();
    let select = format!(
        "SELECT {id} AS id, secret, previous_secret FROM {table}
         WHERE {id} > $1 AND (NOT starts_with(secret, $2) OR NOT starts_with(previous_secret, $2))
         ORDER BY {id} LIMIT $3 FOR UPDATE",
        id = table.id_column(),
        table = table.name(),
    );
    let update = format!(
        "UPDATE {table} SET secret = $2, previous_secret = $3 WHERE {id} = $1",
        id = table.id_column(),
        table = table.name(),
    );
    let mut report = ResealReport::default();
    let mut after = Uuid::nil();
    loop {
        let mut db = pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(&select)
            .bind(after)
            .bind(&prefix)
            .bind(batch.max(1))
            .fetch_all(&mut *db)
            .await?;
        let Some(last) = rows.last().map(|r| r.id) else {
            db.commit().await?;
            return Ok(report);
        };
        after = last;
        for row in rows {
            let now = Slot::new(now_column, row.id);
            let before = Slot::new(previous_column, row.id);
            let resealed = reseal(keyring, now, &row.secret, clear).and_then(|secret| {
                let previous = row
                    .previous_secret
                    .as_deref()
                    .map(|p| reseal(keyring, before, p, clear))
                    .transpose()?;
                Ok((secret, previous))
            });
            match resealed {
                Ok(((secret, clear_now), previous)) => {
                    let clear_before = previous.as_ref().is_some_and(|(_, c)| *c);
                    sqlx::query(&update)
                        .bind(row.id)
                        .bind(secret)
                        .bind(previous.map(|(p, _)| p))
                        .execute(&mut *db)
                        .await?;
                    report.resealed = report.resealed.saturating_add(1);
                    if clear_now || clear_before {
                        report.were_clear = report.were_clear.saturating_add(1);
                    }
                }
                Err(error) => report.failed.push((row.id, error)),
            }
        }
        db.commit().await?;
    }
}

/// One stored value sealed under the current key for `slot`; whether it was in clear.
fn reseal(
    keyring: &Keyring,
    slot: Slot,
    stored: &str,
    clear: ClearRows,
) -> Result<(String, bool), SealError> {
    match keyring.open(slot, stored) {
        Ok(secret) => Ok((keyring.seal(slot, &secret)?, false)),
        Err(SealError::Clear) if clear == ClearRows::Seal && stored.starts_with("whsec_") => {
            Ok((keyring.seal(slot, stored)?, true))
        }
        Err(error) => Err(error),
    }
}

/// Marks the sealed-only CHECK constraints valid (Postgres checks every row once): after
/// this, the tables provably hold no clear value. Idempotent.
pub async fn validate_sealed_only(pool: &PgPool) -> Result<(), DbError> {
    for table in SecretTable::ALL {
        for constraint in table.constraints() {
            sqlx::query(&format!(
                "ALTER TABLE {} VALIDATE CONSTRAINT {constraint}",
                table.name()
            ))
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}
