//! The clients in their handshake: the connection table ([`Conn`], what each waits for), and
//! the driving of each one's [`ClientHandshake`] — its login decided from the cache or by a
//! proof, its `Open` joining a hub, its deadline and heartbeats until it leaves admission.

use super::proofs::{Link, Purpose};
use super::refusal::shutting_down;
use super::{Admission, AdmissionEvent, ConnId, HubId, LinkId, Output, Refusal, Timer, Wait};
use crate::credentials::Account;
use crate::frame::HEARTBEAT;
use crate::handshake::{ClientHandshake, ClientHello, HandshakeOutput};
use crate::hub::liveness::{Beat, Liveness};
use crate::proxy_header::{self, ProxyHeader};
use crate::reply::{self, Reply};
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: ConnId,
    pub(super) hs: ClientHandshake,
    pub(super) buf: BytesMut,
    /// The connected-clients count was over the limit when it arrived.
    pub(super) over_limit: bool,
    pub(super) wait: Wait,
    pub(super) user: Option<String>,
    /// Set once it reached `Open`.
    pub(super) hello: Option<Box<ClientHello>>,
    pub(super) timer_at: Option<Instant>,
    /// When admission last wrote to it.
    pub(super) last_tx: Instant,
    /// Heartbeats both ways from its `TuneOk` on (B10), as RabbitMQ runs them once a
    /// connection is tuned: a client waiting here for the broker (its `Open` waiting on a
    /// proof opening its vhost) hears from warren at the negotiated interval.
    pub(super) beat: Option<Liveness>,
    /// A PROXY protocol header is still expected before the client's own bytes.
    pub(super) proxy_header: bool,
}

impl Admission {
    pub(super) fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.index()).filter(|c| c.id == id)
    }

    pub(super) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.index()).filter(|c| c.id == id)
    }

    /// Queues bytes for a client and counts them as liveness towards it.
    pub(super) fn send_client(&mut self, now: Instant, conn: ConnId, data: Bytes) {
        if let Some(c) = self.conn_mut(conn) {
            c.last_tx = now;
            if let Some(b) = &mut c.beat {
                b.sent(now);
            }
        }
        self.out.push_back(Output::ToClient { conn, data });
    }

    /// [`Input::ClientData`](super::Input::ClientData): bytes from a client in its handshake.
    pub(super) fn client_data(&mut self, now: Instant, conn: ConnId, data: Bytes) {
        if let Some(c) = self
            .conn_mut(conn)
            .filter(|c| !matches!(c.wait, Wait::Reset(_)))
        {
            c.buf.extend_from_slice(&data);
            if let Some(b) = &mut c.beat {
                b.received(now);
            }
            self.run_handshake(now, conn);
        }
    }

    /// Runs a client's handshake over what it has sent, acts on what it asks for, and sets
    /// its timer for what it then waits for.
    pub(super) fn run_handshake(&mut self, now: Instant, id: ConnId) {
        self.advance_handshake(now, id);
        self.schedule_conn(id);
    }

    pub(super) fn advance_handshake(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(c) = self.conn_mut(id) else { return };
            if c.wait != Wait::Input {
                return;
            }
            if c.proxy_header {
                match proxy_header::parse(&c.buf) {
                    ProxyHeader::Incomplete => return,
                    ProxyHeader::Complete { source, len } => {
                        c.proxy_header = false;
                        let _ = c.buf.split_to(len);
                        if let Some(source) = source {
                            self.event(AdmissionEvent::ClientAddress { conn: id, source });
                        }
                        continue;
                    }
                    ProxyHeader::Invalid(why) => {
                        self.count_refusal(Refusal::ProxyHeader);
                        self.event(AdmissionEvent::ProxyHeaderRefused { conn: id, why });
                        return self.remove_conn(id, false);
                    }
                }
            }
            c.hs.handle_input(&mut c.buf);
            if c.beat.is_none() {
                if let Some(tune) = c.hs.tuned() {
                    let mut beat = Liveness::new(now, tune.heartbeat);
                    beat.sent(c.last_tx);
                    c.beat = Some(beat);
                }
            }
            let mut verdict_needed = false;
            while let Some(o) = self.conn_mut(id).and_then(|c| c.hs.poll_output()) {
                match o {
                    HandshakeOutput::Send(data) => self.send_client(now, id, data),
                    HandshakeOutput::Close => {
                        self.handshake_failed(id);
                        return;
                    }
                    HandshakeOutput::Login { user, password } => {
                        verdict_needed = true;
                        if let Some(c) = self.conn_mut(id) {
                            c.user = Some(user.clone());
                        }
                        self.login(now, id, Account { user, password });
                    }
                    HandshakeOutput::Done(hello) => {
                        self.open(now, id, hello);
                        return;
                    }
                }
            }
            // A login answered at once lets the bytes that waited for it go on.
            if !verdict_needed {
                return;
            }
        }
    }

    /// The handshake closed the client itself (a protocol error or its deadline).
    pub(super) fn handshake_failed(&mut self, id: ConnId) {
        self.count_refusal(Refusal::Handshake);
        self.event(AdmissionEvent::HandshakeFailed { conn: id });
        self.remove_conn(id, false);
    }

    /// `StartOk`: decide at once from what is known, or prove the account.
    pub(super) fn login(&mut self, now: Instant, id: ConnId, account: Account) {
        if self.draining {
            return self.refuse(now, id, Refusal::Draining, shutting_down());
        }
        if let Some(r) = self.cache.refused_login(now, &account).cloned() {
            return self.refuse(now, id, Refusal::Cached, r);
        }
        if self.cache.is_proven(now, &account) {
            self.stats.trusted += 1;
            self.event(AdmissionEvent::Trusted {
                user: account.user.clone(),
            });
            if let Some(c) = self.conn_mut(id) {
                c.hs.accept_login(Duration::ZERO);
            }
            return;
        }
        let pending = self.proof_logging_in(&account);
        if let Some(link) = pending {
            return self.wait_for_login(now, id, link);
        }
        if let Some((_, reply)) = self.unreachable.clone() {
            return self.refuse(now, id, Refusal::Unreachable, reply);
        }
        let link = self.dial_proof(now, account);
        self.wait_for_login(now, id, link);
    }

    pub(super) fn wait_for_login(&mut self, now: Instant, id: ConnId, link: LinkId) {
        if let Some(c) = self.conn_mut(id) {
            c.wait = Wait::Login(link, now);
        }
        if let Some(Link {
            purpose: Purpose::Proof { logins, .. },
            ..
        }) = self.link_mut(link)
        {
            logins.push(id);
        }
    }

    /// `Open`: join the hub of these credentials, or have a proof open the vhost first.
    pub(super) fn open(&mut self, now: Instant, id: ConnId, hello: Box<ClientHello>) {
        let Some(c) = self.conn_mut(id) else { return };
        let over_limit = c.over_limit;
        let key = hello.credentials.clone();
        c.hello = Some(hello);
        if self.draining {
            return self.refuse(now, id, Refusal::Draining, shutting_down());
        }
        if over_limit {
            let r = self.max_clients_reply();
            return self.refuse(now, id, Refusal::MaxClients, r);
        }
        if let Some(r) = self.cache.refused_vhost(now, &key).cloned() {
            return self.refuse(now, id, Refusal::Cached, r);
        }
        let proof = self.proof_to_open(&key);
        let hub = self.next_hub_of(&key);
        if hub.is_none() && self.hubs.len() >= self.config.max_hubs {
            let r = self.max_hubs_reply();
            return self.refuse(now, id, Refusal::MaxHubs, r);
        }
        match (proof, hub) {
            // A proof of this account still open to any vhost opens this one, and becomes an
            // upstream of its hub (a fresh word from the broker on these credentials).
            (Some((link, unassigned)), _) => {
                if unassigned {
                    if let Some(l) = self.link_mut(link) {
                        let step = l.login.open(now, &key.vhost);
                        self.link_step(now, link, step, SmallVec::new());
                    }
                }
                if let Some(c) = self.conn_mut(id) {
                    c.wait = Wait::Open(link);
                }
                if let Some(Link {
                    purpose: Purpose::Proof { opens, .. },
                    ..
                }) = self.link_mut(link)
                {
                    opens.push(id);
                }
            }
            (None, Some(hub)) => self.join(id, hub),
            (None, None) => {
                let hub = self.start_hub(key);
                self.join(id, hub);
            }
        }
    }

    /// Hands a client that reached `Open` to `hub`.
    pub(super) fn join(&mut self, id: ConnId, hub: HubId) {
        let Some(c) = self.conns.get_mut(id.index()).filter(|c| c.id == id) else {
            return;
        };
        let Some(hello) = c.hello.take() else { return };
        let pipelined = std::mem::take(&mut c.buf);
        let timer = c.timer_at;
        self.agenda.reschedule(Timer::Conn(id), timer, None);
        self.conns.remove(id.index());
        if let Some(h) = self.hubs.get_mut(&hub) {
            h.handoffs += 1;
        }
        self.out.push_back(Output::Join {
            conn: id,
            hub,
            hello,
            pipelined,
        });
    }

    /// Forgets a client and tells the driver to close (or reset) its socket.
    pub(super) fn remove_conn(&mut self, id: ConnId, reset: bool) {
        let Some(c) = self.conn(id) else { return };
        let (timer, wait) = (c.timer_at, c.wait);
        self.agenda.reschedule(Timer::Conn(id), timer, None);
        self.conns.remove(id.index());
        self.unwait(id, wait);
        self.out.push_back(Output::CloseClient { conn: id, reset });
    }

    /// The client's socket is gone.
    pub(super) fn client_gone(&mut self, id: ConnId) {
        let Some(c) = self.conn(id) else { return };
        let (timer, wait) = (c.timer_at, c.wait);
        self.agenda.reschedule(Timer::Conn(id), timer, None);
        self.conns.remove(id.index());
        self.unwait(id, wait);
    }

    /// Takes a departed client off the proof it waited on.
    pub(super) fn unwait(&mut self, id: ConnId, wait: Wait) {
        let link = match wait {
            Wait::Input | Wait::Reset(_) => return,
            Wait::Login(l, _) | Wait::Open(l) => l,
        };
        if let Some(Link {
            purpose: Purpose::Proof { logins, opens, .. },
            ..
        }) = self.link_mut(link)
        {
            logins.retain(|c| *c != id);
            opens.retain(|c| *c != id);
        }
    }

    pub(super) fn schedule_conn(&mut self, id: ConnId) {
        let Some(c) = self.conn(id) else { return };
        let deadline = match c.wait {
            Wait::Reset(at) => Some(at),
            // Past `Open` the handshake is done, but its deadline still bounds the wait.
            Wait::Open(_) => Some(c.hs.deadline()),
            Wait::Input | Wait::Login(..) => c.hs.poll_timeout(),
        };
        let beat = match c.wait {
            Wait::Reset(_) => None,
            _ => c.beat.as_ref().and_then(Liveness::deadline),
        };
        let want = match (deadline, beat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let old = c.timer_at;
        let at = self.agenda.reschedule(Timer::Conn(id), old, want);
        if let Some(c) = self.conn_mut(id) {
            c.timer_at = at;
        }
    }

    /// A client's timer: its reset, its wait on the broker, its heartbeats or its deadline.
    pub(super) fn conn_timer(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conn_mut(id) else { return };
        c.timer_at = None;
        if let Wait::Reset(at) = c.wait {
            if now >= at {
                self.remove_conn(id, true);
            } else {
                self.schedule_conn(id);
            }
            return;
        }
        let waiting_on = match c.wait {
            Wait::Login(..) => Some("checking the login"),
            Wait::Open(_) => Some("opening the vhost"),
            Wait::Input | Wait::Reset(_) => None,
        };
        if let Some(what) = waiting_on.filter(|_| now >= c.hs.deadline()) {
            // The client waited for the broker, not the other way round: it
            // hears why instead of losing its socket.
            let r = Reply::new(
                reply::CONNECTION_FORCED,
                format!("broker unreachable: timed out {what}"),
            );
            self.refuse(now, id, Refusal::Unreachable, r);
            return;
        }
        match c.beat.as_ref().map(|b| b.check(now)) {
            Some(Beat::Dead) => {
                let r = Reply::new(
                    reply::CONNECTION_FORCED,
                    "missed heartbeats from client, timeout",
                );
                self.refuse(now, id, Refusal::Handshake, r);
                return;
            }
            Some(Beat::Send) => {
                self.send_client(now, id, Bytes::from_static(HEARTBEAT));
            }
            Some(Beat::Idle) | None => {}
        }
        let Some(c) = self.conn_mut(id) else { return };
        if c.hs.poll_timeout().is_some_and(|t| t <= now) {
            // Timed out: the handshake closes it.
            c.hs.handle_timeout(now);
            while let Some(o) = self.conn_mut(id).and_then(|c| c.hs.poll_output()) {
                if let HandshakeOutput::Send(data) = o {
                    self.send_client(now, id, data);
                }
            }
            self.handshake_failed(id);
        } else {
            self.schedule_conn(id);
        }
    }
}
