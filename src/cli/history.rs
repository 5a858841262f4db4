//! `pitcrew executions` and `pitcrew show ID`.

use std::path::Path;

use super::{Exit, Failure, Output, output};
use crate::store::{ExecutionFilter, State};

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only executions in this state
    #[arg(long)]
    pub status: Option<String>,
    /// Only executions of this runbook
    #[arg(long)]
    pub runbook: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Execution id, or a unique prefix of it (4 characters or more)
    #[arg(value_parser = super::execution_id)]
    pub id: String,
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn parse_state(s: &str) -> anyhow::Result<State> {
    State::parse(s).ok_or_else(|| {
        let valid: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        Failure::usage(format!("unknown status {s:?}; one of {}", valid.join(", ")))
    })
}

pub fn list(config_path: Option<&Path>, args: ListArgs) -> anyhow::Result<Exit> {
    let state = args.status.as_deref().map(parse_state).transpose()?;
    let (_, store) = super::runtime::existing_store_only(config_path)?;
    let list = super::runtime::tokio().block_on(store.executions(ExecutionFilter {
        state,
        runbook: args.runbook,
        fingerprint: None,
        limit: args.limit,
        ..Default::default()
    }))?;
    match args.output {
        Output::Json => print!("{}", output::json(&list)),
        Output::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        e.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        e.runbook.clone(),
                        e.target.clone(),
                        format!("{}{}", e.state, if e.dry_run { " (dry)" } else { "" }),
                        e.actor.clone(),
                        e.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ID", "CREATED (UTC)", "RUNBOOK", "TARGET", "STATE", "ACTOR", "REASON"], &rows)
            );
        }
    }
    Ok(Exit::Done)
}

pub fn show(config_path: Option<&Path>, args: ShowArgs) -> anyhow::Result<Exit> {
    let (_, store) = super::runtime::existing_store_only(config_path)?;
    let rt = super::runtime::tokio();
    let id = rt.block_on(super::runtime::resolve_id(&*store, &args.id))?;
    let exec = rt.block_on(store.execution(&id)).map_err(|e| match e {
        // Pruned since it was resolved.
        crate::store::StoreError::NotFound(id) => Failure::usage(format!("no execution {id}")),
        other => other.into(),
    })?;
    if args.output == Output::Json {
        print!("{}", output::json(&exec));
        return Ok(Exit::Done);
    }
    let v = |s: &str| output::visible(s).into_owned();
    println!("execution {}", exec.id);
    println!("  runbook   {}", v(&exec.runbook));
    println!("  target    {}", v(&exec.target));
    println!(
        "  state     {}{}",
        exec.state,
        exec.reason.as_deref().map(|r| format!(" — {}", v(r))).unwrap_or_default()
    );
    println!("  actor     {}", v(&exec.actor));
    println!("  dry run   {}", exec.dry_run);
    println!("  created   {}", exec.created_at.to_rfc3339());
    if let Some(a) = &exec.alert {
        println!(
            "  alert     {} {} (fingerprint {})",
            v(a.name()),
            a.status.as_str(),
            v(&a.fingerprint)
        );
    }
    if !exec.params.is_empty() {
        let params = serde_json::Value::Object(exec.params.clone()).to_string();
        println!("  params    {}", output::visible_json(&params));
    }
    if !exec.steps.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = exec
            .steps
            .iter()
            .map(|s| {
                let took = s
                    .finished_at
                    .map(|f| format!("{:.2}s", (f - s.started_at).num_milliseconds() as f64 / 1000.0))
                    .unwrap_or_default();
                let detail = s
                    .error
                    .clone()
                    .or_else(|| s.output.as_ref().map(|o| o.to_string()))
                    .unwrap_or_default();
                let detail = output::cut(&detail, 100);
                vec![
                    format!("{:?}", s.phase).to_lowercase(),
                    s.name.clone(),
                    s.action.clone(),
                    // Stored from 0; people (and the timeline's "attempt 2") count from 1.
                    (s.attempt + 1).to_string(),
                    s.state.as_str().into(),
                    took,
                    detail,
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["PHASE", "STEP", "ACTION", "TRY", "STATE", "TOOK", "DETAIL"], &rows)
        );
    }
    Ok(Exit::Done)
}
