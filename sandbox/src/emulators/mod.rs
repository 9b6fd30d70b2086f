//! Emulators of real payment providers, each written from the provider's public API
//! documentation alone. They import nothing from the connectors in `paygate-gateways`
//! (their own wire model, their own signing), so a connector that misreads the
//! documentation fails against an emulator that read it right, and the other way round.
//!
//! Each emulator shares the sandbox's [`crate::engine::Engine`]: idempotency per (account,
//! reference), the fault knobs, stats, and callback delivery with retries. It adds what
//! its provider does: its routes under `/{account}/…`, its authentication, its hosted
//! customer step (a `GET` on the redirect URL completes or, with `?action=cancel`,
//! cancels), and its callback format.

pub mod mpesa;
pub mod paystack;
pub mod stripe;

use std::sync::Arc;

use axum::Router;

use crate::engine::Engine;

/// Every emulator's routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .merge(paystack::routes())
        .merge(mpesa::routes())
        .merge(stripe::routes())
}
