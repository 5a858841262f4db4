//! `pitcrew serve`'s HTTP side: the Alertmanager webhook, the API and the
//! probes. Handlers are thin: they check the request, call the engine or the
//! store, and map errors to statuses (a 4xx says what is wrong, a 5xx body is
//! generic and the detail goes to the log). It never reads a request body
//! before the request is authorised, and owns the accept loop so that slow
//! or too many clients cannot hold the process (`serve`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query, Request, State as AxumState};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, Role, normalize_origin};
use crate::engine::Engine;
use crate::guard::Verdict;
use crate::store::{AuditFilter, ExecutionFilter, Health, State, StoreError};

pub mod events;
pub mod ui;

/// Shared by all handlers.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Set on SIGTERM: new requests get 503 while in-flight work finishes.
    pub draining: AtomicBool,
    /// The dashboard's caches and open event streams.
    pub ui: ui::Dashboard,
}

impl AppState {
    pub fn new(engine: Arc<Engine>) -> AppState {
        AppState {
            engine,
            draining: AtomicBool::new(false),
            ui: ui::Dashboard::default(),
        }
    }
}

/// An API error: status plus a message safe to show.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// More fields for the JSON body, beside `error`.
    detail: serde_json::Map<String, Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            detail: serde_json::Map::new(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(id) => ApiError::new(StatusCode::NOT_FOUND, format!("no execution {id}")),
            StoreError::WrongState { id, state } => {
                ApiError::new(StatusCode::CONFLICT, format!("execution {id} is {state}, not pending_approval"))
            }
            e @ StoreError::SelfApproval { .. } => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            StoreError::NotPermitted(refusal) => {
                let mut e = ApiError::new(StatusCode::FORBIDDEN, refusal.to_string());
                e.detail.insert("runbook".into(), json!(refusal.runbook));
                e.detail.insert("permission".into(), json!(refusal.action.permission()));
                e.detail.insert("action".into(), json!(refusal.action));
                e
            }
            other => {
                tracing::error!(error = %crate::diag::chain(&other), "state store failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state store unavailable; retry later")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.detail;
        body.insert("error".into(), Value::String(self.message));
        (self.status, Json(Value::Object(body))).into_response()
    }
}

pub(crate) type Shared = Arc<AppState>;

/// Serves `router(state)` on `listener` until `shutdown` completes, then
/// stops accepting, lets open requests finish (for at most
/// `server.request_timeout`) and returns.
///
/// Limits from `server:`: a connection must send a complete request head
/// within `header_timeout` of opening (and of its previous response, when
/// kept alive), else it is closed; at most `max_connections` are open at
/// once. Past that limit the loop stops accepting, so new connections wait in
/// the kernel's listen backlog and are served as others close: a burst (an
/// Alertmanager re-send after an outage) is delayed, not turned into errors,
/// and waiting costs no file descriptor or task here. Slow clients cannot
/// hold the slots for long, as the header and request timeouts close them.
pub async fn serve(listener: tokio::net::TcpListener, state: Shared, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let limits = state.engine.config().server.clone();
    // The request deadline belongs to the connection, like the header
    // timeout: tests that drive `router` with paused time and a store on
    // its own threads would otherwise see it fire while the store works.
    let app = router(state.clone()).layer(middleware::from_fn_with_state(state, deadline));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout.std());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot before accepting: past the limit, connections queue in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::error!(error = %e, "cannot accept connections");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.request_timeout.std(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at shutdown were dropped");
    }
    Ok(())
}

/// Errors that end one connection before it was accepted, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/alerts/alertmanager", post(webhook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/runbooks", get(runbooks))
        .route("/v1/runbooks/{name}/run", post(run_runbook))
        .route("/v1/executions", get(executions))
        .route("/v1/executions/{id}", get(execution))
        .route("/v1/executions/{id}/approve", post(approve))
        .route("/v1/executions/{id}/deny", post(deny))
        .route("/v1/budget", get(budget))
        .route("/v1/report", get(report))
        .route("/v1/audit", get(audit))
        .route("/-/reload", post(reload))
        .route(crate::slack::INTERACTIONS_PATH, post(crate::slack::interactions))
        .route("/v1/events", get(events::events))
        .route("/v1/guardrails", get(ui::guardrails))
        .route("/v1/audit/verify", get(ui::verify))
        .route("/", get(ui::to_index))
        .route("/ui", get(ui::to_index))
        .route("/ui/", get(ui::index))
        .route("/ui/{file}", get(ui::file))
        // Outermost last: drain, then the browser rules.
        .layer(middleware::from_fn_with_state(state.clone(), browser_rules))
        .layer(middleware::from_fn_with_state(state.clone(), drain))
        .with_state(state)
}

async fn drain(AxumState(state): AxumState<Shared>, req: Request, next: Next) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    next.run(req).await
}

/// Requests a browser may send on a user's behalf, from any page it shows.
///
/// - With no API tokens and remote access not allowed (the API trusts
///   whoever reaches it on loopback), a `Host` that is not a loopback name or
///   address is 421: a page whose DNS name was rebound to 127.0.0.1 reaches
///   this port with its own name in `Host`.
/// - An `Origin` header (browsers send it on cross-site requests and on every
///   POST) not listed in `server.allowed_origins` is 403, on every endpoint.
///   Alertmanager, curl and the CLI send none.
/// - Slack's interactions (`crate::slack`), when Slack is configured, skip
///   the loopback rule: their signature authenticates them, and Slack
///   reaches pitcrew under its public name.
async fn browser_rules(AxumState(state): AxumState<Shared>, req: Request, next: Next) -> Response {
    let config = state.engine.config();
    // Slack's interactions are authenticated by their signature, not by
    // where they come from: Slack reaches pitcrew under its public name.
    let signed = req.uri().path() == crate::slack::INTERACTIONS_PATH && config.slack.is_some();
    if config.tokens.is_empty() && !config.insecure_allow_remote && !signed {
        let host = req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("(not text)"))
            .or(req.uri().authority().map(|a| a.as_str()));
        if let Some(host) = host
            && !is_loopback_host(host)
        {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "host {host:?} is not a loopback name or address: with no auth.tokens configured, only requests to localhost, 127.0.0.1 or [::1] are answered"
                ),
            )
            .into_response();
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        if !origin_allowed(config, origin) {
            let shown = origin.to_str().unwrap_or("(not text)");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("origin {shown:?} is not listed in server.allowed_origins"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn origin_allowed(config: &Config, origin: &HeaderValue) -> bool {
    let Some(origin) = origin.to_str().ok().and_then(|o| normalize_origin(o).ok()) else {
        return false; // `null` (sandboxed pages, file: URLs) and garbage
    };
    config.server.allowed_origins.contains(&origin)
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let port_ok = |p: &str| {
        p.is_empty()
            || p.strip_prefix(':')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once(']') else {
            return false;
        };
        return port_ok(port) && ip.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    let (name, port) = match host.rfind(':') {
        Some(i) => host.split_at(i),
        None => (host, ""),
    };
    if !port_ok(port) {
        return false;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// `server.request_timeout` (applied by `serve`) bounds each request from
/// its head to the response head, body included. When it runs out while the body is still
/// arriving, the client is too slow: 408, and the connection is closed
/// (the rest of the body is never read). When it runs out while the handler
/// works (the store is slow), the fault is ours: a generic 503, which
/// Alertmanager retries (a 4xx it would drop); intake is idempotent, so a
/// retry of alerts stored late counts them as duplicates. A streamed
/// response body (`/v1/audit`) is paced by the client reading it.
async fn deadline(AxumState(state): AxumState<Shared>, req: Request, next: Next) -> Response {
    let limit = state.engine.config().server.request_timeout;
    let progress = Arc::new(AtomicU8::new(BODY_UNTOUCHED));
    let watched = progress.clone();
    let req = req.map(move |body| {
        Body::new(Watched {
            inner: body,
            progress: watched,
        })
    });
    match tokio::time::timeout(limit.std(), next.run(req)).await {
        Ok(response) => response,
        Err(_) if progress.load(Ordering::SeqCst) == BODY_READING => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within server.request_timeout ({limit})"),
            )
            .into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Err(_) => {
            tracing::error!(timeout = %limit, "request handler ran past server.request_timeout");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "request timed out; retry later").into_response()
        }
    }
}

const BODY_UNTOUCHED: u8 = 0;
const BODY_READING: u8 = 1;
const BODY_DONE: u8 = 2;

/// A request body that records whether it is being read, for `deadline`.
struct Watched {
    inner: Body,
    progress: Arc<AtomicU8>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let _ = self
            .progress
            .compare_exchange(BODY_UNTOUCHED, BODY_READING, Ordering::SeqCst, Ordering::SeqCst);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.progress.store(BODY_DONE, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Token comparison in time independent of where, and of whether the
/// lengths, differ: both sides are hashed to 32 bytes first, and the digests
/// compared in constant time (a plain `ct_eq` on the strings returns at once
/// when the lengths differ, which tells an attacker the token's length).
pub fn same_token(given: &str, expected: &str) -> bool {
    let (given, expected) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    given.ct_eq(&expected).into()
}

/// Checks an API token for `need`; returns the actor name.
fn authorize(state: &AppState, headers: &HeaderMap, need: Role) -> Result<String, ApiError> {
    let tokens = &state.engine.config().tokens;
    if tokens.is_empty() {
        // No tokens: serve only listens on loopback (checked at start-up).
        return Ok("api:local".into());
    }
    let given = bearer(headers).ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    // Compare against every token so timing does not tell which one was close.
    let mut found = None;
    for t in tokens {
        if same_token(given, &t.token) {
            found = Some(t);
        }
    }
    let token = found.ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "invalid token"))?;
    if token.role < need {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("token `{}` has role viewer; this needs operator", token.name),
        ));
    }
    Ok(format!("api:{}", token.name))
}

/// A caller with at least the viewer role (its actor name). Extractors from
/// the request head run before a handler's body extractor, so a request
/// without the right token is answered before any of its body is read.
pub struct Viewer(pub String);

/// A caller with the operator role (its actor name); see [`Viewer`].
pub struct Operator(pub String);

impl FromRequestParts<Shared> for Viewer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        authorize(state, &parts.headers, Role::Viewer).map(Viewer)
    }
}

impl FromRequestParts<Shared> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        authorize(state, &parts.headers, Role::Operator).map(Operator)
    }
}

/// API writes carry `Content-Type: application/json`, even with no body: a
/// cross-site form or `no-cors` fetch can only send form or text types, so
/// this keeps a page in the operator's browser from triggering writes.
pub struct JsonWrite;

impl<S: Send + Sync> FromRequestParts<S> for JsonWrite {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let content_type = parts.headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
        if content_type.is_some_and(is_json) {
            return Ok(JsonWrite);
        }
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            match content_type {
                Some(ct) => format!("content type {ct:?} is not application/json; API writes need Content-Type: application/json"),
                None => "no content type; API writes need Content-Type: application/json".into(),
            },
        ))
    }
}

fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/json")
}

async fn webhook(AxumState(state): AxumState<Shared>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let engine = &state.engine;
    let metrics = &engine.metrics;
    let reject = |status: StatusCode, reason: &str, message: String| {
        metrics.rejected(reason);
        ApiError::new(status, message)
    };
    if let Some(expected) = &engine.config().webhook_token {
        match bearer(&headers) {
            Some(given) if same_token(given, expected) => {}
            _ => {
                return Err(reject(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or invalid webhook bearer token".into(),
                ));
            }
        }
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !is_json(content_type) {
        return Err(reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            format!("content type {content_type:?} is not application/json"),
        ));
    }
    let limit = engine.config().max_body as usize;
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than max_body ({limit} bytes)"),
        )
    })?;
    let delivery = crate::alert::parse_webhook(&bytes, Utc::now()).map_err(|e| reject(StatusCode::BAD_REQUEST, e.kind(), e.to_string()))?;
    if delivery.truncated_alerts > 0 {
        metrics.alerts_truncated.inc_by(delivery.truncated_alerts);
        tracing::warn!(truncated = delivery.truncated_alerts, receiver = %delivery.receiver, group = %delivery.group_key, "Alertmanager left alerts out of this notification (max_alerts)");
    }
    // On a task of its own: once the store has the alerts, intake must go
    // on to hand the queued runs to the workers and send its notices even
    // if the sender hangs up meanwhile (Alertmanager's timeout), which
    // drops this handler.
    let alerts = delivery.alerts;
    let intake = tokio::spawn({
        let engine = engine.clone();
        async move { engine.intake(alerts).await }
    });
    let result = intake
        .await
        .map_err(|e| reject(StatusCode::INTERNAL_SERVER_ERROR, "store", format!("intake failed: {e}")))?
        .inspect_err(|_| metrics.rejected("store"))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"accepted": result.accepted, "duplicates": result.duplicates, "reconsidered": result.reconsidered})),
    )
        .into_response())
}

async fn readyz(AxumState(state): AxumState<Shared>) -> Response {
    // Reads may still work on a store that cannot write: ask about writes.
    match state.engine.store.health().await {
        Health::Writable => {}
        Health::Failing(why) | Health::Stopped(why) => {
            tracing::error!(reason = %why, "not ready: the state store cannot write");
            return (StatusCode::SERVICE_UNAVAILABLE, "state store cannot write\n").into_response();
        }
    }
    match state.engine.store.queue_depth().await {
        Ok(depth) => {
            state.engine.metrics.queue_depth.set(depth as i64);
            (
                StatusCode::OK,
                format!("ready: {} runbooks\n", state.engine.runbooks().runbooks.len()),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "state store unavailable\n").into_response()
        }
    }
}

async fn metrics(AxumState(state): AxumState<Shared>) -> Response {
    let engine = &state.engine;
    if let Ok(depth) = engine.store.queue_depth().await {
        engine.metrics.queue_depth.set(depth as i64);
    }
    for b in engine.budgets.all() {
        engine.metrics.budget(&b.slo, b.remaining);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        engine.metrics.render(),
    )
        .into_response()
}

async fn runbooks(AxumState(state): AxumState<Shared>, _: Viewer) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = state
        .engine
        .runbooks()
        .runbooks
        .iter()
        .map(|rb| {
            json!({
                "name": rb.name, "description": rb.description, "owner": rb.owner, "risk": rb.risk,
                "trigger": rb.trigger.as_ref().map(|t| json!({"alertname": t.alertnames, "matchers": t.matchers.iter().map(|m| m.to_string()).collect::<Vec<_>>(), "status": t.status})),
                "params": rb.params.iter().map(|p| json!({"name": p.name, "type": p.kind, "required": p.required})).collect::<Vec<_>>(),
                "guardrails": rb.guardrails,
                "steps": rb.steps.iter().map(|s| json!({"name": s.name, "action": s.action.spec().name, "risk": s.risk})).collect::<Vec<_>>(),
                "digest": rb.digest,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

#[derive(Deserialize)]
struct RunRequest {
    #[serde(default)]
    params: BTreeMap<String, Value>,
    #[serde(default)]
    dry_run: bool,
}

async fn run_runbook(
    AxumState(state): AxumState<Shared>,
    Operator(actor): Operator,
    _: JsonWrite,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let engine = &state.engine;
    let request: RunRequest = if body.is_empty() {
        RunRequest {
            params: BTreeMap::new(),
            dry_run: false,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?
    };
    // One set for the lookup and the resolve, whatever a reload does meanwhile.
    let set = engine.runbooks();
    let rb = set
        .get(&name)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no runbook {name}")))?;
    let overrides: BTreeMap<String, String> = request
        .params
        .into_iter()
        .map(|(k, v)| (k, crate::runbook::template::value_text(&v)))
        .collect();
    let resolved = set
        .resolve(&rb, None, &overrides)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let admission = engine.manual_admission(&rb, resolved, actor, request.dry_run, None).await;
    let id = admission.id.clone();
    let decision = engine.admit(admission, None).await?;
    let state_name = match decision.verdict {
        Verdict::Run => State::Queued,
        Verdict::PendingApproval => State::PendingApproval,
        Verdict::Blocked => State::Blocked,
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"execution_id": id, "state": state_name, "decision": decision})),
    )
        .into_response())
}

/// List pages: `limit` (default 100, at most 1,000).
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

fn parse_limit(text: Option<&str>) -> Result<Option<usize>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(Some(n)),
        Ok(n) if n > MAX_LIMIT => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit {n} is over the maximum of {MAX_LIMIT}; page with the `after` cursor from the Link header"),
        )),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid limit {text:?}: expected a whole number from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// `<path?query>; rel="next"`, the query's values percent-encoded.
fn next_link(path: &str, query: &[(&str, Option<String>)]) -> Option<HeaderValue> {
    let query: Vec<String> = query
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().map(|v| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
        })
        .collect();
    HeaderValue::from_str(&format!("<{path}?{}>; rel=\"next\"", query.join("&"))).ok()
}

#[derive(Deserialize)]
struct ExecutionQuery {
    status: Option<String>,
    runbook: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /v1/executions[?status=&runbook=&limit=&after=]`: newest first, at
/// most `limit` (default 100, at most 1,000). When a page is full, a
/// `Link: </v1/executions?...&after=ID>; rel="next"` header gives the next
/// one: `after` is the id of the page's last execution, and the next page
/// holds the executions listed after it (created earlier, or at the same
/// millisecond with a smaller id). Executions created meanwhile sort before
/// the cursor, so they never shift or repeat a page. An `after` naming no
/// execution is 400.
async fn executions(AxumState(state): AxumState<Shared>, _: Viewer, Query(q): Query<ExecutionQuery>) -> Result<Response, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            let valid: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown status {s:?}; one of {}", valid.join(", ")),
            )
        })?),
    };
    let limit = parse_limit(q.limit.as_deref())?.unwrap_or(DEFAULT_LIMIT);
    if let Some(after) = &q.after {
        match state.engine.store.execution(after).await {
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("after: no execution {after:?} to continue from"),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let list = state
        .engine
        .store
        .executions(ExecutionFilter {
            state: status,
            runbook: q.runbook.clone(),
            fingerprint: None,
            limit,
            after: q.after,
        })
        .await?;
    let next = match list.last() {
        Some(last) if list.len() == limit => next_link(
            "/v1/executions",
            &[
                ("status", q.status),
                ("runbook", q.runbook),
                ("limit", Some(limit.to_string())),
                ("after", Some(last.id.clone())),
            ],
        ),
        _ => None,
    };
    let mut response = Json(serde_json::to_value(list).unwrap_or(Value::Null)).into_response();
    if let Some(link) = next {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

async fn execution(AxumState(state): AxumState<Shared>, _: Viewer, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let exec = state.engine.store.execution(&id).await?;
    Ok(Json(serde_json::to_value(exec).unwrap_or(Value::Null)))
}

async fn approve(
    AxumState(state): AxumState<Shared>,
    Operator(actor): Operator,
    _: JsonWrite,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let exec = state.engine.approve(&id, &actor).await?;
    Ok(Json(json!({"execution_id": exec.id, "state": exec.state, "approved_by": actor})))
}

/// Reads runbooks and plugins again (`Engine::reload`). A set with problems
/// is 422 with each problem as `validate --output json` shows it; the loaded
/// set keeps serving.
async fn reload(AxumState(state): AxumState<Shared>, Operator(actor): Operator, _: JsonWrite) -> Response {
    match state.engine.reload(&actor, "api").await {
        Ok(r) => Json(json!({"reloaded": true, "runbooks": r.runbooks, "plugins": r.plugins, "added": r.added, "removed": r.removed,
            "changed": r.changed, "kept_by_runs": r.kept_by_runs, "note": crate::engine::RELOAD_SCOPE}))
        .into_response(),
        Err(crate::engine::ReloadError::Invalid(problems)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"reloaded": false, "error": format!("{} problem{} found; the loaded runbooks and plugins keep serving", problems.len(), if problems.len() == 1 { "" } else { "s" }), "problems": problems})),
        )
            .into_response(),
        Err(crate::engine::ReloadError::Store(e)) => ApiError::from(e).into_response(),
        // Logged by the engine; the body stays generic like every 5xx.
        Err(crate::engine::ReloadError::Internal(_)) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "reload failed; the loaded runbooks and plugins keep serving").into_response()
        }
    }
}

#[derive(Deserialize, Default)]
struct DenyRequest {
    reason: Option<String>,
}

async fn deny(
    AxumState(state): AxumState<Shared>,
    Operator(actor): Operator,
    _: JsonWrite,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: DenyRequest = if body.is_empty() {
        DenyRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?
    };
    let exec = state.engine.deny(&id, &actor, request.reason).await?;
    Ok(Json(json!({"execution_id": exec.id, "state": exec.state, "denied_by": actor})))
}

async fn budget(AxumState(state): AxumState<Shared>, _: Viewer) -> Result<Json<Value>, ApiError> {
    let mut all = state.engine.budgets.all();
    if all.len() < state.engine.config().slos.len() {
        all = state.engine.budgets.refresh(Utc::now()).await;
    }
    Ok(Json(json!({"slos": all})))
}

#[derive(Deserialize)]
struct ReportQuery {
    since: Option<String>,
}

/// `GET /v1/report[?since=30d]`: the toil report up to now (`pitcrew report`'s JSON).
async fn report(
    AxumState(state): AxumState<Shared>,
    _: Viewer,
    Query(q): Query<ReportQuery>,
) -> Result<Json<crate::report::Report>, ApiError> {
    let back: crate::units::Duration = match q.since.as_deref() {
        None => crate::units::Duration::from_secs(30 * 86_400),
        Some(text) => text
            .parse()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("since: {e} (e.g. 7d, 30d, 12h)")))?,
    };
    let until = state.engine.store.now();
    let since = until.checked_sub_signed(back.chrono()).unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let mut budgets = state.engine.budgets.all();
    if budgets.len() < state.engine.config().slos.len() {
        budgets = state.engine.budgets.refresh(Utc::now()).await;
    }
    let set = state.engine.runbooks();
    Ok(Json(
        crate::report::build(state.engine.store.as_ref(), &set, since, until, &budgets).await?,
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<String>,
    until: Option<String>,
    execution: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// Records read from the store at a time while streaming `/v1/audit`.
const AUDIT_PAGE: usize = 1000;

/// Where a `/v1/audit` stream stands.
enum Pages {
    /// A page read, to send; the filter asks for the page after it.
    Ready(Vec<crate::audit::Record>, AuditFilter),
    /// The next page is to be read.
    Fetch(AuditFilter),
    /// The store failed: end the body with an error.
    Failed,
    Done,
}

/// RFC 3339, or a duration meaning "that long ago" (`2h`).
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = text
        .parse::<crate::units::Duration>()
        .map_err(|_| format!("invalid time {text:?}: expected RFC 3339 (2026-01-01T12:00:00Z) or a duration ago (2h)"))?;
    chrono::TimeDelta::try_milliseconds(ago.as_millis() as i64)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("invalid time {text:?}: too far back"))
}

/// `GET /v1/audit[?since=&until=&execution=&limit=&after=]`: JSON lines in
/// `seq` order, streamed: records are read from the store a page at a time
/// as the client takes them, so the whole log is never in memory. `after=SEQ`
/// starts after that record; as `seq` only grows, records appended meanwhile
/// come after every cursor and never shift a page. Without `limit`, every
/// matching record is sent. With `limit` (at most 1,000), at most that many,
/// and when there may be more a `Link: </v1/audit?...&after=SEQ>; rel="next"`
/// header gives the next page (relative `since`/`until` fixed as RFC 3339 so
/// the window does not slide between pages). A store error on a later page
/// cuts the stream (the connection is aborted, not ended as if complete).
async fn audit(AxumState(state): AxumState<Shared>, _: Viewer, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    let now = Utc::now();
    let time = |t: &Option<String>| {
        t.as_deref()
            .map(|t| parse_time(t, now))
            .transpose()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
    };
    let limit = parse_limit(q.limit.as_deref())?;
    let after = q
        .after
        .as_deref()
        .map(|a| {
            a.parse::<u64>()
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid after {a:?}: expected a record's seq")))
        })
        .transpose()?;
    let filter = AuditFilter {
        since: time(&q.since)?,
        until: time(&q.until)?,
        execution: q.execution,
        fingerprint: None,
        after_seq: after,
        limit: Some(limit.unwrap_or(AUDIT_PAGE)),
    };
    let store = state.engine.store.clone();
    // The first page before the status line: a store that cannot answer is a
    // 503, not a 200 with an empty body.
    let first = store.audit(filter.clone()).await?;
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    if let (Some(limit), Some(last)) = (limit, first.last())
        && first.len() == limit
    {
        let rfc3339 = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        if let Some(link) = next_link(
            "/v1/audit",
            &[
                ("since", rfc3339(filter.since)),
                ("until", rfc3339(filter.until)),
                ("execution", filter.execution.clone()),
                ("limit", Some(limit.to_string())),
                ("after", Some(last.seq.to_string())),
            ],
        ) {
            response_headers.insert(header::LINK, link);
        }
    }
    // With a limit, one page is the whole answer; without, page on to the end.
    let more = limit.is_none();
    let pages = futures::stream::unfold(Pages::Ready(first, filter), move |mut at| {
        let store = store.clone();
        async move {
            loop {
                match at {
                    Pages::Done => return None,
                    Pages::Failed => return Some((Err(std::io::Error::other("state store failed")), Pages::Done)),
                    Pages::Fetch(filter) => {
                        at = match store.audit(filter.clone()).await {
                            Ok(page) => Pages::Ready(page, filter),
                            Err(e) => {
                                tracing::error!(error = %crate::diag::chain(&e), "audit stream cut: state store failed");
                                Pages::Failed
                            }
                        }
                    }
                    Pages::Ready(page, mut filter) => {
                        let last = page.last()?;
                        let full = Some(page.len()) == filter.limit;
                        filter.after_seq = Some(last.seq);
                        let mut chunk = Vec::with_capacity(page.len() * 512);
                        for r in &page {
                            serde_json::to_writer(&mut chunk, r).map_err(std::io::Error::other).ok()?;
                            chunk.push(b'\n');
                        }
                        let next = if more && full { Pages::Fetch(filter) } else { Pages::Done };
                        return Some((Ok(Bytes::from(chunk)), next));
                    }
                }
            }
        }
    });
    Ok((response_headers, Body::from_stream(pages)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal_whatever_their_lengths() {
        assert!(same_token("operator-secret-1", "operator-secret-1"));
        for given in [
            "",
            "operator-secret-",
            "operator-secret-12",
            "operator-secret-2",
            "OPERATOR-SECRET-1",
        ] {
            assert!(!same_token(given, "operator-secret-1"), "{given:?}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:9095",
            "LocalHost.",
            "a.b.localhost:1",
            "127.0.0.1",
            "127.9.9.9:80",
            "[::1]",
            "[::1]:9095",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]:80",
            "[::1",
            "::1",
            "localhost:",
            "localhost:x",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
