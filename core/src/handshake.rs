//! The client leg of the connection handshake (B13): warren plays the broker up to
//! `Connection.Open`, then hands a [`ClientHello`] to the hub that owns the client's
//! credentials. `Connection.OpenOk` is *not* sent here: the hub sends it once the broker has
//! accepted the same credentials (B2).
//!
//! Sans-IO like the rest of `core`: feed bytes with [`ClientHandshake::handle_input`] or the
//! deadline with [`ClientHandshake::handle_timeout`], then drain
//! [`ClientHandshake::poll_output`] to `None` and read [`ClientHandshake::poll_timeout`].

use crate::credentials::{parse_sasl, Credentials, SaslError, Secret};
use crate::frame::{FrameDecoder, FrameError, FrameType, FRAME_MIN_SIZE, PROTOCOL_HEADER};
use crate::method::{self, encode, ConnectionStart, Method, MethodId, StartOk, Tune};
use crate::reply::{self, Reply};
use crate::table::{longstr, FieldTable, FieldValue};
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
}

/// Instructions from the handshake to its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeOutput {
    /// Write these bytes to the client.
    Send(Bytes),
    /// Flush what was sent, then close the socket. Nothing follows.
    Close,
    /// The handshake reached `Connection.Open`; hand the client to its hub. Bytes the client
    /// pipelined after `Open` stay in the read buffer.
    Done(Box<ClientHello>),
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
        }
    }

    /// The properties warren announces in `Connection.Start`. Capabilities are the ones that
    /// hold through the proxy.
    #[must_use]
    pub fn server_properties() -> FieldTable {
        let caps = [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ]
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

    /// Consumes what it can from the client's read buffer. Bytes after `Connection.Open` are
    /// left in `buf` for the hub.
    pub fn handle_input(&mut self, buf: &mut BytesMut) {
        while self.stage != Stage::Finished {
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
                _ => {
                    return self.fail(Reply::new(
                        reply::UNEXPECTED_FRAME,
                        "expected a connection method on channel 0 during the handshake",
                    ))
                }
            }
            let id = frame.method_id();
            match method::decode(frame.payload()) {
                Ok(m) => self.on_method(m, id),
                Err(e) => self.fail(Reply::new(
                    reply::SYNTAX_ERROR,
                    format!("malformed method: {e}"),
                )),
            }
        }
    }

    /// Drops a client that did not reach `Connection.Open` in time. Spurious calls are no-ops.
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
                    })));
            }
            (_, Method::ConnectionClose(_)) => {
                self.out
                    .push_back(HandshakeOutput::Send(encode::close_ok(0)));
                self.out.push_back(HandshakeOutput::Close);
            }
            (stage, _) => {
                let what = id.map_or_else(|| "method".to_owned(), |id| id.to_string());
                self.fail(Reply::new(
                    reply::COMMAND_INVALID,
                    format!(
                        "unexpected {what} during handshake stage {:?}",
                        stage.name()
                    ),
                ))
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
        match parse_sasl(&ok.mechanism, &ok.response) {
            Ok((user, password)) => {
                let tune = Tune {
                    channel_max: self.config.channel_max,
                    frame_max: self.config.frame_max,
                    heartbeat: self.config.heartbeat,
                };
                self.out
                    .push_back(HandshakeOutput::Send(encode::tune(tune, false)));
                self.stage = Stage::TuneOk(Login { user, password });
            }
            Err(SaslError::UnsupportedMechanism(m)) => self.fail(Reply::new(
                reply::COMMAND_INVALID,
                format!("unknown authentication mechanism '{m}'"),
            )),
            Err(SaslError::Malformed(why)) => {
                self.refuse_login(Reply::new(reply::ACCESS_REFUSED, why))
            }
        }
    }

    fn on_tune_ok(&mut self, login: Login, t: Tune) {
        let ours = self.config;
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
        if frame_max < FRAME_MIN_SIZE {
            return self.fail(Reply::new(
                reply::NOT_ALLOWED,
                format!("frame_max={frame_max} < {FRAME_MIN_SIZE} min size"),
            ));
        }
        if frame_max > ours.frame_max {
            return self.fail(Reply::new(
                reply::NOT_ALLOWED,
                format!("frame_max={frame_max} > {} max size", ours.frame_max),
            ));
        }
        if channel_max > ours.channel_max {
            return self.fail(Reply::new(
                reply::NOT_ALLOWED,
                format!("channel_max={channel_max} > {} max", ours.channel_max),
            ));
        }
        let tune = Tune {
            channel_max,
            frame_max,
            heartbeat: t.heartbeat,
        };
        self.stage = Stage::Open(login, tune);
    }

    fn refuse_login(&mut self, r: Reply) {
        if self.capabilities.authentication_failure_close {
            self.fail(r);
        } else {
            self.stage = Stage::Finished;
            self.out.push_back(HandshakeOutput::Close);
        }
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
            Stage::TuneOk(_) => "tune-ok",
            Stage::Open(..) => "open",
            Stage::Finished => "finished",
        }
    }
}
