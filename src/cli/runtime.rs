//! What every command that touches state needs: config, runbooks, the store
//! and an engine wired to them.

use std::path::Path;
use std::sync::Arc;

use crate::clock::SystemClock;
use crate::engine::Engine;
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;

use super::Failure;

/// The store the config names: PostgreSQL under `store:`, else the
/// embedded SQLite file in `state_dir`.
pub fn open_store(config: &crate::config::Config) -> anyhow::Result<Arc<dyn Store>> {
    let failed = |e: crate::store::StoreError| Failure {
        exit: super::Exit::Usage,
        message: crate::diag::chain(&e),
    };
    Ok(match &config.store {
        Some(pg) => Arc::new(PgStore::open(pg, config.redactor.clone(), Arc::new(SystemClock)).map_err(failed)?),
        None => Arc::new(SqliteStore::open(&config.state_dir, config.redactor.clone(), Arc::new(SystemClock)).map_err(failed)?),
    })
}

/// Loads config and runbooks, opens the store, builds the engine.
pub fn engine(config_path: Option<&Path>) -> anyhow::Result<Arc<Engine>> {
    let mut config = super::load_config(config_path)?;
    let runbooks = Arc::new(super::load_runbooks(&config, &[])?);
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
    let store = open_store(&config)?;
    Ok(Arc::new(Engine::new(config, runbooks, store)))
}

/// Only config and store (history commands need no runbooks).
pub fn store_only(config_path: Option<&Path>) -> anyhow::Result<(crate::config::Config, Arc<dyn Store>)> {
    let config = super::load_config(config_path)?;
    let store = open_store(&config)?;
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
