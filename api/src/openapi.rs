//! The OpenAPI 3.1 document, generated from the handlers and types (utoipa), served at
//! `/openapi.json` and checked in as `api/openapi.json` (a test fails when it is stale;
//! regenerate with `UPDATE_OPENAPI=1 cargo test -p paygate-api --test api openapi`).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    callbacks, deposits, events, health, transactions, webhook_endpoints, webhook_secret,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "paygate API",
        description = "Merchant API (deposits, withdrawals, transactions, webhook endpoints, signing secrets, event redelivery), provider callback ingress and operations endpoints. Amounts are integer minor units with an ISO 4217 currency. Every error is `{\"error\": {\"type\", \"code\", \"message\", \"param\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        deposits::create_deposit,
        deposits::create_withdrawal,
        transactions::list,
        transactions::retrieve,
        transactions::deliveries,
        transactions::events,
        webhook_endpoints::create,
        webhook_endpoints::list,
        webhook_endpoints::retrieve,
        webhook_endpoints::delete,
        webhook_endpoints::rotate_secret,
        webhook_secret::retrieve,
        webhook_secret::rotate,
        events::redeliver,
        callbacks::receive,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "transactions", description = "Deposits, withdrawals and their state"),
        (name = "webhook_endpoints", description = "Where paygate tells you of outcomes: endpoints, signing secrets, event redelivery"),
        (name = "callbacks", description = "Provider callback ingress"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Your secret API key, `sk_…`"))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON (what is checked in).
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

pub async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}
