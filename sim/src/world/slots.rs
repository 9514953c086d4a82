//! What the world keeps about each client (its fake client and warren's side of its
//! socket), each broker connection of warren's and who owns it, each hub, and the broker.

use crate::broker::ConnId;
use crate::client::FakeClient;
use crate::slow::Pacer;
use bytes::BytesMut;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::time::Instant;
use warren_core::admission::{self, HubId, LinkId};
use warren_core::frame::{Frame, FrameDecoder};
use warren_core::hub::{ClientId, Hub, UpstreamId};

/// The proxy's side of a client connection.
#[derive(Debug)]
pub(super) enum ProxyClient {
    /// Not connected yet.
    Pending,
    /// In its handshake, with admission.
    Handshake {
        conn: admission::ConnId,
    },
    Joined {
        hub: u32,
        id: ClientId,
        buf: BytesMut,
        decoder: FrameDecoder,
        /// A framing error was reported; nothing more is read.
        dead: bool,
    },
    Gone,
}

pub(super) struct ClientSlot {
    pub(super) client: FakeClient,
    pub(super) link: Option<u32>,
    pub(super) proxy: ProxyClient,
    /// Bytes warren queued that are neither delivered nor read yet.
    pub(super) in_flight: usize,
    /// Bytes the hub queued for it in all (with `in_flight`, what its socket took).
    pub(super) sent: u64,
    pub(super) slow_reported: bool,
    /// A paced reader's unread bytes (`ClientSpec::read_pace`).
    pub(super) pacer: Option<Pacer>,
    /// When the slow-client rule looks at it again, if it watches it.
    pub(super) slow_check_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpState {
    Dialing,
    Connected,
    Gone,
}

/// Who a broker connection of warren's belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// An upstream of a hub.
    Hub { hub: u32, id: UpstreamId },
    /// Admission (a login proof), until a hub adopts it.
    Admission(LinkId),
}

pub(super) struct UpSlot {
    pub(super) owner: Owner,
    pub(super) state: UpState,
    pub(super) link: Option<u32>,
    pub(super) conn: Option<ConnId>,
    pub(super) buf: BytesMut,
    pub(super) decoder: FrameDecoder,
    /// A hub's probe: it only asks the broker about an exchange type (B7) and serves no
    /// client, so it is no upstream the hub could fall back on.
    pub(super) probe: bool,
}

impl UpSlot {
    /// A broker connection being dialled; its frames are decoded under the frame_max warren
    /// asks of the broker, as the runtime decodes them.
    pub(super) fn new(owner: Owner, frame_max: u32) -> Self {
        UpSlot {
            owner,
            state: UpState::Dialing,
            link: None,
            conn: None,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(frame_max),
            probe: false,
        }
    }
}

/// What happened to a broker connection, before it is addressed to its owner.
#[allow(clippy::large_enum_variant)] // Short-lived, on the stack, like the inputs it becomes.
pub(super) enum UpInput {
    Connected,
    Frames(SmallVec<[Frame; 8]>),
    FrameError(warren_core::frame::FrameError),
    Closed(String),
}

pub(super) struct HubSlot {
    pub(super) hid: u32,
    pub(super) id: HubId,
    pub(super) hub: Hub,
    pub(super) clients: BTreeMap<ClientId, u32>,
    pub(super) ups: BTreeMap<UpstreamId, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BrokerState {
    Up,
    Crashed { until: Instant },
    Silent { until: Instant },
}
