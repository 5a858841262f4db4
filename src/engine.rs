//! The engine: the whole flow in one place — alerts in, match, admit under
//! the guardrails (in the store), then workers run queued executions step by
//! step, writing `step.started` durably before each action runs.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::action::{ActionContext, ActionError, Deps, DryRun, artifact_dir};
use crate::alert::Alert;
use crate::audit::{Event, kind};
use crate::budget::Budgets;
use crate::config::{Config, NoticeEvent};
use crate::dispatch::Dispatch;
use crate::guard::{Decision, Verdict};
use crate::metrics::Metrics;
use crate::runbook::{Runbook, RunbookSet, Step};
use crate::store::{
    Admission, Claim, Execution, IntakeAlert, IntakeResult, Liveness, Pending, Phase, Recovery, State, StepEnd, StepStart, StepState,
    Store, StoreError, new_id,
};

/// Something the engine could not do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// State could not be written: nothing further runs (fail closed).
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The runbook named by an execution is not loaded any more.
    #[error("runbook `{0}` is not loaded")]
    UnknownRunbook(String),
    /// Shutting down between steps; the execution resumes after a restart.
    #[error("shutting down; the execution resumes at the next start")]
    ShuttingDown,
}

/// The outcome text of a step a dry run did not run.
const DRY_RUN_SKIP: &str = "skipped: dry run";

/// Live progress, for `pitcrew run`.
#[derive(Debug, Clone)]
pub enum Progress {
    StepStarted {
        name: String,
        action: String,
        attempt: u32,
        dry_run: bool,
    },
    StepFinished {
        name: String,
        state: StepState,
        detail: String,
        seconds: f64,
    },
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

pub struct Engine {
    pub store: Arc<dyn Store>,
    /// The runbook set serving now, and the sets older runs keep.
    sets: Sets,
    /// Held shared by intake and admission, exclusively by a reload's
    /// switch: a run is either stored before the switch (and pinned to the
    /// set it was admitted under) or admitted under the new set.
    switch: tokio::sync::RwLock<()>,
    pub deps: Arc<Deps>,
    pub budgets: Arc<Budgets>,
    pub metrics: Arc<Metrics>,
    /// Woken when work is queued.
    pub wake: Arc<Notify>,
    /// Runnable executions in memory, for the workers.
    dispatch: Arc<Dispatch>,
    /// Ends of runs being recorded after their worker moved on.
    finishing: tokio_util::task::TaskTracker,
    /// Notices being delivered (and recorded) in the background.
    notices: tokio_util::task::TaskTracker,
    /// PagerDuty events (`pagerduty:` in the config), delivered on `notices`.
    pagerduty: Option<crate::pagerduty::PagerDuty>,
    /// `pid:starttime`, so recovery can tell a dead worker from a live one.
    pub worker_id: String,
    /// Numbers this process's claims (`pid:starttime/N`), so one claim can
    /// be given up without giving up the others.
    claims: AtomicU64,
    /// Claims this process gave up: their runs could not be written twice
    /// in a row, so they go to the next recovery pass although this
    /// process lives (see [`Engine::recover`]).
    abandoned: Abandoned,
    /// Stops workers between steps.
    pub shutdown: CancellationToken,
    /// Approvals in Slack (`slack:` in the config).
    pub slack: Option<Arc<crate::slack::Slack>>,
}

/// The runbook sets of a serving process.
struct Loaded {
    current: Arc<RunbookSet>,
    /// Runs that had not ended when a later set took effect, with the set
    /// they were admitted under: a run keeps the steps it was admitted
    /// with, and the templates those steps were compiled into.
    pinned: std::collections::HashMap<String, Arc<RunbookSet>>,
    /// Sets replaced by a reload, while anything still holds them: a
    /// request that resolved a runbook before the switch and is admitted
    /// after it is pinned to the set it resolved against.
    retired: Vec<std::sync::Weak<RunbookSet>>,
}

type Sets = Arc<Mutex<Loaded>>;

/// A reload that did not take effect; the loaded set keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The files on disk have problems, each with its place.
    #[error("{} problem{} in the runbooks or plugins", .0.len(), if .0.len() == 1 { "" } else { "s" })]
    Invalid(Vec<crate::diag::Diagnostic>),
    /// The switch could not be recorded (`config.loaded`).
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Loading panicked: a bug, logged; the process carries on serving.
    #[error("loading the runbooks failed: {0}")]
    Internal(String),
}

/// A reload that took effect.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// Runbook name → digest of its source document.
    pub runbooks: BTreeMap<String, String>,
    pub plugins: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Runs not yet ended that finish with the set they were admitted under.
    pub kept_by_runs: usize,
}

/// What a reload never changes; said in the API's answer, the log and docs.
pub const RELOAD_SCOPE: &str = "runbooks and plugins were read again; the config file is read at start only (listen, state_dir, auth, http, guardrails and every other key): restart pitcrew to change it";

/// The `config.loaded` record of a set taking effect: at start, or by a
/// reload (`via`: `SIGHUP` or `api`).
pub fn config_loaded(config: &Config, set: &RunbookSet, actor: &str, via: Option<&str>) -> Event {
    let digests: serde_json::Map<String, Value> = set.runbooks.iter().map(|r| (r.name.clone(), json!(r.digest))).collect();
    let mut data = json!({"config": config.file, "runbooks": digests, "plugins": plugin_names(set), "pid": std::process::id()});
    if let Some(via) = via {
        data["reload"] = json!(via);
    }
    Event::new(kind::CONFIG_LOADED, actor, data)
}

fn plugin_names(set: &RunbookSet) -> Vec<String> {
    set.registry
        .iter()
        .filter(|a| a.spec().name.starts_with("plugin."))
        .map(|a| a.spec().name.clone())
        .collect()
}

/// Secrets a new set brings that the running redactor does not know (a
/// runbook's `notify.url`, values plugins pass from our environment): the
/// store redacts with the redactor it was opened with, so such a set needs
/// a restart, or its secrets would reach the audit log in clear.
fn unknown_secrets(config: &Config, set: &RunbookSet) -> Vec<crate::diag::Diagnostic> {
    let mut out = Vec::new();
    for rb in &set.runbooks {
        if let Some(url) = &rb.notify_url
            && !config.redactor.knows(url)
        {
            out.push(
                crate::diag::Diagnostic::new(
                    &rb.file,
                    (rb.line, 1),
                    format!("runbook `{}`: notify.url is new since pitcrew started", rb.name),
                )
                .hint(Some(
                    "secrets are registered for redaction at start: restart pitcrew to take a new notify.url".into(),
                )),
            );
        }
    }
    for action in set.registry.iter() {
        for var in action.passes_env() {
            if std::env::var(var).is_ok_and(|value| !config.redactor.knows(&value)) {
                let name = action.spec().name.trim_start_matches("plugin.");
                out.push(
                    crate::diag::Diagnostic::new(
                        &config.plugins.join(name).join("plugin.yaml"),
                        (1, 1),
                        format!("plugin `{name}`: passes ${var}, which no plugin passed when pitcrew started"),
                    )
                    .hint(Some(
                        "values passed from the environment are registered for redaction at start: restart pitcrew to pass a new one"
                            .into(),
                    )),
                );
            }
        }
    }
    out
}

/// What a notice is about.
struct Notice {
    event: NoticeEvent,
    text: String,
    /// The run it tells of (execution id, runbook, target), if any.
    execution: Option<(String, String, String)>,
    /// The runbook's own `notify.url`, which wins over the config's.
    runbook_url: Option<String>,
}

/// Sends notices in the background; cheap to clone into the tasks that
/// record a run's end.
#[derive(Clone)]
struct Notifier {
    store: Arc<dyn Store>,
    deps: Arc<Deps>,
    sets: Sets,
    tasks: tokio_util::task::TaskTracker,
    pagerduty: Option<crate::pagerduty::PagerDuty>,
}

impl Notifier {
    /// Delivery and its audit record run in the background: the state the
    /// notice tells of is already durable, and a slow chat webhook must hold
    /// up neither the 202 Alertmanager waits for nor a worker.
    fn send(&self, notice: Notice) {
        if !self.deps.config.notify_on.contains(&notice.event) {
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let outcome = this.deliver(&notice).await;
            if let Err(e) = &outcome {
                tracing::warn!(event = notice.event.as_str(), error = %e, "notice not delivered");
            }
            this.record(&notice, outcome).await;
        });
    }

    async fn deliver(&self, notice: &Notice) -> Result<(), String> {
        let config = &self.deps.config;
        match (&notice.runbook_url, &config.notify_url) {
            // A runbook's URL is checked like a `notify` step's own URL;
            // the config's is trusted.
            (Some(url), _) => crate::action::notify::post_checked(config, url, &notice.text)
                .await
                .map_err(|e| e.to_string()),
            (None, Some(url)) => crate::action::notify::post(self.deps.http(), url, &notice.text)
                .await
                .map_err(|e| e.to_string()),
            (None, None) => Err("no notify.url in config".into()),
        }
    }

    async fn record(&self, notice: &Notice, outcome: Result<(), String>) {
        let route = if notice.runbook_url.is_some() { "runbook" } else { "config" };
        let mut event = Event::new(
            kind::NOTIFICATION,
            "pitcrew",
            json!({"event": notice.event.as_str(), "text": notice.text, "route": route, "delivered": outcome.is_ok(), "error": outcome.err()}),
        );
        if let Some((id, runbook, target)) = &notice.execution {
            event = event.execution(id, runbook, target);
        }
        if let Err(e) = self.store.record(vec![event]).await {
            tracing::error!(error = %e, "cannot record a notification");
        }
    }

    fn runbook_url(&self, runbook: &str) -> Option<String> {
        let current = self.sets.lock().expect("sets lock").current.clone();
        current.get(runbook).and_then(|r| r.notify_url.clone())
    }

    /// A run's end is durable: failed and unknown runs are announced (in
    /// the log and by notice), as nobody may be watching them.
    fn run_ended(&self, exec: &Execution, state: State, reason: Option<&str>) {
        let event = match state {
            State::Failed => NoticeEvent::Failed,
            State::Unknown => NoticeEvent::Unknown,
            _ => return,
        };
        // The log line and the notice leave pitcrew: redacted like the audit.
        let reason = self.deps.config.redactor.text(reason.unwrap_or("no reason recorded"));
        let reason = reason.as_str();
        tracing::warn!(execution = %exec.id, runbook = %exec.runbook, target = %exec.target, state = %state, reason, "run ended {state}");
        let text = match state {
            State::Unknown => format!(
                "pitcrew: {} on {} ended unknown (a step may or may not have taken effect; check the target): {reason}. Execution {}.",
                exec.runbook, exec.target, exec.id
            ),
            _ => format!(
                "pitcrew: {} on {} failed: {reason}. Execution {}.",
                exec.runbook, exec.target, exec.id
            ),
        };
        self.send(Notice {
            event,
            text,
            execution: Some((exec.id.clone(), exec.runbook.clone(), exec.target.clone())),
            runbook_url: self.runbook_url(&exec.runbook),
        });
        self.page(exec, state, reason);
    }

    /// A run an alert started, of a runbook with `pagerduty.acknowledge`,
    /// ended failed or unknown: page a human (this replica ran it).
    fn page(&self, exec: &Execution, state: State, reason: &str) {
        let Some(pd) = &self.pagerduty else { return };
        let acknowledges = {
            let current = self.sets.lock().expect("sets lock").current.clone();
            current.get(&exec.runbook).is_some_and(|r| r.pagerduty_acknowledge)
        };
        if !acknowledges || !exec.automated || exec.dry_run {
            return;
        }
        let about = (exec.id.clone(), exec.runbook.clone(), exec.target.clone());
        let alertname = exec.alert.as_ref().map(|a| a.name());
        let event = crate::pagerduty::PdEvent::page(&about, state.as_str(), reason, exec.risk, alertname);
        pd.send(event, about);
    }
}

/// Whether a decision sends a notice (approval wait, escalation, storm).
fn needs_notice(d: &Decision) -> bool {
    d.verdict == Verdict::PendingApproval || d.notify.is_some() || d.storm_notice
}

/// The run a decision was made for, for its notices.
struct Decided<'a> {
    id: &'a str,
    runbook: &'a str,
    target: &'a str,
}

/// The runs intake queued, as a worker would load them, for the in-memory
/// dispatch. Their alert is the one the store keeps (redacted), so a run
/// renders the same whether it starts from here or is read back from the
/// store (after approval or a restart).
fn queued_executions(result: &mut IntakeResult, redactor: &crate::redact::Redactor) -> Vec<Execution> {
    let run: std::collections::HashMap<&str, bool> = result
        .executions
        .iter()
        .filter(|(_, d)| d.verdict == Verdict::Run)
        .map(|(id, d)| (id.as_str(), d.dry_run))
        .collect();
    let mut queued = Vec::with_capacity(run.len());
    for item in std::mem::take(&mut result.alerts) {
        for adm in &item.admissions {
            let Some(&dry_run) = run.get(adm.id.as_str()) else { continue };
            queued.push(Execution {
                id: adm.id.clone(),
                runbook: adm.runbook.name.clone(),
                target: adm.target.clone(),
                state: State::Queued,
                reason: None,
                actor: adm.actor.clone(),
                alert: Some(item.alert.redacted(redactor)),
                params: adm.params.clone(),
                dry_run,
                automated: adm.automated,
                risk: adm.runbook.risk,
                created_at: crate::store::truncate_ms(result.at),
                started_at: None,
                finished_at: None,
                approval_deadline: None,
                resume_error: None,
                claimed_by: None,
                steps: Vec::new(),
            });
        }
    }
    queued
}

/// A run whose steps are over, its end still to be recorded.
struct Ending {
    pending: Pending,
    outcome: Outcome,
}

async fn record_end(
    store: &dyn Store,
    metrics: &Metrics,
    notifier: &Notifier,
    exec: &Execution,
    ending: Ending,
) -> Result<Outcome, EngineError> {
    let Ending { pending, outcome } = ending;
    store.finish(exec, pending, outcome.state, outcome.reason.clone()).await?;
    notifier.sets.lock().expect("sets lock").pinned.remove(&exec.id);
    metrics.execution(outcome.state.as_str());
    notifier.run_ended(exec, outcome.state, outcome.reason.as_deref());
    Ok(outcome)
}

/// Claims (`pid:starttime/N`) this process gave up on.
type Abandoned = Arc<Mutex<HashSet<String>>>;

/// Gives up a run's claim: the store could not take it back (the release
/// failed too), so rather than leave it `running` under a live claim, with
/// its target locked until a restart, the next recovery pass treats the
/// claim as a dead worker's.
fn abandon(abandoned: &Abandoned, exec: &Execution) {
    if let Some(claim) = &exec.claimed_by {
        abandoned.lock().expect("abandoned lock").insert(claim.clone());
        tracing::error!(execution = %exec.id, claim = %claim, "run handed to recovery: its state could not be written");
    }
}

/// The message a panic carried, for the log.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// A worker's run stopped on an error: says why and, where the run may
/// still hold its claim, hands it back to the queue by the recovery rule;
/// when even that cannot be written, to the next recovery pass.
async fn stopped(store: &dyn Store, abandoned: &Abandoned, exec: &Execution, error: EngineError) -> Result<(), EngineError> {
    match error {
        EngineError::ShuttingDown => return Err(EngineError::ShuttingDown),
        EngineError::Store(StoreError::Taken(id)) => {
            tracing::debug!(execution = %id, "cancelled or claimed elsewhere before it started; not run");
        }
        EngineError::Store(StoreError::ClaimLost(id)) => {
            tracing::warn!(execution = %id, "claim lost to recovery; stopped without running more steps");
            // Refused because this replica's lease lapsed, the run is still
            // under this claim: the next recovery pass must take it over even
            // if the lease is renewed meanwhile. (Taken over already: harmless.)
            abandon(abandoned, exec);
        }
        e @ EngineError::UnknownRunbook(_) => tracing::error!(execution = %exec.id, error = %e, "execution failed"),
        e => {
            tracing::error!(execution = %exec.id, error = %crate::diag::chain(&e), "execution stopped; handing it back to the queue");
            // Fail closed, then retry later rather than hold the target's lock forever.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match store.release(exec).await {
                // Never claimed in the store (its first write failed): still queued there.
                Ok(()) | Err(StoreError::ClaimLost(_)) => {}
                Err(e) => {
                    tracing::error!(execution = %exec.id, error = %crate::diag::chain(&e), "cannot requeue");
                    abandon(abandoned, exec);
                }
            }
        }
    }
    Ok(())
}

/// This process, as named in claims.
pub fn worker_id() -> String {
    let pid = std::process::id();
    format!("{pid}:{}", process_start(pid).unwrap_or_default())
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot. The pair
/// (pid, start) names a process uniquely, even after pid reuse.
fn process_start(pid: u32) -> Option<String> {
    start_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time field of a `/proc/PID/stat` line.
fn start_of(stat: &str) -> Option<String> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19).map(String::from)
}

/// Whether the process that claimed an execution still runs. A claim is
/// `pid:starttime`, and a worker's adds `/N` (which of its claims).
pub fn claimer_alive(claimer: &str) -> bool {
    let Some((pid, start)) = claimer.split_once(':') else {
        return true;
    };
    let start = start.split_once('/').map_or(start, |(start, _)| start);
    let Ok(pid) = pid.parse::<u32>() else {
        return true;
    };
    if !std::path::Path::new("/proc/self/stat").exists() {
        // Without /proc we cannot tell: never steal a claim.
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Gone, or the pid reused by a process that started later: dead.
        Ok(stat) => start_of(&stat).is_some_and(|s| s == start),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        // Hidden from us (hidepid, another namespace): we cannot tell, and a
        // claim taken from a live worker would run its steps twice.
        Err(_) => true,
    }
}

/// The outcome of one execution.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: State,
    pub reason: Option<String>,
}

impl Engine {
    /// Wires an engine to its store and runbooks, with fresh clients.
    pub fn new(config: Arc<Config>, runbooks: Arc<RunbookSet>, store: Arc<dyn Store>) -> Engine {
        let deps = Arc::new(Deps::new(config.clone()));
        let budgets = Arc::new(Budgets::new(deps.clone()));
        let slack = config
            .slack
            .clone()
            .map(|c| Arc::new(crate::slack::Slack::new(c, config.redactor.clone())));
        drop(config);
        let worker_id = store.worker_id();
        let metrics = Arc::new(Metrics::default());
        let notices = tokio_util::task::TaskTracker::new();
        let pagerduty = deps.config.pagerduty.clone().map(|pd| {
            crate::pagerduty::PagerDuty::new(
                pd,
                deps.config.redactor.clone(),
                deps.http().clone(),
                store.clone(),
                metrics.clone(),
                notices.clone(),
            )
        });
        Engine {
            store,
            sets: Arc::new(Mutex::new(Loaded {
                current: runbooks,
                pinned: std::collections::HashMap::new(),
                retired: Vec::new(),
            })),
            switch: tokio::sync::RwLock::new(()),
            deps,
            budgets,
            metrics,
            wake: Arc::new(Notify::new()),
            dispatch: Arc::default(),
            finishing: tokio_util::task::TaskTracker::new(),
            notices,
            pagerduty,
            worker_id,
            claims: AtomicU64::new(0),
            abandoned: Arc::default(),
            shutdown: CancellationToken::new(),
            slack,
        }
    }

    /// The rules an approval is decided by now: the loaded runbooks'
    /// `self_approval` and `permissions`, and the config's groups.
    pub fn approvers(&self) -> crate::store::Approvers {
        crate::authz::Approvers::new(self.config().clone(), self.runbooks())
    }

    /// Approves a pending run (CLI, API and Slack alike): the store checks
    /// `permissions` and the two-person rule in the approval's transaction.
    pub async fn approve(&self, id: &str, approver: &str) -> Result<Execution, StoreError> {
        let exec = self.store.approve(id, approver, self.approvers()).await?;
        self.queued_elsewhere();
        Ok(exec)
    }

    /// Runs were queued in the store other than by intake (a manual run,
    /// an approval, recovery, a requeue): a worker reads them now.
    pub fn queued_elsewhere(&self) {
        self.dispatch.look_again();
        self.wake.notify_waiters();
    }

    /// Runs `work` (a message to deliver) in the background, with the
    /// notices: [`Engine::settle`] waits for it too.
    pub fn background(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.notices.spawn(work);
    }

    /// Denies a pending run (CLI, API and Slack alike), under `permissions`.
    pub async fn deny(&self, id: &str, actor: &str, reason: Option<String>) -> Result<Execution, StoreError> {
        self.store.deny(id, actor, reason, self.approvers()).await
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.deps.config
    }

    /// The runbook set new alerts and requests are matched against.
    pub fn runbooks(&self) -> Arc<RunbookSet> {
        self.sets.lock().expect("sets lock").current.clone()
    }

    /// The set an execution runs with: the one it was admitted under.
    fn set_for(&self, execution: &str) -> Arc<RunbookSet> {
        let sets = self.sets.lock().expect("sets lock");
        sets.pinned.get(execution).unwrap_or(&sets.current).clone()
    }

    /// A run whose runbook was resolved from a set a reload has replaced
    /// since runs with that set, like the runs admitted before the switch.
    fn pin_if_replaced(&self, execution: &str, rb: &Arc<Runbook>) {
        let mut sets = self.sets.lock().expect("sets lock");
        let holds = |set: &RunbookSet| set.runbooks.iter().any(|r| Arc::ptr_eq(r, rb));
        if holds(&sets.current) {
            return;
        }
        let owner = sets
            .pinned
            .values()
            .cloned()
            .chain(sets.retired.iter().filter_map(std::sync::Weak::upgrade))
            .find(|set| holds(set));
        if let Some(set) = owner {
            sets.pinned.insert(execution.to_string(), set);
        }
    }

    /// Reads runbooks and plugins again from the paths the config names.
    /// A set with problems is refused whole and the loaded one keeps
    /// serving; one that takes effect is recorded (`config.loaded`) before
    /// any alert is matched against it. Runs not yet ended keep the set
    /// they were admitted under.
    pub async fn reload(&self, actor: &str, via: &str) -> Result<Reloaded, ReloadError> {
        let config = self.config().clone();
        let loading = config.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::runbook::compile::load(&loading, &loading.runbooks)).await;
        let result = match loaded {
            Err(panicked) => Err(ReloadError::Internal(panicked.to_string())),
            Ok(Err(problems)) => Err(ReloadError::Invalid(problems.0)),
            Ok(Ok(set)) => match unknown_secrets(&config, &set) {
                problems if !problems.is_empty() => Err(ReloadError::Invalid(problems)),
                _ => self.switch_to(Arc::new(set), actor, via).await,
            },
        };
        match &result {
            Ok(r) => tracing::info!(
                via,
                runbooks = r.runbooks.len(),
                plugins = r.plugins.len(),
                added = ?r.added,
                removed = ?r.removed,
                changed = ?r.changed,
                kept_by_runs = r.kept_by_runs,
                "reloaded: {RELOAD_SCOPE}"
            ),
            Err(ReloadError::Invalid(problems)) => {
                for p in problems {
                    tracing::error!(via, problem = %p, "reload refused");
                }
                tracing::error!(
                    via,
                    problems = problems.len(),
                    "reload refused: the loaded runbooks and plugins keep serving"
                );
            }
            Err(e) => {
                tracing::error!(via, error = %crate::diag::chain(e), "reload not recorded: the loaded runbooks and plugins keep serving")
            }
        }
        result
    }

    async fn switch_to(&self, set: Arc<RunbookSet>, actor: &str, via: &str) -> Result<Reloaded, ReloadError> {
        // No intake or admission is between matching and its commit while
        // the runs to keep on the old set are listed.
        let _switch = self.switch.write().await;
        let mut open = Vec::new();
        for state in [State::Queued, State::Running, State::PendingApproval] {
            let mut after = None;
            loop {
                let page = self
                    .store
                    .executions(crate::store::ExecutionFilter {
                        state: Some(state),
                        limit: 1000,
                        after: after.clone(),
                        ..Default::default()
                    })
                    .await?;
                after = page.last().map(|e| e.id.clone());
                let full = page.len() == 1000;
                open.extend(page.into_iter().map(|e| e.id));
                if !full {
                    break;
                }
            }
        }
        self.store
            .record(vec![config_loaded(self.config(), &set, actor, Some(via))])
            .await?;
        let mut sets = self.sets.lock().expect("sets lock");
        let old = sets.current.clone();
        let pinned: std::collections::HashMap<String, Arc<RunbookSet>> = open
            .into_iter()
            .map(|id| {
                let kept = sets.pinned.get(&id).unwrap_or(&old).clone();
                (id, kept)
            })
            .collect();
        let digest =
            |s: &RunbookSet| -> BTreeMap<String, String> { s.runbooks.iter().map(|r| (r.name.clone(), r.digest.clone())).collect() };
        let (before, after) = (digest(&old), digest(&set));
        let report = Reloaded {
            added: after.keys().filter(|n| !before.contains_key(*n)).cloned().collect(),
            removed: before.keys().filter(|n| !after.contains_key(*n)).cloned().collect(),
            changed: after
                .iter()
                .filter(|(n, d)| before.get(*n).is_some_and(|b| b != *d))
                .map(|(n, _)| n.clone())
                .collect(),
            runbooks: after,
            plugins: plugin_names(&set),
            kept_by_runs: pinned.len(),
        };
        sets.pinned = pinned;
        sets.retired.retain(|w| w.strong_count() > 0);
        sets.retired.push(Arc::downgrade(&old));
        sets.current = set;
        Ok(report)
    }

    /// Builds the admissions for one alert: every matching runbook with its
    /// params and target, or the reason they could not be resolved.
    async fn admissions(&self, set: &RunbookSet, alert: &Alert) -> Vec<Admission> {
        let mut out = Vec::new();
        for rb in set.matching(alert) {
            let (params, target, inhibit, invalid) = match set.resolve(rb, Some(alert), &BTreeMap::new()) {
                Ok(r) => (r.params, r.target, r.inhibit, None),
                Err(e) => (
                    serde_json::Map::new(),
                    format!("{}/{}", rb.name, alert.fingerprint),
                    Vec::new(),
                    Some(e.to_string()),
                ),
            };
            out.push(Admission {
                id: new_id(),
                runbook: rb.clone(),
                target,
                params,
                actor: "alertmanager".into(),
                automated: true,
                dry_run: false,
                force: None,
                // The webhook never waits on Prometheus: cached or unknown.
                budget: rb
                    .guardrails
                    .slo
                    .as_deref()
                    .and_then(|slo| self.budgets.cached_or_unknown(slo, Utc::now())),
                invalid,
                inhibit,
            });
        }
        out
    }

    /// An admission for a run asked for by a person (CLI or API).
    pub async fn manual_admission(
        &self,
        rb: &Arc<Runbook>,
        resolved: crate::runbook::Resolved,
        actor: String,
        dry_run: bool,
        force: Option<String>,
    ) -> Admission {
        Admission {
            id: new_id(),
            runbook: rb.clone(),
            target: resolved.target,
            params: resolved.params,
            actor,
            automated: false,
            dry_run,
            force,
            budget: self.budget_for(rb).await,
            invalid: None,
            inhibit: resolved.inhibit,
        }
    }

    async fn budget_for(&self, rb: &Runbook) -> Option<crate::guard::BudgetStatus> {
        let slo = rb.guardrails.slo.as_deref()?;
        self.budgets.status(slo, Utc::now()).await
    }

    /// Intake: match, admit under the guardrails, store durably. Returns after
    /// the commit; queued work is handed to the workers.
    pub async fn intake(&self, alerts: Vec<Alert>) -> Result<IntakeResult, StoreError> {
        let switch = self.switch.read().await;
        let set = self.runbooks();
        let mut items = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let admissions = self.admissions(&set, &alert).await;
            items.push(IntakeAlert::new(alert, admissions));
        }
        let mut result = self.store.intake(items, self.config().clone()).await?;
        drop(switch);
        // Before the queued runs take the alerts back: notices name their run.
        // Looked up only when some decision sends one (most send none).
        let runs: std::collections::HashMap<&str, &Admission> = if result.executions.iter().any(|(_, d)| needs_notice(d)) {
            result
                .alerts
                .iter()
                .flat_map(|a| a.admissions.iter())
                .map(|a| (a.id.as_str(), a))
                .collect()
        } else {
            std::collections::HashMap::new()
        };
        self.after_decisions(result.executions.iter().map(|(id, d)| {
            let admission = runs.get(id.as_str());
            let decided = Decided {
                id,
                runbook: admission.map(|a| a.runbook.name.as_str()).unwrap_or_default(),
                target: admission.map(|a| a.target.as_str()).unwrap_or_default(),
            };
            (decided, d)
        }));
        drop(runs);
        self.dispatch.offer(queued_executions(&mut result, &self.config().redactor));
        self.metrics.alerts_received.inc_by(result.accepted as u64);
        self.metrics.alerts_duplicate.inc_by(result.duplicates as u64);
        if result.executions.iter().any(|(_, d)| d.verdict == Verdict::Run) {
            self.wake.notify_waiters();
        }
        Ok(result)
    }

    /// Manual or API run: the same guardrails, the same store.
    pub async fn admit(&self, admission: Admission, alert: Option<Alert>) -> Result<Decision, StoreError> {
        let (id, runbook, target) = (admission.id.clone(), admission.runbook.name.clone(), admission.target.clone());
        let switch = self.switch.read().await;
        self.pin_if_replaced(&id, &admission.runbook);
        let decision = self.store.admit(admission, alert, self.config().clone()).await?;
        drop(switch);
        let decided = Decided {
            id: &id,
            runbook: &runbook,
            target: &target,
        };
        self.after_decisions(std::iter::once((decided, &decision)));
        if decision.verdict == Verdict::Run {
            self.queued_elsewhere();
        }
        Ok(decision)
    }

    /// Notices for decisions already durable: a run waiting for approval,
    /// a tripped escalation breaker, a storm. Each goes out once, in the
    /// background (see [`Notifier::send`]).
    fn after_decisions<'a>(&self, decisions: impl Iterator<Item = (Decided<'a>, &'a Decision)>) {
        for (run, d) in decisions {
            if d.verdict == Verdict::Blocked {
                self.metrics.execution("blocked");
            }
            if !needs_notice(d) {
                continue;
            }
            let execution = Some((run.id.to_string(), run.runbook.to_string(), run.target.to_string()));
            if d.verdict == Verdict::PendingApproval {
                // Nobody watches a run that waits: say so where operators look.
                tracing::info!(execution = %run.id, runbook = %run.runbook, target = %run.target, reason = %d.reason, "run waits for approval");
                self.send_notice(Notice {
                    event: NoticeEvent::PendingApproval,
                    text: format!(
                        "pitcrew: {} on {} waits for approval ({}). Approve: pitcrew approve {id}; deny: pitcrew deny {id}",
                        run.runbook,
                        run.target,
                        d.reason,
                        id = run.id
                    ),
                    execution: execution.clone(),
                    runbook_url: self.notifier().runbook_url(run.runbook),
                });
                if let Some(slack) = &self.slack {
                    let risk = self.runbooks().get(run.runbook).map(|r| r.risk.to_string());
                    let ask = crate::slack::Ask {
                        execution: run.id.to_string(),
                        runbook: run.runbook.to_string(),
                        target: run.target.to_string(),
                        risk: risk.unwrap_or_else(|| "unknown".into()),
                        guardrail: d.decided_by.to_string(),
                        reason: d.reason.clone(),
                    };
                    self.notices.spawn(slack.clone().ask(self.store.clone(), ask));
                }
            }
            if let Some(text) = &d.notify {
                self.send_notice(Notice {
                    event: NoticeEvent::Escalated,
                    text: text.clone(),
                    execution,
                    runbook_url: self.notifier().runbook_url(run.runbook),
                });
            } else if d.storm_notice {
                // A storm is about every runbook: the config's channel.
                self.send_notice(Notice {
                    event: NoticeEvent::Storm,
                    text: format!(
                        "pitcrew storm brake: {}. Medium and high risk automation is paused; low risk continues.",
                        d.reason
                    ),
                    execution: None,
                    runbook_url: None,
                });
            }
        }
    }

    fn send_notice(&self, notice: Notice) {
        self.notifier().send(notice);
    }

    /// Runs workers until `shutdown` fires; each claims and runs executions.
    /// A worker that ends before shutdown (a panic outside any action) is
    /// logged and replaced: the pool never shrinks silently.
    pub async fn run_workers(self: Arc<Self>, count: usize) {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..count {
            let engine = self.clone();
            let shutdown = self.shutdown.clone();
            workers.spawn(async move { engine.worker(shutdown).await });
        }
        while let Some(ended) = workers.join_next().await {
            if let Err(e) = &ended {
                tracing::error!(error = %e, "a worker panicked");
            }
            if self.shutdown.is_cancelled() {
                continue;
            }
            tracing::error!("a worker ended before shutdown; starting another");
            let engine = self.clone();
            let shutdown = self.shutdown.clone();
            workers.spawn(async move {
                // Not at once: a worker that fails on every turn must not spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                engine.worker(shutdown).await
            });
        }
        self.settle().await;
    }

    /// Tells live claims from dead ones for [`Store::recover`]: a claim of a
    /// process that is gone, or one this process gave up.
    pub fn liveness(&self) -> Liveness {
        let abandoned = self.abandoned.clone();
        Arc::new(move |claimer: &str| !abandoned.lock().expect("abandoned lock").contains(claimer) && claimer_alive(claimer))
    }

    /// Hands runs of dead workers, and runs this process gave up, back to
    /// the queue (or to `unknown`) by the recovery rule.
    pub async fn recover(&self) -> Result<Recovery, StoreError> {
        let given_up: Vec<String> = self.abandoned.lock().expect("abandoned lock").iter().cloned().collect();
        let report = self.store.recover(self.liveness()).await?;
        // The pass requeued every one of them that was still running; a
        // claim number never comes back, so they need not be kept.
        let mut abandoned = self.abandoned.lock().expect("abandoned lock");
        for claim in given_up {
            abandoned.remove(&claim);
        }
        Ok(report)
    }

    async fn worker(&self, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            // Register interest before looking, so a wake between the look
            // and the wait is not lost.
            let notified = self.wake.notified();
            match self.turn().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(EngineError::ShuttingDown) => return,
                Err(e) => tracing::error!(error = %crate::diag::chain(&e), "worker turn failed"),
            }
            // Other processes (CLI approvals) queue work too: look again now and then.
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(crate::dispatch::REFILL_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One worker turn: refills the in-memory queue from the store when due,
    /// then runs the next execution to its end. `Ok(false)`: nothing to run.
    pub async fn turn(&self) -> Result<bool, EngineError> {
        if let Some(mut refill) = self.dispatch.begin_refill(std::time::Instant::now()) {
            let exclude = std::mem::take(&mut refill.exclude);
            match self.store.queued(refill.limit, exclude).await {
                Ok((found, exhausted)) => {
                    if self.dispatch.end_refill(refill, found, exhausted) {
                        self.wake.notify_waiters();
                    }
                }
                Err(e) => {
                    self.dispatch.abort_refill();
                    return Err(e.into());
                }
            }
        }
        let Some(mut exec) = self.dispatch.pop() else {
            return Ok(false);
        };
        // Claimed in the transaction of its first record (see `Pending`).
        let started_at = exec.started_at.unwrap_or_else(|| crate::store::truncate_ms(self.store.now()));
        let worker = format!("{}/{}", self.worker_id, self.claims.fetch_add(1, Ordering::Relaxed));
        exec.state = State::Running;
        exec.claimed_by = Some(worker.clone());
        exec.started_at = Some(started_at);
        let claim = Claim { worker, started_at };
        // A panic in an action fails its step (`run_step`); one anywhere else
        // in the run ends it here, and recovery takes the run over.
        let result = std::panic::AssertUnwindSafe(self.run(&exec, Some(claim), None))
            .catch_unwind()
            .await;
        self.dispatch.done(&exec.id);
        let result = match result {
            Ok(result) => result,
            Err(panic) => {
                tracing::error!(execution = %exec.id, panic = panic_message(&*panic), "a run panicked");
                abandon(&self.abandoned, &exec);
                return Ok(true);
            }
        };
        match result {
            Ok(ending) => {
                // The worker is free once the run's last action is over;
                // recording its end (and the fsync) happens meanwhile.
                let (store, metrics, notifier, abandoned, dispatch) = (
                    self.store.clone(),
                    self.metrics.clone(),
                    self.notifier(),
                    self.abandoned.clone(),
                    self.dispatch.clone(),
                );
                self.finishing.spawn(async move {
                    if let Err(e) = record_end(&*store, &metrics, &notifier, &exec, ending).await {
                        let _ = stopped(&*store, &abandoned, &exec, e).await;
                        dispatch.look_again();
                    }
                });
                Ok(true)
            }
            Err(e) => {
                let handled = stopped(&*self.store, &self.abandoned, &exec, e).await;
                // Perhaps handed back to the store's queue.
                self.dispatch.look_again();
                handled.map(|()| true)
            }
        }
    }

    /// Prunes ended executions older than `retention.executions`, in small
    /// writes (each rides in a group commit with intake, so the webhook never
    /// waits behind a long delete), and their artifact folders. Returns how
    /// many were pruned. The audit log is never pruned.
    pub async fn prune_history(&self) -> Result<usize, StoreError> {
        /// Executions per write: a few milliseconds of the writer.
        const BATCH: usize = 256;
        let Some(retention) = self.config().retention else { return Ok(0) };
        let before = self.store.now() - chrono::Duration::milliseconds(retention.as_millis() as i64);
        let mut total = 0;
        loop {
            let pruned = self.store.prune(before, BATCH).await?;
            total += pruned.ids.len();
            for id in &pruned.ids {
                // Most runs have no folder (only runs that wrote something do).
                let _ = std::fs::remove_dir_all(artifact_dir(&self.config().state_dir, id));
            }
            if !pruned.more {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Waits until the ends of runs workers finished are recorded, then
    /// until the notices sent so far are delivered and recorded (a CLI
    /// process waits for them before it exits).
    pub async fn settle(&self) {
        self.finishing.close();
        self.finishing.wait().await;
        self.finishing.reopen();
        self.notices.close();
        self.notices.wait().await;
        self.notices.reopen();
    }

    fn notifier(&self) -> Notifier {
        Notifier {
            store: self.store.clone(),
            deps: self.deps.clone(),
            sets: self.sets.clone(),
            tasks: self.notices.clone(),
            pagerduty: self.pagerduty.clone(),
        }
    }

    /// A run ended outside a worker (`pitcrew run` interrupted): the same
    /// log line and notice as any other end.
    pub fn run_ended(&self, exec: &Execution, state: State, reason: Option<&str>) {
        self.notifier().run_ended(exec, state, reason);
    }

    /// Runs an execution claimed from the store to its end.
    pub async fn execute(&self, exec: Execution, progress: Option<ProgressFn>) -> Result<Outcome, EngineError> {
        let ending = self.run(&exec, None, progress).await?;
        record_end(&*self.store, &self.metrics, &self.notifier(), &exec, ending).await
    }

    /// Runs an execution to its end; `claim` when it still has to be
    /// claimed (taken from the in-memory queue).
    async fn run(&self, exec: &Execution, claim: Option<Claim>, progress: Option<ProgressFn>) -> Result<Ending, EngineError> {
        let pending = Pending { claim, ended: Vec::new() };
        let set = self.set_for(&exec.id);
        let Some(rb) = set.get(&exec.runbook).cloned() else {
            let reason = format!("runbook `{}` is not loaded", exec.runbook);
            self.store.finish(exec, pending, State::Failed, Some(reason.clone())).await?;
            self.metrics.execution("failed");
            self.notifier().run_ended(exec, State::Failed, Some(&reason));
            return Err(EngineError::UnknownRunbook(exec.runbook.clone()));
        };
        let resolved = crate::runbook::Resolved {
            params: exec.params.clone(),
            target: exec.target.clone(),
            inhibit: Vec::new(),
        };
        let mut outputs = serde_json::Map::new();
        for s in exec.steps.iter().filter(|s| s.state == StepState::Succeeded) {
            outputs.insert(s.name.clone(), json!({"output": s.output.clone().unwrap_or(Value::Null)}));
        }
        let run = Run {
            engine: self,
            set: &set,
            rb: &rb,
            exec,
            // Someone watching live (`pitcrew run`) sees each end as it is recorded.
            defer_ends: progress.is_none(),
            progress,
            pending: Mutex::new(pending),
            acknowledged: std::sync::atomic::AtomicBool::new(false),
        };
        let failure: Option<String> = match &exec.resume_error {
            Some(e) => Some(e.clone()),
            None => run.phase(Phase::Main, &rb.steps, &resolved, &mut outputs, None).await?,
        };
        let outcome = match failure {
            None => Outcome {
                state: State::Succeeded,
                reason: None,
            },
            Some(error) => {
                run.phase(Phase::OnFailure, &rb.on_failure, &resolved, &mut outputs, Some(&error))
                    .await?;
                let state = if exec.resume_error.is_some() {
                    State::Unknown
                } else {
                    State::Failed
                };
                Outcome {
                    state,
                    reason: Some(error),
                }
            }
        };
        Ok(Ending {
            pending: run.take_pending(),
            outcome,
        })
    }
}

struct Run<'a> {
    engine: &'a Engine,
    /// The set the run was admitted under (its step templates live there).
    set: &'a RunbookSet,
    rb: &'a Runbook,
    exec: &'a Execution,
    progress: Option<ProgressFn>,
    /// Written with the next record (see [`Pending`]).
    pending: Mutex<Pending>,
    defer_ends: bool,
    /// The PagerDuty acknowledge went out (once per run).
    acknowledged: std::sync::atomic::AtomicBool,
}

impl Run<'_> {
    /// The run's first step started (durably, so the run is claimed): an
    /// alert's run of a runbook with `pagerduty.acknowledge` tells
    /// PagerDuty that automation is on the incident Alertmanager opened.
    /// Not for dry runs, nor again for a run resumed after a crash.
    fn acknowledge(&self) {
        let Some(pd) = &self.engine.pagerduty else { return };
        let exec = self.exec;
        if !self.rb.pagerduty_acknowledge || !exec.automated || exec.dry_run || !exec.steps.is_empty() {
            return;
        }
        if self.acknowledged.swap(true, Ordering::Relaxed) {
            return;
        }
        match exec.alert.as_ref().and_then(|a| a.group_key.as_deref()) {
            Some(group_key) => pd.send(
                crate::pagerduty::PdEvent::acknowledge(group_key),
                (exec.id.clone(), exec.runbook.clone(), exec.target.clone()),
            ),
            None => {
                tracing::warn!(execution = %exec.id, "no groupKey stored with the alert (stored before pitcrew kept it, or not from a webhook): PagerDuty not acknowledged")
            }
        }
    }

    fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().expect("pending lock"))
    }

    /// A step ended: recorded with the next write, which follows at once
    /// (the next step's start or the execution's end).
    async fn ended(&self, end: StepEnd) -> Result<(), EngineError> {
        self.pending.lock().expect("pending lock").ended.push(end);
        if !self.defer_ends {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is pending now: before waiting or stopping.
    async fn flush(&self) -> Result<(), EngineError> {
        let pending = self.take_pending();
        self.engine.store.record_pending(self.exec, pending).await?;
        Ok(())
    }

    /// Progress for a person watching (`pitcrew run`): redacted like the
    /// audit, since a step's error or output may quote a secret.
    fn report(&self, mut p: Progress) {
        if let Some(f) = &self.progress {
            if let Progress::StepFinished { detail, .. } = &mut p {
                *detail = self.engine.config().redactor.text(detail);
            }
            f(&p);
        }
    }

    /// Runs a list of steps; returns the error that stops it, if any.
    async fn phase(
        &self,
        phase: Phase,
        steps: &[Step],
        resolved: &crate::runbook::Resolved,
        outputs: &mut serde_json::Map<String, Value>,
        error: Option<&str>,
    ) -> Result<Option<String>, EngineError> {
        let set = self.set;
        let mut first_error = None;
        // In a dry run, steps that were not run have no output; steps that
        // need it are skipped too rather than failed.
        let mut not_run: Vec<String> = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let index = index as u32;
            if self.engine.shutdown.is_cancelled() {
                // A run still to be claimed wrote nothing and stays queued;
                // otherwise what is done is recorded before stopping.
                if self.pending.lock().expect("pending lock").claim.is_none() {
                    self.flush().await?;
                }
                return Err(EngineError::ShuttingDown);
            }
            // Resuming after a crash: a step whose last attempt ended is not run
            // again; one whose last attempt only started is (recovery let the run
            // resume only if that step is idempotent). Matched by name, not
            // position, so an edited runbook cannot shift a done step's record
            // onto another step.
            let last = self
                .exec
                .steps
                .iter()
                .filter(|s| s.phase == phase && s.name == step.name)
                .max_by_key(|s| s.attempt);
            if let Some(done) = last.filter(|s| s.state != StepState::Started) {
                if done.state == StepState::Failed && !step.continue_on_error && phase == Phase::Main {
                    return Ok(Some(done.error.clone().unwrap_or_else(|| format!("step `{}` failed", step.name))));
                }
                continue;
            }
            let ctx = RunbookSet::step_context(self.rb, self.exec.alert.as_ref(), resolved, &self.exec.id, outputs, error);
            let end = |state: StepState, output: Option<Value>, err: Option<String>, kind: Option<&str>, attempt: u32, ms: u64| StepEnd {
                phase,
                index,
                name: step.name.clone(),
                attempt,
                state,
                output,
                error: err,
                error_kind: kind.map(String::from),
                duration_ms: ms,
            };
            // `when` false skips the step; a `when` or input that cannot be
            // rendered fails it before anything runs.
            let prepared = match set.when_holds(step, &ctx) {
                Ok(false) => Ok(None),
                Ok(true) => set.render_with(step, &ctx).map_err(|e| e.to_string()).and_then(|input| {
                    step.action
                        .check_rendered(&step.with, &input)
                        .map(|()| Some(input))
                        .map_err(|e| format!("step `{}`: {e}", step.name))
                }),
                Err(e) => Err(e.to_string()),
            };
            let input = match prepared {
                Ok(Some(input)) => input,
                Ok(None) => {
                    let skipped = end(StepState::Skipped, Some(json!({"skipped": "when is false"})), None, None, 0, 0);
                    self.ended(skipped).await?;
                    self.report(Progress::StepFinished {
                        name: step.name.clone(),
                        state: StepState::Skipped,
                        detail: "when is false".into(),
                        seconds: 0.0,
                    });
                    continue;
                }
                Err(msg) if self.exec.dry_run && not_run.iter().any(|n| msg.contains(&format!("`steps.{n}."))) => {
                    let why = "skipped: dry run (needs the output of a step the dry run did not run)".to_string();
                    let skipped = end(
                        StepState::Skipped,
                        Some(json!({"skipped": "dry run"})),
                        Some(why.clone()),
                        None,
                        0,
                        0,
                    );
                    self.ended(skipped).await?;
                    self.report(Progress::StepFinished {
                        name: step.name.clone(),
                        state: StepState::Skipped,
                        detail: why,
                        seconds: 0.0,
                    });
                    not_run.push(step.name.clone());
                    continue;
                }
                Err(msg) => {
                    let failed = end(StepState::Failed, None, Some(msg.clone()), Some("bad_input"), 0, 0);
                    self.ended(failed).await?;
                    self.report(Progress::StepFinished {
                        name: step.name.clone(),
                        state: StepState::Failed,
                        detail: msg.clone(),
                        seconds: 0.0,
                    });
                    if step.continue_on_error || phase == Phase::OnFailure {
                        first_error.get_or_insert(msg);
                        continue;
                    }
                    return Ok(Some(msg));
                }
            };
            let (state, output, err) = self.run_step(phase, index, step, &input).await?;
            if self.exec.dry_run && err.as_deref() == Some(DRY_RUN_SKIP) {
                not_run.push(step.name.clone());
            } else if state == StepState::Succeeded {
                outputs.insert(step.name.clone(), json!({"output": output.unwrap_or(Value::Null)}));
            }
            if state == StepState::Failed {
                let msg = format!("step `{}` failed: {}", step.name, err.unwrap_or_default());
                if step.continue_on_error || phase == Phase::OnFailure {
                    first_error.get_or_insert(msg);
                    continue;
                }
                return Ok(Some(msg));
            }
        }
        // continue_on_error failures are recorded on their steps; they do not fail the run.
        if let Some(e) = first_error {
            tracing::debug!(execution = %self.exec.id, error = %e, "continued past a failed step");
        }
        Ok(None)
    }

    /// One step: durable start record, the action (with timeout and, for
    /// idempotent actions only, retries with backoff), durable end record.
    async fn run_step(
        &self,
        phase: Phase,
        index: u32,
        step: &Step,
        input: &Value,
    ) -> Result<(StepState, Option<Value>, Option<String>), EngineError> {
        let action = step.action.clone();
        let action_name = action.spec().name.clone();
        let dry = self.exec.dry_run;
        let mode = if dry { action.dry_run(input) } else { DryRun::Run };
        let retries = if step.idempotent { step.retries } else { 0 };
        let mut delays = backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(std::time::Duration::from_secs(1))
                .with_max_delay(std::time::Duration::from_secs(30))
                .with_max_times(retries as usize),
        );
        let mut attempt = 0u32;
        loop {
            self.engine
                .store
                .step_started(
                    self.exec,
                    self.take_pending(),
                    StepStart {
                        phase,
                        index,
                        name: step.name.clone(),
                        action: action_name.clone(),
                        attempt,
                        idempotent: step.idempotent,
                        input: crate::redact::step_input(input),
                        dry_run: dry,
                    },
                )
                .await?;
            // The start is durable, the action not yet run.
            crate::failpoint::crash("engine.step_started");
            self.acknowledge();
            self.report(Progress::StepStarted {
                name: step.name.clone(),
                action: action_name.clone(),
                attempt,
                dry_run: dry,
            });
            let started = Instant::now();
            let result: Result<Value, ActionError> = if mode == DryRun::Skip {
                Ok(json!({"skipped": "dry run"}))
            } else {
                let cx = ActionContext {
                    execution_id: &self.exec.id,
                    step: &step.name,
                    started_at: self.exec.started_at.unwrap_or(self.exec.created_at),
                    dry_run: dry,
                    artifacts: artifact_dir(&self.engine.config().state_dir, &self.exec.id),
                    alert: self.exec.alert.as_ref(),
                    deps: &self.engine.deps,
                };
                let limit = step.timeout.unwrap_or(crate::units::Duration::from_secs(600));
                // A panic is the action's bug: it fails this step, and the
                // worker carries on.
                let running = std::panic::AssertUnwindSafe(action.run(input, &cx)).catch_unwind();
                match tokio::time::timeout(limit.std(), running).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(panic)) => {
                        tracing::error!(execution = %self.exec.id, step = %step.name, action = %action_name, panic = panic_message(&*panic), "an action panicked; the step fails");
                        Err(ActionError::Internal)
                    }
                    Err(_) => Err(ActionError::Timeout(limit)),
                }
            };
            // The action ran, its end not yet recorded.
            crate::failpoint::crash("engine.step_ran");
            let seconds = started.elapsed().as_secs_f64();
            self.engine.metrics.step(&action_name, seconds);
            let ms = (seconds * 1000.0) as u64;
            let (state, output, err, kind) = match result {
                Ok(out) if mode == DryRun::Skip => (StepState::Skipped, Some(out), Some(DRY_RUN_SKIP.to_string()), None),
                Ok(out) => (StepState::Succeeded, Some(out), None, None),
                Err(e) => (StepState::Failed, None, Some(e.to_string()), Some(e.kind().to_string())),
            };
            self.ended(StepEnd {
                phase,
                index,
                name: step.name.clone(),
                attempt,
                state,
                output: output.clone(),
                error: err.clone(),
                error_kind: kind.clone(),
                duration_ms: ms,
            })
            .await?;
            let detail = match (&err, &output) {
                (Some(e), _) => e.clone(),
                (None, Some(o)) => short(o),
                _ => String::new(),
            };
            self.report(Progress::StepFinished {
                name: step.name.clone(),
                state,
                detail,
                seconds,
            });
            if state != StepState::Failed {
                // A step skipped by a dry run counts as done for what follows.
                return Ok((if state == StepState::Skipped { StepState::Succeeded } else { state }, output, err));
            }
            match delays.next() {
                Some(delay) => {
                    attempt += 1;
                    self.flush().await?;
                    tokio::time::sleep(delay).await;
                }
                None => return Ok((state, output, err)),
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_dead_only_when_its_process_is_gone_or_restarted() {
        let me = worker_id();
        assert!(claimer_alive(&me));
        assert!(claimer_alive(&format!("{me}/7")), "a worker's numbered claim");
        let (pid, _) = me.split_once(':').unwrap();
        assert!(!claimer_alive(&format!("{pid}:1")), "the pid reused by a later process");
        assert!(!claimer_alive("4194303999:1"), "no such process");
        assert!(claimer_alive("not-a-claim"), "unparsable: never stolen");
        assert_eq!(
            start_of("1 (a) b) S 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21").as_deref(),
            Some("20")
        );
    }
}
