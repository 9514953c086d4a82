//! The network seam: everything the runtime needs from sockets, as a trait, so the same
//! driver runs on tokio in production and under turmoil in the simulation.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// Listening and connecting, abstracted over the socket implementation.
pub trait Network: Clone + Send + Sync + 'static {
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A bound listener.
    type Listener: Send + Sync + 'static;

    /// Binds a listener.
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// Accepts the next connection.
    fn accept(
        &self,
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// A listener that shares its address with other processes' (`SO_REUSEPORT`), so that a
    /// new warren can take over a running one's address; a network that cannot share binds
    /// alone.
    fn bind_shared(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Listener>> + Send {
        self.bind(addr)
    }

    /// The address a listener is bound to (useful after binding port 0).
    fn local_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr>;

    /// Makes closing `stream` reset the connection at once instead of first sending what is
    /// still queued in the kernel; used for peers that stopped reading, whose zero receive
    /// window would otherwise hold the close back for as long as they live (B9).
    fn reset_on_close(stream: &Self::Stream) {
        let _ = stream;
    }

    /// Connects to `host:port`, resolving the name the way the network does.
    fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// The production network: tokio TCP with `TCP_NODELAY` on every socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNetwork;

impl Network for TokioNetwork {
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(addr).await
    }

    async fn bind_shared(&self, addr: SocketAddr) -> io::Result<Self::Listener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }

    async fn accept(&self, listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, a) = listener.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, a))
    }

    fn local_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn reset_on_close(stream: &Self::Stream) {
        // SO_LINGER 0: close() sends RST and drops unsent data.
        let _ = stream.set_zero_linger();
    }

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Stream> {
        let s = tokio::net::TcpStream::connect((host, port)).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}
