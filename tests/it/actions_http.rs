//! The `http` action against a local server that records what it receives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use pitcrew::action::{ActionError, DryRun};

use crate::realparts::Harness;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A server on 127.0.0.1:0 that records every request. Paths:
/// `/echo` answers the request as JSON, `/status/N` answers N with a long
/// body, `/big` 2 MiB, `/redirect` a 302, `/text` plain text, `/hang`
/// never answers.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Server {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let log = log.clone();
            async move { answer(req, port, &log).await }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { port, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// A harness whose config lists exactly this server.
    fn harness(&self) -> Harness {
        Harness::new(&format!("http: {{allowed_hosts: [\"127.0.0.1:{}\"]}}\n", self.port))
    }
}

async fn answer(req: Request<Body>, port: u16, log: &Mutex<Vec<Seen>>) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect(),
        body,
    };
    log.lock().unwrap().push(seen.clone());
    let path = seen.path.clone();
    match path.as_str() {
        "/echo" => axum::Json(json!({
            "method": seen.method,
            "query": seen.query,
            "headers": seen.headers,
            "body": String::from_utf8_lossy(&seen.body),
        }))
        .into_response(),
        "/big" => ([(header::CONTENT_TYPE, "application/json")], vec![b'x'; 2 << 20]).into_response(),
        "/redirect" => (StatusCode::FOUND, [(header::LOCATION, format!("http://127.0.0.1:{port}/echo"))]).into_response(),
        "/text" => ([(header::CONTENT_TYPE, "text/plain")], "hello").into_response(),
        "/hang" => std::future::pending().await,
        p if p.starts_with("/status/") => {
            let code: u16 = p["/status/".len()..].parse().unwrap();
            let auth = seen.headers.get("authorization").cloned().unwrap_or_default();
            // A server that echoes credentials in its errors: pitcrew must not repeat them.
            let text = format!("boom auth={auth} {}", "y".repeat(300));
            (StatusCode::from_u16(code).unwrap(), text).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::test]
async fn get_sends_query_and_headers_and_parses_the_json_answer() {
    let server = Server::start().await;
    let out = server
        .harness()
        .run(
            "http",
            json!({
                "url": server.url("/echo"),
                "query": {"q": "a b&c=d", "n": 1},
                "headers": {"X-Trace": "t-1"},
            }),
        )
        .await
        .unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(out["truncated"], false);
    assert_eq!(out["headers"]["content-type"], "application/json");
    assert_eq!(out["body"]["method"], "GET");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].query.as_deref(), Some("n=1&q=a+b%26c%3Dd"));
    assert_eq!(seen[0].headers["x-trace"], "t-1");
    assert!(seen[0].headers["user-agent"].starts_with("pitcrew/"));
}

#[tokio::test]
async fn bodies_go_out_as_json_or_as_given() {
    let server = Server::start().await;
    let h = server.harness();
    let out = h
        .run(
            "http",
            json!({"method": "POST", "url": server.url("/echo"), "body": {"size": 200, "pool": "main"}}),
        )
        .await
        .unwrap();
    assert_eq!(out["body"]["method"], "POST");
    h.run(
        "http",
        json!({"method": "put", "url": server.url("/echo"), "body": "raw text, {not json}", "headers": {"Content-Type": "text/plain"}}),
    )
    .await
    .unwrap();
    h.run("http", json!({"method": "DELETE", "url": server.url("/echo")}))
        .await
        .unwrap();
    let seen = server.seen();
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[0].body).unwrap(),
        json!({"size": 200, "pool": "main"})
    );
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(seen[1].body, b"raw text, {not json}");
    assert_eq!(seen[1].headers["content-type"], "text/plain");
    assert_eq!(seen[2].method, "DELETE");
    assert!(seen[2].body.is_empty());
}

#[tokio::test]
async fn expect_status_decides_success_and_failures_show_status_and_body() {
    let server = Server::start().await;
    let h = server.harness();
    let out = h
        .run("http", json!({"url": server.url("/status/404"), "expect_status": [200, 404]}))
        .await
        .unwrap();
    assert_eq!(out["status"], 404);
    assert!(out["body"].as_str().unwrap().starts_with("boom"));
    h.run("http", json!({"url": server.url("/status/201"), "expect_status": "201"}))
        .await
        .unwrap();

    let err = h.run("http", json!({"url": server.url("/status/503")})).await.unwrap_err();
    let ActionError::Failed(msg) = &err else { panic!("{err:?}") };
    assert!(msg.contains("status 503 (expected 2xx)"), "{msg}");
    // The first 200 characters of the body, no more.
    let body_start = msg.find("boom").unwrap();
    assert_eq!(msg[body_start..].trim_end_matches('…').chars().count(), 200, "{msg}");

    let err = h
        .run("http", json!({"url": server.url("/echo"), "expect_status": 204}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("status 200 (expected 204)"), "{err}");
    let err = h
        .run("http", json!({"url": server.url("/echo"), "expect_status": 42}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ActionError::Input { ref field, .. } if field == "expect_status"),
        "{err:?}"
    );
}

#[tokio::test]
async fn large_bodies_are_capped_and_text_stays_text() {
    let server = Server::start().await;
    let h = server.harness();
    let out = h.run("http", json!({"url": server.url("/big")})).await.unwrap();
    assert_eq!(out["truncated"], true);
    assert_eq!(out["body"].as_str().unwrap().len(), pitcrew::action::http::BODY_CAP);
    let out = h.run("http", json!({"url": server.url("/text")})).await.unwrap();
    assert_eq!(out["body"], "hello");
    assert_eq!(out["truncated"], false);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = Server::start().await;
    let err = server
        .harness()
        .run("http", json!({"url": server.url("/redirect")}))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("status 302") && msg.contains("redirects are not followed"), "{msg}");
    assert!(msg.contains(&format!("Location: http://127.0.0.1:{}/echo", server.port)), "{msg}");
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/redirect"]);
}

#[tokio::test]
async fn hosts_not_in_allowed_hosts_get_nothing() {
    let server = Server::start().await;
    for allowed in [
        "[]".to_string(),
        "[api.example.com]".to_string(),
        // The right host on another port is another service.
        format!("[\"127.0.0.1:{}\"]", server.port.wrapping_add(1).max(1)),
    ] {
        let h = Harness::new(&format!("http: {{allowed_hosts: {allowed}}}\n"));
        for method in ["GET", "POST"] {
            let err = h
                .run("http", json!({"method": method, "url": server.url("/echo")}))
                .await
                .unwrap_err();
            assert!(matches!(err, ActionError::Refused(_)), "{allowed}: {err:?}");
            assert!(err.to_string().contains("not in http.allowed_hosts"), "{err}");
        }
    }
    assert!(server.seen().is_empty(), "{:?}", server.seen());
}

#[tokio::test]
async fn a_wildcard_never_unlocks_loopback() {
    let server = Server::start().await;
    let h = Harness::new("http: {allowed_hosts: [\"*.localhost\", \"*.0.0.1\", \"*.1\"]}\n");
    for host in ["127.0.0.1", "localhost", "app.localhost"] {
        let url = format!("http://{host}:{}/echo", server.port);
        let err = h.run("http", json!({"url": url})).await.unwrap_err();
        match &err {
            ActionError::Refused(_) => {}
            // app.localhost may not resolve here at all; then nothing is sent either.
            ActionError::Unavailable(m) if host == "app.localhost" && m.contains("cannot resolve") => {}
            other => panic!("{host}: {other:?}"),
        }
    }
    assert!(server.seen().is_empty(), "{:?}", server.seen());
}

#[tokio::test]
async fn an_exact_host_name_entry_allows_loopback_through_the_pinned_address() {
    let server = Server::start().await;
    let h = Harness::new(&format!("http: {{allowed_hosts: [\"localhost:{}\"]}}\n", server.port));
    let out = h
        .run("http", json!({"url": format!("http://localhost:{}/echo", server.port)}))
        .await
        .unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(server.seen()[0].headers["host"], format!("localhost:{}", server.port));
}

#[tokio::test]
async fn authorization_and_cookie_values_never_show() {
    let server = Server::start().await;
    let h = server.harness();
    let headers = json!({"Authorization": "Bearer s3cret-token-xyz", "Cookie": "session=c00kie-value-123"});
    let out = h
        .run("http", json!({"url": server.url("/echo"), "headers": headers}))
        .await
        .unwrap();
    // The server got them...
    assert_eq!(server.seen()[0].headers["authorization"], "Bearer s3cret-token-xyz");
    // ...and echoed them, but the output does not carry them.
    let shown = out.to_string();
    assert!(
        !shown.contains("s3cret-token-xyz") && !shown.contains("c00kie-value-123"),
        "{shown}"
    );
    assert!(shown.contains("[REDACTED]"), "{shown}");

    let err = h
        .run("http", json!({"url": server.url("/status/500"), "headers": headers}))
        .await
        .unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("boom auth=[REDACTED]"), "{shown}");
    assert!(!shown.contains("s3cret-token-xyz"), "{shown}");

    let err = h
        .run(
            "http",
            json!({"url": server.url("/echo"), "headers": {"Authorization": "Bearer s3cret-token-xyz\nX-Evil: 1"}}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ActionError::Input { field, .. } if field == "headers.Authorization"),
        "{err:?}"
    );
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn a_silent_server_times_the_step_out() {
    let server = Server::start().await;
    let started = std::time::Instant::now();
    let err = server
        .harness()
        .run("http", json!({"url": server.url("/hang"), "timeout": "300ms"}))
        .await
        .unwrap_err();
    assert!(matches!(err, ActionError::Timeout(_)), "{err:?}");
    assert_eq!(err.to_string(), "timed out after 300ms");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn only_reads_run_in_a_dry_run() {
    let server = Server::start().await;
    let mut h = server.harness();
    let http = h.registry.get("http").unwrap().clone();
    assert_eq!(http.dry_run(&json!({"url": "http://x"})), DryRun::Run);
    assert_eq!(http.dry_run(&json!({"method": "HEAD"})), DryRun::Run);
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_eq!(http.dry_run(&json!({"method": m})), DryRun::Skip, "{m}");
    }
    h.dry_run = true;
    h.run("http", json!({"url": server.url("/echo")})).await.unwrap();
    let err = h
        .run("http", json!({"method": "POST", "url": server.url("/echo")}))
        .await
        .unwrap_err();
    assert!(matches!(err, ActionError::Refused(_)), "{err:?}");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_sent() {
    let server = Server::start().await;
    let h = server.harness();
    for (with, field) in [
        (json!({"url": server.url("/echo"), "method": "TRACE"}), "method"),
        (json!({"url": "ftp://127.0.0.1/x"}), "url"),
        (json!({"url": format!("http://user:pw@127.0.0.1:{}/echo", server.port)}), "url"),
        (
            json!({"url": server.url("/echo"), "headers": {"bad header": "x"}}),
            "headers.bad header",
        ),
    ] {
        let err = h.run("http", with.clone()).await.unwrap_err();
        assert!(matches!(&err, ActionError::Input { field: f, .. } if f == field), "{with}: {err:?}");
    }
    assert!(server.seen().is_empty());
}

/// The attack: a label of `..` in a path segment is percent-encoded to
/// `%2E%2E`, which URL parsers resolve like `..`: the POST, credentials
/// included, would go to `/v1/resize`. The step fails before any request.
#[tokio::test]
async fn a_dot_segment_from_a_label_fails_the_step_before_any_request() {
    let server = Server::start().await;
    let rb = format!(
        r#"apiVersion: pitcrew/v1
name: resize
trigger: {{alertname: PoolFull}}
params:
  pool: {{default: "{{{{alert.labels.pool}}}}"}}
steps:
  - name: resize
    action: http
    with:
      method: POST
      url: "http://127.0.0.1:{port}/v1/pools/{{{{params.pool}}}}/resize"
      headers: {{Authorization: "Bearer tok-123456"}}
"#,
        port = server.port
    );
    let h = crate::support::Harness::new(&rb, &format!("http: {{allowed_hosts: [\"127.0.0.1:{}\"]}}\n", server.port));
    for (i, pool) in ["..", "."].into_iter().enumerate() {
        let labels = [("alertname", "PoolFull"), ("pool", pool)];
        let (status, _) = h.post(&crate::support::payload(vec![crate::support::alert(&labels)])).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        h.run_queued().await;
        let list = h.store().executions(pitcrew::store::ExecutionFilter::default()).await.unwrap();
        assert_eq!(list.len(), i + 1);
        let id = &list.iter().find(|e| e.params["pool"] == pool).unwrap().id;
        let exec = h.store().execution(id).await.unwrap();
        assert_eq!(exec.state, pitcrew::store::State::Failed, "{pool}");
        let error = exec.steps[0].error.clone().unwrap_or_default();
        assert!(
            error.contains("URL path segment 3 renders to") && error.contains("must not be empty, `.` or `..`"),
            "{pool}: {error}"
        );
        assert!(server.seen().is_empty(), "{pool}: {:?}", server.seen());
    }

    // The same runbook with an ordinary value does reach the server.
    let labels = [("alertname", "PoolFull"), ("pool", "p1")];
    h.post(&crate::support::payload(vec![crate::support::alert(&labels)])).await;
    h.run_queued().await;
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/pools/p1/resize");
}
