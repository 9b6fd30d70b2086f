//! `deploy/k8s/` checked against the code (no cluster runs where paygate is tested; the
//! schemas are checked by `scripts/validate-manifests`). Each container runs a binary the
//! Dockerfile installs; its configuration (the ConfigMap's `paygate.toml` where
//! `PAYGATE_CONFIG` points, its literal variables, the pod name, the Secret's variables) loads
//! through `Config::load_from` and the gateway registry as its binary would load it; the ports
//! it declares are the ones it binds; its readiness probe asks `/readyz` and its liveness probe
//! `/healthz` on a declared port; every PodDisruptionBudget and autoscaler names a Deployment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, ensure, Context, Result};
use base64::Engine;
use paygate_core::config::{Config, CONFIG_FILE_VAR};
use paygate_e2e::binaries::workspace_root;
use paygate_gateways::GatewayRegistry;
use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

/// Every document of every manifest.
fn documents() -> Result<Vec<Yaml>> {
    let dir = workspace_root().join("deploy/k8s");
    let mut documents = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Yaml::deserialize(document).with_context(|| file.display().to_string())?;
            if !value.is_null() {
                documents.push(value);
            }
        }
    }
    Ok(documents)
}

fn of_kind<'a>(documents: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

fn name(document: &Yaml) -> String {
    document["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// A string map of a document (`data`, `stringData`).
fn strings(value: &Yaml) -> BTreeMap<String, String> {
    let map = value.as_mapping().into_iter().flatten();
    map.filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}

/// What the manifests provide a container with.
struct Sources {
    files: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    dockerfile: String,
}

impl Sources {
    fn read(documents: &[Yaml]) -> Result<Self> {
        let files = of_kind(documents, "ConfigMap")
            .into_iter()
            .map(|d| (name(d), strings(&d["data"])))
            .collect();
        let secrets = of_kind(documents, "Secret")
            .into_iter()
            .map(|d| (name(d), strings(&d["stringData"])))
            .collect();
        let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile"))?;
        Ok(Self {
            files,
            secrets,
            dockerfile,
        })
    }

    /// The container's environment as the kubelet would set it.
    fn environment(&self, container: &Yaml) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for from in container["envFrom"].as_sequence().into_iter().flatten() {
            let secret = from["secretRef"]["name"].as_str().unwrap_or("");
            let values = self
                .secrets
                .get(secret)
                .ok_or_else(|| anyhow!("envFrom names no Secret {secret:?}"))?;
            env.extend(
                values
                    .iter()
                    .map(|(k, v)| (k.clone(), operator_value(k, v))),
            );
        }
        for var in container["env"].as_sequence().into_iter().flatten() {
            let key = var["name"].as_str().unwrap_or("").to_owned();
            let value = match (
                var["value"].as_str(),
                &var["valueFrom"]["fieldRef"]["fieldPath"],
            ) {
                (Some(value), _) => value.to_owned(),
                (None, path) if *path == "metadata.name" => "paygate-pod-7d9f-x2x1".to_owned(),
                _ => return Err(anyhow!("{key}: neither a value nor the pod name")),
            };
            env.insert(key, value);
        }
        Ok(env)
    }

    /// The file a mounted ConfigMap puts at `path`, written out for `Config::load_from`.
    fn mounted_file(&self, pod: &Yaml, container: &Yaml, path: &str) -> Result<PathBuf> {
        let (dir, file) = path
            .rsplit_once('/')
            .ok_or_else(|| anyhow!("{path} has no dir"))?;
        let mounts = container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten();
        let mount = mounts
            .into_iter()
            .find(|m| m["mountPath"] == dir)
            .ok_or_else(|| anyhow!("nothing is mounted at {dir}"))?;
        let volumes = pod["volumes"].as_sequence().into_iter().flatten();
        let volume = volumes
            .into_iter()
            .find(|v| v["name"] == mount["name"])
            .ok_or_else(|| anyhow!("no volume {:?}", mount["name"]))?;
        let map = volume["configMap"]["name"].as_str().unwrap_or("");
        let text = self
            .files
            .get(map)
            .and_then(|data| data.get(file))
            .ok_or_else(|| anyhow!("ConfigMap {map:?} has no {file}"))?;
        // One directory per read: the tests run in parallel.
        static READS: AtomicUsize = AtomicUsize::new(0);
        let read = READS.fetch_add(1, Ordering::Relaxed);
        let out = workspace_root()
            .join("target/k8s-check")
            .join(format!("{}-{read}", std::process::id()))
            .join(map);
        std::fs::create_dir_all(&out)?;
        let written = out.join(file);
        std::fs::write(&written, text)?;
        Ok(written)
    }
}

/// A Secret's value as an operator fills it in: the committed placeholders (`REPLACE_ME…`)
/// stand for values of the right form, so a keyring key becomes a well-formed one.
fn operator_value(key: &str, value: &str) -> String {
    match value.starts_with("REPLACE_ME") && key.starts_with("PAYGATE_SECRETS_KEYS__") {
        true => base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        false => value.to_owned(),
    }
}

/// The port a probe asks, resolved through the container's named ports.
fn probe_port(container: &Yaml, probe: &str) -> Option<u64> {
    let port = &container[probe]["httpGet"]["port"];
    port.as_u64().or_else(|| {
        let ports = container["ports"].as_sequence()?;
        let named = ports.iter().find(|p| p["name"] == *port)?;
        named["containerPort"].as_u64()
    })
}

fn bound_port(bind: &str) -> Option<u64> {
    bind.rsplit_once(':')?.1.parse().ok()
}

/// Every problem of one container, as its binary would meet them.
fn check_container(sources: &Sources, pod: &Yaml, container: &Yaml) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let binary = container["command"][0].as_str().unwrap_or("").to_owned();
    if !sources
        .dockerfile
        .contains(&format!("/usr/local/bin/{binary}"))
    {
        problems.push(format!(
            "runs {binary:?}, which the Dockerfile does not install"
        ));
    }
    let env = sources.environment(container)?;
    let file = match env.get(CONFIG_FILE_VAR) {
        Some(path) => Some(sources.mounted_file(pod, container, path)?),
        None => None,
    };
    let config = match Config::load_from(file, env) {
        Ok(config) => config,
        Err(e) => return Ok(vec![format!("{binary} would not start: {e}")]),
    };
    if let Err(e) = GatewayRegistry::from_config(&config.gateways) {
        problems.push(format!("the gateway registry refuses it: {e}"));
    }
    // The API, the dispatcher and `paygate migrate` refuse to start without one.
    if let Err(e) = config.secrets.keyring() {
        problems.push(format!("no keyring for webhook secrets: {e}"));
    }
    if binary == "paygate" {
        return Ok(problems); // a job: no ports, no probes
    }
    let declared: Vec<u64> = container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    let metrics = config
        .telemetry
        .metrics_bind
        .as_deref()
        .and_then(bound_port);
    let (serves, probed) = if binary == "paygate-api" {
        let api = bound_port(&config.api.bind);
        (vec![api, metrics], api)
    } else {
        (vec![metrics], metrics)
    };
    for port in &serves {
        match port {
            Some(port) if declared.contains(port) => {}
            _ => problems.push(format!("binds {port:?}, not a declared port {declared:?}")),
        }
    }
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        if container[probe]["httpGet"]["path"] != path {
            problems.push(format!("{probe} does not ask {path}"));
        }
        if probe_port(container, probe) != probed {
            problems.push(format!("{probe} asks a port that does not serve it"));
        }
    }
    Ok(problems)
}

#[test]
fn the_manifests_agree_with_the_code() -> Result<()> {
    let documents = documents()?;
    let sources = Sources::read(&documents)?;
    let deployments = of_kind(&documents, "Deployment");
    ensure!(deployments.len() == 4, "one Deployment per service");
    let mut problems = Vec::new();
    for workload in deployments.iter().chain(&of_kind(&documents, "Job")) {
        let pod = &workload["spec"]["template"]["spec"];
        let containers = pod["containers"].as_sequence().into_iter().flatten();
        let init = pod["initContainers"].as_sequence().into_iter().flatten();
        for container in containers.chain(init) {
            for problem in check_container(&sources, pod, container)? {
                problems.push(format!(
                    "{} / {:?}: {problem}",
                    name(workload),
                    container["name"]
                ));
            }
        }
    }
    let names: Vec<String> = deployments.iter().map(|d| name(d)).collect();
    for budget in of_kind(&documents, "PodDisruptionBudget") {
        let selects = &budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"];
        if !names.iter().any(|n| selects == n.as_str()) {
            problems.push(format!("budget {} selects no Deployment", name(budget)));
        }
    }
    for scaler in of_kind(&documents, "HorizontalPodAutoscaler") {
        let target = &scaler["spec"]["scaleTargetRef"]["name"];
        if !names.iter().any(|n| target == n.as_str()) {
            problems.push(format!("autoscaler {} scales no Deployment", name(scaler)));
        }
    }
    ensure!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

#[test]
fn a_broken_container_is_reported() -> Result<()> {
    let documents = documents()?;
    let sources = Sources::read(&documents)?;
    let deployment = of_kind(&documents, "Deployment")
        .into_iter()
        .find(|d| name(d) == "paygate-payment-processor")
        .ok_or_else(|| anyhow!("no processor"))?;
    let pod = &deployment["spec"]["template"]["spec"];
    let mut container = pod["containers"][0].clone();
    container["ports"][0]["containerPort"] = Yaml::from(9999);
    container["livenessProbe"]["httpGet"]["path"] = Yaml::from("/readyz");
    let problems = check_container(&sources, pod, &container)?;
    ensure!(problems.len() == 4, "{problems:#?}");

    let mut unknown = pod["containers"][0].clone();
    if let Some(env) = unknown["env"].as_sequence_mut() {
        let var: Yaml =
            serde_yaml_ng::from_str("{name: PAYGATE_PROCESSOR_CONCURENCY, value: '8'}")?;
        env.push(var);
    }
    let problems = check_container(&sources, pod, &unknown)?;
    ensure!(
        problems.len() == 1 && problems[0].contains("CONCURENCY"),
        "{problems:#?}"
    );
    Ok(())
}
