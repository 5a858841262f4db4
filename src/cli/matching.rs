//! `pitcrew match --alert FILE`: which runbooks an alert would start, with
//! resolved params, target and each guardrail's verdict as if the alert
//! arrived now. Runs and records nothing; exits 0 whether or not anything
//! matched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use chrono::Utc;
use serde_json::{Value, json};

use super::{Exit, Failure, Output, output};
use crate::budget::Budgets;
use crate::guard::{self, Facts, Request};
use crate::store::{Admission, Seen};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Alertmanager webhook payload, one alert object or a list of them (JSON or YAML)
    #[arg(long, value_name = "FILE")]
    pub alert: PathBuf,
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let config = Arc::new(super::load_config(config_path)?);
    let set = super::load_runbooks(&config, &[])?;
    // Verdicts come from the state `serve` keeps; no state yet means no history.
    let store = super::runtime::open_store_if_any(&config)?;
    let budgets = Budgets::new(std::sync::Arc::new(crate::action::Deps::new(config.clone())));
    let rt = super::runtime::tokio();
    let text = std::fs::read_to_string(&args.alert).map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.alert.display())))?;
    let alerts =
        crate::alert::parse_alert_file(&text, chrono::Utc::now()).map_err(|e| Failure::usage(format!("{}: {e}", args.alert.display())))?;
    let mut report = Vec::new();
    for alert in &alerts {
        let mut matches = Vec::new();
        for rb in set.matching(alert) {
            let resolved = set.resolve(rb, Some(alert), &BTreeMap::new());
            matches.push(match resolved {
                Ok(r) => {
                    let budget = rb.guardrails.slo.as_deref().and_then(|slo| rt.block_on(budgets.status(slo, Utc::now())));
                    let admission = Admission {
                        id: String::new(),
                        runbook: rb.clone(),
                        target: r.target.clone(),
                        params: r.params.clone(),
                        actor: "alertmanager".into(),
                        automated: true,
                        dry_run: false,
                        force: None,
                        budget: budget.clone(),
                        invalid: None,
                        inhibit: r.inhibit.clone(),
                    };
                    let decision = match &store {
                        Some(store) => rt.block_on(store.preview(admission, config.clone()))?,
                        None => {
                            let request = Request { runbook: rb, target: &r.target, automated: true, dry_run: false, force: None, now_ms: Utc::now().timestamp_millis() };
                            guard::decide(&request, &Facts::default(), budget.as_ref(), &config)
                        }
                    };
                    let clusters = crate::action::kubernetes::step_clusters(&set, rb, Some(alert), &r, &config);
                    json!({"runbook": rb.name, "risk": rb.risk, "params": r.params, "target": r.target, "clusters": clusters,
                           "verdict": decision.verdict, "decided_by": decision.decided_by, "reason": decision.reason, "dry_run": decision.dry_run, "guardrails": decision.checks})
                }
                Err(e) => json!({"runbook": rb.name, "risk": rb.risk, "error": e.to_string()}),
            });
        }
        let seen = match &store {
            Some(store) => rt.block_on(store.seen(alert, config.clone()))?,
            None => Seen::New,
        };
        report.push(
            json!({"alert": alert.name(), "status": alert.status.as_str(), "fingerprint": alert.fingerprint, "labels": alert.labels,
                           "seen": seen, "duplicate": seen == Seen::Duplicate, "matches": matches}),
        );
    }
    match args.output {
        Output::Json => print!("{}", output::json(&report)),
        Output::Table => {
            for a in &report {
                println!(
                    "alert {} ({}, fingerprint {})",
                    output::visible(a["alert"].as_str().unwrap_or("")),
                    output::visible(a["status"].as_str().unwrap_or("")),
                    output::visible(a["fingerprint"].as_str().unwrap_or(""))
                );
                match a["seen"].as_str() {
                    Some("duplicate") => {
                        println!("  already recorded: serve would treat this notification as a duplicate and start nothing")
                    }
                    Some("reconsidered") => println!(
                        "  already recorded, every run blocked by a guardrail that time lifts: serve would decide it again (as below)"
                    ),
                    _ => {}
                }
                let matches = a["matches"].as_array().cloned().unwrap_or_default();
                if matches.is_empty() {
                    println!("  no runbook matches");
                }
                for m in matches {
                    println!(
                        "  runbook {} (risk {})",
                        output::visible(m["runbook"].as_str().unwrap_or("")),
                        output::visible(m["risk"].as_str().unwrap_or(""))
                    );
                    if let Some(err) = m.get("error") {
                        println!("    cannot run: {}", output::visible(err.as_str().unwrap_or("")));
                        continue;
                    }
                    println!("    target: {}", output::visible(m["target"].as_str().unwrap_or("")));
                    if let Some(Value::Object(params)) = m.get("params") {
                        for (k, v) in params {
                            println!("    param {} = {}", output::visible(k), output::visible_json(&v.to_string()));
                        }
                    }
                    for c in m["clusters"].as_array().into_iter().flatten() {
                        match c.get("cluster") {
                            Some(cluster) => println!(
                                "    step {}: cluster {}",
                                output::visible(c["step"].as_str().unwrap_or("")),
                                output::visible(cluster.as_str().unwrap_or(""))
                            ),
                            None => println!(
                                "    step {}: cluster ? ({})",
                                output::visible(c["step"].as_str().unwrap_or("")),
                                output::visible(c["error"].as_str().unwrap_or(""))
                            ),
                        }
                    }
                    println!(
                        "    verdict: {} ({}: {})",
                        output::visible(m["verdict"].as_str().unwrap_or("")),
                        output::visible(m["decided_by"].as_str().unwrap_or("")),
                        output::visible(m["reason"].as_str().unwrap_or(""))
                    );
                    for c in m["guardrails"].as_array().into_iter().flatten() {
                        println!(
                            "      {:<18} {:<8} {}",
                            output::visible(c["guardrail"].as_str().unwrap_or("")),
                            output::visible(c["verdict"].as_str().unwrap_or("")),
                            output::visible(c["detail"].as_str().unwrap_or(""))
                        );
                    }
                }
            }
        }
    }
    Ok(Exit::Done)
}
