//! `sleep`: wait, e.g. for a rollout to settle before verifying.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::{Action, ActionContext, ActionError, ParamType, Spec, input, lenient};
use crate::runbook::Risk;
use crate::units::Duration;

pub struct Sleep {
    spec: Spec,
}

impl Default for Sleep {
    fn default() -> Self {
        Self::new()
    }
}

impl Sleep {
    pub fn new() -> Self {
        let spec = Spec::new("sleep", "Wait for a while", Risk::Low, true)
            .required("duration", ParamType::Duration, "how long")
            .example("duration: 30s\n");
        Sleep { spec }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(deserialize_with = "lenient::duration")]
    duration: Duration,
}

#[async_trait::async_trait]
impl Action for Sleep {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    async fn run(&self, input_value: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input { duration } = input(input_value)?;
        tokio::time::sleep(duration.std()).await;
        Ok(json!({ "slept": duration.to_string() }))
    }
}
