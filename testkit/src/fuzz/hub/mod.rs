//! The `hub_client` fuzz target (see [`hub_client`] for the world it builds, its input and
//! what it checks). This file holds the world and its operations; `checks` what it checks,
//! `links` warren's connections to the broker (the test kit's fake RabbitMQ,
//! [`crate::broker`]), `build` the frames a fuzzed client sends, `input` how the input bytes
//! read. The rules warren is held to are [`crate::rules`]; credentials, hellos, frame
//! cutting and trace stamps come from [`crate::hub_world`], which core's hub scenarios use
//! too.

mod build;
mod checks;
mod input;
mod links;

use crate::broker::{Broker, BrokerConfig, BrokerOutput, ConnId};
use crate::hub_world::{
    describe_event, epoch, header, hello, hello_with, parse_frame, FrameReader,
};
use crate::rules::*;
use crate::trace::describe;
use build::*;
use input::*;
pub use input::{Build, HubInput, HubOp};
use links::*;

use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};
use warren_core::frame::{method_frame, Frame, FrameType, FRAME_MIN_SIZE};
use warren_core::handshake::{ClientCapabilities, ClientHello};
use warren_core::hub::{
    ClientId, Hub, HubConfig, HubEvent, HubStats, Input, Output, Peer, Placement, UpstreamId,
};
use warren_core::method::{encode, ids, MethodId, Tune};

// ----- the fuzz body --------------------------------------------------------------------

/// Fuzz target: a hub fed arbitrary client bytes after a valid handshake and admission,
/// with the test kit's fake RabbitMQ and a well-behaved neighbour, checked against the rules by which
/// RabbitMQ closes a whole connection (B7). It panics, naming the broken property, when one
/// does not hold.
///
/// # The world
///
/// One hub; the test kit's fake RabbitMQ ([`crate::broker`]) behind every upstream the hub
/// dials (it accepts every dial and answers what warren sends as RabbitMQ would, but its
/// replies reach warren only when the input lets them through; its heartbeats at once); a
/// well-behaved *canary* client; and up to four *fuzzed* clients. The canary joins first,
/// opens its channel 1, declares its exclusive queue and consumes from it; it then publishes
/// to that queue and receives deliveries whenever the input asks, and once more at the end. Fuzzed clients join after it and everything they send is decided
/// by the input. The broker has two plugins' exchange types, one of which warren is not told
/// of: a declare of that type or of one nobody knows makes warren dial a *probe*, a
/// connection that only asks the broker about the type (B7). It is an upstream like the
/// others: accepted at once, its answers held like any reply, its bytes checked alike.
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
/// - the broker closes no connection for a protocol error either ([`crate::broker`] reads
///   warren's bytes through the same rules);
/// - no upstream is lost or fails (the broker is always reachable and alive);
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
/// Virtual time let pass beyond a timeout, so that it has surely fired.
const STEP: Duration = Duration::from_secs(1);
/// The canary's frame_max and channel.
const CANARY_FRAME_MAX: u32 = 131_072;
const CANARY_CH: u16 = 1;
const CANARY_TAG: &[u8] = b"canary-ctag";
/// The canary's exclusive queue: what it publishes comes back to it.
const CANARY_QUEUE: &str = "canary-q";
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
/// Queue names: the canary's exclusive queue is among them, which warren must lock against
/// every fuzzed client; the last three name `q`, `q2` and the canary's queue for a declare, a
/// bind or a delete (RabbitMQ drops CR and LF there), and other queues elsewhere.
const QUEUES: [&[u8]; 8] = [
    b"",
    b"q",
    b"q2",
    b"amq.gen-1",
    CANARY_QUEUE.as_bytes(),
    b"q\r\n",
    b"q2\n",
    b"canary-q\n",
];
const TAGS: [&[u8]; 4] = [b"", b"t1", b"t2", b"amq.ctag-1"];
/// Exchange types a fuzzed client declares: RabbitMQ's four; a plugin's that warren is told
/// of (`x-delayed-message`); types nobody knows, which warren asks the broker about on a
/// connection of its own and then refuses with the broker's 503 (B7); and a plugin's that
/// only the broker knows (`x-consistent-hash`), which warren must learn from it and forward.
/// The last comes last so that the inputs written before it kept their meaning.
const EXCHANGE_TYPES: [&[u8]; 9] = [
    b"direct",
    b"fanout",
    b"topic",
    b"headers",
    PLUGIN_TYPES[0].as_bytes(),
    b"bogus",
    b"",
    b"DIRECT",
    PLUGIN_TYPES[1].as_bytes(),
];
/// The broker's plugin types: the one warren is told of, and one it must ask about.
const PLUGIN_TYPES: [&str; 2] = ["x-delayed-message", "x-consistent-hash"];
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
    template: ClientHello,
    broker: Broker,
    links: Vec<Link>,
    dials: VecDeque<UpstreamId>,
    canary: Canary,
    clients: Vec<Fuzzed>,
    body_budget: usize,
    time_left: Duration,
    setting_up: bool,
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
            extra_exchange_types: vec![PLUGIN_TYPES[0].into()],
            upstream_name: "warren-fuzz".into(),
            ..HubConfig::default()
        };
        let broker = BrokerConfig {
            channel_max: [0, 2047, 2, 3, 5, 8, 1, 64][usize::from(broker_byte & 7)],
            frame_max: [131_072, 4096, 0, 8192][two(broker_byte, 3)],
            heartbeat: [60, 5, 0, 600][two(broker_byte, 5)],
            plugin_exchange_types: PLUGIN_TYPES.map(String::from).to_vec(),
            ..BrokerConfig::default()
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
            template,
            broker: Broker::new(broker),
            links: Vec::new(),
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

    /// The canary is admitted, opens its channel, declares its queue and consumes from it;
    /// the first fuzzed client joins.
    fn setup(&mut self) {
        self.flow();
        let open = encode::channel_open(CANARY_CH);
        let declare = crate::hub_world::queue_declare(CANARY_CH, CANARY_QUEUE, true);
        let queue = CANARY_QUEUE.as_bytes();
        let consume = crate::hub_world::consume(CANARY_CH, queue, CANARY_TAG, true, false);
        self.canary_sends(&[open, declare, consume], 1);
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
                .shortstr(CANARY_QUEUE.as_bytes())
                .bit(false)
                .bit(false);
        });
        let mut frames = vec![publish, header(CANARY_CH, body.len() as u64)];
        frames.extend(
            body.chunks(FRAME_MIN_SIZE as usize - 8)
                .map(|part| crate::hub_world::body(CANARY_CH, part)),
        );
        self.canary_sends(&frames, 0);
    }

    /// A message for the canary arrives in its queue from elsewhere.
    fn canary_delivery(&mut self) {
        self.canary.delivered += 1;
        let body = format!("canary-delivery-{}", self.canary.delivered);
        self.note(|| "op canary delivery".into());
        self.broker.inject(self.now, CANARY_QUEUE, body.into());
        self.flow();
    }

    /// Links whose socket is open.
    fn live(&self) -> Vec<usize> {
        (0..self.links.len())
            .filter(|&i| !self.links[i].gone)
            .collect()
    }

    fn replies(&mut self, which: u8, count: u8) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let i = pick(&live, which);
        let n = match count {
            0 => self.links[i].held.len(),
            c => usize::from(c % 16),
        };
        let up = self.links[i].id;
        self.note(|| format!("op {up} replies {n}"));
        self.release(i, n);
        self.flow();
    }

    /// The broker does something of its own on a running connection: closes a channel,
    /// delivers to a consumer, loses a consumer's queue, or raises or clears an alarm.
    fn broker_acts(&mut self, which: u8, kind: u8, pick_byte: u8, size: u8) {
        let live: Vec<usize> = self
            .live()
            .into_iter()
            .filter(|&i| self.links[i].check.is_running())
            .collect();
        if live.is_empty() {
            return;
        }
        let i = pick(&live, which);
        let (up, conn) = (self.links[i].id, self.links[i].conn);
        let canary = self.canary.up;
        let not_canary = |ch: &u16| canary != Some((up, *ch));
        let consumers: Vec<(u16, String)> = self
            .broker
            .consumers_on(conn)
            .into_iter()
            .filter(|(ch, _)| not_canary(ch))
            .collect();
        let now = self.now;
        match kind % 6 {
            0 | 1 => {
                let open: Vec<u16> = self
                    .broker
                    .open_channels(conn)
                    .into_iter()
                    .filter(not_canary)
                    .collect();
                if open.is_empty() {
                    return;
                }
                let ch = pick(&open, pick_byte);
                self.note(|| format!("op {up} closes ch{ch} with 404"));
                let text = "no queue 'fuzz' in vhost '/'";
                let cause = ids::QUEUE_DECLARE;
                self.broker.fail_channel(now, conn, ch, 404, text, cause);
            }
            2 | 3 => {
                if consumers.is_empty() {
                    return;
                }
                let (ch, queue) = &consumers[usize::from(pick_byte) % consumers.len()];
                let n = pick(&SIZES, size).min(self.body_budget);
                self.body_budget -= n;
                self.note(|| format!("op {up} delivers {n} bytes to ch{ch}'s queue"));
                self.broker.inject(now, queue, vec![b'f'; n].into());
            }
            4 => {
                if consumers.is_empty() {
                    return;
                }
                let (ch, queue) = &consumers[usize::from(pick_byte) % consumers.len()];
                self.note(|| format!("op {up} loses the queue ch{ch} consumes from"));
                self.broker.delete_queue_by_operator(now, queue);
            }
            _ => {
                let alarm = (pick_byte & 1 == 1).then_some("low on memory");
                self.note(|| format!("op broker alarm {alarm:?}"));
                self.broker.set_blocked(now, alarm);
            }
        }
        self.flow();
    }

    // ----- time -------------------------------------------------------------------------

    /// Lets `d` pass: the hub's and the broker's timers fire at their own instants.
    fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        self.fire_until(target);
        self.now = target;
    }

    fn fire_until(&mut self, t: Instant) {
        let mut fired = 0;
        loop {
            let hub = self.hub.poll_timeout().filter(|&at| at <= t);
            let broker = self.broker.poll_timeout().filter(|&at| at <= t);
            let beat = self.next_beat().filter(|&(at, _)| at <= t);
            let Some(at) = hub
                .into_iter()
                .chain(broker)
                .chain(beat.map(|(at, _)| at))
                .min()
            else {
                return;
            };
            fired += 1;
            if fired > 10_000 {
                self.fail(format!(
                    "a timer keeps firing at {:?}",
                    at.duration_since(epoch())
                ));
            }
            self.now = self.now.max(at);
            match beat {
                _ if hub == Some(at) => self.input(Input::Timeout),
                Some((when, i)) if when == at => self.beat(i),
                _ => {
                    self.broker.handle_timeout(self.now);
                    self.flow();
                }
            }
        }
    }

    // ----- plumbing ---------------------------------------------------------------------

    fn input(&mut self, input: Input) {
        self.hub.handle(self.now, input);
        self.flow();
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
                    let Some(l) = self.links.iter_mut().find(|l| l.id == upstream) else {
                        self.fail(format!("CloseUpstream for undialled {upstream}"));
                    };
                    l.gone = true;
                    l.held.clear();
                    let conn = l.conn;
                    self.broker.handle_closed(self.now, conn);
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
            .settle()
            .build(0, 0, Build::Publish, &[0, 3, 0])
            .op(HubOp::Broker, &[0, 2, 0, 3])
            .build(0, 0, Build::Close, &[])
            .settle()
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
