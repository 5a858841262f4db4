//! `pitcrew validate`: runbooks, plugins and config, all problems at once.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Exit, Output, output};
use crate::config::{Config, ConfigError};
use crate::diag::Diagnostic;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runbook files or folders (default: the config's `runbooks`)
    pub paths: Vec<PathBuf>,
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let mut problems: Vec<Diagnostic> = Vec::new();
    let config = match Config::discover(config_path) {
        Ok(c) => c,
        Err(ConfigError::Invalid(d)) => {
            problems.extend(d.0);
            Config::default()
        }
        Err(e) => {
            return Err(super::Failure::usage(format!(
                "{e}: {}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            )));
        }
    };
    let manifests = crate::runbook::compile::load_plugins(&config.plugins, &mut problems);
    let plugin_count = manifests.len();
    let registry = crate::action::Registry::with_plugins(manifests);
    let paths = if args.paths.is_empty() {
        config.runbooks.clone()
    } else {
        args.paths
    };
    let set = crate::runbook::compile::load_runbooks(&config, registry, &paths, &mut problems);
    // Checks report in the order they run (config, plugins, then each
    // runbook key by key), not in the order of the text; a reader fixes them
    // file by file, top to bottom. Equal places keep their order.
    problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    match args.output {
        Output::Json => {
            print!(
                "{}",
                output::json(
                    &json!({"ok": problems.is_empty(), "runbooks": set.runbooks.len(), "plugins": plugin_count, "problems": problems})
                )
            );
        }
        Output::Table => {
            for p in &problems {
                eprintln!("{p}");
            }
            if problems.is_empty() {
                println!("ok: {} runbooks, {} plugins", set.runbooks.len(), plugin_count);
            } else {
                eprintln!("{} problem{} found", problems.len(), if problems.len() == 1 { "" } else { "s" });
            }
        }
    }
    Ok(if problems.is_empty() { Exit::Done } else { Exit::Usage })
}
