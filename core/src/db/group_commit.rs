//! Group commit: writes that arrive while earlier ones are being written go together in the
//! next database transaction, one per group (merchant), so a busy merchant's writes cost one
//! commit and one turn at its ledger account's row lock per batch instead of one each.
//!
//! Why: every settlement updates its merchant's ledger account row and holds that row's lock
//! through its commit's WAL flush, so one merchant's settlements (and withdrawal accepts)
//! queue on the row one commit at a time. With one merchant that row, not the CPU, set the
//! pipeline's pace (BENCHMARKS.md, issue 18 session 13: 247 payments/s sustained with one
//! merchant, 361/s with four on the same machine).
//!
//! The rules it keeps:
//! - a write is answered only after the transaction that holds it committed, so a caller
//!   never acts on a write that may still roll back;
//! - at low load nothing waits: a write that finds the writer idle goes at once, alone, on
//!   its own connection (no `BEGIN`/`COMMIT` round trips of a batch of one);
//! - one write that fails does not fail the others: the group's transaction is rolled back
//!   and each of its writes runs again alone (so a write must be safe to run again after a
//!   rollback, which any statement is). A failure may come at the `COMMIT` (a deferred
//!   trigger: the ledger's postings run there), and is handled the same way;
//! - a transaction holds one group's writes only, in their `order`. For settlements a group
//!   is a merchant, whose ledger account is the only row its writes share with anyone else's,
//!   so two groups' transactions never wait on each other; two processes' transactions for
//!   one merchant wait in line for its row (a cycle would need one payment settled by both at
//!   once, which the per-payment Redis lock prevents; were it to happen, Postgres breaks the
//!   deadlock and the aborted group is written again one by one).

use std::collections::BTreeMap;

use futures::future::{join_all, BoxFuture};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::DbError;

/// One write: a statement (or a few) run on the connection given, inside the group's
/// transaction or alone. It may run twice (together, rolled back, then alone).
///
/// It must return every database error it meets, never turn one into an answer (a ledger
/// refusal read as "refused", say): an error leaves the group's transaction aborted, and
/// Postgres answers the `COMMIT` of an aborted transaction by rolling it back without an
/// error, so every write of the group would be answered as written while none was. Read
/// such errors after [`GroupCommit::write`] returns.
pub type Statement<T> =
    Box<dyn for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, DbError>> + Send + Sync>;

/// A write and where it goes.
pub struct Write<T> {
    /// Writes of one group share a transaction: the merchant whose ledger account they update.
    pub group: Uuid,
    /// The order within the group's transaction (the order its rows are locked in).
    pub order: String,
    pub statement: Statement<T>,
}

struct Pending<T> {
    write: Write<T>,
    reply: oneshot::Sender<Result<T, DbError>>,
}

/// The writer: one task per [`GroupCommit::start`], draining what queued while it wrote.
/// Clones share that task.
pub struct GroupCommit<T> {
    pool: PgPool,
    queue: mpsc::UnboundedSender<Pending<T>>,
}

impl<T> Clone for GroupCommit<T> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts the writer task (it ends when the last clone is dropped). `max_batch` bounds the writes
    /// taken per round, so one round's transactions stay short. The queue itself is bounded by
    /// the callers: a consumer runs at most its `concurrency` handlers at once.
    pub fn start(pool: PgPool, max_batch: usize) -> Self {
        let (queue, writes) = mpsc::unbounded_channel();
        tokio::spawn(drive(pool.clone(), writes, max_batch.max(1)));
        Self { pool, queue }
    }

    /// The pool, for reads and for writes that should not wait for a round.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes `write` with whatever else is waiting, and answers once it is committed.
    pub async fn write(&self, write: Write<T>) -> Result<T, DbError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { write, reply })
            .map_err(|_| DbError::GroupCommit("the writer has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| DbError::GroupCommit("the writer stopped before answering".to_owned()))?
    }
}

/// Takes what is waiting (at most `max` writes), writes each group, and goes again.
async fn drive<T: Send + 'static>(
    pool: PgPool,
    mut writes: mpsc::UnboundedReceiver<Pending<T>>,
    max: usize,
) {
    while let Some(first) = writes.recv().await {
        let mut round = vec![first];
        while round.len() < max {
            match writes.try_recv() {
                Ok(next) => round.push(next),
                Err(_) => break,
            }
        }
        metrics::histogram!("paygate_group_commit_round_writes").record(round.len() as f64);
        join_all(
            by_group(round)
                .into_iter()
                .map(|group| write_group(&pool, group)),
        )
        .await;
    }
}

/// The round's writes by group, each group in its `order`.
fn by_group<T>(round: Vec<Pending<T>>) -> Vec<Vec<Pending<T>>> {
    let mut groups: BTreeMap<Uuid, Vec<Pending<T>>> = BTreeMap::new();
    for pending in round {
        groups.entry(pending.write.group).or_default().push(pending);
    }
    groups
        .into_values()
        .map(|mut group| {
            group.sort_by(|a, b| a.write.order.cmp(&b.write.order));
            group
        })
        .collect()
}

/// Why a group's transaction did not commit.
enum Failed {
    /// A statement failed, the transaction could not begin, or the server refused the
    /// `COMMIT` (a deferred trigger or constraint failed, as a ledger posting may since it
    /// runs at commit): nothing was written.
    Statement(DbError),
    /// The commit got no answer from the server: whether it took effect is unknown.
    Commit(sqlx::Error),
}

async fn write_group<T>(pool: &PgPool, mut group: Vec<Pending<T>>) {
    if group.len() == 1 {
        if let Some(only) = group.pop() {
            alone(pool, only).await;
        }
        return;
    }
    match together(pool, &group).await {
        Ok(results) => {
            for (pending, result) in group.into_iter().zip(results) {
                let _ = pending.reply.send(Ok(result));
            }
        }
        Err(Failed::Statement(error)) => {
            tracing::info!(%error, writes = group.len(), "a write of a group failed; writing each alone");
            for pending in group {
                alone(pool, pending).await;
            }
        }
        Err(Failed::Commit(error)) => {
            // Not run again here: the callers retry, and each re-decides on a fresh read.
            tracing::warn!(%error, writes = group.len(), "a group's commit failed");
            for pending in group {
                let _ = pending.reply.send(Err(DbError::GroupCommit(format!(
                    "the commit failed, so whether it took effect is unknown: {error}"
                ))));
            }
        }
    }
}

/// The group's writes in one transaction; their answers, in order, once it committed.
async fn together<T>(pool: &PgPool, group: &[Pending<T>]) -> Result<Vec<T>, Failed> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| Failed::Statement(e.into()))?;
    let mut results = Vec::with_capacity(group.len());
    for pending in group {
        match (pending.write.statement)(&mut tx).await {
            Ok(result) => results.push(result),
            Err(error) => {
                // Dropping `tx` rolls back too; saying so frees the connection at once.
                let _ = tx.rollback().await;
                return Err(Failed::Statement(error));
            }
        }
    }
    tx.commit().await.map_err(|error| match error {
        // The server answered the `COMMIT` with an error: it rolled the transaction back.
        sqlx::Error::Database(_) => Failed::Statement(error.into()),
        other => Failed::Commit(other),
    })?;
    Ok(results)
}

/// One write in its own (implicit) transaction.
async fn alone<T>(pool: &PgPool, pending: Pending<T>) {
    let result = match pool.acquire().await {
        Ok(mut conn) => (pending.write.statement)(&mut conn).await,
        Err(error) => Err(error.into()),
    };
    let _ = pending.reply.send(result);
}
