//! The hub registry: which hubs run ([`HubRecord`]), which of them new clients of a key join
//! and in what turn ([`Shards`], `hubs_per_key`), starting a hub with the settings of the
//! moment, and stopping one only once nothing is on its way to it ([`Input::HubIdle`]).
//!
//! [`Input::HubIdle`]: super::Input::HubIdle

use super::{Admission, HubId, Output};
use crate::credentials::Credentials;
use crate::hub::{self, Hub, HubConfig};
use crate::reply::Reply;
use rand::RngCore;
use smallvec::SmallVec;
use std::time::Instant;

/// The hubs new clients of one key join, taken in turn.
#[derive(Debug, Default)]
pub(super) struct Shards {
    pub(super) hubs: SmallVec<[HubId; 2]>,
    /// Round-robin position.
    pub(super) next: usize,
}

#[derive(Debug)]
pub(super) struct HubRecord {
    pub(super) key: Credentials,
    /// Clients and links handed to it.
    pub(super) handoffs: u64,
    /// New clients of its credentials join it (detached hubs serve the ones they have).
    pub(super) attached: bool,
}

/// A running hub, as [`Admission::hub_list`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEntry {
    /// Its id.
    pub id: HubId,
    /// The user it serves.
    pub user: String,
    /// The vhost it serves.
    pub vhost: String,
    /// New clients of its credentials join it (false once detached: a revocation or an
    /// operator's drain).
    pub attached: bool,
}

impl Admission {
    pub(super) fn send_to_hub(&mut self, hub: HubId, input: hub::Input) {
        self.out.push_back(Output::ToHub { hub, input });
    }

    /// The running hub the next client of `key` joins, in turn; `None` while the key has
    /// fewer hubs than `hubs_per_key` (the caller starts one).
    pub(super) fn next_hub_of(&mut self, key: &Credentials) -> Option<HubId> {
        let shards = self.attached.get_mut(key)?;
        if shards.hubs.len() < self.config.hubs_per_key.max(1) {
            return None;
        }
        let hub = shards.hubs[shards.next % shards.hubs.len()];
        shards.next = shards.next.wrapping_add(1);
        Some(hub)
    }

    /// The settings of a hub started now (or reconfigured now).
    pub(super) fn hub_config(&self) -> HubConfig {
        let mut config = self.config.hub.clone();
        config.proof_ttl = (!self.feed_up).then_some(self.config.credentials_ttl);
        config
    }

    /// Starts a hub for `key`, attached for new clients.
    pub(super) fn start_hub(&mut self, key: Credentials) -> HubId {
        self.next_hub += 1;
        let hub = HubId(self.next_hub);
        let machine = Box::new(Hub::new(
            self.hub_config(),
            key.clone(),
            self.rng.next_u64(),
        ));
        self.hubs.insert(
            hub,
            HubRecord {
                key: key.clone(),
                handoffs: 0,
                attached: true,
            },
        );
        let paused = self.paused_vhosts.contains(&key.vhost);
        self.attached.entry(key).or_default().hubs.push(hub);
        self.out.push_back(Output::StartHub { hub, machine });
        if paused {
            // Before any handoff, which follows in the output order.
            self.send_to_hub(hub, hub::Input::Pause);
        }
        hub
    }

    /// [`Input::HubIdle`](super::Input::HubIdle): a hub that took nothing since it said so
    /// stops.
    pub(super) fn hub_idle(&mut self, hub: HubId, handoffs: u64) {
        if self.hubs.get(&hub).is_some_and(|h| h.handoffs == handoffs) {
            if let Some(h) = self.hubs.remove(&hub) {
                if let Some(shards) = self.attached.get_mut(&h.key) {
                    shards.hubs.retain(|id| *id != hub);
                    if shards.hubs.is_empty() {
                        self.attached.remove(&h.key);
                    }
                }
            }
            self.out.push_back(Output::StopHub { hub });
        }
    }

    /// [`Input::HubRefused`](super::Input::HubRefused): remembered like a proof's refusal.
    pub(super) fn hub_refused(&mut self, now: Instant, hub: HubId, reply: Reply) {
        if let Some(h) = self.hubs.get(&hub) {
            let key = h.key.clone();
            self.remember_refusal(now, &key, reply);
        }
    }
}
