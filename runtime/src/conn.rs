//! Socket plumbing shared by client and upstream connections: a boxed stream type that
//! hides TLS, the writer task that drains a queue of buffers with vectored writes, and the
//! reader loop that splits frames off the socket.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use warren_core::frame::{Frame, FrameDecoder, FrameError};

/// Any byte stream, plain or TLS, behind one type.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A connection's stream, boxed so plain and TLS sockets share the code.
pub(crate) type BoxStream = Box<dyn Stream>;

/// Buffers read per batch handed to a hub.
pub(crate) type FrameBatch = SmallVec<[Frame; 8]>;

/// The sending side of a connection's write queue, with its queued byte count.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

impl Sink {
    /// Queues a buffer; returns the bytes now queued, or `None` if the writer is gone.
    pub(crate) fn send(&self, data: Bytes) -> Option<usize> {
        let len = data.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if self.tx.send(data).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return None;
        }
        Some(before + len)
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Resolves when the writer has drained below half of `high`.
    pub(crate) async fn drained_below(&self, high: usize) {
        loop {
            let notified = self.drained.notified();
            if self.queued() < high / 2 || self.tx.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

/// Starts a writer task for `w`: it writes queued buffers in vectored batches, and when the
/// last [`Sink`] is dropped it flushes, shuts the socket down and cancels `done`.
pub(crate) fn spawn_writer(
    mut w: WriteHalf<BoxStream>,
    done: CancellationToken,
    low_water_wake: usize,
) -> Sink {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let queued = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(Notify::new());
    let sink = Sink {
        tx,
        queued: queued.clone(),
        drained: drained.clone(),
    };
    tokio::spawn(async move {
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            let n = tokio::select! {
                biased;
                _ = done.cancelled() => break,
                n = rx.recv_many(&mut batch, 64) => n,
            };
            if n == 0 {
                let _ = w.shutdown().await;
                break;
            }
            let bytes: usize = batch.iter().map(Bytes::len).sum();
            let res = tokio::select! {
                biased;
                _ = done.cancelled() => break,
                r = write_batch(&mut w, &batch) => r,
            };
            batch.clear();
            let left = queued.fetch_sub(bytes, Ordering::Relaxed) - bytes;
            if left < low_water_wake {
                drained.notify_waiters();
            }
            if res.is_err() {
                break;
            }
        }
        drained.notify_waiters();
        done.cancel();
    });
    sink
}

/// Writes every buffer of `batch` with as few syscalls as the stream allows.
async fn write_batch(w: &mut WriteHalf<BoxStream>, batch: &[Bytes]) -> io::Result<()> {
    let mut idx = 0;
    let mut offset = 0;
    while idx < batch.len() {
        let slices: SmallVec<[IoSlice<'_>; 64]> = std::iter::once(&batch[idx][offset..])
            .chain(batch[idx + 1..].iter().map(|b| &b[..]))
            .map(IoSlice::new)
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
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
pub(crate) const MIN_READ_CHUNK: usize = 2 * 1024;
/// Largest read buffer growth step for busy connections.
const MAX_READ_CHUNK: usize = 128 * 1024;
