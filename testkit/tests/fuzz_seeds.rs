//! The seed corpus of the fuzz targets, generated from code so that it stays readable and can
//! be regenerated when the wire format or the encoders change.
//!
//! `cargo test -p warren-testkit --test fuzz_seeds` runs every seed through its fuzz body.
//! `WARREN_WRITE_CORPUS=1 cargo test -p warren-testkit --test fuzz_seeds` also (re)writes them
//! to `fuzz/corpus/<target>/<name>`; commit the result. Inputs that the fuzzer itself found
//! are added to the same folders under their hash names and are never overwritten here.
//!
//! Why one file of ~1,250 lines: it is a catalogue — one short function per seed, grouped by
//! target — and a reader looks up one seed at a time; it holds no logic worth a module.

use std::path::PathBuf;
use warren_core::frame::{FrameType, FRAME_END, HEARTBEAT, PROTOCOL_HEADER};
use warren_core::method::{self, encode, ids, Close, ConnectionStart, MethodId, Tune, METHODS};
use warren_core::table::{longstr, FieldTable, FieldValue, MAX_DECODE_DEPTH};
use warren_testkit::frames::*;

/// One target's seeds, by name (its file name in the corpus, so each name is used once).
#[derive(Default)]
struct Seeds(Vec<(String, Vec<u8>)>);

impl Seeds {
    fn add(&mut self, name: &str, bytes: impl AsRef<[u8]>) {
        assert!(
            !self.0.iter().any(|(n, _)| n == name),
            "duplicate seed name {name}"
        );
        self.0.push((name.to_owned(), bytes.as_ref().to_vec()));
    }

    /// The bytes of the seed called `name`, for the tests that check what a seed reaches.
    fn named(&self, name: &str) -> &[u8] {
        let found = self.0.iter().find(|(n, _)| n == name);
        &found.unwrap_or_else(|| panic!("no seed {name}")).1
    }
}

/// Every frame the proxy's own encoders write, by name.
fn encoder_frames() -> Vec<(&'static str, Vec<u8>)> {
    let close = Close {
        code: 404,
        text: "NOT_FOUND - no queue 'q'".into(),
        class_id: 50,
        method_id: 10,
    };
    let tune = Tune {
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 60,
    };
    let start = ConnectionStart {
        server_properties: FieldTable::default()
            .with("product", longstr("warren"))
            .with(
                "capabilities",
                FieldValue::Table(
                    FieldTable::default().with("publisher_confirms", FieldValue::Bool(true)),
                ),
            ),
        mechanisms: "PLAIN AMQPLAIN".into(),
        locales: "en_US".into(),
    };
    vec![
        ("connection.start", encode::start(&start).to_vec()),
        (
            "connection.start-ok",
            start_ok_plain(b"\0guest\0guest", true),
        ),
        ("connection.tune", encode::tune(tune, false).to_vec()),
        ("connection.tune-ok", encode::tune(tune, true).to_vec()),
        ("connection.open", encode::open("/").to_vec()),
        ("connection.open-ok", encode::open_ok().to_vec()),
        ("connection.close", encode::close(0, &close).to_vec()),
        ("connection.close-ok", encode::close_ok(0).to_vec()),
        (
            "connection.blocked",
            encode::blocked("low on memory").to_vec(),
        ),
        ("connection.unblocked", encode::unblocked().to_vec()),
        (
            "connection.update-secret-ok",
            encode::update_secret_ok().to_vec(),
        ),
        ("channel.open", encode::channel_open(1).to_vec()),
        ("channel.open-ok", encode::channel_open_ok(1).to_vec()),
        ("channel.flow", encode::flow(1, false, false).to_vec()),
        ("channel.flow-ok", encode::flow(1, true, true).to_vec()),
        ("channel.close", encode::close(3, &close).to_vec()),
        ("channel.close-ok", encode::close_ok(3).to_vec()),
        (
            "queue.delete",
            encode::queue_delete(2, b"amq.gen-x").to_vec(),
        ),
    ]
}

/// Payloads of the client methods the proxy reads, with interesting flags set.
fn client_method_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let args = every_type_table();
    let p = |id: MethodId, a: Vec<u8>| method_payload(id, &a);
    vec![
        (
            "basic.publish-mandatory",
            p(ids::BASIC_PUBLISH, publish_args(b"", b"q", true, false)),
        ),
        (
            "basic.publish-immediate",
            p(ids::BASIC_PUBLISH, publish_args(b"x", b"", false, true)),
        ),
        (
            "queue.declare-exclusive",
            p(
                ids::QUEUE_DECLARE,
                Args::new()
                    .u16(0)
                    .short(b"")
                    .bit(false)
                    .bit(false)
                    .bit(true)
                    .bit(true)
                    .bit(false)
                    .table(&FieldTable::default().with("x-expires", FieldValue::I32(60_000)))
                    .done(),
            ),
        ),
        (
            "queue.declare-every-type-args",
            p(
                ids::QUEUE_DECLARE,
                Args::new()
                    .u16(0)
                    .short(b"q")
                    .bit(true)
                    .bit(true)
                    .bit(false)
                    .bit(false)
                    .bit(true)
                    .table(&args)
                    .done(),
            ),
        ),
        (
            "basic.consume-args",
            p(
                ids::BASIC_CONSUME,
                Args::new()
                    .u16(0)
                    .short(b"q")
                    .short(b"ctag-1")
                    .bit(false)
                    .bit(true)
                    .bit(false)
                    .bit(true)
                    .table(&FieldTable::default().with("x-priority", FieldValue::I32(5)))
                    .done(),
            ),
        ),
        (
            "basic.qos-prefetch-size",
            p(
                ids::BASIC_QOS,
                Args::new().u32(4096).u16(10).bit(true).done(),
            ),
        ),
        (
            "exchange.declare-bad-kind",
            p(
                ids::EXCHANGE_DECLARE,
                Args::new()
                    .u16(0)
                    .short(b"ex")
                    .short(b"no-such-type")
                    .bit(false)
                    .bit(true)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .table(&FieldTable::default())
                    .done(),
            ),
        ),
        (
            "basic.cancel-nowait",
            p(
                ids::BASIC_CANCEL,
                Args::new().short(b"ctag-1").bit(true).done(),
            ),
        ),
        (
            "basic.recover-requeue",
            p(ids::BASIC_RECOVER, Args::new().bit(true).done()),
        ),
        (
            "basic.nack-multiple",
            p(
                ids::BASIC_NACK,
                Args::new().u64(7).bit(true).bit(true).done(),
            ),
        ),
        (
            "connection.start-ok-amqplain",
            payload_of(&start_ok_amqplain("guest", "guest")),
        ),
        (
            "connection.update-secret",
            p(
                ids::CONNECTION_UPDATE_SECRET,
                Args::new().long(b"new-token").short(b"rotation").done(),
            ),
        ),
    ]
}

/// A field table body nested `depth` levels deep through tables (`F`) or arrays (`A`).
fn nested(depth: usize, tag: u8) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut next = vec![tag];
        next.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        next.extend_from_slice(&inner);
        inner = if tag == b'F' {
            [&[1, b'k'][..], &next].concat()
        } else {
            next
        };
    }
    if tag == b'A' {
        [&[1, b'k'][..], &inner].concat()
    } else {
        inner
    }
}

fn frame_decoder_seeds() -> Seeds {
    let mut s = Seeds::default();
    // A client session after the protocol header: handshake, a channel, a publish, goodbye.
    let session = [
        &handshake_plain()[PROTOCOL_HEADER.len()..],
        &encode::channel_open(1),
        &publish_frames(1),
        &HEARTBEAT[..],
        &close_bye(1),
        &encode::close_ok(0),
    ]
    .concat();
    s.add("session-plain", session);
    s.add(
        "session-amqplain",
        &handshake_amqplain()[PROTOCOL_HEADER.len()..],
    );
    for (name, f) in encoder_frames() {
        s.add(&format!("enc-{name}"), f);
    }
    for (name, p) in client_method_payloads() {
        s.add(&format!("client-{name}"), frame(FrameType::Method, 1, &p));
    }
    s.add(
        "header-every-property",
        frame(FrameType::Header, 1, &content_header_every_property(5)),
    );
    s.add(
        "header-no-property",
        frame(FrameType::Header, 1, &content_header(60, 0, 0, b"")),
    );
    s.add("body", frame(FrameType::Body, 1, b"hello"));
    s.add("body-empty", frame(FrameType::Body, 1, b""));
    s.add("heartbeat", HEARTBEAT);
    s.add(
        "heartbeat-with-payload-on-channel",
        raw_frame(8, 7, b"??", FRAME_END),
    );
    s.add("bad-end", raw_frame(1, 0, b"\0\x0a\0\x33", 0x00));
    s.add(
        "bad-end-after-good",
        [&HEARTBEAT[..], &raw_frame(3, 1, b"x", b'E')].concat(),
    );
    s.add("oversize-header", [3, 0, 1, 0x7f, 0xff, 0xff, 0xff]);
    s.add("max-size-header", [3, 0, 1, 0xff, 0xff, 0xff, 0xff, 0]);
    s.add("exactly-64", frame(FrameType::Body, 1, &[0x55; 56]));
    s.add("one-over-64", frame(FrameType::Body, 1, &[0x55; 57]));
    let open = encode::open("/").to_vec();
    s.add("truncated-method", &open[..open.len() - 3]);
    s.add("truncated-header", &open[..5]);
    s.add("unknown-type-4", raw_frame(4, 0, b"", FRAME_END));
    s.add("unknown-type-0", [0u8]);
    s.add("protocol-header", PROTOCOL_HEADER);
    s.add("empty-method", frame(FrameType::Method, 0, b""));
    s
}

fn method_decoder_seeds() -> Seeds {
    let mut s = Seeds::default();
    for spec in METHODS {
        s.add(
            &format!("spec-{}", spec.name),
            method_payload(spec.id, &minimal_args(spec)),
        );
    }
    for (name, f) in encoder_frames() {
        s.add(&format!("enc-{name}"), payload_of(&f));
    }
    for (name, p) in client_method_payloads() {
        s.add(&format!("client-{name}"), p);
    }
    // Malformed methods.
    let publish = method_payload(ids::BASIC_PUBLISH, &publish_args(b"", b"rk", false, false));
    s.add("publish-truncated", &publish[..publish.len() - 1]);
    s.add("publish-trailing", [&publish[..], b"\0"].concat());
    s.add(
        "unknown-method",
        method_payload(MethodId::new(60, 99), b"abc"),
    );
    s.add("short-id", [0u8, 60, 0]);
    s.add(
        "close-non-utf8-text",
        method_payload(
            ids::CONNECTION_CLOSE,
            &Args::new()
                .u16(320)
                .short(&[0xff; 255])
                .u16(0)
                .u16(0)
                .done(),
        ),
    );
    s.add(
        "open-non-utf8-vhost",
        method_payload(
            ids::CONNECTION_OPEN,
            &Args::new().short(b"a\xff\xfe").short(b"").bit(false).done(),
        ),
    );
    // Content headers.
    s.add(
        "header-every-property",
        content_header_every_property(1 << 40),
    );
    s.add("header-no-property", content_header(60, 11, 0, b""));
    s.add(
        "header-continuation-flag",
        content_header(60, 11, 0x0001, b""),
    );
    s.add(
        "header-missing-property",
        content_header(60, 11, 0x8000, b""),
    );
    s.add(
        "header-bad-headers-table",
        content_header(60, 11, 0x2000, b"\0\0\0\x03\x01kZ"),
    );
    // Field table bodies.
    s.add("table-every-type", table_body(&every_type_table()));
    let mut nan32 = b"\x03nanf".to_vec();
    nan32.extend_from_slice(&f32::NAN.to_bits().to_be_bytes());
    s.add("table-nan-f32", nan32);
    let mut nan64 = b"\x03nand".to_vec();
    nan64.extend_from_slice(&f64::NAN.to_bits().to_be_bytes());
    s.add("table-nan-f64", nan64);
    let mut inf = b"\x03infd".to_vec();
    inf.extend_from_slice(&f64::INFINITY.to_bits().to_be_bytes());
    s.add("table-inf-f64", inf);
    s.add("table-bad-type", b"\x01kZ");
    s.add("table-lying-length", b"\x01kF\x00\x00\x00\x09ab");
    s.add("table-key-without-value", b"\x01k");
    s.add("table-deep-tables", nested(MAX_DECODE_DEPTH + 2, b'F'));
    s.add("table-deep-arrays", nested(MAX_DECODE_DEPTH + 2, b'A'));
    s.add("table-max-depth-arrays", nested(MAX_DECODE_DEPTH, b'A'));
    // RabbitMQ accepts tables of any depth; the seed is as deep as the corpus size allows.
    s.add("table-500-deep-tables", nested(500, b'F'));
    let mut non_utf8_key = vec![255u8];
    non_utf8_key.extend_from_slice(&[0xff; 255]);
    non_utf8_key.push(b'V');
    s.add("table-non-utf8-long-key", non_utf8_key);
    s.add(
        "queue.declare-nan-argument",
        method_payload(
            ids::QUEUE_DECLARE,
            &Args::new()
                .u16(0)
                .short(b"q")
                .bit(false)
                .bit(false)
                .bit(false)
                .bit(false)
                .bit(false)
                .table_body(&[&b"\x05x-ttlf"[..], &f32::NAN.to_bits().to_be_bytes()].concat())
                .done(),
        ),
    );
    s
}

fn client_handshake_seeds() -> Seeds {
    let mut s = Seeds::default();
    let header = &PROTOCOL_HEADER[..];
    let plain = start_ok_plain(b"\0guest\0guest", true);
    let tune = tune_ok(2047, 131_072, 60);
    let open = encode::open("/").to_vec();
    s.add("full-plain", handshake_plain());
    s.add("full-amqplain", handshake_amqplain());
    s.add(
        "full-plain-pipelined",
        [
            handshake_plain(),
            encode::channel_open(1).to_vec(),
            publish_frames(1),
        ]
        .concat(),
    );
    s.add(
        "heartbeats-between",
        [header, &plain, HEARTBEAT, &tune, HEARTBEAT, &open].concat(),
    );
    s.add("header-only", header);
    s.add("header-0-9-legacy", b"AMQP\x01\x01\x00\x09");
    s.add("header-0-10", b"AMQP\x00\x00\x0a\x00");
    s.add("header-http", b"GET / HTTP/1.1\r\n\r\n");
    s.add(
        "close-during-handshake",
        [header, &plain, &close_bye(0)].concat(),
    );
    let external = method::encode::start_ok(&method::StartOk {
        client_properties: FieldTable::default(),
        mechanism: "EXTERNAL".into(),
        response: vec![],
        locale: "en_US".into(),
    });
    s.add("mechanism-external", [header, &external].concat());
    s.add(
        "plain-malformed-close",
        [header, &start_ok_plain(b"guest", true)].concat(),
    );
    s.add(
        "plain-malformed-drop",
        [header, &start_ok_plain(b"guest", false)].concat(),
    );
    s.add(
        "amqplain-no-password",
        [
            header,
            &method::encode::start_ok(&method::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "AMQPLAIN".into(),
                response: table_body(&FieldTable::default().with("LOGIN", longstr("guest"))),
                locale: "en_US".into(),
            }),
        ]
        .concat(),
    );
    for (name, t) in [
        ("tune-frame-max-too-small", tune_ok(0, 1024, 0)),
        ("tune-frame-max-too-big", tune_ok(0, 1 << 20, 0)),
        ("tune-channel-max-too-big", tune_ok(65535, 4096, 0)),
        ("tune-zeros", tune_ok(0, 0, 0)),
        ("tune-min", tune_ok(1, 4096, 1)),
    ] {
        s.add(name, [header, &plain, &t, &open].concat());
    }
    s.add("open-before-tune", [header, &plain, &open].concat());
    s.add("tune-before-start-ok", [header, &tune].concat());
    s.add(
        "body-during-handshake",
        [header, &frame(FrameType::Body, 0, b"x")].concat(),
    );
    s.add(
        "method-on-channel-1",
        [header, &encode::channel_open(1)].concat(),
    );
    s.add(
        "oversize-frame",
        [header, &[1, 0, 0, 0, 0x01, 0, 0][..]].concat(),
    );
    s.add(
        "truncated-start-ok",
        [header, &plain[..plain.len() / 2]].concat(),
    );
    let mut bad_end = plain.clone();
    *bad_end.last_mut().unwrap() = 0;
    s.add("start-ok-bad-end", [header, &bad_end].concat());
    s.add(
        "start-ok-bad-table",
        [
            header,
            &method_frame(
                0,
                ids::CONNECTION_START_OK,
                &Args::new()
                    .table_body(b"\x01kZ")
                    .short(b"PLAIN")
                    .long(b"\0u\0p")
                    .short(b"en_US")
                    .done(),
            ),
        ]
        .concat(),
    );
    s
}

/// Byte 0 of a `hub_client` configuration: recycling off.
const NO_RECYCLING: u8 = 0x01;
/// Byte 0: spread placement.
const SPREAD: u8 = 0x02;
/// Byte 0: a pool of one channel.
const POOL_1: u8 = 0x04;
/// Byte 0: one upstream at most.
const ONE_UPSTREAM: u8 = 0x10;
/// Byte 0: three upstreams at most.
const THREE_UPSTREAMS: u8 = 0x20;
/// Byte 0: max_message_size 4096.
const SMALL_MESSAGES: u8 = 0x40;
/// Byte 0: client_buffer_limit 8192.
const SMALL_BUFFER: u8 = 0x80;
/// Byte 1: the broker allows one channel per connection.
const BROKER_ONE_CHANNEL: u8 = 6;
/// Byte 1: the broker allows two channels per connection.
const BROKER_TWO_CHANNELS: u8 = 2;
/// Byte 1: the broker offers frame_max 4096.
const BROKER_SMALL_FRAMES: u8 = 0x08;
/// Byte 1: the broker offers a 5 s heartbeat.
const BROKER_HEARTBEAT_5: u8 = 0x20;
/// Byte 2: fuzzed clients negotiated frame_max 4096.
const CLIENT_SMALL_FRAMES: u8 = 0x01;
/// Byte 2: fuzzed clients negotiated channel_max 1.
const CLIENT_ONE_CHANNEL: u8 = 0x04;
/// Byte 2: fuzzed clients negotiated a 5 s heartbeat.
const CLIENT_HEARTBEAT_5: u8 = 0x20;
/// Byte 2: fuzzed clients did not ask for broker-side cancels.
const CLIENT_NO_CANCEL_NOTIFY: u8 = 0x40;

/// Frames a fuzzed client builds, in order: each a `Build` kind and its argument bytes.
type Steps<'a> = &'a [(warren_testkit::fuzz::Build, &'a [u8])];

fn hub_client_seeds() -> Seeds {
    use warren_testkit::fuzz::{Build, HubInput, HubOp};
    let mut s = Seeds::default();
    let cfg = |c: [u8; 4]| HubInput::new(c);
    // A fuzzed client with channel 1 open and answered.
    let opened = |c: [u8; 4]| HubInput::new(c).raw(0, &encode::channel_open(1)).settle();
    // ...consuming from queue 'q' with `Build::Consume` flags `consume`, answered.
    let consuming = |c: [u8; 4], consume: u8| {
        opened(c)
            .build(0, 0, Build::QueueDeclare, &[0x20])
            .build(0, 0, Build::Consume, &[consume])
            .settle()
    };
    let publish = |i: HubInput, flags: u8, size: u8, chunk: u8| {
        i.build(0, 0, Build::Publish, &[flags, size, chunk])
    };

    s.add("admitted", cfg([0; 4]));
    s.add(
        "open-publish-close",
        opened([0; 4])
            .raw(0, &publish_frames(1))
            .raw(0, &close_bye(1))
            .settle(),
    );
    s.add(
        "pipelined-session",
        cfg([0; 4])
            .raw(
                0,
                &[
                    encode::channel_open(1).to_vec(),
                    publish_frames(1),
                    close_bye(1),
                ]
                .concat(),
            )
            .settle(),
    );
    s.add(
        "publish-rechunked-upstream",
        publish(opened([0, 0x80, 0, 0]), 0, 6, 2).settle(),
    );
    s.add(
        "recycle-to-next-client",
        publish(opened([0; 4]), 0, 3, 0)
            .build(0, 0, Build::Close, &[])
            .settle()
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .raw(1, &publish_frames(1)),
    );
    s.add(
        "recycle-same-client",
        opened([0; 4])
            .raw(0, &close_bye(1))
            .settle()
            .raw(0, &encode::channel_open(2)),
    );
    s.add(
        "recycled-channel-queue-shortcut",
        opened([0; 4])
            .build(0, 0, Build::QueueDeclare, &[0x20])
            .raw(0, &close_bye(1))
            .settle()
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .build(1, 0, Build::QueueOther, &[0]),
    );
    s.add(
        "pool-of-one",
        opened([POOL_1, 0, 0, 0])
            .raw(0, &encode::channel_open(2))
            .settle()
            .raw(0, &close_bye(1))
            .raw(0, &close_bye(2))
            .settle(),
    );
    s.add(
        "no-recycling",
        opened([NO_RECYCLING, 0, 0, 0])
            .raw(0, &close_bye(1))
            .settle(),
    );
    s.add(
        "broker-closes-channel-late-frames",
        opened([0; 4])
            .op(HubOp::Broker, &[0, 0, 0, 0])
            .raw(0, &publish_frames(1))
            .raw(0, &close_bye(1))
            .raw(0, &encode::close_ok(1))
            .raw(0, &encode::channel_open(1))
            .settle(),
    );
    s.add(
        "broker-closes-channel-client-drops",
        opened([0; 4])
            .op(HubOp::Broker, &[0, 1, 0, 0])
            .op(HubOp::Drop, &[0])
            .settle(),
    );
    s.add(
        "crossing-closes",
        // The broker refuses the consume (no queue 'q') while warren's close is on its way.
        opened([0; 4])
            .build(0, 0, Build::Consume, &[0x50])
            .raw(0, &close_bye(1))
            .settle(),
    );
    s.add(
        "broker-closes-fencing-channel",
        opened([0; 4])
            .raw(0, &close_bye(1))
            .op(HubOp::Broker, &[0, 0, 0, 0])
            .settle(),
    );
    s.add(
        "exclusive-queue-then-drop",
        opened([0; 4])
            .build(0, 0, Build::QueueDeclare, &[0x04])
            .settle()
            .op(HubOp::Drop, &[0])
            .settle(),
    );
    s.add(
        "exclusive-nowait-then-delete-then-drop",
        opened([0; 4])
            .build(0, 0, Build::QueueDeclare, &[0x34])
            .build(0, 0, Build::QueueDelete, &[0x20])
            .op(HubOp::Drop, &[0])
            .settle(),
    );
    s.add(
        "exclusive-queue-deleted-by-the-shortcut",
        opened([0; 4])
            .build(0, 0, Build::QueueDeclare, &[0x24])
            .build(0, 0, Build::QueueDelete, &[0])
            .settle()
            .op(HubOp::Drop, &[0])
            .settle(),
    );
    s.add(
        "exclusive-queue-connection-close",
        opened([0; 4])
            .build(0, 0, Build::QueueDeclare, &[0x04])
            .settle()
            .build(0, 192, Build::Connection, &[0])
            .settle(),
    );
    s.add(
        "consume-cancel-consume",
        opened([0; 4])
            .build(0, 0, Build::Consume, &[0x10])
            .settle()
            .build(0, 0, Build::Cancel, &[0x10])
            .build(0, 0, Build::Consume, &[0x10])
            .build(0, 0, Build::Consume, &[0x10])
            .settle(),
    );
    s.add(
        "server-named-consumers",
        opened([0; 4])
            .build(0, 0, Build::Consume, &[0])
            .build(0, 0, Build::Consume, &[0])
            .settle()
            .build(0, 0, Build::Consume, &[0x30])
            .settle(),
    );
    s.add(
        "server-cancel",
        consuming([0; 4], 0x50)
            .op(HubOp::Broker, &[0, 4, 0, 0])
            .build(0, 0, Build::QueueDeclare, &[0x20])
            .build(0, 0, Build::Consume, &[0x50])
            .settle(),
    );
    s.add(
        "server-cancel-without-notify",
        consuming([0, 0, CLIENT_NO_CANCEL_NOTIFY, 0], 0x50)
            .op(HubOp::Broker, &[0, 4, 0, 0])
            .settle(),
    );
    s.add(
        "tx-commit-then-publish",
        opened([0; 4])
            .build(0, 0, Build::Tx, &[0])
            .build(0, 0, Build::Publish, &[0, 2, 0])
            .build(0, 0, Build::Tx, &[1])
            .build(0, 0, Build::PublishMethod, &[0]),
    );
    s.add(
        "tx-commit-ok-then-publish",
        opened([0; 4])
            .build(0, 0, Build::Tx, &[0])
            .build(0, 0, Build::Tx, &[1])
            .settle()
            .build(0, 0, Build::Publish, &[0, 2, 0])
            .build(0, 0, Build::Tx, &[2])
            .settle(),
    );
    s.add(
        "tx-commit-then-close",
        opened([0; 4])
            .build(0, 0, Build::Tx, &[0])
            .build(0, 0, Build::Tx, &[1])
            .raw(0, &close_bye(1))
            .settle(),
    );
    // Seeds that build these frames, in order, on the fuzzed client's open channel 1, then
    // settle.
    let on_channel_1: &[(&str, Steps)] = &[
        // Name 7 is the canary's exclusive queue with an LF, which RabbitMQ drops in a delete.
        (
            "canary-queue-delete-by-a-name-with-lf",
            &[(Build::QueueDelete, &[0xE0])],
        ),
        (
            "confirms-acked",
            &[
                (Build::Confirm, &[0]),
                (Build::Publish, &[0, 2, 0]),
                (Build::Publish, &[0, 0, 0]),
            ],
        ),
        ("mandatory-returned", &[(Build::Publish, &[0x41, 2, 0])]),
        (
            "acks-nacks-rejects",
            &[
                (Build::Ack, &[0, 1]),
                (Build::Ack, &[5, 2]),
                (Build::Ack, &[10, 3]),
            ],
        ),
        (
            "get-ok-and-get-empty",
            &[(Build::Get, &[0x20]), (Build::Get, &[0])],
        ),
        (
            "qos-recover-flow",
            &[
                (Build::Qos, &[0, 10]),
                (Build::Recover, &[2]),
                (Build::Recover, &[3]),
                (Build::Flow, &[1]),
            ],
        ),
        (
            "exchanges-and-bindings",
            &[
                (Build::ExchangeDeclare, &[0, 0x20]),
                (Build::ExchangeDeclare, &[4, 0x02]),
                (Build::ExchangeDeclare, &[5, 0x01]),
                (Build::ExchangeOther, &[1]),
                (Build::ExchangeOther, &[2]),
                (Build::ExchangeOther, &[0]),
                (Build::QueueOther, &[0x20]),
                (Build::QueueOther, &[0x21]),
                (Build::QueueOther, &[0x26]),
                (Build::ExchangeOther, &[3]),
            ],
        ),
        // Everything the proxy refuses or answers itself instead of letting RabbitMQ close the
        // shared connection.
        ("flow-inactive", &[(Build::Flow, &[0])]),
        ("publish-immediate", &[(Build::PublishMethod, &[0x0e])]),
        ("qos-prefetch-size", &[(Build::Qos, &[3, 1])]),
        ("recover-no-requeue", &[(Build::Recover, &[0])]),
        ("recover-async-no-requeue", &[(Build::Recover, &[1])]),
        (
            "exchange-unknown-type",
            &[(Build::ExchangeDeclare, &[5, 0])],
        ),
        ("exchange-empty-type", &[(Build::ExchangeDeclare, &[6, 0])]),
        ("second-open", &[(Build::Open, &[])]),
        ("close-ok-on-open-channel", &[(Build::CloseOk, &[])]),
        ("header-without-publish", &[(Build::Header, &[0, 2])]),
        ("body-without-publish", &[(Build::Body, &[2])]),
        ("big-method-fits", &[(Build::BigMethod, &[0])]),
        (
            "content-body-before-header",
            &[(Build::PublishMethod, &[0]), (Build::Body, &[2])],
        ),
        (
            "content-method-inside-publish",
            &[
                (Build::PublishMethod, &[0]),
                (Build::Header, &[0, 3]),
                (Build::Qos, &[0, 1]),
            ],
        ),
        (
            "content-body-too-long",
            &[
                (Build::PublishMethod, &[0]),
                (Build::Header, &[0, 2]),
                (Build::Body, &[3]),
            ],
        ),
        (
            "content-header-wrong-class",
            &[(Build::PublishMethod, &[0]), (Build::Header, &[7, 2])],
        ),
        (
            "content-header-malformed",
            &[(Build::PublishMethod, &[0]), (Build::Header, &[0x10, 2])],
        ),
    ];
    for (name, steps) in on_channel_1 {
        let built = steps
            .iter()
            .fold(opened([0; 4]), |i, &(kind, args)| i.build(0, 0, kind, args));
        s.add(name, built.settle());
    }
    // Exchange types warren must ask the broker about (B7), on a probe connection of its own.
    // `ExchangeDeclare` arguments: the type (5 "bogus", 8 "x-consistent-hash", which only the
    // broker knows), then flags (0x20: exchange "x"; 0x02: nowait).
    s.add(
        "exchange-type-learnt-from-the-broker",
        opened([0; 4])
            .build(0, 0, Build::ExchangeDeclare, &[8, 0x20])
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .settle()
            .build(1, 0, Build::ExchangeDeclare, &[8, 0x20])
            .settle(),
    );
    s.add(
        "exchange-types-asked-together-with-pipelined-publishes",
        opened([0; 4])
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .settle()
            .build(0, 0, Build::ExchangeDeclare, &[5, 0x22])
            .build(0, 0, Build::Publish, &[0, 3, 0])
            .build(1, 0, Build::ExchangeDeclare, &[8, 0x22])
            .build(1, 0, Build::Publish, &[0, 3, 0])
            .settle(),
    );
    // Stream and quorum queues (B7). `TypedDeclare` flags: 0x20 names "q" (+1 quorum, +4
    // non-durable); each misuse then comes from a second client on the same upstream, which
    // warren must close alone with RabbitMQ's close, the type learnt from the first's
    // confirmed declare.
    let typed = |flags: u8| {
        opened([0; 4])
            .build(0, 0, Build::TypedDeclare, &[flags, 0])
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .settle()
    };
    s.add(
        "stream-get",
        typed(0x20).build(1, 0, Build::Get, &[0x20]).settle(),
    );
    s.add(
        "stream-purge",
        typed(0x20).build(1, 0, Build::QueueOther, &[0x20]).settle(),
    );
    s.add(
        "stream-consume-without-acks",
        typed(0x20)
            .build(1, 0, Build::Qos, &[0, 10])
            .build(1, 0, Build::StreamConsume, &[0x51])
            .settle(),
    );
    // `StreamConsume` flags 0x58: from the word "bogus", 0x5c: from true; no offsets.
    s.add(
        "stream-consume-from-a-word",
        typed(0x20)
            .build(1, 0, Build::StreamConsume, &[0x58])
            .settle(),
    );
    s.add(
        "stream-consume-from-a-boolean",
        typed(0x20)
            .build(1, 0, Build::Qos, &[0, 10])
            .build(1, 0, Build::StreamConsume, &[0x5c])
            .settle(),
    );
    s.add(
        "stream-consume-under-global-qos",
        typed(0x20)
            .build(1, 0, Build::Qos, &[0, 10])
            .build(1, 0, Build::Qos, &[4, 10])
            .build(1, 0, Build::StreamConsume, &[0x50])
            .settle(),
    );
    s.add(
        "quorum-consume-under-global-qos",
        typed(0x21)
            .build(1, 0, Build::Qos, &[4, 10])
            .build(1, 0, Build::Consume, &[0x40])
            .settle(),
    );
    s.add(
        "stream-declared-non-durable",
        opened([0; 4])
            .build(0, 0, Build::TypedDeclare, &[0x24, 0])
            .settle(),
    );
    // A stream consumer with acks reads a message the broker delivers, then nacks it, or
    // recovers while it is out.
    let reading = || {
        typed(0x20)
            .build(1, 0, Build::Qos, &[0, 10])
            .build(1, 0, Build::StreamConsume, &[0x50])
            .settle()
            .op(HubOp::Broker, &[0, 2, 0, 2])
            .settle()
    };
    s.add(
        "stream-nack-of-a-delivery",
        reading().build(1, 0, Build::Ack, &[1, 1]).settle(),
    );
    s.add(
        "stream-recover-while-a-delivery-is-out",
        reading().build(1, 0, Build::Recover, &[2]).settle(),
    );
    s.add(
        "exchange-type-probe-unanswered",
        opened([0; 4])
            .build(0, 0, Build::ExchangeDeclare, &[8, 0x20])
            .op(HubOp::Advance, &[7]),
    );
    for (name, ch, which) in [
        ("connection-close", 192u8, 0u8),
        ("connection-close-ok-unasked", 192, 1),
        ("update-secret", 192, 2),
        ("heartbeat", 192, 3),
        ("tune-ok-after-open", 192, 4),
        ("connection-open-again", 192, 5),
        ("connection-close-on-channel", 0, 0),
        ("heartbeat-on-channel", 0, 3),
    ] {
        s.add(
            name,
            opened([0; 4])
                .build(0, ch, Build::Connection, &[which])
                .settle(),
        );
    }
    s.add(
        "frame-on-unopened-channel",
        cfg([0; 4]).raw(0, &publish_frames(3)),
    );
    s.add(
        "channel-over-channel-max",
        cfg([0, 0, CLIENT_ONE_CHANNEL, 0])
            .build(0, 0, Build::Open, &[])
            .build(0, 224, Build::Open, &[]),
    );
    s.add(
        "channel-65535",
        cfg([0; 4]).build(0, 255, Build::Open, &[0xff, 0xff]),
    );
    s.add(
        "content-split-across-reads",
        opened([0; 4])
            .build(0, 0, Build::PublishMethod, &[0])
            .settle()
            .build(0, 0, Build::Header, &[0, 4])
            .op(HubOp::CanaryPublish, &[])
            .build(0, 0, Build::Body, &[3])
            .build(0, 0, Build::Body, &[4])
            .settle(),
    );
    s.add(
        "message-over-max-size",
        publish(opened([SMALL_MESSAGES, 0, 0, 0]), 0, 6, 0).settle(),
    );
    s.add(
        "unfinished-publish-over-buffer-limit",
        opened([SMALL_BUFFER, 0, 0, 0])
            .build(0, 0, Build::PublishMethod, &[0])
            .build(0, 0, Build::Header, &[0, 7])
            .build(0, 0, Build::Body, &[4])
            .build(0, 0, Build::Body, &[4])
            .build(0, 0, Build::Body, &[4]),
    );
    s.add(
        "unfinished-publish-then-drop",
        opened([0; 4])
            .build(0, 0, Build::PublishMethod, &[0])
            .build(0, 0, Build::Header, &[0, 3])
            .op(HubOp::Drop, &[0])
            .settle(),
    );
    s.add(
        "client-frame-too-large",
        publish(opened([0, 0, CLIENT_SMALL_FRAMES, 0]), 0, 6, 2),
    );
    s.add(
        "client-frame-bad-end",
        opened([0; 4]).raw(0, &raw_frame(1, 1, &[0, 60, 0, 80], 0)),
    );
    s.add(
        "client-frame-unknown-type",
        opened([0; 4]).raw(0, &raw_frame(4, 1, b"", FRAME_END)),
    );
    s.add(
        "partial-frame-then-drop",
        opened([0; 4])
            .raw(0, &publish_frames(1)[..9])
            .op(HubOp::Drop, &[0]),
    );
    s.add(
        "method-too-short",
        opened([0; 4]).raw(0, &frame(FrameType::Method, 1, &[0, 60])),
    );
    s.add(
        "method-bad-table",
        opened([0; 4]).raw(
            0,
            &method_frame(
                1,
                ids::QUEUE_DECLARE,
                &Args::new()
                    .u16(0)
                    .short(b"q")
                    .bit(false)
                    .table_body(b"\x01kZ")
                    .done(),
            ),
        ),
    );
    s.add(
        "waiting-open-dials-second-upstream",
        cfg([0, BROKER_ONE_CHANNEL, 0, 0])
            .raw(
                0,
                &[encode::channel_open(1).to_vec(), publish_frames(1)].concat(),
            )
            .raw(0, &encode::channel_open(2))
            .settle(),
    );
    s.add(
        "all-upstreams-full",
        cfg([ONE_UPSTREAM, BROKER_ONE_CHANNEL, 0, 0])
            .raw(0, &encode::channel_open(1))
            .raw(0, &publish_frames(1))
            .settle(),
    );
    s.add(
        "waiting-open-closed-before-placement",
        cfg([ONE_UPSTREAM, BROKER_TWO_CHANNELS, 0, 0])
            .raw(0, &encode::channel_open(1))
            .raw(0, &encode::channel_open(2))
            .raw(0, &close_bye(2))
            .raw(0, &close_bye(1))
            .settle(),
    );
    s.add(
        "spread-over-three-upstreams",
        cfg([SPREAD | THREE_UPSTREAMS, BROKER_TWO_CHANNELS, 0, 0])
            .raw(0, &encode::channel_open(1))
            .raw(0, &encode::channel_open(2))
            .raw(0, &encode::channel_open(3))
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .settle(),
    );
    s.add(
        "upstream-idle-close",
        cfg([0, BROKER_ONE_CHANNEL, 0, 0])
            .raw(0, &encode::channel_open(1))
            .settle()
            .raw(0, &close_bye(1))
            .settle()
            .op(HubOp::Advance, &[8])
            .settle()
            .op(HubOp::Advance, &[8]),
    );
    s.add(
        "pool-idle-expiry",
        opened([0; 4])
            .raw(0, &close_bye(1))
            .settle()
            .op(HubOp::Advance, &[7])
            .settle(),
    );
    s.add(
        "client-heartbeat-timeout",
        opened([0, 0, CLIENT_HEARTBEAT_5, 0])
            .op(HubOp::Advance, &[6])
            .op(HubOp::Advance, &[6]),
    );
    s.add(
        "client-heartbeats-kept",
        opened([0, BROKER_HEARTBEAT_5, CLIENT_HEARTBEAT_5, 0])
            .op(HubOp::Advance, &[4])
            .build(0, 192, Build::Connection, &[3])
            .op(HubOp::Advance, &[4])
            .build(0, 192, Build::Connection, &[3])
            .op(HubOp::Advance, &[5]),
    );
    s.add(
        "close-timeout-without-close-ok",
        opened([0; 4])
            .build(0, 0, Build::Open, &[])
            .op(HubOp::Advance, &[5]),
    );
    s.add(
        "close-ok-after-proxy-close",
        opened([0; 4])
            .build(0, 0, Build::Open, &[])
            .build(0, 192, Build::Connection, &[1])
            .raw(0, &publish_frames(1)),
    );
    s.add(
        "slow-client",
        opened([0; 4])
            .build(0, 0, Build::Consume, &[0x10])
            .settle()
            .op(HubOp::Slow, &[0])
            .settle(),
    );
    s.add(
        "drop-with-everything",
        opened([0; 4])
            .raw(0, &encode::channel_open(2))
            .raw(0, &encode::channel_open(3))
            .build(0, 1, Build::QueueDeclare, &[0x04])
            .build(0, 2, Build::Consume, &[0x20])
            .build(0, 0, Build::PublishMethod, &[0])
            .settle()
            .op(HubOp::Drop, &[0])
            .settle(),
    );
    s.add(
        "late-events-for-gone-client",
        opened([0; 4])
            .op(HubOp::Drop, &[0])
            .settle()
            .raw(0, &publish_frames(1))
            .op(HubOp::Slow, &[0])
            .op(HubOp::Drop, &[0])
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1)),
    );
    s.add(
        "deliveries-rechunked-to-client",
        consuming([0, 0, CLIENT_SMALL_FRAMES, 0], 0x42)
            .op(HubOp::Broker, &[0, 2, 0, 6])
            .op(HubOp::Broker, &[0, 3, 0, 0])
            .op(HubOp::CanaryDelivery, &[]),
    );
    s.add(
        "deliveries-from-small-frame-broker",
        consuming([0, BROKER_SMALL_FRAMES, 0, 0], 0x42).op(HubOp::Broker, &[0, 2, 0, 6]),
    );
    s.add(
        "blocked-and-unblocked",
        opened([0; 4])
            .op(HubOp::Broker, &[0, 5, 1, 0])
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .settle()
            .op(HubOp::Broker, &[0, 5, 0, 0]),
    );
    s.add(
        "replies-in-pieces",
        opened([0; 4])
            .build(0, 0, Build::QueueDeclare, &[0x04])
            .build(0, 0, Build::Consume, &[0])
            .build(0, 0, Build::Confirm, &[0])
            .op(HubOp::Replies, &[0, 1])
            .op(HubOp::CanaryPublish, &[])
            .op(HubOp::Replies, &[0, 1])
            .raw(0, &close_bye(1))
            .op(HubOp::Replies, &[0, 2]),
    );
    s.add(
        "timers-and-spurious-timeouts",
        opened([0; 4])
            .op(HubOp::Advance, &[0])
            .op(HubOp::Advance, &[1])
            .op(HubOp::Advance, &[2])
            .op(HubOp::CanaryDelivery, &[])
            .op(HubOp::Advance, &[3]),
    );
    // Every method of the protocol, with zeroed arguments, on an open channel.
    for (i, spec) in METHODS.iter().enumerate() {
        s.add(
            &format!("any-{}", spec.name),
            opened([0; 4])
                .build(0, 0, Build::AnyMethod, &[i as u8])
                .settle(),
        );
    }
    s
}

/// A fuzz target's corpus folder name, its seeds, and its body.
type Target = (&'static str, Seeds, fn(&[u8]));

fn all_seeds() -> Vec<Target> {
    use warren_testkit::fuzz;
    vec![
        (
            "frame_decoder",
            frame_decoder_seeds(),
            fuzz::frame_decoder as fn(&[u8]),
        ),
        (
            "method_decoder",
            method_decoder_seeds(),
            fuzz::method_decoder,
        ),
        (
            "client_handshake",
            client_handshake_seeds(),
            fuzz::client_handshake,
        ),
        ("hub_client", hub_client_seeds(), fuzz::hub_client),
    ]
}

#[test]
fn seeds_pass_their_fuzz_bodies_and_are_written_on_request() {
    let write = std::env::var_os("WARREN_WRITE_CORPUS").is_some();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut total = 0;
    for (target, seeds, body) in all_seeds() {
        assert!(!seeds.0.is_empty());
        let dir = root.join(target);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in seeds.0 {
            assert!(
                bytes.len() <= 4096,
                "{target}/{name} is {} bytes; keep seeds small",
                bytes.len()
            );
            body(&bytes);
            if write {
                std::fs::write(dir.join(&name), &bytes).unwrap();
            }
            total += 1;
        }
    }
    assert!(total < 500, "{total} seeds; keep the corpus small");
}

#[test]
fn seeds_hit_the_paths_they_are_named_for() {
    // A few spot checks that the seeds are what their names say, so a silent change in a
    // builder cannot turn the corpus into noise.
    use warren_core::frame::{FrameDecoder, FrameError};
    use warren_core::table::validate_table;
    use warren_core::wire::WireError;
    let seeds = frame_decoder_seeds();
    let mut buf = seeds.named("bad-end").into();
    assert_eq!(
        FrameDecoder::new(4096).decode(&mut buf),
        Err(FrameError::BadEnd(0))
    );
    let mut buf = seeds.named("session-plain").into();
    let mut n = 0;
    while FrameDecoder::new(131_072)
        .decode(&mut buf)
        .unwrap()
        .is_some()
    {
        n += 1;
    }
    assert_eq!((n, buf.len()), (11, 0));
    let seeds = method_decoder_seeds();
    assert_eq!(validate_table(seeds.named("table-deep-arrays")), Ok(()));
    assert_eq!(
        validate_table(seeds.named("table-max-depth-arrays")),
        Ok(())
    );
    assert_eq!(
        validate_table(seeds.named("table-nan-f64")),
        Err(WireError::BadFloat)
    );
    assert_eq!(validate_table(seeds.named("table-every-type")), Ok(()));
    let everything = seeds.named("header-every-property");
    assert_eq!(
        warren_core::content::parse_header(everything).map(|h| h.body_size),
        Ok(1 << 40)
    );
}

#[test]
fn hub_seeds_reach_what_they_are_named_for() {
    use warren_testkit::fuzz::hub_client_stats;
    let seeds = hub_client_seeds();
    let stats = |n: &str| hub_client_stats(seeds.named(n));
    let closed_with = |n: &str, code: u16| {
        let s = stats(n);
        assert!(
            s.client_closes.contains_key(&code),
            "{n}: no close with {code}: {s:?}"
        );
    };
    // The canary publishes twice in every run; the fuzzed client once more here.
    assert!(stats("open-publish-close").publishes >= 3);
    let recycled = stats("recycle-to-next-client");
    assert!(recycled.channels_recycled >= 1 && recycled.opens_from_pool >= 1);
    assert!(stats("waiting-open-dials-second-upstream").upstream_connects >= 2);
    assert!(stats("client-heartbeat-timeout").heartbeat_misses >= 1);
    assert_eq!(stats("slow-client").slow_clients, 1);
    assert!(stats("deliveries-rechunked-to-client").deliveries >= 4);
    closed_with("second-open", 504);
    closed_with("frame-on-unopened-channel", 504);
    closed_with("publish-immediate", 540);
    closed_with("qos-prefetch-size", 540);
    closed_with("exchange-unknown-type", 503);
    closed_with(
        "exchange-types-asked-together-with-pipelined-publishes",
        503,
    );
    closed_with("exchange-type-probe-unanswered", 320);
    for n in [
        "stream-get",
        "stream-purge",
        "stream-consume-without-acks",
        "quorum-consume-under-global-qos",
        "stream-nack-of-a-delivery",
    ] {
        closed_with(n, 540);
    }
    closed_with("stream-recover-while-a-delivery-is-out", 541);
    let refused =
        warren_testkit::fuzz::hub_client_trace(seeds.named("stream-declared-non-durable"));
    assert!(
        refused.iter().any(|l| l.contains("channel.close 406")
            && l.contains("invalid property 'non-durable' for queue 'q'")),
        "{refused:#?}"
    );
    let asked = |n: &str, kind: &str| {
        let probe = format!(r#"<- ch1 exchange.declare "" "{kind}""#);
        let trace = warren_testkit::fuzz::hub_client_trace(seeds.named(n));
        (trace.iter()).filter(|l| l.ends_with(&probe)).count()
    };
    assert_eq!(
        asked("exchange-type-learnt-from-the-broker", "x-consistent-hash"),
        1
    );
    let together = "exchange-types-asked-together-with-pipelined-publishes";
    assert_eq!(asked(together, "x-consistent-hash"), 1);
    assert_eq!(asked(together, "bogus"), 1);
    closed_with("client-frame-too-large", 501);
    closed_with("tx-commit-then-publish", 504);
    closed_with("unfinished-publish-over-buffer-limit", 506);
    closed_with("channel-over-channel-max", 530);
    let lf_delete = seeds.named("canary-queue-delete-by-a-name-with-lf");
    let trace = warren_testkit::fuzz::hub_client_trace(lf_delete);
    assert!(
        trace
            .iter()
            .any(|l| l.contains("c3 <- ch1 channel.close 405")),
        "the fuzzed client meets the canary's lock: {trace:#?}"
    );
}
