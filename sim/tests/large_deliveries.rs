//! Issue 14 in layer 1: deliveries larger than `client_queue_bytes` to a fast reader, a slow
//! but steady one and one that stops reading. Only the one that stops is cut off as slow,
//! within `slow_client_timeout`, and its message comes back to its queue.

use std::time::Duration;
use warren_sim::scenario::Scenario;
use warren_sim::slow::ReadPace;
use warren_sim::world::{run, Report, RunOptions};

fn count(r: &Report, what: &str) -> u64 {
    r.coverage.get(what).copied().unwrap_or(0)
}

/// The client number of the (only) client of this kind, from the trace.
fn cid(r: &Report, kind: &str) -> String {
    let tail = format!(" connects ({kind})");
    let line = r
        .trace
        .lines()
        .find(|l| l.ends_with(&tail))
        .unwrap_or_else(|| panic!("no {kind} in the trace"));
    let c = line.split_whitespace().nth(1).expect("client");
    c.to_owned()
}

#[test]
fn only_the_reader_that_stops_is_cut_off_and_its_message_is_requeued() {
    let pace = ReadPace {
        bytes: 4096,
        every: Duration::from_millis(20),
    };
    let r = run(
        Scenario::large_deliveries(14, 2, pace),
        RunOptions {
            trace: true,
            ..RunOptions::default()
        },
    );
    assert!(r.ok(), "violations: {:#?}", r.violations);
    let stopped = cid(&r, "stopped-reader");
    let reports: Vec<&str> = r
        .trace
        .lines()
        .filter(|l| l.contains(" reports c") && l.contains(" slow"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert!(
        reports[0].contains(&format!("reports {stopped} slow")),
        "{reports:?}"
    );
    assert_eq!(count(&r, "slow client cut off"), 1);
    // The steady reader (4 KiB every 20 ms: 200 KiB/s) was over the 64 KiB bound for
    // a while with each message, and read on.
    assert!(
        count(&r, "client over the bound read on") >= 2,
        "{:?}",
        r.coverage
    );
    // The sweeper got the stopped reader's message again.
    assert!(
        count(&r, "client got a redelivery") >= 1,
        "{:?}",
        r.coverage
    );
}

/// Every speed, both frame sizes, one to three messages: always only the stopped reader.
#[test]
fn readers_of_every_speed() {
    for seed in 0..24u64 {
        let pace = ReadPace {
            bytes: 2048 << (seed % 4),
            every: Duration::from_millis(10 + 10 * (seed % 5)),
        };
        let messages = 1 + (seed % 3) as u32;
        let r = run(
            Scenario::large_deliveries(seed, messages, pace),
            RunOptions::default(),
        );
        assert!(r.ok(), "seed {seed}: {:#?}", r.violations);
        assert_eq!(
            count(&r, "client reported slow"),
            1,
            "seed {seed}: {:?}",
            r.coverage
        );
        assert_eq!(
            count(&r, "slow client cut off"),
            1,
            "seed {seed}: {:?}",
            r.coverage
        );
    }
}
