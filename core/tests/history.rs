//! Transaction history (written by triggers), the timeline built from it and its neighbours,
//! and the per-minute activity, against the real Postgres; each test has its own database.

use chrono::{DateTime, Utc};
use paygate_core::db::timeline::{self, TimelineKind};
use paygate_core::db::transactions::{self, Resolution};
use paygate_core::db::webhook_endpoints::{self, NewDeliveryAttempt};
use paygate_core::db::webhooks::{self, EventType};
use paygate_core::db::{activity, history, merchants};
use paygate_core::domain::{GatewayName, MerchantId, Transaction, TransactionStatus};
use paygate_core::testing::{fresh_database, stored_deposit};
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Error = Box<dyn std::error::Error>;

use TransactionStatus::*;

async fn accepted(pool: &PgPool, merchant: MerchantId) -> Result<Transaction, Error> {
    stored_deposit(pool, merchant, 1000, "USD").await
}

/// Moves `tx` to `to` with the repository's version-checked update.
async fn move_to(
    pool: &PgPool,
    tx: &Transaction,
    to: TransactionStatus,
    gateway: Option<&str>,
    failure: Option<&str>,
) -> Result<Transaction, Error> {
    let mut update = tx.advance(to, Utc::now())?;
    if to == Submitting {
        update = update.start_attempt().clear_failure();
    }
    if let Some(gateway) = gateway {
        update = update.routed_to(GatewayName::parse(gateway)?);
    }
    if let Some(code) = failure {
        update = update.failure(code, "it went wrong");
    }
    if to == RetryScheduled || to == Unresolved {
        update = update.retry_at(Utc::now());
    }
    Ok(transactions::apply(pool, &update)
        .await?
        .ok_or("stale version")?)
}

/// (from, to, gateway, attempt, failure code, version) of each history row.
type Row = (
    Option<TransactionStatus>,
    TransactionStatus,
    Option<String>,
    i32,
    Option<String>,
    i64,
);

#[tokio::test]
async fn every_state_change_is_recorded_in_its_commit_and_nothing_else_is() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let tx = accepted(&pool, merchant.id).await?;
    let tx = move_to(&pool, &tx, Submitting, Some("alpha"), None).await?;
    let tx = move_to(&pool, &tx, RetryScheduled, None, Some("timeout")).await?;
    // A change without a new status (a reschedule) is not a state change.
    assert!(transactions::reschedule(&pool, tx.id, tx.version, Some(Utc::now()), None).await?);
    let tx = move_to(&pool, &tx, Submitting, Some("beta"), None).await?;
    let tx = move_to(&pool, &tx, Submitted, None, None).await?;
    let tx = move_to(&pool, &tx, Succeeded, None, None).await?;
    // A stale write changes nothing, so records nothing.
    let stale = tx.advance(Failed, Utc::now());
    assert!(stale.is_err(), "succeeded is terminal");

    let rows = history::for_transaction(&pool, tx.id).await?;
    let got: Vec<Row> = rows
        .iter()
        .map(|h| {
            (
                h.from_status,
                h.to_status,
                h.gateway.as_ref().map(|g| g.as_str().to_owned()),
                h.attempt,
                h.failure_code.clone(),
                h.version,
            )
        })
        .collect();
    let s = |g: &str| Some(g.to_owned());
    assert_eq!(
        got,
        vec![
            (None, Pending, None, 0, None, 0),
            (Some(Pending), Submitting, s("alpha"), 1, None, 1),
            (
                Some(Submitting),
                RetryScheduled,
                s("alpha"),
                1,
                s("timeout"),
                2
            ),
            (Some(RetryScheduled), Submitting, s("beta"), 2, None, 3),
            (Some(Submitting), Submitted, s("beta"), 2, None, 4),
            (Some(Submitted), Succeeded, s("beta"), 2, None, 5),
        ]
    );
    assert!(rows
        .windows(2)
        .all(|w| w[0].id < w[1].id && w[0].at <= w[1].at));
    assert_eq!(
        rows.iter().filter(|h| h.ends_attempt()).count(),
        2,
        "two provider attempts"
    );
    assert!(rows.iter().all(|h| h.transaction_id == tx.id));

    // Another payment's rows are its own; a rolled-back change leaves no row.
    let other = accepted(&pool, merchant.id).await?;
    let mut db = pool.begin().await?;
    transactions::apply(&mut *db, &other.advance(Failed, Utc::now())?).await?;
    db.rollback().await?;
    let theirs = history::for_transaction(&pool, other.id).await?;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].to_status, Pending);
    Ok(())
}

#[tokio::test]
async fn the_timeline_merges_history_callbacks_resolutions_events_and_deliveries() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let tx = accepted(&pool, merchant.id).await?;
    let tx = move_to(&pool, &tx, Submitting, Some("alpha"), None).await?;
    let tx = move_to(&pool, &tx, RetryScheduled, None, Some("timeout")).await?;
    let tx = move_to(&pool, &tx, Submitting, Some("alpha"), None).await?;
    let tx = move_to(&pool, &tx, Unresolved, None, Some("ambiguous")).await?;
    sqlx::query(
        "INSERT INTO callback_log (gateway, provider_event_id, transaction_id, reported_status, failure_code,
             reported_amount, reported_currency, outcome, needs_review, detail, status_before, version_before,
             received_at)
         VALUES ('alpha', 'evt_9', $1, 'failed', 'declined', 999, 'USD', 'mismatch', true,
             'amount 999 differs from 1000', 'unresolved', $2, now() - interval '1 second')",
    )
    .bind(tx.id.as_uuid())
    .bind(tx.version)
    .execute(&pool)
    .await?;
    // The resolution records the merchant's event in its own commit.
    let update = tx.advance(Succeeded, Utc::now())?;
    let resolved = transactions::resolve(
        &pool,
        &update,
        Unresolved,
        &Resolution {
            actor: "ops@example.com".into(),
            reason: "provider dashboard shows it paid".into(),
        },
        &paygate_core::announce::completed(&update.next)?,
    )
    .await?
    .ok_or("not resolved")?;
    let event_id = webhooks::event_id_for(tx.id, Succeeded);
    for (attempt, code, error) in [(1, None, Some("connection refused")), (2, Some(200), None)] {
        webhook_endpoints::record_attempt(
            &pool,
            &NewDeliveryAttempt {
                event_id,
                transaction_id: tx.id,
                endpoint_id: None,
                url: "https://merchant.example/hook".into(),
                attempt,
                status_code: code,
                latency_ms: Some(12),
                response_excerpt: code.map(|_| "ok".to_owned()),
                error: error.map(str::to_owned),
            },
        )
        .await?;
    }

    let entries = timeline::for_transaction(&pool, tx.id).await?;
    assert!(
        entries.windows(2).all(|w| w[0].at <= w[1].at),
        "time ordered"
    );
    let kinds: Vec<TimelineKind> = entries.into_iter().map(|e| e.kind).collect();
    let alpha = Some(GatewayName::parse("alpha")?);
    assert_eq!(kinds.len(), 9, "{kinds:#?}");
    assert_eq!(kinds[0], TimelineKind::Created { status: Pending });
    let TimelineKind::Attempt {
        gateway,
        attempt: 1,
        started_at: Some(_),
        result: Some(RetryScheduled),
        failure_code: Some(code),
        latency_ms: Some(latency),
    } = &kinds[1]
    else {
        return Err(format!("not the first attempt: {:?}", kinds[1]).into());
    };
    assert_eq!((gateway, code.as_str()), (&alpha, "timeout"));
    assert!(*latency >= 0);
    assert!(matches!(
        &kinds[2],
        TimelineKind::Attempt { attempt: 2, result: Some(Unresolved), failure_code: Some(c), .. } if c == "ambiguous"
    ));
    assert!(matches!(
        &kinds[3],
        TimelineKind::Callback { reported_status: Failed, outcome, needs_review: true, detail: Some(d), .. }
            if outcome == "mismatch" && d.contains("999")
    ));
    assert_eq!(
        kinds[4],
        TimelineKind::StateChange {
            from: Unresolved,
            to: Succeeded,
            gateway: alpha.clone(),
            failure_code: Some("ambiguous".into()),
        }
    );
    assert_eq!(
        kinds[5],
        TimelineKind::Resolution {
            actor: "ops@example.com".into(),
            reason: "provider dashboard shows it paid".into(),
            previous_status: Unresolved,
            resolved_status: Succeeded,
        }
    );
    assert_eq!(
        kinds[6],
        TimelineKind::Event {
            event_id,
            event_type: EventType::TransactionSucceeded
        }
    );
    assert!(matches!(
        &kinds[7],
        TimelineKind::Delivery { attempt: 1, status_code: None, error: Some(e), .. } if e == "connection refused"
    ));
    assert!(matches!(
        &kinds[8],
        TimelineKind::Delivery {
            attempt: 2,
            status_code: Some(200),
            error: None,
            ..
        }
    ));
    assert_eq!(resolved.status, Succeeded);

    // A payment in the middle of an attempt shows it in progress; an unknown one is empty.
    let other = accepted(&pool, merchant.id).await?;
    move_to(&pool, &other, Submitting, Some("alpha"), None).await?;
    let kinds: Vec<_> = timeline::for_transaction(&pool, other.id)
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                TimelineKind::Created { .. },
                TimelineKind::Attempt {
                    attempt: 1,
                    result: None,
                    latency_ms: None,
                    ..
                }
            ]
        ),
        "{kinds:?}"
    );
    let unknown = paygate_core::domain::TransactionId::new();
    assert!(timeline::for_transaction(&pool, unknown).await?.is_empty());
    Ok(())
}

/// Places the row that made `tx` reach `status` at `minutes_ago` minutes (+10 s) before the
/// minute `base`, and its acceptance `took_ms` before that.
async fn place(
    pool: &PgPool,
    base: DateTime<Utc>,
    tx: &Transaction,
    status: TransactionStatus,
    minutes_ago: i32,
    took_ms: i32,
) -> TestResult {
    let placed = sqlx::query(
        "WITH moved AS (
             UPDATE transaction_history
                SET at = $5 - make_interval(mins => $3) + interval '10 seconds'
              WHERE transaction_id = $1 AND to_status = $2 RETURNING at
         )
         UPDATE transactions SET created_at = (SELECT at FROM moved) - make_interval(secs => $4 / 1000.0)
          WHERE id = $1",
    )
    .bind(tx.id.as_uuid())
    .bind(status.as_str())
    .bind(minutes_ago)
    .bind(f64::from(took_ms))
    .bind(base)
    .execute(pool)
    .await?;
    assert_eq!(placed.rows_affected(), 1);
    Ok(())
}

#[tokio::test]
async fn activity_counts_outcomes_per_minute_with_every_minute_present() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let merchant = merchants::create(&pool, "Acme").await?;
    let other = merchants::create(&pool, "Other").await?;
    // Minutes are counted back from this one, so a minute ending mid-test moves nothing.
    let base: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc('minute', now())")
        .fetch_one(&pool)
        .await?;

    let a = accepted(&pool, merchant.id).await?;
    let a = move_to(&pool, &a, Submitting, Some("alpha"), None).await?;
    move_to(&pool, &a, Succeeded, None, None).await?;
    place(&pool, base, &a, Succeeded, 10, 1000).await?;
    let b = accepted(&pool, merchant.id).await?;
    move_to(&pool, &b, Failed, None, Some("no_route")).await?;
    place(&pool, base, &b, Failed, 10, 3000).await?;
    let c = accepted(&pool, merchant.id).await?;
    let c = move_to(&pool, &c, Submitting, Some("alpha"), None).await?;
    move_to(&pool, &c, Unresolved, None, None).await?;
    place(&pool, base, &c, Unresolved, 5, 500).await?;
    let d = accepted(&pool, other.id).await?;
    let d = move_to(&pool, &d, Submitting, Some("alpha"), None).await?;
    move_to(&pool, &d, Succeeded, None, None).await?;
    place(&pool, base, &d, Succeeded, 10, 9000).await?;
    // Outside the hour: not shown.
    let e = accepted(&pool, merchant.id).await?;
    move_to(&pool, &e, Failed, None, None).await?;
    place(&pool, base, &e, Failed, 90, 100).await?;

    let since = Utc::now() - chrono::Duration::minutes(59);
    let minutes = activity::per_minute(&pool, Some(merchant.id), since).await?;
    assert!(
        (60..=61).contains(&minutes.len()),
        "every minute present: {}",
        minutes.len()
    );
    assert!(minutes
        .windows(2)
        .all(|w| w[1].minute - w[0].minute == chrono::Duration::minutes(1)));
    let at = |ago: i64| {
        minutes
            .iter()
            .find(|m| m.minute == base - chrono::Duration::minutes(ago))
            .ok_or(format!("no minute {ago} ago"))
    };
    let ten = at(10)?;
    assert_eq!((ten.succeeded, ten.failed, ten.unresolved), (1, 1, 0));
    assert_eq!(ten.p50_ms.map(f64::round), Some(2000.0));
    assert_eq!(ten.p99_ms.map(f64::round), Some(2980.0));
    let five = at(5)?;
    assert_eq!((five.succeeded, five.failed, five.unresolved), (0, 0, 1));
    assert_eq!(five.p50_ms, None, "unresolved is not final");
    let busy: i64 = minutes
        .iter()
        .map(|m| m.succeeded + m.failed + m.unresolved)
        .sum();
    assert_eq!(busy, 3, "the rest are zeros, the old one is outside");

    let everyone = activity::per_minute(&pool, None, since).await?;
    let ten = everyone
        .iter()
        .find(|m| m.minute == base - chrono::Duration::minutes(10))
        .ok_or("no minute")?;
    assert_eq!((ten.succeeded, ten.failed), (2, 1));
    assert_eq!(ten.p50_ms.map(f64::round), Some(3000.0));
    Ok(())
}
