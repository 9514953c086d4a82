//! Named layer-1 scenarios with their traces snapshotted: what warren does, frame by frame,
//! in the situations docs/design.md (R1) names. Each also asserts that every invariant held.
//!
//! Trace lines: `+1.500s` virtual time; `c1→w` bytes from client c1 arriving at warren,
//! `w→u2` bytes from warren arriving at the broker on upstream connection u2; `h1` lines are
//! hub events; `fault:`/`heal:` lines are the fault plan.

use insta::assert_snapshot;
use std::time::Duration;
use warren_sim::client::{ClientSpec, Step};
use warren_sim::plan::{Fault, FaultPlan};
use warren_sim::scenario::Scenario;
use warren_sim::world::{run, Report, RunOptions};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A quiet client: no heartbeats, so traces show only what the scenario is about.
fn client(kind: &'static str, start: u64, script: Vec<Step>) -> ClientSpec {
    let mut c = ClientSpec::guest(kind, ms(start), script);
    c.heartbeat = Some(0);
    c
}

/// A consumer of the queue in `slot` that stays `stay` and then leaves.
fn consumer(slot: u32, exclusive: bool, no_ack: bool, stay: Duration) -> Vec<Step> {
    let mut s = Step::consumer(slot, exclusive, no_ack);
    s.extend([Step::Sleep(stay), Step::CloseConnection]);
    s
}

/// A client that opens a channel and leaves: it shows whether warren lets it in.
fn open_and_leave() -> Vec<Step> {
    vec![Step::Open(1), Step::CloseConnection]
}

/// A scenario with fixed, small settings and no broker heartbeats.
fn base(seed: u64) -> Scenario {
    let mut sc = Scenario::empty(seed);
    sc.broker.heartbeat = 0;
    sc.handshake.heartbeat = 0;
    sc.hub.upstream_idle_timeout = Duration::from_secs(2);
    sc.hub.pool_idle_timeout = Duration::from_secs(1);
    sc
}

fn run_named(sc: Scenario) -> Report {
    let r = run(
        sc,
        RunOptions {
            trace: true,
            ..RunOptions::default()
        },
    );
    assert!(r.ok(), "violations: {:#?}\n{}", r.violations, r.trace);
    r
}

/// B1, B3: two clients both use channel 1; they share one upstream connection on upstream
/// channels 1 and 2, and each gets only its own replies and deliveries.
#[test]
fn two_clients_share_an_upstream() {
    let mut sc = base(1);
    sc.hub.recycling = false;
    sc.clients = vec![
        client("consumer", 0, consumer(0, false, false, ms(200))),
        client(
            "publisher",
            50,
            vec![
                Step::Open(1),
                Step::publish(1, 0, 40),
                Step::publish(1, 0, 40),
                Step::CloseChannel(1),
                Step::CloseConnection,
            ],
        ),
    ];
    let r = run_named(sc);
    assert_snapshot!(r.trace);
}

/// B11, R4: the broker crashes while a confirm-mode publisher is mid-stream. The publisher
/// is closed with 320 at once; a client arriving during the backoff is refused at once; the
/// hub redials after the backoff and a later client works again.
#[test]
fn crash_mid_publish() {
    let mut sc = base(2);
    sc.clients = vec![
        client(
            "confirm-publisher",
            0,
            vec![
                Step::Open(1),
                Step::declare(1, 0, false),
                Step::Confirm(1),
                Step::publish(1, 0, 30),
                Step::Sleep(ms(100)),
                Step::publish(1, 0, 30),
                Step::Sleep(ms(100)),
                Step::publish(1, 0, 30),
                Step::Sleep(ms(100)),
                Step::publish(1, 0, 30),
                Step::WaitConfirms(1),
                Step::CloseConnection,
            ],
        ),
        client("during-backoff", 700, open_and_leave()),
        client("after-restart", 2500, Step::publish_once(0, 30)),
    ];
    sc.plan = FaultPlan::none().with(ms(250), Fault::BrokerCrash { downtime: ms(1000) });
    let r = run_named(sc);
    assert_snapshot!(r.trace);
}

/// B10, B11: the broker goes silent without closing anything. Only heartbeats tell: after
/// two silent intervals warren declares it dead, closes the client that had a channel on it
/// with 320, and a client arriving after the broker is back gets a fresh upstream.
#[test]
fn silent_death_by_heartbeat() {
    let mut sc = base(3);
    sc.broker.heartbeat = 1;
    sc.hub.connect_timeout = ms(800);
    sc.clients = vec![
        client(
            "consumer",
            0,
            consumer(0, false, false, Duration::from_secs(10)),
        ),
        client("later", 5000, open_and_leave()),
    ];
    sc.plan = FaultPlan::none().with(ms(1200), Fault::BrokerSilentDeath { downtime: ms(3000) });
    let r = run_named(sc);
    assert_snapshot!(r.trace);
}

/// B11: the broker goes away under a connected client that has no channel, so the client
/// keeps its connection and the hub keeps redialling: each failed dial doubles the backoff
/// (500ms, 1s, 2s, capped at 4s, with jitter in the upper half). Clients arriving during a
/// backoff are refused at once instead of each causing a dial. When the broker is back the
/// next dial succeeds and the idle client can open a channel again.
#[test]
fn reconnect_backoff() {
    let mut sc = base(4);
    sc.clients = vec![
        client(
            "idle",
            0,
            vec![
                Step::Sleep(Duration::from_secs(9)),
                Step::Open(1),
                Step::CloseConnection,
            ],
        ),
        client("during-outage", 1500, open_and_leave()),
        client("during-outage", 3000, open_and_leave()),
    ];
    sc.plan = FaultPlan::none().with(ms(500), Fault::BrokerCrash { downtime: ms(6000) });
    let r = run_named(sc);
    assert_snapshot!(r.trace);
}

/// B14: SIGTERM. Clients that are busy keep working until the drain deadline, new clients
/// are refused, pooled channels are closed, and at the deadline the rest are closed with 320
/// and the upstream is closed cleanly.
#[test]
fn drain() {
    let mut sc = base(5);
    sc.hub.close_timeout = ms(500);
    sc.clients = vec![
        client(
            "consumer",
            0,
            consumer(0, false, false, Duration::from_secs(10)),
        ),
        client(
            "publisher",
            100,
            vec![
                Step::Open(1),
                Step::publish(1, 0, 30),
                Step::CloseChannel(1),
                Step::Sleep(ms(1500)),
                Step::Open(2),
                Step::CloseConnection,
            ],
        ),
        client("too-late", 1500, open_and_leave()),
    ];
    sc.plan = FaultPlan::none().with(ms(1000), Fault::Drain { timeout: ms(2000) });
    let r = run_named(sc);
    assert_snapshot!(r.trace);
}

/// B5: an exclusive queue belongs to the client that declared it, not to the broker
/// connection it shares. A second client of the same hub tries to get from it and to consume
/// it; each time warren answers `Channel.Close 405 RESOURCE_LOCKED` with RabbitMQ's text, the
/// intruder reopens its channel, and publishing to the queue (allowed) reaches the owner.
#[test]
fn exclusive_queue_is_locked_to_its_client() {
    use warren_sim::client::Intrusion;
    let mut sc = base(6);
    sc.hub.recycling = false;
    sc.clients = vec![
        client("consumer", 0, consumer(3, true, true, ms(300))),
        client(
            "intruder",
            100,
            vec![
                Step::Open(1),
                Step::Intrude {
                    ch: 1,
                    slot: 3,
                    op: Intrusion::Get,
                },
                Step::Open(1),
                Step::Intrude {
                    ch: 1,
                    slot: 3,
                    op: Intrusion::Consume,
                },
                Step::Open(1),
                Step::publish(1, 3, 40),
                Step::CloseConnection,
            ],
        ),
    ];
    let r = run_named(sc);
    assert_snapshot!(r.trace);
}

/// B2: `rabbitmqctl change_password` with warren following the broker's event exchange.
/// A worker logged in with the old password keeps its connection (as RabbitMQ keeps it);
/// the event reaches warren's feed, which forgets its trust in the old password, so a client
/// still using it is refused with 403, and one with the new password is admitted.
#[test]
fn password_change_in_event_mode() {
    let mut sc = base(7);
    sc.net.events = true;
    sc.broker.users.push(("bob".into(), "old".into()));
    let bob = |kind, start, password: &str, script| {
        let mut c = client(kind, start, script);
        c.user = "bob".into();
        c.password = password.into();
        c
    };
    sc.clients = vec![
        bob(
            "worker",
            100,
            "old",
            vec![
                Step::Open(1),
                Step::Sleep(ms(600)),
                Step::publish(1, 0, 30),
                Step::CloseConnection,
            ],
        ),
        bob("leaked-password", 200, "old", vec![Step::CloseConnection]),
        bob("leaked-password", 600, "old", vec![Step::CloseConnection]),
        bob("new-password", 700, "new", vec![Step::CloseConnection]),
    ];
    sc.plan = FaultPlan::none().with(
        ms(400),
        Fault::PasswordChange {
            user: "bob".into(),
            password: "new".into(),
        },
    );
    let r = run_named(sc);
    assert!(
        r.trace.contains("revoked: PasswordChanged"),
        "the event reached warren"
    );
    assert_snapshot!(r.trace);
}
