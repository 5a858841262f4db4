//! pitcrew: alerts in, guarded remediation out, every step in a hash-chained
//! audit log. Modules in pipeline order; see ARCHITECTURE.md.

pub mod config;
pub mod alert;
pub mod runbook;
pub mod matcher;
pub mod action;

pub mod diag;
pub mod redact;
pub mod units;
