//! Frames a fuzzed client sends, described by input bytes (see [`super::Build`]).

use super::*;
use crate::frames::close_bye;
use bytes::BytesMut;
use warren_core::frame::{method_frame, Frame, FrameType};
use warren_core::method::{self, encode, ids, Field, MethodId};
use warren_core::table::{FieldTable, FieldValue};
use warren_core::wire::Writer;

// ----- frame builders for fuzzed clients ------------------------------------------------

pub(super) fn m(ch: u16, id: MethodId, args: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
    method_frame(ch, id, args).to_vec()
}

pub(super) fn body_size(src: &mut Src<'_>, budget: &mut usize) -> usize {
    let n = pick(&SIZES, src.byte()).min(*budget);
    *budget -= n;
    n
}

pub(super) fn publish_method(ch: u16, flags: u8) -> Vec<u8> {
    let exchange = pick(&EXCHANGES, flags >> 4);
    let key: &[u8] = if flags & 0x40 != 0 { b"" } else { b"rk" };
    m(ch, ids::BASIC_PUBLISH, |w| {
        w.u16(0)
            .shortstr(exchange)
            .shortstr(key)
            .bit(flags & 1 != 0)
            .bit(flags & 0x0e == 0x0e);
    })
}

/// An encoded arguments table with one entry.
fn table_with(key: &str, value: FieldValue) -> BytesMut {
    let mut table = BytesMut::new();
    FieldTable::default().with(key, value).encode(&mut table);
    table
}

/// Frames a fuzzed client sends, described by the next input bytes (see [`Build`]).
pub(super) fn build(
    src: &mut Src<'_>,
    frame_max: u32,
    channel_max: u16,
    budget: &mut usize,
) -> Vec<u8> {
    let ch = match src.byte() {
        b @ 0..=191 => 1 + u16::from(b % 4),
        192..=223 => 0,
        224..=239 => channel_max.saturating_add(1),
        _ => src.u16(),
    };
    let kind = src.byte() % BUILD_KINDS;
    let name = |b: u8| pick(&QUEUES, b);
    match kind {
        0 => encode::channel_open(ch).to_vec(),
        1 => close_bye(ch),
        2 => encode::close_ok(ch).to_vec(),
        3 => {
            let flags = src.byte();
            let size = body_size(src, budget);
            let chunk = match src.byte() % 4 {
                0 => (frame_max as usize).saturating_sub(8).max(1),
                1 => 1000,
                2 => size.max(1),
                _ => 4088,
            };
            let mut out = publish_method(ch, flags);
            out.extend_from_slice(&header(ch, size as u64));
            for part in vec![b'x'; size].chunks(chunk) {
                out.extend_from_slice(&Frame::new(FrameType::Body, ch, part).freeze());
            }
            out
        }
        4 => publish_method(ch, src.byte()),
        5 => {
            let flags = src.byte();
            let size = body_size(src, budget) as u64;
            let class = if flags & 7 == 7 { 50 } else { 60 };
            let properties = if flags & 0x10 != 0 { 0x0001 } else { 0 };
            let mut payload = BytesMut::new();
            Writer::new(&mut payload)
                .u16(class)
                .u16(0)
                .u64(size)
                .u16(properties);
            Frame::new(FrameType::Header, ch, &payload)
                .freeze()
                .to_vec()
        }
        6 => {
            let size = body_size(src, budget);
            Frame::new(FrameType::Body, ch, &vec![b'y'; size])
                .freeze()
                .to_vec()
        }
        7 => {
            let kind = pick(&EXCHANGE_TYPES, src.byte());
            let flags = src.byte();
            m(ch, ids::EXCHANGE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(pick(&EXCHANGES, flags >> 4))
                    .shortstr(kind)
                    .bit(flags & 1 != 0)
                    .bit(flags & 4 != 0)
                    .bit(false)
                    .bit(false)
                    .bit(flags & 2 != 0)
                    .raw(&EMPTY_TABLE);
            })
        }
        8 => {
            let f = src.byte();
            m(ch, ids::QUEUE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(name(f >> 5))
                    .bit(f & 1 != 0)
                    .bit(f & 2 != 0)
                    .bit(f & 4 != 0)
                    .bit(f & 8 != 0)
                    .bit(f & 16 != 0)
                    .raw(&EMPTY_TABLE);
            })
        }
        9 => {
            let f = src.byte();
            m(ch, ids::QUEUE_DELETE, |w| {
                w.u16(0)
                    .shortstr(name(f >> 5))
                    .bit(f & 1 != 0)
                    .bit(f & 2 != 0)
                    .bit(f & 4 != 0);
            })
        }
        10 => {
            let f = src.byte();
            let (q, nowait) = (name(f >> 5), f & 4 != 0);
            match f % 3 {
                0 => m(ch, ids::QUEUE_BIND, |w| {
                    w.u16(0)
                        .shortstr(q)
                        .shortstr(b"amq.direct")
                        .shortstr(b"rk")
                        .bit(nowait)
                        .raw(&EMPTY_TABLE);
                }),
                1 => m(ch, ids::QUEUE_UNBIND, |w| {
                    w.u16(0)
                        .shortstr(q)
                        .shortstr(b"amq.direct")
                        .shortstr(b"rk")
                        .raw(&EMPTY_TABLE);
                }),
                _ => m(ch, ids::QUEUE_PURGE, |w| {
                    w.u16(0).shortstr(q).bit(nowait);
                }),
            }
        }
        11 => {
            let f = src.byte();
            m(ch, ids::BASIC_CONSUME, |w| {
                w.u16(0)
                    .shortstr(name(f >> 6))
                    .shortstr(pick(&TAGS, f >> 4))
                    .bit(f & 1 != 0)
                    .bit(f & 2 != 0)
                    .bit(f & 4 != 0)
                    .bit(f & 8 != 0)
                    .raw(&EMPTY_TABLE);
            })
        }
        12 => {
            let f = src.byte();
            m(ch, ids::BASIC_CANCEL, |w| {
                w.shortstr(pick(&TAGS, f >> 4)).bit(f & 1 != 0);
            })
        }
        13 => {
            let f = src.byte();
            let count = u16::from(src.byte());
            m(ch, ids::BASIC_QOS, |w| {
                w.u32(if f & 3 == 3 { 4096 } else { 0 })
                    .u16(count)
                    .bit(f & 4 != 0);
            })
        }
        14 => {
            let f = src.byte();
            encode::flow(ch, f & 1 != 0, false).to_vec()
        }
        15 => {
            let id = pick(
                &[ids::TX_SELECT, ids::TX_COMMIT, ids::TX_ROLLBACK],
                src.byte(),
            );
            m(ch, id, |_| {})
        }
        16 => {
            let f = src.byte();
            m(ch, ids::CONFIRM_SELECT, |w| {
                w.bit(f & 1 != 0);
            })
        }
        17 => {
            let f = src.byte();
            let tag = u64::from(src.byte());
            let (multiple, requeue) = (f & 4 != 0, f & 8 != 0);
            match f % 3 {
                0 => m(ch, ids::BASIC_ACK, |w| {
                    w.u64(tag).bit(multiple);
                }),
                1 => m(ch, ids::BASIC_NACK, |w| {
                    w.u64(tag).bit(multiple).bit(requeue);
                }),
                _ => m(ch, ids::BASIC_REJECT, |w| {
                    w.u64(tag).bit(requeue);
                }),
            }
        }
        18 => {
            let f = src.byte();
            let id = if f & 1 != 0 {
                ids::BASIC_RECOVER_ASYNC
            } else {
                ids::BASIC_RECOVER
            };
            m(ch, id, |w| {
                w.bit(f & 2 != 0);
            })
        }
        19 => {
            let f = src.byte();
            m(ch, ids::BASIC_GET, |w| {
                w.u16(0).shortstr(name(f >> 5)).bit(f & 1 != 0);
            })
        }
        20 => match src.byte() % 6 {
            0 => m(ch, ids::CONNECTION_CLOSE, |w| {
                w.u16(200).shortstr(b"bye").u16(0).u16(0);
            }),
            1 => m(ch, ids::CONNECTION_CLOSE_OK, |_| {}),
            2 => m(ch, ids::CONNECTION_UPDATE_SECRET, |w| {
                w.longstr(b"new-token").shortstr(b"rotation");
            }),
            3 => Frame::new(FrameType::Heartbeat, ch, &[]).freeze().to_vec(),
            4 => m(ch, ids::CONNECTION_TUNE_OK, |w| {
                w.u16(0).u32(131_072).u16(0);
            }),
            _ => m(ch, ids::CONNECTION_OPEN, |w| {
                w.shortstr(b"/").shortstr(b"").bit(false);
            }),
        },
        21 => {
            let f = src.byte();
            match f % 4 {
                0 => m(ch, ids::EXCHANGE_DELETE, |w| {
                    w.u16(0).shortstr(b"x").bit(f & 4 != 0).bit(f & 8 != 0);
                }),
                1 | 2 => {
                    let id = if f % 4 == 1 {
                        ids::EXCHANGE_BIND
                    } else {
                        ids::EXCHANGE_UNBIND
                    };
                    m(ch, id, |w| {
                        w.u16(0)
                            .shortstr(b"x")
                            .shortstr(b"amq.direct")
                            .shortstr(b"rk")
                            .bit(f & 8 != 0)
                            .raw(&EMPTY_TABLE);
                    })
                }
                _ => m(ch, ACCESS_REQUEST, |w| {
                    w.shortstr(b"/data")
                        .bit(false)
                        .bit(false)
                        .bit(true)
                        .bit(true)
                        .bit(true);
                }),
            }
        }
        22 => {
            let spec = pick(method::METHODS, src.byte());
            m(ch, spec.id, |w| {
                for field in spec.fields {
                    match field {
                        Field::Octet => {
                            w.u8(0);
                        }
                        Field::Short => {
                            w.u16(0);
                        }
                        Field::Long => {
                            w.u32(0);
                        }
                        Field::LongLong | Field::Timestamp => {
                            w.u64(0);
                        }
                        Field::ShortStr => {
                            w.shortstr(b"");
                        }
                        Field::LongStr => {
                            w.longstr(b"");
                        }
                        Field::Bit => {
                            w.bit(false);
                        }
                        Field::Table => {
                            w.raw(&EMPTY_TABLE);
                        }
                    }
                }
            })
        }
        24 => {
            let (f, more) = (src.byte(), src.byte());
            let kind = match (more & 2 != 0, f & 1 != 0) {
                (true, _) => "classic",
                (false, true) => "quorum",
                (false, false) => "stream",
            };
            let args = table_with("x-queue-type", FieldValue::LongStr(kind.into()));
            m(ch, ids::QUEUE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(name(f >> 5))
                    .bit(f & 2 != 0)
                    .bit(f & 4 == 0)
                    .bit(f & 8 != 0)
                    .bit(f & 16 != 0)
                    .bit(more & 1 != 0)
                    .raw(&args);
            })
        }
        25 => {
            let f = src.byte();
            let offset = match (f >> 2) % 4 {
                0 => FieldValue::LongStr(b"first".to_vec()),
                1 => FieldValue::I64(1),
                // No offsets: RabbitMQ's channel crashes on them.
                2 => FieldValue::LongStr(b"bogus".to_vec()),
                _ => FieldValue::Bool(true),
            };
            let args = table_with("x-stream-offset", offset);
            m(ch, ids::BASIC_CONSUME, |w| {
                w.u16(0)
                    .shortstr(name(f >> 6))
                    .shortstr(pick(&TAGS, f >> 4))
                    .bit(false)
                    .bit(f & 1 != 0)
                    .bit(false)
                    .bit(f & 2 != 0)
                    .raw(&args);
            })
        }
        _ => {
            let pad = pick(&[200usize, 4080, 8180, 131_000], src.byte());
            let pad = pad.min(*budget);
            *budget -= pad;
            let table = table_with("x-pad", FieldValue::LongStr(vec![b'p'; pad]));
            m(ch, ids::QUEUE_DECLARE, |w| {
                w.u16(0)
                    .shortstr(b"big")
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .bit(false)
                    .raw(&table);
            })
        }
    }
}
