//! The stream type every connection shares: a boxed stream that hides TLS, and a wrapper that
//! resets the socket instead of lingering when it is dropped (for peers that stopped reading).
//! Reading and writing are [`crate::sockets`]'s. [`ClientCount`] is a client connection's slot
//! in the count that `max_clients` limits.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Any byte stream, plain or TLS, behind one type.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A connection's stream, boxed so plain and TLS sockets share the code.
pub(crate) type BoxStream = Box<dyn Stream>;

/// A socket that can be told, while its halves are spread over tasks, to reset instead of
/// lingering when it is finally dropped (see [`crate::net::Network::reset_on_close`]).
pub(crate) struct Resettable<S> {
    inner: S,
    reset: Arc<AtomicBool>,
    on_reset: fn(&S),
}

impl<S> Resettable<S> {
    /// Wraps `inner`; setting `reset` before the drop makes the drop call `on_reset` first.
    pub(crate) fn new(inner: S, reset: Arc<AtomicBool>, on_reset: fn(&S)) -> Self {
        Resettable {
            inner,
            reset,
            on_reset,
        }
    }
}

impl<S> Drop for Resettable<S> {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            (self.on_reset)(&self.inner);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Resettable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Resettable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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

/// Holds one slot of the connected-clients count for as long as the connection lives.
pub(crate) struct ClientCount(Arc<AtomicUsize>);

impl ClientCount {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        ClientCount(count.clone())
    }
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
