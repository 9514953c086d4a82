//! An operator's and the driver's hands on admission as a whole: pausing and resuming a
//! vhost's hubs, detaching a hub, a live reload of the settings, and the drain (B14).

use super::refusal::shutting_down;
use super::{Admission, AdmissionConfig, ConnId, HubId, LinkId, Output, Refusal, Timer, Wait};
use crate::hub;
use crate::nodes::Nodes;
use std::time::Instant;

impl Admission {
    pub(super) fn hubs_of_vhost(&self, vhost: &str) -> Vec<HubId> {
        self.hubs
            .iter()
            .filter(|(_, h)| h.key.vhost == vhost)
            .map(|(id, _)| *id)
            .collect()
    }

    /// [`Input::PauseVhost`](super::Input::PauseVhost).
    pub(super) fn pause_vhost(&mut self, vhost: String) {
        for hub in self.hubs_of_vhost(&vhost) {
            self.send_to_hub(hub, hub::Input::Pause);
        }
        self.paused_vhosts.insert(vhost);
    }

    /// [`Input::ResumeVhost`](super::Input::ResumeVhost).
    pub(super) fn resume_vhost(&mut self, vhost: String) {
        for hub in self.hubs_of_vhost(&vhost) {
            self.send_to_hub(hub, hub::Input::Resume);
        }
        self.paused_vhosts.remove(&vhost);
    }

    /// [`Input::DetachHub`](super::Input::DetachHub).
    pub(super) fn detach_hub(&mut self, hub: HubId) {
        if let Some(h) = self.hubs.get_mut(&hub) {
            h.attached = false;
            self.attached.retain(|_, shards| {
                shards.hubs.retain(|id| *id != hub);
                !shards.hubs.is_empty()
            });
            self.send_to_hub(hub, hub::Input::Detach);
        }
    }

    /// Takes reloaded settings (see [`Input::Reconfigure`]).
    pub(super) fn reconfigure(&mut self, config: AdmissionConfig) {
        let events = self.config.events.take();
        if config.hub.nodes != self.config.hub.nodes {
            self.nodes = Nodes::new(config.hub.nodes);
        }
        self.config = AdmissionConfig { events, ..config };
        self.cache.set_refusal_ttl(self.config.refusal_ttl);
        if !self.feed_up {
            self.cache.set_proven_ttl(Some(self.config.credentials_ttl));
        }
        let hubs: Vec<HubId> = self.hubs.keys().copied().collect();
        for hub in hubs {
            let input = hub::Input::Reconfigure(Box::new(self.hub_config()));
            self.out.push_back(Output::ToHub { hub, input });
        }
    }

    pub(super) fn drain(&mut self, now: Instant, deadline: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        // A client past its protocol header hears why at once; one that has not sent it yet
        // cannot be sent a close, and is refused at its login instead.
        let started: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.hs.started() && !matches!(c.wait, Wait::Reset(_)))
            .map(|(_, c)| c.id)
            .collect();
        for id in started {
            self.refuse(now, id, Refusal::Draining, shutting_down());
        }
        let links: Vec<LinkId> = self.links.iter().map(|(_, l)| l.id).collect();
        for id in links {
            self.close_link(id, "warren is shutting down");
        }
        let hubs: Vec<HubId> = self.hubs.keys().copied().collect();
        for hub in hubs {
            self.send_to_hub(hub, hub::Input::Drain { deadline });
        }
        if let Some(at) = self.feed_redial.take() {
            self.agenda.reschedule(Timer::FeedRedial, Some(at), None);
        }
    }
}
