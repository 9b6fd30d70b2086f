//! The OpenAPI 3.1 document, generated from the handlers and types (utoipa), checked in as
//! `api/openapi.json` (a test fails when it is stale; regenerate with `UPDATE_OPENAPI=1
//! cargo test -p paygate-api --test api openapi`), and served at `/openapi.json` made exact
//! for the instance's gateways ([`served_document`]).
//!
//! Every bound in it comes from the constant the validation uses (id patterns from the
//! typed ids, page sizes from `routes::transactions`, the Idempotency-Key's from
//! `idempotency`, body fields from `validation::schema`), so the document cannot drift
//! from what the API enforces; schemathesis (`scripts/apifuzz`) checks that it does not.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use paygate_gateways::{CallbackAuth, GatewayRegistry};
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
    // Types that appear only as parameters: utoipa registers schemas it meets in bodies.
    components(schemas(
        crate::routes::transactions::PageLimit,
        crate::idempotency::IdempotencyKey,
        paygate_core::db::ledger::EntryId,
        paygate_core::domain::GatewayName,
        paygate_core::domain::TransactionId,
        paygate_core::domain::RefundId,
        paygate_core::domain::WebhookEndpointId,
        paygate_core::domain::EventId,
    )),
    modifiers(&BearerAuth, &Statuses, &Links),
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

/// The statuses every route may answer, said once here rather than on each handler:
///
/// - every route: 408 (`api.request_timeout_ms`, the whole-request timeout middleware);
/// - every route with a JSON body: 400 (not JSON), 413 (past `api.max_body_bytes`) and
///   415 (not `application/json`), from [`crate::body::JsonBody`];
/// - every route behind an API key: 401, 403 `scope_missing` (the key lacks the route's
///   scope), 429 (the per-key rate limit, or the per-address limit on failed
///   authentications) and 503 (Postgres unreachable while authenticating);
/// - the callback routes: 429 (the gateway's per-address callback limit);
/// - on every 429 and 503 of the API's own error shape, the `Retry-After` header.
struct Statuses;

impl Modify for Statuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::Schema;
        use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
                .into()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let callback = path.starts_with("/callbacks/");
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let secured = operation.security.is_some();
                let json_body = operation
                    .request_body
                    .as_ref()
                    .is_some_and(|body| body.content.contains_key("application/json"))
                    && !callback;
                // A parameter is left out by being absent, never by `null` (utoipa writes an
                // `Option<T>` parameter as `oneOf: [null, T]`; a null header or query value
                // cannot even be sent).
                for parameter in operation.parameters.iter_mut().flatten() {
                    if let Some(RefOr::T(Schema::OneOf(one_of))) = parameter.schema.as_ref() {
                        let not_null: Vec<_> = one_of
                            .items
                            .iter()
                            .filter(|item| !is_null(item))
                            .cloned()
                            .collect();
                        if let [only] = not_null.as_slice() {
                            parameter.schema = Some(only.clone());
                        }
                    }
                }
                if callback {
                    if let Some(body) = operation.request_body.as_mut() {
                        for content in body.content.values_mut() {
                            content.schema = Some(raw_body().into());
                        }
                    }
                }
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description));
                };
                add("408", "The request (body included) took longer than `api.request_timeout_ms` (`request_timeout`)");
                if json_body {
                    add("400", "The body is not JSON (`invalid_json`) or not valid; `param` names the field");
                    add(
                        "413",
                        "The body is larger than `api.max_body_bytes` (`body_too_large`)",
                    );
                    add(
                        "415",
                        "`Content-Type` is not `application/json` (`unsupported_media_type`)",
                    );
                }
                if secured {
                    add("401", "Missing or invalid API key (`invalid_api_key`)");
                    add(
                        "403",
                        "The API key lacks the scope this route needs (`scope_missing`)",
                    );
                    add("429", "Rate limited (`rate_limited`): this API key's rate, or too many failed authentications from this address; retry after `Retry-After` seconds");
                    add("503", "Postgres unavailable (`service_unavailable`); retry after `Retry-After` seconds (with the same `Idempotency-Key`)");
                }
                if callback {
                    add("429", "Too many callbacks from this address for this gateway (`rate_limited`), refused before the body is read; retry after `Retry-After` seconds");
                }
                if secured || callback {
                    for status in ["429", "503"] {
                        if let Some(RefOr::T(response)) =
                            operation.responses.responses.get_mut(status)
                        {
                            response
                                .headers
                                .entry("Retry-After".to_owned())
                                .or_insert_with(retry_after);
                        }
                    }
                }
            }
        }
    }
}

/// OpenAPI links: which answer's id another operation takes (a payment's `id` to its reads
/// and refunds, a refund's to its read, an endpoint's to its reads, deletion and rotation,
/// an event's to its redelivery). Clients and schemathesis' stateful phase follow them.
struct Links;

/// One answer's links: (its path, method, status), where its id is, and the operations
/// (link name, path, method) that take that id as their `{id}`.
struct LinkSource {
    path: &'static str,
    method: &'static str,
    status: &'static str,
    id: &'static str,
    targets: &'static [(&'static str, &'static str, &'static str)],
}

const BODY_ID: &str = "$response.body#/id";
const TRANSACTION_READS: &[(&str, &str, &str)] = &[
    ("Retrieve", "/v1/transactions/{id}", "get"),
    ("Events", "/v1/transactions/{id}/events", "get"),
    ("Deliveries", "/v1/transactions/{id}/deliveries", "get"),
    ("Refunds", "/v1/transactions/{id}/refunds", "get"),
];

const LINKS: &[LinkSource] = &[
    LinkSource {
        path: "/v1/deposits",
        method: "post",
        status: "202",
        id: BODY_ID,
        targets: &[
            ("Retrieve", "/v1/transactions/{id}", "get"),
            ("Events", "/v1/transactions/{id}/events", "get"),
            ("Deliveries", "/v1/transactions/{id}/deliveries", "get"),
            ("Refunds", "/v1/transactions/{id}/refunds", "get"),
            ("Refund", "/v1/transactions/{id}/refunds", "post"),
        ],
    },
    LinkSource {
        path: "/v1/withdrawals",
        method: "post",
        status: "202",
        id: BODY_ID,
        targets: TRANSACTION_READS,
    },
    LinkSource {
        path: "/v1/transactions/{id}/refunds",
        method: "post",
        status: "201",
        id: BODY_ID,
        targets: &[("Retrieve", "/v1/refunds/{id}", "get")],
    },
    LinkSource {
        path: "/v1/webhook-endpoints",
        method: "post",
        status: "201",
        id: BODY_ID,
        targets: &[
            ("Retrieve", "/v1/webhook-endpoints/{id}", "get"),
            ("Delete", "/v1/webhook-endpoints/{id}", "delete"),
            (
                "RotateSecret",
                "/v1/webhook-endpoints/{id}/rotate-secret",
                "post",
            ),
        ],
    },
    LinkSource {
        path: "/v1/transactions/{id}/events",
        method: "get",
        status: "200",
        id: "$response.body#/data/0/id",
        targets: &[("Redeliver", "/v1/events/{id}/redeliver", "post")],
    },
];

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        use utoipa::openapi::RefOr;
        for source in LINKS {
            let Some(item) = openapi.paths.paths.get_mut(source.path) else {
                continue;
            };
            let operation = match source.method {
                "post" => item.post.as_mut(),
                _ => item.get.as_mut(),
            };
            let Some(RefOr::T(response)) =
                operation.and_then(|o| o.responses.responses.get_mut(source.status))
            else {
                continue;
            };
            for (name, target, method) in source.targets {
                // JSON Pointer escaping of the path: `~` → `~0`, `/` → `~1`.
                let pointer = target.replace('~', "~0").replace('/', "~1");
                let link = LinkBuilder::new()
                    .operation_ref(format!("#/paths/{pointer}/{method}"))
                    .parameter("id", source.id)
                    .build();
                response.links.insert((*name).to_owned(), link.into());
            }
        }
    }
}

/// Whether a schema is just `{"type": "null"}`.
fn is_null(schema: &utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) -> bool {
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    matches!(
        schema,
        utoipa::openapi::RefOr::T(Schema::Object(object))
            if object.schema_type == SchemaType::Type(Type::Null)
    )
}

/// A callback body: the provider's bytes as they were signed, whatever the media type.
fn raw_body() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .content_media_type("application/octet-stream")
        .description(Some("The raw bytes the provider signed"))
        .build()
}

/// `Retry-After` as the API sends it: whole seconds, at least 1.
fn retry_after() -> utoipa::openapi::header::Header {
    utoipa::openapi::header::HeaderBuilder::new()
        .schema(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::Integer)
                .minimum(Some(1)),
        )
        .description(Some(
            "Seconds to wait before retrying; always sent with this status",
        ))
        .build()
}

/// The generic document (what is checked in): every gateway's callbacks at
/// `/callbacks/{gateway}`, every content type a connector may take.
pub fn document_json() -> String {
    render(ApiDoc::openapi())
}

/// Pretty JSON of a document. utoipa 5.5 writes a Link object's fields in snake case
/// (`operation_ref`), which no OpenAPI reader knows; they are renamed to the specification's
/// `operationRef` / `operationId` / `requestBody` here.
fn render(doc: utoipa::openapi::OpenApi) -> String {
    let Ok(mut value) = serde_json::to_value(&doc) else {
        return "{}".to_owned();
    };
    if let Some(paths) = value.get_mut("paths").and_then(|p| p.as_object_mut()) {
        let links = paths
            .values_mut()
            .filter_map(|item| item.as_object_mut())
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("responses"))
            .filter_map(|responses| responses.as_object_mut())
            .flat_map(|responses| responses.values_mut())
            .filter_map(|response| response.get_mut("links"))
            .filter_map(|links| links.as_object_mut())
            .flat_map(|links| links.values_mut())
            .filter_map(|link| link.as_object_mut());
        for link in links {
            for (snake, camel) in [
                ("operation_ref", "operationRef"),
                ("operation_id", "operationId"),
                ("request_body", "requestBody"),
            ] {
                if let Some(field) = link.remove(snake) {
                    link.insert(camel.to_owned(), field);
                }
            }
        }
    }
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| "{}".to_owned())
}

/// The document this instance serves, built once at start-up from its gateway registry:
/// the generic callback routes are replaced by one route per configured gateway, taking
/// exactly that connector's media types (`PaymentGateway::callback_content_types`) on the
/// route its authentication uses, and a transaction's `gateway` is one of the configured
/// names. With no gateway configured it is the generic document.
pub fn served_document(registry: &GatewayRegistry) -> String {
    let mut doc = ApiDoc::openapi();
    if !registry.is_empty() {
        per_gateway_callbacks(&mut doc, registry);
        configured_gateway_names(&mut doc, registry);
    }
    render(doc)
}

const SIGNED_CALLBACK: &str = "/callbacks/{gateway}";
const PATH_TOKEN_CALLBACK: &str = "/callbacks/{gateway}/{reference}/{token}";

fn per_gateway_callbacks(doc: &mut utoipa::openapi::OpenApi, registry: &GatewayRegistry) {
    use utoipa::openapi::Content;
    let paths = &mut doc.paths.paths;
    let (Some(signed), Some(path_token)) = (
        paths.remove(SIGNED_CALLBACK),
        paths.remove(PATH_TOKEN_CALLBACK),
    ) else {
        return;
    };
    for name in registry.names() {
        let Some(gateway) = registry.get(name) else {
            continue;
        };
        let (template, path) = match gateway.callback_auth() {
            CallbackAuth::Signed => (&signed, format!("/callbacks/{name}")),
            CallbackAuth::PathToken => (
                &path_token,
                format!("/callbacks/{name}/{{reference}}/{{token}}"),
            ),
        };
        let mut item = template.clone();
        let Some(operation) = item.post.as_mut() else {
            continue;
        };
        operation.operation_id = Some(format!(
            "receive_callback_{}",
            name.as_str().replace('-', "_")
        ));
        operation.summary = Some(format!("Receive a callback of gateway `{name}`"));
        if let Some(parameters) = operation.parameters.as_mut() {
            parameters.retain(|p| p.name != "gateway");
        }
        // The gateway is in the path: it exists and takes callbacks on this route.
        operation.responses.responses.remove("404");
        if let Some(body) = operation.request_body.as_mut() {
            body.content = gateway
                .callback_content_types()
                .iter()
                .map(|media| ((*media).to_owned(), Content::new(Some(raw_body()))))
                .collect();
            body.required = Some(utoipa::openapi::Required::True);
        }
        paths.insert(path, item);
    }
}

/// `CreateTransactionRequest.gateway`: one of the configured names (or null).
fn configured_gateway_names(doc: &mut utoipa::openapi::OpenApi, registry: &GatewayRegistry) {
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    use utoipa::openapi::RefOr;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(request))) =
        components.schemas.get_mut("CreateTransactionRequest")
    else {
        return;
    };
    let mut names: Vec<serde_json::Value> = registry
        .names()
        .map(|n| serde_json::json!(n.as_str()))
        .collect();
    names.push(serde_json::Value::Null);
    request.properties.insert(
        "gateway".to_owned(),
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .enum_values(Some(names))
            .description(Some(
                "A configured gateway; omitted or null, routing chooses",
            ))
            .into(),
    );
}

/// Serves the document built at start-up.
pub async fn serve(axum::extract::State(state): axum::extract::State<crate::AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_str().to_owned(),
    )
        .into_response()
}
