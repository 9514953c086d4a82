//! The board: queue names the clients of one world share (a consumer posts the name of a
//! server-named queue, publishers address its slot), and who declared which exclusive queue.

use std::time::Instant;

/// Queue names shared by the clients of one world: a consumer that declares a server-named
/// queue posts the name in its slot, and publishers address the slot. A client that got
/// `declare-ok` for an exclusive declare also claims the queue: from then on it is that
/// client's, and nobody else may consume, get, purge or delete it (B5).
#[derive(Debug, Default, Clone)]
pub struct Board {
    slots: Vec<Option<String>>,
    /// Exclusive queues by the client whose declare created them: (slot, name, client,
    /// when it learnt the name), in claim order.
    claims: Vec<(u32, String, u32, Instant)>,
}

impl Board {
    /// A board with `named` slots preset to `q0`, `q1`, ... and `dynamic` empty slots after
    /// them for server-named queues.
    #[must_use]
    pub fn new(named: usize, dynamic: usize) -> Self {
        let mut slots: Vec<Option<String>> = (0..named).map(|i| Some(format!("q{i}"))).collect();
        slots.extend((0..dynamic).map(|_| None));
        Board {
            slots,
            claims: Vec::new(),
        }
    }

    /// The queue name in a slot, if known yet.
    #[must_use]
    pub fn name(&self, slot: u32) -> Option<&str> {
        self.slots.get(slot as usize).and_then(|s| s.as_deref())
    }

    pub(super) fn set(&mut self, slot: u32, name: String) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(name);
        }
    }

    /// Client `owner` declared the exclusive queue `name` (in `slot`) and got `declare-ok`.
    pub fn claim(&mut self, slot: u32, name: &str, owner: u32, at: Instant) {
        self.claims.push((slot, name.to_owned(), owner, at));
    }

    /// The client that declared the queue now in `slot` exclusively, if one did.
    #[must_use]
    pub fn exclusive_owner(&self, slot: u32) -> Option<u32> {
        let name = self.name(slot)?;
        self.claims
            .iter()
            .rev()
            .find(|(s, n, _, _)| *s == slot && n == name)
            .map(|(_, _, c, _)| *c)
    }

    /// Who had claimed the exclusive queue `name` at `at` (the latest claim before it).
    #[must_use]
    pub fn owner_of(&self, name: &str, at: Instant) -> Option<(u32, Instant)> {
        self.claims
            .iter()
            .rev()
            .find(|(_, n, _, t)| n == name && *t <= at)
            .map(|(_, _, c, t)| (*c, *t))
    }
}
