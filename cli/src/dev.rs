//! `paygate dev`: the whole pipeline in one process, for a quick look.
//!
//! [`start`] checks the ports (`Ports`), builds the sandbox providers, makes sure the
//! database exists, starts an embedded Kafka-protocol broker (librdkafka's mock cluster)
//! unless a broker is configured, runs what every service starts with
//! ([`paygate_core::startup::Foundation`]: Postgres migrated, topics, producer) and checks
//! Redis (`prepare_infrastructure`), builds the API, the payment processor, the callback
//! processor and the callback dispatcher (`Services::build`), creates a demo merchant (with
//! an API key) whose webhook endpoint is a small demo receiver, and runs them all on one
//! [`CancellationToken`] (`Services::spawn`). [`DevStack::banner`] says how to use it;
//! [`DevStack::wait`] runs until the token is cancelled (Ctrl-C) or a service stops, then
//! stops everything within a bound.
//!
//! Nothing is spawned until every part has been built, so a failed start leaves nothing
//! running behind it.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use paygate_core::bus::Topic;
use paygate_core::config::{Config, GatewayConfig, KafkaConfig, RouteRule};
use paygate_core::domain::MerchantId;
use paygate_core::startup::{Foundation, StartupError, Topics};
use paygate_gateways::GatewayRegistry;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::merchant_setup;
use crate::receiver::{Logging, WebhookReceiver};
pub use crate::receiver::{ReceivedWebhook, RECEIVER_PATH};

/// The gateways `paygate dev` configures on the sandbox when the config names none:
/// (gateway name = sandbox account, connector kind).
pub const DEV_GATEWAYS: [(&str, &str); 3] = [
    ("sandbox-json", "sandbox-json"),
    ("sandbox-soap", "sandbox-soap"),
    ("sandbox-proto", "sandbox-proto"),
];
/// The emulated real providers `paygate dev` (and the e2e topology) also configure on the
/// sandbox: (gateway name = sandbox account, connector kind). Payments reach them only by
/// naming them (`"gateway": "paystack"`); the default route stays on the invented protocols.
pub const PROVIDER_GATEWAYS: [(&str, &str); 3] = [
    ("paystack", "paystack"),
    ("stripe", "stripe"),
    ("mpesa", "mpesa"),
];

/// Where an emulator lives under its sandbox account: Paystack's paths (`/transfer`,
/// `/transaction/verify/…`) are also the invented `sandbox-json` protocol's, so its
/// emulator answers under `/{account}/paystack/`.
pub fn provider_path(kind: &str) -> &'static str {
    match kind {
        "paystack" => "/paystack",
        _ => "",
    }
}

/// The connector keys a provider gateway needs against the sandbox's emulator of it, with
/// the sandbox's secrets. `api_url` is paygate's own root: M-Pesa is told a callback URL per
/// payment under it.
pub fn provider_settings(kind: &str, api_url: &str) -> BTreeMap<String, serde_json::Value> {
    let pairs: Vec<(&str, String)> = match kind {
        // A bank code for transfer recipients (Access Bank's, from Paystack's bank list).
        "paystack" => vec![("bank_code", "044".into())],
        // A test card that asks for 3-D Secure, so every deposit shows the redirect.
        "stripe" => vec![
            ("payment_method", "pm_card_threeDSecure2Required".into()),
            ("return_url", format!("{api_url}/")),
        ],
        // Daraja's public sandbox shortcode; the emulator takes its webhook secret as the
        // passkey.
        "mpesa" => vec![
            ("consumer_key", "paygate-dev".into()),
            ("shortcode", "174379".into()),
            ("passkey", paygate_sandbox::DEFAULT_WEBHOOK_SECRET.into()),
            ("callback_base_url", api_url.to_owned()),
            ("initiator_name", "testapi".into()),
            ("security_credential", "sandbox-credential".into()),
        ],
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
        .collect()
}

/// The default route's order (all transactions, with failover).
const DEV_ROUTE: [&str; 3] = ["sandbox-json", "sandbox-proto", "sandbox-soap"];
/// Bound on each connectivity check and on each service's start.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const SERVICE_BUILD_TIMEOUT: Duration = Duration::from_secs(30);
/// What the printed hints say to start Postgres, Redis and a broker.
/// What the demo merchant starts with (a ledger top-up): 100,000.00 USD, so the banner's
/// withdrawal example is covered.
const DEMO_FUNDS: i64 = 10_000_000;

const STACK_HINT: &str = "start the local stack with `scripts/stack up`";

/// The ports of `paygate dev` (0 picks a free one) and where Kafka comes from.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The API (`--port`).
    pub api_port: u16,
    /// The sandbox providers and their admin API (`--sandbox-port`).
    pub sandbox_port: u16,
    /// The demo webhook receiver (`--receiver-port`).
    pub receiver_port: u16,
    /// Start librdkafka's in-process mock cluster instead of using `config.kafka.brokers`
    /// (what `paygate dev` does when `PAYGATE_KAFKA_BROKERS` is not set).
    pub embedded_kafka: bool,
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            api_port: 8080,
            sandbox_port: 8090,
            receiver_port: 8099,
            embedded_kafka: true,
        }
    }
}

/// A running dev stack.
pub struct DevStack {
    pub api_addr: SocketAddr,
    pub sandbox_addr: SocketAddr,
    pub receiver_addr: SocketAddr,
    pub merchant_id: MerchantId,
    /// The demo merchant's API key (`sk_…`), created at this start; printed once on purpose.
    pub api_key: String,
    /// The demo console users made at this start: the merchant's user, then an operator.
    pub console_users: Vec<DemoUser>,
    /// The brokers the services use (the mock cluster's address when embedded).
    pub kafka_brokers: String,
    pub embedded_kafka: bool,
    database: String,
    gateways: Vec<String>,
    routes: Vec<RouteRule>,
    receiver: WebhookReceiver,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    running: HashSet<&'static str>,
    /// Kept alive for the whole run; dropped (after the services) to stop the broker.
    kafka: Option<EmbeddedKafka>,
}

/// Starts the whole pipeline. `shutdown` stops it (also cancelled when a service stops).
pub async fn start(
    mut config: Config,
    options: DevOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<DevStack> {
    if config.secrets.is_empty() {
        // A development stack: webhook secrets are sealed with the public development key
        // (a configured keyring is used as given).
        config.secrets = paygate_core::config::SecretsConfig::insecure_dev();
    }
    let keyring = config.secrets.keyring()?;
    // The console is served over plain HTTP on localhost here: cookies without `Secure`.
    config.console.secure_cookies = false;
    let ports = Ports::claim(&options).await?;
    let sandbox = start_sandbox(&options, ports.api).await?;
    let (pool, kafka) = prepare_infrastructure(&mut config, &options).await?;
    let registry = configure_services(&mut config, ports.api, &sandbox)?;
    let gateways: Vec<String> = registry.names().map(|n| n.to_string()).collect();
    let services = Services::build(&config, registry).await?;

    let receiver_url = format!("http://{}{RECEIVER_PATH}", ports.receiver);
    let demo = merchant_setup::create(
        &pool,
        &keyring,
        "paygate dev demo",
        &receiver_url,
        merchant_setup::usd(DEMO_FUNDS)?,
    )
    .await?;
    let console_users = demo_console_users(&pool, demo.merchant_id).await?;
    pool.close().await;
    let receiver = WebhookReceiver::new(demo.secret, Logging::EachWebhook);
    let (tasks, running) = services.spawn(
        sandbox,
        (receiver.clone(), ports.receiver_listener),
        &shutdown,
    );

    Ok(DevStack {
        api_addr: ports.api,
        sandbox_addr: ports.sandbox,
        receiver_addr: ports.receiver,
        merchant_id: demo.merchant_id,
        api_key: demo.api_key,
        console_users,
        kafka_brokers: config.kafka.brokers.clone(),
        embedded_kafka: options.embedded_kafka,
        database: redact(&config.database.url),
        gateways,
        routes: config.processor.routes.clone(),
        receiver,
        shutdown,
        tasks,
        running,
        kafka,
    })
}

/// A console user `paygate dev` made, with its password (printed once, on purpose).
#[derive(Debug, Clone)]
pub struct DemoUser {
    pub role: &'static str,
    pub email: String,
    pub password: String,
}

/// A merchant user for the demo merchant and an operator, each with a fresh email (the
/// database outlives a dev run) and a generated password.
async fn demo_console_users(pool: &PgPool, merchant: MerchantId) -> anyhow::Result<Vec<DemoUser>> {
    use paygate_core::db::console_users::Role;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = run.get(..8).unwrap_or("demo");
    let mut users = Vec::new();
    for (role, label) in [
        (Role::Merchant(merchant), "merchant"),
        (Role::Operator, "operator"),
    ] {
        let email = format!("{label}-{run}@paygate.test");
        let password = paygate_console::password::generate();
        paygate_console::users::create(pool, &email, &password, role)
            .await
            .with_context(|| format!("creating the demo console {label}"))?;
        users.push(DemoUser {
            role: label,
            email,
            password,
        });
    }
    Ok(users)
}

/// The three ports, checked first: cheapest to check and the likeliest thing to be wrong.
struct Ports {
    /// The demo receiver's, bound here and kept.
    receiver_listener: TcpListener,
    receiver: SocketAddr,
    /// The API's: the sandbox must know it (for callbacks) and the API the sandbox's (the
    /// gateways' base URLs), so it is settled here and bound again by the API.
    api: SocketAddr,
    /// The sandbox's, bound by the sandbox once it is built.
    sandbox: SocketAddr,
}

impl Ports {
    async fn claim(options: &DevOptions) -> anyhow::Result<Self> {
        let receiver_listener = bind_port(options.receiver_port, "--receiver-port").await?;
        let receiver = receiver_listener
            .local_addr()
            .context("demo receiver address")?;
        let api_port = probe_port(options.api_port, "--port")?;
        probe_port(options.sandbox_port, "--sandbox-port")?;
        Ok(Self {
            receiver_listener,
            receiver,
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, api_port)),
            sandbox: SocketAddr::from((Ipv4Addr::LOCALHOST, options.sandbox_port)),
        })
    }
}

/// The sandbox providers, sending their callbacks to the API at `api`.
async fn start_sandbox(
    options: &DevOptions,
    api: SocketAddr,
) -> anyhow::Result<paygate_sandbox::Sandbox> {
    paygate_sandbox::Sandbox::build(paygate_sandbox::SandboxSettings {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, options.sandbox_port)),
        callback_base_url: format!("http://{api}"),
        ..paygate_sandbox::SandboxSettings::default()
    })
    .await
    .map_err(|e| {
        anyhow!(
            "the sandbox cannot listen on 127.0.0.1:{}: {e:#}; choose another port with --sandbox-port",
            options.sandbox_port
        )
    })
}

/// Postgres (the database created when missing, then migrated), the broker (the embedded
/// one, or the configured one's topics) and Redis, each failing with the fix in its message.
/// Returns a pool for the demo merchant and the embedded broker, if any.
async fn prepare_infrastructure(
    config: &mut Config,
    options: &DevOptions,
) -> anyhow::Result<(PgPool, Option<EmbeddedKafka>)> {
    create_database(config).await?;
    let kafka = if options.embedded_kafka {
        let embedded = EmbeddedKafka::start(&config.kafka).await?;
        config.kafka.brokers = embedded.bootstrap.clone();
        Some(embedded)
    } else {
        None
    };
    let foundation = foundation(config).await?;
    check_redis(config).await?;
    Ok((foundation.pool, kafka))
}

/// What the services need from the dev stack: the API's address, migrations already run,
/// webhooks to the plain-http loopback receiver, and the sandbox gateways and route unless
/// the configuration names its own. The registry of those gateways.
fn configure_services(
    config: &mut Config,
    api: SocketAddr,
    sandbox: &paygate_sandbox::Sandbox,
) -> anyhow::Result<GatewayRegistry> {
    config.api.bind = api.to_string();
    config.database.migrate_on_start = false;
    config.destinations.allow_loopback = true;
    config.destinations.allow_http = true;
    if config.gateways.is_empty() {
        config.gateways = sandbox_gateways(sandbox, &format!("http://{api}"));
    }
    if config.processor.routes.is_empty() {
        config.processor.routes = vec![default_route()];
    }
    GatewayRegistry::from_config(&config.gateways)
        .map_err(|e| anyhow!("invalid gateway configuration: {e}"))
}

/// The four services, built (nothing runs until [`Services::spawn`]).
struct Services {
    api: paygate_api::Application,
    payments: paygate_payment_processor::PaymentProcessor,
    callbacks: paygate_callback_processor::CallbackProcessor,
    dispatcher: paygate_callback_dispatcher::Dispatcher,
}

type ServiceTasks = JoinSet<(&'static str, anyhow::Result<()>)>;
type Task = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A service's `run` as a task whose error is an `anyhow::Error`.
fn task<E: Into<anyhow::Error>>(run: impl Future<Output = Result<(), E>> + Send + 'static) -> Task {
    Box::pin(async move { run.await.map_err(Into::into) })
}

impl Services {
    /// The API first: it installs the process's Prometheus recorder, which the other
    /// services' metrics then report to.
    async fn build(config: &Config, registry: GatewayRegistry) -> anyhow::Result<Self> {
        let kafka = &config.kafka;
        let api = paygate_api::Application::build_with(config.clone(), registry.clone());
        let api = service_build("the API", kafka, api)
            .await?
            .map_err(|e| match e {
                paygate_api::ApiError::Bind { addr, source } => anyhow!(
                    "the API cannot listen on {addr}: {source}; choose another port with --port"
                ),
                other => anyhow!("the API did not start: {other}"),
            })?;
        let payments =
            paygate_payment_processor::PaymentProcessor::build(config.clone(), registry.clone());
        let payments = service_build("the payment processor", kafka, payments)
            .await?
            .map_err(|e| anyhow!("the payment processor did not start: {e}"))?;
        let callbacks =
            paygate_callback_processor::CallbackProcessor::build(config.clone(), registry);
        let callbacks = service_build("the callback processor", kafka, callbacks)
            .await?
            .map_err(|e| anyhow!("the callback processor did not start: {e}"))?;
        let dispatcher = paygate_callback_dispatcher::Dispatcher::build(config.clone());
        let dispatcher = service_build("the callback dispatcher", kafka, dispatcher)
            .await?
            .map_err(|e| anyhow!("the callback dispatcher did not start: {e}"))?;
        Ok(Self {
            api,
            payments,
            callbacks,
            dispatcher,
        })
    }

    /// Runs the services, the sandbox and the demo receiver, each as a named task on
    /// `shutdown`; returns the tasks and the names still running.
    fn spawn(
        self,
        sandbox: paygate_sandbox::Sandbox,
        (receiver, listener): (WebhookReceiver, TcpListener),
        shutdown: &CancellationToken,
    ) -> (ServiceTasks, HashSet<&'static str>) {
        let token = || shutdown.clone();
        let receiver_token = token();
        let Self {
            api,
            payments,
            callbacks,
            dispatcher,
        } = self;
        let named: [(&'static str, Task); 6] = [
            ("sandbox", task(sandbox.run(token()))),
            ("api", task(api.run(token()))),
            ("payment-processor", task(payments.run(token()))),
            ("callback-processor", task(callbacks.run(token()))),
            ("callback-dispatcher", task(dispatcher.run(token()))),
            (
                "demo-receiver",
                task(async move { receiver.serve(listener, receiver_token).await }),
            ),
        ];
        let mut tasks = JoinSet::new();
        let mut running = HashSet::new();
        for (name, task) in named {
            running.insert(name);
            tasks.spawn(async move { (name, task.await) });
        }
        (tasks, running)
    }
}

impl DevStack {
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    pub fn sandbox_url(&self) -> String {
        format!("http://{}", self.sandbox_addr)
    }

    pub fn receiver_url(&self) -> String {
        format!("http://{}{RECEIVER_PATH}", self.receiver_addr)
    }

    /// Every webhook the demo receiver got so far, oldest first.
    pub fn received_webhooks(&self) -> Vec<ReceivedWebhook> {
        self.receiver.received()
    }

    /// What `paygate dev` prints once everything runs: URLs, the API key, and curls.
    pub fn banner(&self) -> String {
        let api = self.api_url();
        let sandbox = self.sandbox_url();
        let key = &self.api_key;
        let kafka = if self.embedded_kafka {
            format!(
                "embedded mock cluster at {} (in memory; set PAYGATE_KAFKA_BROKERS to use a real broker)",
                self.kafka_brokers
            )
        } else {
            self.kafka_brokers.clone()
        };
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|rule| {
                let mut filter = Vec::new();
                if let Some(kind) = &rule.kind {
                    filter.push(kind.clone());
                }
                if let Some(currency) = &rule.currency {
                    filter.push(currency.clone());
                }
                if let Some(country) = &rule.country {
                    filter.push(format!("country {country}"));
                }
                let filter = if filter.is_empty() {
                    "all transactions".to_owned()
                } else {
                    filter.join(" ")
                };
                let failover = if rule.failover { ", with failover" } else { "" };
                format!("{filter} → {}{failover}", rule.gateways.join(", "))
            })
            .collect();
        let idempotency_key = format!("demo-{}", uuid::Uuid::new_v4().simple());
        format!(
            "\
paygate dev is running: API, payment processor, callback processor, callback dispatcher,
sandbox providers and a demo webhook receiver, in this process. Ctrl-C stops everything.

  API               {api}
  OpenAPI           {api}/openapi.json
  metrics           {api}/metrics
  health            {api}/readyz
  sandbox admin     {sandbox}/_admin/knobs
  sandbox stats     {sandbox}/_admin/stats
  demo receiver     {receiver}  (logs every webhook it gets, with its signature check)
  Postgres          {database}
  Kafka             {kafka}
  gateways          {gateways}
  routing           {routes}

  demo merchant     {merchant}
  API key           {key}
                    (shown once: a new demo merchant and key are made at every start)

  console           {api}/console
{console_users}
Make a deposit (10.50 USD):

  curl -sS -X POST {api}/v1/deposits \\
    -H \"Authorization: Bearer {key}\" \\
    -H \"Content-Type: application/json\" \\
    -H \"Idempotency-Key: {idempotency_key}\" \\
    -d '{{\"amount\":1050,\"currency\":\"USD\",\"customer\":\"cust_42\"}}'

Read it back (TXN_ID = the \"id\" of the response above; \"status\" goes pending → succeeded):

  curl -sS {api}/v1/transactions/$TXN_ID -H \"Authorization: Bearer {key}\"

or list the latest: curl -sS {api}/v1/transactions -H \"Authorization: Bearer {key}\"

Pay out 25.00 USD from the demo merchant's balance (it starts with 100,000.00 USD):

  curl -sS -X POST {api}/v1/withdrawals \\
    -H \"Authorization: Bearer {key}\" \\
    -H \"Content-Type: application/json\" \\
    -H \"Idempotency-Key: {idempotency_key}-payout\" \\
    -d '{{\"amount\":2500,\"currency\":\"USD\",\"customer\":\"cust_42\"}}'

and see the balance and its ledger entries:

  curl -sS {api}/v1/balance -H \"Authorization: Bearer {key}\"
  curl -sS {api}/v1/balance/transactions -H \"Authorization: Bearer {key}\"
",
            receiver = self.receiver_url(),
            database = self.database,
            gateways = self.gateways.join(", "),
            routes = routes.join("; "),
            merchant = self.merchant_id,
            console_users = self
                .console_users
                .iter()
                .map(|u| format!("  console {:<9} {} / {}\n", u.role, u.email, u.password))
                .collect::<String>(),
        )
    }

    /// Runs until the shutdown token is cancelled or a service stops on its own (which
    /// cancels the token), then waits at most `grace` for everything to stop. An error
    /// names each service that failed or did not stop in time.
    pub async fn wait(mut self, grace: Duration) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                // A task that ends because the token was just cancelled stopped normally.
                let early = !self.shutdown.is_cancelled();
                record(joined, &mut self.running, &mut failures, early);
                self.shutdown.cancel();
            }
        }
        tracing::info!("paygate dev: stopping");
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(joined)) => record(joined, &mut self.running, &mut failures, false),
                Ok(None) => break,
                Err(_) => {
                    let mut late: Vec<&str> = self.running.iter().copied().collect();
                    late.sort_unstable();
                    failures.push(format!(
                        "did not stop within {} s: {}",
                        grace.as_secs(),
                        late.join(", ")
                    ));
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        // The services are gone: the embedded broker can go too.
        if let Some(kafka) = self.kafka.take() {
            kafka.stop().await;
        }
        if failures.is_empty() {
            tracing::info!("paygate dev: stopped");
            Ok(())
        } else {
            Err(anyhow!(failures.join("; ")))
        }
    }

    /// Cancels the token and waits (at most `grace`) for everything to stop.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait(grace).await
    }
}

fn record(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
    running: &mut HashSet<&'static str>,
    failures: &mut Vec<String>,
    early: bool,
) {
    match joined {
        Ok((name, result)) => {
            running.remove(name);
            match result {
                Ok(()) if early => {
                    tracing::warn!(service = name, "stopped on its own; stopping everything");
                    failures.push(format!("{name} stopped unexpectedly"));
                }
                Ok(()) => tracing::info!(service = name, "stopped"),
                Err(error) => {
                    tracing::error!(service = name, error = %format!("{error:#}"), "failed");
                    failures.push(format!("{name} failed: {error:#}"));
                }
            }
        }
        Err(error) => failures.push(format!("a service task ended abnormally: {error}")),
    }
}

/// Binds `127.0.0.1:port` (the caller keeps the listener).
async fn bind_port(port: u16, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| port_error(port, flag, &e))
}

/// Checks that `127.0.0.1:port` is free and returns it (a free one when `port` is 0).
fn probe_port(port: u16, flag: &str) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .map_err(|e| port_error(port, flag, &e))?;
    let port = listener
        .local_addr()
        .map_err(|e| port_error(port, flag, &e))?
        .port();
    Ok(port)
}

fn port_error(port: u16, flag: &str, error: &std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        anyhow!("port {port} is already in use; choose another with {flag} <port>")
    } else {
        anyhow!(
            "cannot listen on 127.0.0.1:{port}: {error}; choose another port with {flag} <port>"
        )
    }
}

/// Creates the configured database when it does not exist (connecting to the `postgres`
/// database of the same server).
async fn create_database(config: &Config) -> anyhow::Result<()> {
    let options = pg_options(config)?;
    let server = server_of(&options);
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let admin = options.database("postgres").disable_statement_logging();
    let mut conn = tokio::time::timeout(CHECK_TIMEOUT, admin.connect())
        .await
        .map_err(|_| postgres_unreachable(&server, &"no answer within 5 s"))?
        .map_err(|e| postgres_unreachable(&server, &e))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .with_context(|| format!("Postgres at {server}: looking up database {name}"))?;
    if !exists {
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&create).execute(&mut conn).await {
            Ok(_) => tracing::info!(database = %name, "created the database"),
            // Someone else created it meanwhile.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => {
                return Err(anyhow!(
                    "Postgres at {server}: cannot create database {name}: {e}"
                ))
            }
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// What every service starts with ([`Foundation::start`]), migrations included whatever
/// `migrate_on_start` says (the services then skip them): Postgres, the topics, the producer.
async fn foundation(config: &Config) -> anyhow::Result<Foundation> {
    let mut first = config.clone();
    first.database.migrate_on_start = true;
    let started = tokio::time::timeout(
        SERVICE_BUILD_TIMEOUT,
        Foundation::start(&first, Topics::Required),
    )
    .await
    .map_err(|_| kafka_unreachable(&config.kafka, &"no answer within 30 s"))?;
    started.map_err(|e| match e {
        StartupError::Connect(e) => match pg_options(config) {
            Ok(options) => postgres_unreachable(&server_of(&options), &e),
            Err(unusable) => unusable,
        },
        StartupError::Migrate(e) => anyhow!(e).context(format!(
            "applying migrations to {}",
            redact(&config.database.url)
        )),
        StartupError::Topics(e) => kafka_unreachable(&config.kafka, &e),
        other @ StartupError::Producer(_) => anyhow!("the Kafka producer: {other}"),
        StartupError::Deployment(e) => anyhow!(e).context(format!(
            "claiming {} for this deployment",
            redact(&config.database.url)
        )),
    })
}

fn pg_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(&config.database.url).map_err(|e| {
        anyhow!(
            "PAYGATE_DATABASE_URL {} is not usable: {e}",
            redact(&config.database.url)
        )
    })
}

fn server_of(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

fn postgres_unreachable(server: &str, error: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "Postgres is unreachable at {server} ({error}); {STACK_HINT}, or point PAYGATE_DATABASE_URL at a running server"
    )
}

/// Fails with a clear message when Redis does not answer a PING.
async fn check_redis(config: &Config) -> anyhow::Result<()> {
    let shown = redact(&config.redis.url);
    let unreachable = |error: &dyn std::fmt::Display| {
        anyhow!(
            "Redis is unreachable at {shown} ({error}); {STACK_HINT}, or point PAYGATE_REDIS_URL at a running server"
        )
    };
    let client = redis::Client::open(config.redis.url.as_str())
        .map_err(|e| anyhow!("PAYGATE_REDIS_URL {shown} is not usable: {e}"))?;
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    tokio::time::timeout(CHECK_TIMEOUT, ping)
        .await
        .map_err(|_| unreachable(&"no answer within 5 s"))?
        .map_err(|e| unreachable(&e))?;
    Ok(())
}

/// The broker did not answer (or refused): how to get one.
fn kafka_unreachable(kafka: &KafkaConfig, error: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "Kafka is unreachable at {} ({error}); {STACK_HINT} (tansu on 127.0.0.1:9092), or unset PAYGATE_KAFKA_BROKERS to use the embedded broker",
        kafka.brokers
    )
}

/// A service's `build`, bounded: it waits for Kafka, which may never answer.
async fn service_build<T>(
    what: &str,
    kafka: &KafkaConfig,
    build: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(SERVICE_BUILD_TIMEOUT, build)
        .await
        .map_err(|_| {
            anyhow!(
                "{what} did not start within {} s: is Kafka reachable at {}? {STACK_HINT}, or unset PAYGATE_KAFKA_BROKERS to use the embedded broker",
                SERVICE_BUILD_TIMEOUT.as_secs(),
                kafka.brokers
            )
        })
}

/// The settle window of the sandbox gateways' status queries (ms): the sandbox's status
/// endpoint does not lag unless told to. The e2e harness uses it too.
pub const SANDBOX_SETTLE_MS: u64 = 5_000;

/// `[gateways.*]` for the sandbox accounts: the three invented protocols and the three
/// emulated providers.
fn sandbox_gateways(
    sandbox: &paygate_sandbox::Sandbox,
    api_url: &str,
) -> BTreeMap<String, GatewayConfig> {
    DEV_GATEWAYS
        .iter()
        .chain(PROVIDER_GATEWAYS.iter())
        .map(|(name, kind)| {
            let mut table = GatewayConfig::new(
                kind,
                &format!("{}{}", sandbox.account_url(name), provider_path(kind)),
                paygate_sandbox::DEFAULT_SECRET_KEY,
            );
            table.webhook_secret = Some(paygate_sandbox::DEFAULT_WEBHOOK_SECRET.into());
            // The sandbox's status endpoint does not lag unless told to.
            table.status_not_found_after = Duration::from_millis(SANDBOX_SETTLE_MS);
            table.extra = provider_settings(kind, api_url);
            ((*name).to_owned(), table)
        })
        .collect()
}

/// Every transaction to the sandbox gateways, with failover.
fn default_route() -> RouteRule {
    RouteRule {
        kind: None,
        currency: None,
        country: None,
        gateways: DEV_ROUTE.iter().map(|g| (*g).to_owned()).collect(),
        failover: true,
    }
}

/// librdkafka's mock cluster on a thread of its own (it is not `Send`), with the four topics
/// created (it does not support CreateTopics; `ensure_topics` then finds them). Dropping or
/// stopping it shuts the cluster down.
struct EmbeddedKafka {
    bootstrap: String,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl EmbeddedKafka {
    async fn start(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let names: Vec<String> = Topic::ALL
            .iter()
            .map(|t| format!("{}.{}", kafka.topic_prefix, t.suffix()))
            .collect();
        let partitions = kafka.partitions;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("paygate-dev-kafka".into())
            .spawn(move || {
                let cluster = match rdkafka::mocking::MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start the mock cluster: {e}")));
                        return;
                    }
                };
                for name in &names {
                    if let Err(e) = cluster.create_topic(name, partitions, 1) {
                        let _ = ready_tx.send(Err(format!("cannot create topic {name}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Until stopped, or the handle is dropped.
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .context("starting the embedded Kafka thread")?;
        let ready = tokio::task::spawn_blocking(move || ready_rx.recv())
            .await
            .context("embedded Kafka")?;
        let bootstrap = match ready {
            Ok(Ok(bootstrap)) => bootstrap,
            Ok(Err(message)) => return Err(anyhow!("embedded Kafka: {message}")),
            Err(_) => return Err(anyhow!("embedded Kafka: the broker thread ended")),
        };
        tracing::info!(%bootstrap, "embedded Kafka (librdkafka mock cluster) started");
        Ok(Self {
            bootstrap,
            stop,
            thread,
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let joined = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await;
        if joined.is_err() {
            tracing::warn!("the embedded Kafka broker did not stop within 5 s");
        }
    }
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
