//! `kubernetes.delete_pods`: evict (or delete) at most `max` pods by selector,
//! least healthy first.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec};
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

    async fn run(&self, _input: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unavailable(format!(
            "{} is not implemented in this build",
            self.spec.name
        )))
    }
}
