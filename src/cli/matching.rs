//! `pitcrew match --alert FILE`: which runbooks an alert would start, with
//! resolved params and target. Runs nothing; exits 0 whether or not anything
//! matched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Exit, Failure, Output, output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Alertmanager webhook payload, one alert object or a list of them (JSON or YAML)
    #[arg(long, value_name = "FILE")]
    pub alert: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let config = super::load_config(config_path)?;
    let set = super::load_runbooks(&config, &[])?;
    let text = std::fs::read_to_string(&args.alert).map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.alert.display())))?;
    let alerts = crate::alert::parse_alert_file(&text, chrono::Utc::now()).map_err(|e| Failure::usage(format!("{}: {e}", args.alert.display())))?;
    let mut report = Vec::new();
    for alert in &alerts {
        let mut matches = Vec::new();
        for rb in set.matching(alert) {
            let resolved = set.resolve(rb, Some(alert), &BTreeMap::new());
            matches.push(match resolved {
                Ok(r) => json!({"runbook": rb.name, "risk": rb.risk, "params": r.params, "target": r.target}),
                Err(e) => json!({"runbook": rb.name, "risk": rb.risk, "error": e.to_string()}),
            });
        }
        report.push(json!({"alert": alert.name(), "status": alert.status.as_str(), "fingerprint": alert.fingerprint, "labels": alert.labels, "matches": matches}));
    }
    match args.output {
        Output::Json => print!("{}", output::json(&report)),
        Output::Table => {
            for a in &report {
                println!("alert {} ({}, fingerprint {})", a["alert"].as_str().unwrap_or(""), a["status"].as_str().unwrap_or(""), a["fingerprint"].as_str().unwrap_or(""));
                let matches = a["matches"].as_array().cloned().unwrap_or_default();
                if matches.is_empty() {
                    println!("  no runbook matches");
                }
                for m in matches {
                    println!("  runbook {} (risk {})", m["runbook"].as_str().unwrap_or(""), m["risk"].as_str().unwrap_or(""));
                    if let Some(err) = m.get("error") {
                        println!("    cannot run: {}", err.as_str().unwrap_or(""));
                        continue;
                    }
                    println!("    target: {}", m["target"].as_str().unwrap_or(""));
                    if let Some(Value::Object(params)) = m.get("params") {
                        for (k, v) in params {
                            println!("    param {k} = {v}");
                        }
                    }
                }
            }
        }
    }
    Ok(Exit::Done)
}
