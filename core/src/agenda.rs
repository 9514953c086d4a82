//! A timer agenda: one ordered set of (deadline, timer) entries, for the thousands of clients
//! and few upstreams of a hub, or the handshakes and logins of admission.
//!
//! Each entity keeps at most one entry, scheduled no later than its earliest real deadline.
//! Activity only ever pushes deadlines later (a frame received postpones the liveness check),
//! so entries are not touched on the data path: when a stale entry fires, the entity
//! recomputes its deadline and reschedules. Ties fire in timer order, so replay is exact.

use std::collections::BTreeSet;
use std::time::Instant;

/// Deadlines ordered by time, then by timer.
#[derive(Debug)]
pub(crate) struct Agenda<T> {
    entries: BTreeSet<(Instant, T)>,
}

impl<T> Default for Agenda<T> {
    fn default() -> Self {
        Agenda {
            entries: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Copy> Agenda<T> {
    /// Moves `timer` from `old` (its current entry, if any) to `new`; returns `new`, which the
    /// caller stores as the entity's current entry.
    pub(crate) fn reschedule(
        &mut self,
        timer: T,
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
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
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

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Timer {
        Drain,
        Reconnect,
        Client(u32),
    }

    #[test]
    fn pops_in_time_then_timer_order() {
        let t0 = crate::test_epoch();
        let mut a = Agenda::default();
        let c = 1;
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
