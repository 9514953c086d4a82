//! A scripted world around one hub: clients and a broker that are just the test's hands,
//! virtual time, and a trace of everything that crosses the hub's boundary. Core's hub
//! scenarios (`testkit/tests/hub_scenarios.rs`, `hub_control.rs`) drive it through warren-core's
//! public API only; it lives here so that `core/src` holds production code only (issue 15).
//!
//! Its pieces are shared with the `hub_client` fuzz target's world ([`crate::fuzz`]): the
//! credentials and [`ClientHello`]s, the broker's side of the handshake, the [`FrameReader`]
//! that cuts what the hub sent into frames, the [`epoch`]. Its trace is written with
//! [`crate::trace`], the test kit's one trace printer.

pub use crate::trace::describe;
use crate::trace::line;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use warren_core::credentials::{Credentials, Secret};
use warren_core::frame::{
    method_frame, Frame, FrameDecoder, FrameError, FrameType, PROTOCOL_HEADER,
};
use warren_core::handshake::{ClientCapabilities, ClientHello};
use warren_core::hub::{self, ClientId, Hub, HubConfig, HubEvent, Input, Output, UpstreamId};
use warren_core::login::Login;
use warren_core::method::{self, encode, ids, Close, ConnectionStart, Method, MethodId, Tune};
use warren_core::nodes::NodeOrder;
use warren_core::table::{FieldTable, FieldValue};
use warren_core::wire::Writer;

/// An arbitrary origin for virtual time: worlds count from here, and nothing depends on its
/// value. Reading the clock once for it is harmless.
#[allow(clippy::disallowed_methods)]
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Bytes one side received and has not cut into whole frames yet, cut as the runtime's
/// reader cuts them.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// More bytes arrived.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the protocol header if the bytes start with it.
    pub fn protocol_header(&mut self) -> bool {
        let found = self.buf.starts_with(PROTOCOL_HEADER);
        if found {
            let _ = self.buf.split_to(PROTOCOL_HEADER.len());
        }
        found
    }

    /// The next whole frame no larger than `frame_max`, if one has arrived.
    pub fn next_frame(&mut self, frame_max: u32) -> Result<Option<Frame>, FrameError> {
        FrameDecoder::new(frame_max).decode(&mut self.buf)
    }

    /// No bytes are left over (no half frame is held).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Who a line of the trace is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// A client.
    C(ClientId),
    /// An upstream (the broker's end of it).
    U(UpstreamId),
}

/// One hub, the test's clients and broker around it, and virtual time.
pub struct World {
    /// The hub under test.
    pub hub: Hub,
    /// Its configuration, for broker logins made outside it ([`World::adopt`]).
    config: HubConfig,
    /// Virtual time.
    pub now: Instant,
    trace: String,
    /// Bytes each peer received and has not been decoded into whole frames yet.
    rx: BTreeMap<Peer, FrameReader>,
    /// Frames each peer received since the test last took them.
    pub inbox: BTreeMap<Peer, Vec<Frame>>,
    /// Dials the hub asked for that the test has not answered yet.
    pub dials: Vec<UpstreamId>,
    /// The node order of each dial; a dial connects to the first node of its order.
    pub dial_orders: BTreeMap<UpstreamId, NodeOrder>,
    /// Sockets the hub closed.
    pub closed: Vec<Peer>,
    /// Events the hub reported.
    pub events: Vec<HubEvent>,
}

/// RabbitMQ's default tune: what its broker offers, and what these worlds' brokers offer
/// unless a test says otherwise.
pub const RABBITMQ_TUNE: Tune = Tune {
    channel_max: 2047,
    frame_max: 131_072,
    heartbeat: 60,
};

/// [`RABBITMQ_TUNE`] without heartbeats, so that a scenario can let minutes pass in one step.
pub const NO_HEARTBEATS: Tune = Tune {
    heartbeat: 0,
    ..RABBITMQ_TUNE
};

/// guest/guest on vhost `/`: the credentials of every client and hub in these worlds.
pub fn creds() -> Credentials {
    Credentials {
        user: "guest".into(),
        password: Secret::new("guest"),
        vhost: "/".into(),
    }
}

/// A handshake finished with [`creds`], `tune` and `capabilities`.
pub fn hello_with(tune: Tune, capabilities: ClientCapabilities) -> ClientHello {
    ClientHello {
        credentials: creds(),
        tune,
        capabilities,
        connection_name: None,
        product: None,
        version: None,
    }
}

/// A handshake finished with [`creds`], channel_max 2047 and every capability.
pub fn hello(frame_max: u32, heartbeat: u16) -> ClientHello {
    hello_with(
        Tune {
            channel_max: 2047,
            frame_max,
            heartbeat,
        },
        ClientCapabilities {
            authentication_failure_close: true,
            connection_blocked: true,
            consumer_cancel_notify: true,
        },
    )
}

/// The broker's `Connection.Start`, offering PLAIN.
pub fn connection_start() -> Bytes {
    encode::start(&ConnectionStart {
        server_properties: FieldTable::default(),
        mechanisms: "AMQPLAIN PLAIN".into(),
        locales: "en_US".into(),
    })
}

/// What a broker sends, one frame at a time, to accept warren's login: `Connection.Start`,
/// `Connection.Tune` offering `tune`, and (after warren's `TuneOk` and `Open`) `OpenOk`.
pub fn broker_handshake(tune: Tune) -> [Bytes; 3] {
    [
        connection_start(),
        encode::tune(tune, false),
        encode::open_ok(),
    ]
}

impl World {
    /// A hub with `config`, no clients yet, at [`epoch`].
    pub fn new(config: HubConfig) -> World {
        World {
            hub: Hub::new(config.clone(), creds(), 42),
            config,
            now: epoch(),
            trace: String::new(),
            rx: BTreeMap::new(),
            inbox: BTreeMap::new(),
            dials: Vec::new(),
            dial_orders: BTreeMap::new(),
            closed: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The trace so far.
    pub fn trace(&self) -> &str {
        &self.trace
    }

    fn line(&mut self, s: impl Display) {
        let _ = writeln!(self.trace, "{}", line(self.now - epoch(), s));
    }

    /// Adds a client that finished its handshake.
    pub fn join(&mut self, hello: ClientHello) -> ClientId {
        let id = self.hub.add_client(self.now, hello);
        self.line(format!("{id} joins"));
        self.pump();
        id
    }

    /// Parses frames a peer sends, tracing each as sent by `from`.
    fn traced_frames(&mut self, from: impl Display, frames: &[Bytes]) -> SmallVec<[Frame; 8]> {
        let mut batch = SmallVec::new();
        for raw in frames {
            let f = to_frame(raw);
            self.line(format!("{from} -> {}", describe(&f)));
            batch.push(f);
        }
        batch
    }

    /// A client sends frames.
    pub fn client_sends(&mut self, c: ClientId, frames: &[Bytes]) {
        let frames = self.traced_frames(c, frames);
        self.hub
            .handle(self.now, Input::ClientFrames { client: c, frames });
        self.pump();
    }

    /// A client's socket closes.
    pub fn client_drops(&mut self, c: ClientId) {
        self.line(format!("{c} socket closed"));
        self.hub.handle(self.now, Input::ClientClosed { client: c });
        self.pump();
    }

    /// The broker sends frames on upstream `u`.
    pub fn broker_sends(&mut self, u: UpstreamId, frames: &[Bytes]) {
        let frames = self.traced_frames(u, frames);
        let input = Input::UpstreamFrames {
            upstream: u,
            frames,
        };
        self.hub.handle(self.now, input);
        self.pump();
    }

    /// Any input, traced by its debug form.
    pub fn input(&mut self, what: &str, input: Input) {
        self.line(what);
        self.hub.handle(self.now, input);
        self.pump();
    }

    /// The socket of upstream `u` closes (a refused or failed dial, a reset), traced as
    /// `what`.
    pub fn upstream_closed(&mut self, what: &str, u: UpstreamId, reason: &str) {
        let reason = reason.to_owned();
        self.input(
            what,
            Input::UpstreamClosed {
                upstream: u,
                reason,
            },
        );
    }

    /// The dial for `u` succeeds and the broker sends `Connection.Start`.
    pub fn broker_starts(&mut self, u: UpstreamId) {
        self.connected(u);
        self.broker_sends(u, &[connection_start()]);
    }

    /// The dial for `u` succeeds and the broker completes the handshake with the given tune.
    pub fn broker_accepts(&mut self, u: UpstreamId, tune: Tune) {
        self.connected(u);
        for frame in broker_handshake(tune) {
            self.broker_sends(u, &[frame]);
        }
    }

    fn connected(&mut self, u: UpstreamId) {
        let node = self.dial_orders.get(&u).map_or(0, |o| o[0]);
        let input = Input::UpstreamConnected { upstream: u, node };
        self.input(&format!("{u} connected"), input);
    }

    /// The upstream the hub asked to dial last, if it has not connected yet.
    pub fn pending_dial(&self) -> Option<UpstreamId> {
        self.dials.last().copied()
    }

    /// Dials the pending upstream and lets the broker accept with RabbitMQ's defaults.
    pub fn accept_dial(&mut self) -> UpstreamId {
        self.accept_dial_with(RABBITMQ_TUNE)
    }

    /// Dials the pending upstream and lets the broker accept with `tune`.
    pub fn accept_dial_with(&mut self, tune: Tune) -> UpstreamId {
        let u = self.dials.pop().expect("a dial was requested");
        self.broker_accepts(u, tune);
        u
    }

    /// Hands the hub a broker connection that admission logged in and opened with `tune`
    /// (its proof of a new client's credentials), as [`Hub::adopt_upstream`] does.
    pub fn adopt(&mut self, tune: Tune) -> UpstreamId {
        let c = creds();
        let name = "proof".to_owned();
        let mut login = Login::new(
            self.now,
            &self.config,
            &c.user,
            &c.password,
            Some("/"),
            name,
        );
        login.on_connected(self.now);
        for frame in broker_handshake(tune) {
            login.on_frame(self.now, &to_frame(&frame));
        }
        let u = self.hub.adopt_upstream(self.now, login, 0);
        self.line(format!("{u} adopted"));
        self.pump();
        u
    }

    /// Advances virtual time to `now + d`, firing every timer on the way at its own instant.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        while let Some(at) = self.hub.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.hub.handle(self.now, Input::Timeout);
            self.pump();
        }
        self.now = target;
    }

    /// Drains outputs into the trace and the peers' inboxes.
    fn pump(&mut self) {
        while let Some(o) = self.hub.poll_output() {
            match o {
                Output::ToClient { client, data } => self.deliver(Peer::C(client), &data),
                Output::ToUpstream { upstream, data } => self.deliver(Peer::U(upstream), &data),
                Output::CloseClient { client } => {
                    self.line(format!("close {client}"));
                    self.closed.push(Peer::C(client));
                }
                Output::CloseUpstream { upstream } => {
                    self.line(format!("close {upstream}"));
                    self.closed.push(Peer::U(upstream));
                }
                Output::Dial {
                    upstream, nodes, ..
                } => {
                    self.line(format!("dial {upstream}"));
                    self.dials.push(upstream);
                    self.dial_orders.insert(upstream, nodes);
                }
                Output::Event(e) => {
                    self.line(format!("event {}", describe_event(&e, self.now)));
                    self.events.push(e);
                }
            }
        }
    }

    fn deliver(&mut self, to: Peer, data: &[u8]) {
        let rx = self.rx.entry(to).or_default();
        rx.push(data);
        let mut got = Vec::new();
        if rx.protocol_header() {
            got.push("protocol header".to_owned());
        }
        let mut frames = Vec::new();
        while let Some(f) = rx.next_frame(1 << 24).expect("valid frames") {
            got.push(describe(&f));
            frames.push(f);
        }
        let who = match to {
            Peer::C(c) => c.to_string(),
            Peer::U(u) => u.to_string(),
        };
        for g in got {
            self.line(format!("{who} <- {g}"));
        }
        self.inbox.entry(to).or_default().extend(frames);
    }

    /// Takes the frames a peer received so far.
    pub fn take(&mut self, p: Peer) -> Vec<Frame> {
        self.inbox.remove(&p).unwrap_or_default()
    }

    /// Takes the frames a peer received so far, each as the trace describes it.
    pub fn take_described(&mut self, p: Peer) -> Vec<String> {
        self.take(p).iter().map(describe).collect()
    }

    /// Takes the frames a peer received so far and gives the method of the first one.
    pub fn take_first_method(&mut self, p: Peer) -> Option<MethodId> {
        self.take(p).first().and_then(Frame::method_id)
    }

    /// Takes what client `c` received so far, which must start with a close, and gives it.
    pub fn take_close(&mut self, c: ClientId) -> Close {
        let got = self.take(Peer::C(c));
        got.first().and_then(close_reply).unwrap_or_else(|| {
            panic!(
                "{c} was not closed: {:?}",
                got.iter().map(describe).collect::<Vec<_>>()
            )
        })
    }

    /// Opens channel `ch` of client `c` on upstream `u` and lets the broker confirm it;
    /// returns the upstream channel number.
    pub fn open_on(&mut self, c: ClientId, ch: u16, u: UpstreamId) -> u16 {
        self.client_sends(c, &[channel_open(ch)]);
        let uch = self.broker_confirms_open(u);
        self.take(Peer::C(c));
        uch
    }

    /// The broker confirms the `Channel.Open` the hub sent on upstream `u` (taking what `u`
    /// received); returns the upstream channel number.
    pub fn broker_confirms_open(&mut self, u: UpstreamId) -> u16 {
        let uch = self
            .take(Peer::U(u))
            .iter()
            .find(|f| f.method_id() == Some(ids::CHANNEL_OPEN))
            .map(|f| f.channel())
            .expect("channel.open went upstream");
        self.broker_sends(u, &[channel_open_ok(uch)]);
        uch
    }
}

/// A world whose hub never pools channels, for scenarios that follow a channel's close to
/// the broker.
pub fn no_recycling() -> World {
    World::new(HubConfig {
        recycling: false,
        ..HubConfig::default()
    })
}

/// `w` with one admitted client that has channel `ch` open on the upstream: the world, the
/// client and the upstream.
pub fn with_channel(w: World, ch: u16) -> (World, ClientId, UpstreamId) {
    with_channel_tuned(w, ch, RABBITMQ_TUNE)
}

/// [`with_channel`] with a broker that tunes the upstream to `tune`.
pub fn with_channel_tuned(mut w: World, ch: u16, tune: Tune) -> (World, ClientId, UpstreamId) {
    let c = w.join(hello(131_072, 0));
    let u = w.accept_dial_with(tune);
    w.open_on(c, ch, u);
    (w, c, u)
}

/// Two admitted clients with channel 1 on the same upstream, in a hub with `config` but
/// without recycling or heartbeats: the world, the clients and the upstream.
pub fn neighbours(config: HubConfig) -> (World, ClientId, ClientId, UpstreamId) {
    let w = World::new(HubConfig {
        recycling: false,
        upstream_heartbeat: 0,
        ..config
    });
    let (mut w, c1, u) = with_channel_tuned(w, 1, NO_HEARTBEATS);
    let c2 = w.join(hello(131_072, 0));
    w.take(Peer::C(c2));
    w.open_on(c2, 1, u);
    w.take(Peer::U(u));
    (w, c1, c2, u)
}

/// The first whole frame of bytes a world built itself, if they hold one.
pub fn parse_frame(raw: &[u8]) -> Option<Frame> {
    FrameDecoder::new(u32::MAX)
        .decode(&mut BytesMut::from(raw))
        .ok()
        .flatten()
}

/// Parses one whole frame from bytes built by the test.
pub fn to_frame(raw: &Bytes) -> Frame {
    let f = parse_frame(raw).expect("test frame is valid and whole");
    assert_eq!(f.wire_len(), raw.len(), "one frame per buffer");
    f
}

/// A hub event in one line, by the test kit's trace printer, with the hub's own ids.
pub fn describe_event(e: &HubEvent, now: Instant) -> String {
    crate::trace::describe_event(e, now, |p| match p {
        hub::Peer::Client(c) => c.to_string(),
        hub::Peer::Upstream(u) => u.to_string(),
    })
}

// ----- frame builders ---------------------------------------------------------------

/// A method frame with arguments written by `args`.
pub fn m(ch: u16, id: MethodId, args: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    method_frame(ch, id, args)
}

/// A client's `Channel.Open` on `ch`.
pub fn channel_open(ch: u16) -> Bytes {
    encode::channel_open(ch)
}

/// The broker's `Channel.OpenOk` on `ch`.
pub fn channel_open_ok(ch: u16) -> Bytes {
    encode::channel_open_ok(ch)
}

/// A `Channel.Close` on `ch`, or a `Connection.Close` on channel 0.
pub fn close(ch: u16, code: u16, text: &str) -> Bytes {
    encode::close(
        ch,
        &Close {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        },
    )
}

/// A `Channel.CloseOk` on `ch`, or a `Connection.CloseOk` on channel 0.
pub fn close_ok(ch: u16) -> Bytes {
    encode::close_ok(ch)
}

/// A `basic.publish` to `exchange` with routing key `rk`, not immediate.
pub fn publish(ch: u16, exchange: &str, mandatory: bool) -> Bytes {
    m(ch, ids::BASIC_PUBLISH, |w| {
        w.u16(0)
            .shortstr(exchange.as_bytes())
            .shortstr(b"rk")
            .bit(mandatory)
            .bit(false);
    })
}

/// A content header of class 60 with no properties.
pub fn header(ch: u16, size: u64) -> Bytes {
    let mut payload = BytesMut::new();
    Writer::new(&mut payload).u16(60).u16(0).u64(size).u16(0);
    Frame::new(FrameType::Header, ch, &payload).freeze()
}

/// A body frame carrying `data`.
pub fn body(ch: u16, data: &[u8]) -> Bytes {
    Frame::new(FrameType::Body, ch, data).freeze()
}

/// The broker's `basic.deliver` to consumer `ctag` with delivery tag `tag`.
pub fn deliver(ch: u16, tag: u64) -> Bytes {
    m(ch, ids::BASIC_DELIVER, |w| {
        w.shortstr(b"ctag")
            .u64(tag)
            .bit(false)
            .shortstr(b"")
            .shortstr(b"q");
    })
}

/// `queue.declare` (non-durable, not auto-delete, waiting for the reply).
pub fn queue_declare(ch: u16, name: &str, exclusive: bool) -> Bytes {
    declare_queue(ch, name, false, exclusive)
}

/// A passive `queue.declare`: how a client reaches a queue the broker named, since RabbitMQ
/// refuses any other declare of an `amq.` name (403).
pub fn queue_declare_passive(ch: u16, name: &str) -> Bytes {
    declare_queue(ch, name, true, false)
}

/// `queue.declare` of a durable queue with `x-queue-type` set to `kind` (`stream`,
/// `quorum`): how a client declares a queue whose misuse RabbitMQ answers with a connection
/// error (B7), and how warren learns its type from the `declare-ok`.
pub fn typed_declare(ch: u16, name: &str, kind: &str) -> Bytes {
    let args = FieldTable::default().with("x-queue-type", warren_core::table::longstr(kind));
    let mut raw = BytesMut::new();
    args.encode(&mut raw);
    m(ch, ids::QUEUE_DECLARE, |w| {
        w.u16(0)
            .shortstr(name.as_bytes())
            .bit(false)
            .bit(true)
            .bit(false)
            .bit(false)
            .bit(false)
            .raw(&raw);
    })
}

/// `basic.qos` with a prefetch count, for the channel (`global`) or each consumer: a stream
/// consumer needs one, and a global one bars consumers of quorum queues (B7).
pub fn qos(ch: u16, count: u16, global: bool) -> Bytes {
    m(ch, ids::BASIC_QOS, |w| {
        w.u32(0).u16(count).bit(global);
    })
}

/// `queue.declare` with the given passive and exclusive flags, the others off, no arguments.
fn declare_queue(ch: u16, name: &str, passive: bool, exclusive: bool) -> Bytes {
    m(ch, ids::QUEUE_DECLARE, |w| {
        w.u16(0)
            .shortstr(name.as_bytes())
            .bit(passive)
            .bit(false)
            .bit(exclusive)
            .bit(false)
            .bit(false)
            .u32(0);
    })
}

/// `exchange.declare` of type `kind` (not passive, durable, auto-delete or internal, waiting
/// for the reply, no arguments).
pub fn exchange_declare(ch: u16, name: &str, kind: &str) -> Bytes {
    exchange_declare_with(ch, name, kind, false)
}

/// [`exchange_declare`], with `nowait` set or not: a client that does not wait for the
/// reply sends what follows on the channel at once.
pub fn exchange_declare_with(ch: u16, name: &str, kind: &str, nowait: bool) -> Bytes {
    m(ch, ids::EXCHANGE_DECLARE, |w| {
        w.u16(0)
            .shortstr(name.as_bytes())
            .shortstr(kind.as_bytes())
            .bit(false)
            .bit(false)
            .bit(false)
            .bit(false)
            .bit(nowait)
            .u32(0);
    })
}

/// `basic.consume` from `queue` (not no-local or exclusive, no arguments); an empty `tag`
/// leaves the consumer tag to the broker.
pub fn consume(ch: u16, queue: &[u8], tag: &[u8], no_ack: bool, nowait: bool) -> Bytes {
    consume_with(ch, queue, tag, (no_ack, nowait), &FieldTable::default())
}

/// `basic.consume` of `queue` with acks and the `x-stream-offset` argument `offset`: what
/// RabbitMQ's channel crashes on when it is no offset (B7).
pub fn offset_consume(ch: u16, queue: &[u8], tag: &[u8], offset: FieldValue) -> Bytes {
    let args = FieldTable::default().with("x-stream-offset", offset);
    consume_with(ch, queue, tag, (false, false), &args)
}

/// `basic.consume` with its `no_ack` and `nowait` flags and arguments `args`.
fn consume_with(
    ch: u16,
    queue: &[u8],
    tag: &[u8],
    (no_ack, nowait): (bool, bool),
    args: &FieldTable,
) -> Bytes {
    let mut raw = BytesMut::new();
    args.encode(&mut raw);
    m(ch, ids::BASIC_CONSUME, |w| {
        w.u16(0)
            .shortstr(queue)
            .shortstr(tag)
            .bit(false)
            .bit(no_ack)
            .bit(false)
            .bit(nowait)
            .raw(&raw);
    })
}

/// `basic.get` from `queue`.
pub fn basic_get(ch: u16, queue: &str, no_ack: bool) -> Bytes {
    m(ch, ids::BASIC_GET, |w| {
        w.u16(0).shortstr(queue.as_bytes()).bit(no_ack);
    })
}

/// `queue.purge` of `queue`, waiting for the reply.
pub fn queue_purge(ch: u16, queue: &str) -> Bytes {
    m(ch, ids::QUEUE_PURGE, |w| {
        w.u16(0).shortstr(queue.as_bytes()).bit(false);
    })
}

/// `queue.delete` of `queue`, whether or not it is used or empty.
pub fn queue_delete(ch: u16, queue: &str, nowait: bool) -> Bytes {
    m(ch, ids::QUEUE_DELETE, |w| {
        w.u16(0)
            .shortstr(queue.as_bytes())
            .bit(false)
            .bit(false)
            .bit(nowait);
    })
}

/// The broker's `queue.delete-ok`, with no messages deleted.
pub fn queue_delete_ok(ch: u16) -> Bytes {
    m(ch, ids::QUEUE_DELETE_OK, |w| {
        w.u32(0);
    })
}

/// The broker's `queue.declare-ok` for `name`, with no messages or consumers.
pub fn queue_declare_ok(ch: u16, name: &str) -> Bytes {
    m(ch, ids::QUEUE_DECLARE_OK, |w| {
        w.shortstr(name.as_bytes()).u32(0).u32(0);
    })
}

/// A `channel.flow-ok` that reports the flow active.
pub fn flow_ok(ch: u16) -> Bytes {
    encode::flow(ch, true, true)
}

/// The reply (code, text and cause) of a close frame.
pub fn close_reply(f: &Frame) -> Option<Close> {
    match method::decode(f.payload()).ok()? {
        Method::ConnectionClose(c) | Method::ChannelClose(c) => Some(c),
        _ => None,
    }
}

/// The reply code of a close frame.
pub fn close_code(f: &Frame) -> Option<u16> {
    close_reply(f).map(|c| c.code)
}

impl Drop for World {
    fn drop(&mut self) {
        // A failing scenario shows what happened.
        if std::thread::panicking() {
            eprintln!("trace so far:\n{}", self.trace);
        }
    }
}
