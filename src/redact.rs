//! Secret redaction: every secret known to the config is replaced by
//! `[REDACTED]` wherever it would leave pitcrew (logs, audit, API output).

use std::sync::Arc;

use aho_corasick::AhoCorasick;

pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not redacted: replacing every "a" in every
/// record would destroy the audit log. Config refuses such short tokens.
pub const MIN_SECRET_LEN: usize = 4;

#[derive(Clone, Default)]
pub struct Redactor {
    matcher: Option<Arc<AhoCorasick>>,
    /// The secrets `matcher` was built from, so [`Redactor::with`] can add more.
    secrets: Arc<[String]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

impl Redactor {
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        list.sort();
        list.dedup();
        if list.is_empty() {
            return Redactor::default();
        }
        let matcher = aho_corasick::AhoCorasickBuilder::new()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&list)
            .expect("literal patterns always build");
        Redactor {
            matcher: Some(Arc::new(matcher)),
            secrets: list.into(),
        }
    }

    /// These secrets and `more` (secrets found after the config, such as a
    /// runbook's own notice URL).
    pub fn with<I, S>(&self, more: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let more: Vec<String> = more.into_iter().map(|s| s.as_ref().to_string()).collect();
        if more.is_empty() {
            return self.clone();
        }
        Redactor::new(self.secrets.iter().cloned().chain(more))
    }

    /// Whether `secret` is redacted by this redactor (or too short to be).
    pub fn knows(&self, secret: &str) -> bool {
        secret.len() < MIN_SECRET_LEN || self.secrets.binary_search_by(|s| s.as_str().cmp(secret)).is_ok()
    }

    pub fn text(&self, s: &str) -> String {
        match &self.matcher {
            Some(m) if m.is_match(s) => m.replace_all(s, &vec![REDACTED; m.patterns_len()]),
            _ => s.to_string(),
        }
    }

    /// [`Redactor::text`] for bytes that need not be UTF-8 (logs, stderr),
    /// kept byte for byte where no secret is.
    pub fn bytes(&self, b: &[u8]) -> Vec<u8> {
        match &self.matcher {
            Some(m) if m.is_match(b) => m.replace_all_bytes(b, &vec![REDACTED.as_bytes(); m.patterns_len()]),
            _ => b.to_vec(),
        }
    }

    /// Redacts every string inside a JSON value, keys included.
    pub fn value(&self, v: &serde_json::Value) -> serde_json::Value {
        let mut copy = v.clone();
        self.in_place(&mut copy);
        copy
    }

    /// [`Redactor::value`] without the copy, for values about to be stored.
    pub fn in_place(&self, v: &mut serde_json::Value) {
        use serde_json::Value;
        let Some(m) = &self.matcher else { return };
        match v {
            Value::String(s) if m.is_match(s.as_str()) => *s = self.text(s),
            Value::Array(items) => items.iter_mut().for_each(|i| self.in_place(i)),
            Value::Object(map) if map.keys().any(|k| m.is_match(k.as_str())) => {
                let old = std::mem::take(map);
                *map = old
                    .into_iter()
                    .map(|(k, mut v)| {
                        self.in_place(&mut v);
                        (self.text(&k), v)
                    })
                    .collect();
            }
            Value::Object(map) => map.values_mut().for_each(|v| self.in_place(v)),
            _ => {}
        }
    }
}

/// Header names whose values are always secret in `http` steps.
pub fn is_secret_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("cookie") || name.eq_ignore_ascii_case("proxy-authorization")
}

/// A step input as it may be recorded: `Authorization`/`Cookie` header
/// values replaced; the action itself still gets the real input.
pub fn step_input(input: &serde_json::Value) -> serde_json::Value {
    let mut shown = input.clone();
    if let Some(serde_json::Value::Object(headers)) = shown.get_mut("headers") {
        for (name, value) in headers.iter_mut() {
            if is_secret_header(name) {
                *value = serde_json::Value::String(REDACTED.into());
            }
        }
    }
    shown
}

/// A reqwest error without the URL (which may hold a secret webhook path).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut shown = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut first = true;
    while let Some(err) = source {
        if !first {
            shown.push_str(": ");
        }
        first = false;
        if let Some(req) = err.downcast_ref::<reqwest::Error>() {
            shown.push_str(&req.to_string().replace(req.url().map(|u| u.as_str()).unwrap_or("\u{0}"), "[url]"));
        } else {
            shown.push_str(&err.to_string());
        }
        source = err.source();
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_headers_never_reach_the_record() {
        let input = serde_json::json!({"url": "https://x/", "headers": {"authorization": "Bearer abc", "X-Trace": "1", "Cookie": "s=1"}});
        let shown = step_input(&input);
        assert_eq!(
            shown["headers"],
            serde_json::json!({"authorization": "[REDACTED]", "X-Trace": "1", "Cookie": "[REDACTED]"})
        );
    }

    #[test]
    fn redacts_in_text_and_json() {
        let r = Redactor::new(["s3cr3t-token", "hooks/T000/B000"]);
        assert_eq!(r.text("Bearer s3cr3t-token ok"), "Bearer [REDACTED] ok");
        let v = serde_json::json!({"out": ["x s3cr3t-token"], "u": "https://h/hooks/T000/B000"});
        assert_eq!(
            r.value(&v),
            serde_json::json!({"out": ["x [REDACTED]"], "u": "https://h/[REDACTED]"})
        );
        assert_eq!(Redactor::new(["ab"]).text("ab"), "ab");
        // Bytes that are not UTF-8 are kept as they are around a secret.
        assert_eq!(r.bytes(b"\xff s3cr3t-token \xfe"), b"\xff [REDACTED] \xfe".to_vec());
    }
}
