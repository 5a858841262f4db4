//! Kubernetes actions through the `kube` client.
//!
//! Shared here: one client per configured cluster (`kubernetes.clusters`;
//! in-cluster, or a kubeconfig context), name checks done before any request is sent, and the mapping of
//! API server answers to step outcomes. The client never retries on its own:
//! a PodDisruptionBudget refusing an eviction answers 429, and that must
//! reach the step at once instead of hiding behind minutes of backoff.

pub mod delete_pods;
pub mod logs;
pub mod patch;
pub mod rollout_restart;
pub mod scale;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::apps::v1 as apps;
use kube::api::{ApiResource, PatchParams};
use kube::config::KubeConfigOptions;

use super::{ActionContext, ActionError};
use crate::config::{ClusterSource, Config};

pub(crate) const WORKLOADS: &[&str] = &["deployment", "statefulset", "daemonset"];

/// The `cluster` parameter every Kubernetes action takes.
pub(crate) const CLUSTER_DOC: &str =
    "which of kubernetes.clusters to act on, e.g. {{alert.labels.cluster}} (default: kubernetes.default_cluster)";

/// Reads `cluster`: a string, as rendered.
pub(crate) fn opt_cluster<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    crate::action::lenient::string(d).map(Some)
}

/// The field manager our writes show in `managedFields`.
const FIELD_MANAGER: &str = "pitcrew";

/// One client per configured cluster, built on first use and reused by
/// every later step. A cluster whose client cannot be built (a broken
/// kubeconfig, a missing context) fails only the steps that name it, and
/// is tried again by the next one: the others are untouched.
pub struct Clusters {
    slots: BTreeMap<String, Slot>,
    default: Option<String>,
}

struct Slot {
    source: ClusterSource,
    client: tokio::sync::OnceCell<kube::Client>,
    /// Clients built for this cluster (one, once built).
    built: AtomicU64,
}

impl Clusters {
    pub fn new(config: &Config) -> Clusters {
        let slots = config
            .kubernetes_clusters
            .iter()
            .map(|(name, source)| {
                let slot = Slot {
                    source: source.clone(),
                    client: tokio::sync::OnceCell::new(),
                    built: AtomicU64::new(0),
                };
                (name.clone(), slot)
            })
            .collect();
        Clusters {
            slots,
            default: config.kubernetes_default_cluster.clone(),
        }
    }

    /// Sets a cluster's client before first use (tests, embedders).
    /// `false` if the cluster is not configured or has its client already.
    pub fn set(&self, cluster: &str, client: kube::Client) -> bool {
        self.slots.get(cluster).is_some_and(|slot| slot.client.set(client).is_ok())
    }

    /// How many clients were built for `cluster` so far.
    pub fn built(&self, cluster: &str) -> u64 {
        self.slots.get(cluster).map_or(0, |slot| slot.built.load(Ordering::Relaxed))
    }

    /// The cluster a step acts on: the one it names, else the default.
    /// Checked before any request; the error names the known clusters.
    pub fn resolve<'a>(&'a self, named: Option<&'a str>) -> Result<&'a str, ActionError> {
        let known = || self.slots.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        let name = match named {
            Some(name) => name,
            None => self.default.as_deref().ok_or_else(|| {
                ActionError::input(
                    "cluster",
                    format!(
                        "no cluster named and kubernetes.default_cluster is not set; configured clusters: {}",
                        known()
                    ),
                )
            })?,
        };
        if self.slots.contains_key(name) {
            Ok(name)
        } else {
            Err(ActionError::input(
                "cluster",
                format!("unknown cluster {name:?}; configured clusters: {}", known()),
            ))
        }
    }

    /// The client for a resolved cluster, built on first use.
    async fn client(&self, cluster: &str) -> Result<kube::Client, ActionError> {
        let slot = self
            .slots
            .get(cluster)
            .ok_or_else(|| ActionError::input("cluster", format!("unknown cluster {cluster:?}")))?;
        slot.client
            .get_or_try_init(|| async {
                let client = connect(&slot.source).await.map_err(|e| match e {
                    ActionError::Unavailable(m) => ActionError::Unavailable(format!("cluster {cluster}: {m}")),
                    other => other,
                })?;
                slot.built.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cluster, "kubernetes client built");
                Ok(client)
            })
            .await
            .cloned()
    }
}

/// The client for the cluster a step names (`cluster`), else the default
/// cluster. An unknown cluster fails the step before any request.
pub async fn client(cx: &ActionContext<'_>, cluster: Option<&str>) -> Result<kube::Client, ActionError> {
    let name = cx.deps.kube.resolve(cluster)?;
    cx.deps.kube.client(name).await
}

async fn connect(source: &ClusterSource) -> Result<kube::Client, ActionError> {
    let config = match source {
        ClusterSource::InCluster => {
            kube::Config::incluster().map_err(|e| ActionError::Unavailable(format!("not in a cluster: {}", chain(&e))))?
        }
        ClusterSource::Kubeconfig { kubeconfig, context } => {
            let options = KubeConfigOptions {
                context: Some(context.clone()),
                ..KubeConfigOptions::default()
            };
            let loaded = match kubeconfig {
                Some(path) => match kube::config::Kubeconfig::read_from(path) {
                    Ok(file) => kube::Config::from_custom_kubeconfig(file, &options).await,
                    Err(e) => Err(e),
                },
                None => kube::Config::from_kubeconfig(&options).await,
            };
            let shown = kubeconfig
                .as_ref()
                .map_or("the default kubeconfig".to_string(), |p| p.display().to_string());
            loaded.map_err(|e| ActionError::Unavailable(format!("kubeconfig {shown}, context {context}: {}", chain(&e))))?
        }
        ClusterSource::Auto { context } => auto(context.clone()).await?,
    };
    from_config(config)
}

/// Without `kubernetes.clusters`: in a pod, the pod's cluster, else the
/// kubeconfig.
async fn auto(context: Option<String>) -> Result<kube::Config, ActionError> {
    Ok(match (&context, kube::Config::incluster()) {
        (None, Ok(in_cluster)) => in_cluster,
        // A context named in pitcrew's config picks a cluster on purpose: in a
        // pod that also has a kubeconfig, acting on the pod's own cluster
        // instead would be acting on the wrong one.
        (_, in_cluster) => {
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_kubeconfig(&options).await.map_err(|e| {
                let also = match (&context, in_cluster) {
                    (None, Err(ic)) => format!("; not in a cluster either: {}", chain(&ic)),
                    _ => String::new(),
                };
                ActionError::Unavailable(format!("no kubernetes configuration: kubeconfig: {}{also}", chain(&e)))
            })?
        }
    })
}

/// Builds a client that never retries: every answer, 429 included, goes
/// straight back to the action.
pub fn from_config(mut config: kube::Config) -> Result<kube::Client, ActionError> {
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| ActionError::Unavailable(format!("cannot build the kubernetes client: {}", chain(&e))))
}

/// A client for an API server at `url` without credentials (test servers,
/// `kubectl proxy`), built like [`from_config`].
pub fn client_for_url(url: &str) -> Result<kube::Client, ActionError> {
    let uri = url.parse().map_err(|e| ActionError::input("url", format!("{url:?}: {e}")))?;
    from_config(kube::Config::new(uri))
}

/// The cluster each Kubernetes step of a run would act on, for `pitcrew
/// match`: `{"step", "cluster"}`, or `{"step", "error"}` when the name is
/// unknown or cannot be told before the run (it renders from a step's output).
pub fn step_clusters(
    set: &crate::runbook::RunbookSet,
    rb: &crate::runbook::Runbook,
    alert: Option<&crate::alert::Alert>,
    resolved: &crate::runbook::Resolved,
    config: &Config,
) -> Vec<serde_json::Value> {
    let clusters = Clusters::new(config);
    let ctx = crate::runbook::RunbookSet::step_context(rb, alert, resolved, "", &serde_json::Map::new(), None);
    let mut out = Vec::new();
    for step in rb.steps.iter().chain(rb.on_failure.iter()) {
        if !step.action.spec().name.starts_with("kubernetes.") {
            continue;
        }
        let named = match step.with.get("cluster").map(|t| set.templates.render_string(t, &ctx)) {
            None => Ok(None),
            Some(Ok(name)) => Ok(Some(name)),
            Some(Err(e)) => Err(format!("decided when the step runs: {e}")),
        };
        let cluster = named.and_then(|named| clusters.resolve(named.as_deref()).map(str::to_string).map_err(|e| e.to_string()));
        out.push(match cluster {
            Ok(cluster) => serde_json::json!({"step": step.name, "cluster": cluster}),
            Err(error) => serde_json::json!({"step": step.name, "error": error}),
        });
    }
    out
}

/// RFC 1123 label (namespaces, container names) — checked before any request goes out.
pub fn check_namespace(field: &str, v: &str) -> Result<(), ActionError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ActionError::input(field, format!("{v:?} is not a valid RFC 1123 label")))
    }
}

/// RFC 1123 subdomain (object names).
pub fn check_name(field: &str, v: &str) -> Result<(), ActionError> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ActionError::input(field, format!("{v:?} is not a valid RFC 1123 name")))
    }
}

/// The workload kinds the typed actions take, as users write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
}

impl Workload {
    /// Reads `kind`, accepting only the words in `allowed`.
    pub(crate) fn parse(field: &str, v: &str, allowed: &[&str]) -> Result<Workload, ActionError> {
        let kind = match v {
            "deployment" => Some(Workload::Deployment),
            "statefulset" => Some(Workload::StatefulSet),
            "daemonset" => Some(Workload::DaemonSet),
            "replicaset" => Some(Workload::ReplicaSet),
            _ => None,
        };
        kind.filter(|_| allowed.contains(&v))
            .ok_or_else(|| ActionError::input(field, format!("expected one of {}, got {v:?}", allowed.join(", "))))
    }

    pub(crate) fn word(self) -> &'static str {
        match self {
            Workload::Deployment => "deployment",
            Workload::StatefulSet => "statefulset",
            Workload::DaemonSet => "daemonset",
            Workload::ReplicaSet => "replicaset",
        }
    }

    pub(crate) fn resource(self) -> ApiResource {
        match self {
            Workload::Deployment => ApiResource::erase::<apps::Deployment>(&()),
            Workload::StatefulSet => ApiResource::erase::<apps::StatefulSet>(&()),
            Workload::DaemonSet => ApiResource::erase::<apps::DaemonSet>(&()),
            Workload::ReplicaSet => ApiResource::erase::<apps::ReplicaSet>(&()),
        }
    }
}

/// `plural.group`, as RBAC rules and API errors name a resource.
pub(crate) fn resource_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

/// Parameters for every PATCH we send: dry run when asked, and our name in
/// `managedFields` so the object's history shows who changed it.
pub(crate) fn patch_params(dry_run: bool) -> PatchParams {
    PatchParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Turns a client error into a step outcome. `what` names the object
/// (`deployment shop/web`); `needs` the permission the request used
/// (`patch on deployments.apps in namespace shop`).
pub(crate) fn api_error(e: &kube::Error, what: &str, needs: &str) -> ActionError {
    match e {
        kube::Error::Api(status) => status_error(status, what, needs),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            ActionError::Unavailable(format!("kubernetes API unreachable: {}", chain(e)))
        }
        other => ActionError::Failed(format!("{what}: unexpected answer from the kubernetes API: {}", chain(other))),
    }
}

fn status_error(status: &kube::core::Status, what: &str, needs: &str) -> ActionError {
    let message = if status.message.is_empty() {
        status.reason.as_str()
    } else {
        status.message.as_str()
    };
    match status.code {
        404 => {
            // A missing object names itself in `details`; a missing resource
            // type (a CRD not installed, a wrong api_version) does not, and
            // the server's words say which it was.
            if status.details.as_ref().is_some_and(|d| !d.name.is_empty()) {
                ActionError::Failed(format!("{what} not found"))
            } else {
                ActionError::Failed(format!("{what} not found: {message}"))
            }
        }
        409 => ActionError::Failed(format!("conflict: {what}: {message}")),
        403 => ActionError::Failed(format!("forbidden: {message} (RBAC: needs verbs {needs})")),
        401 => ActionError::Unavailable(format!("kubernetes API rejected our credentials: {message}")),
        429 => ActionError::Unavailable(format!("kubernetes API is throttling requests: {message}")),
        502..=504 => ActionError::Unavailable(format!("kubernetes API answered {}: {message}", status.code)),
        code => ActionError::Failed(format!("{what}: {message} ({}, {code})", reason_or(&status.reason))),
    }
}

fn reason_or(reason: &str) -> &str {
    if reason.is_empty() { "error" } else { reason }
}

/// An error with its causes, skipping causes the message already repeats
/// (kube's wrappers print their source inline).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// The resource name (plural) of a kind: lowercase, `-s`, `-es` after s, x,
/// z, ch and sh (Ingress → ingresses), `-ies` after a consonant and y
/// (NetworkPolicy → networkpolicies), plus the few irregular ones.
pub fn plural(kind: &str) -> String {
    let word = kind.to_ascii_lowercase();
    match word.as_str() {
        "endpoints" => return word,
        "podmetrics" => return "pods".into(),
        "nodemetrics" => return "nodes".into(),
        _ => {}
    }
    if ["s", "x", "z", "ch", "sh"].iter().any(|end| word.ends_with(end)) {
        return format!("{word}es");
    }
    if let Some(stem) = word.strip_suffix('y')
        && stem.chars().last().is_some_and(|c| !"aeiou".contains(c))
    {
        return format!("{stem}ies");
    }
    format!("{word}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_requests() {
        assert!(check_name("name", "web-1.api").is_ok());
        for bad in ["", "../etc", "Web", "a;b", "-x", "x\n", "$(id)"] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
            assert!(check_namespace("namespace", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plurals_follow_the_api_server() {
        for (kind, want) in [
            ("ConfigMap", "configmaps"),
            ("Deployment", "deployments"),
            ("Ingress", "ingresses"),
            ("NetworkPolicy", "networkpolicies"),
            ("PodDisruptionBudget", "poddisruptionbudgets"),
            ("Gateway", "gateways"),
            ("PriorityClass", "priorityclasses"),
            ("Endpoints", "endpoints"),
            ("HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        ] {
            assert_eq!(plural(kind), want, "{kind}");
        }
    }

    #[test]
    fn workload_kinds_are_limited_to_what_the_action_takes() {
        assert_eq!(
            Workload::parse("kind", "replicaset", &["deployment", "replicaset"]).ok(),
            Some(Workload::ReplicaSet)
        );
        assert!(Workload::parse("kind", "replicaset", WORKLOADS).is_err());
        assert!(Workload::parse("kind", "Deployment", WORKLOADS).is_err());
    }
}
