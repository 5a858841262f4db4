//! The hash chain: intact after real work; any change, deletion or reordering
//! is found and named.

use serde_json::Value;

use crate::cli::pitcrew;
use crate::support::{Harness, alert, payload};

const RB: &str = r#"apiVersion: pitcrew/v1
name: note
trigger: {alertname: Note}
target: "{{alert.labels.t}}"
steps: [{name: a, action: log, with: {message: "hi {{alert.labels.t}}"}}]
"#;

async fn worked(h: &Harness) {
    for t in ["a", "b", "c"] {
        h.post(&payload(vec![alert(&[("alertname", "Note"), ("t", t)])])).await;
    }
    h.run_queued().await;
}

fn db(h: &Harness) -> rusqlite::Connection {
    rusqlite::Connection::open(h.dir.path().join("state/state.db")).unwrap()
}

fn verify_cli(h: &Harness) -> (i32, String) {
    let config = h.dir.path().join("pitcrew.yaml");
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "verify"]);
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn intact_chain_verifies() {
    let h = Harness::new(RB, "");
    worked(&h).await;
    let n = h.store().verify_audit().await.unwrap().unwrap();
    assert!(n >= 20, "{n}");
    let (code, out) = verify_cli(&h);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("ok: {n} records")), "{out}");
}

/// Another process reading the state file while the store writes (an
/// operator's `sqlite3`, a benchmark's counts) takes nothing away, also
/// from a state file made just now: the store never drops its locks on it
/// (closing any descriptor of a file drops every POSIX lock the process
/// holds on it, and a reader that believes itself the last one checkpoints
/// the WAL and deletes it).
#[tokio::test]
async fn another_process_reading_a_new_state_file_takes_nothing_away() {
    let h = Harness::new(RB, "");
    let db = h.dir.path().join("state/state.db");
    let count_elsewhere = || {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); print(db.execute('SELECT COUNT(*) FROM audit').fetchone()[0]); db.close()"])
            .arg(&db)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap()
    };
    worked(&h).await;
    let first = h.store().verify_audit().await.unwrap().unwrap();
    assert_eq!(count_elsewhere(), first);
    worked(&h).await;
    let second = h.store().verify_audit().await.unwrap().unwrap();
    assert!(second > first);
    assert_eq!(
        count_elsewhere(),
        second,
        "the other process sees every record written after its first look"
    );
    let h = h.restart();
    assert_eq!(
        h.store().verify_audit().await.unwrap().unwrap(),
        second,
        "every record survives a restart"
    );
    assert_eq!(verify_cli(&h).0, 0);
}

#[tokio::test]
async fn a_changed_record_is_named() {
    let h = Harness::new(RB, "");
    worked(&h).await;
    db(&h)
        .execute_batch(
            "INSERT INTO audit_names (name) VALUES ('someone-else');
             UPDATE audit SET actor = (SELECT id FROM audit_names WHERE name = 'someone-else') WHERE seq = 5;",
        )
        .unwrap();
    assert_eq!(h.store().verify_audit().await.unwrap().unwrap_err().seq, 5);
    let (code, out) = verify_cli(&h);
    assert_eq!(code, 5);
    assert!(out.contains("seq 5"), "{out}");
}

#[tokio::test]
async fn changed_data_is_named() {
    let h = Harness::new(RB, "");
    worked(&h).await;
    let conn = db(&h);
    let data: String = conn.query_row("SELECT data FROM audit WHERE seq = 6", [], |r| r.get(0)).unwrap();
    let mut v: Value = serde_json::from_str(&data).unwrap();
    v["forged"] = true.into();
    conn.execute("UPDATE audit SET data = ?1 WHERE seq = 6", [v.to_string()]).unwrap();
    assert_eq!(h.store().verify_audit().await.unwrap().unwrap_err().seq, 6);
}

#[tokio::test]
async fn a_deleted_record_is_named() {
    let h = Harness::new(RB, "");
    worked(&h).await;
    db(&h).execute("DELETE FROM audit WHERE seq = 7", []).unwrap();
    let broken = h.store().verify_audit().await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 8, "{broken}");
    assert_eq!(verify_cli(&h).0, 5);
}

#[tokio::test]
async fn reordered_records_are_named() {
    let h = Harness::new(RB, "");
    worked(&h).await;
    let conn = db(&h);
    // Records 3 and 4 trade places, hashes and all; only the seq stays.
    conn.execute_batch(
        "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = -3;",
    )
    .unwrap();
    assert_eq!(h.store().verify_audit().await.unwrap().unwrap_err().seq, 3);
    assert_eq!(verify_cli(&h).0, 5);
}

#[tokio::test]
async fn a_rehashed_forgery_still_breaks_the_chain_after_it() {
    // Someone edits record 4 and recomputes its own hash: record 5 no longer follows.
    let h = Harness::new(RB, "");
    worked(&h).await;
    let mut record = h.store().audit(Default::default()).await.unwrap().remove(3);
    assert_eq!(record.seq, 4);
    record.actor = "forger".into();
    record.hash = record.compute_hash();
    let conn = db(&h);
    conn.execute("INSERT INTO audit_names (name) VALUES (?1)", [&record.actor]).unwrap();
    conn.execute(
        "UPDATE audit SET actor = (SELECT id FROM audit_names WHERE name = ?1), hash = ?2 WHERE seq = 4",
        rusqlite::params![record.actor, hex::decode(&record.hash).unwrap()],
    )
    .unwrap();
    assert_eq!(h.store().verify_audit().await.unwrap().unwrap_err().seq, 5);
}

#[tokio::test]
async fn timeline_and_export_cover_the_whole_story() {
    let h = Harness::new(RB, "");
    worked(&h).await;
    let config = h.dir.path().join("pitcrew.yaml");
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "timeline"]);
    let md = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for needle in [
        "# pitcrew timeline",
        "Hash chain verified",
        "| Alert received |",
        "**Note** firing",
        "**run** (all)",
        "| Step finished |",
        "**succeeded**",
        "from alert to fix",
    ] {
        assert!(md.contains(needle), "{needle} missing:\n{md}");
    }
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "export", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("seq,ts,kind,actor,execution_id,runbook,target,data,prev_hash,hash\n"));
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "export"]);
    let records: Vec<pitcrew::audit::Record> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pitcrew::audit::verify(&records).unwrap() as usize, records.len());
}

/// A postmortem from a real run: one section per alert with what pitcrew
/// decided, each action and the outcome; a long error shown once.
#[tokio::test]
async fn the_timeline_is_one_section_per_incident_with_each_error_once() {
    let rb = r#"apiVersion: pitcrew/v1
name: fix
trigger: {alertname: Broken}
target: "{{alert.labels.t}}"
steps:
  - name: look
    action: log
    with: {message: "looking at {{alert.labels.t}}"}
  - name: restart
    action: exec
    with: {command: [/nonexistent/restart-the-service-that-is-not-there]}
---
apiVersion: pitcrew/v1
name: careful
trigger: {alertname: Careful}
target: "{{alert.labels.t}}"
guardrails: {approval: required}
steps: [{name: a, action: log, with: {message: hi}}]
"#;
    // A notice goes nowhere (nothing listens on port 9) and is recorded with its text.
    let h = Harness::new(rb, "notify: {url: \"http://127.0.0.1:9/hook\"}\n");
    h.post(&payload(vec![alert(&[("alertname", "Broken"), ("t", "web-1")])])).await;
    h.post(&payload(vec![alert(&[("alertname", "Note"), ("t", "nobody")])])).await;
    h.post(&payload(vec![alert(&[("alertname", "Careful"), ("t", "db-1")])])).await;
    h.run_queued().await;
    let waiting = h
        .store()
        .executions(pitcrew::store::ExecutionFilter {
            state: Some(pitcrew::store::State::PendingApproval),
            ..Default::default()
        })
        .await
        .unwrap();
    h.store()
        .deny(&waiting[0].id, "user:unknown", None, h.engine.approvers())
        .await
        .unwrap();
    h.engine.settle().await;
    let failed = h
        .store()
        .executions(pitcrew::store::ExecutionFilter {
            runbook: Some("fix".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);

    let config = h.dir.path().join("pitcrew.yaml");
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "timeline"]);
    assert_eq!(out.status.code(), Some(0));
    let md = String::from_utf8_lossy(&out.stdout);
    let kinds = h.kinds().await;
    assert!(kinds.iter().any(|k| k == "notification"), "the failure was announced: {kinds:?}");

    let sections: Vec<&str> = md.lines().filter(|l| l.starts_with("## ")).collect();
    assert_eq!(
        sections,
        [
            "## 1. Broken firing — t=web-1",
            "## 2. Note firing — t=nobody",
            "## 3. Careful firing — t=db-1"
        ],
        "{md}"
    );
    let section = |n: usize| md.split("\n## ").nth(n).unwrap_or_else(|| panic!("no section {n}:\n{md}"));
    let broken = section(1);
    assert!(
        broken.contains(&format!("- `{}` fix on web-1: **failed** at step `restart`, ", failed.id)),
        "the run, its outcome and time after the alert:\n{broken}"
    );
    let error = "cannot start \"/nonexistent/restart-the-service-that-is-not-there\"";
    assert_eq!(broken.matches(error).count(), 1, "the error once, at its step:\n{broken}");
    assert!(broken.contains("(the error above)"), "{broken}");
    for event in [
        "| Guardrails |",
        "`look` **succeeded**",
        "`restart` **failed**",
        "| Execution finished |",
        "| Notification |",
    ] {
        assert!(broken.contains(event), "{event} missing:\n{broken}");
    }
    assert!(!md.contains("worker "), "no worker ids:\n{md}");
    assert!(section(2).contains("No runbook matched: pitcrew did nothing."), "{md}");
    let careful = section(3);
    assert!(careful.contains("**pending approval**"), "{careful}");
    let denied = careful
        .lines()
        .find(|l| l.contains("| Denied |"))
        .unwrap_or_else(|| panic!("{careful}"));
    assert!(denied.ends_with("| by user:unknown |"), "no dangling separator: {denied}");
    assert!(careful.contains(": **cancelled** (denied by user:unknown), "), "{careful}");
}
