//! `log`: a note for the postmortem, written into the execution's audit trail
//! (the step's `step.finished` record carries it).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::{Action, ActionContext, ActionError, ParamType, Spec, input, lenient};
use crate::runbook::Risk;

pub struct Log {
    spec: Spec,
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

impl Log {
    pub fn new() -> Self {
        let spec = Spec::new("log", "Write a message into the execution's audit trail", Risk::Low, true)
            .required("message", ParamType::String, "the note")
            .example("message: \"{{alert.labels.alertname}} on {{target}}: restarting\"\n");
        Log { spec }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(deserialize_with = "lenient::string")]
    message: String,
}

#[async_trait::async_trait]
impl Action for Log {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    async fn run(&self, input_value: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input { message } = input(input_value)?;
        Ok(json!({ "message": message }))
    }
}
