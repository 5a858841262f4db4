//! `pitcrew run NAME`: a manual run through the same guardrails, engine and
//! audit as automated ones, with live step progress on stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;

use super::output::visible;
use super::{Exit, Failure, Output};
use crate::engine::{Engine, Progress, ProgressFn};
use crate::guard::{CheckVerdict, Decision, Verdict};
use crate::store::{Pending, State, StepState};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runbook name
    pub name: String,
    /// Parameter override, repeatable
    #[arg(long = "param", value_name = "K=V")]
    pub params: Vec<String>,
    /// An alert (payload or one alert) to run against
    #[arg(long, value_name = "FILE")]
    pub alert: Option<PathBuf>,
    /// Decide and record everything, touch nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Skip cooldown, rate limits, budget, storm brake and escalation (needs --reason)
    #[arg(long)]
    pub force: bool,
    /// Why the guardrails are skipped; recorded in the audit with the override
    #[arg(long, requires = "force")]
    pub reason: Option<String>,
    /// table: the execution id on stdout; json: the execution as `show` gives it
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    if args.force && args.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(Failure::usage("--force needs --reason TEXT (the override is audited)"));
    }
    let mut overrides = BTreeMap::new();
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--param {p:?}: expected K=V")))?;
        overrides.insert(k.trim().to_string(), v.to_string());
    }
    let engine = super::runtime::engine(config_path)?;
    let set = engine.runbooks();
    let rb = set.get(&args.name).cloned().ok_or_else(|| {
        let names: Vec<&str> = set.runbooks.iter().map(|r| r.name.as_str()).collect();
        Failure::usage(format!("no runbook `{}`; loaded: {}", args.name, names.join(", ")))
    })?;
    let alert = match &args.alert {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
            let mut alerts =
                crate::alert::parse_alert_file(&text, Utc::now()).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
            if alerts.len() != 1 {
                return Err(Failure::usage(format!(
                    "{}: holds {} alerts; give one",
                    path.display(),
                    alerts.len()
                )));
            }
            alerts.pop()
        }
    };
    let resolved = set
        .resolve(&rb, alert.as_ref(), &overrides)
        .map_err(|e| Failure::usage(format!("{}: {e}", rb.name)))?;
    let actor = super::runtime::user_actor();
    let output = args.output;
    super::runtime::tokio().block_on(async move {
        let ran = admit_and_run(&engine, rb, resolved, actor, alert, args).await;
        // Notices (approval wait, failure) go out in the background; this
        // process must not exit before they are delivered and recorded.
        engine.settle().await;
        let (id, exit) = ran?;
        report(&engine, &id, output).await?;
        Ok(exit)
    })
}

/// What a script captures from stdout: the execution id, or with `--output
/// json` the execution as it now stands (the same object as `show`).
pub async fn report(engine: &Engine, id: &str, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table => println!("{id}"),
        Output::Json => print!("{}", super::output::json(&engine.store.execution(id).await?)),
    }
    Ok(())
}

async fn admit_and_run(
    engine: &Arc<Engine>,
    rb: Arc<crate::runbook::Runbook>,
    resolved: crate::runbook::Resolved,
    actor: String,
    alert: Option<crate::alert::Alert>,
    args: Args,
) -> anyhow::Result<(String, Exit)> {
    let force = args.force.then(|| args.reason.clone().unwrap_or_default());
    let admission = engine.manual_admission(&rb, resolved, actor, args.dry_run, force).await;
    let id = admission.id.clone();
    let decision = engine.admit(admission, alert).await.map_err(|e| match e {
        // The runbook's permissions said no: exit 3, like a guardrail.
        e @ crate::store::StoreError::NotPermitted(_) => Failure {
            exit: Exit::Blocked,
            message: e.to_string(),
        }
        .into(),
        other => anyhow::Error::from(other),
    })?;
    print_decision(&decision);
    match decision.verdict {
        Verdict::Blocked => {
            eprintln!("blocked ({}): {}", decision.decided_by, visible(&decision.reason));
            Ok((id, Exit::Blocked))
        }
        Verdict::PendingApproval => {
            eprintln!(
                "waiting for approval: {}\n  pitcrew approve {id}   |   pitcrew deny {id} --reason ...",
                decision.reason
            );
            Ok((id, Exit::PendingApproval))
        }
        Verdict::Run => {
            let exit = run_claimed(engine, &id).await?;
            Ok((id, exit))
        }
    }
}

fn print_decision(d: &Decision) {
    for c in &d.checks {
        let mark = match c.verdict {
            CheckVerdict::Pass => "ok",
            CheckVerdict::Block => "BLOCK",
            CheckVerdict::Approve => "APPROVE",
            CheckVerdict::Skipped => "skip",
            CheckVerdict::Forced => "FORCED",
        };
        eprintln!("  guardrail {:<18} {:<7} {}", c.guardrail, mark, visible(&c.detail));
    }
}

/// Claims `id` and runs it here, printing progress on stderr; exit code
/// from the outcome.
pub async fn run_claimed(engine: &Arc<Engine>, id: &str) -> anyhow::Result<Exit> {
    let Some(exec) = engine.store.claim(&engine.worker_id, Some(id.to_string())).await? else {
        // Another engine (serve) claimed it first: follow it to the end.
        return follow(engine, id).await;
    };
    eprintln!(
        "execution {id}: {} on {}{}",
        exec.runbook,
        visible(&exec.target),
        if exec.dry_run { " (dry run)" } else { "" }
    );
    let progress: ProgressFn = Arc::new(|p: &Progress| match p {
        Progress::StepStarted {
            name,
            action,
            attempt,
            dry_run,
        } => {
            let again = if *attempt > 0 {
                format!(" (attempt {})", attempt + 1)
            } else {
                String::new()
            };
            eprintln!("  → {name} [{action}]{again}{}", if *dry_run { " dry run" } else { "" });
        }
        Progress::StepFinished {
            name,
            state,
            detail,
            seconds,
        } => {
            let mark = match state {
                StepState::Succeeded => "✓",
                StepState::Skipped => "–",
                _ => "✗",
            };
            eprintln!("  {mark} {name} {} in {seconds:.2}s {}", state.as_str(), visible(detail));
        }
    });
    let claimed = exec.clone();
    // Ctrl-C stops the run here and now, and says so: an interrupted run must
    // not be left `running` for a `serve` to resume behind the operator's back.
    let outcome = tokio::select! {
        outcome = engine.execute(exec, Some(progress)) => outcome?,
        _ = tokio::signal::ctrl_c() => {
            let seen = engine.store.execution(id).await?;
            let in_flight: Vec<_> = seen.steps.iter().filter(|s| s.state == StepState::Started).collect();
            let state = if in_flight.iter().any(|s| !s.idempotent) { State::Unknown } else { State::Cancelled };
            let during = in_flight.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");
            let reason = if during.is_empty() {
                "interrupted by the user (SIGINT)".to_string()
            } else {
                format!("interrupted by the user (SIGINT) during step {during}; its outcome is unknown")
            };
            engine.store.finish(&claimed, Pending::default(), state, Some(reason.clone())).await?;
            engine.run_ended(&claimed, state, Some(&reason));
            eprintln!("{state}: {reason}");
            return Ok(Exit::StepFailed);
        }
    };
    let reason = engine.config().redactor.text(outcome.reason.as_deref().unwrap_or(""));
    eprintln!("{} {}", outcome.state, visible(&reason));
    Ok(exit_for(outcome.state))
}

pub fn exit_for(state: State) -> Exit {
    match state {
        State::Succeeded => Exit::Done,
        State::Blocked => Exit::Blocked,
        State::PendingApproval => Exit::PendingApproval,
        _ => Exit::StepFailed,
    }
}

/// Waits for an execution run by another process to end; if that process
/// dies, recovers the execution and runs the rest here.
async fn follow(engine: &Arc<Engine>, id: &str) -> anyhow::Result<Exit> {
    eprintln!("execution {id} is being run by another pitcrew process; following it");
    let mut polls = 0u32;
    loop {
        let exec = engine.store.execution(id).await?;
        if exec.state.is_final() {
            eprintln!("{} {}", exec.state, visible(exec.reason.as_deref().unwrap_or("")));
            return Ok(exit_for(exec.state));
        }
        polls += 1;
        if polls % 8 == 0 {
            engine.store.recover(Arc::new(crate::engine::claimer_alive)).await?;
            if engine.store.execution(id).await?.state == State::Queued {
                return Box::pin(run_claimed(engine, id)).await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
