//! The `hub_client` fuzz target (see [`hub_client`] for the world it builds, its input and
//! what it checks). This file holds the world and its operations; `checks` what it checks,
//! `broker` the scripted broker behind each upstream, `build` the frames a fuzzed client
//! sends, `input` how the input bytes read. The rules warren is held to are
//! [`crate::rules`]; credentials, hellos, the broker's handshake, frame cutting and trace
//! stamps come from [`crate::hub_world`], which core's hub scenarios use too.

mod broker;
mod build;
mod checks;
mod input;

use crate::hub_world::{
    broker_handshake, describe_event, epoch, header, hello, hello_with, parse_frame, FrameReader,
};
use crate::rules::*;
use crate::trace::describe;
use broker::*;
use build::*;
use input::*;
pub use input::{Build, HubInput, HubOp};

use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};
use warren_core::frame::{method_frame, Frame, FrameType, FRAME_MIN_SIZE, HEARTBEAT};
use warren_core::handshake::{ClientCapabilities, ClientHello};
use warren_core::hub::{
    ClientId, Hub, HubConfig, HubEvent, HubStats, Input, Output, Peer, Placement, UpstreamId,
};
use warren_core::method::{encode, ids, Close, MethodId, Tune};

// ----- the fuzz body --------------------------------------------------------------------

/// Fuzz target: a hub fed arbitrary client bytes after a valid handshake and admission,
/// with a scripted broker and a well-behaved neighbour, checked against the rules by which
/// RabbitMQ closes a whole connection (B7). It panics, naming the broken property, when one
/// does not hold.
///
/// # The world
///
/// One hub; a scripted broker behind every upstream the hub dials (it accepts every dial and
/// answers what warren sends, but only when the input says so); a well-behaved *canary*
/// client; and up to four *fuzzed* clients. The canary joins first, opens its channel 1 and
/// starts a consumer; it then publishes and receives deliveries whenever the input asks, and
/// once more at the end. Fuzzed clients join after it and everything they send is decided
/// by the input.
///
/// # The input
///
/// Four configuration bytes (see [`HubInput::new`]), then operations: a code byte
/// ([`HubOp`], taken modulo 16) and its argument bytes. Missing bytes read as zero, so every
/// input is valid and a truncated input is a shorter run. Client bytes always go through a
/// [`FrameDecoder`](warren_core::frame::FrameDecoder) at the client's frame_max, as the
/// runtime's reader does: whole frames become `Input::ClientFrames`, a decode error becomes
/// `Input::ClientFrameError`. Time is a fixed origin plus offsets, so a failing input replays
/// exactly.
///
/// # What is checked
///
/// - nothing panics, and no timer keeps firing at the same instant;
/// - every byte warren sends each upstream passes an [`UpstreamChecker`]: nothing in it would
///   make RabbitMQ close the shared connection;
/// - the canary's upstream channel carries exactly the canary's frames, in order; the canary
///   receives exactly what the broker sent on that channel, is never closed, and its
///   publishes and deliveries keep flowing to the end;
/// - a fuzzed client receives whole frames within its frame_max, never a canary delivery,
///   and nothing after its socket was closed;
/// - no upstream is lost or fails (the scripted broker is always reachable and alive);
/// - once every fuzzed client has left and the broker has answered everything, no exclusive
///   queue they declared is left on the connections (B5);
/// - after the pool and idle timers have run, only the canary's channel is in use upstream,
///   as the hub counts it and as the broker sees it, and only its upstream is left.
pub fn hub_client(data: &[u8]) {
    let _ = run(data, false);
}

/// [`hub_client`], returning the hub's counters at the end so tests can check that an input
/// reaches what it is meant to (a publish forwarded, a channel recycled...).
#[must_use]
pub fn hub_client_stats(data: &[u8]) -> HubStats {
    run(data, false).0
}

/// [`hub_client`] with a line for every step; a failure's panic message includes the lines
/// so far. For reading what an input does.
#[must_use]
pub fn hub_client_trace(data: &[u8]) -> Vec<String> {
    run(data, true).1
}

/// Operations read from one input, at most.
const MAX_OPS: usize = 1000;
/// Fuzzed clients that may join in one run.
const MAX_CLIENTS: usize = 4;
/// Body bytes the fuzzed clients and the broker may create in one run.
const BODY_BUDGET: usize = 2 << 20;
/// Virtual time the input may let pass, so that a run stays fast.
const TIME_BUDGET: Duration = Duration::from_secs(600);
/// The broker sends a heartbeat on every upstream once per step of virtual time.
const STEP: Duration = Duration::from_secs(1);
/// The canary's frame_max and channel.
const CANARY_FRAME_MAX: u32 = 131_072;
const CANARY_CH: u16 = 1;
const CANARY_TAG: &[u8] = b"canary-ctag";
/// What [`HubOp::Advance`] lets pass, by its step byte.
const ADVANCES: [Duration; 9] = [
    Duration::ZERO,
    Duration::from_millis(10),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
    Duration::from_secs(6),
    Duration::from_secs(11),
    Duration::from_secs(31),
    Duration::from_secs(65),
];
/// Body sizes, around the frame sizes that matter.
const SIZES: [usize; 10] = [0, 1, 10, 100, 4088, 4089, 8000, 131_064, 131_065, 300_000];
const EXCHANGES: [&[u8]; 4] = [b"", b"amq.direct", b"x", b"amq.topic"];
const QUEUES: [&[u8]; 4] = [b"", b"q", b"q2", b"amq.gen-1"];
const TAGS: [&[u8]; 4] = [b"", b"t1", b"t2", b"amq.ctag-1"];
const EXCHANGE_TYPES: [&[u8]; 8] = [
    b"direct",
    b"fanout",
    b"topic",
    b"headers",
    b"x-delayed-message",
    b"bogus",
    b"",
    b"DIRECT",
];
const ACCESS_REQUEST: MethodId = MethodId::new(30, 10);
const EMPTY_TABLE: [u8; 4] = [0; 4];

fn run(data: &[u8], trace: bool) -> (HubStats, Vec<String>) {
    let mut src = Src { data, pos: 0 };
    let mut world = World::new([src.byte(), src.byte(), src.byte(), src.byte()], trace);
    world.setup();
    let mut ops = 0;
    while !src.is_empty() && ops < MAX_OPS {
        ops += 1;
        world.op(&mut src);
        world.check_step();
    }
    world.finish();
    let stats = world.hub.stats().clone();
    (stats, world.trace.take().unwrap_or_default())
}

/// The well-behaved neighbour.
struct Canary {
    id: ClientId,
    /// Its upstream channel, once warren opened it.
    up: Option<(UpstreamId, u16)>,
    /// Frames the canary sent that its upstream channel must carry next, in order.
    to_broker: VecDeque<(FrameType, Vec<u8>)>,
    /// Frames the broker sent on the canary's channel that the canary must receive next.
    to_client: VecDeque<(FrameType, Vec<u8>)>,
    rx: FrameReader,
    published: u64,
    delivered: u64,
}

/// A client driven by the input.
struct Fuzzed {
    id: ClientId,
    frame_max: u32,
    channel_max: u16,
    /// Bytes the input wrote that are not a whole frame yet.
    tx: FrameReader,
    /// The byte stream broke; the runtime reads no more of it.
    broken: bool,
    /// The hub closed the socket.
    gone: bool,
    /// Bytes from the hub not yet decoded.
    rx: FrameReader,
}

struct World {
    hub: Hub,
    now: Instant,
    config: HubConfig,
    offer: Tune,
    template: ClientHello,
    brokers: Vec<Broker>,
    dials: VecDeque<UpstreamId>,
    canary: Canary,
    clients: Vec<Fuzzed>,
    body_budget: usize,
    time_left: Duration,
    setting_up: bool,
    /// Inside [`World::accept_dials`]: dials requested meanwhile wait for its loop.
    accepting: bool,
    trace: Option<Vec<String>>,
}

/// The item a byte picks.
fn pick<T: Copy>(items: &[T], b: u8) -> T {
    items[usize::from(b) % items.len()]
}

impl World {
    fn new(config: [u8; 4], trace: bool) -> World {
        let [hub_byte, broker_byte, client_byte, seed] = config;
        let two = |b: u8, at: u8| usize::from((b >> at) & 3);
        let hub_config = HubConfig {
            upstream_frame_max: if broker_byte & 0x80 != 0 {
                4096
            } else {
                131_072
            },
            max_upstreams: [2, 1, 3, 4][two(hub_byte, 4)],
            placement: if hub_byte & 2 != 0 {
                Placement::Spread
            } else {
                Placement::Fill
            },
            max_message_size: if hub_byte & 0x40 != 0 {
                4096
            } else {
                HubConfig::default().max_message_size
            },
            client_buffer_limit: if hub_byte & 0x80 != 0 {
                8192
            } else {
                HubConfig::default().client_buffer_limit
            },
            recycling: hub_byte & 1 == 0,
            pool_size: [64, 1, 2, 0][two(hub_byte, 2)],
            extra_exchange_types: vec!["x-delayed-message".into()],
            upstream_name: "warren-fuzz".into(),
            ..HubConfig::default()
        };
        let offer = Tune {
            channel_max: [0, 2047, 2, 3, 5, 8, 1, 64][usize::from(broker_byte & 7)],
            frame_max: [131_072, 4096, 0, 8192][two(broker_byte, 3)],
            heartbeat: [60, 5, 0, 600][two(broker_byte, 5)],
        };
        let template = hello_with(
            Tune {
                channel_max: [2047, 1, 4, 65535][two(client_byte, 2)],
                frame_max: [131_072, 4096, 8192, 65_536][two(client_byte, 0)],
                heartbeat: [0, 0, 5, 60][two(client_byte, 4)],
            },
            ClientCapabilities {
                authentication_failure_close: true,
                consumer_cancel_notify: client_byte & 0x40 == 0,
                connection_blocked: client_byte & 0x80 == 0,
            },
        );
        let now = epoch();
        let mut hub = Hub::new(
            hub_config.clone(),
            template.credentials.clone(),
            u64::from(seed),
        );
        let canary = hub.add_client(now, hello(CANARY_FRAME_MAX, 0));
        World {
            hub,
            now,
            config: hub_config,
            offer,
            template,
            brokers: Vec::new(),
            dials: VecDeque::new(),
            canary: Canary {
                id: canary,
                up: None,
                to_broker: VecDeque::new(),
                to_client: VecDeque::new(),
                rx: FrameReader::default(),
                published: 0,
                delivered: 0,
            },
            clients: Vec::new(),
            body_budget: BODY_BUDGET,
            time_left: TIME_BUDGET,
            setting_up: true,
            accepting: false,
            trace: trace.then(Vec::new),
        }
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(crate::trace::line(self.now - epoch(), line()));
        }
    }

    fn fail(&self, what: impl fmt::Display) -> ! {
        match &self.trace {
            Some(t) => panic!("hub_client: {what}\ntrace:\n{}", t.join("\n")),
            None => panic!("hub_client: {what}"),
        }
    }

    // ----- setup and end ----------------------------------------------------------------

    /// The canary is admitted, opens its channel and starts a consumer; the first fuzzed
    /// client joins.
    fn setup(&mut self) {
        self.pump();
        self.accept_dials();
        let open = encode::channel_open(CANARY_CH);
        let consume = crate::hub_world::consume(CANARY_CH, b"canary-q", CANARY_TAG, false, false);
        self.canary_sends(&[open, consume], 1);
        self.settle();
        if self.canary.up.is_none() {
            self.fail("the canary's channel.open never reached the broker");
        }
        self.setting_up = false;
        self.check_step();
        self.join();
    }

    // ----- operations -------------------------------------------------------------------

    fn op(&mut self, src: &mut Src<'_>) {
        match src.byte() % 16 {
            1 => {
                let who = src.byte();
                let n = src.len();
                let raw = src.take(n);
                let i = self.who(who);
                self.note(|| format!("op raw c#{i} {} bytes", raw.len()));
                self.client_bytes(i, raw);
            }
            2 => {
                let which = src.byte();
                let count = src.byte();
                self.replies(which, count);
            }
            3 => {
                let (which, kind, pick_byte, size) =
                    (src.byte(), src.byte(), src.byte(), src.byte());
                self.broker_acts(which, kind, pick_byte, size);
            }
            4 => {
                let d = pick(&ADVANCES, src.byte());
                if d.is_zero() {
                    self.note(|| "op spurious timeout".into());
                    self.input(Input::Timeout);
                } else {
                    let d = d.min(self.time_left);
                    self.time_left -= d;
                    self.note(|| format!("op advance {d:?}"));
                    self.advance(d);
                }
            }
            5 => self.canary_publish(),
            6 => self.canary_delivery(),
            7 => {
                let i = self.who(src.byte());
                let client = self.clients[i].id;
                self.note(|| format!("op c#{i} socket closed"));
                self.input(Input::ClientClosed { client });
            }
            8 => {
                let i = self.who(src.byte());
                let client = self.clients[i].id;
                self.note(|| format!("op c#{i} slow"));
                self.input(Input::ClientSlow { client });
            }
            9 => self.join(),
            10 => {
                self.note(|| "op settle".into());
                self.settle();
            }
            _ => {
                let i = self.who(src.byte());
                let (frame_max, channel_max) =
                    (self.clients[i].frame_max, self.clients[i].channel_max);
                let bytes = build(src, frame_max, channel_max, &mut self.body_budget);
                self.note(|| format!("op frames c#{i} {} bytes", bytes.len()));
                self.client_bytes(i, &bytes);
            }
        }
    }

    fn who(&self, b: u8) -> usize {
        usize::from(b) % self.clients.len()
    }

    fn join(&mut self) {
        if self.clients.len() >= MAX_CLIENTS {
            return;
        }
        let hello = self.template.clone();
        let (frame_max, channel_max) = (hello.tune.frame_max, hello.tune.channel_max);
        let id = self.hub.add_client(self.now, hello);
        let n = self.clients.len();
        self.note(|| format!("op c#{n} joins as {id}"));
        self.clients.push(Fuzzed {
            id,
            frame_max,
            channel_max,
            tx: FrameReader::default(),
            broken: false,
            gone: false,
            rx: FrameReader::default(),
        });
        self.pump();
        self.accept_dials();
    }

    /// Bytes from a fuzzed client, through a frame decoder as the runtime's reader does.
    fn client_bytes(&mut self, i: usize, bytes: &[u8]) {
        let c = &mut self.clients[i];
        if c.broken {
            return;
        }
        c.tx.push(bytes);
        let mut frames: SmallVec<[Frame; 8]> = SmallVec::new();
        let mut error = None;
        loop {
            match c.tx.next_frame(c.frame_max) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    c.broken = true;
                    break;
                }
            }
        }
        let client = c.id;
        if !frames.is_empty() {
            if self.trace.is_some() {
                for f in &frames {
                    let d = describe(f);
                    self.note(|| format!("{client} -> {d}"));
                }
            }
            self.input(Input::ClientFrames { client, frames });
        }
        if let Some(error) = error {
            self.note(|| format!("{client} -> frame error {error}"));
            self.input(Input::ClientFrameError { client, error });
        }
    }

    fn canary_sends(&mut self, frames: &[Bytes], skip: usize) {
        let mut batch: SmallVec<[Frame; 8]> = SmallVec::new();
        for (n, raw) in frames.iter().enumerate() {
            let Some(f) = parse_frame(raw) else { continue };
            if n >= skip {
                self.canary
                    .to_broker
                    .push_back((f.kind(), f.payload().to_vec()));
            }
            batch.push(f);
        }
        let client = self.canary.id;
        self.input(Input::ClientFrames {
            client,
            frames: batch,
        });
    }

    fn canary_publish(&mut self) {
        self.canary.published += 1;
        let body = format!("canary-{}", self.canary.published).into_bytes();
        self.note(|| "op canary publishes".into());
        let publish = method_frame(CANARY_CH, ids::BASIC_PUBLISH, |w| {
            w.u16(0)
                .shortstr(b"")
                .shortstr(b"canary-q")
                .bit(false)
                .bit(false);
        });
        let mut frames = vec![publish];
        frames.extend(content(CANARY_CH, &body, FRAME_MIN_SIZE));
        self.canary_sends(&frames, 0);
    }

    fn canary_delivery(&mut self) {
        let Some((up, ch)) = self.canary.up else {
            return;
        };
        self.canary.delivered += 1;
        let n = self.canary.delivered;
        self.note(|| "op canary delivery".into());
        let mut frames = vec![method_frame(ch, ids::BASIC_DELIVER, |w| {
            w.shortstr(CANARY_TAG)
                .u64(n)
                .bit(false)
                .shortstr(b"")
                .shortstr(b"canary-q");
        })];
        frames.extend(content(
            ch,
            format!("canary-delivery-{n}").as_bytes(),
            FRAME_MIN_SIZE,
        ));
        self.broker_sends(up, frames);
    }

    /// Brokers that can send (not closed by the hub).
    fn live(&self) -> Vec<usize> {
        (0..self.brokers.len())
            .filter(|&i| !self.brokers[i].gone)
            .collect()
    }

    fn replies(&mut self, which: u8, count: u8) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let i = pick(&live, which);
        let b = &mut self.brokers[i];
        let n = match count {
            0 => b.pending.len(),
            c => usize::from(c % 16),
        };
        let frames = b.take(n);
        let up = b.id;
        self.note(|| format!("op {up} replies {n}"));
        if !frames.is_empty() {
            self.broker_sends(up, frames);
        }
    }

    /// The broker sends everything it owes on every connection, until nothing is owed.
    fn settle(&mut self) {
        for _ in 0..64 {
            let mut any = false;
            for i in self.live() {
                if self.brokers[i].gone || self.brokers[i].pending.is_empty() {
                    continue;
                }
                any = true;
                let frames = self.brokers[i].take(usize::MAX);
                let up = self.brokers[i].id;
                self.broker_sends(up, frames);
            }
            if !any {
                return;
            }
        }
        self.fail("the broker kept owing replies after 64 rounds of answers");
    }

    fn broker_acts(&mut self, which: u8, kind: u8, pick_byte: u8, size: u8) {
        let live: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|&i| self.brokers[i].check.is_running())
            .collect();
        if live.is_empty() {
            return;
        }
        let i = pick(&live, which);
        let up = self.brokers[i].id;
        let canary = self.canary.up;
        let channels: Vec<(u16, ChannelState)> = self.brokers[i]
            .check
            .channels()
            .filter(|(ch, _)| canary != Some((up, *ch)))
            .collect();
        let open: Vec<u16> = channels
            .iter()
            .filter(|(_, s)| *s == ChannelState::Open)
            .map(|(ch, _)| *ch)
            .collect();
        match kind % 6 {
            0 | 1 => {
                let closable: Vec<u16> = channels
                    .iter()
                    .filter(|(_, s)| matches!(s, ChannelState::Open | ChannelState::Closing))
                    .map(|(ch, _)| *ch)
                    .collect();
                if closable.is_empty() {
                    return;
                }
                let ch = pick(&closable, pick_byte);
                self.note(|| format!("op {up} closes ch{ch} with 404"));
                self.brokers[i].prune(ch);
                let close = encode::close(
                    ch,
                    &Close {
                        code: 404,
                        text: "NOT_FOUND - no queue 'fuzz' in vhost '/'".into(),
                        class_id: 50,
                        method_id: 10,
                    },
                );
                self.broker_sends(up, vec![close]);
            }
            2 | 3 => {
                if open.is_empty() {
                    return;
                }
                let ch = pick(&open, pick_byte);
                let n = pick(&SIZES, size).min(self.body_budget);
                self.body_budget -= n;
                let tag = self.brokers[i]
                    .check
                    .consumer_tags(ch)
                    .first()
                    .cloned()
                    .unwrap_or_else(|| b"fz-ctag".to_vec());
                let dtag = self.brokers[i].next_delivery(ch);
                self.note(|| format!("op {up} delivers {n} bytes on ch{ch}"));
                let mut frames = vec![method_frame(ch, ids::BASIC_DELIVER, |w| {
                    w.shortstr(&tag)
                        .u64(dtag)
                        .bit(false)
                        .shortstr(b"")
                        .shortstr(b"q");
                })];
                frames.extend(content(ch, &vec![b'f'; n], self.brokers[i].frame_max()));
                self.broker_sends(up, frames);
            }
            4 => {
                let with_tags: Vec<(u16, Vec<u8>)> = open
                    .iter()
                    .flat_map(|&ch| {
                        self.brokers[i]
                            .check
                            .consumer_tags(ch)
                            .iter()
                            .map(move |t| (ch, t.clone()))
                    })
                    .collect();
                if with_tags.is_empty() {
                    return;
                }
                let (ch, tag) = with_tags[usize::from(pick_byte) % with_tags.len()].clone();
                self.note(|| format!("op {up} cancels consumer on ch{ch}"));
                let cancel = method_frame(ch, ids::BASIC_CANCEL, |w| {
                    w.shortstr(&tag).bit(true);
                });
                self.broker_sends(up, vec![cancel]);
            }
            _ => {
                let frame = if pick_byte & 1 == 1 {
                    encode::blocked("low on memory")
                } else {
                    encode::unblocked()
                };
                self.note(|| format!("op {up} (un)blocks"));
                self.broker_sends(up, vec![frame]);
            }
        }
    }

    // ----- time -------------------------------------------------------------------------

    /// Lets `d` pass: timers fire at their own instants, and the broker sends a heartbeat on
    /// every open upstream once per [`STEP`].
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        while self.now < target {
            let next = (self.now + STEP).min(target);
            self.fire_until(next);
            self.now = next;
            let ups: Vec<UpstreamId> = self
                .brokers
                .iter()
                .filter(|b| !b.gone && b.check.negotiated().is_some())
                .map(|b| b.id)
                .collect();
            for up in ups {
                self.broker_sends(up, vec![Bytes::from_static(HEARTBEAT)]);
            }
        }
        self.fire_until(self.now);
    }

    fn fire_until(&mut self, t: Instant) {
        let mut fired = 0;
        while let Some(at) = self.hub.poll_timeout() {
            if at > t {
                return;
            }
            fired += 1;
            if fired > 10_000 {
                self.fail(format!(
                    "a timer keeps firing at {:?}",
                    at.duration_since(epoch())
                ));
            }
            self.now = self.now.max(at);
            self.input(Input::Timeout);
        }
    }

    // ----- plumbing ---------------------------------------------------------------------

    fn input(&mut self, input: Input) {
        self.hub.handle(self.now, input);
        self.pump();
        self.accept_dials();
    }

    /// The broker sends whole frames on upstream `up`.
    fn broker_sends(&mut self, up: UpstreamId, frames: Vec<Bytes>) {
        let Some(i) = self.brokers.iter().position(|b| b.id == up) else {
            return;
        };
        let mut batch: SmallVec<[Frame; 8]> = SmallVec::new();
        for raw in &frames {
            let Some(f) = parse_frame(raw) else { continue };
            self.brokers[i].check.from_broker(&f);
            if self.canary.up == Some((up, f.channel())) {
                self.canary
                    .to_client
                    .push_back((f.kind(), f.payload().to_vec()));
            }
            if self.trace.is_some() && f.kind() != FrameType::Heartbeat {
                let d = describe(&f);
                self.note(|| format!("{up} -> {d}"));
            }
            batch.push(f);
        }
        self.input(Input::UpstreamFrames {
            upstream: up,
            frames: batch,
        });
    }

    /// Accepts every dial at once and plays the broker's side of the handshake.
    fn accept_dials(&mut self) {
        if self.accepting {
            return;
        }
        self.accepting = true;
        while let Some(up) = self.dials.pop_front() {
            self.note(|| format!("{up} dialled and accepted"));
            self.brokers
                .push(Broker::new(up, &self.config.extra_exchange_types));
            self.hub.handle(
                self.now,
                Input::UpstreamConnected {
                    upstream: up,
                    node: 0,
                },
            );
            self.pump();
            for frame in broker_handshake(self.offer) {
                self.broker_sends(up, vec![frame]);
            }
        }
        self.accepting = false;
    }

    fn pump(&mut self) {
        while let Some(o) = self.hub.poll_output() {
            match o {
                Output::ToClient { client, data } => self.client_receives(client, &data),
                Output::CloseClient { client } => {
                    self.note(|| format!("close {client}"));
                    if client == self.canary.id {
                        self.fail("the hub closed the canary's socket");
                    }
                    match self.clients.iter_mut().find(|c| c.id == client) {
                        Some(c) => c.gone = true,
                        None => self.fail(format!("CloseClient for unknown {client}")),
                    }
                }
                Output::Dial { upstream, .. } => self.dials.push_back(upstream),
                Output::ToUpstream { upstream, data } => self.upstream_receives(upstream, &data),
                Output::CloseUpstream { upstream } => {
                    self.note(|| format!("close {upstream}"));
                    if self.canary.up.is_some_and(|(u, _)| u == upstream) {
                        self.fail("the hub closed the canary's upstream");
                    }
                    match self.brokers.iter_mut().find(|b| b.id == upstream) {
                        Some(b) => b.gone = true,
                        None => self.fail(format!("CloseUpstream for undialled {upstream}")),
                    }
                }
                Output::Event(e) => self.event(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trivial_and_seeded_inputs_run() {
        let session = HubInput::new([0; 4])
            .raw(0, &encode::channel_open(1))
            .op(HubOp::Settle, &[])
            .build(0, 0, Build::Publish, &[0, 3, 0])
            .op(HubOp::Broker, &[0, 2, 0, 3])
            .build(0, 0, Build::Close, &[])
            .op(HubOp::Settle, &[])
            .op(HubOp::Join, &[])
            .raw(1, &encode::channel_open(1))
            .into_bytes();
        let stats = hub_client_stats(&session);
        assert!(stats.publishes >= 1, "{stats:?}");
        assert_eq!(stats.opens_from_pool, 1, "{stats:?}");
        for data in [&[][..], &[0; 64], &[0xff; 64], &session] {
            hub_client(data);
        }
        // Deterministic: the same input gives the same run.
        assert_eq!(hub_client_trace(&session), hub_client_trace(&session));
    }
}
