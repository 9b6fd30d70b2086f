//! The engine's coalesced reads and writes against the real Postgres: updates sent together
//! are each version-checked and answered on their own, across merchants; one the server
//! refuses fails alone while the others of its statement are written.

use chrono::Utc;
use futures::future::join_all;
use paygate_core::db::{merchants, transactions, DbError};
use paygate_core::domain::{Transaction, TransactionStatus, TransactionUpdate};
use paygate_core::testing::{fresh_database, stored_deposit};
use paygate_payment_processor::store::Store;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn stored(
    pool: &PgPool,
    merchant: paygate_core::domain::MerchantId,
) -> Result<Transaction, Box<dyn std::error::Error>> {
    stored_deposit(pool, merchant, 500, "USD").await
}

fn claim(tx: &Transaction) -> Result<TransactionUpdate, Box<dyn std::error::Error>> {
    Ok(tx
        .advance(TransactionStatus::Submitting, Utc::now())?
        .start_attempt())
}

// The tests run on one thread: every call of a `join_all` is queued before the store's task
// runs, so the calls share a statement (one per merchant).

#[tokio::test]
async fn claims_sent_together_each_apply_once_and_a_stale_one_does_not() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let store = Store::start(pool.clone(), 64);
    let (a, b) = (
        merchants::create(&pool, "A").await?,
        merchants::create(&pool, "B").await?,
    );
    let mut rows = Vec::new();
    for merchant in [a.id, b.id, a.id, b.id, a.id] {
        rows.push(stored(&pool, merchant).await?);
    }
    let mut claims = rows.iter().map(claim).collect::<Result<Vec<_>, _>>()?;
    // A second claim of the first row, read at the same version: exactly one may win.
    claims.push(claim(&rows[0])?);

    let answers = join_all(claims.iter().map(|c| store.apply(c))).await;
    let answers: Vec<bool> = answers
        .into_iter()
        .map(|a| a.map(|t| t.is_some()))
        .collect::<Result<_, DbError>>()?;
    assert_eq!(answers, vec![true, true, true, true, true, false]);
    for tx in &rows {
        let now = transactions::get(&pool, tx.id).await?.ok_or("missing")?;
        assert_eq!(
            (now.status, now.version, now.attempts),
            (TransactionStatus::Submitting, 1, 1)
        );
    }

    // Read back together, each as it now stands.
    let read = join_all(rows.iter().map(|tx| store.read(tx.id))).await;
    for (tx, read) in rows.iter().zip(read) {
        let (now, enabled) = read?.ok_or("exists")?;
        assert_eq!((now.id, now.version, enabled), (tx.id, 1, None));
    }
    Ok(())
}

#[tokio::test]
async fn an_update_the_server_refuses_fails_alone() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let store = Store::start(pool.clone(), 64);
    let merchant = merchants::create(&pool, "A").await?;
    let mut rows = Vec::new();
    for _ in 0..3 {
        rows.push(stored(&pool, merchant.id).await?);
    }
    let mut claims = rows.iter().map(claim).collect::<Result<Vec<_>, _>>()?;
    // Postgres refuses a NUL in text: the grouped statement fails as a whole.
    claims[1] = claims[1].clone().failure("retryable", "a provider said \0");

    let answers = join_all(claims.iter().map(|c| store.apply(c))).await;
    assert!(matches!(answers[0], Ok(Some(_))), "{:?}", answers[0]);
    assert!(
        matches!(answers[1], Err(DbError::Sqlx(_))),
        "{:?}",
        answers[1]
    );
    assert!(matches!(answers[2], Ok(Some(_))), "{:?}", answers[2]);
    for (i, tx) in rows.iter().enumerate() {
        let now = transactions::get(&pool, tx.id).await?.ok_or("missing")?;
        let expected = if i == 1 { 0 } else { 1 };
        assert_eq!(now.version, expected, "row {i}");
    }
    Ok(())
}
