//! Stream and quorum queues (B7): the methods RabbitMQ 3.10 answers with a connection error
//! on them close only the client that sends them, once the hub knows the queue's type.
//! Driven through [`warren_testkit::hub_world`] like `hub_scenarios.rs`.

use bytes::Bytes;
use insta::assert_snapshot;
use std::time::Duration;
use warren_core::hub::{ClientId, HubConfig, UpstreamId};
use warren_core::method::{ids, Close};
use warren_testkit::hub_world::*;

/// A client `c1` that declared stream `s` and quorum queue `q` (the broker confirmed both)
/// and a neighbour `c2` on the same upstream, without heartbeats.
fn declared() -> (World, ClientId, ClientId, UpstreamId) {
    let (mut w, c1, c2, u) = neighbours(HubConfig::default());
    w.client_sends(
        c1,
        &[
            typed_declare(1, "s", "stream"),
            typed_declare(1, "q", "quorum"),
        ],
    );
    w.take(Peer::U(u));
    w.broker_sends(u, &[queue_declare_ok(1, "s"), queue_declare_ok(1, "q")]);
    w.take(Peer::C(c1));
    (w, c1, c2, u)
}

/// A close's code, text and cause (class and method).
fn said(close: &Close) -> (u16, &str, (u16, u16)) {
    (
        close.code,
        close.text.as_str(),
        (close.class_id, close.method_id),
    )
}

/// What RabbitMQ 3.10 says, for each misuse: checked against the broker in
/// `tests/tests/queue_types.rs`.
const GET: &str =
    "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 's' in vhost '/'";
const NO_ACK: &str = "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream \
                      queues queue 's' in vhost '/'";
const PURGE: &str =
    "NOT_IMPLEMENTED - queue.purge not supported by stream queues queue 's' in vhost '/'";
const GLOBAL_QOS: &str = "NOT_IMPLEMENTED - queue 'q' in vhost '/' does not support global qos";

/// Each misuse closes the client that sends it with RabbitMQ's close; nothing reaches the
/// broker connection, and the neighbour's channel carries on. What is allowed goes through.
#[test]
fn misuses_of_known_streams_and_quorum_queues_close_only_their_client() {
    let cases = [
        ("get", vec![basic_get(1, "s", false)], GET, (60, 70)),
        (
            "consume without acks, under a prefetch",
            vec![qos(1, 10, false), consume(1, b"s", b"t", true, false)],
            NO_ACK,
            (60, 20),
        ),
        ("purge", vec![queue_purge(1, "s")], PURGE, (50, 30)),
        (
            "consume under a global qos",
            vec![qos(1, 10, true), consume(1, b"q", b"t", false, false)],
            GLOBAL_QOS,
            (60, 20),
        ),
        (
            "the channel's last queue, by the empty name",
            vec![typed_declare(1, "s", "stream"), basic_get(1, "", false)],
            GET,
            (60, 70),
        ),
    ];
    for (name, frames, text, cause) in cases {
        let (mut w, _, c2, u) = declared();
        let c3 = w.join(hello(131_072, 0));
        w.take(Peer::C(c3));
        w.open_on(c3, 1, u);
        w.client_sends(c3, &frames);
        assert_eq!(said(&w.take_close(c3)), (540, text, cause), "{name}");
        let upstream = w.take(Peer::U(u));
        let ids_sent: Vec<_> = upstream.iter().filter_map(|f| f.method_id()).collect();
        assert!(
            !ids_sent
                .iter()
                .any(|m| [ids::BASIC_GET, ids::BASIC_CONSUME, ids::QUEUE_PURGE].contains(m)),
            "{name}: {ids_sent:?}"
        );
        w.client_sends(c2, &[basic_get(1, "q", false)]);
        assert_eq!(
            w.take_first_method(Peer::U(u)),
            Some(ids::BASIC_GET),
            "{name}"
        );
    }
}

/// A stream consume whose `x-stream-offset` is no offset crashes RabbitMQ's channel (541,
/// naming no method): a string that does not start with a digit at once, any other such
/// value after the consume's other checks, so the prefetch's 406 (the broker's to send) and
/// the no-ack or global-qos 540 come first. Offsets RabbitMQ takes, and ages it refuses on
/// the channel, go to the broker.
#[test]
fn a_stream_consume_from_no_offset_closes_only_its_client_as_rabbitmq_does() {
    use warren_core::table::{longstr, FieldValue};
    const CRASH: (u16, &str, (u16, u16)) = (541, "INTERNAL_ERROR", (0, 0));
    let per_consumer = || qos(1, 10, false);
    let bogus = || offset_consume(1, b"s", b"t", longstr("bogus"));
    let boolean = || offset_consume(1, b"s", b"t", FieldValue::Bool(true));
    let global = (
        540,
        "NOT_IMPLEMENTED - queue 's' in vhost '/' does not support global qos",
    );
    let refused = [
        ("a word, without a prefetch", vec![bogus()], CRASH),
        (
            "an empty string",
            vec![offset_consume(1, b"s", b"t", longstr(""))],
            CRASH,
        ),
        (
            "a boolean, under a prefetch",
            vec![per_consumer(), boolean()],
            CRASH,
        ),
        (
            "a table, under a prefetch",
            vec![
                per_consumer(),
                offset_consume(1, b"s", b"t", FieldValue::Table(Default::default())),
            ],
            CRASH,
        ),
        (
            "a boolean under a global qos too",
            vec![per_consumer(), qos(1, 10, true), boolean()],
            (global.0, global.1, (60, 20)),
        ),
        (
            "the first offset under a global qos too",
            vec![
                per_consumer(),
                qos(1, 10, true),
                offset_consume(1, b"s", b"t", longstr("first")),
            ],
            (global.0, global.1, (60, 20)),
        ),
    ];
    for (name, frames, (code, text, cause)) in refused {
        let (mut w, c1, c2, u) = declared();
        w.client_sends(c1, &frames);
        assert_eq!(said(&w.take_close(c1)), (code, text, cause), "{name}");
        let upstream = w.take(Peer::U(u));
        assert!(
            !(upstream.iter()).any(|f| f.method_id() == Some(ids::BASIC_CONSUME)),
            "{name}: the consume reached the broker"
        );
        w.client_sends(c2, &[basic_get(1, "q", false)]);
        assert_eq!(
            w.take_first_method(Peer::U(u)),
            Some(ids::BASIC_GET),
            "{name}"
        );
    }
    let forwarded = [
        // Without a per-consumer prefetch: the broker's 406 on the channel.
        vec![boolean()],
        vec![per_consumer(), offset_consume(1, b"s", b"t", longstr("7D"))],
        vec![
            per_consumer(),
            offset_consume(1, b"s", b"t", FieldValue::I64(3)),
        ],
        // Ages RabbitMQ refuses on the channel (406): zero, and a unit it does not know.
        vec![per_consumer(), offset_consume(1, b"s", b"t", longstr("0s"))],
        vec![per_consumer(), offset_consume(1, b"s", b"t", longstr("1d"))],
    ];
    for frames in forwarded {
        let (mut w, c1, _, u) = declared();
        w.client_sends(c1, &frames);
        assert_eq!(w.take(Peer::U(u)).len(), frames.len(), "{frames:?}");
        assert!(w.take(Peer::C(c1)).is_empty());
    }
}

/// What these queues take goes on: acknowledged consumes of a stream (and a no-ack one
/// without a prefetch, which RabbitMQ answers on the channel), a get from and a consume on a
/// quorum queue after a later per-consumer qos replaced the global one.
#[test]
fn what_streams_and_quorum_queues_take_goes_through() {
    let (mut w, c1, _, u) = declared();
    let allowed = [
        // Without a per-consumer prefetch RabbitMQ refuses any stream consumer with a 406 on
        // the channel, before it looks at acks: the broker answers that one.
        vec![consume(1, b"s", b"n", true, false)],
        vec![qos(1, 10, false), consume(1, b"s", b"a", false, false)],
        vec![basic_get(1, "q", false), queue_purge(1, "q")],
        vec![
            qos(1, 10, true),
            qos(1, 5, false),
            consume(1, b"q", b"b", false, false),
        ],
        vec![
            qos(1, 10, true),
            qos(1, 0, true),
            consume(1, b"q", b"c", true, false),
        ],
    ];
    for frames in allowed {
        w.client_sends(c1, &frames);
        assert_eq!(w.take(Peer::U(u)).len(), frames.len());
        assert!(w.take(Peer::C(c1)).is_empty());
    }
}

/// A declare the broker refused teaches nothing; a stream the hub never saw declared is
/// learnt from the broker's own close, which costs that broker connection once; what is
/// learnt is kept five minutes.
#[test]
fn queue_types_are_learnt_from_confirmed_declares_and_from_the_brokers_close() {
    let (mut w, c1, c2, u) = declared();
    // Refused (the queue exists with another type): nothing is learnt about "x".
    w.client_sends(c1, &[typed_declare(1, "x", "stream")]);
    w.broker_sends(
        u,
        &[close(1, 406, "PRECONDITION_FAILED - inequivalent arg")],
    );
    w.client_sends(c1, &[close_ok(1)]);
    w.take(Peer::U(u));
    w.client_sends(c2, &[basic_get(1, "x", false)]);
    assert_eq!(w.take_first_method(Peer::U(u)), Some(ids::BASIC_GET));
    // "y" was declared elsewhere: the first get costs the broker connection, then the hub
    // knows, for five minutes.
    let text = "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 'y' in vhost '/'";
    w.client_sends(c2, &[basic_get(1, "y", false)]);
    w.take(Peer::U(u));
    w.broker_sends(u, &[close(0, 540, text)]);
    assert_eq!(w.take_close(c2).text, text);
    w.advance(Duration::from_secs(2));
    let c3 = w.join(hello(131_072, 0));
    let u2 = w.accept_dial_with(NO_HEARTBEATS);
    w.take(Peer::C(c3));
    w.open_on(c3, 1, u2);
    w.client_sends(c3, &[basic_get(1, "y", false)]);
    assert_eq!(w.take_close(c3).text, text);
    w.advance(Duration::from_secs(300));
    let c4 = w.join(hello(131_072, 0));
    w.take(Peer::C(c4));
    w.open_on(c4, 1, u2);
    w.client_sends(c4, &[basic_get(1, "y", false)]);
    assert_eq!(w.take_first_method(Peer::U(u2)), Some(ids::BASIC_GET));
    assert_snapshot!(w.trace());
}

/// The broker's `basic.deliver` of delivery `tag` to consumer `consumer`.
fn deliver_to(ch: u16, consumer: &[u8], tag: u64) -> Bytes {
    m(ch, ids::BASIC_DELIVER, |w| {
        w.shortstr(consumer)
            .u64(tag)
            .bit(false)
            .shortstr(b"")
            .shortstr(b"q");
    })
}

/// `basic.nack` (`multiple`, requeue), `basic.reject` (requeue) or `basic.ack` of `tag`.
fn settle(ch: u16, id: warren_core::method::MethodId, tag: u64, multiple: bool) -> Bytes {
    m(ch, id, |w| {
        w.u64(tag);
        if id != ids::BASIC_REJECT {
            w.bit(multiple);
        }
        if id != ids::BASIC_ACK {
            w.bit(true);
        }
    })
}

/// A client of [`declared`]'s world consuming stream `s` (its tag left to the broker, who
/// names it `amq.ctag-s`) and classic queue `c` on channel 1, with delivery 1 from the
/// stream and 2 from the classic queue out: the world, the client and the upstream.
fn consuming_a_stream() -> (World, ClientId, UpstreamId) {
    let (mut w, _, _, u) = declared();
    let c = w.join(hello(131_072, 0));
    w.take(Peer::C(c));
    let uch = w.open_on(c, 1, u);
    w.client_sends(
        c,
        &[
            qos(1, 10, false),
            consume(1, b"s", b"", false, false),
            consume(1, b"c", b"classic", false, false),
        ],
    );
    let consume_ok = |tag: &[u8]| {
        m(uch, ids::BASIC_CONSUME_OK, |w| {
            w.shortstr(tag);
        })
    };
    w.broker_sends(u, &[consume_ok(b"amq.ctag-s"), consume_ok(b"classic")]);
    w.broker_sends(
        u,
        &[
            deliver_to(uch, b"amq.ctag-s", 1),
            header(uch, 1),
            body(uch, b"s"),
            deliver_to(uch, b"classic", 2),
            header(uch, 1),
            body(uch, b"c"),
        ],
    );
    w.take(Peer::C(c));
    w.take(Peer::U(u));
    (w, c, u)
}

/// A stream's deliveries are acked, not nacked: a nack or a reject that reaches one closes
/// the client with RabbitMQ's 540, a recover while one is out with its 541; the classic
/// queue's delivery on the same channel can be nacked, and once the stream's is acked a
/// nack of everything goes through.
#[test]
fn a_streams_deliveries_can_only_be_acked() {
    let nack_text = "NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream \
                     queues queue 's' in vhost '/'";
    let refused = [
        (settle(1, ids::BASIC_NACK, 1, false), nack_text, (60, 120)),
        (settle(1, ids::BASIC_REJECT, 1, false), nack_text, (60, 90)),
        (settle(1, ids::BASIC_NACK, 0, true), nack_text, (60, 120)),
        // The broker's channel crashes: its close names no method.
        (
            m(1, ids::BASIC_RECOVER, |w| {
                w.bit(true);
            }),
            "INTERNAL_ERROR",
            (0, 0),
        ),
    ];
    for (frame, text, cause) in refused {
        let (mut w, c, u) = consuming_a_stream();
        w.client_sends(c, &[settle(1, ids::BASIC_NACK, 2, false), frame]);
        assert_eq!(
            w.take_first_method(Peer::U(u)),
            Some(ids::BASIC_NACK),
            "{text}"
        );
        let close = w.take_close(c);
        assert_eq!(
            (close.text.as_str(), (close.class_id, close.method_id)),
            (text, cause)
        );
    }
    let (mut w, c, u) = consuming_a_stream();
    w.client_sends(
        c,
        &[
            settle(1, ids::BASIC_ACK, 1, false),
            settle(1, ids::BASIC_NACK, 0, true),
            m(1, ids::BASIC_RECOVER, |w| {
                w.bit(true);
            }),
        ],
    );
    assert_eq!(w.take(Peer::U(u)).len(), 3);
    assert!(w.take(Peer::C(c)).is_empty());
}

/// A delete through the hub forgets the queue's type (a queue of that name declared later
/// may be classic); a typed declare whose declare-ok comes after its client left still
/// teaches the type.
#[test]
fn a_delete_forgets_a_type_and_a_late_declare_ok_still_teaches_it() {
    let (mut w, c1, c2, u) = declared();
    w.client_sends(c1, &[queue_delete(1, "s", false)]);
    w.take(Peer::U(u));
    w.client_sends(c2, &[basic_get(1, "s", false)]);
    assert_eq!(w.take_first_method(Peer::U(u)), Some(ids::BASIC_GET));

    let c3 = w.join(hello(131_072, 0));
    w.take(Peer::C(c3));
    let uch = w.open_on(c3, 1, u);
    w.client_sends(c3, &[typed_declare(1, "late", "stream")]);
    w.client_drops(c3);
    w.take(Peer::U(u));
    w.broker_sends(u, &[queue_declare_ok(uch, "late")]);
    w.client_sends(c2, &[queue_purge(1, "late")]);
    assert_eq!(w.take_close(c2).code, 540);
}
