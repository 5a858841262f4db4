//! `pitcrew list`: runbooks with triggers, risk and guardrails.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Exit, Output, output};
use crate::runbook::Runbook;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runbook files or folders (default: the config's `runbooks`)
    pub paths: Vec<PathBuf>,
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn trigger_text(rb: &Runbook) -> String {
    match &rb.trigger {
        None => "manual".into(),
        Some(t) => {
            let mut parts = Vec::new();
            if !t.alertnames.is_empty() {
                parts.push(t.alertnames.join("|"));
            }
            parts.extend(t.matchers.iter().map(|m| m.to_string()));
            if t.status != crate::matcher::StatusFilter::Firing {
                parts.push(format!(
                    "status={}",
                    serde_json::to_value(t.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ));
            }
            parts.join(" ")
        }
    }
}

pub fn guardrails_text(rb: &Runbook) -> String {
    let g = &rb.guardrails;
    let mut parts = Vec::new();
    if let Some(c) = g.cooldown {
        parts.push(format!("cooldown={c}"));
    }
    if let Some(r) = g.rate_limit {
        parts.push(format!("rate={r}"));
    }
    if let Some(r) = g.runbook_rate_limit {
        parts.push(format!("runbook_rate={r}"));
    }
    if g.concurrency != 1 {
        parts.push(format!("concurrency={}", g.concurrency));
    }
    if let Some(s) = &g.slo {
        parts.push(format!("slo={s}"));
    }
    if let Some(e) = g.escalate_after {
        parts.push(format!("escalate_after={e}"));
    }
    if g.approval == crate::runbook::Approval::Required {
        parts.push("approval=required".into());
    }
    if g.dry_run {
        parts.push("dry_run".into());
    }
    if let Some(m) = g.min_effectiveness {
        parts.push(format!("min_effectiveness={m}"));
    }
    if parts.is_empty() { "-".into() } else { parts.join(" ") }
}

/// Judged runs per runbook from the store, if there is one. Best effort:
/// listing runbooks must not need the database.
fn judged(config: &crate::config::Config) -> Vec<crate::store::Effectiveness> {
    let read = || -> anyhow::Result<Vec<crate::store::Effectiveness>> {
        let Some(store) = super::runtime::open_store_if_any(config)? else {
            return Ok(Vec::new());
        };
        Ok(super::runtime::tokio().block_on(store.effectiveness())?)
    };
    read().unwrap_or_else(|e| {
        eprintln!("warning: effectiveness not shown: {e:#}");
        Vec::new()
    })
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let config = super::load_config(config_path)?;
    let set = super::load_runbooks(&config, &args.paths)?;
    let judged = judged(&config);
    let line = |rb: &Runbook| {
        judged
            .iter()
            .find(|j| j.runbook == rb.name)
            .map(|j| crate::report::effectiveness_line(j, Some(rb)))
            .unwrap_or_default()
    };
    match args.output {
        Output::Json => {
            let items: Vec<_> = set
                .runbooks
                .iter()
                .map(|rb| {
                    json!({
                        "name": rb.name, "description": rb.description, "owner": rb.owner,
                        "trigger": rb.trigger.as_ref().map(|_| trigger_text(rb)),
                        "risk": rb.risk, "guardrails": rb.guardrails,
                        "steps": rb.steps.iter().map(|s| json!({"name": s.name, "action": s.action.spec().name, "risk": s.risk})).collect::<Vec<_>>(),
                        "file": rb.file, "line": rb.line,
                        "toil_minutes": rb.toil_minutes, "effect": rb.effect, "effectiveness": line(rb),
                    })
                })
                .collect();
            print!("{}", output::json(&items));
        }
        Output::Table => {
            // The EFFECTIVE column appears once some run was judged.
            let any_judged = set.runbooks.iter().any(|rb| line(rb).judged > 0);
            let rows: Vec<Vec<String>> = set
                .runbooks
                .iter()
                .map(|rb| {
                    let mut row = vec![rb.name.clone(), trigger_text(rb), rb.risk.to_string(), guardrails_text(rb)];
                    if any_judged {
                        row.push(crate::report::effectiveness_cell(&line(rb)));
                    }
                    row
                })
                .collect();
            let header: &[&str] = if any_judged {
                &["NAME", "TRIGGER", "RISK", "GUARDRAILS", "EFFECTIVE"]
            } else {
                &["NAME", "TRIGGER", "RISK", "GUARDRAILS"]
            };
            print!("{}", output::table(header, &rows));
        }
    }
    Ok(Exit::Done)
}
