//! Proofs: the broker logins admission runs for clients whose account it does not trust yet
//! (B2), and the links they ride on ([`Link`], [`Purpose`]). A proof's `Tune` or refusal is
//! the verdict its waiting clients get; once the first of them names a vhost the proof opens
//! it and is handed to that vhost's hub as an upstream. Failures are remembered, and a broker
//! that cannot be reached is not dialled again until the backoff ends (B11).

use super::events::Feed;
use super::{Admission, AdmissionEvent, ConnId, LinkId, Output, Refusal, Timer, Wait};
use crate::credentials::{Account, Credentials};
use crate::frame::Frame;
use crate::hub::{self, BackoffConfig};
use crate::login::{Login, LoginEvent, LoginPhase, LoginStep};
use crate::method::{encode, Close};
use crate::reply::{self, Reply};
use smallvec::SmallVec;
use std::time::{Duration, Instant};

/// What a link is for.
#[derive(Debug)]
pub(super) enum Purpose {
    /// Proving an account for the clients waiting on it; then opening the vhost the first of
    /// them names, for the clients waiting on that.
    Proof {
        account: Account,
        /// Clients waiting for the verdict on their login.
        logins: Vec<ConnId>,
        /// Clients waiting for the vhost to open.
        opens: Vec<ConnId>,
        /// An event revoked the account while the proof ran: its verdict is not cached.
        stale: bool,
    },
    /// The broker's event exchange.
    Feed(Box<Feed>),
}

#[derive(Debug)]
pub(super) struct Link {
    pub(super) id: LinkId,
    pub(super) login: Login,
    pub(super) purpose: Purpose,
    pub(super) timer_at: Option<Instant>,
    /// The broker node it reached, once connected.
    pub(super) node: Option<usize>,
}

impl Admission {
    pub(super) fn link(&self, id: LinkId) -> Option<&Link> {
        self.links.get(id.index()).filter(|l| l.id == id)
    }

    pub(super) fn link_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        self.links.get_mut(id.index()).filter(|l| l.id == id)
    }

    /// [`Input::LinkConnected`](super::Input::LinkConnected): the login starts.
    pub(super) fn link_connected(&mut self, now: Instant, link: LinkId, node: usize) {
        // Spreading, admission's logins take the nodes in turn instead.
        if self.config.hub.placement != hub::Placement::Spread {
            self.nodes.answered(node);
        }
        if let Some(l) = self.link_mut(link) {
            l.node = Some(node);
            let step = l.login.on_connected(now);
            self.link_step(now, link, step, SmallVec::new());
        }
    }

    /// [`Input::LinkClosed`](super::Input::LinkClosed): the dial failed or the socket closed.
    pub(super) fn link_closed(&mut self, now: Instant, link: LinkId, reason: &str) {
        if let Some(l) = self.link(link) {
            let reply = if l.login.is_connecting() {
                l.login.on_socket_closed(reason)
            } else {
                Reply::new(
                    reply::CONNECTION_FORCED,
                    format!("broker connection lost: {reason}"),
                )
            };
            self.link_failed(now, link, reply);
        }
    }

    /// A proof of `account` still logging in, whose verdict a new client can wait for.
    pub(super) fn proof_logging_in(&self, account: &Account) -> Option<LinkId> {
        self.links.iter().find_map(|(_, l)| match &l.purpose {
            Purpose::Proof { account: a, .. }
                if a == account
                    && matches!(
                        l.login.phase(),
                        LoginPhase::Dialing | LoginPhase::AwaitStart | LoginPhase::AwaitTune
                    ) =>
            {
                Some(l.id)
            }
            _ => None,
        })
    }

    /// A proof of `key`'s account that can open `key`'s vhost: one logged in and waiting for
    /// a vhost (`true`: it has none yet), or one already opening this vhost (`false`).
    pub(super) fn proof_to_open(&self, key: &Credentials) -> Option<(LinkId, bool)> {
        let account = key.account();
        self.links.iter().find_map(|(_, l)| match &l.purpose {
            Purpose::Proof { account: a, .. } if *a == account => match l.login.phase() {
                LoginPhase::AwaitVhost => Some((l.id, true)),
                LoginPhase::AwaitOpenOk if l.login.vhost() == Some(&key.vhost) => {
                    Some((l.id, false))
                }
                _ => None,
            },
            _ => None,
        })
    }

    pub(super) fn dial_proof(&mut self, now: Instant, account: Account) -> LinkId {
        let name = format!("{} {} login", self.config.hub.upstream_name, account.user);
        let login = Login::new(
            now,
            &self.config.hub,
            &account.user,
            &account.password,
            None,
            name,
        );
        self.dial(
            now,
            login,
            Purpose::Proof {
                account,
                logins: Vec::new(),
                opens: Vec::new(),
                stale: false,
            },
        )
    }

    pub(super) fn dial(&mut self, now: Instant, login: Login, purpose: Purpose) -> LinkId {
        let id = LinkId {
            idx: self.links.vacant_key() as u32,
            gen: self.gen(),
        };
        let frame_max = login.frame_max();
        self.links.insert(Link {
            id,
            login,
            purpose,
            timer_at: None,
            node: None,
        });
        let nodes = self.nodes.order();
        if self.config.hub.placement == hub::Placement::Spread {
            self.nodes.rotate();
        }
        self.out.push_back(Output::Dial {
            link: id,
            nodes,
            frame_max,
        });
        self.schedule_link(now, id);
        id
    }

    pub(super) fn schedule_link(&mut self, _now: Instant, id: LinkId) {
        let Some(l) = self.link(id) else { return };
        let want = match &l.purpose {
            Purpose::Feed(feed) if !l.login.is_connecting() => feed.deadline(),
            _ => l.login.deadline(),
        };
        let old = l.timer_at;
        let at = self.agenda.reschedule(Timer::Link(id), old, want);
        if let Some(l) = self.link_mut(id) {
            l.timer_at = at;
        }
    }

    pub(super) fn link_frames(&mut self, now: Instant, id: LinkId, frames: SmallVec<[Frame; 8]>) {
        let mut frames = frames.into_iter();
        while let Some(frame) = frames.next() {
            let Some(l) = self.link_mut(id) else { return };
            if !l.login.is_connecting() {
                // Only the event feed stays with admission once open.
                if let Purpose::Feed(feed) = &mut l.purpose {
                    let step = feed.on_frame(now, &frame);
                    self.feed_step(now, id, step);
                }
                continue;
            }
            let step = l.login.on_frame(now, &frame);
            // A proof that opened goes to a hub with the frames read after its OpenOk.
            let rest =
                if step.event == LoginEvent::Opened && matches!(l.purpose, Purpose::Proof { .. }) {
                    frames.by_ref().collect()
                } else {
                    SmallVec::new()
                };
            self.link_step(now, id, step, rest);
        }
    }

    /// Carries out a login step of a link; `rest` holds the frames read after the one that
    /// caused it.
    pub(super) fn link_step(
        &mut self,
        now: Instant,
        id: LinkId,
        step: LoginStep,
        rest: SmallVec<[Frame; 8]>,
    ) {
        for data in step.send {
            self.out.push_back(Output::ToLink { link: id, data });
        }
        match step.event {
            LoginEvent::Nothing => self.schedule_link(now, id),
            LoginEvent::Accepted => self.login_accepted(now, id),
            LoginEvent::Opened => self.link_opened(now, id, rest),
            LoginEvent::Failed(reply) => self.link_failed(now, id, reply),
        }
    }

    /// The broker's `Tune`: the account is good.
    pub(super) fn login_accepted(&mut self, now: Instant, id: LinkId) {
        self.failures = 0;
        self.schedule_link(now, id);
        let Some(l) = self.link_mut(id) else { return };
        let (account, waiting, stale) = match &mut l.purpose {
            Purpose::Proof {
                account,
                logins,
                stale,
                ..
            } => (account.clone(), std::mem::take(logins), *stale),
            Purpose::Feed(_) => return,
        };
        if !stale {
            self.cache.prove(now, account.clone());
        }
        self.stats.proofs += 1;
        self.event(AdmissionEvent::Proved {
            user: account.user.clone(),
        });
        for conn in &waiting {
            if let Some(c) = self.conn_mut(*conn) {
                let waited = match c.wait {
                    Wait::Login(_, since) => now.saturating_duration_since(since),
                    _ => Duration::ZERO,
                };
                c.wait = Wait::Input;
                c.hs.accept_login(waited);
            }
        }
        // They go on to `Open`, where the first names the vhost this login opens. One that
        // never comes lets the login time out as "not needed".
        for conn in waiting {
            self.run_handshake(now, conn);
        }
    }

    /// `OpenOk`: the link becomes an upstream of its vhost's hub, and the clients waiting on
    /// it join that hub.
    pub(super) fn link_opened(&mut self, now: Instant, id: LinkId, frames: SmallVec<[Frame; 8]>) {
        let Some(l) = self.link_mut(id) else { return };
        let heartbeat = l.login.tune().heartbeat;
        if let Purpose::Feed(feed) = &mut l.purpose {
            let step = feed.on_open(now, heartbeat);
            self.feed_up();
            self.feed_step(now, id, step);
            return self.schedule_link(now, id);
        }
        let Some(vhost) = l.login.vhost().map(str::to_owned) else {
            return;
        };
        let Purpose::Proof { account, opens, .. } = &mut l.purpose else {
            return;
        };
        let key = Credentials {
            user: account.user.clone(),
            password: account.password.clone(),
            vhost,
        };
        let waiting = std::mem::take(opens);
        let timer = l.timer_at;
        self.agenda.reschedule(Timer::Link(id), timer, None);
        let link = self.links.remove(id.index());
        let live: Vec<ConnId> = waiting
            .into_iter()
            .filter(|c| self.conn(*c).is_some())
            .collect();
        if live.is_empty() {
            // Everyone left: nothing to open it for.
            self.links.insert(link);
            return self.close_link(id, "not needed");
        }
        let hub = match self.next_hub_of(&key) {
            Some(h) => h,
            None => self.start_hub(key),
        };
        if let Some(h) = self.hubs.get_mut(&hub) {
            h.handoffs += 1;
        }
        self.out.push_back(Output::AdoptLink {
            link: id,
            hub,
            login: Box::new(link.login),
            frames,
            node: link.node.unwrap_or(0),
        });
        for conn in live {
            self.join(conn, hub);
        }
    }

    /// A link failed: the clients waiting on it hear why; refusals are remembered, and a
    /// broker that could not be reached is not dialled again for a while.
    pub(super) fn link_failed(&mut self, now: Instant, id: LinkId, reply: Reply) {
        let Some(l) = self.link_mut(id) else { return };
        let phase = l.login.phase();
        let vhost = l.login.vhost().map(str::to_owned);
        if let (Some(node), false) = (l.node, reply.refuses_login()) {
            // It answered, then failed for another reason than the credentials.
            self.nodes.failed(node);
        }
        let Some(l) = self.link_mut(id) else { return };
        match &mut l.purpose {
            Purpose::Feed(_) => {
                self.remove_link(id);
                self.feed_down(now, reply.text);
            }
            Purpose::Proof {
                account,
                logins,
                opens,
                stale,
            } => {
                let (account, logins, opens, stale) = (
                    account.clone(),
                    std::mem::take(logins),
                    std::mem::take(opens),
                    *stale,
                );
                self.event(AdmissionEvent::ProofFailed {
                    link: id,
                    user: account.user.clone(),
                    reply: reply.clone(),
                });
                self.remove_link(id);
                let why = if !reply.refuses_login() {
                    self.broker_unreachable(now, &reply);
                    Refusal::Unreachable
                } else if phase == LoginPhase::AwaitOpenOk {
                    if let (Some(vhost), false) = (vhost, stale) {
                        let key = Credentials {
                            user: account.user.clone(),
                            password: account.password.clone(),
                            vhost,
                        };
                        self.cache.refuse_vhost(now, key, reply.clone());
                    }
                    Refusal::Vhost
                } else {
                    if !stale {
                        self.cache.refuse_login(now, account, reply.clone());
                    }
                    Refusal::Login
                };
                for conn in logins.into_iter().chain(opens) {
                    self.refuse(now, conn, why, reply.clone());
                }
            }
        }
    }

    /// A proof could not reach the broker: clients that need one are refused at once until
    /// the backoff ends (B11), instead of each causing a dial.
    pub(super) fn broker_unreachable(&mut self, now: Instant, reply: &Reply) {
        let delay = self.backoff().delay(self.failures, &mut self.rng);
        self.failures = self.failures.saturating_add(1);
        let until = now + delay;
        let old = self.unreachable.as_ref().map(|(at, _)| *at);
        self.agenda.reschedule(Timer::Unreachable, old, Some(until));
        self.unreachable = Some((until, reply.clone()));
        self.event(AdmissionEvent::Unreachable {
            reply: reply.clone(),
            retry_in: delay,
        });
    }

    pub(super) fn backoff(&self) -> BackoffConfig {
        self.config.hub.backoff
    }

    /// Sends `Connection.Close 200` on a link past its `Tune` and closes its socket.
    pub(super) fn close_link(&mut self, id: LinkId, why: &str) {
        let Some(l) = self.link(id) else { return };
        if matches!(
            l.login.phase(),
            LoginPhase::AwaitVhost | LoginPhase::AwaitOpenOk | LoginPhase::Open
        ) {
            let close = Close::from(&Reply::verbatim(reply::REPLY_SUCCESS, why));
            self.out.push_back(Output::ToLink {
                link: id,
                data: encode::close(0, &close),
            });
        }
        self.remove_link(id);
    }

    /// Forgets a link and tells the driver to close its socket.
    pub(super) fn remove_link(&mut self, id: LinkId) {
        let Some(l) = self.link(id) else { return };
        let timer = l.timer_at;
        self.agenda.reschedule(Timer::Link(id), timer, None);
        self.links.remove(id.index());
        if self.feed == Some(id) {
            self.feed = None;
        }
        self.out.push_back(Output::CloseLink { link: id });
    }

    /// A refusal a hub's own login met: remembered like a proof's.
    pub(super) fn remember_refusal(&mut self, now: Instant, key: &Credentials, reply: Reply) {
        if reply.code == reply::ACCESS_REFUSED {
            self.cache.refuse_login(now, key.account(), reply);
        } else if reply.refuses_login() {
            self.cache.refuse_vhost(now, key.clone(), reply);
        }
    }

    /// A link's timer: the event feed's heartbeat, an unneeded proof, or a login deadline.
    pub(super) fn link_timer(&mut self, now: Instant, id: LinkId) {
        let Some(l) = self.link_mut(id) else { return };
        l.timer_at = None;
        match &mut l.purpose {
            Purpose::Feed(feed) if !l.login.is_connecting() => {
                let step = feed.on_timer(now);
                self.feed_step(now, id, step);
            }
            // Logged in, but no client came to name a vhost in time.
            Purpose::Proof { .. }
                if l.login.phase() == LoginPhase::AwaitVhost && l.login.timed_out(now) =>
            {
                self.close_link(id, "not needed");
            }
            _ => {
                let step = l.login.on_timer(now);
                self.link_step(now, id, step, SmallVec::new());
            }
        }
    }
}
