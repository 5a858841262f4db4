//! Alerts: the Alertmanager webhook v4 wire format and the normalised `Alert`
//! the rest of pitcrew works with.
//!
//! Pure data and parsing; no IO. Alert content is hostile input: it is kept as
//! data and never interpreted.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An alert payload could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The body is not valid JSON of the expected shape.
    #[error("invalid alert JSON at line {line} column {column}: {reason}")]
    Json { line: usize, column: usize, reason: String },
    /// The payload names a webhook version this build does not speak.
    #[error("unsupported webhook payload version {0:?}: only \"4\" is supported")]
    Version(String),
    /// A field holds a value outside its domain.
    #[error("alert {index}: {reason}")]
    Invalid { index: usize, reason: String },
}

impl AlertError {
    pub fn kind(&self) -> &'static str {
        match self {
            AlertError::Json { .. } => "bad_json",
            AlertError::Version(_) => "bad_version",
            AlertError::Invalid { .. } => "bad_alert",
        }
    }
}

/// Firing or resolved, as Alertmanager says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// The Alertmanager webhook body (version 4).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    #[serde(default)]
    pub status: Option<AlertStatus>,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<WireAlert>,
}

/// One alert as Alertmanager sends it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireAlert {
    #[serde(default)]
    pub status: Option<AlertStatus>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// A normalised alert: every field present, times in UTC, a fingerprint even
/// when the sender gave none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    // Empty fields are left out: alerts are stored by the million.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    /// `None` while firing (Alertmanager's `0001-01-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    pub fingerprint: String,
    #[serde(default, rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
    /// The `groupKey` of the webhook notification that delivered it first:
    /// Alertmanager's PagerDuty integration keys its incident on it. Absent
    /// for alerts given by hand, and for alerts stored before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_key: Option<String>,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map(String::as_str).unwrap_or("")
    }

    /// The label value, or "" when absent (Alertmanager matcher semantics).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }

    /// This alert with its labels and annotations redacted, as the audit
    /// keeps it (and so as every run sees it, whichever way it was started).
    pub fn redacted(&self, redactor: &crate::redact::Redactor) -> Alert {
        let mut alert = self.clone();
        for v in alert.labels.values_mut().chain(alert.annotations.values_mut()) {
            *v = redactor.text(v);
        }
        // It quotes the group's label values.
        alert.group_key = alert.group_key.map(|k| redactor.text(&k));
        alert
    }

    /// The key the intake deduplicates on.
    pub fn dedupe_key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.fingerprint,
            self.status.as_str(),
            self.starts_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    }

    /// The dedupe key as the store keeps it (see [`dedupe_id`]).
    pub fn dedupe_id(&self) -> [u8; 16] {
        dedupe_id(&self.dedupe_key())
    }

    /// Normalises a wire alert. `now` fills a missing `startsAt`.
    pub fn from_wire(wire: WireAlert, group_status: Option<AlertStatus>, now: DateTime<Utc>) -> Alert {
        let ends_at = wire.ends_at.filter(|t| t.timestamp() > 0);
        let status = wire.status.or(group_status).unwrap_or(match ends_at {
            Some(end) if end <= now => AlertStatus::Resolved,
            _ => AlertStatus::Firing,
        });
        let starts_at = wire.starts_at.filter(|t| t.timestamp() > 0).unwrap_or(now);
        let fingerprint = if wire.fingerprint.trim().is_empty() {
            label_fingerprint(&wire.labels)
        } else {
            wire.fingerprint
        };
        Alert {
            status,
            labels: wire.labels,
            annotations: wire.annotations,
            starts_at,
            ends_at,
            fingerprint,
            generator_url: wire.generator_url,
            group_key: None,
        }
    }

    /// The template context value `alert.*`.
    pub fn to_context(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.status.as_str(),
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": self.starts_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "endsAt": self.ends_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "fingerprint": self.fingerprint,
            "generatorURL": self.generator_url,
        })
    }
}

/// Alertmanager fingerprints alerts by their label set; ours is a stable
/// SHA-256 prefix over the sorted labels, used only when none was sent.
fn label_fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in labels {
        hasher.update(k.as_bytes());
        hasher.update([0xff]);
        hasher.update(v.as_bytes());
        hasher.update([0xff]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// A parsed webhook delivery.
#[derive(Debug)]
pub struct Delivery {
    pub alerts: Vec<Alert>,
    pub truncated_alerts: u64,
    pub receiver: String,
    pub group_key: String,
}

fn json_error(e: serde_json::Error) -> AlertError {
    AlertError::Json {
        line: e.line(),
        column: e.column(),
        reason: e.to_string(),
    }
}

/// Parses a webhook v4 body.
pub fn parse_webhook(body: &[u8], now: DateTime<Utc>) -> Result<Delivery, AlertError> {
    let payload: WebhookPayload = match serde_json::from_slice(body) {
        Ok(p) => p,
        // Only on the error path: look at the version before the shape, so a
        // v5 body gets the right reason.
        Err(e) => {
            let probe: serde_json::Value = serde_json::from_slice(body).map_err(json_error)?;
            check_version(probe.get("version"))?;
            return Err(json_error(e));
        }
    };
    check_version(Some(&serde_json::Value::String(payload.version.clone())))?;
    let group_key = Some(payload.group_key.clone()).filter(|k| !k.is_empty());
    let alerts = payload
        .alerts
        .into_iter()
        .map(|w| Alert {
            group_key: group_key.clone(),
            ..Alert::from_wire(w, payload.status, now)
        })
        .collect();
    Ok(Delivery {
        alerts,
        truncated_alerts: payload.truncated_alerts,
        receiver: payload.receiver,
        group_key: payload.group_key,
    })
}

fn check_version(version: Option<&serde_json::Value>) -> Result<(), AlertError> {
    match version {
        Some(serde_json::Value::String(v)) if v == "4" => Ok(()),
        Some(serde_json::Value::String(v)) => Err(AlertError::Version(v.clone())),
        Some(other) => Err(AlertError::Version(other.to_string())),
        None => Err(AlertError::Version(String::new())),
    }
}

/// Parses what `--alert FILE` holds: a whole webhook payload, one alert
/// object, or a list of alert objects. JSON or YAML.
pub fn parse_alert_file(text: &str, now: DateTime<Utc>) -> Result<Vec<Alert>, AlertError> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_err) => match crate::runbook::loader::yaml_value(text) {
            Some(v) => v,
            None => return Err(json_error(json_err)),
        },
    };
    if value.get("alerts").is_some() {
        let body = serde_json::to_vec(&value).map_err(json_error)?;
        return parse_webhook(&body, now).map(|d| d.alerts);
    }
    let wires: Vec<WireAlert> = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value).map_err(json_error)?,
        _ => vec![serde_json::from_value(value).map_err(json_error)?],
    };
    Ok(wires.into_iter().map(|w| Alert::from_wire(w, None, now)).collect())
}

/// A dedupe key as stored: the first 16 bytes of its SHA-256. Shorter than
/// the key (a fingerprint and a timestamp) and of fixed size; two different
/// notifications collide with odds of about 2^-128 per pair.
pub fn dedupe_id(key: &str) -> [u8; 16] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Test and example builder: `Alert::firing("X").label("ns", "shop")`.
impl Alert {
    pub fn firing(name: &str) -> Alert {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_string(), name.to_string());
        let starts_at = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("constant time parses")
            .with_timezone(&Utc);
        let mut alert = Alert {
            status: AlertStatus::Firing,
            fingerprint: String::new(),
            labels,
            annotations: BTreeMap::new(),
            starts_at,
            ends_at: None,
            generator_url: String::new(),
            group_key: None,
        };
        alert.fingerprint = label_fingerprint(&alert.labels);
        alert
    }

    pub fn label_set(mut self, name: &str, value: &str) -> Alert {
        self.labels.insert(name.to_string(), value.to_string());
        self.fingerprint = label_fingerprint(&self.labels);
        self
    }

    pub fn resolved(mut self) -> Alert {
        self.status = AlertStatus::Resolved;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn parses_alertmanager_v4_body() {
        let body = br#"{"version":"4","groupKey":"{}:{alertname=\"X\"}","truncatedAlerts":2,
          "status":"firing","receiver":"pitcrew","groupLabels":{},"commonLabels":{},
          "commonAnnotations":{},"externalURL":"http://am",
          "alerts":[{"status":"firing","labels":{"alertname":"X","ns":"$(rm -rf /)"},
          "annotations":{},"startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z",
          "generatorURL":"","fingerprint":"abc"}]}"#;
        let d = parse_webhook(body, now()).unwrap();
        assert_eq!(d.truncated_alerts, 2);
        assert_eq!(d.alerts[0].label("ns"), "$(rm -rf /)");
        assert_eq!(d.alerts[0].ends_at, None);
        assert_eq!(d.alerts[0].fingerprint, "abc");
    }

    #[test]
    fn refuses_other_versions_with_the_version_named() {
        let err = parse_webhook(br#"{"version":"5","alerts":[]}"#, now()).unwrap_err();
        assert!(err.to_string().contains("\"5\""), "{err}");
        let err = parse_webhook(br#"{"alerts":[]}"#, now()).unwrap_err();
        assert_eq!(err.kind(), "bad_version");
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let err = parse_webhook(b"{\"version\": \"4\",\n \"alerts\": [", now()).unwrap_err();
        assert!(matches!(err, AlertError::Json { line: 2, .. }), "{err}");
    }

    #[test]
    fn alert_file_accepts_single_alert_and_payload() {
        let one = parse_alert_file(r#"{"labels":{"alertname":"X"}}"#, now()).unwrap();
        assert_eq!(one[0].status, AlertStatus::Firing);
        assert!(!one[0].fingerprint.is_empty());
        let yaml = "labels:\n  alertname: X\nstatus: resolved\n";
        let one = parse_alert_file(yaml, now()).unwrap();
        assert_eq!(one[0].status, AlertStatus::Resolved);
    }
}
