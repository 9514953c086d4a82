//! A client channel's open and close: `Channel.Open` served from the pool or an upstream with
//! room, or queued until one has room (B3); a close from the client, from warren or from the
//! broker, with the upstream number quarantined until the client acknowledges (B4); and the
//! broker's replies on a client channel that warren keeps track of.

use super::{ChanState, ClientChannel, Declare, Delete, Shortcut, Tx};
use crate::frame::Frame;
use crate::hub::channels::Slot;
use crate::hub::{ClientId, Hub, UpRef, UpstreamId};
use crate::method::{encode, ids, Close, Method, MethodId};
use crate::reply::{self, Reply};
use bytes::Bytes;
use std::time::Instant;

impl Hub {
    /// Client `Channel.Open` (B3): from the pool if possible, else on an upstream with room.
    pub(super) fn open_channel(&mut self, now: Instant, id: ClientId, ch: u16) {
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
    pub(in crate::hub) fn serve_open(&mut self, now: Instant, id: ClientId, ch: u16) {
        if let Some(r) = self.take_pooled_for(now, id) {
            if let Some(chan) = self.client_mut(id).and_then(|c| c.channels.get_mut(&ch)) {
                chan.shortcut = Shortcut::Recycled;
            }
            self.stats.opens_from_pool += 1;
            self.set_slot(now, r, Slot::Owned { client: id, ch });
            self.bind_channel(now, id, ch, r);
            self.send_client(now, id, encode::channel_open_ok(ch));
            return;
        }
        match self.place_for(id) {
            Some(up) => self.open_on(now, id, ch, up),
            None => {
                self.waiting_opens.push_back((id, ch));
                self.grow(now);
            }
        }
    }

    /// Allocates an upstream number on `up` and sends `Channel.Open` for client channel `ch`;
    /// an open past the user's channel limit instead closes the client with the broker's own
    /// close, as RabbitMQ closes the connection that asks for it.
    pub(in crate::hub) fn open_on(&mut self, now: Instant, id: ClientId, ch: u16, up: UpstreamId) {
        if let Some(reply) = self.at_channel_limit(now) {
            self.stats.channel_refusals += 1;
            return self.close_client(now, id, reply);
        }
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

    /// Maps client channel `ch` to `r` (the client's home if it has none), replays a blocked
    /// state (B12) and flushes held frames.
    pub(super) fn bind_channel(&mut self, now: Instant, id: ClientId, ch: u16, r: UpRef) {
        let blocked = self.upstream(r.up).and_then(|u| u.blocked.clone());
        let homeless = self.home(id).is_none();
        let Some(c) = self.client_mut(id) else { return };
        if homeless {
            c.home = Some(r.up);
        }
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
    pub(super) fn client_closes_channel(&mut self, now: Instant, id: ClientId, ch: u16) {
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
    pub(in crate::hub) fn close_channel_from_proxy(
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

    /// Sends `Channel.Close` on an upstream channel nobody owns any more.
    pub(in crate::hub) fn close_upstream_channel(&mut self, now: Instant, r: UpRef, why: &str) {
        self.set_slot(now, r, Slot::Closing);
        let close = Close::from(&Reply::verbatim(reply::REPLY_SUCCESS, why));
        self.send_upstream(now, r.up, encode::close(r.ch, &close));
    }

    /// The client's channel was closed by the broker: forward the close, answer the broker,
    /// quarantine the upstream number until the client acknowledges (B4).
    pub(in crate::hub) fn broker_closed_channel(
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

    /// Broker-side bookkeeping for replies routed to a client channel: consumer tags, the
    /// names of exclusive queues, the end of a `tx.commit`. Returns whether the reply goes on
    /// to the client (not when warren asked for it itself).
    pub(in crate::hub) fn note_reply(
        &mut self,
        now: Instant,
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
                Some(Declare::Typed(kind)) => self.queue_types.learn(now, queue.clone(), kind),
                _ => {}
            },
            // Every consume-ok answers one consume; only a broker-chosen tag is news.
            Method::ConsumeOk { tag } => {
                let Some(pending) = chan.consumes.pop_front() else {
                    return true;
                };
                if pending.broker_tag && !chan.consumers.contains(tag) {
                    chan.consumers.push(tag.clone());
                }
                if let Some(stream) = pending.stream {
                    let streams = chan.streams.get_or_insert_with(Box::default);
                    streams.consumer(tag.clone(), stream);
                }
            }
            // The broker cancelled a consumer (queue deleted, ...): the tag is free again.
            Method::Cancel { tag } => {
                chan.consumers.retain(|t| t != tag);
                if let Some(streams) = chan.streams.as_deref_mut() {
                    streams.cancelled(tag);
                }
            }
            _ if mid == ids::TX_COMMIT_OK && chan.tx == Tx::Committing => {
                chan.tx = Tx::Open { published: false };
            }
            _ if mid == ids::QUEUE_DELETE_OK => {
                if let Some(Delete::Exclusive { queue, asked }) = chan.deletes.pop_front() {
                    self.forget_exclusive(id, &queue);
                    return asked;
                }
            }
            _ => {}
        }
        true
    }

    /// Serves channels waiting for an upstream, in order, while there is room.
    pub(in crate::hub) fn serve_waiting_opens(&mut self, now: Instant) {
        while let Some(&(id, ch)) = self.waiting_opens.front() {
            let Some(up) = self.place_for(id) else { break };
            self.waiting_opens.pop_front();
            self.open_on(now, id, ch, up);
        }
        if !self.waiting_opens.is_empty() {
            self.grow(now);
        }
    }

    /// Refuses every waiting channel: no upstream can take them.
    pub(in crate::hub) fn fail_waiting_opens(&mut self, now: Instant, reply: &Reply) {
        let waiting: Vec<(ClientId, u16)> = self.waiting_opens.drain(..).collect();
        for (id, ch) in waiting {
            self.stats.channel_refusals += 1;
            self.close_channel_from_proxy(now, id, ch, reply.clone());
        }
    }
}
