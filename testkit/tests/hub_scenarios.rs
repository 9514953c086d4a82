//! Named scenarios of warren-core's hub, one per behaviour of docs/design.md, each with its
//! trace snapshotted and the properties that matter asserted directly. They drive the hub
//! through [`warren_testkit::hub_world`] and core's public API only, so they live here rather
//! than in `core/src` (issue 15).
//!
//! Why one file of ~1,800 lines: it is a catalogue of independent scenarios, each a few dozen
//! lines that read alone with its snapshot; the shared world is in `hub_world`.

use bytes::Bytes;
use insta::assert_snapshot;
use std::time::Duration;
use warren_core::hub::{ClientId, HubConfig, HubEvent, Placement, UpstreamId};
use warren_core::method::{encode, ids, Tune};
use warren_core::reply;
use warren_core::wire::Writer;
use warren_testkit::hub_world::*;

fn world() -> World {
    World::new(HubConfig::default())
}

/// A hub that holds one channel per upstream, without recycling: every further channel
/// needs another upstream.
fn one_channel_per_upstream() -> World {
    World::new(HubConfig {
        max_channels_per_upstream: 1,
        recycling: false,
        ..HubConfig::default()
    })
}

/// RabbitMQ's text when an operator closes a connection in its management UI.
const CLOSED_VIA_MANAGEMENT: &str = "CONNECTION_FORCED - Closed via management plugin";

/// B2 and B13: a client's OpenOk waits until the broker has accepted the same credentials.
#[test]
fn admission_waits_for_the_broker() {
    let mut w = world();
    let c = w.join(hello(131_072, 0));
    assert!(
        w.take(Peer::C(c)).is_empty(),
        "no OpenOk before the broker answers"
    );
    w.accept_dial();
    let got = w.take(Peer::C(c));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method_id(), Some(ids::CONNECTION_OPEN_OK));
    assert_snapshot!(w.trace());
}

/// B2: a refused login is passed on with the broker's code, and nothing is left behind.
#[test]
fn refused_login_closes_waiting_clients() {
    let mut w = world();
    let mut h = hello(131_072, 0);
    let c1 = w.join(h.clone());
    h.capabilities.authentication_failure_close = false;
    let c2 = w.join(h);
    let u = w.dials.pop().unwrap();
    w.broker_starts(u);
    w.broker_sends(
        u,
        &[close(
            0,
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.",
        )],
    );
    let c1_got = w.take(Peer::C(c1));
    assert_eq!(close_code(&c1_got[0]), Some(403));
    assert!(
        w.take(Peer::C(c2)).is_empty(),
        "no Close without authentication_failure_close"
    );
    assert!(w.closed.contains(&Peer::C(c2)));
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, HubEvent::AuthRejected { reply } if reply.code == 403)));
    w.client_sends(c1, &[close_ok(0)]);
    assert!(w.hub.is_finished(), "a failed login leaves no hub state");
    assert_snapshot!(w.trace());
}

/// B1, B3: two clients use the same channel number; each lands on its own upstream channel
/// and gets only its own deliveries.
#[test]
fn two_clients_share_an_upstream() {
    let mut w = world();
    let c1 = w.join(hello(131_072, 0));
    let u = w.accept_dial();
    let c2 = w.join(hello(131_072, 0));
    w.client_sends(c1, &[channel_open(1)]);
    w.client_sends(c2, &[channel_open(1)]);
    w.broker_sends(u, &[channel_open_ok(1), channel_open_ok(2)]);
    w.broker_sends(u, &[deliver(2, 1), header(2, 3), body(2, b"two")]);
    w.broker_sends(u, &[deliver(1, 1), header(1, 3), body(1, b"one")]);
    let got1 = w.take(Peer::C(c1));
    let got2 = w.take(Peer::C(c2));
    assert!(got1.iter().all(|f| f.channel() == 1 || f.channel() == 0));
    assert_eq!(got1.last().unwrap().payload(), b"one");
    assert_eq!(got2.last().unwrap().payload(), b"two");
    assert_eq!(w.hub.upstream_count(), 1);
    assert_snapshot!(w.trace());
}

/// B4: the broker closes a client's channel; the client's late frames are discarded, the
/// upstream number stays quarantined until the client's CloseOk.
#[test]
fn broker_closes_a_channel() {
    let (mut w, c, u) = with_channel(no_recycling(), 1);
    w.client_sends(c, &[queue_declare(1, "missing", false)]);
    w.broker_sends(u, &[close(1, 404, "NOT_FOUND - no queue 'missing'")]);
    let to_broker = w.take(Peer::U(u));
    assert_eq!(
        to_broker.last().unwrap().method_id(),
        Some(ids::CHANNEL_CLOSE_OK)
    );
    // Late frames from the client, sent before it saw the Close.
    w.client_sends(c, &[publish(1, "", false), header(1, 1), body(1, b"x")]);
    assert!(
        w.take(Peer::U(u)).is_empty(),
        "late frames never reach the broker"
    );
    // Another client's open must not get number 1 while it is quarantined.
    let c2 = w.join(hello(131_072, 0));
    w.client_sends(c2, &[channel_open(1)]);
    let opened = w.take(Peer::U(u));
    assert_eq!(opened[0].channel(), 2);
    w.client_sends(c, &[close_ok(1)]);
    w.client_sends(c, &[channel_open(1)]);
    let reopened = w.take(Peer::U(u));
    assert_eq!(reopened[0].channel(), 1, "freed after the client's CloseOk");
    assert_snapshot!(w.trace());
}

/// B4: a client closes its channel; the number is freed only after the broker's CloseOk.
#[test]
fn client_closes_a_channel() {
    let (mut w, c, u) = with_channel(no_recycling(), 5);
    w.client_sends(c, &[close(5, 200, "bye")]);
    assert_eq!(w.take_first_method(Peer::U(u)), Some(ids::CHANNEL_CLOSE));
    w.client_sends(c, &[channel_open(6)]);
    assert_eq!(w.take(Peer::U(u))[0].channel(), 2, "number 1 still closing");
    w.broker_sends(u, &[close_ok(1)]);
    let got = w.take(Peer::C(c));
    assert_eq!(got[0].channel(), 5);
    assert_eq!(got[0].method_id(), Some(ids::CHANNEL_CLOSE_OK));
    assert_snapshot!(w.trace());
}

/// B5: a client that drops its socket has its channels closed upstream (so the broker
/// requeues its deliveries) and its exclusive queues deleted.
#[test]
fn client_leaves_and_is_cleaned_up() {
    let (mut w, c, u) = with_channel(no_recycling(), 1);
    w.client_sends(c, &[queue_declare(1, "", true)]);
    w.broker_sends(u, &[queue_declare_ok(1, "amq.gen-abc")]);
    w.client_sends(c, &[publish(1, "", false), header(1, 10), body(1, b"half")]);
    w.client_drops(c);
    let to_broker = w.take(Peer::U(u));
    let names: Vec<_> = to_broker.iter().map(describe).collect();
    assert!(
        !names.iter().any(|n| n.contains("basic.publish")),
        "the unfinished publish is never sent: {names:?}"
    );
    assert!(names
        .iter()
        .any(|n| n.contains("queue.delete \"amq.gen-abc\"")));
    assert!(names.iter().any(|n| n.starts_with("ch1 channel.close")));
    assert_snapshot!(w.trace());
}

/// B8: a publish goes upstream only when whole, and body frames are re-chunked to a smaller
/// upstream frame_max.
#[test]
fn publishes_are_forwarded_whole_and_rechunked() {
    let tune = Tune {
        channel_max: 2047,
        frame_max: 4096,
        heartbeat: 0,
    };
    let (mut w, c, u) = with_channel_tuned(world(), 1, tune);
    let big = vec![7u8; 10_000];
    w.client_sends(
        c,
        &[
            publish(1, "", false),
            header(1, 10_000),
            body(1, &big[..6000]),
        ],
    );
    assert!(
        w.take(Peer::U(u)).is_empty(),
        "nothing before the body is complete"
    );
    w.client_sends(c, &[body(1, &big[6000..])]);
    let sent = w.take(Peer::U(u));
    assert_eq!(sent[0].method_id(), Some(ids::BASIC_PUBLISH));
    let bodies: Vec<usize> = sent[2..].iter().map(|f| f.payload().len()).collect();
    assert!(bodies.iter().all(|n| *n <= 4096 - 8), "{bodies:?}");
    assert_eq!(bodies.iter().sum::<usize>(), 10_000);
    assert_snapshot!(w.trace());
}

/// B9: deliveries are re-chunked to the client's frame_max.
#[test]
fn deliveries_are_rechunked_for_small_clients() {
    let mut w = world();
    let c = w.join(hello(4096, 0));
    let u = w.accept_dial();
    w.open_on(c, 1, u);
    let big = vec![1u8; 10_000];
    w.broker_sends(u, &[deliver(1, 1), header(1, 10_000), body(1, &big)]);
    let got = w.take(Peer::C(c));
    let bodies: Vec<usize> = got[2..].iter().map(|f| f.payload().len()).collect();
    assert_eq!(bodies, vec![4088, 4088, 1824]);
    assert!(got.iter().all(|f| f.wire_len() <= 4096));
}

/// B9: a client that stops reading is disconnected and its channels closed upstream.
#[test]
fn slow_client_is_disconnected() {
    let (mut w, c, u) = with_channel(no_recycling(), 1);
    w.input("c slow", warren_core::hub::Input::ClientSlow { client: c });
    assert!(w.closed.contains(&Peer::C(c)));
    let to_broker = w.take(Peer::U(u));
    assert_eq!(to_broker[0].method_id(), Some(ids::CHANNEL_CLOSE));
    assert_snapshot!(w.trace());
}

/// B3: when an upstream is full a new one is dialled; placement spreads or fills.
#[test]
fn full_upstreams_grow_the_pool() {
    for placement in [Placement::Fill, Placement::Spread] {
        let mut w = World::new(HubConfig {
            max_channels_per_upstream: 2,
            placement,
            recycling: false,
            ..HubConfig::default()
        });
        let c = w.join(hello(131_072, 0));
        let u1 = w.accept_dial();
        w.client_sends(c, &[channel_open(1), channel_open(2), channel_open(3)]);
        let u2 = w.accept_dial();
        assert_ne!(u1, u2);
        w.broker_sends(u1, &[channel_open_ok(1), channel_open_ok(2)]);
        w.broker_sends(u2, &[channel_open_ok(1)]);
        assert_eq!(
            w.take(Peer::C(c)).len(),
            4,
            "OpenOk x3 plus the connection's"
        );
        // Free one on u1, then another client opens one: Fill puts it on the newest (u2),
        // Spread on the least used (u1).
        w.client_sends(c, &[close(1, 200, "")]);
        w.broker_sends(u1, &[close_ok(1)]);
        w.take(Peer::U(u1));
        w.take(Peer::U(u2));
        let d = w.join(hello(131_072, 0));
        w.take(Peer::C(d));
        w.client_sends(d, &[channel_open(1)]);
        let target = if placement == Placement::Fill { u2 } else { u1 };
        assert_eq!(
            w.take(Peer::U(target)).len(),
            1,
            "{placement:?} put the channel on {target}"
        );
    }
}

/// B3, B5: a client's channels go to its home upstream, the one its first channel went to,
/// while that has room, whatever the placement and the pool hold: RabbitMQ keeps an exclusive
/// queue to the connection that declared it, so the client's own would answer 405 on another.
/// When its home is full, a channel goes where the policy says.
#[test]
fn a_clients_channels_stay_on_its_home_upstream_while_it_has_room() {
    for placement in [Placement::Fill, Placement::Spread] {
        let mut w = World::new(HubConfig {
            max_channels_per_upstream: 3,
            placement,
            ..HubConfig::default()
        });
        // c's first channel is on u1; a second client fills u1 and makes the hub dial u2.
        let c = w.join(hello(131_072, 0));
        let u1 = w.accept_dial();
        w.client_sends(c, &[channel_open(1)]);
        w.broker_sends(u1, &[channel_open_ok(1)]);
        let other = w.join(hello(131_072, 0));
        w.client_sends(other, &[channel_open(1), channel_open(2), channel_open(3)]);
        w.broker_sends(u1, &[channel_open_ok(2), channel_open_ok(3)]);
        let u2 = w.accept_dial();
        w.broker_sends(u2, &[channel_open_ok(1)]);
        // The other client leaves a clean channel in the pool (on u1) and closes a dirty
        // one there: u1 has room again, u2 has a channel in use.
        w.client_sends(other, &[close(1, 200, "")]);
        w.broker_sends(u1, &[flow_ok(2)]);
        w.client_sends(
            other,
            &[consume(2, b"q", b"t", true, false), close(2, 200, "")],
        );
        w.broker_sends(u1, &[close_ok(3)]);
        assert_eq!(w.hub.pooled_channels(), 1);
        w.take(Peer::U(u1));
        w.take(Peer::U(u2));
        w.take(Peer::C(c));
        w.take(Peer::C(other));
        // c's next channels: from the pool on u1, then a new one on u1, whatever the policy.
        w.client_sends(c, &[channel_open(2), channel_open(3)]);
        let on_u1 = w.take(Peer::U(u1));
        assert_eq!(
            on_u1.len(),
            1,
            "{placement:?}: one new channel on c's home, the other from its pool: {on_u1:?}"
        );
        assert!(
            w.take(Peer::U(u2)).is_empty(),
            "{placement:?}: nothing on u2"
        );
        // u1 is full now: c's next channel goes where the policy puts it, u2.
        w.client_sends(c, &[channel_open(4)]);
        assert_eq!(w.take(Peer::U(u2)).len(), 1, "{placement:?}: u1 is full");
    }
}

/// B3: the per-client channel cap is the channel_max the client negotiated, counted as
/// RabbitMQ counts it: a number above it is fine while fewer channels are open, and the open
/// past the cap closes the connection with RabbitMQ's 530 text, naming no method.
#[test]
fn channel_beyond_the_client_cap_is_refused() {
    let mut w = world();
    let mut h = hello(131_072, 0);
    h.tune.channel_max = 2;
    let c = w.join(h);
    let u = w.accept_dial();
    w.take(Peer::C(c));
    w.client_sends(c, &[channel_open(7)]);
    w.broker_sends(u, &[channel_open_ok(1)]);
    let got = w.take_described(Peer::C(c));
    assert_eq!(got, ["ch7 channel.open-ok"]);
    w.client_sends(c, &[channel_open(1)]);
    w.broker_sends(u, &[channel_open_ok(2)]);
    w.take(Peer::C(c));
    w.client_sends(c, &[channel_open(2)]);
    let got = w.take(Peer::C(c));
    let described: Vec<_> = got.iter().map(describe).collect();
    assert_eq!(
        described,
        [
            "ch0 connection.close 530 \"NOT_ALLOWED - number of channels opened (2) has reached \
          the negotiated channel_max (2)\""
        ]
    );
    let close = close_reply(&got[0]).expect("a connection.close");
    assert_eq!(
        (close.class_id, close.method_id),
        (0, 0),
        "no method is the cause"
    );
}

/// B11: a lost upstream closes the clients that had channels on it with the broker's reply;
/// a client without channels keeps its connection; the hub redials with backoff.
#[test]
fn upstream_loss_closes_affected_clients_and_redials() {
    let (mut w, c1, u) = with_channel(no_recycling(), 1);
    let c2 = w.join(hello(131_072, 0));
    w.take(Peer::C(c2));
    w.broker_sends(u, &[close(0, 320, CLOSED_VIA_MANAGEMENT)]);
    let got = w.take(Peer::C(c1));
    assert_eq!(close_code(&got[0]), Some(320));
    assert!(w.take(Peer::C(c2)).is_empty(), "c2 had no channel there");
    // The redial is delayed by the backoff.
    assert!(w.dials.is_empty());
    w.advance(Duration::from_secs(1));
    assert_eq!(w.dials.len(), 1, "redialled after the backoff");
    let u2 = w.dials.pop().unwrap();
    w.upstream_closed("refused", u2, "connection refused");
    // While waiting, new clients are refused at once.
    let c3 = w.join(hello(131_072, 0));
    assert_eq!(close_code(&w.take(Peer::C(c3))[0]), Some(320));
    assert_snapshot!(w.trace());
}

/// B10: warren sends heartbeats on write-idleness and declares a silent client dead after
/// two intervals.
#[test]
fn client_heartbeats() {
    let mut w = world();
    let c = w.join(hello(131_072, 2));
    w.accept_dial();
    w.take(Peer::C(c));
    w.advance(Duration::from_millis(1500));
    let got = w.take(Peer::C(c));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind(), warren_core::frame::FrameType::Heartbeat);
    w.advance(Duration::from_secs(3));
    let got = w.take(Peer::C(c));
    assert_eq!(
        close_code(got.last().unwrap()),
        Some(reply::CONNECTION_FORCED)
    );
    assert_snapshot!(w.trace());
}

/// B10: a silent broker is detected after two intervals.
#[test]
fn upstream_heartbeats() {
    let tune = Tune {
        heartbeat: 1,
        ..RABBITMQ_TUNE
    };
    let (mut w, c, u) = with_channel_tuned(world(), 1, tune);
    w.advance(Duration::from_millis(600));
    assert_eq!(
        w.take(Peer::U(u))[0].kind(),
        warren_core::frame::FrameType::Heartbeat
    );
    w.advance(Duration::from_millis(1500));
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, HubEvent::UpstreamLost { .. })));
    assert_eq!(
        close_code(&w.take(Peer::C(c))[0]),
        Some(reply::CONNECTION_FORCED)
    );
    assert_snapshot!(w.trace());
}

/// B12: Blocked goes to clients with channels on the upstream and is replayed to a client
/// that joins it while blocked.
#[test]
fn blocked_is_forwarded_and_replayed() {
    let (mut w, c1, u) = with_channel(no_recycling(), 1);
    w.broker_sends(u, &[encode::blocked("low on memory")]);
    assert_eq!(
        w.take_first_method(Peer::C(c1)),
        Some(ids::CONNECTION_BLOCKED)
    );
    let c2 = w.join(hello(131_072, 0));
    w.take(Peer::C(c2));
    w.client_sends(c2, &[channel_open(1)]);
    assert_eq!(
        w.take_first_method(Peer::C(c2)),
        Some(ids::CONNECTION_BLOCKED)
    );
    w.broker_sends(u, &[encode::unblocked()]);
    assert_eq!(
        w.take_first_method(Peer::C(c1)),
        Some(ids::CONNECTION_UNBLOCKED)
    );
    assert_eq!(
        w.take_first_method(Peer::C(c2)),
        Some(ids::CONNECTION_UNBLOCKED)
    );
    assert_snapshot!(w.trace());
}

/// B6: a publish-only channel is fenced and pooled when its client closes it, and the next
/// Channel.Open is answered from the pool without a broker round trip.
#[test]
fn clean_channel_is_recycled() {
    let (mut w, c1, u) = with_channel(world(), 1);
    w.client_sends(c1, &[publish(1, "", false), header(1, 2), body(1, b"hi")]);
    w.client_sends(c1, &[close(1, 200, "")]);
    assert_eq!(
        w.take_first_method(Peer::C(c1)),
        Some(ids::CHANNEL_CLOSE_OK),
        "answered locally"
    );
    let fence = w.take(Peer::U(u));
    assert_eq!(fence.last().unwrap().method_id(), Some(ids::CHANNEL_FLOW));
    w.broker_sends(u, &[flow_ok(1)]);
    assert_eq!(w.hub.pooled_channels(), 1);
    let c2 = w.join(hello(131_072, 0));
    w.take(Peer::C(c2));
    w.client_sends(c2, &[channel_open(3)]);
    assert_eq!(w.take_first_method(Peer::C(c2)), Some(ids::CHANNEL_OPEN_OK));
    assert!(w.take(Peer::U(u)).is_empty(), "no broker round trip");
    w.client_sends(c2, &[publish(3, "", false), header(3, 1), body(3, b"x")]);
    assert!(w.take(Peer::U(u)).iter().all(|f| f.channel() == 1));
    assert_eq!(w.hub.stats().opens_from_pool, 1);
    assert_snapshot!(w.trace());
}

/// B6: an error for the previous owner that arrives during the fence closes the channel
/// instead of pooling it, and never reaches anyone.
#[test]
fn failed_fence_is_not_pooled() {
    let (mut w, c1, u) = with_channel(world(), 1);
    w.client_sends(
        c1,
        &[publish(1, "missing", false), header(1, 1), body(1, b"x")],
    );
    w.client_drops(c1);
    w.take(Peer::U(u));
    w.broker_sends(u, &[close(1, 404, "NOT_FOUND - no exchange 'missing'")]);
    assert_eq!(w.take_first_method(Peer::U(u)), Some(ids::CHANNEL_CLOSE_OK));
    assert_eq!(w.hub.pooled_channels(), 0);
    let c2 = w.join(hello(131_072, 0));
    w.client_sends(c2, &[channel_open(1)]);
    assert!(w
        .take(Peer::C(c2))
        .iter()
        .all(|f| f.method_id() != Some(ids::CHANNEL_CLOSE)));
    assert_snapshot!(w.trace());
}

/// B6: every method outside the clean list makes the channel non-recyclable for good.
#[test]
fn dirty_methods_prevent_recycling() {
    use warren_core::method::MethodId;
    let cases: Vec<(&str, bytes::Bytes)> = vec![
        ("consume", consume(1, b"q", b"", false, false)),
        ("get", basic_get(1, "q", false)),
        (
            "qos",
            m(1, ids::BASIC_QOS, |w| {
                w.u32(0).u16(10).bit(false);
            }),
        ),
        (
            "ack",
            m(1, ids::BASIC_ACK, |w| {
                w.u64(1).bit(false);
            }),
        ),
        (
            "nack",
            m(1, ids::BASIC_NACK, |w| {
                w.u64(1).bit(false).bit(true);
            }),
        ),
        (
            "reject",
            m(1, ids::BASIC_REJECT, |w| {
                w.u64(1).bit(true);
            }),
        ),
        (
            "recover",
            m(1, ids::BASIC_RECOVER, |w| {
                w.bit(true);
            }),
        ),
        (
            "confirm.select",
            m(1, ids::CONFIRM_SELECT, |w| {
                w.bit(false);
            }),
        ),
        ("tx.select", m(1, ids::TX_SELECT, |_| {})),
        ("flow", encode::flow(1, true, false)),
        ("mandatory publish", publish(1, "", true)),
        ("exclusive declare", queue_declare(1, "mine", true)),
    ];
    let mut summary = String::new();
    for (name, frame) in cases {
        let (mut w, c, u) = with_channel(world(), 1);
        w.client_sends(c, &[frame]);
        if name == "mandatory publish" {
            w.client_sends(c, &[header(1, 0)]);
        }
        w.take(Peer::U(u));
        w.client_sends(c, &[close(1, 200, "")]);
        let sent: Vec<MethodId> = w
            .take(Peer::U(u))
            .iter()
            .filter_map(|f| f.method_id())
            .collect();
        assert_eq!(
            sent,
            vec![ids::CHANNEL_CLOSE],
            "{name}: the channel is closed, not fenced"
        );
        assert_eq!(w.hub.stats().channels_recycled, 0);
        summary.push_str(&format!("{name}: closed\n"));
    }
    assert_snapshot!(summary);
}

/// B6: the pool has a size bound and closes channels idle past its timeout.
#[test]
fn pool_is_bounded_and_expires() {
    let mut w = World::new(HubConfig {
        pool_size: 1,
        pool_idle_timeout: Duration::from_secs(10),
        ..HubConfig::default()
    });
    let c = w.join(hello(131_072, 0));
    let u = w.accept_dial();
    w.client_sends(c, &[channel_open(1), channel_open(2)]);
    w.broker_sends(u, &[channel_open_ok(1), channel_open_ok(2)]);
    w.take(Peer::U(u));
    w.client_sends(c, &[close(1, 200, ""), close(2, 200, "")]);
    let sent = w.take_described(Peer::U(u));
    assert_eq!(
        sent,
        vec![
            "ch1 channel.flow active=true",
            "ch2 channel.close 200 \"closed by client\""
        ],
        "one fenced, the other closed: the pool holds one"
    );
    w.broker_sends(u, &[flow_ok(1), close_ok(2)]);
    assert_eq!(w.hub.pooled_channels(), 1);
    w.advance(Duration::from_secs(11));
    assert_eq!(w.hub.pooled_channels(), 0);
    assert_eq!(w.take_first_method(Peer::U(u)), Some(ids::CHANNEL_CLOSE));
    assert_snapshot!(w.trace());
}

/// B14: drain lets clients finish until the deadline, then closes them with 320 and closes
/// the upstream cleanly.
#[test]
fn drain_closes_the_rest_at_the_deadline() {
    let (mut w, c, u) = with_channel(no_recycling(), 1);
    let deadline = w.now + Duration::from_secs(5);
    w.input("drain", warren_core::hub::Input::Drain { deadline });
    assert!(w.take(Peer::C(c)).is_empty(), "busy clients keep working");
    w.advance(Duration::from_secs(5));
    assert_eq!(close_code(&w.take(Peer::C(c))[0]), Some(320));
    w.client_sends(c, &[close_ok(0)]);
    // Its close is due at once: the driver fires due timers before it waits.
    w.advance(Duration::ZERO);
    let to_broker = w.take_described(Peer::U(u));
    assert_eq!(
        to_broker,
        vec![
            "ch1 channel.close 200 \"client left\"",
            "ch0 connection.close 200 \"warren is shutting down\""
        ],
        "the upstream closes as soon as the hub has no client"
    );
    w.broker_sends(u, &[close_ok(1)]);
    w.broker_sends(u, &[close_ok(0)]);
    assert!(w.hub.is_finished());
    assert_snapshot!(w.trace());
}

/// B14, B17: a client whose handshake was under way when warren stopped accepting joins a
/// draining hub and is served like the others (a hand-over refuses no one); with no open
/// upstream to serve it, it is told warren is shutting down.
#[test]
fn drain_serves_a_late_joiner_while_an_upstream_is_open() {
    let (mut w, _c, _u) = with_channel(no_recycling(), 1);
    let deadline = w.now + Duration::from_secs(5);
    w.input("drain", warren_core::hub::Input::Drain { deadline });
    let late = w.join(hello(131_072, 0));
    let got = w.take_described(Peer::C(late));
    assert_eq!(got, ["ch0 connection.open-ok"], "served");

    let mut idle = world();
    idle.input("drain", warren_core::hub::Input::Drain { deadline });
    let refused = idle.join(hello(131_072, 0));
    let got = idle.take(Peer::C(refused));
    assert_eq!(close_code(&got[0]), Some(320), "no upstream to serve it");
}

/// A `tx.commit` on a channel that is not transactional: RabbitMQ refuses it at once with a
/// 406 on the channel, so what the client sends behind it is no method "while processing
/// 'tx.commit'" (the broker drops it on the closing channel): warren forwards both and
/// closes nothing itself.
#[test]
fn a_commit_on_a_channel_that_is_not_transactional_holds_nothing() {
    let (mut w, c, u) = with_channel(no_recycling(), 1);
    w.take(Peer::U(u));
    w.client_sends(c, &[m(1, ids::TX_COMMIT, |_| {}), qos(1, 10, false)]);
    assert!(w.take(Peer::C(c)).is_empty());
    let sent: Vec<_> = w
        .take(Peer::U(u))
        .iter()
        .filter_map(|f| f.method_id())
        .collect();
    assert_eq!(sent, [ids::TX_COMMIT, ids::BASIC_QOS]);
}

/// B7: every kind of bad client input closes that client (or only its channel) with the
/// reply code, text and cause RabbitMQ 3.10 answers it with (compared with it frame by frame;
/// the spec names other codes for some), and nothing harmful reaches the shared upstream.
#[test]
fn bad_client_input_gets_the_spec_reply_code() {
    use warren_core::frame::{Frame, FrameError, FrameType};
    use warren_core::hub::Input;
    let consume = |tag: &[u8]| warren_testkit::hub_world::consume(1, b"q", tag, false, false);
    let cases: Vec<(&str, Vec<bytes::Bytes>)> = vec![
        ("body frame without a method", vec![body(1, b"x")]),
        ("header frame without a method", vec![header(1, 1)]),
        (
            "body larger than its header declared",
            vec![publish(1, "", false), header(1, 1), body(1, b"xy")],
        ),
        (
            "method in the middle of content",
            vec![publish(1, "", false), header(1, 5), publish(1, "", false)],
        ),
        (
            "content header for another class",
            vec![publish(1, "", false), {
                let mut p = bytes::BytesMut::new();
                warren_core::wire::Writer::new(&mut p)
                    .u16(50)
                    .u16(0)
                    .u64(1)
                    .u16(0);
                Frame::new(FrameType::Header, 1, &p).freeze()
            }],
        ),
        ("method on an unopened channel", vec![publish(9, "", false)]),
        ("second channel.open", vec![channel_open(1)]),
        (
            "heartbeat on channel 1",
            vec![Frame::new(FrameType::Heartbeat, 1, b"").freeze()],
        ),
        (
            "heartbeat with a payload",
            vec![Frame::new(FrameType::Heartbeat, 0, b"ab").freeze()],
        ),
        ("content body on channel 0", vec![body(0, b"abc")]),
        ("content header on channel 0", vec![header(0, 1)]),
        ("channel.open on channel 0", vec![channel_open(0)]),
        (
            "connection.tune-ok after the handshake",
            vec![encode::tune(
                Tune {
                    channel_max: 1,
                    frame_max: 4096,
                    heartbeat: 0,
                },
                true,
            )],
        ),
        (
            "connection method on channel 1",
            vec![m(1, ids::CONNECTION_BLOCKED, |w| {
                w.shortstr(b"x");
            })],
        ),
        (
            "unknown method",
            vec![m(1, warren_core::method::MethodId::new(60, 99), |_| {})],
        ),
        ("server-only method (basic.deliver)", vec![deliver(1, 1)]),
        (
            "truncated arguments",
            vec![m(1, ids::BASIC_QOS, |w| {
                w.u16(1);
            })],
        ),
        (
            "trailing bytes after arguments",
            vec![m(1, ids::BASIC_QOS, |w| {
                w.u32(0).u16(1).bit(false).u8(9);
            })],
        ),
        (
            "bad field table type",
            vec![m(1, ids::QUEUE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(b"q")
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .u32(3)
                    .u8(1)
                    .u8(b'k')
                    .u8(b'Z');
            })],
        ),
        (
            "channel.flow active=false",
            vec![encode::flow(1, false, false)],
        ),
        (
            "basic.publish immediate=true",
            vec![m(1, ids::BASIC_PUBLISH, |w| {
                w.u16(0).shortstr(b"").shortstr(b"q").bit(false).bit(true);
            })],
        ),
        (
            "basic.qos prefetch_size != 0",
            vec![m(1, ids::BASIC_QOS, |w| {
                w.u32(10).u16(1).bit(false);
            })],
        ),
        (
            "basic.recover requeue=false",
            vec![m(1, ids::BASIC_RECOVER, |w| {
                w.bit(false);
            })],
        ),
        (
            "consumer tag reused on a channel",
            vec![consume(b"t"), consume(b"t")],
        ),
        (
            "method while tx.commit is in flight",
            vec![
                m(1, ids::TX_SELECT, |_| {}),
                publish(1, "", false),
                header(1, 1),
                body(1, b"x"),
                m(1, ids::TX_COMMIT, |_| {}),
                publish(1, "", false),
            ],
        ),
        ("channel.close-ok on an open channel", vec![close_ok(1)]),
        (
            "connection.close-ok when nothing was closed",
            vec![close_ok(0)],
        ),
        (
            "message larger than max_message_size",
            vec![publish(1, "", false), header(1, 1 << 40)],
        ),
    ];
    let mut table = String::new();
    for (name, frames) in cases {
        let (mut w, c, u) = with_channel(no_recycling(), 1);
        w.take(Peer::U(u));
        w.client_sends(c, &frames);
        let got = w.take(Peer::C(c));
        let close = got
            .iter()
            .find(|f| close_code(f).is_some())
            .unwrap_or_else(|| panic!("{name}: no close"));
        let level = if close.channel() == 0 {
            "connection"
        } else {
            "channel"
        };
        let text = close_reply(close).map_or(String::new(), |c| {
            format!("{} (cause {}.{})", c.text, c.class_id, c.method_id)
        });
        // Nothing but channel clean-up may have reached the broker, after what a committed
        // transaction carried.
        let sent = w.take(Peer::U(u));
        let committed = (sent.iter())
            .rposition(|f| f.method_id() == Some(ids::TX_COMMIT))
            .map_or(0, |i| i + 1);
        for f in &sent[committed..] {
            let id = f.method_id();
            assert!(
                matches!(
                    id,
                    Some(ids::CHANNEL_CLOSE) | Some(ids::TX_SELECT) | Some(ids::BASIC_CONSUME)
                ),
                "{name}: {} reached the broker",
                describe(f)
            );
        }
        table.push_str(&format!(
            "{name}: {level} {} {text}\n",
            close_code(close).unwrap()
        ));
    }
    // Frame-level errors come from the runtime's decoder.
    for (name, error) in [
        ("bad frame end octet", FrameError::BadEnd(0)),
        (
            "frame larger than frame_max",
            FrameError::TooLarge {
                kind: 3,
                size: 200_000,
                max: 131_072,
            },
        ),
        ("unknown frame type", FrameError::BadType(9)),
    ] {
        let (mut w, c, _) = with_channel(no_recycling(), 1);
        w.input(name, Input::ClientFrameError { client: c, error });
        let got = w.take(Peer::C(c));
        table.push_str(&format!(
            "{name}: connection {}\n",
            close_code(&got[0]).unwrap()
        ));
    }
    assert_snapshot!(table);
}

/// B7: Channel.Flow and connection.update-secret from a client are answered by warren and
/// never forwarded: RabbitMQ answers flow active=false with a connection error (540 in the
/// bad-input table), which would close the shared connection.
#[test]
fn flow_and_update_secret_are_answered_locally() {
    let (mut w, c, u) = with_channel(no_recycling(), 1);
    w.take(Peer::U(u));
    w.client_sends(c, &[encode::flow(1, true, false)]);
    w.client_sends(
        c,
        &[m(0, ids::CONNECTION_UPDATE_SECRET, |w| {
            w.longstr(b"new-token").shortstr(b"refresh");
        })],
    );
    let got = w.take_described(Peer::C(c));
    assert_eq!(
        got,
        vec![
            "ch1 channel.flow-ok active=true",
            "ch0 connection.update-secret-ok"
        ]
    );
    assert!(w.take(Peer::U(u)).is_empty());
}

/// B6: RabbitMQ resolves an empty queue name to the last queue declared on the channel; on a
/// recycled channel that would be the previous owner's queue, so warren answers like a fresh
/// channel would (404), and the shortcut works again once the new owner declares.
#[test]
fn recycled_channel_forgets_the_last_declared_queue() {
    let (mut w, c1, u) = with_channel(world(), 1);
    w.client_sends(c1, &[channel_open(2)]);
    w.broker_sends(u, &[channel_open_ok(2)]);
    for ch in [1, 2] {
        w.client_sends(c1, &[queue_declare(ch, "a-queue", false)]);
        w.broker_sends(u, &[queue_declare_ok(ch, "a-queue")]);
        w.client_sends(c1, &[close(ch, 200, "")]);
        w.broker_sends(u, &[flow_ok(ch)]);
    }
    assert_eq!(w.hub.pooled_channels(), 2);
    w.take(Peer::U(u));
    let purge_shortcut = |ch| queue_purge(ch, "");
    let c2 = w.join(hello(131_072, 0));
    w.client_sends(c2, &[channel_open(1), purge_shortcut(1)]);
    let got = w.take(Peer::C(c2));
    assert_eq!(close_code(got.last().unwrap()), Some(reply::NOT_FOUND));
    assert!(
        w.take(Peer::U(u))
            .iter()
            .all(|f| f.method_id() != Some(ids::QUEUE_PURGE)),
        "the shortcut never reaches the broker"
    );
    let c3 = w.join(hello(131_072, 0));
    w.client_sends(
        c3,
        &[
            channel_open(1),
            queue_declare(1, "mine", false),
            purge_shortcut(1),
        ],
    );
    let sent = w.take_described(Peer::U(u));
    assert_eq!(sent, vec!["ch1 queue.declare \"mine\"", "ch1 queue.purge"]);
    assert_snapshot!(w.trace());
}

/// B11: right after an upstream is lost, before any redial has failed, a new client is not
/// refused: it waits for the scheduled reconnect and is admitted when it opens.
#[test]
fn new_client_waits_for_the_reconnect_after_a_loss() {
    let (mut w, c1, u) = with_channel(no_recycling(), 1);
    // A client without channels stays connected, so the hub schedules a reconnect.
    let idle = w.join(hello(131_072, 0));
    w.take(Peer::C(idle));
    w.upstream_closed("u socket closed", u, "connection reset");
    assert_eq!(close_code(&w.take(Peer::C(c1))[0]), Some(320));
    let c2 = w.join(hello(131_072, 0));
    assert!(
        w.take(Peer::C(c2)).is_empty(),
        "neither refused nor admitted yet"
    );
    assert!(w.dials.is_empty(), "the redial waits for the backoff");
    w.advance(Duration::from_secs(1));
    w.accept_dial();
    assert_eq!(
        w.take_first_method(Peer::C(c2)),
        Some(ids::CONNECTION_OPEN_OK)
    );
    assert_snapshot!(w.trace());
}

/// B5 (found by the simulation, seeds 0 and 97): a client that leaves while its exclusive,
/// server-named queue.declare is in flight still gets the queue deleted once the broker's
/// declare-ok names it.
#[test]
fn exclusive_queue_declared_in_flight_is_deleted_after_its_client_left() {
    let (mut w, c, u) = with_channel(no_recycling(), 1);
    w.client_sends(c, &[queue_declare(1, "", true)]);
    w.client_drops(c);
    w.take(Peer::U(u));
    w.broker_sends(u, &[queue_declare_ok(1, "amq.gen-late"), close_ok(1)]);
    let sent = w.take_described(Peer::U(u));
    assert!(
        sent.iter()
            .any(|d| d == "ch2 queue.delete \"amq.gen-late\""),
        "{sent:?}"
    );
}

/// A client (`owner`) whose exclusive queue `amq.gen-mine` lives on an upstream where it has
/// no channel left, as on the returned `u2`: `u1` is full with another client's channel, so
/// the owner's channel made the hub dial `u2`; the owner declared the queue there and closed
/// that channel, keeping its connection.
fn owner_of_a_queue_on_a_channelless_upstream() -> (World, ClientId, UpstreamId) {
    let mut w = World::new(HubConfig {
        max_channels_per_upstream: 1,
        recycling: false,
        upstream_idle_timeout: Duration::from_secs(5),
        ..HubConfig::default()
    });
    let other = w.join(hello(131_072, 0));
    let u1 = w.accept_dial();
    w.client_sends(other, &[channel_open(1)]);
    w.broker_sends(u1, &[channel_open_ok(1)]);
    let owner = w.join(hello(131_072, 0));
    w.client_sends(owner, &[channel_open(1)]);
    let u2 = w.accept_dial();
    w.broker_sends(u2, &[channel_open_ok(1)]);
    w.client_sends(owner, &[queue_declare(1, "", true)]);
    w.broker_sends(u2, &[queue_declare_ok(1, "amq.gen-mine")]);
    w.client_sends(owner, &[close(1, 200, "")]);
    w.broker_sends(u2, &[close_ok(1)]);
    w.take(Peer::U(u2));
    w.take(Peer::C(owner));
    (w, owner, u2)
}

/// B5: an upstream that holds a connected client's exclusive queue stays open while the
/// client is here, even with no channel on it: closing it for idleness would make the broker
/// delete the queue under its client, which RabbitMQ never does while the declaring
/// connection lives. Once the client leaves, its queue is deleted there and the upstream may
/// idle out.
#[test]
fn an_upstream_holding_a_clients_exclusive_queue_does_not_idle_out_under_it() {
    let (mut w, owner, u2) = owner_of_a_queue_on_a_channelless_upstream();
    w.advance(Duration::from_secs(30));
    let sent = w.take_described(Peer::U(u2));
    assert!(
        !sent.iter().any(|d| d.contains("connection.close")),
        "u2 closed under the owner's exclusive queue: {sent:?}"
    );
    // The owner leaves: its queue is deleted on u2, which may then idle out.
    w.client_drops(owner);
    let sent = w.take_described(Peer::U(u2));
    assert_eq!(
        sent,
        [
            "ch1 channel.open",
            "ch1 queue.delete \"amq.gen-mine\"",
            "ch1 channel.close 200 \"exclusive queue cleanup\""
        ]
    );
    w.broker_sends(u2, &[channel_open_ok(1), queue_delete_ok(1), close_ok(1)]);
    w.take(Peer::U(u2));
    w.advance(Duration::from_secs(6));
    let sent = w.take_described(Peer::U(u2));
    assert!(
        sent.contains(&"ch0 connection.close 200 \"idle\"".to_string()),
        "{sent:?}"
    );
}

/// B5/B11: when the broker connection holding a client's exclusive queue is lost, the queue
/// is gone with it, so the client is closed as a direct RabbitMQ client's connection would
/// be, even though it had no channel there; left open it would find its own queue missing.
#[test]
fn losing_the_upstream_of_a_clients_exclusive_queue_closes_the_client() {
    let (mut w, owner, u2) = owner_of_a_queue_on_a_channelless_upstream();
    w.broker_sends(u2, &[close(0, 320, CLOSED_VIA_MANAGEMENT)]);
    let got = w.take(Peer::C(owner));
    assert_eq!(got.first().and_then(close_code), Some(320), "{got:?}");
}

/// B3/B11 (simulation seeds 604, 1448): when the dial for a new upstream fails while the
/// only open one is full, the channels waiting for room are refused instead of hanging.
#[test]
fn failed_growth_dial_refuses_waiting_channels() {
    let mut w = one_channel_per_upstream();
    let c = w.join(hello(131_072, 0));
    w.accept_dial();
    w.client_sends(c, &[channel_open(1), channel_open(2)]);
    let u2 = w.dials.pop().expect("growth dial");
    w.take(Peer::C(c));
    w.upstream_closed("growth dial refused", u2, "connection refused");
    let got = w.take(Peer::C(c));
    assert_eq!(got[0].channel(), 2);
    assert_eq!(close_code(&got[0]), Some(reply::RESOURCE_ERROR));
}

/// B2/B11 (simulation seeds 58, 143): a broker socket that closes during the login is the
/// broker going away, not a refused login: 320, and nothing for the negative cache.
#[test]
fn socket_closed_during_login_is_not_a_refused_login() {
    let mut w = world();
    let c = w.join(hello(131_072, 0));
    let u = w.dials.pop().unwrap();
    w.broker_starts(u);
    w.upstream_closed("broker resets", u, "connection reset by peer");
    assert_eq!(
        close_code(&w.take(Peer::C(c))[0]),
        Some(reply::CONNECTION_FORCED)
    );
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, HubEvent::AuthRejected { .. })));
}

/// B2/B11 (simulation seed 924399): a client that waits for a fresh login (the last one is
/// older than the proof TTL) while an upstream is open is refused with the dial's failure when
/// that login cannot reach the broker, as a client is while the broker is unreachable; it
/// waited for nothing before (no dial left, no reconnect scheduled) until it gave up.
#[test]
fn a_client_waiting_for_a_fresh_login_that_fails_is_refused() {
    let mut w = World::new(HubConfig {
        proof_ttl: Some(Duration::from_secs(10)),
        ..HubConfig::default()
    });
    let first = w.join(hello(131_072, 0));
    w.accept_dial();
    w.take(Peer::C(first));
    w.advance(Duration::from_secs(11));
    let next = w.join(hello(131_072, 0));
    let proof = w.dials.pop().expect("a fresh login");
    assert!(w.take(Peer::C(next)).is_empty(), "waits for it");
    w.upstream_closed("the login times out", proof, "timed out connecting");
    let got = w.take(Peer::C(next));
    assert_eq!(
        got.first().and_then(close_code),
        Some(reply::CONNECTION_FORCED)
    );
    assert!(
        w.take(Peer::C(first)).is_empty(),
        "the admitted client keeps its connection"
    );
}

/// B3/B11 (simulation seed 947188): a channel open that finds every open upstream full while
/// a reconnect is scheduled waits for that reconnect, which dials for it even though an
/// upstream (admission's proof, adopted meanwhile) is open; it used to dial only when none was,
/// and the open waited forever.
#[test]
fn a_waiting_open_is_served_by_the_scheduled_reconnect() {
    let mut w = one_channel_per_upstream();
    let first = w.join(hello(131_072, 0));
    let refused = w.dials.pop().expect("a dial");
    w.upstream_closed("the dial is refused", refused, "connection refused");
    assert_eq!(
        close_code(&w.take(Peer::C(first))[0]),
        Some(reply::CONNECTION_FORCED)
    );
    let reconnect_at = w
        .events
        .iter()
        .find_map(|e| match e {
            HubEvent::ReconnectScheduled { at, .. } => Some(*at),
            _ => None,
        })
        .expect("a reconnect is scheduled");
    let one_channel = Tune {
        channel_max: 1,
        ..RABBITMQ_TUNE
    };
    let u = w.adopt(one_channel);
    let c = w.join(hello(131_072, 0));
    w.open_on(c, 1, u);
    w.client_sends(c, &[channel_open(2)]);
    assert!(w.take(Peer::C(c)).is_empty(), "channel 2 waits");
    w.advance(reconnect_at - w.now);
    let growth = w
        .dials
        .pop()
        .expect("the reconnect dials for the waiting open");
    w.broker_accepts(growth, one_channel);
    w.broker_confirms_open(growth);
    assert_eq!(w.take_first_method(Peer::C(c)), Some(ids::CHANNEL_OPEN_OK));
}

/// B3/B5 (simulation seed 17227): a client closed by the hub while one of its channel opens
/// waits for another upstream does not get that open served later for nobody.
#[test]
fn waiting_open_of_a_closed_client_is_dropped() {
    let mut w = one_channel_per_upstream();
    let c = w.join(hello(131_072, 0));
    let u1 = w.accept_dial();
    w.client_sends(c, &[channel_open(1), channel_open(2)]);
    w.broker_sends(u1, &[channel_open_ok(1)]);
    // u1 is lost: c is closed (it had a channel there) while channel 2 waits for u2.
    w.upstream_closed("u1 reset", u1, "reset");
    let u2 = w.accept_dial_with(Tune {
        channel_max: 1,
        frame_max: 131_072,
        heartbeat: 0,
    });
    assert!(
        w.take(Peer::U(u2))
            .iter()
            .all(|f| f.method_id() != Some(ids::CHANNEL_OPEN)),
        "no channel opened for a client that is gone"
    );
}

/// B10 (simulation seed 86577): heartbeats towards the broker start with TuneOk, not OpenOk.
#[test]
fn upstream_heartbeats_start_at_tune_ok() {
    let mut w = world();
    w.join(hello(131_072, 0));
    let u = w.dials.pop().unwrap();
    w.broker_starts(u);
    w.broker_sends(
        u,
        &[encode::tune(
            Tune {
                heartbeat: 2,
                ..RABBITMQ_TUNE
            },
            false,
        )],
    );
    w.take(Peer::U(u));
    w.advance(Duration::from_millis(1100));
    let got = w.take(Peer::U(u));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind(), warren_core::frame::FrameType::Heartbeat);
}

/// B5: an exclusive queue belongs to the client that declared it. Every method RabbitMQ
/// refuses on another connection's exclusive queue is refused to another client of the same
/// hub with the same 405 and text (although the broker sees one connection), without touching
/// the broker or the owner; publishing to it stays allowed.
#[test]
fn another_clients_exclusive_queue_is_locked() {
    let (mut w, owner, u) = with_channel(world(), 1);
    w.client_sends(owner, &[queue_declare(1, "rpc-reply", true)]);
    let uch = w.take(Peer::U(u)).last().map(|f| f.channel()).unwrap();
    w.broker_sends(u, &[queue_declare_ok(uch, "rpc-reply")]);
    w.take(Peer::C(owner));
    let other = w.join(hello(131_072, 0));
    w.take(Peer::C(other));
    // RabbitMQ drops CR and LF from the name in a declare, a bind, an unbind and a delete.
    let with_cr_lf = intrusions(1, "rpc-\r\nreply")
        .into_iter()
        .filter(|(what, _)| !matches!(*what, "consume" | "get" | "purge"))
        .map(|(what, frame)| (format!("{what} with CR LF"), frame));
    let attempts = intrusions(1, "rpc-reply")
        .into_iter()
        .map(|(what, frame)| (what.to_owned(), frame))
        .chain(with_cr_lf);
    let mut upstream_before = 0;
    for (what, frame) in attempts {
        w.client_sends(other, &[channel_open(1)]);
        let opened = w.take(Peer::U(u));
        if let Some(open) = opened
            .iter()
            .find(|f| f.method_id() == Some(ids::CHANNEL_OPEN))
        {
            w.broker_sends(u, &[channel_open_ok(open.channel())]);
        }
        w.take(Peer::C(other));
        upstream_before += 1;
        w.client_sends(other, &[frame]);
        let got = w.take(Peer::C(other));
        assert_eq!(got.len(), 1, "{what}: one channel.close");
        assert_eq!(got[0].method_id(), Some(ids::CHANNEL_CLOSE), "{what}");
        assert_eq!(close_code(&got[0]), Some(reply::RESOURCE_LOCKED), "{what}");
        let sent = w.take(Peer::U(u));
        assert!(
            sent.iter()
                .all(|f| f.method_id() != Some(ids::QUEUE_DECLARE)
                    && f.method_id() != Some(ids::BASIC_GET)
                    && f.method_id() != Some(ids::QUEUE_DELETE)),
            "{what}: nothing about the queue reached the broker"
        );
        let upstream_close = sent
            .iter()
            .find(|f| f.method_id() == Some(ids::CHANNEL_CLOSE))
            .map(|f| f.channel());
        if let Some(ch) = upstream_close {
            w.broker_sends(u, &[close_ok(ch)]);
        }
        w.client_sends(other, &[close_ok(1)]);
    }
    assert!(upstream_before > 0);
    // Publishing to it through the default exchange is allowed, as on RabbitMQ.
    w.client_sends(other, &[channel_open(2)]);
    let open = w
        .take(Peer::U(u))
        .into_iter()
        .find(|f| f.method_id() == Some(ids::CHANNEL_OPEN));
    if let Some(open) = open {
        w.broker_sends(u, &[channel_open_ok(open.channel())]);
    }
    w.client_sends(
        other,
        &[publish(2, "", false), header(2, 2), body(2, b"hi")],
    );
    assert!(w
        .take(Peer::C(other))
        .iter()
        .all(|f| f.method_id() != Some(ids::CHANNEL_CLOSE)));
    // The owner keeps using its queue.
    w.client_sends(owner, &[basic_get(1, "rpc-reply", false)]);
    assert!(w
        .take(Peer::U(u))
        .iter()
        .any(|f| f.method_id() == Some(ids::BASIC_GET)));
    // Once the owner leaves, the name is free.
    w.client_drops(owner);
    assert_snapshot!(w.trace());
}

/// Every method RabbitMQ checks exclusivity on, naming `queue`, on channel `ch`.
fn intrusions(ch: u16, queue: &str) -> Vec<(&'static str, Bytes)> {
    let q = |w: &mut Writer<'_>| {
        w.u16(0).shortstr(queue.as_bytes());
    };
    vec![
        ("declare", queue_declare(ch, queue, true)),
        ("passive declare", queue_declare_passive(ch, queue)),
        ("consume", consume(ch, queue.as_bytes(), b"", false, false)),
        ("get", basic_get(ch, queue, false)),
        (
            "bind",
            m(ch, ids::QUEUE_BIND, |w| {
                q(w);
                w.shortstr(b"amq.direct").shortstr(b"k").bit(false).u32(0);
            }),
        ),
        (
            "unbind",
            m(ch, ids::QUEUE_UNBIND, |w| {
                q(w);
                w.shortstr(b"amq.direct").shortstr(b"k").u32(0);
            }),
        ),
        ("purge", queue_purge(ch, queue)),
        ("delete", queue_delete(ch, queue, false)),
    ]
}

/// Whether any frame in `sent` names `queue` (a queue-class method, consume or get).
fn names_queue(sent: &[warren_core::frame::Frame], queue: &str) -> bool {
    sent.iter().any(|f| {
        f.kind() == warren_core::frame::FrameType::Method
            && f.method_id()
                .is_some_and(|id| id.class == 50 || id.class == 60)
            && f.payload()
                .windows(queue.len())
                .any(|w| w == queue.as_bytes())
    })
}

/// B5 (simulation seeds 43666, 50457, 76446, 107744, 140962, 145776): the owner of an
/// exclusive queue leaves while every channel of its upstream is taken, so the queue's
/// delete has to wait for one. Meanwhile the queue is still on the shared connection, and
/// another client of the hub must not reach it: what RabbitMQ answers with 404 once the
/// owner's connection took the queue along gets that 404 with RabbitMQ's text, a delete or
/// a new declare (which would need the old queue gone) still the lock, and nothing about
/// the queue reaches the broker. The next channel number that frees goes to the delete,
/// and only then is the name free.
#[test]
fn departed_owners_queue_is_gone_until_its_delete_goes_out() {
    let (mut w, owner, u, owner_uch) = with_exclusive_queue_in(World::new(HubConfig {
        max_channels_per_upstream: 9,
        max_upstreams: 1,
        recycling: false,
        ..HubConfig::default()
    }));
    let other = w.join(hello(131_072, 0));
    let attempts = intrusions(1, "q");
    let mut other_uchs = Vec::new();
    for ch in 1..=attempts.len() as u16 {
        other_uchs.push(w.open_on(other, ch, u));
    }
    w.take(Peer::C(other));
    // The owner leaves with all nine channels of the upstream taken.
    w.client_drops(owner);
    let sent = w.take(Peer::U(u));
    assert!(!names_queue(&sent, "q"), "no channel for the delete yet");
    for (ch, (what, frame)) in (1..).zip(attempts) {
        let frame = {
            let mut f = to_frame(&frame);
            f.set_channel(ch);
            f.freeze()
        };
        w.client_sends(other, std::slice::from_ref(&frame));
        let got = w.take(Peer::C(other));
        assert_eq!(got.len(), 1, "{what}: one channel.close");
        assert_eq!(got[0].method_id(), Some(ids::CHANNEL_CLOSE), "{what}");
        let close = close_reply(&got[0]).expect("a channel.close");
        let mid = to_frame(&frame).method_id().unwrap();
        assert_eq!(
            (close.class_id, close.method_id),
            (mid.class, mid.method),
            "{what}"
        );
        if matches!(what, "declare" | "delete") {
            assert_eq!(close.code, reply::RESOURCE_LOCKED, "{what}");
        } else {
            assert_eq!(
                (close.code, close.text.as_str()),
                (reply::NOT_FOUND, "NOT_FOUND - no queue 'q' in vhost '/'"),
                "{what}"
            );
        }
        let sent = w.take(Peer::U(u));
        assert!(
            !names_queue(&sent, "q"),
            "{what}: nothing reached the broker"
        );
        w.client_sends(other, &[close_ok(ch)]);
    }
    // The owner's channel is the first number to come back: the delete takes it.
    w.broker_sends(u, &[close_ok(owner_uch)]);
    let sent = w.take_described(Peer::U(u));
    assert_eq!(
        sent,
        [
            format!("ch{owner_uch} channel.open"),
            format!("ch{owner_uch} queue.delete \"q\""),
            format!("ch{owner_uch} channel.close 200 \"exclusive queue cleanup\""),
        ]
    );
    // Sent: the name is free, and the broker answers for it from now on.
    for uch in other_uchs {
        w.broker_sends(u, &[close_ok(uch)]);
    }
    w.open_on(other, 1, u);
    w.client_sends(other, &[basic_get(1, "q", false)]);
    assert!(w
        .take(Peer::U(u))
        .iter()
        .any(|f| f.method_id() == Some(ids::BASIC_GET)));
    assert_snapshot!(w.trace());
}

/// B5: with recycling, freed channels go to the pool instead of becoming free numbers, so
/// a departed client's queue waiting for a channel would be starved by clients taking
/// pooled channels. A channel that is pooled when the owner leaves, or fenced for the pool
/// while the delete waits, carries the delete instead (it is open and clean).
#[test]
fn a_pending_delete_takes_pooled_channels_before_any_open() {
    let config = HubConfig {
        max_channels_per_upstream: 2,
        ..HubConfig::default()
    };
    // A channel already pooled when the owner leaves.
    let (mut w, owner, u, _) = with_exclusive_queue_in(World::new(config.clone()));
    let other = w.join(hello(131_072, 0));
    let pooled = w.open_on(other, 1, u);
    w.client_sends(other, &[close(1, 200, "bye")]);
    w.broker_sends(u, &[flow_ok(pooled)]);
    w.take(Peer::U(u));
    w.client_drops(owner);
    let sent = w.take_described(Peer::U(u));
    assert!(
        sent.contains(&format!("ch{pooled} queue.delete \"q\"")),
        "the pooled channel carries the delete: {sent:?}"
    );
    assert!(
        !sent.contains(&format!("ch{pooled} channel.open")),
        "{sent:?}"
    );

    // A channel fenced for the pool while the delete waits.
    let (mut w, owner, u, _) = with_exclusive_queue_in(World::new(config));
    let other = w.join(hello(131_072, 0));
    let fenced = w.open_on(other, 1, u);
    w.client_drops(owner);
    assert!(
        !names_queue(&w.take(Peer::U(u)), "q"),
        "every number is taken"
    );
    w.client_sends(other, &[close(1, 200, "bye")]);
    w.take(Peer::U(u));
    w.broker_sends(u, &[flow_ok(fenced)]);
    let sent = w.take_described(Peer::U(u));
    assert_eq!(
        sent,
        [
            format!("ch{fenced} queue.delete \"q\""),
            format!("ch{fenced} channel.close 200 \"exclusive queue cleanup\""),
        ]
    );
    // A new client's open finds no pooled channel to take on this upstream.
    let late = w.join(hello(131_072, 0));
    w.client_sends(late, &[channel_open(1)]);
    assert!(w
        .take(Peer::U(u))
        .iter()
        .all(|f| f.method_id() != Some(ids::CHANNEL_OPEN)));
}

/// A default world with one client that declared the exclusive queue "q" on its channel 1:
/// the client, its upstream and the upstream channel.
fn with_exclusive_queue() -> (World, ClientId, UpstreamId, u16) {
    with_exclusive_queue_in(world())
}

/// [`with_exclusive_queue`] in `w`.
fn with_exclusive_queue_in(mut w: World) -> (World, ClientId, UpstreamId, u16) {
    let c = w.join(hello(131_072, 0));
    let u = w.accept_dial();
    let uch = w.open_on(c, 1, u);
    w.client_sends(c, &[queue_declare(1, "q", true)]);
    w.broker_sends(u, &[queue_declare_ok(uch, "q")]);
    w.take(Peer::C(c));
    (w, c, u, uch)
}

/// B5: the deletes on a housekeeping channel count once the broker answers its close. A
/// broker that closes the channel itself (its close crossing ours) discarded them: they go
/// out again on another channel, and the name stays locked until they have run.
#[test]
fn deletes_the_broker_discarded_are_sent_again() {
    let (mut w, owner, u, _) = with_exclusive_queue();
    w.client_drops(owner);
    let deletes_on = |sent: &[warren_core::frame::Frame]| -> Vec<u16> {
        sent.iter()
            .filter(|f| describe(f).ends_with("queue.delete \"q\""))
            .map(|f| f.channel())
            .collect()
    };
    let first = deletes_on(&w.take(Peer::U(u)));
    assert_eq!(first.len(), 1, "one housekeeping channel");
    let hk = first[0];
    w.broker_sends(
        u,
        &[
            channel_open_ok(hk),
            close(hk, 404, "NOT_FOUND - no queue 'x' in vhost '/'"),
        ],
    );
    let again = deletes_on(&w.take(Peer::U(u)));
    assert_eq!(again.len(), 1, "the delete goes out again");
    assert_ne!(again[0], hk, "on another channel");

    // Until the broker has run it, the name is locked for the next client.
    let next = w.join(hello(131_072, 0));
    w.open_on(next, 1, u);
    w.client_sends(next, &[queue_declare(1, "q", true)]);
    let answer = w.take(Peer::C(next));
    assert_eq!(answer.first().and_then(close_code), Some(405), "locked");
    w.client_sends(next, &[close_ok(1)]);
    w.take(Peer::U(u));
    w.broker_sends(u, &[close_ok(hk)]);
    let hk2 = again[0];
    w.broker_sends(
        u,
        &[channel_open_ok(hk2), queue_delete_ok(hk2), close_ok(hk2)],
    );
    w.open_on(next, 1, u);
    w.client_sends(next, &[queue_declare(1, "q", true)]);
    assert!(
        names_queue(&w.take(Peer::U(u)), "q"),
        "free once the delete ran"
    );
}

/// B5: a client's delete of its exclusive queue counts once the broker answers it. A channel
/// error on a method before it (RabbitMQ then discards the delete) leaves the queue the
/// client's, and warren deletes it when the client leaves. A delete sent with nowait goes up
/// asking for the reply, which warren keeps to itself.
#[test]
fn a_delete_the_broker_discarded_leaves_the_queue_to_warren() {
    let delete = |nowait| queue_delete(1, "q", nowait);
    for nowait in [false, true] {
        let (mut w, c, u, uch) = with_exclusive_queue();
        w.client_sends(c, &[exchange_declare(1, "x", "direct"), delete(nowait)]);
        let sent = w.take(Peer::U(u));
        let up = sent.last().expect("the delete went up");
        assert_eq!(
            up.payload().last().map(|flags| flags & 4),
            Some(0),
            "asks for the reply"
        );
        let text = "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x'";
        w.broker_sends(u, &[close(uch, 406, text)]);
        w.client_drops(c);
        assert!(
            names_queue(&w.take(Peer::U(u)), "q"),
            "nowait={nowait}: warren deletes the queue the broker did not"
        );
    }
    // The delete ran: nothing is left to delete, and a nowait client hears nothing of it.
    let (mut w, c, u, uch) = with_exclusive_queue();
    w.client_sends(c, &[delete(true)]);
    w.take(Peer::U(u));
    w.broker_sends(u, &[queue_delete_ok(uch)]);
    assert!(
        w.take(Peer::C(c)).is_empty(),
        "the reply it did not ask for"
    );
    w.client_drops(c);
    assert!(!names_queue(&w.take(Peer::U(u)), "q"));
}

/// B5: a client can delete its exclusive queue by any name RabbitMQ reads as the queue's: the
/// channel's shortcut (the empty name, for the queue it declared last) or the name with CR and
/// LF in it (RabbitMQ drops them). Once the broker answers, the name is free for another
/// client and warren has nothing left to delete. A shortcut naming another queue (declared
/// after the exclusive one) leaves the claim as it was.
#[test]
fn a_client_deletes_its_queue_by_the_shortcut_or_a_name_with_cr_lf() {
    let delete = |queue| queue_delete(1, queue, false);
    for name in ["", "q\r\n", "\nq"] {
        let (mut w, c, u, uch) = with_exclusive_queue();
        w.client_sends(c, &[delete(name)]);
        w.take(Peer::U(u));
        w.broker_sends(u, &[queue_delete_ok(uch)]);
        let other = w.join(hello(131_072, 0));
        w.open_on(other, 1, u);
        w.client_sends(other, &[queue_declare(1, "q", true)]);
        assert!(
            names_queue(&w.take(Peer::U(u)), "q"),
            "{name:?}: the name is free"
        );
        w.client_drops(c);
        assert!(
            !names_queue(&w.take(Peer::U(u)), "q"),
            "{name:?}: nothing left to delete"
        );
    }
    let (mut w, c, u, uch) = with_exclusive_queue();
    w.client_sends(c, &[queue_declare(1, "", false), delete("")]);
    w.take(Peer::U(u));
    w.broker_sends(
        u,
        &[queue_declare_ok(uch, "amq.gen-1"), queue_delete_ok(uch)],
    );
    w.client_drops(c);
    assert!(
        names_queue(&w.take(Peer::U(u)), "q"),
        "the shortcut named another queue: warren deletes q"
    );
}

/// B10: a client waiting in its hub for the first upstream to open (its `OpenOk` waits on
/// the broker) hears heartbeats at its negotiated interval meanwhile.
#[test]
fn a_client_waiting_for_its_first_upstream_hears_heartbeats() {
    let mut w = world();
    let c = w.join(hello(131_072, 1));
    assert!(w.take(Peer::C(c)).is_empty());
    w.advance(Duration::from_millis(1600));
    let got = w.take(Peer::C(c));
    assert_eq!(got.len(), 3, "one every half interval");
    assert!(got
        .iter()
        .all(|f| f.kind() == warren_core::frame::FrameType::Heartbeat));
    w.accept_dial();
    assert_eq!(
        w.take_first_method(Peer::C(c)),
        Some(ids::CONNECTION_OPEN_OK)
    );
}

/// B17: with `spread`, a hub that needs several broker connections puts each new one on the
/// node it uses least; with `fill`, every dial starts at the node that answered last.
#[test]
fn spread_dials_each_new_upstream_on_the_least_used_node() {
    for placement in [Placement::Fill, Placement::Spread] {
        let mut w = World::new(HubConfig {
            max_channels_per_upstream: 2,
            nodes: 3,
            placement,
            recycling: false,
            ..HubConfig::default()
        });
        let c = w.join(hello(131_072, 0));
        let mut firsts = Vec::new();
        let u = w.accept_dial();
        firsts.push(w.dial_orders[&u][0]);
        for ch in 1..=6u16 {
            w.client_sends(c, &[channel_open(ch)]);
            if let Some(&u) = w.dials.last() {
                firsts.push(w.dial_orders[&u][0]);
                w.accept_dial();
            }
        }
        let expected: &[usize] = match placement {
            Placement::Fill => &[0, 0, 0],
            Placement::Spread => &[0, 1, 2],
        };
        assert_eq!(firsts, expected, "{placement:?}");
    }
}

/// B16: a reload that turns recycling off closes the pooled channels at once.
#[test]
fn a_reload_without_recycling_empties_the_pool() {
    let (mut w, c, u) = with_channel(world(), 1);
    w.client_sends(c, &[close(1, 200, "")]);
    w.take(Peer::U(u));
    w.broker_sends(u, &[flow_ok(1)]);
    assert_eq!(w.hub.pooled_channels(), 1);
    w.input(
        "reload",
        warren_core::hub::Input::Reconfigure(Box::new(HubConfig {
            recycling: false,
            ..HubConfig::default()
        })),
    );
    assert_eq!(w.hub.pooled_channels(), 0);
    let closes = w.take_described(Peer::U(u));
    assert_eq!(
        closes,
        ["ch1 channel.close 200 \"pool shrunk by a reload\""]
    );
}

/// What RabbitMQ closes a connection with when an open passes its user's channel limit
/// (`rabbitmqctl set_user_limits guest '{"max-channels": 2}'`).
const USER_CHANNEL_LIMIT: &str = "NOT_ALLOWED - number of channels opened for user 'guest' has \
                                  reached the maximum allowed user limit of (2)";

/// B7: a user's channel limit. RabbitMQ closes the connection whose open passes it; through
/// warren that connection is shared, so the hub learns the limit from the first such close and
/// from then on refuses the client that would pass it with the same close, keeping the
/// broker connection and the other clients on it. After five minutes it trusts the broker
/// again (the limit may have been raised).
#[test]
fn a_users_channel_limit_is_learnt_and_then_kept_per_client() {
    let w = World::new(HubConfig {
        recycling: false,
        upstream_heartbeat: 0,
        ..HubConfig::default()
    });
    let (mut w, c1, u) = with_channel_tuned(w, 1, NO_HEARTBEATS);
    let c2 = w.join(hello(131_072, 0));
    w.take(Peer::C(c2));
    // The user's other connections hold channels too: c1's second open passes the limit.
    w.client_sends(c1, &[channel_open(2)]);
    w.take(Peer::U(u));
    w.broker_sends(u, &[close(0, 530, USER_CHANNEL_LIMIT)]);
    assert_eq!(close_code(&w.take(Peer::C(c1))[0]), Some(530));
    w.advance(Duration::from_secs(1));
    let u2 = w.accept_dial_with(NO_HEARTBEATS);
    let c3 = w.join(hello(131_072, 0));
    w.open_on(c2, 1, u2);
    w.open_on(c3, 1, u2);
    // At the limit: c2's next open is refused as RabbitMQ refuses it, by warren.
    w.client_sends(c2, &[channel_open(2)]);
    let got = w.take(Peer::C(c2));
    let refusal = close_reply(&got[0]).expect("c2 is closed");
    assert_eq!(
        (refusal.code, refusal.text.as_str()),
        (530, USER_CHANNEL_LIMIT)
    );
    assert_eq!((refusal.class_id, refusal.method_id), (0, 0));
    assert_eq!(
        w.take_first_method(Peer::U(u2)),
        Some(ids::CHANNEL_CLOSE),
        "only c2's channel 1 is closed upstream, no channel is opened"
    );
    w.broker_sends(u2, &[close_ok(1)]);
    // c3 and the broker connection stay; c3's channel works.
    w.broker_sends(u2, &[deliver(2, 1), header(2, 3), body(2, b"hi!")]);
    assert_eq!(w.take(Peer::C(c3)).last().unwrap().payload(), b"hi!");
    assert_eq!(w.hub.upstream_count(), 1);
    // Five minutes on, an open past the learnt limit goes to the broker again.
    w.advance(Duration::from_secs(301));
    w.client_sends(c3, &[channel_open(2)]);
    assert_eq!(w.take_first_method(Peer::U(u2)), Some(ids::CHANNEL_OPEN));
    assert_snapshot!(w.trace());
}
