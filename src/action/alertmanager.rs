//! `alertmanager.silence` / `alertmanager.unsilence` through Alertmanager's
//! v2 API, so a runbook can silence → fix → verify → unsilence. The
//! Alertmanager URL comes from the config and is trusted. Both change
//! Alertmanager, so neither runs in a dry run.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::action::{Action, ActionContext, ActionError, Deps, DryRun, ParamType, Spec, input, lenient};
use crate::matcher::{MatchOp, Matcher};
use crate::runbook::Risk;
use crate::units::Duration;

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const RESPONSE_CAP: usize = 16 << 20;
/// `createdBy` on every silence pitcrew makes.
pub const CREATED_BY: &str = "pitcrew";

pub struct Silence {
    spec: Spec,
}

impl Default for Silence {
    fn default() -> Self {
        Silence::new()
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceInput {
    #[serde(deserialize_with = "lenient::duration")]
    duration: Duration,
    #[serde(default, deserialize_with = "opt_string_list")]
    matchers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_string")]
    comment: Option<String>,
}

fn opt_string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    lenient::string_list(d).map(Some)
}

fn opt_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient::string(d).map(Some)
}

/// A matcher as the v2 API writes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct ApiMatcher {
    name: String,
    value: String,
    #[serde(rename = "isRegex")]
    is_regex: bool,
    // Alertmanager before 0.22 did not send it; equality was the only kind.
    #[serde(rename = "isEqual", default = "yes")]
    is_equal: bool,
}

fn yes() -> bool {
    true
}

impl From<&Matcher> for ApiMatcher {
    fn from(m: &Matcher) -> ApiMatcher {
        let (is_regex, is_equal) = match m.op {
            MatchOp::Equal => (false, true),
            MatchOp::NotEqual => (false, false),
            MatchOp::Regex => (true, true),
            MatchOp::NotRegex => (true, false),
        };
        ApiMatcher {
            name: m.name.clone(),
            value: m.value.clone(),
            is_regex,
            is_equal,
        }
    }
}

/// A silence as `GET /api/v2/silences` lists it.
#[derive(Deserialize)]
struct ListedSilence {
    id: String,
    status: SilenceStatus,
    matchers: Vec<ApiMatcher>,
    #[serde(rename = "endsAt")]
    ends_at: DateTime<Utc>,
    #[serde(rename = "createdBy", default)]
    created_by: String,
    #[serde(default)]
    comment: String,
}

#[derive(Deserialize)]
struct SilenceStatus {
    state: String,
}

fn alertmanager_url(deps: &Deps) -> Result<&str, ActionError> {
    deps.config
        .alertmanager_url
        .as_deref()
        .ok_or_else(|| ActionError::Unavailable("no alertmanager.url in config".into()))
}

/// A response's status and (capped) body, or why there is none.
async fn call(deps: &Deps, request: reqwest::RequestBuilder) -> Result<(reqwest::StatusCode, Vec<u8>), ActionError> {
    let unreachable = |e: reqwest::Error| {
        if e.is_timeout() {
            ActionError::Timeout(Duration::from_millis(TIMEOUT.as_millis() as u64))
        } else {
            ActionError::Unavailable(
                deps.redactor
                    .text(&format!("alertmanager is unreachable: {}", crate::redact::without_url(&e))),
            )
        }
    };
    let mut response = request.timeout(TIMEOUT).send().await.map_err(unreachable)?;
    let status = response.status();
    let (bytes, _) = crate::action::http::read_capped(&mut response, RESPONSE_CAP)
        .await
        .map_err(unreachable)?;
    Ok((status, bytes))
}

/// A 5xx may pass; anything else is this request's fault.
fn answered(status: reqwest::StatusCode, reason: String) -> ActionError {
    if status.is_server_error() {
        ActionError::Unavailable(reason)
    } else {
        ActionError::Failed(reason)
    }
}

/// What Alertmanager said, for error messages: its error text is a JSON
/// string or plain text.
/// `from + duration`, or an input error where chrono cannot represent it:
/// the duration comes from the runbook or a label, and must not panic a worker.
fn until(from: DateTime<Utc>, duration: Duration) -> Result<DateTime<Utc>, ActionError> {
    from.checked_add_signed(duration.chrono())
        .ok_or_else(|| ActionError::input("duration", format!("{duration} from {from} is past the last representable date")))
}

fn said(bytes: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::String(s)) => s,
        _ => String::from_utf8_lossy(bytes).into_owned(),
    };
    text.trim().chars().take(300).collect()
}

#[async_trait::async_trait]
impl Action for Silence {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Skip
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let SilenceInput {
            duration,
            matchers,
            comment,
        } = input(input_value)?;
        if duration == Duration::ZERO {
            return Err(ActionError::input("duration", "must be more than 0s"));
        }
        let mut wanted: Vec<ApiMatcher> = match matchers {
            Some(list) if list.is_empty() => {
                return Err(ActionError::input("matchers", "is empty; leave it out to use the alert's labels"));
            }
            Some(list) => list
                .iter()
                .map(|m| {
                    Matcher::parse(m)
                        .map(|m| ApiMatcher::from(&m))
                        .map_err(|e| ActionError::input("matchers", e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            None => {
                let alert = cx.alert.filter(|a| !a.labels.is_empty()).ok_or_else(|| {
                    ActionError::input(
                        "matchers",
                        "no alert labels to silence (a manual run without --alert?); give `matchers`",
                    )
                })?;
                alert
                    .labels
                    .iter()
                    .map(|(name, value)| ApiMatcher {
                        name: name.clone(),
                        value: value.clone(),
                        is_regex: false,
                        is_equal: true,
                    })
                    .collect()
            }
        };
        wanted.sort();
        wanted.dedup();
        let comment = comment
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| format!("pitcrew execution {}", cx.execution_id));
        let base = alertmanager_url(cx.deps)?;

        // Idempotence: a re-run of this step (retry, or recovery after a
        // crash) finds the silence the first attempt made instead of making a
        // second one that nothing would ever expire. Anything ending at or
        // after execution start + duration covers what the first attempt
        // asked for.
        let covers_until = until(cx.started_at, duration)?;
        let (status, bytes) = call(cx.deps, cx.deps.http().get(format!("{base}/api/v2/silences"))).await?;
        if !status.is_success() {
            return Err(ActionError::Unavailable(format!(
                "alertmanager answered {} listing silences: {}",
                status.as_u16(),
                said(&bytes)
            )));
        }
        let listed: Vec<Value> = serde_json::from_slice(&bytes)
            .map_err(|e| ActionError::Unavailable(format!("alertmanager silence list is not what the v2 API returns: {e}")))?;
        // One odd entry (another tool's silence) must not stop ours.
        let existing = listed
            .into_iter()
            .filter_map(|v| serde_json::from_value::<ListedSilence>(v).ok())
            .find(|s| {
                matches!(s.status.state.as_str(), "active" | "pending")
                    && s.created_by == CREATED_BY
                    && s.comment == comment
                    && s.ends_at >= covers_until
                    && {
                        let mut m = s.matchers.clone();
                        m.sort();
                        m == wanted
                    }
            });
        if let Some(s) = existing {
            return Ok(json!({"silence_id": s.id, "ends_at": s.ends_at, "reused": true}));
        }

        let now = Utc::now();
        let ends_at = until(now, duration)?;
        let body = json!({
            "matchers": wanted,
            "startsAt": now,
            "endsAt": ends_at,
            "createdBy": CREATED_BY,
            "comment": comment,
        });
        let (status, bytes) = call(cx.deps, cx.deps.http().post(format!("{base}/api/v2/silences")).json(&body)).await?;
        if !status.is_success() {
            let reason = format!("alertmanager refused the silence ({}): {}", status.as_u16(), said(&bytes));
            return Err(answered(status, reason));
        }
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "silenceID")]
            silence_id: String,
        }
        let created: Created = serde_json::from_slice(&bytes)
            .map_err(|e| ActionError::Failed(format!("alertmanager created a silence but its answer has no silenceID: {e}")))?;
        Ok(json!({"silence_id": created.silence_id, "ends_at": ends_at, "reused": false}))
    }
}

pub struct Unsilence {
    spec: Spec,
}

impl Default for Unsilence {
    fn default() -> Self {
        Unsilence::new()
    }
}

impl Unsilence {
    pub fn new() -> Self {
        let spec = Spec::new(
            "alertmanager.unsilence",
            "Expire a silence made by alertmanager.silence; an already expired one is fine",
            Risk::Low,
            true,
        )
        .required("silence_id", ParamType::String, "the id to expire")
        .example("silence_id: \"{{steps.silence.output.silence_id}}\"\n");
        Unsilence { spec }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsilenceInput {
    #[serde(deserialize_with = "lenient::string")]
    silence_id: String,
}

#[async_trait::async_trait]
impl Action for Unsilence {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Skip
    }

    /// Expired already (a re-run, or someone beat us to it) is success with
    /// `already_expired: true`. An id Alertmanager does not know fails:
    /// expired silences are kept for days (`--data.retention`, 120h by
    /// default), so that is a wrong id, and succeeding would leave the real
    /// silence in place unnoticed.
    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let UnsilenceInput { silence_id } = input(input_value)?;
        let id = silence_id.trim();
        // Alertmanager ids are UUIDs; anything else must not reach the path.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ActionError::input(
                "silence_id",
                format!("{silence_id:?} is not an Alertmanager silence id"),
            ));
        }
        let base = alertmanager_url(cx.deps)?;
        let url = format!("{base}/api/v2/silence/{id}");
        // Look first: Alertmanager 0.25 answers DELETE with 200 for an
        // expired silence and 500 for an unknown one, so the DELETE alone
        // cannot tell "already expired" from "wrong id".
        let (status, bytes) = call(cx.deps, cx.deps.http().get(&url)).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(ActionError::Failed(format!("alertmanager has no silence {id}")));
        }
        if !status.is_success() {
            return Err(answered(
                status,
                format!(
                    "alertmanager answered {} looking up silence {id}: {}",
                    status.as_u16(),
                    said(&bytes)
                ),
            ));
        }
        let state = serde_json::from_slice::<ListedSilence>(&bytes)
            .map(|s| s.status.state)
            .unwrap_or_default();
        if state == "expired" {
            return Ok(json!({"silence_id": id, "expired": true, "already_expired": true}));
        }
        let (status, bytes) = call(cx.deps, cx.deps.http().delete(&url)).await?;
        if !status.is_success() {
            return Err(answered(
                status,
                format!("alertmanager answered {} expiring silence {id}: {}", status.as_u16(), said(&bytes)),
            ));
        }
        Ok(json!({"silence_id": id, "expired": true, "already_expired": false}))
    }
}
