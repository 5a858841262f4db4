//! Fault injection (feature `failpoints`): a real `pitcrew serve` crashes,
//! or its disk fails, at named places; after a restart every alert that
//! got a 202 is in the audit, the chain verifies, no run is left running
//! and no non-idempotent step ran twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::cli::pitcrew;
use crate::e2e::{Serve, setup};
use crate::support::{alert, payload};

/// Posts one alert; its fingerprint when it got a 202, `None` on any
/// other answer or when the server is gone.
async fn post_one(url: &str, i: usize) -> Option<String> {
    let a = alert(&[("alertname", "Crash"), ("i", &i.to_string())]);
    let sent = reqwest::Client::new()
        .post(format!("{url}/v1/alerts/alertmanager"))
        .timeout(Duration::from_secs(10))
        .json(&payload(vec![a.clone()]))
        .send()
        .await;
    match sent {
        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => Some(a["fingerprint"].as_str().unwrap().to_string()),
        _ => None,
    }
}

/// After the crash: restart, let every run end, stop, and check the invariants.
async fn check_after_restart(config: &Path, marks: &Path, accepted: &[String]) {
    let serve = Serve::start(config).await;
    serve.settle(Duration::from_secs(60)).await;
    serve.kill9().await;
    let cfg = config.to_str().unwrap();
    let out = pitcrew(&["--config", cfg, "audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let export = String::from_utf8_lossy(&pitcrew(&["--config", cfg, "audit", "export"]).stdout).into_owned();
    let missing = accepted.iter().filter(|f| !export.contains(f.as_str())).count();
    assert_eq!(missing, 0, "{missing} of {} accepted alerts are not in the audit", accepted.len());
    let ran = std::fs::read_to_string(marks.join("ran")).unwrap_or_default();
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for id in ran.lines() {
        *times.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "non-idempotent steps ran twice: {twice:?}");
}

/// A non-idempotent step that leaves its execution's id in MARKS/ran.
const RUNBOOK: &str = r#"apiVersion: pitcrew/v1
name: once
trigger: {alertname: Crash}
target: "{{alert.labels.i}}"
steps:
  - name: mark
    action: exec
    risk: low
    with: {command: [/bin/sh, -c, "echo $PITCREW_EXECUTION_ID >> MARKS/ran"]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_failpoint_loses_no_accepted_alert_and_runs_nothing_twice() {
    // Late enough that alerts were accepted and runs ran before the crash
    // (the background loop's writes count too, on a busy machine).
    for point in ["store.synced@30", "engine.step_started@3", "engine.step_ran@3"] {
        let (dir, config) = setup(RUNBOOK, "");
        let marks = dir.path().join("marks");
        let mut serve = Serve::start_with(&config, &[("PITCREW_FAILPOINT", point)]).await;
        let mut accepted = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for i in 0.. {
            if serve.child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{point}: serve never crashed");
            accepted.extend(post_one(&serve.url, i).await);
        }
        assert!(!accepted.is_empty(), "{point}: something was accepted before the crash");
        let status = serve.child.wait().await.unwrap();
        assert!(!status.success(), "{point}: crashed");
        assert!(
            serve
                .log
                .lock()
                .unwrap()
                .contains(&format!("failpoint {}", point.split('@').next().unwrap())),
            "{point}"
        );
        check_after_restart(&config, &marks, &accepted).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_ends_serve_with_a_clear_log_line_and_a_non_zero_exit() {
    let (dir, config) = setup(RUNBOOK, "");
    let marks = dir.path().join("marks");
    let mut serve = Serve::start_with(&config, &[("PITCREW_FAILPOINT", "store.fsync@20")]).await;
    let mut accepted = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "serve did not end after its store stopped");
        i += 1;
        match post_one(&serve.url, i).await {
            Some(fingerprint) => accepted.push(fingerprint),
            // Refused: the store stopped, and serve is on its way out.
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(!status.success(), "a non-zero exit, so the supervisor restarts it");
    // Its last lines may still be in the pipe.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !serve.log.lock().unwrap().contains("the state store stopped and cannot continue") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no clear log line:\n{}",
            serve.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check_after_restart(&config, &marks, &accepted).await;
}
