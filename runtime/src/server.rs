//! The server: binds the listeners, starts the admission task (which accepts clients and
//! starts hubs), serves metrics, and drains on shutdown (B14).

use crate::admin::{AdminState, Readiness};
use crate::config::Config;
use crate::ctx::{ClientListener, Ctx, Live};
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::net::Network;
use crate::reload::{ReloadSource, Reloader};
use crate::Error;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a server is asked to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Graceful: stop accepting, let clients finish up to the drain timeout, close the rest
    /// with 320, close upstreams, return.
    pub drain: CancellationToken,
    /// Immediate: drop everything and return.
    pub abort: CancellationToken,
}

/// A bound, not yet running warren.
pub struct Server<N: Network> {
    ctx: Arc<Ctx<N>>,
    listener: N::Listener,
    local_addr: SocketAddr,
    /// The second listener, for TLS clients, and its address.
    tls_listener: Option<(N::Listener, SocketAddr)>,
    metrics_listener: Option<(N::Listener, SocketAddr)>,
    admin_listener: Option<(N::Listener, SocketAddr)>,
}

impl<N: Network> Server<N> {
    /// Binds the client listener and the metrics listener and loads TLS material.
    pub async fn bind(net: N, config: Config) -> Result<Server<N>, Error> {
        let live = Live::load(config)?;
        let config = &live.config;
        let (listener, local_addr) =
            bind_client(&net, config.listen, "listen", config.reuse_port).await?;
        let metrics_listener = match config.metrics {
            Some(addr) => Some(bind(&net, addr, "metrics").await?),
            None => None,
        };
        let admin_listener = match config.admin_listen {
            // Shared like the client listeners, so that a new warren can start beside one
            // that drains.
            Some(addr) => Some(bind_client(&net, addr, "admin_listen", config.reuse_port).await?),
            None => None,
        };
        let tls_listener = match config.tls_listen {
            Some(addr) => Some(bind_client(&net, addr, "tls_listen", config.reuse_port).await?),
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
            metrics,
            admin,
            clients: Arc::new(AtomicUsize::new(0)),
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            live: RwLock::new(Arc::new(live)),
            gate: OnceLock::new(),
            reload_source: OnceLock::new(),
        });
        Ok(Server {
            ctx,
            listener,
            local_addr,
            tls_listener,
            metrics_listener,
            admin_listener,
        })
    }

    /// Reloads the settings while this server runs: from `source` (the binary re-reads its
    /// flags, variables and file) on [`Reloader::reload`] and `POST /api/reload`.
    #[must_use]
    pub fn reloader(&self, source: ReloadSource) -> Reloader<N> {
        let _ = self.ctx.reload_source.set(source);
        Reloader::new(self.ctx.clone())
    }

    /// Where clients connect.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where TLS clients connect, when they have a listener of their own (`tls_listen`).
    #[must_use]
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listener.as_ref().map(|(_, a)| *a)
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
        let live = ctx.live();
        let mode = match &live.config.events {
            Some(e) => format!(
                "revoked as they change (event exchange in vhost {:?} as {})",
                e.vhost, e.user
            ),
            None => format!(
                "trusted for {} after the broker accepts them (no events_user)",
                humantime::format_duration(live.config.credentials_ttl)
            ),
        };
        tracing::info!(listen = %self.local_addr, upstream = %live.config.upstream, seed, credentials = %mode, "warren is listening");
        // Without a listener of their own, TLS clients (if any) come to `listen`.
        let mut listeners = vec![ClientListener {
            inner: self.listener,
            tls: live.config.listener_tls.is_some() && self.tls_listener.is_none(),
        }];
        if let Some((inner, _)) = self.tls_listener {
            listeners.push(ClientListener { inner, tls: true });
        }
        let (gate, tx) = Gate::new(ctx.clone(), listeners, seed);
        if let Some((listener, addr)) = self.admin_listener {
            let api = Arc::new(crate::api::ApiState {
                gate: tx.clone(),
                token: live.config.admin_token.clone(),
                reload: {
                    let ctx = ctx.clone();
                    Box::new(move || crate::reload::reload(&ctx))
                },
            });
            let auth = if api.token.is_some() {
                "bearer token"
            } else {
                "none"
            };
            tracing::info!(%addr, auth, "admin API listening");
            let (net, stop) = (ctx.net.clone(), admin_stop.clone());
            tokio::spawn(crate::admin::serve_api(net, listener, api, stop));
        }
        let _ = ctx.gate.set(tx);
        ctx.tracker.spawn(gate.run());
        tokio::select! {
            biased;
            _ = shutdown.abort.cancelled() => {}
            _ = shutdown.drain.cancelled() => {}
        }
        // The settings in force when the drain begins.
        let live = ctx.live();
        if !shutdown.abort.is_cancelled() {
            tracing::info!(timeout = ?live.config.drain_timeout, "draining");
            ctx.admin.readiness.set_draining(true);
            ctx.drain.cancel();
        }
        ctx.tracker.close();
        // Hubs close remaining clients at the drain deadline and then wait a bounded time
        // for close handshakes; this outer bound only guards against a stuck peer.
        let close_timeout = live.config.hub_config(String::new()).close_timeout;
        let bound = live.config.drain_timeout + close_timeout * 3;
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

/// A client listener and its address, shared with other processes when `reuse_port`.
async fn bind_client<N: Network>(
    net: &N,
    addr: SocketAddr,
    setting: &'static str,
    reuse_port: bool,
) -> Result<(N::Listener, SocketAddr), Error> {
    if !reuse_port {
        return bind(net, addr, setting).await;
    }
    let l = net
        .bind_shared(addr)
        .await
        .map_err(|e| Error::Bind(addr, setting, e))?;
    let a = net
        .local_addr(&l)
        .map_err(|e| Error::Bind(addr, setting, e))?;
    Ok((l, a))
}

/// A bound listener and its address; errors name the setting.
async fn bind<N: Network>(
    net: &N,
    addr: SocketAddr,
    setting: &'static str,
) -> Result<(N::Listener, SocketAddr), Error> {
    let l = net
        .bind(addr)
        .await
        .map_err(|e| Error::Bind(addr, setting, e))?;
    let a = net
        .local_addr(&l)
        .map_err(|e| Error::Bind(addr, setting, e))?;
    Ok((l, a))
}

/// 64 bits from the operating system's randomness (std seeds its hash keys from it), so that
/// the reconnect jitter of warren replicas started together differs; logged at start-up so a
/// run can be replayed.
fn os_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x7761_7272_656e_u64)
}

/// This machine's name, for upstream connection names.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
