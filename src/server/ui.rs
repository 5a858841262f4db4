//! The web dashboard (`/ui/`): its assets, built into the binary, and the two
//! read-only endpoints only it needed — guardrail state and the audit chain's
//! verification. Everything it shows comes from the viewer API, which
//! redacts secrets; the page adds no path of its own to the data.
//!
//! The assets are plain HTML, CSS and JavaScript (no framework, no build
//! step). The page loads them by a name carrying their content hash, so a
//! browser may keep them for good, while the page itself is revalidated by
//! its ETag. A strict Content-Security-Policy allows only these same-origin
//! files: no inline script or style, no other host.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, Shared, Viewer};

const INDEX: &str = include_str!("../../assets/ui/index.html");
const CSS: &str = include_str!("../../assets/ui/app.css");
const JS: &str = include_str!("../../assets/ui/app.js");

/// Only this origin's files; nothing inline, no frames, no forms posted away.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One built-in file as served.
struct Asset {
    body: String,
    content_type: &'static str,
    /// A strong ETag: the content's hash.
    etag: String,
    /// The first hex digits of the hash, for the immutable file name.
    short: String,
}

fn asset(body: String, content_type: &'static str) -> Asset {
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    Asset {
        etag: format!("\"{hash}\""),
        short: hash[..16].to_string(),
        body,
        content_type,
    }
}

struct Assets {
    index: Asset,
    css: Asset,
    js: Asset,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let css = asset(CSS.to_string(), "text/css; charset=utf-8");
    let js = asset(JS.to_string(), "text/javascript; charset=utf-8");
    let index = INDEX
        .replace("app.css", &format!("app.{}.css", css.short))
        .replace("app.js", &format!("app.{}.js", js.short));
    Assets {
        index: asset(index, "text/html; charset=utf-8"),
        css,
        js,
    }
});

/// The page and its files as the browser first loads them, in bytes.
pub fn first_load_bytes() -> usize {
    let a = &*ASSETS;
    a.index.body.len() + a.css.body.len() + a.js.body.len()
}

/// Headers every dashboard response carries.
fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn serve_asset(a: &'static Asset, request: &HeaderMap, cache: &'static str) -> Response {
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == a.etag || tag.trim() == "*"));
    let etag = HeaderValue::from_str(&a.etag).expect("a hex ETag is a header value");
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body.as_str()).into_response()
    };
    response.headers_mut().insert(header::ETAG, etag);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    hardened(response)
}

/// `GET /ui/`: revalidated on every load, so a new pitcrew's page (and
/// through it, its new files) is seen at once.
pub async fn index(headers: HeaderMap) -> Response {
    serve_asset(&ASSETS.index, &headers, "no-cache")
}

/// `GET /ui/{file}`: `app.HASH.css` and `app.HASH.js`, kept for good (a
/// change makes a new name); the plain names too, revalidated.
pub async fn file(axum::extract::Path(file): axum::extract::Path<String>, headers: HeaderMap) -> Response {
    let a = &*ASSETS;
    const FOREVER: &str = "public, max-age=31536000, immutable";
    match file.as_str() {
        f if f == format!("app.{}.css", a.css.short) => serve_asset(&a.css, &headers, FOREVER),
        f if f == format!("app.{}.js", a.js.short) => serve_asset(&a.js, &headers, FOREVER),
        "app.css" => serve_asset(&a.css, &headers, "no-cache"),
        "app.js" => serve_asset(&a.js, &headers, "no-cache"),
        _ => hardened(ApiError::new(StatusCode::NOT_FOUND, format!("no dashboard file {file:?}")).into_response()),
    }
}

/// `GET /` and `GET /ui`: to the dashboard.
pub async fn to_index() -> Redirect {
    Redirect::to("/ui/")
}

/// What the dashboard keeps between requests.
#[derive(Default)]
pub struct Dashboard {
    verified: Arc<Mutex<Option<Verified>>>,
    /// One walk of the chain at a time, however many pages ask.
    walking: tokio::sync::Mutex<()>,
    pub(super) events: super::events::Streams,
}

/// The last verification of the audit chain.
#[derive(Clone, Serialize)]
struct Verified {
    intact: bool,
    /// Records checked (up to the break, when broken).
    records: u64,
    broken: Option<Value>,
    checked_at: String,
    #[serde(skip)]
    at: Option<Instant>,
}

/// A verification this recent is shown as it is, not walked again.
const VERIFY_FRESH: Duration = Duration::from_secs(60);

fn fresh(cache: &Mutex<Option<Verified>>) -> Option<Verified> {
    let cached = cache.lock().expect("verify cache lock").clone()?;
    cached.at.is_some_and(|at| at.elapsed() < VERIFY_FRESH).then_some(cached)
}

/// `GET /v1/audit/verify`: what `pitcrew audit verify` says of the hash
/// chain, walked at most once a minute whatever the number of callers (the
/// walk reads the whole log). The walk runs on its own task and caches its
/// answer, so a request that times out does not waste it.
pub async fn verify(AxumState(state): AxumState<Shared>, _: Viewer) -> Result<Json<Value>, ApiError> {
    let cache = &state.ui.verified;
    if let Some(v) = fresh(cache) {
        return Ok(Json(json!(v)));
    }
    let _walking = state.ui.walking.lock().await;
    if let Some(v) = fresh(cache) {
        return Ok(Json(json!(v)));
    }
    let store = state.engine.store.clone();
    let keep = cache.clone();
    let walk = tokio::spawn(async move {
        let checked_at = store.now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let v = match store.verify_audit().await? {
            Ok(records) => Verified {
                intact: true,
                records,
                broken: None,
                checked_at,
                at: Some(Instant::now()),
            },
            Err(broken) => Verified {
                intact: false,
                records: broken.seq.saturating_sub(1),
                broken: Some(json!({"seq": broken.seq, "reason": broken.reason})),
                checked_at,
                at: Some(Instant::now()),
            },
        };
        *keep.lock().expect("verify cache lock") = Some(v.clone());
        Ok::<_, crate::store::StoreError>(v)
    });
    match walk.await {
        Ok(v) => Ok(Json(json!(v?))),
        Err(e) => {
            tracing::error!(error = %e, "audit verification task failed");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit verification failed"))
        }
    }
}

/// Cooldowns listed per runbook, at most (the newest).
const COOLDOWNS_SHOWN: usize = 100;

/// `GET /v1/guardrails`: the guardrail state a person asks about — which
/// escalation breakers are tripped, which cooldowns still run (per runbook
/// and target, until when). Each runbook's cooldowns are an index range over
/// its window.
pub async fn guardrails(AxumState(state): AxumState<Shared>, _: Viewer) -> Result<Json<Value>, ApiError> {
    let store = &state.engine.store;
    let now = store.now();
    let breakers = store.breakers().await?;
    let set = state.engine.runbooks();
    let mut cooldowns = Vec::new();
    for rb in &set.runbooks {
        let Some(cooldown) = rb.guardrails.cooldown else { continue };
        let window = chrono::TimeDelta::try_milliseconds(cooldown.as_millis() as i64).unwrap_or(chrono::TimeDelta::MAX);
        let since = now.checked_sub_signed(window).unwrap_or(DateTime::<Utc>::MIN_UTC);
        for (target, last) in store.recent_runs(&rb.name, since, COOLDOWNS_SHOWN).await? {
            let until = last.checked_add_signed(window).unwrap_or(DateTime::<Utc>::MAX_UTC);
            cooldowns.push(json!({
                "runbook": rb.name, "target": target, "cooldown": cooldown.to_string(),
                "last_run_at": last.to_rfc3339_opts(SecondsFormat::Secs, true),
                "until": until.to_rfc3339_opts(SecondsFormat::Secs, true),
            }));
        }
    }
    // What the window guardrails would say of an automated run now: the
    // same checks a decision records.
    let config = state.engine.config();
    let windows: Vec<Value> = set
        .runbooks
        .iter()
        .flat_map(|rb| {
            crate::guard::window_checks(rb, config, now, true)
                .into_iter()
                .map(move |(check, verdict, detail)| json!({"runbook": rb.name, "check": check, "verdict": verdict, "detail": detail}))
        })
        .collect();
    Ok(Json(json!({
        "now": now.to_rfc3339_opts(SecondsFormat::Secs, true),
        "breakers": breakers,
        "cooldowns": cooldowns,
        "windows": windows,
    })))
}
