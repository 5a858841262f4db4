//! Hostile input: alert labels and runbook text trying to leave the slot
//! they are rendered into, or to break pitcrew itself.

use axum::http::StatusCode;
use pitcrew::store::*;

use crate::support::{Harness, alert, payload};

async fn one_run(h: &Harness, labels: &[(&str, &str)]) -> Execution {
    let (status, body) = h.post(&payload(vec![alert(labels)])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.run_queued().await;
    let list = h.store().executions(ExecutionFilter::default()).await.unwrap();
    h.store().execution(&list[0].id).await.unwrap()
}

fn step<'a>(exec: &'a Execution, name: &str) -> &'a StepRecord {
    exec.steps
        .iter()
        .rev()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {:?}", exec.steps))
}

#[tokio::test]
async fn a_silence_of_300000_years_from_a_label_fails_the_step_instead_of_the_worker() {
    let rb = r#"apiVersion: pitcrew/v1
name: silence
trigger: {alertname: Noisy}
steps:
  - name: hush
    action: alertmanager.silence
    with: {duration: "{{alert.labels.silence_for}}"}
"#;
    // A closed port: the step must fail on its input before any call.
    let h = Harness::new(rb, "alertmanager: {url: \"http://127.0.0.1:1\"}\n");
    let exec = one_run(&h, &[("alertname", "Noisy"), ("silence_for", "300000y")]).await;
    assert_eq!(exec.state, State::Failed);
    let hush = step(&exec, "hush");
    assert_eq!(hush.state, StepState::Failed);
    assert_eq!(
        hush.error.as_deref(),
        Some("parameter `duration`: \"300000y\" is longer than the limit of 100y")
    );
}
