//! A sans-IO fake RabbitMQ: enough of the broker to be warren's upstream in a simulation,
//! and strict where RabbitMQ is strict.
//!
//! It speaks the handshake (refusing a wrong password with 403 and an unknown vhost with
//! 530), channels up to `channel_max`, exchanges and bindings, queues (exclusive and
//! server-named), publish with routing, mandatory returns, consumers with prefetch and
//! per-channel delivery tags, `basic.get`, acks/nacks/rejects with requeue, publisher
//! confirms, transactions (trivially), heartbeats in both directions and
//! `Connection.Blocked`.
//!
//! Its main job in the checks: everything RabbitMQ would answer with a *connection* error
//! (a frame on a closed or unopened channel, a second `channel.open`, a frame larger than
//! `frame_max`, content out of sequence, an unknown method, `immediate=true`, ...) is logged
//! as a [`BrokerViolation`] before the broker closes the connection the way RabbitMQ does.
//! warren promises (B7) that nothing a client sends can do that to the shared connection,
//! so any violation is a failed run. Channel errors (404 on a missing exchange, 405 on a
//! locked queue, 406 on an unknown delivery tag) are normal behaviour and close only the
//! channel.
//!
//! It also checks what it receives: per (client, channel) publish order, body integrity, and
//! that publishes from two different client channels never share an upstream channel without
//! a fence (`channel.flow`) in between.

use crate::tag::Origin;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use warren_core::content::parse_header;
use warren_core::credentials::parse_sasl;
use warren_core::frame::{
    method_frame, Frame, FrameDecoder, FrameType, HEARTBEAT, PROTOCOL_HEADER,
};
use warren_core::method::{self, encode, ids, Close, ConnectionStart, Method, MethodId, Tune};
use warren_core::reply;
use warren_core::table::{FieldTable, FieldValue};
use warren_core::wire::{Reader, Writer};

/// `access.request`, deprecated but still answered by RabbitMQ.
const ACCESS_REQUEST: MethodId = MethodId::new(30, 10);

/// RabbitMQ's event exchange (`rabbitmq_event_exchange` plugin), where it publishes what
/// happens to users, permissions and vhosts.
pub const EVENT_EXCHANGE: &str = warren_core::admission::events::EXCHANGE;

/// RabbitMQ's refusal of another connection's exclusive queue (3.8 and later), after the
/// `RESOURCE_LOCKED - ` prefix.
#[must_use]
pub fn locked_text(queue: &str, vhost: &str) -> String {
    format!(
        "cannot obtain exclusive access to locked queue '{queue}' in vhost '{vhost}'. It could \
         be originally declared on another connection or the exclusive property value does not \
         match that of the original declaration."
    )
}

/// A broker-side connection number, unique for the lifetime of a [`Broker`] (across restarts).
pub type ConnId = u32;

/// What the fake broker accepts and offers.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Valid (user, password) pairs.
    pub users: Vec<(String, String)>,
    /// Existing virtual hosts.
    pub vhosts: Vec<String>,
    /// `channel_max` offered in `Connection.Tune`.
    pub channel_max: u16,
    /// `frame_max` offered in `Connection.Tune`.
    pub frame_max: u32,
    /// Heartbeat offered in `Connection.Tune`, in seconds.
    pub heartbeat: u16,
    /// Coalesce the confirms of one read into a single `multiple` ack.
    pub batch_confirms: bool,
    /// How long the broker waits for `CloseOk` after it sent `Connection.Close`.
    pub close_timeout: Duration,
    /// How long a connection may take to finish the AMQP handshake (RabbitMQ's
    /// `handshake_timeout`, 10 s by default) before the broker drops it.
    pub handshake_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            users: vec![("guest".into(), "guest".into())],
            vhosts: vec!["/".into()],
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            batch_confirms: false,
            close_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// An instruction from the broker to whatever carries its bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerOutput {
    /// Write bytes on a connection.
    Send {
        /// Which connection.
        conn: ConnId,
        /// Whole frames.
        data: Bytes,
    },
    /// Close the connection's socket after what was sent.
    Close {
        /// Which connection.
        conn: ConnId,
    },
}

/// A connection-level protocol error the broker saw: what RabbitMQ would have closed the
/// shared connection for.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerViolation {
    /// When.
    pub at: Instant,
    /// On which connection.
    pub conn: ConnId,
    /// The reply code RabbitMQ would use.
    pub code: u16,
    /// What was wrong.
    pub text: String,
}

/// What the broker observed, kept across restarts for the final checks.
#[derive(Debug, Default)]
pub struct BrokerLog {
    /// Connection-level protocol errors (each one fails the run).
    pub violations: Vec<BrokerViolation>,
    /// Errors in what was published: order, integrity, channel sharing (each fails the run).
    pub publish_errors: Vec<(Instant, String)>,
    /// Messages the broker confirmed (sent `basic.ack` for), by origin.
    pub confirmed: Vec<(Instant, Origin)>,
    /// Messages published that no queue took (dropped or returned), by origin.
    pub unroutable: Vec<Origin>,
    /// Connections the broker dropped because the proxy sent nothing for two intervals.
    pub peer_timeouts: Vec<(Instant, ConnId)>,
    /// Logins refused (wrong password or vhost), by code.
    pub refused_logins: Vec<(Instant, ConnId, u16)>,
    /// Highest publish sequence number seen per (client, channel).
    last_seq: BTreeMap<(u32, u16), u32>,
    /// Messages received, for statistics.
    pub publishes: u64,
    /// Messages delivered or got.
    pub deliveries: u64,
    /// Exclusive queues deleted or purged by a method (not by their connection closing):
    /// when, which queue, and `"delete"` or `"purge"`. Only the owning client leaving may
    /// cause that through warren (B5).
    pub exclusive_ops: Vec<(Instant, String, &'static str)>,
    /// Methods the broker itself refused with 405 RESOURCE_LOCKED (another connection's
    /// exclusive queue).
    pub locked_refusals: u64,
    /// Events published to `amq.rabbitmq.event`: when, routing key, and how many queues
    /// they were routed to.
    pub events: Vec<(Instant, String, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    StartOk,
    TuneOk,
    Open,
    Running,
    /// The broker sent `Connection.Close` and waits for `CloseOk` until then.
    Closing(Instant),
}

#[derive(Debug)]
struct Conn {
    phase: Phase,
    accepted: Instant,
    buf: BytesMut,
    decoder: FrameDecoder,
    tune: Tune,
    heartbeat: Option<Duration>,
    last_rx: Instant,
    last_tx: Instant,
    caps_failure_close: bool,
    caps_blocked: bool,
    caps_cancel_notify: bool,
    told_blocked: bool,
    channels: BTreeMap<u16, Chan>,
    next_ctag: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChanState {
    Open,
    /// The broker sent `Channel.Close`; waiting for `CloseOk`.
    Closing,
}

#[derive(Debug)]
struct Pending {
    exchange: String,
    rk: String,
    mandatory: bool,
    size: Option<u64>,
    body: BytesMut,
}

#[derive(Debug)]
struct Chan {
    state: ChanState,
    content: Option<Pending>,
    confirm: bool,
    tx: bool,
    publish_seq: u64,
    unconfirmed: Vec<u64>,
    next_dtag: u64,
    unacked: BTreeMap<u64, (String, Msg)>,
    prefetch: u16,
    consumers: Vec<Vec<u8>>,
    /// The client channel whose publishes this upstream channel carries since the last
    /// open or fence.
    owner: Option<(u32, u16)>,
}

impl Chan {
    fn new() -> Self {
        Chan {
            state: ChanState::Open,
            content: None,
            confirm: false,
            tx: false,
            publish_seq: 0,
            unconfirmed: Vec::new(),
            next_dtag: 0,
            unacked: BTreeMap::new(),
            prefetch: 0,
            consumers: Vec::new(),
            owner: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Msg {
    body: Bytes,
    exchange: String,
    rk: String,
    redelivered: bool,
    /// The `headers` property (events carry their subject there).
    headers: Option<FieldTable>,
}

#[derive(Debug, Clone)]
struct Consumer {
    conn: ConnId,
    ch: u16,
    tag: Vec<u8>,
    no_ack: bool,
}

#[derive(Debug, Default)]
struct Queue {
    msgs: VecDeque<Msg>,
    consumers: Vec<Consumer>,
    next: usize,
    exclusive: Option<ConnId>,
}

#[derive(Debug)]
struct Exchange {
    kind: String,
    bindings: Vec<(String, String)>,
}

/// An error that closes only the channel (RabbitMQ's channel exceptions).
struct ChannelError(u16, String, MethodId);

/// The fake broker. Drive it like the core machines: one `handle_*`/`accept` call, then
/// drain [`Broker::poll_output`], then read [`Broker::poll_timeout`].
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    queues: BTreeMap<String, Queue>,
    exchanges: BTreeMap<String, Exchange>,
    next_queue: u32,
    blocked: Option<String>,
    pending: BTreeMap<ConnId, BytesMut>,
    closing: Vec<ConnId>,
    out: VecDeque<BrokerOutput>,
    /// Connections an event was delivered to during the current [`Broker::publish_event`].
    event_sends: Vec<ConnId>,
    /// What the broker observed (survives restarts).
    pub log: BrokerLog,
}

impl Broker {
    /// A broker with no connections, the default exchange, `amq.direct`, `amq.fanout` and the
    /// event exchange `amq.rabbitmq.event`.
    #[must_use]
    pub fn new(config: BrokerConfig) -> Self {
        let mut b = Broker {
            config,
            conns: BTreeMap::new(),
            next_conn: 0,
            queues: BTreeMap::new(),
            exchanges: BTreeMap::new(),
            next_queue: 0,
            blocked: None,
            pending: BTreeMap::new(),
            closing: Vec::new(),
            out: VecDeque::new(),
            event_sends: Vec::new(),
            log: BrokerLog::default(),
        };
        b.builtin_exchanges();
        b
    }

    fn builtin_exchanges(&mut self) {
        // The event exchange is a topic exchange; the routing here matches binding keys
        // exactly, which is all its subscribers use.
        for (name, kind) in [
            ("amq.direct", "direct"),
            ("amq.fanout", "fanout"),
            (EVENT_EXCHANGE, "topic"),
        ] {
            self.exchanges.insert(
                name.into(),
                Exchange {
                    kind: kind.into(),
                    bindings: Vec::new(),
                },
            );
        }
    }

    /// The process died and came back: every connection, queue and exchange is gone (none
    /// are durable here), the log stays. Produces no output: the sockets died with it.
    pub fn restart(&mut self) {
        self.conns.clear();
        self.queues.clear();
        self.exchanges.clear();
        self.builtin_exchanges();
        self.blocked = None;
        self.pending.clear();
        self.closing.clear();
        self.out.clear();
    }

    /// Open connections (any phase).
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Channels open across all connections.
    #[must_use]
    pub fn channel_count(&self) -> usize {
        self.conns.values().map(|c| c.channels.len()).sum()
    }

    /// Names of exclusive queues that exist, with their owning connection.
    #[must_use]
    pub fn exclusive_queues(&self) -> Vec<(String, ConnId)> {
        self.queues
            .iter()
            .filter_map(|(n, q)| q.exclusive.map(|c| (n.clone(), c)))
            .collect()
    }

    /// Connections subscribed to the event exchange: they own an exclusive queue bound to
    /// `amq.rabbitmq.event` (warren's event feed, which stays open for the whole run).
    #[must_use]
    pub fn feed_conns(&self) -> Vec<ConnId> {
        let Some(ex) = self.exchanges.get(EVENT_EXCHANGE) else {
            return Vec::new();
        };
        let mut conns: Vec<ConnId> = ex
            .bindings
            .iter()
            .filter_map(|(q, _)| self.queues.get(q).and_then(|q| q.exclusive))
            .filter(|c| self.conns.contains_key(c))
            .collect();
        conns.sort_unstable();
        conns.dedup();
        conns
    }

    /// Ids of the open connections (any phase), in order.
    #[must_use]
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Changes a user's password in the user table only (`rabbitmqctl change_password` on a
    /// node that cannot publish the event, e.g. while this one is down). Existing connections
    /// stay, as in RabbitMQ.
    pub fn set_password(&mut self, user: &str, password: &str) {
        match self.config.users.iter_mut().find(|(u, _)| u == user) {
            Some((_, p)) => *p = password.to_owned(),
            None => self
                .config
                .users
                .push((user.to_owned(), password.to_owned())),
        }
    }

    /// `rabbitmqctl change_password`: the user table changes and the event exchange
    /// publishes `user.password.changed` with the header `name` (a longstr, as RabbitMQ 3.10
    /// does). Returns the connections the event was delivered to at once.
    pub fn change_password(&mut self, now: Instant, user: &str, password: &str) -> Vec<ConnId> {
        self.set_password(user, password);
        let headers = FieldTable::default().with("name", warren_core::table::longstr(user));
        self.publish_event(now, "user.password.changed", headers)
    }

    /// Publishes an event (empty body, subject in `headers`) to `amq.rabbitmq.event` and
    /// hands it to consumers. Returns the connections it was delivered to at once.
    pub fn publish_event(&mut self, now: Instant, key: &str, headers: FieldTable) -> Vec<ConnId> {
        self.event_sends.clear();
        let targets: Vec<String> = self
            .exchanges
            .get(EVENT_EXCHANGE)
            .map(|ex| {
                let mut t: Vec<String> = ex
                    .bindings
                    .iter()
                    .filter(|(_, k)| k == key)
                    .map(|(q, _)| q.clone())
                    .collect();
                t.dedup();
                t
            })
            .unwrap_or_default();
        self.log.events.push((now, key.to_owned(), targets.len()));
        for q in &targets {
            if let Some(q) = self.queues.get_mut(q) {
                q.msgs.push_back(Msg {
                    body: Bytes::new(),
                    exchange: EVENT_EXCHANGE.to_owned(),
                    rk: key.to_owned(),
                    redelivered: false,
                    headers: Some(headers.clone()),
                });
            }
        }
        self.dispatch_all(now);
        self.flush();
        std::mem::take(&mut self.event_sends)
    }

    /// Messages waiting in queues, for the final report.
    #[must_use]
    pub fn ready_messages(&self) -> usize {
        self.queues.values().map(|q| q.msgs.len()).sum()
    }

    /// The origins of the messages waiting in queues (a message a client was cut off with
    /// must be back in its queue if nobody took it since).
    #[must_use]
    pub fn queued_origins(&self) -> Vec<Origin> {
        self.queues
            .values()
            .flat_map(|q| q.msgs.iter().filter_map(|m| Origin::parse(&m.body)))
            .collect()
    }

    /// A TCP connection arrived.
    pub fn accept(&mut self, now: Instant) -> ConnId {
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.insert(
            id,
            Conn {
                phase: Phase::Header,
                accepted: now,
                buf: BytesMut::new(),
                decoder: FrameDecoder::new(131_072),
                tune: Tune {
                    channel_max: self.config.channel_max,
                    frame_max: self.config.frame_max,
                    heartbeat: 0,
                },
                heartbeat: None,
                last_rx: now,
                last_tx: now,
                caps_failure_close: false,
                caps_blocked: false,
                caps_cancel_notify: false,
                told_blocked: false,
                channels: BTreeMap::new(),
                next_ctag: 0,
            },
        );
        id
    }

    /// Bytes arrived on a connection.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_rx = now;
        c.buf.extend_from_slice(data);
        self.process(now, conn);
        self.flush_confirms(now, conn);
        self.dispatch_all(now);
        self.flush();
    }

    /// The peer closed the socket (or it broke).
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            self.drop_conn(now, conn);
            self.dispatch_all(now);
            self.flush();
        }
    }

    /// Heartbeats and close timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get(&id) else {
                continue;
            };
            if let Phase::Closing(until) = c.phase {
                if now >= until {
                    self.drop_conn(now, id);
                    self.closing.push(id);
                }
                continue;
            }
            if c.phase != Phase::Running && now >= c.accepted + self.config.handshake_timeout {
                self.drop_conn(now, id);
                self.closing.push(id);
                continue;
            }
            let Some(hb) = c.heartbeat else { continue };
            if now >= c.last_rx + hb * 2 {
                self.log.peer_timeouts.push((now, id));
                self.drop_conn(now, id);
                self.closing.push(id);
            } else if now >= c.last_tx + hb / 2 {
                self.send(now, id, Bytes::from_static(HEARTBEAT));
            }
        }
        self.dispatch_all(now);
        self.flush();
    }

    /// Starts or ends a resource alarm: `Connection.Blocked` / `Unblocked` to every running
    /// connection that announced the capability.
    pub fn set_blocked(&mut self, now: Instant, reason: Option<&str>) {
        self.blocked = reason.map(str::to_owned);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.tell_blocked(now, id);
        }
        self.flush();
    }

    /// Whether a resource alarm is on.
    #[must_use]
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    fn tell_blocked(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.phase != Phase::Running || !c.caps_blocked {
            return;
        }
        match (&self.blocked, c.told_blocked) {
            (Some(reason), false) => {
                c.told_blocked = true;
                let f = encode::blocked(reason);
                self.send(now, id, f);
            }
            (None, true) => {
                c.told_blocked = false;
                self.send(now, id, encode::unblocked());
            }
            _ => {}
        }
    }

    /// The next instruction.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<BrokerOutput> {
        self.out.pop_front()
    }

    /// When [`Broker::handle_timeout`] has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| match c.phase {
                Phase::Closing(until) => Some(until),
                Phase::Running => c
                    .heartbeat
                    .map(|hb| (c.last_tx + hb / 2).min(c.last_rx + hb * 2)),
                _ => Some(c.accepted + self.config.handshake_timeout),
            })
            .min()
    }

    // ----- output -----------------------------------------------------------------------

    fn send(&mut self, now: Instant, conn: ConnId, data: Bytes) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_tx = now;
        }
        self.pending
            .entry(conn)
            .or_default()
            .extend_from_slice(&data);
    }

    fn flush(&mut self) {
        for (conn, data) in std::mem::take(&mut self.pending) {
            if !data.is_empty() {
                self.out.push_back(BrokerOutput::Send {
                    conn,
                    data: data.freeze(),
                });
            }
        }
        for conn in std::mem::take(&mut self.closing) {
            self.out.push_back(BrokerOutput::Close { conn });
        }
    }

    /// Forgets a connection: requeues its unacked messages, removes its consumers, deletes
    /// its exclusive queues.
    fn drop_conn(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        for (ch, chan) in c.channels {
            self.release_channel(id, ch, chan);
        }
        let exclusive: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.exclusive == Some(id))
            .map(|(n, _)| n.clone())
            .collect();
        for q in exclusive {
            self.delete_queue(Some(now), &q);
        }
    }

    fn release_channel(&mut self, conn: ConnId, ch: u16, chan: Chan) {
        for (_, q) in self.queues.iter_mut() {
            q.consumers.retain(|c| !(c.conn == conn && c.ch == ch));
        }
        for (_, (qname, mut msg)) in chan.unacked.into_iter().rev() {
            if let Some(q) = self.queues.get_mut(&qname) {
                msg.redelivered = true;
                q.msgs.push_front(msg);
            }
        }
    }

    fn delete_queue(&mut self, now: Option<Instant>, name: &str) -> usize {
        let Some(q) = self.queues.remove(name) else {
            return 0;
        };
        for ex in self.exchanges.values_mut() {
            ex.bindings.retain(|(qn, _)| qn != name);
        }
        if let Some(now) = now {
            for c in q.consumers {
                let notify = self
                    .conns
                    .get(&c.conn)
                    .is_some_and(|x| x.caps_cancel_notify);
                let open = self
                    .conns
                    .get_mut(&c.conn)
                    .and_then(|x| x.channels.get_mut(&c.ch))
                    .filter(|ch| ch.state == ChanState::Open);
                if let Some(chan) = open {
                    chan.consumers.retain(|t| *t != c.tag);
                    if notify {
                        let f = method_frame(c.ch, ids::BASIC_CANCEL, |w| {
                            w.shortstr(&c.tag).bit(true);
                        });
                        self.send(now, c.conn, f);
                    }
                }
            }
        }
        q.msgs.len()
    }

    // ----- connection-level -------------------------------------------------------------

    /// A connection error: logged as a violation (the proxy let it through), answered the
    /// way RabbitMQ does (Connection.Close, then wait for CloseOk).
    fn conn_error(&mut self, now: Instant, id: ConnId, code: u16, text: String, cause: MethodId) {
        self.log.violations.push(BrokerViolation {
            at: now,
            conn: id,
            code,
            text: text.clone(),
        });
        self.close_conn(now, id, code, text, cause);
    }

    fn close_conn(&mut self, now: Instant, id: ConnId, code: u16, text: String, cause: MethodId) {
        let close = Close {
            code,
            text: format!("{} - {text}", reply::code_name(code)),
            class_id: cause.class,
            method_id: cause.method,
        };
        self.send(now, id, encode::close(0, &close));
        let until = now + self.config.close_timeout;
        if let Some(c) = self.conns.get_mut(&id) {
            c.phase = Phase::Closing(until);
            let chans = std::mem::take(&mut c.channels);
            for (ch, chan) in chans {
                self.release_channel(id, ch, chan);
            }
        }
    }

    fn process(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.phase == Phase::Header {
                if c.buf.len() < PROTOCOL_HEADER.len() {
                    return;
                }
                let h = c.buf.split_to(PROTOCOL_HEADER.len());
                if &h[..] != PROTOCOL_HEADER {
                    self.log.violations.push(BrokerViolation {
                        at: now,
                        conn: id,
                        code: 0,
                        text: "bad protocol header".into(),
                    });
                    self.send(now, id, Bytes::from_static(PROTOCOL_HEADER));
                    self.drop_conn(now, id);
                    self.closing.push(id);
                    return;
                }
                c.phase = Phase::StartOk;
                let start = self.start_frame();
                self.send(now, id, start);
                continue;
            }
            let frame = match c.decoder.decode(&mut c.buf) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    let text = e.to_string();
                    let text = text.trim_start_matches("FRAME_ERROR - ").to_owned();
                    c.buf.clear();
                    self.conn_error(now, id, reply::FRAME_ERROR, text, MethodId::new(0, 0));
                    // Nothing after a framing error can be read.
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.decoder = FrameDecoder::new(u32::MAX);
                        c.buf.clear();
                    }
                    return;
                }
            };
            self.frame(now, id, frame);
        }
    }

    fn start_frame(&self) -> Bytes {
        // RabbitMQ announces the list warren announces to its clients (warren mirrors it).
        let caps = warren_core::handshake::SERVER_CAPABILITIES
            .iter()
            .fold(FieldTable::default(), |t, c| {
                t.with(c, FieldValue::Bool(true))
            });
        encode::start(&ConnectionStart {
            server_properties: FieldTable::default()
                .with("product", warren_core::table::longstr("FakeMQ"))
                .with("capabilities", FieldValue::Table(caps)),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })
    }

    fn frame(&mut self, now: Instant, id: ConnId, f: Frame) {
        let Some(phase) = self.conns.get(&id).map(|c| c.phase) else {
            return;
        };
        match phase {
            Phase::Header => {}
            Phase::StartOk | Phase::TuneOk | Phase::Open => self.handshake_frame(now, id, phase, f),
            Phase::Closing(_) => {
                // Only the answer to our Close matters; RabbitMQ discards the rest.
                match f.method_id() {
                    Some(ids::CONNECTION_CLOSE_OK) => {
                        self.drop_conn(now, id);
                        self.closing.push(id);
                    }
                    Some(ids::CONNECTION_CLOSE) => {
                        self.send(now, id, encode::close_ok(0));
                        self.drop_conn(now, id);
                        self.closing.push(id);
                    }
                    _ => {}
                }
            }
            Phase::Running => self.running_frame(now, id, f),
        }
    }

    fn handshake_frame(&mut self, now: Instant, id: ConnId, phase: Phase, f: Frame) {
        if f.kind() == FrameType::Heartbeat {
            return;
        }
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        let m = match (f.kind(), f.channel(), method::decode(f.payload())) {
            (FrameType::Method, 0, Ok(m)) => m,
            _ => {
                return self.conn_error(
                    now,
                    id,
                    reply::COMMAND_INVALID,
                    "unexpected frame during the handshake".into(),
                    mid,
                )
            }
        };
        match (phase, m) {
            (Phase::StartOk, Method::StartOk(ok)) => {
                if let Some(caps) = ok.client_properties.get_table("capabilities") {
                    let c = self.conns.get_mut(&id).expect("checked above");
                    c.caps_failure_close = caps.get_bool("authentication_failure_close");
                    c.caps_blocked = caps.get_bool("connection.blocked");
                    c.caps_cancel_notify = caps.get_bool("consumer_cancel_notify");
                }
                let valid = match parse_sasl(&ok.mechanism, &ok.response) {
                    Ok((user, pass)) => self
                        .config
                        .users
                        .iter()
                        .any(|(u, p)| *u == user && p == pass.expose()),
                    Err(_) => false,
                };
                if !valid {
                    self.log
                        .refused_logins
                        .push((now, id, reply::ACCESS_REFUSED));
                    let failure_close = self.conns[&id].caps_failure_close;
                    if failure_close {
                        self.close_conn(
                            now,
                            id,
                            reply::ACCESS_REFUSED,
                            format!(
                                "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                                ok.mechanism
                            ),
                            MethodId::new(0, 0),
                        );
                    } else {
                        self.drop_conn(now, id);
                        self.closing.push(id);
                    }
                    return;
                }
                let tune = Tune {
                    channel_max: self.config.channel_max,
                    frame_max: self.config.frame_max,
                    heartbeat: self.config.heartbeat,
                };
                self.conns.get_mut(&id).expect("checked").phase = Phase::TuneOk;
                self.send(now, id, encode::tune(tune, false));
            }
            (Phase::TuneOk, Method::TuneOk(t)) => {
                let ours = (self.config.channel_max, self.config.frame_max);
                if t.frame_max < 4096 || (ours.1 != 0 && (t.frame_max > ours.1 || t.frame_max == 0))
                {
                    return self.conn_error(
                        now,
                        id,
                        reply::NOT_ALLOWED,
                        format!("frame_max={} outside [4096, {}]", t.frame_max, ours.1),
                        mid,
                    );
                }
                if ours.0 != 0 && (t.channel_max > ours.0 || t.channel_max == 0) {
                    return self.conn_error(
                        now,
                        id,
                        reply::NOT_ALLOWED,
                        format!("channel_max={} > {} max", t.channel_max, ours.0),
                        mid,
                    );
                }
                let c = self.conns.get_mut(&id).expect("checked");
                c.tune = t;
                c.decoder = FrameDecoder::new(t.frame_max);
                c.heartbeat =
                    (t.heartbeat > 0).then(|| Duration::from_secs(u64::from(t.heartbeat)));
                c.phase = Phase::Open;
            }
            (Phase::Open, Method::Open { vhost }) => {
                if !self.config.vhosts.contains(&vhost) {
                    self.log.refused_logins.push((now, id, reply::NOT_ALLOWED));
                    return self.close_conn(
                        now,
                        id,
                        reply::NOT_ALLOWED,
                        format!("vhost {vhost} not found"),
                        mid,
                    );
                }
                self.conns.get_mut(&id).expect("checked").phase = Phase::Running;
                self.send(
                    now,
                    id,
                    method_frame(0, ids::CONNECTION_OPEN_OK, |w| {
                        w.shortstr(b"");
                    }),
                );
                self.tell_blocked(now, id);
            }
            (_, Method::ConnectionClose(_)) => {
                self.send(now, id, encode::close_ok(0));
                self.drop_conn(now, id);
                self.closing.push(id);
            }
            _ => self.conn_error(
                now,
                id,
                reply::COMMAND_INVALID,
                format!("unexpected {mid:?} during the handshake"),
                mid,
            ),
        }
    }

    fn running_frame(&mut self, now: Instant, id: ConnId, f: Frame) {
        let ch = f.channel();
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        if f.kind() == FrameType::Heartbeat {
            if ch != 0 {
                self.conn_error(
                    now,
                    id,
                    reply::FRAME_ERROR,
                    format!("heartbeat on channel {ch}"),
                    mid,
                );
            }
            return;
        }
        if ch == 0 {
            return self.channel_zero(now, id, f);
        }
        let channel_max = self.conns[&id].tune.channel_max;
        if channel_max != 0 && ch > channel_max {
            return self.conn_error(
                now,
                id,
                reply::NOT_ALLOWED,
                format!("channel {ch} exceeds channel_max {channel_max}"),
                mid,
            );
        }
        let state = self.conns[&id].channels.get(&ch).map(|c| c.state);
        match state {
            None => {
                if mid == ids::CHANNEL_OPEN && f.kind() == FrameType::Method {
                    let mut chan = Chan::new();
                    chan.owner = None;
                    self.conns
                        .get_mut(&id)
                        .expect("checked")
                        .channels
                        .insert(ch, chan);
                    self.send(now, id, encode::channel_open_ok(ch));
                } else {
                    self.conn_error(
                        now,
                        id,
                        reply::CHANNEL_ERROR,
                        format!(
                            "expected 'channel.open' on channel {ch}, got {}",
                            kind_name(&f)
                        ),
                        mid,
                    );
                }
            }
            Some(ChanState::Closing) => match mid {
                ids::CHANNEL_CLOSE_OK if f.kind() == FrameType::Method => {
                    let chan = self.conns.get_mut(&id).and_then(|c| c.channels.remove(&ch));
                    if let Some(chan) = chan {
                        self.release_channel(id, ch, chan);
                    }
                }
                ids::CHANNEL_CLOSE if f.kind() == FrameType::Method => {
                    self.send(now, id, encode::close_ok(ch));
                }
                _ => {}
            },
            Some(ChanState::Open) => {
                let in_content = self.conns[&id].channels[&ch].content.is_some();
                if in_content {
                    return self.content_frame(now, id, ch, f);
                }
                match f.kind() {
                    FrameType::Method => self.channel_method(now, id, ch, f),
                    _ => self.conn_error(
                        now,
                        id,
                        reply::UNEXPECTED_FRAME,
                        format!("{} on channel {ch} without a content method", kind_name(&f)),
                        mid,
                    ),
                }
            }
        }
    }

    fn channel_zero(&mut self, now: Instant, id: ConnId, f: Frame) {
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        if f.kind() != FrameType::Method {
            return self.conn_error(
                now,
                id,
                reply::UNEXPECTED_FRAME,
                format!("{} on channel 0", kind_name(&f)),
                mid,
            );
        }
        match mid {
            ids::CONNECTION_CLOSE => {
                self.send(now, id, encode::close_ok(0));
                self.drop_conn(now, id);
                self.closing.push(id);
            }
            ids::CONNECTION_UPDATE_SECRET => {
                self.send(
                    now,
                    id,
                    method_frame(0, ids::CONNECTION_UPDATE_SECRET_OK, |_| {}),
                );
            }
            _ => self.conn_error(
                now,
                id,
                reply::COMMAND_INVALID,
                format!("{mid:?} on channel 0 of an open connection"),
                mid,
            ),
        }
    }

    fn content_frame(&mut self, now: Instant, id: ConnId, ch: u16, f: Frame) {
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        let chan = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&ch))
            .expect("checked by caller");
        let p = chan.content.as_mut().expect("checked by caller");
        match (f.kind(), p.size) {
            (FrameType::Header, None) => match parse_header(f.payload()) {
                Ok(h) if h.class_id == 60 => p.size = Some(h.body_size),
                Ok(_) => {
                    return self.conn_error(
                        now,
                        id,
                        reply::UNEXPECTED_FRAME,
                        "content header for the wrong class".into(),
                        mid,
                    )
                }
                Err(e) => {
                    return self.conn_error(
                        now,
                        id,
                        reply::SYNTAX_ERROR,
                        format!("malformed content header: {e}"),
                        mid,
                    )
                }
            },
            (FrameType::Body, Some(size)) => {
                let have = p.body.len() as u64 + f.payload().len() as u64;
                if have > size {
                    return self.conn_error(
                        now,
                        id,
                        reply::UNEXPECTED_FRAME,
                        format!("body larger than the declared {size} bytes on channel {ch}"),
                        mid,
                    );
                }
                p.body.extend_from_slice(f.payload());
            }
            _ => {
                return self.conn_error(
                    now,
                    id,
                    reply::UNEXPECTED_FRAME,
                    format!("{} inside content on channel {ch}", kind_name(&f)),
                    mid,
                )
            }
        }
        if p.size == Some(p.body.len() as u64) {
            let p = chan.content.take().expect("present");
            self.publish(now, id, ch, p);
        }
    }

    // ----- channel methods ----------------------------------------------------------------

    fn channel_method(&mut self, now: Instant, id: ConnId, ch: u16, f: Frame) {
        let Ok((mid, args)) = method::split_payload(f.payload()) else {
            return self.conn_error(
                now,
                id,
                reply::SYNTAX_ERROR,
                "method frame too short".into(),
                MethodId::new(0, 0),
            );
        };
        let Some(spec) = method::spec(mid) else {
            return self.conn_error(
                now,
                id,
                reply::NOT_IMPLEMENTED,
                format!("unknown method {mid:?}"),
                mid,
            );
        };
        if !spec.client_may_send() {
            return self.conn_error(
                now,
                id,
                reply::COMMAND_INVALID,
                format!("{} may not be sent by a client", spec.name),
                mid,
            );
        }
        if let Err(e) = method::validate_args(spec, args) {
            return self.conn_error(
                now,
                id,
                reply::SYNTAX_ERROR,
                format!("{}: {e}", spec.name),
                mid,
            );
        }
        if mid.class == 10 {
            return self.conn_error(
                now,
                id,
                reply::COMMAND_INVALID,
                format!("{} on channel {ch}", spec.name),
                mid,
            );
        }
        if let Err(ChannelError(code, text, cause)) = self.method(now, id, ch, mid, args) {
            self.channel_error(now, id, ch, code, text, cause);
        }
    }

    fn channel_error(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        code: u16,
        text: String,
        cause: MethodId,
    ) {
        let close = Close {
            code,
            text: format!("{} - {text}", reply::code_name(code)),
            class_id: cause.class,
            method_id: cause.method,
        };
        self.send(now, id, encode::close(ch, &close));
        let chan = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&ch));
        if let Some(chan) = chan {
            chan.state = ChanState::Closing;
            chan.content = None;
            let consumers = std::mem::take(&mut chan.consumers);
            let unacked = std::mem::take(&mut chan.unacked);
            for q in self.queues.values_mut() {
                q.consumers
                    .retain(|c| !(c.conn == id && c.ch == ch && consumers.contains(&c.tag)));
            }
            for (_, (qname, mut msg)) in unacked.into_iter().rev() {
                if let Some(q) = self.queues.get_mut(&qname) {
                    msg.redelivered = true;
                    q.msgs.push_front(msg);
                }
            }
        }
    }

    fn chan(&mut self, id: ConnId, ch: u16) -> &mut Chan {
        self.conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&ch))
            .expect("an open channel")
    }

    #[allow(clippy::too_many_lines)]
    fn method(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
        args: &[u8],
    ) -> Result<(), ChannelError> {
        let mut r = Reader::new(args);
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        // Arguments were validated against the layout, so reads cannot fail.
        macro_rules! rd {
            ($e:expr) => {
                $e.expect("validated")
            };
        }
        match mid {
            ids::CHANNEL_OPEN => {
                self.conn_error(
                    now,
                    id,
                    reply::CHANNEL_ERROR,
                    format!("second 'channel.open' seen on channel {ch}"),
                    mid,
                );
            }
            ids::CHANNEL_CLOSE => {
                self.send(now, id, encode::close_ok(ch));
                let chan = self.conns.get_mut(&id).and_then(|c| c.channels.remove(&ch));
                if let Some(chan) = chan {
                    self.release_channel(id, ch, chan);
                }
            }
            ids::CHANNEL_CLOSE_OK => {
                self.conn_error(
                    now,
                    id,
                    reply::COMMAND_INVALID,
                    format!("channel.close-ok on open channel {ch}"),
                    mid,
                );
            }
            ids::CHANNEL_FLOW => {
                let active = rd!(r.bit());
                if !active {
                    self.conn_error(now, id, reply::NOT_IMPLEMENTED, "active=false".into(), mid);
                } else {
                    // warren's fence: the channel changes hands after this.
                    self.chan(id, ch).owner = None;
                    self.send(now, id, encode::flow(ch, true, true));
                }
            }
            ids::CHANNEL_FLOW_OK => {}
            ACCESS_REQUEST => {
                self.send(
                    now,
                    id,
                    method_frame(ch, MethodId::new(30, 11), |w| {
                        w.u16(1);
                    }),
                );
            }
            ids::EXCHANGE_DECLARE => {
                rd!(r.u16());
                let name = s(rd!(r.shortstr()));
                let kind = s(rd!(r.shortstr()));
                let passive = rd!(r.bit());
                let (_durable, _auto_delete, _internal) =
                    (rd!(r.bit()), rd!(r.bit()), rd!(r.bit()));
                let nowait = rd!(r.bit());
                if passive {
                    if !self.exchanges.contains_key(&name) && !name.is_empty() {
                        return Err(ChannelError(
                            reply::NOT_FOUND,
                            format!("no exchange '{name}' in vhost '/'"),
                            mid,
                        ));
                    }
                } else {
                    if !matches!(kind.as_str(), "direct" | "fanout" | "topic" | "headers") {
                        self.conn_error(
                            now,
                            id,
                            reply::COMMAND_INVALID,
                            format!("unknown exchange type '{kind}'"),
                            mid,
                        );
                        return Ok(());
                    }
                    match self.exchanges.get(&name) {
                        Some(e) if e.kind != kind => {
                            return Err(ChannelError(
                                reply::PRECONDITION_FAILED,
                                format!("inequivalent arg 'type' for exchange '{name}'"),
                                mid,
                            ))
                        }
                        Some(_) => {}
                        None => {
                            self.exchanges.insert(
                                name,
                                Exchange {
                                    kind,
                                    bindings: Vec::new(),
                                },
                            );
                        }
                    }
                }
                if !nowait {
                    self.send(now, id, method_frame(ch, ids::EXCHANGE_DECLARE_OK, |_| {}));
                }
            }
            ids::EXCHANGE_DELETE => {
                rd!(r.u16());
                let name = s(rd!(r.shortstr()));
                let _if_unused = rd!(r.bit());
                let nowait = rd!(r.bit());
                if !name.starts_with("amq.") {
                    self.exchanges.remove(&name);
                }
                if !nowait {
                    self.send(now, id, method_frame(ch, MethodId::new(40, 21), |_| {}));
                }
            }
            ids::EXCHANGE_BIND | ids::EXCHANGE_UNBIND => {
                let ok = if mid == ids::EXCHANGE_BIND {
                    MethodId::new(40, 31)
                } else {
                    MethodId::new(40, 51)
                };
                self.send(now, id, method_frame(ch, ok, |_| {}));
            }
            ids::QUEUE_DECLARE => {
                rd!(r.u16());
                let mut name = s(rd!(r.shortstr()));
                let passive = rd!(r.bit());
                let _durable = rd!(r.bit());
                let exclusive = rd!(r.bit());
                let _auto_delete = rd!(r.bit());
                let nowait = rd!(r.bit());
                match self.queues.get(&name) {
                    Some(q) if q.exclusive.is_some_and(|o| o != id) => {
                        self.log.locked_refusals += 1;
                        return Err(ChannelError(
                            reply::RESOURCE_LOCKED,
                            locked_text(&name, "/"),
                            mid,
                        ));
                    }
                    Some(_) => {}
                    None if passive => {
                        return Err(ChannelError(
                            reply::NOT_FOUND,
                            format!("no queue '{name}' in vhost '/'"),
                            mid,
                        ))
                    }
                    None => {
                        if name.is_empty() {
                            self.next_queue += 1;
                            name = format!("amq.gen-{}", self.next_queue);
                        }
                        self.queues.insert(
                            name.clone(),
                            Queue {
                                exclusive: exclusive.then_some(id),
                                ..Queue::default()
                            },
                        );
                    }
                }
                if !nowait {
                    let q = &self.queues[&name];
                    let (msgs, consumers) = (q.msgs.len() as u32, q.consumers.len() as u32);
                    self.send(
                        now,
                        id,
                        method_frame(ch, ids::QUEUE_DECLARE_OK, |w| {
                            w.shortstr(name.as_bytes()).u32(msgs).u32(consumers);
                        }),
                    );
                }
            }
            ids::QUEUE_BIND => {
                rd!(r.u16());
                let queue = s(rd!(r.shortstr()));
                let exchange = s(rd!(r.shortstr()));
                let rk = s(rd!(r.shortstr()));
                let nowait = rd!(r.bit());
                self.check_queue(id, &queue, mid)?;
                let Some(ex) = self.exchanges.get_mut(&exchange) else {
                    return Err(ChannelError(
                        reply::NOT_FOUND,
                        format!("no exchange '{exchange}' in vhost '/'"),
                        mid,
                    ));
                };
                if !ex.bindings.contains(&(queue.clone(), rk.clone())) {
                    ex.bindings.push((queue, rk));
                }
                if !nowait {
                    self.send(now, id, method_frame(ch, MethodId::new(50, 21), |_| {}));
                }
            }
            ids::QUEUE_UNBIND => {
                rd!(r.u16());
                let queue = s(rd!(r.shortstr()));
                let exchange = s(rd!(r.shortstr()));
                let rk = s(rd!(r.shortstr()));
                // RabbitMQ: 404 for a missing queue, 405 for another connection's exclusive one.
                self.check_queue(id, &queue, mid)?;
                if let Some(ex) = self.exchanges.get_mut(&exchange) {
                    ex.bindings.retain(|b| *b != (queue.clone(), rk.clone()));
                }
                self.send(now, id, method_frame(ch, MethodId::new(50, 51), |_| {}));
            }
            ids::QUEUE_PURGE => {
                rd!(r.u16());
                let queue = s(rd!(r.shortstr()));
                let nowait = rd!(r.bit());
                self.check_queue(id, &queue, mid)?;
                if self
                    .queues
                    .get(&queue)
                    .is_some_and(|q| q.exclusive.is_some())
                {
                    self.log.exclusive_ops.push((now, queue.clone(), "purge"));
                }
                let n = self
                    .queues
                    .get_mut(&queue)
                    .map(|q| std::mem::take(&mut q.msgs).len())
                    .unwrap_or(0) as u32;
                if !nowait {
                    self.send(
                        now,
                        id,
                        method_frame(ch, MethodId::new(50, 31), |w| {
                            w.u32(n);
                        }),
                    );
                }
            }
            ids::QUEUE_DELETE => {
                rd!(r.u16());
                let queue = s(rd!(r.shortstr()));
                let (_if_unused, _if_empty, nowait) = (rd!(r.bit()), rd!(r.bit()), rd!(r.bit()));
                if self
                    .queues
                    .get(&queue)
                    .is_some_and(|q| q.exclusive.is_some_and(|o| o != id))
                {
                    self.log.locked_refusals += 1;
                    return Err(ChannelError(
                        reply::RESOURCE_LOCKED,
                        locked_text(&queue, "/"),
                        mid,
                    ));
                }
                if self
                    .queues
                    .get(&queue)
                    .is_some_and(|q| q.exclusive.is_some())
                {
                    self.log.exclusive_ops.push((now, queue.clone(), "delete"));
                }
                let n = self.delete_queue(Some(now), &queue) as u32;
                if !nowait {
                    self.send(
                        now,
                        id,
                        method_frame(ch, ids::QUEUE_DELETE_OK, |w| {
                            w.u32(n);
                        }),
                    );
                }
            }
            ids::BASIC_QOS => {
                let size = rd!(r.u32());
                let count = rd!(r.u16());
                if size != 0 {
                    self.conn_error(
                        now,
                        id,
                        reply::NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({size})"),
                        mid,
                    );
                    return Ok(());
                }
                self.chan(id, ch).prefetch = count;
                self.send(now, id, method_frame(ch, ids::BASIC_QOS_OK, |_| {}));
            }
            ids::BASIC_CONSUME => {
                rd!(r.u16());
                let queue = s(rd!(r.shortstr()));
                let mut tag = rd!(r.shortstr()).to_vec();
                let _no_local = rd!(r.bit());
                let no_ack = rd!(r.bit());
                let _exclusive = rd!(r.bit());
                let nowait = rd!(r.bit());
                self.check_queue(id, &queue, mid)?;
                if !tag.is_empty() && self.chan(id, ch).consumers.contains(&tag) {
                    self.conn_error(
                        now,
                        id,
                        reply::NOT_ALLOWED,
                        format!("attempt to reuse consumer tag '{}'", s(&tag)),
                        mid,
                    );
                    return Ok(());
                }
                if tag.is_empty() {
                    let c = self.conns.get_mut(&id).expect("open");
                    c.next_ctag += 1;
                    tag = format!("amq.ctag-{id}-{}", c.next_ctag).into_bytes();
                }
                self.chan(id, ch).consumers.push(tag.clone());
                self.queues
                    .get_mut(&queue)
                    .expect("checked")
                    .consumers
                    .push(Consumer {
                        conn: id,
                        ch,
                        tag: tag.clone(),
                        no_ack,
                    });
                if !nowait {
                    self.send(
                        now,
                        id,
                        method_frame(ch, ids::BASIC_CONSUME_OK, |w| {
                            w.shortstr(&tag);
                        }),
                    );
                }
            }
            ids::BASIC_CANCEL => {
                let tag = rd!(r.shortstr()).to_vec();
                let nowait = rd!(r.bit());
                self.chan(id, ch).consumers.retain(|t| *t != tag);
                for q in self.queues.values_mut() {
                    q.consumers
                        .retain(|c| !(c.conn == id && c.ch == ch && c.tag == tag));
                }
                if !nowait {
                    self.send(
                        now,
                        id,
                        method_frame(ch, ids::BASIC_CANCEL_OK, |w| {
                            w.shortstr(&tag);
                        }),
                    );
                }
            }
            ids::BASIC_PUBLISH => {
                rd!(r.u16());
                let exchange = s(rd!(r.shortstr()));
                let rk = s(rd!(r.shortstr()));
                let mandatory = rd!(r.bit());
                let immediate = rd!(r.bit());
                if immediate {
                    self.conn_error(
                        now,
                        id,
                        reply::NOT_IMPLEMENTED,
                        "immediate=true".into(),
                        mid,
                    );
                    return Ok(());
                }
                self.chan(id, ch).content = Some(Pending {
                    exchange,
                    rk,
                    mandatory,
                    size: None,
                    body: BytesMut::new(),
                });
            }
            ids::BASIC_GET => {
                rd!(r.u16());
                let queue = s(rd!(r.shortstr()));
                let no_ack = rd!(r.bit());
                self.check_queue(id, &queue, mid)?;
                let q = self.queues.get_mut(&queue).expect("checked");
                match q.msgs.pop_front() {
                    Some(msg) => {
                        let left = q.msgs.len() as u32;
                        let chan = self.chan(id, ch);
                        chan.next_dtag += 1;
                        let dtag = chan.next_dtag;
                        if !no_ack {
                            chan.unacked.insert(dtag, (queue.clone(), msg.clone()));
                        }
                        let m = method_frame(ch, ids::BASIC_GET_OK, |w| {
                            w.u64(dtag)
                                .bit(msg.redelivered)
                                .shortstr(msg.exchange.as_bytes())
                                .shortstr(msg.rk.as_bytes())
                                .u32(left);
                        });
                        self.send(now, id, m);
                        self.send_content(now, id, ch, &msg.body, msg.headers.as_ref());
                        self.log.deliveries += 1;
                    }
                    None => {
                        self.send(
                            now,
                            id,
                            method_frame(ch, MethodId::new(60, 72), |w| {
                                w.shortstr(b"");
                            }),
                        );
                    }
                }
            }
            ids::BASIC_ACK | ids::BASIC_REJECT | ids::BASIC_NACK => {
                let dtag = rd!(r.u64());
                let multiple = if mid == ids::BASIC_REJECT {
                    false
                } else {
                    rd!(r.bit())
                };
                let requeue = if mid == ids::BASIC_ACK {
                    false
                } else {
                    rd!(r.bit())
                };
                let chan = self.chan(id, ch);
                let tags: Vec<u64> = if multiple {
                    chan.unacked
                        .range(..=if dtag == 0 { u64::MAX } else { dtag })
                        .map(|(t, _)| *t)
                        .collect()
                } else if chan.unacked.contains_key(&dtag) {
                    vec![dtag]
                } else {
                    Vec::new()
                };
                if tags.is_empty() && !(multiple && dtag == 0) {
                    return Err(ChannelError(
                        reply::PRECONDITION_FAILED,
                        format!("unknown delivery tag {dtag}"),
                        mid,
                    ));
                }
                let mut back = Vec::new();
                for t in tags {
                    if let Some(x) = chan.unacked.remove(&t) {
                        back.push(x);
                    }
                }
                if requeue {
                    for (qname, mut msg) in back.into_iter().rev() {
                        if let Some(q) = self.queues.get_mut(&qname) {
                            msg.redelivered = true;
                            q.msgs.push_front(msg);
                        }
                    }
                }
            }
            ids::BASIC_RECOVER_ASYNC | ids::BASIC_RECOVER => {
                let requeue = rd!(r.bit());
                if !requeue {
                    self.conn_error(now, id, reply::NOT_IMPLEMENTED, "requeue=false".into(), mid);
                    return Ok(());
                }
                let unacked = std::mem::take(&mut self.chan(id, ch).unacked);
                for (_, (qname, mut msg)) in unacked.into_iter().rev() {
                    if let Some(q) = self.queues.get_mut(&qname) {
                        msg.redelivered = true;
                        q.msgs.push_front(msg);
                    }
                }
                if mid == ids::BASIC_RECOVER {
                    self.send(now, id, method_frame(ch, MethodId::new(60, 111), |_| {}));
                }
            }
            ids::CONFIRM_SELECT => {
                let nowait = rd!(r.bit());
                if self.chan(id, ch).tx {
                    return Err(ChannelError(
                        reply::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode".into(),
                        mid,
                    ));
                }
                self.chan(id, ch).confirm = true;
                if !nowait {
                    self.send(now, id, method_frame(ch, MethodId::new(85, 11), |_| {}));
                }
            }
            ids::TX_SELECT | ids::TX_COMMIT | ids::TX_ROLLBACK => {
                if mid == ids::TX_SELECT {
                    if self.chan(id, ch).confirm {
                        return Err(ChannelError(
                            reply::PRECONDITION_FAILED,
                            "cannot switch from confirm to tx mode".into(),
                            mid,
                        ));
                    }
                    self.chan(id, ch).tx = true;
                } else if !self.chan(id, ch).tx {
                    return Err(ChannelError(
                        reply::PRECONDITION_FAILED,
                        "channel is not transactional".into(),
                        mid,
                    ));
                }
                let ok = MethodId::new(90, mid.method + 1);
                self.send(now, id, method_frame(ch, ok, |_| {}));
            }
            _ => {
                self.conn_error(
                    now,
                    id,
                    reply::COMMAND_INVALID,
                    format!("{mid:?} is not valid here"),
                    mid,
                );
            }
        }
        Ok(())
    }

    fn check_queue(&mut self, id: ConnId, queue: &str, mid: MethodId) -> Result<(), ChannelError> {
        match self.queues.get(queue) {
            None => Err(ChannelError(
                reply::NOT_FOUND,
                format!("no queue '{queue}' in vhost '/'"),
                mid,
            )),
            Some(q) if q.exclusive.is_some_and(|o| o != id) => {
                self.log.locked_refusals += 1;
                Err(ChannelError(
                    reply::RESOURCE_LOCKED,
                    locked_text(queue, "/"),
                    mid,
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// A whole message arrived: check it, route it, return or confirm it.
    fn publish(&mut self, now: Instant, id: ConnId, ch: u16, p: Pending) {
        self.log.publishes += 1;
        let body = p.body.freeze();
        if let Some(o) = Origin::parse(&body) {
            if !o.matches_body(&body) {
                self.log
                    .publish_errors
                    .push((now, format!("conn {id} ch{ch}: body of [{o}] is corrupted")));
            }
            let last = self.log.last_seq.entry((o.client, o.channel)).or_insert(0);
            if o.seq <= *last {
                let msg = format!(
                    "conn {id} ch{ch}: [{o}] arrived after #{} of the same client channel (order broken)",
                    *last
                );
                self.log.publish_errors.push((now, msg));
            }
            *last = (*last).max(o.seq);
            let chan = self.chan(id, ch);
            let me = (o.client, o.channel);
            match chan.owner {
                Some(prev) if prev != me => {
                    let msg = format!(
                        "conn {id} ch{ch}: publishes from c{} ch{} and c{} ch{} without a fence in between",
                        prev.0, prev.1, me.0, me.1
                    );
                    self.log.publish_errors.push((now, msg));
                }
                _ => {}
            }
            self.chan(id, ch).owner = Some(me);
        }
        let targets: Vec<String> = if p.exchange.is_empty() {
            if self.queues.contains_key(&p.rk) {
                vec![p.rk.clone()]
            } else {
                Vec::new()
            }
        } else {
            let Some(ex) = self.exchanges.get(&p.exchange) else {
                let text = format!("no exchange '{}' in vhost '/'", p.exchange);
                return self.channel_error(now, id, ch, reply::NOT_FOUND, text, ids::BASIC_PUBLISH);
            };
            let mut t: Vec<String> = ex
                .bindings
                .iter()
                .filter(|(_, k)| ex.kind == "fanout" || *k == p.rk)
                .map(|(q, _)| q.clone())
                .collect();
            t.dedup();
            t
        };
        if targets.is_empty() {
            self.log.unroutable.extend(Origin::parse(&body));
        }
        if targets.is_empty() && p.mandatory {
            let m = method_frame(ch, ids::BASIC_RETURN, |w| {
                w.u16(312)
                    .shortstr(b"NO_ROUTE")
                    .shortstr(p.exchange.as_bytes())
                    .shortstr(p.rk.as_bytes());
            });
            self.send(now, id, m);
            self.send_content(now, id, ch, &body, None);
        }
        for q in &targets {
            if let Some(q) = self.queues.get_mut(q) {
                q.msgs.push_back(Msg {
                    body: body.clone(),
                    exchange: p.exchange.clone(),
                    rk: p.rk.clone(),
                    redelivered: false,
                    headers: None,
                });
            }
        }
        let chan = self.chan(id, ch);
        if chan.confirm {
            chan.publish_seq += 1;
            let seq = chan.publish_seq;
            chan.unconfirmed.push(seq);
            if let Some(o) = Origin::parse(&body) {
                self.log.confirmed.push((now, o));
            }
            if !self.config.batch_confirms {
                self.chan(id, ch).unconfirmed.clear();
                let ack = method_frame(ch, ids::BASIC_ACK, |w| {
                    w.u64(seq).bit(false);
                });
                self.send(now, id, ack);
            }
        }
    }

    /// Sends the confirms held back during one read as one `multiple` ack per channel.
    fn flush_confirms(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut acks = Vec::new();
        for (ch, chan) in c.channels.iter_mut() {
            if chan.state != ChanState::Open {
                chan.unconfirmed.clear();
                continue;
            }
            if let Some(&last) = chan.unconfirmed.last() {
                let multiple = chan.unconfirmed.len() > 1;
                chan.unconfirmed.clear();
                acks.push(method_frame(*ch, ids::BASIC_ACK, |w| {
                    w.u64(last).bit(multiple);
                }));
            }
        }
        for a in acks {
            self.send(now, id, a);
        }
    }

    /// Header and body frames of a message, bodies cut to the connection's frame_max; the
    /// header carries the `headers` property (flag bit 13) when there is one.
    fn send_content(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        body: &Bytes,
        headers: Option<&FieldTable>,
    ) {
        let Some(frame_max) = self.conns.get(&id).map(|c| c.tune.frame_max) else {
            return;
        };
        let mut payload = BytesMut::new();
        Writer::new(&mut payload)
            .u16(60)
            .u16(0)
            .u64(body.len() as u64)
            .u16(if headers.is_some() { 1 << 13 } else { 0 });
        if let Some(h) = headers {
            h.encode(&mut payload);
        }
        let mut data = BytesMut::new();
        data.extend_from_slice(&Frame::new(FrameType::Header, ch, &payload).freeze());
        let max = (frame_max as usize).saturating_sub(8).max(1);
        for chunk in body.chunks(max) {
            data.extend_from_slice(&Frame::new(FrameType::Body, ch, chunk).freeze());
        }
        self.send(now, id, data.freeze());
    }

    /// Hands ready messages to consumers with room, round-robin, queues in name order.
    fn dispatch_all(&mut self, now: Instant) {
        let names: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.msgs.is_empty() && !q.consumers.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            while let Some(q) = self.queues.get(&name) {
                if q.msgs.is_empty() || q.consumers.is_empty() {
                    break;
                }
                let n = q.consumers.len();
                let start = q.next % n;
                let pick = (0..n).map(|i| (start + i) % n).find(|&i| {
                    let c = &q.consumers[i];
                    self.conns
                        .get(&c.conn)
                        .filter(|x| x.phase == Phase::Running)
                        .and_then(|x| x.channels.get(&c.ch))
                        .is_some_and(|chan| {
                            chan.state == ChanState::Open
                                && (c.no_ack
                                    || chan.prefetch == 0
                                    || chan.unacked.len() < usize::from(chan.prefetch))
                        })
                });
                let Some(i) = pick else { break };
                let q = self.queues.get_mut(&name).expect("present");
                q.next = i + 1;
                let c = q.consumers[i].clone();
                let msg = q.msgs.pop_front().expect("non-empty");
                let chan = self.chan(c.conn, c.ch);
                chan.next_dtag += 1;
                let dtag = chan.next_dtag;
                if !c.no_ack {
                    chan.unacked.insert(dtag, (name.clone(), msg.clone()));
                }
                let m = method_frame(c.ch, ids::BASIC_DELIVER, |w| {
                    w.shortstr(&c.tag)
                        .u64(dtag)
                        .bit(msg.redelivered)
                        .shortstr(msg.exchange.as_bytes())
                        .shortstr(msg.rk.as_bytes());
                });
                self.send(now, c.conn, m);
                self.send_content(now, c.conn, c.ch, &msg.body, msg.headers.as_ref());
                if msg.headers.is_some() {
                    self.event_sends.push(c.conn);
                } else {
                    self.log.deliveries += 1;
                }
            }
        }
    }
}

fn kind_name(f: &Frame) -> String {
    match f.kind() {
        FrameType::Method => f
            .method_id()
            .map_or_else(|| "a method".to_owned(), |m| format!("'{m:?}'")),
        FrameType::Header => "a content header".into(),
        FrameType::Body => "a content body".into(),
        FrameType::Heartbeat => "a heartbeat".into(),
    }
}
