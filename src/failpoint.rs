//! Failpoints for fault-injection tests: named places in the store and the
//! engine where a test build (feature `failpoints`) can crash the process
//! or make an operation fail, chosen by `PITCREW_FAILPOINT=NAME` (or
//! `NAME@N`: at its Nth hit). Without the feature every call is a constant
//! and compiles away; release builds carry none of it.

/// Aborts the process here (as a crash or `kill -9` would) when this is
/// the failpoint chosen, at its chosen hit.
#[inline(always)]
pub fn crash(name: &str) {
    #[cfg(feature = "failpoints")]
    if armed::hit(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether the operation here should fail, as chosen: from its chosen hit
/// on, every later hit fails too (a disk that broke stays broken).
#[inline(always)]
pub fn fail(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The chosen failpoint, its hit to start at, and hits so far.
    struct Chosen {
        name: String,
        at: u64,
        hits: AtomicU64,
    }

    fn chosen() -> Option<&'static Chosen> {
        static CHOSEN: OnceLock<Option<Chosen>> = OnceLock::new();
        CHOSEN
            .get_or_init(|| {
                let spec = std::env::var("PITCREW_FAILPOINT").ok()?;
                let (name, at) = match spec.split_once('@') {
                    Some((name, at)) => (name.to_string(), at.parse().unwrap_or(1)),
                    None => (spec, 1),
                };
                Some(Chosen {
                    name,
                    at,
                    hits: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub(super) fn hit(name: &str) -> bool {
        match chosen() {
            Some(c) if c.name == name => c.hits.fetch_add(1, Ordering::SeqCst) + 1 >= c.at,
            _ => false,
        }
    }
}
