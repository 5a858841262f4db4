//! `kubernetes.rollout_restart`: what `kubectl rollout restart` does — a
//! strategic-merge patch of the pod template annotation
//! `kubectl.kubernetes.io/restartedAt` — stamped with the execution's start
//! so that running the step again is a no-op. Never `Api::restart`, which
//! writes another key.

use chrono::SecondsFormat;
use kube::api::{Api, DynamicObject, Patch};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CLUSTER_DOC, Workload, api_error, check_name, check_namespace, patch_params, resource_name};
use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec, input, lenient};
use crate::runbook::Risk;

/// The key `kubectl rollout restart` writes.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

pub struct RolloutRestart {
    spec: Spec,
}

impl RolloutRestart {
    pub fn new() -> Self {
        let spec = Spec::new(
            "kubernetes.rollout_restart",
            "Restart a workload's pods the way `kubectl rollout restart` does (pod template annotation kubectl.kubernetes.io/restartedAt = the execution's start time, so a re-run is a no-op)",
            Risk::Medium,
            true,
        )
        .required("kind", ParamType::OneOf(super::WORKLOADS), "deployment, statefulset or daemonset")
        .required("namespace", ParamType::String, "namespace of the workload")
        .required("name", ParamType::String, "name of the workload")
        .param("cluster", ParamType::String, CLUSTER_DOC)
        .rbac("apps", &["deployments", "statefulsets", "daemonsets"], &["get", "patch"])
        .example("kind: deployment\nnamespace: \"{{params.namespace}}\"\nname: \"{{params.deployment}}\"\n");
        RolloutRestart { spec }
    }
}

impl Default for RolloutRestart {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Action for RolloutRestart {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Simulate
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input {
            kind,
            namespace,
            name,
            cluster,
        } = input(input_value)?;
        let kind = Workload::parse("kind", &kind, super::WORKLOADS)?;
        check_namespace("namespace", &namespace)?;
        check_name("name", &name)?;
        let cluster = cx.deps.kube.resolve(cluster.as_deref())?;
        let what = format!("{} {namespace}/{name}", kind.word());
        let ar = kind.resource();
        let resource = resource_name(&ar);
        let api: Api<DynamicObject> = Api::namespaced_with(super::client(cx, Some(cluster)).await?, &namespace, &ar);

        let current = api
            .get(&name)
            .await
            .map_err(|e| api_error(&e, &what, &format!("get on {resource} in namespace {namespace}")))?;
        if kind == Workload::Deployment && current.data.pointer("/spec/paused") == Some(&Value::Bool(true)) {
            // kubectl refuses too: the template change would sit unrolled
            // until someone resumes, and the step would look like it worked.
            return Err(ActionError::Refused(format!("{what} is paused; resume it before restarting")));
        }
        let stamp = cx.started_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut output = json!({
            "cluster": cluster,
            "kind": kind.word(),
            "namespace": namespace,
            "name": name,
            "restartedAt": stamp,
            "changed": false,
            "generation": current.metadata.generation,
            "dry_run": cx.dry_run,
        });
        let stamped = current
            .data
            .pointer("/spec/template/metadata/annotations")
            .and_then(|a| a.get(RESTARTED_AT))
            .and_then(Value::as_str);
        if stamped == Some(stamp.as_str()) {
            return Ok(output);
        }

        // Exactly the body kubectl computes: only the annotation, so nothing
        // else in the template is touched.
        let body = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}});
        let patched = api
            .patch(&name, &patch_params(cx.dry_run), &Patch::Strategic(&body))
            .await
            .map_err(|e| api_error(&e, &what, &format!("patch on {resource} in namespace {namespace}")))?;
        output["changed"] = Value::Bool(true);
        output["generation"] = json!(patched.metadata.generation);
        Ok(output)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(deserialize_with = "lenient::string")]
    kind: String,
    #[serde(deserialize_with = "lenient::string")]
    namespace: String,
    #[serde(deserialize_with = "lenient::string")]
    name: String,
    #[serde(default, deserialize_with = "super::opt_cluster")]
    cluster: Option<String>,
}
