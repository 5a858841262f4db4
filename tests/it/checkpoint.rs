//! Signed checkpoints: the anchor that makes deleting the newest records,
//! or rewriting them with their hashes recomputed, detectable. Plain
//! `audit verify` passes in each of these cases: that is the gap they close.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use pitcrew::checkpoint::{Checkpoint, Checkpointer, read_signing_key};

use crate::cli::pitcrew;
use crate::e2e::{Serve, setup};
use crate::support::{Harness, alert, payload};

const RB: &str = r#"apiVersion: pitcrew/v1
name: note
trigger: {alertname: Note}
target: "{{alert.labels.t}}"
steps: [{name: a, action: log, with: {message: "hi {{alert.labels.t}}"}}]
"#;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keygen(dir: &Path) -> Output {
    pitcrew(&["audit", "keygen", dir.to_str().unwrap()])
}

/// A harness that did some work, a key pair in `keys/` and an empty
/// checkpoint dir `anchors/` beside the state.
struct Anchored {
    h: Harness,
    keys: PathBuf,
    anchors: PathBuf,
}

impl Anchored {
    async fn new() -> Anchored {
        let h = Harness::new(RB, "");
        for t in ["a", "b", "c"] {
            h.post(&payload(vec![alert(&[("alertname", "Note"), ("t", t)])])).await;
        }
        h.run_queued().await;
        let keys = h.dir.path().join("keys");
        assert_eq!(keygen(&keys).status.code(), Some(0));
        let anchors = h.dir.path().join("anchors");
        Anchored { h, keys, anchors }
    }

    fn checkpointer(&self) -> Checkpointer {
        let key = read_signing_key(&self.keys.join("audit.key")).unwrap();
        Checkpointer::to_dir(self.h.store().clone(), key, self.anchors.clone())
    }

    /// Writes a checkpoint of the head as `serve` would.
    async fn checkpoint(&self) -> Checkpoint {
        self.checkpointer().tick().await.unwrap().expect("the head moved")
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.h.dir.path().join("state/state.db")).unwrap()
    }

    fn verify(&self, with_checkpoints: bool) -> (i32, String, String) {
        let config = self.h.dir.path().join("pitcrew.yaml");
        let public = self.keys.join("audit.pub");
        let mut args = vec!["--config", config.to_str().unwrap(), "audit", "verify"];
        if with_checkpoints {
            args.extend([
                "--checkpoints",
                self.anchors.to_str().unwrap(),
                "--public-key",
                public.to_str().unwrap(),
            ]);
        }
        let out = pitcrew(&args);
        let (stdout, stderr) = text(&out);
        (out.status.code().unwrap(), stdout, stderr)
    }

    /// Replaces record `seq` by a forgery with its hash recomputed, as
    /// someone with write access to the database would.
    async fn rewrite(&self, seq: u64, change: impl FnOnce(&mut pitcrew::audit::Record)) {
        let mut record = self.h.audit().await.into_iter().find(|r| r.seq == seq).unwrap();
        change(&mut record);
        record.hash = record.compute_hash();
        let conn = self.db();
        conn.execute("INSERT OR IGNORE INTO audit_names (name) VALUES (?1)", [&record.actor])
            .unwrap();
        let ts_us = DateTime::parse_from_rfc3339(&record.ts).unwrap().timestamp_micros();
        conn.execute(
            "UPDATE audit SET actor = (SELECT id FROM audit_names WHERE name = ?1), ts_us = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![record.actor, ts_us, hex::decode(&record.hash).unwrap(), seq as i64],
        )
        .unwrap();
    }
}

#[test]
fn keygen_writes_an_owner_only_key_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let out = keygen(&keys);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let mode = |f: &str| std::fs::metadata(keys.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("audit.key"), 0o600);
    assert_eq!(mode("audit.pub") & 0o077, 0o044, "the public key is for everyone");
    let key = std::fs::read_to_string(keys.join("audit.key")).unwrap();
    assert!(
        !text(&out).0.contains(key.trim()) && !text(&out).1.contains(key.trim()),
        "the key is never shown"
    );

    let again = keygen(&keys);
    assert_eq!(again.status.code(), Some(2));
    let (_, stderr) = text(&again);
    assert!(stderr.contains("audit.key already exists; refusing to overwrite"), "{stderr}");
    assert_eq!(std::fs::read_to_string(keys.join("audit.key")).unwrap(), key, "the key is kept");
}

#[tokio::test]
async fn a_signed_checkpoint_verifies_and_is_written_only_when_the_head_moved() {
    let a = Anchored::new().await;
    let checkpointer = a.checkpointer();
    let cp = checkpointer.tick().await.unwrap().unwrap();
    let n = a.h.store().verify_audit().await.unwrap().unwrap();
    assert_eq!(cp.seq, n, "the head");
    assert_eq!(checkpointer.tick().await.unwrap(), None, "the head did not move");
    a.h.post(&payload(vec![alert(&[("alertname", "Note"), ("t", "d")])])).await;
    let next = checkpointer.tick().await.unwrap().unwrap();
    assert!(next.seq > cp.seq);
    let files = pitcrew::checkpoint::list_dir(&a.anchors).unwrap();
    assert_eq!(files.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [cp.seq, next.seq]);

    let (code, stdout, stderr) = a.verify(true);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "2 checkpoints verified, newest checkpoint-{}.json at seq {}",
            next.seq, next.seq
        )),
        "{stdout}"
    );
}

#[tokio::test]
async fn deleting_the_newest_records_is_named_by_the_checkpoint() {
    let a = Anchored::new().await;
    let cp = a.checkpoint().await;
    let left = cp.seq - 4;
    a.db().execute("DELETE FROM audit WHERE seq > ?1", [left as i64]).unwrap();

    // The gap: what is left is an intact chain.
    let (code, stdout, stderr) = a.verify(false);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(&format!("ok: {left} records")), "{stdout}");
    assert!(stderr.contains("cannot be detected without checkpoints"), "{stderr}");

    let (code, stdout, _) = a.verify(true);
    assert_eq!(code, 5, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "tail truncated: checkpoint-{}.json says seq {} exists, the chain ends at {left}",
            cp.seq, cp.seq
        )),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_rewritten_record_at_a_checkpoint_is_named() {
    let a = Anchored::new().await;
    let cp = a.checkpoint().await;
    // The newest record, so no record after it shows the change.
    a.rewrite(cp.seq, |r| r.actor = "forger".into()).await;
    assert_eq!(a.verify(false).0, 0, "rehashed, the chain is intact");
    let (code, stdout, _) = a.verify(true);
    assert_eq!(code, 5, "{stdout}");
    assert!(
        stdout.contains(&format!("rewritten at seq {}: checkpoint-{}.json", cp.seq, cp.seq)),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_record_rewritten_with_another_time_is_named() {
    // The record is no longer where the checkpoint's time says it is.
    let a = Anchored::new().await;
    let cp = a.checkpoint().await;
    a.rewrite(cp.seq, |r| {
        let later = DateTime::parse_from_rfc3339(&r.ts).unwrap() + chrono::Duration::seconds(1);
        r.ts = later.to_utc().to_rfc3339_opts(SecondsFormat::Micros, true);
    })
    .await;
    assert_eq!(a.verify(false).0, 0);
    let (code, stdout, _) = a.verify(true);
    assert_eq!(code, 5, "{stdout}");
    assert!(
        stdout.contains(&format!("rewritten at seq {}: checkpoint-{}.json", cp.seq, cp.seq)),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_forged_checkpoint_is_named() {
    let a = Anchored::new().await;
    let cp = a.checkpoint().await;
    let path = a.anchors.join(cp.file_name());
    // Someone truncates the log and lowers the checkpoint to match.
    let original = std::fs::read_to_string(&path).unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&original).unwrap();
    forged["seq"] = (cp.seq - 1).into();
    std::fs::write(&path, forged.to_string()).unwrap();
    let (code, stdout, _) = a.verify(true);
    assert_eq!(code, 5, "{stdout}");
    assert!(
        stdout.contains(&format!("bad signature: {} does not verify", cp.file_name())),
        "{stdout}"
    );

    // Signed properly, but with a key that is not the one verified against.
    std::fs::write(&path, original).unwrap();
    let other = a.h.dir.path().join("other-keys");
    assert_eq!(keygen(&other).status.code(), Some(0));
    let (code, stdout, _) = {
        let config = a.h.dir.path().join("pitcrew.yaml");
        let out = pitcrew(&[
            "--config",
            config.to_str().unwrap(),
            "audit",
            "verify",
            "--checkpoints",
            a.anchors.to_str().unwrap(),
            "--public-key",
            other.join("audit.pub").to_str().unwrap(),
        ]);
        let (o, e) = text(&out);
        (out.status.code().unwrap(), o, e)
    };
    assert_eq!(code, 5, "{stdout}");
    assert!(stdout.contains(&format!("bad signature: {}", cp.file_name())), "{stdout}");
    // And with the right key it verifies again.
    assert_eq!(a.verify(true).0, 0);
}

#[test]
fn checkpoints_need_a_public_key_and_a_missing_dir_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pitcrew.yaml");
    std::fs::write(&config, "state_dir: state\n").unwrap();
    // An empty state, so that what is refused is the checkpoints (without
    // any, `audit verify` refuses for that).
    let loaded = pitcrew::config::Config::load(&config).unwrap();
    drop(
        pitcrew::store::sqlite::SqliteStore::open(
            &loaded.state_dir,
            loaded.redactor.clone(),
            std::sync::Arc::new(pitcrew::clock::SystemClock),
        )
        .unwrap(),
    );
    let c = config.to_str().unwrap();
    let out = pitcrew(&["--config", c, "audit", "verify", "--checkpoints", "x"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert_eq!(keygen(&dir.path().join("k")).status.code(), Some(0));
    let public = dir.path().join("k/audit.pub");
    let missing = dir.path().join("nowhere");
    let out = pitcrew(&[
        "--config",
        c,
        "audit",
        "verify",
        "--checkpoints",
        missing.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("nowhere"), "{:?}", text(&out));
}

#[test]
fn serve_refuses_to_start_without_its_key() {
    let (dir, config) = setup(RB, "audit:\n  checkpoint: {every: 1m, key_file: keys/audit.key, dir: anchors}\n");
    let out = pitcrew(&["--config", config.to_str().unwrap(), "serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("keys/audit.key"), "{:?}", text(&out));
    assert!(!dir.path().join("anchors").exists());
}

/// The highest seq among the checkpoint files in `dir`.
fn newest(dir: &Path) -> Option<u64> {
    if !dir.exists() {
        return None;
    }
    pitcrew::checkpoint::list_dir(dir).unwrap().last().map(|(seq, _)| *seq)
}

/// Polls `dir` until a checkpoint newer than `after` is there.
async fn wait_for_checkpoint(dir: &Path, after: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(seq) = newest(dir).filter(|s| *s > after) {
            return seq;
        }
        assert!(tokio::time::Instant::now() < deadline, "no checkpoint after seq {after} within 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chain_end(dir: &Path) -> u64 {
    let conn = rusqlite::Connection::open(dir.join("state/state.db")).unwrap();
    conn.query_row("SELECT MAX(seq) FROM audit", [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

fn verify_with(config: &Path, dir: &Path) -> Output {
    let anchors = dir.join("anchors");
    let public = dir.join("keys/audit.pub");
    pitcrew(&[
        "--config",
        config.to_str().unwrap(),
        "audit",
        "verify",
        "--checkpoints",
        anchors.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_a_checkpoint_each_interval_the_head_moved() {
    let (dir, config) = setup(RB, "audit:\n  checkpoint: {every: 100ms, key_file: keys/audit.key, dir: anchors}\n");
    assert_eq!(keygen(&dir.path().join("keys")).status.code(), Some(0));
    let anchors = dir.path().join("anchors");
    let serve = Serve::start(&config).await;
    let first = wait_for_checkpoint(&anchors, 0).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/alerts/alertmanager", serve.url))
        .json(&payload(vec![alert(&[("alertname", "Note"), ("t", "x")])]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Written by the interval while serve runs (it is killed, not stopped, after).
    let later = wait_for_checkpoint(&anchors, first).await;
    serve.kill9().await;
    assert!(later <= chain_end(dir.path()));
    let out = verify_with(&config, dir.path());
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(
        text(&out).0.contains(&format!("newest checkpoint-{later}.json")),
        "{:?}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_a_checkpoint_of_the_final_head_at_sigterm() {
    // An interval far longer than the test: only the start and the shutdown write.
    let (dir, config) = setup(RB, "audit:\n  checkpoint: {every: 1h, key_file: keys/audit.key, dir: anchors}\n");
    assert_eq!(keygen(&dir.path().join("keys")).status.code(), Some(0));
    let anchors = dir.path().join("anchors");
    let mut serve = Serve::start(&config).await;
    let first = wait_for_checkpoint(&anchors, 0).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/alerts/alertmanager", serve.url))
        .json(&payload(vec![alert(&[("alertname", "Note"), ("t", "x")])]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while serve.executions("status=succeeded").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the run did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(newest(&anchors), Some(first), "nothing between the ticks");
    let pid = serve.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::time::timeout(Duration::from_secs(20), serve.child.wait())
        .await
        .expect("serve stops after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let end = chain_end(dir.path());
    assert!(end > first);
    assert_eq!(newest(&anchors), Some(end), "the final head is anchored");
    assert_eq!(verify_with(&config, dir.path()).status.code(), Some(0));
}

#[tokio::test]
async fn a_failed_post_is_retried_at_the_next_tick() {
    use axum::http::StatusCode;
    use std::sync::{Arc, Mutex};

    let a = Anchored::new().await;
    // A receiver that is down for the first POST, then keeps what it gets.
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let (received, calls) = (received.clone(), calls.clone());
        axum::Router::new().route(
            "/anchors",
            axum::routing::post(move |body: String| async move {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                received.lock().unwrap().push(body);
                StatusCode::NO_CONTENT
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/anchors", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = pitcrew::config::CheckpointConfig {
        every: pitcrew::units::Duration::from_secs(60),
        key_file: a.keys.join("audit.key"),
        sink: pitcrew::config::CheckpointSink::Url(url),
    };
    let checkpointer = Checkpointer::from_config(&config, a.h.store().clone()).unwrap();
    let err = checkpointer.tick().await.unwrap_err();
    assert_eq!(err.kind(), "post");
    assert!(err.to_string().contains("503"), "{err}");
    assert!(!err.to_string().contains("127.0.0.1"), "the URL stays out of the log: {err}");
    let cp = checkpointer
        .tick()
        .await
        .unwrap()
        .expect("retried: the failed one was not remembered");
    assert_eq!(checkpointer.tick().await.unwrap(), None);
    let bodies = received.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let signed: pitcrew::checkpoint::Signed = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(signed.checkpoint(), cp);
    let public = pitcrew::checkpoint::read_verifying_key(&a.keys.join("audit.pub")).unwrap();
    assert!(signed.verifies(&public));
}
