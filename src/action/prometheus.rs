//! `prometheus.query` and `prometheus.wait`: read the service's state, e.g.
//! to verify that a fix worked.

use serde_json::Value;

use crate::action::{Action, ActionContext, ActionError, ParamType, Spec};
use crate::runbook::Risk;

pub struct Query {
    spec: Spec,
}

impl Query {
    pub fn new() -> Self {
        let spec = Spec::new(
            "prometheus.query",
            "Run an instant PromQL query; output {value, result}",
            Risk::Low,
            true,
        )
        .required("query", ParamType::String, "PromQL expression")
        .param("timeout", ParamType::Duration, "query timeout (default 30s)")
        .example("query: 'sum(rate(http_requests_total{job=\"checkout\",code=~\"5..\"}[5m]))'\n");
        Query { spec }
    }
}

#[async_trait::async_trait]
impl Action for Query {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    async fn run(&self, _input: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unavailable(format!(
            "{} is not implemented in this build",
            self.spec.name
        )))
    }
}

pub struct Wait {
    spec: Spec,
}

impl Wait {
    pub fn new() -> Self {
        let spec = Spec::new("prometheus.wait", "Poll a PromQL query until a condition holds (e.g. `== 0`, `< 1`) or time runs out", Risk::Low, true)
            .required("query", ParamType::String, "PromQL expression")
            .required("until", ParamType::String, "condition on the first sample: <, <=, ==, !=, >=, > and a number")
            .required("timeout", ParamType::Duration, "give up after this long")
            .param("interval", ParamType::Duration, "poll interval (default 5s)")
            .example("query: 'sum(kube_pod_container_status_waiting_reason{reason=\"CrashLoopBackOff\",namespace=\"shop\"})'\nuntil: \"== 0\"\ntimeout: 5m\n");
        Wait { spec }
    }
}

#[async_trait::async_trait]
impl Action for Wait {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn check(&self, literal: &std::collections::BTreeMap<String, Value>, _templated: &[&str]) -> Vec<String> {
        match literal.get("until") {
            Some(Value::String(c)) if Condition::parse(c).is_none() => {
                vec![format!(
                    "prometheus.wait: invalid `until` {c:?}: expected an operator (<, <=, ==, !=, >=, >) and a number"
                )]
            }
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

/// A comparison against one sample: `< 1`, `== 0`, `>= 0.99`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub op: &'static str,
    pub value: f64,
}

impl Condition {
    pub fn parse(text: &str) -> Option<Condition> {
        let t = text.trim();
        let op = ["<=", ">=", "==", "!=", "<", ">"].into_iter().find(|op| t.starts_with(op))?;
        let value: f64 = t[op.len()..].trim().parse().ok()?;
        Some(Condition { op, value })
    }

    pub fn holds(&self, sample: f64) -> bool {
        match self.op {
            "<" => sample < self.value,
            "<=" => sample <= self.value,
            "==" => sample == self.value,
            "!=" => sample != self.value,
            ">=" => sample >= self.value,
            ">" => sample > self.value,
            _ => false,
        }
    }
}
