//! The embedded SQLite backend (WAL mode, one file per state dir).
//!
//! One writer thread owns the write connection and commits jobs in groups:
//! every job waiting when a transaction starts rides in it, and all of them
//! learn the outcome after the single fsync. That is what lets durable intake
//! run far above the disk's fsync rate. Other processes (the CLI) may write
//! the same file; SQLite's lock serialises us, and the audit chain cursor is
//! re-read at the start of every transaction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::*;
use crate::audit::{self, Event, kind};
use crate::clock::Clock;
use crate::guard::{self, Facts, Request, STORM_WINDOW, Verdict, Windows};
use crate::redact::Redactor;

/// The condition of the `executions_active` partial index; SQLite uses the
/// index only for queries that repeat it word for word.
macro_rules! active {
    () => {
        "state IN ('queued', 'running', 'pending_approval')"
    };
}

macro_rules! alerts_columns {
    () => {
        "(id BLOB PRIMARY KEY, received_seq INTEGER, decided_ms INTEGER) WITHOUT ROWID"
    };
}

macro_rules! executions_columns {
    () => {
        "(id TEXT PRIMARY KEY, runbook TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
          actor TEXT NOT NULL, alert_seq INTEGER, alert TEXT, fingerprint TEXT, params TEXT NOT NULL,
          dry_run INTEGER NOT NULL, automated INTEGER NOT NULL, risk TEXT NOT NULL, created_ms INTEGER NOT NULL,
          admitted_ms INTEGER, started_ms INTEGER, finished_ms INTEGER, approval_deadline_ms INTEGER,
          claimed_by TEXT, resume_error TEXT)"
    };
}

macro_rules! audit_names_columns {
    () => {
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"
    };
}

macro_rules! audit_columns {
    () => {
        "(seq INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, kind INTEGER NOT NULL, actor INTEGER NOT NULL, \
          execution_id TEXT, runbook TEXT, target TEXT, data TEXT NOT NULL, hash BLOB NOT NULL)"
    };
}

const SCHEMA: &str = concat!(
    r#"
-- Notifications seen, for dedupe: the first 16 bytes of the SHA-256 of
-- `fingerprint|status|startsAt` (`Alert::dedupe_id`). The alert itself is
-- stored once, as the data of its `alert.received` record.
-- An alert blocked only by guardrails that time lifts also keeps its
-- `alert.received` seq and when it was last decided, to be decided again
-- when sent again (`intake.reconsider_after`); others keep NULLs.
CREATE TABLE IF NOT EXISTS alerts "#,
    alerts_columns!(),
    r#";
-- `alert_seq` is the `alert.received` record of the alert that started the
-- run; `alert` holds an alert given to a manual run (`run --alert`), which
-- has no such record. A blocked run's `reason` is its decision record's.
CREATE TABLE IF NOT EXISTS executions "#,
    executions_columns!(),
    r#";
-- Only runs not yet ended: the index stays small however long the history,
-- and a run leaves it when it ends. Queries name `active!()` to use it.
CREATE INDEX IF NOT EXISTS executions_active ON executions(state, created_ms)
    WHERE state IN ('queued', 'running', 'pending_approval');
-- Guardrail facts (see `facts`): each is read from a partial index that
-- holds only what a decision looks at, so its cost never grows with blocked,
-- dry-run or long-ended history. `admitted_ms` is set only for real runs
-- that were allowed to start, and cleared when one is cancelled before it
-- started: runs in a window are an index range of exactly those.
CREATE INDEX IF NOT EXISTS runs_by_target ON executions(runbook, target, admitted_ms) WHERE admitted_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_by_runbook ON executions(runbook, admitted_ms) WHERE admitted_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_automated ON executions(admitted_ms) WHERE admitted_ms IS NOT NULL AND automated = 1;
CREATE INDEX IF NOT EXISTS active_by_target ON executions(runbook, target)
    WHERE state IN ('queued', 'running', 'pending_approval');
CREATE INDEX IF NOT EXISTS active_by_fingerprint ON executions(fingerprint)
    WHERE state IN ('queued', 'running', 'pending_approval');
CREATE INDEX IF NOT EXISTS executions_fingerprint ON executions(fingerprint);
CREATE TABLE IF NOT EXISTS steps (
    execution_id TEXT NOT NULL,
    phase TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    idempotent INTEGER NOT NULL,
    state TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    PRIMARY KEY (execution_id, phase, idx, attempt)
) WITHOUT ROWID; -- one b-tree, not a table plus its key's index (state dirs made before keep theirs)
-- The last firing alert per target, for the storm brake: one row per target,
-- so counting alerting targets never scans every alert of a storm.
CREATE TABLE IF NOT EXISTS target_alerts (target TEXT PRIMARY KEY, ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS target_alerts_ms ON target_alerts(ms);
CREATE TABLE IF NOT EXISTS notices (kind TEXT NOT NULL, ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS notices_kind ON notices(kind, ms);
CREATE TABLE IF NOT EXISTS breakers (
    runbook TEXT NOT NULL,
    target TEXT NOT NULL,
    tripped_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (runbook, target)
);
CREATE TABLE IF NOT EXISTS breaker_resets (
    runbook TEXT NOT NULL,
    target TEXT NOT NULL,
    ms INTEGER NOT NULL,
    PRIMARY KEY (runbook, target)
);
-- The audit chain. A record's envelope is kept in columns and its `data` as
-- canonical JSON; `prev_hash` is the hash of the row before, so it is not
-- stored again; `kind` and `actor` are ids of `audit_names` (a few dozen
-- names written millions of times). `audit::Record::from_stored` puts a
-- record back together.
CREATE TABLE IF NOT EXISTS audit_names "#,
    audit_names_columns!(),
    r#";
CREATE TABLE IF NOT EXISTS audit "#,
    audit_columns!(),
    r#";
CREATE INDEX IF NOT EXISTS audit_execution ON audit(execution_id) WHERE execution_id IS NOT NULL;
-- No index on time: records are in time order (`Tx::append`), so a time
-- range is found by bisecting seq (`seq_from`).
"#
);

/// The layout this code reads and writes (`PRAGMA user_version`). A state
/// file made before layouts were numbered is upgraded once, at open.
const LAYOUT: i64 = 2;

/// Brings the state file to [`LAYOUT`], then makes sure every table and
/// index of [`SCHEMA`] exists.
fn prepare_schema(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > LAYOUT {
        return Err(StoreError::Corrupt(format!(
            "the state database has layout {version}, newer than this pitcrew understands ({LAYOUT}); upgrade pitcrew"
        )));
    }
    if version == LAYOUT {
        // Made by this layout: nothing to create (and start-up stays fast).
        return Ok(());
    }
    let legacy: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('audit') WHERE name = 'record'",
        [],
        |r| r.get(0),
    )?;
    if legacy {
        upgrade_unnumbered(conn)?;
    }
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(&format!("PRAGMA user_version = {LAYOUT}"))?;
    Ok(())
}

/// Upgrades a state file from before numbered layouts: the audit chain from
/// one JSON text per record to columns (every record is checked to read back
/// the same, so its hash does), alerts kept once (the dedupe set as hashed keys, the bodies of
/// old alerts beside their executions), the guardrail indexes of `fact_sql`, and
/// `admitted_ms` cleared where a run never counted (dry runs, runs
/// cancelled before they started).
fn upgrade_unnumbered(conn: &Connection) -> Result<(), StoreError> {
    tracing::info!("upgrading the state database to layout {LAYOUT} (once; may take a while for a large audit log)");
    // Old executions reference `alerts(id)`; the tables are rebuilt without.
    conn.execute_batch("PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE;")?;
    let upgraded = (|| -> Result<(), StoreError> {
        // Another process may have upgraded it while we waited for the lock.
        let still: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('audit') WHERE name = 'record'",
            [],
            |r| r.get(0),
        )?;
        if !still {
            return Ok(());
        }
        // New tables are made beside the old ones and renamed into place.
        conn.execute_batch(concat!(
            "DROP INDEX IF EXISTS executions_state; DROP INDEX IF EXISTS executions_target;
             DROP INDEX IF EXISTS executions_runbook_target; DROP INDEX IF EXISTS executions_admitted;
             DROP INDEX IF EXISTS executions_runbook_admitted; DROP INDEX IF EXISTS alerts_fingerprint;
             DROP INDEX IF EXISTS audit_execution; DROP INDEX IF EXISTS audit_ts;
             UPDATE executions SET admitted_ms = NULL WHERE admitted_ms IS NOT NULL
                 AND (dry_run = 1 OR (state = 'cancelled' AND started_ms IS NULL));
             CREATE TABLE executions_upgraded ",
            executions_columns!(),
            ";
             INSERT INTO executions_upgraded (id, runbook, target, state, reason, actor, alert, fingerprint, params,
                 dry_run, automated, risk, created_ms, admitted_ms, started_ms, finished_ms, approval_deadline_ms,
                 claimed_by, resume_error)
             SELECT e.id, e.runbook, e.target, e.state, e.reason, e.actor, a.body, e.fingerprint, e.params,
                 e.dry_run, e.automated, e.risk, e.created_ms, e.admitted_ms, e.started_ms, e.finished_ms,
                 e.approval_deadline_ms, e.claimed_by, e.resume_error
             FROM executions e LEFT JOIN alerts a ON a.id = e.alert_id;
             DROP TABLE executions;
             ALTER TABLE executions_upgraded RENAME TO executions;
             ALTER TABLE alerts RENAME TO alerts_unnumbered;
             CREATE TABLE alerts ",
            alerts_columns!(),
            ";
             CREATE TABLE audit_names ",
            audit_names_columns!(),
            ";
             CREATE TABLE audit_upgraded ",
            audit_columns!(),
            ";"
        ))?;
        let mut keys = conn.prepare("SELECT dedupe_key FROM alerts_unnumbered WHERE dedupe_key NOT LIKE 'manual|%'")?;
        let mut rows = keys.query([])?;
        while let Some(row) = rows.next()? {
            let key: String = row.get(0)?;
            run_sql(
                conn,
                "INSERT OR IGNORE INTO alerts (id) VALUES (?1)",
                [&crate::alert::dedupe_id(&key)[..]],
            )?;
        }
        drop(rows);
        drop(keys);
        conn.execute_batch("DROP TABLE alerts_unnumbered;")?;
        let mut names = Names::new();
        let (mut last_ts_us, mut out_of_order) = (None::<i64>, 0u64);
        let mut read = conn.prepare("SELECT record FROM audit ORDER BY seq")?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let text: String = row.get(0)?;
            let record: Record =
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("audit record does not parse: {e}")))?;
            let ts = DateTime::parse_from_rfc3339(&record.ts)
                .map_err(|e| StoreError::Corrupt(format!("audit record {} has a bad ts: {e}", record.seq)))?;
            let ts_us = ts.timestamp_micros();
            if audit::format_ts(ts.to_utc()) != record.ts {
                return Err(StoreError::Corrupt(format!(
                    "audit record {} has a ts that does not read back the same",
                    record.seq
                )));
            }
            let hash =
                hex::decode(&record.hash).map_err(|e| StoreError::Corrupt(format!("audit record {} has a bad hash: {e}", record.seq)))?;
            let data = audit::canonical_json(&record.data);
            // Lossless, whatever the chain's state: the record rebuilt from
            // its columns is the record as it was (so its hash is too).
            let stored = audit::Stored {
                seq: record.seq,
                ts_us,
                kind: record.kind.clone(),
                actor: record.actor.clone(),
                execution_id: record.execution_id.clone(),
                runbook: record.runbook.clone(),
                target: record.target.clone(),
                data: data.clone(),
                hash: hash.clone(),
            };
            let prev = hex::decode(&record.prev_hash).ok();
            if Record::from_stored(stored, prev.as_deref()).ok().as_ref() != Some(&record) {
                return Err(StoreError::Corrupt(format!(
                    "audit record {} would not read back the same after the upgrade",
                    record.seq
                )));
            }
            if last_ts_us.is_some_and(|last| ts_us < last) {
                out_of_order += 1;
            }
            last_ts_us = Some(ts_us);
            run_sql(
                conn,
                "INSERT INTO audit_upgraded (seq, ts_us, kind, actor, execution_id, runbook, target, data, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    record.seq as i64,
                    ts_us,
                    name_id(conn, &mut names, &record.kind)?,
                    name_id(conn, &mut names, &record.actor)?,
                    record.execution_id,
                    record.runbook,
                    record.target,
                    data,
                    hash
                ],
            )?;
        }
        drop(rows);
        drop(read);
        if out_of_order > 0 {
            // Records are in time order from now on; older ones written while
            // a clock stepped back may be missed by --since/--until near them.
            tracing::warn!(
                records = out_of_order,
                "audit records earlier than the record before them (a clock stepped back)"
            );
        }
        conn.execute_batch("DROP TABLE audit; ALTER TABLE audit_upgraded RENAME TO audit;")?;
        Ok(())
    })();
    let ended = match upgraded {
        Ok(()) => conn.execute_batch("COMMIT; PRAGMA foreign_keys = ON;"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK; PRAGMA foreign_keys = ON;");
            return Err(e);
        }
    };
    Ok(ended?)
}

/// Jobs waiting beyond this are refused (503) instead of queueing forever.
/// (Counted, not a bounded channel: those allocate and touch every slot up
/// front, megabytes of idle memory for a queue that is nearly always short.)
const WRITE_QUEUE: usize = 65_536;
/// Most jobs per group commit; bounds one transaction's latency.
const GROUP_MAX: usize = 2_048;

type Completion = Box<dyn FnOnce(Result<(), Uncommitted>) + Send>;

/// Why a group's jobs were not kept.
#[derive(Debug, Clone)]
enum Uncommitted {
    /// A job failed half way; the others did nothing wrong.
    RolledBack(String),
    /// COMMIT or the fsync after it failed.
    Failed(String),
}
type Job = Box<dyn FnOnce(&mut Tx<'_>) -> Completion + Send>;

/// Ids of `audit_names` this connection has seen. Kept across transactions
/// (a name's id never changes once committed) and cleared when a group is
/// rolled back, which may have taken new names with it.
type Names = std::collections::HashMap<String, i64>;

fn name_id(conn: &Connection, names: &mut Names, name: &str) -> Result<i64, StoreError> {
    if let Some(id) = names.get(name) {
        return Ok(*id);
    }
    run_sql(conn, "INSERT OR IGNORE INTO audit_names (name) VALUES (?1)", [name])?;
    let id: i64 = query_row(conn, "SELECT id FROM audit_names WHERE name = ?1", [name], |r| r.get(0))?;
    names.insert(name.to_string(), id);
    Ok(id)
}

/// The last record of the audit chain.
struct Head {
    seq: u64,
    /// Hex, as the next record's `prev_hash`.
    hash: String,
    ts_us: i64,
}

/// The transaction a job runs in.
pub struct Tx<'c> {
    conn: &'c Connection,
    /// The audit chain's head within this transaction, once read.
    cursor: Option<Head>,
    names: &'c mut Names,
    redactor: &'c Redactor,
    now: DateTime<Utc>,
    /// `now` as audit records write it, formatted once per transaction.
    now_text: String,
    /// A job failed after writing: the transaction will be rolled back.
    failed: Option<String>,
    /// A job failed on the disk (full, I/O error): the store is failing.
    disk: Option<String>,
}

impl Tx<'_> {
    fn now_ms(&self) -> i64 {
        self.now.timestamp_millis()
    }

    /// Reads the chain's head once per transaction.
    fn load_head(&mut self) -> Result<(), StoreError> {
        if self.cursor.is_none() {
            let last = query_row(self.conn, "SELECT seq, hash, ts_us FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok(Head {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: hex::encode(r.get::<_, Vec<u8>>(1)?),
                    ts_us: r.get(2)?,
                })
            })
            .optional()?;
            self.cursor = Some(last.unwrap_or(Head {
                seq: 0,
                hash: audit::GENESIS.to_string(),
                ts_us: i64::MIN,
            }));
        }
        Ok(())
    }

    /// Appends one audit record, chained to the last one. Its time never
    /// goes back before the last record's (a clock stepped back, or another
    /// process's clock): the chain is in time order, which is what lets
    /// `audit` find a time range without an index (`seq_from`).
    fn append(&mut self, mut event: Event) -> Result<u64, StoreError> {
        let now_us = self.now.timestamp_micros();
        self.load_head()?;
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
        let (kind, actor) = (
            name_id(self.conn, self.names, event.kind)?,
            name_id(self.conn, self.names, &event.actor)?,
        );
        run_sql(
            self.conn,
            "INSERT INTO audit (seq, ts_us, kind, actor, execution_id, runbook, target, data, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                seq as i64,
                ts_us,
                kind,
                actor,
                event.execution_id,
                event.runbook,
                event.target,
                data,
                &hash[..]
            ],
        )?;
        self.cursor = Some(Head {
            seq,
            hash: hex::encode(hash),
            ts_us,
        });
        Ok(seq)
    }
}

/// The store's [`Health`], set by the writer and sync threads.
type SharedHealth = Arc<Mutex<Health>>;

/// Sets the health unless the store already stopped for good.
fn set_health(health: &SharedHealth, to: Health) {
    let mut now = health.lock().expect("health lock");
    if !matches!(*now, Health::Stopped(_)) {
        *now = to;
    }
}

/// Free space a failing store wants on its disk before it tries writing
/// again: a webhook's worth of alerts many times over.
const MIN_ROOM: u64 = 16 << 20;

/// An error that says the disk, not the data, is the problem.
fn disk_error(e: &StoreError) -> Option<String> {
    use rusqlite::ErrorCode::*;
    match e {
        StoreError::Sqlite(inner)
            if matches!(
                inner.sqlite_error_code(),
                Some(DiskFull | SystemIoFailure | ReadOnly | CannotOpen | OutOfMemory)
            ) =>
        {
            Some(inner.to_string())
        }
        _ => None,
    }
}

pub struct SqliteStore {
    path: PathBuf,
    health: SharedHealth,
    sender: Sender<Job>,
    /// Jobs sent and not yet taken by the writer.
    waiting: Arc<AtomicUsize>,
    readers: Mutex<Vec<Connection>>,
    clock: Arc<dyn Clock>,
    /// Where the last `prune` stopped (a rowid), so a pass walks the oldest
    /// executions once; 0 starts a new pass.
    prune_cursor: Arc<std::sync::atomic::AtomicI64>,
    /// For executions as shown to people (`execution`, `executions`).
    redactor: Redactor,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // Durable on commit (FULL fsyncs the WAL), safe across processes (WAL),
    // patient with another process holding the write lock.
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    // Savepoint sub-journals stay in memory instead of temp files.
    conn.execute_batch("PRAGMA temp_store=MEMORY;")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `state_dir/state.db`.
    pub fn open(state_dir: &Path, redactor: Redactor, clock: Arc<dyn Clock>) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Open {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join("state.db");
        let writer = open_connection(&path)?;
        prepare_schema(&writer)?;
        // Commits write the WAL without waiting for the disk; the syncer
        // thread fsyncs it and only then answers the jobs (see `sync_loop`).
        writer.execute_batch("PRAGMA synchronous=NORMAL;")?;
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let spawn_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        // Unbounded: it holds at most the groups committed during one fsync.
        let (to_sync, unsynced) = channel::<Committed>();
        let health: SharedHealth = Arc::new(Mutex::new(Health::Writable));
        std::thread::Builder::new()
            .name("pitcrew-store-sync".into())
            .spawn({
                let health = health.clone();
                move || sync_loop(wal, unsynced, health)
            })
            .map_err(spawn_error)?;
        let (sender, receiver) = channel::<Job>();
        let waiting = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("pitcrew-store-writer".into())
            .spawn({
                let clock = clock.clone();
                let waiting = waiting.clone();
                let redactor = redactor.clone();
                let health = health.clone();
                move || write_loop(writer, (receiver, waiting), redactor, clock, to_sync, health)
            })
            .map_err(spawn_error)?;
        Ok(SqliteStore {
            path,
            health,
            sender,
            waiting,
            readers: Mutex::new(Vec::new()),
            clock,
            prune_cursor: Arc::default(),
            redactor,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the next group commit; resolves after the commit.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, rx) = job(f);
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= WRITE_QUEUE {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Busy);
        }
        if self.sender.send(job).is_err() {
            return Err(StoreError::Closed);
        }
        // A dropped completion means the writer could not begin the transaction.
        rx.await.map_err(|_| StoreError::NotStarted)?
    }

    /// Runs `f` on a read connection in the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = match self.readers.lock().expect("reader pool lock").pop() {
            Some(c) => c,
            None => open_connection(&self.path)?,
        };
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            (conn, r)
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        let mut pool = self.readers.lock().expect("reader pool lock");
        if pool.len() < 4 {
            pool.push(conn);
        }
        result
    }
}

/// Wraps `f` as a job for the writer, and the receiver of its outcome.
fn job<T, F>(f: F) -> (Job, tokio::sync::oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnOnce(&mut Tx<'_>) -> Result<T, StoreError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move |t: &mut Tx<'_>| {
        let result = if let Some(why) = &t.failed {
            Err(StoreError::RolledBack(why.clone()))
        } else {
            let before = t.conn.total_changes();
            let r = f(t);
            if let Err(e) = &r {
                if let Some(why) = disk_error(e) {
                    t.disk.get_or_insert(why);
                }
                if t.conn.is_autocommit() {
                    // SQLite itself rolled the whole transaction back (it may
                    // on SQLITE_FULL or an I/O error): the jobs before this
                    // one are gone too, and the ones after must not run
                    // outside a transaction, each committing on its own.
                    t.failed = Some(format!("the database rolled the transaction back: {}", crate::diag::chain(e)));
                } else if t.conn.total_changes() != before {
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
    (job, rx)
}

/// A committed group: its jobs' answers, held until the WAL is on disk.
struct Committed {
    outcome: Result<(), Uncommitted>,
    completions: Vec<Completion>,
}

/// Makes commits durable off the writer thread.
///
/// SQLite with `synchronous=FULL` fsyncs the WAL inside COMMIT, so the
/// writer would sit idle for every fsync and no transaction could run
/// meanwhile. Instead the writer commits with `synchronous=NORMAL` (frames
/// written to the WAL, not yet synced) and goes on with the next group, while
/// this thread fsyncs the WAL file and only then answers the jobs of every
/// group committed before the fsync began. That is what FULL does, in the
/// same order, overlapped: no caller learns of a commit before it is on disk,
/// so nothing is acknowledged (202) and no action runs before its record is
/// durable. The WAL is append-only between checkpoints, and checkpoints
/// (still run by the writer) sync the WAL themselves before copying it back,
/// so a crash or power loss can only lose groups nobody was answered for.
///
/// If an fsync fails, the page cache may already have dropped the pages it
/// could not write, so a retry could report success for lost data: the
/// store stops (every later write fails closed) and the process must be
/// restarted to recover from the WAL on disk.
fn sync_loop(wal: PathBuf, unsynced: Receiver<Committed>, health: SharedHealth) {
    let mut file: Option<std::fs::File> = None;
    let mut failed: Option<String> = None;
    while let Ok(first) = unsynced.recv() {
        let mut groups = vec![first];
        groups.extend(unsynced.try_iter());
        if failed.is_none() {
            let synced = match &file {
                _ if crate::failpoint::fail("store.fsync") => Err(std::io::Error::other("failpoint store.fsync")),
                Some(f) => f.sync_data(),
                // The WAL exists once the writer has committed: open it on first use.
                None => std::fs::File::open(&wal).and_then(|f| f.sync_data().map(|()| f)).map(|f| {
                    file = Some(f);
                }),
            };
            if let Err(e) = synced {
                tracing::error!(error = %e, wal = %wal.display(), "fsync of the state WAL failed; the store stops accepting writes, restart pitcrew");
                let why = format!("fsync of the WAL failed: {e}");
                *health.lock().expect("health lock") = Health::Stopped(why.clone());
                failed = Some(why);
            }
        }
        // Durable, nobody answered yet: a crash here loses no 202.
        crate::failpoint::crash("store.synced");
        for group in groups {
            let outcome = match &failed {
                Some(e) => Err(Uncommitted::Failed(e.clone())),
                None => group.outcome,
            };
            for done in group.completions {
                done(outcome.clone());
            }
        }
        if failed.is_some() {
            // Dropping the receiver makes the writer stop.
            return;
        }
    }
}

/// Runs one group of jobs in one transaction. Jobs run without savepoints
/// (they cost a statement pair and a page copy per job): one that fails
/// before writing fails alone, one that fails after writing rolls the whole
/// group back, and the others learn they were not kept.
fn run_group(
    conn: &Connection,
    batch: Vec<Job>,
    redactor: &Redactor,
    now: DateTime<Utc>,
    names: &mut Names,
    health: &SharedHealth,
) -> Committed {
    let changes_before = conn.total_changes();
    // Records keep microseconds (`ts_us`): the stored time and the hashed text agree.
    let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let mut tx = Tx {
        conn,
        cursor: None,
        redactor,
        now,
        now_text: audit::format_ts(now),
        failed: None,
        disk: None,
        names,
    };
    let completions: Vec<Completion> = batch.into_iter().map(|job| job(&mut tx)).collect();
    let committed = match tx.failed {
        Some(why) => {
            tracing::error!(error = %why, "a state write failed half way; its group is rolled back");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(Uncommitted::RolledBack(why))
        }
        None => conn.execute_batch("COMMIT").map_err(|e| {
            tracing::error!(error = %e, "state commit failed");
            let _ = conn.execute_batch("ROLLBACK");
            Uncommitted::Failed(e.to_string())
        }),
    };
    if committed.is_err() {
        // Names this group added are gone with it.
        tx.names.clear();
    }
    match (&committed, tx.disk.as_ref()) {
        (Err(Uncommitted::Failed(why)), _) | (_, Some(why)) => set_health(health, Health::Failing(why.clone())),
        // Only a commit that wrote something shows the disk takes writes.
        (Ok(()), None) if conn.total_changes() != changes_before => set_health(health, Health::Writable),
        _ => {}
    }
    Committed {
        outcome: committed,
        completions,
    }
}

fn write_loop(
    conn: Connection,
    (receiver, waiting): (Receiver<Job>, Arc<AtomicUsize>),
    redactor: Redactor,
    clock: Arc<dyn Clock>,
    to_sync: Sender<Committed>,
    health: SharedHealth,
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
    let mut names = Names::new();
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        waiting.fetch_sub(batch.len(), Ordering::Relaxed);
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Dropping the jobs unanswered fails each caller (503 at the webhook).
            tracing::error!(error = %e, jobs = batch.len(), "cannot begin a state transaction");
            set_health(&health, Health::Failing(format!("cannot begin a transaction: {e}")));
            continue;
        }
        let group = run_group(&conn, batch, &redactor, clock.now(), &mut names, &health);
        if to_sync.send(group).is_err() {
            // The syncer stopped after a failed fsync: fail closed from now on.
            return;
        }
    }
}

/// `execute` through the statement cache: the hot paths run the same few
/// statements thousands of times a second.
fn run_sql(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

fn query_row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

fn ts(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn opt_ts(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.map(ts)
}

fn risk_of(s: &str) -> Risk {
    s.parse().unwrap_or(Risk::High)
}

/// An execution's columns as [`execution_from_row`] reads them. A blocked
/// run's reason is read from its decision record, where it is stored.
const EXECUTION_COLUMNS: &str = "e.id, e.runbook, e.target, e.state, \
     COALESCE(e.reason, CASE WHEN e.state = 'blocked' THEN (SELECT json_extract(r.data, '$.decided_by') || ': ' || \
         json_extract(r.data, '$.reason') FROM audit r WHERE r.execution_id = e.id \
         AND r.kind = (SELECT id FROM audit_names WHERE name = 'guardrail.decision')) END), \
     e.actor, \
     COALESCE(e.alert, (SELECT r.data FROM audit r WHERE r.seq = e.alert_seq)), e.params, e.dry_run, e.automated, e.risk, \
     e.created_ms, e.started_ms, e.finished_ms, e.approval_deadline_ms, e.resume_error, e.claimed_by";

fn execution_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Execution> {
    let state: String = r.get(3)?;
    let alert: Option<String> = r.get(6)?;
    let params: String = r.get(7)?;
    Ok(Execution {
        id: r.get(0)?,
        runbook: r.get(1)?,
        target: r.get(2)?,
        state: State::parse(&state).unwrap_or(State::Unknown),
        reason: r.get(4)?,
        actor: r.get(5)?,
        alert: alert.and_then(|a| serde_json::from_str(&a).ok()),
        params: serde_json::from_str(&params).unwrap_or_default(),
        dry_run: r.get(8)?,
        automated: r.get(9)?,
        risk: risk_of(&r.get::<_, String>(10)?),
        created_at: ts(r.get(11)?),
        started_at: opt_ts(r.get(12)?),
        finished_at: opt_ts(r.get(13)?),
        approval_deadline: opt_ts(r.get(14)?),
        resume_error: r.get(15)?,
        claimed_by: r.get(16)?,
        steps: Vec::new(),
    })
}

/// The columns of a stored audit record, in [`stored_from_row`]'s order.
const AUDIT_COLUMNS: &str =
    "a.seq, a.ts_us, COALESCE(k.name, ''), COALESCE(n.name, ''), a.execution_id, a.runbook, a.target, a.data, a.hash";
/// The audit table with its names, aliased for [`AUDIT_COLUMNS`]. (A name
/// gone missing reads as empty, and `verify` names that record.)
const AUDIT_FROM: &str = "audit a LEFT JOIN audit_names k ON k.id = a.kind LEFT JOIN audit_names n ON n.id = a.actor";

/// The first seq whose record is at or after `ts_us` (one past the last
/// record when none is), by bisection: records are in time order.
fn seq_from(conn: &Connection, ts_us: i64) -> Result<u64, StoreError> {
    let at = |seq: u64| -> Result<Option<(u64, i64)>, StoreError> {
        Ok(query_row(
            conn,
            "SELECT seq, ts_us FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT 1",
            [seq as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )
        .optional()?)
    };
    let last: u64 = query_row(conn, "SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get::<_, i64>(0))? as u64;
    // Invariant: records before `lo` are earlier than `ts_us`; from `hi` on, not.
    let (mut lo, mut hi) = (1u64, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match at(mid)? {
            Some((seq, ts)) if ts < ts_us => lo = seq + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

fn stored_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<audit::Stored> {
    Ok(audit::Stored {
        seq: r.get::<_, i64>(0)? as u64,
        ts_us: r.get(1)?,
        kind: r.get(2)?,
        actor: r.get(3)?,
        execution_id: r.get(4)?,
        runbook: r.get(5)?,
        target: r.get(6)?,
        data: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// An execution as people see it (API, CLI): its params and alert redacted
/// like the audit. Runs themselves read the stored values (`load_execution`).
fn shown(mut exec: Execution, redactor: &Redactor) -> Execution {
    let mut params = Value::Object(std::mem::take(&mut exec.params));
    redactor.in_place(&mut params);
    if let Value::Object(p) = params {
        exec.params = p;
    }
    exec.alert = exec.alert.map(|a| a.redacted(redactor));
    exec
}

fn load_execution(conn: &Connection, id: &str) -> Result<Execution, StoreError> {
    let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions e WHERE e.id = ?1");
    let mut exec = query_row(conn, &sql, [id], execution_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    exec.steps = load_steps(conn, id)?;
    Ok(exec)
}

fn load_steps(conn: &Connection, id: &str) -> Result<Vec<StepRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT phase, idx, name, action, attempt, idempotent, state, input, output, error, started_ms, finished_ms \
         FROM steps WHERE execution_id = ?1 ORDER BY started_ms, phase, idx, attempt",
    )?;
    let rows = stmt.query_map([id], |r| {
        let phase: String = r.get(0)?;
        let state: String = r.get(6)?;
        let input: String = r.get(7)?;
        let output: Option<String> = r.get(8)?;
        Ok(StepRecord {
            phase: if phase == "on_failure" { Phase::OnFailure } else { Phase::Main },
            index: r.get(1)?,
            name: r.get(2)?,
            action: r.get(3)?,
            attempt: r.get(4)?,
            idempotent: r.get(5)?,
            state: match state.as_str() {
                "started" => StepState::Started,
                "succeeded" => StepState::Succeeded,
                "failed" => StepState::Failed,
                "skipped" => StepState::Skipped,
                _ => StepState::Unknown,
            },
            input: serde_json::from_str(&input).unwrap_or(Value::Null),
            output: output.and_then(|o| serde_json::from_str(&o).ok()),
            error: r.get(9)?,
            started_at: ts(r.get(10)?),
            finished_at: opt_ts(r.get(11)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Fencing: a worker may write steps only while it still holds the claim.
fn check_claim(conn: &Connection, execution: &Execution) -> Result<(), StoreError> {
    let held: Option<(String, Option<String>)> = query_row(
        conn,
        "SELECT state, claimed_by FROM executions WHERE id = ?1",
        [&execution.id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?;
    match held {
        Some((state, claimer)) if state == "running" && claimer == execution.claimed_by => Ok(()),
        _ => Err(StoreError::ClaimLost(execution.id.clone())),
    }
}

fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Main => "main",
        Phase::OnFailure => "on_failure",
    }
}

fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<u32, StoreError> {
    Ok(query_row(conn, sql, params, |r| r.get::<_, i64>(0))? as u32)
}

/// The queries behind [`Facts`]. Each names the index it must use
/// (`INDEXED BY` makes SQLite fail rather than pick a scan), and each index
/// holds only what decisions look at: runs allowed to start, or runs not yet
/// ended, or one row per target. So deciding an alert costs the same on a
/// target with 100,000 blocked executions as on a fresh one — the rule of the
/// store contract (see `store` module docs); the unit test
/// `deciding_costs_the_same_after_100k_blocked_executions` holds us to it.
mod fact_sql {
    /// Start of the last real run on this runbook and target.
    pub const LAST_RUN: &str = "SELECT admitted_ms FROM executions INDEXED BY runs_by_target \
        WHERE runbook = ?1 AND target = ?2 AND admitted_ms IS NOT NULL ORDER BY admitted_ms DESC LIMIT 1";
    /// Real runs on this runbook and target since ?3.
    pub const TARGET_RUNS: &str =
        "SELECT COUNT(*) FROM executions INDEXED BY runs_by_target WHERE runbook = ?1 AND target = ?2 AND admitted_ms > ?3";
    /// Real runs of this runbook since ?2.
    pub const RUNBOOK_RUNS: &str = "SELECT COUNT(*) FROM executions INDEXED BY runs_by_runbook WHERE runbook = ?1 AND admitted_ms > ?2";
    /// Real automated runs of any runbook since ?1.
    pub const GLOBAL_RUNS: &str = "SELECT COUNT(*) FROM executions INDEXED BY runs_automated WHERE automated = 1 AND admitted_ms > ?1";
    /// Runs of this runbook on this target not yet ended.
    pub const ACTIVE: &str = concat!(
        "SELECT COUNT(*) FROM executions INDEXED BY active_by_target WHERE runbook = ?1 AND target = ?2 AND ",
        active!()
    );
    /// Distinct targets alerting since ?1, counted up to ?2.
    pub const STORM_TARGETS: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM target_alerts INDEXED BY target_alerts_ms WHERE ms > ?1 LIMIT ?2)";
    /// The storm brake held since ?1.
    pub const STORM_NOTIFIED: &str = "SELECT COUNT(*) FROM notices WHERE kind = 'storm' AND ms > ?1";
    pub const BREAKER: &str = "SELECT COUNT(*) FROM breakers WHERE runbook = ?1 AND target = ?2";
    pub const BREAKER_RESET: &str = "SELECT ms FROM breaker_resets WHERE runbook = ?1 AND target = ?2";

    #[cfg(test)]
    pub const ALL: [&str; 9] = [
        LAST_RUN,
        TARGET_RUNS,
        RUNBOOK_RUNS,
        GLOBAL_RUNS,
        ACTIVE,
        STORM_TARGETS,
        STORM_NOTIFIED,
        BREAKER,
        BREAKER_RESET,
    ];
}

/// Gathers what the guardrails need, inside the deciding transaction; only
/// what the runbook's and config's guardrails look at (the rest stays zero).
fn facts(conn: &Connection, runbook: &str, target: &str, w: Windows, now_ms: i64) -> Result<Facts, StoreError> {
    let since = |window_ms: i64| now_ms - window_ms;
    let target_runs = |after_ms: i64| count(conn, fact_sql::TARGET_RUNS, params![runbook, target, after_ms]);
    let storm_since = since(STORM_WINDOW.as_millis() as i64);
    Ok(Facts {
        last_admitted_ms: if w.cooldown {
            query_row(conn, fact_sql::LAST_RUN, params![runbook, target], |r| r.get(0)).optional()?
        } else {
            None
        },
        target_runs: if w.target_ms == 0 { 0 } else { target_runs(since(w.target_ms))? },
        runbook_runs: if w.runbook_ms == 0 {
            0
        } else {
            count(conn, fact_sql::RUNBOOK_RUNS, params![runbook, since(w.runbook_ms)])?
        },
        global_runs: if w.global_ms == 0 {
            0
        } else {
            count(conn, fact_sql::GLOBAL_RUNS, params![since(w.global_ms)])?
        },
        // The lock is the runbook's own (its `concurrency` sets the limit):
        // a diagnostics runbook matching the same alert must not block the fix.
        active_on_target: count(conn, fact_sql::ACTIVE, params![runbook, target])?,
        // Deciding needs only "more than the brake?": stop counting there, so a
        // storm of thousands of alerts does not re-count its targets per alert.
        storm_targets: match w.storm_brake {
            None => 0,
            Some(limit) => count(conn, fact_sql::STORM_TARGETS, params![storm_since, i64::from(limit) + 1])?,
        },
        storm_notified: w.storm_brake.is_some() && count(conn, fact_sql::STORM_NOTIFIED, params![storm_since])? > 0,
        // Looked at only under `escalate_after`.
        breaker_tripped: w.escalation_ms != 0 && count(conn, fact_sql::BREAKER, params![runbook, target])? > 0,
        escalation_runs: if w.escalation_ms == 0 {
            0
        } else {
            let reset_ms: Option<i64> = query_row(conn, fact_sql::BREAKER_RESET, params![runbook, target], |r| r.get(0)).optional()?;
            target_runs(since(w.escalation_ms).max(reset_ms.unwrap_or(i64::MIN)))?
        },
    })
}

/// The guardrails' decision for an admission at `now_ms`, from the facts
/// stored now (inside the deciding transaction, or on a read for `preview`).
fn decide(conn: &Connection, adm: &Admission, config: &Config, now_ms: i64) -> Result<Decision, StoreError> {
    let rb = &adm.runbook;
    let f = facts(conn, &rb.name, &adm.target, Windows::for_runbook(rb, config), now_ms)?;
    let request = Request {
        runbook: rb,
        target: &adm.target,
        automated: adm.automated,
        dry_run: adm.dry_run,
        force: adm.force.as_deref(),
        now_ms,
    };
    Ok(guard::decide(&request, &f, adm.budget.as_ref(), config))
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
fn dedupe(conn: &Connection, id: &[u8; 16], now_ms: i64, config: &Config) -> Result<Dedupe, StoreError> {
    let row: Option<(Option<i64>, Option<i64>)> =
        query_row(conn, "SELECT received_seq, decided_ms FROM alerts WHERE id = ?1", [&id[..]], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(match row {
        None => Dedupe::New,
        Some((Some(seq), Some(decided_ms))) if now_ms - decided_ms >= config.reconsider_after.as_millis() as i64 => {
            Dedupe::Reconsider(seq as u64)
        }
        Some(_) => Dedupe::Duplicate,
    })
}

/// Guardrails whose block time lifts by itself: an alert blocked only by
/// these is worth deciding again when Alertmanager sends it again. Not
/// `escalated` (a human must reset it) nor `params` (the alert is wrong).
fn passes_with_time(decided_by: &str) -> bool {
    matches!(
        decided_by,
        "cooldown" | "rate_limit" | "runbook_rate_limit" | "global_limit" | "concurrency" | "storm_brake" | "budget"
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

/// Decides and records one admission. Shared by alert intake and manual runs.
fn admit_in(t: &mut Tx<'_>, adm: &Admission, alert: Option<AlertRef<'_>>, config: &Config) -> Result<Decision, StoreError> {
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
    let decision = if let Some(invalid) = &adm.invalid {
        crate::guard::Decision {
            verdict: Verdict::Blocked,
            decided_by: "params",
            reason: invalid.clone(),
            dry_run: adm.dry_run,
            checks: vec![],
            trip_breaker: false,
            notify: None,
            storm_notice: false,
        }
    } else {
        decide(t.conn, adm, config, now_ms)?
    };
    let state = match decision.verdict {
        Verdict::Run => State::Queued,
        Verdict::PendingApproval => State::PendingApproval,
        Verdict::Blocked => State::Blocked,
    };
    // Only real runs count toward limits and cooldowns (see `fact_sql`).
    let admitted_ms = (state == State::Queued && !decision.dry_run).then_some(now_ms);
    let deadline = (state == State::PendingApproval).then(|| now_ms + rb.guardrails.approval_timeout.as_millis() as i64);
    let finished_ms = (state == State::Blocked).then_some(now_ms);
    // A blocked run keeps its reason only in its decision record (`EXECUTION_COLUMNS`).
    let reason = (decision.verdict == Verdict::PendingApproval).then(|| format!("{}: {}", decision.decided_by, decision.reason));
    let (alert_seq, given) = match &alert {
        Some(AlertRef::Received(_, seq)) => (Some(*seq as i64), None),
        Some(AlertRef::Given(_, body)) => (None, Some(body.as_str())),
        None => (None, None),
    };
    run_sql(
        t.conn,
        "INSERT INTO executions (id, runbook, target, state, reason, actor, alert_seq, alert, fingerprint, params, dry_run, automated, \
         risk, created_ms, admitted_ms, finished_ms, approval_deadline_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            adm.id,
            rb.name,
            adm.target,
            state.as_str(),
            reason,
            adm.actor,
            alert_seq,
            given,
            alert.as_ref().map(|a| a.alert().fingerprint.as_str()),
            Value::Object(adm.params.clone()).to_string(),
            decision.dry_run,
            adm.automated,
            rb.risk.as_str(),
            now_ms,
            admitted_ms,
            finished_ms,
            deadline,
        ],
    )?;
    t.append(exec_event(
        kind::GUARDRAIL_DECISION,
        &adm.actor,
        json!({
            "verdict": decision.verdict, "decided_by": decision.decided_by, "reason": decision.reason,
            "dry_run": decision.dry_run.then_some(true), "risk": rb.risk, "checks": checks_record(&decision),
            "budget": adm.budget, "approval_deadline": deadline.map(ts),
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
        run_sql(
            t.conn,
            "INSERT OR REPLACE INTO breakers (runbook, target, tripped_ms, reason) VALUES (?1, ?2, ?3, ?4)",
            params![rb.name, adm.target, now_ms, decision.reason],
        )?;
    }
    if decision.decided_by == "storm_brake" {
        // One notice per storm however long it lasts: the row says when the
        // brake last held, and `facts` looks for it within the storm window,
        // so a storm ends only after a whole window without the brake.
        run_sql(t.conn, "DELETE FROM notices WHERE kind = 'storm'", [])?;
        run_sql(t.conn, "INSERT INTO notices (kind, ms) VALUES ('storm', ?1)", params![now_ms])?;
    }
    Ok(decision)
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

/// A pending approval past its deadline: cancelled, denied by `system:timeout`.
fn expire_approval(t: &mut Tx<'_>, id: &str, runbook: &str, target: &str) -> Result<(), StoreError> {
    let why = "approval timed out";
    run_sql(
        t.conn,
        "UPDATE executions SET state = 'cancelled', reason = ?2, finished_ms = ?3 WHERE id = ?1",
        params![id, why, t.now_ms()],
    )?;
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
fn cancel_for_resolved(t: &mut Tx<'_>, resolved: &Alert) -> Result<usize, StoreError> {
    // The episode's start as alert records write it (the same serialisation).
    let starts_at = serde_json::to_value(resolved.starts_at).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut stmt = t.conn.prepare_cached(concat!(
        "SELECT e.id, e.runbook, e.target, e.state FROM executions e INDEXED BY active_by_fingerprint \
         LEFT JOIN audit r ON r.seq = e.alert_seq \
         WHERE e.fingerprint = ?1 AND ",
        active!(),
        // Runs stored before alerts lived in the audit keep theirs in `alert`
        // (a manual run's own alert is no delivery and is never cancelled).
        " AND e.state <> 'running' AND e.started_ms IS NULL AND COALESCE(json_extract(r.data, '$.startsAt'), \
         CASE WHEN e.automated = 1 THEN json_extract(e.alert, '$.startsAt') END) = ?2"
    ))?;
    let victims: Vec<(String, String, String, String)> = stmt
        .query_map(params![resolved.fingerprint, starts_at.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    let now_ms = t.now_ms();
    for (id, runbook, target, was) in &victims {
        run_sql(
            t.conn,
            // Cleared `admitted_ms`: a run that never started counts toward no limit.
            "UPDATE executions SET state = 'cancelled', reason = 'alert resolved before it ran', finished_ms = ?2, admitted_ms = NULL WHERE id = ?1",
            params![id, now_ms],
        )?;
        t.append(
            Event::new(
                kind::EXECUTION_FINISHED,
                "alertmanager",
                json!({"state": "cancelled", "reason": "alert resolved before it ran", "was": was}),
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
fn requeue(t: &mut Tx<'_>, exec: &Execution, actor: &str, cause: &str) -> Result<bool, StoreError> {
    let interrupted: Vec<&StepRecord> = exec.steps.iter().filter(|s| s.state == StepState::Started).collect();
    let event = |data: Value| Event::new(kind::EXECUTION_RECOVERED, actor, data).execution(&exec.id, &exec.runbook, &exec.target);
    if let Some(step) = interrupted.iter().find(|s| !s.idempotent) {
        let msg = format!(
            "step `{}` ({}) {cause}; it is not idempotent, so its outcome is unknown and it was not run again",
            step.name, step.action
        );
        run_sql(
            t.conn,
            "UPDATE steps SET state = 'unknown', error = ?5, finished_ms = ?6 WHERE execution_id = ?1 AND phase = ?2 AND idx = ?3 AND attempt = ?4",
            params![exec.id, phase_str(step.phase), step.index, step.attempt, msg, t.now_ms()],
        )?;
        t.append(
            Event::new(
                kind::STEP_FINISHED,
                actor,
                json!({"step": step.name, "phase": step.phase, "attempt": step.attempt, "outcome": "unknown", "error": msg}),
            )
            .execution(&exec.id, &exec.runbook, &exec.target),
        )?;
        run_sql(
            t.conn,
            "UPDATE executions SET state = 'queued', claimed_by = NULL, resume_error = ?2 WHERE id = ?1",
            params![exec.id, msg],
        )?;
        t.append(event(json!({"action": "escalate", "reason": msg})))?;
        Ok(true)
    } else {
        let rerun: Vec<&str> = interrupted.iter().map(|s| s.name.as_str()).collect();
        run_sql(
            t.conn,
            "UPDATE executions SET state = 'queued', claimed_by = NULL WHERE id = ?1",
            params![exec.id],
        )?;
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

/// Writes what a worker did since its last write (see [`Pending`]): first
/// its claim, which fails the whole job when the execution is no longer
/// queued, then the ends of its steps.
fn record_pending(t: &mut Tx<'_>, exec: &Execution, pending: Pending) -> Result<(), StoreError> {
    if let Some(claim) = &pending.claim {
        let claimed = run_sql(
            t.conn,
            "UPDATE executions SET state = 'running', claimed_by = ?2, started_ms = COALESCE(started_ms, ?3) WHERE id = ?1 AND state = 'queued'",
            params![exec.id, claim.worker, claim.started_at.timestamp_millis()],
        )?;
        if claimed == 0 {
            return Err(StoreError::Taken(exec.id.clone()));
        }
        t.append(started_event(exec, &claim.worker, resumed(exec)))?;
    }
    for step in pending.ended {
        let output = step.output.map(|mut o| {
            t.redactor.in_place(&mut o);
            o
        });
        let output_text = output.as_ref().map(|o| o.to_string());
        let error = step.error.as_ref().map(|e| t.redactor.text(e));
        let updated = run_sql(
            t.conn,
            "UPDATE steps SET state = ?5, output = ?6, error = ?7, finished_ms = ?8 WHERE execution_id = ?1 AND phase = ?2 AND idx = ?3 AND attempt = ?4",
            params![
                exec.id,
                phase_str(step.phase),
                step.index,
                step.attempt,
                step.state.as_str(),
                output_text,
                error,
                t.now_ms()
            ],
        )?;
        if updated == 0 {
            // A step skipped before it started (`when` false) has no row yet.
            run_sql(
                t.conn,
                "INSERT INTO steps (execution_id, phase, idx, attempt, name, action, idempotent, state, input, output, error, started_ms, finished_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, '', 1, ?6, 'null', ?7, ?8, ?9, ?9)",
                params![
                    exec.id,
                    phase_str(step.phase),
                    step.index,
                    step.attempt,
                    step.name,
                    step.state.as_str(),
                    output_text,
                    error,
                    t.now_ms()
                ],
            )?;
        }
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

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn intake(&self, mut alerts: Vec<IntakeAlert>, config: Arc<Config>) -> Result<IntakeResult, StoreError> {
        self.write(move |t| {
            let mut result = IntakeResult::default();
            for item in alerts.iter_mut() {
                let alert = &item.alert;
                let now_ms = t.now_ms();
                // One statement for a new notification (the common case); the
                // dedupe rule is read only for one seen before.
                let new = run_sql(t.conn, "INSERT OR IGNORE INTO alerts (id) VALUES (?1)", [&item.dedupe_id[..]])? > 0;
                let seen = if new {
                    Dedupe::New
                } else {
                    dedupe(t.conn, &item.dedupe_id, now_ms, &config)?
                };
                let was_reconsidered = matches!(seen, Dedupe::Reconsider(_));
                let received = match seen {
                    Dedupe::New => {
                        result.accepted += 1;
                        // The alert is stored once: as its `alert.received` record.
                        let received = t.append(Event::new(kind::ALERT_RECEIVED, "alertmanager", std::mem::take(&mut item.body)))?;
                        if alert.status == crate::alert::AlertStatus::Resolved {
                            result.cancelled += cancel_for_resolved(t, alert)?;
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
                        run_sql(
                            t.conn,
                            "INSERT INTO target_alerts (target, ms) VALUES (?1, ?2) ON CONFLICT(target) DO UPDATE SET ms = excluded.ms",
                            params![adm.target, t.now_ms()],
                        )?;
                    }
                    let decision = admit_in(t, adm, Some(AlertRef::Received(alert, received)), &config)?;
                    only_waited &= decision.verdict == Verdict::Blocked && passes_with_time(decision.decided_by);
                    result.executions.push((adm.id.clone(), decision));
                }
                // A firing alert whose every run was blocked only by a guardrail
                // that time lifts is decided again when it is sent again
                // (`reconsider_after`); any other stays a duplicate.
                let reconsider = only_waited && alert.status == crate::alert::AlertStatus::Firing;
                if reconsider || was_reconsidered {
                    run_sql(
                        t.conn,
                        "UPDATE alerts SET received_seq = ?2, decided_ms = ?3 WHERE id = ?1",
                        params![
                            &item.dedupe_id[..],
                            reconsider.then_some(received as i64),
                            reconsider.then_some(now_ms)
                        ],
                    )?;
                }
            }
            result.at = t.now;
            result.alerts = alerts;
            Ok(result)
        })
        .await
    }

    async fn admit(&self, admission: Admission, alert: Option<Alert>, config: Arc<Config>) -> Result<Decision, StoreError> {
        self.write(move |t| {
            // A manual run given an alert keeps it for templates and the timeline;
            // it is no delivery, so it never counts as one for dedupe.
            let given = match &alert {
                Some(a) => Some(AlertRef::Given(
                    a,
                    serde_json::to_string(a).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )),
                None => None,
            };
            admit_in(t, &admission, given, &config)
        })
        .await
    }

    async fn preview(&self, adm: Admission, config: Arc<Config>) -> Result<Decision, StoreError> {
        let now_ms = self.clock.now().timestamp_millis();
        self.read(move |conn| decide(conn, &adm, &config, now_ms)).await
    }

    async fn claim(&self, worker: &str, id: Option<String>) -> Result<Option<Execution>, StoreError> {
        let worker = worker.to_string();
        self.write(move |t| {
            let now_ms = t.now_ms();
            let picked: Option<String> = match &id {
                Some(id) => query_row(
                    t.conn,
                    concat!("SELECT id FROM executions WHERE id = ?1 AND state = 'queued' AND ", active!()),
                    [id],
                    |r| r.get(0),
                )
                .optional()?,
                None => query_row(
                    t.conn,
                    concat!(
                        "SELECT id FROM executions WHERE state = 'queued' AND ",
                        active!(),
                        " ORDER BY created_ms, rowid LIMIT 1"
                    ),
                    [],
                    |r| r.get(0),
                )
                .optional()?,
            };
            let Some(id) = picked else { return Ok(None) };
            run_sql(
                t.conn,
                "UPDATE executions SET state = 'running', claimed_by = ?2, started_ms = COALESCE(started_ms, ?3) WHERE id = ?1",
                params![id, worker, now_ms],
            )?;
            let exec = load_execution(t.conn, &id)?;
            t.append(started_event(&exec, &worker, resumed(&exec)))?;
            Ok(Some(exec))
        })
        .await
    }

    async fn queued(&self, limit: usize, exclude: std::collections::HashSet<String>) -> Result<(Vec<Execution>, bool), StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT id FROM executions WHERE state = 'queued' AND ",
                active!(),
                " ORDER BY created_ms, rowid"
            ))?;
            let mut rows = stmt.query([])?;
            let mut ids = Vec::new();
            let mut exhausted = true;
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                if exclude.contains(&id) {
                    continue;
                }
                if ids.len() == limit {
                    exhausted = false;
                    break;
                }
                ids.push(id);
            }
            drop(rows);
            let found = ids.iter().map(|id| load_execution(conn, id)).collect::<Result<_, _>>()?;
            Ok((found, exhausted))
        })
        .await
    }

    async fn step_started(&self, execution: &Execution, pending: Pending, step: StepStart) -> Result<(), StoreError> {
        let held = execution.clone();
        self.write(move |t| {
            // Checks before writes: a job that fails after writing sinks its whole group.
            if pending.claim.is_none() {
                check_claim(t.conn, &held)?;
            }
            record_pending(t, &held, pending)?;
            let (id, runbook, target) = (&held.id, &held.runbook, &held.target);
            let mut input = step.input;
            t.redactor.in_place(&mut input);
            run_sql(t.conn,
                "INSERT OR REPLACE INTO steps (execution_id, phase, idx, attempt, name, action, idempotent, state, input, started_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'started', ?8, ?9)",
                params![id, phase_str(step.phase), step.index, step.attempt, step.name, step.action, step.idempotent, input.to_string(), t.now_ms()],
            )?;
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
        let held = execution.clone();
        self.write(move |t| {
            // Fenced like every write of a run (checked before writing).
            if pending.claim.is_none() {
                check_claim(t.conn, &held)?;
            }
            record_pending(t, &held, pending)
        })
        .await
    }

    async fn release(&self, execution: &Execution) -> Result<(), StoreError> {
        let held = execution.clone();
        self.write(move |t| {
            check_claim(t.conn, &held)?;
            // Its steps' records may be behind what ran (the failed write may
            // have carried a step's end): the same rule as after a crash.
            let exec = load_execution(t.conn, &held.id)?;
            requeue(t, &exec, "pitcrew", "had no recorded end when a state write failed")?;
            Ok(())
        })
        .await
    }

    async fn finish(&self, execution: &Execution, pending: Pending, state: State, reason: Option<String>) -> Result<(), StoreError> {
        let held = execution.clone();
        self.write(move |t| {
            // Fencing, as for a step's start: a run recovered from under this
            // worker is the new claimer's to end.
            if pending.claim.is_none() {
                check_claim(t.conn, &held)?;
            }
            record_pending(t, &held, pending)?;
            let reason = reason.map(|r| t.redactor.text(&r));
            run_sql(
                t.conn,
                "UPDATE executions SET state = ?2, reason = ?3, finished_ms = ?4, claimed_by = NULL WHERE id = ?1",
                params![held.id, state.as_str(), reason, t.now_ms()],
            )?;
            t.append(
                Event::new(kind::EXECUTION_FINISHED, &held.actor, json!({"state": state, "reason": reason})).execution(
                    &held.id,
                    &held.runbook,
                    &held.target,
                ),
            )?;
            Ok(())
        })
        .await
    }

    async fn recover(&self, is_alive: Liveness) -> Result<Recovery, StoreError> {
        self.write(move |t| {
            let mut stmt = t.conn.prepare(concat!(
                "SELECT id, claimed_by FROM executions WHERE state = 'running' AND ",
                active!()
            ))?;
            let running: Vec<(String, Option<String>)> = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            drop(stmt);
            let mut report = Recovery::default();
            for (id, claimer) in running {
                if claimer.as_deref().is_some_and(|c| is_alive(c)) {
                    continue;
                }
                let exec = load_execution(t.conn, &id)?;
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

    async fn approve(&self, id: &str, approver: &str, may_self_approve: MaySelfApprove) -> Result<Execution, StoreError> {
        let (id, approver) = (id.to_string(), approver.to_string());
        // The inner result lets a refusal keep what it wrote (the expiry, or
        // the refused self-approval).
        self.write(move |t| {
            let exec = load_execution(t.conn, &id)?;
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
            // The two-person rule. Decided here, in the transaction, against
            // the stored requester, so no caller can skip it. The refusal is
            // audited: an attempt to approve one's own run is what a reviewer
            // of the log wants to see, and the identities are authenticated
            // (real uid or API token), so nobody outside can fill the log.
            let requester = exec.actor.clone();
            if requester == approver && !may_self_approve(&exec.runbook) {
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
            run_sql(
                t.conn,
                "UPDATE executions SET state = 'queued', admitted_ms = CASE WHEN dry_run = 0 THEN ?2 END, reason = NULL WHERE id = ?1",
                params![id, t.now_ms()],
            )?;
            t.append(
                Event::new(
                    kind::APPROVAL_GRANTED,
                    &approver,
                    json!({"pending_reason": exec.reason, "requester": requester, "approver": approver}),
                )
                .execution(&exec.id, &exec.runbook, &exec.target),
            )?;
            load_execution(t.conn, &id).map(Ok)
        })
        .await?
    }

    async fn deny(&self, id: &str, actor: &str, reason: Option<String>) -> Result<Execution, StoreError> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.write(move |t| {
            let exec = load_execution(t.conn, &id)?;
            if exec.state != State::PendingApproval {
                return Err(StoreError::WrongState {
                    id,
                    state: exec.state.to_string(),
                });
            }
            let why = format!(
                "denied by {actor}{}",
                reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            );
            run_sql(
                t.conn,
                "UPDATE executions SET state = 'cancelled', reason = ?2, finished_ms = ?3 WHERE id = ?1",
                params![id, why, t.now_ms()],
            )?;
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
            load_execution(t.conn, &id)
        })
        .await
    }

    async fn expire_approvals(&self) -> Result<Vec<String>, StoreError> {
        self.write(move |t| {
            let now_ms = t.now_ms();
            let mut stmt = t.conn.prepare(concat!(
                "SELECT id, runbook, target FROM executions WHERE state = 'pending_approval' AND ",
                active!(),
                " AND approval_deadline_ms <= ?1"
            ))?;
            let expired: Vec<(String, String, String)> = stmt
                .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            drop(stmt);
            for (id, runbook, target) in &expired {
                expire_approval(t, id, runbook, target)?;
            }
            Ok(expired.into_iter().map(|(id, _, _)| id).collect())
        })
        .await
    }

    async fn breakers(&self) -> Result<Vec<Breaker>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT runbook, target, tripped_ms, reason FROM breakers ORDER BY tripped_ms")?;
            let rows = stmt.query_map([], |r| {
                Ok(Breaker {
                    runbook: r.get(0)?,
                    target: r.get(1)?,
                    tripped_at: ts(r.get(2)?),
                    reason: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn reset_breaker(&self, runbook: &str, target: &str, actor: &str) -> Result<bool, StoreError> {
        let (runbook, target, actor) = (runbook.to_string(), target.to_string(), actor.to_string());
        self.write(move |t| {
            let n = run_sql(
                t.conn,
                "DELETE FROM breakers WHERE runbook = ?1 AND target = ?2",
                params![runbook, target],
            )?;
            if n > 0 {
                // Runs before the reset no longer count toward escalate_after.
                run_sql(
                    t.conn,
                    "INSERT OR REPLACE INTO breaker_resets (runbook, target, ms) VALUES (?1, ?2, ?3)",
                    params![runbook, target, t.now_ms()],
                )?;
                t.append(Event::new(kind::ESCALATION_RESET, &actor, json!({})).runbook(&runbook, &target))?;
            }
            Ok(n > 0)
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
        self.read(move |conn| Ok(shown(load_execution(conn, &id)?, &redactor))).await
    }

    async fn executions(&self, filter: ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        let redactor = self.redactor.clone();
        self.read(move |conn| {
            let mut sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions e WHERE 1=1");
            let mut args: Vec<String> = Vec::new();
            if let Some(s) = filter.state {
                args.push(s.as_str().to_string());
                sql.push_str(&format!(" AND e.state = ?{}", args.len()));
            }
            if let Some(r) = &filter.runbook {
                args.push(r.clone());
                sql.push_str(&format!(" AND e.runbook = ?{}", args.len()));
            }
            if let Some(f) = &filter.fingerprint {
                args.push(f.clone());
                sql.push_str(&format!(" AND e.fingerprint = ?{}", args.len()));
            }
            if let Some(after) = &filter.after {
                // Keyset paging in list order; an unknown id matches nothing.
                args.push(after.clone());
                sql.push_str(&format!(
                    " AND (e.created_ms, e.id) < (SELECT p.created_ms, p.id FROM executions p WHERE p.id = ?{})",
                    args.len()
                ));
            }
            let limit = if filter.limit == 0 { 1000 } else { filter.limit };
            sql.push_str(&format!(" ORDER BY e.created_ms DESC, e.id DESC LIMIT {limit}"));
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), execution_from_row)?;
            let rows: Vec<Execution> = rows.collect::<Result<_, _>>()?;
            Ok(rows.into_iter().map(|e| shown(e, &redactor)).collect())
        })
        .await
    }

    async fn audit(&self, filter: AuditFilter) -> Result<Vec<Record>, StoreError> {
        self.read(move |conn| {
            let mut sql =
                format!("SELECT {AUDIT_COLUMNS}, (SELECT p.hash FROM audit p WHERE p.seq = a.seq - 1) FROM {AUDIT_FROM} WHERE 1=1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(since) = filter.since {
                args.push((seq_from(conn, since.timestamp_micros())? as i64).into());
                sql.push_str(&format!(" AND a.seq >= ?{}", args.len()));
            }
            if let Some(until) = filter.until {
                args.push((seq_from(conn, until.timestamp_micros().saturating_add(1))? as i64).into());
                sql.push_str(&format!(" AND a.seq < ?{}", args.len()));
            }
            if let Some(e) = &filter.execution {
                args.push(e.clone().into());
                sql.push_str(&format!(" AND a.execution_id = ?{}", args.len()));
            }
            if let Some(fp) = &filter.fingerprint {
                args.push(fp.clone().into());
                let n = args.len();
                sql.push_str(&format!(
                    " AND (a.execution_id IN (SELECT id FROM executions WHERE fingerprint = ?{n}) \
                     OR (k.name LIKE 'alert.%' AND json_extract(a.data, '$.fingerprint') = ?{n}))"
                ));
            }
            if let Some(after) = filter.after_seq {
                args.push((after.min(i64::MAX as u64) as i64).into());
                sql.push_str(&format!(" AND a.seq > ?{}", args.len()));
            }
            sql.push_str(" ORDER BY a.seq");
            if let Some(limit) = filter.limit {
                args.push((limit.min(i64::MAX as usize) as i64).into());
                sql.push_str(&format!(" LIMIT ?{}", args.len()));
            }
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let prev: Option<Vec<u8>> = row.get(9)?;
                out.push(
                    Record::from_stored(stored_from_row(row)?, prev.as_deref())
                        .map_err(|e| StoreError::Corrupt(format!("audit record data does not parse: {e}")))?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn verify_audit(&self) -> Result<Result<u64, crate::audit::Broken>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM {AUDIT_FROM} ORDER BY a.seq"))?;
            let mut rows = stmt.query([])?;
            // Walked in order, one record at a time: the whole log never sits
            // in memory, and each record's `prev_hash` is the hash before it.
            let mut prev = audit::GENESIS.to_string();
            let mut expected = 1u64;
            while let Some(row) = rows.next()? {
                let stored = stored_from_row(row)?;
                let seq = stored.seq;
                let hash = hex::encode(&stored.hash);
                let record = match Record::from_stored(stored, None) {
                    Ok(r) => Record {
                        prev_hash: prev.clone(),
                        ..r
                    },
                    Err(e) => {
                        return Ok(Err(crate::audit::Broken {
                            seq,
                            reason: format!("record data is not valid JSON: {e}"),
                        }));
                    }
                };
                if let Err(b) = audit::verify_from(&record, expected, &prev) {
                    return Ok(Err(b));
                }
                prev = hash;
                expected += 1;
            }
            Ok(Ok(expected - 1))
        })
        .await
    }

    async fn seen(&self, alert: &Alert, config: Arc<Config>) -> Result<Seen, StoreError> {
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
            // A small write fits in the room the WAL file already holds on
            // a full disk, while a webhook's does not: look for room first.
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let room = nix::sys::statvfs::statvfs(dir).map(|s| s.blocks_available().saturating_mul(s.fragment_size()));
            if room.is_ok_and(|r| r < MIN_ROOM) {
                return Health::Failing(why);
            }
            // Nothing else may be writing (a readiness probe keeps the
            // process out of service): rewrite one row as it is, which
            // takes a page in the WAL, to learn whether the disk is back.
            let _ = self
                .write(|t| {
                    run_sql(
                        t.conn,
                        "UPDATE audit_names SET name = name WHERE id = (SELECT MIN(id) FROM audit_names)",
                        [],
                    )?;
                    Ok(())
                })
                .await;
            return self.health.lock().expect("health lock").clone();
        }
        now
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn prune(&self, before: DateTime<Utc>, limit: usize) -> Result<Pruned, StoreError> {
        let from = self.prune_cursor.load(Ordering::Relaxed);
        let before_ms = before.timestamp_millis();
        let storm_cutoff = self.clock.now().timestamp_millis() - STORM_WINDOW.as_millis() as i64;
        let (pruned, last) = self.write(move |t| {
            // Executions are stored in time order, so the oldest are at the
            // lowest rowids: walk from where the last call stopped, stop at
            // the first one created after the cutoff. An old run still active
            // is stepped over (and looked at again on the next pass).
            let mut stmt = t.conn.prepare_cached("SELECT rowid, id, state, finished_ms, created_ms FROM executions WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")?;
            let rows: Vec<(i64, String, String, Option<i64>, i64)> = stmt
                .query_map(params![from, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                .collect::<Result<_, _>>()?;
            drop(stmt);
            let mut pruned = Pruned::default();
            let mut last = from;
            for (rowid, id, state, finished_ms, created_ms) in &rows {
                if *created_ms >= before_ms {
                    break;
                }
                last = *rowid;
                let ended = State::parse(state).is_some_and(State::is_final);
                if ended && finished_ms.is_some_and(|f| f < before_ms) {
                    run_sql(t.conn, "DELETE FROM steps WHERE execution_id = ?1", [id])?;
                    run_sql(t.conn, "DELETE FROM executions WHERE rowid = ?1", [rowid])?;
                    pruned.ids.push(id.clone());
                }
            }
            pruned.more = rows.len() == limit && last == rows.last().map_or(from, |r| r.0);
            // Targets that stopped alerting matter to no storm any more.
            run_sql(
                t.conn,
                "DELETE FROM target_alerts WHERE target IN (SELECT target FROM target_alerts INDEXED BY target_alerts_ms WHERE ms < ?1 LIMIT ?2)",
                params![storm_cutoff, limit as i64],
            )?;
            Ok((pruned, last))
        })
        .await?;
        // Moved only once the deletes are committed: a batch rolled back with
        // its group is walked again.
        self.prune_cursor.store(if pruned.more { last } else { 0 }, Ordering::Relaxed);
        Ok(pruned)
    }

    async fn queue_depth(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            Ok(query_row(
                conn,
                concat!("SELECT COUNT(*) FROM executions WHERE state = 'queued' AND ", active!()),
                [],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file from before numbered layouts is upgraded in place: the
    /// audit chain keeps every hash (verify passes, records read back the
    /// same, new records chain on), alerts keep their bodies, and runs that
    /// never counted stop counting.
    #[tokio::test]
    async fn an_unnumbered_state_file_is_upgraded_with_its_chain_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let alert = crate::alert::Alert::firing("Old").label_set("instance", "web-1");
        let now = DateTime::parse_from_rfc3339("2026-11-27T10:00:00.123456Z").unwrap().to_utc();
        let mut records = Vec::new();
        {
            let conn = open_connection(&path).unwrap();
            conn.execute_batch(include_str!("testdata/unnumbered.sql")).unwrap();
            conn.execute(
                "INSERT INTO alerts (id, dedupe_key, fingerprint, status, received_ms, body) VALUES (1, ?1, ?2, 'firing', 0, ?3)",
                params![alert.dedupe_key(), alert.fingerprint, serde_json::to_string(&alert).unwrap()],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO executions (id, runbook, target, state, actor, alert_id, fingerprint, params, dry_run, automated, risk, created_ms, admitted_ms)
                 VALUES ('dry', 'rb', 'web-1', 'succeeded', 'alertmanager', 1, 'fp', '{}', 1, 1, 'low', 1, 1),
                        ('real', 'rb', 'web-1', 'succeeded', 'alertmanager', 1, 'fp', '{}', 0, 1, 'low', 2, 2);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO executions (id, runbook, target, state, actor, alert_id, fingerprint, params, dry_run, automated, risk, created_ms, admitted_ms)
                 VALUES ('waiting', 'rb', 'web-1', 'queued', 'alertmanager', 1, ?1, '{}', 0, 1, 'low', 3, 3)",
                [&alert.fingerprint],
            )
            .unwrap();
            let mut prev = audit::GENESIS.to_string();
            for (seq, data) in [
                (1u64, json!({"a": null, "n": 1.5})),
                (2, json!({"labels": {"x": "y"}})),
                (3, json!([1, "two"])),
            ] {
                let record = Event::new(kind::ALERT_RECEIVED, "alertmanager", data)
                    .execution("real", "rb", "web-1")
                    .seal(seq, now, &prev);
                conn.execute(
                    "INSERT INTO audit (seq, ts_ms, kind, execution_id, record) VALUES (?1, 0, ?2, 'real', ?3)",
                    params![seq as i64, record.kind, serde_json::to_string(&record).unwrap()],
                )
                .unwrap();
                prev = record.hash.clone();
                records.push(record);
            }
        }
        let store = SqliteStore::open(dir.path(), Redactor::default(), Arc::new(crate::clock::SystemClock)).unwrap();
        assert_eq!(store.verify_audit().await.unwrap(), Ok(3));
        assert_eq!(store.audit(AuditFilter::default()).await.unwrap(), records);
        assert_eq!(store.execution("real").await.unwrap().alert, Some(alert.clone()));
        store
            .record(vec![Event::new(kind::NOTIFICATION, "pitcrew", json!({"text": "after"}))])
            .await
            .unwrap();
        assert_eq!(store.verify_audit().await.unwrap(), Ok(4));
        let admitted: Vec<(String, Option<i64>)> = store
            .read(|conn| {
                let mut stmt = conn.prepare("SELECT id, admitted_ms FROM executions ORDER BY id")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(
            admitted,
            vec![
                ("dry".to_string(), None),
                ("real".to_string(), Some(2)),
                ("waiting".to_string(), Some(3))
            ]
        );
        let version: i64 = store
            .read(|conn| Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(version, LAYOUT);
        // A run queued before the upgrade is still its alert's: the resolve cancels it.
        let resolved = IntakeAlert::new(alert.clone().resolved(), Vec::new());
        let result = store.intake(vec![resolved], Arc::new(Config::default())).await.unwrap();
        assert_eq!(result.cancelled, 1);
        assert_eq!(store.execution("waiting").await.unwrap().state, State::Cancelled);
    }

    /// Records are in time order even when the clock steps back, and a
    /// time range is found by bisection without an index.
    #[tokio::test]
    async fn audit_time_never_goes_back_and_ranges_are_found_without_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z").unwrap().to_utc();
        let clock = crate::clock::ManualClock::new(t0);
        let store = SqliteStore::open(dir.path(), Redactor::default(), Arc::new(clock.clone())).unwrap();
        let note = |n: u32| vec![Event::new(kind::NOTIFICATION, "pitcrew", json!({ "n": n }))];
        for n in 0..10 {
            store.record(note(n)).await.unwrap();
            clock.advance(chrono::Duration::seconds(1));
        }
        clock.set(t0 - chrono::Duration::hours(1));
        store.record(note(10)).await.unwrap();
        let all = store.audit(AuditFilter::default()).await.unwrap();
        assert_eq!(all[10].ts, all[9].ts, "a clock stepped back does not take the chain back with it");
        let at = |secs: i64| Some(t0 + chrono::Duration::seconds(secs));
        let range = |since, until| AuditFilter {
            since,
            until,
            ..Default::default()
        };
        let seqs = |records: Vec<Record>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.audit(range(at(3), at(5))).await.unwrap()), [4, 5, 6]);
        assert_eq!(seqs(store.audit(range(at(9), None)).await.unwrap()), [10, 11]);
        assert_eq!(seqs(store.audit(range(None, at(0))).await.unwrap()), [1]);
        assert!(store.audit(range(at(60), None)).await.unwrap().is_empty());
        assert_eq!(store.audit(range(at(-60), None)).await.unwrap().len(), 11);
        assert_eq!(store.verify_audit().await.unwrap(), Ok(11));
    }

    /// Statements the VM ran for each facts query when deciding `target`
    /// (a fresh connection, so every statement is prepared anew).
    fn fact_steps(path: &Path, target: &str, w: Windows, now_ms: i64) -> Vec<i32> {
        let conn = open_connection(path).unwrap();
        facts(&conn, "rb", target, w, now_ms).unwrap();
        fact_sql::ALL
            .iter()
            .map(|sql| conn.prepare_cached(sql).unwrap().get_status(rusqlite::StatementStatus::VmStep))
            .collect()
    }

    /// The store contract's rule: deciding one alert costs the same on a
    /// target with 100,000 stored executions (blocked, dry runs, old runs,
    /// cancelled before they started) as on a fresh one. Measured in SQLite
    /// VM steps per facts query, not in time, and each query's plan must be
    /// a search of the index it names.
    #[test]
    fn deciding_costs_the_same_after_100k_blocked_executions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = open_connection(&path).unwrap();
        prepare_schema(&conn).unwrap();
        let now_ms: i64 = 10_000_000_000;
        let hour = 3_600_000;
        // 100,000 executions of one runbook on one target, as a long storm
        // leaves them: nearly all blocked, one in a thousand ran (long ago),
        // some dry runs and runs cancelled before they started; plus two
        // real runs within the last hour and 100,000 other alerting targets.
        conn.execute_batch(&format!(
            "BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO executions (id, runbook, target, state, actor, fingerprint, params, dry_run, automated, risk,
                                     created_ms, admitted_ms, finished_ms)
             SELECT printf('x%06d', i), 'rb', 't',
                    CASE WHEN i % 1000 = 0 THEN 'succeeded' WHEN i % 97 = 0 THEN 'cancelled' ELSE 'blocked' END,
                    'alertmanager', 'fp', '{{}}', i % 89 = 0, 1, 'medium', {old} + i,
                    CASE WHEN i % 1000 = 0 THEN {old} + i END, {old} + i
             FROM n;
             INSERT INTO executions (id, runbook, target, state, actor, params, dry_run, automated, risk, created_ms, admitted_ms, finished_ms)
             VALUES ('recent1', 'rb', 't', 'succeeded', 'alertmanager', '{{}}', 0, 1, 'medium', {r1}, {r1}, {r1}),
                    ('recent2', 'rb', 't', 'running', 'alertmanager', '{{}}', 0, 1, 'medium', {r2}, {r2}, NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO target_alerts (target, ms) SELECT printf('other%06d', i), {old} + i FROM n;
             COMMIT;",
            old = now_ms - 100 * 24 * hour,
            r1 = now_ms - hour / 2,
            r2 = now_ms - hour / 4,
        ))
        .unwrap();
        drop(conn);
        let w = Windows {
            cooldown: true,
            target_ms: hour,
            runbook_ms: hour,
            global_ms: hour,
            escalation_ms: 6 * hour,
            storm_brake: Some(20),
        };

        let conn = open_connection(&path).unwrap();
        let hot = facts(&conn, "rb", "t", w, now_ms).unwrap();
        assert_eq!(hot.target_runs, 2, "only real runs in the window count");
        assert_eq!(hot.active_on_target, 1);
        assert_eq!(hot.last_admitted_ms, Some(now_ms - hour / 4));
        assert_eq!(hot.escalation_runs, 2);

        let fresh = fact_steps(&path, "fresh", w, now_ms);
        let stormed = fact_steps(&path, "t", w, now_ms);
        eprintln!("VM steps per facts query, fresh target {fresh:?}, after 100k executions {stormed:?}");
        for ((sql, fresh), stormed) in fact_sql::ALL.iter().zip(&fresh).zip(&stormed) {
            // The two runs in the window are the only rows the hot target may
            // cost more: a few VM steps each.
            assert!(
                *stormed <= fresh + 40 && *stormed < 200,
                "{sql}\n{stormed} VM steps with 100,000 stored executions, {fresh} on a fresh target"
            );
        }
        // The bound above would catch a scan: counting active runs without
        // the index walks every stored execution.
        let mut scan = conn
            .prepare(concat!(
                "SELECT COUNT(*) FROM executions NOT INDEXED WHERE runbook = 'rb' AND target = 't' AND ",
                active!()
            ))
            .unwrap();
        scan.query_row([], |_| Ok(())).unwrap();
        assert!(scan.get_status(rusqlite::StatementStatus::VmStep) > 100_000);

        for sql in fact_sql::ALL {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            // Unbound parameters are NULL; the plan does not depend on them.
            let mut rows = plan.raw_query();
            let mut details = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                details.push(row.get::<_, String>(3).unwrap());
            }
            let text = details.join("; ");
            let scans_a_table = details.iter().any(|d| d.starts_with("SCAN") && !d.starts_with("SCAN (subquery"));
            assert!(!scans_a_table, "{sql}: plan scans: {text}");
            assert!(text.contains("SEARCH"), "{sql}: plan does not search an index: {text}");
        }
    }

    fn counted(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM notices", [], |r| r.get(0)).unwrap()
    }

    /// Without savepoints, a job that fails after writing must take its whole
    /// group down with it (nothing half done is committed), while a job that
    /// fails before writing fails alone.
    #[tokio::test]
    async fn a_job_failing_half_way_rolls_back_its_group_and_one_failing_early_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("state.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let insert = |t: &mut Tx<'_>| run_sql(t.conn, "INSERT INTO notices (kind, ms) VALUES ('t', 1)", []).map_err(StoreError::from);
        let now = Utc::now();
        let health: SharedHealth = Arc::new(Mutex::new(Health::Writable));
        let finish = |jobs: Vec<Job>| {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            let group = run_group(&conn, jobs, &Redactor::default(), now, &mut Names::new(), &health);
            for done in group.completions {
                done(group.outcome.clone());
            }
        };

        let (ok, ok_rx) = job(move |t| insert(t));
        let (early, early_rx) = job(|_t| Err::<(), _>(StoreError::Taken("x".into())));
        let (after, after_rx) = job(move |t| insert(t));
        finish(vec![ok, early, after]);
        assert!(ok_rx.await.unwrap().is_ok());
        assert!(matches!(early_rx.await.unwrap(), Err(StoreError::Taken(_))));
        assert!(after_rx.await.unwrap().is_ok());
        assert_eq!(counted(&conn), 2);

        let (ok, ok_rx) = job(move |t| insert(t));
        let (half, half_rx) = job(move |t| {
            insert(t)?;
            Err::<(), _>(StoreError::Corrupt("boom".into()))
        });
        let (after, after_rx) = job(move |t| insert(t));
        finish(vec![ok, half, after]);
        assert!(matches!(ok_rx.await.unwrap(), Err(StoreError::RolledBack(why)) if why.contains("boom")));
        assert!(
            matches!(half_rx.await.unwrap(), Err(StoreError::Corrupt(_))),
            "the failing job keeps its own error"
        );
        assert!(
            matches!(after_rx.await.unwrap(), Err(StoreError::RolledBack(_))),
            "a job after the failure does not run"
        );
        assert_eq!(counted(&conn), 2, "nothing of the failed group was kept");

        // SQLite may roll the whole transaction back itself on SQLITE_FULL
        // or an I/O error, even for a statement that changed nothing: the
        // jobs before are gone, and the jobs after must not run, each
        // committing on its own outside the transaction.
        let (ok, ok_rx) = job(move |t| insert(t));
        let (full, full_rx) = job(|t| {
            t.conn.execute_batch("ROLLBACK")?;
            Err::<(), _>(StoreError::Corrupt("database or disk is full".into()))
        });
        let (after, after_rx) = job(move |t| insert(t));
        finish(vec![ok, full, after]);
        assert!(matches!(ok_rx.await.unwrap(), Err(StoreError::RolledBack(_))));
        assert!(matches!(full_rx.await.unwrap(), Err(StoreError::Corrupt(_))));
        assert!(
            matches!(after_rx.await.unwrap(), Err(StoreError::RolledBack(_))),
            "not run outside the transaction"
        );
        assert_eq!(counted(&conn), 2, "nothing of the rolled back group was kept, nothing after it ran");
    }
}
