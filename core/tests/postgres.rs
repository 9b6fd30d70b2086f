//! Repository behaviour against the real Postgres; each test has its own database.

use chrono::Utc;
use paygate_core::bus::Topic;
use paygate_core::db::outbox::OutboxMessage;
use paygate_core::db::transactions::{
    self, IdempotentRequest, InsertOutcome, ListQuery, DEFAULT_IDEMPOTENCY_RETENTION,
};
use paygate_core::db::{merchants, outbox};
use paygate_core::domain::{
    CustomerReference, Money, NewTransaction, Transaction, TransactionKind, TransactionStatus,
};
use paygate_core::testing::fresh_database;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn new_transaction(
    pool: &PgPool,
    merchant: paygate_core::domain::MerchantId,
    amount: i64,
) -> Result<Transaction, Box<dyn std::error::Error>> {
    let _ = pool;
    Ok(Transaction::create(
        NewTransaction {
            merchant_id: merchant,
            kind: TransactionKind::Deposit,
            money: Money::from_parts(amount, "USD")?,
            customer: CustomerReference::parse("cust_1")?,
            gateway: None,
            callback_url: None,
            metadata: serde_json::json!({"order": "42"}),
        },
        Utc::now(),
    ))
}

fn announcement(tx: &Transaction) -> OutboxMessage {
    OutboxMessage {
        topic: Topic::TransactionsPending,
        key: tx.id.to_string(),
        payload: b"event".to_vec(),
        headers: Default::default(),
    }
}

fn idempotent(key: &str, hash: u8) -> IdempotentRequest {
    IdempotentRequest {
        key: key.to_owned(),
        request_hash: [hash; 32],
        response_status: 202,
        response_body: serde_json::json!({"first": true}),
        retention: DEFAULT_IDEMPOTENCY_RETENTION,
    }
}

async fn count(pool: &PgPool, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
}

#[tokio::test]
async fn insert_writes_transaction_key_and_outbox_in_one_commit() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let tx = new_transaction(&pool, merchant.id, 1050).await?;
    let outcome =
        transactions::insert(&pool, &tx, Some(&idempotent("k1", 1)), &announcement(&tx)).await?;
    assert_eq!(outcome, InsertOutcome::Created);

    let stored = transactions::get(&pool, tx.id).await?.ok_or("not stored")?;
    assert_eq!(stored.id, tx.id);
    assert_eq!(stored.money, tx.money);
    assert_eq!(stored.status, TransactionStatus::Pending);
    assert_eq!(stored.metadata, serde_json::json!({"order": "42"}));
    assert_eq!(count(&pool, "idempotency_keys").await?, 1);
    assert_eq!(count(&pool, "outbox").await?, 1);
    Ok(())
}

#[tokio::test]
async fn idempotency_replays_refuses_a_changed_request_and_writes_nothing_twice() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let first = new_transaction(&pool, merchant.id, 1050).await?;
    transactions::insert(
        &pool,
        &first,
        Some(&idempotent("k1", 1)),
        &announcement(&first),
    )
    .await?;

    let again = new_transaction(&pool, merchant.id, 1050).await?;
    let replay = transactions::insert(
        &pool,
        &again,
        Some(&idempotent("k1", 1)),
        &announcement(&again),
    )
    .await?;
    assert_eq!(
        replay,
        InsertOutcome::Replayed {
            status: 202,
            body: serde_json::json!({"first": true})
        }
    );

    let changed = new_transaction(&pool, merchant.id, 999).await?;
    let conflict = transactions::insert(
        &pool,
        &changed,
        Some(&idempotent("k1", 2)),
        &announcement(&changed),
    )
    .await?;
    assert_eq!(conflict, InsertOutcome::KeyReusedWithDifferentRequest);

    assert_eq!(count(&pool, "transactions").await?, 1);
    assert_eq!(count(&pool, "outbox").await?, 1);

    // The same key under another merchant is another key.
    let other = merchants::create(&pool, "Other").await?;
    let theirs = new_transaction(&pool, other.id, 1050).await?;
    let outcome = transactions::insert(
        &pool,
        &theirs,
        Some(&idempotent("k1", 1)),
        &announcement(&theirs),
    )
    .await?;
    assert_eq!(outcome, InsertOutcome::Created);
    Ok(())
}

#[tokio::test]
async fn an_expired_key_is_taken_over_by_a_new_request() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let first = new_transaction(&pool, merchant.id, 100).await?;
    let created = transactions::insert(
        &pool,
        &first,
        Some(&idempotent("old", 1)),
        &announcement(&first),
    )
    .await?;
    assert_eq!(created, InsertOutcome::Created);
    // Age the key past retention.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&pool)
        .await?;

    // A different request under the expired key is a new request, not a 422.
    let second = new_transaction(&pool, merchant.id, 200).await?;
    let outcome = transactions::insert(
        &pool,
        &second,
        Some(&idempotent("old", 2)),
        &announcement(&second),
    )
    .await?;
    assert_eq!(outcome, InsertOutcome::Created);
    let (owner, hash): (uuid::Uuid, Vec<u8>) = sqlx::query_as(
        "SELECT transaction_id, request_hash FROM idempotency_keys WHERE key = 'old'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(owner, second.id.as_uuid());
    assert_eq!(hash, vec![2u8; 32]);
    assert_eq!(count(&pool, "transactions").await?, 2);
    assert_eq!(count(&pool, "outbox").await?, 2);

    // And the key is live again: the same request replays, a third is refused.
    let replay = transactions::insert(
        &pool,
        &second,
        Some(&idempotent("old", 2)),
        &announcement(&second),
    )
    .await?;
    assert!(matches!(replay, InsertOutcome::Replayed { .. }));
    let third = new_transaction(&pool, merchant.id, 300).await?;
    let refused = transactions::insert(
        &pool,
        &third,
        Some(&idempotent("old", 3)),
        &announcement(&third),
    )
    .await?;
    assert_eq!(refused, InsertOutcome::KeyReusedWithDifferentRequest);
    assert_eq!(count(&pool, "transactions").await?, 2);
    Ok(())
}

#[tokio::test]
async fn a_key_held_by_a_request_in_flight_answers_in_flight() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    // Hold the advisory lock the way a first, still uncommitted request does.
    let mut holder = pool.begin().await?;
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1::text || ':' || $2, 0))",
    )
    .bind(merchant.id.as_uuid())
    .bind("busy")
    .fetch_one(&mut *holder)
    .await?;
    assert!(locked);
    let tx = new_transaction(&pool, merchant.id, 100).await?;
    let outcome =
        transactions::insert(&pool, &tx, Some(&idempotent("busy", 1)), &announcement(&tx)).await?;
    assert_eq!(outcome, InsertOutcome::InFlight);
    holder.rollback().await?;
    assert_eq!(count(&pool, "transactions").await?, 0);
    let outcome =
        transactions::insert(&pool, &tx, Some(&idempotent("busy", 1)), &announcement(&tx)).await?;
    assert_eq!(outcome, InsertOutcome::Created);
    Ok(())
}

#[tokio::test]
async fn a_failed_insert_leaves_nothing_behind() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let tx = new_transaction(&pool, merchant.id, 100).await?;
    transactions::insert(&pool, &tx, None, &announcement(&tx)).await?;
    // Same id again: the transaction insert fails, so neither the key nor the outbox row stays.
    let result =
        transactions::insert(&pool, &tx, Some(&idempotent("k2", 1)), &announcement(&tx)).await;
    assert!(result.is_err());
    assert_eq!(count(&pool, "transactions").await?, 1);
    assert_eq!(count(&pool, "idempotency_keys").await?, 0);
    assert_eq!(count(&pool, "outbox").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_stale_version_does_not_apply() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let tx = new_transaction(&pool, merchant.id, 100).await?;
    transactions::insert(&pool, &tx, None, &announcement(&tx)).await?;

    // Two writers read version 0; the first claims it.
    let first = tx
        .advance(TransactionStatus::Submitting, Utc::now())?
        .start_attempt();
    let second = tx
        .advance(TransactionStatus::Failed, Utc::now())?
        .failure("x", "stale writer");
    let applied = transactions::apply(&pool, &first).await?;
    assert_eq!(applied.as_ref().map(|t| t.version), Some(1));
    assert_eq!(
        transactions::apply(&pool, &second).await?,
        None,
        "stale write applied"
    );

    let stored = transactions::get(&pool, tx.id).await?.ok_or("missing")?;
    assert_eq!(stored.status, TransactionStatus::Submitting);
    assert_eq!(stored.version, 1);
    assert_eq!(stored.attempts, 1);
    assert_eq!(stored.failure, None);
    Ok(())
}

#[tokio::test]
async fn keyset_listing_pages_newest_first_and_filters_by_status() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let other = merchants::create(&pool, "Other").await?;
    let mut ids = Vec::new();
    for i in 0..7 {
        let tx = new_transaction(&pool, merchant.id, 100 + i).await?;
        transactions::insert(&pool, &tx, None, &announcement(&tx)).await?;
        ids.push(tx.id);
    }
    let theirs = new_transaction(&pool, other.id, 5).await?;
    transactions::insert(&pool, &theirs, None, &announcement(&theirs)).await?;
    ids.reverse(); // newest first

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = transactions::list(
            &pool,
            merchant.id,
            ListQuery {
                status: None,
                limit: 3,
                starting_after: cursor,
            },
        )
        .await?;
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|t| t.id);
        seen.extend(page.into_iter().map(|t| t.id));
    }
    assert_eq!(seen, ids);

    let newest = transactions::get(&pool, ids[0]).await?.ok_or("missing")?;
    transactions::apply(
        &pool,
        &newest
            .advance(TransactionStatus::Failed, Utc::now())?
            .failure("declined", "no"),
    )
    .await?;
    let failed = transactions::list(
        &pool,
        merchant.id,
        ListQuery {
            status: Some(TransactionStatus::Failed),
            limit: 10,
            starting_after: None,
        },
    )
    .await?;
    assert_eq!(
        failed.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );

    assert!(
        transactions::get_for_merchant(&pool, other.id, ids[0])
            .await?
            .is_none(),
        "cross-merchant read"
    );
    Ok(())
}

#[tokio::test]
async fn outbox_batches_are_claimed_once_across_concurrent_relays() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    for i in 0..10 {
        let tx = new_transaction(&pool, merchant.id, 100 + i).await?;
        transactions::insert(&pool, &tx, None, &announcement(&tx)).await?;
    }
    let mut a = pool.begin().await?;
    let mut b = pool.begin().await?;
    let batch_a = outbox::claim_batch(&mut a, 6).await?;
    let batch_b = outbox::claim_batch(&mut b, 6).await?;
    assert_eq!(batch_a.len(), 6);
    assert_eq!(
        batch_b.len(),
        4,
        "SKIP LOCKED hands the second relay only the rest"
    );
    assert!(batch_a.iter().all(|r| batch_b.iter().all(|s| s.id != r.id)));
    outbox::mark_published(&mut a, &batch_a.iter().map(|r| r.id).collect::<Vec<_>>()).await?;
    a.commit().await?;
    b.rollback().await?;
    let (waiting, oldest) = outbox::backlog(&pool).await?;
    assert_eq!(waiting, 4);
    assert!(oldest.is_some());
    Ok(())
}

#[tokio::test]
async fn api_keys_authenticate_by_hash_until_revoked() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let (key_id, key) = merchants::create_api_key(&pool, merchant.id).await?;
    let auth = merchants::authenticate(&pool, &key)
        .await?
        .ok_or("key not accepted")?;
    assert_eq!(auth.merchant_id, merchant.id);

    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_one(&pool)
        .await?;
    assert_eq!(stored, key.hash().to_vec());
    let plain: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE prefix = $1 OR encode(key_hash, 'escape') LIKE '%' || $1 || '%'")
        .bind(key.expose())
        .fetch_one(&pool)
        .await?;
    assert_eq!(plain, 0, "the secret itself is not stored");

    assert!(merchants::revoke_api_key(&pool, key_id).await?);
    assert_eq!(merchants::authenticate(&pool, &key).await?, None);
    Ok(())
}

/// One database, one deployment: the first topic prefix claims the database; the same
/// prefix may start again (a restart, a second instance); another prefix is refused with
/// both named, and the claim does not move.
#[tokio::test]
async fn a_database_belongs_to_the_deployment_that_claimed_it_first() -> TestResult {
    use paygate_core::db::{deployment, DbError};

    let (_config, pool) = paygate_core::testing::isolated_config().await?;
    sqlx::query("DELETE FROM deployment").execute(&pool).await?;
    deployment::claim(&pool, "blue").await?;
    deployment::claim(&pool, "blue").await?;
    match deployment::claim(&pool, "green").await {
        Err(DbError::OtherDeployment { ours, theirs }) => {
            assert_eq!((ours.as_str(), theirs.as_str()), ("green", "blue"));
        }
        other => panic!("another prefix must be refused, got {other:?}"),
    }
    let owner: String = sqlx::query_scalar("SELECT topic_prefix FROM deployment")
        .fetch_one(&pool)
        .await?;
    assert_eq!(owner, "blue");
    Ok(())
}

/// The payment processor reads a transaction and its merchant's enabled gateways in one
/// round trip: the list as the merchant set it, `None` for "every gateway", and nothing for
/// an unknown id.
#[tokio::test]
async fn a_transaction_is_read_with_its_merchants_enabled_gateways() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let tx = new_transaction(&pool, merchant.id, 100).await?;
    transactions::insert(&pool, &tx, None, &announcement(&tx)).await?;

    let (read, enabled) = transactions::get_with_enabled_gateways(&pool, tx.id)
        .await?
        .ok_or("the transaction exists")?;
    assert_eq!(
        (read.id, read.merchant_id, read.version),
        (tx.id, tx.merchant_id, tx.version)
    );
    assert_eq!(enabled, None, "no list: every gateway");

    let only = vec![paygate_core::domain::GatewayName::parse("paystack")?];
    merchants::set_enabled_gateways(&pool, merchant.id, Some(&only)).await?;
    let (_, enabled) = transactions::get_with_enabled_gateways(&pool, tx.id)
        .await?
        .ok_or("the transaction exists")?;
    assert_eq!(enabled, Some(only));

    let unknown = paygate_core::domain::TransactionId::new();
    assert!(transactions::get_with_enabled_gateways(&pool, unknown)
        .await?
        .is_none());
    Ok(())
}

/// Several version-checked updates in one statement: each applies or not on its own row, as
/// alone; the rows that applied carry every column of their update, and each status change
/// is in the history (the trigger runs per row).
#[tokio::test]
async fn updates_sent_together_are_each_version_checked_on_their_own_row() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let mut rows = Vec::new();
    for amount in [100, 200, 300] {
        let tx = new_transaction(&pool, merchant.id, amount).await?;
        transactions::insert(&pool, &tx, None, &announcement(&tx)).await?;
        rows.push(tx);
    }
    // The second row moved on since it was read: its update must not apply.
    let moved = rows[1]
        .advance(TransactionStatus::Submitting, Utc::now())?
        .start_attempt();
    transactions::apply(&pool, &moved).await?.ok_or("moved")?;

    let gateway = paygate_core::domain::GatewayName::parse("paystack")?;
    let updates: Vec<_> = rows
        .iter()
        .map(|tx| {
            Ok(tx
                .advance(TransactionStatus::Submitting, Utc::now())?
                .start_attempt()
                .routed_to(gateway.clone())
                .failure("retryable", "the last attempt's error"))
        })
        .collect::<Result<_, paygate_core::domain::InvalidTransition>>()?;
    let applied = transactions::apply_all(&pool, &updates).await?;
    assert_eq!(applied, vec![true, false, true]);

    for (tx, update) in [(&rows[0], &updates[0]), (&rows[2], &updates[2])] {
        let stored = transactions::get(&pool, tx.id).await?.ok_or("missing")?;
        assert_eq!(
            summary(&stored),
            summary(&update.next),
            "the update is written"
        );
    }
    let stored = transactions::get(&pool, rows[1].id)
        .await?
        .ok_or("missing")?;
    assert_eq!(
        summary(&stored),
        summary(&moved.next),
        "the moved row keeps its other writer's change"
    );
    let entered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transaction_history WHERE to_status = 'submitting'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        entered, 3,
        "two from the grouped update, one from the other writer"
    );
    Ok(())
}

/// What an update sets, without the timestamps (Postgres keeps microseconds).
fn summary(
    tx: &Transaction,
) -> (
    TransactionStatus,
    i64,
    i32,
    Option<paygate_core::domain::GatewayName>,
    Option<paygate_core::domain::Failure>,
) {
    (
        tx.status,
        tx.version,
        tx.attempts,
        tx.routed_gateway.clone(),
        tx.failure.clone(),
    )
}

/// Several transactions read in one round trip: one answer per id, in the order asked, with
/// each merchant's enabled gateways, and nothing for an unknown id.
#[tokio::test]
async fn transactions_read_together_answer_in_the_order_asked() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let open = merchants::create(&pool, "Open").await?;
    let narrow = merchants::create(&pool, "Narrow").await?;
    let only = vec![paygate_core::domain::GatewayName::parse("paystack")?];
    merchants::set_enabled_gateways(&pool, narrow.id, Some(&only)).await?;
    let first = new_transaction(&pool, open.id, 100).await?;
    let second = new_transaction(&pool, narrow.id, 200).await?;
    for tx in [&first, &second] {
        transactions::insert(&pool, tx, None, &announcement(tx)).await?;
    }
    let unknown = paygate_core::domain::TransactionId::new();

    let read =
        transactions::get_all_with_enabled_gateways(&pool, &[second.id, unknown, first.id]).await?;
    assert_eq!(read.len(), 3);
    let (tx, enabled) = read[0].clone().ok_or("second exists")?;
    assert_eq!((tx.id, enabled), (second.id, Some(only)));
    assert!(read[1].is_none(), "an unknown id reads as nothing");
    let (tx, enabled) = read[2].clone().ok_or("first exists")?;
    assert_eq!((tx.id, enabled), (first.id, None));

    let plain: Vec<_> = transactions::get_all(&pool, &[first.id, unknown, second.id, first.id])
        .await?
        .into_iter()
        .map(|found| found.map(|tx| (tx.id, tx.money.amount.minor_units())))
        .collect();
    assert_eq!(
        plain,
        vec![
            Some((first.id, 100)),
            None,
            Some((second.id, 200)),
            Some((first.id, 100))
        ],
        "in the order asked, a repeated id answered twice"
    );
    Ok(())
}
