//! Scripted fake AMQP clients, sans-IO like the hub they talk to.
//!
//! A [`FakeClient`] runs the client side of the handshake, then a [`Step`] script: open
//! channels, declare queues, publish tagged messages (with or without confirms), consume
//! with acks, get, stall, stop reading, misbehave, close or drop. While it runs it checks
//! everything it receives — frames only on channels it has open, replies only to requests
//! it made, content in sequence, delivery tags 1, 2, 3... per channel, consumer tags it owns,
//! deliveries from the queue it consumes, returns and confirms only for its own publishes,
//! per-origin order — and records any surprise as a violation. What it got is kept for the
//! cross-checks against the broker's log (confirms the broker sent must arrive).
//!
//! # Layout
//!
//! This file holds the client itself ([`FakeClient`]: its state, how it is driven, how its
//! connection ends) and the frame builders the others share. What a client is told to do is
//! in `spec` (the script's steps), `misbehave` (protocol violations on purpose) and
//! `intrusion` (tries on other clients' exclusive queues); `board` is the queue names the
//! clients of a world share. Its state per channel is in `state`; `connection` reads the
//! handshake and channel 0, `channel` reads everything on the other channels, and `script`
//! runs the steps.

use crate::tag::Origin;
use bytes::{Bytes, BytesMut};
use state::{Chan, Phase, Wait};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};
use warren_core::frame::{method_frame, Frame, FrameDecoder, HEARTBEAT, PROTOCOL_HEADER};
use warren_core::method::{ids, Tune};

mod board;
mod channel;
mod connection;
mod intrusion;
mod misbehave;
mod script;
mod spec;
mod state;

pub use board::Board;
pub use intrusion::{Intrusion, IntrusionOutcome};
pub use misbehave::{typed_queue, Misbehaviour, QUORUM_QUEUE, STREAM_QUEUE, UNKNOWN_EXCHANGE_TYPE};
pub use spec::{ClientSpec, Opening, Step, Target};

/// How long a client waits for `Connection.OpenOk` before giving up (client libraries
/// have a connection timeout; warren's own handshake timeout is shorter).
pub const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(15);

/// How long a client waits for `close-ok` after its `Connection.Close`.
pub const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// How a client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// It closed the connection itself and got `close-ok`.
    Finished,
    /// It dropped its socket on purpose.
    Left,
    /// The proxy sent `Connection.Close` with this code.
    Closed(u16, String),
    /// The proxy closed the socket without a `Connection.Close`.
    Dropped,
    /// The network broke the connection (a fault).
    Broken,
    /// The connection was refused (warren not accepting).
    Refused,
    /// The client gave up waiting for what it names: the handshake's next step, a
    /// `close-ok`, or any byte for two heartbeat intervals.
    TimedOut(Waited),
}

/// What a client that gave up on the proxy was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The next step of the handshake (`Start`, `Tune` or `OpenOk`).
    Handshake,
    /// The `CloseOk` of its `Connection.Close`.
    CloseOk,
    /// Anything: the proxy was silent for two heartbeat intervals.
    Heartbeats,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Finished => f.write_str("finished"),
            End::Left => f.write_str("left"),
            End::Closed(code, text) => write!(f, "closed {code} {text:?}"),
            End::Dropped => f.write_str("dropped by the proxy"),
            End::Broken => f.write_str("broken by the network"),
            End::Refused => f.write_str("refused"),
            End::TimedOut(Waited::Handshake) => f.write_str("gave up waiting for the handshake"),
            End::TimedOut(Waited::CloseOk) => f.write_str("gave up waiting for close-ok"),
            End::TimedOut(Waited::Heartbeats) => {
                f.write_str("gave up: the proxy was silent for two heartbeat intervals")
            }
        }
    }
}

/// What the client wants its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOut {
    /// Write bytes.
    Send(Bytes),
    /// Close the socket (after what was written).
    Close,
}

/// A received delivery, get or return, as recorded for the checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Client channel it arrived on.
    pub ch: u16,
    /// Where the message came from.
    pub origin: Origin,
    /// Whether the broker marked it redelivered.
    pub redelivered: bool,
}

/// One fake client connection.
#[derive(Debug)]
pub struct FakeClient {
    /// World number (`c3` is 3).
    pub id: u32,
    /// What it was asked to do.
    pub spec: ClientSpec,
    phase: Phase,
    buf: BytesMut,
    header_seen: bool,
    decoder: FrameDecoder,
    tune: Tune,
    heartbeat: Option<Duration>,
    connected_at: Instant,
    closing_since: Option<Instant>,
    last_tx: Instant,
    last_rx: Instant,
    out: VecDeque<ClientOut>,
    chans: BTreeMap<u16, Chan>,
    /// Publish sequence numbers per channel (continuing across reopenings).
    seqs: BTreeMap<u16, u32>,
    pc: usize,
    wait: Wait,
    reading: bool,
    stalled_until: Option<Instant>,
    unread: BytesMut,
    blocked: bool,
    misbehaved: Option<Misbehaviour>,
    /// How the connection ended, and when.
    pub end: Option<(Instant, End)>,
    /// Everything unexpected the client saw.
    pub violations: Vec<String>,
    /// Publishes it made: (channel, seq).
    pub published: BTreeSet<(u16, u32)>,
    /// Publishes confirmed by an ack: (channel, seq).
    pub acked: BTreeSet<(u16, u32)>,
    /// Publishes nacked.
    pub nacked: BTreeSet<(u16, u32)>,
    /// Messages received.
    pub received: Vec<Received>,
    /// Channel closes received from the proxy: (channel, code).
    pub channel_closes: Vec<(u16, u16)>,
    /// Whether it finished its script (reached the end).
    pub script_done: bool,
    /// When the handshake finished (`Connection.OpenOk`).
    pub opened_at: Option<Instant>,
    /// When the misbehaviour was committed.
    pub misbehaved_at: Option<Instant>,
    /// When it sent `Connection.StartOk` (its login).
    pub start_ok_at: Option<Instant>,
    /// Its intrusions on other clients' exclusive queues and how each ended.
    pub intrusions: Vec<IntrusionOutcome>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl FakeClient {
    /// A client that connects at `now`: it writes the protocol header at once.
    #[must_use]
    pub fn new(id: u32, spec: ClientSpec, now: Instant) -> Self {
        let mut c = FakeClient {
            id,
            spec,
            phase: Phase::Start,
            buf: BytesMut::new(),
            header_seen: false,
            decoder: FrameDecoder::new(131_072),
            tune: Tune {
                channel_max: 0,
                frame_max: 4096,
                heartbeat: 0,
            },
            heartbeat: None,
            connected_at: now,
            closing_since: None,
            last_tx: now,
            last_rx: now,
            out: VecDeque::new(),
            chans: BTreeMap::new(),
            seqs: BTreeMap::new(),
            pc: 0,
            wait: Wait::Nothing,
            reading: true,
            stalled_until: None,
            unread: BytesMut::new(),
            blocked: false,
            misbehaved: None,
            end: None,
            violations: Vec::new(),
            published: BTreeSet::new(),
            acked: BTreeSet::new(),
            nacked: BTreeSet::new(),
            received: Vec::new(),
            channel_closes: Vec::new(),
            script_done: false,
            opened_at: None,
            misbehaved_at: None,
            start_ok_at: None,
            intrusions: Vec::new(),
        };
        match c.spec.opening {
            Opening::Normal => c.send(now, Bytes::from_static(PROTOCOL_HEADER)),
            Opening::Silent => {}
            Opening::WrongHeader => c.send(now, Bytes::from_static(b"AMQP\x00\x01\x00\x00")),
        }
        c
    }

    /// Whether the connection is over.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// Bytes delivered to it that it has not read (a stopped or stalled reader).
    #[must_use]
    pub fn unread_bytes(&self) -> usize {
        self.unread.len()
    }

    /// The heartbeat interval it negotiated.
    #[must_use]
    pub fn heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// The misbehaviour it committed, if any.
    #[must_use]
    pub fn misbehaviour(&self) -> Option<Misbehaviour> {
        self.misbehaved
    }

    /// Whether it reads its socket now (not stopped, not frozen). A driver over real
    /// sockets stops reading while this is false, so the peer feels TCP backpressure.
    #[must_use]
    pub fn is_reading(&self) -> bool {
        self.reading && self.stalled_until.is_none()
    }

    /// A short description of what it is waiting for, for hang reports.
    #[must_use]
    pub fn waiting_for(&self) -> String {
        let step = self
            .spec
            .script
            .get(self.pc.saturating_sub(1))
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "handshake".into());
        format!(
            "{:?} in phase {:?} (step {}: {step})",
            self.wait, self.phase, self.pc
        )
    }

    fn violation(&mut self, what: impl Into<String>) {
        self.violations.push(what.into());
    }

    fn send(&mut self, now: Instant, data: Bytes) {
        self.last_tx = now;
        self.out.push_back(ClientOut::Send(data));
    }

    fn finish(&mut self, now: Instant, end: End) {
        if self.end.is_none() {
            self.end = Some((now, end));
        }
        self.phase = Phase::Done;
    }

    /// The next instruction.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ClientOut> {
        self.out.pop_front()
    }

    /// When [`FakeClient::handle_timeout`] has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        if let Some(until) = self.stalled_until {
            return Some(until);
        }
        let patience = match self.phase {
            Phase::Start | Phase::Tune | Phase::OpenOk => {
                Some(self.connected_at + HANDSHAKE_PATIENCE)
            }
            Phase::Closing => self.closing_since.map(|t| t + CLOSE_PATIENCE),
            _ => None,
        };
        // Heartbeats run from TuneOk on (the spec's rule), not only after OpenOk.
        let hb = self
            .heartbeat
            .filter(|_| matches!(self.phase, Phase::OpenOk | Phase::Running | Phase::Closing))
            .map(|h| {
                let send = self.last_tx + h / 2;
                if self.reading {
                    send.min(self.last_rx + h * 2)
                } else {
                    send
                }
            });
        let wait = match self.wait {
            Wait::Until(t) => Some(t),
            _ => None,
        };
        [patience, hb, wait].into_iter().flatten().min()
    }

    /// Timers: heartbeats, sleeps, the end of a stall.
    pub fn handle_timeout(&mut self, now: Instant, board: &mut Board) {
        if self.is_done() {
            return;
        }
        if matches!(self.phase, Phase::Start | Phase::Tune | Phase::OpenOk)
            && now >= self.connected_at + HANDSHAKE_PATIENCE
        {
            self.out.push_back(ClientOut::Close);
            return self.finish(now, End::TimedOut(Waited::Handshake));
        }
        if self.phase == Phase::Closing
            && self
                .closing_since
                .is_some_and(|t| now >= t + CLOSE_PATIENCE)
        {
            self.out.push_back(ClientOut::Close);
            // Not reading, it could not have seen the close-ok: it is done all the same.
            let end = if self.reading {
                End::TimedOut(Waited::CloseOk)
            } else {
                End::Finished
            };
            return self.finish(now, end);
        }
        if let Some(until) = self.stalled_until {
            if now < until {
                return;
            }
            self.stalled_until = None;
            if self.reading {
                let pending = std::mem::take(&mut self.unread);
                self.consume_bytes(now, &pending, board);
                if self.is_done() {
                    return;
                }
            }
        }
        if let Some(h) = self.heartbeat {
            if matches!(self.phase, Phase::OpenOk | Phase::Running | Phase::Closing) {
                if self.reading && now >= self.last_rx + h * 2 {
                    // Like a real client library: a silent peer is a dead peer.
                    self.out.push_back(ClientOut::Close);
                    return self.finish(now, End::TimedOut(Waited::Heartbeats));
                }
                if now >= self.last_tx + h / 2 {
                    self.send(now, Bytes::from_static(HEARTBEAT));
                }
            }
        }
        self.advance(now, board);
    }

    /// Bytes arrived from the proxy.
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8], board: &mut Board) {
        if self.is_done() {
            return;
        }
        if !self.reading || self.stalled_until.is_some() {
            self.unread.extend_from_slice(data);
            return;
        }
        self.consume_bytes(now, data, board);
    }

    /// The proxy closed the socket (`broken`: the network broke it).
    pub fn handle_closed(&mut self, now: Instant, broken: bool) {
        if self.is_done() {
            return;
        }
        if broken {
            return self.finish(now, End::Broken);
        }
        if self.phase == Phase::Closing {
            // We asked to close; whether or not we read the close-ok, this is the end we wanted.
            return self.finish(now, End::Finished);
        }
        // Whatever is still unread was sent before the close: look at it first.
        if !self.unread.is_empty() && self.reading {
            let pending = std::mem::take(&mut self.unread);
            let mut board = Board::default();
            self.consume_bytes(now, &pending, &mut board);
            if self.is_done() {
                return;
            }
        }
        self.finish(now, End::Dropped);
    }

    /// The connection attempt was refused.
    pub fn refused(&mut self, now: Instant) {
        self.finish(now, End::Refused);
    }

    fn consume_bytes(&mut self, now: Instant, data: &[u8], board: &mut Board) {
        self.last_rx = now;
        self.buf.extend_from_slice(data);
        if !self.header_seen && self.phase == Phase::Start {
            if self.buf.len() < 8 && PROTOCOL_HEADER.starts_with(&self.buf) && self.buf[0] == b'A' {
                return;
            }
            if self.buf.starts_with(PROTOCOL_HEADER) {
                if self.spec.opening != Opening::WrongHeader {
                    self.violation("the proxy refused our protocol header");
                }
                let _ = self.buf.split_to(8);
                return;
            }
            self.header_seen = true;
        }
        loop {
            if self.is_done() {
                return;
            }
            let f = match self.decoder.decode(&mut self.buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let what = format!("undecodable bytes from the proxy: {e}");
                    self.violation(what);
                    self.buf.clear();
                    self.out.push_back(ClientOut::Close);
                    return self.finish(now, End::Left);
                }
            };
            self.frame(now, f, board);
        }
        self.advance(now, board);
    }

    fn frame(&mut self, now: Instant, f: Frame, board: &mut Board) {
        match self.phase {
            Phase::Start | Phase::Tune | Phase::OpenOk => self.handshake_frame(now, f),
            Phase::Running | Phase::Closing => {
                if f.channel() == 0 {
                    self.channel_zero(now, f);
                } else {
                    self.channel_frame(now, f, board);
                }
            }
            Phase::Done => {}
        }
    }
}

// ----- frame builders -------------------------------------------------------------------

/// `basic.publish`.
#[must_use]
pub fn publish(ch: u16, exchange: &str, rk: &str, mandatory: bool, immediate: bool) -> Bytes {
    method_frame(ch, ids::BASIC_PUBLISH, |w| {
        w.u16(0)
            .shortstr(exchange.as_bytes())
            .shortstr(rk.as_bytes())
            .bit(mandatory)
            .bit(immediate);
    })
}

/// The content header, `basic.consume`, `exchange.declare` and `queue.declare` frames are the
/// test kit's (the same bytes the hub scenarios send).
pub use warren_testkit::hub_world::{
    consume, exchange_declare, exchange_declare_with, header, queue_declare, queue_declare_passive,
};
