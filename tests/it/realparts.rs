//! Real parts for tests: the Debian `prometheus-alertmanager`, `prometheus`
//! and `pgbouncer` binaries started on 127.0.0.1 with a free port and their
//! own temp folder, a tiny metrics exporter whose gauges a test sets, and a
//! harness that runs one action the way the engine would.
//!
//! Readiness is polled, never slept for. Children die with their handle
//! (`kill_on_drop`). A missing binary is a loud failure, never a skip: the
//! test script installs them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use pitcrew::action::{ActionContext, ActionError, Deps, Registry};
use pitcrew::alert::Alert;
use pitcrew::config::Config;

/// How long a part may take to become ready before the test fails.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Between readiness probes.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// The path of a packaged binary, or a panic saying how to get it.
pub fn binary(name: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = vec!["/usr/bin".into(), "/usr/sbin".into(), "/usr/local/bin".into()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found; install it: apt-get install -y {package}"))
}

/// A port nobody listens on right now. The OS may hand it out again before
/// the child binds it; `start_child` retries when that happens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A loopback port with nothing listening, for "unreachable" tests.
pub fn closed_port() -> u16 {
    free_port()
}

/// A started child with its folder and log.
struct Started {
    child: Child,
    port: u16,
}

/// Starts `command(port)` until `ready(port)` holds, retrying on a fresh
/// port when the child dies because its port was taken meanwhile.
async fn start_child<F, R, Fut>(name: &str, dir: &Path, mut command: F, ready: R) -> Started
where
    F: FnMut(u16) -> Command,
    R: Fn(u16) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let log_path = dir.join(format!("{name}.out"));
    for _attempt in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(&log_path).expect("create child log");
        let mut child = command(port)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = child.try_wait().expect("poll child") {
                let shown = std::fs::read_to_string(&log_path).unwrap_or_default();
                if shown.to_ascii_lowercase().contains("address already in use") {
                    break; // raced for the port: try another
                }
                panic!("{name} exited with {status} before it was ready:\n{shown}");
            }
            if ready(port).await {
                return Started { child, port };
            }
            if tokio::time::Instant::now() > deadline {
                let shown = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("{name} not ready within {READY_WITHIN:?}:\n{shown}");
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
    panic!("{name}: no free port after 3 attempts");
}

fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("reqwest client builds")
}

async fn http_ready(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/-/ready");
    matches!(probe_client().get(url).send().await, Ok(r) if r.status().is_success())
}

/// A real Alertmanager (clustering off).
pub struct Alertmanager {
    // Declared first so the child dies before its folder goes.
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Alertmanager {
    /// A config that routes everything nowhere: enough for silences and the
    /// alerts API.
    pub const MINIMAL: &'static str = "route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n";

    pub async fn start(config_yaml: &str) -> Alertmanager {
        let bin = binary("prometheus-alertmanager", "prometheus-alertmanager");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("alertmanager.yml"), config_yaml).expect("write config");
        std::fs::create_dir(dir.path().join("data")).expect("data dir");
        let root = dir.path().to_path_buf();
        let Started { child, port } = start_child(
            "alertmanager",
            dir.path(),
            |port| {
                let mut c = Command::new(&bin);
                c.arg(format!("--config.file={}", root.join("alertmanager.yml").display()))
                    .arg(format!("--storage.path={}", root.join("data").display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg(format!("--web.external-url=http://127.0.0.1:{port}"))
                    // Empty: no gossip, no cluster port to collide on.
                    .arg("--cluster.listen-address=");
                c
            },
            http_ready,
        )
        .await;
        Alertmanager {
            child,
            port,
            dir,
            client: probe_client(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Raises one firing alert with these labels.
    pub async fn post_alert(&self, labels: &[(&str, &str)]) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.post_alerts(json!([{
            "labels": labels,
            "annotations": {},
            "startsAt": chrono::Utc::now(),
            "generatorURL": "http://127.0.0.1/test",
        }]))
        .await;
    }

    /// `POST /api/v2/alerts` with a list of alerts as the API takes them.
    pub async fn post_alerts(&self, alerts: Value) {
        let r = self
            .client
            .post(format!("{}/api/v2/alerts", self.url()))
            .json(&alerts)
            .send()
            .await
            .expect("post alerts");
        assert!(r.status().is_success(), "alertmanager refused alerts: {}", r.status());
    }

    /// `GET /api/v2/alerts`.
    pub async fn alerts(&self) -> Vec<Value> {
        self.get_list("/api/v2/alerts").await
    }

    /// `GET /api/v2/silences`: every silence, any state.
    pub async fn silences(&self) -> Vec<Value> {
        self.get_list("/api/v2/silences").await
    }

    /// One silence by id.
    pub async fn silence(&self, id: &str) -> Value {
        let silences = self.silences().await;
        silences
            .into_iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no silence {id} in alertmanager"))
    }

    async fn get_list(&self, path: &str) -> Vec<Value> {
        let r = self
            .client
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .expect("alertmanager answers");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("a JSON list")
    }
}

/// A real Prometheus scraping one target every second.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Prometheus {
    /// Scrapes `scrape_target` (`host:port`, e.g. `Exporter::addr()`) as job
    /// `exporter`.
    pub async fn start(scrape_target: &str) -> Prometheus {
        Prometheus::start_with_rules(scrape_target, None).await
    }

    /// Like [`Prometheus::start`], also evaluating `rules` (a rule file's
    /// YAML) every second.
    pub async fn start_with_rules(scrape_target: &str, rules: Option<&str>) -> Prometheus {
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: exporter\n    static_configs:\n      - targets: [\"{scrape_target}\"]\n"
        );
        let bin = binary("prometheus", "prometheus");
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(rules) = rules {
            std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
            config.push_str(&format!("rule_files: [\"{}\"]\n", dir.path().join("rules.yml").display()));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        let root = dir.path().to_path_buf();
        let Started { child, port } = start_child(
            "prometheus",
            dir.path(),
            |port| {
                let mut c = Command::new(&bin);
                c.arg(format!("--config.file={}", root.join("prometheus.yml").display()))
                    .arg(format!("--storage.tsdb.path={}", root.join("data").display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"));
                c
            },
            http_ready,
        )
        .await;
        Prometheus {
            child,
            port,
            dir,
            client: probe_client(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The first sample of an instant query now, `None` when empty.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let r: Value = self
            .client
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", query)])
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("prometheus answers JSON");
        assert_eq!(r["status"], "success", "query {query}: {r}");
        r["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse().ok())
    }

    /// Polls `query` until its first sample satisfies `want` (e.g. the
    /// exporter's latest value has been scraped).
    pub async fn eventually(&self, query: &str, want: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            let seen = self.value(query).await;
            if let Some(v) = seen.filter(|v| want(*v)) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "{query} never got there; last {seen:?}");
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

/// A metrics endpoint on 127.0.0.1 whose values the test sets.
pub struct Exporter {
    addr: SocketAddr,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    pub async fn start() -> Exporter {
        let values: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
        let shared = values.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let values = shared.clone();
                async move {
                    let text: String = values
                        .lock()
                        .expect("exporter lock")
                        .iter()
                        .map(|(series, v)| format!("{series} {v}\n"))
                        .collect();
                    ([("content-type", "text/plain; version=0.0.4")], text)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind exporter");
        let addr = listener.local_addr().expect("exporter address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("exporter serves");
        });
        Exporter { addr, values, task }
    }

    /// Sets a series, e.g. `set("queue_depth{queue=\"a\"}", 3.0)`.
    pub fn set(&self, name_with_labels: &str, value: f64) {
        self.values
            .lock()
            .expect("exporter lock")
            .insert(name_with_labels.to_string(), value);
    }

    /// Stops exporting a series.
    pub fn remove(&self, name_with_labels: &str) {
        self.values.lock().expect("exporter lock").remove(name_with_labels);
    }

    /// `127.0.0.1:PORT`, as a scrape target.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real PgBouncer with an admin console (`admin_users = pgbouncer`, trust
/// auth) and no backend database: the console works without one.
pub struct Pgbouncer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Pgbouncer {
    pub async fn start() -> Pgbouncer {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let bin = binary("pgbouncer", "pgbouncer");
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        // PgBouncer will not run as root; as root, hand it to `nobody`, who
        // then needs to write its pid, log and socket here.
        let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        if as_root {
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).expect("chmod temp dir");
        }
        std::fs::write(root.join("users.txt"), "\"pgbouncer\" \"\"\n").expect("write auth file");
        let Started { child, port } = start_child(
            "pgbouncer",
            dir.path(),
            |port| {
                let ini = format!(
                    "[databases]\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {dir}\nauth_type = trust\nauth_file = {dir}/users.txt\nadmin_users = pgbouncer\npidfile = {dir}/pgbouncer.pid\nlogfile = {dir}/pgbouncer.log\n",
                    dir = root.display()
                );
                let ini_path = root.join("pgbouncer.ini");
                std::fs::write(&ini_path, ini).expect("write pgbouncer.ini");
                let mut c = Command::new(&bin);
                if as_root {
                    c.args(["-u", "nobody"]);
                }
                c.arg(&ini_path);
                c
            },
            |port| async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() },
        )
        .await;
        Pgbouncer { child, port, dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The log PgBouncer writes, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

/// Runs actions by hand the way the engine does: one `Deps` from a config,
/// a registry with plugins, an artifact folder, maybe an alert.
pub struct Harness {
    pub deps: Deps,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    pub alert: Option<Alert>,
    pub dry_run: bool,
    pub execution_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl Harness {
    /// `config_yaml` is a `pitcrew.yaml`; built-in actions only.
    pub fn new(config_yaml: &str) -> Harness {
        Harness::with_plugins(config_yaml, None)
    }

    /// Built-ins plus the plugins in `plugins_dir`, which must load cleanly.
    pub fn with_plugins(config_yaml: &str, plugins_dir: Option<&Path>) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::parse(&dir.path().join("pitcrew.yaml"), config_yaml).unwrap_or_else(|e| panic!("config: {e}"));
        let manifests = match plugins_dir {
            Some(p) => {
                let mut problems = Vec::new();
                let m = pitcrew::runbook::compile::load_plugins(p, &mut problems);
                assert!(problems.is_empty(), "plugins in {}: {problems:?}", p.display());
                m
            }
            None => Vec::new(),
        };
        Harness {
            deps: Deps::new(Arc::new(config)),
            registry: Registry::with_plugins(manifests),
            dir,
            alert: None,
            dry_run: false,
            execution_id: "01JTESTEXECUTION0000000000".to_string(),
            started_at: chrono::Utc::now(),
        }
    }

    pub fn alert(mut self, alert: Alert) -> Harness {
        self.alert = Some(alert);
        self
    }

    /// The execution's artifact folder (the plugins' working directory).
    pub fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// Runs `action` with a rendered `with` block.
    pub async fn run(&self, action: &str, with: Value) -> Result<Value, ActionError> {
        let action = self.registry.get(action).unwrap_or_else(|| panic!("no action {action}"));
        let cx = ActionContext {
            execution_id: &self.execution_id,
            step: "step",
            started_at: self.started_at,
            dry_run: self.dry_run,
            artifacts: self.artifacts(),
            alert: self.alert.as_ref(),
            deps: &self.deps,
        };
        action.run(&with, &cx).await
    }
}
