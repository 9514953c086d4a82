//! Many sockets polled by one task, each with its own waker: the task that owns them (the
//! admission task, a hub task) wakes once for whichever became ready, reads what arrived and
//! writes straight to the destination socket, without a reader or writer task per connection.
//! A frame crossing warren costs one task wake-up (P5).
//!
//! A write is tried the moment it is queued, with the socket's own waker, so a socket that is
//! full wakes its owner when it drains; what it does not take waits in the socket's queue
//! (bounded by the owner: the slow-client rule, the upstream high-water mark). A read happens
//! when the socket's waker fires. An idle socket holds no read buffer (P6).

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

/// The first read of a socket reserves this much; a socket whose reads fill the buffer
/// doubles it, up to [`MAX_READ_CHUNK`].
const MIN_READ_CHUNK: usize = 4096;
/// Largest read of a busy socket (a broker connection streaming large messages).
const MAX_READ_CHUNK: usize = 128 * 1024;
/// Buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;
/// Output staged during one burst up to this size is copied into one buffer before the write:
/// a burst of small frames costs one buffer, and a queued frame does not keep the whole read
/// buffer it was cut from alive while its reader is slow.
const COALESCE_MAX: usize = 64 * 1024;
/// How long a socket asked to close may take to write what is queued for it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened to a socket of the set.
#[derive(Debug)]
pub(crate) enum SocketEvent<T> {
    /// New bytes are at the end of its read buffer ([`SocketSet::read_buf`]).
    Readable(usize, T),
    /// Everything queued for it was written (it had to wait for room first).
    Drained(T),
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
    /// The size of its next read buffer.
    chunk: usize,
    wq: VecDeque<Bytes>,
    queued: usize,
    /// Buffers at the end of `wq` staged since the last [`SocketSet::flush_staged`].
    staged: u32,
    written: u64,
    waker: Waker,
    /// The last round of [`SocketSet::next_event`] that polled it.
    round: u64,
    /// Not read while set (its owner holds back input).
    paused: bool,
    /// Asked to close: flush, shut down, drop; given up on at this time.
    closing: Option<tokio::time::Instant>,
}

/// The sockets of one task.
pub(crate) struct SocketSet<T> {
    slots: Slab<Slot<T>>,
    ready: Arc<Ready>,
    next_gen: u64,
    /// The ready list being polled (kept for its capacity), and the round it is.
    polling: Vec<(usize, u64)>,
    round: u64,
    /// Sockets with staged output (key and generation).
    dirty: Vec<(usize, u64)>,
    /// Events found outside [`SocketSet::poll_event`] (a write that failed when queued).
    pending: VecDeque<SocketEvent<T>>,
}

impl<T: Copy> SocketSet<T> {
    pub(crate) fn new() -> Self {
        SocketSet {
            slots: Slab::new(),
            ready: Arc::new(Ready::default()),
            next_gen: 0,
            polling: Vec::new(),
            round: 0,
            dirty: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Sockets in the set.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Adds a socket, with bytes already read from it and bytes still to write to it; it is
    /// read (and written) at the next poll.
    pub(crate) fn insert(
        &mut self,
        tag: T,
        stream: BoxStream,
        rbuf: BytesMut,
        unsent: VecDeque<Bytes>,
    ) -> usize {
        self.next_gen += 1;
        let gen = self.next_gen;
        warren_core::growth::make_room(&mut self.slots);
        let key = self.slots.vacant_key();
        let waker = Waker::from(Arc::new(SocketWaker {
            key,
            gen,
            ready: self.ready.clone(),
        }));
        let queued = unsent.iter().map(Bytes::len).sum();
        self.slots.insert(Slot {
            tag,
            gen,
            stream,
            rbuf,
            chunk: MIN_READ_CHUNK,
            wq: unsent,
            queued,
            staged: 0,
            written: 0,
            round: 0,
            waker,
            paused: false,
            closing: None,
        });
        self.ready.push(key, gen);
        key
    }

    /// The socket's read buffer: bytes read and not yet taken by the owner.
    pub(crate) fn read_buf(&mut self, key: usize) -> Option<&mut BytesMut> {
        self.slots.get_mut(key).map(|s| &mut s.rbuf)
    }

    /// Gives back the read buffer's memory once the owner took every byte of it, so an idle
    /// socket holds none (P6).
    pub(crate) fn release_read_buf(&mut self, key: usize) {
        if let Some(s) = self.slots.get_mut(key) {
            if s.rbuf.is_empty() && s.rbuf.capacity() > 0 {
                s.rbuf = BytesMut::new();
            }
        }
    }

    /// Bytes queued for the socket and not yet written.
    pub(crate) fn queued(&self, key: usize) -> usize {
        self.slots.get(key).map_or(0, |s| s.queued)
    }

    /// Bytes the socket has taken so far: its reader's progress.
    pub(crate) fn written(&self, key: usize) -> u64 {
        self.slots.get(key).map_or(0, |s| s.written)
    }

    /// Stops reading the socket, or starts again.
    pub(crate) fn set_paused(&mut self, key: usize, paused: bool) {
        let Some(s) = self.slots.get_mut(key) else {
            return;
        };
        if s.paused && !paused {
            self.ready.push(key, s.gen);
        }
        s.paused = paused;
    }

    /// Queues a buffer for the next [`SocketSet::flush_staged`]: what a burst of events
    /// produces for a socket goes out in one vectored write.
    pub(crate) fn stage(&mut self, key: usize, data: Bytes) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.staged == 0 {
            self.dirty.push((key, slot.gen));
        }
        slot.staged += 1;
        slot.queued += data.len();
        slot.wq.push_back(data);
    }

    /// Writes what was staged since the last call, each socket's burst coalesced when small;
    /// the tags of the sockets written to are added to `flushed`.
    pub(crate) fn flush_staged(&mut self, flushed: &mut Vec<T>) {
        for (key, gen) in std::mem::take(&mut self.dirty) {
            let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) else {
                continue;
            };
            // A wake-up for room may have written some of the burst already.
            let n = (std::mem::take(&mut slot.staged) as usize).min(slot.wq.len());
            let tail = slot.wq.len() - n;
            let len: usize = slot.wq.range(tail..).map(Bytes::len).sum();
            if n > 1 && len <= COALESCE_MAX {
                let mut one = BytesMut::with_capacity(len);
                for b in slot.wq.drain(tail..) {
                    one.extend_from_slice(&b);
                }
                slot.wq.push_back(one.freeze());
            }
            if slot.closing.is_none() {
                flushed.push(slot.tag);
                self.write_now(key);
            }
        }
    }

    /// Queues one buffer and writes what the socket takes right away.
    pub(crate) fn send(&mut self, key: usize, data: Bytes) {
        self.send_all(key, std::iter::once(data));
    }

    /// Queues buffers and writes what the socket takes right away (vectored writes).
    pub(crate) fn send_all(&mut self, key: usize, data: impl IntoIterator<Item = Bytes>) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        for b in data {
            slot.queued += b.len();
            slot.wq.push_back(b);
        }
        self.write_now(key);
    }

    /// Writes what the socket takes of its queue; a failed write closes it (reported as an
    /// event, since the caller is not polling).
    fn write_now(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if let Err(e) = flush(slot) {
            let tag = slot.tag;
            self.slots.remove(key);
            self.pending
                .push_back(SocketEvent::Closed(tag, e.to_string()));
            self.ready.push(usize::MAX, 0);
        }
    }

    /// Writes what is queued, shuts the socket down and drops it (in the background if the
    /// peer is slow to take the bytes; given up on after a few seconds, see
    /// [`SocketSet::reap`]).
    pub(crate) fn close(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        slot.closing = Some(tokio::time::Instant::now() + CLOSE_TIMEOUT);
        if self.finish_close(key) {
            self.slots.remove(key);
        }
    }

    /// Removes a socket to hand it to another task (or to drop it at once): its stream, the
    /// bytes read and not taken, and the bytes queued and not yet written.
    pub(crate) fn take(&mut self, key: usize) -> Option<(T, BoxStream, BytesMut, VecDeque<Bytes>)> {
        self.slots
            .try_remove(key)
            .map(|s| (s.tag, s.stream, s.rbuf, s.wq))
    }

    /// The earliest moment a closing socket is given up on.
    pub(crate) fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.slots.iter().filter_map(|(_, s)| s.closing).min()
    }

    /// Removes the closing sockets whose time is up; the caller drops them (after marking them
    /// for a reset, if they are wrapped in one).
    pub(crate) fn reap(&mut self, now: tokio::time::Instant) -> Vec<(T, BoxStream)> {
        let due: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| s.closing.is_some_and(|at| at <= now))
            .map(|(k, _)| k)
            .collect();
        due.into_iter()
            .map(|k| {
                let s = self.slots.remove(k);
                (s.tag, s.stream)
            })
            .collect()
    }

    /// The next event if one is ready now, without registering the task for a wake-up.
    pub(crate) fn try_event(&mut self) -> Option<SocketEvent<T>> {
        self.next_event(None)
    }

    /// The next event, waking the task when one is ready.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<SocketEvent<T>> {
        match self.next_event(Some(cx.waker())) {
            Some(ev) => Poll::Ready(ev),
            None => Poll::Pending,
        }
    }

    /// Polls the sockets whose wakers fired until one has something to report; with `waker`,
    /// the task is woken when another fires.
    fn next_event(&mut self, waker: Option<&Waker>) -> Option<SocketEvent<T>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            let mut keys = std::mem::take(&mut self.polling);
            keys.clear();
            {
                let mut st = self.ready.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(w) = waker {
                    if !st.task.as_ref().is_some_and(|t| t.will_wake(w)) {
                        st.task = Some(w.clone());
                    }
                }
                std::mem::swap(&mut st.keys, &mut keys);
            }
            if keys.is_empty() {
                self.polling = keys;
                return None;
            }
            self.round += 1;
            for &(key, gen) in &keys {
                // A socket woken twice is polled once per round.
                let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) else {
                    continue;
                };
                if slot.round != self.round {
                    slot.round = self.round;
                    self.poll_slot(key);
                }
            }
            self.polling = keys;
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
        let had_queue = !slot.wq.is_empty();
        match flush(slot) {
            Err(e) => {
                let tag = slot.tag;
                self.slots.remove(key);
                return self
                    .pending
                    .push_back(SocketEvent::Closed(tag, e.to_string()));
            }
            Ok(true) if had_queue => self.pending.push_back(SocketEvent::Drained(slot.tag)),
            Ok(_) => {}
        }
        if slot.paused {
            return;
        }
        let spare = slot.rbuf.capacity() - slot.rbuf.len();
        if spare < slot.chunk / 4 {
            slot.rbuf.reserve(slot.chunk);
        }
        let spare = slot.rbuf.capacity() - slot.rbuf.len();
        let waker = slot.waker.clone();
        let mut cx = Context::from_waker(&waker);
        let res =
            tokio_util::io::poll_read_buf(Pin::new(&mut slot.stream), &mut cx, &mut slot.rbuf);
        match res {
            Poll::Pending => {
                // The socket waits: it keeps no empty buffers meanwhile (P6).
                if slot.rbuf.is_empty() {
                    slot.rbuf = BytesMut::new();
                }
                if slot.wq.is_empty() {
                    slot.wq = VecDeque::new();
                }
            }
            Poll::Ready(Ok(0)) => {
                let tag = slot.tag;
                self.slots.remove(key);
                self.pending
                    .push_back(SocketEvent::Closed(tag, "connection closed by peer".into()));
            }
            Poll::Ready(Ok(n)) => {
                if n == spare {
                    slot.chunk = (slot.chunk * 2).min(MAX_READ_CHUNK);
                }
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
    if slot.wq.is_empty() {
        return Ok(true);
    }
    let waker = slot.waker.clone();
    let mut cx = Context::from_waker(&waker);
    while !slot.wq.is_empty() {
        let res = {
            let slices: SmallVec<[IoSlice<'_>; MAX_IOVECS]> = slot
                .wq
                .iter()
                .take(MAX_IOVECS)
                .map(|b| IoSlice::new(b))
                .collect();
            Pin::new(&mut slot.stream).poll_write_vectored(&mut cx, &slices)
        };
        match res {
            Poll::Pending => return Ok(false),
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                slot.written += n as u64;
                slot.queued -= n;
                let mut n = n;
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
    if slot.wq.capacity() > 64 {
        // A burst is over; give the memory back.
        slot.wq.shrink_to(8);
    }
    match Pin::new(&mut slot.stream).poll_flush(&mut cx) {
        Poll::Ready(Err(e)) => Err(e),
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Pending => Ok(false),
    }
}
