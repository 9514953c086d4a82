//! The rules by which RabbitMQ closes a whole connection (a "hard" error), and
//! [`UpstreamChecker`], which holds what warren writes to a broker to them. It is the one
//! place these rules are written: the `hub_client` fuzz target runs it on every upstream,
//! and the fake [`Broker`](crate::broker::Broker) of the simulation reads every byte it
//! receives through it. A violation is a proxy bug.

use crate::trace::describe;
use bytes::BytesMut;
use queue_types::{covers, QueueKind, TypeMemory};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Instant;
use warren_core::content::parse_header;
use warren_core::frame::{
    Frame, FrameDecoder, FrameError, FrameType, FRAME_MIN_SIZE, FRAME_OVERHEAD, PROTOCOL_HEADER,
};
use warren_core::method::{self, ids, Method, MethodId, Tune};
use warren_core::wire::Reader;

pub mod queue_types;
#[cfg(test)]
mod tests;

// ----- the checker ----------------------------------------------------------------------

/// One of the rules by which RabbitMQ closes a whole connection (a "hard" error), as far as
/// what a client sends can break it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// A non-passive `exchange.declare` of a type the broker does not know (503) on a
    /// connection that carries another channel. RabbitMQ closes the whole connection for it,
    /// taking the neighbours' channels along. On a connection with no other channel it
    /// closes nothing but the asker's own: that is how warren asks the broker whether it
    /// knows a type (a probe connection of its own, B7), and is no violation.
    ExchangeType,
    /// A method RabbitMQ refuses on a stream or quorum queue with a connection error
    /// ([`Misuse`](queue_types::Misuse): 540, or 541 for a recover) on a connection that carries another channel,
    /// naming a queue whose type warren could know: a typed `queue.declare` of it got its
    /// `declare-ok` on this connection less than [`queue_types::TYPE_MEMORY`] before (for a
    /// nack, reject or recover: before the stream's consumer was set up). warren promises
    /// (B7) to close only the misusing client then. A queue whose type warren had no way to
    /// know (declared elsewhere, or long ago) is no violation, nor is a misuse alone on its
    /// connection. At the broker ([`UpstreamChecker::at_broker`]) a `declare-ok` counts from
    /// the moment the broker sent it, before warren read it: a misuse pipelined behind its
    /// own declare would be judged as if warren knew, so simulated clients misuse a queue
    /// only after their `declare-ok` came back.
    QueueType,
    /// `basic.consume` with a tag that a consumer on the channel already has (530).
    ConsumerTagReuse,
    /// A method other than `channel.close` while a `tx.commit` is in flight (503).
    DuringCommit,
    /// Anything but a heartbeat or the answer to the broker's close once the connection is
    /// closing.
    AfterConnectionClose,
}

impl Rule {
    /// The reply code RabbitMQ closes the connection with when the rule is broken (the most
    /// common one where RabbitMQ uses several, e.g. 502 and 540 for a bad method).
    #[must_use]
    pub fn reply_code(self) -> u16 {
        use warren_core::reply::*;
        match self {
            Rule::Handshake
            | Rule::ChannelZero
            | Rule::UnexpectedCloseOk
            | Rule::ExchangeType
            | Rule::DuringCommit
            | Rule::AfterConnectionClose => COMMAND_INVALID,
            Rule::Malformed | Rule::FrameMax | Rule::HeartbeatChannel => FRAME_ERROR,
            Rule::ChannelMax | Rule::ConsumerTagReuse => NOT_ALLOWED,
            Rule::BadMethod => SYNTAX_ERROR,
            Rule::UnopenedChannel | Rule::SecondOpen | Rule::ClosingChannel => CHANNEL_ERROR,
            Rule::ContentSequence => UNEXPECTED_FRAME,
            Rule::FlowInactive
            | Rule::PublishImmediate
            | Rule::QosPrefetchSize
            | Rule::QueueType
            | Rule::RecoverNoRequeue => NOT_IMPLEMENTED,
        }
    }
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

pub(crate) fn violation(rule: Rule, channel: u16, detail: impl Into<String>) -> Violation {
    Violation {
        rule,
        channel,
        detail: detail.into(),
    }
}

/// The largest frame the checker decodes before calling it oversize without reading it.
pub(crate) const DECODE_CAP: u32 = 1 << 24;

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
    /// After a `tx.select`: whether a publish went to the broker since the last commit or
    /// rollback. RabbitMQ refuses a commit without `tx.select` at once, and answers one
    /// without publishes at once.
    tx_published: Option<bool>,
    /// A `tx.commit` of publishes whose `commit-ok` has not come back.
    committing: bool,
    /// Consumer tags live at the broker, in the order warren's frames reached it.
    tags: Vec<Vec<u8>>,
    /// For each `basic.consume` awaiting `consume-ok`: whether the broker names the
    /// consumer, and the stream it reads if its type was known.
    consumes: VecDeque<(bool, Option<Vec<u8>>)>,
    /// For each `queue.declare` awaiting `declare-ok`: the type it declares, if it is a
    /// non-passive declare of a stream or quorum queue (the reply confirms it).
    declares: VecDeque<Option<QueueKind>>,
    /// The queue the empty name stands for, when warren's last declare named it.
    last_queue: Option<Vec<u8>>,
    /// The last `basic.qos` set a global prefetch limit.
    global_qos: bool,
    /// The last per-consumer `basic.qos` set a prefetch, which a stream's consumer needs.
    consumer_prefetch: bool,
    /// Consumers of streams whose type was known: tag and stream.
    stream_consumers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Their deliveries warren has not settled: delivery tag and stream.
    unsettled: Vec<(u64, Vec<u8>)>,
}

impl Chan {
    fn new(state: ChannelState) -> Self {
        Chan {
            state,
            content: Content::None,
            tx_published: None,
            committing: false,
            tags: Vec::new(),
            consumes: VecDeque::new(),
            declares: VecDeque::new(),
            last_queue: None,
            global_qos: false,
            consumer_prefetch: false,
            stream_consumers: Vec::new(),
            unsettled: Vec::new(),
        }
    }
}

/// Checks the byte stream warren writes to one upstream connection against the rules by
/// which RabbitMQ closes a whole connection (B7: nothing a client sends may do that to the
/// connection it shares with its neighbours).
///
/// It reads what warren sends ([`UpstreamChecker::feed`] and [`UpstreamChecker::next`], or
/// [`UpstreamChecker::from_warren`] for both at once) and learns the broker's side of the
/// conversation from [`UpstreamChecker::from_broker`]: the handshake prompts, channel open
/// and close answers, `tx.commit-ok`, consumer tags the broker chose or cancelled. Like
/// RabbitMQ it processes both streams in order, so its idea of each channel is the broker's
/// at the moment warren's frame arrives.
#[derive(Debug)]
pub struct UpstreamChecker {
    conn: Conn,
    buf: BytesMut,
    offered: Option<Tune>,
    tune: Option<Tune>,
    channels: BTreeMap<u16, Chan>,
    /// The exchange types the broker knows besides RabbitMQ's four (its plugins').
    plugin_types: Vec<String>,
    /// Whether frames that crossed the broker's `close` on the wire are discarded, as
    /// RabbitMQ discards them, rather than reported (see [`UpstreamChecker::at_broker`]).
    in_flight: bool,
    /// Stream and quorum queues whose typed declares the broker confirmed on this
    /// connection, and when ([`Rule::QueueType`]).
    types: TypeMemory,
    /// The time of what is read next ([`UpstreamChecker::at`]); `None` until told.
    clock: Option<Instant>,
}

/// What [`UpstreamChecker::next`] read.
#[derive(Debug)]
pub enum Read {
    /// The protocol header: the broker answers it with `connection.start`.
    Header,
    /// A frame that breaks no rule, for the broker to act on.
    Frame(Frame),
}

impl UpstreamChecker {
    /// A checker where warren has seen every broker frame before it writes (the fuzz
    /// target's world, with no wire in between): a frame after the broker's `close` on its
    /// channel or connection is a violation, since warren knew better.
    ///
    /// `plugin_exchange_types` are the types the *broker* knows besides the four (not those
    /// warren is configured to trust): warren may learn a plugin's type from the broker and
    /// then rightly forward declares of it, and a type warren trusts that the broker does not
    /// know closes the connection all the same.
    #[must_use]
    pub fn new(plugin_exchange_types: &[String]) -> Self {
        UpstreamChecker {
            conn: Conn::Header,
            buf: BytesMut::new(),
            offered: None,
            tune: None,
            channels: BTreeMap::new(),
            plugin_types: plugin_exchange_types.to_vec(),
            in_flight: false,
            types: TypeMemory::default(),
            clock: None,
        }
    }

    /// A checker inside a broker, at the far end of a wire: frames warren sent before the
    /// broker's `channel.close` or `connection.close` reached it are discarded, as RabbitMQ
    /// discards them (only the `close` and `close-ok` of the closing side are read).
    /// `plugin_exchange_types` as for [`UpstreamChecker::new`].
    #[must_use]
    pub fn at_broker(plugin_exchange_types: &[String]) -> Self {
        UpstreamChecker {
            in_flight: true,
            ..UpstreamChecker::new(plugin_exchange_types)
        }
    }

    /// Sets the time of the frames read and written next: what warren learnt about a
    /// queue's type fades after [`queue_types::TYPE_MEMORY`], as warren's own memory does.
    /// A checker never told the time remembers for ever.
    pub fn at(&mut self, now: Instant) {
        self.clock = Some(now);
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

    /// Bytes warren wrote to the connection, in any chunking. Returns the frames completed by
    /// them, or the first rule they break; after a violation the checker is of no further use.
    pub fn from_warren(&mut self, data: &[u8]) -> Result<Vec<Frame>, Violation> {
        self.feed(data);
        let mut frames = Vec::new();
        while let Some(read) = self.next() {
            if let Read::Frame(f) = read? {
                frames.push(f);
            }
        }
        Ok(frames)
    }

    /// Bytes warren wrote to the connection, in any chunking, to be read by
    /// [`UpstreamChecker::next`].
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next thing warren sent, checked: `None` when more bytes are needed. A broker
    /// reads one frame at a time and answers it (through [`UpstreamChecker::from_broker`])
    /// before the next, so that each frame is checked against the state the broker's
    /// answers to the frames before it left. After a frame that does not decode, the
    /// buffered bytes are dropped: nothing after it can be read.
    #[allow(clippy::should_implement_trait)] // fallible and stateful; not an iterator
    pub fn next(&mut self) -> Option<Result<Read, Violation>> {
        if self.conn == Conn::Header {
            let n = self.buf.len().min(PROTOCOL_HEADER.len());
            if self.buf[..n] != PROTOCOL_HEADER[..n] {
                self.buf.clear();
                return Some(Err(violation(
                    Rule::Handshake,
                    0,
                    "the connection does not start with the AMQP 0-9-1 protocol header",
                )));
            }
            if n < PROTOCOL_HEADER.len() {
                return None;
            }
            let _ = self.buf.split_to(n);
            self.conn = Conn::AwaitStart;
            return Some(Ok(Read::Header));
        }
        loop {
            // Decoded with room to spare so that an oversize frame is reported by name.
            let max = self.frame_max();
            let decoder = FrameDecoder::new(max.max(DECODE_CAP));
            let ch = match self.buf.get(1..3) {
                Some(b) => u16::from_be_bytes([b[0], b[1]]),
                None => 0,
            };
            let f = match decoder.decode(&mut self.buf) {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    self.buf.clear();
                    let v = match e {
                        FrameError::TooLarge { size, max, .. } => violation(
                            Rule::FrameMax,
                            ch,
                            format!("a {size}-byte frame exceeds frame_max {max}"),
                        ),
                        e => violation(Rule::Malformed, ch, e.to_string()),
                    };
                    return Some(Err(v));
                }
            };
            if f.wire_len() as u64 > u64::from(max) {
                return Some(Err(violation(
                    Rule::FrameMax,
                    ch,
                    format!(
                        "{} is a {}-byte frame, over frame_max {max}",
                        describe(&f),
                        f.wire_len()
                    ),
                )));
            }
            if self.discarded(&f) {
                continue;
            }
            return Some(self.check(&f).map(|()| Read::Frame(f)));
        }
    }

    /// Whether RabbitMQ, having sent `close` on the frame's channel or connection, drops the
    /// frame unread: only at the broker, and never the closing side's `close` or `close-ok`.
    fn discarded(&self, f: &Frame) -> bool {
        if !self.in_flight || f.kind() == FrameType::Heartbeat {
            return false;
        }
        let closing = matches!(
            f.method_id(),
            Some(ids::CHANNEL_CLOSE | ids::CHANNEL_CLOSE_OK)
        );
        let conn_closing = matches!(
            f.method_id(),
            Some(ids::CONNECTION_CLOSE | ids::CONNECTION_CLOSE_OK)
        );
        match self.conn {
            Conn::BrokerClosed | Conn::Closed => !(f.channel() == 0 && conn_closing),
            _ => {
                let closed_by_broker = self.channels.get(&f.channel()).is_some_and(|c| {
                    matches!(
                        c.state,
                        ChannelState::ClosedByBroker | ChannelState::Crossed
                    )
                });
                f.channel() != 0 && closed_by_broker && !closing
            }
        }
    }

    /// Frames the broker wrote, whole and back to back (as [`UpstreamChecker::from_broker`]).
    pub fn from_broker_bytes(&mut self, mut data: &[u8]) {
        while data.len() >= FRAME_OVERHEAD {
            let ch = u16::from_be_bytes([data[1], data[2]]);
            let size = u32::from_be_bytes([data[3], data[4], data[5], data[6]]) as usize;
            let Some(payload) = data.get(7..7 + size) else {
                return;
            };
            if data[0] == 1 {
                self.from_broker(&Frame::new(FrameType::Method, ch, payload));
            }
            data = &data[(FRAME_OVERHEAD + size).min(data.len())..];
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
                let (server_named, stream) = chan.consumes.pop_front().unwrap_or_default();
                let Ok(Method::ConsumeOk { tag }) = method::decode(f.payload()) else {
                    return;
                };
                if let Some(stream) = stream.filter(|_| server_named) {
                    chan.stream_consumers.push((tag.clone(), stream));
                }
                if server_named && !chan.tags.contains(&tag) {
                    chan.tags.push(tag);
                }
            }
            ids::QUEUE_DECLARE_OK => {
                let kind = chan.declares.pop_front().flatten();
                if let (Some(kind), Ok(Method::QueueDeclareOk { queue })) =
                    (kind, method::decode(f.payload()))
                {
                    self.types.learn(queue, kind, self.clock);
                }
            }
            ids::BASIC_DELIVER if !chan.stream_consumers.is_empty() => {
                // consumer-tag, then delivery-tag, after the class and method ids.
                let mut r = Reader::new(f.payload().get(4..).unwrap_or_default());
                if let (Ok(consumer), Ok(delivery)) = (r.shortstr(), r.u64()) {
                    let stream = (chan.stream_consumers.iter()).find(|(t, _)| t == consumer);
                    if let Some((_, stream)) = stream {
                        chan.unsettled.push((delivery, stream.clone()));
                    }
                }
            }
            ids::BASIC_CANCEL => {
                if let Ok(Method::Cancel { tag }) = method::decode(f.payload()) {
                    chan.tags.retain(|t| *t != tag);
                    chan.stream_consumers.retain(|(t, _)| *t != tag);
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
            // warren's own close crossed the broker's on the wire.
            Conn::BrokerClosed if self.in_flight && is_close => Ok(()),
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
            if mid == ids::CONNECTION_UPDATE_SECRET {
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
        // Channels other than this frame's (once it is known to be in use): what a
        // connection error would close besides the channel that caused it.
        let neighbours = self.channels.len().saturating_sub(1);
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
                if self.in_flight && f.method_id() == Some(ids::CHANNEL_CLOSE) {
                    // warren's close crossed the broker's on the wire.
                    client_method(f)?;
                    return Ok(());
                }
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
        let (misuse, stream) = chan.misuse(&m, &self.types, self.clock);
        if let Some((misuse, queue)) = misuse.filter(|_| neighbours > 0) {
            return broken(
                Rule::QueueType,
                &format!(
                    "{mid} is {misuse:?} of {:?}, whose type warren knew, and its connection error would close {neighbours} other channel(s)",
                    String::from_utf8_lossy(&queue)
                ),
            );
        }
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
            Method::Qos { prefetch_size, .. } if prefetch_size != 0 => broken(
                Rule::QosPrefetchSize,
                &format!("basic.qos prefetch_size={prefetch_size}"),
            ),
            Method::Recover { requeue: false } => {
                broken(Rule::RecoverNoRequeue, &format!("{mid} requeue=false"))
            }
            Method::ExchangeDeclare {
                kind,
                passive: false,
            } if neighbours > 0 && !known_exchange_type(&kind, &self.plugin_types) => broken(
                Rule::ExchangeType,
                &format!(
                    "exchange.declare of unknown type {:?}, whose connection error would close {neighbours} other channel(s)",
                    String::from_utf8_lossy(&kind)
                ),
            ),
            Method::Consume { tag, nowait, .. } => {
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
                    chan.consumes.push_back((tag.is_empty(), stream.clone()));
                }
                if !tag.is_empty() {
                    if let Some(stream) = stream {
                        chan.stream_consumers.push((tag.clone(), stream));
                    }
                    chan.tags.push(tag);
                }
                Ok(())
            }
            Method::Cancel { tag } => {
                chan.tags.retain(|t| *t != tag);
                chan.stream_consumers.retain(|(t, _)| *t != tag);
                Ok(())
            }
            Method::QueueDeclare {
                queue,
                passive,
                nowait,
                queue_type,
                ..
            } => {
                chan.last_queue = (!queue.is_empty()).then_some(queue);
                if !nowait {
                    let kind = queue_type.as_deref().and_then(QueueKind::named);
                    chan.declares.push_back(kind.filter(|_| !passive));
                }
                Ok(())
            }
            Method::Qos {
                prefetch_count,
                global,
                ..
            } => {
                chan.global_qos = global && prefetch_count > 0;
                if !global {
                    chan.consumer_prefetch = prefetch_count > 0;
                }
                Ok(())
            }
            Method::Settle { tag, multiple, .. } => {
                chan.unsettled.retain(|(d, _)| !covers(tag, multiple, *d));
                Ok(())
            }
            _ => {
                match mid {
                    ids::TX_SELECT => chan.tx_published = chan.tx_published.or(Some(false)),
                    ids::BASIC_PUBLISH => chan.tx_published = chan.tx_published.map(|_| true),
                    ids::TX_COMMIT | ids::TX_ROLLBACK => {
                        chan.committing = mid == ids::TX_COMMIT && chan.tx_published == Some(true);
                        chan.tx_published = chan.tx_published.map(|_| false);
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }
}

/// Whether a broker whose plugins add `plugin_types` knows the exchange type `kind`:
/// RabbitMQ's four, or a plugin's. Both the checker and the fake broker judge a declare by
/// it, so that what the checker lets through the broker answers as RabbitMQ would.
#[must_use]
pub fn known_exchange_type(kind: &[u8], plugin_types: &[String]) -> bool {
    matches!(kind, b"direct" | b"fanout" | b"topic" | b"headers")
        || plugin_types.iter().any(|t| t.as_bytes() == kind)
}

/// Splits and checks a method a client sends: known, client-sendable, arguments exactly of
/// its layout, and decodable.
pub(crate) fn client_method(f: &Frame) -> Result<(MethodId, Method), Violation> {
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

pub(crate) fn handshake_method(f: &Frame, want: MethodId) -> Result<Method, Violation> {
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
