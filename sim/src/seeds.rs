//! Seeds: replaying one (`SIM_SEED=n`), sweeping many (`SIM_SEEDS=N`), and the committed list
//! of seeds that once failed (`sim/regression-seeds.txt`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Wall time one seed may take before the sweep's watchdog calls it a livelock. Generous:
/// the slowest seeds take well under a second in debug.
const WATCHDOG_MS: u64 = 60_000;

/// The seeds a sweep runs: `SIM_SEED` alone if set, else `SIM_SEEDS` seeds from
/// `SIM_SEED_START` (default 0), else `default_count` seeds from 0.
#[must_use]
pub fn from_env(default_count: u64) -> Vec<u64> {
    from_env_counted("SIM_SEEDS", default_count)
}

/// Like [`from_env`] with the number of seeds in `count_var` (layer 2 has its own, its
/// seeds being much slower).
#[must_use]
pub fn from_env_counted(count_var: &str, default_count: u64) -> Vec<u64> {
    if let Some(seed) = env_u64("SIM_SEED") {
        return vec![seed];
    }
    let n = env_u64(count_var).unwrap_or(default_count);
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

/// Prints the `SIM_SUMMARY` coverage table of a sweep: per coverage event, how many seeds
/// had it and how often it happened in all (`width`: of the event column).
pub fn print_coverage<'a>(
    coverages: impl IntoIterator<Item = &'a BTreeMap<&'static str, u64>>,
    width: usize,
) {
    let mut cov: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for coverage in coverages {
        for (k, v) in coverage {
            let e = cov.entry(k).or_default();
            e.0 += 1;
            e.1 += v;
        }
    }
    println!("coverage (seeds with it / total):");
    for (k, (seeds, total)) in cov {
        println!("  {k:width$} {seeds:6} {total:8}");
    }
}

/// Runs `f` on every seed, spread over the machine's cores, and returns the results in seed
/// order with the wall time taken. Each seed is independent, so the split cannot change an
/// outcome.
pub fn sweep<T: Send>(
    seeds: &[u64],
    f: impl Fn(u64) -> T + Sync,
) -> (Vec<(u64, T)>, std::time::Duration) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    sweep_on(threads, seeds, f)
}

/// Like [`sweep`] on a given number of threads. Layer 2 sweeps on one: two turmoil
/// simulations running at once in one process perturb each other through process-wide
/// counters (tokio task ids), so a seed found failing on a busy sweep might not replay
/// alone.
pub fn sweep_on<T: Send>(
    threads: usize,
    seeds: &[u64],
    f: impl Fn(u64) -> T + Sync,
) -> (Vec<(u64, T)>, std::time::Duration) {
    // Wall time is reported, never used for logic.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let threads = threads.max(1);
    let chunk = seeds.len().div_ceil(threads).max(1);
    let parts: Vec<&[u64]> = seeds.chunks(chunk).collect();
    // Per worker: the seed it runs (u64::MAX: none) and since when (ms of wall time).
    let running: Vec<(AtomicU64, AtomicU64)> = parts
        .iter()
        .map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0)))
        .collect();
    let done = AtomicBool::new(false);
    let mut results: Vec<(u64, T)> = std::thread::scope(|s| {
        // A livelock inside a state machine never returns to the world, so nothing inside
        // the run can notice it: a watchdog names the seed and stops the process.
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let now = started.elapsed().as_millis() as u64;
                for (seed, since) in &running {
                    let seed = seed.load(Ordering::Relaxed);
                    let took = now.saturating_sub(since.load(Ordering::Relaxed));
                    if seed != u64::MAX && took > WATCHDOG_MS {
                        eprintln!(
                            "seed {seed} has run for {}s of wall time: a livelock (a timer that never stops firing?)",
                            took / 1000
                        );
                        eprintln!("replay: SIM_SEED={seed} cargo test -p warren-sim ... -- --nocapture");
                        std::process::exit(101);
                    }
                }
            }
        });
        let handles: Vec<_> = parts
            .iter()
            .zip(&running)
            .map(|(part, slot)| {
                let f = &f;
                s.spawn(move || {
                    let mut out = Vec::with_capacity(part.len());
                    for &seed in *part {
                        slot.1
                            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        slot.0.store(seed, Ordering::Relaxed);
                        out.push((seed, f(seed)));
                        slot.0.store(u64::MAX, Ordering::Relaxed);
                    }
                    out
                })
            })
            .collect();
        let all: Vec<(u64, T)> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sweep thread panicked"))
            .collect();
        done.store(true, Ordering::Relaxed);
        all
    });
    results.sort_by_key(|(s, _)| *s);
    (results, started.elapsed())
}
