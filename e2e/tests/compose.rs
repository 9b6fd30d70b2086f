//! `docker-compose.yml` checked against the code (Docker cannot run where paygate is tested),
//! each check asking the code rather than re-implementing it. A paygate container
//! (built from `./Dockerfile`) runs a workspace binary (`cargo metadata`) that the Dockerfile
//! builds and installs, or a `paygate` subcommand the built CLI accepts; its environment and
//! mounted TOML load through `Config::load_from` and the gateway registry (the sandbox's
//! through `SandboxArgs`); its published ports and healthcheck URL are the port it binds.
//! `depends_on` names services that exist, waiting for health only where there is a check.
//! The tests: the real files agree, and broken copies are each reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;

use anyhow::{ensure, Result};
use clap::{CommandFactory, Parser};
use paygate_core::config::{Config, CONFIG_FILE_VAR};
use paygate_e2e::binaries::{ensure_built, workspace_root};
use paygate_gateways::GatewayRegistry;
use paygate_sandbox::SandboxArgs;
use reqwest::Url;
use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;
use tokio::runtime::Runtime;

/// Variables every binary may be given besides its own: the `tracing` filter and backtraces.
const COMMON_VARS: &[&str] = &["RUST_LOG", "RUST_BACKTRACE"];

/// The parts of a compose service the check reads; serde ignores the rest.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Service {
    /// Present exactly on the containers of the paygate image.
    build: Option<Yaml>,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
    ports: Vec<String>,
    volumes: Vec<String>,
    healthcheck: Option<BTreeMap<String, Yaml>>,
    depends_on: BTreeMap<String, BTreeMap<String, String>>,
}

/// One run of the check over a compose file and a Dockerfile: the problems found, and the
/// paygate services loaded (so that a check which skipped everything cannot pass).
#[derive(Default)]
struct Check {
    binaries: BTreeSet<String>,
    dockerfile: String,
    problems: Vec<String>,
    loaded: BTreeSet<String>,
}

fn check(compose: &str, dockerfile: &str) -> Check {
    let mut check = Check::default();
    if let Err(e) = check.run(compose, dockerfile) {
        check.problems.push(format!("cannot check: {e:#}"));
    }
    check
}

impl Check {
    fn run(&mut self, compose: &str, dockerfile: &str) -> Result<()> {
        self.dockerfile = dockerfile.to_owned();
        let mut yaml: Yaml = serde_yaml_ng::from_str(compose)?;
        yaml.apply_merge()?;
        // Typed from text, where a plain scalar (`KAFKA_NODE_ID: 1`) is also a string.
        let text = serde_yaml_ng::to_string(&yaml["services"])?;
        let services: BTreeMap<String, Service> = serde_yaml_ng::from_str(&text)?;
        self.binaries = workspace_binaries()?;
        for (name, service) in &services {
            let found = self.problems.len();
            self.check_dependencies(service, &services);
            if let Some(started) = service.build.as_ref().map(|_| self.start(service)) {
                if let Some(bind) = started? {
                    self.loaded.insert(name.clone());
                    self.check_ports(service, bind);
                }
            }
            for problem in &mut self.problems[found..] {
                *problem = format!("service {name}: {problem}");
            }
        }
        Ok(())
    }

    fn bad(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// Checks the container's command and loads its settings as its binary would: `None`
    /// when it would not start (reported), else the addresses it binds, the one its
    /// healthcheck probes first (`Some(None)`: a job).
    fn start(&mut self, service: &Service) -> Result<Option<Option<Vec<SocketAddr>>>> {
        let (command, binaries) = (&service.command, &self.binaries);
        let Some(binary) = command.first().filter(|b| binaries.contains(*b)) else {
            self.bad(format!("runs {command:?}, not a workspace binary"));
            return Ok(None);
        };
        let words: Vec<&str> = self.dockerfile.split_whitespace().collect();
        let installed = format!("/usr/local/bin/{binary}");
        if !words.windows(2).any(|w| w == ["--bin", binary]) || !words.contains(&&*installed) {
            self.bad(format!("{binary} is not built by the Dockerfile"));
        }
        if binary == "paygate-sandbox" {
            return Ok(self.load_sandbox(service).map(|listen| Some(vec![listen])));
        }
        if binary == "paygate" {
            // The built CLI asked for the subcommand's help: clap refuses unknown ones.
            let paygate = Runtime::new()?.block_on(ensure_built())?.path("paygate");
            let mut cli = Command::new(paygate);
            let help = cli.args(&command[1..]).arg("--help").output()?;
            if !help.status.success() {
                let words = command.join(" ");
                self.bad(format!("`{words}` is not a CLI subcommand"));
            }
        }
        let Some(config) = self.load_config(binary, service) else {
            return Ok(None);
        };
        let binds = match binary.as_str() {
            "paygate" => return Ok(Some(None)),
            // The API's own listener, then its metrics' when they have one.
            "paygate-api" => [Some(config.api.bind), config.telemetry.metrics_bind].to_vec(),
            _ => vec![config.telemetry.metrics_bind],
        };
        let mut addresses = Vec::new();
        for (n, bind) in binds.into_iter().enumerate() {
            match bind.as_deref().map(str::parse) {
                Some(Ok(address)) => addresses.push(address),
                None if n > 0 => {}
                _ => {
                    self.bad(format!("{binary} binds no host:port ({bind:?})"));
                    return Ok(None);
                }
            }
        }
        Ok(Some(Some(addresses)))
    }

    /// The configuration a `Config` reader would start with, gateway registry included;
    /// `PAYGATE_CONFIG` is the repository file bind-mounted there.
    fn load_config(&mut self, binary: &str, service: &Service) -> Option<Config> {
        let env = &service.environment;
        for var in env.keys() {
            if !var.starts_with("PAYGATE_") && !COMMON_VARS.contains(&var.as_str()) {
                self.bad(format!("{var} is not read by {binary}"));
            }
        }
        let file = env.get(CONFIG_FILE_VAR).map(|target| {
            let mount = |v: &String| v.split(':').nth(1).is_some_and(|t| t == target);
            let source = service.volumes.iter().find(|v| mount(v));
            workspace_root().join(source.map_or("", |v| v.split(':').next().unwrap_or("")))
        });
        let config = Config::load_from(file, env.clone())
            .map_err(|e| self.bad(format!("{binary} would not start: {e}")))
            .ok()?;
        if let Err(e) = GatewayRegistry::from_config(&config.gateways) {
            self.bad(format!("the gateway registry refuses it: {e}"));
            return None;
        }
        Some(config)
    }

    /// The sandbox's variables, parsed by `SandboxArgs` itself; its listen address.
    fn load_sandbox(&mut self, service: &Service) -> Option<SocketAddr> {
        let command = SandboxArgs::command();
        let mut argv = service.command.clone();
        for (var, value) in &service.environment {
            let mut args = command.get_arguments();
            let arg = args.find(|a| a.get_env().is_some_and(|e| e == var.as_str()));
            match arg.and_then(|a| a.get_long()) {
                Some(long) => argv.extend([format!("--{long}"), value.clone()]),
                None if COMMON_VARS.contains(&var.as_str()) => {}
                None => self.bad(format!("{var} is not read by paygate-sandbox")),
            }
        }
        let args = SandboxArgs::try_parse_from(&argv).map_err(|e| e.to_string());
        let listen = args.as_ref().ok().map(|a| a.listen);
        let settings = args.and_then(|a| a.into_settings().map_err(|e| format!("{e:#}")));
        if let Err(e) = settings {
            self.bad(format!("would not start: {e}"));
        }
        listen
    }

    /// Published ports and the healthcheck URL against the address the service binds.
    fn check_ports(&mut self, service: &Service, binds: Option<Vec<SocketAddr>>) {
        let Some(binds) = binds else { return };
        let Some(port) = binds.first().map(SocketAddr::port) else {
            return;
        };
        for bind in &binds {
            if !bind.ip().is_unspecified() {
                self.bad(format!("binds {bind}, in the container only"));
            }
        }
        let ports: Vec<u16> = binds.iter().map(SocketAddr::port).collect();
        for entry in &service.ports {
            let container = entry.split('/').next().and_then(|p| p.rsplit(':').next());
            if !container
                .and_then(|p| p.parse().ok())
                .is_some_and(|p| ports.contains(&p))
            {
                self.bad(format!("ports {entry:?} is not a bound port ({ports:?})"));
            }
        }
        let test = service.healthcheck.as_ref().and_then(|h| h.get("test"));
        let words = test.and_then(Yaml::as_sequence).into_iter().flatten();
        let mut urls = words.filter_map(|w| Url::parse(w.as_str()?).ok());
        let url = urls.next();
        if url.as_ref().and_then(Url::port_or_known_default) != Some(port) {
            let url = url.map_or("none".into(), String::from);
            self.bad(format!("port {port} is not the healthcheck's {url}"));
        }
    }

    fn check_dependencies(&mut self, service: &Service, services: &BTreeMap<String, Service>) {
        for (target, how) in &service.depends_on {
            let condition = how.get("condition").map_or("service_started", |c| c);
            let healthy = condition == "service_healthy";
            let why = match services.get(target) {
                None => "which is not a service",
                Some(s) if healthy && s.healthcheck.is_none() => "which has no healthcheck",
                Some(_) if !condition.starts_with("service_") => "with an unknown condition",
                Some(_) => continue,
            };
            self.bad(format!("depends_on {target}, {why}"));
        }
    }
}

/// The binary targets of the workspace, as cargo itself lists them.
fn workspace_binaries() -> Result<BTreeSet<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = "metadata --no-deps --offline --format-version 1".split(' ');
    let root = workspace_root();
    let output = Command::new(cargo).args(args).current_dir(root).output()?;
    ensure!(output.status.success(), "cargo metadata failed");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let packages = metadata["packages"].as_array().into_iter().flatten();
    let targets = packages.flat_map(|p| p["targets"].as_array().into_iter().flatten());
    let bins = targets.filter(|t| t["kind"][0] == "bin");
    let names = bins.filter_map(|t| t["name"].as_str());
    Ok(names.map(String::from).collect())
}

fn real(name: &str) -> String {
    std::fs::read_to_string(workspace_root().join(name)).expect(name)
}

/// `text` with the one occurrence of `from` replaced (a mutation must hit what it means to).
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} should occur once");
    text.replacen(from, to, 1)
}

/// The problems of the compose file with `from` replaced by `to`.
fn broken(from: &str, to: &str) -> Vec<String> {
    let compose = edit(&real("docker-compose.yml"), from, to);
    check(&compose, &real("Dockerfile")).problems
}

/// Asserts that one of `problems` mentions `needle`.
fn expect(problems: &[String], needle: &str) {
    let found = problems.iter().any(|p| p.contains(needle));
    assert!(found, "expected {needle:?} in {problems:#?}");
}

#[test]
fn the_compose_file_agrees_with_the_code() {
    let report = check(&real("docker-compose.yml"), &real("Dockerfile"));
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    let every = "api callback-dispatcher callback-processor migrate payment-processor sandbox";
    let loaded = Vec::from_iter(report.loaded).join(" ");
    assert_eq!(loaded, format!("{every} topics"), "not all loaded");
}

#[test]
fn a_wrong_environment_variable_is_reported() {
    let p = broken("PAYGATE_API_BIND:", "PAYGATE_API_BIDN:");
    expect(&p, "configuration: PAYGATE_API_BIDN: unknown field");
    let p = broken("SANDBOX_LISTEN:", "SANDBOX_LISTEN_ADDR:");
    expect(&p, "sandbox: SANDBOX_LISTEN_ADDR is not read");
    let p = broken("PAYGATE_API_BIND:", "SANDBOX_X: x\n      PAYGATE_API_BIND:");
    expect(&p, "api: SANDBOX_X is not read by paygate-api");
    let to = "PAYGATE_GATEWAYS_SANDBOX-PROTO__KIND: grpc\n      PAYGATE_API_BIND:";
    let p = broken("PAYGATE_API_BIND:", to);
    expect(&p, "api: the gateway registry refuses it");
    let p = broken("./deploy/compose.toml:", "./deploy/compose.tom:");
    expect(&p, "topics: paygate would not start");
}

#[test]
fn a_command_that_is_not_a_built_binary_is_reported() {
    let p = broken("[\"paygate-api\"]", "[\"paygate-apii\"]");
    expect(&p, "api: runs [\"paygate-apii\"], not a workspace binary");
    let p = broken("\"paygate\", \"migrate\"", "\"paygate\", \"migrat\"");
    expect(&p, "migrate: `paygate migrat` is not a CLI subcommand");
    let dockerfile = edit(&real("Dockerfile"), "--bin paygate-sandbox \\\n", "");
    let p = check(&real("docker-compose.yml"), &dockerfile).problems;
    expect(&p, "sandbox: paygate-sandbox is not built");
}

#[test]
fn a_port_that_disagrees_is_reported() {
    let p = broken("\"127.0.0.1:8080:8080\"", "\"127.0.0.1:8080:8081\"");
    expect(&p, "api: ports \"127.0.0.1:8080:8081\" is not");
    let p = broken("127.0.0.1:9101/readyz", "127.0.0.1:9111/readyz");
    expect(&p, "payment-processor: port 9101 is not the healthcheck's");
    let p = broken("0.0.0.0:8090", "0.0.0.0:8091");
    expect(&p, "sandbox: port 8091 is not the healthcheck's");
}

#[test]
fn a_dependency_on_a_missing_service_is_reported() {
    let p = broken("depends_on:\n      api:\n", "depends_on:\n      apii:\n");
    expect(&p, "sandbox: depends_on apii, which is not a service");
}
