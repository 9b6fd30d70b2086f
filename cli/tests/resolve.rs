//! `paygate transactions resolve`, run as the binary against a real Postgres: an unresolved
//! payment is settled by hand with an audit row and the merchant's webhook event, in one commit;
//! anything else is refused with a message naming the problem, and nothing is written.

mod common;

use chrono::Utc;
use common::paygate;
use paygate_core::announce;
use paygate_core::config::Config;
use paygate_core::db::transactions;
use paygate_core::db::webhooks::{self, EventType};
use paygate_core::domain::{
    CustomerReference, Money, NewTransaction, Transaction, TransactionKind, TransactionStatus,
};
use sqlx::PgPool;

type TestResult = anyhow::Result<()>;

/// Where the merchant wants to hear about each payment: one delivery per event.
const CALLBACK_URL: &str = "https://merchant.example/paygate/events";

async fn world() -> anyhow::Result<(Config, PgPool)> {
    paygate_testkit::isolated_config().await
}

/// A withdrawal that reached `status` the way the processor moves it there.
async fn transaction(pool: &PgPool, path: &[TransactionStatus]) -> anyhow::Result<Transaction> {
    let merchant = paygate_core::db::merchants::create(pool, "Resolve tests").await?;
    let funds = Money::from_parts(2_500, "EUR")?;
    paygate_core::db::ledger::top_up(pool, merchant.id, funds, "funds").await?;
    let mut tx = Transaction::create(
        NewTransaction {
            merchant_id: merchant.id,
            kind: TransactionKind::Withdrawal,
            money: Money::from_parts(2_500, "EUR")?,
            customer: CustomerReference::parse("cust_1")?,
            gateway: None,
            callback_url: Some(CALLBACK_URL.to_owned()),
            metadata: serde_json::json!({}),
        },
        Utc::now(),
    );
    transactions::insert(pool, &tx, None, &announce::pending(&tx, None)).await?;
    for status in path {
        let mut update = tx.advance(*status, Utc::now())?;
        if *status == TransactionStatus::Submitting {
            update = update
                .start_attempt()
                .routed_to(paygate_core::domain::GatewayName::parse("gw")?);
        }
        if *status == TransactionStatus::Unresolved {
            update = update
                .pin_ambiguous(Utc::now())
                .failure("outcome_unknown", "502");
        }
        // A status the merchant is told of is recorded with its event, as the processor does.
        let applied = if EventType::for_status(*status).is_some() {
            let event = announce::completed(&update.next)?;
            transactions::apply_with_event(pool, &update, &event).await?
        } else {
            transactions::apply(pool, &update).await?
        };
        tx = applied.ok_or_else(|| anyhow::anyhow!("update did not apply"))?;
    }
    Ok(tx)
}

/// What the merchant was told about `tx`, oldest first: each webhook event's type with its
/// body's `data.status` and `data.failure.code`, after checking the event is `tx`'s (its
/// merchant, its deterministic (transaction, status) id, a body naming the same type and id).
async fn told(
    pool: &PgPool,
    tx: &Transaction,
) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    let mut told = Vec::new();
    for event in webhooks::events_for_transaction(pool, tx.id).await? {
        let body: serde_json::Value = serde_json::from_str(&event.payload)?;
        let status = body["data"]["status"].as_str().unwrap_or_default();
        let kind = event.event_type.as_str();
        anyhow::ensure!(
            body["type"] == kind
                && body["id"] == event.id.to_string()
                && body["data"]["id"] == tx.id.to_string()
                && event.merchant_id == tx.merchant_id
                && event.id == webhooks::event_id_for(tx.id, status.parse()?),
            "{} is not the event of {} being {status}: {event:?}",
            event.id,
            tx.id
        );
        let code = body["data"]["failure"]["code"].as_str().map(str::to_owned);
        told.push((kind.to_owned(), status.to_owned(), code));
    }
    Ok(told)
}

/// Announcements through the retired `transactions.completed` outbox topic: none any more.
async fn retired_rows(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'transactions.completed'")
            .fetch_one(pool)
            .await?,
    )
}

/// What the merchant was told of a payment that went unresolved (`outcome_unknown`), and
/// nothing since.
fn unresolved_only() -> Vec<(String, String, Option<String>)> {
    vec![(
        "transaction.unresolved".to_owned(),
        "unresolved".to_owned(),
        Some("outcome_unknown".to_owned()),
    )]
}

use TransactionStatus::*;

#[tokio::test]
async fn an_unresolved_payment_is_resolved_with_an_audit_row_and_a_webhook() -> TestResult {
    let (config, pool) = world().await?;
    let tx = transaction(&pool, &[Submitting, Unresolved]).await?;
    assert_eq!(told(&pool, &tx).await?, unresolved_only());
    let id = tx.id.to_string();
    let out = paygate(
        &config,
        &[
            "transactions",
            "resolve",
            &id,
            "--succeeded",
            "--reason",
            "provider dashboard: paid 12:03",
            "--actor",
            "ops@example.com",
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));

    let now = transactions::get(&pool, tx.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(now.status, Succeeded);
    assert_eq!(now.version, tx.version + 1);
    assert_eq!(now.failure, None);
    let audit = transactions::resolutions(&pool, tx.id).await?;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].previous_status, Unresolved);
    assert_eq!(audit[0].previous_version, tx.version);
    assert_eq!(audit[0].resolved_status, Succeeded);
    assert_eq!(audit[0].resolution.actor, "ops@example.com");
    assert_eq!(audit[0].resolution.reason, "provider dashboard: paid 12:03");
    let succeeded = (
        "transaction.succeeded".to_owned(),
        "succeeded".to_owned(),
        None,
    );
    let mut expected = unresolved_only();
    expected.push(succeeded);
    assert_eq!(told(&pool, &tx).await?, expected, "the merchant is told");
    // ... and its delivery to the transaction's callback_url is scheduled in that commit.
    let deliveries =
        webhooks::deliveries_for_event(&pool, webhooks::event_id_for(tx.id, Succeeded)).await?;
    let urls: Vec<&str> = deliveries.iter().map(|d| d.url.as_str()).collect();
    assert_eq!(urls, vec![CALLBACK_URL], "{deliveries:?}");
    assert_eq!(retired_rows(&pool).await?, 0);
    let eur = paygate_core::domain::Currency::parse("EUR")?;
    let account = paygate_core::db::ledger::account(&pool, now.merchant_id, eur).await?;
    assert_eq!(account, (0, 0), "the hold is posted: the money left");

    // A second resolution is refused: it is no longer unresolved.
    let again = paygate(
        &config,
        &[
            "transactions",
            "resolve",
            &id,
            "--failed",
            "--reason",
            "oops",
        ],
    )?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is succeeded, not unresolved"));
    assert_eq!(transactions::resolutions(&pool, tx.id).await?.len(), 1);
    assert_eq!(told(&pool, &tx).await?, expected, "nothing more is told");
    Ok(())
}

#[tokio::test]
async fn a_failed_resolution_names_its_reason_on_the_transaction() -> TestResult {
    let (config, pool) = world().await?;
    let tx = transaction(&pool, &[Submitting, Unresolved]).await?;
    let out = paygate(
        &config,
        &[
            "transactions",
            "resolve",
            &tx.id.to_string(),
            "--failed",
            "--reason",
            "provider: never received",
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = transactions::get(&pool, tx.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    assert_eq!(now.status, Failed);
    let failure = now.failure.ok_or_else(|| anyhow::anyhow!("no failure"))?;
    assert_eq!(failure.code, paygate_core::resolution::RESOLVED_FAILED);
    assert!(failure.message.contains("provider: never received"));
    let mut expected = unresolved_only();
    expected.push((
        "transaction.failed".to_owned(),
        "failed".to_owned(),
        Some(paygate_core::resolution::RESOLVED_FAILED.to_owned()),
    ));
    assert_eq!(
        told(&pool, &tx).await?,
        expected,
        "the merchant is told why"
    );
    // The unresolved withdrawal kept its hold until now; failing it releases the funds.
    let eur = paygate_core::domain::Currency::parse("EUR")?;
    let account = paygate_core::db::ledger::account(&pool, now.merchant_id, eur).await?;
    assert_eq!(account, (2_500, 0));
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_refused_and_write_nothing() -> TestResult {
    let (config, pool) = world().await?;
    let in_flight = transaction(&pool, &[Submitting, Submitted]).await?;
    let unresolved = transaction(&pool, &[Submitting, Unresolved]).await?;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                in_flight.id.to_string(),
                "--succeeded".into(),
                "--reason".into(),
                "x".into(),
            ],
            "is submitted, not unresolved",
        ),
        (
            vec![
                "txn_0000".into(),
                "--succeeded".into(),
                "--reason".into(),
                "x".into(),
            ],
            "not a valid transaction id",
        ),
        (
            vec![
                paygate_core::domain::TransactionId::new().to_string(),
                "--failed".into(),
                "--reason".into(),
                "x".into(),
            ],
            "no transaction",
        ),
        (
            vec![
                unresolved.id.to_string(),
                "--failed".into(),
                "--reason".into(),
                "   ".into(),
            ],
            "reason must be 1 to 2000 characters",
        ),
        (
            vec![unresolved.id.to_string(), "--reason".into(), "x".into()],
            "--succeeded|--failed",
        ),
        (
            vec![
                unresolved.id.to_string(),
                "--succeeded".into(),
                "--failed".into(),
                "--reason".into(),
                "x".into(),
            ],
            "cannot be used with",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["transactions", "resolve"];
        full.extend(args.iter().map(String::as_str));
        let out = paygate(&config, &full)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    for tx in [&in_flight, &unresolved] {
        let now = transactions::get(&pool, tx.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("gone"))?;
        assert_eq!(now.version, tx.version, "nothing written");
        assert!(transactions::resolutions(&pool, tx.id).await?.is_empty());
    }
    assert!(told(&pool, &in_flight).await?.is_empty(), "nothing told");
    assert_eq!(told(&pool, &unresolved).await?, unresolved_only());
    assert_eq!(retired_rows(&pool).await?, 0);
    Ok(())
}
