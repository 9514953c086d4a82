//! The scripted broker behind each upstream of the `hub_client` target: it answers what a
//! RabbitMQ would, owes replies until the input lets it send them, and keeps exclusive
//! queues.

use super::*;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use warren_core::content::parse_header;
use warren_core::frame::{method_frame, Frame, FrameType, FRAME_MIN_SIZE};
use warren_core::hub::UpstreamId;
use warren_core::method::{self, encode, ids, Method, MethodId};
use warren_core::wire::Reader;

/// The scripted broker behind one upstream.
pub(super) struct Broker {
    pub(super) id: UpstreamId,
    pub(super) check: UpstreamChecker,
    /// Replies owed to warren, in the order RabbitMQ would send them.
    pub(super) pending: VecDeque<Owed>,
    /// Exclusive queues alive on this connection (they die with it).
    pub(super) exclusive: BTreeSet<Vec<u8>>,
    /// The last queue declared on each channel, which an empty queue name stands for.
    pub(super) last_queue: BTreeMap<u16, Vec<u8>>,
    /// Next publisher-confirm sequence number of channels in confirm mode.
    pub(super) confirms: BTreeMap<u16, u64>,
    /// Publishes whose content is arriving.
    pub(super) publishing: BTreeMap<u16, Publishing>,
    /// Delivery tags handed out per channel.
    pub(super) deliveries: BTreeMap<u16, u64>,
    /// Counter for server-chosen names.
    pub(super) names: u64,
    /// The hub closed the socket.
    pub(super) gone: bool,
}

/// A reply the broker owes, and the exclusive queue that exists once it is sent (a
/// `declare-ok`); a reply dropped by a channel error takes its queue with it.
pub(super) struct Owed {
    pub(super) frame: Bytes,
    pub(super) creates: Option<Vec<u8>>,
}

/// A publish the broker is receiving.
pub(super) struct Publishing {
    /// Mandatory to an empty routing key: the broker returns it.
    pub(super) returned: bool,
    /// Body bytes still owed; `None` before the header.
    pub(super) owed: Option<u64>,
}

impl Broker {
    pub(super) fn new(id: UpstreamId, extra_types: &[String]) -> Self {
        Broker {
            id,
            check: UpstreamChecker::new(extra_types),
            pending: VecDeque::new(),
            exclusive: BTreeSet::new(),
            last_queue: BTreeMap::new(),
            confirms: BTreeMap::new(),
            publishing: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            names: 0,
            gone: false,
        }
    }

    pub(super) fn owe(&mut self, frame: Bytes) {
        self.pending.push_back(Owed {
            frame,
            creates: None,
        });
    }

    /// Sends the first `n` replies owed: the queues they declare come to exist.
    pub(super) fn take(&mut self, n: usize) -> Vec<Bytes> {
        let n = n.min(self.pending.len());
        let mut out = Vec::with_capacity(n);
        for owed in self.pending.drain(..n) {
            if let Some(q) = owed.creates {
                self.exclusive.insert(q);
            }
            out.push(owed.frame);
        }
        out
    }

    pub(super) fn forget(&mut self, ch: u16) {
        self.last_queue.remove(&ch);
        self.confirms.remove(&ch);
        self.publishing.remove(&ch);
        self.deliveries.remove(&ch);
    }

    pub(super) fn name(&mut self, prefix: &str) -> Vec<u8> {
        self.names += 1;
        format!("{prefix}{}", self.names).into_bytes()
    }

    /// Owes what RabbitMQ answers to a frame warren sent (already checked).
    pub(super) fn react(&mut self, f: &Frame) {
        let ch = f.channel();
        match f.kind() {
            FrameType::Heartbeat => {}
            FrameType::Header => {
                let size = parse_header(f.payload()).map_or(0, |h| h.body_size);
                if let Some(p) = self.publishing.get_mut(&ch) {
                    p.owed = Some(size);
                }
                if size == 0 {
                    self.published(ch);
                }
            }
            FrameType::Body => {
                let n = f.payload().len() as u64;
                let done = match self.publishing.get_mut(&ch) {
                    Some(Publishing {
                        owed: Some(rest), ..
                    }) => {
                        *rest = rest.saturating_sub(n);
                        *rest == 0
                    }
                    _ => false,
                };
                if done {
                    self.published(ch);
                }
            }
            FrameType::Method => self.method(f),
        }
    }

    pub(super) fn method(&mut self, f: &Frame) {
        let ch = f.channel();
        let Ok((mid, args)) = method::split_payload(f.payload()) else {
            return;
        };
        let m = method::decode(f.payload()).unwrap_or(Method::Other(mid));
        let ok = |class: u16, method: u16| method_frame(ch, MethodId::new(class, method), |_| {});
        match mid {
            ids::CONNECTION_CLOSE => self.owe(encode::close_ok(0)),
            ids::CHANNEL_OPEN => self.owe(encode::channel_open_ok(ch)),
            ids::CHANNEL_CLOSE => {
                self.forget(ch);
                self.owe(encode::close_ok(ch));
            }
            ids::CHANNEL_CLOSE_OK => self.forget(ch),
            ids::CHANNEL_FLOW => self.owe(encode::flow(ch, true, true)),
            ACCESS_REQUEST => self.owe(method_frame(ch, MethodId::new(30, 11), |w| {
                w.u16(1);
            })),
            ids::EXCHANGE_DECLARE if !flag(args, 1, 2, 4) => self.owe(ok(40, 11)),
            ids::EXCHANGE_DELETE if !flag(args, 1, 1, 1) => self.owe(ok(40, 21)),
            ids::EXCHANGE_BIND if !flag(args, 1, 3, 0) => self.owe(ok(40, 31)),
            ids::EXCHANGE_UNBIND if !flag(args, 1, 3, 0) => self.owe(ok(40, 51)),
            ids::QUEUE_DECLARE => {
                let Method::QueueDeclare {
                    queue,
                    passive,
                    exclusive,
                    nowait,
                } = m
                else {
                    return;
                };
                let queue = match (queue.is_empty(), passive) {
                    (false, _) => queue,
                    (true, false) => self.name("amq.gen-"),
                    (true, true) => self.last_queue.get(&ch).cloned().unwrap_or_default(),
                };
                self.last_queue.insert(ch, queue.clone());
                let creates = (exclusive && !passive).then(|| queue.clone());
                if nowait {
                    if let Some(q) = creates {
                        self.exclusive.insert(q);
                    }
                } else {
                    self.pending.push_back(Owed {
                        frame: method_frame(ch, ids::QUEUE_DECLARE_OK, |w| {
                            w.shortstr(&queue).u32(0).u32(0);
                        }),
                        creates,
                    });
                }
            }
            ids::QUEUE_BIND if !flag(args, 1, 3, 0) => self.owe(ok(50, 21)),
            ids::QUEUE_PURGE if !flag(args, 1, 1, 0) => {
                self.owe(method_frame(ch, MethodId::new(50, 31), |w| {
                    w.u32(0);
                }));
            }
            ids::QUEUE_DELETE => {
                if let Method::QueueDelete { queue } = m {
                    let queue = match queue.is_empty() {
                        true => self.last_queue.get(&ch).cloned().unwrap_or_default(),
                        false => queue,
                    };
                    self.exclusive.remove(&queue);
                }
                if !flag(args, 1, 1, 2) {
                    self.owe(method_frame(ch, ids::QUEUE_DELETE_OK, |w| {
                        w.u32(0);
                    }));
                }
            }
            ids::QUEUE_UNBIND => self.owe(ok(50, 51)),
            ids::BASIC_QOS => self.owe(ok(60, 11)),
            ids::BASIC_CONSUME => {
                if let Method::Consume { tag, nowait: false } = m {
                    let tag = if tag.is_empty() {
                        self.name("amq.ctag-")
                    } else {
                        tag
                    };
                    self.owe(method_frame(ch, ids::BASIC_CONSUME_OK, |w| {
                        w.shortstr(&tag);
                    }));
                }
            }
            ids::BASIC_CANCEL if !flag(args, 0, 1, 0) => {
                if let Method::Cancel { tag } = m {
                    self.owe(method_frame(ch, ids::BASIC_CANCEL_OK, |w| {
                        w.shortstr(&tag);
                    }));
                }
            }
            ids::BASIC_PUBLISH => {
                let mut r = Reader::new(args);
                let _ = r.u16();
                let _ = r.shortstr();
                let empty_key = r.shortstr().is_ok_and(<[u8]>::is_empty);
                let mandatory = r.bit().unwrap_or(false);
                self.publishing.insert(
                    ch,
                    Publishing {
                        returned: mandatory && empty_key,
                        owed: None,
                    },
                );
            }
            ids::BASIC_GET => {
                let mut r = Reader::new(args);
                let _ = r.u16();
                if r.shortstr().is_ok_and(<[u8]>::is_empty) {
                    self.owe(method_frame(ch, MethodId::new(60, 72), |w| {
                        w.shortstr(b"");
                    }));
                } else {
                    let tag = self.next_delivery(ch);
                    self.owe(method_frame(ch, ids::BASIC_GET_OK, |w| {
                        w.u64(tag).bit(false).shortstr(b"").shortstr(b"q").u32(0);
                    }));
                    let max = self.frame_max();
                    for f in content(ch, b"fz-get", max) {
                        self.owe(f);
                    }
                }
            }
            ids::BASIC_RECOVER => self.owe(ok(60, 111)),
            ids::CONFIRM_SELECT => {
                self.confirms.entry(ch).or_insert(0);
                if !flag(args, 0, 0, 0) {
                    self.owe(ok(85, 11));
                }
            }
            ids::TX_SELECT => self.owe(ok(90, 11)),
            ids::TX_COMMIT => self.owe(ok(90, 21)),
            ids::TX_ROLLBACK => self.owe(ok(90, 31)),
            _ => {}
        }
    }

    /// A publish is complete: return it if it was unroutable and mandatory, confirm it if the
    /// channel is in confirm mode.
    pub(super) fn published(&mut self, ch: u16) {
        let Some(p) = self.publishing.remove(&ch) else {
            return;
        };
        if p.returned {
            self.owe(method_frame(ch, ids::BASIC_RETURN, |w| {
                w.u16(312).shortstr(b"NO_ROUTE").shortstr(b"").shortstr(b"");
            }));
            let max = self.frame_max();
            for f in content(ch, b"returned", max) {
                self.owe(f);
            }
        }
        if let Some(seq) = self.confirms.get_mut(&ch) {
            *seq += 1;
            let tag = *seq;
            self.owe(method_frame(ch, ids::BASIC_ACK, |w| {
                w.u64(tag).bit(false);
            }));
        }
    }

    pub(super) fn next_delivery(&mut self, ch: u16) -> u64 {
        let n = self.deliveries.entry(ch).or_insert(0);
        *n += 1;
        *n
    }

    pub(super) fn frame_max(&self) -> u32 {
        self.check
            .negotiated()
            .map_or(FRAME_MIN_SIZE, |t| t.frame_max)
    }

    /// Drops the replies owed on `ch` before the broker closes it: the close answers the
    /// first of those methods and RabbitMQ discards the rest. A `close-ok` for warren's own
    /// `channel.close` stays owed (crossing closes).
    pub(super) fn prune(&mut self, ch: u16) {
        self.pending.retain(|owed| {
            let f = &owed.frame;
            let same = f.get(1..3) == Some(&ch.to_be_bytes()[..]);
            let close_ok = f.get(7..11) == Some(&[0, 20, 0, 41][..]);
            !same || close_ok
        });
        self.forget(ch);
    }
}

/// Reads bit `bit` after `shorts` shorts and `strs` short strings; false if missing.
pub(super) fn flag(args: &[u8], shorts: usize, strs: usize, bit: usize) -> bool {
    let mut r = Reader::new(args);
    for _ in 0..shorts {
        let _ = r.u16();
    }
    for _ in 0..strs {
        let _ = r.shortstr();
    }
    for _ in 0..bit {
        let _ = r.bit();
    }
    r.bit().unwrap_or(false)
}

/// A header and body frames within `frame_max`.
pub(super) fn content(ch: u16, body: &[u8], frame_max: u32) -> Vec<Bytes> {
    let mut out = vec![header(ch, body.len() as u64)];
    let chunk = match frame_max {
        0 => body.len().max(1),
        m => (m as usize).saturating_sub(8).max(1),
    };
    for part in body.chunks(chunk) {
        out.push(Frame::new(FrameType::Body, ch, part).freeze());
    }
    out
}
