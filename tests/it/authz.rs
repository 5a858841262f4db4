//! Runbook `permissions`: who may start a runbook by hand and who may answer
//! its approvals, by the groups of API tokens (`auth.tokens[].groups`) and
//! CLI users (`auth.users`). Refused over the API with 403, from the CLI
//! with exit 3, and audited (`access.refused`) with nothing else changed.

use std::process::{Command, Output};

use axum::http::StatusCode;
use pitcrew::store::{ExecutionFilter, State};
use serde_json::{Value, json};

use crate::support::{Harness, alert, payload};

/// A runbook that always waits for approval, with `permissions`.
fn guarded(name: &str, permissions: &str, guardrails: &str) -> String {
    format!(
        "apiVersion: pitcrew/v1\nname: {name}\ntrigger: {{alertname: Broken}}\ntarget: web-1\n\
         guardrails: {{approval: required{guardrails}}}\npermissions: {permissions}\n\
         steps:\n  - name: note\n    action: log\n    with: {{message: fixing}}\n"
    )
}

const TOKENS: &str = "auth:\n  tokens:\n\
    \x20   - {name: alice, token: alice-secret-1, role: operator, groups: [payments]}\n\
    \x20   - {name: bob, token: bob-secret-1, role: operator}\n\
    \x20   - {name: carol, token: carol-secret-1, role: operator, groups: [sre, payments]}\n";

fn as_token(token: &'static str) -> [(&'static str, String); 2] {
    [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".into()),
    ]
}

async fn call(h: &Harness, path: &str, token: &'static str) -> (StatusCode, Value) {
    let headers = as_token(token);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = h.call("POST", path, &headers, "{}").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

async fn refusals(h: &Harness) -> Vec<pitcrew::audit::Record> {
    h.audit().await.into_iter().filter(|r| r.kind == "access.refused").collect()
}

#[tokio::test]
async fn the_api_refuses_runs_and_answers_outside_the_groups_with_403_and_audits_them() {
    let h = Harness::new(&guarded("fix", "{run: [payments], approve: [sre]}", ""), TOKENS);

    // bob is in no group: may not start it.
    let (status, body) = call(&h, "/v1/runbooks/fix/run", "bob-secret-1").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!((&body["runbook"], &body["permission"]), (&json!("fix"), &json!("run")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("permissions.run"), "{body}");
    assert!(
        h.store().executions(ExecutionFilter::default()).await.unwrap().is_empty(),
        "no run recorded"
    );
    let refused = refusals(&h).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].actor, "api:bob");
    assert_eq!(refused[0].runbook.as_deref(), Some("fix"));
    assert_eq!(
        (&refused[0].data["action"], &refused[0].data["needs"]),
        (&json!("run"), &json!(["payments"]))
    );

    // alice (payments) may start it; it waits for approval.
    let (status, body) = call(&h, "/v1/runbooks/fix/run", "alice-secret-1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "pending_approval");
    let id = body["execution_id"].as_str().unwrap().to_string();

    // Neither bob nor alice is in sre: they may not approve, bob may not deny.
    for (path, token, action) in [
        ("approve", "bob-secret-1", "approve"),
        ("approve", "alice-secret-1", "approve"),
        ("deny", "bob-secret-1", "deny"),
    ] {
        let (status, body) = call(&h, &format!("/v1/executions/{id}/{path}"), token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token} {path}: {body}");
        assert_eq!(
            (&body["runbook"], &body["permission"]),
            (&json!("fix"), &json!("approve")),
            "{body}"
        );
        assert_eq!(body["action"], action);
        assert_eq!(h.store().execution(&id).await.unwrap().state, State::PendingApproval);
    }
    let refused = refusals(&h).await;
    assert_eq!(refused.len(), 4);
    let last = refused.last().unwrap();
    assert_eq!((last.actor.as_str(), last.execution_id.as_deref()), ("api:bob", Some(id.as_str())));
    assert_eq!(last.data["action"], "deny");
    assert!(h.kinds().await.iter().all(|k| k != "approval.granted" && k != "approval.denied"));

    // carol is in sre: her approval goes through and the run runs.
    let (status, body) = call(&h, &format!("/v1/executions/{id}/approve"), "carol-secret-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["approved_by"], "api:carol");
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].state, State::Succeeded);

    // The requester may always withdraw their own request.
    let (_, body) = call(&h, "/v1/runbooks/fix/run", "alice-secret-1").await;
    let id = body["execution_id"].as_str().unwrap().to_string();
    let (status, body) = call(&h, &format!("/v1/executions/{id}/deny"), "alice-secret-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.store().execution(&id).await.unwrap().state, State::Cancelled);
}

#[tokio::test]
async fn without_permissions_any_operator_may_and_alerts_are_never_checked() {
    let rb = "apiVersion: pitcrew/v1\nname: open\ntrigger: {alertname: Broken}\ntarget: web-1\n\
              guardrails: {approval: required}\nsteps:\n  - name: note\n    action: log\n    with: {message: x}\n";
    let h = Harness::new(rb, TOKENS);
    let (status, body) = call(&h, "/v1/runbooks/open/run", "bob-secret-1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["execution_id"].as_str().unwrap().to_string();
    let (status, body) = call(&h, &format!("/v1/executions/{id}/approve"), "alice-secret-1").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // `run: []`: nobody by hand, but alerts still start it.
    let h = Harness::new(&guarded("fix", "{run: []}", ""), TOKENS);
    let (status, body) = call(&h, "/v1/runbooks/fix/run", "carol-secret-1").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("allows nobody"), "{body}");
    h.post(&payload(vec![alert(&[("alertname", "Broken")])])).await;
    let runs = h.store().executions(ExecutionFilter::default()).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].actor.as_str(), runs[0].state), ("alertmanager", State::PendingApproval));
    assert_eq!(refusals(&h).await.len(), 1);
}

#[test]
fn permissions_naming_a_group_nobody_is_in_are_an_error_with_the_known_groups() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pitcrew.yaml"), TOKENS).unwrap();
    let config = pitcrew::config::Config::load(&dir.path().join("pitcrew.yaml")).unwrap();
    let path = dir.path().join("rb.yaml");
    std::fs::write(&path, guarded("fix", "{run: [payments], approve: [sres]}", "")).unwrap();
    let shown = pitcrew::runbook::compile::load(&config, std::slice::from_ref(&path))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        shown.contains("rb.yaml:6:") && shown.contains("group `sres` has no member"),
        "{shown}"
    );
    assert!(shown.contains("groups in the config: payments, sre"), "{shown}");
    for (permissions, needle) in [
        ("{runn: [sre]}", "runn"),
        ("{}", "needs `run` or `approve`"),
        ("{run: sre}", "permissions"),
    ] {
        std::fs::write(&path, guarded("fix", permissions, "")).unwrap();
        let shown = pitcrew::runbook::compile::load(&config, std::slice::from_ref(&path))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(shown.contains(needle), "{permissions}: {shown}");
    }
    // Config side: group names are checked, users are unique.
    let text = "auth:\n  users:\n    - {name: root, groups: [\"s r e\"]}\n    - {name: root}\n";
    let shown = pitcrew::config::Config::parse(&dir.path().join("p.yaml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        shown.contains("invalid group name \"s r e\"") && shown.contains("duplicate user `root`"),
        "{shown}"
    );
}

// ------------------------------------------------------------ the CLI

fn me() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => format!("uid:{uid}"),
    }
}

fn cli(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pitcrew"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("PITCREW_CONFIG")
        .output()
        .expect("pitcrew runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn audit(dir: &std::path::Path) -> Vec<Value> {
    let out = cli(dir, &["audit", "export"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn cli_dir(runbooks: &[(&str, String)], my_groups: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    for (name, text) in runbooks {
        std::fs::write(dir.path().join(format!("runbooks/{name}.yaml")), text).unwrap();
    }
    let config = format!(
        "state_dir: state\nplugins: plugins\nauth:\n  users:\n    - {{name: {}, groups: {my_groups}}}\n    - {{name: someone-else, groups: [sre, payments]}}\n",
        me()
    );
    std::fs::write(dir.path().join("pitcrew.yaml"), config).unwrap();
    dir
}

#[test]
fn the_cli_exits_3_outside_the_groups_and_audits_the_refusal() {
    let me = me();
    let dir = cli_dir(
        &[
            ("fix", guarded("fix", "{run: [sre]}", "")),
            ("pay", guarded("pay", "{run: [payments], approve: [sre]}", ", self_approval: true")),
            ("ops", guarded("ops", "{approve: [payments]}", ", self_approval: true")),
        ],
        "[payments]",
    );

    let out = cli(dir.path(), &["run", "fix"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("user:{me} may not run runbook `fix` by hand")),
        "{}",
        stderr(&out)
    );
    let records = audit(dir.path());
    assert!(records.iter().all(|r| r["kind"] != "guardrail.decision"), "nothing was admitted");
    let refused: Vec<&Value> = records.iter().filter(|r| r["kind"] == "access.refused").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["actor"], json!(format!("user:{me}")));
    assert_eq!(
        (&refused[0]["runbook"], &refused[0]["data"]["action"]),
        (&json!("fix"), &json!("run"))
    );

    // In payments: may start `pay`, not approve it (sre), even with self_approval.
    let out = cli(dir.path(), &["run", "pay"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = cli(dir.path(), &["approve", &id]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permissions.approve needs one of the groups sre"),
        "{}",
        stderr(&out)
    );
    let records = audit(dir.path());
    let refused: Vec<&Value> = records.iter().filter(|r| r["kind"] == "access.refused").collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(
        (&refused[1]["execution_id"], &refused[1]["data"]["action"]),
        (&json!(id), &json!("approve"))
    );
    assert!(records.iter().all(|r| r["kind"] != "approval.granted"));
    // Withdrawing one's own request needs no permission.
    let out = cli(dir.path(), &["deny", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A member of the approving group approves, and the run runs here.
    let out = cli(dir.path(), &["run", "ops"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = cli(dir.path(), &["approve", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let records = audit(dir.path());
    let granted = records.iter().find(|r| r["kind"] == "approval.granted").unwrap();
    assert_eq!(granted["actor"], json!(format!("user:{me}")));
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "execution.finished" && r["execution_id"] == json!(id) && r["data"]["state"] == "succeeded")
    );
}
