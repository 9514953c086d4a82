//! warren's side of a broker connection's handshake: protocol header, `Start`, `StartOk` with a
//! client's credentials, `Tune`, `TuneOk`, `Open`, `OpenOk` (B2, B10, B11).
//!
//! One machine serves two owners. A hub dials its own upstreams and opens its vhost at once.
//! Admission proves unknown credentials with a login started at a client's `StartOk`: the
//! broker's `Tune` says the password is good before any vhost is named, so the login waits in
//! [`LoginPhase::AwaitVhost`] until the client's `Open` names one, then opens it and is handed
//! to that vhost's hub as an ordinary upstream (`Login::into_open`).
//!
//! Sans-IO like the rest of `core`: every call takes `now` and returns what to send.

use crate::credentials::Secret;
use crate::frame::{Frame, FrameType, FRAME_MIN_SIZE, HEARTBEAT, PROTOCOL_HEADER};
use crate::hub::interface::HubConfig;
use crate::hub::liveness::{Beat, Liveness};
use crate::method::{self, encode, Method, StartOk, Tune};
use crate::reply::{self, Reply};
use crate::table::{longstr, FieldTable, FieldValue};
use bytes::Bytes;
use smallvec::SmallVec;
use std::time::Instant;

/// Capabilities warren announces to the broker, as a client: the ones the proxy forwards
/// faithfully. A different list from [`crate::handshake::SERVER_CAPABILITIES`], what warren
/// (like RabbitMQ) announces to clients: `consumer_priorities` and `direct_reply_to` are
/// server-side features a client does not announce.
const CLIENT_CAPABILITIES: [&str; 7] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "authentication_failure_close",
    "per_consumer_qos",
];

/// Where a login is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginPhase {
    /// TCP (and TLS) connect in progress.
    Dialing,
    /// Protocol header sent; waiting for `Connection.Start`.
    AwaitStart,
    /// `StartOk` sent; waiting for `Tune` (a refused password arrives here as a close).
    AwaitTune,
    /// The broker accepted the credentials and `TuneOk` went out; no vhost is known yet.
    AwaitVhost,
    /// `Open` sent; waiting for `OpenOk` (a refused vhost arrives here as a close).
    AwaitOpenOk,
    /// `OpenOk` arrived: the connection is ready for channels.
    Open,
}

/// What a frame, a timer or a closed socket did to a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginEvent {
    /// Nothing the owner must act on.
    Nothing,
    /// `Tune` arrived: the broker accepted the user and password.
    Accepted,
    /// `OpenOk` arrived.
    Opened,
    /// The login failed; the connection must be closed. `403`/`530` are the broker refusing
    /// the credentials or the vhost ([`Reply::refuses_login`]); anything else is the broker
    /// being unreachable or going away.
    Failed(Reply),
}

/// The result of one call: bytes to write, in order, and what happened.
#[derive(Debug)]
pub struct LoginStep {
    /// Frames (or the protocol header) to send to the broker.
    pub send: SmallVec<[Bytes; 2]>,
    /// What the owner must act on.
    pub event: LoginEvent,
}

impl LoginStep {
    fn nothing() -> Self {
        LoginStep {
            send: SmallVec::new(),
            event: LoginEvent::Nothing,
        }
    }

    fn failed(reply: Reply) -> Self {
        LoginStep {
            send: SmallVec::new(),
            event: LoginEvent::Failed(reply),
        }
    }
}

/// The limits warren asks of the broker, from the hub configuration.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
}

/// One broker connection's handshake.
#[derive(Debug)]
pub struct Login {
    phase: LoginPhase,
    /// Until the connection is open: the connect-and-login deadline.
    deadline: Instant,
    user: String,
    password: Secret,
    vhost: Option<String>,
    name: String,
    wanted: Wanted,
    tune: Tune,
    liveness: Liveness,
}

impl Login {
    /// A login for `user`/`password` that must reach `OpenOk` by `now + connect_timeout`.
    /// With a `vhost` it opens it right after `Tune`; without one it waits for
    /// [`Login::open`]. `name` is the `connection_name` the broker shows.
    #[must_use]
    pub fn new(
        now: Instant,
        config: &HubConfig,
        user: &str,
        password: &Secret,
        vhost: Option<&str>,
        name: String,
    ) -> Login {
        Login {
            phase: LoginPhase::Dialing,
            deadline: now + config.connect_timeout,
            user: user.to_owned(),
            password: password.clone(),
            vhost: vhost.map(str::to_owned),
            name,
            wanted: Wanted {
                frame_max: config.upstream_frame_max,
                channel_max: config.max_channels_per_upstream,
                heartbeat: config.upstream_heartbeat,
            },
            tune: Tune {
                channel_max: 0,
                frame_max: FRAME_MIN_SIZE,
                heartbeat: 0,
            },
            liveness: Liveness::new(now, 0),
        }
    }

    /// Where the login is.
    #[must_use]
    pub fn phase(&self) -> LoginPhase {
        self.phase
    }

    /// The user it logs in as.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password it logs in with.
    #[must_use]
    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// The vhost it opens (or opened), once known.
    #[must_use]
    pub fn vhost(&self) -> Option<&str> {
        self.vhost.as_deref()
    }

    /// The limits negotiated with the broker (valid from `Tune` on).
    #[must_use]
    pub fn tune(&self) -> Tune {
        self.tune
    }

    /// The largest frame the broker may send on this connection: what warren asks for until
    /// its `TuneOk` has gone out, the negotiated value after. The driver decodes the
    /// connection's bytes under it, so the limit is decided here, once.
    #[must_use]
    pub fn frame_max(&self) -> u32 {
        match self.phase {
            LoginPhase::Dialing | LoginPhase::AwaitStart | LoginPhase::AwaitTune => {
                self.wanted.frame_max
            }
            LoginPhase::AwaitVhost | LoginPhase::AwaitOpenOk | LoginPhase::Open => {
                self.tune.frame_max
            }
        }
    }

    /// Whether the connection is still on its way to `OpenOk`.
    #[must_use]
    pub fn is_connecting(&self) -> bool {
        self.phase != LoginPhase::Open
    }

    /// The heartbeat bookkeeping of the connection (running from `TuneOk` on).
    pub(crate) fn liveness_mut(&mut self) -> &mut Liveness {
        &mut self.liveness
    }

    /// The negotiated limits and the heartbeat state, for the owner of an open connection.
    #[must_use]
    pub(crate) fn into_open(self) -> (Tune, Liveness) {
        (self.tune, self.liveness)
    }

    /// Whether the login's deadline has passed without the connection opening.
    #[must_use]
    pub fn timed_out(&self, now: Instant) -> bool {
        self.phase != LoginPhase::Open && now >= self.deadline
    }

    /// When [`Login::on_timer`] must run next.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            LoginPhase::Open => None,
            // The broker watches heartbeats from TuneOk on.
            LoginPhase::AwaitVhost | LoginPhase::AwaitOpenOk => Some(
                self.liveness
                    .deadline()
                    .map_or(self.deadline, |hb| hb.min(self.deadline)),
            ),
            _ => Some(self.deadline),
        }
    }

    /// TCP (and TLS) is up: the protocol header goes out.
    pub fn on_connected(&mut self, now: Instant) -> LoginStep {
        if self.phase != LoginPhase::Dialing {
            return LoginStep::nothing();
        }
        self.phase = LoginPhase::AwaitStart;
        self.sent_one(now, Bytes::from_static(PROTOCOL_HEADER))
    }

    /// Names the vhost of a login that was started without one. Nothing happens in any
    /// phase but [`LoginPhase::AwaitVhost`] except remembering it.
    pub fn open(&mut self, now: Instant, vhost: &str) -> LoginStep {
        self.vhost = Some(vhost.to_owned());
        if self.phase != LoginPhase::AwaitVhost {
            return LoginStep::nothing();
        }
        self.phase = LoginPhase::AwaitOpenOk;
        self.sent_one(now, encode::open(vhost))
    }

    /// A channel-0 frame (or a heartbeat) from the broker during the login.
    pub fn on_frame(&mut self, now: Instant, frame: &Frame) -> LoginStep {
        self.liveness.received(now);
        if frame.kind() == FrameType::Heartbeat {
            return LoginStep::nothing();
        }
        let m = match (
            frame.kind(),
            frame.channel(),
            method::decode(frame.payload()),
        ) {
            (FrameType::Method, 0, Ok(m)) => m,
            _ => {
                return LoginStep::failed(Reply::new(
                    reply::FRAME_ERROR,
                    "unexpected frame from the broker during the login",
                ))
            }
        };
        match (self.phase, m) {
            (LoginPhase::AwaitStart, Method::Start(start)) => {
                if !start.mechanisms.split(' ').any(|m| m == "PLAIN") {
                    return LoginStep::failed(Reply::new(
                        reply::NOT_IMPLEMENTED,
                        "the broker does not offer the PLAIN mechanism",
                    ));
                }
                self.phase = LoginPhase::AwaitTune;
                self.sent_one(now, encode::start_ok(&self.start_ok()))
            }
            (LoginPhase::AwaitTune, Method::Tune(t)) => {
                self.tune = self.negotiate(t);
                self.liveness = Liveness::new(now, self.tune.heartbeat);
                let mut send = SmallVec::new();
                send.push(encode::tune(self.tune, true));
                match &self.vhost {
                    Some(vhost) => {
                        send.push(encode::open(vhost));
                        self.phase = LoginPhase::AwaitOpenOk;
                    }
                    None => self.phase = LoginPhase::AwaitVhost,
                }
                self.liveness.sent(now);
                LoginStep {
                    send,
                    event: LoginEvent::Accepted,
                }
            }
            (LoginPhase::AwaitOpenOk, Method::OpenOk) => {
                self.phase = LoginPhase::Open;
                LoginStep {
                    send: SmallVec::new(),
                    event: LoginEvent::Opened,
                }
            }
            (_, Method::ConnectionClose(close)) => {
                let mut step = self.sent_one(now, encode::close_ok(0));
                step.event = LoginEvent::Failed(close.reply());
                step
            }
            (phase, m) => {
                tracing::debug!(?phase, method = ?m, "ignoring broker method during the login");
                LoginStep::nothing()
            }
        }
    }

    /// Heartbeats during the login, and its deadline.
    pub fn on_timer(&mut self, now: Instant) -> LoginStep {
        if self.phase == LoginPhase::Open {
            return LoginStep::nothing();
        }
        if now >= self.deadline {
            return LoginStep::failed(Reply::new(
                reply::CONNECTION_FORCED,
                "broker unreachable: timed out connecting",
            ));
        }
        if matches!(self.phase, LoginPhase::AwaitVhost | LoginPhase::AwaitOpenOk) {
            match self.liveness.check(now) {
                Beat::Send => return self.sent_one(now, Bytes::from_static(HEARTBEAT)),
                // A broker silent for two intervals before OpenOk is as dead as one that
                // never answered the dial.
                Beat::Dead => {
                    return LoginStep::failed(Reply::new(
                        reply::CONNECTION_FORCED,
                        "broker unreachable: missed heartbeats during login",
                    ))
                }
                Beat::Idle => {}
            }
        }
        LoginStep::nothing()
    }

    /// The reply for a socket that closed (or a dial that failed) during the login.
    #[must_use]
    pub fn on_socket_closed(&self, reason: &str) -> Reply {
        match self.phase {
            LoginPhase::Dialing | LoginPhase::AwaitStart => Reply::new(
                reply::CONNECTION_FORCED,
                format!("broker unreachable: {reason}"),
            ),
            // warren advertises authentication_failure_close, so a refused login arrives as
            // Connection.Close 403; a bare socket close here is the broker going away, and
            // says nothing about the credentials.
            _ => Reply::new(
                reply::CONNECTION_FORCED,
                format!("the broker closed the connection during the handshake ({reason})"),
            ),
        }
    }

    fn sent_one(&mut self, now: Instant, data: Bytes) -> LoginStep {
        self.liveness.sent(now);
        let mut send = SmallVec::new();
        send.push(data);
        LoginStep {
            send,
            event: LoginEvent::Nothing,
        }
    }

    /// The `StartOk` warren sends: PLAIN with the login's credentials and an informative
    /// `connection_name`.
    fn start_ok(&self) -> StartOk {
        let caps = CLIENT_CAPABILITIES
            .iter()
            .fold(FieldTable::default(), |t, c| {
                t.with(c, FieldValue::Bool(true))
            });
        let user = &self.user;
        let pass = self.password.expose();
        StartOk {
            client_properties: FieldTable::default()
                .with("product", longstr("warren"))
                .with("version", longstr(env!("CARGO_PKG_VERSION")))
                .with("platform", longstr("Rust"))
                .with("connection_name", longstr(&self.name))
                .with("capabilities", FieldValue::Table(caps)),
            mechanism: "PLAIN".into(),
            response: format!("\0{user}\0{pass}").into_bytes(),
            locale: "en_US".into(),
        }
    }

    /// warren's `TuneOk`: the smaller of the broker's limits and the configured ones.
    fn negotiate(&self, broker: Tune) -> Tune {
        let lower = |theirs: u32, ours: u32| if theirs == 0 { ours } else { theirs.min(ours) };
        let w = self.wanted;
        Tune {
            channel_max: lower(u32::from(broker.channel_max), u32::from(w.channel_max)) as u16,
            frame_max: lower(broker.frame_max, w.frame_max),
            heartbeat: if w.heartbeat == 0 {
                broker.heartbeat
            } else {
                lower(u32::from(broker.heartbeat), u32::from(w.heartbeat)) as u16
            },
        }
    }
}
