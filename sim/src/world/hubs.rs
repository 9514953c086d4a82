//! The hubs' outputs carried out as the runtime's hub tasks do (bytes to clients and broker
//! connections, closes, dials), their events traced, counted and shown to the observer, and
//! hubs that have nothing left to do retired.

use super::net::{Dir, Item};
use super::slots::{Owner, ProxyClient, UpSlot};
use super::{Ev, World};
use crate::trace::describe_event;
use warren_core::admission::{self, HubId};
use warren_core::hub::{HubEvent, Output, Peer};

impl World {
    pub(super) fn hub_outputs(&mut self, hid: u32) {
        loop {
            let Some(i) = self.hub_index(hid) else { return };
            let Some(mut out) = self.hubs[i].hub.poll_output() else {
                break;
            };
            if let Some(t) = self.tamper.as_mut() {
                let before = out.clone();
                if !t(self.now, &mut out) {
                    self.line(format!("TAMPER dropped {before:?}"));
                    continue;
                }
                if out != before {
                    self.line(format!("TAMPER changed {before:?} into {out:?}"));
                }
            }
            self.apply(hid, out);
        }
        // Slow clients are reported after the outputs that made them slow (runtime order).
        let pending = std::mem::take(&mut self.pending);
        for (hid, input) in pending {
            self.hub_input(hid, input);
        }
    }

    fn apply(&mut self, hid: u32, out: Output) {
        let now = self.now;
        let i = self.hub_index(hid).expect("caller checked");
        match out {
            Output::ToClient { client, data } => {
                let Some(&cid) = self.hubs[i].clients.get(&client) else {
                    return;
                };
                self.obs.proxy_sent_client(now, cid, &data);
                let idx = cid as usize - 1;
                let Some(link) = self.clients[idx].link else {
                    return;
                };
                self.clients[idx].in_flight += data.len();
                self.clients[idx].sent += data.len() as u64;
                self.push(link, Dir::FromProxy, Item::Data(data));
                self.watch_client(cid, true);
            }
            Output::CloseClient { client } => {
                // The mapping stays: later events may still name the client.
                let Some(&cid) = self.hubs[i].clients.get(&client) else {
                    return;
                };
                self.line(format!("w closes c{cid}"));
                self.unwatch_client(cid);
                self.obs.proxy_closed_client(now, cid);
                self.obs.client_left(now, cid);
                let idx = cid as usize - 1;
                if matches!(self.clients[idx].proxy, ProxyClient::Joined { .. }) {
                    self.clients[idx].proxy = ProxyClient::Gone;
                }
                if let Some(link) = self.clients[idx].link {
                    self.push(link, Dir::FromProxy, Item::Fin);
                }
            }
            // One broker: every node of the order is it.
            Output::Dial {
                upstream,
                frame_max,
                ..
            } => {
                self.next_up += 1;
                let uid = self.next_up;
                self.hubs[i].ups.insert(upstream, uid);
                let owner = Owner::Hub {
                    hub: hid,
                    id: upstream,
                };
                let mut slot = UpSlot::new(owner, frame_max);
                // A probe only asks the broker about an exchange type (B7), and the hub's
                // snapshot says so; the trace names it, so that its short life reads right.
                slot.probe = (self.hubs[i].hub.snapshot().upstreams.iter())
                    .any(|u| u.id == upstream && u.phase == "probing");
                let probe = slot.probe;
                self.ups.insert(uid, slot);
                if probe {
                    self.count("probe dialled");
                    self.line(format!(
                        "w dials u{uid} (hub h{hid}) to ask the broker about an exchange type"
                    ));
                } else {
                    self.line(format!("w dials u{uid} (hub h{hid})"));
                }
                self.obs.dialed(now, hid, uid);
                // SYN and SYN-ACK.
                let at = now + self.sc.net.upstream_latency * 2;
                self.schedule(at, Ev::Dial(uid));
            }
            Output::ToUpstream { upstream, data } => {
                let Some(&uid) = self.hubs[i].ups.get(&upstream) else {
                    return;
                };
                self.obs.proxy_sent_upstream(now, uid, &data);
                if let Some(link) = self.ups.get(&uid).and_then(|u| u.link) {
                    self.push(link, Dir::FromProxy, Item::Data(data));
                }
            }
            Output::CloseUpstream { upstream } => {
                let Some(&uid) = self.hubs[i].ups.get(&upstream) else {
                    return;
                };
                self.close_up(uid);
            }
            Output::Event(e) => self.hub_event(hid, e),
        }
    }

    fn hub_event(&mut self, hid: u32, e: HubEvent) {
        let now = self.now;
        let i = self.hub_index(hid).expect("caller checked");
        let hub = &self.hubs[i];
        let text = describe_event(&e, now, |p| match p {
            Peer::Client(id) => hub
                .clients
                .get(&id)
                .map_or_else(|| "c?".to_owned(), |c| format!("c{c}")),
            Peer::Upstream(id) => hub
                .ups
                .get(&id)
                .map_or_else(|| "u?".to_owned(), |u| format!("u{u}")),
        });
        let line = format!("h{hid} {text}");
        self.line(line);
        let what = match &e {
            HubEvent::ClientAdmitted { .. } => "client admitted",
            HubEvent::ClientClosed { reply, .. } => match reply.code {
                320 => "client closed 320",
                403 => "client closed 403",
                530 => "client closed 530",
                501 => "client closed 501",
                502 => "client closed 502",
                503 => "client closed 503",
                504 => "client closed 504",
                505 => "client closed 505",
                540 => "client closed 540",
                _ => "client closed other",
            },
            HubEvent::SlowClient { .. } => "slow client",
            HubEvent::UpstreamOpen { .. } => "upstream open",
            HubEvent::UpstreamFailed { .. } => "upstream failed",
            HubEvent::UpstreamLost { .. } => "upstream lost",
            HubEvent::AuthRejected { .. } => "auth rejected",
            HubEvent::HeartbeatMissed { peer } => match peer {
                Peer::Client(_) => "client heartbeat missed",
                Peer::Upstream(_) => "upstream heartbeat missed",
            },
            HubEvent::ReconnectScheduled { .. } => "reconnect scheduled",
            HubEvent::ClientLeft { .. } => "client left",
            HubEvent::Redialling { .. } => "redialling",
        };
        self.count(what);
        match e {
            HubEvent::AuthRejected { reply } => {
                let hub = self.hubs[i].id;
                self.admission_input(admission::Input::HubRefused { hub, reply });
            }
            HubEvent::UpstreamOpen {
                upstream,
                heartbeat,
                ..
            } => {
                if let Some(&uid) = self.hubs[i].ups.get(&upstream) {
                    self.obs.upstream_open(now, hid, uid, heartbeat);
                }
            }
            HubEvent::UpstreamFailed { upstream, reply } => {
                let uid = self.hubs[i].ups.get(&upstream).copied();
                let others = self.live_upstreams(hid, uid);
                self.obs.upstream_failed(now, hid, uid, reply.code, others);
            }
            HubEvent::UpstreamLost { upstream, .. } => {
                let uid = self.hubs[i].ups.get(&upstream).copied();
                self.obs.upstream_lost(now, hid, uid);
            }
            HubEvent::ReconnectScheduled { at, failures } => {
                self.obs.reconnect_scheduled(now, hid, at, failures);
            }
            HubEvent::HeartbeatMissed { peer } => match peer {
                Peer::Client(id) => {
                    if let Some(&cid) = self.hubs[i].clients.get(&id) {
                        self.obs.client_declared_dead(now, cid);
                    }
                }
                Peer::Upstream(id) => {
                    if let Some(&uid) = self.hubs[i].ups.get(&id) {
                        self.obs.upstream_declared_dead(now, uid);
                    }
                }
            },
            HubEvent::ClientClosed { client, reply } => {
                if let Some(&cid) = self.hubs[i].clients.get(&client) {
                    self.obs.proxy_closed_client_with(cid, reply.code);
                    self.obs.client_left(now, cid);
                }
            }
            HubEvent::ClientLeft { client } | HubEvent::SlowClient { client } => {
                if let Some(&cid) = self.hubs[i].clients.get(&client) {
                    self.obs.client_left(now, cid);
                }
            }
            // Nothing for the observer: admission is seen when OpenOk reaches the client, and
            // the simulation's operators do not redial.
            HubEvent::ClientAdmitted { .. } | HubEvent::Redialling { .. } => {}
        }
    }

    /// Tells admission which hubs have nothing to do; it stops those nothing is on its way to.
    pub(super) fn retire_hubs(&mut self) {
        let idle: Vec<(HubId, u64)> = self
            .hubs
            .iter()
            .filter(|h| h.hub.is_finished())
            .map(|h| (h.id, h.hub.handoffs()))
            .collect();
        for (hub, handoffs) in idle {
            self.admission_input(admission::Input::HubIdle { hub, handoffs });
        }
    }

    /// Drops a hub admission stopped.
    pub(super) fn stop_hub(&mut self, hub: HubId) {
        let Some(i) = self.hubs.iter().position(|h| h.id == hub) else {
            return;
        };
        let h = self.hubs.remove(i);
        let st = h.hub.stats();
        *self.coverage.entry("channel opened from pool").or_default() += st.opens_from_pool;
        *self.coverage.entry("channel recycled").or_default() += st.channels_recycled;
        let now = self.now;
        self.obs.hubs_retired(now);
    }
}
