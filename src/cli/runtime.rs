//! What every command that touches state needs: config, runbooks, the store
//! and an engine wired to them.

use std::path::Path;
use std::sync::Arc;

use crate::clock::SystemClock;
use crate::engine::Engine;
use crate::store::postgres::PgStore;
use crate::store::sqlite::{Durability, SqliteStore, StateFile};
use crate::store::{Store, StoreError};

use super::Failure;

/// The store the config names: PostgreSQL under `store:`, else the
/// embedded SQLite file in `state_dir`.
pub fn open_store(config: &crate::config::Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.store {
        Some(pg) => Arc::new(PgStore::open(pg, config.redactor.clone(), Arc::new(SystemClock)).map_err(store_failed)?),
        None => Arc::new(SqliteStore::open(&config.state_dir, config.redactor.clone(), Arc::new(SystemClock)).map_err(store_failed)?),
    })
}

fn store_failed(e: StoreError) -> anyhow::Error {
    Failure {
        exit: super::Exit::Usage,
        message: crate::diag::chain(&e),
    }
    .into()
}

/// For commands about what is already recorded (history, the audit log,
/// pending runs, breakers): opening the store would create an empty one, and
/// a typo in `--config` or a run from the wrong folder would then answer
/// "nothing happened" instead of "wrong place". Says where it looked and
/// exits 2.
pub fn open_existing_store(config: &crate::config::Config) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(pg) = &config.store {
        let store = PgStore::open_existing(pg, config.redactor.clone(), Arc::new(SystemClock)).map_err(|e| Failure {
            exit: super::Exit::Usage,
            message: crate::diag::chain(&e),
        })?;
        return Ok(Arc::new(store));
    }
    let db = config.state_db();
    if !db.exists() {
        return Err(Failure::usage(no_state(config)));
    }
    open_store(config)
}

/// The store, if one was ever made with this config; `None` when nothing
/// has been recorded yet (for previews, which then decide without history).
/// Opening it changes nothing.
pub fn open_store_if_any(config: &crate::config::Config) -> anyhow::Result<Option<Arc<dyn Store>>> {
    match &config.store {
        Some(pg) => match PgStore::open_existing(pg, config.redactor.clone(), Arc::new(SystemClock)) {
            Ok(store) => Ok(Some(Arc::new(store))),
            Err(crate::store::StoreError::Refused(_)) => Ok(None),
            Err(e) => Err(Failure {
                exit: super::Exit::Usage,
                message: crate::diag::chain(&e),
            }
            .into()),
        },
        None if config.state_db().exists() => open_store(config).map(Some),
        None => Ok(None),
    }
}

fn no_state(config: &crate::config::Config) -> String {
    let shown = |p: &Path| match std::path::absolute(p) {
        Ok(abs) if abs != p => format!("{} ({})", p.display(), abs.display()),
        _ => p.display().to_string(),
    };
    // `Config::discover` takes --config, then $PITCREW_CONFIG, then
    // ./pitcrew.yaml; a config that came from none of them is the defaults.
    let source = match &config.file {
        Some(file) => format!("config file: {}", shown(file)),
        None => {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into());
            format!(
                "no config file found (looked at --config: not given, $PITCREW_CONFIG: not set, ./pitcrew.yaml: not in {cwd}); using the built-in defaults"
            )
        }
    };
    let db = config.state_db();
    let db = std::path::absolute(&db).unwrap_or(db);
    format!(
        "no state: {} does not exist, so nothing has been recorded with this config (is it the one `serve` runs with?)\n  {source}\n  state_dir: {}",
        db.display(),
        shown(&config.state_dir)
    )
}

/// Refuses, with [`open_existing_store`]'s rule and words, when nothing has
/// been recorded with this config; keeps nothing open.
fn require_state(config: &crate::config::Config) -> anyhow::Result<()> {
    if config.store.is_some() {
        // Only a connection that looks: the store this process works with
        // is opened after, in full.
        return open_existing_store(config).map(drop);
    }
    if !config.state_db().exists() {
        return Err(Failure::usage(no_state(config)));
    }
    Ok(())
}

/// Loads config and runbooks, opens the store, builds the engine.
pub fn engine(config_path: Option<&Path>) -> anyhow::Result<Arc<Engine>> {
    build_engine(config_path, Start::Plain)
}

/// An engine for acting on a recorded run (`approve`): refuses like the
/// commands about recorded things when there is no state, instead of
/// creating an empty store that then has no such run. Still a full engine
/// over a store opened in full (it may run the approved run here, and on
/// PostgreSQL its claims need this process joined as a replica).
pub fn engine_over_existing(config_path: Option<&Path>) -> anyhow::Result<Arc<Engine>> {
    build_engine(config_path, Start::OverExisting)
}

/// `serve`'s engine: the embedded state file is made ready on another
/// thread while the runbooks load, since neither needs the other (most of
/// the time to ready on a new state file). Unlike the other commands, a
/// serve refused for its runbooks may so leave the state file it would
/// have made anyway.
pub fn serving_engine(config_path: Option<&Path>) -> anyhow::Result<Arc<Engine>> {
    build_engine(config_path, Start::Serving)
}

#[derive(PartialEq)]
enum Start {
    Plain,
    OverExisting,
    Serving,
}

fn build_engine(config_path: Option<&Path>, start: Start) -> anyhow::Result<Arc<Engine>> {
    let mut config = super::load_config(config_path)?;
    if start == Start::OverExisting {
        require_state(&config)?;
    }
    let state_file = (start == Start::Serving && config.store.is_none()).then(|| {
        let dir = config.state_dir.clone();
        std::thread::spawn(move || StateFile::prepare(&dir, Durability::Durable))
    });
    let runbooks = match super::load_runbooks(&config, &[]) {
        Ok(set) => Arc::new(set),
        Err(refused) => {
            // Not left half made by the exit that follows.
            if let Some(preparing) = state_file {
                let _ = preparing.join();
            }
            return Err(refused);
        }
    };
    // A runbook's own notice URL is a credential like `notify.url`, and so
    // are the values plugins are handed from our environment: the store and
    // the clients redact them too.
    let passed: Vec<String> = runbooks
        .registry
        .iter()
        .flat_map(|a| a.passes_env())
        .filter_map(|name| std::env::var(name).ok())
        .collect();
    config.redactor = config
        .redactor
        .with(runbooks.runbooks.iter().filter_map(|r| r.notify_url.as_deref()))
        .with(passed.iter().map(String::as_str));
    let config = Arc::new(config);
    let store = match state_file {
        Some(preparing) => {
            let file = preparing
                .join()
                .expect("the state file's thread does not panic")
                .map_err(store_failed)?;
            Arc::new(SqliteStore::open_prepared(file, config.redactor.clone(), Arc::new(SystemClock)).map_err(store_failed)?)
        }
        None => open_store(&config)?,
    };
    Ok(Arc::new(Engine::new(config, runbooks, store)))
}

/// An execution id as given, whole or as a unique prefix (`Store::resolve_id`),
/// to the id it stands for. Unknown: "no execution", exit 2; ambiguous:
/// exit 2 listing the candidates.
pub async fn resolve_id(store: &dyn Store, given: &str) -> anyhow::Result<String> {
    store.resolve_id(given).await.map_err(|e| match e {
        StoreError::NotFound(id) => Failure::usage(format!("no execution {id}")),
        other => unresolved(other),
    })
}

/// A failed [`Store::resolve_id`] in the CLI's words: an ambiguous prefix
/// lists its candidates, one a line, for the user to pick one.
pub fn unresolved(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Ambiguous { prefix, candidates, more } => {
            let mut message = format!("execution id prefix {prefix} is ambiguous; it starts:");
            for id in &candidates {
                message.push_str(&format!("\n  {id}"));
            }
            if more {
                message.push_str("\n  … and more: give more characters");
            }
            Failure::usage(message)
        }
        other => other.into(),
    }
}

/// Only config and an existing store, for history and answers to what is
/// recorded (they need no runbooks, and have nothing to do without state).
pub fn existing_store_only(config_path: Option<&Path>) -> anyhow::Result<(crate::config::Config, Arc<dyn Store>)> {
    let config = super::load_config(config_path)?;
    let store = open_existing_store(&config)?;
    Ok((config, store))
}

pub fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

/// Who runs this command: `user:NAME` for the operating-system user of the
/// process by real uid (`uid:N` without a passwd entry). Never `$USER` or a
/// flag: anyone can set those, and the two-person rule and the audit trust
/// this name.
pub fn user_actor() -> String {
    let uid = nix::unistd::getuid();
    let name = match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid:{uid}"),
    };
    format!("user:{name}")
}
