//! Guardrails: whether a run may start now, must wait for a human, or is
//! blocked — and why, in words an on-call engineer can act on.
//!
//! Pure: the store gathers the `Facts` inside the same transaction that
//! records the decision, so two alerts cannot both slip under a limit; the
//! budget comes from `budget`. No IO and no clock here: `now` is an input.

use serde::Serialize;

use crate::config::{Config, PolicyRow};
use crate::runbook::{Approval, Risk, Runbook};
use crate::units::Duration;

/// The storm brake counts alerting targets over this window.
pub const STORM_WINDOW: Duration = Duration::from_secs(300);

/// What the store counts for one decision. Windows are given in the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Start (admission) of the last non-dry run on this runbook and target.
    pub last_admitted_ms: Option<i64>,
    /// Admitted non-dry runs on this runbook and target within `rate_limit`'s window.
    pub target_runs: u32,
    /// Admitted non-dry runs of this runbook within `runbook_rate_limit`'s window.
    pub runbook_runs: u32,
    /// Admitted automated non-dry runs of any runbook within `limits.global`'s window.
    pub global_runs: u32,
    /// Runs of this runbook on this target that are queued, running or pending approval.
    pub active_on_target: u32,
    /// Distinct targets with a firing alert within the storm window, counted
    /// up to one above the brake (enough to decide; a storm is not re-counted
    /// in full for every alert in it). 0 without a storm brake.
    pub storm_targets: u32,
    /// This storm was already announced: the brake held within the storm
    /// window (the store keeps when it last did).
    pub storm_notified: bool,
    /// The escalation breaker for this runbook and target is tripped.
    pub breaker_tripped: bool,
    /// Admitted non-dry runs on this runbook and target within `escalate_after`'s window.
    pub escalation_runs: u32,
    /// The runbook's judged runs and how many were effective (one counter
    /// row per runbook), and whether its block for `ineffective` was
    /// already escalated. Read only under `min_effectiveness`.
    pub judged_runs: u32,
    pub effective_runs: u32,
    pub ineffective_notified: bool,
    /// A firing alert that holds every matcher of one `inhibit_while_firing`
    /// rule (looked up only for runbooks that have such rules).
    pub inhibited_by: Option<Inhibitor>,
    /// Not a guardrail's: a run of this runbook on this target is watched
    /// for effectiveness and its alert resolved (asked with `resolved_watch`
    /// in [`Windows`], so a re-fire is noticed in the decision's round trip).
    pub resolved_watch: bool,
}

/// Judged runs a runbook needs before `min_effectiveness` may block it.
pub const MIN_JUDGED: u32 = 5;

/// Whether judged runs say a runbook does not work: at least [`MIN_JUDGED`]
/// of them, and the effective share below `min`.
pub fn ineffective(judged: u32, effective: u32, min: f64) -> bool {
    judged >= MIN_JUDGED && f64::from(effective) < min * f64::from(judged)
}

/// The alert an `inhibit_while_firing` rule found firing, and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inhibitor {
    pub alert: crate::inhibit::Firing,
    /// The rendered rule, as `{alertname="X", …}`.
    pub rule: String,
}

/// The windows the store must count over, derived from the runbook and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// The runbook has a cooldown: the store looks up the last run.
    pub cooldown: bool,
    pub target_ms: i64,
    pub runbook_ms: i64,
    pub global_ms: i64,
    pub escalation_ms: i64,
    /// `limits.storm_brake`: the store counts alerting targets up to one above it.
    pub storm_brake: Option<u32>,
    /// `guardrails.min_effectiveness`: the store reads the runbook's judged runs.
    pub effectiveness: bool,
    /// The store says whether a watched run resolved ([`Facts::resolved_watch`]).
    pub resolved_watch: bool,
}

impl Windows {
    pub fn for_runbook(rb: &Runbook, config: &Config) -> Windows {
        let ms = |r: Option<crate::units::Rate>| r.map(|r| r.per.as_millis() as i64).unwrap_or(0);
        Windows {
            cooldown: rb.guardrails.cooldown.is_some(),
            target_ms: ms(rb.guardrails.rate_limit),
            runbook_ms: ms(rb.guardrails.runbook_rate_limit),
            global_ms: ms(config.global_limit),
            escalation_ms: ms(rb.guardrails.escalate_after),
            storm_brake: config.storm_brake,
            effectiveness: rb.guardrails.min_effectiveness.is_some(),
            resolved_watch: false,
        }
    }
}

/// One SLO's budget as the policy sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetStatus {
    pub slo: String,
    /// Remaining budget as a fraction (may be negative); `None` = unknown.
    pub remaining: Option<f64>,
    pub tier: String,
    pub auto: Vec<Risk>,
    pub approve: Vec<Risk>,
    /// Why the budget is unknown, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub objective: f64,
    pub window: String,
    /// The whole budget in minutes per window (99.9% over 30d = 43.2).
    pub budget_minutes: f64,
    pub remaining_minutes: Option<f64>,
}

/// Picks the policy row for a remaining budget: the first row whose `above`
/// it exceeds. None matching: `exhausted`, or `unknown` without a value; both
/// behave like freeze.
pub fn tier(remaining: Option<f64>, policy: &[PolicyRow]) -> (String, Vec<Risk>, Vec<Risk>) {
    let frozen = |name: &str| (name.to_string(), vec![Risk::Low], vec![Risk::Medium, Risk::High]);
    let Some(r) = remaining else {
        return frozen("unknown");
    };
    match policy.iter().find(|row| r > row.above.0) {
        Some(row) => (row.name.clone(), row.auto.clone(), row.approve.clone()),
        None => frozen("exhausted"),
    }
}

/// Remaining budget = 1 − (1 − good/total) / (1 − objective).
pub fn remaining_budget(good: f64, total: f64, objective: f64) -> Option<f64> {
    if total <= 0.0 || total.is_nan() || !good.is_finite() || !total.is_finite() {
        return None;
    }
    Some(1.0 - (1.0 - good / total) / (1.0 - objective))
}

/// One guardrail's verdict, as shown by `match` and written to the audit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub guardrail: &'static str,
    pub verdict: CheckVerdict,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckVerdict {
    Pass,
    Block,
    Approve,
    Skipped,
    Forced,
}

/// The decision for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Run,
    PendingApproval,
    Blocked,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The guardrail that decided (blocked or approval), else "all".
    pub decided_by: &'static str,
    pub reason: String,
    pub dry_run: bool,
    pub checks: Vec<Check>,
    /// Side effects the caller carries out after recording the decision.
    pub trip_breaker: bool,
    pub notify: Option<String>,
    pub storm_notice: bool,
}

/// Who is asking and how.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub runbook: &'a Runbook,
    pub target: &'a str,
    pub automated: bool,
    pub dry_run: bool,
    /// `--force --reason`: skips cooldown, rate limits, budget, storm brake
    /// and escalation; never dedupe, concurrency, required approval.
    pub force: Option<&'a str>,
    pub now_ms: i64,
}

/// Labels as the decision shows them: `{alertname="X", cluster="eu1"}`.
fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    format!(
        "{{{}}}",
        labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(", ")
    )
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Decides in the documented order (cooldown, rate limits, concurrency,
/// storm brake, inhibition, windows, budget, escalation, approval, dry run);
/// every guardrail's verdict is kept for the audit.
pub fn decide(req: &Request<'_>, facts: &Facts, budget: Option<&BudgetStatus>, config: &Config) -> Decision {
    let rb = req.runbook;
    let g = &rb.guardrails;
    let forced = req.force.is_some();
    let mut checks: Vec<Check> = Vec::new();
    let mut first_block: Option<(&'static str, String)> = None;
    let mut first_approve: Option<(&'static str, String)> = None;
    let mut trip_breaker = false;
    let mut notify = None;
    let mut storm_notice = false;
    let mut ineffective_notice = None;
    let mut record = |name: &'static str, verdict: CheckVerdict, detail: String, checks: &mut Vec<Check>| {
        match verdict {
            CheckVerdict::Block if first_block.is_none() => first_block = Some((name, detail.clone())),
            CheckVerdict::Approve if first_approve.is_none() => first_approve = Some((name, detail.clone())),
            _ => {}
        }
        checks.push(Check {
            guardrail: name,
            verdict,
            detail,
        });
    };
    let skippable = |blocked: bool| match (blocked, forced) {
        (true, true) => CheckVerdict::Forced,
        (true, false) => CheckVerdict::Block,
        (false, _) => CheckVerdict::Pass,
    };

    // Cooldown.
    if let Some(cd) = g.cooldown {
        let (blocked, detail) = match facts.last_admitted_ms {
            Some(last) if req.now_ms - last < cd.as_millis() as i64 => {
                let left = Duration::from_millis((cd.as_millis() as i64 - (req.now_ms - last)).max(0) as u64 / 1000 * 1000);
                (
                    true,
                    format!(
                        "last run on {} started {} ago; cooldown {cd} ({left} left)",
                        req.target,
                        Duration::from_millis(((req.now_ms - last) / 1000 * 1000) as u64)
                    ),
                )
            }
            Some(_) => (false, format!("last run on {} is older than the cooldown {cd}", req.target)),
            None => (false, format!("no earlier run on {}", req.target)),
        };
        record("cooldown", skippable(blocked), detail, &mut checks);
    }
    // Rate limits: per target, per runbook, global (automated only).
    if let Some(r) = g.rate_limit {
        let blocked = facts.target_runs >= r.count;
        record(
            "rate_limit",
            skippable(blocked),
            format!("{} runs on {} in the last {} (limit {r})", facts.target_runs, req.target, r.per),
            &mut checks,
        );
    }
    if let Some(r) = g.runbook_rate_limit {
        let blocked = facts.runbook_runs >= r.count;
        record(
            "runbook_rate_limit",
            skippable(blocked),
            format!("{} runs of {} in the last {} (limit {r})", facts.runbook_runs, rb.name, r.per),
            &mut checks,
        );
    }
    if let (Some(r), true) = (config.global_limit, req.automated) {
        let blocked = facts.global_runs >= r.count;
        record(
            "global_limit",
            skippable(blocked),
            format!("{} automated runs in the last {} (limit {r})", facts.global_runs, r.per),
            &mut checks,
        );
    }
    // Concurrency: never forced.
    let busy = facts.active_on_target >= g.concurrency;
    record(
        "concurrency",
        if busy { CheckVerdict::Block } else { CheckVerdict::Pass },
        format!(
            "{} run(s) of {} on {} in progress (limit {})",
            facts.active_on_target, rb.name, req.target, g.concurrency
        ),
        &mut checks,
    );
    // Storm brake: medium and high risk automation pauses.
    if let (Some(limit), true) = (config.storm_brake, req.automated) {
        let storm = facts.storm_targets > limit;
        let applies = rb.risk >= Risk::Medium;
        // Over the brake the store stops counting (see `Facts`).
        let detail = if storm {
            format!(
                "more than {limit} targets alerting in the last {STORM_WINDOW}; runbook risk {}",
                rb.risk
            )
        } else {
            format!(
                "{} targets alerting in the last {STORM_WINDOW} (brake above {limit}); runbook risk {}",
                facts.storm_targets, rb.risk
            )
        };
        let verdict = skippable(storm && applies);
        if storm && applies && !forced && !facts.storm_notified {
            storm_notice = true;
        }
        record("storm_brake", verdict, detail, &mut checks);
    }
    // Inhibition: a related alert fires (the database behind this app is
    // down); fixing the symptom now would not help. Forcible, like the
    // storm brake: a person who knows better may go ahead.
    if !rb.guardrails.inhibit_while_firing.is_empty() {
        let (blocked, detail) = match &facts.inhibited_by {
            Some(i) => (
                true,
                format!(
                    "{} is firing (fingerprint {}, labels {}): matches inhibit_while_firing {}",
                    i.alert.alertname(),
                    i.alert.fingerprint,
                    labels_text(&i.alert.labels),
                    i.rule
                ),
            ),
            None => (false, "no firing alert matches inhibit_while_firing".to_string()),
        };
        record("inhibited", skippable(blocked), detail, &mut checks);
    }
    let now = chrono::DateTime::from_timestamp_millis(req.now_ms).unwrap_or_default();
    for (name, verdict, detail) in window_checks(rb, config, now, req.automated) {
        record(name, verdict, detail, &mut checks);
    }
    // Error budget.
    if let Some(b) = budget {
        let shown = match b.remaining {
            Some(r) => format!("budget {} of {} ({})", pct(r), b.slo, b.tier),
            None => format!(
                "budget of {} unknown ({}): treated as freeze",
                b.slo,
                b.error.as_deref().unwrap_or("no data")
            ),
        };
        let (verdict, detail) = if b.auto.contains(&rb.risk) {
            (CheckVerdict::Pass, format!("{shown}: {} risk runs unattended", rb.risk))
        } else if forced {
            (
                CheckVerdict::Forced,
                format!("{shown}: {} risk would need approval; forced", rb.risk),
            )
        } else {
            let below = match b.remaining {
                Some(r) => format!("budget {} of {}: tier {}", pct(r), b.slo, b.tier),
                None => shown.clone(),
            };
            (CheckVerdict::Approve, format!("{below}: {} risk needs approval", rb.risk))
        };
        record("budget", verdict, detail, &mut checks);
    }
    // Escalation breaker.
    if let Some(e) = g.escalate_after {
        let (blocked, detail) = if facts.breaker_tripped {
            (
                true,
                format!(
                    "breaker tripped: {} was remediated {e} without the alert going away; `pitcrew reset {} {}` re-arms it",
                    req.target, rb.name, req.target
                ),
            )
        } else if facts.escalation_runs >= e.count {
            (
                true,
                format!(
                    "{} runs on {} within {} reached escalate_after {e}: escalating instead of running again",
                    facts.escalation_runs, req.target, e.per
                ),
            )
        } else {
            (
                false,
                format!(
                    "{} runs on {} within {} (escalates at {})",
                    facts.escalation_runs, req.target, e.per, e.count
                ),
            )
        };
        if blocked && !forced && !facts.breaker_tripped {
            trip_breaker = true;
            notify = Some(format!(
                "pitcrew stopped automating {} on {}: it ran {} times within {} and the alert keeps firing. Reset with `pitcrew reset {} {}`.",
                rb.name, req.target, facts.escalation_runs, e.per, rb.name, req.target
            ));
        }
        record("escalation", skippable(blocked), detail, &mut checks);
    }
    // Effectiveness: automation that does not fix the alert stops and
    // escalates (once); people may still run it by hand.
    if let (Some(min), true) = (g.min_effectiveness, req.automated) {
        let judged = facts.judged_runs;
        let blocked = ineffective(judged, facts.effective_runs, min.0);
        let detail = if judged < MIN_JUDGED {
            format!(
                "{judged} judged runs of {} (judged from {MIN_JUDGED}; min_effectiveness {min})",
                rb.name
            )
        } else {
            format!(
                "{} of {judged} judged runs of {} fixed the alert{} (min_effectiveness {min})",
                facts.effective_runs,
                rb.name,
                if blocked { ": escalating instead of running" } else { "" }
            )
        };
        if blocked && !forced && !facts.ineffective_notified {
            ineffective_notice = Some(format!(
                "pitcrew stopped automating {}: only {} of its last {judged} judged runs fixed the alert (min_effectiveness {min}). Runs by hand still go; fix the runbook or lower min_effectiveness.",
                rb.name, facts.effective_runs
            ));
        }
        record("effectiveness", skippable(blocked), detail, &mut checks);
    }
    // Approval required by the runbook: never forced.
    if g.approval == Approval::Required {
        record(
            "approval",
            CheckVerdict::Approve,
            format!("runbook {} requires approval", rb.name),
            &mut checks,
        );
    }
    let dry_run = req.dry_run || g.dry_run || config.dry_run;
    if dry_run {
        let why = if req.dry_run {
            "requested"
        } else if g.dry_run {
            "runbook is in shadow mode"
        } else {
            "pitcrew is in shadow mode (config dry_run)"
        };
        checks.push(Check {
            guardrail: "dry_run",
            verdict: CheckVerdict::Pass,
            detail: format!("dry run ({why}): nothing will be touched"),
        });
    }
    let (verdict, decided_by, reason) = if let Some((name, detail)) = first_block {
        (Verdict::Blocked, name, detail)
    } else if let Some((name, detail)) = first_approve {
        (Verdict::PendingApproval, name, detail)
    } else {
        (Verdict::Run, "all", "all guardrails passed".to_string())
    };
    if verdict == Verdict::Blocked && decided_by != "escalation" {
        // The breaker trips only when escalation itself decided.
        trip_breaker = false;
        notify = None;
    }
    if verdict == Verdict::Blocked && decided_by == "effectiveness" {
        notify = ineffective_notice;
    }
    // A block by the breaker is reported as `escalated`, one for
    // effectiveness as `ineffective`; the checks keep their names.
    let decided_by = match decided_by {
        "escalation" => "escalated",
        "effectiveness" => "ineffective",
        other => other,
    };
    Decision {
        verdict,
        decided_by,
        reason,
        dry_run,
        checks,
        trip_breaker,
        notify,
        storm_notice: storm_notice && decided_by == "storm_brake",
    }
}

/// The window guardrails (`freeze`, `only_during`) of a run at `now`: each
/// check's name, verdict and detail. Automated runs above low risk wait for
/// a person during a freeze, or outside the hours automation is allowed; a
/// person starting a run by hand is that person. Also what the dashboard
/// shows as a runbook's window state.
pub fn window_checks(
    rb: &Runbook,
    config: &Config,
    now: chrono::DateTime<chrono::Utc>,
    automated: bool,
) -> Vec<(&'static str, CheckVerdict, String)> {
    let mut checks = Vec::new();
    if rb.guardrails.freeze.is_empty() && rb.guardrails.only_during.is_empty() {
        return checks;
    }
    let applies = automated && rb.risk > Risk::Low;
    let why_not = if automated {
        format!("runbook risk {} runs in any window", rb.risk)
    } else {
        "manual run: windows hold automated runs only".to_string()
    };
    if !rb.guardrails.freeze.is_empty() {
        let inside = rb
            .guardrails
            .freeze
            .iter()
            .filter_map(|n| config.window(n))
            .find(|w| w.contains(now));
        let (verdict, detail) = match inside {
            Some(w) if applies => (
                CheckVerdict::Approve,
                format!("inside freeze window {w}: {} risk needs approval", rb.risk),
            ),
            Some(w) => (CheckVerdict::Pass, format!("inside freeze window {w}; {why_not}")),
            None => (
                CheckVerdict::Pass,
                format!("outside every freeze window ({})", rb.guardrails.freeze.join(", ")),
            ),
        };
        checks.push(("freeze", verdict, detail));
    }
    if !rb.guardrails.only_during.is_empty() {
        let inside = rb
            .guardrails
            .only_during
            .iter()
            .filter_map(|n| config.window(n))
            .find(|w| w.contains(now));
        let (verdict, detail) = match inside {
            Some(w) => (CheckVerdict::Pass, format!("inside window {w}")),
            None if applies => (
                CheckVerdict::Approve,
                format!(
                    "outside every window of only_during ({}): {} risk needs approval",
                    rb.guardrails.only_during.join(", "),
                    rb.risk
                ),
            ),
            None => (
                CheckVerdict::Pass,
                format!(
                    "outside every window of only_during ({}); {why_not}",
                    rb.guardrails.only_during.join(", ")
                ),
            ),
        };
        checks.push(("outside_window", verdict, detail));
    }
    checks
}
