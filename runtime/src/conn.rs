//! Socket plumbing shared by client and upstream connections: a boxed stream type that
//! hides TLS, the writer task that drains a queue of buffers with vectored writes, and the
//! reader loop that splits frames off the socket.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use warren_core::frame::{Frame, FrameDecoder, FrameError};

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

/// Buffers read per batch handed to a hub.
pub(crate) type FrameBatch = SmallVec<[Frame; 8]>;

/// A connection's write queue: buffers from the hub, drained by the writer task. Cheaper per
/// connection than a channel (nothing is allocated until something is queued), which matters
/// for tens of thousands of idle clients (P6).
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the writer when something is queued or the last sink goes away.
    wake: Notify,
    /// Wakes a hub waiting for a congested queue to drain.
    drained: Notify,
    queued: AtomicUsize,
    /// Bytes the socket has taken so far: the client's progress (B9).
    written: AtomicU64,
}

#[derive(Debug, Default)]
struct QueueState {
    bufs: VecDeque<Bytes>,
    /// Live [`Sink`]s; at zero the writer flushes and closes the socket.
    senders: usize,
    /// The writer has stopped; sends fail.
    writer_gone: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding this lock; recover anyway rather than spread a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side of a connection's write queue. When the last clone is dropped the writer
/// flushes what is queued, shuts the socket down and cancels its token.
#[derive(Debug)]
pub(crate) struct Sink {
    q: Arc<Queue>,
}

impl Clone for Sink {
    fn clone(&self) -> Self {
        self.q.lock().senders += 1;
        Sink { q: self.q.clone() }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let last = {
            let mut st = self.q.lock();
            st.senders -= 1;
            st.senders == 0
        };
        if last {
            self.q.wake.notify_one();
        }
    }
}

impl Sink {
    /// Queues a buffer; returns the bytes now queued, or `None` if the writer is gone.
    pub(crate) fn send(&self, data: Bytes) -> Option<usize> {
        let len = data.len();
        let before = {
            let mut st = self.q.lock();
            if st.writer_gone {
                return None;
            }
            // Counted before the writer can see it, so the count never underflows.
            let before = self.q.queued.fetch_add(len, Ordering::Relaxed);
            st.bufs.push_back(data);
            before
        };
        self.q.wake.notify_one();
        Some(before + len)
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.q.queued.load(Ordering::Relaxed)
    }

    /// Bytes written to the socket so far.
    pub(crate) fn written(&self) -> u64 {
        self.q.written.load(Ordering::Relaxed)
    }

    /// Resolves when the writer has drained below half of `high` (or is gone).
    pub(crate) async fn drained_below(&self, high: usize) {
        loop {
            let notified = self.q.drained.notified();
            if self.queued() < high / 2 || self.q.lock().writer_gone {
                return;
            }
            notified.await;
        }
    }
}

/// What the writer found in its queue. The batch is on the heap only while it is being
/// written, so an idle writer task stays small.
enum Next {
    Write(Vec<Bytes>),
    Close,
}

/// Takes up to a batch of buffers, or reports that the last sender is gone.
fn next_batch(q: &Queue) -> Option<Next> {
    let mut st = q.lock();
    if st.bufs.is_empty() {
        if st.senders == 0 {
            return Some(Next::Close);
        }
        if st.bufs.capacity() > 64 {
            // A burst is over; give the memory back.
            st.bufs.shrink_to(8);
        }
        return None;
    }
    let n = st.bufs.len().min(MAX_IOVECS);
    Some(Next::Write(st.bufs.drain(..n).collect()))
}

/// How long a closing connection may take to write what is still queued.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Buffers written per vectored write.
const MAX_IOVECS: usize = 64;

/// Starts a writer task for `w`: it writes queued buffers in vectored batches, and when the
/// last [`Sink`] is dropped it flushes, shuts the socket down and cancels `done`. If it has to
/// stop with bytes still unwritten (cancelled, or the peer does not read while it closes), it
/// sets `reset`, so the socket is reset rather than left lingering.
pub(crate) fn spawn_writer(
    mut w: WriteHalf<BoxStream>,
    done: CancellationToken,
    reset: Option<Arc<AtomicBool>>,
    low_water_wake: usize,
) -> Sink {
    let q = Arc::new(Queue {
        state: Mutex::new(QueueState {
            senders: 1,
            ..QueueState::default()
        }),
        wake: Notify::new(),
        drained: Notify::new(),
        queued: AtomicUsize::new(0),
        written: AtomicU64::new(0),
    });
    let sink = Sink { q: q.clone() };
    tokio::spawn(async move {
        // Set once the last sink is gone: what is still queued gets this long to be written.
        let mut give_up: Option<tokio::time::Instant> = None;
        // Whether everything queued was written and the socket shut down in order.
        let mut clean = false;
        loop {
            let batch = match next_batch(&q) {
                Some(Next::Write(batch)) => batch,
                Some(Next::Close) => {
                    clean = tokio::time::timeout(FLUSH_TIMEOUT, w.shutdown())
                        .await
                        .is_ok();
                    break;
                }
                None => {
                    tokio::select! {
                        biased;
                        _ = done.cancelled() => break,
                        _ = q.wake.notified() => continue,
                    }
                }
            };
            let bytes: usize = batch.iter().map(Bytes::len).sum();
            // Boxed: its iovec array would otherwise enlarge every idle writer.
            let mut write = Box::pin(write_batch(&mut w, &batch, &q.written));
            let res = loop {
                tokio::select! {
                    biased;
                    _ = done.cancelled() => break None,
                    r = &mut write => break Some(r),
                    _ = q.wake.notified(), if give_up.is_none() => {
                        if q.lock().senders == 0 {
                            give_up = Some(tokio::time::Instant::now() + FLUSH_TIMEOUT);
                        }
                    }
                    _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => {
                        // A peer that does not read while being closed is not waited for.
                        break None;
                    }
                }
            };
            let Some(res) = res else { break };
            let left = q.queued.fetch_sub(bytes, Ordering::Relaxed) - bytes;
            if left < low_water_wake {
                q.drained.notify_waiters();
            }
            if res.is_err() {
                break;
            }
        }
        if !clean {
            // Cancelled, given up on, or broken: the kernel may still hold bytes the peer is
            // not reading, and an orderly close would wait behind them.
            if let Some(reset) = &reset {
                reset.store(true, Ordering::Relaxed);
            }
        }
        {
            let mut st = q.lock();
            st.writer_gone = true;
            st.bufs = VecDeque::new();
        }
        q.drained.notify_waiters();
        done.cancel();
    });
    sink
}

/// Writes every buffer of `batch` with as few syscalls as the stream allows, counting each
/// write into `written` as it happens (a slow reader's progress shows within a batch).
async fn write_batch(
    w: &mut WriteHalf<BoxStream>,
    batch: &[Bytes],
    written: &AtomicU64,
) -> io::Result<()> {
    let mut idx = 0;
    let mut offset = 0;
    while idx < batch.len() {
        let slices: SmallVec<[IoSlice<'_>; 16]> = std::iter::once(&batch[idx][offset..])
            .chain(batch[idx + 1..].iter().map(|b| &b[..]))
            .map(IoSlice::new)
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written.fetch_add(n as u64, Ordering::Relaxed);
        while n > 0 && idx < batch.len() {
            let left = batch[idx].len() - offset;
            if n >= left {
                n -= left;
                idx += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    w.flush().await
}

/// Why a reader stopped.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The peer closed or the socket failed.
    Closed(String),
    /// The byte stream broke the framing rules.
    Frame(FrameError),
    /// The connection was cancelled from our side.
    Cancelled,
}

/// Reads whole frames from `r` and hands them to `deliver` in batches (everything one read
/// produced), until the peer closes, the framing breaks, or `cancel` fires. `buf` may hold
/// bytes already read.
pub(crate) async fn read_frames<F, Fut>(
    r: &mut ReadHalf<BoxStream>,
    mut buf: BytesMut,
    decoder: FrameDecoder,
    cancel: &CancellationToken,
    mut deliver: F,
) -> ReadEnd
where
    F: FnMut(FrameBatch) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut chunk = MIN_READ_CHUNK;
    loop {
        let mut batch = FrameBatch::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => batch.push(f),
                Ok(None) => break,
                Err(e) => {
                    if !batch.is_empty() {
                        deliver(batch).await;
                    }
                    return ReadEnd::Frame(e);
                }
            }
        }
        if !batch.is_empty() && !deliver(batch).await {
            return ReadEnd::Cancelled;
        }
        // Idle connections keep a small buffer; busy ones grow it so a read carries more.
        let spare = buf.capacity() - buf.len();
        if spare < chunk / 4 {
            buf.reserve(chunk);
        }
        let spare = buf.capacity() - buf.len();
        let n = tokio::select! {
            biased;
            _ = cancel.cancelled() => return ReadEnd::Cancelled,
            n = r.read_buf(&mut buf) => n,
        };
        match n {
            Ok(0) => return ReadEnd::Closed("connection closed by peer".into()),
            Ok(n) if n == spare => chunk = (chunk * 2).min(MAX_READ_CHUNK),
            Ok(_) => {}
            Err(e) => return ReadEnd::Closed(e.to_string()),
        }
    }
}

/// Bytes reserved for the first read of a connection: small, because most clients are idle
/// most of the time (P6).
pub(crate) const MIN_READ_CHUNK: usize = 1024;
/// Largest read buffer growth step for busy connections.
const MAX_READ_CHUNK: usize = 128 * 1024;
