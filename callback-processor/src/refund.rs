//! Settles a provider's refund callback: find the refund (by our refund id when the
//! provider echoes it, else by its reference), check it is the refund reported (payment,
//! amount, currency), log the event once per `(gateway, provider_event_id)` and apply the
//! state change version-checked, all in one commit with the ledger's posting or void and,
//! for a final state, the merchant's `refund.*` announcement.

use chrono::Utc;
use paygate_core::announce;
use paygate_core::db::{refunds, DbError};
use paygate_core::domain::{Failure, GatewayName, MerchantId, Refund, RefundState};
use paygate_gateways::{RefundReport, RefundStatus};
use sqlx::PgPool;

use crate::decide::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum RefundSettleError {
    /// No refund has this id or provider reference: dead-letter it.
    #[error("unknown refund")]
    Unknown,
    /// The refund changed between the read and the write: retry the message.
    #[error("the refund changed while settling")]
    Raced,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for RefundSettleError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e.into())
    }
}

/// Settles one refund report; answers what became of it and, when it ended the refund
/// (its hold posted or voided), the merchant whose balance changed.
pub async fn settle(
    pool: &PgPool,
    gateway: &GatewayName,
    report: &RefundReport,
) -> Result<(Outcome, Option<MerchantId>), RefundSettleError> {
    let found = match report.refund_id {
        Some(id) => refunds::get(pool, id).await?,
        None => None,
    };
    let refund = match found {
        Some(refund) => refund,
        None => refunds::get_by_provider_reference(pool, &report.provider_reference)
            .await?
            .ok_or(RefundSettleError::Unknown)?,
    };
    let (outcome, update) = decide(&refund, report);
    let mut db = pool.begin().await?;
    let logged: Option<i64> = sqlx::query_scalar(
        "INSERT INTO refund_callback_log (gateway, provider_event_id, refund_id, reported_status,
             provider_reference, reported_amount, reported_currency, outcome, status_before, version_before)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (gateway, provider_event_id) DO NOTHING RETURNING id",
    )
    .bind(gateway.as_str())
    .bind(&report.provider_event_id)
    .bind(refund.id.as_uuid())
    .bind(reported(&report.status))
    .bind(&report.provider_reference)
    .bind(report.money.amount.minor_units())
    .bind(report.money.currency.code())
    .bind(outcome.as_str())
    .bind(refund.status.as_str())
    .bind(refund.version)
    .fetch_optional(&mut *db)
    .await?;
    if logged.is_none() {
        return Ok((Outcome::Duplicate, None));
    }
    let Some(update) = update else {
        db.commit().await?;
        return Ok((outcome, None));
    };
    let event = announce::refund_event_if_final(&mut *db, &update.next).await?;
    if refunds::apply_with_event(&mut *db, &update, event.as_ref())
        .await?
        .is_none()
    {
        return Err(RefundSettleError::Raced);
    }
    db.commit().await?;
    if event.is_some() {
        return Ok((outcome, Some(refund.merchant_id)));
    }
    Ok((outcome, None))
}

/// What a report does to `refund`: the outcome to log and the change to apply, if any.
fn decide(
    refund: &Refund,
    report: &RefundReport,
) -> (Outcome, Option<paygate_core::domain::RefundUpdate>) {
    if report.transaction_id != refund.transaction_id || report.money != refund.money {
        tracing::warn!(refund = %refund.id, "refund callback does not fit the refund (payment, amount or currency); not applied");
        return (Outcome::Mismatch, None);
    }
    let to = match &report.status {
        RefundStatus::Pending => RefundState::Submitted,
        RefundStatus::Succeeded => RefundState::Succeeded,
        RefundStatus::Failed { .. } => RefundState::Failed,
    };
    if refund.status == to {
        return (Outcome::Late, None);
    }
    if refund.status.is_terminal() {
        return (Outcome::Conflict, None);
    }
    let Ok(mut update) = refund.transition(to, Utc::now()) else {
        return (Outcome::Late, None);
    };
    if update.next.provider_reference.is_none() {
        update.next.provider_reference = Some(report.provider_reference.clone());
    }
    if let RefundStatus::Failed { code, reason } = &report.status {
        update.next.failure = Some(Failure {
            code: code.clone(),
            message: reason.chars().take(500).collect(),
        });
    }
    (Outcome::Applied, Some(update))
}

fn reported(status: &RefundStatus) -> &'static str {
    match status {
        RefundStatus::Pending => "pending",
        RefundStatus::Succeeded => "succeeded",
        RefundStatus::Failed { .. } => "failed",
    }
}
