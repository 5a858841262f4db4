//! `plugin.<name>`: run `plugins/<name>/` with a JSON request on stdin and
//! read one JSON result from stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::exec::{CHILD_PATH, run_process};
use crate::action::{Action, ActionContext, ActionError, DryRun, Param, ParamType, Spec};
use crate::runbook::Risk;
use crate::units::Duration;

/// A checked `plugin.yaml`.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub description: String,
    /// argv; `command[0]`, when relative, resolves against `dir`.
    pub command: Vec<String>,
    pub dir: PathBuf,
    pub risk: Risk,
    pub idempotent: bool,
    pub timeout: Duration,
    pub params: Vec<PluginParam>,
    /// Variables copied from pitcrew's own environment.
    pub env: Vec<String>,
    /// Runs in dry runs with `"dry_run": true` instead of being skipped.
    pub dry_run: bool,
}

/// A plugin parameter as its manifest declares it.
#[derive(Debug, Clone)]
pub struct PluginParam {
    pub name: String,
    pub ty: ParamType,
    pub required: bool,
    pub default: Option<Value>,
    pub pattern: Option<crate::matcher::Pattern>,
    pub doc: String,
}

pub struct Plugin {
    manifest: Manifest,
    spec: Spec,
}

impl Plugin {
    pub fn new(manifest: Manifest) -> Plugin {
        let spec = Spec {
            name: format!("plugin.{}", manifest.name),
            summary: manifest.description.clone(),
            risk: manifest.risk,
            idempotent: manifest.idempotent,
            params: manifest
                .params
                .iter()
                .map(|p| Param {
                    name: p.name.clone(),
                    ty: p.ty,
                    // A default fills a required parameter.
                    required: p.required && p.default.is_none(),
                    doc: if p.doc.is_empty() { p.ty.describe() } else { p.doc.clone() },
                })
                .collect(),
            rbac: Vec::new(),
            example: example(&manifest),
        };
        Plugin { manifest, spec }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Applies defaults, types and patterns to the rendered parameters.
    fn params(&self, input: &Value) -> Result<serde_json::Map<String, Value>, ActionError> {
        let given = input.as_object().cloned().unwrap_or_default();
        let mut out = serde_json::Map::new();
        for (k, _) in &given {
            if !self.manifest.params.iter().any(|p| &p.name == k) {
                return Err(ActionError::input(
                    k,
                    format!("unknown parameter for plugin.{}", self.manifest.name),
                ));
            }
        }
        for p in &self.manifest.params {
            let Some(v) = given.get(&p.name).cloned().or_else(|| p.default.clone()) else {
                if p.required {
                    return Err(ActionError::input(&p.name, "is required"));
                }
                continue;
            };
            p.ty.check(&v).map_err(|r| ActionError::input(&p.name, r))?;
            let v = coerce(p.ty, v);
            if let (Some(re), Value::String(s)) = (&p.pattern, &v)
                && !re.is_match(s)
            {
                return Err(ActionError::input(&p.name, format!("{s:?} does not match {}", re.as_str())));
            }
            out.insert(p.name.clone(), v);
        }
        Ok(out)
    }
}

/// `"3"` for an integer parameter reaches the plugin as `3`.
fn coerce(ty: ParamType, v: Value) -> Value {
    match (ty, &v) {
        (ParamType::Integer, Value::String(s)) => s.trim().parse::<i64>().map(Value::from).unwrap_or(v),
        (ParamType::Boolean, Value::String(s)) => s.trim().parse::<bool>().map(Value::from).unwrap_or(v),
        (ParamType::String, Value::Number(_) | Value::Bool(_)) => Value::String(v.to_string()),
        _ => v,
    }
}

fn example(m: &Manifest) -> String {
    let mut out = String::new();
    for p in &m.params {
        let v = p.default.clone().unwrap_or_else(|| match p.ty {
            ParamType::Integer => json!(1),
            ParamType::Boolean => json!(false),
            _ => json!("value"),
        });
        out.push_str(&format!("{}: {}\n", p.name, v));
    }
    out
}

/// A relative `command[0]` resolves against the plugin folder; a bare name
/// that is not a file there (`python3`) is looked up on the child's PATH.
pub fn resolve_program(dir: &std::path::Path, program: &str) -> String {
    let candidate = dir.join(program);
    if program.starts_with('/') || (!program.contains('/') && !candidate.is_file()) {
        program.to_string()
    } else {
        candidate.to_string_lossy().into_owned()
    }
}

#[derive(Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    output: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    message: String,
}

#[async_trait::async_trait]
impl Action for Plugin {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn passes_env(&self) -> &[String] {
        &self.manifest.env
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        if self.manifest.dry_run { DryRun::Simulate } else { DryRun::Skip }
    }

    async fn run(&self, input: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let params = self.params(input)?;
        let request = json!({
            "params": params,
            "alert": cx.alert,
            "execution_id": cx.execution_id,
            "dry_run": cx.dry_run,
        });
        let mut command = self.manifest.command.clone();
        // `load_plugins` refuses an empty command, but a hand-built manifest
        // must not panic here.
        let Some(program) = command.first_mut() else {
            return Err(ActionError::Failed(format!("{} has an empty command", self.spec.name)));
        };
        *program = resolve_program(&self.manifest.dir, program);
        let mut env = BTreeMap::from([
            ("PATH".to_string(), CHILD_PATH.to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("PITCREW_EXECUTION_ID".to_string(), cx.execution_id.to_string()),
        ]);
        for name in &self.manifest.env {
            if let Ok(v) = std::env::var(name) {
                env.insert(name.clone(), v);
            }
        }
        let cwd = cx.artifact_dir()?;
        let stdin = serde_json::to_vec(&request).map_err(|e| ActionError::Failed(e.to_string()))?;
        let done = run_process(&command, &env, &cwd, Some(stdin), self.manifest.timeout).await;
        if let Ok(done) = &done
            && !done.stderr.is_empty()
        {
            let path = cx.artifact_path(&format!("{}.plugin.{}.stderr", cx.step, self.manifest.name))?;
            // Artifacts are read like the audit: no secrets.
            let stderr = cx.deps.redactor.bytes(&done.stderr);
            std::fs::write(&path, stderr).map_err(|e| ActionError::Failed(format!("saving plugin stderr: {e}")))?;
        }
        cx.drop_empty_artifact_dir();
        let done = done?;
        let name = &self.spec.name;
        if done.exit_code != Some(0) {
            let code = done.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "a signal".into());
            let err = String::from_utf8_lossy(&done.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>();
            return Err(ActionError::Failed(format!("{name} exited with {code}: {last}")));
        }
        if done.stdout_truncated {
            return Err(ActionError::Failed(format!(
                "{name} wrote more than {} bytes to stdout",
                crate::action::exec::OUTPUT_CAP
            )));
        }
        let reply: Reply = serde_json::from_slice(&done.stdout).map_err(|e| {
            let shown: String = String::from_utf8_lossy(&done.stdout).chars().take(120).collect();
            ActionError::Failed(format!("{name} printed invalid JSON ({e}); stdout began {shown:?}; expected {{\"ok\": bool, \"output\": {{...}}, \"message\": \"...\"}}"))
        })?;
        if !reply.ok {
            let msg = if reply.message.is_empty() {
                "reported ok: false".to_string()
            } else {
                reply.message
            };
            return Err(ActionError::Failed(format!("{name}: {msg}")));
        }
        let mut output = reply.output.unwrap_or_default();
        if !reply.message.is_empty() {
            output.entry("message").or_insert(Value::String(reply.message));
        }
        Ok(Value::Object(output))
    }
}
