//! The checks can fail: the world impersonates a buggy proxy by tampering with the hub's
//! outputs (never with core itself), and the invariants must notice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use warren_core::frame::HEARTBEAT;
use warren_core::hub::Output;
use warren_core::method::ids;
use warren_sim::check::Invariant;
use warren_sim::scenario::Scenario;
use warren_sim::world::{is_method, run, Report, RunOptions, Tamper};

/// Runs `sc` with a proxy that changes one of warren's outputs and says how many it changed
/// (0 or 1): `edit` sees the outputs until it changes one, and then returns `Some(keep)`
/// (`keep: false` drops the output); `None` leaves the output as it was. Clients that stop
/// reading or freeze are left out: what warren sends them is never looked at, so tampering
/// with it is rightly invisible. So are network faults: a connection reset right after the
/// tampering would excuse what it broke.
fn tampered(
    mut sc: Scenario,
    mut edit: impl FnMut(&mut Output) -> Option<bool> + Send + 'static,
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
    let counted = hits.clone();
    let tamper: Tamper = Box::new(move |_now, out: &mut Output| {
        if counted.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let keep = edit(out);
        if keep.is_some() {
            counted.fetch_add(1, Ordering::Relaxed);
        }
        keep.unwrap_or(true)
    });
    let report = run(
        sc,
        RunOptions {
            trace: true,
            tamper: Some(tamper),
            ..RunOptions::default()
        },
    );
    (report, hits.load(Ordering::Relaxed))
}

/// The channel number of a frame.
fn channel(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[1], frame[2]])
}

/// Moves a frame to channel `ch`.
fn set_channel(frame: &mut bytes::Bytes, ch: u16) {
    let mut v = frame.to_vec();
    v[1..3].copy_from_slice(&ch.to_be_bytes());
    *frame = v.into();
}

/// Runs `run_seed` on every seed of `seeds` (a report and how many outputs were tampered
/// with), then asserts that each tampered run reported one of the `expected` violations and
/// that at least 5 runs were tampered with.
fn check_caught(
    name: &str,
    expected: &[Invariant],
    seeds: std::ops::Range<u64>,
    mut run_seed: impl FnMut(u64) -> (Report, u32),
) {
    let runs: Vec<(u64, (Report, u32))> = seeds.map(|seed| (seed, run_seed(seed))).collect();
    let mut tampered_runs = 0;
    let mut example = None;
    for (seed, (report, hits)) in runs {
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
    check_caught("swapped channel", &[Invariant::Routing], 0..60, |seed| {
        tampered(Scenario::random(seed), |out| match out {
            Output::ToClient { data, .. } if is_method(data, ids::BASIC_DELIVER) => {
                let ch = channel(data);
                set_channel(data, ch % 7 + 1 + ch);
                Some(true)
            }
            _ => None,
        })
    });
}

/// A proxy that loses one publisher confirm on its way to the client.
#[test]
fn a_lost_confirm_is_caught() {
    let caught = [Invariant::ConfirmLost, Invariant::Hang];
    check_caught("dropped confirm", &caught, 0..80, |seed| {
        let mut sc = Scenario::random(seed);
        // One ack per message, so a dropped ack is not covered by a later `multiple` one.
        sc.broker.batch_confirms = false;
        tampered(sc, |out| match out {
            Output::ToClient { data, .. } if is_method(data, ids::BASIC_ACK) => Some(false),
            _ => None,
        })
    });
}

/// A proxy that forwards a frame for a channel the broker never opened (renumbers one
/// `channel.open`'s follow-up publish to an unused channel): the broker's connection-level
/// check fires.
#[test]
fn a_frame_on_an_unopened_upstream_channel_is_caught() {
    let name = "frame on an unopened upstream channel";
    check_caught(name, &[Invariant::BrokerProtocol], 0..60, |seed| {
        tampered(Scenario::random(seed), |out| match out {
            Output::ToUpstream { data, .. } if is_method(data, ids::QUEUE_DECLARE) => {
                set_channel(data, 900);
                Some(true)
            }
            _ => None,
        })
    });
}

/// A proxy that skips one heartbeat towards the broker is caught by the send-gap check.
#[test]
fn a_late_heartbeat_is_caught() {
    // The hub believes it sent the heartbeat; the world's record of what was really sent
    // shows the gap... only if the tamper hides the send from the observer too, which it
    // does: tampered outputs never reach the observer.
    check_caught(
        "skipped heartbeat",
        &[Invariant::Heartbeat],
        0..60,
        |seed| {
            tampered(Scenario::random(seed), |out| match out {
                Output::ToUpstream { data, .. } if data[..] == HEARTBEAT[..] => Some(false),
                _ => None,
            })
        },
    );
}

// ----- exclusive queues and revoked passwords ------------------------------------------------

use std::time::Duration;
use warren_core::frame::method_frame;
use warren_sim::client::{ClientSpec, Intrusion, Step};
use warren_sim::plan::{Fault, FaultPlan};
use warren_sim::world::AdmissionTamper;

/// Without the tampering, the hand-made scenario passes every check: what the tampered run
/// reports is the tampering's doing.
fn untampered_is_clean(sc: &Scenario) {
    let r = run(
        sc.clone(),
        RunOptions {
            trace: true,
            ..RunOptions::default()
        },
    );
    assert!(r.ok(), "seed {}: {:#?}\n{}", sc.seed, r.violations, r.trace);
}

/// A hand-made scenario around an exclusive queue: its owner (`c1`, slot 3), a feeder and a
/// third client of the same hub and the same broker connection, with timings from the seed.
fn exclusive_scene(seed: u64, consume: bool, third: Vec<Step>) -> Scenario {
    let mut sc = Scenario::empty(seed);
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
    let name = "get from another client's exclusive queue";
    check_caught(name, &[Invariant::Exclusive], 0..8, |seed| {
        let ms = Duration::from_millis;
        let mut third = vec![Step::Open(1), Step::declare(1, 0, false)];
        for _ in 0..3 {
            third.push(Step::Get { ch: 1, slot: 0 });
            third.push(Step::Sleep(ms(100)));
        }
        third.push(Step::CloseConnection);
        let sc = exclusive_scene(seed, false, third);
        untampered_is_clean(&sc);
        let mut exclusive: Option<String> = None;
        tampered(sc, move |out| match out {
            Output::ToClient { data, .. } if is_method(data, ids::QUEUE_DECLARE_OK) => {
                if let Some(q) = queue_name_at(data, 11) {
                    if q.starts_with("amq.gen-") {
                        exclusive = Some(q);
                    }
                }
                None
            }
            Output::ToUpstream { data, .. }
                if is_method(data, ids::BASIC_GET)
                    && queue_name_at(data, 13).as_deref() == Some("q0") =>
            {
                let q = exclusive.as_ref()?;
                *data = method_frame(channel(data), ids::BASIC_GET, |w| {
                    w.u16(0).shortstr(q.as_bytes()).bit(false);
                });
                Some(true)
            }
            _ => None,
        })
    });
}

/// The name in a frame whose short string starts at `at`: 11 in a `queue.declare-ok`, 13 in
/// a method that starts with a reserved short (`basic.get`).
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
    check_caught(
        "locked consume answered ok",
        &[Invariant::Exclusive],
        0..8,
        |seed| {
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
            tampered(sc, |out| match out {
                Output::ToClient { data, .. }
                    if is_method(data, ids::CHANNEL_CLOSE)
                        && u16::from_be_bytes([data[11], data[12]]) == 405 =>
                {
                    *data = method_frame(channel(data), ids::BASIC_CONSUME_OK, |w| {
                        w.shortstr(b"amq.ctag-forged");
                    });
                    Some(true)
                }
                _ => None,
            })
        },
    );
}

/// A proxy that opens a client's second channel on another broker connection: there the
/// broker refuses the client's own exclusive queue with 405, as RabbitMQ refuses another
/// connection. The tampering answers the owner's `basic.consume` on its second channel with
/// that refusal.
#[test]
fn the_clients_own_queue_refused_on_its_second_channel_is_caught() {
    let name = "the client's own queue refused on its second channel";
    check_caught(name, &[Invariant::Exclusive], 0..8, |seed| {
        let mut sc = exclusive_scene(seed, true, vec![Step::Open(1), Step::CloseConnection]);
        let owner = &mut sc.clients[0].script;
        let at = owner
            .iter()
            .position(|st| matches!(st, Step::Consume { .. }))
            .expect("the owner consumes");
        owner[at] = Step::consume(2, 3, false);
        owner.insert(at, Step::Open(2));
        untampered_is_clean(&sc);
        tampered(sc, |out| match out {
            Output::ToClient { data, .. } if is_method(data, ids::BASIC_CONSUME_OK) => {
                *data = method_frame(channel(data), ids::CHANNEL_CLOSE, |w| {
                    w.u16(405)
                        .shortstr(b"RESOURCE_LOCKED - cannot obtain exclusive access")
                        .u16(60)
                        .u16(20);
                });
                Some(true)
            }
            _ => None,
        })
    });
}

/// A proxy whose event feed does not listen for password changes (it binds a wrong routing
/// key): in event mode it trusts the old password of a user for ever after the broker
/// changed it, and clients with the old password keep being admitted.
#[test]
fn an_old_password_admitted_after_the_change_is_caught() {
    check_caught(
        "password change missed",
        &[Invariant::Revocation],
        0..8,
        |seed| {
            let ms = Duration::from_millis;
            let mut sc = Scenario::empty(seed);
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
            let bob = |kind, start: Duration, password: &str| {
                let mut c = ClientSpec::guest(kind, start, Step::publish_once(0, 50));
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
            (report, hits.load(Ordering::Relaxed))
        },
    );
}

// ----- slow clients (issue 14) ---------------------------------------------------------------

/// A proxy with the slow-client rule before issue 14 — a client is slow as soon as more than
/// `client_queue_bytes` wait for it, however fast it reads — cuts off the fast and the steady
/// readers of a large delivery: the slow-client invariant catches it. (Not a tampered hub
/// output: the rule is the driver's, so the world applies the old one itself.)
#[test]
fn the_old_queue_bound_rule_is_caught() {
    use warren_sim::slow::{ReadPace, SlowPolicy};
    check_caught(
        "old queue-bound rule",
        &[Invariant::SlowClient],
        0..8,
        |seed| {
            let pace = ReadPace {
                bytes: 4096,
                every: Duration::from_millis(10 + 10 * (seed % 4)),
            };
            let sc = Scenario::large_deliveries(seed, 1 + (seed % 3) as u32, pace);
            untampered_is_clean(&sc);
            let report = run(
                sc,
                RunOptions {
                    trace: true,
                    slow_policy: SlowPolicy::QueueBound,
                    ..RunOptions::default()
                },
            );
            (report, 1)
        },
    );
}

/// A proxy that closes the broker connection holding a client's exclusive queue while the
/// client is still connected (for idleness, say): the broker deletes the queue, and the
/// client's next use of it is refused with 404. The tampering answers the owner's
/// `basic.consume` with that refusal, naming the queue its `queue.declare-ok` named.
#[test]
fn the_clients_own_queue_gone_while_it_is_connected_is_caught() {
    let name = "the client's own queue gone while it is connected";
    check_caught(name, &[Invariant::Exclusive], 0..8, |seed| {
        let sc = exclusive_scene(seed, true, vec![Step::Open(1), Step::CloseConnection]);
        untampered_is_clean(&sc);
        let mut declared: Option<String> = None;
        tampered(sc, move |out| match out {
            Output::ToClient { data, .. } if is_method(data, ids::QUEUE_DECLARE_OK) => {
                declared = queue_name_at(data, 11);
                None
            }
            Output::ToClient { data, .. } if is_method(data, ids::BASIC_CONSUME_OK) => {
                let name = declared.as_deref().unwrap_or_default();
                let text = format!("NOT_FOUND - no queue '{name}' in vhost '/'");
                *data = method_frame(channel(data), ids::CHANNEL_CLOSE, |w| {
                    w.u16(404).shortstr(text.as_bytes()).u16(60).u16(20);
                });
                Some(true)
            }
            _ => None,
        })
    });
}

// ----- exchange types (B7) -------------------------------------------------------------------

/// A scene where a client of kind `kind` running `script` shares warren's one broker
/// connection with a consumer that stays three seconds: what the client costs the
/// connection, the consumer would lose.
fn beside_a_consumer(seed: u64, kind: &'static str, script: Vec<Step>) -> Scenario {
    let ms = Duration::from_millis;
    let mut sc = Scenario::empty(seed);
    sc.hub.max_upstreams = 1;
    sc.net.upstream_latency = ms(1 + seed % 4);
    sc.net.client_latency = ms(1 + seed % 3);
    let mut neighbour = Step::consumer(0, false, false);
    neighbour.extend([Step::Sleep(ms(3000)), Step::CloseConnection]);
    sc.clients = vec![
        ClientSpec::guest("consumer", Duration::ZERO, neighbour),
        ClientSpec::guest(kind, ms(300 + 97 * seed % 700), script),
    ];
    sc
}

/// A proxy that trusts an exchange type the broker does not know — here warren told of
/// [`UNKNOWN_EXCHANGE_TYPE`] in `extra_exchange_types`, as if it took every type for known —
/// forwards a client's declare of it onto the broker connection it shares with a neighbour,
/// and RabbitMQ's 503 closes the neighbour's channel with it. The reformulated rule
/// (an unknown type is a violation beside another channel) catches it; the same scene
/// without the misplaced trust is clean, the client closed with the broker's 503 from the
/// probe.
#[test]
fn an_unknown_exchange_type_forwarded_onto_a_shared_connection_is_caught() {
    use warren_sim::client::{Misbehaviour, UNKNOWN_EXCHANGE_TYPE};
    let name = "unknown exchange type on a shared connection";
    check_caught(name, &[Invariant::BrokerProtocol], 0..8, |seed| {
        let misbehaving = vec![
            Step::Open(1),
            Step::Misbehave(Misbehaviour::UnknownExchangeType),
            Step::CloseConnection,
        ];
        let mut sc = beside_a_consumer(seed, "misbehaving", misbehaving);
        untampered_is_clean(&sc);
        sc.hub.extra_exchange_types = vec![UNKNOWN_EXCHANGE_TYPE.into()];
        let options = RunOptions {
            trace: true,
            ..RunOptions::default()
        };
        (run(sc, options), 1)
    });
}

// ----- stream and quorum queues (B7) ---------------------------------------------------------

/// A proxy that forwards a misuse of a stream whose type it learnt: here a client declared
/// the stream (warren saw the declare-ok on the connection it shares with a neighbour), and
/// the tampering turns its next forwarded method, its `basic.qos`, into a `basic.get` of the
/// stream, as a proxy that forgot the type would forward the client's get. RabbitMQ closes
/// the shared connection with 540, and the rule (a known type's misuse beside another
/// channel) reports it; the same scene untampered is clean.
#[test]
fn a_stream_misuse_forwarded_onto_a_shared_connection_is_caught() {
    use warren_sim::client::STREAM_QUEUE;
    use warren_testkit::hub_world::basic_get;
    use warren_testkit::rules::queue_types::QueueKind;
    let name = "stream misuse on a shared connection";
    check_caught(name, &[Invariant::BrokerProtocol], 0..8, |seed| {
        let kind = QueueKind::Stream;
        let stream_user = vec![
            Step::Open(1),
            Step::TypedDeclare { ch: 1, kind },
            Step::Qos(1, 10),
            Step::TypedConsume { ch: 1, kind },
            Step::Sleep(Duration::from_millis(500)),
            Step::CloseConnection,
        ];
        let sc = beside_a_consumer(seed, "stream-user", stream_user);
        untampered_is_clean(&sc);
        tampered(sc, |out| match out {
            Output::ToUpstream { data, .. } if is_method(data, ids::BASIC_QOS) => {
                *data = basic_get(channel(data), STREAM_QUEUE, false);
                Some(true)
            }
            _ => None,
        })
    });
}
