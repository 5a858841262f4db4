//! `pitcrew audit verify | timeline | export | keygen`.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::Value;

use super::output::{csv_cell, csv_json_cell, visible};
use super::{Exit, Failure};
use crate::audit::Record;
use crate::server::parse_time;
use crate::store::AuditFilter;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Check the hash chain, and with --checkpoints that no record a
    /// checkpoint vouches for was deleted or rewritten (exit 5)
    Verify(VerifyArgs),
    /// A Markdown timeline for a postmortem
    Timeline(TimelineArgs),
    /// Raw records
    Export(ExportArgs),
    /// Write a new checkpoint signing key pair: DIR/audit.key (mode 0600) and DIR/audit.pub
    Keygen(KeygenArgs),
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Directory of signed checkpoints (audit.checkpoint.dir of `serve`)
    #[arg(long, value_name = "DIR", requires = "public_key")]
    pub checkpoints: Option<PathBuf>,
    /// The checkpoints' public key (audit.pub from `pitcrew audit keygen`)
    #[arg(long, value_name = "FILE", requires = "checkpoints")]
    pub public_key: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Where to write audit.key and audit.pub (created if missing)
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct TimelineArgs {
    /// Only the records of this execution
    #[arg(long, value_name = "ID", value_parser = super::execution_id)]
    pub execution: Option<String>,
    /// Only the records of the alert with this fingerprint
    #[arg(long, value_name = "FINGERPRINT")]
    pub alert: Option<String>,
    /// From this RFC 3339 time or a duration ago (2h)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Up to this RFC 3339 time or a duration ago (2h)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default)]
pub enum Format {
    /// One JSON record per line
    #[default]
    #[value(alias = "json")]
    Jsonl,
    /// A header line, then one row per record (`data` as JSON)
    Csv,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Record format
    // `--output` like every other command; `--format` was its first name.
    #[arg(long = "output", alias = "format", value_enum, default_value_t)]
    pub output: Format,
    /// From this RFC 3339 time or a duration ago (2h)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Up to this RFC 3339 time or a duration ago (2h)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only the records of this execution
    #[arg(long, value_name = "ID", value_parser = super::execution_id)]
    pub execution: Option<String>,
}

fn filter(
    since: &Option<String>,
    until: &Option<String>,
    execution: Option<String>,
    fingerprint: Option<String>,
) -> anyhow::Result<AuditFilter> {
    let now = Utc::now();
    let time = |t: &Option<String>| t.as_deref().map(|t| parse_time(t, now)).transpose().map_err(Failure::usage);
    Ok(AuditFilter {
        since: time(since)?,
        until: time(until)?,
        execution,
        fingerprint,
        ..Default::default()
    })
}

pub fn run(config_path: Option<&Path>, command: Command) -> anyhow::Result<Exit> {
    // Keygen touches no state: it works without a config or a state dir.
    if let Command::Keygen(args) = command {
        return keygen(&args.dir);
    }
    let (_, store) = super::runtime::existing_store_only(config_path)?;
    let rt = super::runtime::tokio();
    match command {
        Command::Keygen(_) => unreachable!("handled above"),
        Command::Verify(args) => rt.block_on(verify(store.as_ref(), args)),
        Command::Export(args) => {
            let records = rt.block_on(store.audit(filter(&args.since, &args.until, args.execution, None)?))?;
            let mut out = String::new();
            match args.output {
                Format::Jsonl => {
                    for r in &records {
                        out.push_str(&serde_json::to_string(r)?);
                        out.push('\n');
                    }
                }
                Format::Csv => {
                    out.push_str("seq,ts,kind,actor,execution_id,runbook,target,data,prev_hash,hash\n");
                    for r in &records {
                        let cells = [
                            r.seq.to_string(),
                            r.ts.clone(),
                            r.kind.clone(),
                            r.actor.clone(),
                            r.execution_id.clone().unwrap_or_default(),
                            r.runbook.clone().unwrap_or_default(),
                            r.target.clone().unwrap_or_default(),
                            crate::audit::canonical_json(&r.data),
                            r.prev_hash.clone(),
                            r.hash.clone(),
                        ];
                        let shown: Vec<String> = cells
                            .iter()
                            .enumerate()
                            .map(|(i, c)| if i == DATA_COLUMN { csv_json_cell(c) } else { csv_cell(c) })
                            .collect();
                        out.push_str(&shown.join(","));
                        out.push('\n');
                    }
                }
            }
            print!("{out}");
            Ok(Exit::Done)
        }
        Command::Timeline(args) => {
            let records = rt.block_on(store.audit(filter(&args.since, &args.until, args.execution.clone(), args.alert.clone())?))?;
            let verified = rt.block_on(store.verify_audit())?;
            print!("{}", timeline(&records, &args, &verified));
            Ok(Exit::Done)
        }
    }
}

fn keygen(dir: &Path) -> anyhow::Result<Exit> {
    let (key, public) = crate::checkpoint::keygen(dir).map_err(|e| Failure::usage(format!("{:#}", anyhow::Error::new(e))))?;
    eprintln!(
        "wrote {} (private, mode 0600: give it to `serve` as audit.checkpoint.key_file, nowhere else) and {} (public: for `audit verify --public-key`)",
        key.display(),
        public.display()
    );
    Ok(Exit::Done)
}

/// The chain first, as always; then each checkpoint: signed by the key, and
/// its record still there with the hash it had.
async fn verify(store: &dyn crate::store::Store, args: VerifyArgs) -> anyhow::Result<Exit> {
    let end = match store.verify_audit().await? {
        Ok(n) => n,
        Err(broken) => {
            println!("BROKEN at seq {}: {}", broken.seq, broken.reason);
            if args.checkpoints.is_some() {
                eprintln!("note: checkpoints not checked: the chain itself is broken");
            }
            return Ok(Exit::AuditBroken);
        }
    };
    let (Some(dir), Some(public_key)) = (args.checkpoints, args.public_key) else {
        println!("ok: {end} records, hash chain intact");
        eprintln!(
            "note: deleting the newest records cannot be detected without checkpoints (what is left is still an intact chain); \
             configure audit.checkpoint for `serve` and verify with --checkpoints DIR --public-key FILE"
        );
        return Ok(Exit::Done);
    };
    let key = crate::checkpoint::read_verifying_key(&public_key).map_err(|e| Failure::usage(format!("{:#}", anyhow::Error::new(e))))?;
    // A directory or file that cannot be read is bad input (exit 2), not a verdict on the chain.
    let report = crate::checkpoint::verify_dir(&dir, &key, store, end)
        .await
        .map_err(|e| Failure::usage(format!("{:#}", anyhow::Error::new(e))))?;
    if !report.problems.is_empty() {
        for problem in &report.problems {
            println!("BROKEN: {problem}");
        }
        println!(
            "hash chain of the {end} records present is intact, but {} of {} in {} do not vouch for it",
            report.problems.len(),
            plural(report.files, "checkpoint"),
            dir.display()
        );
        return Ok(Exit::AuditBroken);
    }
    match report.newest {
        Some((file, seq)) => println!(
            "ok: {end} records, hash chain intact; {} verified, newest {file} at seq {seq}",
            plural(report.files, "checkpoint")
        ),
        None => {
            println!("ok: {end} records, hash chain intact");
            eprintln!(
                "warning: no checkpoints in {}: deleting the newest records cannot be detected",
                dir.display()
            );
        }
    }
    Ok(Exit::Done)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") }
}

/// The CSV column holding the record's `data` as JSON.
const DATA_COLUMN: usize = 7;

/// A Markdown table cell: shown [`visible`] (which also turns line breaks
/// into `\n`), then Markdown's own escapes, as pipes would break the table.
fn md(s: &str) -> String {
    visible(s).replace('\\', "\\\\").replace('|', "\\|")
}

fn describe(r: &Record) -> (String, String) {
    let d = &r.data;
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match r.kind.as_str() {
        "alert.received" | "alert.duplicate" => {
            let labels = d["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k != "alertname")
                        .map(|(k, v)| format!("{k}={}", s(v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            // Records written since alerts are stored once name it in their labels only.
            let alertname = if d["alertname"].is_null() {
                &d["labels"]["alertname"]
            } else {
                &d["alertname"]
            };
            let what = if r.kind == "alert.received" {
                "Alert received"
            } else {
                "Duplicate notification"
            };
            (
                what.into(),
                format!(
                    "**{}** {} ({labels}); fingerprint `{}`",
                    s(alertname),
                    s(&d["status"]),
                    s(&d["fingerprint"])
                ),
            )
        }
        "runbook.matched" => ("Runbook matched".into(), format!("params {}", d["params"])),
        "guardrail.decision" => {
            let verdict = s(&d["verdict"]).replace('_', " ");
            let mut text = format!("**{verdict}** ({}): {}", s(&d["decided_by"]), s(&d["reason"]));
            if d["dry_run"] == Value::Bool(true) {
                text.push_str(" — dry run");
            }
            ("Guardrails".into(), text)
        }
        "execution.started" => (
            "Execution started".into(),
            format!(
                "worker {}{}",
                s(&d["worker"]),
                if d["resumed"] == Value::Bool(true) { ", resumed" } else { "" }
            ),
        ),
        "step.started" => {
            let attempt = d["attempt"].as_u64().unwrap_or(0);
            let again = if attempt > 0 {
                format!(" (attempt {})", attempt + 1)
            } else {
                String::new()
            };
            (
                "Step started".into(),
                format!("`{}` — {}{again}; input {}", s(&d["step"]), s(&d["action"]), d["input"]),
            )
        }
        "step.finished" => {
            let outcome = s(&d["outcome"]);
            let detail = if d["error"].is_null() {
                d["output"].to_string()
            } else {
                s(&d["error"])
            };
            let detail = super::output::cut(&detail, 300);
            (
                "Step finished".into(),
                format!(
                    "`{}` **{outcome}** after {} ms: {detail}",
                    s(&d["step"]),
                    d["duration_ms"].as_u64().unwrap_or(0)
                ),
            )
        }
        "execution.finished" => ("Execution finished".into(), format!("**{}** {}", s(&d["state"]), s(&d["reason"]))),
        "approval.granted" => ("Approved".into(), format!("by {} (requested by {})", r.actor, s(&d["requester"]))),
        "approval.refused" => ("Approval refused".into(), format!("{}: {}", r.actor, s(&d["reason"]))),
        "approval.denied" => ("Denied".into(), format!("by {}: {}", r.actor, s(&d["reason"]))),
        "override" => (
            "Override".into(),
            format!("guardrails skipped {}: {}", d["skipped"], s(&d["reason"])),
        ),
        "config.loaded" => (
            "Config loaded".into(),
            format!("{} runbooks", d["runbooks"].as_object().map(|m| m.len()).unwrap_or(0)),
        ),
        "execution.recovered" => (
            "Recovered after crash".into(),
            format!(
                "{}: {}",
                s(&d["action"]),
                if d["reason"].is_null() {
                    d["rerun_idempotent_steps"].to_string()
                } else {
                    s(&d["reason"])
                }
            ),
        ),
        "notification" => (
            "Notification".into(),
            format!(
                "{} ({})",
                s(&d["text"]),
                if d["delivered"] == Value::Bool(true) {
                    "delivered"
                } else {
                    "not delivered"
                }
            ),
        ),
        "escalation.reset" => ("Escalation reset".into(), format!("by {}", r.actor)),
        other => (other.to_string(), d.to_string()),
    }
}

pub fn timeline(records: &[Record], args: &TimelineArgs, verified: &Result<u64, crate::audit::Broken>) -> String {
    let mut out = String::from("# pitcrew timeline\n\n");
    let mut scope = Vec::new();
    if let Some(e) = &args.execution {
        scope.push(format!("execution `{e}`"));
    }
    if let Some(a) = &args.alert {
        scope.push(format!("alert fingerprint `{a}`"));
    }
    if let Some(s) = &args.since {
        scope.push(format!("since {s}"));
    }
    if let Some(u) = &args.until {
        scope.push(format!("until {u}"));
    }
    out.push_str(&format!(
        "Scope: {}.  \n",
        if scope.is_empty() {
            "everything".to_string()
        } else {
            scope.join(", ")
        }
    ));
    match (records.first(), records.last()) {
        (Some(first), Some(last)) => out.push_str(&format!("Audit records {}–{} ({} shown).  \n", first.seq, last.seq, records.len())),
        _ => out.push_str("No audit records match.  \n"),
    }
    match verified {
        Ok(n) => out.push_str(&format!("Hash chain verified: {n} records intact.\n\n")),
        Err(b) => out.push_str(&format!(
            "**Hash chain BROKEN at seq {}: {}** — do not trust records from there on.\n\n",
            b.seq, b.reason
        )),
    }
    out.push_str("| Time (UTC) | Event | Runbook / target | Actor | Details |\n|---|---|---|---|---|\n");
    for r in records {
        let (what, detail) = describe(r);
        let time = r.ts.replace('T', " ").trim_end_matches('Z').chars().take(23).collect::<String>();
        let place = match (&r.runbook, &r.target) {
            (Some(rb), Some(t)) => format!("{rb} / {t}"),
            (Some(rb), None) => rb.clone(),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            md(&time),
            md(&what),
            md(&place),
            md(&r.actor),
            md(&detail)
        ));
    }
    out
}
