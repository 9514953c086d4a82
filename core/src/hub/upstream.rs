//! The upstream side of a hub: warren as a client of the broker. The handshake (PLAIN with
//! the hub's credentials), routing of broker frames to the owning client channel, broker
//! channel closes (B4), blocked state (B12), loss and reconnect (B11), idle shutdown, and the
//! housekeeping channels that delete a departed client's exclusive queues (B5).

use super::channels::{ChannelTable, Slot};
use super::client::Phase;
use super::exchange_types::Probe;
use super::liveness::{Beat, Liveness};
use super::{ClientId, Holder, Hub, HubEvent, Output, Peer, UpRef, UpstreamId};
use crate::content::rechunk_body;
use crate::frame::{Frame, FrameType, HEARTBEAT};
use crate::login::{Login, LoginEvent, LoginStep};
use crate::method::{self, encode, ids, Close, Method, Tune};
use crate::reply::{self, Reply};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::time::Instant;

/// Where an upstream connection is in its life.
#[derive(Debug)]
pub(crate) enum UpPhase {
    /// Dialling and logging in.
    Connecting(Box<Login>),
    /// Ready for channels.
    Open,
    /// `Connection.Close` sent; waiting for `CloseOk` until the given time.
    Closing { until: Instant },
}

/// One broker connection of a hub.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) id: UpstreamId,
    pub(crate) phase: UpPhase,
    /// Negotiated limits (valid once open).
    pub(crate) tune: Tune,
    pub(crate) table: ChannelTable,
    /// Heartbeats once open (the login keeps its own until then).
    liveness: Liveness,
    /// The broker's reason while it blocks publishers (B12).
    pub(crate) blocked: Option<String>,
    /// Since when no channel number has been in use.
    pub(crate) idle_since: Option<Instant>,
    pub(crate) timer_at: Option<Instant>,
    /// The broker node it reached, once connected (B17).
    pub(crate) node: Option<usize>,
    /// The node its dial tries first: where it counts for spreading until it connects.
    pub(crate) aim: usize,
    /// Retired by an operator's re-dial at this time: it takes no new channel (but those of a
    /// client whose exclusive queue it holds) and closes once it serves no client.
    pub(crate) retiring: Option<Instant>,
    /// When it was dialled, then when it opened.
    pub(crate) since: Instant,
    /// Exclusive queues it holds for clients still connected (B5). RabbitMQ deletes them
    /// when this connection closes, so it must not close under them for idleness, a drain's
    /// early close or a retirement while their clients are here.
    pub(crate) client_queues: u32,
    /// Set on a connection that only asks the broker about an exchange type: it takes no
    /// client and counts neither as open nor as connecting.
    pub(crate) probe: Option<Box<Probe>>,
}

impl Upstream {
    pub(crate) fn new(id: UpstreamId, now: Instant, login: Login) -> Self {
        Upstream {
            id,
            phase: UpPhase::Connecting(Box::new(login)),
            tune: Tune {
                channel_max: 0,
                frame_max: crate::frame::FRAME_MIN_SIZE,
                heartbeat: 0,
            },
            table: ChannelTable::new(0),
            liveness: Liveness::new(now, 0),
            blocked: None,
            idle_since: Some(now),
            timer_at: None,
            node: None,
            aim: 0,
            retiring: None,
            since: now,
            client_queues: 0,
            probe: None,
        }
    }

    /// Whether it is open for client channels.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, UpPhase::Open) && self.probe.is_none()
    }

    /// Whether it is logging in to serve clients.
    pub(crate) fn is_connecting(&self) -> bool {
        matches!(self.phase, UpPhase::Connecting(_)) && self.probe.is_none()
    }

    /// Ends the login once the broker sent `OpenOk`: the negotiated limits and heartbeats
    /// take over. Returns false if it was not logging in.
    pub(crate) fn finish_login(&mut self, now: Instant) -> bool {
        let UpPhase::Connecting(login) = std::mem::replace(&mut self.phase, UpPhase::Open) else {
            return false;
        };
        let (tune, liveness) = login.into_open();
        self.tune = tune;
        self.table = ChannelTable::new(tune.channel_max);
        self.liveness = liveness;
        self.idle_since = Some(now);
        self.since = now;
        true
    }

    /// The heartbeat bookkeeping in effect: the login's until the connection is open.
    pub(crate) fn liveness_mut(&mut self) -> &mut Liveness {
        match &mut self.phase {
            UpPhase::Connecting(login) => login.liveness_mut(),
            _ => &mut self.liveness,
        }
    }

    /// Whether a client channel, or a connected client's exclusive queue, still lives on
    /// this connection.
    fn serves_clients(&self) -> bool {
        self.client_queues > 0 || self.table.iter().any(|(_, s)| s.owner().is_some())
    }
}

impl Hub {
    /// When an open upstream may be closed: once idle for the idle timeout (unless it is the
    /// one kept for a hub that still has clients), or as soon as it serves no client while
    /// draining (but the one kept while clients remain, for the channels they still open).
    fn upstream_close_at(&self, u: &Upstream) -> Option<Instant> {
        if u.probe.is_some() {
            // It closes once the broker answers, or gives up at its own deadline.
            None
        } else if let Some(drain) = self.drain {
            (!u.serves_clients() && !self.keeps_last_upstream(u.id))
                .then_some(self.drain_started.unwrap_or(drain))
        } else if let Some(at) = u.retiring {
            (!u.serves_clients()).then_some(at)
        } else if let Some(at) = self.detached.filter(|_| self.clients.is_empty()) {
            Some(at)
        } else if self.keeps_last_upstream(u.id) || u.client_queues > 0 {
            None
        } else {
            u.idle_since
                .map(|since| since + self.config.upstream_idle_timeout)
        }
    }

    /// When the upstream's timer must next fire: login deadline or heartbeat, close deadline,
    /// heartbeat, or the moment it may be closed.
    pub(super) fn upstream_deadline(&self, u: &Upstream) -> Option<Instant> {
        match &u.phase {
            UpPhase::Connecting(login) => login.deadline(),
            UpPhase::Closing { until } => Some(*until),
            UpPhase::Open => {
                let answer = u.probe.as_ref().and_then(|p| p.deadline());
                let close = self.upstream_close_at(u);
                [u.liveness.deadline(), close, answer]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    pub(super) fn upstream_timer(&mut self, now: Instant, id: UpstreamId) {
        let Some(u) = self.upstream_mut(id) else {
            return;
        };
        match &mut u.phase {
            UpPhase::Connecting(login) => {
                let step = login.on_timer(now);
                return self.login_step(now, id, step);
            }
            UpPhase::Closing { until } => {
                if now >= *until {
                    self.remove_upstream(id);
                } else {
                    self.schedule_upstream(id);
                }
                return;
            }
            UpPhase::Open => {}
        }
        if let Some(p) = &u.probe {
            if p.deadline().is_some_and(|at| now >= at) {
                // Still connected: the probe says goodbye before its socket closes.
                let bye = Close::from(&Reply::verbatim(reply::REPLY_SUCCESS, "no answer"));
                self.send_upstream(now, id, encode::close(0, &bye));
                let reply = Reply::new(reply::CONNECTION_FORCED, "the broker did not answer");
                return self.probe_failed(now, id, reply);
            }
        }
        match u.liveness.check(now) {
            Beat::Dead => {
                self.stats.heartbeat_misses += 1;
                self.event(HubEvent::HeartbeatMissed {
                    peer: Peer::Upstream(id),
                });
                let reply = Reply::new(
                    reply::CONNECTION_FORCED,
                    "broker connection lost: missed heartbeats from the broker",
                );
                self.upstream_lost(now, id, reply);
                return;
            }
            Beat::Send => self.send_upstream(now, id, Bytes::from_static(HEARTBEAT)),
            Beat::Idle => {}
        }
        let close_at = self.upstream(id).and_then(|u| self.upstream_close_at(u));
        if close_at.is_some_and(|at| at <= now) {
            let why = if self.drain.is_some() {
                "warren is shutting down"
            } else {
                "idle"
            };
            self.close_upstream_gracefully(now, id, why);
            return;
        }
        self.schedule_upstream(id);
    }

    /// Carries out what the login of a connecting upstream asked for.
    fn login_step(&mut self, now: Instant, id: UpstreamId, step: LoginStep) {
        for data in step.send {
            self.send_upstream(now, id, data);
        }
        match step.event {
            LoginEvent::Nothing | LoginEvent::Accepted => self.schedule_upstream(id),
            LoginEvent::Opened if self.upstream(id).is_some_and(|u| u.probe.is_some()) => {
                self.probe_opened(now, id);
            }
            LoginEvent::Opened => self.upstream_opened(now, id),
            LoginEvent::Failed(reply) => self.upstream_failed(now, id, reply),
        }
    }

    /// Ends an upstream with `Connection.Close 200` and waits a bounded time for `CloseOk`.
    pub(super) fn close_upstream_gracefully(&mut self, now: Instant, id: UpstreamId, why: &str) {
        let until = now + self.config.close_timeout;
        let Some(u) = self.upstream_mut(id) else {
            return;
        };
        u.phase = UpPhase::Closing { until };
        let close = Close::from(&Reply::verbatim(reply::REPLY_SUCCESS, why));
        self.send_upstream(now, id, encode::close(0, &close));
        self.drop_pool_entries(id);
        self.schedule_upstream(id);
    }

    /// Forgets an upstream and tells the driver to close its socket.
    pub(super) fn remove_upstream(&mut self, id: UpstreamId) {
        let Some(u) = self.upstream(id) else { return };
        let timer = u.timer_at;
        let fencing = u.table.iter().filter(|(_, s)| *s == Slot::Fencing).count();
        self.fencing -= fencing;
        self.agenda
            .reschedule(super::Timer::Upstream(id), timer, None);
        self.drop_pool_entries(id);
        self.orphan_declares.retain(|(r, _, _)| r.up != id);
        // Exclusive queues go with their connection: nothing is left to delete or lock.
        let (gone, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_deletes)
            .into_iter()
            .partition(|(u, _)| *u == id);
        self.pending_deletes = rest;
        for (_, q) in gone {
            self.unlock_departed(&q);
        }
        let (gone, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.housekeeping)
            .into_iter()
            .partition(|(r, _)| r.up == id);
        self.housekeeping = rest;
        for q in gone.into_iter().flat_map(|(_, names)| names) {
            self.unlock_departed(&q);
        }
        self.upstreams.remove(id.index());
        self.out.push_back(Output::CloseUpstream { upstream: id });
    }

    /// TCP (and TLS) is up, to `node`: start the AMQP handshake.
    pub(super) fn upstream_connected(&mut self, now: Instant, id: UpstreamId, node: usize) {
        let Some(u) = self.upstream_mut(id) else {
            return;
        };
        u.node = Some(node);
        let UpPhase::Connecting(login) = &mut u.phase else {
            return;
        };
        let step = login.on_connected(now);
        self.nodes.answered(node);
        self.login_step(now, id, step);
    }

    /// The upstream socket closed or the dial failed.
    pub(super) fn upstream_socket_closed(&mut self, now: Instant, id: UpstreamId, reason: String) {
        let Some(u) = self.upstream(id) else { return };
        match &u.phase {
            UpPhase::Connecting(login) => {
                let reply = login.on_socket_closed(&reason);
                self.upstream_failed(now, id, reply);
            }
            UpPhase::Open => {
                let reply = Reply::new(
                    reply::CONNECTION_FORCED,
                    format!("broker connection lost: {reason}"),
                );
                self.upstream_lost(now, id, reply);
            }
            UpPhase::Closing { .. } => self.remove_upstream(id),
        }
    }

    /// A dial or handshake failed: waiting clients are refused (B2, B11) and a reconnect is
    /// scheduled if anyone still needs the broker.
    pub(super) fn upstream_failed(&mut self, now: Instant, id: UpstreamId, reply: Reply) {
        match self.upstream(id) {
            None => return,
            Some(u) if u.probe.is_some() => return self.probe_failed(now, id, reply),
            Some(_) => {}
        }
        tracing::debug!(upstream = %id, code = reply.code, text = %reply.text, "upstream failed");
        let node = self.upstream(id).and_then(|u| u.node);
        if let (Some(node), false) = (node, reply.refuses_login()) {
            // It answered, then failed for another reason than the credentials.
            self.nodes.failed(node);
        }
        self.remove_upstream(id);
        self.stats.upstream_failures += 1;
        self.event(HubEvent::UpstreamFailed {
            upstream: id,
            reply: reply.clone(),
        });
        let refused_login = reply.refuses_login();
        if refused_login {
            self.event(HubEvent::AuthRejected {
                reply: reply.clone(),
            });
        }
        // Waiting clients wait for a dial: with none left, they are refused, also when an
        // upstream is open (they wait for a fresh login, which this one was).
        if !self.upstreams.iter().any(|(_, u)| u.is_connecting()) {
            let waiting: Vec<ClientId> = self
                .clients
                .iter()
                .filter(|(_, c)| c.phase == Phase::AwaitingUpstream && !self.is_held(c.id))
                .map(|(_, c)| c.id)
                .collect();
            for c in waiting {
                self.refuse_client(now, c, reply.clone());
            }
        }
        if !self.upstreams.iter().any(|(_, u)| u.is_connecting()) {
            // No dial left that could make room for channels waiting on one.
            let channel_reply = Reply::new(reply::RESOURCE_ERROR, reply.detail());
            self.fail_waiting_opens(now, &channel_reply);
        }
        self.after_upstream_gone(now, Some(reply));
    }

    /// An open upstream died: every client with a channel on it is closed with the broker's
    /// reply (B11); other clients keep their connection.
    pub(super) fn upstream_lost(&mut self, now: Instant, id: UpstreamId, reply: Reply) {
        let Some(u) = self.upstream(id) else { return };
        if u.probe.is_some() {
            return self.probe_failed(now, id, reply);
        }
        tracing::debug!(upstream = %id, code = reply.code, text = %reply.text, "upstream lost");
        let node = u.node;
        let mut affected: BTreeSet<ClientId> = u
            .table
            .iter()
            .filter_map(|(_, s)| s.owner())
            .map(|(c, _)| c)
            .collect();
        if u.client_queues > 0 {
            // Their exclusive queues went with it, as with their own connection on RabbitMQ.
            affected.extend(
                self.clients
                    .iter()
                    .filter(|(_, c)| c.exclusive.iter().any(|(up, _)| *up == id))
                    .map(|(_, c)| c.id),
            );
        }
        if let Some(node) = node {
            // Its node went away or cut it: new upstreams try another first.
            self.nodes.failed(node);
        }
        self.remove_upstream(id);
        self.stats.upstream_losses += 1;
        self.event(HubEvent::UpstreamLost {
            upstream: id,
            reply: reply.clone(),
        });
        for c in affected {
            self.close_client(now, c, reply.clone());
        }
        let unblock: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.blocked_by.contains(&id))
            .map(|(_, c)| c.id)
            .collect();
        for c in unblock {
            self.tell_unblocked(now, c, id);
        }
        self.after_upstream_gone(now, None);
        if self.upstreams.iter().any(|(_, u)| u.is_open()) {
            self.serve_waiting_opens(now);
        }
    }

    /// Handles one frame from an upstream. Returns false once the upstream is gone.
    pub(super) fn upstream_frame(&mut self, now: Instant, id: UpstreamId, frame: Frame) -> bool {
        self.stats.upstream_frames += 1;
        self.stats.upstream_bytes += frame.wire_len() as u64;
        let Some(u) = self.upstream_mut(id) else {
            return false;
        };
        u.liveness_mut().received(now);
        if let UpPhase::Connecting(login) = &mut u.phase {
            let step = login.on_frame(now, &frame);
            self.login_step(now, id, step);
            return self.upstream(id).is_some();
        }
        if frame.kind() == FrameType::Heartbeat {
            return true;
        }
        if self.upstream(id).is_some_and(|u| u.probe.is_some()) {
            self.probe_frame(now, id, &frame);
            return self.upstream(id).is_some();
        }
        if frame.channel() == 0 {
            self.upstream_connection_frame(now, id, &frame);
            return self.upstream(id).is_some();
        }
        if self.upstream(id).is_some_and(Upstream::is_open) {
            self.route_broker_frame(now, id, frame);
        }
        true
    }

    /// Channel-0 frames from the broker on an open (or closing) connection: closes and the
    /// blocked state.
    fn upstream_connection_frame(&mut self, now: Instant, id: UpstreamId, frame: &Frame) {
        let m = match (frame.kind(), method::decode(frame.payload())) {
            (FrameType::Method, Ok(m)) => m,
            _ => {
                let reply = Reply::new(reply::FRAME_ERROR, "malformed frame on channel 0");
                self.send_upstream(now, id, encode::close(0, &Close::from(&reply)));
                return self.upstream_gone(now, id, reply);
            }
        };
        let Some(open) = self.upstream(id).map(Upstream::is_open) else {
            return;
        };
        match (open, m) {
            (false, Method::ConnectionCloseOk) => self.remove_upstream(id),
            (_, Method::ConnectionClose(close)) => {
                self.send_upstream(now, id, encode::close_ok(0));
                let reply = close.reply();
                self.learn_channel_limit(now, &reply);
                self.learn_queue_type_from(now, &reply);
                self.upstream_gone(now, id, reply);
            }
            (true, Method::Blocked { reason }) => {
                let Some(u) = self.upstream_mut(id) else {
                    return;
                };
                u.blocked = Some(reason.clone());
                let owners: BTreeSet<ClientId> = u
                    .table
                    .iter()
                    .filter_map(|(_, s)| s.owner())
                    .map(|(c, _)| c)
                    .collect();
                for c in owners {
                    self.tell_blocked(now, c, id, &reason);
                }
            }
            (true, Method::Unblocked) => {
                if let Some(u) = self.upstream_mut(id) {
                    u.blocked = None;
                }
                let told: Vec<ClientId> = self
                    .clients
                    .iter()
                    .filter(|(_, c)| c.blocked_by.contains(&id))
                    .map(|(_, c)| c.id)
                    .collect();
                for c in told {
                    self.tell_unblocked(now, c, id);
                }
            }
            (_, m) => {
                tracing::debug!(upstream = %id, method = ?m, "ignoring broker method");
            }
        }
    }

    /// Ends an upstream for a reason found by the proxy or sent by the broker, whatever its
    /// phase.
    fn upstream_gone(&mut self, now: Instant, id: UpstreamId, reply: Reply) {
        match self.upstream(id).map(|u| &u.phase) {
            Some(UpPhase::Open) => self.upstream_lost(now, id, reply),
            Some(UpPhase::Closing { .. }) => self.remove_upstream(id),
            Some(UpPhase::Connecting(_)) => self.upstream_failed(now, id, reply),
            None => {}
        }
    }

    /// The broker accepted the credentials and the vhost: admit waiting clients and place
    /// waiting channels.
    pub(super) fn upstream_opened(&mut self, now: Instant, id: UpstreamId) {
        let Some(u) = self.upstream_mut(id) else {
            return;
        };
        if !u.finish_login(now) {
            return;
        }
        let tune = u.tune;
        self.last_proof = Some(now);
        self.stats.upstream_connects += 1;
        self.reconnect.failures = 0;
        self.reconnect.last_error = None;
        self.event(HubEvent::UpstreamOpen {
            upstream: id,
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: tune.heartbeat,
        });
        let waiting: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.phase == Phase::AwaitingUpstream && !self.is_held(c.id))
            .map(|(_, c)| c.id)
            .collect();
        for c in waiting {
            self.admit(now, c);
        }
        self.redialled(now, id);
        self.serve_waiting_opens(now);
        self.schedule_upstream(id);
    }

    /// Routes a broker frame on a numbered channel by the state of its slot.
    fn route_broker_frame(&mut self, now: Instant, id: UpstreamId, frame: Frame) {
        let ch = frame.channel();
        let Some(slot) = self.upstream(id).map(|u| u.table.get(ch)) else {
            return;
        };
        let r = UpRef { up: id, ch };
        let mid = frame.method_id();
        match slot {
            Slot::Opening { client, ch: cch } => match mid {
                Some(ids::CHANNEL_OPEN_OK) => {
                    self.set_slot(now, r, Slot::Owned { client, ch: cch });
                    self.forward_to_client(now, client, cch, frame);
                }
                Some(ids::CHANNEL_CLOSE) => {
                    self.broker_closed_channel(now, client, cch, r, renumbered(frame, cch))
                }
                _ => tracing::debug!(upstream = %id, ch, "dropping frame on an opening channel"),
            },
            Slot::Owned { client, ch: cch } => self.owned_frame(now, r, client, cch, frame),
            Slot::ClosingForClient { client, ch: cch } => match mid {
                Some(ids::CHANNEL_CLOSE_OK) => {
                    self.set_slot(now, r, Slot::Free);
                    if let Some(c) = self.client_mut(client) {
                        c.channels.remove(&cch);
                    }
                    self.forward_to_client(now, client, cch, frame);
                }
                Some(ids::CHANNEL_CLOSE) => self.send_upstream(now, id, encode::close_ok(ch)),
                Some(mid) => {
                    // Replies to what the client sent before its Close still matter, e.g.
                    // the name of an exclusive queue to delete when it leaves.
                    let forward = match method::decode(frame.payload()) {
                        Ok(m) => self.note_reply(now, client, cch, id, &m, mid),
                        Err(_) => true,
                    };
                    if forward {
                        self.forward_to_client(now, client, cch, frame);
                    }
                }
                None => self.forward_to_client(now, client, cch, frame),
            },
            Slot::Closing | Slot::Housekeeping => match mid {
                Some(ids::CHANNEL_CLOSE_OK) => {
                    self.set_slot(now, r, Slot::Free);
                    self.orphan_declares.retain(|(o, _, _)| *o != r);
                    self.housekept(r);
                }
                // Crossing closes: RabbitMQ answers ours as well, so keep waiting for it. It
                // discarded what we sent after its close: deletes go out again elsewhere.
                Some(ids::CHANNEL_CLOSE) => {
                    self.send_upstream(now, id, encode::close_ok(ch));
                    self.redo_housekeeping(now, r);
                }
                Some(ids::QUEUE_DECLARE_OK) => {
                    if let Ok(m) = method::decode(frame.payload()) {
                        self.orphan_declare_ok(now, r, &m);
                    }
                }
                _ => {}
            },
            Slot::Fencing => match mid {
                Some(ids::CHANNEL_FLOW_OK) => {
                    self.fencing -= 1;
                    self.pool_channel(now, r);
                }
                Some(ids::CHANNEL_CLOSE) => {
                    // An error meant for the previous client: the channel is not reused.
                    self.fencing -= 1;
                    self.send_upstream(now, id, encode::close_ok(ch));
                    self.set_slot(now, r, Slot::Free);
                }
                _ => {}
            },
            Slot::Pooled { .. } => {
                if mid == Some(ids::CHANNEL_CLOSE) {
                    self.send_upstream(now, id, encode::close_ok(ch));
                    self.set_slot(now, r, Slot::Free);
                    self.pool.retain(|p| *p != r);
                    self.schedule_pool();
                }
            }
            Slot::Quarantined | Slot::Free => {
                tracing::debug!(upstream = %id, ch, ?slot, "dropping broker frame on unused channel");
            }
        }
    }

    /// A broker frame on a channel a client owns: bookkeeping, then forward.
    fn owned_frame(&mut self, now: Instant, r: UpRef, client: ClientId, cch: u16, frame: Frame) {
        if frame.kind() != FrameType::Method {
            return self.forward_to_client(now, client, cch, frame);
        }
        let Some(mid) = frame.method_id() else { return };
        match mid {
            ids::BASIC_DELIVER | ids::BASIC_GET_OK | ids::BASIC_RETURN => {
                self.stats.deliveries += 1;
                if mid == ids::BASIC_DELIVER {
                    self.note_stream_delivery(client, cch, frame.payload());
                }
                return self.forward_to_client(now, client, cch, frame);
            }
            ids::CHANNEL_CLOSE => {
                return self.broker_closed_channel(now, client, cch, r, renumbered(frame, cch));
            }
            _ => {}
        }
        let Ok(m) = method::decode(frame.payload()) else {
            return self.forward_to_client(now, client, cch, frame);
        };
        if !self.note_reply(now, client, cch, r.up, &m, mid) {
            return;
        }
        let notify = self
            .client(client)
            .is_some_and(|c| c.caps.consumer_cancel_notify);
        if matches!(m, Method::Cancel { .. }) && !notify {
            // RabbitMQ sends server-side cancels only to clients that asked for them.
            return;
        }
        self.forward_to_client(now, client, cch, frame);
    }

    /// Sends a broker frame to a client channel, renumbered, re-chunking a body that is
    /// larger than the client's frame_max (B9).
    fn forward_to_client(&mut self, now: Instant, client: ClientId, cch: u16, mut frame: Frame) {
        let Some(c) = self.client(client) else { return };
        if matches!(c.phase, Phase::Closing { .. }) {
            return;
        }
        if frame.kind() == FrameType::Body && frame.wire_len() > c.frame_max as usize {
            let max = c.frame_max;
            rechunk_body(cch, frame.into_payload(), max, &mut |b| {
                self.send_client(now, client, b);
            });
            return;
        }
        frame.set_channel(cch);
        self.send_client(now, client, frame.freeze());
    }

    // ----- placement and growth (B3) ----------------------------------------------------

    /// The open upstream that should take client `id`'s new channel: its home while that has
    /// room, else one by the placement policy.
    pub(super) fn place_for(&self, id: ClientId) -> Option<UpstreamId> {
        match self.home(id) {
            Some(home) if self.upstream(home).is_some_and(|u| u.table.has_room()) => Some(home),
            _ => self.place(),
        }
    }

    /// Client `id`'s home upstream, while it is open and not retiring, or retiring but
    /// holding one of the client's exclusive queues, which only that connection reaches (B5).
    pub(super) fn home(&self, id: ClientId) -> Option<UpstreamId> {
        let c = self.client(id)?;
        let home = c.home?;
        let u = self.upstream(home)?;
        let holds_its_queue = || c.exclusive.iter().any(|(up, _)| *up == home);
        (u.is_open() && (u.retiring.is_none() || holds_its_queue())).then_some(home)
    }

    /// The open upstream that should take a new channel, by the placement policy.
    pub(super) fn place(&self) -> Option<UpstreamId> {
        let candidates = self
            .upstreams
            .iter()
            .map(|(_, u)| u)
            .filter(|u| u.is_open() && u.retiring.is_none() && u.table.has_room());
        match self.config.placement {
            super::Placement::Fill => candidates.max_by_key(|u| u.id.gen).map(|u| u.id),
            super::Placement::Spread => candidates
                .min_by_key(|u| (u.table.in_use(), u.id.gen))
                .map(|u| u.id),
        }
    }

    /// Every open upstream is full (or none is open): dial another if allowed, otherwise
    /// refuse the waiting channels.
    pub(super) fn grow(&mut self, now: Instant) {
        if self.upstreams.iter().any(|(_, u)| u.is_connecting()) {
            return;
        }
        if self.drain.is_some() {
            // Draining dials nothing: the channel finds room on an open upstream or none.
            let reply = Reply::new(reply::CONNECTION_FORCED, "warren is shutting down");
            return self.fail_waiting_opens(now, &reply);
        }
        if let Some(why) = self.unreachable() {
            let reply = Reply::new(reply::RESOURCE_ERROR, why.detail());
            return self.fail_waiting_opens(now, &reply);
        }
        if self.reconnect.at.is_some() {
            // Served when the scheduled reconnect opens.
            return;
        }
        if self.upstreams.len() < self.config.max_upstreams {
            self.dial(now);
            return;
        }
        let reply = Reply::new(
            reply::RESOURCE_ERROR,
            format!(
                "no channel available: all {} upstream connections are full",
                self.config.max_upstreams
            ),
        );
        self.fail_waiting_opens(now, &reply);
    }

    // ----- exclusive queue clean-up (B5) ----------------------------------------------

    /// Deletes a departed client's exclusive queues on the connections that own them, each
    /// through a short-lived housekeeping channel: a new one, or a pooled one when every
    /// number is taken. Failing both, they wait in `pending_deletes` for the next channel
    /// their upstream frees or pools, and stay locked meanwhile.
    pub(super) fn delete_exclusive_queues(
        &mut self,
        now: Instant,
        queues: Vec<(UpstreamId, Vec<u8>)>,
    ) {
        let mut by_upstream: Vec<(UpstreamId, Vec<Vec<u8>>)> = Vec::new();
        for (up, q) in queues {
            match by_upstream.iter_mut().find(|(u, _)| *u == up) {
                Some((_, list)) => list.push(q),
                None => by_upstream.push((up, vec![q])),
            }
        }
        for (up, names) in by_upstream {
            let at_limit = self.at_channel_limit(now).is_some();
            let Some(u) = self.upstream_mut(up).filter(|u| u.is_open()) else {
                // The connection is closing or gone, and its exclusive queues with it.
                for q in &names {
                    self.unlock_departed(q);
                }
                continue;
            };
            // At the user's channel limit, a new channel would cost the connection.
            let fresh = if at_limit {
                None
            } else {
                u.table.allocate(Slot::Housekeeping)
            };
            let r = match fresh {
                Some(ch) => {
                    u.idle_since = None;
                    self.send_upstream(now, up, encode::channel_open(ch));
                    UpRef { up, ch }
                }
                None => match self.take_pooled_on(up) {
                    Some(r) => {
                        self.set_slot(now, r, Slot::Housekeeping);
                        r
                    }
                    None => {
                        for q in names {
                            self.exclusive_owners
                                .entry(q.clone())
                                .or_insert(Holder::Departed);
                            self.pending_deletes.push((up, q));
                        }
                        continue;
                    }
                },
            };
            self.housekeep(now, r, names);
        }
    }

    /// Sends the deletes of `names` and the close on housekeeping channel `r` (open, or
    /// with its `Channel.Open` just sent). The names stay locked until the broker answers
    /// the close ([`Hub::housekept`]).
    pub(super) fn housekeep(&mut self, now: Instant, r: UpRef, names: Vec<Vec<u8>>) {
        for q in &names {
            self.send_upstream(now, r.up, encode::queue_delete(r.ch, q));
        }
        let close = Close::from(&Reply::verbatim(
            reply::REPLY_SUCCESS,
            "exclusive queue cleanup",
        ));
        self.send_upstream(now, r.up, encode::close(r.ch, &close));
        self.housekeeping.push((r, names));
    }

    /// The broker answered housekeeping channel `r`'s close: it ran the deletes before it,
    /// and the names are free.
    fn housekept(&mut self, r: UpRef) {
        let Some(i) = self.housekeeping.iter().position(|(h, _)| *h == r) else {
            return;
        };
        let (_, names) = self.housekeeping.swap_remove(i);
        for q in &names {
            self.unlock_departed(q);
        }
    }

    /// The broker closed housekeeping channel `r` itself, so the deletes on it may not have
    /// run: they are sent again on another channel (a delete that did run deletes nothing).
    fn redo_housekeeping(&mut self, now: Instant, r: UpRef) {
        let Some(i) = self.housekeeping.iter().position(|(h, _)| *h == r) else {
            return;
        };
        let (_, names) = self.housekeeping.swap_remove(i);
        let queues = names.into_iter().map(|q| (r.up, q)).collect();
        self.delete_exclusive_queues(now, queues);
    }

    /// Lifts the lock a departed client's queue kept until its delete ran.
    fn unlock_departed(&mut self, queue: &[u8]) {
        if self.exclusive_owners.get(queue) == Some(&Holder::Departed) {
            self.exclusive_owners.remove(queue);
        }
    }
}

/// A broker frame renumbered for the client, as bytes.
fn renumbered(mut frame: Frame, ch: u16) -> Bytes {
    frame.set_channel(ch);
    frame.freeze()
}
