//! PagerDuty Events API v2: acknowledge the incident Alertmanager opened
//! when automation starts on it, and page a human when automation failed.
//!
//! The dedup key of Alertmanager's own PagerDuty integration is the
//! lowercase hex SHA-256 of the notification's group key, the same string
//! its webhook sends as `groupKey`; so an `acknowledge` with that key lands
//! on the incident Alertmanager triggered, when both receivers sit on routes
//! with the same matchers and `group_by`.
//!
//! Events go out in the background, after the state they tell of is
//! durable: never on the webhook's path, never holding a worker. At most
//! [`QUEUE`] events wait at once (more are dropped, logged and counted);
//! each is retried with backoff while PagerDuty answers 429 or 5xx or
//! cannot be reached, and recorded in the audit log once, delivered or not.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use backon::BackoffBuilder;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::audit::{Event, kind};
use crate::config::PagerDutyConfig;
use crate::metrics::Metrics;
use crate::runbook::Risk;
use crate::store::Store;

/// Where events go unless `pagerduty.events_url` says otherwise.
pub const DEFAULT_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Events waiting or being delivered, at most; more are dropped.
pub const QUEUE: usize = 1024;

/// Deliveries in flight at once.
const CONCURRENT: usize = 4;

/// One request's time limit.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// PagerDuty truncates nothing for us: summaries above this are refused.
const MAX_SUMMARY: usize = 1024;

/// The dedup key Alertmanager's PagerDuty integration gives the incident
/// of a notification group: lowercase hex SHA-256 of the group key.
pub fn dedup_key(group_key: &str) -> String {
    hex::encode(Sha256::digest(group_key.as_bytes()))
}

/// The dedup key of the page for a failed run: one incident per run.
pub fn run_dedup_key(execution: &str) -> String {
    format!("pitcrew/{execution}")
}

/// PagerDuty's severity for a failed run, from the runbook's risk: what a
/// failed high-risk change left behind is the most urgent.
pub fn severity(risk: Risk) -> &'static str {
    match risk {
        Risk::Low => "warning",
        Risk::Medium => "error",
        Risk::High => "critical",
    }
}

/// An Events API v2 event, without the routing key (added when sent).
#[derive(Debug, Clone, Serialize)]
pub struct PdEvent {
    pub event_action: EventAction,
    pub dedup_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAction {
    Acknowledge,
    Trigger,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Acknowledge => "acknowledge",
            EventAction::Trigger => "trigger",
        }
    }
}

/// The run an event is about: (execution id, runbook, target).
pub type About = (String, String, String);

impl PdEvent {
    /// Automation started on the incident Alertmanager opened for this group.
    pub fn acknowledge(group_key: &str) -> PdEvent {
        PdEvent {
            event_action: EventAction::Acknowledge,
            dedup_key: dedup_key(group_key),
            payload: None,
        }
    }

    /// A run ended `failed` or `unknown`: a human is needed. `error` is
    /// redacted already.
    pub fn page(about: &About, state: &str, error: &str, risk: Risk, alertname: Option<&str>) -> PdEvent {
        let (id, runbook, target) = about;
        let mut summary = format!("pitcrew: runbook {runbook} on {target} ended {state}: {error}");
        if summary.len() > MAX_SUMMARY {
            let mut cut = MAX_SUMMARY - '…'.len_utf8();
            while !summary.is_char_boundary(cut) {
                cut -= 1;
            }
            summary.truncate(cut);
            summary.push('…');
        }
        PdEvent {
            event_action: EventAction::Trigger,
            dedup_key: run_dedup_key(id),
            payload: Some(json!({
                "summary": summary,
                "source": target,
                "severity": severity(risk),
                "component": runbook,
                "class": state,
                "custom_details": {
                    "execution": id,
                    "runbook": runbook,
                    "target": target,
                    "state": state,
                    "error": error,
                    "alertname": alertname,
                    "risk": risk.to_string(),
                },
            })),
        }
    }
}

/// Sends events in the background; cheap to clone.
#[derive(Clone)]
pub struct PagerDuty {
    config: PagerDutyConfig,
    redactor: crate::redact::Redactor,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    tasks: tokio_util::task::TaskTracker,
    waiting: Arc<AtomicUsize>,
    slots: Arc<tokio::sync::Semaphore>,
    backoff: backon::ExponentialBuilder,
}

/// How one event's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivered {
    ok: bool,
    attempts: u32,
    status: Option<u16>,
    error: Option<String>,
}

impl PagerDuty {
    /// `tasks` is where deliveries run, so whoever waits for the engine's
    /// notices at shutdown waits for these too.
    pub fn new(
        config: PagerDutyConfig,
        redactor: crate::redact::Redactor,
        http: reqwest::Client,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        tasks: tokio_util::task::TaskTracker,
    ) -> PagerDuty {
        PagerDuty {
            config,
            redactor,
            http,
            store,
            metrics,
            tasks,
            waiting: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(CONCURRENT)),
            // 0.2 s, 0.4 s, … up to 30 s, seven retries (about a minute in all).
            backoff: backon::ExponentialBuilder::default()
                .with_min_delay(std::time::Duration::from_millis(200))
                .with_max_delay(std::time::Duration::from_secs(30))
                .with_max_times(7)
                .with_jitter(),
        }
    }

    /// Queues an event; returns at once. Must be called inside the runtime.
    pub fn send(&self, event: PdEvent, about: About) {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= QUEUE {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.metrics.pagerduty(event.event_action.as_str(), "dropped");
            tracing::error!(execution = %about.0, action = event.event_action.as_str(), dedup_key = %event.dedup_key, "PagerDuty event dropped: {QUEUE} events are waiting already");
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let delivered = {
                let _slot = this.slots.acquire().await.expect("the semaphore is never closed");
                this.deliver(&event).await
            };
            this.waiting.fetch_sub(1, Ordering::SeqCst);
            this.finish(&event, &about, delivered).await;
        });
    }

    async fn deliver(&self, event: &PdEvent) -> Delivered {
        let mut body = serde_json::to_value(event).expect("an event serialises");
        body["routing_key"] = json!(self.config.routing_key);
        let mut delays = self.backoff.build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (status, error, retry) = match self.http.post(&self.config.events_url).json(&body).timeout(TIMEOUT).send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Delivered {
                            ok: true,
                            attempts,
                            status: Some(status.as_u16()),
                            error: None,
                        };
                    }
                    let text = response.text().await.unwrap_or_default();
                    let text: String = text.chars().take(300).collect();
                    // 429 and 5xx pass; any other answer says the event itself
                    // is wrong, and sending it again changes nothing.
                    let retry = status.as_u16() == 429 || status.is_server_error();
                    (Some(status.as_u16()), format!("PagerDuty answered {status}: {text}"), retry)
                }
                Err(e) => (None, format!("PagerDuty unreachable: {}", crate::redact::without_url(&e)), true),
            };
            match delays.next().filter(|_| retry) {
                Some(delay) => {
                    tracing::debug!(action = event.event_action.as_str(), attempts, error = %error, "PagerDuty event not delivered yet; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Delivered {
                        ok: false,
                        attempts,
                        status,
                        error: Some(error),
                    };
                }
            }
        }
    }

    /// Logs, counts and audits the delivery's end.
    async fn finish(&self, event: &PdEvent, about: &About, d: Delivered) {
        let action = event.event_action.as_str();
        // The log leaves pitcrew: redacted like the audit (the store redacts its records itself).
        let error = d.error.as_deref().map(|e| self.redactor.text(e));
        if d.ok {
            self.metrics.pagerduty(action, "delivered");
            tracing::info!(execution = %about.0, action, dedup_key = %event.dedup_key, attempts = d.attempts, "PagerDuty event delivered");
        } else {
            self.metrics.pagerduty(action, "failed");
            tracing::error!(execution = %about.0, action, dedup_key = %event.dedup_key, attempts = d.attempts, error = error.as_deref().unwrap_or(""), "PagerDuty event not delivered");
        }
        let record = Event::new(
            kind::PAGERDUTY,
            "pitcrew",
            json!({
                "event_action": action,
                "dedup_key": event.dedup_key,
                "delivered": d.ok,
                "attempts": d.attempts,
                "status": d.status,
                "error": error,
            }),
        )
        .execution(&about.0, &about.1, &about.2);
        if let Err(e) = self.store.record(vec![record]).await {
            tracing::error!(error = %e, "cannot record a PagerDuty event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dedup_key_is_alertmanagers() {
        // sha256("{}:{alertname=\"X\"}"), as Alertmanager's notify.Key.Hash computes it.
        let key = dedup_key("{}:{alertname=\"X\"}");
        assert_eq!(key.len(), 64);
        assert!(key.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(key, hex::encode(Sha256::digest(b"{}:{alertname=\"X\"}")));
        assert_eq!(run_dedup_key("01J"), "pitcrew/01J");
    }

    #[test]
    fn a_page_names_runbook_target_and_error_and_fits_pagerdutys_limit() {
        let about = ("01J".to_string(), "restart".to_string(), "shop/web".to_string());
        let e = PdEvent::page(&about, "failed", "step `r` failed: boom", Risk::High, Some("Down"));
        let body = serde_json::to_value(&e).unwrap();
        assert_eq!(body["event_action"], "trigger");
        assert_eq!(body["dedup_key"], "pitcrew/01J");
        assert_eq!(body["payload"]["severity"], "critical");
        let summary = body["payload"]["summary"].as_str().unwrap();
        assert!(
            summary.contains("restart") && summary.contains("shop/web") && summary.contains("boom"),
            "{summary}"
        );
        let long = PdEvent::page(&about, "unknown", &"é".repeat(2000), Risk::Low, None);
        let summary = long.payload.unwrap()["summary"].as_str().unwrap().to_string();
        assert!(summary.len() <= MAX_SUMMARY && summary.ends_with('…'), "{}", summary.len());
        let ack = serde_json::to_value(PdEvent::acknowledge("g")).unwrap();
        assert_eq!(ack, json!({"event_action": "acknowledge", "dedup_key": dedup_key("g")}));
    }
}
