//! Exchange types warren does not know (B7): the hub asks the broker on a probe connection
//! of its own before a client's declare reaches the shared one, and parks the client's
//! channel meanwhile. Driven through [`warren_testkit::hub_world`] like `hub_scenarios.rs`.

use insta::assert_snapshot;
use std::time::Duration;
use warren_core::frame::Frame;
use warren_core::hub::HubConfig;
use warren_core::method::{self, encode, ids, Close, Method, MethodId};
use warren_testkit::hub_world::*;

/// RabbitMQ's answer to a probe for a type it knows: the default exchange is not declarable.
const DEFAULT_EXCHANGE: &str = "ACCESS_REFUSED - operation not permitted on the default exchange";

/// RabbitMQ's close of a connection that declared an exchange of a type it does not know.
const UNKNOWN_TYPE: &str = "COMMAND_INVALID - unknown exchange type 'x-nope'";

/// A close as RabbitMQ sends it in answer to an `exchange.declare`.
fn declare_refused(ch: u16, code: u16, text: &str) -> bytes::Bytes {
    let close = Close {
        code,
        text: text.into(),
        class_id: 40,
        method_id: 10,
    };
    encode::close(ch, &close)
}

/// The methods among `frames`, in order.
fn methods(frames: &[Frame]) -> Vec<MethodId> {
    frames.iter().filter_map(Frame::method_id).collect()
}

/// The hub's probes so far by answer, as its metrics count them: known, unknown, failed.
fn probes(w: &World) -> (u64, u64, u64) {
    let s = w.hub.stats();
    (s.probes_known, s.probes_unknown, s.probes_failed)
}

/// `queue.bind` of queue `q` to exchange `x`.
fn queue_bind(ch: u16, q: &str, x: &str) -> bytes::Bytes {
    m(ch, ids::QUEUE_BIND, |w| {
        w.u16(0)
            .shortstr(q.as_bytes())
            .shortstr(x.as_bytes())
            .shortstr(b"1")
            .bit(false)
            .u32(0);
    })
}

/// A plugin's type: the client's declare and the bind behind it wait for the probe, the
/// neighbour's traffic does not, and once the broker says it knows the type they go on in
/// order; a later declare of it goes straight on.
#[test]
fn a_plugin_type_is_asked_of_the_broker_then_forwarded_in_order() {
    let (mut w, c1, c2, u) = neighbours(HubConfig::default());
    w.client_sends(
        c1,
        &[
            exchange_declare(1, "hash", "x-consistent-hash"),
            queue_bind(1, "q", "hash"),
        ],
    );
    assert!(
        w.take(Peer::U(u)).is_empty(),
        "nothing reaches the shared connection"
    );
    let probe = w.accept_dial();
    let asked = w.take(Peer::U(probe));
    assert_eq!(
        methods(&asked),
        [
            ids::CONNECTION_START_OK,
            ids::CONNECTION_TUNE_OK,
            ids::CONNECTION_OPEN,
            ids::CHANNEL_OPEN,
            ids::EXCHANGE_DECLARE
        ]
    );
    // The broker's operators see what the connection is for.
    let Ok(Method::StartOk(start_ok)) = method::decode(asked[0].payload()) else {
        panic!("a start-ok");
    };
    let name = start_ok.client_properties.get_str("connection_name");
    assert!(
        name.is_some_and(|n| n.ends_with("(asking about an exchange type)")),
        "the probe's connection name"
    );
    w.client_sends(c2, &[publish(1, "", false), header(1, 1), body(1, b"x")]);
    assert_eq!(w.take(Peer::U(u)).len(), 3, "the neighbour is not held up");
    w.broker_sends(
        probe,
        &[
            channel_open_ok(1),
            declare_refused(1, 403, DEFAULT_EXCHANGE),
        ],
    );
    assert_eq!(
        methods(&w.take(Peer::U(probe))),
        [ids::CHANNEL_CLOSE_OK, ids::CONNECTION_CLOSE]
    );
    w.broker_sends(probe, &[close_ok(0)]);
    assert_eq!(
        methods(&w.take(Peer::U(u))),
        [ids::EXCHANGE_DECLARE, ids::QUEUE_BIND]
    );
    assert_eq!(w.hub.upstream_count(), 1, "the probe is gone");
    w.client_sends(c2, &[exchange_declare(1, "hash2", "x-consistent-hash")]);
    assert_eq!(w.take_first_method(Peer::U(u)), Some(ids::EXCHANGE_DECLARE));
    assert_eq!(
        w.hub.upstream_count(),
        1,
        "a learnt type is not asked again"
    );
    assert!(w.take(Peer::C(c1)).is_empty() && w.take(Peer::C(c2)).is_empty());
    assert_snapshot!(w.trace());
}

/// A type the broker does not know: the probe's connection takes the broker's 503, the
/// client gets that close as RabbitMQ would send it, the neighbour and the shared connection
/// see nothing; the answer is kept for five minutes, then asked again.
#[test]
fn an_unknown_type_closes_only_the_client_that_declared_it() {
    let (mut w, c1, c2, u) = neighbours(HubConfig::default());
    w.client_sends(c1, &[exchange_declare(1, "x", "x-nope")]);
    let probe = w.accept_dial();
    w.take(Peer::U(probe));
    w.broker_sends(
        probe,
        &[channel_open_ok(1), declare_refused(0, 503, UNKNOWN_TYPE)],
    );
    assert_eq!(methods(&w.take(Peer::U(probe))), [ids::CONNECTION_CLOSE_OK]);
    let refusal = w.take_close(c1);
    assert_eq!(
        (
            refusal.code,
            refusal.text.as_str(),
            refusal.class_id,
            refusal.method_id
        ),
        (503, UNKNOWN_TYPE, 40, 10)
    );
    assert!(w
        .take(Peer::U(u))
        .iter()
        .all(|f| f.method_id() == Some(ids::CHANNEL_CLOSE)));
    w.client_sends(c2, &[exchange_declare(1, "x", "x-nope")]);
    assert_eq!(w.take_close(c2).text, UNKNOWN_TYPE);
    assert_eq!(
        w.hub.upstream_count(),
        1,
        "a learnt answer is not asked again"
    );
    assert_eq!(probes(&w), (0, 1, 0));

    // Five minutes on, the broker is asked again (a plugin may have been enabled).
    w.advance(Duration::from_secs(301));
    let c3 = w.join(hello(131_072, 0));
    w.take(Peer::C(c3));
    w.open_on(c3, 1, u);
    w.client_sends(c3, &[exchange_declare(1, "x", "x-nope")]);
    assert_eq!(w.hub.upstream_count(), 2, "a new probe is dialled");
    assert_snapshot!(w.trace());
}

/// A probe that cannot reach the broker closes the client whose declare waited on it, and
/// only that client; one that left meanwhile is simply forgotten.
#[test]
fn a_probe_without_an_answer_closes_the_waiting_client() {
    let (mut w, c1, c2, u) = neighbours(HubConfig::default());
    w.client_sends(c1, &[exchange_declare(1, "x", "x-other")]);
    w.client_sends(c2, &[exchange_declare(1, "y", "x-other")]);
    w.client_drops(c2);
    let probe = w.pending_dial().expect("a probe is dialled");
    w.upstream_closed("probe", probe, "connection refused");
    let refusal = w.take_close(c1);
    assert_eq!(probes(&w), (0, 0, 1));
    assert_eq!(refusal.code, 320);
    assert!(
        refusal.text.contains("exchange type 'x-other'"),
        "{}",
        refusal.text
    );
    assert!(w
        .take(Peer::U(u))
        .iter()
        .all(|f| f.method_id() == Some(ids::CHANNEL_CLOSE)));
    assert_snapshot!(w.trace());
}

/// One probe at a time: a declare of a second type waits for the first probe to end, then
/// asks on a probe of its own.
#[test]
fn probes_run_one_at_a_time() {
    let (mut w, c1, c2, u) = neighbours(HubConfig::default());
    w.client_sends(c1, &[exchange_declare(1, "a", "x-a")]);
    w.client_sends(c2, &[exchange_declare(1, "b", "x-b")]);
    assert_eq!(w.hub.upstream_count(), 2, "one probe, for x-a");
    let first = w.accept_dial();
    w.take(Peer::U(first));
    w.broker_sends(
        first,
        &[
            channel_open_ok(1),
            declare_refused(1, 403, DEFAULT_EXCHANGE),
        ],
    );
    assert_eq!(w.take_first_method(Peer::U(u)), Some(ids::EXCHANGE_DECLARE));
    assert_eq!(probes(&w), (1, 0, 0));
    let second = w.pending_dial().expect("x-b is asked next");
    assert_ne!(first, second);
    assert!(w.take(Peer::C(c2)).is_empty(), "c2 still waits");
    assert_snapshot!(w.trace());
}

/// Parked frames count against the client's buffer bound: a client that keeps publishing
/// behind a parked declare is closed (506) once past it, and its frames are dropped.
#[test]
fn parked_frames_are_bounded_like_unfinished_publishes() {
    let (mut w, c1, c2, u) = neighbours(HubConfig {
        client_buffer_limit: 256,
        ..HubConfig::default()
    });
    w.client_sends(c1, &[exchange_declare(1, "a", "x-a")]);
    let publish_frames = [publish(1, "a", false), header(1, 100), body(1, &[7; 100])];
    w.client_sends(c1, &publish_frames);
    assert!(w.take(Peer::C(c1)).is_empty(), "within the bound, c1 waits");
    w.client_sends(c1, &publish_frames);
    assert_eq!(w.take_close(c1).code, 506);
    let probe = w.accept_dial();
    w.take(Peer::U(probe));
    w.broker_sends(
        probe,
        &[
            channel_open_ok(1),
            declare_refused(1, 403, DEFAULT_EXCHANGE),
        ],
    );
    assert!(
        (w.take(Peer::U(u)).iter()).all(|f| f.method_id() == Some(ids::CHANNEL_CLOSE)),
        "nothing of c1's reaches the broker"
    );
    assert!(w.take(Peer::C(c2)).is_empty());
}

/// A probe whose broker never answers, or answers what no RabbitMQ would, gives up: the
/// waiting client is closed with 320 and why, and an overdue probe says goodbye (close 200)
/// before its socket closes.
#[test]
fn a_probe_that_gets_no_answer_or_a_strange_one_gives_up() {
    let (mut w, c1, c2, _) = neighbours(HubConfig::default());
    w.client_sends(c1, &[exchange_declare(1, "x", "x-silent")]);
    let probe = w.accept_dial();
    w.take(Peer::U(probe));
    w.advance(HubConfig::default().connect_timeout);
    let refusal = w.take_close(c1);
    assert_eq!(refusal.code, 320);
    assert!(
        refusal.text.ends_with("the broker did not answer"),
        "{}",
        refusal.text
    );
    let bye = w.take(Peer::U(probe));
    assert_eq!(close_reply(&bye[0]).map(|c| c.code), Some(200));

    w.client_sends(c2, &[exchange_declare(1, "y", "x-strange")]);
    let probe = w.accept_dial();
    w.take(Peer::U(probe));
    w.broker_sends(probe, &[queue_declare_ok(1, "what")]);
    let refusal = w.take_close(c2);
    assert_eq!(refusal.code, 320);
    assert!(
        refusal.text.ends_with("unexpected answer to a probe"),
        "{}",
        refusal.text
    );
}
