//! The hub: one per (user, password, vhost) (B1). It owns the upstream connections to the
//! broker for those credentials and every client that authenticated with them, and it is the
//! only place where client channels meet upstream channels.
//!
//! # Driving a hub
//!
//! A `Hub` is a sans-IO state machine. The runtime (or a simulation) calls exactly one
//! mutator — [`Hub::handle`] or [`Hub::add_client`] — then drains [`Hub::poll_output`] until it
//! returns `None`, then reads [`Hub::poll_timeout`] and calls `handle(now, Input::Timeout)`
//! when that instant comes. Time is always passed in; the hub never reads a clock and draws
//! its only randomness (reconnect jitter) from a generator seeded by the caller, so a run
//! replays exactly.
//!
//! Peer misbehaviour never surfaces as a panic or an `Err`: it becomes outputs — a
//! `Connection.Close` with the reply code the spec names, then a close instruction.
//!
//! # Layout
//!
//! `interface` is the contract a driver matches on (ids, configuration, inputs, outputs,
//! events, counters). This file holds the `Hub` itself, its timers, reconnects and drain;
//! `client` (with `client/`) the client side, `upstream` the broker side, `channels` the
//! channel table of one upstream, `pool` the recycled channels, `control` the operator's
//! hold. What the hub learns from the broker, because AMQP does not say it, has a file each:
//! `user_limit` (a user's channel limit), `exchange_types` (plugin exchange types, asked on
//! probe connections) and `queue_types` (streams and quorum queues). `liveness`, `slow` and
//! `backoff` are the rules they share.

mod backoff;
mod channels;
mod client;
mod control;
mod exchange_types;
pub(crate) mod interface;
pub(crate) mod liveness;
mod pool;
mod queue_types;
pub mod slow;
mod upstream;
mod user_limit;

pub use backoff::BackoffConfig;
pub use control::{
    paused_channel_reply, paused_connection_reply, ClientSnapshot, HubSnapshot, HubState,
    UpstreamSnapshot,
};
pub use interface::{
    ClientId, HubConfig, HubEvent, HubStats, Input, Output, Peer, Placement, UpstreamId,
};

use crate::agenda::Agenda;
use crate::credentials::Credentials;
use crate::frame::{Frame, HEARTBEAT};
use crate::handshake::ClientHello;
use crate::login::Login;
use crate::method::{encode, Close};
use crate::nodes::{NodeOrder, Nodes};
use crate::reply::{self, Reply};
use bytes::Bytes;
use channels::Slot;
use liveness::Beat;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use slab::Slab;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// What a hub timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The hub-wide drain deadline (B14).
    Drain,
    /// The next reconnect attempt (B11).
    Reconnect,
    /// The oldest pooled channel's idle expiry (B6).
    PoolIdle,
    /// An upstream's heartbeat, connect timeout, close timeout or idle timeout.
    Upstream(UpstreamId),
    /// A client's heartbeat or close timeout.
    Client(ClientId),
    /// The oldest waiter of a pause runs out of time.
    Pause,
}

/// Who an exclusive queue of this hub belongs to (B5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// The client that declared it.
    Client(ClientId),
    /// Its client left and the broker has not run warren's `queue.delete` yet (it waits for
    /// a channel, or the housekeeping channel's close is unanswered). The queue still exists
    /// on the shared connection, where any client of the hub could reach it, so it stays out
    /// of reach until the delete has run: other clients are answered as RabbitMQ answers
    /// once the owner's connection took the queue along.
    Departed,
}

/// A channel on an upstream: which connection, which number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpRef {
    pub(crate) up: UpstreamId,
    pub(crate) ch: u16,
}

/// The per-credential state machine. See the module documentation for how to drive it.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    credentials: Credentials,
    clients: Slab<client::Client>,
    upstreams: Slab<upstream::Upstream>,
    next_gen: u32,
    out: VecDeque<Output>,
    agenda: Agenda<Timer>,
    rng: ChaCha8Rng,
    /// Client channels waiting for an upstream with room.
    waiting_opens: VecDeque<(ClientId, u16)>,
    /// Frames clients sent on channels still in `waiting_opens`, in arrival order.
    held_frames: Vec<(ClientId, Frame)>,
    /// Upstream channels closed with queue declares still in flight (exclusive or not, in
    /// order), by whose client: a departed client's or one whose channel warren closed. An
    /// exclusive queue named by a late declare-ok goes to its client if it is still here,
    /// else is deleted (B5).
    orphan_declares: Vec<(UpRef, ClientId, VecDeque<client::Declare>)>,
    /// Exclusive queues of departed clients waiting for a channel to be deleted on: the
    /// next number their upstream frees, or the next channel it pools, goes to them before
    /// any client's open can take it.
    pending_deletes: Vec<(UpstreamId, Vec<u8>)>,
    /// Deletes sent on each housekeeping channel. Their queues stay locked until the broker
    /// answers the channel's close, by which it has run them: a `channel.close` of its own
    /// crossing ours means it discarded them, and they are sent again.
    housekeeping: Vec<(UpRef, Vec<Vec<u8>>)>,
    /// Every exclusive queue a client of this hub declared, by name, until the broker has
    /// run its delete: another client that touches one is refused as RabbitMQ refuses another
    /// connection (B5), although the broker sees one connection for both.
    exclusive_owners: BTreeMap<Vec<u8>, Holder>,
    /// Channels whose fence round trip is in flight (they count against the pool size).
    fencing: usize,
    /// Pooled channels, most recently pooled last (so the first is the oldest).
    pool: Vec<UpRef>,
    pool_timer: Option<Instant>,
    reconnect: Reconnect,
    /// The user's channel limit, once the broker enforced it on this hub (B7).
    channel_limit: Option<user_limit::ChannelLimit>,
    /// Exchange types learnt from the broker, and the frames waiting for the next answer.
    types: exchange_types::ExchangeTypes,
    /// Stream and quorum queues seen, whose misuse RabbitMQ answers with a connection error.
    queue_types: queue_types::QueueTypes,
    /// Which broker node answered last.
    nodes: Nodes,
    drain: Option<Instant>,
    /// When the drain began: upstreams serving no client close from then on.
    drain_started: Option<Instant>,
    /// When an upstream last opened: the broker's latest word on these credentials and this
    /// vhost (see [`HubConfig::proof_ttl`]).
    last_proof: Option<Instant>,
    /// See [`Hub::handoffs`].
    handoffs: u64,
    stats: HubStats,
    /// Paused by an operator ([`Input::Pause`]).
    paused: bool,
    /// Clients waiting for a resume, with when they are refused.
    paused_clients: VecDeque<(ClientId, Instant)>,
    /// Channel opens waiting for a resume, with when they are refused.
    paused_opens: VecDeque<(ClientId, u16, Instant)>,
    pause_timer: Option<Instant>,
    /// Since when admission sends no more clients ([`Input::Detach`]).
    detached: Option<Instant>,
    /// The upstream an operator's re-dial is waiting for.
    redialling: Option<UpstreamId>,
}

/// Reconnect state of a hub (B11).
#[derive(Debug, Default)]
struct Reconnect {
    /// Consecutive failed dials since the last successful handshake.
    failures: u32,
    /// When the next dial is allowed; while set, new clients are refused at once.
    at: Option<Instant>,
    /// Why the last dial failed, told to refused clients.
    last_error: Option<Reply>,
}

impl Hub {
    /// A hub for `credentials`. `seed` feeds the reconnect jitter.
    #[must_use]
    pub fn new(config: HubConfig, credentials: Credentials, seed: u64) -> Self {
        let nodes = Nodes::new(config.nodes);
        Hub {
            config,
            credentials,
            clients: Slab::new(),
            upstreams: Slab::new(),
            next_gen: 0,
            out: VecDeque::new(),
            agenda: Agenda::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            waiting_opens: VecDeque::new(),
            held_frames: Vec::new(),
            orphan_declares: Vec::new(),
            pending_deletes: Vec::new(),
            housekeeping: Vec::new(),
            exclusive_owners: BTreeMap::new(),
            fencing: 0,
            pool: Vec::new(),
            pool_timer: None,
            reconnect: Reconnect::default(),
            channel_limit: None,
            types: exchange_types::ExchangeTypes::default(),
            queue_types: queue_types::QueueTypes::default(),
            nodes,
            drain: None,
            drain_started: None,
            last_proof: None,
            handoffs: 0,
            stats: HubStats::default(),
            paused: false,
            paused_clients: VecDeque::new(),
            paused_opens: VecDeque::new(),
            pause_timer: None,
            detached: None,
            redialling: None,
        }
    }

    /// The credentials this hub serves.
    #[must_use]
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Counters for metrics.
    #[must_use]
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Connected clients (including ones waiting for admission or closing).
    #[must_use]
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Upstream connections in any state.
    #[must_use]
    pub fn upstream_count(&self) -> usize {
        self.upstreams.len()
    }

    /// Upstream channels in use (any state but free), across all upstreams.
    #[must_use]
    pub fn channels_in_use(&self) -> usize {
        self.upstreams.iter().map(|(_, u)| u.table.in_use()).sum()
    }

    /// Channels waiting in the recycling pool.
    #[must_use]
    pub fn pooled_channels(&self) -> usize {
        self.pool.len()
    }

    /// True when the hub holds nothing and waits for nothing: the registry can drop it.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.clients.is_empty() && self.upstreams.is_empty() && self.reconnect.at.is_none()
    }

    /// Whether the last dial failed and the hub is waiting out its backoff: new clients are
    /// refused at once meanwhile (B11), and readiness reports the broker unreachable.
    #[must_use]
    pub fn is_unreachable(&self) -> bool {
        self.unreachable().is_some()
    }

    /// Why the broker is unreachable, while a failed dial's backoff runs. A reconnect that is
    /// merely scheduled after a loss, with no failed dial yet, does not count: clients wait for
    /// it instead of being refused.
    fn unreachable(&self) -> Option<&Reply> {
        self.reconnect.at.and(self.reconnect.last_error.as_ref())
    }

    /// Whether at least one upstream is open, for readiness reporting.
    #[must_use]
    pub fn has_open_upstream(&self) -> bool {
        self.upstreams.iter().any(|(_, u)| u.is_open())
    }

    /// Clients and upstreams handed to this hub so far ([`Hub::add_client`],
    /// [`Hub::adopt_upstream`]): admission compares it with what it handed over before
    /// letting an idle hub stop.
    #[must_use]
    pub fn handoffs(&self) -> u64 {
        self.handoffs
    }

    /// Takes a broker connection that another owner logged in and opened (admission's proof
    /// of a new client's credentials) as one of this hub's upstreams; `node` is the broker
    /// node it reached.
    pub fn adopt_upstream(&mut self, now: Instant, login: Login, node: usize) -> UpstreamId {
        self.handoffs += 1;
        let id = UpstreamId {
            idx: self.upstreams.vacant_key() as u32,
            gen: self.gen(),
        };
        // Its word on the credentials counts even when the connection itself is one too
        // many; then it retires before it opens, so that no channel is placed on a
        // connection about to close (a waiting open placed there was lost).
        let surplus = self.upstreams.len() >= self.config.max_upstreams || self.drain.is_some();
        let mut u = upstream::Upstream::new(id, now, login);
        (u.node, u.aim) = (Some(node), node);
        u.retiring = surplus.then_some(now);
        self.nodes.answered(node);
        self.upstreams.insert(u);
        self.upstream_opened(now, id);
        if surplus {
            self.close_upstream_gracefully(now, id, "not needed");
        }
        id
    }

    /// Admits a client that finished its handshake. It gets `Connection.OpenOk` once an
    /// upstream with these credentials is open (B2), at once if one already is.
    pub fn add_client(&mut self, now: Instant, hello: ClientHello) -> ClientId {
        self.handoffs += 1;
        crate::growth::make_room(&mut self.clients);
        let id = ClientId {
            idx: self.clients.vacant_key() as u32,
            gen: self.gen(),
        };
        tracing::debug!(client = %id, name = ?hello.connection_name, "client joined hub");
        self.clients.insert(client::Client::new(id, now, hello));
        if self.paused && self.drain.is_none() {
            self.hold_client(now, id);
        } else {
            self.seat_client(now, id);
        }
        self.schedule_client(id);
        id
    }

    /// Admits a new client, or has it wait for an upstream, or refuses it.
    fn seat_client(&mut self, now: Instant, id: ClientId) {
        let servable = self.has_open_upstream() && !self.needs_fresh_proof(now);
        // Draining, a client whose handshake was under way when warren stopped accepting is
        // served like the others until the deadline, if an upstream can take it (B14, B17:
        // a hand-over to a new warren refuses no one).
        if self.drain.is_some() && !servable {
            self.refuse_client(
                now,
                id,
                Reply::new(reply::CONNECTION_FORCED, "warren is shutting down"),
            );
        } else if servable {
            self.admit(now, id);
        } else if self.upstreams.iter().any(|(_, u)| u.is_connecting()) {
            // Admitted when the connecting upstream opens.
        } else if let Some(why) = self.unreachable().cloned() {
            self.refuse_client(now, id, why);
        } else if self.reconnect.at.is_some() {
            // Admitted when the scheduled reconnect opens.
        } else {
            self.dial(now);
        }
    }

    /// Whether the last upstream login is too old to vouch for a new client: it then waits
    /// for a fresh one (unless the hub may not dial another upstream).
    fn needs_fresh_proof(&self, now: Instant) -> bool {
        let stale = match (self.config.proof_ttl, self.last_proof) {
            (Some(ttl), Some(at)) => now >= at + ttl,
            (Some(_), None) => true,
            (None, _) => false,
        };
        stale && self.upstreams.len() < self.config.max_upstreams
    }

    /// Feeds one event into the hub. Drain [`Hub::poll_output`] afterwards.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::ClientFrames { client, frames } => {
                for frame in frames {
                    if !self.client_frame(now, client, frame) {
                        break;
                    }
                }
            }
            Input::ClientFrameError { client, error } => {
                if self.client(client).is_some() {
                    let text = error.to_string();
                    let detail = text.trim_start_matches("FRAME_ERROR - ");
                    self.close_client(now, client, Reply::new(error.reply_code(), detail));
                }
            }
            Input::ClientClosed { client } => self.client_gone(now, client),
            Input::ClientSlow { client } => {
                if self.client(client).is_some() {
                    self.stats.slow_clients += 1;
                    self.event(HubEvent::SlowClient { client });
                    self.release_client(now, client);
                    self.remove_client(client);
                }
            }
            Input::UpstreamConnected { upstream, node } => {
                self.upstream_connected(now, upstream, node);
            }
            Input::UpstreamFrames { upstream, frames } => {
                for frame in frames {
                    if !self.upstream_frame(now, upstream, frame) {
                        break;
                    }
                }
            }
            Input::UpstreamFrameError { upstream, error } => {
                if self.upstream(upstream).is_some() {
                    let reply = Reply::new(reply::FRAME_ERROR, error);
                    self.send_upstream(now, upstream, encode::close(0, &Close::from(&reply)));
                    self.upstream_failed(now, upstream, reply);
                }
            }
            Input::UpstreamClosed { upstream, reason } => {
                self.upstream_socket_closed(now, upstream, reason)
            }
            Input::Timeout => self.fire_timers(now),
            Input::Drain { deadline } => self.start_drain(now, deadline),
            Input::CloseClients { reply } => {
                let ids: Vec<ClientId> = self.clients.iter().map(|(_, c)| c.id).collect();
                for id in ids {
                    self.close_client(now, id, reply.clone());
                }
            }
            Input::Reconfigure(config) => self.reconfigure(now, *config),
            Input::CloseClient { client, reply } => self.close_client(now, client, reply),
            Input::Pause => self.pause(),
            Input::Resume => self.resume(now),
            Input::Redial => self.redial(now),
            Input::Detach => self.detach(now),
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

    // ----- shared helpers -------------------------------------------------------------

    fn gen(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        self.next_gen
    }

    fn event(&mut self, e: HubEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn client(&self, id: ClientId) -> Option<&client::Client> {
        self.clients.get(id.index()).filter(|c| c.id == id)
    }

    fn client_mut(&mut self, id: ClientId) -> Option<&mut client::Client> {
        self.clients.get_mut(id.index()).filter(|c| c.id == id)
    }

    fn upstream(&self, id: UpstreamId) -> Option<&upstream::Upstream> {
        self.upstreams.get(id.index()).filter(|u| u.id == id)
    }

    fn upstream_mut(&mut self, id: UpstreamId) -> Option<&mut upstream::Upstream> {
        self.upstreams.get_mut(id.index()).filter(|u| u.id == id)
    }

    fn slot(&self, r: UpRef) -> Slot {
        self.upstream(r.up)
            .map_or(Slot::Free, |u| u.table.get(r.ch))
    }

    fn set_slot(&mut self, now: Instant, r: UpRef, slot: Slot) {
        if let Some(u) = self.upstream_mut(r.up) {
            u.table.set(r.ch, slot);
            if u.table.in_use() == 0 {
                u.idle_since = Some(now);
                self.schedule_upstream(r.up);
            }
        }
        if slot == Slot::Free && self.pending_deletes.iter().any(|(u, _)| *u == r.up) {
            let (due, rest) = std::mem::take(&mut self.pending_deletes)
                .into_iter()
                .partition(|(u, _)| *u == r.up);
            self.pending_deletes = rest;
            self.delete_exclusive_queues(now, due);
        }
    }

    fn is_pooled(&self, r: UpRef) -> bool {
        matches!(self.slot(r), Slot::Pooled { .. })
    }

    /// Queues bytes for a client and counts them as liveness towards it.
    fn send_client(&mut self, now: Instant, id: ClientId, data: Bytes) {
        if let Some(c) = self.client_mut(id) {
            c.liveness.sent(now);
            c.counters.frames_out += 1;
            c.counters.bytes_out += data.len() as u64;
            self.stats.frames_to_clients += 1;
            self.stats.bytes_to_clients += data.len() as u64;
            self.out.push_back(Output::ToClient { client: id, data });
        }
    }

    /// Queues bytes for an upstream and counts them as liveness towards it.
    fn send_upstream(&mut self, now: Instant, id: UpstreamId, data: Bytes) {
        if let Some(u) = self.upstream_mut(id) {
            u.liveness_mut().sent(now);
            self.stats.frames_to_upstreams += 1;
            self.stats.bytes_to_upstreams += data.len() as u64;
            self.out
                .push_back(Output::ToUpstream { upstream: id, data });
        }
    }

    // ----- timers ---------------------------------------------------------------------

    fn schedule_client(&mut self, id: ClientId) {
        let Some(c) = self.clients.get(id.index()).filter(|c| c.id == id) else {
            return;
        };
        let want = c.deadline();
        let old = c.timer_at;
        let at = self.agenda.reschedule(Timer::Client(id), old, want);
        if let Some(c) = self.client_mut(id) {
            c.timer_at = at;
        }
    }

    fn schedule_upstream(&mut self, id: UpstreamId) {
        let Some(u) = self.upstreams.get(id.index()).filter(|u| u.id == id) else {
            return;
        };
        let want = self.upstream_deadline(u);
        let old = u.timer_at;
        let at = self.agenda.reschedule(Timer::Upstream(id), old, want);
        if let Some(u) = self.upstream_mut(id) {
            u.timer_at = at;
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.agenda.pop_due(now) {
            match timer {
                Timer::Client(id) => {
                    if let Some(c) = self.client_mut(id) {
                        c.timer_at = None;
                        self.client_timer(now, id);
                    }
                }
                Timer::Upstream(id) => {
                    if let Some(u) = self.upstream_mut(id) {
                        u.timer_at = None;
                        self.upstream_timer(now, id);
                    }
                }
                Timer::Reconnect => self.reconnect_timer(now),
                Timer::PoolIdle => {
                    self.pool_timer = None;
                    self.expire_pool(now);
                }
                Timer::Drain => self.drain_deadline(now),
                Timer::Pause => self.pause_timeout(now),
            }
        }
    }

    fn client_timer(&mut self, now: Instant, id: ClientId) {
        let Some(c) = self.client(id) else { return };
        if let client::Phase::Closing { until } = c.phase {
            if now >= until {
                self.remove_client(id);
                return;
            }
        }
        match c.liveness.check(now) {
            Beat::Dead => {
                self.stats.heartbeat_misses += 1;
                self.event(HubEvent::HeartbeatMissed {
                    peer: Peer::Client(id),
                });
                let reply = Reply::new(
                    reply::CONNECTION_FORCED,
                    "missed heartbeats from client, timeout",
                );
                self.close_client(now, id, reply);
            }
            Beat::Send => self.send_client(now, id, Bytes::from_static(HEARTBEAT)),
            Beat::Idle => {}
        }
        self.schedule_client(id);
    }

    // ----- reload ---------------------------------------------------------------------

    /// Takes new settings: a changed node list starts the node memory afresh; the pool is
    /// trimmed to its new size; everything else applies as it is next read.
    fn reconfigure(&mut self, now: Instant, config: HubConfig) {
        if config.nodes != self.config.nodes {
            self.nodes = Nodes::new(config.nodes);
        }
        self.config = config;
        self.fit_pool(now);
    }

    // ----- reconnect ------------------------------------------------------------------

    /// Opens a new upstream connection.
    fn dial(&mut self, now: Instant) -> UpstreamId {
        let nodes = match self.config.placement {
            Placement::Fill => self.nodes.order(),
            Placement::Spread => self
                .nodes
                .spread_order(self.upstreams.iter().map(|(_, u)| u.node.unwrap_or(u.aim))),
        };
        self.dial_nodes(now, nodes, "")
    }

    /// Opens a new upstream connection that tries `nodes` in this order; `purpose`, if not
    /// empty, ends its connection name, for the broker's operators.
    fn dial_nodes(&mut self, now: Instant, nodes: NodeOrder, purpose: &str) -> UpstreamId {
        let id = UpstreamId {
            idx: self.upstreams.vacant_key() as u32,
            gen: self.gen(),
        };
        let c = &self.credentials;
        let name = format!("{} {}@{} {id}", self.config.upstream_name, c.user, c.vhost);
        let name = if purpose.is_empty() {
            name
        } else {
            format!("{name} ({purpose})")
        };
        let login = Login::new(
            now,
            &self.config,
            &c.user,
            &c.password,
            Some(&c.vhost),
            name,
        );
        let frame_max = login.frame_max();
        let mut u = upstream::Upstream::new(id, now, login);
        u.aim = nodes.first().copied().unwrap_or(0);
        self.upstreams.insert(u);
        self.out.push_back(Output::Dial {
            upstream: id,
            nodes,
            frame_max,
        });
        self.schedule_upstream(id);
        id
    }

    /// Decides what follows a failed dial or a lost upstream: redial after a backoff when
    /// clients still need the broker, and also after a network failure with nobody left, so
    /// that new clients are refused at once until the backoff ends instead of each causing a
    /// dial (B11). Refused logins are remembered by the runtime's negative cache instead.
    fn after_upstream_gone(&mut self, now: Instant, failed_dial: Option<Reply>) {
        let login_refused = failed_dial.as_ref().is_some_and(Reply::refuses_login);
        let failed = failed_dial.is_some();
        if let Some(reply) = failed_dial {
            self.reconnect.failures = self.reconnect.failures.saturating_add(1);
            self.reconnect.last_error = Some(reply);
        }
        let have_upstream = self
            .upstreams
            .iter()
            .any(|(_, u)| u.is_open() || u.is_connecting());
        if have_upstream || self.drain.is_some() || self.reconnect.at.is_some() {
            return;
        }
        if self.detached.is_some() && !self.clients_need_broker() {
            return;
        }
        let network_failure = failed && !login_refused;
        if !self.clients_need_broker() && !network_failure {
            return;
        }
        let delay = self
            .config
            .backoff
            .delay(self.reconnect.failures.saturating_sub(1), &mut self.rng);
        let at = now + delay;
        self.reconnect.at = self.agenda.reschedule(Timer::Reconnect, None, Some(at));
        self.event(HubEvent::ReconnectScheduled {
            at,
            failures: self.reconnect.failures,
        });
    }

    /// Whether any client is admitted or waiting for admission (closing ones do not count).
    fn clients_need_broker(&self) -> bool {
        self.clients
            .iter()
            .any(|(_, c)| !matches!(c.phase, client::Phase::Closing { .. }))
    }

    fn reconnect_timer(&mut self, now: Instant) {
        self.reconnect.at = None;
        if !self.waiting_opens.is_empty() {
            // Channels that found every open upstream full waited for this dial (`grow`).
            return self.grow(now);
        }
        let needed = self.clients_need_broker() && self.drain.is_none();
        let have_upstream = self
            .upstreams
            .iter()
            .any(|(_, u)| u.is_open() || u.is_connecting());
        if needed && !have_upstream {
            self.dial(now);
        }
    }

    // ----- drain ----------------------------------------------------------------------

    fn start_drain(&mut self, now: Instant, deadline: Instant) {
        if self.drain.is_some() {
            return;
        }
        self.drain = Some(deadline);
        self.drain_started = Some(now);
        self.agenda.reschedule(Timer::Drain, None, Some(deadline));
        if let Some(at) = self.reconnect.at.take() {
            self.agenda.reschedule(Timer::Reconnect, Some(at), None);
        }
        self.expire_pool_all(now);
        let ids: Vec<UpstreamId> = self.upstreams.iter().map(|(_, u)| u.id).collect();
        for id in ids {
            self.schedule_upstream(id);
        }
        // Clients still waiting for admission cannot finish anything: refuse them now.
        let waiting: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase == client::Phase::AwaitingUpstream)
            .map(|(_, c)| c.id)
            .collect();
        for id in waiting {
            self.refuse_client(
                now,
                id,
                Reply::new(reply::CONNECTION_FORCED, "warren is shutting down"),
            );
        }
        self.refuse_held(
            now,
            &Reply::new(reply::CONNECTION_FORCED, "warren is shutting down"),
        );
    }

    fn drain_deadline(&mut self, now: Instant) {
        let ids: Vec<ClientId> = self.clients.iter().map(|(_, c)| c.id).collect();
        for id in ids {
            self.close_client(
                now,
                id,
                Reply::new(reply::CONNECTION_FORCED, "warren is shutting down"),
            );
        }
        let ups: Vec<UpstreamId> = self.upstreams.iter().map(|(_, u)| u.id).collect();
        for id in ups {
            self.schedule_upstream(id);
        }
    }

    /// Whether `id` is the one upstream kept open for a hub that still has clients. Draining,
    /// clients the hub is closing do not count: they need no broker to say `close-ok`, and
    /// keeping the upstream for them would start its close one close timeout after theirs,
    /// past the drain's bound. (Checked while draining only: this runs on every upstream
    /// reschedule, and outside a drain nothing waits on it.)
    fn keeps_last_upstream(&self, id: UpstreamId) -> bool {
        let closing = |c: &client::Client| matches!(c.phase, client::Phase::Closing { .. });
        let all_closing = || self.clients.iter().all(|(_, c)| closing(c));
        if self.clients.is_empty() || (self.drain.is_some() && all_closing()) {
            return false;
        }
        // The oldest open upstream is the keeper (not one retired by a re-dial).
        self.upstreams
            .iter()
            .filter(|(_, u)| u.is_open() && u.retiring.is_none())
            .map(|(_, u)| u.id)
            .min_by_key(|u| u.gen)
            == Some(id)
    }
}
