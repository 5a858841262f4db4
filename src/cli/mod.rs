//! The command line: one file per subcommand, each owning its clap struct and
//! its `run`. Exit codes are a contract
//! users script against.

mod actions;
mod approval;
mod audit;
mod budget;
mod escalations;
mod generate;
mod history;
mod list;
mod matching;
pub mod output;
mod report;
mod run;
mod runtime;
mod selftest;
mod serve;
mod simulate;
mod store;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::diag::Diagnostics;
use crate::runbook::RunbookSet;

pub use output::Output;

/// Exit codes users script against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Done = 0,
    StepFailed = 1,
    Usage = 2,
    /// Blocked by a guardrail, the two-person rule or the runbook's `permissions`.
    Blocked = 3,
    PendingApproval = 4,
    AuditBroken = 5,
}

/// An error that already knows its exit code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Failure {
            exit: Exit::Usage,
            message: message.into(),
        }
        .into()
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "pitcrew",
    version,
    about = "Runbook executor: alerts in, guarded remediation out, every step audited"
)]
pub struct Cli {
    /// Config file (default: $PITCREW_CONFIG, then ./pitcrew.yaml, then built-in defaults)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check runbooks, plugins and config; errors as file:line:col: message
    Validate(validate::Args),
    /// Runbooks with their triggers, risk and guardrails
    List(list::Args),
    /// Run the runbooks' own `tests:`
    Test(selftest::Args),
    /// The action catalogue
    Actions(actions::Args),
    /// Which runbooks an alert would start, with params, target and verdicts; runs nothing
    Match(matching::Args),
    /// Webhook receiver, executor and API
    Serve(serve::Args),
    /// Replay recorded alerts through matching and every guardrail on a virtual clock; runs nothing, writes no state
    Simulate(simulate::Args),
    /// Run a runbook by hand, under the same guardrails
    Run(run::Args),
    /// Execution history
    Executions(history::ListArgs),
    /// One execution with its steps
    Show(history::ShowArgs),
    /// Approve a pending execution (and run it here unless --detach)
    Approve(approval::ApproveArgs),
    /// Deny a pending execution
    Deny(approval::DenyArgs),
    /// The audit log
    #[command(subcommand)]
    Audit(audit::Command),
    /// Error budgets per SLO
    Budget(budget::Args),
    /// What pitcrew did and saved: runs, blocks, approvals, toil, time to fix, effectiveness
    Report(report::Args),
    /// Tripped escalation breakers
    Escalations(escalations::ListArgs),
    /// Re-arm a tripped escalation breaker
    Reset(escalations::ResetArgs),
    /// Bring the PostgreSQL store's schema to this version (serve does it at start)
    Migrate(store::MigrateArgs),
    /// The store itself: copy the embedded store into PostgreSQL
    #[command(subcommand)]
    Store(store::Command),
    /// Shell completions, to stdout
    Completions(generate::CompletionsArgs),
    /// The manual pages of every command, as roff to stdout (`pitcrew man | man -l -`)
    Man,
    /// JSON Schema of a runbook file, for editors, to stdout
    Schema,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Exit::Usage as u8 } else { 0 });
        }
    };
    init_tracing();
    quiet_on_closed_stdout();
    let result = match cli.command {
        Command::Validate(args) => validate::run(cli.config.as_deref(), args),
        Command::List(args) => list::run(cli.config.as_deref(), args),
        Command::Test(args) => selftest::run(cli.config.as_deref(), args),
        Command::Actions(args) => actions::run(cli.config.as_deref(), args),
        Command::Match(args) => matching::run(cli.config.as_deref(), args),
        Command::Serve(args) => serve::run(cli.config.as_deref(), args),
        Command::Simulate(args) => simulate::run(cli.config.as_deref(), args),
        Command::Run(args) => run::run(cli.config.as_deref(), args),
        Command::Executions(args) => history::list(cli.config.as_deref(), args),
        Command::Show(args) => history::show(cli.config.as_deref(), args),
        Command::Approve(args) => approval::approve(cli.config.as_deref(), args),
        Command::Deny(args) => approval::deny(cli.config.as_deref(), args),
        Command::Audit(command) => audit::run(cli.config.as_deref(), command),
        Command::Budget(args) => budget::run(cli.config.as_deref(), args),
        Command::Report(args) => report::run(cli.config.as_deref(), args),
        Command::Escalations(args) => escalations::list(cli.config.as_deref(), args),
        Command::Reset(args) => escalations::reset(cli.config.as_deref(), args),
        Command::Migrate(args) => store::migrate(cli.config.as_deref(), args),
        Command::Store(command) => store::run(cli.config.as_deref(), command),
        Command::Completions(args) => generate::completions(args),
        Command::Man => generate::man(),
        Command::Schema => generate::schema(),
    };
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            let exit = e.downcast_ref::<Failure>().map(|f| f.exit).unwrap_or(Exit::Usage);
            eprintln!("error: {e:#}");
            ExitCode::from(exit as u8)
        }
    }
}

/// `pitcrew list | head -1`: a reader that stops early closes our stdout.
/// Rust ignores SIGPIPE, so `println!` panics; end quietly instead, with the
/// shell's usual status for a broken pipe, like other Unix tools.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied());
        if text.is_some_and(|t| t.contains("failed printing to stdout") && t.contains("Broken pipe")) {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PITCREW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Execution ids as given: ULIDs are case-insensitive, and ids are stored
/// in lower case, so one copied from upper-case output still finds its run.
pub fn execution_id(s: &str) -> Result<String, String> {
    Ok(s.trim().to_ascii_lowercase())
}

/// Loads the config; problems are usage errors (exit 2).
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Config::discover(path).map_err(|e| match e {
        ConfigError::Invalid(d) => Failure::usage(format!("invalid config:\n{d}")),
        other => Failure::usage(format!(
            "{other}: {}",
            std::error::Error::source(&other).map(|s| s.to_string()).unwrap_or_default()
        )),
    })
}

/// Loads plugins and runbooks from `paths` (default: the config's).
pub fn load_runbooks(config: &Config, paths: &[PathBuf]) -> anyhow::Result<RunbookSet> {
    let paths = if paths.is_empty() {
        config.runbooks.clone()
    } else {
        paths.to_vec()
    };
    crate::runbook::compile::load(config, &paths).map_err(|d: Diagnostics| Failure::usage(format!("invalid runbooks:\n{d}")))
}
