//! Property tests of the codec: field tables survive encode → decode, frames survive any
//! chunking of the read buffer, and a table nested far past `MAX_DECODE_DEPTH` through arrays is
//! refused instead of overflowing the stack.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use warren_core::frame::{Frame, FrameDecoder, FrameError, FrameType, FRAME_OVERHEAD};
use warren_core::table::{validate_table, FieldTable, FieldValue, MAX_DECODE_DEPTH};
use warren_core::wire::WireError;

fn key() -> impl Strategy<Value = String> {
    // Any printable text that fits a short string, plus keys at the 255-byte limit.
    prop_oneof![4 => "\\PC{0,12}", 1 => "[a-z]{250,255}"]
}

fn value() -> impl Strategy<Value = FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        // NaN is excluded: it is never equal to itself. Infinities stay in.
        any::<f32>()
            .prop_filter("not NaN", |f| !f.is_nan())
            .prop_map(FieldValue::F32),
        any::<f64>()
            .prop_filter("not NaN", |f| !f.is_nan())
            .prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(s, v)| FieldValue::Decimal(s, v)),
        vec(any::<u8>(), 0..24).prop_map(FieldValue::LongStr),
        vec(any::<u8>(), 0..24).prop_map(FieldValue::Bytes),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            vec((key(), inner), 0..6).prop_map(|kv| FieldValue::Table(FieldTable(kv))),
        ]
    })
}

fn table() -> impl Strategy<Value = FieldTable> {
    vec((key(), value()), 0..10).prop_map(FieldTable)
}

fn all_finite(t: &FieldTable) -> bool {
    fn value(v: &FieldValue) -> bool {
        match v {
            FieldValue::F32(f) => f.is_finite(),
            FieldValue::F64(f) => f.is_finite(),
            FieldValue::Table(t) => all_finite(t),
            FieldValue::Array(items) => items.iter().all(value),
            _ => true,
        }
    }
    t.0.iter().all(|(_, v)| value(v))
}

fn frame_kind() -> impl Strategy<Value = FrameType> {
    prop_oneof![
        Just(FrameType::Method),
        Just(FrameType::Header),
        Just(FrameType::Body),
        Just(FrameType::Heartbeat),
    ]
}

proptest! {
    #[test]
    fn field_tables_round_trip(t in table()) {
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        prop_assert_eq!(len, buf.len() - 4);
        let body = &buf[4..];
        // The validator, and so decode, refuse exactly the non-finite floats RabbitMQ cannot
        // read.
        prop_assert_eq!(validate_table(body).is_ok(), all_finite(&t));
        if all_finite(&t) {
            prop_assert_eq!(FieldTable::decode(body), Ok(t.clone()));
        } else {
            prop_assert_eq!(FieldTable::decode(body), Err(WireError::BadFloat));
        }
    }

    #[test]
    fn amq_protocol_reads_every_table_we_encode(t in table()) {
        use amq_protocol::types::parsing::parse_field_table;
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        let parsed = parse_field_table(&buf[..]);
        prop_assert!(parsed.is_ok(), "amq-protocol refused {:?}", t);
        let (rest, _) = parsed.unwrap();
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn frames_survive_any_chunking(
        frames in vec((frame_kind(), any::<u16>(), vec(any::<u8>(), 0..300)), 0..8),
        cuts in vec(1usize..80, 1..24),
    ) {
        let wire: Vec<u8> = frames
            .iter()
            .flat_map(|(k, ch, p)| Frame::new(*k, *ch, p).freeze().to_vec())
            .collect();
        let largest = frames.iter().map(|(_, _, p)| p.len() + FRAME_OVERHEAD).max();
        let max = largest.unwrap_or(FRAME_OVERHEAD) as u32;

        // Exactly at the largest frame: everything decodes, whatever the read sizes.
        let got = decode_chunked(&wire, max, &cuts);
        prop_assert_eq!(got.1, Ok(()));
        prop_assert_eq!(got.0.len(), frames.len());
        for (f, (k, ch, p)) in got.0.iter().zip(&frames) {
            prop_assert_eq!((f.kind(), f.channel(), f.payload()), (*k, *ch, &p[..]));
        }

        // One byte less: the frames before the first largest one decode, then TooLarge.
        if let Some(largest) = largest {
            let first_big = frames
                .iter()
                .position(|(_, _, p)| p.len() + FRAME_OVERHEAD == largest)
                .unwrap();
            let got = decode_chunked(&wire, max - 1, &cuts);
            prop_assert_eq!(got.0.len(), first_big);
            prop_assert_eq!(
                got.1,
                Err(FrameError::TooLarge {
                    kind: frames[first_big].0.octet(),
                    size: largest as u64,
                    max: max - 1
                })
            );
        }
    }
}

/// Feeds `wire` to a decoder in reads of the sizes in `cuts` (cycled); stops at an error.
fn decode_chunked(wire: &[u8], max: u32, cuts: &[usize]) -> (Vec<Frame>, Result<(), FrameError>) {
    let decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = wire;
    let mut cut = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = (*cut.next().unwrap()).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    assert!(buf.is_empty(), "bytes left after the last whole frame");
    (frames, Ok(()))
}

/// A table body with one key whose value is `depth` arrays nested in each other.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..depth {
        let mut next = vec![b'A'];
        next.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        next.extend_from_slice(&inner);
        inner = next;
    }
    [&[1, b'k'][..], &inner].concat()
}

#[test]
fn nesting_of_any_depth_costs_no_stack() {
    // Found while writing the fuzz targets: arrays nested in arrays recursed ~26,000 levels
    // deep in a 128 KiB frame and overflowed a 2 MiB (tokio worker) stack, so depth was
    // bounded and refused. RabbitMQ accepts any depth, so warren now walks nested values
    // with an explicit stack. Run on a small stack so that recursion fails here at once.
    let worker = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            for depth in [26_000, MAX_DECODE_DEPTH + 2, MAX_DECODE_DEPTH, 3] {
                let deep = nested_arrays(depth);
                assert_eq!(validate_table(&deep), Ok(()), "depth {depth}");
                let t = FieldTable::decode(&deep).expect("decodes");
                let mut again = BytesMut::new();
                t.encode(&mut again);
                assert_eq!(
                    &again[4..],
                    &deep[..],
                    "depth {depth} re-encodes byte for byte"
                );
            }
        })
        .unwrap();
    worker.join().unwrap();
}
