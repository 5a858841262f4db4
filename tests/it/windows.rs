//! Change freezes, allowed hours and inhibition end to end: alerts go in
//! through the webhook, decisions come out of the store and the audit.
//! Time is the harness's `ManualClock` (it starts on Friday 2026-11-27,
//! 12:00 UTC); tokio time is paused.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use pitcrew::audit::Record;
use pitcrew::store::{Admission, State};
use serde_json::{Value, json};

use crate::support::{Harness, alert, payload, resolved};

/// A harness on this module's backend (SQLite, or PostgreSQL as `…_on_postgres`).
fn harness(runbooks: &str, config: &str) -> Harness {
    Harness::new_on(crate::support::backend_of(module_path!()), runbooks, config)
}

const WINDOWS: &str = r#"
windows:
  - name: black-friday
    start: 2026-11-27T00:00:00Z
    end: 2026-12-01T00:00:00Z
  - name: business-hours
    timezone: Europe/Berlin
    days: [mon, tue, wed, thu, fri]
    from: "09:00"
    to: "18:00"
"#;

/// A runbook triggered by `alertname`, target = the `instance` label.
fn runbook(name: &str, alertname: &str, risk: &str, guardrails: &str) -> String {
    format!(
        "apiVersion: pitcrew/v1\n\
         name: {name}\n\
         trigger: {{alertname: {alertname}}}\n\
         params:\n  instance: {{default: \"{{{{alert.labels.instance}}}}\"}}\n  cluster: {{default: \"{{{{alert.labels.cluster}}}}\"}}\n\
         target: \"{{{{params.instance}}}}\"\n\
         risk: {risk}\n\
         guardrails:\n{guardrails}\n\
         steps:\n  - name: note\n    action: log\n    with: {{message: \"fixing {{{{target}}}}\"}}\n"
    )
}

/// A firing alert that started at the harness's time now (in cluster eu1
/// unless it says otherwise).
fn firing(h: &Harness, labels: &[(&str, &str)]) -> Value {
    let mut labels = labels.to_vec();
    if !labels.iter().any(|(k, _)| *k == "cluster") {
        labels.push(("cluster", "eu1"));
    }
    let mut a = alert(&labels);
    a["startsAt"] = json!(h.clock_text());
    a
}

async fn post(h: &Harness, alerts: Vec<Value>) -> Value {
    let (status, body) = h.post(&payload(alerts)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body
}

/// The `guardrail.decision` records since `after` (a seq).
async fn decisions_after(h: &Harness, after: u64) -> Vec<Record> {
    h.audit()
        .await
        .into_iter()
        .filter(|r| r.seq > after && r.kind == "guardrail.decision")
        .collect()
}

async fn last_seq(h: &Harness) -> u64 {
    h.audit().await.last().map(|r| r.seq).unwrap_or(0)
}

/// Posts alerts; returns the decisions they produced by runbook name.
async fn decide(h: &Harness, alerts: Vec<Value>) -> BTreeMap<String, Record> {
    let before = last_seq(h).await;
    post(h, alerts).await;
    decisions_after(h, before)
        .await
        .into_iter()
        .map(|d| (d.runbook.clone().unwrap(), d))
        .collect()
}

#[track_caller]
fn check(d: &Record, verdict: &str, decided_by: &str) {
    assert_eq!(
        (d.data["verdict"].as_str().unwrap(), d.data["decided_by"].as_str().unwrap()),
        (verdict, decided_by),
        "decision: {:#}",
        d.data
    );
}

fn reason(d: &Record) -> &str {
    d.data["reason"].as_str().unwrap()
}

fn detail<'a>(d: &'a Record, guardrail: &str) -> &'a str {
    d.data["checks"][guardrail]["detail"].as_str().unwrap_or_else(|| reason(d))
}

/// `pitcrew run NAME --param instance=…` by alice.
fn manual(h: &Harness, name: &str, instance: &str) -> Admission {
    h.manual(name, &[("instance", instance), ("cluster", "eu1")])
}

trait ClockText {
    fn clock_text(&self) -> String;
}

impl ClockText for Harness {
    fn clock_text(&self) -> String {
        use pitcrew::clock::Clock;
        self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

// ---------------------------------------------------------------- windows

#[tokio::test(start_paused = true)]
async fn a_freeze_holds_automated_runs_above_low_risk_for_approval_and_names_the_window() {
    let docs = [
        runbook("restart", "Down", "medium", "  freeze: [black-friday]"),
        runbook("diagnose", "Down", "low", "  freeze: [black-friday]"),
        runbook("failover", "Down", "high", "  freeze: [business-hours, black-friday]"),
    ];
    let h = harness(&docs.join("---\n"), WINDOWS);
    // Friday 12:00 UTC: inside black-friday (and business hours in Berlin).
    let d = decide(&h, vec![firing(&h, &[("alertname", "Down"), ("instance", "web-1")])]).await;
    check(&d["restart"], "pending_approval", "freeze");
    assert!(
        reason(&d["restart"]).contains("black-friday (2026-11-27T00:00:00Z – 2026-12-01T00:00:00Z)"),
        "names the window: {}",
        reason(&d["restart"])
    );
    check(&d["diagnose"], "run", "all");
    assert!(detail(&d["diagnose"], "freeze").contains("runbook risk low runs in any window"));
    // The first window it is inside is the one named.
    check(&d["failover"], "pending_approval", "freeze");
    assert!(reason(&d["failover"]).contains("business-hours (mon,tue,wed,thu,fri 09:00–18:00 Europe/Berlin)"));
    let restart = h.store().execution(d["restart"].execution_id.as_deref().unwrap()).await.unwrap();
    assert_eq!(restart.state, State::PendingApproval);
    assert!(
        restart
            .reason
            .as_deref()
            .unwrap()
            .starts_with("freeze: inside freeze window black-friday")
    );

    // A person starting it by hand is the approval: manual runs keep the usual rules.
    let id = {
        let adm = manual(&h, "restart", "web-2");
        let id = adm.id.clone();
        let decision = h.engine.admit(adm, None).await.unwrap();
        assert_eq!(decision.decided_by, "all", "{decision:?}");
        let freeze = decision.checks.iter().find(|c| c.guardrail == "freeze").unwrap();
        assert!(freeze.detail.contains("manual run"), "{}", freeze.detail);
        id
    };
    assert_eq!(h.store().execution(&id).await.unwrap().state, State::Queued);

    // Tuesday 1 December 00:00 UTC is past the end of black-friday ([start, end)).
    h.advance("3d12h");
    let d = decide(&h, vec![firing(&h, &[("alertname", "Down"), ("instance", "web-3")])]).await;
    check(&d["restart"], "run", "all");
    assert!(detail(&d["restart"], "freeze").contains("outside every freeze window"));
}

#[tokio::test(start_paused = true)]
async fn only_during_holds_automated_runs_outside_business_hours_in_berlin() {
    let docs = [
        runbook("restart", "Down", "high", "  only_during: [business-hours]"),
        runbook("diagnose", "Down", "low", "  only_during: [business-hours]"),
    ];
    let h = harness(&docs.join("---\n"), WINDOWS);
    // Friday 12:00 UTC = 13:00 in Berlin (CET): inside.
    let d = decide(&h, vec![firing(&h, &[("alertname", "Down"), ("instance", "web-1")])]).await;
    check(&d["restart"], "run", "all");
    assert!(detail(&d["restart"], "outside_window").contains("inside window business-hours"));
    // 16:59:59 UTC = 17:59:59 in Berlin: still inside.
    h.advance("4h59m59s");
    let d = decide(&h, vec![firing(&h, &[("alertname", "Down"), ("instance", "web-2")])]).await;
    check(&d["restart"], "run", "all");
    // 17:00 UTC = 18:00 in Berlin: outside; high risk waits, low risk runs.
    h.advance("1s");
    let d = decide(&h, vec![firing(&h, &[("alertname", "Down"), ("instance", "web-3")])]).await;
    check(&d["restart"], "pending_approval", "outside_window");
    assert!(reason(&d["restart"]).contains("outside every window of only_during (business-hours): high risk needs approval"));
    check(&d["diagnose"], "run", "all");
    // Saturday noon: outside (weekend).
    h.advance("19h");
    let d = decide(&h, vec![firing(&h, &[("alertname", "Down"), ("instance", "web-4")])]).await;
    check(&d["restart"], "pending_approval", "outside_window");
    // What `pitcrew match` shows: the same verdict, without recording anything.
    let preview = h
        .store()
        .preview(
            Admission {
                actor: "alertmanager".into(),
                automated: true,
                ..manual(&h, "restart", "web-9")
            },
            h.engine.config().clone(),
        )
        .await
        .unwrap();
    assert_eq!(preview.decided_by, "outside_window");
    // By hand it runs.
    let decision = h.engine.admit(manual(&h, "restart", "web-5"), None).await.unwrap();
    assert_eq!(decision.decided_by, "all", "{decision:?}");
}

// ---------------------------------------------------------------- inhibition

const INHIBITED: &str = "  inhibit_while_firing:\n    - ['alertname=\"DatabaseDown\"', 'cluster=\"{{params.cluster}}\"']";

#[tokio::test(start_paused = true)]
async fn a_fix_waits_while_its_database_is_down_and_runs_once_the_database_alert_resolved() {
    let h = harness(&runbook("restart-app", "AppDown", "medium", INHIBITED), "");
    // The database of eu1 goes down: no runbook answers it, pitcrew keeps it as firing.
    let db = firing(&h, &[("alertname", "DatabaseDown"), ("cluster", "eu1")]);
    let body = post(&h, vec![db.clone()]).await;
    assert_eq!(body["accepted"], 1);
    h.advance("30s");

    // The app in eu1 goes down: blocked, naming the database alert.
    let app = firing(&h, &[("alertname", "AppDown"), ("cluster", "eu1"), ("instance", "web-1")]);
    let d = decide(&h, vec![app.clone()]).await;
    let blocked = &d["restart-app"];
    check(blocked, "blocked", "inhibited");
    let why = reason(blocked);
    assert!(why.starts_with("DatabaseDown is firing"), "{why}");
    assert!(why.contains(db["fingerprint"].as_str().unwrap()), "names the fingerprint: {why}");
    assert!(why.contains(r#"cluster="eu1""#), "names the labels: {why}");
    assert!(
        why.contains(r#"{alertname="DatabaseDown", cluster="eu1"}"#),
        "names the rule as rendered: {why}"
    );
    let id = blocked.execution_id.clone().unwrap();
    assert_eq!(h.store().execution(&id).await.unwrap().state, State::Blocked);
    let finished = h
        .audit()
        .await
        .into_iter()
        .find(|r| r.kind == "execution.finished" && r.execution_id.as_deref() == Some(id.as_str()))
        .unwrap();
    assert_eq!(finished.data["reason"], "inhibited");

    // The app in us1 is not waiting for eu1's database: the matcher is rendered per alert.
    let other = firing(&h, &[("alertname", "AppDown"), ("cluster", "us1"), ("instance", "web-9")]);
    check(&decide(&h, vec![other]).await["restart-app"], "run", "all");

    // Re-sent while the database is still down (after reconsider_after): decided again, blocked again.
    h.advance("5m");
    let body = post(&h, vec![app.clone()]).await;
    assert_eq!(body["reconsidered"], 1, "{body}");
    h.advance("1m");
    // The database alert resolves (same episode).
    let body = post(&h, vec![resolved_at(&db, &h)]).await;
    assert_eq!(body["accepted"], 1);
    // Re-sent within reconsider_after of its last decision: still a duplicate.
    assert_eq!(post(&h, vec![app.clone()]).await["duplicates"], 1);
    // And once reconsider_after passed: it runs.
    h.advance("4m");
    let before = last_seq(&h).await;
    let body = post(&h, vec![app.clone()]).await;
    assert_eq!(body["reconsidered"], 1, "{body}");
    let d = decisions_after(&h, before).await;
    check(&d[0], "run", "all");
    assert_eq!(
        d[0].data["checks"]["inhibited"]["detail"],
        "no firing alert matches inhibit_while_firing"
    );
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.iter().filter(|o| o.state == State::Succeeded).count(), 2, "{outcomes:?}");
    // It ran: a duplicate from now on.
    h.advance("10m");
    assert_eq!(post(&h, vec![app]).await["duplicates"], 1);
}

/// The resolved notification of `alert`, ending at the harness's time now.
fn resolved_at(alert: &Value, h: &Harness) -> Value {
    let mut r = resolved(alert.clone());
    r["endsAt"] = json!(h.clock_text());
    r
}

#[tokio::test(start_paused = true)]
async fn a_firing_alert_whose_resolve_never_came_stops_inhibiting_a_day_after_it_was_last_sent() {
    let h = harness(
        &runbook(
            "restart-app",
            "AppDown",
            "medium",
            // No alertname: any alert of the cluster marked `blocks: "true"`.
            "  inhibit_while_firing:\n    - ['cluster=\"{{params.cluster}}\"', 'blocks=\"true\"']",
        ),
        "",
    );
    let db = firing(&h, &[("alertname", "DatabaseDown"), ("cluster", "eu1"), ("blocks", "true")]);
    post(&h, vec![db.clone()]).await;
    let mut n = 0;
    let mut app = |h: &Harness| {
        n += 1;
        firing(
            h,
            &[("alertname", "AppDown"), ("cluster", "eu1"), ("instance", &format!("web-{n}"))],
        )
    };
    h.advance("23h");
    check(&decide(&h, vec![app(&h)]).await["restart-app"], "blocked", "inhibited");
    // Alertmanager re-sends it (repeat_interval): a duplicate that keeps it firing.
    assert_eq!(post(&h, vec![db.clone()]).await["duplicates"], 1);
    h.advance("23h");
    check(&decide(&h, vec![app(&h)]).await["restart-app"], "blocked", "inhibited");
    // A day without a word of it: no longer counted as firing.
    h.advance("1h");
    check(&decide(&h, vec![app(&h)]).await["restart-app"], "run", "all");
    // A late resolve of an older episode does not end a newer one.
    h.advance("1m");
    let newer = firing(&h, &[("alertname", "DatabaseDown"), ("cluster", "eu1"), ("blocks", "true")]);
    post(&h, vec![newer]).await;
    post(&h, vec![resolved(db)]).await;
    check(&decide(&h, vec![app(&h)]).await["restart-app"], "blocked", "inhibited");
}

#[tokio::test(start_paused = true)]
async fn an_inhibited_manual_run_is_blocked_unless_forced() {
    let h = harness(&runbook("restart-app", "AppDown", "medium", INHIBITED), "");
    post(&h, vec![firing(&h, &[("alertname", "DatabaseDown"), ("cluster", "eu1")])]).await;
    let rb = h.engine.runbooks().get("restart-app").unwrap().clone();
    let overrides = BTreeMap::from([
        ("instance".to_string(), "web-1".to_string()),
        ("cluster".to_string(), "eu1".to_string()),
    ]);
    let resolved = h.engine.runbooks().resolve(&rb, None, &overrides).unwrap();
    let adm = h
        .engine
        .manual_admission(&rb, resolved.clone(), "user:alice".into(), false, None)
        .await;
    let d = h.engine.admit(adm, None).await.unwrap();
    assert_eq!(d.decided_by, "inhibited", "{d:?}");
    let forced = h
        .engine
        .manual_admission(
            &rb,
            resolved,
            "user:alice".into(),
            false,
            Some("the database alert is stale".into()),
        )
        .await;
    let d = h.engine.admit(forced, None).await.unwrap();
    assert_eq!(d.decided_by, "all", "{d:?}");
    let check = d.checks.iter().find(|c| c.guardrail == "inhibited").unwrap();
    assert_eq!(check.verdict, pitcrew::guard::CheckVerdict::Forced);
}
