//! The fake RabbitMQ answers as RabbitMQ 3.10 does where warren's promises rest on the
//! answer (each case checked against it with pika).
//!
//! It reads a queue name as RabbitMQ does: the empty name stands for the queue the channel
//! declared last, and a declare, a bind and a delete drop CR and LF from the name. warren's
//! exclusive-queue locks (B5) rest on the same reading, so the simulation and the fuzz
//! target must see it.
//!
//! It judges an `exchange.declare` in RabbitMQ's order: the type first (an unknown one closes
//! the connection with 503), then the default exchange (403 on the channel). warren asks the
//! broker about a type it does not know by that order (B7), so the simulation and the fuzz
//! target must see it too.
//!
//! It knows stream and quorum queues (`x-queue-type`) as far as RabbitMQ 3.10 closes a
//! *connection* for their misuse (B7): warren learns types from the confirmed declares and
//! the broker's own close texts, so these must be RabbitMQ's, in RabbitMQ's order.

use bytes::{Bytes, BytesMut};
use std::time::Instant;
use warren_core::frame::{Frame, FrameDecoder, PROTOCOL_HEADER};
use warren_core::method::{encode, ids, StartOk, Tune};
use warren_core::table::FieldTable;
use warren_testkit::broker::{Broker, BrokerConfig, BrokerOutput, ConnId};
use warren_testkit::hub_world::{
    basic_get, body, channel_open, close_ok, close_reply, exchange_declare, header, m, qos,
    queue_declare, queue_declare_passive, queue_delete, queue_purge, typed_declare, RABBITMQ_TUNE,
};
use warren_testkit::trace::describe;

/// One connection to the broker, past its handshake.
struct Session {
    broker: Broker,
    conn: ConnId,
    now: Instant,
}

impl Session {
    fn open() -> Self {
        Session::open_with(BrokerConfig::default())
    }

    fn open_with(config: BrokerConfig) -> Self {
        Session::join(Broker::new(config), Instant::now())
    }

    /// A new connection to `broker` at `now`, past its handshake.
    fn join(mut broker: Broker, now: Instant) -> Self {
        let conn = broker.accept(now);
        let tune = Tune {
            heartbeat: 0,
            ..RABBITMQ_TUNE
        };
        let start_ok = encode::start_ok(&StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: b"\0guest\0guest".to_vec(),
            locale: "en_US".into(),
        });
        let mut s = Session { broker, conn, now };
        for step in [
            Bytes::from_static(PROTOCOL_HEADER),
            start_ok,
            encode::tune(tune, true),
            encode::open("/"),
        ] {
            s.send(&[step]);
        }
        s
    }

    /// What the broker answers to `frames`, one line per frame.
    fn send(&mut self, frames: &[Bytes]) -> Vec<String> {
        self.answers(frames).iter().map(describe).collect()
    }

    /// What the broker answers to `frames`.
    fn answers(&mut self, frames: &[Bytes]) -> Vec<Frame> {
        for f in frames {
            self.broker.handle_bytes(self.now, self.conn, f);
        }
        let mut out = BytesMut::new();
        while let Some(o) = self.broker.poll_output() {
            if let BrokerOutput::Send { data, .. } = o {
                out.extend_from_slice(&data);
            }
        }
        let decoder = FrameDecoder::new(u32::MAX);
        std::iter::from_fn(|| decoder.decode(&mut out).ok().flatten()).collect()
    }
}

#[test]
fn the_empty_name_is_the_channels_last_declared_queue() {
    let mut s = Session::open();
    s.send(&[channel_open(1), channel_open(2)]);
    assert_eq!(
        s.send(&[queue_purge(1, "")]),
        ["ch1 channel.close 404 \"NOT_FOUND - no previously declared queue\""]
    );
    let got = s.send(&[
        queue_declare(2, "q", false),
        queue_declare(2, "", false),
        queue_delete(2, "", false),
        queue_declare_passive(2, "q"),
    ]);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[2].contains("queue.delete-ok"), "{got:?}");
    assert!(got[3].contains("queue.declare-ok \"q\""), "{got:?}");
    assert_eq!(
        s.send(&[queue_declare_passive(2, "amq.gen-1")]),
        ["ch2 channel.close 404 \"NOT_FOUND - no queue 'amq.gen-1' in vhost '/'\""],
        "the shortcut deleted the server-named queue declared last"
    );
}

#[test]
fn declares_and_deletes_drop_cr_and_lf_from_the_name() {
    let mut s = Session::open();
    s.send(&[channel_open(1)]);
    let got = s.send(&[
        queue_declare(1, "q\r\n", true),
        queue_declare_passive(1, "\nq"),
        queue_purge(1, "q\n"),
    ]);
    assert!(got[0].contains("queue.declare-ok \"q\""), "{got:?}");
    assert!(got[1].contains("queue.declare-ok \"q\""), "{got:?}");
    assert_eq!(
        got[2], r#"ch1 channel.close 404 "NOT_FOUND - no queue 'q\n' in vhost '/'""#,
        "a purge takes the name as sent"
    );
    s.send(&[channel_open(2)]);
    let got = s.send(&[queue_delete(2, "q\r", false), queue_declare_passive(2, "q")]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[1].contains("404"), "deleted: {got:?}");
}

/// A bind of the empty name with the empty routing key binds the last declared queue by its
/// own name (RabbitMQ expands both).
#[test]
fn a_bind_by_the_shortcut_routes_by_the_queue_name() {
    let mut s = Session::open();
    s.send(&[channel_open(1), queue_declare(1, "q", true)]);
    let bind = m(1, ids::QUEUE_BIND, |w| {
        w.u16(0).shortstr(b"").shortstr(b"amq.direct").shortstr(b"");
        w.bit(false).u32(0);
    });
    let publish = m(1, ids::BASIC_PUBLISH, |w| {
        w.u16(0).shortstr(b"amq.direct").shortstr(b"q");
        w.bit(false).bit(false);
    });
    let get = basic_get(1, "q", true);
    let got = s.send(&[bind, publish, header(1, 1), body(1, b"x"), get]);
    assert!(got[0].contains("queue.bind-ok"), "{got:?}");
    assert!(got[1].contains("basic.get-ok"), "routed to q: {got:?}");
}

/// The type is checked before the name: an unknown type closes the connection with 503 even
/// for the default exchange, a known one (a plugin's too) gets the default exchange's 403 on
/// the channel only, both naming `exchange.declare` (40, 10) as the cause. Alone on its
/// connection, as warren's probe is, the unknown type breaks no rule: no neighbour's channel
/// goes with the connection.
#[test]
fn an_exchange_type_is_checked_before_the_name() {
    let mut s = Session::open_with(BrokerConfig {
        plugin_exchange_types: vec!["x-consistent-hash".into()],
        ..BrokerConfig::default()
    });
    s.send(&[channel_open(1)]);
    let cause = |f: &Frame| close_reply(f).map(|c| (c.class_id, c.method_id));
    let got = s.answers(&[exchange_declare(1, "", "x-consistent-hash")]);
    assert_eq!(
        got.iter().map(describe).collect::<Vec<_>>(),
        [
            r#"ch1 channel.close 403 "ACCESS_REFUSED - operation not permitted on the default exchange""#
        ]
    );
    assert_eq!(cause(&got[0]), Some((40, 10)));
    s.send(&[close_ok(1), channel_open(1)]);
    let got = s.send(&[
        exchange_declare(1, "hash", "x-consistent-hash"),
        exchange_declare(1, "fan", "fanout"),
    ]);
    assert!(
        got.iter().all(|l| l.contains("exchange.declare-ok")),
        "{got:?}"
    );
    let got = s.answers(&[exchange_declare(1, "", "x-nonsense")]);
    assert_eq!(
        got.iter().map(describe).collect::<Vec<_>>(),
        [r#"ch0 connection.close 503 "COMMAND_INVALID - unknown exchange type 'x-nonsense'""#]
    );
    assert_eq!(cause(&got[0]), Some((40, 10)));
    assert_eq!(s.broker.log.violations, []);
}

/// Beside another channel, the same declare would close that channel too: a violation of
/// the rules, logged, and the connection closed with 503 as RabbitMQ closes it.
#[test]
fn an_unknown_exchange_type_beside_another_channel_is_a_violation() {
    let mut s = Session::open();
    s.send(&[channel_open(1), channel_open(2)]);
    let got = s.send(&[exchange_declare(2, "ex", "x-consistent-hash")]);
    assert!(got[0].starts_with("ch0 connection.close 503"), "{got:?}");
    let codes: Vec<u16> = s.broker.log.violations.iter().map(|v| v.code).collect();
    assert_eq!(codes, [503], "{:?}", s.broker.log.violations);
}

// ----- stream and quorum queues (B7) ---------------------------------------------------------

/// `queue.declare` of `name` with `x-queue-type` `kind` and the given durable, exclusive and
/// auto-delete flags.
fn declare_with(
    ch: u16,
    name: &str,
    kind: &str,
    durable: bool,
    exclusive: bool,
    auto: bool,
) -> Bytes {
    let mut raw = typed_declare(ch, name, kind).to_vec();
    let flags = 7 + 4 + 2 + 1 + name.len();
    raw[flags] = u8::from(durable) << 1 | u8::from(exclusive) << 2 | u8::from(auto) << 3;
    raw.into()
}

/// A whole publish of `text` to queue `rk` by the default exchange.
fn publish(ch: u16, rk: &str, text: &[u8]) -> Vec<Bytes> {
    let method = m(ch, ids::BASIC_PUBLISH, |w| {
        w.u16(0)
            .shortstr(b"")
            .shortstr(rk.as_bytes())
            .bit(false)
            .bit(false);
    });
    vec![method, header(ch, text.len() as u64), body(ch, text)]
}

/// `basic.consume` of `queue` with tag `tag`, acks, and `x-stream-offset` `offset`.
fn stream_consume(ch: u16, queue: &str, tag: &str, offset: &str) -> Bytes {
    let args = FieldTable::default().with("x-stream-offset", warren_core::table::longstr(offset));
    let mut raw = BytesMut::new();
    args.encode(&mut raw);
    m(ch, ids::BASIC_CONSUME, |w| {
        w.u16(0)
            .shortstr(queue.as_bytes())
            .shortstr(tag.as_bytes())
            .bit(false)
            .bit(false)
            .bit(false)
            .bit(false)
            .raw(&raw);
    })
}

/// `basic.nack`, `basic.reject` or `basic.ack` (by `mid`) of delivery `tag`.
fn settle(ch: u16, mid: warren_core::method::MethodId, tag: u64) -> Bytes {
    m(ch, mid, |w| {
        w.u64(tag);
        if mid != ids::BASIC_REJECT {
            w.bit(false);
        }
        if mid != ids::BASIC_ACK {
            w.bit(true);
        }
    })
}

#[test]
fn stream_and_quorum_declares_refuse_what_rabbitmq_refuses_in_its_order() {
    let mut s = Session::open();
    s.send(&[channel_open(1)]);
    let cases = [
        (
            declare_with(1, "s", "stream", false, true, true),
            "auto-delete",
        ),
        (
            declare_with(1, "s", "stream", false, true, false),
            "exclusive-owner",
        ),
        (
            declare_with(1, "qq", "quorum", false, false, false),
            "non-durable",
        ),
    ];
    for (declare, property) in cases {
        let got = s.send(&[declare]);
        let q = if property == "non-durable" { "qq" } else { "s" };
        assert_eq!(
            got,
            [format!(
                r#"ch1 channel.close 406 "PRECONDITION_FAILED - invalid property '{property}' for queue '{q}' in vhost '/'""#
            )]
        );
        s.send(&[close_ok(1), channel_open(1)]);
    }
    let got = s.send(&[
        typed_declare(1, "s", "stream"),
        typed_declare(1, "s", "stream"),
    ]);
    assert!(
        got.iter().all(|l| l.contains("queue.declare-ok")),
        "{got:?}"
    );
    let got = s.send(&[typed_declare(1, "s", "quorum")]);
    assert_eq!(
        got,
        [
            r#"ch1 channel.close 406 "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 's' in vhost '/': received the value 'quorum' of type 'longstr' but current is the value 'stream' of type 'longstr'""#
        ]
    );
    assert_eq!(s.broker.log.violations, []);
}

/// Alone on its connection, each misuse closes the connection with RabbitMQ's code and text
/// (what warren learns a queue's type from), and is no violation.
#[test]
fn misuses_close_the_connection_with_rabbitmqs_words() {
    let stream = |tail: &[Bytes]| {
        let mut s = Session::open();
        s.send(&[
            channel_open(1),
            typed_declare(1, "s", "stream"),
            typed_declare(1, "qq", "quorum"),
        ]);
        s.send(&publish(1, "s", b"one"));
        let got = s.send(tail);
        assert_eq!(s.broker.log.violations, []);
        (
            got.last().cloned().unwrap_or_default(),
            s.broker.log.queue_type_closes.len(),
        )
    };
    let closed = |text: &str| {
        (
            format!(r#"ch0 connection.close 540 "NOT_IMPLEMENTED - {text}""#),
            1,
        )
    };
    assert_eq!(
        stream(&[basic_get(1, "s", false)]),
        closed("basic.get not supported by stream queues queue 's' in vhost '/'")
    );
    assert_eq!(
        stream(&[queue_purge(1, "s")]),
        closed("queue.purge not supported by stream queues queue 's' in vhost '/'")
    );
    let no_ack = warren_testkit::hub_world::consume(1, b"s", b"t", true, false);
    assert_eq!(
        stream(&[qos(1, 10, false), no_ack]),
        closed("automatic acknowledgement not supported by stream queues queue 's' in vhost '/'")
    );
    let global = warren_testkit::hub_world::consume(1, b"qq", b"t", false, false);
    assert_eq!(
        stream(&[qos(1, 10, true), global]),
        closed("queue 'qq' in vhost '/' does not support global qos")
    );
    let read = [qos(1, 10, false), stream_consume(1, "s", "t", "first")];
    for mid in [ids::BASIC_NACK, ids::BASIC_REJECT] {
        let tail = [read.as_slice(), &[settle(1, mid, 1)]].concat();
        assert_eq!(
            stream(&tail),
            closed(
                "basic.nack and basic.reject not supported by stream queues queue 's' in vhost '/'"
            )
        );
    }
    let recover = m(1, ids::BASIC_RECOVER, |w| {
        w.bit(true);
    });
    let tail = [read.as_slice(), &[recover]].concat();
    assert_eq!(
        stream(&tail),
        (r#"ch0 connection.close 541 "INTERNAL_ERROR""#.to_owned(), 1)
    );
    // A stream consumer needs a per-consumer prefetch, checked before its acks (a global
    // one does not count): a channel error.
    let no_prefetch = (
        r#"ch1 channel.close 406 "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue 's' in vhost '/''""#.to_owned(),
        0,
    );
    assert_eq!(stream(&[stream_consume(1, "s", "t", "first")]), no_prefetch);
    let no_ack = warren_testkit::hub_world::consume(1, b"s", b"t", true, false);
    assert_eq!(stream(std::slice::from_ref(&no_ack)), no_prefetch);
    assert_eq!(stream(&[qos(1, 10, true), no_ack]), no_prefetch);
}

/// A stream keeps its messages: each consumer reads from its offset, and acks remove
/// nothing. A quorum queue under a per-consumer prefetch serves consumers and gets.
#[test]
fn a_stream_keeps_its_messages_for_every_consumer() {
    let mut s = Session::open();
    s.send(&[
        channel_open(1),
        typed_declare(1, "s", "stream"),
        qos(1, 10, false),
    ]);
    s.send(&[publish(1, "s", b"one"), publish(1, "s", b"two")].concat());
    let delivered = |got: &[String]| got.iter().filter(|l| l.contains("basic.deliver")).count();
    let got = s.send(&[stream_consume(1, "s", "a", "first")]);
    assert_eq!(delivered(&got), 2, "{got:?}");
    s.send(&[settle(1, ids::BASIC_ACK, 1), settle(1, ids::BASIC_ACK, 2)]);
    assert_eq!(
        delivered(&s.send(&[stream_consume(1, "s", "b", "last")])),
        1
    );
    assert_eq!(
        delivered(&s.send(&[stream_consume(1, "s", "c", "next")])),
        0
    );
    let got = s.send(&publish(1, "s", b"three"));
    assert_eq!(delivered(&got), 3, "{got:?}");
    assert_eq!(s.broker.queued_origins().len(), 0);
    s.send(&[
        channel_open(2),
        typed_declare(2, "qq", "quorum"),
        qos(2, 10, true),
        qos(2, 1, false),
    ]);
    s.send(&publish(2, "qq", b"q"));
    let got = s.send(&[basic_get(2, "qq", false)]);
    assert!(got[0].contains("basic.get-ok"), "{got:?}");
    let consume = warren_testkit::hub_world::consume(2, b"qq", b"t", false, false);
    assert!(s.send(&[consume])[0].contains("basic.consume-ok"));
    assert_eq!(s.broker.log.violations, []);
}

/// Beside another channel, a misuse of a queue whose confirmed declare warren saw on this
/// connection is a violation; of a queue declared on another connection it is not (warren
/// could not know), and the broker closes the connection as RabbitMQ does all the same.
#[test]
fn a_misuse_beside_another_channel_is_a_violation_only_if_warren_knew() {
    let mut s = Session::open();
    s.send(&[
        channel_open(1),
        channel_open(2),
        typed_declare(1, "s", "stream"),
    ]);
    let got = s.send(&[basic_get(2, "s", false)]);
    assert!(got[0].starts_with("ch0 connection.close 540"), "{got:?}");
    assert_eq!(
        s.broker.log.violations.len(),
        1,
        "{:?}",
        s.broker.log.violations
    );
    let mut s2 = Session::join(s.broker, s.now);
    s2.send(&[channel_open(1), channel_open(2)]);
    let got = s2.send(&[basic_get(2, "s", false)]);
    assert_eq!(
        got,
        [
            r#"ch0 connection.close 540 "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 's' in vhost '/'""#
        ]
    );
    assert_eq!(s2.broker.log.violations.len(), 1);
    assert_eq!(s2.broker.log.queue_type_closes.len(), 1);
}
