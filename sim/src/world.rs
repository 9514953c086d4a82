//! Layer 1: the pure-core world. The real [`Admission`] and [`Hub`]s of warren-core,
//! a fake broker and scripted fake clients, connected by simulated links, stepped in virtual
//! time. No async, no threads, no clock: one `Instant` is read per world as its epoch and
//! everything else is an offset from it.
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

use crate::broker::{Broker, BrokerOutput, ConnId};
use crate::check::{Invariant, Observer, Violation};
use crate::client::{Board, ClientOut, End, FakeClient, Intrusion};
use crate::plan::Fault;
use crate::scenario::Scenario;
use crate::slow::{Pacer, SlowDriver, SlowPolicy, Verdict};
use crate::trace::{stamp, Tap, Trace};
use bytes::{Bytes, BytesMut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smallvec::SmallVec;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use warren_core::admission::{self, Admission, AdmissionConfig, AdmissionEvent, HubId, LinkId};
use warren_core::credentials::{Credentials, Secret};
use warren_core::frame::{Frame, FrameDecoder};
use warren_core::hub::slow::SlowRule;
use warren_core::hub::{ClientId, Hub, HubEvent, Input, Output, Peer, UpstreamId};
use warren_core::method::ids;

/// A hook that sees (and may change or drop) every hub output before the world carries it
/// out. Tests use it to impersonate a buggy proxy and prove the checks notice.
pub type Tamper = Box<dyn FnMut(Instant, &mut Output) -> bool + Send>;

/// The same for admission's outputs (bytes to clients in their handshake and to the broker
/// connections admission owns: login proofs and the event feed).
pub type AdmissionTamper = Box<dyn FnMut(Instant, &mut admission::Output) -> bool + Send>;

/// Options of one run.
#[derive(Default)]
pub struct RunOptions {
    /// Record the readable trace (slower; off for sweeps).
    pub trace: bool,
    /// Optional output tampering (see [`Tamper`]).
    pub tamper: Option<Tamper>,
    /// Optional tampering with admission's outputs (see [`AdmissionTamper`]).
    pub tamper_admission: Option<AdmissionTamper>,
    /// The slow-client rule the world's driver applies (warren's unless a test
    /// impersonates a proxy with the old one).
    pub slow_policy: SlowPolicy,
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Report {
    /// The scenario's seed.
    pub seed: u64,
    /// Every broken invariant, in the order found.
    pub violations: Vec<Violation>,
    /// The trace, if recorded.
    pub trace: String,
    /// Virtual time the run took.
    pub elapsed: Duration,
    /// A one-line summary (clients, messages, faults).
    pub summary: String,
    /// How often notable things happened (upstream lost, channel recycled, ...), to see
    /// what a sweep actually exercised.
    pub coverage: BTreeMap<&'static str, u64>,
}

impl Report {
    /// Whether every invariant held.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Which way bytes travel on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    /// From the client or broker to warren.
    ToProxy,
    /// From warren to the client or broker.
    FromProxy,
}

#[derive(Debug)]
enum Item {
    Data(Bytes),
    Fin,
    Reset,
}

#[derive(Debug, Default)]
struct Pipe {
    items: VecDeque<(Instant, Item)>,
    /// When the last item arrives (links are FIFO).
    last: Option<Instant>,
    tap: Tap,
    /// The sending side closed or the link broke: later writes vanish.
    shut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    Client(u32),
    Upstream(u32),
}

#[derive(Debug)]
struct Link {
    kind: LinkKind,
    latency: Duration,
    to_proxy: Pipe,
    from_proxy: Pipe,
    /// Bytes were lost on it during a partition: it is reset when the partition heals.
    lost: bool,
}

impl Link {
    fn pipe(&mut self, dir: Dir) -> &mut Pipe {
        match dir {
            Dir::ToProxy => &mut self.to_proxy,
            Dir::FromProxy => &mut self.from_proxy,
        }
    }
}

/// The proxy's side of a client connection.
#[derive(Debug)]
enum ProxyClient {
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

struct ClientSlot {
    client: FakeClient,
    link: Option<u32>,
    proxy: ProxyClient,
    /// Bytes warren queued that are neither delivered nor read yet.
    in_flight: usize,
    /// Bytes the hub queued for it in all (with `in_flight`, what its socket took).
    sent: u64,
    slow_reported: bool,
    /// A paced reader's unread bytes (`ClientSpec::read_pace`).
    pacer: Option<Pacer>,
    /// When the slow-client rule looks at it again, if it watches it.
    slow_check_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpState {
    Dialing,
    Connected,
    Gone,
}

/// Who a broker connection of warren's belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// An upstream of a hub.
    Hub { hub: u32, id: UpstreamId },
    /// Admission (a login proof), until a hub adopts it.
    Admission(LinkId),
}

struct UpSlot {
    owner: Owner,
    state: UpState,
    link: Option<u32>,
    conn: Option<ConnId>,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl UpSlot {
    /// A broker connection being dialled; its frames are decoded under the frame_max warren
    /// asks of the broker, as the runtime decodes them.
    fn new(owner: Owner, frame_max: u32) -> Self {
        UpSlot {
            owner,
            state: UpState::Dialing,
            link: None,
            conn: None,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(frame_max),
        }
    }
}

/// What happened to a broker connection, before it is addressed to its owner.
#[allow(clippy::large_enum_variant)] // Short-lived, on the stack, like the inputs it becomes.
enum UpInput {
    Connected,
    Frames(SmallVec<[Frame; 8]>),
    FrameError(warren_core::frame::FrameError),
    Closed(String),
}

struct HubSlot {
    hid: u32,
    id: HubId,
    hub: Hub,
    clients: BTreeMap<ClientId, u32>,
    ups: BTreeMap<UpstreamId, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerState {
    Up,
    Crashed { until: Instant },
    Silent { until: Instant },
}

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
    links: BTreeMap<u32, Link>,
    next_link: u32,
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
            links: BTreeMap::new(),
            next_link: 0,
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
            && self.links.values().all(|l| match l.kind {
                LinkKind::Upstream(uid) => feed.contains(&uid),
                LinkKind::Client(_) => false,
            })
    }

    /// warren's broker connections serving its event feed (the broker's word: they hold the
    /// queue bound to the event exchange) that admission still owns.
    fn feed_conns(&self) -> Vec<ConnId> {
        if self.broker_state != BrokerState::Up {
            return Vec::new();
        }
        self.broker
            .feed_conns()
            .into_iter()
            .filter(|c| {
                self.conn_to_up
                    .get(c)
                    .and_then(|uid| self.ups.get(uid))
                    .is_some_and(|u| matches!(u.owner, Owner::Admission(_)))
            })
            .collect()
    }

    fn feed_uids(&self) -> Vec<u32> {
        self.feed_conns()
            .iter()
            .filter_map(|c| self.conn_to_up.get(c).copied())
            .collect()
    }

    /// Broker connections from warren that should be gone at the end: all of them but one
    /// event feed in event mode.
    fn stray_broker_conns(&self) -> Vec<ConnId> {
        let feed = self.feed_conns();
        let keep = if self.sc.net.events { 1 } else { 0 };
        let mut stray: Vec<ConnId> = self
            .broker
            .connection_ids()
            .into_iter()
            .filter(|c| !feed.contains(c))
            .collect();
        stray.extend(feed.iter().skip(keep));
        stray
    }

    /// Tells admission which hubs have nothing to do; it stops those nothing is on its way to.
    fn retire_hubs(&mut self) {
        let idle: Vec<(HubId, u64)> = self
            .hubs
            .iter()
            .filter(|h| h.hub.is_finished())
            .map(|h| (h.id, h.hub.handoffs()))
            .collect();
        for (hub, handoffs) in idle {
            self.admission_input(admission::Input::HubIdle { hub, handoffs });
        }
    }

    /// Drops a hub admission stopped.
    fn stop_hub(&mut self, hub: HubId) {
        let Some(i) = self.hubs.iter().position(|h| h.id == hub) else {
            return;
        };
        let h = self.hubs.remove(i);
        let st = h.hub.stats();
        *self.coverage.entry("channel opened from pool").or_default() += st.opens_from_pool;
        *self.coverage.entry("channel recycled").or_default() += st.channels_recycled;
        let now = self.now;
        self.obs.hubs_retired(now);
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
        let link = self.new_link(LinkKind::Client(cid), self.sc.net.client_latency);
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

    fn new_link(&mut self, kind: LinkKind, latency: Duration) -> u32 {
        self.next_link += 1;
        self.links.insert(
            self.next_link,
            Link {
                kind,
                latency,
                to_proxy: Pipe::default(),
                from_proxy: Pipe::default(),
                lost: false,
            },
        );
        self.next_link
    }

    fn is_upstream_link(&self, link: u32) -> bool {
        matches!(
            self.links.get(&link).map(|l| l.kind),
            Some(LinkKind::Upstream(_))
        )
    }

    /// Queues an item on a link; it arrives after the link's latency, in order.
    fn push(&mut self, link: u32, dir: Dir, item: Item) {
        let now = self.now;
        let upstream = self.is_upstream_link(link);
        let silent_broker = matches!(self.broker_state, BrokerState::Silent { .. });
        let partitioned = self.partitioned;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if upstream && (partitioned || (silent_broker && dir == Dir::FromProxy)) {
            l.lost = true;
            return;
        }
        let latency = l.latency;
        let pipe = l.pipe(dir);
        if pipe.shut {
            return;
        }
        if matches!(item, Item::Fin | Item::Reset) {
            pipe.shut = true;
        }
        let at = (now + latency).max(pipe.last.unwrap_or(now));
        pipe.last = Some(at);
        pipe.items.push_back((at, item));
        self.schedule(at, Ev::Deliver(link, dir));
    }

    fn deliver(&mut self, link: u32, dir: Dir) {
        let now = self.now;
        let upstream = self.is_upstream_link(link);
        if upstream {
            if let Some(until) = self.held_until {
                if now < until {
                    self.schedule(until, Ev::Deliver(link, dir));
                    return;
                }
            }
        }
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let kind = l.kind;
        let pipe = l.pipe(dir);
        let mut data = BytesMut::new();
        let mut end = None;
        while let Some((at, _)) = pipe.items.front() {
            if *at > now {
                break;
            }
            let (_, item) = pipe.items.pop_front().expect("present");
            match item {
                Item::Data(b) => data.extend_from_slice(&b),
                Item::Fin | Item::Reset => {
                    end = Some(item);
                    pipe.items.clear();
                    break;
                }
            }
        }
        if self.trace.enabled() && !data.is_empty() {
            let l = self.links.get_mut(&link).expect("present");
            let lines = l.pipe(dir).tap.feed(&data);
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
        self.gc_link(link);
    }

    /// Bytes reach warren on `link`: if a password change's event was among them, warren
    /// knows of the change from now on (if it still reads that connection).
    fn event_arrives(&mut self, link: u32, uid: u32) {
        let now = self.now;
        let before = self.pending_events.len();
        self.pending_events
            .retain(|(l, at)| !(*l == link && *at <= now));
        let reading = self.ups.get(&uid).is_some_and(|u| u.state != UpState::Gone);
        if self.pending_events.len() != before && reading {
            self.line(format!("u{uid} brings the event to warren"));
            self.count("password change event delivered");
            self.obs.revocation_delivered(now);
        }
    }

    /// Forgets a link once both directions are shut and empty.
    fn gc_link(&mut self, link: u32) {
        if let Some(l) = self.links.get(&link) {
            let done = |p: &Pipe| p.shut && p.items.is_empty();
            if done(&l.to_proxy) && done(&l.from_proxy) {
                self.links.remove(&link);
            }
        }
    }

    // ----- clients ----------------------------------------------------------------------

    fn client_reads(&mut self, cid: u32, data: &[u8]) {
        let now = self.now;
        let idx = cid as usize - 1;
        if let Some(p) = self.clients[idx].pacer.as_mut() {
            // A paced reader: the bytes wait on its host until it reads them.
            if let Some(at) = p.push(now, data) {
                self.schedule(at, Ev::PacedRead(cid));
            }
            return;
        }
        self.client_takes(cid, data);
    }

    /// The client's application reads `data` from its socket.
    fn client_takes(&mut self, cid: u32, data: &[u8]) {
        let now = self.now;
        let idx = cid as usize - 1;
        let slot = &mut self.clients[idx];
        slot.in_flight = slot.in_flight.saturating_sub(data.len());
        let board = &mut self.board;
        slot.client.handle_bytes(now, data, board);
        self.client_outputs(cid);
        self.watch_client(cid, false);
    }

    /// A paced client's next read.
    fn paced_read(&mut self, cid: u32) {
        let now = self.now;
        let idx = cid as usize - 1;
        let Some(p) = self.clients[idx].pacer.as_mut() else {
            return;
        };
        let (data, next) = p.read(now);
        if let Some(at) = next {
            self.schedule(at, Ev::PacedRead(cid));
        }
        if !data.is_empty() {
            self.client_takes(cid, &data);
        }
    }

    /// The connection of a paced client ends: what it was sent before a close it reads up
    /// now (how fast is no longer warren's business); a reset loses it.
    fn unpace(&mut self, cid: u32, reset: bool) {
        let idx = cid as usize - 1;
        let Some(p) = self.clients[idx].pacer.as_mut() else {
            return;
        };
        if reset {
            p.clear();
            return;
        }
        let rest = p.take_all();
        if !rest.is_empty() {
            self.client_takes(cid, &rest);
        }
    }

    /// Applies the slow-client rule to client `cid` now, as the runtime does after a write
    /// and whenever a client's socket drains. `deferred`: called while the hub's outputs are
    /// carried out, so the report waits until they are.
    fn watch_client(&mut self, cid: u32, deferred: bool) {
        let now = self.now;
        let idx = cid as usize - 1;
        let slot = &self.clients[idx];
        let ProxyClient::Joined { hub, id, .. } = slot.proxy else {
            return;
        };
        if slot.slow_reported {
            return;
        }
        let queued =
            (slot.in_flight + slot.client.unread_bytes()).saturating_sub(self.sc.net.socket_buffer);
        let written = slot.sent.saturating_sub(queued as u64);
        self.obs.client_queue(now, cid, queued, written);
        match self.slow.check(now, cid, queued, written) {
            Verdict::Fine => {}
            Verdict::Recheck(at) => {
                let slot = &mut self.clients[idx];
                if slot.slow_check_at.is_none_or(|t| t > at || t <= now) {
                    slot.slow_check_at = Some(at);
                    self.schedule(at, Ev::SlowCheck(cid));
                }
            }
            Verdict::Slow => {
                self.clients[idx].slow_reported = true;
                self.obs.slow_reported(now, cid, queued);
                self.count("client reported slow");
                self.line(format!("w reports c{cid} slow ({queued} bytes queued)"));
                if deferred {
                    self.pending.push((hub, Input::ClientSlow { client: id }));
                } else {
                    self.hub_input(hub, Input::ClientSlow { client: id });
                }
            }
        }
    }

    /// warren let go of client `cid`: the slow-client rule forgets it.
    fn unwatch_client(&mut self, cid: u32) {
        let now = self.now;
        self.slow.forget(cid);
        self.obs.client_gone(now, cid);
    }

    fn client_sees_close(&mut self, cid: u32, broken: bool) {
        let now = self.now;
        let idx = cid as usize - 1;
        let slot = &mut self.clients[idx];
        slot.in_flight = 0;
        if !slot.client.is_done() {
            slot.client.handle_closed(now, broken);
            let end = slot.client.end.clone();
            if let Some((_, e)) = end {
                self.line(format!("c{cid} {e}"));
            }
        }
        // The client's side of the socket is closed too.
        if let Some(link) = self.clients[idx].link {
            self.push(link, Dir::ToProxy, Item::Fin);
        }
        self.client_outputs(cid);
    }

    fn client_outputs(&mut self, cid: u32) {
        let idx = cid as usize - 1;
        let was_done = self.clients[idx].client.is_done();
        while let Some(o) = self.clients[idx].client.poll_output() {
            let Some(link) = self.clients[idx].link else {
                continue;
            };
            match o {
                ClientOut::Send(b) => self.push(link, Dir::ToProxy, Item::Data(b)),
                ClientOut::Close => self.push(link, Dir::ToProxy, Item::Fin),
            }
        }
        let _ = was_done;
        let slot = &self.clients[idx];
        if let Some((at, end)) = slot.client.end.clone() {
            if at == self.now && self.obs.note_client_end(cid) && self.trace.enabled() {
                self.line(format!("c{cid} ends: {end}"));
            }
        }
    }

    fn proxy_reads_client(&mut self, cid: u32, data: &[u8]) {
        let idx = cid as usize - 1;
        match &mut self.clients[idx].proxy {
            ProxyClient::Handshake { conn } => {
                let (conn, data) = (*conn, Bytes::copy_from_slice(data));
                self.admission_input(admission::Input::ClientData { conn, data });
            }
            ProxyClient::Joined { buf, .. } => {
                buf.extend_from_slice(data);
                self.feed_hub_from_client(cid);
            }
            ProxyClient::Pending | ProxyClient::Gone => {}
        }
    }

    // ----- admission --------------------------------------------------------------------

    fn admission_input(&mut self, input: admission::Input) {
        let now = self.now;
        self.admission.handle(now, input);
        self.admission_outputs();
    }

    /// Carries out admission's outputs, as the runtime's admission task does.
    fn admission_outputs(&mut self) {
        while let Some(mut out) = self.admission.poll_output() {
            if let Some(t) = self.tamper_admission.as_mut() {
                let before = match &out {
                    admission::Output::ToLink { data, .. }
                    | admission::Output::ToClient { data, .. } => Some(data.clone()),
                    _ => None,
                };
                if !t(self.now, &mut out) {
                    self.line(format!("TAMPER dropped admission output {before:?}"));
                    continue;
                }
                let after = match &out {
                    admission::Output::ToLink { data, .. }
                    | admission::Output::ToClient { data, .. } => Some(data.clone()),
                    _ => None,
                };
                if before != after {
                    self.line(format!("TAMPER changed {before:?} into {after:?}"));
                }
            }
            self.admission_output(out);
        }
    }

    fn admission_output(&mut self, out: admission::Output) {
        use admission::Output as A;
        let now = self.now;
        match out {
            A::ToClient { conn, data } => {
                let Some(&cid) = self.handshakes.get(&conn) else {
                    return;
                };
                if let Some(link) = self.clients[cid as usize - 1].link {
                    self.push(link, Dir::FromProxy, Item::Data(data));
                }
            }
            A::CloseClient { conn, reset } => {
                let Some(cid) = self.handshakes.remove(&conn) else {
                    return;
                };
                let idx = cid as usize - 1;
                self.clients[idx].proxy = ProxyClient::Gone;
                if let Some(link) = self.clients[idx].link {
                    if reset {
                        self.line(format!("w resets c{cid} (handshake)"));
                        self.reset_link(link);
                    } else {
                        self.line(format!("w closes c{cid} (handshake)"));
                        self.push(link, Dir::FromProxy, Item::Fin);
                    }
                }
                self.obs.handshake_closed(cid);
            }
            A::Dial { link, .. } => {
                self.next_up += 1;
                let uid = self.next_up;
                self.adm_links.insert(link, uid);
                let frame_max = self.sc.hub.upstream_frame_max;
                self.ups
                    .insert(uid, UpSlot::new(Owner::Admission(link), frame_max));
                self.line(format!("w dials u{uid} (admission {link})"));
                self.obs.link_dialed(now, uid);
                // SYN and SYN-ACK.
                self.schedule(now + self.sc.net.upstream_latency * 2, Ev::Dial(uid));
            }
            A::ToLink { link, data } => {
                let Some(&uid) = self.adm_links.get(&link) else {
                    return;
                };
                self.obs.proxy_sent_upstream(now, uid, &data);
                if let Some(l) = self.ups.get(&uid).and_then(|u| u.link) {
                    self.push(l, Dir::FromProxy, Item::Data(data));
                }
            }
            A::CloseLink { link } => {
                let Some(uid) = self.adm_links.remove(&link) else {
                    return;
                };
                self.close_up(uid);
            }
            A::StartHub { hub, machine } => {
                let hid = hub.get() as u32;
                self.line(format!("w starts hub h{hid} for {}", machine.credentials()));
                self.hubs.push(HubSlot {
                    hid,
                    id: hub,
                    hub: *machine,
                    clients: BTreeMap::new(),
                    ups: BTreeMap::new(),
                });
            }
            A::AdoptLink {
                link,
                hub,
                login,
                frames,
                node,
            } => {
                let hid = hub.get() as u32;
                let Some(uid) = self.adm_links.remove(&link) else {
                    return;
                };
                let Some(i) = self.hub_index(hid) else { return };
                let id = self.hubs[i].hub.adopt_upstream(now, *login, node);
                self.hubs[i].ups.insert(id, uid);
                if let Some(u) = self.ups.get_mut(&uid) {
                    u.owner = Owner::Hub { hub: hid, id };
                }
                self.line(format!("u{uid} becomes an upstream of h{hid}"));
                self.hub_outputs(hid);
                if !frames.is_empty() {
                    self.hub_input(
                        hid,
                        Input::UpstreamFrames {
                            upstream: id,
                            frames,
                        },
                    );
                }
            }
            A::Join {
                conn,
                hub,
                hello,
                pipelined,
            } => {
                let Some(cid) = self.handshakes.remove(&conn) else {
                    return;
                };
                let hid = hub.get() as u32;
                let Some(i) = self.hub_index(hid) else { return };
                let idx = cid as usize - 1;
                let (frame_max, heartbeat) = (hello.tune.frame_max, hello.tune.heartbeat);
                let id = self.hubs[i].hub.add_client(now, *hello);
                self.hubs[i].clients.insert(id, cid);
                self.line(format!("c{cid} joins hub h{hid}"));
                self.obs.client_joined(now, cid, heartbeat);
                self.clients[idx].proxy = ProxyClient::Joined {
                    hub: hid,
                    id,
                    buf: pipelined,
                    decoder: FrameDecoder::new(frame_max),
                    dead: false,
                };
                self.hub_outputs(hid);
                self.feed_hub_from_client(cid);
            }
            A::ToHub { hub, input } => self.hub_input(hub.get() as u32, input),
            A::StopHub { hub } => self.stop_hub(hub),
            A::Event(e) => self.admission_event(e),
        }
    }

    fn admission_event(&mut self, e: AdmissionEvent) {
        let (what, line) = match &e {
            AdmissionEvent::Refused {
                conn, why, reply, ..
            } => {
                let cid = self.handshakes.get(conn).copied().unwrap_or(0);
                if let Some(c) = self.handshakes.get(conn) {
                    self.obs.proxy_closed_client_with(*c, reply.code);
                }
                (
                    "login refused",
                    format!(
                        "w refuses c{cid} ({}): {} {:?}",
                        why.label(),
                        reply.code,
                        reply.text
                    ),
                )
            }
            AdmissionEvent::HandshakeFailed { conn } => {
                let cid = self.handshakes.get(conn).copied().unwrap_or(0);
                ("handshake failed", format!("c{cid} handshake failed"))
            }
            AdmissionEvent::ProofFailed { user, reply, .. } => (
                "proof failed",
                format!("login of {user} failed: {} {:?}", reply.code, reply.text),
            ),
            AdmissionEvent::Proved { user } => ("login proved", format!("login of {user} proved")),
            AdmissionEvent::Trusted { user } => {
                ("login trusted", format!("login of {user} trusted"))
            }
            AdmissionEvent::FeedUp => ("event feed up", "event feed up".to_owned()),
            AdmissionEvent::FeedDown { reason } => {
                ("event feed down", format!("event feed down: {reason}"))
            }
            AdmissionEvent::Revoked(r) => ("revocation", format!("revoked: {r:?}")),
            AdmissionEvent::Unreachable { reply, retry_in } => (
                "broker unreachable for logins",
                format!(
                    "logins refused for {}ms: {}",
                    retry_in.as_millis(),
                    reply.text
                ),
            ),
            #[allow(unreachable_patterns)] // Events admission may grow.
            other => ("other admission event", format!("{other:?}")),
        };
        self.count(what);
        self.line(line);
    }

    fn hub_index(&self, hid: u32) -> Option<usize> {
        self.hubs.iter().position(|h| h.hid == hid)
    }

    /// Splits whole frames off the client's buffer and hands them to its hub as one batch.
    fn feed_hub_from_client(&mut self, cid: u32) {
        let idx = cid as usize - 1;
        let ProxyClient::Joined {
            hub,
            id,
            buf,
            decoder,
            dead,
        } = &mut self.clients[idx].proxy
        else {
            return;
        };
        if *dead {
            buf.clear();
            return;
        }
        let (hid, id) = (*hub, *id);
        let mut frames: SmallVec<[Frame; 8]> = SmallVec::new();
        let mut error = None;
        loop {
            match decoder.decode(buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    *dead = true;
                    buf.clear();
                    break;
                }
            }
        }
        if !frames.is_empty() {
            self.obs.client_sent(self.now, cid);
            self.hub_input(hid, Input::ClientFrames { client: id, frames });
        }
        if let Some(error) = error {
            self.hub_input(hid, Input::ClientFrameError { client: id, error });
        }
    }

    fn proxy_sees_client_close(&mut self, cid: u32, _broken: bool) {
        let idx = cid as usize - 1;
        if matches!(self.clients[idx].proxy, ProxyClient::Joined { .. }) {
            self.unwatch_client(cid);
        }
        match std::mem::replace(&mut self.clients[idx].proxy, ProxyClient::Gone) {
            ProxyClient::Joined { hub, id, .. } => {
                self.hub_input(hub, Input::ClientClosed { client: id });
            }
            ProxyClient::Handshake { conn } => {
                self.handshakes.remove(&conn);
                self.admission_input(admission::Input::ClientClosed { conn });
            }
            other => self.clients[idx].proxy = other,
        }
        // warren closes its side once it learns the client is gone.
        if let Some(link) = self.clients[idx].link {
            self.push(link, Dir::FromProxy, Item::Fin);
        }
    }

    // ----- hubs -------------------------------------------------------------------------

    fn hub_input(&mut self, hid: u32, input: Input) {
        let Some(i) = self.hub_index(hid) else { return };
        let now = self.now;
        self.hubs[i].hub.handle(now, input);
        self.hub_outputs(hid);
    }

    fn hub_outputs(&mut self, hid: u32) {
        loop {
            let Some(i) = self.hub_index(hid) else { return };
            let Some(mut out) = self.hubs[i].hub.poll_output() else {
                break;
            };
            if let Some(t) = self.tamper.as_mut() {
                let before = out.clone();
                if !t(self.now, &mut out) {
                    self.line(format!("TAMPER dropped {before:?}"));
                    continue;
                }
                if out != before {
                    self.line(format!("TAMPER changed {before:?} into {out:?}"));
                }
            }
            self.apply(hid, out);
        }
        // Slow clients are reported after the outputs that made them slow (runtime order).
        let pending = std::mem::take(&mut self.pending);
        for (hid, input) in pending {
            self.hub_input(hid, input);
        }
    }

    fn apply(&mut self, hid: u32, out: Output) {
        let now = self.now;
        let i = self.hub_index(hid).expect("caller checked");
        match out {
            Output::ToClient { client, data } => {
                let Some(&cid) = self.hubs[i].clients.get(&client) else {
                    return;
                };
                self.obs.proxy_sent_client(now, cid, &data);
                let idx = cid as usize - 1;
                let Some(link) = self.clients[idx].link else {
                    return;
                };
                self.clients[idx].in_flight += data.len();
                self.clients[idx].sent += data.len() as u64;
                self.push(link, Dir::FromProxy, Item::Data(data));
                self.watch_client(cid, true);
            }
            Output::CloseClient { client } => {
                // The mapping stays: later events may still name the client.
                let Some(&cid) = self.hubs[i].clients.get(&client) else {
                    return;
                };
                self.line(format!("w closes c{cid}"));
                self.unwatch_client(cid);
                self.obs.proxy_closed_client(now, cid);
                self.obs.client_left(now, cid);
                let idx = cid as usize - 1;
                if matches!(self.clients[idx].proxy, ProxyClient::Joined { .. }) {
                    self.clients[idx].proxy = ProxyClient::Gone;
                }
                if let Some(link) = self.clients[idx].link {
                    self.push(link, Dir::FromProxy, Item::Fin);
                }
            }
            // One broker: every node of the order is it.
            Output::Dial { upstream, .. } => {
                self.next_up += 1;
                let uid = self.next_up;
                self.hubs[i].ups.insert(upstream, uid);
                self.ups.insert(
                    uid,
                    UpSlot::new(
                        Owner::Hub {
                            hub: hid,
                            id: upstream,
                        },
                        self.sc.hub.upstream_frame_max,
                    ),
                );
                self.line(format!("w dials u{uid} (hub h{hid})"));
                self.obs.dialed(now, hid, uid);
                // SYN and SYN-ACK.
                let at = now + self.sc.net.upstream_latency * 2;
                self.schedule(at, Ev::Dial(uid));
            }
            Output::ToUpstream { upstream, data } => {
                let Some(&uid) = self.hubs[i].ups.get(&upstream) else {
                    return;
                };
                self.obs.proxy_sent_upstream(now, uid, &data);
                if let Some(link) = self.ups.get(&uid).and_then(|u| u.link) {
                    self.push(link, Dir::FromProxy, Item::Data(data));
                }
            }
            Output::CloseUpstream { upstream } => {
                let Some(&uid) = self.hubs[i].ups.get(&upstream) else {
                    return;
                };
                self.close_up(uid);
            }
            Output::Event(e) => self.hub_event(hid, e),
        }
    }

    fn hub_event(&mut self, hid: u32, e: HubEvent) {
        let now = self.now;
        let i = self.hub_index(hid).expect("caller checked");
        let c = |id: &ClientId| {
            self.hubs[i]
                .clients
                .get(id)
                .map_or_else(|| "c?".to_owned(), |c| format!("c{c}"))
        };
        let u = |id: &UpstreamId| {
            self.hubs[i]
                .ups
                .get(id)
                .map_or_else(|| "u?".to_owned(), |u| format!("u{u}"))
        };
        let text = match &e {
            HubEvent::ClientAdmitted { client } => format!("{} admitted", c(client)),
            HubEvent::ClientClosed { client, reply } => {
                format!("{} closed {} {:?}", c(client), reply.code, reply.text)
            }
            HubEvent::ClientLeft { client } => format!("{} left", c(client)),
            HubEvent::SlowClient { client } => format!("{} slow", c(client)),
            HubEvent::UpstreamOpen {
                upstream,
                channel_max,
                frame_max,
                heartbeat,
            } => format!(
                "{} open channel_max={channel_max} frame_max={frame_max} heartbeat={heartbeat}",
                u(upstream)
            ),
            HubEvent::UpstreamFailed { upstream, reply } => {
                format!("{} failed {} {:?}", u(upstream), reply.code, reply.text)
            }
            HubEvent::UpstreamLost { upstream, reply } => {
                format!("{} lost {} {:?}", u(upstream), reply.code, reply.text)
            }
            HubEvent::AuthRejected { reply } => format!("login rejected {}", reply.code),
            HubEvent::HeartbeatMissed { peer } => match peer {
                Peer::Client(id) => format!("heartbeat missed by {}", c(id)),
                Peer::Upstream(id) => format!("heartbeat missed by {}", u(id)),
            },
            HubEvent::ReconnectScheduled { at, failures } => format!(
                "reconnect in {}ms after {failures} failures",
                at.duration_since(now).as_millis()
            ),
            HubEvent::Redialling { upstream } => format!("redialling onto {}", u(upstream)),
        };
        let line = format!("h{hid} {text}");
        self.line(line);
        let what = match &e {
            HubEvent::ClientAdmitted { .. } => "client admitted",
            HubEvent::ClientClosed { reply, .. } => match reply.code {
                320 => "client closed 320",
                403 => "client closed 403",
                530 => "client closed 530",
                501 => "client closed 501",
                502 => "client closed 502",
                503 => "client closed 503",
                504 => "client closed 504",
                505 => "client closed 505",
                540 => "client closed 540",
                _ => "client closed other",
            },
            HubEvent::SlowClient { .. } => "slow client",
            HubEvent::UpstreamOpen { .. } => "upstream open",
            HubEvent::UpstreamFailed { .. } => "upstream failed",
            HubEvent::UpstreamLost { .. } => "upstream lost",
            HubEvent::AuthRejected { .. } => "auth rejected",
            HubEvent::HeartbeatMissed { peer } => match peer {
                Peer::Client(_) => "client heartbeat missed",
                Peer::Upstream(_) => "upstream heartbeat missed",
            },
            HubEvent::ReconnectScheduled { .. } => "reconnect scheduled",
            HubEvent::ClientLeft { .. } => "client left",
            HubEvent::Redialling { .. } => "redialling",
        };
        self.count(what);
        match e {
            HubEvent::AuthRejected { reply } => {
                let hub = self.hubs[i].id;
                self.admission_input(admission::Input::HubRefused { hub, reply });
            }
            HubEvent::UpstreamOpen {
                upstream,
                heartbeat,
                ..
            } => {
                if let Some(&uid) = self.hubs[i].ups.get(&upstream) {
                    self.obs.upstream_open(now, hid, uid, heartbeat);
                }
            }
            HubEvent::UpstreamFailed { upstream, reply } => {
                let uid = self.hubs[i].ups.get(&upstream).copied();
                let others = self.live_upstreams(hid, uid);
                self.obs.upstream_failed(now, hid, uid, reply.code, others);
            }
            HubEvent::UpstreamLost { upstream, .. } => {
                let uid = self.hubs[i].ups.get(&upstream).copied();
                self.obs.upstream_lost(now, hid, uid);
            }
            HubEvent::ReconnectScheduled { at, failures } => {
                self.obs.reconnect_scheduled(now, hid, at, failures);
            }
            HubEvent::HeartbeatMissed { peer } => match peer {
                Peer::Client(id) => {
                    if let Some(&cid) = self.hubs[i].clients.get(&id) {
                        self.obs.client_declared_dead(now, cid);
                    }
                }
                Peer::Upstream(id) => {
                    if let Some(&uid) = self.hubs[i].ups.get(&id) {
                        self.obs.upstream_declared_dead(now, uid);
                    }
                }
            },
            HubEvent::ClientClosed { client, reply } => {
                if let Some(&cid) = self.hubs[i].clients.get(&client) {
                    self.obs.proxy_closed_client_with(cid, reply.code);
                    self.obs.client_left(now, cid);
                }
            }
            HubEvent::ClientLeft { client } | HubEvent::SlowClient { client } => {
                if let Some(&cid) = self.hubs[i].clients.get(&client) {
                    self.obs.client_left(now, cid);
                }
            }
            // Nothing for the observer: admission is seen when OpenOk reaches the client, and
            // the simulation's operators do not redial.
            HubEvent::ClientAdmitted { .. } | HubEvent::Redialling { .. } => {}
        }
    }

    /// Upstreams of a hub other than `except` that are dialling or connected.
    fn live_upstreams(&self, hid: u32, except: Option<u32>) -> usize {
        self.ups
            .iter()
            .filter(|(uid, u)| {
                matches!(u.owner, Owner::Hub { hub, .. } if hub == hid)
                    && Some(**uid) != except
                    && u.state != UpState::Gone
            })
            .count()
    }

    /// warren closes its broker connection `uid` (after flushing).
    fn close_up(&mut self, uid: u32) {
        let now = self.now;
        self.line(format!("w closes u{uid}"));
        self.obs.proxy_closed_upstream(now, uid);
        if let Some(u) = self.ups.get_mut(&uid) {
            u.state = UpState::Gone;
            if let Some(link) = u.link {
                self.push(link, Dir::FromProxy, Item::Fin);
            }
        }
    }

    /// An input about broker connection `uid` goes to its owner.
    fn up_input(&mut self, uid: u32, input: UpInput) {
        let Some(owner) = self.ups.get(&uid).map(|u| u.owner) else {
            return;
        };
        match owner {
            Owner::Hub { hub, id } => {
                let input = match input {
                    UpInput::Connected => Input::UpstreamConnected {
                        upstream: id,
                        node: 0,
                    },
                    UpInput::Frames(frames) => Input::UpstreamFrames {
                        upstream: id,
                        frames,
                    },
                    UpInput::FrameError(error) => Input::UpstreamFrameError {
                        upstream: id,
                        error,
                    },
                    UpInput::Closed(reason) => Input::UpstreamClosed {
                        upstream: id,
                        reason,
                    },
                };
                self.hub_input(hub, input);
            }
            Owner::Admission(link) => {
                use admission::Input as A;
                let input = match input {
                    UpInput::Connected => A::LinkConnected { link, node: 0 },
                    UpInput::Frames(frames) => A::LinkFrames { link, frames },
                    UpInput::FrameError(error) => A::LinkFrameError { link, error },
                    UpInput::Closed(reason) => A::LinkClosed { link, reason },
                };
                self.admission_input(input);
            }
        }
    }

    // ----- upstreams and the broker ------------------------------------------------------

    fn dial_result(&mut self, uid: u32) {
        let now = self.now;
        let Some(u) = self.ups.get(&uid) else { return };
        if u.state != UpState::Dialing {
            return;
        }
        if let Some(until) = self.held_until {
            if now < until {
                self.schedule(until, Ev::Dial(uid));
                return;
            }
        }
        match self.broker_state {
            BrokerState::Crashed { .. } => {
                self.line(format!("u{uid} connection refused"));
                self.up_input(uid, UpInput::Closed("connection refused".into()));
                if let Some(u) = self.ups.get_mut(&uid) {
                    u.state = UpState::Gone;
                }
            }
            BrokerState::Silent { .. } => {}
            BrokerState::Up if self.partitioned => {}
            BrokerState::Up => {
                let link = self.new_link(LinkKind::Upstream(uid), self.sc.net.upstream_latency);
                let conn = self.broker.accept(now);
                self.conn_to_up.insert(conn, uid);
                if let Some(u) = self.ups.get_mut(&uid) {
                    u.state = UpState::Connected;
                    u.link = Some(link);
                    u.conn = Some(conn);
                }
                self.line(format!("u{uid} connected"));
                self.up_input(uid, UpInput::Connected);
            }
        }
    }

    fn proxy_reads_upstream(&mut self, uid: u32, data: &[u8]) {
        let now = self.now;
        let Some(u) = self.ups.get_mut(&uid) else {
            return;
        };
        if u.state == UpState::Gone {
            return;
        }
        u.buf.extend_from_slice(data);
        let mut frames: SmallVec<[Frame; 8]> = SmallVec::new();
        let mut error = None;
        loop {
            match u.decoder.decode(&mut u.buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    u.buf.clear();
                    break;
                }
            }
        }
        if !frames.is_empty() {
            self.obs.upstream_sent(now, uid);
            self.up_input(uid, UpInput::Frames(frames));
        }
        if let Some(error) = error {
            self.up_input(uid, UpInput::FrameError(error));
        }
    }

    fn proxy_sees_upstream_close(&mut self, uid: u32, broken: bool) {
        let Some(u) = self.ups.get_mut(&uid) else {
            return;
        };
        let link = u.link;
        if u.state != UpState::Gone {
            u.state = UpState::Gone;
            let reason = if broken {
                "connection reset by peer"
            } else {
                "connection closed by peer"
            };
            self.up_input(uid, UpInput::Closed(reason.into()));
        }
        if let Some(link) = link {
            self.push(link, Dir::FromProxy, Item::Fin);
        }
    }

    fn broker_reads(&mut self, uid: u32, data: &[u8]) {
        if self.broker_state != BrokerState::Up {
            return;
        }
        let Some(conn) = self.ups.get(&uid).and_then(|u| u.conn) else {
            // The broker host has no such connection (it restarted): TCP answers with RST.
            if let Some(link) = self.ups.get(&uid).and_then(|u| u.link) {
                self.line(format!(
                    "u{uid} reset by the broker host (unknown connection)"
                ));
                self.reset_link(link);
            }
            return;
        };
        self.broker.handle_bytes(self.now, conn, data);
        self.broker_outputs();
    }

    fn broker_sees_close(&mut self, uid: u32) {
        if self.broker_state != BrokerState::Up {
            return;
        }
        let Some(u) = self.ups.get_mut(&uid) else {
            return;
        };
        let (conn, link) = (u.conn.take(), u.link);
        if let Some(conn) = conn {
            self.conn_to_up.remove(&conn);
            self.broker.handle_closed(self.now, conn);
            self.broker_outputs();
        }
        if let Some(link) = link {
            self.push(link, Dir::ToProxy, Item::Fin);
        }
    }

    fn broker_outputs(&mut self) {
        while let Some(o) = self.broker.poll_output() {
            match o {
                BrokerOutput::Send { conn, data } => {
                    let Some(link) = self
                        .conn_to_up
                        .get(&conn)
                        .and_then(|uid| self.ups.get(uid))
                        .and_then(|u| u.link)
                    else {
                        continue;
                    };
                    self.push(link, Dir::ToProxy, Item::Data(data));
                }
                BrokerOutput::Close { conn } => {
                    let Some(uid) = self.conn_to_up.remove(&conn) else {
                        continue;
                    };
                    if let Some(u) = self.ups.get_mut(&uid) {
                        u.conn = None;
                        if let Some(link) = u.link {
                            self.push(link, Dir::ToProxy, Item::Fin);
                        }
                    }
                }
            }
        }
    }

    /// Breaks a link: both ends see a reset after the latency, in-flight data is lost.
    fn reset_link(&mut self, link: u32) {
        let now = self.now;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let latency = l.latency;
        for dir in [Dir::ToProxy, Dir::FromProxy] {
            let p = l.pipe(dir);
            p.items.clear();
            p.shut = true;
            p.last = Some(now + latency);
            p.items.push_back((now + latency, Item::Reset));
        }
        l.lost = false;
        self.schedule(now + latency, Ev::Deliver(link, Dir::ToProxy));
        self.schedule(now + latency, Ev::Deliver(link, Dir::FromProxy));
    }

    fn upstream_links(&self) -> Vec<u32> {
        self.links
            .iter()
            .filter(|(_, l)| matches!(l.kind, LinkKind::Upstream(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    // ----- faults -----------------------------------------------------------------------

    fn fault_start(&mut self, i: usize) {
        let now = self.now;
        let fault = self.sc.plan.faults[i].fault.clone();
        self.line(format!("fault: {fault}"));
        self.obs.fault_started(now, &fault);
        let what = match fault {
            Fault::BrokerCrash { .. } => "fault: broker crash",
            Fault::BrokerSilentDeath { .. } => "fault: silent death",
            Fault::Partition { .. } => "fault: partition",
            Fault::Hold { .. } => "fault: hold",
            Fault::ConnBreaks { .. } => "fault: connection breaks",
            Fault::Blocked { .. } => "fault: blocked",
            Fault::Drain { .. } => "fault: drain",
            Fault::PasswordChange { .. } => "fault: password change",
            _ => "fault: other",
        };
        self.count(what);
        match fault {
            Fault::BrokerCrash { downtime } => {
                self.broker.restart();
                self.broker_state = BrokerState::Crashed {
                    until: now + downtime,
                };
                let conns: Vec<(ConnId, u32)> =
                    std::mem::take(&mut self.conn_to_up).into_iter().collect();
                for (_, uid) in conns {
                    let Some(u) = self.ups.get_mut(&uid) else {
                        continue;
                    };
                    u.conn = None;
                    if let Some(link) = u.link {
                        // Requests in flight to the dead broker are lost; it sends FIN.
                        if let Some(l) = self.links.get_mut(&link) {
                            l.from_proxy.items.clear();
                            l.from_proxy.shut = true;
                        }
                        self.push(link, Dir::ToProxy, Item::Fin);
                    }
                }
            }
            Fault::BrokerSilentDeath { downtime } => {
                self.broker_state = BrokerState::Silent {
                    until: now + downtime,
                };
                for link in self.upstream_links() {
                    if let Some(l) = self.links.get_mut(&link) {
                        l.from_proxy.items.clear();
                    }
                }
            }
            Fault::Partition { .. } => {
                self.partitioned = true;
                for link in self.upstream_links() {
                    if let Some(l) = self.links.get_mut(&link) {
                        // Data in flight is lost. A reset or FIN already on its way stays:
                        // in reality the next write after the partition would draw an RST.
                        for p in [&mut l.to_proxy, &mut l.from_proxy] {
                            let before = p.items.len();
                            p.items.retain(|(_, it)| !matches!(it, Item::Data(_)));
                            if p.items.len() != before {
                                l.lost = true;
                            }
                        }
                    }
                }
            }
            Fault::Hold { duration } => {
                let until = now + duration;
                self.held_until = Some(self.held_until.map_or(until, |h| h.max(until)));
            }
            Fault::ConnBreaks { count, over } => {
                for _ in 0..count {
                    let d = self.rng.random_range(0..=over.as_millis() as u64);
                    self.schedule(now + Duration::from_millis(d), Ev::Break);
                }
            }
            Fault::Blocked { .. } if self.broker_state == BrokerState::Up => {
                self.broker.set_blocked(now, Some("low on memory"));
                self.broker_outputs();
            }
            Fault::PasswordChange { user, password } => {
                let old = self
                    .sc
                    .broker
                    .users
                    .iter()
                    .find(|(u, _)| *u == user)
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                self.obs.password_changed(now, &user, &old);
                if self.broker_state != BrokerState::Up {
                    // Changed elsewhere in the cluster; this node publishes nothing.
                    self.broker.set_password(&user, &password);
                    return;
                }
                let feed: Vec<(ConnId, u32, usize)> = self
                    .conn_to_up
                    .iter()
                    .filter_map(|(c, uid)| {
                        let link = self.ups.get(uid)?.link?;
                        Some((*c, link, self.links.get(&link)?.to_proxy.items.len()))
                    })
                    .collect();
                let sent = self.broker.change_password(now, &user, &password);
                self.broker_outputs();
                for (conn, link, before) in feed {
                    if !sent.contains(&conn) {
                        continue;
                    }
                    let Some(p) = self.links.get(&link).map(|l| &l.to_proxy) else {
                        continue;
                    };
                    if p.items.len() > before {
                        if let Some((at, _)) = p.items.back() {
                            self.pending_events.push((link, *at));
                        }
                    }
                }
            }
            Fault::Drain { timeout } => {
                let deadline = now + timeout;
                self.draining = Some(deadline);
                self.admission_input(admission::Input::Drain);
                let hids: Vec<u32> = self.hubs.iter().map(|h| h.hid).collect();
                for hid in hids {
                    self.hub_input(hid, Input::Drain { deadline });
                }
            }
            _ => {}
        }
    }

    fn fault_end(&mut self, i: usize) {
        let now = self.now;
        let fault = self.sc.plan.faults[i].fault.clone();
        match fault {
            Fault::BrokerCrash { .. } => {
                if matches!(self.broker_state, BrokerState::Crashed { until } if until <= now) {
                    self.broker_state = BrokerState::Up;
                    self.line("heal: broker is back");
                }
            }
            Fault::BrokerSilentDeath { .. } => {
                if matches!(self.broker_state, BrokerState::Silent { until } if until <= now) {
                    self.broker.restart();
                    self.broker_state = BrokerState::Up;
                    self.conn_to_up.clear();
                    for link in self.upstream_links() {
                        if let Some(LinkKind::Upstream(uid)) = self.links.get(&link).map(|l| l.kind)
                        {
                            if let Some(u) = self.ups.get_mut(&uid) {
                                u.conn = None;
                            }
                        }
                        self.reset_link(link);
                    }
                    self.line("heal: broker is back (old connections reset)");
                }
            }
            Fault::Partition { .. } => {
                self.partitioned = false;
                for link in self.upstream_links() {
                    if self.links.get(&link).is_some_and(|l| l.lost) {
                        self.reset_link(link);
                    }
                }
                self.line("heal: partition repaired");
            }
            Fault::Hold { .. } if self.held_until.is_some_and(|h| h <= now) => {
                self.held_until = None;
                self.line("heal: hold released");
            }
            Fault::Blocked { .. } => {
                if self.broker_state == BrokerState::Up {
                    self.broker.set_blocked(now, None);
                    self.broker_outputs();
                }
                self.line("heal: broker unblocked");
            }
            _ => {}
        }
        self.obs.fault_ended(now, &fault);
    }

    fn break_random_link(&mut self) {
        let live: Vec<u32> = self
            .links
            .iter()
            .filter(|(_, l)| !l.to_proxy.shut && !l.from_proxy.shut)
            .map(|(id, _)| *id)
            .collect();
        if live.is_empty() {
            return;
        }
        let link = live[self.rng.random_range(0..live.len())];
        let kind = self.links[&link].kind;
        let name = match kind {
            LinkKind::Client(c) => {
                self.obs.client_link_broken(c);
                format!("c{c}")
            }
            LinkKind::Upstream(u) => format!("u{u}"),
        };
        self.line(format!("fault: connection {name} reset"));
        self.reset_link(link);
    }

    // ----- checks -----------------------------------------------------------------------

    /// Leaks after every client left: upstream channels in use beyond the pool, exclusive
    /// queues left on the broker. Transient states (a close or fence in flight) are allowed
    /// to settle: the check is retried until `until`, and fails only if it never passes.
    fn checkpoint(&mut self, until: Instant) {
        let now = self.now;
        let report = self.leak_report();
        // Conditions that held once (a hub with no stray channel, no exclusive queue) count
        // as passed: a later pool expiry in flight is not a leak.
        let failing: Vec<&String> = report.iter().map(|(k, _, _)| k).collect();
        for key in ["exclusive".to_owned()]
            .into_iter()
            .chain(self.hubs.iter().map(|h| format!("h{}", h.hid)))
        {
            if !failing.contains(&&key) {
                self.leak_passed.insert(key);
            }
        }
        let open: Vec<(String, Invariant, String)> = report
            .into_iter()
            .filter(|(k, _, _)| !self.leak_passed.contains(k))
            .collect();
        if !open.is_empty() && now < until {
            self.schedule(now + Duration::from_millis(100), Ev::Checkpoint(until));
            return;
        }
        self.checkpoint_done = true;
        for (_, inv, what) in open {
            self.obs.violation(now, inv, what);
        }
        self.line("checkpoint: all clients gone");
    }

    fn leak_report(&self) -> Vec<(String, Invariant, String)> {
        let mut out = Vec::new();
        for h in &self.hubs {
            let in_use = h.hub.channels_in_use();
            let pooled = h.hub.pooled_channels();
            if in_use != pooled {
                out.push((
                    format!("h{}", h.hid),
                    Invariant::ChannelLeak,
                    format!(
                        "hub h{}: {in_use} upstream channels in use, only {pooled} of them pooled, after every client left",
                        h.hid
                    ),
                ));
            }
        }
        if self.broker_state == BrokerState::Up {
            let feed = self.feed_conns();
            let excl: Vec<(String, ConnId)> = self
                .broker
                .exclusive_queues()
                .into_iter()
                .filter(|(_, c)| !feed.contains(c))
                .collect();
            if !excl.is_empty() {
                let names: Vec<String> = excl.iter().map(|(n, _)| n.clone()).collect();
                out.push((
                    "exclusive".to_owned(),
                    Invariant::ChannelLeak,
                    format!(
                        "exclusive queues {names:?} still exist on the broker after every client left (B5)"
                    ),
                ));
            }
        }
        out
    }

    /// Final checks; consumes the world.
    #[must_use]
    pub fn finish(mut self) -> Report {
        let now = self.now;
        if !self.checkpoint_done {
            self.checkpoint(now);
        }
        let mut leftovers = Vec::new();
        for h in &self.hubs {
            leftovers.push(format!(
                "hub h{} not finished at the end: {} clients, {} upstreams, {} channels in use ({} pooled)",
                h.hid,
                h.hub.client_count(),
                h.hub.upstream_count(),
                h.hub.channels_in_use(),
                h.hub.pooled_channels()
            ));
        }
        for l in leftovers {
            self.obs.violation(now, Invariant::ChannelLeak, l);
        }
        let stray = self.stray_broker_conns();
        if self.broker_state == BrokerState::Up && !stray.is_empty() {
            let n = stray.len();
            let feed = self.feed_conns().len();
            self.obs.violation(
                now,
                Invariant::ChannelLeak,
                format!(
                    "the broker still has {n} connections from warren at the end (besides {} of {feed} event feed connections)",
                    feed.min(usize::from(self.sc.net.events))
                ),
            );
        }
        self.count("run");
        for (k, v) in self.obs.slow_counts().clone() {
            *self.coverage.entry(k).or_default() += v;
        }
        for (k, v) in [
            ("message published", self.broker.log.publishes),
            ("message delivered", self.broker.log.deliveries),
            ("message confirmed", self.broker.log.confirmed.len() as u64),
        ] {
            *self.coverage.entry(k).or_default() += v;
        }
        for c in &self.clients {
            let what = match &c.client.end {
                Some((_, End::Finished)) => "client end: finished",
                Some((_, End::Left)) => "client end: left",
                Some((_, End::Closed(..))) => "client end: closed",
                Some((_, End::Dropped)) => "client end: dropped",
                Some((_, End::Broken)) => "client end: broken",
                Some((_, End::Refused)) => "client end: refused",
                Some((_, End::TimedOut)) => "client end: timed out",
                None => "client end: none",
            };
            *self.coverage.entry(what).or_default() += 1;
            if c.client.received.iter().any(|r| r.redelivered) {
                *self.coverage.entry("client got a redelivery").or_default() += 1;
            }
            if !c.client.acked.is_empty() {
                *self.coverage.entry("client got confirms").or_default() += 1;
            }
            if !c.client.channel_closes.is_empty() {
                *self
                    .coverage
                    .entry("client got a channel close")
                    .or_default() += 1;
            }
            for i in &c.client.intrusions {
                let what = match i.refused {
                    Some(405) => "intrusion refused 405",
                    Some(404) => "intrusion refused 404",
                    Some(_) => "intrusion refused other",
                    None => match i.op {
                        Intrusion::Delete => "intrusion answered (delete)",
                        _ => "intrusion answered (not a delete)",
                    },
                };
                *self.coverage.entry(what).or_default() += 1;
            }
            let kind = c.client.spec.kind;
            if matches!(kind, "leaked-password" | "new-password" | "rotation-worker") {
                let admitted = c.client.opened_at.is_some();
                let what = match (kind, admitted) {
                    ("leaked-password", true) => "leaked password admitted",
                    ("leaked-password", false) => "leaked password refused",
                    ("new-password", true) => "new password admitted",
                    ("new-password", false) => "new password not admitted",
                    (_, true) => "rotation worker admitted",
                    _ => "rotation worker not admitted",
                };
                *self.coverage.entry(what).or_default() += 1;
            }
        }
        if self.broker.log.locked_refusals > 0 {
            *self.coverage.entry("broker refused 405").or_default() +=
                self.broker.log.locked_refusals;
        }
        if self.sc.net.events {
            self.count("event mode");
        }
        let summary = format!(
            "{} clients, {} publishes, {} deliveries, {} upstream dials; faults: {}",
            self.clients.len(),
            self.broker.log.publishes,
            self.broker.log.deliveries,
            self.next_up,
            self.sc.plan
        );
        let clients: Vec<&FakeClient> = self.clients.iter().map(|c| &c.client).collect();
        let hub_close_timeout = self.sc.hub.close_timeout;
        self.obs.final_checks(
            now,
            &clients,
            &self.broker.log,
            &self.sc,
            hub_close_timeout,
            &self.board,
        );
        let queued = if self.broker_state == BrokerState::Up {
            self.broker.queued_origins()
        } else {
            Vec::new()
        };
        self.obs
            .lost_checks(now, &clients, &self.broker.log, &queued, &self.sc);
        let judged = self.obs.revocation_checked();
        if judged > 0 {
            *self
                .coverage
                .entry("old password after warren knew")
                .or_default() += judged;
        }
        let violations = self.obs.take_violations();
        if self.trace.enabled() {
            for v in &violations {
                let line = format!("VIOLATION {v}");
                self.trace.line(now, line);
            }
        }
        Report {
            seed: self.sc.seed,
            violations,
            trace: self.trace.text().to_owned(),
            elapsed: now.duration_since(self.epoch),
            summary,
            coverage: std::mem::take(&mut self.coverage),
        }
    }

    /// Whether the client `cid` has ended.
    #[must_use]
    pub fn client_end(&self, cid: u32) -> Option<End> {
        self.clients
            .get(cid as usize - 1)
            .and_then(|c| c.client.end.clone().map(|(_, e)| e))
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
