//! `http`: call an internal admin API. Hosts are limited by
//! `http.allowed_hosts`; private and loopback addresses need an explicit entry.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec, StaticWith};
use crate::runbook::Risk;

pub struct Http {
    spec: Spec,
}

impl Http {
    pub fn new() -> Self {
        let spec = Spec::new("http", "Call an HTTP API on an allowed host; redirects are not followed", Risk::Medium, false)
            .param("method", ParamType::OneOf(&["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]), "HTTP method (default GET)")
            .required("url", ParamType::Url, "URL; scheme and host literal, templated path segments are percent-encoded")
            .param("query", ParamType::StringMap, "query parameters (URL-encoded)")
            .param("headers", ParamType::StringMap, "request headers")
            .param("body", ParamType::Body, "map or list (sent as JSON) or string (sent as is)")
            .param("expect_status", ParamType::IntegerOrList, "accepted status codes (default any 2xx)")
            .param("timeout", ParamType::Duration, "request timeout (default 30s)")
            .example("method: POST\nurl: \"https://pool-admin.internal.example/v1/pools/{{params.pool}}/resize\"\nbody: {size: 200}\nexpect_status: [200, 204]\n");
        Http { spec }
    }
}

/// GET (and HEAD) are reads; anything else changes something.
pub(crate) fn is_read(method: Option<&Value>) -> bool {
    match method {
        None => true,
        Some(Value::String(m)) => m.eq_ignore_ascii_case("GET") || m.eq_ignore_ascii_case("HEAD"),
        Some(_) => false,
    }
}

#[async_trait::async_trait]
impl Action for Http {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn step_risk(&self, with: StaticWith<'_>) -> Risk {
        let method = with.get("method").map(|t| t.literal());
        match method {
            None => Risk::Low,
            Some(Some(m)) if is_read(Some(&m)) => Risk::Low,
            _ => Risk::Medium,
        }
    }

    fn step_idempotent(&self, with: StaticWith<'_>) -> bool {
        self.step_risk(with) == Risk::Low
    }

    fn check(&self, _literal: &BTreeMap<String, Value>, _templated: &[&str]) -> Vec<String> {
        Vec::new()
    }

    fn dry_run(&self, input: &Value) -> DryRun {
        if is_read(input.get("method")) { DryRun::Run } else { DryRun::Skip }
    }

    async fn run(&self, _input: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        Err(ActionError::Unavailable(format!(
            "{} is not implemented in this build",
            self.spec.name
        )))
    }
}
