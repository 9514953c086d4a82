//! warren-core: the sans-IO heart of warren, an AMQP 0-9-1 multiplexing proxy.
//!
//! Nothing here touches a socket, a clock or a global random generator. The runtime reads
//! bytes, splits them into [`frame::Frame`]s, feeds them to a [`handshake::ClientHandshake`]
//! or a [`hub::Hub`] together with the current time, and carries out the outputs those
//! machines produce. The same machines run unchanged in the deterministic simulation.
//!
//! | module | holds |
//! |---|---|
//! | [`wire`], [`table`] | AMQP primitive types and field tables |
//! | [`frame`] | the zero-copy frame decoder and frame encoder |
//! | [`method`] | method ids, argument layouts and the methods the proxy reads or writes (the catalogue itself is the leaf module `spec`, re-exported here) |
//! | [`content`] | content headers and body re-chunking |
//! | [`credentials`] | the pool key and SASL responses |
//! | [`handshake`] | the client leg of the connection handshake |
//! | [`hub`] | the per-credential multiplexer: clients, upstreams, channels |
//! | [`login`] | warren's side of a broker connection's handshake |
//! | [`admission`] | handshakes, login proofs, the credential cache, limits, the hub registry |
//! | [`reply`] | AMQP reply codes |

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admission;
mod agenda;
pub mod content;
pub mod credentials;
pub mod frame;
pub mod growth;
pub mod handshake;
pub mod hub;
pub mod login;
pub mod method;
pub mod nodes;
pub mod proxy_header;
pub mod reply;
mod spec;
pub mod table;
pub mod wire;

/// An arbitrary epoch for tests: virtual time in tests counts from here, and nothing depends
/// on its value. The one sanctioned clock read in this crate.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn test_epoch() -> std::time::Instant {
    std::time::Instant::now()
}
