//! Slack approvals against a fake Slack (an axum server on loopback that
//! records `chat.postMessage` and `response_url` calls), driven by
//! interaction payloads built and signed as Slack builds them.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use hmac::{KeyInit, Mac};
use pitcrew::store::{ExecutionFilter, State};
use serde_json::{Value, json};

use crate::support::{Harness, alert, payload};

const BOT_TOKEN: &str = "xoxb-1234-5678-bot-token-secret";
const SIGNING_SECRET: &str = "slack-signing-secret-0123456789";

/// What the fake Slack was sent: (path, Authorization header, JSON body).
type Calls = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

struct FakeSlack {
    port: u16,
    calls: Calls,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSlack {
    /// Answers `chat.postMessage` as Slack does (`ok: true`), after
    /// `failures` answers of 503; any other path (a `response_url`) with 200.
    async fn start(failures: usize) -> FakeSlack {
        let calls: Calls = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = calls.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let path = uri.path().to_string();
                    let mut log = log.lock().unwrap();
                    log.push((path.clone(), auth, body));
                    if path == "/api/chat.postMessage" {
                        let posts = log.iter().filter(|c| c.0 == path).count();
                        if posts <= failures {
                            return (StatusCode::SERVICE_UNAVAILABLE, "try later".to_string());
                        }
                        return (
                            StatusCode::OK,
                            json!({"ok": true, "channel": "C024BE91L", "ts": "1700000000.000100"}).to_string(),
                        );
                    }
                    (StatusCode::OK, "ok".to_string())
                }
            },
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeSlack { port, calls, task }
    }

    fn calls(&self, path: &str) -> Vec<(String, Option<String>, Value)> {
        self.calls.lock().unwrap().iter().filter(|c| c.0 == path).cloned().collect()
    }

    fn response_url(&self, n: u32) -> String {
        format!("http://127.0.0.1:{}/actions/T024BE7LD/{n}/hook-secret-part", self.port)
    }

    /// Waits (with a deadline) until `path` was called `n` times.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<(String, Option<String>, Value)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seen = self.calls(path);
            if seen.len() >= n {
                return seen;
            }
            assert!(std::time::Instant::now() < deadline, "{path} called {} times, not {n}", seen.len());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

fn runbook() -> &'static str {
    "apiVersion: pitcrew/v1\nname: fix\ntrigger: {alertname: Broken}\ntarget: web-1\nrisk: medium\n\
     guardrails: {approval: required}\npermissions: {approve: [sre]}\n\
     steps:\n  - name: note\n    action: log\n    with: {message: fixing}\n"
}

/// Tokens (carol is in sre, alice is not), a CLI user bob, and Slack.
fn config(secrets: &std::path::Path, slack: &FakeSlack) -> String {
    std::fs::write(secrets.join("bot"), format!("{BOT_TOKEN}\n")).unwrap();
    std::fs::write(secrets.join("signing"), format!("{SIGNING_SECRET}\n")).unwrap();
    format!(
        "auth:\n  tokens:\n\
         \x20   - {{name: alice, token: alice-secret-1, role: operator, groups: [payments]}}\n\
         \x20   - {{name: carol, token: carol-secret-1, role: operator, groups: [sre]}}\n\
         \x20 users:\n    - {{name: bob, groups: [sre]}}\n\
         slack:\n  api_url: http://127.0.0.1:{}/api\n  bot_token_file: {}\n  signing_secret_file: {}\n  channel: \"#oncall\"\n\
         \x20 users: {{UALICE01: alice, UCAROL01: carol, UBOB0001: bob}}\n",
        slack.port,
        secrets.join("bot").display(),
        secrets.join("signing").display(),
    )
}

/// A `block_actions` payload as Slack sends it for a click on our message,
/// form-encoded as Slack posts it.
fn click(user: &str, action: &str, execution: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "name": "someone", "team_id": "T024BE7LD"},
        "api_app_id": "A02", "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C024BE91L", "is_ephemeral": false},
        "trigger_id": "12345.98765.abcd2358fdea",
        "team": {"id": "T024BE7LD", "domain": "example"},
        "enterprise": null, "is_enterprise_install": false,
        "channel": {"id": "C024BE91L", "name": "oncall"},
        "message": {"type": "message", "text": "pitcrew: fix on web-1 waits for approval", "ts": "1700000000.000100"},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [{"action_id": action, "block_id": "pitcrew-approval", "value": execution, "style": "primary",
                     "type": "button", "action_ts": "1700000001.000200",
                     "text": {"type": "plain_text", "text": "Approve", "emoji": true}}],
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

fn sign(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2_hmac::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts an interaction with the given timestamp and signature.
async fn interact(h: &Harness, body: &str, ts: i64, signature: &str) -> (StatusCode, Value) {
    let ts = ts.to_string();
    let (status, text) = h
        .call(
            "POST",
            "/v1/slack/interactions",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-slack-request-timestamp", &ts),
                ("x-slack-signature", signature),
                // Slack reaches pitcrew under its public name.
                ("host", "pitcrew.example.com"),
            ],
            body.to_string(),
        )
        .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Signed as Slack signs, now.
async fn signed(h: &Harness, body: &str) -> (StatusCode, Value) {
    let ts = h.engine.store.now().timestamp();
    interact(h, body, ts, &sign(SIGNING_SECRET, ts, body)).await
}

/// Audit kinds and the pending run's state: what must not change on a refusal.
async fn snapshot(h: &Harness, id: &str) -> (State, usize, usize) {
    let kinds = h.kinds().await;
    let answers = kinds.iter().filter(|k| *k == "approval.granted" || *k == "approval.denied").count();
    (h.store().execution(id).await.unwrap().state, answers, kinds.len())
}

/// Log lines of this test's thread (the runtime is single-threaded, so the
/// handlers and background deliveries log here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_signed_click_approves_and_everything_else_is_refused_with_nothing_changed() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("pitcrew=debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let fake = FakeSlack::start(1).await;
    let secrets = tempfile::tempdir().unwrap();
    let h = Harness::new(runbook(), &config(secrets.path(), &fake));

    // An alert: the run waits, and Slack is asked (after one 503, retried).
    h.post(&payload(vec![alert(&[("alertname", "Broken"), ("instance", "web-1")])]))
        .await;
    h.engine.settle().await;
    let runs = h.store().executions(ExecutionFilter::default()).await.unwrap();
    let id = runs[0].id.clone();
    assert_eq!(runs[0].state, State::PendingApproval);
    let posts = fake.calls("/api/chat.postMessage");
    assert_eq!(posts.len(), 2, "one 503, then delivered");
    let (_, auth, message) = &posts[1];
    assert_eq!(auth.as_deref(), Some(format!("Bearer {BOT_TOKEN}").as_str()));
    assert_eq!(message["channel"], "#oncall");
    let shown = message.to_string();
    for needle in ["fix", "web-1", "medium", "*Asked by guardrail*\\napproval", id.as_str()] {
        assert!(shown.contains(needle), "{needle} not in {shown}");
    }
    let actions = &message["blocks"][2];
    assert_eq!(actions["type"], "actions");
    assert_eq!(
        (&actions["elements"][0]["action_id"], &actions["elements"][0]["value"]),
        (&json!("approve"), &json!(id))
    );
    assert_eq!(
        (&actions["elements"][1]["action_id"], &actions["elements"][1]["value"]),
        (&json!("deny"), &json!(id))
    );
    let sent: Vec<_> = h
        .audit()
        .await
        .into_iter()
        .filter(|r| r.kind == "notification" && r.data["route"] == "slack")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (&sent[0].data["delivered"], sent[0].execution_id.as_deref()),
        (&json!(true), Some(id.as_str()))
    );

    let before = snapshot(&h, &id).await;
    let now = h.engine.store.now().timestamp();
    let good = click("UCAROL01", "approve", &id, &fake.response_url(1));

    // Wrong secret, tampered body, stale or future timestamp, no headers: 401.
    for (ts, signature, body) in [
        (now, sign("not-the-signing-secret", now, &good), good.clone()),
        (now, sign(SIGNING_SECRET, now, &good), good.replace("UCAROL01", "UCAROL02")),
        (now - 301, sign(SIGNING_SECRET, now - 301, &good), good.clone()),
        (now + 301, sign(SIGNING_SECRET, now + 301, &good), good.clone()),
        (now, "v0=".to_string(), good.clone()),
    ] {
        let (status, answer) = interact(&h, &body, ts, &signature).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    }
    let (status, _) = h
        .call(
            "POST",
            "/v1/slack/interactions",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("host", "pitcrew.example.com"),
            ],
            good.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(snapshot(&h, &id).await, before, "nothing changed, nothing audited");

    // A Slack user nobody mapped: refused and audited.
    let (status, answer) = signed(&h, &click("UNOBODY1", "approve", &id, &fake.response_url(2))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let refused: Vec<_> = h.audit().await.into_iter().filter(|r| r.kind == "access.refused").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].actor.as_str(), refused[0].runbook.as_deref()),
        ("slack-user:UNOBODY1", Some("fix"))
    );
    // alice is mapped but not in sre: `permissions` refuses her.
    let (status, answer) = signed(&h, &click("UALICE01", "approve", &id, &fake.response_url(3))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!((&answer["runbook"], &answer["permission"]), (&json!("fix"), &json!("approve")));
    let refused: Vec<_> = h.audit().await.into_iter().filter(|r| r.kind == "access.refused").collect();
    assert_eq!((refused.len(), refused[1].actor.as_str()), (2, "slack:alice"));
    assert_eq!(h.store().execution(&id).await.unwrap().state, State::PendingApproval);
    // Both were told why, in a note only they see.
    let notes = fake.wait_for("/actions/T024BE7LD/3/hook-secret-part", 1).await;
    assert_eq!(
        (&notes[0].2["response_type"], &notes[0].2["replace_original"]),
        (&json!("ephemeral"), &json!(false))
    );
    assert!(
        notes[0].2["text"].as_str().unwrap().contains("permissions.approve"),
        "{:?}",
        notes[0]
    );
    fake.wait_for("/actions/T024BE7LD/2/hook-secret-part", 1).await;

    // carol (sre) approves: the run is queued and runs.
    let (status, answer) = interact(&h, &good, now, &sign(SIGNING_SECRET, now, &good)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["approved_by"], "slack:carol");
    let granted: Vec<_> = h.audit().await.into_iter().filter(|r| r.kind == "approval.granted").collect();
    assert_eq!((granted.len(), granted[0].actor.as_str()), (1, "slack:carol"));
    assert_eq!(granted[0].data["requester"], "alertmanager");
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.iter().map(|o| o.state).collect::<Vec<_>>(), [State::Succeeded]);
    // The message is replaced by the outcome.
    let updates = fake.wait_for("/actions/T024BE7LD/1/hook-secret-part", 1).await;
    assert_eq!(updates[0].2["replace_original"], true);
    let text = updates[0].2["text"].as_str().unwrap();
    assert!(text.contains("Approved") && text.contains("carol") && text.contains(&id), "{text}");
    assert_eq!(updates[0].1, None, "no bot token to a response_url");

    // The same request again, within the window: refused, nothing changes.
    let after = snapshot(&h, &id).await;
    let (status, answer) = interact(&h, &good, now, &sign(SIGNING_SECRET, now, &good)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(snapshot(&h, &id).await, after);
    // On another replica (its own memory of signatures, the same store) the
    // replay finds the run no longer waiting: refused, nothing changes.
    let other = Harness::with_store(
        tempfile::tempdir().unwrap(),
        h.clock.clone(),
        h.engine.config().clone(),
        h.engine.runbooks(),
        h.store().clone(),
    );
    let (status, answer) = interact(&other, &good, now, &sign(SIGNING_SECRET, now, &good)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("not pending_approval"), "{answer}");
    assert_eq!(snapshot(&h, &id).await, after);

    // The two-person rule: carol asked for this run through the API, and her
    // Slack user is the same person.
    let (status, body) = h
        .call(
            "POST",
            "/v1/runbooks/fix/run",
            &[("authorization", "Bearer carol-secret-1"), ("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mine = serde_json::from_str::<Value>(&body).unwrap()["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, answer) = signed(&h, &click("UCAROL01", "approve", &mine, &fake.response_url(4))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("may not approve it too"), "{answer}");
    assert_eq!(h.store().execution(&mine).await.unwrap().state, State::PendingApproval);
    assert!(h.kinds().await.iter().any(|k| k == "approval.refused"));
    // bob (a CLI user in sre) denies it from Slack.
    let (status, answer) = signed(&h, &click("UBOB0001", "deny", &mine, &fake.response_url(5))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["denied_by"], "slack:bob");
    assert_eq!(h.store().execution(&mine).await.unwrap().state, State::Cancelled);
    let denied: Vec<_> = h.audit().await.into_iter().filter(|r| r.kind == "approval.denied").collect();
    assert_eq!(denied[0].actor, "slack:bob");
    let updates = fake.wait_for("/actions/T024BE7LD/5/hook-secret-part", 1).await;
    assert!(updates[0].2["text"].as_str().unwrap().contains("Denied"), "{:?}", updates[0]);

    // No secret anywhere: audit, API answers, logs.
    h.engine.settle().await;
    let (_, audit) = h.call("GET", "/v1/audit", &[("authorization", "Bearer carol-secret-1")], "").await;
    let (_, executions) = h
        .call("GET", "/v1/executions", &[("authorization", "Bearer carol-secret-1")], "")
        .await;
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("trying again"), "the retry was logged: {logs}");
    for (what, text) in [("audit", &audit), ("executions", &executions), ("logs", &logs)] {
        for secret in [BOT_TOKEN, SIGNING_SECRET, "hook-secret-part"] {
            assert!(!text.contains(secret), "{secret} in {what}: {text}");
        }
    }
    assert!(audit.contains("slack:carol"));
}

#[tokio::test]
async fn interactions_are_404_without_slack_and_the_host_rule_still_holds_elsewhere() {
    let h = Harness::new(runbook().replace("permissions: {approve: [sre]}\n", "").as_str(), "");
    let (status, _) = h
        .call(
            "POST",
            "/v1/slack/interactions",
            &[("content-type", "application/x-www-form-urlencoded")],
            "payload=%7B%7D",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without slack configured, the path gets no exception from the loopback rule.
    let (status, _) = h
        .call("POST", "/v1/slack/interactions", &[("host", "pitcrew.example.com")], "")
        .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);

    let fake = FakeSlack::start(0).await;
    let secrets = tempfile::tempdir().unwrap();
    let h = Harness::new(runbook(), &config(secrets.path(), &fake));
    // Tokens are configured here; with Slack, other paths still need them.
    let (status, _) = h.call("GET", "/v1/executions", &[("host", "pitcrew.example.com")], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A body past the limit is refused before it is checked.
    let ts = h.engine.store.now().timestamp();
    let big = format!("payload={}", "a".repeat(pitcrew::slack::MAX_BODY + 1));
    let (status, _) = interact(&h, &big, ts, &sign(SIGNING_SECRET, ts, &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // A JSON body is not what Slack sends.
    let (status, _) = h
        .call(
            "POST",
            "/v1/slack/interactions",
            &[
                ("content-type", "application/json"),
                ("x-slack-request-timestamp", &ts.to_string()),
                ("x-slack-signature", &sign(SIGNING_SECRET, ts, "{}")),
            ],
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[test]
fn slack_config_is_checked_and_its_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bot"), BOT_TOKEN).unwrap();
    std::fs::write(dir.path().join("signing"), SIGNING_SECRET).unwrap();
    let file = dir.path().join("pitcrew.yaml");
    let ok = "auth:\n  users: [{name: bob}]\nslack: {bot_token_file: bot, signing_secret_file: signing, channel: \"#oncall\", users: {UBOB0001: bob}}\n";
    let c = pitcrew::config::Config::parse(&file, ok).unwrap();
    let slack = c.slack.as_ref().unwrap();
    assert_eq!(slack.api_url, "https://slack.com/api");
    assert_eq!(slack.bot_token, BOT_TOKEN);
    assert!(!format!("{c:?}").contains(BOT_TOKEN) && !format!("{c:?}").contains(SIGNING_SECRET));
    assert_eq!(c.redactor.text(&format!("{BOT_TOKEN} {SIGNING_SECRET}")), "[REDACTED] [REDACTED]");
    for (text, needle) in [
        (
            ok.replace("users: {UBOB0001: bob}", "users: {UBOB0001: robert}"),
            "neither an auth.tokens nor an auth.users name",
        ),
        (ok.replace("bot_token_file: bot, ", ""), "needs `bot_token_file`"),
        (ok.replace("signing_secret_file: signing, ", ""), "needs `signing_secret_file`"),
        (ok.replace("channel: \"#oncall\"", "channel: \"#oncall\", chanel: x"), "chanel"),
        (ok.replace("UBOB0001", "\"U-1\""), "invalid Slack user id"),
    ] {
        let shown = pitcrew::config::Config::parse(&file, &text).unwrap_err().to_string();
        assert!(shown.contains(needle), "{needle}: {shown}");
    }
}
