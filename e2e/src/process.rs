//! One service as an OS process: its command line and environment, its output appended to
//! a log file, started, probed until ready, stopped (gracefully or with SIGKILL) and
//! restarted with the same settings.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The five processes of the topology, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Sandbox,
    Api,
    PaymentProcessor,
    CallbackProcessor,
    CallbackDispatcher,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Sandbox,
        Service::Api,
        Service::PaymentProcessor,
        Service::CallbackProcessor,
        Service::CallbackDispatcher,
    ];

    /// The binary (and package) name.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Sandbox => "paygate-sandbox",
            Service::Api => "paygate-api",
            Service::PaymentProcessor => "paygate-payment-processor",
            Service::CallbackProcessor => "paygate-callback-processor",
            Service::CallbackDispatcher => "paygate-callback-dispatcher",
        }
    }

    /// A short name, used for log files.
    pub fn name(self) -> &'static str {
        match self {
            Service::Sandbox => "sandbox",
            Service::Api => "api",
            Service::PaymentProcessor => "payment-processor",
            Service::CallbackProcessor => "callback-processor",
            Service::CallbackDispatcher => "callback-dispatcher",
        }
    }

    /// The signal that asks it to stop. The sandbox binary only listens for Ctrl-C.
    fn stop_signal(self) -> &'static str {
        match self {
            Service::Sandbox => "INT",
            _ => "TERM",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a service is started (kept to restart it identically).
#[derive(Debug, Clone)]
pub struct Launch {
    pub service: Service,
    pub program: PathBuf,
    pub env: BTreeMap<String, String>,
    pub log: PathBuf,
}

/// A running (or exited) service process.
pub struct ServiceProcess {
    pub launch: Launch,
    child: Child,
    pid: Option<u32>,
    exited: Option<ExitStatus>,
}

impl ServiceProcess {
    /// Starts it, its stdout and stderr appended to its log file (SIGKILLed if dropped).
    pub fn spawn(launch: Launch) -> anyhow::Result<Self> {
        let service = launch.service;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .with_context(|| format!("opening {}", launch.log.display()))?;
        let _ = writeln!(
            log,
            "==== paygate-e2e: starting {} ({})",
            service.binary(),
            launch.program.display()
        );
        let stderr = log
            .try_clone()
            .with_context(|| format!("opening {}", launch.log.display()))?;
        let mut command = Command::new(&launch.program);
        // Only what the harness sets: nothing leaks in from the test's own environment.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("PAYGATE_") || key.starts_with("SANDBOX_") {
                command.env_remove(key.as_ref());
            }
        }
        // An error without a page of anyhow backtrace (panics keep theirs).
        command.env("RUST_LIB_BACKTRACE", "0");
        command
            .envs(&launch.env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| {
            format!(
                "starting {} ({}); was it built?",
                service.binary(),
                launch.program.display()
            )
        })?;
        let pid = child.id();
        Ok(Self {
            launch,
            child,
            pid,
            exited: None,
        })
    }

    pub fn service(&self) -> Service {
        self.launch.service
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }

    /// The last `n` lines of its log (every run of it, appended).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.launch.log, n)
    }

    /// Polls `probe` until it answers `true`; fails early, with the log's tail, if the
    /// process exits, or when `within` passes.
    pub async fn wait_ready<F, Fut>(&mut self, within: Duration, mut probe: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(anyhow!(
                    "{} exited during start-up ({status}); the last lines of {}:\n{}",
                    self.service(),
                    self.launch.log.display(),
                    self.log_tail(40)
                ));
            }
            if probe().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "{} was not ready within {} s; the last lines of {}:\n{}",
                    self.service(),
                    within.as_secs(),
                    self.launch.log.display(),
                    self.log_tail(40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) with kill(1).
    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid
            .ok_or_else(|| anyhow!("{} has no pid (already reaped)", self.service()))?;
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .context("running kill")?;
        if !status.success() && self.exited.is_none() {
            return Err(anyhow!(
                "kill -s {signal} {pid} ({}) failed",
                self.service()
            ));
        }
        Ok(())
    }

    /// Asks it to stop (SIGTERM; SIGINT for the sandbox) and waits up to `grace`, then
    /// SIGKILLs it. `Ok(status)` when it stopped in time on its own.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Ok(status);
        }
        self.signal(self.service().stop_signal())?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exited = Some(status);
                self.note(&format!("stopped ({status})"));
                Ok(status)
            }
            Ok(Err(error)) => Err(anyhow!("waiting for {}: {error}", self.service())),
            Err(_) => {
                let _ = self.kill().await;
                Err(anyhow!(
                    "{} did not stop within {} s of SIG{}; killed. The last lines of {}:\n{}",
                    self.service(),
                    grace.as_secs(),
                    self.service().stop_signal(),
                    self.launch.log.display(),
                    self.log_tail(20)
                ))
            }
        }
    }

    /// SIGKILL, as a crash would, and reap it.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Ok(status);
        }
        self.child
            .start_kill()
            .with_context(|| format!("SIGKILL {}", self.service()))?;
        let status = self
            .child
            .wait()
            .await
            .with_context(|| format!("waiting for {}", self.service()))?;
        self.exited = Some(status);
        self.note("killed with SIGKILL");
        Ok(status)
    }

    /// A harness line in the log, so a reader sees where a run ended.
    fn note(&self, what: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.launch.log) {
            let _ = writeln!(log, "==== paygate-e2e: {} {what}", self.service().binary());
        }
    }
}

/// The last `n` lines of a file (empty if it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), n),
        Err(error) => format!("({} unreadable: {error})", path.display()),
    }
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}
