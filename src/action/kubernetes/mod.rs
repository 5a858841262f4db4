//! Kubernetes actions through the `kube` client.
//!
//! Shared here: the client (in-cluster, else kubeconfig with the configured
//! context) and name checks done before any request is sent.

pub mod delete_pods;
pub mod logs;
pub mod patch;
pub mod rollout_restart;
pub mod scale;

use super::ActionError;

pub(crate) const WORKLOADS: &[&str] = &["deployment", "statefulset", "daemonset"];

/// RFC 1123 label (namespaces) — checked before any request goes out.
pub fn check_namespace(field: &str, v: &str) -> Result<(), ActionError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ActionError::input(field, format!("{v:?} is not a valid RFC 1123 label")))
    }
}

/// RFC 1123 subdomain (object names).
pub fn check_name(field: &str, v: &str) -> Result<(), ActionError> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ActionError::input(field, format!("{v:?} is not a valid RFC 1123 name")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_requests() {
        assert!(check_name("name", "web-1.api").is_ok());
        for bad in ["", "../etc", "Web", "a;b", "-x", "x\n", "$(id)"] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
            assert!(check_namespace("namespace", bad).is_err(), "{bad:?}");
        }
    }
}
