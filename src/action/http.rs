//! `http`: call an internal admin API. Hosts are limited by
//! `http.allowed_hosts`; private and loopback addresses need an explicit entry.
//! Never follows a redirect, never lets a secret header value reach the
//! output or an error message.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::http_guard;
use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec, StaticWith, input, lenient};
use crate::redact::{Redactor, is_secret_header};
use crate::runbook::Risk;
use crate::units::Duration;

/// Response bytes kept; the rest is dropped and `truncated` set.
pub const BODY_CAP: usize = 1 << 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an unexpected response the error message shows.
const ERROR_BODY_CHARS: usize = 200;
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

pub struct Http {
    spec: Spec,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let spec = Spec::new("http", "Call an HTTP API on an allowed host; redirects are not followed", Risk::Medium, false)
            .param("method", ParamType::OneOf(METHODS), "HTTP method (default GET)")
            .required("url", ParamType::Url, "URL; scheme and host literal, templated path segments are percent-encoded")
            .param("query", ParamType::StringMap, "query parameters (URL-encoded)")
            .param("headers", ParamType::StringMap, "request headers")
            .param("body", ParamType::Body, "map or list (sent as JSON) or string (sent as is)")
            .param("expect_status", ParamType::IntegerOrList, "accepted status codes (default any 2xx)")
            .param("timeout", ParamType::Duration, "request timeout (default 30s)")
            .example("method: POST\nurl: \"https://pool-admin.internal.example/v1/pools/{{params.pool}}/resize\"\nbody: {size: 200}\nexpect_status: [200, 204]\n");
        Http { spec }
    }
}

/// GET (and HEAD) are reads; anything else changes something.
pub(crate) fn is_read(method: Option<&Value>) -> bool {
    match method {
        None => true,
        Some(Value::String(m)) => m.eq_ignore_ascii_case("GET") || m.eq_ignore_ascii_case("HEAD"),
        Some(_) => false,
    }
}

#[async_trait::async_trait]
impl Action for Http {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn step_risk(&self, with: StaticWith<'_>) -> Risk {
        let method = with.get("method").map(|t| t.literal());
        match method {
            None => Risk::Low,
            Some(Some(m)) if is_read(Some(&m)) => Risk::Low,
            _ => Risk::Medium,
        }
    }

    fn step_idempotent(&self, with: StaticWith<'_>) -> bool {
        self.step_risk(with) == Risk::Low
    }

    fn check(&self, _literal: &BTreeMap<String, Value>, _templated: &[&str]) -> Vec<String> {
        Vec::new()
    }

    fn dry_run(&self, input: &Value) -> DryRun {
        if is_read(input.get("method")) { DryRun::Run } else { DryRun::Skip }
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input {
            method,
            url,
            query,
            headers,
            body,
            expect_status,
            timeout,
        } = input(input_value)?;
        let method = method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(ActionError::input(
                "method",
                format!("{method:?} is not one of {}", METHODS.join(", ")),
            ));
        }
        // The engine skips writes in a dry run; this is the backstop should a
        // caller forget.
        if cx.dry_run && !is_read(Some(&Value::String(method.clone()))) {
            return Err(ActionError::Refused(format!("dry run: {method} is not sent")));
        }
        let expect = Expect::parse(expect_status.as_ref())?;
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout == Duration::ZERO {
            return Err(ActionError::input("timeout", "must be more than 0s"));
        }
        let redactor = secret_redactor(&cx.deps.redactor, &headers);
        let header_map = header_map(&headers)?;

        let checked = http_guard::check_url(&cx.deps.config, &url).await?;
        let client = checked.client(timeout.std())?;
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| ActionError::input("method", e.to_string()))?;
        let mut request = client.request(method, checked.url.clone()).headers(header_map);
        if !query.is_empty() {
            request = request.query(&query);
        }
        request = match body {
            None | Some(Value::Null) => request,
            Some(Value::String(text)) => request.body(text),
            Some(other) => request.json(&other),
        };
        let failed = |e: reqwest::Error| -> ActionError {
            if e.is_timeout() {
                ActionError::Timeout(timeout)
            } else {
                ActionError::Unavailable(redactor.text(&format!("{}: {}", checked.host, crate::redact::without_url(&e))))
            }
        };
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status();
        let response_headers = response_headers(response.headers());
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (bytes, truncated) = read_capped(&mut response, BODY_CAP).await.map_err(failed)?;
        let body = parse_body(&bytes, &content_type, truncated);

        if !expect.accepts(status.as_u16()) {
            let text = String::from_utf8_lossy(&bytes);
            let mut shown: String = text.chars().take(ERROR_BODY_CHARS).collect();
            if text.chars().count() > ERROR_BODY_CHARS {
                shown.push('…');
            }
            let mut message = format!("{} answered status {} (expected {expect})", checked.host, status.as_u16());
            if status.is_redirection() {
                message.push_str("; redirects are not followed");
                if let Some(to) = location {
                    message.push_str(&format!(", Location: {to}"));
                }
            }
            if !shown.trim().is_empty() {
                message.push_str(&format!(": {}", shown.trim()));
            }
            return Err(ActionError::Failed(redactor.text(&message)));
        }
        Ok(redactor.value(&json!({
            "status": status.as_u16(),
            "headers": response_headers,
            "body": body,
            "truncated": truncated,
        })))
    }
}

/// Reads at most `cap` bytes of a response body; `true` when some were left.
/// Stops there: dropping the response closes the connection, so the rest is
/// never downloaded.
pub(crate) async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok((bytes, true));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, false))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default, deserialize_with = "opt_string")]
    method: Option<String>,
    #[serde(deserialize_with = "lenient::string")]
    url: String,
    #[serde(default, deserialize_with = "lenient::string_map")]
    query: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "lenient::string_map")]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    expect_status: Option<Value>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    timeout: Option<Duration>,
}

fn opt_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient::string(d).map(Some)
}

/// The accepted statuses: given ones, or any 2xx.
enum Expect {
    AnySuccess,
    Exactly(Vec<u16>),
}

impl Expect {
    fn parse(v: Option<&Value>) -> Result<Expect, ActionError> {
        let one = |v: &Value| -> Result<u16, ActionError> {
            let n = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            n.filter(|n| (100..=599).contains(n))
                .map(|n| n as u16)
                .ok_or_else(|| ActionError::input("expect_status", format!("expected HTTP status codes (100-599), got {v}")))
        };
        match v {
            None | Some(Value::Null) => Ok(Expect::AnySuccess),
            Some(Value::Array(items)) if items.is_empty() => Err(ActionError::input("expect_status", "is an empty list")),
            Some(Value::Array(items)) => items.iter().map(one).collect::<Result<_, _>>().map(Expect::Exactly),
            Some(other) => one(other).map(|s| Expect::Exactly(vec![s])),
        }
    }

    fn accepts(&self, status: u16) -> bool {
        match self {
            Expect::AnySuccess => (200..300).contains(&status),
            Expect::Exactly(list) => list.contains(&status),
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::AnySuccess => f.write_str("2xx"),
            Expect::Exactly(list) => {
                let shown: Vec<String> = list.iter().map(u16::to_string).collect();
                f.write_str(&shown.join(" or "))
            }
        }
    }
}

/// The config's secrets plus this step's secret header values, whole and
/// without their scheme (`Bearer xyz` → `xyz` too): a server that echoes the
/// token back must not put it in our output.
fn secret_redactor<'a>(base: &'a Redactor, headers: &BTreeMap<String, String>) -> Secrets<'a> {
    let mut secrets = Vec::new();
    for (name, value) in headers.iter().filter(|(n, _)| is_secret_header(n)) {
        secrets.push(value.clone());
        if let Some((_, credential)) = value.trim().split_once(' ') {
            secrets.push(credential.trim().to_string());
        }
        if name.eq_ignore_ascii_case("cookie") {
            for pair in value.split(';') {
                if let Some((_, v)) = pair.split_once('=') {
                    secrets.push(v.trim().to_string());
                }
            }
        }
    }
    Secrets {
        config: base,
        step: Redactor::new(secrets),
    }
}

/// The config's secrets and this step's secret header values.
struct Secrets<'a> {
    config: &'a Redactor,
    step: Redactor,
}

impl Secrets<'_> {
    fn text(&self, s: &str) -> String {
        self.config.text(&self.step.text(s))
    }

    fn value(&self, v: &Value) -> Value {
        self.config.value(&self.step.value(v))
    }
}

fn header_map(headers: &BTreeMap<String, String>) -> Result<reqwest::header::HeaderMap, ActionError> {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| ActionError::input(&field, "is not a valid header name"))?;
        let mut v = HeaderValue::from_str(value).map_err(|_| {
            // Never echo the value: it may be the credential itself.
            ActionError::input(&field, "value holds characters not allowed in a header (e.g. a line break)")
        })?;
        if is_secret_header(name) {
            v.set_sensitive(true);
        }
        map.append(header, v);
    }
    Ok(map)
}

/// Header name → value (several values joined by ", "); values that carry
/// credentials or sessions are replaced.
fn response_headers(headers: &reqwest::header::HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let secret = is_secret_header(name.as_str()) || name == reqwest::header::SET_COOKIE;
        let shown = if secret {
            crate::redact::REDACTED.to_string()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        out.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&shown);
            })
            .or_insert(shown);
    }
    out
}

/// JSON when the server says so, or when an untyped or plain-text body is an
/// object or list; a truncated body stays text (it no longer parses).
fn parse_body(bytes: &[u8], content_type: &str, truncated: bool) -> Value {
    let text = String::from_utf8_lossy(bytes);
    if !truncated {
        let media = content_type.split(';').next().unwrap_or("").trim();
        let says_json = media == "application/json" || media.ends_with("+json");
        let looks_json = (media.is_empty() || media == "text/plain") && matches!(text.trim_start().chars().next(), Some('{' | '['));
        if (says_json || looks_json)
            && let Ok(v) = serde_json::from_slice::<Value>(bytes)
        {
            return v;
        }
    }
    Value::String(text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_status_forms() {
        assert!(Expect::parse(None).unwrap().accepts(204));
        assert!(!Expect::parse(None).unwrap().accepts(302));
        let list = Expect::parse(Some(&json!([200, "404"]))).unwrap();
        assert!(list.accepts(404) && !list.accepts(201));
        assert_eq!(list.to_string(), "200 or 404");
        assert!(Expect::parse(Some(&json!(42))).is_err());
        assert!(Expect::parse(Some(&json!([]))).is_err());
        assert!(Expect::parse(Some(&json!({"a": 1}))).is_err());
    }

    #[test]
    fn body_is_json_only_when_it_is_json() {
        assert_eq!(parse_body(br#"{"a":1}"#, "application/json; charset=utf-8", false), json!({"a": 1}));
        assert_eq!(parse_body(br#"{"a":1}"#, "application/problem+json", false), json!({"a": 1}));
        assert_eq!(parse_body(br#"[1]"#, "", false), json!([1]));
        assert_eq!(parse_body(b"42", "text/plain", false), json!("42"));
        assert_eq!(parse_body(br#"{"a":1}"#, "text/html", false), json!(r#"{"a":1}"#));
        assert_eq!(parse_body(br#"{"a":"#, "application/json", false), json!(r#"{"a":"#));
        assert_eq!(parse_body(br#"{"a":1}"#, "application/json", true), json!(r#"{"a":1}"#));
    }

    #[test]
    fn secret_header_values_are_redacted_whole_and_by_credential() {
        let headers = BTreeMap::from([
            ("Authorization".to_string(), "Bearer tok-123456".to_string()),
            ("Cookie".to_string(), "session=abcdef; theme=dark".to_string()),
            ("X-Trace".to_string(), "visible-value".to_string()),
        ]);
        let config = Redactor::default();
        let r = secret_redactor(&config, &headers);
        assert_eq!(
            r.text("Bearer tok-123456 / tok-123456 / abcdef / visible-value"),
            "[REDACTED] / [REDACTED] / [REDACTED] / visible-value"
        );
    }
}
