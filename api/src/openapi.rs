//! The OpenAPI 3.1 document, generated from the handlers and types (utoipa), served at
//! `/openapi.json` and checked in as `api/openapi.json` (a test fails when it is stale;
//! regenerate with `UPDATE_OPENAPI=1 cargo test -p paygate-api --test api openapi`).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    balance, callbacks, deposits, events, health, refunds, transactions, webhook_endpoints,
    webhook_secret,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "paygate API",
        description = "Merchant API (deposits, withdrawals, transactions, refunds, webhook endpoints, signing secrets, event redelivery), provider callback ingress and operations endpoints. Amounts are integer minor units with an ISO 4217 currency. Every error is `{\"error\": {\"type\", \"code\", \"message\", \"param\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        deposits::create_deposit,
        deposits::create_withdrawal,
        balance::retrieve,
        balance::entries,
        transactions::list,
        transactions::retrieve,
        transactions::deliveries,
        transactions::events,
        refunds::create,
        refunds::list,
        refunds::retrieve,
        webhook_endpoints::create,
        webhook_endpoints::list,
        webhook_endpoints::retrieve,
        webhook_endpoints::delete,
        webhook_endpoints::rotate_secret,
        webhook_secret::retrieve,
        webhook_secret::rotate,
        events::redeliver,
        callbacks::receive,
        callbacks::receive_unsigned,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    modifiers(&BearerAuth, &ScopeForbidden),
    tags(
        (name = "transactions", description = "Deposits, withdrawals and their state"),
        (name = "refunds", description = "Money given back to the customer of a succeeded deposit"),
        (name = "balance", description = "What the merchant holds per currency, and the ledger entries that made it"),
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

/// Every route behind an API key may answer 403 `scope_missing` (the key lacks the route's
/// scope: `payments:write` for deposits, `payouts:write` for withdrawals, `read` for reads,
/// `webhooks:manage` for endpoints, secrets and redelivery) and 429 (the per-key rate
/// limit, checked with authentication, or the per-address limit on failed authentications).
/// Every route may answer 408 (`api.request_timeout_ms`). Said once here for all of them.
struct ScopeForbidden;

impl Modify for ScopeForbidden {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let error = |description: &str| {
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                        )
                        .build()
                };
                let secured = operation.security.is_some();
                let responses = &mut operation.responses.responses;
                responses.entry("408".to_owned()).or_insert_with(|| {
                    error("The request (body included) took longer than `api.request_timeout_ms` (`request_timeout`)").into()
                });
                if !secured {
                    continue;
                }
                responses.entry("403".to_owned()).or_insert_with(|| {
                    error("The API key lacks the scope this route needs (`scope_missing`)").into()
                });
                responses.entry("429".to_owned()).or_insert_with(|| {
                    error("Rate limited for this API key (`rate_limited`); retry after the `Retry-After` seconds").into()
                });
            }
        }
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
