//! The audit log: one record per event, hash-chained, so that changing,
//! deleting or reordering any record is detected by `verify`.
//!
//! `hash` = hex SHA-256 of `prev_hash` + "\n" + the record without `hash` as
//! canonical JSON (keys sorted, no insignificant whitespace). Only the store
//! appends records (inside its transactions); this module owns the format.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Event kinds; more may be added.
pub mod kind {
    pub const ALERT_RECEIVED: &str = "alert.received";
    pub const ALERT_DUPLICATE: &str = "alert.duplicate";
    pub const ALERT_RECONSIDERED: &str = "alert.reconsidered";
    pub const RUNBOOK_MATCHED: &str = "runbook.matched";
    pub const GUARDRAIL_DECISION: &str = "guardrail.decision";
    pub const EXECUTION_STARTED: &str = "execution.started";
    pub const STEP_STARTED: &str = "step.started";
    pub const STEP_FINISHED: &str = "step.finished";
    pub const EXECUTION_FINISHED: &str = "execution.finished";
    pub const APPROVAL_GRANTED: &str = "approval.granted";
    pub const APPROVAL_DENIED: &str = "approval.denied";
    /// An approval refused by the two-person rule; the execution stays pending.
    pub const APPROVAL_REFUSED: &str = "approval.refused";
    /// A manual run, an approval or a denial refused by the runbook's
    /// `permissions` (or from a Slack user `slack.users` does not know).
    pub const ACCESS_REFUSED: &str = "access.refused";
    pub const CONFIG_LOADED: &str = "config.loaded";
    pub const OVERRIDE: &str = "override";
    pub const EXECUTION_RECOVERED: &str = "execution.recovered";
    pub const ESCALATION_RESET: &str = "escalation.reset";
    pub const NOTIFICATION: &str = "notification";
    /// A PagerDuty event delivered, or given up on after its retries.
    pub const PAGERDUTY: &str = "pagerduty";
}

/// A record as stored and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts: String,
    pub kind: String,
    pub actor: String,
    pub execution_id: Option<String>,
    pub runbook: Option<String>,
    pub target: Option<String>,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// A record before the store numbers and chains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub actor: String,
    pub execution_id: Option<String>,
    pub runbook: Option<String>,
    pub target: Option<String>,
    pub data: Value,
}

impl Event {
    pub fn new(kind: &'static str, actor: impl Into<String>, data: Value) -> Event {
        Event {
            kind,
            actor: actor.into(),
            execution_id: None,
            runbook: None,
            target: None,
            data,
        }
    }

    pub fn execution(mut self, id: &str, runbook: &str, target: &str) -> Event {
        self.execution_id = Some(id.to_string());
        self.runbook = Some(runbook.to_string());
        self.target = Some(target.to_string());
        self
    }

    pub fn runbook(mut self, runbook: &str, target: &str) -> Event {
        self.runbook = Some(runbook.to_string());
        self.target = Some(target.to_string());
        self
    }

    /// Numbers and chains the event after `prev`.
    pub fn seal(self, seq: u64, ts: DateTime<Utc>, prev_hash: &str) -> Record {
        let mut record = Record {
            seq,
            ts: format_ts(ts),
            kind: self.kind.to_string(),
            actor: self.actor,
            execution_id: self.execution_id,
            runbook: self.runbook,
            target: self.target,
            data: self.data,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        record
    }

    /// Numbers and chains the event after `prev_hash` for storage: the
    /// store keeps the envelope in columns and `data` as canonical JSON, and
    /// rebuilds the record (with `prev_hash` from the record before) when it
    /// is read. The store's hot path: one serialisation, no copies of
    /// `data`. Returns (canonical `data`, hash).
    pub fn seal_stored(&self, seq: u64, ts: &str, prev_hash: &str) -> (String, [u8; 32]) {
        let fields = Fields {
            seq,
            ts,
            kind: self.kind,
            actor: &self.actor,
            execution_id: self.execution_id.as_deref(),
            runbook: self.runbook.as_deref(),
            target: self.target.as_deref(),
            data: &self.data,
            prev_hash,
        };
        let mut canonical = Vec::with_capacity(512);
        let data = fields.write_canonical(&mut canonical);
        let hash = fields.digest(&canonical);
        let data = String::from_utf8(canonical[data].to_vec()).expect("JSON text is UTF-8");
        (data, hash)
    }
}

/// Drops the top-level `null` fields of an event's data: absent and null
/// read the same (`data["error"].is_null()`), and a storm of records need
/// not store `"budget":null` a million times. Nested values (a step's
/// output) are kept exactly as they are.
pub fn without_nulls(data: &mut Value) {
    if let Value::Object(map) = data {
        map.retain(|_, v| !v.is_null());
    }
}

/// Record timestamps: RFC 3339 UTC with microseconds.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A record's fields without `hash`, borrowed, in canonical (sorted) order.
struct Fields<'a> {
    seq: u64,
    ts: &'a str,
    kind: &'a str,
    actor: &'a str,
    execution_id: Option<&'a str>,
    runbook: Option<&'a str>,
    target: Option<&'a str>,
    data: &'a Value,
    prev_hash: &'a str,
}

impl Fields<'_> {
    /// Writes the canonical JSON; returns where `data` is in it.
    fn write_canonical(&self, out: &mut Vec<u8>) -> std::ops::Range<usize> {
        let opt = |out: &mut Vec<u8>, v: Option<&str>| match v {
            Some(s) => write_str(out, s),
            None => out.extend_from_slice(b"null"),
        };
        out.extend_from_slice(b"{\"actor\":");
        write_str(out, self.actor);
        out.extend_from_slice(b",\"data\":");
        let data_at = out.len();
        write_canonical(self.data, out);
        let data = data_at..out.len();
        out.extend_from_slice(b",\"execution_id\":");
        opt(out, self.execution_id);
        out.extend_from_slice(b",\"kind\":");
        write_str(out, self.kind);
        out.extend_from_slice(b",\"prev_hash\":");
        write_str(out, self.prev_hash);
        out.extend_from_slice(b",\"runbook\":");
        opt(out, self.runbook);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(self.seq.to_string().as_bytes());
        out.extend_from_slice(b",\"target\":");
        opt(out, self.target);
        out.extend_from_slice(b",\"ts\":");
        write_str(out, self.ts);
        out.push(b'}');
        data
    }

    fn digest(&self, canonical: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash.as_bytes());
        hasher.update(b"\n");
        hasher.update(canonical);
        hasher.finalize().into()
    }
}

impl Record {
    pub fn compute_hash(&self) -> String {
        let fields = Fields {
            seq: self.seq,
            ts: &self.ts,
            kind: &self.kind,
            actor: &self.actor,
            execution_id: self.execution_id.as_deref(),
            runbook: self.runbook.as_deref(),
            target: self.target.as_deref(),
            data: &self.data,
            prev_hash: &self.prev_hash,
        };
        let mut canonical = Vec::with_capacity(512);
        fields.write_canonical(&mut canonical);
        hex::encode(fields.digest(&canonical))
    }

    /// A record as the store keeps it: envelope columns, canonical `data`,
    /// the binary hash, and the hash of the record before it (genesis for
    /// the first; empty when that record is missing, which `verify` names).
    pub fn from_stored(stored: Stored, prev_hash: Option<&[u8]>) -> Result<Record, serde_json::Error> {
        let prev_hash = match prev_hash {
            Some(h) => hex::encode(h),
            None if stored.seq == 1 => GENESIS.to_string(),
            None => String::new(),
        };
        Ok(Record {
            seq: stored.seq,
            ts: format_ts(DateTime::from_timestamp_micros(stored.ts_us).unwrap_or_default()),
            kind: stored.kind,
            actor: stored.actor,
            execution_id: stored.execution_id,
            runbook: stored.runbook,
            target: stored.target,
            data: serde_json::from_str(&stored.data)?,
            prev_hash,
            hash: hex::encode(&stored.hash),
        })
    }
}

/// The columns of a stored record.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    /// `ts` in microseconds since the epoch: records write it with
    /// microsecond precision, so it turns back into the same text.
    pub ts_us: i64,
    pub kind: String,
    pub actor: String,
    pub execution_id: Option<String>,
    pub runbook: Option<String>,
    pub target: Option<String>,
    pub data: String,
    pub hash: Vec<u8>,
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace.
/// Written out by hand so the hash never depends on serde_json's map order
/// feature flags.
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    String::from_utf8(out).expect("JSON text is UTF-8")
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            out.push(b'{');
            let mut first = true;
            let mut entry = |out: &mut Vec<u8>, k: &str, v: &Value| {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_str(out, k);
                out.push(b':');
                write_canonical(v, out);
            };
            // serde_json's default map is already sorted; sort only if not.
            if map.keys().is_sorted() {
                for (k, v) in map {
                    entry(out, k, v);
                }
            } else {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                for k in keys {
                    entry(out, k, &map[k]);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).expect("writing to a Vec cannot fail"),
    }
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record seq {seq}: {reason}")]
pub struct Broken {
    pub seq: u64,
    pub reason: String,
}

/// Checks records in storage order; returns how many were verified.
pub fn verify<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<u64, Broken> {
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    for r in records {
        verify_from(r, expected_seq, &prev)?;
        prev = r.hash.clone();
        expected_seq += 1;
    }
    Ok(expected_seq - 1)
}

/// Checks one record given the sequence number and hash that must precede it.
pub fn verify_from(r: &Record, expected_seq: u64, prev: &str) -> Result<(), Broken> {
    if r.seq != expected_seq {
        let reason = if r.seq > expected_seq {
            format!("expected seq {expected_seq} next: record(s) missing or reordered")
        } else {
            format!("expected seq {expected_seq} next: records reordered or duplicated")
        };
        return Err(Broken { seq: r.seq, reason });
    }
    if r.prev_hash != prev {
        return Err(Broken {
            seq: r.seq,
            reason: "prev_hash does not match the previous record's hash (a record before it was changed, removed or reordered)".into(),
        });
    }
    if r.compute_hash() != r.hash {
        return Err(Broken {
            seq: r.seq,
            reason: "hash does not match the record's content and the hash before it (this record was changed, or the one before it was rewritten)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Vec<Record> {
        let mut prev = GENESIS.to_string();
        let ts = Utc::now();
        (1..=n)
            .map(|seq| {
                let r =
                    Event::new(kind::ALERT_RECEIVED, "alertmanager", json!({"n": seq, "b": [1, {"z": 1, "a": 2}]})).seal(seq, ts, &prev);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": [1, 2], "c": "x\n"}})),
            r#"{"a":{"c":"x\n","d":[1,2]},"b":1}"#
        );
    }

    /// The hash as the record format defines it, computed independently (Python's
    /// `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`),
    /// so a change in how we write JSON cannot silently change the format.
    #[test]
    fn hash_matches_an_independent_implementation() {
        let event = Event::new(
            kind::STEP_STARTED,
            "alertmanager",
            json!({"z": [1, 2.5, {"b": null, "a": true}], "msg": "h\u{e9}llo \u{202e}\n\t\"q\" \\ \u{1} {{x}} $(id)", "A": -3}),
        )
        .execution("01abc", "rb", "ns/dep");
        let prev = "ab".repeat(32);
        let ts = "2026-11-27T10:00:00.123456Z";
        let (data, hash) = event.seal_stored(7, ts, &prev);
        assert_eq!(
            hex::encode(hash),
            "0280bbd561b88929bcb2a65f1c4a2d6f73ff52a30a7e2f83f22c0abb94c70148"
        );
        // Stored: `data` as canonical JSON, the rest in columns.
        assert_eq!(data, canonical_json(&event.data));
        let stored = Stored {
            seq: 7,
            ts_us: DateTime::parse_from_rfc3339(ts).unwrap().timestamp_micros(),
            kind: event.kind.to_string(),
            actor: event.actor.clone(),
            execution_id: event.execution_id.clone(),
            runbook: event.runbook.clone(),
            target: event.target.clone(),
            data,
            hash: hash.to_vec(),
        };
        let prev_bytes = hex::decode(&prev).unwrap();
        let record = Record::from_stored(stored, Some(&prev_bytes)).unwrap();
        assert_eq!(record.ts, ts, "microsecond timestamps read back as written");
        assert_eq!(record.compute_hash(), record.hash);
        assert_eq!(verify_from(&record, 7, &prev), Ok(()));
        assert_eq!(record, event.seal(7, DateTime::parse_from_rfc3339(ts).unwrap().to_utc(), &prev));
    }

    #[test]
    fn top_level_nulls_are_dropped_and_nested_ones_kept() {
        let mut data = json!({"error": null, "output": {"x": null}, "n": 0});
        without_nulls(&mut data);
        assert_eq!(data, json!({"output": {"x": null}, "n": 0}));
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn tampering_names_the_first_bad_record() {
        let mut changed = chain(5);
        changed[2].data = json!({"n": 99});
        assert_eq!(verify(&changed).unwrap_err().seq, 3);

        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(verify(&removed).unwrap_err().seq, 3);

        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert_eq!(verify(&swapped).unwrap_err().seq, 3);

        // Renumbering after a deletion still breaks the chain.
        let mut renumbered = chain(5);
        renumbered.remove(1);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert_eq!(verify(&renumbered).unwrap_err().seq, 2);
    }
}
