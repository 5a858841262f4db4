//! `pitcrew test`: run every runbook's `tests:`; exit 1 when one fails.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Exit, Output, output};
use crate::runbook::selftest;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runbook files or folders (default: the config's `runbooks`)
    pub paths: Vec<PathBuf>,
    /// table for people, json for scripts
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let config = super::load_config(config_path)?;
    let set = super::load_runbooks(&config, &args.paths)?;
    let mut results = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for rb in &set.runbooks {
        if rb.tests.is_empty() && args.output == Output::Table {
            eprintln!("warning: {}:{}: runbook `{}` has no tests", rb.file.display(), rb.line, rb.name);
        }
        for t in &rb.tests {
            let mismatches = selftest::run(&set, rb, t);
            if mismatches.is_empty() {
                passed += 1;
            } else {
                failed += 1;
            }
            results.push((rb, t, mismatches));
        }
    }
    match args.output {
        Output::Json => {
            let items: Vec<_> = results
                .iter()
                .map(|(rb, t, m)| {
                    json!({"runbook": rb.name, "test": t.name, "file": rb.file, "line": t.line, "passed": m.is_empty(),
                           "mismatches": m.iter().map(mismatch_json).collect::<Vec<_>>()})
                })
                .collect();
            print!("{}", output::json(&json!({"passed": passed, "failed": failed, "tests": items})));
        }
        Output::Table => {
            for (rb, t, mismatches) in &results {
                if mismatches.is_empty() {
                    println!("ok    {} / {}", rb.name, t.name);
                } else {
                    println!("FAIL  {} / {}  ({}:{})", rb.name, t.name, rb.file.display(), t.line);
                    for m in mismatches {
                        let got = match &m.got {
                            Ok(v) => v.to_string(),
                            Err(why) => format!("({why})"),
                        };
                        println!("        {}: expected {}, got {got}", m.what, m.expected);
                    }
                }
            }
            println!("{passed} passed, {failed} failed");
        }
    }
    Ok(if failed == 0 { Exit::Done } else { Exit::StepFailed })
}

/// `got` is the value the runbook gave; when it gave none, `error` says why.
fn mismatch_json(m: &selftest::Mismatch) -> serde_json::Value {
    match &m.got {
        Ok(got) => json!({"what": m.what, "expected": m.expected, "got": got}),
        Err(why) => json!({"what": m.what, "expected": m.expected, "got": null, "error": why}),
    }
}
