//! Content: the header frame and body frames that follow a content-carrying method
//! (`basic.publish` from clients; `deliver`, `return`, `get-ok` from the broker).
//!
//! The proxy checks every header a client sends the way RabbitMQ would decode it, and
//! re-chunks body frames when the two sides negotiated different frame sizes.

use crate::frame::{frame_end, frame_header, FrameType, FRAME_OVERHEAD};
use crate::table::FieldTable;
use crate::wire::{Reader, WireError};
use bytes::Bytes;

/// The fields of a content header the proxy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentHeader {
    /// Must match the class of the method the content belongs to.
    pub class_id: u16,
    /// Total size of the body frames that follow.
    pub body_size: u64,
}

/// The basic-class property list in flag order (bit 15 first).
#[derive(Clone, Copy)]
enum Prop {
    Short,
    Table,
    Octet,
    Timestamp,
}

const BASIC_PROPERTIES: [Prop; 14] = [
    Prop::Short,     // content-type
    Prop::Short,     // content-encoding
    Prop::Table,     // headers
    Prop::Octet,     // delivery-mode
    Prop::Octet,     // priority
    Prop::Short,     // correlation-id
    Prop::Short,     // reply-to
    Prop::Short,     // expiration
    Prop::Short,     // message-id
    Prop::Timestamp, // timestamp
    Prop::Short,     // type
    Prop::Short,     // user-id
    Prop::Short,     // app-id
    Prop::Short,     // reserved (cluster-id)
];

/// Parses a content header payload and checks its property list completely: RabbitMQ decodes
/// properties lazily, and a malformed list would fail inside the broker's channel process.
pub fn parse_header(payload: &[u8]) -> Result<ContentHeader, WireError> {
    let mut r = Reader::new(payload);
    let class_id = r.u16()?;
    let _weight = r.u16()?;
    let body_size = r.u64()?;
    let flags = r.u16()?;
    // Bit 0 would announce a second flags word; basic has only 14 properties.
    if flags & 0b11 != 0 {
        return Err(WireError::BadLength);
    }
    for (i, prop) in BASIC_PROPERTIES.iter().enumerate() {
        if flags & (1 << (15 - i)) == 0 {
            continue;
        }
        match prop {
            Prop::Short => {
                r.shortstr()?;
            }
            Prop::Table => {
                r.table()?;
            }
            Prop::Octet => {
                r.u8()?;
            }
            Prop::Timestamp => {
                r.u64()?;
            }
        }
    }
    r.finish()?;
    Ok(ContentHeader {
        class_id,
        body_size,
    })
}

/// The body size and the `headers` property of a basic content header (the broker's event
/// exchange carries its events' subjects there).
pub fn basic_headers(payload: &[u8]) -> Result<(u64, Option<FieldTable>), WireError> {
    let h = parse_header(payload)?;
    let mut r = Reader::new(payload);
    r.bytes(12)?; // class, weight, body size
    let flags = r.u16()?;
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            r.shortstr()?;
        }
    }
    let headers = if flags & (1 << 13) != 0 {
        Some(FieldTable::decode(r.table()?)?)
    } else {
        None
    };
    Ok((h.body_size, headers))
}

/// Splits one body payload into wire buffers whose frames fit `frame_max`, pushing them to
/// `out` in order. The payload is never copied: each frame is a fresh 7-byte header, a slice
/// of `payload`, and the shared end octet.
pub fn rechunk_body(channel: u16, payload: Bytes, frame_max: u32, out: &mut impl FnMut(Bytes)) {
    let max_payload = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    let mut rest = payload;
    while !rest.is_empty() {
        let chunk = rest.split_to(rest.len().min(max_payload));
        out(frame_header(FrameType::Body, channel, chunk.len()));
        out(chunk);
        out(frame_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use bytes::BytesMut;

    fn header(flags: u16, props: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 60, 0, 0];
        v.extend_from_slice(&11u64.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(props);
        v
    }

    #[test]
    fn parses_headers_with_properties() {
        // content-type "text" and delivery-mode 2
        let h = header(0x8000 | 0x1000, b"\x04text\x02");
        assert_eq!(
            parse_header(&h),
            Ok(ContentHeader {
                class_id: 60,
                body_size: 11
            })
        );
    }

    #[test]
    fn rejects_malformed_property_lists() {
        // Flag for content-type set, string missing.
        assert_eq!(
            parse_header(&header(0x8000, b"")),
            Err(WireError::Truncated)
        );
        // Continuation flag.
        assert_eq!(
            parse_header(&header(0x0001, b"")),
            Err(WireError::BadLength)
        );
        // Property bytes left over.
        assert_eq!(
            parse_header(&header(0, b"x")),
            Err(WireError::TrailingBytes)
        );
        // A headers table RabbitMQ cannot parse.
        assert_eq!(
            parse_header(&header(0x2000, b"\0\0\0\x03\x01kZ")),
            Err(WireError::BadFieldType(b'Z'))
        );
    }

    #[test]
    fn rechunking_produces_valid_frames_that_reassemble() {
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut wire = BytesMut::new();
        rechunk_body(4, Bytes::from(body.clone()), 4096, &mut |b| {
            wire.extend_from_slice(&b)
        });
        let d = FrameDecoder::new(4096);
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(f) = d.decode(&mut wire).unwrap() {
            assert_eq!((f.kind(), f.channel()), (FrameType::Body, 4));
            got.extend_from_slice(f.payload());
            frames += 1;
        }
        assert_eq!(got, body);
        assert_eq!(frames, 3);
    }
}
