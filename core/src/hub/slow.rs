//! When a client is too slow (B9): not when one delivery is large, but when it stops making
//! progress.
//!
//! A message of any size up to `max_message_size` goes to a client whatever its frame_max,
//! and its frames are queued as they arrive from the broker; a client that reads keeps its
//! queue moving. So the rule watches progress: once more than `queue_bytes` wait for a
//! client, it must keep draining them — a client whose socket takes nothing for `timeout`
//! is cut off (its channels closed upstream, so the broker requeues its messages). Memory
//! stays bounded: a queue past `queue_bytes` plus one largest message (and its framing) means
//! the client reads slower than the broker delivers, and it is cut off at once.
//!
//! The driver measures (bytes queued, bytes written so far); this module decides. The
//! runtime and the simulation use the same rule.

use std::time::{Duration, Instant};

/// The limits of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowRule {
    /// Bytes that may wait for a client without it having to make progress.
    pub queue_bytes: usize,
    /// Bytes past which a client is cut off at once: `queue_bytes` plus the largest message
    /// with the framing of the smallest frame_max.
    pub hard_cap: usize,
    /// How long a client over `queue_bytes` may go without its socket taking a byte.
    pub timeout: Duration,
}

/// The defaults: 16 MiB may wait without progress, for 10 s, with messages up to RabbitMQ's
/// default `max_message_size` (128 MiB).
impl Default for SlowRule {
    fn default() -> Self {
        SlowRule::new(
            16 << 20,
            super::HubConfig::default().max_message_size,
            Duration::from_secs(10),
        )
    }
}

impl SlowRule {
    /// The rule for a queue bound, the largest message a client can be sent, and a timeout.
    #[must_use]
    pub fn new(queue_bytes: usize, max_message_size: u64, timeout: Duration) -> SlowRule {
        let message = usize::try_from(max_message_size).unwrap_or(usize::MAX);
        // 8 bytes of framing per body frame of at least 4,088 bytes: under 1/256 more.
        let framing = message / 256 + 4096;
        SlowRule {
            queue_bytes,
            hard_cap: queue_bytes.saturating_add(message).saturating_add(framing),
            timeout,
        }
    }
}

/// What the rule says about a client now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Nothing to watch: at most `queue_bytes` wait.
    Fine,
    /// Over `queue_bytes`: check again at this time (or when more is queued).
    WatchUntil(Instant),
    /// Cut it off.
    Slow,
}

/// One client's progress, as the rule follows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainWatch {
    /// Since when the client has been over `queue_bytes`, and the bytes written by then (the
    /// mark moves on whenever the count grows).
    over: Option<(Instant, u64)>,
}

impl DrainWatch {
    /// Applies `rule` to a client with `queued` bytes waiting and `written` bytes taken by its
    /// socket so far.
    pub fn check(&mut self, now: Instant, queued: usize, written: u64, rule: &SlowRule) -> Drain {
        if queued <= rule.queue_bytes {
            self.over = None;
            return Drain::Fine;
        }
        if queued > rule.hard_cap {
            return Drain::Slow;
        }
        match self.over {
            Some((since, mark)) if mark == written => {
                let deadline = since + rule.timeout;
                if now >= deadline {
                    Drain::Slow
                } else {
                    Drain::WatchUntil(deadline)
                }
            }
            // Newly over the bound, or it made progress: the clock starts (again) now.
            _ => {
                self.over = Some((now, written));
                Drain::WatchUntil(now + rule.timeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn rule() -> SlowRule {
        SlowRule::new(16 * MIB, 128 * MIB as u64, Duration::from_secs(10))
    }

    #[test]
    fn a_large_message_to_a_reader_is_fine_however_big_the_queue() {
        let t0 = crate::test_epoch();
        let s = Duration::from_secs;
        let mut w = DrainWatch::default();
        // 100 MiB of one delivery queued at once, drained a little every second.
        let mut written = 0;
        for i in 0..30 {
            let queued = 100 * MIB - written as usize;
            assert_ne!(
                w.check(t0 + s(i), queued, written, &rule()),
                Drain::Slow,
                "second {i}"
            );
            written += 3 * MIB as u64;
        }
    }

    #[test]
    fn a_client_that_takes_nothing_over_the_bound_is_cut_off_after_the_timeout() {
        let t0 = crate::test_epoch();
        let s = Duration::from_secs;
        let mut w = DrainWatch::default();
        assert_eq!(w.check(t0, MIB, 0, &rule()), Drain::Fine, "under the bound");
        assert_eq!(
            w.check(t0 + s(100), MIB, 0, &rule()),
            Drain::Fine,
            "stuck but small"
        );
        let over = 20 * MIB;
        assert_eq!(w.check(t0, over, 5, &rule()), Drain::WatchUntil(t0 + s(10)));
        assert_eq!(
            w.check(t0 + s(9), over + 1, 5, &rule()),
            Drain::WatchUntil(t0 + s(10))
        );
        assert_eq!(w.check(t0 + s(10), over, 5, &rule()), Drain::Slow);
    }

    #[test]
    fn past_the_hard_cap_it_is_cut_off_at_once() {
        let t0 = crate::test_epoch();
        let r = rule();
        assert!(r.hard_cap > 144 * MIB && r.hard_cap < 146 * MIB);
        let mut w = DrainWatch::default();
        assert_eq!(
            w.check(t0, r.hard_cap, 0, &r),
            Drain::WatchUntil(t0 + r.timeout)
        );
        assert_eq!(w.check(t0, r.hard_cap + 1, 1, &r), Drain::Slow);
    }
}
