//! Waiting with deadlines. A deadline here is an upper bound that turns a hang into a test
//! failure with a clear message; it is never a performance assertion.

use anyhow::{anyhow, Result};
use std::future::Future;
use std::time::Duration;

/// The default upper bound for conditions that should become true "soon".
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(30);

/// Runs `fut`, failing with "`what` did not finish within `limit`" if it takes longer.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("{what} did not finish within {limit:?}"))
}

/// Polls `check` until it returns `Ok(Some(value))`, then returns the value. `Ok(None)` means
/// "not yet"; an `Err` stops the wait at once. Fails after `limit` with `what` and the last
/// state reported by `check` through `Ok(None)`.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_the_value_and_times_out() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            let ready = n >= 3;
            async move { Ok(ready.then_some(n)) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);

        let e = wait_until(Duration::from_millis(50), "never", || async {
            Ok(None::<()>)
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("never"), "{e}");
    }
}
