//! `guardrails.inhibit_while_firing`: a run waits out another alert. Each
//! rule is a list of Alertmanager matchers that must all hold for one alert
//! pitcrew holds as firing and not resolved; while one does, the run is
//! blocked (`inhibited`).
//!
//! Pure: rules are rendered with the run's params by `runbook`, the store
//! finds the candidate alerts (by `alertname` where a rule names one) inside
//! the deciding transaction, and [`holds`] tells the inhibiting one.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::matcher::{MatchOp, Matcher};
use crate::runbook::template::Tpl;
use crate::units::Duration;

/// An alert counts as firing until its resolved notification arrives, its
/// `endsAt` passes, or no notification of it arrived for this long (a
/// resolve that never came: Alertmanager re-sends a firing alert every
/// `repeat_interval`, 4h by default, and each re-send keeps it firing).
pub const FIRING_EXPIRES: Duration = Duration::from_secs(24 * 3600);

/// Template roots an inhibition matcher's value may use.
pub const ROOTS: &[&str] = &["params", "target", "runbook"];

/// One matcher of a rule as compiled: its value may be a template.
#[derive(Debug, Clone)]
pub struct InhibitMatcher {
    /// As written, for messages and `pitcrew schema`-shaped output.
    pub source: String,
    pub name: String,
    pub op: MatchOp,
    pub value: Tpl,
}

impl Serialize for InhibitMatcher {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// An alert pitcrew holds as firing and not resolved, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Firing {
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
}

impl Firing {
    pub fn alertname(&self) -> &str {
        self.labels.get("alertname").map(String::as_str).unwrap_or("")
    }
}

/// The `alertname="…"` equality of a rendered rule, if it has one: the
/// store then looks up only firing alerts of that name (an index search);
/// without one it must look at every firing alert.
pub fn alertname(rule: &[Matcher]) -> Option<&str> {
    rule.iter()
        .find(|m| m.name == "alertname" && m.op == MatchOp::Equal)
        .map(|m| m.value.as_str())
}

/// Whether every matcher of `rule` holds for the firing alert `f`. The
/// alert being decided (`own` fingerprint) never inhibits itself.
pub fn holds(rule: &[Matcher], f: &Firing, own: Option<&str>) -> bool {
    Some(f.fingerprint.as_str()) != own && rule.iter().all(|m| m.matches_labels(&f.labels))
}

/// The rule as the decision shows it: `{alertname="DatabaseDown", cluster="eu1"}`.
pub fn describe(rule: &[Matcher]) -> String {
    format!("{{{}}}", rule.iter().map(Matcher::to_string).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(fp: &str, labels: &[(&str, &str)]) -> Firing {
        Firing {
            fingerprint: fp.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn first_match<'a>(rule: &[Matcher], candidates: &'a [Firing], own: Option<&str>) -> Option<&'a Firing> {
        candidates.iter().find(|f| holds(rule, f, own))
    }

    fn rule(matchers: &[&str]) -> Vec<Matcher> {
        matchers.iter().map(|m| Matcher::parse(m).unwrap()).collect()
    }

    #[test]
    fn every_matcher_must_hold_for_one_alert() {
        let stored = [
            firing("a", &[("alertname", "DatabaseDown"), ("cluster", "us1")]),
            firing("b", &[("alertname", "DiskFull"), ("cluster", "eu1")]),
            firing("c", &[("alertname", "DatabaseDown"), ("cluster", "eu1")]),
        ];
        let r = rule(&["alertname=\"DatabaseDown\"", "cluster=~\"eu.*\""]);
        assert_eq!(alertname(&r), Some("DatabaseDown"));
        assert_eq!(first_match(&r, &stored, None).map(|f| f.fingerprint.as_str()), Some("c"));
        // Two alerts holding one matcher each do not inhibit together.
        let r = rule(&["alertname=\"DiskFull\"", "cluster=\"us1\""]);
        assert_eq!(first_match(&r, &stored, None), None);
        // Without alertname, any firing alert may match.
        let r = rule(&["cluster=\"eu1\""]);
        assert_eq!(alertname(&r), None);
        assert_eq!(first_match(&r, &stored, None).map(|f| f.fingerprint.as_str()), Some("b"));
        // The alert being decided never inhibits itself.
        assert_eq!(first_match(&r, &stored, Some("b")).map(|f| f.fingerprint.as_str()), Some("c"));
        // An absent label is the empty string, as in Alertmanager.
        let r = rule(&["alertname=\"DatabaseDown\"", "team=\"\""]);
        assert_eq!(first_match(&r, &stored, None).map(|f| f.fingerprint.as_str()), Some("a"));
        assert_eq!(describe(&r), "{alertname=\"DatabaseDown\", team=\"\"}");
    }
}
