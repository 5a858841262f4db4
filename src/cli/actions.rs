//! `pitcrew actions [NAME]`: the action catalogue.

use std::path::Path;

use super::{Exit, Failure, Output, output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show one action in detail
    pub name: Option<String>,
    /// Print the least-privilege Kubernetes ClusterRole the actions need (deploy/rbac.yaml)
    #[arg(long, conflicts_with = "name")]
    pub rbac: bool,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(config_path: Option<&Path>, args: Args) -> anyhow::Result<Exit> {
    let config = super::load_config(config_path)?;
    let mut problems = Vec::new();
    let manifests = crate::runbook::compile::load_plugins(&config.plugins, &mut problems);
    for p in &problems {
        eprintln!("warning: {p}");
    }
    let registry = crate::action::Registry::with_plugins(manifests);
    if args.rbac {
        print!("{}", crate::action::rbac_manifest(&registry));
        return Ok(Exit::Done);
    }
    let Some(name) = args.name else {
        match args.output {
            Output::Json => print!("{}", output::json(&registry.iter().map(|a| a.spec()).collect::<Vec<_>>())),
            Output::Table => {
                let rows: Vec<Vec<String>> = registry
                    .iter()
                    .map(|a| {
                        let s = a.spec();
                        vec![
                            s.name.clone(),
                            s.risk.to_string(),
                            if s.idempotent { "yes" } else { "no" }.into(),
                            s.summary.clone(),
                        ]
                    })
                    .collect();
                print!("{}", output::table(&["ACTION", "RISK", "IDEMPOTENT", "SUMMARY"], &rows));
            }
        }
        return Ok(Exit::Done);
    };
    let Some(action) = registry.get(&name) else {
        let hint = registry
            .nearest(&name)
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        return Err(Failure::usage(format!("unknown action `{name}`{hint}")));
    };
    let s = action.spec();
    if args.output == Output::Json {
        print!("{}", output::json(s));
        return Ok(Exit::Done);
    }
    println!("{}\n  {}\n", s.name, s.summary);
    println!("default risk: {}", s.risk);
    println!(
        "idempotent:   {}\n",
        if s.idempotent {
            "yes (may be retried and re-run after a crash)"
        } else {
            "no (never retried; unknown after a crash)"
        }
    );
    let rows: Vec<Vec<String>> = s
        .params
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.ty.describe(),
                if p.required { "yes" } else { "no" }.into(),
                p.doc.clone(),
            ]
        })
        .collect();
    print!("{}", output::table(&["PARAMETER", "TYPE", "REQUIRED", "DESCRIPTION"], &rows));
    if !s.rbac.is_empty() {
        println!("\nKubernetes RBAC:");
        for r in &s.rbac {
            let group = if r.api_group.is_empty() { "\"\" (core)" } else { r.api_group };
            println!("  apiGroup {group}: {} — {}", r.resources.join(", "), r.verbs.join(", "));
        }
    }
    println!(
        "\nexample:\n  - name: {}\n    action: {}\n    with:",
        s.name.rsplit('.').next().unwrap_or("step").replace('_', "-"),
        s.name
    );
    for line in s.example.lines() {
        println!("      {line}");
    }
    Ok(Exit::Done)
}
