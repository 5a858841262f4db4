//! The webhook and API: durable intake, dedupe, bad input, auth, audit.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use pitcrew::audit::{Event, kind};
use pitcrew::store::{AuditFilter, ExecutionFilter, State};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::support::{Harness, alert, payload, resolved};

const ECHO: &str = r#"apiVersion: pitcrew/v1
name: echo
trigger: {alertname: Echo}
params:
  value: {default: "{{alert.labels.value}}"}
  target: {default: "{{alert.labels.target}}"}
target: "{{params.target}}"
steps:
  - name: echo
    action: exec
    with: {command: ["/bin/echo", "{{params.value}}"]}
  - name: note
    action: log
    with: {message: "echoed {{steps.echo.output.stdout}}"}
"#;

#[tokio::test]
async fn accepted_alerts_are_stored_before_the_202_and_duplicates_are_counted() {
    let h = Harness::new(ECHO, "");
    let body = payload(vec![
        alert(&[("alertname", "Echo"), ("value", "a"), ("target", "t1")]),
        alert(&[("alertname", "Other")]),
    ]);
    let (status, reply) = h.post(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reply, json!({"accepted": 2, "duplicates": 0, "reconsidered": 0}));
    // Alertmanager re-sends whole groups: same fingerprint, status, startsAt = duplicate.
    let (status, reply) = h.post(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reply, json!({"accepted": 0, "duplicates": 2, "reconsidered": 0}));
    let kinds = h.kinds().await;
    assert_eq!(kinds.iter().filter(|k| *k == "alert.received").count(), 2);
    assert_eq!(kinds.iter().filter(|k| *k == "alert.duplicate").count(), 2);
    let queued = h
        .store()
        .executions(ExecutionFilter {
            state: Some(State::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "one runbook matched one alert");
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes[0].state, State::Succeeded);
    let exec = h.store().execution(&queued[0].id).await.unwrap();
    assert_eq!(exec.steps[1].output.as_ref().unwrap()["message"], "echoed a\n");
}

#[tokio::test]
async fn hostile_label_values_are_data_never_shell() {
    let h = Harness::new(ECHO, "");
    let evil = "{{7*7}} ; rm -rf / $(touch /tmp/pitcrew-pwned) `id` ../../etc/passwd\nsecond line \u{202e} ünïcödé";
    let (status, _) = h
        .post(&payload(vec![alert(&[("alertname", "Echo"), ("value", evil), ("target", "../x")])]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let outcomes = h.run_queued().await;
    assert_eq!(outcomes[0].state, State::Succeeded, "{:?}", outcomes[0].reason);
    let exec = &h.store().executions(ExecutionFilter::default()).await.unwrap()[0];
    let exec = h.store().execution(&exec.id).await.unwrap();
    // One argv element, echoed back byte for byte.
    assert_eq!(exec.steps[0].input["command"], json!(["/bin/echo", evil]));
    assert_eq!(exec.steps[0].output.as_ref().unwrap()["stdout"], json!(format!("{evil}\n")));
    assert_eq!(exec.target, "../x");
    assert!(!std::path::Path::new("/tmp/pitcrew-pwned").exists());
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_and_nothing_is_stored() {
    let h = Harness::new(ECHO, "max_body: 64KiB\n");
    let json_ct = [("content-type", "application/json")];
    let (status, body) = h
        .call("POST", "/v1/alerts/alertmanager", &json_ct, "{\"version\": \"4\",\n \"alerts\": [")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("line 2"), "{body}");
    let (status, body) = h
        .call(
            "POST",
            "/v1/alerts/alertmanager",
            &[("content-type", "text/plain")],
            payload(vec![]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    let (status, body) = h
        .call(
            "POST",
            "/v1/alerts/alertmanager",
            &json_ct,
            json!({"version": "5", "alerts": []}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("\\\"5\\\""), "{body}");
    let huge = payload(vec![alert(&[("alertname", "Echo"), ("value", &"x".repeat(70 * 1024))])]);
    let (status, _) = h.call("POST", "/v1/alerts/alertmanager", &json_ct, huge.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = h
        .call(
            "POST",
            "/v1/alerts/alertmanager",
            &json_ct,
            json!({"version": "4", "alerts": [{"labels": "nope"}]}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.call("POST", "/v1/alerts/alertmanager", &json_ct, "\u{0}\u{1}binary").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(h.audit().await.is_empty(), "rejected bodies leave no trace in state");
    let (_, metrics) = h.call("GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("pitcrew_webhook_rejected_total{reason=\"too_large\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pitcrew_webhook_rejected_total{reason=\"content_type\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn truncated_payloads_are_accepted_and_counted() {
    let h = Harness::new(ECHO, "");
    let mut body = payload(vec![alert(&[("alertname", "Echo"), ("value", "v"), ("target", "t")])]);
    body["truncatedAlerts"] = json!(7);
    let (status, _) = h.post(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, metrics) = h.call("GET", "/metrics", &[], "").await;
    assert!(metrics.contains("pitcrew_alerts_truncated_total 7"), "{metrics}");
}

#[tokio::test]
async fn a_resolved_notification_cancels_queued_executions_of_that_alert() {
    let h = Harness::new(ECHO, "");
    let firing = alert(&[("alertname", "Echo"), ("value", "v"), ("target", "t")]);
    h.post(&payload(vec![firing.clone()])).await;
    h.post(&payload(vec![resolved(firing)])).await;
    assert!(h.run_queued().await.is_empty());
    let all = h.store().executions(ExecutionFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, State::Cancelled);
    assert_eq!(all[0].reason.as_deref(), Some("alert resolved before it ran"));
}

#[tokio::test]
async fn webhook_and_api_tokens_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    for (name, token) in [
        ("hook", "hook-secret-1"),
        ("viewer", "viewer-secret-1"),
        ("op", "operator-secret-1"),
    ] {
        std::fs::write(dir.path().join(name), token).unwrap();
    }
    let config = format!(
        "auth:\n  webhook_token_file: {0}/hook\n  tokens:\n    - {{name: vera, token_file: {0}/viewer, role: viewer}}\n    - {{name: olga, token_file: {0}/op, role: operator}}\n",
        dir.path().display()
    );
    let h = Harness::new(ECHO, &config);
    let body = payload(vec![alert(&[("alertname", "Echo"), ("value", "v"), ("target", "t")])]).to_string();
    let ct = ("content-type", "application/json");
    assert_eq!(
        h.call("POST", "/v1/alerts/alertmanager", &[ct], body.clone()).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call(
            "POST",
            "/v1/alerts/alertmanager",
            &[ct, ("authorization", "Bearer hook-secret-2")],
            body.clone()
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call(
            "POST",
            "/v1/alerts/alertmanager",
            &[ct, ("authorization", "Bearer hook-secret-1")],
            body
        )
        .await
        .0,
        StatusCode::ACCEPTED
    );

    assert_eq!(h.call("GET", "/v1/executions", &[], "").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.call("GET", "/v1/executions", &[("authorization", "Bearer viewer-secret-1")], "")
            .await
            .0,
        StatusCode::OK
    );
    let run_body = json!({"params": {"value": "manual", "target": "t9"}}).to_string();
    let viewer = [("authorization", "Bearer viewer-secret-1"), ct];
    assert_eq!(
        h.call("POST", "/v1/runbooks/echo/run", &viewer, run_body.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    let operator = [("authorization", "Bearer operator-secret-1"), ct];
    let (status, body) = h.call("POST", "/v1/runbooks/echo/run", &operator, run_body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    let id = reply["execution_id"].as_str().unwrap();
    let exec = h.store().execution(id).await.unwrap();
    assert_eq!(exec.actor, "api:olga");
    // Probes need no token; secrets never leave in API output.
    assert_eq!(h.call("GET", "/healthz", &[], "").await.0, StatusCode::OK);
    assert_eq!(h.call("GET", "/readyz", &[], "").await.0, StatusCode::OK);
    let (_, audit) = h.call("GET", "/v1/audit", &[("authorization", "Bearer viewer-secret-1")], "").await;
    for secret in ["hook-secret-1", "viewer-secret-1", "operator-secret-1"] {
        assert!(!audit.contains(secret));
    }
}

#[tokio::test]
async fn api_lists_runbooks_executions_and_audit_lines() {
    let h = Harness::new(ECHO, "");
    h.post(&payload(vec![alert(&[("alertname", "Echo"), ("value", "v"), ("target", "t")])]))
        .await;
    h.run_queued().await;
    let (status, body) = h.call("GET", "/v1/runbooks", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()[0]["name"], "echo");
    let (_, body) = h.call("GET", "/v1/executions?status=succeeded&runbook=echo", &[], "").await;
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let id = list[0]["id"].as_str().unwrap();
    let (status, body) = h.call("GET", &format!("/v1/executions/{id}"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["steps"].as_array().unwrap().len(), 2);
    assert_eq!(h.call("GET", "/v1/executions/nope", &[], "").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        h.call("GET", "/v1/executions?status=bogus", &[], "").await.0,
        StatusCode::BAD_REQUEST
    );
    let (_, lines) = h.call("GET", &format!("/v1/audit?execution={id}"), &[], "").await;
    let kinds: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "runbook.matched",
            "guardrail.decision",
            "execution.started",
            "step.started",
            "step.finished",
            "step.started",
            "step.finished",
            "execution.finished"
        ]
    );
    let (status, _) = h.call("GET", "/v1/audit?since=yesterday", &[], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

// ---- The HTTP server: limits, authorisation before the body, browser rules, pages.

/// Reads until the server closes the connection; `None` if `within` (tokio
/// time) passes first. A reset counts as closed.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&out).into_owned())
}

/// Reads until `needle` has arrived; `None` if `within` (tokio time) passes
/// first or the connection closes without it.
async fn read_until(stream: &mut TcpStream, needle: &str, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(needle) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .ok()
    .flatten()
}

async fn connect(address: SocketAddr, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_a_full_request_head_within_header_timeout_is_closed() {
    let h = Harness::new(ECHO, "server: {header_timeout: 200ms}\n");
    let address = h.listen().await;
    let started = tokio::time::Instant::now();
    let mut slow = connect(address, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await;
    let mut silent = connect(address, "").await;
    assert!(
        read_to_close(&mut slow, Duration::from_secs(5)).await.is_some(),
        "a half-sent head holds the connection open"
    );
    assert!(
        read_to_close(&mut silent, Duration::from_secs(5)).await.is_some(),
        "a connection that sends nothing stays open"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    // A request sent in time is answered as usual.
    let mut prompt = connect(address, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    let reply = read_to_close(&mut prompt, Duration::from_secs(5)).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test(start_paused = true)]
async fn connections_past_max_connections_wait_in_the_backlog_until_one_closes() {
    let h = Harness::new(ECHO, "server: {max_connections: 1}\n");
    let address = h.listen().await;
    let mut first = connect(address, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(read_until(&mut first, "ok\n", Duration::from_secs(5)).await.is_some());
    // `first` stays open (kept alive, well inside header_timeout's 10s).
    let mut second = connect(address, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(
        read_to_close(&mut second, Duration::from_secs(1)).await,
        None,
        "a second connection was served while the only slot was taken"
    );
    drop(first);
    let reply = read_to_close(&mut second, Duration::from_secs(5))
        .await
        .expect("served once the slot is free");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test(start_paused = true)]
async fn a_body_not_received_within_request_timeout_gets_408() {
    let h = Harness::new(ECHO, "server: {request_timeout: 1s}\n");
    let address = h.listen().await;
    let mut stream = connect(
        address,
        "POST /v1/runbooks/echo/run HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"par",
    )
    .await;
    let started = tokio::time::Instant::now();
    let reply = read_to_close(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered and closed");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout (1s)"), "{reply}");
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert!(h.store().executions(ExecutionFilter::default()).await.unwrap().is_empty());
}

/// Config with a webhook token and a viewer and an operator token.
fn with_tokens(extra: &str) -> String {
    format!(
        "auth:\n  webhook_token: hook-secret-1\n  tokens:\n    - {{name: vera, token: viewer-secret-1, role: viewer}}\n    - {{name: olga, token: operator-secret-1, role: operator}}\n{extra}"
    )
}

#[tokio::test(start_paused = true)]
async fn a_request_with_a_bad_token_is_refused_without_reading_its_body() {
    let h = Harness::new(ECHO, &with_tokens(""));
    let address = h.listen().await;
    for (path, token, status) in [
        ("/v1/runbooks/echo/run", "Bearer wrong-token-123", "401"),
        ("/v1/runbooks/echo/run", "Bearer viewer-secret-1", "403"),
        ("/v1/executions/x/deny", "Bearer wrong-token-123", "401"),
        ("/v1/executions/x/approve", "Bearer wrong", "401"),
        ("/v1/alerts/alertmanager", "Bearer wrong-token-123", "401"),
    ] {
        // Headers promise 2,000,000 bytes; none are sent.
        let mut stream = connect(
            address,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {token}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
            ),
        )
        .await;
        let reply = read_until(&mut stream, "\r\n\r\n", Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{path} waited for the body before answering"));
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {reply}");
    }
}

#[tokio::test]
async fn a_cross_site_text_plain_post_to_run_creates_no_execution() {
    let runbook = std::fs::read_to_string(crate::support::repo().join("runbooks/manual-rollout-restart.yaml")).unwrap();
    let h = Harness::new(&runbook, "");
    let body = json!({"params": {"namespace": "shop", "name": "web", "reason": "drive-by"}}).to_string();
    let (status, reply) = h
        .call(
            "POST",
            "/v1/runbooks/manual-rollout-restart/run",
            &[("content-type", "text/plain"), ("origin", "http://evil.example")],
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert!(
        reply.contains("http://evil.example") && reply.contains("server.allowed_origins"),
        "{reply}"
    );
    // Without the Origin (a page cannot drop it, but a non-browser can), the
    // content type alone still refuses it.
    let (status, reply) = h
        .call(
            "POST",
            "/v1/runbooks/manual-rollout-restart/run",
            &[("content-type", "text/plain")],
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{reply}");
    assert!(reply.contains("application/json"), "{reply}");
    assert!(h.store().executions(ExecutionFilter::default()).await.unwrap().is_empty());
    let (status, reply) = h
        .call(
            "POST",
            "/v1/runbooks/manual-rollout-restart/run",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
}

#[tokio::test]
async fn api_writes_need_a_json_content_type() {
    let h = Harness::new(ECHO, "");
    for path in ["/v1/runbooks/echo/run", "/v1/executions/x/approve", "/v1/executions/x/deny"] {
        for headers in [&[][..], &[("content-type", "application/x-www-form-urlencoded")][..]] {
            let (status, reply) = h.call("POST", path, headers, "").await;
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}: {reply}");
        }
        let (status, reply) = h
            .call("POST", path, &[("content-type", "application/json; charset=utf-8")], "")
            .await;
        assert_ne!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}: {reply}");
    }
}

#[tokio::test]
async fn origins_not_listed_are_refused_on_every_endpoint() {
    let h = Harness::new(ECHO, &with_tokens("server: {allowed_origins: [\"https://dash.example.com\"]}\n"));
    let viewer = ("authorization", "Bearer viewer-secret-1");
    let hook = [("authorization", "Bearer hook-secret-1"), ("content-type", "application/json")];
    let webhook_body = payload(vec![]).to_string();
    for origin in [
        "http://evil.example",
        "null",
        "https://dash.example.com.evil.example",
        "http://dash.example.com",
    ] {
        assert_eq!(h.call("GET", "/healthz", &[("origin", origin)], "").await.0, StatusCode::FORBIDDEN);
        assert_eq!(
            h.call("GET", "/v1/executions", &[viewer, ("origin", origin)], "").await.0,
            StatusCode::FORBIDDEN
        );
        let mut headers = hook.to_vec();
        headers.push(("origin", origin));
        assert_eq!(
            h.call("POST", "/v1/alerts/alertmanager", &headers, webhook_body.clone()).await.0,
            StatusCode::FORBIDDEN,
            "{origin}"
        );
    }
    let listed = ("origin", "https://DASH.example.com");
    assert_eq!(h.call("GET", "/v1/executions", &[viewer, listed], "").await.0, StatusCode::OK);
    assert_eq!(h.call("GET", "/v1/executions", &[viewer], "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn without_tokens_only_requests_addressed_to_loopback_are_answered() {
    let h = Harness::new(ECHO, "");
    for host in [
        "evil.example",
        "evil.example:9095",
        "127.0.0.1.evil.example",
        "10.0.0.1:9095",
        "[2001:db8::1]:9095",
        "localhost.evil.example",
    ] {
        let (status, reply) = h.call("GET", "/v1/executions", &[("host", host)], "").await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host}: {reply}");
        assert!(reply.contains("loopback"), "{reply}");
        assert_eq!(
            h.call("GET", "/healthz", &[("host", host)], "").await.0,
            StatusCode::MISDIRECTED_REQUEST
        );
    }
    for host in [
        "localhost",
        "LOCALHOST:9095",
        "127.0.0.1:9095",
        "127.1.2.3",
        "[::1]:9095",
        "[::1]",
        "dash.localhost:8080",
    ] {
        let (status, reply) = h.call("GET", "/v1/executions", &[("host", host)], "").await;
        assert_eq!(status, StatusCode::OK, "{host}: {reply}");
    }
    // With tokens, the token is the guard and any name may be used.
    let h = Harness::new(ECHO, &with_tokens(""));
    let (status, _) = h
        .call(
            "GET",
            "/v1/executions",
            &[("host", "pitcrew.internal:9095"), ("authorization", "Bearer viewer-secret-1")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

fn next_link(headers: &axum::http::HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().unwrap();
    let target = link.strip_prefix('<')?.split_once(">; rel=\"next\"")?.0;
    Some(target.to_string())
}

#[tokio::test]
async fn executions_are_listed_in_pages_that_new_executions_do_not_shift() {
    let h = Harness::new(ECHO, "");
    let ct = [("content-type", "application/json")];
    let run = |t: usize| json!({"params": {"value": "v", "target": format!("t{t}")}}).to_string();
    for t in 0..5 {
        assert_eq!(h.call("POST", "/v1/runbooks/echo/run", &ct, run(t)).await.0, StatusCode::ACCEPTED);
        h.advance("1s");
    }
    let (status, headers, body) = h.call_with_headers("GET", "/v1/executions?limit=2&runbook=echo", &[], "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: Vec<Value> = serde_json::from_str(&body).unwrap();
    let targets = |page: &[Value]| page.iter().map(|e| e["target"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(targets(&page), ["t4", "t3"]);
    let next = next_link(&headers).expect("a full page links to the next");
    assert!(next.contains("runbook=echo") && next.contains("limit=2"), "{next}");
    // A run created between pages lands before the cursor.
    assert_eq!(h.call("POST", "/v1/runbooks/echo/run", &ct, run(9)).await.0, StatusCode::ACCEPTED);
    let (_, headers, body) = h.call_with_headers("GET", &next, &[], "").await;
    let page: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(targets(&page), ["t2", "t1"]);
    let (_, headers, body) = h.call_with_headers("GET", &next_link(&headers).unwrap(), &[], "").await;
    let page: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(targets(&page), ["t0"]);
    assert_eq!(next_link(&headers), None, "the last page links nowhere");

    let (_, _, body) = h.call_with_headers("GET", "/v1/executions", &[], "").await;
    assert_eq!(serde_json::from_str::<Vec<Value>>(&body).unwrap().len(), 6, "default limit 100");
    for (query, needle) in [
        ("limit=1001", "maximum of 1000"),
        ("limit=0", "from 1 to 1000"),
        ("limit=ten", "from 1 to 1000"),
        ("after=nope", "no execution \\\"nope\\\""),
    ] {
        let (status, body) = h.call("GET", &format!("/v1/executions?{query}"), &[], "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body}");
    }
}

#[tokio::test]
async fn audit_is_streamed_page_by_page_and_paged_with_after() {
    let h = Harness::new(ECHO, "");
    let events: Vec<Event> = (0..2500)
        .map(|i| Event::new(kind::CONFIG_LOADED, "test", json!({"n": i})))
        .collect();
    h.store().record(events).await.unwrap();
    let response = h
        .app
        .clone()
        .oneshot(Request::get("/v1/audit").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.into_body();
    let (mut chunks, mut text) = (0, Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            chunks += 1;
            text.extend_from_slice(&data);
        }
    }
    let seqs: Vec<u64> = String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=2500).collect::<Vec<_>>());
    assert_eq!(chunks, 3, "read and sent 1,000 records at a time");

    let (status, headers, body) = h.call_with_headers("GET", "/v1/audit?limit=3&since=1000w", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.lines().count(), 3);
    let next = next_link(&headers).unwrap();
    assert!(
        next.contains("after=3") && next.contains("since=20"),
        "relative times fixed: {next}"
    );
    h.store()
        .record(vec![Event::new(kind::CONFIG_LOADED, "test", json!({"n": "late"}))])
        .await
        .unwrap();
    let (_, _, body) = h.call_with_headers("GET", "/v1/audit?limit=2&after=2499", &[], "").await;
    let seqs: Vec<u64> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2500, 2501]);
    for (query, needle) in [("limit=5000", "maximum of 1000"), ("after=-1", "expected a record's seq")] {
        let (status, body) = h.call("GET", &format!("/v1/audit?{query}"), &[], "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body}");
    }
}

#[tokio::test]
async fn the_store_pages_audit_records_by_seq_with_its_other_filters_kept() {
    let h = Harness::new(ECHO, "");
    h.post(&payload(vec![alert(&[("alertname", "Echo"), ("value", "v"), ("target", "t")])]))
        .await;
    h.run_queued().await;
    let all = h.audit().await;
    let exec = all.iter().find_map(|r| r.execution_id.clone()).unwrap();
    let of_exec: Vec<u64> = all
        .iter()
        .filter(|r| r.execution_id.as_deref() == Some(&exec))
        .map(|r| r.seq)
        .collect();
    let page = h
        .store()
        .audit(AuditFilter {
            execution: Some(exec),
            after_seq: Some(of_exec[1]),
            limit: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), of_exec[2..5]);
    assert_eq!(page[0].prev_hash, all[of_exec[2] as usize - 2].hash, "prev_hash still read");
}

#[tokio::test]
async fn on_shutdown_serve_stops_accepting_closes_idle_connections_and_returns() {
    let h = Harness::new(ECHO, "");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = std::sync::Arc::new(pitcrew::server::AppState::new(h.engine.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pitcrew::server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let mut idle = connect(address, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(read_until(&mut idle, "ok\n", Duration::from_secs(10)).await.is_some());
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns once its connections are done")
        .unwrap()
        .unwrap();
    assert!(
        read_to_close(&mut idle, Duration::from_secs(10)).await.is_some(),
        "the idle connection is closed"
    );
    assert!(TcpStream::connect(address).await.is_err(), "no longer accepting");
}

/// Alertmanager gives up on a slow delivery and hangs up, which drops the
/// request's handler. Once the alert went to the store, intake finishes
/// anyway: the runs it queued are handed to the workers, its notices go
/// out, it is counted. Here the handler is dropped while the store's
/// writer waits for a lock another connection holds on the state file.
#[tokio::test]
async fn a_sender_hanging_up_during_intake_does_not_cut_intake_short() {
    let h = Harness::new(
        "apiVersion: pitcrew/v1\nname: fix\ntrigger: {alertname: Broken}\nsteps:\n  - {name: note, action: log, with: {message: fixing}}\n",
        "",
    );
    let mut commits = h.store().commits().expect("the store tells its commits");
    let body = payload(vec![alert(&[("alertname", "Broken"), ("instance", "web-1")])]).to_string();
    let (chunks, mut stream) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let request = Request::post("/v1/alerts/alertmanager")
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::poll_fn(move |cx| stream.poll_recv(cx))))
        .unwrap();
    let handler = tokio::spawn(h.app.clone().oneshot(request));
    let lock = rusqlite::Connection::open(h.dir.path().join("state/state.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    chunks.send(Ok(body.into_bytes())).await.unwrap();
    drop(chunks);
    // The handler reads the body's end and hands the alert on; its write
    // waits for the lock. (Current-thread runtime: each yield runs every
    // task that is ready.)
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!handler.is_finished());
    handler.abort();
    assert!(handler.await.unwrap_err().is_cancelled());
    lock.execute_batch("COMMIT").unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while h.engine.metrics.alerts_received.get() == 0 {
            commits.changed().await.unwrap();
        }
    })
    .await
    .expect("intake stopped with its handler");
    assert_eq!(h.store().executions(ExecutionFilter::default()).await.unwrap().len(), 1);
}
