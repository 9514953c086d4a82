//! Messages through the broker: a published message is checked (order, integrity, no
//! channel shared without a fence), routed, returned or confirmed; ready messages are
//! delivered round-robin to consumers with room, as header and body frames.

use super::state::{ChanState, Consumer, Msg, Pending, Phase};
use super::tag::Origin;
use super::{Broker, ConnId};
use crate::frames::content_header;
use crate::rules::queue_types::QueueKind;
use bytes::{Bytes, BytesMut};
use std::time::Instant;
use warren_core::frame::{method_frame, Frame, FrameType};
use warren_core::method::ids;
use warren_core::reply;
use warren_core::table::FieldTable;

impl Broker {
    /// A whole message arrived: check it, route it, return or confirm it.
    pub(super) fn publish(&mut self, now: Instant, id: ConnId, ch: u16, p: Pending) {
        self.log.publishes += 1;
        let body = p.body.freeze();
        if let Some(o) = Origin::parse(&body) {
            if !o.matches_body(&body) {
                self.log
                    .publish_errors
                    .push((now, format!("conn {id} ch{ch}: body of [{o}] is corrupted")));
            }
            let last = self.log.last_seq.entry((o.client, o.channel)).or_insert(0);
            if o.seq <= *last {
                let msg = format!(
                    "conn {id} ch{ch}: [{o}] arrived after #{} of the same client channel (order broken)",
                    *last
                );
                self.log.publish_errors.push((now, msg));
            }
            *last = (*last).max(o.seq);
            let chan = self.chan(id, ch);
            let me = (o.client, o.channel);
            match chan.owner {
                Some(prev) if prev != me => {
                    let msg = format!(
                        "conn {id} ch{ch}: publishes from c{} ch{} and c{} ch{} without a fence in between",
                        prev.0, prev.1, me.0, me.1
                    );
                    self.log.publish_errors.push((now, msg));
                }
                _ => {}
            }
            self.chan(id, ch).owner = Some(me);
        }
        let targets: Vec<String> = if p.exchange.is_empty() {
            if self.queues.contains_key(&p.rk) {
                vec![p.rk.clone()]
            } else {
                Vec::new()
            }
        } else {
            let Some(ex) = self.exchanges.get(&p.exchange) else {
                let text = format!("no exchange '{}' in vhost '/'", p.exchange);
                return self.channel_error(now, id, ch, reply::NOT_FOUND, text, ids::BASIC_PUBLISH);
            };
            let mut t: Vec<String> = ex
                .bindings
                .iter()
                .filter(|(_, k)| ex.kind == "fanout" || *k == p.rk)
                .map(|(q, _)| q.clone())
                .collect();
            t.dedup();
            t
        };
        if targets.is_empty() {
            self.log.unroutable.extend(Origin::parse(&body));
        }
        if targets.is_empty() && p.mandatory {
            self.send_method(now, id, ch, ids::BASIC_RETURN, |w| {
                w.u16(312)
                    .shortstr(b"NO_ROUTE")
                    .shortstr(p.exchange.as_bytes())
                    .shortstr(p.rk.as_bytes());
            });
            self.send_content(now, id, ch, &body, None);
        }
        for q in &targets {
            if let Some(q) = self.queues.get_mut(q) {
                q.msgs.push_back(Msg {
                    body: body.clone(),
                    exchange: p.exchange.clone(),
                    rk: p.rk.clone(),
                    redelivered: false,
                    headers: None,
                });
            }
        }
        let chan = self.chan(id, ch);
        if chan.confirm {
            chan.publish_seq += 1;
            let seq = chan.publish_seq;
            chan.unconfirmed.push(seq);
            if let Some(o) = Origin::parse(&body) {
                self.log.confirmed.push((now, o));
            }
            if !self.config.batch_confirms {
                self.chan(id, ch).unconfirmed.clear();
                self.send_method(now, id, ch, ids::BASIC_ACK, |w| {
                    w.u64(seq).bit(false);
                });
            }
        }
    }

    /// Sends the confirms held back during one read as one `multiple` ack per channel.
    pub(super) fn flush_confirms(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut acks = Vec::new();
        for (ch, chan) in c.channels.iter_mut() {
            if chan.state != ChanState::Open {
                chan.unconfirmed.clear();
                continue;
            }
            if let Some(&last) = chan.unconfirmed.last() {
                let multiple = chan.unconfirmed.len() > 1;
                chan.unconfirmed.clear();
                acks.push(method_frame(*ch, ids::BASIC_ACK, |w| {
                    w.u64(last).bit(multiple);
                }));
            }
        }
        for a in acks {
            self.send(now, id, a);
        }
    }

    /// Header and body frames of a message, bodies cut to the connection's frame_max; the
    /// header carries the `headers` property (flag bit 13) when there is one.
    pub(super) fn send_content(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        body: &Bytes,
        headers: Option<&FieldTable>,
    ) {
        let Some(frame_max) = self.conns.get(&id).map(|c| c.tune.frame_max) else {
            return;
        };
        let mut props = BytesMut::new();
        if let Some(h) = headers {
            h.encode(&mut props);
        }
        let flags = if headers.is_some() { 1 << 13 } else { 0 };
        let payload = content_header(60, body.len() as u64, flags, &props);
        let mut data = BytesMut::new();
        data.extend_from_slice(&Frame::new(FrameType::Header, ch, &payload).freeze());
        let max = (frame_max as usize).saturating_sub(8).max(1);
        for chunk in body.chunks(max) {
            data.extend_from_slice(&Frame::new(FrameType::Body, ch, chunk).freeze());
        }
        self.send(now, id, data.freeze());
    }

    /// Hands ready messages to consumers with room, round-robin, queues in name order; a
    /// stream's to each of its consumers from their own offsets.
    pub(super) fn dispatch_all(&mut self, now: Instant) {
        let names: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.msgs.is_empty() && !q.consumers.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if self.kind_of(&name) == Some(QueueKind::Stream) {
                self.dispatch_stream(now, &name);
                continue;
            }
            while let Some(q) = self.queues.get(&name) {
                if q.msgs.is_empty() || q.consumers.is_empty() {
                    break;
                }
                let n = q.consumers.len();
                let start = q.next % n;
                let pick = (0..n)
                    .map(|i| (start + i) % n)
                    .find(|&i| self.has_room(&q.consumers[i]));
                let Some(i) = pick else { break };
                let q = self.queues.get_mut(&name).expect("present");
                q.next = i + 1;
                let c = q.consumers[i].clone();
                let msg = q.msgs.pop_front().expect("non-empty");
                self.deliver(now, &name, &c, msg);
            }
        }
    }

    /// Whether consumer `c` may be handed a message: its channel is open on a running
    /// connection, and within its prefetch unless it needs no acks.
    pub(super) fn has_room(&self, c: &Consumer) -> bool {
        self.conns
            .get(&c.conn)
            .filter(|x| x.phase == Phase::Running)
            .and_then(|x| x.channels.get(&c.ch))
            .is_some_and(|chan| {
                chan.state == ChanState::Open
                    && (c.no_ack
                        || chan.prefetch == 0
                        || chan.unacked.len() < usize::from(chan.prefetch))
            })
    }

    /// Delivers `msg` from queue `name` to consumer `c`, unacked until settled unless it
    /// needs no acks.
    pub(super) fn deliver(&mut self, now: Instant, name: &str, c: &Consumer, msg: Msg) {
        let chan = self.chan(c.conn, c.ch);
        chan.next_dtag += 1;
        let dtag = chan.next_dtag;
        if !c.no_ack {
            chan.unacked.insert(dtag, (name.to_owned(), msg.clone()));
        }
        self.send_method(now, c.conn, c.ch, ids::BASIC_DELIVER, |w| {
            w.shortstr(&c.tag)
                .u64(dtag)
                .bit(msg.redelivered)
                .shortstr(msg.exchange.as_bytes())
                .shortstr(msg.rk.as_bytes());
        });
        self.send_content(now, c.conn, c.ch, &msg.body, msg.headers.as_ref());
        if msg.headers.is_some() {
            self.event_sends.push(c.conn);
        } else {
            self.log.deliveries += 1;
        }
    }
}
