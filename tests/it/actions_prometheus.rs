//! `prometheus.query` and `prometheus.wait` against a real Prometheus that
//! scrapes an exporter the test controls.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use pitcrew::action::ActionError;

use crate::realparts::{Exporter, Harness, Prometheus, closed_port};

const BACKLOG: &str = "pitcrew_test_backlog{queue=\"orders\"}";

/// Exporter → Prometheus, with the backlog at `value` and scraped.
async fn prometheus_with_backlog(value: f64) -> (Exporter, Prometheus) {
    let exporter = Exporter::start().await;
    exporter.set(BACKLOG, value);
    let prometheus = Prometheus::start(&exporter.addr()).await;
    prometheus.eventually("pitcrew_test_backlog", |v| v == value).await;
    (exporter, prometheus)
}

/// Forwards to Prometheus and counts the answers it passed back, so a test
/// knows a poll has seen the old value before it changes it.
struct CountingProxy {
    port: u16,
    answered: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingProxy {
    async fn start(upstream: String) -> CountingProxy {
        let (tx, answered) = tokio::sync::watch::channel(0u64);
        let tx = std::sync::Arc::new(tx);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let (tx, client, upstream) = (tx.clone(), client.clone(), upstream.clone());
            async move {
                let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
                let r = client.get(format!("{upstream}{path}")).send().await.unwrap();
                let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                let body = r.bytes().await.unwrap();
                // Counted once Prometheus has answered: that answer predates
                // anything the test does after seeing the count.
                tx.send_modify(|n| *n += 1);
                let response: Response = (status, [("content-type", "application/json")], body).into_response();
                response
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        CountingProxy { port, answered, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn harness(prometheus_url: &str) -> Harness {
    Harness::new(&format!("prometheus: {{url: \"{prometheus_url}\"}}\n"))
}

#[tokio::test]
async fn query_returns_the_first_sample_and_the_result_vector() {
    let (_exporter, prometheus) = prometheus_with_backlog(5.0).await;
    let h = harness(&prometheus.url());

    let out = h.run("prometheus.query", json!({"query": "pitcrew_test_backlog"})).await.unwrap();
    assert_eq!(out["value"], json!(5.0));
    let result = out["result"].as_array().unwrap();
    assert_eq!(result.len(), 1);
    assert_eq!(result[0]["metric"]["queue"], "orders");
    assert_eq!(result[0]["metric"]["job"], "exporter");
    assert_eq!(result[0]["value"], json!(5.0));

    let out = h
        .run("prometheus.query", json!({"query": "scalar(sum(pitcrew_test_backlog)) * 2"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"value": 10.0, "result": [{"metric": {}, "value": 10.0}]}));

    let out = h
        .run("prometheus.query", json!({"query": "pitcrew_test_no_such_series", "timeout": "5s"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"value": null, "result": []}));

    let out = h
        .run("prometheus.query", json!({"query": "sum(pitcrew_test_backlog) / 0 * 0"}))
        .await
        .unwrap();
    assert_eq!(out["value"], json!(null), "NaN is not a JSON number: {out}");

    let err = h.run("prometheus.query", json!({"query": "sum(rate(x[5m]"})).await.unwrap_err();
    let ActionError::Failed(msg) = &err else { panic!("{err:?}") };
    assert!(
        msg.starts_with("prometheus rejected the query: ") && msg.contains("parse error"),
        "{msg}"
    );
}

#[tokio::test]
async fn wait_succeeds_once_the_exporter_value_changes() {
    let (exporter, prometheus) = prometheus_with_backlog(5.0).await;
    let proxy = CountingProxy::start(prometheus.url()).await;
    let h = harness(&proxy.url());

    // Not met while the backlog stays: the failure names the last value.
    let err = h
        .run(
            "prometheus.wait",
            json!({"query": "sum(pitcrew_test_backlog)", "until": "== 0", "interval": "200ms", "timeout": "1s"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "condition `== 0` not met within 1s; last value 5");

    let mut answered = proxy.answered.clone();
    let before = *answered.borrow();
    let wait = h.run(
        "prometheus.wait",
        json!({"query": "sum(pitcrew_test_backlog)", "until": "== 0", "interval": "200ms", "timeout": "30s"}),
    );
    let drain = async {
        // Once the wait has had an answer (still 5), the backlog drains.
        answered.wait_for(|n| *n > before).await.unwrap();
        exporter.set(BACKLOG, 0.0);
    };
    let (out, ()) = tokio::join!(wait, drain);
    let out = out.unwrap();
    assert_eq!(out["value"], json!(0.0));
    assert!(out["polls"].as_u64().unwrap() >= 2, "{out}");
}

#[tokio::test]
async fn wait_treats_an_empty_result_as_not_met() {
    let (_exporter, prometheus) = prometheus_with_backlog(1.0).await;
    let err = harness(&prometheus.url())
        .run(
            "prometheus.wait",
            json!({"query": "pitcrew_test_no_such_series", "until": "< 1", "interval": "100ms", "timeout": "500ms"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ActionError::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("returned no data"), "{err}");
}

#[tokio::test]
async fn an_unreachable_prometheus_fails_clearly_within_the_timeout() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let h = harness(&url);

    let err = h.run("prometheus.query", json!({"query": "up"})).await.unwrap_err();
    let ActionError::Unavailable(msg) = &err else { panic!("{err:?}") };
    assert!(msg.contains(&format!("prometheus at {url} is unreachable")), "{msg}");

    let started = Instant::now();
    let err = h
        .run(
            "prometheus.wait",
            json!({"query": "up", "until": "> 0", "interval": "200ms", "timeout": "1500ms"}),
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let ActionError::Unavailable(msg) = &err else { panic!("{err:?}") };
    assert!(
        msg.starts_with("condition `> 0` not met within 1s500ms; last error: prometheus at"),
        "{msg}"
    );
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn no_prometheus_in_config_and_bad_input_are_clear() {
    let h = Harness::new("");
    for (action, with) in [
        ("prometheus.query", json!({"query": "up"})),
        ("prometheus.wait", json!({"query": "up", "until": "> 0", "timeout": "1s"})),
    ] {
        let err = h.run(action, with).await.unwrap_err();
        assert_eq!(err.to_string(), "unavailable: no prometheus.url in config", "{action}");
    }
    let h = harness(&format!("http://127.0.0.1:{}", closed_port()));
    let err = h
        .run("prometheus.wait", json!({"query": "up", "until": "about 3", "timeout": "1s"}))
        .await
        .unwrap_err();
    assert!(matches!(&err, ActionError::Input { field, .. } if field == "until"), "{err:?}");
    let err = h
        .run(
            "prometheus.wait",
            json!({"query": "up", "until": "< 3", "timeout": "1s", "interval": "0s"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, ActionError::Input { field, .. } if field == "interval"), "{err:?}");
}
