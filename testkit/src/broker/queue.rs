//! The queue class: `queue.declare` (exclusive and server-named queues), bind, unbind,
//! purge and delete, with RabbitMQ's 404 for a missing queue and 405 for another
//! connection's exclusive one.

use super::state::{ChannelError, Queue};
use super::{locked_text, lossy, Broker, ConnId};
use std::time::Instant;
use warren_core::frame::method_frame;
use warren_core::method::{ids, MethodId};
use warren_core::reply;
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
                let mut name = lossy(rd!(r.shortstr()));
                let passive = rd!(r.bit());
                let _durable = rd!(r.bit());
                let exclusive = rd!(r.bit());
                let _auto_delete = rd!(r.bit());
                let nowait = rd!(r.bit());
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
                    Some(_) => {}
                    None if passive => {
                        return Err(ChannelError(
                            reply::NOT_FOUND,
                            format!("no queue '{name}' in vhost '/'"),
                            mid,
                        ))
                    }
                    None => {
                        if name.is_empty() {
                            self.next_queue += 1;
                            name = format!("amq.gen-{}", self.next_queue);
                        }
                        self.queues.insert(
                            name.clone(),
                            Queue {
                                exclusive: exclusive.then_some(id),
                                ..Queue::default()
                            },
                        );
                    }
                }
                if !nowait {
                    let q = &self.queues[&name];
                    let (msgs, consumers) = (q.msgs.len() as u32, q.consumers.len() as u32);
                    self.send(
                        now,
                        id,
                        method_frame(ch, ids::QUEUE_DECLARE_OK, |w| {
                            w.shortstr(name.as_bytes()).u32(msgs).u32(consumers);
                        }),
                    );
                }
            }
            ids::QUEUE_BIND => {
                rd!(r.u16());
                let queue = lossy(rd!(r.shortstr()));
                let exchange = lossy(rd!(r.shortstr()));
                let rk = lossy(rd!(r.shortstr()));
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
                    self.send(now, id, method_frame(ch, MethodId::new(50, 21), |_| {}));
                }
            }
            ids::QUEUE_UNBIND => {
                rd!(r.u16());
                let queue = lossy(rd!(r.shortstr()));
                let exchange = lossy(rd!(r.shortstr()));
                let rk = lossy(rd!(r.shortstr()));
                // RabbitMQ: 404 for a missing queue, 405 for another connection's exclusive one.
                self.check_queue(id, &queue, mid)?;
                if let Some(ex) = self.exchanges.get_mut(&exchange) {
                    ex.bindings.retain(|b| *b != (queue.clone(), rk.clone()));
                }
                self.send(now, id, method_frame(ch, MethodId::new(50, 51), |_| {}));
            }
            ids::QUEUE_PURGE => {
                rd!(r.u16());
                let queue = lossy(rd!(r.shortstr()));
                let nowait = rd!(r.bit());
                self.check_queue(id, &queue, mid)?;
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
                    self.send(
                        now,
                        id,
                        method_frame(ch, MethodId::new(50, 31), |w| {
                            w.u32(n);
                        }),
                    );
                }
            }
            ids::QUEUE_DELETE => {
                rd!(r.u16());
                let queue = lossy(rd!(r.shortstr()));
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
                    self.send(
                        now,
                        id,
                        method_frame(ch, ids::QUEUE_DELETE_OK, |w| {
                            w.u32(n);
                        }),
                    );
                }
            }
            _ => self.not_valid_here(now, id, mid),
        }
        Ok(())
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
