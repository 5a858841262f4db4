//! End to end with real processes: real Alertmanager delivering to a real
//! `pitcrew serve`, and a `kill -9` in the middle of a burst.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::pitcrew;
use crate::realparts::Alertmanager;
use crate::support::{alert, payload};

/// A `pitcrew serve` child on 127.0.0.1:0; the address comes from its log.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) url: String,
    /// Its log so far.
    pub(crate) log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Serve {
    pub(crate) async fn start(config: &Path) -> Serve {
        Serve::start_with(config, &[]).await
    }

    /// With these extra environment variables.
    pub(crate) async fn start_with(config: &Path, env: &[(&str, &str)]) -> Serve {
        Serve::start_with_args(config, env, &[]).await
    }

    /// With these extra environment variables and `serve` arguments.
    pub(crate) async fn start_with_args(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pitcrew"))
            .args(["--config", config.to_str().unwrap(), "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env("PITCREW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("pitcrew starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let address = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split("address=").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("pitcrew exited before listening");
        })
        .await
        .expect("pitcrew listens within 30s");
        // Keep draining its log so it never blocks on a full pipe.
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Serve {
            child,
            url: format!("http://{address}"),
            log,
        }
    }

    pub(crate) async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    pub(crate) async fn executions(&self, query: &str) -> Vec<Value> {
        let r = reqwest::get(format!("{}/v1/executions?limit=1000&{query}", self.url))
            .await
            .unwrap();
        r.json::<Vec<Value>>().await.unwrap()
    }

    /// Polls until no execution is queued or running.
    pub(crate) async fn settle(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let busy = self.executions("status=queued").await.len() + self.executions("status=running").await.len();
            if busy == 0 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{busy} executions still busy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub(crate) fn setup(runbook: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::create_dir_all(dir.path().join("marks")).unwrap();
    std::fs::write(
        dir.path().join("runbooks/rb.yaml"),
        runbook.replace("MARKS", &dir.path().join("marks").display().to_string()),
    )
    .unwrap();
    let config = dir.path().join("pitcrew.yaml");
    std::fs::write(&config, format!("state_dir: state\nplugins: plugins\n{extra}")).unwrap();
    (dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_delivers_and_the_exec_step_runs() {
    let rb = r#"apiVersion: pitcrew/v1
name: mark
trigger: {alertname: PitcrewE2E}
params:
  svc: {default: "{{alert.labels.service}}", pattern: '^[a-z]+$'}
target: "{{params.svc}}"
steps:
  - name: mark
    action: exec
    with: {command: [/bin/mkdir, "MARKS/{{params.svc}}"]}
  - name: note
    action: log
    with: {message: "marked {{params.svc}}"}
"#;
    let (dir, config) = setup(rb, "auth:\n  webhook_token: e2e-hook-token\n");
    let serve = Serve::start(&config).await;
    let am_config = format!(
        "route:\n  receiver: pitcrew\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: pitcrew\n    webhook_configs:\n      - url: {}/v1/alerts/alertmanager\n        send_resolved: true\n        max_alerts: 0\n        http_config: {{authorization: {{credentials: e2e-hook-token}}}}\n",
        serve.url
    );
    let am = Alertmanager::start(&am_config).await;
    am.post_alert(&[("alertname", "PitcrewE2E"), ("service", "checkout"), ("severity", "critical")])
        .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let list = serve.executions("status=succeeded").await;
        if let Some(e) = list.first() {
            break e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no execution succeeded; all: {:?}",
            serve.executions("").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["runbook"], "mark");
    assert_eq!(done["target"], "checkout");
    assert_eq!(done["actor"], "alertmanager");
    assert!(dir.path().join("marks/checkout").is_dir(), "the exec step ran");
    serve.kill9().await;
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "export"]);
    let kinds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "alert.received",
        "runbook.matched",
        "guardrail.decision",
        "execution.started",
        "step.started",
        "step.finished",
        "execution.finished",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_no_acknowledged_alert_and_repeats_no_unsafe_step() {
    let rb = r#"apiVersion: pitcrew/v1
name: mark
trigger: {alertname: Burst}
target: "{{alert.labels.n}}"
steps:
  - name: mark
    action: exec
    with: {command: [/bin/mkdir, "MARKS/{{execution.id}}"]}
  - name: settle
    action: sleep
    with: {duration: 20ms}
  - name: note
    action: log
    with: {message: "done {{alert.labels.n}}"}
"#;
    let (dir, config) = setup(rb, "");
    let serve = Serve::start(&config).await;
    let url = format!("{}/v1/alerts/alertmanager", serve.url);
    let client = reqwest::Client::new();
    // 8 senders × 60 requests × 1 alert; the kill lands while they send.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut senders = Vec::new();
    for s in 0..8 {
        let (client, url, acked) = (client.clone(), url.clone(), acked_tx.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..60 {
                let a = alert(&[("alertname", "Burst"), ("n", &format!("{s}-{i}"))]);
                let fp = a["fingerprint"].as_str().unwrap().to_string();
                match client.post(&url).json(&payload(vec![a])).send().await {
                    Ok(r) if r.status() == 202 => {
                        let _ = acked.send(fp);
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(acked_tx);
    let mut acked = BTreeSet::new();
    while let Some(fp) = acked_rx.recv().await {
        acked.insert(fp);
        if acked.len() == 200 {
            break;
        }
    }
    serve.kill9().await;
    for s in senders {
        let _ = s.await;
    }
    while let Ok(fp) = acked_rx.try_recv() {
        acked.insert(fp);
    }
    assert!(acked.len() >= 200);

    let serve = Serve::start(&config).await;
    serve.settle(Duration::from_secs(120)).await;
    serve.kill9().await;

    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "export"]);
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let received: BTreeSet<String> = records
        .iter()
        .filter(|r| r["kind"] == "alert.received")
        .map(|r| r["data"]["fingerprint"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.difference(&received).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged alerts missing from the audit: {lost:?}",
        lost.len()
    );

    let mut mark_starts: BTreeMap<String, usize> = BTreeMap::new();
    let mut finished: BTreeMap<String, String> = BTreeMap::new();
    for r in &records {
        let id = r["execution_id"].as_str().unwrap_or_default().to_string();
        if r["kind"] == "step.started" && r["data"]["step"] == "mark" {
            *mark_starts.entry(id.clone()).or_default() += 1;
        }
        if r["kind"] == "execution.finished" {
            finished.insert(id, r["data"]["state"].as_str().unwrap().to_string());
        }
    }
    let executions: BTreeSet<String> = records
        .iter()
        .filter(|r| r["kind"] == "guardrail.decision")
        .map(|r| r["execution_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(executions.len(), received.len(), "one execution per accepted alert");
    for id in &executions {
        let state = finished
            .get(id)
            .unwrap_or_else(|| panic!("execution {id} never reached a final state"));
        assert!(["succeeded", "unknown"].contains(&state.as_str()), "{id}: {state}");
        assert!(
            mark_starts.get(id).copied().unwrap_or(0) <= 1,
            "{id}: the non-idempotent step started twice"
        );
    }
    // mkdir fails if run twice: no execution may have hit "File exists".
    assert!(!String::from_utf8_lossy(&out.stdout).contains("File exists"));
    let marks = std::fs::read_dir(dir.path().join("marks")).unwrap().count();
    let succeeded = finished.values().filter(|s| *s == "succeeded").count();
    assert!(marks >= succeeded, "{marks} marks for {succeeded} successes");
    eprintln!(
        "crash test: {} acknowledged, {} executions, {} succeeded, {} unknown",
        acked.len(),
        executions.len(),
        succeeded,
        finished.values().filter(|s| *s == "unknown").count()
    );
    let _ = json!(null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_step_finish_and_the_run_resumes_after_restart() {
    let rb = r#"apiVersion: pitcrew/v1
name: slow
trigger: {alertname: Slow}
steps:
  - name: wait
    action: sleep
    with: {duration: 1s}
  - name: after
    action: log
    with: {message: resumed}
"#;
    let (_dir, config) = setup(rb, "");
    let serve = Serve::start(&config).await;
    let url = format!("{}/v1/alerts/alertmanager", serve.url);
    let r = reqwest::Client::new()
        .post(&url)
        .json(&payload(vec![alert(&[("alertname", "Slow")])]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Wait until the sleep step is under way, then ask politely.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while serve.executions("status=running").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = serve.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let mut serve = serve;
    let exit = tokio::time::timeout(Duration::from_secs(20), serve.child.wait())
        .await
        .expect("serve stops after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "export"]);
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let finished: Vec<&Value> = records.iter().filter(|r| r["kind"] == "step.finished").collect();
    assert_eq!(finished.len(), 1, "the in-flight step recorded its outcome");
    assert_eq!(finished[0]["data"]["outcome"], "succeeded");

    let serve = Serve::start(&config).await;
    serve.settle(Duration::from_secs(30)).await;
    let done = serve.executions("status=succeeded").await;
    assert_eq!(done.len(), 1, "resumed after the restart");
    serve.kill9().await;
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "export"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("\"kind\":\"step.started\"").count(),
        2,
        "the finished step was not run again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_that_cannot_listen_records_nothing() {
    let rb = "apiVersion: pitcrew/v1\nname: note\nsteps: [{name: a, action: log, with: {message: hi}}]\n";
    let (dir, config) = setup(rb, "");
    let first = Serve::start(&config).await;
    let records = || {
        let db = rusqlite::Connection::open(dir.path().join("state/state.db")).unwrap();
        db.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get::<_, i64>(0)).unwrap()
    };
    let before = records();
    let address = first.url.trim_start_matches("http://").to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pitcrew"))
        .args(["--config", config.to_str().unwrap(), "serve", "--listen", &address])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    assert_eq!(records(), before, "no config.loaded from a serve that never served");
    first.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_hold_up_alertmanager() {
    let rb = "apiVersion: pitcrew/v1\nname: note\ntrigger: {alertname: Idle}\nsteps: [{name: a, action: log, with: {message: hi}}]\n";
    // Idle connections are cut only after a minute: any wait behind them
    // would show as a POST that does not come back within the deadline.
    let (_dir, config) = setup(rb, "server: {header_timeout: 60s}\n");
    let serve = Serve::start(&config).await;
    let address = serve.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let body = serde_json::json!({"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "Idle"}, "startsAt": "2026-11-27T10:00:00Z"}]});
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let answer = client
        .post(format!("{}/v1/alerts/alertmanager", serve.url))
        .header("user-agent", "Alertmanager/0.25.0")
        .json(&body)
        .send()
        .await
        .expect("answered while 1,000 connections sit idle");
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
    drop(idle);
    serve.kill9().await;
}
