//! `kubernetes.logs`: save pod logs as artifacts of the execution.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::action::{Action, ActionContext, ActionError, ParamType, Spec};
use crate::runbook::Risk;

pub struct Logs {
    spec: Spec,
}

impl Logs {
    pub fn new() -> Self {
        let spec = Spec::new(
            "kubernetes.logs",
            "Save logs of pods (by selector or name) as artifacts of the execution",
            Risk::Low,
            true,
        )
        .required("namespace", ParamType::String, "namespace of the pods")
        .param("selector", ParamType::String, "label selector, e.g. app=checkout")
        .param("pod", ParamType::String, "one pod by name")
        .param("container", ParamType::String, "container name (default: all)")
        .param("tail", ParamType::Integer, "lines from the end of each log")
        .param("since", ParamType::Duration, "only logs newer than this, e.g. 10m")
        .rbac("", &["pods"], &["list", "get"])
        .rbac("", &["pods/log"], &["get"])
        .example("namespace: shop\nselector: app=checkout\ntail: 200\n");
        Logs { spec }
    }
}

#[async_trait::async_trait]
impl Action for Logs {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn check(&self, literal: &BTreeMap<String, Value>, templated: &[&str]) -> Vec<String> {
        let has = |k: &str| literal.contains_key(k) || templated.contains(&k);
        match (has("selector"), has("pod")) {
            (false, false) => vec!["kubernetes.logs needs `selector` or `pod`".into()],
            (true, true) => vec!["kubernetes.logs takes `selector` or `pod`, not both".into()],
            _ => Vec::new(),
        }
    }

    async fn run(&self, _input: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unavailable(format!(
            "{} is not implemented in this build",
            self.spec.name
        )))
    }
}
