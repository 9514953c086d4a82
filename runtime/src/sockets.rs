//! Many sockets polled by one task, each with its own waker: the task that owns them wakes
//! once for whichever became ready, reads what arrived and writes straight to the socket,
//! without a reader or writer task per connection.
//!
//! A write is tried the moment it is queued (with the socket's own waker, so a full socket
//! wakes the owner when it drains); a read happens when the socket's waker fires. This is how
//! the admission task runs every client handshake and every broker login it owns.

use crate::conn::BoxStream;
use bytes::{Bytes, BytesMut};
use slab::Slab;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::AsyncWrite;

/// Bytes read per read call (the buffer grows by this much when it is full).
const READ_CHUNK: usize = 4096;
/// How long a socket asked to close may take to write what is queued for it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened to a socket of the set.
#[derive(Debug)]
pub(crate) enum SocketEvent<T> {
    /// New bytes are at the end of its read buffer ([`SocketSet::read_buf`]).
    Readable(usize, T),
    /// It closed or failed and is gone from the set.
    Closed(T, String),
}

/// The ready list the sockets' wakers push to, and the owner task's waker.
#[derive(Default)]
struct Ready {
    state: Mutex<ReadyState>,
}

#[derive(Default)]
struct ReadyState {
    keys: Vec<(usize, u64)>,
    task: Option<Waker>,
}

impl Ready {
    fn push(&self, key: usize, gen: u64) {
        let task = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.keys.push((key, gen));
            st.task.take()
        };
        if let Some(t) = task {
            t.wake();
        }
    }
}

/// A socket's waker: marks that socket ready and wakes the owner.
struct SocketWaker {
    key: usize,
    gen: u64,
    ready: Arc<Ready>,
}

impl Wake for SocketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.key, self.gen);
    }
}

struct Slot<T> {
    tag: T,
    gen: u64,
    stream: BoxStream,
    rbuf: BytesMut,
    wq: VecDeque<Bytes>,
    waker: Waker,
    /// Asked to close: flush, shut down, drop; given up on at this time.
    closing: Option<tokio::time::Instant>,
}

/// The sockets of one task.
pub(crate) struct SocketSet<T> {
    slots: Slab<Slot<T>>,
    ready: Arc<Ready>,
    next_gen: u64,
    /// Events found outside [`SocketSet::poll_event`] (a write that failed when queued).
    pending: VecDeque<SocketEvent<T>>,
}

impl<T: Copy> SocketSet<T> {
    pub(crate) fn new() -> Self {
        SocketSet {
            slots: Slab::new(),
            ready: Arc::new(Ready::default()),
            next_gen: 0,
            pending: VecDeque::new(),
        }
    }

    /// Sockets in the set.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Adds a socket (with bytes already read from it, if any); it is read at the next poll.
    pub(crate) fn insert(&mut self, tag: T, stream: BoxStream, rbuf: BytesMut) -> usize {
        self.next_gen += 1;
        let gen = self.next_gen;
        let key = self.slots.vacant_key();
        let waker = Waker::from(Arc::new(SocketWaker {
            key,
            gen,
            ready: self.ready.clone(),
        }));
        self.slots.insert(Slot {
            tag,
            gen,
            stream,
            rbuf,
            wq: VecDeque::new(),
            waker,
            closing: None,
        });
        self.ready.push(key, gen);
        key
    }

    /// The socket's read buffer: bytes read and not yet taken by the owner.
    pub(crate) fn read_buf(&mut self, key: usize) -> Option<&mut BytesMut> {
        self.slots.get_mut(key).map(|s| &mut s.rbuf)
    }

    /// Queues bytes and writes what the socket takes right away.
    pub(crate) fn send(&mut self, key: usize, data: Bytes) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        slot.wq.push_back(data);
        if let Err(e) = flush(slot) {
            let tag = slot.tag;
            self.slots.remove(key);
            self.pending
                .push_back(SocketEvent::Closed(tag, e.to_string()));
            self.ready.push(usize::MAX, 0);
        }
    }

    /// Writes what is queued, shuts the socket down and drops it (in the background if the
    /// peer is slow to take the bytes; given up on after a few seconds).
    pub(crate) fn close(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        slot.closing = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
        if self.finish_close(key) {
            self.slots.remove(key);
        }
    }

    /// Removes a socket to hand it to another task: its stream, the bytes read and not
    /// taken, and the bytes queued and not yet written.
    pub(crate) fn take(&mut self, key: usize) -> Option<(T, BoxStream, BytesMut, VecDeque<Bytes>)> {
        self.slots
            .try_remove(key)
            .map(|s| (s.tag, s.stream, s.rbuf, s.wq))
    }

    /// The earliest moment a closing socket is given up on.
    pub(crate) fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.slots.iter().filter_map(|(_, s)| s.closing).min()
    }

    /// Drops closing sockets whose time is up.
    pub(crate) fn reap(&mut self, now: tokio::time::Instant) {
        self.slots
            .retain(|_, s| s.closing.is_none_or(|at| at > now));
    }

    /// The next event, waking the task when one is ready.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<SocketEvent<T>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Poll::Ready(ev);
            }
            let keys = {
                let mut st = self.ready.state.lock().unwrap_or_else(|e| e.into_inner());
                st.task = Some(cx.waker().clone());
                std::mem::take(&mut st.keys)
            };
            if keys.is_empty() {
                return Poll::Pending;
            }
            let mut seen: SmallVec<[usize; 16]> = SmallVec::new();
            for (key, gen) in keys {
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                if self.slots.get(key).is_some_and(|s| s.gen == gen) {
                    self.poll_slot(key);
                }
            }
        }
    }

    /// Writes, then reads, one ready socket; what happened goes to `pending`.
    fn poll_slot(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.closing.is_some() {
            if self.finish_close(key) {
                self.slots.remove(key);
            }
            return;
        }
        if let Err(e) = flush(slot) {
            let tag = slot.tag;
            self.slots.remove(key);
            return self
                .pending
                .push_back(SocketEvent::Closed(tag, e.to_string()));
        }
        if slot.rbuf.capacity() - slot.rbuf.len() < READ_CHUNK / 4 {
            slot.rbuf.reserve(READ_CHUNK);
        }
        let waker = slot.waker.clone();
        let mut cx = Context::from_waker(&waker);
        let res =
            tokio_util::io::poll_read_buf(Pin::new(&mut slot.stream), &mut cx, &mut slot.rbuf);
        match res {
            Poll::Pending => {}
            Poll::Ready(Ok(0)) => {
                let tag = slot.tag;
                self.slots.remove(key);
                self.pending
                    .push_back(SocketEvent::Closed(tag, "connection closed by peer".into()));
            }
            Poll::Ready(Ok(_)) => {
                // Read again on the next round: readiness is re-armed only by a read that
                // would block.
                let (tag, gen) = (slot.tag, slot.gen);
                self.pending.push_back(SocketEvent::Readable(key, tag));
                self.ready.push(key, gen);
            }
            Poll::Ready(Err(e)) => {
                let tag = slot.tag;
                self.slots.remove(key);
                self.pending
                    .push_back(SocketEvent::Closed(tag, e.to_string()));
            }
        }
    }

    /// Progress on a closing socket; true once it can be dropped.
    fn finish_close(&mut self, key: usize) -> bool {
        let Some(slot) = self.slots.get_mut(key) else {
            return false;
        };
        match flush(slot) {
            Err(_) => true,
            Ok(false) => false,
            Ok(true) => {
                let waker = slot.waker.clone();
                let mut cx = Context::from_waker(&waker);
                !matches!(
                    Pin::new(&mut slot.stream).poll_shutdown(&mut cx),
                    Poll::Pending
                )
            }
        }
    }
}

/// Writes what the socket takes now; true once nothing is left.
fn flush<T>(slot: &mut Slot<T>) -> io::Result<bool> {
    let waker = slot.waker.clone();
    let mut cx = Context::from_waker(&waker);
    while !slot.wq.is_empty() {
        let res = {
            let slices: SmallVec<[IoSlice<'_>; 16]> =
                slot.wq.iter().take(16).map(|b| IoSlice::new(b)).collect();
            Pin::new(&mut slot.stream).poll_write_vectored(&mut cx, &slices)
        };
        match res {
            Poll::Pending => return Ok(false),
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(mut n)) => {
                while n > 0 {
                    let Some(front) = slot.wq.front_mut() else {
                        break;
                    };
                    if n >= front.len() {
                        n -= front.len();
                        slot.wq.pop_front();
                    } else {
                        let _ = front.split_to(n);
                        n = 0;
                    }
                }
            }
            Poll::Ready(Err(e)) => return Err(e),
        }
    }
    match Pin::new(&mut slot.stream).poll_flush(&mut cx) {
        Poll::Ready(Err(e)) => Err(e),
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Pending => Ok(false),
    }
}
