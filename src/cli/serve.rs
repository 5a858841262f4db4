//! `pitcrew serve`: webhook receiver, executor and API in one process.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Exit, Failure};
use crate::checkpoint::Checkpointer;
use crate::server::AppState;
use crate::store::Health;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Listen address (overrides the config's `listen`)
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Executions run at once, across all runbooks. Runs mostly wait on the
    /// APIs they call, and per-target locks, rate limits and the storm brake
    /// bound what they may do, so this sizes throughput, not blast radius.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let engine = super::runtime::serving_engine(config_path)?;
    let config = engine.config().clone();
    let listen = args.listen.unwrap_or(config.listen);
    if !listen.ip().is_loopback() && config.webhook_token.is_none() && !config.insecure_allow_remote {
        return Err(Failure::usage(format!(
            "refusing to listen on {listen} without auth.webhook_token: set a token, listen on loopback, or set auth.insecure_allow_remote: true"
        )));
    }
    if !listen.ip().is_loopback() && config.tokens.is_empty() && !config.insecure_allow_remote {
        return Err(Failure::usage(format!(
            "refusing to serve the API on {listen} without auth.tokens (or auth.insecure_allow_remote: true)"
        )));
    }
    // The key is read before anything starts, so a missing or bad key is a
    // refusal to start (exit 2), not a server that anchors nothing.
    let checkpointer = match &config.checkpoint {
        Some(c) => Some((
            Arc::new(
                Checkpointer::from_config(c, engine.store.clone())
                    .map_err(|e| Failure::usage(format!("audit.checkpoint: {:#}", anyhow::Error::new(e))))?,
            ),
            c.every.std(),
        )),
        None => None,
    };
    raise_open_files(config.server.max_connections);
    super::runtime::tokio().block_on(async move {
        // Bound first: a serve that cannot listen records nothing.
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| Failure::usage(format!("cannot listen on {listen}: {e}")))?;
        let loaded = crate::engine::config_loaded(&config, &engine.runbooks(), "pitcrew", None);
        // Both writes at once ride one group commit: one fsync to ready.
        // (config.loaded is queued first, so it precedes every later record.)
        let (recorded, recovery) = tokio::join!(engine.store.record(vec![loaded]), engine.recover());
        recorded?;
        let recovery = recovery?;
        if !recovery.resumed.is_empty() || !recovery.unknown.is_empty() {
            tracing::warn!(resumed = recovery.resumed.len(), unknown = recovery.unknown.len(), "recovered executions interrupted by a crash");
        }
        // Before the log line that says we are up: SIGHUP's default action
        // would end the process.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let reloads = tokio::spawn(reload_on_hangup(engine.clone(), hangup));
        tracing::info!(address = %listener.local_addr()?, runbooks = engine.runbooks().runbooks.len(), "pitcrew listening");
        let state = Arc::new(AppState::new(engine.clone()));
        let workers = tokio::spawn(engine.clone().run_workers(args.workers));
        let background = tokio::spawn(background(engine.clone()));
        // The first tick is at once: the head now holds `config.loaded`.
        let checkpoints = checkpointer
            .as_ref()
            .map(|(c, every)| tokio::spawn(c.clone().run(*every, engine.shutdown.clone())));
        let drain_state = state.clone();
        let shutdown_engine = engine.clone();
        let store_stopped: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let stopped_reason = store_stopped.clone();
        crate::server::serve(listener, state, async move {
            tokio::select! {
                () = signal() => tracing::info!("shutting down: finishing in-flight steps"),
                why = stopped(&shutdown_engine) => {
                    tracing::error!(reason = %why, "the state store stopped and cannot continue; exiting so that the supervisor restarts pitcrew");
                    *stopped_reason.lock().expect("reason lock") = Some(why);
                }
            }
            drain_state.draining.store(true, Ordering::SeqCst);
            shutdown_engine.shutdown.cancel();
        })
        .await?;
        background.abort();
        reloads.abort();
        let store_stopped = store_stopped.lock().expect("reason lock").take();
        if let Some(why) = store_stopped {
            // Nothing can be recorded any more: do not wait out long steps
            // (their ends are lost either way; the restart recovers them).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), workers).await;
            return Err(anyhow::anyhow!("the state store stopped: {why}"));
        }
        let _ = workers.await;
        // After the workers settled, so it covers every record this process wrote.
        if let (Some((checkpointer, _)), Some(task)) = (&checkpointer, checkpoints) {
            let _ = task.await;
            // Replicas: the one holding the chores signs, as in `Checkpointer::run`.
            let tick = async {
                match engine.store.lead_chores().await {
                    true => checkpointer.tick().await,
                    false => Ok(None),
                }
            };
            match tick.await {
                Ok(Some(c)) => tracing::info!(seq = c.seq, "final audit checkpoint written"),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %crate::diag::chain(&e), kind = e.kind(), "final audit checkpoint not written"),
            }
        }
        Ok(Exit::Done)
    })
}

/// `server.max_connections` open sockets need as many file descriptors, plus
/// the store's, the pipes of running steps and the clients': a common soft
/// limit of 1024 would make the default of 1024 connections fail to accept.
/// The soft limit is raised toward the hard one (never above it).
fn raise_open_files(connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = connections as u64 + 1024;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < wanted => {
            let to = wanted.min(hard);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, to, hard) {
                tracing::warn!(error = %e, soft, "cannot raise the open-files limit");
            } else if to < wanted {
                tracing::warn!(
                    limit = to,
                    connections,
                    "the open-files limit is below what server.max_connections needs"
                );
            }
        }
        _ => {}
    }
}

/// Resolves when the store stopped for good, with why.
async fn stopped(engine: &crate::engine::Engine) -> String {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Health::Stopped(why) = engine.store.health().await {
            return why;
        }
    }
}

/// SIGHUP reloads runbooks and plugins; the engine logs what came of it.
async fn reload_on_hangup(engine: Arc<crate::engine::Engine>, hangup: std::io::Result<tokio::signal::unix::Signal>) {
    let mut hangup = match hangup {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGHUP: reload only by POST /-/reload");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        let _ = engine.reload("pitcrew", "SIGHUP").await;
    }
}

async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Approval timeouts, recovery of work abandoned by dead CLI runs, budgets,
/// history retention.
async fn background(engine: Arc<crate::engine::Engine>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut budget_due = tokio::time::Instant::now();
    let mut prune_due = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        // Replicas sharing a store take turns at the chores that write for
        // everyone; recovery and budgets are every replica's own (recovery
        // is serialised in the store, and each replica decides from its own
        // budget cache).
        let lead = engine.store.lead_chores().await;
        if lead {
            match engine.store.expire_approvals().await {
                Ok(expired) if !expired.is_empty() => tracing::info!(count = expired.len(), "pending approvals timed out"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot expire approvals"),
            }
            // Runs whose effectiveness windows closed with nothing arriving.
            match engine.store.judge_effectiveness().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(judged = n, "judged the effectiveness of runs"),
                Err(e) => tracing::error!(error = %e, "cannot judge the effectiveness of runs"),
            }
        }
        match engine.recover().await {
            Ok(r) if !r.resumed.is_empty() || !r.unknown.is_empty() => engine.queued_elsewhere(),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "recovery check failed"),
        }
        if tokio::time::Instant::now() >= budget_due && !engine.config().slos.is_empty() {
            for b in engine.budgets.refresh(chrono::Utc::now()).await {
                engine.metrics.budget(&b.slo, b.remaining);
            }
            budget_due = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        }
        if lead && tokio::time::Instant::now() >= prune_due {
            match engine.prune_history().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(executions = n, "pruned ended executions past retention"),
                Err(e) => tracing::error!(error = %e, "cannot prune history"),
            }
            prune_due = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        }
    }
}
