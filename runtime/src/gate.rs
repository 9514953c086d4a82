//! The admission task: it accepts clients, runs core's [`Admission`] over their handshakes and
//! over the broker logins it owns (proofs and the event feed), starts hub tasks and hands
//! clients and logged-in broker connections to them. Every decision is admission's; this task
//! moves bytes and time.
//!
//! Handshaking clients and admission's broker connections are sockets of one
//! [`SocketSet`], read and written by this task directly: a client costs no task of its own
//! until it joins its hub.

use crate::conn::{ClientCount, Resettable};
use crate::ctx::{now, ClientListener, Ctx};
use crate::hub_task::spawn_hub;
use crate::msg::{Accepted, AdminRequest, ApiReply, Arrival, GateMsg, HubAction, HubMsg, Unsent};
use crate::net::Network;
use crate::sockets::{SocketEvent, SocketSet};
use crate::wake::Wake;
use bytes::BytesMut;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use warren_core::admission::{
    Admission, AdmissionEvent, ConnId, HubId, Input, LinkId, Output, Refusal,
};
use warren_core::frame::FrameDecoder;
use warren_core::growth::put;
use warren_core::nodes::NodeOrder;

/// What a socket of the set belongs to.
#[derive(Debug, Clone, Copy)]
enum Who {
    Client(ConnId),
    Link(LinkId),
}

/// A client in its handshake, as the task knows it.
struct ClientInfo {
    id: ConnId,
    key: usize,
    peer: SocketAddr,
    count: ClientCount,
    reset: Arc<AtomicBool>,
    started: Instant,
    tls: bool,
}

/// A broker connection of admission's, as the task knows it.
struct LinkInfo {
    id: LinkId,
    /// The socket, once the dial connected.
    key: Option<usize>,
    decoder: FrameDecoder,
}

pub(crate) struct Gate<N: Network> {
    ctx: Arc<Ctx<N>>,
    admission: Admission,
    sockets: SocketSet<Who>,
    clients: Vec<Option<ClientInfo>>,
    links: Vec<Option<LinkInfo>>,
    hubs: BTreeMap<HubId, mpsc::UnboundedSender<HubMsg>>,
    tx: mpsc::UnboundedSender<GateMsg>,
    rx: mpsc::UnboundedReceiver<GateMsg>,
    /// The client listeners; none once draining.
    listeners: Vec<ClientListener<N>>,
    draining: bool,
}

impl<N: Network> Gate<N> {
    pub(crate) fn new(
        ctx: Arc<Ctx<N>>,
        listeners: Vec<ClientListener<N>>,
        seed: u64,
    ) -> (Gate<N>, mpsc::UnboundedSender<GateMsg>) {
        let config = ctx
            .live()
            .config
            .admission_config(ctx.upstream_name.clone());
        let admission = Admission::new(now(), config, seed);
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = Gate {
            ctx,
            admission,
            sockets: SocketSet::new(),
            clients: Vec::new(),
            links: Vec::new(),
            hubs: BTreeMap::new(),
            tx: tx.clone(),
            rx,
            listeners,
            draining: false,
        };
        (gate, tx)
    }

    /// Runs until drained (every hub stopped, every socket closed) or aborted.
    ///
    /// A drain first stops accepting: what the kernel already accepted is taken (closing a
    /// listener would reset it), and handshakes under way may finish (up to the handshake
    /// timeout) and join their hubs, which serve them like the clients they have; only then
    /// is admission told to drain, and it tells the hubs (which must not close their last
    /// broker connection while a client may still join). So a warren handing its address
    /// over to a new one (`reuse_port`) refuses no client.
    pub(crate) async fn run(mut self) {
        let mut wake = Wake::new(&self.ctx.abort);
        // The first signal (the second aborts).
        let mut drain_signal = Box::pin(self.ctx.drain.clone().cancelled_owned());
        // While draining: until when handshakes under way may finish, and when the hubs close
        // the clients still connected (drain_timeout after the signal).
        let mut grace: Option<(tokio::time::Instant, Instant)> = None;
        loop {
            self.apply();
            if let Some((until, deadline)) = grace {
                if self.admission.handshakes() == 0 || tokio::time::Instant::now() >= until {
                    grace = None;
                    self.admission.handle(now(), Input::Drain { deadline });
                    self.apply();
                }
            }
            if self.draining && grace.is_none() && self.hubs.is_empty() && self.sockets.len() == 0 {
                break;
            }
            let deadline = self
                .admission
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .into_iter()
                .chain(self.sockets.next_deadline())
                .chain(grace.map(|(until, _)| until))
                .min();
            wake.set(deadline);
            let draining = self.draining;
            tokio::select! {
                biased;
                _ = wake.abort.as_mut() => break,
                _ = drain_signal.as_mut(), if !draining => {
                    self.draining = true;
                    let deadline = now() + self.ctx.live().config.drain_timeout;
                    self.stop_listening().await;
                    self.ctx.admin.readiness.set_listening(false);
                    let timeout = self.ctx.live().config.handshake_timeout;
                    grace = Some((tokio::time::Instant::now() + timeout, deadline));
                }
                Some(msg) = self.rx.recv() => self.message(msg),
                ev = poll_fn(|cx| self.sockets.poll_event(cx)) => self.socket_event(ev),
                (accepted, tls) = accept(&self.ctx.net, &self.listeners) => self.accepted(accepted, tls),
                _ = wake.sleep.as_mut(), if wake.armed() => {
                    wake.fired();
                    self.timers_due();
                }
            }
        }
        // Aborted, or drained: nothing is left to hand over.
        for tx in self.hubs.values() {
            let _ = tx.send(HubMsg::Stop);
        }
    }

    /// Takes every connection the listeners' queues hold, then closes them.
    async fn stop_listening(&mut self) {
        let listeners = std::mem::take(&mut self.listeners);
        for l in &listeners {
            // A zero timeout polls the accept once: whatever is queued, nothing more.
            while let Ok(Ok(accepted)) =
                tokio::time::timeout(Duration::ZERO, self.ctx.net.accept(&l.inner)).await
            {
                self.accepted(Ok(accepted), l.tls);
            }
        }
    }

    /// Whatever timer is due: admission's, or a closing handshake socket's.
    fn timers_due(&mut self) {
        if self.admission.poll_timeout().is_some_and(|at| at <= now()) {
            self.admission.handle(now(), Input::Timeout);
        }
        // Handshake sockets that would not take their last bytes: dropped.
        drop(self.sockets.reap(tokio::time::Instant::now()));
    }

    /// A connection from a listener: its AMQP handshake starts, after TLS if it came to a
    /// TLS listener.
    fn accepted(&mut self, accepted: std::io::Result<(N::Stream, SocketAddr)>, tls: bool) {
        match accepted {
            Ok((stream, peer)) => {
                let count = ClientCount::new(&self.ctx.clients);
                let reset = Arc::new(AtomicBool::new(false));
                let stream = Resettable::new(stream, reset.clone(), N::reset_on_close);
                let accepted = Accepted {
                    stream: Box::new(stream),
                    peer,
                    count,
                    reset,
                    started: now(),
                    tls,
                };
                match (tls, &self.ctx.live().acceptor) {
                    (false, _) => self.handshake(accepted),
                    (true, Some(acceptor)) => {
                        let (ctx, acceptor, tx) =
                            (self.ctx.clone(), acceptor.clone(), self.tx.clone());
                        self.ctx.tracker.spawn(async move {
                            if let Some(a) = tls_accept(&ctx, &acceptor, accepted).await {
                                let _ = tx.send(GateMsg::Accepted(Box::new(a)));
                            }
                        });
                    }
                    (true, None) => {
                        // Only after a reload that removed the certificate: a restart
                        // closes the TLS listener.
                        tracing::warn!(%peer, "TLS client refused: no certificate is configured (tls_cert)");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
            }
        }
    }

    /// A client socket starts its AMQP handshake.
    fn handshake(&mut self, a: Accepted) {
        let connected = self.ctx.clients.load(std::sync::atomic::Ordering::Relaxed);
        let id = self.admission.accept(now(), connected);
        let key = self
            .sockets
            .insert(Who::Client(id), a.stream, BytesMut::new(), Unsent::new());
        put(
            &mut self.clients,
            id.index(),
            ClientInfo {
                id,
                key,
                peer: a.peer,
                count: a.count,
                reset: a.reset,
                started: a.started,
                tls: a.tls,
            },
        );
    }

    fn client(&self, id: ConnId) -> Option<&ClientInfo> {
        self.clients
            .get(id.index())
            .and_then(Option::as_ref)
            .filter(|c| c.id == id)
    }

    fn take_client(&mut self, id: ConnId) -> Option<ClientInfo> {
        self.clients.get_mut(id.index())?.take_if(|c| c.id == id)
    }

    fn link_mut(&mut self, id: LinkId) -> Option<&mut LinkInfo> {
        self.links
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .filter(|l| l.id == id)
    }

    fn take_link(&mut self, id: LinkId) -> Option<LinkInfo> {
        self.links.get_mut(id.index())?.take_if(|l| l.id == id)
    }

    fn message(&mut self, msg: GateMsg) {
        match msg {
            // Accepted before the listeners closed: admission decides (it refuses once
            // draining).
            GateMsg::Accepted(a) => self.handshake(*a),
            GateMsg::Dialed { link, result } => {
                if self.link_mut(link).is_none() {
                    // Closed by admission meanwhile: the socket is dropped.
                    return;
                }
                match result {
                    Ok((stream, node)) => {
                        let key = self.sockets.insert(
                            Who::Link(link),
                            stream,
                            BytesMut::new(),
                            Unsent::new(),
                        );
                        if let Some(info) = self.link_mut(link) {
                            info.key = Some(key);
                        }
                        self.admission
                            .handle(now(), Input::LinkConnected { link, node });
                    }
                    Err(reason) => {
                        self.admission
                            .handle(now(), Input::LinkClosed { link, reason });
                    }
                }
            }
            GateMsg::HubIdle { hub, handoffs } => {
                self.admission
                    .handle(now(), Input::HubIdle { hub, handoffs });
            }
            GateMsg::HubRefused { hub, reply } => {
                self.admission
                    .handle(now(), Input::HubRefused { hub, reply });
            }
            GateMsg::Reconfigure => {
                let config = self
                    .ctx
                    .live()
                    .config
                    .admission_config(self.ctx.upstream_name.clone());
                self.admission
                    .handle(now(), Input::Reconfigure(Box::new(config)));
            }
            GateMsg::Admin(request, reply) => self.admin(request, reply),
        }
    }

    /// A request of the admin API: admission's part here (pausing a vhost, detaching a
    /// hub), the hubs' part in a task that asks them and answers.
    fn admin(&mut self, request: AdminRequest, reply: oneshot::Sender<ApiReply>) {
        let mut found = None;
        match &request {
            AdminRequest::Vhost(vhost, pause) => {
                let vhost = vhost.clone();
                let input = if *pause {
                    Input::PauseVhost { vhost }
                } else {
                    Input::ResumeVhost { vhost }
                };
                self.admission.handle(now(), input);
            }
            AdminRequest::HubAct(n, HubAction::Drain) => {
                found = self.admission.find_hub(*n);
                if let Some(hub) = found {
                    tracing::info!(%hub, "draining a hub for an operator");
                    self.admission.handle(now(), Input::DetachHub { hub });
                }
            }
            _ => {}
        }
        self.apply();
        let hubs = self
            .admission
            .hub_list()
            .into_iter()
            .filter_map(|e| self.hubs.get(&e.id).map(|tx| (e, tx.clone())))
            .collect();
        let paused = self.admission.paused_vhosts();
        tokio::spawn(crate::api::answer(request, hubs, paused, found, reply));
    }

    fn socket_event(&mut self, ev: SocketEvent<Who>) {
        match ev {
            SocketEvent::Readable(key, Who::Client(conn)) => {
                let Some(buf) = self.sockets.read_buf(key) else {
                    return;
                };
                let data = buf.split().freeze();
                self.admission
                    .handle(now(), Input::ClientData { conn, data });
            }
            SocketEvent::Closed(Who::Client(conn), _) => {
                self.take_client(conn);
                self.admission.handle(now(), Input::ClientClosed { conn });
            }
            SocketEvent::Readable(key, Who::Link(link)) => self.link_readable(key, link),
            // Handshake writes are small; nothing waits for them to drain.
            SocketEvent::Drained(..) => {}
            SocketEvent::Closed(Who::Link(link), reason) => {
                // Its info stays until admission's CloseLink: a failure names the node.
                self.admission
                    .handle(now(), Input::LinkClosed { link, reason });
            }
        }
    }

    fn link_readable(&mut self, key: usize, link: LinkId) {
        let Some(decoder) = self.link_mut(link).map(|l| l.decoder) else {
            return;
        };
        let Some(buf) = self.sockets.read_buf(key) else {
            return;
        };
        let mut frames = SmallVec::new();
        let error = loop {
            match decoder.decode(buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if !frames.is_empty() {
            self.admission
                .handle(now(), Input::LinkFrames { link, frames });
        }
        if let Some(error) = error {
            self.admission
                .handle(now(), Input::LinkFrameError { link, error });
        }
    }

    /// Carries out admission's outputs.
    fn apply(&mut self) {
        while let Some(out) = self.admission.poll_output() {
            match out {
                Output::ToClient { conn, data } => {
                    if let Some(key) = self.client(conn).map(|c| c.key) {
                        self.sockets.send(key, data);
                    }
                }
                Output::CloseClient { conn, reset } => {
                    let Some(c) = self.take_client(conn) else {
                        continue;
                    };
                    if reset {
                        c.reset.store(true, std::sync::atomic::Ordering::Relaxed);
                        // Dropped here: the socket is reset, nothing flushed.
                        self.sockets.take(c.key);
                    } else {
                        self.sockets.close(c.key);
                    }
                }
                Output::Dial {
                    link,
                    nodes,
                    frame_max,
                } => self.dial(link, nodes, frame_max),
                Output::ToLink { link, data } => {
                    if let Some(key) = self.link_mut(link).and_then(|l| l.key) {
                        self.sockets.send(key, data);
                    }
                }
                Output::CloseLink { link } => {
                    if let Some(key) = self.take_link(link).and_then(|l| l.key) {
                        self.sockets.close(key);
                    }
                }
                Output::StartHub { hub, machine } => {
                    let tx = spawn_hub(self.ctx.clone(), hub, machine, self.tx.clone());
                    self.hubs.insert(hub, tx);
                    self.ctx.metrics.set_hubs(self.admission.hub_count());
                }
                Output::AdoptLink {
                    link,
                    hub,
                    login,
                    frames,
                    node,
                } => {
                    let Some(info) = self.take_link(link) else {
                        continue;
                    };
                    let Some((_, stream, rbuf, unsent)) =
                        info.key.and_then(|k| self.sockets.take(k))
                    else {
                        continue;
                    };
                    self.send_to_hub(
                        hub,
                        HubMsg::Adopt {
                            login,
                            stream,
                            rbuf,
                            unsent,
                            frames,
                            node,
                        },
                    );
                }
                Output::Join {
                    conn,
                    hub,
                    hello,
                    pipelined,
                } => {
                    let Some(c) = self.take_client(conn) else {
                        continue;
                    };
                    let Some((_, stream, _, unsent)) = self.sockets.take(c.key) else {
                        continue;
                    };
                    self.ctx
                        .metrics
                        .observe_handshake(now().duration_since(c.started));
                    self.send_to_hub(
                        hub,
                        HubMsg::Join(Box::new(Arrival {
                            hello,
                            stream,
                            pipelined,
                            unsent,
                            peer: c.peer,
                            count: c.count,
                            reset: c.reset,
                            tls: c.tls,
                        })),
                    );
                }
                Output::ToHub { hub, input } => self.send_to_hub(hub, HubMsg::Input(input)),
                Output::StopHub { hub } => {
                    if let Some(tx) = self.hubs.remove(&hub) {
                        let _ = tx.send(HubMsg::Stop);
                    }
                    self.ctx.metrics.set_hubs(self.admission.hub_count());
                }
                Output::Event(e) => self.event(e),
            }
        }
    }

    fn send_to_hub(&mut self, hub: HubId, msg: HubMsg) {
        if let Some(tx) = self.hubs.get(&hub) {
            // A hub task ends only when told to, or when the server aborts.
            let _ = tx.send(msg);
        }
    }

    /// Connects a link in the background; the result comes back as [`GateMsg::Dialed`]. Its
    /// frames will be decoded under `frame_max`.
    fn dial(&mut self, link: LinkId, nodes: NodeOrder, frame_max: u32) {
        put(
            &mut self.links,
            link.index(),
            LinkInfo {
                id: link,
                key: None,
                decoder: FrameDecoder::new(frame_max),
            },
        );
        let (ctx, tx) = (self.ctx.clone(), self.tx.clone());
        let abort = self.ctx.abort.clone();
        self.ctx.tracker.spawn(async move {
            let result = tokio::select! {
                biased;
                _ = abort.cancelled() => return,
                r = ctx.connect_upstream(&nodes) => r,
            };
            let _ = tx.send(GateMsg::Dialed { link, result });
        });
    }

    fn event(&mut self, e: AdmissionEvent) {
        let m = &self.ctx.metrics;
        match e {
            AdmissionEvent::Refused {
                conn,
                why,
                reply,
                user,
            } => {
                m.refused(why.label());
                let peer = self.client(conn).map(|c| c.peer);
                tracing::info!(peer = ?peer, user = user.as_deref().unwrap_or(""), reason = why.label(), code = reply.code, text = %reply.text, "refusing client");
            }
            AdmissionEvent::HandshakeFailed { conn } => {
                m.refused(Refusal::Handshake.label());
                let peer = self.client(conn).map(|c| c.peer);
                tracing::debug!(peer = ?peer, "client handshake failed");
            }
            AdmissionEvent::ClientAddress { conn, source } => {
                // Logs, metrics and the admin API show the client, not the balancer.
                if let Some(c) = self.clients.get_mut(conn.index()).and_then(Option::as_mut) {
                    if c.id == conn {
                        tracing::debug!(balancer = %c.peer, client = %source, "PROXY header");
                        c.peer = source;
                    }
                }
            }
            AdmissionEvent::ProxyHeaderRefused { conn, why } => {
                m.refused(Refusal::ProxyHeader.label());
                let peer = self.client(conn).map(|c| c.peer);
                tracing::info!(peer = ?peer, why, "client refused: no valid PROXY protocol header");
            }
            AdmissionEvent::ProofFailed { user, reply, .. } => {
                m.proof(if reply.refuses_login() {
                    "refused"
                } else {
                    "failed"
                });
                tracing::info!(%user, code = reply.code, text = %reply.text, "login proof failed");
            }
            AdmissionEvent::Proved { user } => {
                m.proof("accepted");
                m.login("proved");
                tracing::debug!(%user, "login proved by the broker");
            }
            AdmissionEvent::Trusted { user } => {
                m.login("trusted");
                tracing::debug!(%user, "login trusted from the cache");
            }
            AdmissionEvent::Revoked(r) => {
                m.revocation();
                tracing::info!(revocation = ?r, "the broker revoked cached credentials");
            }
            AdmissionEvent::FeedUp => {
                m.set_event_feed(true);
                tracing::info!(
                    "credentials: changes arrive from the broker's event exchange as they happen"
                );
            }
            AdmissionEvent::FeedDown { reason } => {
                m.set_event_feed(false);
                let ttl = self.ctx.live().config.credentials_ttl;
                tracing::warn!(%reason, ?ttl, "broker event feed down: accepted credentials are trusted for credentials_ttl only");
            }
            AdmissionEvent::Unreachable { reply, retry_in } => {
                tracing::warn!(text = %reply.text, ?retry_in, "broker unreachable for new logins");
            }
        }
    }
}

/// The next connection from any listener, and whether it came to a TLS one; never once the
/// listeners are gone (draining).
async fn accept<N: Network>(
    net: &N,
    listeners: &[ClientListener<N>],
) -> (std::io::Result<(N::Stream, SocketAddr)>, bool) {
    let (r, tls) = match listeners {
        [] => std::future::pending().await,
        [one] => (net.accept(&one.inner).await, one.tls),
        [a, b, ..] => tokio::select! {
            r = net.accept(&a.inner) => (r, a.tls),
            r = net.accept(&b.inner) => (r, b.tls),
        },
    };
    if r.is_err() {
        // Out of file descriptors and similar: do not spin.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (r, tls)
}

/// Accepts TLS within the handshake timeout.
async fn tls_accept<N: Network>(
    ctx: &Ctx<N>,
    acceptor: &tokio_rustls::TlsAcceptor,
    a: Accepted,
) -> Option<Accepted> {
    let timeout = ctx.live().config.handshake_timeout;
    let tls = tokio::time::timeout(timeout, acceptor.accept(a.stream));
    match tls.await {
        Ok(Ok(s)) => Some(Accepted {
            stream: Box::new(s),
            ..a
        }),
        Ok(Err(e)) => {
            tracing::debug!(peer = %a.peer, error = %e, "TLS handshake failed");
            ctx.metrics.refused("tls");
            None
        }
        Err(_) => {
            ctx.metrics.refused("handshake_timeout");
            None
        }
    }
}
