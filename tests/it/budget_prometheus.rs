//! Error budgets from a real Prometheus: good/total series the test controls
//! decide the tier; Prometheus gone means freeze.

use std::sync::Arc;

use pitcrew::action::Deps;
use pitcrew::budget::{Budgets, evaluate};
use pitcrew::config::Config;
use pitcrew::guard::Verdict;
use pitcrew::runbook::Risk;

use crate::realparts::{Exporter, Prometheus};
use crate::support::{Harness, alert, payload};

fn config(prometheus: &str) -> String {
    format!(
        "prometheus: {{url: {prometheus}}}\nslos:\n  - name: checkout\n    objective: 99.9%\n    window: 30d\n    \
         good: sum(pitcrew_test_good{{window=\"{{{{window}}}}\"}})\n    total: sum(pitcrew_test_total{{window=\"{{{{window}}}}\"}})\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_follow_the_series_and_an_unreachable_prometheus_freezes() {
    let exporter = Exporter::start().await;
    // The SLO window reaches the query as {{window}}: the series carry it as a label.
    exporter.set("pitcrew_test_good{window=\"30d\"}", 99_940.0);
    exporter.set("pitcrew_test_total{window=\"30d\"}", 100_000.0);
    let prom = Prometheus::start(&exporter.addr()).await;
    prom.eventually("sum(pitcrew_test_good{window=\"30d\"})", |v| v == 99_940.0).await;
    prom.eventually("sum(pitcrew_test_total{window=\"30d\"})", |v| v == 100_000.0).await;

    let text = config(&prom.url());
    let cfg = Arc::new(Config::parse(std::path::Path::new("pitcrew.yaml"), &text).unwrap());
    let deps = Deps::new(cfg.clone());
    let slo = cfg.slos[0].clone();
    // 0.06% errors against a 0.1% budget: 40% left: caution.
    let b = evaluate(&deps, &slo, chrono::Utc::now()).await;
    assert!((b.remaining.unwrap() - 0.4).abs() < 1e-9, "{b:?}");
    assert_eq!(b.tier, "caution");
    assert_eq!(b.approve, vec![Risk::High]);
    assert!((b.remaining_minutes.unwrap() - 17.28).abs() < 1e-6);

    // More errors: 0.09% used → 10% left → freeze.
    exporter.set("pitcrew_test_good{window=\"30d\"}", 99_910.0);
    prom.eventually("sum(pitcrew_test_good{window=\"30d\"})", |v| v == 99_910.0).await;
    let b = evaluate(&deps, &slo, chrono::Utc::now()).await;
    assert!((b.remaining.unwrap() - 0.1).abs() < 1e-9, "{b:?}");
    assert_eq!(b.tier, "freeze");

    // Budget spent: shown below zero, as is.
    exporter.set("pitcrew_test_good{window=\"30d\"}", 99_800.0);
    prom.eventually("sum(pitcrew_test_good{window=\"30d\"})", |v| v == 99_800.0).await;
    let b = evaluate(&deps, &slo, chrono::Utc::now()).await;
    assert!((b.remaining.unwrap() + 1.0).abs() < 1e-9, "{b:?}");
    assert_eq!(b.tier, "exhausted");

    drop(prom);
    let b = Budgets::new(Arc::new(Deps::new(cfg.clone())))
        .refresh(chrono::Utc::now())
        .await
        .remove(0);
    assert_eq!(b.tier, "unknown");
    assert_eq!(b.auto, vec![Risk::Low]);
    assert!(b.error.as_deref().unwrap_or_default().contains("unreachable"), "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_medium_risk_runbook_waits_for_approval_when_prometheus_is_down() {
    let port = crate::realparts::closed_port();
    let rb = r#"apiVersion: pitcrew/v1
name: restart
trigger: {alertname: Down}
guardrails: {slo: checkout}
steps:
  - name: restart
    action: kubernetes.rollout_restart
    with: {kind: deployment, namespace: shop, name: web}
"#;
    let h = Harness::new(rb, &config(&format!("http://127.0.0.1:{port}")));
    h.post(&payload(vec![alert(&[("alertname", "Down")])])).await;
    let decisions: Vec<_> = h.audit().await.into_iter().filter(|r| r.kind == "guardrail.decision").collect();
    assert_eq!(
        decisions[0].data["verdict"],
        serde_json::to_value(Verdict::PendingApproval).unwrap()
    );
    let reason = decisions[0].data["reason"].as_str().unwrap();
    assert!(
        reason.contains("unknown") && reason.contains("medium risk needs approval"),
        "{reason}"
    );
}
