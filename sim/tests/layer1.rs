//! Layer 1: the pure-core world over many seeds.

use warren_sim::scenario::Scenario;
use warren_sim::seeds;
use warren_sim::world::{run, RunOptions};

/// Seeds swept by default (CI); `SIM_SEEDS=N` overrides, `SIM_SEED=n` replays one.
const DEFAULT_SEEDS: u64 = 2000;

fn run_seed(seed: u64, trace: bool) -> warren_sim::world::Report {
    run(
        Scenario::random(seed),
        RunOptions {
            trace,
            ..RunOptions::default()
        },
    )
}

#[test]
fn sweep() {
    let list = seeds::from_env(DEFAULT_SEEDS);
    let replay = seeds::replaying();
    let (results, wall) = seeds::sweep(&list, |seed| run_seed(seed, replay));
    let mut failed = Vec::new();
    if std::env::var("SIM_SUMMARY").is_ok() {
        summarize(&results);
        return;
    }
    for (seed, report) in &results {
        if replay {
            println!("{}", report.trace);
            println!("summary: {}", report.summary);
        }
        if !report.ok() {
            failed.push(*seed);
            // Full reports for the first few failures; the rest are listed at the end.
            if failed.len() > 5 {
                continue;
            }
            let again = if replay {
                None
            } else {
                Some(run_seed(*seed, true))
            };
            eprintln!("seed {seed} FAILED ({}):", report.summary);
            for v in &report.violations {
                eprintln!("  {v}");
            }
            if let Some(r) = again {
                eprintln!("--- trace tail ---\n{}", tail(&r.trace, 60));
            }
            eprintln!("replay: {}", seeds::replay_command(*seed, "layer1 sweep"));
        }
    }
    println!(
        "layer 1: {} seeds in {:.1}s wall, {} failed",
        results.len(),
        wall.as_secs_f64(),
        failed.len()
    );
    for seed in failed.iter().skip(5) {
        let r = &results.iter().find(|(s, _)| s == seed).expect("ran").1;
        let first = r
            .violations
            .first()
            .map(|v| v.to_string())
            .unwrap_or_default();
        eprintln!(
            "seed {seed} FAILED: {first} ({} violations)",
            r.violations.len()
        );
        eprintln!("  replay: {}", seeds::replay_command(*seed, "layer1 sweep"));
    }
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `SIM_SUMMARY=1`: one line per kind of violation (digits blurred) with a count and the
/// first seeds showing it, instead of per-seed reports. For hunting, not for CI.
fn summarize(results: &[(u64, warren_sim::world::Report)]) {
    let mut kinds: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for (seed, r) in results {
        for v in &r.violations {
            let key: String = format!("[{}] {}", v.invariant, v.detail)
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            let e = kinds.entry(key).or_default();
            if e.last() != Some(seed) {
                e.push(*seed);
            }
        }
    }
    let failed = results.iter().filter(|(_, r)| !r.ok()).count();
    seeds::print_coverage(results.iter().map(|(_, r)| &r.coverage), 32);
    println!("{failed}/{} seeds failed", results.len());
    for (k, seeds) in kinds {
        let first: Vec<u64> = seeds.iter().take(6).copied().collect();
        println!("{:5} {k}\n      seeds {first:?}", seeds.len());
    }
}

/// Every seed that once failed still passes (`sim/regression-seeds.txt`).
#[test]
fn regression_seeds() {
    let text = include_str!("../regression-seeds.txt");
    let list = seeds::parse_regressions(text);
    assert!(!list.is_empty());
    let (results, _) = seeds::sweep(&list, |seed| run_seed(seed, false));
    let mut failed = Vec::new();
    for (seed, r) in &results {
        if !r.ok() {
            failed.push(*seed);
            eprintln!("regression seed {seed} fails:");
            for v in &r.violations {
                eprintln!("  {v}");
            }
            eprintln!("replay: {}", seeds::replay_command(*seed, "layer1 sweep"));
        }
    }
    assert!(failed.is_empty(), "regression seeds failing: {failed:?}");
}

/// A seed replays byte for byte: same trace, same verdict.
#[test]
fn replay_is_deterministic() {
    let list = if seeds::replaying() {
        seeds::from_env(0)
    } else {
        // 4 and 39: event mode, a password change and intruders on exclusive queues.
        vec![1, 4, 7, 39, 42, 867]
    };
    for seed in list {
        let a = run_seed(seed, true);
        let b = run_seed(seed, true);
        assert!(!a.trace.is_empty());
        assert_eq!(a.trace, b.trace, "seed {seed} did not replay exactly");
        assert_eq!(a.violations, b.violations);
        assert_eq!(a.elapsed, b.elapsed);
    }
}

/// B10/B11 regression (found by layer 2, turmoil seed 570): the broker goes silent after
/// `Connection.Tune`, before `OpenOk`, and stays silent for two heartbeat intervals while
/// the connect timeout is longer still. The hub must give the upstream up (or keep
/// waiting) without spinning: a timer that keeps rescheduling itself in the past would hang
/// its task. Runs on a thread with a wall-clock bound so a livelock fails instead of hangs.
#[test]
fn silent_broker_between_tune_and_open_ok() {
    use std::time::Duration;
    use warren_sim::client::{ClientSpec, Step};
    use warren_sim::plan::{Fault, FaultPlan};

    let mut sc = Scenario::empty(570);
    sc.broker.heartbeat = 1;
    sc.hub.connect_timeout = Duration::from_secs(3);
    sc.handshake.heartbeat = 0;
    let mut c = ClientSpec::guest(
        "publisher",
        Duration::ZERO,
        vec![Step::Open(1), Step::CloseConnection],
    );
    c.heartbeat = Some(0);
    sc.clients = vec![c];
    // The hub reads Tune at +0.017s; from +0.018s nothing more arrives for 3s.
    sc.plan = FaultPlan::none().with(
        Duration::from_millis(18),
        Fault::Hold {
            duration: Duration::from_secs(3),
        },
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(sc, RunOptions::default()));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(report) => assert!(report.ok(), "{:#?}", report.violations),
        Err(_) => panic!(
            "the run did not return within 30s of wall time: the hub spins inside \
             handle(Timeout) (an upstream timer rescheduled in the past)"
        ),
    }
}
