//! What a console page answers when it cannot show what was asked: a small HTML page with
//! the status code that says why (the JSON API's error shape is for machines).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;
use paygate_core::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Not there, or not this user's to see (the same answer, so ids cannot be probed).
    #[error("not found")]
    NotFound,
    /// Signed in, but this page is not for this role.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A form or a filter the page cannot use, said in words.
    #[error("{0}")]
    BadRequest(String),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Internal(String),
}

impl PageError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Db(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Db(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "console page failed");
                "Something went wrong on our side; it has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        message_page(status, &message)
    }
}

/// A bare page with a status and one sentence (errors, refusals).
pub fn message_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " " (title) " · paygate console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                main.narrow {
                    h1 { (status.as_u16()) " " (title) }
                    p data-testid="error" { (message) }
                    p { a href="/console" { "Back to the console" } }
                }
            }
        }
    };
    (status, body).into_response()
}

/// Unknown console paths.
pub async fn not_found() -> PageError {
    PageError::NotFound
}
