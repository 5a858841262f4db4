//! Hostile input: alert labels and runbook text trying to leave the slot
//! they are rendered into, or to break pitcrew itself.

use axum::http::StatusCode;
use pitcrew::store::*;

use crate::support::{Harness, alert, payload};

async fn one_run(h: &Harness, labels: &[(&str, &str)]) -> Execution {
    let (status, body) = h.post(&payload(vec![alert(labels)])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.run_queued().await;
    let list = h.store().executions(ExecutionFilter::default()).await.unwrap();
    h.store().execution(&list[0].id).await.unwrap()
}

fn step<'a>(exec: &'a Execution, name: &str) -> &'a StepRecord {
    exec.steps
        .iter()
        .rev()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {:?}", exec.steps))
}

#[tokio::test]
async fn a_silence_of_300000_years_from_a_label_fails_the_step_instead_of_the_worker() {
    let rb = r#"apiVersion: pitcrew/v1
name: silence
trigger: {alertname: Noisy}
steps:
  - name: hush
    action: alertmanager.silence
    with: {duration: "{{alert.labels.silence_for}}"}
"#;
    // A closed port: the step must fail on its input before any call.
    let h = Harness::new(rb, "alertmanager: {url: \"http://127.0.0.1:1\"}\n");
    let exec = one_run(&h, &[("alertname", "Noisy"), ("silence_for", "300000y")]).await;
    assert_eq!(exec.state, State::Failed);
    let hush = step(&exec, "hush");
    assert_eq!(hush.state, StepState::Failed);
    assert_eq!(
        hush.error.as_deref(),
        Some("parameter `duration`: \"300000y\" is longer than the limit of 100y")
    );
}

/// A stand-in Prometheus on 127.0.0.1:0 that records each `query` it is
/// asked and answers an empty vector.
struct FakePrometheus {
    port: u16,
    queries: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePrometheus {
    async fn start() -> FakePrometheus {
        let queries: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let log = queries.clone();
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(
                move |axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>| {
                    let log = log.clone();
                    async move {
                        log.lock().unwrap().push(q.get("query").cloned().unwrap_or_default());
                        axum::Json(serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": []}}))
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakePrometheus { port, queries, task }
    }

    fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_label_cannot_break_out_of_its_promql_string() {
    let prometheus = FakePrometheus::start().await;
    let rb = r#"apiVersion: pitcrew/v1
name: check
trigger: {alertname: Down}
params:
  minutes: {type: integer, default: 5}
steps:
  - name: look
    action: prometheus.query
    with: {query: 'sum(rate(up{job="{{alert.labels.job}}"}[{{params.minutes}}m]))'}
"#;
    let h = Harness::new(rb, &format!("prometheus: {{url: \"http://127.0.0.1:{}\"}}\n", prometheus.port));
    let evil = r#"x"} or vector(1) or up{job="y\"#;
    let exec = one_run(&h, &[("alertname", "Down"), ("job", evil)]).await;
    assert_eq!(exec.state, State::Succeeded, "{:?}", exec.steps);
    assert_eq!(
        prometheus.queries(),
        vec![r#"sum(rate(up{job="x\"} or vector(1) or up{job=\"y\\"}[5m]))"#.to_string()]
    );
}

#[test]
fn a_template_outside_a_promql_string_is_a_validation_error() {
    let dir = tempfile::tempdir().unwrap();
    let rb = r#"apiVersion: pitcrew/v1
name: check
params:
  job: {default: "{{alert.labels.job}}"}
  since: {type: duration, default: 10m}
steps:
  - name: look
    action: prometheus.query
    with:
      query: 'sum(up{job={{params.job}}}) offset {{params.since}}'
"#;
    std::fs::write(dir.path().join("check.yaml"), rb).unwrap();
    let config = pitcrew::config::Config::default();
    let err = pitcrew::runbook::compile::load(&config, &[dir.path().to_path_buf()]).unwrap_err();
    let shown = err.to_string();
    assert_eq!(err.0.len(), 1, "{shown}");
    assert!(
        shown.contains("check.yaml:10:14: with.query: `{{params.job}}` at column 12 stands outside a double-quoted string"),
        "{shown}"
    );
}

/// A runbook whose `exec` step prints each argv element it got as `[arg]`
/// into `record`; `dashes` puts a literal `--` before the label's value.
fn argv_runbook(record: &std::path::Path, dashes: bool) -> String {
    let dashes = if dashes { "\"--\", " } else { "" };
    format!(
        r#"apiVersion: pitcrew/v1
name: argv
trigger: {{alertname: Cleanup}}
steps:
  - name: run
    action: exec
    with:
      command: [/bin/sh, -c, 'for a in "$@"; do printf "[%s]\n" "$a"; done > {record}', sh, {dashes}"{{{{alert.labels.flag}}}}"]
"#,
        record = record.display()
    )
}

#[tokio::test]
async fn a_label_that_looks_like_an_option_fails_the_exec_step_before_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("argv.txt");
    let h = Harness::new(&argv_runbook(&record, false), "");
    let exec = one_run(&h, &[("alertname", "Cleanup"), ("flag", "--all")]).await;
    assert_eq!(exec.state, State::Failed);
    assert_eq!(
        step(&exec, "run").error.as_deref(),
        Some(
            "step `run`: parameter `command[4]`: renders to \"--all\", which the program would read as an option; put a literal \"--\" before it in `command`"
        )
    );
    assert!(!record.exists(), "the command ran");
}

#[tokio::test]
async fn after_a_literal_double_dash_an_option_like_label_is_one_plain_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("argv.txt");
    let h = Harness::new(&argv_runbook(&record, true), "");
    let exec = one_run(&h, &[("alertname", "Cleanup"), ("flag", "--all --force")]).await;
    assert_eq!(exec.state, State::Succeeded, "{:?}", exec.steps);
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "[--]\n[--all --force]\n");
}

#[test]
fn a_templated_program_is_a_validation_error() {
    let dir = tempfile::tempdir().unwrap();
    let rb = r#"apiVersion: pitcrew/v1
name: argv
steps:
  - name: run
    action: exec
    with:
      command: ["{{alert.labels.program}}", --version]
"#;
    std::fs::write(dir.path().join("argv.yaml"), rb).unwrap();
    let err = pitcrew::runbook::compile::load(&pitcrew::config::Config::default(), &[dir.path().to_path_buf()]).unwrap_err();
    let shown = err.to_string();
    assert_eq!(err.0.len(), 1, "{shown}");
    assert!(
        shown.contains("argv.yaml:7:7: `command[0]` must be literal: a template there would let alert data choose the program"),
        "{shown}"
    );
}

/// A server on 127.0.0.1:0 answering every request with `body` as JSON.
async fn json_server(body: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(move || async move { ([("content-type", "application/json")], body) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, task)
}

#[tokio::test]
async fn numbers_from_an_http_answer_are_recorded_with_the_digits_received() {
    let (port, server) = json_server(r#"{"ratio": 1.5777777777770001, "count": 18446744073709551615}"#).await;
    let rb = format!(
        r#"apiVersion: pitcrew/v1
name: fetch
trigger: {{alertname: Fetch}}
steps:
  - name: get
    action: http
    with: {{url: "http://127.0.0.1:{port}/stats"}}
"#
    );
    let h = Harness::new(&rb, &format!("http: {{allowed_hosts: [\"127.0.0.1:{port}\"]}}\n"));
    let exec = one_run(&h, &[("alertname", "Fetch")]).await;
    server.abort();
    assert_eq!(exec.state, State::Succeeded, "{:?}", exec.steps);

    let db = rusqlite::Connection::open(h.dir.path().join("state/state.db")).unwrap();
    let stored: String = db
        .query_row(
            "SELECT a.data FROM audit a JOIN audit_names k ON k.id = a.kind WHERE k.name = 'step.finished'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored.contains(r#""ratio":1.5777777777770001"#), "{stored}");
    assert!(stored.contains(r#""count":18446744073709551615"#), "{stored}");
    let finished = h.audit().await.into_iter().find(|r| r.kind == "step.finished").unwrap();
    assert_eq!(
        serde_json::to_string(&finished.data["output"]["body"]).unwrap(),
        r#"{"count":18446744073709551615,"ratio":1.5777777777770001}"#
    );
    // Read back and hashed again, the record still matches its hash.
    assert!(h.store().verify_audit().await.unwrap().is_ok());
    let config = h.dir.path().join("pitcrew.yaml");
    let out = crate::cli::pitcrew(&["--config", config.to_str().unwrap(), "audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn control_characters_from_labels_are_shown_escaped_and_csv_cells_are_not_formulas() {
    let rb = r#"apiVersion: pitcrew/v1
name: note
trigger: {alertname: Note}
target: "{{alert.labels.t}}"
steps: [{name: a, action: log, with: {message: "hi {{alert.labels.t}}"}}]
"#;
    let h = Harness::new(rb, "");
    let evil = "=cmd|\u{1b}[31mred\u{1b}[0m\u{9b}2J";
    let exec = one_run(&h, &[("alertname", "Note"), ("t", evil)]).await;
    assert_eq!(exec.state, State::Succeeded);
    let config = h.dir.path().join("pitcrew.yaml");
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = crate::cli::pitcrew(&all);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = r"=cmd|\x1b[31mred\x1b[0m\u{9b}2J";
    for args in [
        &["executions"][..],
        &["show", &exec.id],
        &["audit", "timeline"],
        &["audit", "export", "--format", "csv"],
    ] {
        let out = cli(args);
        assert!(
            !out.contains(['\u{1b}', '\u{9b}']),
            "{args:?} printed a raw control character:\n{out}"
        );
        assert!(out.contains(r"x1b[31mred") && out.contains(r"u{9b}2J"), "{args:?}:\n{out}");
    }
    let csv = cli(&["audit", "export", "--format", "csv"]);
    assert!(csv.contains(&format!(",'{shown},")), "{csv}");
    let json = cli(&["audit", "export", "--format", "jsonl"]);
    assert!(json.contains(r#""target":"=cmd|\u001b[31mred\u001b[0m"#), "{json}");
}
