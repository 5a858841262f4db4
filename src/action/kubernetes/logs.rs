//! `kubernetes.logs`: save pod logs as artifacts of the execution. Reads
//! only, so it runs in dry runs too; each log is capped so that a chatty pod
//! cannot fill the disk.

use std::collections::BTreeMap;

use futures::AsyncReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CLUSTER_DOC, api_error, check_name, check_namespace};
use crate::action::{Action, ActionContext, ActionError, ParamType, Spec, input, lenient};
use crate::runbook::Risk;
use crate::units::Duration;

/// Bytes kept per log; the rest is dropped and the entry says `truncated`.
pub const LOG_CAP: usize = 1024 * 1024;

pub struct Logs {
    spec: Spec,
}

impl Logs {
    pub fn new() -> Self {
        let spec = Spec::new(
            "kubernetes.logs",
            "Save logs of pods (by selector or name) as artifacts of the execution",
            Risk::Low,
            true,
        )
        .required("namespace", ParamType::String, "namespace of the pods")
        .param("cluster", ParamType::String, CLUSTER_DOC)
        .param("selector", ParamType::String, "label selector, e.g. app=checkout")
        .param("pod", ParamType::String, "one pod by name")
        .param("container", ParamType::String, "container name (default: all)")
        .param("tail", ParamType::Integer, "lines from the end of each log")
        .param("since", ParamType::Duration, "only logs newer than this, e.g. 10m")
        .param(
            "max_pods",
            ParamType::Integer,
            "read at most this many pods' logs, by name (default 20, at most 200)",
        )
        .rbac("", &["pods"], &["list", "get"])
        .rbac("", &["pods/log"], &["get"])
        .example("namespace: shop\nselector: app=checkout\ntail: 200\n");
        Logs { spec }
    }
}

impl Default for Logs {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Action for Logs {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn check(&self, literal: &BTreeMap<String, Value>, templated: &[&str]) -> Vec<String> {
        let has = |k: &str| literal.contains_key(k) || templated.contains(&k);
        match (has("selector"), has("pod")) {
            (false, false) => vec!["kubernetes.logs needs `selector` or `pod`".into()],
            (true, true) => vec!["kubernetes.logs takes `selector` or `pod`, not both".into()],
            _ => Vec::new(),
        }
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input {
            namespace,
            selector,
            pod,
            container,
            tail,
            since,
            max_pods,
            cluster,
        } = input(input_value)?;
        // A selector matching a whole fleet must not read every log into
        // the artifacts in one step.
        let max_pods = match max_pods {
            None => DEFAULT_MAX_PODS,
            Some(n @ 1..=MAX_PODS) => n as usize,
            Some(n) => return Err(ActionError::input("max_pods", format!("must be 1 to {MAX_PODS}, got {n}"))),
        };
        check_namespace("namespace", &namespace)?;
        if let Some(c) = &container {
            check_namespace("container", c)?;
        }
        if let Some(tail) = tail
            && tail < 0
        {
            return Err(ActionError::input("tail", format!("must be at least 0, got {tail}")));
        }
        let since_seconds = match since {
            Some(d) if d.as_millis() < 1000 => return Err(ActionError::input("since", "must be at least 1s")),
            Some(d) => Some(i64::try_from(d.as_millis() / 1000).unwrap_or(i64::MAX)),
            None => None,
        };
        let source = match (selector, pod) {
            (Some(_), Some(_)) => return Err(ActionError::input("pod", "takes `selector` or `pod`, not both")),
            (None, None) => return Err(ActionError::input("selector", "needs `selector` or `pod`")),
            (None, Some(pod)) => {
                check_name("pod", &pod)?;
                Source::Pod(pod)
            }
            (Some(selector), None) if selector.trim().is_empty() => {
                return Err(ActionError::input(
                    "selector",
                    "is empty; it would match every pod in the namespace",
                ));
            }
            (Some(selector), None) => Source::Selector(selector.trim().to_string()),
        };
        let cluster = cx.deps.kube.resolve(cluster.as_deref())?;
        let api: Api<Pod> = Api::namespaced(super::client(cx, Some(cluster)).await?, &namespace);

        let pods = match &source {
            Source::Pod(name) => vec![api.get(name).await.map_err(|e| {
                api_error(
                    &e,
                    &format!("pod {namespace}/{name}"),
                    &format!("get on pods in namespace {namespace}"),
                )
            })?],
            Source::Selector(selector) => {
                api.list(&ListParams::default().labels(selector))
                    .await
                    .map_err(|e| {
                        api_error(
                            &e,
                            &format!("pods in {namespace} matching {selector}"),
                            &format!("list on pods in namespace {namespace}"),
                        )
                    })?
                    .items
            }
        };

        let mut pods = pods;
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let matched = pods.len();
        pods.truncate(max_pods);
        let mut saved = Vec::new();
        for pod in &pods {
            let Some(pod_name) = pod.metadata.name.as_deref() else { continue };
            for (container, file_name) in files(cx.step, pod_name, pod, container.as_deref()) {
                let params = LogParams {
                    container: container.clone(),
                    tail_lines: tail,
                    since_seconds,
                    // One byte over the cap tells us whether there was more.
                    limit_bytes: Some(LOG_CAP as i64 + 1),
                    ..LogParams::default()
                };
                let what = format!("log of pod {namespace}/{pod_name}");
                let needs = format!("get on pods/log in namespace {namespace}");
                let mut entry = json!({"pod": pod_name});
                if let Some(c) = &container {
                    entry["container"] = json!(c);
                }
                match read_log(&api, pod_name, &params).await {
                    Ok((text, truncated)) => {
                        // Artifacts are served and read like the audit: no secrets.
                        let text = cx.deps.redactor.bytes(&text);
                        let path = cx.artifact_path(&file_name)?;
                        tokio::fs::write(&path, &text)
                            .await
                            .map_err(|e| ActionError::Failed(format!("cannot save {}: {e}", path.display())))?;
                        entry["file"] = json!(path.file_name().map(|f| f.to_string_lossy().into_owned()));
                        entry["bytes"] = json!(text.len());
                        entry["truncated"] = json!(truncated);
                    }
                    // A pod still starting, or a container that never ran,
                    // has no log yet; the other pods' logs are still worth having.
                    Err(e) if matches!(&e, kube::Error::Api(status) if matches!(status.code, 400 | 404)) => {
                        entry["error"] = json!(api_error(&e, &what, &needs).to_string());
                    }
                    Err(e) => return Err(api_error(&e, &what, &needs)),
                }
                saved.push(entry);
            }
        }
        if !saved.is_empty() && saved.iter().all(|e| e.get("error").is_some()) {
            let first = saved[0]["error"].as_str().unwrap_or_default().to_string();
            return Err(ActionError::Failed(format!("no log could be read: {first}")));
        }
        let mut out = json!({
            "cluster": cluster,
            "namespace": namespace,
            "pods": matched,
            "logs": saved,
        });
        if matched > pods.len() {
            out["skipped"] = json!(matched - pods.len());
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(deserialize_with = "lenient::string")]
    namespace: String,
    #[serde(default, deserialize_with = "opt_string")]
    selector: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pod: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    container: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    tail: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    since: Option<Duration>,
    #[serde(default, deserialize_with = "lenient::opt_int")]
    max_pods: Option<i64>,
    #[serde(default, deserialize_with = "super::opt_cluster")]
    cluster: Option<String>,
}

const DEFAULT_MAX_PODS: usize = 20;
const MAX_PODS: i64 = 200;

fn opt_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient::string(d).map(Some)
}

enum Source {
    Pod(String),
    Selector(String),
}

/// Which logs to read from a pod and where each goes: the named container,
/// else every container of a multi-container pod (the API server refuses to
/// guess which one), else the pod's only container.
fn files(step: &str, pod_name: &str, pod: &Pod, container: Option<&str>) -> Vec<(Option<String>, String)> {
    if let Some(c) = container {
        return vec![(Some(c.to_string()), format!("{step}-{pod_name}.log"))];
    }
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    if names.len() > 1 {
        names
            .into_iter()
            .map(|c| {
                let file = format!("{step}-{pod_name}-{c}.log");
                (Some(c), file)
            })
            .collect()
    } else {
        vec![(None, format!("{step}-{pod_name}.log"))]
    }
}

/// Reads at most `LOG_CAP` bytes of one log, and whether there was more.
async fn read_log(api: &Api<Pod>, pod: &str, params: &LogParams) -> Result<(Vec<u8>, bool), kube::Error> {
    let stream = api.log_stream(pod, params).await?;
    let mut text = Vec::new();
    stream
        .take(LOG_CAP as u64 + 1)
        .read_to_end(&mut text)
        .await
        .map_err(kube::Error::ReadEvents)?;
    let truncated = text.len() > LOG_CAP;
    text.truncate(LOG_CAP);
    Ok((text, truncated))
}
