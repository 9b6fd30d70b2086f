//! Resolving an `unresolved` transaction by hand: a person who has learned from the provider
//! (its dashboard, its support) what became of a payment records it.
//!
//! It is a money state change like any other: version-checked, and committed with its
//! announcement (the merchant's `transaction.succeeded | failed` webhook) and an audit row
//! (who, when, why, the previous state) in one statement. Only `unresolved` transactions can
//! be resolved this way: every other state has an owner that will finish it.

use crate::announce;
use crate::db::transactions::{self, Resolution};
use crate::db::DbError;
use crate::domain::{Transaction, TransactionId, TransactionStatus};

/// `failure.code` of a payment a person resolved as failed.
pub const RESOLVED_FAILED: &str = "resolved_failed";

/// Longest reason kept (the audit column's bound).
pub const MAX_REASON_CHARS: usize = 2_000;
/// Longest actor name kept.
pub const MAX_ACTOR_CHARS: usize = 200;

/// What the person found the provider did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Failed,
}

impl Verdict {
    fn status(self) -> TransactionStatus {
        match self {
            Self::Succeeded => TransactionStatus::Succeeded,
            Self::Failed => TransactionStatus::Failed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no transaction {0}")]
    NotFound(TransactionId),
    #[error("transaction {id} is {status}, not unresolved: only unresolved transactions are resolved by hand")]
    NotUnresolved {
        id: TransactionId,
        status: TransactionStatus,
    },
    #[error("transaction {0} changed while it was being resolved; look at it again")]
    Changed(TransactionId),
    #[error("{field} must be 1 to {max} characters")]
    BadText { field: &'static str, max: usize },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Resolves `id` as `verdict`, recording `actor` and `reason`. Returns the transaction as
/// it now stands.
pub async fn resolve(
    pool: &sqlx::PgPool,
    id: TransactionId,
    verdict: Verdict,
    actor: &str,
    reason: &str,
) -> Result<Transaction, ResolveError> {
    let resolution = Resolution {
        actor: bounded(actor, "actor", MAX_ACTOR_CHARS)?,
        reason: bounded(reason, "reason", MAX_REASON_CHARS)?,
    };
    let tx = transactions::get(pool, id)
        .await?
        .ok_or(ResolveError::NotFound(id))?;
    if tx.status != TransactionStatus::Unresolved {
        return Err(ResolveError::NotUnresolved {
            id,
            status: tx.status,
        });
    }
    let update = tx
        .advance(verdict.status(), chrono::Utc::now())
        .map_err(|_| ResolveError::NotUnresolved {
            id,
            status: tx.status,
        })?;
    let update = match verdict {
        Verdict::Succeeded => update.clear_failure(),
        Verdict::Failed => update.failure(
            RESOLVED_FAILED,
            format!("resolved by hand: {}", resolution.reason),
        ),
    };
    let event = announce::completed(&update.next)?;
    transactions::resolve(pool, &update, tx.status, &resolution, &event)
        .await?
        .ok_or(ResolveError::Changed(id))
}

fn bounded(text: &str, field: &'static str, max: usize) -> Result<String, ResolveError> {
    crate::domain::bounded_text(text, max)
        .map(str::to_owned)
        .ok_or(ResolveError::BadText { field, max })
}
