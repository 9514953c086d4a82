//! What every task of a server shares ([`Ctx`]): the network, the settings in force
//! ([`Live`], replaced whole by a reload), metrics, the admission task's channel and the
//! shutdown tokens; with the runtime's clock ([`now`]) and the client listeners.
//!
//! Apart from [`crate::server`], which builds it, so that the tasks (admission, hubs, reload)
//! depend on this and not on the server that starts them.

use crate::admin::AdminState;
use crate::config::Config;
use crate::conn::BoxStream;
use crate::metrics::Metrics;
use crate::msg::GateMsg;
use crate::net::Network;
use crate::Error;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The current time on the runtime's clock (simulated under turmoil).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Where a reload reads the settings from; an error is shown as it is.
pub type ReloadSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The settings and the TLS material made from them: what a reload replaces, as a whole.
pub(crate) struct Live {
    pub(crate) config: Config,
    /// TLS for clients, when the listener (or the TLS listener) uses it.
    pub(crate) acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// TLS towards the broker, when any of its nodes is `amqps://`.
    pub(crate) connector: Option<tokio_rustls::TlsConnector>,
    /// Per node of `config.upstream`: the name its certificate is verified against (TLS only).
    pub(crate) server_names: Vec<Option<rustls_pki_types::ServerName<'static>>>,
}

impl Live {
    /// Loads the TLS material `config` names (certificate files are read again each time).
    pub(crate) fn load(config: Config) -> Result<Live, Error> {
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
        Ok(Live {
            config,
            acceptor,
            connector,
            server_names,
        })
    }
}

/// What every task of a server shares.
pub(crate) struct Ctx<N: Network> {
    pub(crate) net: N,
    /// The settings in force; replaced whole by a reload. Read with [`Ctx::live`].
    pub(crate) live: RwLock<Arc<Live>>,
    /// Prefix of the broker connections' `connection_name`, e.g. `warren@host`.
    pub(crate) upstream_name: String,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admin: Arc<AdminState>,
    /// Connected clients, for `max_clients`; each connection holds a [`ClientCount`](crate::conn::ClientCount).
    pub(crate) clients: Arc<AtomicUsize>,
    /// The admission task's channel, once it runs (for reloads and the admin API).
    pub(crate) gate: OnceLock<mpsc::UnboundedSender<GateMsg>>,
    /// Where a reload reads the settings from (the binary re-reads flags, variables and
    /// the file); without one, a reload is refused.
    pub(crate) reload_source: OnceLock<ReloadSource>,
    pub(crate) drain: CancellationToken,
    pub(crate) abort: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl<N: Network> Ctx<N> {
    /// The settings in force (a reload does not change what a caller holds).
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts reloaded settings in force for everything that reads them from now on.
    pub(crate) fn set_live(&self, live: Live) {
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(live);
    }

    /// A connection to the broker and the index of the node it reached: the nodes of
    /// `order` (core's choice) in turn, each given an equal share of the connect timeout.
    /// The error names every node and why it failed.
    pub(crate) async fn connect_upstream(
        &self,
        order: &[usize],
    ) -> Result<(BoxStream, usize), String> {
        let live = self.live();
        let urls = live.config.upstream.urls();
        let order: Vec<usize> = order.iter().copied().filter(|&i| i < urls.len()).collect();
        let share = live.config.connect_timeout / u32::try_from(order.len().max(1)).unwrap_or(1);
        let mut failures = Vec::with_capacity(order.len());
        for i in order {
            match tokio::time::timeout(share, Self::connect_node(&self.net, &live, i)).await {
                Ok(Ok(stream)) => return Ok((stream, i)),
                Ok(Err(e)) => failures.push(format!("{e} ({})", urls[i])),
                Err(_) => failures.push(format!("timed out connecting ({})", urls[i])),
            }
        }
        Err(failures.join("; "))
    }

    /// TCP to node `i` of the upstream list, then TLS when it is `amqps://`.
    async fn connect_node(net: &N, live: &Live, i: usize) -> Result<BoxStream, String> {
        let u = &live.config.upstream.urls()[i];
        let tcp = net
            .connect(&u.host, u.port)
            .await
            .map_err(|e| e.to_string())?;
        match (&live.connector, &live.server_names[i]) {
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

/// A client listener, and whether its clients speak TLS.
pub(crate) struct ClientListener<N: Network> {
    pub(crate) inner: N::Listener,
    pub(crate) tls: bool,
}
