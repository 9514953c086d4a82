//! One task per hub: it owns the core `Hub`, takes the clients and broker connections
//! admission hands it, feeds it what client and upstream tasks report, carries out its
//! outputs, and dials the broker when asked.
//!
//! The hub never waits on a socket. Output goes into per-connection queues; a client that
//! stops draining its queue is reported slow (B9, the rule of `warren_core::hub::slow`). When an upstream's queue passes its high
//! water mark the task stops taking client input until it drains, so publishers feel TCP
//! backpressure instead of growing warren's memory.

use crate::conn::{read_frames, spawn_writer, BoxStream, ReadEnd, Sink};
use crate::gate::{put, GateMsg, Unsent};
use crate::metrics::HubMetrics;
use crate::net::Network;
use crate::server::{now, ClientCount, Ctx};
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warren_core::admission::HubId;
use warren_core::credentials::Credentials;
use warren_core::frame::{Frame, FrameDecoder};
use warren_core::handshake::ClientHello;
use warren_core::hub::slow::{Drain, DrainWatch, SlowRule};
use warren_core::hub::{ClientId, Hub, HubEvent, HubStats, Input, Output, Peer, UpstreamId};
use warren_core::login::Login;

/// Bytes queued towards one upstream above which client input pauses.
const UPSTREAM_HIGH_WATER: usize = 16 * 1024 * 1024;
/// Inputs buffered between connection readers and the hub task.
const INPUT_QUEUE: usize = 1024;
/// How often counters are copied into the metrics registry.
const METRICS_EVERY: Duration = Duration::from_millis(250);
/// Inputs handled back to back before queued output is handed to the writers.
const MAX_BURST: usize = 128;
/// Staged output up to this size is copied into one buffer, so a burst of small frames costs
/// one queue operation and one iovec; larger output keeps its buffers (no copy of big bodies).
const COALESCE_MAX: usize = 64 * 1024;

/// What admission hands a hub task.
pub(crate) enum HubMsg {
    /// A client that reached `Connection.Open`.
    Join(Box<Arrival>),
    /// A broker connection admission logged in and opened (see
    /// [`warren_core::admission::Output::AdoptLink`]).
    Adopt {
        login: Box<Login>,
        stream: BoxStream,
        /// Bytes read past the frames below.
        rbuf: BytesMut,
        /// Bytes admission queued and the socket had not taken yet.
        unsent: Unsent,
        /// Frames read after `OpenOk`.
        frames: SmallVec<[Frame; 8]>,
        /// The node of the upstream list it reached.
        node: usize,
    },
    /// An input from admission (closing every client of a revoked user or vhost).
    Input(Input),
    /// Nothing is on its way any more: stop once idle.
    Stop,
}

/// A client handed to its hub, with its socket.
pub(crate) struct Arrival {
    pub(crate) hello: Box<ClientHello>,
    pub(crate) stream: BoxStream,
    /// Bytes the client sent after `Connection.Open`.
    pub(crate) pipelined: BytesMut,
    /// Handshake bytes the socket had not taken yet.
    pub(crate) unsent: Unsent,
    pub(crate) peer: SocketAddr,
    pub(crate) count: ClientCount,
    pub(crate) reset: Arc<AtomicBool>,
}

/// Messages from upstream connection tasks.
#[allow(clippy::large_enum_variant)] // Frame batches are the common case; boxing them would allocate per read.
enum UpstreamMsg {
    /// The dial succeeded.
    Connected {
        upstream: UpstreamId,
        /// The node of the upstream list it reached.
        node: usize,
        stream: BoxStream,
    },
    /// Anything else, for the core hub.
    Input(Input),
}

struct ClientSlot {
    id: ClientId,
    sink: Sink,
    done: CancellationToken,
    slow: bool,
    staged: Staged,
    /// Its progress while more than `client_queue_bytes` wait for it.
    watch: DrainWatch,
}

struct UpstreamSlot {
    id: UpstreamId,
    sink: Option<Sink>,
    cancel: CancellationToken,
    staged: Staged,
}

/// Output produced during a burst of inputs, handed to the writer in one go.
#[derive(Default)]
struct Staged {
    bufs: Vec<Bytes>,
    len: usize,
}

impl Staged {
    /// Adds a buffer; returns true if this made the stage non-empty.
    fn push(&mut self, b: Bytes) -> bool {
        self.len += b.len();
        self.bufs.push(b);
        self.bufs.len() == 1
    }

    /// Hands everything to `sink`: small bursts as one coalesced buffer.
    fn flush_into(&mut self, sink: &Sink) {
        let len = std::mem::take(&mut self.len);
        match self.bufs.len() {
            0 => {}
            1 => {
                sink.send(self.bufs.pop().unwrap_or_default());
            }
            _ if len <= COALESCE_MAX => {
                let mut one = BytesMut::with_capacity(len);
                for b in self.bufs.drain(..) {
                    one.extend_from_slice(&b);
                }
                sink.send(one.freeze());
            }
            _ => {
                for b in self.bufs.drain(..) {
                    sink.send(b);
                }
            }
        }
    }
}

/// What the next ready message turned out to be.
#[allow(clippy::large_enum_variant)] // Short-lived, on the stack; inputs are the common case.
enum Step {
    /// An input for the core hub.
    Input(Input),
    /// Something handled by the task itself (a join, a finished dial).
    Handled,
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
    let (client_tx, client_rx) = mpsc::channel(INPUT_QUEUE);
    let (upstream_tx, upstream_rx) = mpsc::channel(INPUT_QUEUE);
    let task = HubTask {
        ctx: ctx.clone(),
        hub: *hub,
        key,
        id,
        msgs: msg_rx,
        gate,
        idle_reported: None,
        stopping: false,
        client_tx,
        client_rx,
        upstream_tx,
        upstream_rx,
        clients: Vec::new(),
        upstreams: Vec::new(),
        dirty_clients: Vec::new(),
        dirty_upstreams: Vec::new(),
        upstream_nodes: Vec::new(),
        slow: Vec::new(),
        slow_rule: ctx.config.slow_rule(),
        watched: Vec::new(),
        watch_at: None,
        metrics,
        last_stats: HubStats::default(),
        last_record: now(),
        report_pending: false,
        draining: false,
        ready_open: false,
        ready_unreachable: false,
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
    /// The handoff count last reported idle with, so it is reported once.
    idle_reported: Option<u64>,
    /// Admission said nothing more is coming.
    stopping: bool,
    client_tx: mpsc::Sender<Input>,
    client_rx: mpsc::Receiver<Input>,
    upstream_tx: mpsc::Sender<UpstreamMsg>,
    upstream_rx: mpsc::Receiver<UpstreamMsg>,
    clients: Vec<Option<ClientSlot>>,
    upstreams: Vec<Option<UpstreamSlot>>,
    /// Slots with staged output, flushed at the end of a burst.
    dirty_clients: Vec<usize>,
    dirty_upstreams: Vec<usize>,
    /// Which node of the upstream list each connected upstream reached; outlives the slot,
    /// so that a failure reported after the close still names its node.
    upstream_nodes: Vec<Option<(UpstreamId, usize)>>,
    slow: Vec<ClientId>,
    /// The slow-client rule, and the clients it watches with the earliest time to look again.
    slow_rule: SlowRule,
    watched: Vec<ClientId>,
    watch_at: Option<Instant>,
    metrics: HubMetrics,
    last_stats: HubStats,
    last_record: Instant,
    /// Counters changed since the last copy into metrics, which was too recent to repeat.
    report_pending: bool,
    draining: bool,
    ready_open: bool,
    ready_unreachable: bool,
}

impl<N: Network> HubTask<N> {
    async fn run(mut self) {
        let mut burst = 0;
        loop {
            self.apply_outputs();
            while let Some(client) = self.slow.pop() {
                self.hub.handle(now(), Input::ClientSlow { client });
                self.apply_outputs();
            }
            burst += 1;
            let step = match self.next_ready(burst) {
                Some(step) => step,
                None => {
                    burst = 0;
                    self.flush();
                    self.report(false);
                    if self.hub.is_finished() {
                        if self.stopping {
                            break;
                        }
                        self.report_idle();
                    }
                    match self.wait().await {
                        Some(step) => step,
                        None => break,
                    }
                }
            };
            match step {
                Step::Input(input) => self.hub.handle(now(), input),
                Step::Handled => {}
            }
        }
        self.flush();
        for slot in self.upstreams.iter().flatten() {
            slot.cancel.cancel();
        }
        self.report(true);
    }

    /// The next message that is ready without waiting, unless the burst is over.
    fn next_ready(&mut self, burst: usize) -> Option<Step> {
        if burst >= MAX_BURST {
            return None;
        }
        if let Ok(msg) = self.msgs.try_recv() {
            return Some(self.hub_msg(msg));
        }
        if let Ok(msg) = self.upstream_rx.try_recv() {
            return Some(self.upstream_msg(msg));
        }
        if self.congested_upstream().is_none() {
            if let Ok(input) = self.client_rx.try_recv() {
                return Some(Step::Input(input));
            }
        }
        let due = self.hub.poll_timeout().is_some_and(|t| t <= now());
        due.then_some(Step::Input(Input::Timeout))
    }

    /// Waits for the next message, timer, drain or abort; `None` means stop now.
    async fn wait(&mut self) -> Option<Step> {
        let timeout = self.hub.poll_timeout().map(tokio::time::Instant::from_std);
        let report_at = self
            .report_pending
            .then(|| tokio::time::Instant::from_std(self.last_record + METRICS_EVERY));
        let congested = self.congested_upstream();
        let watch_at = self.watch_at.map(tokio::time::Instant::from_std);
        let step = tokio::select! {
            biased;
            _ = self.ctx.abort.cancelled() => return None,
            _ = self.ctx.drain.cancelled(), if !self.draining => {
                self.draining = true;
                Step::Input(Input::Drain { deadline: now() + self.ctx.config.drain_timeout })
            }
            Some(msg) = self.msgs.recv() => self.hub_msg(msg),
            Some(msg) = self.upstream_rx.recv() => self.upstream_msg(msg),
            Some(input) = self.client_rx.recv(), if congested.is_none() => Step::Input(input),
            _ = wait_drained(congested.clone()), if congested.is_some() => Step::Handled,
            _ = tokio::time::sleep_until(timeout.unwrap_or_else(tokio::time::Instant::now)), if timeout.is_some() => {
                Step::Input(Input::Timeout)
            }
            _ = tokio::time::sleep_until(report_at.unwrap_or_else(tokio::time::Instant::now)), if report_at.is_some() => {
                Step::Handled
            }
            _ = tokio::time::sleep_until(watch_at.unwrap_or_else(tokio::time::Instant::now)), if watch_at.is_some() => {
                self.check_watched();
                Step::Handled
            }
        };
        Some(step)
    }

    fn upstream_msg(&mut self, msg: UpstreamMsg) -> Step {
        match msg {
            UpstreamMsg::Connected {
                upstream,
                node,
                stream,
            } => match self.upstream_slot(upstream) {
                Some(_) => {
                    self.attach_upstream(upstream, stream, BytesMut::new(), Unsent::new(), node);
                    Step::Input(Input::UpstreamConnected { upstream })
                }
                None => Step::Handled,
            },
            UpstreamMsg::Input(i) => Step::Input(i),
        }
    }

    /// Hands staged output to the writers.
    fn flush(&mut self) {
        for i in self.dirty_clients.drain(..) {
            if let Some(slot) = self.clients.get_mut(i).and_then(Option::as_mut) {
                slot.staged.flush_into(&slot.sink);
            }
        }
        for i in self.dirty_upstreams.drain(..) {
            if let Some(slot) = self.upstreams.get_mut(i).and_then(Option::as_mut) {
                if let Some(sink) = &slot.sink {
                    slot.staged.flush_into(sink);
                }
            }
        }
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

    fn hub_msg(&mut self, msg: HubMsg) -> Step {
        match msg {
            HubMsg::Join(arrival) => {
                self.join(*arrival);
                Step::Handled
            }
            HubMsg::Adopt {
                login,
                stream,
                rbuf,
                unsent,
                frames,
                node,
            } => {
                let id = self.hub.adopt_upstream(now(), *login);
                self.attach_upstream(id, stream, rbuf, unsent, node);
                self.apply_outputs();
                if frames.is_empty() {
                    Step::Handled
                } else {
                    Step::Input(Input::UpstreamFrames {
                        upstream: id,
                        frames,
                    })
                }
            }
            HubMsg::Input(input) => Step::Input(input),
            HubMsg::Stop => {
                self.stopping = true;
                Step::Handled
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
        } = arrival;
        let log = Box::new(ConnLog {
            peer,
            name: hello.connection_name.clone().unwrap_or_default(),
            user: self.key.user.clone(),
            vhost: self.key.vhost.clone(),
        });
        let frame_max = hello.tune.frame_max;
        let id = self.hub.add_client(now(), *hello);
        let (user, vhost) = (&self.key.user, &self.key.vhost);
        tracing::info!(%peer, name = %log.name, %user, %vhost, client = %id, "client connected");
        let done = self.ctx.abort.child_token();
        let (r, w) = tokio::io::split(stream);
        let sink = spawn_writer(w, done.clone(), Some(reset), 0);
        for b in unsent {
            sink.send(b);
        }
        put(
            &mut self.clients,
            id.index(),
            ClientSlot {
                id,
                sink,
                done: done.clone(),
                slow: false,
                staged: Staged::default(),
                watch: DrainWatch::default(),
            },
        );
        let reader = Reader {
            r,
            buf: pipelined,
            frame_max,
            client: id,
            inputs: self.client_tx.clone(),
            done,
            log,
            _count: count,
        };
        self.ctx.tracker.spawn(reader.run());
    }

    /// Applies the slow-client rule to `client` now; keeps watching it while it is over the
    /// bound, reports it once it is slow.
    fn watch(&mut self, client: ClientId) {
        let now = now();
        let Some(slot) = self
            .clients
            .get_mut(client.index())
            .and_then(Option::as_mut)
            .filter(|s| s.id == client && !s.slow)
        else {
            return;
        };
        let queued = slot.sink.queued() + slot.staged.len;
        let verdict = slot
            .watch
            .check(now, queued, slot.sink.written(), &self.slow_rule);
        match verdict {
            Drain::Fine => self.watched.retain(|c| *c != client),
            Drain::WatchUntil(at) => {
                if !self.watched.contains(&client) {
                    self.watched.push(client);
                }
                self.watch_at = Some(self.watch_at.map_or(at, |t| t.min(at)));
            }
            Drain::Slow => {
                slot.slow = true;
                self.slow.push(client);
                self.watched.retain(|c| *c != client);
            }
        }
    }

    /// Looks again at every watched client (their writers may have made progress).
    fn check_watched(&mut self) {
        self.watch_at = None;
        for client in std::mem::take(&mut self.watched) {
            self.watch(client);
        }
    }

    fn upstream_slot(&mut self, id: UpstreamId) -> Option<&mut UpstreamSlot> {
        self.upstreams
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .filter(|s| s.id == id)
    }

    fn congested_upstream(&self) -> Option<Sink> {
        self.upstreams
            .iter()
            .flatten()
            .filter_map(|s| s.sink.as_ref())
            .find(|s| s.queued() > UPSTREAM_HIGH_WATER)
            .cloned()
    }

    /// Carries out the hub's outputs. Bytes are staged per connection and handed to the
    /// writers at the end of the burst; closes flush what is staged first.
    fn apply_outputs(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::ToClient { client, data } => {
                    let i = client.index();
                    let Some(slot) = self
                        .clients
                        .get_mut(i)
                        .and_then(Option::as_mut)
                        .filter(|s| s.id == client)
                    else {
                        continue;
                    };
                    if slot.staged.push(data) {
                        self.dirty_clients.push(i);
                    }
                    if !slot.slow
                        && slot.sink.queued() + slot.staged.len > self.slow_rule.queue_bytes
                    {
                        self.watch(client);
                    }
                }
                Output::CloseClient { client } => {
                    if let Some(s) = self.clients.get_mut(client.index()) {
                        if let Some(mut slot) = s.take_if(|s| s.id == client) {
                            if slot.slow {
                                // It does not read: waiting for a flush would wait forever.
                                slot.done.cancel();
                            } else {
                                // Dropping the sink lets the writer flush, then close the socket.
                                slot.staged.flush_into(&slot.sink);
                            }
                        }
                    }
                }
                Output::ToUpstream { upstream, data } => {
                    let i = upstream.index();
                    if let Some(slot) = self.upstream_slot(upstream) {
                        if slot.staged.push(data) {
                            self.dirty_upstreams.push(i);
                        }
                    }
                }
                Output::CloseUpstream { upstream } => {
                    if let Some(s) = self.upstreams.get_mut(upstream.index()) {
                        if let Some(mut slot) = s.take_if(|s| s.id == upstream) {
                            match &slot.sink {
                                Some(sink) => slot.staged.flush_into(sink),
                                None => slot.cancel.cancel(),
                            }
                        }
                    }
                }
                Output::Dial { upstream } => self.dial(upstream),
                Output::Event(e) => self.event(e),
                _ => {}
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
                let refused = reply.refuses_login();
                let node = self
                    .upstream_nodes
                    .get(upstream.index())
                    .copied()
                    .flatten()
                    .filter(|(id, _)| *id == upstream)
                    .map(|(_, node)| node);
                if let (Some(node), false) = (node, refused) {
                    self.ctx.node_failed(node);
                }
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
            other => tracing::debug!(event = ?other, %user, %vhost, "hub event"),
        }
    }

    /// Dials the broker for `id`: TCP, then TLS if configured; the stream comes back as
    /// [`UpstreamMsg::Connected`].
    fn dial(&mut self, id: UpstreamId) {
        let cancel = self.ctx.abort.child_token();
        put(
            &mut self.upstreams,
            id.index(),
            UpstreamSlot {
                id,
                sink: None,
                cancel: cancel.clone(),
                staged: Staged::default(),
            },
        );
        let ctx = self.ctx.clone();
        let tx = self.upstream_tx.clone();
        tokio::spawn(async move {
            let msg = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = ctx.connect_upstream() => match r {
                    Ok((stream, node)) => UpstreamMsg::Connected { upstream: id, node, stream },
                    Err(reason) => UpstreamMsg::Input(Input::UpstreamClosed { upstream: id, reason }),
                },
            };
            let _ = tx.send(msg).await;
        });
    }

    /// Gives upstream `id` its socket: a writer fed by the hub and a reader feeding it.
    fn attach_upstream(
        &mut self,
        id: UpstreamId,
        stream: BoxStream,
        rbuf: BytesMut,
        unsent: Unsent,
        node: usize,
    ) {
        let cancel = match self.upstream_slot(id) {
            Some(slot) => slot.cancel.clone(),
            None => {
                let cancel = self.ctx.abort.child_token();
                put(
                    &mut self.upstreams,
                    id.index(),
                    UpstreamSlot {
                        id,
                        sink: None,
                        cancel: cancel.clone(),
                        staged: Staged::default(),
                    },
                );
                cancel
            }
        };
        let (mut r, w) = tokio::io::split(stream);
        let sink = spawn_writer(w, cancel.clone(), None, UPSTREAM_HIGH_WATER / 2);
        for b in unsent {
            sink.send(b);
        }
        if let Some(slot) = self.upstream_slot(id) {
            slot.sink = Some(sink);
        }
        put(&mut self.upstream_nodes, id.index(), (id, node));
        let tx = self.upstream_tx.clone();
        let decoder = FrameDecoder::new(self.ctx.config.frame_max);
        tokio::spawn(async move {
            let end = read_frames(&mut r, rbuf, decoder, &cancel, |frames| {
                let tx = tx.clone();
                async move {
                    tx.send(UpstreamMsg::Input(Input::UpstreamFrames {
                        upstream: id,
                        frames,
                    }))
                    .await
                    .is_ok()
                }
            })
            .await;
            let input = match end {
                ReadEnd::Closed(reason) => Input::UpstreamClosed {
                    upstream: id,
                    reason,
                },
                ReadEnd::Frame(error) => Input::UpstreamFrameError {
                    upstream: id,
                    error,
                },
                // The writer ended first: a write failed because the broker went away, or
                // the hub closed this upstream (then it ignores the news).
                ReadEnd::Cancelled => Input::UpstreamClosed {
                    upstream: id,
                    reason: "the connection broke while warren was writing to it".into(),
                },
            };
            let _ = tx.send(UpstreamMsg::Input(input)).await;
        });
    }

    /// Copies counters into metrics (at most every [`METRICS_EVERY`], or now if `force`)
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

/// Resolves when the congested upstream queue has drained.
async fn wait_drained(sink: Option<Sink>) {
    if let Some(s) = sink {
        s.drained_below(UPSTREAM_HIGH_WATER).await;
    }
}

/// Who a connection is, for its log lines.
struct ConnLog {
    peer: SocketAddr,
    name: String,
    user: String,
    vhost: String,
}

/// An admitted client's reader: what the long-lived task needs and nothing more, so an idle
/// client costs little memory (P6).
struct Reader {
    r: tokio::io::ReadHalf<BoxStream>,
    buf: BytesMut,
    frame_max: u32,
    client: warren_core::hub::ClientId,
    inputs: tokio::sync::mpsc::Sender<Input>,
    done: CancellationToken,
    log: Box<ConnLog>,
    _count: ClientCount,
}

impl Reader {
    /// Reads the client's frames into its hub until the socket or the hub ends it.
    async fn run(mut self) {
        let (client, inputs) = (self.client, &self.inputs);
        let decoder = FrameDecoder::new(self.frame_max);
        let end = read_frames(&mut self.r, self.buf, decoder, &self.done, |frames| {
            // Boxed so the reader's idle state does not carry a whole batch.
            Box::pin(async move {
                inputs
                    .send(Input::ClientFrames { client, frames })
                    .await
                    .is_ok()
            })
        })
        .await;
        match end {
            ReadEnd::Closed(_) => {
                let _ = inputs.send(Input::ClientClosed { client }).await;
            }
            ReadEnd::Frame(error) => {
                let _ = inputs.send(Input::ClientFrameError { client, error }).await;
                // The hub answers with Connection.Close and closes the socket when done.
                self.done.cancelled().await;
            }
            // The writer ended first: a write failed (the peer vanished), or warren closed
            // the connection. The hub must hear of the first; it ignores the second.
            ReadEnd::Cancelled => {
                let _ = inputs.send(Input::ClientClosed { client }).await;
            }
        }
        let l = &self.log;
        tracing::info!(peer = %l.peer, name = %l.name, user = %l.user, vhost = %l.vhost, %client, "client disconnected");
    }
}
