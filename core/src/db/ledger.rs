//! The ledger (migration `20261203000100_ledger.sql`): merchant balances, their entries,
//! top-ups, and the invariant check.
//!
//! The postings themselves are made by the database, in the commit of the state change
//! that causes them (triggers on `transactions`): a withdrawal's hold when it is inserted, a
//! deposit's credit and a withdrawal's posting or void when it becomes `succeeded` or
//! `failed`. This module reads the result, funds merchants by hand, and checks that every
//! figure agrees with the entries.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use super::DbError;
use crate::domain::{Currency, MerchantId, Money, TransactionId};

/// Why the database refused a new payment (raised by `ledger_on_accept`). Nothing of the
/// payment was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A withdrawal larger than the merchant's available balance in its currency.
    BalanceInsufficient,
    /// Larger than the merchant's `max_amount` in this currency.
    AmountOverLimit { max: i64 },
    /// Would take the day's accepted withdrawals past `daily_payout_limit`.
    DailyPayoutLimit { limit: i64 },
}

impl Refusal {
    /// The refusal a database error carries, if it is one (SQLSTATE `PGL01..03`).
    pub fn of(error: &sqlx::Error) -> Option<Self> {
        let database = error.as_database_error()?;
        let pg = database.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
        let figure = || pg.detail().and_then(|d| d.parse().ok()).unwrap_or(0);
        match pg.code() {
            "PGL01" => Some(Self::BalanceInsufficient),
            "PGL02" => Some(Self::AmountOverLimit { max: figure() }),
            "PGL03" => Some(Self::DailyPayoutLimit { limit: figure() }),
            _ => None,
        }
    }
}

/// One currency of a merchant's balance, in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub currency: String,
    /// Posted and not held: what a withdrawal may take.
    pub available: i64,
    /// Held by withdrawals and refunds in flight (posted when they succeed, released when
    /// they fail).
    pub reserved: i64,
    /// Deposits accepted and not yet finished: not money yet.
    pub pending: i64,
}

/// Every currency `merchant` has an account or a deposit in flight in, by currency code.
pub async fn balances<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
) -> Result<Vec<Balance>, DbError> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "WITH accounts AS (
             SELECT currency, balance - reserved AS available, reserved FROM ledger_accounts
              WHERE kind = 'merchant' AND merchant_id = $1),
         in_flight AS (
             -- Saturates rather than fail a read on an absurd sum.
             SELECT currency, least(sum(amount), 9223372036854775807)::bigint AS pending FROM transactions
              WHERE merchant_id = $1 AND kind = 'deposit'
                AND status IN ('pending', 'submitting', 'submitted', 'retry_scheduled', 'unresolved')
              GROUP BY currency)
         SELECT currency, coalesce(available, 0), coalesce(reserved, 0), coalesce(pending, 0)
           FROM accounts FULL JOIN in_flight USING (currency) ORDER BY currency",
    )
    .bind(merchant.as_uuid())
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(currency, available, reserved, pending)| Balance {
            currency: currency.trim().to_owned(),
            available,
            reserved,
            pending,
        })
        .collect())
}

/// A ledger entry's external id, `le_<number>`: entries are numbered in the order they were
/// written, which is the order of the keyset pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId(i64);

impl EntryId {
    pub const PREFIX: &'static str = "le";
    /// The external form exactly as [`EntryId::from_str`] admits it (the API document's
    /// pattern): `le_`, then a positive number without sign or leading zero, at most 18
    /// digits (so it always fits the 64-bit sequence).
    pub const PATTERN: &'static str = "^le_[1-9][0-9]{0,17}$";
    const MAX_DIGITS: usize = 18;
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", Self::PREFIX, self.0)
    }
}

impl FromStr for EntryId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.strip_prefix("le_")
            .filter(|n| {
                (1..=Self::MAX_DIGITS).contains(&n.len())
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && !n.starts_with('0')
            })
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n > 0)
            .map(Self)
            .ok_or_else(|| {
                format!("{s:?} is not a ledger entry id (expected \"le_\" and a number)")
            })
    }
}

impl utoipa::PartialSchema for EntryId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A ledger entry id: \"le_\" and its number"))
            .pattern(Some(Self::PATTERN))
            .examples([serde_json::json!("le_42")])
            .into()
    }
}

impl utoipa::ToSchema for EntryId {}

/// What moved money in a merchant's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Deposit,
    Withdrawal,
    TopUp,
    /// A refund of a deposit posted (the entry's transaction is the refunded payment).
    Refund,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
            Self::TopUp => "top_up",
            Self::Refund => "refund",
        }
    }
}

/// One entry on a merchant's account: a credit (amount > 0) or a debit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub kind: EntryKind,
    /// The payment it belongs to (`None` for a top-up).
    pub transaction: Option<TransactionId>,
    /// The operator's reference of a top-up.
    pub reference: Option<String>,
    pub amount: i64,
    pub currency: String,
    /// The account's posted balance right after this entry.
    pub balance_after: i64,
    pub created_at: DateTime<Utc>,
}

type EntryRow = (
    i64,
    String,
    Option<uuid::Uuid>,
    Option<String>,
    i64,
    String,
    Option<i64>,
    DateTime<Utc>,
);

/// `merchant`'s entries, newest first, `limit` of them after `starting_after` (exclusive).
pub async fn entries<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    starting_after: Option<EntryId>,
    limit: i64,
) -> Result<Vec<Entry>, DbError> {
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT e.id, t.kind,
                coalesce(t.transaction_id, (SELECT r.transaction_id FROM refunds r WHERE r.id = t.refund_id)),
                t.reference, e.amount, a.currency, e.balance_after, e.created_at
           FROM ledger_accounts a
           JOIN ledger_entries e ON e.account_id = a.id
           JOIN ledger_transfers t ON t.id = e.transfer_id
          WHERE a.kind = 'merchant' AND a.merchant_id = $1 AND ($2::bigint IS NULL OR e.id < $2)
          ORDER BY e.id DESC LIMIT $3",
    )
    .bind(merchant.as_uuid())
    .bind(starting_after.map(|id| id.0))
    .bind(limit)
    .fetch_all(exec)
    .await?;
    rows.into_iter().map(entry_from_row).collect()
}

fn entry_from_row(row: EntryRow) -> Result<Entry, DbError> {
    let (id, kind, transaction, reference, amount, currency, balance_after, created_at) = row;
    let corrupt = |detail: String| DbError::Corrupt {
        table: "ledger_entries",
        detail,
    };
    let kind = match kind.as_str() {
        "deposit" => EntryKind::Deposit,
        "withdrawal" => EntryKind::Withdrawal,
        "top_up" => EntryKind::TopUp,
        "refund" => EntryKind::Refund,
        other => return Err(corrupt(format!("transfer kind {other:?}"))),
    };
    Ok(Entry {
        id: EntryId(id),
        kind,
        transaction: transaction.map(TransactionId::from_uuid),
        reference,
        amount,
        currency: currency.trim().to_owned(),
        balance_after: balance_after
            .ok_or_else(|| corrupt(format!("merchant entry le_{id} has no balance_after")))?,
        created_at,
    })
}

/// What a top-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopUp {
    /// Posted now.
    Posted,
    /// This reference funded the merchant before, with the same amount: nothing new.
    AlreadyPosted,
}

#[derive(Debug, thiserror::Error)]
pub enum TopUpError {
    #[error("no merchant {0}")]
    UnknownMerchant(MerchantId),
    #[error("reference {reference:?} already funded {amount} {currency}; use a new reference for a new top-up")]
    ReferenceReused {
        reference: String,
        amount: i64,
        currency: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Funds `merchant` with `money` from the currency's funding account, once per `reference`:
/// a repeat with the same amount is [`TopUp::AlreadyPosted`], with another is refused.
pub async fn top_up(
    pool: &PgPool,
    merchant: MerchantId,
    money: Money,
    reference: &str,
) -> Result<TopUp, TopUpError> {
    let existing = || async {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT amount, currency FROM ledger_transfers WHERE merchant_id = $1 AND reference = $2",
        )
        .bind(merchant.as_uuid())
        .bind(reference)
        .fetch_optional(pool)
        .await
        .map_err(DbError::from)?;
        Ok::<_, TopUpError>(row)
    };
    let same = |(amount, currency): (i64, String)| {
        if amount == money.amount.minor_units() && currency == money.currency.code() {
            Ok(TopUp::AlreadyPosted)
        } else {
            Err(TopUpError::ReferenceReused {
                reference: reference.to_owned(),
                amount,
                currency,
            })
        }
    };
    if let Some(previous) = existing().await? {
        return same(previous);
    }
    let posted = sqlx::query("SELECT ledger_top_up($1, $2, $3, $4)")
        .bind(merchant.as_uuid())
        .bind(money.currency.code())
        .bind(money.amount.minor_units())
        .bind(reference)
        .execute(pool)
        .await;
    match posted {
        Ok(_) => Ok(TopUp::Posted),
        Err(error) => match error.as_database_error().and_then(|e| e.code()).as_deref() {
            // A concurrent top-up with this reference won the unique index.
            Some("23505") => match existing().await? {
                Some(previous) => same(previous),
                None => Err(DbError::from(error).into()),
            },
            Some("23503") => Err(TopUpError::UnknownMerchant(merchant)),
            _ => Err(DbError::from(error).into()),
        },
    }
}

/// An account whose figures disagree with its entries or holds, or a posting that does not
/// balance: what `paygate ledger check` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The account (`merchant <id> <currency>`, `clearing <gateway> <currency>`, …) or the
    /// payment the rule is about.
    pub subject: String,
    pub rule: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.subject, self.rule, self.detail)
    }
}

/// Each invariant as one query answering `(subject, detail)` rows that break it.
const CHECKS: &[(&str, &str)] = &[
    (
        "balance equals the sum of its entries",
        "SELECT 'merchant ' || a.merchant_id || ' ' || a.currency,
                'balance ' || a.balance || ', entries sum to ' || coalesce(sum(e.amount), 0)
           FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id
          WHERE a.kind = 'merchant'
          GROUP BY a.id HAVING a.balance <> coalesce(sum(e.amount), 0)",
    ),
    (
        "reserved equals the sum of its pending holds",
        "SELECT 'merchant ' || a.merchant_id || ' ' || a.currency,
                'reserved ' || a.reserved || ', pending holds sum to ' || coalesce(sum(h.amount), 0)
           FROM ledger_accounts a
           LEFT JOIN (SELECT account_id, amount FROM ledger_holds WHERE state = 'pending'
                      UNION ALL
                      SELECT account_id, amount FROM refund_holds WHERE state = 'pending') h
                  ON h.account_id = a.id
          WHERE a.kind = 'merchant'
          GROUP BY a.id HAVING a.reserved <> coalesce(sum(h.amount), 0)",
    ),
    (
        "available is never negative",
        "SELECT 'merchant ' || merchant_id || ' ' || currency,
                'balance ' || balance || ', reserved ' || reserved
           FROM ledger_accounts WHERE kind = 'merchant' AND (reserved < 0 OR balance < reserved)",
    ),
    (
        "every posting sums to zero in one currency",
        "SELECT 'transfer ' || t.id || ' (' || t.kind || ')',
                'entries sum to ' || sum(e.amount) || ' over ' || count(DISTINCT a.currency) || ' currencies'
           FROM ledger_transfers t JOIN ledger_entries e ON e.transfer_id = t.id
           JOIN ledger_accounts a ON a.id = e.account_id
          GROUP BY t.id HAVING sum(e.amount) <> 0 OR count(DISTINCT a.currency) <> 1
                             OR bool_or(a.currency <> t.currency)",
    ),
    (
        "a hold is pending exactly while its withdrawal is in flight",
        "SELECT 'transaction ' || x.id, 'status ' || x.status || ', hold ' || h.state
           FROM ledger_holds h JOIN transactions x ON x.id = h.transaction_id
          WHERE (h.state = 'pending') <> (x.status NOT IN ('succeeded', 'failed'))
             OR (h.state = 'posted' AND x.status <> 'succeeded')
             OR (h.state IN ('voided', 'expired') AND x.status <> 'failed')",
    ),
    (
        "a withdrawal accepted since the ledger began holds funds",
        "SELECT 'transaction ' || x.id, 'withdrawal ' || x.status || ' without a hold'
           FROM transactions x, ledger_epoch l
          WHERE x.kind = 'withdrawal' AND x.created_at >= l.started_at
            AND NOT EXISTS (SELECT 1 FROM ledger_holds h WHERE h.transaction_id = x.id)",
    ),
    (
        "a payment that succeeded since the ledger began is posted once, for its amount",
        "SELECT 'transaction ' || x.id, x.kind || ' ' || x.amount || ' ' || x.currency
                || ' posted ' || coalesce(t.amount::text || ' ' || t.currency, 'nothing')
           FROM transactions x CROSS JOIN ledger_epoch l
           LEFT JOIN ledger_transfers t ON t.transaction_id = x.id
          WHERE x.status = 'succeeded' AND x.updated_at >= l.started_at
            AND (x.kind = 'deposit' OR EXISTS (SELECT 1 FROM ledger_holds h WHERE h.transaction_id = x.id))
            AND (t.id IS NULL OR t.currency <> x.currency
                 OR t.amount <> coalesce((SELECT posted_amount FROM ledger_holds h WHERE h.transaction_id = x.id), x.amount))",
    ),
    (
        "a refund hold is pending while its refund is, posted when it succeeded, voided when it failed",
        "SELECT 'refund ' || r.id, 'status ' || r.status || ', hold ' || coalesce(h.state, 'missing')
           FROM refunds r LEFT JOIN refund_holds h ON h.refund_id = r.id
          WHERE h.refund_id IS NULL
             OR (h.state = 'pending') <> (r.status IN ('pending', 'submitted'))
             OR (h.state = 'posted') <> (r.status = 'succeeded')
             OR (h.state = 'voided') <> (r.status = 'failed')",
    ),
    (
        "a refund that succeeded is posted once, for its amount, and only then",
        "SELECT 'refund ' || r.id, r.status || ' ' || r.amount || ' ' || r.currency
                || ' posted ' || coalesce(t.amount::text || ' ' || t.currency, 'nothing')
           FROM refunds r LEFT JOIN ledger_transfers t ON t.refund_id = r.id
          WHERE (r.status = 'succeeded') <> (t.id IS NOT NULL)
             OR t.amount <> r.amount OR t.currency <> r.currency",
    ),
    (
        "refunds that did not fail stay within their payment",
        "SELECT 'transaction ' || x.id, 'amount ' || x.amount || ', refunds not failed ' || sum(r.amount)
           FROM refunds r JOIN transactions x ON x.id = r.transaction_id
          WHERE r.status <> 'failed'
          GROUP BY x.id, x.amount HAVING sum(r.amount) > x.amount",
    ),
    (
        // The foreign keys of these rows were dropped from the hot path (migration
        // 20261207000100_hot_path_keys.sql: each is written from the row it names); this
        // rule is what checks them now.
        "every entry, hold and transfer names rows that exist",
        "SELECT 'entry ' || e.id, 'names transfer ' || e.transfer_id || ' and account ' || e.account_id
           FROM ledger_entries e
          WHERE NOT EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.id = e.transfer_id)
             OR NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = e.account_id)
         UNION ALL
         SELECT 'transaction ' || h.transaction_id, 'hold on account ' || h.account_id
           FROM ledger_holds h
          WHERE NOT EXISTS (SELECT 1 FROM transactions x WHERE x.id = h.transaction_id)
             OR NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = h.account_id)
         UNION ALL
         SELECT 'transfer ' || t.id, 'names payment ' || coalesce(t.transaction_id::text, 'none')
                || ' and merchant ' || t.merchant_id
           FROM ledger_transfers t
          WHERE (t.transaction_id IS NOT NULL
                 AND NOT EXISTS (SELECT 1 FROM transactions x WHERE x.id = t.transaction_id))
             OR NOT EXISTS (SELECT 1 FROM merchants m WHERE m.id = t.merchant_id)",
    ),
    (
        "a payment that did not succeed is not posted",
        "SELECT 'transaction ' || x.id, x.kind || ' ' || x.status || ' has transfer ' || t.id
           FROM ledger_transfers t JOIN transactions x ON x.id = t.transaction_id
          WHERE x.status <> 'succeeded'",
    ),
];

/// Every invariant of the ledger, checked against the whole database. Empty: all hold.
pub async fn check(pool: &PgPool) -> Result<Vec<Violation>, DbError> {
    let mut found = Vec::new();
    for (rule, sql) in CHECKS {
        let rows: Vec<(String, String)> = sqlx::query_as(sql).fetch_all(pool).await?;
        found.extend(rows.into_iter().map(|(subject, detail)| Violation {
            subject,
            rule,
            detail,
        }));
    }
    Ok(found)
}

/// The merchant accounts' figures, for tests and the CLI: `(available, reserved)` of
/// `merchant` in `currency`, zeros when it has no account.
pub async fn account<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    currency: Currency,
) -> Result<(i64, i64), DbError> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT balance - reserved, reserved FROM ledger_accounts
          WHERE kind = 'merchant' AND merchant_id = $1 AND currency = $2",
    )
    .bind(merchant.as_uuid())
    .bind(currency.code())
    .fetch_optional(exec)
    .await?;
    Ok(row.unwrap_or((0, 0)))
}
