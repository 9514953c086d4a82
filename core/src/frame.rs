//! AMQP 0-9-1 frames: a zero-copy decoder that splits whole frames off a read buffer, and the
//! encoder for the few frames the proxy writes itself.
//!
//! Wire layout: `type:u8 | channel:u16 | size:u32 | payload[size] | 0xCE`. A decoded [`Frame`]
//! owns its whole wire encoding as one `BytesMut` split off the socket buffer, so forwarding a
//! frame to another connection only rewrites the two channel bytes in place.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// The 0-9-1 protocol header a client sends first and RabbitMQ sends back on a mismatch.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes of framing around a payload: 7 of header, 1 end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate (spec constant `frame-min-size`).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// A heartbeat frame, ready to write.
pub const HEARTBEAT: &[u8; 8] = &[8, 0, 0, 0, 0, 0, 0, FRAME_END];

/// The four frame types of AMQP 0-9-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// A method: class id, method id, arguments.
    Method,
    /// A content header: class id, body size, properties.
    Header,
    /// A slice of content body.
    Body,
    /// A heartbeat, always on channel 0 with an empty payload.
    Heartbeat,
}

impl FrameType {
    fn from_octet(b: u8) -> Option<FrameType> {
        match b {
            1 => Some(FrameType::Method),
            2 => Some(FrameType::Header),
            3 => Some(FrameType::Body),
            8 => Some(FrameType::Heartbeat),
            _ => None,
        }
    }

    /// The type octet on the wire.
    #[must_use]
    pub fn octet(self) -> u8 {
        match self {
            FrameType::Method => 1,
            FrameType::Header => 2,
            FrameType::Body => 3,
            FrameType::Heartbeat => 8,
        }
    }
}

/// A frame the decoder refused. Each maps to `501 FRAME_ERROR`; the text is RabbitMQ's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The declared size exceeds the negotiated frame_max. Detected from the header alone,
    /// before anything is buffered for the payload.
    TooLarge {
        /// The frame's type octet.
        kind: u8,
        /// Size of the whole frame as declared.
        size: u64,
        /// The negotiated limit.
        max: u32,
    },
    /// The octet after the payload was not `0xCE`.
    BadEnd(u8),
    /// A frame type octet that AMQP 0-9-1 does not define.
    BadType(u8),
}

impl FrameError {
    /// The AMQP reply code for this error.
    #[must_use]
    pub fn reply_code(&self) -> u16 {
        crate::reply::FRAME_ERROR
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // RabbitMQ's words: the payload's size, and the largest payload frame_max leaves.
            FrameError::TooLarge { kind, size, max } => write!(
                f,
                "FRAME_ERROR - type {kind}, all octets = <<>>: {{frame_too_large,{},{}}}",
                size.saturating_sub(FRAME_OVERHEAD as u64),
                max.saturating_sub(FRAME_OVERHEAD as u32)
            ),
            FrameError::BadEnd(b) => {
                write!(f, "FRAME_ERROR - invalid frame end marker 0x{b:02x}")
            }
            FrameError::BadType(t) => write!(f, "FRAME_ERROR - unknown frame type {t}"),
        }
    }
}

/// One whole frame as it was on the wire (header, payload and end octet).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    raw: BytesMut,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("kind", &self.kind())
            .field("channel", &self.channel())
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

impl Frame {
    /// Builds a frame around `payload` (the payload is copied once).
    #[must_use]
    pub fn new(kind: FrameType, channel: u16, payload: &[u8]) -> Frame {
        let mut raw = BytesMut::with_capacity(payload.len() + FRAME_OVERHEAD);
        raw.put_u8(kind.octet());
        raw.put_u16(channel);
        raw.put_u32(payload.len() as u32);
        raw.put_slice(payload);
        raw.put_u8(FRAME_END);
        Frame { raw }
    }

    /// The frame type.
    #[must_use]
    pub fn kind(&self) -> FrameType {
        FrameType::from_octet(self.raw[0]).unwrap_or(FrameType::Heartbeat)
    }

    /// The channel number.
    #[must_use]
    pub fn channel(&self) -> u16 {
        u16::from_be_bytes([self.raw[1], self.raw[2]])
    }

    /// Renumbers the frame in place; the payload is not touched.
    pub fn set_channel(&mut self, channel: u16) {
        self.raw[1..3].copy_from_slice(&channel.to_be_bytes());
    }

    /// The payload between header and end octet.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.raw[7..self.raw.len() - 1]
    }

    /// The payload, writable: for the rare argument the proxy rewrites in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.raw.len() - 1;
        &mut self.raw[7..end]
    }

    /// Length of the whole frame on the wire.
    #[must_use]
    pub fn wire_len(&self) -> usize {
        self.raw.len()
    }

    /// The wire encoding, ready to write.
    #[must_use]
    pub fn freeze(self) -> Bytes {
        self.raw.freeze()
    }

    /// The payload as shared bytes, without copying: for re-chunking a body (B8, B9).
    #[must_use]
    pub fn into_payload(self) -> Bytes {
        let end = self.raw.len() - 1;
        self.raw.freeze().slice(7..end)
    }

    /// For method frames, the (class, method) pair; `None` for other types or a short payload.
    #[must_use]
    pub fn method_id(&self) -> Option<crate::spec::MethodId> {
        if self.kind() != FrameType::Method {
            return None;
        }
        let p = self.payload();
        if p.len() < 4 {
            return None;
        }
        Some(crate::spec::MethodId::new(
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ))
    }
}

/// Splits whole frames off a read buffer.
///
/// The decoder never allocates for a frame it will reject: the size in the 7-byte header is
/// checked against `max_frame_size` first, and only then is room reserved for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    max_frame_size: u32,
    /// Bytes tolerated beyond `max_frame_size` (see [`FrameDecoder::for_client`]).
    slack: u32,
}

impl FrameDecoder {
    /// A decoder that accepts frames of at most `max_frame_size` bytes on the wire (the
    /// negotiated frame_max, which counts header and end octet).
    #[must_use]
    pub fn new(max_frame_size: u32) -> Self {
        FrameDecoder {
            max_frame_size,
            slack: 0,
        }
    }

    /// A decoder for a client's frames, as RabbitMQ reads them: a payload may be as large as
    /// frame_max itself, 8 bytes more than the limit allows, for clients that forget the
    /// framing (RabbitMQ's "fudge"; a client that works against it must work through warren).
    #[must_use]
    pub fn for_client(max_frame_size: u32) -> Self {
        FrameDecoder {
            max_frame_size,
            slack: FRAME_OVERHEAD as u32,
        }
    }

    /// The current limit.
    #[must_use]
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Returns the next whole frame, `Ok(None)` when more bytes are needed, or the reason the
    /// stream is broken. After an error the buffer is left as is; the connection is done.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if FrameType::from_octet(buf[0]).is_none() {
            return Err(FrameError::BadType(buf[0]));
        }
        if buf.len() < 7 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as u64;
        let total = size + FRAME_OVERHEAD as u64;
        if total > u64::from(self.max_frame_size) + u64::from(self.slack) {
            return Err(FrameError::TooLarge {
                kind: buf[0],
                size: total,
                max: self.max_frame_size,
            });
        }
        let total = total as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let end = buf[total - 1];
        if end != FRAME_END {
            return Err(FrameError::BadEnd(end));
        }
        Ok(Some(Frame {
            raw: buf.split_to(total),
        }))
    }
}

/// Builds a method frame: writes the header, lets `args` append the arguments, then patches
/// the size and appends the end octet.
#[must_use]
pub fn method_frame(
    channel: u16,
    id: crate::spec::MethodId,
    args: impl FnOnce(&mut crate::wire::Writer<'_>),
) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(FrameType::Method.octet());
    buf.put_u16(channel);
    buf.put_u32(0);
    buf.put_u16(id.class);
    buf.put_u16(id.method);
    args(&mut crate::wire::Writer::new(&mut buf));
    let size = (buf.len() - 7) as u32;
    buf[3..7].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
    buf.freeze()
}

/// Writes a frame header for a payload of `len` bytes; used when re-chunking a body into
/// smaller frames without copying the payload (header, payload slice and end go out as
/// separate buffers).
#[must_use]
pub fn frame_header(kind: FrameType, channel: u16, len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(7);
    buf.put_u8(kind.octet());
    buf.put_u16(channel);
    buf.put_u32(len as u32);
    buf.freeze()
}

/// The end octet as a shareable buffer.
#[must_use]
pub fn frame_end() -> Bytes {
    Bytes::from_static(&[FRAME_END])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(kind: u8, ch: u16, payload: &[u8], end: u8) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&ch.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v.push(end);
        v
    }

    #[test]
    fn splits_whole_frames_and_waits_on_partial_ones() {
        let mut all = wire(3, 5, b"hello", FRAME_END);
        all.extend(wire(8, 0, b"", FRAME_END));
        let d = FrameDecoder::new(4096);
        for cut in 0..all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut frames = Vec::new();
            while let Some(f) = d.decode(&mut buf).unwrap() {
                frames.push(f);
            }
            let whole_first = cut >= 13;
            assert_eq!(frames.len(), usize::from(whole_first));
        }
        let mut buf = BytesMut::from(&all[..]);
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            (f.kind(), f.channel(), f.payload()),
            (FrameType::Body, 5, &b"hello"[..])
        );
        let h = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(h.kind(), FrameType::Heartbeat);
        assert!(buf.is_empty());
    }

    #[test]
    fn the_payload_comes_out_without_header_or_end_octet() {
        let f = Frame::new(FrameType::Body, 3, b"abc");
        assert_eq!(f.payload(), b"abc");
        assert_eq!(&f.into_payload()[..], b"abc");
    }

    #[test]
    fn rejects_a_bad_end_octet() {
        let mut buf = BytesMut::from(&wire(1, 1, b"abcd", 0x00)[..]);
        assert_eq!(
            FrameDecoder::new(4096).decode(&mut buf),
            Err(FrameError::BadEnd(0))
        );
    }

    #[test]
    fn rejects_oversize_from_the_header_before_buffering() {
        // Only the header has arrived; the declared size is already too big.
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        let cap_before = buf.capacity();
        let err = FrameDecoder::new(131_072).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 131_072, .. }));
        assert_eq!(buf.capacity(), cap_before, "nothing was reserved");
    }

    #[test]
    fn frame_max_counts_header_and_end() {
        let payload = vec![0u8; 4096 - FRAME_OVERHEAD];
        let mut ok = BytesMut::from(&wire(3, 1, &payload, FRAME_END)[..]);
        assert!(FrameDecoder::new(4096).decode(&mut ok).unwrap().is_some());
        let payload = vec![0u8; 4096 - FRAME_OVERHEAD + 1];
        let mut too_big = BytesMut::from(&wire(3, 1, &payload, FRAME_END)[..]);
        assert!(FrameDecoder::new(4096).decode(&mut too_big).is_err());
    }

    #[test]
    fn a_clients_payload_may_be_as_large_as_frame_max() {
        let payload = vec![0u8; 4096];
        let mut ok = BytesMut::from(&wire(3, 1, &payload, FRAME_END)[..]);
        assert!(FrameDecoder::for_client(4096)
            .decode(&mut ok)
            .unwrap()
            .is_some());
        let payload = vec![0u8; 4097];
        let mut too_big = BytesMut::from(&wire(3, 1, &payload, FRAME_END)[..]);
        assert_eq!(
            FrameDecoder::for_client(4096).decode(&mut too_big),
            Err(FrameError::TooLarge {
                kind: 3,
                size: 4097 + FRAME_OVERHEAD as u64,
                max: 4096
            })
        );
    }

    #[test]
    fn rejects_unknown_frame_types_at_once() {
        let mut buf = BytesMut::from(&b"A"[..]);
        assert_eq!(
            FrameDecoder::new(4096).decode(&mut buf),
            Err(FrameError::BadType(b'A'))
        );
    }

    #[test]
    fn renumbering_touches_only_the_channel_bytes() {
        let raw = wire(3, 7, b"payload", FRAME_END);
        let mut buf = BytesMut::from(&raw[..]);
        let mut f = FrameDecoder::new(4096).decode(&mut buf).unwrap().unwrap();
        f.set_channel(0x1234);
        let out = f.freeze();
        assert_eq!(&out[1..3], &[0x12, 0x34]);
        assert_eq!(&out[3..], &raw[3..]);
    }

    #[test]
    fn amq_protocol_parses_what_we_build() {
        use amq_protocol::frame::{parse_frame, AMQPFrame};
        let f = Frame::new(FrameType::Body, 9, b"xyz").freeze();
        let (_, parsed) = parse_frame(&f[..]).unwrap();
        assert!(matches!(parsed, AMQPFrame::Body(9, ref b) if b == b"xyz"));
        let (_, hb) = parse_frame(&HEARTBEAT[..]).unwrap();
        assert!(matches!(hb, AMQPFrame::Heartbeat));
    }
}
