//! The pool of recycled channels (B6): a clean channel whose client let go is fenced with a
//! `channel.flow` round trip, then kept open for the next client's `channel.open`, until it
//! idles out, the pool shrinks or warren drains. Departed clients' exclusive queues waiting
//! for a channel are served before the pool.

use super::channels::Slot;
use super::{ClientId, Hub, UpRef, UpstreamId};
use crate::method::encode;
use std::time::Instant;

impl Hub {
    /// Whether another channel may enter the pool.
    pub(super) fn pool_has_room(&self) -> bool {
        self.config.recycling
            && self.drain.is_none()
            && self.pool.len() + self.fencing < self.config.pool_size
    }

    /// Starts the fence round trip on a clean channel whose client let go.
    pub(super) fn fence(&mut self, now: Instant, r: UpRef) {
        self.set_slot(now, r, Slot::Fencing);
        self.fencing += 1;
        self.send_upstream(now, r.up, encode::flow(r.ch, true, false));
    }

    /// The fence came back clean: the channel joins the pool, or is closed if there is no
    /// longer room.
    pub(super) fn pool_channel(&mut self, now: Instant, r: UpRef) {
        if self.pending_deletes.iter().any(|(u, _)| *u == r.up) {
            // Departed clients' queues wait for a channel on this upstream: this one serves
            // them first (open, and clean after the fence).
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_deletes)
                .into_iter()
                .partition(|(u, _)| *u == r.up);
            self.pending_deletes = rest;
            self.set_slot(now, r, Slot::Housekeeping);
            return self.housekeep(now, r, due.into_iter().map(|(_, q)| q).collect());
        }
        if !self.pool_has_room() {
            return self.close_upstream_channel(now, r, "pool full");
        }
        if self.upstream(r.up).is_some_and(|u| u.retiring.is_some()) {
            return self.close_upstream_channel(now, r, "re-dialled");
        }
        self.set_slot(now, r, Slot::Pooled { since: now });
        self.pool.push(r);
        self.stats.channels_recycled += 1;
        self.schedule_pool();
    }

    /// A pooled channel for client `id`: one on its home upstream; none while its home has
    /// room for a new one (a channel elsewhere could not reach its exclusive queues) and the
    /// user's channel limit allows one; else the most recently pooled.
    pub(super) fn take_pooled_for(&mut self, now: Instant, id: ClientId) -> Option<UpRef> {
        let home = self.home(id);
        let new_one_at_home = home
            .is_some_and(|h| self.upstream(h).is_some_and(|u| u.table.has_room()))
            && self.at_channel_limit(now).is_none();
        let r = match home.and_then(|h| self.take_pooled_on(h)) {
            Some(r) => r,
            None if new_one_at_home => return None,
            None => {
                let r = self.pool.pop()?;
                self.schedule_pool();
                r
            }
        };
        if let Some(u) = self.upstream_mut(r.up) {
            u.idle_since = None;
        }
        Some(r)
    }

    /// Takes the most recently pooled channel of upstream `up`, for housekeeping.
    pub(super) fn take_pooled_on(&mut self, up: UpstreamId) -> Option<UpRef> {
        let i = self
            .pool
            .iter()
            .rposition(|r| r.up == up && self.is_pooled(*r))?;
        let r = self.pool.remove(i);
        self.schedule_pool();
        Some(r)
    }

    /// Closes pooled channels that have been idle for the pool timeout.
    pub(super) fn expire_pool(&mut self, now: Instant) {
        let timeout = self.config.pool_idle_timeout;
        while let Some(&r) = self.pool.first() {
            match self.slot(r) {
                Slot::Pooled { since } if since + timeout <= now => {
                    self.pool.remove(0);
                    self.close_upstream_channel(now, r, "idle in pool");
                }
                Slot::Pooled { .. } => break,
                _ => {
                    self.pool.remove(0);
                }
            }
        }
        self.schedule_pool();
    }

    /// Closes pooled channels, oldest first, until the pool fits `pool_size` (or is empty
    /// when recycling is off): after a reload that shrank it.
    pub(super) fn fit_pool(&mut self, now: Instant) {
        let keep = if self.config.recycling {
            self.config.pool_size
        } else {
            0
        };
        while self.pool.len() > keep {
            let r = self.pool.remove(0);
            if self.is_pooled(r) {
                self.close_upstream_channel(now, r, "pool shrunk by a reload");
            }
        }
        self.schedule_pool();
    }

    /// Closes every pooled channel (drain).
    pub(super) fn expire_pool_all(&mut self, now: Instant) {
        for r in std::mem::take(&mut self.pool) {
            if self.is_pooled(r) {
                self.close_upstream_channel(now, r, "warren is shutting down");
            }
        }
        self.schedule_pool();
    }

    pub(super) fn drop_pool_entries(&mut self, up: UpstreamId) {
        self.pool.retain(|r| r.up != up);
        self.schedule_pool();
    }

    pub(super) fn schedule_pool(&mut self) {
        let want = self.pool.first().and_then(|r| match self.slot(*r) {
            Slot::Pooled { since } => Some(since + self.config.pool_idle_timeout),
            _ => None,
        });
        self.pool_timer = self
            .agenda
            .reschedule(super::Timer::PoolIdle, self.pool_timer, want);
    }
}
