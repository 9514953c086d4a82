//! The checks can fail: the world impersonates a buggy proxy by tampering with the hub's
//! outputs (never with core itself), and the invariants must notice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use warren_core::frame::HEARTBEAT;
use warren_core::hub::Output;
use warren_core::method::ids;
use warren_sim::check::Invariant;
use warren_sim::scenario::Scenario;
use warren_sim::world::{is_method, run, Report, RunOptions};

/// Runs `seed` with `tamper` and says how many outputs it changed. Clients that stop
/// reading or freeze are left out: what warren sends them is never looked at, so tampering
/// with it is rightly invisible. So are network faults: a connection reset right after the
/// tampering would excuse what it broke.
fn tampered(
    mut sc: Scenario,
    make: impl Fn(Arc<AtomicU32>) -> warren_sim::world::Tamper,
) -> (Report, u32) {
    sc.clients
        .retain(|c| c.kind != "slow-consumer" && c.kind != "staller");
    sc.plan.faults.clear();
    // A burst of large deliveries can pass a small slow-client bound, and a client cut off
    // as slow is excused from what it missed.
    sc.net.client_queue_limit = 64 * 1024 * 1024;
    // Nor may a publish be over max_message_size: the channel closed for it (406) excuses
    // every confirm that was still owed on it.
    for c in &mut sc.clients {
        for step in &mut c.script {
            if let warren_sim::client::Step::Publish { size, .. } = step {
                *size = (*size).min(1000);
            }
        }
    }
    let hits = Arc::new(AtomicU32::new(0));
    let report = run(
        sc,
        RunOptions {
            trace: true,
            tamper: Some(make(hits.clone())),
        },
    );
    (report, hits.load(Ordering::Relaxed))
}

fn check_caught(name: &str, expected: &[Invariant], runs: Vec<(u64, Report, u32)>) {
    let mut tampered_runs = 0;
    for (seed, report, hits) in runs {
        if hits == 0 {
            continue;
        }
        tampered_runs += 1;
        let caught = report
            .violations
            .iter()
            .any(|v| expected.contains(&v.invariant));
        if !caught {
            let lines: Vec<&str> = report.trace.lines().collect();
            let at = lines.iter().position(|l| l.contains("TAMPER")).unwrap_or(0);
            let from = at.saturating_sub(30);
            eprintln!("{}", lines[from..(at + 40).min(lines.len())].join("\n"));
        }
        assert!(
            caught,
            "{name}: seed {seed} was tampered with but no {expected:?} violation was reported: {:#?}",
            report.violations
        );
    }
    assert!(
        tampered_runs >= 5,
        "{name}: only {tampered_runs} runs were tampered with"
    );
    println!("{name}: caught in all {tampered_runs} tampered runs");
}

/// A proxy that moves one `basic.deliver` to another channel number.
#[test]
fn a_delivery_on_the_wrong_channel_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..60 {
        let (report, hits) = tampered(Scenario::random(seed), |hits| {
            Box::new(move |_now, out: &mut Output| {
                if let Output::ToClient { data, .. } = out {
                    if hits.load(Ordering::Relaxed) == 0 && is_method(data, ids::BASIC_DELIVER) {
                        let mut v = data.to_vec();
                        let ch = u16::from_be_bytes([v[1], v[2]]);
                        v[1..3].copy_from_slice(&(ch % 7 + 1 + ch).to_be_bytes());
                        *data = v.into();
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                true
            })
        });
        runs.push((seed, report, hits));
    }
    check_caught("swapped channel", &[Invariant::Routing], runs);
}

/// A proxy that loses one publisher confirm on its way to the client.
#[test]
fn a_lost_confirm_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..80 {
        let mut sc = Scenario::random(seed);
        // One ack per message, so a dropped ack is not covered by a later `multiple` one.
        sc.broker.batch_confirms = false;
        let (report, hits) = tampered(sc, |hits| {
            Box::new(move |_now, out: &mut Output| {
                if let Output::ToClient { data, .. } = out {
                    if hits.load(Ordering::Relaxed) == 0 && is_method(data, ids::BASIC_ACK) {
                        hits.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                }
                true
            })
        });
        runs.push((seed, report, hits));
    }
    check_caught(
        "dropped confirm",
        &[Invariant::ConfirmLost, Invariant::Hang],
        runs,
    );
}

/// A proxy that forwards a frame for a channel the broker never opened (renumbers one
/// `channel.open`'s follow-up publish to an unused channel): the broker's connection-level
/// check fires.
#[test]
fn a_frame_on_an_unopened_upstream_channel_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..60 {
        let (report, hits) = tampered(Scenario::random(seed), |hits| {
            Box::new(move |_now, out: &mut Output| {
                if let Output::ToUpstream { data, .. } = out {
                    if hits.load(Ordering::Relaxed) == 0 && is_method(data, ids::QUEUE_DECLARE) {
                        let mut v = data.to_vec();
                        v[1..3].copy_from_slice(&900u16.to_be_bytes());
                        *data = v.into();
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                true
            })
        });
        runs.push((seed, report, hits));
    }
    check_caught(
        "frame on an unopened upstream channel",
        &[Invariant::BrokerProtocol],
        runs,
    );
}

/// A proxy that skips one heartbeat towards the broker is caught by the send-gap check.
#[test]
fn a_late_heartbeat_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..60 {
        let (report, hits) = tampered(Scenario::random(seed), |hits| {
            Box::new(move |_now, out: &mut Output| {
                if let Output::ToUpstream { data, .. } = out {
                    if hits.load(Ordering::Relaxed) == 0 && data[..] == HEARTBEAT[..] {
                        hits.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                }
                true
            })
        });
        runs.push((seed, report, hits));
    }
    // The hub believes it sent the heartbeat; the world's record of what was really sent
    // shows the gap... only if the tamper hides the send from the observer too, which it
    // does: tampered outputs never reach the observer.
    check_caught("skipped heartbeat", &[Invariant::Heartbeat], runs);
}
