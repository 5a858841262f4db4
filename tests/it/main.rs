//! Integration tests: one binary, one module per feature.

mod audit;
mod cli;
mod e2e;
mod engine;
mod server;
mod support;
mod k8s_server;
mod kubernetes;
mod realparts;
mod actions_http;
mod actions_prometheus;
mod actions_alertmanager;
mod plugins;
mod guardrails;
