//! The service binaries the harness runs: found next to the test executable's profile
//! directory (`target/<profile>/`) and brought up to date once per test process with
//! `cargo build --bins -p …`, so `cargo nextest run -p paygate-e2e` works on its own.
//!
//! The package list is the one `scripts/up` builds, so both share the same artifacts (the
//! same feature resolution) instead of rebuilding each other's. `PAYGATE_E2E_SKIP_BUILD=1`
//! skips the build and uses whatever binaries are there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use tokio::sync::OnceCell;

/// Every package with a binary the topology runs (`paygate-cli` for `paygate` itself).
/// Keep in step with `scripts/up`.
pub const PACKAGES: [&str; 6] = [
    "paygate-api",
    "paygate-payment-processor",
    "paygate-callback-processor",
    "paygate-callback-dispatcher",
    "paygate-sandbox",
    "paygate-cli",
];

/// Set to `1` to use the binaries already built, without running cargo.
pub const SKIP_BUILD_VAR: &str = "PAYGATE_E2E_SKIP_BUILD";

/// Where the binaries are, built for the test's own profile.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `target/<profile>/`.
    pub dir: PathBuf,
    /// `target/`.
    pub target_dir: PathBuf,
    /// The cargo profile (`dev` for `target/debug`).
    pub profile: String,
}

impl Binaries {
    /// The path of binary `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    }
}

static BUILT: OnceCell<Binaries> = OnceCell::const_new();

/// The binaries, built (once per process) for the profile of the running test executable.
pub async fn ensure_built() -> anyhow::Result<&'static Binaries> {
    BUILT
        .get_or_try_init(|| async {
            let binaries = locate()?;
            let skip = std::env::var(SKIP_BUILD_VAR).is_ok_and(|v| v == "1");
            if !skip {
                let cargo_binaries = binaries.clone();
                tokio::task::spawn_blocking(move || build(&cargo_binaries))
                    .await
                    .context("the cargo build task")??;
            }
            for package in PACKAGES {
                let path = binaries.path(binary_of(package));
                if !path.is_file() {
                    bail!(
                        "{} is missing{}",
                        path.display(),
                        if skip {
                            format!(" (unset {SKIP_BUILD_VAR} to have the harness build it)")
                        } else {
                            String::new()
                        }
                    );
                }
            }
            Ok(binaries)
        })
        .await
}

/// The binary a package builds.
fn binary_of(package: &str) -> &str {
    match package {
        "paygate-cli" => "paygate",
        other => other,
    }
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `target/<profile>/deps/<test>` → `target/<profile>/` and the profile's name.
fn locate() -> anyhow::Result<Binaries> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let profile_dir_name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("cannot tell the cargo profile from {}", dir.display()))?
        .to_owned();
    let target_dir = dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", dir.display()))?
        .to_path_buf();
    let profile = match profile_dir_name.as_str() {
        "debug" => "dev".to_owned(),
        other => other.to_owned(),
    };
    Ok(Binaries {
        dir,
        target_dir,
        profile,
    })
}

/// `cargo build --bins -p … --profile <profile> --target-dir <target>`, its output kept for
/// the error message.
fn build(binaries: &Binaries) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(&cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--bins", "--profile", &binaries.profile])
        .arg("--target-dir")
        .arg(&binaries.target_dir);
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    // Cargo sets these for the test process only; ring's build script reruns when they
    // change, which would rebuild everything above ring on each test run and again outside.
    let per_crate = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_PRIMARY_",
    ];
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if per_crate.iter().any(|prefix| name.starts_with(prefix)) {
            command.env_remove(&var);
        }
    }
    let shown = format!(
        "{} build --bins --profile {} -p {}",
        Path::new(&cargo).display(),
        binaries.profile,
        PACKAGES.join(" -p ")
    );
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("running `{shown}` (is cargo on PATH? set CARGO)"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "`{shown}` failed ({}):\n{}",
            output.status,
            crate::process::last_lines(&stderr, 60)
        );
    }
    eprintln!(
        "paygate-e2e: binaries up to date in {} ({:.1} s)",
        binaries.dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
