//! `pitcrew approve ID` and `pitcrew deny ID`.

use std::path::Path;

use super::{Exit, Failure, Output, output};
use crate::store::StoreError;

#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    /// Execution id (as `run` printed it), or a unique prefix of it (4 characters or more)
    #[arg(value_parser = super::execution_id)]
    pub id: String,
    /// Only approve; let `serve` run it
    #[arg(long)]
    pub detach: bool,
    /// table: the execution id on stdout once run here; json: the execution as `show` gives it
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct DenyArgs {
    /// Execution id (as `run` printed it), or a unique prefix of it (4 characters or more)
    #[arg(value_parser = super::execution_id)]
    pub id: String,
    /// Why, for the audit and whoever asked
    #[arg(long)]
    pub reason: Option<String>,
    /// table: nothing on stdout; json: the denied execution as `show` gives it
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

fn explain(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::NotFound(id) => Failure::usage(format!("no execution {id}")),
        StoreError::WrongState { id, state } => Failure::usage(format!("execution {id} is {state}, not pending_approval")),
        // The two-person rule or the runbook's permissions said no: exit 3,
        // like any other blocked request.
        e @ (StoreError::SelfApproval { .. } | StoreError::NotPermitted(_)) => Failure {
            exit: Exit::Blocked,
            message: e.to_string(),
        }
        .into(),
        other => other.into(),
    }
}

pub fn approve(config_path: Option<&Path>, args: ApproveArgs) -> anyhow::Result<Exit> {
    let engine = super::runtime::engine_over_existing(config_path)?;
    let actor = super::runtime::user_actor();
    super::runtime::tokio().block_on(async move {
        let id = super::runtime::resolve_id(&*engine.store, &args.id).await?;
        engine.approve(&id, &actor).await.map_err(explain)?;
        eprintln!("approved {id} as {actor}");
        if args.detach {
            if args.output == Output::Json {
                print!("{}", output::json(&engine.store.execution(&id).await?));
            }
            return Ok(Exit::Done);
        }
        let exit = super::run::run_claimed(&engine, &id).await;
        // A failure notice goes out in the background: wait for it before exiting.
        engine.settle().await;
        let exit = exit?;
        super::run::report(&engine, &id, args.output).await?;
        Ok(exit)
    })
}

pub fn deny(config_path: Option<&Path>, args: DenyArgs) -> anyhow::Result<Exit> {
    // The runbooks too: their permissions say who may deny.
    let engine = super::runtime::engine_over_existing(config_path)?;
    let actor = super::runtime::user_actor();
    let rt = super::runtime::tokio();
    let id = rt.block_on(super::runtime::resolve_id(&*engine.store, &args.id))?;
    rt.block_on(engine.deny(&id, &actor, args.reason)).map_err(explain)?;
    eprintln!("denied {id} as {actor}");
    if args.output == Output::Json {
        print!("{}", output::json(&rt.block_on(engine.store.execution(&id))?));
    }
    Ok(Exit::Done)
}
