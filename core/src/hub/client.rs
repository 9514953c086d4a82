//! The client side of a hub: admission, validation of every client frame before anything
//! reaches the shared broker connection (B7), channel open and close (B3, B4), publishes
//! forwarded whole (B8), and the clean-up when a client leaves (B5).

use super::channels::Slot;
use super::liveness::Liveness;
use super::{ClientId, Holder, Hub, HubEvent, Output, UpRef, UpstreamId};
use crate::content::{parse_header, rechunk_body};
use crate::frame::{Frame, FrameType};
use crate::handshake::{refusal, ClientCapabilities, ClientHello};
use crate::method::{self, encode, ids, Close, Method, MethodId};
use crate::reply::{self, Reply};
use bytes::Bytes;
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
    /// Exclusive: the name in the reply is deleted when the client leaves (B5).
    Exclusive,
    /// Exclusive and sent by the client with nowait: warren asked for the reply to learn the
    /// queue's name, and does not forward it.
    ExclusiveUnasked,
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

/// One channel of a client.
#[derive(Debug, Default)]
pub(crate) struct ClientChannel {
    pub(crate) state: ChanState,
    /// A publish whose content is still arriving.
    publish: Option<PendingPublish>,
    /// Whether the channel's whole history is in the clean list of B6.
    pub(crate) recyclable: bool,
    /// The upstream channel came from the pool and this client has not declared a queue on
    /// it: RabbitMQ's "last declared queue" shortcut would name the previous owner's queue.
    shortcut_unset: bool,
    /// The `queue.declare`s awaiting their `declare-ok`, in order.
    declares: VecDeque<Declare>,
    /// For each `basic.consume` awaiting its `consume-ok`: was the tag left to the broker?
    consumes: VecDeque<bool>,
    /// Consumer tags in use on this channel, as the broker will see them when it processes
    /// the client's next method: RabbitMQ closes the *connection* on a reused tag.
    consumers: Vec<Vec<u8>>,
    /// A `tx.commit` is in flight; RabbitMQ closes the connection on any method meanwhile.
    committing: bool,
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

/// Outcome of checking one client frame.
enum Verdict {
    /// Forward the frame (or park it while its channel waits for an upstream).
    Forward,
    /// Forward an exclusive `queue.declare` with its nowait flag cleared, so the broker's reply
    /// names the queue (the reply is not forwarded).
    ForwardAskingForReply,
    /// Part of a publish: keep it until the message is complete (B8).
    Hold,
    /// Handled or discarded here.
    Done,
    /// Close the client's connection with this reply.
    Fatal(Reply),
    /// Close only this channel with this reply (channel-level error, RabbitMQ style).
    CloseChannel(Reply),
}

fn unexpected(detail: impl std::fmt::Display) -> Reply {
    Reply::new(reply::UNEXPECTED_FRAME, detail)
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
        // Locked until their delete goes out (below, or when a channel frees up).
        for (_, q) in &exclusive {
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

    /// Remembers the declares still in flight on upstream channel `r`, which is being closed
    /// under client `owner`, if any of them is exclusive.
    fn await_orphan_declares(&mut self, r: UpRef, owner: ClientId, declares: VecDeque<Declare>) {
        if declares.iter().any(|d| *d != Declare::Plain) {
            self.orphan_declares.push((r, owner, declares));
        }
    }

    /// A declare-ok arrived on a channel closed under its client: an exclusive queue it
    /// names belongs to that client, deleted when it leaves, or at once if it is leaving or
    /// gone (its queues were released already).
    pub(super) fn orphan_declare_ok(&mut self, now: Instant, r: UpRef, m: &Method) {
        let Method::QueueDeclareOk { queue } = m else {
            return;
        };
        let Some(i) = self.orphan_declares.iter().position(|(o, _, _)| *o == r) else {
            return;
        };
        let (_, owner, declares) = &mut self.orphan_declares[i];
        let owner = *owner;
        let exclusive = matches!(
            declares.pop_front(),
            Some(Declare::Exclusive | Declare::ExclusiveUnasked)
        );
        if declares.iter().all(|d| *d == Declare::Plain) {
            self.orphan_declares.swap_remove(i);
        }
        if !exclusive {
            return;
        }
        match self
            .client_mut(owner)
            .filter(|c| !matches!(c.phase, Phase::Closing { .. }))
        {
            Some(_) => self.own_exclusive(owner, r.up, queue.clone()),
            None => self.delete_exclusive_queues(now, vec![(r.up, queue.clone())]),
        }
    }

    /// Records that client `id` declared the exclusive queue `queue` on upstream `up`.
    fn own_exclusive(&mut self, id: ClientId, up: UpstreamId, queue: Vec<u8>) {
        let Some(c) = self.client_mut(id) else { return };
        c.exclusive.push((up, queue.clone()));
        self.exclusive_owners.insert(queue, Holder::Client(id));
    }

    /// RabbitMQ's refusal of a method on another connection's exclusive queue, if `frame`
    /// names an exclusive queue of another client of this hub, or of a client that left
    /// before warren could send the queue's delete.
    fn locked_queue(&self, id: ClientId, mid: MethodId, frame: &Frame) -> Option<Reply> {
        let payload = frame.payload();
        let queue = queue_named(mid, payload)?;
        let holder = *self.exclusive_owners.get(queue)?;
        let name = String::from_utf8_lossy(queue);
        let vhost = &self.credentials.vhost;
        let locked = || {
            Reply::new(
                reply::RESOURCE_LOCKED,
                format!(
                    "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. \
                     It could be originally declared on another connection or the exclusive \
                     property value does not match that of the original declaration."
                ),
            )
            .caused_by(mid)
        };
        match holder {
            Holder::Client(owner) if owner == id => None,
            Holder::Client(_) => Some(locked()),
            // The owner left: on RabbitMQ its connection took the queue along, and what finds
            // the name missing gets 404 with RabbitMQ's text. A delete (RabbitMQ: delete-ok)
            // and a new declare (RabbitMQ: a new queue) cannot be answered so before the old
            // queue is gone: they get what RabbitMQ answers while an exclusive owner's
            // connection is still being torn down, the lock, and may try again.
            Holder::Departed
                if mid == ids::QUEUE_DELETE
                    || (mid == ids::QUEUE_DECLARE && !declare_is_passive(payload)) =>
            {
                Some(locked())
            }
            Holder::Departed => Some(
                Reply::new(
                    reply::NOT_FOUND,
                    format!("no queue '{name}' in vhost '{vhost}'"),
                )
                .caused_by(mid),
            ),
        }
    }

    /// Sends `Channel.Close` on an upstream channel nobody owns any more.
    pub(super) fn close_upstream_channel(&mut self, now: Instant, r: UpRef, why: &str) {
        self.set_slot(now, r, Slot::Closing);
        let close = Close::from(&Reply::verbatim(reply::REPLY_SUCCESS, why));
        self.send_upstream(now, r.up, encode::close(r.ch, &close));
    }

    /// Handles one frame from a client. Returns false once the client is closed, so the
    /// rest of its batch is dropped.
    pub(super) fn client_frame(&mut self, now: Instant, id: ClientId, frame: Frame) -> bool {
        let Some(c) = self.client_mut(id) else {
            return false;
        };
        c.liveness.received(now);
        c.counters.frames_in += 1;
        c.counters.bytes_in += frame.wire_len() as u64;
        c.counters.last_activity = now;
        let closing = matches!(c.phase, Phase::Closing { .. });
        self.stats.client_frames += 1;
        self.stats.client_bytes += frame.wire_len() as u64;
        if closing {
            // Only the answer to our Close matters now.
            if frame.method_id() == Some(ids::CONNECTION_CLOSE_OK)
                || frame.method_id() == Some(ids::CONNECTION_CLOSE)
            {
                if frame.method_id() == Some(ids::CONNECTION_CLOSE) {
                    self.send_client(now, id, encode::close_ok(0));
                }
                self.remove_client(id);
                return false;
            }
            return true;
        }
        let verdict = if frame.channel() == 0 {
            self.channel_zero_frame(now, id, &frame)
        } else {
            self.channel_frame(now, id, &frame)
        };
        match verdict {
            Verdict::Forward => {
                self.forward_client_frame(now, id, frame);
                true
            }
            Verdict::ForwardAskingForReply => {
                let mut frame = frame;
                clear_declare_nowait(&mut frame);
                self.forward_client_frame(now, id, frame);
                true
            }
            Verdict::Hold => match self.hold_publish_frame(now, id, frame) {
                Ok(()) => true,
                Err(r) => {
                    self.close_client(now, id, r);
                    false
                }
            },
            Verdict::Done => self.client(id).is_some(),
            Verdict::Fatal(mut r) => {
                if let Some(m) = frame.method_id() {
                    if r.class_method == (0, 0) {
                        r = r.caused_by(m);
                    }
                }
                self.close_client(now, id, r);
                false
            }
            Verdict::CloseChannel(r) => {
                self.close_channel_from_proxy(now, id, frame.channel(), r);
                true
            }
        }
    }

    /// Frames on channel 0: heartbeats and connection-class methods, all handled here.
    fn channel_zero_frame(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        match frame.kind() {
            FrameType::Heartbeat => return Verdict::Done,
            FrameType::Method => {}
            _ => return Verdict::Fatal(unexpected("content frame on channel 0")),
        }
        let (mid, m) = match checked_method(frame) {
            Ok(x) => x,
            Err(r) => return Verdict::Fatal(r),
        };
        match m {
            Method::ConnectionClose(_) => {
                self.send_client(now, id, encode::close_ok(0));
                self.event(HubEvent::ClientLeft { client: id });
                self.release_client(now, id);
                self.remove_client(id);
                Verdict::Done
            }
            // A late answer to nothing: harmless.
            Method::ConnectionCloseOk => Verdict::Done,
            _ if mid == ids::CONNECTION_UPDATE_SECRET => {
                // The shared upstream stays authenticated as it is; the client's new secret
                // only matters for its next connection, which is checked then.
                self.send_client(now, id, encode::update_secret_ok());
                Verdict::Done
            }
            _ => Verdict::Fatal(Reply::new(
                reply::COMMAND_INVALID,
                format!("{mid} is not allowed on channel 0 after the handshake"),
            )),
        }
    }

    /// Frames on a numbered channel.
    fn channel_frame(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        let ch = frame.channel();
        let Some(c) = self.client(id) else {
            return Verdict::Done;
        };
        if frame.kind() == FrameType::Heartbeat {
            return Verdict::Fatal(Reply::new(
                reply::FRAME_ERROR,
                format!("heartbeat frame on channel {ch}"),
            ));
        }
        if ch > c.channel_max {
            return Verdict::Fatal(Reply::new(
                reply::NOT_ALLOWED,
                format!(
                    "channel {ch} exceeds the negotiated channel_max {}",
                    c.channel_max
                ),
            ));
        }
        let Some(chan) = c.channels.get(&ch) else {
            return self.frame_on_unopened_channel(now, id, frame);
        };
        match chan.state {
            ChanState::Closed(_) => return self.frame_on_closed_channel(now, id, frame),
            // The client asked to close; nothing it sends now matters.
            ChanState::Closing(_) => return Verdict::Done,
            ChanState::Waiting | ChanState::Open(_) => {}
        }
        match frame.kind() {
            FrameType::Method => self.channel_method(now, id, frame),
            FrameType::Header => self.content_header(id, frame),
            FrameType::Body => self.content_body(id, frame),
            FrameType::Heartbeat => Verdict::Done,
        }
    }

    fn frame_on_unopened_channel(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        match frame.method_id() {
            Some(ids::CHANNEL_OPEN) => match checked_method(frame) {
                Ok(_) => {
                    self.open_channel(now, id, frame.channel());
                    Verdict::Done
                }
                Err(r) => Verdict::Fatal(r),
            },
            // A late CloseOk for a channel already forgotten: harmless.
            Some(ids::CHANNEL_CLOSE_OK) => Verdict::Done,
            _ => Verdict::Fatal(Reply::new(
                reply::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {}", frame.channel()),
            )),
        }
    }

    fn frame_on_closed_channel(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        let ch = frame.channel();
        match frame.method_id() {
            Some(ids::CHANNEL_CLOSE_OK) => {
                let quarantined = self
                    .client_mut(id)
                    .and_then(|c| c.channels.remove(&ch))
                    .and_then(|chan| match chan.state {
                        ChanState::Closed(r) => r,
                        _ => None,
                    });
                if let Some(r) = quarantined {
                    if self.slot(r) == Slot::Quarantined {
                        self.set_slot(now, r, Slot::Free);
                    }
                }
                Verdict::Done
            }
            Some(ids::CHANNEL_CLOSE) => {
                // Both sides closed at once: answer, and keep waiting for its CloseOk.
                self.send_client(now, id, encode::close_ok(ch));
                Verdict::Done
            }
            // Discarded until the client acknowledges the close (B4).
            _ => Verdict::Done,
        }
    }

    /// A method on an open (or waiting) channel: checked, tracked, and mostly forwarded.
    fn channel_method(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        let ch = frame.channel();
        let (mid, m) = match checked_method(frame) {
            Ok(x) => x,
            Err(r) => return Verdict::Fatal(r),
        };
        if let Some(r) = self.locked_queue(id, mid, frame) {
            return Verdict::CloseChannel(r);
        }
        let extra_types = &self.config.extra_exchange_types;
        let Some(chan) = self
            .clients
            .get_mut(id.index())
            .and_then(|c| c.channels.get_mut(&ch))
        else {
            return Verdict::Done;
        };
        if chan.publish.is_some() {
            return Verdict::Fatal(unexpected(format!(
                "expected content header or body on channel {ch}, got {mid}"
            )));
        }
        if chan.committing && mid != ids::CHANNEL_CLOSE {
            return Verdict::Fatal(Reply::new(
                reply::CHANNEL_ERROR,
                "unexpected command while processing 'tx.commit'",
            ));
        }
        if mid.class == 10 {
            return Verdict::Fatal(Reply::new(
                reply::COMMAND_INVALID,
                format!("{mid} on channel {ch}"),
            ));
        }
        // Anything outside the clean list of B6 makes the channel non-recyclable for good.
        let clean = matches!(
            mid,
            ids::EXCHANGE_DECLARE
                | ids::EXCHANGE_DELETE
                | ids::EXCHANGE_BIND
                | ids::EXCHANGE_UNBIND
                | ids::QUEUE_DECLARE
                | ids::QUEUE_BIND
                | ids::QUEUE_UNBIND
                | ids::QUEUE_PURGE
                | ids::QUEUE_DELETE
                | ids::BASIC_PUBLISH
                | ids::CHANNEL_CLOSE
        );
        if !clean {
            chan.recyclable = false;
        }
        if chan.shortcut_unset {
            if mid == ids::QUEUE_DECLARE {
                chan.shortcut_unset = false;
            } else if uses_queue_shortcut(mid, frame.payload()) {
                // What RabbitMQ answers on a fresh channel; the recycled one would instead
                // resolve the empty name to the previous owner's queue.
                return Verdict::CloseChannel(
                    Reply::new(reply::NOT_FOUND, "no previously declared queue").caused_by(mid),
                );
            }
        }
        match m {
            Method::ChannelOpen => Verdict::Fatal(Reply::new(
                reply::CHANNEL_ERROR,
                format!("second 'channel.open' seen on channel {ch}"),
            )),
            Method::ChannelClose(_) => {
                self.client_closes_channel(now, id, ch);
                Verdict::Done
            }
            Method::ChannelCloseOk => Verdict::Fatal(Reply::new(
                reply::COMMAND_INVALID,
                format!("unexpected channel.close-ok on open channel {ch}"),
            )),
            Method::Flow { active } => {
                // RabbitMQ refuses active=false with a connection error; the proxy answers.
                self.send_client(now, id, encode::flow(ch, active, true));
                Verdict::Done
            }
            Method::Publish {
                immediate: true, ..
            } => Verdict::Fatal(Reply::new(reply::NOT_IMPLEMENTED, "immediate=true")),
            Method::Publish { mandatory, .. } => {
                if mandatory {
                    chan.recyclable = false;
                }
                chan.publish = Some(PendingPublish {
                    frames: Vec::with_capacity(3),
                    remaining: None,
                    bytes: 0,
                });
                Verdict::Hold
            }
            Method::Qos { prefetch_size } if prefetch_size != 0 => Verdict::Fatal(Reply::new(
                reply::NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({prefetch_size})"),
            )),
            Method::Consume { tag, nowait } => {
                if !tag.is_empty() && chan.consumers.contains(&tag) {
                    return Verdict::Fatal(Reply::new(
                        reply::NOT_ALLOWED,
                        format!(
                            "attempt to reuse consumer tag '{}'",
                            String::from_utf8_lossy(&tag)
                        ),
                    ));
                }
                // A server-named consumer's tag is learnt from its consume-ok; with nowait it is
                // never learnt, and cannot collide with a client-chosen one.
                if !nowait {
                    chan.consumes.push_back(tag.is_empty());
                }
                if !tag.is_empty() {
                    chan.consumers.push(tag);
                }
                Verdict::Forward
            }
            Method::Cancel { tag } => {
                chan.consumers.retain(|t| *t != tag);
                Verdict::Forward
            }
            Method::Recover { requeue: false } => {
                Verdict::Fatal(Reply::new(reply::NOT_IMPLEMENTED, "requeue=false"))
            }
            Method::ExchangeDeclare {
                kind,
                passive: false,
            } if !known_exchange_type(&kind, extra_types) => Verdict::Fatal(Reply::new(
                reply::COMMAND_INVALID,
                format!("unknown exchange type '{}'", String::from_utf8_lossy(&kind)),
            )),
            Method::QueueDeclare {
                exclusive,
                nowait,
                passive,
                ..
            } => {
                let exclusive = exclusive && !passive;
                if exclusive {
                    chan.recyclable = false;
                }
                match (exclusive, nowait) {
                    (false, true) => Verdict::Forward,
                    (false, false) => {
                        chan.declares.push_back(Declare::Plain);
                        Verdict::Forward
                    }
                    (true, false) => {
                        chan.declares.push_back(Declare::Exclusive);
                        Verdict::Forward
                    }
                    (true, true) => {
                        chan.declares.push_back(Declare::ExclusiveUnasked);
                        Verdict::ForwardAskingForReply
                    }
                }
            }
            Method::QueueDelete { queue } => {
                if let Some(c) = self.client_mut(id) {
                    let before = c.exclusive.len();
                    c.exclusive.retain(|(_, q)| *q != queue);
                    if c.exclusive.len() != before {
                        if let Some(chan) = c.channels.get_mut(&ch) {
                            chan.recyclable = false;
                        }
                        self.exclusive_owners.remove(&queue);
                    }
                }
                Verdict::Forward
            }
            _ => {
                if mid == ids::TX_COMMIT {
                    chan.committing = true;
                }
                Verdict::Forward
            }
        }
    }

    fn content_header(&mut self, id: ClientId, frame: &Frame) -> Verdict {
        let max = self.config.max_message_size;
        let ch = frame.channel();
        let Some(chan) = self
            .clients
            .get_mut(id.index())
            .and_then(|c| c.channels.get_mut(&ch))
        else {
            return Verdict::Done;
        };
        let Some(p) = chan.publish.as_mut() else {
            return Verdict::Fatal(unexpected(format!(
                "content header on channel {ch} without a content method"
            )));
        };
        if p.remaining.is_some() {
            return Verdict::Fatal(unexpected(format!("second content header on channel {ch}")));
        }
        let h = match parse_header(frame.payload()) {
            Ok(h) => h,
            Err(e) => {
                return Verdict::Fatal(Reply::new(
                    reply::SYNTAX_ERROR,
                    format!("malformed content header: {e}"),
                ))
            }
        };
        if h.class_id != 60 {
            return Verdict::Fatal(unexpected(format!(
                "content header for class {} does not match basic.publish",
                h.class_id
            )));
        }
        if h.body_size > max {
            let held = chan.publish.take().map_or(0, |p| p.bytes);
            if let Some(c) = self.clients.get_mut(id.index()) {
                c.buffered -= held;
            }
            return Verdict::CloseChannel(Reply::new(
                reply::PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {max}",
                    h.body_size
                ),
            ));
        }
        p.remaining = Some(h.body_size);
        Verdict::Hold
    }

    fn content_body(&mut self, id: ClientId, frame: &Frame) -> Verdict {
        let ch = frame.channel();
        let Some(chan) = self
            .clients
            .get_mut(id.index())
            .and_then(|c| c.channels.get_mut(&ch))
        else {
            return Verdict::Done;
        };
        let Some(p) = chan.publish.as_mut() else {
            return Verdict::Fatal(unexpected(format!(
                "content body on channel {ch} without a content method"
            )));
        };
        let Some(remaining) = p.remaining.as_mut() else {
            return Verdict::Fatal(unexpected(format!(
                "content body on channel {ch} before its header"
            )));
        };
        let len = frame.payload().len() as u64;
        if len > *remaining {
            return Verdict::Fatal(unexpected(format!(
                "content body on channel {ch} is larger than the size its header declared"
            )));
        }
        *remaining -= len;
        Verdict::Hold
    }

    /// Adds a frame to the channel's pending publish, and forwards the publish once its body
    /// is complete. Fails when the client's buffered content exceeds its bound (B8).
    fn hold_publish_frame(
        &mut self,
        now: Instant,
        id: ClientId,
        frame: Frame,
    ) -> Result<(), Reply> {
        let limit = self.config.client_buffer_limit;
        let ch = frame.channel();
        let Some(c) = self.client_mut(id) else {
            return Ok(());
        };
        let Some(p) = c
            .channels
            .get_mut(&ch)
            .and_then(|chan| chan.publish.as_mut())
        else {
            return Ok(());
        };
        let len = frame.wire_len();
        p.bytes += len;
        p.frames.push(frame);
        let complete = p.remaining == Some(0);
        c.buffered += len;
        if c.buffered > limit {
            return Err(Reply::new(
                reply::RESOURCE_ERROR,
                format!("more than {limit} bytes of unfinished publishes buffered"),
            ));
        }
        if complete {
            let Some(p) = c.channels.get_mut(&ch).and_then(|chan| chan.publish.take()) else {
                return Ok(());
            };
            c.buffered -= p.bytes;
            self.stats.publishes += 1;
            for f in p.frames {
                self.forward_client_frame(now, id, f);
            }
        }
        Ok(())
    }

    /// Sends a validated client frame to its upstream channel, renumbered, or holds it while
    /// the channel waits for an upstream.
    fn forward_client_frame(&mut self, now: Instant, id: ClientId, mut frame: Frame) {
        let ch = frame.channel();
        let Some(state) = self
            .client(id)
            .and_then(|c| c.channels.get(&ch))
            .map(|chan| match chan.state {
                ChanState::Open(r) => Some(r),
                _ => None,
            })
        else {
            return;
        };
        let Some(r) = state else {
            // Waiting for placement: park the frame until an upstream has room.
            self.held_frames.push((id, frame));
            return;
        };
        let Some(up_frame_max) = self.upstream(r.up).map(|u| u.tune.frame_max) else {
            return;
        };
        if frame.wire_len() > up_frame_max as usize {
            if frame.kind() != FrameType::Body {
                // Methods and headers cannot be split; the broker would close the shared
                // connection for a frame over its frame_max.
                let reply = Reply::new(
                    reply::FRAME_ERROR,
                    format!(
                        "a {}-byte frame on channel {ch} exceeds the broker's frame_max {up_frame_max}",
                        frame.wire_len()
                    ),
                );
                return self.close_client(now, id, reply);
            }
            rechunk_body(r.ch, frame.into_payload(), up_frame_max, &mut |b| {
                self.send_upstream(now, r.up, b);
            });
            return;
        }
        frame.set_channel(r.ch);
        self.send_upstream(now, r.up, frame.freeze());
    }

    /// Client `Channel.Open` (B3): from the pool if possible, else on an upstream with room.
    fn open_channel(&mut self, now: Instant, id: ClientId, ch: u16) {
        if let Some(c) = self.client_mut(id) {
            c.channels.insert(
                ch,
                ClientChannel {
                    recyclable: true,
                    ..ClientChannel::default()
                },
            );
        }
        // Draining, clients that are still here may still open channels where there is room.
        if self.drain.is_some() && !self.has_open_upstream() {
            let r = Reply::new(reply::CONNECTION_FORCED, "warren is shutting down");
            self.close_channel_from_proxy(now, id, ch, r);
            return;
        }
        if self.paused && self.drain.is_none() {
            return self.hold_open(now, id, ch);
        }
        self.serve_open(now, id, ch);
    }

    /// Serves a client's `Channel.Open`: from the pool, on an upstream with room, or once one
    /// has room.
    pub(super) fn serve_open(&mut self, now: Instant, id: ClientId, ch: u16) {
        if let Some(r) = self.take_pooled() {
            if let Some(chan) = self.client_mut(id).and_then(|c| c.channels.get_mut(&ch)) {
                chan.shortcut_unset = true;
            }
            self.stats.opens_from_pool += 1;
            self.set_slot(now, r, Slot::Owned { client: id, ch });
            self.bind_channel(now, id, ch, r);
            self.send_client(now, id, encode::channel_open_ok(ch));
            return;
        }
        match self.place() {
            Some(up) => self.open_on(now, id, ch, up),
            None => {
                self.waiting_opens.push_back((id, ch));
                self.grow(now);
            }
        }
    }

    /// Allocates an upstream number on `up` and sends `Channel.Open` for client channel `ch`.
    pub(super) fn open_on(&mut self, now: Instant, id: ClientId, ch: u16, up: UpstreamId) {
        let Some(u) = self.upstream_mut(up) else {
            return;
        };
        let Some(uch) = u.table.allocate(Slot::Opening { client: id, ch }) else {
            return;
        };
        u.idle_since = None;
        self.stats.opens_from_broker += 1;
        let r = UpRef { up, ch: uch };
        self.send_upstream(now, up, encode::channel_open(uch));
        self.bind_channel(now, id, ch, r);
        self.schedule_upstream(up);
    }

    /// Maps client channel `ch` to `r`, replays a blocked state (B12) and flushes held frames.
    fn bind_channel(&mut self, now: Instant, id: ClientId, ch: u16, r: UpRef) {
        let blocked = self.upstream(r.up).and_then(|u| u.blocked.clone());
        let Some(c) = self.client_mut(id) else { return };
        if let Some(chan) = c.channels.get_mut(&ch) {
            chan.state = ChanState::Open(r);
        }
        if let Some(reason) = blocked {
            self.tell_blocked(now, id, r.up, &reason);
        }
        let held: Vec<Frame> = {
            let mut keep = Vec::new();
            let mut mine = Vec::new();
            for (cid, f) in self.held_frames.drain(..) {
                if cid == id && f.channel() == ch {
                    mine.push(f);
                } else {
                    keep.push((cid, f));
                }
            }
            self.held_frames = keep;
            mine
        };
        for f in held {
            self.forward_client_frame(now, id, f);
        }
    }

    /// Client `Channel.Close` on an open channel.
    fn client_closes_channel(&mut self, now: Instant, id: ClientId, ch: u16) {
        let pool_room = self.pool_has_room();
        let Some(c) = self.client_mut(id) else { return };
        let Some(chan) = c.channels.get_mut(&ch) else {
            return;
        };
        if let Some(p) = chan.publish.take() {
            c.buffered -= p.bytes;
        }
        match chan.state {
            ChanState::Waiting => {
                c.channels.remove(&ch);
                self.waiting_opens.retain(|w| *w != (id, ch));
                self.forget_held_open(id, Some(ch));
                self.held_frames
                    .retain(|(cid, f)| !(*cid == id && f.channel() == ch));
                self.send_client(now, id, encode::close_ok(ch));
            }
            ChanState::Open(r) => {
                let recyclable = chan.recyclable;
                match self.slot(r) {
                    Slot::Owned { .. } if recyclable && pool_room => {
                        // Recycled: the client is answered at once, the channel is fenced.
                        if let Some(c) = self.client_mut(id) {
                            c.channels.remove(&ch);
                        }
                        self.send_client(now, id, encode::close_ok(ch));
                        self.fence(now, r);
                    }
                    _ => {
                        if let Some(chan) =
                            self.client_mut(id).and_then(|c| c.channels.get_mut(&ch))
                        {
                            chan.state = ChanState::Closing(r);
                        }
                        if let Slot::Opening { .. } | Slot::Owned { .. } = self.slot(r) {
                            self.set_slot(now, r, Slot::ClosingForClient { client: id, ch });
                        }
                        let close =
                            Close::from(&Reply::verbatim(reply::REPLY_SUCCESS, "closed by client"));
                        self.send_upstream(now, r.up, encode::close(r.ch, &close));
                    }
                }
            }
            ChanState::Closing(_) | ChanState::Closed(_) => {}
        }
    }

    /// Closes a client channel on the proxy's initiative with a channel-level reply, and
    /// closes its upstream channel too.
    pub(super) fn close_channel_from_proxy(
        &mut self,
        now: Instant,
        id: ClientId,
        ch: u16,
        reply: Reply,
    ) {
        let Some(c) = self.client_mut(id) else { return };
        let Some(chan) = c.channels.get_mut(&ch) else {
            return;
        };
        if let Some(p) = chan.publish.take() {
            c.buffered -= p.bytes;
        }
        let prev = std::mem::replace(&mut chan.state, ChanState::Closed(None));
        let declares = std::mem::take(&mut chan.declares);
        self.waiting_opens.retain(|w| *w != (id, ch));
        self.forget_held_open(id, Some(ch));
        self.held_frames
            .retain(|(cid, f)| !(*cid == id && f.channel() == ch));
        if let ChanState::Open(r) = prev {
            if let Slot::Owned { .. } | Slot::Opening { .. } = self.slot(r) {
                self.close_upstream_channel(now, r, "closed by warren");
                // Declares in flight still create their queues; the replies now arrive on a
                // closing channel, where only the orphan list can learn exclusive names.
                self.await_orphan_declares(r, id, declares);
            }
        }
        self.send_client(now, id, encode::close(ch, &Close::from(&reply)));
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

    /// Broker-side bookkeeping for replies routed to a client channel: consumer tags, the
    /// names of exclusive queues, the end of a `tx.commit`. Returns whether the reply goes on
    /// to the client (not when warren asked for it itself).
    pub(super) fn note_reply(
        &mut self,
        id: ClientId,
        ch: u16,
        up: UpstreamId,
        m: &Method,
        mid: MethodId,
    ) -> bool {
        let Some(c) = self.client_mut(id) else {
            return true;
        };
        let Some(chan) = c.channels.get_mut(&ch) else {
            return true;
        };
        match m {
            Method::QueueDeclareOk { queue } => match chan.declares.pop_front() {
                Some(Declare::Exclusive) => self.own_exclusive(id, up, queue.clone()),
                Some(Declare::ExclusiveUnasked) => {
                    self.own_exclusive(id, up, queue.clone());
                    return false;
                }
                _ => {}
            },
            // Every consume-ok answers one consume; only a broker-chosen tag is news.
            Method::ConsumeOk { tag }
                if chan.consumes.pop_front() == Some(true) && !chan.consumers.contains(tag) =>
            {
                chan.consumers.push(tag.clone());
            }
            // The broker cancelled a consumer (queue deleted, ...): the tag is free again.
            Method::Cancel { tag } => chan.consumers.retain(|t| t != tag),
            _ if mid == ids::TX_COMMIT_OK => chan.committing = false,
            _ => {}
        }
        true
    }

    /// The client's channel was closed by the broker: forward the close, answer the broker,
    /// quarantine the upstream number until the client acknowledges (B4).
    pub(super) fn broker_closed_channel(
        &mut self,
        now: Instant,
        id: ClientId,
        ch: u16,
        r: UpRef,
        close: Bytes,
    ) {
        self.set_slot(now, r, Slot::Quarantined);
        self.send_upstream(now, r.up, encode::close_ok(r.ch));
        let Some(c) = self.client_mut(id) else { return };
        if let Some(chan) = c.channels.get_mut(&ch) {
            if let Some(p) = chan.publish.take() {
                c.buffered -= p.bytes;
            }
            chan.state = ChanState::Closed(Some(r));
        }
        self.send_client(now, id, close);
    }

    /// Serves channels waiting for an upstream, in order, while there is room.
    pub(super) fn serve_waiting_opens(&mut self, now: Instant) {
        while let Some(&(id, ch)) = self.waiting_opens.front() {
            let Some(up) = self.place() else { break };
            self.waiting_opens.pop_front();
            self.open_on(now, id, ch, up);
        }
        if !self.waiting_opens.is_empty() {
            self.grow(now);
        }
    }

    /// Refuses every waiting channel: no upstream can take them.
    pub(super) fn fail_waiting_opens(&mut self, now: Instant, reply: &Reply) {
        let waiting: Vec<(ClientId, u16)> = self.waiting_opens.drain(..).collect();
        for (id, ch) in waiting {
            self.stats.channel_refusals += 1;
            self.close_channel_from_proxy(now, id, ch, reply.clone());
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
        return Err(Reply::new(
            reply::COMMAND_INVALID,
            format!("{} may not be sent by a client", spec.name),
        ));
    }
    method::validate_args(spec, args).map_err(|e| {
        Reply::new(reply::SYNTAX_ERROR, format!("{}: {e}", spec.name)).caused_by(mid)
    })?;
    let m = method::decode(frame.payload()).map_err(|e| {
        Reply::new(reply::SYNTAX_ERROR, format!("{}: {e}", spec.name)).caused_by(mid)
    })?;
    Ok((mid, m))
}

/// Clears the nowait flag of a `queue.declare` in place: the flags octet follows the reserved
/// short and the queue name; nowait is its fifth bit.
fn clear_declare_nowait(frame: &mut Frame) {
    let p = frame.payload_mut();
    let Some(&name_len) = p.get(6) else { return };
    if let Some(flags) = p.get_mut(7 + usize::from(name_len)) {
        *flags &= !(1 << 4);
    }
}

/// Whether a `queue.declare` is passive: the flags octet follows the reserved short and the
/// queue name; passive is its first bit.
fn declare_is_passive(payload: &[u8]) -> bool {
    let Some(&name_len) = payload.get(6) else {
        return false;
    };
    payload
        .get(7 + usize::from(name_len))
        .is_some_and(|flags| flags & 1 != 0)
}

/// Methods whose arguments start with a reserved short and a queue name: the queue-class
/// methods RabbitMQ checks exclusivity on, `basic.consume` and `basic.get`.
fn names_queue(mid: MethodId) -> bool {
    matches!(
        mid,
        ids::QUEUE_DECLARE
            | ids::QUEUE_BIND
            | ids::QUEUE_UNBIND
            | ids::QUEUE_PURGE
            | ids::QUEUE_DELETE
            | ids::BASIC_CONSUME
            | ids::BASIC_GET
    )
}

/// The queue name such a method carries (class, method, reserved short, then the name's
/// length octet); `None` for other methods and for the empty name.
fn queue_named(mid: MethodId, payload: &[u8]) -> Option<&[u8]> {
    if !names_queue(mid) {
        return None;
    }
    let len = usize::from(*payload.get(6)?);
    payload.get(7..7 + len).filter(|q| !q.is_empty())
}

/// Whether a method names its queue with the empty string, which RabbitMQ resolves to the
/// last queue declared on the channel (a declare with the empty name asks for a new one).
fn uses_queue_shortcut(mid: MethodId, payload: &[u8]) -> bool {
    names_queue(mid) && mid != ids::QUEUE_DECLARE && payload.get(6) == Some(&0)
}

/// Exchange types RabbitMQ ships, plus configured plugin types.
fn known_exchange_type(kind: &[u8], extra: &[String]) -> bool {
    matches!(kind, b"direct" | b"fanout" | b"topic" | b"headers")
        || extra.iter().any(|t| t.as_bytes() == kind)
}
