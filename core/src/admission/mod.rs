//! Admission: everything between a client's accept and its hub (B2, B13, B14, B15's limits),
//! as one sans-IO machine — the way quinn-proto's `Endpoint` owns what happens before a
//! connection has a home.
//!
//! It runs each client's handshake and answers the login at the step RabbitMQ answers it.
//! Credentials the broker accepted recently get `Tune` at once. Unknown ones are proved by a
//! broker login started at the client's `StartOk` (a *proof*): the broker's `Tune` or
//! `Connection.Close 403` decides what the client gets instead of `Tune`, with the broker's
//! text. The proof then opens the vhost the client names and is handed to that vhost's hub as
//! an ordinary upstream. A `530` at `Open` reaches the client with the broker's text too.
//! Admission also keeps the registry of hubs by credentials, the limits (`max_clients`,
//! `max_hubs`), refusals while draining, the silent-refusal rule ([`crate::handshake::refusal`])
//! and the event feed through which the broker revokes what it accepted ([`events`]).
//!
//! # Driving it
//!
//! Like a [`Hub`]: call [`Admission::accept`] or [`Admission::handle`], drain
//! [`Admission::poll_output`] to `None`, then read [`Admission::poll_timeout`]. The driver
//! carries out the outputs: bytes to clients and to the broker connections admission owns
//! (*links*: proofs and the event feed), new hubs to run, clients and links to hand to a hub.
//! A hub tells admission when it has nothing left to do ([`Input::HubIdle`]); admission says
//! when it may stop ([`Output::StopHub`]), so that no client is ever handed to a hub that is
//! going away.

mod cache;
pub mod events;

use crate::agenda::Agenda;
use crate::credentials::{Account, Credentials};
use crate::frame::{Frame, FrameError, HEARTBEAT};
use crate::handshake::{ClientHandshake, ClientHello, HandshakeConfig, HandshakeOutput};
use crate::hub::liveness::{Beat, Liveness};
use crate::hub::{self, BackoffConfig, Hub, HubConfig};
use crate::login::{Login, LoginEvent, LoginPhase, LoginStep};
use crate::method::{encode, Close};
use crate::nodes::{NodeOrder, Nodes};
use crate::proxy_header::{self, ProxyHeader};
use crate::reply::{self, Reply};
use bytes::{Bytes, BytesMut};
use cache::CredentialCache;
use events::{Feed, Revocation};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slab::Slab;
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A client connection in its handshake: a slab index plus a generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    idx: u32,
    gen: u32,
}

/// A broker connection admission owns (a proof or the event feed), same scheme.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId {
    idx: u32,
    gen: u32,
}

/// A hub, for as long as it runs. Never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HubId(u64);

impl ConnId {
    /// The slab index, for drivers that keep per-connection state in a vector.
    #[must_use]
    pub fn index(self) -> usize {
        self.idx as usize
    }
}

impl LinkId {
    /// The slab index, for drivers that keep per-link state in a vector.
    #[must_use]
    pub fn index(self) -> usize {
        self.idx as usize
    }
}

impl HubId {
    /// A number for logs and driver-side maps.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }
}

macro_rules! display_id {
    ($t:ty, $prefix:literal, $field:tt) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.$field)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}
display_id!(ConnId, "a", gen);
display_id!(LinkId, "l", gen);
display_id!(HubId, "h", 0);

/// Settings of admission. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    /// What clients are offered in `Tune`, and how long their handshake may take.
    pub handshake: HandshakeConfig,
    /// Settings of the hubs admission starts (and of its own broker logins).
    pub hub: HubConfig,
    /// Connected clients; more are refused at `Open` with 530.
    pub max_clients: usize,
    /// Running hubs; clients of further credentials are refused at `Open` with 530.
    pub max_hubs: usize,
    /// Whether every connection starts with a PROXY protocol header (v1 or v2) from a load
    /// balancer in front of warren; one without is closed before any AMQP byte (B17).
    pub proxy_protocol: bool,
    /// Hubs the clients of one (user, password, vhost) are spread over, each with its own
    /// broker connections: one hub's task runs on one thread, so a busy key gets as many as
    /// warren has threads.
    pub hubs_per_key: usize,
    /// How long the broker's refusal of a login or a vhost is remembered (zero: not at all).
    pub refusal_ttl: Duration,
    /// How long an account the broker accepted is trusted for new clients without a new
    /// login, while the event feed is not up (B2's "bounded age").
    pub credentials_ttl: Duration,
    /// The account and vhost whose `amq.rabbitmq.event` exchange tells warren of changed
    /// passwords, deleted users and revoked permissions. `None`: age mode only.
    pub events: Option<Credentials>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            handshake: HandshakeConfig::default(),
            hub: HubConfig::default(),
            max_clients: 50_000,
            max_hubs: 1000,
            proxy_protocol: false,
            hubs_per_key: 1,
            refusal_ttl: Duration::from_secs(5),
            credentials_ttl: Duration::from_secs(30),
            events: None,
        }
    }
}

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
    /// A deadline from [`Admission::poll_timeout`] passed.
    Timeout,
    /// Graceful shutdown (B14): clients in their handshake are closed with 320, nothing new
    /// is admitted, links close.
    Drain,
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

/// How long RabbitMQ holds a login it refuses without a `Connection.Close` before it resets
/// the socket (measured against 3.10: 3.0 s) — a brake on password guessing that warren keeps,
/// so that a client cannot tell the two apart.
pub const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);

/// What a client in its handshake waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Its own bytes.
    Input,
    /// Refused without a close: nothing more is read, and the socket is reset at this time.
    Reset(Instant),
    /// The verdict of a proof on its login.
    Login(LinkId),
    /// A proof opening its vhost.
    Open(LinkId),
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    hs: ClientHandshake,
    buf: BytesMut,
    /// The connected-clients count was over the limit when it arrived.
    over_limit: bool,
    wait: Wait,
    user: Option<String>,
    /// Set once it reached `Open`.
    hello: Option<Box<ClientHello>>,
    timer_at: Option<Instant>,
    /// When admission last wrote to it.
    last_tx: Instant,
    /// Heartbeats both ways from its `TuneOk` on (B10), as RabbitMQ runs them once a
    /// connection is tuned: a client waiting here for the broker (its `Open` waiting on a
    /// proof opening its vhost) hears from warren at the negotiated interval.
    beat: Option<Liveness>,
    /// A PROXY protocol header is still expected before the client's own bytes.
    proxy_header: bool,
}

/// What a link is for.
#[derive(Debug)]
enum Purpose {
    /// Proving an account for the clients waiting on it; then opening the vhost the first of
    /// them names, for the clients waiting on that.
    Proof {
        account: Account,
        /// Clients waiting for the verdict on their login.
        logins: Vec<ConnId>,
        /// Clients waiting for the vhost to open.
        opens: Vec<ConnId>,
        /// An event revoked the account while the proof ran: its verdict is not cached.
        stale: bool,
    },
    /// The broker's event exchange.
    Feed(Box<Feed>),
}

#[derive(Debug)]
struct Link {
    id: LinkId,
    login: Login,
    purpose: Purpose,
    timer_at: Option<Instant>,
    /// The broker node it reached, once connected.
    node: Option<usize>,
}

/// The hubs new clients of one key join, taken in turn.
#[derive(Debug, Default)]
struct Shards {
    hubs: SmallVec<[HubId; 2]>,
    /// Round-robin position.
    next: usize,
}

#[derive(Debug)]
struct HubRecord {
    key: Credentials,
    /// Clients and links handed to it.
    handoffs: u64,
    /// New clients of its credentials join it (detached hubs serve the ones they have).
    attached: bool,
}

/// What an admission timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The broker-unreachable backoff ends.
    Unreachable,
    /// The event feed is redialled.
    FeedRedial,
    /// A link's login deadline or heartbeat.
    Link(LinkId),
    /// A client's handshake deadline.
    Conn(ConnId),
}

/// The admission machine. See the module documentation.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    conns: Slab<Conn>,
    links: Slab<Link>,
    next_gen: u32,
    cache: CredentialCache,
    hubs: BTreeMap<HubId, HubRecord>,
    attached: BTreeMap<Credentials, Shards>,
    next_hub: u64,
    rng: ChaCha8Rng,
    agenda: Agenda<Timer>,
    /// After a proof could not reach the broker: until when, and what clients are told.
    unreachable: Option<(Instant, Reply)>,
    failures: u32,
    /// The event feed's link while it is dialled or up.
    feed: Option<LinkId>,
    /// Whether revocations arrive as events right now.
    feed_up: bool,
    feed_failures: u32,
    feed_redial: Option<Instant>,
    /// Which broker node answered last.
    nodes: Nodes,
    draining: bool,
    /// Vhosts an operator paused: their hubs start paused.
    paused_vhosts: BTreeSet<String>,
    out: VecDeque<Output>,
    stats: AdmissionStats,
}

/// A running hub, as [`Admission::hub_list`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEntry {
    /// Its id.
    pub id: HubId,
    /// The user it serves.
    pub user: String,
    /// The vhost it serves.
    pub vhost: String,
    /// New clients of its credentials join it (false once detached: a revocation or an
    /// operator's drain).
    pub attached: bool,
}

impl Admission {
    /// Admission with `config`; `seed` feeds reconnect jitter here and in every hub it starts
    /// (the runtime draws it from the OS, the simulation from its scenario). With an event
    /// source configured, the feed is dialled at `now`.
    #[must_use]
    pub fn new(now: Instant, config: AdmissionConfig, seed: u64) -> Self {
        let cache = CredentialCache::new(Some(config.credentials_ttl), config.refusal_ttl);
        let nodes = Nodes::new(config.hub.nodes);
        let mut a = Admission {
            config,
            conns: Slab::new(),
            links: Slab::new(),
            next_gen: 0,
            cache,
            hubs: BTreeMap::new(),
            attached: BTreeMap::new(),
            next_hub: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            agenda: Agenda::default(),
            unreachable: None,
            failures: 0,
            feed: None,
            feed_up: false,
            feed_failures: 0,
            feed_redial: None,
            nodes,
            draining: false,
            paused_vhosts: BTreeSet::new(),
            out: VecDeque::new(),
            stats: AdmissionStats::default(),
        };
        a.dial_feed(now);
        a
    }

    /// Counters for metrics.
    #[must_use]
    pub fn stats(&self) -> &AdmissionStats {
        &self.stats
    }

    /// Running hubs (attached or not).
    #[must_use]
    pub fn hub_count(&self) -> usize {
        self.hubs.len()
    }

    /// The running hubs, by id: who they serve (never the password) and whether new clients
    /// still join them.
    #[must_use]
    pub fn hub_list(&self) -> Vec<HubEntry> {
        self.hubs
            .iter()
            .map(|(id, h)| HubEntry {
                id: *id,
                user: h.key.user.clone(),
                vhost: h.key.vhost.clone(),
                attached: h.attached,
            })
            .collect()
    }

    /// The running hub whose number (as printed, `h<number>`) is `number`.
    #[must_use]
    pub fn find_hub(&self, number: u64) -> Option<HubId> {
        let id = HubId(number);
        self.hubs.contains_key(&id).then_some(id)
    }

    /// The vhosts an operator paused, in order.
    #[must_use]
    pub fn paused_vhosts(&self) -> Vec<String> {
        self.paused_vhosts.iter().cloned().collect()
    }

    fn hubs_of_vhost(&self, vhost: &str) -> Vec<HubId> {
        self.hubs
            .iter()
            .filter(|(_, h)| h.key.vhost == vhost)
            .map(|(id, _)| *id)
            .collect()
    }

    fn send_to_hub(&mut self, hub: HubId, input: hub::Input) {
        self.out.push_back(Output::ToHub { hub, input });
    }

    /// Whether revocations arrive as events (otherwise accepted accounts are trusted for
    /// `credentials_ttl`).
    #[must_use]
    pub fn feed_is_up(&self) -> bool {
        self.feed_up
    }

    /// Clients in their handshake.
    #[must_use]
    pub fn handshakes(&self) -> usize {
        self.conns.len()
    }

    /// Accounts and refusals the credential cache holds.
    #[must_use]
    pub fn cached_credentials(&self) -> usize {
        self.cache.len()
    }

    /// A client connection was accepted at `now`; `connected` is how many client sockets the
    /// driver holds, this one included (its check against `max_clients` happens at `Open`).
    pub fn accept(&mut self, now: Instant, connected: usize) -> ConnId {
        let id = ConnId {
            idx: self.conns.vacant_key() as u32,
            gen: self.gen(),
        };
        let hs = ClientHandshake::new(now, self.config.handshake);
        self.conns.insert(Conn {
            id,
            hs,
            buf: BytesMut::new(),
            over_limit: connected > self.config.max_clients,
            wait: Wait::Input,
            user: None,
            hello: None,
            timer_at: None,
            last_tx: now,
            beat: None,
            proxy_header: self.config.proxy_protocol,
        });
        if self.draining {
            self.refuse(now, id, Refusal::Draining, shutting_down());
        } else {
            self.schedule_conn(id);
        }
        id
    }

    /// Feeds one event in. Drain [`Admission::poll_output`] afterwards.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::ClientData { conn, data } => {
                if let Some(c) = self
                    .conn_mut(conn)
                    .filter(|c| !matches!(c.wait, Wait::Reset(_)))
                {
                    c.buf.extend_from_slice(&data);
                    if let Some(b) = &mut c.beat {
                        b.received(now);
                    }
                    self.run_handshake(now, conn);
                }
            }
            Input::ClientClosed { conn } => self.client_gone(conn),
            Input::LinkConnected { link, node } => {
                // Spreading, admission's logins take the nodes in turn instead.
                if self.config.hub.placement != hub::Placement::Spread {
                    self.nodes.answered(node);
                }
                if let Some(l) = self.link_mut(link) {
                    l.node = Some(node);
                    let step = l.login.on_connected(now);
                    self.link_step(now, link, step, SmallVec::new());
                }
            }
            Input::LinkFrames { link, frames } => self.link_frames(now, link, frames),
            Input::LinkFrameError { link, error } => {
                let reply = Reply::new(reply::FRAME_ERROR, error);
                self.link_failed(now, link, reply);
            }
            Input::LinkClosed { link, reason } => {
                if let Some(l) = self.link(link) {
                    let reply = if l.login.is_connecting() {
                        l.login.on_socket_closed(&reason)
                    } else {
                        Reply::new(
                            reply::CONNECTION_FORCED,
                            format!("broker connection lost: {reason}"),
                        )
                    };
                    self.link_failed(now, link, reply);
                }
            }
            Input::HubIdle { hub, handoffs } => {
                if self.hubs.get(&hub).is_some_and(|h| h.handoffs == handoffs) {
                    if let Some(h) = self.hubs.remove(&hub) {
                        if let Some(shards) = self.attached.get_mut(&h.key) {
                            shards.hubs.retain(|id| *id != hub);
                            if shards.hubs.is_empty() {
                                self.attached.remove(&h.key);
                            }
                        }
                    }
                    self.out.push_back(Output::StopHub { hub });
                }
            }
            Input::HubRefused { hub, reply } => {
                if let Some(h) = self.hubs.get(&hub) {
                    let key = h.key.clone();
                    self.remember_refusal(now, &key, reply);
                }
            }
            Input::Timeout => self.fire_timers(now),
            Input::Drain => self.drain(now),
            Input::Reconfigure(config) => self.reconfigure(*config),
            Input::PauseVhost { vhost } => {
                for hub in self.hubs_of_vhost(&vhost) {
                    self.send_to_hub(hub, hub::Input::Pause);
                }
                self.paused_vhosts.insert(vhost);
            }
            Input::ResumeVhost { vhost } => {
                for hub in self.hubs_of_vhost(&vhost) {
                    self.send_to_hub(hub, hub::Input::Resume);
                }
                self.paused_vhosts.remove(&vhost);
            }
            Input::DetachHub { hub } => {
                if let Some(h) = self.hubs.get_mut(&hub) {
                    h.attached = false;
                    self.attached.retain(|_, shards| {
                        shards.hubs.retain(|id| *id != hub);
                        !shards.hubs.is_empty()
                    });
                    self.send_to_hub(hub, hub::Input::Detach);
                }
            }
        }
    }

    /// The next instruction. Call until `None` after every mutation.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call `handle(now, Input::Timeout)` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.agenda.next()
    }

    // ----- helpers --------------------------------------------------------------------

    fn gen(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        self.next_gen
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.index()).filter(|c| c.id == id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.index()).filter(|c| c.id == id)
    }

    fn link(&self, id: LinkId) -> Option<&Link> {
        self.links.get(id.index()).filter(|l| l.id == id)
    }

    fn link_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        self.links.get_mut(id.index()).filter(|l| l.id == id)
    }

    fn event(&mut self, e: AdmissionEvent) {
        self.out.push_back(Output::Event(e));
    }

    /// Queues bytes for a client and counts them as liveness towards it.
    fn send_client(&mut self, now: Instant, conn: ConnId, data: Bytes) {
        if let Some(c) = self.conn_mut(conn) {
            c.last_tx = now;
            if let Some(b) = &mut c.beat {
                b.sent(now);
            }
        }
        self.out.push_back(Output::ToClient { conn, data });
    }

    // ----- clients --------------------------------------------------------------------

    /// Runs a client's handshake over what it has sent, acts on what it asks for, and sets
    /// its timer for what it then waits for.
    fn run_handshake(&mut self, now: Instant, id: ConnId) {
        self.advance_handshake(now, id);
        self.schedule_conn(id);
    }

    fn advance_handshake(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(c) = self.conn_mut(id) else { return };
            if c.wait != Wait::Input {
                return;
            }
            if c.proxy_header {
                match proxy_header::parse(&c.buf) {
                    ProxyHeader::Incomplete => return,
                    ProxyHeader::Complete { source, len } => {
                        c.proxy_header = false;
                        let _ = c.buf.split_to(len);
                        if let Some(source) = source {
                            self.event(AdmissionEvent::ClientAddress { conn: id, source });
                        }
                        continue;
                    }
                    ProxyHeader::Invalid(why) => {
                        self.count_refusal(Refusal::ProxyHeader);
                        self.event(AdmissionEvent::ProxyHeaderRefused { conn: id, why });
                        return self.remove_conn(id, false);
                    }
                }
            }
            c.hs.handle_input(&mut c.buf);
            if c.beat.is_none() {
                if let Some(tune) = c.hs.tuned() {
                    let mut beat = Liveness::new(now, tune.heartbeat);
                    beat.sent(c.last_tx);
                    c.beat = Some(beat);
                }
            }
            let mut verdict_needed = false;
            while let Some(o) = self.conn_mut(id).and_then(|c| c.hs.poll_output()) {
                match o {
                    HandshakeOutput::Send(data) => self.send_client(now, id, data),
                    HandshakeOutput::Close => {
                        self.handshake_failed(id);
                        return;
                    }
                    HandshakeOutput::Login { user, password } => {
                        verdict_needed = true;
                        if let Some(c) = self.conn_mut(id) {
                            c.user = Some(user.clone());
                        }
                        self.login(now, id, Account { user, password });
                    }
                    HandshakeOutput::Done(hello) => {
                        self.open(now, id, hello);
                        return;
                    }
                }
            }
            // A login answered at once lets the bytes that waited for it go on.
            if !verdict_needed {
                return;
            }
        }
    }

    /// The handshake closed the client itself (a protocol error or its deadline).
    fn handshake_failed(&mut self, id: ConnId) {
        self.count_refusal(Refusal::Handshake);
        self.event(AdmissionEvent::HandshakeFailed { conn: id });
        self.remove_conn(id, false);
    }

    /// `StartOk`: decide at once from what is known, or prove the account.
    fn login(&mut self, now: Instant, id: ConnId, account: Account) {
        if self.draining {
            return self.refuse(now, id, Refusal::Draining, shutting_down());
        }
        if let Some(r) = self.cache.refused_login(now, &account).cloned() {
            return self.refuse(now, id, Refusal::Cached, r);
        }
        if self.cache.is_proven(now, &account) {
            self.stats.trusted += 1;
            self.event(AdmissionEvent::Trusted {
                user: account.user.clone(),
            });
            if let Some(c) = self.conn_mut(id) {
                c.hs.accept_login();
            }
            return;
        }
        let pending = self.links.iter().find_map(|(_, l)| match &l.purpose {
            Purpose::Proof { account: a, .. }
                if *a == account
                    && matches!(
                        l.login.phase(),
                        LoginPhase::Dialing | LoginPhase::AwaitStart | LoginPhase::AwaitTune
                    ) =>
            {
                Some(l.id)
            }
            _ => None,
        });
        if let Some(link) = pending {
            return self.wait_for_login(id, link);
        }
        if let Some((_, reply)) = self.unreachable.clone() {
            return self.refuse(now, id, Refusal::Unreachable, reply);
        }
        let link = self.dial_proof(now, account);
        self.wait_for_login(id, link);
    }

    fn wait_for_login(&mut self, id: ConnId, link: LinkId) {
        if let Some(c) = self.conn_mut(id) {
            c.wait = Wait::Login(link);
        }
        if let Some(Link {
            purpose: Purpose::Proof { logins, .. },
            ..
        }) = self.link_mut(link)
        {
            logins.push(id);
        }
    }

    /// `Open`: join the hub of these credentials, or have a proof open the vhost first.
    fn open(&mut self, now: Instant, id: ConnId, hello: Box<ClientHello>) {
        let Some(c) = self.conn_mut(id) else { return };
        let over_limit = c.over_limit;
        let key = hello.credentials.clone();
        c.hello = Some(hello);
        if self.draining {
            return self.refuse(now, id, Refusal::Draining, shutting_down());
        }
        if over_limit {
            let r = Reply::new(
                reply::NOT_ALLOWED,
                format!(
                    "warren's limit of {} connected clients (max_clients) is reached",
                    self.config.max_clients
                ),
            );
            return self.refuse(now, id, Refusal::MaxClients, r);
        }
        if let Some(r) = self.cache.refused_vhost(now, &key).cloned() {
            return self.refuse(now, id, Refusal::Cached, r);
        }
        let account = key.account();
        let proof = self.links.iter().find_map(|(_, l)| match &l.purpose {
            Purpose::Proof { account: a, .. } if *a == account => match l.login.phase() {
                LoginPhase::AwaitVhost => Some((l.id, true)),
                LoginPhase::AwaitOpenOk if l.login.vhost() == Some(&key.vhost) => {
                    Some((l.id, false))
                }
                _ => None,
            },
            _ => None,
        });
        let hub = self.next_hub_of(&key);
        if hub.is_none() && self.hubs.len() >= self.config.max_hubs {
            let r = Reply::new(
                reply::NOT_ALLOWED,
                format!(
                    "warren's limit of {} distinct credential sets (max_hubs) is reached",
                    self.config.max_hubs
                ),
            );
            return self.refuse(now, id, Refusal::MaxHubs, r);
        }
        match (proof, hub) {
            // A proof of this account still open to any vhost opens this one, and becomes an
            // upstream of its hub (a fresh word from the broker on these credentials).
            (Some((link, unassigned)), _) => {
                if unassigned {
                    if let Some(l) = self.link_mut(link) {
                        let step = l.login.open(now, &key.vhost);
                        self.link_step(now, link, step, SmallVec::new());
                    }
                }
                if let Some(c) = self.conn_mut(id) {
                    c.wait = Wait::Open(link);
                }
                if let Some(Link {
                    purpose: Purpose::Proof { opens, .. },
                    ..
                }) = self.link_mut(link)
                {
                    opens.push(id);
                }
            }
            (None, Some(hub)) => self.join(id, hub),
            (None, None) => {
                let hub = self.start_hub(key);
                self.join(id, hub);
            }
        }
    }

    /// The running hub the next client of `key` joins, in turn; `None` while the key has
    /// fewer hubs than `hubs_per_key` (the caller starts one).
    fn next_hub_of(&mut self, key: &Credentials) -> Option<HubId> {
        let shards = self.attached.get_mut(key)?;
        if shards.hubs.len() < self.config.hubs_per_key.max(1) {
            return None;
        }
        let hub = shards.hubs[shards.next % shards.hubs.len()];
        shards.next = shards.next.wrapping_add(1);
        Some(hub)
    }

    /// Takes reloaded settings (see [`Input::Reconfigure`]).
    fn reconfigure(&mut self, config: AdmissionConfig) {
        let events = self.config.events.take();
        if config.hub.nodes != self.config.hub.nodes {
            self.nodes = Nodes::new(config.hub.nodes);
        }
        self.config = AdmissionConfig { events, ..config };
        self.cache.set_refusal_ttl(self.config.refusal_ttl);
        if !self.feed_up {
            self.cache.set_proven_ttl(Some(self.config.credentials_ttl));
        }
        let hubs: Vec<HubId> = self.hubs.keys().copied().collect();
        for hub in hubs {
            let input = hub::Input::Reconfigure(Box::new(self.hub_config()));
            self.out.push_back(Output::ToHub { hub, input });
        }
    }

    /// The settings of a hub started now (or reconfigured now).
    fn hub_config(&self) -> HubConfig {
        let mut config = self.config.hub.clone();
        config.proof_ttl = (!self.feed_up).then_some(self.config.credentials_ttl);
        config
    }

    /// Starts a hub for `key`, attached for new clients.
    fn start_hub(&mut self, key: Credentials) -> HubId {
        self.next_hub += 1;
        let hub = HubId(self.next_hub);
        let machine = Box::new(Hub::new(
            self.hub_config(),
            key.clone(),
            self.rng.next_u64(),
        ));
        self.hubs.insert(
            hub,
            HubRecord {
                key: key.clone(),
                handoffs: 0,
                attached: true,
            },
        );
        let paused = self.paused_vhosts.contains(&key.vhost);
        self.attached.entry(key).or_default().hubs.push(hub);
        self.out.push_back(Output::StartHub { hub, machine });
        if paused {
            // Before any handoff, which follows in the output order.
            self.send_to_hub(hub, hub::Input::Pause);
        }
        hub
    }

    /// Hands a client that reached `Open` to `hub`.
    fn join(&mut self, id: ConnId, hub: HubId) {
        let Some(c) = self.conns.get_mut(id.index()).filter(|c| c.id == id) else {
            return;
        };
        let Some(hello) = c.hello.take() else { return };
        let pipelined = std::mem::take(&mut c.buf);
        let timer = c.timer_at;
        self.agenda.reschedule(Timer::Conn(id), timer, None);
        self.conns.remove(id.index());
        if let Some(h) = self.hubs.get_mut(&hub) {
            h.handoffs += 1;
        }
        self.out.push_back(Output::Join {
            conn: id,
            hub,
            hello,
            pipelined,
        });
    }

    /// Refuses a client, with a close or silently as [`crate::handshake::refusal`] says. A
    /// silent refusal resets the socket [`SILENT_CLOSE_DELAY`] later, as RabbitMQ does.
    fn refuse(&mut self, now: Instant, id: ConnId, why: Refusal, reply: Reply) {
        let Some(c) = self.conn_mut(id) else { return };
        c.hs.refuse(&reply);
        let silent = crate::handshake::refusal(&reply, c.hs.capabilities()).is_none();
        let user = c.user.clone();
        while let Some(o) = self.conn_mut(id).and_then(|c| c.hs.poll_output()) {
            if let HandshakeOutput::Send(data) = o {
                self.send_client(now, id, data);
            }
        }
        self.count_refusal(why);
        self.event(AdmissionEvent::Refused {
            conn: id,
            why,
            reply,
            user,
        });
        if silent {
            // The client hears nothing; its socket is reset after the delay.
            let wait = self.conn(id).map_or(Wait::Input, |c| c.wait);
            self.unwait(id, wait);
            if let Some(c) = self.conn_mut(id) {
                c.wait = Wait::Reset(now + SILENT_CLOSE_DELAY);
            }
            self.schedule_conn(id);
        } else {
            self.remove_conn(id, false);
        }
    }

    fn count_refusal(&mut self, why: Refusal) {
        *self.stats.refusals.entry(why).or_default() += 1;
    }

    /// Forgets a client and tells the driver to close (or reset) its socket.
    fn remove_conn(&mut self, id: ConnId, reset: bool) {
        let Some(c) = self.conn(id) else { return };
        let (timer, wait) = (c.timer_at, c.wait);
        self.agenda.reschedule(Timer::Conn(id), timer, None);
        self.conns.remove(id.index());
        self.unwait(id, wait);
        self.out.push_back(Output::CloseClient { conn: id, reset });
    }

    /// The client's socket is gone.
    fn client_gone(&mut self, id: ConnId) {
        let Some(c) = self.conn(id) else { return };
        let (timer, wait) = (c.timer_at, c.wait);
        self.agenda.reschedule(Timer::Conn(id), timer, None);
        self.conns.remove(id.index());
        self.unwait(id, wait);
    }

    /// Takes a departed client off the proof it waited on.
    fn unwait(&mut self, id: ConnId, wait: Wait) {
        let link = match wait {
            Wait::Input | Wait::Reset(_) => return,
            Wait::Login(l) | Wait::Open(l) => l,
        };
        if let Some(Link {
            purpose: Purpose::Proof { logins, opens, .. },
            ..
        }) = self.link_mut(link)
        {
            logins.retain(|c| *c != id);
            opens.retain(|c| *c != id);
        }
    }

    fn schedule_conn(&mut self, id: ConnId) {
        let Some(c) = self.conn(id) else { return };
        let deadline = match c.wait {
            Wait::Reset(at) => Some(at),
            // Past `Open` the handshake is done, but its deadline still bounds the wait.
            Wait::Open(_) => Some(c.hs.deadline()),
            Wait::Input | Wait::Login(_) => c.hs.poll_timeout(),
        };
        let beat = match c.wait {
            Wait::Reset(_) => None,
            _ => c.beat.as_ref().and_then(Liveness::deadline),
        };
        let want = match (deadline, beat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let old = c.timer_at;
        let at = self.agenda.reschedule(Timer::Conn(id), old, want);
        if let Some(c) = self.conn_mut(id) {
            c.timer_at = at;
        }
    }

    // ----- proofs -----------------------------------------------------------------------

    fn dial_proof(&mut self, now: Instant, account: Account) -> LinkId {
        let name = format!("{} {} login", self.config.hub.upstream_name, account.user);
        let login = Login::new(
            now,
            &self.config.hub,
            &account.user,
            &account.password,
            None,
            name,
        );
        self.dial(
            now,
            login,
            Purpose::Proof {
                account,
                logins: Vec::new(),
                opens: Vec::new(),
                stale: false,
            },
        )
    }

    fn dial(&mut self, now: Instant, login: Login, purpose: Purpose) -> LinkId {
        let id = LinkId {
            idx: self.links.vacant_key() as u32,
            gen: self.gen(),
        };
        self.links.insert(Link {
            id,
            login,
            purpose,
            timer_at: None,
            node: None,
        });
        let nodes = self.nodes.order();
        if self.config.hub.placement == hub::Placement::Spread {
            self.nodes.rotate();
        }
        self.out.push_back(Output::Dial { link: id, nodes });
        self.schedule_link(now, id);
        id
    }

    fn schedule_link(&mut self, _now: Instant, id: LinkId) {
        let Some(l) = self.link(id) else { return };
        let want = match &l.purpose {
            Purpose::Feed(feed) if !l.login.is_connecting() => feed.deadline(),
            _ => l.login.deadline(),
        };
        let old = l.timer_at;
        let at = self.agenda.reschedule(Timer::Link(id), old, want);
        if let Some(l) = self.link_mut(id) {
            l.timer_at = at;
        }
    }

    fn link_frames(&mut self, now: Instant, id: LinkId, frames: SmallVec<[Frame; 8]>) {
        let mut frames = frames.into_iter();
        while let Some(frame) = frames.next() {
            let Some(l) = self.link_mut(id) else { return };
            if !l.login.is_connecting() {
                // Only the event feed stays with admission once open.
                if let Purpose::Feed(feed) = &mut l.purpose {
                    let step = feed.on_frame(now, &frame);
                    self.feed_step(now, id, step);
                }
                continue;
            }
            let step = l.login.on_frame(now, &frame);
            // A proof that opened goes to a hub with the frames read after its OpenOk.
            let rest =
                if step.event == LoginEvent::Opened && matches!(l.purpose, Purpose::Proof { .. }) {
                    frames.by_ref().collect()
                } else {
                    SmallVec::new()
                };
            self.link_step(now, id, step, rest);
        }
    }

    /// Carries out a login step of a link; `rest` holds the frames read after the one that
    /// caused it.
    fn link_step(&mut self, now: Instant, id: LinkId, step: LoginStep, rest: SmallVec<[Frame; 8]>) {
        for data in step.send {
            self.out.push_back(Output::ToLink { link: id, data });
        }
        match step.event {
            LoginEvent::Nothing => self.schedule_link(now, id),
            LoginEvent::Accepted => self.login_accepted(now, id),
            LoginEvent::Opened => self.link_opened(now, id, rest),
            LoginEvent::Failed(reply) => self.link_failed(now, id, reply),
        }
    }

    /// The broker's `Tune`: the account is good.
    fn login_accepted(&mut self, now: Instant, id: LinkId) {
        self.failures = 0;
        self.schedule_link(now, id);
        let Some(l) = self.link_mut(id) else { return };
        let (account, waiting, stale) = match &mut l.purpose {
            Purpose::Proof {
                account,
                logins,
                stale,
                ..
            } => (account.clone(), std::mem::take(logins), *stale),
            Purpose::Feed(_) => return,
        };
        if !stale {
            self.cache.prove(now, account.clone());
        }
        self.stats.proofs += 1;
        self.event(AdmissionEvent::Proved {
            user: account.user.clone(),
        });
        for conn in &waiting {
            if let Some(c) = self.conn_mut(*conn) {
                c.wait = Wait::Input;
                c.hs.accept_login();
            }
        }
        // They go on to `Open`, where the first names the vhost this login opens. One that
        // never comes lets the login time out as "not needed".
        for conn in waiting {
            self.run_handshake(now, conn);
        }
    }

    /// `OpenOk`: the link becomes an upstream of its vhost's hub, and the clients waiting on
    /// it join that hub.
    fn link_opened(&mut self, now: Instant, id: LinkId, frames: SmallVec<[Frame; 8]>) {
        let Some(l) = self.link_mut(id) else { return };
        let heartbeat = l.login.tune().heartbeat;
        if let Purpose::Feed(feed) = &mut l.purpose {
            let step = feed.on_open(now, heartbeat);
            self.feed_up();
            self.feed_step(now, id, step);
            return self.schedule_link(now, id);
        }
        let Some(vhost) = l.login.vhost().map(str::to_owned) else {
            return;
        };
        let Purpose::Proof { account, opens, .. } = &mut l.purpose else {
            return;
        };
        let key = Credentials {
            user: account.user.clone(),
            password: account.password.clone(),
            vhost,
        };
        let waiting = std::mem::take(opens);
        let timer = l.timer_at;
        self.agenda.reschedule(Timer::Link(id), timer, None);
        let link = self.links.remove(id.index());
        let live: Vec<ConnId> = waiting
            .into_iter()
            .filter(|c| self.conn(*c).is_some())
            .collect();
        if live.is_empty() {
            // Everyone left: nothing to open it for.
            self.links.insert(link);
            return self.close_link(id, "not needed");
        }
        let hub = match self.next_hub_of(&key) {
            Some(h) => h,
            None => self.start_hub(key),
        };
        if let Some(h) = self.hubs.get_mut(&hub) {
            h.handoffs += 1;
        }
        self.out.push_back(Output::AdoptLink {
            link: id,
            hub,
            login: Box::new(link.login),
            frames,
            node: link.node.unwrap_or(0),
        });
        for conn in live {
            self.join(conn, hub);
        }
    }

    /// A link failed: the clients waiting on it hear why; refusals are remembered, and a
    /// broker that could not be reached is not dialled again for a while.
    fn link_failed(&mut self, now: Instant, id: LinkId, reply: Reply) {
        let Some(l) = self.link_mut(id) else { return };
        let phase = l.login.phase();
        let vhost = l.login.vhost().map(str::to_owned);
        if let (Some(node), false) = (l.node, reply.refuses_login()) {
            // It answered, then failed for another reason than the credentials.
            self.nodes.failed(node);
        }
        let Some(l) = self.link_mut(id) else { return };
        match &mut l.purpose {
            Purpose::Feed(_) => {
                self.remove_link(id);
                self.feed_down(now, reply.text);
            }
            Purpose::Proof {
                account,
                logins,
                opens,
                stale,
            } => {
                let (account, logins, opens, stale) = (
                    account.clone(),
                    std::mem::take(logins),
                    std::mem::take(opens),
                    *stale,
                );
                self.event(AdmissionEvent::ProofFailed {
                    link: id,
                    user: account.user.clone(),
                    reply: reply.clone(),
                });
                self.remove_link(id);
                let why = if !reply.refuses_login() {
                    self.broker_unreachable(now, &reply);
                    Refusal::Unreachable
                } else if phase == LoginPhase::AwaitOpenOk {
                    if let (Some(vhost), false) = (vhost, stale) {
                        let key = Credentials {
                            user: account.user.clone(),
                            password: account.password.clone(),
                            vhost,
                        };
                        self.cache.refuse_vhost(now, key, reply.clone());
                    }
                    Refusal::Vhost
                } else {
                    if !stale {
                        self.cache.refuse_login(now, account, reply.clone());
                    }
                    Refusal::Login
                };
                for conn in logins.into_iter().chain(opens) {
                    self.refuse(now, conn, why, reply.clone());
                }
            }
        }
    }

    /// A proof could not reach the broker: clients that need one are refused at once until
    /// the backoff ends (B11), instead of each causing a dial.
    fn broker_unreachable(&mut self, now: Instant, reply: &Reply) {
        let delay = self.backoff().delay(self.failures, &mut self.rng);
        self.failures = self.failures.saturating_add(1);
        let until = now + delay;
        let old = self.unreachable.as_ref().map(|(at, _)| *at);
        self.agenda.reschedule(Timer::Unreachable, old, Some(until));
        self.unreachable = Some((until, reply.clone()));
        self.event(AdmissionEvent::Unreachable {
            reply: reply.clone(),
            retry_in: delay,
        });
    }

    fn backoff(&self) -> BackoffConfig {
        self.config.hub.backoff
    }

    /// Sends `Connection.Close 200` on a link past its `Tune` and closes its socket.
    fn close_link(&mut self, id: LinkId, why: &str) {
        let Some(l) = self.link(id) else { return };
        if matches!(
            l.login.phase(),
            LoginPhase::AwaitVhost | LoginPhase::AwaitOpenOk | LoginPhase::Open
        ) {
            let close = Close::from(&Reply::verbatim(reply::REPLY_SUCCESS, why));
            self.out.push_back(Output::ToLink {
                link: id,
                data: encode::close(0, &close),
            });
        }
        self.remove_link(id);
    }

    /// Forgets a link and tells the driver to close its socket.
    fn remove_link(&mut self, id: LinkId) {
        let Some(l) = self.link(id) else { return };
        let timer = l.timer_at;
        self.agenda.reschedule(Timer::Link(id), timer, None);
        self.links.remove(id.index());
        if self.feed == Some(id) {
            self.feed = None;
        }
        self.out.push_back(Output::CloseLink { link: id });
    }

    /// A refusal a hub's own login met: remembered like a proof's.
    fn remember_refusal(&mut self, now: Instant, key: &Credentials, reply: Reply) {
        if reply.code == reply::ACCESS_REFUSED {
            self.cache.refuse_login(now, key.account(), reply);
        } else if reply.refuses_login() {
            self.cache.refuse_vhost(now, key.clone(), reply);
        }
    }

    // ----- the event feed -------------------------------------------------------------

    fn dial_feed(&mut self, now: Instant) {
        let Some(source) = self.config.events.clone() else {
            return;
        };
        if self.feed.is_some() || self.draining {
            return;
        }
        let name = format!("{} events", self.config.hub.upstream_name);
        let login = Login::new(
            now,
            &self.config.hub,
            &source.user,
            &source.password,
            Some(&source.vhost),
            name,
        );
        let link = self.dial(now, login, Purpose::Feed(Box::default()));
        self.feed = Some(link);
    }

    fn feed_step(&mut self, now: Instant, id: LinkId, step: events::FeedStep) {
        for data in step.send {
            self.out.push_back(Output::ToLink { link: id, data });
        }
        for r in step.revocations {
            self.revoke(now, r);
        }
        match step.failed {
            Some(reply) => {
                self.close_link(id, "event feed failed");
                self.feed_down(now, reply.text);
            }
            None => self.schedule_link(now, id),
        }
    }

    fn feed_up(&mut self) {
        self.feed_failures = 0;
        self.feed_up = true;
        self.cache.set_proven_ttl(None);
        // What was proved before the feed was up may have been revoked unseen.
        self.cache.forget_proven();
        self.detach_all();
        self.event(AdmissionEvent::FeedUp);
    }

    fn feed_down(&mut self, now: Instant, reason: String) {
        let was_up = std::mem::replace(&mut self.feed_up, false);
        self.cache.set_proven_ttl(Some(self.config.credentials_ttl));
        if was_up {
            // Revocations may be missed from now on: nothing trusted without a new login.
            self.cache.forget_proven();
            self.detach_all();
        }
        self.event(AdmissionEvent::FeedDown { reason });
        if self.draining {
            return;
        }
        let delay = self.backoff().delay(self.feed_failures, &mut self.rng);
        self.feed_failures = self.feed_failures.saturating_add(1);
        let at = now + delay;
        self.feed_redial = self
            .agenda
            .reschedule(Timer::FeedRedial, self.feed_redial, Some(at));
    }

    /// New clients go to new hubs (whose first login is fresh); the old ones keep serving
    /// the clients they have, as RabbitMQ keeps the connections it has.
    fn detach_all(&mut self) {
        self.attached.clear();
        for h in self.hubs.values_mut() {
            h.attached = false;
        }
    }

    /// Detaches the hubs whose credentials match; returns every matching hub, attached or
    /// not (they all serve clients of those credentials).
    fn detach(&mut self, mut which: impl FnMut(&Credentials) -> bool) -> Vec<HubId> {
        let mut matching = Vec::new();
        for (id, h) in &mut self.hubs {
            if which(&h.key) {
                h.attached = false;
                matching.push(*id);
            }
        }
        self.attached.retain(|_, shards| {
            shards.hubs.retain(|id| !matching.contains(id));
            !shards.hubs.is_empty()
        });
        matching
    }

    /// What the broker revoked stops admitting new clients; what RabbitMQ closes, warren
    /// closes too (B2).
    fn revoke(&mut self, now: Instant, r: Revocation) {
        self.stats.revocations += 1;
        let _ = now;
        let close = match &r {
            Revocation::UserCreated { user } => {
                self.cache.forget_user(user);
                None
            }
            Revocation::PasswordChanged { user } => {
                self.cache.forget_user(user);
                self.stale_proofs(user);
                self.detach(|k| k.user == *user);
                None
            }
            Revocation::UserDeleted { user } => {
                self.cache.forget_user(user);
                self.stale_proofs(user);
                let hubs = self.detach(|k| k.user == *user);
                Some((
                    hubs,
                    Reply::new(
                        reply::CONNECTION_FORCED,
                        format!("user '{user}' is deleted"),
                    ),
                ))
            }
            Revocation::PermissionCreated { user, vhost } => {
                self.cache.forget_vhost_refusals(Some(user), vhost);
                None
            }
            Revocation::PermissionDeleted { user, vhost } => {
                self.detach(|k| k.user == *user && k.vhost == *vhost);
                None
            }
            Revocation::VhostCreated { vhost } => {
                self.cache.forget_vhost_refusals(None, vhost);
                None
            }
            Revocation::VhostDeleted { vhost } => {
                let hubs = self.detach(|k| k.vhost == *vhost);
                Some((
                    hubs,
                    Reply::new(reply::CONNECTION_FORCED, format!("vhost '{vhost}' is down")),
                ))
            }
        };
        if let Some((hubs, reply)) = close {
            for hub in hubs {
                self.out.push_back(Output::ToHub {
                    hub,
                    input: hub::Input::CloseClients {
                        reply: reply.clone(),
                    },
                });
            }
        }
        self.event(AdmissionEvent::Revoked(r));
    }

    /// Proofs of `user` under way when its password changed: their verdict is not cached.
    fn stale_proofs(&mut self, user: &str) {
        for (_, l) in &mut self.links {
            if let Purpose::Proof { account, stale, .. } = &mut l.purpose {
                if account.user == user {
                    *stale = true;
                }
            }
        }
    }

    // ----- timers and drain -----------------------------------------------------------

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.agenda.pop_due(now) {
            match timer {
                Timer::Conn(id) => {
                    let Some(c) = self.conn_mut(id) else { continue };
                    c.timer_at = None;
                    if let Wait::Reset(at) = c.wait {
                        if now >= at {
                            self.remove_conn(id, true);
                        } else {
                            self.schedule_conn(id);
                        }
                        continue;
                    }
                    let waiting_on = match c.wait {
                        Wait::Login(_) => Some("checking the login"),
                        Wait::Open(_) => Some("opening the vhost"),
                        Wait::Input | Wait::Reset(_) => None,
                    };
                    if let Some(what) = waiting_on.filter(|_| now >= c.hs.deadline()) {
                        // The client waited for the broker, not the other way round: it
                        // hears why instead of losing its socket.
                        let r = Reply::new(
                            reply::CONNECTION_FORCED,
                            format!("broker unreachable: timed out {what}"),
                        );
                        self.refuse(now, id, Refusal::Unreachable, r);
                        continue;
                    }
                    match c.beat.as_ref().map(|b| b.check(now)) {
                        Some(Beat::Dead) => {
                            let r = Reply::new(
                                reply::CONNECTION_FORCED,
                                "missed heartbeats from client, timeout",
                            );
                            self.refuse(now, id, Refusal::Handshake, r);
                            continue;
                        }
                        Some(Beat::Send) => {
                            self.send_client(now, id, Bytes::from_static(HEARTBEAT));
                        }
                        Some(Beat::Idle) | None => {}
                    }
                    let Some(c) = self.conn_mut(id) else { continue };
                    if c.hs.poll_timeout().is_some_and(|t| t <= now) {
                        // Timed out: the handshake closes it.
                        c.hs.handle_timeout(now);
                        while let Some(o) = self.conn_mut(id).and_then(|c| c.hs.poll_output()) {
                            if let HandshakeOutput::Send(data) = o {
                                self.send_client(now, id, data);
                            }
                        }
                        self.handshake_failed(id);
                    } else {
                        self.schedule_conn(id);
                    }
                }
                Timer::Link(id) => {
                    let Some(l) = self.link_mut(id) else { continue };
                    l.timer_at = None;
                    match &mut l.purpose {
                        Purpose::Feed(feed) if !l.login.is_connecting() => {
                            let step = feed.on_timer(now);
                            self.feed_step(now, id, step);
                        }
                        // Logged in, but no client came to name a vhost in time.
                        Purpose::Proof { .. }
                            if l.login.phase() == LoginPhase::AwaitVhost
                                && l.login.timed_out(now) =>
                        {
                            self.close_link(id, "not needed");
                        }
                        _ => {
                            let step = l.login.on_timer(now);
                            self.link_step(now, id, step, SmallVec::new());
                        }
                    }
                }
                Timer::Unreachable => self.unreachable = None,
                Timer::FeedRedial => {
                    self.feed_redial = None;
                    self.dial_feed(now);
                }
            }
        }
    }

    fn drain(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        // A client past its protocol header hears why at once; one that has not sent it yet
        // cannot be sent a close, and is refused at its login instead.
        let started: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.hs.started() && !matches!(c.wait, Wait::Reset(_)))
            .map(|(_, c)| c.id)
            .collect();
        for id in started {
            self.refuse(now, id, Refusal::Draining, shutting_down());
        }
        let links: Vec<LinkId> = self.links.iter().map(|(_, l)| l.id).collect();
        for id in links {
            self.close_link(id, "warren is shutting down");
        }
        if let Some(at) = self.feed_redial.take() {
            self.agenda.reschedule(Timer::FeedRedial, Some(at), None);
        }
    }
}

fn shutting_down() -> Reply {
    Reply::new(reply::CONNECTION_FORCED, "warren is shutting down")
}

#[cfg(test)]
mod tests;
