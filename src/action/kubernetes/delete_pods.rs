//! `kubernetes.delete_pods`: evict (or delete) at most `max` pods by selector,
//! least healthy first. Evictions go through the Eviction API so that
//! PodDisruptionBudgets hold; a refusal ends the step at once, never retried.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions as MetaPreconditions, Time};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CLUSTER_DOC, api_error, check_namespace};
use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec, input, lenient};
use crate::runbook::Risk;

pub struct DeletePods {
    spec: Spec,
}

impl DeletePods {
    pub fn new() -> Self {
        let spec = Spec::new(
            "kubernetes.delete_pods",
            "Evict pods matching a label selector through the Eviction API (PodDisruptionBudgets hold), at most `max`, least healthy first",
            Risk::Medium,
            false,
        )
        .required("namespace", ParamType::String, "namespace of the pods")
        .required(
            "selector",
            ParamType::String,
            "label selector, e.g. app=checkout; an empty selector is refused",
        )
        .param("cluster", ParamType::String, CLUSTER_DOC)
        .param("max", ParamType::Integer, "most pods to evict (default 1)")
        .param(
            "mode",
            ParamType::OneOf(&["evict", "delete"]),
            "evict (default, honours PDBs) or delete (bypasses PDBs)",
        )
        .rbac("", &["pods"], &["list", "delete"])
        .rbac("", &["pods/eviction"], &["create"])
        .example("namespace: shop\nselector: \"app={{params.deployment}}\"\nmax: 1\n");
        DeletePods { spec }
    }
}

impl Default for DeletePods {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Action for DeletePods {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn check(&self, literal: &BTreeMap<String, Value>, _templated: &[&str]) -> Vec<String> {
        match literal.get("selector") {
            Some(Value::String(s)) if s.trim().is_empty() => vec!["kubernetes.delete_pods refuses an empty selector".into()],
            _ => Vec::new(),
        }
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Simulate
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input {
            namespace,
            selector,
            max,
            mode,
            cluster,
        } = input(input_value)?;
        check_namespace("namespace", &namespace)?;
        let selector = selector.trim().to_string();
        if selector.is_empty() {
            return Err(ActionError::Refused(
                "kubernetes.delete_pods refuses an empty selector: it would match every pod in the namespace".into(),
            ));
        }
        let max = max.unwrap_or(1);
        if max < 1 {
            return Err(ActionError::input("max", format!("must be at least 1, got {max}")));
        }
        let mode = match mode.as_deref().unwrap_or("evict") {
            "evict" => Mode::Evict,
            "delete" => Mode::Delete,
            other => return Err(ActionError::input("mode", format!("expected evict or delete, got {other:?}"))),
        };
        let cluster = cx.deps.kube.resolve(cluster.as_deref())?;
        let api: Api<Pod> = Api::namespaced(super::client(cx, Some(cluster)).await?, &namespace);

        let listed = api.list(&ListParams::default().labels(&selector)).await.map_err(|e| {
            api_error(
                &e,
                &format!("pods in {namespace} matching {selector}"),
                &format!("list on pods in namespace {namespace}"),
            )
        })?;
        let matched = listed.items.len();
        let mut candidates: Vec<Candidate> = listed.items.iter().filter_map(Candidate::of).collect();
        if candidates.is_empty() {
            return Err(ActionError::Failed(if matched == 0 {
                format!("no pods in {namespace} match {selector}")
            } else {
                format!("none of the {matched} pods in {namespace} matching {selector} is running (all terminating or finished)")
            }));
        }
        candidates.sort_by_key(Candidate::order);
        candidates.truncate(usize::try_from(max).unwrap_or(usize::MAX));

        let mut acted: Vec<Value> = Vec::new();
        for pod in &candidates {
            let result = match mode {
                Mode::Evict => evict(&api, &namespace, pod, cx.dry_run).await,
                Mode::Delete => delete(&api, &namespace, pod, cx.dry_run).await,
            };
            let result = result.map_err(|e| with_done(e, &acted))?;
            acted.push(json!({
                "name": pod.name,
                "ready": pod.ready,
                "restarts": pod.restarts,
                "result": result,
            }));
        }
        Ok(json!({
            "cluster": cluster,
            "namespace": namespace,
            "selector": selector,
            "mode": mode.word(),
            "matched": matched,
            "pods": acted,
            "dry_run": cx.dry_run,
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(deserialize_with = "lenient::string")]
    namespace: String,
    #[serde(deserialize_with = "lenient::string")]
    selector: String,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    max: Option<i64>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default, deserialize_with = "super::opt_cluster")]
    cluster: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Evict,
    Delete,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Evict => "evict",
            Mode::Delete => "delete",
        }
    }
}

/// A pod we may act on, with what decides its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    name: String,
    uid: Option<String>,
    ready: bool,
    restarts: i64,
    created: Option<Time>,
}

impl Candidate {
    /// Pods already going away, or finished, are not candidates: acting on
    /// them would use up `max` without helping anything.
    fn of(pod: &Pod) -> Option<Candidate> {
        let name = pod.metadata.name.clone()?;
        if pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let status = pod.status.as_ref();
        if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let restarts = status
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| i64::from(c.restart_count)).sum())
            .unwrap_or(0);
        Some(Candidate {
            name,
            uid: pod.metadata.uid.clone(),
            ready,
            restarts,
            created: pod.metadata.creation_timestamp.clone(),
        })
    }

    /// Least healthy first: not ready, then most restarts, then oldest.
    fn order(&self) -> (bool, Reverse<i64>, Option<Time>, String) {
        (self.ready, Reverse(self.restarts), self.created.clone(), self.name.clone())
    }
}

async fn evict(api: &Api<Pod>, namespace: &str, pod: &Candidate, dry_run: bool) -> Result<&'static str, ActionError> {
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        // The uid we ranked: a pod recreated under the same name since
        // (StatefulSets reuse names) is someone else's turn.
        delete_options: pod.uid.as_ref().map(|uid| DeleteOptions {
            preconditions: Some(MetaPreconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteOptions::default()
        }),
    };
    let pp = PostParams {
        dry_run,
        field_manager: None,
    };
    match api.create_subresource::<_, Value>("eviction", &pod.name, &pp, &eviction).await {
        Ok(_) => Ok("evicted"),
        Err(kube::Error::Api(status)) if status.code == 429 => Err(ActionError::Failed(format!(
            "eviction of pod {} refused by a PodDisruptionBudget: {}",
            pod.name,
            budget_message(&status)
        ))),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok("already gone"),
        Err(e) => Err(api_error(
            &e,
            &format!("pod {namespace}/{}", pod.name),
            &format!("create on pods/eviction in namespace {namespace}"),
        )),
    }
}

async fn delete(api: &Api<Pod>, namespace: &str, pod: &Candidate, dry_run: bool) -> Result<&'static str, ActionError> {
    let dp = DeleteParams {
        dry_run,
        preconditions: pod.uid.as_ref().map(|uid| Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name, &dp).await {
        Ok(_) => Ok("deleted"),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok("already gone"),
        Err(e) => Err(api_error(
            &e,
            &format!("pod {namespace}/{}", pod.name),
            &format!("delete on pods in namespace {namespace}"),
        )),
    }
}

/// The server's message, plus the budget's own words when it gives them
/// ("The disruption budget web needs 2 healthy pods and has 2 currently").
fn budget_message(status: &kube::core::Status) -> String {
    let mut message = status.message.clone();
    for cause in status.details.iter().flat_map(|d| d.causes.iter()) {
        if cause.message.is_empty() || message.contains(&cause.message) {
            continue;
        }
        message.push_str(" (");
        message.push_str(&cause.message);
        message.push(')');
    }
    message
}

/// A failure part-way says what was already done: those pods are gone.
fn with_done(e: ActionError, acted: &[Value]) -> ActionError {
    if acted.is_empty() {
        return e;
    }
    let done: Vec<&str> = acted.iter().filter_map(|p| p["name"].as_str()).collect();
    match e {
        ActionError::Failed(m) => ActionError::Failed(format!("{m} (already acted on: {})", done.join(", "))),
        ActionError::Unavailable(m) => ActionError::Unavailable(format!("{m} (already acted on: {})", done.join(", "))),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, restarts: i32, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": created},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": ready, "restartCount": restarts}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn least_healthy_pods_go_first() {
        let pods = [
            pod("healthy-old", true, 0, "2024-01-01T00:00:00Z"),
            pod("ready-restarting", true, 5, "2024-01-03T00:00:00Z"),
            pod("unready-young", false, 1, "2024-01-05T00:00:00Z"),
            pod("unready-restarting", false, 9, "2024-01-04T00:00:00Z"),
            pod("unready-old", false, 1, "2024-01-02T00:00:00Z"),
        ];
        let mut candidates: Vec<Candidate> = pods.iter().filter_map(Candidate::of).collect();
        candidates.sort_by_key(Candidate::order);
        let names: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "unready-restarting",
                "unready-old",
                "unready-young",
                "ready-restarting",
                "healthy-old"
            ]
        );
    }

    #[test]
    fn terminating_and_finished_pods_are_not_candidates() {
        let mut terminating = pod("t", false, 0, "2024-01-01T00:00:00Z");
        terminating.metadata.deletion_timestamp = terminating.metadata.creation_timestamp.clone();
        let mut done = pod("d", false, 0, "2024-01-01T00:00:00Z");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(Candidate::of(&terminating), None);
        assert_eq!(Candidate::of(&done), None);
    }
}
