//! `pitcrew budget`: each SLO's error budget and the tier it puts us in.

use std::path::Path;

use chrono::Utc;

use super::{Exit, Output, output};
use crate::budget::Budgets;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let config = std::sync::Arc::new(super::load_config(config_path)?);
    let budgets = Budgets::new(std::sync::Arc::new(crate::action::Deps::new(config.clone())));
    let all = super::runtime::tokio().block_on(budgets.refresh(Utc::now()));
    match args.output {
        Output::Json => {
            let mut shown = serde_json::json!({"slos": all});
            output::round_floats(&mut shown);
            print!("{}", output::json(&shown));
        }
        Output::Table => {
            if all.is_empty() {
                eprintln!("no slos in the config");
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|b| {
                    let used = b
                        .remaining
                        .map(|r| format!("{:.1} min", (1.0 - r) * b.budget_minutes))
                        .unwrap_or_else(|| "?".into());
                    let remaining = b
                        .remaining
                        .map(|r| format!("{:.1}%", r * 100.0))
                        .unwrap_or_else(|| format!("unknown ({})", b.error.as_deref().unwrap_or("")));
                    vec![
                        b.slo.clone(),
                        crate::units::Ratio(b.objective).to_string(),
                        b.window.clone(),
                        format!("{:.1} min", b.budget_minutes),
                        used,
                        remaining,
                        b.tier.clone(),
                        b.auto.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &["SLO", "OBJECTIVE", "WINDOW", "BUDGET", "USED", "REMAINING", "TIER", "UNATTENDED"],
                    &rows
                )
            );
        }
    }
    Ok(Exit::Done)
}
