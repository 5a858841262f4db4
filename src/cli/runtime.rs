//! What every command that touches state needs: config, runbooks, the store
//! and an engine wired to them.

use std::path::Path;
use std::sync::Arc;

use crate::clock::SystemClock;
use crate::engine::Engine;
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

use super::Failure;

pub fn open_store(config: &crate::config::Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = SqliteStore::open(&config.state_dir, config.redactor.clone(), Arc::new(SystemClock)).map_err(|e| Failure {
        exit: super::Exit::Usage,
        message: format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()),
    })?;
    Ok(Arc::new(store))
}

/// Loads config and runbooks, opens the store, builds the engine.
pub fn engine(config_path: Option<&Path>) -> anyhow::Result<Arc<Engine>> {
    let config = Arc::new(super::load_config(config_path)?);
    let runbooks = Arc::new(super::load_runbooks(&config, &[])?);
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

/// `user:NAME` from `--as`, else $USER.
pub fn user_actor(as_user: Option<&str>) -> String {
    let name = as_user
        .map(String::from)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    format!("user:{name}")
}
