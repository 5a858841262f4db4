//! Group commit, for every backend: one writer thread owns the write
//! connection, and every job waiting when a transaction starts rides in it;
//! all of them learn the outcome after the one commit is durable. That is
//! what lets durable intake run far above the disk's fsync rate (SQLite) or
//! the server's commit rate (PostgreSQL).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};

use super::backend::Conn;
use super::rules::{FirstWrite, FirstWritten, Txn, first_writes};
use super::{Health, StoreError};
use crate::clock::Clock;
use crate::redact::Redactor;

/// Jobs waiting beyond this are refused (503) instead of queueing forever.
/// (Counted, not a bounded channel: those allocate and touch every slot up
/// front, megabytes of idle memory for a queue that is nearly always short.)
const WRITE_QUEUE: usize = 65_536;
/// Most jobs per group commit; bounds one transaction's latency.
const GROUP_MAX: usize = 2_048;

pub(super) type Completion = Box<dyn FnOnce(Result<(), Uncommitted>) + Send>;

/// Why a group's jobs were not kept.
#[derive(Debug, Clone)]
pub(super) enum Uncommitted {
    /// A job failed half way; the others did nothing wrong.
    RolledBack(String),
    /// COMMIT or the durability after it failed.
    Failed(String),
}

/// One caller's work in a group commit.
pub(super) struct Job {
    /// Its first write, when it is one the group's jobs share a statement
    /// for (see [`FirstWrite`]): made for the whole group before any job
    /// runs, its outcome handed to `run`.
    first: Option<FirstWrite>,
    run: RunJob,
}

/// A job's work, given what its first write did.
type RunJob = Box<dyn FnOnce(&mut Txn<'_>, Option<FirstWritten>) -> Completion + Send>;

/// The store's [`Health`], set by the writer (and SQLite's sync thread).
pub(super) type SharedHealth = Arc<Mutex<Health>>;

/// Sets the health unless the store already stopped for good.
pub(super) fn set_health(health: &SharedHealth, to: Health) {
    let mut now = health.lock().expect("health lock");
    if !matches!(*now, Health::Stopped(_)) {
        *now = to;
    }
}

/// The writer's inbox.
pub(super) struct WriteQueue {
    sender: Sender<Job>,
    /// Jobs sent and not yet taken by the writer.
    waiting: Arc<AtomicUsize>,
    /// Bumped after each job answered: see `Store::commits`.
    commits: tokio::sync::watch::Sender<u64>,
}

/// The writer's end of a [`WriteQueue`].
pub(super) struct Inbox {
    receiver: Receiver<Job>,
    waiting: Arc<AtomicUsize>,
}

impl WriteQueue {
    pub(super) fn new() -> (WriteQueue, Inbox) {
        let (sender, receiver) = channel::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        (
            WriteQueue {
                sender,
                waiting: waiting.clone(),
                commits: tokio::sync::watch::Sender::new(0),
            },
            Inbox { receiver, waiting },
        )
    }

    /// Runs `f` in the next group commit; resolves after the commit.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.send(job(f)).await
    }

    /// Makes `first` with the group's other first writes, then runs `f`
    /// with its outcome; resolves after the commit.
    pub(super) async fn write_after<T, F>(&self, first: FirstWrite, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>, FirstWritten) -> Result<T, StoreError> + Send + 'static,
    {
        self.send(job_after(Some(first), move |t, written| {
            f(t, written.expect("a job's first write is made before it runs"))
        }))
        .await
    }

    async fn send<T>(&self, (job, rx): (Job, tokio::sync::oneshot::Receiver<Result<T, StoreError>>)) -> Result<T, StoreError> {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= WRITE_QUEUE {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Busy);
        }
        if self.sender.send(job).is_err() {
            return Err(StoreError::Closed);
        }
        // A dropped completion means the writer could not begin the transaction.
        let outcome = rx.await.map_err(|_| StoreError::NotStarted)?;
        if outcome.is_ok() {
            self.commits.send_modify(|n| *n = n.wrapping_add(1));
        }
        outcome
    }

    /// Follows the commits of jobs sent here.
    pub(super) fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }
}

/// Wraps `f` as a job for the writer, and the receiver of its outcome.
pub(super) fn job<T, F>(f: F) -> (Job, tokio::sync::oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnOnce(&mut Txn<'_>) -> Result<T, StoreError> + Send + 'static,
{
    job_after(None, move |t, _| f(t))
}

/// A job whose first write is `first` (if any).
pub(super) fn job_after<T, F>(first: Option<FirstWrite>, f: F) -> (Job, tokio::sync::oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnOnce(&mut Txn<'_>, Option<FirstWritten>) -> Result<T, StoreError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let run: RunJob = Box::new(move |t: &mut Txn<'_>, written: Option<FirstWritten>| -> Completion {
        let result = if let Some(why) = &t.failed {
            Err(StoreError::RolledBack(why.clone()))
        } else {
            // A first write that changed something is this job's write.
            let wrote_first = written.as_ref().is_some_and(FirstWritten::changed);
            let before = t.tx.changes();
            let r = f(t, written);
            if let Err(e) = &r {
                if let StoreError::Database { disk: true, .. } = e {
                    t.disk.get_or_insert(e.to_string());
                }
                if t.tx.aborted() {
                    // The database itself ended the whole transaction (SQLite
                    // may on a full disk or an I/O error; PostgreSQL on any
                    // failed statement): the jobs before this one are gone
                    // too, and the ones after must not run.
                    t.failed = Some(format!("the database rolled the transaction back: {}", crate::diag::chain(e)));
                } else if wrote_first || t.tx.changes() != before {
                    // It failed half way: the whole group is rolled back.
                    t.failed = Some(e.to_string());
                }
            }
            r
        };
        Box::new(move |committed: Result<(), Uncommitted>| {
            let outcome = match committed {
                Ok(()) => result,
                // The job that failed keeps its own error.
                Err(Uncommitted::RolledBack(_)) if result.is_err() => result,
                Err(Uncommitted::RolledBack(why)) => Err(StoreError::RolledBack(why)),
                Err(Uncommitted::Failed(e)) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
            };
            let _ = tx.send(outcome);
        })
    });
    (Job { first, run }, rx)
}

/// A committed group: its jobs' answers, held until the commit is durable.
pub(super) struct Committed {
    pub(super) outcome: Result<(), Uncommitted>,
    pub(super) completions: Vec<Completion>,
}

impl Committed {
    /// Answers every job of the group (`failed`: durability failed after all).
    pub(super) fn answer(self, failed: Option<&str>) {
        let outcome = match failed {
            Some(e) => Err(Uncommitted::Failed(e.to_string())),
            None => self.outcome,
        };
        for done in self.completions {
            done(outcome.clone());
        }
    }
}

/// Runs one group of jobs in one transaction. Jobs run without savepoints
/// (they cost a statement pair per job): one that fails before writing fails
/// alone, one that fails after writing rolls the whole group back, and the
/// others learn they were not kept.
pub(super) fn run_group<C: Conn>(
    conn: &mut C,
    batch: Vec<Job>,
    redactor: &Redactor,
    clock: &dyn Clock,
    health: &SharedHealth,
) -> Committed {
    let changes_before = conn.changes();
    let mut tx = Txn::new(conn, redactor, clock.now());
    let firsts: Vec<&FirstWrite> = batch.iter().filter_map(|job| job.first.as_ref()).collect();
    let mut written = if firsts.is_empty() {
        Vec::new()
    } else {
        match first_writes(&mut tx, &firsts) {
            Ok(written) => written,
            Err(e) => {
                if let StoreError::Database { disk: true, .. } = &e {
                    tx.disk.get_or_insert(e.to_string());
                }
                // Every job of the group fails, as if each had failed half way.
                tx.failed = Some(format!("the group's first writes failed: {}", crate::diag::chain(&e)));
                Vec::new()
            }
        }
    }
    .into_iter();
    let completions: Vec<Completion> = batch
        .into_iter()
        .map(|job| {
            let first = job.first.as_ref().and_then(|_| written.next());
            (job.run)(&mut tx, first)
        })
        .collect();
    let (failed, disk) = (tx.failed.take(), tx.disk.take());
    let committed = match failed {
        Some(why) => {
            tracing::error!(error = %why, "a state write failed half way; its group is rolled back");
            conn.rollback();
            Err(Uncommitted::RolledBack(why))
        }
        None => conn.commit().map_err(|e| {
            tracing::error!(error = %e, "state commit failed");
            conn.rollback();
            Uncommitted::Failed(e.to_string())
        }),
    };
    match (&committed, disk.as_ref()) {
        (Err(Uncommitted::Failed(why)), _) | (_, Some(why)) => set_health(health, Health::Failing(why.clone())),
        // Only a commit that wrote something shows the store takes writes.
        (Ok(()), None) if conn.changes() != changes_before => set_health(health, Health::Writable),
        _ => {}
    }
    Committed {
        outcome: committed,
        completions,
    }
}

/// The writer thread: takes the jobs waiting, runs them as one group, and
/// hands the group to `deliver` (which answers the jobs once the commit is
/// durable). Stops when the store is dropped or `deliver` says so.
pub(super) fn write_loop<C: Conn>(
    mut conn: C,
    inbox: Inbox,
    redactor: Redactor,
    clock: Arc<dyn Clock>,
    health: SharedHealth,
    mut deliver: impl FnMut(Committed) -> bool,
) {
    /// Whatever ends the writer (a panic in a job included), the store
    /// cannot write any more: say so, so the process can end.
    struct Stopped(SharedHealth);
    impl Drop for Stopped {
        fn drop(&mut self) {
            set_health(&self.0, Health::Stopped("the state writer stopped".into()));
        }
    }
    let _stopped = Stopped(health.clone());
    while let Ok(first) = inbox.receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            match inbox.receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        inbox.waiting.fetch_sub(batch.len(), Ordering::Relaxed);
        if let Err(e) = conn.begin() {
            // Dropping the jobs unanswered fails each caller (503 at the webhook).
            tracing::error!(error = %crate::diag::chain(&e), jobs = batch.len(), "cannot begin a state transaction");
            set_health(&health, Health::Failing(format!("cannot begin a transaction: {e}")));
            continue;
        }
        let group = run_group(&mut conn, batch, &redactor, &*clock, &health);
        if !deliver(group) {
            return;
        }
    }
}
