//! PagerDuty Events API v2 against a fake Events endpoint that records what
//! it is sent and can fail the first N events: acknowledge on start with
//! Alertmanager's dedup key, page on failure, retries, and end to end with a
//! real Alertmanager whose own PagerDuty integration posts to the same fake.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::e2e::{Serve, setup};
use crate::realparts::Alertmanager;
use crate::support::{Harness, alert};

const KEY: &str = "R0UT1NGKEY0123456789abcdefghijkl";

#[derive(Default)]
struct Inner {
    events: Vec<Value>,
    /// Answers to give before accepting: (status) each, in order.
    fail_first: Vec<u16>,
}

/// The fake Events API: `POST /v2/enqueue` answers 202 like PagerDuty.
struct FakePd {
    url: String,
    state: Arc<Mutex<Inner>>,
}

impl FakePd {
    async fn start() -> FakePd {
        let state = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().route("/v2/enqueue", post(enqueue)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakePd {
            url: format!("http://{addr}/v2/enqueue"),
            state,
        }
    }

    fn fail_first(&self, statuses: &[u16]) {
        self.state.lock().unwrap().fail_first = statuses.to_vec();
    }

    /// Every request received, refused ones included.
    fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// Polls until `want` holds for the events, or fails after 30 s.
    async fn until(&self, what: &str, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events();
            if want(&events) {
                return events;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: events so far {events:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn enqueue(State(state): State<Arc<Mutex<Inner>>>, body: String) -> (StatusCode, String) {
    let mut inner = state.lock().unwrap();
    let event: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    inner.events.push(event);
    if !inner.fail_first.is_empty() {
        let status = inner.fail_first.remove(0);
        return (
            StatusCode::from_u16(status).unwrap(),
            r#"{"status":"error","message":"not now"}"#.into(),
        );
    }
    (
        StatusCode::ACCEPTED,
        r#"{"status":"success","message":"Event processed","dedup_key":"x"}"#.into(),
    )
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

const GROUP_KEY: &str = "{}/{team=\"shop\"}:{alertname=\"WebDown\"}";

fn runbook(name: &str, ack: bool, command: &str) -> String {
    let pd = if ack { "pagerduty: {acknowledge: true}\n" } else { "" };
    format!(
        "apiVersion: pitcrew/v1\nname: {name}\ntrigger: {{alertname: WebDown}}\nrisk: high\ntarget: \"{{{{alert.labels.service}}}}\"\n{pd}steps:\n  - name: fix\n    action: exec\n    with: {{command: [{command}]}}\n"
    )
}

fn harness(pd: &FakePd, runbooks: &str) -> Harness {
    Harness::new(runbooks, &format!("pagerduty:\n  events_url: {}\n  routing_key: {KEY}\n", pd.url))
}

/// A notification as Alertmanager's webhook sends it, with this group key.
fn notification(group_key: Option<&str>, service: &str) -> Value {
    let mut body = crate::support::payload(vec![alert(&[("alertname", "WebDown"), ("service", service)])]);
    match group_key {
        Some(k) => body["groupKey"] = json!(k),
        None => {
            body.as_object_mut().unwrap().remove("groupKey");
        }
    }
    body
}

async fn records(h: &Harness, kind: &str) -> Vec<pitcrew::audit::Record> {
    h.engine.settle().await;
    h.audit().await.into_iter().filter(|r| r.kind == kind).collect()
}

#[tokio::test]
async fn a_run_acknowledges_alertmanagers_incident_and_a_failed_run_pages() {
    let pd = FakePd::start().await;
    let h = harness(&pd, &runbook("fix-web", true, "/bin/false"));
    let (status, _) = h.post(&notification(Some(GROUP_KEY), "web")).await;
    assert_eq!(status, 202);
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.len(), 1);
    h.engine.settle().await;

    let events = pd.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let ack = events.iter().find(|e| e["event_action"] == "acknowledge").expect("an acknowledge");
    assert_eq!(ack["dedup_key"], sha256_hex(GROUP_KEY), "Alertmanager's key for the group");
    assert_eq!(ack["routing_key"], KEY);
    let page = events.iter().find(|e| e["event_action"] == "trigger").expect("a page");
    let execution = h.store().executions(Default::default()).await.unwrap().remove(0);
    assert_eq!(page["dedup_key"], format!("pitcrew/{}", execution.id));
    assert_eq!(page["routing_key"], KEY);
    assert_eq!(page["payload"]["severity"], "critical", "high risk pages as critical");
    assert_eq!(page["payload"]["source"], "web");
    let summary = page["payload"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("fix-web") && summary.contains("web") && summary.contains("failed") && summary.contains("exited"),
        "names runbook, target and error: {summary}"
    );

    let audited = records(&h, "pagerduty").await;
    assert_eq!(audited.len(), 2);
    for r in &audited {
        assert_eq!(r.execution_id.as_deref(), Some(execution.id.as_str()));
        assert_eq!(r.data["delivered"], true, "{:#}", r.data);
        assert_eq!(r.data["attempts"], 1);
        assert!(!r.data.to_string().contains(KEY), "the routing key is never recorded");
    }
    let metrics = h.engine.metrics.render();
    for line in [
        "pitcrew_pagerduty_events_total{action=\"acknowledge\",outcome=\"delivered\"} 1",
        "pitcrew_pagerduty_events_total{action=\"trigger\",outcome=\"delivered\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_run_that_succeeds_only_acknowledges_and_runbooks_without_the_key_send_nothing() {
    let pd = FakePd::start().await;
    let runbooks = format!(
        "{}---\n{}",
        runbook("ack-ok", true, "/bin/true"),
        runbook("plain-fails", false, "/bin/false")
    );
    let h = harness(&pd, &runbooks);
    h.post(&notification(Some(GROUP_KEY), "web")).await;
    assert_eq!(h.run_queued().await.len(), 2);
    h.engine.settle().await;
    let events = pd.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["event_action"], "acknowledge");
    let audited = records(&h, "pagerduty").await;
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].runbook.as_deref(), Some("ack-ok"));
}

#[tokio::test]
async fn deliveries_are_retried_with_backoff_until_accepted() {
    let pd = FakePd::start().await;
    pd.fail_first(&[500, 429, 503]);
    let h = harness(&pd, &runbook("fix-web", true, "/bin/true"));
    h.post(&notification(Some(GROUP_KEY), "web")).await;
    h.run_queued().await;
    let audited = records(&h, "pagerduty").await;
    assert_eq!(audited.len(), 1, "one record, for the delivery");
    assert_eq!(audited[0].data["delivered"], true);
    assert_eq!(audited[0].data["attempts"], 4);
    assert_eq!(audited[0].data["status"], 202);
    let events = pd.events();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e == &events[0]), "the same event each time");
}

#[tokio::test]
async fn an_event_pagerduty_refuses_is_not_retried_and_its_failure_is_audited_and_counted() {
    let pd = FakePd::start().await;
    pd.fail_first(&[400]);
    let h = harness(&pd, &runbook("fix-web", true, "/bin/true"));
    h.post(&notification(Some(GROUP_KEY), "web")).await;
    h.run_queued().await;
    let audited = records(&h, "pagerduty").await;
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].data["delivered"], false);
    assert_eq!(audited[0].data["attempts"], 1);
    assert_eq!(audited[0].data["status"], 400);
    assert!(audited[0].data["error"].as_str().unwrap().contains("400"), "{:#}", audited[0].data);
    assert_eq!(pd.events().len(), 1);
    let metrics = h.engine.metrics.render();
    assert!(
        metrics.contains("pitcrew_pagerduty_events_total{action=\"acknowledge\",outcome=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn manual_runs_and_alerts_without_a_group_key_acknowledge_nothing() {
    let pd = FakePd::start().await;
    let h = harness(&pd, &runbook("fix-web", true, "/bin/false"));
    // A notification without groupKey (as stored before pitcrew kept it).
    h.post(&notification(None, "web")).await;
    h.run_queued().await;
    // A run asked for by hand.
    let set = h.engine.runbooks();
    let rb = set.get("fix-web").unwrap().clone();
    let resolved = pitcrew::runbook::Resolved {
        params: Default::default(),
        target: "by-hand".into(),
        inhibit: Vec::new(),
    };
    let admission = h.engine.manual_admission(&rb, resolved, "user:test".into(), false, None).await;
    h.engine.admit(admission, None).await.unwrap();
    h.run_queued().await;
    h.engine.settle().await;
    let events = pd.events();
    // The alert's failed run still pages (its id is the key); nothing is acknowledged,
    // and the manual run, failed too, pages nobody: whoever started it watches it.
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["event_action"], "trigger");
    assert_eq!(events[0]["payload"]["source"], "web");
}

#[tokio::test]
async fn the_group_key_is_kept_with_the_stored_alert() {
    let pd = FakePd::start().await;
    let h = harness(&pd, &runbook("fix-web", true, "/bin/true"));
    h.post(&notification(Some(GROUP_KEY), "web")).await;
    let received = records(&h, "alert.received").await;
    assert_eq!(received[0].data["groupKey"], GROUP_KEY);
    let exec = h.store().executions(Default::default()).await.unwrap().remove(0);
    let exec = h.store().execution(&exec.id).await.unwrap();
    assert_eq!(exec.alert.unwrap().group_key.as_deref(), Some(GROUP_KEY));
}

#[test]
fn a_runbook_that_acknowledges_needs_the_pagerduty_section() {
    let dir = tempfile::tempdir().unwrap();
    let rb = dir.path().join("rb.yaml");
    std::fs::write(&rb, runbook("fix-web", true, "/bin/true")).unwrap();
    let config = pitcrew::config::Config::parse(&dir.path().join("pitcrew.yaml"), "").unwrap();
    let err = pitcrew::runbook::compile::load(&config, std::slice::from_ref(&rb))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pagerduty.acknowledge needs the config's `pagerduty` section"),
        "{err}"
    );
    let err = pitcrew::config::Config::parse(&dir.path().join("pitcrew.yaml"), "pagerduty: {events_url: \"http://x\"}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("routing_key_file"), "{err}");
}

/// Real Alertmanager, one receiver with its own PagerDuty integration and
/// pitcrew's webhook: pitcrew's acknowledge carries the very dedup key
/// Alertmanager's trigger used, which is sha256 of the groupKey pitcrew
/// received; the failed run then pages with its own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_alertmanager_incident_is_acknowledged_by_its_own_dedup_key() {
    let pd = FakePd::start().await;
    let rb = runbook("fix-web", true, "/bin/false");
    let (dir, config) = setup(
        &rb,
        &format!(
            "auth:\n  webhook_token: e2e-hook-token\npagerduty:\n  events_url: {}\n  routing_key_file: pd-key\n",
            pd.url
        ),
    );
    std::fs::write(dir.path().join("pd-key"), format!("{KEY}\n")).unwrap();
    let serve = Serve::start(&config).await;
    let am_config = format!(
        "route:\n  receiver: oncall\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: oncall\n    pagerduty_configs:\n      - routing_key: {KEY}\n        url: {pd}\n        send_resolved: false\n\
         \x20   webhook_configs:\n      - url: {pitcrew}/v1/alerts/alertmanager\n        http_config: {{authorization: {{credentials: e2e-hook-token}}}}\n",
        pd = pd.url,
        pitcrew = serve.url
    );
    let am = Alertmanager::start(&am_config).await;
    am.post_alert(&[("alertname", "WebDown"), ("service", "web")]).await;

    let events = pd
        .until("Alertmanager's trigger, pitcrew's acknowledge and page", |e| {
            e.iter().filter(|x| x["event_action"] == "trigger").count() >= 2 && e.iter().any(|x| x["event_action"] == "acknowledge")
        })
        .await;
    let am_trigger = events
        .iter()
        .find(|e| e["event_action"] == "trigger" && !e["dedup_key"].as_str().unwrap_or("").starts_with("pitcrew/"))
        .unwrap_or_else(|| panic!("Alertmanager's own trigger: {events:#?}"));
    let ack = events.iter().find(|e| e["event_action"] == "acknowledge").unwrap();
    assert_eq!(
        ack["dedup_key"], am_trigger["dedup_key"],
        "the acknowledge lands on Alertmanager's incident"
    );

    // The groupKey as pitcrew received it, from its audit log.
    serve.settle(Duration::from_secs(30)).await;
    let out = crate::cli::pitcrew(&["--config", config.to_str().unwrap(), "audit", "export"]);
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let received = records.iter().find(|r| r["kind"] == "alert.received").expect("alert.received");
    let group_key = received["data"]["groupKey"].as_str().expect("the groupKey is stored");
    assert!(group_key.contains("alertname=\"WebDown\""), "{group_key}");
    assert_eq!(ack["dedup_key"], sha256_hex(group_key));

    let failed = serve.executions("status=failed").await;
    assert_eq!(failed.len(), 1);
    let page = events
        .iter()
        .find(|e| e["event_action"] == "trigger" && e["dedup_key"] == format!("pitcrew/{}", failed[0]["id"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("pitcrew's page for the failed run: {events:#?}"));
    assert!(page["payload"]["summary"].as_str().unwrap().contains("fix-web"));
    let sent: Vec<&Value> = records.iter().filter(|r| r["kind"] == "pagerduty").collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert!(sent.iter().all(|r| r["data"]["delivered"] == true));
    serve.kill9().await;
}
