//! Reconnect backoff (B11): exponential from an initial delay, capped, with "equal jitter"
//! (a delay drawn uniformly from the upper half of the exponential step) so that many hubs
//! that lost the same broker do not redial in lockstep.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Largest delay between attempts.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl BackoffConfig {
    /// The un-jittered step for the given failed attempt (0 for the first failure).
    #[must_use]
    pub fn step(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait after `failures` failed attempts: uniform in `[step/2, step]`.
    pub fn delay(&self, failures: u32, rng: &mut ChaCha8Rng) -> Duration {
        let step = self.step(failures);
        let half = step / 2;
        let spread = (step - half).as_micros() as u64;
        half + Duration::from_micros(rng.random_range(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn doubles_then_caps() {
        let b = BackoffConfig::default();
        let steps: Vec<u64> = (0..9).map(|n| b.step(n).as_millis() as u64).collect();
        assert_eq!(
            steps,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.step(u32::MAX), b.max);
    }

    #[test]
    fn jitter_stays_in_the_upper_half_and_is_seeded() {
        let b = BackoffConfig::default();
        let mut r1 = ChaCha8Rng::seed_from_u64(7);
        let mut r2 = ChaCha8Rng::seed_from_u64(7);
        for n in 0..20 {
            let d = b.delay(n, &mut r1);
            assert!(d >= b.step(n) / 2 && d <= b.step(n), "{d:?}");
            assert_eq!(d, b.delay(n, &mut r2));
        }
    }
}
