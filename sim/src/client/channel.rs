//! Frames on the client's channels, and the checks made on everything received: frames only
//! on open channels, replies only to requests made, content in sequence, delivery tags in
//! order, consumer tags it owns, deliveries from the queue it consumes, returns and confirms
//! only for its own publishes, per-origin order, nothing from another client's exclusive
//! queue.

use super::state::{ChState, Incoming, IncomingKind, Reply, Wait};
use super::{lossy, Board, FakeClient, Intrusion, Received};
use crate::tag::{Origin, NO_QUEUE};
use std::time::Instant;
use warren_core::content::parse_header;
use warren_core::frame::{method_frame, Frame, FrameType};
use warren_core::method::{self, encode, ids, MethodId};
use warren_core::reply;
use warren_core::wire::Reader;

impl FakeClient {
    pub(super) fn channel_frame(&mut self, now: Instant, f: Frame, board: &mut Board) {
        let ch = f.channel();
        let Some(chan) = self.chans.get_mut(&ch) else {
            return self.violation(format!(
                "{} on channel {ch}, which is not open",
                crate::trace::describe(&f)
            ));
        };
        if chan.content.is_some() {
            return self.content_frame(now, ch, f, board);
        }
        if f.kind() != FrameType::Method {
            return self.violation(format!(
                "{} on channel {ch} without a content method",
                crate::trace::describe(&f)
            ));
        }
        let Ok((mid, args)) = method::split_payload(f.payload()) else {
            return self.violation(format!("malformed method on channel {ch}"));
        };
        let mut r = Reader::new(args);
        match mid {
            ids::CHANNEL_CLOSE => {
                let code = r.u16().unwrap_or(0);
                let text = lossy(r.shortstr().unwrap_or_default());
                let cause = MethodId::new(r.u16().unwrap_or(0), r.u16().unwrap_or(0));
                let crossing = chan.state == ChState::Closing;
                chan.content = None;
                let intrusion = chan.intrusion.take();
                self.channel_closes.push((ch, code));
                self.send(now, encode::close_ok(ch));
                if crossing {
                    // Both sides closed at once: each answers the other's close, and ours
                    // still gets its close-ok.
                    return;
                }
                self.chans.remove(&ch);
                if let Some(i) = intrusion {
                    // Refused, as it should be: the script goes on.
                    self.intrusion_refused(i, code, &text, cause);
                    if self.wait == Wait::Reply(ch) {
                        self.wait = Wait::Nothing;
                    }
                    return;
                }
                if code == reply::RESOURCE_LOCKED {
                    // Only an intrusion touches another client's exclusive queue: this was the
                    // client's own, out of reach of this channel's broker connection.
                    self.violation(format!(
                        "channel {ch} was closed with 405 {text:?} (cause {cause:?}) on the \
                         client's own queue: RabbitMQ locks an exclusive queue to the \
                         connection that declared it, and that is this client's"
                    ));
                }
                if code == reply::NOT_FOUND && self.lost_own_queue(&text, now, board) {
                    // Clients never delete their own queues, and RabbitMQ keeps an exclusive
                    // one while its connection lives: the proxy closed the broker connection
                    // under it.
                    self.violation(format!(
                        "channel {ch} was closed with 404 {text:?} (cause {cause:?}): the \
                         client's own exclusive queue is gone while it is connected"
                    ));
                }
                match self.wait.clone() {
                    Wait::ChannelClose(c) if c == ch => self.wait = Wait::Nothing,
                    Wait::Reply(c) | Wait::Confirms(c) if c == ch => {
                        // The step can never finish: leave politely.
                        self.abandon(now);
                    }
                    _ => {}
                }
            }
            ids::CHANNEL_CLOSE_OK => {
                if chan.state == ChState::Closing {
                    self.chans.remove(&ch);
                    if self.wait == Wait::Reply(ch) {
                        self.wait = Wait::Nothing;
                    }
                } else {
                    self.violation(format!("channel.close-ok on channel {ch} we did not close"));
                }
            }
            ids::BASIC_DELIVER => {
                let tag = r.shortstr().unwrap_or_default().to_vec();
                let dtag = r.u64().unwrap_or(0);
                let redelivered = r.bit().unwrap_or(false);
                if !chan.consumers.iter().any(|(t, _, _)| *t == tag) {
                    let what = format!(
                        "basic.deliver for consumer {:?} on channel {ch}, which has no such consumer",
                        lossy(&tag)
                    );
                    self.violation(what);
                }
                let chan = self.chans.get_mut(&ch).expect("present");
                chan.content = Some(Incoming {
                    kind: IncomingKind::Deliver {
                        tag,
                        dtag,
                        redelivered,
                    },
                    size: None,
                    body: Vec::new(),
                });
            }
            ids::BASIC_GET_OK => {
                let dtag = r.u64().unwrap_or(0);
                let slot = match chan.expect.take() {
                    Some(Reply::Get(slot)) => slot,
                    Some(Reply::Intrusion(Intrusion::Get, slot)) => {
                        if let Some(i) = chan.intrusion.take() {
                            self.intrusion_answered(i, mid, board);
                        }
                        slot
                    }
                    other => {
                        chan.expect = other;
                        self.violation(format!("basic.get-ok on channel {ch} without a get"));
                        NO_QUEUE
                    }
                };
                let chan = self.chans.get_mut(&ch).expect("present");
                chan.content = Some(Incoming {
                    kind: IncomingKind::GetOk { dtag, slot },
                    size: None,
                    body: Vec::new(),
                });
            }
            ids::BASIC_RETURN => {
                chan.content = Some(Incoming {
                    kind: IncomingKind::Return,
                    size: None,
                    body: Vec::new(),
                });
            }
            ids::BASIC_ACK | ids::BASIC_NACK => {
                let dtag = r.u64().unwrap_or(0);
                let multiple = r.bit().unwrap_or(false);
                let ack = mid == ids::BASIC_ACK;
                self.confirm(ch, dtag, multiple, ack);
            }
            ids::BASIC_CANCEL => {
                // The broker cancels a consumer when its queue is deleted.
                let tag = r.shortstr().unwrap_or_default().to_vec();
                let slot = chan
                    .consumers
                    .iter()
                    .find(|(t, _, _)| *t == tag)
                    .map(|(_, s, _)| *s);
                chan.consumers.retain(|(t, _, _)| *t != tag);
                if let Some(slot) = slot {
                    if board.exclusive_owner(slot) == Some(self.id) {
                        let name = board.name(slot).unwrap_or("?").to_owned();
                        self.violation(format!(
                            "its exclusive queue '{name}' (slot {slot}) was deleted under its consumer on channel {ch} while it was connected"
                        ));
                    }
                }
            }
            _ => {
                let expected = chan.expect.as_ref().is_some_and(|e| e.matches(mid));
                if !expected {
                    let what = format!(
                        "unexpected {mid:?} on channel {ch} (waiting for {:?})",
                        chan.expect
                    );
                    return self.violation(what);
                }
                let reply = chan.expect.take().expect("checked");
                match reply {
                    Reply::OpenOk => chan.state = ChState::Open,
                    Reply::DeclareOk(slot, exclusive) => {
                        let name = lossy(r.shortstr().unwrap_or_default());
                        if board.name(slot).is_none() {
                            board.set(slot, name.clone());
                        }
                        if exclusive && board.name(slot) == Some(name.as_str()) {
                            board.claim(slot, &name, self.id, now);
                        }
                    }
                    Reply::Intrusion(op, slot) => {
                        if op == Intrusion::Consume {
                            let tag = r.shortstr().unwrap_or_default().to_vec();
                            chan.consumers.push((tag, slot, true));
                        }
                        if let Some(i) = chan.intrusion.take() {
                            self.intrusion_answered(i, mid, board);
                        }
                    }
                    Reply::ConsumeOk(slot) => {
                        let tag = r.shortstr().unwrap_or_default().to_vec();
                        let no_ack = chan.no_ack;
                        chan.consumers.push((tag, slot, no_ack));
                    }
                    Reply::TypedConsumeOk => {
                        let tag = r.shortstr().unwrap_or_default().to_vec();
                        chan.consumers.push((tag, NO_QUEUE, false));
                    }
                    Reply::SelectOk => chan.confirm = true,
                    _ => {}
                }
                if self.wait == Wait::Reply(ch) {
                    self.wait = Wait::Nothing;
                }
            }
        }
    }

    fn confirm(&mut self, ch: u16, dtag: u64, multiple: bool, ack: bool) {
        let Some(chan) = self.chans.get_mut(&ch) else {
            return;
        };
        if !chan.confirm {
            return self.violation(format!(
                "{} on channel {ch}, which is not in confirm mode",
                if ack { "basic.ack" } else { "basic.nack" }
            ));
        }
        if dtag > chan.next_cno {
            let what = format!(
                "confirm {dtag} on channel {ch}, but only {} publishes were made",
                chan.next_cno
            );
            return self.violation(what);
        }
        let done: Vec<u64> = if multiple {
            chan.outstanding.range(..=dtag).map(|(k, _)| *k).collect()
        } else if chan.outstanding.contains_key(&dtag) {
            vec![dtag]
        } else {
            let what = format!("confirm {dtag} on channel {ch} twice");
            return self.violation(what);
        };
        for cno in done {
            if let Some(seq) = chan.outstanding.remove(&cno) {
                if ack {
                    self.acked.insert((ch, seq));
                } else {
                    self.nacked.insert((ch, seq));
                }
            }
        }
        if self.wait == Wait::Confirms(ch)
            && self
                .chans
                .get(&ch)
                .is_some_and(|c| c.outstanding.is_empty())
        {
            self.wait = Wait::Nothing;
        }
    }

    fn content_frame(&mut self, now: Instant, ch: u16, f: Frame, board: &mut Board) {
        let chan = self.chans.get_mut(&ch).expect("present");
        let inc = chan.content.as_mut().expect("present");
        match (f.kind(), inc.size) {
            (FrameType::Header, None) => match parse_header(f.payload()) {
                Ok(h) => inc.size = Some(h.body_size),
                Err(e) => {
                    return self.violation(format!("bad content header on channel {ch}: {e}"))
                }
            },
            (FrameType::Body, Some(size)) => {
                inc.body.extend_from_slice(f.payload());
                if inc.body.len() as u64 > size {
                    chan.content = None;
                    return self
                        .violation(format!("content body on channel {ch} exceeds its header"));
                }
            }
            _ => {
                chan.content = None;
                let what = format!(
                    "{} on channel {ch} while content was expected",
                    crate::trace::describe(&f)
                );
                return self.violation(what);
            }
        }
        if inc.size == Some(inc.body.len() as u64) {
            let inc = chan.content.take().expect("present");
            self.message(now, ch, inc, board);
        }
    }

    fn message(&mut self, now: Instant, ch: u16, inc: Incoming, board: &Board) {
        let me = self.id;
        let origin = Origin::parse(&inc.body);
        if let Some(o) = origin {
            if !o.matches_body(&inc.body) {
                self.violation(format!("corrupted body of [{o}] on channel {ch}"));
            }
        } else {
            self.violation(format!(
                "untagged message on channel {ch} ({} bytes)",
                inc.body.len()
            ));
        }
        // A delivery or get-ok from another client's exclusive queue (B5): the queue it was
        // consumed or got from, or the one it was published to.
        let chan = self.chans.get(&ch).expect("present");
        let mut from = match &inc.kind {
            IncomingKind::Deliver { tag, .. } => chan
                .consumers
                .iter()
                .find(|(t, _, _)| t == tag)
                .map(|(_, s, _)| *s),
            IncomingKind::GetOk { slot, .. } => Some(*slot),
            IncomingKind::Return => None,
        };
        if matches!(inc.kind, IncomingKind::Return) {
            from = None;
        } else if let Some(o) = origin {
            if from.is_none_or(|s| board.exclusive_owner(s).is_none_or(|x| x == me)) {
                from = Some(o.queue);
            }
        }
        if let Some(slot) = from.filter(|s| *s != NO_QUEUE) {
            if let Some(owner) = board.exclusive_owner(slot).filter(|x| *x != me) {
                let what = match origin {
                    Some(o) => format!("[{o}]"),
                    None => "a message".to_owned(),
                };
                let name = board.name(slot).unwrap_or("?").to_owned();
                self.violation(format!(
                    "received {what} on channel {ch} from c{owner}'s exclusive queue '{name}' (slot {slot})"
                ));
            }
        }
        let chan = self.chans.get_mut(&ch).expect("present");
        match inc.kind {
            IncomingKind::Deliver {
                tag,
                dtag,
                redelivered,
            } => {
                let expected_dtag = chan.last_dtag + 1;
                chan.last_dtag = dtag;
                let consumer = chan.consumers.iter().find(|(t, _, _)| *t == tag).cloned();
                let mut problems = Vec::new();
                if dtag != expected_dtag {
                    problems.push(format!(
                        "delivery tag {dtag} on channel {ch}, expected {expected_dtag}"
                    ));
                }
                if let (Some(o), Some((_, slot, _))) = (origin, &consumer) {
                    if o.queue != NO_QUEUE && o.queue != *slot {
                        problems.push(format!(
                            "[{o}] was addressed to queue slot {} but came from consumer of slot {slot} on channel {ch}",
                            o.queue
                        ));
                    }
                }
                if let Some(o) = origin {
                    if !redelivered {
                        let last = chan.order.entry((o.client, o.channel)).or_insert(0);
                        if o.seq <= *last {
                            problems.push(format!(
                                "[{o}] delivered on channel {ch} after #{} (order broken)",
                                *last
                            ));
                        }
                        *last = (*last).max(o.seq);
                    }
                    self.received.push(Received {
                        ch,
                        origin: o,
                        redelivered,
                    });
                }
                let no_ack = consumer.is_some_and(|c| c.2);
                let state = chan.state;
                chan.firsts += u32::from(!redelivered);
                let nack = self.spec.nack_every > 0
                    && !redelivered
                    && chan.firsts.is_multiple_of(self.spec.nack_every);
                for p in problems {
                    self.violation(p);
                }
                if !no_ack && state == ChState::Open && self.reading {
                    let frame = if nack {
                        method_frame(ch, ids::BASIC_NACK, |w| {
                            w.u64(dtag).bit(false).bit(true);
                        })
                    } else {
                        method_frame(ch, ids::BASIC_ACK, |w| {
                            w.u64(dtag).bit(false);
                        })
                    };
                    self.send(now, frame);
                }
            }
            IncomingKind::GetOk { dtag, slot } => {
                let expected_dtag = chan.last_dtag + 1;
                chan.last_dtag = dtag;
                let state = chan.state;
                if dtag != expected_dtag {
                    self.violation(format!(
                        "delivery tag {dtag} on channel {ch} (get), expected {expected_dtag}"
                    ));
                }
                if let Some(o) = origin {
                    if o.queue != NO_QUEUE && slot != NO_QUEUE && o.queue != slot {
                        self.violation(format!(
                            "[{o}] was addressed to queue slot {} but basic.get on slot {slot} returned it",
                            o.queue
                        ));
                    }
                    self.received.push(Received {
                        ch,
                        origin: o,
                        redelivered: false,
                    });
                }
                if state == ChState::Open {
                    let ack = method_frame(ch, ids::BASIC_ACK, |w| {
                        w.u64(dtag).bit(false);
                    });
                    self.send(now, ack);
                }
                if self.wait == Wait::Reply(ch) {
                    self.wait = Wait::Nothing;
                }
            }
            IncomingKind::Return => {
                if let Some(o) = origin {
                    if o.client != me || o.channel != ch {
                        self.violation(format!("basic.return of [{o}] reached c{me} ch{ch}"));
                    }
                }
            }
        }
    }

    /// Whether `text` is RabbitMQ's 404 for a queue this client declared exclusively.
    fn lost_own_queue(&self, text: &str, now: Instant, board: &Board) -> bool {
        let name = text
            .strip_prefix("NOT_FOUND - no queue '")
            .and_then(|rest| rest.rsplit_once("' in vhost '"))
            .map(|(name, _)| name);
        name.and_then(|n| board.owner_of(n, now))
            .is_some_and(|(owner, _)| owner == self.id)
    }
}
