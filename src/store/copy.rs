//! `pitcrew store copy`: an embedded store's history and audit chain, moved
//! into an empty PostgreSQL store row for row. The two layouts keep the same
//! rows (see `postgres::MIGRATIONS`), and audit records keep their exact
//! bytes and hashes, so `audit verify` passes on the copy.

use std::path::Path;

use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::types::{ToSql, Type};
use rusqlite::OptionalExtension;

use super::StoreError;
use crate::config::StoreConfig;

/// What was copied, table by table.
#[derive(Debug, Default)]
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
    /// The last audit record's seq and hash (hex), as both stores now hold it.
    pub head: Option<(u64, String)>,
}

/// A column as SQLite holds it and PostgreSQL wants it.
#[derive(Clone, Copy)]
enum Col {
    Int8,
    Int4,
    Text,
    Bytea,
    /// 0/1 in SQLite.
    Bool,
}

impl Col {
    fn pg(self) -> Type {
        match self {
            Col::Int8 => Type::INT8,
            Col::Int4 => Type::INT4,
            Col::Text => Type::TEXT,
            Col::Bytea => Type::BYTEA,
            Col::Bool => Type::BOOL,
        }
    }
}

/// A value read from SQLite, ready for PostgreSQL.
#[derive(Debug)]
enum Cell {
    Int8(Option<i64>),
    Int4(Option<i32>),
    Text(Option<String>),
    Bytea(Option<Vec<u8>>),
    Bool(Option<bool>),
}

impl Cell {
    fn read(row: &rusqlite::Row<'_>, i: usize, col: Col) -> rusqlite::Result<Cell> {
        Ok(match col {
            Col::Int8 => Cell::Int8(row.get(i)?),
            Col::Int4 => Cell::Int4(row.get(i)?),
            Col::Text => Cell::Text(row.get(i)?),
            Col::Bytea => Cell::Bytea(row.get(i)?),
            Col::Bool => Cell::Bool(row.get::<_, Option<i64>>(i)?.map(|v| v != 0)),
        })
    }

    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int8(v) => v,
            Cell::Int4(v) => v,
            Cell::Text(v) => v,
            Cell::Bytea(v) => v,
            Cell::Bool(v) => v,
        }
    }
}

/// The tables in copy order, with their columns. `executions` is read in
/// rowid order so PostgreSQL's `pos` keeps the insertion order.
/// A table: its name, the order to read it in, its columns.
type Table = (&'static str, &'static str, &'static [(&'static str, Col)]);

const TABLES: &[Table] = &[
    ("audit_names", "ORDER BY id", &[("id", Col::Int4), ("name", Col::Text)]),
    (
        "audit",
        "ORDER BY seq",
        &[
            ("seq", Col::Int8),
            ("ts_us", Col::Int8),
            ("kind", Col::Int4),
            ("actor", Col::Int4),
            ("execution_id", Col::Text),
            ("runbook", Col::Text),
            ("target", Col::Text),
            ("data", Col::Text),
            ("hash", Col::Bytea),
        ],
    ),
    (
        "alerts",
        "",
        &[("id", Col::Bytea), ("received_seq", Col::Int8), ("decided_ms", Col::Int8)],
    ),
    (
        "executions",
        "ORDER BY rowid",
        &[
            ("id", Col::Text),
            ("runbook", Col::Text),
            ("target", Col::Text),
            ("state", Col::Text),
            ("reason", Col::Text),
            ("actor", Col::Text),
            ("alert_seq", Col::Int8),
            ("alert", Col::Text),
            ("fingerprint", Col::Text),
            ("params", Col::Text),
            ("dry_run", Col::Bool),
            ("automated", Col::Bool),
            ("risk", Col::Text),
            ("created_ms", Col::Int8),
            ("admitted_ms", Col::Int8),
            ("started_ms", Col::Int8),
            ("finished_ms", Col::Int8),
            ("approval_deadline_ms", Col::Int8),
            ("claimed_by", Col::Text),
            ("resume_error", Col::Text),
        ],
    ),
    (
        "steps",
        "",
        &[
            ("execution_id", Col::Text),
            ("phase", Col::Text),
            ("idx", Col::Int4),
            ("attempt", Col::Int4),
            ("name", Col::Text),
            ("action", Col::Text),
            ("idempotent", Col::Bool),
            ("state", Col::Text),
            ("input", Col::Text),
            ("output", Col::Text),
            ("error", Col::Text),
            ("started_ms", Col::Int8),
            ("finished_ms", Col::Int8),
        ],
    ),
    ("target_alerts", "", &[("target", Col::Text), ("ms", Col::Int8)]),
    (
        "firing_alerts",
        "",
        &[
            ("fingerprint", Col::Text),
            ("alertname", Col::Text),
            ("labels", Col::Text),
            ("starts_ms", Col::Int8),
            ("ends_ms", Col::Int8),
            ("seen_ms", Col::Int8),
        ],
    ),
    ("notices", "", &[("kind", Col::Text), ("ms", Col::Int8)]),
    (
        "breakers",
        "",
        &[
            ("runbook", Col::Text),
            ("target", Col::Text),
            ("tripped_ms", Col::Int8),
            ("reason", Col::Text),
        ],
    ),
    (
        "breaker_resets",
        "",
        &[("runbook", Col::Text), ("target", Col::Text), ("ms", Col::Int8)],
    ),
];

/// Copies the embedded store in `state_dir` into the empty PostgreSQL store
/// `to`, in one transaction: all of it or nothing. Refuses a target that
/// already holds records.
pub fn copy_sqlite_to_postgres(state_dir: &Path, to: &StoreConfig) -> Result<Copied, StoreError> {
    let path = state_dir.join("state.db");
    if !path.exists() {
        return Err(StoreError::NotFound(format!("embedded store {}", path.display())));
    }
    // Upgraded to the current layout first, like any open.
    drop(super::sqlite::SqliteStore::open(
        state_dir,
        crate::redact::Redactor::default(),
        std::sync::Arc::new(crate::clock::SystemClock),
    )?);
    let source = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // One read transaction: a `serve` still writing does not tear the copy.
    source.execute_batch("BEGIN")?;
    let (to, path_text) = (to.clone(), path.display().to_string());
    // The blocking client must not run on an async runtime's thread.
    std::thread::spawn(move || copy_into(&source, &to, &path_text))
        .join()
        .expect("copy thread panicked")
}

fn copy_into(source: &rusqlite::Connection, to: &StoreConfig, from: &str) -> Result<Copied, StoreError> {
    let mut client = super::postgres::connect(to)?;
    super::postgres::migrate(&mut client)?;
    let mut tx = client.transaction()?;
    // Like every write: no replica starting on the target meanwhile can
    // append to the chain the copy is writing.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::postgres::CHAIN_LOCK])?;
    for table in ["audit", "executions", "alerts"] {
        let n: i64 = tx.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?.get(0);
        if n > 0 {
            return Err(StoreError::Refused(format!(
                "{} already holds a store ({n} rows in {table}); copy only into a new database",
                to.url
            )));
        }
    }
    let mut copied = Copied::default();
    for (table, order, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let types: Vec<Type> = columns.iter().map(|(_, c)| c.pg()).collect();
        let sink = tx.copy_in(&format!("COPY {table} ({}) FROM STDIN BINARY", names.join(", ")))?;
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        let mut stmt = source.prepare(&format!("SELECT {} FROM {table} {order}", names.join(", ")))?;
        let mut rows = stmt.query([])?;
        let mut n = 0u64;
        while let Some(row) = rows.next()? {
            let cells = columns
                .iter()
                .enumerate()
                .map(|(i, (_, col))| Cell::read(row, i, *col))
                .collect::<rusqlite::Result<Vec<Cell>>>()?;
            let values: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::sql).collect();
            writer.write(&values)?;
            n += 1;
        }
        writer.finish()?;
        copied.tables.push((table, n));
    }
    // Names added later take ids after the copied ones.
    tx.execute(
        "SELECT setval(pg_get_serial_sequence('audit_names', 'id'), GREATEST(1, (SELECT COALESCE(MAX(id), 0) FROM audit_names)))",
        &[],
    )?;
    let head = |seq: Option<i64>, hash: Option<Vec<u8>>| seq.zip(hash).map(|(s, h)| (s as u64, hex::encode(h)));
    let source_head: Option<(i64, Vec<u8>)> = source
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let target_head = tx.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
    let (source_head, target_head) = (
        source_head.and_then(|(s, h)| head(Some(s), Some(h))),
        target_head.and_then(|r| head(r.get(0), r.get(1))),
    );
    if source_head != target_head {
        return Err(StoreError::Corrupt(format!(
            "the copy's audit head {target_head:?} is not {from}'s {source_head:?}; nothing was kept"
        )));
    }
    tx.commit()?;
    copied.head = target_head;
    Ok(copied)
}
