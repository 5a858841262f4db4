//! `pitcrew simulate`: recorded notifications replayed through matching and
//! every guardrail on a virtual clock, against a scratch store in a temp
//! folder that is removed afterwards. The real state is never opened, no
//! action runs and no notice is sent.
//!
//! The decisions are the engine's own: each notification goes through
//! [`Engine::intake`] with the scratch store's clock set to the moment it
//! arrived, so dedupe and re-sends, cooldowns, rate limits, concurrency, the
//! storm brake, escalation, budgets and approvals decide exactly as `serve`
//! would. A run that is let through is taken to start and end at that same
//! instant, recorded in the scratch store as the engine records a run (its
//! claim, each step's start and end, its end), so later decisions see it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::alert::{Alert, AlertStatus, WireAlert};
use crate::audit::kind;
use crate::clock::ManualClock;
use crate::config::{Config, Sli};
use crate::engine::Engine;
use crate::guard::Verdict;
use crate::runbook::RunbookSet;
use crate::store::sqlite::SqliteStore;
use crate::store::{ExecutionFilter, Pending, Phase, State, StepEnd, StepStart, StepState, Store, StoreError};
use crate::units::Duration;

/// A simulation that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// A line of the history file is not a notification or an audit record.
    #[error("{file}:{line}: {field}: {reason}")]
    Line {
        file: String,
        line: usize,
        field: String,
        reason: String,
    },
    /// The history holds no notification at all.
    #[error("{0}: no notifications to replay")]
    Empty(String),
    /// Prometheus could not give the alert history.
    #[error("prometheus: {0}")]
    Prometheus(String),
    /// The scratch store's folder could not be made.
    #[error("cannot make the scratch store's folder")]
    Scratch(#[source] std::io::Error),
    /// The scratch store failed.
    #[error("scratch store: {0}")]
    Store(#[from] StoreError),
}

/// One webhook delivery as it arrived.
#[derive(Debug, Clone)]
pub struct Notification {
    pub at: DateTime<Utc>,
    pub alerts: Vec<Alert>,
}

/// What the history file held besides the notifications replayed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Source {
    /// `jsonl` (`{"at", "body"}` lines), `audit` (an audit export) or `prometheus`.
    pub format: &'static str,
    /// Re-sends in an audit export (`alert.duplicate`, `alert.reconsidered`)
    /// whose `alert.received` is not in the export, so their alert is unknown.
    pub skipped_resends: usize,
}

/// One guardrail decision of the simulation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimDecision {
    pub at: String,
    pub runbook: String,
    pub target: String,
    pub verdict: Verdict,
    /// The guardrail that blocked or asked for approval; `null` for a run.
    pub guardrail: Option<String>,
    pub reason: String,
    /// How a run ended (`succeeded`, or `failed` under `--assume-fail`);
    /// `null` when it did not run.
    pub outcome: Option<State>,
    /// The run was a dry run (shadow mode): decided and recorded, touching nothing.
    pub dry_run: bool,
}

/// Notifications as intake counted them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub notifications: usize,
    pub alerts: usize,
    pub accepted: usize,
    pub duplicates: usize,
    pub reconsidered: usize,
    /// Runs not started yet that a resolved notification cancelled.
    pub cancelled: usize,
}

/// The budget one SLO gave the simulation.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetUse {
    pub slo: String,
    /// `static` (the config's `static_remaining`) or `prometheus` (evaluated
    /// at the notification's time).
    pub source: &'static str,
    pub evaluations: usize,
    /// Evaluations that gave no value (treated as freeze, like `serve`).
    pub unknown: usize,
    /// Why the last unknown one was unknown.
    pub error: Option<String>,
}

/// The outcome of a simulation.
#[derive(Debug, Clone, Serialize)]
pub struct Simulation {
    pub decisions: Vec<SimDecision>,
    pub report: Value,
    pub notifications: Counts,
    pub budgets: Vec<BudgetUse>,
    pub source: Source,
}

/// What the simulation assumes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Runbooks whose runs fail at their first step (then `on_failure` runs).
    pub assume_fail: BTreeSet<String>,
}

/// How often `serve` refreshes budgets; the simulation does the same on its clock.
const BUDGET_REFRESH: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// The reason the store gives a run whose approval timed out.
const APPROVAL_TIMED_OUT: &str = "approval timed out";

/// The reason a run failed under `--assume-fail`.
const ASSUMED_FAILURE: &str = "assumed to fail (simulate --assume-fail)";

/// Reads a history file: JSON lines `{"at": RFC3339, "body": <webhook
/// body>}`, or an audit export (`pitcrew audit export`), whose
/// `alert.received` records are replayed at their `ts`, and whose
/// re-sends (`alert.duplicate`, `alert.reconsidered`) are replayed too, as
/// the alert received before with the same fingerprint, status and
/// `startsAt`. The whole file is checked before anything is replayed.
pub fn parse_history(file: &str, text: &str) -> Result<(Vec<Notification>, Source), SimulateError> {
    let bad = |line: usize, field: &str, reason: String| SimulateError::Line {
        file: file.to_string(),
        line,
        field: field.to_string(),
        reason,
    };
    let mut out = Vec::new();
    let mut source = Source::default();
    let mut received: HashMap<String, Alert> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(raw).map_err(|e| bad(line, "line", format!("not JSON: {e}")))?;
        let Value::Object(obj) = &value else {
            return Err(bad(line, "line", "expected a JSON object".into()));
        };
        let format = if obj.contains_key("body") || obj.contains_key("at") {
            "jsonl"
        } else if obj.contains_key("kind") && obj.contains_key("seq") {
            "audit"
        } else {
            return Err(bad(
                line,
                "line",
                "neither a notification ({\"at\", \"body\"}) nor an audit record (`pitcrew audit export`)".into(),
            ));
        };
        if source.format.is_empty() {
            source.format = format;
        } else if source.format != format {
            return Err(bad(
                line,
                "line",
                format!("a {format} line in a file of {} lines: one format per file", source.format),
            ));
        }
        if format == "jsonl" {
            if let Some(extra) = obj.keys().find(|k| !matches!(k.as_str(), "at" | "body")) {
                return Err(bad(line, extra, "unknown field (expected `at` and `body`)".into()));
            }
            let at = time(obj.get("at")).map_err(|reason| bad(line, "at", reason))?;
            let body = obj.get("body").ok_or_else(|| bad(line, "body", "missing".into()))?;
            let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
            let delivery = crate::alert::parse_webhook(&bytes, at).map_err(|e| bad(line, "body", e.to_string()))?;
            out.push(Notification {
                at,
                alerts: delivery.alerts,
            });
            continue;
        }
        let record: crate::audit::Record =
            serde_json::from_value(value.clone()).map_err(|e| bad(line, "record", format!("not an audit record: {e}")))?;
        let resend = match record.kind.as_str() {
            kind::ALERT_RECEIVED => false,
            kind::ALERT_DUPLICATE | kind::ALERT_RECONSIDERED => true,
            _ => continue,
        };
        let at = time(Some(&Value::String(record.ts.clone()))).map_err(|reason| bad(line, "ts", reason))?;
        let alert = if resend {
            let key = resend_key(&record.data).map_err(|reason| bad(line, "data", reason))?;
            match received.get(&key) {
                Some(alert) => alert.clone(),
                None => {
                    source.skipped_resends += 1;
                    continue;
                }
            }
        } else {
            let alert: Alert = serde_json::from_value(record.data.clone()).map_err(|e| bad(line, "data", format!("not an alert: {e}")))?;
            received.insert(alert.dedupe_key(), alert.clone());
            alert
        };
        out.push(Notification { at, alerts: vec![alert] });
    }
    if out.is_empty() {
        return Err(SimulateError::Empty(file.to_string()));
    }
    // Replayed in the order they arrived; equal times keep the file's order.
    out.sort_by_key(|n| n.at);
    Ok((out, source))
}

fn time(value: Option<&Value>) -> Result<DateTime<Utc>, String> {
    match value {
        None => Err("missing".into()),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}")),
        Some(other) => Err(format!("expected an RFC 3339 time as a string, got {other}")),
    }
}

/// The dedupe key of a re-send record (fingerprint, status, startsAt).
fn resend_key(data: &Value) -> Result<String, String> {
    let text = |name: &str| data.get(name).and_then(Value::as_str).ok_or_else(|| format!("no `{name}`"));
    let starts_at = DateTime::parse_from_rfc3339(text("startsAt")?).map_err(|e| format!("startsAt: {e}"))?;
    Ok(format!(
        "{}|{}|{}",
        text("fingerprint")?,
        text("status")?,
        starts_at.with_timezone(&Utc).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    ))
}

/// Replays `history` against a scratch store with `config`'s guardrails and
/// `runbooks`. Nothing outside the scratch folder is written; the only IO
/// besides it is reading budgets from Prometheus for SLOs that use it.
pub async fn simulate(
    config: &Config,
    runbooks: Arc<RunbookSet>,
    history: Vec<Notification>,
    source: Source,
    options: &Options,
) -> Result<Simulation, SimulateError> {
    let scratch = tempfile::Builder::new()
        .prefix("pitcrew-simulate-")
        .tempdir()
        .map_err(SimulateError::Scratch)?;
    let mut config = config.clone();
    // The scratch store, and nothing that reaches out: no notices, no
    // checkpoints, no pruning, never the real store.
    config.state_dir = scratch.path().to_path_buf();
    config.store = None;
    config.notify_url = None;
    config.notify_on = Vec::new();
    config.checkpoint = None;
    config.retention = None;
    let config = Arc::new(config);
    let start = history.first().map_or_else(Utc::now, |n| n.at);
    let clock = ManualClock::new(start);
    // Thrown away afterwards: nothing to wait for the disk for.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_with(
        scratch.path(),
        config.redactor.clone(),
        Arc::new(clock.clone()),
        crate::store::sqlite::Durability::Scratch,
    )?);
    let engine = Engine::new(config.clone(), runbooks.clone(), store.clone());
    let result = replay(&engine, &clock, &runbooks, history, options).await;
    // The store's threads let go of the folder before it is removed.
    drop(engine);
    drop(store);
    let (decisions, notifications, budgets, report) = result?;
    drop(scratch);
    Ok(Simulation {
        decisions,
        report,
        notifications,
        budgets,
        source,
    })
}

type Replayed = (Vec<SimDecision>, Counts, Vec<BudgetUse>, Value);

async fn replay(
    engine: &Engine,
    clock: &ManualClock,
    set: &RunbookSet,
    history: Vec<Notification>,
    options: &Options,
) -> Result<Replayed, SimulateError> {
    let store = engine.store.clone();
    let config = engine.config().clone();
    let worker = store.worker_id();
    let slos: BTreeSet<&str> = set.runbooks.iter().filter_map(|r| r.guardrails.slo.as_deref()).collect();
    let mut budgets: BTreeMap<String, BudgetUse> = BTreeMap::new();
    let mut refreshed: Option<DateTime<Utc>> = None;
    // Approval deadlines of runs waiting: nobody answers in a simulation,
    // so each waits until its `approval_timeout`, as under `serve`.
    let mut deadlines: BTreeSet<DateTime<Utc>> = BTreeSet::new();
    let mut decisions = Vec::new();
    let mut counts = Counts::default();
    let (since, until) = (history.first().map(|n| n.at), history.last().map(|n| n.at));
    for notification in history {
        let at = notification.at;
        while let Some(&due) = deadlines.first().filter(|d| **d <= at) {
            deadlines.pop_first();
            clock.set(due);
            store.expire_approvals().await?;
        }
        clock.set(at);
        if !slos.is_empty() && refreshed.is_none_or(|last| at - last >= BUDGET_REFRESH) {
            refreshed = Some(at);
            for b in engine.budgets.refresh(at).await {
                let Some(slo) = config.slo(&b.slo) else { continue };
                let used = budgets.entry(b.slo.clone()).or_insert_with(|| BudgetUse {
                    slo: b.slo.clone(),
                    source: if matches!(slo.sli, Sli::Static(_)) {
                        "static"
                    } else {
                        "prometheus"
                    },
                    evaluations: 0,
                    unknown: 0,
                    error: None,
                });
                used.evaluations += 1;
                if b.remaining.is_none() {
                    used.unknown += 1;
                    used.error = b.error.clone();
                }
            }
        }
        counts.notifications += 1;
        counts.alerts += notification.alerts.len();
        let result = engine.intake(notification.alerts).await?;
        counts.accepted += result.accepted;
        counts.duplicates += result.duplicates;
        counts.reconsidered += result.reconsidered;
        counts.cancelled += result.cancelled;
        for (id, decision) in &result.executions {
            let (exec, outcome) = if decision.verdict == Verdict::Run {
                let (exec, state) = run_instantly(&*store, set, &worker, id, &options.assume_fail).await?;
                (exec, Some(state))
            } else {
                (store.execution(id).await?, None)
            };
            if let Some(deadline) = exec.approval_deadline {
                deadlines.insert(deadline);
            }
            decisions.push(SimDecision {
                at: at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                runbook: exec.runbook,
                target: exec.target,
                verdict: decision.verdict,
                guardrail: (decision.verdict != Verdict::Run).then(|| decision.decided_by.to_string()),
                reason: decision.reason.clone(),
                outcome,
                dry_run: decision.dry_run,
            });
        }
    }
    let report = summary(&*store, &decisions, since, until, counts.accepted).await?;
    Ok((decisions, counts, budgets.into_values().collect(), report))
}

/// A run let through, taken to start and end at once: recorded as the
/// engine records one (claim, each step's start and end, the run's end),
/// without running any action. A run of a runbook in `assume_fail` fails at
/// its first step, and its `on_failure` steps run.
async fn run_instantly(
    store: &dyn Store,
    set: &RunbookSet,
    worker: &str,
    id: &str,
    assume_fail: &BTreeSet<String>,
) -> Result<(crate::store::Execution, State), SimulateError> {
    let exec = store
        .claim(worker, Some(id.to_string()))
        .await?
        .ok_or_else(|| StoreError::WrongState {
            id: id.to_string(),
            state: "not queued right after it was admitted".into(),
        })?;
    let rb = set
        .get(&exec.runbook)
        .ok_or_else(|| StoreError::NotFound(format!("runbook {}", exec.runbook)))?
        .clone();
    let fail = assume_fail.contains(&rb.name);
    let mut pending = Pending::default();
    let mut failure = None;
    let phases = [(Phase::Main, &rb.steps), (Phase::OnFailure, &rb.on_failure)];
    for (phase, steps) in phases {
        if phase == Phase::OnFailure && failure.is_none() {
            break;
        }
        for (index, step) in steps.iter().enumerate() {
            let start = StepStart {
                phase,
                index: index as u32,
                name: step.name.clone(),
                action: step.action.spec().name.clone(),
                attempt: 0,
                idempotent: step.idempotent,
                input: json!({"simulated": true}),
                dry_run: exec.dry_run,
            };
            store.step_started(&exec, std::mem::take(&mut pending), start).await?;
            let fails = fail && phase == Phase::Main && index == 0;
            let state = match (fails, exec.dry_run) {
                (true, _) => StepState::Failed,
                (false, true) => StepState::Skipped,
                (false, false) => StepState::Succeeded,
            };
            pending.ended.push(StepEnd {
                phase,
                index: index as u32,
                name: step.name.clone(),
                attempt: 0,
                state,
                output: (!fails).then(|| json!({"simulated": true})),
                error: fails.then(|| ASSUMED_FAILURE.to_string()),
                error_kind: fails.then(|| "simulated".to_string()),
                duration_ms: 0,
            });
            if fails {
                failure = Some(format!("step `{}` failed: {ASSUMED_FAILURE}", step.name));
                break;
            }
        }
    }
    let state = if failure.is_some() { State::Failed } else { State::Succeeded };
    store.finish(&exec, pending, state, failure).await?;
    Ok((exec, state))
}

/// Runs by state name.
type Tally = BTreeMap<&'static str, u64>;

/// The simulation's summary, from the scratch store: runs by the state
/// they ended in (or wait in), blocks by guardrail, per runbook.
async fn summary(
    store: &dyn Store,
    decisions: &[SimDecision],
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    alerts_received: usize,
) -> Result<Value, SimulateError> {
    let zero = || -> Tally { State::ALL.iter().map(|s| (s.as_str(), 0)).collect() };
    let mut runs = zero();
    let mut per_runbook: BTreeMap<String, (Tally, BTreeMap<String, u64>)> = BTreeMap::new();
    let mut expired = 0;
    let mut after = None;
    loop {
        let page = store
            .executions(ExecutionFilter {
                limit: 1000,
                after: after.clone(),
                ..Default::default()
            })
            .await?;
        after = page.last().map(|e| e.id.clone());
        for e in &page {
            expired += u64::from(e.state == State::Cancelled && e.reason.as_deref() == Some(APPROVAL_TIMED_OUT));
            *runs.entry(e.state.as_str()).or_default() += 1;
            let entry = per_runbook.entry(e.runbook.clone()).or_insert_with(|| (zero(), BTreeMap::new()));
            *entry.0.entry(e.state.as_str()).or_default() += 1;
        }
        if page.len() < 1000 {
            break;
        }
    }
    let mut blocked_by: BTreeMap<String, u64> = BTreeMap::new();
    let mut escalations = 0;
    for d in decisions.iter().filter(|d| d.verdict == Verdict::Blocked) {
        let guardrail = d.guardrail.clone().unwrap_or_default();
        escalations += u64::from(guardrail == "escalated");
        *blocked_by.entry(guardrail.clone()).or_default() += 1;
        if let Some(entry) = per_runbook.get_mut(&d.runbook) {
            *entry.1.entry(guardrail).or_default() += 1;
        }
    }
    let shown = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    Ok(json!({
        "since": shown(since),
        "until": shown(until),
        "alerts_received": alerts_received,
        "runs": runs,
        "blocked_by": blocked_by,
        "approvals": {
            "requested": decisions.iter().filter(|d| d.verdict == Verdict::PendingApproval).count(),
            "expired": expired,
        },
        "escalations": escalations,
        "runbooks": per_runbook.into_iter().map(|(name, (runs, blocked_by))| json!({"name": name, "runs": runs, "blocked_by": blocked_by})).collect::<Vec<_>>(),
    }))
}

/// Notifications rebuilt from Prometheus' `ALERTS{alertstate="firing"}`
/// between `since` and `until`, sampled every `step`: each series' firing
/// interval (consecutive samples) becomes a firing notification at its
/// first sample and a resolved one a step after its last (none when it
/// still fires at `until`), with `startsAt` the interval's start. Alertmanager
/// sends a firing alert again every `repeat_interval`; `resend_every` stands
/// for it (firing notifications repeated within the interval). Labels are the
/// series' without `__name__` and `alertstate`; annotations are not in the
/// series.
pub async fn from_prometheus(
    url: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step: Duration,
    resend_every: Option<Duration>,
) -> Result<Vec<Notification>, SimulateError> {
    let step_ms = (step.as_millis() as i64).max(1);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| SimulateError::Prometheus(e.to_string()))?;
    let base = url.trim_end_matches('/');
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<i64>> = BTreeMap::new();
    let (mut from, end) = (since.timestamp_millis(), until.timestamp_millis());
    while from <= end {
        let to = (from + step_ms * (POINTS_PER_QUERY - 1)).min(end);
        for (labels, times) in range_query(&client, base, from, to, step_ms).await? {
            series.entry(labels).or_default().extend(times);
        }
        from = to + step_ms;
    }
    Ok(episodes(series, step_ms, end, resend_every.map(|d| d.as_millis() as i64)))
}

/// The notifications of firing series sampled every `step_ms` up to
/// `end_ms` (see [`from_prometheus`]), in time order.
fn episodes(series: BTreeMap<BTreeMap<String, String>, Vec<i64>>, step_ms: i64, end_ms: i64, resend_ms: Option<i64>) -> Vec<Notification> {
    let ms = |t: i64| DateTime::from_timestamp_millis(t).unwrap_or_default();
    let mut out = Vec::new();
    for (labels, mut times) in series {
        times.sort_unstable();
        times.dedup();
        let mut intervals: Vec<(i64, i64)> = Vec::new();
        for t in times {
            match intervals.last_mut() {
                // A missing sample ends an interval (the series went stale).
                Some((_, last)) if t - *last <= step_ms * 3 / 2 => *last = t,
                _ => intervals.push((t, t)),
            }
        }
        for (first, last) in intervals {
            let alert = |status, ends: Option<i64>, at: i64| {
                let wire = WireAlert {
                    status: Some(status),
                    labels: labels.clone(),
                    annotations: BTreeMap::new(),
                    starts_at: Some(ms(first)),
                    ends_at: ends.map(ms),
                    generator_url: String::new(),
                    fingerprint: String::new(),
                };
                Notification {
                    at: ms(at),
                    alerts: vec![Alert::from_wire(wire, None, ms(at))],
                }
            };
            let resolved_at = last + step_ms;
            let mut at = first;
            loop {
                out.push(alert(AlertStatus::Firing, None, at));
                match resend_ms {
                    Some(every) if every > 0 && at + every < resolved_at.min(end_ms + 1) => at += every,
                    _ => break,
                }
            }
            if resolved_at <= end_ms {
                out.push(alert(AlertStatus::Resolved, Some(resolved_at), resolved_at));
            }
        }
    }
    out.sort_by_key(|n| n.at);
    out
}

/// Prometheus refuses ranges of more than 11,000 points per series.
const POINTS_PER_QUERY: i64 = 10_000;

async fn range_query(
    client: &reqwest::Client,
    base: &str,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
) -> Result<Vec<(BTreeMap<String, String>, Vec<i64>)>, SimulateError> {
    let secs = |ms: i64| format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    let response = client
        .get(format!("{base}/api/v1/query_range"))
        .query(&[
            ("query", r#"ALERTS{alertstate="firing"}"#.to_string()),
            ("start", secs(from_ms)),
            ("end", secs(to_ms)),
            ("step", secs(step_ms)),
        ])
        .send()
        .await
        .map_err(|e| SimulateError::Prometheus(format!("{base} is unreachable: {}", crate::redact::without_url(&e))))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| SimulateError::Prometheus(format!("answered {status} without a Prometheus API body: {e}")))?;
    if body["status"] != "success" {
        return Err(SimulateError::Prometheus(format!(
            "query_range failed ({status}): {}",
            body["error"].as_str().unwrap_or("no error given")
        )));
    }
    let mut out = Vec::new();
    for s in body["data"]["result"].as_array().into_iter().flatten() {
        let labels: BTreeMap<String, String> = s["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "alertstate"))
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        let times = s["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v[0].as_f64())
            .map(|t| (t * 1000.0).round() as i64)
            .collect();
        out.push((labels, times));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str, status: &str, starts: &str) -> String {
        format!(
            r#"{{"version":"4","status":"{status}","alerts":[{{"status":"{status}","labels":{{"alertname":"{name}"}},"startsAt":"{starts}"}}]}}"#
        )
    }

    #[test]
    fn lines_are_read_in_time_order() {
        let text = format!(
            "{{\"at\":\"2026-11-01T10:05:00Z\",\"body\":{}}}\n\n{{\"at\":\"2026-11-01T10:00:00+00:00\",\"body\":{}}}\n",
            body("B", "firing", "2026-11-01T10:05:00Z"),
            body("A", "firing", "2026-11-01T10:00:00Z")
        );
        let (history, source) = parse_history("h.jsonl", &text).unwrap();
        assert_eq!(source.format, "jsonl");
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].alerts[0].name(), "A");
        assert_eq!(history[1].alerts[0].name(), "B");
    }

    #[test]
    fn bad_lines_name_their_line_and_field() {
        let good = format!(
            "{{\"at\":\"2026-11-01T10:00:00Z\",\"body\":{}}}",
            body("A", "firing", "2026-11-01T10:00:00Z")
        );
        for (text, want) in [
            (
                format!("{good}\n{{\"at\":\"yesterday\",\"body\":{{}}}}"),
                "h:2: at: \"yesterday\" is not an RFC 3339 time",
            ),
            (format!("{good}\n{{\"body\":{{}}}}"), "h:2: at: missing"),
            (format!("{good}\n{{\"at\":\"2026-11-01T10:00:00Z\"}}"), "h:2: body: missing"),
            (
                format!("{good}\n{{\"at\":\"2026-11-01T10:00:00Z\",\"body\":{{\"version\":\"5\",\"alerts\":[]}}}}"),
                "h:2: body: unsupported webhook payload version",
            ),
            (format!("{good}\n{good}\nnot json"), "h:3: line: not JSON"),
            (
                format!("{good}\n{{\"at\":1,\"body\":{{}}}}"),
                "h:2: at: expected an RFC 3339 time as a string",
            ),
            (
                r#"{"at":"2026-11-01T10:00:00Z","body":{},"x":1}"#.to_string(),
                "h:1: x: unknown field",
            ),
            ("[1]".to_string(), "h:1: line: expected a JSON object"),
            ("{\"hello\":1}".to_string(), "h:1: line: neither a notification"),
            ("\n\n".to_string(), "h: no notifications to replay"),
        ] {
            let err = parse_history("h", &text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text}\n=> {err}\nwanted {want}");
        }
    }

    #[test]
    fn an_audit_export_replays_received_alerts_and_their_resends() {
        let alert = Alert::firing("Disk").label_set("instance", "db-1");
        let data = serde_json::to_value(&alert).unwrap();
        let dup = json!({"fingerprint": alert.fingerprint, "status": "firing", "labels": alert.labels, "startsAt": alert.starts_at});
        let record = |seq: u64, ts: &str, kind: &str, data: &Value| {
            json!({"seq": seq, "ts": ts, "kind": kind, "actor": "alertmanager", "execution_id": null, "runbook": null,
                   "target": null, "data": data, "prev_hash": "00", "hash": "11"})
            .to_string()
        };
        let orphan = json!({"fingerprint": "zz", "status": "firing", "startsAt": "2026-11-01T00:00:00Z"});
        let text = [
            record(1, "2026-11-01T10:00:00.000000Z", "config.loaded", &json!({})),
            record(2, "2026-11-01T10:00:01.000000Z", "alert.received", &data),
            record(3, "2026-11-01T10:00:01.000000Z", "guardrail.decision", &json!({})),
            record(4, "2026-11-01T10:05:01.000000Z", "alert.duplicate", &dup),
            record(5, "2026-11-01T10:06:01.000000Z", "alert.duplicate", &orphan),
        ]
        .join("\n");
        let (history, source) = parse_history("export.jsonl", &text).unwrap();
        assert_eq!(source.format, "audit");
        assert_eq!(source.skipped_resends, 1);
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].alerts[0], alert);
        assert_eq!(history[1].alerts[0], alert, "a re-send is the alert received before");
        assert_eq!(history[1].at.to_rfc3339(), "2026-11-01T10:05:01+00:00");

        let broken = record(2, "noon", "alert.received", &data);
        let err = parse_history("e", &broken).unwrap_err().to_string();
        assert!(err.starts_with("e:1: ts: "), "{err}");
        let broken = record(2, "2026-11-01T10:00:01Z", "alert.received", &json!({"labels": 3}));
        let err = parse_history("e", &broken).unwrap_err().to_string();
        assert!(err.starts_with("e:1: data: not an alert"), "{err}");
        let mixed = format!(
            "{}\n{{\"at\":\"2026-11-01T10:00:00Z\",\"body\":{}}}",
            record(2, "2026-11-01T10:00:01Z", "alert.received", &data),
            body("A", "firing", "2026-11-01T10:00:00Z")
        );
        let err = parse_history("m", &mixed).unwrap_err().to_string();
        assert!(err.starts_with("m:2: line: a jsonl line in a file of audit lines"), "{err}");
    }

    #[test]
    fn firing_samples_become_episodes_with_resends_and_resolves() {
        let labels = |name: &str| BTreeMap::from([("alertname".to_string(), name.to_string())]);
        let minute = 60_000;
        // Minutes from a real instant (a zero `startsAt` means "not given").
        let t0: i64 = 1_796_000_000_000 / minute * minute;
        let at = |m: i64| t0 + m * minute;
        let series = BTreeMap::from([
            // 0..=4m, a gap, 10..=11m: two episodes.
            (labels("Flap"), [0, 1, 2, 3, 4, 10, 11].into_iter().map(at).collect()),
            // Fires from 5m to the end (20m).
            (labels("Long"), (5..=20).map(at).collect()),
        ]);
        let got: Vec<(i64, String, &str, i64)> = episodes(series, minute, at(20), Some(6 * minute))
            .iter()
            .map(|n| {
                let a = &n.alerts[0];
                (
                    (n.at.timestamp_millis() - t0) / minute,
                    a.name().to_string(),
                    a.status.as_str(),
                    (a.starts_at.timestamp_millis() - t0) / minute,
                )
            })
            .collect();
        let want = [
            (0, "Flap", "firing", 0),
            (5, "Flap", "resolved", 0),
            (5, "Long", "firing", 5),
            (10, "Flap", "firing", 10),
            (11, "Long", "firing", 5),
            (12, "Flap", "resolved", 10),
            (17, "Long", "firing", 5),
        ];
        let want: Vec<(i64, String, &str, i64)> = want.iter().map(|(a, n, s, t)| (*a, n.to_string(), *s, *t)).collect();
        assert_eq!(got, want);
        let resolved = episodes(BTreeMap::from([(labels("Flap"), vec![at(0), at(1)])]), minute, at(20), None);
        assert_eq!(resolved[1].alerts[0].ends_at.map(|t| t.timestamp_millis()), Some(at(2)));
        assert_eq!(
            resolved[0].alerts[0].fingerprint, resolved[1].alerts[0].fingerprint,
            "one alert, two notifications"
        );
    }
}
