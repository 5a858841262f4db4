//! The CLI as users run it: validate, test, match, actions, list.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::repo;

pub fn pitcrew(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pitcrew"))
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .expect("pitcrew runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn shipped_runbooks_validate_and_their_tests_pass() {
    let out = pitcrew(&["validate", "runbooks/"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ok: 6 runbooks"), "{stdout}");

    let out = pitcrew(&["test", "runbooks/"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(!stderr.contains("has no tests"), "every shipped runbook has tests: {stderr}");
}

/// Every file in tests/fixtures/broken has one fault and says where in its
/// first line: `# expect: LINE:COL message`.
#[test]
fn each_broken_runbook_is_reported_at_its_line_and_column() {
    let dir = repo().join("tests/fixtures/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "fixtures missing");
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let expect = source
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .expect("fixture starts with # expect:");
        let (pos, message) = expect.split_once(' ').unwrap();
        let rel = file.strip_prefix(repo()).unwrap().to_str().unwrap().to_string();
        let out = pitcrew(&["--config", "tests/fixtures/config.yaml", "validate", &rel]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{rel}: {stderr}");
        let wanted = format!("{rel}:{pos}: ");
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&wanted))
            .unwrap_or_else(|| panic!("{rel}: expected a problem at {pos}, got:\n{stderr}"));
        assert!(line.contains(message), "{rel}: expected {message:?} in {line:?}");
        assert!(stderr.contains("1 problem found"), "{rel}: one fault, one problem:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{rel}: {stderr}");
    }
}

#[test]
fn all_problems_of_a_folder_come_in_one_pass() {
    let out = pitcrew(&[
        "--config",
        "tests/fixtures/config.yaml",
        "validate",
        "--output",
        "json",
        "tests/fixtures/broken",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let problems = report["problems"].as_array().unwrap();
    let files: std::collections::BTreeSet<&str> = problems.iter().map(|p| p["file"].as_str().unwrap()).collect();
    let fixtures = std::fs::read_dir(repo().join("tests/fixtures/broken")).unwrap().count();
    assert_eq!(files.len(), fixtures, "every broken file reported: {files:?}");
}

/// References that cannot exist when a template renders are problems of
/// the file, with the nearest valid name where there is one.
#[test]
fn impossible_references_are_reported_with_the_nearest_valid_name() {
    let hints: Vec<(&str, &str)> = vec![
        ("undeclared_param.yaml", "did you mean `service`? declared params: service"),
        ("unknown_alert_field.yaml", "did you mean `labels`?"),
        ("unknown_step_output.yaml", "steps before this one: check"),
        ("later_step_output.yaml", "a step sees the output of the steps before it"),
        ("host_not_allowed.yaml", "http.allowed_hosts in the config is empty"),
    ];
    for (file, hint) in hints {
        let path = format!("tests/fixtures/broken/{file}");
        let out = pitcrew(&["--config", "tests/fixtures/config.yaml", "validate", "--output", "json", &path]);
        assert_eq!(out.status.code(), Some(2), "{file}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let problems = report["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{file}: {report}");
        let shown = problems[0]["hint"].as_str().unwrap_or_default();
        assert!(shown.contains(hint), "{file}: hint {shown:?} lacks {hint:?}");
    }
}

#[test]
fn references_that_exist_where_they_are_used_validate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pitcrew.yaml"),
        "http: {allowed_hosts: [api.example.com, \"*.internal.example\", \"10.0.0.7:8080\"]}\n",
    )
    .unwrap();
    let runbook = r#"apiVersion: pitcrew/v1
name: refs
trigger: {alertname: Refs}
params:
  pool: {default: "{{alert.labels.pool}}"}
  size: {type: integer, default: 3}
target: "{{runbook.name}}/{{params.pool}}"
steps:
  - name: look
    action: http
    with: {url: "https://db.internal.example/pools/{{params.pool}}", method: GET}
  - name: resize
    action: http
    when: "{{#if steps.look.output}}{{#each alert.labels}}{{@key}}{{/each}}{{/if}}"
    with: {url: "http://10.0.0.7:8080/resize", method: POST, body: {pool: "{{params.pool}}", size: "{{params.size}}", seen: "{{steps.look.output.status}}"}}
  - name: tell
    action: log
    with: {message: "{{execution.id}} {{target}} {{alert.status}} {{alert.startsAt}} {{alert.generatorURL}} {{steps.resize.output}}"}
on_failure:
  - name: page
    action: log
    with: {message: "{{error}} after {{steps.resize.output.status}}"}
  - name: again
    action: http
    with: {url: "https://api.example.com/page", method: POST, body: {was: "{{steps.page.output}}"}}
"#;
    std::fs::write(dir.path().join("refs.yaml"), runbook).unwrap();
    let config = dir.path().join("pitcrew.yaml");
    let file = dir.path().join("refs.yaml");
    let out = pitcrew(&["--config", config.to_str().unwrap(), "validate", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");

    // The same runbook with no hosts allowed: every literal host is named.
    std::fs::write(&config, "state_dir: state\n").unwrap();
    let out = pitcrew(&[
        "--config",
        config.to_str().unwrap(),
        "validate",
        "--output",
        "json",
        file.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let messages: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "host db.internal.example:443 is not in http.allowed_hosts",
            "host 10.0.0.7:8080 is not in http.allowed_hosts",
            "host api.example.com:443 is not in http.allowed_hosts"
        ]
    );
}

#[test]
fn every_runbook_fixture_outside_broken_still_validates() {
    for (config, path) in [
        (None, "runbooks/"),
        (Some("tests/fixtures/matching/config.yaml"), "tests/fixtures/matching/runbooks.yaml"),
    ] {
        let mut args = Vec::new();
        if let Some(c) = config {
            args.extend(["--config", c]);
        }
        args.extend(["validate", path]);
        let out = pitcrew(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{path}: {stdout}{stderr}");
    }
}

fn matches(output: &Value) -> Vec<(String, Vec<String>)> {
    output
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["fingerprint"].as_str().unwrap().to_string(),
                a["matches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["runbook"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn match_picks_runbooks_by_every_operator_and_status() {
    let out = pitcrew(&[
        "--config",
        "tests/fixtures/matching/config.yaml",
        "match",
        "--alert",
        "tests/fixtures/matching/payload.json",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = matches(&report);
    let want: Vec<(String, Vec<String>)> = vec![
        // =, !=, =~ (anchored: /var/log but not /var/logs), !~, any-status with a list of names
        (
            "a1".into(),
            vec![
                "equal".into(),
                "not-equal".into(),
                "regex".into(),
                "not-regex".into(),
                "on-any".into(),
            ],
        ),
        // warning, dev, /var/logs, db-*: nothing holds
        ("a2".into(), vec![]),
        // resolved: only the resolved and any triggers
        ("a3".into(), vec!["on-resolved".into(), "on-any".into()]),
        // second alertname of a list; matchers-only trigger with a regex on alertname
        ("a4".into(), vec!["on-any".into(), "by-matchers-only".into()]),
        ("a5".into(), vec![]),
    ];
    assert_eq!(got, want);
    let regex = &report[0]["matches"][2];
    assert_eq!(regex["target"], "web-1:/var/log");
    assert_eq!(regex["params"]["path"], "/var/log");
    assert_eq!(regex["verdict"], "run");
}

#[test]
fn match_takes_one_alert_and_exits_0_without_matches_and_2_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.json");
    std::fs::write(&one, r#"{"labels": {"alertname": "Nothing"}}"#).unwrap();
    let out = pitcrew(&[
        "--config",
        "tests/fixtures/matching/config.yaml",
        "match",
        "--alert",
        one.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).0.contains("no runbook matches"));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"version\": \"4\", \"alerts\": [").unwrap();
    let out = pitcrew(&[
        "--config",
        "tests/fixtures/matching/config.yaml",
        "match",
        "--alert",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("bad.json"), "{}", text(&out).1);
}

#[test]
fn a_failing_runbook_test_exits_1_showing_expected_and_got() {
    let dir = tempfile::tempdir().unwrap();
    let rb = dir.path().join("rb.yaml");
    std::fs::write(
        &rb,
        r#"apiVersion: pitcrew/v1
name: wrong-expectation
trigger: {alertname: X}
params:
  ns: {default: "{{alert.labels.namespace}}"}
target: "{{params.ns}}"
steps: [{name: a, action: log, with: {message: "in {{params.ns}}"}}]
tests:
  - alert: {labels: {alertname: X, namespace: shop}}
    expect: {match: true, target: billing, steps: {a: {message: in shop}}}
"#,
    )
    .unwrap();
    let out = pitcrew(&["--config", "tests/fixtures/matching/config.yaml", "test", rb.to_str().unwrap()]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("target: expected \"billing\", got \"shop\""), "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

#[test]
fn actions_catalogue_lists_everything_and_details_one() {
    let out = pitcrew(&["actions", "--output", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    for n in [
        "kubernetes.rollout_restart",
        "kubernetes.scale",
        "kubernetes.delete_pods",
        "kubernetes.logs",
        "kubernetes.patch",
        "http",
        "exec",
        "prometheus.query",
        "prometheus.wait",
        "notify",
        "alertmanager.silence",
        "alertmanager.unsilence",
        "sleep",
        "log",
        "plugin.disk-cleanup",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let out = pitcrew(&["actions", "kubernetes.delete_pods"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    for needle in ["default risk: medium", "idempotent:   no", "pods/eviction", "create", "example:"] {
        assert!(stdout.contains(needle), "{needle} missing:\n{stdout}");
    }
    let out = pitcrew(&["actions", "kubernetes.rollout-restart"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("did you mean `kubernetes.rollout_restart`"));
}

#[test]
fn list_shows_triggers_risk_and_guardrails() {
    let out = pitcrew(&["list"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    let row = stdout
        .lines()
        .find(|l| l.starts_with("restart-crashlooping-deployment"))
        .unwrap_or_default();
    for needle in [
        "KubePodCrashLooping",
        "namespace!~\"kube-.*\"",
        "medium",
        "cooldown=10m",
        "escalate_after=3/6h",
    ] {
        assert!(row.contains(needle), "{needle} missing in {row:?}");
    }
    assert!(stdout.contains("manual-rollout-restart"), "{stdout}");
    assert!(Path::new(&repo().join("runbooks")).is_dir());
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(pitcrew(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        pitcrew(&["run", "restart-crashlooping-deployment", "--force"]).status.code(),
        Some(2)
    );
    let out = pitcrew(&["--config", "/nonexistent/pitcrew.yaml", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("/nonexistent/pitcrew.yaml"));
}

#[test]
fn docs_actions_md_is_generated_from_the_registry() {
    let out = pitcrew(&["actions", "--docs"]);
    assert_eq!(out.status.code(), Some(0));
    let generated = String::from_utf8_lossy(&out.stdout);
    let shipped = std::fs::read_to_string(repo().join("docs/actions.md")).unwrap();
    assert_eq!(
        shipped, generated,
        "docs/actions.md is stale: run `pitcrew actions --docs > docs/actions.md`"
    );
    assert!(generated.contains("## kubernetes.rollout_restart") && generated.contains("| `selector` |"));
}

#[test]
fn deploy_rbac_yaml_is_generated_from_the_registry() {
    let out = pitcrew(&["actions", "--rbac"]);
    assert_eq!(out.status.code(), Some(0));
    let generated = String::from_utf8_lossy(&out.stdout);
    let shipped = std::fs::read_to_string(repo().join("deploy/rbac.yaml")).unwrap();
    assert_eq!(
        shipped, generated,
        "deploy/rbac.yaml is stale: run `pitcrew actions --rbac > deploy/rbac.yaml`"
    );
    for needle in [
        "\"pods/eviction\"",
        "\"deployments/scale\"",
        "\"pods/log\"",
        "kubernetes.patch needs get, patch",
    ] {
        assert!(generated.contains(needle), "{needle} missing:\n{generated}");
    }
    assert!(!generated.contains("\"*\""), "no wildcard grants");
}

#[tokio::test]
async fn match_says_when_an_alert_is_already_recorded() {
    let h = crate::support::Harness::new(
        "apiVersion: pitcrew/v1\nname: x\ntrigger: {alertname: Seen}\nsteps: [{name: a, action: log, with: {message: m}}]\n",
        "",
    );
    let seen = crate::support::alert(&[("alertname", "Seen")]);
    h.post(&crate::support::payload(vec![seen.clone()])).await;
    let file = h.dir.path().join("alert.json");
    let config = h.dir.path().join("pitcrew.yaml");
    let explain = |alert: &Value| -> Value {
        std::fs::write(&file, alert.to_string()).unwrap();
        let args = [
            "--config",
            config.to_str().unwrap(),
            "match",
            "--alert",
            file.to_str().unwrap(),
            "--output",
            "json",
        ];
        serde_json::from_slice(&pitcrew(&args).stdout).unwrap()
    };
    assert_eq!(explain(&seen)[0]["duplicate"], true);
    assert_eq!(explain(&seen)[0]["seen"], "duplicate", "it ran (is queued): never decided again");
    // The same alert with a new startsAt is a new notification.
    let mut later = seen;
    later["startsAt"] = "2026-11-27T12:30:00Z".into();
    let report = explain(&later);
    assert_eq!(
        (report[0]["duplicate"].clone(), report[0]["seen"].clone()),
        (json!(false), json!("new"))
    );
    // The first run is still queued: the lock would block a second one now.
    assert_eq!(report[0]["matches"][0]["verdict"], "blocked");
    assert_eq!(report[0]["matches"][0]["decided_by"], "concurrency");
    // Delivered and blocked by that lock, it would be decided again when
    // re-sent (the CLI's clock is days past the harness's).
    h.post(&crate::support::payload(vec![later.clone()])).await;
    assert_eq!(explain(&later)[0]["seen"], "reconsidered");
}

#[test]
fn a_json_patch_that_appends_moves_or_removes_is_not_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let step = |ops: &str| {
        format!(
            "apiVersion: pitcrew/v1\nname: p\nsteps:\n  - name: s\n    action: kubernetes.patch\n    retries: 1\n    with:\n      \
             api_version: v1\n      kind: ConfigMap\n      namespace: shop\n      name: c\n      patch_type: json\n      patch: {ops}\n"
        )
    };
    let validate = |ops: &str| {
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, step(ops)).unwrap();
        let out = pitcrew(&["validate", file.to_str().unwrap()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
        )
    };
    for ok in [
        r#"[{op: replace, path: /data/a, value: "1"}]"#,
        r#"[{op: test, path: /data/a, value: "1"}, {op: add, path: /data/b, value: "2"}]"#,
    ] {
        let (code, out) = validate(ok);
        assert_eq!(code, Some(0), "{ok}: {out}");
    }
    for not in [
        r#"[{op: add, path: /spec/items/-, value: 1}]"#,
        r#"[{op: move, from: /data/a, path: /data/b}]"#,
        r#"[{op: copy, from: /data/a, path: /data/b}]"#,
        r#"[{op: remove, path: /data/a}]"#,
    ] {
        let (code, out) = validate(not);
        assert_eq!(code, Some(2), "{not}: {out}");
        assert!(out.contains("non-idempotent"), "{not}: {out}");
    }
}

#[test]
fn run_shows_step_errors_redacted_like_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::write(dir.path().join("hook"), "http://127.0.0.1:9/hook-s3cr3t-value\n").unwrap();
    std::fs::write(
        dir.path().join("runbooks/leak.yaml"),
        "apiVersion: pitcrew/v1\nname: leak\nsteps:\n  - name: say\n    action: exec\n    \
         with: {command: [sh, -c, 'echo the hook is http://127.0.0.1:9/hook-s3cr3t-value >&2; exit 1']}\n",
    )
    .unwrap();
    let config = dir.path().join("pitcrew.yaml");
    std::fs::write(
        &config,
        "state_dir: state\nrunbooks: [runbooks]\nplugins: plugins\nnotify: {url_file: hook}\n",
    )
    .unwrap();
    let out = pitcrew(&["--config", config.to_str().unwrap(), "run", "leak"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("s3cr3t") && !stdout.contains("s3cr3t"), "{stderr}");
    assert!(stderr.contains("[REDACTED]"), "{stderr}");
}

#[test]
fn only_credentials_from_the_environment_are_redacted_not_every_expansion() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["runbooks", "plugins/echo"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::write(
        dir.path().join("plugins/echo/plugin.yaml"),
        "name: echo\ndescription: says what it was given\ncommand: [echo.sh]\nrisk: low\nidempotent: true\n\
         timeout: 10s\nenv: [PITCREW_TEST_PLUGIN_KEY]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plugins/echo/echo.sh"),
        "#!/bin/sh\ncat > /dev/null; printf '{\"ok\": true, \"output\": {\"key\": \"%s\"}}' \"$PITCREW_TEST_PLUGIN_KEY\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("plugins/echo/echo.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("runbooks/say.yaml"),
        "apiVersion: pitcrew/v1\nname: say\nsteps:\n  - name: plain\n    action: exec\n    \
         with: {command: [/bin/echo, context prod-eu-west-1 password pr0m-reader-pw]}\n  \
         - name: plugin\n    action: plugin.echo\n",
    )
    .unwrap();
    let config = dir.path().join("pitcrew.yaml");
    std::fs::write(
        &config,
        "state_dir: state\nrunbooks: [runbooks]\nplugins: plugins\nkubernetes: {context: \"${PITCREW_TEST_CONTEXT}\"}\n\
         prometheus: {url: \"http://reader:${PITCREW_TEST_PROM_PW}@127.0.0.1:9\"}\n",
    )
    .unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pitcrew"))
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .env("PITCREW_TEST_CONTEXT", "prod-eu-west-1")
            .env("PITCREW_TEST_PROM_PW", "pr0m-reader-pw")
            .env("PITCREW_TEST_PLUGIN_KEY", "plugin-key-0123456")
            .output()
            .unwrap()
    };
    let run = cli(&["run", "say"]);
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let audit = String::from_utf8_lossy(&cli(&["audit", "export"]).stdout).into_owned();
    assert!(audit.contains("context prod-eu-west-1"), "a context name is data, not a secret");
    assert!(!audit.contains("pr0m-reader-pw"), "a password in a URL is a secret");
    assert!(
        !audit.contains("plugin-key-0123456"),
        "what a plugin is handed from our environment is a secret"
    );
    assert!(audit.contains("[REDACTED]"));
}

/// One run that succeeds, one that waits for approval, one whose error is
/// longer than a table cell, one retried.
const WORKSPACE_RUNBOOKS: &str = r#"apiVersion: pitcrew/v1
name: say
steps:
  - {name: hello, action: log, with: {message: hello}}
---
apiVersion: pitcrew/v1
name: gated
guardrails: {approval: required, self_approval: true}
steps:
  - {name: hello, action: log, with: {message: hello}}
---
apiVersion: pitcrew/v1
name: loud
steps:
  - name: shout
    action: exec
    with: {command: [sh, -c, 'printf "%0300d" 0 >&2; exit 1']}
---
apiVersion: pitcrew/v1
name: flaky
steps:
  - name: fetch
    action: http
    retries: 1
    with: {url: "http://127.0.0.1:9/"}
"#;

#[test]
fn completions_and_man_pages_cover_every_command() {
    let out = pitcrew(&["completions", "bash"]);
    let (script, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for word in ["pitcrew", "escalations", "timeline", "--dry-run"] {
        assert!(script.contains(word), "{word} missing from the bash completions");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = pitcrew(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("approve"), "{shell}");
    }
    assert_eq!(pitcrew(&["completions", "tcsh"]).status.code(), Some(2));

    let out = pitcrew(&["man"]);
    let (roff, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        roff.starts_with(".ie \\n(.g .ds Aq") || roff.starts_with(".TH"),
        "{}",
        &roff[..200.min(roff.len())]
    );
    let titles: Vec<&str> = roff.lines().filter(|l| l.starts_with(".TH ")).collect();
    for page in ["pitcrew", "pitcrew-run", "pitcrew-audit", "pitcrew-audit-export", "pitcrew-schema"] {
        assert!(
            titles.iter().any(|t| t.split_whitespace().nth(1) == Some(page)),
            "no page {page}: {titles:?}"
        );
    }
    assert!(!titles.iter().any(|t| t.contains("-help ")), "no pages for clap's help: {titles:?}");
    let source = format!("\"pitcrew {}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        titles.iter().all(|t| t.contains(&source)),
        "every page names its source: {titles:?}"
    );
    assert!(roff.contains("Skip cooldown"), "option help is in the pages");
}

/// The JSON Schema editors use must accept every shipped runbook and refuse
/// what `validate` refuses for its shape.
#[test]
fn runbook_schema_accepts_the_shipped_runbooks_and_refuses_bad_shapes() {
    let out = pitcrew(&["schema"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let docs = |yaml: &str| -> Vec<Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
            .collect()
    };
    let mut files: Vec<_> = std::fs::read_dir(repo().join("runbooks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let mut checked = 0;
    for file in files.iter().chain([&repo().join("tests/fixtures/matching/runbooks.yaml")]) {
        for doc in docs(&std::fs::read_to_string(file).unwrap()) {
            let errors: Vec<String> = validator
                .iter_errors(&doc)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            checked += 1;
        }
    }
    assert!(checked > files.len(), "{checked}");
    for doc in docs(WORKSPACE_RUNBOOKS) {
        assert!(validator.is_valid(&doc), "{doc}");
    }

    let good = "apiVersion: pitcrew/v1\nname: ok\ntrigger: {alertname: [A, B], status: any}\n\
                params: {n: {type: integer, default: 3, min: 1}}\nguardrails: {cooldown: 10m, rate_limit: 3/1h, concurrency: 2}\n\
                steps: [{name: a, action: log, with: {message: m}, timeout: 30, retries: 0}]\n";
    assert!(
        validator.is_valid(&docs(good)[0]),
        "{:?}",
        validator.iter_errors(&docs(good)[0]).map(|e| e.to_string()).collect::<Vec<_>>()
    );
    for (bad, why) in [
        (good.replace("pitcrew/v1", "pitcrew/v2"), "apiVersion"),
        (good.replace("name: ok", "name: Not_OK"), "name pattern"),
        (good.replace("steps: ", "step: "), "steps missing, unknown key"),
        (good.replace("status: any", "status: sometimes"), "trigger status"),
        (good.replace("type: integer", "type: float"), "param type"),
        (good.replace("concurrency: 2", "concurrency: many"), "concurrency"),
        (good.replace("cooldown: 10m", "cooldwon: 10m"), "unknown guardrail"),
        (good.replace("retries: 0", "retries: -1"), "retries"),
        (good.replace("timeout: 30", "timeout: [30]"), "timeout"),
        (format!("{good}risk: extreme\n"), "risk"),
        (
            format!("{good}tests: [{{alert: {{labels: {{alertname: A}}}}}}]\n"),
            "test without expect",
        ),
    ] {
        assert!(!validator.is_valid(&docs(&bad)[0]), "{why}: accepted\n{bad}");
    }
}

#[test]
fn docs_show_how_editors_find_the_schema() {
    let docs = std::fs::read_to_string(repo().join("docs/runbooks.md")).unwrap();
    assert!(docs.contains("# yaml-language-server: $schema="), "docs/runbooks.md");
    assert!(docs.contains("pitcrew schema >"), "docs/runbooks.md");
}

/// A folder of its own with a `pitcrew.yaml`, runbooks and (once something
/// ran) state; the CLI runs inside it, as an operator would.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(config: &str) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
        std::fs::write(dir.path().join("runbooks/all.yaml"), WORKSPACE_RUNBOOKS).unwrap();
        std::fs::write(
            dir.path().join("pitcrew.yaml"),
            format!("state_dir: state\nrunbooks: [runbooks]\nplugins: plugins\nhttp: {{allowed_hosts: [\"127.0.0.1:9\"]}}\n{config}"),
        )
        .unwrap();
        Workspace { dir }
    }

    fn cli(&self, args: &[&str]) -> Output {
        in_dir(self.dir.path(), args)
    }

    /// `run NAME --output json`: the execution it printed.
    fn run(&self, name: &str) -> Value {
        let out = self.cli(&["run", name, "--output", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", text(&out)))
    }
}

/// The CLI run in `dir`, with no config from the environment.
fn in_dir(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pitcrew"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("PITCREW_CONFIG")
        .output()
        .expect("pitcrew runs")
}

#[test]
fn every_command_and_argument_has_help() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(path.clone());
            }
            walk(sub, &path, missing);
        }
    }
    let mut cmd = pitcrew::cli::Cli::command();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, "pitcrew", &mut missing);
    assert!(missing.is_empty(), "without help text: {missing:#?}");
}

#[test]
fn reason_without_force_is_refused_before_anything_runs() {
    let ws = Workspace::new("");
    let out = ws.cli(&["run", "say", "--reason", "because"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(!ws.dir.path().join("state").exists(), "nothing ran");
}

#[test]
fn run_approve_and_deny_print_the_execution_as_json() {
    let ws = Workspace::new("");
    let done = ws.run("say");
    assert_eq!((done["runbook"].as_str(), done["state"].as_str()), (Some("say"), Some("succeeded")));
    assert_eq!(done["steps"][0]["name"], "hello");

    let out = ws.cli(&["run", "gated", "--output", "json"]);
    assert_eq!(out.status.code(), Some(4));
    let waiting: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(waiting["state"], "pending_approval");
    let id = waiting["id"].as_str().unwrap();
    let out = ws.cli(&["approve", id, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let approved: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((approved["id"].as_str(), approved["state"].as_str()), (Some(id), Some("succeeded")));

    let out = ws.cli(&["run", "gated", "--output", "json"]);
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = ws.cli(&["deny", &id, "--reason", "not now", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let denied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(denied["id"], id.as_str());
    assert_eq!(denied["state"], "cancelled", "{denied}");

    // Without --output, stdout is still only the id scripts capture.
    let out = ws.cli(&["run", "say"]);
    assert_eq!(text(&out).0.trim().len(), 26, "{:?}", text(&out));
}

#[test]
fn upper_case_execution_ids_find_their_run() {
    let ws = Workspace::new("");
    let id = ws.run("say")["id"].as_str().unwrap().to_string();
    let upper = id.to_uppercase();
    let out = ws.cli(&["show", &upper]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).0.contains(&format!("execution {id}")));
    let out = ws.cli(&["audit", "timeline", "--execution", &upper]);
    assert!(text(&out).0.contains("Execution started"), "{:?}", text(&out));
    let out = ws.cli(&["audit", "export", "--execution", &upper]);
    assert!(text(&out).0.lines().count() >= 4, "{:?}", text(&out));
}

/// The shortest prefix of `id`, 4 characters or more, that none of `others` starts with.
fn unique_prefix(id: &str, others: &[&str]) -> String {
    (4..=id.len())
        .map(|n| &id[..n])
        .find(|p| others.iter().all(|o| !o.starts_with(p)))
        .unwrap_or(id)
        .to_string()
}

#[test]
fn execution_ids_may_be_abbreviated_to_a_unique_prefix_like_git() {
    let ws = Workspace::new("");
    let said = ws.run("say")["id"].as_str().unwrap().to_string();
    let gated = || {
        let out = ws.cli(&["run", "gated", "--output", "json"]);
        assert_eq!(out.status.code(), Some(4), "{:?}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let waiting = gated();
    let shared: String = said
        .chars()
        .zip(waiting.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    assert!(
        shared.len() >= 4,
        "ids made a moment apart share their time's first characters: {said} {waiting}"
    );

    let out = ws.cli(&["show", &unique_prefix(&said, &[&waiting]).to_uppercase()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).0.contains(&format!("execution {said}")), "{:?}", text(&out));
    let out = ws.cli(&["audit", "export", "--execution", &unique_prefix(&said, &[&waiting])]);
    let lines = text(&out).0;
    assert!(lines.lines().count() >= 4, "{lines}");
    for line in lines.lines() {
        assert_eq!(
            serde_json::from_str::<Value>(line).unwrap()["execution_id"],
            said.as_str(),
            "{line}"
        );
    }
    let out = ws.cli(&["audit", "timeline", "--execution", &unique_prefix(&waiting, &[&said])]);
    assert!(text(&out).0.contains(&format!("Scope: execution `{waiting}`")), "{:?}", text(&out));

    // A prefix of both: exit 2 naming both, and nothing done.
    for args in [
        &["show", &shared][..],
        &["approve", &shared],
        &["deny", &shared],
        &["audit", "export", "--execution", &shared],
        &["audit", "timeline", "--execution", &shared],
    ] {
        let out = ws.cli(args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!("execution id prefix {shared} is ambiguous")),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("\n  {said}")) && stderr.contains(&format!("\n  {waiting}")),
            "{args:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    let shown: Value = serde_json::from_slice(&ws.cli(&["show", &waiting, "--output", "json"]).stdout).unwrap();
    assert_eq!(shown["state"], "pending_approval");

    // Too short to stand for an id, or no id's prefix: as for an unknown id.
    for unknown in [&said[..3], "zzzzzz"] {
        let out = ws.cli(&["show", unknown]);
        assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
        assert!(text(&out).1.contains(&format!("no execution {unknown}")), "{:?}", text(&out));
    }

    let out = ws.cli(&["approve", &unique_prefix(&waiting, &[&said]), "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let approved: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (approved["id"].as_str(), approved["state"].as_str()),
        (Some(waiting.as_str()), Some("succeeded"))
    );

    let another = gated();
    let out = ws.cli(&["deny", &unique_prefix(&another, &[&said, &waiting]), "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let denied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (denied["id"].as_str(), denied["state"].as_str()),
        (Some(another.as_str()), Some("cancelled"))
    );
}

#[test]
fn audit_export_takes_output_like_every_other_command() {
    let ws = Workspace::new("");
    ws.run("say");
    let csv = ws.cli(&["audit", "export", "--output", "csv"]);
    assert_eq!(csv.status.code(), Some(0), "{:?}", text(&csv));
    assert!(text(&csv).0.starts_with("seq,ts,kind,"), "{:?}", text(&csv));
    let old = ws.cli(&["audit", "export", "--format", "csv"]);
    assert_eq!(text(&old).0, text(&csv).0, "--format still works");
    for jsonl in [
        &["audit", "export", "--output", "jsonl"][..],
        &["audit", "export", "--output", "json"],
        &["audit", "export"],
    ] {
        let out = ws.cli(jsonl);
        let lines = text(&out).0;
        assert!(!lines.is_empty(), "{jsonl:?}");
        for line in lines.lines() {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{jsonl:?}: {e}: {line}"));
        }
    }
    let help = text(&ws.cli(&["audit", "export", "--help"])).0;
    assert!(help.contains("--output") && !help.contains("--format"), "{help}");
}

#[test]
fn budget_json_has_no_float_noise() {
    let ws = Workspace::new("slos:\n  - {name: checkout, objective: 99.9%, window: 30d, static_remaining: 80%}\n");
    let out = ws.cli(&["budget", "--output", "json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains("0000000"), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let slo = &report["slos"][0];
    assert_eq!(slo["budget_minutes"], json!(43.2), "{slo}");
    assert_eq!(slo["remaining_minutes"], json!(34.56), "{slo}");
    assert_eq!(slo["remaining"], json!(0.8), "{slo}");
    assert!(!ws.dir.path().join("state").exists());
}

#[test]
fn test_json_gives_expected_and_got_as_values() {
    let dir = tempfile::tempdir().unwrap();
    let rb = dir.path().join("rb.yaml");
    std::fs::write(
        &rb,
        r#"apiVersion: pitcrew/v1
name: wrong-expectation
trigger: {alertname: X}
params:
  ns: {default: "{{alert.labels.namespace}}"}
  n: {type: integer, default: 3}
target: "{{params.ns}}"
steps: [{name: a, action: log, with: {message: "in {{params.ns}}"}}]
tests:
  - alert: {labels: {alertname: X, namespace: shop}}
    expect: {match: true, target: billing, params: {n: 4}, steps: {a: {message: in billing, nope: 1}}}
"#,
    )
    .unwrap();
    let out = pitcrew(&[
        "--config",
        "tests/fixtures/matching/config.yaml",
        "test",
        rb.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mismatches: std::collections::BTreeMap<String, Value> = report["tests"][0]["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["what"].as_str().unwrap().to_string(), m.clone()))
        .collect();
    assert_eq!(mismatches["target"]["expected"], "billing");
    assert_eq!(mismatches["target"]["got"], "shop");
    assert_eq!(mismatches["params.n"]["expected"], 4);
    assert_eq!(mismatches["params.n"]["got"], 3);
    assert_eq!(mismatches["steps.a.message"]["expected"], "in billing");
    assert_eq!(mismatches["steps.a.message"]["got"], "in shop");
    assert_eq!(mismatches["steps.a.nope"]["got"], Value::Null);
    assert_eq!(mismatches["steps.a.nope"]["error"], "no such field");
}

#[test]
fn validate_lists_problems_by_file_then_line() {
    let dir = tempfile::tempdir().unwrap();
    // Keys in an unusual order: the checks (apiVersion first) would report
    // the last line first.
    let bad = "steps: [{name: a, action: nosuch.action}]\nname: BAD\napiVersion: pitcrew/v9\n";
    std::fs::write(dir.path().join("b.yaml"), bad).unwrap();
    std::fs::write(dir.path().join("a.yaml"), bad).unwrap();
    let out = pitcrew(&["validate", "--output", "json", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let places: Vec<(String, u64, u64)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let file = p["file"].as_str().unwrap();
            (
                file.rsplit('/').next().unwrap().to_string(),
                p["line"].as_u64().unwrap(),
                p["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(places.len() >= 6, "{places:?}");
    let mut sorted = places.clone();
    sorted.sort();
    assert_eq!(places, sorted);
    let table = text(&pitcrew(&["validate", dir.path().to_str().unwrap()])).1;
    let lines: Vec<&str> = table.lines().filter(|l| l.contains(".yaml:")).collect();
    assert!(
        lines[0].contains("a.yaml:1:") && lines.last().unwrap().contains("b.yaml:3:"),
        "{table}"
    );
}

#[test]
fn show_counts_tries_from_1_like_the_timeline_and_marks_cut_cells() {
    let ws = Workspace::new("");
    let flaky = ws.run("flaky");
    assert_eq!(flaky["state"], "failed", "{flaky}");
    let id = flaky["id"].as_str().unwrap();
    let shown = text(&ws.cli(&["show", id])).0;
    let header = shown.lines().find(|l| l.starts_with("PHASE")).unwrap();
    let col = header.find("TRY").unwrap();
    let tries: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("main"))
        .map(|l| l[col..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(tries, ["1", "2"], "{shown}");
    let timeline = text(&ws.cli(&["audit", "timeline", "--execution", id])).0;
    assert!(timeline.contains("(attempt 2)") && !timeline.contains("(attempt 3)"), "{timeline}");

    let loud = ws.run("loud");
    let shown = text(&ws.cli(&["show", loud["id"].as_str().unwrap()])).0;
    let row = shown.lines().find(|l| l.starts_with("main")).unwrap();
    assert!(row.ends_with('…'), "{row}");
    assert!(row.contains("000000"), "{row}");
}

#[test]
fn read_only_commands_never_create_state_and_say_where_they_looked() {
    let empty = tempfile::tempdir().unwrap();
    // approve, deny and reset write, but only to what is recorded: nothing
    // to do without state.
    let commands: [&[&str]; 9] = [
        &["executions"],
        &["show", "01kbgq1sd5x1n5f4v6p2z8w0hq"],
        &["audit", "verify"],
        &["audit", "export"],
        &["audit", "timeline"],
        &["escalations"],
        &["deny", "01kbgq1sd5x1n5f4v6p2z8w0hq"],
        &["approve", "01kbgq1sd5x1n5f4v6p2z8w0hq"],
        &["reset", "some-runbook", "some-target"],
    ];
    for args in commands {
        let out = in_dir(empty.path(), args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains("no state"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no config file found") && stderr.contains("$PITCREW_CONFIG") && stderr.contains("pitcrew.yaml"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("state_dir: .pitcrew"), "{args:?}: {stderr}");
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0, "{args:?} created something");
    }
    // Budgets come from the config and Prometheus, not from state: it works, and creates nothing.
    let out = in_dir(empty.path(), &["budget"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);

    let ws = Workspace::new("");
    let config = ws.dir.path().join("pitcrew.yaml");
    let out = in_dir(empty.path(), &["--config", config.to_str().unwrap(), "executions"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("config file: {}", config.display())), "{stderr}");
    assert!(
        stderr.contains(&format!("state_dir: {}", ws.dir.path().join("state").display())),
        "{stderr}"
    );
    assert!(!ws.dir.path().join("state").exists());
    // approve too, with runbooks to run an approved run by.
    let out = ws.cli(&["approve", "01kbgq1sd5x1n5f4v6p2z8w0hq"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no state"), "{stderr}");
    assert!(!ws.dir.path().join("state").exists(), "approve created state");

    // Once something ran, the same commands read it.
    assert_eq!(ws.run("say")["state"], "succeeded");
    let out = ws.cli(&["executions"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(text(&out).0.contains("say"));
}

/// `match` shows the window verdict and an inhibiting alert, as serve
/// would decide now (a window of every whole day holds at any time).
#[tokio::test]
async fn match_shows_the_window_and_the_inhibiting_alert() {
    let h = crate::support::Harness::new(
        r#"apiVersion: pitcrew/v1
name: fix
trigger: {alertname: AppDown}
risk: medium
guardrails:
  freeze: [always]
  inhibit_while_firing: [['alertname="DbDown"']]
steps: [{name: a, action: log, with: {message: m}}]
"#,
        "windows: [{name: always, from: \"00:00\", to: \"00:00\"}]\n",
    );
    // `match` decides at the wall clock's time: the database alert arrives then.
    {
        use pitcrew::clock::Clock;
        h.clock.advance(chrono::Utc::now() - h.clock.now());
    }
    h.post(&crate::support::payload(vec![crate::support::alert(&[("alertname", "DbDown")])]))
        .await;
    let file = h.dir.path().join("alert.json");
    std::fs::write(&file, crate::support::alert(&[("alertname", "AppDown")]).to_string()).unwrap();
    let config = h.dir.path().join("pitcrew.yaml");
    let (config, file) = (config.to_str().unwrap(), file.to_str().unwrap());
    let out = pitcrew(&["--config", config, "match", "--alert", file, "--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &report[0]["matches"][0];
    assert_eq!(
        (m["verdict"].as_str(), m["decided_by"].as_str()),
        (Some("blocked"), Some("inhibited")),
        "{m:#}"
    );
    let checks = m["guardrails"].as_array().unwrap();
    let freeze = checks.iter().find(|c| c["guardrail"] == "freeze").unwrap();
    assert_eq!(freeze["verdict"], "approve");
    assert!(
        freeze["detail"]
            .as_str()
            .unwrap()
            .contains("inside freeze window always (daily 00:00–00:00 UTC)")
    );
    let (table, _) = text(&pitcrew(&["--config", config, "match", "--alert", file]));
    assert!(table.contains("freeze") && table.contains("DbDown is firing"), "{table}");
}
