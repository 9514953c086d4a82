//! The `warren` binary: configuration, logging, signals, and the server.
//!
//! The first SIGTERM or SIGINT starts a drain (B14) and warren exits 0 once it is over; a
//! second one exits at once, with status 1. SIGHUP reloads the settings (B16).

use std::path::Path;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use warren_runtime::config::{self, Command, Config, ConfigError};
use warren_runtime::net::TokioNetwork;
use warren_runtime::reload::Reloader;
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
    // `warren ctl ...` calls a running warren's admin API; it has its own command line.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "ctl") {
        return warren_runtime::ctl::main(args.collect());
    }
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
    // A reload reads flags, variables and the file again, as at start-up.
    let reloader = server.reloader(Box::new(|| match config::load() {
        Ok(Command::Run(c)) => Ok(*c),
        Ok(Command::CheckConfig(_)) => Err("the command line asks for check-config".into()),
        Err(e) => Err(e.to_string()),
    }));
    let shutdown = Shutdown {
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let abort = shutdown.abort.clone();
    tokio::spawn(signals.relay(shutdown.drain.clone(), shutdown.abort.clone(), reloader));
    tokio::select! {
        biased;
        () = abort.cancelled() => Ok(Ended::Aborted),
        r = server.run(shutdown) => r.map(|()| Ended::Drained).map_err(Into::into),
    }
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere than Unix), and SIGHUP.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

/// What a signal asks for.
enum Asked {
    /// SIGTERM, SIGINT: drain, then (a second time) exit.
    Stop(&'static str),
    /// SIGHUP: reload the settings.
    Reload,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Asked {
        tokio::select! {
            biased;
            _ = self.term.recv() => Asked::Stop("SIGTERM"),
            _ = self.int.recv() => Asked::Stop("SIGINT"),
            _ = self.hup.recv() => Asked::Reload,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Asked {
        let _ = tokio::signal::ctrl_c().await;
        Asked::Stop("Ctrl-C")
    }

    /// First stop signal: drain; second: abort. SIGHUP: reload, at any time.
    async fn relay(
        mut self,
        drain: CancellationToken,
        abort: CancellationToken,
        reloader: Reloader<TokioNetwork>,
    ) {
        let mut stops = 0;
        loop {
            match self.next().await {
                Asked::Reload => match reloader.reload() {
                    Ok(_) => {} // Logged with what changed.
                    Err(e) => tracing::error!(error = %e, "reload refused; nothing changed"),
                },
                Asked::Stop(signal) if stops == 0 => {
                    stops += 1;
                    tracing::info!(signal, "draining; send it again to exit at once");
                    drain.cancel();
                }
                Asked::Stop(signal) => {
                    tracing::warn!(signal, "exiting without finishing the drain");
                    abort.cancel();
                    return;
                }
            }
        }
    }
}
