//! A sans-IO fake RabbitMQ: enough of the broker to be warren's upstream in a simulation,
//! and strict where RabbitMQ is strict. It lives in the test kit so that there is one fake
//! RabbitMQ for every test that needs one (issue 15); `warren-sim` runs warren against it in
//! both of its layers (directly in the pure-core world, behind turmoil TCP in layer 2), and
//! the `hub_client` fuzz target runs a hub against it with the input deciding when its
//! replies arrive.
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
//! Those rules are not written here: every connection reads its bytes through an
//! [`UpstreamChecker`] (the [`rules`](crate::rules) the `hub_client` fuzz target holds warren
//! to), one frame at a time, so that the broker acts only on frames that break none.
//! warren promises (B7) that nothing a client sends can do that to the shared connection,
//! so any violation is a failed run. Channel errors (404 on a missing exchange, 405 on a
//! locked queue, 406 on an unknown delivery tag) are normal behaviour and close only the
//! channel. So is the one connection error a client's frame may cause where it shares
//! nothing: an `exchange.declare` of a type the broker does not know on a connection with no
//! other channel, which is how warren asks the broker about a type (B7); the broker closes
//! that connection with RabbitMQ's 503 without logging a violation.
//!
//! It also checks what it receives: per (client, channel) publish order, body integrity, and
//! that publishes from two different client channels never share an upstream channel without
//! a fence (`channel.flow`) in between.
//!
//! # Layout
//!
//! This file holds the public face (configuration, outputs, the log) and the calls that
//! drive the broker, with the helpers every part uses (sending, dropping a connection,
//! connection and channel errors). The rest is split by what it handles: `state` is what
//! the broker keeps per connection, channel, queue and exchange; `connection` reads checked
//! frames, runs the handshake and opens and closes channels; `channel` checks a channel's methods and dispatches them by class to
//! `exchange`, `queue` and `basic`; `delivery` routes, confirms and delivers messages;
//! `operator` is what happens to the broker from outside the connections (a message from
//! elsewhere, a queue deleted by an operator, a channel failing), at a moment a test
//! chooses; `tag` is the origin tag a fake client starts every body with, which the broker
//! reads to check and log what it receives.

use crate::rules::UpstreamChecker;
use bytes::{Bytes, BytesMut};
use state::{Chan, ChanState, Conn, Exchange, Msg, Phase, Queue};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use tag::Origin;
use warren_core::frame::{method_frame, HEARTBEAT};
use warren_core::method::{encode, ids, Close, MethodId, Tune};
use warren_core::reply;
use warren_core::table::FieldTable;
use warren_core::wire::Writer;

/// Reads a method argument. Arguments were validated against the method's layout, so reads
/// cannot fail.
macro_rules! rd {
    ($e:expr) => {
        $e.expect("validated")
    };
}

mod basic;
mod channel;
mod connection;
mod delivery;
mod exchange;
mod operator;
mod queue;
mod state;
mod stream;
pub mod tag;

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
    /// Exchange types from plugins (e.g. `x-delayed-message`), accepted besides the four
    /// built-in ones; a non-passive declare of any other type closes the connection with
    /// 503, as in RabbitMQ.
    pub plugin_exchange_types: Vec<String>,
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
            plugin_exchange_types: Vec::new(),
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
    /// Non-passive declares of the default exchange, `(of a type the broker knows, of one it
    /// does not)`: RabbitMQ refuses each (403 on the channel, or 503 on the connection) and
    /// creates nothing, which is how warren asks the broker about a type (B7). For coverage.
    pub default_exchange_declares: (u64, u64),
    /// Events published to `amq.rabbitmq.event`: when, routing key, and how many queues
    /// they were routed to.
    pub events: Vec<(Instant, String, usize)>,
    /// Connections RabbitMQ closes for a method a stream or quorum queue refuses (B7), which
    /// the connection's checker let through (alone on its connection, or of a queue whose
    /// type warren could not know): when, which connection, and the close text.
    pub queue_type_closes: Vec<(Instant, ConnId, String)>,
}

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
    /// A broker with no connections, RabbitMQ's built-in exchanges (the default one,
    /// `amq.direct`, `amq.fanout`, `amq.topic`, `amq.headers`, `amq.match`) and the event
    /// exchange `amq.rabbitmq.event`.
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
        // Topic and headers exchanges route here by exact binding key, which is all the
        // event exchange's subscribers use and all the tests need.
        for (name, kind) in [
            ("amq.direct", "direct"),
            ("amq.fanout", "fanout"),
            ("amq.topic", "topic"),
            ("amq.headers", "headers"),
            ("amq.match", "headers"),
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

    /// What it accepts and offers: a world that checks warren on its own side of the wire
    /// holds it to the same broker (its plugins' exchange types, above all).
    #[must_use]
    pub fn config(&self) -> &BrokerConfig {
        &self.config
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
                check: UpstreamChecker::at_broker(&self.config.plugin_exchange_types),
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
        c.check.at(now);
        c.check.feed(data);
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
            c.check.at(now);
            c.check.from_broker_bytes(&data);
        }
        self.pending
            .entry(conn)
            .or_default()
            .extend_from_slice(&data);
    }

    /// Sends method `mid` on channel `ch`, its arguments written by `args`: how the broker
    /// answers and notifies.
    fn send_method(
        &mut self,
        now: Instant,
        conn: ConnId,
        ch: u16,
        mid: MethodId,
        args: impl FnOnce(&mut Writer<'_>),
    ) {
        self.send(now, conn, method_frame(ch, mid, args));
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
        self.requeue(chan.unacked.into_values());
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
                        self.send_method(now, c.conn, c.ch, ids::BASIC_CANCEL, |w| {
                            w.shortstr(&c.tag).bit(true);
                        });
                    }
                }
            }
        }
        q.msgs.len()
    }

    // ----- errors -----------------------------------------------------------------------

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
        self.close_conn_with(now, id, close);
    }

    /// Closes connection `id` with `close`, whose text is exactly RabbitMQ's.
    fn close_conn_with(&mut self, now: Instant, id: ConnId, close: Close) {
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
            self.requeue(unacked.into_values());
        }
    }

    fn chan(&mut self, id: ConnId, ch: u16) -> &mut Chan {
        self.conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&ch))
            .expect("an open channel")
    }

    /// A method RabbitMQ does not accept on an open channel: a connection error.
    fn not_valid_here(&mut self, now: Instant, id: ConnId, mid: MethodId) {
        self.conn_error(
            now,
            id,
            reply::COMMAND_INVALID,
            format!("{mid:?} is not valid here"),
            mid,
        );
    }
}

/// A short string argument as text.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
