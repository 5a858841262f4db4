//! Runbook benchmarks (issue: runbook language): load+compile time for 1,000
//! runbook files, match time per alert with 10,000 runbooks, and memory.
//!
//! `cargo bench --bench runbooks` runs the full sizes; under `cargo test` it
//! runs a small smoke pass so the code stays working.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use pitcrew::alert::Alert;
use pitcrew::config::Config;

fn runbook(i: usize, names: usize) -> String {
    let alertname = format!("Alert{}", i % names);
    format!(
        r#"apiVersion: pitcrew/v1
name: rb-{i}
description: generated runbook {i}
trigger:
  alertname: {alertname}
  matchers:
    - severity=~"warning|critical"
    - team="team-{team}"
    - namespace!~"kube-.*"
params:
  namespace: {{default: "{{{{alert.labels.namespace}}}}", pattern: '^[a-z0-9-]+$'}}
  deployment: {{default: "{{{{alert.labels.deployment}}}}", required: true}}
target: "{{{{params.namespace}}}}/{{{{params.deployment}}}}"
guardrails: {{cooldown: 10m, rate_limit: 3/1h, escalate_after: 3/6h}}
steps:
  - name: logs
    action: kubernetes.logs
    with: {{namespace: "{{{{params.namespace}}}}", selector: "app={{{{params.deployment}}}}", tail: 200}}
  - name: restart
    action: kubernetes.rollout_restart
    with: {{kind: deployment, namespace: "{{{{params.namespace}}}}", name: "{{{{params.deployment}}}}"}}
    retries: 2
  - name: verify
    action: prometheus.wait
    with: {{query: 'sum(up{{namespace="{{{{params.namespace}}}}"}})', until: "> 0", timeout: 5m}}
on_failure:
  - name: page
    action: notify
    with: {{text: "could not fix {{{{target}}}}: {{{{error}}}}"}}
"#,
        team = i % 7
    )
}

fn write_files(dir: &std::path::Path, count: usize, names: usize) {
    for i in 0..count {
        std::fs::write(dir.join(format!("rb-{i:05}.yaml")), runbook(i, names)).unwrap();
    }
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99), v.iter().sum::<f64>() / v.len() as f64)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (files_small, files_big, alerts, rounds) = if full { (1_000, 10_000, 200_000, 5) } else { (20, 50, 1_000, 1) };
    let names = files_big / 5;
    let config = Config::default();

    // Load + compile 1,000 files (median of several rounds).
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files_small, names);
    let mut load_times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let set = pitcrew::runbook::compile::load(&config, &[dir.path().to_path_buf()]).unwrap();
        load_times.push(t.elapsed().as_secs_f64());
        assert_eq!(set.runbooks.len(), files_small);
    }
    let (load_median, _, _) = median(load_times);
    println!(
        "load+compile {files_small} runbook files: median {:.3} s over {rounds} rounds",
        load_median
    );

    // 10,000 runbooks: memory and matching.
    let big = tempfile::tempdir().unwrap();
    write_files(big.path(), files_big, names);
    let rss_before = rss_kib("VmRSS:");
    let t = Instant::now();
    let set = pitcrew::runbook::compile::load(&config, &[big.path().to_path_buf()]).unwrap();
    let load_big = t.elapsed().as_secs_f64();
    let rss_after = rss_kib("VmRSS:");
    println!(
        "load+compile {files_big} runbooks: {:.3} s; RSS {} MiB -> {} MiB (+{} MiB); peak RSS {} MiB",
        load_big,
        rss_before / 1024,
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / 1024,
        rss_kib("VmHWM:") / 1024
    );

    // Alerts: half match one alertname's runbooks, half match nothing.
    let mut samples = Vec::with_capacity(alerts);
    let mut matched = 0usize;
    let mut resolved = 0usize;
    for i in 0..alerts {
        let name = if i % 2 == 0 {
            format!("Alert{}", i % names)
        } else {
            format!("Unrelated{i}")
        };
        let alert = Alert::firing(&name)
            .label_set("severity", "critical")
            .label_set("team", &format!("team-{}", i % 7))
            .label_set("namespace", "shop")
            .label_set("deployment", "checkout");
        let t = Instant::now();
        let hits: Vec<_> = set.matching(black_box(&alert)).collect();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        matched += hits.len();
        if i % 100 == 0
            && let Some(rb) = hits.first()
        {
            resolved += set.resolve(rb, Some(&alert), &BTreeMap::new()).is_ok() as usize;
        }
    }
    let (p50, p99, mean) = median(samples);
    println!(
        "match with {} runbooks, {alerts} alerts: median {p50:.2} µs, p99 {p99:.2} µs, mean {mean:.2} µs per alert ({matched} matches)",
        set.runbooks.len()
    );

    // Match + resolve params and target for a matching alert.
    let alert = Alert::firing("Alert0")
        .label_set("severity", "critical")
        .label_set("team", "team-0")
        .label_set("namespace", "shop")
        .label_set("deployment", "checkout");
    let mut resolve_samples = Vec::new();
    for _ in 0..(alerts / 20).max(100) {
        let t = Instant::now();
        for rb in set.matching(&alert) {
            black_box(set.resolve(rb, Some(&alert), &BTreeMap::new()).unwrap());
        }
        resolve_samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99, _) = median(resolve_samples);
    println!("match + resolve params/target: median {p50:.2} µs, p99 {p99:.2} µs per alert (resolved {resolved})");
}
