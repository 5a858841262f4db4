//! `pitcrew escalations` and `pitcrew reset RUNBOOK TARGET`.

use std::path::Path;

use super::{Exit, Failure, Output, output};

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct ResetArgs {
    /// Runbook name, as `pitcrew escalations` shows it
    pub runbook: String,
    /// Target, as `pitcrew escalations` shows it
    pub target: String,
}

pub fn list(config_path: Option<&Path>, args: ListArgs) -> anyhow::Result<Exit> {
    let (_, store) = super::runtime::existing_store_only(config_path)?;
    let breakers = super::runtime::tokio().block_on(store.breakers())?;
    match args.output {
        Output::Json => print!("{}", output::json(&breakers)),
        Output::Table => {
            let rows: Vec<Vec<String>> = breakers
                .iter()
                .map(|b| vec![b.runbook.clone(), b.target.clone(), b.tripped_at.to_rfc3339(), b.reason.clone()])
                .collect();
            print!("{}", output::table(&["RUNBOOK", "TARGET", "TRIPPED", "REASON"], &rows));
        }
    }
    Ok(Exit::Done)
}

pub fn reset(config_path: Option<&Path>, args: ResetArgs) -> anyhow::Result<Exit> {
    let (_, store) = super::runtime::existing_store_only(config_path)?;
    let actor = super::runtime::user_actor();
    let reset = super::runtime::tokio().block_on(store.reset_breaker(&args.runbook, &args.target, &actor))?;
    if !reset {
        return Err(Failure::usage(format!(
            "no tripped breaker for {} on {}",
            args.runbook, args.target
        )));
    }
    eprintln!("re-armed {} on {}", args.runbook, args.target);
    Ok(Exit::Done)
}
