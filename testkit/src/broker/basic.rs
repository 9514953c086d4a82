//! The basic class (qos, consume, cancel, publish, get, ack, nack, reject, recover) and the
//! two channel modes, `confirm.select` and `tx.*` (transactions are trivial here).

use super::state::{ChannelError, Consumer, Pending};
use super::{lossy, Broker, ConnId};
use crate::rules::queue_types::{Misuse, QueueKind, StreamConsume};
use bytes::BytesMut;
use std::time::Instant;
use warren_core::method::{ids, MethodId};
use warren_core::reply;
use warren_core::table::FieldTable;
use warren_core::wire::Reader;

impl Broker {
    /// `basic.*`.
    pub(super) fn basic_class(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
        r: &mut Reader<'_>,
    ) -> Result<(), ChannelError> {
        match mid {
            ids::BASIC_QOS => {
                let _size = rd!(r.u32()); // zero: the checker refuses any other
                let count = rd!(r.u16());
                let global = rd!(r.bit());
                let chan = self.chan(id, ch);
                chan.prefetch = count;
                // Any basic.qos replaces the channel's global limit; only a per-consumer one
                // sets the prefetch a stream consumer needs (a global one leaves it).
                if !global {
                    chan.consumer_prefetch = count > 0;
                }
                chan.global_qos = global && count > 0;
                self.send_method(now, id, ch, ids::BASIC_QOS_OK, |_| {});
            }
            ids::BASIC_CONSUME => {
                rd!(r.u16());
                let queue = self.queue_arg(id, ch, rd!(r.shortstr()), mid)?;
                let mut tag = rd!(r.shortstr()).to_vec();
                let _no_local = rd!(r.bit());
                let no_ack = rd!(r.bit());
                let _exclusive = rd!(r.bit());
                let nowait = rd!(r.bit());
                let args = FieldTable::decode(rd!(r.table())).unwrap_or_default();
                self.check_queue(id, &queue, mid)?;
                let chan = self.chan(id, ch);
                let (prefetch, global_qos) = (chan.consumer_prefetch, chan.global_qos);
                let offset = match self.kind_of(&queue) {
                    Some(QueueKind::Stream) => {
                        let offset = args.get("x-stream-offset");
                        match StreamConsume::of(offset, no_ack, prefetch, global_qos) {
                            StreamConsume::NoPrefetch => {
                                let text = format!(
                                    "consumer prefetch count is not set for 'queue '{queue}' in vhost '/''"
                                );
                                return Err(ChannelError(reply::PRECONDITION_FAILED, text, mid));
                            }
                            StreamConsume::Refused(misuse) => {
                                self.misuse_close(now, id, misuse, &queue, mid);
                                return Ok(());
                            }
                            StreamConsume::Reads => {
                                Some(Self::stream_offset(&self.queues[&queue], &args))
                            }
                        }
                    }
                    Some(QueueKind::Quorum) if global_qos => {
                        self.misuse_close(now, id, Misuse::GlobalQosConsume, &queue, mid);
                        return Ok(());
                    }
                    _ => None,
                };
                if tag.is_empty() {
                    let c = self.conns.get_mut(&id).expect("open");
                    c.next_ctag += 1;
                    tag = format!("amq.ctag-{id}-{}", c.next_ctag).into_bytes();
                }
                self.chan(id, ch).consumers.push(tag.clone());
                self.queues
                    .get_mut(&queue)
                    .expect("checked")
                    .consumers
                    .push(Consumer {
                        conn: id,
                        ch,
                        tag: tag.clone(),
                        no_ack,
                        offset,
                    });
                if !nowait {
                    self.send_method(now, id, ch, ids::BASIC_CONSUME_OK, |w| {
                        w.shortstr(&tag);
                    });
                }
            }
            ids::BASIC_CANCEL => {
                let tag = rd!(r.shortstr()).to_vec();
                let nowait = rd!(r.bit());
                self.chan(id, ch).consumers.retain(|t| *t != tag);
                for q in self.queues.values_mut() {
                    q.consumers
                        .retain(|c| !(c.conn == id && c.ch == ch && c.tag == tag));
                }
                if !nowait {
                    self.send_method(now, id, ch, ids::BASIC_CANCEL_OK, |w| {
                        w.shortstr(&tag);
                    });
                }
            }
            ids::BASIC_PUBLISH => {
                rd!(r.u16());
                let exchange = lossy(rd!(r.shortstr()));
                let rk = lossy(rd!(r.shortstr()));
                let mandatory = rd!(r.bit());
                self.chan(id, ch).content = Some(Pending {
                    exchange,
                    rk,
                    mandatory,
                    size: None,
                    body: BytesMut::new(),
                });
            }
            ids::BASIC_GET => {
                rd!(r.u16());
                let queue = self.queue_arg(id, ch, rd!(r.shortstr()), mid)?;
                let no_ack = rd!(r.bit());
                self.check_queue(id, &queue, mid)?;
                if self.stream_refuses(now, id, &queue, mid) {
                    return Ok(());
                }
                let q = self.queues.get_mut(&queue).expect("checked");
                match q.msgs.pop_front() {
                    Some(msg) => {
                        let left = q.msgs.len() as u32;
                        let chan = self.chan(id, ch);
                        chan.next_dtag += 1;
                        let dtag = chan.next_dtag;
                        if !no_ack {
                            chan.unacked.insert(dtag, (queue.clone(), msg.clone()));
                        }
                        self.send_method(now, id, ch, ids::BASIC_GET_OK, |w| {
                            w.u64(dtag)
                                .bit(msg.redelivered)
                                .shortstr(msg.exchange.as_bytes())
                                .shortstr(msg.rk.as_bytes())
                                .u32(left);
                        });
                        self.send_content(now, id, ch, &msg.body, msg.headers.as_ref());
                        self.log.deliveries += 1;
                    }
                    None => {
                        self.send_method(now, id, ch, MethodId::new(60, 72), |w| {
                            w.shortstr(b"");
                        });
                    }
                }
            }
            ids::BASIC_ACK | ids::BASIC_REJECT | ids::BASIC_NACK => {
                let dtag = rd!(r.u64());
                let multiple = if mid == ids::BASIC_REJECT {
                    false
                } else {
                    rd!(r.bit())
                };
                let requeue = if mid == ids::BASIC_ACK {
                    false
                } else {
                    rd!(r.bit())
                };
                let chan = self.chan(id, ch);
                let tags: Vec<u64> = if multiple {
                    chan.unacked
                        .range(..=if dtag == 0 { u64::MAX } else { dtag })
                        .map(|(t, _)| *t)
                        .collect()
                } else if chan.unacked.contains_key(&dtag) {
                    vec![dtag]
                } else {
                    Vec::new()
                };
                if tags.is_empty() && !(multiple && dtag == 0) {
                    return Err(ChannelError(
                        reply::PRECONDITION_FAILED,
                        format!("unknown delivery tag {dtag}"),
                        mid,
                    ));
                }
                if mid != ids::BASIC_ACK {
                    if let Some(stream) = self.stream_among(id, ch, &tags) {
                        self.misuse_close(now, id, Misuse::Settle, &stream, mid);
                        return Ok(());
                    }
                }
                let chan = self.chan(id, ch);
                let mut back = Vec::new();
                for t in tags {
                    if let Some(x) = chan.unacked.remove(&t) {
                        back.push(x);
                    }
                }
                if requeue {
                    self.requeue(back.into_iter());
                }
            }
            ids::BASIC_RECOVER_ASYNC | ids::BASIC_RECOVER => {
                // requeue=true: the checker refuses requeue=false, as RabbitMQ does.
                if self.recover_refused(now, id, ch, mid) {
                    return Ok(());
                }
                let unacked = std::mem::take(&mut self.chan(id, ch).unacked);
                self.requeue(unacked.into_values());
                if mid == ids::BASIC_RECOVER {
                    self.send_method(now, id, ch, MethodId::new(60, 111), |_| {});
                }
            }
            _ => self.not_valid_here(now, id, mid),
        }
        Ok(())
    }

    /// `confirm.select`.
    pub(super) fn confirm_class(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
        r: &mut Reader<'_>,
    ) -> Result<(), ChannelError> {
        match mid {
            ids::CONFIRM_SELECT => {
                let nowait = rd!(r.bit());
                if self.chan(id, ch).tx {
                    return Err(ChannelError(
                        reply::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode".into(),
                        mid,
                    ));
                }
                self.chan(id, ch).confirm = true;
                if !nowait {
                    self.send_method(now, id, ch, MethodId::new(85, 11), |_| {});
                }
            }
            _ => self.not_valid_here(now, id, mid),
        }
        Ok(())
    }

    /// `tx.select`, `tx.commit`, `tx.rollback`.
    pub(super) fn tx_class(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
    ) -> Result<(), ChannelError> {
        match mid {
            ids::TX_SELECT | ids::TX_COMMIT | ids::TX_ROLLBACK => {
                if mid == ids::TX_SELECT {
                    if self.chan(id, ch).confirm {
                        return Err(ChannelError(
                            reply::PRECONDITION_FAILED,
                            "cannot switch from confirm to tx mode".into(),
                            mid,
                        ));
                    }
                    self.chan(id, ch).tx = true;
                } else if !self.chan(id, ch).tx {
                    return Err(ChannelError(
                        reply::PRECONDITION_FAILED,
                        "channel is not transactional".into(),
                        mid,
                    ));
                }
                let ok = MethodId::new(90, mid.method + 1);
                self.send_method(now, id, ch, ok, |_| {});
            }
            _ => self.not_valid_here(now, id, mid),
        }
        Ok(())
    }
}
