//! The topology under test: started by `scripts/up` (the same script developers use) with
//! the chaos suite's own servers, ports and state directory; one service crashed with
//! SIGKILL and restarted with exactly the command line, environment and log it had.
//!
//! With `instances` > 1 (`TOPOLOGY_INSTANCES`), each service runs as that many instances;
//! [`Instance`] names one as `scripts/up` does (`api`, `api-2`, ...) and knows its port.
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

/// One process of a service: instance `number` (1-based) of `service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    pub service: Service,
    pub number: u16,
}

impl Instance {
    /// The first (or only) instance of `service`.
    pub fn first(service: Service) -> Self {
        Self { service, number: 1 }
    }

    /// The name `scripts/up` gives it (pid and log files, membership id): the service's
    /// name for the first, `<service>-<i>` for instance i ≥ 2.
    pub fn name(self) -> String {
        if self.number <= 1 {
            self.service.name().to_owned()
        } else {
            format!("{}-{}", self.service.name(), self.number)
        }
    }

    /// Its port by `scripts/up`'s scheme: the API's at `api_port + i - 1`, a worker's
    /// metrics at `metrics_port + 3(i - 1) + 0/1/2` (processor, callbacks, dispatcher).
    /// `None` when the sum leaves the port range.
    pub fn port(self, api_port: u16, metrics_port: u16) -> Option<u16> {
        let slot = self.number.checked_sub(1)?;
        let offset = |k: u16| slot.checked_mul(3)?.checked_add(k);
        match self.service {
            Service::Api => api_port.checked_add(slot),
            Service::PaymentProcessor => metrics_port.checked_add(offset(0)?),
            Service::CallbackProcessor => metrics_port.checked_add(offset(1)?),
            Service::CallbackDispatcher => metrics_port.checked_add(offset(2)?),
        }
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The ports of a topology of `instances` of each service, as one block of `4N + 1` free
/// ports from `base` (so no two ranges can meet): the APIs at `[base, base + N)`, the
/// sandbox at `base + N`, the workers' metrics at `[base + N + 1, base + 4N + 1)`.
/// Returns `(api_port, sandbox_port, metrics_port)`; `None` past the port range.
pub fn port_block(base: u16, instances: u16) -> Option<(u16, u16, u16)> {
    let sandbox = base.checked_add(instances)?;
    let metrics = sandbox.checked_add(1)?;
    metrics.checked_add(instances.checked_mul(3)?)?;
    Some((base, sandbox, metrics))
}

/// How a killed process was running, to start it again the same way.
#[derive(Debug, Clone)]
pub struct Launch {
    instance: Instance,
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
    /// Instances of each service (`TOPOLOGY_INSTANCES`).
    instances: u16,
    /// Every API instance's base URL, instance 1 first.
    pub api_urls: Vec<String>,
    pub sandbox_url: String,
    api_port: u16,
    metrics_port: u16,
}

impl Topology {
    /// The settings for a topology of `instances` of each service under `state` using the
    /// given servers, on one block of free ports ([`port_block`]); nothing starts.
    pub fn new(
        root: &Path,
        state: &Path,
        release: bool,
        instances: u16,
        servers: BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(instances >= 1, "--instances must be at least 1");
        let count = instances
            .checked_mul(4)
            .and_then(|n| n.checked_add(1))
            .context("--instances is too large")?;
        let base = super::infra::free_ports(count)?;
        let (api_port, sandbox_port, metrics_port) =
            port_block(base, instances).context("no room for the ports")?;
        let mut env = servers;
        env.insert("TOPOLOGY_STATE".into(), state.display().to_string());
        env.insert("TOPOLOGY_API_PORT".into(), api_port.to_string());
        env.insert("TOPOLOGY_SANDBOX_PORT".into(), sandbox_port.to_string());
        env.insert("TOPOLOGY_METRICS_PORT".into(), metrics_port.to_string());
        env.insert("TOPOLOGY_INSTANCES".into(), instances.to_string());
        let api_urls = (1..=instances)
            .map(|number| {
                Instance {
                    service: Service::Api,
                    number,
                }
                .port(api_port, metrics_port)
                .map(|port| format!("http://127.0.0.1:{port}"))
                .context("an API port past the port range")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            root: root.to_path_buf(),
            state: state.to_path_buf(),
            env,
            release,
            instances,
            api_urls,
            sandbox_url: format!("http://127.0.0.1:{sandbox_port}"),
            api_port,
            metrics_port,
        })
    }

    /// Instances of each service.
    pub fn instances(&self) -> u16 {
        self.instances
    }

    /// Every instance of every service, each service's in turn.
    pub fn all_instances(&self) -> Vec<Instance> {
        Service::ALL
            .iter()
            .flat_map(|service| {
                (1..=self.instances).map(|number| Instance {
                    service: *service,
                    number,
                })
            })
            .collect()
    }

    fn script(&self) -> std::process::Command {
        let mut command = std::process::Command::new(self.root.join("scripts").join("up"));
        command.current_dir(&self.root).envs(&self.env);
        command
    }

    /// `scripts/up [--release]`: builds, migrates, creates the topics, starts the
    /// processes (the sandbox and N of each service) and waits until each is ready. Its output goes to `<state>/up.log`.
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

    /// `scripts/up down`: stops every process it started.
    pub async fn down(&self) {
        let mut command = self.script();
        command
            .arg("down")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let _ = tokio::task::spawn_blocking(move || command.status()).await;
    }

    fn pid_file(&self, instance: Instance) -> PathBuf {
        self.state.join("pids").join(format!("{instance}.pid"))
    }

    /// An instance's log file (as `scripts/up` names it).
    pub fn log_path(&self, instance: Instance) -> PathBuf {
        self.state.join("logs").join(format!("{instance}.log"))
    }

    fn pid(&self, instance: Instance) -> anyhow::Result<u32> {
        let file = self.pid_file(instance);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds no pid", file.display()))
    }

    /// SIGKILLs the instance and waits until it is gone; returns how to start it again.
    pub async fn kill(&self, instance: Instance) -> anyhow::Result<Launch> {
        let pid = self.pid(instance)?;
        let launch = read_launch(instance, pid)?;
        signal_kill(pid).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            if Instant::now() >= deadline {
                bail!("{instance} (pid {pid}) still runs 10 s after SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(launch)
    }

    /// Starts a killed service as it was, under `scripts/up supervise` as `scripts/up`
    /// starts it (so a later crash is restarted too), appending to its log.
    pub fn restart(&self, launch: &Launch) -> anyhow::Result<()> {
        if launch.argv.is_empty() {
            bail!("{} had an empty command line", launch.instance);
        }
        let pid_file = self.pid_file(launch.instance);
        let _ = std::fs::remove_file(&pid_file);
        let mut command = std::process::Command::new(self.root.join("scripts").join("up"));
        command
            .arg("supervise")
            .arg(launch.instance.name())
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
            .with_context(|| format!("restarting {}", launch.instance))?;
        Ok(())
    }

    /// Crashes the supervisors restarted so far, over every instance's log.
    pub fn crashes(&self) -> u64 {
        self.all_instances()
            .into_iter()
            .filter_map(|instance| std::fs::read_to_string(self.log_path(instance)).ok())
            .map(|log| {
                log.lines()
                    .filter(|line| {
                        line.starts_with("==== scripts/up:") && line.contains(" crashed ")
                    })
                    .count() as u64
            })
            .sum()
    }

    /// The URL whose 200 means the instance is ready (workers: `/readyz`, which also asks
    /// whether they hold partitions when their group has lag).
    fn ready_url(&self, instance: Instance) -> anyhow::Result<String> {
        let port = instance
            .port(self.api_port, self.metrics_port)
            .with_context(|| format!("{instance}: a port past the port range"))?;
        Ok(format!("http://127.0.0.1:{port}/readyz"))
    }

    /// Whether every instance answers ready now; the first one that does not, with why.
    pub async fn not_ready(&self, client: &reqwest::Client) -> Option<String> {
        for instance in self.all_instances() {
            let url = match self.ready_url(instance) {
                Ok(url) => url,
                Err(error) => return Some(format!("{error:#}")),
            };
            let answer = client
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            match answer {
                Ok(response) => {
                    let ok = response.status().is_success();
                    let body = response.text().await.unwrap_or_default();
                    let degraded = instance.service == Service::Api && !body.contains("\"ok\"");
                    if !ok || degraded {
                        return Some(format!(
                            "{instance}: {}",
                            body.chars().take(200).collect::<String>()
                        ));
                    }
                }
                Err(error) => return Some(format!("{instance}: {error}")),
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

fn read_launch(instance: Instance, pid: u32) -> anyhow::Result<Launch> {
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
            .with_context(|| format!("{instance} (pid {pid}) is not running"))?,
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
        instance,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: Service, number: u16) -> Instance {
        Instance { service, number }
    }

    #[test]
    fn the_first_instance_keeps_the_plain_name_and_the_others_are_numbered() {
        assert_eq!(Instance::first(Service::Api).name(), "api");
        assert_eq!(instance(Service::Api, 2).name(), "api-2");
        assert_eq!(
            instance(Service::CallbackDispatcher, 3).name(),
            "callback-dispatcher-3"
        );
    }

    #[test]
    fn ports_follow_the_scripts_up_scheme() {
        // Instance 1 keeps today's ports: the API's, and metrics, +1, +2.
        let port = |s, n| instance(s, n).port(8080, 9101);
        assert_eq!(port(Service::Api, 1), Some(8080));
        assert_eq!(port(Service::PaymentProcessor, 1), Some(9101));
        assert_eq!(port(Service::CallbackProcessor, 1), Some(9102));
        assert_eq!(port(Service::CallbackDispatcher, 1), Some(9103));
        assert_eq!(port(Service::Api, 2), Some(8081));
        assert_eq!(port(Service::PaymentProcessor, 2), Some(9104));
        assert_eq!(port(Service::CallbackProcessor, 2), Some(9105));
        assert_eq!(port(Service::CallbackDispatcher, 2), Some(9106));
        assert_eq!(instance(Service::Api, 0).port(8080, 9101), None);
        assert_eq!(instance(Service::Api, 3).port(u16::MAX, 9101), None);
    }

    #[test]
    fn the_port_block_gives_every_instance_its_own_port() {
        for instances in 1..=4_u16 {
            let base = 40_000;
            let (api, sandbox, metrics) = port_block(base, instances).expect("room");
            let mut ports = vec![sandbox];
            for service in Service::ALL {
                for number in 1..=instances {
                    ports.push(instance(service, number).port(api, metrics).expect("port"));
                }
            }
            let count = ports.len();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), count, "{instances}: a port is shared");
            assert!(ports
                .iter()
                .all(|p| (base..base + 4 * instances + 1).contains(p)));
        }
        assert_eq!(port_block(u16::MAX - 3, 2), None);
    }
}
