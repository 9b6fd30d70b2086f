//! Webhook events and their durable delivery schedule, for the callback dispatcher (and the
//! API's `POST /v1/events/{id}/redeliver`), one module per concern:
//!
//! - [`events`]: one event per (transaction, announced status: terminal or `unresolved`),
//!   recorded with a delivery row per destination in one commit; recording the same event
//!   again changes nothing. [`redeliver`] schedules a fresh delivery of an event.
//! - [`secrets`]: endpoints keep a previous secret until an expiry (rotation overlap);
//!   deliveries to a transaction's `callback_url` are signed with the merchant's default
//!   secret ([`merchant_default_secret`], table `merchant_webhook_secrets`, created on first
//!   use). Every secret is stored sealed ([`crate::keyring`]).
//! - [`reseal`]: the batch pass that seals rows written in clear before sealing existed
//!   (`paygate migrate`) and re-seals every row under the current key (`paygate secrets
//!   rotate-key`).
//! - [`deliveries`]: the scheduler takes due deliveries under a lease (`FOR UPDATE SKIP
//!   LOCKED`, so several dispatchers share the work) and reports each attempt; an attempt is
//!   fenced by its attempt number, so a worker whose lease ran out and was re-claimed cannot
//!   overwrite the newer attempt's outcome.
//!
//! The endpoints themselves (and when one is disabled for failing) are
//! [`super::webhook_endpoints`]; the disable policy is the dispatcher's.

pub mod deliveries;
pub mod events;
pub mod reseal;
pub mod secrets;

pub use deliveries::{
    backlog_by_destination, callback_destination, claim_due, complete, deliveries_for_event,
    finish, ClaimLimits, Claimed, ClaimedDelivery, Delivery, DeliveryOutcome, DeliveryState,
    Finished, InFlight, StreakChange,
};
pub use events::{
    bind_event, event_id_for, event_id_for_refund, events_for_transaction, get_event, record_event,
    record_event_ctes, redeliver, redeliver_within, EventType, NewEvent, Recorded, Redelivery,
    RedeliveryOutcome, WebhookEvent, REDELIVERIES_PER_HOUR,
};
pub use secrets::{
    merchant_default_secret, rotate_endpoint_secret, rotate_merchant_default_secret, SigningSecret,
    ROTATION_OVERLAP,
};
