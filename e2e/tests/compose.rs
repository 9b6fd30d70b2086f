//! `docker-compose.yml` checked against the code, since Docker cannot run where paygate is
//! tested.
//!
//! [`check`] reads the compose file, the `Dockerfile`, the configuration file the compose file
//! mounts and the workspace's `Cargo.toml` files, and lists every way they disagree with the
//! code:
//!
//! - each paygate container runs a workspace binary that the Dockerfile builds (`--release`)
//!   and copies into the runtime stage; `paygate` jobs run a documented subcommand; the image
//!   builds on a Rust no older than the workspace's `rust-version`, with the Debian packages
//!   rdkafka's enabled features need, and runs on the same Debian release as a non-root user;
//!   `.dockerignore` leaves out `target/` and `.git` but nothing the build needs;
//! - each `PAYGATE_*` variable is accepted by `Config::load_from` (with the mounted TOML file)
//!   and lands on the key it names with its value (nothing silently ignored), each `SANDBOX_*`
//!   variable is the `env` of a `SandboxArgs` argument, and nothing else is set but `RUST_LOG`;
//! - each container port in `ports`, `expose` and healthchecks is one the container listens
//!   on (the API's `api.bind`, the processors' `telemetry.metrics_bind`, the sandbox's
//!   `--listen`, the images' own ports), on all interfaces;
//! - each address in the configuration (database, Redis, Kafka brokers, gateway `base_url`s,
//!   the sandbox's callback URL) names a compose service of the right kind at a port it
//!   listens on (for Kafka: one it advertises under that name), with matching credentials;
//! - `depends_on` names existing services, `service_healthy` only ones with a healthcheck,
//!   `service_completed_successfully` only one-off jobs, and each service waits (healthy) for
//!   every service its configuration talks to, and for the migration job when it does not
//!   migrate itself; every long-running paygate service has a healthcheck;
//! - the webhook dispatcher keeps the SSRF guard's safe defaults.
//!
//! The tests: the real files have no problems, and mutated copies each get reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::CommandFactory;
use paygate_core::config::Config;
use paygate_gateways::GatewayRegistry;
use paygate_sandbox::SandboxArgs;
use serde_yaml_ng::Value as Yaml;

const COMPOSE_FILE: &str = "docker-compose.yml";
const DOCKERFILE: &str = "Dockerfile";
/// Variables every binary may be given besides its own: the `tracing` filter.
const COMMON_VARS: &[&str] = &["RUST_LOG", "RUST_BACKTRACE"];

// ---- inputs ------------------------------------------------------------------------------

/// What [`check`] reads: the compose file and Dockerfile as text, the rest from `root`, except
/// files replaced in `replaced` (relative path → text), so tests can check mutated copies.
#[derive(Clone)]
struct Inputs {
    root: PathBuf,
    compose: String,
    dockerfile: String,
    replaced: BTreeMap<PathBuf, String>,
}

impl Inputs {
    fn real() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("e2e/ has a parent")?
            .to_path_buf();
        let read = |name: &str| {
            std::fs::read_to_string(root.join(name)).with_context(|| format!("reading {name}"))
        };
        Ok(Self {
            compose: read(COMPOSE_FILE)?,
            dockerfile: read(DOCKERFILE)?,
            root,
            replaced: BTreeMap::new(),
        })
    }

    fn read(&self, rel: &Path) -> Result<String> {
        match self.replaced.get(rel) {
            Some(text) => Ok(text.clone()),
            None => std::fs::read_to_string(self.root.join(rel))
                .with_context(|| format!("reading {}", rel.display())),
        }
    }

    fn is_file(&self, rel: &Path) -> bool {
        self.replaced.contains_key(rel) || self.root.join(rel).is_file()
    }

    /// A real path with the contents of `rel` (the repository's file, or a temporary copy of
    /// its replacement), for `Config::load_from`.
    fn path_of(&self, rel: &Path, scratch: &Scratch) -> Result<PathBuf> {
        match self.replaced.get(rel) {
            None => Ok(self.root.join(rel)),
            Some(text) => {
                let path = scratch.dir.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, text)?;
                Ok(path)
            }
        }
    }
}

/// A temporary directory, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("paygate-compose-{}", uuid::Uuid::new_v4()));
        Self { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- the compose file --------------------------------------------------------------------

#[derive(Debug, Default)]
struct Service {
    name: String,
    image: Option<String>,
    /// `(context, dockerfile)` when built.
    build: Option<(String, String)>,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    /// Container ports of `ports` (with the entry as written).
    ports: Vec<(u16, String)>,
    expose: Vec<u16>,
    /// The healthcheck's command as words; `None` when absent or disabled.
    healthcheck: Option<Vec<String>>,
    /// `(service, condition)`.
    depends_on: Vec<(String, String)>,
    /// Bind mounts and volumes: `(source, target)`.
    volumes: Vec<(String, String)>,
    restart: Option<String>,
}

fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Null => Some(String::new()),
        _ => None,
    }
}

fn words(value: &Yaml) -> Result<Vec<String>> {
    match value {
        Yaml::String(s) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Yaml::Sequence(items) => items
            .iter()
            .map(|v| scalar(v).ok_or_else(|| anyhow!("not a string: {v:?}")))
            .collect(),
        other => bail!("not a command: {other:?}"),
    }
}

fn parse_compose(text: &str) -> Result<BTreeMap<String, Service>> {
    let mut root: Yaml = serde_yaml_ng::from_str(text).context("not YAML")?;
    root.apply_merge().context("YAML merge keys")?;
    let services = root
        .get("services")
        .and_then(Yaml::as_mapping)
        .context("no `services` mapping")?;
    let mut out = BTreeMap::new();
    for (name, spec) in services {
        let name = name
            .as_str()
            .context("a service name is not a string")?
            .to_owned();
        let service = parse_service(&name, spec).with_context(|| format!("service {name}"))?;
        out.insert(name, service);
    }
    Ok(out)
}

fn parse_service(name: &str, spec: &Yaml) -> Result<Service> {
    let mut service = Service {
        name: name.to_owned(),
        image: spec.get("image").and_then(scalar),
        restart: spec.get("restart").and_then(scalar),
        ..Service::default()
    };
    match spec.get("build") {
        None => {}
        Some(Yaml::String(context)) => service.build = Some((context.clone(), DOCKERFILE.into())),
        Some(build) => {
            let context = build
                .get("context")
                .and_then(scalar)
                .unwrap_or_else(|| ".".into());
            let dockerfile = build
                .get("dockerfile")
                .and_then(scalar)
                .unwrap_or_else(|| DOCKERFILE.into());
            service.build = Some((context, dockerfile));
        }
    }
    if let Some(command) = spec.get("command") {
        service.command = words(command)?;
    }
    match spec.get("environment") {
        None => {}
        Some(Yaml::Mapping(map)) => {
            for (k, v) in map {
                let k = k.as_str().context("environment key")?.to_owned();
                let v = scalar(v).with_context(|| format!("environment {k}"))?;
                service.env.insert(k, v);
            }
        }
        Some(Yaml::Sequence(items)) => {
            for item in items {
                let item = item.as_str().context("environment entry")?;
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                service.env.insert(k.to_owned(), v.to_owned());
            }
        }
        Some(other) => bail!("environment is neither a mapping nor a list: {other:?}"),
    }
    for entry in spec
        .get("ports")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        let (port, written) = match entry {
            Yaml::Mapping(_) => {
                let target = entry
                    .get("target")
                    .and_then(scalar)
                    .context("port target")?;
                (target.clone(), format!("target: {target}"))
            }
            other => {
                let written = scalar(other).context("port entry")?;
                let container = written.split('/').next().unwrap_or_default();
                let container = container.rsplit(':').next().unwrap_or_default().to_owned();
                (container, written)
            }
        };
        let port = port
            .parse::<u16>()
            .with_context(|| format!("ports entry {written:?}: container port is not one port"))?;
        service.ports.push((port, written));
    }
    for entry in spec
        .get("expose")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        let written = scalar(entry).context("expose entry")?;
        let port = written.split('/').next().unwrap_or_default();
        service.expose.push(
            port.parse()
                .with_context(|| format!("expose {written:?}"))?,
        );
    }
    if let Some(check) = spec.get("healthcheck") {
        let disabled = check
            .get("disable")
            .and_then(Yaml::as_bool)
            .unwrap_or(false);
        if let (false, Some(test)) = (disabled, check.get("test")) {
            let test = words(test)?;
            service.healthcheck = match test.first().map(String::as_str) {
                Some("NONE") | None => None,
                Some("CMD") => Some(test[1..].to_vec()),
                Some("CMD-SHELL") => Some(
                    test[1..]
                        .join(" ")
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                ),
                Some(_) => Some(test),
            };
        }
    }
    match spec.get("depends_on") {
        None => {}
        Some(Yaml::Sequence(items)) => {
            for item in items {
                let target = item.as_str().context("depends_on entry")?.to_owned();
                service.depends_on.push((target, "service_started".into()));
            }
        }
        Some(Yaml::Mapping(map)) => {
            for (target, how) in map {
                let target = target.as_str().context("depends_on key")?.to_owned();
                let condition = how
                    .get("condition")
                    .and_then(scalar)
                    .unwrap_or_else(|| "service_started".into());
                service.depends_on.push((target, condition));
            }
        }
        Some(other) => bail!("depends_on is neither a mapping nor a list: {other:?}"),
    }
    for entry in spec
        .get("volumes")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        match entry {
            Yaml::Mapping(_) => {
                let source = entry.get("source").and_then(scalar).unwrap_or_default();
                let target = entry
                    .get("target")
                    .and_then(scalar)
                    .context("volume target")?;
                service.volumes.push((source, target));
            }
            other => {
                let written = scalar(other).context("volume entry")?;
                let mut parts = written.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().context("volume without a target")?.to_owned();
                service.volumes.push((source, target));
            }
        }
    }
    Ok(service)
}

// ---- the workspace and the Dockerfile ----------------------------------------------------

/// Binary name → package, from each workspace member's Cargo.toml: explicit `[[bin]]`
/// targets, the package's own binary when `src/main.rs` exists (and no `[[bin]]` claims it),
/// and `src/bin/*.rs`.
fn workspace_binaries(inputs: &Inputs) -> Result<BTreeMap<String, String>> {
    let manifest: toml::Value = toml::from_str(&inputs.read(Path::new("Cargo.toml"))?)?;
    let members = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array)
        .context("[workspace] members")?;
    let mut bins = BTreeMap::new();
    for member in members {
        let member = member.as_str().context("member path")?;
        let dir = Path::new(member);
        let crate_manifest: toml::Value = toml::from_str(&inputs.read(&dir.join("Cargo.toml"))?)
            .with_context(|| format!("{member}/Cargo.toml"))?;
        let package = crate_manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{member}: package.name"))?
            .to_owned();
        let explicit = crate_manifest
            .get("bin")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut main_claimed = false;
        for bin in &explicit {
            let name = bin
                .get("name")
                .and_then(toml::Value::as_str)
                .with_context(|| format!("{member}: [[bin]] without a name"))?;
            let path = bin.get("path").and_then(toml::Value::as_str);
            main_claimed |= path == Some("src/main.rs") || (path.is_none() && name == package);
            bins.insert(name.to_owned(), package.clone());
        }
        if !main_claimed && inputs.is_file(&dir.join("src/main.rs")) {
            bins.insert(package.clone(), package.clone());
        }
        if let Ok(entries) = std::fs::read_dir(inputs.root.join(dir).join("src/bin")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "rs") {
                    if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                        bins.insert(stem.to_owned(), package.clone());
                    }
                }
            }
        }
    }
    Ok(bins)
}

/// The `[workspace.package] rust-version` (the MSRV) as (major, minor).
fn workspace_msrv(inputs: &Inputs) -> Result<(u32, u32)> {
    let manifest: toml::Value = toml::from_str(&inputs.read(Path::new("Cargo.toml"))?)?;
    let version = manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("rust-version"))
        .and_then(toml::Value::as_str)
        .context("[workspace.package] rust-version")?;
    major_minor(version).context("rust-version is not major.minor")
}

fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `paygate` subcommands the CLI documents (cli/src/main.rs, its `//! - \`paygate …\``
/// list), as word lists without their flags.
fn cli_commands(inputs: &Inputs) -> Result<Vec<Vec<String>>> {
    let main = inputs.read(Path::new("cli/src/main.rs"))?;
    Ok(main
        .lines()
        .filter_map(|line| line.strip_prefix("//! - `"))
        .filter_map(|rest| rest.split('`').next())
        .map(|command| {
            command
                .split_whitespace()
                .take_while(|w| !w.starts_with('-') && *w != "…")
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|words| words.first().map(String::as_str) == Some("paygate"))
        .collect())
}

struct Stage {
    from: String,
    name: Option<String>,
    /// `(INSTRUCTION, arguments)`, continuation lines joined.
    instructions: Vec<(String, String)>,
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        logical.push(current);
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                _ => None,
            };
            stages.push(Stage {
                from: words.first().copied().unwrap_or_default().to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instruction, args));
        }
    }
    stages
}

/// What the Dockerfile puts in the final image.
struct Image {
    /// Binaries built by a `cargo build --release` with `--bin <name>` in some stage.
    built: BTreeSet<String>,
    /// Binaries `COPY --from=<stage>`'d onto the PATH of the final stage.
    copied: BTreeSet<String>,
    /// Words of the final stage's `apt-get install` lines (the programs the image has).
    installed: BTreeSet<String>,
}

/// librdkafka is compiled by rdkafka-sys: the Debian packages its enabled features need
/// (features of `[workspace.dependencies] rdkafka`, plus rdkafka-sys's default `libz`).
fn check_native_build_deps(inputs: &Inputs, builder: &Stage, problems: &mut Problems) {
    let manifest = inputs
        .read(Path::new("Cargo.toml"))
        .ok()
        .and_then(|text| toml::from_str::<toml::Value>(&text).ok());
    let rdkafka = manifest
        .as_ref()
        .and_then(|m| m.get("workspace"))
        .and_then(|w| w.get("dependencies"))
        .and_then(|d| d.get("rdkafka"));
    let mut features: BTreeSet<String> = rdkafka
        .and_then(|r| r.get("features"))
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    let defaults = rdkafka
        .and_then(|r| r.get("default-features"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(true);
    if defaults {
        features.insert("libz".into());
    }
    let installed: BTreeSet<&str> = builder
        .instructions
        .iter()
        .filter(|(i, args)| i == "RUN" && args.contains("apt-get install"))
        .flat_map(|(_, args)| args.split_whitespace())
        .collect();
    let needs: &[(&str, &str)] = &[
        ("cmake-build", "cmake"),
        ("cmake_build", "cmake"),
        ("libz", "zlib1g-dev"),
        ("ssl", "libssl-dev"),
        ("gssapi", "libsasl2-dev"),
        ("sasl", "libsasl2-dev"),
        ("zstd-pkg-config", "libzstd-dev"),
        ("curl", "libcurl4-openssl-dev"),
    ];
    for (feature, package) in needs {
        if features.contains(*feature) && !installed.contains(package) {
            problems.add(format!(
                "{DOCKERFILE}: rdkafka feature {feature} needs {package} in the builder stage"
            ));
        }
    }
}

/// The build context leaves out `target/` and `.git`, and keeps what the build needs: the
/// workspace manifest and lock file, every member and the embedded migrations.
fn check_dockerignore(inputs: &Inputs, problems: &mut Problems) -> Result<()> {
    let Ok(text) = inputs.read(Path::new(".dockerignore")) else {
        problems.add(".dockerignore is missing: the build context would send target/".into());
        return Ok(());
    };
    let patterns: BTreeSet<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("./").trim_end_matches('/'))
        .collect();
    for needed in ["target", ".git"] {
        if !patterns.contains(needed) {
            problems.add(format!(".dockerignore does not exclude {needed}/"));
        }
    }
    let manifest: toml::Value = toml::from_str(&inputs.read(Path::new("Cargo.toml"))?)?;
    let members = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array)
        .context("[workspace] members")?;
    let kept = members.iter().filter_map(toml::Value::as_str).chain([
        "Cargo.toml",
        "Cargo.lock",
        "migrations",
        "*",
        "**",
    ]);
    for path in kept {
        if patterns.contains(path) {
            problems.add(format!(
                ".dockerignore excludes {path}, which the build needs"
            ));
        }
    }
    Ok(())
}

fn check_dockerfile(
    inputs: &Inputs,
    bins: &BTreeMap<String, String>,
    problems: &mut Problems,
) -> Image {
    let stages = parse_dockerfile(&inputs.dockerfile);
    let mut image = Image {
        built: BTreeSet::new(),
        copied: BTreeSet::new(),
        installed: BTreeSet::new(),
    };
    let Some(runtime) = stages.last() else {
        problems.add(format!("{DOCKERFILE}: no FROM"));
        return image;
    };
    let builder = stages.iter().find(|s| s.from.starts_with("rust:"));
    let codename = |from: &str| {
        ["bookworm", "trixie", "bullseye"]
            .into_iter()
            .find(|c| from.contains(c))
    };
    match builder {
        None => problems.add(format!(
            "{DOCKERFILE}: no builder stage on the official rust image (FROM rust:<version>-<debian>)"
        )),
        Some(builder) => {
            let tag = builder.from.trim_start_matches("rust:");
            match (major_minor(tag.split('-').next().unwrap_or_default()), workspace_msrv(inputs)) {
                (Some(have), Ok(need)) if have < need => problems.add(format!(
                    "{DOCKERFILE}: {} is older than the workspace's rust-version {}.{}",
                    builder.from, need.0, need.1
                )),
                (None, _) => problems.add(format!(
                    "{DOCKERFILE}: pin the builder's Rust version ({} has none)",
                    builder.from
                )),
                (_, Err(e)) => problems.add(format!("Cargo.toml: {e:#}")),
                _ => {}
            }
            if codename(&builder.from).is_none() || codename(&builder.from) != codename(&runtime.from)
            {
                problems.add(format!(
                    "{DOCKERFILE}: builder {} and runtime {} must be the same Debian release (glibc)",
                    builder.from, runtime.from
                ));
            }
        }
    }
    if !runtime.from.starts_with("debian:") || !runtime.from.ends_with("-slim") {
        problems.add(format!(
            "{DOCKERFILE}: the runtime stage should be debian:<release>-slim, not {}",
            runtime.from
        ));
    }
    for stage in &stages {
        for (instruction, args) in &stage.instructions {
            if instruction != "RUN" || !args.contains("cargo build") {
                continue;
            }
            let words: Vec<&str> = args.split_whitespace().collect();
            let release = words.contains(&"--release");
            for pair in words.windows(2) {
                if pair[0] == "--bin" {
                    let bin = pair[1].to_owned();
                    if !bins.contains_key(&bin) {
                        problems.add(format!(
                            "{DOCKERFILE}: builds --bin {bin}, not a workspace binary"
                        ));
                    }
                    if !release {
                        problems.add(format!("{DOCKERFILE}: builds {bin} without --release"));
                    }
                    image.built.insert(bin);
                }
            }
        }
    }
    if let Some(builder) = builder {
        check_native_build_deps(inputs, builder, problems);
    }
    let stage_names: BTreeSet<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
    let mut user = None;
    for (instruction, args) in &runtime.instructions {
        match instruction.as_str() {
            "COPY" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                let from = words
                    .iter()
                    .find_map(|w| w.strip_prefix("--from="))
                    .filter(|f| stage_names.contains(f));
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                if let (Some(_), Some((dest, sources))) = (from, paths.split_last()) {
                    if dest.starts_with("/usr/local/bin") || dest.starts_with("/usr/bin") {
                        for source in sources {
                            if let Some(file) = source.rsplit('/').next() {
                                image.copied.insert(file.to_owned());
                            }
                        }
                    }
                }
            }
            "RUN" if args.contains("apt-get install") => {
                image
                    .installed
                    .extend(args.split_whitespace().map(str::to_owned));
            }
            "USER" => user = Some(args.clone()),
            _ => {}
        }
    }
    match user
        .as_deref()
        .map(|u| u.split(':').next().unwrap_or_default())
    {
        None => problems.add(format!(
            "{DOCKERFILE}: the runtime stage runs as root (no USER)"
        )),
        Some("root" | "0") => problems.add(format!("{DOCKERFILE}: the runtime stage runs as root")),
        Some(_) => {}
    }
    image
}

// ---- addresses ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Url {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
}

impl Url {
    fn parse(raw: &str) -> Option<Self> {
        let (scheme, rest) = raw.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((name, pass)) => (Some(name.to_owned()), Some(pass.to_owned())),
                None => (Some(u.to_owned()), None),
            },
        };
        let (host, port) = split_host_port(hostport)?;
        Some(Self {
            scheme: scheme.to_owned(),
            user,
            password,
            host,
            port,
            path: path.split(['?', '#']).next().unwrap_or_default().to_owned(),
        })
    }

    fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }
}

/// `host[:port]` (IPv6 in brackets).
fn split_host_port(raw: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None => None,
        };
        return Some((host.to_owned(), port));
    }
    match raw.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), Some(port.parse().ok()?))),
        None => Some((raw.to_owned(), None)),
    }
}

/// A listen address: `host:port`.
fn parse_bind(raw: &str) -> Option<(String, u16)> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = split_host_port(raw)?;
    Some((host, port?))
}

fn is_all_interfaces(host: &str) -> bool {
    matches!(host, "0.0.0.0" | "::" | "[::]")
}

fn is_local(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

// ---- what each binary is -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Infra {
    Postgres,
    Redis,
    Kafka,
}

/// The paygate binaries the checker knows: what they read and serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    /// Reads `Config`, serves `api.bind` (with `/readyz` and its own `/metrics`).
    Api,
    /// Reads `Config`, serves Prometheus at `telemetry.metrics_bind`.
    Exporter,
    /// `paygate-sandbox`: reads `SandboxArgs`.
    Sandbox,
    /// `paygate`: reads `Config`, one-off commands.
    Cli,
}

fn binary_kind(binary: &str) -> Option<Binary> {
    match binary {
        "paygate-api" => Some(Binary::Api),
        "paygate-payment-processor"
        | "paygate-callback-processor"
        | "paygate-callback-dispatcher" => Some(Binary::Exporter),
        "paygate-sandbox" => Some(Binary::Sandbox),
        "paygate" => Some(Binary::Cli),
        _ => None,
    }
}

/// Which parts of its configuration a program connects to (read off each crate's `build`).
#[derive(Debug, Default, Clone, Copy)]
struct Uses {
    database: bool,
    redis: bool,
    kafka: bool,
    /// Builds a `GatewayRegistry` from `[gateways.*]` (signs or verifies with their secrets).
    registry: bool,
    /// Calls the gateways' `base_url`s.
    gateways: bool,
}

fn uses(command: &[String]) -> Uses {
    let binary = command.first().map(String::as_str).unwrap_or_default();
    let sub = command.get(1).map(String::as_str).unwrap_or_default();
    let (database, redis, kafka, registry, gateways) = match (binary, sub) {
        ("paygate-api", _) => (true, true, true, true, false),
        ("paygate-payment-processor", _) => (true, true, true, true, true),
        ("paygate-callback-processor", _) => (true, true, true, true, false),
        ("paygate-callback-dispatcher", _) => (true, false, true, false, false),
        ("paygate", "migrate" | "merchants") => (true, false, false, false, false),
        ("paygate", "topics") => (false, false, true, false, false),
        _ => (false, false, false, false, false),
    };
    Uses {
        database,
        redis,
        kafka,
        registry,
        gateways,
    }
}

/// What a paygate container was found to be configured with.
enum Loaded {
    Config(Box<Config>),
    Sandbox(Box<SandboxArgs>),
    /// Not loadable (already reported) or not a paygate binary.
    Nothing,
}

#[derive(Default)]
struct Problems(BTreeSet<String>);

impl Problems {
    fn add(&mut self, problem: String) {
        self.0.insert(problem);
    }
}

// ---- the checker -------------------------------------------------------------------------

/// Every way the compose file, the Dockerfile and the mounted configuration disagree with
/// the code; empty when they agree.
fn check(inputs: &Inputs) -> Vec<String> {
    let mut problems = Problems::default();
    let scratch = Scratch::new();
    if let Err(error) = check_into(inputs, &scratch, &mut problems) {
        problems.add(format!("cannot check: {error:#}"));
    }
    problems.0.into_iter().collect()
}

fn check_into(inputs: &Inputs, scratch: &Scratch, problems: &mut Problems) -> Result<()> {
    let services = parse_compose(&inputs.compose).context(COMPOSE_FILE)?;
    let bins = workspace_binaries(inputs)?;
    let image = check_dockerfile(inputs, &bins, problems);
    check_dockerignore(inputs, problems)?;
    let cli = cli_commands(inputs)?;

    // What each service is and how it is configured.
    let mut infra: BTreeMap<&str, Infra> = BTreeMap::new();
    let mut loaded: BTreeMap<&str, Loaded> = BTreeMap::new();
    for (name, service) in &services {
        let at = |what: &str| format!("service {name}: {what}");
        if service.build.is_some() {
            loaded.insert(
                name,
                load_paygate(inputs, scratch, service, &bins, &image, &cli, problems),
            );
            continue;
        }
        let image_name = service.image.clone().unwrap_or_default();
        let repo = image_name.split(':').next().unwrap_or_default();
        let kind = match repo
            .trim_start_matches("docker.io/")
            .trim_start_matches("library/")
        {
            "postgres" => Infra::Postgres,
            "redis" => Infra::Redis,
            "apache/kafka" | "apache/kafka-native" => Infra::Kafka,
            _ => {
                problems.add(at(&format!(
                    "image {image_name:?} is neither built from {DOCKERFILE} nor one the checker knows (postgres, redis, apache/kafka)"
                )));
                continue;
            }
        };
        if !image_name.contains(':') || image_name.ends_with(":latest") {
            problems.add(at(&format!("pin the image's version ({image_name})")));
        }
        infra.insert(name, kind);
    }

    // The ports each container listens on, by service.
    let mut listens: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    for (name, kind) in &infra {
        let service = &services[*name];
        let ports = match kind {
            Infra::Postgres => BTreeSet::from([5432]),
            Infra::Redis => {
                let port = service
                    .command
                    .windows(2)
                    .find(|w| w[0] == "--port")
                    .and_then(|w| w[1].parse().ok())
                    .unwrap_or(6379);
                BTreeSet::from([port])
            }
            Infra::Kafka => kafka_listeners(service, "KAFKA_LISTENERS")
                .into_iter()
                .map(|(_, _, port)| port)
                .collect(),
        };
        listens.insert(name, ports);
    }
    for (name, config) in &loaded {
        if matches!(config, Loaded::Nothing) {
            // Unknown (already reported): its ports are not checked against a guess.
            continue;
        }
        let service = &services[*name];
        let binary = service
            .command
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        let binds: Vec<(&str, String)> = match (config, binary_kind(binary)) {
            (Loaded::Config(config), Some(Binary::Api)) => {
                vec![("api.bind", config.api.bind.clone())]
            }
            (Loaded::Config(config), Some(Binary::Exporter)) => config
                .telemetry
                .metrics_bind
                .clone()
                .map(|b| vec![("telemetry.metrics_bind", b)])
                .unwrap_or_default(),
            (Loaded::Sandbox(args), _) => vec![("SANDBOX_LISTEN", args.listen.to_string())],
            _ => Vec::new(),
        };
        let mut ports = BTreeSet::new();
        for (key, bind) in binds {
            match parse_bind(&bind) {
                Some((host, port)) => {
                    if !is_all_interfaces(&host) {
                        problems.add(format!(
                            "service {name}: {key} = {bind} listens inside the container only; other containers and published ports need 0.0.0.0"
                        ));
                    }
                    ports.insert(port);
                }
                None => problems.add(format!("service {name}: {key} = {bind:?} is not host:port")),
            }
        }
        listens.insert(name, ports);
    }

    for (name, service) in &services {
        check_ports(service, listens.get(name.as_str()), problems);
        check_dependencies(service, &services, &infra, problems);
    }
    for (name, config) in &loaded {
        let service = &services[*name];
        check_healthcheck(service, config, listens.get(name), &image, problems);
        match config {
            Loaded::Config(config) => check_addresses(
                service, config, &services, &infra, &loaded, &listens, problems,
            ),
            Loaded::Sandbox(args) => {
                check_sandbox_callback(service, args, &services, &listens, problems)
            }
            Loaded::Nothing => {}
        }
    }
    check_shared_settings(&loaded, problems);
    Ok(())
}

/// Checks a service built from the Dockerfile and loads its configuration as its binary would.
fn load_paygate(
    inputs: &Inputs,
    scratch: &Scratch,
    service: &Service,
    bins: &BTreeMap<String, String>,
    image: &Image,
    cli: &[Vec<String>],
    problems: &mut Problems,
) -> Loaded {
    let name = &service.name;
    let mut problem = |what: String| problems.add(format!("service {name}: {what}"));
    if let Some((context, dockerfile)) = &service.build {
        if !matches!(context.as_str(), "." | "./") || dockerfile != DOCKERFILE {
            problem(format!(
                "builds {context}/{dockerfile}; the paygate image is ./{DOCKERFILE} at the repository root"
            ));
        }
    }
    let Some(binary) = service.command.first() else {
        problem("no command: name the paygate binary it runs".into());
        return Loaded::Nothing;
    };
    if !bins.contains_key(binary) {
        let known: Vec<&String> = bins.keys().collect();
        problem(format!(
            "runs {binary:?}, not a workspace binary (those are {known:?}); run the binary itself, not a shell, so it gets the stop signal"
        ));
        return Loaded::Nothing;
    }
    if !image.built.contains(binary) {
        problem(format!(
            "runs {binary}, which {DOCKERFILE} does not build (cargo build --bin {binary})"
        ));
    }
    if !image.copied.contains(binary) {
        problem(format!(
            "runs {binary}, which {DOCKERFILE} does not copy into the runtime stage's PATH"
        ));
    }
    let Some(kind) = binary_kind(binary) else {
        problem(format!(
            "runs {binary}, whose configuration e2e/tests/compose.rs does not know yet: teach binary_kind and uses"
        ));
        return Loaded::Nothing;
    };
    if kind == Binary::Cli {
        let words: Vec<String> = service
            .command
            .iter()
            .take_while(|w| !w.starts_with('-'))
            .cloned()
            .collect();
        if !cli.contains(&words) {
            problem(format!(
                "runs `{}`, not a subcommand cli/src/main.rs documents ({:?})",
                words.join(" "),
                cli.iter().map(|c| c.join(" ")).collect::<Vec<_>>()
            ));
        }
        if matches!(
            service.restart.as_deref(),
            Some("always" | "unless-stopped")
        ) {
            problem("a one-off job must not restart after it is done".into());
        }
    }

    if kind == Binary::Sandbox {
        return load_sandbox(service, &mut problem);
    }

    // A paygate `Config` reader: PAYGATE_* variables and the file PAYGATE_CONFIG names.
    for var in service.env.keys() {
        if !var.starts_with("PAYGATE_") && !COMMON_VARS.contains(&var.as_str()) {
            problem(format!(
                "{var} is not read by {binary} (it reads PAYGATE_* only)"
            ));
        }
    }
    let file = match service.env.get(paygate_core::config::CONFIG_FILE_VAR) {
        None => None,
        Some(target) => {
            let mount = service.volumes.iter().find(|(_, t)| t == target);
            let source = mount
                .map(|(source, _)| source.trim_start_matches("./"))
                .filter(|source| !source.is_empty() && !source.starts_with('/'));
            match source {
                None => {
                    problem(format!(
                        "PAYGATE_CONFIG={target} is not a file bind-mounted from the repository"
                    ));
                    return Loaded::Nothing;
                }
                Some(source) if !inputs.is_file(Path::new(source)) => {
                    problem(format!(
                        "PAYGATE_CONFIG={target} is mounted from {source}, which does not exist"
                    ));
                    return Loaded::Nothing;
                }
                Some(source) => match inputs.path_of(Path::new(source), scratch) {
                    Ok(path) => Some(path),
                    Err(e) => {
                        problem(format!("{source}: {e:#}"));
                        return Loaded::Nothing;
                    }
                },
            }
        }
    };
    let env: Vec<(String, String)> = service
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config = match Config::load_from(file.clone(), env.clone()) {
        Ok(config) => config,
        Err(error) => {
            // Name the variable at fault: the error names a file key when the variable maps
            // to an unknown key of a known section.
            if let Err(file_error) = Config::load_from(file.clone(), Vec::new()) {
                problem(format!("{binary} would not start: {file_error}"));
                return Loaded::Nothing;
            }
            let mut blamed = false;
            for (var, value) in &env {
                let single = vec![(var.clone(), value.clone())];
                if let Err(e) = Config::load_from(file.clone(), single) {
                    problem(format!("{binary} would not start: {var}={value}: {e}"));
                    blamed = true;
                }
            }
            if !blamed {
                problem(format!("{binary} would not start: {error}"));
            }
            return Loaded::Nothing;
        }
    };
    let tree = match serde_json::to_value(&config) {
        Ok(tree) => tree,
        Err(e) => {
            problem(format!("config does not serialize: {e}"));
            return Loaded::Nothing;
        }
    };
    for (var, value) in &service.env {
        if !var.starts_with("PAYGATE_") || var == paygate_core::config::CONFIG_FILE_VAR {
            continue;
        }
        let path = env_key_path(var);
        match lookup(&tree, &path) {
            None | Some(serde_json::Value::Null) => problem(format!(
                "{var} is silently ignored: {} is not a configuration key",
                path.join(".")
            )),
            Some(found) if !same_value(found, value) => problem(format!(
                "{var}={value} does not set {} (it is {found})",
                path.join(".")
            )),
            Some(_) => {}
        }
    }
    if kind == Binary::Api && config.telemetry.metrics_bind.is_some() {
        problem(
            "telemetry.metrics_bind is ignored by paygate-api, which serves /metrics on api.bind"
                .into(),
        );
    }
    if kind == Binary::Exporter && config.telemetry.metrics_bind.is_none() {
        problem(format!(
            "{binary} serves no metrics endpoint to health-check: set PAYGATE_TELEMETRY_METRICS_BIND"
        ));
    }
    let dispatches = binary == "paygate-callback-dispatcher";
    if dispatches && (config.dispatcher.allow_loopback || config.dispatcher.allow_http) {
        problem(
            "dispatcher.allow_loopback / allow_http open the webhook SSRF guard; keep them false outside `paygate dev`"
                .into(),
        );
    }
    if uses(&service.command).registry {
        check_gateway_tables(&config, &mut problem);
    }
    Loaded::Config(Box::new(config))
}

/// `PAYGATE_KAFKA_TOPIC_PREFIX` → `kafka.topic_prefix`, `PAYGATE_GATEWAYS_X__BASE_URL` →
/// `gateways.x.base_url`: the mapping `core/src/config.rs` documents.
fn env_key_path(var: &str) -> Vec<String> {
    let rest = var.trim_start_matches("PAYGATE_").to_ascii_lowercase();
    match rest.split_once('_') {
        None => vec![rest],
        Some((section, key)) => std::iter::once(section.to_owned())
            .chain(key.split("__").map(str::to_owned))
            .collect(),
    }
}

fn lookup<'a>(tree: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(tree, |node, key| node.get(key))
}

fn same_value(found: &serde_json::Value, raw: &str) -> bool {
    use serde_json::Value;
    match found {
        Value::String(s) => s == raw,
        Value::Number(n) => n.to_string() == raw.trim(),
        Value::Bool(b) => b.to_string() == raw.trim(),
        Value::Array(items) => {
            let joined: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            joined.join(",") == raw.replace(' ', "")
        }
        _ => false,
    }
}

/// `[gateways.<name>]` tables as the gateway registry parses them, and routes naming
/// configured gateways.
fn check_gateway_tables(config: &Config, problem: &mut impl FnMut(String)) {
    // Exactly what the services do at start-up with `[gateways.*]`.
    if let Err(error) = GatewayRegistry::from_config(&config.gateways) {
        problem(format!(
            "the gateway registry refuses the configuration: {error}"
        ));
    }
    for (i, rule) in config.processor.routes.iter().enumerate() {
        for gateway in &rule.gateways {
            if !config.gateways.contains_key(gateway) {
                problem(format!(
                    "processor.routes[{i}] names gateway {gateway:?}, which is not configured"
                ));
            }
        }
    }
}

/// The sandbox's command line and `SANDBOX_*` variables, parsed by `SandboxArgs` itself.
fn load_sandbox(service: &Service, problem: &mut impl FnMut(String)) -> Loaded {
    let command = SandboxArgs::command();
    let mut argv: Vec<String> = service.command.clone();
    for (var, value) in &service.env {
        if COMMON_VARS.contains(&var.as_str()) {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var.as_str()));
        let Some(arg) = arg else {
            let known: Vec<String> = command
                .get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect();
            problem(format!(
                "{var} is not read by paygate-sandbox (it reads {known:?})"
            ));
            continue;
        };
        let Some(long) = arg.get_long() else {
            problem(format!(
                "{var}: its argument has no --long form to check it with"
            ));
            continue;
        };
        let flag = format!("--{long}");
        // The command line wins over the environment, as with clap.
        if !argv
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        {
            argv.push(flag);
            argv.push(value.clone());
        }
    }
    let args = match <SandboxArgs as clap::Parser>::try_parse_from(&argv) {
        Ok(args) => args,
        Err(error) => {
            problem(format!(
                "paygate-sandbox would not start: {}",
                error.render()
            ));
            return Loaded::Nothing;
        }
    };
    if let Err(error) = args.clone().into_settings() {
        problem(format!("paygate-sandbox would not start: {error:#}"));
        return Loaded::Nothing;
    }
    Loaded::Sandbox(Box::new(args))
}

/// Kafka's `NAME://host:port` list in `var`: `(name, host, port)`.
fn kafka_listeners(service: &Service, var: &str) -> Vec<(String, String, u16)> {
    service
        .env
        .get(var)
        .map(|list| {
            list.split(',')
                .filter_map(|entry| {
                    let (name, address) = entry.trim().split_once("://")?;
                    let (host, port) = split_host_port(address)?;
                    Some((name.to_owned(), host, port?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn check_ports(service: &Service, listens: Option<&BTreeSet<u16>>, problems: &mut Problems) {
    let Some(listens) = listens else { return };
    let name = &service.name;
    for (port, written) in &service.ports {
        if !listens.contains(port) {
            problems.add(format!(
                "service {name}: ports {written:?} maps container port {port}, but it listens on {listens:?}"
            ));
        }
    }
    for port in &service.expose {
        if !listens.contains(port) {
            problems.add(format!(
                "service {name}: expose {port}, but it listens on {listens:?}"
            ));
        }
    }
    for (host, port) in healthcheck_targets(service) {
        if !is_local(&host) {
            problems.add(format!(
                "service {name}: the healthcheck runs inside the container; use 127.0.0.1, not {host}"
            ));
        }
        if !listens.contains(&port) {
            problems.add(format!(
                "service {name}: the healthcheck probes port {port}, but it listens on {listens:?}"
            ));
        }
    }
}

/// `(host, port)` of each address in a healthcheck: URLs, `host:port` words and `-p`/`--port`.
fn healthcheck_targets(service: &Service) -> Vec<(String, u16)> {
    let Some(words) = &service.healthcheck else {
        return Vec::new();
    };
    let mut targets = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if let Some(url) = Url::parse(word) {
            let default = if url.scheme == "https" { 443 } else { 80 };
            targets.push((url.host.clone(), url.port_or(default)));
        } else if let Some((host, Some(port))) = split_host_port(word) {
            if is_local(&host) {
                targets.push((host, port));
            }
        } else if matches!(word.as_str(), "-p" | "--port") {
            if let Some(port) = words.get(i + 1).and_then(|p| p.parse().ok()) {
                targets.push(("127.0.0.1".to_owned(), port));
            }
        }
    }
    targets
}

fn check_healthcheck(
    service: &Service,
    loaded: &Loaded,
    listens: Option<&BTreeSet<u16>>,
    image: &Image,
    problems: &mut Problems,
) {
    let name = &service.name;
    let kind = service.command.first().and_then(|b| binary_kind(b));
    let expected_path = match (kind, loaded) {
        (Some(Binary::Cli) | None, _) | (_, Loaded::Nothing) => return,
        (Some(Binary::Api), _) => ["/readyz", "/healthz"].as_slice(),
        (Some(Binary::Exporter), _) => ["/metrics"].as_slice(),
        (Some(Binary::Sandbox), _) => ["/_admin/health"].as_slice(),
    };
    let Some(words) = &service.healthcheck else {
        problems.add(format!(
            "service {name}: a paygate service needs a healthcheck"
        ));
        return;
    };
    if let Some(program) = words.first() {
        let on_image = image.installed.contains(program) || image.copied.contains(program);
        if !program.starts_with('/') && !on_image {
            problems.add(format!(
                "service {name}: the healthcheck runs {program}, which {DOCKERFILE}'s runtime stage does not install"
            ));
        }
    }
    let urls: Vec<Url> = words.iter().filter_map(|w| Url::parse(w)).collect();
    let good = urls.iter().any(|u| {
        expected_path.contains(&u.path.as_str())
            && listens.is_some_and(|l| l.contains(&u.port_or(80)))
    });
    if !good {
        problems.add(format!(
            "service {name}: the healthcheck should GET {} on the port it listens on ({:?})",
            expected_path.join(" or "),
            listens.cloned().unwrap_or_default()
        ));
    }
}

fn check_dependencies(
    service: &Service,
    services: &BTreeMap<String, Service>,
    infra: &BTreeMap<&str, Infra>,
    problems: &mut Problems,
) {
    let name = &service.name;
    for (target, condition) in &service.depends_on {
        let Some(dependency) = services.get(target) else {
            problems.add(format!(
                "service {name}: depends_on {target}, which is not a service"
            ));
            continue;
        };
        match condition.as_str() {
            "service_started" => {}
            "service_healthy" => {
                if dependency.healthcheck.is_none() {
                    problems.add(format!(
                        "service {name}: waits for {target} to be healthy, but {target} has no healthcheck"
                    ));
                }
            }
            "service_completed_successfully" => {
                let job = dependency.command.first().map(String::as_str) == Some("paygate")
                    && !infra.contains_key(target.as_str());
                if !job
                    || matches!(
                        dependency.restart.as_deref(),
                        Some("always" | "unless-stopped")
                    )
                {
                    problems.add(format!(
                        "service {name}: waits for {target} to complete, but {target} is not a one-off job"
                    ));
                }
            }
            other => problems.add(format!(
                "service {name}: depends_on {target}: unknown condition {other:?}"
            )),
        }
    }
    // Cycles: compose refuses to start.
    let mut stack = vec![(name.clone(), vec![name.clone()])];
    while let Some((at, path)) = stack.pop() {
        for (next, _) in services
            .get(&at)
            .map(|s| s.depends_on.as_slice())
            .unwrap_or_default()
        {
            if next == name {
                problems.add(format!("depends_on cycle: {} -> {name}", path.join(" -> ")));
            } else if !path.contains(next) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
}

/// Requires `service` to wait for `target` to be healthy (it talks to it from the start).
fn require_healthy_dependency(service: &Service, target: &str, why: &str, problems: &mut Problems) {
    let waits = service
        .depends_on
        .iter()
        .any(|(t, c)| t == target && c == "service_healthy");
    if !waits {
        problems.add(format!(
            "service {}: talks to {target} ({why}) but does not depend_on it with condition service_healthy",
            service.name
        ));
    }
}

/// The service named by `host`, when it is one of `kind`.
fn service_for<'a>(
    host: &str,
    what: &str,
    services: &'a BTreeMap<String, Service>,
    fits: impl Fn(&str) -> bool,
    problems: &mut Problems,
    from: &str,
) -> Option<&'a Service> {
    if is_local(host) {
        problems.add(format!(
            "service {from}: {what} points at {host}, the container itself; name the compose service"
        ));
        return None;
    }
    match services.get(host) {
        None => {
            problems.add(format!(
                "service {from}: {what} names host {host:?}, which is not a compose service"
            ));
            None
        }
        Some(_) if !fits(host) => {
            problems.add(format!(
                "service {from}: {what} names {host}, which is not the right kind of service"
            ));
            None
        }
        found => found,
    }
}

fn check_addresses(
    service: &Service,
    config: &Config,
    services: &BTreeMap<String, Service>,
    infra: &BTreeMap<&str, Infra>,
    loaded: &BTreeMap<&str, Loaded>,
    listens: &BTreeMap<&str, BTreeSet<u16>>,
    problems: &mut Problems,
) {
    let name = service.name.clone();
    let uses = uses(&service.command);
    let listening =
        // A target whose ports are unknown (it failed to load: reported) is not judged.
        |target: &str, port: u16| listens.get(target).is_none_or(|l| l.contains(&port));

    // Postgres, with the credentials the postgres image was given.
    if uses.database {
        match Url::parse(&config.database.url) {
            None => problems.add(format!("service {name}: database.url is not a URL")),
            Some(url) => {
                let what = "database.url";
                let target = service_for(
                    &url.host,
                    what,
                    services,
                    |h| infra.get(h) == Some(&Infra::Postgres),
                    problems,
                    &name,
                );
                if let Some(target) = target {
                    let port = url.port_or(5432);
                    if !listening(&target.name, port) {
                        problems.add(format!(
                            "service {name}: {what} uses port {port}; {} listens on 5432",
                            target.name
                        ));
                    }
                    let user = target
                        .env
                        .get("POSTGRES_USER")
                        .cloned()
                        .unwrap_or_else(|| "postgres".into());
                    let db = target
                        .env
                        .get("POSTGRES_DB")
                        .cloned()
                        .unwrap_or_else(|| user.clone());
                    let trust = target
                        .env
                        .get("POSTGRES_HOST_AUTH_METHOD")
                        .map(String::as_str)
                        == Some("trust");
                    if url.user.as_deref().unwrap_or("postgres") != user {
                        problems.add(format!(
                            "service {name}: {what} user is not POSTGRES_USER ({user}) of {}",
                            target.name
                        ));
                    }
                    if !trust
                        && url.password.as_deref()
                            != target.env.get("POSTGRES_PASSWORD").map(String::as_str)
                    {
                        problems.add(format!(
                            "service {name}: {what} password is not POSTGRES_PASSWORD of {}",
                            target.name
                        ));
                    }
                    if url.path.trim_start_matches('/') != db {
                        problems.add(format!(
                            "service {name}: {what} database is not POSTGRES_DB ({db}) of {}",
                            target.name
                        ));
                    }
                    require_healthy_dependency(service, &target.name, what, problems);
                }
            }
        }
    }

    // Redis.
    if uses.redis {
        match Url::parse(&config.redis.url) {
            None => problems.add(format!("service {name}: redis.url is not a URL")),
            Some(url) => {
                let target = service_for(
                    &url.host,
                    "redis.url",
                    services,
                    |h| infra.get(h) == Some(&Infra::Redis),
                    problems,
                    &name,
                );
                if let Some(target) = target {
                    let port = url.port_or(6379);
                    if !listening(&target.name, port) {
                        problems.add(format!(
                        "service {name}: redis.url uses port {port}, which {} does not listen on",
                        target.name
                    ));
                    }
                    require_healthy_dependency(service, &target.name, "redis.url", problems);
                }
            }
        }
    }

    // Kafka: each broker must be a listener the broker advertises under that very address
    // (clients reconnect to the advertised one).
    if uses.kafka {
        for broker in config
            .kafka
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            let what = format!("kafka.brokers {broker}");
            let Some((host, Some(port))) = split_host_port(broker) else {
                problems.add(format!("service {name}: {what} is not host:port"));
                continue;
            };
            let target = service_for(
                &host,
                &what,
                services,
                |h| infra.get(h) == Some(&Infra::Kafka),
                problems,
                &name,
            );
            let Some(target) = target else { continue };
            let listeners = kafka_listeners(target, "KAFKA_LISTENERS");
            let advertised = kafka_listeners(target, "KAFKA_ADVERTISED_LISTENERS");
            match listeners.iter().find(|(_, _, p)| *p == port) {
                None => problems.add(format!(
                    "service {name}: {what}: {} has no listener on port {port}",
                    target.name
                )),
                Some((listener, _, _)) => {
                    let ok = advertised
                        .iter()
                        .any(|(n, h, p)| n == listener && *h == target.name && *p == port);
                    if !ok {
                        problems.add(format!(
                        "service {name}: {what}: {} does not advertise listener {listener} as {}:{port}",
                        target.name, target.name
                    ));
                    }
                }
            }
            require_healthy_dependency(service, &target.name, "kafka.brokers", problems);
        }
    }

    // Gateways: each base_url is a service listening there; on the sandbox, the gateway name is
    // the account (first path segment) and the secrets are the sandbox's.
    if uses.registry {
        for (gateway, table) in &config.gateways {
            let Some(raw) = table.get("base_url").and_then(serde_json::Value::as_str) else {
                continue;
            };
            let what = format!("gateways.{gateway}.base_url");
            let Some(url) = Url::parse(raw) else {
                problems.add(format!("service {name}: {what} is not a URL"));
                continue;
            };
            let target = service_for(
                &url.host,
                &what,
                services,
                |h| loaded.contains_key(h),
                problems,
                &name,
            );
            let Some(target) = target else { continue };
            let port = url.port_or(if url.scheme == "https" { 443 } else { 80 });
            if !listening(&target.name, port) {
                problems.add(format!(
                    "service {name}: {what} uses port {port}, but {} listens on {:?}",
                    target.name,
                    listens
                        .get(target.name.as_str())
                        .cloned()
                        .unwrap_or_default()
                ));
            }
            if let Some(Loaded::Sandbox(args)) = loaded.get(target.name.as_str()) {
                let account = url
                    .path
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or_default();
                if account != gateway {
                    problems.add(format!(
                    "service {name}: {what} uses sandbox account {account:?}; it must be the gateway name {gateway:?} (callbacks go to /callbacks/<account>)"
                ));
                }
                let secret = table.get("secret_key").and_then(serde_json::Value::as_str);
                let webhook = table
                    .get("webhook_secret")
                    .and_then(serde_json::Value::as_str)
                    .or(secret);
                if secret != Some(args.secret_key.as_str()) {
                    problems.add(format!(
                    "service {name}: gateways.{gateway}.secret_key is not the sandbox's secret key"
                ));
                }
                if webhook != Some(args.webhook_secret.as_str()) {
                    problems.add(format!("service {name}: gateways.{gateway}.webhook_secret is not the sandbox's webhook secret"));
                }
            }
            if uses.gateways {
                require_healthy_dependency(service, &target.name, &what, problems);
            }
        }
    }

    // The schema: a service that does not migrate itself waits for the `paygate migrate` job.
    let long_running = service.command.first().map(String::as_str) != Some("paygate");
    if uses.database && long_running && !config.database.migrate_on_start {
        let waits_for_migration = service.depends_on.iter().any(|(t, c)| {
            c == "service_completed_successfully"
                && services
                    .get(t)
                    .is_some_and(|s| s.command == ["paygate", "migrate"])
        });
        if !waits_for_migration {
            problems.add(format!(
                "service {name}: database.migrate_on_start is false but it does not wait for a `paygate migrate` job (service_completed_successfully)"
            ));
        }
    }
}

fn check_sandbox_callback(
    service: &Service,
    args: &SandboxArgs,
    services: &BTreeMap<String, Service>,
    listens: &BTreeMap<&str, BTreeSet<u16>>,
    problems: &mut Problems,
) {
    let name = &service.name;
    let what = "SANDBOX_CALLBACK_BASE_URL";
    let Some(url) = Url::parse(&args.callback_base_url) else {
        problems.add(format!("service {name}: {what} is not a URL"));
        return;
    };
    let is_api = services
        .get(&url.host)
        .is_some_and(|s| s.command.first().map(String::as_str) == Some("paygate-api"));
    if !is_api {
        problems.add(format!(
            "service {name}: {what} = {} does not name the API's compose service",
            args.callback_base_url
        ));
        return;
    }
    let port = url.port_or(80);
    if !listens
        .get(url.host.as_str())
        .is_none_or(|l| l.contains(&port))
    {
        problems.add(format!(
            "service {name}: {what} uses port {port}, but {} listens on {:?}",
            url.host,
            listens.get(url.host.as_str()).cloned().unwrap_or_default()
        ));
    }
    require_healthy_dependency(service, &url.host, what, problems);
}

/// Every paygate service must agree on the data they share.
fn check_shared_settings(loaded: &BTreeMap<&str, Loaded>, problems: &mut Problems) {
    let configs: Vec<(&str, &Config)> = loaded
        .iter()
        .filter_map(|(name, l)| match l {
            Loaded::Config(config) => Some((*name, config.as_ref())),
            _ => None,
        })
        .collect();
    let Some((first_name, first)) = configs.first() else {
        return;
    };
    let shared = |c: &Config| {
        [
            ("database.url", c.database.url.clone()),
            ("redis.url", c.redis.url.clone()),
            ("redis.key_prefix", c.redis.key_prefix.clone()),
            ("kafka.brokers", c.kafka.brokers.clone()),
            ("kafka.topic_prefix", c.kafka.topic_prefix.clone()),
            (
                "gateways",
                serde_json::to_string(&c.gateways).unwrap_or_default(),
            ),
        ]
    };
    for (name, config) in &configs[1..] {
        for ((key, a), (_, b)) in shared(first).into_iter().zip(shared(config)) {
            if a != b {
                problems.add(format!(
                    "services {first_name} and {name} disagree on {key}"
                ));
            }
        }
    }
}

// ---- tests -------------------------------------------------------------------------------

fn real() -> Inputs {
    Inputs::real().expect("the repository's docker-compose.yml and Dockerfile are readable")
}

/// Replaces the one occurrence of `from` in `text` (a mutation must hit what it means to).
fn edit(text: &mut String, from: &str, to: &str) {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} should occur exactly once"
    );
    *text = text.replacen(from, to, 1);
}

fn edit_compose(from: &str, to: &str) -> Inputs {
    let mut inputs = real();
    edit(&mut inputs.compose, from, to);
    inputs
}

fn edit_dockerfile(from: &str, to: &str) -> Inputs {
    let mut inputs = real();
    edit(&mut inputs.dockerfile, from, to);
    inputs
}

fn edit_config(from: &str, to: &str) -> Inputs {
    let mut inputs = real();
    let rel = PathBuf::from("deploy/compose.toml");
    let mut text = inputs.read(&rel).expect("deploy/compose.toml is readable");
    edit(&mut text, from, to);
    inputs.replaced.insert(rel, text);
    inputs
}

/// Asserts that checking `inputs` reports a problem containing every one of `needles`.
fn assert_reported(inputs: &Inputs, needles: &[&str]) {
    let problems = check(inputs);
    assert!(
        problems
            .iter()
            .any(|p| needles.iter().all(|n| p.contains(n))),
        "expected a problem mentioning {needles:?}, got:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_compose_file_agrees_with_the_code() {
    let problems = check(&real());
    assert!(
        problems.is_empty(),
        "docker-compose.yml problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_every_service() -> Result<()> {
    // Guards against a checker that passes because it skipped everything.
    let inputs = real();
    let services = parse_compose(&inputs.compose)?;
    let binaries: BTreeSet<&str> = services
        .values()
        .filter_map(|s| s.command.first().map(String::as_str))
        .collect();
    for binary in [
        "paygate-api",
        "paygate-payment-processor",
        "paygate-callback-processor",
        "paygate-callback-dispatcher",
        "paygate-sandbox",
        "paygate",
    ] {
        assert!(binaries.contains(binary), "no service runs {binary}");
    }
    for infra in ["postgres", "redis", "kafka"] {
        assert!(services.contains_key(infra), "no {infra} service");
    }
    let bins = workspace_binaries(&inputs)?;
    assert!(
        bins.contains_key("paygate"),
        "the CLI's [[bin]] name: {bins:?}"
    );
    assert!(
        bins.contains_key("paygate-api"),
        "the API's package binary: {bins:?}"
    );
    Ok(())
}

#[test]
fn a_misspelt_paygate_variable_is_reported() {
    let inputs = edit_compose(
        "PAYGATE_API_BIND: 0.0.0.0:8080",
        "PAYGATE_API_BIDN: 0.0.0.0:8080",
    );
    assert_reported(&inputs, &["PAYGATE_API_BIDN"]);
    let inputs = edit_compose(
        "PAYGATE_TELEMETRY_METRICS_BIND: 0.0.0.0:9101",
        "PAYGATE_TELEMETRY_METRIC_BIND: 0.0.0.0:9101",
    );
    assert_reported(&inputs, &["PAYGATE_TELEMETRY_METRIC_BIND"]);
    let inputs = edit_compose(
        "PAYGATE_API_BIND: 0.0.0.0:8080",
        "PAYGATE_API_BIND: 0.0.0.0:8080\n      PAYGATE_APIBIND: 0.0.0.0:8080",
    );
    assert_reported(&inputs, &["PAYGATE_APIBIND"]);
}

#[test]
fn a_variable_nothing_reads_is_reported() {
    // Accepted by Config (gateway tables are raw) but an unknown gateway key.
    let inputs = edit_compose(
        "PAYGATE_API_BIND: 0.0.0.0:8080",
        "PAYGATE_API_BIND: 0.0.0.0:8080\n      PAYGATE_GATEWAYS_SANDBOX-JSON__BASEURL: http://sandbox:8090/x",
    );
    assert_reported(&inputs, &["gateways.sandbox-json.baseurl"]);
    // A real key, but one the API ignores.
    let inputs = edit_compose(
        "PAYGATE_API_BIND: 0.0.0.0:8080",
        "PAYGATE_API_BIND: 0.0.0.0:8080\n      PAYGATE_TELEMETRY_METRICS_BIND: 0.0.0.0:9100",
    );
    assert_reported(&inputs, &["service api", "metrics_bind is ignored"]);
    // A sandbox variable given to a Config reader.
    let inputs = edit_compose(
        "PAYGATE_API_BIND: 0.0.0.0:8080",
        "PAYGATE_API_BIND: 0.0.0.0:8080\n      SANDBOX_LISTEN: 0.0.0.0:8090",
    );
    assert_reported(
        &inputs,
        &["service api", "SANDBOX_LISTEN is not read by paygate-api"],
    );
}

#[test]
fn an_unknown_sandbox_variable_is_reported() {
    let inputs = edit_compose(
        "SANDBOX_LISTEN: 0.0.0.0:8090",
        "SANDBOX_LISTEN_ADDR: 0.0.0.0:8090",
    );
    assert_reported(
        &inputs,
        &["SANDBOX_LISTEN_ADDR is not read by paygate-sandbox"],
    );
    let inputs = edit_compose(
        "SANDBOX_LISTEN: 0.0.0.0:8090",
        "SANDBOX_LISTEN: 0.0.0.0:8090\n      PAYGATE_API_BIND: 0.0.0.0:8090",
    );
    assert_reported(
        &inputs,
        &["PAYGATE_API_BIND is not read by paygate-sandbox"],
    );
    let inputs = edit_compose(
        "SANDBOX_LISTEN: 0.0.0.0:8090",
        "SANDBOX_LISTEN: 0.0.0.0:8090\n      SANDBOX_KNOBS: '{\"no_such_knob\": 1}'",
    );
    assert_reported(
        &inputs,
        &["paygate-sandbox would not start", "SANDBOX_KNOBS"],
    );
}

#[test]
fn a_dependency_on_a_missing_service_is_reported() {
    let inputs = edit_compose(
        "    depends_on:\n      api:\n",
        "    depends_on:\n      apii:\n",
    );
    assert_reported(&inputs, &["depends_on apii, which is not a service"]);
    // …and the sandbox then no longer waits for the API it calls back.
    assert_reported(&inputs, &["service sandbox", "talks to api"]);
}

#[test]
fn a_wrong_dependency_condition_is_reported() {
    // `migrate` is a job without a healthcheck: nothing waits for it to be healthy.
    let mut inputs = real();
    let from = "      migrate:\n        condition: service_completed_successfully\n";
    let to = "      migrate:\n        condition: service_healthy\n";
    let at = inputs.compose.find(from).expect("a dependency on migrate");
    inputs.compose.replace_range(at..at + from.len(), to);
    assert_reported(
        &inputs,
        &["waits for migrate to be healthy, but migrate has no healthcheck"],
    );
    // Waiting for a long-running service to complete never ends.
    let inputs = edit_compose(
        "      api:\n        condition: service_healthy\n",
        "      api:\n        condition: service_completed_successfully\n",
    );
    assert_reported(
        &inputs,
        &["waits for api to complete, but api is not a one-off job"],
    );
}

#[test]
fn a_missing_healthcheck_is_reported() {
    let inputs = edit_compose(
        "test: [\"CMD\", \"curl\", \"-fsS\", \"-o\", \"/dev/null\", \"http://127.0.0.1:9102/metrics\"]",
        "disable: true",
    );
    assert_reported(
        &inputs,
        &["service callback-processor: a paygate service needs a healthcheck"],
    );
    // …so what waits for it to be healthy is wrong too.
    let inputs = edit_compose(
        "test: [\"CMD\", \"curl\", \"-fsS\", \"-o\", \"/dev/null\", \"http://127.0.0.1:8080/readyz\"]",
        "disable: true",
    );
    assert_reported(
        &inputs,
        &["waits for api to be healthy, but api has no healthcheck"],
    );
}

#[test]
fn a_port_mismatch_is_reported() {
    let inputs = edit_compose("\"127.0.0.1:8080:8080\"", "\"127.0.0.1:8080:8081\"");
    assert_reported(&inputs, &["service api", "container port 8081"]);
    let inputs = edit_compose(
        "http://127.0.0.1:9101/metrics",
        "http://127.0.0.1:9111/metrics",
    );
    assert_reported(&inputs, &["service payment-processor", "probes port 9111"]);
    let inputs = edit_compose(
        "http://127.0.0.1:8090/_admin/health",
        "http://127.0.0.1:8090/health",
    );
    assert_reported(&inputs, &["service sandbox", "/_admin/health"]);
    // The bind moves, the published port and healthcheck do not.
    let inputs = edit_compose(
        "PAYGATE_API_BIND: 0.0.0.0:8080",
        "PAYGATE_API_BIND: 0.0.0.0:8081",
    );
    assert_reported(&inputs, &["service api", "container port 8080"]);
    assert_reported(
        &inputs,
        &[
            "service sandbox",
            "SANDBOX_CALLBACK_BASE_URL uses port 8080",
        ],
    );
    // A bind on the container's loopback only.
    let inputs = edit_compose(
        "SANDBOX_LISTEN: 0.0.0.0:8090",
        "SANDBOX_LISTEN: 127.0.0.1:8090",
    );
    assert_reported(&inputs, &["service sandbox", "inside the container only"]);
}

#[test]
fn an_address_naming_the_wrong_service_or_port_is_reported() {
    let inputs = edit_compose(
        "SANDBOX_CALLBACK_BASE_URL: http://api:8080",
        "SANDBOX_CALLBACK_BASE_URL: http://apii:8080",
    );
    assert_reported(
        &inputs,
        &["SANDBOX_CALLBACK_BASE_URL", "does not name the API"],
    );
    let inputs = edit_config("brokers = \"kafka:9092\"", "brokers = \"kafka:9094\"");
    assert_reported(
        &inputs,
        &["kafka.brokers kafka:9094", "no listener on port 9094"],
    );
    let inputs = edit_config("brokers = \"kafka:9092\"", "brokers = \"kafka:29092\"");
    assert_reported(
        &inputs,
        &["kafka.brokers kafka:29092", "does not advertise"],
    );
    let inputs = edit_config(
        "url = \"redis://redis:6379\"",
        "url = \"redis://127.0.0.1:6379\"",
    );
    assert_reported(&inputs, &["redis.url points at 127.0.0.1"]);
    let inputs = edit_config(
        "postgres://paygate:paygate@postgres:5432/paygate",
        "postgres://paygate:secret@postgres:5432/paygate",
    );
    assert_reported(&inputs, &["database.url password is not POSTGRES_PASSWORD"]);
    let inputs = edit_config(
        "base_url = \"http://sandbox:8090/sandbox-soap\"",
        "base_url = \"http://sandbx:8090/sandbox-soap\"",
    );
    assert_reported(
        &inputs,
        &["gateways.sandbox-soap.base_url names host \"sandbx\""],
    );
    let inputs = edit_config(
        "base_url = \"http://sandbox:8090/sandbox-soap\"",
        "base_url = \"http://sandbox:8090/sandbox-json\"",
    );
    assert_reported(
        &inputs,
        &["sandbox account \"sandbox-json\"", "\"sandbox-soap\""],
    );
}

#[test]
fn an_unsafe_or_broken_mounted_config_is_reported() {
    let inputs = edit_config("allow_loopback = false", "allow_loopback = true");
    assert_reported(&inputs, &["SSRF"]);
    let inputs = edit_config("kind = \"protobuf\"", "kind = \"grpc\"");
    assert_reported(&inputs, &["gateways.sandbox-proto.kind"]);
    let inputs = edit_config(
        "gateways = [\"sandbox-json\", \"sandbox-proto\", \"sandbox-soap\"]",
        "gateways = [\"sandbox-json\", \"sandbox-xml\"]",
    );
    assert_reported(&inputs, &["names gateway \"sandbox-xml\""]);
    let inputs = edit_config("[redis]", "[rediss]");
    assert_reported(&inputs, &["would not start"]);
    let inputs = edit_config(
        "webhook_secret = \"whsec_sandbox\"\n\n[gateways.sandbox-soap]",
        "webhook_secret = \"whsec_other\"\n\n[gateways.sandbox-soap]",
    );
    assert_reported(
        &inputs,
        &["gateways.sandbox-json.webhook_secret is not the sandbox's"],
    );
}

#[test]
fn a_binary_outside_the_workspace_or_the_image_is_reported() {
    let inputs = edit_compose("command: [\"paygate-api\"]", "command: [\"paygate-apii\"]");
    assert_reported(&inputs, &["runs \"paygate-apii\", not a workspace binary"]);
    let inputs = edit_compose(
        "command: [\"paygate\", \"migrate\"]",
        "command: [\"paygate\", \"migrat\"]",
    );
    assert_reported(&inputs, &["runs `paygate migrat`"]);
    let inputs = edit_dockerfile("        --bin paygate-sandbox \\\n", "");
    assert_reported(
        &inputs,
        &["runs paygate-sandbox, which Dockerfile does not build"],
    );
    let inputs = edit_dockerfile(
        "COPY --from=builder /out/paygate-callback-dispatcher /usr/local/bin/paygate-callback-dispatcher\n",
        "",
    );
    assert_reported(
        &inputs,
        &["runs paygate-callback-dispatcher, which Dockerfile does not copy"],
    );
    let inputs = edit_dockerfile("--bin paygate \\", "--bin paygate-cli \\");
    assert_reported(&inputs, &["--bin paygate-cli, not a workspace binary"]);
}

#[test]
fn an_image_problem_is_reported() {
    let mut inputs = real();
    let rel = PathBuf::from(".dockerignore");
    let ignore = inputs.read(&rel).expect(".dockerignore is readable");
    inputs
        .replaced
        .insert(rel, format!("{ignore}migrations/\n"));
    assert_reported(&inputs, &[".dockerignore excludes migrations"]);
    let inputs = edit_dockerfile("USER paygate:paygate\n", "");
    assert_reported(&inputs, &["runs as root"]);
    let inputs = edit_dockerfile("ca-certificates curl", "ca-certificates");
    assert_reported(
        &inputs,
        &["runs curl, which Dockerfile's runtime stage does not install"],
    );
    let inputs = edit_dockerfile("FROM debian:bookworm-slim", "FROM debian:trixie-slim");
    assert_reported(&inputs, &["same Debian release"]);
    let inputs = edit_dockerfile("FROM rust:1.95-bookworm", "FROM rust:1.80-bookworm");
    assert_reported(&inputs, &["older than the workspace's rust-version"]);
    // rdkafka built with cmake needs cmake in the builder.
    let mut inputs = real();
    let rel = PathBuf::from("Cargo.toml");
    let mut manifest = inputs.read(&rel).expect("Cargo.toml is readable");
    edit(
        &mut manifest,
        "rdkafka = { version = \"0.39\", features = [\"tokio\"] }",
        "rdkafka = { version = \"0.39\", features = [\"tokio\", \"cmake-build\"] }",
    );
    inputs.replaced.insert(rel, manifest);
    assert_reported(&inputs, &["rdkafka feature cmake-build needs cmake"]);
}
