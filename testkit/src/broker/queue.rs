//! The queue class: `queue.declare` (exclusive and server-named queues, streams and quorum
//! queues by `x-queue-type`), bind, unbind, purge and delete, with RabbitMQ's 404 for a
//! missing queue and 405 for another connection's exclusive one.

use super::state::{ChannelError, Queue};
use super::stream::DeclareProps;
use super::{locked_text, lossy, Broker, ConnId};
use crate::rules::queue_types::QueueKind;
use std::time::Instant;
use warren_core::method::{ids, MethodId};
use warren_core::reply;
use warren_core::table::FieldTable;
use warren_core::wire::Reader;

impl Broker {
    /// `queue.*`.
    pub(super) fn queue_class(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
        r: &mut Reader<'_>,
    ) -> Result<(), ChannelError> {
        match mid {
            ids::QUEUE_DECLARE => {
                rd!(r.u16());
                let mut name = self.queue_arg(id, ch, rd!(r.shortstr()), mid)?;
                let passive = rd!(r.bit());
                let durable = rd!(r.bit());
                let exclusive = rd!(r.bit());
                let auto_delete = rd!(r.bit());
                let nowait = rd!(r.bit());
                let args = FieldTable::decode(rd!(r.table())).unwrap_or_default();
                let props = DeclareProps {
                    durable,
                    exclusive,
                    auto_delete,
                    type_arg: args.get_str("x-queue-type"),
                };
                if !passive && name.starts_with("amq.") {
                    return Err(ChannelError(
                        reply::ACCESS_REFUSED,
                        format!("queue name '{name}' contains reserved prefix 'amq.*'"),
                        mid,
                    ));
                }
                match self.queues.get(&name) {
                    Some(q) if q.exclusive.is_some_and(|o| o != id) => {
                        self.log.locked_refusals += 1;
                        return Err(ChannelError(
                            reply::RESOURCE_LOCKED,
                            locked_text(&name, "/"),
                            mid,
                        ));
                    }
                    Some(_) if passive => {}
                    None if passive => {
                        return Err(ChannelError(
                            reply::NOT_FOUND,
                            format!("no queue '{name}' in vhost '/'"),
                            mid,
                        ))
                    }
                    Some(_) => {
                        if let Some(e) = self.typed_declare_refusal(&name, &props, mid) {
                            return Err(e);
                        }
                    }
                    None => {
                        if name.is_empty() {
                            self.next_queue += 1;
                            name = format!("amq.gen-{}", self.next_queue);
                        }
                        if let Some(e) = self.typed_declare_refusal(&name, &props, mid) {
                            return Err(e);
                        }
                        let kind = props.type_arg.as_deref().and_then(QueueKind::named);
                        self.queues.insert(
                            name.clone(),
                            Queue {
                                exclusive: exclusive.then_some(id),
                                kind,
                                type_arg: props.type_arg,
                                ..Queue::default()
                            },
                        );
                    }
                }
                self.chan(id, ch).last_declared.clone_from(&name);
                if !nowait {
                    let q = &self.queues[&name];
                    let (msgs, consumers) = (q.msgs.len() as u32, q.consumers.len() as u32);
                    self.send_method(now, id, ch, ids::QUEUE_DECLARE_OK, |w| {
                        w.shortstr(name.as_bytes()).u32(msgs).u32(consumers);
                    });
                }
            }
            ids::QUEUE_BIND => {
                rd!(r.u16());
                let (queue, exchange, rk) = self.binding_args(id, ch, r, mid)?;
                let nowait = rd!(r.bit());
                self.check_queue(id, &queue, mid)?;
                let Some(ex) = self.exchanges.get_mut(&exchange) else {
                    return Err(ChannelError(
                        reply::NOT_FOUND,
                        format!("no exchange '{exchange}' in vhost '/'"),
                        mid,
                    ));
                };
                if !ex.bindings.contains(&(queue.clone(), rk.clone())) {
                    ex.bindings.push((queue, rk));
                }
                if !nowait {
                    self.send_method(now, id, ch, MethodId::new(50, 21), |_| {});
                }
            }
            ids::QUEUE_UNBIND => {
                rd!(r.u16());
                let (queue, exchange, rk) = self.binding_args(id, ch, r, mid)?;
                // RabbitMQ: 404 for a missing queue, 405 for another connection's exclusive one.
                self.check_queue(id, &queue, mid)?;
                if let Some(ex) = self.exchanges.get_mut(&exchange) {
                    ex.bindings.retain(|b| *b != (queue.clone(), rk.clone()));
                }
                self.send_method(now, id, ch, MethodId::new(50, 51), |_| {});
            }
            ids::QUEUE_PURGE => {
                rd!(r.u16());
                let queue = self.queue_arg(id, ch, rd!(r.shortstr()), mid)?;
                let nowait = rd!(r.bit());
                self.check_queue(id, &queue, mid)?;
                if self.stream_refuses(now, id, &queue, mid) {
                    return Ok(());
                }
                if self
                    .queues
                    .get(&queue)
                    .is_some_and(|q| q.exclusive.is_some())
                {
                    self.log.exclusive_ops.push((now, queue.clone(), "purge"));
                }
                let n = self
                    .queues
                    .get_mut(&queue)
                    .map(|q| std::mem::take(&mut q.msgs).len())
                    .unwrap_or(0) as u32;
                if !nowait {
                    self.send_method(now, id, ch, MethodId::new(50, 31), |w| {
                        w.u32(n);
                    });
                }
            }
            ids::QUEUE_DELETE => {
                rd!(r.u16());
                let queue = self.queue_arg(id, ch, rd!(r.shortstr()), mid)?;
                let (_if_unused, _if_empty, nowait) = (rd!(r.bit()), rd!(r.bit()), rd!(r.bit()));
                if self
                    .queues
                    .get(&queue)
                    .is_some_and(|q| q.exclusive.is_some_and(|o| o != id))
                {
                    self.log.locked_refusals += 1;
                    return Err(ChannelError(
                        reply::RESOURCE_LOCKED,
                        locked_text(&queue, "/"),
                        mid,
                    ));
                }
                if self
                    .queues
                    .get(&queue)
                    .is_some_and(|q| q.exclusive.is_some())
                {
                    self.log.exclusive_ops.push((now, queue.clone(), "delete"));
                }
                let n = self.delete_queue(Some(now), &queue) as u32;
                if !nowait {
                    self.send_method(now, id, ch, ids::QUEUE_DELETE_OK, |w| {
                        w.u32(n);
                    });
                }
            }
            _ => self.not_valid_here(now, id, mid),
        }
        Ok(())
    }

    /// The queue a method names, as RabbitMQ 3.10 reads it: the empty name stands for the
    /// queue the channel declared last (404 if none; a declare asks for a new name instead),
    /// and a declare, a bind, an unbind and a delete drop CR and LF from the name.
    pub(super) fn queue_arg(
        &mut self,
        id: ConnId,
        ch: u16,
        sent: &[u8],
        mid: MethodId,
    ) -> Result<String, ChannelError> {
        if sent.is_empty() && mid != ids::QUEUE_DECLARE {
            let last = self.chan(id, ch).last_declared.clone();
            if last.is_empty() {
                let text = "no previously declared queue".to_owned();
                return Err(ChannelError(reply::NOT_FOUND, text, mid));
            }
            return Ok(last);
        }
        let name = lossy(sent);
        Ok(match mid {
            ids::QUEUE_DECLARE | ids::QUEUE_BIND | ids::QUEUE_UNBIND | ids::QUEUE_DELETE => {
                name.replace(['\r', '\n'], "")
            }
            _ => name,
        })
    }

    /// The queue, exchange and routing key of a bind or an unbind; an empty routing key with
    /// the empty queue name also stands for the queue the channel declared last.
    fn binding_args(
        &mut self,
        id: ConnId,
        ch: u16,
        r: &mut Reader<'_>,
        mid: MethodId,
    ) -> Result<(String, String, String), ChannelError> {
        let sent = rd!(r.shortstr());
        let queue = self.queue_arg(id, ch, sent, mid)?;
        let exchange = lossy(rd!(r.shortstr()));
        let rk = match rd!(r.shortstr()) {
            b"" if sent.is_empty() => queue.clone(),
            rk => lossy(rk),
        };
        Ok((queue, exchange, rk))
    }

    /// RabbitMQ's checks of a queue a method names: 404 if it does not exist, 405 if it is
    /// another connection's exclusive queue.
    pub(super) fn check_queue(
        &mut self,
        id: ConnId,
        queue: &str,
        mid: MethodId,
    ) -> Result<(), ChannelError> {
        match self.queues.get(queue) {
            None => Err(ChannelError(
                reply::NOT_FOUND,
                format!("no queue '{queue}' in vhost '/'"),
                mid,
            )),
            Some(q) if q.exclusive.is_some_and(|o| o != id) => {
                self.log.locked_refusals += 1;
                Err(ChannelError(
                    reply::RESOURCE_LOCKED,
                    locked_text(queue, "/"),
                    mid,
                ))
            }
            Some(_) => Ok(()),
        }
    }
}
