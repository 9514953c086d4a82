//! What goes in and out of [`Admission`](super::Admission): the [`Input`]s a driver feeds
//! it, the [`Output`]s it carries out, the [`AdmissionEvent`]s for logs and metrics and the
//! [`AdmissionStats`] counters, with the [`Refusal`] labels both use. The contract with the drivers, in one place.

use super::events::Revocation;
use super::{AdmissionConfig, ConnId, HubId, LinkId};
use crate::frame::{Frame, FrameError};
use crate::handshake::ClientHello;
use crate::hub::{self, Hub};
use crate::login::Login;
use crate::nodes::NodeOrder;
use crate::reply::Reply;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Something that happened, for admission to act on.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Frame batches inline, as in the hub's input: no allocation per read.
pub enum Input {
    /// Bytes from a client in its handshake.
    ClientData {
        /// Which client.
        conn: ConnId,
        /// What was read.
        data: Bytes,
    },
    /// A client's socket closed or failed during its handshake.
    ClientClosed {
        /// Which client.
        conn: ConnId,
    },
    /// A dial asked for with [`Output::Dial`] connected (TCP and TLS are up).
    LinkConnected {
        /// Which link.
        link: LinkId,
        /// The node of the dial's order that answered.
        node: usize,
    },
    /// Whole frames from a link.
    LinkFrames {
        /// Which link.
        link: LinkId,
        /// Frames in arrival order.
        frames: SmallVec<[Frame; 8]>,
    },
    /// A link's byte stream broke the framing rules.
    LinkFrameError {
        /// Which link.
        link: LinkId,
        /// What the decoder found.
        error: FrameError,
    },
    /// A link's dial failed or its socket closed; `reason` is for humans.
    LinkClosed {
        /// Which link.
        link: LinkId,
        /// Why.
        reason: String,
    },
    /// A hub has nothing left to do after taking `handoffs` clients and links
    /// ([`Hub::handoffs`]). Admission answers [`Output::StopHub`] unless it has handed it more.
    HubIdle {
        /// Which hub.
        hub: HubId,
        /// How many handoffs the hub has taken.
        handoffs: u64,
    },
    /// A hub's own login was refused by the broker (its [`hub::HubEvent::AuthRejected`]).
    HubRefused {
        /// Which hub.
        hub: HubId,
        /// The broker's reply.
        reply: Reply,
    },
    /// A deadline from [`Admission::poll_timeout`](super::Admission::poll_timeout) passed.
    Timeout,
    /// Graceful shutdown (B14): clients in their handshake are closed with 320, nothing new
    /// is admitted, links close, and every hub is told to drain by `deadline`. Hubs drain
    /// only now, after the last client admission let in has joined them: a draining hub
    /// closes its last upstream once it has no client, and a client that joined after that
    /// would be refused (a hand-over to a new warren must refuse no one). The driver gives
    /// this once the handshakes it lets finish are done.
    Drain {
        /// When the hubs close the clients still connected (320).
        deadline: Instant,
    },
    /// New settings (a live reload): limits, handshake settings and trust periods apply from
    /// now on, and every hub gets its new settings. The event feed (`events`) is kept: it
    /// changes with a restart.
    Reconfigure(Box<AdmissionConfig>),
    /// An operator pauses a vhost: its running hubs pause, and so do hubs of that vhost
    /// started later, until [`Input::ResumeVhost`] (see [`hub::Input::Pause`]).
    PauseVhost {
        /// Which vhost.
        vhost: String,
    },
    /// Ends a vhost's pause: its hubs resume.
    ResumeVhost {
        /// Which vhost.
        vhost: String,
    },
    /// An operator drains a hub: new clients of its credentials go to a new hub, and it
    /// closes its upstreams once its clients are gone ([`hub::Input::Detach`]).
    DetachHub {
        /// Which hub.
        hub: HubId,
    },
}

/// An instruction from admission to its driver.
#[derive(Debug)]
pub enum Output {
    /// Write bytes to a client in its handshake.
    ToClient {
        /// Which client.
        conn: ConnId,
        /// Bytes.
        data: Bytes,
    },
    /// Flush, then close a client's socket. The id is dead after this.
    CloseClient {
        /// Which client.
        conn: ConnId,
        /// Reset the connection instead (`SO_LINGER` 0, nothing flushed): how RabbitMQ drops
        /// a login it refuses without a `Connection.Close`.
        reset: bool,
    },
    /// Connect to the broker (TCP, then TLS if configured), then report
    /// [`Input::LinkConnected`] or [`Input::LinkClosed`].
    Dial {
        /// The id the connection will carry.
        link: LinkId,
        /// The nodes of the upstream list to try, in this order (B17).
        nodes: NodeOrder,
        /// The largest frame to accept from it ([`crate::login::Login::frame_max`]).
        frame_max: u32,
    },
    /// Write bytes to a link.
    ToLink {
        /// Which link.
        link: LinkId,
        /// Bytes.
        data: Bytes,
    },
    /// Flush, then close a link's socket. The id is dead after this.
    CloseLink {
        /// Which link.
        link: LinkId,
    },
    /// Run a new hub. Handoffs to it follow.
    StartHub {
        /// Its id.
        hub: HubId,
        /// The machine.
        machine: Box<Hub>,
    },
    /// Hand an open link to a hub as one of its upstreams: the driver gives its socket to
    /// the hub's driver, which calls [`Hub::adopt_upstream`] with `login` and then feeds the
    /// hub `frames` (read past `OpenOk`) before anything else from that socket.
    AdoptLink {
        /// Which link; the id is dead for admission after this.
        link: LinkId,
        /// Which hub.
        hub: HubId,
        /// The finished login.
        login: Box<Login>,
        /// Frames that followed `OpenOk` in the same read.
        frames: SmallVec<[Frame; 8]>,
        /// The broker node it reached.
        node: usize,
    },
    /// Hand a client to its hub: the hub's driver calls [`Hub::add_client`] with `hello`; the
    /// client's socket goes along, with the bytes it pipelined after `Open`.
    Join {
        /// Which client; the id is dead for admission after this.
        conn: ConnId,
        /// Which hub.
        hub: HubId,
        /// Who the client is.
        hello: Box<ClientHello>,
        /// Bytes read after `Connection.Open`.
        pipelined: BytesMut,
    },
    /// Feed an input to a running hub (revocations: closing its clients).
    ToHub {
        /// Which hub.
        hub: HubId,
        /// What for.
        input: hub::Input,
    },
    /// The hub has nothing to do and nothing is on its way to it: it may stop.
    StopHub {
        /// Which hub.
        hub: HubId,
    },
    /// Something worth logging or counting.
    Event(AdmissionEvent),
}

/// Why a client was refused before reaching a hub: the metrics label of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The broker refused the login (proved now).
    Login,
    /// A refusal of the same login or vhost remembered from moments ago.
    Cached,
    /// The broker refused the vhost (proved now).
    Vhost,
    /// The broker could not be reached to prove the login.
    Unreachable,
    /// `max_clients` was reached.
    MaxClients,
    /// `max_hubs` was reached.
    MaxHubs,
    /// warren is draining.
    Draining,
    /// The client broke the handshake's rules or stalled.
    Handshake,
    /// A PROXY protocol header was required and missing or malformed.
    ProxyHeader,
}

impl Refusal {
    /// The label for metrics.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Login => "login",
            Refusal::Cached => "auth_cache",
            Refusal::Vhost => "vhost",
            Refusal::Unreachable => "unreachable",
            Refusal::MaxClients => "max_clients",
            Refusal::MaxHubs => "max_hubs",
            Refusal::Draining => "draining",
            Refusal::Handshake => "handshake",
            Refusal::ProxyHeader => "proxy_header",
        }
    }
}

/// Notable things admission did, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum AdmissionEvent {
    /// A client was refused (its socket closes after `reply`, or silently; see
    /// [`crate::handshake::refusal`]).
    Refused {
        /// Which client.
        conn: ConnId,
        /// Why, as a metrics label.
        why: Refusal,
        /// What it was told.
        reply: Reply,
        /// The user it named, if it got that far.
        user: Option<String>,
    },
    /// A client broke the handshake's rules or did not finish it in time; it got the close
    /// the handshake sends (or none).
    HandshakeFailed {
        /// Which client.
        conn: ConnId,
    },
    /// A client's PROXY protocol header named its real address (the balancer's is the
    /// socket's).
    ClientAddress {
        /// Which client.
        conn: ConnId,
        /// The client's address, as the balancer saw it.
        source: SocketAddr,
    },
    /// A PROXY protocol header was required, and the connection did not start with a valid
    /// one: it was closed before any AMQP byte.
    ProxyHeaderRefused {
        /// Which client.
        conn: ConnId,
        /// What was wrong.
        why: &'static str,
    },
    /// A client's credentials were accepted by a login started for them (a proof).
    Proved {
        /// The user.
        user: String,
    },
    /// A proof failed: the broker refused the login or the vhost (403, 530), or could not be
    /// reached or went away during the login (anything else).
    ProofFailed {
        /// Which link.
        link: LinkId,
        /// The user.
        user: String,
        /// What the clients waiting on it were told.
        reply: Reply,
    },
    /// A client's login was answered from the cache of accepted accounts.
    Trusted {
        /// The user.
        user: String,
    },
    /// The broker revoked something; what was cached for it is gone.
    Revoked(Revocation),
    /// The event feed is up: revocations arrive as they happen.
    FeedUp,
    /// The event feed is down: accepted accounts are trusted for `credentials_ttl` only.
    FeedDown {
        /// Why.
        reason: String,
    },
    /// A proof failed to reach the broker; clients needing one are refused for `retry_in`.
    Unreachable {
        /// The reply they get.
        reply: Reply,
        /// How long until proofs are tried again.
        retry_in: Duration,
    },
}

/// Counters of admission, read by the driver for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Logins proved by a broker login (the account was not trusted yet).
    pub proofs: u64,
    /// Logins answered from the cache of accepted accounts.
    pub trusted: u64,
    /// Revocations received from the broker's event exchange.
    pub revocations: u64,
    /// Clients refused, by reason.
    pub refusals: BTreeMap<Refusal, u64>,
}
