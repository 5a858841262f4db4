//! `kubernetes.scale`: set replicas (absolute or `by` ±N, clamped) through the
//! scale subresource.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec};
use crate::runbook::Risk;

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
        .required(
            "kind",
            ParamType::OneOf(&["deployment", "statefulset", "replicaset"]),
            "deployment, statefulset or replicaset",
        )
        .required("namespace", ParamType::String, "namespace of the workload")
        .required("name", ParamType::String, "name of the workload")
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

    async fn run(&self, _input: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unavailable(format!(
            "{} is not implemented in this build",
            self.spec.name
        )))
    }
}
