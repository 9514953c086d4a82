//! Admission's outputs carried out as the runtime's admission task does: handshake bytes
//! and closes, the broker connections it dials (login proofs, the event feed), hubs it
//! starts, links and clients it hands to them; and its events, traced and counted.

use super::net::{Dir, Item};
use super::slots::{HubSlot, Owner, ProxyClient, UpSlot};
use super::{Ev, World};
use std::collections::BTreeMap;
use warren_core::admission::{self, AdmissionEvent};
use warren_core::frame::FrameDecoder;
use warren_core::hub::Input;

impl World {
    /// Carries out admission's outputs, as the runtime's admission task does.
    pub(super) fn admission_outputs(&mut self) {
        while let Some(mut out) = self.admission.poll_output() {
            if let Some(t) = self.tamper_admission.as_mut() {
                let before = match &out {
                    admission::Output::ToLink { data, .. }
                    | admission::Output::ToClient { data, .. } => Some(data.clone()),
                    _ => None,
                };
                if !t(self.now, &mut out) {
                    self.line(format!("TAMPER dropped admission output {before:?}"));
                    continue;
                }
                let after = match &out {
                    admission::Output::ToLink { data, .. }
                    | admission::Output::ToClient { data, .. } => Some(data.clone()),
                    _ => None,
                };
                if before != after {
                    self.line(format!("TAMPER changed {before:?} into {after:?}"));
                }
            }
            self.admission_output(out);
        }
    }

    fn admission_output(&mut self, out: admission::Output) {
        use admission::Output as A;
        let now = self.now;
        match out {
            A::ToClient { conn, data } => {
                let Some(&cid) = self.handshakes.get(&conn) else {
                    return;
                };
                if let Some(link) = self.clients[cid as usize - 1].link {
                    self.push(link, Dir::FromProxy, Item::Data(data));
                }
            }
            A::CloseClient { conn, reset } => {
                let Some(cid) = self.handshakes.remove(&conn) else {
                    return;
                };
                let idx = cid as usize - 1;
                self.clients[idx].proxy = ProxyClient::Gone;
                if let Some(link) = self.clients[idx].link {
                    if reset {
                        self.line(format!("w resets c{cid} (handshake)"));
                        self.reset_link(link);
                    } else {
                        self.line(format!("w closes c{cid} (handshake)"));
                        self.push(link, Dir::FromProxy, Item::Fin);
                    }
                }
                self.obs.handshake_closed(cid);
            }
            A::Dial {
                link, frame_max, ..
            } => {
                self.next_up += 1;
                let uid = self.next_up;
                self.adm_links.insert(link, uid);
                self.ups
                    .insert(uid, UpSlot::new(Owner::Admission(link), frame_max));
                self.line(format!("w dials u{uid} (admission {link})"));
                self.obs.link_dialed(now, uid);
                // SYN and SYN-ACK.
                self.schedule(now + self.sc.net.upstream_latency * 2, Ev::Dial(uid));
            }
            A::ToLink { link, data } => {
                let Some(&uid) = self.adm_links.get(&link) else {
                    return;
                };
                self.obs.proxy_sent_upstream(now, uid, &data);
                if let Some(l) = self.ups.get(&uid).and_then(|u| u.link) {
                    self.push(l, Dir::FromProxy, Item::Data(data));
                }
            }
            A::CloseLink { link } => {
                let Some(uid) = self.adm_links.remove(&link) else {
                    return;
                };
                self.close_up(uid);
            }
            A::StartHub { hub, machine } => {
                let hid = hub.get() as u32;
                self.line(format!("w starts hub h{hid} for {}", machine.credentials()));
                self.hubs.push(HubSlot {
                    hid,
                    id: hub,
                    hub: *machine,
                    clients: BTreeMap::new(),
                    ups: BTreeMap::new(),
                });
            }
            A::AdoptLink {
                link,
                hub,
                login,
                frames,
                node,
            } => {
                let hid = hub.get() as u32;
                let Some(uid) = self.adm_links.remove(&link) else {
                    return;
                };
                let Some(i) = self.hub_index(hid) else { return };
                let id = self.hubs[i].hub.adopt_upstream(now, *login, node);
                self.hubs[i].ups.insert(id, uid);
                if let Some(u) = self.ups.get_mut(&uid) {
                    u.owner = Owner::Hub { hub: hid, id };
                }
                self.line(format!("u{uid} becomes an upstream of h{hid}"));
                self.hub_outputs(hid);
                if !frames.is_empty() {
                    self.hub_input(
                        hid,
                        Input::UpstreamFrames {
                            upstream: id,
                            frames,
                        },
                    );
                }
            }
            A::Join {
                conn,
                hub,
                hello,
                pipelined,
            } => {
                let Some(cid) = self.handshakes.remove(&conn) else {
                    return;
                };
                let hid = hub.get() as u32;
                let Some(i) = self.hub_index(hid) else { return };
                let idx = cid as usize - 1;
                let (frame_max, heartbeat) = (hello.tune.frame_max, hello.tune.heartbeat);
                let id = self.hubs[i].hub.add_client(now, *hello);
                self.hubs[i].clients.insert(id, cid);
                self.line(format!("c{cid} joins hub h{hid}"));
                self.obs.client_joined(now, cid, heartbeat);
                self.clients[idx].proxy = ProxyClient::Joined {
                    hub: hid,
                    id,
                    buf: pipelined,
                    decoder: FrameDecoder::for_client(frame_max),
                    dead: false,
                };
                self.hub_outputs(hid);
                self.feed_hub_from_client(cid);
            }
            A::ToHub { hub, input } => self.hub_input(hub.get() as u32, input),
            A::StopHub { hub } => self.stop_hub(hub),
            A::Event(e) => self.admission_event(e),
        }
    }

    fn admission_event(&mut self, e: AdmissionEvent) {
        let (what, line) = match &e {
            AdmissionEvent::Refused {
                conn, why, reply, ..
            } => {
                let cid = self.handshakes.get(conn).copied().unwrap_or(0);
                if let Some(c) = self.handshakes.get(conn) {
                    self.obs.proxy_closed_client_with(*c, reply.code);
                }
                (
                    "login refused",
                    format!(
                        "w refuses c{cid} ({}): {} {:?}",
                        why.label(),
                        reply.code,
                        reply.text
                    ),
                )
            }
            AdmissionEvent::HandshakeFailed { conn } => {
                let cid = self.handshakes.get(conn).copied().unwrap_or(0);
                ("handshake failed", format!("c{cid} handshake failed"))
            }
            AdmissionEvent::ProofFailed { user, reply, .. } => (
                "proof failed",
                format!("login of {user} failed: {} {:?}", reply.code, reply.text),
            ),
            AdmissionEvent::Proved { user } => ("login proved", format!("login of {user} proved")),
            AdmissionEvent::Trusted { user } => {
                ("login trusted", format!("login of {user} trusted"))
            }
            AdmissionEvent::FeedUp => ("event feed up", "event feed up".to_owned()),
            AdmissionEvent::FeedDown { reason } => {
                ("event feed down", format!("event feed down: {reason}"))
            }
            AdmissionEvent::Revoked(r) => ("revocation", format!("revoked: {r:?}")),
            AdmissionEvent::Unreachable { reply, retry_in } => (
                "broker unreachable for logins",
                format!(
                    "logins refused for {}ms: {}",
                    retry_in.as_millis(),
                    reply.text
                ),
            ),
            #[allow(unreachable_patterns)] // Events admission may grow.
            other => ("other admission event", format!("{other:?}")),
        };
        self.count(what);
        self.line(line);
    }
}
