//! `kubernetes.scale`: set replicas (absolute or `by` ±N, clamped) through the
//! scale subresource.

use std::collections::BTreeMap;

use kube::api::{Api, DynamicObject, Patch};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CLUSTER_DOC, Workload, api_error, check_name, check_namespace, patch_params, resource_name};
use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec, input, lenient};
use crate::runbook::Risk;

const KINDS: &[&str] = &["deployment", "statefulset", "replicaset"];

pub struct Scale {
    spec: Spec,
}

impl Scale {
    pub fn new() -> Self {
        let spec = Spec::new(
            "kubernetes.scale",
            "Set a workload's replicas, or change them by ±N, clamped to min/max, through the scale subresource",
            Risk::Medium,
            true,
        )
        .required("kind", ParamType::OneOf(KINDS), "deployment, statefulset or replicaset")
        .required("namespace", ParamType::String, "namespace of the workload")
        .required("name", ParamType::String, "name of the workload")
        .param("cluster", ParamType::String, CLUSTER_DOC)
        .param("replicas", ParamType::Integer, "absolute replica count")
        .param("by", ParamType::Integer, "relative change, e.g. 2 or -1")
        .param("min", ParamType::Integer, "lower bound after the change")
        .param("max", ParamType::Integer, "upper bound after the change")
        .rbac(
            "apps",
            &["deployments/scale", "statefulsets/scale", "replicasets/scale"],
            &["get", "patch"],
        )
        .example("kind: deployment\nnamespace: shop\nname: checkout\nby: 2\nmax: 20\n");
        Scale { spec }
    }
}

impl Default for Scale {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Action for Scale {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn step_idempotent(&self, with: crate::action::StaticWith<'_>) -> bool {
        // `by` applied twice scales twice.
        !with.contains_key("by")
    }

    fn check(&self, literal: &BTreeMap<String, Value>, templated: &[&str]) -> Vec<String> {
        let has = |k: &str| literal.contains_key(k) || templated.contains(&k);
        match (has("replicas"), has("by")) {
            (true, true) => vec!["kubernetes.scale takes `replicas` or `by`, not both".into()],
            (false, false) => vec!["kubernetes.scale needs `replicas` or `by`".into()],
            _ => Vec::new(),
        }
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Simulate
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let input: Input = input(input_value)?;
        let kind = Workload::parse("kind", &input.kind, KINDS)?;
        check_namespace("namespace", &input.namespace)?;
        check_name("name", &input.name)?;
        let change = Change::from_input(&input)?;
        let cluster = cx.deps.kube.resolve(input.cluster.as_deref())?;
        let (namespace, name) = (&input.namespace, &input.name);
        let what = format!("{} {namespace}/{name}", kind.word());
        let ar = kind.resource();
        let resource = resource_name(&ar);
        let api: Api<DynamicObject> = Api::namespaced_with(super::client(cx, Some(cluster)).await?, namespace, &ar);

        let scale = api
            .get_scale(name)
            .await
            .map_err(|e| api_error(&e, &what, &format!("get on {resource}/scale in namespace {namespace}")))?;
        let from = i64::from(scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0));
        let (to, clamped) = change.target(from);
        let mut output = json!({
            "cluster": cluster,
            "kind": kind.word(),
            "namespace": namespace,
            "name": name,
            "from": from,
            "to": to,
            "changed": false,
            "clamped": clamped,
            "dry_run": cx.dry_run,
        });
        if to == from {
            return Ok(output);
        }

        let mut body = json!({"spec": {"replicas": to}});
        if let (Change::By(..), Some(rv)) = (&change, &scale.metadata.resource_version) {
            // A relative change is read-modify-write: if anything scaled the
            // workload since we read it, the server answers 409 rather than
            // let us apply `by` to a count we never saw.
            body["metadata"] = json!({"resourceVersion": rv});
        }
        let patched = api
            .patch_scale(name, &patch_params(cx.dry_run), &Patch::Merge(&body))
            .await
            .map_err(|e| api_error(&e, &what, &format!("patch on {resource}/scale in namespace {namespace}")))?;
        output["to"] = json!(patched.spec.and_then(|s| s.replicas).map(i64::from).unwrap_or(to));
        output["changed"] = Value::Bool(true);
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
    #[serde(default, deserialize_with = "lenient::opt_int")]
    replicas: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    by: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    min: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    max: Option<i64>,
}

/// The requested change, with its bounds checked before any request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    To(i64, Bounds),
    By(i64, Bounds),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    min: i64,
    max: i64,
}

impl Change {
    fn from_input(input: &Input) -> Result<Change, ActionError> {
        let min = input.min.unwrap_or(0);
        let max = input.max.unwrap_or(i64::from(i32::MAX));
        if min < 0 {
            return Err(ActionError::input("min", format!("must be at least 0, got {min}")));
        }
        if max > i64::from(i32::MAX) {
            return Err(ActionError::input("max", format!("must be at most {}, got {max}", i32::MAX)));
        }
        if min > max {
            return Err(ActionError::input("min", format!("min {min} is above max {max}")));
        }
        let bounds = Bounds { min, max };
        match (input.replicas, input.by) {
            (Some(_), Some(_)) => Err(ActionError::input("by", "takes `replicas` or `by`, not both")),
            (None, None) => Err(ActionError::input("replicas", "needs `replicas` or `by`")),
            (Some(n), None) if n < 0 => Err(ActionError::input("replicas", format!("must be at least 0, got {n}"))),
            (Some(n), None) => Ok(Change::To(n, bounds)),
            (None, Some(by)) => Ok(Change::By(by, bounds)),
        }
    }

    /// The replica count to set, and whether min/max changed it.
    fn target(&self, from: i64) -> (i64, bool) {
        let (wanted, bounds) = match *self {
            Change::To(n, bounds) => (n, bounds),
            Change::By(by, bounds) => (from.saturating_add(by), bounds),
        };
        let to = wanted.clamp(bounds.min, bounds.max);
        (to, to != wanted)
    }
}
