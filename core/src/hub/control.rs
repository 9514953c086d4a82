//! An operator's hold on a hub (B16): pause and resume, re-dial, detach (the admin API's
//! drain), closing one client, and a description of the hub as plain data.
//!
//! Every decision is here, in virtual time: who waits while the hub is paused, how long, and
//! what a waiter is told when the pause outlasts [`super::HubConfig::pause_timeout`].
//!
//! **Pause.** Clients already inside keep working. A new client is not sent
//! `Connection.OpenOk` and a new `Channel.Open` (from any client) is not answered; both wait,
//! in arrival order, and a resume lets them through at once. A waiter still waiting after
//! `pause_timeout` is refused:
//!
//! - a client at `Connection.Open` gets `Connection.Close 320 CONNECTION_FORCED - warren is
//!   paused ...`. 320 is the code RabbitMQ itself uses when an operator or maintenance mode
//!   ends a connection, and clients treat it as transient: the Java, .NET and Go clients'
//!   automatic recovery reconnects after a 320, pika and Bunny raise their "connection
//!   forced" error that applications retry. 530 NOT_ALLOWED (what RabbitMQ answers at `Open`
//!   for a vhost limit) reads as a permission problem and is not retried by recovery;
//! - a `Channel.Open` gets `Channel.Close 506 RESOURCE_ERROR - warren is paused ...`: a
//!   channel-level close leaves the client's connection and its other channels alone, and
//!   506 is what warren already answers when no channel can be had (all upstreams full, the
//!   broker unreachable), so a client that copes with one copes with the other.
//!
//! **Re-dial.** A new upstream is dialled at once (even past `max_upstreams`, by one), trying
//! the nodes in the configured order (the first listed first; spreading: the least used), not
//! starting with the node that answered last as other dials do. Once it
//! opens, every other open upstream *retires*: it takes no new channel (placement and the
//! pool skip it, its pooled channels are closed) but those of a client whose exclusive queue
//! it holds, and closes as soon as no client channel, nor such a client, is left on it (B5). New channels therefore land on the new connection — on the node that answered
//! it, e.g. one that came back. If the new dial fails nothing changes.
//!
//! **Detach** (the admin API's drain). Admission sends no new client to the hub; the hub
//! keeps serving the clients it has, dials nothing more once they are gone, and closes its
//! upstreams as soon as its last client leaves, so it finishes and stops.

use super::channels::Slot;
use super::client::{ChanState, Phase};
use super::upstream::UpPhase;
use super::{ClientId, Hub, HubEvent, Timer, UpstreamId};
use crate::reply::{self, Reply};
use std::time::{Duration, Instant};

/// Where a hub is, as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubState {
    /// Dialling or waiting to redial, with no upstream open yet.
    Connecting,
    /// An upstream is open.
    Ready,
    /// The last dial failed and the backoff runs: new clients are refused (B11).
    Unreachable,
    /// Paused by an operator: new clients and channel opens wait.
    Paused,
    /// Shutting down (B14) or detached by an operator: it serves the clients it has, and
    /// closes its upstreams once they are gone.
    Draining,
    /// No upstream and nothing to dial (about to stop).
    Idle,
}

impl HubState {
    /// The name the admin API prints.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HubState::Connecting => "connecting",
            HubState::Ready => "ready",
            HubState::Unreachable => "unreachable",
            HubState::Paused => "paused",
            HubState::Draining => "draining",
            HubState::Idle => "idle",
        }
    }
}

/// A hub described at one instant: plain data for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSnapshot {
    /// Its state.
    pub state: HubState,
    /// Paused by an operator (also reported when the state says draining).
    pub paused: bool,
    /// Client channels mapped to upstream channels, across upstreams.
    pub channels_in_use: usize,
    /// Open broker channels waiting in the recycling pool.
    pub channels_pooled: usize,
    /// New clients and channel opens waiting for a resume.
    pub waiting: usize,
    /// Its clients, by id.
    pub clients: Vec<ClientSnapshot>,
    /// Its upstreams, by id.
    pub upstreams: Vec<UpstreamSnapshot>,
}

/// A client as its hub knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// Its id.
    pub id: ClientId,
    /// `connection_name` from its client properties.
    pub connection_name: Option<String>,
    /// `product` from its client properties.
    pub product: Option<String>,
    /// `version` from its client properties.
    pub version: Option<String>,
    /// `waiting` (for an upstream, or for a resume), `open` or `closing`.
    pub phase: &'static str,
    /// Its open channels (any state).
    pub channels: usize,
    /// Frames and bytes received from it.
    pub frames_in: u64,
    /// Bytes received from it (whole frames).
    pub bytes_in: u64,
    /// Frames (or pieces of re-chunked bodies) queued for it.
    pub frames_out: u64,
    /// Bytes queued for it.
    pub bytes_out: u64,
    /// When it joined the hub.
    pub since: Instant,
    /// When it last sent a frame (a heartbeat counts).
    pub last_activity: Instant,
}

/// An upstream as its hub knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSnapshot {
    /// Its id.
    pub id: UpstreamId,
    /// The index of the broker node in the upstream list, once connected.
    pub node: Option<usize>,
    /// `connecting`, `open`, `retiring` (after a re-dial), `closing`, or `probing` (asking the
    /// broker about an exchange type).
    pub phase: &'static str,
    /// Upstream channel numbers in use (any state but free).
    pub channels: usize,
    /// Negotiated channel_max (0 until open).
    pub channel_max: u16,
    /// Negotiated heartbeat in seconds (0 until open).
    pub heartbeat: u16,
    /// The broker's reason while it blocks publishers (B12).
    pub blocked: Option<String>,
    /// When it was dialled or adopted, then when it opened.
    pub since: Instant,
}

/// What a client waiting out a pause is told when the pause lasts longer than `timeout`.
#[must_use]
pub fn paused_connection_reply(timeout: Duration) -> Reply {
    Reply::new(
        reply::CONNECTION_FORCED,
        format!(
            "warren is paused by an operator and did not resume within {}s; try again later",
            timeout.as_secs()
        ),
    )
}

/// What a `Channel.Open` waiting out a pause is told when the pause lasts longer than
/// `timeout`.
#[must_use]
pub fn paused_channel_reply(timeout: Duration) -> Reply {
    Reply::new(
        reply::RESOURCE_ERROR,
        format!(
            "warren is paused by an operator and did not resume within {}s; try again later",
            timeout.as_secs()
        ),
    )
}

impl Hub {
    /// The client whose id number (as printed, `c<number>`) is `number`.
    #[must_use]
    pub fn find_client(&self, number: u32) -> Option<ClientId> {
        self.clients
            .iter()
            .map(|(_, c)| c.id)
            .find(|id| id.gen == number)
    }

    /// The hub's state.
    #[must_use]
    pub fn state(&self) -> HubState {
        if self.drain.is_some() || self.detached.is_some() {
            HubState::Draining
        } else if self.paused {
            HubState::Paused
        } else if self.has_open_upstream() {
            HubState::Ready
        } else if self.is_unreachable() {
            HubState::Unreachable
        } else if self.reconnect.at.is_some()
            || self.upstreams.iter().any(|(_, u)| u.is_connecting())
        {
            HubState::Connecting
        } else {
            HubState::Idle
        }
    }

    /// The hub at this instant, for the admin API: its clients and upstreams by id.
    #[must_use]
    pub fn snapshot(&self) -> HubSnapshot {
        let mut clients: Vec<ClientSnapshot> = self
            .clients
            .iter()
            .map(|(_, c)| ClientSnapshot {
                id: c.id,
                connection_name: c.labels.connection_name.clone(),
                product: c.labels.product.clone(),
                version: c.labels.version.clone(),
                phase: match c.phase {
                    Phase::AwaitingUpstream => "waiting",
                    Phase::Open => "open",
                    Phase::Closing { .. } => "closing",
                },
                channels: c.channels.len(),
                frames_in: c.counters.frames_in,
                bytes_in: c.counters.bytes_in,
                frames_out: c.counters.frames_out,
                bytes_out: c.counters.bytes_out,
                since: c.counters.since,
                last_activity: c.counters.last_activity,
            })
            .collect();
        clients.sort_by_key(|c| c.id);
        let mut upstreams: Vec<UpstreamSnapshot> = self
            .upstreams
            .iter()
            .map(|(_, u)| UpstreamSnapshot {
                id: u.id,
                node: u.node,
                phase: match u.phase {
                    _ if u.probe.is_some() => "probing",
                    UpPhase::Connecting(_) => "connecting",
                    UpPhase::Open if u.retiring.is_some() => "retiring",
                    UpPhase::Open => "open",
                    UpPhase::Closing { .. } => "closing",
                },
                channels: u.table.in_use(),
                channel_max: u.tune.channel_max,
                heartbeat: u.tune.heartbeat,
                blocked: u.blocked.clone(),
                since: u.since,
            })
            .collect();
        upstreams.sort_by_key(|u| u.id);
        HubSnapshot {
            state: self.state(),
            paused: self.paused,
            channels_in_use: self.channels_in_use(),
            channels_pooled: self.pooled_channels(),
            waiting: self.paused_clients.len() + self.paused_opens.len(),
            clients,
            upstreams,
        }
    }

    // ----- pause ------------------------------------------------------------------------

    pub(super) fn pause(&mut self) {
        self.paused = true;
    }

    /// Lets every waiter through, in arrival order: clients first (their `OpenOk`, or the
    /// dial they wait for), then channel opens.
    pub(super) fn resume(&mut self, now: Instant) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.pause_timer = self.agenda.reschedule(Timer::Pause, self.pause_timer, None);
        let clients: Vec<ClientId> = self.paused_clients.drain(..).map(|(c, _)| c).collect();
        for id in clients {
            if self
                .client(id)
                .is_some_and(|c| c.phase == Phase::AwaitingUpstream)
            {
                self.seat_client(now, id);
                self.schedule_client(id);
            }
        }
        let opens: Vec<(ClientId, u16)> = self
            .paused_opens
            .drain(..)
            .map(|(c, ch, _)| (c, ch))
            .collect();
        for (id, ch) in opens {
            if self.is_waiting_channel(id, ch) {
                self.serve_open(now, id, ch);
            }
        }
    }

    /// A new client waits for a resume.
    pub(super) fn hold_client(&mut self, now: Instant, id: ClientId) {
        self.paused_clients
            .push_back((id, now + self.config.pause_timeout));
        self.schedule_pause();
    }

    /// A new `Channel.Open` waits for a resume.
    pub(super) fn hold_open(&mut self, now: Instant, id: ClientId, ch: u16) {
        self.paused_opens
            .push_back((id, ch, now + self.config.pause_timeout));
        self.schedule_pause();
    }

    /// Forgets a held channel open (its client closed the channel or left).
    pub(super) fn forget_held_open(&mut self, id: ClientId, ch: Option<u16>) {
        let before = self.paused_opens.len();
        self.paused_opens
            .retain(|(c, h, _)| !(*c == id && ch.is_none_or(|ch| ch == *h)));
        if ch.is_none() {
            self.paused_clients.retain(|(c, _)| *c != id);
        }
        if self.paused_opens.len() != before {
            self.schedule_pause();
        }
    }

    /// Whether a client waits for a resume (it is not admitted, or refused, meanwhile).
    pub(super) fn is_held(&self, id: ClientId) -> bool {
        self.paused_clients.iter().any(|(c, _)| *c == id)
    }

    fn is_waiting_channel(&self, id: ClientId, ch: u16) -> bool {
        self.client(id)
            .and_then(|c| c.channels.get(&ch))
            .is_some_and(|chan| matches!(chan.state, ChanState::Waiting))
    }

    fn schedule_pause(&mut self) {
        let want = [
            self.paused_clients.front().map(|(_, at)| *at),
            self.paused_opens.front().map(|(_, _, at)| *at),
        ]
        .into_iter()
        .flatten()
        .min();
        self.pause_timer = self.agenda.reschedule(Timer::Pause, self.pause_timer, want);
    }

    /// Refuses the waiters whose time is up.
    pub(super) fn pause_timeout(&mut self, now: Instant) {
        self.pause_timer = None;
        let timeout = self.config.pause_timeout;
        while let Some(&(id, at)) = self.paused_clients.front() {
            if at > now {
                break;
            }
            self.paused_clients.pop_front();
            if self
                .client(id)
                .is_some_and(|c| c.phase == Phase::AwaitingUpstream)
            {
                self.refuse_client(now, id, paused_connection_reply(timeout));
            }
        }
        while let Some(&(id, ch, at)) = self.paused_opens.front() {
            if at > now {
                break;
            }
            self.paused_opens.pop_front();
            if self.is_waiting_channel(id, ch) {
                self.stats.channel_refusals += 1;
                self.close_channel_from_proxy(now, id, ch, paused_channel_reply(timeout));
            }
        }
        self.schedule_pause();
    }

    /// A drain refuses what waits for a resume, as it refuses clients waiting for admission.
    pub(super) fn refuse_held(&mut self, now: Instant, reply: &Reply) {
        let opens: Vec<(ClientId, u16)> = self
            .paused_opens
            .drain(..)
            .map(|(c, ch, _)| (c, ch))
            .collect();
        for (id, ch) in opens {
            if self.is_waiting_channel(id, ch) {
                self.close_channel_from_proxy(now, id, ch, reply.clone());
            }
        }
        self.paused_clients.clear();
        self.schedule_pause();
    }

    // ----- re-dial and detach -----------------------------------------------------------

    /// Dials a new upstream whose opening retires the others. Not while draining or while a
    /// re-dial is under way.
    pub(super) fn redial(&mut self, now: Instant) {
        if self.drain.is_some() || self.detached.is_some() {
            return;
        }
        if self.redialling.is_some_and(|u| self.upstream(u).is_some()) {
            return;
        }
        // The list's order (spreading: the least used node), not the node that answered
        // last: a re-dial is how new channels get back to a node that came back.
        let nodes = match self.config.placement {
            super::Placement::Fill => (0..self.config.nodes.max(1)).collect(),
            super::Placement::Spread => self
                .nodes
                .spread_order(self.upstreams.iter().map(|(_, u)| u.node.unwrap_or(u.aim))),
        };
        let id = self.dial_nodes(now, nodes, "");
        self.redialling = Some(id);
        self.event(HubEvent::Redialling { upstream: id });
    }

    /// The re-dialled upstream `id` opened: every other open upstream retires.
    pub(super) fn redialled(&mut self, now: Instant, id: UpstreamId) {
        if self.redialling != Some(id) {
            return;
        }
        self.redialling = None;
        let others: Vec<UpstreamId> = self
            .upstreams
            .iter()
            .filter(|(_, u)| u.id != id && u.is_open() && u.retiring.is_none())
            .map(|(_, u)| u.id)
            .collect();
        for up in others {
            if let Some(u) = self.upstream_mut(up) {
                u.retiring = Some(now);
            }
            // Its pooled channels would hand new clients the old connection.
            let pooled: Vec<_> = self.pool.iter().copied().filter(|r| r.up == up).collect();
            self.pool.retain(|r| r.up != up);
            for r in pooled {
                if matches!(self.slot(r), Slot::Pooled { .. }) {
                    self.close_upstream_channel(now, r, "re-dialled");
                }
            }
            self.schedule_upstream(up);
        }
    }

    /// Admission sends no more clients: serve the ones here, then close.
    pub(super) fn detach(&mut self, now: Instant) {
        if self.detached.is_some() {
            return;
        }
        self.detached = Some(now);
        if self.clients.is_empty() {
            if let Some(at) = self.reconnect.at.take() {
                self.agenda.reschedule(Timer::Reconnect, Some(at), None);
            }
        }
        let ups: Vec<UpstreamId> = self.upstreams.iter().map(|(_, u)| u.id).collect();
        for up in ups {
            self.schedule_upstream(up);
        }
    }
}
