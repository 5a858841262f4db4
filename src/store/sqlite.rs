//! The embedded SQLite backend (WAL mode, one file per state dir): the
//! SQL behind [`super::backend`]'s traits, the file's layout and its
//! upgrades, and the fsync off the writer thread (`sync_loop`).
//!
//! The writer thread (`super::writer`) commits jobs in groups. Other
//! processes (the CLI) may write the same file; SQLite's lock serialises
//! us, and the audit chain's head is re-read at the start of every
//! transaction.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::backend::{
    AlertRow, AuditRow, ChainHead, Conn, Ending, NewExecution, Read, ReportRecord, ReportRun, StepKey, StepRow, StoredWithPrev, Tx, Victim,
    Watch, firing_from_row, prefix_end,
};
use super::rules::{Backend, Ledger, ReadJob, ts};
use super::writer::{Committed, SharedHealth, WriteQueue, write_loop};
use super::*;
use crate::audit;
use crate::clock::Clock;
use crate::guard::{Facts, STORM_WINDOW, Windows};
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

/// Executions in list order (`executions`, newest first): a page of the
/// list, and the keyset cursor of the next, are an index walk at any history.
macro_rules! listed_index {
    () => {
        "CREATE INDEX IF NOT EXISTS executions_listed ON executions(created_ms, id);"
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
"#,
    listed_index!(),
    r#"
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
-- Alerts firing now, for `inhibit_while_firing`: one row per fingerprint,
-- written by firing notifications (new or re-sent) and deleted by resolved
-- ones, so it holds what fires now, never history. A row whose resolve
-- never came stops counting when not seen for `inhibit::FIRING_EXPIRES`
-- and is then pruned. Looked up by alertname.
CREATE TABLE IF NOT EXISTS firing_alerts (fingerprint TEXT PRIMARY KEY, alertname TEXT NOT NULL, labels TEXT NOT NULL,
    starts_ms INTEGER NOT NULL, ends_ms INTEGER, seen_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS firing_by_name ON firing_alerts(alertname, seen_ms);
CREATE INDEX IF NOT EXISTS firing_seen ON firing_alerts(seen_ms);
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
-- Reports read the executions created in a time range.
CREATE INDEX IF NOT EXISTS executions_created ON executions(created_ms);
-- Runs watched for their effectiveness judgment (`store::effect`), from
-- admission until judged: few rows, however long the history. Found by
-- their alert's episode (a resolve), by runbook and target once resolved
-- (a re-fire), and by when their judgment falls due.
CREATE TABLE IF NOT EXISTS effect_watch (
    execution_id TEXT PRIMARY KEY,
    runbook TEXT NOT NULL,
    target TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    verify_ms INTEGER NOT NULL,
    stays_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    resolved_ms INTEGER,
    due_ms INTEGER
);
CREATE INDEX IF NOT EXISTS effect_episode ON effect_watch(fingerprint, starts_at);
CREATE INDEX IF NOT EXISTS effect_resolved ON effect_watch(runbook, target) WHERE resolved_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS effect_due ON effect_watch(due_ms) WHERE due_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS effect_due_by_runbook ON effect_watch(runbook, due_ms) WHERE due_ms IS NOT NULL;
-- Judged runs per runbook: what `min_effectiveness` reads, one row.
CREATE TABLE IF NOT EXISTS effectiveness (
    runbook TEXT PRIMARY KEY,
    judged INTEGER NOT NULL,
    effective INTEGER NOT NULL,
    notified INTEGER NOT NULL
);
-- No index on time: records are in time order (`Tx::append`), so a time
-- range is found by bisecting seq (`seq_from`).
"#
);

/// The layout this code reads and writes (`PRAGMA user_version`). A state
/// file made before layouts were numbered is upgraded once, at open; one
/// of an older number gets the tables and indexes added since.
/// 3: `effect_watch`, `effectiveness`; 4: `firing_alerts`.
const LAYOUT: i64 = 4;

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
        // Made by this layout: nothing to create (and start-up stays fast)
        // but the list's index, added later without a new layout (an older
        // pitcrew reads the file as before).
        conn.execute_batch(listed_index!())?;
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
    // One transaction: statement by statement, each would commit on its
    // own, an fsync each (some thirty on a new state file, most of the time
    // `serve` took to start on one).
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {LAYOUT}; COMMIT;"))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode::*;
        let disk = matches!(
            e.sqlite_error_code(),
            Some(DiskFull | SystemIoFailure | ReadOnly | CannotOpen | OutOfMemory)
        );
        StoreError::Database {
            message: e.to_string(),
            disk,
        }
    }
}

/// Free space a failing store wants on its disk before it tries writing
/// again: a webhook's worth of alerts many times over.
const MIN_ROOM: u64 = 16 << 20;

/// Durable on commit (FULL fsyncs the WAL), safe across processes (WAL),
/// patient with another process holding the write lock.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    open_synced(path, "FULL")
}

/// `synchronous` is set first, so it also governs the switch to WAL of a
/// new file.
fn open_synced(path: &Path, synchronous: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous}; PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;"
    ))?;
    // Savepoint sub-journals stay in memory instead of temp files.
    conn.execute_batch("PRAGMA temp_store=MEMORY;")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The writer's connection to a state file made now. Its switch to WAL
/// and its tables are written unsynced, then one checkpoint syncs the WAL,
/// the folder (SQLite syncs it with a new WAL's first sync, which makes
/// both names durable) and the file: three fsyncs where SQLite's own would
/// be seven (the switch's rollback journal, the folder twice, the WAL).
/// Nothing is lost by that: no commit has been acknowledged before, and a
/// crash before leaves an empty file, or one without tables, which the next
/// start completes as it would any older layout.
///
/// The file is synced by SQLite, never through a descriptor of ours:
/// closing any descriptor of a file drops every POSIX lock the process
/// holds on it, SQLite's included, and another process could then take the
/// WAL away from under the writer.
fn create(path: &Path, durability: Durability) -> Result<SqliteConn, StoreError> {
    let conn = open_synced(path, "OFF")?;
    prepare_schema(&conn)?;
    if durability == Durability::Durable {
        conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        // FULL waits for another process's reader, if any: only a complete
        // checkpoint syncs the file (and so its header).
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                source: std::io::Error::other("another process held the new state file; start again"),
            });
        }
        // The first write after a checkpoint starts the WAL over and syncs
        // its new header: done here, not in the first record's commit
        // (`serve` makes the file while its runbooks load).
        conn.execute_batch(&format!("PRAGMA user_version = {LAYOUT};"))?;
    }
    Ok(SqliteConn { conn, names: Names::new() })
}

/// A connection to the state file, for the writer or for reads.
pub struct SqliteConn {
    conn: Connection,
    names: Names,
}

impl SqliteConn {
    fn open(path: &Path) -> Result<SqliteConn, StoreError> {
        Ok(SqliteConn {
            conn: open_connection(path)?,
            names: Names::new(),
        })
    }
}

/// The embedded store's backend: the state file's place.
pub struct Sqlite {
    path: PathBuf,
    /// Idle read connections.
    readers: Arc<Mutex<Vec<SqliteConn>>>,
}

#[async_trait::async_trait]
impl Backend for Sqlite {
    /// On the blocking pool, with a pooled connection.
    fn read(&self, job: ReadJob) {
        let (path, idle) = (self.path.clone(), self.readers.clone());
        tokio::task::spawn_blocking(move || {
            let pooled = idle.lock().expect("reader pool lock").pop();
            let mut conn = match pooled.map_or_else(|| SqliteConn::open(&path), Ok) {
                Ok(c) => c,
                Err(e) => return job(Err(e)),
            };
            job(Ok(&mut conn));
            let mut pool = idle.lock().expect("reader pool lock");
            if pool.len() < 4 {
                pool.push(conn);
            }
        });
    }

    /// A small write fits in the room the WAL file already holds on a full
    /// disk, while a webhook's does not: look for room first.
    fn may_probe(&self) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let room = nix::sys::statvfs::statvfs(dir).map(|s| s.blocks_available().saturating_mul(s.fragment_size()));
        !room.is_ok_and(|r| r < MIN_ROOM)
    }

    /// A process on this host: `pid:starttime`, which `/proc` tells alive
    /// or gone (processes sharing a state file share a host).
    fn worker_id(&self) -> String {
        crate::engine::worker_id()
    }
}

/// The embedded store.
pub type SqliteStore = Ledger<Sqlite>;

/// Whether commits wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is on disk before anyone hears of it (see `sync_loop`).
    Durable,
    /// Never fsynced: for a store thrown away when its process ends
    /// (`pitcrew simulate`'s), where waiting for the disk is all the cost.
    Scratch,
}

/// `state_dir/state.db`, made if needed, with this layout's tables, and
/// the connection the store's writer will use: everything about opening
/// the embedded store that needs no runbooks, so `serve` does it while the
/// runbooks load.
pub struct StateFile {
    path: PathBuf,
    writer: SqliteConn,
    /// The readers' pool starts with one, so the first read (a readiness
    /// probe) does not open it.
    reader: SqliteConn,
    durability: Durability,
}

impl StateFile {
    pub fn prepare(state_dir: &Path, durability: Durability) -> Result<StateFile, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Open {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join("state.db");
        let writer = match std::fs::metadata(&path) {
            Ok(m) if m.len() > 0 => {
                let writer = SqliteConn::open(&path)?;
                prepare_schema(&writer.conn)?;
                writer
            }
            _ => create(&path, durability)?,
        };
        let reader = SqliteConn::open(&path)?;
        Ok(StateFile {
            path,
            writer,
            reader,
            durability,
        })
    }
}

impl Ledger<Sqlite> {
    /// Opens (creating if needed) `state_dir/state.db`.
    pub fn open(state_dir: &Path, redactor: Redactor, clock: Arc<dyn Clock>) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(state_dir, redactor, clock, Durability::Durable)
    }

    pub fn open_with(
        state_dir: &Path,
        redactor: Redactor,
        clock: Arc<dyn Clock>,
        durability: Durability,
    ) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_prepared(StateFile::prepare(state_dir, durability)?, redactor, clock)
    }

    /// The store over a state file [`StateFile::prepare`] made ready.
    pub fn open_prepared(file: StateFile, redactor: Redactor, clock: Arc<dyn Clock>) -> Result<SqliteStore, StoreError> {
        let StateFile {
            path,
            writer,
            reader,
            durability,
        } = file;
        // Commits write the WAL without waiting for the disk; the syncer
        // thread fsyncs it and only then answers the jobs (see `sync_loop`).
        writer.conn.execute_batch(match durability {
            Durability::Durable => "PRAGMA synchronous=NORMAL;",
            Durability::Scratch => "PRAGMA synchronous=OFF;",
        })?;
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
                move || sync_loop(wal, unsynced, health, durability)
            })
            .map_err(spawn_error)?;
        let (queue, inbox) = WriteQueue::new();
        std::thread::Builder::new()
            .name("pitcrew-store-writer".into())
            .spawn({
                let (clock, redactor, health) = (clock.clone(), redactor.clone(), health.clone());
                // The syncer stopped after a failed fsync: fail closed from now on.
                move || write_loop(writer, inbox, redactor, clock, health, move |group| to_sync.send(group).is_ok())
            })
            .map_err(spawn_error)?;
        Ok(Ledger::new(
            Sqlite {
                path,
                readers: Arc::new(Mutex::new(vec![reader])),
            },
            queue,
            health,
            clock,
            redactor,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.backend.path
    }
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
///
/// A [`Durability::Scratch`] store answers every group at once.
fn sync_loop(wal: PathBuf, unsynced: Receiver<Committed>, health: SharedHealth, durability: Durability) {
    let mut file: Option<std::fs::File> = None;
    let mut failed: Option<String> = None;
    while let Ok(first) = unsynced.recv() {
        let mut groups = vec![first];
        groups.extend(unsynced.try_iter());
        if failed.is_none() && durability == Durability::Durable {
            let synced = match &file {
                _ if crate::failpoint::fail("store.fsync") => Err(std::io::Error::other("failpoint store.fsync")),
                Some(f) => f.sync_data(),
                // The WAL exists once the writer has committed: open it on first
                // use. It may be new (a clean stop deletes it), and FULL, which
                // this stands for, syncs a new WAL's folder too: its name is as
                // much a part of the commit as its bytes.
                None => std::fs::File::open(&wal)
                    .and_then(|f| f.sync_data().map(|()| f))
                    .and_then(|f| {
                        let folder = wal.parent().unwrap_or(Path::new("."));
                        std::fs::File::open(folder).and_then(|d| d.sync_all()).map(|()| f)
                    })
                    .map(|f| {
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
            group.answer(failed.as_deref());
        }
        if failed.is_some() {
            // Dropping the receiver makes the writer stop.
            return;
        }
    }
}

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
            phase: Phase::parse(&phase),
            index: r.get(1)?,
            name: r.get(2)?,
            action: r.get(3)?,
            attempt: r.get(4)?,
            idempotent: r.get(5)?,
            state: StepState::parse(&state),
            input: serde_json::from_str(&input).unwrap_or(Value::Null),
            output: output.and_then(|o| serde_json::from_str(&o).ok()),
            error: r.get(9)?,
            started_at: ts(r.get(10)?),
            finished_at: opt_ts(r.get(11)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
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
    /// A watched run of this runbook on this target whose alert resolved.
    pub const RESOLVED_WATCH: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM effect_watch INDEXED BY effect_resolved \
        WHERE runbook = ?1 AND target = ?2 AND resolved_ms IS NOT NULL LIMIT 1)";
    /// Alerts named ?1 firing now (seen since ?2, not ended at ?3).
    pub const FIRING_NAMED: &str = "SELECT fingerprint, labels FROM firing_alerts INDEXED BY firing_by_name \
        WHERE alertname = ?1 AND seen_ms > ?2 AND (ends_ms IS NULL OR ends_ms > ?3)";
    /// Every alert firing now: the table holds only those (and a few stale
    /// ones until pruned), so this walks what fires now, never history.
    pub const FIRING_ALL: &str = "SELECT fingerprint, labels FROM firing_alerts INDEXED BY firing_seen \
        WHERE seen_ms > ?1 AND (ends_ms IS NULL OR ends_ms > ?2)";

    #[cfg(test)]
    pub const ALL: [&str; 10] = [
        RESOLVED_WATCH,
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
        // Effectiveness is one counter row per runbook, read by the rules.
        judged_runs: 0,
        effective_runs: 0,
        ineffective_notified: false,
        // Looked up by the rules (`inhibit_while_firing`), not per runbook and target.
        inhibited_by: None,
        resolved_watch: w.resolved_watch && count(conn, fact_sql::RESOLVED_WATCH, params![runbook, target])? > 0,
    })
}

/// Reads by primary key that must stay index searches (a unit test checks
/// their plans).
mod lookup_sql {
    /// Ids starting with ?1, below ?2 (`prefix_end`); the prefix is checked
    /// again on what the range holds (it may hold more: see `prefix_end`).
    pub const IDS_IN_RANGE: &str =
        "SELECT id FROM executions WHERE id >= ?1 AND id < ?2 AND substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT ?3";
    /// The same with no bound above (a prefix of only `z`s).
    pub const IDS_FROM: &str = "SELECT id FROM executions WHERE id >= ?1 AND substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT ?2";
    /// Ends a run; `?5` is an [`Uncount`](super::backend::Uncount). Whether
    /// one of its steps started an action is a search on the steps' primary
    /// key prefix.
    pub const END: &str = "UPDATE executions SET state = ?2, reason = ?3, finished_ms = ?4, \
         admitted_ms = CASE WHEN ?5 = 'yes' OR (?5 = 'unless_started' AND NOT EXISTS \
         (SELECT 1 FROM steps WHERE execution_id = ?1 AND action != '')) THEN NULL ELSE admitted_ms END, \
         claimed_by = CASE WHEN ?6 THEN NULL ELSE claimed_by END WHERE id = ?1 \
         RETURNING admitted_ms IS NOT NULL";
    #[cfg(test)]
    pub const ALL: [&str; 3] = [IDS_IN_RANGE, IDS_FROM, END];
}

/// The columns of a watched run, in [`watch_from_row`]'s order.
const WATCH_COLUMNS: &str = "execution_id, runbook, target, fingerprint, starts_at, verify_ms, stays_ms, ended_ms, resolved_ms";

fn watch_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Watch> {
    Ok(Watch {
        execution_id: r.get(0)?,
        runbook: r.get(1)?,
        target: r.get(2)?,
        fingerprint: r.get(3)?,
        starts_at: r.get(4)?,
        verify_ms: r.get(5)?,
        stays_ms: r.get(6)?,
        ended_ms: r.get(7)?,
        resolved_ms: r.get(8)?,
    })
}

fn watches(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Watch>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, watch_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The report's reads: ranges on indexed times.
mod report_sql {
    /// Executions created in [?1, ?2); the alertname only of succeeded real
    /// runs (a lookup of their alert record by seq).
    pub const RUNS: &str = "SELECT e.runbook, e.target, e.state, e.dry_run, e.alert_seq IS NOT NULL OR e.alert IS NOT NULL, \
        e.created_ms, e.finished_ms, \
        CASE WHEN e.state = 'succeeded' AND e.dry_run = 0 THEN json_extract(COALESCE(e.alert, \
            (SELECT r.data FROM audit r WHERE r.seq = e.alert_seq)), '$.labels.alertname') END \
        FROM executions e INDEXED BY executions_created WHERE e.created_ms >= ?1 AND e.created_ms < ?2";
    /// Records of the report's kinds with seq in [?1, ?2): a range of the
    /// audit's key (`CROSS JOIN` keeps SQLite from starting at the names,
    /// which would walk every record of a kind).
    pub const RECORDS: &str = "SELECT k.name, n.name, a.ts_us, \
        CASE k.name WHEN 'alert.received' THEN json_extract(a.data, '$.status') \
            WHEN 'guardrail.decision' THEN json_extract(a.data, '$.verdict') END, \
        CASE WHEN k.name = 'guardrail.decision' THEN json_extract(a.data, '$.decided_by') END, \
        CASE WHEN k.name = 'guardrail.decision' THEN json_extract(a.data, '$.escalated') IS NOT NULL ELSE 0 END, \
        CASE WHEN k.name LIKE 'approval.%' THEN (SELECT e.created_ms FROM executions e WHERE e.id = a.execution_id) END \
        FROM audit a CROSS JOIN audit_names k ON k.id = a.kind CROSS JOIN audit_names n ON n.id = a.actor \
        WHERE a.seq >= ?1 AND a.seq < ?2 \
        AND k.name IN ('alert.received', 'guardrail.decision', 'approval.granted', 'approval.denied')";
}

impl Read for SqliteConn {
    fn facts(&mut self, runbook: &str, target: &str, windows: Windows, now_ms: i64) -> Result<Facts, StoreError> {
        facts(&self.conn, runbook, target, windows, now_ms)
    }

    fn execution(&mut self, id: &str) -> Result<Option<Execution>, StoreError> {
        match load_execution(&self.conn, id) {
            Ok(e) => Ok(Some(e)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn alert_row(&mut self, id: &[u8; 16]) -> Result<Option<AlertRow>, StoreError> {
        Ok(query_row(
            &self.conn,
            "SELECT received_seq, decided_ms FROM alerts WHERE id = ?1",
            [&id[..]],
            |r| Ok((r.get::<_, Option<i64>>(0)?.map(|s| s as u64), r.get(1)?)),
        )
        .optional()?)
    }

    fn queued_ids(&mut self, at_most: usize) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT id FROM executions WHERE state = 'queued' AND ",
            active!(),
            " ORDER BY created_ms, rowid LIMIT ?1"
        ))?;
        let rows = stmt.query_map([at_most.min(i64::MAX as usize) as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn executions(&mut self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
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
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), execution_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<StoredWithPrev>, StoreError> {
        let conn = &self.conn;
        let mut sql = format!("SELECT {AUDIT_COLUMNS}, (SELECT p.hash FROM audit p WHERE p.seq = a.seq - 1) FROM {AUDIT_FROM} WHERE 1=1");
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
            out.push((stored_from_row(row)?, row.get(9)?));
        }
        Ok(out)
    }

    fn audit_walk(&mut self, visit: &mut dyn FnMut(audit::Stored) -> bool) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {AUDIT_COLUMNS} FROM {AUDIT_FROM} ORDER BY a.seq"))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            if !visit(stored_from_row(row)?) {
                break;
            }
        }
        Ok(())
    }

    fn breakers(&mut self) -> Result<Vec<Breaker>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT runbook, target, tripped_ms, reason FROM breakers ORDER BY tripped_ms")?;
        let rows = stmt.query_map([], |r| {
            Ok(Breaker {
                runbook: r.get(0)?,
                target: r.get(1)?,
                tripped_at: ts(r.get(2)?),
                reason: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn recent_runs(&mut self, runbook: &str, since_ms: i64, limit: usize) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT target, MAX(admitted_ms) AS ms FROM executions INDEXED BY runs_by_runbook \
             WHERE runbook = ?1 AND admitted_ms > ?2 GROUP BY target ORDER BY ms DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![runbook, since_ms, limit.min(i64::MAX as usize) as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn queue_depth(&mut self) -> Result<u64, StoreError> {
        Ok(query_row(
            &self.conn,
            concat!("SELECT COUNT(*) FROM executions WHERE state = 'queued' AND ", active!()),
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    fn ids_with_prefix(&mut self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        // The bound above is a term of its own, not `?2 IS NULL OR id < ?2`:
        // only a plain comparison ends the index search there.
        let (sql, args): (&str, Vec<rusqlite::types::Value>) = match prefix_end(prefix) {
            Some(end) => (lookup_sql::IDS_IN_RANGE, vec![prefix.to_string().into(), end.into(), limit.into()]),
            None => (lookup_sql::IDS_FROM, vec![prefix.to_string().into(), limit.into()]),
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn effectiveness(&mut self, runbook: Option<&str>) -> Result<Vec<Effectiveness>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT runbook, judged, effective, notified FROM effectiveness WHERE ?1 IS NULL OR runbook = ?1 ORDER BY runbook",
        )?;
        let rows = stmt.query_map([runbook], |r| {
            Ok(Effectiveness {
                runbook: r.get(0)?,
                judged: r.get(1)?,
                effective: r.get(2)?,
                notified: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn report_runs(&mut self, since_ms: i64, until_ms: i64, visit: &mut dyn FnMut(ReportRun)) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(report_sql::RUNS)?;
        let mut rows = stmt.query(params![since_ms, until_ms])?;
        while let Some(r) = rows.next()? {
            let state: String = r.get(2)?;
            visit(ReportRun {
                runbook: r.get(0)?,
                target: r.get(1)?,
                state: State::parse(&state).unwrap_or(State::Unknown),
                dry_run: r.get(3)?,
                from_alert: r.get(4)?,
                created_ms: r.get(5)?,
                finished_ms: r.get(6)?,
                alertname: r.get(7)?,
            });
        }
        Ok(())
    }

    fn firing(
        &mut self,
        alertname: Option<&str>,
        seen_after_ms: i64,
        now_ms: i64,
        visit: &mut dyn FnMut(crate::inhibit::Firing) -> bool,
    ) -> Result<(), StoreError> {
        let mut stmt = match alertname {
            Some(_) => self.conn.prepare_cached(fact_sql::FIRING_NAMED)?,
            None => self.conn.prepare_cached(fact_sql::FIRING_ALL)?,
        };
        let mut rows = match alertname {
            Some(name) => stmt.query(params![name, seen_after_ms, now_ms])?,
            None => stmt.query(params![seen_after_ms, now_ms])?,
        };
        while let Some(row) = rows.next()? {
            if !visit(firing_from_row(row.get(0)?, row.get(1)?)?) {
                break;
            }
        }
        Ok(())
    }

    fn report_records(&mut self, since_us: i64, until_us: i64, visit: &mut dyn FnMut(ReportRecord)) -> Result<(), StoreError> {
        // Records are in time order: the range is a range of seq.
        let (from, to) = (seq_from(&self.conn, since_us)?, seq_from(&self.conn, until_us)?);
        let mut stmt = self.conn.prepare_cached(report_sql::RECORDS)?;
        let mut rows = stmt.query(params![from as i64, to as i64])?;
        while let Some(r) = rows.next()? {
            visit(ReportRecord {
                kind: r.get(0)?,
                actor: r.get(1)?,
                ts_us: r.get(2)?,
                status: r.get(3)?,
                decided_by: r.get(4)?,
                escalated: r.get(5)?,
                created_ms: r.get(6)?,
            });
        }
        Ok(())
    }
}

impl Tx for SqliteConn {
    fn changes(&self) -> u64 {
        self.conn.total_changes()
    }

    fn aborted(&self) -> bool {
        // Inside a group, autocommit means SQLite rolled the transaction back itself.
        self.conn.is_autocommit()
    }

    fn chain_head(&mut self) -> Result<Option<ChainHead>, StoreError> {
        Ok(query_row(
            &self.conn,
            "SELECT seq, hash, ts_us FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(ChainHead {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                    ts_us: r.get(2)?,
                })
            },
        )
        .optional()?)
    }

    fn append_audit(&mut self, row: AuditRow<'_>) -> Result<(), StoreError> {
        let (kind, actor) = (
            name_id(&self.conn, &mut self.names, row.kind)?,
            name_id(&self.conn, &mut self.names, row.actor)?,
        );
        run_sql(
            &self.conn,
            "INSERT INTO audit (seq, ts_us, kind, actor, execution_id, runbook, target, data, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                row.seq as i64,
                row.ts_us,
                kind,
                actor,
                row.execution_id,
                row.runbook,
                row.target,
                row.data,
                &row.hash[..]
            ],
        )?;
        Ok(())
    }

    fn alerts_insert(&mut self, ids: &[[u8; 16]]) -> Result<Vec<bool>, StoreError> {
        ids.iter()
            .map(|id| Ok(run_sql(&self.conn, "INSERT OR IGNORE INTO alerts (id) VALUES (?1)", [&id[..]])? > 0))
            .collect()
    }

    fn alert_mark(&mut self, id: &[u8; 16], received_seq: Option<u64>, decided_ms: Option<i64>) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "UPDATE alerts SET received_seq = ?2, decided_ms = ?3 WHERE id = ?1",
            params![&id[..], received_seq.map(|s| s as i64), decided_ms],
        )?;
        Ok(())
    }

    fn firing_seen(
        &mut self,
        fingerprint: &str,
        alertname: &str,
        labels: &str,
        starts_ms: i64,
        ends_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "INSERT INTO firing_alerts (fingerprint, alertname, labels, starts_ms, ends_ms, seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(fingerprint) DO UPDATE SET alertname = excluded.alertname, labels = excluded.labels, \
             starts_ms = excluded.starts_ms, ends_ms = excluded.ends_ms, seen_ms = excluded.seen_ms \
             WHERE excluded.starts_ms >= firing_alerts.starts_ms",
            params![fingerprint, alertname, labels, starts_ms, ends_ms, now_ms],
        )?;
        Ok(())
    }

    fn firing_resolved(&mut self, fingerprint: &str, starts_ms: i64) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "DELETE FROM firing_alerts WHERE fingerprint = ?1 AND starts_ms <= ?2",
            params![fingerprint, starts_ms],
        )?;
        Ok(())
    }

    fn firing_forget(&mut self, before_ms: i64, limit: usize) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "DELETE FROM firing_alerts WHERE fingerprint IN \
             (SELECT fingerprint FROM firing_alerts INDEXED BY firing_seen WHERE seen_ms < ?1 LIMIT ?2)",
            params![before_ms, limit as i64],
        )?;
        Ok(())
    }

    fn target_alerting(&mut self, target: &str, ms: i64) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "INSERT INTO target_alerts (target, ms) VALUES (?1, ?2) ON CONFLICT(target) DO UPDATE SET ms = excluded.ms",
            params![target, ms],
        )?;
        Ok(())
    }

    fn execution_insert(&mut self, e: NewExecution<'_>) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "INSERT INTO executions (id, runbook, target, state, reason, actor, alert_seq, alert, fingerprint, params, dry_run, automated, \
             risk, created_ms, admitted_ms, finished_ms, approval_deadline_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                e.id,
                e.runbook,
                e.target,
                e.state.as_str(),
                e.reason,
                e.actor,
                e.alert_seq.map(|s| s as i64),
                e.alert,
                e.fingerprint,
                e.params,
                e.dry_run,
                e.automated,
                e.risk,
                e.created_ms,
                e.admitted_ms,
                e.finished_ms,
                e.approval_deadline_ms,
            ],
        )?;
        Ok(())
    }

    fn claim_held(&mut self, id: &str, claim: Option<&str>) -> Result<bool, StoreError> {
        let held: Option<(String, Option<String>)> =
            query_row(&self.conn, "SELECT state, claimed_by FROM executions WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        Ok(matches!(held, Some((state, claimer)) if state == "running" && claimer.as_deref() == claim))
    }

    fn claim(&mut self, id: &str, worker: &str, started_ms: i64) -> Result<bool, StoreError> {
        Ok(run_sql(
            &self.conn,
            "UPDATE executions SET state = 'running', claimed_by = ?2, started_ms = COALESCE(started_ms, ?3) WHERE id = ?1 AND state = 'queued'",
            params![id, worker, started_ms],
        )? > 0)
    }

    fn oldest_queued(&mut self, id: Option<&str>) -> Result<Option<String>, StoreError> {
        Ok(match id {
            Some(id) => query_row(
                &self.conn,
                concat!("SELECT id FROM executions WHERE id = ?1 AND state = 'queued' AND ", active!()),
                [id],
                |r| r.get(0),
            )
            .optional()?,
            None => query_row(
                &self.conn,
                concat!(
                    "SELECT id FROM executions WHERE state = 'queued' AND ",
                    active!(),
                    " ORDER BY created_ms, rowid LIMIT 1"
                ),
                [],
                |r| r.get(0),
            )
            .optional()?,
        })
    }

    fn requeue(&mut self, id: &str, resume_error: Option<&str>) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "UPDATE executions SET state = 'queued', claimed_by = NULL, resume_error = COALESCE(?2, resume_error) WHERE id = ?1",
            params![id, resume_error],
        )?;
        Ok(())
    }

    fn end(&mut self, id: &str, ending: Ending<'_>) -> Result<bool, StoreError> {
        let counts = query_row(
            &self.conn,
            lookup_sql::END,
            params![
                id,
                ending.state.as_str(),
                ending.reason,
                ending.finished_ms,
                ending.uncount.as_str(),
                ending.release_claim
            ],
            |r| r.get(0),
        )
        .optional()?;
        Ok(counts.unwrap_or(false))
    }

    fn approved(&mut self, id: &str, admitted_ms: i64) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "UPDATE executions SET state = 'queued', admitted_ms = CASE WHEN dry_run = 0 THEN ?2 END, reason = NULL WHERE id = ?1",
            params![id, admitted_ms],
        )?;
        Ok(())
    }

    fn running(&mut self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut stmt = self.conn.prepare(concat!(
            "SELECT id, claimed_by FROM executions WHERE state = 'running' AND ",
            active!()
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn expired_approvals(&mut self, now_ms: i64) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(concat!(
            "SELECT id, runbook, target FROM executions WHERE state = 'pending_approval' AND ",
            active!(),
            " AND approval_deadline_ms <= ?1"
        ))?;
        let rows = stmt.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn unstarted_of_episode(&mut self, fingerprint: &str, starts_at: &str) -> Result<Vec<Victim>, StoreError> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT e.id, e.runbook, e.target, e.state FROM executions e INDEXED BY active_by_fingerprint \
             LEFT JOIN audit r ON r.seq = e.alert_seq \
             WHERE e.fingerprint = ?1 AND ",
            active!(),
            // Runs stored before alerts lived in the audit keep theirs in `alert`
            // (a manual run's own alert is no delivery and is never cancelled).
            " AND e.state <> 'running' AND e.started_ms IS NULL AND COALESCE(json_extract(r.data, '$.startsAt'), \
             CASE WHEN e.automated = 1 THEN json_extract(e.alert, '$.startsAt') END) = ?2"
        ))?;
        let rows = stmt.query_map(params![fingerprint, starts_at], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn step_start(&mut self, key: StepKey<'_>, name: &str, action: &str, idempotent: bool, input: &str, ms: i64) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "INSERT OR REPLACE INTO steps (execution_id, phase, idx, attempt, name, action, idempotent, state, input, started_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'started', ?8, ?9)",
            params![
                key.execution_id,
                key.phase.as_str(),
                key.index,
                key.attempt,
                name,
                action,
                idempotent,
                input,
                ms
            ],
        )?;
        Ok(())
    }

    fn step_end(&mut self, key: StepKey<'_>, name: &str, end: StepRow<'_>) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "INSERT INTO steps (execution_id, phase, idx, attempt, name, action, idempotent, state, input, output, error, started_ms, finished_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, '', 1, ?6, 'null', ?7, ?8, ?9, ?9) \
             ON CONFLICT (execution_id, phase, idx, attempt) DO UPDATE SET state = excluded.state, output = excluded.output, \
             error = excluded.error, finished_ms = excluded.finished_ms",
            params![
                key.execution_id,
                key.phase.as_str(),
                key.index,
                key.attempt,
                name,
                end.state.as_str(),
                end.output,
                end.error,
                end.finished_ms
            ],
        )?;
        Ok(())
    }

    fn breaker_trip(&mut self, runbook: &str, target: &str, ms: i64, reason: &str) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "INSERT OR REPLACE INTO breakers (runbook, target, tripped_ms, reason) VALUES (?1, ?2, ?3, ?4)",
            params![runbook, target, ms, reason],
        )?;
        Ok(())
    }

    fn breaker_reset(&mut self, runbook: &str, target: &str, ms: i64) -> Result<bool, StoreError> {
        let n = run_sql(
            &self.conn,
            "DELETE FROM breakers WHERE runbook = ?1 AND target = ?2",
            params![runbook, target],
        )?;
        if n > 0 {
            run_sql(
                &self.conn,
                "INSERT OR REPLACE INTO breaker_resets (runbook, target, ms) VALUES (?1, ?2, ?3)",
                params![runbook, target, ms],
            )?;
        }
        Ok(n > 0)
    }

    fn storm_held(&mut self, ms: i64) -> Result<(), StoreError> {
        run_sql(&self.conn, "DELETE FROM notices WHERE kind = 'storm'", [])?;
        run_sql(&self.conn, "INSERT INTO notices (kind, ms) VALUES ('storm', ?1)", params![ms])?;
        Ok(())
    }

    fn prune(&mut self, from: i64, limit: usize, before_ms: i64, storm_cutoff_ms: i64) -> Result<(Pruned, i64), StoreError> {
        // Executions are stored in time order, so the oldest are at the
        // lowest rowids: walk from where the last call stopped, stop at the
        // first one created after the cutoff. An old run still active is
        // stepped over (and looked at again on the next pass).
        let mut stmt = self
            .conn
            .prepare_cached("SELECT rowid, id, state, finished_ms, created_ms FROM executions WHERE rowid > ?1 ORDER BY rowid LIMIT ?2")?;
        let rows: Vec<(i64, String, String, Option<i64>, i64)> = stmt
            .query_map(params![from, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
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
                run_sql(&self.conn, "DELETE FROM steps WHERE execution_id = ?1", [id])?;
                run_sql(&self.conn, "DELETE FROM executions WHERE rowid = ?1", [rowid])?;
                pruned.ids.push(id.clone());
            }
        }
        pruned.more = rows.len() == limit && last == rows.last().map_or(from, |r| r.0);
        // Targets that stopped alerting matter to no storm any more.
        run_sql(
            &self.conn,
            "DELETE FROM target_alerts WHERE target IN (SELECT target FROM target_alerts INDEXED BY target_alerts_ms WHERE ms < ?1 LIMIT ?2)",
            params![storm_cutoff_ms, limit as i64],
        )?;
        Ok((pruned, last))
    }

    #[cfg(test)]
    fn raw(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch(sql)?)
    }

    fn watch_insert(&mut self, w: &Watch) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "INSERT INTO effect_watch (execution_id, runbook, target, fingerprint, starts_at, verify_ms, stays_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                w.execution_id,
                w.runbook,
                w.target,
                w.fingerprint,
                w.starts_at,
                w.verify_ms,
                w.stays_ms
            ],
        )?;
        Ok(())
    }

    fn watch_ended(&mut self, id: &str, ended_ms: Option<i64>) -> Result<(), StoreError> {
        match ended_ms {
            Some(ms) => run_sql(
                &self.conn,
                "UPDATE effect_watch SET ended_ms = ?2, \
                 due_ms = CASE WHEN resolved_ms IS NULL THEN ?2 + verify_ms ELSE resolved_ms + stays_ms END \
                 WHERE execution_id = ?1",
                params![id, ms],
            )?,
            None => run_sql(&self.conn, "DELETE FROM effect_watch WHERE execution_id = ?1", [id])?,
        };
        Ok(())
    }

    fn watch_episode(&mut self, fingerprint: &str, starts_at: &str) -> Result<Vec<Watch>, StoreError> {
        watches(
            &self.conn,
            &format!(
                "SELECT {WATCH_COLUMNS} FROM effect_watch INDEXED BY effect_episode \
                 WHERE fingerprint = ?1 AND starts_at = ?2 AND resolved_ms IS NULL"
            ),
            params![fingerprint, starts_at],
        )
    }

    fn watch_resolved(&mut self, runbook: &str, target: &str) -> Result<Vec<Watch>, StoreError> {
        watches(
            &self.conn,
            &format!(
                "SELECT {WATCH_COLUMNS} FROM effect_watch INDEXED BY effect_resolved \
                 WHERE runbook = ?1 AND target = ?2 AND resolved_ms IS NOT NULL"
            ),
            params![runbook, target],
        )
    }

    fn watch_set(&mut self, id: &str, resolved_ms: Option<i64>, due_ms: Option<i64>) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "UPDATE effect_watch SET resolved_ms = ?2, due_ms = ?3 WHERE execution_id = ?1",
            params![id, resolved_ms, due_ms],
        )?;
        Ok(())
    }

    fn watch_due(&mut self, runbook: Option<&str>, now_ms: i64, limit: usize) -> Result<Vec<Watch>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        match runbook {
            Some(rb) => watches(
                &self.conn,
                &format!(
                    "SELECT {WATCH_COLUMNS} FROM effect_watch INDEXED BY effect_due_by_runbook \
                     WHERE runbook = ?1 AND due_ms IS NOT NULL AND due_ms <= ?2 ORDER BY due_ms LIMIT ?3"
                ),
                params![rb, now_ms, limit],
            ),
            None => watches(
                &self.conn,
                &format!(
                    "SELECT {WATCH_COLUMNS} FROM effect_watch INDEXED BY effect_due \
                     WHERE due_ms IS NOT NULL AND due_ms <= ?1 ORDER BY due_ms LIMIT ?2"
                ),
                params![now_ms, limit],
            ),
        }
    }

    fn watch_judged(&mut self, w: &Watch, effective: bool) -> Result<(), StoreError> {
        run_sql(&self.conn, "DELETE FROM effect_watch WHERE execution_id = ?1", [&w.execution_id])?;
        run_sql(
            &self.conn,
            "INSERT INTO effectiveness (runbook, judged, effective, notified) VALUES (?1, 1, ?2, 0) \
             ON CONFLICT (runbook) DO UPDATE SET judged = judged + 1, effective = effective + excluded.effective",
            params![w.runbook, i64::from(effective)],
        )?;
        Ok(())
    }

    fn effect_notified(&mut self, runbook: &str, notified: bool) -> Result<(), StoreError> {
        run_sql(
            &self.conn,
            "INSERT INTO effectiveness (runbook, judged, effective, notified) VALUES (?1, 0, 0, ?2) \
             ON CONFLICT (runbook) DO UPDATE SET notified = excluded.notified",
            params![runbook, notified],
        )?;
        Ok(())
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        // Rewrites one row as it is, which takes a page in the WAL.
        run_sql(
            &self.conn,
            "UPDATE audit_names SET name = name WHERE id = (SELECT MIN(id) FROM audit_names)",
            [],
        )?;
        Ok(())
    }
}

impl Conn for SqliteConn {
    fn begin(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        // Names this group added are gone with it.
        self.names.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, kind};
    use crate::store::backend::Uncount;
    use crate::store::rules::{FirstWrite, FirstWritten, Txn};
    use crate::store::writer::{Job, job, job_after, run_group};
    use serde_json::json;

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
        let conn = open_connection(&path).unwrap();
        let admitted: Vec<(String, Option<i64>)> = {
            let mut stmt = conn.prepare("SELECT id, admitted_ms FROM executions ORDER BY id").unwrap();
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        };
        assert_eq!(
            admitted,
            vec![
                ("dry".to_string(), None),
                ("real".to_string(), Some(2)),
                ("waiting".to_string(), Some(3))
            ]
        );
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
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
            effectiveness: true,
            resolved_watch: true,
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

    /// Inhibition's lookup costs the same after 100,000 alerts fired and
    /// resolved and with 100,000 others firing under other names: resolves
    /// leave no rows behind, and a rule naming an alertname reads only the
    /// alerts of that name firing now (VM steps, as above, and the plan).
    #[test]
    fn inhibition_lookups_cost_the_same_after_100k_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut conn = SqliteConn::open(&path).unwrap();
        prepare_schema(&conn.conn).unwrap();
        let now_ms: i64 = 10_000_000_000;
        let since = now_ms - crate::inhibit::FIRING_EXPIRES.as_millis() as i64;
        let labels = r#"{"alertname":"DatabaseDown","cluster":"eu1"}"#;
        conn.firing_seen("db", "DatabaseDown", labels, now_ms - 60_000, None, now_ms - 60_000)
            .unwrap();
        let steps = |path: &Path| {
            let conn = open_connection(path).unwrap();
            let mut stmt = conn.prepare_cached(fact_sql::FIRING_NAMED).unwrap();
            let found: Vec<String> = stmt
                .query_map(params!["DatabaseDown", since, now_ms], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(found, ["db"]);
            stmt.get_status(rusqlite::StatementStatus::VmStep)
        };
        let fresh = steps(&path);

        // 100,000 alerts of that name fire and resolve, through the store's own writes.
        conn.conn.execute_batch("BEGIN").unwrap();
        for i in 0..100_000i64 {
            let fp = format!("h{i}");
            conn.firing_seen(&fp, "DatabaseDown", labels, i, None, now_ms - 3_600_000).unwrap();
            conn.firing_resolved(&fp, i).unwrap();
        }
        // And 100,000 others fire now under other names.
        conn.conn
            .execute_batch(&format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
                 INSERT INTO firing_alerts (fingerprint, alertname, labels, starts_ms, seen_ms)
                 SELECT printf('o%06d', i), printf('Other%d', i % 50), '{{}}', i, {now_ms} - i FROM n;
                 COMMIT;"
            ))
            .unwrap();
        let rows: i64 = conn
            .conn
            .query_row("SELECT COUNT(*) FROM firing_alerts WHERE alertname = 'DatabaseDown'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows, 1, "a resolve deletes its alert's row: no history stays behind");
        let after = steps(&path);
        eprintln!("VM steps per inhibition lookup: fresh {fresh}, after 100k resolved and 100k others firing {after}");
        assert!(after <= fresh + 5 && after < 60, "{after} VM steps vs {fresh} fresh");
        let detail: String = conn
            .conn
            .query_row(&format!("EXPLAIN QUERY PLAN {}", fact_sql::FIRING_NAMED), params!["x", 0, 0], |r| {
                r.get(3)
            })
            .unwrap();
        assert!(detail.starts_with("SEARCH firing_alerts USING INDEX firing_by_name"), "{detail}");
        // Alerts whose resolve never came are pruned once expired.
        conn.firing_forget(now_ms, 1_000_000).unwrap();
        let left: i64 = conn.conn.query_row("SELECT COUNT(*) FROM firing_alerts", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 0);
    }

    /// A state file of layout 2 gets the tables added since when opened.
    #[test]
    fn a_layout_2_state_file_gets_the_firing_alerts_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = open_connection(&path).unwrap();
        prepare_schema(&conn).unwrap();
        conn.execute_batch("DROP TABLE firing_alerts; PRAGMA user_version = 2;").unwrap();
        drop(conn);
        let conn = open_connection(&path).unwrap();
        prepare_schema(&conn).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, LAYOUT);
        conn.execute_batch("SELECT fingerprint, alertname, labels, starts_ms, ends_ms, seen_ms FROM firing_alerts")
            .unwrap();
    }

    /// A new state file is made in WAL mode with every table; one whose
    /// making was cut short (switched to WAL, no tables yet, as a crash
    /// before `create` synced it can leave it) is completed by the next start.
    #[test]
    fn a_new_state_file_is_complete_and_an_unfinished_one_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let made = StateFile::prepare(dir.path(), Durability::Durable).unwrap();
        let check = |path: &Path| {
            let conn = Connection::open(path).unwrap();
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!((mode.as_str(), version), ("wal", LAYOUT), "{}", path.display());
            conn.execute_batch("SELECT COUNT(*) FROM executions; SELECT COUNT(*) FROM audit")
                .unwrap();
        };
        check(&made.path);
        drop(made);
        // Reopened as an existing file, nothing is made again.
        check(&StateFile::prepare(dir.path(), Durability::Durable).unwrap().path);

        let cut_short = tempfile::tempdir().unwrap();
        let path = cut_short.path().join("state.db");
        Connection::open(&path).unwrap().execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
        check(&StateFile::prepare(cut_short.path(), Durability::Durable).unwrap().path);
    }

    /// Expanding an id prefix and asking whether a run started an action
    /// (when it ends) are searches of a primary key, whatever the history.
    #[test]
    fn id_prefixes_and_started_steps_are_index_searches() {
        let (_dir, mut conn) = fresh_file();
        conn.conn
            .execute_batch(
                "INSERT INTO executions (id, runbook, target, state, actor, params, dry_run, automated, risk, created_ms)
                 VALUES ('01kz9a', 'rb', 't', 'failed', 'a', '{}', 0, 1, 'low', 1), ('01kz9b', 'rb', 't', 'failed', 'a', '{}', 0, 1, 'low', 1),
                        ('01kz:x', 'rb', 't', 'failed', 'a', '{}', 0, 1, 'low', 1), ('01kza0', 'rb', 't', 'failed', 'a', '{}', 0, 1, 'low', 1),
                        ('01l000', 'rb', 't', 'failed', 'a', '{}', 0, 1, 'low', 1);
                 INSERT INTO steps (execution_id, phase, idx, attempt, name, action, idempotent, state, input, started_ms)
                 VALUES ('01kz9a', 'main', 0, 0, 'skipped', '', 1, 'skipped', 'null', 1),
                        ('01kz9b', 'main', 0, 0, 'ran', 'log', 1, 'failed', 'null', 1);",
            )
            .unwrap();
        assert_eq!(conn.ids_with_prefix("01kz9", 10).unwrap(), ["01kz9a", "01kz9b"]);
        assert_eq!(conn.ids_with_prefix("01kz9", 1).unwrap(), ["01kz9a"]);
        assert_eq!(conn.ids_with_prefix("01kz", 10).unwrap(), ["01kz9a", "01kz9b", "01kz:x", "01kza0"]);
        assert_eq!(conn.ids_with_prefix("zz", 10).unwrap(), Vec::<String>::new());
        // Ending a run uncounts it (`admitted_ms` cleared) only when none
        // of its steps started an action.
        conn.conn.execute_batch("UPDATE executions SET admitted_ms = 1").unwrap();
        for id in ["01kz9a", "01kz9b", "01kza0"] {
            let ending = Ending {
                state: State::Failed,
                reason: None,
                finished_ms: 2,
                uncount: Uncount::UnlessAnActionStarted,
                release_claim: true,
            };
            conn.end(id, ending).unwrap();
        }
        let admitted = |id: &str| -> Option<i64> {
            conn.conn
                .query_row("SELECT admitted_ms FROM executions WHERE id = ?1", [id], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(admitted("01kz9a"), None, "only a skipped step: uncounted");
        assert_eq!(admitted("01kz9b"), Some(1), "a step ran an action: still counts");
        assert_eq!(admitted("01kza0"), None, "no steps: uncounted");

        for sql in lookup_sql::ALL {
            let mut plan = conn.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = plan.raw_query();
            let mut details = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                details.push(row.get::<_, String>(3).unwrap());
            }
            let text = details.join("; ");
            assert!(!details.iter().any(|d| d.starts_with("SCAN")), "{sql}: plan scans: {text}");
            assert!(text.contains("SEARCH"), "{sql}: plan does not search an index: {text}");
            assert!(!text.contains("TEMP B-TREE"), "{sql}: plan sorts: {text}");
        }
    }

    /// A new `state.db` with this layout's tables, in a temporary folder
    /// kept as long as the returned guard.
    fn fresh_file() -> (tempfile::TempDir, SqliteConn) {
        let dir = tempfile::tempdir().unwrap();
        let conn = SqliteConn::open(&dir.path().join("state.db")).unwrap();
        conn.conn.execute_batch(SCHEMA).unwrap();
        (dir, conn)
    }

    /// Runs `jobs` as one group commit and answers them.
    fn commit_group(conn: &mut SqliteConn, jobs: Vec<Job>) {
        let health: SharedHealth = Arc::new(Mutex::new(Health::Writable));
        conn.begin().unwrap();
        run_group(conn, jobs, &Redactor::default(), &crate::clock::SystemClock, &health).answer(None);
    }

    /// Without savepoints, a job that fails after writing must take its whole
    /// group down with it (nothing half done is committed), while a job that
    /// fails before writing fails alone.
    #[tokio::test]
    async fn a_job_failing_half_way_rolls_back_its_group_and_one_failing_early_does_not() {
        let (dir, mut conn) = fresh_file();
        let path = dir.path().join("state.db");
        // Through the backend's own interface: each job adds one row.
        static ROWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let insert = |t: &mut Txn<'_>| {
            let n = ROWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.tx.target_alerting(&format!("t{n}"), 1)
        };
        let mut finish = |jobs: Vec<Job>| commit_group(&mut conn, jobs);
        let counted = || -> i64 {
            let conn = open_connection(&path).unwrap();
            conn.query_row("SELECT COUNT(*) FROM target_alerts", [], |r| r.get(0)).unwrap()
        };

        let (ok, ok_rx) = job(move |t| insert(t));
        let (early, early_rx) = job(|_t| Err::<(), _>(StoreError::Taken("x".into())));
        let (after, after_rx) = job(move |t| insert(t));
        finish(vec![ok, early, after]);
        assert!(ok_rx.await.unwrap().is_ok());
        assert!(matches!(early_rx.await.unwrap(), Err(StoreError::Taken(_))));
        assert!(after_rx.await.unwrap().is_ok());
        assert_eq!(counted(), 2);

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
        assert_eq!(counted(), 2, "nothing of the failed group was kept");

        // SQLite may roll the whole transaction back itself on SQLITE_FULL
        // or an I/O error, even for a statement that changed nothing: the
        // jobs before are gone, and the jobs after must not run, each
        // committing on its own outside the transaction.
        let (ok, ok_rx) = job(move |t| insert(t));
        let (full, full_rx) = job(|t| {
            t.tx.raw("ROLLBACK")?;
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
        assert_eq!(counted(), 2, "nothing of the rolled back group was kept, nothing after it ran");
    }

    /// A job's first write (a claim, made for the whole group before any
    /// job runs) is that job's own: the job failing after it takes the group
    /// down, so the claim is not kept, whatever the job wrote itself. A
    /// claim that found its run taken fails its job alone.
    #[tokio::test]
    async fn a_job_failing_after_its_claim_rolls_back_its_group() {
        let (dir, mut conn) = fresh_file();
        let path = dir.path().join("state.db");
        conn.conn
            .execute_batch(
                "INSERT INTO executions (id, runbook, target, state, actor, params, dry_run, automated, risk, created_ms) \
                 VALUES ('queued', 'rb', 't', 'queued', 'a', '{}', 0, 1, 'medium', 1), \
                        ('taken', 'rb', 't', 'running', 'a', '{}', 0, 1, 'medium', 1)",
            )
            .unwrap();
        let mut finish = |jobs: Vec<Job>| commit_group(&mut conn, jobs);
        let state = |id: &str| -> String {
            let conn = open_connection(&path).unwrap();
            conn.query_row("SELECT state FROM executions WHERE id = ?1", [id], |r| r.get(0))
                .unwrap()
        };
        let claim = |id: &str| {
            Some(FirstWrite::Claim {
                id: id.into(),
                worker: "w/1".into(),
                started_ms: 1,
            })
        };
        let insert = |t: &mut Txn<'_>, target: &str| t.tx.target_alerting(target, 1);

        let (taken, taken_rx) = job_after(claim("taken"), |_t, written| match written {
            Some(FirstWritten::Claimed(true)) => Ok(()),
            _ => Err(StoreError::Taken("taken".into())),
        });
        let (ok, ok_rx) = job(move |t| insert(t, "a"));
        finish(vec![taken, ok]);
        assert!(matches!(taken_rx.await.unwrap(), Err(StoreError::Taken(_))));
        assert!(ok_rx.await.unwrap().is_ok(), "a claim that found its run taken fails alone");

        let (ok, ok_rx) = job(move |t| insert(t, "b"));
        let (half, half_rx) = job_after(claim("queued"), |_t, written| {
            assert!(matches!(written, Some(FirstWritten::Claimed(true))));
            Err::<(), _>(StoreError::Corrupt("boom".into()))
        });
        finish(vec![ok, half]);
        assert!(matches!(ok_rx.await.unwrap(), Err(StoreError::RolledBack(why)) if why.contains("boom")));
        assert!(matches!(half_rx.await.unwrap(), Err(StoreError::Corrupt(_))));
        assert_eq!(state("queued"), "queued", "the claim of the failed job was not kept");
        let conn = open_connection(&path).unwrap();
        let targets: i64 = conn.query_row("SELECT COUNT(*) FROM target_alerts", [], |r| r.get(0)).unwrap();
        assert_eq!(targets, 1, "nothing else of the failed group was kept");
    }

    /// A refill may read a run while it is queued and hand it to a second
    /// worker after the first ran it: that worker's claim can ride in the
    /// same group as the first worker's end. The claim fails (the run is
    /// not queued); the end is made, not refused as a lost claim (which
    /// would hand a healthy run to recovery, to be recorded `unknown`).
    #[tokio::test]
    async fn a_stale_claim_in_the_group_of_the_runs_end_leaves_the_end_alone() {
        let (dir, mut conn) = fresh_file();
        let path = dir.path().join("state.db");
        conn.conn
            .execute_batch(
                "INSERT INTO executions (id, runbook, target, state, actor, params, dry_run, automated, risk, created_ms, claimed_by) \
                 VALUES ('run', 'rb', 't', 'running', 'a', '{}', 0, 1, 'medium', 1, 'w/1')",
            )
            .unwrap();
        let (stale, stale_rx) = job_after(
            Some(FirstWrite::Claim {
                id: "run".into(),
                worker: "w/2".into(),
                started_ms: 2,
            }),
            |_t, written| match written {
                Some(FirstWritten::Claimed(true)) => Ok(()),
                _ => Err(StoreError::Taken("run".into())),
            },
        );
        let end = FirstWrite::End {
            id: "run".into(),
            claim: Some("w/1".into()),
            state: State::Succeeded,
            reason: None,
            uncount: Uncount::No,
        };
        let (holder, holder_rx) = job_after(Some(end), |_t, written| match written {
            Some(FirstWritten::Ended(Some(_))) => Ok(()),
            _ => Err(StoreError::ClaimLost("run".into())),
        });
        commit_group(&mut conn, vec![stale, holder]);
        assert!(matches!(stale_rx.await.unwrap(), Err(StoreError::Taken(_))));
        assert!(holder_rx.await.unwrap().is_ok(), "the holder's end was refused");
        let conn = open_connection(&path).unwrap();
        let state: String = conn
            .query_row("SELECT state FROM executions WHERE id = 'run'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(state, "succeeded");
    }
}

#[cfg(test)]
mod report_tests {
    use super::*;

    /// A report over a store with 100,000 executions (and their alert and
    /// decision records) reads ranges on indexed times a row at a time;
    /// prints how long a 30-day and a 1-day report take (`cargo test
    /// --release report_over_100k -- --nocapture` for the number that
    /// matters).
    #[tokio::test(flavor = "multi_thread")]
    async fn report_over_100k_executions() {
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z").unwrap().to_utc();
        let clock = Arc::new(crate::clock::ManualClock::new(now));
        let store = SqliteStore::open(dir.path(), Redactor::new(Vec::<String>::new()), clock).unwrap();
        let (now_ms, day) = (now.timestamp_millis(), 86_400_000i64);
        // 100,000 executions over 60 days, one every 51.84s: a third
        // succeeded (with their alert record), some failed, most blocked by
        // a cooldown; every one with its alert and decision records.
        let conn = open_connection(store.path()).unwrap();
        conn.execute_batch(&format!(
            "BEGIN;
             INSERT OR IGNORE INTO audit_names (name) VALUES ('alert.received'), ('guardrail.decision'), ('alertmanager');
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO audit (seq, ts_us, kind, actor, data, hash)
             SELECT 2 * i - 1, ({start} + i * 51840) * 1000, (SELECT id FROM audit_names WHERE name = 'alert.received'),
                    (SELECT id FROM audit_names WHERE name = 'alertmanager'),
                    '{{\"status\":\"firing\",\"labels\":{{\"alertname\":\"Alert' || (i % 37) || '\"}}}}', zeroblob(32)
             FROM n
             UNION ALL
             SELECT 2 * i, ({start} + i * 51840) * 1000, (SELECT id FROM audit_names WHERE name = 'guardrail.decision'),
                    (SELECT id FROM audit_names WHERE name = 'alertmanager'),
                    CASE WHEN i % 3 = 2 THEN '{{\"verdict\":\"blocked\",\"decided_by\":\"cooldown\"}}' ELSE '{{\"verdict\":\"run\"}}' END,
                    zeroblob(32)
             FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO executions (id, runbook, target, state, actor, alert_seq, fingerprint, params, dry_run, automated, risk,
                                     created_ms, admitted_ms, finished_ms)
             SELECT printf('x%06d', i), 'rb' || (i % 20), 'host-' || (i % 500),
                    CASE i % 3 WHEN 0 THEN 'succeeded' WHEN 1 THEN CASE WHEN i % 10 = 1 THEN 'failed' ELSE 'succeeded' END ELSE 'blocked' END,
                    'alertmanager', 2 * i - 1, 'fp' || (i % 500), '{{}}', 0, 1, 'low',
                    {start} + i * 51840, {start} + i * 51840, {start} + i * 51840 + 30000 + (i % 600) * 1000
             FROM n;
             COMMIT;",
            start = now_ms - 60 * day,
        ))
        .unwrap();
        let set = crate::runbook::RunbookSet::new(vec![], Default::default(), crate::action::Registry::builtin());
        for days in [30, 1] {
            let since = now - chrono::Duration::days(days);
            let started = std::time::Instant::now();
            let r = crate::report::build(&store, &set, since, now, &[]).await.unwrap();
            let took = started.elapsed();
            println!(
                "report over {days}d of a store with 100000 executions: {:.1} ms",
                took.as_secs_f64() * 1000.0
            );
            let runs = &r.runs;
            let total = runs.succeeded + runs.failed + runs.blocked;
            // One execution every 51.84s: 50,000 in 30 days, 1,666 in one.
            assert_eq!(total, if days == 30 { 50_000 } else { 1_666 });
            assert_eq!(r.alerts_received, total);
            assert_eq!(r.blocked_by["cooldown"], runs.blocked);
            assert_eq!(r.runbooks.len(), 20);
            assert_eq!(r.offenders.targets.len(), crate::report::TOP_OFFENDERS);
            assert_eq!(r.offenders.alertnames.len(), crate::report::TOP_OFFENDERS);
            assert!(r.runbooks.iter().all(|l| l.time_to_fix_p50_s.is_some()));
            // Generous: a plan that loaded the whole history, or walked it
            // per row, would be far slower on the 1-day report.
            assert!(took < std::time::Duration::from_secs(if days == 30 { 20 } else { 2 }), "{took:?}");
        }
    }
}
