//! Approvals in Slack: the message that asks (`chat.postMessage` with
//! Approve and Deny buttons) and `POST /v1/slack/interactions`, where Slack
//! sends the click. A click is accepted only with Slack's request signature,
//! fresh and not seen before, and becomes `Engine::approve` / `Engine::deny`
//! as `slack:NAME`: the same path, permissions and two-person rule as the
//! CLI and the API. Nothing here decides an approval, and nothing here runs
//! on the webhook's path or a worker's: messages are posted in the
//! background, with retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{Event, kind};
use crate::config::SlackConfig;
use crate::redact::Redactor;
use crate::server::{ApiError, Shared};
use crate::store::Store;

/// Where Slack sends interactions (the app's "Request URL").
pub const INTERACTIONS_PATH: &str = "/v1/slack/interactions";

/// The largest interaction body taken. A click on our message is a few
/// kilobytes (the payload repeats the message); anything near this is not one.
pub const MAX_BODY: usize = 64 * 1024;

/// How far a request's `X-Slack-Request-Timestamp` may be from now, either
/// way, and how long a signature is remembered against replays.
pub const MAX_SKEW_SECS: i64 = 300;

/// Longest text put in one field of a message (Slack's limit is 2,000 per
/// field; a long target or reason is cut rather than have the post refused).
const FIELD_MAX: usize = 1500;

type HmacSha256 = hmac::Hmac<sha2_hmac::Sha256>;

/// A run waiting for approval, as the message tells of it.
#[derive(Debug, Clone)]
pub struct Ask {
    pub execution: String,
    pub runbook: String,
    pub target: String,
    pub risk: String,
    /// The guardrail that asked for approval (`approval`, `budget`, …).
    pub guardrail: String,
    pub reason: String,
}

/// A call to Slack that did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    /// No answer (connection refused, timeout, TLS).
    #[error("cannot reach Slack: {0}")]
    Transport(String),
    /// An HTTP status other than 2xx.
    #[error("Slack answered HTTP {status}")]
    Status { status: u16, retry_after: Option<u64> },
    /// The Web API answered `{"ok": false, "error": …}`.
    #[error("Slack refused the call: {0}")]
    Api(String),
}

impl SlackError {
    /// Worth another try: no answer, a 5xx, or rate limited.
    fn transient(&self) -> bool {
        match self {
            SlackError::Transport(_) => true,
            SlackError::Status { status, .. } => *status == 429 || *status >= 500,
            SlackError::Api(code) => matches!(code.as_str(), "ratelimited" | "internal_error" | "service_unavailable"),
        }
    }
}

/// Why an interaction request was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No or malformed `X-Slack-Request-Timestamp` / `X-Slack-Signature`.
    MissingHeaders,
    /// The timestamp is more than [`MAX_SKEW_SECS`] from now.
    Stale,
    /// The signature does not match the body.
    BadSignature,
}

impl Rejection {
    fn message(self) -> &'static str {
        match self {
            Rejection::MissingHeaders => "missing or malformed X-Slack-Request-Timestamp or X-Slack-Signature",
            Rejection::Stale => "X-Slack-Request-Timestamp is more than 5 minutes from now",
            Rejection::BadSignature => "invalid X-Slack-Signature",
        }
    }
}

/// The Slack side of a serving pitcrew: its config, an HTTP client, and the
/// signatures of interactions taken in the last [`MAX_SKEW_SECS`].
pub struct Slack {
    config: SlackConfig,
    redactor: Redactor,
    http: reqwest::Client,
    /// Signature → its request's timestamp. Only requests that passed the
    /// signature check get in, and only for the window they are valid in,
    /// so this stays as small as the number of real clicks.
    seen: Mutex<HashMap<String, i64>>,
}

impl Slack {
    pub fn new(config: SlackConfig, redactor: Redactor) -> Slack {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("pitcrew/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default TLS builds");
        Slack {
            config,
            redactor,
            http,
            seen: Mutex::default(),
        }
    }

    pub fn config(&self) -> &SlackConfig {
        &self.config
    }

    /// The `chat.postMessage` body asking for approval of `ask`. Values are
    /// redacted and escaped (alert data must not mention `@channel` or
    /// make links), and the buttons carry the execution id.
    pub fn message(&self, ask: &Ask) -> Value {
        let field = |s: &str| escape(&self.redactor.text(s));
        let (runbook, target, reason) = (field(&ask.runbook), field(&ask.target), field(&ask.reason));
        let id = &ask.execution;
        let button = |action: &str, label: &str, style: &str| {
            json!({"type": "button", "action_id": action, "value": id, "style": style,
                   "text": {"type": "plain_text", "text": label}})
        };
        json!({
            "channel": self.config.channel,
            "text": format!("pitcrew: {runbook} on {target} waits for approval ({reason}). Execution {id}."),
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": format!("*A run waits for approval*\n{reason}")}},
                {"type": "section", "fields": [
                    {"type": "mrkdwn", "text": format!("*Runbook*\n{runbook}")},
                    {"type": "mrkdwn", "text": format!("*Target*\n{target}")},
                    {"type": "mrkdwn", "text": format!("*Risk*\n{}", field(&ask.risk))},
                    {"type": "mrkdwn", "text": format!("*Asked by guardrail*\n{}", field(&ask.guardrail))},
                    {"type": "mrkdwn", "text": format!("*Execution*\n{id}")},
                ]},
                {"type": "actions", "block_id": "pitcrew-approval", "elements": [
                    button("approve", "Approve", "primary"),
                    button("deny", "Deny", "danger"),
                ]},
            ],
        })
    }

    /// Posts the approval message for `ask` with retries, then records the
    /// outcome (`notification`, route `slack`). Run in the background.
    pub async fn ask(self: Arc<Self>, store: Arc<dyn Store>, ask: Ask) {
        let url = format!("{}/chat.postMessage", self.config.api_url);
        let body = self.message(&ask);
        let outcome = self.with_retries(|| self.post_api(&url, &body)).await;
        if let Err(e) = &outcome {
            tracing::warn!(execution = %ask.execution, error = %e, "approval message not posted to Slack");
        }
        let event = Event::new(
            kind::NOTIFICATION,
            "pitcrew",
            json!({"event": "pending_approval", "route": "slack", "channel": self.config.channel,
                   "delivered": outcome.is_ok(), "error": outcome.err().map(|e| e.to_string())}),
        )
        .execution(&ask.execution, &ask.runbook, &ask.target);
        if let Err(e) = store.record(vec![event]).await {
            tracing::error!(error = %e, "cannot record a Slack notification");
        }
    }

    /// Answers a click through its `response_url` (Slack's own URL for it,
    /// from a signed request), with retries. Run in the background.
    pub async fn respond(self: Arc<Self>, response_url: String, body: Value) {
        if let Err(e) = self.with_retries(|| self.post_response(&response_url, &body)).await {
            // Not the URL: it is a credential for the message.
            tracing::warn!(error = %e, "Slack message not updated");
        }
    }

    async fn with_retries<F, Fut>(&self, mut attempt: F) -> Result<(), SlackError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), SlackError>>,
    {
        let mut delays = backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(std::time::Duration::from_millis(500))
                .with_max_delay(std::time::Duration::from_secs(30))
                .with_max_times(4)
                .with_jitter(),
        );
        loop {
            match attempt().await {
                Err(e) if e.transient() => {
                    let Some(delay) = delays.next() else { return Err(e) };
                    let asked = match &e {
                        SlackError::Status { retry_after: Some(s), .. } => std::time::Duration::from_secs((*s).min(60)),
                        _ => std::time::Duration::ZERO,
                    };
                    tracing::debug!(error = %e, "Slack call failed; trying again");
                    tokio::time::sleep(delay.max(asked)).await;
                }
                done => return done,
            }
        }
    }

    /// One Web API call: `Authorization: Bearer` the bot token, a JSON body,
    /// and an answer whose `ok` must be true.
    async fn post_api(&self, url: &str, body: &Value) -> Result<(), SlackError> {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.config.bot_token)
            .json(body)
            .send()
            .await
            .map_err(|e| SlackError::Transport(self.redactor.text(&crate::diag::chain(&e))))?;
        let response = check_status(response)?;
        let answer: Value = response.json().await.map_err(|e| SlackError::Transport(e.to_string()))?;
        if answer["ok"] == json!(true) {
            return Ok(());
        }
        Err(SlackError::Api(answer["error"].as_str().unwrap_or("no error given").to_string()))
    }

    /// One POST to a `response_url`: no token (the URL is the credential).
    async fn post_response(&self, url: &str, body: &Value) -> Result<(), SlackError> {
        let response = self.http.post(url).json(body).send().await.map_err(|e| {
            // reqwest's error names the URL; it must not reach the log.
            SlackError::Transport(if e.is_timeout() {
                "timed out".into()
            } else {
                "connection failed".into()
            })
        })?;
        check_status(response).map(|_| ())
    }

    /// Checks a request's timestamp and signature: `v0=` + hex HMAC-SHA256
    /// of `v0:{timestamp}:{body}` keyed with the signing secret, compared in
    /// constant time. Returns the timestamp.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now_s: i64) -> Result<i64, Rejection> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(ts_text), Some(signature)) = (text("x-slack-request-timestamp"), text("x-slack-signature")) else {
            return Err(Rejection::MissingHeaders);
        };
        let ts: i64 = ts_text.trim().parse().map_err(|_| Rejection::MissingHeaders)?;
        if (now_s - ts).abs() > MAX_SKEW_SECS {
            return Err(Rejection::Stale);
        }
        let given = signature
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(Rejection::BadSignature)?;
        let mut mac = HmacSha256::new_from_slice(self.config.signing_secret.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(b"v0:");
        mac.update(ts_text.as_bytes());
        mac.update(b":");
        mac.update(body);
        mac.verify_slice(&given).map_err(|_| Rejection::BadSignature)?;
        Ok(ts)
    }

    /// Whether this signed request is new here. The signature covers the
    /// timestamp and the whole body, so the same payload sent again has the
    /// same signature; one older than the window is refused as stale anyway.
    fn first_time(&self, signature: &str, ts: i64, now_s: i64) -> bool {
        let mut seen = self.seen.lock().expect("seen lock");
        seen.retain(|_, t| (now_s - *t).abs() <= MAX_SKEW_SECS);
        seen.insert(signature.to_string(), ts).is_none()
    }
}

fn check_status(response: reqwest::Response) -> Result<reqwest::Response, SlackError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    Err(SlackError::Status {
        status: status.as_u16(),
        retry_after,
    })
}

/// Slack's mrkdwn escaping (`&`, `<`, `>`), and a cut to [`FIELD_MAX`].
fn escape(text: &str) -> String {
    let mut cut: String = text.chars().take(FIELD_MAX).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A button click, as Slack's `block_actions` payload carries it.
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: PayloadUser,
    #[serde(default)]
    actions: Vec<PayloadAction>,
    response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PayloadUser {
    id: String,
}

#[derive(Debug, Deserialize)]
struct PayloadAction {
    action_id: String,
    value: Option<String>,
}

/// What a click asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Approve,
    Deny,
}

/// The `payload` field of a form-encoded body, parsed.
fn parse_click(body: &[u8]) -> Result<(Payload, Answer, String), String> {
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or("no `payload` field in the form body")?;
    let payload: Payload = serde_json::from_str(&payload).map_err(|e| format!("invalid payload: {e}"))?;
    if payload.kind != "block_actions" {
        return Err(format!("interaction type {:?} is not handled; only block_actions", payload.kind));
    }
    let action = payload.actions.first().ok_or("payload has no actions")?;
    let answer = match action.action_id.as_str() {
        "approve" => Answer::Approve,
        "deny" => Answer::Deny,
        other => return Err(format!("unknown action_id {other:?}; expected approve or deny")),
    };
    let id = action
        .value
        .as_deref()
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .ok_or("the action carries no execution id")?;
    Ok((payload, answer, id))
}

/// `POST /v1/slack/interactions`: a button click on an approval message.
///
/// Authenticated by Slack's signature, not a bearer token: 401 (nothing
/// changes) without a valid signature or with a timestamp more than five
/// minutes from the store's clock; 409 for a request already taken (the same
/// signature). A Slack user `slack.users` does not map is refused (403,
/// audited `access.refused`); the rest is `Engine::approve` / `deny` as
/// `slack:NAME`. The message is updated through the click's `response_url`
/// in the background: replaced by the outcome when the answer was taken,
/// an ephemeral note to the clicker when it was refused.
pub async fn interactions(AxumState(state): AxumState<Shared>, headers: HeaderMap, body: Body) -> Response {
    match interaction(&state, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn interaction(state: &Shared, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let engine = &state.engine;
    let Some(slack) = engine.slack.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Slack is not configured (no `slack:` in the config)",
        ));
    };
    let unauthorized = |r: Rejection| ApiError::new(StatusCode::UNAUTHORIZED, r.message());
    // What can be checked before the body is read, is.
    let now_s = engine.store.now().timestamp();
    for name in ["x-slack-request-timestamp", "x-slack-signature"] {
        if headers.get(name).is_none() {
            return Err(unauthorized(Rejection::MissingHeaders));
        }
    }
    let ts_ok = headers
        .get("x-slack-request-timestamp")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    match ts_ok {
        None => return Err(unauthorized(Rejection::MissingHeaders)),
        Some(ts) if (now_s - ts).abs() > MAX_SKEW_SECS => return Err(unauthorized(Rejection::Stale)),
        Some(_) => {}
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type {content_type:?} is not application/x-www-form-urlencoded"),
        ));
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {MAX_BODY} bytes")))?;
    let ts = slack.verify(headers, &bytes, now_s).map_err(unauthorized)?;
    let signature = headers.get("x-slack-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !slack.first_time(signature, ts, now_s) {
        tracing::warn!("a Slack interaction was sent again (same signature); refused");
        return Err(ApiError::new(StatusCode::CONFLICT, "this interaction was already received"));
    }
    let (payload, answer, id) = parse_click(&bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    // Only an http(s) URL is ever called back; the request is Slack's, signed.
    let respond_to = payload
        .response_url
        .clone()
        .filter(|u| reqwest::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https")));
    let note = |text: String| {
        if let Some(url) = &respond_to {
            let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
            engine.background(slack.clone().respond(url.clone(), body));
        }
    };
    let exec = match engine.store.execution(&id).await {
        Ok(exec) => exec,
        Err(e) => {
            let e = ApiError::from(e);
            note(format!("pitcrew: {}", e.message()));
            return Err(e);
        }
    };
    let Some(name) = slack.config.users.get(&payload.user.id) else {
        let reason = format!(
            "Slack user {} is not in slack.users, so pitcrew does not know who they are",
            payload.user.id
        );
        let action = match answer {
            Answer::Approve => "approve",
            Answer::Deny => "deny",
        };
        let event = Event::new(
            kind::ACCESS_REFUSED,
            format!("slack-user:{}", payload.user.id),
            json!({"action": action, "slack_user": payload.user.id, "reason": reason}),
        )
        .execution(&exec.id, &exec.runbook, &exec.target);
        engine.store.record(vec![event]).await?;
        note(format!("pitcrew: {reason}; ask an operator to add you."));
        return Err(ApiError::new(StatusCode::FORBIDDEN, reason));
    };
    let actor = format!("slack:{name}");
    let decided = match answer {
        Answer::Approve => engine.approve(&id, &actor).await,
        Answer::Deny => engine.deny(&id, &actor, None).await,
    };
    match decided {
        Ok(exec) => {
            let (verb, mark, key) = match answer {
                Answer::Approve => ("Approved", ":white_check_mark:", "approved_by"),
                Answer::Deny => ("Denied", ":no_entry:", "denied_by"),
            };
            if let Some(url) = respond_to {
                let (runbook, target) = (escape(&exec.runbook), escape(&slack.redactor.text(&exec.target)));
                let text = format!(
                    "{mark} *{verb}* by {} in Slack: *{runbook}* on {target} (execution {})",
                    escape(name),
                    exec.id
                );
                let body = json!({"replace_original": true, "text": text,
                                  "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]});
                engine.background(slack.clone().respond(url, body));
            }
            Ok(Json(json!({"execution_id": exec.id, "state": exec.state, key: actor})).into_response())
        }
        Err(e) => {
            let e = ApiError::from(e);
            if e.status().is_client_error() {
                note(format!("pitcrew: {}", e.message()));
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slack() -> Slack {
        Slack::new(
            SlackConfig {
                api_url: "http://127.0.0.1:1".into(),
                bot_token: "xoxb-bot-token".into(),
                signing_secret: "8f742231b10e8888abcd99yyyzzz85a5".into(),
                channel: "#oncall".into(),
                users: Default::default(),
            },
            Redactor::default(),
        )
    }

    /// Slack's own example from its "Verifying requests from Slack" page.
    #[test]
    fn verifies_slacks_documented_example() {
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let mut headers = HeaderMap::new();
        headers.insert("x-slack-request-timestamp", "1531420618".parse().unwrap());
        headers.insert(
            "x-slack-signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
                .parse()
                .unwrap(),
        );
        let s = slack();
        assert_eq!(s.verify(&headers, body, 1531420618 + 10), Ok(1531420618));
        assert_eq!(s.verify(&headers, body, 1531420618 + 301), Err(Rejection::Stale));
        assert_eq!(s.verify(&headers, body, 1531420618 - 301), Err(Rejection::Stale));
        assert_eq!(s.verify(&headers, &body[1..], 1531420618), Err(Rejection::BadSignature));
        headers.insert("x-slack-signature", "v1=a2114d57".parse().unwrap());
        assert_eq!(s.verify(&headers, body, 1531420618), Err(Rejection::BadSignature));
        headers.remove("x-slack-signature");
        assert_eq!(s.verify(&headers, body, 1531420618), Err(Rejection::MissingHeaders));
    }

    #[test]
    fn a_signature_is_taken_once_within_the_window() {
        let s = slack();
        assert!(s.first_time("v0=aa", 1000, 1000));
        assert!(!s.first_time("v0=aa", 1000, 1100));
        assert!(s.first_time("v0=bb", 1100, 1100));
        // Past the window the entry goes (the request would be stale anyway).
        assert!(s.first_time("v0=aa", 1000, 1000 + MAX_SKEW_SECS + 1));
        assert_eq!(s.seen.lock().unwrap().len(), 2, "v0=bb is still in its window");
        assert!(s.first_time("v0=cc", 2000, 2000));
        assert_eq!(s.seen.lock().unwrap().len(), 1, "the old ones are gone");
    }

    #[test]
    fn message_values_are_escaped_and_the_buttons_carry_the_id() {
        let s = slack();
        let m = s.message(&Ask {
            execution: "01abc".into(),
            runbook: "fix".into(),
            target: "<!channel> & <http://evil|click>".into(),
            risk: "high".into(),
            guardrail: "approval".into(),
            reason: "approval: required".into(),
        });
        let shown = m.to_string();
        assert!(
            !shown.contains("<!channel>") && shown.contains("&lt;!channel&gt; &amp; &lt;http://evil|click&gt;"),
            "{shown}"
        );
        let buttons = &m["blocks"][2]["elements"];
        assert_eq!(buttons[0]["action_id"], "approve");
        assert_eq!(buttons[1]["action_id"], "deny");
        assert_eq!((&buttons[0]["value"], &buttons[1]["value"]), (&json!("01abc"), &json!("01abc")));
        assert_eq!(m["channel"], "#oncall");
    }
}
