//! What every store does the same, whatever the database: which audit
//! records each state change writes, verdict → state, the dedupe and
//! reconsider rules, cancelling on resolve, the recovery rule, fencing of a
//! run's writes by its claim, the two-person rule. Written once over the
//! narrow [`Tx`]/[`Read`] interface of [`super::backend`]; [`Ledger`] is the
//! [`Store`] every backend gets from it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::backend::{AuditRow, Ending, NewExecution, Read, StepKey, StepRow, Tx, Uncount};
use super::effect;
use super::writer::{SharedHealth, WriteQueue};
use super::*;
use crate::audit::{self, Event, kind};
use crate::authz::Action;
use crate::clock::Clock;
use crate::guard::{self, Request, STORM_WINDOW, Verdict, Windows};
use crate::inhibit;
use crate::redact::Redactor;

/// The last record of the audit chain, as the next record needs it.
struct Head {
    seq: u64,
    /// Hex, as the next record's `prev_hash`.
    hash: String,
    ts_us: i64,
}

/// The transaction a write job runs in: the backend's [`Tx`], the chain's
/// head once read, and the time every record of the group shares.
pub struct Txn<'a> {
    pub(super) tx: &'a mut dyn Tx,
    cursor: Option<Head>,
    pub(super) redactor: &'a Redactor,
    pub(super) now: DateTime<Utc>,
    /// `now` as audit records write it, formatted once per transaction.
    now_text: String,
    /// A job failed after writing: the transaction will be rolled back.
    pub(super) failed: Option<String>,
    /// A job failed on the disk or the database server: the store is failing.
    pub(super) disk: Option<String>,
}

impl<'a> Txn<'a> {
    pub(super) fn new(tx: &'a mut dyn Tx, redactor: &'a Redactor, now: DateTime<Utc>) -> Txn<'a> {
        // Records keep microseconds (`ts_us`): the stored time and the hashed text agree.
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        Txn {
            tx,
            cursor: None,
            redactor,
            now,
            now_text: audit::format_ts(now),
            failed: None,
            disk: None,
        }
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.now.timestamp_millis()
    }

    /// Appends one audit record, chained to the last one. Its time never
    /// goes back before the last record's (a clock stepped back, or another
    /// process's or replica's clock): the chain is in time order, which is
    /// what lets `audit` find a time range without an index.
    pub(super) fn append(&mut self, mut event: Event) -> Result<u64, StoreError> {
        let now_us = self.now.timestamp_micros();
        if self.cursor.is_none() {
            self.cursor = Some(match self.tx.chain_head()? {
                Some(h) => Head {
                    seq: h.seq,
                    hash: hex::encode(h.hash),
                    ts_us: h.ts_us,
                },
                None => Head {
                    seq: 0,
                    hash: audit::GENESIS.to_string(),
                    ts_us: i64::MIN,
                },
            });
        }
        let head = self.cursor.as_ref().expect("loaded above");
        let (seq, ts_us) = (head.seq + 1, head.ts_us.max(now_us));
        let ts = if ts_us == now_us {
            std::borrow::Cow::Borrowed(self.now_text.as_str())
        } else {
            std::borrow::Cow::Owned(audit::format_ts(DateTime::from_timestamp_micros(ts_us).unwrap_or(self.now)))
        };
        self.redactor.in_place(&mut event.data);
        audit::without_nulls(&mut event.data);
        let (data, hash) = event.seal_stored(seq, &ts, &head.hash);
        self.tx.append_audit(AuditRow {
            seq,
            ts_us,
            kind: event.kind,
            actor: &event.actor,
            execution_id: event.execution_id.as_deref(),
            runbook: event.runbook.as_deref(),
            target: event.target.as_deref(),
            data: &data,
            hash: &hash,
        })?;
        self.cursor = Some(Head {
            seq,
            hash: hex::encode(hash),
            ts_us,
        });
        Ok(seq)
    }

    fn load(&mut self, id: &str) -> Result<Execution, StoreError> {
        self.tx.execution(id)?.ok_or_else(|| StoreError::NotFound(id.to_string()))
    }
}

/// An execution as people see it (API, CLI): its params and alert redacted
/// like the audit. Runs themselves read the stored values.
pub(super) fn shown(mut exec: Execution, redactor: &Redactor) -> Execution {
    let mut params = Value::Object(std::mem::take(&mut exec.params));
    redactor.in_place(&mut params);
    if let Value::Object(p) = params {
        exec.params = p;
    }
    exec.alert = exec.alert.map(|a| a.redacted(redactor));
    exec
}

/// The guardrails' decision for an admission at `now_ms`, from the facts
/// stored now (inside the deciding transaction, or on a read for `preview`).
/// `own`: the fingerprint of the alert being decided, which does not
/// inhibit itself.
fn decide(
    read: &mut dyn Read,
    adm: &Admission,
    config: &Config,
    now_ms: i64,
    own: Option<&str>,
    refire: bool,
) -> Result<(Decision, guard::Facts), StoreError> {
    let rb = &adm.runbook;
    let windows = Windows {
        resolved_watch: refire,
        ..Windows::for_runbook(rb, config)
    };
    let mut f = read.facts(&rb.name, &adm.target, windows, now_ms)?;
    if windows.effectiveness
        && let Some(e) = read.effectiveness(Some(&rb.name))?.into_iter().next()
    {
        (f.judged_runs, f.effective_runs, f.ineffective_notified) = (e.judged, e.effective, e.notified);
    }
    f.inhibited_by = inhibitor(read, &adm.inhibit, own, now_ms)?;
    let request = Request {
        runbook: rb,
        target: &adm.target,
        automated: adm.automated,
        dry_run: adm.dry_run,
        force: adm.force.as_deref(),
        now_ms,
    };
    Ok((guard::decide(&request, &f, adm.budget.as_ref(), config), f))
}

/// The first firing alert one of `rules` holds for. A rule naming an
/// `alertname` reads only the alerts of that name firing now (an index
/// search); one without reads every alert firing now. Either way the rows
/// are what fires now: resolved alerts leave the table, so history never
/// adds to the cost.
fn inhibitor(
    read: &mut dyn Read,
    rules: &[Vec<crate::matcher::Matcher>],
    own: Option<&str>,
    now_ms: i64,
) -> Result<Option<guard::Inhibitor>, StoreError> {
    let seen_after = now_ms - inhibit::FIRING_EXPIRES.as_millis() as i64;
    for rule in rules {
        let mut found = None;
        read.firing(inhibit::alertname(rule), seen_after, now_ms, &mut |f| {
            if inhibit::holds(rule, &f, own) {
                found = Some(f);
                return false;
            }
            true
        })?;
        if let Some(alert) = found {
            return Ok(Some(guard::Inhibitor {
                alert,
                rule: inhibit::describe(rule),
            }));
        }
    }
    Ok(None)
}

/// Keeps the set of alerts firing now (`inhibit_while_firing`) current:
/// every notification, whichever runbook it matches (or none), new or
/// re-sent (a re-send keeps a firing alert from expiring).
fn track_firing(t: &mut Txn<'_>, alert: &Alert) -> Result<(), StoreError> {
    let starts_ms = alert.starts_at.timestamp_millis();
    match alert.status {
        crate::alert::AlertStatus::Firing => {
            let labels = serde_json::to_string(&alert.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let now_ms = t.now_ms();
            let ends_ms = alert.ends_at.map(|e| e.timestamp_millis());
            t.tx.firing_seen(&alert.fingerprint, alert.name(), &labels, starts_ms, ends_ms, now_ms)
        }
        crate::alert::AlertStatus::Resolved => t.tx.firing_resolved(&alert.fingerprint, starts_ms),
    }
}

/// A notification against the dedupe set.
enum Dedupe {
    New,
    Duplicate,
    /// Decided again: its `alert.received` record's seq.
    Reconsider(u64),
}

/// The dedupe rule, for intake and for `seen`: a notification recorded before
/// is a duplicate, unless its every run was blocked by a guardrail that time
/// lifts (then intake kept its record's seq and when it last decided) and
/// `intake.reconsider_after` has passed since.
fn dedupe(read: &mut dyn Read, id: &[u8; 16], now_ms: i64, config: &Config) -> Result<Dedupe, StoreError> {
    Ok(match read.alert_row(id)? {
        None => Dedupe::New,
        Some((Some(seq), Some(decided_ms))) if now_ms - decided_ms >= config.reconsider_after.as_millis() as i64 => Dedupe::Reconsider(seq),
        Some(_) => Dedupe::Duplicate,
    })
}

/// Guardrails whose block time lifts by itself: an alert blocked only by
/// these is worth deciding again when Alertmanager sends it again. Not
/// `escalated` (a human must reset it) nor `params` (the alert is wrong).
fn passes_with_time(decided_by: &str) -> bool {
    matches!(
        decided_by,
        "cooldown" | "rate_limit" | "runbook_rate_limit" | "global_limit" | "concurrency" | "storm_brake" | "budget" | "inhibited"
    )
}

/// Where the alert that started a run is kept.
enum AlertRef<'a> {
    /// Delivered by the webhook: the data of its `alert.received` record (seq).
    Received(&'a Alert, u64),
    /// Given to a manual run (`run --alert`): kept with the execution, as JSON.
    Given(&'a Alert, String),
}

impl AlertRef<'_> {
    fn alert(&self) -> &Alert {
        match self {
            AlertRef::Received(a, _) | AlertRef::Given(a, _) => a,
        }
    }
}

/// Stores a webhook delivery: each notification deduplicated, each new one
/// recorded and its runs decided.
fn intake(t: &mut Txn<'_>, mut alerts: Vec<IntakeAlert>, config: &Config) -> Result<IntakeResult, StoreError> {
    let mut result = IntakeResult::default();
    // One statement for the delivery's new notifications (the common case);
    // the dedupe rule is read only for one seen before.
    let ids: Vec<[u8; 16]> = alerts.iter().map(|item| item.dedupe_id).collect();
    let new = t.tx.alerts_insert(&ids)?;
    for (item, new) in alerts.iter_mut().zip(new) {
        let alert = &item.alert;
        let now_ms = t.now_ms();
        track_firing(t, alert)?;
        let seen = if new {
            Dedupe::New
        } else {
            dedupe(t.tx, &item.dedupe_id, now_ms, config)?
        };
        let was_reconsidered = matches!(seen, Dedupe::Reconsider(_));
        let received = match seen {
            Dedupe::New => {
                result.accepted += 1;
                // The alert is stored once: as its `alert.received` record.
                let received = t.append(Event::new(kind::ALERT_RECEIVED, "alertmanager", std::mem::take(&mut item.body)))?;
                if alert.status == crate::alert::AlertStatus::Resolved {
                    result.cancelled += cancel_for_resolved(t, alert)?;
                    effect::resolved(t, alert)?;
                }
                received
            }
            Dedupe::Reconsider(received) => {
                result.reconsidered += 1;
                t.append(Event::new(
                    kind::ALERT_RECONSIDERED,
                    "alertmanager",
                    json!({
                        "fingerprint": alert.fingerprint, "status": alert.status.as_str(), "startsAt": alert.starts_at,
                        "received_seq": received, "matched": item.body.get("matched"),
                    }),
                ))?;
                received
            }
            Dedupe::Duplicate => {
                result.duplicates += 1;
                let data = json!({
                    "fingerprint": alert.fingerprint, "status": alert.status.as_str(),
                    "labels": alert.labels, "startsAt": alert.starts_at,
                });
                t.append(Event::new(kind::ALERT_DUPLICATE, "alertmanager", data))?;
                continue;
            }
        };
        let mut only_waited = !item.admissions.is_empty();
        for adm in &item.admissions {
            // Alerting targets matter only to the storm brake. (Turned on
            // later, it counts targets from then on: one window to warm up.)
            if config.storm_brake.is_some() && alert.status == crate::alert::AlertStatus::Firing && adm.invalid.is_none() {
                let now_ms = t.now_ms();
                t.tx.target_alerting(&adm.target, now_ms)?;
            }
            // A new firing alert the runbook answers: its earlier runs on the
            // target did not keep it fixed (looked at while deciding).
            let refire = alert.status == crate::alert::AlertStatus::Firing && !was_reconsidered;
            let decision = admit_in(t, adm, Some(AlertRef::Received(alert, received)), refire, config)?;
            only_waited &= decision.verdict == Verdict::Blocked && passes_with_time(decision.decided_by);
            result.executions.push((adm.id.clone(), decision));
        }
        // A firing alert whose every run was blocked only by a guardrail
        // that time lifts is decided again when it is sent again
        // (`reconsider_after`); any other stays a duplicate.
        let reconsider = only_waited && alert.status == crate::alert::AlertStatus::Firing;
        if reconsider || was_reconsidered {
            t.tx.alert_mark(&item.dedupe_id, reconsider.then_some(received), reconsider.then_some(now_ms))?;
        }
    }
    result.at = t.now;
    result.alerts = alerts;
    Ok(result)
}

/// Decides and records one admission. Shared by alert intake and manual
/// runs. `refire`: the alert fires anew, so runs of the runbook on the
/// target whose alert resolved lately did not fix it (`effect::refired`).
fn admit_in(t: &mut Txn<'_>, adm: &Admission, alert: Option<AlertRef<'_>>, refire: bool, config: &Config) -> Result<Decision, StoreError> {
    let rb = &adm.runbook;
    let now_ms = t.now_ms();
    let exec_event = |kind: &'static str, actor: &str, data: Value| Event::new(kind, actor, data).execution(&adm.id, &rb.name, &adm.target);
    if let Some(alert) = alert.as_ref().map(AlertRef::alert) {
        t.append(exec_event(
            kind::RUNBOOK_MATCHED,
            &adm.actor,
            json!({"fingerprint": alert.fingerprint, "params": adm.params, "owner": rb.owner, "digest": rb.digest}),
        ))?;
    }
    if rb.guardrails.min_effectiveness.is_some() && adm.invalid.is_none() {
        // Windows that closed since the last chore count before deciding.
        effect::judge_due(t, Some(&rb.name), effect::BATCH)?;
    }
    let (decision, facts) = if let Some(invalid) = &adm.invalid {
        let decision = crate::guard::Decision {
            verdict: Verdict::Blocked,
            decided_by: "params",
            reason: invalid.clone(),
            dry_run: adm.dry_run,
            checks: vec![],
            trip_breaker: false,
            notify: None,
            storm_notice: false,
        };
        (decision, guard::Facts::default())
    } else {
        let own = alert.as_ref().map(|a| a.alert().fingerprint.as_str());
        // Whether a watched run resolved is asked with the facts: one round
        // trip, where the answer is nearly always no.
        let (decision, facts) = decide(t.tx, adm, config, now_ms, own, refire)?;
        let judged = if facts.resolved_watch {
            effect::refired(t, &rb.name, &adm.target)?
        } else {
            0
        };
        if judged > 0 && rb.guardrails.min_effectiveness.is_some() {
            // A judgment changes what `min_effectiveness` reads.
            decide(t.tx, adm, config, now_ms, own, false)?
        } else {
            (decision, facts)
        }
    };
    let state = match decision.verdict {
        Verdict::Run => State::Queued,
        Verdict::PendingApproval => State::PendingApproval,
        Verdict::Blocked => State::Blocked,
    };
    // Only real runs count toward limits and cooldowns (the store contract).
    let admitted_ms = (state == State::Queued && !decision.dry_run).then_some(now_ms);
    let deadline = (state == State::PendingApproval).then(|| now_ms + rb.guardrails.approval_timeout.as_millis() as i64);
    // A blocked run keeps its reason only in its decision record (backends
    // read it from there).
    let reason = (decision.verdict == Verdict::PendingApproval).then(|| format!("{}: {}", decision.decided_by, decision.reason));
    let (alert_seq, given) = match &alert {
        Some(AlertRef::Received(_, seq)) => (Some(*seq), None),
        Some(AlertRef::Given(_, body)) => (None, Some(body.as_str())),
        None => (None, None),
    };
    let params = Value::Object(adm.params.clone()).to_string();
    t.tx.execution_insert(NewExecution {
        id: &adm.id,
        runbook: &rb.name,
        target: &adm.target,
        state,
        reason: reason.as_deref(),
        actor: &adm.actor,
        alert_seq,
        alert: given,
        fingerprint: alert.as_ref().map(|a| a.alert().fingerprint.as_str()),
        params: &params,
        dry_run: decision.dry_run,
        automated: adm.automated,
        risk: rb.risk.as_str(),
        created_ms: now_ms,
        admitted_ms,
        finished_ms: (state == State::Blocked).then_some(now_ms),
        approval_deadline_ms: deadline,
    })?;
    t.append(exec_event(
        kind::GUARDRAIL_DECISION,
        &adm.actor,
        json!({
            "verdict": decision.verdict, "decided_by": decision.decided_by, "reason": decision.reason,
            "dry_run": decision.dry_run.then_some(true), "risk": rb.risk, "checks": checks_record(&decision),
            "budget": adm.budget, "approval_deadline": deadline.map(ts),
            "escalated": decision.notify.is_some().then_some(true),
        }),
    ))?;
    if let Some(reason) = &adm.force {
        t.append(exec_event(
            kind::OVERRIDE,
            &adm.actor,
            json!({"reason": reason, "skipped": decision.checks.iter().filter(|c| c.verdict == crate::guard::CheckVerdict::Forced).map(|c| c.guardrail).collect::<Vec<_>>()}),
        ))?;
    }
    if state == State::Blocked {
        // The reason in full is the decision's, one record before.
        t.append(exec_event(
            kind::EXECUTION_FINISHED,
            "system:guardrails",
            json!({"state": "blocked", "reason": decision.decided_by}),
        ))?;
    }
    if decision.trip_breaker {
        t.tx.breaker_trip(&rb.name, &adm.target, now_ms, &decision.reason)?;
    }
    // A real run for an alert is watched until judged effective or not.
    if let Some(alert) = alert.as_ref().map(AlertRef::alert)
        && matches!(state, State::Queued | State::PendingApproval)
        && !decision.dry_run
    {
        effect::watch(t, &adm.id, rb, &adm.target, alert)?;
    }
    // `ineffective` escalates once, until the runbook works again.
    let escalated_ineffective = decision.decided_by == "ineffective" && decision.notify.is_some();
    let works_again = facts.ineffective_notified
        && rb
            .guardrails
            .min_effectiveness
            .is_some_and(|min| !guard::ineffective(facts.judged_runs, facts.effective_runs, min.0));
    if escalated_ineffective || works_again {
        t.tx.effect_notified(&rb.name, escalated_ineffective)?;
    }
    if decision.decided_by == "storm_brake" {
        // One notice per storm however long it lasts: the store keeps when
        // the brake last held, and facts look for it within the storm
        // window, so a storm ends only after a whole window without the brake.
        t.tx.storm_held(now_ms)?;
    }
    Ok(decision)
}

/// Milliseconds to a time.
pub(super) fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The checks as the decision record keeps them: by guardrail name (the
/// order they are checked in is fixed), and without a detail that is the
/// decision's `reason` (it would be the same text twice).
fn checks_record(decision: &Decision) -> Value {
    decision
        .checks
        .iter()
        .map(|c| {
            let mut check = json!({ "verdict": c.verdict });
            if c.detail != decision.reason {
                check["detail"] = Value::from(c.detail.as_str());
            }
            (c.guardrail.to_string(), check)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The `access.refused` record of a refusal by `permissions`.
fn refused(refusal: &crate::authz::Refusal) -> Event {
    Event::new(kind::ACCESS_REFUSED, &refusal.actor, refusal.data())
}

/// A pending approval past its deadline: cancelled, denied by `system:timeout`.
fn expire_approval(t: &mut Txn<'_>, id: &str, runbook: &str, target: &str) -> Result<(), StoreError> {
    let why = "approval timed out";
    let finished_ms = t.now_ms();
    t.tx.end(
        id,
        Ending {
            state: State::Cancelled,
            reason: Some(why),
            finished_ms,
            uncount: Uncount::No,
            release_claim: false,
        },
    )?;
    effect::ended(t, id, None)?;
    t.append(Event::new(kind::APPROVAL_DENIED, "system:timeout", json!({"reason": why})).execution(id, runbook, target))?;
    t.append(
        Event::new(
            kind::EXECUTION_FINISHED,
            "system:timeout",
            json!({"state": "cancelled", "reason": why}),
        )
        .execution(id, runbook, target),
    )?;
    Ok(())
}

/// A resolved notification cancels the runs of its own episode (the firing
/// notification with the same fingerprint and startsAt) that never started.
/// A late resolve of an older episode finds no run of its episode: a newer
/// episode's run is not its to cancel. A recovered run waiting to resume
/// (maybe with an unknown step to escalate) is not cancelled either.
fn cancel_for_resolved(t: &mut Txn<'_>, resolved: &Alert) -> Result<usize, StoreError> {
    // The episode's start as alert records write it (the same serialisation).
    let starts_at = serde_json::to_value(resolved.starts_at).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let victims =
        t.tx.unstarted_of_episode(&resolved.fingerprint, starts_at.as_str().unwrap_or_default())?;
    let now_ms = t.now_ms();
    let why = "alert resolved before it ran";
    for (id, runbook, target, was) in &victims {
        t.tx.end(
            id,
            Ending {
                state: State::Cancelled,
                reason: Some(why),
                finished_ms: now_ms,
                // A run that never started counts toward no limit.
                uncount: Uncount::Yes,
                release_claim: false,
            },
        )?;
        effect::ended(t, id, None)?;
        t.append(
            Event::new(
                kind::EXECUTION_FINISHED,
                "alertmanager",
                json!({"state": "cancelled", "reason": why, "was": was}),
            )
            .execution(id, runbook, target),
        )?;
    }
    Ok(victims.len())
}

/// Puts a run that stopped part way back in the queue, by the recovery rule:
/// a step that started and has no end is re-run only if it is idempotent;
/// otherwise it is recorded `unknown` and the run resumes only to escalate
/// (`on_failure`). Returns whether it was unknown.
fn requeue(t: &mut Txn<'_>, exec: &Execution, actor: &str, cause: &str) -> Result<bool, StoreError> {
    let interrupted: Vec<&StepRecord> = exec.steps.iter().filter(|s| s.state == StepState::Started).collect();
    let event = |data: Value| Event::new(kind::EXECUTION_RECOVERED, actor, data).execution(&exec.id, &exec.runbook, &exec.target);
    if let Some(step) = interrupted.iter().find(|s| !s.idempotent) {
        let msg = format!(
            "step `{}` ({}) {cause}; it is not idempotent, so its outcome is unknown and it was not run again",
            step.name, step.action
        );
        let finished_ms = t.now_ms();
        t.tx.step_end(
            StepKey {
                execution_id: &exec.id,
                phase: step.phase,
                index: step.index,
                attempt: step.attempt,
            },
            &step.name,
            StepRow {
                state: StepState::Unknown,
                output: None,
                error: Some(&msg),
                finished_ms,
            },
        )?;
        t.append(
            Event::new(
                kind::STEP_FINISHED,
                actor,
                json!({"step": step.name, "phase": step.phase, "attempt": step.attempt, "outcome": "unknown", "error": msg}),
            )
            .execution(&exec.id, &exec.runbook, &exec.target),
        )?;
        t.tx.requeue(&exec.id, Some(&msg))?;
        t.append(event(json!({"action": "escalate", "reason": msg})))?;
        Ok(true)
    } else {
        let rerun: Vec<&str> = interrupted.iter().map(|s| s.name.as_str()).collect();
        t.tx.requeue(&exec.id, None)?;
        t.append(event(json!({"action": "resume", "rerun_idempotent_steps": rerun})))?;
        Ok(false)
    }
}

/// Whether a run being claimed already has steps behind it.
fn resumed(exec: &Execution) -> bool {
    exec.steps.iter().any(|s| s.state != StepState::Started)
}

fn started_event(exec: &Execution, worker: &str, resumed: bool) -> Event {
    Event::new(
        kind::EXECUTION_STARTED,
        &exec.actor,
        json!({"worker": worker, "dry_run": exec.dry_run, "resumed": resumed, "params": exec.params}),
    )
    .execution(&exec.id, &exec.runbook, &exec.target)
}

/// Fencing: a worker may write a run's records only while it still holds
/// the claim it started with. Checked before writing (a job that fails after
/// writing sinks its whole group).
fn fence(t: &mut Txn<'_>, exec: &Execution) -> Result<(), StoreError> {
    if !t.tx.claim_held(&exec.id, exec.claimed_by.as_deref())? {
        return Err(StoreError::ClaimLost(exec.id.clone()));
    }
    Ok(())
}

/// A job's first write when it is one the writer makes for the whole group
/// in one statement before any job runs (`Tx::claims`, `Tx::ends_held`):
/// a run's claim, and a run's end. Each run costs a claim and an end; on a
/// backend where a statement is a round trip, under a lock every replica
/// waits for, sharing them is what the group commit does for the rest.
/// Moving them to the front of the group is sound: the group's jobs are
/// concurrent requests, so any order of them is one they could have come in.
pub(super) enum FirstWrite {
    /// Queued → running under `worker`.
    Claim { id: String, worker: String, started_ms: i64 },
    /// The run ends, if it still runs under `claim` (fencing).
    End {
        id: String,
        claim: Option<String>,
        state: State,
        reason: Option<String>,
        uncount: Uncount,
    },
}

impl FirstWrite {
    fn id(&self) -> &str {
        match self {
            FirstWrite::Claim { id, .. } | FirstWrite::End { id, .. } => id,
        }
    }
}

/// What a [`FirstWrite`] did.
pub(super) enum FirstWritten {
    /// Whether the run was queued (and is now claimed).
    Claimed(bool),
    /// `None`: the run no longer runs under the claim, nothing written;
    /// else whether it still counts (`Tx::end`).
    Ended(Option<bool>),
}

impl FirstWritten {
    pub(super) fn changed(&self) -> bool {
        matches!(self, FirstWritten::Claimed(true) | FirstWritten::Ended(Some(_)))
    }
}

/// Makes a group's first writes: one statement for the claims and one for
/// the ends. One worker never has two writes of a run in a group (it waits
/// for each), but two workers may: the holder's end, and the claim of a
/// stale copy of the run a refill read while it was still queued. A claim
/// and an end of one run decide independently (a claim needs it queued, an
/// end needs it running under the end's claim), so each is made as if
/// alone. Of two claims, or two ends, of one run the first is made; the
/// second finds it taken or ended, as it would have one after the other.
pub(super) fn first_writes(t: &mut Txn<'_>, firsts: &[&FirstWrite]) -> Result<Vec<FirstWritten>, StoreError> {
    let now_ms = t.now_ms();
    let mut written: Vec<FirstWritten> = firsts
        .iter()
        .map(|first| match first {
            FirstWrite::Claim { .. } => FirstWritten::Claimed(false),
            FirstWrite::End { .. } => FirstWritten::Ended(None),
        })
        .collect();
    let (mut claimed, mut ended) = (HashSet::new(), HashSet::new());
    let (mut claims, mut ends) = (Vec::new(), Vec::new());
    for (i, first) in firsts.iter().enumerate() {
        let seen = match first {
            FirstWrite::Claim { .. } => &mut claimed,
            FirstWrite::End { .. } => &mut ended,
        };
        if !seen.insert(first.id()) {
            continue;
        }
        match first {
            FirstWrite::Claim { id, worker, started_ms } => claims.push((i, (id.as_str(), worker.as_str(), *started_ms))),
            FirstWrite::End {
                id,
                claim,
                state,
                reason,
                uncount,
            } => ends.push((
                i,
                id.as_str(),
                claim.as_deref(),
                *state,
                reason.as_deref().map(|r| t.redactor.text(r)),
                *uncount,
            )),
        }
    }
    if !claims.is_empty() {
        let rows: Vec<(&str, &str, i64)> = claims.iter().map(|(_, row)| *row).collect();
        for ((i, _), claimed) in claims.iter().zip(t.tx.claims(&rows)?) {
            written[*i] = FirstWritten::Claimed(claimed);
        }
    }
    if !ends.is_empty() {
        let rows: Vec<(&str, Option<&str>, Ending<'_>)> = ends
            .iter()
            .map(|(_, id, claim, state, reason, uncount)| {
                let ending = Ending {
                    state: *state,
                    reason: reason.as_deref(),
                    finished_ms: now_ms,
                    uncount: *uncount,
                    release_claim: true,
                };
                (*id, *claim, ending)
            })
            .collect();
        for ((i, ..), ended) in ends.iter().zip(t.tx.ends_held(&rows)?) {
            written[*i] = FirstWritten::Ended(ended);
        }
    }
    Ok(written)
}

/// The records of a run's end, after its row was ended (`counts`: it still
/// counts, `Tx::end`).
fn end_records(t: &mut Txn<'_>, held: &Execution, state: State, counts: bool, reason: Option<&str>) -> Result<(), StoreError> {
    // A success that ran no action fixed nothing: not judged.
    effect::ended(t, &held.id, (state == State::Succeeded && counts).then(|| t.now_ms()))?;
    t.append(
        Event::new(kind::EXECUTION_FINISHED, &held.actor, json!({"state": state, "reason": reason})).execution(
            &held.id,
            &held.runbook,
            &held.target,
        ),
    )?;
    Ok(())
}

/// Writes what a worker did since its last write (see [`Pending`]): its
/// claim's record (the claim itself is the job's first write), then the
/// ends of its steps.
fn record_pending(t: &mut Txn<'_>, exec: &Execution, pending: Pending) -> Result<(), StoreError> {
    if let Some(claim) = &pending.claim {
        t.append(started_event(exec, &claim.worker, resumed(exec)))?;
    }
    for step in pending.ended {
        let output = step.output.map(|mut o| {
            t.redactor.in_place(&mut o);
            o
        });
        let output_text = output.as_ref().map(|o| o.to_string());
        let error = step.error.as_ref().map(|e| t.redactor.text(e));
        let key = StepKey {
            execution_id: &exec.id,
            phase: step.phase,
            index: step.index,
            attempt: step.attempt,
        };
        let row = || StepRow {
            state: step.state,
            output: output_text.as_deref(),
            error: error.as_deref(),
            finished_ms: t.now.timestamp_millis(),
        };
        // A step skipped before it started (`when` false) has no row yet.
        t.tx.step_end(key, &step.name, row())?;
        t.append(
            Event::new(
                kind::STEP_FINISHED,
                "pitcrew",
                json!({"step": step.name, "phase": step.phase, "attempt": step.attempt, "outcome": step.state.as_str(), "output": output, "error": error, "error_kind": step.error_kind, "duration_ms": step.duration_ms}),
            )
            .execution(&exec.id, &exec.runbook, &exec.target),
        )?;
    }
    Ok(())
}

/// A read for a backend to run: given a connection, or why there is none.
pub type ReadJob = Box<dyn FnOnce(Result<&mut dyn Read, StoreError>) + Send>;

/// What a backend gives [`Ledger`] besides transactions.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `job` on a read connection, off the async runtime's threads.
    fn read(&self, job: ReadJob);
    /// Whether a failing store should try a small write to see if it
    /// recovered (a full disk needs room first).
    fn may_probe(&self) -> bool {
        true
    }
    /// This process as named in claims.
    fn worker_id(&self) -> String;

    /// Whether this process may run the background chores now (one
    /// process at a time where several share the store).
    async fn lead_chores(&self) -> bool {
        true
    }
}

/// A [`Store`] over any backend: the rules of this module, group-committed
/// writes through the backend's writer, reads from a small pool.
pub struct Ledger<B: Backend> {
    pub(super) backend: B,
    pub(super) queue: WriteQueue,
    pub(super) health: SharedHealth,
    pub(super) clock: std::sync::Arc<dyn Clock>,
    /// Where the last `prune` stopped (the backend's position), so a pass
    /// walks the oldest executions once; 0 starts a new pass.
    prune_cursor: AtomicI64,
    /// For executions as shown to people (`execution`, `executions`).
    redactor: Redactor,
}

impl<B: Backend> Ledger<B> {
    pub(super) fn new(
        backend: B,
        queue: WriteQueue,
        health: SharedHealth,
        clock: std::sync::Arc<dyn Clock>,
        redactor: Redactor,
    ) -> Ledger<B> {
        Ledger {
            backend,
            queue,
            health,
            clock,
            prune_cursor: AtomicI64::new(0),
            redactor,
        }
    }

    /// Runs `f` in the next group commit; resolves after the commit.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue.write(f).await
    }

    /// A write of a run this worker holds: its claim, when `pending`
    /// carries one (a first write, shared with the group's), or else a
    /// check that the claim still holds (fencing), then `f`.
    async fn write_held<T, F>(&self, execution: &Execution, pending: Pending, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>, &Execution, Pending) -> Result<T, StoreError> + Send + 'static,
    {
        let held = execution.clone();
        let Some(claim) = &pending.claim else {
            return self
                .write(move |t| {
                    fence(t, &held)?;
                    f(t, &held, pending)
                })
                .await;
        };
        let first = FirstWrite::Claim {
            id: held.id.clone(),
            worker: claim.worker.clone(),
            started_ms: claim.started_at.timestamp_millis(),
        };
        self.queue
            .write_after(first, move |t, written| {
                // No longer queued: taken by another worker, or cancelled.
                if !matches!(written, FirstWritten::Claimed(true)) {
                    return Err(StoreError::Taken(held.id.clone()));
                }
                f(t, &held, pending)
            })
            .await
    }

    /// Runs `f` on one of the backend's read connections.
    pub(super) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Read) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.backend.read(Box::new(move |conn| {
            let _ = tx.send(conn.and_then(f));
        }));
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait::async_trait]
impl<B: Backend> Store for Ledger<B> {
    async fn intake(&self, alerts: Vec<IntakeAlert>, config: std::sync::Arc<Config>) -> Result<IntakeResult, StoreError> {
        self.write(move |t| intake(t, alerts, &config)).await
    }

    async fn admit(&self, admission: Admission, alert: Option<Alert>, config: std::sync::Arc<Config>) -> Result<Decision, StoreError> {
        self.write(move |t| {
            // Who may start it by hand: decided here, so neither door (CLI,
            // API) can skip it, and the refusal is audited with it.
            if !admission.automated {
                let rb = &admission.runbook;
                let allowed = crate::authz::check(&config, rb.permissions.as_ref(), &rb.name, &admission.actor, Action::Run, None);
                if let Err(refusal) = allowed {
                    t.append(refused(&refusal).runbook(&rb.name, &admission.target))?;
                    return Ok(Err(StoreError::NotPermitted(refusal)));
                }
            }
            // A manual run given an alert keeps it for templates and the timeline;
            // it is no delivery, so it never counts as one for dedupe.
            let given = match &alert {
                Some(a) => Some(AlertRef::Given(
                    a,
                    serde_json::to_string(a).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )),
                None => None,
            };
            admit_in(t, &admission, given, false, &config).map(Ok)
        })
        .await?
    }

    async fn preview(&self, adm: Admission, config: std::sync::Arc<Config>) -> Result<Decision, StoreError> {
        let now_ms = self.clock.now().timestamp_millis();
        self.read(move |conn| decide(conn, &adm, &config, now_ms, None, false).map(|(d, _)| d))
            .await
    }

    async fn claim(&self, worker: &str, id: Option<String>) -> Result<Option<Execution>, StoreError> {
        let worker = worker.to_string();
        self.write(move |t| {
            let Some(id) = t.tx.oldest_queued(id.as_deref())? else {
                return Ok(None);
            };
            // The same claim as a worker's first record (`record_pending`).
            let now_ms = t.now_ms();
            if !t.tx.claim(&id, &worker, now_ms)? {
                return Ok(None);
            }
            let exec = t.load(&id)?;
            t.append(started_event(&exec, &worker, resumed(&exec)))?;
            Ok(Some(exec))
        })
        .await
    }

    async fn queued(&self, limit: usize, exclude: HashSet<String>) -> Result<(Vec<Execution>, bool), StoreError> {
        self.read(move |conn| {
            // Enough to fill `limit` past the ones already in memory, and one
            // more to tell whether any remain.
            let oldest = conn.queued_ids(limit.saturating_add(exclude.len()).saturating_add(1))?;
            let mut ids: Vec<String> = oldest.into_iter().filter(|id| !exclude.contains(id)).collect();
            let exhausted = ids.len() <= limit;
            ids.truncate(limit);
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                // Gone between the two reads (claimed and pruned): skipped.
                if let Some(e) = conn.execution(&id)? {
                    found.push(e);
                }
            }
            Ok((found, exhausted))
        })
        .await
    }

    async fn step_started(&self, execution: &Execution, pending: Pending, step: StepStart) -> Result<(), StoreError> {
        self.write_held(execution, pending, move |t, held, pending| {
            record_pending(t, held, pending)?;
            let (id, runbook, target) = (&held.id, &held.runbook, &held.target);
            let mut input = step.input;
            t.redactor.in_place(&mut input);
            let key = StepKey {
                execution_id: id,
                phase: step.phase,
                index: step.index,
                attempt: step.attempt,
            };
            let ms = t.now_ms();
            t.tx.step_start(key, &step.name, &step.action, step.idempotent, &input.to_string(), ms)?;
            t.append(
                Event::new(
                    kind::STEP_STARTED,
                    "pitcrew",
                    json!({"step": step.name, "action": step.action, "phase": step.phase, "attempt": step.attempt, "idempotent": step.idempotent, "dry_run": step.dry_run, "input": input}),
                )
                .execution(id, runbook, target),
            )?;
            Ok(())
        })
        .await
    }

    async fn record_pending(&self, execution: &Execution, pending: Pending) -> Result<(), StoreError> {
        if pending.is_empty() {
            return Ok(());
        }
        self.write_held(execution, pending, record_pending).await
    }

    async fn release(&self, execution: &Execution) -> Result<(), StoreError> {
        let held = execution.clone();
        self.write(move |t| {
            fence(t, &held)?;
            // Its steps' records may be behind what ran (the failed write may
            // have carried a step's end): the same rule as after a crash.
            let exec = t.load(&held.id)?;
            requeue(t, &exec, "pitcrew", "had no recorded end when a state write failed")?;
            Ok(())
        })
        .await
    }

    async fn finish(&self, execution: &Execution, pending: Pending, state: State, reason: Option<String>) -> Result<(), StoreError> {
        // A run that never started an action (its first step failed to
        // render, every step was skipped by `when`) changed nothing on its
        // target: like a run cancelled before it started, it does not start
        // a cooldown or use a limit. Asked of the steps table, not of the
        // execution as claimed, which lacks the steps this worker ran since
        // (or resumed). A step that started an action has its row from its
        // start, a write of its own before the action ran; `pending` holds
        // only ends. A dry run never counted: nothing to ask.
        let uncount = if execution.dry_run {
            Uncount::No
        } else {
            Uncount::UnlessAnActionStarted
        };
        if pending.claim.is_some() {
            // Claimed by this very write (no step started): the claim is its fence.
            return self
                .write_held(execution, pending, move |t, held, pending| {
                    record_pending(t, held, pending)?;
                    let reason = reason.map(|r| t.redactor.text(&r));
                    let ending = Ending {
                        state,
                        reason: reason.as_deref(),
                        finished_ms: t.now_ms(),
                        uncount,
                        release_claim: true,
                    };
                    let counts = t.tx.end(&held.id, ending)?;
                    end_records(t, held, state, counts, reason.as_deref())
                })
                .await;
        }
        // Fencing, as for a step's start: a run recovered from under this
        // worker is the new claimer's to end. The end checks the claim
        // itself, as the group's first write: a fenced job writes nothing.
        let held = execution.clone();
        let first = FirstWrite::End {
            id: held.id.clone(),
            claim: held.claimed_by.clone(),
            state,
            reason: reason.clone(),
            uncount,
        };
        self.queue
            .write_after(first, move |t, written| {
                let FirstWritten::Ended(Some(counts)) = written else {
                    return Err(StoreError::ClaimLost(held.id.clone()));
                };
                record_pending(t, &held, pending)?;
                let reason = reason.map(|r| t.redactor.text(&r));
                end_records(t, &held, state, counts, reason.as_deref())
            })
            .await
    }

    async fn recover(&self, is_alive: Liveness) -> Result<Recovery, StoreError> {
        self.write(move |t| {
            let mut report = Recovery::default();
            for (id, claimer) in t.tx.running()? {
                if claimer.as_deref().is_some_and(|c| is_alive(c)) {
                    continue;
                }
                let exec = t.load(&id)?;
                let cause = "was interrupted by a crash";
                if requeue(t, &exec, "system:recovery", cause)? {
                    report.unknown.push(exec.id);
                } else {
                    report.resumed.push(exec.id);
                }
            }
            Ok(report)
        })
        .await
    }

    async fn approve(&self, id: &str, approver: &str, rules: Approvers) -> Result<Execution, StoreError> {
        let (id, approver) = (id.to_string(), approver.to_string());
        // The inner result lets a refusal keep what it wrote (the expiry, or
        // the refused self-approval).
        self.write(move |t| {
            let exec = t.load(&id)?;
            if exec.state != State::PendingApproval {
                return Ok(Err(StoreError::WrongState {
                    id,
                    state: exec.state.to_string(),
                }));
            }
            if exec.approval_deadline.is_some_and(|d| d.timestamp_millis() <= t.now_ms()) {
                // Past its deadline but not swept yet (no `serve` running):
                // it expired, whoever answers now.
                expire_approval(t, &exec.id, &exec.runbook, &exec.target)?;
                return Ok(Err(StoreError::WrongState {
                    id,
                    state: State::Cancelled.to_string(),
                }));
            }
            // Permissions, then the two-person rule. Decided here, in the
            // transaction, against the stored requester, so no caller can
            // skip them. Refusals are audited: an attempt to approve one's
            // own run is what a reviewer of the log wants to see, and the
            // identities are authenticated (real uid, API token, signed Slack
            // request), so nobody outside can fill the log.
            let requester = exec.actor.clone();
            if let Err(refusal) = rules.check(&exec.runbook, &approver, Action::Approve, Some(&requester)) {
                t.append(refused(&refusal).execution(&exec.id, &exec.runbook, &exec.target))?;
                return Ok(Err(StoreError::NotPermitted(refusal)));
            }
            if crate::authz::same_person(&requester, &approver) && !rules.may_self_approve(&exec.runbook) {
                t.append(
                    Event::new(
                        kind::APPROVAL_REFUSED,
                        &approver,
                        json!({
                            "requester": requester,
                            "approver": approver,
                            "reason": "two-person rule: the requester may not approve their own run",
                        }),
                    )
                    .execution(&exec.id, &exec.runbook, &exec.target),
                )?;
                return Ok(Err(StoreError::SelfApproval { id, requester, approver }));
            }
            let now_ms = t.now_ms();
            t.tx.approved(&id, now_ms)?;
            t.append(
                Event::new(
                    kind::APPROVAL_GRANTED,
                    &approver,
                    json!({"pending_reason": exec.reason, "requester": requester, "approver": approver}),
                )
                .execution(&exec.id, &exec.runbook, &exec.target),
            )?;
            t.load(&id).map(Ok)
        })
        .await?
    }

    async fn deny(&self, id: &str, actor: &str, reason: Option<String>, rules: Approvers) -> Result<Execution, StoreError> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.write(move |t| {
            let exec = t.load(&id)?;
            if exec.state != State::PendingApproval {
                return Ok(Err(StoreError::WrongState {
                    id,
                    state: exec.state.to_string(),
                }));
            }
            if let Err(refusal) = rules.check(&exec.runbook, &actor, Action::Deny, Some(&exec.actor)) {
                t.append(refused(&refusal).execution(&exec.id, &exec.runbook, &exec.target))?;
                return Ok(Err(StoreError::NotPermitted(refusal)));
            }
            let why = format!(
                "denied by {actor}{}",
                reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            );
            let finished_ms = t.now_ms();
            t.tx.end(
                &id,
                Ending {
                    state: State::Cancelled,
                    reason: Some(&why),
                    finished_ms,
                    uncount: Uncount::No,
                    release_claim: false,
                },
            )?;
            effect::ended(t, &id, None)?;
            t.append(
                Event::new(
                    kind::APPROVAL_DENIED,
                    &actor,
                    json!({"reason": reason, "requester": exec.actor, "approver": actor}),
                )
                .execution(&exec.id, &exec.runbook, &exec.target),
            )?;
            t.append(
                Event::new(kind::EXECUTION_FINISHED, &actor, json!({"state": "cancelled", "reason": why})).execution(
                    &exec.id,
                    &exec.runbook,
                    &exec.target,
                ),
            )?;
            t.load(&id).map(Ok)
        })
        .await?
    }

    async fn expire_approvals(&self) -> Result<Vec<String>, StoreError> {
        self.write(move |t| {
            let now_ms = t.now_ms();
            let expired = t.tx.expired_approvals(now_ms)?;
            for (id, runbook, target) in &expired {
                expire_approval(t, id, runbook, target)?;
            }
            Ok(expired.into_iter().map(|(id, _, _)| id).collect())
        })
        .await
    }

    async fn breakers(&self) -> Result<Vec<Breaker>, StoreError> {
        self.read(|conn| conn.breakers()).await
    }

    async fn recent_runs(&self, runbook: &str, since: DateTime<Utc>, limit: usize) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let (runbook, since_ms) = (runbook.to_string(), since.timestamp_millis());
        self.read(move |conn| {
            Ok(conn
                .recent_runs(&runbook, since_ms, limit)?
                .into_iter()
                .map(|(target, ms)| (target, ts(ms)))
                .collect())
        })
        .await
    }

    fn commits(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.queue.commits())
    }

    async fn reset_breaker(&self, runbook: &str, target: &str, actor: &str) -> Result<bool, StoreError> {
        let (runbook, target, actor) = (runbook.to_string(), target.to_string(), actor.to_string());
        self.write(move |t| {
            let now_ms = t.now_ms();
            // Runs before the reset no longer count toward escalate_after.
            let reset = t.tx.breaker_reset(&runbook, &target, now_ms)?;
            if reset {
                t.append(Event::new(kind::ESCALATION_RESET, &actor, json!({})).runbook(&runbook, &target))?;
            }
            Ok(reset)
        })
        .await
    }

    async fn record(&self, events: Vec<Event>) -> Result<(), StoreError> {
        self.write(move |t| {
            for e in events {
                t.append(e)?;
            }
            Ok(())
        })
        .await
    }

    async fn execution(&self, id: &str) -> Result<Execution, StoreError> {
        let id = id.to_string();
        let redactor = self.redactor.clone();
        self.read(move |conn| {
            let exec = conn.execution(&id)?.ok_or(StoreError::NotFound(id))?;
            Ok(shown(exec, &redactor))
        })
        .await
    }

    async fn resolve_id(&self, prefix: &str) -> Result<String, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |conn| {
            // A shorter prefix is no abbreviation, only maybe a whole id
            // (which sorts first among the ids it starts).
            let short = prefix.chars().count() < MIN_ID_PREFIX;
            let mut found = conn.ids_with_prefix(&prefix, if short { 1 } else { AMBIGUOUS_SHOWN + 1 })?;
            match found.first() {
                Some(first) if *first == prefix || (found.len() == 1 && !short) => Ok(found.swap_remove(0)),
                Some(_) if !short => {
                    let more = found.len() > AMBIGUOUS_SHOWN;
                    found.truncate(AMBIGUOUS_SHOWN);
                    Err(StoreError::Ambiguous {
                        prefix,
                        candidates: found,
                        more,
                    })
                }
                _ => Err(StoreError::NotFound(prefix)),
            }
        })
        .await
    }

    async fn executions(&self, filter: ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        let redactor = self.redactor.clone();
        self.read(move |conn| Ok(conn.executions(&filter)?.into_iter().map(|e| shown(e, &redactor)).collect()))
            .await
    }

    async fn audit(&self, filter: AuditFilter) -> Result<Vec<Record>, StoreError> {
        self.read(move |conn| {
            conn.audit(&filter)?
                .into_iter()
                .map(|(stored, prev)| {
                    Record::from_stored(stored, prev.as_deref())
                        .map_err(|e| StoreError::Corrupt(format!("audit record data does not parse: {e}")))
                })
                .collect()
        })
        .await
    }

    async fn verify_audit(&self) -> Result<Result<u64, crate::audit::Broken>, StoreError> {
        self.read(move |conn| {
            // Walked in order, one record at a time: the whole log never sits
            // in memory, and each record's `prev_hash` is the hash before it.
            let mut prev = audit::GENESIS.to_string();
            let mut expected = 1u64;
            let mut broken = None;
            conn.audit_walk(&mut |stored| {
                let seq = stored.seq;
                let hash = hex::encode(&stored.hash);
                let record = match Record::from_stored(stored, None) {
                    Ok(r) => Record {
                        prev_hash: prev.clone(),
                        ..r
                    },
                    Err(e) => {
                        broken = Some(crate::audit::Broken {
                            seq,
                            reason: format!("record data is not valid JSON: {e}"),
                        });
                        return false;
                    }
                };
                if let Err(b) = audit::verify_from(&record, expected, &prev) {
                    broken = Some(b);
                    return false;
                }
                prev = hash;
                expected += 1;
                true
            })?;
            Ok(match broken {
                Some(b) => Err(b),
                None => Ok(expected - 1),
            })
        })
        .await
    }

    async fn seen(&self, alert: &Alert, config: std::sync::Arc<Config>) -> Result<Seen, StoreError> {
        let id = alert.dedupe_id();
        let now_ms = self.clock.now().timestamp_millis();
        self.read(move |conn| {
            Ok(match dedupe(conn, &id, now_ms, &config)? {
                Dedupe::New => Seen::New,
                Dedupe::Duplicate => Seen::Duplicate,
                Dedupe::Reconsider(_) => Seen::Reconsidered,
            })
        })
        .await
    }

    async fn health(&self) -> Health {
        let now = self.health.lock().expect("health lock").clone();
        if let Health::Failing(why) = now {
            if !self.backend.may_probe() {
                return Health::Failing(why);
            }
            // Nothing else may be writing (a readiness probe keeps the
            // process out of service): a small write tells whether the
            // store takes writes again.
            let _ = self.write(|t| t.tx.probe()).await;
            return self.health.lock().expect("health lock").clone();
        }
        now
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn worker_id(&self) -> String {
        self.backend.worker_id()
    }

    async fn lead_chores(&self) -> bool {
        self.backend.lead_chores().await
    }

    async fn prune(&self, before: DateTime<Utc>, limit: usize) -> Result<Pruned, StoreError> {
        let from = self.prune_cursor.load(Ordering::Relaxed);
        let before_ms = before.timestamp_millis();
        let storm_cutoff = self.clock.now().timestamp_millis() - STORM_WINDOW.as_millis() as i64;
        let firing_cutoff = self.clock.now().timestamp_millis() - inhibit::FIRING_EXPIRES.as_millis() as i64;
        let (pruned, last) = self
            .write(move |t| {
                // Alerts whose resolve never came fire no more.
                t.tx.firing_forget(firing_cutoff, limit)?;
                t.tx.prune(from, limit, before_ms, storm_cutoff)
            })
            .await?;
        // Moved only once the deletes are committed: a batch rolled back with
        // its group is walked again.
        self.prune_cursor.store(if pruned.more { last } else { 0 }, Ordering::Relaxed);
        Ok(pruned)
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        self.read(|conn| conn.queue_depth()).await
    }

    async fn judge_effectiveness(&self) -> Result<usize, StoreError> {
        self.write(|t| effect::judge_due(t, None, effect::BATCH)).await
    }

    async fn effectiveness(&self) -> Result<Vec<Effectiveness>, StoreError> {
        self.read(|conn| conn.effectiveness(None)).await
    }

    async fn report_tally(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<crate::report::Tally, StoreError> {
        self.read(move |conn| {
            let mut tally = crate::report::Tally::default();
            conn.report_runs(since.timestamp_millis(), until.timestamp_millis(), &mut |run| tally.run(run))?;
            conn.report_records(since.timestamp_micros(), until.timestamp_micros(), &mut |record| {
                tally.record(record)
            })?;
            Ok(tally)
        })
        .await
    }
}
