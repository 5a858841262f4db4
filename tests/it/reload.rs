//! Reloading runbooks and plugins while serving: `POST /-/reload` and
//! SIGHUP. A broken set is refused whole; runs admitted earlier keep the
//! runbook they were admitted with; `config.loaded` marks each set that took
//! effect and no other.

use std::time::Duration;

use axum::http::StatusCode;
use pitcrew::store::{ExecutionFilter, State};
use serde_json::{Value, json};

use crate::e2e::{Serve, setup};
use crate::support::{Harness, alert, payload};

const FIRST: &str = r#"apiVersion: pitcrew/v1
name: first
trigger: {alertname: First}
steps:
  - name: say
    action: log
    with: {message: "first v1"}
"#;

const SECOND: &str = r#"apiVersion: pitcrew/v1
name: second
trigger: {alertname: Second}
steps:
  - name: say
    action: log
    with: {message: "second"}
"#;

const OPERATOR: &str =
    "auth: {tokens: [{name: ops, token: \"operator-token-1\", role: operator}, {name: look, token: \"viewer-token-1\", role: viewer}]}\n";

async fn reload(h: &Harness, token: &str) -> (StatusCode, Value) {
    let bearer = format!("Bearer {token}");
    let (status, body) = h
        .call(
            "POST",
            "/-/reload",
            &[("content-type", "application/json"), ("authorization", &bearer)],
            "",
        )
        .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

async fn matched(h: &Harness, alertname: &str) -> Vec<String> {
    let before: Vec<String> = all_ids(h).await;
    // A label no earlier alert had: each call is a new alert, not a re-send.
    let n = h.audit().await.len().to_string();
    let (status, _) = h.post(&payload(vec![alert(&[("alertname", alertname), ("n", &n)])])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let after = h.store().executions(ExecutionFilter::default()).await.unwrap();
    after.into_iter().filter(|e| !before.contains(&e.id)).map(|e| e.runbook).collect()
}

async fn all_ids(h: &Harness) -> Vec<String> {
    h.store()
        .executions(ExecutionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

async fn config_loaded(h: &Harness) -> Vec<Value> {
    h.audit()
        .await
        .into_iter()
        .filter(|r| r.kind == "config.loaded")
        .map(|r| r.data)
        .collect()
}

#[tokio::test]
async fn a_runbook_added_on_disk_matches_after_post_reload() {
    let h = Harness::new(FIRST, OPERATOR);
    assert!(matched(&h, "Second").await.is_empty(), "not loaded yet");
    std::fs::write(h.dir.path().join("runbooks/second.yaml"), SECOND).unwrap();
    assert!(matched(&h, "Second").await.is_empty(), "files on disk alone change nothing");

    let (status, _) = reload(&h, "viewer-token-1").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer may not reload");
    let (status, _) = h.call("POST", "/-/reload", &[("content-type", "application/json")], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(config_loaded(&h).await.is_empty());

    let (status, reply) = reload(&h, "operator-token-1").await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["reloaded"], json!(true));
    assert_eq!(reply["added"], json!(["second"]));
    assert_eq!(reply["removed"], json!([]));
    assert!(reply["runbooks"]["second"].is_string(), "{reply}");
    assert!(
        reply["note"].as_str().unwrap().contains("config file is read at start only"),
        "{reply}"
    );
    assert_eq!(matched(&h, "Second").await, ["second"]);
    assert_eq!(matched(&h, "First").await, ["first"], "the runbooks that were there still match");

    let loaded = config_loaded(&h).await;
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(loaded[0]["reload"], json!("api"));
    assert!(loaded[0]["runbooks"]["second"].is_string());
    let record = h.audit().await.into_iter().find(|r| r.kind == "config.loaded").unwrap();
    assert_eq!(record.actor, "api:ops");
}

#[tokio::test]
async fn a_set_with_errors_is_refused_and_the_old_set_keeps_matching() {
    let h = Harness::new(FIRST, OPERATOR);
    // One good new runbook, one broken file: nothing of it is taken.
    std::fs::write(h.dir.path().join("runbooks/second.yaml"), SECOND).unwrap();
    std::fs::write(
        h.dir.path().join("runbooks/test.yaml"),
        FIRST.replace("first v1", "{{params.nosuch}}").replace("action: log", "action: lgo"),
    )
    .unwrap();
    let (status, reply) = reload(&h, "operator-token-1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    assert_eq!(reply["reloaded"], json!(false));
    assert!(reply["error"].as_str().unwrap().contains("keep serving"), "{reply}");
    let problems = reply["problems"].as_array().unwrap();
    let unknown = problems
        .iter()
        .find(|p| p["message"].as_str().unwrap().contains("unknown action `lgo`"))
        .unwrap_or_else(|| panic!("{reply}"));
    assert!(unknown["file"].as_str().unwrap().ends_with("runbooks/test.yaml"), "{unknown}");
    assert_eq!(unknown["line"], json!(6), "{unknown}");
    assert!(
        unknown["hint"].as_str().unwrap().contains("`pitcrew actions` lists them all"),
        "{unknown}"
    );

    assert_eq!(matched(&h, "First").await, ["first"], "the old set still serves");
    assert!(matched(&h, "Second").await.is_empty(), "no part of a refused set is taken");
    assert!(config_loaded(&h).await.is_empty(), "a refused set is not recorded as loaded");

    // Fixed on disk, the next reload takes it (and is recorded once).
    std::fs::write(h.dir.path().join("runbooks/test.yaml"), FIRST.replace("first v1", "first v2")).unwrap();
    let (status, reply) = reload(&h, "operator-token-1").await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["changed"], json!(["first"]));
    assert_eq!(reply["added"], json!(["second"]));
    assert_eq!(config_loaded(&h).await.len(), 1);
}

#[tokio::test]
async fn runs_queued_before_a_reload_keep_the_runbook_they_were_admitted_with() {
    // One target per alert: the concurrency lock lets both runs queue.
    let rb = FIRST
        .replace(
            "action: log\n    with: {message: \"first v1\"}",
            "action: exec\n    with: {command: [\"/bin/echo\", \"v1\"]}",
        )
        .replace("steps:", "target: \"{{alert.labels.n}}\"\nsteps:");
    let h = Harness::new(&rb, OPERATOR);
    assert_eq!(matched(&h, "First").await, ["first"]);
    std::fs::write(h.dir.path().join("runbooks/test.yaml"), rb.replace("\"v1\"", "\"v2\"")).unwrap();
    let (status, reply) = reload(&h, "operator-token-1").await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["changed"], json!(["first"]));
    assert_eq!(reply["kept_by_runs"], json!(1), "{reply}");
    assert_eq!(matched(&h, "First").await, ["first"]);

    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes.iter().all(|o| o.state == State::Succeeded), "{outcomes:?}");
    let mut said: Vec<(usize, String)> = Vec::new();
    for listed in h.store().executions(ExecutionFilter::default()).await.unwrap() {
        let exec = h.store().execution(&listed.id).await.unwrap();
        let out = exec.steps[0].output.as_ref().unwrap()["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .to_string();
        said.push((exec.target.parse::<usize>().unwrap(), out));
    }
    said.sort();
    let said: Vec<&str> = said.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(said, ["v1", "v2"], "admitted before the reload: the old step; after: the new one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_real_serve_and_a_broken_set_leaves_it_serving() {
    let (dir, config) = setup(FIRST, "");
    let serve = Serve::start(&config).await;
    let pid = serve.child.id().unwrap().to_string();
    let hup = || assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let client = reqwest::Client::new();
    let names = || async {
        let list: Vec<Value> = client
            .get(format!("{}/v1/runbooks", serve.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut names: Vec<String> = list.iter().map(|r| r["name"].as_str().unwrap().to_string()).collect();
        names.sort();
        names
    };
    let wait_for_log = |needle: &'static str, count: usize| {
        let log = serve.log.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while log.lock().unwrap().matches(needle).count() < count {
                assert!(tokio::time::Instant::now() < deadline, "no {needle:?} in:\n{}", log.lock().unwrap());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    std::fs::write(dir.path().join("runbooks/second.yaml"), SECOND).unwrap();
    hup();
    wait_for_log("reloaded", 1).await;
    assert_eq!(names().await, ["first", "second"]);

    std::fs::write(
        dir.path().join("runbooks/third.yaml"),
        "apiVersion: pitcrew/v1\nname: third\nsteps: []\n",
    )
    .unwrap();
    hup();
    wait_for_log("reload refused: the loaded runbooks and plugins keep serving", 1).await;
    let log = serve.log.lock().unwrap().clone();
    assert!(log.contains("third.yaml:3:8: a runbook needs at least one step"), "{log}");
    assert_eq!(names().await, ["first", "second"], "still serving the last good set");

    let r = client
        .post(format!("{}/v1/alerts/alertmanager", serve.url))
        .json(&payload(vec![alert(&[("alertname", "Second")])]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    serve.settle(Duration::from_secs(20)).await;
    let runs = serve.executions("").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["runbook"], json!("second"));
    assert_eq!(runs[0]["state"], json!("succeeded"));

    let audit: Vec<Value> = client
        .get(format!("{}/v1/audit", serve.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let loaded: Vec<&Value> = audit.iter().filter(|r| r["kind"] == "config.loaded").collect();
    assert_eq!(loaded.len(), 2, "start and the one reload that took effect: {loaded:?}");
    assert!(loaded[0]["data"]["reload"].is_null());
    assert_eq!(loaded[1]["data"]["reload"], json!("SIGHUP"));
    assert_eq!(loaded[1]["data"]["runbooks"].as_object().unwrap().len(), 2);
    serve.kill9().await;
}

#[tokio::test]
async fn a_new_secret_needs_a_restart_not_a_reload() {
    let h = Harness::new(FIRST, OPERATOR);
    let with_hook = SECOND.replace("steps:", "notify: {url: \"https://hooks.example/very-secret-path\"}\nsteps:");
    std::fs::write(h.dir.path().join("runbooks/second.yaml"), with_hook).unwrap();
    let (status, reply) = reload(&h, "operator-token-1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reply}");
    let problems = reply["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{reply}");
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("notify.url is new since pitcrew started"),
        "{reply}"
    );
    assert!(problems[0]["file"].as_str().unwrap().ends_with("runbooks/second.yaml"));
    assert!(!reply.to_string().contains("very-secret-path"), "the URL is a secret: {reply}");
    assert!(matched(&h, "Second").await.is_empty());
    assert!(config_loaded(&h).await.is_empty());
}

#[tokio::test]
async fn a_manual_run_resolved_before_a_reload_and_admitted_after_it_keeps_its_runbook() {
    let rb = FIRST.replace(
        "action: log\n    with: {message: \"first v1\"}",
        "action: exec\n    with: {command: [\"/bin/echo\", \"v1\"]}",
    );
    let h = Harness::new(&rb, OPERATOR);
    // What the API and `pitcrew run` do: resolve against the set of the moment...
    let set = h.engine.runbooks();
    let first = set.get("first").unwrap().clone();
    let resolved = set.resolve(&first, None, &Default::default()).unwrap();
    let admission = h.engine.manual_admission(&first, resolved, "api:ops".into(), false, None).await;
    // ...while a reload changes the runbook under it...
    std::fs::write(h.dir.path().join("runbooks/test.yaml"), rb.replace("\"v1\"", "\"v2\"")).unwrap();
    let (status, reply) = reload(&h, "operator-token-1").await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    // ...then admit: the run does what was resolved, not what is on disk now.
    let id = admission.id.clone();
    h.engine.admit(admission, None).await.unwrap();
    drop(set);
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.len(), 1);
    let exec = h.store().execution(&id).await.unwrap();
    assert_eq!(exec.state, State::Succeeded, "{exec:?}");
    assert_eq!(exec.steps[0].output.as_ref().unwrap()["stdout"].as_str().unwrap().trim(), "v1");
}
