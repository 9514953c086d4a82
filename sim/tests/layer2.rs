//! Layer 2: the real runtime (`warren_runtime::Server`) under turmoil, with the scripted
//! broker and clients, over many seeds.

use warren_sim::layer2::{run, L2Options};
use warren_sim::seeds;

/// Turmoil seeds swept by default (CI); `SIM_L2_SEEDS=N` overrides, `SIM_SEED=n` replays one.
const DEFAULT_SEEDS: u64 = 100;

#[test]
fn turmoil_sweep() {
    let list = if seeds::replaying() {
        seeds::from_env(0)
    } else {
        let n = std::env::var("SIM_L2_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_SEEDS);
        let start = std::env::var("SIM_SEED_START")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64);
        (start..start + n).collect()
    };
    let opts = L2Options {
        trace: seeds::replaying(),
        ..L2Options::default()
    };
    let (results, wall) = seeds::sweep(&list, |seed| run(seed, &opts));
    let mut failed = Vec::new();
    for (seed, r) in &results {
        if seeds::replaying() {
            println!("{}", r.log.join("\n"));
        }
        if !r.ok() {
            failed.push(*seed);
            eprintln!("turmoil seed {seed} FAILED:");
            for v in &r.violations {
                eprintln!("  {v}");
            }
            eprintln!("  log: {}", r.log.join("\n       "));
            eprintln!(
                "replay: SIM_SEED={seed} cargo test -p warren-sim --test layer2 turmoil_sweep -- --nocapture"
            );
        }
    }
    println!(
        "layer 2: {} seeds in {:.1}s wall, {} failed",
        results.len(),
        wall.as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "failing turmoil seeds: {failed:?}");
}
