//! `deploy/`, `Dockerfile`: every manifest parses strictly as its Kubernetes
//! kind, the pieces name each other correctly, and the example config,
//! runbook and Alertmanager receiver work with this build of pitcrew, laid
//! out on disk the way the pods mount them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use clap::Parser;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pitcrew::clock::ManualClock;
use pitcrew::config::Config;
use pitcrew::store::sqlite::SqliteStore;
use pitcrew::store::{ExecutionFilter, State};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::support::{Harness, alert, payload, repo, start_time};

const NAMESPACE: &str = "pitcrew";

/// Every document in `deploy/*.yaml`, parsed as its kind.
#[derive(Default)]
struct Manifests {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: BTreeMap<String, ConfigMap>,
    stateful_sets: Vec<StatefulSet>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    network_policies: Vec<NetworkPolicy>,
}

fn manifests() -> Manifests {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "deploy/ lost manifests: {files:?}");
    let mut out = Manifests::default();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name} document {}: {e}", i + 1));
            if value.is_null() {
                continue;
            }
            let at = format!("{name} document {}", i + 1);
            let kind = value["kind"].as_str().unwrap_or_else(|| panic!("{at}: no kind"));
            let namespace = value["metadata"]["namespace"].as_str();
            match kind {
                "ClusterRole" | "ClusterRoleBinding" => assert_eq!(namespace, None, "{at}: cluster-scoped"),
                _ => assert_eq!(namespace, Some(NAMESPACE), "{at}: every namespaced object goes to one namespace"),
            }
            let at = at.as_str();
            match kind {
                "ServiceAccount" => out.service_accounts.push(strict(at, &value).unwrap()),
                "ClusterRole" => out.cluster_roles.push(strict(at, &value).unwrap()),
                "ClusterRoleBinding" => out.cluster_role_bindings.push(strict(at, &value).unwrap()),
                "ConfigMap" => {
                    let cm: ConfigMap = strict(at, &value).unwrap();
                    let cm_name = cm.metadata.name.clone().unwrap();
                    assert!(
                        out.config_maps.insert(cm_name.clone(), cm).is_none(),
                        "{at}: ConfigMap {cm_name} twice"
                    );
                }
                "StatefulSet" => out.stateful_sets.push(strict(at, &value).unwrap()),
                "Deployment" => out.deployments.push(strict(at, &value).unwrap()),
                "Service" => out.services.push(strict(at, &value).unwrap()),
                "PodDisruptionBudget" => out.pdbs.push(strict(at, &value).unwrap()),
                "NetworkPolicy" => out.network_policies.push(strict(at, &value).unwrap()),
                other => panic!("{at}: kind {other} is not checked by this test; add it here"),
            }
        }
    }
    out
}

/// Parses `value` as `T` and fails on anything `T` would drop or change: a
/// misspelt or misplaced field, or a value of the wrong type coerced. (The
/// k8s-openapi types skip unknown fields, as the API server does by default,
/// which hides typos until the pod misbehaves.)
fn strict<T: DeserializeOwned + serde::Serialize>(at: &str, value: &Value) -> Result<T, String> {
    let typed: T = serde_path_to_error::deserialize(value.clone()).map_err(|e| format!("{at}: {}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).unwrap();
    match difference(value, &back, "") {
        Some(d) => Err(format!("{at}: {d}")),
        None => Ok(typed),
    }
}

fn difference(given: &Value, parsed: &Value, path: &str) -> Option<String> {
    match (given, parsed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = format!("{path}.{k}");
                match b.get(k) {
                    None => return Some(format!("{here}: not a field here (misspelt, or in the wrong place)")),
                    Some(w) => {
                        if let Some(d) = difference(v, w, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            // Keys only in `parsed` are the type's own additions (k8s-openapi
            // writes apiVersion and kind into volumeClaimTemplates): nothing given was lost.
            None
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| difference(v, w, &format!("{path}[{i}]"))),
        _ if given == parsed => None,
        _ => Some(format!("{path}: {given} reads back as {parsed}")),
    }
}

#[test]
fn every_manifest_parses_strictly_as_its_kind() {
    let m = manifests();
    assert_eq!(m.service_accounts.len(), 1);
    assert_eq!(m.cluster_roles.len(), 1, "rbac.yaml");
    assert_eq!(m.cluster_role_bindings.len(), 1);
    assert_eq!(m.stateful_sets.len(), 1);
    assert_eq!(m.deployments.len(), 1);
    assert_eq!(m.services.len(), 1);
    assert_eq!(m.pdbs.len(), 1);
    assert_eq!(m.network_policies.len(), 1);
    assert!(m.config_maps.contains_key("pitcrew") && m.config_maps.contains_key("pitcrew-postgres"));
}

#[test]
fn the_strict_parse_refuses_misspelt_misplaced_and_mistyped_fields() {
    let text = std::fs::read_to_string(repo().join("deploy/statefulset.yaml")).unwrap();
    let good: Value = serde_yaml::from_str(&text).unwrap();
    strict::<StatefulSet>("as shipped", &good).unwrap();

    let mut misspelt = good.clone();
    misspelt["spec"]["replica"] = json!(2);
    let e = strict::<StatefulSet>("misspelt", &misspelt).unwrap_err();
    assert!(e.contains(".spec.replica: not a field here"), "{e}");

    let mut misplaced = good.clone();
    let container = misplaced["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap();
    let security = container.remove("securityContext").unwrap();
    container.insert("security".into(), security);
    let e = strict::<StatefulSet>("misplaced", &misplaced).unwrap_err();
    assert!(e.contains(".spec.template.spec.containers[0].security: not a field here"), "{e}");

    let mut mistyped = good;
    mistyped["spec"]["replicas"] = json!("one");
    let e = strict::<StatefulSet>("mistyped", &mistyped).unwrap_err();
    assert!(e.contains("spec.replicas"), "{e}");
}

fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    assert!(selector.match_expressions.is_none(), "only matchLabels selectors are checked here");
    selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
}

/// The pitcrew workloads: (name, replicas, pod labels, pod spec).
fn workloads(m: &Manifests) -> Vec<(String, i32, BTreeMap<String, String>, PodSpec)> {
    let mut out = Vec::new();
    for s in &m.stateful_sets {
        let spec = s.spec.as_ref().unwrap();
        let labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
        assert!(matches(&spec.selector, &labels), "StatefulSet selector must match its pods");
        out.push((
            "StatefulSet".to_string(),
            spec.replicas.unwrap(),
            labels,
            spec.template.spec.clone().unwrap(),
        ));
    }
    for d in &m.deployments {
        let spec = d.spec.as_ref().unwrap();
        let labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
        assert!(matches(&spec.selector, &labels), "Deployment selector must match its pods");
        out.push((
            "Deployment".to_string(),
            spec.replicas.unwrap(),
            labels,
            spec.template.spec.clone().unwrap(),
        ));
    }
    out
}

fn pitcrew_container(spec: &PodSpec) -> &Container {
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

/// What the Dockerfile says about the image the manifests run.
struct Image {
    user: String,
    expose: i32,
    volume: Vec<String>,
    cmd: Vec<String>,
    build: String,
}

fn image() -> Image {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let instruction = |name: &str| -> String {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{name} "))).collect();
        assert_eq!(lines.len(), 1, "one {name} in the Dockerfile");
        lines[0][name.len() + 1..].trim().to_string()
    };
    let run_lines: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    Image {
        user: instruction("USER"),
        expose: instruction("EXPOSE").parse().unwrap(),
        volume: serde_json::from_str(&instruction("VOLUME")).unwrap(),
        cmd: serde_json::from_str(&instruction("CMD")).unwrap(),
        build: run_lines,
    }
}

#[test]
fn the_pieces_name_each_other_and_run_locked_down() {
    let m = manifests();
    let image = image();
    assert!(
        image.build.contains("cargo build --profile dist --locked"),
        "the image ships the dist build"
    );
    let (uid, gid) = image.user.split_once(':').expect("USER uid:gid");
    let uid: i64 = uid.parse().expect("a numeric uid: runAsNonRoot cannot check a name");
    let gid: i64 = gid.parse().unwrap();
    assert_ne!(uid, 0);

    let sa = &m.service_accounts[0];
    let role = &m.cluster_roles[0];
    let binding = &m.cluster_role_bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), Some(&subjects[0].name)),
        ("ServiceAccount", sa.metadata.name.as_ref())
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));

    let service = &m.services[0];
    let service_spec = service.spec.as_ref().unwrap();
    let service_labels = service_spec.selector.clone().unwrap();
    let [service_port] = service_spec.ports.as_deref().unwrap() else {
        panic!("one Service port")
    };
    let policy = m.network_policies[0].spec.as_ref().unwrap();
    let pdb = m.pdbs[0].spec.as_ref().unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));

    let workloads = workloads(&m);
    for (kind, replicas, labels, spec) in &workloads {
        let at = kind.as_str();
        match at {
            "StatefulSet" => assert_eq!(*replicas, 1, "SQLite has one writer process"),
            _ => assert!(*replicas >= 2, "the PostgreSQL variant is for replicas"),
        }
        // The PDB guards the replicated variant only: on one replica it would block every drain.
        assert_eq!(
            matches(pdb.selector.as_ref().unwrap(), labels),
            at == "Deployment",
            "{at}: PodDisruptionBudget"
        );
        assert!(
            service_labels.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "{at}: the Service selects its pods"
        );
        assert!(
            matches(policy.pod_selector.as_ref().unwrap(), labels),
            "{at}: the NetworkPolicy applies to its pods"
        );
        assert_eq!(spec.service_account_name.as_ref(), sa.metadata.name.as_ref(), "{at}");

        let pod_security = spec.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true), "{at}");
        assert_eq!(
            (pod_security.run_as_user, pod_security.run_as_group),
            (Some(uid), Some(gid)),
            "{at}: the image's USER"
        );
        assert_eq!(pod_security.fs_group, Some(gid), "{at}: the state volume and secrets readable");
        assert_eq!(pod_security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault", "{at}");

        let c = pitcrew_container(spec);
        let security = c.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true), "{at}");
        assert_eq!(security.allow_privilege_escalation, Some(false), "{at}");
        assert_eq!(security.run_as_non_root, Some(true), "{at}");
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{at}"
        );
        assert_eq!(c.args.as_ref(), Some(&image.cmd), "{at}: the same command as the image's CMD");

        let [port] = c.ports.as_deref().unwrap() else {
            panic!("{at}: one container port")
        };
        assert_eq!(port.container_port, image.expose, "{at}: the port the image exposes");
        assert_eq!(
            service_port.target_port,
            Some(IntOrString::String(port.name.clone().unwrap())),
            "{at}: Service targetPort"
        );
        let policy_ports: Vec<_> = policy.ingress.iter().flatten().flat_map(|r| r.ports.iter().flatten()).collect();
        assert!(!policy_ports.is_empty());
        for p in policy_ports {
            assert_eq!(
                p.port,
                Some(IntOrString::Int(port.container_port)),
                "{at}: ingress is only to the serve port"
            );
        }

        let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{at}: an HTTP probe"));
            assert_eq!(get.port, IntOrString::String(port.name.clone().unwrap()), "{at}");
            get.path.clone().unwrap()
        };
        assert_eq!(probe_path(&c.liveness_probe), "/healthz", "{at}");
        assert_eq!(probe_path(&c.startup_probe), "/healthz", "{at}");
        assert_eq!(probe_path(&c.readiness_probe), "/readyz", "{at}");

        let state = c.volume_mounts.iter().flatten().find(|v| image.volume.contains(&v.mount_path));
        let state = state.unwrap_or_else(|| panic!("{at}: the image's VOLUME {:?} is mounted", image.volume));
        assert_ne!(state.read_only, Some(true), "{at}: state is written");
    }
}

/// A pod's files laid out under a temporary root: each of the container's
/// volume mounts is a folder holding what the kubelet would put there
/// (ConfigMap and Secret items; empty for claims and emptyDirs).
struct Pod {
    root: tempfile::TempDir,
    /// (mountPath, local folder), longest mountPath first.
    mounts: Vec<(String, PathBuf)>,
    /// Secret keys and the values written for them.
    secrets: BTreeMap<String, String>,
    args: Vec<String>,
    port: i32,
}

impl Pod {
    fn lay_out(m: &Manifests, spec: &PodSpec, claims: &[String]) -> Pod {
        let root = tempfile::tempdir().unwrap();
        let c = pitcrew_container(spec);
        let volumes = spec.volumes.as_deref().unwrap_or_default();
        let mut mounts = Vec::new();
        let mut secrets = BTreeMap::new();
        let write_items = |dir: &Path, config_map: &str, items: &Option<Vec<KeyToPath>>| {
            let data = m.config_maps[config_map].data.as_ref().unwrap();
            for item in items.as_deref().expect("ConfigMap volumes list their items") {
                let text = data
                    .get(&item.key)
                    .unwrap_or_else(|| panic!("ConfigMap {config_map} has no key {}", item.key));
                let file = dir.join(&item.path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, text).unwrap();
            }
        };
        for mount in c.volume_mounts.iter().flatten() {
            let dir = root.path().join(&mount.name);
            std::fs::create_dir_all(&dir).unwrap();
            match volumes.iter().find(|v| v.name == mount.name) {
                Some(v) if v.config_map.is_some() => {
                    let cm = v.config_map.as_ref().unwrap();
                    write_items(&dir, &cm.name, &cm.items);
                }
                Some(v) if v.projected.is_some() => {
                    for source in v.projected.as_ref().unwrap().sources.iter().flatten() {
                        let cm = source.config_map.as_ref().expect("only ConfigMaps are projected");
                        write_items(&dir, &cm.name, &cm.items);
                    }
                }
                Some(v) if v.secret.is_some() => {
                    for item in v.secret.as_ref().unwrap().items.as_deref().expect("the Secret's keys are listed") {
                        let value = format!("{}-{}", item.key, "0123456789abcdef0123456789abcdef");
                        std::fs::write(dir.join(&item.path), &value).unwrap();
                        secrets.insert(item.key.clone(), value);
                    }
                }
                Some(v) => assert!(v.empty_dir.is_some(), "volume {} is an emptyDir", v.name),
                None => assert!(
                    claims.contains(&mount.name),
                    "volume {} is neither in the pod nor claimed",
                    mount.name
                ),
            }
            mounts.push((mount.mount_path.clone(), dir));
        }
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Pod {
            root,
            mounts,
            secrets,
            args: c.args.clone().unwrap(),
            port: c.ports.as_deref().unwrap()[0].container_port,
        }
    }

    /// `text` with each path under a mount turned into the local one. A path
    /// on no volume is left as it is, and then fails to load.
    fn localise(&self, text: &str) -> String {
        let alternatives: Vec<String> = self.mounts.iter().map(|(p, _)| regex::escape(p)).collect();
        let pattern = regex::Regex::new(&format!("(?:{})(?:/|\\b)", alternatives.join("|"))).unwrap();
        pattern
            .replace_all(text, |caps: &regex::Captures| {
                let found = &caps[0];
                let (path, dir) = self.mounts.iter().find(|(p, _)| found.starts_with(p.as_str())).unwrap();
                format!("{}{}", dir.display(), &found[path.len()..])
            })
            .into_owned()
    }

    fn local(&self, path: &str) -> PathBuf {
        PathBuf::from(self.localise(path))
    }

    /// The config named by the container's args, with its paths made local.
    fn config_path(&self) -> PathBuf {
        let cli = pitcrew::cli::Cli::try_parse_from(std::iter::once("pitcrew".to_string()).chain(self.args.iter().cloned()))
            .unwrap_or_else(|e| panic!("the container's args are not a pitcrew command line: {e}"));
        assert!(matches!(cli.command, pitcrew::cli::Command::Serve(_)), "the container serves");
        let path = cli.config.expect("the container names its config");
        let local = self.local(path.to_str().unwrap());
        assert!(
            local.starts_with(self.root.path()),
            "the config {} is on a mounted volume",
            path.display()
        );
        let text = std::fs::read_to_string(&local).unwrap();
        std::fs::write(&local, self.localise(&text)).unwrap();
        local
    }

    fn mount_of(&self, local: &Path) -> &str {
        let (path, _) = self
            .mounts
            .iter()
            .find(|(_, dir)| local.starts_with(dir))
            .unwrap_or_else(|| panic!("{} is on no volume", local.display()));
        path
    }
}

fn check_config(pod: &Pod, config: &Config, at: &str) {
    assert_eq!(
        config.listen.port(),
        u16::try_from(pod.port).unwrap(),
        "{at}: listens on the container port"
    );
    assert!(
        config.listen.ip().is_unspecified(),
        "{at}: listens where the Service and probes reach it"
    );
    assert_eq!(
        config.webhook_token.as_deref(),
        pod.secrets.get("webhook-token").map(String::as_str),
        "{at}"
    );
    assert!(
        !config.tokens.is_empty(),
        "{at}: serve refuses a non-loopback listen without API tokens"
    );
    assert_eq!(
        pod.mount_of(&config.state_dir),
        "/var/lib/pitcrew",
        "{at}: state on the writable volume"
    );
    for runbooks in &config.runbooks {
        assert_eq!(pod.mount_of(runbooks), "/etc/pitcrew", "{at}: runbooks from the ConfigMap");
    }
    assert_eq!(config.retention, Some(pitcrew::units::Duration::from_secs(90 * 24 * 3600)), "{at}");
}

/// The StatefulSet's pod, from its own files: config and runbook load, the
/// runbook's tests pass, the probes answer, and Alertmanager's receiver as
/// configured in deploy/alertmanager.yml gets its alert in.
#[tokio::test]
async fn the_embedded_store_example_serves_what_alertmanager_sends() {
    let m = manifests();
    let set = &m.stateful_sets[0];
    let spec = set.spec.as_ref().unwrap();
    let claims: Vec<String> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    let pod = Pod::lay_out(&m, spec.template.spec.as_ref().unwrap(), &claims);
    let path = pod.config_path();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("deploy/configmap.yaml pitcrew.yaml: {e}"));
    check_config(&pod, &config, "configmap.yaml");

    let runbooks =
        pitcrew::runbook::compile::load(&config, &config.runbooks).unwrap_or_else(|d| panic!("deploy/configmap.yaml runbooks:\n{d}"));
    let names: Vec<&str> = runbooks.runbooks.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["restart-crashlooping-deployment"]);
    let rb = &runbooks.runbooks[0];
    assert!(!rb.tests.is_empty());
    for test in &rb.tests {
        let mismatches = pitcrew::runbook::selftest::run(&runbooks, rb, test);
        assert!(mismatches.is_empty(), "{}: {mismatches:?}", test.name);
    }

    let clock = ManualClock::new(start_time());
    let store = Arc::new(SqliteStore::open(&config.state_dir, config.redactor.clone(), Arc::new(clock.clone())).unwrap());
    let webhook_token = config.webhook_token.clone().unwrap();
    let h = Harness::with_store(tempfile::tempdir().unwrap(), clock, Arc::new(config), Arc::new(runbooks), store);

    // The kubelet sends the pod's address as Host.
    let host = format!("10.1.2.3:{}", pod.port);
    for probe in ["/healthz", "/readyz"] {
        let (status, body) = h.call("GET", probe, &[("host", &host)], "").await;
        assert_eq!(status, StatusCode::OK, "{probe}: {body}");
    }

    let receiver = alertmanager_receiver();
    let service = &m.services[0];
    let service_port = service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    let url = reqwest::Url::parse(&receiver.url).unwrap();
    assert_eq!(url.scheme(), "http");
    assert_eq!(
        url.host_str(),
        Some(format!("{}.{}.svc", service.metadata.name.as_deref().unwrap(), NAMESPACE).as_str()),
        "the receiver names the Service"
    );
    assert_eq!(url.port(), Some(u16::try_from(service_port).unwrap()));

    let body = payload(vec![alert(&[
        ("alertname", "KubePodCrashLooping"),
        ("severity", "critical"),
        ("namespace", "shop"),
        ("deployment", "checkout"),
    ])])
    .to_string();
    let host = format!("{}:{}", url.host_str().unwrap(), service_port);
    let json_type = ("content-type", "application/json");
    let (status, _) = h.call("POST", url.path(), &[("host", &host), json_type], body.clone()).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "{}: pitcrew's webhook path answers 401 without the token (404 is no webhook path)",
        url.path()
    );
    // Alertmanager reads credentials_file and sends `Authorization: Bearer <it>`.
    let bearer = format!("{} {webhook_token}", receiver.auth_type);
    let (status, reply) = h
        .call("POST", url.path(), &[("host", &host), json_type, ("authorization", &bearer)], body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let queued = h
        .store()
        .executions(ExecutionFilter {
            state: Some(State::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].runbook.as_str(), queued[0].target.as_str()),
        ("restart-crashlooping-deployment", "shop/checkout")
    );
}

/// The Deployment's pod: its config loads with pitcrew's loader from the
/// projected volume, with the runbooks of configmap.yaml.
#[test]
fn the_postgres_example_config_loads() {
    let m = manifests();
    let deployment = &m.deployments[0];
    let pod = Pod::lay_out(&m, deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap(), &[]);
    let path = pod.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        doc["store"],
        json!({"url": "postgres://pitcrew@postgres:5432/pitcrew", "password_file": pod.local("/var/run/secrets/pitcrew/db-password")}),
        "the store section"
    );
    assert!(
        pod.local("/var/run/secrets/pitcrew/db-password").exists(),
        "the password file is mounted"
    );
    let config = Config::load(&path).unwrap_or_else(|e| panic!("deploy/deployment-postgres.yaml pitcrew.yaml: {e}"));
    let store = config.store.as_ref().expect("the PostgreSQL store is configured");
    assert_eq!(store.url, "postgres://pitcrew@postgres:5432/pitcrew");
    assert!(store.password.is_some(), "the password is read from its file");
    check_config(&pod, &config, "deployment-postgres.yaml");
    let runbooks = pitcrew::runbook::compile::load(&config, &config.runbooks).unwrap_or_else(|d| panic!("runbooks:\n{d}"));
    assert_eq!(runbooks.runbooks.len(), 1);
}

struct Receiver {
    url: String,
    auth_type: String,
}

/// The pitcrew receiver of deploy/alertmanager.yml, checked for what pitcrew
/// needs: resolves sent, a bearer token read from a file, every alert routed
/// to it without stopping the routes that page people.
fn alertmanager_receiver() -> Receiver {
    let file = repo().join("deploy/alertmanager.yml");
    let am: Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let receivers = am["receivers"].as_array().unwrap();
    let pitcrew: Vec<&Value> = receivers.iter().filter(|r| r["name"] == "pitcrew").collect();
    let [pitcrew] = pitcrew[..] else {
        panic!("one receiver named pitcrew")
    };
    let [webhook] = &pitcrew["webhook_configs"].as_array().unwrap()[..] else {
        panic!("one webhook config")
    };
    assert_eq!(webhook["send_resolved"], true, "resolves cancel runs not yet started");
    let auth = &webhook["http_config"]["authorization"];
    assert!(
        auth["credentials_file"].as_str().is_some_and(|f| f.starts_with('/')),
        "the token comes from a file"
    );
    assert!(auth.get("credentials").is_none(), "no token inline in the config");
    let routes = am["route"]["routes"].as_array().unwrap();
    let route = routes.iter().find(|r| r["receiver"] == "pitcrew").expect("a route to pitcrew");
    assert_eq!(route["continue"], true, "the routes after pitcrew's still page people");
    assert!(route.get("matchers").is_none(), "pitcrew sees every alert; its runbooks choose");
    assert!(!route["group_by"].as_array().unwrap().is_empty());

    // Alertmanager's own check, where it is installed (scripts/test.sh installs it).
    match std::process::Command::new("amtool").arg("check-config").arg(&file).output() {
        Ok(out) => assert!(
            out.status.success(),
            "amtool check-config: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!("amtool not installed: Alertmanager's own check skipped"),
        Err(e) => panic!("amtool: {e}"),
    }
    Receiver {
        url: webhook["url"].as_str().unwrap().to_string(),
        auth_type: auth["type"].as_str().unwrap_or("Bearer").to_string(),
    }
}

/// The alert rules on pitcrew and the operations guide name only metrics
/// pitcrew exports, and Prometheus accepts the rules.
#[test]
fn the_alert_rules_and_the_guide_name_real_metrics() {
    let m = pitcrew::metrics::Metrics::default();
    // Families appear once they have a child.
    m.execution("failed");
    m.rejected("unauthorized");
    m.step("log", 0.001);
    m.budget("availability", Some(1.0));
    let exported: Vec<String> = m
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let named = regex::Regex::new(r"\bpitcrew_[a-z_]+[a-z]").unwrap();
    let rules_file = repo().join("deploy/prometheus-rules.yml");
    let rules: Value = serde_yaml::from_str(&std::fs::read_to_string(&rules_file).unwrap()).unwrap();
    let exprs: Vec<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["expr"].as_str().unwrap())
        .collect();
    let guide = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    for (source, text) in [("deploy/prometheus-rules.yml", exprs.join("\n")), ("docs/operations.md", guide)] {
        let names: Vec<&str> = named.find_iter(&text).map(|n| n.as_str()).collect();
        assert!(names.len() >= 3, "{source} names pitcrew's metrics");
        for name in names {
            let histogram = format!("{name}_count");
            assert!(
                exported.iter().any(|e| e == name || *e == histogram),
                "{source}: {name} is not a metric pitcrew exports: {exported:?}"
            );
        }
    }
    match std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules_file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!("promtool not installed: Prometheus' own check skipped"),
        Err(e) => panic!("promtool: {e}"),
    }
}
