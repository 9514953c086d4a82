//! Snapshots of what the codec makes of each method the proxy reads, and of the error texts
//! peers and operators see. A change here is a change in behaviour on the wire or in logs:
//! review the `.snap` diff, then accept it with `cargo insta review`.

use warren_core::frame::{FrameDecoder, FrameError};
use warren_core::method::{
    self, decode, encode, ids, Close, ConnectionStart, MethodId, StartOk, Tune,
};
use warren_core::reply::{self, Reply};
use warren_core::table::{longstr, FieldTable, FieldValue};
use warren_core::wire::WireError;
use warren_testkit::frames::*;

/// Decodes the payload of one whole encoded frame.
fn decode_frame(frame: &[u8]) -> Result<method::Method, WireError> {
    let mut buf = frame.into();
    let f = FrameDecoder::new(1 << 20)
        .decode(&mut buf)
        .expect("valid frame")
        .expect("whole frame");
    assert!(buf.is_empty());
    decode(f.payload())
}

/// Pretty `Debug` with byte vectors (`Vec<u8>` fields such as queue names and consumer tags)
/// shown as byte strings, so that the snapshots read like the wire and not like a column of
/// numbers.
fn render(value: &impl std::fmt::Debug) -> String {
    let pretty = format!("{value:#?}");
    let mut out = String::new();
    let mut rest = pretty.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let bytes = after.find(']').and_then(|close| {
            let inner = &after[..close];
            let bytes: Option<Vec<u8>> = inner
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().ok())
                .collect();
            bytes.filter(|b| !b.is_empty()).map(|b| (b, close))
        });
        match bytes {
            Some((b, close)) => {
                out.push_str(&format!("b\"{}\"", b.escape_ascii()));
                rest = &after[close + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn close() -> Close {
    Close {
        code: 406,
        text: "PRECONDITION_FAILED - inequivalent arg 'durable'".into(),
        class_id: 50,
        method_id: 10,
    }
}

#[test]
fn decode_of_encoded_methods() {
    let tune = Tune {
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 60,
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "connection_start",
            encode::start(&ConnectionStart {
                server_properties: FieldTable::default()
                    .with("product", longstr("RabbitMQ"))
                    .with(
                        "capabilities",
                        FieldValue::Table(
                            FieldTable::default()
                                .with("authentication_failure_close", FieldValue::Bool(true)),
                        ),
                    ),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })
            .to_vec(),
        ),
        (
            "connection_start_ok_plain",
            start_ok_plain(b"\0guest\0guest", true),
        ),
        (
            "connection_start_ok_amqplain",
            start_ok_amqplain("guest", "guest"),
        ),
        ("connection_tune", encode::tune(tune, false).to_vec()),
        ("connection_tune_ok", encode::tune(tune, true).to_vec()),
        ("connection_open", encode::open("/prod").to_vec()),
        ("connection_open_ok", encode::open_ok().to_vec()),
        ("connection_close", encode::close(0, &close()).to_vec()),
        ("connection_close_ok", encode::close_ok(0).to_vec()),
        (
            "connection_blocked",
            encode::blocked("low on memory").to_vec(),
        ),
        ("connection_unblocked", encode::unblocked().to_vec()),
        (
            "connection_update_secret_ok",
            encode::update_secret_ok().to_vec(),
        ),
        ("channel_open", encode::channel_open(7).to_vec()),
        ("channel_open_ok", encode::channel_open_ok(7).to_vec()),
        ("channel_flow", encode::flow(7, false, false).to_vec()),
        ("channel_flow_ok", encode::flow(7, true, true).to_vec()),
        ("channel_close", encode::close(7, &close()).to_vec()),
        ("channel_close_ok", encode::close_ok(7).to_vec()),
        (
            "queue_delete",
            encode::queue_delete(7, b"amq.gen-1").to_vec(),
        ),
    ];
    for (name, frame) in cases {
        insta::assert_snapshot!(format!("encoded_{name}"), render(&decode_frame(&frame)));
    }
}

#[test]
fn decode_of_hand_built_client_and_broker_methods() {
    let p = |id: MethodId, a: Args| method_payload(id, &a.done());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "basic_publish",
            method_payload(
                ids::BASIC_PUBLISH,
                &publish_args(b"amq.direct", b"rk", false, false),
            ),
        ),
        (
            "basic_publish_mandatory_immediate",
            method_payload(ids::BASIC_PUBLISH, &publish_args(b"", b"q", true, true)),
        ),
        (
            "queue_declare_exclusive_nowait",
            p(
                ids::QUEUE_DECLARE,
                Args::new()
                    .u16(0)
                    .short(b"")
                    .bit(false) // passive
                    .bit(true) // durable
                    .bit(true) // exclusive
                    .bit(false) // auto-delete
                    .bit(true) // nowait
                    .table(&FieldTable::default().with("x-expires", FieldValue::I32(60_000))),
            ),
        ),
        (
            "queue_declare_passive",
            p(
                ids::QUEUE_DECLARE,
                Args::new()
                    .u16(0)
                    .short(b"orders")
                    .bit(true)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .table(&FieldTable::default()),
            ),
        ),
        (
            "queue_declare_stream",
            p(
                ids::QUEUE_DECLARE,
                Args::new()
                    .u16(0)
                    .short(b"events")
                    .bit(false)
                    .bit(true)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .table(&FieldTable::default().with("x-queue-type", longstr("stream"))),
            ),
        ),
        (
            "basic_get",
            p(
                ids::BASIC_GET,
                Args::new().u16(0).short(b"events").bit(true),
            ),
        ),
        (
            "queue_purge",
            p(
                ids::QUEUE_PURGE,
                Args::new().u16(0).short(b"events").bit(false),
            ),
        ),
        (
            "queue_declare_ok",
            p(
                ids::QUEUE_DECLARE_OK,
                Args::new().short(b"amq.gen-JzTY20BRgKO").u32(3).u32(1),
            ),
        ),
        (
            "queue_delete",
            p(
                ids::QUEUE_DELETE,
                Args::new()
                    .u16(0)
                    .short(b"orders")
                    .bit(true)
                    .bit(false)
                    .bit(false),
            ),
        ),
        (
            "exchange_declare",
            p(
                ids::EXCHANGE_DECLARE,
                Args::new()
                    .u16(0)
                    .short(b"events")
                    .short(b"topic")
                    .bit(true) // passive
                    .bit(true)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .table(&FieldTable::default()),
            ),
        ),
        (
            "basic_qos",
            p(ids::BASIC_QOS, Args::new().u32(0).u16(1000).bit(false)),
        ),
        (
            "basic_qos_global",
            p(ids::BASIC_QOS, Args::new().u32(0).u16(10).bit(true)),
        ),
        (
            "basic_consume",
            p(
                ids::BASIC_CONSUME,
                Args::new()
                    .u16(0)
                    .short(b"orders")
                    .short(b"ctag-1")
                    .bit(false) // no-local
                    .bit(false) // no-ack
                    .bit(true) // exclusive
                    .bit(true) // nowait
                    .table(&FieldTable::default().with("x-priority", FieldValue::I32(5))),
            ),
        ),
        (
            "basic_consume_ok",
            p(ids::BASIC_CONSUME_OK, Args::new().short(b"amq.ctag-abc")),
        ),
        (
            "basic_cancel",
            p(ids::BASIC_CANCEL, Args::new().short(b"ctag-1").bit(true)),
        ),
        (
            "basic_cancel_ok",
            p(ids::BASIC_CANCEL_OK, Args::new().short(b"ctag-1")),
        ),
        (
            "basic_recover",
            p(ids::BASIC_RECOVER, Args::new().bit(true)),
        ),
        (
            "basic_recover_async",
            p(ids::BASIC_RECOVER_ASYNC, Args::new().bit(false)),
        ),
        (
            "basic_ack",
            p(ids::BASIC_ACK, Args::new().u64(42).bit(true)),
        ),
        (
            "basic_reject",
            p(ids::BASIC_REJECT, Args::new().u64(7).bit(true)),
        ),
        (
            "confirm_select_is_opaque",
            p(ids::CONFIRM_SELECT, Args::new().bit(false)),
        ),
        (
            "unknown_method_is_opaque",
            method_payload(MethodId::new(60, 99), b"whatever"),
        ),
        (
            "truncated_close",
            p(ids::CONNECTION_CLOSE, Args::new().u16(320).short(b"bye")),
        ),
        (
            "start_ok_with_bad_table",
            p(
                ids::CONNECTION_START_OK,
                Args::new()
                    .table_body(b"\x01kZ")
                    .short(b"PLAIN")
                    .long(b"\0u\0p")
                    .short(b"en_US"),
            ),
        ),
        ("short_method_id", vec![0, 60, 0]),
    ];
    for (name, payload) in cases {
        insta::assert_snapshot!(format!("payload_{name}"), render(&decode(&payload)));
    }
}

#[test]
fn start_ok_decode_keeps_every_field_type() {
    let payload = method_payload(
        ids::CONNECTION_START_OK,
        &Args::new()
            .table(&every_type_table())
            .short(b"PLAIN")
            .long(b"\0guest\0guest")
            .short(b"en_US")
            .done(),
    );
    let decoded = decode(&payload).unwrap();
    assert_eq!(
        decoded,
        method::Method::StartOk(StartOk {
            client_properties: every_type_table(),
            mechanism: "PLAIN".into(),
            response: b"\0guest\0guest".to_vec(),
            locale: "en_US".into(),
        })
    );
    insta::assert_snapshot!("payload_start_ok_every_field_type", render(&decoded));
}

#[test]
fn frame_error_texts() {
    let errors = [
        FrameError::TooLarge {
            kind: 3,
            size: 131_081,
            max: 131_072,
        },
        FrameError::BadEnd(0x00),
        FrameError::BadType(b'A'),
    ];
    let text: Vec<String> = errors
        .iter()
        .map(|e| format!("{} {e}", e.reply_code()))
        .collect();
    insta::assert_snapshot!(text.join("\n"));
}

#[test]
fn wire_error_texts() {
    let errors = [
        WireError::Truncated,
        WireError::TrailingBytes,
        WireError::BadFieldType(b'Z'),
        WireError::BadFloat,
        WireError::BadLength,
    ];
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!(text.join("\n"));
}

#[test]
fn reply_texts() {
    let replies = [
        // As the handshake builds it: the FrameError text already starts with the code name.
        Reply::new(
            reply::FRAME_ERROR,
            FrameError::BadEnd(0x41)
                .to_string()
                .trim_start_matches("FRAME_ERROR - "),
        ),
        Reply::new(
            reply::SYNTAX_ERROR,
            format!("malformed method: {}", WireError::Truncated),
        ),
        Reply::new(
            reply::ACCESS_REFUSED,
            "Login was refused using authentication mechanism PLAIN",
        )
        .caused_by(ids::CONNECTION_START_OK),
        Reply::new(reply::CONNECTION_FORCED, "broker connection lost"),
        Reply::new(reply::NOT_ALLOWED, "vhost 'nope' not found"),
        Reply::new(reply::NOT_IMPLEMENTED, "immediate=true").caused_by(ids::BASIC_PUBLISH),
        Reply::new(999, "a code AMQP does not name"),
        Reply::verbatim(404, "NOT_FOUND - no queue 'q' in vhost '/'"),
    ];
    let text: Vec<String> = replies
        .iter()
        .map(|r| format!("{r} (class_method {:?})", r.class_method))
        .collect();
    insta::assert_snapshot!(text.join("\n"));
}
