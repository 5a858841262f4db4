//! Prometheus metrics (`pitcrew_*`), served on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn step_histogram() -> Histogram {
    // 1 ms … ~33 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

pub struct Metrics {
    registry: Registry,
    pub alerts_received: Counter,
    pub alerts_duplicate: Counter,
    pub alerts_truncated: Counter,
    pub webhook_rejected: Family<Labels, Counter>,
    pub executions: Family<Labels, Counter>,
    pub step_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub queue_depth: Gauge,
    pub budget_remaining: Family<Labels, Gauge<f64, AtomicU64>>,
    pub pagerduty_events: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            alerts_received: Counter::default(),
            alerts_duplicate: Counter::default(),
            alerts_truncated: Counter::default(),
            webhook_rejected: Family::default(),
            executions: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            queue_depth: Gauge::default(),
            budget_remaining: Family::default(),
            pagerduty_events: Family::default(),
        };
        registry.register(
            "pitcrew_alerts_received",
            "Alerts stored (new, not duplicates)",
            m.alerts_received.clone(),
        );
        registry.register(
            "pitcrew_alerts_duplicate",
            "Alert notifications already recorded",
            m.alerts_duplicate.clone(),
        );
        registry.register(
            "pitcrew_alerts_truncated",
            "Alerts Alertmanager left out of notifications (truncatedAlerts)",
            m.alerts_truncated.clone(),
        );
        registry.register(
            "pitcrew_webhook_rejected",
            "Webhook requests refused, by reason",
            m.webhook_rejected.clone(),
        );
        registry.register("pitcrew_executions", "Executions by outcome", m.executions.clone());
        registry.register("pitcrew_step_duration_seconds", "Step run time by action", m.step_duration.clone());
        registry.register(
            "pitcrew_intake_queue_depth",
            "Executions queued and not yet started",
            m.queue_depth.clone(),
        );
        registry.register(
            "pitcrew_budget_remaining_ratio",
            "Error budget remaining by SLO (1 = untouched)",
            m.budget_remaining.clone(),
        );
        registry.register(
            "pitcrew_pagerduty_events",
            "PagerDuty events by action (acknowledge, trigger) and outcome (delivered, failed after retries, dropped with the queue full)",
            m.pagerduty_events.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn rejected(&self, reason: &str) {
        self.webhook_rejected.get_or_create(&vec![("reason".into(), reason.into())]).inc();
    }

    pub fn execution(&self, outcome: &str) {
        self.executions.get_or_create(&vec![("outcome".into(), outcome.into())]).inc();
    }

    pub fn step(&self, action: &str, seconds: f64) {
        self.step_duration
            .get_or_create(&vec![("action".into(), action.into())])
            .observe(seconds);
    }

    pub fn budget(&self, slo: &str, remaining: Option<f64>) {
        self.budget_remaining
            .get_or_create(&vec![("slo".into(), slo.into())])
            .set(remaining.unwrap_or(f64::NAN));
    }

    pub fn pagerduty(&self, action: &str, outcome: &str) {
        self.pagerduty_events
            .get_or_create(&vec![("action".into(), action.into()), ("outcome".into(), outcome.into())])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        let m = Metrics::default();
        m.alerts_received.inc();
        m.rejected("bad_json");
        m.execution("succeeded");
        m.step("log", 0.002);
        let text = m.render();
        for name in [
            "pitcrew_alerts_received_total 1",
            "pitcrew_webhook_rejected_total{reason=\"bad_json\"} 1",
            "pitcrew_executions_total{outcome=\"succeeded\"} 1",
            "pitcrew_step_duration_seconds_count{action=\"log\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
