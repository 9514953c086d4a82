//! The client side of a hub: admission, validation of every client frame before anything
//! reaches the shared broker connection (B7), channel open and close (B3, B4), publishes
//! forwarded whole (B8), and the clean-up when a client leaves (B5).
//!
//! | file | holds |
//! |---|---|
//! | `client.rs` | the client and channel types, admission of a client, its close and its release (B5) |
//! | `client/dispatch.rs` | every client frame's first stop: channel 0, channel state, the verdict carried out |
//! | `client/methods.rs` | the rules of each method family on an open channel |
//! | `client/content.rs` | publishes held until whole, then forwarded (B8) |
//! | `client/channel.rs` | channel open and close (B3, B4), broker replies routed to a channel |
//! | `client/exclusive.rs` | exclusive queues: who owns which, locks, orphaned declares (B5) |

mod channel;
mod content;
mod dispatch;
mod exclusive;
mod methods;

use super::channels::Slot;
use super::liveness::Liveness;
use super::queue_types::{QueueType, StreamDeliveries};
use super::{ClientId, Holder, Hub, HubEvent, Output, UpRef, UpstreamId};
use crate::frame::Frame;
use crate::handshake::{refusal, ClientCapabilities, ClientHello};
use crate::method::{self, encode, ids, Close, Method, MethodId};
use crate::reply::{self, Reply};
use crate::wire::WireError;
use std::collections::VecDeque;
use std::time::Instant;

/// Where a client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Handshake done, waiting for an upstream to accept the credentials (B2).
    AwaitingUpstream,
    /// Admitted: `Connection.OpenOk` sent.
    Open,
    /// The proxy sent `Connection.Close`; waiting for `CloseOk` until the given time.
    Closing { until: Instant },
}

/// A client connection as the hub sees it.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: ClientId,
    pub(crate) caps: ClientCapabilities,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    pub(crate) phase: Phase,
    pub(crate) liveness: Liveness,
    pub(crate) timer_at: Option<Instant>,
    pub(crate) channels: ChannelMap,
    /// Content bytes held in unfinished publishes, across channels.
    pub(crate) buffered: usize,
    /// Exclusive queues this client declared, by the upstream that owns them.
    pub(crate) exclusive: Vec<(UpstreamId, Vec<u8>)>,
    /// The upstream its first channel went to, where its later ones go too while it has room
    /// (B3): RabbitMQ keeps an exclusive queue to the connection that declared it, so a
    /// channel on another upstream could not reach the client's own.
    pub(crate) home: Option<UpstreamId>,
    /// Blocked upstreams this client has been told about (B12).
    pub(crate) blocked_by: Vec<UpstreamId>,
    /// What it said about itself, for the admin API.
    pub(crate) labels: Box<ClientLabels>,
    /// Its traffic and times, for the admin API.
    pub(crate) counters: ClientCounters,
}

/// A client's own description of itself (client properties).
#[derive(Debug, Default)]
pub(crate) struct ClientLabels {
    pub(crate) connection_name: Option<String>,
    pub(crate) product: Option<String>,
    pub(crate) version: Option<String>,
}

/// A client's traffic through its hub, and when it joined and last spoke.
#[derive(Debug)]
pub(crate) struct ClientCounters {
    pub(crate) frames_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) frames_out: u64,
    pub(crate) bytes_out: u64,
    pub(crate) since: Instant,
    pub(crate) last_activity: Instant,
}

impl Client {
    pub(crate) fn new(id: ClientId, now: Instant, hello: ClientHello) -> Self {
        let labels = Box::new(ClientLabels {
            connection_name: hello.connection_name,
            product: hello.product,
            version: hello.version,
        });
        Client {
            id,
            caps: hello.capabilities,
            frame_max: hello.tune.frame_max,
            channel_max: hello.tune.channel_max,
            phase: Phase::AwaitingUpstream,
            liveness: Liveness::new(now, hello.tune.heartbeat),
            timer_at: None,
            channels: ChannelMap::default(),
            buffered: 0,
            exclusive: Vec::new(),
            home: None,
            blocked_by: Vec::new(),
            labels,
            counters: ClientCounters {
                frames_in: 0,
                bytes_in: 0,
                frames_out: 0,
                bytes_out: 0,
                since: now,
                last_activity: now,
            },
        }
    }

    /// The earliest moment the client's timer has something to do.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closing { until } => Some(until),
            _ => self.liveness.deadline(),
        }
    }
}

/// A `queue.declare` whose `declare-ok` is on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Declare {
    /// Nothing to remember.
    Plain,
    /// Not exclusive, with an `x-queue-type` whose rules matter: the reply confirms the
    /// queue's type (see `queue_types`).
    Typed(QueueType),
    /// Exclusive: the name in the reply is deleted when the client leaves (B5).
    Exclusive,
    /// Exclusive and sent by the client with nowait: warren asked for the reply to learn the
    /// queue's name, and does not forward it.
    ExclusiveUnasked,
}

impl Declare {
    /// Whether its reply names a queue this client owns (B5).
    pub(crate) fn is_exclusive(&self) -> bool {
        matches!(self, Declare::Exclusive | Declare::ExclusiveUnasked)
    }

    /// Whether its reply teaches the hub anything (an owner or a type), even after the
    /// channel was closed under its client.
    pub(crate) fn matters(&self) -> bool {
        *self != Declare::Plain
    }
}

/// A `queue.delete` whose `delete-ok` is on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delete {
    /// Of a queue that is not an exclusive queue of this client.
    Other,
    /// Of an exclusive queue of this client, which is gone once the broker answers; `asked`
    /// is false when the client sent it with nowait and warren asked for the reply itself
    /// (it is not forwarded).
    Exclusive { queue: Vec<u8>, asked: bool },
}

/// What a method naming its queue with the empty string means on a client channel: RabbitMQ
/// takes the last queue declared on the (upstream) channel (B5, B6).
#[derive(Debug, Default)]
pub(crate) enum Shortcut {
    /// What the broker knows: no declare yet (it answers 404 itself), or one that let the
    /// broker name the queue.
    #[default]
    Broker,
    /// The upstream channel came from the pool and this client has not declared a queue on
    /// it: the broker would name the previous owner's queue, so warren answers 404.
    Recycled,
    /// The queue the client named in its last declare, as RabbitMQ reads the name.
    Named(Vec<u8>),
}

/// A client's channels by number: a sorted vector, because most clients have one or two
/// channels and a tree node would cost more than a kilobyte per idle client (P6).
#[derive(Debug, Default)]
pub(crate) struct ChannelMap(Vec<(u16, ClientChannel)>);

impl ChannelMap {
    fn find(&self, ch: u16) -> Result<usize, usize> {
        self.0.binary_search_by_key(&ch, |(c, _)| *c)
    }

    pub(crate) fn get(&self, ch: &u16) -> Option<&ClientChannel> {
        self.find(*ch).ok().map(|i| &self.0[i].1)
    }

    pub(crate) fn get_mut(&mut self, ch: &u16) -> Option<&mut ClientChannel> {
        self.find(*ch).ok().map(|i| &mut self.0[i].1)
    }

    pub(crate) fn insert(&mut self, ch: u16, chan: ClientChannel) {
        match self.find(ch) {
            Ok(i) => self.0[i].1 = chan,
            Err(i) => {
                // Most clients have one channel: a first push would make room for four.
                if self.0.is_empty() {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (ch, chan));
            }
        }
    }

    pub(crate) fn remove(&mut self, ch: &u16) -> Option<ClientChannel> {
        self.find(*ch).ok().map(|i| self.0.remove(i).1)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl IntoIterator for ChannelMap {
    type Item = (u16, ClientChannel);
    type IntoIter = std::vec::IntoIter<(u16, ClientChannel)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A channel's transaction (`tx.*`), as far as RabbitMQ's answers depend on it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Tx {
    /// No `tx.select`: RabbitMQ refuses a commit at once (406 on the channel).
    #[default]
    None,
    /// Transactional; whether it published since the last commit or rollback.
    Open {
        /// A publish is in the transaction.
        published: bool,
    },
    /// A commit with publishes in it awaits its `commit-ok`: RabbitMQ's channel waits for the
    /// queues to take them and closes the connection on any method meanwhile (504). A commit
    /// with none is answered at once.
    Committing,
}

impl Tx {
    /// The transaction after the client's method `mid` (a publish, a `tx.*`).
    fn after(self, mid: MethodId) -> Tx {
        match (self, mid) {
            (Tx::None, ids::TX_SELECT) => Tx::Open { published: false },
            (Tx::Open { .. }, ids::BASIC_PUBLISH) => Tx::Open { published: true },
            (Tx::Open { published: true }, ids::TX_COMMIT) => Tx::Committing,
            (Tx::Open { .. }, ids::TX_COMMIT | ids::TX_ROLLBACK) => Tx::Open { published: false },
            (tx, _) => tx,
        }
    }
}

/// One channel of a client.
#[derive(Debug, Default)]
pub(crate) struct ClientChannel {
    pub(crate) state: ChanState,
    /// A publish whose content is still arriving.
    publish: Option<PendingPublish>,
    /// Whether the channel's whole history is in the clean list of B6.
    pub(crate) recyclable: bool,
    /// What RabbitMQ's empty-name queue shortcut names on this channel.
    shortcut: Shortcut,
    /// The `queue.declare`s awaiting their `declare-ok`, in order.
    declares: VecDeque<Declare>,
    /// The `queue.delete`s awaiting their `delete-ok`, in order. A channel error discards
    /// the deletes behind it: an exclusive queue stays the client's, and is deleted when it
    /// leaves (B5).
    deletes: VecDeque<Delete>,
    /// The `basic.consume`s awaiting their `consume-ok`, in order.
    consumes: VecDeque<PendingConsume>,
    /// Consumer tags in use on this channel, as the broker will see them when it processes
    /// the client's next method: RabbitMQ closes the *connection* on a reused tag.
    consumers: Vec<Vec<u8>>,
    /// Its transaction, as RabbitMQ's channel sees it.
    tx: Tx,
    /// The last `basic.qos` set a global prefetch limit: RabbitMQ closes the connection on
    /// a consume from a quorum queue meanwhile.
    pub(crate) global_qos: bool,
    /// The last per-consumer `basic.qos` set a prefetch: RabbitMQ refuses a stream consumer
    /// without one (406) before it looks at anything else.
    pub(crate) consumer_prefetch: bool,
    /// Its consumers on streams and their deliveries not settled yet (`queue_types`).
    pub(crate) streams: Option<Box<StreamDeliveries>>,
}

/// A `basic.consume` whose `consume-ok` is on its way.
#[derive(Debug)]
pub(crate) struct PendingConsume {
    /// The tag was left to the broker: the reply names it.
    broker_tag: bool,
    /// The stream it reads, if it is a known one and its tag is the broker's to name.
    stream: Option<Vec<u8>>,
}

impl ClientChannel {
    /// The queue a method on this channel names as `queue`: an empty name is the channel's
    /// last declared queue, if warren knows its name.
    pub(crate) fn queue_named<'a>(&'a self, queue: &'a [u8]) -> Option<&'a [u8]> {
        match (&self.shortcut, queue.is_empty()) {
            (_, false) => Some(queue),
            (Shortcut::Named(last), true) => Some(last),
            _ => None,
        }
    }
}

/// The life of a client channel.
#[derive(Debug, Default)]
pub(crate) enum ChanState {
    /// Opened by the client; no upstream had room yet. Frames are held until placement.
    #[default]
    Waiting,
    /// Mapped to an upstream channel (opening or open).
    Open(UpRef),
    /// The client's `Channel.Close` was forwarded; waiting for the broker's `CloseOk`.
    Closing(UpRef),
    /// Closed towards the client (by the broker or the proxy); waiting for the client's
    /// `CloseOk`. Every other client frame on it is discarded (B4). The upstream number, if
    /// any, stays quarantined until then.
    Closed(Option<UpRef>),
}

/// A `basic.publish` whose header or body frames are still arriving (B8).
#[derive(Debug)]
struct PendingPublish {
    /// Method, header and body frames, renumbered when forwarded.
    frames: Vec<Frame>,
    /// Body bytes still expected; `None` until the header arrives.
    remaining: Option<u64>,
    /// Wire bytes held.
    bytes: usize,
}

impl PendingPublish {
    /// RabbitMQ's refusal of a frame that is not the content this publish awaits.
    fn out_of_sequence(&self) -> Reply {
        let expected = if self.remaining.is_some() {
            "expected content body, got non content body frame instead"
        } else {
            "expected content header for class 60, got non content header frame instead"
        };
        unexpected(expected).caused_by(method::ids::BASIC_PUBLISH)
    }
}

/// RabbitMQ's refusal of a content frame on a channel that awaits a method.
fn content_without_method() -> Reply {
    unexpected("expected method frame, got non method frame instead")
}

/// Outcome of checking one client frame.
enum Verdict {
    /// Forward the frame (or park it while its channel waits for an upstream).
    Forward,
    /// Forward an exclusive `queue.declare`, or the delete of an exclusive queue, with its
    /// nowait flag cleared, so the broker's reply names the queue or says it is gone (the
    /// reply is not forwarded).
    ForwardAskingForReply,
    /// Part of a publish: keep it until the message is complete (B8).
    Hold,
    /// Handled or discarded here.
    Done,
    /// Close the client's connection with this reply.
    Fatal(Reply),
    /// Close only this channel with this reply (channel-level error, RabbitMQ style).
    CloseChannel(Reply),
    /// Keep the frame, unchecked, until the broker says whether it knows an exchange type;
    /// `Some` names the type of the declare that asks (see `exchange_types`).
    Park(Option<Vec<u8>>),
}

fn unexpected(detail: impl std::fmt::Display) -> Reply {
    Reply::new(reply::UNEXPECTED_FRAME, detail)
}

/// RabbitMQ's refusal of `frame` where it came (see [`reply::misplaced_frame`]).
fn misplaced_frame(frame: &Frame) -> Reply {
    reply::misplaced_frame(frame.kind().octet(), frame.payload())
}

/// RabbitMQ's answer to a method a client may not send where it was sent (a server's
/// method, or a connection method on a channel).
fn unimplemented_method() -> Reply {
    Reply::new(reply::COMMAND_INVALID, "unimplemented method")
}

impl Hub {
    /// Sends `Connection.OpenOk` and marks the client open.
    pub(super) fn admit(&mut self, now: Instant, id: ClientId) {
        if self.is_held(id) {
            return;
        }
        let Some(c) = self.client_mut(id) else { return };
        if c.phase != Phase::AwaitingUpstream {
            return;
        }
        c.phase = Phase::Open;
        self.send_client(now, id, encode::open_ok());
        self.event(HubEvent::ClientAdmitted { client: id });
    }

    /// Refuses a client that is not admitted yet, as [`refusal`] says: a refused login (403)
    /// to a client without `authentication_failure_close` is a dropped socket.
    pub(super) fn refuse_client(&mut self, now: Instant, id: ClientId, reply: Reply) {
        let Some(c) = self.client(id) else { return };
        if refusal(&reply, c.caps).is_none() {
            *self.stats.client_closes.entry(reply.code).or_default() += 1;
            self.event(HubEvent::ClientClosed { client: id, reply });
            self.remove_client(id);
        } else {
            self.close_client(now, id, reply);
        }
    }

    /// Sends `Connection.Close` with `reply`, releases the client's channels, and waits a
    /// bounded time for `CloseOk`.
    pub(super) fn close_client(&mut self, now: Instant, id: ClientId, reply: Reply) {
        let until = now + self.config.close_timeout;
        let Some(c) = self.client_mut(id) else { return };
        if matches!(c.phase, Phase::Closing { .. }) {
            return;
        }
        c.phase = Phase::Closing { until };
        tracing::debug!(client = %id, code = reply.code, text = %reply.text, "closing client");
        self.send_client(now, id, encode::close(0, &Close::from(&reply)));
        *self.stats.client_closes.entry(reply.code).or_default() += 1;
        self.event(HubEvent::ClientClosed { client: id, reply });
        self.release_client(now, id);
        self.schedule_client(id);
    }

    /// The client's socket is gone.
    pub(super) fn client_gone(&mut self, now: Instant, id: ClientId) {
        if self.client(id).is_none() {
            return;
        }
        self.event(HubEvent::ClientLeft { client: id });
        self.release_client(now, id);
        self.remove_client(id);
    }

    /// Forgets the client and tells the driver to close its socket.
    pub(super) fn remove_client(&mut self, id: ClientId) {
        let Some(c) = self.client(id) else { return };
        let timer = c.timer_at;
        self.agenda
            .reschedule(super::Timer::Client(id), timer, None);
        self.waiting_opens.retain(|(c, _)| *c != id);
        self.forget_held_open(id, None);
        self.types.forget(id);
        self.clients.remove(id.index());
        self.out.push_back(Output::CloseClient { client: id });
        // The last client leaving may let an idle upstream go.
        let ups: Vec<UpstreamId> = self.upstreams.iter().map(|(_, u)| u.id).collect();
        for u in ups {
            self.schedule_upstream(u);
        }
    }

    /// Releases everything a client holds upstream (B5): each channel is closed (or fenced
    /// for the pool), quarantined numbers are freed, unfinished publishes are dropped
    /// unsent, and exclusive queues are deleted.
    pub(super) fn release_client(&mut self, now: Instant, id: ClientId) {
        let Some(c) = self.client_mut(id) else { return };
        let channels = std::mem::take(&mut c.channels);
        let exclusive = std::mem::take(&mut c.exclusive);
        c.buffered = 0;
        self.types.forget(id);
        // Locked until their delete goes out (below, or when a channel frees up).
        for (up, q) in &exclusive {
            self.count_client_queue(*up, false);
            if let Some(h) = self.exclusive_owners.get_mut(q) {
                if *h == Holder::Client(id) {
                    *h = Holder::Departed;
                }
            }
        }
        self.waiting_opens.retain(|(c, _)| *c != id);
        self.forget_held_open(id, None);
        self.held_frames.retain(|(c, _)| *c != id);
        for (_, chan) in channels {
            self.let_go(now, id, chan);
        }
        self.delete_exclusive_queues(now, exclusive);
    }

    /// Client `id` no longer holds `chan`: recycle it if clean, close it upstream otherwise.
    fn let_go(&mut self, now: Instant, id: ClientId, chan: ClientChannel) {
        let ClientChannel {
            state,
            recyclable,
            declares,
            ..
        } = chan;
        match state {
            ChanState::Waiting => {}
            ChanState::Open(r) => match self.slot(r) {
                Slot::Owned { .. } if recyclable && self.pool_has_room() => {
                    self.fence(now, r);
                }
                Slot::Owned { .. } | Slot::Opening { .. } => {
                    self.close_upstream_channel(now, r, "client left");
                }
                _ => {}
            },
            ChanState::Closing(r) => {
                if let Slot::ClosingForClient { .. } = self.slot(r) {
                    self.set_slot(now, r, Slot::Closing);
                }
            }
            ChanState::Closed(Some(r)) => {
                if self.slot(r) == Slot::Quarantined {
                    self.set_slot(now, r, Slot::Free);
                }
            }
            ChanState::Closed(None) => {}
        }
        // An exclusive declare still in flight: its declare-ok will name a queue that must
        // be deleted although nobody is left to receive it (B5).
        if let ChanState::Open(r) | ChanState::Closing(r) = state {
            self.await_orphan_declares(r, id, declares);
        }
    }

    /// Tells a client its upstream is blocked, once per upstream (B12).
    pub(super) fn tell_blocked(
        &mut self,
        now: Instant,
        id: ClientId,
        up: UpstreamId,
        reason: &str,
    ) {
        let Some(c) = self.client_mut(id) else { return };
        if c.blocked_by.contains(&up) {
            return;
        }
        c.blocked_by.push(up);
        if c.blocked_by.len() == 1 && c.caps.connection_blocked {
            self.send_client(now, id, encode::blocked(reason));
        }
    }

    /// Tells a client an upstream is no longer blocked; it hears `Unblocked` once no upstream
    /// it uses is blocked.
    pub(super) fn tell_unblocked(&mut self, now: Instant, id: ClientId, up: UpstreamId) {
        let Some(c) = self.client_mut(id) else { return };
        let before = c.blocked_by.len();
        c.blocked_by.retain(|u| *u != up);
        if before == 1 && c.blocked_by.is_empty() && c.caps.connection_blocked {
            self.send_client(now, id, encode::unblocked());
        }
    }
}

/// Splits and validates a method frame from a client: known method, legal from a client,
/// arguments of the right shape. Returns the id and the decoded method.
fn checked_method(frame: &Frame) -> Result<(MethodId, Method), Reply> {
    let (mid, args) = method::split_payload(frame.payload())
        .map_err(|e| Reply::new(reply::SYNTAX_ERROR, format!("malformed method frame: {e}")))?;
    let Some(spec) = method::spec(mid) else {
        return Err(Reply::new(
            reply::NOT_IMPLEMENTED,
            format!("unknown method {mid}"),
        ));
    };
    if !spec.client_may_send() {
        return Err(unimplemented_method());
    }
    method::validate_args(spec, args).map_err(|e| match e {
        // RabbitMQ cannot split such arguments into fields at all.
        WireError::Truncated | WireError::TrailingBytes => {
            reply::cannot_decode(args).caused_by(mid)
        }
        _ => Reply::new(reply::SYNTAX_ERROR, format!("{}: {e}", spec.name)).caused_by(mid),
    })?;
    let m = method::decode(frame.payload()).map_err(|e| {
        Reply::new(reply::SYNTAX_ERROR, format!("{}: {e}", spec.name)).caused_by(mid)
    })?;
    Ok((mid, m))
}
