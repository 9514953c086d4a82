//! Stream and quorum queues the hub has seen (B7). RabbitMQ 3.10 answers some methods on
//! them with a connection error (540), which through warren would close a shared broker
//! connection and every client on it:
//!
//! - on a stream: `basic.get`, a `basic.consume` without acknowledgements, `queue.purge`,
//!   and a `basic.nack` or `basic.reject` of its delivery; a 541 (the broker's channel
//!   crashes) for `basic.recover` while one is out and for a `basic.consume` whose
//!   `x-stream-offset` is no offset (a string not starting with a digit, a boolean, a
//!   table...);
//! - on a stream or a quorum queue: a `basic.consume` on a channel whose last `basic.qos`
//!   set a global prefetch limit.
//!
//! AMQP cannot ask a queue's type, so the hub learns it: from a client's `queue.declare` with
//! `x-queue-type` once the broker's `declare-ok` confirms it, and from the broker's own 540
//! when a queue it did not know about costs a connection once. For the next five minutes
//! (renewed by each declare, ended by a delete through the hub) such a method closes that
//! client alone, with the close RabbitMQ sends, and the shared connection stays up. A queue declared elsewhere and never misused
//! through this hub is not known: its first misuse still costs a broker connection.

use super::{ClientId, Hub};
use crate::method::{Method, MethodId};
use crate::reply::{self, Reply};
use crate::table::FieldValue;
use crate::wire::Reader;
use std::time::{Duration, Instant};

/// How long what the hub learnt about a queue is trusted: the queue may be deleted and
/// declared again as another type, and nothing tells warren.
const TYPE_MEMORY: Duration = Duration::from_secs(300);

/// The queue types whose rules differ from a classic queue's in a way that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueType {
    /// `x-queue-type: stream`.
    Stream,
    /// `x-queue-type: quorum`.
    Quorum,
}

impl QueueType {
    /// The type an `x-queue-type` argument names, if it is one of these.
    pub(crate) fn named(arg: Option<&str>) -> Option<QueueType> {
        match arg? {
            "stream" => Some(QueueType::Stream),
            "quorum" => Some(QueueType::Quorum),
            _ => None,
        }
    }
}

/// What the hub knows about queue types, by queue name (a hub serves one vhost).
#[derive(Debug, Default)]
pub(super) struct QueueTypes(Vec<Known>);

/// One queue's type, until when it is trusted.
#[derive(Debug)]
struct Known {
    queue: Vec<u8>,
    kind: QueueType,
    until: Instant,
}

impl QueueTypes {
    /// Learns (or renews) that `queue` is of type `kind`.
    pub(super) fn learn(&mut self, now: Instant, queue: Vec<u8>, kind: QueueType) {
        self.0.retain(|k| k.queue != queue && now < k.until);
        self.0.push(Known {
            queue,
            kind,
            until: now + TYPE_MEMORY,
        });
    }

    /// Forgets what was learnt about `queue` (it is being deleted).
    pub(super) fn forget(&mut self, queue: &[u8]) {
        self.0.retain(|k| k.queue != queue);
    }

    /// The type of `queue`, if known now.
    fn of(&self, now: Instant, queue: &[u8]) -> Option<QueueType> {
        let known = self.0.iter().find(|k| k.queue == queue && now < k.until)?;
        Some(known.kind)
    }
}

/// A method RabbitMQ answers with a connection error on a queue of some type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misuse {
    /// `basic.get` on a stream.
    Get,
    /// `basic.consume` without acknowledgements on a stream.
    NoAckConsume,
    /// `queue.purge` on a stream.
    Purge,
    /// `basic.nack` or `basic.reject` of a stream's delivery.
    Settle,
    /// `basic.consume` on a quorum queue, under a global prefetch limit.
    GlobalQosConsume,
}

impl Misuse {
    const ALL: [Misuse; 5] = [
        Misuse::Get,
        Misuse::NoAckConsume,
        Misuse::Purge,
        Misuse::Settle,
        Misuse::GlobalQosConsume,
    ];

    /// The type of queue that refuses it.
    fn queue_type(self) -> QueueType {
        match self {
            Misuse::GlobalQosConsume => QueueType::Quorum,
            _ => QueueType::Stream,
        }
    }

    /// RabbitMQ's text before and after the queue, which it names as
    /// `queue 'NAME' in vhost 'VHOST'`.
    fn text(self) -> (&'static str, &'static str) {
        match self {
            Misuse::Get => ("basic.get not supported by stream queues ", ""),
            Misuse::NoAckConsume => (
                "automatic acknowledgement not supported by stream queues ",
                "",
            ),
            Misuse::Purge => ("queue.purge not supported by stream queues ", ""),
            Misuse::Settle => (
                "basic.nack and basic.reject not supported by stream queues ",
                "",
            ),
            Misuse::GlobalQosConsume => ("", " does not support global qos"),
        }
    }
}

impl Hub {
    /// The broker closed an upstream with `close`: if that is one of these errors, the hub
    /// learns the queue's type from it.
    pub(super) fn learn_queue_type_from(&mut self, now: Instant, close: &Reply) {
        if close.code != reply::NOT_IMPLEMENTED {
            return;
        }
        let vhost = format!("' in vhost '{}'", self.credentials.vhost);
        for misuse in Misuse::ALL {
            let (before, after) = misuse.text();
            let name = (close.detail().strip_prefix(before))
                .and_then(|t| t.strip_suffix(after))
                .and_then(|t| t.strip_prefix("queue '"))
                .and_then(|t| t.strip_suffix(vhost.as_str()));
            if let Some(name) = name {
                let queue = name.as_bytes().to_vec();
                return self.queue_types.learn(now, queue, misuse.queue_type());
            }
        }
    }

    /// The queue a method on client `id`'s channel `ch` names as `queue` (see
    /// `ClientChannel::queue_named`).
    fn resolved_queue<'a>(&'a self, id: ClientId, ch: u16, queue: &'a [u8]) -> Option<&'a [u8]> {
        self.client(id)?.channels.get(&ch)?.queue_named(queue)
    }

    /// RabbitMQ's connection error for method `m` on client `id`'s channel `ch`, if `m`
    /// names a queue whose type forbids it there.
    pub(super) fn queue_type_refusal(
        &self,
        now: Instant,
        id: ClientId,
        ch: u16,
        mid: MethodId,
        m: &Method,
    ) -> Option<Reply> {
        // The method first: most (publishes, acks) name no queue and cost no lookup.
        let queue = match m {
            Method::Get { queue } | Method::Purge { queue } | Method::Consume { queue, .. } => {
                queue
            }
            _ => return None,
        };
        let chan = self.client(id)?.channels.get(&ch)?;
        let queue = self.resolved_queue(id, ch, queue)?;
        let misuse = match (self.queue_types.of(now, queue)?, m) {
            (QueueType::Stream, Method::Get { .. }) => Misuse::Get,
            (QueueType::Stream, Method::Purge { .. }) => Misuse::Purge,
            (
                QueueType::Stream,
                Method::Consume {
                    no_ack,
                    stream_offset,
                    ..
                },
            ) => {
                // RabbitMQ's order: the arguments' check, the prefetch (406), acks, a
                // global limit, then the stream's reader.
                let offset = StreamOffset::of(stream_offset.as_ref());
                match offset {
                    StreamOffset::CrashesCheck => return Some(channel_crash()),
                    StreamOffset::Refused => return None,
                    _ if !chan.consumer_prefetch => return None,
                    _ if *no_ack => Misuse::NoAckConsume,
                    _ if chan.global_qos => Misuse::GlobalQosConsume,
                    StreamOffset::CrashesReader => return Some(channel_crash()),
                    StreamOffset::Taken => return None,
                }
            }
            (QueueType::Quorum, Method::Consume { .. }) if chan.global_qos => {
                Misuse::GlobalQosConsume
            }
            _ => return None,
        };
        Some(self.misuse_reply(misuse, queue, mid))
    }

    /// RabbitMQ's close for `misuse` of `queue` by method `mid`.
    fn misuse_reply(&self, misuse: Misuse, queue: &[u8], mid: MethodId) -> Reply {
        let (before, after) = misuse.text();
        let text = format!(
            "{before}queue '{}' in vhost '{}'{after}",
            String::from_utf8_lossy(queue),
            self.credentials.vhost
        );
        Reply::new(reply::NOT_IMPLEMENTED, text).caused_by(mid)
    }
}

/// RabbitMQ's close when one of its channels crashes: 541, naming no method.
fn channel_crash() -> Reply {
    Reply::verbatim(reply::INTERNAL_ERROR, "INTERNAL_ERROR")
}

/// What RabbitMQ 3.10 makes of a stream consumer's `x-stream-offset`. Its argument check
/// reads a long string as `first`, `last`, `next` or an age ("7D": a number above zero and
/// one of its units) and crashes on one that does not start with a digit; the stream's
/// reader later takes what the check let through, and crashes on what is not an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamOffset {
    /// Where the consumer starts reading (also: none given, from the next message).
    Taken,
    /// Refused on the channel (406), which the broker can do itself.
    Refused,
    /// The argument check crashes, before any other check of the consume.
    CrashesCheck,
    /// The reader crashes, after the consume's other checks.
    CrashesReader,
}

impl StreamOffset {
    /// How RabbitMQ reads `offset`.
    fn of(offset: Option<&FieldValue>) -> StreamOffset {
        use FieldValue as V;
        match offset {
            None | Some(V::Timestamp(_)) => StreamOffset::Taken,
            Some(V::LongStr(s) | V::Bytes(s)) if is_named_offset(s) => StreamOffset::Taken,
            Some(V::LongStr(s)) => StreamOffset::of_age(s),
            Some(V::I8(_) | V::U8(_) | V::I16(_) | V::U16(_) | V::I32(_) | V::U32(_))
            | Some(V::I64(_)) => StreamOffset::Taken,
            Some(_) => StreamOffset::CrashesReader,
        }
    }

    /// An age: leading digits, then a unit up to the first line break (RabbitMQ matches it
    /// with `(^[0-9]*)(.*)`).
    fn of_age(s: &[u8]) -> StreamOffset {
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return StreamOffset::CrashesCheck;
        }
        let rest = &s[digits..];
        let unit = rest.split(|b| *b == b'\n').next().unwrap_or_default();
        let above_zero = s[..digits].iter().any(|b| *b != b'0');
        let known_unit = matches!(unit, b"Y" | b"M" | b"D" | b"h" | b"m" | b"s");
        if above_zero && known_unit {
            StreamOffset::Taken
        } else {
            StreamOffset::Refused
        }
    }
}

/// Whether `s` names an offset: taken whatever its field type.
fn is_named_offset(s: &[u8]) -> bool {
    matches!(s, b"first" | b"last" | b"next")
}

/// A channel's consumers on known streams and their deliveries the client has not settled:
/// RabbitMQ closes the connection on a nack or a reject of such a delivery (540) and on a
/// recover while one is out (541, its channel crashes).
#[derive(Debug, Default)]
pub(crate) struct StreamDeliveries {
    /// Stream names, indexed by the entries below.
    streams: Vec<Vec<u8>>,
    /// Consumer tag and stream of each consumer on a stream.
    consumers: Vec<(Vec<u8>, usize)>,
    /// Delivery tag and stream of each delivery not settled yet, in tag order.
    unsettled: Vec<(u64, usize)>,
}

impl StreamDeliveries {
    /// A consumer with this tag reads `stream`.
    pub(crate) fn consumer(&mut self, tag: Vec<u8>, stream: Vec<u8>) {
        let at = match self.streams.iter().position(|s| *s == stream) {
            Some(i) => i,
            None => {
                self.streams.push(stream);
                self.streams.len() - 1
            }
        };
        self.consumers.push((tag, at));
    }

    /// The consumer with this tag is gone; its deliveries stay out until settled.
    pub(crate) fn cancelled(&mut self, tag: &[u8]) {
        self.consumers.retain(|(t, _)| t != tag);
    }

    /// The broker delivered `delivery` to the consumer `consumer` (if it reads a stream).
    fn delivered(&mut self, consumer: &[u8], delivery: u64) {
        if let Some((_, at)) = self.consumers.iter().find(|(t, _)| t == consumer) {
            self.unsettled.push((delivery, *at));
        }
    }

    /// The client settled `tag` (or every tag up to it).
    pub(crate) fn settled(&mut self, tag: u64, multiple: bool) {
        self.unsettled.retain(|(t, _)| !covers(tag, multiple, *t));
    }

    /// The stream of the first unsettled delivery a nack or reject of `tag` would settle.
    pub(crate) fn covered(&self, tag: u64, multiple: bool) -> Option<&[u8]> {
        let (_, at) = self
            .unsettled
            .iter()
            .find(|(t, _)| covers(tag, multiple, *t))?;
        Some(&self.streams[*at])
    }

    /// Whether a delivery from a stream is out.
    pub(crate) fn any_unsettled(&self) -> bool {
        !self.unsettled.is_empty()
    }
}

/// Whether settling `tag` (with `multiple`) settles delivery `delivery`.
fn covers(tag: u64, multiple: bool, delivery: u64) -> bool {
    if multiple {
        tag == 0 || delivery <= tag
    } else {
        delivery == tag
    }
}

impl Hub {
    /// The stream a `basic.consume` on client `id`'s channel `ch` reads, if it is a known one.
    pub(super) fn consumed_stream(
        &self,
        now: Instant,
        id: ClientId,
        ch: u16,
        m: &Method,
    ) -> Option<Vec<u8>> {
        let Method::Consume { queue, .. } = m else {
            return None;
        };
        let queue = self.resolved_queue(id, ch, queue)?;
        (self.queue_types.of(now, queue) == Some(QueueType::Stream)).then(|| queue.to_vec())
    }

    /// RabbitMQ's close for a settle or recover on client `id`'s channel `ch` that reaches a
    /// stream's delivery.
    pub(super) fn stream_settle_refusal(
        &self,
        id: ClientId,
        ch: u16,
        mid: MethodId,
        m: &Method,
    ) -> Option<Reply> {
        if !matches!(
            m,
            Method::Settle { ack: false, .. } | Method::Recover { .. }
        ) {
            return None;
        }
        let chan = self.client(id)?.channels.get(&ch)?;
        let streams = chan.streams.as_deref()?;
        match m {
            Method::Settle {
                tag,
                multiple,
                ack: false,
            } => {
                let stream = streams.covered(*tag, *multiple)?;
                Some(self.misuse_reply(Misuse::Settle, stream, mid))
            }
            Method::Recover { .. } if streams.any_unsettled() => Some(channel_crash()),
            _ => None,
        }
    }

    /// Notes a `basic.deliver` the broker sends to client `id`'s channel `ch`, if that
    /// channel consumes from a stream.
    pub(super) fn note_stream_delivery(&mut self, id: ClientId, ch: u16, payload: &[u8]) {
        let Some(streams) = self
            .client_mut(id)
            .and_then(|c| c.channels.get_mut(&ch))
            .and_then(|chan| chan.streams.as_deref_mut())
        else {
            return;
        };
        // consumer-tag, then delivery-tag, after the class and method ids.
        let mut r = Reader::new(payload.get(4..).unwrap_or_default());
        if let (Ok(consumer), Ok(delivery)) = (r.shortstr(), r.u64()) {
            streams.delivered(consumer, delivery);
        }
    }
}
