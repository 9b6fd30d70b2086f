//! M-Pesa Daraja emulator (to be written from the provider's public documentation).

use std::sync::Arc;

use axum::Router;

use crate::delivery::{Facts, Outbound};
use crate::engine::Engine;

/// The routes this provider serves, under `/{account}/…`.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
}

/// The provider's own id for a new payment.
pub fn provider_reference(n: u64) -> String {
    n.to_string()
}

/// A payment's callback in this provider's format (`malformed`: authentic but unreadable).
pub fn callback(_engine: &Engine, facts: &Facts, _malformed: bool) -> Outbound {
    Outbound {
        content_type: "application/json".into(),
        headers: Vec::new(),
        body: bytes::Bytes::from(facts.reference.clone()),
    }
}
