//! `tests:` inside runbooks: given an alert, does the runbook match, with
//! which params, target and rendered step inputs? Runs nothing.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Runbook, RunbookSet};
use crate::alert::Alert;

#[derive(Debug, Clone)]
pub struct RunbookTest {
    pub name: String,
    pub line: usize,
    pub alert: Alert,
    pub expect: Expect,
}

#[derive(Debug, Clone)]
pub struct Expect {
    pub matches: bool,
    pub params: BTreeMap<String, Value>,
    pub target: Option<String>,
    pub steps: BTreeMap<String, BTreeMap<String, Value>>,
}

/// One failed expectation. Values stay values (not their text) so that
/// `pitcrew test --output json` can give them as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub what: String,
    pub expected: Value,
    /// What the runbook gave, or why it gave nothing.
    pub got: Result<Value, String>,
}

/// Runs one test; an empty list means it passed.
pub fn run(set: &RunbookSet, rb: &Runbook, test: &RunbookTest) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let matched = rb.trigger.as_ref().is_some_and(|t| t.matches(&test.alert));
    if matched != test.expect.matches {
        out.push(Mismatch {
            what: "match".into(),
            expected: Value::Bool(test.expect.matches),
            got: Ok(Value::Bool(matched)),
        });
        return out;
    }
    if !matched {
        return out;
    }
    let resolved = match set.resolve(rb, Some(&test.alert), &BTreeMap::new()) {
        Ok(r) => r,
        Err(e) => {
            out.push(Mismatch {
                what: "resolve".into(),
                expected: "params and target resolve".into(),
                got: Err(e.to_string()),
            });
            return out;
        }
    };
    for (name, expected) in &test.expect.params {
        let got = resolved.params.get(name).cloned().unwrap_or(Value::Null);
        if !loosely_equal(expected, &got) {
            out.push(Mismatch {
                what: format!("params.{name}"),
                expected: expected.clone(),
                got: Ok(got),
            });
        }
    }
    if let Some(target) = &test.expect.target
        && target != &resolved.target
    {
        out.push(Mismatch {
            what: "target".into(),
            expected: Value::String(target.clone()),
            got: Ok(Value::String(resolved.target.clone())),
        });
    }
    let ctx = RunbookSet::step_context(
        rb,
        Some(&test.alert),
        &resolved,
        "test-execution",
        &serde_json::Map::new(),
        Some("test error"),
    );
    for (step_name, fields) in &test.expect.steps {
        let Some(step) = rb.steps.iter().chain(rb.on_failure.iter()).find(|s| &s.name == step_name) else {
            continue;
        };
        for (field, expected) in fields {
            let what = format!("steps.{step_name}.{field}");
            let Some(tpl) = step.with.get(field) else {
                out.push(Mismatch {
                    what,
                    expected: expected.clone(),
                    got: Err("no such field".into()),
                });
                continue;
            };
            match set.templates.render(tpl, &ctx) {
                Ok(got) if loosely_equal(expected, &got) => {}
                Ok(got) => out.push(Mismatch {
                    what,
                    expected: expected.clone(),
                    got: Ok(got),
                }),
                Err(e) => out.push(Mismatch {
                    what,
                    expected: expected.clone(),
                    got: Err(e.to_string()),
                }),
            }
        }
    }
    out
}

/// YAML `3` and a rendered `"3"` are the same expectation.
fn loosely_equal(expected: &Value, got: &Value) -> bool {
    expected == got || (expected.is_number() || expected.is_boolean()) && got.as_str() == Some(&expected.to_string())
}
