//! The server: binds the listeners, accepts clients, runs each client's handshake, hands it
//! to its hub, and drains on shutdown (B14).

use crate::admin::{AdminState, Readiness};
use crate::config::Config;
use crate::conn::{read_frames, spawn_writer, BoxStream, ReadEnd, Resettable, MIN_READ_CHUNK};
use crate::metrics::Metrics;
use crate::net::Network;
use crate::registry::{Join, Registry};
use crate::Error;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_core::auth_cache::AuthCache;
use warren_core::frame::FrameDecoder;
use warren_core::handshake::{ClientHandshake, ClientHello, HandshakeOutput};
use warren_core::hub::{HubConfig, Input};
use warren_core::method::{encode, Close};
use warren_core::reply::{self, Reply};

/// The current time on the runtime's clock (simulated under turmoil).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How a server is asked to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Graceful: stop accepting, let clients finish up to the drain timeout, close the rest
    /// with 320, close upstreams, return.
    pub drain: CancellationToken,
    /// Immediate: drop everything and return.
    pub abort: CancellationToken,
}

/// What every task of a server shares.
pub(crate) struct Ctx<N: Network> {
    pub(crate) net: N,
    pub(crate) config: Config,
    pub(crate) hub_config: HubConfig,
    pub(crate) acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// TLS towards the broker, when any of its nodes is `amqps://`.
    pub(crate) connector: Option<tokio_rustls::TlsConnector>,
    /// Per node of `config.upstream`: the name its certificate is verified against (TLS only).
    pub(crate) server_names: Vec<Option<rustls_pki_types::ServerName<'static>>>,
    /// The node the last successful dial reached; the next dial tries it first.
    pub(crate) preferred_node: AtomicUsize,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admin: Arc<AdminState>,
    pub(crate) registry: Registry,
    /// Connected clients, for `max_clients`; each connection holds a [`ClientCount`].
    pub(crate) clients: Arc<AtomicUsize>,
    pub(crate) drain: CancellationToken,
    pub(crate) abort: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Seeds hub jitter; differs per process so hubs of several proxies do not align.
    pub(crate) seed: u64,
}

impl<N: Network> Ctx<N> {
    /// A connection to the broker and the index of the node it reached: the nodes in turn,
    /// starting with the one that answered last, each given an equal share of the connect
    /// timeout. The error names every node and why it failed.
    pub(crate) async fn connect_upstream(&self) -> Result<(BoxStream, usize), String> {
        let urls = self.config.upstream.urls();
        let n = urls.len();
        let start = self.preferred_node.load(Ordering::Relaxed) % n;
        let share = self.config.connect_timeout / u32::try_from(n).unwrap_or(u32::MAX);
        let mut failures = Vec::with_capacity(n);
        for i in (start..n).chain(0..start) {
            match tokio::time::timeout(share, self.connect_node(i)).await {
                Ok(Ok(stream)) => {
                    self.preferred_node.store(i, Ordering::Relaxed);
                    return Ok((stream, i));
                }
                Ok(Err(e)) => failures.push(format!("{e} ({})", urls[i])),
                Err(_) => failures.push(format!("timed out connecting ({})", urls[i])),
            }
        }
        Err(failures.join("; "))
    }

    /// Node `node` accepted a connection but failed the AMQP login for another reason than
    /// the credentials (it closed the socket, timed out, went silent): the next dial starts
    /// with the node after it, unless another dial has already moved on.
    pub(crate) fn node_failed(&self, node: usize) {
        let next = (node + 1) % self.config.upstream.urls().len();
        let _ =
            self.preferred_node
                .compare_exchange(node, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// TCP to node `i` of the upstream list, then TLS when it is `amqps://`.
    async fn connect_node(&self, i: usize) -> Result<BoxStream, String> {
        let u = &self.config.upstream.urls()[i];
        let tcp = self
            .net
            .connect(&u.host, u.port)
            .await
            .map_err(|e| e.to_string())?;
        match (&self.connector, &self.server_names[i]) {
            (Some(connector), Some(name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with the broker failed: {e}"))?;
                Ok(Box::new(tls))
            }
            _ => Ok(Box::new(tcp)),
        }
    }
}

/// A bound, not yet running warren.
pub struct Server<N: Network> {
    ctx: Arc<Ctx<N>>,
    listener: N::Listener,
    local_addr: SocketAddr,
    metrics_listener: Option<(N::Listener, SocketAddr)>,
}

impl<N: Network> Server<N> {
    /// Binds the client listener and the metrics listener and loads TLS material.
    pub async fn bind(net: N, config: Config) -> Result<Server<N>, Error> {
        let acceptor = config
            .listener_tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()?;
        let connector = if config.upstream.any_tls() {
            Some(crate::tls::connector(&config.upstream_tls)?)
        } else {
            None
        };
        let server_names = config
            .upstream
            .urls()
            .iter()
            .map(|u| {
                u.tls
                    .then(|| crate::tls::server_name(&config.upstream_tls, &u.host))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let listener = net
            .bind(config.listen)
            .await
            .map_err(|e| Error::Bind(config.listen, "listen", e))?;
        let local_addr = net
            .local_addr(&listener)
            .map_err(|e| Error::Bind(config.listen, "listen", e))?;
        let metrics_listener = match config.metrics {
            Some(addr) => {
                let l = net
                    .bind(addr)
                    .await
                    .map_err(|e| Error::Bind(addr, "metrics", e))?;
                let a = net
                    .local_addr(&l)
                    .map_err(|e| Error::Bind(addr, "metrics", e))?;
                Some((l, a))
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let admin = Arc::new(AdminState {
            metrics: metrics.clone(),
            readiness: Readiness::default(),
        });
        let host = hostname();
        let ctx = Arc::new(Ctx {
            hub_config: config.hub_config(format!("warren@{host}")),
            registry: Registry::new(
                config.max_hubs,
                AuthCache::new(config.auth_cache_ttl, 10_000),
            ),
            net,
            acceptor,
            connector,
            server_names,
            preferred_node: AtomicUsize::new(0),
            metrics,
            admin,
            clients: Arc::new(AtomicUsize::new(0)),
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            seed: std::process::id().into(),
            config,
        });
        Ok(Server {
            ctx,
            listener,
            local_addr,
            metrics_listener,
        })
    }

    /// Where clients connect.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if enabled.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, a)| *a)
    }

    /// Serves until `shutdown`. A drain returns once every client and upstream is closed (at
    /// most the drain timeout plus close timeouts); an abort returns at once.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let ctx = self.ctx;
        let admin_stop = CancellationToken::new();
        if let Some((listener, _)) = self.metrics_listener {
            let (net, state, stop) = (ctx.net.clone(), ctx.admin.clone(), admin_stop.clone());
            tokio::spawn(crate::admin::serve(net, listener, state, stop));
        }
        ctx.admin.readiness.set_listening(true);
        tracing::info!(listen = %self.local_addr, upstream = %ctx.config.upstream, "warren is listening");
        {
            let abort = ctx.abort.clone();
            let shutdown_abort = shutdown.abort.clone();
            tokio::spawn(async move {
                shutdown_abort.cancelled().await;
                abort.cancel();
            });
        }
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.abort.cancelled() => break,
                _ = shutdown.drain.cancelled() => break,
                a = ctx.net.accept(&self.listener) => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let ctx2 = ctx.clone();
                    let count = ClientCount::new(&ctx.clients);
                    let reset = Arc::new(AtomicBool::new(false));
                    let stream = Resettable::new(stream, reset.clone(), N::reset_on_close);
                    ctx.tracker.spawn(async move {
                        client_connection(&ctx2, Box::new(stream), peer, count, reset).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors and similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(self.listener);
        ctx.admin.readiness.set_listening(false);
        if !ctx.abort.is_cancelled() {
            tracing::info!(timeout = ?ctx.config.drain_timeout, "draining");
            ctx.admin.readiness.set_draining(true);
            ctx.registry.close();
            ctx.drain.cancel();
        }
        ctx.tracker.close();
        // Hubs close remaining clients at the drain deadline and then wait a bounded time
        // for close handshakes; this outer bound only guards against a stuck peer.
        let bound = ctx.config.drain_timeout + ctx.hub_config.close_timeout * 3;
        tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => {}
            _ = ctx.tracker.wait() => {}
            _ = tokio::time::sleep(bound) => tracing::warn!("drain did not finish in time; exiting"),
        }
        ctx.abort.cancel();
        admin_stop.cancel();
        tracing::info!("warren stopped");
        Ok(())
    }
}

/// Holds one slot of the connected-clients count for as long as the connection lives.
pub(crate) struct ClientCount(Arc<AtomicUsize>);

impl ClientCount {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        ClientCount(count.clone())
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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

/// One client connection: TLS, handshake and admission to a hub, then a [`Reader`] task.
async fn client_connection<N: Network>(
    ctx: &Arc<Ctx<N>>,
    stream: BoxStream,
    peer: SocketAddr,
    count: ClientCount,
    reset: Arc<AtomicBool>,
) {
    let started = now();
    // The TLS and AMQP handshakes are boxed: their state is large and short-lived, and the
    // task that outlives them should stay small for idle clients (P6).
    let stream: BoxStream = match &ctx.acceptor {
        Some(acceptor) => match Box::pin(tls_accept(ctx, acceptor, stream, peer)).await {
            Some(s) => s,
            None => return,
        },
        None => stream,
    };
    let (mut r, mut w) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(MIN_READ_CHUNK);
    let Some(hello) = Box::pin(handshake(ctx, &mut r, &mut w, &mut buf)).await else {
        return;
    };
    ctx.metrics.observe_handshake(now().duration_since(started));
    let done = ctx.abort.child_token();
    let sink = spawn_writer(w, done.clone(), Some(reset), 0);
    let name = hello.connection_name.clone().unwrap_or_default();
    let (user, vhost) = (
        hello.credentials.user.clone(),
        hello.credentials.vhost.clone(),
    );
    let frame_max = hello.tune.frame_max;
    let refuse = |refusal_reply: Reply, reason: &'static str, silent: bool| {
        ctx.metrics.refused(reason);
        tracing::info!(%peer, name = %name, %user, %vhost, code = refusal_reply.code, text = %refusal_reply.text, "refusing client");
        if !silent {
            sink.send(encode::close(0, &Close::from(&refusal_reply)));
        }
    };
    if ctx.clients.load(Ordering::Relaxed) > ctx.config.max_clients {
        let r = Reply::new(
            reply::NOT_ALLOWED,
            format!(
                "warren's limit of {} connected clients (max_clients) is reached",
                ctx.config.max_clients
            ),
        );
        refuse(r, "max_clients", false);
        drop(sink);
        return done.cancelled().await;
    }
    let failure_close = hello.capabilities.authentication_failure_close;
    let (tx, rx) = oneshot::channel();
    let join = Join {
        hello: Box::new(hello),
        sink: sink.clone(),
        done: done.clone(),
        reply: tx,
    };
    if let Err((refusal, _join)) = ctx.registry.join(ctx, now(), join) {
        let silent = refusal.reply.code == reply::ACCESS_REFUSED && !failure_close;
        refuse(refusal.reply, refusal.reason, silent);
        drop(sink);
        return done.cancelled().await;
    }
    drop(sink);
    let Ok(joined) = rx.await else {
        return;
    };
    tracing::info!(%peer, name = %name, %user, %vhost, client = %joined.client, "client connected");
    let reader = Reader {
        r,
        buf,
        frame_max,
        client: joined.client,
        inputs: joined.inputs,
        done,
        log: Box::new(ConnLog {
            peer,
            name,
            user,
            vhost,
        }),
        _count: count,
    };
    ctx.tracker.spawn(reader.run());
}

/// Accepts TLS within the handshake timeout.
async fn tls_accept<N: Network>(
    ctx: &Arc<Ctx<N>>,
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: BoxStream,
    peer: SocketAddr,
) -> Option<BoxStream> {
    let tls = tokio::time::timeout(ctx.config.handshake_timeout, acceptor.accept(stream));
    match tls.await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            ctx.metrics.refused("tls");
            None
        }
        Err(_) => {
            ctx.metrics.refused("handshake_timeout");
            None
        }
    }
}

/// Runs the client handshake until `Connection.Open`. Writes go straight to the socket: no
/// writer task exists yet. Returns `None` if the client failed or left.
async fn handshake<N: Network>(
    ctx: &Arc<Ctx<N>>,
    r: &mut tokio::io::ReadHalf<BoxStream>,
    w: &mut tokio::io::WriteHalf<BoxStream>,
    buf: &mut BytesMut,
) -> Option<ClientHello> {
    let mut hs = ClientHandshake::new(now(), ctx.config.handshake_config());
    loop {
        while let Some(out) = hs.poll_output() {
            match out {
                HandshakeOutput::Send(bytes) => {
                    if w.write_all(&bytes).await.is_err() {
                        return None;
                    }
                }
                HandshakeOutput::Close => {
                    let _ = w.flush().await;
                    let _ = w.shutdown().await;
                    return None;
                }
                HandshakeOutput::Done(hello) => {
                    let _ = w.flush().await;
                    return Some(*hello);
                }
            }
        }
        let _ = w.flush().await;
        let deadline = hs
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(tokio::time::Instant::now);
        if buf.capacity() == buf.len() {
            buf.reserve(MIN_READ_CHUNK);
        }
        tokio::select! {
            biased;
            _ = ctx.abort.cancelled() => return None,
            _ = tokio::time::sleep_until(deadline) => {
                hs.handle_timeout(now());
                ctx.metrics.refused("handshake_timeout");
            }
            n = r.read_buf(buf) => match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => hs.handle_input(buf),
            },
        }
    }
}

/// This machine's name, for upstream connection names.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
