//! The narrow interface a database implements to be a pitcrew store: rows
//! in, rows out, nothing decided. What the rows mean (which audit records a
//! decision writes, verdict → state, the recovery rule, fencing) lives once,
//! in [`super::rules`], over these traits; the SQLite and PostgreSQL
//! backends only say how each read and write is done in their SQL.
//!
//! Every method runs inside the transaction (or read) its caller opened.
//! Writes never commit on their own.

use super::*;
use crate::audit;
use crate::guard::{Facts, Windows};

/// An execution as first written by a decision.
pub struct NewExecution<'a> {
    pub id: &'a str,
    pub runbook: &'a str,
    pub target: &'a str,
    pub state: State,
    pub reason: Option<&'a str>,
    pub actor: &'a str,
    /// The `alert.received` record of the alert that started it.
    pub alert_seq: Option<u64>,
    /// An alert given to a manual run, as JSON.
    pub alert: Option<&'a str>,
    pub fingerprint: Option<&'a str>,
    pub params: &'a str,
    pub dry_run: bool,
    pub automated: bool,
    pub risk: &'a str,
    pub created_ms: i64,
    /// Set only for real runs allowed to start: what windows count.
    pub admitted_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub approval_deadline_ms: Option<i64>,
}

/// How an execution leaves the active set.
#[derive(Clone)]
pub struct Ending<'a> {
    pub state: State,
    pub reason: Option<&'a str>,
    pub finished_ms: i64,
    /// Whether it stops counting toward limits and cooldowns.
    pub uncount: Uncount,
    /// Its claim ends with it.
    pub release_claim: bool,
}

/// Whether an ended run keeps counting toward limits and cooldowns
/// (`admitted_ms`). A run that never started an action changed nothing on
/// its target and stops counting.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Uncount {
    /// It keeps counting.
    No,
    /// It never started (cancelled before it ran).
    Yes,
    /// Unless one of its steps started an action (a step skipped, or failed
    /// before it started, has none): asked of the steps table by the same
    /// statement that ends the run, a search on the steps' primary key
    /// prefix, so ending a run costs no extra round trip.
    UnlessAnActionStarted,
}

impl Uncount {
    /// As the `end` statements take it.
    pub fn as_str(self) -> &'static str {
        match self {
            Uncount::No => "no",
            Uncount::Yes => "yes",
            Uncount::UnlessAnActionStarted => "unless_started",
        }
    }
}

/// One row of the audit chain as written.
pub struct AuditRow<'a> {
    pub seq: u64,
    pub ts_us: i64,
    pub kind: &'a str,
    pub actor: &'a str,
    pub execution_id: Option<&'a str>,
    pub runbook: Option<&'a str>,
    pub target: Option<&'a str>,
    /// Canonical JSON.
    pub data: &'a str,
    pub hash: &'a [u8; 32],
}

/// The last record of the chain.
#[derive(Debug, Clone)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: Vec<u8>,
    pub ts_us: i64,
}

/// A step row's key.
#[derive(Debug, Clone, Copy)]
pub struct StepKey<'a> {
    pub execution_id: &'a str,
    pub phase: Phase,
    pub index: u32,
    pub attempt: u32,
}

/// A step's end as written.
pub struct StepRow<'a> {
    pub state: StepState,
    pub output: Option<&'a str>,
    pub error: Option<&'a str>,
    pub finished_ms: i64,
}

/// A run that a resolve may cancel: (id, runbook, target, state).
pub type Victim = (String, String, String, String);

/// A notification's dedupe row: the `alert.received` seq and the last
/// decision time kept for reconsidering it (both unset otherwise).
pub type AlertRow = (Option<u64>, Option<i64>);

/// An audit record as stored, with the hash of the record before it.
pub type StoredWithPrev = (audit::Stored, Option<Vec<u8>>);

/// A run waiting for its effectiveness judgment (see `store::effect`):
/// from its admission until judged, or gone when it ends other than
/// succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub execution_id: String,
    pub runbook: String,
    pub target: String,
    /// Its alert's episode: fingerprint and startsAt as alert records write it.
    pub fingerprint: String,
    pub starts_at: String,
    pub verify_ms: i64,
    pub stays_ms: i64,
    /// When it succeeded; unset while it has not ended.
    pub ended_ms: Option<i64>,
    /// When its alert's resolve was received (and the alert has not fired again since).
    pub resolved_ms: Option<i64>,
}

/// One execution created in a report's range.
#[derive(Debug, Clone)]
pub struct ReportRun {
    pub runbook: String,
    pub target: String,
    pub state: State,
    pub dry_run: bool,
    /// Started by an alert (delivered, or given to a manual run).
    pub from_alert: bool,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// The alert's `alertname`, read only for succeeded real runs.
    pub alertname: Option<String>,
}

/// One audit record a report counts (alerts received, decisions, answers to
/// approvals), with the few fields it reads.
#[derive(Debug, Clone)]
pub struct ReportRecord {
    pub kind: String,
    pub actor: String,
    pub ts_us: i64,
    /// An alert's `status`, a decision's `verdict`.
    pub status: Option<String>,
    /// A decision's `decided_by`.
    pub decided_by: Option<String>,
    /// A decision that escalated (sent an escalation notice).
    pub escalated: bool,
    /// An approval's run: when it was created (waiting began), if still stored.
    pub created_ms: Option<i64>,
}

/// The audit kinds [`Read::report_records`] returns.
pub const REPORT_KINDS: [&str; 4] = ["alert.received", "guardrail.decision", "approval.granted", "approval.denied"];

/// Reads, inside a write transaction or on their own.
pub trait Read {
    /// What the guardrails need for one runbook and target at `now_ms`,
    /// under the store contract's rule: index searches only (see `store`).
    fn facts(&mut self, runbook: &str, target: &str, windows: Windows, now_ms: i64) -> Result<Facts, StoreError>;
    /// An execution with its steps.
    fn execution(&mut self, id: &str) -> Result<Option<Execution>, StoreError>;
    /// The dedupe row of a notification: `None` if never seen.
    fn alert_row(&mut self, id: &[u8; 16]) -> Result<Option<AlertRow>, StoreError>;
    /// Ids of queued executions, oldest first, at most `at_most`.
    fn queued_ids(&mut self, at_most: usize) -> Result<Vec<String>, StoreError>;
    fn executions(&mut self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError>;
    /// Audit records as stored, with the hash of the record before each.
    fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<StoredWithPrev>, StoreError>;
    /// Every audit record in order, one at a time; `visit` says whether to go on.
    fn audit_walk(&mut self, visit: &mut dyn FnMut(audit::Stored) -> bool) -> Result<(), StoreError>;
    fn breakers(&mut self) -> Result<Vec<Breaker>, StoreError>;
    /// Per target, the latest admission of `runbook` after `since_ms`,
    /// latest first, at most `limit`: a range of the `runs_by_runbook` index.
    fn recent_runs(&mut self, runbook: &str, since_ms: i64, limit: usize) -> Result<Vec<(String, i64)>, StoreError>;
    fn queue_depth(&mut self) -> Result<u64, StoreError>;
    /// Execution ids that start with `prefix`, in id order, up to `limit`:
    /// a range search on the primary key between `prefix` and
    /// [`prefix_end`], never a scan (`LIKE` cannot use PostgreSQL's default
    /// text index).
    fn ids_with_prefix(&mut self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Judged runs per runbook (one row each), or one runbook's.
    fn effectiveness(&mut self, runbook: Option<&str>) -> Result<Vec<Effectiveness>, StoreError>;
    /// Executions created in `[since_ms, until_ms)`, one at a time: a range
    /// search on their creation time.
    fn report_runs(&mut self, since_ms: i64, until_ms: i64, visit: &mut dyn FnMut(ReportRun)) -> Result<(), StoreError>;
    /// Audit records of [`REPORT_KINDS`] in `[since_us, until_us)`, one at a
    /// time: a range search on the records' time.
    fn report_records(&mut self, since_us: i64, until_us: i64, visit: &mut dyn FnMut(ReportRecord)) -> Result<(), StoreError>;
    /// Alerts firing now (see [`Tx::firing_seen`]): seen after `seen_after_ms`
    /// and not past their `endsAt` at `now_ms`; only those named `alertname`
    /// when given (an index search), else every one. Each goes to `visit`
    /// until it says stop.
    fn firing(
        &mut self,
        alertname: Option<&str>,
        seen_after_ms: i64,
        now_ms: i64,
        visit: &mut dyn FnMut(crate::inhibit::Firing) -> bool,
    ) -> Result<(), StoreError>;
}

/// The least string above every string that starts with `prefix`, for a
/// range search (`None`: no bound above). A last `9` becomes `a` and a
/// last `z` carries, rather than stepping to `:` or `{`: execution ids are
/// lower-case letters and digits, and a database collation other than `C`
/// (PostgreSQL's default is the locale's) may order punctuation apart from
/// them, while letters and digits keep their order. Backends still check
/// the prefix on what the range returns, so a wider range only costs rows.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '9' => Some('a'),
            'z' => None,
            c => (c as u32 + 1..=char::MAX as u32).find_map(char::from_u32),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Writes, inside a transaction the writer opened. A backend counts the
/// rows it changed ([`Tx::changes`]): a job that fails after changing any
/// sinks its whole group.
pub trait Tx: Read {
    /// Rows changed in this transaction so far.
    fn changes(&self) -> u64;
    /// The database ended the transaction itself (after an error): nothing
    /// more may run in it.
    fn aborted(&self) -> bool;

    fn chain_head(&mut self) -> Result<Option<ChainHead>, StoreError>;
    fn append_audit(&mut self, row: AuditRow<'_>) -> Result<(), StoreError>;

    /// Adds a delivery's notifications to the dedupe set, in order: for
    /// each, whether it was new (an id given twice is new the first time).
    /// One statement for the whole delivery, where statements cost a round
    /// trip each.
    fn alerts_insert(&mut self, ids: &[[u8; 16]]) -> Result<Vec<bool>, StoreError>;
    /// Keeps (or clears) what reconsidering the notification needs.
    fn alert_mark(&mut self, id: &[u8; 16], received_seq: Option<u64>, decided_ms: Option<i64>) -> Result<(), StoreError>;
    /// A firing notification of the alert `fingerprint`: it fires now
    /// (`labels` as JSON), since `starts_ms`, until `ends_ms` if known;
    /// one row per fingerprint, a later episode replacing an earlier one.
    fn firing_seen(
        &mut self,
        fingerprint: &str,
        alertname: &str,
        labels: &str,
        starts_ms: i64,
        ends_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// A resolved notification: the alert's row goes, unless it is of a
    /// later episode than `starts_ms` (a late resolve of an older one).
    fn firing_resolved(&mut self, fingerprint: &str, starts_ms: i64) -> Result<(), StoreError>;
    /// Forgets up to `limit` alerts not seen since `before_ms` (their resolve never came).
    fn firing_forget(&mut self, before_ms: i64, limit: usize) -> Result<(), StoreError>;
    /// The target is alerting now (for the storm brake).
    fn target_alerting(&mut self, target: &str, ms: i64) -> Result<(), StoreError>;

    fn execution_insert(&mut self, e: NewExecution<'_>) -> Result<(), StoreError>;
    /// Whether the execution is running under this claim (fencing).
    fn claim_held(&mut self, id: &str, claim: Option<&str>) -> Result<bool, StoreError>;
    /// Queued → running under `worker`; false when it was not queued.
    fn claim(&mut self, id: &str, worker: &str, started_ms: i64) -> Result<bool, StoreError>;
    /// The oldest queued execution (or `id`, if it is queued).
    fn oldest_queued(&mut self, id: Option<&str>) -> Result<Option<String>, StoreError>;
    /// Back to the queue, unclaimed (with the error a resumed run must escalate).
    fn requeue(&mut self, id: &str, resume_error: Option<&str>) -> Result<(), StoreError>;
    /// Ends a run; true when it still counts against its limits (it was
    /// admitted, and `uncount` did not clear that).
    fn end(&mut self, id: &str, ending: Ending<'_>) -> Result<bool, StoreError>;
    /// [`Tx::claim`] for each of (id, worker, started_ms), ids distinct:
    /// whether each was queued. A backend whose statements cost a round
    /// trip claims a group's runs in one.
    fn claims(&mut self, claims: &[(&str, &str, i64)]) -> Result<Vec<bool>, StoreError> {
        claims.iter().map(|(id, worker, ms)| self.claim(id, worker, *ms)).collect()
    }
    /// Ends each run, ids distinct, only while it runs under its claim
    /// (fencing, as [`Tx::claim_held`]): for each, `None` when it does not
    /// (nothing of it is written), else as [`Tx::end`].
    fn ends_held(&mut self, ends: &[(&str, Option<&str>, Ending<'_>)]) -> Result<Vec<Option<bool>>, StoreError> {
        let mut out = Vec::with_capacity(ends.len());
        for (id, claim, ending) in ends {
            out.push(if self.claim_held(id, *claim)? {
                Some(self.end(id, ending.clone())?)
            } else {
                None
            });
        }
        Ok(out)
    }
    /// Pending approval → queued, counted from `admitted_ms` if not a dry run.
    fn approved(&mut self, id: &str, admitted_ms: i64) -> Result<(), StoreError>;
    /// Running executions and their claims.
    fn running(&mut self) -> Result<Vec<(String, Option<String>)>, StoreError>;
    /// Pending approvals past their deadline: (id, runbook, target).
    fn expired_approvals(&mut self, now_ms: i64) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Runs of the episode (fingerprint, startsAt as alert records write it)
    /// that never started.
    fn unstarted_of_episode(&mut self, fingerprint: &str, starts_at: &str) -> Result<Vec<Victim>, StoreError>;

    /// A step about to run (input already redacted, as JSON).
    fn step_start(&mut self, key: StepKey<'_>, name: &str, action: &str, idempotent: bool, input: &str, ms: i64) -> Result<(), StoreError>;
    /// A step's end: its row ends, or, for a step that ended without
    /// starting (skipped: no row yet), is written ended. One statement that
    /// answers nothing, so a backend may send it with its next round trip.
    fn step_end(&mut self, key: StepKey<'_>, name: &str, end: StepRow<'_>) -> Result<(), StoreError>;

    fn breaker_trip(&mut self, runbook: &str, target: &str, ms: i64, reason: &str) -> Result<(), StoreError>;
    /// Resets a tripped breaker; false when none was tripped.
    fn breaker_reset(&mut self, runbook: &str, target: &str, ms: i64) -> Result<bool, StoreError>;
    /// The storm brake held at `ms`.
    fn storm_held(&mut self, ms: i64) -> Result<(), StoreError>;

    /// Deletes up to `limit` ended executions (and their steps) finished
    /// before `before_ms`, walking from `cursor` (the backend's own position,
    /// 0 to start); forgets targets that stopped alerting before
    /// `storm_cutoff_ms`. Returns what went and where to go on from.
    fn prune(&mut self, cursor: i64, limit: usize, before_ms: i64, storm_cutoff_ms: i64) -> Result<(Pruned, i64), StoreError>;

    /// Starts watching a run for its effectiveness judgment.
    fn watch_insert(&mut self, w: &Watch) -> Result<(), StoreError>;
    /// The run ended: succeeded at `ended_ms`, when its judgment falls due
    /// `verify_ms` later, or `stays_ms` after its alert's resolve if that
    /// came first; or, with `None`, any other way (it is not judged).
    fn watch_ended(&mut self, id: &str, ended_ms: Option<i64>) -> Result<(), StoreError>;
    /// Watched runs of an episode whose resolve has not been received.
    fn watch_episode(&mut self, fingerprint: &str, starts_at: &str) -> Result<Vec<Watch>, StoreError>;
    /// Watched runs of the runbook on the target whose alert resolved.
    fn watch_resolved(&mut self, runbook: &str, target: &str) -> Result<Vec<Watch>, StoreError>;
    /// Sets when a watched run's alert resolved and when its judgment falls due.
    fn watch_set(&mut self, id: &str, resolved_ms: Option<i64>, due_ms: Option<i64>) -> Result<(), StoreError>;
    /// Watched runs whose judgment fell due by `now_ms` (of one runbook, or
    /// of any), oldest first, at most `limit`.
    fn watch_due(&mut self, runbook: Option<&str>, now_ms: i64, limit: usize) -> Result<Vec<Watch>, StoreError>;
    /// A watched run was judged: it leaves the watch, and its runbook's counter counts it.
    fn watch_judged(&mut self, w: &Watch, effective: bool) -> Result<(), StoreError>;
    /// Whether the runbook's block for `ineffective` has been escalated.
    fn effect_notified(&mut self, runbook: &str, notified: bool) -> Result<(), StoreError>;

    /// A write that changes nothing but takes room (a failing disk's probe).
    fn probe(&mut self) -> Result<(), StoreError>;

    /// Runs SQL as it is: for tests that play the database's part.
    #[cfg(test)]
    fn raw(&mut self, sql: &str) -> Result<(), StoreError>;
}

/// A connection the writer owns: transactions on top of [`Tx`].
pub trait Conn: Tx + Send {
    fn begin(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    fn rollback(&mut self);
}

/// A `firing_alerts` row (fingerprint, labels as JSON) as inhibition reads it.
pub fn firing_from_row(fingerprint: String, labels: String) -> Result<crate::inhibit::Firing, StoreError> {
    let labels = serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt(format!("firing alert {fingerprint}: labels: {e}")))?;
    Ok(crate::inhibit::Firing { fingerprint, labels })
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_range_ends_at_the_next_id_that_does_not_start_with_it() {
        assert_eq!(prefix_end("01kb").as_deref(), Some("01kc"));
        // Past a digit or a letter, the next letter or digit: never punctuation.
        assert_eq!(prefix_end("01k9").as_deref(), Some("01ka"));
        assert_eq!(prefix_end("01kz").as_deref(), Some("01l"));
        assert_eq!(prefix_end("0zzz").as_deref(), Some("1"));
        assert_eq!(prefix_end("zzzz"), None);
        assert_eq!(prefix_end(""), None);
        // Not an id's alphabet: still a bound above everything it starts.
        assert_eq!(prefix_end("a-").as_deref(), Some("a."));
        assert_eq!(prefix_end("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
    }
}
