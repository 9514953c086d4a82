//! AMQP 0-9-1 primitive types on the wire: a bounds-checked reader over a byte slice and a
//! writer into a `BytesMut`, and [`validate_table`], the check of a field table's bytes that
//! [`Reader::table`] applies (field tables themselves are the `table` module's, which builds on
//! this one).
//!
//! Every decoder in the crate is built from [`Reader`], so a truncated or lying length field
//! becomes a [`WireError`] instead of a panic, and the fuzz targets exercise one place.

use bytes::{BufMut, BytesMut};
use std::fmt;

/// Why a field could not be read: the peer sent something that is not valid AMQP syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The payload ended before the field did.
    Truncated,
    /// Bytes were left over after the last field of a method or property list.
    TrailingBytes,
    /// A field table or array held a value type RabbitMQ does not understand.
    BadFieldType(u8),
    /// A float that RabbitMQ cannot decode (NaN or infinity).
    BadFloat,
    /// A length that cannot be right (for example a nested table longer than its parent).
    BadLength,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated field"),
            WireError::TrailingBytes => f.write_str("trailing bytes after the last field"),
            WireError::BadFieldType(t) => write!(f, "unknown field value type 0x{t:02x}"),
            WireError::BadFloat => f.write_str("float that is not finite"),
            WireError::BadLength => f.write_str("inconsistent length"),
        }
    }
}

/// A cursor over a method or header payload. Reads never panic; they fail with [`WireError`].
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    /// Bit fields are packed into octets; this is the octet being consumed and the next bit.
    bits: Option<(u8, u8)>,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, bits: None }
    }

    /// The bytes not read yet.
    #[must_use]
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Fails unless every byte was consumed: methods and property lists have an exact length.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }

    /// Takes `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        self.bits = None;
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// An octet.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    /// A big-endian short.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian long.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A big-endian long-long.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A short string: one length octet, then that many bytes.
    pub fn shortstr(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u8()? as usize;
        self.bytes(n)
    }

    /// A long string: a 32-bit length, then that many bytes.
    pub fn longstr(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }

    /// One bit field; consecutive bits share an octet, least significant bit first.
    pub fn bit(&mut self) -> Result<bool, WireError> {
        let (octet, pos) = match self.bits {
            Some((octet, pos)) if pos < 8 => (octet, pos),
            _ => {
                let octet = self.u8()?;
                (octet, 0)
            }
        };
        self.bits = Some((octet, pos + 1));
        Ok(octet & (1 << pos) != 0)
    }

    /// A field table, checked value by value as RabbitMQ would parse it, returned as raw bytes.
    pub fn table(&mut self) -> Result<&'a [u8], WireError> {
        let raw = self.longstr()?;
        validate_table(raw)?;
        Ok(raw)
    }
}

/// Appends AMQP primitives to a buffer. Infallible except for strings that do not fit their
/// length prefix, which are truncated: the proxy only writes strings it chose or that came
/// from a peer inside a field of the same width.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut BytesMut,
    /// Position of the octet currently collecting bit fields, and the next bit in it.
    bits: Option<(usize, u8)>,
}

impl<'a> Writer<'a> {
    /// Appends to `buf`.
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Writer { buf, bits: None }
    }

    /// An octet.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bits = None;
        self.buf.put_u8(v);
        self
    }

    /// A big-endian short.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bits = None;
        self.buf.put_u16(v);
        self
    }

    /// A big-endian long.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bits = None;
        self.buf.put_u32(v);
        self
    }

    /// A big-endian long-long.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bits = None;
        self.buf.put_u64(v);
        self
    }

    /// A short string, cut at 255 bytes.
    pub fn shortstr(&mut self, s: &[u8]) -> &mut Self {
        let s = &s[..s.len().min(255)];
        self.u8(s.len() as u8);
        self.buf.put_slice(s);
        self
    }

    /// A long string.
    pub fn longstr(&mut self, s: &[u8]) -> &mut Self {
        let s = &s[..s.len().min(u32::MAX as usize)];
        self.u32(s.len() as u32);
        self.buf.put_slice(s);
        self
    }

    /// Raw bytes, for a field table that is already encoded (length prefix included).
    pub fn raw(&mut self, s: &[u8]) -> &mut Self {
        self.bits = None;
        self.buf.put_slice(s);
        self
    }

    /// One bit field, packed like [`Reader::bit`] reads it.
    pub fn bit(&mut self, v: bool) -> &mut Self {
        let (at, pos) = match self.bits {
            Some((at, pos)) if pos < 8 => (at, pos),
            _ => {
                self.buf.put_u8(0);
                (self.buf.len() - 1, 0)
            }
        };
        if v {
            self.buf[at] |= 1 << pos;
        }
        self.bits = Some((at, pos + 1));
        self
    }
}

/// Checks the body of a table (after its length) the way RabbitMQ parses it, at any depth:
/// nested tables and arrays are walked with an explicit stack, not by recursion.
pub fn validate_table(raw: &[u8]) -> Result<(), WireError> {
    // Each entry: what is left of an open table (`true`: key-value pairs) or array (`false`).
    let mut stack: Vec<(Reader<'_>, bool)> = vec![(Reader::new(raw), true)];
    while let Some((r, is_table)) = stack.last_mut() {
        if r.rest().is_empty() {
            stack.pop();
            continue;
        }
        if *is_table {
            r.shortstr()?;
        }
        match r.u8()? {
            b't' | b'b' | b'B' => {
                r.u8()?;
            }
            b's' | b'u' => {
                r.u16()?;
            }
            b'I' | b'i' => {
                r.u32()?;
            }
            b'l' | b'T' => {
                r.u64()?;
            }
            b'f' => {
                if !f32::from_bits(r.u32()?).is_finite() {
                    return Err(WireError::BadFloat);
                }
            }
            b'd' => {
                if !f64::from_bits(r.u64()?).is_finite() {
                    return Err(WireError::BadFloat);
                }
            }
            b'D' => {
                r.u8()?;
                r.u32()?;
            }
            b'S' | b'x' => {
                r.longstr()?;
            }
            b'F' => {
                let inner = Reader::new(r.longstr()?);
                stack.push((inner, true));
            }
            b'A' => {
                let inner = Reader::new(r.longstr()?);
                stack.push((inner, false));
            }
            b'V' => {}
            other => return Err(WireError::BadFieldType(other)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_pack_into_shared_octets() {
        let mut buf = BytesMut::new();
        Writer::new(&mut buf)
            .bit(true)
            .bit(false)
            .bit(true)
            .u8(7)
            .bit(true);
        assert_eq!(&buf[..], &[0b101, 7, 1]);
        let mut r = Reader::new(&buf);
        assert_eq!((r.bit(), r.bit(), r.bit()), (Ok(true), Ok(false), Ok(true)));
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.bit(), Ok(true));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn nine_bits_take_two_octets() {
        let mut buf = BytesMut::new();
        let mut w = Writer::new(&mut buf);
        for i in 0..9 {
            w.bit(i % 2 == 0);
        }
        assert_eq!(&buf[..], &[0b0101_0101, 1]);
    }

    #[test]
    fn lying_lengths_fail_instead_of_panicking() {
        assert_eq!(
            Reader::new(&[5, b'a']).shortstr(),
            Err(WireError::Truncated)
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).longstr(),
            Err(WireError::Truncated)
        );
        assert_eq!(Reader::new(&[1]).u16(), Err(WireError::Truncated));
        assert_eq!(Reader::new(&[1]).finish(), Err(WireError::TrailingBytes));
    }
}
