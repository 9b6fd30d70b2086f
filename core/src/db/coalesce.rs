//! Coalescing: calls that arrive while a statement is running go together into the next one,
//! so N concurrent callers cost one round trip (and, for a write, one commit) instead of N.
//!
//! Why: on a co-located machine the unit of Postgres's cost is the statement, not the row.
//! One single-row version-checked update with its commit costs about four times the server's
//! CPU per row of an eight-row update of the same rows (BENCHMARKS.md, issue 18, session 21):
//! parse, bind, executor start-up, the round trip's system calls on both sides and the commit
//! are paid once per statement. A consumer running 64 payments at once sends its reads and
//! writes in bursts; this turns each burst into one statement.
//!
//! The rules it keeps:
//! - at low load nothing waits: a call that finds the coalescer idle goes at once, alone
//!   (the batch function sees a batch of one, and sends the single-row statement);
//! - every call gets its own answer, and only after the statement that carried it finished
//!   (for a write, committed), so a caller never acts on a write that may still roll back;
//! - what a batch is, and what to do when its statement fails, belongs to the batch
//!   function: the payment processor's writes, for one, are grouped by merchant and written
//!   again one by one when a grouped statement fails ([`crate::db::transactions::apply_all`]).

use std::future::Future;

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::DbError;

/// Runs one batch: one answer per input, in the inputs' order.
pub type BatchFn<I, O> =
    Box<dyn Fn(Vec<I>) -> BoxFuture<'static, Vec<Result<O, DbError>>> + Send + Sync>;

struct Call<I, O> {
    input: I,
    reply: oneshot::Sender<Result<O, DbError>>,
}

/// The front of one coalescing task: clones share the task, which ends when the last clone is
/// dropped.
pub struct Coalescer<I, O> {
    queue: mpsc::UnboundedSender<Call<I, O>>,
}

impl<I, O> Clone for Coalescer<I, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Starts the task. `max_batch` bounds the calls one statement carries; `name` labels the
    /// batch-size histogram (`paygate_coalesced_batch_size`). The queue itself is bounded by
    /// the callers: a consumer runs at most its `concurrency` handlers at once.
    pub fn start(name: &'static str, max_batch: usize, run: BatchFn<I, O>) -> Self {
        let (queue, calls) = mpsc::unbounded_channel();
        tokio::spawn(drive(name, calls, max_batch.max(1), run));
        Self { queue }
    }

    /// Sends `input` with whatever else is waiting and answers with its own result.
    pub async fn call(&self, input: I) -> Result<O, DbError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Call { input, reply })
            .map_err(|_| DbError::GroupCommit("the coalescer has stopped".to_owned()))?;
        answer.await.map_err(|_| {
            DbError::GroupCommit("the coalescer stopped before answering".to_owned())
        })?
    }
}

/// Takes what is waiting (at most `max` calls), runs it as one batch, answers each, and goes
/// again.
async fn drive<I, O>(
    name: &'static str,
    mut calls: mpsc::UnboundedReceiver<Call<I, O>>,
    max: usize,
    run: BatchFn<I, O>,
) {
    while let Some(first) = calls.recv().await {
        let mut batch = vec![first];
        while batch.len() < max {
            match calls.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        metrics::histogram!("paygate_coalesced_batch_size", "batch" => name)
            .record(batch.len() as f64);
        let (inputs, replies): (Vec<I>, Vec<_>) =
            batch.into_iter().map(|c| (c.input, c.reply)).unzip();
        let mut answers = run(inputs).await.into_iter();
        for reply in replies {
            let answer = answers.next().unwrap_or_else(|| {
                Err(DbError::GroupCommit(format!(
                    "the {name} batch gave fewer answers than it had calls"
                )))
            });
            let _ = reply.send(answer);
        }
    }
}

/// The batch function of a coalesced read by key: `all` reads a batch of several in one
/// statement (one answer per key, in order); if it fails, `one` reads each key alone, so each
/// caller gets its own error and a row that does not parse fails only its own reader. A batch
/// of one goes to `one` straight away: the single-row statement, as without coalescing.
pub fn keyed_reads<K, V, All, AllFut, One, OneFut>(
    pool: PgPool,
    all: All,
    one: One,
) -> BatchFn<K, V>
where
    K: Copy + Send + Sync + 'static,
    V: Send + 'static,
    All: Fn(PgPool, Vec<K>) -> AllFut + Send + Sync + 'static,
    AllFut: Future<Output = Result<Vec<V>, DbError>> + Send + 'static,
    One: Fn(PgPool, K) -> OneFut + Send + Sync + Clone + 'static,
    OneFut: Future<Output = Result<V, DbError>> + Send + 'static,
{
    Box::new(move |keys: Vec<K>| {
        let batch = (keys.len() > 1).then(|| all(pool.clone(), keys.clone()));
        let (pool, one) = (pool.clone(), one.clone());
        async move {
            if let Some(batch) = batch {
                match batch.await {
                    Ok(values) if values.len() == keys.len() => {
                        return values.into_iter().map(Ok).collect()
                    }
                    Ok(_) => tracing::warn!("a grouped read answered the wrong number of rows; reading each alone"),
                    Err(error) => {
                        tracing::info!(%error, reads = keys.len(), "a grouped read failed; reading each alone")
                    }
                }
            }
            join_all(keys.into_iter().map(|key| one(pool.clone(), key))).await
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A batch function that doubles each input, recording each batch's size.
    fn doubling(sizes: Arc<Mutex<Vec<usize>>>) -> BatchFn<u32, u32> {
        Box::new(move |inputs: Vec<u32>| {
            if let Ok(mut sizes) = sizes.lock() {
                sizes.push(inputs.len());
            }
            async move { inputs.into_iter().map(|i| Ok(i * 2)).collect() }.boxed()
        })
    }

    fn sizes_of(sizes: &Arc<Mutex<Vec<usize>>>) -> anyhow::Result<Vec<usize>> {
        Ok(sizes.lock().map_err(|e| anyhow::anyhow!("{e}"))?.clone())
    }

    // The tests run on one thread: every call of a `join_all` is queued before the task
    // runs, so what a batch holds is known.

    #[tokio::test]
    async fn calls_waiting_together_share_one_batch_and_each_gets_its_own_answer(
    ) -> anyhow::Result<()> {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let coalescer = Coalescer::start("test", 64, doubling(sizes.clone()));
        let answers: Vec<u32> = join_all((0..10).map(|i| coalescer.call(i)))
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        assert_eq!(answers, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(sizes_of(&sizes)?, vec![10]);
        // Alone, a call goes at once in a batch of its own.
        assert_eq!(coalescer.call(21).await?, 42);
        assert_eq!(sizes_of(&sizes)?, vec![10, 1]);
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_never_exceeds_its_bound() -> anyhow::Result<()> {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let coalescer = Coalescer::start("test", 3, doubling(sizes.clone()));
        let answers = join_all((0..10).map(|i| coalescer.call(i))).await;
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(sizes_of(&sizes)?, vec![3, 3, 3, 1]);
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_that_answers_short_fails_only_the_unanswered_calls() -> anyhow::Result<()> {
        let coalescer: Coalescer<u32, u32> = Coalescer::start(
            "test",
            64,
            Box::new(|inputs: Vec<u32>| {
                async move { inputs.into_iter().take(1).map(Ok).collect() }.boxed()
            }),
        );
        let answers = join_all([7, 8].map(|i| coalescer.call(i))).await;
        assert_eq!(answers[0].as_ref().ok(), Some(&7));
        assert!(matches!(answers[1], Err(DbError::GroupCommit(_))));
        Ok(())
    }
}
