//! What a client is told to do: where it connects from and with which login and
//! capabilities ([`ClientSpec`]), how it opens its connection, and its script of [`Step`]s.

use super::{Intrusion, Misbehaviour};
use std::time::Duration;
use warren_testkit::rules::queue_types::QueueKind;

/// Where a publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The default exchange, routing key = the queue in this board slot.
    Slot(u32),
    /// A named exchange and routing key.
    Exchange(String, String),
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
        /// Go on at once instead of waiting for `declare-ok` (which the broker then does not
        /// send): what follows on the channel is pipelined behind the declare.
        nowait: bool,
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
    /// `queue.declare` of the stream or quorum queue of type `kind` ([`typed_queue`]),
    /// durable as RabbitMQ requires, waiting for its `declare-ok`: warren learns the type
    /// from it (B7).
    ///
    /// [`typed_queue`]: super::typed_queue
    TypedDeclare {
        /// Channel.
        ch: u16,
        /// Stream or quorum.
        kind: QueueKind,
    },
    /// `basic.consume` with acks of the queue of type `kind`, waiting for its `consume-ok`
    /// (a stream's consumer needs a [`Step::Qos`] first).
    TypedConsume {
        /// Channel.
        ch: u16,
        /// Stream or quorum.
        kind: QueueKind,
    },
    /// `connection.update-secret` (warren answers it itself), wait for the ok.
    UpdateSecret,
    /// `connection.close`, wait for `close-ok`.
    CloseConnection,
    /// Close the socket without a word.
    Drop,
}

/// Short forms of the steps scripts use most, so a script reads as a list of steps.
impl Step {
    /// [`Step::Declare`] of the queue in `slot` on channel `ch`.
    #[must_use]
    pub fn declare(ch: u16, slot: u32, exclusive: bool) -> Self {
        Step::Declare {
            ch,
            slot,
            exclusive,
        }
    }

    /// [`Step::Consume`] from the queue in `slot` on channel `ch`.
    #[must_use]
    pub fn consume(ch: u16, slot: u32, no_ack: bool) -> Self {
        Step::Consume { ch, slot, no_ack }
    }

    /// [`Step::Publish`] of `size` bytes to the queue in `slot` (default exchange, not
    /// mandatory).
    #[must_use]
    pub fn publish(ch: u16, slot: u32, size: usize) -> Self {
        Step::Publish {
            ch,
            to: Target::Slot(slot),
            size,
            mandatory: false,
        }
    }

    /// A short-lived publisher: open channel 1, publish once to the queue in `slot`, leave.
    #[must_use]
    pub fn publish_once(slot: u32, size: usize) -> Vec<Step> {
        vec![
            Step::Open(1),
            Step::publish(1, slot, size),
            Step::CloseConnection,
        ]
    }

    /// The start of most consumers: open channel 1, declare the queue in `slot`, consume it.
    #[must_use]
    pub fn consumer(slot: u32, exclusive: bool, no_ack: bool) -> Vec<Step> {
        vec![
            Step::Open(1),
            Step::declare(1, slot, exclusive),
            Step::consume(1, slot, no_ack),
        ]
    }
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
