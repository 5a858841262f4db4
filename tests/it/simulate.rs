//! `pitcrew simulate`: a known history replayed with exact decisions, an
//! audit export replayed to the decisions `serve` really made, bad input
//! refused, the real state and every action endpoint untouched, and the
//! history rebuilt from a real Prometheus whose alerting rules fire.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use pitcrew::clock::Clock;
use serde_json::{Value, json};

use crate::realparts::{Exporter, Prometheus};
use crate::support::{Harness, alert, payload};

fn pitcrew(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pitcrew"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("PITCREW_CONFIG")
        .output()
        .expect("pitcrew runs")
}

/// Runs the CLI off the runtime's threads, so servers of the test keep answering.
async fn pitcrew_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || pitcrew(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

fn ok_json(out: &Output) -> Value {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// An HTTP server that records every request: what an action or a notice
/// would reach.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(format!("{} {}", req.method(), req.uri().path()));
                axum::Json(json!({"ok": true}))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Recorder { port, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A decision as compared: at, runbook, target, verdict, guardrail, outcome.
type Row<'a> = (String, &'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T10:00:00Z").unwrap().with_timezone(&Utc)
}

fn at(minutes: i64) -> String {
    (t0() + Duration::minutes(minutes)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One history line: `alerts` (labels) firing since `starts` minutes after t0, sent at `sent`.
fn line(sent: i64, starts: i64, status: &str, alerts: &[&[(&str, &str)]]) -> String {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|labels| {
            let mut a = alert(labels);
            a["startsAt"] = json!(at(starts));
            a["status"] = json!(status);
            if status == "resolved" {
                a["endsAt"] = json!(at(sent));
            }
            a
        })
        .collect();
    json!({"at": at(sent), "body": payload(alerts)}).to_string()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    out
}

fn runbooks(port: u16) -> String {
    let step = |name: &str| {
        format!("steps:\n  - name: {name}\n    action: http\n    with: {{method: POST, url: \"http://127.0.0.1:{port}/{name}\"}}\n")
    };
    format!(
        "apiVersion: pitcrew/v1\nname: restart\ntrigger: {{alertname: Crash}}\nparams:\n  instance: {{default: \"{{{{alert.labels.instance}}}}\"}}\ntarget: \"{{{{params.instance}}}}\"\nguardrails: {{cooldown: 10m}}\n{}\
         ---\napiVersion: pitcrew/v1\nname: scale\ntrigger: {{alertname: Load}}\ntarget: pool\nguardrails: {{rate_limit: 2/1h}}\n{}\
         ---\napiVersion: pitcrew/v1\nname: drain\ntrigger: {{alertname: Drain}}\ntarget: node\nguardrails: {{approval: required, approval_timeout: 30m}}\n{}\
         ---\napiVersion: pitcrew/v1\nname: reboot\ntrigger: {{alertname: Down}}\nparams:\n  instance: {{default: \"{{{{alert.labels.instance}}}}\"}}\ntarget: \"{{{{params.instance}}}}\"\n{}\
         ---\napiVersion: pitcrew/v1\nname: flush\ntrigger: {{alertname: Queue}}\ntarget: queue\nguardrails: {{escalate_after: 2/1h}}\n{}on_failure:\n  - name: page\n    action: notify\n    with: {{text: flush failed}}\n\
         ---\napiVersion: pitcrew/v1\nname: poke\n{}",
        step("restart"),
        step("scale"),
        step("drain"),
        step("reboot"),
        step("flush"),
        step("poke"),
    )
}

/// A folder with a config (storm brake at 2, notices and actions to the
/// recorder), the runbooks above, and the real state of one manual run.
fn setup(port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::write(dir.path().join("runbooks/all.yaml"), runbooks(port)).unwrap();
    std::fs::write(
        dir.path().join("pitcrew.yaml"),
        format!(
            "state_dir: state\nplugins: plugins\nlimits: {{storm_brake: 2}}\nhttp: {{allowed_hosts: [\"127.0.0.1:{port}\"]}}\nnotify: {{url: \"http://127.0.0.1:{port}/notice\"}}\n"
        ),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_history_gets_exactly_these_decisions_and_touches_nothing_real() {
    let recorder = Recorder::start().await;
    let dir = setup(recorder.port);
    let config = dir.path().join("pitcrew.yaml").display().to_string();
    // Real state, made by a real run: the recorder hears it, so its silence
    // later means something.
    let out = pitcrew_async(vec!["--config".into(), config.clone(), "run".into(), "poke".into()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(recorder.seen(), vec!["POST /poke"]);
    let before = snapshot(&dir.path().join("state"));
    assert!(before.keys().any(|p| p.ends_with("state.db")), "{:?}", before.keys());

    let crash: &[(&str, &str)] = &[("alertname", "Crash"), ("instance", "a")];
    let load: &[(&str, &str)] = &[("alertname", "Load")];
    let drain: &[(&str, &str)] = &[("alertname", "Drain")];
    let queue: &[(&str, &str)] = &[("alertname", "Queue")];
    let down = |i: &'static str| -> Vec<(&'static str, &'static str)> { vec![("alertname", "Down"), ("instance", i)] };
    let (h1, h2, h3) = (down("h1"), down("h2"), down("h3"));
    let history = [
        line(0, 0, "firing", &[crash]),
        line(1, 1, "firing", &[load]),
        line(2, 2, "firing", &[load]),
        line(3, 3, "firing", &[load]),
        line(5, 5, "firing", &[crash]),
        // Alertmanager sends the blocked alert again after the cooldown.
        line(11, 5, "firing", &[crash]),
        line(12, 12, "firing", &[crash]),
        line(13, 12, "resolved", &[crash]),
        line(20, 20, "firing", &[drain]),
        line(25, 25, "firing", &[drain]),
        line(40, 40, "firing", &[&h1, &h2, &h3]),
        line(55, 55, "firing", &[drain]),
        line(56, 55, "resolved", &[drain]),
        line(60, 60, "firing", &[queue]),
        line(61, 61, "firing", &[queue]),
        line(62, 62, "firing", &[queue]),
    ]
    .join("\n");
    let file = dir.path().join("history.jsonl");
    std::fs::write(&file, history).unwrap();
    let args = |output: &str| -> Vec<String> {
        [
            "--config",
            &config,
            "simulate",
            "--alerts",
            file.to_str().unwrap(),
            "--assume-fail",
            "flush",
            "--output",
            output,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let sim = ok_json(&pitcrew_async(args("json")).await);

    let got: Vec<Row<'_>> = sim["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["at"].as_str().unwrap().to_string(),
                d["runbook"].as_str().unwrap(),
                d["target"].as_str().unwrap(),
                d["verdict"].as_str().unwrap(),
                d["guardrail"].as_str(),
                d["outcome"].as_str(),
            )
        })
        .collect();
    let ok = Some("succeeded");
    let want = vec![
        (at(0), "restart", "a", "run", None, ok),
        (at(1), "scale", "pool", "run", None, ok),
        (at(2), "scale", "pool", "run", None, ok),
        (at(3), "scale", "pool", "blocked", Some("rate_limit"), None),
        (at(5), "restart", "a", "blocked", Some("cooldown"), None),
        (at(11), "restart", "a", "run", None, ok),
        (at(12), "restart", "a", "blocked", Some("cooldown"), None),
        (at(20), "drain", "node", "pending_approval", Some("approval"), None),
        (at(25), "drain", "node", "blocked", Some("concurrency"), None),
        (at(40), "reboot", "h1", "run", None, ok),
        (at(40), "reboot", "h2", "run", None, ok),
        (at(40), "reboot", "h3", "blocked", Some("storm_brake"), None),
        // The first approval timed out at 50m: nothing holds the node.
        (at(55), "drain", "node", "pending_approval", Some("approval"), None),
        (at(60), "flush", "queue", "run", None, Some("failed")),
        (at(61), "flush", "queue", "run", None, Some("failed")),
        (at(62), "flush", "queue", "blocked", Some("escalated"), None),
    ];
    assert_eq!(got, want, "{sim:#}");
    let d = &sim["decisions"];
    assert_eq!(d[4]["reason"], "last run on a started 5m ago; cooldown 10m (5m left)");
    assert_eq!(d[3]["reason"], "2 runs on pool in the last 1h (limit 2/1h)");

    let n = &sim["notifications"];
    assert_eq!((n["notifications"].as_u64(), n["alerts"].as_u64()), (Some(16), Some(18)));
    assert_eq!((n["accepted"].as_u64(), n["reconsidered"].as_u64()), (Some(17), Some(1)));
    assert_eq!(n["cancelled"], 1, "the resolve at 56m cancelled the run waiting since 55m");
    let report = &sim["report"];
    assert_eq!(report["runs"]["succeeded"], 6, "{report:#}");
    assert_eq!(report["runs"]["failed"], 2);
    assert_eq!(report["runs"]["blocked"], 6);
    assert_eq!(report["runs"]["cancelled"], 2);
    assert_eq!(report["runs"]["pending_approval"], 0);
    assert_eq!(
        report["blocked_by"],
        json!({"concurrency": 1, "cooldown": 2, "escalated": 1, "rate_limit": 1, "storm_brake": 1})
    );
    assert_eq!(report["escalations"], 1);
    assert_eq!(report["approvals"]["requested"], 2);
    assert_eq!(report["approvals"]["expired"], 1);
    let restart = report["runbooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "restart")
        .unwrap();
    assert_eq!(restart["runs"]["succeeded"], 2);
    assert_eq!(restart["blocked_by"], json!({"cooldown": 2}));

    // The table: one line per decision, then the summary.
    let out = pitcrew_async(args("table")).await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("AT") && lines[0].contains("GUARDRAIL"), "{table}");
    assert!(
        lines[4].contains("scale") && lines[4].contains("blocked") && lines[4].contains("rate_limit"),
        "{table}"
    );
    assert!(lines[14].contains("flush") && lines[14].contains("run (failed)"), "{table}");
    assert!(
        table.contains("\n16 notifications (18 alerts): 17 new, 0 duplicates, 1 decided again; 16 decisions\n"),
        "{table}"
    );
    assert!(
        table.contains("blocked by: concurrency 1, cooldown 2, escalated 1, rate_limit 1, storm_brake 1\n"),
        "{table}"
    );

    // Nothing real was touched: no action, no notice, the same state bytes.
    assert_eq!(recorder.seen(), vec!["POST /poke"]);
    let after = snapshot(&dir.path().join("state"));
    let changed: Vec<&PathBuf> = after
        .keys()
        .chain(before.keys())
        .filter(|p| after.get(*p) != before.get(*p))
        .collect();
    assert!(changed.is_empty(), "the real state changed: {changed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_refused_by_line_and_field_before_anything_happens() {
    let recorder = Recorder::start().await;
    let dir = setup(recorder.port);
    let config = dir.path().join("pitcrew.yaml").display().to_string();
    let file = dir.path().join("history.jsonl");
    let good = line(0, 0, "firing", &[&[("alertname", "Crash"), ("instance", "a")]]);
    for (text, want) in [
        (
            format!("{good}\n{{\"at\": \"soon\", \"body\": {{}}}}\n"),
            ":2: at: \"soon\" is not an RFC 3339 time",
        ),
        (format!("{good}\n\n{{\"at\": \"{}\"}}\n", at(1)), ":3: body: missing"),
        (
            format!(
                "{good}\n{{\"at\": \"{}\", \"body\": {{\"version\": \"4\", \"alerts\": [{{\"labels\": 7}}]}}}}\n",
                at(1)
            ),
            ":2: body: invalid alert JSON",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = pitcrew_async(vec![
            "--config".into(),
            config.clone(),
            "simulate".into(),
            "--alerts".into(),
            file.display().to_string(),
        ])
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("{}{want}", file.display())), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing half-done is printed");
    }
    assert!(!dir.path().join("state").exists(), "no state is ever made");
    assert!(recorder.seen().is_empty());

    let out = pitcrew_async(vec!["--config".into(), config, "simulate".into()]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--alerts") && stderr.contains("--from-prometheus"), "{stderr}");
}

/// What `serve` decided, recorded in its audit log and exported with
/// `pitcrew audit export`, is what the simulation of that export decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_export_replays_to_the_decisions_serve_made() {
    let rb = "apiVersion: pitcrew/v1\nname: restart\ntrigger: {alertname: Crash}\nparams:\n  instance: {default: \"{{alert.labels.instance}}\"}\ntarget: \"{{params.instance}}\"\nguardrails: {cooldown: 10m, rate_limit: 2/1h}\nsteps:\n  - name: say\n    action: log\n    with: {message: restarting}\n";
    let h = Harness::new(rb, "");
    let start = h.clock.now();
    let send = |starts: i64, instance: &str| {
        let mut a = alert(&[("alertname", "Crash"), ("instance", instance)]);
        a["startsAt"] = json!((start + Duration::minutes(starts)).to_rfc3339());
        payload(vec![a])
    };
    // (minute sent, minute started, instance): new episodes, a re-send
    // blocked by the cooldown and one after it, a second target.
    let deliveries = [
        (0, 0, "a"),
        (3, 3, "a"),
        (4, 3, "a"),
        (14, 3, "a"),
        (15, 15, "b"),
        (30, 30, "a"),
        (45, 45, "a"),
    ];
    let mut now = 0;
    for (sent, starts, instance) in deliveries {
        h.clock.advance(Duration::minutes(sent - now));
        now = sent;
        let (status, _) = h.post(&send(starts, instance)).await;
        assert_eq!(status, axum::http::StatusCode::ACCEPTED);
        h.run_queued().await;
    }
    let served: Vec<(String, String, String, String)> = h
        .audit()
        .await
        .into_iter()
        .filter(|r| r.kind == "guardrail.decision")
        .map(|r| {
            (
                r.target.clone().unwrap(),
                r.data["verdict"].as_str().unwrap().to_string(),
                r.data["decided_by"].as_str().unwrap().to_string(),
                r.data["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let verdicts: Vec<&str> = served.iter().map(|d| d.1.as_str()).collect();
    assert_eq!(verdicts, ["run", "blocked", "run", "run", "blocked", "blocked"], "{served:?}");

    let config = h.dir.path().join("pitcrew.yaml").display().to_string();
    let out = pitcrew_async(vec!["--config".into(), config.clone(), "audit".into(), "export".into()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let export = h.dir.path().join("export.jsonl");
    std::fs::write(&export, &out.stdout).unwrap();
    let sim = ok_json(
        &pitcrew_async(vec![
            "--config".into(),
            config,
            "simulate".into(),
            "--alerts".into(),
            export.display().to_string(),
            "--output".into(),
            "json".into(),
        ])
        .await,
    );
    let simulated: Vec<(String, String, String, String)> = sim["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let guardrail = d["guardrail"].as_str().unwrap_or("all").to_string();
            (
                d["target"].as_str().unwrap().to_string(),
                d["verdict"].as_str().unwrap().to_string(),
                guardrail,
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(simulated, served, "{sim:#}");
    assert_eq!(sim["source"]["format"], "audit");
    assert_eq!(sim["notifications"]["reconsidered"], 1);
    assert_eq!(sim["notifications"]["duplicates"], 1);
}

/// A real Prometheus with alerting rules that fire: one always, one while a
/// gauge says so (twice); the history rebuilt from `ALERTS` decides as
/// those episodes would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_rebuilt_from_a_real_prometheus() {
    let exporter = Exporter::start().await;
    let rules = "groups:\n  - name: sim\n    interval: 1s\n    rules:\n      - alert: Always\n        expr: vector(1)\n        labels: {team: core}\n      - alert: Flapping\n        expr: flap > 0\n        labels: {severity: page}\n";
    let prom = Prometheus::start_with_rules(&exporter.addr(), Some(rules)).await;
    let firing = |name: &str| format!("count(ALERTS{{alertname=\"{name}\",alertstate=\"firing\"}})");
    // No Flapping sample within the last 3s: the range query sees a gap.
    let quiet = "count(count_over_time(ALERTS{alertname=\"Flapping\"}[3s])) or vector(0)";
    for _episode in 0..2 {
        exporter.set("flap", 1.0);
        prom.eventually(&firing("Flapping"), |v| v == 1.0).await;
        exporter.set("flap", 0.0);
        prom.eventually(quiet, |v| v == 0.0).await;
    }
    prom.eventually(&firing("Always"), |v| v == 1.0).await;

    let recorder = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::write(
        dir.path().join("runbooks/r.yaml"),
        format!(
            "apiVersion: pitcrew/v1\nname: fix-flap\ntrigger: {{alertname: Flapping, matchers: [severity=\"page\"]}}\ntarget: flap\nguardrails: {{cooldown: 1h}}\nsteps:\n  - name: fix\n    action: http\n    with: {{method: POST, url: \"http://127.0.0.1:{}/fix\"}}\n---\napiVersion: pitcrew/v1\nname: always\ntrigger: {{alertname: Always}}\ntarget: \"{{{{alert.labels.team}}}}\"\nsteps:\n  - name: look\n    action: log\n    with: {{message: hi}}\n",
            recorder.port
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pitcrew.yaml"),
        format!(
            "state_dir: state\nplugins: plugins\nhttp: {{allowed_hosts: [\"127.0.0.1:{}\"]}}\n",
            recorder.port
        ),
    )
    .unwrap();
    let sim = ok_json(
        &pitcrew_async(vec![
            "--config".into(),
            dir.path().join("pitcrew.yaml").display().to_string(),
            "simulate".into(),
            "--from-prometheus".into(),
            prom.url(),
            "--since".into(),
            "10m".into(),
            "--step".into(),
            "1s".into(),
            "--output".into(),
            "json".into(),
        ])
        .await,
    );
    assert_eq!(sim["source"]["format"], "prometheus");
    let decisions: Vec<(&str, &str, &str, Option<&str>)> = sim["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["runbook"].as_str().unwrap(),
                d["target"].as_str().unwrap(),
                d["verdict"].as_str().unwrap(),
                d["guardrail"].as_str(),
            )
        })
        .collect();
    let flap: Vec<_> = decisions.iter().filter(|d| d.0 == "fix-flap").copied().collect();
    assert_eq!(
        flap,
        vec![("fix-flap", "flap", "run", None), ("fix-flap", "flap", "blocked", Some("cooldown"))],
        "two firing episodes, the second inside the cooldown: {sim:#}"
    );
    let always: Vec<_> = decisions.iter().filter(|d| d.0 == "always").copied().collect();
    assert_eq!(always, vec![("always", "core", "run", None)], "one episode, still firing: {sim:#}");
    // Two Flapping episodes firing and resolved, Always firing once.
    assert_eq!(sim["notifications"]["notifications"], 5, "{sim:#}");
    assert!(recorder.seen().is_empty(), "{:?}", recorder.seen());
    assert!(!dir.path().join("state").exists());
}

/// Budgets: a static SLO gives its value; one on Prometheus is read at the
/// notification's time, and one that cannot be read is unknown (freeze),
/// which the output says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_static_or_read_at_the_time_and_unknown_ones_are_said() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    let runbook = |name: &str, alert: &str, slo: &str| {
        format!(
            "apiVersion: pitcrew/v1\nname: {name}\ntrigger: {{alertname: {alert}}}\nrisk: medium\nguardrails: {{slo: {slo}}}\nsteps:\n  - name: say\n    action: log\n    with: {{message: hi}}\n"
        )
    };
    std::fs::write(
        dir.path().join("runbooks/r.yaml"),
        [
            runbook("healthy", "A", "plenty"),
            runbook("frozen", "B", "spent"),
            runbook("blind", "C", "measured"),
        ]
        .join("---\n"),
    )
    .unwrap();
    let port = crate::realparts::closed_port();
    std::fs::write(
        dir.path().join("pitcrew.yaml"),
        format!(
            "state_dir: state\nplugins: plugins\nprometheus: {{url: \"http://127.0.0.1:{port}\"}}\nslos:\n  - {{name: plenty, objective: 99%, window: 30d, static_remaining: 80%}}\n  - {{name: spent, objective: 99%, window: 30d, static_remaining: 10%}}\n  - {{name: measured, objective: 99%, window: 30d, good: up, total: up}}\n"
        ),
    )
    .unwrap();
    let file = dir.path().join("history.jsonl");
    let lines = [
        line(0, 0, "firing", &[&[("alertname", "A")]]),
        line(0, 0, "firing", &[&[("alertname", "B")]]),
        line(1, 1, "firing", &[&[("alertname", "C")]]),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let sim = ok_json(
        &pitcrew_async(vec![
            "--config".into(),
            dir.path().join("pitcrew.yaml").display().to_string(),
            "simulate".into(),
            "--alerts".into(),
            file.display().to_string(),
            "--output".into(),
            "json".into(),
        ])
        .await,
    );
    let d = &sim["decisions"];
    assert_eq!(
        (d[0]["runbook"].as_str(), d[0]["verdict"].as_str()),
        (Some("healthy"), Some("run")),
        "{sim:#}"
    );
    assert_eq!(
        (d[1]["runbook"].as_str(), d[1]["verdict"].as_str(), d[1]["guardrail"].as_str()),
        (Some("frozen"), Some("pending_approval"), Some("budget"))
    );
    assert_eq!(d[1]["reason"], "budget 10.0% of spent: tier freeze: medium risk needs approval");
    assert_eq!(
        (d[2]["runbook"].as_str(), d[2]["verdict"].as_str(), d[2]["guardrail"].as_str()),
        (Some("blind"), Some("pending_approval"), Some("budget"))
    );
    assert!(d[2]["reason"].as_str().unwrap().contains("budget of measured unknown"), "{sim:#}");
    let budgets: BTreeMap<&str, &Value> = sim["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["slo"].as_str().unwrap(), b))
        .collect();
    assert_eq!(budgets["spent"]["source"], "static");
    assert_eq!(budgets["spent"]["unknown"], 0);
    assert_eq!(budgets["measured"]["source"], "prometheus");
    // Evaluated at 0m and again at 1m (every 30s of the clock, as serve does).
    assert_eq!(
        (budgets["measured"]["evaluations"].as_u64(), budgets["measured"]["unknown"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(budgets["measured"]["error"].as_str().unwrap().contains("unreachable"), "{sim:#}");
}
