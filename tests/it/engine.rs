//! Step semantics, fail-closed writes, and recovery after a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::http::StatusCode;
use pitcrew::audit::{Event, Record};
use pitcrew::config::Config;
use pitcrew::engine::claimer_alive;
use pitcrew::guard::Decision;
use pitcrew::store::*;
use serde_json::{Value, json};

use crate::support::{Backend, Harness, alert, payload, resolved};

async fn one_run(h: &Harness, labels: &[(&str, &str)]) -> Execution {
    let (status, _) = h.post(&payload(vec![alert(labels)])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.run_queued().await;
    let list = h.store().executions(ExecutionFilter::default()).await.unwrap();
    h.store().execution(&list[0].id).await.unwrap()
}

#[tokio::test]
async fn when_outputs_continue_on_error_and_on_failure() {
    let rb = r#"apiVersion: pitcrew/v1
name: flow
trigger: {alertname: Flow}
steps:
  - name: first
    action: exec
    with: {command: [/bin/echo, "42"]}
  - name: skipped
    action: log
    when: "{{#if (eq alert.labels.mode \"loud\")}}yes{{/if}}"
    with: {message: never}
  - name: tolerated
    action: exec
    continue_on_error: true
    with: {command: [/bin/false]}
  - name: uses-output
    action: log
    with: {message: "first said {{steps.first.output.stdout}}"}
  - name: breaks
    action: exec
    with: {command: [/bin/sh-does-not-exist]}
  - name: never-reached
    action: log
    with: {message: x}
on_failure:
  - name: report
    action: log
    with: {message: "failed: {{error}}"}
"#;
    let h = Harness::new(rb, "");
    let exec = one_run(&h, &[("alertname", "Flow"), ("mode", "quiet")]).await;
    assert_eq!(exec.state, State::Failed);
    let by_name = |n: &str| exec.steps.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("no step {n}"));
    assert_eq!(by_name("first").state, StepState::Succeeded);
    assert_eq!(by_name("skipped").state, StepState::Skipped);
    assert_eq!(by_name("tolerated").state, StepState::Failed);
    assert_eq!(by_name("uses-output").output.as_ref().unwrap()["message"], "first said 42\n");
    assert_eq!(by_name("breaks").state, StepState::Failed);
    assert!(exec.steps.iter().all(|s| s.name != "never-reached"));
    let report = by_name("report");
    assert_eq!(report.phase, Phase::OnFailure);
    let msg = report.output.as_ref().unwrap()["message"].as_str().unwrap();
    assert!(msg.starts_with("failed: step `breaks` failed: cannot start"), "{msg}");
}

#[tokio::test]
async fn timeouts_and_retries_of_idempotent_steps() {
    let rb = r#"apiVersion: pitcrew/v1
name: slow
trigger: {alertname: Slow}
steps:
  - name: nap
    action: sleep
    timeout: 50ms
    retries: 1
    with: {duration: 10s}
"#;
    let h = Harness::new(rb, "");
    let started = std::time::Instant::now();
    let exec = one_run(&h, &[("alertname", "Slow")]).await;
    assert_eq!(exec.state, State::Failed);
    let attempts: Vec<&StepRecord> = exec.steps.iter().filter(|s| s.name == "nap").collect();
    assert_eq!(attempts.len(), 2, "one retry");
    assert!(
        attempts.iter().all(|s| s.error.as_deref() == Some("timed out after 50ms")),
        "{attempts:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "timeout cut the 10s sleep");
}

#[tokio::test]
async fn secrets_are_redacted_from_step_input_output_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret-token-value").unwrap();
    let rb = r#"apiVersion: pitcrew/v1
name: leaky
trigger: {alertname: Leak}
params:
  x: {default: "{{alert.labels.x}}"}
steps:
  - name: print
    action: exec
    with: {command: [/bin/echo, "{{alert.labels.x}}"]}
"#;
    let config = format!("auth:\n  webhook_token_file: {}/token\n", dir.path().display());
    let h = Harness::new(rb, &config);
    let body = payload(vec![alert(&[("alertname", "Leak"), ("x", "token=s3cret-token-value")])]).to_string();
    let (status, _) = h
        .call(
            "POST",
            "/v1/alerts/alertmanager",
            &[("content-type", "application/json"), ("authorization", "Bearer s3cret-token-value")],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.run_queued().await;
    let all: String = h.audit().await.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    assert!(!all.contains("s3cret-token-value"), "secret leaked into the audit");
    assert!(all.contains("token=[REDACTED]"));
    // Nor does the API show it, in the alert or the params of the run.
    let (status, listed) = h
        .call("GET", "/v1/executions", &[("authorization", "Bearer s3cret-token-value")], "")
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert!(!listed.contains("s3cret-token-value"), "{listed}");
    assert!(listed.contains("token=[REDACTED]"), "{listed}");
}

/// A store that can be told to fail, to prove the engine fails closed.
struct Flaky {
    inner: Arc<dyn Store>,
    fail_steps: AtomicBool,
    fail_intake: AtomicBool,
    /// Intake never answers (a store stuck on a full disk or a lock).
    stall_intake: AtomicBool,
    /// Fails the next `finish` only.
    fail_finish: AtomicBool,
    /// Lets this many run writes (step starts, pending ends, finishes,
    /// releases) through, then fails the next `fail_writes`.
    pass_writes: AtomicUsize,
    fail_writes: AtomicUsize,
}

impl Flaky {
    /// Whether this run write fails (see `pass_writes`).
    fn write_fails(&self) -> bool {
        let take = |n: &AtomicUsize| n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if self.fail_writes.load(Ordering::SeqCst) == 0 || take(&self.pass_writes) {
            return false;
        }
        take(&self.fail_writes)
    }
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn intake(&self, alerts: Vec<IntakeAlert>, config: Arc<Config>) -> Result<IntakeResult, StoreError> {
        if self.fail_intake.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        if self.stall_intake.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.intake(alerts, config).await
    }
    async fn admit(&self, a: Admission, alert: Option<pitcrew::alert::Alert>, c: Arc<Config>) -> Result<Decision, StoreError> {
        self.inner.admit(a, alert, c).await
    }
    async fn preview(&self, a: Admission, c: Arc<Config>) -> Result<Decision, StoreError> {
        self.inner.preview(a, c).await
    }
    async fn claim(&self, w: &str, id: Option<String>) -> Result<Option<Execution>, StoreError> {
        self.inner.claim(w, id).await
    }
    async fn queued(&self, l: usize, x: std::collections::HashSet<String>) -> Result<(Vec<Execution>, bool), StoreError> {
        self.inner.queued(l, x).await
    }
    async fn step_started(&self, e: &Execution, p: Pending, s: StepStart) -> Result<(), StoreError> {
        if self.fail_steps.load(Ordering::SeqCst) || self.write_fails() {
            return Err(StoreError::Closed);
        }
        self.inner.step_started(e, p, s).await
    }
    async fn record_pending(&self, e: &Execution, p: Pending) -> Result<(), StoreError> {
        if self.write_fails() {
            return Err(StoreError::Closed);
        }
        self.inner.record_pending(e, p).await
    }
    async fn finish(&self, e: &Execution, p: Pending, s: State, r: Option<String>) -> Result<(), StoreError> {
        if self.fail_finish.swap(false, Ordering::SeqCst) || self.write_fails() {
            return Err(StoreError::Closed);
        }
        self.inner.finish(e, p, s, r).await
    }
    async fn release(&self, e: &Execution) -> Result<(), StoreError> {
        if self.write_fails() {
            return Err(StoreError::Closed);
        }
        self.inner.release(e).await
    }
    async fn recover(&self, l: Liveness) -> Result<Recovery, StoreError> {
        self.inner.recover(l).await
    }
    async fn approve(&self, id: &str, a: &str, m: Approvers) -> Result<Execution, StoreError> {
        self.inner.approve(id, a, m).await
    }
    async fn deny(&self, id: &str, a: &str, r: Option<String>, m: Approvers) -> Result<Execution, StoreError> {
        self.inner.deny(id, a, r, m).await
    }
    async fn expire_approvals(&self) -> Result<Vec<String>, StoreError> {
        self.inner.expire_approvals().await
    }
    async fn breakers(&self) -> Result<Vec<Breaker>, StoreError> {
        self.inner.breakers().await
    }
    async fn recent_runs(
        &self,
        r: &str,
        since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StoreError> {
        self.inner.recent_runs(r, since, limit).await
    }
    async fn reset_breaker(&self, r: &str, t: &str, a: &str) -> Result<bool, StoreError> {
        self.inner.reset_breaker(r, t, a).await
    }
    async fn record(&self, e: Vec<Event>) -> Result<(), StoreError> {
        self.inner.record(e).await
    }
    async fn execution(&self, id: &str) -> Result<Execution, StoreError> {
        self.inner.execution(id).await
    }
    async fn resolve_id(&self, prefix: &str) -> Result<String, StoreError> {
        self.inner.resolve_id(prefix).await
    }
    async fn executions(&self, f: ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        self.inner.executions(f).await
    }
    async fn audit(&self, f: AuditFilter) -> Result<Vec<Record>, StoreError> {
        self.inner.audit(f).await
    }
    async fn verify_audit(&self) -> Result<Result<u64, pitcrew::audit::Broken>, StoreError> {
        self.inner.verify_audit().await
    }
    async fn seen(&self, a: &pitcrew::alert::Alert, c: Arc<Config>) -> Result<Seen, StoreError> {
        self.inner.seen(a, c).await
    }
    async fn queue_depth(&self) -> Result<u64, StoreError> {
        self.inner.queue_depth().await
    }
    async fn judge_effectiveness(&self) -> Result<usize, StoreError> {
        self.inner.judge_effectiveness().await
    }
    async fn effectiveness(&self) -> Result<Vec<pitcrew::store::Effectiveness>, StoreError> {
        self.inner.effectiveness().await
    }
    async fn report_tally(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<pitcrew::report::Tally, StoreError> {
        self.inner.report_tally(since, until).await
    }
    async fn prune(&self, before: chrono::DateTime<chrono::Utc>, limit: usize) -> Result<pitcrew::store::Pruned, StoreError> {
        self.inner.prune(before, limit).await
    }
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.now()
    }
    fn worker_id(&self) -> String {
        self.inner.worker_id()
    }
}

fn flaky_harness(rb: &str) -> (Harness, Arc<Flaky>) {
    let base = Harness::new(rb, "");
    let engine = base.engine.clone();
    let flaky = Arc::new(Flaky {
        inner: engine.store.clone(),
        fail_steps: AtomicBool::new(false),
        fail_intake: AtomicBool::new(false),
        stall_intake: AtomicBool::new(false),
        fail_finish: AtomicBool::new(false),
        pass_writes: AtomicUsize::new(0),
        fail_writes: AtomicUsize::new(0),
    });
    let Harness { dir, clock, .. } = base;
    let h = Harness::with_store(dir, clock, engine.config().clone(), engine.runbooks(), flaky.clone());
    (h, flaky)
}

/// A handler still working at `server.request_timeout` is our fault, not
/// the client's: a generic 503, which Alertmanager retries (a 408 it would
/// drop). The deadline is the server's (`serve`), so this goes over a socket.
#[tokio::test(start_paused = true)]
async fn a_webhook_stuck_on_the_store_past_request_timeout_answers_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (h, flaky) =
        flaky_harness("apiVersion: pitcrew/v1\nname: x\ntrigger: {alertname: X}\nsteps: [{name: a, action: log, with: {message: m}}]\n");
    flaky.stall_intake.store(true, Ordering::SeqCst);
    let address = h.listen().await;
    let body = payload(vec![alert(&[("alertname", "X")])]).to_string();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST /v1/alerts/alertmanager HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut reply = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(60), stream.read_to_string(&mut reply))
        .await
        .expect("answered within a minute")
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.ends_with(r#"{"error":"request timed out; retry later"}"#),
        "5xx bodies stay generic: {reply}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(30) && waited < std::time::Duration::from_secs(31),
        "the default request_timeout: {waited:?}"
    );
}

#[tokio::test]
async fn no_durable_step_record_means_the_action_does_not_run() {
    let marker = tempfile::tempdir().unwrap();
    let file = marker.path().join("ran");
    let rb = format!(
        "apiVersion: pitcrew/v1\nname: touchy\ntrigger: {{alertname: Touch}}\nsteps:\n  - name: touch\n    action: exec\n    with: {{command: [/usr/bin/touch, \"{}\"]}}\n",
        file.display()
    );
    let (h, flaky) = flaky_harness(&rb);
    h.post(&payload(vec![alert(&[("alertname", "Touch")])])).await;
    flaky.fail_steps.store(true, Ordering::SeqCst);
    let exec = h.store().claim("w", None).await.unwrap().unwrap();
    let err = h.engine.execute(exec, None).await.unwrap_err();
    assert!(err.to_string().contains("state store"), "{err}");
    assert!(!file.exists(), "the action ran without its step.started record");
}

#[tokio::test]
async fn the_webhook_answers_503_when_alerts_cannot_be_stored() {
    let (h, flaky) =
        flaky_harness("apiVersion: pitcrew/v1\nname: x\ntrigger: {alertname: X}\nsteps: [{name: a, action: log, with: {message: m}}]\n");
    flaky.fail_intake.store(true, Ordering::SeqCst);
    let (status, body) = h.post(&payload(vec![alert(&[("alertname", "X")])])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"error": "state store unavailable; retry later"}),
        "5xx bodies stay generic"
    );
}

const RECOVER: &str = r#"apiVersion: pitcrew/v1
name: recover
trigger: {alertname: Crash}
steps:
  - name: note
    action: log
    with: {message: before}
  - name: change
    action: exec
    with: {command: [/bin/true]}
  - name: after
    action: log
    with: {message: after}
on_failure:
  - name: escalate
    action: log
    with: {message: "escalating: {{error}}"}
"#;

/// Leaves an execution as a killed process would: claimed by a dead worker,
/// with `step` started and never finished.
async fn crash_during(h: &Harness, step: &str, index: u32, action: &str, idempotent: bool) -> String {
    h.post(&payload(vec![alert(&[("alertname", "Crash")])])).await;
    let exec = h.store().claim("999999999:1", None).await.unwrap().unwrap();
    if index > 0 {
        let s = StepStart {
            phase: Phase::Main,
            index: 0,
            name: "note".into(),
            action: "log".into(),
            attempt: 0,
            idempotent: true,
            input: json!({}),
            dry_run: false,
        };
        h.store().step_started(&exec, Pending::default(), s).await.unwrap();
        let end = StepEnd {
            phase: Phase::Main,
            index: 0,
            name: "note".into(),
            attempt: 0,
            state: StepState::Succeeded,
            output: Some(json!({"message": "before"})),
            error: None,
            error_kind: None,
            duration_ms: 1,
        };
        h.store().record_pending(&exec, Pending::ended(end)).await.unwrap();
    }
    let s = StepStart {
        phase: Phase::Main,
        index,
        name: step.into(),
        action: action.into(),
        attempt: 0,
        idempotent,
        input: json!({}),
        dry_run: false,
    };
    h.store().step_started(&exec, Pending::default(), s).await.unwrap();
    exec.id
}

fn starts_of(records: &[Record], id: &str, step: &str) -> usize {
    records
        .iter()
        .filter(|r| r.kind == "step.started" && r.execution_id.as_deref() == Some(id) && r.data["step"] == step)
        .count()
}

#[tokio::test]
async fn an_interrupted_non_idempotent_step_becomes_unknown_and_escalates() {
    let h = Harness::new(RECOVER, "");
    let id = crash_during(&h, "change", 1, "exec", false).await;
    let report = h.store().recover(Arc::new(claimer_alive)).await.unwrap();
    assert_eq!(report.unknown, vec![id.clone()]);
    h.run_queued().await;
    let exec = h.store().execution(&id).await.unwrap();
    assert_eq!(exec.state, State::Unknown);
    let records = h.audit().await;
    assert_eq!(starts_of(&records, &id, "change"), 1, "never re-run blindly");
    assert_eq!(starts_of(&records, &id, "note"), 1, "finished steps are not repeated");
    assert_eq!(starts_of(&records, &id, "after"), 0);
    let escalate = exec.steps.iter().find(|s| s.name == "escalate").unwrap();
    assert!(
        escalate.output.as_ref().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("outcome is unknown"),
        "{escalate:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.kind == "execution.recovered" && r.data["action"] == "escalate")
    );
}

#[tokio::test]
async fn an_interrupted_idempotent_step_is_run_again() {
    let h = Harness::new(RECOVER, "");
    let id = crash_during(&h, "note", 0, "log", true).await;
    let report = h.store().recover(Arc::new(claimer_alive)).await.unwrap();
    assert_eq!(report.resumed, vec![id.clone()]);
    h.run_queued().await;
    let exec = h.store().execution(&id).await.unwrap();
    assert_eq!(exec.state, State::Succeeded);
    assert_eq!(starts_of(&h.audit().await, &id, "note"), 2);
}

#[tokio::test]
async fn live_claims_are_not_recovered() {
    let h = Harness::new(RECOVER, "");
    h.post(&payload(vec![alert(&[("alertname", "Crash")])])).await;
    let me = pitcrew::engine::worker_id();
    let exec = h.store().claim(&me, None).await.unwrap().unwrap();
    let report = h.store().recover(Arc::new(claimer_alive)).await.unwrap();
    assert!(report.resumed.is_empty() && report.unknown.is_empty());
    assert_eq!(h.store().execution(&exec.id).await.unwrap().state, State::Running);
}

#[tokio::test]
async fn manual_dry_run_skips_writes_and_records_inputs() {
    let rb = r#"apiVersion: pitcrew/v1
name: dry
steps:
  - name: change
    action: exec
    with: {command: [/usr/bin/touch, /tmp/pitcrew-dry-run-must-not-exist]}
  - name: note
    action: log
    with: {message: noted}
"#;
    let h = Harness::new(rb, "");
    let rb = h.engine.runbooks().get("dry").unwrap().clone();
    let id = new_id();
    let admission = Admission {
        id: id.clone(),
        runbook: rb,
        target: "dry".into(),
        params: Default::default(),
        actor: "user:test".into(),
        automated: false,
        dry_run: true,
        force: None,
        budget: None,
        invalid: None,
        inhibit: Vec::new(),
    };
    h.engine.admit(admission, None).await.unwrap();
    h.run_queued().await;
    let exec = h.store().execution(&id).await.unwrap();
    assert_eq!(exec.state, State::Succeeded);
    assert!(exec.dry_run);
    assert_eq!(exec.steps[0].state, StepState::Skipped);
    assert_eq!(exec.steps[0].error.as_deref(), Some("skipped: dry run"));
    assert_eq!(
        exec.steps[0].input["command"][1],
        Value::from("/tmp/pitcrew-dry-run-must-not-exist")
    );
    assert!(!std::path::Path::new("/tmp/pitcrew-dry-run-must-not-exist").exists());
    assert_eq!(exec.steps[1].state, StepState::Succeeded, "reads and notes still run");
}

#[tokio::test]
async fn a_dry_run_skips_steps_that_need_output_of_steps_it_did_not_run() {
    let rb = r#"apiVersion: pitcrew/v1
name: chain
steps:
  - name: first
    action: exec
    with: {command: [/bin/echo, hi]}
  - name: second
    action: log
    with: {message: "first said {{steps.first.output.stdout}}"}
  - name: third
    action: log
    with: {message: "second said {{steps.second.output.message}}"}
  - name: independent
    action: log
    with: {message: still runs}
"#;
    let h = Harness::new(rb, "");
    let rb = h.engine.runbooks().get("chain").unwrap().clone();
    let resolved = pitcrew::runbook::Resolved {
        params: Default::default(),
        target: "chain".into(),
        inhibit: Vec::new(),
    };
    let admission = h.engine.manual_admission(&rb, resolved, "user:test".into(), true, None).await;
    let id = admission.id.clone();
    h.engine.admit(admission, None).await.unwrap();
    h.run_queued().await;
    let exec = h.store().execution(&id).await.unwrap();
    assert_eq!(exec.state, State::Succeeded, "{:?}", exec.reason);
    let states: Vec<(&str, StepState)> = exec.steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
    assert_eq!(
        states,
        [
            ("first", StepState::Skipped),
            ("second", StepState::Skipped),
            ("third", StepState::Skipped),
            ("independent", StepState::Succeeded)
        ]
    );
}

#[tokio::test]
async fn a_resolved_alert_does_not_cancel_a_run_recovered_mid_way() {
    let h = Harness::new(RECOVER, "");
    let id = crash_during(&h, "change", 1, "exec", false).await;
    h.store().recover(Arc::new(claimer_alive)).await.unwrap();
    let firing = alert(&[("alertname", "Crash")]);
    h.post(&payload(vec![crate::support::resolved(firing)])).await;
    assert_eq!(
        h.store().execution(&id).await.unwrap().state,
        State::Queued,
        "still owed its escalation"
    );
    h.run_queued().await;
    assert_eq!(h.store().execution(&id).await.unwrap().state, State::Unknown);
}

#[tokio::test]
async fn exec_kills_what_a_timed_out_command_started_and_does_not_wait_on_leftover_pipes() {
    let rb = r#"apiVersion: pitcrew/v1
name: shells
trigger: {alertname: Sh}
steps:
  - name: leaves-a-daemon
    action: exec
    continue_on_error: true
    with: {command: [/bin/sh, -c, "sleep 37.25 & echo started"], timeout: 20s}
  - name: hangs
    action: exec
    with: {command: [/bin/sh, -c, "sleep 38.25 & sleep 39.25"], timeout: 300ms}
"#;
    let h = Harness::new(rb, "");
    let started = std::time::Instant::now();
    let exec = one_run(&h, &[("alertname", "Sh")]).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let daemon = &exec.steps[0];
    assert_eq!(daemon.state, StepState::Succeeded, "{daemon:?}");
    assert_eq!(daemon.output.as_ref().unwrap()["exit_code"], 0);
    let hangs = &exec.steps[1];
    assert_eq!(hangs.error.as_deref(), Some("timed out after 300ms"));
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 3[89].25"]).output().unwrap();
    assert!(
        left.stdout.is_empty(),
        "the timed-out command's group is gone: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let _ = std::process::Command::new("pkill").args(["-f", "sleep 37.25"]).status();
}

async fn only(h: &Harness, state: State) -> Vec<String> {
    let filter = ExecutionFilter {
        state: Some(state),
        ..Default::default()
    };
    h.store().executions(filter).await.unwrap().into_iter().map(|e| e.id).collect()
}

/// Workers take runs from memory and claim them with their first record; a
/// run cancelled or claimed elsewhere in the meantime is dropped, never run.
#[tokio::test]
async fn workers_run_from_memory_but_never_a_run_cancelled_or_taken_meanwhile() {
    let h = Harness::new(
        "apiVersion: pitcrew/v1\nname: mem\ntrigger: {alertname: Mem}\ntarget: \"{{alert.labels.n}}\"\nsteps: [{name: note, action: log, with: {message: hi}}]\n",
        "",
    );
    let kinds_of = |records: &[Record], id: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r.execution_id.as_deref() == Some(id))
            .map(|r| r.kind.clone())
            .collect()
    };

    // At start the memory knows nothing of the store: the first turn reads it.
    h.post(&payload(vec![alert(&[("alertname", "Mem"), ("n", "a")])])).await;
    assert!(h.engine.turn().await.unwrap());
    h.engine.settle().await;
    let a = only(&h, State::Succeeded).await;
    assert_eq!(a.len(), 1);
    assert_eq!(
        kinds_of(&h.audit().await, &a[0]),
        [
            "runbook.matched",
            "guardrail.decision",
            "execution.started",
            "step.started",
            "step.finished",
            "execution.finished"
        ]
    );

    // Queued in memory, then resolved before a worker got to it.
    let b = alert(&[("alertname", "Mem"), ("n", "b")]);
    h.post(&payload(vec![b.clone()])).await;
    h.post(&payload(vec![resolved(b)])).await;
    assert!(h.engine.turn().await.unwrap());
    // Queued in memory, then claimed by another worker (another process) first.
    h.post(&payload(vec![alert(&[("alertname", "Mem"), ("n", "c")])])).await;
    let other = h.store().claim("other:1", None).await.unwrap().unwrap();
    assert!(h.engine.turn().await.unwrap());
    assert!(!h.engine.turn().await.unwrap(), "nothing left to run");
    h.engine.settle().await;

    let records = h.audit().await;
    let cancelled = only(&h, State::Cancelled).await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(
        kinds_of(&records, &cancelled[0]),
        ["runbook.matched", "guardrail.decision", "execution.finished"]
    );
    assert_eq!(only(&h, State::Running).await, vec![other.id.clone()]);
    assert_eq!(
        kinds_of(&records, &other.id),
        ["runbook.matched", "guardrail.decision", "execution.started"],
        "only the other worker's claim; this one ran nothing"
    );
    assert_eq!(h.store().verify_audit().await.unwrap(), Ok(records.len() as u64));
}

/// A step's end rides with the run's last write; when that write fails, the
/// run goes back to the queue by the crash-recovery rule: the step that ran
/// (not idempotent) is `unknown` and escalated, never run again.
#[tokio::test]
async fn a_failed_last_write_never_reruns_a_step_that_is_not_idempotent() {
    let marker = tempfile::tempdir().unwrap();
    let dir = marker.path().join("made");
    let rb = format!(
        "apiVersion: pitcrew/v1\nname: once\ntrigger: {{alertname: Once}}\nsteps:\n  - name: make\n    action: exec\n    with: {{command: [/bin/mkdir, \"{}\"]}}\non_failure:\n  - name: page\n    action: log\n    with: {{message: \"{{{{error}}}}\"}}\n",
        dir.display()
    );
    let (h, flaky) = flaky_harness(&rb);
    h.post(&payload(vec![alert(&[("alertname", "Once")])])).await;
    flaky.fail_finish.store(true, Ordering::SeqCst);
    assert!(h.engine.turn().await.unwrap(), "ran, then could not record its end");
    h.engine.settle().await;
    assert!(dir.exists());
    assert!(h.engine.turn().await.unwrap(), "resumed to escalate");
    h.engine.settle().await;
    let list = h.store().executions(ExecutionFilter::default()).await.unwrap();
    let exec = h.store().execution(&list[0].id).await.unwrap();
    assert_eq!(exec.state, State::Unknown, "{exec:?}");
    let records = h.audit().await;
    assert_eq!(starts_of(&records, &exec.id, "make"), 1, "mkdir ran once");
    assert_eq!(starts_of(&records, &exec.id, "page"), 1, "on_failure escalated");
    assert_eq!(h.store().verify_audit().await.unwrap(), Ok(records.len() as u64));
}

#[tokio::test]
async fn an_artifact_folder_is_left_only_when_a_step_wrote_something() {
    let rb = r#"apiVersion: pitcrew/v1
name: art
trigger: {alertname: Art}
target: "{{alert.labels.n}}"
steps:
  - name: quiet
    action: exec
    with: {command: ["true"]}
  - name: writes
    action: exec
    when: "{{alert.labels.write}}"
    with: {command: ["sh", "-c", "echo kept > out.txt"]}
"#;
    let h = Harness::new(rb, "");
    let quiet = one_run(&h, &[("alertname", "Art"), ("n", "a"), ("write", "")]).await;
    let wrote = one_run(&h, &[("alertname", "Art"), ("n", "b"), ("write", "yes")]).await;
    assert_eq!((quiet.state, wrote.state), (State::Succeeded, State::Succeeded));
    let folder = |id: &str| h.dir.path().join("state/artifacts").join(id);
    assert!(!folder(&quiet.id).exists(), "no empty folder for a run that wrote nothing");
    assert_eq!(std::fs::read_to_string(folder(&wrote.id).join("out.txt")).unwrap(), "kept\n");
}

/// A run whose state cannot be written twice in a row (its next step's
/// start, then its release) must not stay `running` under this live
/// process's claim, its target locked until a restart: the next recovery
/// pass (`serve` runs one every second) takes it over.
#[tokio::test]
async fn a_run_whose_state_cannot_be_written_twice_in_a_row_goes_to_recovery() {
    let rb = "apiVersion: pitcrew/v1\nname: two\ntrigger: {alertname: Two}\nsteps:\n  - {name: a, action: log, with: {message: a}}\n  - {name: b, action: log, with: {message: b}}\n";
    let (h, flaky) = flaky_harness(rb);
    let (status, _) = h.post(&payload(vec![alert(&[("alertname", "Two")])])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // The claim with `a`'s start goes through; `b`'s start fails, and so
    // does the release after it.
    flaky.pass_writes.store(1, Ordering::SeqCst);
    flaky.fail_writes.store(2, Ordering::SeqCst);
    assert!(h.engine.turn().await.unwrap());
    h.engine.settle().await;
    let id = h.store().executions(ExecutionFilter::default()).await.unwrap()[0].id.clone();
    assert_eq!(
        h.store().execution(&id).await.unwrap().state,
        State::Running,
        "the store still says running"
    );

    let report = h.engine.recover().await.unwrap();
    assert_eq!(
        report.resumed,
        vec![id.clone()],
        "the run given up is recovered although this process lives"
    );
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.len(), 1);
    let exec = h.store().execution(&id).await.unwrap();
    assert_eq!(exec.state, State::Succeeded, "{exec:?}");
    assert!(h.engine.recover().await.unwrap().resumed.is_empty(), "recovered once");
}

/// On both backends: PostgreSQL checks the claim in the end's own statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_claim_cannot_end_the_run() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let h = Harness::new_on(
            backend,
            "apiVersion: pitcrew/v1\nname: r\ntrigger: {alertname: R}\nsteps: [{name: a, action: log, with: {message: m}}]\n",
            "",
        );
        // Two workers of this process (a replica's claims must name it).
        let (one, two) = (format!("{}/1", h.store().worker_id()), format!("{}/2", h.store().worker_id()));
        h.post(&payload(vec![alert(&[("alertname", "R")])])).await;
        let first = h.store().claim(&one, None).await.unwrap().expect("queued");
        // The first worker is taken for dead; the run is recovered and claimed again.
        h.store().recover(Arc::new(|_: &str| false)).await.unwrap();
        let second = h.store().claim(&two, Some(first.id.clone())).await.unwrap().expect("requeued");
        assert_eq!(second.claimed_by.as_deref(), Some(two.as_str()));

        let late = h
            .store()
            .finish(&first, Pending::default(), State::Failed, Some("late".into()))
            .await;
        assert!(matches!(late, Err(StoreError::ClaimLost(_))), "{backend:?}: {late:?}");
        let now = h.store().execution(&first.id).await.unwrap();
        assert_eq!(
            (now.state, now.claimed_by.as_deref()),
            (State::Running, Some(two.as_str())),
            "{backend:?}"
        );
        // The second worker still ends it.
        h.store().finish(&second, Pending::default(), State::Succeeded, None).await.unwrap();
        assert_eq!(h.store().execution(&first.id).await.unwrap().state, State::Succeeded, "{backend:?}");
    }
}
