//! The leak checks once every client left: upstream channels in use beyond the pool,
//! exclusive queues and broker connections of warren's left behind (its event feed aside).

use super::slots::{BrokerState, Owner};
use super::{Ev, World};
use crate::broker::ConnId;
use crate::check::Invariant;
use std::time::{Duration, Instant};

impl World {
    /// warren's broker connections serving its event feed (the broker's word: they hold the
    /// queue bound to the event exchange) that admission still owns.
    pub(super) fn feed_conns(&self) -> Vec<ConnId> {
        if self.broker_state != BrokerState::Up {
            return Vec::new();
        }
        self.broker
            .feed_conns()
            .into_iter()
            .filter(|c| {
                self.conn_to_up
                    .get(c)
                    .and_then(|uid| self.ups.get(uid))
                    .is_some_and(|u| matches!(u.owner, Owner::Admission(_)))
            })
            .collect()
    }

    pub(super) fn feed_uids(&self) -> Vec<u32> {
        self.feed_conns()
            .iter()
            .filter_map(|c| self.conn_to_up.get(c).copied())
            .collect()
    }

    /// Broker connections from warren that should be gone at the end: all of them but one
    /// event feed in event mode.
    pub(super) fn stray_broker_conns(&self) -> Vec<ConnId> {
        let feed = self.feed_conns();
        let keep = if self.sc.net.events { 1 } else { 0 };
        let mut stray: Vec<ConnId> = self
            .broker
            .connection_ids()
            .into_iter()
            .filter(|c| !feed.contains(c))
            .collect();
        stray.extend(feed.iter().skip(keep));
        stray
    }

    /// Leaks after every client left: upstream channels in use beyond the pool, exclusive
    /// queues left on the broker. Transient states (a close or fence in flight) are allowed
    /// to settle: the check is retried until `until`, and fails only if it never passes.
    pub(super) fn checkpoint(&mut self, until: Instant) {
        let now = self.now;
        let report = self.leak_report();
        // Conditions that held once (a hub with no stray channel, no exclusive queue) count
        // as passed: a later pool expiry in flight is not a leak.
        let failing: Vec<&String> = report.iter().map(|(k, _, _)| k).collect();
        for key in ["exclusive".to_owned()]
            .into_iter()
            .chain(self.hubs.iter().map(|h| format!("h{}", h.hid)))
        {
            if !failing.contains(&&key) {
                self.leak_passed.insert(key);
            }
        }
        let open: Vec<(String, Invariant, String)> = report
            .into_iter()
            .filter(|(k, _, _)| !self.leak_passed.contains(k))
            .collect();
        if !open.is_empty() && now < until {
            self.schedule(now + Duration::from_millis(100), Ev::Checkpoint(until));
            return;
        }
        self.checkpoint_done = true;
        for (_, inv, what) in open {
            self.obs.violation(now, inv, what);
        }
        self.line("checkpoint: all clients gone");
    }

    fn leak_report(&self) -> Vec<(String, Invariant, String)> {
        let mut out = Vec::new();
        for h in &self.hubs {
            let in_use = h.hub.channels_in_use();
            let pooled = h.hub.pooled_channels();
            if in_use != pooled {
                out.push((
                    format!("h{}", h.hid),
                    Invariant::ChannelLeak,
                    format!(
                        "hub h{}: {in_use} upstream channels in use, only {pooled} of them pooled, after every client left",
                        h.hid
                    ),
                ));
            }
        }
        if self.broker_state == BrokerState::Up {
            let feed = self.feed_conns();
            let excl: Vec<(String, ConnId)> = self
                .broker
                .exclusive_queues()
                .into_iter()
                .filter(|(_, c)| !feed.contains(c))
                .collect();
            if !excl.is_empty() {
                let names: Vec<String> = excl.iter().map(|(n, _)| n.clone()).collect();
                out.push((
                    "exclusive".to_owned(),
                    Invariant::ChannelLeak,
                    format!(
                        "exclusive queues {names:?} still exist on the broker after every client left (B5)"
                    ),
                ));
            }
        }
        out
    }
}
