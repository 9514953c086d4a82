//! The channel table of one upstream connection: what each upstream channel number is doing,
//! and the allocator that hands out numbers lowest-free-first in O(log n).
//!
//! A number returns to the free set only when both the broker and the owning client are done
//! with it (B4); until then it sits in one of the closing or quarantined states, so no late
//! frame can reach a new owner.

use super::ClientId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What an upstream channel number is currently used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Not in use.
    Free,
    /// `Channel.Open` sent for a client; awaiting the broker's `OpenOk`.
    Opening { client: ClientId, ch: u16 },
    /// Open and owned by a client channel; frames flow both ways.
    Owned { client: ClientId, ch: u16 },
    /// The client's `Channel.Close` was forwarded; the broker's `CloseOk` goes back to it.
    ClosingForClient { client: ClientId, ch: u16 },
    /// The proxy sent `Channel.Close` (client gone, proxy-side error, idle pool entry);
    /// awaiting `CloseOk`. Frames from the broker are dropped.
    Closing,
    /// The broker closed the channel and got its `CloseOk`; the number waits until the client
    /// side has finished too.
    Quarantined,
    /// A clean channel whose client let go; the fence round trip is in flight (B6).
    Fencing,
    /// A clean, open channel waiting in the hub's pool since the given time.
    Pooled { since: Instant },
    /// A short-lived proxy channel deleting a departed client's exclusive queues (B5).
    Housekeeping,
}

impl Slot {
    /// The client channel this slot delivers to, if any.
    pub(crate) fn owner(&self) -> Option<(ClientId, u16)> {
        match *self {
            Slot::Opening { client, ch }
            | Slot::Owned { client, ch }
            | Slot::ClosingForClient { client, ch } => Some((client, ch)),
            _ => None,
        }
    }
}

/// Channel numbers `1..=max` of one upstream connection.
#[derive(Debug)]
pub(crate) struct ChannelTable {
    /// Indexed by channel number; index 0 is never used.
    slots: Vec<Slot>,
    /// Numbers below `slots.len()` that are free again.
    free: BinaryHeap<Reverse<u16>>,
    max: u16,
    in_use: usize,
}

impl ChannelTable {
    /// A table for channel numbers `1..=max`.
    pub(crate) fn new(max: u16) -> Self {
        ChannelTable {
            slots: vec![Slot::Free],
            free: BinaryHeap::new(),
            max,
            in_use: 0,
        }
    }

    /// Numbers not free (in any state).
    pub(crate) fn in_use(&self) -> usize {
        self.in_use
    }

    /// Whether a number can be allocated.
    pub(crate) fn has_room(&self) -> bool {
        self.in_use < usize::from(self.max)
    }

    /// Takes the lowest free number and puts `slot` in it.
    pub(crate) fn allocate(&mut self, slot: Slot) -> Option<u16> {
        let ch = match self.free.pop() {
            Some(Reverse(ch)) => ch,
            None if self.slots.len() <= usize::from(self.max) => {
                self.slots.push(Slot::Free);
                (self.slots.len() - 1) as u16
            }
            None => return None,
        };
        self.slots[usize::from(ch)] = slot;
        self.in_use += 1;
        Some(ch)
    }

    /// The state of channel `ch` (`Free` for numbers never handed out).
    pub(crate) fn get(&self, ch: u16) -> Slot {
        self.slots
            .get(usize::from(ch))
            .copied()
            .unwrap_or(Slot::Free)
    }

    /// Changes the state of an allocated number. Setting `Free` releases it.
    pub(crate) fn set(&mut self, ch: u16, slot: Slot) {
        let Some(cur) = self.slots.get_mut(usize::from(ch)) else {
            return;
        };
        if *cur == Slot::Free {
            // Only `allocate` turns a free number into a used one.
            return;
        }
        *cur = slot;
        if slot == Slot::Free {
            self.in_use -= 1;
            self.free.push(Reverse(ch));
        }
    }

    /// Every number in use with its state, in channel order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u16, Slot)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, s)| **s != Slot::Free)
            .map(|(i, s)| (i as u16, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_first() {
        let mut t = ChannelTable::new(5);
        let all: Vec<u16> = (0..5).filter_map(|_| t.allocate(Slot::Closing)).collect();
        assert_eq!(all, vec![1, 2, 3, 4, 5]);
        assert_eq!(t.allocate(Slot::Closing), None);
        t.set(4, Slot::Free);
        t.set(2, Slot::Free);
        assert_eq!(t.allocate(Slot::Closing), Some(2));
        assert_eq!(t.allocate(Slot::Closing), Some(4));
        assert_eq!(t.in_use(), 5);
    }

    #[test]
    fn quarantined_numbers_are_not_reused() {
        let mut t = ChannelTable::new(2);
        let a = t.allocate(Slot::Closing).unwrap();
        t.set(a, Slot::Quarantined);
        assert_eq!(t.allocate(Slot::Closing), Some(2));
        assert_eq!(t.allocate(Slot::Closing), None);
        t.set(a, Slot::Free);
        assert_eq!(t.allocate(Slot::Closing), Some(a));
    }

    #[test]
    fn releasing_a_free_number_twice_does_not_corrupt_counts() {
        let mut t = ChannelTable::new(3);
        let a = t.allocate(Slot::Closing).unwrap();
        t.set(a, Slot::Free);
        t.set(a, Slot::Free);
        t.set(3, Slot::Free);
        assert_eq!(t.in_use(), 0);
        assert_eq!(t.allocate(Slot::Closing), Some(1));
        assert_eq!(t.allocate(Slot::Closing), Some(2));
    }
}
