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

/// Event kinds (SPEC §7); more may be added.
pub mod kind {
    pub const ALERT_RECEIVED: &str = "alert.received";
    pub const ALERT_DUPLICATE: &str = "alert.duplicate";
    pub const RUNBOOK_MATCHED: &str = "runbook.matched";
    pub const GUARDRAIL_DECISION: &str = "guardrail.decision";
    pub const EXECUTION_STARTED: &str = "execution.started";
    pub const STEP_STARTED: &str = "step.started";
    pub const STEP_FINISHED: &str = "step.finished";
    pub const EXECUTION_FINISHED: &str = "execution.finished";
    pub const APPROVAL_GRANTED: &str = "approval.granted";
    pub const APPROVAL_DENIED: &str = "approval.denied";
    pub const CONFIG_LOADED: &str = "config.loaded";
    pub const OVERRIDE: &str = "override";
    pub const EXECUTION_RECOVERED: &str = "execution.recovered";
    pub const ESCALATION_RESET: &str = "escalation.reset";
    pub const NOTIFICATION: &str = "notification";
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
            ts: ts.to_rfc3339_opts(SecondsFormat::Micros, true),
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
}

impl Record {
    pub fn compute_hash(&self) -> String {
        let mut v = serde_json::to_value(self).expect("records serialise");
        if let Value::Object(map) = &mut v {
            map.remove("hash");
        }
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash.as_bytes());
        hasher.update(b"\n");
        hasher.update(canonical_json(&v).as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace.
/// Written out by hand so the hash never depends on serde_json's map order
/// feature flags.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[*k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
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
            reason: "hash does not match the record's content (the record was changed)".into(),
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
