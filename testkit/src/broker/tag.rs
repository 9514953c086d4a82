//! Message tags: every body a fake client publishes starts with its origin (client, channel,
//! sequence number, target queue), so the checks can tell where each delivery, return and
//! confirm came from without trusting the proxy's bookkeeping. It lives beside the fake
//! broker because the broker reads it too (publish order, body integrity, its log of what
//! it confirmed); the simulation's clients write it.

use std::fmt;

/// Marks a tagged body; anything else is an untagged payload.
const MAGIC: &[u8; 4] = b"WSIM";

/// Bytes a tag takes at the start of a body.
pub const TAG_LEN: usize = 4 + 4 + 2 + 4 + 4;

/// Where a published message came from and where it was meant to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// World client number (`c3` is 3).
    pub client: u32,
    /// Client channel number it was published on.
    pub channel: u16,
    /// Per (client, channel) publish sequence number, from 1.
    pub seq: u32,
    /// Board slot of the queue the message was addressed to ([`NO_QUEUE`] if none).
    pub queue: u32,
}

/// Filler block length (see [`Origin::body`]).
const BLOCK: usize = 4096;

/// Mixes block number `n` into the first bytes of a filler block.
fn stamp(block: &mut [u8], n: u64) {
    for (b, s) in block.iter_mut().zip(n.to_le_bytes()) {
        *b ^= s;
    }
}

/// The queue field of a message not addressed to a board queue.
pub const NO_QUEUE: u32 = u32::MAX;

impl Origin {
    /// A body of `size` bytes (at least [`TAG_LEN`]) starting with this tag.
    ///
    /// The filler depends on the tag, so a body spliced from two messages is visible, and
    /// each block of it on its place, so a body with blocks swapped or lost is too. It is
    /// one tag-dependent block repeated with the block's number mixed into its first bytes:
    /// bodies run to hundreds of KiB (issue 14), and making and checking them stays cheap.
    #[must_use]
    pub fn body(&self, size: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(size.max(TAG_LEN));
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.client.to_be_bytes());
        v.extend_from_slice(&self.channel.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.queue.to_be_bytes());
        let block = self.block(size.saturating_sub(TAG_LEN));
        let mut n = 0u64;
        while v.len() < size {
            let start = v.len();
            let len = (size - start).min(BLOCK);
            v.extend_from_slice(&block[..len]);
            stamp(&mut v[start..], n);
            n += 1;
        }
        v
    }

    /// The filler's block (only as long as a body of `len` filler bytes needs).
    fn block(&self, len: usize) -> Vec<u8> {
        let mut x = self.seq.wrapping_mul(31).wrapping_add(self.client);
        let mut b = vec![0; len.min(BLOCK)];
        for byte in &mut b {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *byte = (x >> 16) as u8;
        }
        b
    }

    /// Reads the tag at the start of a body, if there is one.
    #[must_use]
    pub fn parse(body: &[u8]) -> Option<Origin> {
        if body.len() < TAG_LEN || &body[..4] != MAGIC {
            return None;
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        Some(Origin {
            client: u32_at(4),
            channel: u16::from_be_bytes([body[8], body[9]]),
            seq: u32_at(10),
            queue: u32_at(14),
        })
    }

    /// Whether `body` is exactly what [`Origin::body`] makes for this tag.
    #[must_use]
    pub fn matches_body(&self, body: &[u8]) -> bool {
        if body.len() < TAG_LEN || body[..TAG_LEN] != self.body(TAG_LEN)[..] {
            return false;
        }
        let block = self.block(body.len() - TAG_LEN);
        let mut expect = Vec::with_capacity(block.len());
        body[TAG_LEN..].chunks(BLOCK).zip(0u64..).all(|(chunk, n)| {
            expect.clear();
            expect.extend_from_slice(&block[..chunk.len()]);
            stamp(&mut expect, n);
            chunk == &expect[..]
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{} ch{} #{}", self.client, self.channel, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let o = Origin {
            client: 7,
            channel: 3,
            seq: 42,
            queue: 1,
        };
        let b = o.body(100);
        assert_eq!(b.len(), 100);
        assert_eq!(Origin::parse(&b), Some(o));
        assert!(o.matches_body(&b));
        assert!(Origin::parse(b"short").is_none());
        let big = o.body(3 * BLOCK + 100);
        assert!(o.matches_body(&big));
        let mut swapped = big.clone();
        let (x, y) = (TAG_LEN, TAG_LEN + BLOCK);
        let first = swapped[x..x + BLOCK].to_vec();
        swapped.copy_within(y..y + BLOCK, x);
        swapped[y..y + BLOCK].copy_from_slice(&first);
        assert!(!o.matches_body(&swapped), "blocks swapped");
        let other = Origin { seq: 43, ..o };
        assert!(!other.matches_body(&big));
    }
}
