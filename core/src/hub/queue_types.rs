//! Stream and quorum queues the hub has seen (B7). RabbitMQ 3.10 answers some methods on
//! them with a connection error (540), which through warren would close a shared broker
//! connection and every client on it:
//!
//! - on a stream: `basic.get`, a `basic.consume` without acknowledgements, `queue.purge`;
//! - on a quorum queue: a `basic.consume` on a channel whose last `basic.qos` set a global
//!   prefetch limit.
//!
//! AMQP cannot ask a queue's type, so the hub learns it: from a client's `queue.declare` with
//! `x-queue-type` once the broker's `declare-ok` confirms it, and from the broker's own 540
//! when a queue it did not know about costs a connection once. For the next five minutes
//! (renewed by each declare) such a method closes that client alone, with the close RabbitMQ
//! sends, and the shared connection stays up. A queue declared elsewhere and never misused
//! through this hub is not known: its first misuse still costs a broker connection.

use super::client::Shortcut;
use super::{ClientId, Hub};
use crate::method::{Method, MethodId};
use crate::reply::{self, Reply};
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
    /// `basic.consume` on a quorum queue, under a global prefetch limit.
    GlobalQosConsume,
}

impl Misuse {
    const ALL: [Misuse; 4] = [
        Misuse::Get,
        Misuse::NoAckConsume,
        Misuse::Purge,
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
        let chan = self.client(id)?.channels.get(&ch)?;
        let queue = match m {
            Method::Get { queue } | Method::Purge { queue } | Method::Consume { queue, .. } => {
                queue
            }
            _ => return None,
        };
        let queue = match (queue.is_empty(), &chan.shortcut) {
            (false, _) => queue.as_slice(),
            (true, Shortcut::Named(last)) => last.as_slice(),
            (true, _) => return None,
        };
        let misuse = match (self.queue_types.of(now, queue)?, m) {
            (QueueType::Stream, Method::Get { .. }) => Misuse::Get,
            (QueueType::Stream, Method::Purge { .. }) => Misuse::Purge,
            (QueueType::Stream, Method::Consume { no_ack: true, .. }) => Misuse::NoAckConsume,
            (QueueType::Quorum, Method::Consume { .. }) if chan.global_qos => {
                Misuse::GlobalQosConsume
            }
            _ => return None,
        };
        let (before, after) = misuse.text();
        let text = format!(
            "{before}queue '{}' in vhost '{}'{after}",
            String::from_utf8_lossy(queue),
            self.credentials.vhost
        );
        Some(Reply::new(reply::NOT_IMPLEMENTED, text).caused_by(mid))
    }
}
