//! Misbehaviour: the protocol violations a client commits on purpose, the bytes that commit
//! them, and the reply code warren must close it with.

use super::state::{Chan, Reply};
use super::{consume, exchange_declare, header, publish, queue_declare, FakeClient};
use bytes::{Bytes, BytesMut};
use warren_core::frame::{method_frame, Frame, FrameType, FRAME_END};
use warren_core::method::{encode, ids, MethodId};
use warren_core::reply;
use warren_core::table::{longstr, FieldValue};
use warren_testkit::hub_world::{basic_get, offset_consume, qos, queue_purge};
use warren_testkit::rules::queue_types::{Misuse, QueueKind};

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
    /// A frame whose payload is larger than the negotiated frame_max (501; RabbitMQ takes a
    /// payload of frame_max itself).
    OversizedFrame,
    /// A frame whose end octet is not 0xCE (501).
    BadFrameEnd,
    /// A frame type octet AMQP does not define (501).
    BadFrameType,
    /// A heartbeat on channel 1 (505, as RabbitMQ answers it).
    HeartbeatOnChannel,
    /// A method id that does not exist (540).
    UnknownMethod,
    /// `connection.tune-ok` after the handshake (504, as RabbitMQ answers it).
    ConnectionMethodAfterOpen,
    /// `basic.deliver` sent by a client (503).
    ServerOnlyMethod,
    /// `basic.publish` with immediate=true (540).
    PublishImmediate,
    /// `exchange.declare` of a type the broker does not know ([`UNKNOWN_EXCHANGE_TYPE`]):
    /// warren asks the broker and closes the client with the broker's own 503.
    UnknownExchangeType,
    /// `basic.qos` with prefetch_size != 0 (540).
    QosPrefetchSize,
    /// One channel more than the negotiated channel_max (530); the client asks for at most
    /// 8 and numbers them past the cap, which RabbitMQ allows while fewer are open.
    ChannelAboveMax,
    /// `basic.publish` with a truncated argument list (501 "cannot decode", as RabbitMQ).
    MalformedArgs,
    /// `basic.consume` reusing a consumer tag on the same channel (530).
    ConsumerTagReuse,
    /// `channel.flow active=false` (540, as RabbitMQ closes the connection).
    FlowInactive,
    /// `basic.get` on [`STREAM_QUEUE`], after declaring it (540 and RabbitMQ's text, B7).
    StreamGet,
    /// `basic.consume` without acks on [`STREAM_QUEUE`], after declaring it (540).
    StreamNoAckConsume,
    /// `queue.purge` of [`STREAM_QUEUE`], after declaring it (540).
    StreamPurge,
    /// A global `basic.qos`, then `basic.consume` on [`QUORUM_QUEUE`], after declaring it
    /// (540).
    QuorumGlobalQosConsume,
    /// A global `basic.qos`, then `basic.consume` on [`STREAM_QUEUE`], after declaring it
    /// and setting a per-consumer prefetch (540).
    StreamGlobalQosConsume,
    /// `basic.consume` of [`STREAM_QUEUE`] from `x-stream-offset` "bogus", after declaring
    /// it (541: RabbitMQ's channel crashes checking it, before it looks for a prefetch).
    StreamWordOffset,
    /// `basic.consume` of [`STREAM_QUEUE`] from `x-stream-offset` true, after declaring it
    /// and setting a per-consumer prefetch (541: the stream's reader crashes).
    StreamBooleanOffset,
}

/// The stream the simulation's stream clients declare (B7).
pub const STREAM_QUEUE: &str = "sim-stream";
/// The quorum queue the simulation's quorum clients declare (B7).
pub const QUORUM_QUEUE: &str = "sim-quorum";

/// The queue of type `kind` the simulation's clients declare.
#[must_use]
pub fn typed_queue(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Stream => STREAM_QUEUE,
        QueueKind::Quorum => QUORUM_QUEUE,
    }
}

/// The exchange type a [`Misbehaviour::UnknownExchangeType`] client declares: no broker of
/// the simulation knows it, and no warren is told of it.
pub const UNKNOWN_EXCHANGE_TYPE: &str = "x-nonsense";

impl Misbehaviour {
    /// The misuses of a stream or quorum queue that RabbitMQ closes the connection for, which
    /// a client commits after declaring the queue so that warren knows its type (B7). Kept
    /// out of [`Misbehaviour::ALL`] so that the scenarios drawn from it kept their meaning.
    pub const QUEUE_TYPE: [Misbehaviour; 7] = [
        Misbehaviour::StreamGet,
        Misbehaviour::StreamNoAckConsume,
        Misbehaviour::StreamPurge,
        Misbehaviour::QuorumGlobalQosConsume,
        Misbehaviour::StreamGlobalQosConsume,
        Misbehaviour::StreamWordOffset,
        Misbehaviour::StreamBooleanOffset,
    ];

    /// The queue-type misuse this is, with the type of the queue it needs declared first.
    #[must_use]
    pub fn queue_misuse(self) -> Option<(Misuse, QueueKind)> {
        match self {
            Misbehaviour::StreamGet => Some((Misuse::Get, QueueKind::Stream)),
            Misbehaviour::StreamNoAckConsume => Some((Misuse::NoAckConsume, QueueKind::Stream)),
            Misbehaviour::StreamPurge => Some((Misuse::Purge, QueueKind::Stream)),
            Misbehaviour::QuorumGlobalQosConsume => {
                Some((Misuse::GlobalQosConsume, QueueKind::Quorum))
            }
            Misbehaviour::StreamGlobalQosConsume => {
                Some((Misuse::GlobalQosConsume, QueueKind::Stream))
            }
            Misbehaviour::StreamWordOffset | Misbehaviour::StreamBooleanOffset => {
                Some((Misuse::NoOffset, QueueKind::Stream))
            }
            _ => None,
        }
    }

    /// Whether its client sets a per-consumer prefetch before it misbehaves: a stream's
    /// consumer without one gets a 406 on the channel before the misuse is looked at.
    #[must_use]
    pub fn needs_consumer_prefetch(self) -> bool {
        matches!(
            self,
            Misbehaviour::StreamGlobalQosConsume | Misbehaviour::StreamBooleanOffset
        )
    }

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

    /// The connection-close code warren must answer with.
    #[must_use]
    pub fn expected_code(self) -> u16 {
        use Misbehaviour::*;
        match self {
            FrameOnUnopenedChannel | SecondOpen => reply::CHANNEL_ERROR,
            HeaderWithoutMethod | BodyWithoutHeader | MethodInsideContent | BodyTooLong => {
                reply::UNEXPECTED_FRAME
            }
            OversizedFrame | BadFrameEnd | BadFrameType | MalformedArgs => reply::FRAME_ERROR,
            HeartbeatOnChannel => reply::UNEXPECTED_FRAME,
            UnknownMethod | PublishImmediate | QosPrefetchSize | FlowInactive => {
                reply::NOT_IMPLEMENTED
            }
            StreamGet
            | StreamNoAckConsume
            | StreamPurge
            | QuorumGlobalQosConsume
            | StreamGlobalQosConsume => reply::NOT_IMPLEMENTED,
            StreamWordOffset | StreamBooleanOffset => reply::INTERNAL_ERROR,
            ServerOnlyMethod | UnknownExchangeType => reply::COMMAND_INVALID,
            ConnectionMethodAfterOpen => reply::CHANNEL_ERROR,
            ChannelAboveMax | ConsumerTagReuse => reply::NOT_ALLOWED,
        }
    }

    /// The close text warren must use, where it is not warren's to choose: the broker's own
    /// words for a type only the broker could judge, and RabbitMQ's for a misuse of a stream
    /// or quorum queue (B7), as RabbitMQ closes a connection of the client's own.
    #[must_use]
    pub fn expected_text(self) -> Option<String> {
        if let Some((misuse, kind)) = self.queue_misuse() {
            return Some(misuse.close_text(typed_queue(kind), "/"));
        }
        (self == Misbehaviour::UnknownExchangeType)
            .then(|| format!("COMMAND_INVALID - unknown exchange type '{UNKNOWN_EXCHANGE_TYPE}'"))
    }

    /// Whether a close with `code` and `text` is warren's right answer: the expected code
    /// (with the expected text, if any), or 320 when warren could not judge (the broker went
    /// away, a drain).
    #[must_use]
    pub fn closed_as_expected(self, code: u16, text: &str) -> bool {
        code == reply::CONNECTION_FORCED
            || (code == self.expected_code() && self.expected_text().is_none_or(|t| t == text))
    }
}

impl FakeClient {
    pub(super) fn bad_bytes(&mut self, kind: Misbehaviour) -> Bytes {
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
                // RabbitMQ takes a payload of frame_max itself; one byte more is too large.
                let big = vec![0u8; frame_max + 1];
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
                b.extend_from_slice(&exchange_declare(1, "ex-bad", UNKNOWN_EXCHANGE_TYPE));
            }
            QosPrefetchSize => b.extend_from_slice(&method_frame(1, ids::BASIC_QOS, |w| {
                w.u32(4096).u16(1).bit(false);
            })),
            ChannelAboveMax => {
                // New channels, numbered past the cap as RabbitMQ allows, until one more is
                // open than channel_max.
                let open = self.chans.len();
                let max = usize::from(self.tune.channel_max);
                let fresh: Vec<u16> = (self.tune.channel_max..=u16::MAX)
                    .filter(|c| !self.chans.contains_key(c))
                    .take((max + 1).saturating_sub(open))
                    .collect();
                for ch in fresh {
                    // Answers to the ones within the cap may come before the close.
                    self.chans.insert(ch, Chan::new());
                    b.extend_from_slice(&encode::channel_open(ch));
                }
            }
            MalformedArgs => b.extend_from_slice(&method_frame(1, ids::BASIC_PUBLISH, |w| {
                w.u16(0).shortstr(b"");
            })),
            ConsumerTagReuse => {
                for _ in 0..2 {
                    b.extend_from_slice(&consume(1, b"q0", b"dup-tag", true, true));
                }
            }
            FlowInactive => b.extend_from_slice(&encode::flow(1, false, false)),
            StreamGet => b.extend_from_slice(&basic_get(1, STREAM_QUEUE, false)),
            StreamNoAckConsume => {
                // Under a per-consumer prefetch: without one RabbitMQ refuses any stream
                // consumer on the channel first (406). Its qos-ok comes back before the close.
                if let Some(c) = self.chans.get_mut(&1) {
                    c.expect = Some(Reply::QosOk);
                }
                b.extend_from_slice(&qos(1, 10, false));
                b.extend_from_slice(&consume(1, STREAM_QUEUE.as_bytes(), b"", true, false));
            }
            StreamPurge => b.extend_from_slice(&queue_purge(1, STREAM_QUEUE)),
            QuorumGlobalQosConsume => {
                // Its qos-ok comes back before the close: the channel expects it.
                if let Some(c) = self.chans.get_mut(&1) {
                    c.expect = Some(Reply::QosOk);
                }
                b.extend_from_slice(&qos(1, 10, true));
                b.extend_from_slice(&consume(1, QUORUM_QUEUE.as_bytes(), b"", false, false));
            }
            StreamGlobalQosConsume => {
                // After the per-consumer prefetch of its script; the qos-ok comes back before
                // the close.
                if let Some(c) = self.chans.get_mut(&1) {
                    c.expect = Some(Reply::QosOk);
                }
                b.extend_from_slice(&qos(1, 10, true));
                b.extend_from_slice(&consume(1, STREAM_QUEUE.as_bytes(), b"", false, false));
            }
            StreamWordOffset => {
                let word = longstr("bogus");
                b.extend_from_slice(&offset_consume(1, STREAM_QUEUE.as_bytes(), b"", word));
            }
            StreamBooleanOffset => {
                let yes = FieldValue::Bool(true);
                b.extend_from_slice(&offset_consume(1, STREAM_QUEUE.as_bytes(), b"", yes));
            }
        }
        b.freeze()
    }
}
