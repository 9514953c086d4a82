//! Layer 2: the real runtime (`warren_runtime::Server`) under turmoil, with the scripted
//! broker and clients, over many seeds.

use warren_sim::layer2::{run, L2Options};
use warren_sim::seeds;

/// Turmoil seeds swept by default (CI); `SIM_L2_SEEDS=N` overrides, `SIM_SEED=n` replays one.
const DEFAULT_SEEDS: u64 = 100;

#[test]
fn turmoil_sweep() {
    let list = seeds::from_env_counted("SIM_L2_SEEDS", DEFAULT_SEEDS);
    let opts = L2Options {
        trace: seeds::replaying(),
        ..L2Options::default()
    };
    let progress = std::env::var("SIM_PROGRESS").is_ok();
    let (results, wall) = seeds::sweep_on(1, &list, |seed| {
        if progress {
            eprintln!("turmoil seed {seed}...");
        }
        run(seed, &opts)
    });
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
                "replay: {}",
                seeds::replay_command(*seed, "layer2 turmoil_sweep")
            );
        }
    }
    println!(
        "layer 2: {} seeds in {:.1}s wall, {} failed",
        results.len(),
        wall.as_secs_f64(),
        failed.len()
    );
    if std::env::var("SIM_SUMMARY").is_ok() {
        seeds::print_coverage(results.iter().map(|(_, r)| &r.coverage), 42);
    }
    assert!(failed.is_empty(), "failing turmoil seeds: {failed:?}");
}

/// A turmoil seed replays the same way twice in one process (the runtime seeds its jitter
/// from the process id, so across processes reconnect timings may differ).
#[test]
fn turmoil_replay_is_deterministic() {
    let opts = L2Options {
        trace: true,
        ..L2Options::default()
    };
    for seed in [3, 11, 20] {
        let a = run(seed, &opts);
        let b = run(seed, &opts);
        assert_eq!(a.log, b.log, "seed {seed} did not replay exactly");
        assert_eq!(a.violations, b.violations);
    }
}

/// B9 with the real runtime: a consumer that stops reading while a publisher floods its
/// queue is disconnected — its socket is really closed, so its own writes start failing —
/// and a neighbour on the same hub keeps working meanwhile.
#[test]
fn slow_client_is_disconnected() {
    use std::time::Duration;
    use warren_sim::client::{ClientSpec, Step};
    use warren_sim::layer2::run_scenario;
    use warren_sim::scenario::Scenario;

    let s = Duration::from_secs;
    let mut sc = Scenario::empty(7);
    sc.broker.heartbeat = 2;
    sc.handshake.heartbeat = 2;
    let publish = |n: usize, size: usize| -> Vec<Step> {
        (0..n).map(|_| Step::publish(1, 0, size)).collect()
    };
    let declare = Step::declare(1, 0, false);
    let mut slow = Step::consumer(0, false, true);
    slow.extend([Step::StopReading, Step::Sleep(s(30)), Step::Drop]);
    slow.shrink_to_fit();
    let mut flood = vec![Step::Open(1), declare.clone()];
    flood.extend(publish(400, 2000));
    flood.push(Step::CloseConnection);
    let mut neighbour = vec![Step::Open(1), declare];
    neighbour.extend(publish(3, 100));
    neighbour.push(Step::CloseConnection);
    sc.clients = vec![
        ClientSpec::guest("slow-consumer", Duration::ZERO, slow),
        ClientSpec::guest("flooder", s(1), flood),
        ClientSpec::guest("neighbour", s(8), neighbour),
    ];
    let opts = L2Options {
        trace: seeds::replaying(),
        client_queue_bytes: 64 * 1024,
        // Turmoil bounds a socket by segments, not bytes, and warren writes a burst as one
        // segment of up to 64 KiB: 8 of them hold less than the flood.
        tcp_capacity: 8,
        ..L2Options::default()
    };
    let r = run_scenario(sc, Vec::new(), &opts);
    if seeds::replaying() {
        println!("{}", r.log.join("\n"));
    }
    let client = |kind: &str| r.clients.iter().find(|c| c.kind == kind).expect("ran");
    let slow = client("slow-consumer");
    let neighbour = client("neighbour");
    assert!(
        matches!(neighbour.end, Some(warren_sim::client::End::Finished)),
        "the neighbour must not be stalled by the slow client: {:?}",
        neighbour.end
    );
    assert!(
        slow.write_failed_at.is_some_and(|t| t < s(20)),
        "warren never closed the slow client's socket (its writes kept succeeding until it left at +30s): {slow:?}"
    );
}

/// Every turmoil seed that once failed still passes (`sim/regression-seeds-turmoil.txt`).
#[test]
fn turmoil_regression_seeds() {
    let list = seeds::parse_regressions(include_str!("../regression-seeds-turmoil.txt"));
    let opts = L2Options::default();
    let (results, _) = seeds::sweep_on(1, &list, |seed| run(seed, &opts));
    let failed: Vec<u64> = results
        .iter()
        .filter(|(_, r)| !r.ok())
        .map(|(seed, r)| {
            eprintln!("turmoil regression seed {seed} fails:");
            for v in &r.violations {
                eprintln!("  {v}");
            }
            *seed
        })
        .collect();
    assert!(
        failed.is_empty(),
        "turmoil regression seeds failing: {failed:?}"
    );
}
