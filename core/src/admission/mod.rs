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
//! Like a [`Hub`](crate::hub::Hub): call [`Admission::accept`] or [`Admission::handle`], drain
//! [`Admission::poll_output`] to `None`, then read [`Admission::poll_timeout`]. The driver
//! carries out the outputs: bytes to clients and to the broker connections admission owns
//! (*links*: proofs and the event feed), new hubs to run, clients and links to hand to a hub.
//! A hub tells admission when it has nothing left to do ([`Input::HubIdle`]); admission says
//! when it may stop ([`Output::StopHub`]), so that no client is ever handed to a hub that is
//! going away.
//!
//! # Where things are
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Admission`] itself, its entry points ([`Admission::accept`], [`Admission::handle`], `poll_*`) and the timer dispatch |
//! | `ids.rs` | [`ConnId`], [`LinkId`], [`HubId`] |
//! | `config.rs` | [`AdmissionConfig`] |
//! | `messages.rs` | [`Input`], [`Output`], [`AdmissionEvent`], [`AdmissionStats`], [`Refusal`] |
//! | `clients.rs` | the clients in their handshake: login, `Open`, join, deadlines |
//! | `proofs.rs` | the broker logins that prove an account, and the links they run on |
//! | `hubs.rs` | the hub registry and which hub a new client joins |
//! | `refusal.rs` | refusing a client: the limits and the silent-refusal rule ([`SILENT_CLOSE_DELAY`]) |
//! | `control.rs` | pause, resume and detach; reload; drain |
//! | `revocation.rs` | the event feed's link and what revocations do |
//! | `events.rs` | the event feed's parser ([`events::Feed`]) |
//! | `cache.rs` | the credential cache |

mod cache;
mod clients;
mod config;
mod control;
pub mod events;
mod hubs;
mod ids;
mod messages;
mod proofs;
mod refusal;
mod revocation;

pub use config::AdmissionConfig;
pub use hubs::HubEntry;
pub use ids::{ConnId, HubId, LinkId};
pub use messages::{AdmissionEvent, AdmissionStats, Input, Output, Refusal};
pub use refusal::SILENT_CLOSE_DELAY;

use crate::agenda::Agenda;
use crate::credentials::Credentials;
use crate::handshake::ClientHandshake;
use crate::nodes::Nodes;
use crate::reply::{self, Reply};
use bytes::BytesMut;
use cache::CredentialCache;
use clients::Conn;
use hubs::{HubRecord, Shards};
use proofs::Link;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use refusal::shutting_down;
use slab::Slab;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

/// What a client in its handshake waits for (here, as [`Timer`], because every part of
/// admission reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Its own bytes.
    Input,
    /// Refused without a close: nothing more is read, and the socket is reset at this time.
    Reset(Instant),
    /// The verdict of a proof on its login, awaited since the given time.
    Login(LinkId, Instant),
    /// A proof opening its vhost.
    Open(LinkId),
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
            Input::ClientData { conn, data } => self.client_data(now, conn, data),
            Input::ClientClosed { conn } => self.client_gone(conn),
            Input::LinkConnected { link, node } => self.link_connected(now, link, node),
            Input::LinkFrames { link, frames } => self.link_frames(now, link, frames),
            Input::LinkFrameError { link, error } => {
                let reply = Reply::new(reply::FRAME_ERROR, error);
                self.link_failed(now, link, reply);
            }
            Input::LinkClosed { link, reason } => self.link_closed(now, link, &reason),
            Input::HubIdle { hub, handoffs } => self.hub_idle(hub, handoffs),
            Input::HubRefused { hub, reply } => self.hub_refused(now, hub, reply),
            Input::Timeout => self.fire_timers(now),
            Input::Drain { deadline } => self.drain(now, deadline),
            Input::Reconfigure(config) => self.reconfigure(*config),
            Input::PauseVhost { vhost } => self.pause_vhost(vhost),
            Input::ResumeVhost { vhost } => self.resume_vhost(vhost),
            Input::DetachHub { hub } => self.detach_hub(hub),
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

    fn event(&mut self, e: AdmissionEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.agenda.pop_due(now) {
            match timer {
                Timer::Conn(id) => self.conn_timer(now, id),
                Timer::Link(id) => self.link_timer(now, id),
                Timer::Unreachable => self.unreachable = None,
                Timer::FeedRedial => {
                    self.feed_redial = None;
                    self.dial_feed(now);
                }
            }
        }
    }
}
