//! `pitcrew completions SHELL`, `pitcrew man` and `pitcrew schema`: text
//! for shells, `man` and editors, made from the parser and the runbook types
//! themselves so that none of it can fall behind them.

use std::io::Write;

use clap::CommandFactory;

use super::{Cli, Exit};

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<Exit> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "pitcrew", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(Exit::Done)
}

pub fn man() -> anyhow::Result<Exit> {
    std::io::stdout().write_all(&man_pages()?)?;
    Ok(Exit::Done)
}

/// One page per command, `pitcrew` first, then each subcommand depth first
/// (`pitcrew-audit-export`), in one roff stream: `man -l` shows them one
/// after another, and a packager can split on `.TH`.
fn man_pages() -> std::io::Result<Vec<u8>> {
    fn render(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
        clap_mangen::Man::new(cmd.clone())
            .source(concat!("pitcrew ", env!("CARGO_PKG_VERSION")))
            .render(out)?;
        // `help` is clap's own, added at build time: `man` is the help here.
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            render(sub, out)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command();
    // Building names each subcommand after its parents (`pitcrew-audit`),
    // which is what their pages are titled and their synopses show.
    cmd.build();
    let mut out = Vec::new();
    render(&cmd, &mut out)?;
    Ok(out)
}

pub fn schema() -> anyhow::Result<Exit> {
    print!("{}", super::output::json(&runbook_schema()));
    Ok(Exit::Done)
}

/// Draft 7: what editors' YAML support (yaml-language-server) reads best.
pub fn runbook_schema() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<crate::runbook::raw::RawRunbook>()
}
