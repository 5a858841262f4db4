//! `pitcrew simulate`: what the runbooks would have done to recorded alerts,
//! decided by the guardrails on a virtual clock against a scratch store.
//! Never opens the real state, runs no action and sends no notice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;

use super::{Exit, Failure, Output, output};
use crate::simulate::{Options, SimulateError, Simulation};
use crate::units::Duration;

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("history").required(true).args(["alerts", "from_prometheus"]))]
pub struct Args {
    /// Recorded notifications: JSON lines {"at": RFC3339, "body": <webhook body>}, or `pitcrew audit export` output
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
    /// Rebuild the notifications from this Prometheus' ALERTS{alertstate="firing"} series
    #[arg(long, value_name = "URL", requires = "since")]
    pub from_prometheus: Option<String>,
    /// With --from-prometheus: how far back (e.g. 30d)
    #[arg(long, value_name = "DURATION", requires = "from_prometheus")]
    pub since: Option<String>,
    /// With --from-prometheus: the resolution of the rebuilt history
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    pub step: String,
    /// With --from-prometheus: a firing alert is sent again this often (Alertmanager's repeat_interval)
    #[arg(long, value_name = "DURATION", default_value = "4h")]
    pub resend_every: String,
    /// Runbooks to simulate (files or folders; default: the config's)
    #[arg(long, value_name = "PATH")]
    pub runbooks: Vec<PathBuf>,
    /// Take every run of this runbook to fail (repeatable), to see on_failure and escalation
    #[arg(long, value_name = "RUNBOOK")]
    pub assume_fail: Vec<String>,
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let d: Duration = text.parse().map_err(|e| Failure::usage(format!("--{flag}: {e}")))?;
    if d.as_millis() == 0 {
        return Err(Failure::usage(format!("--{flag}: must be longer than 0s")));
    }
    Ok(d)
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let mut config = super::load_config(config_path)?;
    let runbooks = super::load_runbooks(&config, &args.runbooks)?;
    // Secrets runbooks bring are redacted like under `serve`.
    config.redactor = config
        .redactor
        .with(runbooks.runbooks.iter().filter_map(|r| r.notify_url.as_deref()));
    let mut assume_fail = BTreeSet::new();
    for name in args.assume_fail {
        if runbooks.get(&name).is_none() {
            return Err(Failure::usage(format!("--assume-fail: no runbook `{name}`")));
        }
        assume_fail.insert(name);
    }
    let rt = super::runtime::tokio();
    let usage = |e: SimulateError| Failure::usage(e.to_string());
    let (history, source) = match (&args.alerts, &args.from_prometheus) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
            crate::simulate::parse_history(&file.display().to_string(), &text).map_err(usage)?
        }
        (None, Some(url)) => {
            let since = duration("since", args.since.as_deref().unwrap_or_default())?;
            let step = duration("step", &args.step)?;
            if step.as_millis() < 1000 {
                return Err(Failure::usage(
                    "--step: at least 1s (alert rules are evaluated every second at best)",
                ));
            }
            let resend = duration("resend-every", &args.resend_every)?;
            let until = Utc::now();
            let from = until - chrono::Duration::milliseconds(since.as_millis() as i64);
            let history = rt
                .block_on(crate::simulate::from_prometheus(url, from, until, step, Some(resend)))
                .map_err(usage)?;
            if history.is_empty() {
                return Err(Failure::usage(format!(
                    "prometheus at {url}: no firing alerts in the last {since}: nothing to replay"
                )));
            }
            let source = crate::simulate::Source {
                format: "prometheus",
                ..Default::default()
            };
            (history, source)
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    let options = Options { assume_fail };
    // The engine logs its runs at `info` (a run waiting for approval, with
    // its id): about scratch runs that vanish with the simulation, that
    // would mislead. Warnings and errors still show. One thread, so the
    // quieter log holds wherever the simulation runs.
    let quiet = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .finish();
    let simulate = crate::simulate::simulate(&config, Arc::new(runbooks), history, source, &options);
    let simulation = tracing::subscriber::with_default(quiet, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime builds")
            .block_on(simulate)
    })?;
    match args.output {
        Output::Json => {
            let mut value = serde_json::to_value(&simulation)?;
            output::round_floats(&mut value);
            print!("{}", output::json(&value));
        }
        Output::Table => print!("{}", table(&simulation)),
    }
    Ok(Exit::Done)
}

/// One line per decision, then the summary.
fn table(sim: &Simulation) -> String {
    let rows: Vec<Vec<String>> = sim
        .decisions
        .iter()
        .map(|d| {
            let verdict = match (&d.outcome, d.dry_run) {
                (Some(state), false) => format!("run ({state})"),
                (Some(state), true) => format!("run ({state}, dry run)"),
                (None, _) => serde_json::to_value(d.verdict)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            };
            vec![
                d.at.clone(),
                d.runbook.clone(),
                d.target.clone(),
                verdict,
                d.guardrail.clone().unwrap_or_else(|| "-".into()),
                output::cut(&d.reason, 120),
            ]
        })
        .collect();
    let mut out = output::table(&["AT", "RUNBOOK", "TARGET", "VERDICT", "GUARDRAIL", "REASON"], &rows);
    let n = &sim.notifications;
    out.push_str(&format!(
        "\n{} notifications ({} alerts): {} new, {} duplicates, {} decided again; {} decisions\n",
        n.notifications,
        n.alerts,
        n.accepted,
        n.duplicates,
        n.reconsidered,
        sim.decisions.len()
    ));
    let counted = |v: &serde_json::Value| -> String {
        v.as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let or_none = |s: String| if s.is_empty() { "none".to_string() } else { s };
    out.push_str(&format!("runs: {}\n", or_none(counted(&sim.report["runs"]))));
    out.push_str(&format!("blocked by: {}\n", or_none(counted(&sim.report["blocked_by"]))));
    for rb in sim.report["runbooks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}: {}; blocked by: {}\n",
            output::visible(rb["name"].as_str().unwrap_or("")),
            or_none(counted(&rb["runs"])),
            or_none(counted(&rb["blocked_by"]))
        ));
    }
    for b in &sim.budgets {
        let unknown = match (&b.error, b.unknown) {
            (_, 0) => String::new(),
            (Some(e), n) => format!(", {n} unknown (treated as freeze): {}", output::visible(e)),
            (None, n) => format!(", {n} unknown (treated as freeze)"),
        };
        out.push_str(&format!(
            "budget {}: {} ({} evaluations{unknown})\n",
            output::visible(&b.slo),
            b.source,
            b.evaluations
        ));
    }
    if sim.source.skipped_resends > 0 {
        out.push_str(&format!(
            "{} re-sends in the export left out: their alert.received is not in it\n",
            sim.source.skipped_resends
        ));
    }
    out
}
