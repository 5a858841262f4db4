//! A test Kubernetes API server: the real REST paths, verbs, media types and
//! `Status` answers for what pitcrew's Kubernetes actions use, with objects
//! kept in memory and every request recorded, so tests assert exactly what
//! was sent and what the cluster would look like afterwards.
//!
//! It behaves like the API server where the actions can tell: objects are
//! stored and listed without `apiVersion`/`kind` on list items, every write
//! bumps `metadata.resourceVersion`, spec changes bump `metadata.generation`,
//! `dryRun=All` validates and answers without persisting, a `resourceVersion`
//! or uid precondition that does not hold is a 409, pods are deleted
//! gracefully (they stay, with `deletionTimestamp`), and a PodDisruptionBudget
//! that allows no disruption answers an eviction with 429.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::policy::v1::Eviction;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// One request as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    /// Without parameters (`; charset=utf-8`).
    pub content_type: Option<String>,
    /// The body as JSON; a body that is not JSON is kept as a JSON string.
    pub body: Option<Value>,
}

impl Recorded {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// Whether the request asked for `dryRun=All`, in the query or (DELETE,
    /// eviction) in its DeleteOptions.
    pub fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All") || body_dry_run(self.body.as_ref())
    }
}

/// A served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    /// Has `spec.replicas` and the scale subresource.
    scalable: bool,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, as the API server names resources in messages.
    fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn has_generation(&self) -> bool {
        self.group == "apps"
    }

    /// What decoding into the typed object checks (field types, unknown
    /// `kind`), as the API server's decoder does.
    fn decode(&self, v: &Value) -> Result<(), String> {
        fn check<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
            serde_json::from_value::<T>(v.clone()).map(drop).map_err(|e| e.to_string())
        }
        match self.plural {
            "pods" => check::<Pod>(v),
            "configmaps" => check::<ConfigMap>(v),
            "deployments" => check::<Deployment>(v),
            "statefulsets" => check::<StatefulSet>(v),
            "daemonsets" => check::<DaemonSet>(v),
            "replicasets" => check::<ReplicaSet>(v),
            _ => Ok(()),
        }
    }
}

const KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        scalable: false,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        scalable: false,
    },
    Kind {
        group: "apps",
        version: "v1",
        plural: "deployments",
        kind: "Deployment",
        scalable: true,
    },
    Kind {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        kind: "StatefulSet",
        scalable: true,
    },
    Kind {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        kind: "DaemonSet",
        scalable: false,
    },
    Kind {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        kind: "ReplicaSet",
        scalable: true,
    },
];

fn kind_of(api_version: &str, kind: &str) -> Option<Kind> {
    KINDS.iter().copied().find(|k| k.api_version() == api_version && k.kind == kind)
}

type Key = (&'static str, String, String);

#[derive(Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    next_uid: u64,
    requests: Vec<Recorded>,
    conflict_once: bool,
    fail_next: Option<(u16, String, String)>,
    /// (namespace, selector): a budget that allows no disruption.
    budgets: Vec<(String, String)>,
    /// (namespace, pod, container or "") → log text.
    logs: HashMap<(String, String, String), String>,
}

impl Inner {
    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }
}

/// The server; dropped with the test's runtime.
pub struct K8sServer {
    url: String,
    state: Arc<Mutex<Inner>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl K8sServer {
    /// Binds 127.0.0.1:0 first, then serves in the background.
    pub async fn start() -> K8sServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        // Each accepted connection is counted: a client built once and
        // reused keeps one connection open across requests.
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        K8sServer {
            url: format!("http://{addr}"),
            state,
            connections,
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client for this server, built the way pitcrew builds its own
    /// (no retries).
    pub fn client(&self) -> kube::Client {
        pitcrew::action::kubernetes::client_for_url(&self.url).expect("client for the test server")
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores an object as if created: uid, resourceVersion,
    /// creationTimestamp, generation and `spec.replicas` defaulted.
    pub fn insert<K: k8s_openapi::Resource + Serialize>(&self, obj: K) {
        let mut v = serde_json::to_value(&obj).expect("objects serialise");
        let kind = kind_of(K::API_VERSION, K::KIND).unwrap_or_else(|| panic!("the test server does not serve {}", K::KIND));
        let mut inner = self.lock();
        let rv = inner.bump();
        inner.next_uid += 1;
        let uid = format!("00000000-0000-0000-0000-{:012}", inner.next_uid);
        let meta = v["metadata"].as_object_mut().expect("objects have metadata");
        meta.entry("namespace").or_insert_with(|| json!("default"));
        meta.entry("uid").or_insert_with(|| json!(uid));
        meta.entry("creationTimestamp").or_insert_with(|| json!("2024-01-01T00:00:00Z"));
        meta.insert("resourceVersion".into(), json!(rv));
        if kind.has_generation() {
            meta.entry("generation").or_insert_with(|| json!(1));
        }
        if kind.scalable && v.pointer("/spec/replicas").is_none() {
            v["spec"]["replicas"] = json!(1);
        }
        let key = (
            kind.plural,
            v["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
            v["metadata"]["name"].as_str().expect("objects have a name").to_string(),
        );
        inner.objects.insert(key, v);
    }

    /// The stored object, if any.
    pub fn get<K: k8s_openapi::Resource + DeserializeOwned>(&self, namespace: &str, name: &str) -> Option<K> {
        let kind = kind_of(K::API_VERSION, K::KIND)?;
        let inner = self.lock();
        let v = inner.objects.get(&(kind.plural, namespace.to_string(), name.to_string()))?;
        Some(serde_json::from_value(v.clone()).expect("stored objects decode"))
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests other than GET.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::is_write).collect()
    }

    /// The next write (PATCH, eviction, DELETE) on an existing object answers
    /// 409, as when someone else changed it first.
    pub fn inject_conflict_once(&self) {
        self.lock().conflict_once = true;
    }

    /// The next request, whatever it is, answers this `Status` (a 403 from
    /// RBAC, a 503 from an overloaded server).
    pub fn fail_next(&self, code: u16, reason: &str, message: &str) {
        self.lock().fail_next = Some((code, reason.to_string(), message.to_string()));
    }

    /// Pods in `namespace` matching `selector` are covered by a budget that
    /// allows no disruption: evicting them answers 429.
    pub fn pdb_blocks(&self, namespace: &str, selector: &str) {
        self.lock().budgets.push((namespace.to_string(), selector.to_string()));
    }

    /// The log of every container of a pod.
    pub fn set_log(&self, namespace: &str, pod: &str, text: &str) {
        self.set_container_log(namespace, pod, "", text);
    }

    pub fn set_container_log(&self, namespace: &str, pod: &str, container: &str, text: &str) {
        self.lock()
            .logs
            .insert((namespace.to_string(), pod.to_string(), container.to_string()), text.to_string());
    }
}

fn body_dry_run(body: Option<&Value>) -> bool {
    let Some(body) = body else { return false };
    let options = body.get("deleteOptions").unwrap_or(body);
    options
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"))
}

// ---------------------------------------------------------------------------
// Answers

fn reply(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A failure `Status`, answered as the API server does.
struct Failure {
    code: u16,
    reason: String,
    message: String,
    details: Value,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        });
        reply(StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body)
    }
}

type Answer = Result<Response, Failure>;

fn failure(code: u16, reason: &str, message: impl Into<String>, details: Value) -> Failure {
    Failure {
        code,
        reason: reason.to_string(),
        message: message.into(),
        details,
    }
}

fn details(kind: &Kind, name: &str) -> Value {
    json!({"name": name, "group": kind.group, "kind": kind.plural})
}

fn not_found(kind: &Kind, name: &str) -> Failure {
    failure(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.resource()),
        details(kind, name),
    )
}

fn no_such_resource() -> Failure {
    failure(404, "NotFound", "the server could not find the requested resource", json!({}))
}

fn conflict(kind: &Kind, name: &str, why: &str) -> Failure {
    failure(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {} \"{name}\": {why}", kind.resource()),
        details(kind, name),
    )
}

fn bad_request(message: impl Into<String>) -> Failure {
    failure(400, "BadRequest", message, json!({}))
}

fn invalid(kind: &Kind, name: &str, message: impl Into<String>) -> Failure {
    failure(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {}", kind.kind, message.into()),
        details(kind, name),
    )
}

const MODIFIED: &str = "the object has been modified; please apply your changes to the latest version and try again";

// ---------------------------------------------------------------------------
// Routing

struct Target {
    kind: Kind,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let ["namespaces", namespace, plural, rest @ ..] = rest else {
        return None;
    };
    let kind = KINDS
        .iter()
        .copied()
        .find(|k| k.api_version() == api_version && k.plural == *plural)?;
    let (name, sub) = match rest {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target {
        kind,
        namespace: namespace.to_string(),
        name,
        sub,
    })
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

async fn handle(State(state): State<Arc<Mutex<Inner>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_string());
    let text = String::from_utf8_lossy(&body).into_owned();
    let parsed_body = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)))
    };
    let request = Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: parse_query(uri.query()),
        content_type,
        body: parsed_body,
    };
    let mut inner = state.lock().unwrap_or_else(|e| e.into_inner());
    inner.requests.push(request.clone());
    serve(&mut inner, &request).unwrap_or_else(IntoResponse::into_response)
}

fn serve(inner: &mut Inner, req: &Recorded) -> Answer {
    if let Some((code, reason, message)) = inner.fail_next.take() {
        return Err(failure(code, &reason, message, json!({})));
    }
    let Some(target) = route(&req.path) else {
        return Err(no_such_resource());
    };
    if let Some(v) = req.query.get("dryRun")
        && v != "All"
    {
        return Err(bad_request(format!(
            "dryRun: Unsupported value: \"{v}\": supported values: \"All\""
        )));
    }
    let kind = target.kind;
    let ns = target.namespace.clone();
    match (req.method.as_str(), target.name.as_deref(), target.sub.as_deref()) {
        ("GET", None, None) => list(inner, &kind, &ns, req),
        ("GET", Some(name), None) => match inner.objects.get(&(kind.plural, ns, name.to_string())) {
            Some(obj) => Ok(reply(StatusCode::OK, obj)),
            None => Err(not_found(&kind, name)),
        },
        ("GET", Some(name), Some("scale")) if kind.scalable => get_scale(inner, &kind, &ns, name),
        ("GET", Some(name), Some("log")) if kind.plural == "pods" => log(inner, &ns, name, req),
        ("PATCH", Some(name), None) => patch(inner, &kind, &ns, name, req),
        ("PATCH", Some(name), Some("scale")) if kind.scalable => patch_scale(inner, &kind, &ns, name, req),
        ("POST", Some(name), Some("eviction")) if kind.plural == "pods" => evict(inner, &ns, name, req),
        ("DELETE", Some(name), None) => delete(inner, &kind, &ns, name, req),
        (_, _, Some(_)) => Err(no_such_resource()),
        _ => Err(failure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            json!({}),
        )),
    }
}

// ---------------------------------------------------------------------------
// Reads

fn list(inner: &Inner, kind: &Kind, ns: &str, req: &Recorded) -> Answer {
    let selector = req
        .query
        .get("labelSelector")
        .map(|s| Selector::parse(s))
        .transpose()
        .map_err(|e| bad_request(format!("unable to parse requirement: {e}")))?;
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((plural, n, _), _)| *plural == kind.plural && n == ns)
        .map(|(_, obj)| obj)
        .filter(|obj| selector.as_ref().is_none_or(|s| s.matches(&labels(obj))))
        .map(|obj| {
            // List items carry no apiVersion/kind on the wire.
            let mut item = obj.clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            item
        })
        .collect();
    Ok(reply(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.kind),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": inner.resource_version.to_string()},
            "items": items,
        }),
    ))
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

fn get_scale(inner: &Inner, kind: &Kind, ns: &str, name: &str) -> Answer {
    match inner.objects.get(&(kind.plural, ns.to_string(), name.to_string())) {
        Some(obj) => Ok(reply(StatusCode::OK, &scale_of(obj))),
        None => Err(not_found(kind, name)),
    }
}

fn log(inner: &Inner, ns: &str, name: &str, req: &Recorded) -> Answer {
    let pods = KINDS[0];
    let Some(pod) = inner.objects.get(&("pods", ns.to_string(), name.to_string())) else {
        return Err(not_found(&pods, name));
    };
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let container = match req.query.get("container") {
        Some(c) if !containers.contains(c) => return Err(bad_request(format!("container {c} is not valid for pod {name}"))),
        Some(c) => c.clone(),
        None if containers.len() > 1 => {
            return Err(bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
        None => containers.first().cloned().unwrap_or_default(),
    };
    for (param, min) in [("tailLines", 0), ("limitBytes", 1), ("sinceSeconds", 1)] {
        if let Some(v) = req.query.get(param)
            && v.parse::<i64>().map_or(true, |n| n < min)
        {
            return Err(failure(
                422,
                "Invalid",
                format!("PodLogOptions \"{name}\" is invalid: {param}: Invalid value: {v}"),
                json!({"name": name, "kind": "PodLogOptions"}),
            ));
        }
    }
    let text = inner
        .logs
        .get(&(ns.to_string(), name.to_string(), container))
        .or_else(|| inner.logs.get(&(ns.to_string(), name.to_string(), String::new())))
        .cloned()
        .unwrap_or_default();
    let mut text = match req.query.get("tailLines").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            lines[lines.len().saturating_sub(n)..].concat()
        }
        None => text,
    };
    if let Some(limit) = req.query.get("limitBytes").and_then(|v| v.parse::<usize>().ok())
        && text.len() > limit
    {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
}

// ---------------------------------------------------------------------------
// Writes

/// The patch media types the API server takes for built-in kinds.
fn apply_patch(content_type: Option<&str>, target: &Value, patch: &Value) -> Result<Value, Failure> {
    match content_type {
        Some("application/merge-patch+json") => Ok(merge_patch(target, patch)),
        Some("application/strategic-merge-patch+json") => Ok(strategic_merge(target, patch)),
        Some("application/json-patch+json") => json_patch(target, patch).map_err(|e| {
            failure(
                422,
                "Invalid",
                format!("the server rejected our request due to an error in our request: {e}"),
                json!({}),
            )
        }),
        other => Err(failure(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json",
                other.unwrap_or("none")
            ),
            json!({}),
        )),
    }
}

fn patch_body(req: &Recorded) -> Result<&Value, Failure> {
    match &req.body {
        Some(Value::String(_)) | None => Err(bad_request("the body of the request could not be decoded as JSON")),
        Some(v) => Ok(v),
    }
}

/// Checks an updated object the way the API server's update path does:
/// preconditions first, then decoding, then validation.
fn admit(kind: &Kind, name: &str, current: &Value, updated: &mut Value) -> Result<(), Failure> {
    let cur_meta = &current["metadata"];
    if updated.pointer("/metadata/name") != Some(&cur_meta["name"]) {
        return Err(bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            updated.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
        )));
    }
    if updated.pointer("/metadata/resourceVersion") != Some(&cur_meta["resourceVersion"]) {
        return Err(conflict(kind, name, MODIFIED));
    }
    if updated.pointer("/metadata/uid") != Some(&cur_meta["uid"]) {
        return Err(conflict(kind, name, "Precondition failed: UID mismatch"));
    }
    kind.decode(updated).map_err(bad_request)?;
    if let Some(replicas) = updated.pointer("/spec/replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        return Err(invalid(
            kind,
            name,
            format!("spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"),
        ));
    }
    if kind.has_generation() && updated.get("spec") != current.get("spec") {
        let generation = cur_meta["generation"].as_i64().unwrap_or(1) + 1;
        updated["metadata"]["generation"] = json!(generation);
    }
    Ok(())
}

/// Stores `updated` unless it is a dry run or nothing changed (the API
/// server does not write, nor bump resourceVersion, for a no-op).
fn commit(inner: &mut Inner, key: Key, current: &Value, mut updated: Value, dry_run: bool) -> Value {
    if dry_run || &updated == current {
        return updated;
    }
    updated["metadata"]["resourceVersion"] = json!(inner.bump());
    inner.objects.insert(key, updated.clone());
    updated
}

fn take_conflict(inner: &mut Inner, kind: &Kind, name: &str) -> Result<(), Failure> {
    if std::mem::take(&mut inner.conflict_once) {
        Err(conflict(kind, name, MODIFIED))
    } else {
        Ok(())
    }
}

fn patch(inner: &mut Inner, kind: &Kind, ns: &str, name: &str, req: &Recorded) -> Answer {
    let key = (kind.plural, ns.to_string(), name.to_string());
    let Some(current) = inner.objects.get(&key).cloned() else {
        return Err(not_found(kind, name));
    };
    let body = patch_body(req)?;
    let mut updated = apply_patch(req.content_type.as_deref(), &current, body)?;
    take_conflict(inner, kind, name)?;
    admit(kind, name, &current, &mut updated)?;
    let stored = commit(inner, key, &current, updated, req.dry_run());
    Ok(reply(StatusCode::OK, &stored))
}

fn patch_scale(inner: &mut Inner, kind: &Kind, ns: &str, name: &str, req: &Recorded) -> Answer {
    let key = (kind.plural, ns.to_string(), name.to_string());
    let Some(current) = inner.objects.get(&key).cloned() else {
        return Err(not_found(kind, name));
    };
    let body = patch_body(req)?;
    let scale = scale_of(&current);
    let patched = apply_patch(req.content_type.as_deref(), &scale, body)?;
    take_conflict(inner, kind, name)?;
    serde_json::from_value::<Scale>(patched.clone()).map_err(|e| bad_request(e.to_string()))?;
    let mut updated = current.clone();
    updated["metadata"]["resourceVersion"] = patched["metadata"]["resourceVersion"].clone();
    updated["spec"]["replicas"] = patched.pointer("/spec/replicas").cloned().unwrap_or(Value::Null);
    admit(kind, name, &current, &mut updated)?;
    let stored = commit(inner, key, &current, updated, req.dry_run());
    Ok(reply(StatusCode::OK, &scale_of(&stored)))
}

/// DeleteOptions preconditions, from a DELETE body or an eviction's
/// `deleteOptions`.
fn preconditions_hold(kind: &Kind, name: &str, obj: &Value, options: Option<&Value>) -> Result<(), Failure> {
    let Some(pre) = options.and_then(|o| o.get("preconditions")) else {
        return Ok(());
    };
    if let Some(uid) = pre.get("uid").and_then(Value::as_str)
        && obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
    {
        return Err(conflict(
            kind,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str)
        && obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) != Some(rv)
    {
        return Err(conflict(kind, name, MODIFIED));
    }
    Ok(())
}

/// Pods go away gracefully: they stay, terminating, until the kubelet is
/// done; anything else is removed at once.
fn remove(inner: &mut Inner, kind: &Kind, key: Key, obj: &Value, dry_run: bool) -> Value {
    if kind.plural != "pods" {
        if !dry_run {
            inner.objects.remove(&key);
        }
        return json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": key.2, "group": kind.group, "kind": kind.plural, "uid": obj["metadata"]["uid"]},
        });
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return obj.clone();
    }
    let mut updated = obj.clone();
    let grace = obj.pointer("/spec/terminationGracePeriodSeconds").cloned().unwrap_or(json!(30));
    updated["metadata"]["deletionTimestamp"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    updated["metadata"]["deletionGracePeriodSeconds"] = grace;
    commit(inner, key, obj, updated, dry_run)
}

fn delete(inner: &mut Inner, kind: &Kind, ns: &str, name: &str, req: &Recorded) -> Answer {
    let key = (kind.plural, ns.to_string(), name.to_string());
    let Some(current) = inner.objects.get(&key).cloned() else {
        return Err(not_found(kind, name));
    };
    if let Some(Value::String(_)) = &req.body {
        return Err(bad_request("the body of the request could not be decoded as DeleteOptions"));
    }
    take_conflict(inner, kind, name)?;
    preconditions_hold(kind, name, &current, req.body.as_ref())?;
    let gone = remove(inner, kind, key, &current, req.dry_run());
    Ok(reply(StatusCode::OK, &gone))
}

fn evict(inner: &mut Inner, ns: &str, name: &str, req: &Recorded) -> Answer {
    let pods = KINDS[0];
    let key = ("pods", ns.to_string(), name.to_string());
    if req.content_type.as_deref() != Some("application/json") {
        return Err(failure(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format",
            json!({}),
        ));
    }
    let Some(body) = req.body.as_ref().filter(|b| b.is_object()) else {
        return Err(bad_request("the body of the request could not be decoded as an Eviction"));
    };
    // The decoder defaults apiVersion/kind from the URL; a wrong one is refused.
    let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or("policy/v1");
    let body_kind = body.get("kind").and_then(Value::as_str).unwrap_or("Eviction");
    if !matches!(api_version, "policy/v1" | "policy/v1beta1") || body_kind != "Eviction" {
        return Err(bad_request(format!("expected an Eviction, got {api_version} {body_kind}")));
    }
    let mut typed = body.clone();
    if let Some(m) = typed.as_object_mut() {
        m.insert("apiVersion".into(), json!("policy/v1"));
        m.insert("kind".into(), json!("Eviction"));
    }
    serde_json::from_value::<Eviction>(typed).map_err(|e| bad_request(e.to_string()))?;
    if body.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return Err(bad_request("name in URL does not match name in Eviction object"));
    }
    let Some(current) = inner.objects.get(&key).cloned() else {
        return Err(not_found(&pods, name));
    };
    let options = body.get("deleteOptions");
    if req.query.contains_key("dryRun")
        && let Some(opts) = options.and_then(|o| o.get("dryRun"))
        && opts != &json!(["All"])
    {
        return Err(bad_request(
            "the dryRun of the eviction's DeleteOptions and the query parameter disagree",
        ));
    }
    take_conflict(inner, &pods, name)?;
    preconditions_hold(&pods, name, &current, options)?;
    let pod_labels = labels(&current);
    let blocked = inner
        .budgets
        .iter()
        .filter(|(n, _)| n == ns)
        .any(|(_, s)| Selector::parse(s).is_ok_and(|sel| sel.matches(&pod_labels)));
    let terminal = matches!(
        current.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if blocked && !terminal {
        let covered = inner
            .objects
            .iter()
            .filter(|((p, n, _), _)| *p == "pods" && n == ns)
            .filter(|(_, o)| {
                inner
                    .budgets
                    .iter()
                    .any(|(_, s)| Selector::parse(s).is_ok_and(|sel| sel.matches(&labels(o))))
            })
            .count();
        return Err(failure(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
            json!({"causes": [{
                "reason": "DisruptionBudget",
                "message": format!("The disruption budget test-pdb needs {covered} healthy pods and has {covered} currently"),
            }]}),
        ));
    }
    remove(inner, &pods, key, &current, req.dry_run());
    Ok(reply(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

// ---------------------------------------------------------------------------
// Label selectors

enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A label selector in the API's string form: `a=b,c!=d,e in (x,y),f,!g`.
pub struct Selector(Vec<Requirement>);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        let mut reqs = Vec::new();
        for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), values(set)?)
            } else if let Some((k, set)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), values(set)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !valid(key) {
                return Err(format!("{part:?}: invalid label key"));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

fn values(set: &str) -> Result<Vec<String>, String> {
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("{set:?}: expected (a,b)"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

// ---------------------------------------------------------------------------
// Patches

/// RFC 7386.
fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else { return patch.clone() };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// Strategic merge as far as built-in kinds need it here: like a merge
/// patch, but lists of named objects (containers, env, volumes) merge by
/// `name`, `$patch: delete` removes an element, and other `$` directives
/// are dropped.
fn strategic_merge(target: &Value, patch: &Value) -> Value {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            let mut out = t.clone();
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = strategic_merge(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        (Value::Array(t), Value::Array(p)) if named(t) && named(p) => {
            let mut out = t.clone();
            for item in p {
                let name = &item["name"];
                let pos = out.iter().position(|o| &o["name"] == name);
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (Some(i), false) => out[i] = strategic_merge(&out[i], item),
                    (None, true) => {}
                    (None, false) => out.push(strategic_merge(&Value::Null, item)),
                }
            }
            Value::Array(out)
        }
        (_, Value::Object(_)) => strategic_merge(&Value::Object(Map::new()), patch),
        _ => patch.clone(),
    }
}

fn named(items: &[Value]) -> bool {
    items.iter().all(|i| i.get("name").is_some_and(Value::is_string))
}

/// RFC 6902.
fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch.as_array().ok_or("a JSON patch is a list of operations")?;
    let mut doc = target.clone();
    for op in ops {
        let path = op.get("path").and_then(Value::as_str).ok_or("operation without path")?;
        match op.get("op").and_then(Value::as_str) {
            Some("add") => add(&mut doc, path, op.get("value").cloned().ok_or("add without value")?)?,
            Some("remove") => {
                take(&mut doc, path)?;
            }
            Some("replace") => {
                take(&mut doc, path)?;
                add(&mut doc, path, op.get("value").cloned().ok_or("replace without value")?)?;
            }
            Some("test") => {
                if doc.pointer(path) != op.get("value") {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("move") => {
                let from = op.get("from").and_then(Value::as_str).ok_or("move without from")?;
                let v = take(&mut doc, from)?;
                add(&mut doc, path, v)?;
            }
            Some("copy") => {
                let from = op.get("from").and_then(Value::as_str).ok_or("copy without from")?;
                let v = doc.pointer(from).cloned().ok_or(format!("no value at {from}"))?;
                add(&mut doc, path, v)?;
            }
            other => return Err(format!("unknown operation {other:?}")),
        }
    }
    Ok(doc)
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path.rsplit_once('/').ok_or(format!("invalid path {path:?}"))?;
    Ok((parent.to_string(), last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>().map_err(|_| format!("invalid index in {path:?}"))?
            };
            if i > a.len() {
                return Err(format!("index out of range in {path:?}"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("missing parent for {path:?}")),
    }
}

fn take(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or(format!("no value at {path:?}")),
        Some(Value::Array(a)) => {
            let i = last.parse::<usize>().map_err(|_| format!("invalid index in {path:?}"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("no value at {path:?}"))
            }
        }
        _ => Err(format!("no value at {path:?}")),
    }
}
