//! One task per hub: it owns the core `Hub`, feeds it what client and upstream tasks
//! report, carries out its outputs, and dials the broker when asked.
//!
//! The hub never waits on a socket. Output goes into per-connection queues; a client whose
//! queue passes its bound is reported slow (B9). When an upstream's queue passes its high
//! water mark the task stops taking client input until it drains, so publishers feel TCP
//! backpressure instead of growing warren's memory.

use crate::conn::{read_frames, spawn_writer, ReadEnd, Sink};
use crate::metrics::HubMetrics;
use crate::net::Network;
use crate::registry::Join;
use crate::server::{now, Ctx};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warren_core::credentials::Credentials;
use warren_core::frame::FrameDecoder;
use warren_core::hub::{ClientId, Hub, HubEvent, HubStats, Input, Output, Peer, UpstreamId};

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

/// What a client gets back when its hub takes it in.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) client: ClientId,
    pub(crate) inputs: mpsc::Sender<Input>,
}

/// Messages from upstream connection tasks.
#[allow(clippy::large_enum_variant)] // Frame batches are the common case; boxing them would allocate per read.
enum UpstreamMsg {
    /// The dial succeeded; frames will follow.
    Ready {
        upstream: UpstreamId,
        /// The node of the upstream list it reached.
        node: usize,
        sink: Sink,
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

/// Starts the task for the hub of `key`; returns the channel that takes joins.
pub(crate) fn spawn_hub<N: Network>(
    ctx: Arc<Ctx<N>>,
    key: Credentials,
    id: u64,
) -> mpsc::UnboundedSender<Join> {
    let (join_tx, join_rx) = mpsc::unbounded_channel();
    let seed = ctx.seed ^ id;
    let hub = Hub::new(ctx.hub_config.clone(), key.clone(), seed);
    let metrics = ctx.metrics.hub(&key.user, &key.vhost);
    let (client_tx, client_rx) = mpsc::channel(INPUT_QUEUE);
    let (upstream_tx, upstream_rx) = mpsc::channel(INPUT_QUEUE);
    let task = HubTask {
        ctx: ctx.clone(),
        hub,
        key,
        id,
        joins: join_rx,
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
        metrics,
        last_stats: HubStats::default(),
        last_record: now(),
        report_pending: false,
        draining: false,
        ready_open: false,
        ready_unreachable: false,
    };
    ctx.tracker.spawn(task.run());
    join_tx
}

struct HubTask<N: Network> {
    ctx: Arc<Ctx<N>>,
    hub: Hub,
    key: Credentials,
    id: u64,
    joins: mpsc::UnboundedReceiver<Join>,
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
                    if self.hub.is_finished()
                        && self.ctx.registry.retire(
                            &self.key,
                            self.id,
                            &mut self.joins,
                            &self.ctx.metrics,
                        )
                    {
                        break;
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
        if let Ok(join) = self.joins.try_recv() {
            self.join(join);
            return Some(Step::Handled);
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
        let step = tokio::select! {
            biased;
            _ = self.ctx.abort.cancelled() => return None,
            _ = self.ctx.drain.cancelled(), if !self.draining => {
                self.draining = true;
                Step::Input(Input::Drain { deadline: now() + self.ctx.config.drain_timeout })
            }
            Some(join) = self.joins.recv() => {
                self.join(join);
                Step::Handled
            }
            Some(msg) = self.upstream_rx.recv() => self.upstream_msg(msg),
            Some(input) = self.client_rx.recv(), if congested.is_none() => Step::Input(input),
            _ = wait_drained(congested.clone()), if congested.is_some() => Step::Handled,
            _ = tokio::time::sleep_until(timeout.unwrap_or_else(tokio::time::Instant::now)), if timeout.is_some() => {
                Step::Input(Input::Timeout)
            }
            _ = tokio::time::sleep_until(report_at.unwrap_or_else(tokio::time::Instant::now)), if report_at.is_some() => {
                Step::Handled
            }
        };
        Some(step)
    }

    fn upstream_msg(&mut self, msg: UpstreamMsg) -> Step {
        match msg {
            UpstreamMsg::Ready {
                upstream,
                node,
                sink,
            } => match self.upstream_slot(upstream) {
                Some(slot) => {
                    slot.sink = Some(sink);
                    put(&mut self.upstream_nodes, upstream.index(), (upstream, node));
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

    fn join(&mut self, join: Join) {
        let Join {
            hello,
            sink,
            done,
            reply,
        } = join;
        let id = self.hub.add_client(now(), *hello);
        put(
            &mut self.clients,
            id.index(),
            ClientSlot {
                id,
                sink,
                done,
                slow: false,
                staged: Staged::default(),
            },
        );
        let joined = Joined {
            client: id,
            inputs: self.client_tx.clone(),
        };
        if reply.send(joined).is_err() {
            self.hub.handle(now(), Input::ClientClosed { client: id });
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
        let limit = self.ctx.config.client_queue_bytes;
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
                    if slot.sink.queued() + slot.staged.len > limit && !slot.slow {
                        slot.slow = true;
                        self.slow.push(client);
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
                self.ctx
                    .registry
                    .auth_rejected(now(), self.key.clone(), reply);
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

    /// Dials the broker for `id`: TCP, then TLS if configured; then runs the upstream reader.
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
            let stream = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = ctx.connect_upstream() => r,
            };
            let (stream, node) = match stream {
                Ok(connected) => connected,
                Err(reason) => {
                    let _ = tx
                        .send(UpstreamMsg::Input(Input::UpstreamClosed {
                            upstream: id,
                            reason,
                        }))
                        .await;
                    return;
                }
            };
            let (mut r, w) = tokio::io::split(stream);
            let sink = spawn_writer(w, cancel.clone(), None, UPSTREAM_HIGH_WATER / 2);
            if tx
                .send(UpstreamMsg::Ready {
                    upstream: id,
                    node,
                    sink,
                })
                .await
                .is_err()
            {
                return;
            }
            let decoder = FrameDecoder::new(ctx.config.frame_max);
            let end = read_frames(&mut r, bytes::BytesMut::new(), decoder, &cancel, |frames| {
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

/// Stores `v` at index `i`, growing the vector as needed.
fn put<T>(v: &mut Vec<Option<T>>, i: usize, x: T) {
    if v.len() <= i {
        v.resize_with(i + 1, || None);
    }
    v[i] = Some(x);
}
