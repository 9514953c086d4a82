//! What a client keeps about its connection and each of its channels: the phase, the reply
//! a channel waits for, content being received, and what the script waits for.

use super::Intrusion;
use std::collections::BTreeMap;
use std::time::Instant;
use warren_core::method::{ids, MethodId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Start,
    Tune,
    OpenOk,
    Running,
    /// We sent `Connection.Close`.
    Closing,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
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
    ExchangeDeclareOk,
    BindOk,
    RecoverOk,
    /// The `declare-ok` of a stream or quorum queue.
    TypedDeclareOk,
    /// The `consume-ok` of a consumer of a stream or quorum queue.
    TypedConsumeOk,
    /// An intrusion on the queue in a board slot: success, or a `Channel.Close`.
    Intrusion(Intrusion, u32),
}

impl Reply {
    pub(super) fn matches(&self, mid: MethodId) -> bool {
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
            Reply::ExchangeDeclareOk => mid == ids::EXCHANGE_DECLARE_OK,
            Reply::BindOk => mid == MethodId::new(50, 21),
            Reply::RecoverOk => mid == MethodId::new(60, 111),
            Reply::TypedDeclareOk => mid == ids::QUEUE_DECLARE_OK,
            Reply::TypedConsumeOk => mid == ids::BASIC_CONSUME_OK,
            Reply::Intrusion(op, _) => op.answered_by(mid),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChState {
    Opening,
    Open,
    /// We sent `channel.close`.
    Closing,
}

#[derive(Debug)]
pub(super) enum IncomingKind {
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
pub(super) struct Incoming {
    pub(super) kind: IncomingKind,
    pub(super) size: Option<u64>,
    pub(super) body: Vec<u8>,
}

#[derive(Debug)]
pub(super) struct Chan {
    pub(super) state: ChState,
    pub(super) expect: Option<Reply>,
    pub(super) content: Option<Incoming>,
    pub(super) last_dtag: u64,
    /// Consumer tags and the slot they consume, including cancelled ones (late deliveries).
    pub(super) consumers: Vec<(Vec<u8>, u32, bool)>,
    pub(super) no_ack: bool,
    pub(super) confirm: bool,
    pub(super) next_cno: u64,
    /// Confirm number → publish sequence number, for publishes not yet confirmed.
    pub(super) outstanding: BTreeMap<u64, u32>,
    /// Highest sequence number seen per origin among first deliveries.
    pub(super) order: BTreeMap<(u32, u16), u32>,
    /// First (not redelivered) deliveries so far.
    pub(super) firsts: u32,
    /// An intrusion waiting for its answer: what, on which slot and queue, and whose queue
    /// it was when sent.
    pub(super) intrusion: Option<(Intrusion, u32, String, Option<u32>)>,
}

impl Chan {
    pub(super) fn new() -> Self {
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
pub(super) enum Wait {
    Nothing,
    Reply(u16),
    Confirms(u16),
    Until(Instant),
    ChannelClose(u16),
    ConnectionCloseOk,
    SecretOk,
    Forever,
}
