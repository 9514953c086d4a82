//! The script: a client runs its [`Step`]s one after the other, each synchronous one waiting
//! for its reply, and leaves politely when a step can no longer finish.

use super::state::{ChState, Chan, Phase, Reply, Wait};
use super::typed_queue;
use super::{
    consume, exchange_declare_with, header, publish, queue_declare, queue_declare_passive, Board,
    ClientOut, End, FakeClient, Step, Target,
};
use crate::tag::{Origin, NO_QUEUE, TAG_LEN};
use bytes::{Bytes, BytesMut};
use std::time::Instant;
use warren_core::frame::{method_frame, Frame, FrameType};
use warren_core::method::{encode, ids, Close};
use warren_core::reply;
use warren_testkit::hub_world::typed_declare;

impl FakeClient {
    /// Gives up the script after a step became impossible: close the connection politely.
    pub(super) fn abandon(&mut self, now: Instant) {
        self.pc = self.spec.script.len();
        self.wait = Wait::Nothing;
        if self.phase == Phase::Running {
            self.close_connection(now);
        }
    }

    fn close_connection(&mut self, now: Instant) {
        let close = Close {
            code: reply::REPLY_SUCCESS,
            text: "bye".into(),
            class_id: 0,
            method_id: 0,
        };
        self.send(now, encode::close(0, &close));
        self.phase = Phase::Closing;
        self.closing_since = Some(now);
        self.wait = Wait::ConnectionCloseOk;
    }

    fn waiting(&self, now: Instant) -> bool {
        match &self.wait {
            Wait::Nothing => false,
            Wait::Until(t) => now < *t,
            _ => true,
        }
    }

    pub(super) fn advance(&mut self, now: Instant, board: &mut Board) {
        while self.phase == Phase::Running && self.stalled_until.is_none() && !self.waiting(now) {
            self.wait = Wait::Nothing;
            let Some(step) = self.spec.script.get(self.pc).cloned() else {
                self.script_done = true;
                // A script that ends without closing leaves like a process exiting.
                self.out.push_back(ClientOut::Close);
                return self.finish(now, End::Left);
            };
            self.pc += 1;
            self.step(now, step, board);
        }
    }

    /// Sends a synchronous method on `ch` and waits for its `reply`, if the channel is open
    /// (otherwise the step is skipped): says whether it was sent.
    fn request(&mut self, now: Instant, ch: u16, reply: Reply, method: Bytes) -> bool {
        let open = self.expect(ch, reply);
        if open {
            self.send(now, method);
        }
        open
    }

    fn expect(&mut self, ch: u16, reply: Reply) -> bool {
        match self.chans.get_mut(&ch) {
            Some(c) if c.state == ChState::Open => {
                c.expect = Some(reply);
                self.wait = Wait::Reply(ch);
                true
            }
            _ => false,
        }
    }

    #[allow(clippy::too_many_lines)]
    fn step(&mut self, now: Instant, step: Step, board: &mut Board) {
        match step {
            Step::Open(ch) => {
                if self.chans.contains_key(&ch) {
                    return;
                }
                self.chans.insert(ch, Chan::new());
                self.send(now, encode::channel_open(ch));
                self.wait = Wait::Reply(ch);
            }
            Step::CloseChannel(ch) => {
                let Some(c) = self.chans.get_mut(&ch) else {
                    return;
                };
                if c.state != ChState::Open {
                    return;
                }
                c.state = ChState::Closing;
                c.expect = Some(Reply::CloseOk);
                let close = Close {
                    code: 200,
                    text: "done".into(),
                    class_id: 0,
                    method_id: 0,
                };
                self.send(now, encode::close(ch, &close));
                self.wait = Wait::Reply(ch);
            }
            Step::Declare {
                ch,
                slot,
                exclusive,
            } => {
                let name = board.name(slot).unwrap_or("");
                // A name the broker chose can only be declared passively (403 otherwise).
                let frame = if name.starts_with("amq.") {
                    queue_declare_passive(ch, name)
                } else {
                    queue_declare(ch, name, exclusive)
                };
                self.request(now, ch, Reply::DeclareOk(slot, exclusive), frame);
            }
            Step::DeclareAndDrop { ch, slot } => {
                let frame = queue_declare(ch, board.name(slot).unwrap_or(""), true);
                self.request(now, ch, Reply::DeclareOk(slot, true), frame);
                self.out.push_back(ClientOut::Close);
                self.finish(now, End::Left);
            }
            Step::Qos(ch, prefetch) => {
                let frame = method_frame(ch, ids::BASIC_QOS, |w| {
                    w.u32(0).u16(prefetch).bit(false);
                });
                self.request(now, ch, Reply::QosOk, frame);
            }
            Step::Consume { ch, slot, no_ack } => {
                let Some(name) = board.name(slot).map(str::to_owned) else {
                    return;
                };
                if let Some(c) = self.chans.get_mut(&ch) {
                    c.no_ack = no_ack;
                }
                let frame = consume(ch, name.as_bytes(), b"", no_ack, false);
                self.request(now, ch, Reply::ConsumeOk(slot), frame);
            }
            Step::Cancel(ch) => {
                let tag = self
                    .chans
                    .get(&ch)
                    .and_then(|c| c.consumers.last())
                    .map(|(t, _, _)| t.clone());
                let Some(tag) = tag else { return };
                let frame = method_frame(ch, ids::BASIC_CANCEL, |w| {
                    w.shortstr(&tag).bit(false);
                });
                self.request(now, ch, Reply::CancelOk, frame);
            }
            Step::Confirm(ch) => {
                let frame = method_frame(ch, ids::CONFIRM_SELECT, |w| {
                    w.bit(false);
                });
                self.request(now, ch, Reply::SelectOk, frame);
            }
            Step::TxSelect(ch) => {
                let frame = method_frame(ch, ids::TX_SELECT, |_| {});
                self.request(now, ch, Reply::TxSelectOk, frame);
            }
            Step::TxCommit(ch) => {
                let frame = method_frame(ch, ids::TX_COMMIT, |_| {});
                self.request(now, ch, Reply::TxCommitOk, frame);
            }
            Step::Publish {
                ch,
                to,
                size,
                mandatory,
            } => {
                let frame_max = self.tune.frame_max;
                let Some(c) = self.chans.get_mut(&ch) else {
                    return;
                };
                if c.state != ChState::Open {
                    return;
                }
                let seq = self.seqs.entry(ch).or_insert(0);
                *seq += 1;
                let seq = *seq;
                let (exchange, rk, queue) = match &to {
                    Target::Slot(slot) => match board.name(*slot) {
                        Some(n) => (String::new(), n.to_owned(), *slot),
                        None => (String::new(), format!("nowhere-{slot}"), *slot),
                    },
                    Target::Exchange(e, rk) => (e.clone(), rk.clone(), NO_QUEUE),
                };
                let origin = Origin {
                    client: self.id,
                    channel: ch,
                    seq,
                    queue,
                };
                if c.confirm {
                    c.next_cno += 1;
                    c.outstanding.insert(c.next_cno, seq);
                }
                self.published.insert((ch, seq));
                let body = origin.body(size.max(TAG_LEN));
                let mut data = BytesMut::new();
                data.extend_from_slice(&publish(ch, &exchange, &rk, mandatory, false));
                data.extend_from_slice(&header(ch, body.len() as u64));
                let max = (frame_max as usize).saturating_sub(8).max(1);
                for chunk in body.chunks(max) {
                    data.extend_from_slice(&Frame::new(FrameType::Body, ch, chunk).freeze());
                }
                self.send(now, data.freeze());
            }
            Step::Get { ch, slot } => {
                let Some(name) = board.name(slot).map(str::to_owned) else {
                    return;
                };
                let frame = method_frame(ch, ids::BASIC_GET, |w| {
                    w.u16(0).shortstr(name.as_bytes()).bit(false);
                });
                self.request(now, ch, Reply::Get(slot), frame);
            }
            Step::WaitConfirms(ch) => {
                if self
                    .chans
                    .get(&ch)
                    .is_some_and(|c| c.confirm && !c.outstanding.is_empty())
                {
                    self.wait = Wait::Confirms(ch);
                }
            }
            Step::Sleep(d) => self.wait = Wait::Until(now + d),
            Step::ExpectChannelClose(ch) => {
                if self.chans.contains_key(&ch) {
                    self.wait = Wait::ChannelClose(ch);
                }
            }
            Step::StopReading => self.reading = false,
            Step::Stall(d) => self.stalled_until = Some(now + d),
            Step::Misbehave(kind) => {
                self.misbehaved = Some(kind);
                self.misbehaved_at = Some(now);
                let bad = self.bad_bytes(kind);
                self.send(now, bad);
                self.wait = Wait::Forever;
            }
            Step::ExchangeDeclare {
                ch,
                name,
                kind,
                nowait,
            } => {
                let frame = exchange_declare_with(ch, &name, &kind, nowait);
                if !nowait {
                    self.request(now, ch, Reply::ExchangeDeclareOk, frame);
                } else if self
                    .chans
                    .get(&ch)
                    .is_some_and(|c| c.state == ChState::Open)
                {
                    self.send(now, frame);
                }
            }
            Step::Bind {
                ch,
                slot,
                exchange,
                rk,
            } => {
                let Some(name) = board.name(slot).map(str::to_owned) else {
                    return;
                };
                let frame = method_frame(ch, ids::QUEUE_BIND, |w| {
                    w.u16(0)
                        .shortstr(name.as_bytes())
                        .shortstr(exchange.as_bytes())
                        .shortstr(rk.as_bytes())
                        .bit(false)
                        .u32(0);
                });
                self.request(now, ch, Reply::BindOk, frame);
            }
            Step::Intrude { ch, slot, op } => {
                let Some(name) = board.name(slot).map(str::to_owned) else {
                    return;
                };
                let owner = board.exclusive_owner(slot);
                if self.request(now, ch, Reply::Intrusion(op, slot), op.frame(ch, &name)) {
                    if let Some(c) = self.chans.get_mut(&ch) {
                        c.intrusion = Some((op, slot, name, owner));
                    }
                }
            }
            Step::Recover(ch) => {
                let frame = method_frame(ch, ids::BASIC_RECOVER, |w| {
                    w.bit(true);
                });
                self.request(now, ch, Reply::RecoverOk, frame);
            }
            Step::PartialPublishAndDrop(ch) => {
                if self
                    .chans
                    .get(&ch)
                    .is_some_and(|c| c.state == ChState::Open)
                {
                    let seq = self.seqs.entry(ch).or_insert(0);
                    *seq += 1;
                    let origin = Origin {
                        client: self.id,
                        channel: ch,
                        seq: *seq,
                        queue: NO_QUEUE,
                    };
                    let body = origin.body(100);
                    let mut data = BytesMut::new();
                    data.extend_from_slice(&publish(ch, "", "half", false, false));
                    data.extend_from_slice(&header(ch, body.len() as u64));
                    data.extend_from_slice(&Frame::new(FrameType::Body, ch, &body[..40]).freeze());
                    self.send(now, data.freeze());
                }
                self.out.push_back(ClientOut::Close);
                self.finish(now, End::Left);
            }
            Step::TypedDeclare { ch, kind } => {
                let frame = typed_declare(ch, typed_queue(kind), kind.arg());
                self.request(now, ch, Reply::TypedDeclareOk, frame);
            }
            Step::TypedConsume { ch, kind } => {
                let frame = consume(ch, typed_queue(kind).as_bytes(), b"", false, false);
                self.request(now, ch, Reply::TypedConsumeOk, frame);
            }
            Step::UpdateSecret => {
                self.send(
                    now,
                    method_frame(0, ids::CONNECTION_UPDATE_SECRET, |w| {
                        w.longstr(b"new-secret").shortstr(b"rotation");
                    }),
                );
                self.wait = Wait::SecretOk;
            }
            Step::CloseConnection => self.close_connection(now),
            Step::Drop => {
                self.out.push_back(ClientOut::Close);
                self.finish(now, End::Left);
            }
        }
    }
}
