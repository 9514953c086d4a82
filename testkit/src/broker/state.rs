//! What the broker keeps per connection, channel, queue and exchange. The types are shared
//! by every part of the broker, so they live apart from the code that changes them.

use super::ConnId;
use crate::rules::queue_types::QueueKind;
use crate::rules::UpstreamChecker;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use warren_core::method::{MethodId, Tune};
use warren_core::table::FieldTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Header,
    StartOk,
    TuneOk,
    Open,
    Running,
    /// The broker sent `Connection.Close` and waits for `CloseOk` until then.
    Closing(Instant),
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) phase: Phase,
    pub(super) accepted: Instant,
    /// Reads what the connection sends, holding it to RabbitMQ's connection-level rules.
    pub(super) check: UpstreamChecker,
    pub(super) tune: Tune,
    pub(super) heartbeat: Option<Duration>,
    pub(super) last_rx: Instant,
    pub(super) last_tx: Instant,
    pub(super) caps_failure_close: bool,
    pub(super) caps_blocked: bool,
    pub(super) caps_cancel_notify: bool,
    pub(super) told_blocked: bool,
    pub(super) channels: BTreeMap<u16, Chan>,
    pub(super) next_ctag: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChanState {
    Open,
    /// The broker sent `Channel.Close`; waiting for `CloseOk`.
    Closing,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) exchange: String,
    pub(super) rk: String,
    pub(super) mandatory: bool,
    pub(super) size: Option<u64>,
    pub(super) body: BytesMut,
}

#[derive(Debug)]
pub(super) struct Chan {
    pub(super) state: ChanState,
    pub(super) content: Option<Pending>,
    pub(super) confirm: bool,
    pub(super) tx: bool,
    pub(super) publish_seq: u64,
    pub(super) unconfirmed: Vec<u64>,
    pub(super) next_dtag: u64,
    pub(super) unacked: BTreeMap<u64, (String, Msg)>,
    pub(super) prefetch: u16,
    /// The last per-consumer `basic.qos` set a prefetch: a stream refuses consumers without.
    pub(super) consumer_prefetch: bool,
    /// The last `basic.qos` set a global prefetch limit: a quorum queue refuses consumers.
    pub(super) global_qos: bool,
    pub(super) consumers: Vec<Vec<u8>>,
    /// The client channel whose publishes this upstream channel carries since the last
    /// open or fence.
    pub(super) owner: Option<(u32, u16)>,
    /// The queue the channel declared last, which the empty name stands for.
    pub(super) last_declared: String,
}

impl Chan {
    pub(super) fn new() -> Self {
        Chan {
            state: ChanState::Open,
            content: None,
            confirm: false,
            tx: false,
            publish_seq: 0,
            unconfirmed: Vec::new(),
            next_dtag: 0,
            unacked: BTreeMap::new(),
            prefetch: 0,
            consumer_prefetch: false,
            global_qos: false,
            consumers: Vec::new(),
            owner: None,
            last_declared: String::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Msg {
    pub(super) body: Bytes,
    pub(super) exchange: String,
    pub(super) rk: String,
    pub(super) redelivered: bool,
    /// The `headers` property (events carry their subject there).
    pub(super) headers: Option<FieldTable>,
}

#[derive(Debug, Clone)]
pub(super) struct Consumer {
    pub(super) conn: ConnId,
    pub(super) ch: u16,
    pub(super) tag: Vec<u8>,
    pub(super) no_ack: bool,
    /// A stream's consumer: the offset of the next message it reads.
    pub(super) offset: Option<usize>,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) msgs: VecDeque<Msg>,
    pub(super) consumers: Vec<Consumer>,
    pub(super) next: usize,
    pub(super) exclusive: Option<ConnId>,
    /// A stream or a quorum queue (`None`: classic).
    pub(super) kind: Option<QueueKind>,
    /// The `x-queue-type` it was declared with, which a later declare must repeat if it
    /// gives one.
    pub(super) type_arg: Option<String>,
}

#[derive(Debug)]
pub(super) struct Exchange {
    pub(super) kind: String,
    pub(super) bindings: Vec<(String, String)>,
}

/// An error that closes only the channel (RabbitMQ's channel exceptions).
pub(super) struct ChannelError(pub(super) u16, pub(super) String, pub(super) MethodId);
