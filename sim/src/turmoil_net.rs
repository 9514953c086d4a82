//! [`TurmoilNetwork`]: the runtime's [`Network`] seam implemented on turmoil's simulated TCP,
//! so `warren_runtime::Server` runs unchanged as a turmoil host. It lives here, not in the
//! runtime, so the production crate never depends on turmoil (no feature unification).

use std::io;
use std::net::SocketAddr;
use warren_runtime::net::Network;

/// turmoil's TCP as a [`Network`]. Host names resolve through turmoil's DNS (`broker:5672`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilNetwork;

impl Network for TurmoilNetwork {
    type Stream = turmoil::net::TcpStream;
    type Listener = turmoil::net::TcpListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        turmoil::net::TcpListener::bind(addr).await
    }

    async fn accept(&self, listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }

    fn local_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Stream> {
        turmoil::net::TcpStream::connect((host, port)).await
    }
}
