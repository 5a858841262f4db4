//! Kubernetes actions through the real kube client against the test API
//! server: what goes over the wire, what the cluster looks like afterwards,
//! and how failures read.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use pitcrew::action::{ActionContext, ActionError, Deps, Registry};
use pitcrew::config::Config;
use serde_json::{Value, json};

use crate::k8s_server::{K8sServer, Recorded};

const STARTED: &str = "2024-05-01T10:00:00Z";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const MERGE: &str = "application/merge-patch+json";

struct Harness {
    server: K8sServer,
    deps: Deps,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        let server = K8sServer::start().await;
        Harness::with_client(server.client(), server)
    }

    fn with_client(client: kube::Client, server: K8sServer) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let deps = Deps::new(Arc::new(Config::for_state_dir(dir.path())));
        assert!(deps.kube.set("default", client));
        Harness { server, deps, dir }
    }

    fn artifacts(&self) -> std::path::PathBuf {
        self.dir.path().join("artifacts").join("01TEST")
    }

    async fn run_as(&self, action: &str, with: Value, dry_run: bool, started_at: &str) -> Result<Value, ActionError> {
        let registry = Registry::builtin();
        let action = registry.get(action).unwrap_or_else(|| panic!("no action {action}"));
        let cx = ActionContext {
            execution_id: "01TEST",
            step: "step",
            started_at: started_at.parse::<DateTime<Utc>>().expect("a time"),
            dry_run,
            artifacts: self.artifacts(),
            alert: None,
            deps: &self.deps,
        };
        action.run(&with, &cx).await
    }

    async fn run(&self, action: &str, with: Value) -> Result<Value, ActionError> {
        self.run_as(action, with, false, STARTED).await
    }

    async fn dry_run(&self, action: &str, with: Value) -> Result<Value, ActionError> {
        self.run_as(action, with, true, STARTED).await
    }
}

// ---------------------------------------------------------------------------
// Test data

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"team": "payments"}},
                "spec": {"containers": [{"name": "app", "image": "shop/web:1.2.3"}]},
            },
        },
    }))
    .expect("a deployment")
}

fn workload<K: serde::de::DeserializeOwned>(name: &str) -> K {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "shop/x:1"}]},
            },
        },
    }))
    .expect("a workload")
}

struct PodSpec<'a> {
    name: &'a str,
    ready: bool,
    restarts: i32,
    created: &'a str,
}

fn pod(p: PodSpec<'_>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": p.name,
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "abc"},
            "creationTimestamp": p.created,
        },
        "spec": {"containers": [{"name": "app", "image": "shop/web:1.2.3"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}],
            "containerStatuses": [{
                "name": "app", "image": "shop/web:1.2.3", "imageID": "", "ready": p.ready, "restartCount": p.restarts,
            }],
        },
    }))
    .expect("a pod")
}

fn ready_pod(name: &str, created: &str) -> Pod {
    pod(PodSpec {
        name,
        ready: true,
        restarts: 0,
        created,
    })
}

fn request(method: &str, path: &str, query: &[(&str, &str)], content_type: Option<&str>, body: Option<Value>) -> Recorded {
    Recorded {
        method: method.into(),
        path: path.into(),
        query: query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        content_type: content_type.map(String::from),
        body,
    }
}

fn get(path: &str) -> Recorded {
    request("GET", path, &[], None, None)
}

fn failed(result: Result<Value, ActionError>) -> String {
    match result {
        Err(ActionError::Failed(m)) => m,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn annotation(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("kubectl.kubernetes.io/restartedAt")
        .cloned()
}

const WEB: &str = "/apis/apps/v1/namespaces/shop/deployments/web";

// ---------------------------------------------------------------------------
// kubernetes.rollout_restart

#[tokio::test]
async fn rollout_restart_sends_what_kubectl_sends() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));

    let out = h
        .run(
            "kubernetes.rollout_restart",
            json!({"kind": "deployment", "namespace": "shop", "name": "web"}),
        )
        .await
        .unwrap();

    assert_eq!(
        h.server.requests(),
        [
            get(WEB),
            request(
                "PATCH",
                WEB,
                &[("fieldManager", "pitcrew")],
                Some(STRATEGIC),
                Some(json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": STARTED}}}}})),
            ),
        ]
    );
    let stored: Deployment = h.server.get("shop", "web").unwrap();
    assert_eq!(annotation(&stored).as_deref(), Some(STARTED));
    let template_annotations = stored.spec.unwrap().template.metadata.unwrap().annotations.unwrap();
    assert_eq!(
        template_annotations.get("team").map(String::as_str),
        Some("payments"),
        "other annotations stay"
    );
    assert!(!template_annotations.contains_key("kube.kubernetes.io/restartedAt"));
    assert_eq!(stored.metadata.generation, Some(2));
    assert_eq!(
        out,
        json!({"cluster": "default", "kind": "deployment", "namespace": "shop", "name": "web", "restartedAt": STARTED,
               "changed": true, "generation": 2, "dry_run": false})
    );
}

#[tokio::test]
async fn rollout_restart_twice_with_the_same_start_patches_once() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    let with = json!({"kind": "deployment", "namespace": "shop", "name": "web"});

    let first = h.run("kubernetes.rollout_restart", with.clone()).await.unwrap();
    let second = h.run("kubernetes.rollout_restart", with.clone()).await.unwrap();

    assert_eq!(first["changed"], json!(true));
    assert_eq!(second["changed"], json!(false));
    assert_eq!(second["generation"], json!(2));
    assert_eq!(h.server.writes().len(), 1, "{:#?}", h.server.requests());
    assert_eq!(h.server.get::<Deployment>("shop", "web").unwrap().metadata.generation, Some(2));

    // A new execution is a new restart.
    let third = h
        .run_as("kubernetes.rollout_restart", with, false, "2024-05-01T11:30:00Z")
        .await
        .unwrap();
    assert_eq!(third["changed"], json!(true));
    assert_eq!(
        annotation(&h.server.get("shop", "web").unwrap()).as_deref(),
        Some("2024-05-01T11:30:00Z")
    );
}

#[tokio::test]
async fn rollout_restart_takes_statefulsets_and_daemonsets() {
    let h = Harness::new().await;
    h.server.insert(workload::<StatefulSet>("db"));
    h.server.insert(workload::<DaemonSet>("agent"));

    h.run(
        "kubernetes.rollout_restart",
        json!({"kind": "statefulset", "namespace": "shop", "name": "db"}),
    )
    .await
    .unwrap();
    h.run(
        "kubernetes.rollout_restart",
        json!({"kind": "daemonset", "namespace": "shop", "name": "agent"}),
    )
    .await
    .unwrap();

    let patched: Vec<(String, Option<String>)> = h.server.writes().into_iter().map(|r| (r.path, r.content_type)).collect();
    assert_eq!(
        patched,
        [
            (
                "/apis/apps/v1/namespaces/shop/statefulsets/db".to_string(),
                Some(STRATEGIC.to_string())
            ),
            (
                "/apis/apps/v1/namespaces/shop/daemonsets/agent".to_string(),
                Some(STRATEGIC.to_string())
            ),
        ]
    );
    let db: StatefulSet = h.server.get("shop", "db").unwrap();
    let stamp = db.spec.unwrap().template.metadata.unwrap().annotations.unwrap();
    assert_eq!(stamp.get("kubectl.kubernetes.io/restartedAt").map(String::as_str), Some(STARTED));
}

#[tokio::test]
async fn rollout_restart_dry_run_is_sent_with_dry_run_all_and_changes_nothing() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    let before: Deployment = h.server.get("shop", "web").unwrap();

    let out = h
        .dry_run(
            "kubernetes.rollout_restart",
            json!({"kind": "deployment", "namespace": "shop", "name": "web"}),
        )
        .await
        .unwrap();

    let writes = h.server.writes();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].query.get("dryRun").map(String::as_str), Some("All"));
    assert_eq!(h.server.get::<Deployment>("shop", "web").unwrap(), before);
    assert_eq!(out["dry_run"], json!(true));
    assert_eq!(out["changed"], json!(true));
}

#[tokio::test]
async fn rollout_restart_of_a_missing_deployment_says_not_found() {
    let h = Harness::new().await;
    let err = failed(
        h.run(
            "kubernetes.rollout_restart",
            json!({"kind": "deployment", "namespace": "shop", "name": "web"}),
        )
        .await,
    );
    assert_eq!(err, "deployment shop/web not found");
    assert_eq!(h.server.writes(), []);
}

#[tokio::test]
async fn rollout_restart_conflict_is_reported_as_a_conflict() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    h.server.inject_conflict_once();
    let err = failed(
        h.run(
            "kubernetes.rollout_restart",
            json!({"kind": "deployment", "namespace": "shop", "name": "web"}),
        )
        .await,
    );
    assert!(
        err.starts_with("conflict: deployment shop/web: Operation cannot be fulfilled"),
        "{err}"
    );
    assert_eq!(annotation(&h.server.get("shop", "web").unwrap()), None);
}

#[tokio::test]
async fn rollout_restart_refuses_a_paused_deployment_like_kubectl() {
    let h = Harness::new().await;
    let mut d = deployment("web", 3);
    d.spec.as_mut().unwrap().paused = Some(true);
    h.server.insert(d);
    let result = h
        .run(
            "kubernetes.rollout_restart",
            json!({"kind": "deployment", "namespace": "shop", "name": "web"}),
        )
        .await;
    assert!(
        matches!(&result, Err(ActionError::Refused(m)) if m.contains("paused")),
        "{result:?}"
    );
    assert_eq!(h.server.writes(), []);
}

#[tokio::test]
async fn forbidden_names_the_rbac_it_needs() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    h.server.fail_next(
        403,
        "Forbidden",
        "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:ops:pitcrew\" cannot get resource \"deployments\"",
    );
    let err = failed(
        h.run(
            "kubernetes.rollout_restart",
            json!({"kind": "deployment", "namespace": "shop", "name": "web"}),
        )
        .await,
    );
    assert!(err.starts_with("forbidden: deployments.apps \"web\" is forbidden"), "{err}");
    assert!(
        err.ends_with("(RBAC: needs verbs get on deployments.apps in namespace shop)"),
        "{err}"
    );
}

#[tokio::test]
async fn an_overloaded_api_server_is_asked_once() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    h.server
        .fail_next(503, "ServiceUnavailable", "the server is currently unable to handle the request");
    let result = h
        .run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "replicas": 4}),
        )
        .await;
    assert!(
        matches!(&result, Err(ActionError::Unavailable(m)) if m.contains("503")),
        "{result:?}"
    );
    assert_eq!(h.server.requests().len(), 1, "the client must not retry");
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable() {
    // A port that was free a moment ago: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = pitcrew::action::kubernetes::client_for_url(&format!("http://127.0.0.1:{port}")).unwrap();
    let h = Harness::with_client(client, K8sServer::start().await);
    let result = h
        .run(
            "kubernetes.rollout_restart",
            json!({"kind": "deployment", "namespace": "shop", "name": "web"}),
        )
        .await;
    assert!(
        matches!(&result, Err(ActionError::Unavailable(m)) if m.starts_with("kubernetes API unreachable: ")),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------
// Input checks, for every action, before any request

#[tokio::test]
async fn hostile_names_are_refused_before_any_request() {
    let h = Harness::new().await;
    for bad in ["../x", "a;b", "$(id)", "web/../../secrets", "Web", ""] {
        let cases = [
            (
                "kubernetes.rollout_restart",
                json!({"kind": "deployment", "namespace": "shop", "name": bad}),
            ),
            (
                "kubernetes.rollout_restart",
                json!({"kind": "deployment", "namespace": bad, "name": "web"}),
            ),
            (
                "kubernetes.scale",
                json!({"kind": "deployment", "namespace": "shop", "name": bad, "replicas": 2}),
            ),
            (
                "kubernetes.scale",
                json!({"kind": "deployment", "namespace": bad, "name": "web", "replicas": 2}),
            ),
            ("kubernetes.delete_pods", json!({"namespace": bad, "selector": "app=web"})),
            ("kubernetes.logs", json!({"namespace": "shop", "pod": bad})),
            ("kubernetes.logs", json!({"namespace": bad, "selector": "app=web"})),
            (
                "kubernetes.logs",
                json!({"namespace": "shop", "selector": "app=web", "container": bad}),
            ),
            (
                "kubernetes.patch",
                json!({"api_version": "v1", "kind": "ConfigMap", "namespace": "shop", "name": bad, "patch": {}}),
            ),
            (
                "kubernetes.patch",
                json!({"api_version": "v1", "kind": "ConfigMap", "namespace": bad, "name": "x", "patch": {}}),
            ),
            (
                "kubernetes.patch",
                json!({"api_version": bad, "kind": "ConfigMap", "namespace": "shop", "name": "x", "patch": {}}),
            ),
        ];
        for (action, with) in cases {
            let result = h.run(action, with.clone()).await;
            assert!(matches!(result, Err(ActionError::Input { .. })), "{action} {with}: {result:?}");
        }
    }
    let result = h
        .run(
            "kubernetes.patch",
            json!({"api_version": "v1", "kind": "../secrets", "namespace": "shop", "name": "x", "patch": {}}),
        )
        .await;
    assert!(
        matches!(result, Err(ActionError::Input { ref field, .. }) if field == "kind"),
        "{result:?}"
    );
    assert_eq!(h.server.requests(), []);
}

#[tokio::test]
async fn parameters_are_typed_and_strings_of_numbers_are_accepted() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    let unknown = h
        .run(
            "kubernetes.rollout_restart",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "force": true}),
        )
        .await;
    assert!(matches!(unknown, Err(ActionError::Input { .. })), "{unknown:?}");
    let wrong_kind = h
        .run(
            "kubernetes.rollout_restart",
            json!({"kind": "replicaset", "namespace": "shop", "name": "web"}),
        )
        .await;
    assert!(
        matches!(wrong_kind, Err(ActionError::Input { ref field, .. }) if field == "kind"),
        "{wrong_kind:?}"
    );
    let not_a_number = h
        .run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "replicas": "many"}),
        )
        .await;
    assert!(matches!(not_a_number, Err(ActionError::Input { .. })), "{not_a_number:?}");
    assert_eq!(h.server.requests(), []);

    let out = h
        .run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "replicas": "4"}),
        )
        .await
        .unwrap();
    assert_eq!(out["to"], json!(4));
}

// ---------------------------------------------------------------------------
// kubernetes.scale

#[tokio::test]
async fn scale_sets_replicas_through_the_scale_subresource() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));

    let out = h
        .run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "replicas": 5}),
        )
        .await
        .unwrap();

    let scale = format!("{WEB}/scale");
    assert_eq!(
        h.server.requests(),
        [
            get(&scale),
            request(
                "PATCH",
                &scale,
                &[("fieldManager", "pitcrew")],
                Some(MERGE),
                Some(json!({"spec": {"replicas": 5}}))
            ),
        ]
    );
    let stored: Deployment = h.server.get("shop", "web").unwrap();
    assert_eq!(stored.spec.unwrap().replicas, Some(5));
    assert_eq!(stored.metadata.generation, Some(2));
    assert_eq!(
        out,
        json!({"cluster": "default", "kind": "deployment", "namespace": "shop", "name": "web", "from": 3, "to": 5,
               "changed": true, "clamped": false, "dry_run": false})
    );
}

#[tokio::test]
async fn scale_by_is_relative_clamped_and_guarded_by_the_resource_version_read() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    let rv = h
        .server
        .get::<Deployment>("shop", "web")
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let out = h
        .run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "by": "+4", "max": 6}),
        )
        .await
        .unwrap();

    assert_eq!(
        (out["from"].clone(), out["to"].clone(), out["clamped"].clone()),
        (json!(3), json!(6), json!(true))
    );
    let writes = h.server.writes();
    assert_eq!(
        writes[0].body,
        Some(json!({"spec": {"replicas": 6}, "metadata": {"resourceVersion": rv}}))
    );
    assert_eq!(h.server.get::<Deployment>("shop", "web").unwrap().spec.unwrap().replicas, Some(6));

    let down = h
        .run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "by": -10, "min": 2}),
        )
        .await
        .unwrap();
    assert_eq!((down["from"].clone(), down["to"].clone()), (json!(6), json!(2)));
}

#[tokio::test]
async fn scale_to_the_current_count_sends_no_patch() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    let out = h
        .run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "replicas": 3}),
        )
        .await
        .unwrap();
    assert_eq!(out["changed"], json!(false));
    assert_eq!(h.server.writes(), []);
}

#[tokio::test]
async fn scale_takes_statefulsets_and_replicasets() {
    let h = Harness::new().await;
    h.server.insert(workload::<StatefulSet>("db"));
    h.server.insert(workload::<ReplicaSet>("web-abc"));
    h.run(
        "kubernetes.scale",
        json!({"kind": "statefulset", "namespace": "shop", "name": "db", "replicas": 3}),
    )
    .await
    .unwrap();
    h.run(
        "kubernetes.scale",
        json!({"kind": "replicaset", "namespace": "shop", "name": "web-abc", "by": 1}),
    )
    .await
    .unwrap();
    let paths: Vec<String> = h.server.writes().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/apis/apps/v1/namespaces/shop/statefulsets/db/scale",
            "/apis/apps/v1/namespaces/shop/replicasets/web-abc/scale"
        ]
    );
    assert_eq!(h.server.get::<StatefulSet>("shop", "db").unwrap().spec.unwrap().replicas, Some(3));
    assert_eq!(
        h.server.get::<ReplicaSet>("shop", "web-abc").unwrap().spec.unwrap().replicas,
        Some(3)
    );
    let daemonset = h
        .run(
            "kubernetes.scale",
            json!({"kind": "daemonset", "namespace": "shop", "name": "x", "replicas": 1}),
        )
        .await;
    assert!(matches!(daemonset, Err(ActionError::Input { .. })), "{daemonset:?}");
}

#[tokio::test]
async fn scale_dry_run_is_sent_with_dry_run_all_and_changes_nothing() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    let before: Deployment = h.server.get("shop", "web").unwrap();
    let out = h
        .dry_run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "replicas": 5}),
        )
        .await
        .unwrap();
    let writes = h.server.writes();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].query.get("dryRun").map(String::as_str), Some("All"));
    assert_eq!(h.server.get::<Deployment>("shop", "web").unwrap(), before);
    assert_eq!((out["to"].clone(), out["dry_run"].clone()), (json!(5), json!(true)));
}

#[tokio::test]
async fn scale_not_found_and_conflict_read_clearly() {
    let h = Harness::new().await;
    let err = failed(
        h.run(
            "kubernetes.scale",
            json!({"kind": "statefulset", "namespace": "shop", "name": "db", "replicas": 1}),
        )
        .await,
    );
    assert_eq!(err, "statefulset shop/db not found");

    h.server.insert(deployment("web", 3));
    h.server.inject_conflict_once();
    let err = failed(
        h.run(
            "kubernetes.scale",
            json!({"kind": "deployment", "namespace": "shop", "name": "web", "by": 1}),
        )
        .await,
    );
    assert!(err.starts_with("conflict: deployment shop/web: "), "{err}");
    assert_eq!(h.server.get::<Deployment>("shop", "web").unwrap().spec.unwrap().replicas, Some(3));
}

#[tokio::test]
async fn scale_refuses_inconsistent_bounds_before_any_request() {
    let h = Harness::new().await;
    for with in [
        json!({"kind": "deployment", "namespace": "shop", "name": "web", "replicas": 2, "by": 1}),
        json!({"kind": "deployment", "namespace": "shop", "name": "web"}),
        json!({"kind": "deployment", "namespace": "shop", "name": "web", "replicas": -1}),
        json!({"kind": "deployment", "namespace": "shop", "name": "web", "by": 1, "min": 5, "max": 2}),
    ] {
        let result = h.run("kubernetes.scale", with.clone()).await;
        assert!(matches!(result, Err(ActionError::Input { .. })), "{with}: {result:?}");
    }
    assert_eq!(h.server.requests(), []);
}

// ---------------------------------------------------------------------------
// kubernetes.delete_pods

fn three_pods(h: &Harness) {
    h.server.insert(ready_pod("web-old", "2024-01-01T00:00:00Z"));
    h.server.insert(pod(PodSpec {
        name: "web-crashing",
        ready: false,
        restarts: 7,
        created: "2024-01-03T00:00:00Z",
    }));
    h.server.insert(ready_pod("web-new", "2024-01-04T00:00:00Z"));
    let mut other: Pod = ready_pod("api-1", "2024-01-01T00:00:00Z");
    other.metadata.labels = Some(BTreeMap::from([("app".to_string(), "api".to_string())]));
    h.server.insert(other);
}

fn uid(h: &Harness, name: &str) -> String {
    h.server.get::<Pod>("shop", name).unwrap().metadata.uid.unwrap()
}

fn terminating(h: &Harness, name: &str) -> bool {
    h.server.get::<Pod>("shop", name).unwrap().metadata.deletion_timestamp.is_some()
}

#[tokio::test]
async fn delete_pods_evicts_the_least_healthy_pod_through_the_eviction_api() {
    let h = Harness::new().await;
    three_pods(&h);

    let out = h
        .run("kubernetes.delete_pods", json!({"namespace": "shop", "selector": "app=web"}))
        .await
        .unwrap();

    assert_eq!(
        h.server.requests(),
        [
            request("GET", "/api/v1/namespaces/shop/pods", &[("labelSelector", "app=web")], None, None),
            request(
                "POST",
                "/api/v1/namespaces/shop/pods/web-crashing/eviction",
                &[],
                Some("application/json"),
                Some(json!({
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": {"name": "web-crashing", "namespace": "shop"},
                    "deleteOptions": {"preconditions": {"uid": uid(&h, "web-crashing")}},
                })),
            ),
        ]
    );
    assert!(terminating(&h, "web-crashing"));
    assert!(!terminating(&h, "web-old") && !terminating(&h, "web-new") && !terminating(&h, "api-1"));
    assert_eq!(
        out,
        json!({"cluster": "default", "namespace": "shop", "selector": "app=web", "mode": "evict", "matched": 3, "dry_run": false,
               "pods": [{"name": "web-crashing", "ready": false, "restarts": 7, "result": "evicted"}]})
    );

    // Run again: the evicted pod is terminating, so the next in line goes.
    let again = h
        .run(
            "kubernetes.delete_pods",
            json!({"namespace": "shop", "selector": "app=web", "max": "1"}),
        )
        .await
        .unwrap();
    assert_eq!(again["pods"][0]["name"], json!("web-old"));
}

#[tokio::test]
async fn delete_pods_takes_at_most_max_in_health_order() {
    let h = Harness::new().await;
    three_pods(&h);
    let out = h
        .run(
            "kubernetes.delete_pods",
            json!({"namespace": "shop", "selector": "app=web,pod-template-hash=abc", "max": 2}),
        )
        .await
        .unwrap();
    let names: Vec<&str> = out["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-crashing", "web-old"]);
    assert_eq!(h.server.writes().len(), 2);
    assert!(!terminating(&h, "web-new"));
}

#[tokio::test]
async fn delete_pods_mode_delete_deletes_with_a_uid_precondition() {
    let h = Harness::new().await;
    three_pods(&h);
    let out = h
        .run(
            "kubernetes.delete_pods",
            json!({"namespace": "shop", "selector": "app=web", "mode": "delete"}),
        )
        .await
        .unwrap();
    assert_eq!(
        h.server.writes(),
        [request(
            "DELETE",
            "/api/v1/namespaces/shop/pods/web-crashing",
            &[],
            Some("application/json"),
            Some(json!({"preconditions": {"uid": uid(&h, "web-crashing")}})),
        )]
    );
    assert!(terminating(&h, "web-crashing"));
    assert_eq!(out["pods"][0]["result"], json!("deleted"));
}

#[tokio::test]
async fn delete_pods_dry_run_is_sent_with_dry_run_all_and_changes_nothing() {
    let h = Harness::new().await;
    three_pods(&h);
    let evict = h
        .dry_run(
            "kubernetes.delete_pods",
            json!({"namespace": "shop", "selector": "app=web", "max": 3}),
        )
        .await
        .unwrap();
    let delete = h
        .dry_run(
            "kubernetes.delete_pods",
            json!({"namespace": "shop", "selector": "app=web", "mode": "delete"}),
        )
        .await
        .unwrap();

    let writes = h.server.writes();
    assert_eq!(writes.len(), 4);
    assert!(
        writes[..3].iter().all(|w| w.query.get("dryRun").map(String::as_str) == Some("All")),
        "{writes:#?}"
    );
    assert_eq!(writes[3].body.as_ref().unwrap()["dryRun"], json!(["All"]));
    assert!(writes.iter().all(Recorded::dry_run));
    for name in ["web-old", "web-crashing", "web-new"] {
        assert!(!terminating(&h, name), "{name}");
    }
    assert_eq!(evict["dry_run"], json!(true));
    assert_eq!(evict["pods"].as_array().unwrap().len(), 3);
    assert_eq!(delete["pods"][0]["result"], json!("deleted"));
}

#[tokio::test]
async fn eviction_refused_by_a_budget_fails_at_once_and_is_sent_once() {
    let h = Harness::new().await;
    three_pods(&h);
    h.server.pdb_blocks("shop", "app=web");

    let started = std::time::Instant::now();
    let err = failed(
        h.run("kubernetes.delete_pods", json!({"namespace": "shop", "selector": "app=web"}))
            .await,
    );

    assert!(
        err.starts_with(
            "eviction of pod web-crashing refused by a PodDisruptionBudget: Cannot evict pod as it would violate the pod's disruption budget."
        ),
        "{err}"
    );
    assert!(err.contains("The disruption budget test-pdb needs 3 healthy pods"), "{err}");
    let evictions: Vec<Recorded> = h.server.writes();
    assert_eq!(evictions.len(), 1, "no retry: {evictions:#?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "no backoff");
    assert!(!terminating(&h, "web-crashing"));
}

#[tokio::test]
async fn eviction_refused_after_some_pods_says_which_were_evicted() {
    let h = Harness::new().await;
    three_pods(&h);
    h.server.pdb_blocks("shop", "app=web,pod-template-hash=abc,!stateful");
    let mut unblocked = pod(PodSpec {
        name: "web-unready",
        ready: false,
        restarts: 9,
        created: "2024-01-02T00:00:00Z",
    });
    unblocked.metadata.labels = Some(BTreeMap::from([
        ("app".to_string(), "web".to_string()),
        ("stateful".to_string(), "yes".to_string()),
    ]));
    h.server.insert(unblocked);
    let err = failed(
        h.run(
            "kubernetes.delete_pods",
            json!({"namespace": "shop", "selector": "app=web", "max": 2}),
        )
        .await,
    );
    assert!(err.contains("eviction of pod web-crashing refused"), "{err}");
    assert!(err.ends_with("(already acted on: web-unready)"), "{err}");
    assert!(terminating(&h, "web-unready"));
}

#[tokio::test]
async fn delete_pods_refuses_an_empty_selector_without_a_request() {
    let h = Harness::new().await;
    three_pods(&h);
    for selector in ["", "   "] {
        let result = h
            .run("kubernetes.delete_pods", json!({"namespace": "shop", "selector": selector}))
            .await;
        assert!(
            matches!(&result, Err(ActionError::Refused(m)) if m.contains("empty selector")),
            "{result:?}"
        );
    }
    let max_zero = h
        .run(
            "kubernetes.delete_pods",
            json!({"namespace": "shop", "selector": "app=web", "max": 0}),
        )
        .await;
    assert!(matches!(max_zero, Err(ActionError::Input { .. })), "{max_zero:?}");
    assert_eq!(h.server.requests(), []);
}

#[tokio::test]
async fn delete_pods_with_nothing_to_act_on_fails_clearly() {
    let h = Harness::new().await;
    three_pods(&h);
    let err = failed(
        h.run("kubernetes.delete_pods", json!({"namespace": "shop", "selector": "app=checkout"}))
            .await,
    );
    assert_eq!(err, "no pods in shop match app=checkout");
    assert_eq!(h.server.writes(), []);
}

#[tokio::test]
async fn delete_pods_conflict_reads_clearly() {
    let h = Harness::new().await;
    three_pods(&h);
    h.server.inject_conflict_once();
    let err = failed(
        h.run("kubernetes.delete_pods", json!({"namespace": "shop", "selector": "app=web"}))
            .await,
    );
    assert!(err.starts_with("conflict: pod shop/web-crashing: "), "{err}");
    assert!(!terminating(&h, "web-crashing"));
}

// ---------------------------------------------------------------------------
// kubernetes.logs

#[tokio::test]
async fn logs_by_selector_saves_each_pod_log_as_an_artifact() {
    let h = Harness::new().await;
    three_pods(&h);
    h.server.set_log("shop", "web-old", "one\ntwo\nthree\n");
    h.server.set_log("shop", "web-crashing", "panic: boom\n");

    let out = h
        .run("kubernetes.logs", json!({"namespace": "shop", "selector": "app=web", "tail": "2"}))
        .await
        .unwrap();

    let requests = h.server.requests();
    assert_eq!(
        requests[0],
        request("GET", "/api/v1/namespaces/shop/pods", &[("labelSelector", "app=web")], None, None)
    );
    let limit = (1024 * 1024 + 1).to_string();
    assert_eq!(
        requests[1],
        request(
            "GET",
            "/api/v1/namespaces/shop/pods/web-crashing/log",
            &[("limitBytes", &limit), ("tailLines", "2")],
            None,
            None
        )
    );
    assert_eq!(requests.len(), 4);
    assert_eq!(
        std::fs::read_to_string(h.artifacts().join("step-web-old.log")).unwrap(),
        "two\nthree\n"
    );
    assert_eq!(
        std::fs::read_to_string(h.artifacts().join("step-web-crashing.log")).unwrap(),
        "panic: boom\n"
    );
    assert_eq!(
        out,
        json!({"cluster": "default", "namespace": "shop", "pods": 3, "logs": [
            {"pod": "web-crashing", "file": "step-web-crashing.log", "bytes": 12, "truncated": false},
            {"pod": "web-new", "file": "step-web-new.log", "bytes": 0, "truncated": false},
            {"pod": "web-old", "file": "step-web-old.log", "bytes": 10, "truncated": false},
        ]})
    );
}

#[tokio::test]
async fn logs_are_saved_with_secrets_redacted() {
    let mut h = Harness::new().await;
    h.deps.redactor = pitcrew::redact::Redactor::new(["db-pass-0123456"]);
    three_pods(&h);
    h.server.set_log("shop", "web-old", "connecting with db-pass-0123456\n");
    h.run("kubernetes.logs", json!({"namespace": "shop", "pod": "web-old"}))
        .await
        .unwrap();
    let saved = std::fs::read_to_string(h.artifacts().join("step-web-old.log")).unwrap();
    assert_eq!(saved, "connecting with [REDACTED]\n");
}

#[tokio::test]
async fn logs_read_at_most_max_pods_and_say_how_many_were_left() {
    let h = Harness::new().await;
    three_pods(&h);
    let out = h
        .run(
            "kubernetes.logs",
            json!({"namespace": "shop", "selector": "app=web", "max_pods": 2}),
        )
        .await
        .unwrap();
    let requests = h.server.requests();
    let logs: Vec<&str> = requests
        .iter()
        .filter(|r| r.path.ends_with("/log"))
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(
        logs,
        [
            "/api/v1/namespaces/shop/pods/web-crashing/log",
            "/api/v1/namespaces/shop/pods/web-new/log"
        ]
    );
    assert_eq!((out["pods"].clone(), out["skipped"].clone()), (json!(3), json!(1)));
    let err = h
        .run(
            "kubernetes.logs",
            json!({"namespace": "shop", "selector": "app=web", "max_pods": 0}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_pods"), "{err}");
}

#[tokio::test]
async fn logs_of_one_pod_pass_container_and_since() {
    let h = Harness::new().await;
    h.server.insert(ready_pod("web-1", "2024-01-01T00:00:00Z"));
    h.server.set_log("shop", "web-1", "hello\n");
    let out = h
        .run(
            "kubernetes.logs",
            json!({"namespace": "shop", "pod": "web-1", "container": "app", "since": "10m"}),
        )
        .await
        .unwrap();
    let limit = (1024 * 1024 + 1).to_string();
    assert_eq!(
        h.server.requests(),
        [
            get("/api/v1/namespaces/shop/pods/web-1"),
            request(
                "GET",
                "/api/v1/namespaces/shop/pods/web-1/log",
                &[("container", "app"), ("limitBytes", &limit), ("sinceSeconds", "600")],
                None,
                None
            ),
        ]
    );
    assert_eq!(out["logs"][0]["container"], json!("app"));
    assert_eq!(out["logs"][0]["bytes"], json!(6));
}

#[tokio::test]
async fn logs_of_a_multi_container_pod_are_saved_per_container() {
    let h = Harness::new().await;
    let mut p = ready_pod("web-1", "2024-01-01T00:00:00Z");
    p.spec = Some(serde_json::from_value(json!({"containers": [{"name": "app", "image": "a"}, {"name": "proxy", "image": "b"}]})).unwrap());
    h.server.insert(p);
    h.server.set_container_log("shop", "web-1", "app", "app says hi\n");
    h.server.set_container_log("shop", "web-1", "proxy", "proxy says hi\n");
    let out = h
        .run("kubernetes.logs", json!({"namespace": "shop", "pod": "web-1"}))
        .await
        .unwrap();
    let files: Vec<&str> = out["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["step-web-1-app.log", "step-web-1-proxy.log"]);
    assert_eq!(
        std::fs::read_to_string(h.artifacts().join("step-web-1-proxy.log")).unwrap(),
        "proxy says hi\n"
    );
}

#[tokio::test]
async fn logs_are_capped_at_one_mebibyte_per_pod() {
    let h = Harness::new().await;
    h.server.insert(ready_pod("web-1", "2024-01-01T00:00:00Z"));
    let line = "x".repeat(1023) + "\n";
    h.server.set_log("shop", "web-1", &line.repeat(1100));
    let out = h
        .run("kubernetes.logs", json!({"namespace": "shop", "pod": "web-1"}))
        .await
        .unwrap();
    assert_eq!(out["logs"][0]["truncated"], json!(true));
    assert_eq!(out["logs"][0]["bytes"], json!(1024 * 1024));
    assert_eq!(std::fs::metadata(h.artifacts().join("step-web-1.log")).unwrap().len(), 1024 * 1024);
}

#[tokio::test]
async fn logs_are_read_in_dry_runs_too() {
    let h = Harness::new().await;
    h.server.insert(ready_pod("web-1", "2024-01-01T00:00:00Z"));
    h.server.set_log("shop", "web-1", "hello\n");
    let out = h
        .dry_run("kubernetes.logs", json!({"namespace": "shop", "selector": "app=web"}))
        .await
        .unwrap();
    assert_eq!(out["logs"][0]["bytes"], json!(6));
    assert!(h.artifacts().join("step-web-1.log").exists());
    assert!(h.server.requests().iter().all(|r| !r.dry_run() && r.method == "GET"));
}

#[tokio::test]
async fn logs_of_a_missing_pod_say_not_found() {
    let h = Harness::new().await;
    let err = failed(h.run("kubernetes.logs", json!({"namespace": "shop", "pod": "web-1"})).await);
    assert_eq!(err, "pod shop/web-1 not found");
    let both = h
        .run(
            "kubernetes.logs",
            json!({"namespace": "shop", "pod": "web-1", "selector": "app=web"}),
        )
        .await;
    assert!(matches!(both, Err(ActionError::Input { .. })), "{both:?}");
    let empty = h.run("kubernetes.logs", json!({"namespace": "shop", "selector": " "})).await;
    assert!(matches!(empty, Err(ActionError::Input { .. })), "{empty:?}");
    assert_eq!(h.server.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// kubernetes.patch

fn config_map() -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": "pgbouncer", "namespace": "shop"},
        "data": {"max_client_conn": "200", "pool_mode": "transaction"},
    }))
    .unwrap()
}

fn data(h: &Harness) -> BTreeMap<String, String> {
    h.server.get::<ConfigMap>("shop", "pgbouncer").unwrap().data.unwrap()
}

#[tokio::test]
async fn patch_merges_a_config_map() {
    let h = Harness::new().await;
    h.server.insert(config_map());
    let out = h
        .run(
            "kubernetes.patch",
            json!({"api_version": "v1", "kind": "ConfigMap", "namespace": "shop", "name": "pgbouncer",
                   "patch": {"data": {"max_client_conn": "400"}}}),
        )
        .await
        .unwrap();
    assert_eq!(
        h.server.requests(),
        [request(
            "PATCH",
            "/api/v1/namespaces/shop/configmaps/pgbouncer",
            &[("fieldManager", "pitcrew")],
            Some(MERGE),
            Some(json!({"data": {"max_client_conn": "400"}})),
        )]
    );
    assert_eq!(data(&h).get("max_client_conn").map(String::as_str), Some("400"));
    assert_eq!(data(&h).get("pool_mode").map(String::as_str), Some("transaction"));
    let stored = h.server.get::<ConfigMap>("shop", "pgbouncer").unwrap();
    assert_eq!(out["resourceVersion"], json!(stored.metadata.resource_version));
    assert_eq!(out["dry_run"], json!(false));
}

#[tokio::test]
async fn patch_strategic_and_json_patches_use_their_media_types() {
    let h = Harness::new().await;
    h.server.insert(deployment("web", 3));
    h.server.insert(config_map());
    h.run(
        "kubernetes.patch",
        json!({"api_version": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "web", "patch_type": "strategic",
               "patch": {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "shop/web:1.2.4"}]}}}}}),
    )
    .await
    .unwrap();
    let ops = json!([{"op": "test", "path": "/data/pool_mode", "value": "transaction"},
                     {"op": "replace", "path": "/data/pool_mode", "value": "session"}]);
    h.run(
        "kubernetes.patch",
        json!({"api_version": "v1", "kind": "ConfigMap", "namespace": "shop", "name": "pgbouncer", "patch_type": "json", "patch": ops}),
    )
    .await
    .unwrap();

    let writes = h.server.writes();
    assert_eq!((writes[0].path.as_str(), writes[0].content_type.as_deref()), (WEB, Some(STRATEGIC)));
    assert_eq!(
        (writes[1].path.as_str(), writes[1].content_type.as_deref(), writes[1].body.as_ref()),
        (
            "/api/v1/namespaces/shop/configmaps/pgbouncer",
            Some("application/json-patch+json"),
            Some(&ops)
        )
    );
    assert_eq!(writes[1].query.get("fieldManager").map(String::as_str), Some("pitcrew"));
    let web: Deployment = h.server.get("shop", "web").unwrap();
    let containers = web.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].image.as_deref(), Some("shop/web:1.2.4"));
    assert_eq!(data(&h).get("pool_mode").map(String::as_str), Some("session"));
}

#[tokio::test]
async fn patch_dry_run_is_sent_with_dry_run_all_and_changes_nothing() {
    let h = Harness::new().await;
    h.server.insert(config_map());
    let out = h
        .dry_run(
            "kubernetes.patch",
            json!({"api_version": "v1", "kind": "ConfigMap", "namespace": "shop", "name": "pgbouncer",
                   "patch": {"data": {"max_client_conn": "400"}}}),
        )
        .await
        .unwrap();
    assert_eq!(h.server.writes()[0].query.get("dryRun").map(String::as_str), Some("All"));
    assert_eq!(data(&h).get("max_client_conn").map(String::as_str), Some("200"));
    assert_eq!(out["dry_run"], json!(true));
}

#[tokio::test]
async fn patch_not_found_conflict_and_unknown_resources_read_clearly() {
    let h = Harness::new().await;
    let with = json!({"api_version": "v1", "kind": "ConfigMap", "namespace": "shop", "name": "pgbouncer", "patch": {"data": {}}});
    assert_eq!(
        failed(h.run("kubernetes.patch", with.clone()).await),
        "ConfigMap shop/pgbouncer not found"
    );

    h.server.insert(config_map());
    h.server.inject_conflict_once();
    let err = failed(h.run("kubernetes.patch", with).await);
    assert!(err.starts_with("conflict: ConfigMap shop/pgbouncer: "), "{err}");

    let err = failed(
        h.run(
            "kubernetes.patch",
            json!({"api_version": "networking.k8s.io/v1", "kind": "Ingress", "namespace": "shop", "name": "web",
                   "patch": {"metadata": {"annotations": {"a": "b"}}}}),
        )
        .await,
    );
    assert_eq!(err, "Ingress shop/web not found: the server could not find the requested resource");
    assert_eq!(
        h.server.requests().last().unwrap().path,
        "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/web"
    );

    let invalid = failed(
        h.run(
            "kubernetes.patch",
            json!({"api_version": "v1", "kind": "ConfigMap", "namespace": "shop", "name": "pgbouncer",
                   "patch": {"data": {"max_client_conn": {"nested": true}}}}),
        )
        .await,
    );
    assert!(invalid.starts_with("ConfigMap shop/pgbouncer: "), "{invalid}");
    assert!(invalid.ends_with("(BadRequest, 400)"), "{invalid}");
}
