//! The client leg of the connection handshake (B13): warren plays the broker up to
//! `Connection.Open`. It stops twice for a verdict from [`crate::admission`]: after
//! `StartOk` ([`HandshakeOutput::Login`]: the password is checked as RabbitMQ checks it, before
//! `Tune`), and at `Open` ([`HandshakeOutput::Done`]: the vhost is checked and the client joins
//! its hub). `Connection.OpenOk` is *not* sent here: the hub sends it once the broker has
//! accepted the same credentials and vhost (B2).
//!
//! Sans-IO like the rest of `core`: feed bytes with [`ClientHandshake::handle_input`] or the
//! deadline with [`ClientHandshake::handle_timeout`], then drain
//! [`ClientHandshake::poll_output`] to `None` and read [`ClientHandshake::poll_timeout`].

use crate::credentials::{parse_sasl, Credentials, SaslError, Secret};
use crate::frame::{FrameDecoder, FrameError, FrameType, FRAME_MIN_SIZE, PROTOCOL_HEADER};
use crate::method::{self, encode, ids, ConnectionStart, Method, MethodId, StartOk, Tune};
use crate::reply::{self, Reply};
use crate::table::{longstr, FieldTable, FieldValue};
use crate::wire::WireError;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Largest frame accepted before the client has authenticated: enough for a JWT in a PLAIN
/// response, small enough that an unauthenticated peer cannot make the proxy buffer much.
pub const HANDSHAKE_FRAME_MAX: u32 = 32 * 1024;

/// What warren offers clients in `Connection.Tune`, and how long they have to get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Largest frame warren accepts from the client.
    pub frame_max: u32,
    /// Highest channel number a client may use (the per-client channel cap of B3).
    pub channel_max: u16,
    /// Heartbeat interval proposed to the client, in seconds.
    pub heartbeat: u16,
    /// Time from accept to `Connection.Open` before the socket is dropped.
    pub timeout: Duration,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Capabilities a client advertised in `StartOk` that change what the proxy sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCapabilities {
    /// Wants `Connection.Close 403` on a failed login instead of a dropped socket.
    pub authentication_failure_close: bool,
    /// Understands `Connection.Blocked` / `Unblocked` (B12).
    pub connection_blocked: bool,
    /// Understands a broker-sent `basic.cancel`.
    pub consumer_cancel_notify: bool,
}

/// A client that has reached `Connection.Open`: who it is and what it negotiated.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientHello {
    /// The pool key.
    pub credentials: Credentials,
    /// Negotiated limits for this client.
    pub tune: Tune,
    /// Advertised capabilities.
    pub capabilities: ClientCapabilities,
    /// `connection_name` from the client properties, for logs and metrics.
    pub connection_name: Option<String>,
    /// `product` from the client properties.
    pub product: Option<String>,
    /// `version` from the client properties.
    pub version: Option<String>,
}

/// Instructions from the handshake to its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeOutput {
    /// Write these bytes to the client.
    Send(Bytes),
    /// Flush what was sent, then close the socket. Nothing follows.
    Close,
    /// The client sent `StartOk` with these credentials: answer with
    /// [`ClientHandshake::accept_login`] or [`ClientHandshake::refuse`]. Input waits until then.
    Login {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// The handshake reached `Connection.Open`; hand the client to its hub. Bytes the client
    /// pipelined after `Open` stay in the read buffer.
    Done(Box<ClientHello>),
}

/// Capabilities warren announces to clients: the ones that hold through the proxy.
pub const SERVER_CAPABILITIES: [&str; 9] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

/// What a client refused with `reply` is sent before its socket closes, as RabbitMQ does it:
/// a refused login (403) to a client that did not advertise `authentication_failure_close`
/// gets no `Connection.Close`, only a closed socket. The one place this rule is written.
#[must_use]
pub fn refusal(reply: &Reply, caps: ClientCapabilities) -> Option<Bytes> {
    (reply.code != reply::ACCESS_REFUSED || caps.authentication_failure_close)
        .then(|| encode::close(0, &method::Close::from(reply)))
}

/// The user and password from `StartOk`, kept until `Open` names the vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Login {
    user: String,
    password: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Header,
    StartOk,
    /// `StartOk` arrived; waiting for the verdict on the credentials.
    Verdict(Login),
    TuneOk(Login),
    Open(Login, Tune),
    Finished,
}

/// The per-connection handshake state machine.
#[derive(Debug)]
pub struct ClientHandshake {
    config: HandshakeConfig,
    stage: Stage,
    deadline: Instant,
    decoder: FrameDecoder,
    out: VecDeque<HandshakeOutput>,
    capabilities: ClientCapabilities,
    connection_name: Option<String>,
    product: Option<String>,
    version: Option<String>,
    /// What the client's `TuneOk` settled, once it arrived.
    tuned: Option<Tune>,
}

impl ClientHandshake {
    /// Starts a handshake for a connection accepted at `now`.
    #[must_use]
    pub fn new(now: Instant, config: HandshakeConfig) -> Self {
        ClientHandshake {
            config,
            stage: Stage::Header,
            deadline: now + config.timeout,
            decoder: FrameDecoder::new(HANDSHAKE_FRAME_MAX),
            out: VecDeque::new(),
            capabilities: ClientCapabilities::default(),
            connection_name: None,
            product: None,
            version: None,
            tuned: None,
        }
    }

    /// The properties warren announces in `Connection.Start`.
    #[must_use]
    pub fn server_properties() -> FieldTable {
        let caps = SERVER_CAPABILITIES
            .iter()
            .fold(FieldTable::default(), |t, c| {
                t.with(c, FieldValue::Bool(true))
            });
        FieldTable::default()
            .with("product", longstr("warren"))
            .with("version", longstr(env!("CARGO_PKG_VERSION")))
            .with("platform", longstr("Rust"))
            .with(
                "information",
                longstr("warren, an AMQP 0-9-1 multiplexing proxy in front of RabbitMQ"),
            )
            .with("capabilities", FieldValue::Table(caps))
    }

    /// The capabilities the client advertised (known from `StartOk` on).
    #[must_use]
    pub fn capabilities(&self) -> ClientCapabilities {
        self.capabilities
    }

    /// The limits the client's `TuneOk` settled, from then on (also after `Open`): its
    /// heartbeat runs from there, as RabbitMQ's does.
    #[must_use]
    pub fn tuned(&self) -> Option<Tune> {
        self.tuned
    }

    /// When the handshake must have reached `Connection.Open` (accept plus the timeout).
    #[must_use]
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the client has sent the protocol header (and been sent `Connection.Start`).
    #[must_use]
    pub fn started(&self) -> bool {
        self.stage != Stage::Header
    }

    /// The credentials are good: `Tune` goes out. The client `waited` that long for the
    /// verdict, which does not count against its deadline: it gets the rest of its time for
    /// its own steps (a verdict just before the deadline would leave it none). Call
    /// [`ClientHandshake::handle_input`] again for bytes that arrived meanwhile.
    pub fn accept_login(&mut self, waited: Duration) {
        let Stage::Verdict(login) = std::mem::replace(&mut self.stage, Stage::Finished) else {
            return;
        };
        self.deadline += waited;
        let tune = Tune {
            channel_max: self.config.channel_max,
            frame_max: self.config.frame_max,
            heartbeat: self.config.heartbeat,
        };
        self.out
            .push_back(HandshakeOutput::Send(encode::tune(tune, false)));
        self.stage = Stage::TuneOk(login);
    }

    /// Ends the handshake with `reply` (see [`refusal`]) and closes the socket.
    pub fn refuse(&mut self, reply: &Reply) {
        tracing::debug!(code = reply.code, text = %reply.text, "client refused");
        if self.stage != Stage::Header {
            if let Some(close) = refusal(reply, self.capabilities) {
                self.out.push_back(HandshakeOutput::Send(close));
            }
        }
        self.out.push_back(HandshakeOutput::Close);
        self.stage = Stage::Finished;
    }

    /// Consumes what it can from the client's read buffer. Bytes after `Connection.Open`, and
    /// bytes that arrive while a verdict is awaited, are left in `buf`.
    pub fn handle_input(&mut self, buf: &mut BytesMut) {
        while !matches!(self.stage, Stage::Finished | Stage::Verdict(_)) {
            if self.stage == Stage::Header {
                if buf.len() < PROTOCOL_HEADER.len() {
                    // A wrong first byte can be answered before the rest arrives.
                    if !buf.is_empty() && buf[0] != b'A' {
                        self.refuse_header();
                    }
                    return;
                }
                let header = buf.split_to(PROTOCOL_HEADER.len());
                if &header[..] != PROTOCOL_HEADER {
                    self.refuse_header();
                    return;
                }
                self.send_start();
                continue;
            }
            let frame = match self.decoder.decode(buf) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => return self.fail_frame(e),
            };
            match frame.kind() {
                FrameType::Heartbeat => continue,
                FrameType::Method if frame.channel() == 0 => {}
                kind => return self.fail(reply::misplaced_frame(kind.octet(), frame.payload())),
            }
            let id = frame.method_id();
            match method::decode(frame.payload()) {
                Ok(m) => self.on_method(m, id),
                Err(e) => self.fail(malformed(frame.payload(), e)),
            }
        }
    }

    /// Drops a client that did not reach `Connection.Open` in time (waiting for a verdict
    /// counts). Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stage != Stage::Finished && now >= self.deadline {
            tracing::debug!(stage = self.stage.name(), "handshake timeout");
            self.stage = Stage::Finished;
            self.out.push_back(HandshakeOutput::Close);
        }
    }

    /// The next instruction; drain to `None` after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<HandshakeOutput> {
        self.out.pop_front()
    }

    /// When [`ClientHandshake::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.stage != Stage::Finished).then_some(self.deadline)
    }

    fn refuse_header(&mut self) {
        // RabbitMQ answers an unsupported protocol header with its own and closes.
        self.out
            .push_back(HandshakeOutput::Send(Bytes::from_static(PROTOCOL_HEADER)));
        self.out.push_back(HandshakeOutput::Close);
        self.stage = Stage::Finished;
    }

    fn send_start(&mut self) {
        // The same for every client: encoded once per process.
        static START: OnceLock<Bytes> = OnceLock::new();
        let frame = START.get_or_init(|| {
            encode::start(&ConnectionStart {
                server_properties: Self::server_properties(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })
        });
        self.out.push_back(HandshakeOutput::Send(frame.clone()));
        self.stage = Stage::StartOk;
    }

    fn on_method(&mut self, m: Method, id: Option<MethodId>) {
        match (std::mem::replace(&mut self.stage, Stage::Finished), m) {
            (Stage::StartOk, Method::StartOk(ok)) => self.on_start_ok(ok),
            (Stage::TuneOk(login), Method::TuneOk(t)) => self.on_tune_ok(login, t),
            (Stage::Open(login, tune), Method::Open { vhost }) => {
                self.out
                    .push_back(HandshakeOutput::Done(Box::new(ClientHello {
                        credentials: Credentials {
                            user: login.user,
                            password: login.password,
                            vhost,
                        },
                        tune,
                        capabilities: self.capabilities,
                        connection_name: self.connection_name.take(),
                        product: self.product.take(),
                        version: self.version.take(),
                    })));
            }
            (_, Method::ConnectionClose(_)) => {
                self.out
                    .push_back(HandshakeOutput::Send(encode::close_ok(0)));
                self.out.push_back(HandshakeOutput::Close);
            }
            (stage, _) => {
                let reply = Reply::new(
                    reply::CHANNEL_ERROR,
                    format!(
                        "unexpected method in connection state {}",
                        stage.rabbitmq_state()
                    ),
                );
                self.fail(match id {
                    Some(id) => reply.caused_by(id),
                    None => reply,
                })
            }
        }
    }

    fn on_start_ok(&mut self, ok: StartOk) {
        let props = &ok.client_properties;
        if let Some(caps) = props.get_table("capabilities") {
            self.capabilities = ClientCapabilities {
                authentication_failure_close: caps.get_bool("authentication_failure_close"),
                connection_blocked: caps.get_bool("connection.blocked"),
                consumer_cancel_notify: caps.get_bool("consumer_cancel_notify"),
            };
        }
        self.connection_name = props.get_str("connection_name");
        self.product = props.get_str("product");
        self.version = props.get_str("version");
        match parse_sasl(&ok.mechanism, &ok.response) {
            Ok((user, password)) => {
                self.out.push_back(HandshakeOutput::Login {
                    user: user.clone(),
                    password: password.clone(),
                });
                self.stage = Stage::Verdict(Login { user, password });
            }
            Err(SaslError::UnsupportedMechanism(m)) => self.fail(
                Reply::new(
                    reply::COMMAND_INVALID,
                    format!("unknown authentication mechanism '{m}'"),
                )
                .caused_by(ids::CONNECTION_START_OK),
            ),
            Err(SaslError::Malformed(why)) => self.refuse(&Reply::new(reply::ACCESS_REFUSED, why)),
        }
    }

    fn on_tune_ok(&mut self, login: Login, t: Tune) {
        let ours = self.config;
        let checks = [
            ("frame_max", t.frame_max, FRAME_MIN_SIZE, ours.frame_max),
            (
                "channel_max",
                u32::from(t.channel_max),
                1,
                u32::from(ours.channel_max),
            ),
        ];
        for (field, client, min, max) in checks {
            if let Some(reply) = refused_tune_value(field, client, min, max) {
                return self.fail(reply);
            }
        }
        // Zero takes ours.
        let frame_max = if t.frame_max == 0 {
            ours.frame_max
        } else {
            t.frame_max
        };
        let channel_max = if t.channel_max == 0 {
            ours.channel_max
        } else {
            t.channel_max
        };
        let tune = Tune {
            channel_max,
            frame_max,
            heartbeat: t.heartbeat,
        };
        self.tuned = Some(tune);
        self.stage = Stage::Open(login, tune);
    }

    fn fail_frame(&mut self, e: FrameError) {
        self.fail(Reply::new(
            e.reply_code(),
            e.to_string().trim_start_matches("FRAME_ERROR - "),
        ));
    }

    fn fail(&mut self, r: Reply) {
        tracing::debug!(code = r.code, text = %r.text, "handshake refused");
        self.out.push_back(HandshakeOutput::Send(encode::close(
            0,
            &method::Close::from(&r),
        )));
        self.out.push_back(HandshakeOutput::Close);
        self.stage = Stage::Finished;
    }
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::Header => "protocol header",
            Stage::StartOk => "start-ok",
            Stage::Verdict(_) => "login",
            Stage::TuneOk(_) => "tune-ok",
            Stage::Open(..) => "open",
            Stage::Finished => "finished",
        }
    }

    /// The state RabbitMQ names in its refusal of a method out of turn.
    fn rabbitmq_state(&self) -> &'static str {
        match self {
            Stage::Header | Stage::StartOk | Stage::Verdict(_) => "starting",
            Stage::TuneOk(_) => "tuning",
            Stage::Open(..) => "opening",
            Stage::Finished => "closing",
        }
    }
}

/// RabbitMQ's refusal of a `TuneOk` value below `min` or above `max` (zero, no limit, is
/// either). RabbitMQ 3.10 also refuses a client's zero when it has a limit; warren takes it
/// as "the server's value", as it always has, which no client working with RabbitMQ sends.
fn refused_tune_value(field: &str, client: u32, min: u32, max: u32) -> Option<Reply> {
    let (side, bound) = if client != 0 && client < min {
        ("lower than the minimum", min)
    } else if max != 0 && client > max {
        ("higher than the maximum", max)
    } else {
        return None;
    };
    let text = format!("negotiated {field} = {client} is {side} allowed value ({bound})");
    Some(Reply::new(reply::NOT_ALLOWED, text).caused_by(ids::CONNECTION_TUNE))
}

/// RabbitMQ's refusal of a handshake method that does not decode: arguments it cannot split
/// into fields are 501 "cannot decode", anything else (an unknown method, a bad field table)
/// a 502 naming the fault.
fn malformed(payload: &[u8], e: WireError) -> Reply {
    match method::split_payload(payload) {
        Ok((mid, args)) if matches!(e, WireError::Truncated | WireError::TrailingBytes) => {
            reply::cannot_decode(args).caused_by(mid)
        }
        _ => Reply::new(reply::SYNTAX_ERROR, format!("malformed method: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;
    use crate::frame::Frame;
    use crate::method::{encode, StartOk};
    use crate::table::FieldTable;
    use std::fmt::Write as _;

    /// A client's bytes in, a readable trace of what warren answers out.
    struct Run {
        hs: ClientHandshake,
        buf: BytesMut,
        t0: Instant,
        trace: String,
        done: Option<ClientHello>,
        closed: bool,
    }

    impl Run {
        fn new(config: HandshakeConfig) -> Run {
            let t0 = crate::test_epoch();
            Run {
                hs: ClientHandshake::new(t0, config),
                buf: BytesMut::new(),
                t0,
                trace: String::new(),
                done: None,
                closed: false,
            }
        }

        fn feed(&mut self, bytes: &[u8]) {
            self.buf.extend_from_slice(bytes);
            self.hs.handle_input(&mut self.buf);
            self.drain();
        }

        fn at(&mut self, d: Duration) {
            self.hs.handle_timeout(self.t0 + d);
            self.drain();
        }

        fn drain(&mut self) {
            while let Some(o) = self.hs.poll_output() {
                match o {
                    HandshakeOutput::Send(b) if b[..] == PROTOCOL_HEADER[..] => {
                        let _ = writeln!(self.trace, "<- protocol header");
                    }
                    HandshakeOutput::Send(b) => {
                        let mut buf = BytesMut::from(&b[..]);
                        let f: Frame = FrameDecoder::new(1 << 20)
                            .decode(&mut buf)
                            .expect("valid")
                            .expect("whole");
                        let line = match method::decode(f.payload()).expect("decodes") {
                            Method::ConnectionClose(c) => format!("close {} {:?}", c.code, c.text),
                            Method::Tune(t) => format!(
                                "tune channel_max={} frame_max={} heartbeat={}",
                                t.channel_max, t.frame_max, t.heartbeat
                            ),
                            _ => f.method_id().map(|id| id.to_string()).unwrap_or_default(),
                        };
                        let _ = writeln!(self.trace, "<- {line}");
                    }
                    HandshakeOutput::Close => {
                        self.closed = true;
                        let _ = writeln!(self.trace, "close socket");
                    }
                    HandshakeOutput::Login { user, password } => {
                        // The credentials are good in these tests; admission's own tests
                        // cover the verdicts.
                        let _ = writeln!(self.trace, "login {user} {password}: accepted");
                        self.hs.accept_login(Duration::ZERO);
                        self.hs.handle_input(&mut self.buf);
                    }
                    HandshakeOutput::Done(h) => {
                        let _ = writeln!(
                            self.trace,
                            "done {} tune={:?} caps={:?} name={:?}",
                            h.credentials, h.tune, h.capabilities, h.connection_name
                        );
                        self.done = Some(*h);
                    }
                }
            }
        }
    }

    fn start_ok(mechanism: &str, response: &[u8], failure_close: bool) -> Bytes {
        let caps = FieldTable::default()
            .with(
                "authentication_failure_close",
                FieldValue::Bool(failure_close),
            )
            .with("connection.blocked", FieldValue::Bool(true));
        encode::start_ok(&StartOk {
            client_properties: FieldTable::default()
                .with("connection_name", longstr("orders-worker-7"))
                .with("capabilities", FieldValue::Table(caps)),
            mechanism: mechanism.into(),
            response: response.to_vec(),
            locale: "en_US".into(),
        })
    }

    fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> Bytes {
        encode::tune(
            Tune {
                channel_max,
                frame_max,
                heartbeat,
            },
            true,
        )
    }

    #[test]
    fn a_full_handshake_ends_at_open_without_open_ok() {
        let mut r = Run::new(HandshakeConfig::default());
        r.feed(PROTOCOL_HEADER);
        r.feed(&start_ok("PLAIN", b"\0app\0secret", true));
        r.feed(&tune_ok(0, 65_536, 30));
        // Open and a pipelined Channel.Open in one read: the latter stays for the hub.
        let mut open_and_more = encode::open("/prod").to_vec();
        open_and_more.extend_from_slice(&encode::channel_open(1));
        r.feed(&open_and_more);
        let hello = r.done.take().expect("done");
        assert_eq!(hello.credentials.password, Secret::new("secret"));
        assert_eq!(
            r.buf.len(),
            encode::channel_open(1).len(),
            "pipelined bytes kept"
        );
        assert!(r.hs.poll_timeout().is_none());
        insta::assert_snapshot!(r.trace);
    }

    #[test]
    fn refusals_follow_rabbitmq() {
        let mut table = String::new();
        let cases: Vec<(&str, Vec<Bytes>)> = vec![
            (
                "wrong protocol header",
                vec![Bytes::from_static(b"AMQP\x00\x00\x09\x00")],
            ),
            (
                "HTTP instead of AMQP",
                vec![Bytes::from_static(b"GET / HTTP/1.1\r\n")],
            ),
            (
                "unknown mechanism",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    start_ok("EXTERNAL", b"", true),
                ],
            ),
            (
                "malformed PLAIN, with authentication_failure_close",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    start_ok("PLAIN", b"nobody", true),
                ],
            ),
            (
                "malformed PLAIN, without authentication_failure_close",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    start_ok("PLAIN", b"nobody", false),
                ],
            ),
            (
                "frame_max below the minimum",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    start_ok("PLAIN", b"\0u\0p", true),
                    tune_ok(0, 1024, 0),
                ],
            ),
            (
                "frame_max above the offer",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    start_ok("PLAIN", b"\0u\0p", true),
                    tune_ok(0, 1 << 20, 0),
                ],
            ),
            (
                "channel_max above the offer",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    start_ok("PLAIN", b"\0u\0p", true),
                    tune_ok(4000, 4096, 0),
                ],
            ),
            (
                "Open before TuneOk",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    start_ok("PLAIN", b"\0u\0p", true),
                    encode::open("/"),
                ],
            ),
            (
                "a frame larger than the pre-login bound",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    Frame::new(FrameType::Method, 0, &vec![0u8; 40_000]).freeze(),
                ],
            ),
            (
                "content on channel 1 during the handshake",
                vec![
                    Bytes::from_static(PROTOCOL_HEADER),
                    Frame::new(FrameType::Body, 1, b"x").freeze(),
                ],
            ),
        ];
        for (name, inputs) in cases {
            let mut r = Run::new(HandshakeConfig::default());
            for i in &inputs {
                r.feed(i);
            }
            assert!(r.closed, "{name}: closed");
            assert!(r.done.is_none(), "{name}: not done");
            let last: Vec<&str> = r
                .trace
                .lines()
                .filter(|l| !l.contains("connection.start"))
                .collect();
            let _ = writeln!(table, "{name}: {}", last.join(" | "));
        }
        insta::assert_snapshot!(table);
    }

    #[test]
    fn a_client_that_stalls_is_dropped_at_the_timeout() {
        let config = HandshakeConfig {
            timeout: Duration::from_secs(10),
            ..HandshakeConfig::default()
        };
        let mut r = Run::new(config);
        r.feed(PROTOCOL_HEADER);
        assert_eq!(r.hs.poll_timeout(), Some(r.t0 + Duration::from_secs(10)));
        r.at(Duration::from_secs(9));
        assert!(!r.closed, "a spurious early timeout does nothing");
        r.at(Duration::from_secs(10));
        assert!(r.closed);
        assert!(r.hs.poll_timeout().is_none());
        insta::assert_snapshot!(r.trace);
    }
}
