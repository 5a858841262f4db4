//! Replicas on one PostgreSQL store, as real `pitcrew serve` processes:
//! every alert delivered to every replica at once, limits across replicas,
//! a replica killed or paused inside a step, PostgreSQL restarted under load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::cli::pitcrew;
use crate::e2e::{Serve, setup};
use crate::support::{alert, payload, postgres_store_config};

/// The config lines of a fresh database with a short lease, so a dead
/// replica's runs are taken over in seconds.
fn store_lines(lease: &str) -> String {
    format!("{}  lease: {lease}\n", postgres_store_config())
}

/// The runbook `note`: one `log` step on the target `labels.n` of each
/// alert named `alertname`.
fn note_runbook(alertname: &str) -> String {
    format!(
        "apiVersion: pitcrew/v1\nname: note\ntrigger: {{alertname: {alertname}}}\ntarget: \"{{{{alert.labels.n}}}}\"\n\
         steps:\n  - name: note\n    action: log\n    with: {{message: \"fixed {{{{alert.labels.n}}}}\"}}\n"
    )
}

/// Posts `alerts` to `url` as one delivery; the status.
async fn post(client: &reqwest::Client, url: &str, alerts: Vec<Value>) -> u16 {
    match client
        .post(format!("{url}/v1/alerts/alertmanager"))
        .json(&payload(alerts))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The whole audit log through the CLI, after `audit verify` passed on it.
fn verified_audit(config: &Path) -> Vec<Value> {
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pitcrew(&["--config", config.to_str().unwrap(), "audit", "export"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

/// Polls `f` until it is true (the state comes from other processes).
async fn until(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn execution(serve: &Serve, id: &str) -> Value {
    reqwest::get(format!("{}/v1/executions/{id}", serve.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_delivered_to_three_replicas_at_once_is_stored_once_and_run_once() {
    let rb = r#"apiVersion: pitcrew/v1
name: mark
trigger: {alertname: Everywhere}
target: "{{alert.labels.n}}"
steps:
  - name: mark
    action: exec
    with: {command: [/bin/mkdir, "MARKS/{{alert.labels.n}}"]}
"#;
    let (dir, config) = setup(rb, &store_lines("15s"));
    let replicas = [
        Serve::start(&config).await,
        Serve::start(&config).await,
        Serve::start(&config).await,
    ];
    let client = reqwest::Client::new();
    let alerts: Vec<Value> = (0..60)
        .map(|n| alert(&[("alertname", "Everywhere"), ("n", &format!("t{n}"))]))
        .collect();
    for a in &alerts {
        let sends = replicas.iter().map(|r| post(&client, &r.url, vec![a.clone()]));
        let statuses = futures::future::join_all(sends).await;
        assert_eq!(statuses, [202, 202, 202]);
    }
    for r in &replicas {
        r.settle(Duration::from_secs(60)).await;
    }
    let records = verified_audit(&config);
    let received: Vec<&str> = of_kind(&records, "alert.received")
        .iter()
        .map(|r| r["data"]["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(received.len(), 60, "each alert stored once");
    assert_eq!(received.iter().collect::<BTreeSet<_>>().len(), 60);
    assert_eq!(
        of_kind(&records, "alert.duplicate").len(),
        120,
        "the two other deliveries were duplicates"
    );
    let finished = of_kind(&records, "execution.finished");
    assert_eq!(finished.len(), 60, "each alert ran once");
    assert!(finished.iter().all(|r| r["data"]["state"] == "succeeded"), "{finished:#?}");
    assert_eq!(std::fs::read_dir(dir.path().join("marks")).unwrap().count(), 60);
    // Every replica took some of the work (three workers pools on one queue).
    let workers: BTreeSet<&str> = of_kind(&records, "execution.started")
        .iter()
        .map(|r| r["data"]["worker"].as_str().unwrap().split('/').next().unwrap())
        .collect();
    assert!(workers.len() >= 2, "runs spread over replicas: {workers:?}");
}

/// Sends twenty distinct alerts of each name to two replicas at once
/// (alternating which gets which), lets them settle, and counts the
/// decisions by (runbook, `verdict:decided_by`).
async fn decide_across_two_replicas(config: &Path, names: &[&str]) -> BTreeMap<(String, String), usize> {
    let replicas = [Serve::start(config).await, Serve::start(config).await];
    let client = reqwest::Client::new();
    let mut sends = Vec::new();
    for n in 0..20 {
        for name in names {
            let a = alert(&[("alertname", name), ("n", &format!("{name}-{n}"))]);
            let url = replicas[n % 2].url.clone();
            let client = client.clone();
            sends.push(tokio::spawn(async move { post(&client, &url, vec![a]).await }));
        }
    }
    for s in sends {
        assert_eq!(s.await.unwrap(), 202);
    }
    for r in &replicas {
        r.settle(Duration::from_secs(60)).await;
    }
    let mut verdicts = BTreeMap::new();
    for d in of_kind(&verified_audit(config), "guardrail.decision") {
        let key = (
            d["runbook"].as_str().unwrap().to_string(),
            format!(
                "{}:{}",
                d["data"]["verdict"].as_str().unwrap(),
                d["data"]["decided_by"].as_str().unwrap()
            ),
        );
        *verdicts.entry(key).or_default() += 1;
    }
    verdicts
}

fn count(verdicts: &BTreeMap<(String, String), usize>, runbook: &str, verdict: &str) -> usize {
    verdicts.get(&(runbook.to_string(), verdict.to_string())).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_concurrency_hold_across_replicas_under_concurrent_delivery() {
    let rb = r#"apiVersion: pitcrew/v1
name: limited
trigger: {alertname: Limited}
target: "web"
guardrails: {rate_limit: 3/1h, concurrency: 20}
steps:
  - name: note
    action: log
    with: {message: "limited {{alert.labels.n}}"}
---
apiVersion: pitcrew/v1
name: one-at-a-time
trigger: {alertname: Slow}
target: "db"
guardrails: {concurrency: 1}
steps:
  - name: wait
    action: sleep
    with: {duration: 3s}
"#;
    let (_dir, config) = setup(rb, &store_lines("15s"));
    let verdicts = decide_across_two_replicas(&config, &["Limited", "Slow"]).await;
    assert_eq!(count(&verdicts, "limited", "run:all"), 3, "{verdicts:?}");
    assert_eq!(count(&verdicts, "limited", "blocked:rate_limit"), 17, "{verdicts:?}");
    assert_eq!(count(&verdicts, "one-at-a-time", "run:all"), 1, "{verdicts:?}");
    assert_eq!(count(&verdicts, "one-at-a-time", "blocked:concurrency"), 19, "{verdicts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_brake_holds_across_replicas_under_concurrent_delivery() {
    let rb = r#"apiVersion: pitcrew/v1
name: stormy
trigger: {alertname: Storm}
target: "{{alert.labels.n}}"
# The brake pauses automation above low risk.
risk: medium
steps:
  - name: note
    action: log
    with: {message: "storm {{alert.labels.n}}"}
"#;
    let (_dir, config) = setup(rb, &format!("limits: {{storm_brake: 5}}\n{}", store_lines("15s")));
    let verdicts = decide_across_two_replicas(&config, &["Storm"]).await;
    assert_eq!(
        count(&verdicts, "stormy", "run:all"),
        5,
        "the brake lets exactly 5 targets through: {verdicts:?}"
    );
    assert_eq!(count(&verdicts, "stormy", "blocked:storm_brake"), 15, "{verdicts:?}");
}

/// The replica whose worker started each run named `n` (its replica id).
fn started_by(records: &[Value]) -> BTreeMap<String, String> {
    let target_of: BTreeMap<&str, &str> = of_kind(records, "execution.started")
        .iter()
        .map(|r| (r["execution_id"].as_str().unwrap(), r["target"].as_str().unwrap()))
        .collect();
    of_kind(records, "execution.started")
        .iter()
        .map(|r| {
            let id = r["execution_id"].as_str().unwrap();
            let replica = r["data"]["worker"].as_str().unwrap().split('/').next().unwrap();
            (target_of[id].to_string(), replica.to_string())
        })
        .collect()
}

/// A run another live replica's intake queued waits in that replica's
/// memory: the others leave it alone (before, both claimed every run of the
/// other, and half of all claims failed inside the chain lock). Once that
/// replica is gone, its queued runs are anyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_queued_by_a_live_replica_is_left_to_it_and_taken_over_once_it_is_gone() {
    let rb = r#"apiVersion: pitcrew/v1
name: one-at-a-time
trigger: {alertname: OneAtATime}
target: "{{alert.labels.n}}"
steps:
  - name: fix
    action: exec
    with: {command: [/bin/sleep, "3"], timeout: 1m}
"#;
    let (_dir, config) = setup(rb, &store_lines("2s"));
    // One worker: a second run waits in its memory while the first runs.
    let first = Serve::start_with_args(&config, &[], &["--workers", "1"]).await;
    let second = Serve::start(&config).await;
    let client = reqwest::Client::new();
    let fire = async |serve: &Serve, n: &str| {
        assert_eq!(
            post(&client, &serve.url, vec![alert(&[("alertname", "OneAtATime"), ("n", n)])]).await,
            202
        );
    };
    fire(&first, "a").await;
    fire(&first, "b").await;
    until("a and b to end", Duration::from_secs(30), async || {
        second.executions("status=succeeded").await.len() == 2
    })
    .await;
    let records = verified_audit(&config);
    let by = started_by(&records);
    assert_eq!(by["a"], by["b"], "b waited for the replica that queued it: {by:?}");

    // Gone with a run queued: the other replica takes it after the lease.
    fire(&first, "c").await;
    fire(&first, "d").await;
    until("c to start", Duration::from_secs(30), async || {
        second.executions("status=running").await.len() == 1
    })
    .await;
    first.kill9().await;
    until("c and d to end on the second replica", Duration::from_secs(60), async || {
        second.executions("status=succeeded").await.len() == 3 && second.executions("status=unknown").await.len() == 1
            || second.executions("status=succeeded").await.len() == 4
    })
    .await;
    let by = started_by(&verified_audit(&config));
    assert_ne!(by["d"], by["a"], "d was taken over: {by:?}");
}

/// A run that sleeps in a step that is not idempotent, then marks; its
/// `on_failure` marks too.
const INTERRUPTED: &str = r#"apiVersion: pitcrew/v1
name: slow-fix
trigger: {alertname: SlowFix}
target: "{{alert.labels.n}}"
steps:
  - name: fix
    action: exec
    with: {command: [/bin/sleep, "4"], timeout: 1m}
  - name: after
    action: exec
    with: {command: [/bin/mkdir, "MARKS/after"]}
on_failure:
  - name: escalate
    action: exec
    with: {command: [/bin/mkdir, "MARKS/escalated"]}
"#;

/// Starts one replica, sends one SlowFix alert, and waits until its
/// non-idempotent step has started there. Returns the execution id.
async fn started_on(serve: &Serve) -> String {
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, &serve.url, vec![alert(&[("alertname", "SlowFix"), ("n", "x")])]).await,
        202
    );
    let mut id = String::new();
    until("the step to start", Duration::from_secs(30), async || {
        let running = serve.executions("status=running").await;
        let Some(exec) = running.first() else { return false };
        id = exec["id"].as_str().unwrap().to_string();
        let exec = execution(serve, &id).await;
        exec["steps"].as_array().is_some_and(|s| !s.is_empty())
    })
    .await;
    id
}

/// What the audit says of a run: how often each step started, its end.
fn run_story(records: &[Value], id: &str) -> (BTreeMap<String, usize>, Option<String>) {
    let mut starts = BTreeMap::new();
    let mut end = None;
    for r in records.iter().filter(|r| r["execution_id"] == id) {
        if r["kind"] == "step.started" {
            *starts.entry(r["data"]["step"].as_str().unwrap().to_string()).or_default() += 1;
        }
        if r["kind"] == "execution.finished" {
            end = r["data"]["state"].as_str().map(String::from);
        }
    }
    (starts, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_inside_a_step_that_is_not_idempotent_is_taken_over_after_its_lease() {
    let (dir, config) = setup(INTERRUPTED, &store_lines("2s"));
    let first = Serve::start(&config).await;
    let id = started_on(&first).await;
    first.kill9().await;
    let second = Serve::start(&config).await;
    until("the run to end on the second replica", Duration::from_secs(30), async || {
        execution(&second, &id).await["state"] == "unknown"
    })
    .await;
    let records = verified_audit(&config);
    let (starts, end) = run_story(&records, &id);
    assert_eq!(
        starts.get("fix"),
        Some(&1),
        "the step that is not idempotent never starts twice: {starts:?}"
    );
    assert_eq!(starts.get("after"), None);
    assert_eq!(starts.get("escalate"), Some(&1), "on_failure ran");
    assert_eq!(end.as_deref(), Some("unknown"));
    let recovered = of_kind(&records, "execution.recovered");
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["data"]["action"], "escalate");
    assert!(dir.path().join("marks/escalated").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_that_lost_its_lease_writes_nothing_when_it_wakes() {
    let (dir, config) = setup(INTERRUPTED, &store_lines("2s"));
    let first = Serve::start(&config).await;
    let id = started_on(&first).await;
    let pid = nix::unistd::Pid::from_raw(first.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let second = Serve::start(&config).await;
    until("the run to be taken over", Duration::from_secs(30), async || {
        execution(&second, &id).await["state"] == "unknown"
    })
    .await;
    let before = verified_audit(&config);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // Its step (a 4s sleep) ends; its end, and anything after, is refused.
    until("the woken replica to find its claim gone", Duration::from_secs(30), async || {
        first.log.lock().unwrap().contains("claim lost")
    })
    .await;
    let records = verified_audit(&config);
    let (starts, end) = run_story(&records, &id);
    assert_eq!(starts.get("fix"), Some(&1), "{starts:?}");
    assert_eq!(starts.get("after"), None, "the woken replica ran nothing more");
    assert_eq!(end.as_deref(), Some("unknown"), "the final state is not overwritten");
    assert!(!dir.path().join("marks/after").exists());
    let of_run = |records: &[Value]| records.iter().filter(|r| r["execution_id"] == id.as_str()).count();
    assert_eq!(
        of_run(&records),
        of_run(&before),
        "no record of the run was added after the takeover"
    );
    assert_eq!(execution(&second, &id).await["state"], "unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_nothing_acknowledged_and_pitcrew_recovers_by_itself() {
    // Its own cluster: the shared one serves the other tests meanwhile.
    let pg = crate::pg::PgCluster::new();
    let store = format!(
        "store:\n  url: {}\n  password_file: {}\n",
        pg.database(),
        pg.password_file().display()
    );
    let (_dir, config) = setup(&note_runbook("Load"), &store);
    let serve = Serve::start(&config).await;
    let client = reqwest::Client::new();
    let (mut acked, mut refused) = (BTreeSet::new(), 0usize);
    let mut restarted = false;
    let mut n = 0;
    // Alerts go in one after another before, during and after the restart.
    while n < 600 {
        let a = alert(&[("alertname", "Load"), ("n", &format!("n{n}"))]);
        let fp = a["fingerprint"].as_str().unwrap().to_string();
        match post(&client, &serve.url, vec![a]).await {
            202 => {
                acked.insert(fp);
            }
            503 => refused += 1,
            other => panic!("status {other} for alert {n}"),
        }
        n += 1;
        if n == 200 && !restarted {
            pg.stop();
            // While it is down, the webhook refuses: nothing is acknowledged unstored.
            for _ in 0..20 {
                let a = alert(&[("alertname", "Load"), ("n", &format!("down{n}"))]);
                assert_eq!(post(&client, &serve.url, vec![a]).await, 503);
                refused += 1;
            }
            pg.start();
            restarted = true;
        }
    }
    assert!(refused >= 20);
    assert!(acked.len() >= 350, "pitcrew recovered after the restart: {} acked", acked.len());
    serve.settle(Duration::from_secs(60)).await;
    let records = verified_audit(&config);
    let received: BTreeSet<String> = of_kind(&records, "alert.received")
        .iter()
        .map(|r| r["data"]["fingerprint"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.difference(&received).collect();
    assert!(lost.is_empty(), "acknowledged alerts lost: {lost:?}");
    eprintln!("postgres restart: {} acknowledged, {refused} refused with 503", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_change_nothing_and_migrate_runs_once() {
    let (dir, config) = setup(INTERRUPTED, &postgres_store_config());
    let config = config.to_str().unwrap();
    let text = std::fs::read_to_string(config).unwrap();
    let url = text.lines().find_map(|l| l.trim().strip_prefix("url: ")).unwrap().to_string();
    let pg = crate::pg::cluster();
    let tables = || {
        pg.psql(
            &url,
            Some(crate::pg::PASSWORD),
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'",
        )
    };
    for args in [
        &["executions"][..],
        &["audit", "verify"],
        &["escalations"],
        &["approve", "01kbgq1sd5x1n5f4v6p2z8w0hq"],
    ] {
        let out = pitcrew(&[&["--config", config][..], args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no pitcrew store"), "{args:?}");
    }
    assert_eq!(tables().unwrap(), "0", "nothing was created");
    assert!(!dir.path().join("state").exists());
    let out = pitcrew(&["--config", config, "migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied migrations 1"));
    let out = pitcrew(&["--config", config, "migrate"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    let out = pitcrew(&["--config", config, "executions"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        pg.psql(&url, Some(crate::pg::PASSWORD), "SELECT COUNT(*) FROM replicas").unwrap(),
        "0",
        "a command that only reads does not join as a replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_the_embedded_history_and_chain_into_postgres() {
    let rb = r#"apiVersion: pitcrew/v1
name: note
trigger: {alertname: Copy}
target: "{{alert.labels.n}}"
guardrails: {cooldown: 1h}
steps:
  - name: note
    action: log
    with: {message: "copy {{alert.labels.n}}"}
"#;
    let (dir, config) = setup(rb, "");
    let serve = Serve::start(&config).await;
    let client = reqwest::Client::new();
    for n in 0..30 {
        // Two alerts per target: one runs, one is blocked by the cooldown.
        let a = alert(&[("alertname", "Copy"), ("n", &format!("t{}", n % 15)), ("i", &n.to_string())]);
        assert_eq!(post(&client, &serve.url, vec![a]).await, 202);
    }
    serve.settle(Duration::from_secs(30)).await;
    serve.kill9().await;
    let embedded = verified_audit(&config);

    let pg = crate::pg::cluster();
    let url = pg.database();
    let password = pg.password_file();
    let copy = |config: &Path| {
        pitcrew(&[
            "--config",
            config.to_str().unwrap(),
            "store",
            "copy",
            "--to",
            &url,
            "--password-file",
            password.to_str().unwrap(),
        ])
    };
    let out = copy(&config);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("up to record {}", embedded.len())), "{stdout}");

    let pg_config = dir.path().join("pg.yaml");
    std::fs::write(
        &pg_config,
        format!(
            "state_dir: nowhere\nplugins: plugins\nstore:\n  url: {url}\n  password_file: {}\n",
            password.display()
        ),
    )
    .unwrap();
    let copied = verified_audit(&pg_config);
    assert_eq!(copied, embedded, "every record, byte for byte");
    let listed = |config: &Path| {
        let out = pitcrew(&[
            "--config",
            config.to_str().unwrap(),
            "executions",
            "--output",
            "json",
            "--limit",
            "100",
        ]);
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    assert_eq!(listed(&pg_config), listed(&config));
    assert_eq!(listed(&pg_config).len(), 30);

    // The copy goes on as a store: the cooldowns it carries still hold.
    let serve = Serve::start(&pg_config).await;
    let a = alert(&[("alertname", "Copy"), ("n", "t0"), ("i", "again")]);
    assert_eq!(post(&client, &serve.url, vec![a]).await, 202);
    serve.settle(Duration::from_secs(30)).await;
    let last = of_kind(&verified_audit(&pg_config), "guardrail.decision")
        .last()
        .cloned()
        .cloned()
        .unwrap();
    assert_eq!(last["data"]["decided_by"], "cooldown");

    // Only into an empty database.
    let out = copy(&config);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a store"));
}

/// The store contract's cost rule on PostgreSQL: deciding an alert reads
/// as few pages on a target with 100,000 stored executions (nearly all
/// blocked) as on a fresh one, and no part of the facts query scans a table.
#[test]
fn deciding_on_postgres_costs_the_same_after_100k_blocked_executions() {
    let pg = crate::pg::cluster();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let store = pitcrew::config::StoreConfig {
        url: url.clone(),
        password: Some(crate::pg::PASSWORD.to_string()),
        lease: pitcrew::units::Duration::from_secs(15),
    };
    pitcrew::store::postgres::migrate_url(&store).unwrap();
    let now_ms: i64 = 10_000_000_000;
    let (hour, old) = (3_600_000i64, 10_000_000_000i64 - 100 * 24 * 3_600_000);
    pg.admin(
        &db,
        &format!(
            "INSERT INTO executions (id, runbook, target, state, actor, fingerprint, params, dry_run, automated, risk, created_ms, admitted_ms, finished_ms)
             SELECT 'x' || lpad(i::text, 6, '0'), 'rb', 't',
                    CASE WHEN i % 1000 = 0 THEN 'succeeded' WHEN i % 97 = 0 THEN 'cancelled' ELSE 'blocked' END,
                    'alertmanager', 'fp', '{{}}', i % 89 = 0, true, 'medium', {old} + i,
                    CASE WHEN i % 1000 = 0 THEN {old} + i END, {old} + i
             FROM generate_series(1, 100000) i;
             INSERT INTO executions (id, runbook, target, state, actor, params, dry_run, automated, risk, created_ms, admitted_ms, finished_ms)
             VALUES ('recent1', 'rb', 't', 'succeeded', 'alertmanager', '{{}}', false, true, 'medium', {r1}, {r1}, {r1}),
                    ('recent2', 'rb', 't', 'running', 'alertmanager', '{{}}', false, true, 'medium', {r2}, {r2}, NULL);
             INSERT INTO target_alerts (target, ms) SELECT 'other' || i, {old} + i FROM generate_series(1, 100000) i;
             -- A backlog: 10,000 runs of the runbook queued on other targets.
             INSERT INTO executions (id, runbook, target, state, actor, params, dry_run, automated, risk, created_ms, admitted_ms)
             SELECT 'q' || lpad(i::text, 6, '0'), 'rb', 'queued' || i, 'queued', 'alertmanager', '{{}}', false, true, 'medium',
                    {old} + i, {old} + i
             FROM generate_series(1, 10000) i;
             ANALYZE;",
            r1 = now_ms - hour / 2,
            r2 = now_ms - hour / 4,
        ),
    );
    // The facts query planned for its values, as the store sends it (an
    // unnamed statement, planned at each use): a custom plan.
    let (facts, params) = pitcrew::store::postgres::facts_sql(pitcrew::store::postgres::ALL_FACTS);
    assert_eq!(
        params,
        [
            "runbook",
            "target",
            "target_runs",
            "runbook_runs",
            "global_runs",
            "storm",
            "storm_limit",
            "escalation"
        ]
    );
    let plan = |target: &str| -> Value {
        let since = now_ms - hour;
        let out = pg.admin(
            &db,
            &format!(
                "SET plan_cache_mode = force_custom_plan; \
                 PREPARE facts(text, text, bigint, bigint, bigint, bigint, bigint, bigint) AS {}; \
                 EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE facts('rb', '{target}', {since}, {since}, {since}, {}, 21, {})",
                facts,
                now_ms - 3_600_000,
                now_ms - 6 * hour
            ),
        );
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    };
    fn walk<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
        out.push(node);
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, out);
        }
    }
    let pages = |p: &Value| {
        let mut nodes = Vec::new();
        walk(&p["Plan"], &mut nodes);
        // Tables that grow with history; a scan of a one-row table (the
        // storm notice, breakers nobody tripped) is what the planner picks
        // while it is that small.
        let scans: Vec<String> = nodes
            .iter()
            .filter(|n| n["Node Type"] == "Seq Scan")
            .filter_map(|n| n["Relation Name"].as_str())
            .filter(|r| ["executions", "target_alerts", "alerts", "audit", "steps"].contains(r))
            .map(String::from)
            .collect();
        assert!(scans.is_empty(), "the facts query scans {scans:?}: {p:#}");
        p["Plan"]["Shared Hit Blocks"].as_u64().unwrap() + p["Plan"]["Shared Read Blocks"].as_u64().unwrap()
    };
    // Once to warm the caches (the first run sets hint bits on 100,000 new rows).
    pages(&plan("t"));
    let (fresh, stormed) = (pages(&plan("fresh")), pages(&plan("t")));
    eprintln!("pages read per decision: fresh target {fresh}, after 100,000 executions {stormed}");
    // A scan of the target's executions alone would read over a thousand pages.
    assert!(
        fresh < 60 && stormed <= fresh + 20 && stormed < 60,
        "{stormed} pages vs {fresh} on a fresh target"
    );
    let out = pg.admin(&db, "SELECT pg_relation_size('executions') / 8192");
    assert!(
        out.trim().parse::<u64>().unwrap() > 1000,
        "the table is big enough for a scan to show"
    );

    // The parts prepared once (`GENERIC_FACTS`), in the plan made for any
    // value: as few pages, hot target or fresh.
    let (generic, params) = pitcrew::store::postgres::facts_sql(pitcrew::store::postgres::GENERIC_FACTS);
    assert_eq!(params, ["runbook", "target"]);
    let generic_plan = |target: &str| -> Value {
        let out = pg.admin(
            &db,
            &format!(
                "SET plan_cache_mode = force_generic_plan; PREPARE facts(text, text) AS {generic}; \
                 EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE facts('rb', '{target}')"
            ),
        );
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    };
    pages(&generic_plan("t"));
    let (fresh, stormed, queued) = (
        pages(&generic_plan("fresh")),
        pages(&generic_plan("t")),
        pages(&generic_plan("queued7")),
    );
    eprintln!("pages read per decision, generic plan: fresh {fresh}, after 100,000 executions {stormed}, in a backlog {queued}");
    assert!(
        fresh < 20 && stormed <= fresh + 10 && queued <= fresh + 10,
        "generic plan: {stormed} pages after 100,000 executions, {queued} in a backlog, vs {fresh} on a fresh target"
    );

    // A group's claims and ends, each one statement prepared once, in the
    // plan made for any value: searches of the primary key, never of the
    // queue's 10,000 entries nor of the table, even when the statistics
    // were taken with the queue empty (as when a backlog builds up faster
    // than autovacuum analyzes).
    pg.admin(
        &db,
        "UPDATE executions SET state = 'running' WHERE state = 'queued'; ANALYZE executions; \
         UPDATE executions SET state = 'queued' WHERE id LIKE 'q%'",
    );
    let scans = |prepare: &str, execute: &str| -> Vec<String> {
        let out = pg.admin(
            &db,
            &format!("SET plan_cache_mode = force_generic_plan; PREPARE {prepare}; EXPLAIN (FORMAT JSON) EXECUTE {execute}"),
        );
        let plan = serde_json::from_str::<Value>(&out).unwrap()[0].clone();
        let mut nodes = Vec::new();
        walk(&plan["Plan"], &mut nodes);
        nodes
            .iter()
            .filter(|n| n["Relation Name"] == "executions" && n["Node Type"].as_str().is_some_and(|t| t.ends_with("Scan")))
            .map(|n| n["Index Name"].as_str().unwrap_or("(no index)").to_string())
            .collect()
    };
    let claims = scans(
        &format!("claims(text[], text[], bigint[], text) AS {}", pitcrew::store::postgres::CLAIMS),
        "claims('{q000007,q000008}', '{r-x/1,r-x/2}', '{0,0}', 'queued')",
    );
    assert_eq!(claims, ["executions_pkey"], "the claims' generic plan");
    let ends = scans(
        &format!(
            "ends(text[], text[], text[], text[], bigint[], text[], boolean[]) AS {}",
            pitcrew::store::postgres::END_HELD
        ),
        "ends('{recent2}', '{r-x/1}', '{succeeded}', '{NULL}', '{0}', '{unless_started}', '{true}')",
    );
    assert_eq!(ends, ["executions_pkey"], "the ends' generic plan");
}

/// Inhibition's lookup on PostgreSQL reads as few pages with 100,000
/// alerts firing under other names (and 100,000 seen long ago) as with one
/// alert: an index search by alertname, never a scan of what fires.
#[test]
fn inhibition_lookups_on_postgres_cost_the_same_with_100k_other_alerts_firing() {
    let pg = crate::pg::cluster();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let store = pitcrew::config::StoreConfig {
        url: url.clone(),
        password: Some(crate::pg::PASSWORD.to_string()),
        lease: pitcrew::units::Duration::from_secs(15),
    };
    pitcrew::store::postgres::migrate_url(&store).unwrap();
    let now_ms: i64 = 10_000_000_000;
    let since = now_ms - pitcrew::inhibit::FIRING_EXPIRES.as_millis() as i64;
    let plan = || -> Value {
        let out = pg.admin(
            &db,
            &format!(
                "SET plan_cache_mode = force_custom_plan; \
                 PREPARE firing(text, bigint, bigint) AS {}; \
                 EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE firing('DatabaseDown', {since}, {now_ms})",
                pitcrew::store::postgres::FIRING_NAMED
            ),
        );
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    };
    let pages = |p: &Value| {
        assert_eq!(p["Plan"]["Actual Rows"], 1, "{p:#}");
        p["Plan"]["Shared Hit Blocks"].as_u64().unwrap() + p["Plan"]["Shared Read Blocks"].as_u64().unwrap()
    };
    pg.admin(
        &db,
        &format!(
            "INSERT INTO firing_alerts (fingerprint, alertname, labels, starts_ms, seen_ms) \
             VALUES ('db', 'DatabaseDown', '{{\"alertname\":\"DatabaseDown\"}}', {now_ms}, {now_ms}); ANALYZE;"
        ),
    );
    pages(&plan());
    let fresh = pages(&plan());
    pg.admin(
        &db,
        &format!(
            "INSERT INTO firing_alerts (fingerprint, alertname, labels, starts_ms, seen_ms)
             SELECT 'o' || i, 'Other' || (i % 50), '{{}}', i, {now_ms} - i FROM generate_series(1, 100000) i;
             INSERT INTO firing_alerts (fingerprint, alertname, labels, starts_ms, seen_ms)
             SELECT 'stale' || i, 'DatabaseDown', '{{}}', i, {since} - i FROM generate_series(1, 100000) i;
             ANALYZE;"
        ),
    );
    pages(&plan());
    let crowded_plan = plan();
    // A one-row table is scanned (what the planner picks while it is that small); a crowded one never.
    assert_ne!(crowded_plan["Plan"]["Node Type"], "Seq Scan", "{crowded_plan:#}");
    let crowded = pages(&crowded_plan);
    eprintln!("pages per inhibition lookup: one alert firing {fresh}, with 200,000 others {crowded}");
    assert!(crowded <= fresh + 4 && crowded < 20, "{crowded} pages vs {fresh}");
}

/// The store sends a write nothing reads the answer of (a run's insert)
/// with its next round trip, here the commit: when the database refuses it,
/// the delivery is not acknowledged and nothing of it is kept (PostgreSQL
/// answers the COMMIT after a failed statement with a rollback, which must
/// not pass for a commit). The next delivery is stored as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_write_the_database_refuses_keeps_nothing_of_its_delivery() {
    let pg = crate::pg::cluster();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let store = format!("store:\n  url: {url}\n  password_file: {}\n", pg.password_file().display());
    let (_dir, config) = setup(&note_runbook("Pipelined"), &store);
    let serve = Serve::start(&config).await;
    pg.admin(
        &db,
        "ALTER TABLE executions ADD CONSTRAINT refuse_poison CHECK (target <> 'poison') NOT VALID",
    );
    let client = reqwest::Client::new();
    let delivery = |n: &str| vec![alert(&[("alertname", "Pipelined"), ("n", n)])];
    // A first delivery warms the writer's statements and names, so the
    // refused one reads nothing after its insert: the refusal comes back
    // with the commit itself.
    assert_eq!(post(&client, &serve.url, delivery("before")).await, 202);
    serve.settle(Duration::from_secs(30)).await;
    assert_eq!(post(&client, &serve.url, delivery("poison")).await, 503);
    assert_eq!(post(&client, &serve.url, delivery("after")).await, 202);
    serve.settle(Duration::from_secs(30)).await;
    let records = verified_audit(&config);
    let received: Vec<&Value> = of_kind(&records, "alert.received");
    let targets: Vec<&Value> = received.iter().map(|r| &r["data"]["labels"]["n"]).collect();
    assert_eq!(targets, ["before", "after"], "{received:#?}");
    assert!(
        records.iter().all(|r| r["target"] != "poison"),
        "nothing of the refused delivery: {records:#?}"
    );
    assert_eq!(pg.admin(&db, "SELECT count(*) FROM alerts").trim(), "2");
    let finished = of_kind(&records, "execution.finished");
    assert_eq!(finished.len(), 2);
    assert!(finished.iter().all(|r| r["data"]["state"] == "succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_longer_than_the_lease_takes_no_live_run_from_its_replica() {
    // Its own cluster: it is stopped for longer than the lease.
    let pg = crate::pg::PgCluster::new();
    let store = format!(
        "store:\n  url: {}\n  password_file: {}\n  lease: 2s\n",
        pg.database(),
        pg.password_file().display()
    );
    let rb = r#"apiVersion: pitcrew/v1
name: long-fix
trigger: {alertname: LongFix}
target: "{{alert.labels.n}}"
steps:
  - name: fix
    action: exec
    with: {command: [/bin/sleep, "8"], timeout: 1m}
"#;
    let (_dir, config) = setup(rb, &store);
    let serve = Serve::start(&config).await;
    // Steady for more than a lease before anything happens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, &serve.url, vec![alert(&[("alertname", "LongFix"), ("n", "x")])]).await,
        202
    );
    until("the step to start", Duration::from_secs(30), async || {
        serve.executions("status=running").await.len() == 1
    })
    .await;
    pg.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.start();
    // One request per look: a reader may still be reconnecting.
    until("the run to end", Duration::from_secs(60), async || {
        match reqwest::get(format!("{}/v1/executions?status=succeeded", serve.url)).await {
            Ok(r) if r.status().is_success() => r.json::<Vec<Value>>().await.is_ok_and(|runs| runs.len() == 1),
            _ => false,
        }
    })
    .await;
    let records = verified_audit(&config);
    assert!(
        of_kind(&records, "execution.recovered").is_empty(),
        "no run was taken from a replica that was alive all along: {:#?}",
        of_kind(&records, "execution.recovered")
    );
    assert_eq!(
        of_kind(&records, "step.started").len(),
        1,
        "{records:#?}\n{}",
        serve.log.lock().unwrap()
    );
}
