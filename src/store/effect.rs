//! Effectiveness: did a successful run fix its alert? A run started by an
//! alert is watched from its admission (one row, `Watch`). It is judged
//! *effective* when its alert's resolve is received within the runbook's
//! `verify_within` of the run's end and no alert the runbook answers fires
//! again on that target within `stays_fixed` of the resolve; *ineffective*
//! when either fails. Judgments are made when the deciding notification
//! arrives (a late resolve, a re-fire), or when a window closes with
//! nothing arriving (`judge_due`: the chore, and a decision of a runbook
//! under `min_effectiveness` first). A judgment is always the same whenever
//! it is made: it depends only on the stored times.
//!
//! Each judgment is audited (`effectiveness.judged`) and counted in one row
//! per runbook, so the `min_effectiveness` guardrail reads one row however
//! long the history.

use serde_json::json;

use super::StoreError;
use super::backend::Watch;
use super::rules::{Txn, ts};
use crate::alert::Alert;
use crate::audit::Event;
use crate::runbook::Runbook;
use crate::units::Duration;

/// The audit record of a judgment.
pub const JUDGED: &str = "effectiveness.judged";

/// Watched runs a judging pass takes at a time.
pub const BATCH: usize = 256;

/// The episode of an alert as alert records write it: (fingerprint, startsAt).
pub(super) fn episode(alert: &Alert) -> Result<(String, String), StoreError> {
    let starts_at = serde_json::to_value(alert.starts_at).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((alert.fingerprint.clone(), starts_at.as_str().unwrap_or_default().to_string()))
}

/// Starts watching a run just admitted for its alert.
pub(super) fn watch(t: &mut Txn<'_>, id: &str, rb: &Runbook, target: &str, alert: &Alert) -> Result<(), StoreError> {
    let (fingerprint, starts_at) = episode(alert)?;
    t.tx.watch_insert(&Watch {
        execution_id: id.to_string(),
        runbook: rb.name.clone(),
        target: target.to_string(),
        fingerprint,
        starts_at,
        verify_ms: rb.effect.verify_within.as_millis() as i64,
        stays_ms: rb.effect.stays_fixed.as_millis() as i64,
        ended_ms: None,
        resolved_ms: None,
    })
}

/// A run ended. Only a success that ran an action is judged: its judgment
/// falls due when `verify_within` ends, or `stays_fixed` after a resolve
/// received while it ran.
pub(super) fn ended(t: &mut Txn<'_>, id: &str, succeeded_at: Option<i64>) -> Result<(), StoreError> {
    t.tx.watch_ended(id, succeeded_at)
}

/// A resolve of the episode was received now: runs that ended are judged
/// ineffective when it came after `verify_within`; the others wait out
/// `stays_fixed` from now.
pub(super) fn resolved(t: &mut Txn<'_>, alert: &Alert) -> Result<(), StoreError> {
    let (fingerprint, starts_at) = episode(alert)?;
    let now = t.now_ms();
    for w in t.tx.watch_episode(&fingerprint, &starts_at)? {
        match w.ended_ms {
            // At the window's end, as `judge_due` would judge it then.
            Some(end) if now >= end + w.verify_ms => {
                let why = format!(
                    "the alert resolved {} after the run ended, later than verify_within {}",
                    span(now - end),
                    span(w.verify_ms)
                );
                judge(t, &w, false, &why)?;
            }
            Some(_) => t.tx.watch_set(&w.execution_id, Some(now), Some(now + w.stays_ms))?,
            // Still running: its end sets when it falls due.
            None => t.tx.watch_set(&w.execution_id, Some(now), None)?,
        }
    }
    Ok(())
}

/// An alert the runbook answers fired now on the target: runs whose alert
/// resolved less than `stays_fixed` ago did not fix it. Returns how many
/// were judged.
pub(super) fn refired(t: &mut Txn<'_>, runbook: &str, target: &str) -> Result<usize, StoreError> {
    let now = t.now_ms();
    let mut judged = 0;
    for w in t.tx.watch_resolved(runbook, target)? {
        let Some(resolved) = w.resolved_ms else { continue };
        if now >= resolved + w.stays_ms {
            // Its window closed (`judge_due` agrees, whichever looks first):
            // the next judging pass finds it effective.
            continue;
        }
        match w.ended_ms {
            Some(_) => {
                let why = format!(
                    "an alert fired again on {target} {} after the resolve, within stays_fixed {}",
                    span(now - resolved),
                    span(w.stays_ms)
                );
                judge(t, &w, false, &why)?;
                judged += 1;
            }
            // Still running: the resolve no longer counts.
            None => t.tx.watch_set(&w.execution_id, None, None)?,
        }
    }
    Ok(judged)
}

/// Judges watched runs whose window closed by now (of one runbook, or of
/// any), up to `limit`; returns how many.
pub(super) fn judge_due(t: &mut Txn<'_>, runbook: Option<&str>, limit: usize) -> Result<usize, StoreError> {
    let now = t.now_ms();
    let due = t.tx.watch_due(runbook, now, limit)?;
    for w in &due {
        match w.resolved_ms {
            None => {
                let why = format!(
                    "the alert did not resolve within verify_within {} of the run's end",
                    span(w.verify_ms)
                );
                judge(t, w, false, &why)?;
            }
            Some(_) => {
                let why = format!("the alert resolved and did not fire again within stays_fixed {}", span(w.stays_ms));
                judge(t, w, true, &why)?;
            }
        }
    }
    Ok(due.len())
}

fn judge(t: &mut Txn<'_>, w: &Watch, effective: bool, why: &str) -> Result<(), StoreError> {
    t.tx.watch_judged(w, effective)?;
    t.append(
        Event::new(
            JUDGED,
            "system:effectiveness",
            json!({
                "effective": effective,
                "reason": why,
                "fingerprint": w.fingerprint,
                "ended_at": w.ended_ms.map(ts),
                "resolved_at": w.resolved_ms.map(ts),
                "verify_within": span(w.verify_ms),
                "stays_fixed": span(w.stays_ms),
            }),
        )
        .execution(&w.execution_id, &w.runbook, &w.target),
    )?;
    Ok(())
}

fn span(ms: i64) -> String {
    Duration::from_millis(ms.max(0) as u64).to_string()
}
