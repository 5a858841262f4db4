//! Shared helpers for integration tests: an in-process pitcrew (store,
//! engine, HTTP router) over a temp state dir, with a clock tests move.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use pitcrew::audit::Record;
use pitcrew::clock::ManualClock;
use pitcrew::config::Config;
use pitcrew::engine::{Engine, Outcome};
use pitcrew::server::{AppState, router};
use pitcrew::store::postgres::PgStore;
use pitcrew::store::sqlite::SqliteStore;
use pitcrew::store::{AuditFilter, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z").unwrap().with_timezone(&Utc)
}

/// Which store a harness keeps its state in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// A fresh database on the test binary's PostgreSQL cluster.
    Postgres,
}

/// The backend of the test module this is called from: modules whose path
/// says `on_postgres` (the same file included a second time, see main.rs)
/// run on PostgreSQL, the rest on SQLite.
pub fn backend_of(module: &str) -> Backend {
    if module.contains("on_postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

/// The `store:` config lines for a fresh PostgreSQL database.
pub fn postgres_store_config() -> String {
    let pg = crate::pg::cluster();
    format!(
        "\nstore:\n  url: {}\n  password_file: {}\n",
        pg.database(),
        pg.password_file().display()
    )
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub engine: Arc<Engine>,
    pub app: Router,
}

impl Harness {
    /// `runbooks` is the YAML of one runbook file; `config` extra config keys.
    pub fn new(runbooks: &str, config: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
        std::fs::write(dir.path().join("runbooks/test.yaml"), runbooks).unwrap();
        std::fs::write(
            dir.path().join("pitcrew.yaml"),
            format!("state_dir: state\nplugins: plugins\n{config}"),
        )
        .unwrap();
        let clock = ManualClock::new(start_time());
        Harness::open(dir, clock)
    }

    /// Like [`Harness::new`], on the given backend.
    pub fn new_on(backend: Backend, runbooks: &str, config: &str) -> Harness {
        match backend {
            Backend::Sqlite => Harness::new(runbooks, config),
            Backend::Postgres => Harness::new(runbooks, &format!("{config}{}", postgres_store_config())),
        }
    }

    /// Opens (again) over an existing dir: what a restart of `serve` does.
    pub fn open(dir: tempfile::TempDir, clock: ManualClock) -> Harness {
        let config = Arc::new(Config::load(&dir.path().join("pitcrew.yaml")).unwrap_or_else(|e| panic!("config: {e:?}")));
        let runbooks = Arc::new(pitcrew::runbook::compile::load(&config, &config.runbooks).unwrap_or_else(|d| panic!("runbooks:\n{d}")));
        let store: Arc<dyn Store> = match &config.store {
            Some(pg) => Arc::new(PgStore::open(pg, config.redactor.clone(), Arc::new(clock.clone())).unwrap()),
            None => Arc::new(SqliteStore::open(&config.state_dir, config.redactor.clone(), Arc::new(clock.clone())).unwrap()),
        };
        Harness::with_store(dir, clock, config, runbooks, store)
    }

    pub fn with_store(
        dir: tempfile::TempDir,
        clock: ManualClock,
        config: Arc<Config>,
        runbooks: Arc<pitcrew::runbook::RunbookSet>,
        store: Arc<dyn Store>,
    ) -> Harness {
        let engine = Arc::new(Engine::new(config, runbooks, store));
        let app = router(Arc::new(AppState::new(engine.clone())));
        Harness { dir, clock, engine, app }
    }

    /// Drops the engine and opens the same state again, clock kept.
    pub fn restart(self) -> Harness {
        let Harness { dir, clock, engine, app } = self;
        drop(app);
        drop(engine);
        Harness::open(dir, clock)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.engine.store
    }

    pub async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = self.app.clone().oneshot(req.body(body.into()).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Like `call`, with the response headers.
    pub async fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = self.app.clone().oneshot(req.body(body.into()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Serves this harness's engine on a real socket (127.0.0.1:0) through
    /// the accept loop `pitcrew serve` runs, until the test ends.
    pub async fn listen(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(AppState::new(self.engine.clone()));
        tokio::spawn(pitcrew::server::serve(listener, state, std::future::pending()));
        address
    }

    /// Posts a webhook payload; returns status and JSON body.
    pub async fn post(&self, payload: &Value) -> (StatusCode, Value) {
        let (status, body) = self
            .call(
                "POST",
                "/v1/alerts/alertmanager",
                &[("content-type", "application/json")],
                payload.to_string(),
            )
            .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    /// Runs every queued execution to its end, here and now.
    pub async fn run_queued(&self) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Some(exec) = self.store().claim(&self.engine.worker_id, None).await.unwrap() {
            out.push(self.engine.execute(exec, None).await.unwrap());
        }
        out
    }

    pub async fn audit(&self) -> Vec<Record> {
        self.store().audit(AuditFilter::default()).await.unwrap()
    }

    /// `pitcrew run NAME --param K=V…` by alice, resolved as the CLI
    /// resolves it, not yet admitted.
    pub fn manual(&self, name: &str, params: &[(&str, &str)]) -> pitcrew::store::Admission {
        let set = self.engine.runbooks();
        let rb = set.get(name).unwrap_or_else(|| panic!("no runbook {name}")).clone();
        let overrides = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let resolved = set.resolve(&rb, None, &overrides).unwrap();
        pitcrew::store::Admission {
            id: pitcrew::store::new_id(),
            runbook: rb,
            target: resolved.target,
            params: resolved.params,
            actor: "user:alice".into(),
            automated: false,
            dry_run: false,
            force: None,
            budget: None,
            invalid: None,
            inhibit: resolved.inhibit,
        }
    }

    /// A firing alert for `instance` that started now: every call at a new
    /// clock time is a new notification, not a duplicate.
    pub fn firing_now(&self, alertname: &str, instance: &str) -> Value {
        let mut a = alert(&[("alertname", alertname), ("instance", instance)]);
        a["startsAt"] = json!(pitcrew::clock::Clock::now(&self.clock).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        a
    }

    /// Posts one webhook delivery; returns the `guardrail.decision` records
    /// it produced, in order.
    pub async fn deliver(&self, alerts: Vec<Value>) -> Vec<Record> {
        let before = self.audit().await.last().map(|r| r.seq).unwrap_or(0);
        let (status, body) = self.post(&payload(alerts)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        self.audit()
            .await
            .into_iter()
            .filter(|r| r.seq > before && r.kind == "guardrail.decision")
            .collect()
    }

    pub async fn kinds(&self) -> Vec<String> {
        self.audit().await.into_iter().map(|r| r.kind).collect()
    }

    pub fn advance(&self, d: &str) {
        let d: pitcrew::units::Duration = d.parse().unwrap();
        self.clock.advance(d.chrono());
    }
}

/// A firing wire alert with these labels; fingerprint from the labels.
pub fn alert(labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let fingerprint = format!("{:x}", fxhash(&Value::Object(labels.clone()).to_string()));
    json!({"status": "firing", "labels": labels, "annotations": {}, "startsAt": "2026-11-27T11:59:00Z",
           "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint})
}

pub fn resolved(mut alert: Value) -> Value {
    alert["status"] = json!("resolved");
    alert["endsAt"] = json!("2026-11-27T12:00:00Z");
    alert
}

fn fxhash(s: &str) -> u64 {
    s.bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// An Alertmanager webhook v4 body.
pub fn payload(alerts: Vec<Value>) -> Value {
    json!({"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "pitcrew",
           "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093", "alerts": alerts})
}
