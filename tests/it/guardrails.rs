//! Guardrails end to end (limits, budgets, force,
//! approvals, dry run): alerts go in through the webhook, decisions come
//! out of the store and the audit. Time is the harness's `ManualClock`; tokio
//! time is paused (except where a real child process runs), so nothing here
//! waits on the wall clock.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::http::StatusCode;
use chrono::SecondsFormat;
use pitcrew::audit::Record;
use pitcrew::clock::Clock;
use pitcrew::guard::{CheckVerdict, Verdict};
use pitcrew::store::{Admission, ExecutionFilter, State, StepState, StoreError};
use serde_json::{Value, json};

use crate::support::{Harness, alert, payload, resolved};

/// A harness on this module's backend: SQLite, or PostgreSQL where this
/// file is included again as `…_on_postgres` (main.rs).
fn harness(runbooks: &str, config: &str) -> Harness {
    Harness::new_on(crate::support::backend_of(module_path!()), runbooks, config)
}

// ---------------------------------------------------------------- builders

/// One runbook document: triggered by `alertname`, target = the alert's
/// `instance` label (or `--param instance=` for manual runs), one `log` step.
fn runbook(name: &str, alertname: &str, risk: &str, guardrails: &str) -> String {
    format!(
        "apiVersion: pitcrew/v1\n\
         name: {name}\n\
         trigger: {{alertname: {alertname}}}\n\
         params:\n  instance: {{default: \"{{{{alert.labels.instance}}}}\"}}\n\
         target: \"{{{{params.instance}}}}\"\n\
         risk: {risk}\n\
         guardrails: {{{guardrails}}}\n\
         steps:\n  - name: note\n    action: log\n    with: {{message: \"fixing {{{{target}}}}\"}}\n"
    )
}

/// Several runbooks in one file.
fn runbooks(docs: &[String]) -> String {
    docs.join("---\n")
}

/// Posts one alert and returns its single decision.
async fn decide(h: &Harness, alert: Value) -> Record {
    let mut d = h.deliver(vec![alert]).await;
    assert_eq!(d.len(), 1, "expected one decision, got {d:#?}");
    d.remove(0)
}

/// `verdict` and `decided_by` of a decision record.
fn verdict(d: &Record) -> (String, String) {
    (
        d.data["verdict"].as_str().unwrap().to_string(),
        d.data["decided_by"].as_str().unwrap().to_string(),
    )
}

fn reason(d: &Record) -> &str {
    d.data["reason"].as_str().unwrap()
}

#[track_caller]
fn check(d: &Record, expected_verdict: &str, expected_by: &str) {
    assert_eq!(
        verdict(d),
        (expected_verdict.to_string(), expected_by.to_string()),
        "decision: {:#}",
        d.data
    );
}

/// The check a decision kept for one guardrail (its detail is the
/// decision's reason when that guardrail decided).
fn guardrail(d: &Record, name: &str) -> Option<Value> {
    let mut check = d.data["checks"].get(name)?.clone();
    if check.get("detail").is_none() {
        check["detail"] = d.data["reason"].clone();
    }
    Some(check)
}

/// A manual admission (`pitcrew run NAME --param instance=...`).
fn manual(h: &Harness, name: &str, instance: &str) -> Admission {
    h.manual(name, &[("instance", instance)])
}

/// The same admission as an alert would produce (for previews).
fn automated(h: &Harness, name: &str, instance: &str) -> Admission {
    Admission {
        actor: "alertmanager".into(),
        automated: true,
        ..manual(h, name, instance)
    }
}

async fn state(h: &Harness, id: &str) -> State {
    h.store().execution(id).await.unwrap().state
}

fn id(d: &Record) -> String {
    d.execution_id.clone().expect("decision names its execution")
}

/// Records of `kind`, once the notices sent so far are recorded.
async fn records(h: &Harness, kind: &str) -> Vec<Record> {
    h.engine.settle().await;
    h.audit().await.into_iter().filter(|r| r.kind == kind).collect()
}

/// Runs the queue and says how many executions succeeded.
async fn run_all(h: &Harness) -> usize {
    h.run_queued().await.iter().filter(|o| o.state == State::Succeeded).count()
}

// ---------------------------------------------------------------- dedupe, cooldown

#[tokio::test(start_paused = true)]
async fn the_same_notification_twice_starts_one_execution() {
    let h = harness(&runbook("fix", "Broken", "low", ""), "");
    let a = h.firing_now("Broken", "web-1");
    let (status, body) = h.post(&payload(vec![a.clone()])).await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"accepted": 1, "duplicates": 0, "reconsidered": 0}))
    );
    h.advance("30s");
    let (status, body) = h.post(&payload(vec![a])).await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"accepted": 0, "duplicates": 1, "reconsidered": 0}))
    );

    assert_eq!(h.store().executions(ExecutionFilter::default()).await.unwrap().len(), 1);
    assert_eq!(records(&h, "alert.received").await.len(), 1);
    assert_eq!(records(&h, "guardrail.decision").await.len(), 1);
    let dup = records(&h, "alert.duplicate").await;
    assert_eq!(dup.len(), 1);
    assert_eq!(dup[0].data["labels"]["instance"], "web-1");
}

#[tokio::test(start_paused = true)]
async fn cooldown_blocks_the_same_target_until_it_passes() {
    let h = harness(&runbook("fix", "Broken", "low", "cooldown: 5m"), "");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
    assert_eq!(run_all(&h).await, 1);

    h.advance("2m");
    let blocked = decide(&h, h.firing_now("Broken", "web-1")).await;
    check(&blocked, "blocked", "cooldown");
    assert_eq!(reason(&blocked), "last run on web-1 started 2m ago; cooldown 5m (3m left)");
    let exec = h.store().execution(&id(&blocked)).await.unwrap();
    assert_eq!(exec.state, State::Blocked);
    assert!(exec.reason.as_deref().unwrap().starts_with("cooldown: "), "{:?}", exec.reason);

    // Another target has its own cooldown.
    check(&decide(&h, h.firing_now("Broken", "web-2")).await, "run", "all");
    assert_eq!(run_all(&h).await, 1);

    // Five minutes after the first run started, web-1 may run again.
    h.advance("3m");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
    assert_eq!(run_all(&h).await, 1);
}

#[tokio::test(start_paused = true)]
async fn dry_runs_do_not_start_a_cooldown() {
    let h = harness(&runbook("fix", "Broken", "low", "cooldown: 5m"), "");
    let dry = Admission {
        dry_run: true,
        ..manual(&h, "fix", "web-1")
    };
    assert_eq!(h.engine.admit(dry, None).await.unwrap().verdict, Verdict::Run);
    assert_eq!(run_all(&h).await, 1);
    h.advance("1m");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
}

/// A runbook whose alert's `mode` label picks what its run does: `render`
/// fails its first step's template (a label it needs is missing), `skip`
/// skips every step (`when` false), `fail` runs an action that fails.
const MODED: &str = r#"apiVersion: pitcrew/v1
name: fix
trigger: {alertname: Broken}
params:
  instance: {default: "{{alert.labels.instance}}"}
target: "{{params.instance}}"
risk: medium
guardrails: {cooldown: 5m, rate_limit: 1/1h}
steps:
  - name: render
    action: log
    when: "{{#if (eq alert.labels.mode \"render\")}}yes{{/if}}"
    with: {message: "{{alert.labels.missing}}"}
  - name: fail
    action: exec
    when: "{{#if (eq alert.labels.mode \"fail\")}}yes{{/if}}"
    with: {command: [/bin/false]}
"#;

fn moded(h: &Harness, instance: &str, mode: &str) -> Value {
    let mut a = h.firing_now("Broken", instance);
    a["labels"]["mode"] = json!(mode);
    a
}

// Not paused: a real child process runs (`/bin/false`).
#[tokio::test]
async fn a_run_that_never_started_an_action_does_not_start_a_cooldown() {
    let h = harness(MODED, "");
    for (target, mode, ended) in [("web-1", "render", State::Failed), ("web-2", "skip", State::Succeeded)] {
        for _ in 0..2 {
            // Neither the cooldown nor the rate limit holds the second back.
            let d = decide(&h, moded(&h, target, mode)).await;
            check(&d, "run", "all");
            let outcomes = h.run_queued().await;
            assert_eq!(outcomes.iter().map(|o| o.state).collect::<Vec<_>>(), [ended], "{mode}");
            let exec = h.store().execution(&id(&d)).await.unwrap();
            assert!(exec.steps.iter().all(|s| s.action.is_empty()), "{mode}: {:#?}", exec.steps);
            h.advance("1m");
        }
    }

    // An action that ran counts, even one that failed.
    let d = decide(&h, moded(&h, "web-3", "fail")).await;
    check(&d, "run", "all");
    assert_eq!(h.run_queued().await.iter().map(|o| o.state).collect::<Vec<_>>(), [State::Failed]);
    let exec = h.store().execution(&id(&d)).await.unwrap();
    assert_eq!(
        exec.steps.iter().find(|s| s.name == "fail").map(|s| s.state),
        Some(StepState::Failed)
    );
    h.advance("1m");
    check(&decide(&h, moded(&h, "web-3", "fail")).await, "blocked", "cooldown");
}

// ---------------------------------------------------------------- rate limits

#[tokio::test(start_paused = true)]
async fn rate_limit_counts_runs_per_target() {
    let h = harness(&runbook("fix", "Broken", "low", "rate_limit: 2/1h"), "");
    for _ in 0..2 {
        check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
        assert_eq!(run_all(&h).await, 1);
        h.advance("1m");
    }
    let blocked = decide(&h, h.firing_now("Broken", "web-1")).await;
    check(&blocked, "blocked", "rate_limit");
    assert_eq!(reason(&blocked), "2 runs on web-1 in the last 1h (limit 2/1h)");
    check(&decide(&h, h.firing_now("Broken", "web-2")).await, "run", "all");
    assert_eq!(run_all(&h).await, 1);

    // The first run leaves the window an hour after it started.
    h.advance("58m");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
}

#[tokio::test(start_paused = true)]
async fn runbook_rate_limit_counts_runs_across_targets() {
    let h = harness(
        &runbooks(&[
            runbook("fix", "Broken", "low", "runbook_rate_limit: 2/1h"),
            runbook("other", "Other", "low", ""),
        ]),
        "",
    );
    for target in ["a", "b"] {
        check(&decide(&h, h.firing_now("Broken", target)).await, "run", "all");
        assert_eq!(run_all(&h).await, 1);
    }
    let blocked = decide(&h, h.firing_now("Broken", "c")).await;
    check(&blocked, "blocked", "runbook_rate_limit");
    assert_eq!(reason(&blocked), "2 runs of fix in the last 1h (limit 2/1h)");
    // Another runbook is not limited by it.
    check(&decide(&h, h.firing_now("Other", "c")).await, "run", "all");
}

#[tokio::test(start_paused = true)]
async fn global_limit_counts_automated_runs_of_every_runbook() {
    let h = harness(
        &runbooks(&[runbook("one", "One", "low", ""), runbook("two", "Two", "low", "")]),
        "limits: {global: 2/10m}\n",
    );
    check(&decide(&h, h.firing_now("One", "a")).await, "run", "all");
    check(&decide(&h, h.firing_now("Two", "b")).await, "run", "all");
    assert_eq!(run_all(&h).await, 2);
    let blocked = decide(&h, h.firing_now("One", "c")).await;
    check(&blocked, "blocked", "global_limit");
    assert_eq!(reason(&blocked), "2 automated runs in the last 10m (limit 2/10m)");

    // A manual run is neither limited nor counted.
    let d = h.engine.admit(manual(&h, "one", "d"), None).await.unwrap();
    assert_eq!(d.verdict, Verdict::Run, "{d:?}");
    assert!(d.checks.iter().all(|c| c.guardrail != "global_limit"), "{:?}", d.checks);
    assert_eq!(run_all(&h).await, 1);

    h.advance("10m");
    let d = h.engine.admit(manual(&h, "two", "e"), None).await.unwrap();
    assert_eq!(d.verdict, Verdict::Run);
    assert_eq!(run_all(&h).await, 1);
    check(&decide(&h, h.firing_now("One", "f")).await, "run", "all");
    let second = decide(&h, h.firing_now("Two", "g")).await;
    check(&second, "run", "all");
    assert_eq!(
        guardrail(&second, "global_limit").unwrap()["detail"],
        "1 automated runs in the last 10m (limit 2/10m)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_cancelled_before_it_started_counts_toward_no_limit() {
    let h = harness(&runbook("fix", "Broken", "low", "rate_limit: 1/1h, cooldown: 30m"), "");
    let first = h.firing_now("Broken", "web-1");
    check(&decide(&h, first.clone()).await, "run", "all");
    h.advance("10s");
    h.deliver(vec![resolved(first)]).await;
    assert_eq!(run_all(&h).await, 0, "cancelled: the alert resolved before it ran");

    h.advance("10s");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
}

// ---------------------------------------------------------------- re-sends

/// Posts the same notification again; returns the 202 body.
async fn resend(h: &Harness, alert: &Value) -> Value {
    let (status, body) = h.post(&payload(vec![alert.clone()])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body
}

#[tokio::test(start_paused = true)]
async fn a_resent_alert_blocked_by_the_cooldown_is_decided_again_until_it_runs() {
    let h = harness(&runbook("fix", "Broken", "low", "cooldown: 10m"), "");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
    assert_eq!(run_all(&h).await, 1);
    h.advance("1m");
    // A second episode on the same target, blocked by the cooldown.
    let again = h.firing_now("Broken", "web-1");
    let mut again = again;
    again["labels"]["episode"] = json!("2");
    check(&decide(&h, again.clone()).await, "blocked", "cooldown");

    // Re-sent within reconsider_after (5m): a plain duplicate.
    h.advance("2m");
    assert_eq!(resend(&h, &again).await["duplicates"], 1);
    // Re-sent after 5m, still inside the cooldown: decided again, blocked again.
    h.advance("4m");
    let body = resend(&h, &again).await;
    assert_eq!((body["reconsidered"].clone(), body["duplicates"].clone()), (json!(1), json!(0)));
    let decisions = records(&h, "guardrail.decision").await;
    check(decisions.last().unwrap(), "blocked", "cooldown");
    // Re-sent once the cooldown is over: it runs.
    h.advance("5m");
    assert_eq!(resend(&h, &again).await["reconsidered"], 1);
    check(records(&h, "guardrail.decision").await.last().unwrap(), "run", "all");
    assert_eq!(run_all(&h).await, 1);
    // It ran: from now on a duplicate, however often it is sent.
    h.advance("30m");
    assert_eq!(resend(&h, &again).await["duplicates"], 1);
    let reconsidered = records(&h, "alert.reconsidered").await;
    assert_eq!(reconsidered.len(), 2);
    let received = records(&h, "alert.received").await;
    assert_eq!(
        reconsidered[0].data["received_seq"], received[1].seq,
        "names the alert it decides again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resent_alert_blocked_by_the_escalation_breaker_stays_a_duplicate() {
    let h = harness(
        &runbook("fix", "Broken", "low", "escalate_after: 1/1h"),
        "notify: {url: \"http://127.0.0.1:9/\"}",
    );
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
    assert_eq!(run_all(&h).await, 1);
    h.advance("1m");
    let again = h.firing_now("Broken", "web-1");
    check(&decide(&h, again.clone()).await, "blocked", "escalated");
    h.advance("10m");
    assert_eq!(resend(&h, &again).await["duplicates"], 1, "a human must reset the breaker first");
}

// ---------------------------------------------------------------- resolves

#[tokio::test(start_paused = true)]
async fn a_late_resolve_of_an_older_episode_cancels_nothing_of_the_current_one() {
    let h = harness(&runbook("fix", "Broken", "low", "approval: required, concurrency: 2"), "");
    let old = h.firing_now("Broken", "web-1");
    let old_run = id(&decide(&h, old.clone()).await);
    h.advance("1m");
    // The same alert (same fingerprint) fires again as a new episode.
    let current = h.firing_now("Broken", "web-1");
    assert_eq!(old["fingerprint"], current["fingerprint"]);
    let current_run = id(&decide(&h, current.clone()).await);
    assert_eq!(state(&h, &old_run).await, State::PendingApproval);

    // The old episode's resolve arrives late: only its own run is cancelled.
    h.deliver(vec![resolved(old)]).await;
    assert_eq!(state(&h, &old_run).await, State::Cancelled);
    assert_eq!(state(&h, &current_run).await, State::PendingApproval);

    h.deliver(vec![resolved(current)]).await;
    assert_eq!(state(&h, &current_run).await, State::Cancelled);
}

// ---------------------------------------------------------------- concurrency

#[tokio::test(start_paused = true)]
async fn concurrency_blocks_while_a_run_on_the_target_is_queued() {
    let h = harness(&runbook("fix", "Broken", "low", ""), "");
    let first = decide(&h, h.firing_now("Broken", "web-1")).await;
    check(&first, "run", "all");
    assert_eq!(state(&h, &id(&first)).await, State::Queued);

    h.advance("10s");
    let second = decide(&h, h.firing_now("Broken", "web-1")).await;
    check(&second, "blocked", "concurrency");
    assert_eq!(reason(&second), "1 run(s) of fix on web-1 in progress (limit 1)");
    assert_eq!(
        state(&h, &id(&second)).await,
        State::Blocked,
        "blocked, not queued: Alertmanager sends it again"
    );

    assert_eq!(run_all(&h).await, 1);
    h.advance("10s");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
}

#[tokio::test(start_paused = true)]
async fn two_runbooks_for_one_alert_each_take_their_own_lock_on_the_target() {
    // A low-risk diagnostics runbook and a remediation matching the same alert
    // and target: the lock and its limit are the runbook's own.
    let h = harness(
        &runbooks(&[runbook("collect", "Broken", "low", ""), runbook("fix", "Broken", "medium", "")]),
        "",
    );
    let d = h.deliver(vec![h.firing_now("Broken", "web-1")]).await;
    assert_eq!(d.len(), 2);
    for rec in &d {
        check(rec, "run", "all");
    }
    assert_eq!(run_all(&h).await, 2);
}

// ---------------------------------------------------------------- storm brake

#[tokio::test(start_paused = true)]
async fn storm_brake_pauses_medium_risk_and_notifies_once() {
    let h = harness(
        &runbooks(&[runbook("fix", "Broken", "medium", ""), runbook("collect", "Broken", "low", "")]),
        "limits: {storm_brake: 3}\n",
    );
    let calm = h.deliver(["a", "b", "c"].iter().map(|t| h.firing_now("Broken", t)).collect()).await;
    assert_eq!(calm.len(), 6);
    calm.iter().for_each(|d| check(d, "run", "all"));
    assert_eq!(
        guardrail(&calm[4], "storm_brake").unwrap()["detail"],
        "3 targets alerting in the last 5m (brake above 3); runbook risk medium"
    );
    assert_eq!(run_all(&h).await, 6);

    h.advance("1m");
    let storm = h.deliver(vec![h.firing_now("Broken", "d")]).await;
    let by_runbook = |ds: &[Record], rb: &str| ds.iter().find(|d| d.runbook.as_deref() == Some(rb)).unwrap().clone();
    let fix = by_runbook(&storm, "fix");
    check(&fix, "blocked", "storm_brake");
    assert_eq!(reason(&fix), "more than 3 targets alerting in the last 5m; runbook risk medium");
    check(&by_runbook(&storm, "collect"), "run", "all");

    h.advance("1m");
    let more = h.deliver(vec![h.firing_now("Broken", "e"), h.firing_now("Broken", "a")]).await;
    assert_eq!(
        more.iter()
            .filter(|d| verdict(d) == ("blocked".into(), "storm_brake".into()))
            .count(),
        2
    );
    assert_eq!(more.iter().filter(|d| verdict(d).0 == "run").count(), 2, "low risk still runs");

    let notes = records(&h, "notification").await;
    assert_eq!(notes.len(), 1, "one notice per storm: {notes:#?}");
    assert!(
        notes[0].data["text"]
            .as_str()
            .unwrap()
            .starts_with("pitcrew storm brake: more than 3 targets alerting in the last 5m"),
        "{:#}",
        notes[0].data
    );
    assert_eq!(notes[0].data["delivered"], false);

    // Five quiet minutes after the last alert, the storm is over.
    h.advance("5m");
    check(
        &by_runbook(&h.deliver(vec![h.firing_now("Broken", "f")]).await, "fix"),
        "run",
        "all",
    );
    run_all(&h).await;

    // A new storm gets its own notice.
    h.advance("1m");
    let next = h.deliver(["g", "h", "i"].iter().map(|t| h.firing_now("Broken", t)).collect()).await;
    check(&by_runbook(&next[4..], "fix"), "blocked", "storm_brake");
    assert_eq!(records(&h, "notification").await.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_storm_longer_than_the_window_is_still_one_storm() {
    let h = harness(&runbook("fix", "Broken", "medium", ""), "limits: {storm_brake: 3}\n");
    let first = h
        .deliver(["a", "b", "c", "d"].iter().map(|t| h.firing_now("Broken", t)).collect())
        .await;
    check(&first[3], "blocked", "storm_brake");
    // Twelve more minutes of it: a new target every minute keeps more than
    // three targets alerting in every five-minute window.
    for minute in 1..=12 {
        h.advance("1m");
        check(
            &decide(&h, h.firing_now("Broken", &format!("t{minute}"))).await,
            "blocked",
            "storm_brake",
        );
    }
    assert_eq!(records(&h, "notification").await.len(), 1, "one storm, one notice");
    h.advance("5m");
    check(&decide(&h, h.firing_now("Broken", "calm")).await, "run", "all");
}

#[tokio::test(start_paused = true)]
async fn storm_brake_leaves_manual_runs_alone() {
    let h = harness(&runbook("fix", "Broken", "high", ""), "limits: {storm_brake: 1}\n");
    h.deliver(vec![h.firing_now("Broken", "a"), h.firing_now("Broken", "b")]).await;
    let d = h.engine.admit(manual(&h, "fix", "c"), None).await.unwrap();
    assert_eq!(d.verdict, Verdict::Run, "{d:?}");
}

// ---------------------------------------------------------------- escalation

#[tokio::test(start_paused = true)]
async fn escalation_trips_the_breaker_until_reset() {
    let h = harness(&runbook("fix", "Broken", "low", "escalate_after: 2/1h"), "");
    for _ in 0..2 {
        check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
        assert_eq!(run_all(&h).await, 1);
        h.advance("10m");
    }
    let tripped = decide(&h, h.firing_now("Broken", "web-1")).await;
    check(&tripped, "blocked", "escalated");
    assert_eq!(
        reason(&tripped),
        "2 runs on web-1 within 1h reached escalate_after 2/1h: escalating instead of running again"
    );
    let exec = h.store().execution(&id(&tripped)).await.unwrap();
    assert!(exec.reason.as_deref().unwrap().starts_with("escalated: "), "{:?}", exec.reason);
    let breakers = h.store().breakers().await.unwrap();
    assert_eq!(breakers.len(), 1);
    assert_eq!((breakers[0].runbook.as_str(), breakers[0].target.as_str()), ("fix", "web-1"));
    let notes = records(&h, "notification").await;
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0].data["text"].as_str().unwrap().contains("pitcrew reset fix web-1"),
        "{:#}",
        notes[0].data
    );

    // Other targets are not affected.
    check(&decide(&h, h.firing_now("Broken", "web-2")).await, "run", "all");
    run_all(&h).await;

    // Tripped stays tripped, long after the window, without more notices.
    h.advance("3h");
    let still = decide(&h, h.firing_now("Broken", "web-1")).await;
    check(&still, "blocked", "escalated");
    assert!(
        reason(&still).contains("`pitcrew reset fix web-1` re-arms it"),
        "{}",
        reason(&still)
    );
    assert_eq!(records(&h, "notification").await.len(), 1);

    assert!(h.store().reset_breaker("fix", "web-1", "user:alice").await.unwrap());
    assert!(
        !h.store().reset_breaker("fix", "web-1", "user:alice").await.unwrap(),
        "nothing left to reset"
    );
    let resets = records(&h, "escalation.reset").await;
    assert_eq!(resets.len(), 1);
    assert_eq!(
        (resets[0].actor.as_str(), resets[0].runbook.as_deref(), resets[0].target.as_deref()),
        ("user:alice", Some("fix"), Some("web-1"))
    );
    assert!(h.store().breakers().await.unwrap().is_empty());
    h.advance("1m");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
}

#[tokio::test(start_paused = true)]
async fn runs_before_a_reset_do_not_count_toward_escalation() {
    let h = harness(&runbook("fix", "Broken", "low", "escalate_after: 1/1h"), "");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
    run_all(&h).await;
    h.advance("1m");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "blocked", "escalated");
    h.store().reset_breaker("fix", "web-1", "user:alice").await.unwrap();
    h.advance("1m");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
    run_all(&h).await;
    h.advance("1m");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "blocked", "escalated");
    assert_eq!(records(&h, "notification").await.len(), 2, "one notice per trip");
}

// ---------------------------------------------------------------- approvals

#[tokio::test(start_paused = true)]
async fn approvals_grant_deny_and_time_out() {
    let h = harness(&runbook("fix", "Broken", "low", "approval: required, approval_timeout: 10m"), "");
    let pending = decide(&h, h.firing_now("Broken", "a")).await;
    check(&pending, "pending_approval", "approval");
    assert_eq!(reason(&pending), "runbook fix requires approval");
    let a = id(&pending);
    assert_eq!(state(&h, &a).await, State::PendingApproval);
    assert_eq!(run_all(&h).await, 0, "nothing runs before the approval");

    let approved = h.store().approve(&a, "user:alice", h.engine.approvers()).await.unwrap();
    assert_eq!(approved.state, State::Queued);
    assert_eq!(run_all(&h).await, 1);
    assert_eq!(state(&h, &a).await, State::Succeeded);
    let granted = records(&h, "approval.granted").await;
    assert_eq!(granted.len(), 1);
    assert_eq!(
        (granted[0].actor.as_str(), granted[0].execution_id.as_deref()),
        ("user:alice", Some(a.as_str()))
    );

    let b = id(&decide(&h, h.firing_now("Broken", "b")).await);
    let denied = h
        .store()
        .deny(&b, "user:bob", Some("not during the sale".into()), h.engine.approvers())
        .await
        .unwrap();
    assert_eq!(denied.state, State::Cancelled);
    let d = records(&h, "approval.denied").await;
    assert_eq!(
        (d.len(), d[0].actor.as_str(), d[0].data["reason"].as_str()),
        (1, "user:bob", Some("not during the sale"))
    );
    assert_eq!(run_all(&h).await, 0);

    for (exec, was) in [(&a, "succeeded"), (&b, "cancelled")] {
        match h.store().approve(exec, "user:alice", h.engine.approvers()).await {
            Err(StoreError::WrongState { state, .. }) => assert_eq!(state, was),
            other => panic!("approving a {was} execution: {other:?}"),
        }
    }
    assert!(matches!(
        h.store().deny(&a, "user:alice", None, h.engine.approvers()).await,
        Err(StoreError::WrongState { .. })
    ));

    let c = id(&decide(&h, h.firing_now("Broken", "c")).await);
    h.advance("9m");
    assert!(h.store().expire_approvals().await.unwrap().is_empty(), "not yet");
    h.advance("2m");
    assert_eq!(h.store().expire_approvals().await.unwrap(), vec![c.clone()]);
    assert_eq!(state(&h, &c).await, State::Cancelled);
    let timeout = records(&h, "approval.denied")
        .await
        .into_iter()
        .find(|r| r.execution_id.as_deref() == Some(c.as_str()))
        .unwrap();
    assert_eq!(timeout.actor, "system:timeout");
    assert!(matches!(
        h.store().approve(&c, "user:alice", h.engine.approvers()).await,
        Err(StoreError::WrongState { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn an_approval_after_the_timeout_is_refused_even_before_the_sweep() {
    // `serve` sweeps expired approvals every second; without it running, a
    // late `pitcrew approve` must not slip through either.
    let h = harness(&runbook("fix", "Broken", "low", "approval: required, approval_timeout: 10m"), "");
    let a = id(&decide(&h, h.firing_now("Broken", "a")).await);
    h.advance("10m");
    match h.store().approve(&a, "user:alice", h.engine.approvers()).await {
        Err(StoreError::WrongState { state, .. }) => assert_eq!(state, "cancelled"),
        other => panic!("late approval: {other:?}"),
    }
    let exec = h.store().execution(&a).await.unwrap();
    assert_eq!((exec.state, exec.reason.as_deref()), (State::Cancelled, Some("approval timed out")));
    let denied = records(&h, "approval.denied").await;
    assert_eq!((denied.len(), denied[0].actor.as_str()), (1, "system:timeout"));
    assert!(records(&h, "approval.granted").await.is_empty());
    assert_eq!(run_all(&h).await, 0);
    assert!(h.store().expire_approvals().await.unwrap().is_empty(), "expired once");
}

#[tokio::test(start_paused = true)]
async fn an_approved_run_starts_the_cooldown_when_approved() {
    let h = harness(&runbook("fix", "Broken", "low", "approval: required, cooldown: 5m"), "");
    let a = id(&decide(&h, h.firing_now("Broken", "web-1")).await);
    h.advance("20m");
    h.store().approve(&a, "user:alice", h.engine.approvers()).await.unwrap();
    run_all(&h).await;
    h.advance("1m");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "blocked", "cooldown");
}

// ---------------------------------------------------------------- error budget

const BUDGET_SLOS: &str = concat!(
    "slos:\n",
    "  - {name: healthy-slo, objective: 99.9%, window: 30d, static_remaining: 80%}\n",
    "  - {name: caution-slo, objective: 99.9%, window: 30d, static_remaining: 40%}\n",
    "  - {name: freeze-slo, objective: 99.9%, window: 30d, static_remaining: 10%}\n",
    "  - {name: spent-slo, objective: 99.9%, window: 30d, static_remaining: -5%}\n",
);

/// One runbook per (slo, risk), all triggered by `Budget`.
fn budget_runbooks(slos: &[&str]) -> String {
    let mut docs = Vec::new();
    for slo in slos {
        for risk in ["low", "medium", "high"] {
            docs.push(runbook(&format!("{slo}-{risk}"), "Budget", risk, &format!("slo: {slo}")));
        }
    }
    runbooks(&docs)
}

/// Fires one `Budget` alert; decisions by runbook name.
async fn budget_decisions(h: &Harness) -> BTreeMap<String, Record> {
    let ds = h.deliver(vec![h.firing_now("Budget", "web-1")]).await;
    ds.into_iter().map(|d| (d.runbook.clone().unwrap(), d)).collect()
}

#[tokio::test(start_paused = true)]
async fn the_webhook_never_waits_on_prometheus_for_a_budget_not_yet_known() {
    // A Prometheus that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "prometheus: {{url: \"http://{}\"}}\nslos:\n  - name: api\n    objective: 99.9%\n    window: 30d\n    \
         good: 'sum(rate(ok[{{{{window}}}}]))'\n    total: 'sum(rate(all[{{{{window}}}}]))'\n",
        silent.local_addr().unwrap()
    );
    let h = harness(&runbook("fix", "Broken", "medium", "slo: api"), &config);
    let d = decide(&h, h.firing_now("Broken", "web-1")).await;
    // Not evaluated on the webhook's path: unknown, so medium risk waits for a human.
    check(&d, "pending_approval", "budget");
    assert_eq!(d.data["budget"]["tier"], "unknown");
    assert!(
        d.data["budget"]["error"].as_str().unwrap().contains("not evaluated yet"),
        "{:#}",
        d.data["budget"]
    );
}

#[tokio::test(start_paused = true)]
async fn budget_tiers_decide_which_risks_run_unattended() {
    let h = harness(
        &budget_runbooks(&["healthy-slo", "caution-slo", "freeze-slo", "spent-slo"]),
        BUDGET_SLOS,
    );
    let ds = budget_decisions(&h).await;
    assert_eq!(ds.len(), 12);
    let expect = [
        ("healthy-slo-low", "run"),
        ("healthy-slo-medium", "run"),
        ("healthy-slo-high", "run"),
        ("caution-slo-low", "run"),
        ("caution-slo-medium", "run"),
        ("caution-slo-high", "pending_approval"),
        ("freeze-slo-low", "run"),
        ("freeze-slo-medium", "pending_approval"),
        ("freeze-slo-high", "pending_approval"),
        ("spent-slo-low", "run"),
        ("spent-slo-medium", "pending_approval"),
        ("spent-slo-high", "pending_approval"),
    ];
    for (rb, v) in expect {
        let d = &ds[rb];
        assert_eq!(verdict(d).0, v, "{rb}: {:#}", d.data);
        if v == "pending_approval" {
            assert_eq!(verdict(d).1, "budget");
            assert_eq!(state(&h, &id(d)).await, State::PendingApproval, "{rb} waits, it is not blocked");
        }
    }
    assert_eq!(
        reason(&ds["freeze-slo-medium"]),
        "budget 10.0% of freeze-slo: tier freeze: medium risk needs approval"
    );
    assert_eq!(
        reason(&ds["caution-slo-high"]),
        "budget 40.0% of caution-slo: tier caution: high risk needs approval"
    );
    assert_eq!(
        reason(&ds["spent-slo-medium"]),
        "budget -5.0% of spent-slo: tier exhausted: medium risk needs approval"
    );
    let healthy = guardrail(&ds["healthy-slo-high"], "budget").unwrap();
    assert_eq!(
        healthy["detail"],
        "budget 80.0% of healthy-slo (healthy): high risk runs unattended"
    );
    // The decision keeps the whole budget status, minutes included.
    let budget = &ds["freeze-slo-low"].data["budget"];
    assert_eq!((budget["tier"].as_str(), budget["remaining"].as_f64()), (Some("freeze"), Some(0.1)));
    assert!((budget["budget_minutes"].as_f64().unwrap() - 43.2).abs() < 1e-9, "{budget:#}");
}

#[tokio::test(start_paused = true)]
async fn budget_policy_from_config_with_custom_rows() {
    let config = format!(
        "{BUDGET_SLOS}budget_policy:\n  - {{name: green, above: 75%, auto: [low, medium, high]}}\n  \
         - {{name: amber, above: 30%, auto: [low], approve: [medium, high]}}\n  \
         - {{name: red, above: 20%, approve: [low, medium, high]}}\n"
    );
    let h = harness(&budget_runbooks(&["healthy-slo", "caution-slo", "freeze-slo"]), &config);
    let ds = budget_decisions(&h).await;
    let v = |rb: &str| verdict(&ds[rb]).0;
    assert_eq!(
        (v("healthy-slo-low"), v("healthy-slo-medium"), v("healthy-slo-high")),
        ("run".into(), "run".into(), "run".into())
    );
    assert_eq!(
        (v("caution-slo-low"), v("caution-slo-medium")),
        ("run".into(), "pending_approval".into())
    );
    assert_eq!(
        reason(&ds["caution-slo-medium"]),
        "budget 40.0% of caution-slo: tier amber: medium risk needs approval"
    );
    // 10% is above no row: exhausted, which behaves like freeze (low runs).
    assert_eq!(
        (v("freeze-slo-low"), v("freeze-slo-medium")),
        ("run".into(), "pending_approval".into())
    );
    assert_eq!(
        reason(&ds["freeze-slo-high"]),
        "budget 10.0% of freeze-slo: tier exhausted: high risk needs approval"
    );
}

// ---------------------------------------------------------------- force

#[tokio::test(start_paused = true)]
async fn force_skips_limits_budget_and_escalation_with_an_audited_override() {
    let guardrails = "cooldown: 10m, rate_limit: 1/1h, escalate_after: 1/1h, slo: freeze-slo";
    let h = harness(
        &runbooks(&[
            runbook("fix", "Broken", "medium", guardrails),
            runbook("careful", "Careful", "low", "approval: required"),
        ]),
        BUDGET_SLOS,
    );
    let budget = h.engine.budgets.status("freeze-slo", h.clock.now()).await;
    let with_budget = |adm: Admission| Admission {
        budget: budget.clone(),
        ..adm
    };

    // Unforced: the freeze tier asks for approval; approved, it runs.
    let first = with_budget(manual(&h, "fix", "web-1"));
    let first_id = first.id.clone();
    assert_eq!(h.engine.admit(first, None).await.unwrap().verdict, Verdict::PendingApproval);
    h.store().approve(&first_id, "user:bob", h.engine.approvers()).await.unwrap();
    assert_eq!(run_all(&h).await, 1);

    h.advance("1m");
    let unforced = h.engine.admit(with_budget(manual(&h, "fix", "web-1")), None).await.unwrap();
    assert_eq!((unforced.verdict, unforced.decided_by), (Verdict::Blocked, "cooldown"));
    assert!(records(&h, "override").await.is_empty());

    let forced = Admission {
        force: Some("INC-42: checkout down".into()),
        ..with_budget(manual(&h, "fix", "web-1"))
    };
    let forced_id = forced.id.clone();
    let d = h.engine.admit(forced, None).await.unwrap();
    assert_eq!(d.verdict, Verdict::Run, "{d:#?}");
    let forced_checks: Vec<&str> = d
        .checks
        .iter()
        .filter(|c| c.verdict == CheckVerdict::Forced)
        .map(|c| c.guardrail)
        .collect();
    assert_eq!(forced_checks, ["cooldown", "rate_limit", "budget", "escalation"]);
    let overrides = records(&h, "override").await;
    assert_eq!(overrides.len(), 1);
    assert_eq!(overrides[0].execution_id.as_deref(), Some(forced_id.as_str()));
    assert_eq!(overrides[0].actor, "user:alice");
    assert_eq!(
        overrides[0].data,
        json!({"reason": "INC-42: checkout down", "skipped": ["cooldown", "rate_limit", "budget", "escalation"]})
    );
    assert!(
        h.store().breakers().await.unwrap().is_empty(),
        "a forced run does not trip the breaker"
    );

    // Never the concurrency lock: the forced run is still queued.
    let again = h
        .engine
        .admit(
            Admission {
                force: Some("again".into()),
                ..with_budget(manual(&h, "fix", "web-1"))
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!((again.verdict, again.decided_by), (Verdict::Blocked, "concurrency"));
    assert_eq!(run_all(&h).await, 1);

    // Never `approval: required`.
    let careful = h
        .engine
        .admit(
            Admission {
                force: Some("hurry".into()),
                ..manual(&h, "careful", "web-1")
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!((careful.verdict, careful.decided_by), (Verdict::PendingApproval, "approval"));
}

// ---------------------------------------------------------------- shadow mode

/// A runbook whose only step would create `file`.
fn touching(file: &std::path::Path, guardrails: &str) -> String {
    format!(
        "apiVersion: pitcrew/v1\nname: touch\ntrigger: {{alertname: Broken}}\nparams:\n  instance: {{default: \"{{{{alert.labels.instance}}}}\"}}\n\
         target: \"{{{{params.instance}}}}\"\nrisk: medium\nguardrails: {{{guardrails}}}\n\
         steps:\n  - name: touch\n    action: exec\n    with: {{command: [/usr/bin/touch, \"{}\"]}}\n",
        file.display()
    )
}

async fn assert_shadow_run(h: &Harness, file: &std::path::Path, why: &str) {
    let d = decide(h, h.firing_now("Broken", "web-1")).await;
    check(&d, "run", "all");
    assert_eq!(d.data["dry_run"], true);
    assert_eq!(
        guardrail(&d, "dry_run").unwrap()["detail"],
        format!("dry run ({why}): nothing will be touched")
    );
    assert!(guardrail(&d, "cooldown").is_some(), "the guardrails are still decided");
    assert_eq!(run_all(h).await, 1);
    let exec = h.store().execution(&id(&d)).await.unwrap();
    assert!(exec.dry_run);
    assert_eq!(exec.steps.len(), 1);
    assert_eq!(exec.steps[0].state, StepState::Skipped);
    assert_eq!(exec.steps[0].error.as_deref(), Some("skipped: dry run"));
    assert_eq!(
        exec.steps[0].input["command"][1],
        json!(file.display().to_string()),
        "the rendered input is kept"
    );
    assert!(!file.exists(), "a dry run touched {}", file.display());
    let finished: Vec<Record> = records(h, "step.finished")
        .await
        .into_iter()
        .filter(|r| r.execution_id == exec.id.clone().into())
        .collect();
    assert_eq!(finished[0].data["outcome"], "skipped");
}

#[tokio::test(start_paused = true)]
async fn runbook_shadow_mode_decides_and_touches_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("touched");
    let h = harness(&touching(&file, "dry_run: true, cooldown: 5m"), "");
    assert_shadow_run(&h, &file, "runbook is in shadow mode").await;
    // Shadow runs start no cooldown.
    h.advance("1m");
    assert_shadow_run(&h, &file, "runbook is in shadow mode").await;
}

#[tokio::test(start_paused = true)]
async fn config_shadow_mode_decides_and_touches_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("touched");
    let h = harness(&touching(&file, "cooldown: 5m"), "dry_run: true\n");
    assert_shadow_run(&h, &file, "pitcrew is in shadow mode (config dry_run)").await;
}

// Real time here: a real child process runs under the step's tokio timeout,
// which paused time would fire at once.
#[tokio::test]
async fn without_shadow_mode_the_same_step_runs() {
    // The control for the two tests above: the file really is created.
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("touched");
    let h = harness(&touching(&file, ""), "");
    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
    assert_eq!(run_all(&h).await, 1);
    assert!(file.exists());
}

// ---------------------------------------------------------------- restart

#[tokio::test(start_paused = true)]
async fn limits_and_breakers_survive_a_restart() {
    let h = harness(
        &runbooks(&[
            runbook("cool", "Cool", "low", "cooldown: 10m"),
            runbook("rate", "Rate", "low", "rate_limit: 1/1h"),
            runbook("esc", "Esc", "low", "escalate_after: 1/1h"),
        ]),
        "",
    );
    for name in ["Cool", "Rate", "Esc"] {
        check(&decide(&h, h.firing_now(name, "web-1")).await, "run", "all");
    }
    assert_eq!(run_all(&h).await, 3);
    h.advance("1m");
    check(&decide(&h, h.firing_now("Esc", "web-1")).await, "blocked", "escalated");

    let h = h.restart();
    h.advance("1m");
    check(&decide(&h, h.firing_now("Cool", "web-1")).await, "blocked", "cooldown");
    check(&decide(&h, h.firing_now("Rate", "web-1")).await, "blocked", "rate_limit");
    assert_eq!(h.store().breakers().await.unwrap().len(), 1);
    h.advance("2h");
    let h = h.restart();
    check(&decide(&h, h.firing_now("Esc", "web-1")).await, "blocked", "escalated");
    check(&decide(&h, h.firing_now("Cool", "web-1")).await, "run", "all");
    assert_eq!(h.store().verify_audit().await.unwrap().unwrap(), h.audit().await.len() as u64);
}

// ---------------------------------------------------------------- flapping, storms

#[tokio::test(start_paused = true)]
async fn a_flapping_alert_is_remediated_at_most_once_per_cooldown() {
    let h = harness(&runbook("fix", "Flappy", "low", "cooldown: 5m"), "");
    let mut last_firing = None;
    for i in 0..30 {
        let notification = match (i % 2, &last_firing) {
            (0, _) => {
                let a = h.firing_now("Flappy", "web-1");
                last_firing = Some(a.clone());
                a
            }
            (_, Some(a)) => resolved(a.clone()),
            (_, None) => unreachable!(),
        };
        let (status, body) = h.post(&payload(vec![notification])).await;
        assert_eq!(
            (status, body),
            (StatusCode::ACCEPTED, json!({"accepted": 1, "duplicates": 0, "reconsidered": 0})),
            "notification {i}"
        );
        // A worker that looks every minute: a run queued just before a
        // resolved notification is cancelled by it.
        if i % 3 == 0 {
            h.run_queued().await;
        }
        h.advance("20s");
    }
    h.run_queued().await;

    assert_eq!(records(&h, "alert.received").await.len(), 30, "every notification is recorded");
    let execs = h.store().executions(ExecutionFilter::default()).await.unwrap();
    assert_eq!(execs.len(), 15, "one decision per firing");
    let mut ran: Vec<_> = execs.iter().filter_map(|e| e.started_at).collect();
    ran.sort();
    assert!(!ran.is_empty());
    for pair in ran.windows(2) {
        assert!(
            pair[1] - pair[0] >= chrono::Duration::minutes(5),
            "two remediations within the cooldown: {ran:?}"
        );
    }
    for e in execs.iter().filter(|e| e.started_at.is_none()) {
        let why = e.reason.as_deref().unwrap_or_default();
        assert!(
            (e.state == State::Blocked && why.starts_with("cooldown: "))
                || (e.state == State::Cancelled && why == "alert resolved before it ran"),
            "{} {why}",
            e.state
        );
    }
    assert!(
        execs.iter().any(|e| e.state == State::Cancelled),
        "the slow worker lost one to a resolved notification"
    );
}

#[tokio::test(start_paused = true)]
async fn a_storm_of_ten_thousand_alerts_is_recorded_and_braked() {
    let h = harness(&runbook("fix", "Storm", "medium", ""), "limits: {storm_brake: 20}\n");
    let started = Instant::now();
    for batch in 0..100 {
        let alerts: Vec<Value> = (0..100)
            .map(|j| {
                let n = batch * 100 + j;
                let target = format!("t-{}", n % 500);
                let mut a = alert(&[("alertname", "Storm"), ("instance", &target), ("seq", &n.to_string())]);
                a["startsAt"] = json!(h.clock.now().to_rfc3339_opts(SecondsFormat::Millis, true));
                a
            })
            .collect();
        let (status, body) = h.post(&payload(alerts)).await;
        assert_eq!(
            (status, body),
            (StatusCode::ACCEPTED, json!({"accepted": 100, "duplicates": 0, "reconsidered": 0})),
            "batch {batch}"
        );
        h.advance("1s");
    }
    let intake = started.elapsed();

    let audit = h.audit().await;
    assert_eq!(audit.iter().filter(|r| r.kind == "alert.received").count(), 10_000);
    let decisions: Vec<&Record> = audit.iter().filter(|r| r.kind == "guardrail.decision").collect();
    assert_eq!(decisions.len(), 10_000, "one decision per alert");
    let count = |v: &str, by: &str| decisions.iter().filter(|d| verdict(d) == (v.to_string(), by.to_string())).count();
    // The first 20 targets run; their later alerts meet the lock; the rest
    // meet the brake.
    assert_eq!(count("run", "all"), 20);
    assert_eq!(count("blocked", "concurrency"), 19 * 20);
    assert_eq!(count("blocked", "storm_brake"), 10_000 - 20 - 19 * 20);
    let braked = decisions.iter().find(|d| verdict(d).1 == "storm_brake").unwrap();
    assert!(
        reason(braked) == "more than 20 targets alerting in the last 5m; runbook risk medium",
        "{}",
        reason(braked)
    );
    assert_eq!(
        audit.iter().filter(|r| r.kind == "notification").count(),
        1,
        "exactly one storm notice"
    );
    assert_eq!(
        h.store()
            .executions(ExecutionFilter {
                limit: 20_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        10_000,
        "nothing lost"
    );
    assert_eq!(h.store().verify_audit().await.unwrap().unwrap(), audit.len() as u64);
    eprintln!(
        "storm: 10,000 alerts in 100 deliveries took {intake:?} ({:?} with the checks)",
        started.elapsed()
    );
}

// ---------------------------------------------------------------- match / preview

#[tokio::test(start_paused = true)]
async fn preview_shows_the_current_verdict_and_writes_nothing() {
    let h = harness(&runbook("fix", "Broken", "low", "cooldown: 5m"), "");
    let config = h.engine.config().clone();
    let before = h.audit().await.len();
    let d = h.store().preview(automated(&h, "fix", "web-1"), config.clone()).await.unwrap();
    assert_eq!((d.verdict, d.decided_by), (Verdict::Run, "all"));
    assert_eq!(h.audit().await.len(), before);

    check(&decide(&h, h.firing_now("Broken", "web-1")).await, "run", "all");
    assert_eq!(run_all(&h).await, 1);
    h.advance("1m");
    let before = h.audit().await.len();
    let executions = h.store().executions(ExecutionFilter::default()).await.unwrap().len();
    let d = h.store().preview(automated(&h, "fix", "web-1"), config.clone()).await.unwrap();
    assert_eq!((d.verdict, d.decided_by), (Verdict::Blocked, "cooldown"));
    assert_eq!(d.reason, "last run on web-1 started 1m ago; cooldown 5m (4m left)");
    let other = h.store().preview(automated(&h, "fix", "web-2"), config.clone()).await.unwrap();
    assert_eq!(other.verdict, Verdict::Run);
    assert_eq!(h.audit().await.len(), before, "a preview writes no audit");
    assert_eq!(
        h.store().executions(ExecutionFilter::default()).await.unwrap().len(),
        executions,
        "nor executions"
    );

    h.advance("4m");
    assert_eq!(
        h.store().preview(automated(&h, "fix", "web-1"), config).await.unwrap().verdict,
        Verdict::Run
    );
}

// ---------------------------------------------------------------- retention

#[tokio::test(start_paused = true)]
async fn retention_prunes_ended_executions_in_small_writes_and_keeps_the_audit() {
    let docs = runbooks(&[
        runbook("fix", "Broken", "low", "cooldown: 1h"),
        runbook("ask", "Asking", "low", "approval: required, approval_timeout: 60d"),
    ]);
    let h = harness(&docs, "retention: {executions: 30d}");
    let mut old = Vec::new();
    for instance in ["web-1", "web-2", "web-3"] {
        old.push(id(&decide(&h, h.firing_now("Broken", instance)).await));
    }
    assert_eq!(run_all(&h).await, 3);
    h.advance("1m");
    let blocked = decide(&h, h.firing_now("Broken", "web-1")).await;
    check(&blocked, "blocked", "cooldown");
    old.push(id(&blocked));
    let waiting = id(&decide(&h, h.firing_now("Asking", "db-1")).await);
    let records_before = h.audit().await.len();

    h.advance("31d");
    let recent = id(&decide(&h, h.firing_now("Broken", "web-9")).await);
    assert_eq!(run_all(&h).await, 1);

    // One write prunes at most its batch, oldest first.
    let before = h.store().now() - chrono::Duration::days(30);
    let first = h.store().prune(before, 2).await.unwrap();
    assert_eq!((first.ids.as_slice(), first.more), (&old[..2], true));
    assert_eq!(h.engine.prune_history().await.unwrap(), 2);
    for gone in &old {
        assert!(
            matches!(h.store().execution(gone).await, Err(StoreError::NotFound(_))),
            "{gone} kept"
        );
    }
    // Still waiting for approval, and recent: kept.
    assert_eq!(state(&h, &waiting).await, State::PendingApproval);
    assert_eq!(state(&h, &recent).await, State::Succeeded);
    let steps: i64 = match &h.engine.config().store {
        Some(pg) => crate::pg::cluster()
            .psql(&pg.url, pg.password.as_deref(), "SELECT COUNT(*) FROM steps")
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
        None => {
            let db = rusqlite::Connection::open(h.dir.path().join("state/state.db")).unwrap();
            db.query_row("SELECT COUNT(*) FROM steps", [], |r| r.get(0)).unwrap()
        }
    };
    assert_eq!(steps, 1, "only the recent run's step is left");
    // The audit keeps every record of the pruned runs, and verifies.
    let audit = h.audit().await;
    assert!(audit.len() > records_before);
    assert!(audit.iter().filter(|r| r.execution_id.as_deref() == Some(&old[0])).count() >= 5);
    assert!(h.store().verify_audit().await.unwrap().is_ok());
    assert_eq!(h.engine.prune_history().await.unwrap(), 0, "nothing more to prune");
}

#[tokio::test(start_paused = true)]
async fn retention_zero_keeps_history_forever() {
    let h = harness(&runbook("fix", "Broken", "low", ""), "retention: {executions: 0}");
    let run = id(&decide(&h, h.firing_now("Broken", "web-1")).await);
    assert_eq!(run_all(&h).await, 1);
    h.advance("3650d");
    assert_eq!(h.engine.prune_history().await.unwrap(), 0);
    assert_eq!(state(&h, &run).await, State::Succeeded);
}
