//! The hub's timer agenda: one ordered set of (deadline, timer) entries for thousands of
//! clients and a few upstreams.
//!
//! Each entity keeps at most one entry, scheduled no later than its earliest real deadline.
//! Activity only ever pushes deadlines later (a frame received postpones the liveness check),
//! so entries are not touched on the data path: when a stale entry fires, the entity
//! recomputes its deadline and reschedules. Ties fire in `Timer` order, so replay is exact.

use super::{ClientId, UpstreamId};
use std::collections::BTreeSet;
use std::time::Instant;

/// What a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The hub-wide drain deadline (B14).
    Drain,
    /// The next reconnect attempt (B11).
    Reconnect,
    /// The oldest pooled channel's idle expiry (B6).
    PoolIdle,
    /// An upstream's heartbeat, connect timeout, close timeout or idle timeout.
    Upstream(UpstreamId),
    /// A client's heartbeat or close timeout.
    Client(ClientId),
}

/// Deadlines ordered by time, then by timer.
#[derive(Debug, Default)]
pub(crate) struct Agenda {
    entries: BTreeSet<(Instant, Timer)>,
}

impl Agenda {
    /// Moves `timer` from `old` (its current entry, if any) to `new`; returns `new`, which the
    /// caller stores as the entity's current entry.
    pub(crate) fn reschedule(
        &mut self,
        timer: Timer,
        old: Option<Instant>,
        new: Option<Instant>,
    ) -> Option<Instant> {
        if old == new {
            return new;
        }
        if let Some(at) = old {
            self.entries.remove(&(at, timer));
        }
        if let Some(at) = new {
            self.entries.insert((at, timer));
        }
        new
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.entries.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.entries.first() {
            Some(&(at, _)) if at <= now => self.entries.pop_first().map(|(_, t)| t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_time_then_timer_order() {
        let t0 = crate::test_epoch();
        let mut a = Agenda::default();
        let c = ClientId { idx: 0, gen: 1 };
        let at = a.reschedule(Timer::Client(c), None, Some(t0 + Duration::from_secs(2)));
        a.reschedule(Timer::Reconnect, None, Some(t0 + Duration::from_secs(1)));
        a.reschedule(Timer::Drain, None, Some(t0 + Duration::from_secs(1)));
        assert_eq!(a.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(a.pop_due(t0), None);
        let due: Vec<Timer> =
            std::iter::from_fn(|| a.pop_due(t0 + Duration::from_secs(5))).collect();
        assert_eq!(due, vec![Timer::Drain, Timer::Reconnect, Timer::Client(c)]);
        // Rescheduling a popped entry does not resurrect the old one.
        a.reschedule(Timer::Client(c), at, Some(t0 + Duration::from_secs(9)));
        assert_eq!(a.next(), Some(t0 + Duration::from_secs(9)));
    }
}
