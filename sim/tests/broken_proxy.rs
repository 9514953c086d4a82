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
        .retain(|c| !matches!(c.kind, "slow-consumer" | "staller" | "stopped-reader"));
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
            ..RunOptions::default()
        },
    );
    (report, hits.load(Ordering::Relaxed))
}

fn check_caught(name: &str, expected: &[Invariant], runs: Vec<(u64, Report, u32)>) {
    let mut tampered_runs = 0;
    let mut example = None;
    for (seed, report, hits) in runs {
        if hits == 0 {
            continue;
        }
        tampered_runs += 1;
        let first = report
            .violations
            .iter()
            .find(|v| expected.contains(&v.invariant));
        let caught = first.is_some();
        if example.is_none() {
            example = first.map(|v| format!("seed {seed}: {v}"));
        }
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
    println!(
        "{name}: caught in all {tampered_runs} tampered runs, e.g. {}",
        example.unwrap_or_default()
    );
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

// ----- exclusive queues and revoked passwords ------------------------------------------------

use std::time::Duration;
use warren_core::frame::method_frame;
use warren_sim::client::{ClientSpec, Intrusion, Step, Target};
use warren_sim::plan::{Fault, FaultPlan};
use warren_sim::world::AdmissionTamper;

/// Without the tampering, the hand-made scenario passes every check: what the tampered run
/// reports is the tampering's doing.
fn untampered_is_clean(sc: &warren_sim::scenario::Scenario) {
    let r = run(
        sc.clone(),
        RunOptions {
            trace: true,
            ..RunOptions::default()
        },
    );
    assert!(r.ok(), "seed {}: {:#?}\n{}", sc.seed, r.violations, r.trace);
}

/// The queue name a method frame (reserved short, then a short string) carries.
fn queue_name(data: &[u8]) -> Option<String> {
    let len = usize::from(*data.get(13)?);
    data.get(14..14 + len)
        .map(|q| String::from_utf8_lossy(q).into_owned())
}

/// A hand-made scenario around an exclusive queue: its owner (`c1`, slot 3), a feeder and a
/// third client of the same hub and the same broker connection, with timings from the seed.
fn exclusive_scene(seed: u64, consume: bool, third: Vec<Step>) -> warren_sim::scenario::Scenario {
    let mut sc = warren_sim::scenario::Scenario::empty(seed);
    sc.hub.max_upstreams = 1;
    sc.net.upstream_latency = Duration::from_millis(1 + seed % 4);
    sc.net.client_latency = Duration::from_millis(1 + seed % 3);
    let ms = Duration::from_millis;
    let mut owner = vec![Step::Open(1), Step::declare(1, 3, true)];
    if consume {
        owner.push(Step::consume(1, 3, false));
    }
    owner.extend([Step::Sleep(ms(3000)), Step::CloseConnection]);
    let mut feeder = vec![Step::Open(1)];
    for _ in 0..5 {
        feeder.push(Step::publish(1, 3, 100));
    }
    feeder.push(Step::CloseConnection);
    sc.clients = vec![
        ClientSpec::guest("consumer", Duration::ZERO, owner),
        ClientSpec::guest("feeder", ms(300), feeder),
        ClientSpec::guest("intruder", ms(800 + 97 * seed % 700), third),
    ];
    sc
}

/// A proxy that lets a client reach another client's exclusive queue over their shared broker
/// connection: it renames the queue of a third client's `basic.get` into the owner's
/// exclusive queue on the way upstream, as if it had not checked the name. The broker serves
/// it (same connection), and the third client gets a message from the owner's queue.
#[test]
fn a_get_from_another_clients_exclusive_queue_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..8 {
        let ms = Duration::from_millis;
        let mut third = vec![Step::Open(1), Step::declare(1, 0, false)];
        for _ in 0..3 {
            third.push(Step::Get { ch: 1, slot: 0 });
            third.push(Step::Sleep(ms(100)));
        }
        third.push(Step::CloseConnection);
        let sc = exclusive_scene(seed, false, third);
        untampered_is_clean(&sc);
        let (report, hits) = tampered(sc, |hits| {
            let mut exclusive: Option<String> = None;
            Box::new(move |_now, out: &mut Output| {
                match out {
                    Output::ToClient { data, .. } if is_method(data, ids::QUEUE_DECLARE_OK) => {
                        if let Some(q) = queue_name_at(data, 11) {
                            if q.starts_with("amq.gen-") {
                                exclusive = Some(q);
                            }
                        }
                    }
                    Output::ToUpstream { data, .. }
                        if hits.load(Ordering::Relaxed) == 0
                            && is_method(data, ids::BASIC_GET)
                            && queue_name(data).as_deref() == Some("q0") =>
                    {
                        if let Some(q) = &exclusive {
                            let ch = u16::from_be_bytes([data[1], data[2]]);
                            *data = method_frame(ch, ids::BASIC_GET, |w| {
                                w.u16(0).shortstr(q.as_bytes()).bit(false);
                            });
                            hits.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
                true
            })
        });
        runs.push((seed, report, hits));
    }
    check_caught(
        "get from another client's exclusive queue",
        &[Invariant::Exclusive],
        runs,
    );
}

/// The name in a frame whose short string starts at `at`.
fn queue_name_at(data: &[u8], at: usize) -> Option<String> {
    let len = usize::from(*data.get(at)?);
    data.get(at + 1..at + 1 + len)
        .map(|q| String::from_utf8_lossy(q).into_owned())
}

/// A proxy that does not lock exclusive queues to their client answers an intruder's
/// `basic.consume` on another client's exclusive queue with `consume-ok` instead of
/// RabbitMQ's `Channel.Close 405`.
#[test]
fn a_consume_on_another_clients_exclusive_queue_answered_ok_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..8 {
        let ms = Duration::from_millis;
        let third = vec![
            Step::Open(1),
            Step::Intrude {
                ch: 1,
                slot: 3,
                op: Intrusion::Consume,
            },
            Step::Open(1),
            Step::Sleep(ms(300)),
            Step::CloseConnection,
        ];
        let sc = exclusive_scene(seed, true, third);
        untampered_is_clean(&sc);
        let (report, hits) = tampered(sc, |hits| {
            Box::new(move |_now, out: &mut Output| {
                if let Output::ToClient { data, .. } = out {
                    let close = is_method(data, ids::CHANNEL_CLOSE)
                        && u16::from_be_bytes([data[11], data[12]]) == 405;
                    if close && hits.load(Ordering::Relaxed) == 0 {
                        let ch = u16::from_be_bytes([data[1], data[2]]);
                        *data = method_frame(ch, ids::BASIC_CONSUME_OK, |w| {
                            w.shortstr(b"amq.ctag-forged");
                        });
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                true
            })
        });
        runs.push((seed, report, hits));
    }
    check_caught("locked consume answered ok", &[Invariant::Exclusive], runs);
}

/// A proxy that opens a client's second channel on another broker connection: there the
/// broker refuses the client's own exclusive queue with 405, as RabbitMQ refuses another
/// connection. The tampering answers the owner's `basic.consume` on its second channel with
/// that refusal.
#[test]
fn the_clients_own_queue_refused_on_its_second_channel_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..8 {
        let mut sc = exclusive_scene(seed, true, vec![Step::Open(1), Step::CloseConnection]);
        let owner = &mut sc.clients[0].script;
        let at = owner
            .iter()
            .position(|st| matches!(st, Step::Consume { .. }))
            .expect("the owner consumes");
        owner[at] = Step::consume(2, 3, false);
        owner.insert(at, Step::Open(2));
        untampered_is_clean(&sc);
        let (report, hits) = tampered(sc, |hits| {
            Box::new(move |_now, out: &mut Output| {
                if let Output::ToClient { data, .. } = out {
                    if is_method(data, ids::BASIC_CONSUME_OK) && hits.load(Ordering::Relaxed) == 0 {
                        let ch = u16::from_be_bytes([data[1], data[2]]);
                        *data = method_frame(ch, ids::CHANNEL_CLOSE, |w| {
                            w.u16(405)
                                .shortstr(b"RESOURCE_LOCKED - cannot obtain exclusive access")
                                .u16(60)
                                .u16(20);
                        });
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                true
            })
        });
        runs.push((seed, report, hits));
    }
    check_caught(
        "the client's own queue refused on its second channel",
        &[Invariant::Exclusive],
        runs,
    );
}

/// A proxy whose event feed does not listen for password changes (it binds a wrong routing
/// key): in event mode it trusts the old password of a user for ever after the broker
/// changed it, and clients with the old password keep being admitted.
#[test]
fn an_old_password_admitted_after_the_change_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..8 {
        let ms = Duration::from_millis;
        let mut sc = warren_sim::scenario::Scenario::empty(seed);
        sc.net.events = true;
        sc.net.upstream_latency = Duration::from_millis(1 + seed % 4);
        sc.broker.users.push(("bob".into(), "old".into()));
        let at = ms(1500 + 131 * seed % 1000);
        sc.plan = FaultPlan::none().with(
            at,
            Fault::PasswordChange {
                user: "bob".into(),
                password: "new".into(),
            },
        );
        let script = || {
            vec![
                Step::Open(1),
                Step::publish(1, 0, 50),
                Step::CloseConnection,
            ]
        };
        let bob = |kind, start: Duration, password: &str| {
            let mut c = ClientSpec::guest(kind, start, script());
            c.user = "bob".into();
            c.password = password.into();
            c
        };
        let ttl = sc.net.credentials_ttl;
        sc.clients = vec![
            bob("worker", ms(300), "old"),
            bob("leaked-password", at + ms(500), "old"),
            bob("leaked-password", at + ttl + ms(1000), "old"),
            bob("leaked-password", at + ttl + ms(4000), "old"),
            bob("new-password", at + ms(700), "new"),
        ];
        untampered_is_clean(&sc);
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        let tamper: AdmissionTamper = Box::new(move |_now, out| {
            if let warren_core::admission::Output::ToLink { data, .. } = out {
                let key = b"user.password.changed";
                if let Some(i) = data.windows(key.len()).position(|w| w == key) {
                    let mut v = data.to_vec();
                    v[i..i + key.len()].copy_from_slice(b"user.password.xhanged");
                    *data = v.into();
                    h.fetch_add(1, Ordering::Relaxed);
                }
            }
            true
        });
        let report = run(
            sc,
            RunOptions {
                trace: true,
                tamper_admission: Some(tamper),
                ..RunOptions::default()
            },
        );
        runs.push((seed, report, hits.load(Ordering::Relaxed)));
    }
    check_caught("password change missed", &[Invariant::Revocation], runs);
}

// ----- slow clients (issue 14) ---------------------------------------------------------------

/// A proxy with the slow-client rule before issue 14 — a client is slow as soon as more than
/// `client_queue_bytes` wait for it, however fast it reads — cuts off the fast and the steady
/// readers of a large delivery: the slow-client invariant catches it. (Not a tampered hub
/// output: the rule is the driver's, so the world applies the old one itself.)
#[test]
fn the_old_queue_bound_rule_is_caught() {
    use rand::SeedableRng;
    use warren_sim::slow::{ReadPace, SlowPolicy};
    let make = |seed: u64| {
        let mut sc = Scenario::empty(seed);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let pace = ReadPace {
            bytes: 4096,
            every: Duration::from_millis(10 + 10 * (seed % 4)),
        };
        sc.broker.users.push(("alice".into(), "wonderland".into()));
        sc.add_large_deliveries(
            &mut rng,
            Duration::from_secs(1),
            1 + (seed % 3) as u32,
            pace,
        );
        sc
    };
    let mut runs = Vec::new();
    for seed in 0..8 {
        untampered_is_clean(&make(seed));
        let report = run(
            make(seed),
            RunOptions {
                trace: true,
                slow_policy: SlowPolicy::QueueBound,
                ..RunOptions::default()
            },
        );
        runs.push((seed, report, 1));
    }
    check_caught("old queue-bound rule", &[Invariant::SlowClient], runs);
}

/// A proxy that closes the broker connection holding a client's exclusive queue while the
/// client is still connected (for idleness, say): the broker deletes the queue, and the
/// client's next use of it is refused with 404. The tampering answers the owner's
/// `basic.consume` with that refusal, naming the queue its `queue.declare-ok` named.
#[test]
fn the_clients_own_queue_gone_while_it_is_connected_is_caught() {
    let mut runs = Vec::new();
    for seed in 0..8 {
        let sc = exclusive_scene(seed, true, vec![Step::Open(1), Step::CloseConnection]);
        untampered_is_clean(&sc);
        let (report, hits) = tampered(sc, |hits| {
            let mut declared: Option<Vec<u8>> = None;
            Box::new(move |_now, out: &mut Output| {
                if let Output::ToClient { data, .. } = out {
                    if is_method(data, ids::QUEUE_DECLARE_OK) {
                        let len = usize::from(data[11]);
                        declared = Some(data[12..12 + len].to_vec());
                    } else if is_method(data, ids::BASIC_CONSUME_OK)
                        && hits.load(Ordering::Relaxed) == 0
                    {
                        let name = String::from_utf8_lossy(declared.as_deref().unwrap_or_default());
                        let ch = u16::from_be_bytes([data[1], data[2]]);
                        let text = format!("NOT_FOUND - no queue '{name}' in vhost '/'");
                        *data = method_frame(ch, ids::CHANNEL_CLOSE, |w| {
                            w.u16(404).shortstr(text.as_bytes()).u16(60).u16(20);
                        });
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                true
            })
        });
        runs.push((seed, report, hits));
    }
    check_caught(
        "the client's own queue gone while it is connected",
        &[Invariant::Exclusive],
        runs,
    );
}
