//! Effectiveness and the toil report, end to end: alerts go in through the
//! webhook at times the test's clock sets, runs are judged from their
//! resolves and re-fires, `min_effectiveness` stops automation, and the
//! report's numbers come out of the store. Runs on SQLite, and again on
//! PostgreSQL as `report_on_postgres` (main.rs).

use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use pitcrew::audit::Record;
use pitcrew::clock::Clock;
use pitcrew::guard::BudgetStatus;
use pitcrew::store::{Effectiveness, ExecutionFilter, State};
use serde_json::{Value, json};

use crate::support::{Harness, payload, resolved};

fn harness(runbooks: &str, config: &str) -> Harness {
    Harness::new_on(crate::support::backend_of(module_path!()), runbooks, config)
}

/// A runbook answering `alertname` on the alert's `instance`, with one `log` step.
fn runbook(name: &str, alertname: &str, extra: &str, guardrails: &str) -> String {
    format!(
        "apiVersion: pitcrew/v1\n\
         name: {name}\n\
         trigger: {{alertname: {alertname}}}\n\
         params:\n  instance: {{default: \"{{{{alert.labels.instance}}}}\"}}\n\
         target: \"{{{{params.instance}}}}\"\n\
         {extra}\
         guardrails: {{{guardrails}}}\n\
         steps:\n  - name: note\n    action: log\n    with: {{message: \"fixing {{{{target}}}}\"}}\n"
    )
}

/// Fires one alert and runs what it queued; returns its execution id.
async fn fire_and_run(h: &Harness, alertname: &str, instance: &str) -> (String, Value) {
    let a = h.firing_now(alertname, instance);
    let d = h.deliver(vec![a.clone()]).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].data["verdict"], "run", "{:#}", d[0].data);
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].state, State::Succeeded);
    (d[0].execution_id.clone().unwrap(), a)
}

async fn records(h: &Harness, kind: &str) -> Vec<Record> {
    h.engine.settle().await;
    h.audit().await.into_iter().filter(|r| r.kind == kind).collect()
}

/// Each judgment by execution: (effective, reason).
async fn judgments(h: &Harness) -> Vec<(String, bool, String)> {
    records(h, "effectiveness.judged")
        .await
        .into_iter()
        .map(|r| {
            (
                r.execution_id.clone().unwrap(),
                r.data["effective"].as_bool().unwrap(),
                r.data["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn runs_are_judged_from_resolves_and_refires_in_their_windows() {
    // The cooldown keeps the re-fire on web-3 from running (it still counts as a re-fire).
    let h = harness(
        &runbook("fix", "Broken", "verify_within: 15m\nstays_fixed: 1h\n", "cooldown: 45m"),
        "",
    );
    let judged = |id: &str, all: &[(String, bool, String)]| all.iter().find(|j| j.0 == id).map(|j| (j.1, j.2.clone()));

    // Resolved 5m after the run, and nothing fires for an hour: effective.
    let (fixed, a) = fire_and_run(&h, "Broken", "web-1").await;
    h.advance("5m");
    h.deliver(vec![resolved(a)]).await;
    // Resolved 20m after the run: too late, judged when the resolve arrives.
    let (late, b) = fire_and_run(&h, "Broken", "web-2").await;
    h.advance("20m");
    h.deliver(vec![resolved(b)]).await;
    assert_eq!(
        judged(&late, &judgments(&h).await),
        Some((
            false,
            "the alert resolved 20m after the run ended, later than verify_within 15m".into()
        ))
    );
    // Resolved after 1m, fires again 30m later: ineffective at the re-fire.
    let (refired, c) = fire_and_run(&h, "Broken", "web-3").await;
    h.advance("1m");
    h.deliver(vec![resolved(c)]).await;
    h.advance("30m");
    let again = h.deliver(vec![h.firing_now("Broken", "web-3")]).await;
    let again_id = again[0].execution_id.clone().unwrap();
    assert_eq!(
        judged(&refired, &judgments(&h).await),
        Some((
            false,
            "an alert fired again on web-3 30m after the resolve, within stays_fixed 1h".into()
        ))
    );
    // Never resolved: ineffective once verify_within is over.
    let (unresolved, _) = fire_and_run(&h, "Broken", "web-4").await;
    // Resolved, and fires again only after stays_fixed: effective.
    let (outlived, e) = fire_and_run(&h, "Broken", "web-5").await;
    h.advance("1m");
    h.deliver(vec![resolved(e)]).await;
    let stayed = "the alert resolved and did not fire again within stays_fixed 1h".to_string();
    // 70m in: web-1's resolve (at 5m) has stayed fixed for an hour.
    h.advance("13m");
    assert_eq!(h.store().judge_effectiveness().await.unwrap(), 1);
    assert_eq!(judged(&fixed, &judgments(&h).await), Some((true, stayed.clone())));
    // 71m in: web-4's verify_within is over without a resolve.
    h.advance("1m");
    assert_eq!(h.store().judge_effectiveness().await.unwrap(), 1);
    assert_eq!(
        judged(&unresolved, &judgments(&h).await),
        Some((false, "the alert did not resolve within verify_within 15m of the run's end".into()))
    );
    // web-5 fires again only after stays_fixed: the chore finds it effective.
    h.advance("2h");
    h.deliver(vec![h.firing_now("Broken", "web-5")]).await;
    assert_eq!(h.store().judge_effectiveness().await.unwrap(), 1);
    let all = judgments(&h).await;
    assert_eq!(judged(&outlived, &all), Some((true, stayed)));
    // Runs blocked (the re-fire on web-3) or not yet run are not judged.
    assert_eq!(judged(&again_id, &all), None);
    assert_eq!(all.len(), 5);
    assert_eq!(
        h.store().effectiveness().await.unwrap(),
        vec![Effectiveness {
            runbook: "fix".into(),
            judged: 5,
            effective: 2,
            notified: false
        }]
    );
    // Judging is audited like everything else: the chain holds.
    assert!(h.store().verify_audit().await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_dry_run_is_not_judged_and_a_run_resolved_while_running_waits_for_its_end() {
    let h = harness(
        &format!(
            "{}---\n{}",
            runbook("fix", "Broken", "", ""),
            runbook("shadow", "Shadow", "", "dry_run: true")
        ),
        "",
    );
    // A dry run is never watched.
    let (_, s) = fire_and_run(&h, "Shadow", "web-1").await;
    h.advance("1m");
    h.deliver(vec![resolved(s)]).await;
    // The resolve arrives before the run is executed: the run still ends
    // successfully (it had not been cancelled: it was claimed first).
    let a = h.firing_now("Broken", "web-2");
    h.deliver(vec![a.clone()]).await;
    let exec = h.store().claim(&h.engine.worker_id, None).await.unwrap().unwrap();
    h.advance("1m");
    h.deliver(vec![resolved(a)]).await;
    h.advance("1m");
    let outcome = h.engine.execute(exec, None).await.unwrap();
    assert_eq!(outcome.state, State::Succeeded);
    // Due an hour after the resolve (stays_fixed), not at the end.
    h.advance("58m");
    assert_eq!(h.store().judge_effectiveness().await.unwrap(), 0);
    h.advance("1m");
    assert_eq!(h.store().judge_effectiveness().await.unwrap(), 1);
    let all = judgments(&h).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].1);
}

/// A re-fire that makes the judgment tipping a runbook under
/// `min_effectiveness` counts in the decision it arrives with: that very
/// alert is blocked, not run once more.
#[tokio::test(start_paused = true)]
async fn a_refire_judging_the_fifth_run_blocks_its_own_decision() {
    let h = harness(
        &runbook("fix", "Broken", "verify_within: 15m\nstays_fixed: 1h\n", "min_effectiveness: 50%"),
        "",
    );
    for i in 1..=4 {
        fire_and_run(&h, "Broken", &format!("web-{i}")).await;
        h.advance("16m");
    }
    // Four judged (at this decision), so the fifth run goes ahead...
    let (fifth, a) = fire_and_run(&h, "Broken", "web-5").await;
    assert_eq!(judgments(&h).await.len(), 4);
    h.advance("1m");
    h.deliver(vec![resolved(a)]).await;
    // ...and its alert fires again within stays_fixed: judged at this
    // delivery, which is decided on five judged runs, none effective.
    h.advance("10m");
    let again = h.deliver(vec![h.firing_now("Broken", "web-5")]).await;
    let all = judgments(&h).await;
    assert_eq!(all.len(), 5);
    assert_eq!(
        all.last().unwrap(),
        &(
            fifth,
            false,
            "an alert fired again on web-5 10m after the resolve, within stays_fixed 1h".to_string()
        )
    );
    assert_eq!(again[0].data["verdict"], "blocked", "{:#}", again[0].data);
    assert_eq!(again[0].data["decided_by"], "ineffective");
}

#[tokio::test(start_paused = true)]
async fn min_effectiveness_blocks_automation_after_five_judged_runs_and_escalates_once() {
    let h = harness(
        &runbook("fix", "Broken", "toil_minutes: 10\n", "min_effectiveness: 50%"),
        "notify: {url: \"http://127.0.0.1:9/\"}",
    );
    // Five runs whose alert never resolves. Each decision first judges the
    // windows that closed: no chore needed.
    for i in 1..=5 {
        fire_and_run(&h, "Broken", &format!("web-{i}")).await;
        h.advance("16m");
    }
    let blocked = h.deliver(vec![h.firing_now("Broken", "web-6")]).await;
    assert_eq!(blocked[0].data["verdict"], "blocked", "{:#}", blocked[0].data);
    assert_eq!(blocked[0].data["decided_by"], "ineffective");
    assert_eq!(
        blocked[0].data["reason"],
        "0 of 5 judged runs of fix fixed the alert: escalating instead of running (min_effectiveness 50%)"
    );
    assert_eq!(blocked[0].data["escalated"], true);
    assert_eq!(judgments(&h).await.len(), 5);
    let exec = h.store().execution(blocked[0].execution_id.as_deref().unwrap()).await.unwrap();
    assert_eq!(exec.state, State::Blocked);
    // Escalated once: the next block sends no notice.
    h.advance("1m");
    let again = h.deliver(vec![h.firing_now("Broken", "web-7")]).await;
    assert_eq!(again[0].data["decided_by"], "ineffective");
    assert!(again[0].data.get("escalated").is_none());
    let notices = records(&h, "notification").await;
    assert_eq!(notices.len(), 1, "{notices:#?}");
    assert_eq!(notices[0].data["event"], "escalated");
    assert!(notices[0].data["text"].as_str().unwrap().contains("pitcrew stopped automating fix"));
    assert!(h.store().effectiveness().await.unwrap()[0].notified);

    // The report flags it; the decision and block counts agree.
    let now = h.clock.now();
    let r = build(&h, now - chrono::Duration::days(1), now + chrono::Duration::seconds(1)).await;
    let line = &r.runbooks[0];
    assert_eq!((line.effectiveness.judged, line.effectiveness.effective), (5, 0));
    assert_eq!(line.effectiveness.ratio, Some(0.0));
    assert!(line.effectiveness.flagged);
    assert_eq!(r.escalations, 1);
    assert_eq!(r.blocked_by.get("ineffective"), Some(&2));
    assert_eq!(r.toil_minutes_saved, 50);
    assert!(pitcrew::report::markdown(&r).contains("Flagged: fix"));

    // `pitcrew list` shows it too (the embedded store only: the CLI reads
    // the same state file).
    if h.engine.config().store.is_none() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitcrew"))
            .args(["list", "--config"])
            .arg(h.dir.path().join("pitcrew.yaml"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.lines().next().unwrap().trim_end().ends_with("EFFECTIVE"), "{text}");
        assert!(text.contains("0% (0/5) FLAGGED"), "{text}");
        assert!(text.contains("min_effectiveness=50%"), "{text}");
    }
}

async fn build(h: &Harness, since: DateTime<Utc>, until: DateTime<Utc>) -> pitcrew::report::Report {
    let budgets = [BudgetStatus {
        slo: "api".into(),
        remaining: Some(0.25),
        tier: "normal".into(),
        auto: vec![],
        approve: vec![],
        error: None,
        objective: 0.999,
        window: "30d".into(),
        budget_minutes: 43.2,
        remaining_minutes: Some(10.8),
    }];
    pitcrew::report::build(h.store().as_ref(), &h.engine.runbooks(), since, until, &budgets)
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_report_counts_a_known_history_exactly() {
    let h = harness(
        &[
            runbook("fix", "Broken", "toil_minutes: 10\n", ""),
            runbook("gate", "NeedsOk", "toil_minutes: 5\n", "approval: required"),
            runbook("cool", "Hot", "", "cooldown: 1h"),
        ]
        .join("---\n"),
        "",
    );
    let start = h.clock.now();
    // fix: three runs, fixed 2m, 4m and 1m after the alert came in.
    for (instance, took) in [("web-1", "2m"), ("web-2", "4m"), ("web-1", "1m")] {
        h.deliver(vec![h.firing_now("Broken", instance)]).await;
        h.advance(took);
        assert_eq!(h.run_queued().await.len(), 1);
    }
    // gate: granted after 3m (and run), denied after 10m, one expires.
    let pending = |d: &[Record]| d[0].execution_id.clone().unwrap();
    let granted = pending(&h.deliver(vec![h.firing_now("NeedsOk", "db-1")]).await);
    h.advance("3m");
    h.store().approve(&granted, "user:bob", h.engine.approvers()).await.unwrap();
    assert_eq!(h.run_queued().await[0].state, State::Succeeded);
    let denied = pending(&h.deliver(vec![h.firing_now("NeedsOk", "db-2")]).await);
    h.advance("10m");
    h.store().deny(&denied, "user:bob", None, h.engine.approvers()).await.unwrap();
    h.deliver(vec![h.firing_now("NeedsOk", "db-3")]).await;
    h.advance("61m");
    assert_eq!(h.store().expire_approvals().await.unwrap().len(), 1);
    // cool: one run, then blocked by its cooldown; a resolve is no alert received.
    let hot = h.firing_now("Hot", "h-1");
    h.deliver(vec![hot.clone()]).await;
    h.run_queued().await;
    h.advance("1m");
    h.deliver(vec![h.firing_now("Hot", "h-1"), resolved(hot)]).await;
    // Outside the range: not counted.
    h.advance("1h");
    let until = h.clock.now();
    h.deliver(vec![h.firing_now("Broken", "web-9")]).await;

    let r = build(&h, start, until).await;
    let runs = |s: u64, c: u64, b: u64| json!({"succeeded": s, "failed": 0, "unknown": 0, "cancelled": c, "blocked": b, "pending_approval": 0, "queued": 0, "running": 0});
    let none = json!({"judged": 0, "effective": 0, "ratio": null, "flagged": false});
    let expected = json!({
        "since": "2026-11-27T12:00:00Z",
        "until": until.to_rfc3339_opts(SecondsFormat::Secs, true),
        "alerts_received": 8,
        "runs": runs(5, 2, 1),
        "blocked_by": {"cooldown": 1},
        "approvals": {"requested": 3, "granted": 1, "denied": 1, "expired": 1, "wait_p50_s": 180.0, "wait_p90_s": 600.0},
        "escalations": 0,
        "toil_minutes_saved": 35,
        "runbooks": [
            {"name": "cool", "runs": runs(1, 0, 1), "toil_minutes_saved": 0, "time_to_fix_p50_s": 0.0, "time_to_fix_p90_s": 0.0, "effectiveness": none},
            {"name": "fix", "runs": runs(3, 0, 0), "toil_minutes_saved": 30, "time_to_fix_p50_s": 120.0, "time_to_fix_p90_s": 240.0, "effectiveness": none},
            {"name": "gate", "runs": runs(1, 2, 0), "toil_minutes_saved": 5, "time_to_fix_p50_s": 180.0, "time_to_fix_p90_s": 180.0, "effectiveness": none},
        ],
        "offenders": {
            "targets": [
                {"target": "web-1", "runbook": "fix", "fixes": 2},
                {"target": "db-1", "runbook": "gate", "fixes": 1},
                {"target": "h-1", "runbook": "cool", "fixes": 1},
                {"target": "web-2", "runbook": "fix", "fixes": 1},
            ],
            "alertnames": [{"alertname": "Broken", "fixes": 3}, {"alertname": "Hot", "fixes": 1}, {"alertname": "NeedsOk", "fixes": 1}],
        },
        "budgets": [{"slo": "api", "remaining": 0.25, "tier": "normal"}],
    });
    assert_eq!(serde_json::to_value(&r).unwrap(), expected);

    // The text forms carry the same numbers.
    let table = pitcrew::report::table(&r);
    let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let lines: Vec<String> = table.lines().map(words).collect();
    for line in [
        "alerts received 8",
        "toil saved 35 min",
        "Blocked by guardrail",
        "cooldown 1",
        "3 1 1 1 3m 10m",
    ] {
        assert!(lines.iter().any(|l| l == line), "{line:?} in\n{table}");
    }
    let fix_row = table.lines().find(|l| l.starts_with("fix ")).unwrap();
    assert_eq!(
        fix_row.split_whitespace().collect::<Vec<_>>(),
        ["fix", "3", "0", "0", "0", "30", "min", "2m", "4m", "-"]
    );
    let md = pitcrew::report::markdown(&r);
    for part in [
        "# pitcrew report",
        "## Approvals",
        "| requested | granted | denied | expired | wait p50 | wait p90 |",
        "| 3 | 1 | 1 | 1 | 3m | 10m |",
        "| fix | 3 | 0 | 0 | 0 | 30 min | 2m | 4m | - |",
        "| web-1 | fix | 2 |",
        "| api | 25% | normal |",
    ] {
        assert!(md.contains(part), "{part:?} in\n{md}");
    }
    assert!(!md.contains("Flagged"));
}

#[tokio::test(start_paused = true)]
async fn the_report_api_needs_a_viewer_and_answers_the_shared_shape() {
    let h = harness(
        &runbook("fix", "Broken", "toil_minutes: 7\n", ""),
        "auth:\n  webhook_token: hook-secret-1\n  tokens:\n    - {name: vera, token: viewer-secret-1, role: viewer}\n",
    );
    assert_eq!(h.call("GET", "/v1/report", &[], "").await.0, StatusCode::UNAUTHORIZED);
    let viewer = [("authorization", "Bearer viewer-secret-1")];
    let (status, body) = h.call("GET", "/v1/report?since=soon", &viewer, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("since"), "{body}");
    // One run through the webhook, then the report over the last day.
    let hook = payload(vec![h.firing_now("Broken", "web-1")]);
    let hook_auth = [("content-type", "application/json"), ("authorization", "Bearer hook-secret-1")];
    let (status, _) = h.call("POST", "/v1/alerts/alertmanager", &hook_auth, hook.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.advance("30s");
    h.run_queued().await;
    let (status, body) = h.call("GET", "/v1/report?since=1d", &viewer, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    let keys = |v: &Value| {
        let mut k = v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        k.sort();
        k
    };
    assert_eq!(
        keys(&r),
        [
            "alerts_received",
            "approvals",
            "blocked_by",
            "budgets",
            "escalations",
            "offenders",
            "runbooks",
            "runs",
            "since",
            "toil_minutes_saved",
            "until"
        ]
    );
    assert_eq!(r["until"], "2026-11-27T12:00:30Z");
    assert_eq!(r["since"], "2026-11-26T12:00:30Z");
    assert_eq!(r["alerts_received"], 1);
    assert_eq!(r["toil_minutes_saved"], 7);
    assert_eq!(r["runbooks"][0]["time_to_fix_p50_s"], 30.0);
    assert_eq!(r["offenders"]["alertnames"], json!([{"alertname": "Broken", "fixes": 1}]));
    assert_eq!(r["approvals"]["wait_p50_s"], Value::Null);
    let execs = h.store().executions(ExecutionFilter::default()).await.unwrap();
    assert_eq!(execs.len(), 1);
}
