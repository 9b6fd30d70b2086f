//! Request bodies read by hand, so every failure gets the one error shape: 415 for a wrong
//! `Content-Type`, 413 past the size limit (checked on `Content-Length` first, then while
//! reading), 400 for malformed JSON.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};

use crate::error::HttpError;
use crate::AppState;

/// A JSON body (`application/json`) within `api.max_body_bytes`, parsed to a value.
pub struct JsonBody(pub serde_json::Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, HttpError> {
        if !is_json(req.headers()) {
            return Err(HttpError::unsupported_media_type("application/json"));
        }
        let declared = content_length(req.headers());
        let bytes = read_limited(req.into_body(), declared, state.config.max_body_bytes).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A JSON body's bytes to a value, or the 400 for malformed JSON: what [`JsonBody`] does
/// once the body is read, on its own so the API fuzz target (fuzz/) reads bodies exactly
/// as the handlers do.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, HttpError> {
    serde_json::from_slice(bytes).map_err(HttpError::invalid_json)
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The declared `Content-Length`, if any and numeric.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads a whole body, refusing (413) one longer than `limit` without buffering past it.
pub async fn read_limited(
    body: Body,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, HttpError> {
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(HttpError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| HttpError::too_large(limit))
}

/// A raw body within `limit`, for provider callbacks (the gateway judges the content type).
pub async fn read_raw(req: Request, limit: usize) -> Result<(HeaderMap, Bytes), HttpError> {
    let (parts, body) = req.into_parts();
    let bytes = read_limited(body, content_length(&parts.headers), limit).await?;
    Ok((parts.headers, bytes))
}
