//! `alertmanager.silence` / `alertmanager.unsilence` through Alertmanager's
//! v2 API, so a runbook can silence → fix → verify → unsilence.

use serde_json::Value;

use crate::action::{Action, ActionContext, ActionError, ParamType, Spec};
use crate::runbook::Risk;

pub struct Silence {
    spec: Spec,
}

impl Silence {
    pub fn new() -> Self {
        let spec = Spec::new(
            "alertmanager.silence",
            "Silence the alert (its labels, or `matchers`) for `duration`; output {silence_id}",
            Risk::Low,
            true,
        )
        .required("duration", ParamType::Duration, "how long the silence lasts")
        .param(
            "matchers",
            ParamType::StringList,
            "Alertmanager matchers (default: the alert's labels)",
        )
        .param("comment", ParamType::String, "why (default names the execution)")
        .example("duration: 30m\ncomment: \"pitcrew {{execution.id}} is restarting {{target}}\"\n");
        Silence { spec }
    }
}

#[async_trait::async_trait]
impl Action for Silence {
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

pub struct Unsilence {
    spec: Spec,
}

impl Unsilence {
    pub fn new() -> Self {
        let spec = Spec::new(
            "alertmanager.unsilence",
            "Expire a silence made by alertmanager.silence",
            Risk::Low,
            true,
        )
        .required("silence_id", ParamType::String, "the id to expire")
        .example("silence_id: \"{{steps.silence.output.silence_id}}\"\n");
        Unsilence { spec }
    }
}

#[async_trait::async_trait]
impl Action for Unsilence {
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
