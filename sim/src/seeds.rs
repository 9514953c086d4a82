//! Seeds: replaying one (`SIM_SEED=n`), sweeping many (`SIM_SEEDS=N`), and the committed list
//! of seeds that once failed (`sim/regression-seeds.txt`).

use std::time::Instant;

/// The seeds a sweep runs: `SIM_SEED` alone if set, else `SIM_SEEDS` seeds from
/// `SIM_SEED_START` (default 0), else `default_count` seeds from 0.
#[must_use]
pub fn from_env(default_count: u64) -> Vec<u64> {
    if let Some(seed) = env_u64("SIM_SEED") {
        return vec![seed];
    }
    let n = env_u64("SIM_SEEDS").unwrap_or(default_count);
    let start = env_u64("SIM_SEED_START").unwrap_or(0);
    (start..start.saturating_add(n)).collect()
}

/// Whether a single seed is being replayed (`SIM_SEED` is set).
#[must_use]
pub fn replaying() -> bool {
    env_u64("SIM_SEED").is_some()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The seeds in a regression file: one per line, `#` starts a comment.
#[must_use]
pub fn parse_regressions(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The command that replays `seed` in `test`.
#[must_use]
pub fn replay_command(seed: u64, test: &str) -> String {
    format!("SIM_SEED={seed} cargo test -p warren-sim --test {test} -- --nocapture")
}

/// Runs `f` on every seed, spread over the machine's cores, and returns the results in seed
/// order with the wall time taken. Each seed is independent, so the split cannot change an
/// outcome.
pub fn sweep<T: Send>(
    seeds: &[u64],
    f: impl Fn(u64) -> T + Sync,
) -> (Vec<(u64, T)>, std::time::Duration) {
    // Wall time is reported, never used for logic.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let chunk = seeds.len().div_ceil(threads).max(1);
    let mut results: Vec<(u64, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .chunks(chunk)
            .map(|part| {
                let f = &f;
                s.spawn(move || part.iter().map(|&seed| (seed, f(seed))).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sweep thread panicked"))
            .collect()
    });
    results.sort_by_key(|(s, _)| *s);
    (results, started.elapsed())
}
