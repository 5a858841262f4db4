//! `pitcrew approve ID` and `pitcrew deny ID`.

use std::path::Path;

use super::{Exit, Failure};
use crate::store::StoreError;

#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    pub id: String,
    /// Only approve; let `serve` run it
    #[arg(long)]
    pub detach: bool,
}

#[derive(clap::Args, Debug)]
pub struct DenyArgs {
    pub id: String,
    #[arg(long)]
    pub reason: Option<String>,
}

fn explain(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::NotFound(id) => Failure::usage(format!("no execution {id}")),
        StoreError::WrongState { id, state } => Failure::usage(format!("execution {id} is {state}, not pending_approval")),
        // A guardrail said no: exit 3, like any other blocked request.
        e @ StoreError::SelfApproval { .. } => Failure {
            exit: Exit::Blocked,
            message: e.to_string(),
        }
        .into(),
        other => other.into(),
    }
}

pub fn approve(config_path: Option<&Path>, args: ApproveArgs) -> anyhow::Result<Exit> {
    let engine = super::runtime::engine(config_path)?;
    let actor = super::runtime::user_actor();
    super::runtime::tokio().block_on(async move {
        engine
            .store
            .approve(&args.id, &actor, engine.runbooks().may_self_approve())
            .await
            .map_err(explain)?;
        eprintln!("approved {} as {actor}", args.id);
        if args.detach {
            return Ok(Exit::Done);
        }
        let exit = super::run::run_claimed(&engine, &args.id).await;
        // A failure notice goes out in the background: wait for it before exiting.
        engine.settle().await;
        exit
    })
}

pub fn deny(config_path: Option<&Path>, args: DenyArgs) -> anyhow::Result<Exit> {
    let (_, store) = super::runtime::store_only(config_path)?;
    let actor = super::runtime::user_actor();
    super::runtime::tokio()
        .block_on(store.deny(&args.id, &actor, args.reason))
        .map_err(explain)?;
    eprintln!("denied {} as {actor}", args.id);
    Ok(Exit::Done)
}
