//! What a driver exchanges with a hub: the ids of its clients and upstreams, its
//! configuration, the [`Input`]s it is given, the [`Output`]s and [`HubEvent`]s it emits, and
//! the counters it keeps. The hub's state and rules are in the parent module; this file is
//! the contract both drivers (the runtime and the simulation) match on.

use super::backoff::BackoffConfig;
use crate::frame::{Frame, FrameError};
use crate::nodes::NodeOrder;
use crate::reply::Reply;
use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// A client of a hub: a slab index plus a generation, so events for a slot that has since
/// been reused are recognised and dropped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

/// An upstream connection of a hub, with the same slab-plus-generation scheme.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

impl ClientId {
    /// The slab index, for runtimes that keep per-client state in a vector.
    #[must_use]
    pub fn index(self) -> usize {
        self.idx as usize
    }

    /// The number it prints as (`c<number>`), unique within its hub.
    #[must_use]
    pub fn number(self) -> u32 {
        self.gen
    }
}

impl UpstreamId {
    /// The slab index, for runtimes that keep per-upstream state in a vector.
    #[must_use]
    pub fn index(self) -> usize {
        self.idx as usize
    }

    /// The number it prints as (`u<number>`), unique within its hub.
    #[must_use]
    pub fn number(self) -> u32 {
        self.gen
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.gen)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.gen)
    }
}

impl fmt::Debug for UpstreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "u{}", self.gen)
    }
}

impl fmt::Display for UpstreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "u{}", self.gen)
    }
}

/// Where a client's first channel goes when a hub has several upstreams (B3). Its later
/// channels follow it to that upstream while it has room (its exclusive queues live there);
/// only when it is full does the policy pick again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// The newest upstream that has room, so older ones drain and can be closed.
    #[default]
    Fill,
    /// The upstream with the fewest channels, to spread load across broker connections.
    Spread,
}

/// Limits and timeouts of a hub. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// Largest frame warren asks the broker for (the broker's own limit also applies).
    pub upstream_frame_max: u32,
    /// Heartbeat interval asked of the broker, in seconds.
    pub upstream_heartbeat: u16,
    /// Channels per upstream connection (the broker's channel_max also applies).
    pub max_channels_per_upstream: u16,
    /// Upstream connections per hub.
    pub max_upstreams: usize,
    /// Where new channels go, and (with `Spread`) on which broker node a new upstream goes.
    pub placement: Placement,
    /// Broker nodes in the upstream list (B17); dials try them in an order the hub chooses.
    pub nodes: usize,
    /// Time allowed for a dial plus the broker handshake.
    pub connect_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Largest message body a client may publish (like RabbitMQ's `max_message_size`).
    pub max_message_size: u64,
    /// Content bytes a client may have buffered across its channels.
    pub client_buffer_limit: usize,
    /// Whether clean channels are recycled (B6).
    pub recycling: bool,
    /// Most channels kept in the pool.
    pub pool_size: usize,
    /// Pooled channels idle longer than this are closed.
    pub pool_idle_timeout: Duration,
    /// An upstream without channels is closed after this long, unless it is the last one of
    /// a hub that still has clients.
    pub upstream_idle_timeout: Duration,
    /// How long a peer has to answer a `Connection.Close` with `CloseOk`.
    pub close_timeout: Duration,
    /// Exchange types beyond the four built-in ones that clients may declare without the
    /// hub asking the broker first (plugins). RabbitMQ answers an unknown type with a
    /// connection error, so any other type is checked on a connection of the hub's own.
    pub extra_exchange_types: Vec<String>,
    /// Prefix of the upstream `connection_name`, e.g. `warren@host`.
    pub upstream_name: String,
    /// How long the broker's acceptance of these credentials and this vhost (an upstream
    /// opening) vouches for new clients. After that a joining client waits for a fresh
    /// upstream login, so that a revoked permission refuses new clients as RabbitMQ would
    /// (B2). `None` when revocations arrive as events from the broker instead.
    pub proof_ttl: Option<Duration>,
    /// How long a new client or `Channel.Open` waits while the hub is paused before it is
    /// refused (see [`Input::Pause`]).
    pub pause_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            upstream_frame_max: 131_072,
            upstream_heartbeat: 60,
            max_channels_per_upstream: 65_535,
            max_upstreams: 16,
            placement: Placement::Fill,
            nodes: 1,
            connect_timeout: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            max_message_size: 128 * 1024 * 1024,
            client_buffer_limit: 256 * 1024 * 1024,
            recycling: true,
            pool_size: 64,
            pool_idle_timeout: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(3),
            extra_exchange_types: Vec::new(),
            upstream_name: "warren".into(),
            proof_ttl: None,
            pause_timeout: Duration::from_secs(30),
        }
    }
}

/// Something that happened to a hub, for it to act on.
#[derive(Debug)]
pub enum Input {
    /// Whole frames read from a client (after its handshake).
    ClientFrames {
        /// Which client.
        client: ClientId,
        /// Frames in arrival order.
        frames: SmallVec<[Frame; 8]>,
    },
    /// The client's byte stream broke (bad end octet, oversize, unknown type).
    ClientFrameError {
        /// Which client.
        client: ClientId,
        /// What the decoder found.
        error: FrameError,
    },
    /// The client's socket closed or failed.
    ClientClosed {
        /// Which client.
        client: ClientId,
    },
    /// The client's output queue exceeded its bound: it is not reading (B9).
    ClientSlow {
        /// Which client.
        client: ClientId,
    },
    /// A dial requested with [`Output::Dial`] connected (TCP and TLS are up).
    UpstreamConnected {
        /// Which upstream.
        upstream: UpstreamId,
        /// The node of the dial's order that answered.
        node: usize,
    },
    /// Whole frames read from an upstream.
    UpstreamFrames {
        /// Which upstream.
        upstream: UpstreamId,
        /// Frames in arrival order.
        frames: SmallVec<[Frame; 8]>,
    },
    /// The upstream's byte stream broke.
    UpstreamFrameError {
        /// Which upstream.
        upstream: UpstreamId,
        /// What the decoder found.
        error: FrameError,
    },
    /// The dial failed or the upstream socket closed; `reason` is for humans.
    UpstreamClosed {
        /// Which upstream.
        upstream: UpstreamId,
        /// Why, e.g. `connection refused (127.0.0.1:5672)`.
        reason: String,
    },
    /// A deadline from [`Hub::poll_timeout`](super::Hub::poll_timeout) passed. Spurious timeouts are harmless.
    Timeout,
    /// Graceful shutdown (B14): stop taking work, let clients finish until `deadline`, then
    /// close the rest with 320 and close the upstreams.
    Drain {
        /// When remaining clients are closed.
        deadline: Instant,
    },
    /// Close every client with `reply`, as RabbitMQ closes the connections of a deleted user
    /// or vhost.
    CloseClients {
        /// What they are told (320 and a text).
        reply: Reply,
    },
    /// New settings (a live reload): they apply to what starts from now on — new clients,
    /// channels, upstreams and timers; the pool shrinks to fit at once.
    Reconfigure(Box<HubConfig>),
    /// Close one client with `reply`, as `rabbitmqctl close_connection` does (an operator's
    /// request through the admin API).
    CloseClient {
        /// Which client.
        client: ClientId,
        /// What it is told (320 and the operator's reason).
        reply: Reply,
    },
    /// An operator pauses the hub: clients inside keep working; new clients and new
    /// `Channel.Open`s wait for [`Input::Resume`], at most `pause_timeout` (see the
    /// `control` module for what they are told then).
    Pause,
    /// Ends a pause: everything that waited goes through at once.
    Resume,
    /// An operator asks for a new upstream: once it opens, new channels go to it and the
    /// other upstreams close as their channels are released (e.g. after a node came back).
    Redial,
    /// Admission sends this hub no more clients (the admin API's drain): it serves the ones
    /// it has and closes its upstreams once they are gone.
    Detach,
}

/// An instruction from a hub to its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Queue bytes for a client.
    ToClient {
        /// Which client.
        client: ClientId,
        /// Whole frames (or frame pieces of a re-chunked body, in order).
        data: Bytes,
    },
    /// Flush what is queued for the client, then close its socket. The id is dead after this.
    CloseClient {
        /// Which client.
        client: ClientId,
    },
    /// Open a connection (TCP, then TLS if configured) to the broker, then report
    /// [`Input::UpstreamConnected`] or [`Input::UpstreamClosed`].
    Dial {
        /// The id the connection will carry.
        upstream: UpstreamId,
        /// The nodes of the upstream list to try, in this order (B17).
        nodes: NodeOrder,
        /// The largest frame to accept from it ([`crate::login::Login::frame_max`]).
        frame_max: u32,
    },
    /// Queue bytes for an upstream.
    ToUpstream {
        /// Which upstream.
        upstream: UpstreamId,
        /// Whole frames (or pieces of a re-chunked body, in order).
        data: Bytes,
    },
    /// Flush what is queued for the upstream, then close its socket. The id is dead after this.
    CloseUpstream {
        /// Which upstream.
        upstream: UpstreamId,
    },
    /// Something worth logging or counting.
    Event(HubEvent),
}

/// Which side of the proxy a peer is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// An application connected to warren.
    Client(ClientId),
    /// A broker connection of warren's.
    Upstream(UpstreamId),
}

/// Notable things a hub did, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// The client received `Connection.OpenOk`.
    ClientAdmitted {
        /// Which client.
        client: ClientId,
    },
    /// The hub closed the client with this reply (protocol violation, broker loss, drain,
    /// refused login...).
    ClientClosed {
        /// Which client.
        client: ClientId,
        /// What it was told.
        reply: Reply,
    },
    /// The client went away (its close or its socket); its channels were released.
    ClientLeft {
        /// Which client.
        client: ClientId,
    },
    /// The client was disconnected for not reading its output (B9).
    SlowClient {
        /// Which client.
        client: ClientId,
    },
    /// An upstream finished its handshake.
    UpstreamOpen {
        /// Which upstream.
        upstream: UpstreamId,
        /// Negotiated channel_max.
        channel_max: u16,
        /// Negotiated frame_max.
        frame_max: u32,
        /// Negotiated heartbeat in seconds.
        heartbeat: u16,
    },
    /// A dial or handshake failed.
    UpstreamFailed {
        /// Which upstream.
        upstream: UpstreamId,
        /// Why.
        reply: Reply,
    },
    /// An open upstream was lost.
    UpstreamLost {
        /// Which upstream.
        upstream: UpstreamId,
        /// Why.
        reply: Reply,
    },
    /// The broker refused these credentials or this vhost; new clients with the same
    /// credentials can be refused without a dial for a while (B2 negative cache).
    AuthRejected {
        /// The broker's reply.
        reply: Reply,
    },
    /// A peer was silent for two heartbeat intervals.
    HeartbeatMissed {
        /// Which peer.
        peer: Peer,
    },
    /// An operator asked for a new upstream; this one is being dialled.
    Redialling {
        /// The new upstream.
        upstream: UpstreamId,
    },
    /// The hub is waiting before redialling.
    ReconnectScheduled {
        /// When the next dial happens.
        at: Instant,
        /// Failed attempts so far.
        failures: u32,
    },
}

/// Counters and gauges of one hub, read by the runtime for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Channels opened with a broker round trip.
    pub opens_from_broker: u64,
    /// Channels handed out from the recycling pool.
    pub opens_from_pool: u64,
    /// Channels returned to the pool after a successful fence.
    pub channels_recycled: u64,
    /// Messages forwarded to the broker.
    pub publishes: u64,
    /// Content-carrying methods forwarded to clients (deliver, get-ok, return).
    pub deliveries: u64,
    /// Frames received from clients.
    pub client_frames: u64,
    /// Frames received from upstreams.
    pub upstream_frames: u64,
    /// Bytes received from clients.
    pub client_bytes: u64,
    /// Bytes received from upstreams.
    pub upstream_bytes: u64,
    /// Buffers queued for clients (frames, or pieces of re-chunked bodies).
    pub frames_to_clients: u64,
    /// Buffers queued for upstreams.
    pub frames_to_upstreams: u64,
    /// Bytes queued for clients.
    pub bytes_to_clients: u64,
    /// Bytes queued for upstreams.
    pub bytes_to_upstreams: u64,
    /// Upstream handshakes completed.
    pub upstream_connects: u64,
    /// Dials or handshakes that failed.
    pub upstream_failures: u64,
    /// Open upstreams lost.
    pub upstream_losses: u64,
    /// Peers declared dead by heartbeat.
    pub heartbeat_misses: u64,
    /// Clients disconnected for not reading.
    pub slow_clients: u64,
    /// Clients closed by the hub, by reply code.
    pub client_closes: BTreeMap<u16, u64>,
    /// Client `Channel.Open`s refused (506: no upstream has room or can be reached, or a
    /// pause outlasted `pause_timeout`).
    pub channel_refusals: u64,
    /// Exchange types the broker was asked about and knows (B7): each asking costs a
    /// broker connection of its own.
    pub probes_known: u64,
    /// Exchange types the broker was asked about and does not know.
    pub probes_unknown: u64,
    /// Probes that ended without an answer (the clients waiting on them got 320).
    pub probes_failed: u64,
}
