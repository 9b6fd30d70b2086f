//! The engine's hot reads and writes of transactions, coalesced: the reads and version-checked
//! updates that concurrent attempts send while a statement is running go together as one
//! statement ([`paygate_core::db::coalesce`]). At low load each goes alone, at once, as the
//! single-row statement it always was.
//!
//! What stays as it was: each update is version-checked on its own row and answered on its
//! own (applied or not), and only after the statement that carried it committed. A grouped
//! statement holds one merchant's payments only (a final state's ledger posting locks the
//! merchant's account row at commit, so a statement never holds two merchants' rows), and
//! when one fails, each of its updates is written again alone, so one payment's error is
//! never another's.

use std::collections::{BTreeMap, HashSet};

use futures::future::join_all;
use futures::FutureExt;
use paygate_core::db::coalesce::{keyed_reads, Coalescer};
use paygate_core::db::{transactions, DbError};
use paygate_core::domain::{
    GatewayName, MerchantId, Transaction, TransactionId, TransactionUpdate,
};
use sqlx::PgPool;

/// A transaction with the gateways its merchant enabled (`None`: every gateway).
pub type WithGateways = (Transaction, Option<Vec<GatewayName>>);

/// The coalesced front of the engine's hot statements. Clones share the tasks.
#[derive(Clone)]
pub struct Store {
    reads: Coalescer<TransactionId, Option<WithGateways>>,
    writes: Coalescer<TransactionUpdate, bool>,
}

impl Store {
    /// Starts the two coalescing tasks; `max_batch` bounds the rows one statement carries.
    pub fn start(pool: PgPool, max_batch: usize) -> Self {
        let reads = Coalescer::start(
            "processor_reads",
            max_batch,
            keyed_reads(
                pool.clone(),
                |pool, ids: Vec<TransactionId>| async move {
                    transactions::get_all_with_enabled_gateways(&pool, &ids).await
                },
                |pool, id| async move { transactions::get_with_enabled_gateways(&pool, id).await },
            ),
        );
        let writes = Coalescer::start(
            "processor_writes",
            max_batch,
            Box::new(move |updates| write_all(pool.clone(), updates).boxed()),
        );
        Self { reads, writes }
    }

    /// The transaction `id` with its merchant's enabled gateways, `None` when unknown.
    pub async fn read(&self, id: TransactionId) -> Result<Option<WithGateways>, DbError> {
        self.reads.call(id).await
    }

    /// Writes `update` only if its row still has `update.expected_version`: the new
    /// transaction when it applied, `None` when another writer got there first.
    pub async fn apply(&self, update: &TransactionUpdate) -> Result<Option<Transaction>, DbError> {
        let applied = self.writes.call(update.clone()).await?;
        Ok(applied.then(|| update.next.clone()))
    }
}

/// The batch's updates by merchant, one statement per merchant (concurrently); a second
/// update of a row already in its group goes alone after the groups.
async fn write_all(pool: PgPool, updates: Vec<TransactionUpdate>) -> Vec<Result<bool, DbError>> {
    let count = updates.len();
    let mut groups: BTreeMap<MerchantId, Group> = BTreeMap::new();
    let mut seen = HashSet::with_capacity(count);
    let mut repeats = Vec::new();
    for (at, update) in updates.into_iter().enumerate() {
        if seen.insert(update.next.id) {
            let group = groups.entry(update.next.merchant_id).or_default();
            group.at.push(at);
            group.updates.push(update);
        } else {
            repeats.push((at, update));
        }
    }
    let mut answers: Vec<Result<bool, DbError>> = (0..count)
        .map(|_| Err(DbError::GroupCommit("an update was not written".into())))
        .collect();
    let grouped = join_all(groups.into_values().map(|group| write_group(&pool, group))).await;
    for (at, answer) in grouped.into_iter().flatten() {
        answers[at] = answer;
    }
    for (at, update) in repeats {
        answers[at] = write_one(&pool, &update).await;
    }
    answers
}

/// One merchant's updates and where each stands in the batch.
#[derive(Default)]
struct Group {
    at: Vec<usize>,
    updates: Vec<TransactionUpdate>,
}

/// One merchant's updates in one statement, or each alone when the server refused that
/// statement (nothing of it was written). When the statement got no answer at all, whether it
/// committed is unknown: each caller is told so, and its message is retried on a fresh read
/// (the version check refuses what did commit).
async fn write_group(pool: &PgPool, group: Group) -> Vec<(usize, Result<bool, DbError>)> {
    let Group { at, updates } = group;
    if updates.len() > 1 {
        match transactions::apply_all(pool, &updates).await {
            Ok(applied) => return at.into_iter().zip(applied.into_iter().map(Ok)).collect(),
            Err(DbError::Sqlx(error @ sqlx::Error::Database(_))) => {
                tracing::info!(%error, writes = updates.len(), "a grouped update was refused; writing each alone")
            }
            Err(error) => {
                tracing::warn!(%error, writes = updates.len(), "a grouped update got no answer");
                let unknown = format!("the grouped update got no answer, so whether it took effect is unknown: {error}");
                return at
                    .into_iter()
                    .map(|at| (at, Err(DbError::GroupCommit(unknown.clone()))))
                    .collect();
            }
        }
    }
    let mut answers = Vec::with_capacity(updates.len());
    for (at, update) in at.into_iter().zip(&updates) {
        answers.push((at, write_one(pool, update).await));
    }
    answers
}

async fn write_one(pool: &PgPool, update: &TransactionUpdate) -> Result<bool, DbError> {
    Ok(transactions::apply(pool, update).await?.is_some())
}
