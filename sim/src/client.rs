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

use crate::tag::{Origin, NO_QUEUE, TAG_LEN};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};
use warren_core::content::parse_header;
use warren_core::frame::{
    method_frame, Frame, FrameDecoder, FrameType, FRAME_END, HEARTBEAT, PROTOCOL_HEADER,
};
use warren_core::method::{self, encode, ids, Close, Method, MethodId, StartOk, Tune};
use warren_core::reply;
use warren_core::table::{longstr, FieldTable, FieldValue};
use warren_core::wire::{Reader, Writer};

/// Queue names shared by the clients of one world: a consumer that declares a server-named
/// queue posts the name in its slot, and publishers address the slot. A client that got
/// `declare-ok` for an exclusive declare also claims the queue: from then on it is that
/// client's, and nobody else may consume, get, purge or delete it (B5).
#[derive(Debug, Default, Clone)]
pub struct Board {
    slots: Vec<Option<String>>,
    /// Exclusive queues by the client whose declare created them: (slot, name, client,
    /// when it learnt the name), in claim order.
    claims: Vec<(u32, String, u32, Instant)>,
}

impl Board {
    /// A board with `named` slots preset to `q0`, `q1`, ... and `dynamic` empty slots after
    /// them for server-named queues.
    #[must_use]
    pub fn new(named: usize, dynamic: usize) -> Self {
        let mut slots: Vec<Option<String>> = (0..named).map(|i| Some(format!("q{i}"))).collect();
        slots.extend((0..dynamic).map(|_| None));
        Board {
            slots,
            claims: Vec::new(),
        }
    }

    /// The queue name in a slot, if known yet.
    #[must_use]
    pub fn name(&self, slot: u32) -> Option<&str> {
        self.slots.get(slot as usize).and_then(|s| s.as_deref())
    }

    fn set(&mut self, slot: u32, name: String) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(name);
        }
    }

    /// Client `owner` declared the exclusive queue `name` (in `slot`) and got `declare-ok`.
    pub fn claim(&mut self, slot: u32, name: &str, owner: u32, at: Instant) {
        self.claims.push((slot, name.to_owned(), owner, at));
    }

    /// The client that declared the queue now in `slot` exclusively, if one did.
    #[must_use]
    pub fn exclusive_owner(&self, slot: u32) -> Option<u32> {
        let name = self.name(slot)?;
        self.claims
            .iter()
            .rev()
            .find(|(s, n, _, _)| *s == slot && n == name)
            .map(|(_, _, c, _)| *c)
    }

    /// Who had claimed the exclusive queue `name` at `at` (the latest claim before it).
    #[must_use]
    pub fn owner_of(&self, name: &str, at: Instant) -> Option<(u32, Instant)> {
        self.claims
            .iter()
            .rev()
            .find(|(_, n, _, t)| n == name && *t <= at)
            .map(|(_, _, c, t)| (*c, *t))
    }

    /// The slot holding `name`, if any.
    #[must_use]
    pub fn slot_of(&self, name: &str) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| s.as_deref() == Some(name))
            .map(|i| i as u32)
    }
}

/// Where a publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The default exchange, routing key = the queue in this board slot.
    Slot(u32),
    /// A named exchange and routing key.
    Exchange(String, String),
}

/// What an intruder tries on another client's exclusive queue. RabbitMQ refuses each of them
/// across connections with `Channel.Close 405 RESOURCE_LOCKED`; through warren the owner and
/// the intruder may share one broker connection, so warren must refuse them itself (B5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intrusion {
    /// `queue.declare passive=true`.
    PassiveDeclare,
    /// `basic.consume`.
    Consume,
    /// `basic.get`.
    Get,
    /// `queue.purge`.
    Purge,
    /// `queue.delete`.
    Delete,
    /// `queue.bind` to `amq.direct`.
    Bind,
    /// `queue.unbind` from `amq.direct`.
    Unbind,
}

impl Intrusion {
    /// Every kind, for drawing one at random.
    pub const ALL: [Intrusion; 7] = [
        Intrusion::PassiveDeclare,
        Intrusion::Consume,
        Intrusion::Get,
        Intrusion::Purge,
        Intrusion::Delete,
        Intrusion::Bind,
        Intrusion::Unbind,
    ];

    /// The method it sends.
    #[must_use]
    pub fn method(self) -> MethodId {
        match self {
            Intrusion::PassiveDeclare => ids::QUEUE_DECLARE,
            Intrusion::Consume => ids::BASIC_CONSUME,
            Intrusion::Get => ids::BASIC_GET,
            Intrusion::Purge => ids::QUEUE_PURGE,
            Intrusion::Delete => ids::QUEUE_DELETE,
            Intrusion::Bind => ids::QUEUE_BIND,
            Intrusion::Unbind => ids::QUEUE_UNBIND,
        }
    }

    /// Whether `mid` answers it with success.
    fn answered_by(self, mid: MethodId) -> bool {
        match self {
            Intrusion::PassiveDeclare => mid == ids::QUEUE_DECLARE_OK,
            Intrusion::Consume => mid == ids::BASIC_CONSUME_OK,
            Intrusion::Get => mid == ids::BASIC_GET_OK || mid == GET_EMPTY,
            Intrusion::Purge => mid == QUEUE_PURGE_OK,
            Intrusion::Delete => mid == ids::QUEUE_DELETE_OK,
            Intrusion::Bind => mid == QUEUE_BIND_OK,
            Intrusion::Unbind => mid == QUEUE_UNBIND_OK,
        }
    }

    fn frame(self, ch: u16, queue: &str) -> Bytes {
        let q = queue.as_bytes();
        match self {
            Intrusion::PassiveDeclare => method_frame(ch, ids::QUEUE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(q)
                    .bit(true)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .u32(0);
            }),
            Intrusion::Consume => method_frame(ch, ids::BASIC_CONSUME, |w| {
                w.u16(0)
                    .shortstr(q)
                    .shortstr(b"")
                    .bit(false)
                    .bit(true)
                    .bit(false)
                    .bit(false)
                    .u32(0);
            }),
            Intrusion::Get => method_frame(ch, ids::BASIC_GET, |w| {
                w.u16(0).shortstr(q).bit(false);
            }),
            Intrusion::Purge => method_frame(ch, ids::QUEUE_PURGE, |w| {
                w.u16(0).shortstr(q).bit(false);
            }),
            Intrusion::Delete => method_frame(ch, ids::QUEUE_DELETE, |w| {
                w.u16(0).shortstr(q).bit(false).bit(false).bit(false);
            }),
            Intrusion::Bind | Intrusion::Unbind => {
                let bind = self == Intrusion::Bind;
                method_frame(ch, self.method(), |w| {
                    w.u16(0)
                        .shortstr(q)
                        .shortstr(b"amq.direct")
                        .shortstr(b"intruder");
                    if bind {
                        w.bit(false);
                    }
                    w.u32(0);
                })
            }
        }
    }
}

/// How an intrusion ended, as the intruder saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrusionOutcome {
    /// What it tried.
    pub op: Intrusion,
    /// On which board slot.
    pub slot: u32,
    /// The client the queue belonged to when it was tried (`None`: nobody had claimed it).
    pub owner: Option<u32>,
    /// `Some(code)` for a `Channel.Close`, `None` for a success reply.
    pub refused: Option<u16>,
}

/// `basic.get-empty`.
const GET_EMPTY: MethodId = MethodId::new(60, 72);
/// `queue.bind-ok`.
const QUEUE_BIND_OK: MethodId = MethodId::new(50, 21);
/// `queue.purge-ok`.
const QUEUE_PURGE_OK: MethodId = MethodId::new(50, 31);
/// `queue.unbind-ok`.
const QUEUE_UNBIND_OK: MethodId = MethodId::new(50, 51);

/// A protocol violation a misbehaving client commits on purpose, and the reply code warren
/// must close it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// `basic.publish` on a channel that was never opened (504).
    FrameOnUnopenedChannel,
    /// `channel.open` on an open channel (504).
    SecondOpen,
    /// A content header with no publish before it (505).
    HeaderWithoutMethod,
    /// `basic.publish` followed directly by a body (505).
    BodyWithoutHeader,
    /// A method while a publish's body is still expected (505).
    MethodInsideContent,
    /// More body bytes than the header declared (505).
    BodyTooLong,
    /// A frame larger than the negotiated frame_max (501).
    OversizedFrame,
    /// A frame whose end octet is not 0xCE (501).
    BadFrameEnd,
    /// A frame type octet AMQP does not define (501).
    BadFrameType,
    /// A heartbeat on channel 1 (501).
    HeartbeatOnChannel,
    /// A method id that does not exist (540).
    UnknownMethod,
    /// `connection.tune` after the handshake (503).
    ConnectionMethodAfterOpen,
    /// `basic.deliver` sent by a client (503).
    ServerOnlyMethod,
    /// `basic.publish` with immediate=true (540).
    PublishImmediate,
    /// `exchange.declare` of an unknown type (503).
    UnknownExchangeType,
    /// `basic.qos` with prefetch_size != 0 (540).
    QosPrefetchSize,
    /// A channel number above the negotiated channel_max (530).
    ChannelAboveMax,
    /// `basic.publish` with a truncated argument list (502).
    MalformedArgs,
    /// `basic.consume` reusing a consumer tag on the same channel (530).
    ConsumerTagReuse,
    /// `channel.flow active=false`: RabbitMQ would close the connection; warren answers it.
    FlowInactive,
}

impl Misbehaviour {
    /// Every kind, for drawing one at random.
    pub const ALL: [Misbehaviour; 20] = [
        Misbehaviour::FrameOnUnopenedChannel,
        Misbehaviour::SecondOpen,
        Misbehaviour::HeaderWithoutMethod,
        Misbehaviour::BodyWithoutHeader,
        Misbehaviour::MethodInsideContent,
        Misbehaviour::BodyTooLong,
        Misbehaviour::OversizedFrame,
        Misbehaviour::BadFrameEnd,
        Misbehaviour::BadFrameType,
        Misbehaviour::HeartbeatOnChannel,
        Misbehaviour::UnknownMethod,
        Misbehaviour::ConnectionMethodAfterOpen,
        Misbehaviour::ServerOnlyMethod,
        Misbehaviour::PublishImmediate,
        Misbehaviour::UnknownExchangeType,
        Misbehaviour::QosPrefetchSize,
        Misbehaviour::ChannelAboveMax,
        Misbehaviour::MalformedArgs,
        Misbehaviour::ConsumerTagReuse,
        Misbehaviour::FlowInactive,
    ];

    /// The connection-close code warren must answer with (`None`: no close).
    #[must_use]
    pub fn expected_code(self) -> Option<u16> {
        use Misbehaviour::*;
        Some(match self {
            FrameOnUnopenedChannel | SecondOpen => reply::CHANNEL_ERROR,
            HeaderWithoutMethod | BodyWithoutHeader | MethodInsideContent | BodyTooLong => {
                reply::UNEXPECTED_FRAME
            }
            OversizedFrame | BadFrameEnd | BadFrameType | HeartbeatOnChannel => reply::FRAME_ERROR,
            UnknownMethod | PublishImmediate | QosPrefetchSize => reply::NOT_IMPLEMENTED,
            ConnectionMethodAfterOpen | ServerOnlyMethod | UnknownExchangeType => {
                reply::COMMAND_INVALID
            }
            ChannelAboveMax | ConsumerTagReuse => reply::NOT_ALLOWED,
            MalformedArgs => reply::SYNTAX_ERROR,
            FlowInactive => return None,
        })
    }
}

/// One step of a client's script. Steps that send a synchronous method wait for its reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `channel.open`.
    Open(u16),
    /// `channel.close`.
    CloseChannel(u16),
    /// `queue.declare` of the queue in a board slot (server-named if the slot is empty).
    Declare {
        /// Channel.
        ch: u16,
        /// Board slot.
        slot: u32,
        /// Exclusive to this connection.
        exclusive: bool,
    },
    /// `queue.declare` sent and the socket dropped at once, before the reply (a crash).
    DeclareAndDrop {
        /// Channel.
        ch: u16,
        /// Board slot (empty: server-named).
        slot: u32,
    },
    /// `basic.qos` with a prefetch count.
    Qos(u16, u16),
    /// `basic.consume` on the queue in a board slot.
    Consume {
        /// Channel.
        ch: u16,
        /// Board slot.
        slot: u32,
        /// Auto-ack.
        no_ack: bool,
    },
    /// `basic.cancel` of the channel's consumer.
    Cancel(u16),
    /// `confirm.select`.
    Confirm(u16),
    /// `tx.select`.
    TxSelect(u16),
    /// `tx.commit`.
    TxCommit(u16),
    /// `basic.publish` of a tagged body.
    Publish {
        /// Channel.
        ch: u16,
        /// Destination.
        to: Target,
        /// Body size (at least the tag).
        size: usize,
        /// Ask for a return if unroutable.
        mandatory: bool,
    },
    /// `basic.get` on the queue in a board slot, acking what it gets.
    Get {
        /// Channel.
        ch: u16,
        /// Board slot.
        slot: u32,
    },
    /// Wait until every publish on the channel is confirmed.
    WaitConfirms(u16),
    /// Do nothing for a while (deliveries are still acked).
    Sleep(Duration),
    /// Wait for the broker's `Channel.Close` on the channel (e.g. after a bad publish).
    ExpectChannelClose(u16),
    /// Stop reading the socket for good (deliveries pile up in warren: B9).
    StopReading,
    /// Freeze (no reads, no writes, no heartbeats) for a while.
    Stall(Duration),
    /// Commit a protocol violation on channel 1 and wait for the proxy's verdict.
    Misbehave(Misbehaviour),
    /// `exchange.declare`.
    ExchangeDeclare {
        /// Channel.
        ch: u16,
        /// Exchange name.
        name: String,
        /// `direct`, `fanout`, ...
        kind: String,
    },
    /// `queue.bind` of the queue in a board slot to an exchange.
    Bind {
        /// Channel.
        ch: u16,
        /// Board slot of the queue.
        slot: u32,
        /// Exchange name.
        exchange: String,
        /// Routing key.
        rk: String,
    },
    /// `basic.recover` (requeue): unacked deliveries come back, marked redelivered.
    Recover(u16),
    /// Tries `op` on the queue in a board slot (another client's exclusive queue) and
    /// expects `Channel.Close 405 RESOURCE_LOCKED` (or 404 once the queue is gone); the
    /// script goes on either way (reopen the channel with [`Step::Open`]).
    Intrude {
        /// Channel.
        ch: u16,
        /// Board slot of the queue.
        slot: u32,
        /// What to try.
        op: Intrusion,
    },
    /// Sends a publish's method, header and part of its body, then drops the socket: warren
    /// must not forward the half message (B8).
    PartialPublishAndDrop(u16),
    /// `connection.update-secret` (warren answers it itself), wait for the ok.
    UpdateSecret,
    /// `connection.close`, wait for `close-ok`.
    CloseConnection,
    /// Close the socket without a word.
    Drop,
}

/// What a client asks in the handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSpec {
    /// Label in reports (`publisher`, `consumer`, ...).
    pub kind: &'static str,
    /// When it connects, from the world's start.
    pub start: Duration,
    /// Login.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
    /// `authentication_failure_close` capability.
    pub failure_close: bool,
    /// `connection.blocked` capability.
    pub blocked_cap: bool,
    /// Largest frame it accepts (TuneOk takes the smaller of this and warren's).
    pub frame_max: u32,
    /// Heartbeat it asks for: `None` takes warren's proposal.
    pub heartbeat: Option<u16>,
    /// Use AMQPLAIN instead of PLAIN.
    pub amqplain: bool,
    /// Nack (with requeue) every n-th first delivery instead of acking it; 0 never.
    pub nack_every: u32,
    /// How the connection starts.
    pub opening: Opening,
    /// Reads its socket at most this fast (a slow but steady reader, issue 14); `None`
    /// reads whatever arrives at once. The world meters the bytes (`crate::slow`).
    pub read_pace: Option<crate::slow::ReadPace>,
    /// The script.
    pub script: Vec<Step>,
}

impl ClientSpec {
    /// A well-behaved guest client with this script.
    #[must_use]
    pub fn guest(kind: &'static str, start: Duration, script: Vec<Step>) -> Self {
        ClientSpec {
            kind,
            start,
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            failure_close: true,
            blocked_cap: true,
            frame_max: 131_072,
            heartbeat: None,
            amqplain: false,
            nack_every: 0,
            opening: Opening::Normal,
            read_pace: None,
            script,
        }
    }
}

/// How long a client waits for `Connection.OpenOk` before giving up (client libraries
/// have a connection timeout; warren's own handshake timeout is shorter).
pub const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(15);

/// How long a client waits for `close-ok` after its `Connection.Close`.
pub const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// How a client opens its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The 0-9-1 protocol header, then the handshake.
    Normal,
    /// Connects and never says anything (the handshake timeout must drop it).
    Silent,
    /// Sends an AMQP 1.0 header (warren answers with its own header and closes, B13).
    WrongHeader,
}

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
    /// The proxy sent nothing for two heartbeat intervals; the client gave up on it.
    TimedOut,
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
            End::TimedOut => {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Tune,
    OpenOk,
    Running,
    /// We sent `Connection.Close`.
    Closing,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    OpenOk,
    CloseOk,
    /// Slot, and whether the declare was exclusive.
    DeclareOk(u32, bool),
    QosOk,
    ConsumeOk(u32),
    CancelOk,
    SelectOk,
    TxSelectOk,
    TxCommitOk,
    Get(u32),
    FlowOk,
    ExchangeDeclareOk,
    BindOk,
    RecoverOk,
    /// An intrusion on the queue in a board slot: success, or a `Channel.Close`.
    Intrusion(Intrusion, u32),
}

impl Reply {
    fn matches(&self, mid: MethodId) -> bool {
        match self {
            Reply::OpenOk => mid == ids::CHANNEL_OPEN_OK,
            Reply::CloseOk => mid == ids::CHANNEL_CLOSE_OK,
            Reply::DeclareOk(..) => mid == ids::QUEUE_DECLARE_OK,
            Reply::QosOk => mid == ids::BASIC_QOS_OK,
            Reply::ConsumeOk(_) => mid == ids::BASIC_CONSUME_OK,
            Reply::CancelOk => mid == ids::BASIC_CANCEL_OK,
            Reply::SelectOk => mid == MethodId::new(85, 11),
            Reply::TxSelectOk => mid == MethodId::new(90, 11),
            Reply::TxCommitOk => mid == ids::TX_COMMIT_OK,
            Reply::Get(_) => mid == ids::BASIC_GET_OK || mid == MethodId::new(60, 72),
            Reply::FlowOk => mid == ids::CHANNEL_FLOW_OK,
            Reply::ExchangeDeclareOk => mid == ids::EXCHANGE_DECLARE_OK,
            Reply::BindOk => mid == MethodId::new(50, 21),
            Reply::RecoverOk => mid == MethodId::new(60, 111),
            Reply::Intrusion(op, _) => op.answered_by(mid),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChState {
    Opening,
    Open,
    /// We sent `channel.close`.
    Closing,
}

#[derive(Debug)]
enum IncomingKind {
    Deliver {
        tag: Vec<u8>,
        dtag: u64,
        redelivered: bool,
    },
    GetOk {
        dtag: u64,
        slot: u32,
    },
    Return,
}

#[derive(Debug)]
struct Incoming {
    kind: IncomingKind,
    size: Option<u64>,
    body: Vec<u8>,
}

#[derive(Debug)]
struct Chan {
    state: ChState,
    expect: Option<Reply>,
    content: Option<Incoming>,
    last_dtag: u64,
    /// Consumer tags and the slot they consume, including cancelled ones (late deliveries).
    consumers: Vec<(Vec<u8>, u32, bool)>,
    no_ack: bool,
    confirm: bool,
    next_cno: u64,
    /// Confirm number → publish sequence number, for publishes not yet confirmed.
    outstanding: BTreeMap<u64, u32>,
    /// Highest sequence number seen per origin among first deliveries.
    order: BTreeMap<(u32, u16), u32>,
    /// First (not redelivered) deliveries so far.
    firsts: u32,
    /// An intrusion waiting for its answer: what, on which slot and queue, and whose queue
    /// it was when sent.
    intrusion: Option<(Intrusion, u32, String, Option<u32>)>,
}

impl Chan {
    fn new() -> Self {
        Chan {
            state: ChState::Opening,
            expect: Some(Reply::OpenOk),
            content: None,
            last_dtag: 0,
            consumers: Vec::new(),
            no_ack: false,
            confirm: false,
            next_cno: 0,
            outstanding: BTreeMap::new(),
            order: BTreeMap::new(),
            firsts: 0,
            intrusion: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Wait {
    Nothing,
    Reply(u16),
    Confirms(u16),
    Until(Instant),
    ChannelClose(u16),
    /// After a misbehaviour: the proxy's close (or, for a tolerated one, a short grace).
    Verdict(Instant),
    ConnectionCloseOk,
    SecretOk,
    Forever,
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

    /// Whether it was told `Connection.Blocked` and not yet `Unblocked`.
    #[must_use]
    pub fn is_blocked(&self) -> bool {
        self.blocked
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
            Wait::Until(t) | Wait::Verdict(t) => Some(t),
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
            return self.finish(now, End::TimedOut);
        }
        if self.phase == Phase::Closing
            && self
                .closing_since
                .is_some_and(|t| now >= t + CLOSE_PATIENCE)
        {
            self.out.push_back(ClientOut::Close);
            // Not reading, it could not have seen the close-ok: it is done all the same.
            let end = if self.reading {
                End::TimedOut
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
                    return self.finish(now, End::TimedOut);
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

    // ----- frames -------------------------------------------------------------------------

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

    fn handshake_frame(&mut self, now: Instant, f: Frame) {
        if f.kind() == FrameType::Heartbeat {
            return;
        }
        let m = match method::decode(f.payload()) {
            Ok(m) if f.kind() == FrameType::Method && f.channel() == 0 => m,
            _ => return self.violation(format!("unexpected frame in the handshake: {:?}", f)),
        };
        match (self.phase, m) {
            (_, Method::ConnectionClose(c)) => {
                self.send(now, encode::close_ok(0));
                self.finish(now, End::Closed(c.code, c.text));
            }
            (Phase::Start, Method::Start(start)) => {
                let caps = FieldTable::default()
                    .with(
                        "authentication_failure_close",
                        FieldValue::Bool(self.spec.failure_close),
                    )
                    .with(
                        "connection.blocked",
                        FieldValue::Bool(self.spec.blocked_cap),
                    )
                    .with("consumer_cancel_notify", FieldValue::Bool(true))
                    .with("publisher_confirms", FieldValue::Bool(true));
                let (mechanism, response) = if self.spec.amqplain {
                    let t = FieldTable::default()
                        .with("LOGIN", longstr(&self.spec.user))
                        .with("PASSWORD", longstr(&self.spec.password));
                    let mut b = BytesMut::new();
                    t.encode(&mut b);
                    ("AMQPLAIN".to_owned(), b[4..].to_vec())
                } else {
                    (
                        "PLAIN".to_owned(),
                        format!("\0{}\0{}", self.spec.user, self.spec.password).into_bytes(),
                    )
                };
                if !start.mechanisms.split(' ').any(|m| m == mechanism) {
                    self.violation(format!("mechanism {mechanism} not offered"));
                }
                let ok = StartOk {
                    client_properties: FieldTable::default()
                        .with("product", longstr("warren-sim"))
                        .with("connection_name", longstr(&format!("c{}", self.id)))
                        .with("capabilities", FieldValue::Table(caps)),
                    mechanism,
                    response,
                    locale: "en_US".into(),
                };
                self.send(now, encode::start_ok(&ok));
                self.start_ok_at = Some(now);
                self.phase = Phase::Tune;
            }
            (Phase::Tune, Method::Tune(t)) => {
                let lower =
                    |theirs: u32, ours: u32| if theirs == 0 { ours } else { theirs.min(ours) };
                let tune = Tune {
                    channel_max: t.channel_max,
                    frame_max: lower(t.frame_max, self.spec.frame_max),
                    heartbeat: self.spec.heartbeat.unwrap_or(t.heartbeat),
                };
                self.tune = tune;
                self.decoder = FrameDecoder::new(tune.frame_max);
                self.heartbeat =
                    (tune.heartbeat > 0).then(|| Duration::from_secs(u64::from(tune.heartbeat)));
                self.send(now, encode::tune(tune, true));
                self.send(now, encode::open(&self.spec.vhost.clone()));
                self.phase = Phase::OpenOk;
            }
            (Phase::OpenOk, Method::OpenOk) => {
                self.phase = Phase::Running;
                self.opened_at = Some(now);
            }
            (Phase::OpenOk, Method::Blocked { .. }) if self.spec.blocked_cap => self.blocked = true,
            (phase, m) => self.violation(format!("unexpected {m:?} in handshake phase {phase:?}")),
        }
    }

    fn channel_zero(&mut self, now: Instant, f: Frame) {
        match f.kind() {
            FrameType::Heartbeat => return,
            FrameType::Method => {}
            _ => return self.violation(format!("content frame on channel 0: {f:?}")),
        }
        match method::decode(f.payload()) {
            Ok(Method::ConnectionClose(c)) => {
                self.send(now, encode::close_ok(0));
                self.finish(now, End::Closed(c.code, c.text));
            }
            Ok(Method::ConnectionCloseOk) if self.phase == Phase::Closing => {
                self.out.push_back(ClientOut::Close);
                self.finish(now, End::Finished);
            }
            Ok(Method::Blocked { .. }) => {
                if !self.spec.blocked_cap {
                    self.violation("connection.blocked sent to a client without the capability");
                }
                if self.blocked {
                    self.violation("connection.blocked twice without unblocked");
                }
                self.blocked = true;
            }
            Ok(Method::Other(id)) if id == ids::CONNECTION_UPDATE_SECRET_OK => {
                if self.wait == Wait::SecretOk {
                    self.wait = Wait::Nothing;
                } else {
                    self.violation("connection.update-secret-ok we did not ask for");
                }
            }
            Ok(Method::Unblocked) => {
                if !self.blocked {
                    self.violation("connection.unblocked without blocked");
                }
                self.blocked = false;
            }
            other => self.violation(format!("unexpected {other:?} on channel 0")),
        }
    }

    fn channel_frame(&mut self, now: Instant, f: Frame, board: &mut Board) {
        let ch = f.channel();
        let Some(chan) = self.chans.get_mut(&ch) else {
            return self.violation(format!(
                "{} on channel {ch}, which is not open",
                crate::trace::describe(&f)
            ));
        };
        if chan.content.is_some() {
            return self.content_frame(now, ch, f, board);
        }
        if f.kind() != FrameType::Method {
            return self.violation(format!(
                "{} on channel {ch} without a content method",
                crate::trace::describe(&f)
            ));
        }
        let Ok((mid, args)) = method::split_payload(f.payload()) else {
            return self.violation(format!("malformed method on channel {ch}"));
        };
        let mut r = Reader::new(args);
        match mid {
            ids::CHANNEL_CLOSE => {
                let code = r.u16().unwrap_or(0);
                let text = lossy(r.shortstr().unwrap_or_default());
                let cause = MethodId::new(r.u16().unwrap_or(0), r.u16().unwrap_or(0));
                let crossing = chan.state == ChState::Closing;
                chan.content = None;
                let intrusion = chan.intrusion.take();
                self.channel_closes.push((ch, code));
                self.send(now, encode::close_ok(ch));
                if crossing {
                    // Both sides closed at once: each answers the other's close, and ours
                    // still gets its close-ok.
                    return;
                }
                self.chans.remove(&ch);
                if let Some(i) = intrusion {
                    // Refused, as it should be: the script goes on.
                    self.intrusion_refused(i, code, &text, cause);
                    if self.wait == Wait::Reply(ch) {
                        self.wait = Wait::Nothing;
                    }
                    return;
                }
                match self.wait.clone() {
                    Wait::ChannelClose(c) if c == ch => self.wait = Wait::Nothing,
                    Wait::Reply(c) | Wait::Confirms(c) if c == ch => {
                        // The step can never finish: leave politely.
                        self.abandon(now);
                    }
                    _ => {}
                }
            }
            ids::CHANNEL_CLOSE_OK => {
                if chan.state == ChState::Closing {
                    self.chans.remove(&ch);
                    if self.wait == Wait::Reply(ch) {
                        self.wait = Wait::Nothing;
                    }
                } else {
                    self.violation(format!("channel.close-ok on channel {ch} we did not close"));
                }
            }
            ids::BASIC_DELIVER => {
                let tag = r.shortstr().unwrap_or_default().to_vec();
                let dtag = r.u64().unwrap_or(0);
                let redelivered = r.bit().unwrap_or(false);
                if !chan.consumers.iter().any(|(t, _, _)| *t == tag) {
                    let what = format!(
                        "basic.deliver for consumer {:?} on channel {ch}, which has no such consumer",
                        lossy(&tag)
                    );
                    self.violation(what);
                }
                let chan = self.chans.get_mut(&ch).expect("present");
                chan.content = Some(Incoming {
                    kind: IncomingKind::Deliver {
                        tag,
                        dtag,
                        redelivered,
                    },
                    size: None,
                    body: Vec::new(),
                });
            }
            ids::BASIC_GET_OK => {
                let dtag = r.u64().unwrap_or(0);
                let slot = match chan.expect.take() {
                    Some(Reply::Get(slot)) => slot,
                    Some(Reply::Intrusion(Intrusion::Get, slot)) => {
                        if let Some(i) = chan.intrusion.take() {
                            self.intrusion_answered(i, mid, board);
                        }
                        slot
                    }
                    other => {
                        chan.expect = other;
                        self.violation(format!("basic.get-ok on channel {ch} without a get"));
                        NO_QUEUE
                    }
                };
                let chan = self.chans.get_mut(&ch).expect("present");
                chan.content = Some(Incoming {
                    kind: IncomingKind::GetOk { dtag, slot },
                    size: None,
                    body: Vec::new(),
                });
            }
            ids::BASIC_RETURN => {
                chan.content = Some(Incoming {
                    kind: IncomingKind::Return,
                    size: None,
                    body: Vec::new(),
                });
            }
            ids::BASIC_ACK | ids::BASIC_NACK => {
                let dtag = r.u64().unwrap_or(0);
                let multiple = r.bit().unwrap_or(false);
                let ack = mid == ids::BASIC_ACK;
                self.confirm(ch, dtag, multiple, ack);
            }
            ids::BASIC_CANCEL => {
                // The broker cancels a consumer when its queue is deleted.
                let tag = r.shortstr().unwrap_or_default().to_vec();
                let slot = chan
                    .consumers
                    .iter()
                    .find(|(t, _, _)| *t == tag)
                    .map(|(_, s, _)| *s);
                chan.consumers.retain(|(t, _, _)| *t != tag);
                if let Some(slot) = slot {
                    if board.exclusive_owner(slot) == Some(self.id) {
                        let name = board.name(slot).unwrap_or("?").to_owned();
                        self.violation(format!(
                            "its exclusive queue '{name}' (slot {slot}) was deleted under its consumer on channel {ch} while it was connected"
                        ));
                    }
                }
            }
            _ => {
                let expected = chan.expect.as_ref().is_some_and(|e| e.matches(mid));
                if !expected {
                    let what = format!(
                        "unexpected {mid:?} on channel {ch} (waiting for {:?})",
                        chan.expect
                    );
                    return self.violation(what);
                }
                let reply = chan.expect.take().expect("checked");
                match reply {
                    Reply::OpenOk => chan.state = ChState::Open,
                    Reply::DeclareOk(slot, exclusive) => {
                        let name = lossy(r.shortstr().unwrap_or_default());
                        if board.name(slot).is_none() {
                            board.set(slot, name.clone());
                        }
                        if exclusive && board.name(slot) == Some(name.as_str()) {
                            board.claim(slot, &name, self.id, now);
                        }
                    }
                    Reply::Intrusion(op, slot) => {
                        if op == Intrusion::Consume {
                            let tag = r.shortstr().unwrap_or_default().to_vec();
                            chan.consumers.push((tag, slot, true));
                        }
                        if let Some(i) = chan.intrusion.take() {
                            self.intrusion_answered(i, mid, board);
                        }
                    }
                    Reply::ConsumeOk(slot) => {
                        let tag = r.shortstr().unwrap_or_default().to_vec();
                        let no_ack = chan.no_ack;
                        chan.consumers.push((tag, slot, no_ack));
                    }
                    Reply::SelectOk => chan.confirm = true,
                    _ => {}
                }
                if self.wait == Wait::Reply(ch) {
                    self.wait = Wait::Nothing;
                }
            }
        }
    }

    /// An intrusion was answered with success. Only a deletion may be (RabbitMQ deletes a
    /// missing queue without complaint); anything else on another client's exclusive queue is
    /// what RabbitMQ refuses with 405.
    fn intrusion_answered(
        &mut self,
        (op, slot, name, owner): (Intrusion, u32, String, Option<u32>),
        mid: MethodId,
        board: &Board,
    ) {
        let owner = owner.or_else(|| board.exclusive_owner(slot));
        self.intrusions.push(IntrusionOutcome {
            op,
            slot,
            owner,
            refused: None,
        });
        if let Some(o) = owner.filter(|o| *o != self.id) {
            if op != Intrusion::Delete {
                self.violation(format!(
                    "{op:?} on c{o}'s exclusive queue '{name}' was answered {mid:?}: RabbitMQ refuses it (405 RESOURCE_LOCKED while c{o} is connected, 404 once its connection closed and took the queue along)"
                ));
            }
        }
    }

    /// An intrusion was refused with `Channel.Close`: 405 with RabbitMQ's text and the
    /// method as its cause, or 404 with RabbitMQ's text once the queue is gone (never for a
    /// delete, which RabbitMQ answers with delete-ok then).
    fn intrusion_refused(
        &mut self,
        (op, slot, name, owner): (Intrusion, u32, String, Option<u32>),
        code: u16,
        text: &str,
        cause: MethodId,
    ) {
        self.intrusions.push(IntrusionOutcome {
            op,
            slot,
            owner,
            refused: Some(code),
        });
        let expected = format!(
            "RESOURCE_LOCKED - {}",
            crate::broker::locked_text(&name, &self.spec.vhost)
        );
        let ok = match code {
            reply::RESOURCE_LOCKED => {
                // Texts longer than a short string are cut (252 bytes and "...").
                let same_text = text == expected
                    || (text.ends_with("...") && expected.starts_with(&text[..text.len() - 3]));
                if !same_text || cause != op.method() {
                    self.violation(format!(
                        "{op:?} on the exclusive queue '{name}' was refused with 405 {text:?} caused by {cause:?}, expected RabbitMQ's {expected:?} caused by {:?}",
                        op.method()
                    ));
                }
                true
            }
            // RabbitMQ deletes a missing queue quietly; everything else names it in its 404.
            reply::NOT_FOUND if op != Intrusion::Delete => {
                let expected = format!(
                    "NOT_FOUND - no queue '{name}' in vhost '{}'",
                    self.spec.vhost
                );
                if text != expected || cause != op.method() {
                    self.violation(format!(
                        "{op:?} on the exclusive queue '{name}' was refused with 404 {text:?} caused by {cause:?}, expected RabbitMQ's {expected:?} caused by {:?}",
                        op.method()
                    ));
                }
                true
            }
            _ => false,
        };
        if !ok {
            self.violation(format!(
                "{op:?} on the exclusive queue '{name}' was refused with {code} {text:?}, expected 405 RESOURCE_LOCKED (or 404 once it is gone)"
            ));
        }
    }

    fn confirm(&mut self, ch: u16, dtag: u64, multiple: bool, ack: bool) {
        let Some(chan) = self.chans.get_mut(&ch) else {
            return;
        };
        if !chan.confirm {
            return self.violation(format!(
                "{} on channel {ch}, which is not in confirm mode",
                if ack { "basic.ack" } else { "basic.nack" }
            ));
        }
        if dtag > chan.next_cno {
            let what = format!(
                "confirm {dtag} on channel {ch}, but only {} publishes were made",
                chan.next_cno
            );
            return self.violation(what);
        }
        let done: Vec<u64> = if multiple {
            chan.outstanding.range(..=dtag).map(|(k, _)| *k).collect()
        } else if chan.outstanding.contains_key(&dtag) {
            vec![dtag]
        } else {
            let what = format!("confirm {dtag} on channel {ch} twice");
            return self.violation(what);
        };
        for cno in done {
            if let Some(seq) = chan.outstanding.remove(&cno) {
                if ack {
                    self.acked.insert((ch, seq));
                } else {
                    self.nacked.insert((ch, seq));
                }
            }
        }
        if self.wait == Wait::Confirms(ch)
            && self
                .chans
                .get(&ch)
                .is_some_and(|c| c.outstanding.is_empty())
        {
            self.wait = Wait::Nothing;
        }
    }

    fn content_frame(&mut self, now: Instant, ch: u16, f: Frame, board: &mut Board) {
        let chan = self.chans.get_mut(&ch).expect("present");
        let inc = chan.content.as_mut().expect("present");
        match (f.kind(), inc.size) {
            (FrameType::Header, None) => match parse_header(f.payload()) {
                Ok(h) => inc.size = Some(h.body_size),
                Err(e) => {
                    return self.violation(format!("bad content header on channel {ch}: {e}"))
                }
            },
            (FrameType::Body, Some(size)) => {
                inc.body.extend_from_slice(f.payload());
                if inc.body.len() as u64 > size {
                    chan.content = None;
                    return self
                        .violation(format!("content body on channel {ch} exceeds its header"));
                }
            }
            _ => {
                chan.content = None;
                let what = format!(
                    "{} on channel {ch} while content was expected",
                    crate::trace::describe(&f)
                );
                return self.violation(what);
            }
        }
        if inc.size == Some(inc.body.len() as u64) {
            let inc = chan.content.take().expect("present");
            self.message(now, ch, inc, board);
        }
    }

    fn message(&mut self, now: Instant, ch: u16, inc: Incoming, board: &Board) {
        let me = self.id;
        let origin = Origin::parse(&inc.body);
        if let Some(o) = origin {
            if !o.matches_body(&inc.body) {
                self.violation(format!("corrupted body of [{o}] on channel {ch}"));
            }
        } else {
            self.violation(format!(
                "untagged message on channel {ch} ({} bytes)",
                inc.body.len()
            ));
        }
        // A delivery or get-ok from another client's exclusive queue (B5): the queue it was
        // consumed or got from, or the one it was published to.
        let chan = self.chans.get(&ch).expect("present");
        let mut from = match &inc.kind {
            IncomingKind::Deliver { tag, .. } => chan
                .consumers
                .iter()
                .find(|(t, _, _)| t == tag)
                .map(|(_, s, _)| *s),
            IncomingKind::GetOk { slot, .. } => Some(*slot),
            IncomingKind::Return => None,
        };
        if matches!(inc.kind, IncomingKind::Return) {
            from = None;
        } else if let Some(o) = origin {
            if from.is_none_or(|s| board.exclusive_owner(s).is_none_or(|x| x == me)) {
                from = Some(o.queue);
            }
        }
        if let Some(slot) = from.filter(|s| *s != NO_QUEUE) {
            if let Some(owner) = board.exclusive_owner(slot).filter(|x| *x != me) {
                let what = match origin {
                    Some(o) => format!("[{o}]"),
                    None => "a message".to_owned(),
                };
                let name = board.name(slot).unwrap_or("?").to_owned();
                self.violation(format!(
                    "received {what} on channel {ch} from c{owner}'s exclusive queue '{name}' (slot {slot})"
                ));
            }
        }
        let chan = self.chans.get_mut(&ch).expect("present");
        match inc.kind {
            IncomingKind::Deliver {
                tag,
                dtag,
                redelivered,
            } => {
                let expected_dtag = chan.last_dtag + 1;
                chan.last_dtag = dtag;
                let consumer = chan.consumers.iter().find(|(t, _, _)| *t == tag).cloned();
                let mut problems = Vec::new();
                if dtag != expected_dtag {
                    problems.push(format!(
                        "delivery tag {dtag} on channel {ch}, expected {expected_dtag}"
                    ));
                }
                if let (Some(o), Some((_, slot, _))) = (origin, &consumer) {
                    if o.queue != NO_QUEUE && o.queue != *slot {
                        problems.push(format!(
                            "[{o}] was addressed to queue slot {} but came from consumer of slot {slot} on channel {ch}",
                            o.queue
                        ));
                    }
                }
                if let Some(o) = origin {
                    if !redelivered {
                        let last = chan.order.entry((o.client, o.channel)).or_insert(0);
                        if o.seq <= *last {
                            problems.push(format!(
                                "[{o}] delivered on channel {ch} after #{} (order broken)",
                                *last
                            ));
                        }
                        *last = (*last).max(o.seq);
                    }
                    self.received.push(Received {
                        ch,
                        origin: o,
                        redelivered,
                    });
                }
                let no_ack = consumer.is_some_and(|c| c.2);
                let state = chan.state;
                chan.firsts += u32::from(!redelivered);
                let nack = self.spec.nack_every > 0
                    && !redelivered
                    && chan.firsts.is_multiple_of(self.spec.nack_every);
                for p in problems {
                    self.violation(p);
                }
                if !no_ack && state == ChState::Open && self.reading {
                    let frame = if nack {
                        method_frame(ch, ids::BASIC_NACK, |w| {
                            w.u64(dtag).bit(false).bit(true);
                        })
                    } else {
                        method_frame(ch, ids::BASIC_ACK, |w| {
                            w.u64(dtag).bit(false);
                        })
                    };
                    self.send(now, frame);
                }
            }
            IncomingKind::GetOk { dtag, slot } => {
                let expected_dtag = chan.last_dtag + 1;
                chan.last_dtag = dtag;
                let state = chan.state;
                if dtag != expected_dtag {
                    self.violation(format!(
                        "delivery tag {dtag} on channel {ch} (get), expected {expected_dtag}"
                    ));
                }
                if let Some(o) = origin {
                    if o.queue != NO_QUEUE && slot != NO_QUEUE && o.queue != slot {
                        self.violation(format!(
                            "[{o}] was addressed to queue slot {} but basic.get on slot {slot} returned it",
                            o.queue
                        ));
                    }
                    self.received.push(Received {
                        ch,
                        origin: o,
                        redelivered: false,
                    });
                }
                if state == ChState::Open {
                    let ack = method_frame(ch, ids::BASIC_ACK, |w| {
                        w.u64(dtag).bit(false);
                    });
                    self.send(now, ack);
                }
                if self.wait == Wait::Reply(ch) {
                    self.wait = Wait::Nothing;
                }
            }
            IncomingKind::Return => {
                if let Some(o) = origin {
                    if o.client != me || o.channel != ch {
                        self.violation(format!("basic.return of [{o}] reached c{me} ch{ch}"));
                    }
                }
            }
        }
    }

    // ----- the script ---------------------------------------------------------------------

    /// Gives up the script after a step became impossible: close the connection politely.
    fn abandon(&mut self, now: Instant) {
        self.pc = self.spec.script.len();
        self.wait = Wait::Nothing;
        if self.phase == Phase::Running {
            self.close_connection(now);
        }
    }

    fn close_connection(&mut self, now: Instant) {
        let close = Close {
            code: reply::REPLY_SUCCESS,
            text: "bye".into(),
            class_id: 0,
            method_id: 0,
        };
        self.send(now, encode::close(0, &close));
        self.phase = Phase::Closing;
        self.closing_since = Some(now);
        self.wait = Wait::ConnectionCloseOk;
    }

    fn waiting(&self, now: Instant) -> bool {
        match &self.wait {
            Wait::Nothing => false,
            Wait::Until(t) | Wait::Verdict(t) => now < *t,
            _ => true,
        }
    }

    fn advance(&mut self, now: Instant, board: &mut Board) {
        while self.phase == Phase::Running && self.stalled_until.is_none() && !self.waiting(now) {
            self.wait = Wait::Nothing;
            let Some(step) = self.spec.script.get(self.pc).cloned() else {
                self.script_done = true;
                // A script that ends without closing leaves like a process exiting.
                self.out.push_back(ClientOut::Close);
                return self.finish(now, End::Left);
            };
            self.pc += 1;
            self.step(now, step, board);
        }
    }

    fn expect(&mut self, ch: u16, reply: Reply) -> bool {
        match self.chans.get_mut(&ch) {
            Some(c) if c.state == ChState::Open => {
                c.expect = Some(reply);
                self.wait = Wait::Reply(ch);
                true
            }
            _ => false,
        }
    }

    #[allow(clippy::too_many_lines)]
    fn step(&mut self, now: Instant, step: Step, board: &mut Board) {
        match step {
            Step::Open(ch) => {
                if self.chans.contains_key(&ch) {
                    return;
                }
                self.chans.insert(ch, Chan::new());
                self.send(now, encode::channel_open(ch));
                self.wait = Wait::Reply(ch);
            }
            Step::CloseChannel(ch) => {
                let Some(c) = self.chans.get_mut(&ch) else {
                    return;
                };
                if c.state != ChState::Open {
                    return;
                }
                c.state = ChState::Closing;
                c.expect = Some(Reply::CloseOk);
                let close = Close {
                    code: 200,
                    text: "done".into(),
                    class_id: 0,
                    method_id: 0,
                };
                self.send(now, encode::close(ch, &close));
                self.wait = Wait::Reply(ch);
            }
            Step::Declare {
                ch,
                slot,
                exclusive,
            } => {
                let name = board.name(slot).unwrap_or("").to_owned();
                if self.expect(ch, Reply::DeclareOk(slot, exclusive)) {
                    self.send(now, queue_declare(ch, &name, exclusive));
                }
            }
            Step::DeclareAndDrop { ch, slot } => {
                let name = board.name(slot).unwrap_or("").to_owned();
                if self.expect(ch, Reply::DeclareOk(slot, true)) {
                    self.send(now, queue_declare(ch, &name, true));
                }
                self.out.push_back(ClientOut::Close);
                self.finish(now, End::Left);
            }
            Step::Qos(ch, prefetch) => {
                if self.expect(ch, Reply::QosOk) {
                    self.send(
                        now,
                        method_frame(ch, ids::BASIC_QOS, |w| {
                            w.u32(0).u16(prefetch).bit(false);
                        }),
                    );
                }
            }
            Step::Consume { ch, slot, no_ack } => {
                let Some(name) = board.name(slot).map(str::to_owned) else {
                    return;
                };
                if let Some(c) = self.chans.get_mut(&ch) {
                    c.no_ack = no_ack;
                }
                if self.expect(ch, Reply::ConsumeOk(slot)) {
                    self.send(
                        now,
                        method_frame(ch, ids::BASIC_CONSUME, |w| {
                            w.u16(0)
                                .shortstr(name.as_bytes())
                                .shortstr(b"")
                                .bit(false)
                                .bit(no_ack)
                                .bit(false)
                                .bit(false)
                                .u32(0);
                        }),
                    );
                }
            }
            Step::Cancel(ch) => {
                let tag = self
                    .chans
                    .get(&ch)
                    .and_then(|c| c.consumers.last())
                    .map(|(t, _, _)| t.clone());
                let Some(tag) = tag else { return };
                if self.expect(ch, Reply::CancelOk) {
                    self.send(
                        now,
                        method_frame(ch, ids::BASIC_CANCEL, |w| {
                            w.shortstr(&tag).bit(false);
                        }),
                    );
                }
            }
            Step::Confirm(ch) => {
                if self.expect(ch, Reply::SelectOk) {
                    self.send(
                        now,
                        method_frame(ch, ids::CONFIRM_SELECT, |w| {
                            w.bit(false);
                        }),
                    );
                }
            }
            Step::TxSelect(ch) => {
                if self.expect(ch, Reply::TxSelectOk) {
                    self.send(now, method_frame(ch, ids::TX_SELECT, |_| {}));
                }
            }
            Step::TxCommit(ch) => {
                if self.expect(ch, Reply::TxCommitOk) {
                    self.send(now, method_frame(ch, ids::TX_COMMIT, |_| {}));
                }
            }
            Step::Publish {
                ch,
                to,
                size,
                mandatory,
            } => {
                let frame_max = self.tune.frame_max;
                let Some(c) = self.chans.get_mut(&ch) else {
                    return;
                };
                if c.state != ChState::Open {
                    return;
                }
                let seq = self.seqs.entry(ch).or_insert(0);
                *seq += 1;
                let seq = *seq;
                let (exchange, rk, queue) = match &to {
                    Target::Slot(slot) => match board.name(*slot) {
                        Some(n) => (String::new(), n.to_owned(), *slot),
                        None => (String::new(), format!("nowhere-{slot}"), *slot),
                    },
                    Target::Exchange(e, rk) => (e.clone(), rk.clone(), NO_QUEUE),
                };
                let origin = Origin {
                    client: self.id,
                    channel: ch,
                    seq,
                    queue,
                };
                if c.confirm {
                    c.next_cno += 1;
                    c.outstanding.insert(c.next_cno, seq);
                }
                self.published.insert((ch, seq));
                let body = origin.body(size.max(TAG_LEN));
                let mut data = BytesMut::new();
                data.extend_from_slice(&publish(ch, &exchange, &rk, mandatory, false));
                data.extend_from_slice(&header(ch, body.len() as u64));
                let max = (frame_max as usize).saturating_sub(8).max(1);
                for chunk in body.chunks(max) {
                    data.extend_from_slice(&Frame::new(FrameType::Body, ch, chunk).freeze());
                }
                self.send(now, data.freeze());
            }
            Step::Get { ch, slot } => {
                let Some(name) = board.name(slot).map(str::to_owned) else {
                    return;
                };
                if self.expect(ch, Reply::Get(slot)) {
                    self.send(
                        now,
                        method_frame(ch, ids::BASIC_GET, |w| {
                            w.u16(0).shortstr(name.as_bytes()).bit(false);
                        }),
                    );
                }
            }
            Step::WaitConfirms(ch) => {
                if self
                    .chans
                    .get(&ch)
                    .is_some_and(|c| c.confirm && !c.outstanding.is_empty())
                {
                    self.wait = Wait::Confirms(ch);
                }
            }
            Step::Sleep(d) => self.wait = Wait::Until(now + d),
            Step::ExpectChannelClose(ch) => {
                if self.chans.contains_key(&ch) {
                    self.wait = Wait::ChannelClose(ch);
                }
            }
            Step::StopReading => self.reading = false,
            Step::Stall(d) => self.stalled_until = Some(now + d),
            Step::Misbehave(kind) => {
                self.misbehaved = Some(kind);
                self.misbehaved_at = Some(now);
                let bad = self.bad_bytes(kind);
                if kind == Misbehaviour::FlowInactive {
                    if let Some(c) = self.chans.get_mut(&1) {
                        c.expect = Some(Reply::FlowOk);
                    }
                }
                self.send(now, bad);
                self.wait = if kind.expected_code().is_some() {
                    Wait::Forever
                } else {
                    // Tolerated: give the proxy a moment to (not) react, then carry on.
                    Wait::Verdict(now + Duration::from_millis(200))
                };
            }
            Step::ExchangeDeclare { ch, name, kind } => {
                if self.expect(ch, Reply::ExchangeDeclareOk) {
                    self.send(
                        now,
                        method_frame(ch, ids::EXCHANGE_DECLARE, |w| {
                            w.u16(0)
                                .shortstr(name.as_bytes())
                                .shortstr(kind.as_bytes())
                                .bit(false)
                                .bit(false)
                                .bit(false)
                                .bit(false)
                                .bit(false)
                                .u32(0);
                        }),
                    );
                }
            }
            Step::Bind {
                ch,
                slot,
                exchange,
                rk,
            } => {
                let Some(name) = board.name(slot).map(str::to_owned) else {
                    return;
                };
                if self.expect(ch, Reply::BindOk) {
                    self.send(
                        now,
                        method_frame(ch, ids::QUEUE_BIND, |w| {
                            w.u16(0)
                                .shortstr(name.as_bytes())
                                .shortstr(exchange.as_bytes())
                                .shortstr(rk.as_bytes())
                                .bit(false)
                                .u32(0);
                        }),
                    );
                }
            }
            Step::Intrude { ch, slot, op } => {
                let Some(name) = board.name(slot).map(str::to_owned) else {
                    return;
                };
                let owner = board.exclusive_owner(slot);
                if self.expect(ch, Reply::Intrusion(op, slot)) {
                    if let Some(c) = self.chans.get_mut(&ch) {
                        c.intrusion = Some((op, slot, name.clone(), owner));
                    }
                    self.send(now, op.frame(ch, &name));
                }
            }
            Step::Recover(ch) => {
                if self.expect(ch, Reply::RecoverOk) {
                    self.send(
                        now,
                        method_frame(ch, ids::BASIC_RECOVER, |w| {
                            w.bit(true);
                        }),
                    );
                }
            }
            Step::PartialPublishAndDrop(ch) => {
                if self
                    .chans
                    .get(&ch)
                    .is_some_and(|c| c.state == ChState::Open)
                {
                    let seq = self.seqs.entry(ch).or_insert(0);
                    *seq += 1;
                    let origin = Origin {
                        client: self.id,
                        channel: ch,
                        seq: *seq,
                        queue: NO_QUEUE,
                    };
                    let body = origin.body(100);
                    let mut data = BytesMut::new();
                    data.extend_from_slice(&publish(ch, "", "half", false, false));
                    data.extend_from_slice(&header(ch, body.len() as u64));
                    data.extend_from_slice(&Frame::new(FrameType::Body, ch, &body[..40]).freeze());
                    self.send(now, data.freeze());
                }
                self.out.push_back(ClientOut::Close);
                self.finish(now, End::Left);
            }
            Step::UpdateSecret => {
                self.send(
                    now,
                    method_frame(0, ids::CONNECTION_UPDATE_SECRET, |w| {
                        w.longstr(b"new-secret").shortstr(b"rotation");
                    }),
                );
                self.wait = Wait::SecretOk;
            }
            Step::CloseConnection => self.close_connection(now),
            Step::Drop => {
                self.out.push_back(ClientOut::Close);
                self.finish(now, End::Left);
            }
        }
    }

    fn bad_bytes(&self, kind: Misbehaviour) -> Bytes {
        use Misbehaviour::*;
        let mut b = BytesMut::new();
        let frame_max = self.tune.frame_max as usize;
        match kind {
            FrameOnUnopenedChannel => {
                let ch = (2..).find(|c| !self.chans.contains_key(c)).unwrap_or(9);
                b.extend_from_slice(&publish(ch, "", "x", false, false));
            }
            SecondOpen => b.extend_from_slice(&encode::channel_open(1)),
            HeaderWithoutMethod => b.extend_from_slice(&header(1, 3)),
            BodyWithoutHeader => {
                b.extend_from_slice(&publish(1, "", "x", false, false));
                b.extend_from_slice(&Frame::new(FrameType::Body, 1, b"abc").freeze());
            }
            MethodInsideContent => {
                b.extend_from_slice(&publish(1, "", "x", false, false));
                b.extend_from_slice(&header(1, 10));
                b.extend_from_slice(&queue_declare(1, "q-inside", false));
            }
            BodyTooLong => {
                b.extend_from_slice(&publish(1, "", "x", false, false));
                b.extend_from_slice(&header(1, 2));
                b.extend_from_slice(&Frame::new(FrameType::Body, 1, b"abc").freeze());
            }
            OversizedFrame => {
                let big = vec![0u8; frame_max];
                b.extend_from_slice(&Frame::new(FrameType::Body, 1, &big).freeze());
            }
            BadFrameEnd => {
                let mut f = BytesMut::from(&encode::channel_open_ok(1)[..]);
                let n = f.len();
                f[n - 1] = 0;
                b.extend_from_slice(&f);
            }
            BadFrameType => b.extend_from_slice(&[9, 0, 1, 0, 0, 0, 0, FRAME_END]),
            HeartbeatOnChannel => b.extend_from_slice(&[8, 0, 1, 0, 0, 0, 0, FRAME_END]),
            UnknownMethod => b.extend_from_slice(&method_frame(1, MethodId::new(60, 99), |_| {})),
            ConnectionMethodAfterOpen => b.extend_from_slice(&encode::tune(self.tune, false)),
            ServerOnlyMethod => b.extend_from_slice(&method_frame(1, ids::BASIC_DELIVER, |w| {
                w.shortstr(b"t")
                    .u64(1)
                    .bit(false)
                    .shortstr(b"")
                    .shortstr(b"q");
            })),
            PublishImmediate => b.extend_from_slice(&publish(1, "", "x", false, true)),
            UnknownExchangeType => {
                b.extend_from_slice(&method_frame(1, ids::EXCHANGE_DECLARE, |w| {
                    w.u16(0)
                        .shortstr(b"ex-bad")
                        .shortstr(b"x-nonsense")
                        .bit(false)
                        .bit(false)
                        .bit(false)
                        .bit(false)
                        .bit(false)
                        .u32(0);
                }));
            }
            QosPrefetchSize => b.extend_from_slice(&method_frame(1, ids::BASIC_QOS, |w| {
                w.u32(4096).u16(1).bit(false);
            })),
            ChannelAboveMax => {
                let ch = self.tune.channel_max.saturating_add(1).max(1);
                b.extend_from_slice(&encode::channel_open(
                    if self.tune.channel_max == u16::MAX {
                        u16::MAX
                    } else {
                        ch
                    },
                ));
            }
            MalformedArgs => b.extend_from_slice(&method_frame(1, ids::BASIC_PUBLISH, |w| {
                w.u16(0).shortstr(b"");
            })),
            ConsumerTagReuse => {
                for _ in 0..2 {
                    b.extend_from_slice(&method_frame(1, ids::BASIC_CONSUME, |w| {
                        w.u16(0)
                            .shortstr(b"q0")
                            .shortstr(b"dup-tag")
                            .bit(false)
                            .bit(true)
                            .bit(false)
                            .bit(true)
                            .u32(0);
                    }));
                }
            }
            FlowInactive => b.extend_from_slice(&encode::flow(1, false, false)),
        }
        b.freeze()
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

/// A basic-class content header with no properties.
#[must_use]
pub fn header(ch: u16, size: u64) -> Bytes {
    let mut payload = BytesMut::new();
    Writer::new(&mut payload).u16(60).u16(0).u64(size).u16(0);
    Frame::new(FrameType::Header, ch, &payload).freeze()
}

/// `queue.declare` (non-durable, not auto-delete, waiting for the reply).
#[must_use]
pub fn queue_declare(ch: u16, name: &str, exclusive: bool) -> Bytes {
    method_frame(ch, ids::QUEUE_DECLARE, |w| {
        w.u16(0)
            .shortstr(name.as_bytes())
            .bit(false)
            .bit(false)
            .bit(exclusive)
            .bit(false)
            .bit(false)
            .u32(0);
    })
}
