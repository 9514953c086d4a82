//! Layer 1: the pure-core world. The real [`Admission`] and [`Hub`](warren_core::hub::Hub)s of
//! warren-core, a fake broker and scripted fake clients, connected by simulated links, stepped
//! in virtual time. No async, no threads, no clock: one `Instant` is read per world as its
//! epoch and everything else is an offset from it.
//!
//! # Stepping
//!
//! Each step (1) jumps `now` to the earliest of: a scheduled world event (bytes arriving on a
//! link, a dial completing, a fault starting or healing, a client connecting), a hub's
//! `poll_timeout`, admission's, the broker's or a client's; (2) handles everything due at
//! that instant in a fixed order — world events in schedule order, then hub, admission,
//! broker and client timers in id order; (3) after every mutation of a machine drains all of
//! its outputs and routes them onto links (which deliver after their latency). Nothing is
//! ever iterated out of a hash map, so a seed replays byte for byte.
//!
//! # What stands in for the runtime
//!
//! The world plays warren's runtime: it carries admission's outputs out (handshake bytes,
//! broker logins it dials, hubs it starts, clients and logins it hands to them), splits bytes
//! into frames with the negotiated frame_max, reports a client whose queued output passes the
//! bound as slow, and closes sockets after flushing. Every decision — who is admitted, with
//! which reply — is admission's, as in `runtime/src/gate.rs`.
//!
//! # Layout
//!
//! This file holds the world itself: its state, the stepping loop, the events, and the few
//! calls every part makes (queueing bytes on a link, handing an input to a hub or to
//! admission). The rest is split by what it plays: `net` is the links, `clients` the client
//! sockets and the slow-client rule, `gate` (admission, as the runtime's `gate.rs`) and
//! `hubs` carry warren's machines' outputs out, `upstreams` the broker connections and the
//! broker, `faults` the fault plan, `checks` the leak checks and `report` the final checks
//! and the report; `slots` is what the world keeps about each client, broker connection and
//! hub.

use crate::broker::{Broker, ConnId};
use crate::check::{Invariant, Observer};
use crate::client::{Board, FakeClient};
use crate::scenario::Scenario;
use crate::slow::{Pacer, SlowDriver};
use crate::trace::{stamp, Trace};
use net::{Dir, Item, LinkKind, Net};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use slots::{BrokerState, ClientSlot, HubSlot, ProxyClient, UpSlot};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use warren_core::admission::{self, Admission, AdmissionConfig, LinkId};
use warren_core::credentials::{Credentials, Secret};
use warren_core::hub::slow::SlowRule;
use warren_core::hub::Input;
use warren_core::method::ids;

mod checks;
mod clients;
mod faults;
mod gate;
mod hubs;
mod net;
mod report;
mod slots;
mod upstreams;

pub use report::{AdmissionTamper, Report, RunOptions, Tamper};

#[derive(Debug, Clone)]
enum Ev {
    Connect(u32),
    Deliver(u32, Dir),
    Dial(u32),
    FaultStart(usize),
    FaultEnd(usize),
    Break,
    /// The leak checks after every client left; retried until the given deadline.
    Checkpoint(Instant),
    /// A paced client reads its next bytes.
    PacedRead(u32),
    /// The slow-client rule looks at a client again.
    SlowCheck(u32),
}

/// The world. See the module documentation.
pub struct World {
    sc: Scenario,
    epoch: Instant,
    now: Instant,
    rng: ChaCha8Rng,
    events: BTreeMap<(Instant, u64), Ev>,
    next_ev: u64,
    /// The links, with the bytes in flight on them.
    net: Net,
    clients: Vec<ClientSlot>,
    ups: BTreeMap<u32, UpSlot>,
    next_up: u32,
    hubs: Vec<HubSlot>,
    admission: Admission,
    /// Clients in their handshake, by admission's id.
    handshakes: BTreeMap<admission::ConnId, u32>,
    /// Admission's broker connections (their upstream slot), by its id.
    adm_links: BTreeMap<LinkId, u32>,
    draining: Option<Instant>,
    broker: Broker,
    broker_state: BrokerState,
    conn_to_up: BTreeMap<ConnId, u32>,
    partitioned: bool,
    held_until: Option<Instant>,
    board: Board,
    trace: Trace,
    tamper: Option<Tamper>,
    tamper_admission: Option<AdmissionTamper>,
    /// Events of a password change on their way to warren's feed: (link, when they arrive).
    pending_events: Vec<(u32, Instant)>,
    pending: Vec<(u32, Input)>,
    slow: SlowDriver,
    obs: Observer,
    checkpoint_done: bool,
    checkpoint_scheduled: bool,
    leak_passed: std::collections::BTreeSet<String>,
    coverage: BTreeMap<&'static str, u64>,
}

/// Runs a scenario to the end and checks every invariant.
#[must_use]
pub fn run(sc: Scenario, opts: RunOptions) -> Report {
    let mut w = World::new(sc, opts);
    w.run_to_end();
    w.finish()
}

impl World {
    /// Builds the world at virtual time zero.
    #[must_use]
    pub fn new(sc: Scenario, opts: RunOptions) -> World {
        // The one clock read: an arbitrary epoch every other instant is relative to.
        #[allow(clippy::disallowed_methods)]
        let epoch = Instant::now();
        let mut clients: Vec<_> = sc.clients.clone();
        clients.sort_by_key(|c| c.start);
        let board = Board::new(sc.board.0, sc.board.1);
        let mut w = World {
            rng: ChaCha8Rng::seed_from_u64(sc.seed ^ 0x5157_5741_5252_454e),
            epoch,
            now: epoch,
            events: BTreeMap::new(),
            next_ev: 0,
            net: Net::default(),
            clients: Vec::new(),
            ups: BTreeMap::new(),
            next_up: 0,
            hubs: Vec::new(),
            admission: Admission::new(epoch, admission_config(&sc), sc.seed),
            handshakes: BTreeMap::new(),
            adm_links: BTreeMap::new(),
            draining: None,
            broker: Broker::new(sc.broker.clone()),
            broker_state: BrokerState::Up,
            conn_to_up: BTreeMap::new(),
            partitioned: false,
            held_until: None,
            board,
            trace: Trace::new(epoch, opts.trace),
            tamper: opts.tamper,
            tamper_admission: opts.tamper_admission,
            pending_events: Vec::new(),
            pending: Vec::new(),
            slow: SlowDriver::new(slow_rule(&sc), opts.slow_policy),
            obs: Observer::new(epoch, &sc),
            checkpoint_done: false,
            checkpoint_scheduled: false,
            leak_passed: std::collections::BTreeSet::new(),
            coverage: BTreeMap::new(),
            sc,
        };
        for (i, spec) in clients.into_iter().enumerate() {
            let id = i as u32 + 1;
            let at = epoch + spec.start;
            let pacer = spec.read_pace.map(Pacer::new);
            w.clients.push(ClientSlot {
                client: FakeClient::new(id, spec, at),
                link: None,
                proxy: ProxyClient::Pending,
                in_flight: 0,
                sent: 0,
                slow_reported: false,
                pacer,
                slow_check_at: None,
            });
            w.schedule(at, Ev::Connect(id));
        }
        for (i, sf) in w.sc.plan.faults.clone().into_iter().enumerate() {
            if sf.fault.is_client() {
                continue;
            }
            w.schedule(epoch + sf.at, Ev::FaultStart(i));
            if !sf.fault.duration().is_zero() {
                w.schedule(epoch + sf.at + sf.fault.duration(), Ev::FaultEnd(i));
            }
        }
        if w.trace.enabled() {
            let plan = w.sc.plan.to_string();
            let mode = if w.sc.net.events { " (event mode)" } else { "" };
            w.line(format!("seed {}{mode} plan: {plan}", w.sc.seed));
        }
        // In event mode admission dials its event feed at once.
        w.admission_outputs();
        w
    }

    fn count(&mut self, what: &'static str) {
        *self.coverage.entry(what).or_default() += 1;
    }

    fn line(&mut self, s: impl std::fmt::Display) {
        self.trace.line(self.now, s);
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.next_ev += 1;
        self.events.insert((at, self.next_ev), ev);
    }

    fn elapsed(&self) -> Duration {
        self.now.duration_since(self.epoch)
    }

    // ----- the loop ---------------------------------------------------------------------

    /// Runs until everything is quiet or the scenario's limit.
    pub fn run_to_end(&mut self) {
        let limit = self.epoch + self.sc.limit;
        let mut same_instant = 0u32;
        while let Some(next) = self.next_time() {
            if next > limit {
                self.now = limit;
                break;
            }
            if next <= self.now {
                same_instant += 1;
                if same_instant > 100_000 {
                    let what = format!("no progress at {}", stamp(self.elapsed()));
                    self.obs.violation(self.now, Invariant::Hang, what);
                    break;
                }
            } else {
                same_instant = 0;
            }
            self.now = self.now.max(next);
            self.step();
            if self.quiet() {
                break;
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let mut t = self.events.keys().next().map(|(at, _)| *at);
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for h in &self.hubs {
            consider(h.hub.poll_timeout());
        }
        consider(self.admission.poll_timeout());
        for c in &self.clients {
            if c.link.is_some() {
                consider(c.client.poll_timeout());
            }
        }
        if self.broker_state == BrokerState::Up {
            consider(self.broker.poll_timeout());
        }
        t
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some((&(at, seq), _)) = self.events.iter().next() {
            if at > now {
                break;
            }
            let ev = self.events.remove(&(at, seq)).expect("present");
            self.event(ev);
        }
        for i in 0..self.hubs.len() {
            if self.hubs[i].hub.poll_timeout().is_some_and(|t| t <= now) {
                let hid = self.hubs[i].hid;
                self.hub_input(hid, Input::Timeout);
            }
        }
        if self.admission.poll_timeout().is_some_and(|t| t <= now) {
            self.admission_input(admission::Input::Timeout);
        }
        if self.broker_state == BrokerState::Up
            && self.broker.poll_timeout().is_some_and(|t| t <= now)
        {
            self.broker.handle_timeout(now);
            self.broker_outputs();
        }
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            if c.link.is_some() && c.client.poll_timeout().is_some_and(|t| t <= now) {
                let board = &mut self.board;
                self.clients[i].client.handle_timeout(now, board);
                self.client_outputs(i as u32 + 1);
                // A stall's end reads what piled up.
                if self.clients[i].slow_check_at.is_some() {
                    self.watch_client(i as u32 + 1, false);
                }
            }
        }
        self.retire_hubs();
        self.maybe_checkpoint();
    }

    fn all_clients_done(&self) -> bool {
        self.clients.iter().all(|c| c.client.is_done())
    }

    fn faults_healed(&self) -> bool {
        self.elapsed() >= self.sc.plan.healed_by()
    }

    fn maybe_checkpoint(&mut self) {
        if !self.checkpoint_scheduled && self.all_clients_done() && self.faults_healed() {
            self.checkpoint_scheduled = true;
            let settle = self.sc.hub.close_timeout + Duration::from_millis(500);
            let at = self.now + settle;
            self.schedule(at, Ev::Checkpoint(at + settle));
        }
    }

    /// Everything is over: every hub gone, and no broker connection or link of warren's left
    /// but its event feed (which stays for as long as warren runs).
    fn quiet(&self) -> bool {
        if !self.checkpoint_done || !self.hubs.is_empty() {
            return false;
        }
        let feed = self.feed_uids();
        (self.stray_broker_conns().is_empty() || self.broker_state != BrokerState::Up)
            && self.net.kinds().all(|kind| match kind {
                LinkKind::Upstream(uid) => feed.contains(&uid),
                LinkKind::Client(_) => false,
            })
    }

    // ----- events -----------------------------------------------------------------------

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Connect(cid) => self.connect(cid),
            Ev::Deliver(link, dir) => self.deliver(link, dir),
            Ev::Dial(uid) => self.dial_result(uid),
            Ev::FaultStart(i) => self.fault_start(i),
            Ev::FaultEnd(i) => self.fault_end(i),
            Ev::Break => self.break_random_link(),
            Ev::Checkpoint(until) => self.checkpoint(until),
            Ev::PacedRead(cid) => self.paced_read(cid),
            Ev::SlowCheck(cid) => {
                let idx = cid as usize - 1;
                if self.clients[idx]
                    .slow_check_at
                    .is_some_and(|t| t <= self.now)
                {
                    self.clients[idx].slow_check_at = None;
                    self.watch_client(cid, false);
                }
            }
        }
    }

    fn connect(&mut self, cid: u32) {
        let now = self.now;
        let idx = cid as usize - 1;
        if self.draining.is_some() {
            self.line(format!("c{cid} connect refused (draining)"));
            self.clients[idx].client.refused(now);
            return;
        }
        let kind = self.clients[idx].client.spec.kind;
        self.line(format!("c{cid} connects ({kind})"));
        let link = self
            .net
            .add(LinkKind::Client(cid), self.sc.net.client_latency);
        let connected = 1 + self
            .clients
            .iter()
            .filter(|c| {
                matches!(
                    c.proxy,
                    ProxyClient::Handshake { .. } | ProxyClient::Joined { .. }
                )
            })
            .count();
        let conn = self.admission.accept(now, connected);
        self.handshakes.insert(conn, cid);
        let slot = &mut self.clients[idx];
        slot.link = Some(link);
        slot.proxy = ProxyClient::Handshake { conn };
        self.admission_outputs();
        self.client_outputs(cid);
    }

    // ----- what every part uses -------------------------------------------------------

    /// Queues an item on a link; it arrives after the link's latency, in order. Bytes to or
    /// from the broker vanish while a partition (or, towards it, a silent broker) cuts it off.
    fn push(&mut self, link: u32, dir: Dir, item: Item) {
        let silent_broker = matches!(self.broker_state, BrokerState::Silent { .. });
        let cut = self.partitioned || (silent_broker && dir == Dir::FromProxy);
        if let Some(at) = self.net.push(self.now, link, dir, item, cut) {
            self.schedule(at, Ev::Deliver(link, dir));
        }
    }

    /// Breaks a link: both ends see a reset after the latency, in-flight data is lost.
    fn reset_link(&mut self, link: u32) {
        if let Some(at) = self.net.reset(self.now, link) {
            self.schedule(at, Ev::Deliver(link, Dir::ToProxy));
            self.schedule(at, Ev::Deliver(link, Dir::FromProxy));
        }
    }

    /// What arrived on a link goes to whoever reads that end.
    fn deliver(&mut self, link: u32, dir: Dir) {
        let now = self.now;
        let upstream = self.net.is_upstream(link);
        if upstream {
            if let Some(until) = self.held_until {
                if now < until {
                    self.schedule(until, Ev::Deliver(link, dir));
                    return;
                }
            }
        }
        let Some((kind, data, end)) = self.net.take(now, link, dir) else {
            return;
        };
        if self.trace.enabled() && !data.is_empty() {
            let lines = self.net.tap(link, dir, &data);
            let (from, to) = match (kind, dir) {
                (LinkKind::Client(c), Dir::ToProxy) => (format!("c{c}"), "w".to_owned()),
                (LinkKind::Client(c), Dir::FromProxy) => ("w".to_owned(), format!("c{c}")),
                (LinkKind::Upstream(u), Dir::ToProxy) => (format!("u{u}"), "w".to_owned()),
                (LinkKind::Upstream(u), Dir::FromProxy) => ("w".to_owned(), format!("u{u}")),
            };
            for s in lines {
                self.line(format!("{from}→{to} {s}"));
            }
        }
        let data = data.freeze();
        match (kind, dir) {
            (LinkKind::Client(cid), Dir::ToProxy) => {
                if !data.is_empty() {
                    self.proxy_reads_client(cid, &data);
                }
                if let Some(e) = end {
                    self.proxy_sees_client_close(cid, matches!(e, Item::Reset));
                }
            }
            (LinkKind::Client(cid), Dir::FromProxy) => {
                if !data.is_empty() {
                    self.client_reads(cid, &data);
                }
                if let Some(e) = end {
                    self.unpace(cid, matches!(e, Item::Reset));
                    self.client_sees_close(cid, matches!(e, Item::Reset));
                }
            }
            (LinkKind::Upstream(uid), Dir::ToProxy) => {
                if !data.is_empty() {
                    self.event_arrives(link, uid);
                    self.proxy_reads_upstream(uid, &data);
                }
                if let Some(e) = end {
                    self.proxy_sees_upstream_close(uid, matches!(e, Item::Reset));
                }
            }
            (LinkKind::Upstream(uid), Dir::FromProxy) => {
                if !data.is_empty() {
                    self.broker_reads(uid, &data);
                }
                if end.is_some() {
                    self.broker_sees_close(uid);
                }
            }
        }
        self.net.gc(link);
    }

    fn hub_index(&self, hid: u32) -> Option<usize> {
        self.hubs.iter().position(|h| h.hid == hid)
    }

    fn hub_input(&mut self, hid: u32, input: Input) {
        let Some(i) = self.hub_index(hid) else { return };
        let now = self.now;
        self.hubs[i].hub.handle(now, input);
        self.hub_outputs(hid);
    }

    fn admission_input(&mut self, input: admission::Input) {
        let now = self.now;
        self.admission.handle(now, input);
        self.admission_outputs();
    }
}

/// The slow-client rule of a scenario, as the runtime builds it from its configuration.
#[must_use]
pub fn slow_rule(sc: &Scenario) -> SlowRule {
    SlowRule::new(
        sc.net.client_queue_limit,
        sc.hub.max_message_size,
        sc.net.slow_client_timeout,
    )
}

/// Admission's settings in a scenario: no client or hub limits (the scenarios do not test
/// them), the scenario's refusal and trust TTLs, and in event mode the event feed as `guest`.
fn admission_config(sc: &Scenario) -> AdmissionConfig {
    AdmissionConfig {
        handshake: sc.handshake,
        hub: sc.hub.clone(),
        max_clients: usize::MAX,
        max_hubs: usize::MAX,
        proxy_protocol: false,
        hubs_per_key: 1,
        refusal_ttl: sc.net.auth_cache_ttl,
        credentials_ttl: sc.net.credentials_ttl,
        events: sc.net.events.then(|| credentials("guest", "guest", "/")),
    }
}

/// Builds the credentials a spec logs in with (for tests).
#[must_use]
pub fn credentials(user: &str, password: &str, vhost: &str) -> Credentials {
    Credentials {
        user: user.into(),
        password: Secret::new(password),
        vhost: vhost.into(),
    }
}

/// Whether `data` starts with a whole method frame of the given id (used by tampering).
#[must_use]
pub fn is_method(data: &[u8], id: warren_core::method::MethodId) -> bool {
    data.len() >= 12
        && data[0] == 1
        && u16::from_be_bytes([data[7], data[8]]) == id.class
        && u16::from_be_bytes([data[9], data[10]]) == id.method
}

/// The method id `basic.deliver`, re-exported for tamper hooks.
pub const BASIC_DELIVER: warren_core::method::MethodId = ids::BASIC_DELIVER;
