//! `notify`: post a message to a Slack-compatible incoming webhook.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec, input, lenient};
use crate::runbook::Risk;

pub struct Notify {
    spec: Spec,
}

impl Default for Notify {
    fn default() -> Self {
        Self::new()
    }
}

impl Notify {
    pub fn new() -> Self {
        let spec = Spec::new(
            "notify",
            "Post `text` to a Slack-compatible incoming webhook (`url`, default from config notify.url)",
            Risk::Low,
            false,
        )
        .required("text", ParamType::String, "the message")
        .param(
            "url",
            ParamType::Url,
            "webhook URL (default: config notify.url); the host must be in http.allowed_hosts",
        )
        .example("text: \"pitcrew restarted {{target}} for {{alert.labels.alertname}}\"\n");
        Notify { spec }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(deserialize_with = "lenient::string")]
    text: String,
    #[serde(default)]
    url: Option<String>,
}

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Posts `{"text": ...}`; shared with the guardrails' escalation notices.
pub async fn post(client: &reqwest::Client, url: &str, text: &str) -> Result<(), ActionError> {
    let response = client
        .post(url)
        .json(&json!({ "text": text }))
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| ActionError::Unavailable(format!("notify webhook: {}", crate::redact::without_url(&e))))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(ActionError::Failed(format!("notify webhook answered {status}")))
    }
}

/// Posts to a URL a runbook gave (a step's `url`, or a runbook's own
/// `notify.url`): it must pass the allowed-hosts check, and is sent over a
/// client pinned to the checked addresses.
pub async fn post_checked(config: &crate::config::Config, url: &str, text: &str) -> Result<(), ActionError> {
    let checked = crate::action::http_guard::check_url(config, url).await?;
    post(&checked.client(TIMEOUT)?, url, text).await
}

#[async_trait::async_trait]
impl Action for Notify {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Skip
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input { text, url } = input(input_value)?;
        match url {
            Some(url) => post_checked(&cx.deps.config, &url, &text).await?,
            // The config's own URL is trusted.
            None => {
                let url = cx
                    .deps
                    .config
                    .notify_url
                    .as_deref()
                    .ok_or_else(|| ActionError::Unavailable("no `url` given and no notify.url in config".into()))?;
                post(cx.deps.http(), url, &text).await?;
            }
        }
        Ok(json!({ "sent": true }))
    }
}
