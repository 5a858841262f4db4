//! pitcrew: alerts in, guarded remediation out, every step in a hash-chained
//! audit log. Modules in pipeline order; see ARCHITECTURE.md.

pub mod action;
pub mod audit;
pub mod budget;
pub mod checkpoint;
pub mod store;

pub mod alert;
pub mod authz;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod guard;
pub mod inhibit;
pub mod matcher;
pub mod metrics;
pub mod pagerduty;
pub mod report;
pub mod runbook;
pub mod server;
pub mod simulate;
pub mod slack;

pub mod clock;
pub mod diag;
pub mod failpoint;
pub mod promql;
pub mod redact;
pub mod units;
pub mod window;
