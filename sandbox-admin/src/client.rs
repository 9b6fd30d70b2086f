//! The typed client of the sandbox's admin API: one method per admin route, answers read
//! into the wire types of [`crate::knobs`] and [`crate::references`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::knobs::{Knobs, KnobsReport, Stats, StatsReport};
use crate::references::ReferenceReport;

/// Why an admin call did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("sandbox admin request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The sandbox answered non-2xx (a bad knob is a 400 with `{"error": ...}`).
    #[error("sandbox admin refused {what}: {status} {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
}

/// The admin API of one sandbox.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base_url: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// `base_url` is the sandbox root (`Sandbox::base_url`), not an account URL.
    pub fn new(base_url: impl Into<String>) -> Result<Self, AdminError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self::with_client(base_url, http))
    }

    pub fn with_client(base_url: impl Into<String>, http: reqwest::Client) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self { base_url, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/_admin/{path}", self.base_url)
    }

    /// The sandbox root this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The full URL of the admin route `path` (e.g. `"stats"`, `"accounts/a/knobs"`), for
    /// what must show or check the address itself (a banner, a log line).
    pub fn endpoint(&self, path: &str) -> String {
        self.url(path.trim_start_matches('/'))
    }

    /// A request to the admin route `path`, sent as is: for tests of the wire itself (the
    /// raw JSON names, a refused malformed path). Everything else uses the typed methods.
    pub fn raw(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.endpoint(path))
    }

    fn account_url(&self, account: &str, path: &str) -> String {
        self.url(&format!("accounts/{account}/{path}"))
    }

    /// `GET /_admin/health`: whether the sandbox is up and answering.
    pub async fn health(&self) -> Result<(), AdminError> {
        let response = self.http.get(self.url("health")).send().await?;
        checked(response, "health".into()).await.map(drop)
    }

    /// The global knobs and every account that overrides them.
    pub async fn knobs(&self) -> Result<KnobsReport, AdminError> {
        json_of(self.http.get(self.url("knobs")), "knobs".into()).await
    }

    /// Changes only the given global knobs (starting from the global knobs in force).
    /// `patch` is any JSON object of knob fields: a `serde_json::json!` or a [`Knobs`].
    pub async fn patch_knobs(&self, patch: impl Serialize) -> Result<Knobs, AdminError> {
        let request = self.http.patch(self.url("knobs")).json(&patch);
        json_of(request, "global knobs".into()).await
    }

    /// Replaces the global knobs: given fields, the rest defaults.
    pub async fn put_knobs(&self, knobs: impl Serialize) -> Result<Knobs, AdminError> {
        let request = self.http.put(self.url("knobs")).json(&knobs);
        json_of(request, "global knobs".into()).await
    }

    /// The knobs in force for `account` (its own, or the global ones).
    pub async fn account_knobs(&self, account: &str) -> Result<Knobs, AdminError> {
        let request = self.http.get(self.account_url(account, "knobs"));
        json_of(request, format!("knobs of {account}")).await
    }

    /// Changes only the given knobs of `account` (starting from the knobs in force for it).
    pub async fn patch_account_knobs(
        &self,
        account: &str,
        patch: impl Serialize,
    ) -> Result<Knobs, AdminError> {
        let request = self
            .http
            .patch(self.account_url(account, "knobs"))
            .json(&patch);
        json_of(request, format!("knobs of {account}")).await
    }

    /// Replaces `account`'s knobs: given fields, the rest defaults.
    pub async fn put_account_knobs(
        &self,
        account: &str,
        knobs: impl Serialize,
    ) -> Result<Knobs, AdminError> {
        let request = self
            .http
            .put(self.account_url(account, "knobs"))
            .json(&knobs);
        json_of(request, format!("knobs of {account}")).await
    }

    /// Drops `account`'s own knobs: the global ones apply to it again.
    pub async fn delete_account_knobs(&self, account: &str) -> Result<(), AdminError> {
        let response = self
            .http
            .delete(self.account_url(account, "knobs"))
            .send()
            .await?;
        checked(response, format!("knobs of {account}"))
            .await
            .map(drop)
    }

    pub async fn account_stats(&self, account: &str) -> Result<Stats, AdminError> {
        let request = self.http.get(self.account_url(account, "stats"));
        json_of(request, format!("stats of {account}")).await
    }

    pub async fn stats(&self) -> Result<StatsReport, AdminError> {
        json_of(self.http.get(self.url("stats")), "stats".into()).await
    }

    /// What every account did with `reference`.
    pub async fn reference(
        &self,
        reference: &impl std::fmt::Display,
    ) -> Result<ReferenceReport, AdminError> {
        let request = self.http.get(self.url(&format!("references/{reference}")));
        json_of(request, format!("reference {reference}")).await
    }

    /// Forgets records, counters and account knobs.
    pub async fn reset(&self) -> Result<(), AdminError> {
        let response = self.http.post(self.url("reset")).send().await?;
        checked(response, "reset".into()).await.map(drop)
    }
}

async fn checked(
    response: reqwest::Response,
    what: String,
) -> Result<reqwest::Response, AdminError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(AdminError::Refused {
        what,
        status: status.as_u16(),
        body,
    })
}

async fn json_of<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    what: String,
) -> Result<T, AdminError> {
    let response = checked(request.send().await?, what).await?;
    Ok(response.json().await?)
}
