//! Who is asking: the session layer reads the session and CSRF cookies of every console
//! request, and the extractors here hand handlers a signed-in [`Viewer`] (or send the
//! browser to sign in), an [`Operator`] (or 403), and forms whose CSRF token was checked
//! ([`CsrfForm`], or 403).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use paygate_core::db::console_users::{self, ConsoleUser, Role};
use paygate_core::domain::MerchantId;
use serde::de::DeserializeOwned;

use crate::csrf::{self, Nonce};
use crate::error::{message_page, PageError};
use crate::session;
use crate::ConsoleState;

/// A signed-in user, checked against its row on this request.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user: ConsoleUser,
}

impl Viewer {
    pub fn is_operator(&self) -> bool {
        self.user.role == Role::Operator
    }

    /// The merchant whose data a page shows: a merchant user's own, always; an operator's
    /// choice (`?merchant=`), which it must make.
    pub fn merchant_scope(&self, chosen: Option<&str>) -> Result<Option<MerchantId>, PageError> {
        match self.user.role {
            Role::Merchant(own) => Ok(Some(own)),
            Role::Operator => match chosen.map(str::trim).filter(|s| !s.is_empty()) {
                Some(text) => text
                    .parse()
                    .map(Some)
                    .map_err(|e: paygate_core::domain::IdError| {
                        PageError::BadRequest(e.to_string())
                    }),
                None => Ok(None),
            },
        }
    }

    /// The merchant a one-merchant action acts for: [`Viewer::merchant_scope`], which an
    /// operator must have chosen.
    pub fn required_merchant(&self, chosen: Option<&str>) -> Result<MerchantId, PageError> {
        self.merchant_scope(chosen)?.ok_or(PageError::BadRequest(
            "choose a merchant (?merchant=mer_…)".into(),
        ))
    }

    /// What a link back to a one-merchant page carries: an operator's choice of merchant.
    pub fn scope_query(&self, merchant: MerchantId) -> String {
        if self.is_operator() {
            format!("?merchant={merchant}")
        } else {
            String::new()
        }
    }
}

/// The client's address, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

/// The browser's CSRF nonce and the token its forms carry.
#[derive(Debug, Clone)]
pub struct CsrfToken {
    pub nonce: Nonce,
    pub token: String,
}

/// Runs around every console request: finds the CSRF nonce (or makes one) and the session
/// (verified, its user re-read), and sets the cookies the response needs.
pub async fn session_layer(
    State(state): State<ConsoleState>,
    jar: CookieJar,
    mut request: Request,
    next: Next,
) -> Response {
    let secure = state.config.secure_cookies;
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    request.extensions_mut().insert(ClientAddr(address));

    let (nonce, fresh) = match jar
        .get(csrf::COOKIE)
        .and_then(|c| Nonce::from_cookie(c.value()))
    {
        Some(nonce) => (nonce, false),
        None => (Nonce::generate(), true),
    };
    let new_nonce_cookie = fresh.then(|| nonce.cookie(secure));
    let token = state.csrf.token(&nonce);
    request.extensions_mut().insert(CsrfToken { nonce, token });

    let now = chrono::Utc::now();
    let mut renewal = None;
    if let Some(cookie) = jar.get(session::COOKIE) {
        match signed_in(&state, cookie.value()).await {
            Ok(Some((viewer, claims))) => {
                if claims.is_due_for_renewal(now) {
                    renewal = state.sessions.issue(&viewer.user, now).ok();
                }
                request.extensions_mut().insert(viewer);
            }
            Ok(None) => {}
            Err(error) => return error.into_response(),
        }
    }

    let response = next.run(request).await;
    let mut jar = CookieJar::new();
    if let Some(cookie) = new_nonce_cookie {
        jar = jar.add(cookie);
    }
    // A handler that signed someone in or out set its own session cookie: leave it.
    let handler_set_session = response
        .headers()
        .get_all(axum::http::header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(session::COOKIE.as_bytes()));
    if let (Some(token), false) = (renewal, handler_set_session) {
        jar = jar.add(state.sessions.cookie(token, secure));
    }
    (jar, response).into_response()
}

/// The viewer a session cookie stands for, if it verifies and its user is still the same.
async fn signed_in(
    state: &ConsoleState,
    token: &str,
) -> Result<Option<(Viewer, session::Claims)>, PageError> {
    let Ok(claims) = state.sessions.verify(token) else {
        return Ok(None);
    };
    let Some((id, role)) = claims.subject() else {
        return Ok(None);
    };
    let user = console_users::get(&state.pool, id).await?;
    Ok(user
        .filter(|user| user.role == role)
        .map(|user| (Viewer { user }, claims)))
}

/// Where a request without a session goes.
pub struct SignInFirst;

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        Redirect::to("/console/login").into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Viewer>().cloned().ok_or(SignInFirst)
    }
}

/// A signed-in operator; a merchant user gets 403.
#[derive(Debug, Clone)]
pub struct Operator(pub Viewer);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let viewer = Viewer::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if viewer.is_operator() {
            Ok(Self(viewer))
        } else {
            Err(PageError::Forbidden("This page is for operators.").into_response())
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CsrfToken {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CsrfToken>()
            .cloned()
            .ok_or(PageError::Internal(
                "console route outside the session layer".into(),
            ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(None)))
    }
}

/// A form body whose `csrf` field is the token of this browser's nonce; otherwise 403 and
/// the handler never runs.
pub struct CsrfForm<T>(pub T);

#[derive(serde::Deserialize)]
struct TokenField {
    #[serde(default)]
    csrf: String,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for CsrfForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let expected = request.extensions().get::<CsrfToken>().cloned();
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let presented = serde_html_form::from_bytes::<TokenField>(&bytes)
            .map(|field| field.csrf)
            .unwrap_or_default();
        let accepted =
            expected.is_some_and(|expected| csrf::same_token(&expected.token, &presented));
        if !accepted {
            return Err(message_page(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from the console. Go back, reload the page and try again.",
            ));
        }
        serde_html_form::from_bytes::<T>(&bytes)
            .map(Self)
            .map_err(|e| {
                PageError::BadRequest(format!("the form is not valid: {e}")).into_response()
            })
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Viewer>().cloned())
    }
}
