//! Request bodies to domain values, field by field, so each error names its field.
//!
//! Bodies are read as a `serde_json::Value` first: a float, an overflow, a zero and a
//! negative amount then get distinct messages (`Amount::from_json`) instead of serde's
//! generic "invalid type".

use paygate_core::destination::DestinationPolicy;
use paygate_core::domain::{Amount, Currency, CustomerReference, GatewayName, Money, MoneyError};
use serde_json::{Map, Value};

use crate::error::HttpError;
use crate::url_policy;

pub const METADATA_MAX_KEYS: usize = 20;
pub const METADATA_MAX_KEY_CHARS: usize = 40;
pub const METADATA_MAX_VALUE_CHARS: usize = 500;
/// The largest magnitude of a number in `metadata`: 2^53 − 1, the largest integer every JSON
/// reader holds exactly. Beyond it a value may not come back from Postgres (`jsonb` keeps
/// the exact decimal, which serde_json then reads back past `f64::MAX`): found by
/// schemathesis, a deposit with `1.79e308` in its metadata made every later list of the
/// merchant's transactions a 500.
pub const METADATA_MAX_NUMBER: f64 = 9_007_199_254_740_991.0;
/// The longest webhook endpoint `description`, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 500;

/// "No control character" (Unicode `Cc`, what `char::is_control` finds), as a pattern of
/// the API document.
const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";
/// "No NUL character" (Postgres `jsonb` cannot hold U+0000), as a pattern.
const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// The document's schemas of the fields checked here, each built from the constant the
/// check uses, so a bound is written once (issue 17: the document was looser than the API).
pub mod schema {
    use utoipa::openapi::schema::{
        AdditionalProperties, ObjectBuilder, OneOfBuilder, SchemaFormat, SchemaType, Type,
    };

    use super::*;

    fn nullable(kind: Type) -> SchemaType {
        SchemaType::from_iter([kind, Type::Null])
    }

    /// Free text of at most `max` characters without control characters (or null).
    fn text(max: usize, description: &str) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(nullable(Type::String))
            .max_length(Some(max))
            .pattern(Some(NO_CONTROL_PATTERN))
            .description(Some(description))
    }

    /// `metadata`: at most [`METADATA_MAX_KEYS`] keys of 1 to [`METADATA_MAX_KEY_CHARS`]
    /// characters; values strings (at most [`METADATA_MAX_VALUE_CHARS`]), numbers, booleans
    /// or null; no NUL anywhere.
    pub fn metadata() -> utoipa::openapi::Object {
        let value = OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(METADATA_MAX_VALUE_CHARS))
                    .pattern(Some(NO_NUL_PATTERN)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(-METADATA_MAX_NUMBER))
                    .maximum(Some(METADATA_MAX_NUMBER)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Null));
        ObjectBuilder::new()
            .schema_type(nullable(Type::Object))
            .max_properties(Some(METADATA_MAX_KEYS))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(METADATA_MAX_KEY_CHARS))
                    .pattern(Some(NO_NUL_PATTERN)),
            ))
            .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
            .description(Some(format!(
                "Up to {METADATA_MAX_KEYS} keys of 1 to {METADATA_MAX_KEY_CHARS} characters; values strings (at most {METADATA_MAX_VALUE_CHARS} characters), numbers (magnitude at most 2^53 - 1), booleans or null; no NUL character"
            )))
            .build()
    }

    /// An amount: a positive integer of minor units that fits in 64 bits (`Amount::from_json`).
    pub fn amount() -> utoipa::openapi::Object {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(i64::MAX))
            .description(Some("Positive integer minor units (1050 is 10.50 USD)"))
            .examples([serde_json::json!(1050)])
            .build()
    }

    /// An optional amount (a refund's: absent or null is all that is left).
    pub fn optional_amount() -> utoipa::openapi::Object {
        ObjectBuilder::new()
            .schema_type(nullable(Type::Integer))
            .minimum(Some(1))
            .maximum(Some(i64::MAX))
            .description(Some(
                "Positive integer minor units; absent or null: all that is left",
            ))
            .examples([serde_json::json!(500)])
            .build()
    }

    /// A webhook endpoint's `description`.
    pub fn description() -> utoipa::openapi::Object {
        text(
            DESCRIPTION_MAX_CHARS,
            "A note for yourself, without control characters",
        )
        .build()
    }

    /// A refund's `reason`.
    pub fn reason() -> utoipa::openapi::Object {
        text(
            REFUND_REASON_MAX_CHARS,
            "Why, in your words, without control characters",
        )
        .build()
    }

    /// A destination URL (`url`, `callback_url`): its length bound. Whether the host
    /// resolves to an address the SSRF guard admits cannot be said in a schema.
    fn url(kind: SchemaType) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(kind)
            .format(Some(SchemaFormat::Custom("uri".to_owned())))
            .max_length(Some(crate::url_policy::MAX_URL_LEN))
    }

    pub fn endpoint_url() -> utoipa::openapi::Object {
        url(SchemaType::Type(Type::String))
            .description(Some(
                "Where to deliver events: https, a public host; the bound also holds for the URL once percent-encoded (as stored)",
            ))
            .examples([serde_json::json!(
                "https://merchant.example/paygate/webhooks"
            )])
            .build()
    }

    pub fn callback_url() -> utoipa::openapi::Object {
        url(nullable(Type::String))
            .description(Some(
                "Also notify this URL of the outcome: https, a public host; the bound also holds for the URL once percent-encoded (as stored)",
            ))
            .build()
    }
}

/// A valid `POST /v1/deposits` / `withdrawals` body.
#[derive(Debug, Clone)]
pub struct CreateTransaction {
    pub money: Money,
    pub customer: CustomerReference,
    pub gateway: Option<GatewayName>,
    pub callback_url: Option<String>,
    pub metadata: Value,
}

const CREATE_FIELDS: &[&str] = &[
    "amount",
    "currency",
    "customer",
    "gateway",
    "callback_url",
    "metadata",
];

/// Checks a create body. `gateway_exists` says whether a named gateway is configured; a
/// `callback_url` must pass the SSRF guard under `destinations` (checked last: it may
/// resolve a name).
pub async fn create_transaction(
    body: &Value,
    gateway_exists: impl Fn(&GatewayName) -> bool,
    destinations: DestinationPolicy,
) -> Result<CreateTransaction, HttpError> {
    let object = as_object(body)?;
    refuse_unknown_fields(object, CREATE_FIELDS)?;

    let amount = required(object, "amount")?;
    let amount = Amount::from_json(amount)
        .map_err(|e| HttpError::invalid_param("amount_invalid", "amount", e.to_string()))?;
    let currency = required_str(object, "currency")?;
    let currency = Currency::parse(currency).map_err(|e| {
        let code = match e {
            MoneyError::UnknownCurrency(_) | MoneyError::NotPayable(_) => "currency_unsupported",
            _ => "currency_invalid",
        };
        HttpError::invalid_param(code, "currency", e.to_string())
    })?;
    let customer = required_str(object, "customer")?;
    let customer = CustomerReference::parse(customer)
        .map_err(|e| HttpError::invalid_param("customer_invalid", "customer", e.to_string()))?;

    let gateway = match optional(object, "gateway") {
        None => None,
        Some(value) => {
            let text = value.as_str().ok_or_else(|| not_a_string("gateway"))?;
            let name = GatewayName::parse(text).map_err(|e| {
                HttpError::invalid_param("gateway_invalid", "gateway", e.to_string())
            })?;
            if !gateway_exists(&name) {
                return Err(HttpError::invalid_param(
                    "gateway_unknown",
                    "gateway",
                    format!("no gateway named {text:?} is configured"),
                ));
            }
            Some(name)
        }
    };
    let callback_url = match optional(object, "callback_url") {
        None => None,
        Some(value) => Some(value.as_str().ok_or_else(|| not_a_string("callback_url"))?),
    };
    let metadata = match optional(object, "metadata") {
        None => Value::Object(Map::new()),
        Some(value) => metadata(value)?,
    };
    let callback_url = match callback_url {
        None => None,
        Some(text) => Some(
            url_policy::check_url(text, destinations, "callback_url")
                .await?
                .url
                .to_string(),
        ),
    };
    Ok(CreateTransaction {
        money: Money::new(amount, currency),
        customer,
        gateway,
        callback_url,
        metadata,
    })
}

/// A valid `POST /v1/webhook-endpoints` body.
#[derive(Debug, Clone)]
pub struct CreateWebhookEndpoint {
    pub url: String,
    pub description: Option<String>,
}

/// Checks a registration body; the `url` must pass the SSRF guard under `destinations`
/// (checked last: it may resolve a name).
pub async fn create_webhook_endpoint(
    body: &Value,
    destinations: DestinationPolicy,
) -> Result<CreateWebhookEndpoint, HttpError> {
    let object = as_object(body)?;
    refuse_unknown_fields(object, &["url", "description"])?;
    let url = required_str(object, "url")?;
    let description = match optional(object, "description") {
        None => None,
        Some(value) => {
            let text = value.as_str().ok_or_else(|| not_a_string("description"))?;
            if text.chars().count() > DESCRIPTION_MAX_CHARS || text.chars().any(char::is_control) {
                return Err(HttpError::invalid_param(
                    "description_invalid",
                    "description",
                    format!("description must be at most {DESCRIPTION_MAX_CHARS} characters without control characters"),
                ));
            }
            Some(text.to_owned())
        }
    };
    let url = url_policy::check_url(url, destinations, "url").await?.url;
    Ok(CreateWebhookEndpoint {
        url: url.to_string(),
        description,
    })
}

/// The longest refund `reason` accepted, in characters.
pub const REFUND_REASON_MAX_CHARS: usize = 500;

/// A valid `POST /v1/transactions/{id}/refunds` body: an amount (`None`: all that is left,
/// decided by the database under the payment's lock) and an optional reason.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRefund {
    pub amount: Option<i64>,
    pub reason: Option<String>,
}

/// Checks a refund body (an empty or absent body is "refund all that is left").
pub fn create_refund(body: &Value) -> Result<CreateRefund, HttpError> {
    if body.is_null() {
        return Ok(CreateRefund {
            amount: None,
            reason: None,
        });
    }
    let object = as_object(body)?;
    refuse_unknown_fields(object, &["amount", "reason"])?;
    let amount = match optional(object, "amount") {
        None => None,
        Some(value) => Some(
            Amount::from_json(value)
                .map_err(|e| HttpError::invalid_param("amount_invalid", "amount", e.to_string()))?
                .minor_units(),
        ),
    };
    let reason = match optional(object, "reason") {
        None => None,
        Some(value) => {
            let text = value.as_str().ok_or_else(|| not_a_string("reason"))?;
            if text.chars().count() > REFUND_REASON_MAX_CHARS || text.chars().any(char::is_control)
            {
                return Err(HttpError::invalid_param(
                    "reason_invalid",
                    "reason",
                    format!("reason must be at most {REFUND_REASON_MAX_CHARS} characters without control characters"),
                ));
            }
            Some(text.to_owned())
        }
    };
    Ok(CreateRefund { amount, reason })
}

fn as_object(body: &Value) -> Result<&Map<String, Value>, HttpError> {
    body.as_object().ok_or_else(|| {
        HttpError::new(
            axum::http::StatusCode::BAD_REQUEST,
            crate::error::ErrorType::InvalidRequestError,
            "body_invalid",
            "request body must be a JSON object",
        )
    })
}

fn refuse_unknown_fields(object: &Map<String, Value>, known: &[&str]) -> Result<(), HttpError> {
    let mut unknown: Vec<&String> = object
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(field) => Err(HttpError::invalid_param(
            "parameter_unknown",
            field,
            format!("unknown parameter: {field} (allowed: {})", known.join(", ")),
        )),
    }
}

/// A present, non-null field.
fn optional<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|v| !v.is_null())
}

fn required<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a Value, HttpError> {
    optional(object, field).ok_or_else(|| HttpError::missing_param(field))
}

fn required_str<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, HttpError> {
    required(object, field)?
        .as_str()
        .ok_or_else(|| not_a_string(field))
}

fn not_a_string(field: &str) -> HttpError {
    HttpError::invalid_param(
        "parameter_invalid_string",
        field,
        format!("{field} must be a string"),
    )
}

fn metadata(value: &Value) -> Result<Value, HttpError> {
    let invalid = |why: String| HttpError::invalid_param("metadata_invalid", "metadata", why);
    let object = value
        .as_object()
        .ok_or_else(|| invalid("metadata must be a JSON object".to_owned()))?;
    if object.len() > METADATA_MAX_KEYS {
        return Err(invalid(format!(
            "metadata may have at most {METADATA_MAX_KEYS} keys"
        )));
    }
    for (key, value) in object {
        // Postgres `jsonb` cannot hold U+0000 (it would be a 500, and the client would
        // retry the same body forever): refused here, in keys and values alike, with the
        // value checks below refusing anything nested.
        if key.contains('\0') || matches!(value, Value::String(s) if s.contains('\0')) {
            return Err(invalid(
                "metadata keys and values must not contain the NUL character (\\u0000)".to_owned(),
            ));
        }
        if key.is_empty() || key.chars().count() > METADATA_MAX_KEY_CHARS {
            return Err(invalid(format!(
                "metadata keys must be 1 to {METADATA_MAX_KEY_CHARS} characters"
            )));
        }
        match value {
            Value::String(s) if s.chars().count() > METADATA_MAX_VALUE_CHARS => {
                return Err(invalid(format!(
                    "metadata values must be at most {METADATA_MAX_VALUE_CHARS} characters"
                )));
            }
            Value::Object(_) | Value::Array(_) => {
                return Err(invalid(
                    "metadata values must be strings, numbers, booleans or null".to_owned(),
                ));
            }
            Value::Number(n) if n.as_f64().is_none_or(|f| f.abs() > METADATA_MAX_NUMBER) => {
                return Err(invalid(format!(
                    "metadata numbers must be at most {METADATA_MAX_NUMBER} in magnitude"
                )));
            }
            _ => {}
        }
    }
    Ok(value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value) -> Result<CreateTransaction, HttpError> {
        // The guard under the strict policy; no test URL here needs a DNS lookup.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        runtime.block_on(create_transaction(
            &body,
            |g| g.as_str() == "sandbox-json",
            DestinationPolicy::STRICT,
        ))
    }

    fn param_of(body: Value) -> Option<String> {
        check(body).err().and_then(|e| e.param)
    }

    #[test]
    fn each_error_names_its_field() {
        let ok = json!({"amount": 1050, "currency": "USD", "customer": "c1"});
        assert!(check(ok.clone()).is_ok());
        assert!(check(with_url(&ok, "https://8.8.8.8/cb")).is_ok());
        for refused in [
            "https://127.0.0.1/cb",
            "https://10.0.0.1/cb",
            "https://169.254.169.254/latest/meta-data/",
        ] {
            assert_eq!(
                param_of(with_url(&ok, refused)).as_deref(),
                Some("callback_url"),
                "{refused}"
            );
        }
        let with = |field: &str, value: Value| {
            let mut body = ok.clone();
            body[field] = value;
            body
        };
        assert_eq!(
            param_of(with("amount", json!(10.5))).as_deref(),
            Some("amount")
        );
        assert_eq!(
            param_of(with("amount", json!("10"))).as_deref(),
            Some("amount")
        );
        assert_eq!(
            param_of(with("currency", json!("ZZZ"))).as_deref(),
            Some("currency")
        );
        assert_eq!(
            param_of(with("currency", json!(840))).as_deref(),
            Some("currency")
        );
        assert_eq!(
            param_of(with("customer", json!(""))).as_deref(),
            Some("customer")
        );
        assert_eq!(
            param_of(with("gateway", json!("nope"))).as_deref(),
            Some("gateway")
        );
        assert_eq!(
            param_of(with("callback_url", json!("http://x.example/"))).as_deref(),
            Some("callback_url")
        );
        assert_eq!(
            param_of(with("metadata", json!({"a": {"b": 1}}))).as_deref(),
            Some("metadata")
        );
        for nul in [
            json!({"note": "a\u{0}b"}),
            json!({"a\u{0}": "b"}),
            json!({"\u{0}": 1}),
            json!({"nested": {"k": "\u{0}"}}),
        ] {
            assert_eq!(
                param_of(with("metadata", nul.clone())).as_deref(),
                Some("metadata"),
                "{nul}"
            );
        }
        for huge in [
            json!(1.797_693_134_862_315_7e308),
            json!(u64::MAX),
            json!(-1e16),
        ] {
            assert_eq!(
                param_of(with("metadata", json!({ "n": huge }))).as_deref(),
                Some("metadata"),
                "{huge}"
            );
        }
        assert!(check(with(
            "metadata",
            json!({"n": 9_007_199_254_740_991_i64, "f": 0.5})
        ))
        .is_ok());
        assert_eq!(param_of(with("extra", json!(1))).as_deref(), Some("extra"));
        assert_eq!(
            param_of(json!({"currency": "USD", "customer": "c"})).as_deref(),
            Some("amount")
        );
        assert!(check(with("gateway", json!("sandbox-json"))).is_ok());
        assert!(check(with("gateway", Value::Null)).is_ok());
    }

    fn with_url(body: &Value, url: &str) -> Value {
        let mut body = body.clone();
        body["callback_url"] = json!(url);
        body
    }
}
