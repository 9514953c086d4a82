//! The rules of a method a client sends on one of its channels, by method family: the checks
//! every method passes first ([`ClientChannel::admit_method`]), then what `channel.*`,
//! `basic.*`, the declares and `queue.delete` change on the channel before the method goes
//! on to the broker — or why it goes no further (B6, B7).

use super::exclusive::{as_broker_reads, uses_queue_shortcut};
use super::{
    checked_method, unimplemented_method, ClientChannel, Declare, Delete, PendingConsume,
    PendingPublish, Shortcut, Tx, Verdict,
};
use crate::frame::Frame;
use crate::hub::exchange_types::TypeCheck;
use crate::hub::queue_types::QueueType;
use crate::hub::{ClientId, Hub};
use crate::method::{encode, ids, Method, MethodId};
use crate::reply::{self, Reply};
use std::time::Instant;

impl Hub {
    /// A method on an open (or waiting) channel: checked, tracked, and mostly forwarded.
    pub(super) fn channel_method(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        let ch = frame.channel();
        let (mid, m) = match checked_method(frame) {
            Ok(x) => x,
            Err(r) => return Verdict::Fatal(r),
        };
        if let Some(r) = self.locked_queue(id, mid, frame) {
            return Verdict::CloseChannel(r);
        }
        if let Some(r) = (self.queue_type_refusal(now, id, ch, mid, &m))
            .or_else(|| self.stream_settle_refusal(id, ch, mid, &m))
        {
            // RabbitMQ's close as it is, cause included (its 541 names none).
            self.close_client(now, id, r);
            return Verdict::Done;
        }
        let stream = self.consumed_stream(now, id, ch, &m);
        let type_check = match &m {
            Method::ExchangeDeclare {
                kind,
                passive: false,
            } => self.exchange_type(now, kind),
            _ => TypeCheck::Known,
        };
        let Some(chan) = self
            .clients
            .get_mut(id.index())
            .and_then(|c| c.channels.get_mut(&ch))
        else {
            return Verdict::Done;
        };
        if let Err(v) = chan.admit_method(mid, frame.payload()) {
            return v;
        }
        match m {
            Method::ChannelOpen => Verdict::Fatal(Reply::new(
                reply::CHANNEL_ERROR,
                "second 'channel.open' seen",
            )),
            Method::ChannelClose(_) => {
                self.client_closes_channel(now, id, ch);
                Verdict::Done
            }
            Method::ChannelCloseOk => Verdict::Fatal(unimplemented_method()),
            // Never forwarded (B7): RabbitMQ answers active=false with a connection error,
            // which must close this client, not the shared connection.
            Method::Flow { active: false } => {
                Verdict::Fatal(Reply::new(reply::NOT_IMPLEMENTED, "active=false"))
            }
            Method::Flow { active: true } => {
                self.send_client(now, id, encode::flow(ch, true, true));
                Verdict::Done
            }
            Method::Publish { .. }
            | Method::Qos { .. }
            | Method::Consume { .. }
            | Method::Cancel { .. }
            | Method::Recover { .. } => chan.basic_method(m, stream),
            Method::Settle { tag, multiple, .. } => {
                if let Some(streams) = chan.streams.as_deref_mut() {
                    streams.settled(tag, multiple);
                }
                Verdict::Forward
            }
            // RabbitMQ closes the whole connection on a type it does not know (B7).
            Method::ExchangeDeclare { kind, .. } => match type_check {
                TypeCheck::Known => Verdict::Forward,
                TypeCheck::Unknown(r) => Verdict::Fatal(r),
                TypeCheck::Ask => Verdict::Park(Some(kind)),
            },
            Method::QueueDeclare { .. } => chan.queue_declare(m),
            Method::QueueDelete { queue, nowait } => self.queue_delete(id, ch, queue, nowait),
            _ => chan.other_method(mid),
        }
    }

    /// `queue.delete`: deleting one of its own exclusive queues (by its name as the broker
    /// reads it, or by the channel's shortcut) ends the client's claim on it once the broker
    /// answers (a nowait delete goes up asking for that answer).
    fn queue_delete(&mut self, id: ClientId, ch: u16, queue: Vec<u8>, nowait: bool) -> Verdict {
        let Some(c) = self.client_mut(id) else {
            return Verdict::Forward;
        };
        let Some(chan) = c.channels.get_mut(&ch) else {
            return Verdict::Forward;
        };
        let queue = match &chan.shortcut {
            Shortcut::Named(last) if queue.is_empty() => last.clone(),
            _ => as_broker_reads(ids::QUEUE_DELETE, &queue).into_owned(),
        };
        let owned = !queue.is_empty() && c.exclusive.iter().any(|(_, q)| *q == queue);
        if owned {
            chan.recyclable = false;
        }
        // A queue of the same name declared later may be of another type: what the hub
        // learnt goes (if the delete fails, a misuse teaches it again).
        self.queue_types.forget(&queue);
        let Some(chan) = self.client_mut(id).and_then(|c| c.channels.get_mut(&ch)) else {
            return Verdict::Forward;
        };
        match (owned, nowait) {
            (true, _) => {
                let asked = !nowait;
                chan.deletes.push_back(Delete::Exclusive { queue, asked });
                if !asked {
                    return Verdict::ForwardAskingForReply;
                }
            }
            (false, false) => chan.deletes.push_back(Delete::Other),
            (false, true) => {}
        }
        Verdict::Forward
    }
}

impl ClientChannel {
    /// The checks every method on an open channel passes first (a recycled channel's queue
    /// shortcut among them), and what any method does to the channel's recyclability (B6).
    /// `Err` holds the verdict on a method that goes no further.
    fn admit_method(&mut self, mid: MethodId, payload: &[u8]) -> Result<(), Verdict> {
        if self.tx == Tx::Committing && mid != ids::CHANNEL_CLOSE {
            return Err(Verdict::Fatal(Reply::new(
                reply::CHANNEL_ERROR,
                "unexpected command while processing 'tx.commit'",
            )));
        }
        if mid.class == 10 {
            return Err(Verdict::Fatal(unimplemented_method()));
        }
        // Anything outside the clean list of B6 makes the channel non-recyclable for good.
        if !is_clean(mid) {
            self.recyclable = false;
        }
        if matches!(self.shortcut, Shortcut::Recycled) && uses_queue_shortcut(mid, payload) {
            // What RabbitMQ answers on a fresh channel; the recycled one would instead
            // resolve the empty name to the previous owner's queue.
            return Err(Verdict::CloseChannel(
                Reply::new(reply::NOT_FOUND, "no previously declared queue").caused_by(mid),
            ));
        }
        Ok(())
    }

    /// `basic.publish`, `basic.qos`, `basic.consume`, `basic.cancel`, `basic.recover`.
    /// `stream` is the stream a consume reads, if it is a known one.
    fn basic_method(&mut self, m: Method, stream: Option<Vec<u8>>) -> Verdict {
        match m {
            Method::Publish {
                immediate: true, ..
            } => Verdict::Fatal(Reply::new(reply::NOT_IMPLEMENTED, "immediate=true")),
            Method::Publish { mandatory, .. } => {
                if mandatory {
                    self.recyclable = false;
                }
                self.tx = self.tx.after(ids::BASIC_PUBLISH);
                self.publish = Some(PendingPublish {
                    frames: Vec::with_capacity(3),
                    remaining: None,
                    bytes: 0,
                });
                Verdict::Hold
            }
            Method::Qos { prefetch_size, .. } if prefetch_size != 0 => Verdict::Fatal(Reply::new(
                reply::NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({prefetch_size})"),
            )),
            Method::Qos {
                prefetch_count,
                global,
                ..
            } => {
                // RabbitMQ 3.10: any basic.qos replaces the channel's global limit; a
                // per-consumer one also sets the prefetch new consumers get.
                self.global_qos = global && prefetch_count > 0;
                if !global {
                    self.consumer_prefetch = prefetch_count > 0;
                }
                Verdict::Forward
            }
            Method::Consume { tag, nowait, .. } => self.consume(tag, nowait, stream),
            Method::Cancel { tag } => {
                self.consumers.retain(|t| *t != tag);
                if let Some(streams) = self.streams.as_deref_mut() {
                    streams.cancelled(&tag);
                }
                Verdict::Forward
            }
            Method::Recover { requeue: false } => {
                Verdict::Fatal(Reply::new(reply::NOT_IMPLEMENTED, "requeue=false"))
            }
            _ => Verdict::Forward,
        }
    }

    /// `basic.consume`: RabbitMQ closes the connection on a tag in use on the channel.
    /// A consume of a known stream is remembered with its tag, or once the broker names it
    /// (`queue_types`).
    fn consume(&mut self, tag: Vec<u8>, nowait: bool, stream: Option<Vec<u8>>) -> Verdict {
        if !tag.is_empty() && self.consumers.contains(&tag) {
            return Verdict::Fatal(Reply::new(
                reply::NOT_ALLOWED,
                format!(
                    "attempt to reuse consumer tag '{}'",
                    String::from_utf8_lossy(&tag)
                ),
            ));
        }
        // A server-named consumer's tag is learnt from its consume-ok; with nowait it is
        // never learnt, and cannot collide with a client-chosen one.
        let broker_tag = tag.is_empty();
        let stream = match stream {
            Some(s) if !broker_tag => {
                let streams = self.streams.get_or_insert_with(Box::default);
                streams.consumer(tag.clone(), s);
                None
            }
            s => s,
        };
        if !nowait {
            self.consumes
                .push_back(PendingConsume { broker_tag, stream });
        }
        if !broker_tag {
            self.consumers.push(tag);
        }
        Verdict::Forward
    }

    /// `queue.declare`, which sets the channel's shortcut, and whose reply must be seen if
    /// the queue is exclusive (B5) or of a type whose rules matter (`queue_types`).
    fn queue_declare(&mut self, m: Method) -> Verdict {
        match m {
            Method::QueueDeclare {
                queue,
                exclusive,
                nowait,
                passive,
                queue_type,
            } => {
                self.shortcut = if queue.is_empty() {
                    Shortcut::Broker
                } else {
                    Shortcut::Named(as_broker_reads(ids::QUEUE_DECLARE, &queue).into_owned())
                };
                let exclusive = exclusive && !passive;
                if exclusive {
                    self.recyclable = false;
                }
                match (exclusive, nowait) {
                    (false, true) => Verdict::Forward,
                    (false, false) => {
                        let typed = QueueType::named(queue_type.as_deref()).filter(|_| !passive);
                        self.declares
                            .push_back(typed.map_or(Declare::Plain, Declare::Typed));
                        Verdict::Forward
                    }
                    (true, false) => {
                        self.declares.push_back(Declare::Exclusive);
                        Verdict::Forward
                    }
                    (true, true) => {
                        self.declares.push_back(Declare::ExclusiveUnasked);
                        Verdict::ForwardAskingForReply
                    }
                }
            }
            _ => Verdict::Forward,
        }
    }

    /// Every other method is forwarded; a `tx.commit` of publishes holds the channel until
    /// its reply ([`Tx`]).
    fn other_method(&mut self, mid: MethodId) -> Verdict {
        self.tx = self.tx.after(mid);
        Verdict::Forward
    }
}

/// The clean list of B6: methods after which a channel can still be recycled.
fn is_clean(mid: MethodId) -> bool {
    matches!(
        mid,
        ids::EXCHANGE_DECLARE
            | ids::EXCHANGE_DELETE
            | ids::EXCHANGE_BIND
            | ids::EXCHANGE_UNBIND
            | ids::QUEUE_DECLARE
            | ids::QUEUE_BIND
            | ids::QUEUE_UNBIND
            | ids::QUEUE_PURGE
            | ids::QUEUE_DELETE
            | ids::BASIC_PUBLISH
            | ids::CHANNEL_CLOSE
    )
}
