//! The `hub_client` fuzz target (see [`hub_client`] for the world it builds, its input and
//! what it checks) and the [`UpstreamChecker`] of RabbitMQ's connection-level rules it
//! relies on.

use crate::content::parse_header;
use crate::credentials::{Credentials, Secret};
use crate::frame::{
    method_frame, Frame, FrameDecoder, FrameError, FrameType, FRAME_MIN_SIZE, HEARTBEAT,
    PROTOCOL_HEADER,
};
use crate::handshake::{ClientCapabilities, ClientHello};
use crate::hub::{
    ClientId, Hub, HubConfig, HubEvent, HubStats, Input, Output, Peer, Placement, UpstreamId,
};
use crate::method::{self, encode, ids, Close, ConnectionStart, Field, Method, MethodId, Tune};
use crate::table::{FieldTable, FieldValue};
use crate::wire::{Reader, Writer};
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

// ----- the checker ----------------------------------------------------------------------

/// One of the rules by which RabbitMQ closes a whole connection (a "hard" error), as far as
/// what a client sends can break it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// The protocol header, then `start-ok`, `tune-ok` and `open` in order, each after the
    /// broker's prompt, with tune values the broker accepts.
    Handshake,
    /// A frame that does not decode: unknown type, bad end octet, a heartbeat with a payload,
    /// a content header whose property list is malformed (501, 502).
    Malformed,
    /// A frame larger than the negotiated frame_max (501).
    FrameMax,
    /// A channel number above the negotiated channel_max (530).
    ChannelMax,
    /// After the handshake, channel 0 carries only heartbeats and `connection.close` (503,
    /// 505).
    ChannelZero,
    /// A heartbeat on a numbered channel (501).
    HeartbeatChannel,
    /// A method that is unknown, sent by servers only, has arguments that do not match its
    /// layout, or belongs to the connection class but is on a numbered channel (502, 503, 540).
    BadMethod,
    /// A frame other than `channel.open` on a channel that is not open (504).
    UnopenedChannel,
    /// `channel.open` on a channel that is open or opening (504).
    SecondOpen,
    /// A frame on a channel that is closing, other than the `close-ok` that answers the
    /// broker's `channel.close`. RabbitMQ may already have forgotten the channel, and then
    /// reads it as a frame on an unopened channel.
    ClosingChannel,
    /// `channel.close-ok` that answers no `channel.close` (503).
    UnexpectedCloseOk,
    /// Content out of sequence: a header or body without a content method, a header of
    /// another class, bodies beyond the declared size, or another frame on the channel before
    /// the body is complete (505).
    ContentSequence,
    /// `channel.flow active=false` (540).
    FlowInactive,
    /// `basic.publish immediate=true` (540).
    PublishImmediate,
    /// `basic.qos` with a non-zero prefetch_size (540).
    QosPrefetchSize,
    /// `basic.recover` or `basic.recover-async` with requeue=false (540).
    RecoverNoRequeue,
    /// A non-passive `exchange.declare` of a type the broker does not know (503).
    ExchangeType,
    /// `basic.consume` with a tag that a consumer on the channel already has (530).
    ConsumerTagReuse,
    /// A method other than `channel.close` while a `tx.commit` is in flight (503).
    DuringCommit,
    /// Anything but a heartbeat or the answer to the broker's close once the connection is
    /// closing.
    AfterConnectionClose,
}

/// Something warren sent upstream that would make RabbitMQ close the whole connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule.
    pub rule: Rule,
    /// The channel of the offending frame (0 for connection-level frames).
    pub channel: u16,
    /// What was sent, for humans.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} on channel {}: {}",
            self.rule, self.channel, self.detail
        )
    }
}

fn violation(rule: Rule, channel: u16, detail: impl Into<String>) -> Violation {
    Violation {
        rule,
        channel,
        detail: detail.into(),
    }
}

/// The largest frame the checker decodes before calling it oversize without reading it.
const DECODE_CAP: u32 = 1 << 24;

/// The state of one upstream channel number, as the broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// `channel.open` sent and not answered yet. Frames may follow at once: RabbitMQ
    /// processes them in order.
    Opening,
    /// Open.
    Open,
    /// warren sent `channel.close`; only the broker's `close-ok` ends it.
    Closing,
    /// The broker sent `channel.close`; warren owes `close-ok` and may send nothing else.
    ClosedByBroker,
    /// Both sides sent `channel.close`: warren owes `close-ok` and waits for the broker's.
    Crossed,
}

/// Where the connection is, as the broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// Nothing received yet: the protocol header comes first.
    Header,
    AwaitStart,
    /// The broker sent `connection.start`: `start-ok` is next.
    StartOk,
    AwaitTune,
    /// The broker sent `connection.tune`: `tune-ok` is next.
    TuneOk,
    /// `tune-ok` received: `connection.open` is next.
    Open,
    AwaitOpenOk,
    Running,
    /// warren sent `connection.close`.
    Closing,
    /// The broker sent `connection.close`; warren owes `close-ok`.
    BrokerClosed,
    Closed,
}

/// What a channel expects next of a content-carrying method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    None,
    Header,
    Body(u64),
}

#[derive(Debug)]
struct Chan {
    state: ChannelState,
    content: Content,
    /// A `tx.commit` whose `commit-ok` has not come back.
    committing: bool,
    /// Consumer tags live at the broker, in the order warren's frames reached it.
    tags: Vec<Vec<u8>>,
    /// For each `basic.consume` awaiting `consume-ok`: whether the broker names the consumer.
    consumes: VecDeque<bool>,
}

impl Chan {
    fn new(state: ChannelState) -> Self {
        Chan {
            state,
            content: Content::None,
            committing: false,
            tags: Vec::new(),
            consumes: VecDeque::new(),
        }
    }
}

/// Checks the byte stream warren writes to one upstream connection against the rules by
/// which RabbitMQ closes a whole connection (B7: nothing a client sends may do that to the
/// connection it shares with its neighbours).
///
/// It reads what warren sends with [`UpstreamChecker::from_warren`] and learns the broker's
/// side of the conversation from [`UpstreamChecker::from_broker`]: the handshake prompts,
/// channel open and close answers, `tx.commit-ok`, consumer tags the broker chose or
/// cancelled. Like RabbitMQ it processes both streams in order, so its idea of each channel
/// is the broker's at the moment warren's frame arrives.
#[derive(Debug)]
pub struct UpstreamChecker {
    conn: Conn,
    buf: BytesMut,
    offered: Option<Tune>,
    tune: Option<Tune>,
    channels: BTreeMap<u16, Chan>,
    extra_types: Vec<String>,
}

impl UpstreamChecker {
    /// A checker for a fresh connection to a broker that knows the four built-in exchange
    /// types plus `extra_exchange_types` (plugins).
    #[must_use]
    pub fn new(extra_exchange_types: &[String]) -> Self {
        UpstreamChecker {
            conn: Conn::Header,
            buf: BytesMut::new(),
            offered: None,
            tune: None,
            channels: BTreeMap::new(),
            extra_types: extra_exchange_types.to_vec(),
        }
    }

    /// The limits warren accepted in `tune-ok`, once it has sent it.
    #[must_use]
    pub fn negotiated(&self) -> Option<Tune> {
        self.tune
    }

    /// Whether the handshake is complete and the connection not closing.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.conn == Conn::Running
    }

    /// The channel numbers in use with their state, in order.
    pub fn channels(&self) -> impl Iterator<Item = (u16, ChannelState)> + '_ {
        self.channels.iter().map(|(ch, c)| (*ch, c.state))
    }

    /// The consumer tags live on channel `ch`, as far as the broker knows.
    #[must_use]
    pub fn consumer_tags(&self, ch: u16) -> &[Vec<u8>] {
        self.channels.get(&ch).map_or(&[], |c| &c.tags[..])
    }

    /// Bytes warren wrote to the connection, in any chunking. Returns the frames completed by
    /// them, or the first rule they break; after a violation the checker is of no further use.
    pub fn from_warren(&mut self, data: &[u8]) -> Result<Vec<Frame>, Violation> {
        self.buf.extend_from_slice(data);
        if self.conn == Conn::Header {
            let n = self.buf.len().min(PROTOCOL_HEADER.len());
            if self.buf[..n] != PROTOCOL_HEADER[..n] {
                return Err(violation(
                    Rule::Handshake,
                    0,
                    "the connection does not start with the AMQP 0-9-1 protocol header",
                ));
            }
            if n < PROTOCOL_HEADER.len() {
                return Ok(Vec::new());
            }
            let _ = self.buf.split_to(n);
            self.conn = Conn::AwaitStart;
        }
        let mut frames = Vec::new();
        loop {
            // Decoded with room to spare so that an oversize frame is reported by name.
            let max = self.frame_max();
            let decoder = FrameDecoder::new(max.max(DECODE_CAP));
            let ch = match self.buf.get(1..3) {
                Some(b) => u16::from_be_bytes([b[0], b[1]]),
                None => 0,
            };
            match decoder.decode(&mut self.buf) {
                Ok(Some(f)) => {
                    if f.wire_len() as u64 > u64::from(max) {
                        return Err(violation(
                            Rule::FrameMax,
                            ch,
                            format!(
                                "{} is a {}-byte frame, over frame_max {max}",
                                describe(&f),
                                f.wire_len()
                            ),
                        ));
                    }
                    self.check(&f)?;
                    frames.push(f);
                }
                Ok(None) => return Ok(frames),
                Err(FrameError::TooLarge { size, max }) => {
                    return Err(violation(
                        Rule::FrameMax,
                        ch,
                        format!("a {size}-byte frame exceeds frame_max {max}"),
                    ))
                }
                Err(e) => return Err(violation(Rule::Malformed, ch, e.to_string())),
            }
        }
    }

    /// A frame the broker sent on this connection; the checker updates what it implies.
    pub fn from_broker(&mut self, f: &Frame) {
        let Some(mid) = f.method_id() else { return };
        let ch = f.channel();
        if ch == 0 {
            self.conn = match (self.conn, mid) {
                (Conn::AwaitStart, ids::CONNECTION_START) => Conn::StartOk,
                (Conn::AwaitTune, ids::CONNECTION_TUNE) => {
                    if let Ok(Method::Tune(t)) = method::decode(f.payload()) {
                        self.offered = Some(t);
                    }
                    Conn::TuneOk
                }
                (Conn::AwaitOpenOk, ids::CONNECTION_OPEN_OK) => Conn::Running,
                (Conn::Closing, ids::CONNECTION_CLOSE_OK) => Conn::Closed,
                (Conn::Closing | Conn::Closed, _) => self.conn,
                (_, ids::CONNECTION_CLOSE) => Conn::BrokerClosed,
                (c, _) => c,
            };
            return;
        }
        let Some(chan) = self.channels.get_mut(&ch) else {
            return;
        };
        match mid {
            ids::CHANNEL_OPEN_OK if chan.state == ChannelState::Opening => {
                chan.state = ChannelState::Open;
            }
            ids::CHANNEL_CLOSE => match chan.state {
                ChannelState::Opening | ChannelState::Open => {
                    *chan = Chan::new(ChannelState::ClosedByBroker);
                }
                ChannelState::Closing => chan.state = ChannelState::Crossed,
                ChannelState::ClosedByBroker | ChannelState::Crossed => {}
            },
            ids::CHANNEL_CLOSE_OK => match chan.state {
                ChannelState::Closing => {
                    self.channels.remove(&ch);
                }
                ChannelState::Crossed => chan.state = ChannelState::ClosedByBroker,
                _ => {}
            },
            ids::TX_COMMIT_OK => chan.committing = false,
            ids::BASIC_CONSUME_OK => {
                // Only a consume that left the tag to the broker learns it here; a client's
                // own tag was live from the moment the consume arrived.
                let server_named = chan.consumes.pop_front() == Some(true);
                let learnt = match method::decode(f.payload()) {
                    Ok(Method::ConsumeOk { tag }) if server_named => Some(tag),
                    _ => None,
                };
                if let Some(tag) = learnt.filter(|t| !chan.tags.contains(t)) {
                    chan.tags.push(tag);
                }
            }
            ids::BASIC_CANCEL => {
                if let Ok(Method::Cancel { tag }) = method::decode(f.payload()) {
                    chan.tags.retain(|t| *t != tag);
                }
            }
            _ => {}
        }
    }

    fn frame_max(&self) -> u32 {
        match self.tune {
            // RabbitMQ checks the handshake frames against frame-min-size.
            None => FRAME_MIN_SIZE,
            Some(t) if t.frame_max == 0 => u32::MAX,
            Some(t) => t.frame_max,
        }
    }

    fn check(&mut self, f: &Frame) -> Result<(), Violation> {
        let ch = f.channel();
        if f.kind() == FrameType::Heartbeat {
            if ch != 0 {
                return Err(violation(
                    Rule::HeartbeatChannel,
                    ch,
                    "heartbeat on a numbered channel",
                ));
            }
            if !f.payload().is_empty() {
                return Err(violation(Rule::Malformed, 0, "heartbeat with a payload"));
            }
            if self.tune.is_none() {
                return Err(violation(Rule::Handshake, 0, "heartbeat before tune-ok"));
            }
            if self.conn == Conn::Closed {
                return Err(violation(
                    Rule::AfterConnectionClose,
                    0,
                    "heartbeat after the connection closed",
                ));
            }
            return Ok(());
        }
        let is_close = ch == 0 && f.method_id() == Some(ids::CONNECTION_CLOSE);
        match self.conn {
            Conn::Header => Err(violation(Rule::Handshake, ch, "frame before the header")),
            Conn::AwaitStart
            | Conn::AwaitTune
            | Conn::AwaitOpenOk
            | Conn::StartOk
            | Conn::TuneOk
            | Conn::Open
                if is_close =>
            {
                client_method(f)?;
                self.conn = Conn::Closing;
                Ok(())
            }
            Conn::AwaitStart | Conn::AwaitTune | Conn::AwaitOpenOk => Err(violation(
                Rule::Handshake,
                ch,
                format!("{} before the broker's {:?} prompt", describe(f), self.conn),
            )),
            Conn::StartOk => {
                let m = handshake_method(f, ids::CONNECTION_START_OK)?;
                if let Method::StartOk(s) = m {
                    if s.mechanism != "PLAIN" && s.mechanism != "AMQPLAIN" {
                        return Err(violation(
                            Rule::Handshake,
                            0,
                            format!("mechanism {} was not offered", s.mechanism),
                        ));
                    }
                }
                self.conn = Conn::AwaitTune;
                Ok(())
            }
            Conn::TuneOk => {
                let Method::TuneOk(t) = handshake_method(f, ids::CONNECTION_TUNE_OK)? else {
                    return Err(violation(Rule::Handshake, 0, "tune-ok did not decode"));
                };
                let offered = self.offered.unwrap_or(Tune {
                    channel_max: 0,
                    frame_max: 0,
                    heartbeat: 0,
                });
                // RabbitMQ's rule (rabbit_reader:validate_negotiated_integer_value).
                let refused = |client: u32, server: u32, min: u32| {
                    (client != 0 && client < min)
                        || (server != 0 && (client == 0 || client > server))
                };
                if refused(t.frame_max, offered.frame_max, FRAME_MIN_SIZE) {
                    return Err(violation(
                        Rule::Handshake,
                        0,
                        format!(
                            "tune-ok frame_max {} against the offered {}",
                            t.frame_max, offered.frame_max
                        ),
                    ));
                }
                if refused(u32::from(t.channel_max), u32::from(offered.channel_max), 1) {
                    return Err(violation(
                        Rule::Handshake,
                        0,
                        format!(
                            "tune-ok channel_max {} against the offered {}",
                            t.channel_max, offered.channel_max
                        ),
                    ));
                }
                self.tune = Some(t);
                self.conn = Conn::Open;
                Ok(())
            }
            Conn::Open => {
                handshake_method(f, ids::CONNECTION_OPEN)?;
                self.conn = Conn::AwaitOpenOk;
                Ok(())
            }
            Conn::Running => self.running(f),
            Conn::BrokerClosed if ch == 0 && f.method_id() == Some(ids::CONNECTION_CLOSE_OK) => {
                self.conn = Conn::Closed;
                Ok(())
            }
            Conn::Closing | Conn::BrokerClosed | Conn::Closed => Err(violation(
                Rule::AfterConnectionClose,
                ch,
                format!("{} after the connection began closing", describe(f)),
            )),
        }
    }

    fn running(&mut self, f: &Frame) -> Result<(), Violation> {
        let ch = f.channel();
        if ch == 0 {
            if f.kind() != FrameType::Method {
                return Err(violation(
                    Rule::ChannelZero,
                    0,
                    format!("{} on channel 0", describe(f)),
                ));
            }
            let (mid, _) = client_method(f)?;
            if mid == ids::CONNECTION_CLOSE {
                self.conn = Conn::Closing;
                return Ok(());
            }
            return Err(violation(
                Rule::ChannelZero,
                0,
                format!("{mid} on channel 0 of an open connection"),
            ));
        }
        let max = match self.tune.map(|t| t.channel_max) {
            None | Some(0) => u16::MAX,
            Some(m) => m,
        };
        if ch > max {
            return Err(violation(
                Rule::ChannelMax,
                ch,
                format!("channel {ch} exceeds the negotiated channel_max {max}"),
            ));
        }
        let Some(chan) = self.channels.get_mut(&ch) else {
            if f.method_id() == Some(ids::CHANNEL_OPEN) {
                client_method(f)?;
                self.channels.insert(ch, Chan::new(ChannelState::Opening));
                return Ok(());
            }
            return Err(violation(
                Rule::UnopenedChannel,
                ch,
                format!("{} on a channel that is not open", describe(f)),
            ));
        };
        match chan.state {
            ChannelState::Opening | ChannelState::Open => {}
            ChannelState::Closing => {
                return Err(violation(
                    Rule::ClosingChannel,
                    ch,
                    format!("{} after warren's channel.close", describe(f)),
                ))
            }
            ChannelState::ClosedByBroker | ChannelState::Crossed => {
                if f.method_id() != Some(ids::CHANNEL_CLOSE_OK) {
                    return Err(violation(
                        Rule::ClosingChannel,
                        ch,
                        format!(
                            "{} after the broker's channel.close, before close-ok",
                            describe(f)
                        ),
                    ));
                }
                client_method(f)?;
                if chan.state == ChannelState::Crossed {
                    chan.state = ChannelState::Closing;
                } else {
                    self.channels.remove(&ch);
                }
                return Ok(());
            }
        }
        match (chan.content, f.kind()) {
            (Content::Header, FrameType::Header) => {
                let h = parse_header(f.payload())
                    .map_err(|e| violation(Rule::Malformed, ch, format!("content header: {e}")))?;
                if h.class_id != 60 {
                    return Err(violation(
                        Rule::ContentSequence,
                        ch,
                        format!("content header of class {} after basic.publish", h.class_id),
                    ));
                }
                chan.content = match h.body_size {
                    0 => Content::None,
                    n => Content::Body(n),
                };
                return Ok(());
            }
            (Content::Body(rest), FrameType::Body) => {
                let n = f.payload().len() as u64;
                if n > rest {
                    return Err(violation(
                        Rule::ContentSequence,
                        ch,
                        format!("{n} body bytes where {rest} were owed"),
                    ));
                }
                chan.content = match rest - n {
                    0 => Content::None,
                    left => Content::Body(left),
                };
                return Ok(());
            }
            (Content::None, FrameType::Method) => {}
            (Content::None, _) => {
                return Err(violation(
                    Rule::ContentSequence,
                    ch,
                    format!("{} without a content method", describe(f)),
                ))
            }
            (Content::Header | Content::Body(_), _) => {
                return Err(violation(
                    Rule::ContentSequence,
                    ch,
                    format!("{} while the content of a publish was owed", describe(f)),
                ))
            }
        }
        let (mid, m) = client_method(f)?;
        if mid.class == 10 {
            return Err(violation(
                Rule::BadMethod,
                ch,
                format!("{mid} on a numbered channel"),
            ));
        }
        if chan.committing && mid != ids::CHANNEL_CLOSE {
            return Err(violation(
                Rule::DuringCommit,
                ch,
                format!("{mid} while tx.commit is in flight"),
            ));
        }
        if method::spec(mid).is_some_and(|s| s.content) {
            chan.content = Content::Header;
        }
        let broken = |rule: Rule, what: &str| -> Result<(), Violation> {
            Err(violation(rule, ch, what.to_owned()))
        };
        match m {
            Method::ChannelOpen => broken(Rule::SecondOpen, "second channel.open"),
            Method::ChannelClose(_) => {
                *chan = Chan::new(ChannelState::Closing);
                Ok(())
            }
            Method::ChannelCloseOk => broken(
                Rule::UnexpectedCloseOk,
                "channel.close-ok on a channel the broker did not close",
            ),
            Method::Flow { active: false } => {
                broken(Rule::FlowInactive, "channel.flow active=false")
            }
            Method::Publish {
                immediate: true, ..
            } => broken(Rule::PublishImmediate, "basic.publish immediate=true"),
            Method::Qos { prefetch_size } if prefetch_size != 0 => broken(
                Rule::QosPrefetchSize,
                &format!("basic.qos prefetch_size={prefetch_size}"),
            ),
            Method::Recover { requeue: false } => {
                broken(Rule::RecoverNoRequeue, &format!("{mid} requeue=false"))
            }
            Method::ExchangeDeclare {
                kind,
                passive: false,
            } if !matches!(&kind[..], b"direct" | b"fanout" | b"topic" | b"headers")
                && !self.extra_types.iter().any(|t| t.as_bytes() == kind) =>
            {
                broken(
                    Rule::ExchangeType,
                    &format!(
                        "exchange.declare of unknown type {:?}",
                        String::from_utf8_lossy(&kind)
                    ),
                )
            }
            Method::Consume { tag, nowait } => {
                if !tag.is_empty() && chan.tags.contains(&tag) {
                    return broken(
                        Rule::ConsumerTagReuse,
                        &format!(
                            "basic.consume reuses tag {:?}",
                            String::from_utf8_lossy(&tag)
                        ),
                    );
                }
                if !nowait {
                    chan.consumes.push_back(tag.is_empty());
                }
                if !tag.is_empty() {
                    chan.tags.push(tag);
                }
                Ok(())
            }
            Method::Cancel { tag } => {
                chan.tags.retain(|t| *t != tag);
                Ok(())
            }
            _ => {
                if mid == ids::TX_COMMIT {
                    chan.committing = true;
                }
                Ok(())
            }
        }
    }
}

/// Splits and checks a method a client sends: known, client-sendable, arguments exactly of
/// its layout, and decodable.
fn client_method(f: &Frame) -> Result<(MethodId, Method), Violation> {
    let ch = f.channel();
    let bad = |d: String| violation(Rule::BadMethod, ch, d);
    let (mid, args) = method::split_payload(f.payload())
        .map_err(|e| bad(format!("method frame too short: {e}")))?;
    let spec = method::spec(mid).ok_or_else(|| bad(format!("unknown method {mid}")))?;
    if !spec.client_may_send() {
        return Err(bad(format!("{} is sent by servers only", spec.name)));
    }
    method::validate_args(spec, args).map_err(|e| bad(format!("{}: {e}", spec.name)))?;
    let m = method::decode(f.payload()).map_err(|e| bad(format!("{}: {e}", spec.name)))?;
    Ok((mid, m))
}

fn handshake_method(f: &Frame, want: MethodId) -> Result<Method, Violation> {
    if f.kind() != FrameType::Method || f.channel() != 0 {
        return Err(violation(
            Rule::Handshake,
            f.channel(),
            format!("{} during the handshake, expected {want}", describe(f)),
        ));
    }
    let (mid, m) = client_method(f)?;
    if mid != want {
        return Err(violation(
            Rule::Handshake,
            0,
            format!("{mid} during the handshake, expected {want}"),
        ));
    }
    Ok(m)
}

/// A short name for a frame: its method, or its type.
fn describe(f: &Frame) -> String {
    match f.kind() {
        FrameType::Method => match f.method_id() {
            Some(id) => format!("{id}"),
            None => "a method frame too short for an id".into(),
        },
        FrameType::Header => "a content header".into(),
        FrameType::Body => format!("a {}-byte content body", f.payload().len()),
        FrameType::Heartbeat => "a heartbeat".into(),
    }
}

// ----- the input ------------------------------------------------------------------------

/// The operations of a `hub_client` input. An operation is its code byte (taken modulo 16;
/// codes 11 to 15 are more [`HubOp::Frames`], the most useful operation) followed by the
/// argument bytes listed here. A `who` byte picks a fuzzed client (modulo the number that
/// have joined, gone ones included: the hub must ignore late events for them); a `which`
/// byte picks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HubOp {
    /// `who`, `channel`, a [`Build`] code, then its arguments: frames built so that they
    /// pass (or just fail) validation.
    Frames = 0,
    /// `who`, a length (one byte, or 255 then a big-endian u16), that many raw bytes.
    Raw = 1,
    /// `which`, `count` (0: all): the broker sends that many of the replies it owes.
    Replies = 2,
    /// `which`, `kind`, `pick`, `size`: the broker acts on its own. `kind` modulo 6: 0-1
    /// closes a channel (404), 2-3 delivers a message of a size picked by `size`, 4 cancels a
    /// consumer, 5 blocks (odd `pick`) or unblocks the connection.
    Broker = 3,
    /// `step`: virtual time passes, the broker sending heartbeats every second (0: a
    /// spurious timeout).
    Advance = 4,
    /// The canary publishes a message.
    CanaryPublish = 5,
    /// The broker delivers a message to the canary.
    CanaryDelivery = 6,
    /// `who`: the client's socket closes.
    Drop = 7,
    /// `who`: the client stopped reading its output (B9).
    Slow = 8,
    /// A new fuzzed client joins (at most four join in a run).
    Join = 9,
    /// The broker sends everything it owes, until it owes nothing.
    Settle = 10,
}

/// What a [`HubOp::Frames`] operation builds, after its `who` and `channel` bytes. The
/// channel byte gives channels 1 to 4 below 192, channel 0 below 224, the client's
/// channel_max + 1 below 240, and otherwise the next two bytes. Each kind reads the argument
/// bytes listed here; a flag byte's bits are listed from bit 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Build {
    /// `channel.open`.
    Open = 0,
    /// `channel.close` 200.
    Close = 1,
    /// `channel.close-ok`.
    CloseOk = 2,
    /// `flags` (mandatory; immediate when bits 1-3 are all set; bits 4-5 exchange; bit 6
    /// empty routing key), `size`, `chunk`: a whole publish, method, header and bodies.
    Publish = 3,
    /// `flags` as for `Publish`: the method alone.
    PublishMethod = 4,
    /// `flags` (class 50 instead of 60 when bits 0-2 are set; bit 4 a malformed property
    /// list), `size`: a content header alone.
    Header = 5,
    /// `size`: one body frame alone.
    Body = 6,
    /// `type`, `flags` (passive, nowait, durable; bits 4-5 name).
    ExchangeDeclare = 7,
    /// `flags` (passive, durable, exclusive, auto-delete, nowait; bits 5-6 name).
    QueueDeclare = 8,
    /// `flags` (if-unused, if-empty, nowait; bits 5-6 name).
    QueueDelete = 9,
    /// `flags` (modulo 3 bind, unbind, purge; bit 2 nowait; bits 5-6 queue).
    QueueOther = 10,
    /// `flags` (no-local, no-ack, exclusive, nowait; bits 4-5 tag; bits 6-7 queue).
    Consume = 11,
    /// `flags` (nowait; bits 4-5 tag).
    Cancel = 12,
    /// `flags` (bits 0-1: prefetch_size 4096 when 3; bit 2 global), `count`.
    Qos = 13,
    /// `flags` (active).
    Flow = 14,
    /// `which` (modulo 3: select, commit, rollback).
    Tx = 15,
    /// `flags` (nowait).
    Confirm = 16,
    /// `which` (modulo 3: ack, nack, reject; bit 2 multiple; bit 3 requeue), `tag`.
    Ack = 17,
    /// `flags` (async; requeue).
    Recover = 18,
    /// `flags` (no-ack; bits 5-6 queue).
    Get = 19,
    /// `which` (modulo 6: connection.close, connection.close-ok, update-secret, a
    /// heartbeat frame, tune-ok, connection.open), on the picked channel.
    Connection = 20,
    /// `which` (modulo 4: exchange.delete, exchange.bind, exchange.unbind, access.request).
    ExchangeOther = 21,
    /// `index`: any method of the protocol (`METHODS[index]`) with zeroed arguments.
    AnyMethod = 22,
    /// `size`: a `queue.declare` whose arguments table makes the frame a few hundred bytes,
    /// just over 4 KiB, 8 KiB or 128 KiB.
    BigMethod = 23,
}

const BUILD_KINDS: u8 = 24;

/// Writes `hub_client` inputs operation by operation, for seed corpora and tests.
#[derive(Debug, Clone)]
pub struct HubInput {
    bytes: Vec<u8>,
}

impl HubInput {
    /// An input that starts with these configuration bytes (all zero gives the defaults
    /// shown first):
    /// - byte 0, the hub: bit 0 turns recycling off; bit 1 places by spreading; bits 2-3 pool
    ///   size 64, 1, 2, 0; bits 4-5 max upstreams 2, 1, 3, 4; bit 6 max_message_size 4096;
    ///   bit 7 client_buffer_limit 8192;
    /// - byte 1, the broker's tune: bits 0-2 channel_max 0 (no limit), 2047, 2, 3, 5, 8, 1,
    ///   64; bits 3-4 frame_max 131072, 4096, 0, 8192; bits 5-6 heartbeat 60, 5, 0, 600;
    ///   bit 7 makes warren ask for frame_max 4096;
    /// - byte 2, the fuzzed clients' tune: bits 0-1 frame_max 131072, 4096, 8192, 65536;
    ///   bits 2-3 channel_max 2047, 1, 4, 65535; bits 4-5 heartbeat 0, 0, 5, 60; bit 6 no
    ///   `consumer_cancel_notify`; bit 7 no `connection.blocked`;
    /// - byte 3 seeds the hub's reconnect jitter.
    #[must_use]
    pub fn new(config: [u8; 4]) -> Self {
        HubInput {
            bytes: config.to_vec(),
        }
    }

    /// Appends an operation and its argument bytes.
    #[must_use]
    pub fn op(mut self, op: HubOp, args: &[u8]) -> Self {
        self.bytes.push(op as u8);
        self.bytes.extend_from_slice(args);
        self
    }

    /// Appends raw bytes from fuzzed client `who`, writing the length for you (at most
    /// 65535 bytes).
    #[must_use]
    pub fn raw(mut self, who: u8, data: &[u8]) -> Self {
        let data = &data[..data.len().min(usize::from(u16::MAX))];
        self.bytes.extend_from_slice(&[HubOp::Raw as u8, who]);
        match u8::try_from(data.len()) {
            Ok(n) if n < 255 => self.bytes.push(n),
            _ => {
                self.bytes.push(255);
                self.bytes
                    .extend_from_slice(&(data.len() as u16).to_be_bytes());
            }
        }
        self.bytes.extend_from_slice(data);
        self
    }

    /// Appends a [`HubOp::Frames`] operation.
    #[must_use]
    pub fn build(mut self, who: u8, channel: u8, kind: Build, args: &[u8]) -> Self {
        self.bytes
            .extend_from_slice(&[HubOp::Frames as u8, who, channel, kind as u8]);
        self.bytes.extend_from_slice(args);
        self
    }

    /// The input.
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads the input; missing bytes read as zero.
struct Src<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Src<'a> {
    fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn len(&mut self) -> usize {
        match self.byte() {
            255 => usize::from(self.u16()),
            n => usize::from(n),
        }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
}

// ----- the fuzz body --------------------------------------------------------------------

/// Fuzz target: a hub fed arbitrary client bytes after a valid handshake and admission,
/// with a scripted broker and a well-behaved neighbour, checked against the rules by which
/// RabbitMQ closes a whole connection (B7). It panics, naming the broken property, when one
/// does not hold.
///
/// # The world
///
/// One hub; a scripted broker behind every upstream the hub dials (it accepts every dial and
/// answers what warren sends, but only when the input says so); a well-behaved *canary*
/// client; and up to four *fuzzed* clients. The canary joins first, opens its channel 1 and
/// starts a consumer; it then publishes and receives deliveries whenever the input asks, and
/// once more at the end. Fuzzed clients join after it and everything they send is decided
/// by the input.
///
/// # The input
///
/// Four configuration bytes (see [`HubInput::new`]), then operations: a code byte
/// ([`HubOp`], taken modulo 16) and its argument bytes. Missing bytes read as zero, so every
/// input is valid and a truncated input is a shorter run. Client bytes always go through a
/// [`FrameDecoder`] at the client's frame_max, as the runtime's reader does: whole frames
/// become `Input::ClientFrames`, a decode error becomes `Input::ClientFrameError`. Time is a
/// fixed origin plus offsets, so a failing input replays exactly.
///
/// # What is checked
///
/// - nothing panics, and no timer keeps firing at the same instant;
/// - every byte warren sends each upstream passes an [`UpstreamChecker`]: nothing in it would
///   make RabbitMQ close the shared connection;
/// - the canary's upstream channel carries exactly the canary's frames, in order; the canary
///   receives exactly what the broker sent on that channel, is never closed, and its
///   publishes and deliveries keep flowing to the end;
/// - a fuzzed client receives whole frames within its frame_max, never a canary delivery,
///   and nothing after its socket was closed;
/// - no upstream is lost or fails (the scripted broker is always reachable and alive);
/// - once every fuzzed client has left and the broker has answered everything, no exclusive
///   queue they declared is left on the connections (B5);
/// - after the pool and idle timers have run, only the canary's channel is in use upstream,
///   as the hub counts it and as the broker sees it, and only its upstream is left.
pub fn hub_client(data: &[u8]) {
    let _ = run(data, false);
}

/// [`hub_client`], returning the hub's counters at the end so tests can check that an input
/// reaches what it is meant to (a publish forwarded, a channel recycled...).
#[must_use]
pub fn hub_client_stats(data: &[u8]) -> HubStats {
    run(data, false).0
}

/// [`hub_client`] with a line for every step; a failure's panic message includes the lines
/// so far. For reading what an input does.
#[must_use]
pub fn hub_client_trace(data: &[u8]) -> Vec<String> {
    run(data, true).1
}

/// Operations read from one input, at most.
const MAX_OPS: usize = 1000;
/// Fuzzed clients that may join in one run.
const MAX_CLIENTS: usize = 4;
/// Body bytes the fuzzed clients and the broker may create in one run.
const BODY_BUDGET: usize = 2 << 20;
/// Virtual time the input may let pass, so that a run stays fast.
const TIME_BUDGET: Duration = Duration::from_secs(600);
/// The broker sends a heartbeat on every upstream once per step of virtual time.
const STEP: Duration = Duration::from_secs(1);
/// The canary's frame_max and channel.
const CANARY_FRAME_MAX: u32 = 131_072;
const CANARY_CH: u16 = 1;
const CANARY_TAG: &[u8] = b"canary-ctag";
/// What [`HubOp::Advance`] lets pass, by its step byte.
const ADVANCES: [Duration; 9] = [
    Duration::ZERO,
    Duration::from_millis(10),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
    Duration::from_secs(6),
    Duration::from_secs(11),
    Duration::from_secs(31),
    Duration::from_secs(65),
];
/// Body sizes, around the frame sizes that matter.
const SIZES: [usize; 10] = [0, 1, 10, 100, 4088, 4089, 8000, 131_064, 131_065, 300_000];
const EXCHANGES: [&[u8]; 4] = [b"", b"amq.direct", b"x", b"amq.topic"];
const QUEUES: [&[u8]; 4] = [b"", b"q", b"q2", b"amq.gen-1"];
const TAGS: [&[u8]; 4] = [b"", b"t1", b"t2", b"amq.ctag-1"];
const EXCHANGE_TYPES: [&[u8]; 8] = [
    b"direct",
    b"fanout",
    b"topic",
    b"headers",
    b"x-delayed-message",
    b"bogus",
    b"",
    b"DIRECT",
];
const ACCESS_REQUEST: MethodId = MethodId::new(30, 10);
const EMPTY_TABLE: [u8; 4] = [0; 4];

fn run(data: &[u8], trace: bool) -> (HubStats, Vec<String>) {
    let mut src = Src { data, pos: 0 };
    let mut world = World::new([src.byte(), src.byte(), src.byte(), src.byte()], trace);
    world.setup();
    let mut ops = 0;
    while !src.is_empty() && ops < MAX_OPS {
        ops += 1;
        world.op(&mut src);
        world.check_step();
    }
    world.finish();
    let stats = world.hub.stats().clone();
    (stats, world.trace.take().unwrap_or_default())
}

/// The scripted broker behind one upstream.
struct Broker {
    id: UpstreamId,
    check: UpstreamChecker,
    /// Replies owed to warren, in the order RabbitMQ would send them.
    pending: VecDeque<Owed>,
    /// Exclusive queues alive on this connection (they die with it).
    exclusive: BTreeSet<Vec<u8>>,
    /// The last queue declared on each channel, which an empty queue name stands for.
    last_queue: BTreeMap<u16, Vec<u8>>,
    /// Next publisher-confirm sequence number of channels in confirm mode.
    confirms: BTreeMap<u16, u64>,
    /// Publishes whose content is arriving.
    publishing: BTreeMap<u16, Publishing>,
    /// Delivery tags handed out per channel.
    deliveries: BTreeMap<u16, u64>,
    /// Counter for server-chosen names.
    names: u64,
    /// The hub closed the socket.
    gone: bool,
}

/// A reply the broker owes, and the exclusive queue that exists once it is sent (a
/// `declare-ok`); a reply dropped by a channel error takes its queue with it.
struct Owed {
    frame: Bytes,
    creates: Option<Vec<u8>>,
}

/// A publish the broker is receiving.
struct Publishing {
    /// Mandatory to an empty routing key: the broker returns it.
    returned: bool,
    /// Body bytes still owed; `None` before the header.
    owed: Option<u64>,
}

impl Broker {
    fn new(id: UpstreamId, extra_types: &[String]) -> Self {
        Broker {
            id,
            check: UpstreamChecker::new(extra_types),
            pending: VecDeque::new(),
            exclusive: BTreeSet::new(),
            last_queue: BTreeMap::new(),
            confirms: BTreeMap::new(),
            publishing: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            names: 0,
            gone: false,
        }
    }

    fn owe(&mut self, frame: Bytes) {
        self.pending.push_back(Owed {
            frame,
            creates: None,
        });
    }

    /// Sends the first `n` replies owed: the queues they declare come to exist.
    fn take(&mut self, n: usize) -> Vec<Bytes> {
        let n = n.min(self.pending.len());
        let mut out = Vec::with_capacity(n);
        for owed in self.pending.drain(..n) {
            if let Some(q) = owed.creates {
                self.exclusive.insert(q);
            }
            out.push(owed.frame);
        }
        out
    }

    fn forget(&mut self, ch: u16) {
        self.last_queue.remove(&ch);
        self.confirms.remove(&ch);
        self.publishing.remove(&ch);
        self.deliveries.remove(&ch);
    }

    fn name(&mut self, prefix: &str) -> Vec<u8> {
        self.names += 1;
        format!("{prefix}{}", self.names).into_bytes()
    }

    /// Owes what RabbitMQ answers to a frame warren sent (already checked).
    fn react(&mut self, f: &Frame) {
        let ch = f.channel();
        match f.kind() {
            FrameType::Heartbeat => {}
            FrameType::Header => {
                let size = parse_header(f.payload()).map_or(0, |h| h.body_size);
                if let Some(p) = self.publishing.get_mut(&ch) {
                    p.owed = Some(size);
                }
                if size == 0 {
                    self.published(ch);
                }
            }
            FrameType::Body => {
                let n = f.payload().len() as u64;
                let done = match self.publishing.get_mut(&ch) {
                    Some(Publishing {
                        owed: Some(rest), ..
                    }) => {
                        *rest = rest.saturating_sub(n);
                        *rest == 0
                    }
                    _ => false,
                };
                if done {
                    self.published(ch);
                }
            }
            FrameType::Method => self.method(f),
        }
    }

    fn method(&mut self, f: &Frame) {
        let ch = f.channel();
        let Ok((mid, args)) = method::split_payload(f.payload()) else {
            return;
        };
        let m = method::decode(f.payload()).unwrap_or(Method::Other(mid));
        let ok = |class: u16, method: u16| method_frame(ch, MethodId::new(class, method), |_| {});
        match mid {
            ids::CONNECTION_CLOSE => self.owe(encode::close_ok(0)),
            ids::CHANNEL_OPEN => self.owe(encode::channel_open_ok(ch)),
            ids::CHANNEL_CLOSE => {
                self.forget(ch);
                self.owe(encode::close_ok(ch));
            }
            ids::CHANNEL_CLOSE_OK => self.forget(ch),
            ids::CHANNEL_FLOW => self.owe(encode::flow(ch, true, true)),
            ACCESS_REQUEST => self.owe(method_frame(ch, MethodId::new(30, 11), |w| {
                w.u16(1);
            })),
            ids::EXCHANGE_DECLARE if !flag(args, 1, 2, 4) => self.owe(ok(40, 11)),
            ids::EXCHANGE_DELETE if !flag(args, 1, 1, 1) => self.owe(ok(40, 21)),
            ids::EXCHANGE_BIND if !flag(args, 1, 3, 0) => self.owe(ok(40, 31)),
            ids::EXCHANGE_UNBIND if !flag(args, 1, 3, 0) => self.owe(ok(40, 51)),
            ids::QUEUE_DECLARE => {
                let Method::QueueDeclare {
                    queue,
                    passive,
                    exclusive,
                    nowait,
                } = m
                else {
                    return;
                };
                let queue = match (queue.is_empty(), passive) {
                    (false, _) => queue,
                    (true, false) => self.name("amq.gen-"),
                    (true, true) => self.last_queue.get(&ch).cloned().unwrap_or_default(),
                };
                self.last_queue.insert(ch, queue.clone());
                let creates = (exclusive && !passive).then(|| queue.clone());
                if nowait {
                    if let Some(q) = creates {
                        self.exclusive.insert(q);
                    }
                } else {
                    self.pending.push_back(Owed {
                        frame: method_frame(ch, ids::QUEUE_DECLARE_OK, |w| {
                            w.shortstr(&queue).u32(0).u32(0);
                        }),
                        creates,
                    });
                }
            }
            ids::QUEUE_BIND if !flag(args, 1, 3, 0) => self.owe(ok(50, 21)),
            ids::QUEUE_PURGE if !flag(args, 1, 1, 0) => {
                self.owe(method_frame(ch, MethodId::new(50, 31), |w| {
                    w.u32(0);
                }));
            }
            ids::QUEUE_DELETE => {
                if let Method::QueueDelete { queue } = m {
                    let queue = match queue.is_empty() {
                        true => self.last_queue.get(&ch).cloned().unwrap_or_default(),
                        false => queue,
                    };
                    self.exclusive.remove(&queue);
                }
                if !flag(args, 1, 1, 2) {
                    self.owe(method_frame(ch, ids::QUEUE_DELETE_OK, |w| {
                        w.u32(0);
                    }));
                }
            }
            ids::QUEUE_UNBIND => self.owe(ok(50, 51)),
            ids::BASIC_QOS => self.owe(ok(60, 11)),
            ids::BASIC_CONSUME => {
                if let Method::Consume { tag, nowait: false } = m {
                    let tag = if tag.is_empty() {
                        self.name("amq.ctag-")
                    } else {
                        tag
                    };
                    self.owe(method_frame(ch, ids::BASIC_CONSUME_OK, |w| {
                        w.shortstr(&tag);
                    }));
                }
            }
            ids::BASIC_CANCEL if !flag(args, 0, 1, 0) => {
                if let Method::Cancel { tag } = m {
                    self.owe(method_frame(ch, ids::BASIC_CANCEL_OK, |w| {
                        w.shortstr(&tag);
                    }));
                }
            }
            ids::BASIC_PUBLISH => {
                let mut r = Reader::new(args);
                let _ = r.u16();
                let _ = r.shortstr();
                let empty_key = r.shortstr().is_ok_and(<[u8]>::is_empty);
                let mandatory = r.bit().unwrap_or(false);
                self.publishing.insert(
                    ch,
                    Publishing {
                        returned: mandatory && empty_key,
                        owed: None,
                    },
                );
            }
            ids::BASIC_GET => {
                let mut r = Reader::new(args);
                let _ = r.u16();
                if r.shortstr().is_ok_and(<[u8]>::is_empty) {
                    self.owe(method_frame(ch, MethodId::new(60, 72), |w| {
                        w.shortstr(b"");
                    }));
                } else {
                    let tag = self.next_delivery(ch);
                    self.owe(method_frame(ch, ids::BASIC_GET_OK, |w| {
                        w.u64(tag).bit(false).shortstr(b"").shortstr(b"q").u32(0);
                    }));
                    let max = self.frame_max();
                    for f in content(ch, b"fz-get", max) {
                        self.owe(f);
                    }
                }
            }
            ids::BASIC_RECOVER => self.owe(ok(60, 111)),
            ids::CONFIRM_SELECT => {
                self.confirms.entry(ch).or_insert(0);
                if !flag(args, 0, 0, 0) {
                    self.owe(ok(85, 11));
                }
            }
            ids::TX_SELECT => self.owe(ok(90, 11)),
            ids::TX_COMMIT => self.owe(ok(90, 21)),
            ids::TX_ROLLBACK => self.owe(ok(90, 31)),
            _ => {}
        }
    }

    /// A publish is complete: return it if it was unroutable and mandatory, confirm it if the
    /// channel is in confirm mode.
    fn published(&mut self, ch: u16) {
        let Some(p) = self.publishing.remove(&ch) else {
            return;
        };
        if p.returned {
            self.owe(method_frame(ch, ids::BASIC_RETURN, |w| {
                w.u16(312).shortstr(b"NO_ROUTE").shortstr(b"").shortstr(b"");
            }));
            let max = self.frame_max();
            for f in content(ch, b"returned", max) {
                self.owe(f);
            }
        }
        if let Some(seq) = self.confirms.get_mut(&ch) {
            *seq += 1;
            let tag = *seq;
            self.owe(method_frame(ch, ids::BASIC_ACK, |w| {
                w.u64(tag).bit(false);
            }));
        }
    }

    fn next_delivery(&mut self, ch: u16) -> u64 {
        let n = self.deliveries.entry(ch).or_insert(0);
        *n += 1;
        *n
    }

    fn frame_max(&self) -> u32 {
        self.check
            .negotiated()
            .map_or(FRAME_MIN_SIZE, |t| t.frame_max)
    }

    /// Drops the replies owed on `ch` before the broker closes it: the close answers the
    /// first of those methods and RabbitMQ discards the rest. A `close-ok` for warren's own
    /// `channel.close` stays owed (crossing closes).
    fn prune(&mut self, ch: u16) {
        self.pending.retain(|owed| {
            let f = &owed.frame;
            let same = f.get(1..3) == Some(&ch.to_be_bytes()[..]);
            let close_ok = f.get(7..11) == Some(&[0, 20, 0, 41][..]);
            !same || close_ok
        });
        self.forget(ch);
    }
}

/// Reads bit `bit` after `shorts` shorts and `strs` short strings; false if missing.
fn flag(args: &[u8], shorts: usize, strs: usize, bit: usize) -> bool {
    let mut r = Reader::new(args);
    for _ in 0..shorts {
        let _ = r.u16();
    }
    for _ in 0..strs {
        let _ = r.shortstr();
    }
    for _ in 0..bit {
        let _ = r.bit();
    }
    r.bit().unwrap_or(false)
}

/// A content header of class 60 with no properties.
fn header(ch: u16, size: u64) -> Bytes {
    let mut payload = BytesMut::new();
    Writer::new(&mut payload).u16(60).u16(0).u64(size).u16(0);
    Frame::new(FrameType::Header, ch, &payload).freeze()
}

/// A header and body frames within `frame_max`.
fn content(ch: u16, body: &[u8], frame_max: u32) -> Vec<Bytes> {
    let mut out = vec![header(ch, body.len() as u64)];
    let chunk = match frame_max {
        0 => body.len().max(1),
        m => (m as usize).saturating_sub(8).max(1),
    };
    for part in body.chunks(chunk) {
        out.push(Frame::new(FrameType::Body, ch, part).freeze());
    }
    out
}

/// Parses one whole frame the world built itself.
fn to_frame(raw: &Bytes) -> Option<Frame> {
    let mut buf = BytesMut::from(&raw[..]);
    FrameDecoder::new(u32::MAX).decode(&mut buf).ok().flatten()
}

/// The well-behaved neighbour.
struct Canary {
    id: ClientId,
    /// Its upstream channel, once warren opened it.
    up: Option<(UpstreamId, u16)>,
    /// Frames the canary sent that its upstream channel must carry next, in order.
    to_broker: VecDeque<(FrameType, Vec<u8>)>,
    /// Frames the broker sent on the canary's channel that the canary must receive next.
    to_client: VecDeque<(FrameType, Vec<u8>)>,
    rx: BytesMut,
    published: u64,
    delivered: u64,
}

/// A client driven by the input.
struct Fuzzed {
    id: ClientId,
    frame_max: u32,
    channel_max: u16,
    /// Bytes the input wrote that are not a whole frame yet.
    tx: BytesMut,
    /// The byte stream broke; the runtime reads no more of it.
    broken: bool,
    /// The hub closed the socket.
    gone: bool,
    /// Bytes from the hub not yet decoded.
    rx: BytesMut,
}

struct World {
    hub: Hub,
    now: Instant,
    config: HubConfig,
    offer: Tune,
    template: ClientHello,
    brokers: Vec<Broker>,
    dials: VecDeque<UpstreamId>,
    canary: Canary,
    clients: Vec<Fuzzed>,
    body_budget: usize,
    time_left: Duration,
    setting_up: bool,
    /// Inside [`World::accept_dials`]: dials requested meanwhile wait for its loop.
    accepting: bool,
    trace: Option<Vec<String>>,
}

/// The item a byte picks.
fn pick<T: Copy>(items: &[T], b: u8) -> T {
    items[usize::from(b) % items.len()]
}

fn hello(tune: Tune, caps: ClientCapabilities) -> ClientHello {
    ClientHello {
        credentials: Credentials {
            user: "guest".into(),
            password: Secret::new("guest"),
            vhost: "/".into(),
        },
        tune,
        capabilities: caps,
        connection_name: None,
        product: None,
        version: None,
    }
}

impl World {
    fn new(config: [u8; 4], trace: bool) -> World {
        let [hub_byte, broker_byte, client_byte, seed] = config;
        let two = |b: u8, at: u8| usize::from((b >> at) & 3);
        let hub_config = HubConfig {
            upstream_frame_max: if broker_byte & 0x80 != 0 {
                4096
            } else {
                131_072
            },
            max_upstreams: [2, 1, 3, 4][two(hub_byte, 4)],
            placement: if hub_byte & 2 != 0 {
                Placement::Spread
            } else {
                Placement::Fill
            },
            max_message_size: if hub_byte & 0x40 != 0 {
                4096
            } else {
                HubConfig::default().max_message_size
            },
            client_buffer_limit: if hub_byte & 0x80 != 0 {
                8192
            } else {
                HubConfig::default().client_buffer_limit
            },
            recycling: hub_byte & 1 == 0,
            pool_size: [64, 1, 2, 0][two(hub_byte, 2)],
            extra_exchange_types: vec!["x-delayed-message".into()],
            upstream_name: "warren-fuzz".into(),
            ..HubConfig::default()
        };
        let offer = Tune {
            channel_max: [0, 2047, 2, 3, 5, 8, 1, 64][usize::from(broker_byte & 7)],
            frame_max: [131_072, 4096, 0, 8192][two(broker_byte, 3)],
            heartbeat: [60, 5, 0, 600][two(broker_byte, 5)],
        };
        let template = hello(
            Tune {
                channel_max: [2047, 1, 4, 65535][two(client_byte, 2)],
                frame_max: [131_072, 4096, 8192, 65_536][two(client_byte, 0)],
                heartbeat: [0, 0, 5, 60][two(client_byte, 4)],
            },
            ClientCapabilities {
                authentication_failure_close: true,
                consumer_cancel_notify: client_byte & 0x40 == 0,
                connection_blocked: client_byte & 0x80 == 0,
            },
        );
        let now = super::base_instant();
        let mut hub = Hub::new(
            hub_config.clone(),
            template.credentials.clone(),
            u64::from(seed),
        );
        let canary_hello = hello(
            Tune {
                channel_max: 2047,
                frame_max: CANARY_FRAME_MAX,
                heartbeat: 0,
            },
            ClientCapabilities {
                authentication_failure_close: true,
                consumer_cancel_notify: true,
                connection_blocked: true,
            },
        );
        let canary = hub.add_client(now, canary_hello);
        World {
            hub,
            now,
            config: hub_config,
            offer,
            template,
            brokers: Vec::new(),
            dials: VecDeque::new(),
            canary: Canary {
                id: canary,
                up: None,
                to_broker: VecDeque::new(),
                to_client: VecDeque::new(),
                rx: BytesMut::new(),
                published: 0,
                delivered: 0,
            },
            clients: Vec::new(),
            body_budget: BODY_BUDGET,
            time_left: TIME_BUDGET,
            setting_up: true,
            accepting: false,
            trace: trace.then(Vec::new),
        }
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let at = self.now.duration_since(super::base_instant());
            t.push(format!("+{:>8.3}s {}", at.as_secs_f64(), line()));
        }
    }

    fn fail(&self, what: impl fmt::Display) -> ! {
        match &self.trace {
            Some(t) => panic!("hub_client: {what}\ntrace:\n{}", t.join("\n")),
            None => panic!("hub_client: {what}"),
        }
    }

    // ----- setup and end ----------------------------------------------------------------

    /// The canary is admitted, opens its channel and starts a consumer; the first fuzzed
    /// client joins.
    fn setup(&mut self) {
        self.pump();
        self.accept_dials();
        let open = encode::channel_open(CANARY_CH);
        let consume = method_frame(CANARY_CH, ids::BASIC_CONSUME, |w| {
            w.u16(0)
                .shortstr(b"canary-q")
                .shortstr(CANARY_TAG)
                .bit(false)
                .bit(false)
                .bit(false)
                .bit(false)
                .raw(&EMPTY_TABLE);
        });
        self.canary_sends(&[open, consume], 1);
        self.settle();
        if self.canary.up.is_none() {
            self.fail("the canary's channel.open never reached the broker");
        }
        self.setting_up = false;
        self.check_step();
        self.join();
    }

    /// Everything is answered, the canary still works, the fuzzed clients leave, and after
    /// the pool and idle timers only the canary's channel and upstream remain.
    fn finish(&mut self) {
        self.settle();
        self.canary_publish();
        self.canary_delivery();
        self.check_step();
        let left: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|c| !c.gone)
            .map(|c| c.id)
            .collect();
        for id in left {
            self.input(Input::ClientClosed { client: id });
        }
        self.settle();
        // Before any idle timer: exclusive queues die with their connection, which would
        // hide a leak on an upstream that idles out.
        for b in self.brokers.iter().filter(|b| !b.gone) {
            if !b.exclusive.is_empty() {
                let names: Vec<String> = b
                    .exclusive
                    .iter()
                    .map(|q| String::from_utf8_lossy(q).into_owned())
                    .collect();
                self.fail(format!(
                    "exclusive queues {names:?} on {} outlived the clients that declared them (B5)",
                    b.id
                ));
            }
        }
        self.advance(self.config.pool_idle_timeout + STEP);
        self.settle();
        self.advance(self.config.upstream_idle_timeout + self.config.close_timeout + STEP);
        self.settle();
        self.check_step();
        if self.hub.client_count() != 1 {
            self.fail(format!(
                "{} clients remain after every fuzzed client left",
                self.hub.client_count()
            ));
        }
        if self.hub.channels_in_use() != 1 || self.hub.pooled_channels() != 0 {
            let states: Vec<String> = self
                .brokers
                .iter()
                .filter(|b| !b.gone)
                .map(|b| format!("{}: {:?}", b.id, b.check.channels().collect::<Vec<_>>()))
                .collect();
            self.fail(format!(
                "upstream channels leaked: {} in use ({} pooled) where only the canary's should be; broker view {states:?}",
                self.hub.channels_in_use(),
                self.hub.pooled_channels()
            ));
        }
        if self.hub.upstream_count() != 1 {
            self.fail(format!(
                "{} upstreams remain after the idle timeout",
                self.hub.upstream_count()
            ));
        }
        for b in self.brokers.iter().filter(|b| !b.gone) {
            // The broker's own view: nothing half-closed, nothing owed.
            let expected: Vec<(u16, ChannelState)> = match self.canary.up {
                Some((up, ch)) if up == b.id => vec![(ch, ChannelState::Open)],
                _ => Vec::new(),
            };
            let got: Vec<(u16, ChannelState)> = b.check.channels().collect();
            if got != expected {
                self.fail(format!(
                    "{} still has channels {got:?} at the broker after everything settled",
                    b.id
                ));
            }
        }
        self.canary_publish();
        self.canary_delivery();
        self.check_step();
    }

    // ----- operations -------------------------------------------------------------------

    fn op(&mut self, src: &mut Src<'_>) {
        match src.byte() % 16 {
            1 => {
                let who = src.byte();
                let n = src.len();
                let raw = src.take(n);
                let i = self.who(who);
                self.note(|| format!("op raw c#{i} {} bytes", raw.len()));
                self.client_bytes(i, raw);
            }
            2 => {
                let which = src.byte();
                let count = src.byte();
                self.replies(which, count);
            }
            3 => {
                let (which, kind, pick_byte, size) =
                    (src.byte(), src.byte(), src.byte(), src.byte());
                self.broker_acts(which, kind, pick_byte, size);
            }
            4 => {
                let d = pick(&ADVANCES, src.byte());
                if d.is_zero() {
                    self.note(|| "op spurious timeout".into());
                    self.input(Input::Timeout);
                } else {
                    let d = d.min(self.time_left);
                    self.time_left -= d;
                    self.note(|| format!("op advance {d:?}"));
                    self.advance(d);
                }
            }
            5 => self.canary_publish(),
            6 => self.canary_delivery(),
            7 => {
                let i = self.who(src.byte());
                let client = self.clients[i].id;
                self.note(|| format!("op c#{i} socket closed"));
                self.input(Input::ClientClosed { client });
            }
            8 => {
                let i = self.who(src.byte());
                let client = self.clients[i].id;
                self.note(|| format!("op c#{i} slow"));
                self.input(Input::ClientSlow { client });
            }
            9 => self.join(),
            10 => {
                self.note(|| "op settle".into());
                self.settle();
            }
            _ => {
                let i = self.who(src.byte());
                let (frame_max, channel_max) =
                    (self.clients[i].frame_max, self.clients[i].channel_max);
                let bytes = build(src, frame_max, channel_max, &mut self.body_budget);
                self.note(|| format!("op frames c#{i} {} bytes", bytes.len()));
                self.client_bytes(i, &bytes);
            }
        }
    }

    fn who(&self, b: u8) -> usize {
        usize::from(b) % self.clients.len()
    }

    fn join(&mut self) {
        if self.clients.len() >= MAX_CLIENTS {
            return;
        }
        let hello = self.template.clone();
        let (frame_max, channel_max) = (hello.tune.frame_max, hello.tune.channel_max);
        let id = self.hub.add_client(self.now, hello);
        let n = self.clients.len();
        self.note(|| format!("op c#{n} joins as {id}"));
        self.clients.push(Fuzzed {
            id,
            frame_max,
            channel_max,
            tx: BytesMut::new(),
            broken: false,
            gone: false,
            rx: BytesMut::new(),
        });
        self.pump();
        self.accept_dials();
    }

    /// Bytes from a fuzzed client, through a frame decoder as the runtime's reader does.
    fn client_bytes(&mut self, i: usize, bytes: &[u8]) {
        let c = &mut self.clients[i];
        if c.broken {
            return;
        }
        c.tx.extend_from_slice(bytes);
        let decoder = FrameDecoder::new(c.frame_max);
        let mut frames: SmallVec<[Frame; 8]> = SmallVec::new();
        let mut error = None;
        loop {
            match decoder.decode(&mut c.tx) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    c.broken = true;
                    break;
                }
            }
        }
        let client = c.id;
        if !frames.is_empty() {
            if self.trace.is_some() {
                for f in &frames {
                    let d = describe(f);
                    let ch = f.channel();
                    self.note(|| format!("{client} -> ch{ch} {d}"));
                }
            }
            self.input(Input::ClientFrames { client, frames });
        }
        if let Some(error) = error {
            self.note(|| format!("{client} -> frame error {error}"));
            self.input(Input::ClientFrameError { client, error });
        }
    }

    fn canary_sends(&mut self, frames: &[Bytes], skip: usize) {
        let mut batch: SmallVec<[Frame; 8]> = SmallVec::new();
        for (n, raw) in frames.iter().enumerate() {
            let Some(f) = to_frame(raw) else { continue };
            if n >= skip {
                self.canary
                    .to_broker
                    .push_back((f.kind(), f.payload().to_vec()));
            }
            batch.push(f);
        }
        let client = self.canary.id;
        self.input(Input::ClientFrames {
            client,
            frames: batch,
        });
    }

    fn canary_publish(&mut self) {
        self.canary.published += 1;
        let body = format!("canary-{}", self.canary.published).into_bytes();
        self.note(|| "op canary publishes".into());
        let publish = method_frame(CANARY_CH, ids::BASIC_PUBLISH, |w| {
            w.u16(0)
                .shortstr(b"")
                .shortstr(b"canary-q")
                .bit(false)
                .bit(false);
        });
        let mut frames = vec![publish];
        frames.extend(content(CANARY_CH, &body, FRAME_MIN_SIZE));
        self.canary_sends(&frames, 0);
    }

    fn canary_delivery(&mut self) {
        let Some((up, ch)) = self.canary.up else {
            return;
        };
        self.canary.delivered += 1;
        let n = self.canary.delivered;
        self.note(|| "op canary delivery".into());
        let mut frames = vec![method_frame(ch, ids::BASIC_DELIVER, |w| {
            w.shortstr(CANARY_TAG)
                .u64(n)
                .bit(false)
                .shortstr(b"")
                .shortstr(b"canary-q");
        })];
        frames.extend(content(
            ch,
            format!("canary-delivery-{n}").as_bytes(),
            FRAME_MIN_SIZE,
        ));
        self.broker_sends(up, frames);
    }

    /// Brokers that can send (not closed by the hub).
    fn live(&self) -> Vec<usize> {
        (0..self.brokers.len())
            .filter(|&i| !self.brokers[i].gone)
            .collect()
    }

    fn replies(&mut self, which: u8, count: u8) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let i = pick(&live, which);
        let b = &mut self.brokers[i];
        let n = match count {
            0 => b.pending.len(),
            c => usize::from(c % 16),
        };
        let frames = b.take(n);
        let up = b.id;
        self.note(|| format!("op {up} replies {n}"));
        if !frames.is_empty() {
            self.broker_sends(up, frames);
        }
    }

    /// The broker sends everything it owes on every connection, until nothing is owed.
    fn settle(&mut self) {
        for _ in 0..64 {
            let mut any = false;
            for i in self.live() {
                if self.brokers[i].gone || self.brokers[i].pending.is_empty() {
                    continue;
                }
                any = true;
                let frames = self.brokers[i].take(usize::MAX);
                let up = self.brokers[i].id;
                self.broker_sends(up, frames);
            }
            if !any {
                return;
            }
        }
        self.fail("the broker kept owing replies after 64 rounds of answers");
    }

    fn broker_acts(&mut self, which: u8, kind: u8, pick_byte: u8, size: u8) {
        let live: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|&i| self.brokers[i].check.is_running())
            .collect();
        if live.is_empty() {
            return;
        }
        let i = pick(&live, which);
        let up = self.brokers[i].id;
        let canary = self.canary.up;
        let channels: Vec<(u16, ChannelState)> = self.brokers[i]
            .check
            .channels()
            .filter(|(ch, _)| canary != Some((up, *ch)))
            .collect();
        let open: Vec<u16> = channels
            .iter()
            .filter(|(_, s)| *s == ChannelState::Open)
            .map(|(ch, _)| *ch)
            .collect();
        match kind % 6 {
            0 | 1 => {
                let closable: Vec<u16> = channels
                    .iter()
                    .filter(|(_, s)| matches!(s, ChannelState::Open | ChannelState::Closing))
                    .map(|(ch, _)| *ch)
                    .collect();
                if closable.is_empty() {
                    return;
                }
                let ch = pick(&closable, pick_byte);
                self.note(|| format!("op {up} closes ch{ch} with 404"));
                self.brokers[i].prune(ch);
                let close = encode::close(
                    ch,
                    &Close {
                        code: 404,
                        text: "NOT_FOUND - no queue 'fuzz' in vhost '/'".into(),
                        class_id: 50,
                        method_id: 10,
                    },
                );
                self.broker_sends(up, vec![close]);
            }
            2 | 3 => {
                if open.is_empty() {
                    return;
                }
                let ch = pick(&open, pick_byte);
                let n = pick(&SIZES, size).min(self.body_budget);
                self.body_budget -= n;
                let tag = self.brokers[i]
                    .check
                    .consumer_tags(ch)
                    .first()
                    .cloned()
                    .unwrap_or_else(|| b"fz-ctag".to_vec());
                let dtag = self.brokers[i].next_delivery(ch);
                self.note(|| format!("op {up} delivers {n} bytes on ch{ch}"));
                let mut frames = vec![method_frame(ch, ids::BASIC_DELIVER, |w| {
                    w.shortstr(&tag)
                        .u64(dtag)
                        .bit(false)
                        .shortstr(b"")
                        .shortstr(b"q");
                })];
                frames.extend(content(ch, &vec![b'f'; n], self.brokers[i].frame_max()));
                self.broker_sends(up, frames);
            }
            4 => {
                let with_tags: Vec<(u16, Vec<u8>)> = open
                    .iter()
                    .flat_map(|&ch| {
                        self.brokers[i]
                            .check
                            .consumer_tags(ch)
                            .iter()
                            .map(move |t| (ch, t.clone()))
                    })
                    .collect();
                if with_tags.is_empty() {
                    return;
                }
                let (ch, tag) = with_tags[usize::from(pick_byte) % with_tags.len()].clone();
                self.note(|| format!("op {up} cancels consumer on ch{ch}"));
                let cancel = method_frame(ch, ids::BASIC_CANCEL, |w| {
                    w.shortstr(&tag).bit(true);
                });
                self.broker_sends(up, vec![cancel]);
            }
            _ => {
                let frame = if pick_byte & 1 == 1 {
                    encode::blocked("low on memory")
                } else {
                    encode::unblocked()
                };
                self.note(|| format!("op {up} (un)blocks"));
                self.broker_sends(up, vec![frame]);
            }
        }
    }

    // ----- time -------------------------------------------------------------------------

    /// Lets `d` pass: timers fire at their own instants, and the broker sends a heartbeat on
    /// every open upstream once per [`STEP`].
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        while self.now < target {
            let next = (self.now + STEP).min(target);
            self.fire_until(next);
            self.now = next;
            let ups: Vec<UpstreamId> = self
                .brokers
                .iter()
                .filter(|b| !b.gone && b.check.negotiated().is_some())
                .map(|b| b.id)
                .collect();
            for up in ups {
                self.broker_sends(up, vec![Bytes::from_static(HEARTBEAT)]);
            }
        }
        self.fire_until(self.now);
    }

    fn fire_until(&mut self, t: Instant) {
        let mut fired = 0;
        while let Some(at) = self.hub.poll_timeout() {
            if at > t {
                return;
            }
            fired += 1;
            if fired > 10_000 {
                self.fail(format!(
                    "a timer keeps firing at {:?}",
                    at.duration_since(super::base_instant())
                ));
            }
            self.now = self.now.max(at);
            self.input(Input::Timeout);
        }
    }

    // ----- plumbing ---------------------------------------------------------------------

    fn input(&mut self, input: Input) {
        self.hub.handle(self.now, input);
        self.pump();
        self.accept_dials();
    }

    /// The broker sends whole frames on upstream `up`.
    fn broker_sends(&mut self, up: UpstreamId, frames: Vec<Bytes>) {
        let Some(i) = self.brokers.iter().position(|b| b.id == up) else {
            return;
        };
        let mut batch: SmallVec<[Frame; 8]> = SmallVec::new();
        for raw in &frames {
            let Some(f) = to_frame(raw) else { continue };
            self.brokers[i].check.from_broker(&f);
            if self.canary.up == Some((up, f.channel())) {
                self.canary
                    .to_client
                    .push_back((f.kind(), f.payload().to_vec()));
            }
            if self.trace.is_some() && f.kind() != FrameType::Heartbeat {
                let (ch, d) = (f.channel(), describe(&f));
                self.note(|| format!("{up} -> ch{ch} {d}"));
            }
            batch.push(f);
        }
        self.input(Input::UpstreamFrames {
            upstream: up,
            frames: batch,
        });
    }

    /// Accepts every dial at once and plays the broker's side of the handshake.
    fn accept_dials(&mut self) {
        if self.accepting {
            return;
        }
        self.accepting = true;
        while let Some(up) = self.dials.pop_front() {
            self.note(|| format!("{up} dialled and accepted"));
            self.brokers
                .push(Broker::new(up, &self.config.extra_exchange_types));
            self.hub.handle(
                self.now,
                Input::UpstreamConnected {
                    upstream: up,
                    node: 0,
                },
            );
            self.pump();
            let start = encode::start(&ConnectionStart {
                server_properties: FieldTable::default(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            });
            self.broker_sends(up, vec![start]);
            self.broker_sends(up, vec![encode::tune(self.offer, false)]);
            let open_ok = method_frame(0, ids::CONNECTION_OPEN_OK, |w| {
                w.shortstr(b"");
            });
            self.broker_sends(up, vec![open_ok]);
        }
        self.accepting = false;
    }

    fn pump(&mut self) {
        while let Some(o) = self.hub.poll_output() {
            match o {
                Output::ToClient { client, data } => self.client_receives(client, &data),
                Output::CloseClient { client } => {
                    self.note(|| format!("close {client}"));
                    if client == self.canary.id {
                        self.fail("the hub closed the canary's socket");
                    }
                    match self.clients.iter_mut().find(|c| c.id == client) {
                        Some(c) => c.gone = true,
                        None => self.fail(format!("CloseClient for unknown {client}")),
                    }
                }
                Output::Dial { upstream, .. } => self.dials.push_back(upstream),
                Output::ToUpstream { upstream, data } => self.upstream_receives(upstream, &data),
                Output::CloseUpstream { upstream } => {
                    self.note(|| format!("close {upstream}"));
                    if self.canary.up.is_some_and(|(u, _)| u == upstream) {
                        self.fail("the hub closed the canary's upstream");
                    }
                    match self.brokers.iter_mut().find(|b| b.id == upstream) {
                        Some(b) => b.gone = true,
                        None => self.fail(format!("CloseUpstream for undialled {upstream}")),
                    }
                }
                Output::Event(e) => self.event(&e),
            }
        }
    }

    fn event(&mut self, e: &HubEvent) {
        let canary = self.canary.id;
        match e {
            HubEvent::ClientClosed { client, reply } => {
                self.note(|| format!("event {client} closed {} {:?}", reply.code, reply.text));
                if *client == canary {
                    self.fail(format!(
                        "the canary was closed: {} {}",
                        reply.code, reply.text
                    ));
                }
            }
            HubEvent::ClientLeft { client } | HubEvent::SlowClient { client }
                if *client == canary =>
            {
                self.fail("the canary was dropped");
            }
            HubEvent::UpstreamLost { upstream, reply }
            | HubEvent::UpstreamFailed { upstream, reply } => self.fail(format!(
                "{upstream} was lost or failed although the broker is healthy: {} {}",
                reply.code, reply.text
            )),
            HubEvent::HeartbeatMissed {
                peer: Peer::Upstream(up),
            } => self.fail(format!("{up} declared dead although the broker beats")),
            _ => {}
        }
    }

    fn upstream_receives(&mut self, up: UpstreamId, data: &[u8]) {
        let Some(i) = self.brokers.iter().position(|b| b.id == up) else {
            self.fail(format!("bytes for {up}, which was never dialled"));
        };
        if self.brokers[i].gone {
            self.fail(format!("bytes for {up} after CloseUpstream"));
        }
        let frames = match self.brokers[i].check.from_warren(data) {
            Ok(frames) => frames,
            Err(v) => self.fail(format!(
                "{up} would be closed by RabbitMQ: {v}; the frame came from {}",
                self.culprit(up, v.channel)
            )),
        };
        for f in frames {
            let ch = f.channel();
            if self.trace.is_some() && f.kind() != FrameType::Heartbeat {
                let d = describe(&f);
                self.note(|| format!("{up} <- ch{ch} {d}"));
            }
            if self.canary.up == Some((up, ch)) {
                let got = (f.kind(), f.payload().to_vec());
                if self.canary.to_broker.front() != Some(&got) {
                    self.fail(format!(
                        "the canary's upstream channel {up}/{ch} carried {}, which the canary did not send",
                        describe(&f)
                    ));
                }
                self.canary.to_broker.pop_front();
            } else if self.setting_up
                && self.canary.up.is_none()
                && f.method_id() == Some(ids::CHANNEL_OPEN)
            {
                self.canary.up = Some((up, ch));
            }
            self.brokers[i].react(&f);
        }
    }

    /// Who the upstream channel belongs to, for a failure message.
    fn culprit(&self, up: UpstreamId, ch: u16) -> &'static str {
        if ch == 0 {
            "warren itself (channel 0)"
        } else if self.canary.up == Some((up, ch)) {
            "the canary's channel"
        } else {
            "a fuzzed client's channel or a channel warren manages (fence, pool, housekeeping)"
        }
    }

    fn client_receives(&mut self, client: ClientId, data: &[u8]) {
        if client == self.canary.id {
            return self.canary_receives(data);
        }
        let Some(i) = self.clients.iter().position(|c| c.id == client) else {
            self.fail(format!("bytes for {client}, which never joined"));
        };
        if self.clients[i].gone {
            self.fail(format!("bytes for {client} after CloseClient"));
        }
        self.clients[i].rx.extend_from_slice(data);
        loop {
            let c = &mut self.clients[i];
            let decoded = FrameDecoder::new(c.frame_max).decode(&mut c.rx);
            let f = match decoded {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => self.fail(format!("{client} was sent a frame it cannot read: {e}")),
            };
            if self.trace.is_some() && f.kind() != FrameType::Heartbeat {
                let (ch, d) = (f.channel(), describe(&f));
                self.note(|| format!("{client} <- ch{ch} {d}"));
            }
            if f.kind() == FrameType::Body && f.payload().starts_with(b"canary") {
                self.fail(format!("{client} received a canary delivery"));
            }
        }
    }

    fn canary_receives(&mut self, data: &[u8]) {
        self.canary.rx.extend_from_slice(data);
        loop {
            let f = match FrameDecoder::new(CANARY_FRAME_MAX).decode(&mut self.canary.rx) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => self.fail(format!("the canary was sent a frame it cannot read: {e}")),
            };
            let ch = f.channel();
            if ch == 0 {
                let fine = match f.method_id() {
                    None => f.kind() == FrameType::Heartbeat,
                    Some(ids::CONNECTION_BLOCKED | ids::CONNECTION_UNBLOCKED) => true,
                    Some(ids::CONNECTION_OPEN_OK) => self.setting_up,
                    Some(_) => false,
                };
                if !fine {
                    self.fail(format!("the canary received {} on channel 0", describe(&f)));
                }
                continue;
            }
            let got = (f.kind(), f.payload().to_vec());
            if ch != CANARY_CH || self.canary.to_client.front() != Some(&got) {
                self.fail(format!(
                    "the canary received {} on channel {ch}, which the broker did not send it",
                    describe(&f)
                ));
            }
            self.canary.to_client.pop_front();
        }
    }

    /// After every operation: what the canary sent reached its channel, what the broker sent
    /// it arrived, and no client holds half a frame.
    fn check_step(&self) {
        if !self.canary.to_broker.is_empty() {
            self.fail(format!(
                "{} canary frames did not reach its upstream channel",
                self.canary.to_broker.len()
            ));
        }
        if !self.canary.to_client.is_empty() {
            self.fail(format!(
                "{} frames the broker sent the canary did not arrive",
                self.canary.to_client.len()
            ));
        }
        if !self.canary.rx.is_empty() {
            self.fail("the canary holds half a frame");
        }
        if let Some(c) = self.clients.iter().find(|c| !c.rx.is_empty()) {
            self.fail(format!("{} holds half a frame", c.id));
        }
    }
}

// ----- frame builders for fuzzed clients ------------------------------------------------

fn m(ch: u16, id: MethodId, args: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
    method_frame(ch, id, args).to_vec()
}

fn body_size(src: &mut Src<'_>, budget: &mut usize) -> usize {
    let n = pick(&SIZES, src.byte()).min(*budget);
    *budget -= n;
    n
}

fn publish_method(ch: u16, flags: u8) -> Vec<u8> {
    let exchange = pick(&EXCHANGES, flags >> 4);
    let key: &[u8] = if flags & 0x40 != 0 { b"" } else { b"rk" };
    m(ch, ids::BASIC_PUBLISH, |w| {
        w.u16(0)
            .shortstr(exchange)
            .shortstr(key)
            .bit(flags & 1 != 0)
            .bit(flags & 0x0e == 0x0e);
    })
}

/// Frames a fuzzed client sends, described by the next input bytes (see [`Build`]).
fn build(src: &mut Src<'_>, frame_max: u32, channel_max: u16, budget: &mut usize) -> Vec<u8> {
    let ch = match src.byte() {
        b @ 0..=191 => 1 + u16::from(b % 4),
        192..=223 => 0,
        224..=239 => channel_max.saturating_add(1),
        _ => src.u16(),
    };
    let kind = src.byte() % BUILD_KINDS;
    let name = |b: u8| pick(&QUEUES, b);
    match kind {
        0 => encode::channel_open(ch).to_vec(),
        1 => encode::close(
            ch,
            &Close {
                code: 200,
                text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
        )
        .to_vec(),
        2 => encode::close_ok(ch).to_vec(),
        3 => {
            let flags = src.byte();
            let size = body_size(src, budget);
            let chunk = match src.byte() % 4 {
                0 => (frame_max as usize).saturating_sub(8).max(1),
                1 => 1000,
                2 => size.max(1),
                _ => 4088,
            };
            let mut out = publish_method(ch, flags);
            out.extend_from_slice(&header(ch, size as u64));
            for part in vec![b'x'; size].chunks(chunk) {
                out.extend_from_slice(&Frame::new(FrameType::Body, ch, part).freeze());
            }
            out
        }
        4 => publish_method(ch, src.byte()),
        5 => {
            let flags = src.byte();
            let size = body_size(src, budget) as u64;
            let class = if flags & 7 == 7 { 50 } else { 60 };
            let properties = if flags & 0x10 != 0 { 0x0001 } else { 0 };
            let mut payload = BytesMut::new();
            Writer::new(&mut payload)
                .u16(class)
                .u16(0)
                .u64(size)
                .u16(properties);
            Frame::new(FrameType::Header, ch, &payload)
                .freeze()
                .to_vec()
        }
        6 => {
            let size = body_size(src, budget);
            Frame::new(FrameType::Body, ch, &vec![b'y'; size])
                .freeze()
                .to_vec()
        }
        7 => {
            let kind = pick(&EXCHANGE_TYPES, src.byte());
            let flags = src.byte();
            m(ch, ids::EXCHANGE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(pick(&EXCHANGES, flags >> 4))
                    .shortstr(kind)
                    .bit(flags & 1 != 0)
                    .bit(flags & 4 != 0)
                    .bit(false)
                    .bit(false)
                    .bit(flags & 2 != 0)
                    .raw(&EMPTY_TABLE);
            })
        }
        8 => {
            let f = src.byte();
            m(ch, ids::QUEUE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(name(f >> 5))
                    .bit(f & 1 != 0)
                    .bit(f & 2 != 0)
                    .bit(f & 4 != 0)
                    .bit(f & 8 != 0)
                    .bit(f & 16 != 0)
                    .raw(&EMPTY_TABLE);
            })
        }
        9 => {
            let f = src.byte();
            m(ch, ids::QUEUE_DELETE, |w| {
                w.u16(0)
                    .shortstr(name(f >> 5))
                    .bit(f & 1 != 0)
                    .bit(f & 2 != 0)
                    .bit(f & 4 != 0);
            })
        }
        10 => {
            let f = src.byte();
            let (q, nowait) = (name(f >> 5), f & 4 != 0);
            match f % 3 {
                0 => m(ch, ids::QUEUE_BIND, |w| {
                    w.u16(0)
                        .shortstr(q)
                        .shortstr(b"amq.direct")
                        .shortstr(b"rk")
                        .bit(nowait)
                        .raw(&EMPTY_TABLE);
                }),
                1 => m(ch, ids::QUEUE_UNBIND, |w| {
                    w.u16(0)
                        .shortstr(q)
                        .shortstr(b"amq.direct")
                        .shortstr(b"rk")
                        .raw(&EMPTY_TABLE);
                }),
                _ => m(ch, ids::QUEUE_PURGE, |w| {
                    w.u16(0).shortstr(q).bit(nowait);
                }),
            }
        }
        11 => {
            let f = src.byte();
            m(ch, ids::BASIC_CONSUME, |w| {
                w.u16(0)
                    .shortstr(name(f >> 6))
                    .shortstr(pick(&TAGS, f >> 4))
                    .bit(f & 1 != 0)
                    .bit(f & 2 != 0)
                    .bit(f & 4 != 0)
                    .bit(f & 8 != 0)
                    .raw(&EMPTY_TABLE);
            })
        }
        12 => {
            let f = src.byte();
            m(ch, ids::BASIC_CANCEL, |w| {
                w.shortstr(pick(&TAGS, f >> 4)).bit(f & 1 != 0);
            })
        }
        13 => {
            let f = src.byte();
            let count = u16::from(src.byte());
            m(ch, ids::BASIC_QOS, |w| {
                w.u32(if f & 3 == 3 { 4096 } else { 0 })
                    .u16(count)
                    .bit(f & 4 != 0);
            })
        }
        14 => {
            let f = src.byte();
            encode::flow(ch, f & 1 != 0, false).to_vec()
        }
        15 => {
            let id = pick(
                &[ids::TX_SELECT, ids::TX_COMMIT, ids::TX_ROLLBACK],
                src.byte(),
            );
            m(ch, id, |_| {})
        }
        16 => {
            let f = src.byte();
            m(ch, ids::CONFIRM_SELECT, |w| {
                w.bit(f & 1 != 0);
            })
        }
        17 => {
            let f = src.byte();
            let tag = u64::from(src.byte());
            let (multiple, requeue) = (f & 4 != 0, f & 8 != 0);
            match f % 3 {
                0 => m(ch, ids::BASIC_ACK, |w| {
                    w.u64(tag).bit(multiple);
                }),
                1 => m(ch, ids::BASIC_NACK, |w| {
                    w.u64(tag).bit(multiple).bit(requeue);
                }),
                _ => m(ch, ids::BASIC_REJECT, |w| {
                    w.u64(tag).bit(requeue);
                }),
            }
        }
        18 => {
            let f = src.byte();
            let id = if f & 1 != 0 {
                ids::BASIC_RECOVER_ASYNC
            } else {
                ids::BASIC_RECOVER
            };
            m(ch, id, |w| {
                w.bit(f & 2 != 0);
            })
        }
        19 => {
            let f = src.byte();
            m(ch, ids::BASIC_GET, |w| {
                w.u16(0).shortstr(name(f >> 5)).bit(f & 1 != 0);
            })
        }
        20 => match src.byte() % 6 {
            0 => m(ch, ids::CONNECTION_CLOSE, |w| {
                w.u16(200).shortstr(b"bye").u16(0).u16(0);
            }),
            1 => m(ch, ids::CONNECTION_CLOSE_OK, |_| {}),
            2 => m(ch, ids::CONNECTION_UPDATE_SECRET, |w| {
                w.longstr(b"new-token").shortstr(b"rotation");
            }),
            3 => Frame::new(FrameType::Heartbeat, ch, &[]).freeze().to_vec(),
            4 => m(ch, ids::CONNECTION_TUNE_OK, |w| {
                w.u16(0).u32(131_072).u16(0);
            }),
            _ => m(ch, ids::CONNECTION_OPEN, |w| {
                w.shortstr(b"/").shortstr(b"").bit(false);
            }),
        },
        21 => {
            let f = src.byte();
            match f % 4 {
                0 => m(ch, ids::EXCHANGE_DELETE, |w| {
                    w.u16(0).shortstr(b"x").bit(f & 4 != 0).bit(f & 8 != 0);
                }),
                1 | 2 => {
                    let id = if f % 4 == 1 {
                        ids::EXCHANGE_BIND
                    } else {
                        ids::EXCHANGE_UNBIND
                    };
                    m(ch, id, |w| {
                        w.u16(0)
                            .shortstr(b"x")
                            .shortstr(b"amq.direct")
                            .shortstr(b"rk")
                            .bit(f & 8 != 0)
                            .raw(&EMPTY_TABLE);
                    })
                }
                _ => m(ch, ACCESS_REQUEST, |w| {
                    w.shortstr(b"/data")
                        .bit(false)
                        .bit(false)
                        .bit(true)
                        .bit(true)
                        .bit(true);
                }),
            }
        }
        22 => {
            let spec = pick(method::METHODS, src.byte());
            m(ch, spec.id, |w| {
                for field in spec.fields {
                    match field {
                        Field::Octet => {
                            w.u8(0);
                        }
                        Field::Short => {
                            w.u16(0);
                        }
                        Field::Long => {
                            w.u32(0);
                        }
                        Field::LongLong | Field::Timestamp => {
                            w.u64(0);
                        }
                        Field::ShortStr => {
                            w.shortstr(b"");
                        }
                        Field::LongStr => {
                            w.longstr(b"");
                        }
                        Field::Bit => {
                            w.bit(false);
                        }
                        Field::Table => {
                            w.raw(&EMPTY_TABLE);
                        }
                    }
                }
            })
        }
        _ => {
            let pad = pick(&[200usize, 4080, 8180, 131_000], src.byte());
            let pad = pad.min(*budget);
            *budget -= pad;
            let mut table = BytesMut::new();
            FieldTable::default()
                .with("x-pad", FieldValue::LongStr(vec![b'p'; pad]))
                .encode(&mut table);
            m(ch, ids::QUEUE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(b"big")
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .raw(&table);
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::StartOk;

    fn checker() -> UpstreamChecker {
        UpstreamChecker::new(&["x-delayed-message".to_owned()])
    }

    fn frame(raw: &Bytes) -> Frame {
        to_frame(raw).expect("a whole frame")
    }

    /// A checker after a complete handshake with the given broker tune.
    fn running_with(offer: Tune, accept: Tune) -> UpstreamChecker {
        let mut c = checker();
        c.from_warren(PROTOCOL_HEADER).unwrap();
        c.from_broker(&frame(&encode::start(&ConnectionStart {
            server_properties: FieldTable::default(),
            mechanisms: "PLAIN".into(),
            locales: "en_US".into(),
        })));
        c.from_warren(&encode::start_ok(&StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: b"\0guest\0guest".to_vec(),
            locale: "en_US".into(),
        }))
        .unwrap();
        c.from_broker(&frame(&encode::tune(offer, false)));
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
        method_frame(ch, ids::BASIC_CONSUME, |w| {
            w.u16(0)
                .shortstr(b"q")
                .shortstr(tag)
                .bit(false)
                .bit(false)
                .bit(false)
                .bit(false)
                .raw(&EMPTY_TABLE);
        })
    }

    fn close(ch: u16) -> Bytes {
        encode::close(
            ch,
            &Close {
                code: 200,
                text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
        )
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
        let mut c = checker();
        c.from_warren(PROTOCOL_HEADER).unwrap();
        c.from_broker(&frame(&encode::start(&ConnectionStart {
            server_properties: FieldTable::default(),
            mechanisms: "PLAIN".into(),
            locales: "en_US".into(),
        })));
        c.from_warren(&encode::start_ok(&StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: b"\0u\0p".to_vec(),
            locale: "en_US".into(),
        }))
        .unwrap();
        c.from_broker(&frame(&encode::tune(TUNE, false)));
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
                method_frame(1, ids::EXCHANGE_DECLARE, |w| {
                    w.u16(0)
                        .shortstr(b"x")
                        .shortstr(b"bogus")
                        .bit(false)
                        .bit(false)
                        .bit(false)
                        .bit(false)
                        .bit(false)
                        .raw(&EMPTY_TABLE);
                }),
                Rule::ExchangeType,
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
        // Plugin types and passive declares are fine.
        let mut c = open();
        c.from_warren(&method_frame(1, ids::EXCHANGE_DECLARE, |w| {
            w.u16(0)
                .shortstr(b"x")
                .shortstr(b"x-delayed-message")
                .bit(false)
                .bit(false)
                .bit(false)
                .bit(false)
                .bit(false)
                .raw(&EMPTY_TABLE);
        }))
        .unwrap();
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
        let mut c = open();
        c.from_warren(&method_frame(1, ids::TX_COMMIT, |_| {}))
            .unwrap();
        assert_eq!(rule(&mut c, &publish(1, false)), Rule::DuringCommit);
        let mut c = open();
        c.from_warren(&method_frame(1, ids::TX_COMMIT, |_| {}))
            .unwrap();
        c.from_broker(&frame(&method_frame(1, ids::TX_COMMIT_OK, |_| {})));
        c.from_warren(&method_frame(1, ids::TX_COMMIT, |_| {}))
            .unwrap();
        c.from_warren(&close(1)).unwrap();
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

    #[test]
    fn trivial_and_seeded_inputs_run() {
        let session = HubInput::new([0; 4])
            .raw(0, &encode::channel_open(1))
            .op(HubOp::Settle, &[])
            .build(0, 0, Build::Publish, &[0, 3, 0])
            .op(HubOp::Broker, &[0, 2, 0, 3])
            .build(0, 0, Build::Close, &[])
            .op(HubOp::Settle, &[])
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .into_bytes();
        let stats = hub_client_stats(&session);
        assert!(stats.publishes >= 1, "{stats:?}");
        assert_eq!(stats.opens_from_pool, 1, "{stats:?}");
        for data in [&[][..], &[0; 64], &[0xff; 64], &session] {
            hub_client(data);
        }
        // Deterministic: the same input gives the same run.
        assert_eq!(hub_client_trace(&session), hub_client_trace(&session));
    }
}
