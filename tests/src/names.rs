//! Names that no other test (in this process, in a parallel test process, or in an earlier run
//! against the same broker) uses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `"{prefix}-{pid}-{time}-{n}"`: unique per call within a process (counter), across
/// concurrent processes (pid) and across runs (time, which also covers pid reuse).
#[must_use]
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() % 1_000_000_000_000)
        .unwrap_or(0);
    format!("{prefix}-{}-{t}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_differ() {
        let a = super::unique("q");
        let b = super::unique("q");
        assert_ne!(a, b);
        assert!(a.starts_with("q-"));
    }
}
