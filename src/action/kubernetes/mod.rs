//! Kubernetes actions through the `kube` client.
//!
//! Shared here: the client (in-cluster, else kubeconfig with the configured
//! context), name checks done before any request is sent, and the mapping of
//! API server answers to step outcomes. The client never retries on its own:
//! a PodDisruptionBudget refusing an eviction answers 429, and that must
//! reach the step at once instead of hiding behind minutes of backoff.

pub mod delete_pods;
pub mod logs;
pub mod patch;
pub mod rollout_restart;
pub mod scale;

use k8s_openapi::api::apps::v1 as apps;
use kube::api::{ApiResource, PatchParams};
use kube::config::KubeConfigOptions;

use super::{ActionContext, ActionError};

pub(crate) const WORKLOADS: &[&str] = &["deployment", "statefulset", "daemonset"];

/// The field manager our writes show in `managedFields`.
const FIELD_MANAGER: &str = "pitcrew";

/// The shared client: the one in `deps` (tests set it), else built once from
/// the environment.
pub async fn client(cx: &ActionContext<'_>) -> Result<kube::Client, ActionError> {
    cx.deps
        .kube
        .get_or_try_init(|| connect(cx.deps.config.kubernetes_context.clone()))
        .await
        .cloned()
}

async fn connect(context: Option<String>) -> Result<kube::Client, ActionError> {
    let config = match (&context, kube::Config::incluster()) {
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
    };
    from_config(config)
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
