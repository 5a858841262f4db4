//! Approvals and identity: the two-person rule (store, API, CLI), identity
//! from the operating system rather than flags or `$USER`, and the notices a
//! waiting, failed or unknown run sends.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use pitcrew::audit::Record;
use pitcrew::guard::Verdict;
use pitcrew::store::{Admission, State, StoreError, new_id};
use serde_json::{Value, json};

use crate::support::{Harness, alert, payload};

/// A harness on this module's backend: SQLite, or PostgreSQL where this
/// file is included again as `…_on_postgres` (main.rs).
fn harness(runbooks: &str, config: &str) -> Harness {
    Harness::new_on(crate::support::backend_of(module_path!()), runbooks, config)
}

/// One runbook that always needs approval, with a `log` step; `extra` is
/// more top-level YAML (guardrails, notify).
fn needs_approval(name: &str, guardrails: &str, extra: &str) -> String {
    format!(
        "apiVersion: pitcrew/v1\nname: {name}\ntrigger: {{alertname: Broken}}\ntarget: web-1\n\
         guardrails: {{approval: required{guardrails}}}\n{extra}\
         steps:\n  - name: note\n    action: log\n    with: {{message: fixing}}\n"
    )
}

/// A manual run of `name` asked for by `actor`.
fn asked_by(h: &Harness, name: &str, actor: &str) -> Admission {
    let rb = h.engine.runbooks().get(name).unwrap().clone();
    let resolved = h.engine.runbooks().resolve(&rb, None, &BTreeMap::new()).unwrap();
    Admission {
        id: new_id(),
        runbook: rb,
        target: "web-1".into(),
        params: resolved.params,
        actor: actor.into(),
        automated: false,
        dry_run: false,
        force: None,
        budget: None,
        invalid: None,
        inhibit: Vec::new(),
    }
}

async fn pending_run(h: &Harness, name: &str, actor: &str) -> String {
    let admission = asked_by(h, name, actor);
    let id = admission.id.clone();
    let decision = h.engine.admit(admission, None).await.unwrap();
    assert_eq!(decision.verdict, Verdict::PendingApproval, "{decision:?}");
    id
}

async fn records(h: &Harness, kind: &str) -> Vec<Record> {
    h.engine.settle().await;
    h.audit().await.into_iter().filter(|r| r.kind == kind).collect()
}

// ------------------------------------------------------ the two-person rule

#[tokio::test]
async fn the_requester_may_not_approve_their_own_run() {
    let h = harness(&needs_approval("fix", "", ""), "");
    let id = pending_run(&h, "fix", "user:alice").await;

    let refused = h.store().approve(&id, "user:alice", h.engine.approvers()).await;
    match refused {
        Err(e @ StoreError::SelfApproval { .. }) => {
            let shown = e.to_string();
            assert!(shown.contains("user:alice") && shown.contains(&id), "{shown}");
            assert_eq!(e.kind(), "self_approval");
        }
        other => panic!("self-approval went through: {other:?}"),
    }
    assert_eq!(h.store().execution(&id).await.unwrap().state, State::PendingApproval);
    assert!(records(&h, "approval.granted").await.is_empty());
    let refusals = records(&h, "approval.refused").await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].actor, "user:alice");
    assert_eq!(refusals[0].execution_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        (&refusals[0].data["requester"], &refusals[0].data["approver"]),
        (&json!("user:alice"), &json!("user:alice"))
    );

    // Another person may; the audit names both.
    let approved = h.store().approve(&id, "user:bob", h.engine.approvers()).await.unwrap();
    assert_eq!(approved.state, State::Queued);
    let granted = records(&h, "approval.granted").await;
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].actor, "user:bob");
    assert_eq!(
        (&granted[0].data["requester"], &granted[0].data["approver"]),
        (&json!("user:alice"), &json!("user:bob"))
    );
}

#[tokio::test]
async fn self_approval_true_lets_the_requester_approve() {
    let h = harness(&needs_approval("fix", ", self_approval: true", ""), "");
    assert!(h.engine.runbooks().get("fix").unwrap().guardrails.self_approval);
    let id = pending_run(&h, "fix", "user:alice").await;
    let approved = h.store().approve(&id, "user:alice", h.engine.approvers()).await.unwrap();
    assert_eq!(approved.state, State::Queued);
    let granted = records(&h, "approval.granted").await;
    assert_eq!(
        (&granted[0].data["requester"], &granted[0].data["approver"]),
        (&json!("user:alice"), &json!("user:alice"))
    );
}

#[tokio::test]
async fn any_person_may_approve_an_automated_run_and_the_requester_may_deny() {
    let h = harness(&needs_approval("fix", "", ""), "");
    h.post(&payload(vec![alert(&[("alertname", "Broken"), ("instance", "web-1")])]))
        .await;
    let pending = h.store().executions(Default::default()).await.unwrap();
    assert_eq!(pending[0].actor, "alertmanager");
    h.store().approve(&pending[0].id, "user:alice", h.engine.approvers()).await.unwrap();
    h.run_queued().await;

    // Withdrawing one's own request needs no second person.
    let id = pending_run(&h, "fix", "user:alice").await;
    let denied = h
        .store()
        .deny(&id, "user:alice", Some("not now".into()), h.engine.approvers())
        .await
        .unwrap();
    assert_eq!(denied.state, State::Cancelled);
    let d = records(&h, "approval.denied").await;
    assert_eq!(
        (&d[0].data["requester"], &d[0].data["approver"]),
        (&json!("user:alice"), &json!("user:alice"))
    );
}

#[test]
fn self_approval_must_be_a_boolean_and_unknown_guardrails_stay_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = pitcrew::config::Config::default();
    for (guardrails, needle) in [(", self_approval: maybe", "self_approval"), (", self_approve: true", "unknown")] {
        let path = dir.path().join("rb.yaml");
        std::fs::write(&path, needs_approval("fix", guardrails, "")).unwrap();
        let problems = match pitcrew::runbook::compile::load(&config, &[path]) {
            Ok(_) => panic!("{guardrails} was accepted"),
            Err(d) => d.to_string(),
        };
        assert!(problems.contains(needle), "{guardrails}: {problems}");
    }
}

const TOKENS: &str = "auth:\n  tokens:\n    - {name: alice, token: alice-secret-1, role: operator}\n    - {name: bob, token: bob-secret-1, role: operator}\n";

#[tokio::test]
async fn the_api_refuses_self_approval_with_403_and_names_token_identities() {
    let h = harness(&needs_approval("fix", "", ""), TOKENS);
    let as_alice = [("authorization", "Bearer alice-secret-1"), ("content-type", "application/json")];
    let as_bob = [("authorization", "Bearer bob-secret-1"), ("content-type", "application/json")];
    let (status, body) = h.call("POST", "/v1/runbooks/fix/run", &as_alice, "{}").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(h.store().execution(&id).await.unwrap().actor, "api:alice");

    let (status, body) = h.call("POST", &format!("/v1/executions/{id}/approve"), &as_alice, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("api:alice"), "{body}");
    assert_eq!(h.store().execution(&id).await.unwrap().state, State::PendingApproval);

    let (status, body) = h.call("POST", &format!("/v1/executions/{id}/approve"), &as_bob, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["approved_by"], "api:bob");
    let granted = records(&h, "approval.granted").await;
    assert_eq!(granted[0].actor, "api:bob");
    assert_eq!(granted[0].data["requester"], "api:alice");
}

// ------------------------------------------------------ ids by prefix

/// Ids are whatever an admission names (ULIDs in practice); these are
/// chosen to sit on the edges of a prefix's range.
#[tokio::test]
async fn a_unique_id_prefix_stands_for_its_execution_and_an_ambiguous_one_lists_candidates() {
    let h = harness(&needs_approval("fix", "", ""), "");
    let mut ids: Vec<String> = [
        "01kz9xaa", "01kz9xab", "01kz:x00", "01kza000", "01l00000", "abcd1234", "beef", "beef0001",
    ]
    .map(String::from)
    .into();
    ids.extend((0..12).map(|i| format!("01m0{i:02}")));
    for id in &ids {
        let admission = Admission {
            id: id.clone(),
            ..asked_by(&h, "fix", "user:alice")
        };
        // Most are blocked (one run at a time on the target): still executions with ids.
        h.engine.admit(admission, None).await.unwrap();
    }
    let store = h.store();
    let resolved = |p: &'static str| async move { store.resolve_id(p).await };

    assert_eq!(resolved("01kz9xab").await.unwrap(), "01kz9xab", "a whole id");
    assert_eq!(resolved("01kz9xa").await.unwrap_err().kind(), "ambiguous");
    assert_eq!(resolved("abcd").await.unwrap(), "abcd1234");
    // A prefix ending in 9 or z: the range ends at the next letter, not at
    // the next character, and nothing past the prefix gets in.
    match resolved("01kz9").await {
        Err(StoreError::Ambiguous { prefix, candidates, more }) => {
            assert_eq!(
                (prefix.as_str(), candidates, more),
                ("01kz9", vec!["01kz9xaa".to_string(), "01kz9xab".into()], false)
            );
        }
        other => panic!("{other:?}"),
    }
    match resolved("01kz").await {
        Err(StoreError::Ambiguous { candidates, .. }) => assert_eq!(candidates, ["01kz9xaa", "01kz9xab", "01kz:x00", "01kza000"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(resolved("01kza").await.unwrap(), "01kza000");
    // Ten candidates at most, and a word that there are more.
    let many = resolved("01m0").await.unwrap_err();
    assert!(many.to_string().contains("01m000, 01m001"), "{many}");
    let StoreError::Ambiguous { candidates, more, .. } = many else {
        panic!("{many:?}")
    };
    assert_eq!((candidates.len(), candidates[0].as_str(), more), (10, "01m000", true));
    // A whole id wins over the longer ids it starts.
    assert_eq!(resolved("beef").await.unwrap(), "beef");
    // Fewer than four characters are no prefix, only maybe a whole id.
    assert!(matches!(resolved("abc").await, Err(StoreError::NotFound(p)) if p == "abc"));
    assert!(matches!(resolved("01kzq").await, Err(StoreError::NotFound(p)) if p == "01kzq"));
    assert!(matches!(resolved("zzzz").await, Err(StoreError::NotFound(_))));
}

// ------------------------------------------------------------ the CLI

/// `user:NAME` of this test process's real uid, as pitcrew names it.
fn me() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("user:{}", u.name),
        _ => format!("user:uid:{uid}"),
    }
}

fn cli(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pitcrew"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("USER", "mallory")
        .env("LOGNAME", "mallory")
        .env_remove("PITCREW_CONFIG")
        .output()
        .expect("pitcrew runs")
}

fn cli_dir(runbook: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::write(dir.path().join("runbooks/fix.yaml"), runbook).unwrap();
    std::fs::write(dir.path().join("pitcrew.yaml"), "state_dir: state\nplugins: plugins\n").unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn audit(dir: &std::path::Path) -> Vec<Value> {
    let out = cli(dir, &["audit", "export"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_cli_is_the_real_user_and_may_not_approve_its_own_run() {
    let dir = cli_dir(&needs_approval("fix", "", ""));
    let me = me();
    assert_ne!(me, "user:mallory", "run the tests as someone else than mallory");

    // `--as` is gone from every command.
    for args in [
        &["run", "fix", "--as", "bob"][..],
        &["approve", "x", "--as", "bob"],
        &["deny", "x", "--as", "bob"],
        &["reset", "fix", "web-1", "--as", "bob"],
    ] {
        let out = cli(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--as"), "{}", stderr(&out));
    }

    let out = cli(dir.path(), &["run", "fix"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("run waits for approval"), "logged at info: {}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let records = audit(dir.path());
    let decision = records.iter().find(|r| r["kind"] == "guardrail.decision").unwrap();
    assert_eq!(decision["actor"], json!(me), "$USER is ignored");

    let out = cli(dir.path(), &["approve", &id]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let shown = stderr(&out);
    assert!(
        shown.contains(&format!("requester {me}, approver {me}")),
        "the refusal names both identities: {shown}"
    );
    let records = audit(dir.path());
    assert!(records.iter().all(|r| r["kind"] != "approval.granted"));
    let refused: Vec<&Value> = records.iter().filter(|r| r["kind"] == "approval.refused").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["actor"], json!(me));
}

#[test]
fn the_cli_may_approve_its_own_run_when_the_runbook_allows_it() {
    let dir = cli_dir(&needs_approval("fix", ", self_approval: true", ""));
    let out = cli(dir.path(), &["run", "fix"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = cli(dir.path(), &["approve", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let records = audit(dir.path());
    let granted = records.iter().find(|r| r["kind"] == "approval.granted").unwrap();
    assert_eq!(granted["actor"], json!(me()));
    assert_eq!(granted["data"]["requester"], json!(me()));
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "execution.finished" && r["data"]["state"] == "succeeded")
    );
}

// ------------------------------------------------------------ notices

/// A loopback chat webhook that keeps what it is sent: (path, text).
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let text = serde_json::from_slice::<Value>(&body).unwrap_or_default()["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                log.lock().unwrap().push((uri.path().to_string(), text));
                StatusCode::OK
            }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { port, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// Config sending notices here (`/config`), for `on` events.
    fn config(&self, on: Option<&str>) -> String {
        let on = on.map(|o| format!(", on: {o}")).unwrap_or_default();
        format!(
            "notify: {{url: \"{}\"{on}}}\nhttp: {{allowed_hosts: [\"127.0.0.1:{}\"]}}\n",
            self.url("/config"),
            self.port
        )
    }
}

/// Three runbooks: `wait` needs approval, `broken` fails (its exec step
/// exits 1), `recover` is left mid-step by a crash (unknown).
fn three(extra_on_wait: &str) -> String {
    [
        needs_approval("wait", "", extra_on_wait),
        "apiVersion: pitcrew/v1\nname: broken\ntrigger: {alertname: Failing}\nsteps:\n  - name: try\n    action: exec\n    with: {command: [/bin/false]}\n"
            .to_string(),
        "apiVersion: pitcrew/v1\nname: recover\ntrigger: {alertname: Crash}\nsteps:\n  - name: change\n    action: exec\n    with: {command: [/bin/true]}\n"
            .to_string(),
    ]
    .join("---\n")
}

/// Runs one of each: a wait, a failure, an unknown end. Returns the three
/// execution ids.
async fn one_of_each(h: &Harness) -> (String, String, String) {
    h.post(&payload(vec![alert(&[("alertname", "Broken"), ("instance", "web-1")])]))
        .await;
    h.post(&payload(vec![alert(&[("alertname", "Failing")])])).await;
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.iter().map(|o| o.state).collect::<Vec<_>>(), [State::Failed]);

    // A run whose non-idempotent step started under a worker that died.
    h.post(&payload(vec![alert(&[("alertname", "Crash")])])).await;
    let exec = h.store().claim(&h.engine.worker_id, None).await.unwrap().unwrap();
    let start = pitcrew::store::StepStart {
        phase: pitcrew::store::Phase::Main,
        index: 0,
        name: "change".into(),
        action: "exec".into(),
        attempt: 0,
        idempotent: false,
        input: json!({}),
        dry_run: false,
    };
    h.store().step_started(&exec, Default::default(), start).await.unwrap();
    // Its worker is dead (a process gone, a lease lapsed: each backend's own word).
    h.store().recover(Arc::new(|_: &str| false)).await.unwrap();
    h.run_queued().await;
    assert_eq!(h.store().execution(&exec.id).await.unwrap().state, State::Unknown);

    let all = h.store().executions(Default::default()).await.unwrap();
    let id_of = |rb: &str| all.iter().find(|e| e.runbook == rb).unwrap().id.clone();
    (id_of("wait"), id_of("broken"), id_of("recover"))
}

/// What the receiver saw once the engine's notices are delivered.
async fn delivered(h: &Harness, receiver: &Receiver) -> Vec<(String, String)> {
    h.engine.settle().await;
    receiver.seen()
}

#[tokio::test]
async fn a_waiting_a_failed_and_an_unknown_run_each_send_one_notice() {
    let receiver = Receiver::start().await;
    let h = harness(&three(""), &receiver.config(None));
    let (wait, broken, recover) = one_of_each(&h).await;
    let seen = delivered(&h, &receiver).await;
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let text_for = |id: &str| {
        seen.iter()
            .find(|(_, t)| t.contains(id))
            .unwrap_or_else(|| panic!("no notice names {id}: {seen:#?}"))
            .1
            .clone()
    };
    assert!(text_for(&wait).contains("wait on web-1 waits for approval"), "{seen:#?}");
    assert!(text_for(&wait).contains(&format!("pitcrew approve {wait}")), "{seen:#?}");
    assert!(text_for(&broken).contains("broken on"), "{seen:#?}");
    assert!(text_for(&broken).contains("failed"), "{seen:#?}");
    assert!(text_for(&recover).contains("ended unknown"), "{seen:#?}");
    assert!(seen.iter().all(|(path, _)| path == "/config"));

    // Each delivery is audited, naming its run.
    let notes = records(&h, "notification").await;
    let events: Vec<(&str, Option<&str>, bool)> = notes
        .iter()
        .map(|r| {
            (
                r.data["event"].as_str().unwrap(),
                r.execution_id.as_deref(),
                r.data["delivered"] == true,
            )
        })
        .collect();
    assert_eq!(events.len(), 3, "{notes:#?}");
    for (event, id) in [("pending_approval", &wait), ("failed", &broken), ("unknown", &recover)] {
        assert!(events.contains(&(event, Some(id.as_str()), true)), "{event}: {events:?}");
    }
}

#[tokio::test]
async fn notify_on_failed_sends_only_failure_notices() {
    let receiver = Receiver::start().await;
    let h = harness(&three(""), &receiver.config(Some("[failed]")));
    let (_, broken, _) = one_of_each(&h).await;
    let seen = delivered(&h, &receiver).await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert!(seen[0].1.contains(&broken) && seen[0].1.contains("failed"), "{seen:#?}");
    assert_eq!(records(&h, "notification").await.len(), 1);
}

#[tokio::test]
async fn a_runbook_notify_url_wins_over_the_config() {
    let receiver = Receiver::start().await;
    let own = format!("notify: {{url: \"{}\"}}\n", receiver.url("/runbook-own-hook-secret"));
    let h = harness(&three(&own), &receiver.config(None));
    assert!(h.engine.runbooks().get("wait").unwrap().notify_url.is_some());
    let (wait, _, _) = one_of_each(&h).await;
    let seen = delivered(&h, &receiver).await;
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let to_own: Vec<&(String, String)> = seen.iter().filter(|(p, _)| p == "/runbook-own-hook-secret").collect();
    assert_eq!(to_own.len(), 1, "{seen:#?}");
    assert!(to_own[0].1.contains(&wait), "{seen:#?}");
    let notes = records(&h, "notification").await;
    let routed = notes.iter().find(|r| r.execution_id.as_deref() == Some(wait.as_str())).unwrap();
    assert_eq!(routed.data["route"], "runbook");
}

#[tokio::test(start_paused = true)]
async fn a_notice_without_any_url_is_recorded_as_not_delivered() {
    let h = harness(&needs_approval("fix", "", ""), "");
    h.post(&payload(vec![alert(&[("alertname", "Broken"), ("instance", "web-1")])]))
        .await;
    let notes = records(&h, "notification").await;
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_eq!(notes[0].data["event"], "pending_approval");
    assert_eq!(notes[0].data["delivered"], false);
    assert_eq!(notes[0].data["error"], "no notify.url in config");
}

#[test]
fn a_runbook_notify_url_must_be_a_literal_http_url() {
    let dir = tempfile::tempdir().unwrap();
    let config = pitcrew::config::Config::default();
    for (url, needle) in [
        ("\"https://hooks.example/{{alert.labels.x}}\"", "not a template"),
        ("\"ftp://hooks.example/x\"", "http or https"),
        ("\"not a url\"", "http or https"),
    ] {
        let path = dir.path().join("rb.yaml");
        std::fs::write(&path, needs_approval("fix", "", &format!("notify: {{url: {url}}}\n"))).unwrap();
        let problems = match pitcrew::runbook::compile::load(&config, &[path]) {
            Ok(_) => panic!("{url} was accepted"),
            Err(d) => d.to_string(),
        };
        assert!(problems.contains(needle), "{url}: {problems}");
        assert!(!problems.contains("hooks.example"), "the URL is a secret: {problems}");
    }
}

#[test]
fn a_runbook_notify_url_is_redacted_and_a_failed_cli_run_is_logged() {
    let runbook = "apiVersion: pitcrew/v1\nname: fix\ntarget: web-1\nnotify: {url: \"http://127.0.0.1:9/secret-hook-path\"}\n\
                   steps:\n  - name: note\n    action: log\n    with: {message: \"posting to http://127.0.0.1:9/secret-hook-path\"}\n\
                   \x20 - name: fail\n    action: exec\n    with: {command: [/bin/false]}\n";
    let dir = cli_dir(runbook);
    let out = cli(dir.path(), &["run", "fix"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("run ended failed"), "{}", stderr(&out));
    let exported = String::from_utf8_lossy(&cli(dir.path(), &["audit", "export"]).stdout).into_owned();
    assert!(exported.contains("posting to [REDACTED]"), "{exported}");
    assert!(!exported.contains("secret-hook-path"), "{exported}");
    // The failure notice was tried (port 9 refuses: http_guard does not
    // allow loopback without allowed_hosts) and recorded, before exit.
    let records = audit(dir.path());
    let note = records.iter().find(|r| r["kind"] == "notification").expect("a notification record");
    assert_eq!(note["data"]["event"], "failed");
    assert_eq!(note["data"]["delivered"], false);
}
