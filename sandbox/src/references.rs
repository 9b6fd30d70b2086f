//! The references report (`GET /_admin/references/{reference}`): the wire types live in
//! `paygate-sandbox-admin`; this module reads them off the sandbox's records.

use paygate_gateways::ReportedStatus;

use crate::engine::{Record, RecordState};
pub use paygate_sandbox_admin::references::{ExecutionReport, Outcome, ReferenceReport};

fn outcome(status: &ReportedStatus) -> Outcome {
    match status {
        ReportedStatus::Succeeded => Outcome::Succeeded,
        ReportedStatus::Failed { .. } => Outcome::Failed,
    }
}

/// One account's record of a reference, as the report shows it.
pub(crate) fn execution_report(record: &Record) -> ExecutionReport {
    let (outcome, announced, decided) = match &record.state {
        RecordState::AwaitingAction => (Outcome::Pending, false, Outcome::Pending),
        RecordState::Pending { outcome: decided } => {
            (Outcome::Pending, false, self::outcome(decided))
        }
        RecordState::Final(told) => (self::outcome(told), true, self::outcome(told)),
    };
    ExecutionReport {
        account: record.order.account.as_str().to_owned(),
        provider_reference: record.provider_reference.clone(),
        kind: record.order.kind,
        amount: record.order.money.amount.minor_units(),
        currency: record.order.money.currency.code().to_owned(),
        outcome,
        announced,
        decided,
        executed_at: record.executed_at,
    }
}
