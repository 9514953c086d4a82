//! The first stop of every frame a client sends after its handshake: frames on channel 0,
//! frames on a channel that is not open (or no longer), the dispatch of the rest to the
//! method, header and body rules, and the carrying out of the [`Verdict`] (B4, B7).

use super::exclusive::clear_nowait;
use super::{checked_method, misplaced_frame, unimplemented_method, ChanState, Phase, Verdict};
use crate::frame::{Frame, FrameType};
use crate::hub::channels::Slot;
use crate::hub::{ClientId, Hub, HubEvent};
use crate::method::{self, encode, ids, Method};
use crate::reply::{self, Reply};
use std::time::Instant;

impl Hub {
    /// Handles one frame from a client. Returns false once the client is closed, so the
    /// rest of its batch is dropped.
    pub(in crate::hub) fn client_frame(
        &mut self,
        now: Instant,
        id: ClientId,
        frame: Frame,
    ) -> bool {
        let Some(c) = self.client_mut(id) else {
            return false;
        };
        c.liveness.received(now);
        c.counters.frames_in += 1;
        c.counters.bytes_in += frame.wire_len() as u64;
        c.counters.last_activity = now;
        self.stats.client_frames += 1;
        self.stats.client_bytes += frame.wire_len() as u64;
        self.take_client_frame(now, id, frame)
    }

    /// Checks one client frame and carries out the verdict: a frame that just arrived, or
    /// one that was parked (see `exchange_types`). Returns false once the client is closed.
    pub(in crate::hub) fn take_client_frame(
        &mut self,
        now: Instant,
        id: ClientId,
        frame: Frame,
    ) -> bool {
        let Some(c) = self.client(id) else {
            return false;
        };
        if matches!(c.phase, Phase::Closing { .. }) {
            return self.frame_while_closing(now, id, &frame);
        }
        let verdict = if frame.channel() == 0 {
            self.channel_zero_frame(now, id, &frame)
        } else {
            self.channel_frame(now, id, &frame)
        };
        self.carry_out(now, id, frame, verdict)
    }

    /// A frame from a client warren is closing.
    fn frame_while_closing(&mut self, now: Instant, id: ClientId, frame: &Frame) -> bool {
        // Only the answer to our Close matters now.
        if frame.method_id() == Some(ids::CONNECTION_CLOSE_OK)
            || frame.method_id() == Some(ids::CONNECTION_CLOSE)
        {
            if frame.method_id() == Some(ids::CONNECTION_CLOSE) {
                self.send_client(now, id, encode::close_ok(0));
            }
            self.remove_client(id);
            return false;
        }
        true
    }

    /// Carries out the verdict on a client frame. Returns false once the client is closed.
    fn carry_out(&mut self, now: Instant, id: ClientId, frame: Frame, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Forward => {
                self.forward_client_frame(now, id, frame);
                true
            }
            Verdict::ForwardAskingForReply => {
                let mut frame = frame;
                clear_nowait(&mut frame);
                self.forward_client_frame(now, id, frame);
                true
            }
            Verdict::Hold => {
                let kept = self.hold_publish_frame(now, id, frame);
                self.kept_within_bound(now, id, kept)
            }
            Verdict::Done => self.client(id).is_some(),
            Verdict::Fatal(mut r) => {
                if let Some(m) = frame.method_id() {
                    if r.class_method == (0, 0) {
                        r = r.caused_by(m);
                    }
                }
                self.close_client(now, id, r);
                false
            }
            Verdict::CloseChannel(r) => {
                self.close_channel_from_proxy(now, id, frame.channel(), r);
                true
            }
            Verdict::Park(asks) => {
                let kept = self.park(now, id, frame, asks);
                self.kept_within_bound(now, id, kept)
            }
        }
    }

    /// A frame kept for later (a publish's piece, a parked frame): a client past its buffer
    /// bound is closed. Returns false once it is.
    fn kept_within_bound(&mut self, now: Instant, id: ClientId, kept: Result<(), Reply>) -> bool {
        match kept {
            Ok(()) => true,
            Err(r) => {
                self.close_client(now, id, r);
                false
            }
        }
    }

    /// Frames on channel 0: heartbeats and connection-class methods, all handled here.
    fn channel_zero_frame(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        match frame.kind() {
            FrameType::Heartbeat if frame.payload().is_empty() => return Verdict::Done,
            FrameType::Method => {}
            _ => return Verdict::Fatal(misplaced_frame(frame)),
        }
        // Once open, RabbitMQ takes only these on channel 0 (an unknown method is 540 below);
        // a `close-ok` is one only while warren closes the client (`frame_while_closing`).
        let running = [ids::CONNECTION_CLOSE, ids::CONNECTION_UPDATE_SECRET];
        if frame
            .method_id()
            .is_some_and(|mid| method::spec(mid).is_some() && !running.contains(&mid))
        {
            return Verdict::Fatal(Reply::new(
                reply::CHANNEL_ERROR,
                "unexpected method in connection state running",
            ));
        }
        let (mid, m) = match checked_method(frame) {
            Ok(x) => x,
            Err(r) => return Verdict::Fatal(r),
        };
        match m {
            Method::ConnectionClose(_) => {
                self.send_client(now, id, encode::close_ok(0));
                self.event(HubEvent::ClientLeft { client: id });
                self.release_client(now, id);
                self.remove_client(id);
                Verdict::Done
            }
            _ if mid == ids::CONNECTION_UPDATE_SECRET => {
                // The shared upstream stays authenticated as it is; the client's new secret
                // only matters for its next connection, which is checked then.
                self.send_client(now, id, encode::update_secret_ok());
                Verdict::Done
            }
            _ => Verdict::Fatal(unimplemented_method()),
        }
    }

    /// Frames on a numbered channel.
    fn channel_frame(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        let ch = frame.channel();
        let Some(c) = self.client(id) else {
            return Verdict::Done;
        };
        if frame.kind() == FrameType::Heartbeat {
            return Verdict::Fatal(misplaced_frame(frame));
        }
        let Some(chan) = c.channels.get(&ch) else {
            return self.frame_on_unopened_channel(now, id, frame);
        };
        if self.types.is_parked(id, ch) {
            return Verdict::Park(None);
        }
        match chan.state {
            ChanState::Closed(_) => return self.frame_on_closed_channel(now, id, frame),
            // The client asked to close; nothing it sends now matters.
            ChanState::Closing(_) => return Verdict::Done,
            ChanState::Waiting | ChanState::Open(_) => {}
        }
        match frame.kind() {
            // Content comes first, whatever the method is (RabbitMQ's frame assembler).
            FrameType::Method => match &chan.publish {
                Some(p) => Verdict::Fatal(p.out_of_sequence()),
                None => self.channel_method(now, id, frame),
            },
            FrameType::Header => self.content_header(id, frame),
            FrameType::Body => self.content_body(id, frame),
            FrameType::Heartbeat => Verdict::Done,
        }
    }

    /// Whether client `id` has as many channels as the channel_max it negotiated.
    fn channels_at_max(&self, id: ClientId) -> bool {
        self.client(id)
            .is_some_and(|c| c.channels.len() >= usize::from(c.channel_max))
    }

    fn frame_on_unopened_channel(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        match frame.method_id() {
            Some(ids::CHANNEL_OPEN) => match checked_method(frame) {
                // RabbitMQ counts channels against channel_max (their numbers may be higher),
                // and names no method as the cause: the close goes out here, not as a Fatal
                // verdict, which would name channel.open.
                Ok(_) if self.channels_at_max(id) => {
                    let max = self.client(id).map_or(0, |c| c.channel_max);
                    let text = format!(
                        "number of channels opened ({max}) has reached the negotiated \
                         channel_max ({max})"
                    );
                    self.close_client(now, id, Reply::new(reply::NOT_ALLOWED, text));
                    Verdict::Done
                }
                Ok(_) => {
                    self.open_channel(now, id, frame.channel());
                    Verdict::Done
                }
                Err(r) => Verdict::Fatal(r),
            },
            // A late CloseOk for a channel already forgotten: harmless.
            Some(ids::CHANNEL_CLOSE_OK) => Verdict::Done,
            _ => Verdict::Fatal(Reply::new(reply::CHANNEL_ERROR, "expected 'channel.open'")),
        }
    }

    fn frame_on_closed_channel(&mut self, now: Instant, id: ClientId, frame: &Frame) -> Verdict {
        let ch = frame.channel();
        match frame.method_id() {
            Some(ids::CHANNEL_CLOSE_OK) => {
                let quarantined = self
                    .client_mut(id)
                    .and_then(|c| c.channels.remove(&ch))
                    .and_then(|chan| match chan.state {
                        ChanState::Closed(r) => r,
                        _ => None,
                    });
                if let Some(r) = quarantined {
                    if self.slot(r) == Slot::Quarantined {
                        self.set_slot(now, r, Slot::Free);
                    }
                }
                Verdict::Done
            }
            Some(ids::CHANNEL_CLOSE) => {
                // Both sides closed at once: answer, and keep waiting for its CloseOk.
                self.send_client(now, id, encode::close_ok(ch));
                Verdict::Done
            }
            // Discarded until the client acknowledges the close (B4).
            _ => Verdict::Done,
        }
    }
}
