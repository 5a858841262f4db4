//! Plugins: the shipped ones in `plugins/` doing their jobs (PgBouncer for
//! real), and the failure modes of plugins through the registry, with bad
//! plugins made in temp folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use pitcrew::action::ActionError;
use pitcrew::action::exec::{CHILD_PATH, run_process};
use pitcrew::runbook::Risk;
use pitcrew::runbook::compile::load_plugins;

use crate::realparts::{Harness, Pgbouncer, closed_port};

fn shipped() -> PathBuf {
    crate::support::repo().join("plugins")
}

fn harness() -> Harness {
    Harness::with_plugins("", Some(&shipped()))
}

#[test]
fn shipped_plugins_load_cleanly_with_the_declared_traits() {
    let mut problems = Vec::new();
    let manifests = load_plugins(&shipped(), &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let traits: BTreeMap<&str, (Risk, bool, bool)> = manifests
        .iter()
        .map(|m| (m.name.as_str(), (m.risk, m.idempotent, m.dry_run)))
        .collect();
    assert_eq!(traits["pgbouncer-pool"], (Risk::Medium, true, true));
    assert_eq!(traits["disk-cleanup"], (Risk::Medium, true, true));
    assert_eq!(traits["tcp-check"], (Risk::Low, true, true));
    assert!(
        Path::new("/usr/bin/python3").is_file(),
        "plugins run /usr/bin/env python3 on the child PATH {CHILD_PATH}; install it: apt-get install -y python3"
    );
}

#[tokio::test]
async fn tcp_check_reports_a_listening_and_a_closed_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = harness();
    let out = h.run("plugin.tcp-check", json!({"host": "127.0.0.1", "port": port})).await.unwrap();
    assert_eq!(out["reachable"], true);
    assert!(out["ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(out["address"], format!("127.0.0.1:{port}"));

    let closed = closed_port();
    let err = h
        .run(
            "plugin.tcp-check",
            json!({"host": "127.0.0.1", "port": closed.to_string(), "timeout": "500ms"}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("plugin.tcp-check: cannot connect to 127.0.0.1:{closed}: Connection refused")
    );
    let err = h
        .run("plugin.tcp-check", json!({"host": "127.0.0.1; rm -rf /", "port": 80}))
        .await
        .unwrap_err();
    assert!(matches!(&err, ActionError::Input { field, .. } if field == "host"), "{err:?}");
}

#[tokio::test]
async fn pgbouncer_pool_raises_the_pool_through_the_admin_console() {
    let pgbouncer = Pgbouncer::start().await;
    let port = pgbouncer.port();
    let mut h = harness();
    let with = |size: i64, lower: bool| json!({"host": "127.0.0.1", "port": port, "size": size, "lower": lower});

    let out = h.run("plugin.pgbouncer-pool", with(50, false)).await;
    let out = out.unwrap_or_else(|e| panic!("{e}\npgbouncer log:\n{}", pgbouncer.log()));
    assert_eq!(
        (out["from"].clone(), out["to"].clone(), out["changed"].clone()),
        (json!(20), json!(50), json!(true))
    );

    // Same size again: nothing to do.
    let out = h.run("plugin.pgbouncer-pool", with(50, false)).await.unwrap();
    assert_eq!(
        (out["from"].clone(), out["to"].clone(), out["changed"].clone()),
        (json!(50), json!(50), json!(false))
    );

    // Smaller without `lower`: left alone.
    let out = h.run("plugin.pgbouncer-pool", with(10, false)).await.unwrap();
    assert_eq!((out["to"].clone(), out["changed"].clone()), (json!(50), json!(false)));

    // A dry run reads and reports, and changes nothing.
    h.dry_run = true;
    let out = h.run("plugin.pgbouncer-pool", with(80, false)).await.unwrap();
    assert_eq!(
        (out["from"].clone(), out["to"].clone(), out["dry_run"].clone()),
        (json!(50), json!(80), json!(true))
    );
    h.dry_run = false;

    let out = h.run("plugin.pgbouncer-pool", with(10, true)).await.unwrap();
    assert_eq!(
        (out["from"].clone(), out["to"].clone(), out["changed"].clone()),
        (json!(50), json!(10), json!(true))
    );

    let err = h.run("plugin.pgbouncer-pool", with(0, false)).await.unwrap_err();
    assert_eq!(err.to_string(), "plugin.pgbouncer-pool: size 0: expected 1-10000");
    let err = h
        .run(
            "plugin.pgbouncer-pool",
            json!({"host": "127.0.0.1", "port": closed_port(), "size": 30}),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("plugin.pgbouncer-pool: psql 'SHOW CONFIG' on 127.0.0.1:"), "{msg}");
    assert!(msg.contains("Connection refused"), "{msg}");
}

/// A file of `size` bytes, last modified `age` ago.
fn file(path: &Path, size: usize, age: Duration) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![b'.'; size]).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

const DAY: Duration = Duration::from_secs(86400);

/// Runs the shipped disk-cleanup as pitcrew does, with
/// PITCREW_CLEANUP_ROOTS set: this test process cannot set its own
/// environment (`unsafe` is forbidden), which is what the manifest copies.
async fn disk_cleanup(roots: &str, params: Value, dry_run: bool) -> Value {
    let mut problems = Vec::new();
    let manifest = load_plugins(&shipped(), &mut problems)
        .into_iter()
        .find(|m| m.name == "disk-cleanup")
        .unwrap();
    assert_eq!(manifest.env, ["PITCREW_CLEANUP_ROOTS"]);
    let mut command = manifest.command.clone();
    command[0] = pitcrew::action::plugin::resolve_program(&manifest.dir, &command[0]);
    let env = BTreeMap::from([
        ("PATH".to_string(), CHILD_PATH.to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("PITCREW_EXECUTION_ID".to_string(), "01JTEST".to_string()),
        ("PITCREW_CLEANUP_ROOTS".to_string(), roots.to_string()),
    ]);
    let cwd = tempfile::tempdir().unwrap();
    let request = json!({"params": params, "alert": null, "execution_id": "01JTEST", "dry_run": dry_run});
    let done = run_process(
        &command,
        &env,
        cwd.path(),
        Some(serde_json::to_vec(&request).unwrap()),
        manifest.timeout,
    )
    .await
    .unwrap();
    assert_eq!(done.exit_code, Some(0), "{}", String::from_utf8_lossy(&done.stderr));
    serde_json::from_slice(&done.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&done.stdout)))
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

#[tokio::test]
async fn disk_cleanup_deletes_old_matching_files_only_inside_its_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("logs");
    let outside = tmp.path().join("outside");
    file(&root.join("app.log"), 100, 12 * DAY);
    file(&root.join("sub/worker.log"), 50, 10 * DAY);
    file(&root.join("fresh.log"), 10, Duration::from_secs(60));
    file(&root.join("old.txt"), 10, 30 * DAY);
    file(&outside.join("precious.log"), 10, 30 * DAY);
    std::os::unix::fs::symlink(&outside, root.join("linked-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious.log"), root.join("linked.log")).unwrap();
    let roots = root.to_str().unwrap();
    let params = json!({"path": roots, "pattern": "*.log", "older_than": "7d", "max_delete": 1000});

    let dry = disk_cleanup(roots, params.clone(), true).await;
    assert_eq!(dry["ok"], true, "{dry}");
    assert_eq!(dry["output"]["deleted"], 2);
    assert_eq!(dry["output"]["dry_run"], true);
    assert!(exists(&root.join("app.log")) && exists(&root.join("sub/worker.log")));

    let one = disk_cleanup(roots, json!({"path": roots, "max_delete": 1}), false).await;
    assert_eq!(one["output"]["deleted"], 1);
    assert_eq!(one["output"]["limited"], true);
    // Oldest first.
    assert_eq!(one["output"]["files"], json!([root.join("app.log")]));

    file(&root.join("app.log"), 100, 12 * DAY);
    let out = disk_cleanup(roots, params.clone(), false).await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["output"]["deleted"], 2);
    assert_eq!(out["output"]["freed_bytes"], 150);
    assert_eq!(out["output"]["files"], json!([root.join("app.log"), root.join("sub/worker.log")]));
    assert!(!exists(&root.join("app.log")) && !exists(&root.join("sub/worker.log")));
    for kept in ["fresh.log", "old.txt", "linked-dir", "linked.log"] {
        assert!(exists(&root.join(kept)), "{kept} was deleted");
    }
    assert!(exists(&outside.join("precious.log")));

    // Running again finds nothing: idempotent.
    let again = disk_cleanup(roots, params, false).await;
    assert_eq!(again["output"]["deleted"], 0);
    assert_eq!(again["ok"], true);
}

#[tokio::test]
async fn disk_cleanup_refuses_paths_outside_its_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("logs");
    let outside = tmp.path().join("outside");
    file(&outside.join("precious.log"), 10, 30 * DAY);
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("linked-dir")).unwrap();
    let roots = root.to_str().unwrap();
    for (path, reason) in [
        (outside.clone(), "is not inside PITCREW_CLEANUP_ROOTS"),
        (root.join("../outside"), "has a '..' component"),
        (root.join("linked-dir"), "goes through a symlink"),
        (root.join("missing"), "does not exist"),
    ] {
        let out = disk_cleanup(roots, json!({"path": path}), false).await;
        assert_eq!(out["ok"], false, "{path:?}");
        let msg = out["message"].as_str().unwrap();
        assert!(msg.starts_with("refused: ") && msg.contains(reason), "{path:?}: {msg}");
    }
    assert!(exists(&outside.join("precious.log")));

    // Through the registry: pitcrew's own environment has no
    // PITCREW_CLEANUP_ROOTS, so the plugin refuses everything.
    let err = harness()
        .run("plugin.disk-cleanup", json!({"path": root.to_str().unwrap()}))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("plugin.disk-cleanup: refused: PITCREW_CLEANUP_ROOTS is not set"),
        "{err}"
    );
    let err = harness()
        .run("plugin.disk-cleanup", json!({"path": "relative/logs"}))
        .await
        .unwrap_err();
    assert!(matches!(&err, ActionError::Input { field, .. } if field == "path"), "{err:?}");
}

/// Writes `plugins/<name>/plugin.yaml` and an executable `run.py`.
fn test_plugin(dir: &Path, name: &str, manifest_extra: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("plugin.yaml"),
        format!("name: {name}\ndescription: test plugin\ncommand: [run.py]\nrisk: low\n{manifest_extra}"),
    )
    .unwrap();
    let path = folder.join("run.py");
    std::fs::write(&path, format!("#!/usr/bin/env python3\nimport json, os, sys, time\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn bad_plugins_fail_their_step_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    test_plugin(dir.path(), "garbage", "", "print('hello, not json')\n");
    test_plugin(
        dir.path(),
        "hangs",
        "timeout: 1s\n",
        "open('hangs.pid', 'w').write(str(os.getpid()))\nsys.stdout.flush()\ntime.sleep(600)\n",
    );
    test_plugin(
        dir.path(),
        "exits",
        "",
        "sys.stderr.write('warming up\\nsomething broke\\n')\nsys.exit(3)\n",
    );
    test_plugin(
        dir.path(),
        "says-no",
        "",
        "print(json.dumps({'ok': False, 'output': {}, 'message': 'the pool is on fire'}))\n",
    );
    let h = Harness::with_plugins("", Some(dir.path()));

    let err = h.run("plugin.garbage", json!({})).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("plugin.garbage printed invalid JSON") && msg.contains("hello, not json"),
        "{msg}"
    );

    let started = Instant::now();
    let err = h.run("plugin.hangs", json!({})).await.unwrap_err();
    assert!(matches!(err, ActionError::Timeout(_)), "{err:?}");
    assert_eq!(err.to_string(), "timed out after 1s");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // Killed, not left running.
    let pid = std::fs::read_to_string(h.artifacts().join("hangs.pid")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&cmdline).contains("run.py"), "plugin {pid} still runs");

    let err = h.run("plugin.exits", json!({})).await.unwrap_err();
    assert_eq!(err.to_string(), "plugin.exits exited with 3: something broke");
    let stderr = std::fs::read_to_string(h.artifacts().join("step.plugin.exits.stderr")).unwrap();
    assert_eq!(stderr, "warming up\nsomething broke\n");

    let err = h.run("plugin.says-no", json!({})).await.unwrap_err();
    assert!(matches!(err, ActionError::Failed(_)), "{err:?}");
    assert_eq!(err.to_string(), "plugin.says-no: the pool is on fire");
}

#[tokio::test]
async fn plugins_get_only_the_allowed_environment_and_run_in_the_artifact_folder() {
    // A variable this process has, to see the manifest's `env` copy it.
    let (passed, value) = std::env::vars()
        .find(|(k, _)| {
            !["PATH", "LANG", "PITCREW_EXECUTION_ID"].contains(&k.as_str())
                && k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .expect("the test process has some environment");
    let dir = tempfile::tempdir().unwrap();
    test_plugin(
        dir.path(),
        "env-dump",
        &format!("env: [{passed}, PITCREW_TEST_SURELY_UNSET]\nparams:\n  n: {{type: integer, default: 1}}\n"),
        "req = json.load(sys.stdin)\nprint(json.dumps({'ok': True, 'output': {'env': dict(os.environ), 'cwd': os.getcwd(), 'request': req}}))\n",
    );
    let h = Harness::with_plugins("", Some(dir.path())).alert(pitcrew::alert::Alert::firing("X"));
    let out = h.run("plugin.env-dump", json!({"n": "7"})).await.unwrap();
    let env: BTreeMap<String, String> = serde_json::from_value(out["env"].clone()).unwrap();
    assert_eq!(
        env,
        BTreeMap::from([
            ("PATH".to_string(), CHILD_PATH.to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("PITCREW_EXECUTION_ID".to_string(), h.execution_id.clone()),
            (passed.clone(), value),
        ])
    );
    // It ran there; the folder is gone again since the plugin wrote nothing.
    assert_eq!(Path::new(out["cwd"].as_str().unwrap()), h.artifacts());
    assert!(!h.artifacts().exists());
    let request = &out["request"];
    assert_eq!(request["params"], json!({"n": 7}));
    assert_eq!(request["execution_id"], h.execution_id.as_str());
    assert_eq!(request["dry_run"], false);
    assert_eq!(request["alert"]["labels"]["alertname"], "X");
}
