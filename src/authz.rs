//! Who may do what to which runbook: the groups of an identity
//! (`auth.tokens[].groups`, `auth.users`, and a Slack user through the
//! identity `slack.users` maps it to) against a runbook's `permissions`.
//!
//! One decision, [`check`], for manual runs, approvals and denials, whatever
//! door they came in by (CLI, API, Slack): the store calls it inside the
//! transaction that would record the run or the answer, and audits a
//! refusal there (`access.refused`). Pure: no IO.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::runbook::{Permissions, RunbookSet};

/// What someone asks to do with a runbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Start it by hand (`pitcrew run`, `POST /v1/runbooks/NAME/run`).
    Run,
    /// Approve one of its runs.
    Approve,
    /// Deny one of its runs.
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Approve => "approve",
            Action::Deny => "deny",
        }
    }

    /// The `permissions` key that decides it: denying is answering an
    /// approval, like approving.
    pub fn permission(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Approve | Action::Deny => "approve",
        }
    }
}

/// A request `permissions` refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub actor: String,
    pub runbook: String,
    pub action: Action,
    /// The groups the permission allows (empty: nobody).
    pub needs: Vec<String>,
    /// The groups the actor is in.
    pub has: Vec<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.action {
            Action::Run => format!("run runbook `{}` by hand", self.runbook),
            other => format!("{} runs of runbook `{}`", other.as_str(), self.runbook),
        };
        let allowed = if self.needs.is_empty() {
            "allows nobody".to_string()
        } else {
            format!("needs one of the groups {}", self.needs.join(", "))
        };
        let has = if self.has.is_empty() {
            "in no group".to_string()
        } else {
            format!("in {}", self.has.join(", "))
        };
        write!(
            f,
            "{} may not {what}: its permissions.{} {allowed}, and {} is {has}",
            self.actor,
            self.action.permission(),
            self.actor
        )
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// The `access.refused` record's data.
    pub fn data(&self) -> Value {
        json!({
            "action": self.action,
            "permission": self.action.permission(),
            "needs": self.needs,
            "groups": self.has,
            "reason": self.to_string(),
        })
    }
}

/// Group names: letters, digits, `-`, `_` and `.`.
pub fn valid_group(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Every group some token or user is in.
pub fn known_groups(config: &Config) -> BTreeSet<&str> {
    let tokens = config.tokens.iter().flat_map(|t| t.groups.iter());
    let users = config.users.iter().flat_map(|u| u.groups.iter());
    tokens.chain(users).map(String::as_str).collect()
}

/// The groups of an actor: `api:NAME` has its token's, `user:NAME` its
/// `auth.users` entry's, and `slack:NAME` those of the token and the user
/// named NAME (`slack.users` maps a Slack user to that name). Anyone else
/// (`api:local` without tokens, `system:…`) is in none.
pub fn groups_of<'a>(config: &'a Config, actor: &str) -> BTreeSet<&'a str> {
    let (tokens, users) = match actor.split_once(':') {
        Some(("api", name)) => (Some(name), None),
        Some(("user", name)) => (None, Some(name)),
        Some(("slack", name)) => (Some(name), Some(name)),
        _ => (None, None),
    };
    let from_tokens = config
        .tokens
        .iter()
        .filter(|t| Some(t.name.as_str()) == tokens)
        .flat_map(|t| t.groups.iter());
    let from_users = config
        .users
        .iter()
        .filter(|u| Some(u.name.as_str()) == users)
        .flat_map(|u| u.groups.iter());
    from_tokens.chain(from_users).map(String::as_str).collect()
}

/// Whether two actors are one person, for the two-person rule. A Slack user
/// acts as the identity `slack.users` names, so `slack:alice` is the same
/// person as `api:alice` and `user:alice`; otherwise actors are compared as
/// they are (a token and an OS user are separate identities).
pub fn same_person(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.split_once(':'), b.split_once(':')) {
        (Some((ka, na)), Some((kb, nb))) => {
            let person = |k: &str| matches!(k, "slack" | "api" | "user");
            na == nb && (ka == "slack" || kb == "slack") && person(ka) && person(kb)
        }
        _ => false,
    }
}

/// The decision: may `actor` do `action` to `runbook`, under its
/// `permissions`? A list left out allows any operator; the requester of a run
/// may always deny (withdraw) it.
pub fn check(
    config: &Config,
    permissions: Option<&Permissions>,
    runbook: &str,
    actor: &str,
    action: Action,
    requester: Option<&str>,
) -> Result<(), Refusal> {
    if action == Action::Deny && requester.is_some_and(|r| same_person(r, actor)) {
        return Ok(());
    }
    let allowed = match (permissions, action) {
        (None, _) => return Ok(()),
        (Some(p), Action::Run) => &p.run,
        (Some(p), Action::Approve | Action::Deny) => &p.approve,
    };
    let Some(allowed) = allowed else { return Ok(()) };
    let has = groups_of(config, actor);
    if allowed.iter().any(|g| has.contains(g.as_str())) {
        return Ok(());
    }
    Err(Refusal {
        actor: actor.to_string(),
        runbook: runbook.to_string(),
        action,
        needs: allowed.clone(),
        has: has.into_iter().map(String::from).collect(),
    })
}

/// What an approval's transaction asks of the loaded runbooks and the
/// config: the two-person rule's exception and the runbook's permissions.
/// A runbook no longer loaded keeps the two-person rule and has no
/// permissions to check (any operator may answer its pending runs).
pub struct Approvers {
    set: Arc<RunbookSet>,
    config: Arc<Config>,
}

impl Approvers {
    pub fn new(config: Arc<Config>, set: Arc<RunbookSet>) -> Arc<Approvers> {
        Arc::new(Approvers { set, config })
    }

    /// Whether the requester of a run of `runbook` may approve it too
    /// (`guardrails.self_approval`).
    pub fn may_self_approve(&self, runbook: &str) -> bool {
        self.set.get(runbook).is_some_and(|r| r.guardrails.self_approval)
    }

    /// [`check`] against the loaded runbook's permissions.
    pub fn check(&self, runbook: &str, actor: &str, action: Action, requester: Option<&str>) -> Result<(), Refusal> {
        let permissions = self.set.get(runbook).and_then(|r| r.permissions.as_ref());
        check(&self.config, permissions, runbook, actor, action, requester)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = "auth:\n  tokens:\n    - {name: alice, token: alice-secret-1, role: operator, groups: [payments]}\n    - {name: bob, token: bob-secret-1, role: operator}\n  users:\n    - {name: root, groups: [sre]}\n    - {name: alice, groups: [oncall]}\n";
        Config::parse(std::path::Path::new("p.yaml"), text).unwrap()
    }

    fn perms(run: Option<&[&str]>, approve: Option<&[&str]>) -> Permissions {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| s.to_string()).collect());
        Permissions {
            run: list(run),
            approve: list(approve),
        }
    }

    #[test]
    fn groups_come_from_tokens_users_and_both_for_slack() {
        let c = config();
        let g = |a: &str| groups_of(&c, a).into_iter().collect::<Vec<_>>();
        assert_eq!(g("api:alice"), ["payments"]);
        assert_eq!(g("user:alice"), ["oncall"]);
        assert_eq!(g("slack:alice"), ["oncall", "payments"]);
        assert_eq!(g("user:root"), ["sre"]);
        assert!(g("api:bob").is_empty() && g("system:timeout").is_empty() && g("api:local").is_empty());
        assert_eq!(known_groups(&c).into_iter().collect::<Vec<_>>(), ["oncall", "payments", "sre"]);
    }

    #[test]
    fn permissions_allow_members_only_and_lists_left_out_allow_anyone() {
        let c = config();
        let p = perms(Some(&["payments"]), Some(&["sre"]));
        assert!(check(&c, Some(&p), "fix", "api:alice", Action::Run, None).is_ok());
        let refused = check(&c, Some(&p), "fix", "api:bob", Action::Run, None).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "api:bob may not run runbook `fix` by hand: its permissions.run needs one of the groups payments, and api:bob is in no group"
        );
        assert_eq!(refused.data()["permission"], "run");
        let refused = check(&c, Some(&p), "fix", "api:alice", Action::Approve, None).unwrap_err();
        assert!(
            refused.to_string().contains("permissions.approve needs one of the groups sre"),
            "{refused}"
        );
        assert!(check(&c, Some(&p), "fix", "user:root", Action::Approve, None).is_ok());
        assert!(check(&c, Some(&p), "fix", "user:root", Action::Deny, None).is_ok());
        assert!(check(&c, Some(&p), "fix", "api:bob", Action::Deny, None).is_err());
        // The requester may withdraw their own request.
        assert!(check(&c, Some(&p), "fix", "api:bob", Action::Deny, Some("api:bob")).is_ok());
        assert!(check(&c, None, "fix", "api:bob", Action::Approve, None).is_ok());
        assert!(check(&c, Some(&perms(None, Some(&["sre"]))), "fix", "api:bob", Action::Run, None).is_ok());
        let nobody = check(&c, Some(&perms(Some(&[]), None)), "fix", "user:root", Action::Run, None).unwrap_err();
        assert!(nobody.to_string().contains("permissions.run allows nobody"), "{nobody}");
    }

    #[test]
    fn a_slack_user_is_the_person_it_maps_to() {
        assert!(same_person("slack:alice", "api:alice"));
        assert!(same_person("user:alice", "slack:alice"));
        assert!(same_person("api:alice", "api:alice"));
        assert!(
            !same_person("api:alice", "user:alice"),
            "a token and an OS user stay separate identities"
        );
        assert!(!same_person("slack:alice", "api:bob"));
        assert!(!same_person("slack:alice", "system:alice"));
    }
}
