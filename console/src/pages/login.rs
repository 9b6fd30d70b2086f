//! Signing in and out.
//!
//! A wrong email and a wrong password get the same answer (401, one sentence), after the
//! same work (an unknown email is checked against a hash of nobody's password). Attempts are
//! counted per address and per account before any check (429 with `Retry-After` past the
//! limit). A successful sign-in sets a new session cookie and a new CSRF nonce.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use maud::{html, Markup, DOCTYPE};
use paygate_core::db::console_users;
use serde::Deserialize;

use crate::csrf::Nonce;
use crate::error::PageError;
use crate::layout::hidden_csrf;
use crate::password;
use crate::session;
use crate::viewer::{ClientAddr, CsrfForm, CsrfToken, Viewer};
use crate::ConsoleState;

/// The one answer to a failed sign-in, whichever part was wrong.
const WRONG: &str = "That email and password do not match an account.";

#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// `GET /console/login` (a signed-in user goes to the dashboard).
pub async fn form(viewer: Option<Viewer>, csrf: CsrfToken) -> Response {
    if viewer.is_some() {
        return Redirect::to("/console").into_response();
    }
    page(&csrf, None, "").into_response()
}

/// `POST /console/login`.
pub async fn submit(
    State(state): State<ConsoleState>,
    ClientAddr(address): ClientAddr,
    csrf: CsrfToken,
    CsrfForm(form): CsrfForm<SignIn>,
) -> Result<Response, PageError> {
    let email = form.email.trim().to_owned();
    if let Err(limited) = state.limits.attempt(&email, address) {
        let secs = limited.retry_after.as_secs().max(1);
        tracing::warn!(?address, "console sign-in attempts limited");
        let message = format!("Too many sign-in attempts. Try again in {secs} s.");
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            page(&csrf, Some(&message), &email),
        )
            .into_response());
    }
    let credentials = console_users::credentials(&state.pool, &email).await?;
    let password = form.password;
    let (user, hash) = match credentials {
        Some(c) => (Some(c.user), Some(c.password_hash)),
        None => (None, None),
    };
    let matches = tokio::task::spawn_blocking(move || match hash {
        Some(hash) => password::verify(&hash, &password),
        None => password::verify_nobody(&password),
    })
    .await
    .map_err(|e| PageError::Internal(e.to_string()))?;
    let Some(user) = user.filter(|_| matches) else {
        tracing::info!(?address, "console sign-in refused");
        return Ok((StatusCode::UNAUTHORIZED, page(&csrf, Some(WRONG), &email)).into_response());
    };
    let token = state
        .sessions
        .issue(&user, chrono::Utc::now())
        .map_err(|e| PageError::Internal(e.to_string()))?;
    tracing::info!(user = %user.id, role = user.role.as_str(), "console sign-in");
    let secure = state.config.secure_cookies;
    let jar = CookieJar::new()
        .add(state.sessions.cookie(token, secure))
        .add(Nonce::generate().cookie(secure));
    Ok((jar, Redirect::to("/console")).into_response())
}

/// `POST /console/logout`: the session cookie is removed; the token itself expires soon.
pub async fn logout(
    State(state): State<ConsoleState>,
    CsrfForm(_): CsrfForm<serde::de::IgnoredAny>,
) -> Response {
    let jar = CookieJar::new().add(session::removal(state.config.secure_cookies));
    (jar, Redirect::to("/console/login")).into_response()
}

fn page(csrf: &CsrfToken, error: Option<&str>, email: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · paygate console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                main.narrow {
                    h1 { "paygate console" }
                    @if let Some(error) = error { p.error data-testid="error" { (error) } }
                    form #login .stack method="post" action="/console/login" {
                        (hidden_csrf(csrf))
                        label { "Email" input type="email" name="email" value=(email) required autocomplete="username"; }
                        label { "Password" input type="password" name="password" required autocomplete="current-password"; }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}
