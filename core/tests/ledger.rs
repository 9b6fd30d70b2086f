//! The ledger against the real Postgres: its triggers move money with every state change,
//! refuse what a balance or a limit does not cover, and `ledger::check` finds any figure
//! that disagrees with the entries.

use std::collections::BTreeMap;

use chrono::Utc;
use paygate_core::bus::Topic;
use paygate_core::db::ledger::{self, Refusal, TopUp, TopUpError};
use paygate_core::db::merchants::{self, Limits};
use paygate_core::db::outbox::OutboxMessage;
use paygate_core::db::transactions::{self, InsertOutcome};
use paygate_core::domain::{
    Currency, CustomerReference, GatewayName, MerchantId, Money, NewTransaction, Transaction,
    TransactionKind, TransactionStatus,
};
use paygate_core::testing::fresh_database;
use proptest::prelude::*;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type BoxError = Box<dyn std::error::Error>;

fn usd() -> Result<Currency, BoxError> {
    Ok(Currency::parse("USD")?)
}

async fn accept(
    pool: &PgPool,
    merchant: MerchantId,
    kind: TransactionKind,
    amount: i64,
) -> Result<(Transaction, InsertOutcome), BoxError> {
    let tx = Transaction::create(
        NewTransaction {
            merchant_id: merchant,
            kind,
            money: Money::from_parts(amount, "USD")?,
            customer: CustomerReference::parse("cust_1")?,
            gateway: Some(GatewayName::parse("gw-a")?),
            callback_url: None,
            metadata: serde_json::json!({}),
        },
        Utc::now(),
    );
    let message = OutboxMessage {
        topic: Topic::TransactionsPending,
        key: tx.id.to_string(),
        payload: b"event".to_vec(),
        headers: Default::default(),
    };
    let outcome = transactions::insert(pool, &tx, None, &message).await?;
    Ok((tx, outcome))
}

/// Moves `tx` through `path` (each step version-checked, as the processors do).
async fn walk(
    pool: &PgPool,
    mut tx: Transaction,
    path: &[TransactionStatus],
) -> Result<Transaction, BoxError> {
    for status in path {
        let update = tx.advance(*status, Utc::now())?;
        tx = transactions::apply(pool, &update)
            .await?
            .ok_or("the version check refused a fresh update")?;
    }
    Ok(tx)
}

async fn funded_merchant(pool: &PgPool, amount: i64) -> Result<MerchantId, BoxError> {
    let merchant = merchants::create(pool, "Ledger").await?.id;
    if amount > 0 {
        let money = Money::from_parts(amount, "USD")?;
        ledger::top_up(pool, merchant, money, "opening").await?;
    }
    Ok(merchant)
}

#[tokio::test]
async fn a_withdrawal_holds_then_posts_or_releases_and_a_deposit_credits_on_success() -> TestResult
{
    let (pool, _) = fresh_database().await?;
    let merchant = funded_merchant(&pool, 1_000).await?;
    let (payout, outcome) = accept(&pool, merchant, TransactionKind::Withdrawal, 300).await?;
    assert_eq!(outcome, InsertOutcome::Created);
    assert_eq!(ledger::account(&pool, merchant, usd()?).await?, (700, 300));

    use TransactionStatus::*;
    walk(&pool, payout, &[Submitting, Submitted, Succeeded]).await?;
    assert_eq!(ledger::account(&pool, merchant, usd()?).await?, (700, 0));

    let (declined, _) = accept(&pool, merchant, TransactionKind::Withdrawal, 200).await?;
    assert_eq!(ledger::account(&pool, merchant, usd()?).await?, (500, 200));
    walk(&pool, declined, &[Submitting, Failed]).await?;
    assert_eq!(ledger::account(&pool, merchant, usd()?).await?, (700, 0));

    let (deposit, _) = accept(&pool, merchant, TransactionKind::Deposit, 50).await?;
    let balances = ledger::balances(&pool, merchant).await?;
    assert_eq!((balances[0].available, balances[0].pending), (700, 50));
    walk(&pool, deposit, &[Submitting, Submitted, Succeeded]).await?;
    let balances = ledger::balances(&pool, merchant).await?;
    assert_eq!((balances[0].available, balances[0].pending), (750, 0));

    // Newest first: the deposit's credit, the payout's debit, the opening top-up.
    let entries = ledger::entries(&pool, merchant, None, 10).await?;
    let amounts: Vec<(i64, i64)> = entries
        .iter()
        .map(|e| (e.amount, e.balance_after))
        .collect();
    assert_eq!(amounts, vec![(50, 750), (-300, 700), (1_000, 1_000)]);
    let page = ledger::entries(&pool, merchant, Some(entries[0].id), 1).await?;
    assert_eq!(
        page.iter().map(|e| e.amount).collect::<Vec<_>>(),
        vec![-300]
    );
    assert_eq!(ledger::check(&pool).await?, vec![]);
    Ok(())
}

/// A payment's posting runs when its database transaction commits, not when its status
/// changes: a writer that finishes several payments in one transaction (the callback
/// processor's group commit) leaves the merchant's account row free until then, so the
/// merchant's withdrawals are accepted meanwhile instead of waiting for that row; and the
/// postings commit with the state changes.
#[tokio::test]
async fn a_final_status_posts_at_commit_and_leaves_the_merchant_row_free_until_then() -> TestResult
{
    use TransactionStatus::*;
    let (pool, _) = fresh_database().await?;
    let merchant = funded_merchant(&pool, 1_000).await?;
    let (deposit, _) = accept(&pool, merchant, TransactionKind::Deposit, 50).await?;
    let deposit = walk(&pool, deposit, &[Submitting, Submitted]).await?;
    let (payout, _) = accept(&pool, merchant, TransactionKind::Withdrawal, 300).await?;
    let payout = walk(&pool, payout, &[Submitting, Submitted]).await?;

    let mut round = pool.begin().await?;
    for tx in [deposit, payout] {
        let update = tx.advance(Succeeded, Utc::now())?;
        transactions::apply(&mut *round, &update)
            .await?
            .ok_or("the version check refused a fresh update")?;
    }
    let meanwhile = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        accept(&pool, merchant, TransactionKind::Withdrawal, 100),
    )
    .await
    .map_err(|_| "a withdrawal waited for the merchant's row an open settlement holds")??;
    assert_eq!(meanwhile.1, InsertOutcome::Created);
    // Nothing of the round is posted yet: 1,000 less two holds.
    assert_eq!(ledger::account(&pool, merchant, usd()?).await?, (600, 400));

    round.commit().await?;
    // 1,000 + 50 − 300 posted, the new withdrawal's 100 held.
    assert_eq!(ledger::account(&pool, merchant, usd()?).await?, (650, 100));
    assert_eq!(ledger::check(&pool).await?, vec![]);
    Ok(())
}

#[tokio::test]
async fn a_withdrawal_over_the_available_balance_writes_nothing() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = funded_merchant(&pool, 100).await?;
    let before = (
        count(&pool, "transactions").await?,
        count(&pool, "outbox").await?,
    );
    let (_, outcome) = accept(&pool, merchant, TransactionKind::Withdrawal, 101).await?;
    assert_eq!(
        outcome,
        InsertOutcome::Refused(Refusal::BalanceInsufficient)
    );
    let (_, outcome) = accept(
        &pool,
        funded_merchant(&pool, 0).await?,
        TransactionKind::Withdrawal,
        1,
    )
    .await?;
    assert_eq!(
        outcome,
        InsertOutcome::Refused(Refusal::BalanceInsufficient),
        "no account at all"
    );
    let after = (
        count(&pool, "transactions").await?,
        count(&pool, "outbox").await?,
    );
    assert_eq!(before, after);
    assert_eq!(count(&pool, "ledger_holds").await?, 0);
    assert_eq!(ledger::account(&pool, merchant, usd()?).await?, (100, 0));
    Ok(())
}

#[tokio::test]
async fn limits_refuse_large_payments_and_a_day_of_payouts_and_a_failure_gives_its_share_back(
) -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = funded_merchant(&pool, 10_000).await?;
    let limits = Limits {
        max_amount: Some(500),
        daily_payout_limit: Some(800),
    };
    merchants::set_limits(&pool, merchant, usd()?, limits).await?;
    let (_, over) = accept(&pool, merchant, TransactionKind::Deposit, 501).await?;
    assert_eq!(
        over,
        InsertOutcome::Refused(Refusal::AmountOverLimit { max: 500 })
    );
    let (first, _) = accept(&pool, merchant, TransactionKind::Withdrawal, 500).await?;
    let (_, second) = accept(&pool, merchant, TransactionKind::Withdrawal, 300).await?;
    assert_eq!(second, InsertOutcome::Created);
    let (_, third) = accept(&pool, merchant, TransactionKind::Withdrawal, 1).await?;
    assert_eq!(
        third,
        InsertOutcome::Refused(Refusal::DailyPayoutLimit { limit: 800 })
    );
    use TransactionStatus::*;
    walk(&pool, first, &[Submitting, Failed]).await?;
    let (_, again) = accept(&pool, merchant, TransactionKind::Withdrawal, 500).await?;
    assert_eq!(
        again,
        InsertOutcome::Created,
        "the failed payout's 500 is back in the day's allowance"
    );
    assert_eq!(ledger::check(&pool).await?, vec![]);
    Ok(())
}

#[tokio::test]
async fn a_hold_resolves_exactly_once_and_may_post_in_part() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = funded_merchant(&pool, 1_000).await?;
    let (payout, _) = accept(&pool, merchant, TransactionKind::Withdrawal, 400).await?;
    let post = |amount: i64| {
        sqlx::query_scalar::<_, Option<i64>>("SELECT ledger_post_hold($1, $2, 'gw-a')")
            .bind(payout.id.as_uuid())
            .bind(amount)
            .fetch_one(&pool)
    };
    assert!(post(250).await?.is_some(), "the pending hold posts");
    assert_eq!(
        ledger::account(&pool, merchant, usd()?).await?,
        (750, 0),
        "the other 150 is released"
    );
    assert!(
        post(250).await?.is_none(),
        "a posted hold does not post again"
    );
    let voided: bool = sqlx::query_scalar("SELECT ledger_void_hold($1, 'voided')")
        .bind(payout.id.as_uuid())
        .fetch_one(&pool)
        .await?;
    assert!(!voided, "nor is it voided after");
    let rewrite = sqlx::query(
        "UPDATE ledger_holds SET state = 'pending', resolved_at = NULL, posted_amount = NULL",
    )
    .execute(&pool)
    .await;
    assert!(rewrite.is_err(), "a resolved hold cannot be reopened");
    let erase = sqlx::query("DELETE FROM ledger_entries")
        .execute(&pool)
        .await;
    assert!(erase.is_err(), "entries are immutable");
    Ok(())
}

#[tokio::test]
async fn a_top_up_posts_once_per_reference() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = funded_merchant(&pool, 0).await?;
    let money = Money::from_parts(700, "USD")?;
    assert_eq!(
        ledger::top_up(&pool, merchant, money, "wire-1").await?,
        TopUp::Posted
    );
    assert_eq!(
        ledger::top_up(&pool, merchant, money, "wire-1").await?,
        TopUp::AlreadyPosted
    );
    let other = Money::from_parts(701, "USD")?;
    assert!(matches!(
        ledger::top_up(&pool, merchant, other, "wire-1").await,
        Err(TopUpError::ReferenceReused { amount: 700, .. })
    ));
    assert!(matches!(
        ledger::top_up(&pool, MerchantId::new(), money, "wire-2").await,
        Err(TopUpError::UnknownMerchant(_))
    ));
    assert_eq!(ledger::account(&pool, merchant, usd()?).await?, (700, 0));
    Ok(())
}

#[tokio::test]
async fn the_check_names_an_account_whose_balance_disagrees_with_its_entries() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = funded_merchant(&pool, 1_000).await?;
    assert_eq!(ledger::check(&pool).await?, vec![]);
    sqlx::query("UPDATE ledger_accounts SET balance = balance + 5 WHERE merchant_id = $1")
        .bind(merchant.as_uuid())
        .execute(&pool)
        .await?;
    let found = ledger::check(&pool).await?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].subject,
        format!("merchant {} USD", merchant.as_uuid())
    );
    assert_eq!(found[0].rule, "balance equals the sum of its entries");
    Ok(())
}

/// The keys dropped from the hot path (migration 20261207000100): payments and accounts
/// cannot be deleted, and the check finds any row that names one that does not exist.
#[tokio::test]
async fn payments_and_accounts_are_never_deleted_and_the_check_finds_rows_naming_missing_ones(
) -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = funded_merchant(&pool, 1_000).await?;
    let (payout, _) = accept(&pool, merchant, TransactionKind::Withdrawal, 400).await?;
    for statement in [
        "DELETE FROM transactions",
        "TRUNCATE transactions CASCADE",
        "DELETE FROM ledger_accounts",
        "TRUNCATE ledger_accounts CASCADE",
    ] {
        let refused = sqlx::query(statement).execute(&pool).await;
        assert!(refused.is_err(), "{statement} is refused");
    }
    assert_eq!(count(&pool, "transactions").await?, 1);
    assert_eq!(ledger::check(&pool).await?, vec![]);

    let account: i64 = sqlx::query_scalar("SELECT account_id FROM ledger_holds")
        .fetch_one(&pool)
        .await?;
    sqlx::query(
        "INSERT INTO ledger_entries (transfer_id, account_id, amount) VALUES (987654321, $1, 5)",
    )
    .bind(account)
    .execute(&pool)
    .await?;
    sqlx::query("UPDATE ledger_holds SET account_id = 987654322 WHERE transaction_id = $1")
        .bind(payout.id.as_uuid())
        .execute(&pool)
        .await?;
    let found = ledger::check(&pool).await?;
    let mut orphans: Vec<_> = found
        .iter()
        .filter(|v| v.rule == "every entry, hold and transfer names rows that exist")
        .map(|v| v.detail.as_str())
        .collect();
    orphans.sort();
    assert_eq!(orphans.len(), 2, "{found:?}");
    assert!(
        orphans[0].contains("hold on account 987654322"),
        "{found:?}"
    );
    assert!(orphans[1].contains("names transfer 987654321"), "{found:?}");
    Ok(())
}

async fn count(pool: &PgPool, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    Deposit(i64),
    Withdraw(i64),
    /// Finish the n-th (mod the count) in-flight payment: succeeded, failed, or first
    /// unresolved then resolved either way.
    Finish {
        pick: usize,
        how: Finish,
    },
}

#[derive(Debug, Clone, Copy)]
enum Finish {
    Succeed,
    Fail,
    UnresolvedThenSucceed,
    UnresolvedThenFail,
}

fn op() -> impl Strategy<Value = Op> {
    let finish = prop_oneof![
        Just(Finish::Succeed),
        Just(Finish::Fail),
        Just(Finish::UnresolvedThenSucceed),
        Just(Finish::UnresolvedThenFail),
    ];
    prop_oneof![
        (1_i64..400).prop_map(Op::Deposit),
        (1_i64..400).prop_map(Op::Withdraw),
        (any::<usize>(), finish).prop_map(|(pick, how)| Op::Finish { pick, how }),
    ]
}

/// Plays `ops` for a new merchant and checks every invariant against a model kept here.
async fn play(pool: &PgPool, ops: &[Op]) -> Result<(), BoxError> {
    use TransactionStatus::*;
    let merchant = funded_merchant(pool, 500).await?;
    let (mut available, mut reserved) = (500_i64, 0_i64);
    let mut in_flight: Vec<Transaction> = Vec::new();
    for op in ops {
        match op {
            Op::Deposit(amount) | Op::Withdraw(amount) => {
                let kind = match op {
                    Op::Deposit(_) => TransactionKind::Deposit,
                    _ => TransactionKind::Withdrawal,
                };
                let (tx, outcome) = accept(pool, merchant, kind, *amount).await?;
                let covered = kind == TransactionKind::Deposit || *amount <= available;
                match outcome {
                    InsertOutcome::Created if covered => {
                        if kind == TransactionKind::Withdrawal {
                            available -= amount;
                            reserved += amount;
                        }
                        in_flight.push(walk(pool, tx, &[Submitting, Submitted]).await?);
                    }
                    InsertOutcome::Refused(Refusal::BalanceInsufficient) if !covered => {}
                    other => {
                        return Err(format!("{op:?} with {available} available: {other:?}").into())
                    }
                }
            }
            Op::Finish { pick, how } => {
                if in_flight.is_empty() {
                    continue;
                }
                let tx = in_flight.remove(pick % in_flight.len());
                let path: &[TransactionStatus] = match how {
                    Finish::Succeed => &[Succeeded],
                    Finish::Fail => &[Failed],
                    Finish::UnresolvedThenSucceed => &[Unresolved, Succeeded],
                    Finish::UnresolvedThenFail => &[Unresolved, Failed],
                };
                let amount = tx.money.amount.minor_units();
                let kind = tx.kind;
                let done = walk(pool, tx, path).await?;
                match (kind, done.status) {
                    (TransactionKind::Deposit, Succeeded) => available += amount,
                    (TransactionKind::Withdrawal, Succeeded) => reserved -= amount,
                    (TransactionKind::Withdrawal, _) => {
                        reserved -= amount;
                        available += amount;
                    }
                    _ => {}
                }
            }
        }
        let (db_available, db_reserved) = ledger::account(pool, merchant, usd()?).await?;
        if (db_available, db_reserved) != (available, reserved) || db_available < 0 {
            return Err(format!(
                "after {op:?}: ledger {db_available} available / {db_reserved} reserved, model {available} / {reserved}"
            )
            .into());
        }
    }
    let in_flight_withdrawals: i64 = in_flight
        .iter()
        .filter(|t| t.kind == TransactionKind::Withdrawal)
        .map(|t| t.money.amount.minor_units())
        .sum();
    if in_flight_withdrawals != reserved {
        return Err(
            format!("reserved {reserved}, in-flight withdrawals {in_flight_withdrawals}").into(),
        );
    }
    let violations = ledger::check(pool).await?;
    if !violations.is_empty() {
        return Err(format!("{violations:?}").into());
    }
    let sums: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT a.currency, sum(e.amount)::bigint FROM ledger_entries e
           JOIN ledger_accounts a ON a.id = e.account_id GROUP BY a.currency",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    if sums.values().any(|s| *s != 0) {
        return Err(format!("postings do not sum to zero: {sums:?}").into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random deposits, withdrawals and outcomes: each balance equals the sum of its entries,
    /// available never goes negative, postings sum to zero per currency, and reserved is the
    /// sum of the withdrawals in flight.
    #[test]
    fn any_history_keeps_every_invariant(ops in proptest::collection::vec(op(), 1..30)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let result = runtime.block_on(async {
            let pool = shared_pool().await?;
            play(&pool, &ops).await
        });
        prop_assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
    }
}

/// One database for every case of the property (each case has its own merchant): creating
/// and migrating a database per case would dominate the run.
async fn shared_pool() -> Result<PgPool, BoxError> {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(url) = URL.get() {
        return Ok(PgPool::connect(url).await?);
    }
    let (pool, url) = fresh_database().await?;
    let _ = URL.set(url);
    Ok(pool)
}
