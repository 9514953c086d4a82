//! Message tags: every body a fake client publishes starts with its origin (client, channel,
//! sequence number, target queue), so the checks can tell where each delivery, return and
//! confirm came from without trusting the proxy's bookkeeping.

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

/// The queue field of a message not addressed to a board queue.
pub const NO_QUEUE: u32 = u32::MAX;

impl Origin {
    /// A body of `size` bytes (at least [`TAG_LEN`]) starting with this tag.
    #[must_use]
    pub fn body(&self, size: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(size.max(TAG_LEN));
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.client.to_be_bytes());
        v.extend_from_slice(&self.channel.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.queue.to_be_bytes());
        // Filler that depends on the tag, so a body spliced from two messages is visible.
        let mut x = self.seq.wrapping_mul(31).wrapping_add(self.client);
        while v.len() < size {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            v.push((x >> 16) as u8);
        }
        v
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
        self.body(body.len()) == body
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
    }
}
