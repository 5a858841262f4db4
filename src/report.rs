//! The toil report: what pitcrew did over a time range and what it saved,
//! for a weekly review. Built from the store ([`build`]) with range reads
//! on indexed times (executions by creation, audit records by time), a row
//! at a time into a [`Tally`]; nothing loads the whole history. The JSON
//! form is the API's (`GET /v1/report`) and the dashboard's; `table` and
//! `markdown` are for people.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::cli::output::visible;
use crate::guard::BudgetStatus;
use crate::runbook::RunbookSet;
use crate::store::backend::{ReportRecord, ReportRun};
use crate::store::{State, Store, StoreError};

/// Targets and alertnames listed as recurring offenders.
pub const TOP_OFFENDERS: usize = 10;

/// The share of effective runs below which a runbook without its own
/// `min_effectiveness` is flagged.
pub const FLAG_BELOW: f64 = 0.5;

/// Runs by state. Every key is always present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Runs {
    pub succeeded: u64,
    pub failed: u64,
    pub unknown: u64,
    pub cancelled: u64,
    pub blocked: u64,
    pub pending_approval: u64,
    pub queued: u64,
    pub running: u64,
}

impl Runs {
    fn add(&mut self, state: State) {
        *match state {
            State::Succeeded => &mut self.succeeded,
            State::Failed => &mut self.failed,
            State::Unknown => &mut self.unknown,
            State::Cancelled => &mut self.cancelled,
            State::Blocked => &mut self.blocked,
            State::PendingApproval => &mut self.pending_approval,
            State::Queued => &mut self.queued,
            State::Running => &mut self.running,
        } += 1;
    }

    fn pairs(&self) -> [(&'static str, u64); 8] {
        [
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("unknown", self.unknown),
            ("cancelled", self.cancelled),
            ("blocked", self.blocked),
            ("pending_approval", self.pending_approval),
            ("queued", self.queued),
            ("running", self.running),
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Approvals {
    pub requested: u64,
    pub granted: u64,
    pub denied: u64,
    pub expired: u64,
    /// How long answered requests (granted or denied) waited, in seconds.
    pub wait_p50_s: Option<f64>,
    pub wait_p90_s: Option<f64>,
}

/// Judged runs of a runbook (since pitcrew began judging it, not only in
/// the report's range: the same counts the guardrail reads).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EffectivenessLine {
    pub judged: u64,
    pub effective: u64,
    pub ratio: Option<f64>,
    /// At least 5 judged runs and the ratio below the runbook's
    /// `min_effectiveness` (50% when it sets none).
    pub flagged: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunbookLine {
    pub name: String,
    pub runs: Runs,
    pub toil_minutes_saved: u64,
    /// From the alert's receipt to the run's successful end, in seconds.
    pub time_to_fix_p50_s: Option<f64>,
    pub time_to_fix_p90_s: Option<f64>,
    pub effectiveness: EffectivenessLine,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetOffender {
    pub target: String,
    pub runbook: String,
    pub fixes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertnameOffender {
    pub alertname: String,
    pub fixes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Offenders {
    pub targets: Vec<TargetOffender>,
    pub alertnames: Vec<AlertnameOffender>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetLine {
    pub slo: String,
    pub remaining: Option<f64>,
    pub tier: String,
}

/// The report, as `GET /v1/report` and `pitcrew report --output json` give it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub since: String,
    pub until: String,
    /// Firing notifications received (each alert episode once).
    pub alerts_received: u64,
    pub runs: Runs,
    pub blocked_by: BTreeMap<String, u64>,
    pub approvals: Approvals,
    /// Decisions that stopped automating and escalated (a tripped breaker,
    /// a runbook found ineffective).
    pub escalations: u64,
    pub toil_minutes_saved: u64,
    pub runbooks: Vec<RunbookLine>,
    pub offenders: Offenders,
    pub budgets: Vec<BudgetLine>,
}

#[derive(Debug, Clone, Default)]
struct RunbookTally {
    runs: Runs,
    /// Succeeded real runs.
    fixed: u64,
    /// Milliseconds from receipt to end, of succeeded real runs for an alert.
    fix_ms: Vec<i64>,
}

/// What a report counts, gathered a row at a time by the store
/// ([`Store::report_tally`]): counters, and one number per successful run
/// for the percentiles.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    alerts_received: u64,
    runs: Runs,
    runbooks: HashMap<String, RunbookTally>,
    blocked_by: BTreeMap<String, u64>,
    approvals: Approvals,
    wait_ms: Vec<i64>,
    escalations: u64,
    targets: HashMap<(String, String), u64>,
    alertnames: HashMap<String, u64>,
}

impl Tally {
    /// One execution created in the range.
    pub fn run(&mut self, run: ReportRun) {
        self.runs.add(run.state);
        let rb = self.runbooks.entry(run.runbook.clone()).or_default();
        rb.runs.add(run.state);
        if run.state != State::Succeeded || run.dry_run {
            return;
        }
        rb.fixed += 1;
        if !run.from_alert {
            return;
        }
        if let Some(end) = run.finished_ms {
            rb.fix_ms.push((end - run.created_ms).max(0));
        }
        *self.targets.entry((run.target, run.runbook)).or_default() += 1;
        if let Some(name) = run.alertname {
            *self.alertnames.entry(name).or_default() += 1;
        }
    }

    /// One audit record in the range.
    pub fn record(&mut self, r: ReportRecord) {
        match r.kind.as_str() {
            "alert.received" if r.status.as_deref() == Some("firing") => self.alerts_received += 1,
            "guardrail.decision" => {
                match r.status.as_deref() {
                    Some("blocked") => {
                        *self.blocked_by.entry(r.decided_by.unwrap_or_default()).or_default() += 1;
                    }
                    Some("pending_approval") => self.approvals.requested += 1,
                    _ => {}
                }
                if r.escalated {
                    self.escalations += 1;
                }
            }
            "approval.granted" | "approval.denied" => {
                if r.kind == "approval.granted" {
                    self.approvals.granted += 1;
                } else if r.actor == "system:timeout" {
                    self.approvals.expired += 1;
                    return;
                } else {
                    self.approvals.denied += 1;
                }
                if let Some(created) = r.created_ms {
                    self.wait_ms.push((r.ts_us / 1000 - created).max(0));
                }
            }
            _ => {}
        }
    }
}

/// A runbook's judged runs as shown, flagged below its `min_effectiveness`
/// (or [`FLAG_BELOW`]) once there are enough of them.
pub fn effectiveness_line(j: &crate::store::Effectiveness, runbook: Option<&crate::runbook::Runbook>) -> EffectivenessLine {
    let min = runbook.and_then(|r| r.guardrails.min_effectiveness).map_or(FLAG_BELOW, |m| m.0);
    EffectivenessLine {
        judged: u64::from(j.judged),
        effective: u64::from(j.effective),
        ratio: (j.judged > 0).then(|| f64::from(j.effective) / f64::from(j.judged)),
        flagged: crate::guard::ineffective(j.judged, j.effective, min),
    }
}

/// The `p`th percentile (nearest rank) of milliseconds, in seconds.
fn percentile_s(sorted: &[i64], p: u32) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1) as usize;
    Some(sorted[rank - 1] as f64 / 1000.0)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Builds the report over `[since, until)`: counts from the store, toil and
/// effectiveness thresholds from the runbooks as loaded now, budgets as
/// given (`budget::Budgets::all`).
pub async fn build(
    store: &dyn Store,
    runbooks: &RunbookSet,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    budgets: &[BudgetStatus],
) -> Result<Report, StoreError> {
    let tally = store.report_tally(since, until).await?;
    let judged = store.effectiveness().await?;
    Ok(assemble(tally, &judged, runbooks, since, until, budgets))
}

fn assemble(
    mut tally: Tally,
    judged: &[crate::store::Effectiveness],
    runbooks: &RunbookSet,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    budgets: &[BudgetStatus],
) -> Report {
    let toil = |name: &str| u64::from(runbooks.get(name).and_then(|r| r.toil_minutes).unwrap_or(0));
    // Every runbook with runs in the range, and every one that was judged
    // (a flag must show even in a quiet week).
    for j in judged {
        tally.runbooks.entry(j.runbook.clone()).or_default();
    }
    let mut lines: Vec<RunbookLine> = tally
        .runbooks
        .into_iter()
        .map(|(name, mut rb)| {
            rb.fix_ms.sort_unstable();
            let effectiveness = judged
                .iter()
                .find(|j| j.runbook == name)
                .map(|j| effectiveness_line(j, runbooks.get(&name).map(|r| r.as_ref())))
                .unwrap_or_default();
            RunbookLine {
                toil_minutes_saved: rb.fixed * toil(&name),
                time_to_fix_p50_s: percentile_s(&rb.fix_ms, 50),
                time_to_fix_p90_s: percentile_s(&rb.fix_ms, 90),
                name,
                runs: rb.runs,
                effectiveness,
            }
        })
        .collect();
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    let mut targets: Vec<TargetOffender> = tally
        .targets
        .into_iter()
        .map(|((target, runbook), fixes)| TargetOffender { target, runbook, fixes })
        .collect();
    targets.sort_by(|a, b| {
        b.fixes
            .cmp(&a.fixes)
            .then_with(|| (&a.target, &a.runbook).cmp(&(&b.target, &b.runbook)))
    });
    targets.truncate(TOP_OFFENDERS);
    let mut alertnames: Vec<AlertnameOffender> = tally
        .alertnames
        .into_iter()
        .map(|(alertname, fixes)| AlertnameOffender { alertname, fixes })
        .collect();
    alertnames.sort_by(|a, b| b.fixes.cmp(&a.fixes).then_with(|| a.alertname.cmp(&b.alertname)));
    alertnames.truncate(TOP_OFFENDERS);
    tally.wait_ms.sort_unstable();
    let mut approvals = tally.approvals;
    approvals.wait_p50_s = percentile_s(&tally.wait_ms, 50);
    approvals.wait_p90_s = percentile_s(&tally.wait_ms, 90);
    Report {
        since: rfc3339(since),
        until: rfc3339(until),
        alerts_received: tally.alerts_received,
        runs: tally.runs,
        blocked_by: tally.blocked_by,
        approvals,
        escalations: tally.escalations,
        toil_minutes_saved: lines.iter().map(|l| l.toil_minutes_saved).sum(),
        runbooks: lines,
        offenders: Offenders { targets, alertnames },
        budgets: budgets
            .iter()
            .map(|b| BudgetLine {
                slo: b.slo.clone(),
                remaining: b.remaining,
                tier: b.tier.clone(),
            })
            .collect(),
    }
}

/// Seconds as people read them: `42s`, `3m20s`, `1h5m`.
fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) => crate::units::Duration::from_millis((s * 1000.0).round().max(0.0) as u64 / 1000 * 1000).to_string(),
    }
}

fn percent(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:.0}%", r * 100.0))
}

pub fn effectiveness_cell(e: &EffectivenessLine) -> String {
    if e.judged == 0 {
        return "-".into();
    }
    let flag = if e.flagged { " FLAGGED" } else { "" };
    format!("{} ({}/{}){flag}", percent(e.ratio), e.effective, e.judged)
}

/// One section of the text forms: title, header, rows.
type Section = (&'static str, Vec<&'static str>, Vec<Vec<String>>);

/// The rows both text forms show.
fn sections(r: &Report) -> Vec<Section> {
    let mut out = Vec::new();
    let mut summary = vec![
        vec!["alerts received".to_string(), r.alerts_received.to_string()],
        vec!["toil saved".to_string(), format!("{} min", r.toil_minutes_saved)],
        vec!["escalations".to_string(), r.escalations.to_string()],
    ];
    summary.extend(
        r.runs
            .pairs()
            .iter()
            .map(|(k, v)| vec![format!("runs {}", k.replace('_', " ")), v.to_string()]),
    );
    out.push(("Summary", vec!["WHAT", "COUNT"], summary));
    out.push((
        "Blocked by guardrail",
        vec!["GUARDRAIL", "BLOCKED"],
        r.blocked_by.iter().map(|(k, v)| vec![k.clone(), v.to_string()]).collect(),
    ));
    let a = &r.approvals;
    out.push((
        "Approvals",
        vec!["REQUESTED", "GRANTED", "DENIED", "EXPIRED", "WAIT P50", "WAIT P90"],
        vec![vec![
            a.requested.to_string(),
            a.granted.to_string(),
            a.denied.to_string(),
            a.expired.to_string(),
            seconds(a.wait_p50_s),
            seconds(a.wait_p90_s),
        ]],
    ));
    out.push((
        "Runbooks",
        vec![
            "RUNBOOK",
            "SUCCEEDED",
            "FAILED",
            "BLOCKED",
            "OTHER",
            "TOIL SAVED",
            "FIX P50",
            "FIX P90",
            "EFFECTIVE",
        ],
        r.runbooks
            .iter()
            .map(|l| {
                let other = l.runs.unknown + l.runs.cancelled + l.runs.pending_approval + l.runs.queued + l.runs.running;
                vec![
                    l.name.clone(),
                    l.runs.succeeded.to_string(),
                    l.runs.failed.to_string(),
                    l.runs.blocked.to_string(),
                    other.to_string(),
                    format!("{} min", l.toil_minutes_saved),
                    seconds(l.time_to_fix_p50_s),
                    seconds(l.time_to_fix_p90_s),
                    effectiveness_cell(&l.effectiveness),
                ]
            })
            .collect(),
    ));
    out.push((
        "Recurring offenders: targets",
        vec!["TARGET", "RUNBOOK", "FIXES"],
        r.offenders
            .targets
            .iter()
            .map(|o| vec![o.target.clone(), o.runbook.clone(), o.fixes.to_string()])
            .collect(),
    ));
    out.push((
        "Recurring offenders: alerts",
        vec!["ALERTNAME", "FIXES"],
        r.offenders
            .alertnames
            .iter()
            .map(|o| vec![o.alertname.clone(), o.fixes.to_string()])
            .collect(),
    ));
    out.push((
        "Error budgets",
        vec!["SLO", "REMAINING", "TIER"],
        r.budgets
            .iter()
            .map(|b| vec![b.slo.clone(), percent(b.remaining), b.tier.clone()])
            .collect(),
    ));
    out
}

/// The report for a terminal: one aligned table per section.
pub fn table(r: &Report) -> String {
    let mut out = format!("pitcrew report {} .. {}\n", r.since, r.until);
    for (title, header, rows) in sections(r) {
        let _ = write!(out, "\n{title}\n");
        if rows.is_empty() {
            out.push_str("(none)\n");
        } else {
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|row| row.iter().map(|c| visible(c).into_owned()).collect())
                .collect();
            out.push_str(&crate::cli::output::table(&header, &rows));
        }
    }
    flagged_note(r, &mut out, "");
    out
}

/// The report for a weekly review document: headings and pipe tables.
pub fn markdown(r: &Report) -> String {
    let mut out = format!("# pitcrew report\n\n{} to {}\n", r.since, r.until);
    for (title, header, rows) in sections(r) {
        let _ = write!(out, "\n## {title}\n\n");
        if rows.is_empty() {
            out.push_str("None.\n");
            continue;
        }
        // Alert data (targets, alertnames) is shown, never interpreted.
        let cell = |s: &str| visible(s).replace('|', "\\|");
        let header: Vec<String> = header.iter().map(|h| h.to_lowercase()).collect();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for row in rows {
            let _ = writeln!(out, "| {} |", row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
        }
    }
    flagged_note(r, &mut out, "\n> ");
    out
}

fn flagged_note(r: &Report, out: &mut String, prefix: &str) {
    let flagged: Vec<&str> = r
        .runbooks
        .iter()
        .filter(|l| l.effectiveness.flagged)
        .map(|l| l.name.as_str())
        .collect();
    if !flagged.is_empty() {
        let _ = writeln!(
            out,
            "{}{}Flagged: {} rarely fix their alert (judged runs below min_effectiveness, or 50%): candidates for a better fix.",
            if prefix.is_empty() { "\n" } else { "" },
            prefix,
            flagged.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<i64> = (1..=10).map(|s| s * 1000).collect();
        assert_eq!(percentile_s(&ms, 50), Some(5.0));
        assert_eq!(percentile_s(&ms, 90), Some(9.0));
        assert_eq!(percentile_s(&[7000], 90), Some(7.0));
        assert_eq!(percentile_s(&[], 50), None);
        assert_eq!(percentile_s(&[1000, 2000, 3000], 50), Some(2.0));
    }

    #[test]
    fn records_count_by_kind_verdict_and_actor() {
        let rec =
            |kind: &str, actor: &str, status: Option<&str>, decided_by: Option<&str>, escalated: bool, created: Option<i64>| ReportRecord {
                kind: kind.into(),
                actor: actor.into(),
                ts_us: 100_000_000,
                status: status.map(String::from),
                decided_by: decided_by.map(String::from),
                escalated,
                created_ms: created,
            };
        let mut t = Tally::default();
        t.record(rec("alert.received", "alertmanager", Some("firing"), None, false, None));
        t.record(rec("alert.received", "alertmanager", Some("resolved"), None, false, None));
        t.record(rec(
            "guardrail.decision",
            "alertmanager",
            Some("blocked"),
            Some("cooldown"),
            false,
            None,
        ));
        t.record(rec(
            "guardrail.decision",
            "alertmanager",
            Some("blocked"),
            Some("escalated"),
            true,
            None,
        ));
        t.record(rec(
            "guardrail.decision",
            "alertmanager",
            Some("pending_approval"),
            Some("approval"),
            false,
            None,
        ));
        t.record(rec("approval.granted", "user:ann", None, None, false, Some(40_000)));
        t.record(rec("approval.denied", "user:bob", None, None, false, Some(90_000)));
        t.record(rec("approval.denied", "system:timeout", None, None, false, Some(0)));
        let set = RunbookSet::new(vec![], Default::default(), crate::action::Registry::builtin());
        let r = assemble(t, &[], &set, DateTime::UNIX_EPOCH, DateTime::UNIX_EPOCH, &[]);
        assert_eq!(r.alerts_received, 1);
        assert_eq!(r.blocked_by, BTreeMap::from([("cooldown".into(), 1), ("escalated".into(), 1)]));
        assert_eq!(r.escalations, 1);
        let a = &r.approvals;
        assert_eq!((a.requested, a.granted, a.denied, a.expired), (1, 1, 1, 1));
        // Waits of answered requests only: 60s and 10s.
        assert_eq!((a.wait_p50_s, a.wait_p90_s), (Some(10.0), Some(60.0)));
    }
}
