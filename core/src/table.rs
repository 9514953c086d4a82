//! Field tables: the typed key/value maps AMQP uses for client and server properties,
//! capabilities and method arguments.
//!
//! Two uses: [`validate_table`] (it lives in [`crate::wire`], since [`Reader::table`] needs it,
//! and is re-exported here) walks a table a client wants forwarded and rejects anything
//! RabbitMQ's parser would choke on (its failure would close the *shared* connection), and
//! [`FieldTable`] decodes and encodes the few tables the proxy reads or writes itself.
//!
//! RabbitMQ accepts tables nested to any depth (5,000 levels of `headers` are delivered byte
//! for byte), so warren does too, and depth costs no stack: validation walks nested tables
//! and arrays with an explicit stack, and decoding keeps values nested deeper than
//! [`MAX_DECODE_DEPTH`] as their encoded bytes ([`FieldValue::Deep`]).

pub use crate::wire::validate_table;
use crate::wire::{Reader, WireError, Writer};
use bytes::BytesMut;

/// One value in a field table, with the type tags RabbitMQ reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s`
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: scale, then unscaled value.
    Decimal(u8, u32),
    /// `S`
    LongStr(Vec<u8>),
    /// `x`
    Bytes(Vec<u8>),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
    /// A table (`F`) or array (`A`) nested deeper than [`MAX_DECODE_DEPTH`], kept as its
    /// encoded bytes (type tag first) and written back unchanged.
    Deep(Vec<u8>),
}

/// Tables and arrays nested deeper than this are not decoded into values (see
/// [`FieldValue::Deep`]): the proxy never reads that deep, and decoding stays bounded.
pub const MAX_DECODE_DEPTH: usize = 32;

/// An ordered field table. Order is kept as received so that re-encoding is byte-identical.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

impl FieldTable {
    /// The value stored under `key`, if any.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value stored under `key`, taken out of the table.
    #[must_use]
    pub fn take(self, key: &str) -> Option<FieldValue> {
        self.0.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string value (long string or byte array), decoded lossily as UTF-8.
    #[must_use]
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            FieldValue::LongStr(s) | FieldValue::Bytes(s) => {
                Some(String::from_utf8_lossy(s).into_owned())
            }
            _ => None,
        }
    }

    /// A boolean value; absent or other types read as `false`.
    #[must_use]
    pub fn get_bool(&self, key: &str) -> bool {
        matches!(self.get(key), Some(FieldValue::Bool(true)))
    }

    /// A nested table.
    #[must_use]
    pub fn get_table(&self, key: &str) -> Option<&FieldTable> {
        match self.get(key)? {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// Appends an entry (builder style).
    #[must_use]
    pub fn with(mut self, key: &str, value: FieldValue) -> Self {
        self.0.push((key.to_owned(), value));
        self
    }

    /// Decodes the body of a table (the bytes after its 32-bit length).
    pub fn decode(raw: &[u8]) -> Result<FieldTable, WireError> {
        validate_table(raw)?;
        decode_table(raw, 0)
    }

    /// Encodes the table with its 32-bit length prefix.
    pub fn encode(&self, out: &mut BytesMut) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        for (k, v) in &self.0 {
            Writer::new(out).shortstr(k.as_bytes());
            encode_value(v, out);
        }
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Decodes a validated table body; values deeper than [`MAX_DECODE_DEPTH`] stay encoded.
fn decode_table(raw: &[u8], depth: usize) -> Result<FieldTable, WireError> {
    let mut r = Reader::new(raw);
    let mut out = Vec::new();
    while !r.rest().is_empty() {
        let key = String::from_utf8_lossy(r.shortstr()?).into_owned();
        out.push((key, decode_value(&mut r, depth)?));
    }
    Ok(FieldTable(out))
}

fn decode_value(r: &mut Reader<'_>, depth: usize) -> Result<FieldValue, WireError> {
    let tag = r.u8()?;
    if matches!(tag, b'F' | b'A') && depth >= MAX_DECODE_DEPTH {
        let body = r.longstr()?;
        let mut raw = Vec::with_capacity(5 + body.len());
        raw.push(tag);
        raw.extend_from_slice(&(body.len() as u32).to_be_bytes());
        raw.extend_from_slice(body);
        return Ok(FieldValue::Deep(raw));
    }
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8()? != 0),
        b'b' => FieldValue::I8(r.u8()? as i8),
        b'B' => FieldValue::U8(r.u8()?),
        b's' => FieldValue::I16(r.u16()? as i16),
        b'u' => FieldValue::U16(r.u16()?),
        b'I' => FieldValue::I32(r.u32()? as i32),
        b'i' => FieldValue::U32(r.u32()?),
        b'l' => FieldValue::I64(r.u64()? as i64),
        b'T' => FieldValue::Timestamp(r.u64()?),
        b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
        b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
        b'D' => FieldValue::Decimal(r.u8()?, r.u32()?),
        b'S' => FieldValue::LongStr(r.longstr()?.to_vec()),
        b'x' => FieldValue::Bytes(r.longstr()?.to_vec()),
        b'F' => FieldValue::Table(decode_table(r.longstr()?, depth + 1)?),
        b'A' => {
            let mut a = Reader::new(r.longstr()?);
            let mut items = Vec::new();
            while !a.rest().is_empty() {
                items.push(decode_value(&mut a, depth + 1)?);
            }
            FieldValue::Array(items)
        }
        b'V' => FieldValue::Void,
        other => return Err(WireError::BadFieldType(other)),
    })
}

fn encode_value(v: &FieldValue, out: &mut BytesMut) {
    let mut w = Writer::new(out);
    match v {
        FieldValue::Bool(b) => {
            w.u8(b't').u8(u8::from(*b));
        }
        FieldValue::I8(x) => {
            w.u8(b'b').u8(*x as u8);
        }
        FieldValue::U8(x) => {
            w.u8(b'B').u8(*x);
        }
        FieldValue::I16(x) => {
            w.u8(b's').u16(*x as u16);
        }
        FieldValue::U16(x) => {
            w.u8(b'u').u16(*x);
        }
        FieldValue::I32(x) => {
            w.u8(b'I').u32(*x as u32);
        }
        FieldValue::U32(x) => {
            w.u8(b'i').u32(*x);
        }
        FieldValue::I64(x) => {
            w.u8(b'l').u64(*x as u64);
        }
        FieldValue::Timestamp(x) => {
            w.u8(b'T').u64(*x);
        }
        FieldValue::F32(x) => {
            w.u8(b'f').u32(x.to_bits());
        }
        FieldValue::F64(x) => {
            w.u8(b'd').u64(x.to_bits());
        }
        FieldValue::Decimal(scale, x) => {
            w.u8(b'D').u8(*scale).u32(*x);
        }
        FieldValue::LongStr(s) => {
            w.u8(b'S').longstr(s);
        }
        FieldValue::Bytes(s) => {
            w.u8(b'x').longstr(s);
        }
        FieldValue::Table(t) => {
            w.u8(b'F');
            t.encode(out);
        }
        FieldValue::Array(items) => {
            w.u8(b'A');
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            for item in items {
                encode_value(item, out);
            }
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        FieldValue::Void => {
            w.u8(b'V');
        }
        FieldValue::Deep(raw) => out.extend_from_slice(raw),
    }
}

/// Shorthand for a long-string value.
#[must_use]
pub fn longstr(s: &str) -> FieldValue {
    FieldValue::LongStr(s.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_type() -> FieldTable {
        FieldTable::default()
            .with("bool", FieldValue::Bool(true))
            .with("i8", FieldValue::I8(-3))
            .with("u8", FieldValue::U8(250))
            .with("i16", FieldValue::I16(-300))
            .with("u16", FieldValue::U16(60000))
            .with("i32", FieldValue::I32(-70000))
            .with("u32", FieldValue::U32(4_000_000_000))
            .with("i64", FieldValue::I64(-5_000_000_000))
            .with("f32", FieldValue::F32(1.5))
            .with("f64", FieldValue::F64(-2.25))
            .with("dec", FieldValue::Decimal(2, 12345))
            .with("str", longstr("héllo"))
            .with("bytes", FieldValue::Bytes(vec![0, 1, 2]))
            .with("ts", FieldValue::Timestamp(1_700_000_000))
            .with("void", FieldValue::Void)
            .with(
                "arr",
                FieldValue::Array(vec![FieldValue::U8(1), longstr("x")]),
            )
            .with(
                "tbl",
                FieldValue::Table(FieldTable::default().with("k", FieldValue::Bool(false))),
            )
    }

    #[test]
    fn every_type_round_trips() {
        let t = every_type();
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        let body = &buf[4..];
        assert_eq!(
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize,
            body.len()
        );
        validate_table(body).unwrap();
        assert_eq!(FieldTable::decode(body).unwrap(), t);
    }

    #[test]
    fn amq_protocol_reads_our_encoding() {
        use amq_protocol::types::{parsing::parse_field_table, AMQPValue};
        let ours = FieldTable::default()
            .with("a", longstr("b"))
            .with("n", FieldValue::I64(-7))
            .with("t", FieldValue::Bool(true))
            .with(
                "f",
                FieldValue::Table(FieldTable::default().with("x", FieldValue::U8(9))),
            );
        let mut buf = BytesMut::new();
        ours.encode(&mut buf);
        let (rest, theirs) = parse_field_table(&buf[..]).expect("amq-protocol parses it");
        assert!(rest.is_empty());
        assert_eq!(theirs.inner().len(), 4);
        assert_eq!(
            theirs.inner().get("a"),
            Some(&AMQPValue::LongString("b".into()))
        );
        assert_eq!(theirs.inner().get("n"), Some(&AMQPValue::LongLongInt(-7)));
        assert_eq!(theirs.inner().get("t"), Some(&AMQPValue::Boolean(true)));
    }

    #[test]
    fn rejects_what_rabbitmq_cannot_parse() {
        // Unknown type tag.
        assert_eq!(
            validate_table(b"\x01kZ"),
            Err(WireError::BadFieldType(b'Z'))
        );
        // NaN float.
        let mut nan = b"\x01kf".to_vec();
        nan.extend_from_slice(&f32::NAN.to_bits().to_be_bytes());
        assert_eq!(validate_table(&nan), Err(WireError::BadFloat));
        // Nested table longer than its parent.
        assert_eq!(
            validate_table(b"\x01kF\x00\x00\x00\x09ab"),
            Err(WireError::Truncated)
        );
        // Key without a value.
        assert_eq!(validate_table(b"\x01k"), Err(WireError::Truncated));
    }

    #[test]
    fn any_depth_is_valid_and_decodes_back_to_the_same_bytes() {
        for depth in [
            MAX_DECODE_DEPTH - 1,
            MAX_DECODE_DEPTH,
            MAX_DECODE_DEPTH + 1,
            5_000,
        ] {
            let mut raw = Vec::new();
            for _ in 0..depth {
                let mut next = b"\x01kF".to_vec();
                next.extend_from_slice(&(raw.len() as u32).to_be_bytes());
                next.extend_from_slice(&raw);
                raw = next;
            }
            assert_eq!(validate_table(&raw), Ok(()), "depth {depth}");
            let t = FieldTable::decode(&raw).expect("decodes");
            let mut again = BytesMut::new();
            t.encode(&mut again);
            assert_eq!(
                &again[4..],
                &raw[..],
                "depth {depth} re-encodes byte for byte"
            );
        }
    }
}
