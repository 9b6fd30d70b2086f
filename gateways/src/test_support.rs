//! Fixtures shared by the connectors' unit tests.

use chrono::{DateTime, Utc};
use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, Transaction, TransactionKind,
};
use url::Url;

use crate::callback::CallbackFields;
use crate::registry::GatewaySettings;
use crate::secret::Secret;
use crate::ReportedStatus;

pub const WEBHOOK_SECRET: &str = "whsec_test";

pub fn settings(kind: &str, base_url: &str) -> GatewaySettings {
    let name = GatewayName::parse(&format!("test-{kind}")).unwrap_or_else(|e| panic!("{e}"));
    let url = Url::parse(base_url).unwrap_or_else(|e| panic!("{e}"));
    GatewaySettings::new(
        name,
        kind,
        url,
        Secret::new("sk_test"),
        Secret::new(WEBHOOK_SECRET),
    )
}

pub fn transaction(kind: TransactionKind) -> Transaction {
    Transaction::create(
        NewTransaction {
            merchant_id: MerchantId::new(),
            kind,
            money: Money::from_parts(1050, "USD").unwrap_or_else(|e| panic!("{e}")),
            customer: CustomerReference::parse("cust_1").unwrap_or_else(|e| panic!("{e}")),
            gateway: None,
            callback_url: None,
            metadata: serde_json::json!({}),
        },
        Utc::now(),
    )
}

pub fn fields(tx: &Transaction, status: ReportedStatus, sent_at: DateTime<Utc>) -> CallbackFields {
    CallbackFields {
        transaction_id: tx.id,
        kind: tx.kind,
        status,
        provider_reference: "prov_123".into(),
        event_id: "evt_1".into(),
        money: tx.money,
        sent_at,
    }
}

/// The payment outcome of a callback, or a panic naming what came instead.
pub fn payment(
    verdict: Result<crate::CallbackEvent, crate::CallbackError>,
) -> crate::CallbackOutcome {
    match verdict {
        Ok(crate::CallbackEvent::Payment(outcome)) => outcome,
        other => panic!("expected a payment callback, got {other:?}"),
    }
}
