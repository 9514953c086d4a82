//! Tests of the checker: each rule is reported, in any chunking, and at the broker what
//! crossed the broker's close on the wire is discarded instead.

use super::*;
use crate::hub_world::{connection_start, exchange_declare, header, offset_consume, parse_frame};
use bytes::{Bytes, BytesMut};
use warren_core::frame::PROTOCOL_HEADER;
use warren_core::frame::{method_frame, HEARTBEAT};
use warren_core::method::encode;
use warren_core::method::StartOk;
use warren_core::table::{longstr, FieldTable, FieldValue};
use warren_core::wire::Writer;

fn checker() -> UpstreamChecker {
    UpstreamChecker::new(&["x-delayed-message".to_owned()])
}

fn frame(raw: &Bytes) -> Frame {
    parse_frame(raw).expect("a whole frame")
}

/// A checker that has seen the header, the broker's start and warren's start-ok, and the
/// broker's tune offer.
fn offered(offer: Tune) -> UpstreamChecker {
    let mut c = checker();
    c.from_warren(PROTOCOL_HEADER).unwrap();
    c.from_broker(&frame(&connection_start()));
    c.from_warren(&encode::start_ok(&StartOk {
        client_properties: FieldTable::default(),
        mechanism: "PLAIN".into(),
        response: b"\0guest\0guest".to_vec(),
        locale: "en_US".into(),
    }))
    .unwrap();
    c.from_broker(&frame(&encode::tune(offer, false)));
    c
}

/// A checker after a complete handshake with the given broker tune.
fn running_with(offer: Tune, accept: Tune) -> UpstreamChecker {
    let mut c = offered(offer);
    c.from_warren(&[encode::tune(accept, true), encode::open("/")].concat())
        .unwrap();
    c.from_broker(&frame(&encode::open_ok()));
    assert!(c.is_running());
    c
}

const TUNE: Tune = Tune {
    channel_max: 8,
    frame_max: 4096,
    heartbeat: 60,
};

fn running() -> UpstreamChecker {
    running_with(TUNE, TUNE)
}

/// A checker with channel 1 open.
fn open() -> UpstreamChecker {
    let mut c = running();
    c.from_warren(&encode::channel_open(1)).unwrap();
    c.from_broker(&frame(&encode::channel_open_ok(1)));
    c
}

fn rule(c: &mut UpstreamChecker, bytes: &[u8]) -> Rule {
    match c.from_warren(bytes) {
        Err(v) => v.rule,
        Ok(frames) => panic!("accepted {} frames", frames.len()),
    }
}

fn publish(ch: u16, immediate: bool) -> Bytes {
    method_frame(ch, ids::BASIC_PUBLISH, |w| {
        w.u16(0)
            .shortstr(b"")
            .shortstr(b"rk")
            .bit(false)
            .bit(immediate);
    })
}

fn body(ch: u16, n: usize) -> Bytes {
    Frame::new(FrameType::Body, ch, &vec![0; n]).freeze()
}

fn consume(ch: u16, tag: &[u8]) -> Bytes {
    crate::hub_world::consume(ch, b"q", tag, false, false)
}

fn close(ch: u16) -> Bytes {
    crate::hub_world::close(ch, 200, "bye")
}

#[test]
fn a_clean_session_passes_in_any_chunking() {
    let mut c = open();
    let session = [
        publish(1, false),
        header(1, 5000),
        body(1, 4000),
        body(1, 1000),
        publish(1, false),
        header(1, 0),
        consume(1, b"t"),
        Bytes::from_static(HEARTBEAT),
        close(1),
    ]
    .concat();
    for b in session.chunks(3) {
        c.from_warren(b).unwrap();
    }
    c.from_broker(&frame(&encode::close_ok(1)));
    // Reopening a fully closed channel is fine.
    c.from_warren(&encode::channel_open(1)).unwrap();
}

#[test]
fn handshake_out_of_order_is_reported() {
    let mut c = checker();
    assert_eq!(rule(&mut c, b"AMQP\x00\x00\x09\x02"), Rule::Handshake);
    let mut c = checker();
    c.from_warren(PROTOCOL_HEADER).unwrap();
    assert_eq!(rule(&mut c, &encode::open("/")), Rule::Handshake);
    // A tune-ok above what the broker offered.
    let mut c = offered(TUNE);
    let greedy = Tune {
        frame_max: 8192,
        ..TUNE
    };
    assert_eq!(rule(&mut c, &encode::tune(greedy, true)), Rule::Handshake);
}

#[test]
fn frame_and_channel_limits_are_reported() {
    let mut c = open();
    assert_eq!(
        rule(
            &mut c,
            &[publish(1, false), header(1, 5000), body(1, 4089)].concat()
        ),
        Rule::FrameMax
    );
    let mut c = running();
    assert_eq!(rule(&mut c, &encode::channel_open(9)), Rule::ChannelMax);
    let mut c = open();
    assert_eq!(
        rule(&mut c, &Frame::new(FrameType::Heartbeat, 1, &[]).freeze()),
        Rule::HeartbeatChannel
    );
    let mut c = open();
    let mut bad_end = encode::channel_open(2).to_vec();
    *bad_end.last_mut().unwrap() = 0;
    assert_eq!(rule(&mut c, &bad_end), Rule::Malformed);
    let mut c = open();
    assert_eq!(rule(&mut c, &encode::channel_open_ok(0)), Rule::BadMethod);
}

#[test]
fn channel_lifecycle_violations_are_reported() {
    let mut c = running();
    assert_eq!(rule(&mut c, &publish(1, false)), Rule::UnopenedChannel);
    let mut c = running();
    c.from_warren(&encode::channel_open(1)).unwrap();
    assert_eq!(rule(&mut c, &encode::channel_open(1)), Rule::SecondOpen);
    // After warren's close, nothing until the broker's close-ok.
    let mut c = open();
    c.from_warren(&close(1)).unwrap();
    assert_eq!(rule(&mut c, &publish(1, false)), Rule::ClosingChannel);
    // After the broker's close, only close-ok.
    let mut c = open();
    c.from_broker(&frame(&close(1)));
    assert_eq!(rule(&mut c, &close(1)), Rule::ClosingChannel);
    let mut c = open();
    c.from_broker(&frame(&close(1)));
    c.from_warren(&encode::close_ok(1)).unwrap();
    assert_eq!(rule(&mut c, &publish(1, false)), Rule::UnopenedChannel);
    // A close-ok that answers nothing.
    let mut c = open();
    assert_eq!(rule(&mut c, &encode::close_ok(1)), Rule::UnexpectedCloseOk);
    // Crossing closes: warren answers the broker's close, then waits for its own.
    let mut c = open();
    c.from_warren(&close(1)).unwrap();
    c.from_broker(&frame(&close(1)));
    c.from_warren(&encode::close_ok(1)).unwrap();
    assert_eq!(rule(&mut c, &encode::channel_open(1)), Rule::ClosingChannel);
    c.from_broker(&frame(&encode::close_ok(1)));
    c.from_warren(&encode::channel_open(1)).unwrap();
}

#[test]
fn content_out_of_sequence_is_reported() {
    let cases: [&[Bytes]; 5] = [
        &[header(1, 1)],
        &[body(1, 1)],
        &[publish(1, false), body(1, 1)],
        &[publish(1, false), header(1, 2), publish(1, false)],
        &[publish(1, false), header(1, 2), body(1, 3)],
    ];
    for frames in cases {
        let mut c = open();
        assert_eq!(rule(&mut c, &frames.concat()), Rule::ContentSequence);
    }
    let mut c = open();
    let mut wrong_class = BytesMut::new();
    Writer::new(&mut wrong_class).u16(50).u16(0).u64(1).u16(0);
    let wrong_class = Frame::new(FrameType::Header, 1, &wrong_class).freeze();
    assert_eq!(
        rule(&mut c, &[publish(1, false), wrong_class].concat()),
        Rule::ContentSequence
    );
}

#[test]
fn refused_arguments_are_reported() {
    let cases = [
        (encode::flow(1, false, false), Rule::FlowInactive),
        (publish(1, true), Rule::PublishImmediate),
        (
            method_frame(1, ids::BASIC_QOS, |w| {
                w.u32(1).u16(0).bit(false);
            }),
            Rule::QosPrefetchSize,
        ),
        (
            method_frame(1, ids::BASIC_RECOVER_ASYNC, |w| {
                w.bit(false);
            }),
            Rule::RecoverNoRequeue,
        ),
        (
            method_frame(1, ids::CONNECTION_UPDATE_SECRET, |w| {
                w.longstr(b"t").shortstr(b"r");
            }),
            Rule::BadMethod,
        ),
        (encode::close_ok(0), Rule::ChannelZero),
    ];
    for (bytes, want) in cases {
        let mut c = open();
        assert_eq!(rule(&mut c, &bytes), want, "{want:?}");
    }
}

/// An `exchange.declare` of a type the broker does not know closes the whole connection:
/// a violation beside a neighbour's channel in any state (opening, open, closing), which
/// would go with it; alone on its connection (how warren asks the broker about a type, B7)
/// it costs no one else anything. Types the broker knows, its plugins' included, and
/// passive declares are fine beside neighbours.
#[test]
fn an_unknown_exchange_type_is_a_violation_beside_other_channels_only() {
    let declare = exchange_declare(1, "x", "bogus");
    for state in [
        ChannelState::Opening,
        ChannelState::Open,
        ChannelState::Closing,
    ] {
        assert_eq!(rule(&mut beside(state), &declare), Rule::ExchangeType);
    }
    // The probe's connection: channel 1 opened and the default exchange declared in one
    // write, then the broker's 503 and warren's close-ok. At the broker too.
    for mut c in [running(), at_broker(running())] {
        let probe = [encode::channel_open(1), exchange_declare(1, "", "bogus")];
        assert_eq!(c.from_warren(&probe.concat()).unwrap().len(), 2);
        c.from_broker(&frame(&close(0)));
        c.from_warren(&encode::close_ok(0)).unwrap();
    }
    // Alone, but after a neighbour came and went: nothing is left to close.
    let mut c = beside(ChannelState::Closing);
    c.from_broker(&frame(&encode::close_ok(2)));
    c.from_warren(&declare).unwrap();
    // What the broker knows is fine anywhere: the four, its plugins' types, any passive one.
    let passive = method_frame(1, ids::EXCHANGE_DECLARE, |w| {
        w.u16(0).shortstr(b"x").shortstr(b"bogus").bit(true);
        w.bit(false).bit(false).bit(false).bit(false).u32(0);
    });
    for fine in [
        exchange_declare(1, "x", "topic"),
        exchange_declare(1, "x", "x-delayed-message"),
        passive,
    ] {
        beside(ChannelState::Open).from_warren(&fine).unwrap();
    }
}

/// A checker with channel 1 open and channel 2 in `state`: opening, open or closing.
fn beside(state: ChannelState) -> UpstreamChecker {
    let mut c = open();
    c.from_warren(&encode::channel_open(2)).unwrap();
    if state != ChannelState::Opening {
        c.from_broker(&frame(&encode::channel_open_ok(2)));
    }
    if state == ChannelState::Closing {
        c.from_warren(&close(2)).unwrap();
    }
    assert_eq!(c.channels().nth(1), Some((2, state)));
    c
}

#[test]
fn consumer_tags_follow_the_broker() {
    let mut c = open();
    c.from_warren(&consume(1, b"t")).unwrap();
    assert_eq!(rule(&mut c, &consume(1, b"t")), Rule::ConsumerTagReuse);
    // A cancel frees the tag at once, and a late consume-ok does not bring it back.
    let mut c = open();
    c.from_warren(&consume(1, b"t")).unwrap();
    c.from_warren(&method_frame(1, ids::BASIC_CANCEL, |w| {
        w.shortstr(b"t").bit(false);
    }))
    .unwrap();
    c.from_broker(&frame(&method_frame(1, ids::BASIC_CONSUME_OK, |w| {
        w.shortstr(b"t");
    })));
    c.from_warren(&consume(1, b"t")).unwrap();
    // A broker-chosen tag is learnt from consume-ok.
    let mut c = open();
    c.from_warren(&consume(1, b"")).unwrap();
    c.from_broker(&frame(&method_frame(1, ids::BASIC_CONSUME_OK, |w| {
        w.shortstr(b"amq.ctag-1");
    })));
    assert_eq!(
        rule(&mut c, &consume(1, b"amq.ctag-1")),
        Rule::ConsumerTagReuse
    );
}

#[test]
fn methods_during_a_commit_are_reported() {
    let transactional = || {
        let mut c = open();
        c.from_warren(&method_frame(1, ids::TX_SELECT, |_| {}))
            .unwrap();
        c.from_broker(&frame(&method_frame(1, MethodId::new(90, 11), |_| {})));
        c
    };
    let commit = || method_frame(1, ids::TX_COMMIT, |_| {});
    let published = || {
        let mut c = transactional();
        for f in [publish(1, false), header(1, 1), body(1, 1)] {
            c.from_warren(&f).unwrap();
        }
        c
    };
    let mut c = published();
    c.from_warren(&commit()).unwrap();
    assert_eq!(rule(&mut c, &publish(1, false)), Rule::DuringCommit);
    // RabbitMQ answers at once a commit on a channel that is not transactional (406 on the
    // channel) and one without publishes (commit-ok): what follows either is no violation.
    for mut c in [open(), transactional()] {
        c.from_warren(&commit()).unwrap();
        c.from_warren(&publish(1, false)).unwrap();
    }
    let mut c = published();
    c.from_warren(&commit()).unwrap();
    c.from_broker(&frame(&method_frame(1, ids::TX_COMMIT_OK, |_| {})));
    c.from_warren(&method_frame(1, ids::TX_COMMIT, |_| {}))
        .unwrap();
    c.from_warren(&close(1)).unwrap();
}

#[test]
fn channel_zero_takes_update_secret_and_close_only() {
    // RabbitMQ answers connection.update-secret on an open connection (OAuth token refresh).
    let mut c = open();
    let update = method_frame(0, ids::CONNECTION_UPDATE_SECRET, |w| {
        w.longstr(b"token").shortstr(b"refresh");
    });
    assert_eq!(c.from_warren(&update).unwrap().len(), 1);
    assert_eq!(
        rule(&mut c, &encode::open("/")),
        Rule::ChannelZero,
        "a second connection.open"
    );
}

#[test]
fn nothing_after_connection_close() {
    let mut c = open();
    c.from_warren(&close(0)).unwrap();
    assert_eq!(
        rule(&mut c, &encode::channel_open(2)),
        Rule::AfterConnectionClose
    );
}

/// The same checker, as a broker holds it (see [`UpstreamChecker::at_broker`]).
fn at_broker(c: UpstreamChecker) -> UpstreamChecker {
    UpstreamChecker {
        in_flight: true,
        ..c
    }
}

#[test]
fn frames_that_crossed_the_brokers_close_are_discarded_at_the_broker() {
    // A channel: what warren sent before it saw the broker's close is dropped unread; its
    // own close crossing the broker's passes, and so does the close-ok that ends it.
    let mut c = at_broker(open());
    c.from_broker(&frame(&close(1)));
    let sent = [publish(1, false), body(1, 0), close(1), encode::close_ok(1)].concat();
    let read = c.from_warren(&sent).unwrap();
    let ids: Vec<_> = read.iter().map(Frame::method_id).collect();
    assert_eq!(
        ids,
        [Some(ids::CHANNEL_CLOSE), Some(ids::CHANNEL_CLOSE_OK)],
        "only the closing methods are read"
    );
    c.from_warren(&encode::channel_open(1)).unwrap();
    // The connection: after the broker's close, only close and close-ok are read.
    let mut c = at_broker(open());
    c.from_broker(&frame(&close(0)));
    let sent = [publish(1, false), close(0), encode::close_ok(0)].concat();
    assert_eq!(c.from_warren(&sent).unwrap().len(), 2);
    // Strict, the same bytes are a violation: warren had seen the close.
    let mut c = open();
    c.from_broker(&frame(&close(1)));
    assert_eq!(rule(&mut c, &publish(1, false)), Rule::ClosingChannel);
}

#[test]
fn a_broker_reads_one_frame_at_a_time() {
    // tx.commit then a publish in one write: checked all at once, the publish would meet a
    // commit in flight; read one at a time, the broker's commit-ok comes between.
    let mut c = open();
    let sent = [method_frame(1, ids::TX_COMMIT, |_| {}), publish(1, false)].concat();
    c.feed(&sent);
    assert!(matches!(c.next(), Some(Ok(Read::Frame(_)))));
    c.from_broker_bytes(&method_frame(1, ids::TX_COMMIT_OK, |_| {}));
    assert!(matches!(c.next(), Some(Ok(Read::Frame(_)))));
    assert!(c.next().is_none());
    // A frame that does not decode drops what is buffered: the next read waits for bytes.
    let mut c = open();
    c.feed(&[9, 0, 1, 0, 0, 0, 0, 0xce, 1, 2, 3]);
    assert_eq!(c.next().unwrap().unwrap_err().rule, Rule::Malformed);
    assert!(c.next().is_none());
}

#[test]
fn each_rule_names_the_code_rabbitmq_closes_with() {
    assert_eq!(Rule::FrameMax.reply_code(), 501);
    assert_eq!(Rule::ContentSequence.reply_code(), 505);
    assert_eq!(Rule::UnopenedChannel.reply_code(), 504);
    assert_eq!(Rule::PublishImmediate.reply_code(), 540);
    assert_eq!(Rule::ChannelMax.reply_code(), 530);
}

// ----- queue types (B7) ----------------------------------------------------------------------

use crate::hub_world::{basic_get, qos, queue_declare_ok, queue_purge, typed_declare};
use std::time::{Duration, Instant};

/// A checker with channel 1 open and channel 2 open beside it (`neighbour`) or not, where
/// warren declared stream `s` and quorum queue `qq` on channel 1 at `t0` and the broker
/// confirmed both.
fn typed(neighbour: bool, t0: Instant) -> UpstreamChecker {
    let mut c = if neighbour {
        beside(ChannelState::Open)
    } else {
        open()
    };
    c.at(t0);
    let declares = [
        typed_declare(1, "s", "stream"),
        typed_declare(1, "qq", "quorum"),
    ];
    c.from_warren(&declares.concat()).unwrap();
    c.from_broker(&frame(&queue_declare_ok(1, "s")));
    c.from_broker(&frame(&queue_declare_ok(1, "qq")));
    c
}

/// `basic.nack` of delivery `tag`.
fn nack(ch: u16, tag: u64) -> Bytes {
    method_frame(ch, ids::BASIC_NACK, |w| {
        w.u64(tag).bit(false).bit(true);
    })
}

/// A stream's deliveries, as the broker sends them to consumer `ctag` (hub_world's name).
fn stream_consumer(neighbour: bool, t0: Instant) -> UpstreamChecker {
    let mut c = typed(neighbour, t0);
    let ok = [
        qos(1, 10, false),
        crate::hub_world::consume(1, b"s", b"ctag", false, false),
    ];
    c.from_warren(&ok.concat()).unwrap();
    c.from_broker(&frame(&crate::hub_world::deliver(1, 1)));
    c.from_broker(&frame(&crate::hub_world::deliver(1, 2)));
    c
}

#[test]
fn a_misuse_of_a_known_queue_type_beside_a_neighbour_is_reported() {
    let t0 = Instant::now();
    let misuses = [
        vec![basic_get(1, "s", false)],
        vec![queue_purge(1, "s")],
        vec![
            qos(1, 5, false),
            crate::hub_world::consume(1, b"s", b"t", true, false),
        ],
        vec![
            qos(1, 5, true),
            crate::hub_world::consume(1, b"qq", b"", false, false),
        ],
        vec![
            qos(1, 5, false),
            qos(1, 5, true),
            crate::hub_world::consume(1, b"s", b"", false, false),
        ],
        // Offsets that crash RabbitMQ's channel: a word at once, a boolean after the
        // prefetch is checked.
        vec![offset_consume(1, b"s", b"", longstr("bogus"))],
        vec![
            qos(1, 5, false),
            offset_consume(1, b"s", b"", FieldValue::Bool(true)),
        ],
        // The empty name is the channel's last declared queue.
        vec![typed_declare(1, "s", "stream"), basic_get(1, "", false)],
    ];
    for frames in &misuses {
        let mut c = typed(true, t0);
        c.at(t0 + Duration::from_secs(299));
        assert_eq!(
            rule(&mut c, &frames.concat()),
            Rule::QueueType,
            "{frames:?}"
        );
    }
    for bad in [nack(1, 2), reject(1, 1), recover(1)] {
        let mut c = stream_consumer(true, t0);
        assert_eq!(rule(&mut c, &bad), Rule::QueueType);
    }
}

#[test]
fn a_misuse_warren_could_not_know_of_or_alone_on_its_connection_is_no_violation() {
    let t0 = Instant::now();
    let get = basic_get(1, "s", false);
    // Alone on its connection: the broker's close costs no one else anything.
    typed(false, t0).from_warren(&get).unwrap();
    // Without a per-consumer prefetch RabbitMQ answers a stream consumer on its channel
    // (406) before it looks at acks or at an offset's type.
    for consume in [
        crate::hub_world::consume(1, b"s", b"t", true, false),
        offset_consume(1, b"s", b"t", FieldValue::Bool(true)),
    ] {
        typed(true, t0).from_warren(&consume).unwrap();
    }
    // Five minutes later warren may have forgotten.
    let mut c = typed(true, t0);
    c.at(t0 + Duration::from_secs(300));
    c.from_warren(&get).unwrap();
    // A declare without its declare-ok yet, a passive one, one with nowait: nothing confirmed.
    let unconfirmed = |declare: Bytes| {
        let mut c = beside(ChannelState::Open);
        c.from_warren(&declare).unwrap();
        c.from_warren(&get).unwrap();
    };
    unconfirmed(typed_declare(1, "s", "stream"));
    let mut raw = typed_declare(1, "s", "stream").to_vec();
    let flags = 7 + 4 + 2 + 2; // frame header, method ids, ticket, the name "s"
    raw[flags] = 0b1_0010; // durable and nowait
    unconfirmed(raw.into());
    // Declared elsewhere: the checker knows nothing, nor does warren.
    beside(ChannelState::Open).from_warren(&get).unwrap();
}

#[test]
fn what_a_queue_type_allows_passes() {
    let t0 = Instant::now();
    let mut c = typed(true, t0);
    // A global qos replaced by a per-consumer one, then a consume of the quorum queue; a
    // get from it; a stream consumer with acks.
    let fine = [
        qos(1, 5, true),
        qos(1, 5, false),
        crate::hub_world::consume(1, b"qq", b"", false, false),
        basic_get(1, "qq", false),
        crate::hub_world::consume(1, b"s", b"ctag", false, false),
    ];
    c.from_warren(&fine.concat()).unwrap();
    // Acks of a stream's deliveries are fine, and once settled a nack reaches nothing.
    let mut c = stream_consumer(true, t0);
    let ack = method_frame(1, ids::BASIC_ACK, |w| {
        w.u64(2).bit(true);
    });
    c.from_warren(&[ack.to_vec(), nack(1, 1).to_vec(), recover(1).to_vec()].concat())
        .unwrap();
}

/// `basic.reject` of delivery `tag`.
fn reject(ch: u16, tag: u64) -> Bytes {
    method_frame(ch, ids::BASIC_REJECT, |w| {
        w.u64(tag).bit(false);
    })
}

/// `basic.recover` with requeue.
fn recover(ch: u16) -> Bytes {
    method_frame(ch, ids::BASIC_RECOVER, |w| {
        w.bit(true);
    })
}
