//! Stream and quorum queues (`x-queue-type`), as far as RabbitMQ 3.10's rules for them
//! matter to warren: the properties a declare of one may not have (406 on the channel), the
//! methods that close the *connection* ([`Misuse`]: 540, 541 for a recover), the prefetch a
//! stream's consumer needs (406), and a stream's deliveries: a stream keeps every message,
//! each consumer reads from its own offset (`x-stream-offset`), and acks remove nothing.
//! A quorum queue is otherwise a classic one here.
//!
//! The connection errors are RabbitMQ's answer whoever sends them; the connection's
//! [`UpstreamChecker`](crate::rules::UpstreamChecker) has already judged whether warren
//! should have refused the method itself ([`Rule::QueueType`](crate::rules::Rule)), so the
//! broker only closes the connection here and logs it in [`BrokerLog::queue_type_closes`]
//! (`super::BrokerLog`).

use super::state::{ChannelError, Msg, Queue};
use super::{Broker, ConnId};
use crate::rules::queue_types::{Misuse, QueueKind};
use std::time::Instant;
use warren_core::method::{ids, Close, MethodId};
use warren_core::reply;
use warren_core::table::{FieldTable, FieldValue};

/// What a `queue.declare` asks for, beyond its name.
pub(super) struct DeclareProps {
    pub(super) durable: bool,
    pub(super) exclusive: bool,
    pub(super) auto_delete: bool,
    /// The `x-queue-type` argument, if any.
    pub(super) type_arg: Option<String>,
}

/// RabbitMQ's reading of a queue argument's value in an equivalence error.
fn shown(type_arg: Option<&str>) -> String {
    type_arg.map_or("none".to_owned(), |t| {
        format!("the value '{t}' of type 'longstr'")
    })
}

impl Broker {
    /// RabbitMQ's channel error for a declare of `name` with `props`, if any: for an
    /// existing queue, an `x-queue-type` other than its own (`assert_equivalence`); for a
    /// new stream or quorum queue, the properties it cannot have, checked in RabbitMQ's order
    /// (auto-delete, exclusive, non-durable).
    pub(super) fn typed_declare_refusal(
        &self,
        name: &str,
        props: &DeclareProps,
        mid: MethodId,
    ) -> Option<ChannelError> {
        let refuse = |text: String| Some(ChannelError(reply::PRECONDITION_FAILED, text, mid));
        let queue = format!("queue '{name}' in vhost '/'");
        if let Some(q) = self.queues.get(name) {
            let asked = props.type_arg.as_deref()?;
            if q.type_arg.as_deref() == Some(asked) {
                return None;
            }
            return refuse(format!(
                "inequivalent arg 'x-queue-type' for {queue}: received {} but current is {}",
                shown(Some(asked)),
                shown(q.type_arg.as_deref())
            ));
        }
        props.type_arg.as_deref().and_then(QueueKind::named)?;
        let property = if props.auto_delete {
            "auto-delete"
        } else if props.exclusive {
            "exclusive-owner"
        } else if !props.durable {
            "non-durable"
        } else {
            return None;
        };
        refuse(format!("invalid property '{property}' for {queue}"))
    }

    /// The type of queue `name`, if it is a stream or a quorum queue.
    pub(super) fn kind_of(&self, name: &str) -> Option<QueueKind> {
        self.queues.get(name).and_then(|q| q.kind)
    }

    /// RabbitMQ closes connection `id` for `misuse` of `queue` by method `mid`.
    pub(super) fn misuse_close(
        &mut self,
        now: Instant,
        id: ConnId,
        misuse: Misuse,
        queue: &str,
        mid: MethodId,
    ) {
        // A crashed channel's close (541) names no method.
        let crashed = misuse.code() == reply::INTERNAL_ERROR;
        let close = Close {
            code: misuse.code(),
            text: misuse.close_text(queue, "/"),
            class_id: if crashed { 0 } else { mid.class },
            method_id: if crashed { 0 } else { mid.method },
        };
        self.log
            .queue_type_closes
            .push((now, id, close.text.clone()));
        self.close_conn_with(now, id, close);
    }

    /// A stream consumer's first offset: `x-stream-offset` in the consume's arguments
    /// (`first`, `last`, `next` or a number; a timestamp reads from the start, as no message
    /// here has one), `next` without it.
    pub(super) fn stream_offset(q: &Queue, args: &FieldTable) -> usize {
        let len = q.msgs.len();
        let at = |n: i64| usize::try_from(n).map_or(0, |n| n.min(len));
        match args.get("x-stream-offset") {
            Some(FieldValue::LongStr(s)) => match s.as_slice() {
                b"first" => 0,
                b"last" => len.saturating_sub(1),
                _ => len,
            },
            Some(FieldValue::I8(n)) => at(i64::from(*n)),
            Some(FieldValue::U8(n)) => at(i64::from(*n)),
            Some(FieldValue::I16(n)) => at(i64::from(*n)),
            Some(FieldValue::U16(n)) => at(i64::from(*n)),
            Some(FieldValue::I32(n)) => at(i64::from(*n)),
            Some(FieldValue::U32(n)) => at(i64::from(*n)),
            Some(FieldValue::I64(n)) => at(*n),
            Some(FieldValue::Timestamp(_)) => 0,
            _ => len,
        }
    }

    /// The first stream a nack or reject of `tag` (with `multiple`) reaches among
    /// `tags`, the channel's unsettled deliveries it settles.
    pub(super) fn stream_among(&self, id: ConnId, ch: u16, tags: &[u64]) -> Option<String> {
        let chan = self.conns.get(&id)?.channels.get(&ch)?;
        tags.iter()
            .filter_map(|t| chan.unacked.get(t))
            .map(|(q, _)| q)
            .find(|q| self.kind_of(q) == Some(QueueKind::Stream))
            .cloned()
    }

    /// Puts unsettled messages back at the head of their queues, marked redelivered: what a
    /// requeue, a recover or a closed channel does. A stream never gave its messages away,
    /// so nothing goes back to one.
    pub(super) fn requeue(&mut self, unacked: impl DoubleEndedIterator<Item = (String, Msg)>) {
        for (qname, mut msg) in unacked.rev() {
            if let Some(q) = self
                .queues
                .get_mut(&qname)
                .filter(|q| q.kind != Some(QueueKind::Stream))
            {
                msg.redelivered = true;
                q.msgs.push_front(msg);
            }
        }
    }

    /// Hands a stream's messages to its consumers with room, each from its own offset; the
    /// messages stay in the stream.
    pub(super) fn dispatch_stream(&mut self, now: Instant, name: &str) {
        let Some(q) = self.queues.get(name) else {
            return;
        };
        for i in 0..q.consumers.len() {
            loop {
                let Some(q) = self.queues.get(name) else {
                    return;
                };
                let c = q.consumers[i].clone();
                let offset = c.offset.unwrap_or(usize::MAX);
                let Some(msg) = q.msgs.get(offset).cloned() else {
                    break;
                };
                if !self.has_room(&c) {
                    break;
                }
                self.queues.get_mut(name).expect("present").consumers[i].offset = Some(offset + 1);
                self.deliver(now, name, &c, msg);
            }
        }
    }

    /// `basic.get` or `queue.purge` (method `mid`) of `queue`, already checked to exist and
    /// be usable: if it is a stream, RabbitMQ closes the connection. Says whether it did.
    pub(super) fn stream_refuses(
        &mut self,
        now: Instant,
        id: ConnId,
        queue: &str,
        mid: MethodId,
    ) -> bool {
        if self.kind_of(queue) != Some(QueueKind::Stream) {
            return false;
        }
        let misuse = if mid == ids::BASIC_GET {
            Misuse::Get
        } else {
            Misuse::Purge
        };
        self.misuse_close(now, id, misuse, queue, mid);
        true
    }

    /// `basic.recover` while `id`'s channel `ch` has a stream's delivery unsettled: RabbitMQ's
    /// channel crashes, and the connection closes with 541. Says whether it did.
    pub(super) fn recover_refused(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
    ) -> bool {
        let tags: Vec<u64> = match self.conns.get(&id).and_then(|c| c.channels.get(&ch)) {
            Some(chan) => chan.unacked.keys().copied().collect(),
            None => return false,
        };
        let Some(stream) = self.stream_among(id, ch, &tags) else {
            return false;
        };
        self.misuse_close(now, id, Misuse::Recover, &stream, mid);
        true
    }
}
