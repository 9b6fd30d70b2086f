//! The topology under test: started by `scripts/up` (the same script developers use) with
//! the chaos suite's own servers, ports and state directory; one service crashed with
//! SIGKILL and restarted with exactly the command line, environment and log it had.
//!
//! A process's launch is read from `/proc/<pid>/{cmdline,environ,cwd}` before it is killed,
//! so the restart needs no knowledge of how `scripts/up` started it, and the pid file is
//! rewritten so `scripts/up status` and `scripts/up down` keep working.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

/// The paygate services a fault kills (the sandbox stands for the providers: it is not
/// paygate's to crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Api,
    PaymentProcessor,
    CallbackProcessor,
    CallbackDispatcher,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::PaymentProcessor,
        Service::CallbackProcessor,
        Service::CallbackDispatcher,
        Service::Api,
    ];

    /// The name `scripts/up` uses (pid and log files).
    pub fn name(self) -> &'static str {
        match self {
            Service::Api => "api",
            Service::PaymentProcessor => "payment-processor",
            Service::CallbackProcessor => "callback-processor",
            Service::CallbackDispatcher => "callback-dispatcher",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a killed process was running, to start it again the same way.
#[derive(Debug, Clone)]
pub struct Launch {
    service: Service,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
}

/// Ports and paths of one `scripts/up` topology.
#[derive(Debug, Clone)]
pub struct Topology {
    root: PathBuf,
    state: PathBuf,
    env: BTreeMap<String, String>,
    release: bool,
    pub api_url: String,
    pub sandbox_url: String,
    metrics_port: u16,
}

impl Topology {
    /// The settings for a topology under `state` using the given servers; nothing starts.
    pub fn new(
        root: &Path,
        state: &Path,
        release: bool,
        servers: BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let api_port = super::infra::free_port()?;
        let sandbox_port = super::infra::free_port()?;
        let metrics_port = super::infra::free_ports(3)?;
        let mut env = servers;
        env.insert("TOPOLOGY_STATE".into(), state.display().to_string());
        env.insert("TOPOLOGY_API_PORT".into(), api_port.to_string());
        env.insert("TOPOLOGY_SANDBOX_PORT".into(), sandbox_port.to_string());
        env.insert("TOPOLOGY_METRICS_PORT".into(), metrics_port.to_string());
        Ok(Self {
            root: root.to_path_buf(),
            state: state.to_path_buf(),
            env,
            release,
            api_url: format!("http://127.0.0.1:{api_port}"),
            sandbox_url: format!("http://127.0.0.1:{sandbox_port}"),
            metrics_port,
        })
    }

    fn script(&self) -> std::process::Command {
        let mut command = std::process::Command::new(self.root.join("scripts").join("up"));
        command.current_dir(&self.root).envs(&self.env);
        command
    }

    /// `scripts/up [--release]`: builds, migrates, creates the topics, starts the five
    /// processes and waits until each is ready. Its output goes to `<state>/up.log`.
    pub async fn up(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.state)?;
        let log_path = self.state.join("up.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = self.script();
        if self.release {
            command.arg("--release");
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let status = tokio::task::spawn_blocking(move || command.status())
            .await?
            .context("running scripts/up")?;
        if !status.success() {
            let tail = tail(&log_path, 40);
            bail!(
                "scripts/up failed ({status}); {}:\n{tail}",
                log_path.display()
            );
        }
        Ok(())
    }

    /// `scripts/up down`: stops the five processes.
    pub async fn down(&self) {
        let mut command = self.script();
        command
            .arg("down")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let _ = tokio::task::spawn_blocking(move || command.status()).await;
    }

    fn pid_file(&self, service: Service) -> PathBuf {
        self.state
            .join("pids")
            .join(format!("{}.pid", service.name()))
    }

    /// A service's log file (as `scripts/up` names it).
    pub fn log_path(&self, service: Service) -> PathBuf {
        self.state
            .join("logs")
            .join(format!("{}.log", service.name()))
    }

    fn pid(&self, service: Service) -> anyhow::Result<u32> {
        let file = self.pid_file(service);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds no pid", file.display()))
    }

    /// SIGKILLs the service and waits until it is gone; returns how to start it again.
    pub async fn kill(&self, service: Service) -> anyhow::Result<Launch> {
        let pid = self.pid(service)?;
        let launch = read_launch(service, pid)?;
        signal_kill(pid).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            if Instant::now() >= deadline {
                bail!("{service} (pid {pid}) still runs 10 s after SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(launch)
    }

    /// Starts a killed service as it was, under `scripts/up supervise` as `scripts/up`
    /// starts it (so a later crash is restarted too), appending to its log.
    pub fn restart(&self, launch: &Launch) -> anyhow::Result<()> {
        if launch.argv.is_empty() {
            bail!("{} had an empty command line", launch.service);
        }
        let pid_file = self.pid_file(launch.service);
        let _ = std::fs::remove_file(&pid_file);
        let mut command = std::process::Command::new(self.root.join("scripts").join("up"));
        command
            .arg("supervise")
            .arg(launch.service.name())
            .args(&launch.argv)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .envs(&self.env)
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, as under nohup: a Ctrl-C meant for the suite does not
            // reach it, and `scripts/up down` stops it.
            .process_group(0);
        command
            .spawn()
            .with_context(|| format!("restarting {}", launch.service))?;
        Ok(())
    }

    /// Crashes the supervisors restarted so far, over every service's log.
    pub fn crashes(&self) -> u64 {
        Service::ALL
            .iter()
            .filter_map(|service| std::fs::read_to_string(self.log_path(*service)).ok())
            .map(|log| {
                log.lines()
                    .filter(|line| {
                        line.starts_with("==== scripts/up:") && line.contains(" crashed ")
                    })
                    .count() as u64
            })
            .sum()
    }

    /// The URL whose 200 means the service is ready (workers: `/readyz`, which also asks
    /// whether they hold partitions when their group has lag).
    fn ready_url(&self, service: Service) -> String {
        match service {
            Service::Api => format!("{}/readyz", self.api_url),
            Service::PaymentProcessor => format!("http://127.0.0.1:{}/readyz", self.metrics_port),
            Service::CallbackProcessor => {
                format!(
                    "http://127.0.0.1:{}/readyz",
                    self.metrics_port.saturating_add(1)
                )
            }
            Service::CallbackDispatcher => {
                format!(
                    "http://127.0.0.1:{}/readyz",
                    self.metrics_port.saturating_add(2)
                )
            }
        }
    }

    /// Whether every service answers ready now; the first one that does not, with why.
    pub async fn not_ready(&self, client: &reqwest::Client) -> Option<String> {
        for service in Service::ALL {
            let url = self.ready_url(service);
            let answer = client
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            match answer {
                Ok(response) => {
                    let ok = response.status().is_success();
                    let body = response.text().await.unwrap_or_default();
                    let degraded = service == Service::Api && !body.contains("\"ok\"");
                    if !ok || degraded {
                        return Some(format!(
                            "{service}: {}",
                            body.chars().take(200).collect::<String>()
                        ));
                    }
                }
                Err(error) => return Some(format!("{service}: {error}")),
            }
        }
        None
    }

    /// Waits until every service is ready, or `limit` passes (then the last reason).
    pub async fn wait_ready(
        &self,
        client: &reqwest::Client,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let Some(why) = self.not_ready(client).await else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!("the topology is not ready after {limit:?}: {why}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn read_launch(service: Service, pid: u32) -> anyhow::Result<Launch> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let split = |bytes: Vec<u8>| -> Vec<OsString> {
        bytes
            .split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| OsString::from_vec(part.to_vec()))
            .collect()
    };
    let argv = split(
        std::fs::read(proc_dir.join("cmdline"))
            .with_context(|| format!("{service} (pid {pid}) is not running"))?,
    );
    let env = split(std::fs::read(proc_dir.join("environ"))?)
        .into_iter()
        .filter_map(|pair| {
            let bytes = pair.into_vec();
            let at = bytes.iter().position(|b| *b == b'=')?;
            let (key, value) = bytes.split_at(at);
            Some((
                OsString::from_vec(key.to_vec()),
                OsString::from_vec(value.get(1..).unwrap_or_default().to_vec()),
            ))
        })
        .collect();
    let cwd = std::fs::read_link(proc_dir.join("cwd"))?;
    Ok(Launch {
        service,
        argv,
        env,
        cwd,
    })
}

async fn signal_kill(pid: u32) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .await?;
    if !status.success() {
        bail!("kill -KILL {pid} failed ({status})");
    }
    Ok(())
}

/// Running (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The last `lines` lines of a file (for error messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
