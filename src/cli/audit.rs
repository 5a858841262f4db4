//! `pitcrew audit verify | timeline | export | keygen`.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::Value;

use super::output::{csv_cell, csv_json_cell, visible};
use super::{Exit, Failure};
use crate::audit::Record;
use crate::server::parse_time;
use crate::store::{AuditFilter, StoreError};

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
    /// Only the records of this execution (its id, or a unique prefix of it)
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
    /// Only the records of this execution (its id, or a unique prefix of it)
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
    // An id no execution has is taken as it is: the audit log keeps the
    // records of executions pruned since (only whole ids find those).
    let expand = |given: Option<String>| -> anyhow::Result<Option<String>> {
        let Some(given) = given else { return Ok(None) };
        match rt.block_on(store.resolve_id(&given)) {
            Ok(id) => Ok(Some(id)),
            Err(StoreError::NotFound(_)) => Ok(Some(given)),
            Err(e) => Err(super::runtime::unresolved(e)),
        }
    };
    let command = match command {
        Command::Export(args) => Command::Export(ExportArgs {
            execution: expand(args.execution)?,
            ..args
        }),
        Command::Timeline(args) => Command::Timeline(TimelineArgs {
            execution: expand(args.execution)?,
            ..args
        }),
        other => other,
    };
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

/// `lead` and, when there is one, `: reason` (no dangling separator).
fn with_reason(lead: String, reason: &Value) -> String {
    match reason.as_str().map(str::trim) {
        Some(r) if !r.is_empty() => format!("{lead}: {r}"),
        _ => lead,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Labels other than `alertname`, as `k=v, …`.
fn other_labels(labels: &Value) -> String {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "alertname")
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn alertname(d: &Value) -> String {
    // Records written since alerts are stored once name it in their labels only.
    text(if d["alertname"].is_null() {
        &d["labels"]["alertname"]
    } else {
        &d["alertname"]
    })
}

fn describe(r: &Record) -> (String, String) {
    let d = &r.data;
    let s = text;
    match r.kind.as_str() {
        "alert.received" | "alert.duplicate" => {
            let what = if r.kind == "alert.received" {
                "Alert received"
            } else {
                "Duplicate notification"
            };
            (
                what.into(),
                format!(
                    "**{}** {} ({}); fingerprint `{}`",
                    alertname(d),
                    s(&d["status"]),
                    other_labels(&d["labels"]),
                    s(&d["fingerprint"])
                ),
            )
        }
        "alert.reconsidered" => ("Alert decided again".into(), format!("{} re-sent", s(&d["status"]))),
        "runbook.matched" => ("Runbook matched".into(), format!("params {}", d["params"])),
        "guardrail.decision" => {
            let verdict = s(&d["verdict"]).replace('_', " ");
            let mut text = with_reason(format!("**{verdict}** ({})", s(&d["decided_by"])), &d["reason"]);
            if d["dry_run"] == Value::Bool(true) {
                text.push_str(" — dry run");
            }
            ("Guardrails".into(), text)
        }
        // Which worker process ran it is for the logs, not the postmortem.
        "execution.started" => (
            "Execution started".into(),
            if d["resumed"] == Value::Bool(true) {
                "resumed after a restart".into()
            } else {
                String::new()
            },
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
        "execution.finished" => (
            "Execution finished".into(),
            with_reason(format!("**{}**", s(&d["state"])), &d["reason"]),
        ),
        "approval.granted" => ("Approved".into(), format!("by {} (requested by {})", r.actor, s(&d["requester"]))),
        "approval.refused" => ("Approval refused".into(), with_reason(r.actor.clone(), &d["reason"])),
        "access.refused" => (format!("Refused ({})", s(&d["action"])), with_reason(r.actor.clone(), &d["reason"])),
        "approval.denied" => ("Denied".into(), with_reason(format!("by {}", r.actor), &d["reason"])),
        "override" => (
            "Override".into(),
            with_reason(format!("guardrails skipped {}", d["skipped"]), &d["reason"]),
        ),
        "config.loaded" => {
            let count = d["runbooks"].as_object().map(|m| m.len()).unwrap_or(0);
            let how = match d["reload"].as_str() {
                Some(via) => format!(", reloaded ({via})"),
                None => String::new(),
            };
            ("Config loaded".into(), format!("{count} runbooks{how}"))
        }
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

/// An incident: an alert and what came of it, or a run nobody's alert
/// started, or (`Other`) what concerns pitcrew itself.
enum Subject<'r> {
    Alert {
        fingerprint: String,
        starts_at: String,
        /// Its first `alert.received` (or, when that is outside the range,
        /// the first record that names it).
        first: Option<&'r Record>,
    },
    /// A run with no alert: asked for by this actor, or (None) one whose
    /// first records are outside the range.
    Manual(Option<String>),
    Other,
}

struct Section<'r> {
    subject: Subject<'r>,
    records: Vec<&'r Record>,
    /// Executions in the order they appear.
    runs: Vec<String>,
}

/// Groups records into sections, each in record order; sections in the
/// order of their first record, the `Other` section last.
fn sections(records: &[Record]) -> Vec<Section<'_>> {
    let mut out: Vec<Section<'_>> = Vec::new();
    let mut by_run: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut other = Section {
        subject: Subject::Other,
        records: Vec::new(),
        runs: Vec::new(),
    };
    // The newest section of each fingerprint, for the runs its alert started.
    let mut by_fingerprint: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in records {
        let fingerprint = r.data["fingerprint"].as_str().map(str::to_string);
        let index = if let Some(i) = r.execution_id.as_deref().and_then(|id| by_run.get(id)) {
            Some(*i)
        } else if r.kind.starts_with("alert.") && fingerprint.is_some() {
            let fingerprint = fingerprint.clone().unwrap_or_default();
            let starts_at = text(&r.data["startsAt"]);
            let found = out.iter().rposition(
                |s| matches!(&s.subject, Subject::Alert { fingerprint: f, starts_at: at, .. } if *f == fingerprint && *at == starts_at),
            );
            let i = found.unwrap_or_else(|| {
                out.push(Section {
                    subject: Subject::Alert {
                        fingerprint: fingerprint.clone(),
                        starts_at,
                        first: None,
                    },
                    records: Vec::new(),
                    runs: Vec::new(),
                });
                out.len() - 1
            });
            if let Subject::Alert { first, .. } = &mut out[i].subject
                && first.is_none()
                && r.kind == "alert.received"
            {
                *first = Some(r);
            }
            by_fingerprint.insert(fingerprint, i);
            Some(i)
        } else if let Some(id) = &r.execution_id {
            let i = match fingerprint.as_ref().and_then(|f| by_fingerprint.get(f)) {
                Some(i) => *i,
                None => {
                    out.push(Section {
                        subject: match fingerprint {
                            Some(f) => Subject::Alert {
                                fingerprint: f,
                                starts_at: String::new(),
                                first: None,
                            },
                            None => Subject::Manual((r.kind == "guardrail.decision").then(|| r.actor.clone())),
                        },
                        records: Vec::new(),
                        runs: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            by_run.insert(id, i);
            out[i].runs.push(id.clone());
            Some(i)
        } else {
            None
        };
        match index {
            Some(i) => out[i].records.push(r),
            None => other.records.push(r),
        }
    }
    if !other.records.is_empty() {
        out.push(other);
    }
    out
}

fn ms_between(from: &str, to: &str) -> Option<i64> {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    Some((parse(to)? - parse(from)?).num_milliseconds())
}

/// `850 ms`, `12.3 s`, `4 min 12 s`, `2 h 5 min`.
fn human(ms: i64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000)
    }
}

fn time(ts: &str) -> String {
    ts.replace('T', " ").trim_end_matches('Z').chars().take(23).collect()
}

/// What came of one run: its end, or where it stands.
fn run_outcome(records: &[&Record], id: &str, alert_at: Option<&str>) -> String {
    let of_run: Vec<&&Record> = records.iter().filter(|r| r.execution_id.as_deref() == Some(id)).collect();
    let place = of_run
        .first()
        .map(|r| format!("{} on {}", r.runbook.as_deref().unwrap_or("?"), r.target.as_deref().unwrap_or("?")))
        .unwrap_or_default();
    let decision = of_run.iter().rfind(|r| r.kind == "guardrail.decision");
    let end = of_run.iter().rfind(|r| r.kind == "execution.finished");
    let outcome = match (end, decision) {
        (Some(end), _) => {
            let state = text(&end.data["state"]);
            // The reason in full is in the table; here only what fits a line.
            let reason = text(&end.data["reason"]);
            let why = if reason.is_empty() {
                String::new()
            } else if reason.chars().count() < LONG {
                format!(" ({reason})")
            } else if let Some(step) = reason
                .strip_prefix("step `")
                .and_then(|r| r.split_once("` failed"))
                .map(|(step, _)| step)
            {
                format!(" at step `{step}`")
            } else {
                String::new()
            };
            let timing = match alert_at.and_then(|at| ms_between(at, &end.ts)) {
                Some(ms) if state == "succeeded" => format!(", {} from alert to fix", human(ms)),
                Some(ms) => format!(", {} after the alert", human(ms)),
                None => String::new(),
            };
            format!("**{state}**{why}{timing}")
        }
        (None, Some(d)) => match d.data["verdict"].as_str() {
            Some("blocked") => with_reason(format!("**blocked** by {}", text(&d.data["decided_by"])), &d.data["reason"]),
            Some("pending_approval") => "**waiting for approval**".into(),
            _ => "not finished in this timeline".into(),
        },
        (None, None) => "not finished in this timeline".into(),
    };
    md(&format!("`{id}` {place}: {outcome}"))
}

fn section_heading(n: usize, section: &Section<'_>) -> String {
    match &section.subject {
        Subject::Alert { fingerprint, first, .. } => match first {
            Some(r) => {
                let labels = other_labels(&r.data["labels"]);
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!(" — {labels}")
                };
                // Alert text is data: shown escaped, never as Markdown.
                let title = md(&format!("{} {}{labels}", alertname(&r.data), text(&r.data["status"])));
                format!(
                    "## {n}. {title}\n\nAlert fingerprint `{}`, received {}.\n",
                    md(fingerprint),
                    time(&r.ts)
                )
            }
            None => format!(
                "## {n}. Alert `{}`\n\nNo `alert.received` record of it in this timeline.\n",
                md(fingerprint)
            ),
        },
        Subject::Manual(Some(actor)) => format!("## {n}. Run asked for by {}\n", md(actor)),
        Subject::Manual(None) => format!("## {n}. A run that started before this timeline\n"),
        Subject::Other => "## Other records\n".to_string(),
    }
}

/// Errors at least this long are shown once per section; later records
/// that repeat one (the run's end, its notice) point back to it.
const LONG: usize = 40;

fn section_body(section: &Section<'_>) -> String {
    let mut out = String::new();
    let alert_at = match &section.subject {
        Subject::Alert { first: Some(r), .. } => Some(r.ts.as_str()),
        _ => None,
    };
    if let (Some(at), Subject::Alert { fingerprint, .. }) = (alert_at, &section.subject) {
        let resolved = section
            .records
            .iter()
            .find(|r| r.kind == "alert.received" && r.data["status"] == "resolved" && r.data["fingerprint"] == fingerprint.as_str());
        if let Some(r) = resolved.and_then(|r| ms_between(at, &r.ts).map(|ms| (r, ms))) {
            out.push_str(&format!("Resolved {} ({} after it was received).\n", time(&r.0.ts), human(r.1)));
        }
    }
    if section.runs.is_empty() {
        if !matches!(section.subject, Subject::Other) {
            out.push_str("\nNo runbook matched: pitcrew did nothing.\n");
        }
    } else {
        out.push('\n');
        for id in &section.runs {
            out.push_str(&format!("- {}\n", run_outcome(&section.records, id, alert_at)));
        }
    }
    out.push_str("\n| Time (UTC) | Event | Execution | Runbook / target | Actor | Details |\n|---|---|---|---|---|---|\n");
    let mut shown: Vec<String> = Vec::new();
    for r in &section.records {
        let (what, mut detail) = describe(r);
        for earlier in &shown {
            detail = detail.replace(earlier.as_str(), "(the error above)");
        }
        let long = |v: &Value| v.as_str().filter(|e| e.chars().count() >= LONG).map(str::to_string);
        let repeated = match r.kind.as_str() {
            "step.finished" => long(&r.data["error"]),
            "execution.finished" => long(&r.data["reason"]),
            _ => None,
        };
        if let Some(e) = repeated {
            shown.push(e);
            // Longest first, so a reason that quotes an error is replaced whole.
            shown.sort_by_key(|e| std::cmp::Reverse(e.len()));
        }
        let place = match (&r.runbook, &r.target) {
            (Some(rb), Some(t)) => format!("{rb} / {t}"),
            (Some(rb), None) => rb.clone(),
            _ => String::new(),
        };
        let execution = r.execution_id.as_deref().map(|id| format!("`{id}`")).unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            md(&time(&r.ts)),
            md(&what),
            md(&execution),
            md(&place),
            md(&r.actor),
            md(&detail)
        ));
    }
    out
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
        Ok(n) => out.push_str(&format!("Hash chain verified: {n} records intact.\n")),
        Err(b) => out.push_str(&format!(
            "**Hash chain BROKEN at seq {}: {}** — do not trust records from there on.\n",
            b.seq, b.reason
        )),
    }
    let mut n = 0;
    for section in sections(records) {
        if !matches!(section.subject, Subject::Other) {
            n += 1;
        }
        out.push('\n');
        out.push_str(&section_heading(n, &section));
        out.push_str(&section_body(&section));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_the_scale_they_are() {
        assert_eq!(human(850), "850 ms");
        assert_eq!(human(12_340), "12.3 s");
        assert_eq!(human(252_000), "4 min 12 s");
        assert_eq!(human(7_500_000), "2 h 5 min");
    }

    #[test]
    fn a_missing_reason_leaves_no_separator() {
        assert_eq!(with_reason("by user:x".into(), &Value::Null), "by user:x");
        assert_eq!(with_reason("by user:x".into(), &Value::String(" ".into())), "by user:x");
        assert_eq!(with_reason("by user:x".into(), &Value::String("no".into())), "by user:x: no");
    }
}
