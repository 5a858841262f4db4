//! The queue of runnable executions in memory: a cache of the head of the
//! store's queue, so workers start runs without a write that claims and
//! reads them back. Intake adds what it just queued; when that would break
//! first-in-first-out order (the cache was full, or the store holds queued
//! runs the cache has not seen), workers refill it from the store instead,
//! oldest first, on a read connection. A run taken from here is claimed in
//! the transaction of its first record ([`crate::store::Pending`]); if it
//! was cancelled or claimed elsewhere meanwhile, that claim fails and the
//! run is dropped, so a stale entry can cost a lookup but never a second run.
//!
//! While the cache is in sync, an empty cache means nothing of this
//! process's intake waits in the store, so workers do not read the store
//! for it: runs queued another way (a manual run, an approval, recovery, a
//! requeue) ask for a refill with [`Dispatch::look_again`], and runs other
//! processes queue are found by the refill every [`REFILL_EVERY`].

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::Execution;

/// Most executions held in memory; the rest wait in the store.
pub const CAPACITY: usize = 4_096;
/// Most executions one refill reads.
pub const REFILL_BATCH: usize = 256;
/// Runs queued by another process (CLI approvals) or by recovery are found
/// by a refill at least this often, even while the cache is busy.
pub const REFILL_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Dispatch {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Execution>,
    /// Ids queued here or being run by a worker of this process.
    known: HashSet<String>,
    /// Every execution queued in the store is also known here, so intake
    /// may append without overtaking older runs.
    in_sync: bool,
    /// Bumped whenever intake could not append what it queued: a refill
    /// that began before the bump cannot have seen those runs.
    skipped: u64,
    refilling: bool,
    last_refill: Option<Instant>,
    /// Runs were queued in the store without passing through here.
    look_again: bool,
}

/// A refill in progress: what to leave out, and the `skipped` count it began at.
pub struct Refill {
    pub exclude: HashSet<String>,
    pub limit: usize,
    epoch: u64,
}

impl Dispatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("dispatch lock")
    }

    /// Runs intake just queued (committed), oldest first.
    pub fn offer(&self, execs: Vec<Execution>) {
        if execs.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if !inner.in_sync || inner.queue.len() + execs.len() > CAPACITY {
            inner.in_sync = false;
            inner.skipped += 1;
            return;
        }
        for exec in execs {
            if inner.known.insert(exec.id.clone()) {
                inner.queue.push_back(exec);
            }
        }
    }

    /// The next run to start; it stays known until [`Dispatch::done`].
    pub fn pop(&self) -> Option<Execution> {
        self.lock().queue.pop_front()
    }

    pub fn done(&self, id: &str) {
        self.lock().known.remove(id);
    }

    /// Runs were queued in the store another way than intake's
    /// [`Dispatch::offer`]: the next turn reads them.
    pub fn look_again(&self) {
        self.lock().look_again = true;
    }

    /// Starts a refill if one is due and none is running: the cache is
    /// empty and may be missing runs the store holds (not in sync, or
    /// [`Dispatch::look_again`]), or the last refill is older than
    /// [`REFILL_EVERY`]. An empty cache in sync is not a reason: at a
    /// thousand runs a second, workers would read the store for every run.
    pub fn begin_refill(&self, now: Instant) -> Option<Refill> {
        let mut inner = self.lock();
        let missing = inner.queue.is_empty() && (!inner.in_sync || inner.look_again);
        let due = missing || inner.last_refill.is_none_or(|t| now.duration_since(t) >= REFILL_EVERY);
        let room = CAPACITY.saturating_sub(inner.queue.len());
        if inner.refilling || !due || room == 0 {
            return None;
        }
        inner.refilling = true;
        inner.look_again = false;
        inner.last_refill = Some(now);
        Some(Refill {
            exclude: inner.known.clone(),
            limit: room.min(REFILL_BATCH),
            epoch: inner.skipped,
        })
    }

    /// Ends a refill with what the store held, oldest first; `exhausted`
    /// when nothing else was queued there. Returns whether workers have
    /// more to do now: runs were added, or intake queued runs it could not
    /// add while this refill read (which it cannot have seen), and nobody
    /// else would look for them before [`REFILL_EVERY`].
    pub fn end_refill(&self, refill: Refill, found: Vec<Execution>, exhausted: bool) -> bool {
        let mut inner = self.lock();
        inner.refilling = false;
        let mut added = 0;
        for exec in found {
            if inner.known.insert(exec.id.clone()) {
                inner.queue.push_back(exec);
                added += 1;
            }
        }
        let raced = inner.skipped != refill.epoch;
        if exhausted && !raced {
            inner.in_sync = true;
        }
        added > 0 || raced
    }

    /// The refill failed; the next turn tries again.
    pub fn abort_refill(&self) {
        let mut inner = self.lock();
        inner.refilling = false;
        inner.look_again = true;
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str) -> Execution {
        Execution {
            id: id.into(),
            runbook: "rb".into(),
            target: "t".into(),
            state: crate::store::State::Queued,
            reason: None,
            actor: "alertmanager".into(),
            alert: None,
            params: Default::default(),
            dry_run: false,
            automated: true,
            risk: crate::runbook::Risk::Low,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            approval_deadline: None,
            resume_error: None,
            claimed_by: None,
            steps: vec![],
        }
    }

    fn ids(d: &Dispatch) -> Vec<String> {
        std::iter::from_fn(|| d.pop()).map(|e| e.id).collect()
    }

    #[test]
    fn intake_appends_only_once_the_store_is_known_to_be_in_memory() {
        let d = Dispatch::default();
        // At start nothing is known about the store: intake must not jump the queue.
        d.offer(vec![exec("new")]);
        assert!(d.is_empty());
        let r = d.begin_refill(Instant::now()).unwrap();
        d.end_refill(r, vec![exec("old"), exec("new")], true);
        d.offer(vec![exec("newer")]);
        assert_eq!(ids(&d), ["old", "new", "newer"]);
    }

    #[test]
    fn a_refill_racing_a_skipped_intake_does_not_claim_to_be_in_sync() {
        let d = Dispatch::default();
        let r = d.begin_refill(Instant::now()).unwrap();
        // Intake commits and offers while the refill reads: it is skipped.
        d.offer(vec![exec("raced")]);
        assert!(d.end_refill(r, vec![], true), "a worker must look again at once");
        d.offer(vec![exec("later")]);
        assert!(d.is_empty(), "`raced` is only in the store; `later` must not overtake it");
        let r = d.begin_refill(Instant::now()).unwrap();
        d.end_refill(r, vec![exec("raced"), exec("later")], true);
        assert_eq!(ids(&d), ["raced", "later"]);
    }

    #[test]
    fn known_runs_are_not_queued_twice_and_a_full_cache_falls_back_to_the_store() {
        let d = Dispatch::default();
        let r = d.begin_refill(Instant::now()).unwrap();
        assert!(r.exclude.is_empty());
        d.end_refill(r, vec![exec("a")], true);
        d.offer(vec![exec("a"), exec("b")]);
        let a = d.pop().unwrap();
        // `a` is running; a refill must leave it (and the queued `b`) out.
        let r = d.begin_refill(Instant::now() + REFILL_EVERY).unwrap();
        assert!(r.exclude.contains("a") && r.exclude.contains("b"));
        d.end_refill(r, vec![exec("b")], true);
        assert_eq!(ids(&d), ["b"]);
        d.done(&a.id);
        d.offer((0..CAPACITY + 1).map(|i| exec(&i.to_string())).collect());
        assert!(d.is_empty(), "more than fits waits in the store");
    }

    #[test]
    fn one_refill_at_a_time_and_only_when_due() {
        let d = Dispatch::default();
        let now = Instant::now();
        let r = d.begin_refill(now).unwrap();
        assert!(d.begin_refill(now).is_none());
        d.end_refill(r, vec![exec("a")], true);
        assert!(d.begin_refill(now).is_none(), "not empty and refilled just now");
        assert!(d.begin_refill(now + REFILL_EVERY).is_some());
    }

    #[test]
    fn an_empty_cache_in_sync_reads_the_store_only_when_asked_or_due() {
        let d = Dispatch::default();
        let now = Instant::now();
        let r = d.begin_refill(now).unwrap();
        d.end_refill(r, vec![], true);
        assert!(d.begin_refill(now).is_none(), "in sync: nothing of intake waits in the store");
        d.look_again();
        let r = d.begin_refill(now).expect("a run was queued another way");
        d.abort_refill();
        let r2 = d.begin_refill(now).expect("a failed refill is tried again");
        drop(r);
        d.end_refill(r2, vec![exec("approved")], true);
        assert_eq!(ids(&d), ["approved"]);
        assert!(d.begin_refill(now).is_none());
        assert!(
            d.begin_refill(now + REFILL_EVERY).is_some(),
            "other processes' runs are found in time"
        );
        // Not (yet) in sync, an empty cache reads at once.
        let d = Dispatch::default();
        assert!(d.begin_refill(now).is_some());
    }
}
