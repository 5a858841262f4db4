//! Error budgets: each SLO's remaining budget, from Prometheus good/total
//! queries (evaluated at the same timestamp) or a static value, mapped to the
//! budget policy's tiers. Unknown (Prometheus unreachable) behaves as freeze.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use crate::action::Deps;
use crate::config::{Sli, Slo};
use crate::guard::{BudgetStatus, remaining_budget, tier};
use crate::units::Duration;

/// `{{window}}` as Prometheus reads it: one unit, the largest that fits
/// (30d, not 4w2d).
pub fn prom_window(d: Duration) -> String {
    let secs = d.as_millis() / 1000;
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= n && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// One instant query's first sample; good and total use the same `at`.
async fn sample(deps: &Deps, query: &str, at: DateTime<Utc>) -> Result<f64, String> {
    let answer = crate::action::prometheus::instant(deps, query, at, std::time::Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    answer.first.ok_or_else(|| format!("`{query}` returned no data"))
}

/// Evaluates one SLO now.
pub async fn evaluate(deps: &Deps, slo: &Slo, now: DateTime<Utc>) -> BudgetStatus {
    let config = &deps.config;
    let (remaining, error) = match &slo.sli {
        Sli::Static(r) => (Some(r.0), None),
        Sli::Prometheus { good, total } => match &config.prometheus_url {
            None => (None, Some("no prometheus.url in config".to_string())),
            Some(_) => {
                let window = prom_window(slo.window);
                // The config allows `{{window}}` and nothing else here.
                let fill = |q: &str| crate::promql::substitute(q, |_| window.clone());
                let (good_query, total_query) = (fill(good), fill(total));
                let (good, total) = tokio::join!(sample(deps, &good_query, now), sample(deps, &total_query, now));
                match (good, total) {
                    (Ok(g), Ok(t)) => match remaining_budget(g, t, slo.objective.0) {
                        Some(r) => (Some(r), None),
                        None => (None, Some(format!("total is {t}: no traffic to judge"))),
                    },
                    (Err(e), _) | (_, Err(e)) => (None, Some(e)),
                }
            }
        },
    };
    status(slo, remaining, error, &config.budget_policy)
}

/// An SLO's status for a remaining budget (`None` = unknown, with `error`).
fn status(slo: &Slo, remaining: Option<f64>, error: Option<String>, policy: &[crate::config::PolicyRow]) -> BudgetStatus {
    let (tier_name, auto, approve) = tier(remaining, policy);
    let budget_minutes = slo.window.as_millis() as f64 / 60_000.0 * (1.0 - slo.objective.0);
    BudgetStatus {
        slo: slo.name.clone(),
        remaining,
        tier: tier_name,
        auto,
        approve,
        error,
        objective: slo.objective.0,
        // As configured and as Prometheus reads it (30d, not 4w2d).
        window: prom_window(slo.window),
        budget_minutes,
        remaining_minutes: remaining.map(|r| r * budget_minutes),
    }
}

/// Cached budgets, refreshed in the background by `serve`.
pub struct Budgets {
    deps: Arc<Deps>,
    cache: RwLock<HashMap<String, BudgetStatus>>,
    /// SLOs being evaluated in the background for `cached_or_unknown`.
    evaluating: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Budgets {
    pub fn new(deps: Arc<Deps>) -> Budgets {
        Budgets {
            deps,
            cache: RwLock::new(HashMap::new()),
            evaluating: Default::default(),
        }
    }

    /// Re-evaluates every SLO.
    pub async fn refresh(&self, now: DateTime<Utc>) -> Vec<BudgetStatus> {
        let mut out = Vec::new();
        for slo in &self.deps.config.slos {
            out.push(evaluate(&self.deps, slo, now).await);
        }
        let mut cache = self.cache.write().expect("budget cache lock");
        for b in &out {
            cache.insert(b.slo.clone(), b.clone());
        }
        out
    }

    /// The cached status of one SLO (None before the first refresh).
    pub fn get(&self, slo: &str) -> Option<BudgetStatus> {
        self.cache.read().expect("budget cache lock").get(slo).cloned()
    }

    /// The cached status, evaluating it now when it is not cached yet.
    pub async fn status(&self, slo: &str, now: DateTime<Utc>) -> Option<BudgetStatus> {
        if let Some(b) = self.get(slo) {
            return Some(b);
        }
        let def = self.deps.config.slo(slo)?;
        let b = evaluate(&self.deps, def, now).await;
        self.cache.write().expect("budget cache lock").insert(slo.to_string(), b.clone());
        Some(b)
    }

    /// For the webhook, which must never wait on Prometheus: the cached
    /// status, or a static SLO's (no IO), or else `unknown` at once (which
    /// the policy treats as a freeze) while one evaluation runs in the
    /// background and fills the cache for the alerts after it.
    pub fn cached_or_unknown(self: &Arc<Self>, slo: &str, now: DateTime<Utc>) -> Option<BudgetStatus> {
        if let Some(b) = self.get(slo) {
            return Some(b);
        }
        let def = self.deps.config.slo(slo)?;
        let policy = &self.deps.config.budget_policy;
        if let Sli::Static(r) = &def.sli {
            // No IO: as good as cached.
            return Some(status(def, Some(r.0), None, policy));
        }
        if self.evaluating.lock().expect("budget evaluating lock").insert(slo.to_string()) {
            let (budgets, name) = (self.clone(), slo.to_string());
            tokio::spawn(async move {
                if let Some(def) = budgets.deps.config.slo(&name) {
                    let b = evaluate(&budgets.deps, def, now).await;
                    budgets.cache.write().expect("budget cache lock").insert(name.clone(), b);
                }
                budgets.evaluating.lock().expect("budget evaluating lock").remove(&name);
            });
        }
        let why = "not evaluated yet (evaluating in the background; the webhook never waits on Prometheus)";
        Some(status(def, None, Some(why.into()), policy))
    }

    pub fn all(&self) -> Vec<BudgetStatus> {
        let cache = self.cache.read().expect("budget cache lock");
        self.deps.config.slos.iter().filter_map(|s| cache.get(&s.name).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, default_budget_policy};
    use crate::runbook::Risk;

    #[test]
    fn windows_print_in_one_unit() {
        assert_eq!(prom_window("30d".parse().unwrap()), "30d");
        assert_eq!(prom_window("90m".parse().unwrap()), "90m");
        assert_eq!(prom_window("1h".parse().unwrap()), "1h");
    }

    #[test]
    fn remaining_and_tiers_follow_the_spec() {
        // 99.9%: 0.05% errors used half the budget.
        let r = remaining_budget(99_950.0, 100_000.0, 0.999).unwrap();
        assert!((r - 0.5).abs() < 1e-9, "{r}");
        let policy = default_budget_policy();
        assert_eq!(tier(Some(0.8), &policy).0, "healthy");
        assert_eq!(tier(Some(0.5), &policy).0, "caution", "50% is not above 50%");
        let (name, auto, approve) = tier(Some(0.182), &policy);
        assert_eq!(
            (name.as_str(), auto, approve),
            ("freeze", vec![Risk::Low], vec![Risk::Medium, Risk::High])
        );
        assert_eq!(tier(Some(-0.2), &policy).0, "exhausted");
        assert_eq!(tier(None, &policy).0, "unknown");
        assert_eq!(remaining_budget(1.0, 0.0, 0.999), None);
    }

    #[tokio::test]
    async fn static_budget_and_minutes() {
        let config = Config::parse(
            std::path::Path::new("c.yaml"),
            "slos:\n  - {name: a, objective: 99.9%, window: 30d, static_remaining: 80%}\n",
        )
        .unwrap();
        let slo = config.slos[0].clone();
        let b = evaluate(&Deps::new(Arc::new(config)), &slo, Utc::now()).await;
        assert!((b.budget_minutes - 43.2).abs() < 1e-9, "{}", b.budget_minutes);
        assert_eq!(b.tier, "healthy");
        assert!((b.remaining_minutes.unwrap() - 34.56).abs() < 1e-9);
    }

    #[tokio::test]
    async fn unreachable_prometheus_is_unknown_and_frozen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let text = format!(
            "prometheus: {{url: http://127.0.0.1:{port}}}\nslos:\n  - {{name: a, objective: 99.9%, window: 30d, good: up, total: up}}\n"
        );
        let config = Config::parse(std::path::Path::new("c.yaml"), &text).unwrap();
        let slo = config.slos[0].clone();
        let b = evaluate(&Deps::new(Arc::new(config)), &slo, Utc::now()).await;
        assert_eq!(b.tier, "unknown");
        assert_eq!(b.auto, vec![Risk::Low]);
        assert!(b.error.unwrap().contains("unreachable"));
    }
}
