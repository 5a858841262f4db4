//! Faults: an action that panics, a step timeout with a process tree, and
//! a disk that fills up under a real `pitcrew serve`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use pitcrew::action::{Action, ActionContext, ActionError, Registry, Spec};
use pitcrew::clock::ManualClock;
use pitcrew::config::Config;
use pitcrew::runbook::Risk;
use pitcrew::store::sqlite::SqliteStore;
use pitcrew::store::{ExecutionFilter, State, StepState};
use serde_json::Value;

use crate::cli::pitcrew;
use crate::e2e::Serve;
use crate::support::{Harness, alert, payload, start_time};

/// An action with a bug: it panics whatever its input.
struct Panics {
    spec: Spec,
}

#[async_trait::async_trait]
impl Action for Panics {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    async fn run(&self, _input: &Value, _cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        panic!("a bug in an action");
    }
}

/// A harness over `runbooks` (file name → YAML) whose registry also holds `extra`.
fn harness_with(runbooks: &[(&str, &str)], extra: Arc<dyn Action>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    for (name, yaml) in runbooks {
        std::fs::write(dir.path().join("runbooks").join(name), yaml).unwrap();
    }
    std::fs::write(dir.path().join("pitcrew.yaml"), "state_dir: state\nplugins: plugins\n").unwrap();
    let config = Arc::new(Config::load(&dir.path().join("pitcrew.yaml")).unwrap());
    let registry = Registry::with_plugins([]).with(extra);
    let mut problems = Vec::new();
    let set = pitcrew::runbook::compile::load_runbooks(&config, registry, &config.runbooks, &mut problems);
    assert!(problems.is_empty(), "{}", pitcrew::diag::Diagnostics(problems));
    let clock = ManualClock::new(start_time());
    let store = Arc::new(SqliteStore::open(&config.state_dir, config.redactor.clone(), Arc::new(clock.clone())).unwrap());
    Harness::with_store(dir, clock, config, Arc::new(set), store)
}

async fn by_runbook(h: &Harness, runbook: &str) -> Vec<pitcrew::store::Execution> {
    let filter = ExecutionFilter {
        runbook: Some(runbook.into()),
        limit: 1000,
        ..ExecutionFilter::default()
    };
    h.store().executions(filter).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_100_panicking_actions_the_workers_still_run_a_normal_alert() {
    let buggy = "apiVersion: pitcrew/v1\nname: buggy\ntrigger: {alertname: Buggy}\ntarget: \"{{alert.labels.instance}}\"\nsteps:\n  - {name: boom, action: test.panic, with: {}}\n";
    let fine =
        "apiVersion: pitcrew/v1\nname: fine\ntrigger: {alertname: Fine}\nsteps:\n  - {name: note, action: log, with: {message: fine}}\n";
    let panics = Panics {
        spec: Spec::new("test.panic", "Panics (a bug on demand)", Risk::Low, true),
    };
    let h = harness_with(&[("buggy.yaml", buggy), ("fine.yaml", fine)], Arc::new(panics));
    let workers = tokio::spawn(h.engine.clone().run_workers(2));
    let many: Vec<Value> = (0..100)
        .map(|i| alert(&[("alertname", "Buggy"), ("instance", &format!("i{i}"))]))
        .collect();
    let (status, _) = h.post(&payload(many)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = h.post(&payload(vec![alert(&[("alertname", "Fine")])])).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = by_runbook(&h, "fine").await;
        let failed = by_runbook(&h, "buggy").await.iter().filter(|e| e.state == State::Failed).count();
        if done.first().is_some_and(|e| e.state == State::Succeeded) && failed == 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the normal run did not succeed ({:?}) or not every buggy run failed ({failed} of 100)",
            done.first().map(|e| e.state)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let one = &by_runbook(&h, "buggy").await[0];
    let one = h.store().execution(&one.id).await.unwrap();
    assert_eq!(one.steps[0].state, StepState::Failed);
    assert_eq!(one.steps[0].error.as_deref(), Some("internal error"));
    let audit = serde_json::to_string(&h.audit().await).unwrap();
    assert!(audit.contains(r#""error_kind":"internal""#), "the audit names the error kind");
    assert!(
        !audit.contains("a bug in an action"),
        "the panic's text goes to the log, not the audit"
    );
    h.engine.shutdown.cancel();
    workers.await.unwrap();
}

/// Whether a process is gone (or a zombie nobody reaped: it runs no more).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test]
async fn a_step_timeout_kills_the_whole_process_group_of_exec_and_plugin_steps() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    // Each leaves a grandchild (`sleep 100 &`) and names it, then waits.
    let script = |name: &str| format!("sleep 100 & echo $! > {}/{name}.pid; sleep 100", marks.display());
    let exec = format!(
        "apiVersion: pitcrew/v1\nname: exec-tree\ntrigger: {{alertname: ExecTree}}\nsteps:\n  - name: tree\n    action: exec\n    timeout: 500ms\n    with: {{command: [/bin/sh, -c, \"{}\"]}}\n",
        script("exec")
    );
    let plugin = "apiVersion: pitcrew/v1\nname: plugin-tree\ntrigger: {alertname: PluginTree}\nsteps:\n  - {name: tree, action: plugin.tree, timeout: 500ms, with: {}}\n";
    std::fs::write(dir.path().join("runbooks/exec.yaml"), exec).unwrap();
    std::fs::write(dir.path().join("runbooks/plugin.yaml"), plugin).unwrap();
    let folder = dir.path().join("plugins/tree");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("plugin.yaml"),
        "name: tree\ndescription: leaves a grandchild\ncommand: [run.sh]\nrisk: low\ntimeout: 60s\n",
    )
    .unwrap();
    std::fs::write(folder.join("run.sh"), format!("#!/bin/sh\n{}\n", script("plugin"))).unwrap();
    std::fs::set_permissions(folder.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("pitcrew.yaml"), "state_dir: state\nplugins: plugins\n").unwrap();
    let h = Harness::open(dir, ManualClock::new(start_time()));

    for (alertname, name) in [("ExecTree", "exec"), ("PluginTree", "plugin")] {
        let (status, _) = h.post(&payload(vec![alert(&[("alertname", alertname)])])).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let outcomes = h.run_queued().await;
        assert_eq!(outcomes[0].state, State::Failed, "{name}: {outcomes:?}");
        assert!(
            outcomes[0].reason.as_deref().is_some_and(|r| r.contains("timed out after 500ms")),
            "{name}: {outcomes:?}"
        );
        let pid = std::fs::read_to_string(marks.join(format!("{name}.pid"))).unwrap();
        let pid = pid.trim();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !gone(pid) {
            if std::time::Instant::now() > deadline {
                let _ = std::process::Command::new("kill").args(["-9", pid]).status();
                panic!("{name}: the grandchild {pid} outlived the step's timeout");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A tmpfs of `size` mounted at `at`, unmounted when dropped; `None` when
/// this system does not let the test mount one (not root, no privilege).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("skipped: cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn ready(url: &str) -> reqwest::StatusCode {
    reqwest::get(format!("{url}/readyz")).await.unwrap().status()
}

async fn post(url: &str, alerts: &[Value]) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{url}/v1/alerts/alertmanager"))
        .json(&payload(alerts.to_vec()))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_every_accepted_alert_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "6m") else {
        return;
    };
    let state = disk.0.join("state");
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    let rb =
        "apiVersion: pitcrew/v1\nname: note\ntrigger: {alertname: Noted}\nsteps:\n  - {name: note, action: log, with: {message: noted}}\n";
    std::fs::write(dir.path().join("runbooks/rb.yaml"), rb).unwrap();
    let config = dir.path().join("pitcrew.yaml");
    std::fs::write(&config, format!("state_dir: {}\nplugins: plugins\n", state.display())).unwrap();
    let serve = Serve::start(&config).await;
    assert_eq!(ready(&serve.url).await, reqwest::StatusCode::OK);

    // Batches of alerts (one in ten matches a runbook) until the disk is full.
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    let batch = |n: usize| -> Vec<Value> {
        (0..50)
            .map(|i| {
                let name = if i % 10 == 0 { "Noted" } else { "Filler" };
                let mut a = alert(&[("alertname", name), ("batch", &n.to_string()), ("i", &i.to_string())]);
                a["annotations"] = serde_json::json!({"description": "x".repeat(400)});
                a
            })
            .collect()
    };
    let fingerprints = |alerts: &[Value]| {
        alerts
            .iter()
            .map(|a| a["fingerprint"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    for n in 0.. {
        assert!(n < 5_000, "the disk never filled");
        let alerts = batch(n);
        match post(&serve.url, &alerts).await {
            reqwest::StatusCode::ACCEPTED => accepted.extend(fingerprints(&alerts)),
            reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                refused.extend(fingerprints(&alerts));
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Take what room is left, so no small write squeezes in.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        let _ = f.sync_all();
    }
    let alerts = batch(100_000);
    assert_eq!(post(&serve.url, &alerts).await, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    refused.extend(fingerprints(&alerts));
    assert_eq!(
        ready(&serve.url).await,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "/readyz says the store cannot write; log:\n{}",
        serve.log.lock().unwrap()
    );

    // Space comes back: the store notices without a restart.
    std::fs::remove_file(&filler).unwrap();
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=128m"])
        .arg(&disk.0)
        .status()
        .unwrap();
    assert!(grown.success(), "the tmpfs grows");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ready(&serve.url).await != reqwest::StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed 503 after space came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alerts = batch(100_001);
    assert_eq!(post(&serve.url, &alerts).await, reqwest::StatusCode::ACCEPTED);
    accepted.extend(fingerprints(&alerts));
    serve.kill9().await;

    // Restart on a disk with room, from a copy of what was on the tmpfs.
    let copy = dir.path().join("state-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&state).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    drop(disk);
    std::fs::write(&config, format!("state_dir: {}\nplugins: plugins\n", copy.display())).unwrap();
    let serve = Serve::start(&config).await;
    assert_eq!(ready(&serve.url).await, reqwest::StatusCode::OK);
    serve.kill9().await;

    let cfg = config.to_str().unwrap();
    let out = pitcrew(&["--config", cfg, "audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pitcrew(&["--config", cfg, "audit", "export"]);
    let export = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&String> = accepted.iter().filter(|f| !export.contains(f.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted alerts are not in the audit",
        missing.len(),
        accepted.len()
    );
    let kept: Vec<&String> = refused.iter().filter(|f| export.contains(f.as_str())).collect();
    assert!(kept.is_empty(), "{} refused alerts were stored anyway", kept.len());
}
