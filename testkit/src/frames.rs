//! Builders shared by the integration tests: wire frames, method payloads and content
//! headers written by hand (independently of the encoders under test), and the seed corpus
//! for the fuzz targets.

use bytes::BytesMut;
use warren_core::frame::{Frame, FrameType, FRAME_END, PROTOCOL_HEADER};
use warren_core::method::{self, ids, Close, Field, MethodId, MethodSpec, StartOk, Tune};
use warren_core::table::{longstr, FieldTable, FieldValue};

/// The wire bytes of one frame.
pub fn frame(kind: FrameType, channel: u16, payload: &[u8]) -> Vec<u8> {
    Frame::new(kind, channel, payload).freeze().to_vec()
}

/// A frame with an arbitrary type octet and end octet, for malformed inputs.
pub fn raw_frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(end);
    v
}

/// The payload of a whole frame produced by an encoder.
pub fn payload_of(frame: &[u8]) -> Vec<u8> {
    assert_eq!(frame.last(), Some(&FRAME_END));
    frame[7..frame.len() - 1].to_vec()
}

/// A method payload: id then already-encoded arguments.
pub fn method_payload(id: MethodId, args: &[u8]) -> Vec<u8> {
    let mut v = id.class.to_be_bytes().to_vec();
    v.extend_from_slice(&id.method.to_be_bytes());
    v.extend_from_slice(args);
    v
}

/// A method frame built by hand.
pub fn method_frame(channel: u16, id: MethodId, args: &[u8]) -> Vec<u8> {
    frame(FrameType::Method, channel, &method_payload(id, args))
}

/// Appends AMQP argument fields by hand, bits packed like the spec says.
#[derive(Default)]
pub struct Args {
    pub buf: Vec<u8>,
    bits: Option<(usize, u8)>,
}

impl Args {
    pub fn new() -> Self {
        Args::default()
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.bits = None;
        self.buf.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.bits = None;
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.bits = None;
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.bits = None;
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn short(mut self, s: &[u8]) -> Self {
        self.bits = None;
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s);
        self
    }
    pub fn long(mut self, s: &[u8]) -> Self {
        self.bits = None;
        self.buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(s);
        self
    }
    /// A field table with its length prefix, given its encoded body.
    pub fn table_body(self, body: &[u8]) -> Self {
        self.long(body)
    }
    pub fn table(self, t: &FieldTable) -> Self {
        let body = table_body(t);
        self.long(&body)
    }
    pub fn bit(mut self, v: bool) -> Self {
        let (at, pos) = match self.bits {
            Some((at, pos)) if pos < 8 => (at, pos),
            _ => {
                self.buf.push(0);
                (self.buf.len() - 1, 0)
            }
        };
        if v {
            self.buf[at] |= 1 << pos;
        }
        self.bits = Some((at, pos + 1));
        self
    }
    pub fn done(self) -> Vec<u8> {
        self.buf
    }
}

/// The body of an encoded table (without its length prefix).
pub fn table_body(t: &FieldTable) -> Vec<u8> {
    let mut buf = BytesMut::new();
    t.encode(&mut buf);
    buf[4..].to_vec()
}

/// A table holding one value of every field type RabbitMQ knows.
pub fn every_type_table() -> FieldTable {
    FieldTable::default()
        .with("bool", FieldValue::Bool(true))
        .with("i8", FieldValue::I8(-3))
        .with("u8", FieldValue::U8(250))
        .with("i16", FieldValue::I16(-300))
        .with("u16", FieldValue::U16(60000))
        .with("i32", FieldValue::I32(-70000))
        .with("u32", FieldValue::U32(4_000_000_000))
        .with("i64", FieldValue::I64(-5_000_000_000))
        .with("f32", FieldValue::F32(1.5))
        .with("f64", FieldValue::F64(-2.25))
        .with("dec", FieldValue::Decimal(2, 12345))
        .with("str", longstr("héllo"))
        .with("bytes", FieldValue::Bytes(vec![0, 1, 2]))
        .with("ts", FieldValue::Timestamp(1_700_000_000))
        .with("void", FieldValue::Void)
        .with(
            "arr",
            FieldValue::Array(vec![FieldValue::U8(1), longstr("x"), FieldValue::Void]),
        )
        .with(
            "tbl",
            FieldValue::Table(FieldTable::default().with("k", FieldValue::Bool(false))),
        )
}

/// Minimal valid arguments for any method: zeros, short names, a small table.
pub fn minimal_args(spec: &MethodSpec) -> Vec<u8> {
    let mut a = Args::new();
    for (i, f) in spec.fields.iter().enumerate() {
        a = match f {
            Field::Octet => a.u8(i as u8),
            Field::Short => a.u16(i as u16),
            Field::Long => a.u32(i as u32),
            Field::LongLong | Field::Timestamp => a.u64(i as u64),
            Field::ShortStr => a.short(b"x"),
            Field::LongStr => a.long(b"y"),
            Field::Bit => a.bit(i % 2 == 0),
            Field::Table => a.table(&FieldTable::default().with("k", longstr("v"))),
        };
    }
    a.done()
}

/// Client properties like a real client library sends them.
pub fn client_properties(auth_failure_close: bool) -> FieldTable {
    let caps = FieldTable::default()
        .with("publisher_confirms", FieldValue::Bool(true))
        .with(
            "authentication_failure_close",
            FieldValue::Bool(auth_failure_close),
        )
        .with("connection.blocked", FieldValue::Bool(true))
        .with("consumer_cancel_notify", FieldValue::Bool(true));
    FieldTable::default()
        .with("product", longstr("seed-client"))
        .with("connection_name", longstr("seed"))
        .with("capabilities", FieldValue::Table(caps))
}

/// `connection.start-ok` with PLAIN credentials.
pub fn start_ok_plain(response: &[u8], auth_failure_close: bool) -> Vec<u8> {
    method::encode::start_ok(&StartOk {
        client_properties: client_properties(auth_failure_close),
        mechanism: "PLAIN".into(),
        response: response.to_vec(),
        locale: "en_US".into(),
    })
    .to_vec()
}

/// `connection.start-ok` with AMQPLAIN credentials (a table body without its length).
pub fn start_ok_amqplain(user: &str, password: &str) -> Vec<u8> {
    let response = table_body(
        &FieldTable::default()
            .with("LOGIN", longstr(user))
            .with("PASSWORD", longstr(password)),
    );
    method::encode::start_ok(&StartOk {
        client_properties: client_properties(true),
        mechanism: "AMQPLAIN".into(),
        response,
        locale: "en_US".into(),
    })
    .to_vec()
}

/// `connection.tune-ok`.
pub fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> Vec<u8> {
    method::encode::tune(
        Tune {
            channel_max,
            frame_max,
            heartbeat,
        },
        true,
    )
    .to_vec()
}

/// A client's ordinary goodbye: `connection.close` (channel 0) or `channel.close` 200 "bye".
pub fn close_bye(channel: u16) -> Vec<u8> {
    let bye = Close {
        code: 200,
        text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    method::encode::close(channel, &bye).to_vec()
}

/// Everything a client writes from the protocol header to `Connection.Open`, PLAIN login.
pub fn handshake_plain() -> Vec<u8> {
    [
        &PROTOCOL_HEADER[..],
        &start_ok_plain(b"\0guest\0guest", true),
        &tune_ok(2047, 131_072, 60),
        &method::encode::open("/"),
    ]
    .concat()
}

/// The same with AMQPLAIN.
pub fn handshake_amqplain() -> Vec<u8> {
    [
        &PROTOCOL_HEADER[..],
        &start_ok_amqplain("guest", "guest"),
        &tune_ok(0, 0, 0),
        &method::encode::open("/vhost"),
    ]
    .concat()
}

/// A content header payload; `props` must match `flags`.
pub fn content_header(class: u16, body_size: u64, flags: u16, props: &[u8]) -> Vec<u8> {
    let mut v = class.to_be_bytes().to_vec();
    v.extend_from_slice(&0u16.to_be_bytes());
    v.extend_from_slice(&body_size.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(props);
    v
}

/// A basic content header with all 14 properties present.
pub fn content_header_every_property(body_size: u64) -> Vec<u8> {
    let props = Args::new()
        .short(b"text/plain") // content-type
        .short(b"gzip") // content-encoding
        .table(&every_type_table()) // headers
        .u8(2) // delivery-mode
        .u8(9) // priority
        .short(b"corr-1") // correlation-id
        .short(b"amq.rabbitmq.reply-to") // reply-to
        .short(b"60000") // expiration
        .short(b"msg-1") // message-id
        .u64(1_700_000_000) // timestamp
        .short(b"order.created") // type
        .short(b"guest") // user-id
        .short(b"seed") // app-id
        .short(b"") // cluster-id
        .done();
    content_header(60, body_size, 0xFFFC, &props)
}

/// `basic.publish` arguments.
pub fn publish_args(exchange: &[u8], key: &[u8], mandatory: bool, immediate: bool) -> Vec<u8> {
    Args::new()
        .u16(0)
        .short(exchange)
        .short(key)
        .bit(mandatory)
        .bit(immediate)
        .done()
}

/// A whole publish: method, header with every property, and a body in two frames.
pub fn publish_frames(channel: u16) -> Vec<u8> {
    [
        method_frame(
            channel,
            ids::BASIC_PUBLISH,
            &publish_args(b"amq.direct", b"rk", false, false),
        ),
        frame(
            FrameType::Header,
            channel,
            &content_header_every_property(11),
        ),
        frame(FrameType::Body, channel, b"hello"),
        frame(FrameType::Body, channel, b" world"),
    ]
    .concat()
}
