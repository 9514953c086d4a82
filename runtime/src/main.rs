//! The `warren` binary: configuration, logging, signals, and the server.
//!
//! The first SIGTERM or SIGINT starts a drain (B14) and warren exits 0 once it is over; a
//! second one exits at once, with status 1.

use std::path::Path;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use warren_runtime::config::{self, Command, Config, ConfigError};
use warren_runtime::net::TokioNetwork;
use warren_runtime::{logging, tls, Server, Shutdown};

/// jemalloc's background thread gives freed memory back to the system within seconds after
/// tens of thousands of clients leave (P6), where glibc's allocator keeps it, and it has
/// little overhead per small allocation.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at start-up: purge unused pages after about a second rather than
/// ten, so memory is back soon after a crowd of clients leaves. (The form jemallocator
/// documents: jemalloc reads the first word, the pointer to the NUL-terminated string.)
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000\0";

fn main() -> ExitCode {
    match config::load() {
        Ok(Command::Run(config)) => run(*config),
        Ok(Command::CheckConfig(path)) => check(&path),
        Err(ConfigError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("warren: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `warren check-config FILE`: the settings, and the TLS files they name.
fn check(path: &Path) -> ExitCode {
    let checked = config::from_file(path).and_then(|c| {
        check_tls(&c).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })
    });
    match checked {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            eprintln!("warren: {}: {e}", path.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("warren: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the certificates and keys the server would load at start-up.
fn check_tls(config: &Config) -> Result<(), warren_runtime::Error> {
    if let Some(listener) = &config.listener_tls {
        tls::acceptor(listener)?;
    }
    if config.upstream.any_tls() {
        tls::connector(&config.upstream_tls)?;
    }
    Ok(())
}

fn run(config: Config) -> ExitCode {
    if let Err(e) = logging::init(&config.log_level, config.log_format) {
        eprintln!("warren: {e}");
        return ExitCode::FAILURE;
    }
    // One thread: everything runs on the main thread, and no wake-up ever crosses threads.
    let threads = config.runtime_threads();
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(serve(config)) {
        Ok(Ended::Drained) => {
            tracing::info!("drained; bye");
            ExitCode::SUCCESS
        }
        Ok(Ended::Aborted) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("warren: {e}");
            ExitCode::FAILURE
        }
    };
    // Do not wait for tasks an abort left behind.
    runtime.shutdown_background();
    code
}

/// How the server stopped.
enum Ended {
    /// After the first signal, once every client had left or been closed.
    Drained,
    /// On the second signal, without waiting.
    Aborted,
}

async fn serve(config: Config) -> Result<Ended, Box<dyn std::error::Error>> {
    // Before binding, so that a signal never finds the default action (instant death).
    let signals = Signals::new().map_err(|e| format!("cannot handle signals: {e}"))?;
    let server = Server::bind(TokioNetwork, config).await?;
    let shutdown = Shutdown {
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let abort = shutdown.abort.clone();
    tokio::spawn(signals.relay(shutdown.drain.clone(), shutdown.abort.clone()));
    tokio::select! {
        biased;
        () = abort.cancelled() => Ok(Ended::Aborted),
        r = server.run(shutdown) => r.map(|()| Ended::Drained).map_err(Into::into),
    }
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere than Unix).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            biased;
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }

    /// First signal: drain; second: abort.
    async fn relay(mut self, drain: CancellationToken, abort: CancellationToken) {
        let signal = self.next().await;
        tracing::info!(signal, "draining; send it again to exit at once");
        drain.cancel();
        let signal = self.next().await;
        tracing::warn!(signal, "exiting without finishing the drain");
        abort.cancel();
    }
}
