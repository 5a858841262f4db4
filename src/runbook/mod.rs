//! Runbooks: the checked model, the set loaded from disk, and resolving a
//! runbook against an alert (params, target, rendered steps).
//!
//! `raw` mirrors the YAML, `compile` checks it into these types, `loader`
//! reads files. Resolution is pure: no IO.

pub mod compile;
pub mod loader;
pub mod raw;
mod risk;
pub mod selftest;
pub mod template;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use handlebars::Context;
use serde::Serialize;
use serde_json::{Value, json};

pub use risk::Risk;

use crate::action::{Action, Registry};
use crate::alert::Alert;
use crate::matcher::{MatchIndex, Trigger};
use crate::units::{Duration, Rate, Ratio};
use template::{TemplateError, Templates, Tpl};

/// The type of a runbook parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    String,
    Integer,
    Boolean,
    /// A Prometheus duration, kept in its canonical form (`1h30m`): safe to
    /// put into a PromQL range or offset.
    Duration,
}

#[derive(Debug, Clone)]
pub struct ParamDef {
    pub name: String,
    pub kind: ParamKind,
    pub default: Option<Tpl>,
    pub required: bool,
    pub pattern: Option<crate::matcher::Pattern>,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    Auto,
    Required,
}

#[derive(Debug, Clone, Serialize)]
pub struct Guardrails {
    pub cooldown: Option<Duration>,
    pub rate_limit: Option<Rate>,
    pub runbook_rate_limit: Option<Rate>,
    pub concurrency: u32,
    pub slo: Option<String>,
    pub escalate_after: Option<Rate>,
    pub approval: Approval,
    pub approval_timeout: Duration,
    pub dry_run: bool,
    /// Whether the person who asked for a run may approve it themselves
    /// (off: the two-person rule).
    pub self_approval: bool,
    /// Block automated runs once enough judged runs say this share of
    /// them, or fewer, fixed the alert (see `store::effect`).
    pub min_effectiveness: Option<Ratio>,
    /// Windows (config `windows:`) in which automated runs above low risk
    /// wait for approval.
    pub freeze: Vec<String>,
    /// Windows outside all of which automated runs above low risk wait for
    /// approval.
    pub only_during: Vec<String>,
    /// Rules, each a list of matchers one firing alert must all hold for
    /// to block the run.
    pub inhibit_while_firing: Vec<Vec<crate::inhibit::InhibitMatcher>>,
}

impl Default for Guardrails {
    fn default() -> Self {
        Guardrails {
            cooldown: None,
            rate_limit: None,
            runbook_rate_limit: None,
            concurrency: 1,
            slo: None,
            escalate_after: None,
            approval: Approval::Auto,
            approval_timeout: Duration::from_secs(3600),
            dry_run: false,
            self_approval: false,
            min_effectiveness: None,
            freeze: Vec::new(),
            only_during: Vec::new(),
            inhibit_while_firing: Vec::new(),
        }
    }
}

/// `permissions:`: groups allowed to start a runbook by hand (`run`) and to
/// approve or deny its runs (`approve`). A list left out allows any operator;
/// an empty one allows nobody. Checked by `crate::authz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    pub run: Option<Vec<String>>,
    pub approve: Option<Vec<String>>,
}

pub struct Step {
    pub name: String,
    pub action: Arc<dyn Action>,
    pub with: BTreeMap<String, Tpl>,
    pub when: Option<Tpl>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub risk: Risk,
    pub idempotent: bool,
    pub continue_on_error: bool,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("action", &self.action.spec().name)
            .finish()
    }
}

#[derive(Debug)]
pub struct Runbook {
    pub name: String,
    pub description: String,
    pub owner: Option<String>,
    pub file: PathBuf,
    pub line: usize,
    /// SHA-256 of the runbook's source document.
    pub digest: String,
    pub trigger: Option<Trigger>,
    pub params: Vec<ParamDef>,
    pub target: Option<Tpl>,
    pub risk: Risk,
    pub guardrails: Guardrails,
    /// Human minutes one successful run saves (`pitcrew report`).
    pub toil_minutes: Option<u32>,
    /// How a successful run is judged effective.
    pub effect: Effect,
    /// Where this runbook's notices (approval waits, failures) go instead of
    /// the config's `notify.url`. A secret, like `notify.url`: the URL is
    /// the webhook's credential.
    pub notify_url: Option<String>,
    /// Who may start it by hand and answer its approvals; `None`: any operator.
    pub permissions: Option<Permissions>,
    /// `pagerduty.acknowledge`: acknowledge Alertmanager's incident when a
    /// run started by an alert starts; page when it ends failed or unknown.
    pub pagerduty_acknowledge: bool,
    pub steps: Vec<Step>,
    pub on_failure: Vec<Step>,
    pub tests: Vec<selftest::RunbookTest>,
}

/// The windows a successful run is judged in: its alert resolves within
/// `verify_within` of the run's end, and no alert the runbook answers
/// fires again on the target within `stays_fixed` of the resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Effect {
    pub verify_within: Duration,
    pub stays_fixed: Duration,
}

impl Default for Effect {
    fn default() -> Self {
        Effect {
            verify_within: Duration::from_secs(15 * 60),
            stays_fixed: Duration::from_secs(3600),
        }
    }
}

/// Why an alert or a manual request could not be resolved into a run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// A parameter's value is missing or invalid.
    #[error("param `{name}`: {reason}")]
    Param { name: String, reason: String },
    /// `--param` names a parameter the runbook does not declare.
    #[error("unknown param `{0}`")]
    UnknownParam(String),
    /// The target template failed.
    #[error("target: {0}")]
    Target(TemplateError),
    /// An `inhibit_while_firing` matcher failed to render, or rendered to
    /// an invalid regular expression.
    #[error("guardrails.inhibit_while_firing[{rule}][{matcher}]: {reason}")]
    Inhibit { rule: usize, matcher: usize, reason: String },
    /// A step's input failed to render.
    #[error("step `{step}`: {source}")]
    Step {
        step: String,
        #[source]
        source: TemplateError,
    },
}

/// Params and target, resolved for one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub params: serde_json::Map<String, Value>,
    pub target: String,
    /// `inhibit_while_firing`, rendered with these params and target.
    #[serde(skip)]
    pub inhibit: Vec<Vec<crate::matcher::Matcher>>,
}

/// All runbooks loaded from the configured paths, indexed for matching.
pub struct RunbookSet {
    pub runbooks: Vec<Arc<Runbook>>,
    pub templates: Templates,
    pub registry: Registry,
    index: MatchIndex,
}

impl std::fmt::Debug for RunbookSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunbookSet").field("runbooks", &self.runbooks.len()).finish()
    }
}

impl RunbookSet {
    pub fn new(runbooks: Vec<Runbook>, templates: Templates, registry: Registry) -> RunbookSet {
        let runbooks: Vec<Arc<Runbook>> = runbooks.into_iter().map(Arc::new).collect();
        let index = MatchIndex::new(runbooks.iter().enumerate().filter_map(|(i, r)| r.trigger.as_ref().map(|t| (i, t))));
        RunbookSet {
            runbooks,
            templates,
            registry,
            index,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Runbook>> {
        self.runbooks.iter().find(|r| r.name == name)
    }

    /// Runbooks whose trigger matches the alert, in load order.
    pub fn matching<'a>(&'a self, alert: &'a Alert) -> impl Iterator<Item = &'a Arc<Runbook>> + 'a {
        self.index.candidates(alert.name()).filter_map(move |i| {
            let rb = &self.runbooks[i];
            rb.trigger.as_ref().is_some_and(|t| t.matches(alert)).then_some(rb)
        })
    }

    /// Resolves params (overrides win over defaults) and the target.
    pub fn resolve(&self, rb: &Runbook, alert: Option<&Alert>, overrides: &BTreeMap<String, String>) -> Result<Resolved, ResolveError> {
        for name in overrides.keys() {
            if !rb.params.iter().any(|p| &p.name == name) {
                return Err(ResolveError::UnknownParam(name.clone()));
            }
        }
        let base = json!({
            "alert": alert.map(Alert::to_context).unwrap_or(Value::Null),
            "runbook": {"name": rb.name, "owner": rb.owner},
        });
        let ctx = Context::wraps(&base).expect("a JSON value wraps");
        let mut params = serde_json::Map::new();
        for p in &rb.params {
            let err = |reason: String| ResolveError::Param {
                name: p.name.clone(),
                reason,
            };
            let value = match (overrides.get(&p.name), &p.default) {
                (Some(v), _) => Value::String(v.clone()),
                (None, Some(tpl)) => self.templates.render(tpl, &ctx).map_err(|e| err(e.to_string()))?,
                (None, None) => Value::Null,
            };
            let value = check_param(p, value).map_err(err)?;
            params.insert(p.name.clone(), value);
        }
        let target = match &rb.target {
            None => rb.name.clone(),
            Some(tpl) => {
                let mut with_params = base.clone();
                with_params["params"] = Value::Object(params.clone());
                let ctx = Context::wraps(&with_params).expect("a JSON value wraps");
                self.templates.render_string(tpl, &ctx).map_err(ResolveError::Target)?
            }
        };
        let inhibit = self.inhibitions(rb, &base, &params, &target)?;
        Ok(Resolved { params, target, inhibit })
    }

    /// Renders `inhibit_while_firing` for one run (strict, as every template).
    fn inhibitions(
        &self,
        rb: &Runbook,
        base: &Value,
        params: &serde_json::Map<String, Value>,
        target: &str,
    ) -> Result<Vec<Vec<crate::matcher::Matcher>>, ResolveError> {
        let rules = &rb.guardrails.inhibit_while_firing;
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = Context::wraps(json!({"params": params, "target": target, "runbook": base["runbook"]})).expect("a JSON value wraps");
        rules
            .iter()
            .enumerate()
            .map(|(rule, matchers)| {
                matchers
                    .iter()
                    .enumerate()
                    .map(|(matcher, m)| {
                        let err = |reason: String| ResolveError::Inhibit { rule, matcher, reason };
                        let value = self.templates.render_string(&m.value, &ctx).map_err(|e| err(e.to_string()))?;
                        crate::matcher::Matcher::new(&m.source, m.name.clone(), m.op, value).map_err(|e| err(e.to_string()))
                    })
                    .collect()
            })
            .collect()
    }

    /// The context a step renders against.
    pub fn step_context(
        rb: &Runbook,
        alert: Option<&Alert>,
        resolved: &Resolved,
        execution_id: &str,
        outputs: &serde_json::Map<String, Value>,
        error: Option<&str>,
    ) -> Context {
        let mut v = json!({
            "alert": alert.map(Alert::to_context).unwrap_or(Value::Null),
            "params": resolved.params,
            "target": resolved.target,
            "runbook": {"name": rb.name, "owner": rb.owner},
            "execution": {"id": execution_id},
            "steps": outputs,
        });
        if let Some(e) = error {
            v["error"] = Value::String(e.to_string());
        }
        Context::from(v)
    }

    /// Renders a step's `with` block.
    pub fn render_with(&self, step: &Step, ctx: &Context) -> Result<Value, ResolveError> {
        let mut out = serde_json::Map::new();
        for (k, tpl) in &step.with {
            let v = self.templates.render(tpl, ctx).map_err(|source| ResolveError::Step {
                step: step.name.clone(),
                source: with_field(k, source),
            })?;
            out.insert(k.clone(), v);
        }
        Ok(Value::Object(out))
    }

    /// Whether the step's `when` holds (no `when` = always).
    pub fn when_holds(&self, step: &Step, ctx: &Context) -> Result<bool, ResolveError> {
        match &step.when {
            None => Ok(true),
            Some(tpl) => self
                .templates
                .render_string(tpl, ctx)
                .map(|s| template::truthy(&s))
                .map_err(|source| ResolveError::Step {
                    step: step.name.clone(),
                    source,
                }),
        }
    }
}

fn with_field(field: &str, e: TemplateError) -> TemplateError {
    match e {
        TemplateError::Missing(v) => TemplateError::Missing(format!("{v} (in with.{field})")),
        other => other,
    }
}

/// Applies a parameter's type, pattern and bounds to its value.
fn check_param(p: &ParamDef, value: Value) -> Result<Value, String> {
    let blank = match &value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    };
    if blank {
        return if p.required {
            Err("is required but empty".into())
        } else {
            Ok(Value::Null)
        };
    }
    let typed = match p.kind {
        ParamKind::String => Value::String(template::value_text(&value)),
        ParamKind::Integer => {
            let n = match &value {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("expected an integer, got {}", value))?;
            if let Some(min) = p.min
                && n < min
            {
                return Err(format!("{n} is below the minimum {min}"));
            }
            if let Some(max) = p.max
                && n > max
            {
                return Err(format!("{n} is above the maximum {max}"));
            }
            Value::from(n)
        }
        ParamKind::Duration => {
            let text = template::value_text(&value);
            let d: Duration = text.parse().map_err(|e: crate::units::UnitError| e.to_string())?;
            Value::String(d.to_string())
        }
        ParamKind::Boolean => match &value {
            Value::Bool(b) => Value::Bool(*b),
            Value::String(s) if s == "true" || s == "false" => Value::Bool(s == "true"),
            other => return Err(format!("expected true or false, got {other}")),
        },
    };
    if let (Some(re), Value::String(s)) = (&p.pattern, &typed)
        && !re.is_match(s)
    {
        return Err(format!("{s:?} does not match {}", re.as_str()));
    }
    Ok(typed)
}
