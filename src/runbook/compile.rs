//! From raw YAML to the checked model: every problem of a file reported in
//! one pass, each with its position and a hint where one helps.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::loader::{Positions, parse_files, parse_one, yaml_files};
use super::raw::{RawParam, RawPluginManifest, RawRunbook, RawStep, Scalar};
use super::selftest::{Expect, RunbookTest};
use super::template::{Templates, Tpl};
use super::{Approval, Effect, Guardrails, ParamDef, ParamKind, Risk, Runbook, RunbookSet, Step};
use crate::action::plugin::{Manifest, PluginParam};
use crate::action::{ParamType, Registry, check_with};
use crate::alert::{Alert, AlertStatus};
use crate::config::Config;
use crate::diag::{Diagnostic, Diagnostics};
use crate::matcher::{Matcher, StatusFilter, Trigger};
use crate::units::{Duration, Rate, Ratio};

const PARAM_ROOTS: &[&str] = &["alert", "runbook"];
const TARGET_ROOTS: &[&str] = &["alert", "params", "runbook"];
const STEP_ROOTS: &[&str] = &["alert", "params", "target", "runbook", "execution", "steps"];
const FAILURE_ROOTS: &[&str] = &["alert", "params", "target", "runbook", "execution", "steps", "error"];

/// Loads plugins, then every runbook under `paths`; all problems together.
pub fn load(config: &Config, paths: &[PathBuf]) -> Result<RunbookSet, Diagnostics> {
    let mut problems = Vec::new();
    let manifests = load_plugins(&config.plugins, &mut problems);
    let registry = Registry::with_plugins(manifests);
    let set = load_runbooks(config, registry, paths, &mut problems);
    if problems.is_empty() { Ok(set) } else { Err(Diagnostics(problems)) }
}

/// Loads runbooks with a given registry, collecting problems.
pub fn load_runbooks(config: &Config, registry: Registry, paths: &[PathBuf], problems: &mut Vec<Diagnostic>) -> RunbookSet {
    let mut templates = Templates::default();
    let mut runbooks: Vec<Runbook> = Vec::new();
    let files = match yaml_files(paths) {
        Ok(f) => f,
        Err(d) => {
            problems.push(d);
            Vec::new()
        }
    };
    let mut seen: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    let mut texts = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => texts.push((file, text)),
            Err(e) => problems.push(Diagnostic::new(&file, (1, 1), format!("cannot read: {e}"))),
        }
    }
    let parsed = parse_files::<RawRunbook>(&texts);
    for ((file, _), docs) in texts.iter().zip(parsed) {
        for doc in docs {
            let doc = match doc {
                Ok(d) => d,
                Err(d) => {
                    problems.push(d);
                    continue;
                }
            };
            let mut cx = Cx {
                file,
                pos: &doc.positions,
                problems: Vec::new(),
                templates: &mut templates,
                registry: &registry,
                config,
                typed_params: Vec::new(),
                declared_params: Vec::new(),
                earlier_steps: Vec::new(),
                all_steps: Vec::new(),
            };
            let name_pos = cx.pos.at("name");
            if let Some(rb) = cx.runbook(doc.value, digest(&doc.source)) {
                if let Some((other, line)) = seen.get(&rb.name) {
                    cx.problems.push(
                        Diagnostic::new(file, name_pos, format!("duplicate runbook name `{}`", rb.name))
                            .hint(Some(format!("first defined at {}:{line}", other.display()))),
                    );
                } else {
                    seen.insert(rb.name.clone(), (file.clone(), name_pos.0));
                    if cx.problems.is_empty() {
                        runbooks.push(rb);
                    }
                }
            }
            problems.append(&mut cx.problems);
        }
    }
    templates.forget_references();
    RunbookSet::new(runbooks, templates, registry)
}

fn digest(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

/// Reads `plugins/<name>/plugin.yaml` for every folder in `dir` (a missing
/// folder means no plugins).
pub fn load_plugins(dir: &Path, problems: &mut Vec<Diagnostic>) -> Vec<Manifest> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut folders: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    folders.sort();
    let mut out = Vec::new();
    for folder in folders {
        let file = folder.join("plugin.yaml");
        let Ok(text) = std::fs::read_to_string(&file) else {
            problems.push(Diagnostic::new(&folder, (1, 1), "plugin folder has no plugin.yaml"));
            continue;
        };
        let doc = match parse_one::<RawPluginManifest>(&file, &text) {
            Ok(d) => d,
            Err(d) => {
                problems.push(d);
                continue;
            }
        };
        let pos = &doc.positions;
        let raw = doc.value;
        let mut local = Vec::new();
        let folder_name = folder.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if raw.name != folder_name {
            local.push(Diagnostic::new(
                &file,
                pos.at("name"),
                format!("plugin name `{}` differs from its folder `{folder_name}`", raw.name),
            ));
        }
        if raw.command.is_empty() {
            local.push(Diagnostic::new(&file, pos.at("command"), "`command` needs at least the program"));
        } else {
            let program = crate::action::plugin::resolve_program(&folder, &raw.command[0]);
            if program.contains('/') && !Path::new(&program).is_file() {
                local.push(Diagnostic::new(
                    &file,
                    pos.at("command[0]"),
                    format!("program {program} does not exist"),
                ));
            }
        }
        let risk = match raw.risk.as_deref().unwrap_or("medium").parse::<Risk>() {
            Ok(r) => r,
            Err(e) => {
                local.push(Diagnostic::new(&file, pos.at("risk"), e));
                Risk::Medium
            }
        };
        let timeout = match &raw.timeout {
            None => Duration::from_secs(60),
            Some(t) => t.text().parse::<Duration>().unwrap_or_else(|e| {
                local.push(Diagnostic::new(&file, pos.at("timeout"), e.to_string()));
                Duration::from_secs(60)
            }),
        };
        let mut params = Vec::new();
        for (name, p) in &raw.params {
            let at = format!("params.{name}");
            let ty = match p.kind.as_deref().unwrap_or("string") {
                "string" => ParamType::String,
                "integer" => ParamType::Integer,
                "boolean" => ParamType::Boolean,
                other => {
                    local.push(Diagnostic::new(
                        &file,
                        pos.at(&format!("{at}.type")),
                        format!("invalid type {other:?}: expected string, integer or boolean"),
                    ));
                    continue;
                }
            };
            let pattern = p.pattern.as_deref().and_then(|re| {
                crate::matcher::shared_regex(re)
                    .map_err(|e| {
                        local.push(Diagnostic::new(
                            &file,
                            pos.at(&format!("{at}.pattern")),
                            format!("invalid pattern: {}", first_line(&e.to_string())),
                        ))
                    })
                    .ok()
            });
            if let Some(d) = &p.default
                && let Err(e) = ty.check(d)
            {
                local.push(Diagnostic::new(&file, pos.at(&format!("{at}.default")), format!("default: {e}")));
            }
            params.push(PluginParam {
                name: name.clone(),
                ty,
                required: p.required,
                default: p.default.clone(),
                pattern,
                doc: p.description.clone().unwrap_or_default(),
            });
        }
        if local.is_empty() {
            out.push(Manifest {
                name: raw.name,
                description: raw.description,
                command: raw.command,
                dir: folder.clone(),
                risk,
                idempotent: raw.idempotent,
                timeout,
                params,
                env: raw.env,
                dry_run: raw.dry_run,
            });
        }
        problems.append(&mut local);
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_string()
}

struct Cx<'a> {
    file: &'a Path,
    pos: &'a Positions,
    problems: Vec<Diagnostic>,
    templates: &'a mut Templates,
    registry: &'a Registry,
    config: &'a Config,
    /// `params.<name>` of the runbook's integer and duration params: the
    /// only templates allowed outside strings in a PromQL query.
    typed_params: Vec<String>,
    /// Params the runbook declares, for references to `params.*`.
    declared_params: Vec<String>,
    /// Steps whose output a template may use here: earlier main steps, and
    /// for `on_failure` every main step and the earlier `on_failure` ones.
    earlier_steps: Vec<String>,
    /// Every step of the runbook, to tell "runs later" from "no such step".
    all_steps: Vec<String>,
}

/// The fields of `alert` in a template's context (`Alert::to_context`).
const ALERT_FIELDS: &[&str] = &[
    "status",
    "labels",
    "annotations",
    "startsAt",
    "endsAt",
    "fingerprint",
    "generatorURL",
];

/// The nearest of `known` to `name`, if near enough to be a likely typo.
fn nearest<'k>(name: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn did_you_mean(name: &str, known: &[&str], all: String) -> Option<String> {
    match nearest(name, known.iter().copied()) {
        Some(n) => Some(format!("did you mean `{n}`? {all}")),
        None => Some(all),
    }
}

/// The strings of a value that may hold templates.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if s.contains("{{") => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Cx<'_> {
    fn problem(&mut self, at: &str, message: impl Into<String>) {
        let d = Diagnostic::new(self.file, self.pos.at(at), message);
        self.problems.push(d);
    }

    fn problem_hint(&mut self, at: &str, message: impl Into<String>, hint: Option<String>) {
        let d = Diagnostic::new(self.file, self.pos.at(at), message).hint(hint);
        self.problems.push(d);
    }

    fn parse<T: std::str::FromStr>(&mut self, at: &str, text: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        text.parse::<T>().map_err(|e| self.problem(at, e.to_string())).ok()
    }

    fn template(&mut self, at: &str, source: &str, roots: &[&str]) -> Option<Tpl> {
        let compiled = self
            .templates
            .compile_str(source, roots)
            .map_err(|e| self.problem(at, e.to_string()))
            .ok()?;
        self.references(at, source, roots);
        Some(compiled)
    }

    /// Refuses references to what cannot exist when the template renders:
    /// undeclared params, alert fields the context does not have, steps
    /// that do not exist or have not run yet. Each is a problem at `at`.
    fn references(&mut self, at: &str, source: &str, roots: &[&str]) {
        for path in self.templates.take_references(source, roots) {
            if let Some((message, hint)) = self.reference_problem(&path) {
                self.problem_hint(at, format!("`{{{{{}}}}}`: {message}", path.join(".")), hint);
            }
        }
    }

    fn reference_problem(&self, path: &[String]) -> Option<(String, Option<String>)> {
        let (root, field) = (path.first()?.as_str(), path.get(1).map(String::as_str));
        let field = field?;
        let fixed = |known: &[&str], what: &str| -> Option<(String, Option<String>)> {
            if known.contains(&field) {
                return None;
            }
            let all = format!(
                "`{root}` has {}",
                known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            );
            Some((format!("{what} has no field `{field}`"), did_you_mean(field, known, all)))
        };
        match root {
            "alert" => fixed(ALERT_FIELDS, "the alert"),
            "runbook" => fixed(&["name", "owner"], "`runbook`"),
            "execution" => fixed(&["id"], "`execution`"),
            "target" | "error" => Some((format!("`{root}` is text and has no fields"), Some(format!("use `{{{{{root}}}}}`")))),
            "params" => {
                if self.declared_params.iter().any(|p| p == field) {
                    return None;
                }
                let known: Vec<&str> = self.declared_params.iter().map(String::as_str).collect();
                let all = if known.is_empty() {
                    "this runbook declares no params".to_string()
                } else {
                    format!("declared params: {}", known.join(", "))
                };
                Some((format!("no param `{field}` is declared"), did_you_mean(field, &known, all)))
            }
            "steps" => {
                if self.earlier_steps.iter().any(|s| s == field) {
                    return match path.get(2).map(String::as_str) {
                        None | Some("output") => None,
                        Some(other) => Some((
                            format!("a step's result has no field `{other}`"),
                            Some(format!("use `steps.{field}.output…`")),
                        )),
                    };
                }
                if self.all_steps.iter().any(|s| s == field) {
                    return Some((
                        format!("step `{field}` has not run yet here: its output does not exist"),
                        Some("a step sees the output of the steps before it (on_failure steps also see every main step)".into()),
                    ));
                }
                let known: Vec<&str> = self.earlier_steps.iter().map(String::as_str).collect();
                let all = if known.is_empty() {
                    "no step runs before this one".to_string()
                } else {
                    format!("steps before this one: {}", known.join(", "))
                };
                Some((format!("no step `{field}`"), did_you_mean(field, &known, all)))
            }
            _ => None,
        }
    }

    /// A literal URL host not in `http.allowed_hosts` can never be called:
    /// the action refuses it at run time. (Templated URLs have a literal
    /// scheme and host too; see `Templates::compile_url`.)
    fn allowed_host(&mut self, at: &str, url: &str) {
        let literal = url.split("{{").next().unwrap_or_default();
        let Ok(parsed) = reqwest::Url::parse(literal) else { return };
        let Some(host) = parsed.host_str() else { return };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let port = parsed.port_or_known_default().unwrap_or(80);
        if crate::action::http_guard::host_allowed(self.config, &host, port) {
            return;
        }
        let listed: Vec<String> = self
            .config
            .allowed_hosts
            .iter()
            .map(|h| {
                let name = if h.wildcard { format!("*.{}", h.host) } else { h.host.clone() };
                match h.port {
                    Some(p) => format!("{name}:{p}"),
                    None => name,
                }
            })
            .collect();
        let hint = if listed.is_empty() {
            "http.allowed_hosts in the config is empty: list the hosts steps may call".to_string()
        } else {
            let near = nearest(&host, listed.iter().map(String::as_str))
                .map(|n| format!("did you mean `{n}`? "))
                .unwrap_or_default();
            format!("{near}allowed: {}", listed.join(", "))
        };
        self.problem_hint(at, format!("host {host}:{port} is not in http.allowed_hosts"), Some(hint));
    }

    fn runbook(&mut self, raw: RawRunbook, digest: String) -> Option<Runbook> {
        if raw.api_version != "pitcrew/v1" {
            self.problem_hint(
                "apiVersion",
                format!("unsupported apiVersion {:?}", raw.api_version),
                Some("use `apiVersion: pitcrew/v1`".into()),
            );
        }
        if !valid_name(&raw.name) {
            self.problem(
                "name",
                format!("invalid runbook name {:?}: use lowercase letters, digits and -", raw.name),
            );
        }
        let trigger = raw.trigger.map(|t| {
            let alertnames = t.alertname.map(|a| a.into_vec()).unwrap_or_default();
            let matchers = t
                .matchers
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    Matcher::parse(m)
                        .map_err(|e| self.problem(&format!("trigger.matchers[{i}]"), e.to_string()))
                        .ok()
                })
                .collect::<Vec<_>>();
            if alertnames.is_empty() && matchers.is_empty() {
                self.problem(
                    "trigger",
                    "a trigger needs `alertname` or `matchers` (omit `trigger` for a manual-only runbook)",
                );
            }
            let status = match t.status.as_deref().unwrap_or("firing") {
                "firing" => StatusFilter::Firing,
                "resolved" => StatusFilter::Resolved,
                "any" => StatusFilter::Any,
                other => {
                    self.problem(
                        "trigger.status",
                        format!("invalid status {other:?}: expected firing, resolved or any"),
                    );
                    StatusFilter::Firing
                }
            };
            Trigger {
                alertnames,
                matchers,
                status,
            }
        });
        // Every declared name, including those with problems of their own:
        // a reference to them is not a second problem.
        self.declared_params = raw.params.keys().cloned().collect();
        self.all_steps = raw.steps.iter().chain(raw.on_failure.iter()).map(|s| s.name.clone()).collect();
        self.earlier_steps.clear();
        let params: Vec<ParamDef> = raw.params.iter().filter_map(|(name, p)| self.param(name, p)).collect();
        self.typed_params = params
            .iter()
            .filter(|p| matches!(p.kind, ParamKind::Integer | ParamKind::Duration))
            .map(|p| format!("params.{}", p.name))
            .collect();
        let target = raw.target.as_deref().and_then(|t| self.template("target", t, TARGET_ROOTS));
        let guardrails = self.guardrails(&raw.guardrails);
        let (toil_minutes, effect) = self.effect(raw.toil_minutes.as_ref(), raw.verify_within.as_ref(), raw.stays_fixed.as_ref());
        let notify_url = raw.notify.as_ref().and_then(|n| self.notify_url(&n.url));
        let permissions = raw.permissions.as_ref().map(|p| self.permissions(p));
        let pagerduty_acknowledge = raw.pagerduty.as_ref().is_some_and(|p| p.acknowledge);
        if pagerduty_acknowledge && self.config.pagerduty.is_none() {
            self.problem_hint(
                "pagerduty.acknowledge",
                "pagerduty.acknowledge needs the config's `pagerduty` section",
                Some("add `pagerduty: {routing_key_file: ...}` to pitcrew.yaml".into()),
            );
        }
        let raw_step_names: HashSet<&str> = raw.steps.iter().chain(raw.on_failure.iter()).map(|s| s.name.as_str()).collect();
        let mut names = HashSet::new();
        let steps = self.steps("steps", &raw.steps, STEP_ROOTS, &mut names);
        let on_failure = self.steps("on_failure", &raw.on_failure, FAILURE_ROOTS, &mut names);
        if raw.steps.is_empty() {
            self.problem("steps", "a runbook needs at least one step");
        }
        let highest = steps.iter().chain(on_failure.iter()).map(|s| s.risk).max().unwrap_or(Risk::Low);
        let risk = match raw.risk.as_deref() {
            None => highest,
            Some(text) => match text.parse::<Risk>() {
                Ok(r) if r < highest => {
                    let step = steps
                        .iter()
                        .chain(on_failure.iter())
                        .find(|s| s.risk == highest)
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    self.problem_hint(
                        "risk",
                        format!("runbook risk {r} is lower than step `{step}` ({highest})"),
                        Some("lower a step's risk on the step itself (`risk:` on the step), where reviewers see it".into()),
                    );
                    r
                }
                Ok(r) => r,
                Err(e) => {
                    self.problem("risk", e);
                    highest
                }
            },
        };
        let tests = raw
            .tests
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let at = format!("tests[{i}]");
                let status = match t.alert.status.as_deref().unwrap_or("firing") {
                    "firing" => AlertStatus::Firing,
                    "resolved" => AlertStatus::Resolved,
                    other => {
                        self.problem(
                            &format!("{at}.alert.status"),
                            format!("invalid status {other:?}: expected firing or resolved"),
                        );
                        return None;
                    }
                };
                let mut alert = Alert::firing("");
                alert.labels = t.alert.labels;
                alert.annotations = t.alert.annotations;
                alert.status = status;
                alert.fingerprint = format!("test-{i}");
                for step in t.expect.steps.keys() {
                    if !raw_step_names.contains(step.as_str()) {
                        self.problem(&format!("{at}.expect.steps.{step}"), format!("no step named `{step}`"));
                    }
                }
                let name = t.name.unwrap_or_else(|| format!("test {}", i + 1));
                Some(RunbookTest {
                    name,
                    line: self.pos.at(&at).0,
                    alert,
                    expect: Expect {
                        matches: t.expect.matches,
                        params: t.expect.params,
                        target: t.expect.target,
                        steps: t.expect.steps,
                    },
                })
            })
            .collect();
        let line = self.pos.at("name").0;
        Some(Runbook {
            name: raw.name,
            description: raw.description,
            owner: raw.owner,
            file: self.file.to_path_buf(),
            line,
            digest,
            trigger,
            params,
            target,
            risk,
            guardrails,
            toil_minutes,
            effect,
            notify_url,
            permissions,
            pagerduty_acknowledge,
            steps,
            on_failure,
            tests,
        })
    }

    fn param(&mut self, name: &str, p: &RawParam) -> Option<ParamDef> {
        let at = format!("params.{name}");
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.problem(&at, format!("invalid param name {name:?}: use letters, digits and _"));
        }
        let kind = match p.kind.as_deref().unwrap_or("string") {
            "string" => ParamKind::String,
            "integer" => ParamKind::Integer,
            "boolean" => ParamKind::Boolean,
            "duration" => ParamKind::Duration,
            other => {
                self.problem(
                    &format!("{at}.type"),
                    format!("invalid type {other:?}: expected string, integer, boolean or duration"),
                );
                return None;
            }
        };
        let pattern = p.pattern.as_deref().and_then(|re| {
            crate::matcher::shared_regex(re)
                .map_err(|e| self.problem(&format!("{at}.pattern"), format!("invalid pattern: {}", first_line(&e.to_string()))))
                .ok()
        });
        if (p.min.is_some() || p.max.is_some()) && kind != ParamKind::Integer {
            self.problem(&at, "`min` and `max` apply to integer params only");
        }
        if let (Some(min), Some(max)) = (p.min, p.max)
            && min > max
        {
            self.problem(&format!("{at}.min"), format!("min {min} is above max {max}"));
        }
        let default = match &p.default {
            None => None,
            Some(v) => {
                let compiled = self
                    .templates
                    .compile_value(v, PARAM_ROOTS)
                    .map_err(|e| self.problem(&format!("{at}.default"), e.to_string()))
                    .ok();
                if compiled.is_some() {
                    let mut sources = Vec::new();
                    strings(v, &mut sources);
                    for source in sources {
                        self.references(&format!("{at}.default"), &source, PARAM_ROOTS);
                    }
                }
                compiled
            }
        };
        Some(ParamDef {
            name: name.to_string(),
            kind,
            default,
            required: p.required,
            pattern,
            min: p.min,
            max: p.max,
        })
    }

    fn guardrails(&mut self, g: &super::raw::RawGuardrails) -> Guardrails {
        let mut out = Guardrails::default();
        if let Some(v) = &g.cooldown {
            out.cooldown = self.parse::<Duration>("guardrails.cooldown", &v.text());
        }
        if let Some(v) = &g.rate_limit {
            out.rate_limit = self.parse::<Rate>("guardrails.rate_limit", &v.text());
        }
        if let Some(v) = &g.runbook_rate_limit {
            out.runbook_rate_limit = self.parse::<Rate>("guardrails.runbook_rate_limit", &v.text());
        }
        if let Some(v) = &g.escalate_after {
            out.escalate_after = self.parse::<Rate>("guardrails.escalate_after", &v.text());
        }
        if let Some(v) = &g.approval_timeout
            && let Some(d) = self.parse::<Duration>("guardrails.approval_timeout", &v.text())
        {
            out.approval_timeout = d;
        }
        if let Some(c) = g.concurrency {
            if c == 0 {
                self.problem("guardrails.concurrency", "concurrency must be at least 1");
            }
            out.concurrency = c.max(1);
        }
        out.approval = match g.approval.as_deref().unwrap_or("auto") {
            "auto" => Approval::Auto,
            "required" => Approval::Required,
            other => {
                self.problem(
                    "guardrails.approval",
                    format!("invalid approval {other:?}: expected auto or required"),
                );
                Approval::Auto
            }
        };
        if let Some(slo) = &g.slo {
            if self.config.slo(slo).is_none() {
                let known: Vec<&str> = self.config.slos.iter().map(|s| s.name.as_str()).collect();
                let hint = if known.is_empty() {
                    "no slos are defined in the config".to_string()
                } else {
                    format!("defined slos: {}", known.join(", "))
                };
                self.problem_hint("guardrails.slo", format!("unknown slo `{slo}`"), Some(hint));
            }
            out.slo = Some(slo.clone());
        }
        out.dry_run = g.dry_run;
        out.self_approval = g.self_approval;
        if let Some(v) = &g.min_effectiveness
            && let Some(r) = self.parse::<Ratio>("guardrails.min_effectiveness", &v.text())
        {
            if r.0 <= 0.0 {
                self.problem(
                    "guardrails.min_effectiveness",
                    format!("min_effectiveness {r} must be above 0% (leave it out to never block)"),
                );
            } else {
                out.min_effectiveness = Some(r);
            }
        }
        out.freeze = self.window_names("freeze", &g.freeze);
        out.only_during = self.window_names("only_during", &g.only_during);
        out.inhibit_while_firing = self.inhibitions(&g.inhibit_while_firing);
        out
    }

    /// Names of windows the config defines (`freeze`, `only_during`).
    fn window_names(&mut self, key: &str, names: &[String]) -> Vec<String> {
        for (i, name) in names.iter().enumerate() {
            if self.config.window(name).is_none() {
                let known: Vec<&str> = self.config.windows.iter().map(|w| w.name.as_str()).collect();
                let all = if known.is_empty() {
                    "no windows are defined in the config (`windows:`)".to_string()
                } else {
                    format!("defined windows: {}", known.join(", "))
                };
                self.problem_hint(
                    &format!("guardrails.{key}[{i}]"),
                    format!("unknown window `{name}`"),
                    did_you_mean(name, &known, all),
                );
            }
        }
        names.to_vec()
    }

    /// `inhibit_while_firing`: matchers whose values may be templates.
    fn inhibitions(&mut self, rules: &[Vec<String>]) -> Vec<Vec<crate::inhibit::InhibitMatcher>> {
        let mut out = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("guardrails.inhibit_while_firing[{i}]");
            if rule.is_empty() {
                self.problem(&at, "an empty list of matchers would hold for every firing alert");
                continue;
            }
            let mut matchers = Vec::new();
            for (j, text) in rule.iter().enumerate() {
                let at = format!("{at}[{j}]");
                let (name, op, value) = match Matcher::split(text) {
                    Ok(parts) => parts,
                    Err(e) => {
                        self.problem(&at, e.to_string());
                        continue;
                    }
                };
                let Some(tpl) = self.template(&at, &value, crate::inhibit::ROOTS) else {
                    continue;
                };
                // A literal regex is checked now; a rendered one when it renders.
                if tpl.is_literal()
                    && let Err(e) = Matcher::new(text, name.clone(), op, value)
                {
                    self.problem(&at, e.to_string());
                    continue;
                }
                matchers.push(crate::inhibit::InhibitMatcher {
                    source: text.clone(),
                    name,
                    op,
                    value: tpl,
                });
            }
            out.push(matchers);
        }
        out
    }

    /// `toil_minutes`, `verify_within` and `stays_fixed`.
    fn effect(&mut self, toil: Option<&Scalar>, verify_within: Option<&Scalar>, stays_fixed: Option<&Scalar>) -> (Option<u32>, Effect) {
        let toil = toil.and_then(|v| match v {
            Scalar::Int(n) if (0..=i64::from(u32::MAX)).contains(n) => Some(*n as u32),
            other => {
                self.problem(
                    "toil_minutes",
                    format!(
                        "invalid toil_minutes {:?}: expected a whole number of minutes, 0 or more",
                        other.text()
                    ),
                );
                None
            }
        });
        let mut effect = Effect::default();
        if let Some(v) = verify_within
            && let Some(d) = self.parse::<Duration>("verify_within", &v.text())
        {
            if d.as_millis() == 0 {
                self.problem("verify_within", "verify_within must be longer than 0s");
            }
            effect.verify_within = d;
        }
        if let Some(v) = stays_fixed
            && let Some(d) = self.parse::<Duration>("stays_fixed", &v.text())
        {
            effect.stays_fixed = d;
        }
        (toil, effect)
    }

    /// `permissions:`. A group no token or user is in is an error: the
    /// permission could never be granted, which is most likely a typo.
    fn permissions(&mut self, p: &super::raw::RawPermissions) -> super::Permissions {
        if p.run.is_none() && p.approve.is_none() {
            self.problem(
                "permissions",
                "permissions needs `run` or `approve` (or leave it out: any operator may)",
            );
        }
        let known = crate::authz::known_groups(self.config);
        for (key, list) in [("run", &p.run), ("approve", &p.approve)] {
            for (i, group) in list.iter().flatten().enumerate() {
                if !known.contains(group.as_str()) {
                    let hint = if known.is_empty() {
                        "no auth.tokens or auth.users entry in the config has groups".to_string()
                    } else {
                        format!("groups in the config: {}", known.iter().copied().collect::<Vec<_>>().join(", "))
                    };
                    self.problem_hint(
                        &format!("permissions.{key}[{i}]"),
                        format!("group `{group}` has no member: no auth.tokens or auth.users entry is in it"),
                        Some(hint),
                    );
                }
            }
        }
        super::Permissions {
            run: p.run.clone(),
            approve: p.approve.clone(),
        }
    }

    /// A runbook's own notice URL: literal (no alert data decides where
    /// notices go), http or https, with a host.
    fn notify_url(&mut self, url: &str) -> Option<String> {
        if url.contains("{{") {
            self.problem("notify.url", "notify.url must be a literal URL, not a template");
            return None;
        }
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(url.to_string()),
            // The URL is a secret: say what is wrong without showing it.
            _ => {
                self.problem("notify.url", "notify.url must be an http or https URL with a host");
                None
            }
        }
    }

    /// A Kubernetes step's cluster, where it is known at load time: a
    /// literal name must be configured, and a step naming none needs a
    /// default cluster. A templated name is checked when the step runs.
    fn cluster(&mut self, at: &str, step: &str, action: &str, with: &BTreeMap<String, Tpl>) {
        if !action.starts_with("kubernetes.") {
            return;
        }
        let clusters = &self.config.kubernetes_clusters;
        let known = || clusters.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        match with.get("cluster").map(|t| t.literal()) {
            Some(Some(serde_json::Value::String(name))) if !clusters.contains_key(&name) => {
                let hint = Some(format!("configured clusters (kubernetes.clusters): {}", known()));
                self.problem_hint(
                    &format!("{at}.with.cluster"),
                    format!("step `{step}`: unknown cluster `{name}`"),
                    hint,
                );
            }
            None if self.config.kubernetes_default_cluster.is_none() => {
                let hint = Some(format!(
                    "name one with `cluster:` (configured: {}) or set kubernetes.default_cluster",
                    known()
                ));
                self.problem_hint(
                    &format!("{at}.action"),
                    format!("step `{step}` names no cluster and kubernetes.default_cluster is not set"),
                    hint,
                );
            }
            _ => {}
        }
    }

    fn steps(&mut self, key: &str, raw: &[RawStep], roots: &[&str], names: &mut HashSet<String>) -> Vec<Step> {
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            if i > 0 {
                self.earlier_steps.push(raw[i - 1].name.clone());
            }
            let at = format!("{key}[{i}]");
            if !s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') || s.name.is_empty() {
                self.problem(
                    &format!("{at}.name"),
                    format!("invalid step name {:?}: use letters, digits, - and _", s.name),
                );
            }
            if !names.insert(s.name.clone()) {
                self.problem(&format!("{at}.name"), format!("duplicate step name `{}`", s.name));
            }
            let Some(action) = self.registry.get(&s.action).cloned() else {
                let hint = match self.registry.nearest(&s.action) {
                    Some(n) => Some(format!("did you mean `{n}`? `pitcrew actions` lists them all")),
                    None if s.action.starts_with("plugin.") => Some(format!(
                        "no plugin folder `{}` with a plugin.yaml",
                        s.action.trim_start_matches("plugin.")
                    )),
                    None => Some("`pitcrew actions` lists them all".into()),
                };
                self.problem_hint(&format!("{at}.action"), format!("unknown action `{}`", s.action), hint);
                continue;
            };
            let mut with = BTreeMap::new();
            let mut broken: Vec<String> = Vec::new();
            for (field, value) in &s.with {
                let field_at = format!("{at}.with.{field}");
                let ty = action.spec().params.iter().find(|p| &p.name == field).map(|p| p.ty);
                let compiled = match (ty, value) {
                    (Some(ParamType::Url), serde_json::Value::String(src)) => self.templates.compile_url(src, roots),
                    (Some(ParamType::Promql), serde_json::Value::String(src)) => {
                        self.templates.compile_promql(src, roots, &self.typed_params)
                    }
                    _ => self.templates.compile_value(value, roots),
                };
                match compiled {
                    Ok(t) => {
                        let mut sources = Vec::new();
                        strings(value, &mut sources);
                        for source in sources {
                            self.references(&field_at, &source, roots);
                        }
                        if ty == Some(ParamType::Url)
                            && matches!(action.spec().name.as_str(), "http" | "notify")
                            && let serde_json::Value::String(url) = value
                        {
                            self.allowed_host(&field_at, url);
                        }
                        with.insert(field.clone(), t);
                    }
                    Err(e) => {
                        self.problem(&field_at, format!("with.{field}: {e}"));
                        broken.push(field.clone());
                    }
                }
            }
            for (field, message, hint) in check_with(action.as_ref(), &with, &broken) {
                let place = match &field {
                    Some(f) => self.pos.key(&format!("{at}.with.{f}")),
                    None => self.pos.at(&format!("{at}.action")),
                };
                self.problems.push(Diagnostic::new(self.file, place, message).hint(hint));
            }
            self.cluster(&at, &s.name, action.spec().name.as_str(), &with);
            let when = s.when.as_deref().and_then(|w| self.template(&format!("{at}.when"), w, roots));
            let timeout = s
                .timeout
                .as_ref()
                .and_then(|t| self.parse::<Duration>(&format!("{at}.timeout"), &t.text()));
            let idempotent = action.step_idempotent(&with);
            if s.retries > 0 && !idempotent {
                self.problem_hint(
                    &format!("{at}.retries"),
                    format!("step `{}`: `retries` on non-idempotent action `{}`", s.name, action.spec().name),
                    Some("a blind retry could do the change twice; remove `retries`".into()),
                );
            }
            let risk = match &s.risk {
                Some(r) => self.parse::<Risk>(&format!("{at}.risk"), r).unwrap_or(Risk::High),
                None => action.step_risk(&with),
            };
            out.push(Step {
                name: s.name.clone(),
                action,
                with,
                when,
                timeout,
                retries: s.retries,
                risk,
                idempotent,
                continue_on_error: s.continue_on_error,
            });
        }
        if let Some(last) = raw.last() {
            self.earlier_steps.push(last.name.clone());
        }
        out
    }
}
