//! Content from a client: a `basic.publish` is held, with its header and body frames, until
//! the message is whole and within bounds, then forwarded in one piece so that no other
//! client's frames interleave with it on the shared channel (B8); a body frame larger than
//! the broker's `frame_max` is re-chunked (B9).

use super::{content_without_method, unexpected, ChanState, Verdict};
use crate::content::{parse_header, rechunk_body};
use crate::frame::{Frame, FrameType};
use crate::hub::{ClientId, Hub};
use crate::method::ids;
use crate::reply::{self, Reply};
use std::time::Instant;

impl Hub {
    pub(super) fn content_header(&mut self, id: ClientId, frame: &Frame) -> Verdict {
        let max = self.config.max_message_size;
        let ch = frame.channel();
        let Some(chan) = self
            .clients
            .get_mut(id.index())
            .and_then(|c| c.channels.get_mut(&ch))
        else {
            return Verdict::Done;
        };
        let Some(p) = chan.publish.as_mut() else {
            return Verdict::Fatal(content_without_method());
        };
        if p.remaining.is_some() {
            return Verdict::Fatal(p.out_of_sequence());
        }
        let h = match parse_header(frame.payload()) {
            Ok(h) => h,
            Err(e) => {
                return Verdict::Fatal(Reply::new(
                    reply::SYNTAX_ERROR,
                    format!("malformed content header: {e}"),
                ))
            }
        };
        if h.class_id != 60 {
            return Verdict::Fatal(
                unexpected(format!(
                    "expected content header for class 60, got one for class {} instead",
                    h.class_id
                ))
                .caused_by(ids::BASIC_PUBLISH),
            );
        }
        if h.body_size > max {
            let held = chan.publish.take().map_or(0, |p| p.bytes);
            if let Some(c) = self.clients.get_mut(id.index()) {
                c.buffered -= held;
            }
            return Verdict::CloseChannel(
                Reply::new(
                    reply::PRECONDITION_FAILED,
                    format!(
                        "message size {} is larger than configured max size {max}",
                        h.body_size
                    ),
                )
                .caused_by(ids::BASIC_PUBLISH),
            );
        }
        p.remaining = Some(h.body_size);
        Verdict::Hold
    }

    pub(super) fn content_body(&mut self, id: ClientId, frame: &Frame) -> Verdict {
        let ch = frame.channel();
        let Some(chan) = self
            .clients
            .get_mut(id.index())
            .and_then(|c| c.channels.get_mut(&ch))
        else {
            return Verdict::Done;
        };
        let Some(p) = chan.publish.as_mut() else {
            return Verdict::Fatal(content_without_method());
        };
        let Some(remaining) = p.remaining.as_mut() else {
            return Verdict::Fatal(p.out_of_sequence());
        };
        let len = frame.payload().len() as u64;
        if len > *remaining {
            return Verdict::Fatal(unexpected(format!(
                "content body on channel {ch} is larger than the size its header declared"
            )));
        }
        *remaining -= len;
        Verdict::Hold
    }

    /// Adds a frame to the channel's pending publish, and forwards the publish once its body
    /// is complete. Fails when the client's buffered content exceeds its bound (B8).
    pub(super) fn hold_publish_frame(
        &mut self,
        now: Instant,
        id: ClientId,
        frame: Frame,
    ) -> Result<(), Reply> {
        let limit = self.config.client_buffer_limit;
        let ch = frame.channel();
        let Some(c) = self.client_mut(id) else {
            return Ok(());
        };
        let Some(p) = c
            .channels
            .get_mut(&ch)
            .and_then(|chan| chan.publish.as_mut())
        else {
            return Ok(());
        };
        let len = frame.wire_len();
        p.bytes += len;
        p.frames.push(frame);
        let complete = p.remaining == Some(0);
        c.buffered += len;
        if c.buffered > limit {
            return Err(Reply::new(
                reply::RESOURCE_ERROR,
                format!("more than {limit} bytes of unfinished publishes buffered"),
            ));
        }
        if complete {
            let Some(p) = c.channels.get_mut(&ch).and_then(|chan| chan.publish.take()) else {
                return Ok(());
            };
            c.buffered -= p.bytes;
            self.stats.publishes += 1;
            for f in p.frames {
                self.forward_client_frame(now, id, f);
            }
        }
        Ok(())
    }

    /// Sends a validated client frame to its upstream channel, renumbered, or holds it while
    /// the channel waits for an upstream.
    pub(super) fn forward_client_frame(&mut self, now: Instant, id: ClientId, mut frame: Frame) {
        let ch = frame.channel();
        let Some(state) = self
            .client(id)
            .and_then(|c| c.channels.get(&ch))
            .map(|chan| match chan.state {
                ChanState::Open(r) => Some(r),
                _ => None,
            })
        else {
            return;
        };
        let Some(r) = state else {
            // Waiting for placement: park the frame until an upstream has room.
            self.held_frames.push((id, frame));
            return;
        };
        let Some(up_frame_max) = self.upstream(r.up).map(|u| u.tune.frame_max) else {
            return;
        };
        if frame.wire_len() > up_frame_max as usize {
            if frame.kind() != FrameType::Body {
                // Methods and headers cannot be split; the broker would close the shared
                // connection for a frame over its frame_max.
                let reply = Reply::new(
                    reply::FRAME_ERROR,
                    format!(
                        "a {}-byte frame on channel {ch} exceeds the broker's frame_max {up_frame_max}",
                        frame.wire_len()
                    ),
                );
                return self.close_client(now, id, reply);
            }
            rechunk_body(r.ch, frame.into_payload(), up_frame_max, &mut |b| {
                self.send_upstream(now, r.up, b);
            });
            return;
        }
        frame.set_channel(r.ch);
        self.send_upstream(now, r.up, frame.freeze());
    }
}
