//! `GET /v1/events`: a server-sent-events stream of what happens, for pages
//! that update without reloading (the dashboard).
//!
//! The stream tails the audit log from the store, so it shows what every
//! replica sharing a PostgreSQL store did, not only this process: each turn
//! reads the records after the last one sent. It is woken at once by this
//! process's own commits (`Store::commits`) and otherwise polls every
//! [`POLL`], which is how other replicas' records arrive. A client that reads
//! slowly holds at most one page: the next page is read from the store only
//! when the last one was taken, so nothing queues in memory for it. Each
//! event carries a record's envelope (seq, time, kind, actor, execution,
//! runbook, target), never its data; a page fetches what it shows through
//! the API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, Shared, Viewer};
use crate::store::AuditFilter;

/// Records read from the store per turn.
const PAGE: usize = 200;
/// How often a stream looks for records written by other processes.
pub const POLL: Duration = Duration::from_secs(2);
/// A comment line this often when nothing happens, so proxies keep the
/// connection and a client can tell a quiet stream from a dead one.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Streams open now. Each holds a connection for as long as a page is open,
/// so they may take at most half of `server.max_connections`: the rest stay
/// for the webhook and the API.
#[derive(Default)]
pub struct Streams {
    open: Arc<AtomicUsize>,
}

/// One open stream's place in [`Streams`], given back when the stream ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Streams {
    fn take(&self, limit: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.open.clone()))
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    after: Option<String>,
}

/// Where a stream stands in the log.
#[derive(Clone, Copy)]
enum Cursor {
    /// No record sent yet: records from this time on.
    Since(DateTime<Utc>),
    /// After this record.
    After(u64),
}

struct Tail {
    state: Shared,
    cursor: Cursor,
    commits: Option<tokio::sync::watch::Receiver<u64>>,
    last_sent: Instant,
    opened: bool,
    failed: bool,
    _slot: Slot,
}

/// `GET /v1/events[?after=SEQ]` (viewer): `text/event-stream`. Every audit
/// record becomes an event `audit` with `id: SEQ` and the record's envelope
/// as JSON data. From `after` (or the `Last-Event-ID` header) on, so a
/// client that reconnects misses nothing; without either, from now on.
/// 503 when half of `server.max_connections` are streams already. The
/// stream ends when the server drains, and is cut (not ended) when the store
/// fails, so a client tells that from a clean end and reconnects.
pub async fn events(
    AxumState(state): AxumState<Shared>,
    _: Viewer,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let given = q
        .after
        .or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string));
    let after = given
        .map(|a| {
            a.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid after {a:?}: expected a record's seq")))
        })
        .transpose()?;
    let limit = (state.engine.config().server.max_connections / 2).max(1);
    let slot = state.ui.events.take(limit).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{limit} event streams are open, the most this server keeps (half of server.max_connections); retry later"),
        )
    })?;
    let store = state.engine.store.clone();
    let tail = Tail {
        cursor: match after {
            Some(seq) => Cursor::After(seq),
            None => Cursor::Since(store.now()),
        },
        commits: store.commits(),
        state,
        last_sent: Instant::now(),
        opened: false,
        failed: false,
        _slot: slot,
    };
    let body = Body::from_stream(futures::stream::unfold(tail, next));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx would otherwise hold the events back in its buffer.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The stream's next chunk: a page of events, a keepalive, or the end.
async fn next(mut t: Tail) -> Option<(Result<Bytes, std::io::Error>, Tail)> {
    if t.failed {
        return None;
    }
    if !t.opened {
        // At once, so the client knows the stream is open before anything happens.
        t.opened = true;
        return Some((Ok(Bytes::from_static(b": pitcrew events\n\n")), t));
    }
    loop {
        if t.state.draining.load(Ordering::SeqCst) {
            return None;
        }
        let filter = match t.cursor {
            Cursor::Since(time) => AuditFilter {
                since: Some(time),
                limit: Some(PAGE),
                ..AuditFilter::default()
            },
            Cursor::After(seq) => AuditFilter {
                after_seq: Some(seq),
                limit: Some(PAGE),
                ..AuditFilter::default()
            },
        };
        match t.state.engine.store.audit(filter).await {
            Err(e) => {
                tracing::error!(error = %crate::diag::chain(&e), "event stream cut: state store failed");
                t.failed = true;
                return Some((Err(std::io::Error::other("state store failed")), t));
            }
            Ok(page) if !page.is_empty() => {
                let mut chunk = Vec::with_capacity(page.len() * 200);
                for r in &page {
                    let envelope = json!({"seq": r.seq, "ts": r.ts, "kind": r.kind, "actor": r.actor,
                        "execution_id": r.execution_id, "runbook": r.runbook, "target": r.target});
                    chunk.extend_from_slice(format!("id: {}\nevent: audit\ndata: {envelope}\n\n", r.seq).as_bytes());
                }
                if let Some(last) = page.last() {
                    t.cursor = Cursor::After(last.seq);
                }
                t.last_sent = Instant::now();
                return Some((Ok(Bytes::from(chunk)), t));
            }
            Ok(_) => {}
        }
        let commit = async {
            match &mut t.commits {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        t.commits = None; // the store is gone: polling finds out
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = commit => {}
            () = tokio::time::sleep(POLL) => {}
        }
        if t.last_sent.elapsed() >= KEEPALIVE {
            t.last_sent = Instant::now();
            return Some((Ok(Bytes::from_static(b": keepalive\n\n")), t));
        }
    }
}
