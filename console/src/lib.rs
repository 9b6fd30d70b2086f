//! paygate-console: the web console, served by the API process at `/console` (issue 19).
//!
//! Server-rendered HTML (maud), no JavaScript, its one stylesheet vendored in this crate.
//! People sign in with an email and a password (argon2id); a session is a short-lived JWT
//! (HS256, keyed from `[secrets]`) in an HttpOnly, SameSite=Strict cookie, checked on every
//! request against the user's row, so disabling a user takes effect at once. Every form
//! carries a CSRF token (a signed double submit, [`csrf`]); sign-in attempts are limited per
//! account and per address ([`limits`]).
//!
//! Two roles ([`paygate_core::db::console_users::Role`]): a merchant user sees one
//! merchant's data (another merchant's id is simply not found: 404); an operator sees every
//! merchant's and the operator pages (review queue, payments of unknown outcome, gateway
//! health, the dead-letter queue). A merchant user at an operator page gets 403.
//!
//! Its own crate because it is a second user interface with its own concerns (cookies,
//! sessions, HTML) that the JSON API does not share; it reads and writes through
//! `paygate_core::db` like the API does, so a rule about money lives in one place.

pub mod chart;
pub mod csrf;
pub mod error;
pub mod layout;
pub mod limits;
pub mod pages;
pub mod password;
pub mod session;
pub mod timeline;
pub mod users;
pub mod viewer;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use paygate_core::config::{ConsoleConfig, KafkaConfig};
use paygate_core::keyring::Keyring;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

/// Largest form body accepted (the longest field is a 2,000-character reason).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the console's handlers share; cheap to clone.
#[derive(Clone)]
pub struct ConsoleState(Arc<Shared>);

pub struct Shared {
    pub pool: PgPool,
    /// The API's Redis: the transaction cache to invalidate after a resolution, and the
    /// payment processors' published breaker states.
    pub redis: ConnectionManager,
    pub redis_prefix: String,
    /// Opens and seals webhook signing secrets (rotation from the console).
    pub keyring: Arc<Keyring>,
    pub sessions: session::SessionKeys,
    pub csrf: csrf::Csrf,
    pub limits: limits::SignInLimits,
    pub config: ConsoleConfig,
    /// For reading the dead-letter topic.
    pub kafka: KafkaConfig,
    /// The configured gateways (the transactions filter's choices).
    pub gateways: Vec<String>,
    /// `api.shed_after_wait_ms`, shown beside the pipeline's wait (zero: admission control is
    /// off).
    pub shed_after_wait: Duration,
}

impl Deref for ConsoleState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What the API process hands the console.
pub struct ConsoleParts {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub redis_prefix: String,
    pub keyring: Arc<Keyring>,
    pub config: ConsoleConfig,
    pub kafka: KafkaConfig,
    pub gateways: Vec<String>,
    /// `api.shed_after_wait_ms`: the pipeline wait past which the API refuses new payments.
    pub shed_after_wait: Duration,
}

impl ConsoleState {
    pub fn new(parts: ConsoleParts) -> Self {
        let sessions = session::SessionKeys::new(
            &parts.keyring.derive_key("console-session"),
            parts.config.session,
        );
        let csrf = csrf::Csrf::new(parts.keyring.derive_key("console-csrf"));
        let limits = limits::SignInLimits::new(&parts.config);
        Self(Arc::new(Shared {
            pool: parts.pool,
            redis: parts.redis,
            redis_prefix: parts.redis_prefix,
            keyring: parts.keyring,
            sessions,
            csrf,
            limits,
            config: parts.config,
            kafka: parts.kafka,
            gateways: parts.gateways,
            shed_after_wait: parts.shed_after_wait,
        }))
    }
}

/// The console's routes, to be nested at `/console`.
pub fn router(state: ConsoleState) -> Router {
    use pages::*;
    Router::new()
        .route("/", get(dashboard::show))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/transactions", get(transactions::list))
        .route("/transactions/{id}", get(payment::show))
        .route(
            "/transactions/{id}/events/{event}/redeliver",
            post(payment::redeliver),
        )
        .route("/balance", get(balance::show))
        .route("/webhooks", get(webhooks::list))
        .route("/webhooks/{id}", get(webhooks::show))
        .route("/webhooks/{id}/enable", post(webhooks::enable))
        .route("/webhooks/{id}/disable", post(webhooks::disable))
        .route("/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/api-keys", get(api_keys::list).post(api_keys::create))
        .route("/api-keys/{id}/revoke", post(api_keys::revoke))
        .route("/ops/review", get(ops::review))
        .route("/ops/review/{id}", post(ops::mark_reviewed))
        .route("/ops/unresolved", get(ops::unresolved))
        .route("/ops/unresolved/{id}/resolve", post(ops::resolve))
        .route("/ops/gateways", get(ops::gateways))
        .route("/ops/dlq", get(ops::dlq))
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            viewer::session_layer,
        ))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        // Added after the session layer, so outside it: the stylesheet needs no session
        // (and no database read).
        .route("/assets/console.css", get(layout::stylesheet))
        .with_state(state)
}
