//! [`Topology`]: the five paygate processes against a fresh database, unique Kafka and Redis
//! prefixes, the real broker, and the sandbox's three gateways over HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use paygate_cli::merchant_setup;
use paygate_cli::receiver::{Logging, ReceivedWebhook, WebhookReceiver, RECEIVER_PATH};
use paygate_core::config::Config;
use paygate_core::domain::MerchantId;
use paygate_testkit::admin::StatsReport;
use paygate_testkit::AdminClient;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::binaries::{self, Binaries};
use crate::process::{Launch, Service, ServiceProcess};

/// The sandbox gateways (name = sandbox account, connector kind): one per protocol.
pub const GATEWAYS: [(&str, &str); 3] = paygate_cli::dev::DEV_GATEWAYS;
/// The emulated real providers (name = sandbox account, connector kind), reached by naming
/// them; as `paygate dev`'s.
pub const PROVIDERS: [(&str, &str); 3] = paygate_cli::dev::PROVIDER_GATEWAYS;
/// The routing rule for transactions that name no gateway (as `paygate dev`'s).
pub const ROUTE: [&str; 3] = ["sandbox-json", "sandbox-proto", "sandbox-soap"];
/// The settle window of the sandbox gateways' status queries (ms), as `paygate dev`'s.
pub const SANDBOX_SETTLE_MS: u64 = paygate_cli::dev::SANDBOX_SETTLE_MS;

/// How long each process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(45);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a graceful stop may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Attempts at start-up when a picked port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
/// How many log lines a failure shows per service.
const TAIL_LINES: usize = 30;

/// What a test may change about the topology.
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// The sandbox's initial global knobs (`SANDBOX_KNOBS`), e.g. `{"latency_min_ms": 50}`.
    pub sandbox_knobs: Value,
    /// `PAYGATE_*` variables for every paygate service, over the harness's configuration.
    pub env: BTreeMap<String, String>,
    /// The gateways of the routing rule (failover on) for transactions that name none;
    /// empty means [`ROUTE`]. (Routes are an array of tables: no variable can set them.)
    pub route: Vec<String>,
    /// The gateways' status settle window (`status_not_found_after_ms`). It must exceed any
    /// status lag a test gives the sandbox (`status_not_found_for_ms`): a shorter one reads a
    /// lagging "not found" as "never executed".
    pub status_not_found_after_ms: u64,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            sandbox_knobs: Value::Object(Default::default()),
            env: BTreeMap::new(),
            route: Vec::new(),
            status_not_found_after_ms: SANDBOX_SETTLE_MS,
        }
    }
}

impl TopologyOptions {
    /// Adds one `PAYGATE_*` variable.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.insert(key.to_owned(), value.to_string());
        self
    }
}

/// `deposit` or `withdrawal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deposit,
    Withdrawal,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Deposit, Kind::Withdrawal];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Withdrawal => "withdrawal",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Kind::Deposit => "/v1/deposits",
            Kind::Withdrawal => "/v1/withdrawals",
        }
    }
}

/// A merchant with an API key and a webhook endpoint served by an in-process
/// [`WebhookReceiver`] that verifies every signature.
pub struct Merchant {
    pub id: MerchantId,
    pub api_key: String,
    pub receiver: WebhookReceiver,
    pub webhook_url: String,
    _serving: DropGuard,
}

/// The running topology. Dropping it SIGKILLs every process; [`Topology::finish`] stops
/// them gracefully and adds the logs' tails to a failure.
pub struct Topology {
    /// The isolated configuration the services share (database, prefixes, brokers).
    pub config: Config,
    /// A pool on the test's own database.
    pub pool: PgPool,
    /// `target/e2e/<run>/`: the config file and one log per service.
    pub dir: PathBuf,
    pub api_url: String,
    pub sandbox_url: String,
    /// `http://…/metrics` of the three workers.
    pub metrics_urls: BTreeMap<Service, String>,
    processes: BTreeMap<Service, ServiceProcess>,
    /// Services stopped or killed on purpose (not reported as died).
    stopped: BTreeSet<Service>,
    http: reqwest::Client,
    /// The typed client of the sandbox's admin API.
    admin: AdminClient,
}

/// The ports of one start attempt.
struct Ports {
    api: u16,
    sandbox: u16,
    metrics: BTreeMap<Service, u16>,
}

impl Ports {
    fn pick() -> anyhow::Result<Self> {
        // Held together so the five are distinct, released just before the processes bind.
        let mut held = Vec::new();
        let mut next = || -> anyhow::Result<u16> {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .context("picking a free port on 127.0.0.1")?;
            let port = listener.local_addr()?.port();
            held.push(listener);
            Ok(port)
        };
        let api = next()?;
        let sandbox = next()?;
        let mut metrics = BTreeMap::new();
        for service in WORKERS {
            metrics.insert(service, next()?);
        }
        Ok(Self {
            api,
            sandbox,
            metrics,
        })
    }
}

/// The services that serve only `/metrics` (from `PAYGATE_TELEMETRY_METRICS_BIND`).
const WORKERS: [Service; 3] = [
    Service::PaymentProcessor,
    Service::CallbackProcessor,
    Service::CallbackDispatcher,
];

impl Topology {
    /// Builds the binaries if needed, creates a fresh database and unique prefixes, starts
    /// the five processes and waits until each is ready.
    pub async fn start(options: TopologyOptions) -> anyhow::Result<Self> {
        let binaries = binaries::ensure_built().await?;
        paygate_core::telemetry::init(&Config::default().log);
        let (config, pool) = paygate_testkit::isolated_config()
            .await
            .context("creating a fresh database (is Postgres up? run scripts/stack up)")?;
        let dir = binaries
            .target_dir
            .join("e2e")
            .join(&config.kafka.topic_prefix);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;

        let mut last_error = None;
        for attempt in 1..=PORT_ATTEMPTS {
            let ports = Ports::pick()?;
            let mut topology = Topology {
                config: config.clone(),
                pool: pool.clone(),
                dir: dir.clone(),
                api_url: format!("http://127.0.0.1:{}", ports.api),
                sandbox_url: format!("http://127.0.0.1:{}", ports.sandbox),
                admin: AdminClient::with_client(
                    format!("http://127.0.0.1:{}", ports.sandbox),
                    http.clone(),
                ),
                metrics_urls: ports
                    .metrics
                    .iter()
                    .map(|(s, p)| (*s, format!("http://127.0.0.1:{p}/metrics")))
                    .collect(),
                processes: BTreeMap::new(),
                stopped: BTreeSet::new(),
                http: http.clone(),
            };
            match topology.launch_all(binaries, &ports, &options).await {
                Ok(()) => {
                    eprintln!(
                        "paygate-e2e: topology up (API {}, sandbox {}, logs in {})",
                        topology.api_url,
                        topology.sandbox_url,
                        dir.display()
                    );
                    return Ok(topology);
                }
                Err(error) => {
                    let text = format!("{error:#}");
                    drop(topology);
                    let clash = text.contains("Address already in use")
                        || text.contains("AddrInUse")
                        || text.contains("address in use");
                    if clash && attempt < PORT_ATTEMPTS {
                        eprintln!("paygate-e2e: a port was taken meanwhile; starting again");
                        last_error = Some(error);
                        continue;
                    }
                    return Err(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("the topology did not start")))
    }

    /// Writes the config file and starts the sandbox and the API, then the workers.
    async fn launch_all(
        &mut self,
        binaries: &Binaries,
        ports: &Ports,
        options: &TopologyOptions,
    ) -> anyhow::Result<()> {
        let config_path = self.dir.join("paygate.toml");
        std::fs::write(&config_path, self.config_file(ports, options))
            .with_context(|| format!("writing {}", config_path.display()))?;

        let mut base = BTreeMap::new();
        base.insert(
            "PAYGATE_CONFIG".to_owned(),
            config_path.display().to_string(),
        );
        base.insert("NO_COLOR".to_owned(), "1".to_owned());
        base.extend(options.env.clone());

        let log = |service: Service| self.dir.join(format!("{}.log", service.name()));
        let mut launches = Vec::new();
        let mut sandbox_env = BTreeMap::new();
        sandbox_env.insert(
            "SANDBOX_LISTEN".to_owned(),
            format!("127.0.0.1:{}", ports.sandbox),
        );
        sandbox_env.insert("SANDBOX_CALLBACK_BASE_URL".to_owned(), self.api_url.clone());
        sandbox_env.insert(
            "SANDBOX_KNOBS".to_owned(),
            options.sandbox_knobs.to_string(),
        );
        sandbox_env.insert("NO_COLOR".to_owned(), "1".to_owned());
        sandbox_env.insert(
            "RUST_LOG".to_owned(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        );
        launches.push(Launch {
            service: Service::Sandbox,
            program: binaries.path(Service::Sandbox.binary()),
            env: sandbox_env,
            log: log(Service::Sandbox),
        });
        launches.push(Launch {
            service: Service::Api,
            program: binaries.path(Service::Api.binary()),
            env: base.clone(),
            log: log(Service::Api),
        });
        for service in WORKERS {
            let mut env = base.clone();
            env.insert(
                "PAYGATE_TELEMETRY_METRICS_BIND".to_owned(),
                format!("127.0.0.1:{}", ports.metrics[&service]),
            );
            launches.push(Launch {
                service,
                program: binaries.path(service.binary()),
                env,
                log: log(service),
            });
        }

        // The sandbox and the API first (the API creates the topics), then the workers.
        let (first, workers): (Vec<Launch>, Vec<Launch>) = launches
            .into_iter()
            .partition(|l| matches!(l.service, Service::Sandbox | Service::Api));
        for group in [first, workers] {
            let services: Vec<Service> = group.iter().map(|l| l.service).collect();
            for launch in group {
                let process = ServiceProcess::spawn(launch)?;
                self.processes.insert(process.service(), process);
            }
            for service in services {
                self.wait_ready(service).await?;
            }
        }
        Ok(())
    }

    /// The TOML every paygate service reads (`PAYGATE_CONFIG`): this run's identity,
    /// ports, gateways, route, and timings short enough for tests.
    fn config_file(&self, ports: &Ports, options: &TopologyOptions) -> String {
        let route = &options.route;
        let settle_ms = options.status_not_found_after_ms;
        let q = |s: &str| Value::String(s.to_owned()).to_string();
        let c = &self.config;
        let mut toml = String::new();
        let _ = writeln!(
            toml,
            "# Written by paygate-e2e for one test run.\n\n\
             [database]\nurl = {}\nmax_connections = 6\nmigrate_on_start = false\n\n\
             [redis]\nurl = {}\nkey_prefix = {}\n\n\
             [kafka]\nbrokers = {}\ntopic_prefix = {}\ngroup_prefix = {}\npartitions = {}\n\
             instance_id = {}\n\n\
             [api]\nbind = \"127.0.0.1:{}\"\n\n\
             [outbox]\npoll_ms = 100\n\n\
             [processor]\nretry_base_ms = 200\nretry_cap_ms = 2000\nscheduler_poll_ms = 200\n\n\
             [destinations]\nallow_loopback = true\nallow_http = true\n\n\
             [dispatcher]\nretry_schedule_secs = [0, 1, 2, 5, 10]\nscheduler_poll_ms = 200\n\n\
             # The public development key (tests only).\n\
             [secrets]\ncurrent_key = {}\n[secrets.keys]\n{} = {}\n",
            q(&c.database.url),
            q(&c.redis.url),
            q(&c.redis.key_prefix),
            q(&c.kafka.brokers),
            q(&c.kafka.topic_prefix),
            q(&c.kafka.group_prefix),
            c.kafka.partitions,
            // Static membership, as deployments run it: a restarted worker takes its
            // partitions back at once (each service has its own group, so one id serves all).
            q(&c.kafka.group_prefix),
            ports.api,
            q(paygate_core::config::INSECURE_DEV_KEY_ID),
            q(paygate_core::config::INSECURE_DEV_KEY_ID),
            q(paygate_core::config::INSECURE_DEV_KEY),
        );
        // The sandbox's status endpoint does not lag unless told to (its knob
        // `status_not_found_for_ms`): a short settle window keeps crash recovery quick.
        for (name, kind) in GATEWAYS {
            let _ = writeln!(
                toml,
                "[gateways.{name}]\nkind = {}\nbase_url = \"http://127.0.0.1:{}/{name}\"\n\
                 secret_key = {}\nwebhook_secret = {}\nstatus_not_found_after_ms = {settle_ms}\n",
                q(kind),
                ports.sandbox,
                q(paygate_sandbox::DEFAULT_SECRET_KEY),
                q(paygate_sandbox::DEFAULT_WEBHOOK_SECRET),
            );
        }
        let api_url = format!("http://127.0.0.1:{}", ports.api);
        for (name, kind) in PROVIDERS {
            let _ = writeln!(
                toml,
                "[gateways.{name}]\nkind = {}\nbase_url = \"http://127.0.0.1:{}/{name}{}\"\n\
                 secret_key = {}\nwebhook_secret = {}\nstatus_not_found_after_ms = {settle_ms}",
                q(kind),
                ports.sandbox,
                paygate_cli::dev::provider_path(kind),
                q(paygate_sandbox::DEFAULT_SECRET_KEY),
                q(paygate_sandbox::DEFAULT_WEBHOOK_SECRET),
            );
            for (key, value) in paygate_cli::dev::provider_settings(kind, &api_url) {
                let _ = writeln!(toml, "{key} = {}", q(value.as_str().unwrap_or_default()));
            }
            toml.push('\n');
        }
        let route: Vec<String> = if route.is_empty() {
            ROUTE.iter().map(|g| q(g)).collect()
        } else {
            route.iter().map(|g| q(g)).collect()
        };
        let _ = writeln!(
            toml,
            "[[processor.routes]]\ngateways = [{}]\nfailover = true",
            route.join(", ")
        );
        toml
    }

    async fn wait_ready(&mut self, service: Service) -> anyhow::Result<()> {
        let readiness = match service {
            Service::Sandbox => Readiness::Sandbox(self.admin.clone()),
            Service::Api => Readiness::Http {
                http: self.http.clone(),
                url: format!("{}/readyz", self.api_url),
                says_ok: true,
            },
            worker => Readiness::Http {
                http: self.http.clone(),
                url: self
                    .metrics_urls
                    .get(&worker)
                    .cloned()
                    .ok_or_else(|| anyhow!("no metrics port for {worker}"))?,
                says_ok: false,
            },
        };
        let process = self
            .processes
            .get_mut(&service)
            .ok_or_else(|| anyhow!("{service} was not started"))?;
        process
            .wait_ready(READY_TIMEOUT, || {
                let readiness = readiness.clone();
                async move { readiness.probe().await }
            })
            .await
    }

    /// The log file of `service`.
    pub fn log_path(&self, service: Service) -> PathBuf {
        self.dir.join(format!("{}.log", service.name()))
    }

    /// The last `lines` of every service's log, headed by its name.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for service in Service::ALL {
            let _ = writeln!(
                out,
                "---- {service} ({}) ----\n{}",
                self.log_path(service).display(),
                crate::process::log_tail(&self.log_path(service), lines)
            );
        }
        out
    }

    /// Fails, with the log's tail, when a service not stopped on purpose has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut dead = Vec::new();
        for (service, process) in self.processes.iter_mut() {
            if self.stopped.contains(service) {
                continue;
            }
            if let Some(status) = process.exit_status() {
                dead.push(format!(
                    "{service} exited unexpectedly ({status}); the last lines of its log:\n{}",
                    process.log_tail(TAIL_LINES)
                ));
            }
        }
        if dead.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(dead.join("\n")))
        }
    }

    /// SIGKILLs `service`, as a crash would.
    pub async fn kill(&mut self, service: Service) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .ok_or_else(|| anyhow!("{service} was not started"))?;
        self.stopped.insert(service);
        process.kill().await?;
        Ok(())
    }

    /// Stops `service` gracefully (SIGTERM; SIGINT for the sandbox).
    pub async fn stop_service(&mut self, service: Service) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .ok_or_else(|| anyhow!("{service} was not started"))?;
        self.stopped.insert(service);
        let status = process.stop(STOP_GRACE).await?;
        if !status.success() {
            bail!(
                "{service} stopped with {status}; the last lines of its log:\n{}",
                process.log_tail(TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Starts `service` again with the same settings (after [`Topology::kill`] or
    /// [`Topology::stop_service`]) and waits until it is ready.
    pub async fn restart(&mut self, service: Service) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .ok_or_else(|| anyhow!("{service} was not started"))?;
        if process.exit_status().is_none() {
            bail!("{service} is still running; kill or stop it first");
        }
        let launch = process.launch.clone();
        let fresh = ServiceProcess::spawn(launch)?;
        self.processes.insert(service, fresh);
        self.stopped.remove(&service);
        self.wait_ready(service).await
    }

    /// Stops every process gracefully (the workers first, the sandbox last). With a failed
    /// `outcome`, the error gets every log's tail; a service that died or did not stop
    /// cleanly is an error too.
    pub async fn finish(mut self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        let alive = self.check_alive();
        let mut problems = Vec::new();
        for service in Service::ALL.iter().rev() {
            if self.stopped.contains(service) {
                continue;
            }
            if let Err(error) = self.stop_service(*service).await {
                problems.push(format!("{error:#}"));
            }
        }
        let tails = || self.log_tails(TAIL_LINES);
        match (outcome, alive) {
            (Err(error), _) => Err(error.context(format!(
                "the test failed; logs in {}:\n{}",
                self.dir.display(),
                tails()
            ))),
            (Ok(()), Err(error)) => Err(error),
            (Ok(()), Ok(())) if !problems.is_empty() => Err(anyhow!(
                "the services did not stop cleanly: {}",
                problems.join("; ")
            )),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// A merchant with an API key, and a webhook endpoint at a new in-process receiver,
    /// funded for any load ([`merchant_setup::LOAD_FUNDS`] USD minor units).
    pub async fn merchant(&self, name: &str) -> anyhow::Result<Merchant> {
        self.merchant_funded(name, merchant_setup::LOAD_FUNDS).await
    }

    /// As [`Topology::merchant`], starting with `usd_minor` units of USD.
    pub async fn merchant_funded(&self, name: &str, usd_minor: i64) -> anyhow::Result<Merchant> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the webhook receiver")?;
        let webhook_url = format!("http://{}{RECEIVER_PATH}", listener.local_addr()?);
        let keyring = paygate_core::config::SecretsConfig::insecure_dev().keyring()?;
        let created = merchant_setup::create(
            &self.pool,
            &keyring,
            name,
            &webhook_url,
            merchant_setup::usd(usd_minor)?,
        )
        .await?;
        let receiver = WebhookReceiver::new(created.secret, Logging::Quiet);
        let token = CancellationToken::new();
        let serving = receiver.clone();
        let stop = token.clone();
        tokio::spawn(async move {
            if let Err(error) = serving.serve(listener, stop).await {
                tracing::error!(error = %format!("{error:#}"), "webhook receiver failed");
            }
        });
        Ok(Merchant {
            id: created.merchant_id,
            api_key: created.api_key,
            receiver,
            webhook_url,
            _serving: token.drop_guard(),
        })
    }

    /// `POST /v1/deposits` or `/v1/withdrawals`; the HTTP status and the JSON answer.
    pub async fn create(
        &self,
        merchant: &Merchant,
        kind: Kind,
        gateway: Option<&str>,
        amount: i64,
        idempotency_key: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let mut body = serde_json::json!({
            "amount": amount,
            "currency": "USD",
            "customer": format!("cust_{idempotency_key}"),
        });
        if let Some(gateway) = gateway {
            body["gateway"] = Value::String(gateway.to_owned());
        }
        let response = self
            .http
            .post(format!("{}{}", self.api_url, kind.path()))
            .bearer_auth(&merchant.api_key)
            .header("Idempotency-Key", idempotency_key)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {}", kind.path()))?;
        let status = response.status().as_u16();
        let answer = response
            .json()
            .await
            .with_context(|| format!("POST {}: reading the answer", kind.path()))?;
        Ok((status, answer))
    }

    /// `POST {path}` with `body` under `idempotency_key`; the HTTP status and the JSON answer.
    pub async fn post_json(
        &self,
        merchant: &Merchant,
        path: &str,
        body: &Value,
        idempotency_key: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.api_url))
            .bearer_auth(&merchant.api_key)
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status().as_u16();
        let answer = response
            .json()
            .await
            .with_context(|| format!("POST {path}: reading the answer"))?;
        Ok((status, answer))
    }

    /// `GET {path}` as `merchant`; the JSON answer of a 2xx, else an error naming it.
    pub async fn get_json(&self, merchant: &Merchant, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(&merchant.api_key)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("GET {path}: reading the answer"))?;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Polls `GET {path}` until `done` holds for its answer (or `within` passes: an error
    /// with the last answer).
    pub async fn wait_for(
        &mut self,
        merchant: &Merchant,
        path: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let answer = self.get_json(merchant, path).await?;
            if done(&answer) {
                return Ok(answer);
            }
            self.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                bail!("GET {path}: still {answer} after {} s", within.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Funds `merchant` with `minor_units` of `currency` (a ledger top-up).
    pub async fn top_up(
        &self,
        merchant: &Merchant,
        currency: &str,
        minor_units: i64,
    ) -> anyhow::Result<()> {
        let money = paygate_core::domain::Money::from_parts(minor_units, currency)?;
        let reference = format!("e2e-{currency}-{minor_units}");
        paygate_core::db::ledger::top_up(&self.pool, merchant.id, money, &reference)
            .await
            .map_err(|e| anyhow!("top-up {currency}: {e}"))?;
        Ok(())
    }

    /// `GET /v1/transactions/{id}`.
    pub async fn transaction(&self, merchant: &Merchant, id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/v1/transactions/{id}", self.api_url))
            .bearer_auth(&merchant.api_key)
            .send()
            .await
            .with_context(|| format!("GET /v1/transactions/{id}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("GET /v1/transactions/{id}: reading the answer"))?;
        if !status.is_success() {
            bail!("GET /v1/transactions/{id}: {status} {body}");
        }
        Ok(body)
    }

    /// Polls `GET /v1/transactions/{id}` for each id until all are `succeeded` or `failed`;
    /// the last answer for each. Fails at `within`, naming the ones still open.
    pub async fn wait_terminal(
        &mut self,
        merchant: &Merchant,
        ids: &[String],
        within: Duration,
    ) -> anyhow::Result<BTreeMap<String, Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut done = BTreeMap::new();
        loop {
            for id in ids {
                if done.contains_key(id) {
                    continue;
                }
                let tx = self.transaction(merchant, id).await?;
                if matches!(tx["status"].as_str(), Some("succeeded" | "failed")) {
                    done.insert(id.clone(), tx);
                }
            }
            if done.len() == ids.len() {
                return Ok(done);
            }
            self.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                let mut open = Vec::new();
                for id in ids.iter().filter(|id| !done.contains_key(*id)) {
                    let tx = self.transaction(merchant, id).await?;
                    open.push(format!("{id}: {}", tx["status"]));
                }
                bail!(
                    "{} of {} transactions not terminal within {} s: {}",
                    open.len(),
                    ids.len(),
                    within.as_secs(),
                    open.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `merchant`'s receiver has a verified webhook for every id in `ids`, then
    /// `settle` longer (for any late duplicate); everything it received.
    pub async fn wait_webhooks(
        &mut self,
        merchant: &Merchant,
        ids: &BTreeSet<String>,
        within: Duration,
        settle: Duration,
    ) -> anyhow::Result<Vec<ReceivedWebhook>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = merchant.receiver.received();
            let covered: BTreeSet<&str> = received
                .iter()
                .filter(|w| w.verified)
                .filter_map(|w| w.transaction_id.as_deref())
                .collect();
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !covered.contains(id.as_str()))
                .collect();
            if missing.is_empty() {
                break;
            }
            self.check_alive()?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} of {} transactions got no verified webhook within {} s (received {} in all): {:?}",
                    missing.len(),
                    ids.len(),
                    within.as_secs(),
                    received.len(),
                    missing.iter().take(10).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(settle).await;
        Ok(merchant.receiver.received())
    }

    /// The typed client of the sandbox's admin API.
    pub fn admin(&self) -> &AdminClient {
        &self.admin
    }

    /// The sandbox's counters.
    pub async fn sandbox_stats(&self) -> anyhow::Result<StatsReport> {
        Ok(self.admin.stats().await?)
    }

    /// Changes the given global knobs (from now on).
    pub async fn patch_knobs(&self, patch: Value) -> anyhow::Result<()> {
        self.admin.patch_knobs(patch).await?;
        Ok(())
    }

    /// Changes the given knobs of `account` (from now on).
    pub async fn patch_account_knobs(&self, account: &str, patch: Value) -> anyhow::Result<()> {
        self.admin.patch_account_knobs(account, patch).await?;
        Ok(())
    }

    /// How many transactions of this run's database are in each status.
    pub async fn status_counts(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM transactions GROUP BY status")
                .fetch_all(&self.pool)
                .await
                .context("counting transactions by status")?;
        Ok(rows.into_iter().collect())
    }
}

/// How a service shows it is ready.
#[derive(Clone)]
enum Readiness {
    /// The sandbox's admin health check answers.
    Sandbox(AdminClient),
    /// A GET answers 2xx; the API's `/readyz` must also say `ok` (`says_ok`).
    Http {
        http: reqwest::Client,
        url: String,
        says_ok: bool,
    },
}

impl Readiness {
    /// One probe, bounded by [`PROBE_TIMEOUT`].
    async fn probe(&self) -> bool {
        match self {
            Self::Sandbox(admin) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, admin.health()).await,
                Ok(Ok(()))
            ),
            Self::Http { http, url, says_ok } => {
                let Ok(response) = http.get(url).timeout(PROBE_TIMEOUT).send().await else {
                    return false;
                };
                if !response.status().is_success() {
                    return false;
                }
                if *says_ok {
                    let body: Value = response.json().await.unwrap_or_default();
                    return body["status"] == "ok";
                }
                true
            }
        }
    }
}
