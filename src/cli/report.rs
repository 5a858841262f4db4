//! `pitcrew report`: what pitcrew did and saved over a time range.

use std::path::Path;

use super::Exit;
use crate::budget::Budgets;
use crate::units::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned tables for a terminal
    #[default]
    Table,
    /// The API's JSON (`GET /v1/report`)
    Json,
    /// Headings and tables to paste into a weekly review
    Markdown,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How far back from now, e.g. `7d`, `30d`, `12h`
    #[arg(long, default_value = "30d")]
    pub since: Duration,
    /// table for people, json for scripts and dashboards, markdown for a review document
    #[arg(long, value_enum, default_value_t)]
    pub output: Format,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let (config, store) = super::runtime::existing_store_only(config_path)?;
    let set = super::load_runbooks(&config, &[])?;
    let config = std::sync::Arc::new(config);
    let budgets = Budgets::new(std::sync::Arc::new(crate::action::Deps::new(config.clone())));
    let rt = super::runtime::tokio();
    let until = store.now();
    let since = until
        .checked_sub_signed(args.since.chrono())
        .unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let report = rt.block_on(async {
        let budgets = if config.slos.is_empty() {
            Vec::new()
        } else {
            budgets.refresh(until).await
        };
        crate::report::build(store.as_ref(), &set, since, until, &budgets).await
    })?;
    match args.output {
        Format::Json => print!("{}", super::output::json(&report)),
        Format::Table => print!("{}", crate::report::table(&report)),
        Format::Markdown => print!("{}", crate::report::markdown(&report)),
    }
    Ok(Exit::Done)
}
