//! An in-process warren: the real [`warren_runtime::Server`] on its own thread and its own
//! multi-thread tokio runtime, listening on an ephemeral port of 127.0.0.1.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_runtime::config::{Config, UpstreamUrl};
use warren_runtime::net::{Network, TokioNetwork};

/// How long [`Warren::start`] waits for the server to bind (an upper bound, not a measure).
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Drop`] and [`Warren::stop`] wait for the server thread after an abort.
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running warren in front of the test broker.
///
/// Dropping it aborts the server and joins its thread.
#[derive(Debug)]
pub struct Warren {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    drain: CancellationToken,
    abort: CancellationToken,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Warren {
    /// The configuration tests start from: listener and metrics on ephemeral ports of
    /// 127.0.0.1, upstream the test broker, everything else default.
    #[must_use]
    pub fn test_config() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            upstream: UpstreamUrl {
                tls: false,
                host: crate::BROKER_HOST.to_owned(),
                port: crate::BROKER_PORT,
            }
            .into(),
            ..Config::default()
        }
    }

    /// Starts a warren with [`Warren::test_config`].
    pub fn start() -> Result<Warren> {
        Warren::start_with(Warren::test_config())
    }

    /// Starts a warren with [`Warren::test_config`] changed by `f`.
    pub fn start_configured(f: impl FnOnce(&mut Config)) -> Result<Warren> {
        let mut config = Warren::test_config();
        f(&mut config);
        Warren::start_with(config)
    }

    /// Starts a warren with exactly `config`, and returns once it listens.
    pub fn start_with(config: Config) -> Result<Warren> {
        Warren::start_on(TokioNetwork, config)
    }

    /// Starts a warren with exactly `config` on the network `net` (for example one that
    /// injects socket faults), and returns once it listens.
    pub fn start_on<N: Network>(net: N, config: Config) -> Result<Warren> {
        crate::init_tracing();
        let drain = CancellationToken::new();
        let abort = CancellationToken::new();
        let shutdown = warren_runtime::Shutdown {
            drain: drain.clone(),
            abort: abort.clone(),
        };
        let (bound_tx, bound_rx) = mpsc::channel::<Result<(SocketAddr, Option<SocketAddr>)>>();
        let thread = std::thread::Builder::new()
            .name("warren".into())
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("warren-worker")
                    .enable_all()
                    .build()
                    .context("building warren's tokio runtime")?;
                runtime.block_on(async move {
                    let server = match warren_runtime::Server::bind(net, config).await {
                        Ok(server) => server,
                        Err(e) => {
                            let msg = format!("warren failed to bind: {e}");
                            let _ = bound_tx.send(Err(anyhow!("{msg}")));
                            return Err(anyhow!("{msg}"));
                        }
                    };
                    let _ = bound_tx.send(Ok((server.local_addr(), server.metrics_addr())));
                    server
                        .run(shutdown)
                        .await
                        .map_err(|e| anyhow!("warren stopped with an error: {e}"))
                })
            })
            .context("spawning warren's thread")?;
        let (addr, metrics_addr) = match bound_rx.recv_timeout(BIND_TIMEOUT) {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                abort.cancel();
                return Err(match thread.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow!("warren returned before it was bound"),
                    Err(_) => anyhow!("warren panicked while binding"),
                });
            }
        };
        Ok(Warren {
            addr,
            metrics_addr,
            drain,
            abort,
            thread: Some(thread),
        })
    }

    /// The client listener's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics/health HTTP listener's address, when enabled.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// An `amqp://` URL for this warren with these credentials and vhost (percent-encoded).
    #[must_use]
    pub fn amqp_url(&self, user: &str, pass: &str, vhost: &str) -> String {
        crate::client::amqp_url(self.addr, user, pass, vhost)
    }

    /// Starts a graceful drain (as SIGTERM does): stop accepting, let clients finish.
    /// Returns at once; see [`Warren::wait_exit`].
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Whether the server thread has finished.
    #[must_use]
    pub fn has_exited(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the server to return by itself (after [`Warren::drain`]), at most `limit`
    /// (an upper bound: exceeding it is reported as a hang), and returns what the server
    /// returned.
    pub fn wait_exit(mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                return Err(anyhow!("warren did not exit within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.join()
    }

    /// Aborts the server at once and waits for its thread; returns what the server returned.
    pub fn stop(mut self) -> Result<()> {
        self.drain.cancel();
        self.abort.cancel();
        self.join_bounded(ABORT_TIMEOUT)
    }

    fn join_bounded(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                return Err(anyhow!("warren did not stop within {limit:?} of an abort"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(result) => result,
                Err(_) => Err(anyhow!("warren's thread panicked")),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        self.drain.cancel();
        self.abort.cancel();
        let result = self.join_bounded(ABORT_TIMEOUT);
        if let Err(e) = result {
            if std::thread::panicking() {
                eprintln!("while dropping Warren: {e:#}");
            } else {
                panic!("while dropping Warren: {e:#}");
            }
        }
    }
}
