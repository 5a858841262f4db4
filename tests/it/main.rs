//! Integration tests: one binary, one module per feature.

mod actions_alertmanager;
mod actions_http;
mod actions_prometheus;
mod approvals;
mod audit;
mod budget_prometheus;
mod checkpoint;
mod cli;
mod deploy;
mod e2e;
mod engine;
#[cfg(feature = "failpoints")]
mod failpoints;
mod faults;
mod guardrails;
mod hostile;
mod k8s_server;
mod kubernetes;
mod plugins;
mod properties;
mod realparts;
mod server;
mod support;
