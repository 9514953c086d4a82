//! Stream and quorum queues (B7): the methods RabbitMQ 3.10 answers with a *connection*
//! error on a queue of one of these types, with its exact codes and texts. One list for the
//! fake broker, which answers them as RabbitMQ does, and for the [`UpstreamChecker`](super::UpstreamChecker)
//! (`super::UpstreamChecker`), which holds warren to never forwarding one it could have
//! refused itself onto a shared connection.

use super::Chan;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use warren_core::method::Method;
use warren_core::reply;
use warren_core::table::FieldValue;

/// How long warren trusts what it learnt about a queue's type (core's `TYPE_MEMORY`): after
/// that it may rightly forget, and a misuse it forwards is no longer its fault.
pub const TYPE_MEMORY: Duration = Duration::from_secs(300);

/// The queue types whose rules differ from a classic queue's in a way that closes a
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// `x-queue-type: stream`: keeps its messages; refuses get, purge, no-ack consumers,
    /// nack, reject and recover of its deliveries.
    Stream,
    /// `x-queue-type: quorum`: refuses a consumer under a global prefetch limit.
    Quorum,
}

impl QueueKind {
    /// The type an `x-queue-type` argument names, if it is one of these (anything else is
    /// read as a classic queue).
    #[must_use]
    pub fn named(arg: &str) -> Option<QueueKind> {
        match arg {
            "stream" => Some(QueueKind::Stream),
            "quorum" => Some(QueueKind::Quorum),
            _ => None,
        }
    }

    /// The `x-queue-type` value that declares it.
    #[must_use]
    pub fn arg(self) -> &'static str {
        match self {
            QueueKind::Stream => "stream",
            QueueKind::Quorum => "quorum",
        }
    }
}

/// A method RabbitMQ answers with a connection error because of a queue's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misuse {
    /// `basic.get` on a stream (540).
    Get,
    /// `basic.consume` with `no_ack` on a stream (540).
    NoAckConsume,
    /// `queue.purge` on a stream (540).
    Purge,
    /// `basic.nack` or `basic.reject` reaching a delivery from a stream (540).
    Settle,
    /// `basic.recover` while a delivery from a stream is unsettled (541: the channel
    /// crashes, and the connection with it).
    Recover,
    /// `basic.consume` on a quorum queue, or on a stream under a per-consumer prefetch,
    /// while the channel's last `basic.qos` set a global prefetch limit (540).
    GlobalQosConsume,
    /// `basic.consume` of a stream whose `x-stream-offset` is no offset (541: the channel
    /// crashes).
    NoOffset,
}

impl Misuse {
    /// The reply code of RabbitMQ's `connection.close`.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            Misuse::Recover | Misuse::NoOffset => reply::INTERNAL_ERROR,
            _ => reply::NOT_IMPLEMENTED,
        }
    }

    /// RabbitMQ's whole close text for this misuse of `queue` in `vhost`.
    #[must_use]
    pub fn close_text(self, queue: &str, vhost: &str) -> String {
        let q = format!("queue '{queue}' in vhost '{vhost}'");
        let detail = match self {
            Misuse::Get => format!("basic.get not supported by stream queues {q}"),
            Misuse::NoAckConsume => {
                format!("automatic acknowledgement not supported by stream queues {q}")
            }
            Misuse::Purge => format!("queue.purge not supported by stream queues {q}"),
            Misuse::Settle => {
                format!("basic.nack and basic.reject not supported by stream queues {q}")
            }
            Misuse::Recover | Misuse::NoOffset => return "INTERNAL_ERROR".to_owned(),
            Misuse::GlobalQosConsume => format!("{q} does not support global qos"),
        };
        format!("{} - {detail}", reply::code_name(self.code()))
    }
}

/// What RabbitMQ 3.10 answers a `basic.consume` of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamConsume {
    /// The consumer reads the stream.
    Reads,
    /// No per-consumer prefetch: 406 on the channel.
    NoPrefetch,
    /// A connection error.
    Refused(Misuse),
}

impl StreamConsume {
    /// RabbitMQ's answer to a consume with `offset` as its `x-stream-offset`, `no_ack`, on a
    /// channel with or without a per-consumer prefetch and a global limit, checked in its
    /// order: the argument (a string that is no offset and does not start with a digit
    /// crashes the channel), the prefetch, acks, the global limit, and last the stream's
    /// reader (which crashes on a value that is no offset, such as a boolean or a table).
    #[must_use]
    pub fn of(
        offset: Option<&FieldValue>,
        no_ack: bool,
        consumer_prefetch: bool,
        global_qos: bool,
    ) -> StreamConsume {
        use FieldValue as V;
        let named = |s: &[u8]| matches!(s, b"first" | b"last" | b"next");
        let crashes_reader = match offset {
            None | Some(V::Timestamp(_)) => false,
            Some(V::LongStr(s) | V::Bytes(s)) if named(s) => false,
            Some(V::LongStr(s)) if !s.first().is_some_and(u8::is_ascii_digit) => {
                return StreamConsume::Refused(Misuse::NoOffset);
            }
            // An age: the check refuses some on the channel, which this broker never sees.
            Some(V::LongStr(_)) => false,
            Some(V::I8(_) | V::U8(_) | V::I16(_) | V::U16(_) | V::I32(_) | V::U32(_)) => false,
            Some(V::I64(_)) => false,
            Some(_) => true,
        };
        if !consumer_prefetch {
            StreamConsume::NoPrefetch
        } else if no_ack {
            StreamConsume::Refused(Misuse::NoAckConsume)
        } else if global_qos {
            StreamConsume::Refused(Misuse::GlobalQosConsume)
        } else if crashes_reader {
            StreamConsume::Refused(Misuse::NoOffset)
        } else {
            StreamConsume::Reads
        }
    }
}

/// Queue types learnt from a conversation, each until [`TYPE_MEMORY`] after it was last
/// confirmed: what warren could know at a given moment.
#[derive(Debug, Default)]
pub(crate) struct TypeMemory(BTreeMap<Vec<u8>, (QueueKind, Option<Instant>)>);

impl TypeMemory {
    /// `queue` was confirmed to be of type `kind` at `at` (`None`: a checker without a
    /// clock, whose memory does not fade).
    pub(crate) fn learn(&mut self, queue: Vec<u8>, kind: QueueKind, at: Option<Instant>) {
        self.0.insert(queue, (kind, at));
    }

    /// The type of `queue` if it was confirmed less than [`TYPE_MEMORY`] before `now`.
    pub(crate) fn of(&self, queue: &[u8], now: Option<Instant>) -> Option<QueueKind> {
        let (kind, at) = self.0.get(queue)?;
        match (at, now) {
            (Some(at), Some(now)) if now >= *at + TYPE_MEMORY => None,
            _ => Some(*kind),
        }
    }
}

/// What the checker reads of a channel's methods for [`Rule::QueueType`](super::Rule).
impl Chan {
    /// The queue a method names: an empty name is the channel's last declared one.
    pub(super) fn resolved(&self, queue: &[u8]) -> Option<Vec<u8>> {
        if queue.is_empty() {
            self.last_queue.clone()
        } else {
            Some(queue.to_vec())
        }
    }

    /// What RabbitMQ would refuse of method `m` because of a queue's type, with the queue,
    /// judged by the types in `types` at `now`; and the stream a consume reads, if known.
    pub(super) fn misuse(
        &self,
        m: &Method,
        types: &TypeMemory,
        now: Option<Instant>,
    ) -> (Option<Misused>, Option<Vec<u8>>) {
        let typed = |queue: &[u8]| {
            let q = self.resolved(queue)?;
            types.of(&q, now).map(|k| (k, q))
        };
        let misuse = match m {
            Method::Get { queue } | Method::Purge { queue } => match typed(queue) {
                Some((QueueKind::Stream, q)) => {
                    let what = if matches!(m, Method::Get { .. }) {
                        Misuse::Get
                    } else {
                        Misuse::Purge
                    };
                    Some((what, q))
                }
                _ => None,
            },
            Method::Consume {
                queue,
                no_ack,
                stream_offset,
                ..
            } => match typed(queue) {
                Some((QueueKind::Stream, q)) => {
                    let offset = stream_offset.as_ref();
                    match StreamConsume::of(
                        offset,
                        *no_ack,
                        self.consumer_prefetch,
                        self.global_qos,
                    ) {
                        StreamConsume::Refused(misuse) => Some((misuse, q)),
                        StreamConsume::Reads => return (None, Some(q)),
                        StreamConsume::NoPrefetch => None,
                    }
                }
                Some((QueueKind::Quorum, q)) if self.global_qos => {
                    Some((Misuse::GlobalQosConsume, q))
                }
                _ => None,
            },
            Method::Settle {
                tag,
                multiple,
                ack: false,
            } => (self.unsettled.iter())
                .find(|(d, _)| covers(*tag, *multiple, *d))
                .map(|(_, s)| (Misuse::Settle, s.clone())),
            Method::Recover { .. } => {
                (self.unsettled.first()).map(|(_, s)| (Misuse::Recover, s.clone()))
            }
            _ => None,
        };
        (misuse, None)
    }
}

/// A misuse RabbitMQ would close the connection for, and the queue it names.
pub(super) type Misused = (Misuse, Vec<u8>);

/// Whether settling `tag` (with `multiple`) settles delivery `delivery`, as RabbitMQ reads
/// it: `multiple` with tag 0 settles everything.
pub(super) fn covers(tag: u64, multiple: bool, delivery: u64) -> bool {
    if multiple {
        tag == 0 || delivery <= tag
    } else {
        delivery == tag
    }
}
