//! The PostgreSQL backend: any number of `serve` replicas on one database.
//!
//! How replicas stay one store:
//! - Every write transaction first takes one transaction-scoped advisory
//!   lock, the audit chain's ([`CHAIN_LOCK`]). The chain is one sequence
//!   across replicas, so its appends are serialised anyway; taking the lock
//!   first also serialises every decision, so limits, locks, the storm brake
//!   and dedupe hold across replicas exactly as on one node, and READ
//!   COMMITTED shows each transaction everything committed before it. Each
//!   replica still commits its writes in groups (`super::writer`), so one
//!   lock turn carries hundreds of alerts.
//! - A replica is named in claims by its replica id (`r-<ulid>/N`), with a
//!   lease in `replicas` that a heartbeat thread renews on the database's
//!   clock (never the replicas' own, which may disagree). A run whose
//!   claimer's lease expired is recovered by any replica, by the crash rule.
//! - Fencing: every write of a run checks its claim under the lock
//!   (`claim_held`; a run's end checks it in its own statement,
//!   `END_HELD`), so a replica back from a pause finds its claims gone and
//!   writes nothing.
//! - Background chores run on the holder of the `chores` lease.
//!
//! The driver is `tokio-postgres`, driven blocking from plain threads
//! (`super::pg_session`): the store's rules are synchronous code run by the
//! writer thread inside one transaction (`super::rules`), the same for
//! SQLite and PostgreSQL, so one implementation of them serves both. Each
//! connection runs its own small runtime and must not be used from the
//! async runtime's threads (not even `spawn_blocking`'s), so reads run on
//! reader threads of their own. The session pipelines what the lock makes
//! expensive: a write nothing reads the answer of goes out with the next
//! statement that needs one, the commit included.
//!
//! Plans: a statement is prepared once per connection, and PostgreSQL may
//! plan it once for any value (its generic plan). That is right only for a
//! search whose best plan cannot depend on the value: a key, or an insert.
//! A statement whose best plan does (most guardrail facts: a window's
//! count; a cutoff) is sent planned for its values every time
//! (`PgConn::query_planned`). Where a literal would let a generic plan take
//! the wrong index, the value is a parameter instead (`CLAIMS`).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::postgres::types::{ToSql, Type};
use ::postgres::{Client, NoTls, SimpleQueryMessage, Statement};

use super::backend::{
    AlertRow, AuditRow, ChainHead, Conn, Ending, NewExecution, Read, ReportRecord, ReportRun, StepKey, StepRow, StoredWithPrev, Tx, Victim,
    Watch, firing_from_row, prefix_end,
};
use super::pg_session::{Params, Session};
use super::rules::{Backend, Ledger, ReadJob, ts};
use super::writer::{SharedHealth, WriteQueue, write_loop};
use super::*;
use crate::audit;
use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::guard::{Facts, STORM_WINDOW, Windows};
use crate::redact::Redactor;

/// The advisory lock every write transaction takes first (see the module docs).
pub(super) const CHAIN_LOCK: i64 = 0x7069_7463_7265_7701; // "pitcrew" + 1
/// Held (session-scoped) while migrations run, so replicas starting
/// together migrate once.
const MIGRATE_LOCK: i64 = 0x7069_7463_7265_7702;

/// Migrations, in order; each runs once, in its own transaction, and is
/// recorded in `pitcrew_migrations`. Never edit one that shipped: add another.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
-- See the SQLite layout (store/sqlite.rs) for what each table is for; the
-- two keep the same rows. Times are milliseconds since the epoch.
CREATE TABLE alerts (id BYTEA PRIMARY KEY, received_seq BIGINT, decided_ms BIGINT);
CREATE TABLE executions (
    id TEXT PRIMARY KEY, runbook TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
    actor TEXT NOT NULL, alert_seq BIGINT, alert TEXT, fingerprint TEXT, params TEXT NOT NULL,
    dry_run BOOLEAN NOT NULL, automated BOOLEAN NOT NULL, risk TEXT NOT NULL, created_ms BIGINT NOT NULL,
    admitted_ms BIGINT, started_ms BIGINT, finished_ms BIGINT, approval_deadline_ms BIGINT,
    claimed_by TEXT, resume_error TEXT,
    -- Insertion order, as SQLite's rowid: the queue's tie-break and retention's walk.
    pos BIGSERIAL NOT NULL
);
CREATE INDEX executions_active ON executions (state, created_ms, pos) WHERE state IN ('queued', 'running', 'pending_approval');
-- The guardrail facts' indexes: only rows decisions look at (the store contract).
CREATE INDEX runs_by_target ON executions (runbook, target, admitted_ms) WHERE admitted_ms IS NOT NULL;
CREATE INDEX runs_by_runbook ON executions (runbook, admitted_ms) WHERE admitted_ms IS NOT NULL;
CREATE INDEX runs_automated ON executions (admitted_ms) WHERE admitted_ms IS NOT NULL AND automated;
CREATE INDEX active_by_target ON executions (runbook, target) WHERE state IN ('queued', 'running', 'pending_approval');
CREATE INDEX active_by_fingerprint ON executions (fingerprint) WHERE state IN ('queued', 'running', 'pending_approval');
CREATE INDEX executions_fingerprint ON executions (fingerprint);
CREATE INDEX executions_listed ON executions (created_ms DESC, id DESC);
CREATE INDEX executions_pos ON executions (pos);
CREATE TABLE steps (
    execution_id TEXT NOT NULL, phase TEXT NOT NULL, idx INTEGER NOT NULL, attempt INTEGER NOT NULL,
    name TEXT NOT NULL, action TEXT NOT NULL, idempotent BOOLEAN NOT NULL, state TEXT NOT NULL,
    input TEXT NOT NULL, output TEXT, error TEXT, started_ms BIGINT NOT NULL, finished_ms BIGINT,
    PRIMARY KEY (execution_id, phase, idx, attempt)
);
CREATE TABLE target_alerts (target TEXT PRIMARY KEY, ms BIGINT NOT NULL);
CREATE INDEX target_alerts_ms ON target_alerts (ms);
CREATE TABLE notices (kind TEXT PRIMARY KEY, ms BIGINT NOT NULL);
CREATE TABLE breakers (runbook TEXT NOT NULL, target TEXT NOT NULL, tripped_ms BIGINT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (runbook, target));
CREATE TABLE breaker_resets (runbook TEXT NOT NULL, target TEXT NOT NULL, ms BIGINT NOT NULL, PRIMARY KEY (runbook, target));
CREATE TABLE audit_names (id SERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);
-- `data` is TEXT, not JSONB: the hash covers its exact bytes.
CREATE TABLE audit (seq BIGINT PRIMARY KEY, ts_us BIGINT NOT NULL, kind INTEGER NOT NULL, actor INTEGER NOT NULL,
    execution_id TEXT, runbook TEXT, target TEXT, data TEXT NOT NULL, hash BYTEA NOT NULL);
CREATE INDEX audit_execution ON audit (execution_id) WHERE execution_id IS NOT NULL;
-- Records are in time order: a block range index finds a time range for a few pages.
CREATE INDEX audit_ts ON audit USING brin (ts_us);
-- Replicas and their leases (on the database's clock).
CREATE TABLE replicas (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), lease_until TIMESTAMPTZ NOT NULL);
-- Who runs the background chores, until when.
CREATE TABLE chores (id INTEGER PRIMARY KEY, holder TEXT NOT NULL, until TIMESTAMPTZ NOT NULL);
"#,
    ),
    (
        2,
        r#"
-- The replica whose intake queued a run and holds it in memory (see
-- `PgConn::queued_ids`); NULL: any replica's to take.
ALTER TABLE executions ADD COLUMN queued_by TEXT;
"#,
    ),
    (
        3,
        r#"
-- Effectiveness (see the SQLite layout): runs watched until judged, and
-- one counter row per runbook.
CREATE TABLE effect_watch (execution_id TEXT PRIMARY KEY, runbook TEXT NOT NULL, target TEXT NOT NULL,
    fingerprint TEXT NOT NULL, starts_at TEXT NOT NULL, verify_ms BIGINT NOT NULL, stays_ms BIGINT NOT NULL,
    ended_ms BIGINT, resolved_ms BIGINT, due_ms BIGINT);
CREATE INDEX effect_episode ON effect_watch (fingerprint, starts_at);
CREATE INDEX effect_resolved ON effect_watch (runbook, target) WHERE resolved_ms IS NOT NULL;
CREATE INDEX effect_due ON effect_watch (due_ms) WHERE due_ms IS NOT NULL;
CREATE INDEX effect_due_by_runbook ON effect_watch (runbook, due_ms) WHERE due_ms IS NOT NULL;
CREATE TABLE effectiveness (runbook TEXT PRIMARY KEY, judged INTEGER NOT NULL, effective INTEGER NOT NULL,
    notified BOOLEAN NOT NULL);
"#,
    ),
    (
        4,
        r#"
-- Alerts firing now, for `inhibit_while_firing` (see the SQLite layout).
CREATE TABLE firing_alerts (fingerprint TEXT PRIMARY KEY, alertname TEXT NOT NULL, labels TEXT NOT NULL,
    starts_ms BIGINT NOT NULL, ends_ms BIGINT, seen_ms BIGINT NOT NULL);
CREATE INDEX firing_by_name ON firing_alerts (alertname, seen_ms);
CREATE INDEX firing_seen ON firing_alerts (seen_ms);
"#,
    ),
];

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> StoreError {
        // The server's or the network's trouble, not the data's: connection
        // exceptions (08), insufficient resources (53), operator intervention
        // (57: shutdown, crash), system errors (58), or no answer at all.
        let disk = e.is_closed()
            || match e.code() {
                Some(code) => ["08", "53", "57", "58"].iter().any(|class| code.code().starts_with(class)),
                None => e.as_db_error().is_none(),
            };
        StoreError::Database {
            message: crate::diag::chain(&e),
            disk,
        }
    }
}

/// How to reach the database.
#[derive(Clone)]
struct Target {
    config: tokio_postgres::Config,
    /// For messages: the URL (it holds no password).
    url: String,
    /// This replica's id, when it joined as one.
    replica: Option<Arc<str>>,
}

impl Target {
    fn new(store: &StoreConfig) -> Result<Target, StoreError> {
        let mut config: tokio_postgres::Config = store.url.parse().map_err(|e: ::postgres::Error| StoreError::Database {
            message: format!("store.url: {e}"),
            disk: false,
        })?;
        if let Some(password) = &store.password {
            config.password(password);
        }
        // A dead peer is noticed in seconds, not after the system's TCP defaults (hours).
        config
            .application_name("pitcrew")
            .connect_timeout(Duration::from_secs(5))
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        Ok(Target {
            config,
            url: store.url.clone(),
            replica: None,
        })
    }

    /// A plain blocking client (migrations, copies, one-off work).
    fn connect(&self) -> Result<Client, StoreError> {
        let mut client = ::postgres::Config::from(self.config.clone())
            .connect(NoTls)
            .map_err(|e| self.cannot_connect(e.into()))?;
        client.batch_execute(SESSION_SETTINGS)?;
        Ok(client)
    }

    /// A connection for the store's own threads (see `pg_session`).
    fn session(&self) -> Result<Session, StoreError> {
        let mut session = Session::connect(&self.config).map_err(|e| self.cannot_connect(e))?;
        session.batch_execute(SESSION_SETTINGS)?;
        Ok(session)
    }

    /// Names the database in a failed connection's error.
    fn cannot_connect(&self, mut err: StoreError) -> StoreError {
        if let StoreError::Database { message, .. } = &mut err {
            *message = format!("cannot connect to {}: {message}", self.url);
        }
        err
    }
}

/// Every connection's settings. A statement stuck behind a lock is an
/// outage to report, not to wait out. A session paused inside a
/// transaction (its process stopped, its network gone) would hold the chain
/// lock, and every replica's writes with it: the server ends it instead,
/// and its group, never acknowledged, is rolled back.
const SESSION_SETTINGS: &str = "SET statement_timeout = '30s'; SET lock_timeout = '30s'; SET client_min_messages = warning; \
     SET idle_in_transaction_session_timeout = '5s'";

impl Target {}

/// A connection, reconnected when the server went away; statements are
/// prepared once per connection.
pub struct PgConn {
    target: Target,
    client: Option<Session>,
    statements: HashMap<&'static str, Statement>,
    names: HashMap<String, i32>,
    /// Rows changed since this connection was made (see [`Tx::changes`]).
    changed: u64,
    /// A statement failed inside the open transaction: PostgreSQL refuses
    /// every later statement in it.
    failed_in_tx: bool,
    in_tx: bool,
    /// Audit records appended in this transaction, not yet sent.
    unwritten: Unwritten,
    /// The chain's head as read by `begin`, right after the chain lock was
    /// taken, for the transaction's first append (`Tx::chain_head`).
    head_at_begin: Option<Option<ChainHead>>,
    /// The writer's: whether this replica's own lease has been renewed
    /// steadily for a whole lease (see `Replica::renewing_since`). Until
    /// then it takes no run from another replica on the word of a lease.
    trusts_leases: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Audit rows as columns, for one `INSERT … SELECT FROM unnest(…)`.
#[derive(Default)]
struct Unwritten {
    seq: Vec<i64>,
    ts_us: Vec<i64>,
    kind: Vec<i32>,
    actor: Vec<i32>,
    execution_id: Vec<Option<String>>,
    runbook: Vec<Option<String>>,
    target: Vec<Option<String>>,
    data: Vec<String>,
    hash: Vec<Vec<u8>>,
}

impl Drop for PgConn {
    /// Closing a connection blocks on the client's own runtime, which may
    /// not happen on an async runtime's thread (a store dropped there):
    /// such a close is left to a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(client));
        }
    }
}

impl PgConn {
    fn new(target: Target) -> PgConn {
        PgConn {
            target,
            client: None,
            statements: HashMap::new(),
            names: HashMap::new(),
            changed: 0,
            failed_in_tx: false,
            in_tx: false,
            unwritten: Unwritten::default(),
            head_at_begin: None,
            trusts_leases: None,
        }
    }

    /// The client, connecting first if there is none (or it broke).
    fn client(&mut self) -> Result<&mut Session, StoreError> {
        if self.client.as_ref().is_none_or(Session::is_closed) {
            self.statements.clear();
            self.names.clear();
            self.client = Some(self.target.session()?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client()?.prepare(sql);
        let s = self.track(prepared)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// Notes a failed statement inside a transaction: it is aborted.
    fn track<T>(&mut self, r: Result<T, ::postgres::Error>) -> Result<T, StoreError> {
        r.map_err(|e| {
            if self.in_tx {
                self.failed_in_tx = true;
            }
            StoreError::from(e)
        })
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        let r = self.client()?.execute(&s, params);
        let n = self.track(r)?;
        self.changed += n;
        Ok(n)
    }

    fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<::postgres::Row>, StoreError> {
        self.again_if_closed(|conn| {
            let s = conn.statement(sql)?;
            let r = conn.client()?.query(&s, params);
            conn.track(r)
        })
    }

    fn query_opt(&mut self, sql: &'static str, params: Params<'_>) -> Result<Option<::postgres::Row>, StoreError> {
        self.again_if_closed(|conn| {
            let s = conn.statement(sql)?;
            let r = conn.client()?.query_opt(&s, params);
            conn.track(r)
        })
    }

    /// Outside a transaction, a query that failed because its connection
    /// had been closed (the server restarted while the connection sat idle
    /// in its thread) goes once more, on a new connection: every such query
    /// is a read, or a lease's upsert that may run twice, and without this
    /// each idle connection's first use after a restart fails.
    fn again_if_closed<T>(&mut self, mut f: impl FnMut(&mut PgConn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match f(self) {
            Err(StoreError::Database { .. }) if !self.in_tx && self.client.as_ref().is_some_and(Session::is_closed) => f(self),
            result => result,
        }
    }

    /// A write whose answer nothing reads: sent with the transaction's next
    /// round trip (see `pg_session`; the commit is one), and counted as a
    /// change now. Outside a transaction nothing would send it: it runs now.
    fn defer(&mut self, sql: &'static str, params: Params<'_>) -> Result<(), StoreError> {
        if !self.in_tx {
            return self.execute(sql, params).map(drop);
        }
        let s = self.statement(sql)?;
        self.client()?.defer(&s, params)?;
        self.changed += 1;
        Ok(())
    }

    /// Writes the audit records appended since the last write, in one
    /// statement, sent with the next round trip.
    fn write_audit(&mut self) -> Result<(), StoreError> {
        if self.unwritten.seq.is_empty() {
            return Ok(());
        }
        let r = std::mem::take(&mut self.unwritten);
        self.defer(
            "INSERT INTO audit (seq, ts_us, kind, actor, execution_id, runbook, target, data, hash) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $4::integer[], $5::text[], $6::text[], \
             $7::text[], $8::text[], $9::bytea[])",
            &[
                &r.seq,
                &r.ts_us,
                &r.kind,
                &r.actor,
                &r.execution_id,
                &r.runbook,
                &r.target,
                &r.data,
                &r.hash,
            ],
        )?;
        Ok(())
    }

    /// A query planned for the values it is sent with, every time: sent as
    /// an unnamed statement with its parameters' types, parsed, planned and
    /// run in one round trip. For the reads whose best plan depends on the
    /// value: a plan made once without them (PostgreSQL's generic plan,
    /// which a prepared statement switches to on its own after five runs)
    /// cannot tell a hot target from a fresh one. Measured, the facts query
    /// for a new target then walked every run of the runbook
    /// (`runs_by_runbook`, 102 pages after 100,000 executions, against 10
    /// planned for the value): the cost the store contract rules out.
    /// Every other statement is prepared once and may go generic: planning
    /// them all for their values took more of the server's time than
    /// running them (pg_stat_statements on the two-replica bench).
    fn query_planned(&mut self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<::postgres::Row>, StoreError> {
        self.again_if_closed(|conn| {
            let r = conn.client()?.query_typed(sql, params);
            conn.track(r)
        })
    }

    /// A write planned for its values (see `query_planned`), counted as a change.
    fn execute_planned(&mut self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<(), StoreError> {
        self.query_planned(sql, params)?;
        self.changed += 1;
        Ok(())
    }

    /// A statement built at run time (filters): not cached.
    fn query_dynamic(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<::postgres::Row>, StoreError> {
        self.again_if_closed(|conn| {
            let r = conn.client()?.query_text(sql, params);
            conn.track(r)
        })
    }

    fn name_id(&mut self, name: &str) -> Result<i32, StoreError> {
        if let Some(id) = self.names.get(name) {
            return Ok(*id);
        }
        // Under the chain lock: no other writer adds names meanwhile.
        self.defer("INSERT INTO audit_names (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", &[&name])?;
        let row = self.query_opt("SELECT id FROM audit_names WHERE name = $1", &[&name])?;
        let id: i32 = row
            .ok_or_else(|| StoreError::Corrupt(format!("audit name {name} vanished")))?
            .get(0);
        self.names.insert(name.to_string(), id);
        Ok(id)
    }
}

/// An execution's columns as [`execution_from_row`] reads them. A blocked
/// run's reason is read from its decision record, where it is stored.
const EXECUTION_COLUMNS: &str = "e.id, e.runbook, e.target, e.state, \
     COALESCE(e.reason, CASE WHEN e.state = 'blocked' THEN (SELECT (r.data::jsonb ->> 'decided_by') || ': ' || \
         (r.data::jsonb ->> 'reason') FROM audit r WHERE r.execution_id = e.id \
         AND r.kind = (SELECT id FROM audit_names WHERE name = 'guardrail.decision') LIMIT 1) END), \
     e.actor, \
     COALESCE(e.alert, (SELECT r.data FROM audit r WHERE r.seq = e.alert_seq)), e.params, e.dry_run, e.automated, e.risk, \
     e.created_ms, e.started_ms, e.finished_ms, e.approval_deadline_ms, e.resume_error, e.claimed_by";

/// One execution by id: the statement as a `'static` text, prepared once per connection.
static EXECUTION_BY_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {EXECUTION_COLUMNS} FROM executions e WHERE e.id = $1"));

fn execution_from_row(r: &::postgres::Row) -> Execution {
    let state: String = r.get(3);
    let alert: Option<String> = r.get(6);
    let params: String = r.get(7);
    let risk: String = r.get(10);
    Execution {
        id: r.get(0),
        runbook: r.get(1),
        target: r.get(2),
        state: State::parse(&state).unwrap_or(State::Unknown),
        reason: r.get(4),
        actor: r.get(5),
        alert: alert.and_then(|a| serde_json::from_str(&a).ok()),
        params: serde_json::from_str(&params).unwrap_or_default(),
        dry_run: r.get(8),
        automated: r.get(9),
        risk: risk.parse().unwrap_or(crate::runbook::Risk::High),
        created_at: ts(r.get(11)),
        started_at: r.get::<_, Option<i64>>(12).map(ts),
        finished_at: r.get::<_, Option<i64>>(13).map(ts),
        approval_deadline: r.get::<_, Option<i64>>(14).map(ts),
        resume_error: r.get(15),
        claimed_by: r.get(16),
        steps: Vec::new(),
    }
}

fn step_from_row(r: &::postgres::Row) -> StepRecord {
    let phase: String = r.get(0);
    let state: String = r.get(6);
    let input: String = r.get(7);
    let output: Option<String> = r.get(8);
    StepRecord {
        phase: Phase::parse(&phase),
        index: r.get::<_, i32>(1) as u32,
        name: r.get(2),
        action: r.get(3),
        attempt: r.get::<_, i32>(4) as u32,
        idempotent: r.get(5),
        state: StepState::parse(&state),
        input: serde_json::from_str(&input).unwrap_or(Value::Null),
        output: output.and_then(|o| serde_json::from_str(&o).ok()),
        error: r.get(9),
        started_at: ts(r.get(10)),
        finished_at: r.get::<_, Option<i64>>(11).map(ts),
    }
}

const AUDIT_SELECT: &str = "SELECT a.seq, a.ts_us, COALESCE(k.name, ''), COALESCE(n.name, ''), a.execution_id, a.runbook, a.target, \
     a.data, a.hash, (SELECT p.hash FROM audit p WHERE p.seq = a.seq - 1) \
     FROM audit a LEFT JOIN audit_names k ON k.id = a.kind LEFT JOIN audit_names n ON n.id = a.actor WHERE true";

fn stored_from_row(r: &::postgres::Row) -> audit::Stored {
    audit::Stored {
        seq: r.get::<_, i64>(0) as u64,
        ts_us: r.get(1),
        kind: r.get(2),
        actor: r.get(3),
        execution_id: r.get(4),
        runbook: r.get(5),
        target: r.get(6),
        data: r.get(7),
        hash: r.get(8),
    }
}

/// The parts of the facts query, one per fact, in [`Facts`] order. `{rb}`,
/// `{t}` and `{w}` (the part's cutoff) become parameters. Each part is an
/// index search over the rows decisions look at, as on SQLite.
///
/// The active count hides its values from the planner (`(SELECT {rb})`):
/// its best plan is the same for any target, and the values mislead it.
/// On a target with a long history and a backlog queued elsewhere, the
/// planner multiplied "most rows are this target's" by "a tenth of rows
/// are active" and walked every active run of every target (153 pages,
/// against 3): it cannot know that the target's runs all ended.
const FACT_PARTS: [(&str, &str); 8] = [
    (
        "last_run",
        "(SELECT admitted_ms FROM executions WHERE runbook = {rb} AND target = {t} AND admitted_ms IS NOT NULL \
         ORDER BY admitted_ms DESC LIMIT 1)",
    ),
    (
        "target_runs",
        "(SELECT COUNT(*) FROM executions WHERE runbook = {rb} AND target = {t} AND admitted_ms IS NOT NULL AND admitted_ms > {w})",
    ),
    (
        "runbook_runs",
        "(SELECT COUNT(*) FROM executions WHERE runbook = {rb} AND admitted_ms IS NOT NULL AND admitted_ms > {w})",
    ),
    (
        "global_runs",
        "(SELECT COUNT(*) FROM executions WHERE automated AND admitted_ms IS NOT NULL AND admitted_ms > {w})",
    ),
    (
        "active",
        "(SELECT COUNT(*) FROM executions WHERE runbook = (SELECT {rb}) AND target = (SELECT {t}) \
         AND state IN ('queued', 'running', 'pending_approval'))",
    ),
    (
        "storm",
        "(SELECT COUNT(*) FROM (SELECT 1 FROM target_alerts WHERE ms > {w} LIMIT {limit}) s), \
         EXISTS (SELECT 1 FROM notices WHERE kind = 'storm' AND ms > {w})",
    ),
    (
        "escalation",
        "EXISTS (SELECT 1 FROM breakers WHERE runbook = {rb} AND target = {t}), \
         (SELECT COUNT(*) FROM executions WHERE runbook = {rb} AND target = {t} AND admitted_ms IS NOT NULL AND admitted_ms > \
         GREATEST({w}, COALESCE((SELECT ms FROM breaker_resets WHERE runbook = {rb} AND target = {t}), {w})))",
    ),
    (
        "resolved_watch",
        "EXISTS (SELECT 1 FROM effect_watch WHERE runbook = {rb} AND target = {t} AND resolved_ms IS NOT NULL)",
    ),
];

/// The facts query with the parts `used` (bit i: `FACT_PARTS[i]`) and the
/// names of its parameters in order: one round trip per decision, asking
/// only what the runbook's guardrails look at. Each decision is planned for
/// its values (see `PgConn::query_planned`), and a query of two parts
/// plans in a fraction of the time of all eight. At most 256 texts, made
/// once each.
pub fn facts_sql(used: u8) -> (&'static str, &'static [&'static str]) {
    type Made = HashMap<u8, (&'static str, &'static [&'static str])>;
    static MADE: std::sync::OnceLock<Mutex<Made>> = std::sync::OnceLock::new();
    let mut made = MADE.get_or_init(Mutex::default).lock().expect("facts sql lock");
    *made.entry(used).or_insert_with(|| {
        let mut params: Vec<&'static str> = Vec::new();
        let mut parts = Vec::new();
        for (i, (name, sql)) in FACT_PARTS.iter().enumerate() {
            if used & (1 << i) == 0 {
                continue;
            }
            let mut sql = sql.to_string();
            for (token, param) in [("{rb}", "runbook"), ("{t}", "target"), ("{w}", *name), ("{limit}", "storm_limit")] {
                if sql.contains(token) {
                    let n = match params.iter().position(|p| *p == param) {
                        Some(n) => n + 1,
                        None => {
                            params.push(param);
                            params.len()
                        }
                    };
                    sql = sql.replace(token, &format!("${n}"));
                }
            }
            parts.push(sql);
        }
        let text: &'static str = Box::leak(format!("SELECT {}", parts.join(", ")).into_boxed_str());
        (text, Box::leak(params.into_boxed_slice()))
    })
}

/// Alerts named $1 firing now (seen since $2, not ended at $3): the
/// `firing_by_name` index, over what fires now only.
pub const FIRING_NAMED: &str =
    "SELECT fingerprint, labels FROM firing_alerts WHERE alertname = $1 AND seen_ms > $2 AND (ends_ms IS NULL OR ends_ms > $3)";
/// Every alert firing now, for a rule without an alertname.
pub const FIRING_ALL: &str = "SELECT fingerprint, labels FROM firing_alerts WHERE seen_ms > $1 AND (ends_ms IS NULL OR ends_ms > $2)";

/// The parts whose best plan is the same for any value: searches of one
/// runbook and target's own index entries (`active_by_target`,
/// `effect_resolved`). A query of only these is prepared once and may go
/// generic; planning it for its values took fifteen times as long as
/// running it (pg_stat_statements, two-replica bench). A window's count, a
/// runbook's last run or the storm's targets are planned for their values
/// (see `PgConn::query_planned`).
pub const GENERIC_FACTS: u8 = 1 << 4 | 1 << 7;

/// Queued → running, for each run (`$1`) under its worker (`$2`) while the
/// worker's replica's lease runs; returns the ids claimed. The state is a
/// parameter (`$4`, `queued`), not text: a plan made once for any value
/// (the generic plan, which a prepared statement may switch to) could
/// search the queue's partial index, whose predicate `state = 'queued'`
/// would match, instead of the primary key: measured ten times slower per
/// claim with a backlog queued. With a parameter that index cannot serve,
/// and the claims need no planning per call.
pub const CLAIMS: &str = "UPDATE executions e SET state = 'running', claimed_by = c.worker, \
     started_ms = COALESCE(e.started_ms, c.started_ms) \
     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c (id, worker, started_ms) \
     WHERE e.id = c.id AND e.state = $4 AND EXISTS (SELECT 1 FROM replicas p \
     WHERE p.id = split_part(c.worker, '/', 1) AND p.lease_until >= clock_timestamp()) RETURNING e.id";

/// Ends each run (`$1`) still running under its claim (`$2`, whose
/// replica's lease runs: fencing, as `claim_held`); returns the ids ended
/// and whether each still counts. `$6` is an `Uncount`; whether a step
/// started an action is a search on the steps' primary key prefix.
pub const END_HELD: &str = "UPDATE executions e SET state = c.state, reason = c.reason, finished_ms = c.finished_ms, \
     admitted_ms = CASE WHEN c.uncount = 'yes' OR (c.uncount = 'unless_started' AND NOT EXISTS \
     (SELECT 1 FROM steps s WHERE s.execution_id = e.id AND s.action <> '')) THEN NULL ELSE e.admitted_ms END, \
     claimed_by = CASE WHEN c.release THEN NULL ELSE e.claimed_by END \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::boolean[]) \
     AS c (id, claim, state, reason, finished_ms, uncount, release) \
     WHERE e.id = c.id AND e.state = 'running' AND e.claimed_by = c.claim AND EXISTS (SELECT 1 FROM replicas p \
     WHERE p.id = split_part(c.claim, '/', 1) AND p.lease_until >= clock_timestamp()) \
     RETURNING e.id, e.admitted_ms IS NOT NULL";

/// Every part: what a runbook using every guardrail asks (for tests).
pub const ALL_FACTS: u8 = 0b1111_1111;

fn watch_from_row(r: &::postgres::Row) -> Watch {
    Watch {
        execution_id: r.get(0),
        runbook: r.get(1),
        target: r.get(2),
        fingerprint: r.get(3),
        starts_at: r.get(4),
        verify_ms: r.get(5),
        stays_ms: r.get(6),
        ended_ms: r.get(7),
        resolved_ms: r.get(8),
    }
}

impl PgConn {
    /// A report's read, streamed a row at a time (the range may be large).
    fn stream(
        &mut self,
        sql: &'static str,
        params: &[i64],
        visit: &mut dyn FnMut(&::postgres::Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let statement = self.statement(sql)?;
        self.client()?
            .for_each_row(&statement, params, &mut |row| visit(row).map(|()| true))
    }
}

impl Read for PgConn {
    fn facts(&mut self, runbook: &str, target: &str, w: Windows, now_ms: i64) -> Result<Facts, StoreError> {
        let storm_since = now_ms - STORM_WINDOW.as_millis() as i64;
        let storm_limit = w.storm_brake.map_or(0, |l| i64::from(l) + 1);
        let uses = [
            w.cooldown,
            w.target_ms != 0,
            w.runbook_ms != 0,
            w.global_ms != 0,
            true,
            w.storm_brake.is_some(),
            w.escalation_ms != 0,
            w.resolved_watch,
        ];
        let used = uses.iter().enumerate().fold(0u8, |m, (i, on)| if *on { m | (1 << i) } else { m });
        let (sql, names) = facts_sql(used);
        let values: Vec<Box<dyn ToSql + Sync>> = names
            .iter()
            .map(|name| -> Box<dyn ToSql + Sync> {
                match *name {
                    "runbook" => Box::new(runbook.to_string()),
                    "target" => Box::new(target.to_string()),
                    "storm_limit" => Box::new(storm_limit),
                    "target_runs" => Box::new(now_ms - w.target_ms),
                    "runbook_runs" => Box::new(now_ms - w.runbook_ms),
                    "global_runs" => Box::new(now_ms - w.global_ms),
                    "storm" => Box::new(storm_since),
                    _ => Box::new(now_ms - w.escalation_ms),
                }
            })
            .collect();
        let params: Vec<(&(dyn ToSql + Sync), Type)> = values
            .iter()
            .zip(names.iter())
            .map(|(v, name)| {
                let ty = if matches!(*name, "runbook" | "target") {
                    Type::TEXT
                } else {
                    Type::INT8
                };
                (v.as_ref(), ty)
            })
            .collect();
        let rows = if used & !GENERIC_FACTS == 0 {
            let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
            self.query(sql, &values)?
        } else {
            self.query_planned(sql, &params)?
        };
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("facts query returned no row".into()))?;
        // The columns of the parts asked, in order.
        let mut column = 0usize;
        let mut next = || {
            column += 1;
            column - 1
        };
        let mut facts = Facts::default();
        if w.cooldown {
            facts.last_admitted_ms = row.get(next());
        }
        let count = |i: usize| row.get::<_, i64>(i) as u32;
        if w.target_ms != 0 {
            facts.target_runs = count(next());
        }
        if w.runbook_ms != 0 {
            facts.runbook_runs = count(next());
        }
        if w.global_ms != 0 {
            facts.global_runs = count(next());
        }
        facts.active_on_target = count(next());
        if w.storm_brake.is_some() {
            facts.storm_targets = count(next());
            facts.storm_notified = row.get::<_, bool>(next());
        }
        if w.escalation_ms != 0 {
            facts.breaker_tripped = row.get::<_, bool>(next());
            facts.escalation_runs = count(next());
        }
        if w.resolved_watch {
            facts.resolved_watch = row.get::<_, bool>(next());
        }
        Ok(facts)
    }

    fn execution(&mut self, id: &str) -> Result<Option<Execution>, StoreError> {
        // It reads its alert and reason from the audit.
        self.write_audit()?;
        let Some(row) = self.query_opt(EXECUTION_BY_ID.as_str(), &[&id])? else {
            return Ok(None);
        };
        let mut exec = execution_from_row(&row);
        exec.steps = self
            .query(
                "SELECT phase, idx, name, action, attempt, idempotent, state, input, output, error, started_ms, finished_ms \
                 FROM steps WHERE execution_id = $1 ORDER BY started_ms, phase, idx, attempt",
                &[&id],
            )?
            .iter()
            .map(step_from_row)
            .collect();
        Ok(Some(exec))
    }

    fn alert_row(&mut self, id: &[u8; 16]) -> Result<Option<AlertRow>, StoreError> {
        let id = &id[..];
        Ok(self
            .query_opt("SELECT received_seq, decided_ms FROM alerts WHERE id = $1", &[&id])?
            .map(|r| (r.get::<_, Option<i64>>(0).map(|s| s as u64), r.get(1))))
    }

    /// The oldest queued runs this replica may take: not those another live
    /// replica's intake queued, which that replica holds in memory and runs
    /// at once. Taking them too (workers refill whenever their memory runs
    /// empty) had two replicas claim every run of the other: measured, 1.99
    /// claims per run under load, half of them failing inside the chain
    /// lock, each after reading the run back. Runs queued by a replica whose
    /// lease ran out, approved, recovered or handed back (`queued_by` NULL)
    /// are anyone's.
    fn queued_ids(&mut self, at_most: usize) -> Result<Vec<String>, StoreError> {
        let at_most = at_most.min(i64::MAX as usize) as i64;
        let me = self.target.replica.as_deref().map(String::from);
        Ok(self
            .query(
                "SELECT e.id FROM executions e WHERE e.state = 'queued' AND (e.queued_by IS NULL \
                 OR e.queued_by = $2 OR NOT EXISTS (SELECT 1 FROM replicas p \
                 WHERE p.id = e.queued_by AND p.lease_until >= clock_timestamp())) \
                 ORDER BY e.created_ms, e.pos LIMIT $1",
                &[&at_most, &me],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn executions(&mut self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        let mut sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions e WHERE true");
        let mut args: Vec<String> = Vec::new();
        let mut arg = |sql: &mut String, value: String, clause: &str| {
            args.push(value);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(s) = filter.state {
            arg(&mut sql, s.as_str().to_string(), " AND e.state = ?");
        }
        if let Some(r) = &filter.runbook {
            arg(&mut sql, r.clone(), " AND e.runbook = ?");
        }
        if let Some(f) = &filter.fingerprint {
            arg(&mut sql, f.clone(), " AND e.fingerprint = ?");
        }
        if let Some(after) = &filter.after {
            // Keyset paging in list order; an unknown id matches nothing.
            arg(
                &mut sql,
                after.clone(),
                " AND (e.created_ms, e.id) < (SELECT p.created_ms, p.id FROM executions p WHERE p.id = ?)",
            );
        }
        let limit = if filter.limit == 0 { 1000 } else { filter.limit };
        sql.push_str(&format!(" ORDER BY e.created_ms DESC, e.id DESC LIMIT {limit}"));
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        Ok(self.query_dynamic(&sql, &params)?.iter().map(execution_from_row).collect())
    }

    fn audit(&mut self, filter: &AuditFilter) -> Result<Vec<StoredWithPrev>, StoreError> {
        let mut sql = AUDIT_SELECT.to_string();
        let mut args: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let mut arg = |sql: &mut String, value: Box<dyn ToSql + Sync>, clause: &str| {
            args.push(value);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(since) = filter.since {
            arg(&mut sql, Box::new(since.timestamp_micros()), " AND a.ts_us >= ?");
        }
        if let Some(until) = filter.until {
            arg(&mut sql, Box::new(until.timestamp_micros()), " AND a.ts_us <= ?");
        }
        if let Some(e) = &filter.execution {
            arg(&mut sql, Box::new(e.clone()), " AND a.execution_id = ?");
        }
        if let Some(fp) = &filter.fingerprint {
            arg(
                &mut sql,
                Box::new(fp.clone()),
                " AND (a.execution_id IN (SELECT id FROM executions WHERE fingerprint = ?) \
                 OR (k.name LIKE 'alert.%' AND a.data::jsonb ->> 'fingerprint' = ?))",
            );
        }
        if let Some(after) = filter.after_seq {
            arg(&mut sql, Box::new(after.min(i64::MAX as u64) as i64), " AND a.seq > ?");
        }
        sql.push_str(" ORDER BY a.seq");
        if let Some(limit) = filter.limit {
            arg(&mut sql, Box::new(limit.min(i64::MAX as usize) as i64), " LIMIT ?");
        }
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref()).collect();
        Ok(self
            .query_dynamic(&sql, &params)?
            .iter()
            .map(|r| (stored_from_row(r), r.get(9)))
            .collect())
    }

    fn audit_walk(&mut self, visit: &mut dyn FnMut(audit::Stored) -> bool) -> Result<(), StoreError> {
        // Streamed a row at a time: the whole log never sits in memory.
        let sql = "SELECT a.seq, a.ts_us, COALESCE(k.name, ''), COALESCE(n.name, ''), a.execution_id, a.runbook, a.target, \
             a.data, a.hash FROM audit a LEFT JOIN audit_names k ON k.id = a.kind LEFT JOIN audit_names n ON n.id = a.actor \
             ORDER BY a.seq";
        let client = self.client()?;
        // However long the log: the walk is one statement, and the reader
        // holds it up while it hashes.
        client.batch_execute("SET statement_timeout = 0")?;
        let walked = client.for_each_row(sql, &[], &mut |row| Ok(visit(stored_from_row(row))));
        let restored = client.batch_execute("SET statement_timeout = '30s'");
        walked?;
        Ok(restored?)
    }

    fn breakers(&mut self) -> Result<Vec<Breaker>, StoreError> {
        Ok(self
            .query("SELECT runbook, target, tripped_ms, reason FROM breakers ORDER BY tripped_ms", &[])?
            .iter()
            .map(|r| Breaker {
                runbook: r.get(0),
                target: r.get(1),
                tripped_at: ts(r.get(2)),
                reason: r.get(3),
            })
            .collect())
    }

    fn recent_runs(&mut self, runbook: &str, since_ms: i64, limit: usize) -> Result<Vec<(String, i64)>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        Ok(self
            .query(
                "SELECT target, MAX(admitted_ms) AS ms FROM executions \
                 WHERE runbook = $1 AND admitted_ms > $2 GROUP BY target ORDER BY ms DESC LIMIT $3",
                &[&runbook, &since_ms, &limit],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn queue_depth(&mut self) -> Result<u64, StoreError> {
        let row = self.query_opt("SELECT COUNT(*) FROM executions WHERE state = 'queued'", &[])?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    fn ids_with_prefix(&mut self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        // A range on the primary key, in the column's collation (whatever
        // the database's is); `left(…) = …` compares bytes, so a collation
        // that orders the range differently from `C` cannot let another id in.
        let rows = match prefix_end(prefix) {
            Some(end) => self.query(
                "SELECT id FROM executions WHERE id >= $1 AND id < $2 AND left(id, char_length($1)) = $1 ORDER BY id LIMIT $3",
                &[&prefix, &end, &limit],
            )?,
            None => self.query(
                "SELECT id FROM executions WHERE id >= $1 AND left(id, char_length($1)) = $1 ORDER BY id LIMIT $2",
                &[&prefix, &limit],
            )?,
        };
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn effectiveness(&mut self, runbook: Option<&str>) -> Result<Vec<Effectiveness>, StoreError> {
        Ok(self
            .query(
                "SELECT runbook, judged, effective, notified FROM effectiveness \
                 WHERE $1::text IS NULL OR runbook = $1 ORDER BY runbook",
                &[&runbook],
            )?
            .iter()
            .map(|r| Effectiveness {
                runbook: r.get(0),
                judged: r.get::<_, i32>(1) as u32,
                effective: r.get::<_, i32>(2) as u32,
                notified: r.get(3),
            })
            .collect())
    }

    fn report_runs(&mut self, since_ms: i64, until_ms: i64, visit: &mut dyn FnMut(ReportRun)) -> Result<(), StoreError> {
        // The alertnames are read from alert records.
        self.write_audit()?;
        self.stream(
            "SELECT e.runbook, e.target, e.state, e.dry_run, e.alert_seq IS NOT NULL OR e.alert IS NOT NULL, \
             e.created_ms, e.finished_ms, \
             CASE WHEN e.state = 'succeeded' AND NOT e.dry_run THEN COALESCE(e.alert, \
                 (SELECT r.data FROM audit r WHERE r.seq = e.alert_seq))::jsonb -> 'labels' ->> 'alertname' END \
             FROM executions e WHERE e.created_ms >= $1 AND e.created_ms < $2",
            &[since_ms, until_ms],
            &mut |r| {
                let state: String = r.get(2);
                visit(ReportRun {
                    runbook: r.get(0),
                    target: r.get(1),
                    state: State::parse(&state).unwrap_or(State::Unknown),
                    dry_run: r.get(3),
                    from_alert: r.get(4),
                    created_ms: r.get(5),
                    finished_ms: r.get(6),
                    alertname: r.get(7),
                });
                Ok(())
            },
        )
    }

    fn report_records(&mut self, since_us: i64, until_us: i64, visit: &mut dyn FnMut(ReportRecord)) -> Result<(), StoreError> {
        self.write_audit()?;
        self.stream(
            "SELECT k.name, n.name, a.ts_us, \
             CASE k.name WHEN 'alert.received' THEN a.data::jsonb ->> 'status' \
                 WHEN 'guardrail.decision' THEN a.data::jsonb ->> 'verdict' END, \
             CASE WHEN k.name = 'guardrail.decision' THEN a.data::jsonb ->> 'decided_by' END, \
             k.name = 'guardrail.decision' AND a.data::jsonb ? 'escalated', \
             CASE WHEN k.name LIKE 'approval.%' THEN (SELECT e.created_ms FROM executions e WHERE e.id = a.execution_id) END \
             FROM audit a JOIN audit_names k ON k.id = a.kind JOIN audit_names n ON n.id = a.actor \
             WHERE a.ts_us >= $1 AND a.ts_us < $2 \
             AND k.name IN ('alert.received', 'guardrail.decision', 'approval.granted', 'approval.denied')",
            &[since_us, until_us],
            &mut |r| {
                visit(ReportRecord {
                    kind: r.get(0),
                    actor: r.get(1),
                    ts_us: r.get(2),
                    status: r.get(3),
                    decided_by: r.get(4),
                    escalated: r.get(5),
                    created_ms: r.get(6),
                });
                Ok(())
            },
        )
    }

    fn firing(
        &mut self,
        alertname: Option<&str>,
        seen_after_ms: i64,
        now_ms: i64,
        visit: &mut dyn FnMut(crate::inhibit::Firing) -> bool,
    ) -> Result<(), StoreError> {
        let rows = match alertname {
            Some(name) => self.query_planned(
                FIRING_NAMED,
                &[(&name, Type::TEXT), (&seen_after_ms, Type::INT8), (&now_ms, Type::INT8)],
            )?,
            None => self.query_planned(FIRING_ALL, &[(&seen_after_ms, Type::INT8), (&now_ms, Type::INT8)])?,
        };
        for row in rows {
            if !visit(firing_from_row(row.get(0), row.get(1))?) {
                break;
            }
        }
        Ok(())
    }
}

impl Tx for PgConn {
    fn changes(&self) -> u64 {
        self.changed
    }

    fn aborted(&self) -> bool {
        self.failed_in_tx
    }

    fn chain_head(&mut self) -> Result<Option<ChainHead>, StoreError> {
        if let Some(head) = self.head_at_begin.take() {
            return Ok(head);
        }
        Ok(self
            .query_opt("SELECT seq, hash, ts_us FROM audit ORDER BY seq DESC LIMIT 1", &[])?
            .map(|r| ChainHead {
                seq: r.get::<_, i64>(0) as u64,
                hash: r.get(1),
                ts_us: r.get(2),
            }))
    }

    /// Kept until the transaction's next read of the audit or its commit,
    /// then written in one statement: a group's records cost one round trip
    /// instead of one each.
    fn append_audit(&mut self, row: AuditRow<'_>) -> Result<(), StoreError> {
        let (kind, actor) = (self.name_id(row.kind)?, self.name_id(row.actor)?);
        let rows = &mut self.unwritten;
        rows.seq.push(row.seq as i64);
        rows.ts_us.push(row.ts_us);
        rows.kind.push(kind);
        rows.actor.push(actor);
        rows.execution_id.push(row.execution_id.map(String::from));
        rows.runbook.push(row.runbook.map(String::from));
        rows.target.push(row.target.map(String::from));
        rows.data.push(row.data.to_string());
        rows.hash.push(row.hash.to_vec());
        // A job that fails after appending has changed the transaction.
        self.changed += 1;
        Ok(())
    }

    /// Rows are inserted in array order, so an id given twice is inserted
    /// (and returned) the first time.
    fn alerts_insert(&mut self, ids: &[[u8; 16]]) -> Result<Vec<bool>, StoreError> {
        let given: Vec<&[u8]> = ids.iter().map(|id| &id[..]).collect();
        let inserted: HashSet<[u8; 16]> = self
            .query(
                "INSERT INTO alerts (id) SELECT unnest($1::bytea[]) ON CONFLICT (id) DO NOTHING RETURNING id",
                &[&given],
            )?
            .iter()
            .filter_map(|r| r.get::<_, &[u8]>(0).try_into().ok())
            .collect();
        self.changed += inserted.len() as u64;
        let mut first = HashSet::with_capacity(inserted.len());
        Ok(ids.iter().map(|id| inserted.contains(id) && first.insert(*id)).collect())
    }

    fn alert_mark(&mut self, id: &[u8; 16], received_seq: Option<u64>, decided_ms: Option<i64>) -> Result<(), StoreError> {
        let (id, seq) = (&id[..], received_seq.map(|s| s as i64));
        self.defer(
            "UPDATE alerts SET received_seq = $2, decided_ms = $3 WHERE id = $1",
            &[&id, &seq, &decided_ms],
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
        self.defer(
            "INSERT INTO firing_alerts (fingerprint, alertname, labels, starts_ms, ends_ms, seen_ms) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (fingerprint) DO UPDATE SET alertname = excluded.alertname, labels = excluded.labels, \
             starts_ms = excluded.starts_ms, ends_ms = excluded.ends_ms, seen_ms = excluded.seen_ms \
             WHERE excluded.starts_ms >= firing_alerts.starts_ms",
            &[&fingerprint, &alertname, &labels, &starts_ms, &ends_ms, &now_ms],
        )?;
        Ok(())
    }

    fn firing_resolved(&mut self, fingerprint: &str, starts_ms: i64) -> Result<(), StoreError> {
        self.defer(
            "DELETE FROM firing_alerts WHERE fingerprint = $1 AND starts_ms <= $2",
            &[&fingerprint, &starts_ms],
        )?;
        Ok(())
    }

    fn firing_forget(&mut self, before_ms: i64, limit: usize) -> Result<(), StoreError> {
        let limit = limit as i64;
        // Planned for the cutoff: a generic plan guesses a third of the
        // rows are past it, and may walk the whole table to find the few.
        self.execute_planned(
            "DELETE FROM firing_alerts WHERE fingerprint IN (SELECT fingerprint FROM firing_alerts WHERE seen_ms < $1 LIMIT $2)",
            &[(&before_ms, Type::INT8), (&limit, Type::INT8)],
        )
    }

    fn target_alerting(&mut self, target: &str, ms: i64) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO target_alerts (target, ms) VALUES ($1, $2) ON CONFLICT (target) DO UPDATE SET ms = excluded.ms",
            &[&target, &ms],
        )?;
        Ok(())
    }

    fn execution_insert(&mut self, e: NewExecution<'_>) -> Result<(), StoreError> {
        let alert_seq = e.alert_seq.map(|s| s as i64);
        self.defer(
            "INSERT INTO executions (id, runbook, target, state, reason, actor, alert_seq, alert, fingerprint, params, dry_run, \
             automated, risk, created_ms, admitted_ms, finished_ms, approval_deadline_ms, queued_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             CASE WHEN $4 = 'queued' THEN $18 END)",
            &[
                &e.id,
                &e.runbook,
                &e.target,
                &e.state.as_str(),
                &e.reason,
                &e.actor,
                &alert_seq,
                &e.alert,
                &e.fingerprint,
                &e.params,
                &e.dry_run,
                &e.automated,
                &e.risk,
                &e.created_ms,
                &e.admitted_ms,
                &e.finished_ms,
                &e.approval_deadline_ms,
                &self.target.replica.as_deref().map(String::from),
            ],
        )?;
        Ok(())
    }

    fn claim_held(&mut self, id: &str, claim: Option<&str>) -> Result<bool, StoreError> {
        // The claim is this replica's only while its lease runs: past it,
        // any replica may recover the run, under the same lock as this check.
        let row = self.query_opt(
            "SELECT e.state, e.claimed_by, p.lease_until >= clock_timestamp() FROM executions e \
             LEFT JOIN replicas p ON p.id = split_part(e.claimed_by, '/', 1) WHERE e.id = $1",
            &[&id],
        )?;
        Ok(row.is_some_and(|r| {
            r.get::<_, &str>(0) == "running" && r.get::<_, Option<&str>>(1) == claim && r.get::<_, Option<bool>>(2) == Some(true)
        }))
    }

    fn claim(&mut self, id: &str, worker: &str, started_ms: i64) -> Result<bool, StoreError> {
        Ok(self.claims(&[(id, worker, started_ms)])?[0])
    }

    /// One statement for the group's claims: `CLAIMS`.
    fn claims(&mut self, claims: &[(&str, &str, i64)]) -> Result<Vec<bool>, StoreError> {
        let ids: Vec<&str> = claims.iter().map(|c| c.0).collect();
        let workers: Vec<&str> = claims.iter().map(|c| c.1).collect();
        let started: Vec<i64> = claims.iter().map(|c| c.2).collect();
        let claimed: HashSet<String> = self
            .query(CLAIMS, &[&ids, &workers, &started, &"queued"])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.changed += claimed.len() as u64;
        Ok(ids.iter().map(|id| claimed.contains(*id)).collect())
    }

    fn oldest_queued(&mut self, id: Option<&str>) -> Result<Option<String>, StoreError> {
        let row = match id {
            // The state a parameter, as in `CLAIMS`.
            Some(id) => self.query_opt("SELECT id FROM executions WHERE id = $1 AND state = $2", &[&id, &"queued"])?,
            None => self.query_opt(
                "SELECT id FROM executions WHERE state = 'queued' ORDER BY created_ms, pos LIMIT 1",
                &[],
            )?,
        };
        Ok(row.map(|r| r.get(0)))
    }

    fn requeue(&mut self, id: &str, resume_error: Option<&str>) -> Result<(), StoreError> {
        self.defer(
            "UPDATE executions SET state = 'queued', claimed_by = NULL, queued_by = NULL, \
             resume_error = COALESCE($2, resume_error) WHERE id = $1",
            &[&id, &resume_error],
        )?;
        Ok(())
    }

    fn end(&mut self, id: &str, ending: Ending<'_>) -> Result<bool, StoreError> {
        let row = self.query_opt(
            // `$5` is an `Uncount`; whether a step started an action is a
            // search on the steps' primary key prefix.
            "UPDATE executions SET state = $2, reason = $3, finished_ms = $4, \
             admitted_ms = CASE WHEN $5 = 'yes' OR ($5 = 'unless_started' AND NOT EXISTS \
             (SELECT 1 FROM steps WHERE execution_id = $1 AND action <> '')) THEN NULL ELSE admitted_ms END, \
             claimed_by = CASE WHEN $6 THEN NULL ELSE claimed_by END WHERE id = $1 \
             RETURNING admitted_ms IS NOT NULL",
            &[
                &id,
                &ending.state.as_str(),
                &ending.reason,
                &ending.finished_ms,
                &ending.uncount.as_str(),
                &ending.release_claim,
            ],
        )?;
        // A query, not an `execute`: the change is counted here.
        self.changed += 1;
        Ok(row.is_some_and(|r| r.get(0)))
    }

    /// One statement for the group's ends: `END_HELD`.
    fn ends_held(&mut self, ends: &[(&str, Option<&str>, Ending<'_>)]) -> Result<Vec<Option<bool>>, StoreError> {
        let ids: Vec<&str> = ends.iter().map(|e| e.0).collect();
        let claims: Vec<Option<&str>> = ends.iter().map(|e| e.1).collect();
        let states: Vec<&str> = ends.iter().map(|e| e.2.state.as_str()).collect();
        let reasons: Vec<Option<&str>> = ends.iter().map(|e| e.2.reason).collect();
        let finished: Vec<i64> = ends.iter().map(|e| e.2.finished_ms).collect();
        let uncounts: Vec<&str> = ends.iter().map(|e| e.2.uncount.as_str()).collect();
        let releases: Vec<bool> = ends.iter().map(|e| e.2.release_claim).collect();
        let ended: HashMap<String, bool> = self
            .query(END_HELD, &[&ids, &claims, &states, &reasons, &finished, &uncounts, &releases])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        self.changed += ended.len() as u64;
        Ok(ids.iter().map(|id| ended.get(*id).copied()).collect())
    }

    fn approved(&mut self, id: &str, admitted_ms: i64) -> Result<(), StoreError> {
        self.defer(
            "UPDATE executions SET state = 'queued', queued_by = NULL, \
             admitted_ms = CASE WHEN NOT dry_run THEN $2::bigint END, reason = NULL WHERE id = $1",
            &[&id, &admitted_ms],
        )?;
        Ok(())
    }

    /// A claim whose replica's lease expired (or that names no replica) is
    /// reported without its claimer: its holder is gone.
    fn running(&mut self) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let trusted = self
            .trusts_leases
            .as_ref()
            .is_none_or(|t| t.load(std::sync::atomic::Ordering::Relaxed));
        if !trusted {
            // Every claim as it stands: only the caller's own liveness
            // (claims this process gave up) can release one now.
            return Ok(self
                .query("SELECT id, claimed_by FROM executions WHERE state = 'running'", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect());
        }
        Ok(self
            .query(
                "SELECT e.id, CASE WHEN p.lease_until >= clock_timestamp() THEN e.claimed_by END \
                 FROM executions e LEFT JOIN replicas p ON p.id = split_part(e.claimed_by, '/', 1) \
                 WHERE e.state = 'running'",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn expired_approvals(&mut self, now_ms: i64) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(self
            .query(
                "SELECT id, runbook, target FROM executions WHERE state = 'pending_approval' AND approval_deadline_ms <= $1",
                &[&now_ms],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn unstarted_of_episode(&mut self, fingerprint: &str, starts_at: &str) -> Result<Vec<Victim>, StoreError> {
        // The episode's start is read from the runs' alert records.
        self.write_audit()?;
        Ok(self
            .query(
                "SELECT e.id, e.runbook, e.target, e.state FROM executions e LEFT JOIN audit r ON r.seq = e.alert_seq \
                 WHERE e.fingerprint = $1 AND e.state IN ('queued', 'pending_approval') AND e.started_ms IS NULL \
                 AND COALESCE(r.data::jsonb ->> 'startsAt', CASE WHEN e.automated THEN e.alert::jsonb ->> 'startsAt' END) = $2",
                &[&fingerprint, &starts_at],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    fn step_start(&mut self, key: StepKey<'_>, name: &str, action: &str, idempotent: bool, input: &str, ms: i64) -> Result<(), StoreError> {
        let (idx, attempt) = (key.index as i32, key.attempt as i32);
        self.defer(
            "INSERT INTO steps (execution_id, phase, idx, attempt, name, action, idempotent, state, input, started_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'started', $8, $9) \
             ON CONFLICT (execution_id, phase, idx, attempt) DO UPDATE SET name = excluded.name, action = excluded.action, \
             idempotent = excluded.idempotent, state = 'started', input = excluded.input, output = NULL, error = NULL, \
             started_ms = excluded.started_ms, finished_ms = NULL",
            &[
                &key.execution_id,
                &key.phase.as_str(),
                &idx,
                &attempt,
                &name,
                &action,
                &idempotent,
                &input,
                &ms,
            ],
        )?;
        Ok(())
    }

    fn step_end(&mut self, key: StepKey<'_>, name: &str, end: StepRow<'_>) -> Result<(), StoreError> {
        let (idx, attempt) = (key.index as i32, key.attempt as i32);
        self.defer(
            "INSERT INTO steps (execution_id, phase, idx, attempt, name, action, idempotent, state, input, output, error, \
             started_ms, finished_ms) VALUES ($1, $2, $3, $4, $5, '', true, $6, 'null', $7, $8, $9, $9) \
             ON CONFLICT (execution_id, phase, idx, attempt) DO UPDATE SET state = excluded.state, output = excluded.output, \
             error = excluded.error, finished_ms = excluded.finished_ms",
            &[
                &key.execution_id,
                &key.phase.as_str(),
                &idx,
                &attempt,
                &name,
                &end.state.as_str(),
                &end.output,
                &end.error,
                &end.finished_ms,
            ],
        )?;
        Ok(())
    }

    fn breaker_trip(&mut self, runbook: &str, target: &str, ms: i64, reason: &str) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO breakers (runbook, target, tripped_ms, reason) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (runbook, target) DO UPDATE SET tripped_ms = excluded.tripped_ms, reason = excluded.reason",
            &[&runbook, &target, &ms, &reason],
        )?;
        Ok(())
    }

    fn breaker_reset(&mut self, runbook: &str, target: &str, ms: i64) -> Result<bool, StoreError> {
        let n = self.execute("DELETE FROM breakers WHERE runbook = $1 AND target = $2", &[&runbook, &target])?;
        if n > 0 {
            self.execute(
                "INSERT INTO breaker_resets (runbook, target, ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (runbook, target) DO UPDATE SET ms = excluded.ms",
                &[&runbook, &target, &ms],
            )?;
        }
        Ok(n > 0)
    }

    fn storm_held(&mut self, ms: i64) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO notices (kind, ms) VALUES ('storm', $1) ON CONFLICT (kind) DO UPDATE SET ms = excluded.ms",
            &[&ms],
        )?;
        Ok(())
    }

    fn prune(&mut self, from: i64, limit: usize, before_ms: i64, storm_cutoff_ms: i64) -> Result<(Pruned, i64), StoreError> {
        // Walked in insertion order (`pos`), as SQLite walks rowids.
        let lim = limit as i64;
        let rows = self.query(
            "SELECT pos, id, state, finished_ms, created_ms FROM executions WHERE pos > $1 ORDER BY pos LIMIT $2",
            &[&from, &lim],
        )?;
        let mut pruned = Pruned::default();
        let mut last = from;
        for r in &rows {
            let (pos, id, state, finished_ms, created_ms): (i64, String, String, Option<i64>, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            if created_ms >= before_ms {
                break;
            }
            last = pos;
            let ended = State::parse(&state).is_some_and(State::is_final);
            if ended && finished_ms.is_some_and(|f| f < before_ms) {
                self.execute("DELETE FROM steps WHERE execution_id = $1", &[&id])?;
                self.execute("DELETE FROM executions WHERE id = $1", &[&id])?;
                pruned.ids.push(id);
            }
        }
        pruned.more = rows.len() == limit && rows.last().is_some_and(|r| r.get::<_, i64>(0) == last);
        // Planned for the cutoff, as `firing_forget`.
        self.execute_planned(
            "DELETE FROM target_alerts WHERE target IN (SELECT target FROM target_alerts WHERE ms < $1 LIMIT $2)",
            &[(&storm_cutoff_ms, Type::INT8), (&lim, Type::INT8)],
        )?;
        Ok((pruned, last))
    }

    fn watch_insert(&mut self, w: &Watch) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO effect_watch (execution_id, runbook, target, fingerprint, starts_at, verify_ms, stays_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &w.execution_id,
                &w.runbook,
                &w.target,
                &w.fingerprint,
                &w.starts_at,
                &w.verify_ms,
                &w.stays_ms,
            ],
        )?;
        Ok(())
    }

    fn watch_ended(&mut self, id: &str, ended_ms: Option<i64>) -> Result<(), StoreError> {
        match ended_ms {
            Some(ms) => self.defer(
                "UPDATE effect_watch SET ended_ms = $2, \
                 due_ms = CASE WHEN resolved_ms IS NULL THEN $2 + verify_ms ELSE resolved_ms + stays_ms END \
                 WHERE execution_id = $1",
                &[&id, &ms],
            )?,
            None => self.defer("DELETE FROM effect_watch WHERE execution_id = $1", &[&id])?,
        };
        Ok(())
    }

    fn watch_episode(&mut self, fingerprint: &str, starts_at: &str) -> Result<Vec<Watch>, StoreError> {
        Ok(self
            .query(
                "SELECT execution_id, runbook, target, fingerprint, starts_at, verify_ms, stays_ms, ended_ms, resolved_ms \
                 FROM effect_watch WHERE fingerprint = $1 AND starts_at = $2 AND resolved_ms IS NULL",
                &[&fingerprint, &starts_at],
            )?
            .iter()
            .map(watch_from_row)
            .collect())
    }

    fn watch_resolved(&mut self, runbook: &str, target: &str) -> Result<Vec<Watch>, StoreError> {
        Ok(self
            .query(
                "SELECT execution_id, runbook, target, fingerprint, starts_at, verify_ms, stays_ms, ended_ms, resolved_ms \
                 FROM effect_watch WHERE runbook = $1 AND target = $2 AND resolved_ms IS NOT NULL",
                &[&runbook, &target],
            )?
            .iter()
            .map(watch_from_row)
            .collect())
    }

    fn watch_set(&mut self, id: &str, resolved_ms: Option<i64>, due_ms: Option<i64>) -> Result<(), StoreError> {
        self.defer(
            "UPDATE effect_watch SET resolved_ms = $2, due_ms = $3 WHERE execution_id = $1",
            &[&id, &resolved_ms, &due_ms],
        )?;
        Ok(())
    }

    fn watch_due(&mut self, runbook: Option<&str>, now_ms: i64, limit: usize) -> Result<Vec<Watch>, StoreError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = match runbook {
            Some(rb) => self.query(
                "SELECT execution_id, runbook, target, fingerprint, starts_at, verify_ms, stays_ms, ended_ms, resolved_ms \
                 FROM effect_watch WHERE runbook = $1 AND due_ms IS NOT NULL AND due_ms <= $2 ORDER BY due_ms LIMIT $3",
                &[&rb, &now_ms, &limit],
            )?,
            None => self.query(
                "SELECT execution_id, runbook, target, fingerprint, starts_at, verify_ms, stays_ms, ended_ms, resolved_ms \
                 FROM effect_watch WHERE due_ms IS NOT NULL AND due_ms <= $1 ORDER BY due_ms LIMIT $2",
                &[&now_ms, &limit],
            )?,
        };
        Ok(rows.iter().map(watch_from_row).collect())
    }

    fn watch_judged(&mut self, w: &Watch, effective: bool) -> Result<(), StoreError> {
        self.defer("DELETE FROM effect_watch WHERE execution_id = $1", &[&w.execution_id])?;
        self.defer(
            "INSERT INTO effectiveness (runbook, judged, effective, notified) VALUES ($1, 1, $2, false) \
             ON CONFLICT (runbook) DO UPDATE SET judged = effectiveness.judged + 1, \
             effective = effectiveness.effective + excluded.effective",
            &[&w.runbook, &i32::from(effective)],
        )?;
        Ok(())
    }

    fn effect_notified(&mut self, runbook: &str, notified: bool) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO effectiveness (runbook, judged, effective, notified) VALUES ($1, 0, 0, $2) \
             ON CONFLICT (runbook) DO UPDATE SET notified = excluded.notified",
            &[&runbook, &notified],
        )?;
        Ok(())
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.execute(
            "UPDATE audit_names SET name = name WHERE id = (SELECT MIN(id) FROM audit_names)",
            &[],
        )?;
        Ok(())
    }

    #[cfg(test)]
    fn raw(&mut self, sql: &str) -> Result<(), StoreError> {
        let r = self.client()?.batch_execute(sql);
        self.track(r)
    }
}

impl Conn for PgConn {
    /// One round trip: the transaction, the chain lock (it serialises every
    /// write across replicas, see the module docs) and the chain's head.
    /// Every round trip a transaction makes holds up every replica's writes,
    /// so this saves two for each. Each statement of a simple query takes a
    /// snapshot of its own (READ COMMITTED), so the head is read after the
    /// lock is held: it includes every earlier writer's commit.
    fn begin(&mut self) -> Result<(), StoreError> {
        static BEGIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "BEGIN; SELECT pg_advisory_xact_lock({CHAIN_LOCK}); \
                 SELECT seq, encode(hash, 'hex'), ts_us FROM audit ORDER BY seq DESC LIMIT 1"
            )
        });
        self.failed_in_tx = false;
        self.head_at_begin = None;
        let sent = self.client()?.simple_query(&BEGIN);
        self.in_tx = true;
        let head = self.track(sent).and_then(|messages| chain_head_of(&messages));
        match head {
            Ok(head) => {
                self.head_at_begin = Some(head);
                Ok(())
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// One round trip: the writes still deferred, the audit records, COMMIT.
    fn commit(&mut self) -> Result<(), StoreError> {
        if let Err(e) = self.write_audit() {
            self.rollback();
            return Err(e);
        }
        self.in_tx = false;
        self.head_at_begin = None;
        // Durable when it returns (synchronous_commit on, the server's
        // default). A deferred write that failed is the error reported, not
        // the COMMIT after it (which PostgreSQL answers with a rollback).
        self.client()?.batch_execute("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        self.in_tx = false;
        self.head_at_begin = None;
        if let Some(client) = self.client.as_mut()
            && !client.is_closed()
        {
            client.discard_deferred();
            let _ = client.batch_execute("ROLLBACK");
        }
        // Names this transaction added are gone with it, and its records.
        self.names.clear();
        self.unwritten = Unwritten::default();
    }
}

/// The chain's head from `begin`'s answer: the one row of three columns
/// (the lock's row has one), in text.
fn chain_head_of(messages: &[SimpleQueryMessage]) -> Result<Option<ChainHead>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("chain head: {what}"));
    let Some(row) = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) if row.len() == 3 => Some(row),
        _ => None,
    }) else {
        return Ok(None);
    };
    let text = |i: usize| row.get(i).ok_or_else(|| corrupt("a null column"));
    Ok(Some(ChainHead {
        seq: text(0)?.parse().map_err(|_| corrupt("seq"))?,
        hash: hex::decode(text(1)?).map_err(|_| corrupt("hash"))?,
        ts_us: text(2)?.parse().map_err(|_| corrupt("ts_us"))?,
    }))
}

/// Runs the migrations not yet applied, each in its own transaction, under
/// a session lock so concurrent starts migrate once. Returns those applied.
pub fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])?;
    let result = (|| {
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS pitcrew_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )?;
        let done: HashSet<i32> = client
            .query("SELECT version FROM pitcrew_migrations", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(newer) = done.iter().find(|v| !MIGRATIONS.iter().any(|(m, _)| m == *v)) {
            return Err(StoreError::Corrupt(format!(
                "the database has migration {newer}, newer than this pitcrew knows; upgrade pitcrew"
            )));
        }
        let mut applied = Vec::new();
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| !done.contains(v)) {
            let mut tx = client.transaction()?;
            tx.batch_execute(sql)?;
            tx.execute("INSERT INTO pitcrew_migrations (version) VALUES ($1)", &[version])?;
            tx.commit()?;
            tracing::info!(version, "applied store migration");
            applied.push(*version);
        }
        Ok(applied)
    })();
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK]);
    result
}

/// Runs `f` on a new plain thread (the blocking client must not run on
/// the async runtime's threads) and waits for it.
fn on_plain_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("store setup thread panicked")
}

/// A plain connection to the store `store` names, for one-off work
/// (copying a store in), without statement timeouts.
pub(super) fn connect(store: &StoreConfig) -> Result<Client, StoreError> {
    let mut client = Target::new(store)?.connect()?;
    client.batch_execute("SET statement_timeout = 0")?;
    Ok(client)
}

/// Applies pending migrations and returns their versions (`pitcrew migrate`).
pub fn migrate_url(store: &StoreConfig) -> Result<Vec<i32>, StoreError> {
    let target = Target::new(store)?;
    on_plain_thread(move || migrate(&mut target.connect()?))
}

/// This process's membership: its id, its lease, and who runs chores.
struct Replica {
    id: String,
    lease: Duration,
    /// The connection leases are renewed on (heartbeat, chores).
    conn: Mutex<PgConn>,
    /// Since when every beat went through on time. Only a replica that has
    /// renewed its own lease for a whole lease may call another's expired:
    /// after an outage of the database nobody could renew, and the first
    /// recovery pass would otherwise take every live run from every replica.
    renewing_since: Mutex<Option<std::time::Instant>>,
    /// `renewing_since` is a whole lease ago: read by the writer.
    trusts_leases: Arc<std::sync::atomic::AtomicBool>,
}

impl Replica {
    /// Renews this replica's lease; false when the database did not take it.
    fn heartbeat(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("lease connection lock");
        let lease = self.lease.as_millis() as i64;
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pid = std::process::id() as i32;
        conn.execute(
            "INSERT INTO replicas (id, host, pid, lease_until) VALUES ($1, $2, $3, clock_timestamp() + $4::bigint * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
            &[&self.id, &host, &pid, &lease],
        )?;
        Ok(())
    }

    /// Takes or keeps the chores lease.
    fn lead(&self) -> Result<bool, StoreError> {
        let mut conn = self.conn.lock().expect("lease connection lock");
        let lease = self.lease.as_millis() as i64;
        let held = conn.query_opt(
            "INSERT INTO chores (id, holder, until) VALUES (1, $1, clock_timestamp() + $2::bigint * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE chores.holder = excluded.holder OR chores.until < clock_timestamp() RETURNING holder",
            &[&self.id, &lease],
        )?;
        if held.is_some() {
            // Replicas killed without a clean stop leave their row; once its
            // lease is long over (their runs were recovered at its end), it goes.
            conn.execute(
                "DELETE FROM replicas WHERE lease_until < clock_timestamp() - interval '1 hour'",
                &[],
            )?;
        }
        Ok(held.is_some())
    }

    /// Gives the lease and the chores up at a clean stop, so others need not wait them out.
    fn leave(&self) {
        let mut conn = self.conn.lock().expect("lease connection lock");
        let _ = conn.execute("DELETE FROM chores WHERE holder = $1", &[&self.id]);
        let _ = conn.execute("DELETE FROM replicas WHERE id = $1", &[&self.id]);
    }
}

/// The PostgreSQL backend of [`Ledger`].
pub struct Postgres {
    replica: Arc<Replica>,
    /// Jobs for the reader threads.
    reads: Mutex<Sender<ReadJob>>,
    /// Ends the heartbeat thread.
    stop: Sender<()>,
    /// Whether this process joined as a replica (a lease, a heartbeat);
    /// a command that only reads does not.
    joined: bool,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.joined {
            return;
        }
        let _ = self.stop.send(());
        let replica = self.replica.clone();
        // Not on an async runtime thread (see `on_plain_thread`).
        let _ = std::thread::spawn(move || replica.leave()).join();
    }
}

/// How many read connections each process keeps.
const READERS: usize = 4;

#[async_trait::async_trait]
impl Backend for Postgres {
    fn read(&self, job: ReadJob) {
        if let Err(std::sync::mpsc::SendError(job)) = self.reads.lock().expect("reads lock").send(job) {
            job(Err(StoreError::Closed));
        }
    }

    fn worker_id(&self) -> String {
        self.replica.id.clone()
    }

    async fn lead_chores(&self) -> bool {
        let replica = self.replica.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(replica.lead());
        });
        match rx.await {
            Ok(Ok(lead)) => lead,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot take the chores lease");
                false
            }
            Err(_) => false,
        }
    }
}

/// The store on PostgreSQL.
pub type PgStore = Ledger<Postgres>;

fn reader_loop(target: Target, jobs: Arc<Mutex<Receiver<ReadJob>>>) {
    let mut conn = PgConn::new(target);
    loop {
        let job = match jobs.lock().expect("read jobs lock").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job(Ok(&mut conn));
    }
}

fn heartbeat_loop(replica: Arc<Replica>, stop: Receiver<()>, health: SharedHealth) {
    // Three beats per lease: one lost beat does not lose the lease.
    let every = replica.lease / 3;
    loop {
        let began = std::time::Instant::now();
        let beat = replica.heartbeat();
        let mut since = replica.renewing_since.lock().expect("renewing lock");
        let wait = match beat {
            Ok(()) if began.elapsed() < every => {
                since.get_or_insert(began);
                every
            }
            result => {
                *since = None;
                if let Err(e) = result {
                    tracing::warn!(error = %e, replica = %replica.id, "lease not renewed");
                    super::writer::set_health(&health, Health::Failing(format!("lease not renewed: {e}")));
                }
                // Soon again: the lease is running out.
                Duration::from_millis(250).min(every)
            }
        };
        let steady = since.is_some_and(|s| s.elapsed() >= replica.lease);
        replica.trusts_leases.store(steady, std::sync::atomic::Ordering::Relaxed);
        drop(since);
        match stop.recv_timeout(wait) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

impl Ledger<Postgres> {
    /// Connects, migrates, joins as a replica (with a lease that a
    /// heartbeat renews) and starts the writer and readers.
    pub fn open(store: &StoreConfig, redactor: Redactor, clock: Arc<dyn Clock>) -> Result<PgStore, StoreError> {
        Ledger::<Postgres>::connect(store, redactor, clock, true)
    }

    /// For commands about what is already recorded: changes nothing in the
    /// database (no migration, no replica row) and refuses a database that
    /// holds no pitcrew store of this version.
    pub fn open_existing(store: &StoreConfig, redactor: Redactor, clock: Arc<dyn Clock>) -> Result<PgStore, StoreError> {
        Ledger::<Postgres>::connect(store, redactor, clock, false)
    }

    fn connect(store: &StoreConfig, redactor: Redactor, clock: Arc<dyn Clock>, join: bool) -> Result<PgStore, StoreError> {
        let mut target = Target::new(store)?;
        let replica = Arc::new(Replica {
            id: format!("r-{}", ulid::Ulid::new().to_string().to_lowercase()),
            lease: store.lease.std(),
            conn: Mutex::new(PgConn::new(target.clone())),
            renewing_since: Mutex::new(None),
            trusts_leases: Arc::default(),
        });
        if join {
            target.replica = Some(Arc::from(replica.id.as_str()));
        }
        let setup = {
            let (target, replica) = (target.clone(), replica.clone());
            let url = target.url.clone();
            on_plain_thread(move || -> Result<PgConn, StoreError> {
                if join {
                    migrate(&mut target.connect()?)?;
                }
                let mut writer = PgConn::new(target);
                writer.trusts_leases = Some(replica.trusts_leases.clone());
                if join {
                    replica.heartbeat()?;
                } else {
                    let known = writer.query_opt(
                        "SELECT to_regclass('pitcrew_migrations') IS NOT NULL AND \
                         (SELECT COUNT(*) FROM pitcrew_migrations WHERE version = ANY($1)) = cardinality($1)",
                        &[&MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<i32>>()],
                    );
                    // A query on a missing table fails rather than answers false.
                    if !matches!(known, Ok(Some(ref row)) if row.get::<_, Option<bool>>(0) == Some(true)) {
                        return Err(StoreError::Refused(format!(
                            "no pitcrew store of this version in {url}: nothing has been recorded there yet (`pitcrew serve` or `pitcrew migrate` makes one)"
                        )));
                    }
                }
                Ok(writer)
            })
        };
        let writer = setup?;
        let health: SharedHealth = Arc::new(Mutex::new(Health::Writable));
        let spawn_error = |source| StoreError::Open {
            path: target.url.clone(),
            source,
        };
        let (queue, inbox) = WriteQueue::new();
        std::thread::Builder::new()
            .name("pitcrew-store-writer".into())
            .spawn({
                let (clock, redactor, health) = (clock.clone(), redactor.clone(), health.clone());
                // Durable at COMMIT: answered at once.
                move || {
                    write_loop(writer, inbox, redactor, clock, health, |group| {
                        group.answer(None);
                        true
                    })
                }
            })
            .map_err(spawn_error)?;
        let (read_tx, read_rx) = channel::<ReadJob>();
        let read_rx = Arc::new(Mutex::new(read_rx));
        for n in 0..READERS {
            let (target, jobs) = (target.clone(), read_rx.clone());
            std::thread::Builder::new()
                .name(format!("pitcrew-store-reader-{n}"))
                .spawn(move || reader_loop(target, jobs))
                .map_err(spawn_error)?;
        }
        let (stop, stopped) = channel();
        if join {
            std::thread::Builder::new()
                .name("pitcrew-store-lease".into())
                .spawn({
                    let (replica, health) = (replica.clone(), health.clone());
                    move || heartbeat_loop(replica, stopped, health)
                })
                .map_err(spawn_error)?;
        }
        let backend = Postgres {
            replica,
            reads: Mutex::new(read_tx),
            stop,
            joined: join,
        };
        Ok(Ledger::new(backend, queue, health, clock, redactor))
    }
}
