//! `pitcrew migrate` and `pitcrew store …`: the store itself.

use std::path::{Path, PathBuf};

use super::{Exit, Failure};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Copy the embedded store (history and audit chain) into an empty PostgreSQL database
    Copy(CopyArgs),
}

#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// The PostgreSQL database to copy into: postgres://USER@HOST:PORT/DB (it must hold no pitcrew records)
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// A file holding the database password
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

pub fn run(config_path: Option<&Path>, command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Copy(args) => copy(config_path, args),
    }
}

/// Copies the embedded store named by the config's `state_dir`.
fn copy(config_path: Option<&Path>, args: CopyArgs) -> anyhow::Result<Exit> {
    let config = super::load_config(config_path)?;
    let password = match &args.password_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Failure::usage(format!("--password-file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let to = crate::config::StoreConfig {
        url: args.to,
        password,
        lease: crate::units::Duration::from_secs(15),
    };
    let copied = crate::store::copy::copy_sqlite_to_postgres(&config.state_dir, &to).map_err(|e| Failure {
        exit: Exit::Usage,
        message: crate::diag::chain(&e),
    })?;
    for (table, rows) in &copied.tables {
        println!("{table:<16} {rows:>10} rows");
    }
    match &copied.head {
        Some((seq, hash)) => println!("audit chain copied up to record {seq} ({hash}); run `pitcrew audit verify` with the new store"),
        None => println!("no audit records to copy"),
    }
    Ok(Exit::Done)
}

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {}

/// Brings the configured PostgreSQL store to this version's schema (what
/// `serve` also does at start), and nothing else.
pub fn migrate(config_path: Option<&Path>, _args: MigrateArgs) -> anyhow::Result<Exit> {
    let config = super::load_config(config_path)?;
    let Some(store) = &config.store else {
        // The embedded store upgrades its file when it opens it.
        println!("the embedded store (no `store:` in the config) needs no migrations");
        return Ok(Exit::Done);
    };
    let applied = crate::store::postgres::migrate_url(store).map_err(|e| Failure {
        exit: Exit::Usage,
        message: crate::diag::chain(&e),
    })?;
    if applied.is_empty() {
        println!("{}: up to date", store.url);
    } else {
        let list: Vec<String> = applied.iter().map(i32::to_string).collect();
        println!("{}: applied migrations {}", store.url, list.join(", "));
    }
    Ok(Exit::Done)
}
