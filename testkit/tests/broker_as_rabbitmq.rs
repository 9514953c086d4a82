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

use bytes::{Bytes, BytesMut};
use std::time::Instant;
use warren_core::frame::{Frame, FrameDecoder, PROTOCOL_HEADER};
use warren_core::method::{encode, ids, StartOk, Tune};
use warren_core::table::FieldTable;
use warren_testkit::broker::{Broker, BrokerConfig, BrokerOutput, ConnId};
use warren_testkit::hub_world::{
    basic_get, body, channel_open, close_ok, close_reply, exchange_declare, header, m,
    queue_declare, queue_declare_passive, queue_delete, queue_purge, RABBITMQ_TUNE,
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
        let now = Instant::now();
        let mut broker = Broker::new(config);
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
