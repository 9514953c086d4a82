//! warren-runtime: the thin driver around `warren-core`.
//!
//! It owns the sockets, TLS, timers and tasks; all protocol decisions are made by the core
//! state machines it drives. One admission task accepts clients and runs their handshakes
//! and admission's broker logins itself; per hub one task owns the core `Hub` and every socket of
//! that hub (its clients and its broker connections), reading and writing them itself. The code
//! is generic over [`net::Network`], so the simulation runs it under turmoil unchanged.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
mod api;
pub mod config;
pub mod ctl;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod reload;
pub mod tls;

mod conn;
mod ctx;
mod gate;
#[cfg(test)]
mod generated_docs;
mod http;
mod hub_task;
mod msg;
mod server;
mod sockets;
mod wake;

pub use server::{Server, Shutdown};

/// Errors the runtime reports to its caller (configuration and start-up problems; everything
/// that happens to a connection is handled inside).
#[derive(Debug)]
pub enum Error {
    /// A socket could not be bound: the address, the setting that names it, and why.
    Bind(std::net::SocketAddr, &'static str, std::io::Error),
    /// TLS material could not be loaded.
    Tls(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Bind(addr, setting, e) if e.kind() == std::io::ErrorKind::AddrInUse => write!(
                f,
                "cannot listen on {addr} ({setting}): port {} is in use, by another warren \
                 or another program; stop it, or choose another address with --{}",
                addr.port(),
                setting.replace('_', "-")
            ),
            Error::Bind(addr, setting, e) => write!(f, "cannot listen on {addr} ({setting}): {e}"),
            Error::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for Error {}
