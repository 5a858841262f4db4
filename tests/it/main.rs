//! Integration tests: one binary, one module per feature.
// The store contract's tests run once per backend: the same file is a
// module twice, and each copy picks its backend from its module path.
#![allow(clippy::duplicate_mod)]

mod actions_alertmanager;
mod actions_http;
mod actions_prometheus;
mod approvals;
/// The same approval tests, on the PostgreSQL store.
#[path = "approvals.rs"]
mod approvals_on_postgres;
mod audit;
mod authz;
mod budget_prometheus;
mod checkpoint;
mod cli;
mod clusters;
mod deploy;
mod e2e;
mod engine;
#[cfg(feature = "failpoints")]
mod failpoints;
mod faults;
mod guardrails;
/// The same guardrail tests, on the PostgreSQL store: one contract, two backends.
#[path = "guardrails.rs"]
mod guardrails_on_postgres;
mod hostile;
mod k8s_server;
mod kubernetes;
mod pagerduty;
mod pg;
mod plugins;
mod properties;
mod realparts;
mod reload;
mod replicas;
mod report;
/// The same effectiveness and report tests, on the PostgreSQL store.
#[path = "report.rs"]
mod report_on_postgres;
mod server;
mod simulate;
mod slack;
mod support;
mod ui;
mod windows;
/// The same window and inhibition tests, on the PostgreSQL store.
#[path = "windows.rs"]
mod windows_on_postgres;
