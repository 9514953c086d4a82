//! The ids admission hands out: clients in their handshake ([`ConnId`]), the broker
//! connections it owns ([`LinkId`]) and the hubs it runs ([`HubId`]). Kept apart because every
//! other part of admission, and both drivers, name things by them.

use std::fmt;

/// A client connection in its handshake: a slab index plus a generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(super) idx: u32,
    pub(super) gen: u32,
}

/// A broker connection admission owns (a proof or the event feed), same scheme.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId {
    pub(super) idx: u32,
    pub(super) gen: u32,
}

/// A hub, for as long as it runs. Never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HubId(pub(super) u64);

impl ConnId {
    /// The slab index, for drivers that keep per-connection state in a vector.
    #[must_use]
    pub fn index(self) -> usize {
        self.idx as usize
    }
}

impl LinkId {
    /// The slab index, for drivers that keep per-link state in a vector.
    #[must_use]
    pub fn index(self) -> usize {
        self.idx as usize
    }
}

impl HubId {
    /// A number for logs and driver-side maps.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }
}

macro_rules! display_id {
    ($t:ty, $prefix:literal, $field:tt) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.$field)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}
display_id!(ConnId, "a", gen);
display_id!(LinkId, "l", gen);
display_id!(HubId, "h", 0);
