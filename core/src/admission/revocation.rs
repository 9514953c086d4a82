//! The event feed as admission drives it: dialling the link to the broker's
//! `amq.rabbitmq.event` exchange (the [`Feed`](super::events::Feed) machine parses it), what
//! trust means while it is up or down, and what each [`Revocation`] closes or detaches (B2).

use super::proofs::Purpose;
use super::{events, Admission, AdmissionEvent, HubId, LinkId, Output, Timer};
use crate::credentials::Credentials;
use crate::hub;
use crate::login::Login;
use crate::reply::{self, Reply};
use events::Revocation;
use std::time::Instant;

impl Admission {
    pub(super) fn dial_feed(&mut self, now: Instant) {
        let Some(source) = self.config.events.clone() else {
            return;
        };
        if self.feed.is_some() || self.draining {
            return;
        }
        let name = format!("{} events", self.config.hub.upstream_name);
        let login = Login::new(
            now,
            &self.config.hub,
            &source.user,
            &source.password,
            Some(&source.vhost),
            name,
        );
        let link = self.dial(now, login, Purpose::Feed(Box::default()));
        self.feed = Some(link);
    }

    pub(super) fn feed_step(&mut self, now: Instant, id: LinkId, step: events::FeedStep) {
        for data in step.send {
            self.out.push_back(Output::ToLink { link: id, data });
        }
        for r in step.revocations {
            self.revoke(now, r);
        }
        match step.failed {
            Some(reply) => {
                self.close_link(id, "event feed failed");
                self.feed_down(now, reply.text);
            }
            None => self.schedule_link(now, id),
        }
    }

    pub(super) fn feed_up(&mut self) {
        self.feed_failures = 0;
        self.feed_up = true;
        self.cache.set_proven_ttl(None);
        // What was proved before the feed was up may have been revoked unseen.
        self.cache.forget_proven();
        self.detach_all();
        self.event(AdmissionEvent::FeedUp);
    }

    pub(super) fn feed_down(&mut self, now: Instant, reason: String) {
        let was_up = std::mem::replace(&mut self.feed_up, false);
        self.cache.set_proven_ttl(Some(self.config.credentials_ttl));
        if was_up {
            // Revocations may be missed from now on: nothing trusted without a new login.
            self.cache.forget_proven();
            self.detach_all();
        }
        self.event(AdmissionEvent::FeedDown { reason });
        if self.draining {
            return;
        }
        let delay = self.backoff().delay(self.feed_failures, &mut self.rng);
        self.feed_failures = self.feed_failures.saturating_add(1);
        let at = now + delay;
        self.feed_redial = self
            .agenda
            .reschedule(Timer::FeedRedial, self.feed_redial, Some(at));
    }

    /// New clients go to new hubs (whose first login is fresh); the old ones keep serving
    /// the clients they have, as RabbitMQ keeps the connections it has.
    pub(super) fn detach_all(&mut self) {
        self.attached.clear();
        for h in self.hubs.values_mut() {
            h.attached = false;
        }
    }

    /// Detaches the hubs whose credentials match; returns every matching hub, attached or
    /// not (they all serve clients of those credentials).
    pub(super) fn detach(&mut self, mut which: impl FnMut(&Credentials) -> bool) -> Vec<HubId> {
        let mut matching = Vec::new();
        for (id, h) in &mut self.hubs {
            if which(&h.key) {
                h.attached = false;
                matching.push(*id);
            }
        }
        self.attached.retain(|_, shards| {
            shards.hubs.retain(|id| !matching.contains(id));
            !shards.hubs.is_empty()
        });
        matching
    }

    /// What the broker revoked stops admitting new clients; what RabbitMQ closes, warren
    /// closes too (B2).
    pub(super) fn revoke(&mut self, now: Instant, r: Revocation) {
        self.stats.revocations += 1;
        let _ = now;
        let close = match &r {
            Revocation::UserCreated { user } => {
                self.cache.forget_user(user);
                None
            }
            Revocation::PasswordChanged { user } => {
                self.cache.forget_user(user);
                self.stale_proofs(user);
                self.detach(|k| k.user == *user);
                None
            }
            Revocation::UserDeleted { user } => {
                self.cache.forget_user(user);
                self.stale_proofs(user);
                let hubs = self.detach(|k| k.user == *user);
                Some((
                    hubs,
                    Reply::new(
                        reply::CONNECTION_FORCED,
                        format!("user '{user}' is deleted"),
                    ),
                ))
            }
            Revocation::PermissionCreated { user, vhost } => {
                self.cache.forget_vhost_refusals(Some(user), vhost);
                None
            }
            Revocation::PermissionDeleted { user, vhost } => {
                self.detach(|k| k.user == *user && k.vhost == *vhost);
                None
            }
            Revocation::VhostCreated { vhost } => {
                self.cache.forget_vhost_refusals(None, vhost);
                None
            }
            Revocation::VhostDeleted { vhost } => {
                let hubs = self.detach(|k| k.vhost == *vhost);
                Some((
                    hubs,
                    Reply::new(reply::CONNECTION_FORCED, format!("vhost '{vhost}' is down")),
                ))
            }
        };
        if let Some((hubs, reply)) = close {
            for hub in hubs {
                self.out.push_back(Output::ToHub {
                    hub,
                    input: hub::Input::CloseClients {
                        reply: reply.clone(),
                    },
                });
            }
        }
        self.event(AdmissionEvent::Revoked(r));
    }

    /// Proofs of `user` under way when its password changed: their verdict is not cached.
    pub(super) fn stale_proofs(&mut self, user: &str) {
        for (_, l) in &mut self.links {
            if let Purpose::Proof { account, stale, .. } = &mut l.purpose {
                if account.user == user {
                    *stale = true;
                }
            }
        }
    }
}
