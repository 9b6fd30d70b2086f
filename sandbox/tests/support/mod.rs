//! A sandbox on port 0 and raw clients of its three protocols, so tests see the exact wire
//! answers (status, content type, body) rather than a connector's reading of them. The
//! sandbox starts through `paygate-testkit`; the admin API is its typed client.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use paygate_core::domain::TransactionId;
use paygate_gateways::json::wire as jw;
use paygate_gateways::protobuf::wire as pw;
use paygate_gateways::soap::wire as sw;
use paygate_sandbox::DEFAULT_SECRET_KEY;
use paygate_testkit::admin::{AdminClient, Stats};
use paygate_testkit::services::{sandbox_settings, spawn_sandbox};
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The three wire protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Json,
    Soap,
    Protobuf,
}

pub const ALL: [Proto; 3] = [Proto::Json, Proto::Soap, Proto::Protobuf];

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Json => "json",
            Proto::Soap => "soap",
            Proto::Protobuf => "proto",
        }
    }
}

/// One payment request's answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

impl Answer {
    async fn read(response: reqwest::Response) -> anyhow::Result<Self> {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.bytes().await?;
        Ok(Self {
            status,
            content_type,
            body,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The provider error code in `proto`'s own error shape, if the body is one.
    pub fn error_code(&self, proto: Proto) -> Option<String> {
        match proto {
            Proto::Json => serde_json::from_slice::<serde_json::Value>(&self.body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned)),
            Proto::Soap => match sw::from_xml::<sw::Envelope<sw::Reply>>(&self.body) {
                Ok(envelope) => match envelope.body.content {
                    sw::Reply::Fault(fault) => fault.detail.and_then(|d| d.error_code),
                    _ => None,
                },
                Err(_) => None,
            },
            Proto::Protobuf => pw::ErrorResponse::decode(self.body.as_ref())
                .ok()
                .map(|e| e.code)
                .filter(|code| !code.is_empty()),
        }
    }

    /// The content type `proto` answers in (prefix).
    pub fn is_protocol_shape(&self, proto: Proto) -> bool {
        let expected = match proto {
            Proto::Json => jw::CONTENT_TYPE,
            Proto::Soap => sw::CONTENT_TYPE,
            Proto::Protobuf => pw::CONTENT_TYPE,
        };
        self.content_type == expected
    }
}

/// What a status query said, protocol-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    NotFound,
    /// Found, with the JSON answer's amount when the protocol carries one.
    Found {
        amount: Option<i64>,
    },
}

/// A running sandbox and clients of it.
pub struct World {
    pub url: String,
    pub admin: AdminClient,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl World {
    /// A sandbox on port 0 whose callbacks go to `callback_base_url`.
    pub async fn start(callback_base_url: &str) -> anyhow::Result<Self> {
        let sandbox = spawn_sandbox(sandbox_settings(callback_base_url)).await?;
        let (shutdown, handle) = sandbox.running.into_parts();
        Ok(Self {
            admin: sandbox.admin,
            url: sandbox.url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            shutdown,
            handle,
        })
    }

    /// A sandbox whose callbacks go nowhere (use with `callbacks_enabled: false`).
    pub async fn quiet() -> anyhow::Result<Self> {
        Self::start("http://127.0.0.1:9").await
    }

    pub async fn stats(&self, account: &str) -> anyhow::Result<Stats> {
        Ok(self.admin.account_stats(account).await?)
    }

    /// A deposit of `amount` EUR cents with `reference` to `account` in `proto`.
    pub async fn deposit(
        &self,
        proto: Proto,
        account: &str,
        reference: &TransactionId,
        amount: i64,
    ) -> anyhow::Result<Answer> {
        self.pay(proto, account, reference, amount, false).await
    }

    /// A deposit, or a withdrawal when `withdraw`.
    pub async fn pay(
        &self,
        proto: Proto,
        account: &str,
        reference: &TransactionId,
        amount: i64,
        withdraw: bool,
    ) -> anyhow::Result<Answer> {
        let base = format!("{}/{account}", self.url);
        let reference = reference.to_string();
        let currency = "EUR".to_owned();
        let request = match proto {
            Proto::Json if withdraw => self
                .http
                .post(format!("{base}/{}", jw::TRANSFER_PATH))
                .bearer_auth(DEFAULT_SECRET_KEY)
                .json(&jw::TransferRequest {
                    source: "balance".into(),
                    reference,
                    amount,
                    currency,
                    recipient: "cust_test".into(),
                }),
            Proto::Json => self
                .http
                .post(format!("{base}/{}", jw::CHARGE_PATH))
                .bearer_auth(DEFAULT_SECRET_KEY)
                .json(&jw::ChargeRequest {
                    reference,
                    amount,
                    currency,
                    customer: "cust_test".into(),
                }),
            Proto::Soap => {
                let order = sw::PaymentOrder {
                    reference,
                    amount,
                    currency,
                    customer: "cust_test".into(),
                };
                let (operation, action) = if withdraw {
                    (sw::Operation::Withdraw(order), sw::ACTION_WITHDRAW)
                } else {
                    (sw::Operation::Deposit(order), sw::ACTION_DEPOSIT)
                };
                self.soap_request(&base, operation, action)?
            }
            Proto::Protobuf => {
                let kind = if withdraw {
                    pw::PaymentKind::Withdrawal
                } else {
                    pw::PaymentKind::Deposit
                };
                self.http
                    .post(format!("{base}/{}", pw::PAYMENTS_PATH))
                    .bearer_auth(DEFAULT_SECRET_KEY)
                    .header(reqwest::header::CONTENT_TYPE, pw::CONTENT_TYPE)
                    .body(
                        pw::PaymentRequest {
                            reference,
                            kind: kind as i32,
                            amount_minor: amount,
                            currency,
                            customer: "cust_test".into(),
                        }
                        .encode_to_vec(),
                    )
            }
        };
        Answer::read(request.send().await?).await
    }

    fn soap_request(
        &self,
        base: &str,
        operation: sw::Operation,
        action: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let header = sw::Header {
            auth: sw::Auth {
                api_key: DEFAULT_SECRET_KEY.into(),
            },
        };
        let xml = sw::to_xml(&sw::Envelope::new(Some(header), operation))?;
        Ok(self
            .http
            .post(format!("{base}/{}", sw::PATH))
            .header(reqwest::header::CONTENT_TYPE, sw::CONTENT_TYPE)
            .header(sw::SOAP_ACTION_HEADER, action)
            .body(xml))
    }

    /// The raw answer of `proto`'s status query for a deposit.
    pub async fn status_answer(
        &self,
        proto: Proto,
        account: &str,
        reference: &TransactionId,
    ) -> anyhow::Result<Answer> {
        let base = format!("{}/{account}", self.url);
        let request = match proto {
            Proto::Json => self
                .http
                .get(format!("{base}/{}{reference}", jw::CHARGE_VERIFY_PATH))
                .bearer_auth(DEFAULT_SECRET_KEY),
            Proto::Soap => self.soap_request(
                &base,
                sw::Operation::GetStatus(sw::StatusQuery {
                    reference: reference.to_string(),
                }),
                sw::ACTION_STATUS,
            )?,
            Proto::Protobuf => self
                .http
                .get(format!("{base}/{}/{reference}", pw::PAYMENTS_PATH))
                .bearer_auth(DEFAULT_SECRET_KEY),
        };
        Answer::read(request.send().await?).await
    }

    /// `proto`'s status query, read: each protocol's "not found" shape, or found.
    pub async fn status(
        &self,
        proto: Proto,
        account: &str,
        reference: &TransactionId,
    ) -> anyhow::Result<Status> {
        let answer = self.status_answer(proto, account, reference).await?;
        anyhow::ensure!(
            answer.is_protocol_shape(proto),
            "{proto:?} status answer in {:?}: {}",
            answer.content_type,
            answer.text()
        );
        match proto {
            Proto::Json => match answer.status {
                404 => {
                    anyhow::ensure!(answer.error_code(proto).as_deref() == Some("not_found"));
                    Ok(Status::NotFound)
                }
                200 => {
                    let body: jw::ApiResponse<jw::PaymentData> =
                        serde_json::from_slice(&answer.body)?;
                    let data = body.data.context("verify answer without data")?;
                    anyhow::ensure!(data.reference == reference.to_string());
                    Ok(Status::Found {
                        amount: Some(data.amount),
                    })
                }
                other => anyhow::bail!("JSON verify answered {other}: {}", answer.text()),
            },
            Proto::Soap => {
                anyhow::ensure!(answer.status == 200, "SOAP status {}", answer.status);
                let envelope: sw::Envelope<sw::Reply> =
                    sw::from_xml(&answer.body).map_err(anyhow::Error::msg)?;
                match envelope.body.content {
                    sw::Reply::Status(result) if result.state == sw::State::NotFound => {
                        Ok(Status::NotFound)
                    }
                    sw::Reply::Status(_) => Ok(Status::Found { amount: None }),
                    other => anyhow::bail!("SOAP status answered {other:?}"),
                }
            }
            Proto::Protobuf => match answer.status {
                404 => {
                    anyhow::ensure!(answer.error_code(proto).as_deref() == Some("not_found"));
                    Ok(Status::NotFound)
                }
                200 => {
                    let response = pw::PaymentResponse::decode(answer.body.as_ref())?;
                    anyhow::ensure!(response.reference == reference.to_string());
                    Ok(Status::Found { amount: None })
                }
                other => anyhow::bail!("protobuf status answered {other}"),
            },
        }
    }

    /// Stops the sandbox and waits for it (and its callback tasks) to finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .context("sandbox did not stop within 10 s")???;
        Ok(())
    }
}

/// A callback receiver that refuses (503) while `refuse` says so, counting every attempt.
pub struct Receiver {
    pub url: String,
    pub attempts: Arc<AtomicU32>,
}

impl Receiver {
    /// `refuse(n)` decides the answer to the n-th attempt (0-based): true = 503.
    pub async fn start(
        refuse: impl Fn(u32) -> bool + Clone + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let attempts = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&attempts);
        let app = axum::Router::new().route(
            "/callbacks/{gateway}",
            axum::routing::post(move || {
                let counter = Arc::clone(&counter);
                let refuse = refuse.clone();
                async move {
                    if refuse(counter.fetch_add(1, Ordering::SeqCst)) {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, attempts })
    }

    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }
}

/// Polls `probe` every 20 ms until it holds or `within` runs out; returns its last verdict.
pub async fn eventually<F, Fut>(within: Duration, mut probe: F) -> anyhow::Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let held = paygate_testkit::wait::poll(Duration::from_millis(20), within, || {
        let probe = probe();
        async move {
            let holds = probe.await?;
            anyhow::Ok(holds.then_some(()))
        }
    })
    .await?;
    Ok(held.is_some())
}
