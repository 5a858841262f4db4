//! pitcrew: alerts in, guarded remediation out, every step in a hash-chained
//! audit log. Modules in pipeline order; see ARCHITECTURE.md.

pub mod action;
pub mod alert;
pub mod config;
pub mod matcher;
pub mod runbook;

pub mod diag;
pub mod redact;
pub mod units;
