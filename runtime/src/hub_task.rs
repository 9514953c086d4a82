//! One task per hub: it owns the core `Hub` and every socket of the hub — its clients and its
//! broker connections — in one [`SocketSet`]. A frame crossing warren wakes this task once:
//! it reads the frame, the hub decides, and the task writes the result straight to the
//! destination socket (P5). There is no reader or writer task per connection.
//!
//! The task never waits on a socket. What a socket does not take at once waits in its queue:
//! a client that stops draining its queue is reported slow (B9, the rule of
//! `warren_core::hub::slow`), and while a broker connection's queue is over its high-water
//! mark the task stops reading client sockets, so publishers feel TCP backpressure instead of
//! growing warren's memory.

use crate::conn::{BoxStream, ClientCount};
use crate::ctx::{now, Ctx};
use crate::metrics::HubMetrics;
use crate::msg::{Arrival, GateMsg, HubAnswer, HubCommand, HubMsg, Unsent};
use crate::net::Network;
use crate::sockets::{SocketEvent, SocketSet};
use crate::wake::Wake;
use bytes::BytesMut;
use smallvec::SmallVec;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warren_core::admission::HubId;
use warren_core::credentials::Credentials;
use warren_core::frame::{Frame, FrameDecoder};
use warren_core::growth::put;
use warren_core::hub::slow::{Drain, DrainWatch, SlowRule};
use warren_core::hub::{ClientId, Hub, HubEvent, HubStats, Input, Output, Peer, UpstreamId};
use warren_core::nodes::NodeOrder;

/// Bytes queued towards one upstream above which client input pauses (until half is written).
const UPSTREAM_HIGH_WATER: usize = 16 * 1024 * 1024;
/// How often counters are copied into the metrics registry.
const METRICS_EVERY: Duration = Duration::from_millis(250);
/// Events handled back to back before queued output is written.
const MAX_BURST: usize = 128;

/// Which connection a socket of the hub's set is.
#[derive(Debug, Clone, Copy)]
enum Conn {
    Client(ClientId),
    Upstream(UpstreamId),
}

/// A client as the task knows it. Kept small: tens of thousands of idle clients (P6).
struct ClientConn {
    id: ClientId,
    key: usize,
    decoder: FrameDecoder,
    /// Reported slow: nothing more is written, and its socket is reset.
    slow: bool,
    /// Its progress while more than `client_queue_bytes` wait for it.
    watch: DrainWatch,
    reset: Arc<AtomicBool>,
    log: Box<ConnLog>,
    _count: ClientCount,
}

/// A broker connection as the task knows it.
struct UpstreamConn {
    id: UpstreamId,
    /// The socket, once the dial connected.
    key: Option<usize>,
    decoder: FrameDecoder,
    /// Cancels the dial while it runs.
    cancel: CancellationToken,
    /// The local port of its socket, when known (the admin API shows it).
    local_port: Option<u16>,
}

/// Starts the task for a hub admission created; returns the channel that takes its handoffs.
pub(crate) fn spawn_hub<N: Network>(
    ctx: Arc<Ctx<N>>,
    id: HubId,
    hub: Box<Hub>,
    gate: mpsc::UnboundedSender<GateMsg>,
) -> mpsc::UnboundedSender<HubMsg> {
    let (msg_tx, msg_rx) = mpsc::unbounded_channel();
    let key = hub.credentials().clone();
    let metrics = ctx.metrics.hub(&key.user, &key.vhost);
    let task = HubTask {
        slow_rule: ctx.live().config.slow_rule(),
        ctx: ctx.clone(),
        hub: *hub,
        key,
        id,
        msgs: msg_rx,
        gate,
        dial_tx: msg_tx.clone(),
        idle_reported: None,
        stopping: false,
        sockets: SocketSet::new(),
        clients: Vec::new(),
        upstreams: Vec::new(),
        flushed: Vec::new(),
        slow: Vec::new(),
        watched: Vec::new(),
        watch_at: None,
        congested: false,
        metrics,
        last_stats: HubStats::default(),
        last_record: now(),
        report_pending: false,
        ready_open: false,
        ready_unreachable: false,
        wake: Wake::new(&ctx.abort),
    };
    ctx.tracker.spawn(task.run());
    msg_tx
}

struct HubTask<N: Network> {
    ctx: Arc<Ctx<N>>,
    hub: Hub,
    key: Credentials,
    id: HubId,
    msgs: mpsc::UnboundedReceiver<HubMsg>,
    gate: mpsc::UnboundedSender<GateMsg>,
    /// Its own channel, for the dials it starts.
    dial_tx: mpsc::UnboundedSender<HubMsg>,
    /// The handoff count last reported idle with, so it is reported once.
    idle_reported: Option<u64>,
    /// Admission said nothing more is coming.
    stopping: bool,
    sockets: SocketSet<Conn>,
    clients: Vec<Option<ClientConn>>,
    upstreams: Vec<Option<UpstreamConn>>,
    /// Connections written to by the last flush (kept for its capacity).
    flushed: Vec<Conn>,
    slow: Vec<ClientId>,
    /// The slow-client rule, the clients it watches, and the earliest time to look again.
    slow_rule: SlowRule,
    watched: Vec<ClientId>,
    watch_at: Option<Instant>,
    /// A broker connection is over its high-water mark: client sockets are not read.
    congested: bool,
    metrics: HubMetrics,
    last_stats: HubStats,
    last_record: Instant,
    /// Counters changed since the last copy into metrics, which was too recent to repeat.
    report_pending: bool,
    ready_open: bool,
    ready_unreachable: bool,
    wake: Wake,
}

impl<N: Network> HubTask<N> {
    async fn run(mut self) {
        loop {
            // Everything ready now, up to a burst; then the writes; then wait.
            let mut handled = 0;
            while handled < MAX_BURST && self.step_ready() {
                handled += 1;
            }
            self.flush();
            self.report(false);
            if handled == MAX_BURST {
                tokio::task::yield_now().await;
                continue;
            }
            if self.hub.is_finished() {
                if self.stopping {
                    break;
                }
                self.report_idle();
            }
            if !self.wait().await {
                break;
            }
        }
        self.flush();
        self.report(true);
    }

    /// Handles one thing that is ready without waiting; false if nothing was.
    fn step_ready(&mut self) -> bool {
        while let Some(client) = self.slow.pop() {
            self.handle(Input::ClientSlow { client });
        }
        if let Ok(msg) = self.msgs.try_recv() {
            self.hub_msg(msg);
            return true;
        }
        if let Some(ev) = self.sockets.try_event() {
            self.socket_event(ev);
            return true;
        }
        if self.hub.poll_timeout().is_some_and(|t| t <= now()) {
            self.handle(Input::Timeout);
            return true;
        }
        false
    }

    /// Waits for the next message, socket event, timer or abort; false means stop now.
    /// The futures it waits on live as long as the task, so a wait registers nothing new.
    async fn wait(&mut self) -> bool {
        let deadline = [
            self.hub.poll_timeout(),
            self.watch_at,
            self.report_pending
                .then_some(self.last_record + METRICS_EVERY),
        ]
        .into_iter()
        .flatten()
        .map(tokio::time::Instant::from_std)
        .chain(self.sockets.next_deadline())
        .min();
        self.wake.set(deadline);
        let w = &mut self.wake;
        tokio::select! {
            biased;
            _ = w.abort.as_mut() => return false,
            Some(msg) = self.msgs.recv() => self.hub_msg(msg),
            ev = poll_fn(|cx| self.sockets.poll_event(cx)) => self.socket_event(ev),
            _ = w.sleep.as_mut(), if w.armed() => {
                self.wake.fired();
                self.timers_due();
            }
        }
        true
    }

    /// Whatever timer is due: the hub's, the slow-client rule's, a closing socket's.
    fn timers_due(&mut self) {
        let t = now();
        if self.hub.poll_timeout().is_some_and(|at| at <= t) {
            self.handle(Input::Timeout);
        }
        if self.watch_at.is_some_and(|at| at <= t) {
            self.check_watched();
        }
        for (conn, stream) in self.sockets.reap(tokio::time::Instant::now()) {
            // A peer that would not take its last bytes is reset, not waited for.
            if let Conn::Client(id) = conn {
                if let Some(c) = self.client(id) {
                    c.reset.store(true, Ordering::Relaxed);
                }
            }
            drop(stream);
        }
    }

    /// Feeds the hub and carries out what it says.
    fn handle(&mut self, input: Input) {
        self.hub.handle(now(), input);
        self.apply_outputs();
    }

    /// Tells admission, once per handoff count, that this hub has nothing to do.
    fn report_idle(&mut self) {
        let handoffs = self.hub.handoffs();
        if self.idle_reported != Some(handoffs) {
            self.idle_reported = Some(handoffs);
            let _ = self.gate.send(GateMsg::HubIdle {
                hub: self.id,
                handoffs,
            });
        }
    }

    fn hub_msg(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Join(arrival) => self.join(*arrival),
            HubMsg::Adopt {
                login,
                stream,
                rbuf,
                unsent,
                frames,
                node,
            } => {
                let frame_max = login.frame_max();
                let id = self.hub.adopt_upstream(now(), *login, node);
                self.track_upstream(id, frame_max, self.ctx.abort.child_token());
                self.attach_upstream(id, stream, rbuf, unsent);
                self.apply_outputs();
                if !frames.is_empty() {
                    self.handle(Input::UpstreamFrames {
                        upstream: id,
                        frames,
                    });
                }
            }
            HubMsg::Input(input) => {
                if let Input::Reconfigure(_) = input {
                    // A reload: the runtime's own settings too, for what starts from now on.
                    let live = self.ctx.live();
                    self.slow_rule = live.config.slow_rule();
                }
                self.handle(input);
            }
            HubMsg::Dialed { upstream, result } => self.dialed(upstream, result),
            HubMsg::Stop => self.stopping = true,
            HubMsg::Admin(command, reply) => {
                let answer = self.admin(command);
                let _ = reply.send(answer);
            }
        }
    }

    fn join(&mut self, arrival: Arrival) {
        let Arrival {
            hello,
            stream,
            pipelined,
            unsent,
            peer,
            count,
            reset,
            tls,
        } = arrival;
        let log = Box::new(ConnLog {
            peer,
            name: hello.connection_name.clone().unwrap_or_default(),
            tls,
        });
        let frame_max = hello.tune.frame_max;
        let id = self.hub.add_client(now(), *hello);
        let (user, vhost) = (&self.key.user, &self.key.vhost);
        tracing::debug!(%peer, name = %log.name, %user, %vhost, client = %id, "client connected");
        let key = self
            .sockets
            .insert(Conn::Client(id), stream, pipelined, unsent);
        put(
            &mut self.clients,
            id.index(),
            ClientConn {
                id,
                key,
                decoder: FrameDecoder::for_client(frame_max),
                slow: false,
                watch: DrainWatch::default(),
                reset,
                log,
                _count: count,
            },
        );
        if self.congested {
            self.sockets.set_paused(key, true);
        }
        self.apply_outputs();
    }

    fn client(&self, id: ClientId) -> Option<&ClientConn> {
        self.clients
            .get(id.index())
            .and_then(Option::as_ref)
            .filter(|c| c.id == id)
    }

    fn upstream_mut(&mut self, id: UpstreamId) -> Option<&mut UpstreamConn> {
        self.upstreams
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .filter(|u| u.id == id)
    }

    /// Forgets a client: logs its departure; its socket is already closed or closing.
    fn forget_client(&mut self, id: ClientId) -> Option<ClientConn> {
        let c = self.clients.get_mut(id.index())?.take_if(|c| c.id == id)?;
        let l = &c.log;
        let (user, vhost) = (&self.key.user, &self.key.vhost);
        tracing::debug!(peer = %l.peer, name = %l.name, %user, %vhost, client = %id, "client disconnected");
        self.watched.retain(|w| *w != id);
        Some(c)
    }

    fn socket_event(&mut self, ev: SocketEvent<Conn>) {
        match ev {
            SocketEvent::Readable(key, Conn::Client(id)) => {
                let Some(decoder) = self.client(id).map(|c| c.decoder) else {
                    return;
                };
                let (frames, error) = self.decode(key, decoder);
                if !frames.is_empty() {
                    self.handle(Input::ClientFrames { client: id, frames });
                }
                if let Some(error) = error {
                    self.sockets.set_paused(key, true);
                    self.handle(Input::ClientFrameError { client: id, error });
                }
            }
            SocketEvent::Readable(key, Conn::Upstream(id)) => {
                let Some(decoder) = self.upstream_mut(id).map(|u| u.decoder) else {
                    return;
                };
                let (frames, error) = self.decode(key, decoder);
                if !frames.is_empty() {
                    self.handle(Input::UpstreamFrames {
                        upstream: id,
                        frames,
                    });
                }
                if let Some(error) = error {
                    self.sockets.set_paused(key, true);
                    self.handle(Input::UpstreamFrameError {
                        upstream: id,
                        error,
                    });
                }
            }
            SocketEvent::Drained(Conn::Client(id)) => {
                if self.watched.contains(&id) {
                    self.watch(id);
                }
            }
            SocketEvent::Drained(Conn::Upstream(_)) => self.check_congestion(),
            SocketEvent::Closed(Conn::Client(id), _) => {
                if self.forget_client(id).is_some() {
                    self.handle(Input::ClientClosed { client: id });
                }
            }
            SocketEvent::Closed(Conn::Upstream(id), reason) => {
                if self.upstream_mut(id).is_some() {
                    if let Some(s) = self.upstreams.get_mut(id.index()) {
                        s.take();
                    }
                    self.handle(Input::UpstreamClosed {
                        upstream: id,
                        reason,
                    });
                    self.check_congestion();
                }
            }
        }
    }

    /// Splits the whole frames off a socket's read buffer.
    fn decode(
        &mut self,
        key: usize,
        decoder: FrameDecoder,
    ) -> (SmallVec<[Frame; 8]>, Option<warren_core::frame::FrameError>) {
        let mut frames = SmallVec::new();
        let Some(buf) = self.sockets.read_buf(key) else {
            return (frames, None);
        };
        let error = loop {
            match decoder.decode(buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        self.sockets.release_read_buf(key);
        (frames, error)
    }

    /// Writes the output staged during the burst, one vectored write per connection, and
    /// looks at how the clients written to keep up.
    fn flush(&mut self) {
        let mut flushed = std::mem::take(&mut self.flushed);
        self.sockets.flush_staged(&mut flushed);
        for conn in flushed.drain(..) {
            if let Conn::Client(id) = conn {
                self.watch(id);
            }
        }
        self.flushed = flushed;
        self.check_congestion();
    }

    /// Pauses client input while a broker connection's queue is over its high-water mark,
    /// and resumes it once under half of it.
    fn check_congestion(&mut self) {
        let worst = self
            .upstreams
            .iter()
            .flatten()
            .filter_map(|u| u.key)
            .map(|k| self.sockets.queued(k))
            .max()
            .unwrap_or(0);
        let congested = if self.congested {
            worst >= UPSTREAM_HIGH_WATER / 2
        } else {
            worst > UPSTREAM_HIGH_WATER
        };
        if congested != self.congested {
            self.congested = congested;
            for c in self.clients.iter().flatten() {
                self.sockets.set_paused(c.key, congested);
            }
        }
    }

    /// Applies the slow-client rule to `client` now; keeps watching it while it is over the
    /// bound, reports it once it is slow.
    fn watch(&mut self, client: ClientId) {
        let now = now();
        let rule = self.slow_rule;
        let Some(c) = self
            .clients
            .get_mut(client.index())
            .and_then(Option::as_mut)
        else {
            return;
        };
        if c.id != client || c.slow {
            return;
        }
        let queued = self.sockets.queued(c.key);
        if queued <= rule.queue_bytes && !self.watched.contains(&client) {
            return;
        }
        match c
            .watch
            .check(now, queued, self.sockets.written(c.key), &rule)
        {
            Drain::Fine => self.watched.retain(|w| *w != client),
            Drain::WatchUntil(at) => {
                if !self.watched.contains(&client) {
                    self.watched.push(client);
                }
                self.watch_at = Some(self.watch_at.map_or(at, |t| t.min(at)));
            }
            Drain::Slow => {
                c.slow = true;
                self.slow.push(client);
                self.watched.retain(|w| *w != client);
            }
        }
    }

    /// Looks again at every watched client (their sockets may have taken bytes).
    fn check_watched(&mut self) {
        self.watch_at = None;
        for client in std::mem::take(&mut self.watched) {
            self.watch(client);
        }
    }

    /// Carries out the hub's outputs. Bytes are staged per connection and written at the end
    /// of the burst; closes write what is staged first.
    fn apply_outputs(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::ToClient { client, data } => {
                    if let Some(c) = self.client(client).filter(|c| !c.slow) {
                        self.sockets.stage(c.key, data);
                    }
                }
                Output::CloseClient { client } => {
                    let Some(c) = self.forget_client(client) else {
                        continue;
                    };
                    if c.slow {
                        // It does not read: waiting for a flush would wait forever.
                        c.reset.store(true, Ordering::Relaxed);
                        self.sockets.take(c.key);
                    } else {
                        self.sockets.close(c.key);
                    }
                }
                Output::ToUpstream { upstream, data } => {
                    // The hub writes to a broker connection only once it is connected.
                    if let Some(key) = self.upstream_mut(upstream).and_then(|u| u.key) {
                        self.sockets.stage(key, data);
                    }
                }
                Output::CloseUpstream { upstream } => {
                    let Some(u) = self
                        .upstreams
                        .get_mut(upstream.index())
                        .and_then(|s| s.take_if(|u| u.id == upstream))
                    else {
                        continue;
                    };
                    match u.key {
                        Some(key) => self.sockets.close(key),
                        None => u.cancel.cancel(),
                    }
                }
                Output::Dial {
                    upstream,
                    nodes,
                    frame_max,
                } => self.dial(upstream, nodes, frame_max),
                Output::Event(e) => self.event(e),
            }
        }
    }

    fn event(&mut self, e: HubEvent) {
        let user = &self.key.user;
        let vhost = &self.key.vhost;
        match e {
            HubEvent::UpstreamOpen {
                upstream,
                channel_max,
                frame_max,
                heartbeat,
            } => {
                tracing::info!(%upstream, %user, %vhost, channel_max, frame_max, heartbeat, "upstream connected")
            }
            HubEvent::UpstreamFailed { upstream, reply } => {
                tracing::warn!(%upstream, %user, %vhost, code = reply.code, text = %reply.text, "upstream connection failed");
            }
            HubEvent::UpstreamLost { upstream, reply } => {
                tracing::warn!(%upstream, %user, %vhost, code = reply.code, text = %reply.text, "upstream connection lost")
            }
            HubEvent::AuthRejected { reply } => {
                let _ = self.gate.send(GateMsg::HubRefused {
                    hub: self.id,
                    reply,
                });
            }
            HubEvent::ClientClosed { client, reply } => {
                tracing::info!(%client, %user, %vhost, code = reply.code, text = %reply.text, "closing client")
            }
            HubEvent::SlowClient { client } => {
                tracing::warn!(%client, %user, %vhost, "client is not reading its deliveries; disconnecting it")
            }
            HubEvent::HeartbeatMissed { peer } => match peer {
                Peer::Client(c) => {
                    tracing::info!(client = %c, %user, %vhost, "client missed heartbeats")
                }
                Peer::Upstream(u) => {
                    tracing::warn!(upstream = %u, %user, %vhost, "broker missed heartbeats")
                }
            },
            HubEvent::ReconnectScheduled { at, failures } => {
                let delay = at.saturating_duration_since(now());
                tracing::info!(%user, %vhost, failures, ?delay, "reconnecting to the broker later");
            }
            HubEvent::Redialling { upstream } => {
                tracing::info!(%upstream, %user, %vhost, "redialling the broker as an operator asked")
            }
            // Per-client lines are debug: at info they cost two write syscalls per connection.
            HubEvent::ClientAdmitted { client } => {
                tracing::debug!(%client, %user, %vhost, "client admitted")
            }
            HubEvent::ClientLeft { client } => {
                tracing::debug!(%client, %user, %vhost, "client left")
            }
        }
    }

    /// Dials the broker for `id` (TCP, then TLS if configured; the nodes in the hub's order)
    /// in a connect task; its frames will be decoded under `frame_max`.
    fn dial(&mut self, id: UpstreamId, nodes: NodeOrder, frame_max: u32) {
        let cancel = self.ctx.abort.child_token();
        self.track_upstream(id, frame_max, cancel.clone());
        let (ctx, tx) = (self.ctx.clone(), self.dial_tx.clone());
        tokio::spawn(async move {
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = ctx.connect_upstream(&nodes) => r,
            };
            let _ = tx.send(HubMsg::Dialed {
                upstream: id,
                result,
            });
        });
    }

    /// A dial finished: its socket joins the set, or the hub hears why not.
    fn dialed(&mut self, upstream: UpstreamId, result: Result<(BoxStream, usize), String>) {
        if self.upstream_mut(upstream).is_none() {
            return;
        }
        match result {
            Ok((stream, node)) => {
                self.attach_upstream(upstream, stream, BytesMut::new(), Unsent::new());
                self.handle(Input::UpstreamConnected { upstream, node });
            }
            Err(reason) => {
                if let Some(s) = self.upstreams.get_mut(upstream.index()) {
                    s.take();
                }
                self.handle(Input::UpstreamClosed { upstream, reason });
            }
        }
    }

    /// Starts tracking upstream `id`, whose frames are decoded under `frame_max` (core's
    /// [`warren_core::login::Login::frame_max`]); it has no socket until
    /// [`Self::attach_upstream`].
    fn track_upstream(&mut self, id: UpstreamId, frame_max: u32, cancel: CancellationToken) {
        put(
            &mut self.upstreams,
            id.index(),
            UpstreamConn {
                id,
                key: None,
                decoder: FrameDecoder::new(frame_max),
                cancel,
                local_port: None,
            },
        );
    }

    /// Gives tracked upstream `id` its socket in the set.
    fn attach_upstream(
        &mut self,
        id: UpstreamId,
        stream: BoxStream,
        rbuf: BytesMut,
        unsent: Unsent,
    ) {
        let key = self
            .sockets
            .insert(Conn::Upstream(id), stream, rbuf, unsent);
        if let Some(u) = self.upstream_mut(id) {
            u.key = Some(key);
        }
    }

    /// Copies counters into metrics (at most every [`METRICS_EVERY`], or now if `finished`)
    /// and updates readiness.
    fn report(&mut self, finished: bool) {
        let t = now();
        if !finished && t.duration_since(self.last_record) < METRICS_EVERY {
            // Copied when `wait` wakes for it, so an idle hub's metrics are not stale.
            self.report_pending = self.hub.stats() != &self.last_stats;
            return;
        }
        self.report_pending = false;
        self.last_record = t;
        let stats = self.hub.stats().clone();
        self.metrics.record(&self.last_stats, &stats);
        self.last_stats = stats;
        if finished {
            self.metrics.set_gauges(0, 0, 0, 0);
        } else {
            self.metrics.set_gauges(
                self.hub.client_count(),
                self.hub.upstream_count(),
                self.hub.channels_in_use(),
                self.hub.pooled_channels(),
            );
        }
        let open = !finished && self.hub.has_open_upstream();
        let unreachable = !finished && self.hub.is_unreachable() && !open;
        let readiness = &self.ctx.admin.readiness;
        if open != self.ready_open {
            readiness.add_upstreams_open(if open { 1 } else { -1 });
            self.ready_open = open;
        }
        if unreachable != self.ready_unreachable {
            readiness.add_hubs_unreachable(if unreachable { 1 } else { -1 });
            self.ready_unreachable = unreachable;
        }
    }
}

/// Who a client is, for its log lines and the admin API.
struct ConnLog {
    peer: SocketAddr,
    name: String,
    tls: bool,
}

impl<N: Network> HubTask<N> {
    /// Carries out an admin API command and describes the hub after it.
    fn admin(&mut self, command: HubCommand) -> HubAnswer {
        use warren_core::reply::{Reply, CONNECTION_FORCED};
        let mut closed = Vec::new();
        match command {
            HubCommand::Describe => {}
            HubCommand::Input(input) => {
                tracing::info!(hub = %self.id, user = %self.key.user, vhost = %self.key.vhost, command = ?input, "operator command");
                self.handle(*input);
            }
            HubCommand::Close {
                client,
                name,
                reason,
            } => {
                let targets: Vec<ClientId> = match client {
                    Some(number) => self.hub.find_client(number).into_iter().collect(),
                    None => self
                        .clients
                        .iter()
                        .flatten()
                        .filter(|c| name.as_ref().is_none_or(|n| *n == c.log.name))
                        .map(|c| c.id)
                        .collect(),
                };
                for id in targets {
                    closed.push(format!("{}-{id}", self.id));
                    tracing::info!(client = %id, hub = %self.id, %reason, "closing client for an operator");
                    self.handle(Input::CloseClient {
                        client: id,
                        reply: Reply::new(CONNECTION_FORCED, &reason),
                    });
                }
            }
        }
        self.flush();
        self.describe(closed)
    }

    /// The hub, its clients and upstreams as the admin API prints them.
    fn describe(&self, closed: Vec<String>) -> HubAnswer {
        use serde_json::json;
        let snap = self.hub.snapshot();
        let t = now();
        let wall = std::time::SystemTime::now();
        let at = |i: Instant| {
            let ago = t.saturating_duration_since(i);
            humantime::format_rfc3339_seconds(wall - ago).to_string()
        };
        let live = self.ctx.live();
        let urls = live.config.upstream.urls();
        let hub = self.id;
        let (user, vhost) = (&self.key.user, &self.key.vhost);
        let clients = snap
            .clients
            .iter()
            .map(|c| {
                let conn = self.client(c.id);
                json!({
                    "id": format!("{hub}-{}", c.id),
                    "hub": hub.to_string(),
                    "user": user,
                    "vhost": vhost,
                    "peer": conn.map(|x| x.log.peer.to_string()),
                    "tls": conn.is_some_and(|x| x.log.tls),
                    "connection_name": c.connection_name,
                    "product": c.product,
                    "version": c.version,
                    "state": c.phase,
                    "channels": c.channels,
                    "frames_in": c.frames_in,
                    "frames_out": c.frames_out,
                    "bytes_in": c.bytes_in,
                    "bytes_out": c.bytes_out,
                    "connected_at": at(c.since),
                    "last_activity_at": at(c.last_activity),
                    "idle_seconds": t.saturating_duration_since(c.last_activity).as_secs(),
                })
            })
            .collect::<Vec<_>>();
        let upstreams = snap
            .upstreams
            .iter()
            .map(|u| {
                json!({
                    "id": format!("{hub}-{}", u.id),
                    "hub": hub.to_string(),
                    "user": user,
                    "vhost": vhost,
                    "node": u.node,
                    "address": u.node.and_then(|n| urls.get(n)).map(|url| format!("{}:{}", url.host, url.port)),
                    "local_port": self.upstream_local_port(u.id),
                    "state": u.phase,
                    "channels": u.channels,
                    "channel_max": u.channel_max,
                    "heartbeat": u.heartbeat,
                    "blocked": u.blocked.is_some(),
                    "blocked_reason": u.blocked,
                    "since": at(u.since),
                })
            })
            .collect::<Vec<_>>();
        let summary = json!({
            "state": snap.state.as_str(),
            "paused": snap.paused,
            "clients": snap.clients.len(),
            "upstreams": snap.upstreams.len(),
            "channels_in_use": snap.channels_in_use,
            "channels_pooled": snap.channels_pooled,
            "waiting": snap.waiting,
        });
        HubAnswer {
            hub: summary,
            clients,
            upstreams,
            closed,
        }
    }

    /// The local port of an upstream's socket, when the network tells it.
    fn upstream_local_port(&self, id: UpstreamId) -> Option<u16> {
        self.upstreams
            .get(id.index())
            .and_then(Option::as_ref)
            .filter(|u| u.id == id)
            .and_then(|u| u.local_port)
    }
}
