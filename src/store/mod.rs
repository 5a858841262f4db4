//! State: alerts, executions, steps, limits and the audit log, behind one
//! interface. The engine and server only talk to [`Store`]; the SQLite
//! backend is the embedded default, and another backend (PostgreSQL for
//! several replicas) implements the same trait.
//!
//! Every state change writes its audit records in the same transaction, so
//! state and audit never disagree, and nothing is acknowledged before it is
//! durable.
//!
//! The contract every backend keeps for guardrail decisions: the cost of
//! deciding one alert does not grow with history. Each fact (runs in a
//! window, last run, active runs, breaker, alerting targets) is read by an
//! index search over rows that a decision looks at — runs that were allowed
//! to start, runs not yet ended, one row per target — never by walking
//! blocked, duplicate, dry-run or ended executions. Windows count runs that
//! were allowed to start (automated or manual, not dry runs); a run cancelled
//! before it started, or that ended without starting an action, stops
//! counting.

pub mod backend;
pub mod copy;
pub mod effect;
mod pg_session;
pub mod postgres;
pub mod rules;
pub mod sqlite;
mod writer;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::alert::Alert;
use crate::audit::{Broken, Event, Record};
use crate::config::Config;
use crate::guard::{BudgetStatus, Decision};
use crate::runbook::{Risk, Runbook};

/// The store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed; nothing of the operation was kept. `disk`: the
    /// failure is the disk's or the database server's (full, I/O error,
    /// connection lost), not the data's, so a later write may succeed.
    #[error("state database error: {message}")]
    Database { message: String, disk: bool },
    /// The writer is gone (shutting down or crashed).
    #[error("state store is closed")]
    Closed,
    /// No execution with this id.
    #[error("no execution {0}")]
    NotFound(String),
    /// Another worker holds the execution now (it was recovered from under
    /// us); this worker must stop without running anything more.
    #[error("execution {0} is no longer claimed by this worker")]
    ClaimLost(String),
    /// The write transaction could not start (database locked by another
    /// process for too long, or an I/O error); nothing was written.
    #[error("state transaction could not start (database locked or I/O error; see the log)")]
    NotStarted,
    /// Another write in the same group commit failed half way, so the group
    /// was rolled back; nothing of this one was kept. Retry.
    #[error("state write rolled back with its group (another write failed: {0})")]
    RolledBack(String),
    /// Too many writes are waiting; the caller should retry later.
    #[error("state writer overloaded")]
    Busy,
    /// The two-person rule: the approver asked for this run, and its runbook
    /// does not allow self-approval.
    #[error(
        "{approver} requested execution {id} and may not approve it too (requester {requester}, approver {approver}): another person must approve it, or the runbook sets guardrails.self_approval: true"
    )]
    SelfApproval { id: String, requester: String, approver: String },
    /// The runbook's `permissions` do not allow this; audited as
    /// `access.refused`, nothing else changed.
    #[error("{0}")]
    NotPermitted(crate::authz::Refusal),
    /// The execution is not in the state the operation needs.
    #[error("execution {id} is {state}")]
    WrongState { id: String, state: String },
    /// A worker took this execution from the in-memory queue, but by the
    /// time it claimed it the execution had been cancelled (its alert
    /// resolved) or claimed by another worker: it must not run.
    #[error("execution {0} was cancelled or taken by another worker before it started")]
    Taken(String),
    /// The operation was refused as asked (e.g. copying into a store that
    /// is not empty); nothing was written.
    #[error("{0}")]
    Refused(String),
    /// An id prefix that more than one execution's id starts with: the
    /// first of them in id order, and whether there are more.
    #[error(
        "execution id prefix {prefix} is ambiguous; it starts {}{}",
        candidates.join(", "),
        if *more { ", …" } else { "" }
    )]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
        more: bool,
    },
    /// Stored data could not be read back.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// Opening the database failed.
    #[error("cannot open state database {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Database { .. } => "database",
            StoreError::Closed => "closed",
            StoreError::ClaimLost(_) => "claim_lost",
            StoreError::Taken(_) => "taken",
            StoreError::Busy => "busy",
            StoreError::RolledBack(_) => "rolled_back",
            StoreError::NotStarted => "not_started",
            StoreError::NotFound(_) => "not_found",
            StoreError::WrongState { .. } => "wrong_state",
            StoreError::SelfApproval { .. } => "self_approval",
            StoreError::NotPermitted(_) => "not_permitted",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Refused(_) => "refused",
            StoreError::Ambiguous { .. } => "ambiguous",
            StoreError::Open { .. } => "open",
        }
    }
}

/// Execution states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    PendingApproval,
    Succeeded,
    Failed,
    Cancelled,
    Blocked,
    Unknown,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Queued,
        State::Running,
        State::PendingApproval,
        State::Succeeded,
        State::Failed,
        State::Cancelled,
        State::Blocked,
        State::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::PendingApproval => "pending_approval",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Blocked => "blocked",
            State::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::Failed | State::Cancelled | State::Blocked | State::Unknown
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to create an execution, decided by the guardrails inside the
/// store's transaction.
#[derive(Debug, Clone)]
pub struct Admission {
    pub id: String,
    pub runbook: Arc<Runbook>,
    pub target: String,
    pub params: serde_json::Map<String, Value>,
    pub actor: String,
    pub automated: bool,
    pub dry_run: bool,
    pub force: Option<String>,
    pub budget: Option<BudgetStatus>,
    /// Params or target could not be resolved: recorded as blocked.
    pub invalid: Option<String>,
    /// `guardrails.inhibit_while_firing`, rendered for this run.
    pub inhibit: Vec<Vec<crate::matcher::Matcher>>,
}

/// One alert of a webhook delivery with the runs it would start.
#[derive(Debug, Clone)]
pub struct IntakeAlert {
    pub alert: Alert,
    pub admissions: Vec<Admission>,
    /// The alert as its `alert.received` record stores it, and its dedupe
    /// key: made before the write, off the store's single writer thread.
    pub body: Value,
    pub dedupe_id: [u8; 16],
}

impl IntakeAlert {
    pub fn new(alert: Alert, admissions: Vec<Admission>) -> IntakeAlert {
        let mut body = serde_json::to_value(&alert).expect("an alert serialises");
        body["matched"] = admissions.iter().map(|a| Value::from(a.runbook.name.as_str())).collect();
        let dedupe_id = alert.dedupe_id();
        IntakeAlert {
            alert,
            admissions,
            body,
            dedupe_id,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IntakeResult {
    pub accepted: usize,
    pub duplicates: usize,
    /// Re-sent alerts decided again: every run of theirs had been blocked
    /// by a guardrail that time lifts.
    pub reconsidered: usize,
    /// Executions created, with the decision for each.
    pub executions: Vec<(String, Decision)>,
    /// Queued executions cancelled by resolved notifications.
    pub cancelled: usize,
    /// When the intake was stored (executions' `created_at`).
    #[serde(skip)]
    pub at: DateTime<Utc>,
    /// The alerts given to `intake`, handed back so the engine can start the
    /// queued executions without reading them back.
    #[serde(skip)]
    pub alerts: Vec<IntakeAlert>,
}

/// Step phases: the main list or `on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Main,
    OnFailure,
}

impl Phase {
    /// As the stores keep it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Main => "main",
            Phase::OnFailure => "on_failure",
        }
    }

    pub fn parse(s: &str) -> Phase {
        if s == "on_failure" { Phase::OnFailure } else { Phase::Main }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Started,
    Succeeded,
    Failed,
    Skipped,
    Unknown,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Started => "started",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Unknown => "unknown",
        }
    }

    /// As the stores keep it; anything else reads as `unknown`.
    pub fn parse(s: &str) -> StepState {
        match s {
            "started" => StepState::Started,
            "succeeded" => StepState::Succeeded,
            "failed" => StepState::Failed,
            "skipped" => StepState::Skipped,
            _ => StepState::Unknown,
        }
    }
}

/// A step as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub phase: Phase,
    pub index: u32,
    pub name: String,
    pub action: String,
    pub attempt: u32,
    pub idempotent: bool,
    pub state: StepState,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An execution as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Execution {
    pub id: String,
    pub runbook: String,
    pub target: String,
    pub state: State,
    pub reason: Option<String>,
    pub actor: String,
    pub alert: Option<Alert>,
    pub params: serde_json::Map<String, Value>,
    pub dry_run: bool,
    pub automated: bool,
    pub risk: Risk,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub approval_deadline: Option<DateTime<Utc>>,
    /// Set by recovery: a step's outcome is unknown; the run must escalate.
    pub resume_error: Option<String>,
    /// The worker running it (`pid:starttime`), while running.
    pub claimed_by: Option<String>,
    pub steps: Vec<StepRecord>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub state: Option<State>,
    pub runbook: Option<String>,
    pub fingerprint: Option<String>,
    /// At most this many, newest first (0: 1,000).
    pub limit: usize,
    /// Only executions listed after this one (an execution id) in that
    /// order: the next page. Executions created since do not shift it.
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub execution: Option<String>,
    /// Records of executions started by alerts with this fingerprint, and the
    /// alert's own records.
    pub fingerprint: Option<String>,
    /// Only records after this `seq`: the next page.
    pub after_seq: Option<u64>,
    /// At most this many records (oldest first).
    pub limit: Option<usize>,
}

/// A step about to run.
#[derive(Debug, Clone)]
pub struct StepStart {
    pub phase: Phase,
    pub index: u32,
    pub name: String,
    pub action: String,
    pub attempt: u32,
    pub idempotent: bool,
    pub input: Value,
    pub dry_run: bool,
}

/// How a step ended.
#[derive(Debug, Clone)]
pub struct StepEnd {
    pub phase: Phase,
    pub index: u32,
    pub name: String,
    pub attempt: u32,
    pub state: StepState,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub duration_ms: u64,
}

/// A worker's claim on an execution it took from the in-memory queue.
#[derive(Debug, Clone)]
pub struct Claim {
    pub worker: String,
    /// The execution's start as actions see it (`started_at`), to the
    /// millisecond as stored, so a resumed run sees the same value.
    pub started_at: DateTime<Utc>,
}

/// What a worker did since its last write, recorded in the same transaction
/// as its next one: the claim of an execution taken from the in-memory queue,
/// and the ends of steps. A one-step run then costs two commits (claim with
/// `step.started`, then `step.finished` with `execution.finished`), and every
/// record still reaches the disk before anything that depends on it happens:
/// a step's end before the next step starts, the claim before any action.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub claim: Option<Claim>,
    pub ended: Vec<StepEnd>,
}

impl Pending {
    pub fn ended(end: StepEnd) -> Pending {
        Pending {
            claim: None,
            ended: vec![end],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.claim.is_none() && self.ended.is_empty()
    }
}

/// A tripped escalation breaker.
#[derive(Debug, Clone, Serialize)]
pub struct Breaker {
    pub runbook: String,
    pub target: String,
    pub tripped_at: DateTime<Utc>,
    pub reason: String,
}

/// What start-up recovery did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    /// Executions put back in the queue to resume.
    pub resumed: Vec<String>,
    /// Executions whose interrupted step was not idempotent.
    pub unknown: Vec<String>,
}

/// A notification as intake would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    /// Not recorded yet: decided.
    New,
    /// Recorded: starts nothing.
    Duplicate,
    /// Recorded, but every run of it was blocked by a guardrail that time
    /// lifts, and `intake.reconsider_after` has passed: decided again.
    Reconsidered,
}

/// A runbook's judged runs: how many, how many were effective (their
/// alert resolved in time and stayed fixed), and whether its block for
/// `ineffective` was escalated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Effectiveness {
    pub runbook: String,
    pub judged: u32,
    pub effective: u32,
    pub notified: bool,
}

/// What one [`Store::prune`] call removed.
#[derive(Debug, Clone, Default)]
pub struct Pruned {
    pub ids: Vec<String>,
    /// Older executions may remain: call again.
    pub more: bool,
}

/// What an approval's transaction asks of the runbooks and the config: the
/// two-person rule's exception (`guardrails.self_approval`) and the
/// runbook's `permissions` (`Engine::approvers`).
pub type Approvers = Arc<crate::authz::Approvers>;

/// Whether the store can write, for readiness and for the process to tell
/// a passing failure from one it cannot recover from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Writes commit.
    Writable,
    /// The last write failed on the disk (full, I/O error); a later one may
    /// succeed once the disk recovers.
    Failing(String),
    /// The store stopped for good (a failed fsync, the writer gone): only a
    /// restart, which recovers from what is on disk, brings it back.
    Stopped(String),
}

/// Tells whether the worker named in a claim is still alive.
pub type Liveness = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// All state access goes through this trait.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Stores alerts (deduplicated), and for each new one creates its
    /// executions with guardrail decisions; durable when this returns.
    async fn intake(&self, alerts: Vec<IntakeAlert>, config: Arc<Config>) -> Result<IntakeResult, StoreError>;

    /// A manual (or API) run: the same guardrails, without an alert intake.
    /// A manual admission the runbook's `permissions.run` does not allow its
    /// actor is refused with [`StoreError::NotPermitted`] and audited.
    async fn admit(&self, admission: Admission, alert: Option<Alert>, config: Arc<Config>) -> Result<Decision, StoreError>;

    /// The decision an admission would get now, without recording anything.
    async fn preview(&self, admission: Admission, config: Arc<Config>) -> Result<Decision, StoreError>;

    /// Atomically takes the oldest queued execution (or `id` if given and queued).
    async fn claim(&self, worker: &str, id: Option<String>) -> Result<Option<Execution>, StoreError>;

    /// The oldest queued executions, up to `limit`, leaving out `exclude`
    /// (already in memory); and whether none remain beyond them. Read only:
    /// workers claim them with their first record.
    async fn queued(&self, limit: usize, exclude: std::collections::HashSet<String>) -> Result<(Vec<Execution>, bool), StoreError>;

    /// Records `pending`, then that a step is about to run; durable before
    /// the action runs. Fails with [`StoreError::ClaimLost`] or
    /// [`StoreError::Taken`] (nothing written) when the worker may not run it.
    async fn step_started(&self, execution: &Execution, pending: Pending, step: StepStart) -> Result<(), StoreError>;

    /// Records `pending` on its own: before a worker waits (retry backoff) or stops.
    async fn record_pending(&self, execution: &Execution, pending: Pending) -> Result<(), StoreError>;

    /// Records `pending`, then the execution's end.
    async fn finish(&self, execution: &Execution, pending: Pending, state: State, reason: Option<String>) -> Result<(), StoreError>;

    /// Gives a claimed execution back to the queue (after a store error
    /// stopped it between steps), so it neither hangs nor holds its lock.
    async fn release(&self, execution: &Execution) -> Result<(), StoreError>;

    /// Executions left `running` by a dead worker: resume, or mark unknown.
    async fn recover(&self, is_alive: Liveness) -> Result<Recovery, StoreError>;

    /// Puts a pending execution back in the queue, approved by `approver`.
    /// Refuses with [`StoreError::NotPermitted`] when the runbook's
    /// `permissions.approve` leaves `approver` out, and with
    /// [`StoreError::SelfApproval`] when `approver` is the execution's
    /// requester (its actor) and `rules` say no for its runbook; refusals
    /// are audited and the execution stays pending.
    async fn approve(&self, id: &str, approver: &str, rules: Approvers) -> Result<Execution, StoreError>;

    /// Cancels a pending execution. The requester may always deny
    /// (withdrawing a request needs no second person); anyone else needs
    /// `permissions.approve` when the runbook sets it.
    async fn deny(&self, id: &str, actor: &str, reason: Option<String>, rules: Approvers) -> Result<Execution, StoreError>;

    /// Pending approvals past their deadline are denied by `system:timeout`.
    async fn expire_approvals(&self) -> Result<Vec<String>, StoreError>;

    async fn breakers(&self) -> Result<Vec<Breaker>, StoreError>;

    /// The targets `runbook` really ran on (admitted, not dry) since `since`,
    /// each with its latest run's admission, latest first, at most `limit`:
    /// the cooldowns still running. An index range over that window only.
    async fn recent_runs(&self, runbook: &str, since: DateTime<Utc>, limit: usize) -> Result<Vec<(String, DateTime<Utc>)>, StoreError>;

    /// A counter this process bumps after each of its commits, for readers
    /// that follow the audit log (the dashboard's event stream) to wake at
    /// once rather than at their next poll. Commits of other processes
    /// sharing the store are not seen here: such readers poll too.
    fn commits(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    async fn reset_breaker(&self, runbook: &str, target: &str, actor: &str) -> Result<bool, StoreError>;

    /// Appends free-standing events (config.loaded, notifications).
    async fn record(&self, events: Vec<Event>) -> Result<(), StoreError>;

    async fn execution(&self, id: &str) -> Result<Execution, StoreError>;

    /// The execution id that `prefix` stands for, like git's abbreviated
    /// hashes: an id itself, or the one id starting with a prefix of at
    /// least [`MIN_ID_PREFIX`] characters. [`StoreError::NotFound`] when no
    /// execution has it, [`StoreError::Ambiguous`] (up to
    /// [`AMBIGUOUS_SHOWN`] candidates) when several do.
    async fn resolve_id(&self, prefix: &str) -> Result<String, StoreError>;

    async fn executions(&self, filter: ExecutionFilter) -> Result<Vec<Execution>, StoreError>;

    async fn audit(&self, filter: AuditFilter) -> Result<Vec<Record>, StoreError>;

    /// Walks the whole chain.
    async fn verify_audit(&self) -> Result<Result<u64, Broken>, StoreError>;

    /// What intake would do with this notification (fingerprint, status,
    /// startsAt) now: `match` says so.
    async fn seen(&self, alert: &Alert, config: Arc<Config>) -> Result<Seen, StoreError>;

    /// Deletes up to `limit` ended executions (and their steps) that
    /// finished before `before`, oldest first, in one short write; returns
    /// their ids and whether older ones may remain (call again). The audit
    /// log keeps every record: history leaves only the state tables.
    async fn prune(&self, before: DateTime<Utc>, limit: usize) -> Result<Pruned, StoreError>;

    /// Counts by state, for metrics and readiness.
    async fn queue_depth(&self) -> Result<u64, StoreError>;

    /// Judges the watched runs whose windows closed by now (a chore); returns
    /// how many were judged. Resolves and re-fires judge others on arrival.
    async fn judge_effectiveness(&self) -> Result<usize, StoreError>;

    /// Judged runs per runbook.
    async fn effectiveness(&self) -> Result<Vec<Effectiveness>, StoreError>;

    /// The counts of a report over `[since, until)`, read a row at a time.
    async fn report_tally(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<crate::report::Tally, StoreError>;

    /// Whether writes go through now. A store that is failing may try a
    /// small write to find out whether the disk came back.
    async fn health(&self) -> Health {
        Health::Writable
    }

    /// The store's clock, so times the engine writes agree with the store's
    /// (and tests control both).
    fn now(&self) -> DateTime<Utc>;

    /// This process as its claims name it: what tells a live claimer from a
    /// dead one (a process on this host for SQLite, a replica's lease in
    /// the database for PostgreSQL).
    fn worker_id(&self) -> String;

    /// Whether this process may run the background chores that write for
    /// everyone (approval timeouts, checkpoints, retention) now: where
    /// several replicas share a store, one at a time.
    async fn lead_chores(&self) -> bool {
        true
    }
}

/// `t` to the millisecond, as the store keeps times.
pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// The shortest execution id prefix [`Store::resolve_id`] expands: fewer
/// characters would match most of a day's runs (a ULID starts with its
/// time).
pub const MIN_ID_PREFIX: usize = 4;

/// How many candidates an ambiguous prefix lists.
pub const AMBIGUOUS_SHOWN: usize = 10;

/// A new execution id: time-ordered, unique.
pub fn new_id() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}
