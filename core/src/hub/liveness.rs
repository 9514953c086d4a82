//! Heartbeat bookkeeping for one peer (B10): warren sends a heartbeat when it has written
//! nothing for half the interval, and declares the peer dead after two intervals without
//! receiving anything. Any frame counts, in both directions.

use std::time::{Duration, Instant};

/// What the heartbeat timer asks for at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Nothing due.
    Idle,
    /// Write a heartbeat frame now.
    Send,
    /// The peer has been silent for two intervals.
    Dead,
}

/// Last read and write times of one connection and its negotiated interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    interval: Option<Duration>,
    last_rx: Instant,
    last_tx: Instant,
}

impl Liveness {
    /// Starts tracking at `now`; an interval of 0 seconds disables heartbeats.
    pub(crate) fn new(now: Instant, seconds: u16) -> Self {
        Liveness {
            interval: (seconds > 0).then(|| Duration::from_secs(u64::from(seconds))),
            last_rx: now,
            last_tx: now,
        }
    }

    /// Something arrived from the peer.
    pub(crate) fn received(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// Something was written to the peer.
    pub(crate) fn sent(&mut self, now: Instant) {
        self.last_tx = now;
    }

    /// The next moment [`Liveness::check`] can return something other than `Idle`.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let i = self.interval?;
        Some((self.last_tx + i / 2).min(self.last_rx + i * 2))
    }

    /// What is due at `now`. A `Send` result does not update `last_tx`; the caller calls
    /// [`Liveness::sent`] when it queues the heartbeat.
    pub(crate) fn check(&self, now: Instant) -> Beat {
        let Some(i) = self.interval else {
            return Beat::Idle;
        };
        if now >= self.last_rx + i * 2 {
            Beat::Dead
        } else if now >= self.last_tx + i / 2 {
            Beat::Send
        } else {
            Beat::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_at_half_interval_and_dies_after_two() {
        let t0 = crate::test_epoch();
        let s = Duration::from_secs;
        let mut l = Liveness::new(t0, 10);
        assert_eq!(l.deadline(), Some(t0 + s(5)));
        assert_eq!(l.check(t0 + s(4)), Beat::Idle);
        assert_eq!(l.check(t0 + s(5)), Beat::Send);
        l.sent(t0 + s(5));
        assert_eq!(l.deadline(), Some(t0 + s(10)));
        l.sent(t0 + s(19));
        assert_eq!(l.check(t0 + s(20)), Beat::Dead);
        l.received(t0 + s(20));
        assert_eq!(l.check(t0 + s(21)), Beat::Idle);
    }

    #[test]
    fn zero_disables() {
        let t0 = crate::test_epoch();
        let l = Liveness::new(t0, 0);
        assert_eq!(l.deadline(), None);
        assert_eq!(l.check(t0 + Duration::from_secs(1_000_000)), Beat::Idle);
    }
}
