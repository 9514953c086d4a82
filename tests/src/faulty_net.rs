//! A network for warren that breaks sockets on demand: once broken, a socket's writes fail
//! and its reads wait forever, the way a connection looks from one side when the peer's
//! reset has reached the writer first. Lets a test put warren in that state at will.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use warren_runtime::net::{Network, TokioNetwork};

/// [`TokioNetwork`] whose broker connections, or chosen client connections, can be broken.
#[derive(Debug, Clone, Default)]
pub struct BreakableNetwork {
    /// Shared by every broker connection.
    upstream: Arc<AtomicBool>,
    /// One switch per accepted client connection, by the client's address.
    clients: Arc<Mutex<HashMap<SocketAddr, Arc<AtomicBool>>>>,
}

impl BreakableNetwork {
    /// From now on, every broker connection fails its writes and never reads again.
    pub fn break_upstreams(&self) {
        self.upstream.store(true, Ordering::SeqCst);
    }

    /// From now on, the connection of the client at `peer` fails its writes and never reads
    /// again. Returns whether such a client connection was accepted.
    pub fn break_client(&self, peer: SocketAddr) -> bool {
        let clients = self.clients.lock().expect("switches");
        clients
            .get(&peer)
            .map(|s| s.store(true, Ordering::SeqCst))
            .is_some()
    }
}

/// A TCP stream with a switch (see the module).
#[derive(Debug)]
pub struct Breakable {
    inner: TcpStream,
    broken: Arc<AtomicBool>,
}

impl Breakable {
    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }
}

fn broken_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "broken by the test")
}

impl AsyncRead for Breakable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_broken() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Breakable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_broken() {
            return Poll::Ready(Err(broken_pipe()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_broken() {
            return Poll::Ready(Err(broken_pipe()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Network for BreakableNetwork {
    type Stream = Breakable;
    type Listener = TcpListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        TokioNetwork.bind(addr).await
    }

    async fn accept(&self, listener: &TcpListener) -> io::Result<(Breakable, SocketAddr)> {
        let (inner, peer) = TokioNetwork.accept(listener).await?;
        let broken = Arc::new(AtomicBool::new(false));
        self.clients
            .lock()
            .expect("switches")
            .insert(peer, broken.clone());
        Ok((Breakable { inner, broken }, peer))
    }

    fn local_addr(&self, listener: &TcpListener) -> io::Result<SocketAddr> {
        TokioNetwork.local_addr(listener)
    }

    fn reset_on_close(stream: &Breakable) {
        TokioNetwork::reset_on_close(&stream.inner);
    }

    async fn connect(&self, host: &str, port: u16) -> io::Result<Breakable> {
        let inner = TokioNetwork.connect(host, port).await?;
        Ok(Breakable {
            inner,
            broken: self.upstream.clone(),
        })
    }
}
