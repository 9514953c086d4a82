//! The server: binds the listeners, starts the admission task (which accepts clients and
//! starts hubs), serves metrics, and drains on shutdown (B14).

use crate::admin::{AdminState, Readiness};
use crate::config::Config;
use crate::conn::BoxStream;
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::net::Network;
use crate::Error;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// Prefix of the broker connections' `connection_name`, e.g. `warren@host`.
    pub(crate) upstream_name: String,
    pub(crate) acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// TLS towards the broker, when any of its nodes is `amqps://`.
    pub(crate) connector: Option<tokio_rustls::TlsConnector>,
    /// Per node of `config.upstream`: the name its certificate is verified against (TLS only).
    pub(crate) server_names: Vec<Option<rustls_pki_types::ServerName<'static>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admin: Arc<AdminState>,
    /// Connected clients, for `max_clients`; each connection holds a [`ClientCount`].
    pub(crate) clients: Arc<AtomicUsize>,
    pub(crate) drain: CancellationToken,
    pub(crate) abort: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl<N: Network> Ctx<N> {
    /// A connection to the broker and the index of the node it reached: the nodes of
    /// `order` (core's choice) in turn, each given an equal share of the connect timeout.
    /// The error names every node and why it failed.
    pub(crate) async fn connect_upstream(
        &self,
        order: &[usize],
    ) -> Result<(BoxStream, usize), String> {
        let urls = self.config.upstream.urls();
        let order: Vec<usize> = order.iter().copied().filter(|&i| i < urls.len()).collect();
        let share = self.config.connect_timeout / u32::try_from(order.len().max(1)).unwrap_or(1);
        let mut failures = Vec::with_capacity(order.len());
        for i in order {
            match tokio::time::timeout(share, self.connect_node(i)).await {
                Ok(Ok(stream)) => return Ok((stream, i)),
                Ok(Err(e)) => failures.push(format!("{e} ({})", urls[i])),
                Err(_) => failures.push(format!("timed out connecting ({})", urls[i])),
            }
        }
        Err(failures.join("; "))
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
        let ctx = Arc::new(Ctx {
            upstream_name: format!("warren@{}", hostname()),
            net,
            acceptor,
            connector,
            server_names,
            metrics,
            admin,
            clients: Arc::new(AtomicUsize::new(0)),
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
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
        self.run_seeded(shutdown, os_seed()).await
    }

    /// [`Server::run`] with the seed of reconnect jitter given (the simulation's), instead of
    /// one drawn from the operating system.
    pub async fn run_seeded(self, shutdown: Shutdown, seed: u64) -> Result<(), Error> {
        let ctx = self.ctx;
        let admin_stop = CancellationToken::new();
        if let Some((listener, _)) = self.metrics_listener {
            let (net, state, stop) = (ctx.net.clone(), ctx.admin.clone(), admin_stop.clone());
            tokio::spawn(crate::admin::serve(net, listener, state, stop));
        }
        ctx.admin.readiness.set_listening(true);
        let mode = match &ctx.config.events {
            Some(e) => format!(
                "revoked as they change (event exchange in vhost {:?} as {})",
                e.vhost, e.user
            ),
            None => format!(
                "trusted for {} after the broker accepts them (no events_user)",
                humantime::format_duration(ctx.config.credentials_ttl)
            ),
        };
        tracing::info!(listen = %self.local_addr, upstream = %ctx.config.upstream, seed, credentials = %mode, "warren is listening");
        let (gate, _) = Gate::new(ctx.clone(), self.listener, seed);
        ctx.tracker.spawn(gate.run());
        tokio::select! {
            biased;
            _ = shutdown.abort.cancelled() => {}
            _ = shutdown.drain.cancelled() => {}
        }
        if !shutdown.abort.is_cancelled() {
            tracing::info!(timeout = ?ctx.config.drain_timeout, "draining");
            ctx.admin.readiness.set_draining(true);
            ctx.drain.cancel();
        }
        ctx.tracker.close();
        // Hubs close remaining clients at the drain deadline and then wait a bounded time
        // for close handshakes; this outer bound only guards against a stuck peer.
        let close_timeout = ctx.config.hub_config(String::new()).close_timeout;
        let bound = ctx.config.drain_timeout + close_timeout * 3;
        tokio::select! {
            biased;
            _ = shutdown.abort.cancelled() => {}
            _ = ctx.tracker.wait() => {}
            _ = tokio::time::sleep(bound) => tracing::warn!("drain did not finish in time; exiting"),
        }
        ctx.abort.cancel();
        admin_stop.cancel();
        tracing::info!("warren stopped");
        Ok(())
    }
}

/// 64 bits from the operating system's randomness (std seeds its hash keys from it), so that
/// the reconnect jitter of warren replicas started together differs; logged at start-up so a
/// run can be replayed.
fn os_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x7761_7272_656e_u64)
}

/// Holds one slot of the connected-clients count for as long as the connection lives.
pub(crate) struct ClientCount(Arc<AtomicUsize>);

impl ClientCount {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        ClientCount(count.clone())
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
