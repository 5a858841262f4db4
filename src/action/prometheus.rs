//! `prometheus.query` and `prometheus.wait`: read the service's state, e.g.
//! to verify that a fix worked. Reads only; the Prometheus URL comes from the
//! config and is trusted (no `http.allowed_hosts` check).

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::action::{Action, ActionContext, ActionError, Deps, ParamType, Spec, input, lenient};
use crate::runbook::Risk;
use crate::units::Duration;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// A poll near the end of a wait still gets this long to answer.
const MIN_POLL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Large result vectors are fine; a runaway answer is not.
const RESPONSE_CAP: usize = 16 << 20;

pub struct Query {
    spec: Spec,
}

impl Default for Query {
    fn default() -> Self {
        Query::new()
    }
}

impl Query {
    pub fn new() -> Self {
        let spec = Spec::new(
            "prometheus.query",
            "Run an instant PromQL query; output {value, result}",
            Risk::Low,
            true,
        )
        .required(
            "query",
            ParamType::Promql,
            "PromQL expression; templates go inside double-quoted strings",
        )
        .param("timeout", ParamType::Duration, "query timeout (default 30s)")
        .example("query: 'sum(rate(http_requests_total{job=\"checkout\",code=~\"5..\"}[5m]))'\n");
        Query { spec }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryInput {
    #[serde(deserialize_with = "lenient::string")]
    query: String,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    timeout: Option<Duration>,
}

#[async_trait::async_trait]
impl Action for Query {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let QueryInput { query, timeout } = input(input_value)?;
        let timeout = positive("timeout", timeout.unwrap_or(DEFAULT_TIMEOUT))?;
        Ok(instant(cx.deps, &query, Utc::now(), timeout.std()).await?.output)
    }
}

pub struct Wait {
    spec: Spec,
}

impl Default for Wait {
    fn default() -> Self {
        Wait::new()
    }
}

impl Wait {
    pub fn new() -> Self {
        let spec = Spec::new("prometheus.wait", "Poll a PromQL query until a condition holds (e.g. `== 0`, `< 1`) or time runs out", Risk::Low, true)
            .required("query", ParamType::Promql, "PromQL expression; templates go inside double-quoted strings")
            .required("until", ParamType::String, "condition on the first sample: <, <=, ==, !=, >=, > and a number")
            .required("timeout", ParamType::Duration, "give up after this long")
            .param("interval", ParamType::Duration, "poll interval (default 5s)")
            .example("query: 'sum(kube_pod_container_status_waiting_reason{reason=\"CrashLoopBackOff\",namespace=\"shop\"})'\nuntil: \"== 0\"\ntimeout: 5m\n");
        Wait { spec }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitInput {
    #[serde(deserialize_with = "lenient::string")]
    query: String,
    #[serde(deserialize_with = "lenient::string")]
    until: String,
    #[serde(deserialize_with = "lenient::duration")]
    timeout: Duration,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    interval: Option<Duration>,
}

#[async_trait::async_trait]
impl Action for Wait {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn check(&self, literal: &std::collections::BTreeMap<String, Value>, _templated: &[&str]) -> Vec<String> {
        match literal.get("until") {
            Some(Value::String(c)) if Condition::parse(c).is_none() => {
                vec![format!(
                    "prometheus.wait: invalid `until` {c:?}: expected an operator (<, <=, ==, !=, >=, >) and a number"
                )]
            }
            _ => Vec::new(),
        }
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let WaitInput {
            query,
            until,
            timeout,
            interval,
        } = input(input_value)?;
        let condition = Condition::parse(&until).ok_or_else(|| {
            ActionError::input(
                "until",
                format!("invalid condition {until:?}: expected an operator (<, <=, ==, !=, >=, >) and a number"),
            )
        })?;
        let timeout = positive("timeout", timeout)?;
        let interval = positive("interval", interval.unwrap_or(DEFAULT_INTERVAL))?;
        // Not configured is not going to change while we wait.
        prometheus_url(cx.deps)?;
        let deps = cx.deps;
        let query = query.as_str();
        wait_until(condition, timeout, interval, move |per_poll| {
            instant(deps, query, Utc::now(), per_poll)
        })
        .await
    }
}

fn positive(field: &str, d: Duration) -> Result<Duration, ActionError> {
    if d == Duration::ZERO {
        Err(ActionError::input(field, "must be more than 0s"))
    } else {
        Ok(d)
    }
}

/// An instant query's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The first sample as Prometheus sent it (NaN and ±Inf included); `None`
    /// for an empty result.
    pub first: Option<f64>,
    /// The step output: `{value, result: [{metric, value}]}`, where
    /// non-finite numbers are null.
    pub output: Value,
}

fn prometheus_url(deps: &Deps) -> Result<&str, ActionError> {
    deps.config
        .prometheus_url
        .as_deref()
        .ok_or_else(|| ActionError::Unavailable("no prometheus.url in config".into()))
}

/// Runs an instant query at `time` against the configured Prometheus.
///
/// Errors: `Unavailable` when Prometheus is not configured, cannot be
/// reached or cannot answer now; `Failed` when it rejects the query (the
/// message is Prometheus's own); `Timeout` when it does not answer in time.
pub async fn instant(deps: &Deps, query: &str, time: DateTime<Utc>, timeout: std::time::Duration) -> Result<Answer, ActionError> {
    let base = prometheus_url(deps)?;
    // The URL may carry a secret from `${VAR}`; the redactor knows it.
    let shown_base = deps.redactor.text(base);
    let time = time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let unreachable = |e: reqwest::Error| {
        if e.is_timeout() {
            ActionError::Timeout(Duration::from_millis(timeout.as_millis() as u64))
        } else {
            ActionError::Unavailable(deps.redactor.text(&format!(
                "prometheus at {shown_base} is unreachable: {}",
                crate::redact::without_url(&e)
            )))
        }
    };
    let mut response = deps
        .http()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query), ("time", time.as_str())])
        .timeout(timeout)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let (bytes, truncated) = crate::action::http::read_capped(&mut response, RESPONSE_CAP)
        .await
        .map_err(unreachable)?;
    if truncated {
        return Err(ActionError::Failed(format!(
            "prometheus answer is larger than {} MiB; aggregate the query (e.g. sum by (...))",
            RESPONSE_CAP >> 20
        )));
    }
    let parsed: ApiResponse = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(_) => {
            let shown: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(ActionError::Unavailable(format!(
                "prometheus at {shown_base} answered status {} without a Prometheus API body: {}",
                status.as_u16(),
                shown.trim()
            )));
        }
    };
    if parsed.status != "success" {
        let error_type = parsed.error_type.unwrap_or_default();
        let error = parsed.error.unwrap_or_else(|| format!("status {}", status.as_u16()));
        // bad_data: the query does not parse; execution: it cannot be
        // evaluated. Both are the runbook's problem and will not go away by
        // asking again; anything else (timeout, unavailable) might.
        return Err(if matches!(error_type.as_str(), "bad_data" | "execution") {
            ActionError::Failed(format!("prometheus rejected the query: {error}"))
        } else {
            ActionError::Unavailable(format!("prometheus could not answer ({error_type}): {error}"))
        });
    }
    let data = parsed
        .data
        .ok_or_else(|| ActionError::Unavailable("prometheus answered success without data".into()))?;
    Ok(answer(&data.result_type, &data.result))
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(default)]
    result: Value,
}

/// `[timestamp, "value"]` → the value; Prometheus writes NaN and ±Inf as
/// strings, which `f64` parses.
fn sample(pair: &Value) -> Option<f64> {
    pair.get(1)?.as_str()?.trim().parse().ok()
}

fn number(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite()).map_or(Value::Null, Value::from)
}

fn answer(result_type: &str, result: &Value) -> Answer {
    let mut rows = Vec::new();
    let mut first = None;
    let mut seen_first = false;
    let mut push = |metric: Value, v: Option<f64>, rows: &mut Vec<Value>| {
        if !seen_first {
            seen_first = true;
            first = v;
        }
        rows.push(json!({"metric": metric, "value": number(v)}));
    };
    match result_type {
        "vector" => {
            for item in result.as_array().into_iter().flatten() {
                let metric = item.get("metric").cloned().unwrap_or_else(|| Value::Object(Map::new()));
                push(metric, item.get("value").and_then(sample), &mut rows);
            }
        }
        "scalar" => push(Value::Object(Map::new()), sample(result), &mut rows),
        // A range selector in an instant query: each series' latest sample.
        "matrix" => {
            for item in result.as_array().into_iter().flatten() {
                let metric = item.get("metric").cloned().unwrap_or_else(|| Value::Object(Map::new()));
                let last = item.get("values").and_then(Value::as_array).and_then(|v| v.last()).and_then(sample);
                push(metric, last, &mut rows);
            }
        }
        // `string` results carry no number.
        _ => {}
    }
    Answer {
        first,
        output: json!({"value": number(first), "result": rows}),
    }
}

/// What the last poll of a wait saw.
enum Last {
    Value(f64),
    Empty,
    Error(ActionError),
}

/// Polls `poll` every `interval` until `condition` holds on the first
/// sample or `timeout` passes. `poll` gets how long it may take. A query
/// Prometheus rejects ends the wait at once: asking again will not fix it.
async fn wait_until<F, Fut>(condition: Condition, timeout: Duration, interval: Duration, mut poll: F) -> Result<Value, ActionError>
where
    F: FnMut(std::time::Duration) -> Fut,
    Fut: Future<Output = Result<Answer, ActionError>>,
{
    let started = Instant::now();
    let deadline = started + timeout.std();
    let mut polls: u64 = 0;
    let last = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        polls += 1;
        let last = match poll(remaining.max(MIN_POLL_TIMEOUT)).await {
            Ok(Answer {
                first: Some(v),
                mut output,
            }) if condition.holds(v) => {
                if let Value::Object(map) = &mut output {
                    map.insert("polls".into(), json!(polls));
                    map.insert("waited_ms".into(), json!(started.elapsed().as_millis() as u64));
                }
                return Ok(output);
            }
            Ok(Answer { first: Some(v), .. }) => Last::Value(v),
            Ok(Answer { first: None, .. }) => Last::Empty,
            Err(e @ (ActionError::Failed(_) | ActionError::Input { .. })) => return Err(e),
            Err(e) => Last::Error(e),
        };
        let now = Instant::now();
        if now >= deadline {
            break last;
        }
        tokio::time::sleep_until((now + interval.std()).min(deadline)).await;
    };
    let not_met = format!("condition `{condition}` not met within {timeout}");
    Err(match last {
        Last::Value(v) => ActionError::Failed(format!("{not_met}; last value {v}")),
        Last::Empty => ActionError::Failed(format!(
            "{not_met}; the query returned no data (an empty result never meets a condition)"
        )),
        Last::Error(ActionError::Unavailable(reason)) => ActionError::Unavailable(format!("{not_met}; last error: {reason}")),
        Last::Error(e) => ActionError::Unavailable(format!("{not_met}; last error: {e}")),
    })
}

/// A comparison against one sample: `< 1`, `== 0`, `>= 0.99`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub op: &'static str,
    pub value: f64,
}

impl Condition {
    pub fn parse(text: &str) -> Option<Condition> {
        let t = text.trim();
        let op = ["<=", ">=", "==", "!=", "<", ">"].into_iter().find(|op| t.starts_with(op))?;
        let value: f64 = t[op.len()..].trim().parse().ok().filter(|v: &f64| v.is_finite())?;
        Some(Condition { op, value })
    }

    /// A NaN sample (e.g. 0/0) meets no condition, not even `!=`.
    pub fn holds(&self, sample: f64) -> bool {
        if sample.is_nan() {
            return false;
        }
        match self.op {
            "<" => sample < self.value,
            "<=" => sample <= self.value,
            "==" => sample == self.value,
            "!=" => sample != self.value,
            ">=" => sample >= self.value,
            ">" => sample > self.value,
            _ => false,
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.op, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: f64) -> Result<Answer, ActionError> {
        Ok(answer("vector", &json!([{"metric": {"job": "x"}, "value": [1.0, v.to_string()]}])))
    }

    fn empty() -> Result<Answer, ActionError> {
        Ok(answer("vector", &json!([])))
    }

    #[test]
    fn answers_take_the_first_sample_and_null_non_finite_numbers() {
        let a = answer(
            "vector",
            &json!([{"metric": {"a": "1"}, "value": [1.0, "NaN"]}, {"metric": {"a": "2"}, "value": [1.0, "2.5"]}]),
        );
        assert!(a.first.unwrap().is_nan());
        assert_eq!(
            a.output,
            json!({"value": null, "result": [{"metric": {"a": "1"}, "value": null}, {"metric": {"a": "2"}, "value": 2.5}]})
        );
        let s = answer("scalar", &json!([1.0, "+Inf"]));
        assert_eq!(s.first, Some(f64::INFINITY));
        assert_eq!(s.output, json!({"value": null, "result": [{"metric": {}, "value": null}]}));
        assert_eq!(answer("vector", &json!([])).output, json!({"value": null, "result": []}));
        let m = answer("matrix", &json!([{"metric": {}, "values": [[1.0, "1"], [2.0, "7"]]}]));
        assert_eq!(m.first, Some(7.0));
    }

    #[test]
    fn conditions() {
        let c = Condition::parse(" >= 0.99").unwrap();
        assert!(c.holds(0.99) && !c.holds(0.5));
        assert_eq!(c.to_string(), ">= 0.99");
        assert!(!Condition::parse("!= 0").unwrap().holds(f64::NAN));
        assert!(Condition::parse("== NaN").is_none());
        assert!(Condition::parse("~ 1").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_succeeds_once_the_condition_holds() {
        let mut answers = vec![value(3.0), empty(), value(0.0)].into_iter();
        let started = Instant::now();
        let out = wait_until(
            Condition::parse("== 0").unwrap(),
            Duration::from_secs(60),
            Duration::from_secs(5),
            |_| std::future::ready(answers.next().unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(out["value"], json!(0.0));
        assert_eq!(out["polls"], json!(3));
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_fails_at_its_timeout_naming_the_last_value() {
        let started = Instant::now();
        let mut polls = 0;
        let err = wait_until(
            Condition::parse("== 0").unwrap(),
            "5m".parse().unwrap(),
            Duration::from_secs(5),
            |_| {
                polls += 1;
                std::future::ready(value(3.0))
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "condition `== 0` not met within 5m; last value 3");
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(300));
        // t = 0, 5, ..., 300: the last poll is at the deadline itself.
        assert_eq!(polls, 61);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_result_never_meets_the_condition() {
        let err = wait_until(
            Condition::parse("< 1").unwrap(),
            Duration::from_secs(10),
            Duration::from_secs(5),
            |_| std::future::ready(empty()),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ActionError::Failed(_)));
        assert!(err.to_string().contains("returned no data"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_keeps_polling_then_reports_the_last_error() {
        let mut polls = 0;
        let err = wait_until(
            Condition::parse("< 1").unwrap(),
            Duration::from_secs(10),
            Duration::from_secs(1),
            |_| {
                polls += 1;
                std::future::ready(Err(ActionError::Unavailable(format!("connection refused #{polls}"))))
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unavailable: condition `< 1` not met within 10s; last error: connection refused #11"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_query_stops_the_wait_at_once() {
        let started = Instant::now();
        let err = wait_until(
            Condition::parse("< 1").unwrap(),
            Duration::from_secs(60),
            Duration::from_secs(1),
            |_| std::future::ready(Err(ActionError::Failed("prometheus rejected the query: parse error".into()))),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "prometheus rejected the query: parse error");
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    }
}
