//! `pitcrew.yaml`: where it is found, what it may say, and the checked
//! `Config` the rest of pitcrew reads. Every key is optional; unknown keys
//! are errors. `${VAR}` expands from the environment and `*_file` keys read
//! secrets from files; both kinds of value are registered for redaction.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::action::http_guard::AllowedHost;
use crate::diag::{Diagnostic, Diagnostics};
use crate::redact::{MIN_SECRET_LEN, Redactor};
use crate::runbook::Risk;
use crate::runbook::loader::{Positions, parse_one};
use crate::units::{ByteSize, Duration, Rate, Ratio};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9095";
/// `retention.executions` when not set: a quarter of history for reports,
/// without the store growing forever.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    state_dir: Option<String>,
    runbooks: Option<Vec<String>>,
    plugins: Option<String>,
    max_body: Option<String>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    auth: RawAuth,
    prometheus: Option<RawUrl>,
    alertmanager: Option<RawUrl>,
    kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    http: RawHttp,
    notify: Option<RawNotify>,
    pagerduty: Option<RawPagerDuty>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    intake: RawIntake,
    #[serde(default)]
    slos: Vec<RawSlo>,
    budget_policy: Option<Vec<RawPolicyRow>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    server: RawServer,
    store: Option<RawStore>,
    #[serde(default)]
    windows: Vec<crate::window::RawWindow>,
    slack: Option<RawSlack>,
}

/// `slack:`, approvals from Slack (see `crate::slack`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    api_url: Option<String>,
    bot_token: Option<String>,
    bot_token_file: Option<String>,
    signing_secret: Option<String>,
    signing_secret_file: Option<String>,
    channel: String,
    #[serde(default)]
    users: std::collections::BTreeMap<String, String>,
}

/// One `auth.users` entry: a CLI identity (an OS user name) and its groups.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: String,
    password: Option<String>,
    password_file: Option<String>,
    lease: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    checkpoint: Option<RawCheckpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    every: Option<String>,
    key_file: String,
    dir: Option<String>,
    url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    webhook_token: Option<String>,
    webhook_token_file: Option<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    insecure_allow_remote: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    token: Option<String>,
    token_file: Option<String>,
    role: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// `server:`, the HTTP server's limits and browser rules.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    header_timeout: Option<String>,
    request_timeout: Option<String>,
    max_connections: Option<usize>,
    #[serde(default)]
    allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUrl {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    context: Option<String>,
    clusters: Option<std::collections::BTreeMap<String, RawCluster>>,
    default_cluster: Option<String>,
}

/// One of `kubernetes.clusters`: a kubeconfig context, or the pod's own cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    kubeconfig: Option<String>,
    context: Option<String>,
    #[serde(default)]
    in_cluster: bool,
}

/// `pagerduty:`, the Events API v2.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPagerDuty {
    events_url: Option<String>,
    routing_key: Option<String>,
    routing_key_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    url: Option<String>,
    url_file: Option<String>,
    on: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    global: Option<String>,
    storm_brake: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIntake {
    reconsider_after: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    executions: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    name: String,
    objective: String,
    window: String,
    good: Option<String>,
    total: Option<String>,
    static_remaining: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyRow {
    name: Option<String>,
    above: String,
    #[serde(default)]
    auto: Vec<String>,
    #[serde(default)]
    approve: Vec<String>,
}

/// API roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
}

#[derive(Debug, Clone)]
pub struct ApiToken {
    pub name: String,
    pub token: String,
    pub role: Role,
    /// Groups for runbook `permissions`.
    pub groups: Vec<String>,
}

/// A CLI identity (`auth.users`): an OS user name and its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGroups {
    pub name: String,
    pub groups: Vec<String>,
}

/// `slack:`, approvals from Slack.
#[derive(Clone)]
pub struct SlackConfig {
    /// The Web API's base URL (`https://slack.com/api`), without a final `/`.
    pub api_url: String,
    /// The bot token (`xoxb-…`), sent as a bearer token to the Web API.
    pub bot_token: String,
    /// The app's signing secret: what interaction requests are checked with.
    pub signing_secret: String,
    /// Where approval messages go (a channel name or id).
    pub channel: String,
    /// Slack user id → the pitcrew identity (an `auth.tokens` or `auth.users`
    /// name) an approval from that user counts as.
    pub users: std::collections::BTreeMap<String, String>,
}

impl SlackConfig {
    pub const DEFAULT_API_URL: &str = "https://slack.com/api";
}

impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConfig")
            .field("api_url", &self.api_url)
            .field("bot_token", &"…")
            .field("signing_secret", &"…")
            .field("channel", &self.channel)
            .field("users", &self.users)
            .finish()
    }
}

/// Where an SLO's remaining budget comes from.
#[derive(Debug, Clone)]
pub enum Sli {
    Prometheus { good: String, total: String },
    Static(Ratio),
}

#[derive(Debug, Clone)]
pub struct Slo {
    pub name: String,
    pub objective: Ratio,
    pub window: Duration,
    pub sli: Sli,
}

#[derive(Debug, Clone)]
pub struct PolicyRow {
    pub name: String,
    pub above: Ratio,
    pub auto: Vec<Risk>,
    pub approve: Vec<Risk>,
}

/// The SRE error-budget policy.
pub fn default_budget_policy() -> Vec<PolicyRow> {
    vec![
        PolicyRow {
            name: "healthy".into(),
            above: Ratio(0.5),
            auto: Risk::ALL.to_vec(),
            approve: vec![],
        },
        PolicyRow {
            name: "caution".into(),
            above: Ratio(0.25),
            auto: vec![Risk::Low, Risk::Medium],
            approve: vec![Risk::High],
        },
        PolicyRow {
            name: "freeze".into(),
            above: Ratio(0.0),
            auto: vec![Risk::Low],
            approve: vec![Risk::Medium, Risk::High],
        },
    ]
}

/// A PostgreSQL store (`store:`), shared by any number of replicas.
#[derive(Clone)]
pub struct StoreConfig {
    /// `postgres://USER@HOST:PORT/DB` (no password in it: see `password`).
    pub url: String,
    pub password: Option<String>,
    /// How long a replica's claims outlive its last heartbeat.
    pub lease: Duration,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("lease", &self.lease)
            .finish()
    }
}

/// Signed checkpoints of the audit chain's head, written by `serve`.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// How often the head is checked; a checkpoint is written only when it moved.
    pub every: Duration,
    /// The Ed25519 private key. Only the path: the key is read by `serve`
    /// alone, when it starts, so no other command ever holds it.
    pub key_file: PathBuf,
    pub sink: CheckpointSink,
}

/// Where checkpoints go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointSink {
    /// One file per checkpoint in this directory (never inside `state_dir`).
    Dir(PathBuf),
    /// Each checkpoint POSTed as JSON.
    Url(String),
}

/// The HTTP server's limits and browser rules (`server:`).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// `header_timeout` (default 10s): a connection that has not sent a
    /// complete request head this long after it opened (or after its last
    /// response, when kept alive) is closed.
    pub header_timeout: Duration,
    /// `request_timeout` (default 30s): from the request head to the response
    /// head, including reading the body. A body still arriving then gets 408;
    /// a handler still working gets 503 (the client may retry).
    pub request_timeout: Duration,
    /// `max_connections` (default 1024): connections open at once. Past it,
    /// new connections wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// `allowed_origins` (default none): the only `Origin` header values a
    /// request may carry, as `scheme://host[:port]`, lowercase, no trailing
    /// slash. A request with any other `Origin` gets 403.
    pub allowed_origins: Vec<String>,
}

impl ServerLimits {
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
}

/// `scheme://host[:port]` as browsers send it in `Origin`, lowercased.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    let bad = || format!("invalid origin {text:?}: expected scheme://host[:port], e.g. https://dash.example.com");
    let url = reqwest::Url::parse(text).map_err(|_| bad())?;
    let host = url.host_str().ok_or_else(bad)?;
    if !matches!(url.scheme(), "http" | "https") || url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad());
    }
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub runbooks: Vec<PathBuf>,
    pub plugins: PathBuf,
    pub max_body: u64,
    /// Global shadow mode: decide and audit, touch nothing.
    pub dry_run: bool,
    pub webhook_token: Option<String>,
    pub tokens: Vec<ApiToken>,
    /// `auth.users`: groups of CLI identities.
    pub users: Vec<UserGroups>,
    pub insecure_allow_remote: bool,
    pub prometheus_url: Option<String>,
    pub alertmanager_url: Option<String>,
    /// Where Kubernetes actions act: every configured cluster by name.
    /// Without `kubernetes.clusters`, one cluster named `default` (in the
    /// pod's cluster, else the kubeconfig and `kubernetes.context`).
    pub kubernetes_clusters: std::collections::BTreeMap<String, ClusterSource>,
    /// The cluster a step without `cluster` acts on; `None` when several
    /// are configured and none is named the default.
    pub kubernetes_default_cluster: Option<String>,
    /// PagerDuty Events API v2 (`pagerduty:`).
    pub pagerduty: Option<PagerDutyConfig>,
    pub allowed_hosts: Vec<AllowedHost>,
    pub notify_url: Option<String>,
    /// Which events send a notice (`notify.on`).
    pub notify_on: Vec<NoticeEvent>,
    pub global_limit: Option<Rate>,
    pub storm_brake: Option<u32>,
    /// Ended executions (and their steps) older than this are pruned in the
    /// background; `None` keeps them forever. The audit log is never pruned.
    pub retention: Option<Duration>,
    /// A re-sent alert blocked only by guardrails that time lifts is decided
    /// again at most this often.
    pub reconsider_after: Duration,
    pub slos: Vec<Slo>,
    pub budget_policy: Vec<PolicyRow>,
    pub checkpoint: Option<CheckpointConfig>,
    pub server: ServerLimits,
    /// PostgreSQL; `None`: the embedded SQLite file under `state_dir`.
    pub store: Option<StoreConfig>,
    /// Named time windows (`windows:`), for `guardrails.freeze` and
    /// `guardrails.only_during`.
    pub windows: Vec<crate::window::Window>,
    /// `slack:`; `None`: no Slack approvals.
    pub slack: Option<SlackConfig>,
    pub redactor: Redactor,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_raw(RawConfig::default(), Path::new("."), None, &Positions::default()).expect("defaults are valid")
    }
}

/// An event that can send a notice (`notify.on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeEvent {
    /// A run waits for approval.
    PendingApproval,
    /// A run ended `failed`.
    Failed,
    /// A run ended `unknown` (a non-idempotent step was interrupted).
    Unknown,
    /// An `escalate_after` breaker tripped.
    Escalated,
    /// The storm brake engaged.
    Storm,
}

impl NoticeEvent {
    /// Every event, in the order `notify.on` lists them by default.
    pub const ALL: [NoticeEvent; 5] = [
        NoticeEvent::PendingApproval,
        NoticeEvent::Failed,
        NoticeEvent::Unknown,
        NoticeEvent::Escalated,
        NoticeEvent::Storm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeEvent::PendingApproval => "pending_approval",
            NoticeEvent::Failed => "failed",
            NoticeEvent::Unknown => "unknown",
            NoticeEvent::Escalated => "escalated",
            NoticeEvent::Storm => "storm",
        }
    }

    pub fn parse(name: &str) -> Option<NoticeEvent> {
        NoticeEvent::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or `$PITCREW_CONFIG` cannot be read.
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl Config {
    /// Finds and loads the config: `--config`, then `$PITCREW_CONFIG`, then
    /// `./pitcrew.yaml`, else built-in defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = std::env::var_os("PITCREW_CONFIG").map(PathBuf::from);
        let path = explicit.map(Path::to_path_buf).or(from_env);
        match path {
            Some(p) => Config::load(&p),
            None if Path::new("pitcrew.yaml").exists() => Config::load(Path::new("pitcrew.yaml")),
            None => Ok(Config::default()),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if text.trim().is_empty() {
            return Config::from_raw(RawConfig::default(), base, Some(path), &Positions::default());
        }
        let doc = parse_one::<RawConfig>(path, text).map_err(|d| ConfigError::Invalid(Diagnostics(vec![d])))?;
        Config::from_raw(doc.value, base, Some(path), &doc.positions)
    }

    fn from_raw(raw: RawConfig, base: &Path, file: Option<&Path>, pos: &Positions) -> Result<Config, ConfigError> {
        let mut cx = Cx {
            file: file.unwrap_or(Path::new("pitcrew.yaml")),
            pos,
            base,
            problems: Vec::new(),
            secrets: Vec::new(),
        };
        let listen_text = cx.expand("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN));
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            cx.problem(
                "listen",
                format!("invalid listen address {listen_text:?}: expected IP:PORT, e.g. 127.0.0.1:9095"),
            );
            DEFAULT_LISTEN.parse().expect("default parses")
        });
        let state_dir = cx.path("state_dir", raw.state_dir.as_deref().unwrap_or(".pitcrew"));
        let runbooks = match raw.runbooks {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, r)| cx.path(&format!("runbooks[{i}]"), r))
                .collect(),
            None => vec![cx.path("runbooks", "runbooks")],
        };
        let plugins = cx.path("plugins", raw.plugins.as_deref().unwrap_or("plugins"));
        let max_body = match raw.max_body {
            Some(text) => cx.parse::<ByteSize>("max_body", &text).map(|b| b.0).unwrap_or(1 << 20),
            None => 1 << 20,
        };
        let webhook_token = cx.secret(
            "auth.webhook_token",
            raw.auth.webhook_token.as_deref(),
            raw.auth.webhook_token_file.as_deref(),
        );
        let mut tokens = Vec::new();
        for (i, t) in raw.auth.tokens.iter().enumerate() {
            let at = format!("auth.tokens[{i}]");
            let Some(token) = cx.secret(&at, t.token.as_deref(), t.token_file.as_deref()) else {
                cx.problem(&at, format!("token `{}` needs `token` or `token_file`", t.name));
                continue;
            };
            let role = match t.role.as_str() {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                other => {
                    cx.problem(
                        &format!("{at}.role"),
                        format!("invalid role {other:?}: expected viewer or operator"),
                    );
                    continue;
                }
            };
            if tokens.iter().any(|x: &ApiToken| x.token == token) {
                cx.problem(&at, format!("token `{}` reuses another token's value", t.name));
            }
            cx.groups(&format!("{at}.groups"), &t.groups);
            tokens.push(ApiToken {
                name: t.name.clone(),
                token,
                role,
                groups: t.groups.clone(),
            });
        }
        let mut users: Vec<UserGroups> = Vec::new();
        for (i, u) in raw.auth.users.iter().enumerate() {
            let at = format!("auth.users[{i}]");
            if u.name.is_empty() || u.name.contains(':') || u.name.chars().any(char::is_whitespace) {
                cx.problem(
                    &format!("{at}.name"),
                    format!(
                        "invalid user name {:?}: an OS user name, as `pitcrew` shows it after `user:`",
                        u.name
                    ),
                );
            }
            if users.iter().any(|x| x.name == u.name) {
                cx.problem(&format!("{at}.name"), format!("duplicate user `{}`", u.name));
            }
            cx.groups(&format!("{at}.groups"), &u.groups);
            users.push(UserGroups {
                name: u.name.clone(),
                groups: u.groups.clone(),
            });
        }
        let slack = raw.slack.and_then(|s| cx.slack(s, &tokens, &users));
        let prometheus_url = raw.prometheus.map(|u| cx.url("prometheus.url", &u.url));
        let alertmanager_url = raw.alertmanager.map(|u| cx.url("alertmanager.url", &u.url));
        let (kubernetes_clusters, kubernetes_default_cluster) = cx.clusters(raw.kubernetes);
        let pagerduty = raw.pagerduty.and_then(|p| cx.pagerduty(p));
        let allowed_hosts = raw
            .http
            .allowed_hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let at = format!("http.allowed_hosts[{i}]");
                let text = cx.expand(&at, h);
                AllowedHost::parse(&text).map_err(|e| cx.problem(&at, e)).ok()
            })
            .collect();
        let notify_on = match raw.notify.as_ref().and_then(|n| n.on.as_ref()) {
            None => NoticeEvent::ALL.to_vec(),
            Some(names) => names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    NoticeEvent::parse(name)
                        .ok_or_else(|| {
                            let known: Vec<&str> = NoticeEvent::ALL.iter().map(|e| e.as_str()).collect();
                            cx.problem(
                                &format!("notify.on[{i}]"),
                                format!("unknown notice event `{name}`; expected one of {}", known.join(", ")),
                            )
                        })
                        .ok()
                })
                .collect(),
        };
        let notify_url = raw.notify.and_then(|n| {
            let url = cx.secret("notify.url", n.url.as_deref(), n.url_file.as_deref())?;
            // The webhook URL is itself the credential (Slack-style).
            cx.secrets.push(url.clone());
            Some(url)
        });
        let global_limit = raw.limits.global.and_then(|g| cx.parse::<Rate>("limits.global", &g));
        let storm_brake = raw.limits.storm_brake;
        let mut slos = Vec::new();
        for (i, s) in raw.slos.into_iter().enumerate() {
            let at = format!("slos[{i}]");
            let objective = cx.parse::<Ratio>(&format!("{at}.objective"), &s.objective);
            if let Some(o) = objective
                && !(o.0 > 0.0 && o.0 < 1.0)
            {
                cx.problem(
                    &format!("{at}.objective"),
                    format!("objective {o} must be between 0% and 100% (exclusive)"),
                );
            }
            let window = cx.parse::<Duration>(&format!("{at}.window"), &s.window);
            let sli = match (s.good, s.total, s.static_remaining) {
                (Some(good), Some(total), None) => {
                    for (k, q) in [("good", &good), ("total", &total)] {
                        let only_window = crate::promql::slots(q).iter().all(|s| s.inner.trim() == "window");
                        if !only_window {
                            cx.problem(&format!("{at}.{k}"), "the only template variable in SLO queries is {{window}}");
                        } else if let Err(e) = crate::promql::check(q, |path| path == "window") {
                            cx.problem(&format!("{at}.{k}"), e.to_string());
                        }
                    }
                    Some(Sli::Prometheus { good, total })
                }
                (None, None, Some(rem)) => cx.parse::<Ratio>(&format!("{at}.static_remaining"), &rem).map(Sli::Static),
                _ => {
                    cx.problem(
                        &at,
                        format!("slo `{}` needs `good` and `total` queries, or `static_remaining`", s.name),
                    );
                    None
                }
            };
            if slos.iter().any(|x: &Slo| x.name == s.name) {
                cx.problem(&format!("{at}.name"), format!("duplicate slo name `{}`", s.name));
            }
            if let (Some(objective), Some(window), Some(sli)) = (objective, window, sli) {
                slos.push(Slo {
                    name: s.name,
                    objective,
                    window,
                    sli,
                });
            }
        }
        let budget_policy = match raw.budget_policy {
            None => default_budget_policy(),
            Some(rows) => {
                let mut out: Vec<PolicyRow> = Vec::new();
                for (i, r) in rows.into_iter().enumerate() {
                    let at = format!("budget_policy[{i}]");
                    let above = cx.parse::<Ratio>(&format!("{at}.above"), &r.above).unwrap_or(Ratio(0.0));
                    let risks = |cx: &mut Cx, key: &str, list: &[String]| -> Vec<Risk> {
                        list.iter()
                            .enumerate()
                            .filter_map(|(j, s)| s.parse::<Risk>().map_err(|e| cx.problem(&format!("{at}.{key}[{j}]"), e)).ok())
                            .collect()
                    };
                    let auto = risks(&mut cx, "auto", &r.auto);
                    let approve = risks(&mut cx, "approve", &r.approve);
                    if let Some(prev) = out.last()
                        && prev.above <= above
                    {
                        cx.problem(
                            &format!("{at}.above"),
                            "budget_policy rows must go from the highest `above` to the lowest",
                        );
                    }
                    let name = r.name.unwrap_or_else(|| format!("tier-{i}"));
                    out.push(PolicyRow {
                        name,
                        above,
                        auto,
                        approve,
                    });
                }
                out
            }
        };
        let checkpoint = raw.audit.checkpoint.and_then(|c| cx.checkpoint(c, &state_dir));
        let store = raw.store.and_then(|s| {
            let url = cx.expand("store.url", &s.url);
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                cx.problem(
                    "store.url",
                    format!("`{url}` is not a PostgreSQL URL (postgres://USER@HOST:PORT/DB)"),
                );
                return None;
            }
            match url.parse::<postgres::Config>() {
                Err(e) => {
                    cx.problem("store.url", format!("`{url}` does not parse: {e}"));
                    return None;
                }
                // The URL is shown in messages and logs; a password is not.
                Ok(parsed) if parsed.get_password().is_some() => {
                    cx.problem(
                        "store.url",
                        "the URL holds a password: give it as `store.password_file` (or `store.password`) instead",
                    );
                    return None;
                }
                Ok(_) => {}
            }
            let password = cx.secret("store.password", s.password.as_deref(), s.password_file.as_deref());
            let lease = s.lease.unwrap_or(Duration::from_secs(15));
            if lease < Duration::from_secs(1) {
                cx.problem("store.lease", "a lease shorter than 1s would expire between heartbeats");
            }
            Some(StoreConfig { url, password, lease })
        });
        let server = {
            let raw = raw.server;
            let timeout = |cx: &mut Cx, key: &str, text: Option<String>, default: Duration| {
                let at = format!("server.{key}");
                match text.and_then(|t| cx.parse::<Duration>(&at, &t)) {
                    Some(d) if d == Duration::ZERO => {
                        cx.problem(&at, format!("server.{key} must be longer than 0s"));
                        default
                    }
                    Some(d) => d,
                    None => default,
                }
            };
            let header_timeout = timeout(&mut cx, "header_timeout", raw.header_timeout, ServerLimits::DEFAULT_HEADER_TIMEOUT);
            let request_timeout = timeout(
                &mut cx,
                "request_timeout",
                raw.request_timeout,
                ServerLimits::DEFAULT_REQUEST_TIMEOUT,
            );
            let max_connections = raw.max_connections.unwrap_or(ServerLimits::DEFAULT_MAX_CONNECTIONS);
            if max_connections == 0 {
                cx.problem("server.max_connections", "server.max_connections must be at least 1");
            }
            let allowed_origins = raw
                .allowed_origins
                .iter()
                .enumerate()
                .filter_map(|(i, o)| {
                    let at = format!("server.allowed_origins[{i}]");
                    let text = cx.expand(&at, o);
                    normalize_origin(&text).map_err(|e| cx.problem(&at, e)).ok()
                })
                .collect();
            ServerLimits {
                header_timeout,
                request_timeout,
                max_connections: max_connections.max(1),
                allowed_origins,
            }
        };
        let windows = crate::window::compile(raw.windows, &mut |at, message| cx.problem(at, message));
        if !cx.problems.is_empty() {
            return Err(ConfigError::Invalid(Diagnostics(cx.problems)));
        }
        let mut secrets = cx.secrets;
        secrets.extend(tokens.iter().map(|t| t.token.clone()));
        secrets.extend(webhook_token.clone());
        Ok(Config {
            file: file.map(Path::to_path_buf),
            listen,
            state_dir,
            runbooks,
            plugins,
            max_body,
            dry_run: raw.dry_run,
            webhook_token,
            tokens,
            users,
            insecure_allow_remote: raw.auth.insecure_allow_remote,
            prometheus_url,
            alertmanager_url,
            kubernetes_clusters,
            kubernetes_default_cluster,
            pagerduty,
            allowed_hosts,
            notify_url,
            notify_on,
            global_limit,
            storm_brake,
            reconsider_after: raw.intake.reconsider_after.unwrap_or(Duration::from_secs(300)),
            retention: match raw.retention.executions {
                None => Some(DEFAULT_RETENTION),
                Some(Duration::ZERO) => None,
                Some(d) => Some(d),
            },
            slos,
            budget_policy,
            checkpoint,
            server,
            store,
            windows,
            slack,
            redactor: Redactor::new(secrets),
        })
    }

    pub fn slo(&self, name: &str) -> Option<&Slo> {
        self.slos.iter().find(|s| s.name == name)
    }

    pub fn window(&self, name: &str) -> Option<&crate::window::Window> {
        self.windows.iter().find(|w| w.name == name)
    }

    pub fn state_db(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    /// A copy of the config for tests, with the state under `dir`.
    pub fn for_state_dir(dir: &Path) -> Config {
        Config {
            state_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }
}

struct Cx<'a> {
    file: &'a Path,
    pos: &'a Positions,
    base: &'a Path,
    problems: Vec<Diagnostic>,
    secrets: Vec<String>,
}

impl Cx<'_> {
    fn problem(&mut self, at: &str, message: impl Into<String>) {
        self.problems.push(Diagnostic::new(self.file, self.pos.at(at), message));
    }

    /// `${VAR}` from the environment; expanded values are secrets.
    fn expand(&mut self, at: &str, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.problem(at, format!("unclosed ${{ in {text:?}"));
                return text.to_string();
            };
            let name = &after[..end];
            // Not a secret by itself: a context name or a path from the
            // environment is data the audit should show. Secret-bearing keys
            // register their values (`secret`, `url`).
            match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(_) => self.problem(at, format!("environment variable {name} is not set")),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn path(&mut self, at: &str, text: &str) -> PathBuf {
        let p = PathBuf::from(self.expand(at, text));
        if p.is_absolute() || self.base == Path::new(".") {
            p
        } else {
            self.base.join(p)
        }
    }

    /// A URL; the credentials in it (a password, query values such as
    /// `?token=`) are secrets.
    fn url(&mut self, at: &str, text: &str) -> String {
        let u = self.expand(at, text);
        match reqwest::Url::parse(&u) {
            Ok(parsed) => {
                let password = parsed
                    .password()
                    .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
                let credentials = password.into_iter().chain(parsed.query_pairs().map(|(_, v)| v.into_owned()));
                for secret in credentials.filter(|s| s.len() >= MIN_SECRET_LEN) {
                    self.secrets.push(secret);
                }
            }
            Err(_) => self.problem(at, format!("invalid URL {u:?}")),
        }
        u.trim_end_matches('/').to_string()
    }

    fn parse<T: std::str::FromStr>(&mut self, at: &str, text: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        let expanded = self.expand(at, text);
        expanded.parse::<T>().map_err(|e| self.problem(at, e.to_string())).ok()
    }

    fn checkpoint(&mut self, raw: RawCheckpoint, state_dir: &Path) -> Option<CheckpointConfig> {
        const AT: &str = "audit.checkpoint";
        let every = match raw.every {
            Some(text) => self.parse::<Duration>(&format!("{AT}.every"), &text)?,
            None => Duration::from_secs(60),
        };
        if every == Duration::ZERO {
            self.problem(&format!("{AT}.every"), "checkpoint interval must be longer than 0");
            return None;
        }
        let key_file = self.path(&format!("{AT}.key_file"), &raw.key_file);
        let sink = match (raw.dir, raw.url) {
            (Some(dir), None) => {
                let dir = self.path(&format!("{AT}.dir"), &dir);
                // Whoever can delete the newest records can delete a
                // checkpoint lying beside them: it would anchor nothing.
                if within(&dir, state_dir) {
                    self.problem(
                        &format!("{AT}.dir"),
                        format!(
                            "checkpoint dir {} is inside state_dir {}: a checkpoint next to the state it anchors is no anchor; put it on another volume or host",
                            dir.display(),
                            state_dir.display()
                        ),
                    );
                    return None;
                }
                CheckpointSink::Dir(dir)
            }
            (None, Some(url)) => CheckpointSink::Url(self.url(&format!("{AT}.url"), &url)),
            _ => {
                self.problem(AT, "audit.checkpoint needs `dir` or `url` (one of them)");
                return None;
            }
        };
        Some(CheckpointConfig { every, key_file, sink })
    }

    /// Group names: letters, digits, `-`, `_` and `.`.
    fn groups(&mut self, at: &str, groups: &[String]) {
        for (j, g) in groups.iter().enumerate() {
            if !crate::authz::valid_group(g) {
                self.problem(
                    &format!("{at}[{j}]"),
                    format!("invalid group name {g:?}: use letters, digits, -, _ and ."),
                );
            }
        }
    }

    fn slack(&mut self, raw: RawSlack, tokens: &[ApiToken], users: &[UserGroups]) -> Option<SlackConfig> {
        let api_url = match raw.api_url {
            Some(u) => self.url("slack.api_url", &u),
            None => SlackConfig::DEFAULT_API_URL.to_string(),
        };
        let bot_token = self.secret("slack.bot_token", raw.bot_token.as_deref(), raw.bot_token_file.as_deref());
        if bot_token.is_none() && raw.bot_token.is_none() && raw.bot_token_file.is_none() {
            self.problem("slack", "slack needs `bot_token_file` (or `bot_token`)");
        }
        let signing_secret = self.secret(
            "slack.signing_secret",
            raw.signing_secret.as_deref(),
            raw.signing_secret_file.as_deref(),
        );
        if signing_secret.is_none() && raw.signing_secret.is_none() && raw.signing_secret_file.is_none() {
            self.problem("slack", "slack needs `signing_secret_file` (or `signing_secret`)");
        }
        let channel = self.expand("slack.channel", &raw.channel);
        if channel.trim().is_empty() {
            self.problem("slack.channel", "slack.channel is empty");
        }
        for (id, name) in &raw.users {
            let at = format!("slack.users.{id}");
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                self.problem(&at, format!("invalid Slack user id {id:?}: expected an id such as U024BE7LH"));
            }
            // An approval from Slack counts as this identity's: a name nobody
            // has would approve with no groups, and hide a typo.
            if !tokens.iter().any(|t| &t.name == name) && !users.iter().any(|u| &u.name == name) {
                self.problem(
                    &at,
                    format!("Slack user {id} maps to `{name}`, which is neither an auth.tokens nor an auth.users name"),
                );
            }
        }
        Some(SlackConfig {
            api_url,
            bot_token: bot_token?,
            signing_secret: signing_secret?,
            channel,
            users: raw.users,
        })
    }

    /// `kubernetes:`: named clusters, or the single cluster of
    /// `kubernetes.context` (named `default`).
    fn clusters(&mut self, raw: Option<RawKubernetes>) -> (BTreeMap<String, ClusterSource>, Option<String>) {
        let raw = raw.unwrap_or(RawKubernetes {
            context: None,
            clusters: None,
            default_cluster: None,
        });
        let Some(list) = raw.clusters else {
            let context = raw.context.map(|c| self.expand("kubernetes.context", &c));
            if let Some(name) = &raw.default_cluster
                && name != DEFAULT_CLUSTER
            {
                self.problem(
                    "kubernetes.default_cluster",
                    format!("unknown cluster `{name}`: without kubernetes.clusters the only cluster is `{DEFAULT_CLUSTER}`"),
                );
            }
            let clusters = BTreeMap::from([(DEFAULT_CLUSTER.to_string(), ClusterSource::Auto { context })]);
            return (clusters, Some(DEFAULT_CLUSTER.to_string()));
        };
        if raw.context.is_some() {
            self.problem(
                "kubernetes.context",
                "give `kubernetes.context` or `kubernetes.clusters`, not both: name the context in a cluster (`clusters: {NAME: {context: CTX}}`)",
            );
        }
        let mut clusters = BTreeMap::new();
        for (name, c) in list {
            let at = format!("kubernetes.clusters.{name}");
            if !valid_cluster_name(&name) {
                self.problem(&at, format!("invalid cluster name {name:?}: use letters, digits, `-`, `_` and `.`"));
                continue;
            }
            let source = match (c.in_cluster, c.kubeconfig, c.context) {
                (true, None, None) => ClusterSource::InCluster,
                (true, _, _) => {
                    self.problem(
                        &at,
                        format!("cluster `{name}`: `in_cluster: true` takes no `kubeconfig` or `context`"),
                    );
                    continue;
                }
                (false, kubeconfig, Some(context)) => ClusterSource::Kubeconfig {
                    kubeconfig: kubeconfig.map(|k| self.path(&format!("{at}.kubeconfig"), &k)),
                    context: self.expand(&format!("{at}.context"), &context),
                },
                (false, _, None) => {
                    self.problem(
                        &at,
                        format!("cluster `{name}` needs `context` (with an optional `kubeconfig`) or `in_cluster: true`"),
                    );
                    continue;
                }
            };
            clusters.insert(name, source);
        }
        let default = match raw.default_cluster {
            Some(name) if clusters.contains_key(&name) => Some(name),
            Some(name) => {
                let known: Vec<&str> = clusters.keys().map(String::as_str).collect();
                self.problem(
                    "kubernetes.default_cluster",
                    format!("unknown cluster `{name}`; configured clusters: {}", known.join(", ")),
                );
                None
            }
            // One cluster is the default without saying so.
            None if clusters.len() == 1 => clusters.keys().next().cloned(),
            None => None,
        };
        (clusters, default)
    }

    fn pagerduty(&mut self, raw: RawPagerDuty) -> Option<PagerDutyConfig> {
        let events_url = self.url(
            "pagerduty.events_url",
            raw.events_url.as_deref().unwrap_or(crate::pagerduty::DEFAULT_EVENTS_URL),
        );
        let Some(routing_key) = self.secret("pagerduty.routing_key", raw.routing_key.as_deref(), raw.routing_key_file.as_deref()) else {
            self.problem("pagerduty", "pagerduty needs `routing_key_file` (or `routing_key`)");
            return None;
        };
        Some(PagerDutyConfig { events_url, routing_key })
    }

    /// A secret given inline (maybe `${VAR}`) or as `*_file`.
    fn secret(&mut self, at: &str, inline: Option<&str>, file: Option<&str>) -> Option<String> {
        let value = match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(at, format!("give `{at}` or its `_file` form, not both"));
                return None;
            }
            (Some(v), None) => self.expand(at, v),
            (None, Some(f)) => {
                let path = self.path(&format!("{at}_file"), f);
                match std::fs::read_to_string(&path) {
                    Ok(v) => v.trim().to_string(),
                    Err(e) => {
                        self.problem(&format!("{at}_file"), format!("cannot read {}: {e}", path.display()));
                        return None;
                    }
                }
            }
            (None, None) => return None,
        };
        if value.len() < MIN_SECRET_LEN {
            self.problem(at, format!("secret at `{at}` is shorter than {MIN_SECRET_LEN} characters"));
            return None;
        }
        self.secrets.push(value.clone());
        Some(value)
    }
}

/// The cluster of a config without `kubernetes.clusters`.
pub const DEFAULT_CLUSTER: &str = "default";

fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// How the client for one cluster is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSource {
    /// Without `kubernetes.clusters`: inside a pod, the pod's cluster; else
    /// the kubeconfig (`KUBECONFIG` or `~/.kube/config`) with
    /// `kubernetes.context` or its current context. A context named in the
    /// config always wins over the pod's cluster.
    Auto { context: Option<String> },
    /// The pod's own service account.
    InCluster,
    /// A context of a kubeconfig file (`None`: the default file).
    Kubeconfig { kubeconfig: Option<PathBuf>, context: String },
}

/// `pagerduty:`, checked. The routing key is a secret (redacted everywhere).
#[derive(Clone)]
pub struct PagerDutyConfig {
    pub events_url: String,
    pub routing_key: String,
}

impl std::fmt::Debug for PagerDutyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagerDutyConfig")
            .field("events_url", &self.events_url)
            .field("routing_key", &"<redacted>")
            .finish()
    }
}

/// Whether `path` is `dir` or inside it, after resolving `.`, `..` and
/// symlinks as far as the paths exist (neither needs to exist yet).
fn within(path: &Path, dir: &Path) -> bool {
    resolved(path).starts_with(resolved(dir))
}

fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // Lexically first, so `state/../state/x` cannot hide where it points.
    let mut lexical = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            std::path::Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    // Then through symlinks: the longest existing ancestor, canonicalised,
    // with the rest appended.
    let mut missing = Vec::new();
    let mut existing = lexical.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(missing.iter().rev());
            return out;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_a_file() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.state_db(), PathBuf::from(".pitcrew/state.db"));
        assert_eq!(c.budget_policy.len(), 3);
        assert_eq!(c.max_body, 1 << 20);
    }

    #[test]
    fn spec_example_config_parses() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("alice");
        std::fs::write(&token, "alice-token-123\n").unwrap();
        let text = format!(
            r#"listen: 127.0.0.1:9095
state_dir: .pitcrew
runbooks: [runbooks]
max_body: 1MiB
auth:
  webhook_token: hook-token-xyz
  tokens:
    - {{name: alice, token_file: {}, role: operator}}
prometheus: {{url: http://127.0.0.1:9090}}
http: {{allowed_hosts: [hooks.slack.com, "*.internal.example"]}}
limits: {{global: 30/1m, storm_brake: 20}}
slos:
  - name: checkout-availability
    objective: 99.9%
    window: 30d
    good: sum(rate(x{{code!~"5.."}}[{{{{window}}}}]))
    total: sum(rate(x[{{{{window}}}}]))
  - {{name: batch, objective: 99%, window: 30d, static_remaining: 80%}}
budget_policy:
  - {{above: 50%, auto: [low, medium, high]}}
  - {{above: 25%, auto: [low, medium], approve: [high]}}
  - {{above: 0%,  auto: [low], approve: [medium, high]}}
"#,
            token.display()
        );
        let c = Config::parse(&dir.path().join("pitcrew.yaml"), &text).unwrap();
        assert_eq!(c.tokens[0].token, "alice-token-123");
        assert_eq!(c.slos.len(), 2);
        assert_eq!(c.global_limit.unwrap().count, 30);
        assert_eq!(c.state_dir, dir.path().join(".pitcrew"));
        assert_eq!(c.redactor.text("x alice-token-123 hook-token-xyz"), "x [REDACTED] [REDACTED]");
    }

    #[test]
    fn bad_config_reports_every_problem_with_positions() {
        let text = "listen: nowhere\nlimits: {global: 3/forever}\nslos:\n  - {name: a, objective: 120%, window: 30d, static_remaining: 1%}\nbogus: 1\n";
        let err = Config::parse(Path::new("p.yaml"), text).unwrap_err();
        let ConfigError::Invalid(d) = err else { panic!() };
        // Unknown keys stop serde first; fix it and the rest all show.
        assert!(d.to_string().contains("p.yaml:5:1: unknown key `bogus`"), "{d}");
        let err = Config::parse(Path::new("p.yaml"), &text.replace("bogus: 1\n", "")).unwrap_err();
        let ConfigError::Invalid(d) = err else { panic!() };
        let shown = d.to_string();
        assert!(shown.contains("p.yaml:1:9: invalid listen address"), "{shown}");
        assert!(shown.contains("p.yaml:2:18: invalid rate"), "{shown}");
        assert!(shown.contains("p.yaml:4:26: invalid percentage"), "{shown}");
    }

    #[test]
    fn windows_are_checked_strictly_with_positions() {
        let good = "windows:\n  - {name: business-hours, timezone: Europe/Berlin, days: [mon, fri], from: \"09:00\", to: \"18:00\"}\n  - {name: night, from: \"22:00\", to: \"06:00\"}\n  - {name: black-friday, start: 2026-11-27T00:00:00Z, end: \"2026-12-01T00:00:00+01:00\"}\n";
        let c = Config::parse(Path::new("p.yaml"), good).unwrap();
        assert_eq!(
            c.windows.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            [
                "business-hours (mon,fri 09:00–18:00 Europe/Berlin)",
                "night (daily 22:00–06:00 UTC)",
                "black-friday (2026-11-27T00:00:00Z – 2026-11-30T23:00:00Z)"
            ]
        );
        assert!(c.window("night").is_some() && c.window("day").is_none());
        let bad = "windows:
  - {name: a, timezone: Europe/Berlinn, from: \"09:00\", to: \"18:00\"}
  - {name: b, days: [mon, funday], from: \"9:00\", to: \"18:00\"}
  - {name: c, from: \"09:00\", to: \"18:00\", start: 2026-11-27T00:00:00Z}
  - {name: a, start: 2026-11-27T00:00:00Z, end: 2026-11-26T00:00:00Z}
  - {name: e, start: \"tomorrow\", end: 2026-11-26T00:00:00Z}
  - {name: f, from: \"09:00\"}
  - {name: g, days: [mon], form: \"09:00\"}
";
        let err = Config::parse(Path::new("p.yaml"), bad).unwrap_err().to_string();
        // Unknown keys stop serde first.
        assert!(err.contains("p.yaml:8:28: windows[6]: unknown key `form`"), "{err}");
        let err = Config::parse(Path::new("p.yaml"), &bad.replace("form", "from"))
            .unwrap_err()
            .to_string();
        for says in [
            "p.yaml:2:25: unknown time zone \"Europe/Berlinn\"",
            "p.yaml:3:27: invalid day \"funday\"",
            "p.yaml:3:42: invalid time \"9:00\": expected HH:MM",
            "p.yaml:4:12: window `c` mixes a weekly schedule",
            "p.yaml:5:12: duplicate window name `a`",
            "p.yaml:5:49: `end` must be after `start`",
            "p.yaml:6:22: invalid time \"tomorrow\": expected RFC 3339",
            "p.yaml:7:6: `to` is missing",
        ] {
            assert!(err.contains(says), "missing {says:?} in:\n{err}");
        }
    }

    fn checkpoint_problems(dir: &Path, section: &str) -> String {
        let text = format!("state_dir: state\naudit:\n  checkpoint:\n{section}");
        match Config::parse(&dir.join("pitcrew.yaml"), &text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_store_section_takes_a_postgres_url_without_a_password_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pitcrew.yaml");
        std::fs::write(dir.path().join("pw"), "s3cret-pass\n").unwrap();
        let text = "store: {url: \"postgres://pitcrew@db:5432/pitcrew\", password_file: pw, lease: 5s}\n";
        let store = Config::parse(&file, text).unwrap().store.unwrap();
        assert_eq!(store.password.as_deref(), Some("s3cret-pass"));
        assert_eq!(store.lease, Duration::from_secs(5));
        assert_eq!(
            Config::parse(&file, "store: {url: \"postgres://a@b/c\"}")
                .unwrap()
                .store
                .unwrap()
                .lease,
            Duration::from_secs(15)
        );
        for (text, says) in [
            ("store: {url: \"mysql://a@b/c\"}", "is not a PostgreSQL URL"),
            ("store: {url: \"postgres://a:hunter22@b/c\"}", "holds a password"),
            ("store: {url: \"postgres://a@b/c\", lease: 10ms}", "shorter than 1s"),
            ("store: {url: \"postgres://a@b/c\", passwd: x}", "passwd"),
        ] {
            let err = Config::parse(&file, text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(!err.contains("hunter22"), "the password is not repeated: {err}");
        }
    }

    #[test]
    fn checkpoint_section_parses_with_paths_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let text = "state_dir: state\naudit:\n  checkpoint: {every: 30s, key_file: keys/audit.key, dir: anchors}\n";
        let c = Config::parse(&dir.path().join("pitcrew.yaml"), text).unwrap();
        let cp = c.checkpoint.unwrap();
        assert_eq!(cp.every, Duration::from_secs(30));
        assert_eq!(cp.key_file, dir.path().join("keys/audit.key"));
        assert_eq!(cp.sink, CheckpointSink::Dir(dir.path().join("anchors")));
        let text = "audit:\n  checkpoint: {key_file: k, url: \"http://127.0.0.1:1/cp\"}\n";
        let cp = Config::parse(&dir.path().join("pitcrew.yaml"), text).unwrap().checkpoint.unwrap();
        assert_eq!(cp.every, Duration::from_secs(60), "every defaults to 1m");
        assert_eq!(cp.sink, CheckpointSink::Url("http://127.0.0.1:1/cp".into()));
        assert!(Config::default().checkpoint.is_none());
    }

    #[test]
    fn a_checkpoint_dir_inside_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for inside in ["state", "state/anchors", "./state/x/../anchors", "other/../state/a"] {
            let shown = checkpoint_problems(dir.path(), &format!("    {{key_file: k, dir: {inside}}}\n"));
            assert!(shown.contains("is inside state_dir"), "{inside}: {shown}");
        }
        // Through a symlink that points into the state dir.
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("state"), dir.path().join("link")).unwrap();
        let shown = checkpoint_problems(dir.path(), "    {key_file: k, dir: link/anchors}\n");
        assert!(shown.contains("is inside state_dir"), "{shown}");
        // A sibling whose name merely starts the same is outside.
        assert_eq!(checkpoint_problems(dir.path(), "    {key_file: k, dir: state-anchors}\n"), "");
    }

    #[test]
    fn checkpoint_section_rejects_unknown_keys_and_missing_or_double_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let shown = checkpoint_problems(dir.path(), "    {key_file: k, dir: a, evry: 1m}\n");
        assert!(
            shown.contains("unknown key `evry`") || shown.contains("unknown field `evry`"),
            "{shown}"
        );
        let shown = checkpoint_problems(dir.path(), "    {key_file: k}\n");
        assert!(shown.contains("needs `dir` or `url`"), "{shown}");
        let shown = checkpoint_problems(dir.path(), "    {key_file: k, dir: a, url: \"http://x\"}\n");
        assert!(shown.contains("needs `dir` or `url`"), "{shown}");
        let shown = checkpoint_problems(dir.path(), "    {key_file: k, dir: a, every: 0s}\n");
        assert!(shown.contains("longer than 0"), "{shown}");
        let shown = checkpoint_problems(dir.path(), "    {dir: a}\n");
        assert!(shown.contains("key_file"), "{shown}");
        let shown = checkpoint_problems(dir.path(), "    {key_file: k, dir: a}\n  retention: 1y\n");
        assert!(shown.contains("retention"), "{shown}");
    }
    #[test]
    fn the_server_section_has_defaults_and_is_checked() {
        let c = Config::default();
        assert_eq!(c.server.header_timeout, Duration::from_secs(10));
        assert_eq!(c.server.request_timeout, Duration::from_secs(30));
        assert_eq!(c.server.max_connections, 1024);
        assert!(c.server.allowed_origins.is_empty());
        let text = "server:\n  header_timeout: 200ms\n  request_timeout: 1m\n  max_connections: 8\n  allowed_origins: [\"https://Dash.Example.com/\", \"http://localhost:3000\"]\n";
        let c = Config::parse(Path::new("p.yaml"), text).unwrap();
        assert_eq!(c.server.header_timeout, Duration::from_millis(200));
        assert_eq!(c.server.request_timeout, Duration::from_secs(60));
        assert_eq!(c.server.max_connections, 8);
        assert_eq!(c.server.allowed_origins, ["https://dash.example.com", "http://localhost:3000"]);

        let err = Config::parse(Path::new("p.yaml"), "server:\n  read_timeout: 1s\n").unwrap_err();
        assert!(err.to_string().contains("p.yaml:2:3: server: unknown key `read_timeout`"), "{err}");
        let text = "server:\n  header_timeout: 0s\n  request_timeout: soon\n  max_connections: 0\n  allowed_origins: [\"https://a.example/app\", \"*\"]\n";
        let ConfigError::Invalid(d) = Config::parse(Path::new("p.yaml"), text).unwrap_err() else {
            panic!()
        };
        let shown = d.to_string();
        for needle in [
            "p.yaml:2:19: server.header_timeout must be longer than 0s",
            "p.yaml:3:20: invalid duration",
            "p.yaml:4:20: server.max_connections must be at least 1",
            "p.yaml:5:21: invalid origin \"https://a.example/app\"",
            "invalid origin \"*\"",
        ] {
            assert!(shown.contains(needle), "{needle} not in {shown}");
        }
    }

    #[test]
    fn kubernetes_clusters_are_checked_and_the_single_cluster_form_still_works() {
        let c = Config::default();
        assert_eq!(c.kubernetes_default_cluster.as_deref(), Some(DEFAULT_CLUSTER));
        assert_eq!(c.kubernetes_clusters[DEFAULT_CLUSTER], ClusterSource::Auto { context: None });
        let c = Config::parse(Path::new("p.yaml"), "kubernetes: {context: prod}\n").unwrap();
        assert_eq!(
            c.kubernetes_clusters[DEFAULT_CLUSTER],
            ClusterSource::Auto {
                context: Some("prod".into())
            }
        );
        let c = Config::parse(
            Path::new("/etc/pitcrew/p.yaml"),
            "kubernetes:\n  clusters:\n    eu: {context: eu}\n    us: {kubeconfig: kc, context: us}\n    here: {in_cluster: true}\n",
        )
        .unwrap();
        assert_eq!(c.kubernetes_default_cluster, None, "several clusters and no default");
        assert_eq!(
            c.kubernetes_clusters["us"],
            ClusterSource::Kubeconfig {
                kubeconfig: Some(PathBuf::from("/etc/pitcrew/kc")),
                context: "us".into()
            }
        );
        assert_eq!(c.kubernetes_clusters["here"], ClusterSource::InCluster);
        let c = Config::parse(Path::new("p.yaml"), "kubernetes:\n  clusters:\n    eu: {context: eu}\n").unwrap();
        assert_eq!(
            c.kubernetes_default_cluster.as_deref(),
            Some("eu"),
            "the only cluster is the default"
        );
        for (text, want) in [
            ("kubernetes:\n  context: a\n  clusters: {eu: {context: eu}}\n", "not both"),
            ("kubernetes:\n  clusters: {eu: {kubeconfig: kc}}\n", "needs `context`"),
            ("kubernetes:\n  clusters: {eu: {in_cluster: true, context: x}}\n", "takes no"),
            (
                "kubernetes:\n  default_cluster: us\n  clusters: {eu: {context: eu}}\n",
                "unknown cluster `us`; configured clusters: eu",
            ),
            (
                "kubernetes:\n  clusters: {eu: {context: eu, namespace: x}}\n",
                "unknown key `namespace`",
            ),
        ] {
            let err = Config::parse(Path::new("p.yaml"), text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn the_pagerduty_routing_key_is_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pd"), "0123456789abcdef0123456789abcdef\n").unwrap();
        let c = Config::parse(&dir.path().join("p.yaml"), "pagerduty: {routing_key_file: pd}\n").unwrap();
        let pd = c.pagerduty.as_ref().unwrap();
        assert_eq!(pd.events_url, crate::pagerduty::DEFAULT_EVENTS_URL);
        assert_eq!(pd.routing_key, "0123456789abcdef0123456789abcdef");
        assert_eq!(c.redactor.text("key 0123456789abcdef0123456789abcdef"), "key [REDACTED]");
        assert!(!format!("{pd:?}").contains("0123456789"));
    }

    #[test]
    fn notify_on_defaults_to_every_event_and_refuses_unknown_ones() {
        assert_eq!(Config::default().notify_on, NoticeEvent::ALL);
        let c = Config::parse(Path::new("p.yaml"), "notify:\n  on: [failed, storm]\n").unwrap();
        assert_eq!(c.notify_on, [NoticeEvent::Failed, NoticeEvent::Storm]);
        let c = Config::parse(Path::new("p.yaml"), "notify: {on: []}\n").unwrap();
        assert!(c.notify_on.is_empty());
        let err = Config::parse(Path::new("p.yaml"), "notify:\n  on: [failed, failure]\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("p.yaml:2:16: unknown notice event `failure`"), "{shown}");
        assert!(shown.contains("pending_approval, failed, unknown, escalated, storm"), "{shown}");
    }
}
