//! The raw serde mirror of the runbook YAML (`apiVersion: pitcrew/v1`).
//!
//! Only shape lives here: unknown keys are refused, nothing is interpreted.
//! `compile` turns these into the checked model.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunbook {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub trigger: Option<RawTrigger>,
    #[serde(default)]
    pub params: BTreeMap<String, RawParam>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub guardrails: RawGuardrails,
    #[serde(default)]
    pub notify: Option<RawRunbookNotify>,
    pub steps: Vec<RawStep>,
    #[serde(default)]
    pub on_failure: Vec<RawStep>,
    #[serde(default)]
    pub tests: Vec<RawTest>,
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    #[serde(default)]
    pub alertname: Option<OneOrMany>,
    #[serde(default)]
    pub matchers: Vec<String>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawParam {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Guardrail keys are kept as text here so that `compile` can report a bad
/// value with its own position and message rather than serde's.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrails {
    #[serde(default)]
    pub cooldown: Option<Scalar>,
    #[serde(default)]
    pub rate_limit: Option<Scalar>,
    #[serde(default)]
    pub runbook_rate_limit: Option<Scalar>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub slo: Option<String>,
    #[serde(default)]
    pub escalate_after: Option<Scalar>,
    #[serde(default)]
    pub approval: Option<String>,
    #[serde(default)]
    pub approval_timeout: Option<Scalar>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub self_approval: bool,
}

/// Where this runbook's own notices go (`notify: {url}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunbookNotify {
    pub url: String,
}

/// A YAML scalar as text (`30` and `"30"` alike).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: String,
    pub action: String,
    #[serde(default, rename = "with")]
    pub with: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub timeout: Option<Scalar>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub continue_on_error: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    #[serde(default)]
    pub name: Option<String>,
    pub alert: RawTestAlert,
    pub expect: RawExpect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestAlert {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    #[serde(rename = "match")]
    pub matches: bool,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub target: Option<String>,
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
