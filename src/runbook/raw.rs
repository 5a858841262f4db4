//! The raw serde mirror of the runbook YAML (`apiVersion: pitcrew/v1`).
//!
//! Only shape lives here: unknown keys are refused, nothing is interpreted.
//! `compile` turns these into the checked model.
//!
//! The same types give `pitcrew schema` (JSON Schema for editors), so the
//! schema cannot drift from what is parsed. The `schemars` attributes add
//! what `compile` checks and editors can too (the fixed `apiVersion`, name
//! patterns, the words a key takes); the descriptions are what an editor
//! shows, so they speak to runbook authors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// A pitcrew runbook (`apiVersion: pitcrew/v1`): which alerts it answers,
/// what it needs from them, which guardrails bound it, and its steps.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "pitcrew runbook", rename = "Runbook")]
pub struct RawRunbook {
    /// Always `pitcrew/v1`.
    #[serde(rename = "apiVersion")]
    #[schemars(extend("const" = "pitcrew/v1"))]
    pub api_version: String,
    /// Lowercase letters, digits and `-`; unique across all files.
    #[schemars(pattern(r"^[a-z0-9-]+$"))]
    pub name: String,
    /// For people: `list`, the audit and reports show it.
    #[serde(default)]
    pub description: String,
    /// The team that owns it; shown in the audit and reports.
    #[serde(default)]
    pub owner: Option<String>,
    /// Which alerts start it; leave it out for a runbook that only runs by hand (`pitcrew run`).
    #[serde(default)]
    pub trigger: Option<RawTrigger>,
    /// Typed inputs, filled from the alert (`default`) or by `--param k=v` on manual runs.
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"pattern": "^[A-Za-z0-9_]+$"}))]
    pub params: BTreeMap<String, RawParam>,
    /// What it acts on (a template, e.g. `{{params.namespace}}/{{params.deployment}}`); cooldowns,
    /// rate limits and the concurrency lock are per runbook and target. Default: the runbook's name.
    #[serde(default)]
    pub target: Option<String>,
    /// `low`, `medium` or `high`; by default the highest risk of its steps, and never lower than a step's.
    #[serde(default)]
    #[schemars(extend("enum" = ["low", "medium", "high"]))]
    pub risk: Option<String>,
    /// Cooldown, rate limits, concurrency, error budget, escalation, approval, dry run.
    #[serde(default)]
    pub guardrails: RawGuardrails,
    /// Minutes of human work one successful run saves (a whole number); `pitcrew report` adds them up.
    #[serde(default)]
    pub toil_minutes: Option<Scalar>,
    /// A successful run is effective when its alert resolves within this after the run ends (default `15m`).
    #[serde(default)]
    pub verify_within: Option<Scalar>,
    /// ... and no alert this runbook answers fires again on that target within this after the resolve (default `1h`).
    #[serde(default)]
    pub stays_fixed: Option<Scalar>,
    /// Where this runbook's notices go instead of the config's `notify.url`.
    #[serde(default)]
    pub notify: Option<RawRunbookNotify>,
    /// Who may start it by hand and who may approve or deny its runs, by group (`auth.tokens[].groups`,
    /// `auth.users`). Without it, any operator may.
    #[serde(default)]
    pub permissions: Option<RawPermissions>,
    /// PagerDuty (the config's `pagerduty:`): acknowledge Alertmanager's incident while a run works on it.
    #[serde(default)]
    pub pagerduty: Option<RawRunbookPagerDuty>,
    /// What it does, in order.
    pub steps: Vec<RawStep>,
    /// Steps run when a step fails (or its outcome is unknown after a crash); `{{error}}` says why.
    #[serde(default)]
    pub on_failure: Vec<RawStep>,
    /// Self-tests run by `pitcrew test` without touching anything.
    #[serde(default)]
    pub tests: Vec<RawTest>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Which alerts start the runbook: all of `alertname`, `matchers` and `status` must hold.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Trigger")]
pub struct RawTrigger {
    /// The `alertname` label: one name or a list of names.
    #[serde(default)]
    pub alertname: Option<OneOrMany>,
    /// Alertmanager matchers (`label="value"`, `!=`, `=~"regex"`, `!~`; regular expressions are anchored).
    #[serde(default)]
    pub matchers: Vec<String>,
    /// `firing` (default), `resolved` or `any`.
    #[serde(default)]
    #[schemars(extend("enum" = ["firing", "resolved", "any"]))]
    pub status: Option<String>,
}

/// A typed input of the runbook (or of a plugin's action).
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Param")]
pub struct RawParam {
    /// `string` (default), `integer`, `boolean` or `duration` (e.g. `5m`, normalised).
    #[serde(default, rename = "type")]
    #[schemars(extend("enum" = ["string", "integer", "boolean", "duration"]))]
    pub kind: Option<String>,
    /// A value or a template, e.g. `{{alert.labels.namespace}}`.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    /// The run is blocked when the value is missing or empty.
    #[serde(default)]
    pub required: bool,
    /// A regular expression the whole value must match (strings).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Lower bound (integers).
    #[serde(default)]
    pub min: Option<i64>,
    /// Upper bound (integers).
    #[serde(default)]
    pub max: Option<i64>,
    /// For people.
    #[serde(default)]
    pub description: Option<String>,
}

// Guardrail keys are kept as text here so that `compile` can report a bad
// value with its own position and message rather than serde's.
/// Limits, locks, error budget, escalation and approval for this runbook.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Guardrails")]
pub struct RawGuardrails {
    /// No new run on the same target within this (e.g. `10m`) since the last run started.
    #[serde(default)]
    pub cooldown: Option<Scalar>,
    /// Runs per target per window, e.g. `3/1h`.
    #[serde(default)]
    pub rate_limit: Option<Scalar>,
    /// Runs of the runbook on any target per window, e.g. `10/1h`.
    #[serde(default)]
    pub runbook_rate_limit: Option<Scalar>,
    /// Runs of the runbook on one target at once (default 1).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// An SLO of the config: its error-budget tier decides which risks run unattended.
    #[serde(default)]
    pub slo: Option<String>,
    /// E.g. `3/6h`: remediated this often and the alert still fires: stop and notify until `pitcrew reset`.
    #[serde(default)]
    pub escalate_after: Option<Scalar>,
    /// `auto` (default) or `required`: wait in `pending_approval` until approved or denied.
    #[serde(default)]
    #[schemars(extend("enum" = ["auto", "required"]))]
    pub approval: Option<String>,
    /// How long a run waits for approval (default `1h`).
    #[serde(default)]
    pub approval_timeout: Option<Scalar>,
    /// Decide and record everything, touch nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Whoever asked for a run may also approve it.
    #[serde(default)]
    pub self_approval: bool,
    /// E.g. `50%`: once at least 5 runs are judged and fewer than this share were effective, automated
    /// runs are blocked (`ineffective`) and escalated instead.
    #[serde(default)]
    pub min_effectiveness: Option<Scalar>,
    /// Windows of the config (`windows:`): inside any of them, automated runs above low risk wait for approval.
    #[serde(default)]
    pub freeze: Vec<String>,
    /// Windows of the config (`windows:`): outside all of them, automated runs above low risk wait for approval.
    #[serde(default)]
    pub only_during: Vec<String>,
    /// Lists of Alertmanager matchers (values may be templates over `params`, `target`, `runbook`): while an
    /// alert pitcrew holds as firing matches every matcher of one list, the run is blocked (`inhibited`).
    #[serde(default)]
    pub inhibit_while_firing: Vec<Vec<String>>,
}

/// Who may start a runbook by hand and who may answer its approvals (`permissions: {run, approve}`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Permissions")]
pub struct RawPermissions {
    /// Groups whose members may start it by hand (`pitcrew run`, the API); `[]`: nobody, alerts only.
    /// Left out: any operator.
    #[serde(default)]
    pub run: Option<Vec<String>>,
    /// Groups whose members may approve or deny its runs (CLI, API, Slack); left out: any operator.
    #[serde(default)]
    pub approve: Option<Vec<String>>,
}

/// Where this runbook's own notices go (`notify: {url}`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Notify")]
pub struct RawRunbookNotify {
    /// A literal `http(s)` URL on a host in the config's `http.allowed_hosts`; treated as a secret.
    pub url: String,
}

/// What a runbook tells PagerDuty.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RunbookPagerDuty")]
pub struct RawRunbookPagerDuty {
    /// When a run started by an alert starts, acknowledge the incident Alertmanager's own PagerDuty
    /// integration opened for that notification; when the run ends `failed` or `unknown`, trigger an
    /// incident (`pitcrew/<execution id>`) so a human is paged.
    #[serde(default)]
    pub acknowledge: bool,
}

/// A YAML scalar as text (`30` and `"30"` alike).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(description = "A duration (`10m`), a rate (`3/1h`) or a number")]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Scalar {
    pub fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
        }
    }
}

/// One step: an action and its parameters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Step")]
pub struct RawStep {
    /// Unique within the runbook; later steps read its output as `steps.NAME.output`.
    pub name: String,
    /// A built-in action (`pitcrew actions` lists them) or `plugin.NAME`.
    pub action: String,
    /// The action's parameters; values may be templates.
    #[serde(default, rename = "with")]
    pub with: BTreeMap<String, serde_json::Value>,
    /// A template; the step is skipped unless it renders truthy.
    #[serde(default)]
    pub when: Option<String>,
    /// Per attempt, e.g. `2m` (default: the action's).
    #[serde(default)]
    pub timeout: Option<Scalar>,
    /// Retries with exponential backoff; only for idempotent actions.
    #[serde(default)]
    pub retries: u32,
    /// `low`, `medium` or `high`: overrides the action's default risk.
    #[serde(default)]
    #[schemars(extend("enum" = ["low", "medium", "high"]))]
    pub risk: Option<String>,
    /// A failure of this step does not stop the run.
    #[serde(default)]
    pub continue_on_error: bool,
}

/// A self-test: an alert and what the runbook should make of it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Test")]
pub struct RawTest {
    /// Shown by `pitcrew test`.
    #[serde(default)]
    pub name: Option<String>,
    /// The alert the test delivers.
    pub alert: RawTestAlert,
    /// What the runbook should make of it.
    pub expect: RawExpect,
}

/// An alert for a self-test.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "TestAlert")]
pub struct RawTestAlert {
    /// The alert's labels, `alertname` among them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The alert's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `firing` (default) or `resolved`.
    #[serde(default)]
    #[schemars(extend("enum" = ["firing", "resolved"]))]
    pub status: Option<String>,
}

/// The expected outcome of a self-test.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Expect")]
pub struct RawExpect {
    /// Whether the alert starts this runbook.
    #[serde(rename = "match")]
    pub matches: bool,
    /// Resolved params (only those named are compared).
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// The resolved target.
    #[serde(default)]
    pub target: Option<String>,
    /// Rendered `with` fields by step name (only those named are compared).
    #[serde(default)]
    pub steps: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

/// `plugins/<name>/plugin.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginManifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default)]
    pub timeout: Option<Scalar>,
    #[serde(default)]
    pub params: BTreeMap<String, RawParam>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
}
