//! `kubernetes.rollout_restart`: what `kubectl rollout restart` does.

use serde_json::Value;

use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec};
use crate::runbook::Risk;

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
        .rbac("apps", &["deployments", "statefulsets", "daemonsets"], &["get", "patch"])
        .example("kind: deployment\nnamespace: \"{{params.namespace}}\"\nname: \"{{params.deployment}}\"\n");
        RolloutRestart { spec }
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

    async fn run(&self, _input: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unavailable(format!(
            "{} is not implemented in this build",
            self.spec.name
        )))
    }
}
