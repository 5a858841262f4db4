//! The action catalogue: one explicit, ordered registry of what a step can do.
//!
//! Each action is one file implementing [`Action`]; adding one is that file
//! plus one line in [`Registry::builtin`]. Parameters are declared once as a
//! [`Spec`] (checked at load time, shown by `pitcrew actions`) and read at run
//! time into the action's own typed struct with [`input`].
//!
//! Actions never see raw templates: they get the rendered input as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::alert::Alert;
use crate::config::Config;
use crate::redact::Redactor;
use crate::runbook::Risk;
use crate::runbook::template::Tpl;

pub mod alertmanager;
pub mod exec;
pub mod http;
pub mod http_guard;
pub mod kubernetes;
pub mod log;
pub mod notify;
pub mod plugin;
pub mod prometheus;
pub mod sleep;

/// Why a step's action failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActionError {
    /// A parameter has the wrong type or value after rendering.
    #[error("parameter `{field}`: {reason}")]
    Input { field: String, reason: String },
    /// The action refused to act because it would be unsafe.
    #[error("refused: {0}")]
    Refused(String),
    /// The action ran and did not succeed.
    #[error("{0}")]
    Failed(String),
    /// The action did not finish within its timeout.
    #[error("timed out after {0}")]
    Timeout(crate::units::Duration),
    /// Something the action needs is not reachable or not configured.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The action panicked: a bug, not the target's fault. The panic's
    /// message goes to the log; the audit says only this.
    #[error("internal error")]
    Internal,
}

impl ActionError {
    pub fn kind(&self) -> &'static str {
        match self {
            ActionError::Input { .. } => "bad_input",
            ActionError::Refused(_) => "refused",
            ActionError::Failed(_) => "failed",
            ActionError::Timeout(_) => "timeout",
            ActionError::Unavailable(_) => "unavailable",
            ActionError::Internal => "internal",
        }
    }

    pub fn input(field: &str, reason: impl Into<String>) -> ActionError {
        ActionError::Input {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// The type of one action parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Duration,
    /// A map of strings.
    StringMap,
    /// A list of strings.
    StringList,
    /// A URL whose scheme and host are literal; templated parts are
    /// percent-encoded.
    Url,
    /// A PromQL expression: templates stand inside double-quoted strings
    /// and are escaped there.
    Promql,
    /// A map or list (sent as JSON), or a string (sent as is).
    Body,
    /// A JSON object or list.
    Object,
    /// An integer or a list of integers.
    IntegerOrList,
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
    /// Anything.
    Any,
}

impl ParamType {
    /// Checks a literal value. Strings that parse as the type are accepted
    /// (`"3"` for an integer).
    pub fn check(&self, v: &Value) -> Result<(), String> {
        let ok = match (self, v) {
            (ParamType::Any, _) => true,
            (ParamType::String, Value::String(_)) => true,
            (ParamType::String, Value::Number(_) | Value::Bool(_)) => true,
            (ParamType::Promql, Value::String(_)) => true,
            (ParamType::Url, Value::String(s)) => s.starts_with("http://") || s.starts_with("https://"),
            (ParamType::Integer, Value::Number(n)) => n.is_i64(),
            (ParamType::Integer, Value::String(s)) => s.trim().parse::<i64>().is_ok(),
            (ParamType::Number, Value::Number(_)) => true,
            (ParamType::Number, Value::String(s)) => s.trim().parse::<f64>().is_ok(),
            (ParamType::Boolean, Value::Bool(_)) => true,
            (ParamType::Boolean, Value::String(s)) => matches!(s.as_str(), "true" | "false"),
            (ParamType::Duration, Value::String(s)) => s.parse::<crate::units::Duration>().is_ok(),
            (ParamType::StringMap, Value::Object(m)) => m.values().all(|v| !v.is_object() && !v.is_array()),
            (ParamType::StringList, Value::Array(items)) => items.iter().all(|v| !v.is_object() && !v.is_array()),
            (ParamType::Body, _) => !v.is_null(),
            (ParamType::Object, Value::Object(_) | Value::Array(_)) => true,
            (ParamType::IntegerOrList, Value::Array(items)) => items.iter().all(|i| ParamType::Integer.check(i).is_ok()),
            (ParamType::IntegerOrList, other) => ParamType::Integer.check(other).is_ok(),
            (ParamType::OneOf(words), Value::String(s)) => words.contains(&s.as_str()),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, got {}", self.describe(), short(v)))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ParamType::String => "a string".into(),
            ParamType::Integer => "an integer".into(),
            ParamType::Number => "a number".into(),
            ParamType::Boolean => "true or false".into(),
            ParamType::Duration => "a duration (e.g. 30s, 5m)".into(),
            ParamType::StringMap => "a map of strings".into(),
            ParamType::StringList => "a list of strings".into(),
            ParamType::Url => "an http:// or https:// URL".into(),
            ParamType::Promql => "a PromQL expression".into(),
            ParamType::Body => "a map, list or string".into(),
            ParamType::Object => "a map or list".into(),
            ParamType::IntegerOrList => "an integer or a list of integers".into(),
            ParamType::OneOf(words) => format!("one of {}", words.join(", ")),
            ParamType::Any => "any value".into(),
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// One declared parameter.
#[derive(Debug, Clone, Serialize)]
pub struct Param {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ParamType,
    pub required: bool,
    pub doc: String,
}

impl Param {
    pub fn new(name: &str, ty: ParamType, required: bool, doc: &str) -> Param {
        Param {
            name: name.into(),
            ty,
            required,
            doc: doc.into(),
        }
    }
}

/// A Kubernetes permission an action needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rbac {
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// What an action declares about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub name: String,
    pub summary: String,
    pub risk: Risk,
    pub idempotent: bool,
    pub params: Vec<Param>,
    pub rbac: Vec<Rbac>,
    /// An example `with:` block, YAML.
    pub example: String,
}

impl Spec {
    pub fn new(name: &str, summary: &str, risk: Risk, idempotent: bool) -> Spec {
        Spec {
            name: name.into(),
            summary: summary.into(),
            risk,
            idempotent,
            params: Vec::new(),
            rbac: Vec::new(),
            example: String::new(),
        }
    }

    pub fn param(mut self, name: &str, ty: ParamType, doc: &str) -> Spec {
        self.params.push(Param::new(name, ty, false, doc));
        self
    }

    pub fn required(mut self, name: &str, ty: ParamType, doc: &str) -> Spec {
        self.params.push(Param::new(name, ty, true, doc));
        self
    }

    pub fn rbac(mut self, api_group: &'static str, resources: &'static [&'static str], verbs: &'static [&'static str]) -> Spec {
        self.rbac.push(Rbac {
            api_group,
            resources,
            verbs,
        });
        self
    }

    pub fn example(mut self, yaml: &str) -> Spec {
        self.example = yaml.into();
        self
    }
}

/// How an action behaves in a dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// Reads run as usual.
    Run,
    /// Not run; audited as `skipped: dry run`.
    Skip,
    /// Run with the dry-run flag; the action makes sure nothing changes
    /// (Kubernetes `dryRun=All`, plugins with `dry_run: true`).
    Simulate,
}

/// Shared clients and settings actions may use; built once per process, on
/// first use (a `serve` whose runbooks never call out pays nothing for TLS
/// roots and connection pools).
pub struct Deps {
    pub config: Arc<Config>,
    pub redactor: Redactor,
    http: std::sync::OnceLock<reqwest::Client>,
    /// One client per configured cluster, each built on first use (tests
    /// may set one first).
    pub kube: kubernetes::Clusters,
}

impl Deps {
    pub fn new(config: Arc<Config>) -> Deps {
        let redactor = config.redactor.clone();
        let kube = kubernetes::Clusters::new(&config);
        Deps {
            config,
            redactor,
            http: std::sync::OnceLock::new(),
            kube,
        }
    }

    /// The HTTP client: redirects off, so an allowed host cannot bounce us elsewhere.
    pub fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("pitcrew/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("an HTTP client with default TLS builds")
        })
    }
}

/// What a running step knows about where it runs.
pub struct ActionContext<'a> {
    pub execution_id: &'a str,
    pub step: &'a str,
    /// Execution start: stamps that make re-runs no-ops use it.
    pub started_at: DateTime<Utc>,
    pub dry_run: bool,
    /// The execution's artifact folder (created on first use).
    pub artifacts: PathBuf,
    pub alert: Option<&'a Alert>,
    pub deps: &'a Deps,
}

impl ActionContext<'_> {
    /// Creates the artifact folder and returns it.
    pub fn artifact_dir(&self) -> Result<PathBuf, ActionError> {
        std::fs::create_dir_all(&self.artifacts)
            .map_err(|e| ActionError::Failed(format!("cannot create artifact folder {}: {e}", self.artifacts.display())))?;
        Ok(self.artifacts.clone())
    }

    /// Removes the artifact folder again if nothing was written to it: a
    /// command runs in it, but most write nothing, and thousands of empty
    /// folders are clutter (and inodes) for nobody.
    pub fn drop_empty_artifact_dir(&self) {
        let _ = std::fs::remove_dir(&self.artifacts);
    }

    /// Creates the artifact folder and returns the path for `name` in it.
    pub fn artifact_path(&self, name: &str) -> Result<PathBuf, ActionError> {
        Ok(self.artifact_dir()?.join(sanitize_file_name(name)))
    }
}

/// Artifact names come from step names and pod names; keep them inside the folder.
pub fn sanitize_file_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.');
    if s.is_empty() { "artifact".into() } else { s.to_string() }
}

/// A step's literal `with` values, for decisions made at load time.
pub type StaticWith<'a> = &'a BTreeMap<String, Tpl>;

/// An action kind.
#[async_trait::async_trait]
pub trait Action: Send + Sync {
    fn spec(&self) -> &Spec;

    /// The risk of this particular step (e.g. `http` GET is low).
    fn step_risk(&self, _with: StaticWith<'_>) -> Risk {
        self.spec().risk
    }

    /// Whether this particular step may be retried or re-run after a crash.
    fn step_idempotent(&self, _with: StaticWith<'_>) -> bool {
        self.spec().idempotent
    }

    /// Checks across fields at load time (e.g. `replicas` or `by`). Fields
    /// whose value is templated are absent from `literal`.
    fn check(&self, _literal: &BTreeMap<String, Value>, _templated: &[&str]) -> Vec<String> {
        Vec::new()
    }

    /// Checks on where templates stand, at load time (e.g. `exec` wants its
    /// program literal). Returns the field and the problem.
    fn check_templates(&self, _with: StaticWith<'_>) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Checks a rendered input against the templates it came from, before
    /// the step starts: what a value may do depends on whether the runbook
    /// wrote it or a template produced it (e.g. an `exec` argument that a
    /// label turned into an option).
    fn check_rendered(&self, _with: StaticWith<'_>, _input: &Value) -> Result<(), ActionError> {
        Ok(())
    }

    /// Names of variables of pitcrew's environment the action hands to what
    /// it runs (a plugin manifest's `env`): credentials, as a rule, so their
    /// values are redacted like config secrets.
    fn passes_env(&self) -> &[String] {
        &[]
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Run
    }

    /// Runs the step. `input` is the rendered `with` block.
    async fn run(&self, input: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError>;
}

/// Reads a rendered input into an action's typed parameters; errors name
/// the field (`timeout: invalid duration "soon"`).
pub fn input<T: DeserializeOwned>(v: &Value) -> Result<T, ActionError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "with".to_string() } else { path };
        ActionError::Input {
            field,
            reason: e.into_inner().to_string(),
        }
    })
}

/// Lenient readers: a string that parses as the expected type
/// is accepted (`"3"` for an integer).
pub mod lenient {
    use serde::{Deserialize, Deserializer, de::Error};
    use serde_json::Value;

    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n.as_i64().ok_or_else(|| D::Error::custom(format!("expected an integer, got {n}"))),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| D::Error::custom(format!("expected an integer, got {s:?}"))),
            other => Err(D::Error::custom(format!("expected an integer, got {other}"))),
        }
    }

    pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        int(d).map(Some)
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(D::Error::custom(format!("expected a string, got {other}"))),
        }
    }

    pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<crate::units::Duration>, D::Error> {
        let s = string(d)?;
        s.parse().map(Some).map_err(D::Error::custom)
    }

    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<crate::units::Duration, D::Error> {
        let s = string(d)?;
        s.parse().map_err(D::Error::custom)
    }

    pub fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
        let raw = std::collections::BTreeMap::<String, Value>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(_) | Value::Bool(_) => Ok((k, v.to_string())),
                other => Err(D::Error::custom(format!("`{k}`: expected a string, got {other}"))),
            })
            .collect()
    }

    pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Vec::<Value>::deserialize(d)?
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Bool(_) => Ok(v.to_string()),
                other => Err(D::Error::custom(format!("expected a string, got {other}"))),
            })
            .collect()
    }
}

/// The registry: built-in actions in catalogue order, then plugins.
#[derive(Clone)]
pub struct Registry {
    actions: Vec<Arc<dyn Action>>,
}

impl Registry {
    /// Built-in actions only.
    pub fn builtin() -> Registry {
        let actions: Vec<Arc<dyn Action>> = vec![
            Arc::new(kubernetes::rollout_restart::RolloutRestart::new()),
            Arc::new(kubernetes::scale::Scale::new()),
            Arc::new(kubernetes::delete_pods::DeletePods::new()),
            Arc::new(kubernetes::logs::Logs::new()),
            Arc::new(kubernetes::patch::Patch::new()),
            Arc::new(http::Http::new()),
            Arc::new(exec::Exec::new()),
            Arc::new(prometheus::Query::new()),
            Arc::new(prometheus::Wait::new()),
            Arc::new(notify::Notify::new()),
            Arc::new(alertmanager::Silence::new()),
            Arc::new(alertmanager::Unsilence::new()),
            Arc::new(sleep::Sleep::new()),
            Arc::new(log::Log::new()),
        ];
        Registry { actions }
    }

    /// Built-ins plus the given plugins as `plugin.<name>`.
    pub fn with_plugins(plugins: impl IntoIterator<Item = plugin::Manifest>) -> Registry {
        let mut registry = Registry::builtin();
        for manifest in plugins {
            registry.actions.push(Arc::new(plugin::Plugin::new(manifest)));
        }
        registry
    }

    /// Adds an action after the others (embedders and tests bring their own).
    pub fn with(mut self, action: Arc<dyn Action>) -> Registry {
        self.actions.push(action);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Action>> {
        self.actions.iter().find(|a| a.spec().name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Action>> {
        self.actions.iter()
    }

    /// The closest known action name, for hints.
    pub fn nearest(&self, name: &str) -> Option<&str> {
        self.actions
            .iter()
            .map(|a| a.spec().name.as_str())
            .map(|n| (strsim::jaro_winkler(n, name), n))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n)
    }
}

/// Checks a step's `with` against a spec: unknown and missing fields, and the
/// type of every literal value. Templated values are checked after rendering.
/// `broken` names fields that are present but failed to compile (already
/// reported), so they are not reported missing as well.
pub fn check_with(action: &dyn Action, with: &BTreeMap<String, Tpl>, broken: &[String]) -> Vec<(Option<String>, String, Option<String>)> {
    let spec = action.spec();
    let mut problems = Vec::new();
    for (field, tpl) in with {
        match spec.params.iter().find(|p| &p.name == field) {
            None => {
                let valid: Vec<&str> = spec.params.iter().map(|p| p.name.as_str()).collect();
                problems.push((
                    Some(field.clone()),
                    format!("unknown parameter `{field}` for action `{}`", spec.name),
                    Some(format!("valid parameters: {}", valid.join(", "))),
                ));
            }
            Some(param) => {
                if let Some(v) = tpl.literal()
                    && let Err(reason) = param.ty.check(&v)
                {
                    problems.push((Some(field.clone()), format!("parameter `{field}`: {reason}"), None));
                }
            }
        }
    }
    for p in spec.params.iter().filter(|p| p.required) {
        if !with.contains_key(&p.name) && !broken.contains(&p.name) {
            problems.push((
                None,
                format!("action `{}` needs parameter `{}` ({})", spec.name, p.name, p.doc),
                None,
            ));
        }
    }
    for (field, reason) in action.check_templates(with) {
        problems.push((Some(field), reason, None));
    }
    let literal: BTreeMap<String, Value> = with.iter().filter_map(|(k, t)| t.literal().map(|v| (k.clone(), v))).collect();
    let templated: Vec<&str> = with
        .iter()
        .filter(|(_, t)| !t.is_literal())
        .map(|(k, _)| k.as_str())
        .chain(broken.iter().map(String::as_str))
        .collect();
    for reason in action.check(&literal, &templated) {
        problems.push((None, reason, None));
    }
    problems
}

/// A least-privilege ClusterRole for the built-in Kubernetes actions, from
/// the same `Spec::rbac` data `pitcrew actions` shows. Wildcard needs (a
/// `kubernetes.patch` can target any kind) are left to the operator, named
/// in a comment rather than granted.
pub fn rbac_manifest(registry: &Registry) -> String {
    use std::collections::{BTreeMap, BTreeSet};
    let mut verbs: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut wildcard = Vec::new();
    for action in registry.iter() {
        for rule in &action.spec().rbac {
            if rule.api_group == "*" || rule.resources.contains(&"*") {
                wildcard.push(format!(
                    "{} needs {} on the kinds your runbooks use it for",
                    action.spec().name,
                    rule.verbs.join(", ")
                ));
                continue;
            }
            for resource in rule.resources {
                verbs
                    .entry((rule.api_group, resource))
                    .or_default()
                    .extend(rule.verbs.iter().copied());
            }
        }
    }
    // One rule per API group and verb set.
    let mut rules: BTreeMap<(&str, Vec<&str>), Vec<&str>> = BTreeMap::new();
    for ((group, resource), v) in verbs {
        rules.entry((group, v.into_iter().collect())).or_default().push(resource);
    }
    let list = |items: &[&str]| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    let mut out = String::from("# Generated by `pitcrew actions --rbac` from the action registry; a test keeps it in step.\n");
    out.push_str(
        "# RBAC applies per cluster: with several kubernetes.clusters, apply this role and bind it to pitcrew's identity in each of them.\n",
    );
    for w in wildcard {
        out.push_str(&format!("# {w}: add those rules yourself.\n"));
    }
    out.push_str("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: pitcrew\nrules:\n");
    for ((group, verbs), resources) in rules {
        out.push_str(&format!(
            "  - apiGroups: [{}]\n    resources: [{}]\n    verbs: [{}]\n",
            list(&[group]),
            list(&resources),
            list(&verbs)
        ));
    }
    out
}

/// Where the execution's artifacts go.
pub fn artifact_dir(state_dir: &Path, execution_id: &str) -> PathBuf {
    state_dir.join("artifacts").join(sanitize_file_name(execution_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique_and_examples_check() {
        let registry = Registry::builtin();
        let mut names = std::collections::HashSet::new();
        for action in registry.iter() {
            let spec = action.spec();
            assert!(names.insert(spec.name.clone()), "duplicate action {}", spec.name);
            assert!(!spec.summary.is_empty(), "{} has no summary", spec.name);
            assert!(
                spec.params.iter().all(|p| !p.doc.is_empty()),
                "{} has an undocumented parameter",
                spec.name
            );
            let example: BTreeMap<String, Value> =
                serde_yaml::from_str(&spec.example).unwrap_or_else(|e| panic!("{} example does not parse: {e}", spec.name));
            let mut templates = crate::runbook::template::Templates::default();
            let with: BTreeMap<String, Tpl> = example
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        templates
                            .compile_value(v, &["alert", "params", "target", "runbook", "execution", "steps"])
                            .unwrap(),
                    )
                })
                .collect();
            let problems = check_with(action.as_ref(), &with, &[]);
            assert!(problems.is_empty(), "{} example: {problems:?}", spec.name);
        }
    }

    #[test]
    fn nearest_name_is_a_useful_hint() {
        let registry = Registry::builtin();
        assert_eq!(registry.nearest("kubernetes.rollout-restart"), Some("kubernetes.rollout_restart"));
        assert_eq!(registry.nearest("zzz"), None);
    }
}
