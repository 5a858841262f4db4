//! Many clusters: two test API servers as two contexts of one kubeconfig
//! file, runs routed by the alert's `cluster` label, an unknown cluster
//! failing before any request, and one client per cluster reused.

use k8s_openapi::api::apps::v1::Deployment;
use pitcrew::store::{ExecutionFilter, State};
use serde_json::{Value, json};

use crate::k8s_server::K8sServer;
use crate::support::{Harness, alert, payload};

const RUNBOOK: &str = r#"apiVersion: pitcrew/v1
name: scale-web
trigger: {alertname: WebSlow}
target: "{{alert.labels.cluster}}/{{alert.labels.instance}}"
steps:
  - name: scale
    action: kubernetes.scale
    with: {cluster: "{{alert.labels.cluster}}", kind: deployment, namespace: shop, name: web, replicas: 3}
"#;

fn deployment() -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "shop/web:1"}]}},
        },
    }))
    .unwrap()
}

/// A kubeconfig with one context per server, as `kubectl config` writes it.
fn kubeconfig(servers: &[(&str, &str)]) -> String {
    let mut clusters = String::new();
    let mut contexts = String::new();
    for (name, url) in servers {
        clusters.push_str(&format!("- name: {name}\n  cluster:\n    server: {url}\n"));
        contexts.push_str(&format!("- name: {name}-ctx\n  context:\n    cluster: {name}\n    user: pitcrew\n"));
    }
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}contexts:\n{contexts}current-context: {}-ctx\nusers:\n- name: pitcrew\n  user: {{}}\n",
        servers[0].0
    )
}

struct Two {
    h: Harness,
    east: K8sServer,
    west: K8sServer,
}

async fn two_clusters(extra_clusters: &str) -> Two {
    two_clusters_with(RUNBOOK, extra_clusters).await
}

async fn two_clusters_with(runbook: &str, extra_clusters: &str) -> Two {
    let east = K8sServer::start().await;
    let west = K8sServer::start().await;
    east.insert(deployment());
    west.insert(deployment());
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig(&[("east", east.url()), ("west", west.url())])).unwrap();
    let config = format!(
        "kubernetes:\n  default_cluster: east\n  clusters:\n    east: {{kubeconfig: {p}, context: east-ctx}}\n    west: {{kubeconfig: {p}, context: west-ctx}}\n{extra_clusters}",
        p = path.display()
    );
    let h = Harness::new(runbook, &config);
    // The kubeconfig stays until the test ends (the harness owns its own dir).
    std::mem::forget(files);
    Two { h, east, west }
}

async fn fire(h: &Harness, cluster: &str, instance: &str) -> Value {
    let (status, body) = h
        .post(&payload(vec![alert(&[
            ("alertname", "WebSlow"),
            ("cluster", cluster),
            ("instance", instance),
        ])]))
        .await;
    assert_eq!(status, 202, "{body}");
    h.run_queued().await;
    let runs = h
        .store()
        .executions(ExecutionFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let exec = runs
        .into_iter()
        .find(|e| e.target == format!("{cluster}/{instance}"))
        .expect("the run of this alert");
    serde_json::to_value(h.store().execution(&exec.id).await.unwrap()).unwrap()
}

fn replicas(server: &K8sServer) -> Option<i32> {
    server
        .get::<Deployment>("shop", "web")
        .and_then(|d| d.spec)
        .and_then(|s| s.replicas)
}

#[tokio::test]
async fn an_alert_for_one_cluster_never_reaches_the_other() {
    let Two { h, east, west } = two_clusters("").await;

    let run = fire(&h, "west", "a").await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["output"]["cluster"], "west", "the step names its cluster");
    assert_eq!(replicas(&west), Some(3));
    let west_paths: Vec<(String, String)> = west.requests().into_iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(
        west_paths,
        [
            ("GET".to_string(), "/apis/apps/v1/namespaces/shop/deployments/web/scale".to_string()),
            (
                "PATCH".to_string(),
                "/apis/apps/v1/namespaces/shop/deployments/web/scale".to_string()
            ),
        ]
    );
    assert!(east.requests().is_empty(), "east saw {:?}", east.requests());
    assert_eq!(replicas(&east), Some(1));

    let run = fire(&h, "east", "a").await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(replicas(&east), Some(3));
    assert_eq!(east.writes().len(), 1);
    assert_eq!(west.requests().len(), 2, "west saw nothing more");
}

#[tokio::test]
async fn an_unknown_cluster_fails_the_step_before_any_request() {
    let Two { h, east, west } = two_clusters("").await;
    let run = fire(&h, "north", "a").await;
    assert_eq!(run["state"], "failed", "{run:#}");
    let step = &run["steps"][0];
    let error = step["error"].as_str().unwrap();
    assert!(error.starts_with("parameter `cluster`: "), "{step:#}");
    assert!(
        error.contains("unknown cluster \"north\"") && error.contains("east, west"),
        "names the cluster and the known ones: {error}"
    );
    assert!(east.requests().is_empty() && west.requests().is_empty());
    assert_eq!((east.connections(), west.connections()), (0, 0));
}

#[tokio::test]
async fn one_client_per_cluster_is_built_and_reused_across_runs() {
    let Two { h, east, west } = two_clusters("").await;
    for instance in ["a", "b", "c"] {
        assert_eq!(fire(&h, "west", instance).await["state"], "succeeded");
        assert_eq!(fire(&h, "east", instance).await["state"], "succeeded");
    }
    // Three runs each, every request over the one connection of one client.
    assert_eq!(west.requests().len(), 4, "one patch, then reads: {:?}", west.requests());
    assert_eq!(west.connections(), 1);
    assert_eq!(east.connections(), 1);
    assert_eq!(h.engine.deps.kube.built("west"), 1);
    assert_eq!(h.engine.deps.kube.built("east"), 1);
}

#[tokio::test]
async fn a_cluster_with_a_broken_kubeconfig_stops_only_its_own_steps() {
    let Two { h, east: _, west } = two_clusters("    broken: {kubeconfig: /nonexistent/kubeconfig, context: x}\n").await;
    let run = fire(&h, "broken", "a").await;
    assert_eq!(run["state"], "failed");
    let error = run["steps"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("cluster broken") && error.contains("/nonexistent/kubeconfig"),
        "{error}"
    );
    assert!(error.starts_with("unavailable: "), "{error}");
    assert_eq!(fire(&h, "west", "a").await["state"], "succeeded");
    assert_eq!(replicas(&west), Some(3));
    // Not cached as built: the next step for it tries again.
    assert_eq!(h.engine.deps.kube.built("broken"), 0);
    assert_eq!(fire(&h, "broken", "b").await["state"], "failed");
}

#[tokio::test]
async fn a_step_without_cluster_acts_on_the_default_cluster_and_match_says_so() {
    let rb = RUNBOOK.replace("cluster: \"{{alert.labels.cluster}}\", ", "");
    let Two { h, east, west } = two_clusters_with(&rb, "").await;
    let run = fire(&h, "west", "a").await;
    assert_eq!(run["steps"][0]["output"]["cluster"], "east", "{run:#}");
    assert_eq!(replicas(&east), Some(3));
    assert!(west.requests().is_empty());

    // What `pitcrew match` shows: the cluster each Kubernetes step acts on.
    let set = h.engine.runbooks();
    let rb = set.get("scale-web").unwrap();
    let resolved = pitcrew::runbook::Resolved {
        params: Default::default(),
        target: "t".into(),
        inhibit: Vec::new(),
    };
    let clusters = pitcrew::action::kubernetes::step_clusters(&set, rb, None, &resolved, h.engine.config());
    assert_eq!(clusters, vec![json!({"step": "scale", "cluster": "east"})]);
}

#[test]
fn a_literal_unknown_cluster_is_refused_at_load_naming_file_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = pitcrew::config::Config::parse(
        &dir.path().join("pitcrew.yaml"),
        "kubernetes:\n  clusters:\n    east: {context: e}\n    west: {context: w}\n",
    )
    .unwrap();
    let rb = dir.path().join("rb.yaml");
    std::fs::write(
        &rb,
        "apiVersion: pitcrew/v1\nname: r\nsteps:\n  - name: restart\n    action: kubernetes.rollout_restart\n    with: {cluster: north, kind: deployment, namespace: a, name: b}\n  - name: templated\n    action: kubernetes.rollout_restart\n    with: {cluster: \"{{target}}\", kind: deployment, namespace: a, name: b}\n  - name: unnamed\n    action: kubernetes.rollout_restart\n    with: {kind: deployment, namespace: a, name: b}\n",
    )
    .unwrap();
    let err = pitcrew::runbook::compile::load(&config, std::slice::from_ref(&rb))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rb.yaml:6"), "names the file and line: {err}");
    assert!(err.contains("step `restart`: unknown cluster `north`"), "{err}");
    assert!(err.contains("east, west"), "{err}");
    assert!(!err.contains("templated"), "a templated cluster is checked when it runs: {err}");
    assert!(
        err.contains("step `unnamed` names no cluster and kubernetes.default_cluster is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn runs_are_recorded_per_cluster_in_step_inputs() {
    let Two { h, .. } = two_clusters("").await;
    fire(&h, "west", "x").await;
    let started: Vec<Value> = h
        .audit()
        .await
        .into_iter()
        .filter(|r| r.kind == "step.started")
        .map(|r| r.data)
        .collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["input"]["cluster"], "west", "{:#}", started[0]);
    let exec = h.store().executions(ExecutionFilter::default()).await.unwrap();
    assert_eq!(exec[0].state, State::Succeeded);
}
